//! The bare WebSocket broadcast server: the fan-out yardstick of SPEC §10 that chatd's gateway is compared
//! against.
//!
//! It is a plain tokio-tungstenite broadcast server (through axum, as chatd's gateway is) with the gateway's
//! socket settings: 4 KiB read and write buffers, the same message size limit, one reader task and one writer
//! task per connection joined by an unbounded queue of frames, frames fed and flushed only when the queue is
//! empty, and the same 1 MiB outbound cap (closed with 4000). A message is serialised once and the same
//! `Utf8Bytes` is queued to every connection of its room. There is no auth, no persistence, no engine: the
//! rest of what chatd does per message is exactly what the ratio to this server measures.
//!
//! It speaks just enough of chatd's two APIs that a load generator written for chatd drives it unchanged:
//!
//! - `POST /api/v1/session` `{"nick": N}` answers `{"token":N,"user":N,"cursor":0,"epoch":1}` (the token is the
//!   nick).
//! - `POST /api/v1/messages` with `Authorization: Bearer T`: `{"command":"JOIN","to":"#room"}` records that
//!   token `T` is in `room` (answers `{"seq":N,"id":null}`, `N` the current seq);
//!   `{"command":"PRIVMSG","to":"#room","body":B}` broadcasts `B` to `room` (answers `{"seq":N,"id":"ID"}`).
//!   Other commands answer `{"seq":N,"id":null}` and do nothing.
//! - `GET /api/v1/channels/{name}` answers `{"name":"#room","id":"room"}`.
//! - `POST /api/v10/channels/{room}/messages` `{"content": C}` (any or no Authorization) broadcasts `C` to
//!   `room` and answers 200 with the message object.
//! - `GET /gateway` (and `/gateway/`): Hello (`heartbeat_interval` 41250), op 1 answered with op 11, op 2
//!   Identify (any token, a `Bot ` prefix is dropped) answered with READY; the connection then gets a
//!   MESSAGE_CREATE for every message to each of its rooms. Its rooms: those its token JOINed, plus the part of
//!   the token after its last `:` if it has one (token `u1:room7` is in `room7`), and `all` if that leaves none.
//!   Other ops are ignored.
//!
//! Room names are channel names without the leading `#`, and a room's name is also its channel id. `s` counts
//! messages (READY carries the count at identify time). Frames are written in chatd's `op, s, t, d` order.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// chatd's gateway socket buffers (`SOCKET_BUFFER` in the gateway).
pub const SOCKET_BUFFER: usize = 4096;
/// chatd's default `max_payload`; the library limit is four times it, as in chatd.
const MAX_PAYLOAD: usize = 4096;
/// chatd's default outbound cap: bytes of dispatches queued on one connection before it is closed with 4000.
pub const OUTBOUND_CAP: usize = 1 << 20;
/// chatd's default heartbeat interval, in milliseconds.
const HEARTBEAT_INTERVAL_MS: u64 = 41_250;
/// How long a close frame may take to go out before the socket is dropped (as in chatd).
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The room of a connection whose token names none and joined none.
pub const DEFAULT_ROOM: &str = "all";

/// What a connection's writer task sends.
#[derive(Debug)]
enum Out {
    /// A frame; `counted` ones (dispatches of messages) count against the outbound cap.
    Frame { text: Utf8Bytes, counted: bool },
    /// A close frame after everything queued before it.
    Close(u16, &'static str),
}

/// One connection as a room sees it: its queue and the bytes waiting in it.
#[derive(Debug)]
struct Peer {
    tx: mpsc::UnboundedSender<Out>,
    shared: Arc<PeerShared>,
}

/// What a connection's broadcasters and its writer share.
#[derive(Debug, Default)]
struct PeerShared {
    /// Bytes of dispatches queued and not yet fed to the socket.
    queued: AtomicUsize,
    /// Set once the queue passed the cap; the writer then closes ahead of the queue.
    over: AtomicBool,
    wake: Notify,
}

/// The shared state: rooms of connections, the rooms each token joined, the message counter.
///
/// Create it with [`BareWs::new`] and hand it to [`serve`] or [`router`].
#[derive(Debug, Default)]
pub struct BareWs {
    /// Room name -> connection id -> peer. Read-locked for a broadcast, write-locked to join or leave.
    rooms: RwLock<HashMap<String, HashMap<u64, Peer>>>,
    /// Token -> rooms it JOINed over the long-poll API.
    joined: Mutex<HashMap<String, Vec<String>>>,
    /// Messages sent so far; a message's seq is the count after it.
    seq: AtomicU64,
    next_conn: AtomicU64,
}

impl BareWs {
    /// An empty server state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The rooms a connection identified with `token` belongs to (see the module docs).
    pub fn rooms_of(&self, token: &str) -> Vec<String> {
        let token = token.trim();
        let token = token.strip_prefix("Bot ").unwrap_or(token);
        let mut rooms = lock(&self.joined).get(token).cloned().unwrap_or_default();
        if let Some((_, room)) = token.rsplit_once(':')
            && !room.is_empty()
            && !rooms.iter().any(|r| r == room)
        {
            rooms.push(room.to_owned());
        }
        if rooms.is_empty() {
            rooms.push(DEFAULT_ROOM.to_owned());
        }
        rooms
    }

