//! The SQLite store: the event log and the projected tables in one WAL database, with FTS5 for search.
//!
//! One writer connection sits behind a mutex (SQLite allows one writer at a time anyway, and the engine's
//! writer task is its only caller on the hot path); readers take connections from a small pool, so that a
//! history page or a stream replay never waits for a commit in progress: in WAL mode readers see the last
//! committed state while the writer works.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use chat_core::{
    Attachment, ChannelId, ClientId, Event, MessageId, OverwriteTarget, Seq, SpaceId, UnixMillis,
    UserId,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::codec::{corrupt, decode_event, encode, id_of, opt_id, sql, uns};
use crate::project::{self, AUD_CHANNEL, AUD_CHANNEL_AND, AUD_USERS, Effect};
use crate::text;
use chat_log::format::{self, FORMAT_VERSION};
use chat_log::{
    Batch, DbMeta, HistoryQuery, NonceRecord, RetentionReport, SearchHit, SearchQuery, ServerLink,
    Store, StoreError, StoredMessage, StreamPage,
};

/// The schema migrations, in order, embedded at build time. A version is never edited once released: a
/// change is a new file.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../../migrations/0001_init.sql")),
    (2, include_str!("../../../migrations/0002_pinned_index.sql")),
    (
        3,
        include_str!("../../../migrations/0003_fts_batched_prefix.sql"),
    ),
    (4, include_str!("../../../migrations/0004_spent_stamps.sql")),
    (5, include_str!("../../../migrations/0005_server_links.sql")),
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: u32 = 5;

/// The kinds of message the full-text index holds: what users wrote, not system notices. The delete and
/// edit triggers of the schema name the same kinds.
const FTS_KINDS: &[chat_core::MessageKind] = &[
    chat_core::MessageKind::Message,
    chat_core::MessageKind::Action,
    chat_core::MessageKind::Notice,
];

/// Read connections kept open for reuse; more are opened when all are busy and closed when returned.
const READ_POOL: usize = 8;

/// Rows removed per retention transaction: small, so a writer waiting on the lock waits for little.
const RETENTION_CHUNK: usize = 500;

/// Chunks one retention call works through at most, per kind of row.
const RETENTION_CHUNKS_PER_CALL: usize = 20;

/// Seqs a stream query looks at per statement, and statements per call: a user who sees little of a busy
/// log gets a page with few events and a `next` to continue from, rather than one unbounded scan.
const STREAM_WINDOW: u64 = 20_000;
const STREAM_WINDOWS_PER_CALL: usize = 8;

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// WAL with `synchronous = FULL`: a commit is on disk when `append` returns, even across power loss.
    #[default]
    Full,
    /// WAL with `synchronous = NORMAL`: survives a process crash; the last commits may be lost on power loss.
    Relaxed,
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    last_seq: Seq,
}

/// The SQLite store. Open it with [`SqliteStore::open`]; it is `Send + Sync` and meant to be shared.
#[derive(Debug)]
pub struct SqliteStore {
    meta: DbMeta,
    path: PathBuf,
    /// The last committed seq, readable without waiting for a commit in progress.
    committed: AtomicU64,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
}

/// A time or a seq for SQL, stored or compared with `<` and `>`: values beyond `i64` (e.g. `u64::MAX` for
/// "everything" or "never") are capped, not wrapped into negatives, so SQL orders them as the caller does.
/// Real times and seqs are far below the cap, where this is exact.
fn bound(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// A limit for SQL: `usize` values beyond `i64` are capped, which is the same as unlimited.
fn lim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Turns SQLite's errors into the contract's: `?` cannot, since neither type belongs to this crate.
trait Db<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Database(Box::new(e)))
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10)).db()?;
    // The projection uses a few dozen distinct statements; the default cache of 16 would re-prepare them.
    conn.set_prepared_statement_cache_capacity(128);
    // A larger page cache (64 MiB) keeps the hot ends of the log, message and FTS b-trees in memory.
    conn.execute_batch("PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;")
        .db()?;
    Ok(())
}

/// Applies the migrations the database lacks, each in its own transaction with its record.
fn migrate(conn: &mut Connection, now: UnixMillis) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .db()?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .db()?;
    let found = u32::try_from(current).unwrap_or(u32::MAX);
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, script) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        tx.execute_batch(script).db()?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, bound(now)],
        )
        .db()?;
        tx.commit().db()?;
    }
    Ok(())
}

fn random_u64() -> Result<u64, StoreError> {
    getrandom::u64().map_err(|e| {
        StoreError::Io(std::io::Error::other(format!(
            "no randomness from the OS: {e}"
        )))
    })
}

/// The `meta` key of the log's format version (see [`chat_log::format`]). A database without it was written
/// before versions were recorded: version 1.
const FORMAT_KEY: &str = "format_version";

/// Reads the database's identity and its log's format version, creating both on first open.
fn load_meta(conn: &mut Connection, now: UnixMillis) -> Result<(DbMeta, u32), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let get = |key: &str| -> Result<Option<i64>, StoreError> {
        tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .db()
    };
    let found = match (get("epoch")?, get("invite_seed")?, get("created_at")?) {
        (Some(epoch), Some(seed), Some(at)) => {
            let meta = DbMeta {
                epoch: uns(epoch),
                invite_seed: uns(seed),
                created_at: uns(at),
            };
            let version = get(FORMAT_KEY)?.map_or(1, |v| u32::try_from(v).unwrap_or(u32::MAX));
            (meta, version)
        }
        _ => {
            let meta = DbMeta {
                epoch: random_u64()?,
                invite_seed: random_u64()?,
                created_at: now,
            };
            for (k, v) in [
                ("epoch", meta.epoch),
                ("invite_seed", meta.invite_seed),
                ("created_at", meta.created_at),
                (FORMAT_KEY, u64::from(FORMAT_VERSION)),
            ] {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![k, sql(v)],
                )
                .db()?;
            }
            (meta, FORMAT_VERSION)
        }
    };
    tx.commit().db()?;
    Ok(found)
}

/// Rows rewritten per statement of a format migration: the rows of one chunk are read before any is written.
const UPGRADE_CHUNK: i64 = 1_000;

/// Converts every record the database keeps in postcard from format `from` to this build's, and records the
/// new version, in one transaction: after a crash the database is wholly in the old format or the new.
fn upgrade_format(conn: &mut Connection, from: u32) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    rewrite::<Event>(&tx, from, ("events", "seq", "payload"), "event")?;
    rewrite::<chat_core::State>(&tx, from, ("snapshots", "seq", "state"), "snapshot")?;
    rewrite::<Vec<UserId>>(&tx, from, ("messages", "id", "mentions"), "mentions")?;
    rewrite::<Vec<Attachment>>(&tx, from, ("messages", "id", "attachments"), "attachments")?;
    // `space_members.roles` holds role ids alone (no struct of the core), and nonces' replies are the
    // engine's own small records, which it reads leniently: neither changes with the format.
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![FORMAT_KEY, FORMAT_VERSION],
    )
    .db()?;
    tx.commit().db()
}

