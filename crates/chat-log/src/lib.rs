//! The storage contract of chatd's log: the [`Store`] trait that every store implements, what goes in
//! ([`Batch`], [`NonceRecord`]) and what comes out ([`StoredMessage`], [`SearchHit`], [`StreamPage`]), the
//! queries ([`HistoryQuery`], [`SearchQuery`]) and [`StoreError`].
//!
//! The engine is written against this crate alone, and the transports see its record types only through the
//! engine's re-exports; the implementations (`chat-store`: SQLite and an in-memory reference) are chosen by
//! the binary. A new store (PostgreSQL, a cluster's shared log) implements [`Store`] and changes nothing
//! above it.
//!
//! [`format`](mod@format) is the log's format version: how the records every store keeps are encoded, which
//! versions a build reads, and how a record of an older version is converted.
//!
//! ```
//! use chat_log::{HistoryQuery, Store, StoreError, StoredMessage};
//!
//! /// The newest page of a channel, from whatever store the binary chose.
//! fn newest(store: &dyn Store, channel: chat_core::ChannelId) -> Result<Vec<StoredMessage>, StoreError> {
//!     store.history(&HistoryQuery { channel, before: None, after: None, around: None, limit: 50 })
//! }
//! # let _ = newest;
//! ```
#![deny(missing_docs)]

pub mod format;
mod types;

pub use crate::types::{
    Batch, Cluster, DbMeta, HistoryQuery, Lease, NodeRecord, NodeRole, NonceRecord,
    RetentionReport, SearchHit, SearchQuery, ServerLink, Store, StoreError, StoredMessage,
    StreamPage,
};