    fn join(&self, token: &str, room: &str) {
        let mut joined = lock(&self.joined);
        let rooms = joined.entry(token.to_owned()).or_default();
        if !rooms.iter().any(|r| r == room) {
            rooms.push(room.to_owned());
        }
    }

    /// Sends `content` to every connection in `room`: renders the message and its MESSAGE_CREATE frame once and
    /// queues the same frame to each. Returns the message object and its seq.
    pub fn broadcast(&self, room: &str, content: &str) -> (Value, u64) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let id = snowflake(seq);
        let message = message(&id, room, content);
        let frame = Utf8Bytes::from(dispatch(seq, "MESSAGE_CREATE", &message.to_string()));
        let n = frame.len();
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        if let Some(peers) = rooms.get(room) {
            for peer in peers.values() {
                let before = peer.shared.queued.fetch_add(n, Ordering::Relaxed);
                if before + n > OUTBOUND_CAP {
                    if !peer.shared.over.swap(true, Ordering::Relaxed) {
                        peer.shared.wake.notify_one();
                    }
                    continue;
                }
                let _ = peer.tx.send(Out::Frame {
                    text: frame.clone(),
                    counted: true,
                });
            }
        }
        (message, seq)
    }

    fn add(
        &self,
        rooms: &[String],
        id: u64,
        tx: &mpsc::UnboundedSender<Out>,
        shared: &Arc<PeerShared>,
    ) {
        let mut all = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        for room in rooms {
            all.entry(room.clone()).or_default().insert(
                id,
                Peer {
                    tx: tx.clone(),
                    shared: Arc::clone(shared),
                },
            );
        }
    }

    fn remove(&self, rooms: &[String], id: u64) {
        let mut all = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        for room in rooms {
            if let Some(peers) = all.get_mut(room) {
                peers.remove(&id);
                if peers.is_empty() {
                    all.remove(room);
                }
            }
        }
    }

    /// Connections currently in `room`.
    pub fn members(&self, room: &str) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(room).map_or(0, HashMap::len)
    }
}

/// Locks a mutex, ignoring poisoning: every update under it is a single insert.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A snowflake-like id for message `seq`: milliseconds since Discord's epoch in the top bits, the seq below.
fn snowflake(seq: u64) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let since = ms.saturating_sub(1_420_070_400_000);
    ((since << 22) | (seq & 0x3F_FFFF)).to_string()
}

/// A message object shaped like chatd's (the fields a Discord library reads, with the same sizes).
fn message(id: &str, room: &str, content: &str) -> Value {
    json!({
        "id": id,
        "channel_id": room,
        "author": {
            "id": "1",
            "username": "bench",
            "discriminator": "0",
            "global_name": null,
            "avatar": null,
            "bot": false,
            "system": false,
            "public_flags": 0,
        },
        "content": content,
        "timestamp": "1970-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "mention_channels": [],
        "attachments": [],
        "embeds": [],
        "components": [],
        "pinned": false,
        "type": 0,
        "flags": 0,
    })
}

/// A dispatch frame in Discord's `op, s, t, d` order (as chatd's gateway writes it). `d` must be JSON.
pub fn dispatch(seq: u64, name: &str, d: &str) -> String {
    format!("{{\"op\":0,\"s\":{seq},\"t\":\"{name}\",\"d\":{d}}}")
}

