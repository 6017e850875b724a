//! The server's configuration: every setting of SPEC §7 as a command-line flag backed by an environment
//! variable, and its validation into a typed [`Config`].
//!
//! Precedence is flag, then the process environment, then a `.env` file in the working directory. clap does
//! the first two; `main` loads `.env` with dotenvy before parsing, and dotenvy never overrides a variable
//! that is already set, which gives the third. Values are kept as text here and checked in
//! [`Config::from_args`], so that every bad value fails start-up with a message naming its variable (clap's
//! own messages name the flag, which is not what an operator who set an environment variable looks for).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use chat_engine::{EngineConfig, RateLimit};
use chat_store::Durability;

/// The longest long-poll a client may ask for, and the ceiling of `LONG_POLL_TIMEOUT` (the spec's cap).
pub(crate) const MAX_LONG_POLL: Duration = Duration::from_secs(30);
/// The largest JSON request body the API accepts (SPEC §8; uploads have their own limit).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Every configuration variable, as clap sees it: global, so that `chatd --help` lists them all and each
/// subcommand that opens the database sees the same settings.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Configuration (flag, then environment, then .env)")]
pub(crate) struct ConfigArgs {
    /// TCP port to listen on, used when LISTEN is not set.
    #[arg(long, env = "PORT", default_value = "8080", global = true)]
    pub(crate) port: String,

    /// Address to listen on, `host:port` [default: 0.0.0.0:$PORT]. Port 0 picks a free port.
    #[arg(long, env = "LISTEN", global = true)]
    pub(crate) listen: Option<String>,

