//! The async heart of chatd: owns the core and the store, sequences commands, group-commits events, wakes
//! readers and drives the core's timers.
//!
//! An [`Engine`] is started on a [`Store`] (the contract of `chat-log`) with [`Engine::open`], which rebuilds
//! the [`chat_core::Core`] from the latest snapshot and the log after it and spawns the writer task. That one task
//! owns the core: commands queue on a bounded channel, the writer takes them in batches, applies each, appends
//! every durable event of the batch in one store transaction (group commit), and only then answers the callers
//! and publishes the events. Readers follow their user's stream with [`Engine::read`] and [`Engine::wait`]
//! from a [`Cursor`]; recent events come from an in-memory tail, older ones from the store. Passwords are
//! hashed with argon2id on a bounded blocking pool and follow one rule on every door ([`check_password`]),
//! failed logins are throttled per account and address, guests may have to pay with a proof-of-work stamp
//! ([`Engine::guest_with_stamp`]), tokens are kept only as SHA-256, commands with a nonce are idempotent, and
//! messages are rate-limited per user. History, search and message lookups go through the
//! engine too ([`Engine::history`], [`Engine::search`], [`Engine::message`]), so that transports never hold
//! the store. [`Engine::shutdown`] drains, saves and stops.
//! Uploaded files live in [`Files`] under DATA_DIR: transports write an [`Upload`] and send it with its
//! command ([`Engine::command_with_upload`]); the engine removes a message's files once its removal commits,
//! and [`Engine::sweep_files`] finds what a crash left behind.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<impl chat_engine::Store>) -> Result<(), chat_engine::EngineError> {
//! use chat_core::{Command, Outgoing, Target};
//! use chat_engine::{Engine, EngineConfig};
//! use std::time::Duration;
//!
//! let (engine, task) = Engine::open(store, EngineConfig::default()).await?;
//! let alice = engine.guest("alice", "laptop").await?;
//! engine.command(&alice.session, Command::Join { channel: "#rust".into(), key: None }, None).await?;
//! engine.command(&alice.session, Command::Send {
//!     to: Target::parse("#rust"),
//!     message: Outgoing { body: "hello".into(), ..Outgoing::default() },
//! }, Some("n-1".into())).await?;
//! let page = engine.wait(&alice.session, Some(alice.cursor), 100, Duration::from_secs(15)).await?;
//! assert!(!page.events.is_empty());
//! engine.shutdown().await?;
//! let _ = task.await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod auth;
mod cluster;
mod config;
mod directory;
mod engine;
mod error;
mod files;
mod hashcash;
mod password;
mod read;
mod streams;
mod writer;

pub use crate::auth::Bucket;
pub use crate::cluster::{ClusterConfig, ClusterStatus};
pub use crate::config::{EngineConfig, RateLimit};
pub use crate::directory::{ChannelCard, Directory, MemberCard, SpaceCard, UserCard};
pub use crate::engine::{CommandReply, Engine, EngineTask, Login, MAX_NONCE, Session, now_ms};
pub use crate::error::EngineError;
pub use crate::files::{Files, NewFile, StoredFile, SweepReport, Upload, token_shaped};
pub use crate::hashcash::StampError;
pub use crate::password::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, PasswordError, check_password};
pub use crate::streams::{Cursor, StreamRead};
// The storage contract's types that the read API and the errors carry, so that transports need no storage
// crate of their own.
pub use chat_log::{
    Cluster, HistoryQuery, NodeRecord, NodeRole, SearchHit, SearchQuery, Store, StoreError,
    StoredMessage,
};
