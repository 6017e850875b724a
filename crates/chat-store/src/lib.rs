//! Durable storage for chatd: the implementations of `chat-log`'s [`Store`] (the append-only event log,
//! snapshots of the core's state, clients' cursors, nonces, and the materialized tables that serve history
//! and search). Only the binary, tests and benches depend on this crate; the engine knows the contract alone.
//!
//! Three implementations share one contract and one test suite: [`SqliteStore`] (rusqlite, WAL, FTS5; the
//! server's default), [`PostgresStore`] (tokio-postgres, full-text search on a GIN index; a database several
//! chatd processes share, with the [`Cluster`] contract on top) and [`MemoryStore`] (a plain in-memory
//! reference, for tests and for embedders that need no durability). The core never calls storage; the engine does, and it alone decides what to append.
//!
//! All apply the same projection (`project.rs`: one event becomes a short list of row effects) from the
//! log to their tables, so history, search and streams agree; the test suite holds them side by side and
//! against the core's live deliveries.
//!
//! ```
//! use chat_core::{Config, Core};
//! use chat_store::{Batch, Durability, SqliteStore, Store};
//!
//! let now = 1_800_000_000_000;
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Full, now)?;
//! let mut core = Core::new(Config { invite_seed: store.meta().invite_seed, ..Config::default() }, now);
//! let mut events = Vec::new();
//! while let Some(event) = core.poll_event() {
//!     events.push(event);
//! }
//! // The genesis is one input: its events end where the core's log ends.
//! store.append(&Batch { events: &events, command_ends: &[core.last_seq()], ..Batch::default() })?;
//! assert_eq!(store.last_seq()?, core.last_seq());
//! assert_eq!(store.events_after(0, 100)?, events);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod codec;
mod memory;
mod postgres;
mod project;
mod sqlite;
mod text;

pub use crate::memory::MemoryStore;
pub use crate::postgres::{POSTGRES_SCHEMA_VERSION, PostgresStore};
pub use crate::sqlite::{Durability, SCHEMA_VERSION, SqliteStore};
pub use chat_log::format;
// The contract, re-exported so that code which picks a store (the binary, tests, benches) names one crate.
pub use chat_log::{
    Batch, Cluster, DbMeta, HistoryQuery, Lease, NodeRecord, NodeRole, NonceRecord,
    RetentionReport, SearchHit, SearchQuery, ServerLink, Store, StoreError, StoredMessage,
    StreamPage,
};
