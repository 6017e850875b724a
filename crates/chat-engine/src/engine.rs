//! The [`Engine`] handle: start-up (snapshot plus log tail), the request API every transport calls, stream
//! reads and waits, credentials, idempotency and rate limits. The state it shares with the writer lives in
//! [`Shared`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_core::{
    ClientId, Command, Core, Created, Event, EventKind, NewClient, Origin, Seq, State, UnixMillis,
    UserId,
};
use chat_log::{Batch, Cluster, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::auth::{self, Bucket};
use crate::cluster::{self, ClusterConfig, ClusterStatus, Node};
use crate::config::EngineConfig;
use crate::directory::Directory;
use crate::error::EngineError;
use crate::files::{Files, SweepReport, Upload};
use crate::hashcash::{self, Spend, Spent, StampError};
use crate::password::{self, MAX_LOGIN_PASSWORD_BYTES};
use crate::streams::{Cursor, StreamRead, Streams, TailRead};
use crate::writer::{Job, Writer};

/// Unix milliseconds from the wall clock: the engine's only clock, passed to the core as `now`. Transports use
/// it too, so that every timestamp the server compares comes from one place.
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent at each step,
/// so a panic elsewhere while holding the lock leaves nothing half-done worth refusing service over.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An authenticated client: which device, of which user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    /// The client (device).
    pub client: ClientId,
    /// Its user.
    pub user: UserId,
}

/// A new client's credentials, given once: only the token's hash is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// The bearer token (64 hex digits, 256 random bits). Shown to the client once.
    pub token: String,
    /// The client and its user.
    pub session: Session,
    /// Where the client's stream starts.
    pub cursor: Cursor,
}

/// What an accepted command answers, once its events are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    /// The seq of the command's last durable event (or the log's last seq if it made none).
    pub seq: Seq,
    /// What it made.
    pub created: Option<Created>,
}

/// The stored form of a [`CommandReply`] for nonces: `Created` is the core's type and not serializable, so
/// this mirrors it.
#[derive(Serialize, Deserialize)]
enum StoredCreated {
    User(UserId, Option<ClientId>),
    Client(ClientId),
    Message(chat_core::MessageId),
    Channel(chat_core::ChannelId),
    Space(chat_core::SpaceId),
    Role(chat_core::RoleId),
    Invite(String),
}

#[derive(Serialize, Deserialize)]
struct StoredReply {
    seq: Seq,
    created: Option<StoredCreated>,
}

pub(crate) fn encode_reply(reply: &CommandReply) -> Vec<u8> {
    let created = reply.created.as_ref().and_then(|c| match c {
        Created::User { user, client } => Some(StoredCreated::User(*user, *client)),
        Created::Client(c) => Some(StoredCreated::Client(*c)),
        Created::Message(m) => Some(StoredCreated::Message(*m)),
        Created::Channel(c) => Some(StoredCreated::Channel(*c)),
        Created::Space(s) => Some(StoredCreated::Space(*s)),
        Created::Role(r) => Some(StoredCreated::Role(*r)),
        Created::Invite(code) => Some(StoredCreated::Invite(code.clone())),
        // A kind of result this engine does not know yet is replayed without it; the seq still says where
        // the command's events end.
        _ => None,
    });
    // Encoding plain data into a Vec cannot fail; an empty record decodes to nothing and is treated as unseen.
    postcard::to_stdvec(&StoredReply {
        seq: reply.seq,
        created,
    })
    .unwrap_or_default()
}

pub(crate) fn decode_reply(bytes: &[u8]) -> Option<CommandReply> {
    let stored: StoredReply = postcard::from_bytes(bytes).ok()?;
    Some(CommandReply {
        seq: stored.seq,
        created: stored.created.map(|c| match c {
            StoredCreated::User(user, client) => Created::User { user, client },
            StoredCreated::Client(c) => Created::Client(c),
            StoredCreated::Message(m) => Created::Message(m),
            StoredCreated::Channel(c) => Created::Channel(c),
            StoredCreated::Space(s) => Created::Space(s),
            StoredCreated::Role(r) => Created::Role(r),
            StoredCreated::Invite(code) => Created::Invite(code),
        }),
    })
}

/// The longest nonce accepted, in bytes (the spec's limit).
pub const MAX_NONCE: usize = 64;

/// The longest a cluster node's barrier ([`Engine::sync`]) holds a request: far above a healthy link's
/// round trip, short enough that a paused writer only slows the followers' readers until its lease lapses.
pub(crate) const SYNC_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct CursorTable {
    saved: HashMap<ClientId, Seq>,
    dirty: HashMap<ClientId, Seq>,
}

/// Live clients by token hash: the committed view of the core's token index, so that authenticating a request
/// (the hottest read there is) never waits for the writer. It changes only with committed `ClientCreated` and
/// `ClientRemoved` events, the same events that change the core's index.
#[derive(Debug, Default)]
struct TokenTable {
    by_hash: HashMap<[u8; 32], Session>,
    by_client: HashMap<ClientId, [u8; 32]>,
}

impl TokenTable {
    fn from_core(core: &Core) -> Self {
        let mut table = Self::default();
        for user in core.users() {
            for id in user.clients() {
                if let Some(c) = core.client(id) {
                    table.insert(c.token_hash, c.id, c.user);
                }
            }
        }
        table
    }

    fn insert(&mut self, hash: [u8; 32], client: ClientId, user: UserId) {
        self.by_hash.insert(hash, Session { client, user });
        self.by_client.insert(client, hash);
    }

    fn remove(&mut self, client: ClientId) {
        if let Some(hash) = self.by_client.remove(&client) {
            self.by_hash.remove(&hash);
        }
    }

    fn apply(&mut self, event: &Event) {
        match &event.kind {
            EventKind::ClientCreated {
                client,
                user,
                token_hash,
                ..
            } => self.insert(*token_hash, *client, *user),
            EventKind::ClientRemoved { client, .. } => self.remove(*client),
            _ => {}
        }
    }
}

/// What a failed login counts against. The pair is refused when its bucket is empty, the address too (for
/// one address trying many accounts), but the account alone is only slowed: refusing it would let anyone
/// lock its owner out with a wrong password now and then.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LoginKey {
    Pair(String, Option<IpAddr>),
    Address(IpAddr),
    Account(String),
}

impl LoginKey {
    fn limit(&self, config: &EngineConfig) -> crate::RateLimit {
        match self {
            LoginKey::Pair(..) => config.login_limit,
            LoginKey::Address(_) => config.login_address_limit,
            LoginKey::Account(_) => config.login_account_limit,
        }
    }
}

/// What the handles and the writer share.
pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) store: Arc<dyn Store>,
    /// The attachments' files under DATA_DIR.
    pub(crate) files: Arc<Files>,
    epoch: u64,
    streams: Mutex<Streams>,
    cursors: Mutex<CursorTable>,
    nonces: Mutex<HashMap<(UserId, String), (UnixMillis, CommandReply)>>,
    rates: Mutex<HashMap<UserId, Bucket>>,
    logins: Mutex<HashMap<LoginKey, Bucket>>,
    spent: Mutex<Spent>,
    hash_pool: Arc<Semaphore>,
    tokens: RwLock<TokenTable>,
    directory: RwLock<Directory>,
    /// The stream-lag histogram, looked up once: a read is too frequent to find it by name each time.
    lag: metrics::Histogram,
    pub(crate) closed: AtomicBool,
    fatal: Mutex<Option<Arc<str>>>,
    last_prune: AtomicU64,
    /// In a cluster: this node.
    pub(crate) node: Option<Arc<Node>>,
    /// The seq of the last published event: what a cluster's barriers wait on, and whoever follows the whole
    /// log ([`Engine::committed`]).
    pub(crate) committed: tokio::sync::watch::Sender<Seq>,
}