/// A non-dispatch frame: `{"op":N,"s":null,"t":null,"d":...}`.
fn control(op: u64, d: &str) -> String {
    format!("{{\"op\":{op},\"s\":null,\"t\":null,\"d\":{d}}}")
}

/// A channel name or id as a room name: without a leading `#`.
fn room_name(name: &str) -> &str {
    name.strip_prefix('#').unwrap_or(name)
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn bad_request(what: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": "invalid", "message": what }).to_string(),
    )
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    Some(
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("Bot "))
            .unwrap_or(value)
            .trim(),
    )
}

async fn session(body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("body is not JSON");
    };
    let Some(nick) = v["nick"].as_str().filter(|n| !n.is_empty()) else {
        return bad_request("nick");
    };
    json_response(
        StatusCode::OK,
        json!({ "token": nick, "user": nick, "cursor": 0, "epoch": 1 }).to_string(),
    )
}

async fn command(State(state): State<Arc<BareWs>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("body is not JSON");
    };
    let to = v["to"].as_str().map(room_name).unwrap_or_default();
    match v["command"].as_str() {
        Some("JOIN") if !to.is_empty() => {
            if let Some(token) = bearer(&headers) {
                state.join(token, to);
            }
        }
        Some("PRIVMSG") if !to.is_empty() => {
            let body = v["body"].as_str().unwrap_or_default();
            let (message, seq) = state.broadcast(to, body);
            return json_response(
                StatusCode::OK,
                json!({ "seq": seq, "id": message["id"] }).to_string(),
            );
        }
        Some(_) => {}
        None => return bad_request("command"),
    }
    let seq = state.seq.load(Ordering::SeqCst);
    json_response(
        StatusCode::OK,
        json!({ "seq": seq, "id": null }).to_string(),
    )
}

async fn channel(Path(name): Path<String>) -> Response {
    let room = room_name(&name);
    json_response(
        StatusCode::OK,
        json!({ "name": format!("#{room}"), "id": room }).to_string(),
    )
}

async fn create_message(
    State(state): State<Arc<BareWs>>,
    Path(room): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("body is not JSON");
    };
    let content = v["content"].as_str().unwrap_or_default();
    let (message, _) = state.broadcast(room_name(&room), content);
    json_response(StatusCode::OK, message.to_string())
}

async fn upgrade(
    State(state): State<Arc<BareWs>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let resume_url = format!("ws://{host}/gateway");
    let library_max = MAX_PAYLOAD * 4;
    ws.read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(library_max)
        .max_frame_size(library_max)
        .on_upgrade(move |socket| connection(state, socket, resume_url))
}

/// The router: the gateway and the few HTTP routes a load generator uses (see the module docs).
pub fn router(state: Arc<BareWs>) -> Router {
    Router::new()
        .route("/gateway", get(upgrade))
        .route("/gateway/", get(upgrade))
        .route("/api/v1/session", post(session))
        .route("/api/v1/messages", post(command))
        .route("/api/v1/channels/{name}", get(channel))
        .route("/api/v10/channels/{room}/messages", post(create_message))
        .with_state(state)
}

