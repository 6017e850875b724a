//! The PostgreSQL store: everything the SQLite store keeps, in a database that several chatd processes share
//! (SPEC §12), plus the [`Cluster`] contract: the writer lease, fenced appends, node reports and a doorbell
//! for new commits.
//!
//! # Why tokio-postgres, and why this shape
//!
//! - **Failover needs multi-host URLs.** SPEC §12 lets `DBURL` name a primary and its standbys,
//!   `postgres://u@h1:p1,h2:p2/db?target_session_attrs=read-write`, so that after a promotion a new connection
//!   finds the new primary. tokio-postgres parses that form (`Config::from_str` keeps every host and port and
//!   the session attributes) and tries the hosts in turn until one is read-write. sqlx's URL parser takes one
//!   host; the synchronous `postgres` crate is tokio-postgres behind a private runtime, which is what this
//!   store does anyway, but with its `block_on` inside.
//! - **No runtime nesting.** [`Store`] is synchronous and is called from tokio's blocking pool and sometimes
//!   straight from async tasks. `Runtime::block_on` (and the `postgres` crate, which calls it) panics inside
//!   another runtime. So the store owns a small runtime of its own (two worker threads) on which only the
//!   connections' I/O futures (`tokio_postgres::Connection`) and the LISTEN task run; the synchronous
//!   methods drive the *client* futures, which talk to their connection over channels and need no tokio
//!   context, with `futures_executor::block_on`. That works from any thread, async or not. Connecting does
//!   need the runtime (it opens sockets): it is spawned on it and its handle awaited the same way.
//! - **Evidence.** `tests/it/postgres_only.rs` opens a store through `postgres://u@127.0.0.1:1,127.0.0.1:P/db?
//!   target_session_attrs=read-write` (the first host refuses) and keeps using it across a server restart
//!   (`a_restarted_server_is_reconnected_and_multi_host_urls_fail_over`), and opens, uses and drops a store
//!   on a worker of another tokio runtime (`usable_and_droppable_inside_an_async_runtime`).
//! - **Connections.** One writer connection behind a mutex (every write goes through it, as in the SQLite
//!   store, so this process's writes never deadlock each other) and a pool of readers. A connection that
//!   reports itself closed (its server died, or was demoted in a failover) is dropped and replaced on next use;
//!   through a multi-host URL the new one reaches the new primary. Reads are retried once on a fresh
//!   connection; writes never are.
//! - **Commits are never cancelled.** No statement timeout, no cancel request and no change of
//!   `synchronous_commit` ever touches a session (the session even clears a `statement_timeout` a server or
//!   role default would impose): PostgreSQL reports a commit cancelled while it waits for a synchronous standby
//!   as a success with a warning, and that commit is lost if the standby is promoted. If the connection breaks
//!   during `COMMIT`, the append returns an error and the outcome is unknown: the caller reads the log to learn
//!   it. TCP keepalives (10 s idle) only notice a dead server; they never end a commit a live server is
//!   still waiting on.
//!
//! # Order and fencing
//!
//! Every append locks the log (`pg_advisory_xact_lock`) and reads the log's last seq inside its transaction:
//! a batch that does not continue it is refused however many processes append at once. [`Cluster::append_fenced`]
//! also locks the lease row (`SELECT ... FOR UPDATE`) and compares the term, so a writer that was replaced (its
//! lease expired while it was paused, and another node took over) is refused by the database itself. Each
//! commit sends `NOTIFY chatd_log, '<last seq>'`, delivered when (and only if) it commits.

mod apply;
mod db;
mod search;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chat_core::{
    Attachment, ChannelId, ClientId, Event, MessageId, Seq, SpaceId, UnixMillis, UserId,
};
use chat_log::format::{self, FORMAT_VERSION};
use chat_log::{
    Batch, Cluster, DbMeta, HistoryQuery, Lease, NodeRecord, NodeRole, NonceRecord,
    RetentionReport, SearchHit, SearchQuery, ServerLink, Store, StoreError, StoredMessage,
    StreamPage,
};
use futures_executor::block_on;
use futures_util::FutureExt;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row};

use self::apply::Deferred;
use self::db::{Db, PgConn, Q, col};
use crate::codec::{corrupt, decode_event, encode, id_of, opt_id, sql, uns};
use crate::project::AUD_USERS;
use crate::text;

/// The PostgreSQL schema migrations, in order, embedded at build time. A version is never edited once
/// released: a change is a new file.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_server_links.sql"),
    ),
];

/// The newest PostgreSQL schema version this binary knows.
pub const POSTGRES_SCHEMA_VERSION: u32 = 2;

/// The advisory lock under which schema migrations run: several processes opening a fresh database at once
/// apply each migration once.
const MIGRATE_LOCK: i64 = 0x6368_6174_645f_6d69;

/// The advisory lock every append takes: appends from any number of connections are applied one at a time.
const APPEND_LOCK: i64 = 0x6368_6174_645f_6c67;

/// How long (ms) a session may sit idle inside a transaction before the server ends it, unless a cluster
/// node's lease asks for less (see [`Cluster::try_lead`]).
const STALL_MS: u64 = 5_000;

/// The shortest such limit a lease sets: a healthy writer's append never waits on itself this long
/// between two of its statements, even on a loaded machine.
const MIN_STALL_MS: u64 = 1_000;

/// The channel of the commit doorbell.
const CHANNEL: &str = "chatd_log";

/// Read connections kept open for reuse; more are opened when all are busy and closed when returned.
const READ_POOL: usize = 8;

/// Rows removed per retention transaction, and chunks per call (as the SQLite store).
const RETENTION_CHUNK: i64 = 500;
const RETENTION_CHUNKS_PER_CALL: usize = 20;

/// Seqs a stream query looks at per statement, and statements per call (as the SQLite store).
const STREAM_WINDOW: u64 = 20_000;
const STREAM_WINDOWS_PER_CALL: usize = 8;

/// Rows rewritten per statement of a format migration.
const UPGRADE_CHUNK: i64 = 1_000;

/// The `meta` key of the log's format version (see [`chat_log::format`]).
const FORMAT_KEY: &str = "format_version";

/// A time or a seq for SQL compared by size: values beyond `i64` are capped, not wrapped into negatives.
fn bound(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// A limit for SQL: `usize` values beyond `i64` are capped, which is the same as unlimited.
fn lim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| {
        StoreError::Io(std::io::Error::other(format!(
            "no randomness from the OS: {e}"
        )))
    })?;
    Ok(b)
}

fn io(msg: String) -> StoreError {
    StoreError::Io(std::io::Error::other(msg))
}

/// The highest commit this process knows of, and a condition variable rung when it moves.
#[derive(Debug, Default)]
struct Doorbell {
    seq: Mutex<Seq>,
    rung: Condvar,
}

impl Doorbell {
    fn ring(&self, seq: Seq) {
        let mut s = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        if seq > *s {
            *s = seq;
        }
        self.rung.notify_all();
    }
}