    /// Database: `sqlite://PATH`, `sqlite:PATH`, a plain path, or `memory:` (in memory, lost on exit).
    #[arg(
        long,
        alias = "db",
        env = "DBURL",
        default_value = "sqlite://./data.db",
        global = true
    )]
    pub(crate) dburl: String,

    /// Directory for uploaded files and other server data; created on `serve`.
    #[arg(long, env = "DATA_DIR", default_value = "./data", global = true)]
    pub(crate) data_dir: String,

    /// Debug logging (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`). RUST_LOG overrides the level.
    #[arg(long, env = "DEBUG", default_value = "false", global = true)]
    pub(crate) debug: String,

    /// The server's display name (also the network's name when the database is created).
    #[arg(long, env = "SERVER_NAME", default_value = "chatd", global = true)]
    pub(crate) server_name: String,

    /// Message of the day, answered by GET /api/v1/server.
    #[arg(long, env = "MOTD", default_value = "", global = true)]
    pub(crate) motd: String,

    /// Messages kept per channel; older ones are removed by retention.
    #[arg(long, env = "MAX_HISTORY", default_value = "10000", global = true)]
    pub(crate) max_history: String,

    /// Presence changes are pushed through channels and spaces of at most this many members; larger ones
    /// are not told (their members look presence up). 0 pushes presence nowhere.
    #[arg(
        long,
        env = "PRESENCE_FANOUT_MAX",
        default_value = "1000",
        global = true
    )]
    pub(crate) presence_fanout_max: String,

    /// Longest message body, in bytes.
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value = "4096", global = true)]
    pub(crate) max_message_size: String,

    /// A client idle this long expires (e.g. `24h`, `30m`, or plain seconds).
    #[arg(
        long,
        env = "SESSION_IDLE_TIMEOUT",
        default_value = "24h",
        global = true
    )]
    pub(crate) session_idle_timeout: String,

    /// How far back a client may resume its stream (e.g. `48h`, or plain seconds).
    #[arg(long, env = "QUEUE_MAX_AGE", default_value = "48h", global = true)]
    pub(crate) queue_max_age: String,

    /// How often retention runs (MAX_HISTORY, QUEUE_MAX_AGE, expired nonces, and the trimmed messages'
    /// files), e.g. `5m` or plain seconds.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "5m", global = true)]
    pub(crate) retention_interval: String,

    /// Default long-poll hold when a client gives no `timeout`, in seconds (1..=30).
    #[arg(long, env = "LONG_POLL_TIMEOUT", default_value = "15", global = true)]
    pub(crate) long_poll_timeout: String,

    /// This node's id in snowflake ids (0..=1023); in a cluster, unique per node.
    #[arg(long, env = "NODE_ID", default_value = "0", global = true)]
    pub(crate) node_id: String,

    /// In a cluster (a PostgreSQL DBURL): where this node listens for the other nodes' links, `HOST:PORT`
    /// (port 0: any free port).
    #[arg(
        long,
        env = "CLUSTER_LISTEN",
        default_value = "127.0.0.1:0",
        global = true
    )]
    pub(crate) cluster_listen: String,

    /// In a cluster: the `HOST:PORT` other nodes reach CLUSTER_LISTEN at, when it is not that address itself
    /// (a wildcard address, NAT).
    #[arg(long, env = "CLUSTER_ADVERTISE", global = true)]
    pub(crate) cluster_advertise: Option<String>,

    /// In a cluster: how long the writer lease lasts unrenewed, the longest a dead writer keeps the others
    /// from writing (renewed every quarter of it).
    #[arg(long, env = "LEASE_TTL", default_value = "3s", global = true)]
    pub(crate) lease_ttl: String,

    /// `full` (a commit is on disk before it is acknowledged) or `relaxed` (SQLite synchronous=NORMAL).
    #[arg(long, env = "DURABILITY", default_value = "full", global = true)]
    pub(crate) durability: String,

    /// Per-user message rate: `BURST/PER_SECOND` (e.g. `20/5`), or `off`.
    #[arg(long, env = "RATE_LIMIT", default_value = "20/5", global = true)]
    pub(crate) rate_limit: String,

    /// Largest upload, in bytes or with a unit (`25MiB`, `512KiB`, `10MB`).
    #[arg(long, env = "MAX_UPLOAD_SIZE", default_value = "25MiB", global = true)]
    pub(crate) max_upload_size: String,

    /// User name for basic auth on GET /metrics (set both or neither) [default: none, /metrics is open].
    #[arg(long, env = "METRICS_USERNAME", global = true)]
    pub(crate) metrics_username: Option<String>,

    /// Password for basic auth on GET /metrics (set both or neither).
    #[arg(long, env = "METRICS_PASSWORD", hide_env_values = true, global = true)]
    pub(crate) metrics_password: Option<String>,

    /// The key that signs requests to and from linked servers whose link has no key of its own.
    #[arg(long, env = "FEDERATION_KEY", hide_env_values = true, global = true)]
    pub(crate) federation_key: Option<String>,

    /// This server's name among linked servers (lower case, e.g. `chat.example.org`); unset, the federation
    /// routes are off.
    #[arg(long, env = "FEDERATION_NAME", global = true)]
    pub(crate) federation_name: Option<String>,

    /// How often each linked server is greeted (the signed handshake), which is how soon one that went down
    /// or came back is noticed (e.g. `30s`).
    #[arg(
        long,
        env = "FEDERATION_HANDSHAKE_EVERY",
        default_value = "30s",
        global = true
    )]
    pub(crate) federation_handshake_every: String,

    /// Requests each linked server may send: `BURST/PER_SECOND`; over it they are answered 429.
    #[arg(
        long,
        env = "FEDERATION_RATE_LIMIT",
        default_value = "2000/1000",
        global = true
    )]
    pub(crate) federation_rate_limit: String,

    /// The server's public base URL (`https://chat.example.org`), for the absolute URLs of attachments
    /// [default: none, taken from each request's Host].
    #[arg(long, env = "PUBLIC_URL", global = true)]
    pub(crate) public_url: Option<String>,

    /// Comma-separated origins allowed to call the API from a browser (`*` for any); empty turns CORS off.
    #[arg(long, env = "CORS_ORIGINS", default_value = "", global = true)]
    pub(crate) cors_origins: String,

    /// How often gateway clients must heartbeat (sent in Hello; e.g. `41250ms`, `30s`); a connection silent for
    /// 1.5 times this is closed as a zombie. Keep it well under 60 s: discord.py gives up after 60 s.
    #[arg(
        long,
        env = "GATEWAY_HEARTBEAT_INTERVAL",
        default_value = "41250ms",
        global = true
    )]
    pub(crate) gateway_heartbeat_interval: String,

    /// Where IRC clients connect (`0.0.0.0:6667`); unset, the IRC door is off.
    #[arg(long, env = "IRC_LISTEN", global = true)]
    pub(crate) irc_listen: Option<String>,

    /// A PEM file with the certificate chain for IRC over TLS (with IRC_TLS_KEY; IRC_LISTEN then speaks TLS).
    #[arg(long, env = "IRC_TLS_CERT", global = true)]
    pub(crate) irc_tls_cert: Option<PathBuf>,

    /// A PEM file with the private key of IRC_TLS_CERT.
    #[arg(long, env = "IRC_TLS_KEY", global = true)]
    pub(crate) irc_tls_key: Option<PathBuf>,

    /// An IRC connection whose send queue stays over a quarter of IRC_SENDQ this long (it does not read what
    /// it is sent) is closed, and resumes from its cursor when it comes back.
    #[arg(long, env = "IRC_SENDQ_TIMEOUT", default_value = "30s", global = true)]
    pub(crate) irc_sendq_timeout: String,

    /// An IRC connection silent this long is pinged, and closed if it stays silent as long again.
    #[arg(long, env = "IRC_PING_INTERVAL", default_value = "90s", global = true)]
    pub(crate) irc_ping_interval: String,

    /// IRC flood control: `BURST/PER_SECOND` lines; a client 60 lines past it is disconnected.
    #[arg(long, env = "IRC_FLOOD", default_value = "20/4", global = true)]
    pub(crate) irc_flood: String,

    /// The most bytes waiting to be written to one IRC connection (`1MiB`); past it, or a quarter of it for
    /// 30 s, the connection is closed and resumes from its cursor when it comes back.
    #[arg(long, env = "IRC_SENDQ", default_value = "1MiB", global = true)]
    pub(crate) irc_sendq: String,

    /// Log format on stderr: `human` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "human", global = true)]
    pub(crate) log_format: String,

    /// Open TCP connections allowed from one IP address; more are closed at once.
    #[arg(
        long,
        env = "MAX_CONNECTIONS_PER_IP",
        default_value = "256",
        global = true
    )]
    pub(crate) max_connections_per_ip: String,

    /// Proof of work for guest sign-up: the zero bits of a hashcash stamp (SHA-256, bound to SERVER_NAME and
    /// the UTC date) that each guest must send; 0 asks for none.
    #[arg(long, env = "HASHCASH_BITS", default_value = "0", global = true)]
    pub(crate) hashcash_bits: String,
    /// A connection has this long to send a whole request head (request line and headers), counted from
    /// connecting or from the first byte of a later request; then it is closed (e.g. `10s`, `500ms`).
    #[arg(
        long,
        env = "HEADER_READ_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub(crate) header_read_timeout: String,

    /// A keep-alive connection with no request in flight is closed after this long without a byte from the
    /// client. Parked long-polls and WebSockets are never idle (e.g. `60s`).
    #[arg(
        long,
        env = "KEEPALIVE_IDLE_TIMEOUT",
        default_value = "60s",
        global = true
    )]
    pub(crate) keepalive_idle_timeout: String,
}

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum DbUrl {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// The in-memory store: nothing survives the process.
    Memory,
    /// A PostgreSQL database (`postgres://...`, multi-host for failover): every chatd on it is a node of one
    /// cluster.
    Postgres(Secret),
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DbUrl::Memory => f.write_str("memory:"),
            DbUrl::Postgres(url) => f.write_str(&redact_password(&url.0)),
        }
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

