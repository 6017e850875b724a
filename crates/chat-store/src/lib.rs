//! Durable storage for chatd behind a trait: the event log, snapshots and the queries that serve history and
//! search, with a SQLite implementation and an in-memory reference implementation.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and has no behaviour.
#![deny(missing_docs)]
