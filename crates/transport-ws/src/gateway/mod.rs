//! The gateway: one WebSocket connection per client session, Discord's op codes, dispatches from the user's
//! stream.
//!
//! `/gateway` (and `/gateway/`) upgrades to a WebSocket with small buffers (thousands of idle bots must be
//! cheap), sends Hello, and hands the socket to a [`conn`] task. `s` is the log's seq, so a session resumes
//! from any connection and across server restarts: its `session_id` names only durable things (the client and
//! the log's epoch). Events are rendered once per event in a shared [`render::Cache`]; each connection only
//! filters them by audience and intents. Settings come only from [`Settings`]; chatd fills them.
//!
//! Close codes (Discord's meanings): 4001 unknown op; 4002 a payload that is not JSON, has no integer `op`,
//! has a malformed `d`, or is over `max_payload` (frames up to 2 MiB are read and refused so; larger ones
//! reset the connection); 4003 an op other than Heartbeat, Identify and Resume before
//! identifying; 4004 a bad token; 4005 Identify or Resume on an identified connection; 4008 more than
//! `events_per_minute` payloads in a minute; 4010 a shard other than `[0, 1]`; 4012 `v` other than 9 or 10;
//! 4013 intents with bits Discord does not define. 4000 is the resumable close: no heartbeat for 1.5
//! intervals plus a second (a zombie), an outbound queue past `outbound_cap`, and a graceful shutdown (after
//! op 7 Reconnect). Every library resumes on 4000; 4009 would be resumed too, but Discord means by it that the
//! session is gone. A Resume that cannot be honoured (an unknown session, another epoch, a seq ahead of the
//! log or older than retention) gets op 9 `false` and the connection may identify afresh.

mod conn;
mod frame;
mod render;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use chat_engine::Engine;
use http::HeaderMap;
use tokio::sync::watch;

use crate::Settings;

/// How many rendered events the cache keeps (a recent window: readers that lag further render again).
const CACHE_EVENTS: usize = 4096;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) settings: Settings,
    pub(crate) ctx: render::Context,
    pub(crate) cache: render::Cache,
    /// Set once by [`Gateway::close`]: every connection sends Reconnect and closes resumably.
    pub(crate) closing: watch::Sender<bool>,
    pub(crate) connections: metrics::Gauge,
}

/// The gateway's shared state.
#[derive(Clone, Debug)]
pub(crate) struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub(crate) fn new(engine: Engine, settings: Settings) -> Self {
        let shared = Arc::new(Shared {
            ctx: render::Context {
                engine: engine.clone(),
                network: OnceLock::new(),
                invites: Mutex::new(HashMap::new()),
                channel_texts: Arc::default(),
            },
            engine,
            settings,
            cache: render::Cache::new(CACHE_EVENTS),
            closing: watch::Sender::new(false),
            connections: metrics::gauge!("chatd_connections", "transport" => "gateway"),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let learner = Arc::clone(&shared);
            runtime.spawn(async move { learner.ctx.learn_invites().await });
        }
        Self { shared }
    }

    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/gateway", get(upgrade))
            .route("/gateway/", get(upgrade))
            .with_state(Arc::clone(&self.shared))
    }

    /// Sends Reconnect (op 7) to every connection and closes it with a resumable code.
    pub(crate) fn close(&self) {
        self.shared.closing.send_replace(true);
    }
}

/// The largest frame (and message) the WebSocket library reads whole before the connection refuses it with
/// 4002: 2 MiB, so that a client that writes a frame of a megabyte or so gets Discord's close code rather
/// than a reset. The buffer is reserved only while such a frame is read, and is freed with the connection.
const LIBRARY_FRAME_MAX: usize = 2 << 20;

/// The read and write buffer of a socket: a few KiB, not tungstenite's 128 KiB, so that idle connections
/// are cheap; a large frame is still written whole, in several writes.
const SOCKET_BUFFER: usize = 4096;

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // `encoding` and `compress` are ignored: frames are always JSON text, which every library reads as is.
    let version_ok = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "v")
        .all(|(_, v)| v == "9" || v == "10");
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let resume_url = format!("{}://{host}/gateway", if secure { "wss" } else { "ws" });
    // Attachment URLs in this connection's dispatches start with the base its client connected to.
    let base = crate::model::base_url(shared.settings.public_url.as_deref(), &headers);
    // The library's own limit sits well above max_payload, so that an oversize payload is read whole and
    // reaches the connection, which closes with Discord's 4002. A frame the library refuses instead leaves
    // its unread rest in the socket: closing a socket with unread data sends a TCP reset, and the client
    // (still writing its frame) sees the reset, never the close frame. Frames past this limit still end
    // that way; it is what bounds the memory one connection can make the server hold.
    let library_max = shared
        .settings
        .max_payload
        .saturating_mul(4)
        .max(LIBRARY_FRAME_MAX);
    ws.read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(library_max)
        .max_frame_size(library_max)
        .on_upgrade(move |socket| conn::run(shared, socket, resume_url, base, version_ok))
}
