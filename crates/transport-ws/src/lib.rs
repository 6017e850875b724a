//! The Discord-compatible WebSocket gateway (`/gateway`) and REST API (`/api/v10`, `/api/v9`) of chatd.
//!
//! [`WsApi`] is built on an [`Engine`](chat_engine::Engine) with [`Settings`]; [`WsApi::router`] gives an axum
//! router with the gateway and every REST route, which the binary mounts beside the long-poll API. Unmodified
//! Discord bot libraries (discord.py, twilight, serenity) work against it by changing only their base URLs:
//! spaces are guilds, the network's `#channels` are its text channels, and the gateway's `s` is the log's seq,
//! so a session resumes across reconnects and server restarts. `discord-compat.md` (beside SPEC.md) lists
//! what the libraries need, field by field; `model.rs` builds those objects once for both doors.
#![deny(missing_docs)]

mod error;
mod gateway;
mod model;
mod rest;

use std::time::Duration;

use axum::Router;
use chat_engine::Engine;

/// The transport's settings (the binary fills them from its configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often clients must heartbeat (sent in Hello). Well under 60 s: discord.py gives up after 60 s of
    /// silence.
    pub heartbeat_interval: Duration,
    /// The largest client payload accepted; larger closes the connection with 4002.
    pub max_payload: usize,
    /// Bytes a connection may have waiting to be written before it is closed (resumably) as too slow.
    pub outbound_cap: usize,
    /// Client events allowed per minute before 4008.
    pub events_per_minute: u32,
    /// The largest upload accepted (MAX_UPLOAD_SIZE).
    pub max_upload: u64,
    /// The largest JSON request body accepted by the REST API.
    pub max_body: usize,
    /// The server's public base URL without a trailing `/` (PUBLIC_URL), which attachment URLs start with;
    /// `None` takes it from the request's `Host` (for the gateway, the `Host` of its upgrade request).
    pub public_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(41_250),
            max_payload: 4096,
            outbound_cap: 1 << 20,
            events_per_minute: 120,
            max_upload: 25 << 20,
            max_body: 64 * 1024,
            public_url: None,
        }
    }
}

/// The gateway and the REST API: cheap to clone; every clone serves the same state.
#[derive(Clone, Debug)]
pub struct WsApi {
    gateway: gateway::Gateway,
    rest: rest::Rest,
}

impl WsApi {
    /// Builds both on an engine.
    pub fn new(engine: Engine, settings: Settings) -> Self {
        Self {
            gateway: gateway::Gateway::new(engine.clone(), settings.clone()),
            rest: rest::Rest::new(engine, settings),
        }
    }

    /// `/gateway`, `/gateway/`, and every route under `/api/v10` and `/api/v9`.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(self.gateway.router())
            .merge(self.rest.router())
    }

    /// Closes every gateway connection with a resumable code, for a graceful shutdown: clients resume on the
    /// next server from their last seq.
    pub fn close(&self) {
        self.gateway.close();
    }
}