impl Shared {
    /// The committed directory (see [`Engine::directory`]).
    pub(crate) fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn nonce_lookup(
        &self,
        key: &(UserId, String),
        now: UnixMillis,
    ) -> Option<CommandReply> {
        let ttl = self.nonce_ttl_of(&key.1);
        lock(&self.nonces)
            .get(key)
            .filter(|(at, _)| at.saturating_add(ttl) > now)
            .map(|(_, r)| r.clone())
    }

    /// How long a nonce is kept in memory: a client's for `nonce_ttl`; one a cluster node made for a command
    /// without one only as long as that command may be resent (see [`cluster::INTERNAL_NONCE_TTL_MS`]).
    fn nonce_ttl_of(&self, nonce: &str) -> u64 {
        if cluster::is_internal_nonce(nonce) {
            cluster::INTERNAL_NONCE_TTL_MS
        } else {
            ttl_ms(self.config.nonce_ttl)
        }
    }

    /// Adds nonces read from the store (a node that takes over as writer loads those its predecessors kept).
    pub(crate) fn load_nonces(&self, records: Vec<chat_log::NonceRecord>) {
        let mut nonces = lock(&self.nonces);
        for r in records {
            if let Some(reply) = decode_reply(&r.reply) {
                nonces.insert((r.user, r.nonce), (r.at, reply));
            }
        }
    }

    /// The seq of the last event published to readers.
    pub(crate) fn last_published(&self) -> Seq {
        lock(&self.streams).last()
    }

    /// Takes one from the user's message bucket, or says how long to wait.
    pub(crate) fn take_rate(&self, user: UserId, now: UnixMillis) -> Result<(), EngineError> {
        let Some(limit) = self.config.rate_limit else {
            return Ok(());
        };
        let mut rates = lock(&self.rates);
        let bucket = rates
            .entry(user)
            .or_insert_with(|| Bucket::full(limit, now));
        bucket.take(limit, now).map_err(|wait| {
            metrics::counter!("chatd_commands_total", "outcome" => "rate_limited").increment(1);
            EngineError::RateLimited {
                retry_after: Duration::from_millis(wait),
                limit: limit.burst,
            }
        })
    }

    pub(crate) fn remember_nonces(
        &self,
        records: Vec<chat_log::NonceRecord>,
        mut replies: HashMap<(UserId, String), CommandReply>,
    ) {
        let mut nonces = lock(&self.nonces);
        for r in records {
            let key = (r.user, r.nonce);
            if let Some(reply) = replies.remove(&key) {
                nonces.insert(key, (r.at, reply));
            }
        }
    }

    /// Takes the cursors waiting to be saved, after registering new clients' start and dropping removed ones.
    pub(crate) fn take_dirty_cursors(
        &self,
        new: &[(ClientId, Seq)],
        removed: &[ClientId],
    ) -> Vec<(ClientId, Seq)> {
        let mut table = lock(&self.cursors);
        for (client, seq) in new {
            table.saved.insert(*client, *seq);
            table.dirty.insert(*client, *seq);
        }
        for client in removed {
            table.saved.remove(client);
            table.dirty.remove(client);
        }
        table.dirty.drain().collect()
    }

    fn set_cursor(&self, client: ClientId, seq: Seq) {
        let mut table = lock(&self.cursors);
        if table.saved.get(&client) != Some(&seq) {
            table.saved.insert(client, seq);
            table.dirty.insert(client, seq);
        }
    }

    /// Publishes a committed batch to the readers.
    pub(crate) fn publish(
        &self,
        durable: Vec<Event>,
        recipients: Vec<Vec<UserId>>,
        live: Vec<(Event, Vec<UserId>)>,
    ) {
        {
            let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
            for event in &durable {
                tokens.apply(event);
            }
        }
        // Names first, so that whoever reads an event below finds its names already there.
        if durable.iter().any(Directory::touches) {
            let mut directory = self
                .directory
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for event in durable.iter().filter(|e| Directory::touches(e)) {
                directory.apply(event);
            }
        }
        let mut streams = lock(&self.streams);
        for (event, users) in durable.into_iter().zip(recipients) {
            streams.publish_durable(Arc::new(event), &users);
        }
        for (event, users) in live {
            streams.publish_live(Arc::new(event), &users);
        }
        let last = streams.last();
        self.committed.send_if_modified(|seq| {
            let newer = last > *seq;
            *seq = (*seq).max(last);
            newer
        });
    }

    /// Forgets expired nonces and refilled rate buckets, at most every few seconds.
    pub(crate) fn forget_old(&self, now: UnixMillis) {
        let last = self.last_prune.load(Ordering::Relaxed);
        if now < last.saturating_add(5_000) {
            return;
        }
        self.last_prune.store(now, Ordering::Relaxed);
        lock(&self.nonces)
            .retain(|(_, nonce), (at, _)| at.saturating_add(self.nonce_ttl_of(nonce)) > now);
        if let Some(limit) = self.config.rate_limit {
            lock(&self.rates).retain(|_, b| !b.is_full(limit, now));
        }
        let config = &self.config;
        lock(&self.logins).retain(|k, b| !b.is_full(k.limit(config), now));
        lock(&self.spent).forget(now);
    }

    pub(crate) fn set_fatal(&self, reason: Arc<str>) {
        *lock(&self.fatal) = Some(reason);
        self.closed.store(true, Ordering::SeqCst);
    }

    fn gone(&self) -> EngineError {
        match lock(&self.fatal).clone() {
            Some(reason) => EngineError::Stopped { reason },
            None => EngineError::ShuttingDown,
        }
    }
}

fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The writer task: resolves when the engine stops, with the fatal error if a commit failed.
pub type EngineTask = JoinHandle<Result<(), EngineError>>;

