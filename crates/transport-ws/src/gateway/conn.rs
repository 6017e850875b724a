//! One gateway connection: Hello, heartbeats, Identify or Resume, then the user's stream as dispatches.
//!
//! The socket is split: this task reads client payloads and follows the stream, and a writer task drains a
//! queue into the socket. The queue counts the bytes of stream dispatches; when they pass
//! `Settings::outbound_cap` the connection is closed with a resumable code, and the client resumes from the
//! last `s` it got, so a slow consumer costs bounded memory and loses nothing. READY, GUILD_CREATE and a
//! Resume's replay are not capped that way: a replay waits for the queue to drain instead.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chat_core::{ChannelKind, ClientId, Command, Event, SpaceId, Status, UserId};
use chat_engine::{Cursor, EngineError, Session, StreamRead};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Shared;
use super::frame::{self, close, intents, op};
use crate::model;

/// Events read from the stream at a time.
const READ_LIMIT: usize = 256;
/// How long one wait on the stream lasts before it is renewed.
const WAIT: Duration = Duration::from_secs(30);
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Slack on top of 1.5 heartbeat intervals before a silent connection counts as a zombie.
const HEARTBEAT_SLACK: Duration = Duration::from_secs(1);
/// The window of the client payload rate limit (and of the presence limit).
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Presence Updates (op 3) a connection may send in [`RATE_WINDOW`], as on Discord; one more closes the
/// connection with 4008. A presence goes to every peer of the user, so it has a limit of its own, apart from
/// the user's message rate: chatting fast never costs a presence update, nor the reverse. The presence an
/// Identify carries is part of the Identify and does not count.
const PRESENCES_PER_WINDOW: u32 = 5;
/// How long a Resume's replay waits for a full queue to drain before giving up on the client.
const REPLAY_STALL: Duration = Duration::from_secs(30);
/// How long READY has the socket to itself before the first GUILD_CREATE is queued (see `Conn::identify`).
const READY_ALONE: Duration = Duration::from_millis(50);
/// The least time a connection gets to identify or resume (see [`identify_deadline`]).
const IDENTIFY_FLOOR: Duration = Duration::from_secs(10);