/// The PostgreSQL store. Open it with [`PostgresStore::open`]; it is `Send + Sync` and meant to be shared.
pub struct PostgresStore {
    meta: DbMeta,
    url: String,
    config: Config,
    /// The runtime of the connections' I/O; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    writer: Mutex<Option<PgConn>>,
    readers: Mutex<Vec<PgConn>>,
    doorbell: Arc<Doorbell>,
    /// Started on the first [`Cluster::wait_commit`]: a store that never waits keeps no LISTEN connection.
    listener: OnceLock<()>,
    /// How long (ms) the server lets a session sit idle inside a transaction before ending it: [`STALL_MS`],
    /// or a cluster node's lease once it has asked for one.
    stall_ms: AtomicU64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: only the hosts and the database are shown.
        f.debug_struct("PostgresStore")
            .field("meta", &self.meta)
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// Reads a URL into a connection config with chatd's settings added: a connect timeout (so that an
/// unreachable host of a multi-host URL is passed over) and TCP keepalives (so that a dead server is
/// noticed), unless the URL sets them.
fn parse_url(url: &str) -> Result<Config, StoreError> {
    let mut config = Config::from_str(url).map_err(|e| StoreError::Database(Box::new(e)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(10));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(5));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_application_name().is_none() {
        config.application_name("chatd");
    }
    Ok(config)
}

/// Connects on the store's runtime (opening a socket needs it) and waits for it from any thread.
fn connect(
    rt: &tokio::runtime::Handle,
    config: &Config,
    stall_ms: u64,
) -> Result<PgConn, StoreError> {
    let config = config.clone();
    let task = rt.spawn(async move {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            // It ends when the server goes or the client is dropped; the client then reports itself closed.
            let _ = connection.await;
        });
        // A statement timeout set as a server or role default would cancel commits (see the module doc).
        // A session that sits inside a transaction (a process paused between an append's statements, with
        // the lease row and the append lock held) is ended by the server after a while, so that it cannot
        // keep another node from taking the lease over and appending; that transaction never committed, so
        // nothing acknowledged is lost. A cluster node shortens the while to its lease (see `try_lead`).
        client
            .batch_execute(&format!(
                "SET statement_timeout = 0; SET lock_timeout = 0; \
                 SET idle_in_transaction_session_timeout = {stall_ms}"
            ))
            .await?;
        Ok::<Client, tokio_postgres::Error>(client)
    });
    let client = block_on(task)
        .map_err(|e| StoreError::Database(Box::new(e)))?
        .db()?;
    Ok(PgConn {
        client,
        stmts: Default::default(),
    })
}

/// Applies the migrations the database lacks and reads (or, on creation, makes) its identity, all in one
/// transaction under an advisory lock: processes opening one database at once wait for each other.
async fn migrate_and_load(c: &mut Client, now: UnixMillis) -> Result<(DbMeta, u32), StoreError> {
    let tx = c.transaction().await.db()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .db()?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )
    .await
    .db()?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .db()
        .and_then(|r| col(&r, 0))?;
    let found = u32::try_from(current).unwrap_or(0);
    if found > POSTGRES_SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: POSTGRES_SCHEMA_VERSION,
        });
    }
    for (version, script) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(script).await.db()?;
        let v = i32::try_from(*version).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&v, &bound(now)],
        )
        .await
        .db()?;
    }
    let get = async |key: &str| -> Result<Option<i64>, StoreError> {
        tx.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .await
            .db()?
            .map(|r| col(&r, 0))
            .transpose()
    };
    let found = match (
        get("epoch").await?,
        get("invite_seed").await?,
        get("created_at").await?,
    ) {
        (Some(epoch), Some(seed), Some(at)) => {
            let meta = DbMeta {
                epoch: uns(epoch),
                invite_seed: uns(seed),
                created_at: uns(at),
            };
            let version = get(FORMAT_KEY)
                .await?
                .map_or(1, |v| u32::try_from(v).unwrap_or(u32::MAX));
            (meta, version)
        }
        _ => {
            let meta = DbMeta {
                epoch: u64::from_le_bytes(random_bytes()?),
                invite_seed: u64::from_le_bytes(random_bytes()?),
                created_at: now,
            };
            for (k, v) in [
                ("epoch", meta.epoch),
                ("invite_seed", meta.invite_seed),
                ("created_at", meta.created_at),
                (FORMAT_KEY, u64::from(FORMAT_VERSION)),
            ] {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&k, &sql(v)],
                )
                .await
                .db()?;
            }
            (meta, FORMAT_VERSION)
        }
    };
    let secret = random_bytes::<32>()?;
    tx.execute(
        "INSERT INTO cluster_meta (key, value) VALUES ('cluster_secret', $1) ON CONFLICT (key) DO NOTHING",
        &[&&secret[..]],
    )
    .await
    .db()?;
    tx.commit().await.db()?;
    Ok(found)
}

/// Converts every postcard record from format `from` to this build's and records the new version, in one
/// transaction (under the migration lock, so two `chatd migrate` do not both convert).
async fn upgrade_format(c: &mut Client, from: u32) -> Result<(), StoreError> {
    let tx = c.transaction().await.db()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .db()?;
    let version: Option<i64> = tx
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&FORMAT_KEY])
        .await
        .db()?
        .map(|r| col(&r, 0))
        .transpose()?;
    if version != Some(i64::from(from)) && !(version.is_none() && from == 1) {
        // Another process converted it meanwhile.
        return Ok(());
    }
    rewrite::<Event>(&tx, from, ("events", "seq", "payload"), "event").await?;
    rewrite::<chat_core::State>(&tx, from, ("snapshots", "seq", "state"), "snapshot").await?;
    rewrite::<Vec<UserId>>(&tx, from, ("messages", "id", "mentions"), "mentions").await?;
    rewrite::<Vec<Attachment>>(&tx, from, ("messages", "id", "attachments"), "attachments").await?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&FORMAT_KEY, &i64::from(FORMAT_VERSION)],
    )
    .await
    .db()?;
    tx.commit().await.db()
}

/// Rewrites one postcard column of a table keyed by a BIGINT, chunk by chunk in key order.
async fn rewrite<T: serde::de::DeserializeOwned + serde::Serialize>(
    tx: &tokio_postgres::Transaction<'_>,
    from: u32,
    (table, key, column): (&str, &str, &str),
    what: &'static str,
) -> Result<(), StoreError> {
    let read = tx
        .prepare(&format!(
            "SELECT {key}, {column} FROM {table} WHERE {key} > $1 ORDER BY {key} LIMIT $2"
        ))
        .await
        .db()?;
    let write = tx
        .prepare(&format!(
            "UPDATE {table} SET {column} = $2 WHERE {key} = $1"
        ))
        .await
        .db()?;
    let mut after = i64::MIN;
    loop {
        let rows = tx.query(&read, &[&after, &UPGRADE_CHUNK]).await.db()?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        let last: i64 = col(last, 0)?;
        for r in &rows {
            let k: i64 = col(r, 0)?;
            let bytes: Vec<u8> = col(r, 1)?;
            let again = format::upgrade::<T>(from, &bytes).map_err(|e| corrupt(what, uns(k), e))?;
            if let Some(again) = again {
                tx.execute(&write, &[&k, &again]).await.db()?;
            }
        }
        after = last;
    }
}

impl PostgresStore {
    /// Opens the database at `url` (a `postgres://` URL, multi-host allowed): applies missing schema
    /// migrations (under an advisory lock, so processes opening a fresh database at once do not race),
    /// refuses a database from a newer chatd with [`StoreError::TooNew`], and on creation draws a random epoch,
    /// invite seed and cluster secret. A log in another format than this build's is refused
    /// ([`StoreError::FormatTooOld`], [`StoreError::FormatTooNew`]); [`PostgresStore::upgrade`] converts an
    /// older one.
    pub fn open(url: &str, now: UnixMillis) -> Result<Self, StoreError> {
        let (store, found) = Self::connect(url, now)?;
        if format::check(found)? {
            return Err(StoreError::FormatTooOld {
                found,
                known: FORMAT_VERSION,
            });
        }
        Ok(store)
    }

