//! The storage contract: the [`Store`] trait, what goes in and what comes out, and its errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chat_core::{
    Attachment, ChannelId, ClientId, Event, MessageId, MessageKind, Seq, SpaceId, UnixMillis,
    UserId,
};

/// What identifies a database for life, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbMeta {
    /// The log's epoch: random at creation, changed only if history is lost or reset. Cursors carry it.
    pub epoch: u64,
    /// The secret seed of invite codes (`chat_core::Config::invite_seed`).
    pub invite_seed: u64,
    /// When the database was created (unix ms).
    pub created_at: UnixMillis,
}

/// An idempotency record: a command's nonce and the reply it got, kept for 10 minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonceRecord {
    /// Who sent it.
    pub user: UserId,
    /// The client's nonce (at most 64 bytes).
    pub nonce: String,
    /// When it was first accepted (unix ms).
    pub at: UnixMillis,
    /// The reply the engine gave, encoded by the engine; returned verbatim on a retry.
    pub reply: Vec<u8>,
}

/// What one group commit writes, atomically: all of it or none of it.
#[derive(Clone, Debug, Default)]
pub struct Batch<'a> {
    /// Durable events, in seq order, continuing the log without a gap. A command's events are never split
    /// across batches.
    pub events: &'a [Event],
    /// Where each command's events end: the seq of the last durable event of every command (or timer call)
    /// in `events`, ascending (the core's `Reply::seq`). The core resolves an event's audience against the
    /// state after the whole command (a new space's owner receives its `SpaceCreated`, which precedes their
    /// `MemberJoined`), so the store evaluates membership at the command's end too. An event after the last
    /// listed end is taken as a command of its own.
    pub command_ends: &'a [Seq],
    /// Clients' cursors to remember (the last seq each client read).
    pub cursors: &'a [(ClientId, Seq)],
    /// Nonces of the commands in this batch.
    pub nonces: &'a [NonceRecord],
}

/// A message as history and search return it: the core's message with everything that happened to it since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its id.
    pub id: MessageId,
    /// The seq of the event that created it.
    pub seq: Seq,
    /// When it was sent (unix ms).
    pub ts: UnixMillis,
    /// Where.
    pub channel: ChannelId,
    /// The channel's space, if any.
    pub space: Option<SpaceId>,
    /// Who wrote it (for system messages: who caused them).
    pub author: UserId,
    /// Its kind, system kinds included.
    pub kind: MessageKind,
    /// Its text as last edited. For system messages, a short text the store makes: a part, kick or quit
    /// reason, the new topic, the mode string (member modes name users by id, e.g. `+o 1234`), the new
    /// nick; empty for joins, invites and pins.
    pub body: String,
    /// Client-supplied JSON, verbatim.
    pub meta: Option<String>,
    /// The message it replies to (or, for a pin notice, the pinned message).
    pub reply_to: Option<MessageId>,
    /// The thread started from it.
    pub thread: Option<ChannelId>,
    /// Users it mentions. For a kick or invite notice: the user kicked or invited.
    pub mentions: Vec<UserId>,
    /// Whether it mentions @everyone (or @here) with the right to.
    pub mention_everyone: bool,
    /// Files attached.
    pub attachments: Vec<Attachment>,
    /// Embeds as a JSON array, verbatim.
    pub embeds: Option<String>,
    /// Reactions: emoji to users, in the order they reacted.
    pub reactions: BTreeMap<String, Vec<UserId>>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// When it was last edited.
    pub edited_at: Option<UnixMillis>,
    /// The client's nonce.
    pub nonce: Option<String>,
}

/// A page of a channel's history. At most one of `before`, `after`, `around` is set; none means the newest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Which channel.
    pub channel: ChannelId,
    /// Messages older than this one.
    pub before: Option<MessageId>,
    /// Messages newer than this one.
    pub after: Option<MessageId>,
    /// Messages around this one (half before, half after, itself included).
    pub around: Option<MessageId>,
    /// How many at most (1..=100; larger is capped at 100).
    pub limit: usize,
}

/// A full-text search over message bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    /// The query: words (all must match), `"quoted phrases"`, and `prefix*` terms. Anything else a user types
    /// is treated as plain words: never as query syntax that could fail.
    pub text: String,
    /// Only channels the searcher may view: the engine computes this from the core. Empty finds nothing.
    pub channels: Vec<ChannelId>,
    /// Only by this author.
    pub author: Option<UserId>,
    /// Only in this channel (must also be in `channels`).
    pub channel: Option<ChannelId>,
    /// Only in this space.
    pub space: Option<SpaceId>,
    /// Only messages older than this id.
    pub before: Option<MessageId>,
    /// Only messages newer than this id.
    pub after: Option<MessageId>,
    /// Page size (1..=100; larger is capped).
    pub limit: usize,
    /// Hits to skip (paging).
    pub offset: usize,
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchHit {
    /// The message.
    pub message: StoredMessage,
    /// An excerpt of the body with each match between `\u{2}` and `\u{3}` (control characters, so that no
    /// text a user typed can fake a highlight; transports turn them into their own markup).
    pub snippet: String,
}