/// A handle to a running engine; cheap to clone, one per transport or connection.
///
/// Every method that changes something answers only after the change is durable. The engine stops when
/// [`Engine::shutdown`] is called or the last handle is dropped; either way it flushes cursors and saves a
/// snapshot first.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("epoch", &self.shared.epoch)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts an engine on a store: restores the latest snapshot and replays the log after it (a new store
    /// gets a new core whose genesis events are logged), gives every client a fresh idle window, and spawns
    /// the writer on the current tokio runtime.
    pub async fn open<S: Store>(
        store: Arc<S>,
        config: EngineConfig,
    ) -> Result<(Engine, EngineTask), EngineError> {
        Self::start(store, config, None, None).await
    }

    /// Starts an engine as a node of a cluster on a shared store: binds the node's link listener, checks
    /// that DATA_DIR is the directory every node shares, restores the state as [`Engine::open`] does (the
    /// node that finds the log empty takes the writer lease and logs the genesis; the others wait for it),
    /// and spawns the node's writer task, which follows the log until it takes the writer lease.
    pub async fn open_cluster<S: Cluster>(
        store: Arc<S>,
        config: EngineConfig,
        cluster: ClusterConfig,
    ) -> Result<(Engine, EngineTask), EngineError> {
        let shared_store: Arc<dyn Cluster> = store;
        let node = Node::new(Arc::clone(&shared_store), &cluster).await?;
        let marker = Arc::clone(&shared_store);
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || cluster::check_data_dir(&*marker, &data_dir))
            .await
            .map_err(|e| EngineError::Stopped {
                reason: format!("the start-up task failed: {e}").into(),
            })??;
        // The log's genesis is written once, by whichever node holds the lease when the log is empty.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let term = loop {
            let s = Arc::clone(&shared_store);
            let (id, addr, ttl) = (node.id, node.addr.clone(), node.ttl);
            let found = tokio::task::spawn_blocking(move || {
                if s.last_seq()? > 0 {
                    return Ok::<_, StoreError>(Some(None));
                }
                match s.lease()? {
                    Some(l) if l.live => Ok(None),
                    _ => Ok(s.try_lead(id, &addr, ttl)?.map(Some)),
                }
            })
            .await
            .map_err(|e| EngineError::Stopped {
                reason: format!("the start-up task failed: {e}").into(),
            })??;
            match found {
                Some(t) => break t,
                None if std::time::Instant::now() > deadline => {
                    return Err(EngineError::Unavailable {
                        reason: "the log is empty and another node holds the writer lease without                                  writing its genesis"
                            .into(),
                    });
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let store: Arc<dyn Store> = shared_store;
        Self::start(store, config, Some(node), term).await
    }

    async fn start<S: Store + ?Sized>(
        store: Arc<S>,
        mut config: EngineConfig,
        node: Option<Arc<Node>>,
        term: Option<u64>,
    ) -> Result<(Engine, EngineTask), EngineError>
    where
        Arc<S>: Into<Arc<dyn Store>>,
    {
        let store: Arc<dyn Store> = store.into();
        let meta = store.meta();
        config.core.invite_seed = meta.invite_seed;
        let now = now_ms();
        let loader = Arc::clone(&store);
        let core_config = config.core.clone();
        let nonce_ttl = ttl_ms(config.nonce_ttl);
        let genesis = node
            .as_ref()
            .zip(term)
            .map(|(n, t)| (Arc::clone(&n.store), t));
        let shared_log = node.is_some();
        let (core, cursors, nonces) = tokio::task::spawn_blocking(move || {
            let (core, cursors) = load(&*loader, core_config, now, genesis, shared_log)?;
            // The nonces still live are loaded once, so that a command's nonce is checked in memory only: a
            // store lookup per command would cost more than the command's share of a group commit.
            let nonces = loader.nonces_since(now.saturating_sub(nonce_ttl))?;
            Ok::<_, EngineError>((core, cursors, nonces))
        })
        .await
        .map_err(|e| EngineError::Stopped {
            reason: format!("the start-up task failed: {e}").into(),
        })??;
        let nonces: HashMap<(UserId, String), (UnixMillis, CommandReply)> = nonces
            .into_iter()
            .filter_map(|r| Some(((r.user, r.nonce), (r.at, decode_reply(&r.reply)?))))
            .collect();
        let last = core.last_seq();
        let tokens = TokenTable::from_core(&core);
        let directory = Directory::from_core(&core);
        // tokio refuses a zero or an absurdly large capacity with a panic; settings must not be able to.
        let (tx, rx) = mpsc::channel(config.queue_capacity.clamp(1, 1 << 20));
        let shared = Arc::new(Shared {
            epoch: meta.epoch,
            streams: Mutex::new(Streams::new(
                last,
                config.tail_capacity,
                config.user_tail_capacity,
            )),
            cursors: Mutex::new(CursorTable {
                saved: cursors.into_iter().collect(),
                dirty: HashMap::new(),
            }),
            nonces: Mutex::new(nonces),
            rates: Mutex::new(HashMap::new()),
            logins: Mutex::new(HashMap::new()),
            spent: Mutex::new(Spent::default()),
            hash_pool: Arc::new(Semaphore::new(config.hash_concurrency.clamp(1, 1024))),
            tokens: RwLock::new(tokens),
            directory: RwLock::new(directory),
            lag: metrics::histogram!("chatd_stream_lag_events"),
            closed: AtomicBool::new(false),
            fatal: Mutex::new(None),
            last_prune: AtomicU64::new(now),
            committed: tokio::sync::watch::channel(last).0,
            files: Arc::new(Files::new(&config.data_dir)),
            store,
            config,
            node: node.clone(),
        });
        let writer = Writer {
            core,
            shared: Arc::clone(&shared),
            rx,
            since_snapshot: 0,
            snapshot_task: None,
            now,
            node: node.clone(),
            term: None,
            initial_term: term,
            stashed: Vec::new(),
        };
        if let Some(node) = &node {
            cluster::spawn_acceptor(&shared, &tx);
            cluster::spawn_doorbell(node);
            cluster::spawn_reports(&shared);
        }
        let task = tokio::spawn(writer.run());
        spawn_retention(&shared);
        Ok((Engine { shared, tx }, task))
    }

    /// In a cluster: this node's role and term, and every node's last report with its lag behind the log.
    /// `None` for a single node.
    pub async fn cluster_status(&self) -> Result<Option<ClusterStatus>, EngineError> {
        let Some(node) = self.shared.node.clone() else {
            return Ok(None);
        };
        let store = Arc::clone(&node.store);
        let (nodes, last) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.nodes()?, store.last_seq()?))
        })
        .await
        .map_err(|_| self.shared.gone())??;
        Ok(Some(ClusterStatus {
            node: node.id,
            role: node.role(),
            term: node.term.load(Ordering::SeqCst),
            nodes: nodes
                .into_iter()
                .map(|mut n| {
                    // This node's own row as it stands now, not as of its last report.
                    if n.id == node.id {
                        n.role = node.role();
                        n.applied = self.last_seq();
                        n.age_ms = 0;
                    }
                    let lag = last.saturating_sub(n.applied);
                    (n, lag)
                })
                .collect(),
        }))
    }

    /// The log's epoch (cursors carry it).
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The seq of the last committed event.
    pub fn last_seq(&self) -> Seq {
        lock(&self.shared.streams).last()
    }

    /// The cursor a client continues from when it gives none.
    pub fn cursor(&self, client: ClientId) -> Option<Seq> {
        lock(&self.shared.cursors).saved.get(&client).copied()
    }

    /// How many live-only events (typing, presence) the user has been sent so far. A reader that starts
    /// following the stream from a snapshot takes this before the snapshot and passes it to the first
    /// [`Engine::wait_from`], so that live events between the two are not missed.
    pub fn live_generation(&self, user: UserId) -> u64 {
        lock(&self.shared.streams).live_generation(user)
    }

    /// The names of users, channels and spaces as of the last commit, for rendering events (see
    /// [`Directory`]). Hold the guard briefly and never across an `.await`: the writer waits for it when names
    /// change.
    pub fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.shared
            .directory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The attachments' files: where a transport stores an upload ([`Files::upload`]) and finds a file to
    /// serve ([`Files::find`]). Removing them is the engine's business.
    pub fn files(&self) -> &Arc<Files> {
        &self.shared.files
    }

    /// Compares the attachments' files with the messages in the store and reports (with `fix`, removes)
    /// every file no message refers to that was last written before `cutoff` and is not an upload in flight
    /// (see [`Files::sweep`]). Runs on the blocking pool.
    pub async fn sweep_files(
        &self,
        cutoff: SystemTime,
        fix: bool,
    ) -> Result<SweepReport, EngineError> {
        let files = Arc::clone(&self.shared.files);
        let store = Arc::clone(&self.shared.store);
        tokio::task::spawn_blocking(move || files.sweep(&*store, cutoff, fix))
            .await
            .map_err(|e| EngineError::Stopped {
                reason: format!("the sweep task failed: {e}").into(),
            })?
    }

    /// Runs a call on the store on the blocking pool, outside the writer's order: history, search and
    /// message lookups, which need no ordering with commands, and the record of spent stamps, which no
    /// command depends on. Crate-private: transports read through the methods in `read.rs`, so that a new store
    /// (or a cluster's shared log) changes what they call in one place.
    pub(crate) async fn read_store<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let store = Arc::clone(&self.shared.store);
        Ok(tokio::task::spawn_blocking(move || read(store.as_ref()))
            .await
            .map_err(|_| self.shared.gone())??)
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            Err(self.shared.gone())
        } else {
            Ok(())
        }
    }

    async fn submit(
        &self,
        origin: Origin,
        command: Command,
        nonce: Option<(UserId, String)>,
        upload: Option<Upload>,
    ) -> Result<CommandReply, EngineError> {
        self.submit_as(origin, command, nonce, upload, false).await
    }

    /// Queues a command for the writer. In a cluster, the command always carries a nonce and is resent while
    /// no node can settle it (a writer changing hands), for up to twice the lease's length; its files are
    /// kept here and settled by the final outcome.
    async fn submit_as(
        &self,
        origin: Origin,
        command: Command,
        nonce: Option<(UserId, String)>,
        upload: Option<Upload>,
        rate: bool,
    ) -> Result<CommandReply, EngineError> {
        let Some(node) = self.shared.node.clone() else {
            return self.submit_once(origin, command, nonce, upload, rate).await;
        };
        let nonce = nonce.unwrap_or_else(|| (cluster::ANONYMOUS_NONCE_USER, node.make_nonce()));
        let connect = match (&origin, &command) {
            (Origin::Client(c), Command::Connect) => Some((*c, true)),
            (Origin::Client(c), Command::Disconnect) => Some((*c, false)),
            _ => None,
        };
        // Well within the time a node's own nonces are remembered, so a resend is always recognised.
        let window = (node.ttl * 2 + Duration::from_secs(2))
            .min(Duration::from_millis(cluster::INTERNAL_NONCE_TTL_MS / 2));
        let give_up = tokio::time::Instant::now() + window;
        let mut wait = Duration::from_millis(20);
        let result = loop {
            let result = self
                .submit_once(origin, command.clone(), Some(nonce.clone()), None, rate)
                .await;
            match result {
                Err(EngineError::Unavailable { .. })
                    if tokio::time::Instant::now() + wait < give_up =>
                {
                    metrics::counter!("chatd_cluster_resends_total").increment(1);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                other => break other,
            }
        };
        if let (Some((client, up)), Ok(_)) = (connect, &result) {
            node.count_connection(client, up);
        }
        if let Some(u) = upload {
            match &result {
                Ok(_) => u.keep(),
                // Refused for sure: no message holds the files.
                Err(EngineError::Refused(_) | EngineError::RateLimited { .. }) => u.discard(),
                // Perhaps committed: the files stay (the sweep removes them if no message names them).
                Err(_) => u.keep(),
            }
        }
        result
    }

    async fn submit_once(
        &self,
        origin: Origin,
        command: Command,
        nonce: Option<(UserId, String)>,
        upload: Option<Upload>,
        rate: bool,
    ) -> Result<CommandReply, EngineError> {
        if let Err(e) = self.check_open() {
            if let Some(u) = upload {
                u.discard();
            }
            return Err(e);
        }
        let (reply, rx) = oneshot::channel();
        let job = Job::Command {
            origin,
            command: Box::new(command),
            nonce,
            reply,
            upload,
            rate,
            forwarded: false,
        };
        if let Err(refused) = self.tx.send(job).await {
            // The writer is gone and never saw the command: no message holds its files.
            if let Job::Command {
                upload: Some(u), ..
            } = refused.0
            {
                u.discard();
            }
            return Err(self.shared.gone());
        }
        rx.await.map_err(|_| self.shared.gone())?
    }

    /// In a cluster, waits until this node has applied every command acknowledged anywhere before the call,
    /// so that a client whose command was answered by one node reads its effects on any other (a token it
    /// was just given, a channel it just joined, a cursor past this node's end). The writer, and a single
    /// node, return at once. A follower asks the writer over its link (one round trip) and waits for what it
    /// has not applied yet, all within a second: without a link or an answer in time (the writer paused
    /// or gone) it serves what it has.
    pub async fn sync(&self) {
        let Some(node) = &self.shared.node else {
            return;
        };
        if node.role() == chat_log::NodeRole::Writer {
            return;
        }
        let started = tokio::time::Instant::now();
        let Some(target) = node.writer_seq(SYNC_WAIT).await else {
            return;
        };
        if self.shared.last_published() >= target {
            return;
        }
        let mut applied = self.shared.committed.subscribe();
        let left = SYNC_WAIT.saturating_sub(started.elapsed());
        let _ = tokio::time::timeout(
            left,
            applied.wait_for(|_| self.shared.last_published() >= target),
        )
        .await;
    }

    /// Runs `f` on the core's committed state, in the writer's order: it sees every command acknowledged
    /// before it was called. Keep it short: the writer waits for it.
    pub async fn query<R, F>(&self, f: F) -> Result<R, EngineError>
    where
        R: Send + 'static,
        F: FnOnce(&Core) -> R + Send + 'static,
    {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        let job = Job::Query(Box::new(move |core: &Core| {
            let _ = tx.send(f(core));
        }));
        self.tx.send(job).await.map_err(|_| self.shared.gone())?;
        rx.await.map_err(|_| self.shared.gone())
    }

    /// Runs a command as a client. With a `nonce`, a repeat by the same user within the nonce lifetime
    /// returns the first reply and changes nothing. Message-like commands are subject to the per-user rate
    /// limit, checked before the core sees them.
    pub async fn command(
        &self,
        session: &Session,
        command: Command,
        nonce: Option<String>,
    ) -> Result<CommandReply, EngineError> {
        self.client_command(session, command, nonce, None).await
    }

    /// Runs a command whose message carries the files of `upload` (its [`Upload::attachments`]), as
    /// [`Engine::command`] does. The files are kept once the command commits and removed if it is refused
    /// or never runs, whatever becomes of the caller meanwhile.
    pub async fn command_with_upload(
        &self,
        session: &Session,
        command: Command,
        nonce: Option<String>,
        upload: Upload,
    ) -> Result<CommandReply, EngineError> {
        self.client_command(session, command, nonce, Some(upload))
            .await
    }

    /// [`Engine::command`], with an upload. Every early return drops the upload, which removes its files: the
    /// writer never saw the command.
    async fn client_command(
        &self,
        session: &Session,
        command: Command,
        nonce: Option<String>,
        upload: Option<Upload>,
    ) -> Result<CommandReply, EngineError> {
        self.check_open()?;
        let now = now_ms();
        let nonce = match nonce {
            Some(n) if n.is_empty() || n.len() > MAX_NONCE => {
                return Err(EngineError::InvalidInput {
                    field: "nonce",
                    reason: "must be 1 to 64 bytes",
                });
            }
            Some(n) if cluster::is_internal_nonce(&n) => {
                return Err(EngineError::InvalidInput {
                    field: "nonce",
                    reason: "must not start with a control character",
                });
            }
            Some(n) => {
                let key = (session.user, n);
                // Memory holds every live nonce: those of earlier runs are loaded at start-up, and this
                // run's are added as their commands commit.
                if let Some(first) = self.shared.nonce_lookup(&key, now) {
                    return Ok(first);
                }
                Some(key)
            }
            None => None,
        };
        // In a cluster the writer checks the rate, so that it holds across nodes.
        let rate = rate_limited(&command);
        if rate && self.shared.node.is_none() {
            self.shared.take_rate(session.user, now)?;
        }
        let rate = rate && self.shared.node.is_some();
        let nonce = match (nonce, &self.shared.node) {
            (None, Some(node)) => Some((session.user, node.make_nonce())),
            (nonce, _) => nonce,
        };
        self.submit_as(Origin::Client(session.client), command, nonce, upload, rate)
            .await
    }

    /// Runs a command as the server's operator (the CLI, housekeeping): no rate limit, no nonce.
    pub async fn system(&self, command: Command) -> Result<CommandReply, EngineError> {
        self.submit(Origin::System, command, None, None).await
    }

    /// Runs commands as the server's operator, in order, each with its own result. On a single node they
    /// are queued together, so that the writer commits them in a few groups rather than one commit each (a
    /// linked server's batch is applied this way); in a cluster they go one after the other.
    pub async fn system_batch(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<CommandReply, EngineError>> {
        let mut results = Vec::with_capacity(commands.len());
        if self.shared.node.is_some() {
            for command in commands {
                results.push(self.system(command).await);
            }
            return results;
        }
        let mut waits = Vec::with_capacity(commands.len());
        for command in commands {
            if let Err(e) = self.check_open() {
                waits.push(Err(e));
                continue;
            }
            let (reply, rx) = oneshot::channel();
            let job = Job::Command {
                origin: Origin::System,
                command: Box::new(command),
                nonce: None,
                reply,
                upload: None,
                rate: false,
                forwarded: false,
            };
            match self.tx.send(job).await {
                Ok(()) => waits.push(Ok(rx)),
                Err(_) => waits.push(Err(self.shared.gone())),
            }
        }
        for wait in waits {
            results.push(match wait {
                Ok(rx) => rx.await.unwrap_or_else(|_| Err(self.shared.gone())),
                Err(e) => Err(e),
            });
        }
        results
    }

    /// The whole log's durable events after `after`, at most `limit`, in order: from memory while they are
    /// in the recent tail, else from the store (on the blocking pool). For whoever follows every event, as a
    /// linked server's outbox does.
    pub async fn log_after(
        &self,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, EngineError> {
        if let Some(events) = lock(&self.shared.streams).log_after(after, limit) {
            return Ok(events);
        }
        let store = Arc::clone(&self.shared.store);
        let events = tokio::task::spawn_blocking(move || store.events_after(after, limit))
            .await
            .map_err(|_| self.shared.gone())??;
        Ok(events.into_iter().map(Arc::new).collect())
    }

    /// Follows the log's growth: the seq of the last committed event, changed at every commit.
    pub fn committed(&self) -> tokio::sync::watch::Receiver<Seq> {
        self.shared.committed.subscribe()
    }

    /// Whether this node writes the log: always on a single node; in a cluster, while it holds the lease.
    pub fn is_writer(&self) -> bool {
        self.shared
            .node
            .as_ref()
            .is_none_or(|n| n.role() == chat_log::NodeRole::Writer)
    }

    /// Starts a guest session: a user without a password, released when its last client ends. With
    /// `hashcash_bits` above zero this is refused with [`EngineError::HashcashRequired`]: use
    /// [`Engine::guest_with_stamp`].
    pub async fn guest(&self, nick: &str, client_name: &str) -> Result<Login, EngineError> {
        self.guest_with_stamp(nick, client_name, None).await
    }

    /// Starts a guest session, paying with a proof-of-work stamp when `hashcash_bits` is above zero (see
    /// [`Engine::hashcash`]). The stamp is spent only if the session is created: a sign-up refused for its
    /// nick may try again with the same stamp.
    pub async fn guest_with_stamp(
        &self,
        nick: &str,
        client_name: &str,
        stamp: Option<&str>,
    ) -> Result<Login, EngineError> {
        self.check_open()?;
        let bits = self.shared.config.hashcash_bits;
        if bits == 0 {
            return self.create_user(nick, None, false, client_name).await;
        }
        let resource = &self.shared.config.hashcash_resource;
        let refuse = |reason| EngineError::HashcashRequired {
            bits,
            resource: resource.clone(),
            reason,
        };
        let now = now_ms();
        let stamp = stamp.ok_or(refuse(StampError::Missing))?;
        let verified = hashcash::verify(stamp, bits, resource, now).map_err(refuse)?;
        let capacity = self.shared.config.max_spent_stamps;
        match lock(&self.shared.spent).spend(&verified, now, capacity) {
            Spend::Fresh => {}
            Spend::Again => return Err(refuse(StampError::Spent)),
            Spend::Full(until) => {
                return Err(EngineError::RateLimited {
                    retry_after: Duration::from_millis(until.saturating_sub(now).max(1)),
                    limit: u32::try_from(capacity).unwrap_or(u32::MAX),
                });
            }
        }
        // The table in memory answers replays since start-up without a write; the store remembers across
        // restarts, and is the one that decides (a stamp spent before this process started is in it only).
        let (key, expires) = (verified.key, verified.expires);
        let recorded = self
            .read_store(move |store| store.spend_stamp(key, expires, now))
            .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => return Err(refuse(StampError::Spent)),
            Err(e) => {
                lock(&self.shared.spent).unspend(&key);
                return Err(e);
            }
        }
        let result = self.create_user(nick, None, false, client_name).await;
        if result.is_err() {
            lock(&self.shared.spent).unspend(&key);
            // Best effort: if this fails too, the stamp stays spent, and the guest mints another.
            let _ = self.read_store(move |store| store.unspend_stamp(key)).await;
        }
        result
    }

    /// The proof of work a guest sign-up needs: the zero bits (0: none) and the resource a stamp must name.
    pub fn hashcash(&self) -> (u32, &str) {
        (
            self.shared.config.hashcash_bits,
            &self.shared.config.hashcash_resource,
        )
    }

    /// Creates an account (or a bot) with a password, hashed on the bounded pool, and its first client.
    pub async fn register(
        &self,
        nick: &str,
        password: &str,
        bot: bool,
        client_name: &str,
    ) -> Result<Login, EngineError> {
        check_password(password)?;
        let hash = self.hash(password.to_owned()).await?;
        self.create_user(nick, Some(hash), bot, client_name).await
    }

    async fn create_user(
        &self,
        nick: &str,
        password_hash: Option<String>,
        bot: bool,
        client_name: &str,
    ) -> Result<Login, EngineError> {
        let (token, token_hash) = auth::new_token()?;
        let reply = self
            .submit(
                Origin::Anonymous,
                Command::Register {
                    nick: nick.to_owned(),
                    password_hash,
                    bot,
                    client: Some(NewClient {
                        name: client_name.to_owned(),
                        token_hash,
                    }),
                },
                None,
                None,
            )
            .await?;
        match reply.created {
            Some(Created::User {
                user,
                client: Some(client),
            }) => Ok(self.login_result(token, client, user, reply.seq)),
            other => Err(unexpected(&other)),
        }
    }

    fn login_result(&self, token: String, client: ClientId, user: UserId, seq: Seq) -> Login {
        Login {
            token,
            session: Session { client, user },
            cursor: Cursor {
                epoch: self.shared.epoch,
                seq,
            },
        }
    }

    /// Adds a client to an account after checking its password. Failures are counted per account and
    /// address (`ip`) pair, per address, and per account. An empty pair or address bucket refuses the attempt
    /// with a typed [`EngineError::RateLimited`]; an empty account bucket only slows every attempt for that
    /// account by `login_slowdown`, so that failures from elsewhere never keep the owner out. A successful
    /// login gives back what it took.
    pub async fn login(
        &self,
        nick: &str,
        password: &str,
        client_name: &str,
        ip: Option<IpAddr>,
    ) -> Result<Login, EngineError> {
        let user = self.checked_login(nick, password, ip).await?;
        self.new_client(user, client_name).await
    }

    /// Logs in as [`Engine::login`] does (with its throttling), but continues the account's client named
    /// `client_name` when it has one: a door whose clients carry no token (an IRC client names its device in
    /// `USER`) comes back to the same stream and cursor each time. Without such a client, one is made; its
    /// token is in the answer then, and `None` when an existing client was continued.
    pub async fn login_device(
        &self,
        nick: &str,
        password: &str,
        client_name: &str,
        ip: Option<IpAddr>,
    ) -> Result<(Session, Cursor, Option<String>), EngineError> {
        let user = self.checked_login(nick, password, ip).await?;
        let name = client_name.to_owned();
        let existing = self
            .query(move |core| {
                core.clients_of(user)
                    .filter(|c| c.name == name)
                    .map(|c| c.id)
                    .max()
            })
            .await?;
        if let Some(client) = existing {
            let seq = self.cursor(client).unwrap_or_else(|| self.last_seq());
            let cursor = Cursor {
                epoch: self.shared.epoch,
                seq,
            };
            return Ok((Session { client, user }, cursor, None));
        }
        let login = self.new_client(user, client_name).await?;
        Ok((login.session, login.cursor, Some(login.token)))
    }

    async fn new_client(&self, user: UserId, client_name: &str) -> Result<Login, EngineError> {
        let (token, token_hash) = auth::new_token()?;
        let reply = self
            .submit(
                Origin::Anonymous,
                Command::Login {
                    user,
                    client: NewClient {
                        name: client_name.to_owned(),
                        token_hash,
                    },
                },
                None,
                None,
            )
            .await?;
        match reply.created {
            Some(Created::Client(client)) => Ok(self.login_result(token, client, user, reply.seq)),
            other => Err(unexpected(&other)),
        }
    }

    /// The password check of a login, throttled (see [`Engine::login`]): the account's user.
    async fn checked_login(
        &self,
        nick: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<UserId, EngineError> {
        self.check_open()?;
        let now = now_ms();
        let account = chat_core::casefold(nick);
        let refusing: Vec<LoginKey> = std::iter::once(LoginKey::Pair(account.clone(), ip))
            .chain(ip.map(LoginKey::Address))
            .collect();
        let slowing = LoginKey::Account(account);
        let config = &self.shared.config;
        // Each attempt takes its tokens before the (slow) check rather than after a failure, so that many
        // attempts sent at once cannot all pass the check before the first failure is counted.
        let slow = {
            let mut logins = lock(&self.shared.logins);
            let mut wait = 0;
            for key in &refusing {
                let limit = key.limit(config);
                let bucket = logins
                    .entry(key.clone())
                    .or_insert_with(|| Bucket::full(limit, now));
                wait = wait.max(bucket.wait_ms(limit, now));
            }
            if wait > 0 {
                let limit = refusing.iter().map(|k| k.limit(config).burst).min();
                return Err(EngineError::RateLimited {
                    retry_after: Duration::from_millis(wait),
                    limit: limit.unwrap_or(config.login_limit.burst),
                });
            }
            for key in &refusing {
                if let Some(bucket) = logins.get_mut(key) {
                    let _ = bucket.take(key.limit(config), now);
                }
            }
            let limit = slowing.limit(config);
            logins
                .entry(slowing.clone())
                .or_insert_with(|| Bucket::full(limit, now))
                .take(limit, now)
                .is_err()
        };
        if slow {
            metrics::counter!("chatd_logins_slowed_total").increment(1);
            tokio::time::sleep(config.login_slowdown).await;
        }
        let user = self.check_login(nick, password).await;
        if let Ok(Some(_)) = user {
            let now = now_ms();
            let mut logins = lock(&self.shared.logins);
            for key in refusing.iter().chain(std::iter::once(&slowing)) {
                if let Some(bucket) = logins.get_mut(key) {
                    bucket.give_back(key.limit(config), now);
                }
            }
        }
        user?.ok_or(EngineError::InvalidCredentials)
    }

    /// Checks a nick and password: the account's user when they match, `None` when they do not.
    async fn check_login(&self, nick: &str, password: &str) -> Result<Option<UserId>, EngineError> {
        if password.len() > MAX_LOGIN_PASSWORD_BYTES {
            return Ok(None);
        }
        let nick_owned = nick.to_owned();
        let account = self
            .query(move |core| {
                core.user_by_nick(&nick_owned)
                    .filter(|u| !u.system && !u.released)
                    .and_then(|u| u.password_hash.clone().map(|h| (u.id, h)))
            })
            .await?;
        // An unknown nick or a guest is checked against a dummy hash, so the answer takes as long as a wrong
        // password and does not tell which nicks have accounts.
        let (user, phc) = match account {
            Some((user, phc)) => (Some(user), phc),
            None => (None, dummy_hash()?),
        };
        let ok = self.verify(password.to_owned(), phc).await?;
        Ok(user.filter(|_| ok))
    }

    /// Sets the session's user's password (a guest becomes an account).
    pub async fn set_password(
        &self,
        session: &Session,
        password: &str,
    ) -> Result<CommandReply, EngineError> {
        check_password(password)?;
        let password_hash = self.hash(password.to_owned()).await?;
        self.submit(
            Origin::Client(session.client),
            Command::SetPassword {
                user: session.user,
                password_hash,
            },
            None,
            None,
        )
        .await
    }

    /// Sets any user's password as the server's operator (the CLI): hashed on the bounded pool like every
    /// password, then applied from [`Origin::System`]. A guest that gets a password becomes an account.
    pub async fn set_user_password(
        &self,
        user: UserId,
        password: &str,
    ) -> Result<CommandReply, EngineError> {
        check_password(password)?;
        let password_hash = self.hash(password.to_owned()).await?;
        self.submit(
            Origin::System,
            Command::SetPassword {
                user,
                password_hash,
            },
            None,
            None,
        )
        .await
    }

    /// Finds the client a bearer token belongs to. The token is hashed, looked up among the committed live
    /// clients, and the stored hash is compared in constant time. It does not wait for the writer.
    pub async fn authenticate(&self, token: &str) -> Result<Session, EngineError> {
        self.check_open()?;
        if !auth::token_well_formed(token) {
            return Err(EngineError::InvalidToken);
        }
        let hash = auth::token_hash(token);
        if let Some(session) = self.lookup_token(&hash) {
            return Ok(session);
        }
        // In a cluster, a token made through another node a moment ago may be in the log but not yet
        // applied here: a client that signs up on one node and goes on through another must not be told
        // its token is invalid. So an unknown token is looked up again once this node has applied the log
        // as far as it reached when asked.
        if self.shared.node.is_none() {
            return Err(EngineError::InvalidToken);
        }
        self.catch_up_to(None).await?;
        self.lookup_token(&hash).ok_or(EngineError::InvalidToken)
    }

    /// In a cluster: waits (a bounded time) until this node has applied the log as far as it reached when
    /// asked, or as far as `want` if that is sooner. A node follows the log a few milliseconds behind the
    /// writer (more just after it started); what a client saw through another node must not look unknown
    /// here, nor a cursor from another node look like one from the future.
    async fn catch_up_to(&self, want: Option<Seq>) -> Result<(), EngineError> {
        let Some(node) = self.shared.node.clone() else {
            return Ok(());
        };
        if want.is_some_and(|w| w <= self.last_seq()) {
            return Ok(());
        }
        let store = Arc::clone(&self.shared.store);
        let end = tokio::task::spawn_blocking(move || store.last_seq())
            .await
            .map_err(|_| self.shared.gone())?
            // The store cannot tell: answer from what this node has.
            .unwrap_or(0);
        let end = want.map_or(end, |w| w.min(end));
        if end > self.last_seq() {
            node.doorbell.send_replace(end);
            // A node starved of CPU (or just restarted) may take a while; a client waits rather than be
            // told its token is unknown.
            // Woken by each publish (the node's `applied` watch), not by polling.
            let wait = (node.ttl * 2).max(Duration::from_secs(3));
            let mut applied = self.shared.committed.subscribe();
            let _ = tokio::time::timeout(
                wait,
                applied.wait_for(|_| self.shared.last_published() >= end),
            )
            .await;
        }
        Ok(())
    }

    /// The session of a token's hash among the committed live clients, compared in constant time.
    fn lookup_token(&self, hash: &[u8; 32]) -> Option<Session> {
        let tokens = self
            .shared
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        tokens
            .by_hash
            .get(hash)
            .filter(|s| {
                tokens
                    .by_client
                    .get(&s.client)
                    .is_some_and(|stored| auth::same_hash(stored, hash))
            })
            .copied()
    }

    async fn hash(&self, password: String) -> Result<String, EngineError> {
        self.on_pool(move || auth::hash_password(&password)).await
    }

    async fn verify(&self, password: String, phc: String) -> Result<bool, EngineError> {
        self.on_pool(move || auth::verify_password(&password, &phc))
            .await
    }

    /// Runs slow hashing on the blocking pool, at most `hash_concurrency` at once, so that a flood of logins
    /// queues here instead of taking every blocking thread (and never touches the writer).
    async fn on_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let permit = Arc::clone(&self.shared.hash_pool)
            .acquire_owned()
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| EngineError::Hashing(e.to_string()))?
    }

    /// Reads the session's user's stream after `after` (this client's saved cursor when `None`), at most
    /// `limit` events, without waiting. The cursor returned is saved as the client's. A client that no longer
    /// exists gets [`EngineError::InvalidToken`].
    pub async fn read(
        &self,
        session: &Session,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<StreamRead, EngineError> {
        self.read_at(session, after, limit, None, true).await
    }

    /// Like [`Engine::read`], but when nothing is there yet, waits up to `timeout` for the user's next
    /// event (live-only ones such as typing included).
    pub async fn wait(
        &self,
        session: &Session,
        after: Option<Cursor>,
        limit: usize,
        timeout: Duration,
    ) -> Result<StreamRead, EngineError> {
        self.wait_from(session, after, limit, timeout, None).await
    }

    /// Like [`Engine::wait`], for a reader that follows the stream wait after wait: `live` is the
    /// [`StreamRead::live`] of its previous read, and live-only events (typing, presence) that came between
    /// that read and this wait are returned too instead of being missed.
    pub async fn wait_from(
        &self,
        session: &Session,
        after: Option<Cursor>,
        limit: usize,
        timeout: Duration,
        live: Option<u64>,
    ) -> Result<StreamRead, EngineError> {
        self.wait_inner(session, after, limit, timeout, live, true)
            .await
    }

    async fn wait_inner(
        &self,
        session: &Session,
        after: Option<Cursor>,
        limit: usize,
        timeout: Duration,
        live: Option<u64>,
        save: bool,
    ) -> Result<StreamRead, EngineError> {
        // Callers pass what a client asked for; a timeout too large to represent waits for a day instead.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400));
        let (mut waiter, current) = lock(&self.shared.streams).subscribe(session.user);
        let live_since = live.map_or(current, |l| l.min(current));
        let first = self.read_at(session, after, limit, live, save).await?;
        if !first.events.is_empty() || first.reset {
            return Ok(first);
        }
        loop {
            if tokio::time::timeout_at(deadline, waiter.changed())
                .await
                .is_err()
            {
                // Timed out: an empty answer with the same cursor.
                return Ok(first);
            }
            let next = self
                .read_at(session, Some(first.cursor), limit, Some(live_since), save)
                .await?;
            if !next.events.is_empty() || next.reset {
                return Ok(next);
            }
        }
    }

    /// Like [`Engine::wait_from`] from an explicit cursor, but leaves the client's saved cursor alone: a
    /// door that writes what it reads to a socket saves the position the client has really been sent with
    /// [`Engine::save_cursor`], so that a client cut off with events still queued is sent them again when it
    /// comes back.
    pub async fn follow(
        &self,
        session: &Session,
        after: Cursor,
        limit: usize,
        timeout: Duration,
        live: Option<u64>,
    ) -> Result<StreamRead, EngineError> {
        self.wait_inner(session, Some(after), limit, timeout, live, false)
            .await
    }

    /// Saves `cursor` as the client's position in its stream (what a reader that does not save on read,
    /// [`Engine::follow`], has delivered). A cursor of another epoch is ignored.
    pub fn save_cursor(&self, session: &Session, cursor: Cursor) {
        if cursor.epoch == self.shared.epoch {
            self.shared.set_cursor(session.client, cursor.seq);
        }
    }

    async fn read_at(
        &self,
        session: &Session,
        after: Option<Cursor>,
        limit: usize,
        live_since: Option<u64>,
        save: bool,
    ) -> Result<StreamRead, EngineError> {
        // A client that logged out or expired has no stream any more; refusing here also keeps its cursor
        // from being saved again after its removal dropped it.
        let live = self
            .shared
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_client
            .contains_key(&session.client);
        if !live {
            return Err(EngineError::InvalidToken);
        }
        let epoch = self.shared.epoch;
        let limit = limit.clamp(1, self.shared.config.max_read.max(1));
        let after = match after {
            Some(c) if c.epoch != epoch => return Ok(self.reset(session)),
            Some(c) => {
                // A cursor another node of the cluster gave, ahead of what this one applied so far.
                if c.seq > self.last_seq() {
                    self.catch_up_to(Some(c.seq)).await?;
                }
                c.seq
            }
            None => match self.cursor(session.client) {
                Some(seq) => seq,
                None => self.last_seq(),
            },
        };
        let tail = {
            let mut streams = lock(&self.shared.streams);
            // How far behind the newest event this reader is: a fleet of lagging clients shows here first.
            self.shared
                .lag
                .record(streams.last().saturating_sub(after) as f64);
            let generation = streams.live_generation(session.user);
            (
                streams.read(session.user, after, limit, live_since),
                generation,
            )
        };
        let (tail, live) = tail;
        let (events, seq) = match tail {
            TailRead::Ahead if self.shared.node.is_none() => return Ok(self.reset(session)),
            TailRead::Hit { events, cursor } => (events, cursor),
            // In a cluster, a cursor ahead of this node is one another node gave (this one lags, or was
            // just restarted): the log in the store is the truth, and the stream is read from it there. A
            // cursor past the log's end there too was never given by any node: a reset, as on one node.
            TailRead::Ahead | TailRead::Miss => {
                let store = Arc::clone(&self.shared.store);
                let user = session.user;
                let ahead = matches!(tail, TailRead::Ahead);
                let page = tokio::task::spawn_blocking(move || {
                    if ahead && after > store.last_seq()? {
                        return Ok(None);
                    }
                    store.user_stream(user, after, limit).map(Some)
                })
                .await
                .map_err(|_| self.shared.gone())??;
                let Some(page) = page else {
                    return Ok(self.reset(session));
                };
                if page.reset {
                    return Ok(self.reset(session));
                }
                let events = page.events.into_iter().map(Arc::new).collect();
                (events, page.next.max(after))
            }
        };
        if save {
            self.shared.set_cursor(session.client, seq);
        }
        Ok(StreamRead {
            events,
            cursor: Cursor { epoch, seq },
            reset: false,
            live,
        })
    }

    fn reset(&self, session: &Session) -> StreamRead {
        let (seq, live) = {
            let mut streams = lock(&self.shared.streams);
            (streams.last(), streams.live_generation(session.user))
        };
        self.shared.set_cursor(session.client, seq);
        StreamRead {
            events: Vec::new(),
            cursor: Cursor {
                epoch: self.shared.epoch,
                seq,
            },
            reset: true,
            live,
        }
    }

    /// Stops the engine gracefully: refuses new requests, finishes the batch in flight, saves cursors and a
    /// snapshot, then returns. Other handles get [`EngineError::ShuttingDown`] from then on.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Err(self.shared.gone());
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Shutdown(done))
            .await
            .map_err(|_| self.shared.gone())?;
        rx.await.map_err(|_| self.shared.gone())?
    }
}