    /// Opens the database as [`PostgresStore::open`] does, first converting a log in an older format to this
    /// build's (`chatd migrate`). Returns the version it converted from, if it converted.
    pub fn upgrade(url: &str, now: UnixMillis) -> Result<(Self, Option<u32>), StoreError> {
        let (store, found) = Self::connect(url, now)?;
        if !format::check(found)? {
            return Ok((store, None));
        }
        store.write(|c| block_on(upgrade_format(&mut c.client, found)))?;
        Ok((store, Some(found)))
    }

    /// Opens the database whatever its log's format, to copy it (`chatd backup` before `chatd migrate`), and
    /// returns that format's version. Only a store of this build's [`FORMAT_VERSION`] may have its records
    /// read: an engine must be started on [`PostgresStore::open`] or [`PostgresStore::upgrade`].
    pub fn open_as_is(url: &str, now: UnixMillis) -> Result<(Self, u32), StoreError> {
        Self::connect(url, now)
    }

    fn connect(url: &str, now: UnixMillis) -> Result<(Self, u32), StoreError> {
        let config = parse_url(url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chatd-postgres")
            .enable_all()
            .build()?;
        let opened = (|| {
            let mut conn = connect(rt.handle(), &config, STALL_MS)?;
            let (meta, found) = block_on(migrate_and_load(&mut conn.client, now))?;
            Ok::<_, StoreError>((conn, meta, found))
        })();
        let (conn, meta, found) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // Dropped without blocking, as `Drop` does: opening may fail inside an async task.
                rt.shutdown_background();
                return Err(e);
            }
        };
        Ok((
            Self {
                meta,
                url: url.to_owned(),
                config,
                rt: Some(rt),
                writer: Mutex::new(Some(conn)),
                readers: Mutex::new(Vec::new()),
                doorbell: Arc::default(),
                listener: OnceLock::new(),
                stall_ms: AtomicU64::new(STALL_MS),
            },
            found,
        ))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        // `rt` is taken only in `drop`, after which no method runs.
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the store")
            .handle()
    }

    /// Runs `f` on the writer connection, connecting it first if it is missing or closed. A connection that
    /// breaks meanwhile is dropped, to be replaced on next use.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut PgConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the writer can only come from a bug here, but it may have left the connection
        // inside a transaction an append opened by hand: such a connection is dropped (the server then rolls
        // the transaction back) and a new one made.
        let mut slot = match self.writer.lock() {
            Ok(slot) => slot,
            Err(poisoned) => {
                let mut slot = poisoned.into_inner();
                *slot = None;
                self.writer.clear_poison();
                slot
            }
        };
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = None;
            *slot = Some(connect(
                self.handle(),
                &self.config,
                self.stall_ms.load(Ordering::Relaxed),
            )?);
        }
        let Some(conn) = slot.as_mut() else {
            unreachable!("the writer was connected just above");
        };
        let out = f(conn);
        if conn.client.is_closed() {
            *slot = None;
        }
        out
    }

    /// Runs `f` on a pooled read connection; once more on a fresh one if the first turns out to be closed.
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut PgConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for attempt in 0..2 {
            let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) if !c.client.is_closed() => c,
                _ => connect(
                    self.handle(),
                    &self.config,
                    self.stall_ms.load(Ordering::Relaxed),
                )?,
            };
            let out = f(&mut conn);
            if conn.client.is_closed() {
                if attempt == 0 && out.is_err() {
                    continue;
                }
                return out;
            }
            let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READ_POOL {
                pool.push(conn);
            }
            return out;
        }
        unreachable!("the second attempt returns")
    }

    /// The database's URL, as given to [`PostgresStore::open`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The newest commit this process has seen (its own, or one the doorbell announced).
    fn ring_own(&self, seq: Seq) {
        self.doorbell.ring(seq);
    }

    /// Starts the LISTEN task once: a dedicated connection that rings the doorbell on every notification,
    /// and after every (re)connection with the log's last seq, so that a commit made while it was away is
    /// not missed.
    fn start_listener(&self) {
        self.listener.get_or_init(|| {
            let config = self.config.clone();
            let bell = self.doorbell.clone();
            self.handle().spawn(async move {
                loop {
                    listen(&config, &bell).await;
                    // Wake waiters so that they read the log themselves while the doorbell is down.
                    bell.rung.notify_all();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        });
    }

    /// Appends in one transaction, fenced by `term` if given (see the module doc).
    fn append_with(&self, term: Option<u64>, batch: &Batch<'_>) -> Result<(), StoreError> {
        // Density and durability inside the batch are checked before anything is sent.
        for pair in batch.events.windows(2) {
            if pair[1].seq != pair[0].seq + 1 {
                return Err(StoreError::OutOfOrder {
                    last: pair[0].seq,
                    got: pair[1].seq,
                });
            }
        }
        if let Some(ev) = batch.events.iter().find(|e| !e.is_durable()) {
            return Err(StoreError::OutOfOrder {
                last: ev.seq.saturating_sub(1),
                got: ev.seq,
            });
        }
        let last = self.write(|c| block_on(append_tx(c, term, batch)))?;
        if let Some(last) = last {
            self.ring_own(last);
        }
        Ok(())
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Clients first (their connections end), then the runtime, without blocking: a store may be dropped
        // inside an async task, where a blocking runtime shutdown panics.
        self.writer
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.readers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One LISTEN session: returns when its connection ends.
async fn listen(config: &Config, bell: &Doorbell) {
    let Ok((client, mut connection)) = config.connect(NoTls).await else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if let Ok(seq) = n.payload().parse::<Seq>() {
                        let _ = tx.send(seq);
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    });
    let ready = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        let r = client
            .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])
            .await?;
        r.try_get::<_, i64>(0)
    };
    match ready.await {
        Ok(last) => bell.ring(uns(last)),
        Err(_) => {
            driver.abort();
            return;
        }
    }
    while let Some(seq) = rx.recv().await {
        bell.ring(seq);
    }
    drop(client);
}