/// Rewrites one postcard column of a table keyed by an integer, chunk by chunk in key order.
fn rewrite<T: serde::de::DeserializeOwned + serde::Serialize>(
    tx: &rusqlite::Transaction<'_>,
    from: u32,
    (table, key, column): (&str, &str, &str),
    what: &'static str,
) -> Result<(), StoreError> {
    let mut read = tx
        .prepare(&format!(
            "SELECT {key}, {column} FROM {table} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2"
        ))
        .db()?;
    let mut write = tx
        .prepare(&format!(
            "UPDATE {table} SET {column} = ?2 WHERE {key} = ?1"
        ))
        .db()?;
    let mut after = i64::MIN;
    loop {
        let rows = read
            .query_map(params![after, UPGRADE_CHUNK], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .db()?
            .collect::<Result<Vec<_>, _>>()
            .db()?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(());
        };
        for (k, bytes) in rows {
            let again = format::upgrade::<T>(from, &bytes).map_err(|e| corrupt(what, uns(k), e))?;
            if let Some(again) = again {
                write.execute(params![k, again]).db()?;
            }
        }
        after = last;
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`: applies missing schema migrations, refuses a database from
    /// a newer chatd with [`StoreError::TooNew`], and on creation draws a random epoch and invite seed. A log
    /// in another format than this build's is refused ([`StoreError::FormatTooOld`],
    /// [`StoreError::FormatTooNew`]); [`SqliteStore::upgrade`] converts an older one.
    pub fn open(
        path: impl AsRef<Path>,
        durability: Durability,
        now: UnixMillis,
    ) -> Result<Self, StoreError> {
        let (conn, meta, found) = Self::connect(path.as_ref(), durability, now)?;
        if format::check(found)? {
            return Err(StoreError::FormatTooOld {
                found,
                known: FORMAT_VERSION,
            });
        }
        Self::finish(path.as_ref(), conn, meta)
    }

    /// Opens the database as [`SqliteStore::open`] does, first converting a log in an older format to this
    /// build's (`chatd migrate`). Returns the version it converted from, if it converted.
    pub fn upgrade(
        path: impl AsRef<Path>,
        durability: Durability,
        now: UnixMillis,
    ) -> Result<(Self, Option<u32>), StoreError> {
        let (mut conn, meta, found) = Self::connect(path.as_ref(), durability, now)?;
        let upgraded = if format::check(found)? {
            upgrade_format(&mut conn, found)?;
            Some(found)
        } else {
            None
        };
        Ok((Self::finish(path.as_ref(), conn, meta)?, upgraded))
    }

    /// Opens the database whatever its log's format, to copy it (`chatd backup` before `chatd migrate`), and
    /// returns that format's version. Only a store of this build's [`FORMAT_VERSION`] may have its records
    /// read: an engine must be started on [`SqliteStore::open`] or [`SqliteStore::upgrade`].
    pub fn open_as_is(
        path: impl AsRef<Path>,
        durability: Durability,
        now: UnixMillis,
    ) -> Result<(Self, u32), StoreError> {
        let (conn, meta, found) = Self::connect(path.as_ref(), durability, now)?;
        Ok((Self::finish(path.as_ref(), conn, meta)?, found))
    }

    /// Opens the connection, applies the schema migrations, and reads the identity and the format version.
    fn connect(
        path: &Path,
        durability: Durability,
        now: UnixMillis,
    ) -> Result<(Connection, DbMeta, u32), StoreError> {
        let mut conn = Connection::open(path).db()?;
        configure(&conn)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .db()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "the database refused WAL mode (journal_mode is {mode})"
            ))));
        }
        conn.execute_batch(match durability {
            Durability::Full => "PRAGMA synchronous = FULL",
            Durability::Relaxed => "PRAGMA synchronous = NORMAL",
        })
        .db()?;
        // Checkpoints run on the committing connection, inside an append, and copy every page written since
        // the last one back to the database. The default (every 1000 pages, 4 MiB of log) copies the hot
        // pages of the log, message, nonce and index b-trees again and again; a longer interval copies each
        // of them once for many more commits.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 10000")
            .db()?;
        migrate(&mut conn, now)?;
        let (meta, found) = load_meta(&mut conn, now)?;
        Ok((conn, meta, found))
    }

    fn finish(path: &Path, conn: Connection, meta: DbMeta) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .db()?;
        Ok(Self {
            meta,
            path,
            committed: AtomicU64::new(uns(last)),
            writer: Mutex::new(Writer {
                conn,
                last_seq: uns(last),
            }),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the writer can only come from a bug here; the connection's open transaction,
        // if any, was rolled back when its guard dropped, so the connection is still good to use.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a pooled read connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path).db()?;
                configure(&c)?;
                c.execute_batch("PRAGMA query_only = ON").db()?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READ_POOL && conn.is_autocommit() {
            pool.push(conn);
        }
        out
    }
}

/// The columns history and search read, in the order [`message_from_row`] expects.
const MESSAGE_COLS: &str = "m.id, m.seq, m.ts, m.channel, m.space, m.author, m.kind, m.body, m.meta, \
     m.reply_to, m.thread, m.mention_everyone, m.embeds, m.pinned, m.edited_at, m.nonce, m.mentions, \
     m.attachments";

fn message_from_row(conn: &Connection, r: &Row<'_>) -> Result<StoredMessage, StoreError> {
    let id: i64 = r.get(0).db()?;
    let at = uns(id);
    let kind: String = r.get(6).db()?;
    let mentions: Vec<u8> = r.get(16).db()?;
    let attachments: Vec<u8> = r.get(17).db()?;
    let mut m = StoredMessage {
        id: id_of(id, MessageId::from_raw, "message")?,
        seq: uns(r.get(1).db()?),
        ts: uns(r.get(2).db()?),
        channel: id_of(r.get(3).db()?, ChannelId::from_raw, "message channel")?,
        space: opt_id(r.get(4).db()?, SpaceId::from_raw, "message space")?,
        author: id_of(r.get(5).db()?, UserId::from_raw, "message author")?,
        kind: chat_core::MessageKind::from_name(&kind)
            .ok_or_else(|| corrupt("message kind", at, kind.clone()))?,
        body: r.get(7).db()?,
        meta: r.get(8).db()?,
        reply_to: opt_id(r.get(9).db()?, MessageId::from_raw, "reply")?,
        thread: opt_id(r.get(10).db()?, ChannelId::from_raw, "thread")?,
        mention_everyone: r.get(11).db()?,
        embeds: r.get(12).db()?,
        pinned: r.get(13).db()?,
        edited_at: r.get::<_, Option<i64>>(14).db()?.map(uns),
        nonce: r.get(15).db()?,
        mentions: postcard::from_bytes::<Vec<UserId>>(&mentions)
            .map_err(|e| corrupt("mentions", at, e))?,
        attachments: postcard::from_bytes::<Vec<Attachment>>(&attachments)
            .map_err(|e| corrupt("attachments", at, e))?,
        reactions: BTreeMap::new(),
    };
    let mut stmt = conn
        .prepare_cached("SELECT emoji, user FROM reactions WHERE message = ?1 ORDER BY emoji, n")
        .db()?;
    let mut rows = stmt.query([id]).db()?;
    while let Some(row) = rows.next().db()? {
        let emoji: String = row.get(0).db()?;
        let user = id_of(row.get(1).db()?, UserId::from_raw, "reaction user")?;
        m.reactions.entry(emoji).or_default().push(user);
    }
    Ok(m)
}

fn messages_where(
    conn: &Connection,
    clause: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<StoredMessage>, StoreError> {
    let sql = format!("SELECT {MESSAGE_COLS} FROM messages m WHERE {clause}");
    let mut stmt = conn.prepare_cached(&sql).db()?;
    let mut rows = stmt.query(params).db()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().db()? {
        out.push(message_from_row(conn, r)?);
    }
    Ok(out)
}

/// Ends `user`'s open channel memberships that `channels` (a subquery over `channels`) selects.
fn leave_channels(
    tx: &Connection,
    seq: i64,
    user: i64,
    channels: &str,
    arg: Option<i64>,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE members SET to_seq = ?1 WHERE user = ?2 AND to_seq IS NULL AND channel IN ({channels})"
    );
    let mut stmt = tx.prepare_cached(&sql).db()?;
    match arg {
        Some(a) => stmt.execute(params![seq, user, a]).db()?,
        None => stmt.execute(params![seq, user]).db()?,
    };
    Ok(())
}

/// Removes a channel with its threads: memberships end, its messages leave history.
fn channel_gone(tx: &Connection, seq: i64, channel: i64) -> Result<(), StoreError> {
    let threads: Vec<i64> = tx
        .prepare_cached("SELECT id FROM channels WHERE kind = 'thread' AND parent = ?1")
        .db()?
        .query_map([channel], |r| r.get(0))
        .db()?
        .collect::<Result<_, _>>()
        .db()?;
    for t in threads {
        channel_gone(tx, seq, t)?;
    }
    tx.prepare_cached("UPDATE channels SET deleted_seq = ?1 WHERE id = ?2 AND deleted_seq IS NULL")
        .db()?
        .execute(params![seq, channel])
        .db()?;
    tx.prepare_cached("UPDATE members SET to_seq = ?1 WHERE channel = ?2 AND to_seq IS NULL")
        .db()?
        .execute(params![seq, channel])
        .db()?;
    tx.prepare_cached(
        "DELETE FROM reactions WHERE message IN (SELECT id FROM messages WHERE channel = ?1)",
    )
    .db()?
    .execute([channel])
    .db()?;
    tx.prepare_cached("DELETE FROM messages WHERE channel = ?1")
        .db()?
        .execute([channel])
        .db()?;
    Ok(())
}

fn space_join(tx: &Connection, seq: i64, space: i64, user: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO space_members (space, user, from_seq)
         SELECT ?1, ?2, ?3 WHERE NOT EXISTS (
             SELECT 1 FROM space_members WHERE space = ?1 AND user = ?2 AND to_seq IS NULL)
         ON CONFLICT (space, user, from_seq) DO UPDATE SET to_seq = NULL",
    )
    .db()?
    .execute(params![space, user, seq])
    .db()?;
    Ok(())
}

fn target_cols(t: OverwriteTarget) -> (i64, i64) {
    match t {
        OverwriteTarget::Role(r) => (0, sql(r.get())),
        OverwriteTarget::Member(u) => (1, sql(u.get())),
    }
}

/// Row writes an append defers to the end of its batch, where each is done once rather than per event.
#[derive(Default)]
struct Deferred {
    /// Each channel's newest message in the batch: `channels.last_message` is written once per channel.
    last_message: BTreeMap<i64, i64>,
}

/// Applies one projected effect inside the append transaction.
fn apply(
    tx: &Connection,
    ev: &Event,
    effect: Effect<'_>,
    deferred: &mut Deferred,
) -> Result<(), StoreError> {
    let seq = bound(ev.seq);
    match effect {
        Effect::User {
            id,
            nick,
            password_hash,
            bot,
            system,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO users (id, nick, password_hash, bot, system, released, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
            ).db()?
            .execute(params![sql(id.get()), nick, password_hash, bot, system, bound(ev.ts)]).db()?;
        }
        Effect::NetworkJoin(user) => {
            let network: Option<i64> = tx
                .prepare_cached(
                    "SELECT id FROM spaces WHERE network = 1 AND deleted_seq IS NULL ORDER BY id LIMIT 1",
                ).db()?
                .query_row([], |r| r.get(0))
                .optional().db()?;
            if let Some(n) = network {
                space_join(tx, seq, n, sql(user.get()))?;
            }
        }
        Effect::SpaceJoinAll(space) => {
            let users: Vec<i64> = tx
                .prepare_cached("SELECT id FROM users WHERE released = 0")
                .db()?
                .query_map([], |r| r.get(0))
                .db()?
                .collect::<Result<_, _>>()
                .db()?;
            for u in users {
                space_join(tx, seq, sql(space.get()), u)?;
            }
        }
        Effect::Nick(user, nick) => {
            tx.prepare_cached("UPDATE users SET nick = ?1 WHERE id = ?2")
                .db()?
                .execute(params![nick, sql(user.get())])
                .db()?;
        }
        Effect::Profile {
            user,
            display_name,
            bio,
            avatar_url,
        } => {
            tx.prepare_cached(
                "UPDATE users SET display_name = ?1, bio = ?2, avatar_url = ?3 WHERE id = ?4",
            )
            .db()?
            .execute(params![display_name, bio, avatar_url, sql(user.get())])
            .db()?;
        }
        Effect::Password(user, hash) => {
            tx.prepare_cached("UPDATE users SET password_hash = ?1 WHERE id = ?2")
                .db()?
                .execute(params![hash, sql(user.get())])
                .db()?;
        }
        Effect::Away(user, message) => {
            tx.prepare_cached("UPDATE users SET away = ?1 WHERE id = ?2")
                .db()?
                .execute(params![message, sql(user.get())])
                .db()?;
        }
        Effect::Client {
            id,
            user,
            name,
            token_hash,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO clients (id, user, name, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .db()?
            .execute(params![
                sql(id.get()),
                sql(user.get()),
                name,
                &token_hash[..],
                bound(ev.ts)
            ])
            .db()?;
        }
        Effect::ClientGone(id) => {
            tx.prepare_cached("DELETE FROM clients WHERE id = ?1")
                .db()?
                .execute([sql(id.get())])
                .db()?;
        }
        Effect::Quit { user, released } => {
            let u = sql(user.get());
            if released {
                leave_channels(
                    tx,
                    seq,
                    u,
                    "SELECT id FROM channels WHERE kind != 'dm'",
                    None,
                )?;
                tx.prepare_cached(
                    "UPDATE space_members SET to_seq = ?1 WHERE user = ?2 AND to_seq IS NULL",
                )
                .db()?
                .execute(params![seq, u])
                .db()?;
                tx.prepare_cached("UPDATE users SET released = 1, away = NULL WHERE id = ?1")
                    .db()?
                    .execute([u])
                    .db()?;
                tx.prepare_cached("DELETE FROM read_states WHERE user = ?1")
                    .db()?
                    .execute([u])
                    .db()?;
            } else {
                leave_channels(
                    tx,
                    seq,
                    u,
                    "SELECT id FROM channels WHERE space = (SELECT id FROM spaces
                         WHERE network = 1 AND deleted_seq IS NULL ORDER BY id LIMIT 1)",
                    None,
                )?;
            }
        }
        Effect::Read {
            user,
            channel,
            message,
            mentions,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO read_states (user, channel, last_read, mention_count)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .db()?
            .execute(params![
                sql(user.get()),
                sql(channel.get()),
                sql(message.get()),
                mentions
            ])
            .db()?;
        }
        Effect::Space(info) => {
            tx.prepare_cached(
                "INSERT INTO spaces (id, name, description, icon_url, owner, public, network, created_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET name = ?2, description = ?3, icon_url = ?4, owner = ?5,
                     public = ?6, network = ?7",
            ).db()?
            .execute(params![
                sql(info.id.get()),
                info.name,
                info.description,
                info.icon_url,
                sql(info.owner.get()),
                info.public,
                info.network,
                seq
            ]).db()?;
        }
        Effect::SpaceGone(space) => {
            let s = sql(space.get());
            let channels: Vec<i64> = tx
                .prepare_cached("SELECT id FROM channels WHERE space = ?1")
                .db()?
                .query_map([s], |r| r.get(0))
                .db()?
                .collect::<Result<_, _>>()
                .db()?;
            for c in channels {
                channel_gone(tx, seq, c)?;
            }
            tx.prepare_cached(
                "UPDATE space_members SET to_seq = ?1 WHERE space = ?2 AND to_seq IS NULL",
            )
            .db()?
            .execute(params![seq, s])
            .db()?;
            tx.prepare_cached("UPDATE spaces SET deleted_seq = ?1 WHERE id = ?2")
                .db()?
                .execute(params![seq, s])
                .db()?;
            tx.prepare_cached("DELETE FROM invites WHERE space = ?1")
                .db()?
                .execute([s])
                .db()?;
        }
        Effect::SpaceJoin(space, user) => {
            space_join(tx, seq, sql(space.get()), sql(user.get()))?;
        }
        Effect::SpaceLeave(space, user) => {
            let (s, u) = (sql(space.get()), sql(user.get()));
            tx.prepare_cached(
                "UPDATE space_members SET to_seq = ?1
                 WHERE space = ?2 AND user = ?3 AND to_seq IS NULL",
            )
            .db()?
            .execute(params![seq, s, u])
            .db()?;
            leave_channels(
                tx,
                seq,
                u,
                "SELECT id FROM channels WHERE space = ?3",
                Some(s),
            )?;
        }
        Effect::SpaceBan {
            space,
            user,
            reason,
            on,
        } => {
            let (s, u) = (sql(space.get()), sql(user.get()));
            if on {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO space_bans (space, user, reason) VALUES (?1, ?2, ?3)",
                )
                .db()?
                .execute(params![s, u, reason])
                .db()?;
            } else {
                tx.prepare_cached("DELETE FROM space_bans WHERE space = ?1 AND user = ?2")
                    .db()?
                    .execute(params![s, u])
                    .db()?;
            }
        }
        Effect::MemberUpdate {
            space,
            user,
            roles,
            nick,
        } => {
            let blob = encode(&roles, "roles", ev.seq)?;
            tx.prepare_cached(
                "UPDATE space_members SET roles = ?1, nick = ?2
                 WHERE space = ?3 AND user = ?4 AND to_seq IS NULL",
            )
            .db()?
            .execute(params![blob, nick, sql(space.get()), sql(user.get())])
            .db()?;
        }
        Effect::Role(space, role) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO roles
                     (id, space, name, permissions, color, hoist, mentionable, position)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .db()?
            .execute(params![
                sql(role.id.get()),
                sql(space.get()),
                role.name,
                sql(role.permissions.bits()),
                role.color,
                role.hoist,
                role.mentionable,
                role.position
            ])
            .db()?;
        }
        Effect::RoleGone(role) => {
            let r = sql(role.get());
            tx.prepare_cached("DELETE FROM roles WHERE id = ?1")
                .db()?
                .execute([r])
                .db()?;
            tx.prepare_cached("DELETE FROM overwrites WHERE target_kind = 0 AND target = ?1")
                .db()?
                .execute([r])
                .db()?;
        }
        Effect::Channel { info, created } => {
            let kind = info.kind.name();
            let c = sql(info.id.get());
            let topic = info.topic.as_ref();
            if created {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO channels (id, space, kind, parent, name, topic, topic_by,
                         topic_at, position, slowmode_secs, owner, starter, created_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                ).db()?
                .execute(params![
                    c,
                    info.space.map(|s| sql(s.get())),
                    kind,
                    info.parent.map(|p| sql(p.get())),
                    info.name,
                    topic.map(|t| t.text.as_str()),
                    topic.map(|t| sql(t.by.get())),
                    topic.map(|t| bound(t.at)),
                    info.position,
                    info.slowmode_secs,
                    info.owner.map(|o| sql(o.get())),
                    info.starter.map(|s| sql(s.get())),
                    seq
                ]).db()?;
                for (t, allow, deny) in &info.overwrites {
                    let (tk, tv) = target_cols(*t);
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO overwrites (channel, target_kind, target, allow, deny)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    ).db()?
                    .execute(params![c, tk, tv, sql(allow.bits()), sql(deny.bits())]).db()?;
                }
            } else {
                tx.prepare_cached(
                    "UPDATE channels SET name = ?2, topic = ?3, topic_by = ?4, topic_at = ?5,
                         position = ?6, parent = ?7, slowmode_secs = ?8, owner = ?9
                     WHERE id = ?1",
                )
                .db()?
                .execute(params![
                    c,
                    info.name,
                    topic.map(|t| t.text.as_str()),
                    topic.map(|t| sql(t.by.get())),
                    topic.map(|t| bound(t.at)),
                    info.position,
                    info.parent.map(|p| sql(p.get())),
                    info.slowmode_secs,
                    info.owner.map(|o| sql(o.get())),
                ])
                .db()?;
            }
        }
        Effect::ChannelGone(channel) => channel_gone(tx, seq, sql(channel.get()))?,
        Effect::ChannelJoin {
            channel,
            user,
            op,
            voice,
        } => {
            tx.prepare_cached(
                "INSERT INTO members (channel, user, from_seq, op, voice)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS (
                     SELECT 1 FROM members WHERE channel = ?1 AND user = ?2 AND to_seq IS NULL)
                 ON CONFLICT (channel, user, from_seq) DO UPDATE SET to_seq = NULL",
            )
            .db()?
            .execute(params![sql(channel.get()), sql(user.get()), seq, op, voice])
            .db()?;
        }
        Effect::ChannelLeave(channel, user) => {
            tx.prepare_cached(
                "UPDATE members SET to_seq = ?1 WHERE channel = ?2 AND user = ?3 AND to_seq IS NULL",
            ).db()?
            .execute(params![seq, sql(channel.get()), sql(user.get())]).db()?;
        }
        Effect::Overwrite {
            channel,
            target,
            value,
        } => {
            let (tk, tv) = target_cols(target);
            match value {
                Some((allow, deny)) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO overwrites (channel, target_kind, target, allow, deny)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    ).db()?
                    .execute(params![
                        sql(channel.get()),
                        tk,
                        tv,
                        sql(allow.bits()),
                        sql(deny.bits())
                    ]).db()?;
                }
                None => {
                    tx.prepare_cached(
                        "DELETE FROM overwrites WHERE channel = ?1 AND target_kind = ?2 AND target = ?3",
                    ).db()?
                    .execute(params![sql(channel.get()), tk, tv]).db()?;
                }
            }
        }
        Effect::Topic(channel, topic) => {
            tx.prepare_cached(
                "UPDATE channels SET topic = ?1, topic_by = ?2, topic_at = ?3 WHERE id = ?4",
            )
            .db()?
            .execute(params![
                topic.map(|t| t.text.as_str()),
                topic.map(|t| sql(t.by.get())),
                topic.map(|t| bound(t.at)),
                sql(channel.get())
            ])
            .db()?;
        }
        Effect::MemberMode {
            channel,
            user,
            op,
            voice,
        } => {
            tx.prepare_cached(
                "UPDATE members SET op = COALESCE(?1, op), voice = COALESCE(?2, voice)
                 WHERE channel = ?3 AND user = ?4 AND to_seq IS NULL",
            )
            .db()?
            .execute(params![op, voice, sql(channel.get()), sql(user.get())])
            .db()?;
        }
        Effect::Message(m) => {
            let c = sql(m.channel.get());
            let id = sql(m.id.get());
            let inserted = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (id, seq, ts, channel, space, author, kind, body, meta,
                     reply_to, thread, mention_everyone, embeds, pinned, edited_at, nonce, mentions,
                     attachments)
                 VALUES (?1, ?2, ?3, ?4, (SELECT space FROM channels WHERE id = ?4), ?5, ?6, ?7, ?8,
                     ?9, ?10, ?11, ?12, 0, NULL, ?13, ?14, ?15)",
            ).db()?
            .execute(params![
                id,
                bound(m.seq),
                bound(m.ts),
                c,
                sql(m.author.get()),
                m.kind.name(),
                m.body,
                m.meta,
                m.reply_to.map(|r| sql(r.get())),
                m.thread.map(|t| sql(t.get())),
                m.mention_everyone,
                m.embeds,
                m.nonce,
                encode(&m.mentions, "mentions", ev.seq)?,
                encode(&m.attachments, "attachments", ev.seq)?,
            ]).db()?;
            // The index is kept here rather than by a trigger (migration 3 says why). It blanks the two
            // control characters snippets use as highlight markers, as the view the index reads does.
            if inserted == 1 && FTS_KINDS.contains(&m.kind) {
                tx.prepare_cached(
                    "INSERT INTO messages_fts (rowid, body)
                     VALUES (?1, replace(replace(?2, char(2), ' '), char(3), ' '))",
                )
                .db()?
                .execute(params![id, m.body])
                .db()?;
            }
            deferred.last_message.insert(c, id);
        }
        Effect::Edit {
            id,
            body,
            meta,
            mentions,
            edited_at,
            embeds,
        } => {
            tx.prepare_cached(
                "UPDATE messages SET body = ?1, meta = COALESCE(?2, meta), mentions = ?3, edited_at = ?4,
                 embeds = COALESCE(?6, embeds) WHERE id = ?5",
            ).db()?
            .execute(params![
                body,
                meta,
                encode(&mentions, "mentions", ev.seq)?,
                bound(edited_at),
                sql(id.get()),
                embeds
            ]).db()?;
        }
        Effect::Delete(id) => {
            let m = sql(id.get());
            tx.prepare_cached("DELETE FROM reactions WHERE message = ?1")
                .db()?
                .execute([m])
                .db()?;
            tx.prepare_cached("DELETE FROM messages WHERE id = ?1")
                .db()?
                .execute([m])
                .db()?;
        }
        Effect::React {
            id,
            user,
            emoji,
            on,
        } => {
            if on {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO reactions (message, emoji, user, n)
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
                )
                .db()?
                .execute(params![sql(id.get()), emoji, sql(user.get()), seq])
                .db()?;
            } else {
                tx.prepare_cached(
                    "DELETE FROM reactions WHERE message = ?1 AND emoji = ?2 AND user = ?3",
                )
                .db()?
                .execute(params![sql(id.get()), emoji, sql(user.get())])
                .db()?;
            }
        }
        Effect::Pin(id, on) => {
            tx.prepare_cached("UPDATE messages SET pinned = ?1 WHERE id = ?2")
                .db()?
                .execute(params![on, sql(id.get())])
                .db()?;
        }
        Effect::Thread { starter, thread } => {
            tx.prepare_cached("UPDATE messages SET thread = ?1 WHERE id = ?2")
                .db()?
                .execute(params![sql(thread.get()), sql(starter.get())])
                .db()?;
        }
        Effect::Invite(inv) => {
            let (space, channel) = match inv.target {
                chat_core::InviteTarget::Space(s, c) => (Some(s.get()), c.map(|c| c.get())),
                chat_core::InviteTarget::Channel(c) => (None, Some(c.get())),
            };
            tx.prepare_cached(
                "INSERT OR REPLACE INTO invites
                     (code, id, space, channel, creator, max_uses, uses, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .db()?
            .execute(params![
                inv.code,
                sql(inv.id.get()),
                space.map(sql),
                channel.map(sql),
                sql(inv.creator.get()),
                inv.max_uses,
                inv.uses,
                inv.expires_at.map(bound),
                bound(inv.created_at)
            ])
            .db()?;
        }
        Effect::InviteUsed(code) => {
            tx.prepare_cached("UPDATE invites SET uses = uses + 1 WHERE code = ?1")
                .db()?
                .execute([code])
                .db()?;
        }
        Effect::InviteGone(code) => {
            tx.prepare_cached("DELETE FROM invites WHERE code = ?1")
                .db()?
                .execute([code])
                .db()?;
        }
    }
    Ok(())
}

/// The channel whose members receive `channel`'s events: a thread's parent, else the channel itself.
fn membership_channel(tx: &Connection, channel: ChannelId) -> Result<i64, StoreError> {
    let c = sql(channel.get());
    let parent: Option<Option<i64>> = tx
        .prepare_cached("SELECT parent FROM channels WHERE id = ?1 AND kind = 'thread'")
        .db()?
        .query_row([c], |r| r.get(0))
        .optional()
        .db()?;
    Ok(parent.flatten().unwrap_or(c))
}

fn append_event(
    tx: &Connection,
    ev: &Event,
    at: Seq,
    deferred: &mut Deferred,
) -> Result<(), StoreError> {
    for effect in project::effects(ev) {
        apply(tx, ev, effect, deferred)?;
    }
    // Resolved after the event's own effects: a new thread's first event names the thread.
    let cols = project::audience_cols(&ev.audience);
    let channel = match cols.kind {
        AUD_CHANNEL | AUD_CHANNEL_AND => cols
            .channel
            .map(|c| membership_channel(tx, c))
            .transpose()?,
        _ => None,
    };
    let payload = encode(ev, "event", ev.seq)?;
    tx.prepare_cached(
        "INSERT INTO events (seq, ts, kind, aud, aud_at, aud_channel, aud_space, aud_user, payload)
         VALUES (?1, ?2, ?3, ?4, ?9, ?5, ?6, ?7, ?8)",
    )
    .db()?
    .execute(params![
        bound(ev.seq),
        bound(ev.ts),
        project::kind_name(&ev.kind),
        cols.kind,
        channel,
        cols.space.map(|s| sql(s.get())),
        cols.user.map(|u| sql(u.get())),
        payload,
        bound(at)
    ])
    .db()?;
    Ok(())
}

fn save_cursors_in(tx: &Connection, cursors: &[(ClientId, Seq)]) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO cursors (client, seq) VALUES (?1, ?2)
         ON CONFLICT (client) DO UPDATE SET seq = ?2",
        )
        .db()?;
    for (c, s) in cursors {
        stmt.execute(params![sql(c.get()), bound(*s)]).db()?;
    }
    Ok(())
}

/// The visible events of one user's stream in `(lo, hi]`, at most `limit` rows from SQL (rows of `users`
/// audiences are filtered after decoding). Returns the rows' events that pass, and the last seq returned.
fn stream_window(
    conn: &Connection,
    user: UserId,
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> Result<(Vec<Event>, Option<Seq>, usize), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT e.seq, e.aud, e.payload FROM events e
         WHERE e.seq > ?1 AND e.seq <= ?2 AND (
             (e.aud IN (1, 4, 6) AND e.aud_user = ?3)
             OR e.aud = 2
             OR (e.aud IN (3, 4) AND EXISTS (SELECT 1 FROM members m
                 WHERE m.channel = e.aud_channel AND m.user = ?3 AND m.from_seq <= e.aud_at
                   AND (m.to_seq IS NULL OR m.to_seq > e.aud_at)))
             OR (e.aud IN (5, 6) AND EXISTS (SELECT 1 FROM space_members m
                 WHERE m.space = e.aud_space AND m.user = ?3 AND m.from_seq <= e.aud_at
                   AND (m.to_seq IS NULL OR m.to_seq > e.aud_at))))
         ORDER BY e.seq LIMIT ?4",
        )
        .db()?;
    let mut rows = stmt
        .query(params![bound(lo), bound(hi), sql(user.get()), lim(limit)])
        .db()?;
    let mut out = Vec::new();
    let mut last = None;
    let mut n = 0;
    while let Some(r) = rows.next().db()? {
        let seq: i64 = r.get(0).db()?;
        let aud: u8 = r.get(1).db()?;
        let payload: Vec<u8> = r.get(2).db()?;
        n += 1;
        last = Some(uns(seq));
        let ev = decode_event(seq, &payload)?;
        let visible = aud != AUD_USERS
            || matches!(&ev.audience, chat_core::Audience::Users(us) if us.binary_search(&user).is_ok());
        if visible {
            out.push(ev);
        }
    }
    Ok((out, last, n))
}

impl Store for SqliteStore {
    fn meta(&self) -> DbMeta {
        self.meta
    }

    fn last_seq(&self) -> Result<Seq, StoreError> {
        Ok(self.committed.load(Ordering::Acquire))
    }

    fn first_seq(&self) -> Result<Option<Seq>, StoreError> {
        self.read(|c| {
            let v: Option<i64> = c
                .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
                .db()?;
            Ok(v.map(uns))
        })
    }

    fn append(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let mut guard = self.writer();
        let w = &mut *guard;
        // The order check comes first so that a batch that does not continue the log touches nothing.
        let mut last = w.last_seq;
        for ev in batch.events {
            if ev.seq != last + 1 || !ev.is_durable() {
                return Err(StoreError::OutOfOrder { last, got: ev.seq });
            }
            last = ev.seq;
        }
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let points = project::audience_points(batch.events, batch.command_ends);
        let mut deferred = Deferred::default();
        for (ev, at) in batch.events.iter().zip(points) {
            append_event(&tx, ev, at, &mut deferred)?;
        }
        {
            let mut stmt = tx
                .prepare_cached("UPDATE channels SET last_message = ?1 WHERE id = ?2")
                .db()?;
            for (channel, message) in deferred.last_message {
                stmt.execute(params![message, channel]).db()?;
            }
        }
        save_cursors_in(&tx, batch.cursors)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO nonces (user, nonce, at, reply) VALUES (?1, ?2, ?3, ?4)",
            ).db()?;
            for n in batch.nonces {
                stmt.execute(params![sql(n.user.get()), n.nonce, bound(n.at), n.reply])
                    .db()?;
            }
        }
        tx.commit().db()?;
        w.last_seq = last;
        self.committed.store(last, Ordering::Release);
        Ok(())
    }

    fn events_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .db()?;
            let mut rows = stmt.query(params![bound(after), lim(limit)]).db()?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().db()? {
                let seq: i64 = r.get(0).db()?;
                let payload: Vec<u8> = r.get(1).db()?;
                out.push(decode_event(seq, &payload)?);
            }
            Ok(out)
        })
    }

    fn user_stream(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        self.read(|c| {
            // One read transaction: the bounds and the rows come from the same committed state.
            let tx = c.unchecked_transaction().db()?;
            let (first, last): (Option<i64>, Option<i64>) = tx
                .query_row("SELECT MIN(seq), MAX(seq) FROM events", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .db()?;
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
                let (found, last_row, rows) = stream_window(&tx, user, cursor, hi, want)?;
                events.extend(found);
                cursor = match last_row {
                    Some(s) if rows == want => s,
                    _ => hi,
                };
                windows += 1;
            }
            tx.finish().db()?;
            Ok(StreamPage {
                events,
                next: cursor,
                reset: false,
            })
        })
    }

    fn save_snapshot(&self, seq: Seq, state: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writer();
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        // Start-up reads only the newest snapshot; older ones are dead weight.
        tx.execute("DELETE FROM snapshots WHERE seq <= ?1", [bound(seq)])
            .db()?;
        tx.execute(
            "INSERT INTO snapshots (seq, state) VALUES (?1, ?2)",
            params![bound(seq), state],
        )
        .db()?;
        tx.commit().db()?;
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT seq, state FROM snapshots ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((uns(r.get(0)?), r.get(1)?)),
            )
            .optional()
            .db()
        })
    }

    fn save_cursors(&self, cursors: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        let mut w = self.writer();
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        save_cursors_in(&tx, cursors)?;
        tx.commit().db()?;
        Ok(())
    }

    fn cursors(&self) -> Result<Vec<(ClientId, Seq)>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT client, seq FROM cursors ORDER BY client")
                .db()?;
            let mut rows = stmt.query([]).db()?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().db()? {
                out.push((
                    id_of(r.get(0).db()?, ClientId::from_raw, "cursor client")?,
                    uns(r.get(1).db()?),
                ));
            }
            Ok(out)
        })
    }

    fn nonce(&self, user: UserId, nonce: &str) -> Result<Option<NonceRecord>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT at, reply FROM nonces WHERE user = ?1 AND nonce = ?2")
                .db()?
                .query_row(params![sql(user.get()), nonce], |r| {
                    Ok(NonceRecord {
                        user,
                        nonce: nonce.to_owned(),
                        at: uns(r.get(0)?),
                        reply: r.get(1)?,
                    })
                })
                .optional()
                .db()
        })
    }

    fn spend_stamp(
        &self,
        key: [u8; 32],
        expires: UnixMillis,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut w = self.writer();
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        tx.execute("DELETE FROM spent_stamps WHERE expires <= ?1", [bound(now)])
            .db()?;
        let added = tx
            .execute(
                "INSERT INTO spent_stamps (key, expires) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![&key[..], bound(expires)],
            )
            .db()?;
        tx.commit().db()?;
        Ok(added == 1)
    }

    fn unspend_stamp(&self, key: [u8; 32]) -> Result<(), StoreError> {
        let w = self.writer();
        w.conn
            .execute("DELETE FROM spent_stamps WHERE key = ?1", [&key[..]])
            .db()?;
        Ok(())
    }

    fn links(&self) -> Result<Vec<ServerLink>, StoreError> {
        let w = self.writer();
        let mut stmt = w
            .conn
            .prepare_cached(
                "SELECT name, url, key, added_at, cursor FROM server_links ORDER BY name",
            )
            .db()?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .db()?;
        let mut links = Vec::new();
        for row in rows {
            let (name, url, key, added_at, cursor) = row.db()?;
            links.push(ServerLink {
                name,
                url,
                key,
                added_at: uns(added_at),
                cursor: uns(cursor),
            });
        }
        Ok(links)
    }

    fn add_link(&self, link: &ServerLink) -> Result<bool, StoreError> {
        let w = self.writer();
        let added = w
            .conn
            .execute(
                "INSERT INTO server_links (name, url, key, added_at, cursor) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (name) DO NOTHING",
                params![
                    link.name,
                    link.url,
                    link.key,
                    bound(link.added_at),
                    bound(link.cursor)
                ],
            )
            .db()?;
        Ok(added == 1)
    }

    fn remove_link(&self, name: &str) -> Result<bool, StoreError> {
        let w = self.writer();
        let removed = w
            .conn
            .execute("DELETE FROM server_links WHERE name = ?1", [name])
            .db()?;
        Ok(removed == 1)
    }

    fn save_link_cursor(&self, name: &str, cursor: Seq) -> Result<bool, StoreError> {
        let w = self.writer();
        let changed = w
            .conn
            .execute(
                "UPDATE server_links SET cursor = ?2 WHERE name = ?1",
                params![name, bound(cursor)],
            )
            .db()?;
        Ok(changed == 1)
    }

    fn nonces_since(&self, since: UnixMillis) -> Result<Vec<NonceRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT user, nonce, at, reply FROM nonces WHERE at >= ?1")
                .db()?;
            let mut rows = stmt.query([bound(since)]).db()?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().db()? {
                out.push(NonceRecord {
                    user: id_of(r.get(0).db()?, UserId::from_raw, "nonce user")?,
                    nonce: r.get(1).db()?,
                    at: uns(r.get(2).db()?),
                    reply: r.get(3).db()?,
                });
            }
            Ok(out)
        })
    }

    fn history(&self, q: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = q.limit.clamp(1, 100);
        let c = sql(q.channel.get());
        self.read(|conn| {
            let newest_before =
                |bound: Option<i64>, n: usize| -> Result<Vec<StoredMessage>, StoreError> {
                    let mut v = messages_where(
                        conn,
                        "m.channel = ?1 AND (?2 IS NULL OR m.id < ?2) ORDER BY m.id DESC LIMIT ?3",
                        &[&c, &bound, &lim(n)],
                    )?;
                    v.reverse();
                    Ok(v)
                };
            let oldest_from = |bound: i64, inclusive: bool, n: usize| {
                let clause = if inclusive {
                    "m.channel = ?1 AND m.id >= ?2 ORDER BY m.id LIMIT ?3"
                } else {
                    "m.channel = ?1 AND m.id > ?2 ORDER BY m.id LIMIT ?3"
                };
                messages_where(conn, clause, &[&c, &bound, &lim(n)])
            };
            if let Some(before) = q.before {
                newest_before(Some(bound(before.get())), limit)
            } else if let Some(after) = q.after {
                oldest_from(bound(after.get()), false, limit)
            } else if let Some(around) = q.around {
                let mut out = if limit / 2 > 0 {
                    newest_before(Some(bound(around.get())), limit / 2)?
                } else {
                    Vec::new()
                };
                let room = limit - out.len();
                out.extend(oldest_from(bound(around.get()), true, room)?);
                Ok(out)
            } else {
                newest_before(None, limit)
            }
        })
    }

    fn message(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        self.read(|c| Ok(messages_where(c, "m.id = ?1", &[&sql(id.get())])?.pop()))
    }

    fn attachments(&self, channel: ChannelId) -> Result<Vec<Attachment>, StoreError> {
        self.read(|c| {
            // An empty list encodes as the one byte 0x00; only messages with files are decoded.
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, attachments FROM messages WHERE channel = ?1 AND attachments != x'00'",
                )
                .db()?;
            let rows = stmt
                .query_map([sql(channel.get())], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .db()?
                .collect::<Result<Vec<_>, _>>()
                .db()?;
            let mut out = Vec::new();
            for (id, bytes) in rows {
                out.extend(
                    postcard::from_bytes::<Vec<Attachment>>(&bytes)
                        .map_err(|e| corrupt("attachments", uns(id), e))?,
                );
            }
            Ok(out)
        })
    }

    fn search(&self, q: &SearchQuery) -> Result<Vec<SearchHit>, StoreError> {
        let terms = text::parse(&q.text);
        if terms.is_empty() || q.channels.is_empty() {
            return Ok(Vec::new());
        }
        let expr = text::fts_query(&terms);
        let channels = format!(
            "[{}]",
            q.channels
                .iter()
                .map(|c| sql(c.get()).to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        self.read(|conn| {
            let sql_text = format!(
                "SELECT {MESSAGE_COLS},
                     snippet(messages_fts, 0, char(2), char(3), '…', 24)
                 FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid
                 WHERE messages_fts MATCH ?1
                   AND m.channel IN (SELECT value FROM json_each(?2))
                   AND (?3 IS NULL OR m.author = ?3)
                   AND (?4 IS NULL OR m.channel = ?4)
                   AND (?5 IS NULL OR m.space = ?5)
                   AND (?6 IS NULL OR m.id < ?6)
                   AND (?7 IS NULL OR m.id > ?7)
                 ORDER BY messages_fts.rowid DESC LIMIT ?8 OFFSET ?9"
            );
            let mut stmt = conn.prepare_cached(&sql_text).db()?;
            let mut rows = stmt
                .query(params![
                    expr,
                    channels,
                    q.author.map(|a| sql(a.get())),
                    q.channel.map(|c| sql(c.get())),
                    q.space.map(|s| sql(s.get())),
                    q.before.map(|b| bound(b.get())),
                    q.after.map(|a| bound(a.get())),
                    lim(q.limit.clamp(1, 100)),
                    lim(q.offset),
                ])
                .db()?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().db()? {
                let message = message_from_row(conn, r)?;
                out.push(SearchHit {
                    message,
                    snippet: r.get(18).db()?,
                });
            }
            Ok(out)
        })
    }

    fn enforce_retention(
        &self,
        max_history: usize,
        events_before: UnixMillis,
        nonces_before: UnixMillis,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        // What to trim is found on a reader, so the writer is held only for the deletions themselves.
        let over: Vec<(i64, i64)> = self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT channel, COUNT(*) - ?1 FROM messages GROUP BY channel HAVING COUNT(*) > ?1",
            ).db()?;
            let rows = stmt
                .query_map([lim(max_history)], |r| Ok((r.get(0)?, r.get(1)?)))
                .db()?
                .collect::<Result<Vec<(i64, i64)>, _>>()
                .db()?;
            Ok(rows)
        })?;
        let mut chunks = 0;
        'channels: for (channel, mut excess) in over {
            while excess > 0 {
                if chunks >= RETENTION_CHUNKS_PER_CALL {
                    break 'channels;
                }
                let n = excess.min(lim(RETENTION_CHUNK));
                let mut w = self.writer();
                let tx = w
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .db()?;
                // The files of what goes are read in the same transaction, so the report names exactly
                // the messages removed.
                let files: Vec<(i64, Vec<u8>)> = tx
                    .prepare_cached(
                        "SELECT id, attachments FROM
                             (SELECT id, attachments FROM messages WHERE channel = ?1 ORDER BY id LIMIT ?2)
                         WHERE attachments != x'00'",
                    )
                    .db()?
                    .query_map(params![channel, n], |r| Ok((r.get(0)?, r.get(1)?)))
                    .db()?
                    .collect::<Result<_, _>>()
                    .db()?;
                let mut gone = Vec::new();
                for (id, bytes) in files {
                    let c = id_of(channel, ChannelId::from_raw, "message channel")?;
                    let list = postcard::from_bytes::<Vec<Attachment>>(&bytes)
                        .map_err(|e| corrupt("attachments", uns(id), e))?;
                    gone.extend(list.into_iter().map(|a| (c, a)));
                }
                tx.execute(
                    "DELETE FROM reactions WHERE message IN
                         (SELECT id FROM messages WHERE channel = ?1 ORDER BY id LIMIT ?2)",
                    params![channel, n],
                )
                .db()?;
                let removed = tx
                    .execute(
                        "DELETE FROM messages WHERE id IN
                         (SELECT id FROM messages WHERE channel = ?1 ORDER BY id LIMIT ?2)",
                        params![channel, n],
                    )
                    .db()?;
                tx.commit().db()?;
                report.messages += removed as u64;
                report.attachments.extend(gone);
                excess -= n;
                chunks += 1;
                if removed == 0 {
                    break;
                }
            }
        }
        // Events go from the front of the log only, so the retained log stays a contiguous range: up to the
        // first event at or after the cutoff time, and never the newest snapshot's seq or later.
        let log_end: Option<i64> = self.read(|c| {
            let snap: Option<i64> = c
                .query_row("SELECT MAX(seq) FROM snapshots", [], |r| r.get(0))
                .db()?;
            let Some(snap) = snap else {
                return Ok(None);
            };
            let young: Option<i64> = c
                .query_row(
                    "SELECT MIN(seq) FROM events WHERE ts >= ?1",
                    [bound(events_before)],
                    |r| r.get(0),
                )
                .db()?;
            Ok(Some(young.map_or(snap, |y| y.min(snap))))
        })?;
        if let Some(log_end) = log_end {
            for _ in 0..RETENTION_CHUNKS_PER_CALL {
                let mut w = self.writer();
                let tx = w
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .db()?;
                let removed = tx
                    .execute(
                        "DELETE FROM events WHERE seq IN
                         (SELECT seq FROM events WHERE seq < ?1 ORDER BY seq LIMIT ?2)",
                        params![log_end, lim(RETENTION_CHUNK)],
                    )
                    .db()?;
                tx.commit().db()?;
                report.events += removed as u64;
                if removed < RETENTION_CHUNK {
                    break;
                }
            }
        }
        for _ in 0..RETENTION_CHUNKS_PER_CALL {
            let mut w = self.writer();
            let tx = w
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .db()?;
            let removed = tx
                .execute(
                    "DELETE FROM nonces WHERE (user, nonce) IN
                     (SELECT user, nonce FROM nonces WHERE at < ?1 LIMIT ?2)",
                    params![bound(nonces_before), lim(RETENTION_CHUNK)],
                )
                .db()?;
            tx.commit().db()?;
            report.nonces += removed as u64;
            if removed < RETENTION_CHUNK {
                break;
            }
        }
        Ok(report)
    }

    fn backup(&self, path: &Path) -> Result<(), StoreError> {
        self.read(|src| {
            let mut dst = Connection::open(path).db()?;
            let backup = rusqlite::backup::Backup::new(src, &mut dst).db()?;
            // All pages in one step: the copy is one consistent read of the source, with no restart when the
            // writer commits meanwhile.
            loop {
                match backup.step(-1).db()? {
                    rusqlite::backup::StepResult::Done => return Ok(()),
                    // Busy or locked: another connection holds a lock for a moment; try again shortly.
                    _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        })
    }
}