/// The password rule of [`crate::check_password`], as the engine's error.
fn check_password(password: &str) -> Result<(), EngineError> {
    password::check_password(password).map_err(EngineError::Password)
}

fn dummy_hash() -> Result<String, EngineError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h.clone());
    }
    let h = auth::hash_password("not a password anyone has")?;
    Ok(DUMMY.get_or_init(|| h).clone())
}

fn unexpected(created: &Option<Created>) -> EngineError {
    // The core's register and login always report what they made; anything else is a bug in one of the two,
    // surfaced as an error rather than a panic.
    EngineError::Stopped {
        reason: format!("the core answered an unexpected result: {created:?}").into(),
    }
}

/// Which commands count against the per-user message rate: everything a user does on purpose, not the
/// keep-alives and presence that transports send on the user's behalf, not reading, not typing (the core
/// throttles typing itself), and not a chosen status or activities: the door that takes them limits them
/// on its own (the gateway: 5 presence updates per minute per connection), so that chatting fast never
/// costs a presence update, nor the reverse.
fn rate_limited(command: &Command) -> bool {
    !matches!(
        command,
        Command::Touch
            | Command::Connect
            | Command::Disconnect
            | Command::SetStatus { .. }
            | Command::SetActivities { .. }
            | Command::Read { .. }
            | Command::Typing { .. }
            | Command::Logout
            | Command::Quit { .. }
    )
}