/// The append transaction. Returns the batch's last seq, if it had events.
///
/// Round trips are what an append costs (the statements themselves take well under a millisecond), so
/// everything that need not wait for an answer is pipelined: tokio-postgres sends requests polled together
/// back to back on the one connection, and PostgreSQL runs them in the order sent. An append of messages is
/// two round trips: `BEGIN` with the checks (the lock first: each statement reads a snapshot taken after the
/// one before it finished, so the log's last seq is read under the lock), then the writes with `COMMIT`.
/// Sending `COMMIT` behind the writes is safe because PostgreSQL never commits a transaction in which a
/// statement failed (its `COMMIT` rolls back), and the append reports success only if every write and the
/// commit succeeded. The transaction is opened by hand rather than with tokio-postgres's `Transaction`,
/// whose `BEGIN` would be a round trip of its own; [`PostgresStore::write`] drops a connection a panic left
/// inside it.
async fn append_tx(
    conn: &mut PgConn,
    term: Option<u64>,
    batch: &Batch<'_>,
) -> Result<Option<Seq>, StoreError> {
    let PgConn { client, stmts } = conn;
    let mut q = Q::new(&*client, stmts);
    let out = append_in(&mut q, term, batch).await;
    if out.is_err() {
        // Ends the transaction if it is still open (a refused batch, a failed statement); after a failed
        // COMMIT, or on a broken connection, there is nothing to end and this fails too, harmlessly.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    out
}

async fn append_in(
    q: &mut Q<'_, Client>,
    term: Option<u64>,
    batch: &Batch<'_>,
) -> Result<Option<Seq>, StoreError> {
    use futures_util::future::{OptionFuture, join3, try_join3, try_join4};

    let lock = q.stmt("SELECT pg_advisory_xact_lock($1)").await?;
    let lease = q
        .stmt("SELECT term FROM lease WHERE one FOR UPDATE")
        .await?;
    let max = q.stmt("SELECT COALESCE(MAX(seq), 0) FROM events").await?;
    let c = q.c;
    let (_, _, current, last) = try_join4(
        c.batch_execute("BEGIN"),
        c.query(&lock, &[&APPEND_LOCK]),
        OptionFuture::from(term.map(|_| c.query_opt(&lease, &[]))).map(Option::transpose),
        OptionFuture::from(batch.events.first().map(|_| c.query_one(&max, &[])))
            .map(Option::transpose),
    )
    .await
    .db()?;
    if let Some(term) = term {
        let current = current
            .flatten()
            .map(|r| col::<i64>(&r, 0))
            .transpose()?
            .map_or(0, uns);
        if current != term {
            return Err(StoreError::Fenced { term, current });
        }
    }
    if let (Some(first), Some(last)) = (batch.events.first(), last) {
        let last = uns(col(&last, 0)?);
        if first.seq != last + 1 {
            return Err(StoreError::OutOfOrder {
                last,
                got: first.seq,
            });
        }
    }
    let points = crate::project::audience_points(batch.events, batch.command_ends);
    let mut deferred = Deferred::default();
    for (ev, at) in batch.events.iter().zip(points) {
        apply::append_event(q, ev, at, &mut deferred).await?;
    }

    // The closing flight: every statement prepared first, then all sent together.
    let rows = &deferred.rows;
    let events = q
        .stmt(
            "INSERT INTO events (seq, ts, kind, aud, aud_at, aud_channel, aud_space, aud_user, payload)
             SELECT u.seq, u.ts, u.kind, u.aud, u.aud_at,
                 CASE WHEN u.resolve THEN COALESCE(
                     (SELECT t.parent FROM channels t WHERE t.id = u.aud_channel AND t.kind = 'thread'),
                     u.aud_channel)
                 ELSE u.aud_channel END,
                 u.aud_space, u.aud_user, u.payload
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::smallint[], $5::bigint[],
                 $6::bigint[], $7::bigint[], $8::bigint[], $9::bytea[], $10::boolean[])
                 AS u (seq, ts, kind, aud, aud_at, aud_channel, aud_space, aud_user, payload, resolve)",
        )
        .await?;
    let last_message = q
        .stmt(
            "UPDATE channels c SET last_message = u.m
             FROM UNNEST($1::bigint[], $2::bigint[]) AS u (c, m) WHERE c.id = u.c",
        )
        .await?;
    let cursors = q.stmt(SAVE_CURSORS).await?;
    let nonces = q
        .stmt(
            "INSERT INTO nonces (user_id, nonce, at, reply)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bytea[])
             ON CONFLICT (user_id, nonce) DO UPDATE SET at = EXCLUDED.at, reply = EXCLUDED.reply",
        )
        .await?;
    let notify = q.stmt("SELECT pg_notify($1, $2)").await?;
    let (channels, messages): (Vec<i64>, Vec<i64>) = deferred.last_message.into_iter().unzip();
    let (clients, seqs) = cursor_rows(batch.cursors);
    // One row per key, the last one winning, as a sequence of upserts would leave it.
    let mut by_key: BTreeMap<(i64, &str), &NonceRecord> = BTreeMap::new();
    for n in batch.nonces {
        by_key.insert((sql(n.user.get()), n.nonce.as_str()), n);
    }
    let users: Vec<i64> = by_key.keys().map(|k| k.0).collect();
    let nonce_keys: Vec<&str> = by_key.keys().map(|k| k.1).collect();
    let ats: Vec<i64> = by_key.values().map(|n| bound(n.at)).collect();
    let replies: Vec<&[u8]> = by_key.values().map(|n| n.reply.as_slice()).collect();
    let last = batch.events.last().map(|e| e.seq);
    let last_text = last.map(|l| l.to_string());
    let insert_messages = q.stmt(apply::INSERT_MESSAGES).await?;
    let message_params = deferred.messages.params();
    let event_params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
        &rows.seq,
        &rows.ts,
        &rows.kind,
        &rows.aud,
        &rows.aud_at,
        &rows.aud_channel,
        &rows.aud_space,
        &rows.aud_user,
        &rows.payload,
        &rows.resolve,
    ];
    let last_message_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
        [&channels, &messages];
    let cursor_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&clients, &seqs];
    let nonce_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&users, &nonce_keys, &ats, &replies];
    let notify_params = last_text
        .as_ref()
        .map(|l| -> [&(dyn tokio_postgres::types::ToSql + Sync); 2] { [&CHANNEL, l] });
    let writes = try_join3(
        OptionFuture::from((!rows.seq.is_empty()).then(|| c.execute(&events, &event_params)))
            .map(Option::transpose),
        OptionFuture::from(
            (!channels.is_empty()).then(|| c.execute(&last_message, &last_message_params)),
        )
        .map(Option::transpose),
        OptionFuture::from((!clients.is_empty()).then(|| c.execute(&cursors, &cursor_params)))
            .map(Option::transpose),
    );
    let more = try_join3(
        OptionFuture::from(
            (!deferred.messages.is_empty()).then(|| c.execute(&insert_messages, &message_params)),
        )
        .map(Option::transpose),
        OptionFuture::from((!users.is_empty()).then(|| c.execute(&nonces, &nonce_params)))
            .map(Option::transpose),
        OptionFuture::from(notify_params.as_ref().map(|p| c.query(&notify, p)))
            .map(Option::transpose),
    );
    // Never cancelled, never timed out (see the module doc). Every answer is awaited, the commit's too, so
    // that the connection is left with no request in flight whatever failed.
    let (writes, more, commit) = join3(writes, more, c.batch_execute("COMMIT")).await;
    writes.db()?;
    more.db()?;
    // Only now is a failure the commit's own: its outcome is unknown (the connection broke, or the server
    // went away while it waited for a synchronous standby).
    commit.db()?;
    Ok(last)
}

/// The upsert of cursors from the arrays [`cursor_rows`] makes.
const SAVE_CURSORS: &str =
    "INSERT INTO cursors (client, seq) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])
     ON CONFLICT (client) DO UPDATE SET seq = EXCLUDED.seq";

/// Cursors as two arrays, one row per client, the last one winning, as a sequence of upserts would leave it
/// (one statement may not upsert a row twice).
fn cursor_rows(cursors: &[(ClientId, Seq)]) -> (Vec<i64>, Vec<i64>) {
    let mut by_client: BTreeMap<i64, i64> = BTreeMap::new();
    for (c, s) in cursors {
        by_client.insert(sql(c.get()), bound(*s));
    }
    by_client.into_iter().unzip()
}

async fn save_cursors_in<C: GenericClient + Sync>(
    q: &mut Q<'_, C>,
    cursors: &[(ClientId, Seq)],
) -> Result<(), StoreError> {
    let (clients, seqs) = cursor_rows(cursors);
    if !clients.is_empty() {
        q.exec(SAVE_CURSORS, &[&clients, &seqs]).await?;
    }
    Ok(())
}

