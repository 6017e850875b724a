//! The engine's settings.

use std::path::PathBuf;
use std::time::Duration;

/// A token bucket's shape: `burst` actions at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// How many actions may happen back to back.
    pub burst: u32,
    /// How many more are allowed each second after that.
    pub per_second: f64,
}

impl RateLimit {
    /// Parses the `RATE_LIMIT` setting: `burst/per_second` (e.g. `20/5`), or `off` for `None`.
    pub fn parse(text: &str) -> Option<Option<Self>> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Some(None);
        }
        let (burst, rate) = text.split_once('/')?;
        let burst: u32 = burst.trim().parse().ok()?;
        let per_second: f64 = rate.trim().parse().ok()?;
        (burst > 0 && per_second.is_finite() && per_second > 0.0)
            .then_some(Some(Self { burst, per_second }))
    }
}

/// Everything the engine needs besides its store.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The core's settings. Its `invite_seed` is replaced by the one the database keeps.
    pub core: chat_core::Config,
    /// How many requests may wait for the writer before callers wait to enqueue (back-pressure).
    pub queue_capacity: usize,
    /// The most commands one group commit takes.
    pub max_batch: usize,
    /// A snapshot of the core's state is saved after this many durable events (0: only at shutdown).
    pub snapshot_every: u64,
    /// How many recent durable events the in-memory tail keeps for live readers; older cursors are served by
    /// the store.
    pub tail_capacity: usize,
    /// How many tail events addressed to a user by name (not through a channel or space) their own index
    /// keeps at most; channel and space events are indexed once per channel or space.
    pub user_tail_capacity: usize,
    /// Per-user message rate (`RATE_LIMIT`); `None` turns it off.
    pub rate_limit: Option<RateLimit>,
    /// Failed logins allowed per account and address pair before that pair is refused (429), and their
    /// refill rate. Only the pair is refused: the account's owner elsewhere is not.
    pub login_limit: RateLimit,
    /// Failed logins allowed per address, whatever the accounts, before that address is refused: looser than
    /// the pair's, against one address trying many accounts.
    pub login_address_limit: RateLimit,
    /// Failed logins allowed per account, from every address together, before each login attempt for it is
    /// slowed by `login_slowdown` (never refused, so that an attacker cannot lock the owner out).
    pub login_account_limit: RateLimit,
    /// How long each login attempt for an account waits, while that account is over `login_account_limit`,
    /// before its password is checked.
    pub login_slowdown: Duration,
    /// The zero bits a guest sign-up's proof-of-work stamp must have (`HASHCASH_BITS`); 0 asks for none.
    pub hashcash_bits: u32,
    /// The resource stamps must name: the server's name (`SERVER_NAME`).
    pub hashcash_resource: String,
    /// The most spent stamps remembered at once; when that many have not expired yet, guest sign-up is
    /// refused (429) until some do, rather than forgetting one and letting it be spent again.
    pub max_spent_stamps: usize,
    /// How many password hashes may run at once on the blocking pool.
    pub hash_concurrency: usize,
    /// How long a nonce is remembered (10 minutes by the spec).
    pub nonce_ttl: Duration,
    /// How often clients' cursors are saved when no command batch carries them.
    pub cursor_flush_interval: Duration,
    /// The most events one read returns.
    pub max_read: usize,
    /// How far back stream replay reaches (QUEUE_MAX_AGE): older log events are dropped by retention once
    /// a snapshot covers them, and cursors older than that get a reset.
    pub queue_max_age: Duration,
    /// How often the background retention pass runs (MAX_HISTORY, QUEUE_MAX_AGE, expired nonces); zero turns
    /// it off.
    pub retention_interval: Duration,
    /// DATA_DIR: attachments' files are kept under its `attachments/` directory.
    pub data_dir: PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            core: chat_core::Config::default(),
            queue_capacity: 4096,
            max_batch: 1024,
            snapshot_every: 10_000,
            tail_capacity: 65_536,
            user_tail_capacity: 16_384,
            rate_limit: Some(RateLimit {
                burst: 20,
                per_second: 5.0,
            }),
            login_limit: RateLimit {
                burst: 5,
                per_second: 1.0 / 12.0,
            },
            login_address_limit: RateLimit {
                burst: 30,
                per_second: 0.5,
            },
            login_account_limit: RateLimit {
                burst: 20,
                per_second: 1.0 / 12.0,
            },
            login_slowdown: Duration::from_secs(1),
            hashcash_bits: 0,
            hashcash_resource: "chatd".into(),
            max_spent_stamps: 1 << 18,
            hash_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            nonce_ttl: Duration::from_secs(600),
            cursor_flush_interval: Duration::from_secs(1),
            max_read: 1000,
            queue_max_age: Duration::from_secs(48 * 60 * 60),
            retention_interval: Duration::from_secs(300),
            data_dir: PathBuf::from("./data"),
        }
    }
}