/// Rebuilds the core: the newest snapshot plus the log after it, or a new core on an empty store (whose
/// genesis events are logged here). Blocking: runs on the blocking pool.
fn load(
    store: &dyn Store,
    config: chat_core::Config,
    now: UnixMillis,
    genesis_term: Option<(Arc<dyn Cluster>, u64)>,
    shared_log: bool,
) -> Result<(Core, Vec<(ClientId, Seq)>), EngineError> {
    let last = store.last_seq()?;
    let mut core = match store.latest_snapshot()? {
        Some((seq, bytes)) => {
            let state: State = postcard::from_bytes(&bytes).map_err(|e| EngineError::Snapshot {
                seq,
                detail: e.to_string(),
            })?;
            Core::from_state(config, state)
        }
        None if last == 0 => {
            let mut core = Core::new(config, now);
            let mut genesis = Vec::new();
            while let Some(event) = core.poll_event() {
                if event.is_durable() {
                    genesis.push(event);
                }
            }
            // Genesis is one input of its own: its events end together.
            let ends: Vec<Seq> = genesis.last().map(|e| e.seq).into_iter().collect();
            let batch = Batch {
                events: &genesis,
                command_ends: &ends,
                ..Batch::default()
            };
            match &genesis_term {
                Some((cluster, term)) => cluster.append_fenced(*term, &batch)?,
                None => store.append(&batch)?,
            }
            core
        }
        None => Core::empty(config),
    };
    loop {
        let events = store.events_after(core.last_seq(), 10_000)?;
        if events.is_empty() {
            break;
        }
        for event in &events {
            core.apply(event)?;
        }
    }
    // A new store's genesis was appended above, so the log's end is read again rather than reused.
    let logged = store.last_seq()?;
    // In a cluster another node's writer appends meanwhile, and this node follows on from where it got.
    if core.last_seq() != logged && !shared_log {
        tracing::warn!(
            replayed = core.last_seq(),
            logged,
            "the replayed state does not end at the log's last seq"
        );
    }
    core.resume(now);
    Ok((core, store.cursors()?))
}