/// The columns history and search read, in the order [`message_from_row`] expects.
const MESSAGE_COLS: &str = "m.id, m.seq, m.ts, m.channel, m.space, m.author, m.kind, m.body, m.meta, \
     m.reply_to, m.thread, m.mention_everyone, m.embeds, m.pinned, m.edited_at, m.nonce, m.mentions, \
     m.attachments";

fn message_from_row(r: &Row) -> Result<StoredMessage, StoreError> {
    let id: i64 = col(r, 0)?;
    let at = uns(id);
    let kind: String = col(r, 6)?;
    let mentions: Vec<u8> = col(r, 16)?;
    let attachments: Vec<u8> = col(r, 17)?;
    Ok(StoredMessage {
        id: id_of(id, MessageId::from_raw, "message")?,
        seq: uns(col(r, 1)?),
        ts: uns(col(r, 2)?),
        channel: id_of(col(r, 3)?, ChannelId::from_raw, "message channel")?,
        space: opt_id(col(r, 4)?, SpaceId::from_raw, "message space")?,
        author: id_of(col(r, 5)?, UserId::from_raw, "message author")?,
        kind: chat_core::MessageKind::from_name(&kind)
            .ok_or_else(|| corrupt("message kind", at, kind.clone()))?,
        body: col(r, 7)?,
        meta: col(r, 8)?,
        reply_to: opt_id(col(r, 9)?, MessageId::from_raw, "reply")?,
        thread: opt_id(col(r, 10)?, ChannelId::from_raw, "thread")?,
        mention_everyone: col(r, 11)?,
        embeds: col(r, 12)?,
        pinned: col(r, 13)?,
        edited_at: col::<Option<i64>>(r, 14)?.map(uns),
        nonce: col(r, 15)?,
        mentions: postcard::from_bytes::<Vec<UserId>>(&mentions)
            .map_err(|e| corrupt("mentions", at, e))?,
        attachments: postcard::from_bytes::<Vec<Attachment>>(&attachments)
            .map_err(|e| corrupt("attachments", at, e))?,
        reactions: BTreeMap::new(),
    })
}

/// Messages from rows of [`MESSAGE_COLS`], with their reactions read in one more statement.
async fn messages_from_rows<C: GenericClient + Sync>(
    q: &mut Q<'_, C>,
    rows: &[Row],
) -> Result<Vec<StoredMessage>, StoreError> {
    let mut out = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        return Ok(out);
    }
    let ids: Vec<i64> = out.iter().map(|m| sql(m.id.get())).collect();
    let reactions = q
        .query(
            "SELECT message, emoji, user_id FROM reactions WHERE message = ANY($1) ORDER BY message, emoji, n",
            &[&ids],
        )
        .await?;
    let index: BTreeMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for r in &reactions {
        let message: i64 = col(r, 0)?;
        let emoji: String = col(r, 1)?;
        let user = id_of(col(r, 2)?, UserId::from_raw, "reaction user")?;
        if let Some(&i) = index.get(&message) {
            out[i].reactions.entry(emoji).or_default().push(user);
        }
    }
    Ok(out)
}

async fn messages_where<C: GenericClient + Sync>(
    q: &mut Q<'_, C>,
    clause: &str,
    params: &db::Params<'_>,
) -> Result<Vec<StoredMessage>, StoreError> {
    let text = format!("SELECT {MESSAGE_COLS} FROM messages m WHERE {clause}");
    let rows = q.query(&text, params).await?;
    messages_from_rows(q, &rows).await
}

/// The visible events of one user's stream in `(lo, hi]`, at most `limit` rows from SQL (rows of `users`
/// audiences are filtered after decoding). Returns the events that pass, the last seq returned, and the
/// number of rows.
async fn stream_window<C: GenericClient + Sync>(
    q: &mut Q<'_, C>,
    user: UserId,
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> Result<(Vec<Event>, Option<Seq>, usize), StoreError> {
    let rows = q
        .query(
            "SELECT e.seq, e.aud, e.payload FROM events e
             WHERE e.seq > $1 AND e.seq <= $2 AND (
                 (e.aud IN (1, 4, 6) AND e.aud_user = $3)
                 OR e.aud = 2
                 OR (e.aud IN (3, 4) AND EXISTS (SELECT 1 FROM members m
                     WHERE m.channel = e.aud_channel AND m.user_id = $3 AND m.from_seq <= e.aud_at
                       AND (m.to_seq IS NULL OR m.to_seq > e.aud_at)))
                 OR (e.aud IN (5, 6) AND EXISTS (SELECT 1 FROM space_members m
                     WHERE m.space = e.aud_space AND m.user_id = $3 AND m.from_seq <= e.aud_at
                       AND (m.to_seq IS NULL OR m.to_seq > e.aud_at))))
             ORDER BY e.seq LIMIT $4",
            &[&bound(lo), &bound(hi), &sql(user.get()), &lim(limit)],
        )
        .await?;
    let mut out = Vec::new();
    let mut last = None;
    for r in &rows {
        let seq: i64 = col(r, 0)?;
        let aud: i16 = col(r, 1)?;
        let payload: &[u8] = col(r, 2)?;
        last = Some(uns(seq));
        let ev = decode_event(seq, payload)?;
        let visible = aud != i16::from(AUD_USERS)
            || matches!(&ev.audience, chat_core::Audience::Users(us) if us.binary_search(&user).is_ok());
        if visible {
            out.push(ev);
        }
    }
    Ok((out, last, rows.len()))
}

/// Where `pg_dump` is: on PATH, else the highest `/usr/lib/postgresql/*/bin`.
fn find_pg_dump() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pg_dump"))
            .find(|p| p.is_file())
    });
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin/pg_dump");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    // The highest installed version first: pg_dump refuses servers newer than itself, and Debian's PATH
    // wrapper may pick an older one.
    versions.pop().map(|(_, p)| p).or(on_path)
}

impl Store for PostgresStore {
    fn meta(&self) -> DbMeta {
        self.meta
    }