/// A page of a user's stream read from the store (for cursors older than the engine's in-memory tail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPage {
    /// Events the user may see, in seq order.
    pub events: Vec<Event>,
    /// The seq to continue after (the last event scanned, visible or not). A page may hold fewer than
    /// `limit` events (or none) while `next` still moves: the store bounds how much of the log one call
    /// scans. On a reset, the seq just before the oldest retained event.
    pub next: Seq,
    /// The cursor is older than what retention kept: the client must reset. `events` is then empty.
    pub reset: bool,
}

/// What one retention pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Messages removed because their channel held more than MAX_HISTORY.
    pub messages: u64,
    /// Log events removed because they were older than QUEUE_MAX_AGE (never the newest snapshot's tail).
    pub events: u64,
    /// Expired nonces removed.
    pub nonces: u64,
    /// The attachments of the messages removed, each with its channel: their files are garbage once the
    /// pass has returned (its deletions are committed), and the engine removes them.
    pub attachments: Vec<(ChannelId, Attachment)>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database was written by a newer chatd: its schema version is above what this binary knows.
    #[error(
        "the database schema is version {found}, newer than this chatd understands ({known}); upgrade chatd"
    )]
    TooNew {
        /// The database's version.
        found: u32,
        /// The newest this binary knows.
        known: u32,
    },
    /// The database's records are in a newer format than this build reads (see [`crate::format`]).
    #[error(
        "the database's log format is version {found}, newer than this chatd reads ({known}); upgrade chatd, \
         or restore a backup taken before the upgrade"
    )]
    FormatTooNew {
        /// The database's format version.
        found: u32,
        /// The newest this build reads.
        known: u32,
    },
    /// The database's records are in an older format, which this build converts only when asked to: the
    /// conversion rewrites the whole log, so it is an operator's step, not a side effect of starting.
    #[error(
        "the database's log format is version {found}, older than this chatd's ({known}); run `chatd migrate` \
         to convert it (back it up first with `chatd backup`)"
    )]
    FormatTooOld {
        /// The database's format version.
        found: u32,
        /// The version this build writes.
        known: u32,
    },
    /// The database's records are in a format older than any this build can convert.
    #[error(
        "the database's log format is version {found}; this chatd converts versions {oldest} to {known} only: \
         convert it with an older chatd's `chatd migrate` first"
    )]
    FormatUnsupported {
        /// The database's format version.
        found: u32,
        /// The oldest version this build converts.
        oldest: u32,
        /// The version this build writes.
        known: u32,
    },
    /// A batch does not continue the log: its first seq is not the last seq plus one, seqs have a gap, or
    /// it holds a live-only event (typing, presence), which carries the seq before it.
    #[error("batch seq {got} does not follow the log's last seq {last}")]
    OutOfOrder {
        /// The log's last seq.
        last: Seq,
        /// The offending seq.
        got: Seq,
    },
    /// A stored record cannot be decoded (a damaged database or a bug).
    #[error("stored {what} at {at} cannot be decoded: {detail}")]
    Corrupt {
        /// What kind of record.
        what: &'static str,
        /// Where (a seq or an id).
        at: u64,
        /// The decoder's message.
        detail: String,
    },
    /// The database behind the store failed (SQLite's error, or another implementation's). The store's own
    /// error is kept as the source, so its message reaches the log.
    #[error("database: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file operation failed (opening, backup).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A cluster node appended under a writer term that is no longer the lease's: another node has taken
    /// over, and the database refused the append (fencing). Nothing of the batch was written.
    #[error(
        "this node's writer term {term} was replaced by term {current}; the append was refused"
    )]
    Fenced {
        /// The term the append was made under.
        term: u64,
        /// The lease's term in the database.
        current: u64,
    },
}

/// A server this one links to (SPEC §13), as the operator added it (`chatd link add`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLink {
    /// The peer's server name, as it signs its requests.
    pub name: String,
    /// The peer's base URL (`https://chat.example.org`).
    pub url: String,
    /// This link's own key; `None` uses `FEDERATION_KEY`. Kept as given: both ends sign with it.
    pub key: Option<String>,
    /// When the link was added (unix ms).
    pub added_at: UnixMillis,
    /// The outbox: the last local seq the peer acknowledged. A new link starts at the log's end.
    pub cursor: Seq,
}