/// A PostgreSQL URL with its password replaced, for logs and messages.
pub(crate) fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    match path {
        Some(p) => format!("{scheme}://{authority}/{p}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Readable lines (with colours on a terminal).
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A value that must not appear in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Basic-auth credentials for `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetricsAuth {
    pub(crate) username: String,
    pub(crate) password: Secret,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) db: DbUrl,
    pub(crate) data_dir: PathBuf,
    pub(crate) debug: bool,
    pub(crate) server_name: String,
    pub(crate) motd: String,
    pub(crate) max_history: usize,
    pub(crate) presence_fanout_max: usize,
    pub(crate) max_message_size: usize,
    pub(crate) session_idle_timeout: Duration,
    pub(crate) queue_max_age: Duration,
    pub(crate) retention_interval: Duration,
    pub(crate) long_poll_timeout: Duration,
    pub(crate) gateway_heartbeat_interval: Duration,
    pub(crate) node_id: u16,
    pub(crate) cluster_listen: SocketAddr,
    pub(crate) cluster_advertise: Option<String>,
    pub(crate) lease_ttl: Duration,
    pub(crate) durability: Durability,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) max_upload_size: u64,
    pub(crate) metrics_auth: Option<MetricsAuth>,
    pub(crate) federation_key: Option<Secret>,
    pub(crate) federation_name: Option<String>,
    pub(crate) federation_handshake_every: Duration,
    pub(crate) federation_rate_limit: RateLimit,
    pub(crate) cors_origins: Vec<String>,
    pub(crate) public_url: Option<String>,
    pub(crate) log_format: LogFormat,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) hashcash_bits: u32,
    pub(crate) header_read_timeout: Duration,
    pub(crate) keepalive_idle_timeout: Duration,
    pub(crate) irc_listen: Option<SocketAddr>,
    /// IRC over TLS: the certificate chain and key files.
    pub(crate) irc_tls: Option<(PathBuf, PathBuf)>,
    pub(crate) irc_ping_interval: Duration,
    pub(crate) irc_flood: RateLimit,
    pub(crate) irc_sendq: u64,
    pub(crate) irc_sendq_timeout: Duration,
}

/// A bad configuration value, naming its variable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) variable: &'static str,
    pub(crate) value: String,
    pub(crate) expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

fn bad(variable: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

/// `PUBLIC_URL`: an `http` or `https` URL with a host and nothing after the path, kept without its trailing
/// `/` so that paths append to it.
fn parse_public_url(value: &str) -> Result<String, ConfigError> {
    // A linked server's URL obeys the same rule.
    chat_federation::peer::server_url(value).map_err(|_| {
        bad(
            "PUBLIC_URL",
            value,
            "an http:// or https:// URL such as https://chat.example.org (no query, no fragment)",
        )
    })
}

/// An unset optional variable and an empty one mean the same: `FOO=` in a `.env` file clears it.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(variable, value, "true or false")),
    }
}

fn parse_int<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
    variable: &'static str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match value.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(bad(
            variable,
            value,
            format!("an integer from {min} to {max}"),
        )),
    }
}

/// Plain seconds (`90`) or a humantime duration (`24h`, `30m`, `1h 30m`).
fn parse_duration(
    variable: &'static str,
    value: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let text = value.trim();
    let parsed = match text.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(text).ok(),
    };
    match parsed {
        Some(d) if d >= min && d <= max => Ok(d),
        _ => Err(bad(
            variable,
            value,
            format!(
                "a duration from {} to {} (plain seconds, or like 30m, 24h)",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        )),
    }
}

/// Bytes, optionally with a unit: `K`/`KiB`/`M`/`MiB`/`G`/`GiB` are binary, `KB`/`MB`/`GB` decimal.
fn parse_size(variable: &'static str, value: &str) -> Result<u64, ConfigError> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => Some(1),
        "k" | "kib" => Some(1 << 10),
        "m" | "mib" => Some(1 << 20),
        "g" | "gib" => Some(1 << 30),
        "kb" => Some(1_000),
        "mb" => Some(1_000_000),
        "gb" => Some(1_000_000_000),
        _ => None,
    };
    digits
        .parse::<u64>()
        .ok()
        .zip(multiplier)
        .and_then(|(n, m)| n.checked_mul(m))
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(variable, value, "a size in bytes, like 26214400 or 25MiB"))
}

/// Parses `DBURL`.
pub(crate) fn parse_db_url(value: &str) -> Result<DbUrl, ConfigError> {
    let text = value.trim();
    let expected = "sqlite://PATH, sqlite:PATH, a file path, memory:, or postgres://USER:PASSWORD@HOST:PORT/DB";
    if text.is_empty() {
        return Err(bad("DBURL", value, expected));
    }
    if text == "memory:" || text == "memory://" || text == "memory" {
        return Ok(DbUrl::Memory);
    }
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return Ok(DbUrl::Postgres(Secret(text.to_owned())));
    }
    let path = if let Some(rest) = text.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = text.strip_prefix("sqlite:") {
        rest
    } else {
        // Anything that looks like another scheme (`postgres://...`) is refused rather than taken for a file
        // name, which would silently create a strange file.
        let scheme = text.split_once(':').map(|(s, _)| s);
        if scheme.is_some_and(|s| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
        }) {
            return Err(bad("DBURL", value, expected));
        }
        text
    };
    if path.is_empty() || path == ":memory:" {
        return Err(bad("DBURL", value, expected));
    }
    Ok(DbUrl::Sqlite(PathBuf::from(path)))
}