/// Serves [`router`] on `listener` (TCP_NODELAY on, as axum in chatd) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<BareWs>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// One gateway connection: a writer task draining the queue, this task reading the client's payloads.
async fn connection(state: Arc<BareWs>, socket: WebSocket, resume_url: String) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(PeerShared::default());
    let writer = tokio::spawn(write_loop(sink, rx, Arc::clone(&shared)));
    let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let hello = format!("{{\"heartbeat_interval\":{HEARTBEAT_INTERVAL_MS}}}");
    push(&tx, control(10, &hello));
    let rooms = read_loop(&state, &mut stream, &tx, &shared, id, &resume_url).await;
    if let Some(rooms) = &rooms {
        state.remove(rooms, id);
    }
    // The rooms held clones of the queue's sender; with them and ours gone the writer drains and stops.
    drop(tx);
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_WAIT * 2, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Reads payloads until the client leaves; returns the rooms the connection was added to, if it identified.
async fn read_loop(
    state: &Arc<BareWs>,
    stream: &mut SplitStream<WebSocket>,
    tx: &mpsc::UnboundedSender<Out>,
    shared: &Arc<PeerShared>,
    id: u64,
    resume_url: &str,
) -> Option<Vec<String>> {
    let mut rooms: Option<Vec<String>> = None;
    while let Some(msg) = stream.next().await {
        let bytes = match msg {
            Ok(Message::Text(text)) => Bytes::from(text),
            Ok(Message::Binary(bytes)) => bytes,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => break,
        };
        let Ok(payload) = serde_json::from_slice::<Value>(&bytes) else {
            let _ = tx.send(Out::Close(4002, "Error while decoding payload."));
            break;
        };
        match payload["op"].as_u64() {
            Some(1) => {
                push(tx, control(11, "null"));
            }
            Some(2) if rooms.is_none() => {
                let token = payload["d"]["token"].as_str().unwrap_or_default();
                let joined = state.rooms_of(token);
                let seq = state.seq.load(Ordering::SeqCst);
                let user = token.strip_prefix("Bot ").unwrap_or(token);
                let ready = json!({
                    "v": 10,
                    "user": { "id": (id + 2).to_string(), "username": user, "discriminator": "0", "bot": false },
                    "guilds": [],
                    "session_id": format!("bare-{id}"),
                    "resume_gateway_url": resume_url,
                });
                // READY is queued before the connection joins its rooms, so it is the first dispatch it gets.
                push(tx, dispatch(seq, "READY", &ready.to_string()));
                state.add(&joined, id, tx, shared);
                rooms = Some(joined);
            }
            Some(2) => {
                let _ = tx.send(Out::Close(4005, "Already authenticated."));
                break;
            }
            Some(_) => {}
            None => {
                let _ = tx.send(Out::Close(4002, "Error while decoding payload."));
                break;
            }
        }
    }
    rooms
}

/// Queues an uncounted frame (Hello, heartbeat ACK, READY).
fn push(tx: &mpsc::UnboundedSender<Out>, text: String) {
    let _ = tx.send(Out::Frame {
        text: text.into(),
        counted: false,
    });
}

/// Waits until the connection's queue has passed the cap.
async fn over_cap(shared: &PeerShared) {
    loop {
        if shared.over.load(Ordering::Relaxed) {
            return;
        }
        shared.wake.notified().await;
    }
}

/// Drains the queue into the socket as chatd's gateway does: each frame fed, the socket flushed when the
/// queue is empty, a full queue closed with 4000 ahead of what is queued.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    shared: Arc<PeerShared>,
) {
    let close_with = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    };
    let full = || close_with(4000, "Outbound buffer full: resume.");
    loop {
        let out = tokio::select! {
            biased;
            () = over_cap(&shared) => Out::Close(4000, "Outbound buffer full: resume."),
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
        };
        match out {
            Out::Frame { text, counted } => {
                let n = text.len();
                let sent = tokio::select! {
                    biased;
                    () = over_cap(&shared) => {
                        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(full())).await;
                        break;
                    }
                    sent = sink.feed(Message::Text(text)) => sent,
                };
                if counted {
                    shared.queued.fetch_sub(n, Ordering::Relaxed);
                }
                if sent.is_err() {
                    break;
                }
                if rx.is_empty() {
                    let flushed = tokio::select! {
                        biased;
                        () = over_cap(&shared) => {
                            let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(full())).await;
                            break;
                        }
                        flushed = sink.flush() => flushed,
                    };
                    if flushed.is_err() {
                        break;
                    }
                }
            }
            Out::Close(code, reason) => {
                let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(close_with(code, reason))).await;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_from_token_and_joins() {
        let state = BareWs::new();
        assert_eq!(state.rooms_of("u1"), vec!["all"]);
        assert_eq!(state.rooms_of("Bot u1:room7"), vec!["room7"]);
        state.join("u2", "fan");
        assert_eq!(state.rooms_of("Bot u2"), vec!["fan"]);
        state.join("u3:x", "fan");
        assert_eq!(state.rooms_of("u3:x"), vec!["fan", "x"]);
    }

    #[test]
    fn frames_in_discord_order() {
        assert_eq!(
            dispatch(3, "READY", "{}"),
            r#"{"op":0,"s":3,"t":"READY","d":{}}"#
        );
        assert_eq!(
            control(11, "null"),
            r#"{"op":11,"s":null,"t":null,"d":null}"#
        );
    }
}