/// Durable storage: the event log, snapshots, cursors, nonces, and the materialized tables behind history and
/// search.
///
/// Every method takes `&self`: a store is shared by the engine's writer and many readers at once, and each
/// implementation does its own locking (the SQLite one keeps one writer connection and a pool of readers).
/// Writes are atomic: after a crash a batch is either wholly present or wholly absent.
pub trait Store: Send + Sync + 'static {
    /// The database's identity.
    fn meta(&self) -> DbMeta;

    /// The seq of the last logged event (0 for an empty log).
    fn last_seq(&self) -> Result<Seq, StoreError>;

    /// The oldest seq still in the log after retention (`None` while the log is empty).
    fn first_seq(&self) -> Result<Option<Seq>, StoreError>;

    /// Appends a batch in one transaction: events (and the materialized rows they imply), cursors, nonces.
    /// Returns once durable per the store's durability setting.
    fn append(&self, batch: &Batch<'_>) -> Result<(), StoreError>;

    /// Log events after `after`, in order, at most `limit`: what start-up replays after a snapshot.
    fn events_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// The events of `user`'s stream after `after`, at most `limit`, by the visibility rule of the events'
    /// audiences and the membership history the store keeps, resolved at the end of each event's command
    /// (as [`chat_core::Core::recipients`] does live). `reset` when `after` is older than retention, that
    /// is below the oldest retained seq minus one.
    fn user_stream(&self, user: UserId, after: Seq, limit: usize)
    -> Result<StreamPage, StoreError>;

    /// Stores a snapshot of the core's state as of `seq` (postcard bytes, opaque to the store). Older
    /// snapshots are dropped: only the newest is ever read.
    fn save_snapshot(&self, seq: Seq, state: &[u8]) -> Result<(), StoreError>;

    /// The newest snapshot, if any.
    fn latest_snapshot(&self) -> Result<Option<(Seq, Vec<u8>)>, StoreError>;

    /// Remembers clients' cursors outside a command batch (a long-poll that read and moved on).
    fn save_cursors(&self, cursors: &[(ClientId, Seq)]) -> Result<(), StoreError>;

    /// Every client's last saved cursor.
    fn cursors(&self) -> Result<Vec<(ClientId, Seq)>, StoreError>;

    /// A nonce the user sent before, if still kept.
    fn nonce(&self, user: UserId, nonce: &str) -> Result<Option<NonceRecord>, StoreError>;

    /// Every kept nonce accepted at or after `since` (unix ms), in no particular order: what start-up loads,
    /// so that checking a command's nonce never waits for the store.
    fn nonces_since(&self, since: UnixMillis) -> Result<Vec<NonceRecord>, StoreError>;

    /// Records a spent proof-of-work stamp (by the SHA-256 of its text) until `expires` (unix ms), first
    /// forgetting every stamp expired by `now`. `Ok(false)` if it was recorded already: spent before, perhaps
    /// before a restart, so that a stamp buys one sign-up however often the server starts.
    fn spend_stamp(
        &self,
        key: [u8; 32],
        expires: UnixMillis,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Forgets a spent stamp (its sign-up was refused, so it may be used again).
    fn unspend_stamp(&self, key: [u8; 32]) -> Result<(), StoreError>;

    /// The servers this one links to (SPEC §13), by name.
    fn links(&self) -> Result<Vec<ServerLink>, StoreError>;

    /// Adds a link. `Ok(false)` changes nothing: a link of that name exists.
    fn add_link(&self, link: &ServerLink) -> Result<bool, StoreError>;

    /// Removes the link named `name`; `Ok(false)` if there was none.
    fn remove_link(&self, name: &str) -> Result<bool, StoreError>;

    /// Moves a link's outbox cursor: the last local seq the peer acknowledged. `Ok(false)` if the link is gone.
    fn save_link_cursor(&self, name: &str, cursor: Seq) -> Result<bool, StoreError>;

    /// A page of a channel's history, oldest first.
    fn history(&self, query: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError>;

    /// One message by id.
    fn message(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError>;

    /// Full-text search, newest first.
    fn search(&self, query: &SearchQuery) -> Result<Vec<SearchHit>, StoreError>;

    /// The attachments of every message `channel` still holds (none for a deleted channel): the files that
    /// must stay on disk, which the engine's sweep compares the channel's stored files with.
    fn attachments(&self, channel: ChannelId) -> Result<Vec<Attachment>, StoreError>;

    /// One bounded retention pass: trims channels to `max_history` messages, drops log events older than
    /// `events_before` (unix ms) that the newest snapshot covers, and nonces older than `nonces_before`.
    /// The report lists the trimmed messages' attachments, so that their files go once the pass returns.
    /// Works in small transactions so writers are never stalled for long; call it again while it reports work.
    fn enforce_retention(
        &self,
        max_history: usize,
        events_before: UnixMillis,
        nonces_before: UnixMillis,
    ) -> Result<RetentionReport, StoreError>;

    /// Copies the whole database to `path` while it stays in use (SQLite's online backup).
    fn backup(&self, path: &Path) -> Result<(), StoreError>;
}

/// A cluster node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// It holds the writer lease: it orders and appends every command.
    Writer,
    /// It follows the log and hands its commands to the writer.
    Follower,
}

impl NodeRole {
    /// The role's name, as `/metrics` and `GET /api/v1/server` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Writer => "writer",
            NodeRole::Follower => "follower",
        }
    }
}