fn parse_listen(value: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A host name (`localhost:8080`) is resolved once, at start-up.
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            bad(
                "LISTEN",
                value,
                "host:port, like 0.0.0.0:8080 or 127.0.0.1:0",
            )
        })
}

impl Config {
    /// Checks every value; the first bad one is the error.
    pub(crate) fn from_args(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let port: u16 = parse_int("PORT", &args.port, 0, u16::MAX)?;
        let listen = match non_empty(&args.listen) {
            Some(text) => parse_listen(text)?,
            None => SocketAddr::from(([0, 0, 0, 0], port)),
        };
        let durability = match args.durability.trim().to_ascii_lowercase().as_str() {
            "full" => Durability::Full,
            "relaxed" => Durability::Relaxed,
            _ => return Err(bad("DURABILITY", &args.durability, "full or relaxed")),
        };
        let rate_limit = RateLimit::parse(&args.rate_limit).ok_or_else(|| {
            bad(
                "RATE_LIMIT",
                &args.rate_limit,
                "BURST/PER_SECOND with both above 0 (like 20/5), or off",
            )
        })?;
        let irc_flood = match RateLimit::parse(&args.irc_flood) {
            Some(Some(limit)) => limit,
            _ => {
                return Err(bad(
                    "IRC_FLOOD",
                    &args.irc_flood,
                    "BURST/PER_SECOND with both above 0 (like 20/4)",
                ));
            }
        };
        let federation_rate_limit = match RateLimit::parse(&args.federation_rate_limit) {
            Some(Some(limit)) => limit,
            _ => {
                return Err(bad(
                    "FEDERATION_RATE_LIMIT",
                    &args.federation_rate_limit,
                    "BURST/PER_SECOND with both above 0 (like 200/100)",
                ));
            }
        };
        let metrics_auth = match (
            non_empty(&args.metrics_username),
            non_empty(&args.metrics_password),
        ) {
            (Some(username), Some(password)) => Some(MetricsAuth {
                username: username.to_owned(),
                password: Secret(password.to_owned()),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(bad(
                    "METRICS_PASSWORD",
                    "",
                    "a password, since METRICS_USERNAME is set",
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "METRICS_USERNAME",
                    "",
                    "a user name, since METRICS_PASSWORD is set",
                ));
            }
        };
        if metrics_auth
            .as_ref()
            .is_some_and(|a| a.username.contains(':'))
        {
            // Basic auth separates the two with the first colon: such a name could never match.
            return Err(bad(
                "METRICS_USERNAME",
                args.metrics_username.as_deref().unwrap_or_default(),
                "a user name without ':'",
            ));
        }
        let log_format = match args.log_format.trim().to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "" | "human" | "text" | "pretty" => LogFormat::Human,
            _ => return Err(bad("LOG_FORMAT", &args.log_format, "json or human")),
        };
        let cors_origins: Vec<String> = args
            .cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(origin) = cors_origins
            .iter()
            .find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(bad(
                "CORS_ORIGINS",
                &args.cors_origins,
                format!("comma-separated http(s) origins or *, and {origin:?} is neither"),
            ));
        }
        let data_dir = args.data_dir.trim();
        if data_dir.is_empty() {
            return Err(bad("DATA_DIR", &args.data_dir, "a directory path"));
        }
        Ok(Self {
            listen,
            db: parse_db_url(&args.dburl)?,
            data_dir: PathBuf::from(data_dir),
            debug: parse_bool("DEBUG", &args.debug)?,
            server_name: args.server_name.trim().to_owned(),
            motd: args.motd.clone(),
            max_history: parse_int("MAX_HISTORY", &args.max_history, 1, 100_000_000)?,
            presence_fanout_max: parse_int(
                "PRESENCE_FANOUT_MAX",
                &args.presence_fanout_max,
                0,
                10_000_000,
            )?,
            max_message_size: parse_int(
                "MAX_MESSAGE_SIZE",
                &args.max_message_size,
                1,
                MAX_BODY / 2,
            )?,
            session_idle_timeout: parse_duration(
                "SESSION_IDLE_TIMEOUT",
                &args.session_idle_timeout,
                Duration::from_secs(1),
                Duration::from_secs(365 * 86_400),
            )?,
            queue_max_age: parse_duration(
                "QUEUE_MAX_AGE",
                &args.queue_max_age,
                Duration::from_secs(1),
                Duration::from_secs(10 * 365 * 86_400),
            )?,
            retention_interval: parse_duration(
                "RETENTION_INTERVAL",
                &args.retention_interval,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            )?,
            long_poll_timeout: parse_duration(
                "LONG_POLL_TIMEOUT",
                &args.long_poll_timeout,
                Duration::from_secs(1),
                MAX_LONG_POLL,
            )?,
            gateway_heartbeat_interval: parse_duration(
                "GATEWAY_HEARTBEAT_INTERVAL",
                &args.gateway_heartbeat_interval,
                Duration::from_millis(100),
                Duration::from_secs(55),
            )?,
            node_id: parse_int("NODE_ID", &args.node_id, 0, 1023)?,
            cluster_listen: parse_listen(&args.cluster_listen).map_err(|_| {
                bad(
                    "CLUSTER_LISTEN",
                    &args.cluster_listen,
                    "HOST:PORT, like 127.0.0.1:9080",
                )
            })?,
            cluster_advertise: non_empty(&args.cluster_advertise).map(str::to_owned),
            lease_ttl: parse_duration(
                "LEASE_TTL",
                &args.lease_ttl,
                Duration::from_millis(500),
                Duration::from_secs(600),
            )?,
            durability,
            rate_limit,
            max_upload_size: parse_size("MAX_UPLOAD_SIZE", &args.max_upload_size)?,
            metrics_auth,
            federation_key: non_empty(&args.federation_key).map(|k| Secret(k.to_owned())),
            federation_name: non_empty(&args.federation_name)
                .map(|n| {
                    chat_federation::peer::server_name(n).map_err(|_| {
                        bad(
                            "FEDERATION_NAME",
                            n,
                            "a server name: 1 to 63 lower-case letters, digits, '-' and '.'",
                        )
                    })
                })
                .transpose()?,
            federation_handshake_every: parse_duration(
                "FEDERATION_HANDSHAKE_EVERY",
                &args.federation_handshake_every,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            federation_rate_limit,
            cors_origins,
            public_url: non_empty(&args.public_url)
                .map(parse_public_url)
                .transpose()?,
            log_format,
            max_connections_per_ip: parse_int(
                "MAX_CONNECTIONS_PER_IP",
                &args.max_connections_per_ip,
                1,
                1_000_000,
            )?,
            // Past 32 bits a stamp takes billions of hashes: no browser would sign up.
            hashcash_bits: parse_int("HASHCASH_BITS", &args.hashcash_bits, 0, 32)?,
            header_read_timeout: parse_duration(
                "HEADER_READ_TIMEOUT",
                &args.header_read_timeout,
                Duration::from_millis(100),
                Duration::from_secs(600),
            )?,
            keepalive_idle_timeout: parse_duration(
                "KEEPALIVE_IDLE_TIMEOUT",
                &args.keepalive_idle_timeout,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            irc_listen: non_empty(&args.irc_listen)
                .map(|v| {
                    parse_listen(v)
                        .map_err(|_| bad("IRC_LISTEN", v, "HOST:PORT, like 0.0.0.0:6667"))
                })
                .transpose()?,
            irc_tls: match (&args.irc_tls_cert, &args.irc_tls_key) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                (Some(cert), None) => {
                    return Err(bad(
                        "IRC_TLS_KEY",
                        "",
                        format!("set with IRC_TLS_CERT ({})", cert.display()),
                    ));
                }
                (None, Some(key)) => {
                    return Err(bad(
                        "IRC_TLS_CERT",
                        "",
                        format!("set with IRC_TLS_KEY ({})", key.display()),
                    ));
                }
            },
            irc_ping_interval: parse_duration(
                "IRC_PING_INTERVAL",
                &args.irc_ping_interval,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            irc_flood,
            irc_sendq: parse_size("IRC_SENDQ", &args.irc_sendq)?,
            irc_sendq_timeout: parse_duration(
                "IRC_SENDQ_TIMEOUT",
                &args.irc_sendq_timeout,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
        })
    }

    /// The engine's settings for this configuration.
    pub(crate) fn engine(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        let name = if self.server_name.is_empty() {
            defaults.core.network_name.clone()
        } else {
            self.server_name.clone()
        };
        EngineConfig {
            core: chat_core::Config {
                node_id: self.node_id,
                max_message_size: self.max_message_size,
                max_history: self.max_history,
                presence_fanout_max: self.presence_fanout_max,
                session_idle_timeout_ms: u64::try_from(self.session_idle_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                network_name: name.clone(),
                server_name: self.federation_name.clone(),
                ..defaults.core.clone()
            },
            queue_max_age: self.queue_max_age,
            retention_interval: self.retention_interval,
            rate_limit: self.rate_limit,
            hashcash_bits: self.hashcash_bits,
            hashcash_resource: name,
            data_dir: self.data_dir.clone(),
            ..defaults
        }
    }

    /// This node's place in a cluster (used when DBURL is PostgreSQL).
    pub(crate) fn cluster(&self) -> chat_engine::ClusterConfig {
        chat_engine::ClusterConfig {
            node_id: self.node_id,
            listen: self.cluster_listen,
            advertise: self.cluster_advertise.clone(),
            lease_ttl: self.lease_ttl,
        }
    }

    /// The long-poll transport's settings for this configuration.
    pub(crate) fn longpoll(&self) -> transport_longpoll::Settings {
        transport_longpoll::Settings {
            server_name: self.server_name.clone(),
            motd: self.motd.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            default_timeout: self.long_poll_timeout,
            max_timeout: MAX_LONG_POLL,
            max_body: MAX_BODY,
            cors_origins: self.cors_origins.clone(),
        }
    }

    /// The IRC door's settings.
    pub(crate) fn irc(&self) -> transport_irc::Settings {
        let network = if self.server_name.is_empty() {
            "chatd".to_owned()
        } else {
            self.server_name.clone()
        };
        transport_irc::Settings {
            // IRC shows the server by a host name: the federation name when there is one.
            server_name: self
                .federation_name
                .clone()
                .unwrap_or_else(|| "chatd".to_owned()),
            network,
            motd: self.motd.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            max_connections_per_ip: self.max_connections_per_ip,
            ping_interval: self.irc_ping_interval,
            flood_burst: self.irc_flood.burst,
            flood_rate: self.irc_flood.per_second,
            sendq: usize::try_from(self.irc_sendq).unwrap_or(usize::MAX),
            slow_limit: self.irc_sendq_timeout,
            ..transport_irc::Settings::default()
        }
    }

    /// The federation's settings, when FEDERATION_NAME is set.
    pub(crate) fn federation(&self) -> Option<chat_federation::Settings> {
        Some(chat_federation::Settings {
            name: self.federation_name.clone()?,
            default_key: self.federation_key.as_ref().map(|k| k.0.clone()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // Relayed batches are larger than a client's requests.
            max_body: 16 * MAX_BODY,
            skew: Duration::from_secs(300),
            handshake_every: self.federation_handshake_every,
            rate_limit: self.federation_rate_limit,
        })
    }

    /// The gateway's and Discord REST API's settings.
    pub(crate) fn ws(&self) -> transport_ws::Settings {
        transport_ws::Settings {
            max_upload: self.max_upload_size,
            max_body: MAX_BODY,
            heartbeat_interval: self.gateway_heartbeat_interval,
            public_url: self.public_url.clone(),
            ..transport_ws::Settings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_urls_are_taken_and_shown_without_their_password() {
        let url = parse_db_url(
            "postgres://chat:s3cret@db1:5432,db2:5432/chat?target_session_attrs=read-write",
        )
        .unwrap();
        assert!(matches!(url, DbUrl::Postgres(_)));
        let shown = url.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            shown,
            "postgres://chat:***@db1:5432,db2:5432/chat?target_session_attrs=read-write"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            redact_password("postgresql://u@h/db"),
            "postgresql://u@h/db"
        );
    }

    use super::*;

    #[test]
    fn db_urls() {
        let p = |s: &str| parse_db_url(s);
        assert_eq!(
            p("sqlite://./data.db"),
            Ok(DbUrl::Sqlite("./data.db".into()))
        );
        assert_eq!(
            p("sqlite:///var/x.db"),
            Ok(DbUrl::Sqlite("/var/x.db".into()))
        );
        assert_eq!(p("sqlite:x.db"), Ok(DbUrl::Sqlite("x.db".into())));
        assert_eq!(p("/tmp/a.db"), Ok(DbUrl::Sqlite("/tmp/a.db".into())));
        assert_eq!(p("memory:"), Ok(DbUrl::Memory));
        assert!(matches!(
            p("postgres://localhost/db"),
            Ok(DbUrl::Postgres(_))
        ));
        assert!(matches!(
            p("postgresql://u@h1,h2/db"),
            Ok(DbUrl::Postgres(_))
        ));
        assert!(p("mysql://localhost/db").is_err());
        assert!(p("").is_err());
        assert!(p("sqlite://").is_err());
    }

    #[test]
    fn public_urls() {
        let p = parse_public_url;
        assert_eq!(
            p("https://chat.example.org/"),
            Ok("https://chat.example.org".into())
        );
        assert_eq!(
            p("http://10.0.0.1:8080/chat"),
            Ok("http://10.0.0.1:8080/chat".into())
        );
        for bad in [
            "chat.example.org",
            "ftp://x",
            "https://",
            "https://a b",
            "https://x/?q",
            "https://u@x",
            "https://x/\"",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        let d = |s: &str| {
            parse_duration(
                "X",
                s,
                Duration::from_secs(1),
                Duration::from_secs(86_400 * 2),
            )
        };
        assert_eq!(d("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(d("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(d("90"), Ok(Duration::from_secs(90)));
        assert!(d("0").is_err());
        assert!(d("soon").is_err());
        assert_eq!(parse_size("X", "25MiB"), Ok(25 << 20));
        assert_eq!(parse_size("X", "10MB"), Ok(10_000_000));
        assert_eq!(parse_size("X", "512"), Ok(512));
        assert!(parse_size("X", "0").is_err());
        assert!(parse_size("X", "12 parsecs").is_err());
        assert!(parse_size("X", "99999999999999999999G").is_err());
    }

    #[test]
    fn settings_reach_the_core_and_the_engine() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            config: ConfigArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "chatd",
            "--presence-fanout-max",
            "7",
            "--max-message-size",
            "1234",
        ])
        .expect("flags parse");
        let engine = Config::from_args(&cli.config)
            .expect("a valid configuration")
            .engine();
        assert_eq!(engine.core.presence_fanout_max, 7);
        assert_eq!(engine.core.max_message_size, 1234);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = parse_int::<u16>("NODE_ID", "2000", 0, 1023).unwrap_err();
        assert!(e.to_string().contains("NODE_ID"), "{e}");
        assert!(parse_bool("DEBUG", "maybe").is_err());
        assert_eq!(parse_bool("DEBUG", "TRUE"), Ok(true));
    }
}