/// Runs the store's retention in the background every `retention_interval`, pass after bounded pass on the
/// blocking pool, so the writer never waits for it. It holds the engine only weakly and ends with it.
fn spawn_retention(shared: &Arc<Shared>) {
    let every = shared.config.retention_interval;
    if every.is_zero() {
        return;
    }
    let every = every.min(Duration::from_secs(86_400));
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; retention at start-up would only slow the start down.
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { break };
            if shared.closed.load(Ordering::SeqCst) {
                break;
            }
            // In a cluster, the writer alone trims: one pass at a time, and one node reporting the files.
            if shared
                .node
                .as_ref()
                .is_some_and(|n| n.role() != chat_log::NodeRole::Writer)
            {
                continue;
            }
            let store = Arc::clone(&shared.store);
            let max_history = shared.config.core.max_history;
            let now = now_ms();
            let events_before = now.saturating_sub(ttl_ms(shared.config.queue_max_age));
            let nonces_before = now.saturating_sub(ttl_ms(shared.config.nonce_ttl));
            let files = Arc::clone(&shared.files);
            drop(shared);
            let pass = tokio::task::spawn_blocking(move || {
                let mut total = chat_log::RetentionReport::default();
                loop {
                    let report =
                        store.enforce_retention(max_history, events_before, nonces_before)?;
                    // The pass has committed: the trimmed messages' files go now. A crash before this
                    // leaves them to the sweep.
                    for (channel, attachment) in &report.attachments {
                        files.remove(*channel, std::slice::from_ref(attachment));
                    }
                    if report.messages + report.events + report.nonces == 0 {
                        return Ok::<_, chat_log::StoreError>(total);
                    }
                    total.messages += report.messages;
                    total.events += report.events;
                    total.nonces += report.nonces;
                }
            })
            .await;
            match pass {
                Ok(Ok(report)) => tracing::debug!(?report, "retention pass"),
                // Retention failing costs disk space, not correctness: try again next time.
                Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
                Err(e) => tracing::warn!(error = %e, "the retention task failed"),
            }
        }
    });
}