/// When a connection that has been without a session since `since` (it opened, or its session was
/// invalidated with op 9) is closed with 4003: two heartbeat intervals later, and never sooner than
/// [`IDENTIFY_FLOOR`]. Heartbeating alone does not hold a socket open past it. Two intervals are far more
/// than a library needs (they identify on Hello), and the floor covers the waits the protocol asks for:
/// Discord tells clients to wait 1 to 5 s before identifying again after op 9, and libraries space their
/// shards' identifies 5 s apart. With the default 41.25 s interval this is 82.5 s.
pub(crate) fn identify_deadline(since: Instant, interval: Duration) -> Instant {
    let window = interval.saturating_mul(2).max(IDENTIFY_FLOOR);
    since
        .checked_add(window)
        .or_else(|| since.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(since)
}

/// When a connection that last heartbeat at `last` is a zombie: 1.5 intervals and a little slack later.
pub(crate) fn heartbeat_deadline(last: Instant, interval: Duration) -> Instant {
    let window = (interval.saturating_mul(3) / 2).saturating_add(HEARTBEAT_SLACK);
    // An interval too large to add waits a day at a time instead of overflowing.
    last.checked_add(window)
        .or_else(|| last.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(last)
}

/// Counts the connection in `chatd_connections` for as long as it lives, however its task ends.
struct Counted(metrics::Gauge);

impl Counted {
    fn new(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Client payloads in the current fixed window of [`RATE_WINDOW`].
#[derive(Debug)]
pub(crate) struct RateWindow {
    start: Instant,
    count: u32,
}

impl RateWindow {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            start: now,
            count: 0,
        }
    }

    /// Counts one payload at `now`; false when it is over `limit` in the window.
    pub(crate) fn admit(&mut self, now: Instant, limit: u32) -> bool {
        if now.duration_since(self.start) >= RATE_WINDOW {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= limit
    }
}

/// The session id of an identified connection: it names only durable things (the client, the log's epoch,
/// and the intents identified with, which a Resume does not repeat), so that a Resume works on any connection
/// and after a server restart, as long as the log's epoch is the same.
pub(crate) fn session_id(client: ClientId, epoch: u64, intents: u64) -> String {
    format!("{client}-{epoch}-{intents}")
}

/// `(client, epoch, intents)` of a session id.
pub(crate) fn parse_session_id(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.split('-');
    let client = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    let intents = parts.next()?.parse().ok()?;
    if parts.next().is_some() || intents & !intents::SESSION != 0 {
        return None;
    }
    Some((client, epoch, intents))
}

/// What the writer task sends.
enum Out {
    /// A frame; `counted` ones are stream dispatches whose bytes count against the outbound cap.
    Frame { text: Utf8Bytes, counted: bool },
    /// A close frame after everything queued before it.
    Close(u16, &'static str),
    /// Answered once everything queued before it has been written and flushed to the socket.
    Flushed(oneshot::Sender<()>),
}

type Read = Pin<Box<dyn Future<Output = Result<StreamRead, EngineError>> + Send>>;

/// An identified connection's place in its stream.
struct Live {
    session: Session,
    intents: u64,
    cursor: Cursor,
    /// The live-event generation of the last read, so that the next wait also returns the typing and presence
    /// events that came between two waits.
    generation: Option<u64>,
}

struct Conn {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Out>,
    /// Closes at once, ahead of the queue (a full queue, a stalled replay).
    urgent: Option<oneshot::Sender<(u16, &'static str)>>,
    queued: Arc<AtomicUsize>,
    resume_url: String,
    /// The base of attachment URLs (see [`crate::model::base_url`]).
    base: Option<String>,
    last_heartbeat: Instant,
    /// Since when the connection has had no session (it opened, or op 9 ended it); `None` while it has one.
    unidentified_since: Option<Instant>,
    rate: RateWindow,
    /// Presence Updates in the current window (see [`PRESENCES_PER_WINDOW`]).
    presence_rate: RateWindow,
    live: Option<Live>,
    /// The `s` of the last dispatch queued: replies that are not log events (member chunks) carry it.
    last_s: u64,
    /// The session presence was raised for (Connect), to lower at the end (Disconnect).
    connected: Option<Session>,
}

/// Runs one connection to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    socket: WebSocket,
    resume_url: String,
    base: Option<String>,
    version_ok: bool,
) {
    let _counted = Counted::new(&shared.connections);
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let (urgent_tx, urgent_rx) = oneshot::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_loop(sink, rx, urgent_rx, Arc::clone(&queued)));
    let now = Instant::now();
    let mut conn = Conn {
        shared: Arc::clone(&shared),
        tx,
        urgent: Some(urgent_tx),
        queued,
        resume_url,
        base,
        last_heartbeat: now,
        unidentified_since: Some(now),
        rate: RateWindow::new(now),
        presence_rate: RateWindow::new(now),
        live: None,
        last_s: 0,
        connected: None,
    };
    let interval =
        u64::try_from(shared.settings.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
    // A temporary: a `Value` bound here would live, with its map, as long as the connection.
    conn.control(
        op::HELLO,
        &json!({ "heartbeat_interval": interval }).to_string(),
    );
    if version_ok {
        conn.serve(&mut stream).await;
    } else {
        let _ = conn.close(close::INVALID_API_VERSION, "Invalid API version.");
    }
    let connected = conn.connected.take();
    // Dropping the connection drops the queue's sender: the writer sends what is queued and stops.
    drop(conn);
    if let Some(session) = connected {
        // Presence is a courtesy: the engine may be shutting down already. Boxed, like the handlers in
        // `serve`, so that this task's future is not sized for it.
        let _ = Box::pin(shared.engine.command(&session, Command::Disconnect, None)).await;
    }
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_WAIT * 2, &mut writer)
        .await
        .is_err()
    {
        // A peer that takes nothing keeps a write pending forever: drop the socket instead.
        writer.abort();
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    urgent: oneshot::Receiver<(u16, &'static str)>,
    queued: Arc<AtomicUsize>,
) {
    let mut urgent = Some(urgent);
    let close_with = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    };
    loop {
        let out = tokio::select! {
            biased;
            (code, reason) = urgent_close(&mut urgent) => Out::Close(code, reason),
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
                    (code, reason) = urgent_close(&mut urgent) => {
                        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(close_with(code, reason))).await;
                        break;
                    }
                    sent = sink.feed(Message::Text(text)) => sent,
                };
                if counted {
                    queued.fetch_sub(n, Ordering::Relaxed);
                }
                if sent.is_err() {
                    break;
                }
                // Also flushed after each frame that is not a stream dispatch (Hello, READY, each
                // GUILD_CREATE): the library's write buffer keeps the capacity of the most it ever held,
                // and READY with the GUILD_CREATEs queued behind it would leave it that large on every
                // idle connection.
                if rx.is_empty() || !counted {
                    let flushed = tokio::select! {
                        biased;
                        (code, reason) = urgent_close(&mut urgent) => {
                            let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(close_with(code, reason))).await;
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
            Out::Flushed(done) => {
                // Every frame before this one was flushed after it was written (uncounted frames always
                // are; a counted one when the queue ran empty), but a flush costs nothing when there is
                // nothing left, and it keeps the promise independent of that rule.
                if sink.flush().await.is_err() {
                    break;
                }
                let _ = done.send(());
            }
        }
    }
    // Flushes what is left: when the client closed first, the library's echo of its close frame, which
    // clients wait for before they reconnect.
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
}

/// Waits for an urgent close; forever once its sender is gone without sending (a oneshot must not be polled
/// again after it completed).
async fn urgent_close(
    urgent: &mut Option<oneshot::Receiver<(u16, &'static str)>>,
) -> (u16, &'static str) {
    if let Some(rx) = urgent {
        match rx.await {
            Ok(close) => {
                *urgent = None;
                return close;
            }
            Err(_) => *urgent = None,
        }
    }
    std::future::pending().await
}

/// Waits on the stream read in flight, or forever when there is none.
async fn next_read(pending: &mut Option<Read>) -> Result<StreamRead, EngineError> {
    match pending {
        Some(read) => read.await,
        None => std::future::pending().await,
    }
}

impl Conn {
    fn push(&self, text: String, counted: bool) {
        if counted {
            self.queued.fetch_add(text.len(), Ordering::Relaxed);
        }
        let _ = self.tx.send(Out::Frame {
            text: text.into(),
            counted,
        });
    }

    fn control(&self, op: u64, d: &str) {
        self.push(frame::control(op, d), false);
    }

    /// Queues a close after everything queued; the connection ends.
    fn close(&self, code: u16, reason: &'static str) -> ControlFlow<()> {
        tracing::debug!(code, reason, "gateway connection closed");
        let _ = self.tx.send(Out::Close(code, reason));
        ControlFlow::Break(())
    }

    /// Closes ahead of everything queued.
    fn close_now(&mut self, code: u16, reason: &'static str) -> ControlFlow<()> {
        tracing::debug!(code, reason, "gateway connection closed ahead of its queue");
        if let Some(urgent) = self.urgent.take() {
            let _ = urgent.send((code, reason));
        }
        ControlFlow::Break(())
    }

    /// Queues a stream dispatch; past the cap, closes the connection (resumably).
    fn push_counted(&mut self, text: Utf8Bytes) -> ControlFlow<()> {
        let n = text.len();
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.shared.settings.outbound_cap {
            return self.close_now(close::UNKNOWN_ERROR, "Outbound buffer full: resume.");
        }
        let _ = self.tx.send(Out::Frame {
            text,
            counted: true,
        });
        ControlFlow::Continue(())
    }

    async fn serve(&mut self, stream: &mut SplitStream<WebSocket>) {
        let mut closing = self.shared.closing.subscribe();
        let interval = self.shared.settings.heartbeat_interval;
        // The stream read in flight, kept outside `self` so that `&self` stays shareable across awaits.
        let mut pending: Option<Read> = None;
        // The handlers below (`inbound`, `on_read`) are boxed: their futures (Identify, Resume, rendering)
        // are several KiB, and awaited inline they would size every connection's task for them while it
        // sits idle in the `select!`. A box per payload or read costs far less than that per connection.
        loop {
            let deadline = heartbeat_deadline(self.last_heartbeat, interval);
            self.unidentified_since = match (&self.live, self.unidentified_since) {
                (Some(_), _) => None,
                (None, since) => Some(since.unwrap_or_else(Instant::now)),
            };
            let identify_by = self
                .unidentified_since
                .map(|since| identify_deadline(since, interval));
            let flow = tokio::select! {
                biased;
                () = async {
                    let _ = closing.wait_for(|c| *c).await;
                } => {
                    self.control(op::RECONNECT, "null");
                    self.close(close::UNKNOWN_ERROR, "Server restarting: resume.")
                }
                msg = stream.next() => match msg {
                    Some(Ok(msg)) => Box::pin(self.inbound(msg)).await,
                    Some(Err(_)) => {
                        // Over the library's size limit, or a broken frame: the payload could not be decoded.
                        self.close(close::DECODE_ERROR, "Error while decoding payload.")
                    }
                    None => ControlFlow::Break(()),
                },
                read = next_read(&mut pending) => {
                    pending = None;
                    Box::pin(self.on_read(read)).await
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.close(close::UNKNOWN_ERROR, "Heartbeat timed out: resume.")
                }
                () = async {
                    match identify_by {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.close(close::NOT_AUTHENTICATED, "Not authenticated: identify timed out.")
                }
            };
            if flow.is_break() {
                return;
            }
            if pending.is_none()
                && let Some(live) = &self.live
            {
                let engine = self.shared.engine.clone();
                let (session, cursor, generation) = (live.session, live.cursor, live.generation);
                pending = Some(Box::pin(async move {
                    engine
                        .wait_from(&session, Some(cursor), READ_LIMIT, WAIT, generation)
                        .await
                }));
            }
        }
    }

    async fn on_read(&mut self, read: Result<StreamRead, EngineError>) -> ControlFlow<()> {
        let read = match read {
            Ok(read) => read,
            // The client logged out or expired: its token is no longer valid.
            Err(EngineError::InvalidToken) => {
                return self.close(close::AUTHENTICATION_FAILED, "Authentication failed.");
            }
            Err(_) => return self.close(close::UNKNOWN_ERROR, "Server unavailable: resume."),
        };
        let Some(live) = &self.live else {
            return ControlFlow::Continue(());
        };
        let (user, intents) = (live.session.user, live.intents);
        if read.reset {
            // Events were skipped (retention passed this connection by): the client must start afresh.
            self.live = None;
            self.control(op::INVALID_SESSION, "false");
            return ControlFlow::Continue(());
        }
        for event in &read.events {
            let stale = !event.is_durable() && event.seq < self.last_s;
            for text in self.frames(event, user, intents).await {
                let text = match stale.then(|| frame::with_seq(&text, self.last_s)) {
                    Some(Some(newer)) => newer.into(),
                    _ => text,
                };
                self.push_counted(text)?;
            }
            self.last_s = self.last_s.max(event.seq);
        }
        if let Some(live) = &mut self.live {
            live.cursor = read.cursor;
            live.generation = Some(read.live);
        }
        ControlFlow::Continue(())
    }

    /// The frames one event gives this connection.
    async fn frames(&self, event: &Arc<Event>, user: UserId, intents: u64) -> Vec<Utf8Bytes> {
        let rendered = self.shared.cache.get(&self.shared.ctx, event).await;
        let mut frames = Vec::new();
        for d in &rendered.dispatches {
            if let Some(text) = d.resolve(&self.shared.ctx, user, intents).await {
                // Rendered once for every connection with relative attachment URLs; this one's base here.
                let absolute = self
                    .base
                    .as_deref()
                    .filter(|_| d.has_attachment_urls())
                    .and_then(|base| crate::model::absolute_attachment_urls(text.as_str(), base));
                frames.push(absolute.map_or(text, Utf8Bytes::from));
            }
        }
        frames
    }

    async fn inbound(&mut self, msg: Message) -> ControlFlow<()> {
        let bytes = match msg {
            Message::Text(text) => bytes::Bytes::from(text),
            // Tolerated: JSON in a binary frame reads the same.
            Message::Binary(bytes) => bytes,
            Message::Ping(_) | Message::Pong(_) => return ControlFlow::Continue(()),
            Message::Close(_) => return ControlFlow::Break(()),
        };
        let limit = self.shared.settings.events_per_minute;
        if !self.rate.admit(Instant::now(), limit) {
            return self.close(close::RATE_LIMITED, "You are being rate limited.");
        }
        if bytes.len() > self.shared.settings.max_payload {
            return self.close(close::DECODE_ERROR, "Payload too large.");
        }
        let Ok(payload) = serde_json::from_slice::<frame::Inbound>(&bytes) else {
            return self.close(close::DECODE_ERROR, "Error while decoding payload.");
        };
        let Some(code) = payload.op.as_u64() else {
            return self.close(close::DECODE_ERROR, "Error while decoding payload.");
        };
        match code {
            op::HEARTBEAT => {
                self.last_heartbeat = Instant::now();
                self.control(op::HEARTBEAT_ACK, "null");
                ControlFlow::Continue(())
            }
            op::IDENTIFY => self.identify(payload.d).await,
            op::RESUME => self.resume(payload.d).await,
            op::PRESENCE_UPDATE
            | op::VOICE_STATE_UPDATE
            | op::REQUEST_GUILD_MEMBERS
            | op::REQUEST_SOUNDBOARD_SOUNDS
                if self.live.is_none() =>
            {
                self.close(close::NOT_AUTHENTICATED, "Not authenticated.")
            }
            op::PRESENCE_UPDATE => {
                // Discord answers an op 3 with nothing, so a refused one cannot be answered: it closes the
                // connection with 4008, as Discord does past its gateway limits. Libraries resume on 4008
                // (it is not one of the codes they give up on), so nothing of the session is lost.
                if !self
                    .presence_rate
                    .admit(Instant::now(), PRESENCES_PER_WINDOW)
                {
                    return self.close(
                        close::RATE_LIMITED,
                        "You are being rate limited: at most 5 presence updates a minute.",
                    );
                }
                match serde_json::from_value::<frame::PresenceUpdate>(payload.d) {
                    Ok(p) => self.presence(&p).await,
                    Err(_) => self.close(close::DECODE_ERROR, "Error while decoding payload."),
                }
            }
            op::REQUEST_GUILD_MEMBERS => {
                match serde_json::from_value::<frame::RequestMembers>(payload.d) {
                    Ok(r) => self.request_members(r).await,
                    Err(_) => self.close(close::DECODE_ERROR, "Error while decoding payload."),
                }
            }
            // No voice, no soundboard: accepted and ignored.
            op::VOICE_STATE_UPDATE | op::REQUEST_SOUNDBOARD_SOUNDS => ControlFlow::Continue(()),
            _ => self.close(close::UNKNOWN_OPCODE, "Unknown opcode."),
        }
    }

    async fn authenticate(&self, token: &str) -> Result<Session, ControlFlow<()>> {
        let token = token.trim();
        let token = token.strip_prefix("Bot ").unwrap_or(token);
        match self.shared.engine.authenticate(token).await {
            Ok(session) => Ok(session),
            Err(EngineError::InvalidToken) => {
                Err(self.close(close::AUTHENTICATION_FAILED, "Authentication failed."))
            }
            Err(_) => Err(self.close(close::UNKNOWN_ERROR, "Server unavailable.")),
        }
    }

    async fn identify(&mut self, d: Value) -> ControlFlow<()> {
        if self.live.is_some() {
            return self.close(close::ALREADY_AUTHENTICATED, "Already authenticated.");
        }
        let Ok(identify) = serde_json::from_value::<frame::Identify>(d) else {
            return self.close(close::DECODE_ERROR, "Error while decoding payload.");
        };
        let Some(mut intents) = frame::parse_intents(identify.intents.as_ref()) else {
            return self.close(close::INVALID_INTENTS, "Invalid intent(s).");
        };
        if identify.chatd_irc == Some(true) {
            intents |= intents::CHATD_IRC;
        }
        // Out-of-range or malformed values fall back to Discord's default rather than refusing the session.
        let large_threshold = identify
            .large_threshold
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .and_then(|t| usize::try_from(t).ok())
            .map_or(model::LARGE_THRESHOLD_DEFAULT, |t| {
                t.clamp(model::LARGE_THRESHOLD_DEFAULT, model::LARGE_THRESHOLD_MAX)
            });
        let Ok(shard) = frame::shard_ok(identify.shard.as_ref()) else {
            return self.close(close::INVALID_SHARD, "Invalid shard.");
        };
        let session = match self.authenticate(&identify.token).await {
            Ok(session) => session,
            Err(flow) => return flow,
        };
        let user = session.user;
        // Taken before the snapshot: live events from here on reach the first wait, even those that come
        // before it starts (READY and GUILD_CREATE are sent in between).
        let generation = self.shared.engine.live_generation(user);
        let texts = Arc::clone(&self.shared.ctx.channel_texts);
        let snapshot = self
            .shared
            .engine
            .query(move |core| ready_snapshot(core, user, intents, large_threshold, &texts))
            .await;
        let Ok(Some(snap)) = snapshot else {
            return self.close(close::UNKNOWN_ERROR, "Server unavailable.");
        };
        let _ = self.shared.ctx.network.set(snap.network);
        let epoch = self.shared.engine.epoch();
        let ready = json!({
            "v": 10,
            "user": snap.user,
            "guilds": snap.guild_ids.iter().map(|id| json!({"id": id.to_string(), "unavailable": true})).collect::<Vec<_>>(),
            "session_id": session_id(session.client, epoch, intents),
            "session_type": "normal",
            "resume_gateway_url": self.resume_url,
            "application": { "id": user.to_string(), "flags": 0 },
            "private_channels": snap.private_channels,
            "read_state": { "version": snap.seq, "partial": false, "entries": snap.read_state },
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
        });
        let mut ready = ready;
        if let (Some(shard), Some(map)) = (shard, ready.as_object_mut()) {
            map.insert("shard".into(), json!(shard));
        }
        self.push(
            frame::dispatch(snap.seq, "READY", &ready.to_string()),
            false,
        );
        let guild_creates = intents & intents::GUILDS != 0 && !snap.guilds.is_empty();
        if guild_creates {
            self.ready_alone().await;
            // Written here, off the engine's writer: the channel lists are cached text.
            for guild in &snap.guilds {
                let text = frame::dispatch_with(snap.seq, "GUILD_CREATE", guild.len_hint(), |d| {
                    guild.write_json(d);
                });
                self.push(text, false);
            }
        }
        self.last_s = snap.seq;
        self.live = Some(Live {
            session,
            intents,
            cursor: Cursor {
                epoch,
                seq: snap.seq,
            },
            generation: Some(generation),
        });
        self.connect(session).await;
        if let Some(presence) = &identify.presence {
            return self.presence(presence).await;
        }
        ControlFlow::Continue(())
    }

    /// Lets READY reach the client on its own before any GUILD_CREATE follows it, as Discord's READY does.
    ///
    /// Frames are already written one WebSocket frame each, but a client that reads its socket once for
    /// several frames handles them in one go, and a popular JavaScript library then handles a GUILD_CREATE
    /// before the READY it read with it. Nothing in TCP can make two writes arrive in two reads: the reader
    /// decides how much it takes. What the server can do is make READY the only thing there is to read for a
    /// while: it waits until READY has left its buffers (written and flushed to the kernel; on loopback it is
    /// then in the client's receive buffer) and then for [`READY_ALONE`] before it queues the GUILD_CREATEs.
    /// 50 ms is several scheduler periods (a client woken by READY's arrival runs and reads it well within
    /// that on a loaded machine) and still below what Discord itself takes between READY and the first lazy
    /// GUILD_CREATE, so a client waits no longer than it would there. Live events are not lost meanwhile:
    /// the stream's position and live generation were taken before the snapshot.
    async fn ready_alone(&self) {
        let (done, flushed) = oneshot::channel();
        if self.tx.send(Out::Flushed(done)).is_ok() {
            // The writer ends only with the connection; a dropped answer means there is no one to wait for.
            let _ = flushed.await;
        }
        // A shutdown does not wait: the connection must reach its Reconnect and close while the server
        // still runs (it does not wait for upgraded connections).
        let mut closing = self.shared.closing.subscribe();
        tokio::select! {
            () = tokio::time::sleep(READY_ALONE) => {}
            _ = closing.wait_for(|c| *c) => {}
        }
    }

    async fn connect(&mut self, session: Session) {
        if self.connected.is_none() {
            // Presence is a courtesy: a refusal does not fail the connection.
            let _ = self
                .shared
                .engine
                .command(&session, Command::Connect, None)
                .await;
            self.connected = Some(session);
        }
    }

    async fn resume(&mut self, d: Value) -> ControlFlow<()> {
        if self.live.is_some() {
            return self.close(close::ALREADY_AUTHENTICATED, "Already authenticated.");
        }
        let Ok(resume) = serde_json::from_value::<frame::Resume>(d) else {
            return self.close(close::DECODE_ERROR, "Error while decoding payload.");
        };
        let session = match self.authenticate(&resume.token).await {
            Ok(session) => session,
            Err(flow) => return flow,
        };
        let epoch = self.shared.engine.epoch();
        let intents = parse_session_id(&resume.session_id)
            .filter(|(client, e, _)| *client == session.client.get() && *e == epoch)
            .map(|(_, _, intents)| intents);
        let seq = resume.seq.as_ref().and_then(Value::as_u64);
        let (Some(intents), Some(seq)) = (intents, seq) else {
            self.control(op::INVALID_SESSION, "false");
            return ControlFlow::Continue(());
        };
        let user = session.user;
        let mut cursor = Cursor { epoch, seq };
        let mut generation: Option<u64>;
        let stalled_at = Instant::now() + REPLAY_STALL;
        loop {
            let read = match self
                .shared
                .engine
                .read(&session, Some(cursor), READ_LIMIT)
                .await
            {
                Ok(read) => read,
                Err(EngineError::InvalidToken) => {
                    return self.close(close::AUTHENTICATION_FAILED, "Authentication failed.");
                }
                Err(_) => return self.close(close::UNKNOWN_ERROR, "Server unavailable."),
            };
            if read.reset {
                self.control(op::INVALID_SESSION, "false");
                return ControlFlow::Continue(());
            }
            generation = Some(read.live);
            if read.events.is_empty() {
                cursor = read.cursor;
                break;
            }
            for event in &read.events {
                for text in self.frames(event, user, intents).await {
                    self.queued.fetch_add(text.len(), Ordering::Relaxed);
                    let _ = self.tx.send(Out::Frame {
                        text,
                        counted: true,
                    });
                }
            }
            cursor = read.cursor;
            // A long replay waits for the client to take it in rather than queueing all of it.
            while self.queued.load(Ordering::Relaxed) > self.shared.settings.outbound_cap / 2 {
                if Instant::now() > stalled_at {
                    return self.close_now(close::UNKNOWN_ERROR, "Outbound buffer full: resume.");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.push(frame::dispatch(cursor.seq, "RESUMED", "{}"), false);
        self.last_s = cursor.seq;
        self.last_heartbeat = Instant::now();
        self.live = Some(Live {
            session,
            intents,
            cursor,
            generation,
        });
        self.connect(session).await;
        ControlFlow::Continue(())
    }

    /// Applies a Presence Update (or an Identify's presence). The gateway has no reply to op 3, so a
    /// refusal closes the connection: invalid activities with 4002, a spent rate limit with 4008.
    async fn presence(&self, p: &frame::PresenceUpdate) -> ControlFlow<()> {
        let Some(live) = &self.live else {
            return ControlFlow::Continue(());
        };
        let session = live.session;
        let status = match p.status.as_deref() {
            Some("idle") => Some(Status::Idle),
            Some("dnd") => Some(Status::Dnd),
            Some("invisible" | "offline") => Some(Status::Invisible),
            // "online" (or nothing) clears the override: presence follows the live connections again.
            _ => None,
        };
        let mut commands = vec![Command::SetStatus { status }];
        if let Some(activities) = &p.activities {
            // Types Discord does not define are left out rather than refused.
            let activities = activities
                .iter()
                .filter_map(frame::Activity::to_core)
                .collect();
            commands.push(Command::SetActivities { activities });
        }
        // `afk` is read and not acted on: Discord uses it only to route push notifications to a client's
        // other devices, and shows nothing of it to anyone. Taking it for an away message left a durable
        // "afk" that no later update cleared.
        for command in commands {
            match self.shared.engine.command(&session, command, None).await {
                Ok(_) => {}
                Err(EngineError::RateLimited { .. }) => {
                    return self.close(close::RATE_LIMITED, "You are being rate limited.");
                }
                Err(EngineError::Refused(_)) => {
                    return self.close(close::DECODE_ERROR, "Invalid presence.");
                }
                Err(EngineError::InvalidToken) => {
                    return self.close(close::AUTHENTICATION_FAILED, "Authentication failed.");
                }
                Err(_) => return self.close(close::UNKNOWN_ERROR, "Server unavailable: resume."),
            }
        }
        ControlFlow::Continue(())
    }

    async fn request_members(&mut self, r: frame::RequestMembers) -> ControlFlow<()> {
        let Some(live) = &self.live else {
            return ControlFlow::Continue(());
        };
        let viewer = live.session.user;
        let Some(guild) = frame::snowflake(&r.guild_id) else {
            return self.close(close::DECODE_ERROR, "Error while decoding payload.");
        };
        let ids: Option<Vec<u64>> = match &r.user_ids {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => Some(list.iter().filter_map(frame::snowflake).collect()),
            Some(one) => Some(frame::snowflake(one).into_iter().collect()),
        };
        let query = r.query.clone().unwrap_or_default().to_ascii_lowercase();
        let limit = match r.limit {
            Some(0) | None => usize::MAX,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let ids_for_core = ids.clone();
        let found = self
            .shared
            .engine
            .query(move |core| {
                let space = core.space(SpaceId::from_raw(guild)?)?;
                space.member(viewer)?;
                let members: Vec<(u64, Value)> = space
                    .members()
                    .filter(|m| match &ids_for_core {
                        Some(ids) => ids.contains(&m.user.get()),
                        None => core.user(m.user).is_some_and(|u| {
                            u.nick.to_ascii_lowercase().starts_with(&query)
                                || m.nick
                                    .as_ref()
                                    .is_some_and(|n| n.to_ascii_lowercase().starts_with(&query))
                        }),
                    })
                    .take(limit)
                    .map(|m| (m.user.get(), model::member(core, space, m)))
                    .collect();
                Some(members)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let not_found: Vec<String> = ids
            .unwrap_or_default()
            .into_iter()
            .filter(|id| !found.iter().any(|(u, _)| u == id))
            .map(|id| id.to_string())
            .collect();
        let members: Vec<Value> = found.into_iter().map(|(_, m)| m).collect();
        let d = json!({
            "guild_id": guild.to_string(),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": not_found,
            "nonce": r.nonce,
        });
        let text = frame::dispatch(self.last_s, "GUILD_MEMBERS_CHUNK", &d.to_string());
        self.push_counted(text.into())
    }
}

/// What READY and the GUILD_CREATEs after it show, read in one query so that they and their seq agree.
struct Snapshot {
    seq: u64,
    network: SpaceId,
    user: Value,
    guild_ids: Vec<SpaceId>,
    guilds: Vec<model::GuildCreate>,
    private_channels: Vec<Value>,
    read_state: Vec<Value>,
}

fn ready_snapshot(
    core: &chat_core::Core,
    user: UserId,
    wanted: u64,
    large_threshold: usize,
    texts: &model::ChannelTexts,
) -> Option<Snapshot> {
    let u = core.user(user)?;
    let network = core.network();
    let mut guild_ids: Vec<SpaceId> = u.spaces().collect();
    // The network first, as libraries show guilds in the order they arrive.
    guild_ids.sort_by_key(|s| (*s != network, *s));
    let guilds = guild_ids
        .iter()
        .filter_map(|id| core.space(*id))
        .map(|space| {
            let mut guild = model::guild_create_cached(core, space, user, large_threshold, texts);
            // With GUILD_PRESENCES, who is online now (Discord leaves the offline out).
            if wanted & intents::GUILD_PRESENCES != 0
                && let Some(map) = guild.guild.as_object_mut()
            {
                let presences: Vec<Value> = space
                    .members()
                    .filter_map(|m| {
                        let status = core.presence(m.user);
                        (!matches!(status, Status::Offline | Status::Invisible)).then(|| {
                            let activities = core.user(m.user).map_or(&[][..], |u| &u.activities);
                            super::render::presence_json(m.user, status, activities)
                        })
                    })
                    .collect();
                map.insert("presences".into(), Value::Array(presences));
            }
            guild
        })
        .collect();
    let private_channels = u
        .joined_channels()
        .filter_map(|c| core.channel(c))
        .filter(|ch| matches!(ch.kind, ChannelKind::Dm | ChannelKind::GroupDm))
        .map(|ch| model::channel(core, ch, user))
        .collect();
    // Where the user's devices have read to in each channel, as Discord gives user accounts (bots ignore it):
    // with each channel's `last_message_id` a client shows unread channels and mention counts.
    let read_state = u
        .joined_channels()
        .filter_map(|c| {
            let state = core.read_state(user, c)?;
            Some(json!({
                "id": c.to_string(),
                "last_message_id": state.last_read.map(|m| m.to_string()),
                "mention_count": state.mention_count(),
            }))
        })
        .collect();
    Some(Snapshot {
        seq: core.last_seq(),
        network,
        user: model::user(u),
        guild_ids,
        guilds,
        private_channels,
        read_state,
    })
}