/// A node as it last reported itself in the shared store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its `NODE_ID` (unique in the cluster).
    pub id: u16,
    /// The address other nodes reach its cluster link on (`host:port`).
    pub addr: String,
    /// Its role at its last report.
    pub role: NodeRole,
    /// The last seq it had applied at its last report.
    pub applied: Seq,
    /// How long ago (by the database's clock) it last reported, in ms.
    pub age_ms: u64,
}

/// The writer lease as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The term: incremented by every takeover. Appends are fenced by it.
    pub term: u64,
    /// The holder's node id.
    pub node: u16,
    /// The holder's cluster link address.
    pub addr: String,
    /// Whether the lease is still within its time (by the database's clock).
    pub live: bool,
}

/// What a store shared by many chatd processes adds to [`Store`]: the writer lease, fenced appends, the node
/// registry and a doorbell for new commits. Implemented by the PostgreSQL store.
///
/// Correctness never rests on time here: the lease's expiry only decides when another node may *try* to take
/// over; what stops a replaced writer is [`Cluster::append_fenced`], which checks the term in the same
/// transaction as the append. Lease times are the database's clock, never a node's.
pub trait Cluster: Store {
    /// Takes the writer lease for `ttl` if nobody holds a live one, or renews it if `node` holds it already.
    /// Returns the term now held, or `None` if another node holds a live lease. A takeover always starts a
    /// new term (so that the holder before, even this node's own older process, is fenced).
    fn try_lead(&self, node: u16, addr: &str, ttl: Duration) -> Result<Option<u64>, StoreError>;

    /// Extends the lease of `term` by `ttl`. `Ok(false)` if the lease has moved to another term.
    fn renew_lease(&self, term: u64, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives the lease of `term` up at once (a clean stop), so that another node takes over without waiting.
    fn resign(&self, term: u64) -> Result<(), StoreError>;

    /// The lease as it stands (`None` if no node ever led).
    fn lease(&self) -> Result<Option<Lease>, StoreError>;

    /// [`Store::append`], refused with [`StoreError::Fenced`] unless `term` is still the lease's term, checked
    /// in the same transaction; refused with [`StoreError::OutOfOrder`] unless the batch continues the log's
    /// last seq as the database holds it.
    fn append_fenced(&self, term: u64, batch: &Batch<'_>) -> Result<(), StoreError>;

    /// Log events after `after`, in order, at most `limit`, each with the seq at which its command ends
    /// ([`Batch::command_ends`], the point its audience is resolved at): what a following node applies, so
    /// that it resolves recipients where the writer did.
    fn log_after(&self, after: Seq, limit: usize) -> Result<Vec<(Event, Seq)>, StoreError>;

    /// Records this node's report (role, applied seq, address) with the database's time.
    fn report_node(
        &self,
        id: u16,
        addr: &str,
        role: NodeRole,
        applied: Seq,
    ) -> Result<(), StoreError>;

    /// Every node that ever reported, with the age of its last report.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Waits at most `timeout` for a commit that ends after `after` (the doorbell: LISTEN/NOTIFY on
    /// PostgreSQL). Returns the log's last seq as far as the doorbell knows; may return early or spuriously:
    /// the log itself ([`Store::events_after`]) is the truth, and a caller reads it after every return.
    fn wait_commit(&self, after: Seq, timeout: Duration) -> Result<Seq, StoreError>;

    /// A secret every node of the cluster reads from the database (made at creation), with which nodes
    /// authenticate each other on their links.
    fn cluster_secret(&self) -> Result<[u8; 32], StoreError>;

    /// The mark of the cluster's shared `DATA_DIR` (uploaded files): stores `proposed` if no node has marked
    /// a directory yet, and returns the mark the database holds. A node writes the mark into its `DATA_DIR`
    /// and refuses to start if its directory holds another mark (or none while the database has one): the
    /// directory is then not the one every node shares.
    fn data_dir_mark(&self, proposed: u64) -> Result<u64, StoreError>;
}
