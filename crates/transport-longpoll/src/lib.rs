//! The IRC-style long-poll JSON API (`/api/v1`), over the engine.
//!
//! [`LongPoll`] is built on an [`Engine`](chat_engine::Engine) with [`Settings`]; [`LongPoll::router`] gives
//! an axum [`Router`](axum::Router) with every `/api/v1` route, which the binary mounts beside the other
//! transports. Requests carry `Authorization: Bearer <token>`; commands answer only once durable; a
//! `GET /api/v1/messages` long-poll parks until the user's stream has something or its timeout passes.
//! [`LongPoll::close`] answers every parked poll at once, for a graceful shutdown.
#![deny(missing_docs)]

mod api;
mod error;
mod render;
mod wire;

use std::time::Duration;

pub use crate::api::LongPoll;
pub use crate::error::ApiError;

/// The transport's settings (the binary fills them from its configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The server's display name (`SERVER_NAME`), answered by `GET /api/v1/server`.
    pub server_name: String,
    /// The message of the day (`MOTD`).
    pub motd: String,
    /// The server's version string.
    pub version: String,
    /// How long a long-poll holds when the client gives no `timeout` (`LONG_POLL_TIMEOUT`).
    pub default_timeout: Duration,
    /// The longest `timeout` a client may ask for; more is refused with 400.
    pub max_timeout: Duration,
    /// The largest request body accepted; more is refused with 413.
    pub max_body: usize,
    /// Origins allowed to call the API from a browser (CORS); empty turns CORS off. `*` allows any.
    pub cors_origins: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server_name: "chatd".into(),
            motd: String::new(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_timeout: Duration::from_secs(15),
            max_timeout: Duration::from_secs(30),
            max_body: 64 * 1024,
            cors_origins: Vec::new(),
        }
    }
}