    fn last_seq(&self) -> Result<Seq, StoreError> {
        // Read from the database, not remembered: in a cluster, other processes append too.
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let r = block_on(q.one("SELECT COALESCE(MAX(seq), 0) FROM events", &[]))?;
            Ok(uns(col(&r, 0)?))
        })
    }

    fn first_seq(&self) -> Result<Option<Seq>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let r = block_on(q.one("SELECT MIN(seq) FROM events", &[]))?;
            Ok(col::<Option<i64>>(&r, 0)?.map(uns))
        })
    }

    /// Appends in one transaction that first checks, under a lock, that the batch continues the log as the
    /// database holds it. Returns once PostgreSQL has committed (per its `synchronous_commit`, which the
    /// store never lowers). An error from the commit itself leaves the outcome unknown.
    fn append(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        self.append_with(None, batch)
    }

    fn events_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let rows = block_on(q.query(
                "SELECT seq, payload FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&bound(after), &lim(limit)],
            ))?;
            rows.iter()
                .map(|r| decode_event(col(r, 0)?, col(r, 1)?))
                .collect()
        })
    }

    fn user_stream(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        self.read(|c| {
            block_on(async {
                let PgConn { client, stmts } = c;
                // One snapshot for the bounds and every window.
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .db()?;
                let mut q = Q::new(&tx, stmts);
                let r = q.one("SELECT MIN(seq), MAX(seq) FROM events", &[]).await?;
                let (first, last): (Option<i64>, Option<i64>) = (col(&r, 0)?, col(&r, 1)?);
                if let Some(first) = first.map(uns)
                    && after < first - 1
                {
                    return Ok(StreamPage {
                        events: Vec::new(),
                        next: first - 1,
                        reset: true,
                    });
                }
                let end = last.map_or(0, uns);
                let mut events = Vec::new();
                let mut cursor = after;
                let mut windows = 0;
                while events.len() < limit && cursor < end && windows < STREAM_WINDOWS_PER_CALL {
                    let hi = end.min(cursor.saturating_add(STREAM_WINDOW));
                    let want = limit - events.len();
                    let (found, last_row, rows) =
                        stream_window(&mut q, user, cursor, hi, want).await?;
                    events.extend(found);
                    cursor = match last_row {
                        Some(s) if rows == want => s,
                        _ => hi,
                    };
                    windows += 1;
                }
                tx.commit().await.db()?;
                Ok(StreamPage {
                    events,
                    next: cursor,
                    reset: false,
                })
            })
        })
    }

    fn save_snapshot(&self, seq: Seq, state: &[u8]) -> Result<(), StoreError> {
        self.write(|c| {
            block_on(async {
                let PgConn { client, stmts } = c;
                let tx = client.transaction().await.db()?;
                let mut q = Q::new(&tx, stmts);
                // Start-up reads only the newest snapshot; older ones are dead weight.
                q.exec("DELETE FROM snapshots WHERE seq < $1", &[&bound(seq)])
                    .await?;
                q.exec(
                    "INSERT INTO snapshots (seq, state) VALUES ($1, $2)
                     ON CONFLICT (seq) DO UPDATE SET state = EXCLUDED.state",
                    &[&bound(seq), &state],
                )
                .await?;
                tx.commit().await.db()
            })
        })
    }

    fn latest_snapshot(&self) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(q.opt(
                "SELECT seq, state FROM snapshots ORDER BY seq DESC LIMIT 1",
                &[],
            ))?
            .map(|r| Ok((uns(col(&r, 0)?), col(&r, 1)?)))
            .transpose()
        })
    }

    fn save_cursors(&self, cursors: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        if cursors.is_empty() {
            return Ok(());
        }
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(save_cursors_in(&mut q, cursors))
        })
    }

    fn cursors(&self) -> Result<Vec<(ClientId, Seq)>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let rows = block_on(q.query("SELECT client, seq FROM cursors ORDER BY client", &[]))?;
            rows.iter()
                .map(|r| {
                    Ok((
                        id_of(col(r, 0)?, ClientId::from_raw, "cursor client")?,
                        uns(col(r, 1)?),
                    ))
                })
                .collect()
        })
    }

    fn nonce(&self, user: UserId, nonce: &str) -> Result<Option<NonceRecord>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(q.opt(
                "SELECT at, reply FROM nonces WHERE user_id = $1 AND nonce = $2",
                &[&sql(user.get()), &nonce],
            ))?
            .map(|r| {
                Ok(NonceRecord {
                    user,
                    nonce: nonce.to_owned(),
                    at: uns(col(&r, 0)?),
                    reply: col(&r, 1)?,
                })
            })
            .transpose()
        })
    }

    fn nonces_since(&self, since: UnixMillis) -> Result<Vec<NonceRecord>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let rows = block_on(q.query(
                "SELECT user_id, nonce, at, reply FROM nonces WHERE at >= $1",
                &[&bound(since)],
            ))?;
            rows.iter()
                .map(|r| {
                    Ok(NonceRecord {
                        user: id_of(col(r, 0)?, UserId::from_raw, "nonce user")?,
                        nonce: col(r, 1)?,
                        at: uns(col(r, 2)?),
                        reply: col(r, 3)?,
                    })
                })
                .collect()
        })
    }

    fn spend_stamp(
        &self,
        key: [u8; 32],
        expires: UnixMillis,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.write(|c| {
            block_on(async {
                let PgConn { client, stmts } = c;
                let tx = client.transaction().await.db()?;
                let mut q = Q::new(&tx, stmts);
                q.exec("DELETE FROM spent_stamps WHERE expires <= $1", &[&bound(now)])
                    .await?;
                let added = q
                    .exec(
                        "INSERT INTO spent_stamps (key, expires) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                        &[&&key[..], &bound(expires)],
                    )
                    .await?;
                tx.commit().await.db()?;
                Ok(added == 1)
            })
        })
    }

    fn unspend_stamp(&self, key: [u8; 32]) -> Result<(), StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(q.exec("DELETE FROM spent_stamps WHERE key = $1", &[&&key[..]]))?;
            Ok(())
        })
    }

    fn links(&self) -> Result<Vec<ServerLink>, StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let rows = block_on(q.query(
                "SELECT name, url, key, added_at, cursor FROM server_links ORDER BY name",
                &[],
            ))?;
            rows.iter()
                .map(|r| {
                    Ok(ServerLink {
                        name: r.try_get(0).db()?,
                        url: r.try_get(1).db()?,
                        key: r.try_get(2).db()?,
                        added_at: uns(r.try_get(3).db()?),
                        cursor: uns(r.try_get(4).db()?),
                    })
                })
                .collect()
        })
    }

    fn add_link(&self, link: &ServerLink) -> Result<bool, StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let added = block_on(q.exec(
                "INSERT INTO server_links (name, url, key, added_at, cursor) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO NOTHING",
                &[
                    &link.name,
                    &link.url,
                    &link.key,
                    &bound(link.added_at),
                    &bound(link.cursor),
                ],
            ))?;
            Ok(added == 1)
        })
    }

    fn remove_link(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let removed = block_on(q.exec("DELETE FROM server_links WHERE name = $1", &[&name]))?;
            Ok(removed == 1)
        })
    }

    fn save_link_cursor(&self, name: &str, cursor: Seq) -> Result<bool, StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let changed = block_on(q.exec(
                "UPDATE server_links SET cursor = $2 WHERE name = $1",
                &[&name, &bound(cursor)],
            ))?;
            Ok(changed == 1)
        })
    }

    fn history(&self, hq: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = hq.limit.clamp(1, 100);
        let ch = sql(hq.channel.get());
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(async {
                let newest_before = async |q: &mut Q<'_, Client>, before: Option<i64>, n: usize| {
                    let mut v = messages_where(
                        q,
                        "m.channel = $1 AND ($2::bigint IS NULL OR m.id < $2) ORDER BY m.id DESC LIMIT $3",
                        &[&ch, &before, &lim(n)],
                    )
                    .await?;
                    v.reverse();
                    Ok::<_, StoreError>(v)
                };
                let oldest_from = async |q: &mut Q<'_, Client>, from: i64, inclusive: bool, n: usize| {
                    let clause = if inclusive {
                        "m.channel = $1 AND m.id >= $2 ORDER BY m.id LIMIT $3"
                    } else {
                        "m.channel = $1 AND m.id > $2 ORDER BY m.id LIMIT $3"
                    };
                    messages_where(q, clause, &[&ch, &from, &lim(n)]).await
                };
                if let Some(before) = hq.before {
                    newest_before(&mut q, Some(bound(before.get())), limit).await
                } else if let Some(after) = hq.after {
                    oldest_from(&mut q, bound(after.get()), false, limit).await
                } else if let Some(around) = hq.around {
                    let mut out = if limit / 2 > 0 {
                        newest_before(&mut q, Some(bound(around.get())), limit / 2).await?
                    } else {
                        Vec::new()
                    };
                    let room = limit - out.len();
                    out.extend(oldest_from(&mut q, bound(around.get()), true, room).await?);
                    Ok(out)
                } else {
                    newest_before(&mut q, None, limit).await
                }
            })
        })
    }

    fn message(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            Ok(block_on(messages_where(&mut q, "m.id = $1", &[&sql(id.get())]))?.pop())
        })
    }

    fn attachments(&self, channel: ChannelId) -> Result<Vec<Attachment>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            // An empty list encodes as the one byte 0x00; only messages with files are decoded.
            let rows = block_on(q.query(
                "SELECT id, attachments FROM messages WHERE channel = $1 AND attachments <> '\\x00'::bytea",
                &[&sql(channel.get())],
            ))?;
            let mut out = Vec::new();
            for r in &rows {
                let id: i64 = col(r, 0)?;
                let bytes: &[u8] = col(r, 1)?;
                out.extend(
                    postcard::from_bytes::<Vec<Attachment>>(bytes)
                        .map_err(|e| corrupt("attachments", uns(id), e))?,
                );
            }
            Ok(out)
        })
    }

    /// Full-text search on the `words` column (GIN), with the query's terms as `tsquery` lexemes: see the
    /// `search` module for why the store makes both sides itself.
    fn search(&self, sq: &SearchQuery) -> Result<Vec<SearchHit>, StoreError> {
        let terms = search::fold_terms(&text::parse(&sq.text));
        if terms.is_empty() || sq.channels.is_empty() {
            return Ok(Vec::new());
        }
        let Some(tsquery) = search::tsquery(&terms) else {
            return Ok(Vec::new());
        };
        let channels: Vec<i64> = sq.channels.iter().map(|c| sql(c.get())).collect();
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(async {
                let text = format!(
                    "SELECT {MESSAGE_COLS} FROM messages m
                     WHERE m.words @@ $1::text::tsquery
                       AND m.channel = ANY($2)
                       AND ($3::bigint IS NULL OR m.author = $3)
                       AND ($4::bigint IS NULL OR m.channel = $4)
                       AND ($5::bigint IS NULL OR m.space = $5)
                       AND ($6::bigint IS NULL OR m.id < $6)
                       AND ($7::bigint IS NULL OR m.id > $7)
                     ORDER BY m.id DESC LIMIT $8 OFFSET $9"
                );
                let rows = q
                    .query(
                        &text,
                        &[
                            &tsquery,
                            &channels,
                            &sq.author.map(|a| sql(a.get())),
                            &sq.channel.map(|c| sql(c.get())),
                            &sq.space.map(|s| sql(s.get())),
                            &sq.before.map(|b| bound(b.get())),
                            &sq.after.map(|a| bound(a.get())),
                            &lim(sq.limit.clamp(1, 100)),
                            &lim(sq.offset),
                        ],
                    )
                    .await?;
                let messages = messages_from_rows(&mut q, &rows).await?;
                Ok(messages
                    .into_iter()
                    .map(|message| SearchHit {
                        snippet: search::snippet(&message.body, &terms),
                        message,
                    })
                    .collect())
            })
        })
    }

    fn enforce_retention(
        &self,
        max_history: usize,
        events_before: UnixMillis,
        nonces_before: UnixMillis,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let over: Vec<(i64, i64)> = self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let rows = block_on(q.query(
                "SELECT channel, COUNT(*) - $1 FROM messages GROUP BY channel HAVING COUNT(*) > $1",
                &[&lim(max_history)],
            ))?;
            rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
        })?;
        let mut chunks = 0;
        'channels: for (channel, mut excess) in over {
            while excess > 0 {
                if chunks >= RETENTION_CHUNKS_PER_CALL {
                    break 'channels;
                }
                let n = excess.min(RETENTION_CHUNK);
                let (removed, gone) = self.write(|c| {
                    block_on(async {
                        let PgConn { client, stmts } = c;
                        let tx = client.transaction().await.db()?;
                        let mut q = Q::new(&tx, stmts);
                        // The files of what goes are read in the same transaction, so the report names
                        // exactly the messages removed.
                        let doomed = q
                            .query(
                                "SELECT id, attachments FROM messages WHERE channel = $1
                                 ORDER BY id LIMIT $2 FOR UPDATE",
                                &[&channel, &n],
                            )
                            .await?;
                        let ch = id_of(channel, ChannelId::from_raw, "message channel")?;
                        let mut gone = Vec::new();
                        let mut ids = Vec::with_capacity(doomed.len());
                        for r in &doomed {
                            let id: i64 = col(r, 0)?;
                            let bytes: &[u8] = col(r, 1)?;
                            ids.push(id);
                            if bytes != [0] {
                                let list = postcard::from_bytes::<Vec<Attachment>>(bytes)
                                    .map_err(|e| corrupt("attachments", uns(id), e))?;
                                gone.extend(list.into_iter().map(|a| (ch, a)));
                            }
                        }
                        q.exec("DELETE FROM reactions WHERE message = ANY($1)", &[&ids])
                            .await?;
                        let removed = q
                            .exec("DELETE FROM messages WHERE id = ANY($1)", &[&ids])
                            .await?;
                        tx.commit().await.db()?;
                        Ok((removed, gone))
                    })
                })?;
                report.messages += removed;
                report.attachments.extend(gone);
                excess -= n;
                chunks += 1;
                if removed == 0 {
                    break;
                }
            }
        }
        // Events go from the front of the log only, up to the first event at or after the cutoff time, and
        // never the newest snapshot's seq or later.
        let log_end: Option<i64> = self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(async {
                let snap: Option<i64> =
                    col(&q.one("SELECT MAX(seq) FROM snapshots", &[]).await?, 0)?;
                let Some(snap) = snap else {
                    return Ok(None);
                };
                let young: Option<i64> = col(
                    &q.one(
                        "SELECT MIN(seq) FROM events WHERE ts >= $1",
                        &[&bound(events_before)],
                    )
                    .await?,
                    0,
                )?;
                Ok(Some(young.map_or(snap, |y| y.min(snap))))
            })
        })?;
        if let Some(log_end) = log_end {
            for _ in 0..RETENTION_CHUNKS_PER_CALL {
                let removed = self.write(|c| {
                    let mut q = Q::new(&c.client, &mut c.stmts);
                    block_on(q.exec(
                        "DELETE FROM events WHERE seq IN
                         (SELECT seq FROM events WHERE seq < $1 ORDER BY seq LIMIT $2)",
                        &[&log_end, &RETENTION_CHUNK],
                    ))
                })?;
                report.events += removed;
                if removed < RETENTION_CHUNK as u64 {
                    break;
                }
            }
        }
        for _ in 0..RETENTION_CHUNKS_PER_CALL {
            let removed = self.write(|c| {
                let mut q = Q::new(&c.client, &mut c.stmts);
                block_on(q.exec(
                    "DELETE FROM nonces WHERE (user_id, nonce) IN
                     (SELECT user_id, nonce FROM nonces WHERE at < $1 LIMIT $2)",
                    &[&bound(nonces_before), &RETENTION_CHUNK],
                ))
            })?;
            report.nonces += removed;
            if removed < RETENTION_CHUNK as u64 {
                break;
            }
        }
        Ok(report)
    }

    /// Dumps the database to `path` with `pg_dump -Fc` (custom format: restore with `pg_restore`),
    /// connecting with the store's URL. PostgreSQL has no file to copy from a client, so this needs PostgreSQL's
    /// client programs on the machine (`pg_dump` on PATH, or in `/usr/lib/postgresql/*/bin`, the highest
    /// version first: `pg_dump` refuses a server newer than itself); without them it fails with an error
    /// saying so, and the operator runs `pg_dump` (or a base backup) directly. The dump is one consistent
    /// snapshot, taken while the store stays in use. The URL is passed on `pg_dump`'s command line: a password
    /// in it is visible to the machine's other users while the dump runs (prefer a `.pgpass` file).
    fn backup(&self, path: &Path) -> Result<(), StoreError> {
        let pg_dump = find_pg_dump().ok_or_else(|| {
            io("backup of a PostgreSQL database needs pg_dump (PostgreSQL's client programs), which was \
                not found on PATH or in /usr/lib/postgresql/*/bin: install them, or run \
                `pg_dump -Fc` against the database yourself"
                .into())
        })?;
        let out = std::process::Command::new(&pg_dump)
            .arg("--format=custom")
            .arg("--file")
            .arg(path)
            .arg("--dbname")
            .arg(&self.url)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| io(format!("cannot run {}: {e}", pg_dump.display())))?;
        if !out.status.success() {
            return Err(io(format!(
                "pg_dump failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Cluster for PostgresStore {
    fn log_after(&self, after: Seq, limit: usize) -> Result<Vec<(Event, Seq)>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let rows = block_on(q.query(
                "SELECT seq, payload, aud_at FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&bound(after), &lim(limit)],
            ))?;
            rows.iter()
                .map(|r| {
                    let event = decode_event(col(r, 0)?, col(r, 1)?)?;
                    let end: i64 = col(r, 2)?;
                    Ok((event, u64::try_from(end).unwrap_or(0)))
                })
                .collect()
        })
    }

    fn try_lead(&self, node: u16, addr: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        // A writer paused inside an append holds the lease row and the append lock: the server ends its
        // session once it has sat idle as long as a lease lasts, so that a takeover waits about a lease for
        // a paused writer, not the default limit. (Ending it loses nothing acknowledged: it never committed.)
        let stall = u64::try_from(ttl_ms)
            .unwrap_or(u64::MAX)
            .clamp(MIN_STALL_MS, STALL_MS);
        let changed = self.stall_ms.swap(stall, Ordering::Relaxed) != stall;
        self.write(|c| {
            if changed {
                block_on(c.client.batch_execute(&format!(
                    "SET idle_in_transaction_session_timeout = {stall}"
                )))
                .db()?;
            }
            let mut q = Q::new(&c.client, &mut c.stmts);
            // One statement: PostgreSQL serializes racing upserts of the one row, so exactly one of several
            // nodes taking over an expired lease wins, and its term is the old one plus one.
            let row = block_on(q.opt(
                "INSERT INTO lease AS l (one, term, node, addr, expires)
                 VALUES (TRUE, 1, $1, $2, now() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (one) DO UPDATE SET
                     term = CASE WHEN l.node = EXCLUDED.node AND l.expires > now() THEN l.term
                                 ELSE l.term + 1 END,
                     node = EXCLUDED.node, addr = EXCLUDED.addr, expires = EXCLUDED.expires
                 WHERE l.expires <= now() OR l.node = EXCLUDED.node
                 RETURNING term",
                &[&i32::from(node), &addr, &ttl_ms],
            ))?;
            row.map(|r| Ok(uns(col(&r, 0)?))).transpose()
        })
    }

    fn renew_lease(&self, term: u64, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let n = block_on(q.exec(
                "UPDATE lease SET expires = now() + $2::bigint * interval '1 millisecond' WHERE term = $1",
                &[&sql(term), &ttl_ms],
            ))?;
            Ok(n == 1)
        })
    }

    fn resign(&self, term: u64) -> Result<(), StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(q.exec(
                "UPDATE lease SET expires = '-infinity' WHERE term = $1",
                &[&sql(term)],
            ))?;
            Ok(())
        })
    }

    fn lease(&self) -> Result<Option<Lease>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(q.opt("SELECT term, node, addr, expires > now() FROM lease", &[]))?
                .map(|r| {
                    Ok(Lease {
                        term: uns(col(&r, 0)?),
                        node: u16::try_from(col::<i32>(&r, 1)?).unwrap_or(u16::MAX),
                        addr: col(&r, 2)?,
                        live: col(&r, 3)?,
                    })
                })
                .transpose()
        })
    }

    fn append_fenced(&self, term: u64, batch: &Batch<'_>) -> Result<(), StoreError> {
        self.append_with(Some(term), batch)
    }

    fn report_node(
        &self,
        id: u16,
        addr: &str,
        role: NodeRole,
        applied: Seq,
    ) -> Result<(), StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(q.exec(
                "INSERT INTO nodes (id, addr, role, applied, reported_at) VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (id) DO UPDATE SET addr = EXCLUDED.addr, role = EXCLUDED.role,
                     applied = EXCLUDED.applied, reported_at = EXCLUDED.reported_at",
                &[&i32::from(id), &addr, &role.as_str(), &bound(applied)],
            ))?;
            Ok(())
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let rows = block_on(q.query(
                "SELECT id, addr, role, applied,
                     GREATEST(0, (EXTRACT(EPOCH FROM (now() - reported_at)) * 1000)::bigint)
                 FROM nodes ORDER BY id",
                &[],
            ))?;
            rows.iter()
                .map(|r| {
                    let role: &str = col(r, 2)?;
                    Ok(NodeRecord {
                        id: u16::try_from(col::<i32>(r, 0)?).unwrap_or(u16::MAX),
                        addr: col(r, 1)?,
                        role: if role == NodeRole::Writer.as_str() {
                            NodeRole::Writer
                        } else {
                            NodeRole::Follower
                        },
                        applied: uns(col(r, 3)?),
                        age_ms: uns(col(r, 4)?),
                    })
                })
                .collect()
        })
    }

    fn wait_commit(&self, after: Seq, timeout: Duration) -> Result<Seq, StoreError> {
        self.start_listener();
        let deadline = Instant::now() + timeout;
        let mut seq = self.doorbell.seq.lock().unwrap_or_else(|e| e.into_inner());
        while *seq <= after {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let (s, _) = self
                .doorbell
                .rung
                .wait_timeout(seq, left)
                .unwrap_or_else(|e| e.into_inner());
            seq = s;
        }
        Ok(*seq)
    }

    fn cluster_secret(&self) -> Result<[u8; 32], StoreError> {
        self.read(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            let r = block_on(q.one(
                "SELECT value FROM cluster_meta WHERE key = 'cluster_secret'",
                &[],
            ))?;
            let v: &[u8] = col(&r, 0)?;
            <[u8; 32]>::try_from(v).map_err(|_| corrupt("cluster secret", 0, "not 32 bytes"))
        })
    }

    fn data_dir_mark(&self, proposed: u64) -> Result<u64, StoreError> {
        self.write(|c| {
            let mut q = Q::new(&c.client, &mut c.stmts);
            block_on(async {
                q.exec(
                    "INSERT INTO meta (key, value) VALUES ('data_dir_mark', $1) ON CONFLICT (key) DO NOTHING",
                    &[&sql(proposed)],
                )
                .await?;
                // A separate statement: it sees a mark another node committed while this insert waited.
                let r = q
                    .one("SELECT value FROM meta WHERE key = 'data_dir_mark'", &[])
                    .await?;
                Ok(uns(col(&r, 0)?))
            })
        })
    }
}
