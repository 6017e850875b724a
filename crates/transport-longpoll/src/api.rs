//! The routes: authentication, the long-poll stream, commands, and the read-only queries (state, channels,
//! users, history, search, server info).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chat_core::{
    Channel, ChannelId, ChannelKind, ChannelRef, Command, Core, Created, Permissions, Seq, Status,
    UserId,
};
use chat_engine::{Cursor, Engine, HistoryQuery, SearchQuery, Session, StoredMessage};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::Settings;
use crate::error::ApiError;
use crate::render::{self, Cache};
use crate::wire::{self, CommandBody, Credentials, JoinBody, NickBody, PartBody, TopicBody};

/// How long a long-poll client counts as connected after its last poll ended: longer than a client takes to
/// come back with its next poll, so that presence does not flap between polls.
const LINGER: Duration = Duration::from_secs(45);

/// How often clients past their linger are disconnected.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The most events one poll returns, and the default.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 500;

/// The long-poll API: cheap to clone; every clone serves the same state.
#[derive(Clone, Debug)]
pub struct LongPoll {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    settings: Settings,
    cache: Cache,
    /// Becomes true when the server shuts down. A watch rather than a `Notify`: every parked poll waits on it,
    /// and a watch spreads its waiters over several locks where a `Notify` keeps one list behind one mutex.
    closing: watch::Sender<bool>,
    parked: AtomicU64,
    presence: Mutex<HashMap<chat_core::ClientId, Live>>,
    sweeping: AtomicBool,
    /// Metric handles, looked up once rather than by name on every poll.
    parked_gauge: metrics::Gauge,
    wake_seconds: metrics::Histogram,
}

/// A long-poll client's connection state, for presence: polls in flight, and since when it has none.
#[derive(Debug)]
struct Live {
    session: Session,
    polls: u32,
    /// When its last poll ended, if none is in flight.
    idle_since: Option<Instant>,
}

type Api = State<Arc<Inner>>;
type Answer = Result<Response, ApiError>;

impl LongPoll {
    /// Builds the API on an engine.
    pub fn new(engine: Engine, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                settings,
                cache: Cache::new(16_384),
                closing: watch::Sender::new(false),
                parked: AtomicU64::new(0),
                presence: Mutex::new(HashMap::new()),
                sweeping: AtomicBool::new(false),
                parked_gauge: metrics::gauge!("chatd_longpoll_parked"),
                wake_seconds: metrics::histogram!("chatd_longpoll_wake_seconds"),
            }),
        }
    }

    /// Every `/api/v1` route, with CORS applied when origins are configured.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/v1/session", post(session))
            .route("/api/v1/register", post(register))
            .route("/api/v1/login", post(login))
            .route("/api/v1/logout", post(logout))
            .route("/api/v1/state", get(state))
            .route("/api/v1/users/me", get(state))
            .route("/api/v1/messages", get(poll).post(send))
            .route("/api/v1/history", get(history))
            .route("/api/v1/search", get(search))
            .route("/api/v1/channels", get(channels))
            .route("/api/v1/channels/join", post(join))
            .route("/api/v1/channels/part", post(part))
            .route("/api/v1/channels/{name}", get(channel_info))
            .route("/api/v1/channels/{name}/members", get(channel_members))
            .route("/api/v1/channels/{name}/topic", post(topic))
            .route("/api/v1/users/nick", post(nick))
            .route("/api/v1/users/{nick}", get(whois))
            .route("/api/v1/server", get(server))
            .fallback(|| async { ApiError::not_found("No such route").into_response() })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "This route does not take that method",
                )
                .into_response()
            })
            .with_state(Arc::clone(&self.inner));
        match cors(&self.inner.settings.cors_origins) {
            Some(layer) => api.layer(layer),
            None => api,
        }
    }

    /// Answers every parked long-poll now, and every later one at once: for a graceful shutdown.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// How many long-polls are parked right now.
    pub fn parked(&self) -> u64 {
        self.inner.parked.load(Ordering::Relaxed)
    }
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

// --- helpers ------------------------------------------------------------------------------------------------

fn ok_json(value: impl Serialize) -> Answer {
    Ok((StatusCode::OK, axum::Json(value)).into_response())
}

/// A JSON body assembled from already-rendered parts.
fn raw_json(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

impl Inner {
    /// The session a request's bearer token belongs to.
    async fn auth(&self, headers: &HeaderMap) -> Result<Session, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("Missing Authorization: Bearer <token>"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <token>"))?;
        Ok(self.engine.authenticate(token).await?)
    }

    /// Reads and parses a JSON body, refusing it with 413 as soon as it passes the cap (it is never buffered
    /// whole).
    async fn body<T: serde::de::DeserializeOwned>(&self, body: Body) -> Result<T, ApiError> {
        let max = self.settings.max_body;
        let bytes: Bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_big {
                too_large(max)
            } else {
                ApiError::invalid("body", "could not be read")
            }
        })?;
        wire::parse(&bytes)
    }

    async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        Ok(self.engine.query(f).await?)
    }

    fn epoch(&self) -> String {
        self.engine.epoch().to_string()
    }

    /// Marks the client connected while it polls, and for [`LINGER`] after, so that its presence is online
    /// while it follows its stream.
    async fn enter(self: &Arc<Self>, session: Session) {
        let first = {
            let mut live = self.presence.lock().unwrap_or_else(PoisonError::into_inner);
            let first = !live.contains_key(&session.client);
            let entry = live.entry(session.client).or_insert(Live {
                session,
                polls: 0,
                idle_since: None,
            });
            entry.polls += 1;
            entry.idle_since = None;
            first
        };
        if first {
            self.start_sweeper();
            // Presence is a courtesy: a refusal (the client just logged out) does not fail the poll.
            let _ = self.engine.command(&session, Command::Connect, None).await;
        }
    }

    /// Called when a poll ends: the client's linger starts when its last poll in flight ends.
    fn leave(&self, session: Session) {
        let mut live = self.presence.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = live.get_mut(&session.client) {
            entry.polls = entry.polls.saturating_sub(1);
            if entry.polls == 0 {
                entry.idle_since = Some(Instant::now());
            }
        }
    }

    /// Starts, once, the task that disconnects clients whose linger has passed. One sweeper instead of a timer
    /// per finished poll: a poll's end then costs a lock and a store of the time, nothing more.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let gone: Vec<Session> = {
                    let mut live = inner
                        .presence
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let mut gone = Vec::new();
                    live.retain(|_, e| match e.idle_since {
                        Some(at) if e.polls == 0 && at.elapsed() >= LINGER => {
                            gone.push(e.session);
                            false
                        }
                        _ => true,
                    });
                    gone
                };
                for session in gone {
                    let _ = inner
                        .engine
                        .command(&session, Command::Disconnect, None)
                        .await;
                }
            }
        });
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("The request body is over {max} bytes"),
    )
}

/// Leaves the presence tracker when a poll ends, however it ends (answered, failed, or dropped because the
/// client went away).
struct PollGuard {
    inner: Arc<Inner>,
    session: Session,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.inner.parked.fetch_sub(1, Ordering::Relaxed);
        self.inner.parked_gauge.decrement(1.0);
        self.inner.leave(self.session);
    }
}

#[derive(Serialize)]
struct UserOut {
    id: String,
    nick: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    bot: bool,
    guest: bool,
}

fn user_out(core: &Core, user: UserId) -> Option<UserOut> {
    core.user(user).map(|u| UserOut {
        id: u.id.to_string(),
        nick: u.nick.clone(),
        display_name: u.display_name.clone(),
        bot: u.bot,
        guest: u.is_guest(),
    })
}

async fn logged_in(inner: &Inner, login: chat_engine::Login) -> Answer {
    let user = login.session.user;
    let me = inner.query(move |core| user_out(core, user)).await?;
    ok_json(json!({
        "token": login.token,
        "user": me,
        "cursor": login.cursor.seq,
        "epoch": login.cursor.epoch.to_string(),
    }))
}

fn client_name(c: &Credentials) -> String {
    c.client
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "longpoll".into())
}

fn peer(connect: Option<&ConnectInfo<SocketAddr>>) -> Option<std::net::IpAddr> {
    connect.map(|c| c.0.ip())
}

// --- sessions -----------------------------------------------------------------------------------------------

async fn session(State(inner): Api, body: Body) -> Answer {
    let c: Credentials = inner.body(body).await?;
    if c.password.is_some() {
        return Err(ApiError::invalid(
            "password",
            "a guest session takes no password; use /api/v1/register or /api/v1/login",
        ));
    }
    let login = inner
        .engine
        .guest_with_stamp(c.nick.trim(), &client_name(&c), c.hashcash.as_deref())
        .await?;
    logged_in(&inner, login).await
}

async fn register(State(inner): Api, body: Body) -> Answer {
    let c: Credentials = inner.body(body).await?;
    let password = c.password.clone().unwrap_or_default();
    let login = inner
        .engine
        .register(c.nick.trim(), &password, false, &client_name(&c))
        .await?;
    logged_in(&inner, login).await
}

async fn login(
    State(inner): Api,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: Body,
) -> Answer {
    let c: Credentials = inner.body(body).await?;
    let password = c.password.clone().unwrap_or_default();
    let ip = peer(connect.as_ref().map(|e| &e.0));
    let login = inner
        .engine
        .login(c.nick.trim(), &password, &client_name(&c), ip)
        .await?;
    logged_in(&inner, login).await
}

async fn logout(State(inner): Api, headers: HeaderMap) -> Answer {
    let session = inner.auth(&headers).await?;
    let reply = inner
        .engine
        .command(&session, Command::Logout, None)
        .await?;
    ok_json(json!({ "seq": reply.seq }))
}

// --- the stream ---------------------------------------------------------------------------------------------

/// A path segment (`{name}`, `{nick}`), refused as JSON like every other bad input (one that is not UTF-8
/// once decoded would otherwise get axum's plain-text answer).
fn segment(path: Result<Path<String>, PathRejection>, what: &str) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|_| ApiError::invalid(what, "not valid UTF-8 text"))
}

/// A query string's parameters, by name.
trait Params {
    fn value(&self, name: &str) -> Option<&str>;
}

impl Params for HashMap<String, String> {
    fn value(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// The long-poll's parameters: a struct rather than a map, because a poll is the hottest request there is.
#[derive(serde::Deserialize)]
struct PollQuery {
    after: Option<String>,
    epoch: Option<String>,
    timeout: Option<String>,
    limit: Option<String>,
    live: Option<String>,
}

impl Params for PollQuery {
    fn value(&self, name: &str) -> Option<&str> {
        match name {
            "after" => self.after.as_deref(),
            "epoch" => self.epoch.as_deref(),
            "timeout" => self.timeout.as_deref(),
            "limit" => self.limit.as_deref(),
            "live" => self.live.as_deref(),
            _ => None,
        }
    }
}

fn param<'a>(q: &'a impl Params, name: &str) -> Option<&'a str> {
    q.value(name).filter(|v| !v.is_empty())
}

fn number<T: std::str::FromStr>(q: &impl Params, name: &str) -> Result<Option<T>, ApiError> {
    match param(q, name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid(name, "not a number")),
    }
}

fn limit(q: &impl Params, default: usize, max: usize) -> Result<usize, ApiError> {
    match number::<usize>(q, "limit")? {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", format!("must be 1 to {max}"))),
    }
}

async fn poll(
    State(inner): Api,
    headers: HeaderMap,
    q: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let session = inner.auth(&headers).await?;
    let max = inner.settings.max_timeout.as_secs();
    let timeout = match number::<u64>(&q, "timeout")? {
        None => inner.settings.default_timeout,
        Some(s) if s <= max => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::invalid(
                "timeout",
                format!("must be 0 to {max} seconds"),
            ));
        }
    };
    let limit = limit(&q, DEFAULT_LIMIT, MAX_LIMIT)?;
    let epoch = match param(&q, "epoch") {
        None => inner.engine.epoch(),
        Some(e) => e
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid("epoch", "not an epoch"))?,
    };
    let after = number::<Seq>(&q, "after")?.map(|seq| Cursor { epoch, seq });
    // The `live` of the previous answer: typing and presence that came between two polls are returned too.
    let live = number::<u64>(&q, "live")?;

    inner.enter(session).await;
    inner.parked.fetch_add(1, Ordering::Relaxed);
    inner.parked_gauge.increment(1.0);
    let _guard = PollGuard {
        inner: Arc::clone(&inner),
        session,
    };
    let mut closing = inner.closing.subscribe();
    let timeout = if *closing.borrow_and_update() {
        Duration::ZERO
    } else {
        timeout
    };
    let started = Instant::now();
    let read = tokio::select! {
        read = inner.engine.wait_from(&session, after, limit, timeout, live) => read?,
        _ = closing.changed() => inner.engine.read(&session, after, limit).await?,
    };
    let waited = started.elapsed();

    if waited > Duration::from_millis(1)
        && let Some(event) = read.events.first()
    {
        // From the core accepting the event to its answer leaving here: commit, wake-up and rendering.
        inner
            .wake_seconds
            .record(chat_engine::now_ms().saturating_sub(event.ts) as f64 / 1000.0);
    }
    let mut text = String::with_capacity(64 + read.events.len() * 160);
    text.push_str("{\"messages\":[");
    let mut first = true;
    for event in &read.events {
        let Some(json) = inner.cache.render(&inner.engine, event) else {
            continue;
        };
        if !first {
            text.push(',');
        }
        first = false;
        text.push_str(&json);
    }
    text.push_str("],\"cursor\":");
    text.push_str(&read.cursor.seq.to_string());
    text.push_str(",\"epoch\":\"");
    text.push_str(&read.cursor.epoch.to_string());
    text.push_str("\",\"live\":");
    text.push_str(&read.live.to_string());
    if read.reset {
        text.push_str(",\"reset\":true");
    }
    text.push('}');
    Ok(raw_json(text))
}

async fn run(inner: &Inner, session: &Session, command: Command, nonce: Option<String>) -> Answer {
    let reply = inner.engine.command(session, command, nonce).await?;
    let id = match reply.created {
        Some(Created::Message(id)) => Some(id.to_string()),
        Some(Created::Channel(id)) => Some(id.to_string()),
        Some(Created::Space(id)) => Some(id.to_string()),
        Some(Created::Role(id)) => Some(id.to_string()),
        Some(Created::Invite(code)) => Some(code),
        Some(Created::Client(id)) => Some(id.to_string()),
        Some(Created::User { user, .. }) => Some(user.to_string()),
        _ => None,
    };
    ok_json(Ack { seq: reply.seq, id })
}

/// What a command answers: where its events end in the log, and what it made.
#[derive(Serialize)]
struct Ack {
    seq: Seq,
    id: Option<String>,
}

async fn send(State(inner): Api, headers: HeaderMap, body: Body) -> Answer {
    let session = inner.auth(&headers).await?;
    let body: CommandBody = inner.body(body).await?;
    let nonce = body.nonce.clone();
    let command = wire::command(body)?;
    run(&inner, &session, command, nonce).await
}

// --- channels -----------------------------------------------------------------------------------------------

async fn join(State(inner): Api, headers: HeaderMap, body: Body) -> Answer {
    let session = inner.auth(&headers).await?;
    let b: JoinBody = inner.body(body).await?;
    // As everywhere else in this API's channel routes, the `#` may be left out.
    let name = b.channel.trim();
    let channel = if name.starts_with('#') {
        name.to_owned()
    } else {
        format!("#{name}")
    };
    let command = Command::Join {
        channel,
        key: b.key,
    };
    run(&inner, &session, command, None).await
}

async fn part(State(inner): Api, headers: HeaderMap, body: Body) -> Answer {
    let session = inner.auth(&headers).await?;
    let b: PartBody = inner.body(body).await?;
    let command = Command::Part {
        channel: wire::channel_ref(&b.channel),
        reason: b.reason.filter(|r| !r.is_empty()),
    };
    run(&inner, &session, command, None).await
}

async fn topic(
    State(inner): Api,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Answer {
    let session = inner.auth(&headers).await?;
    let name = segment(name, "name")?;
    let b: TopicBody = inner.body(body).await?;
    let command = Command::Topic {
        channel: wire::channel_ref(&name),
        topic: b.topic,
    };
    run(&inner, &session, command, None).await
}

fn resolve(core: &Core, channel: &ChannelRef) -> Option<ChannelId> {
    match channel {
        ChannelRef::Id(id) => core.channel(*id).map(|c| c.id),
        ChannelRef::Name(name) => core.channel_by_name(name).map(|c| c.id),
    }
}

/// A channel the user may look at: a network channel that is not `+s` (or that they are on), a DM of theirs,
/// or a space channel they can view.
fn visible<'a>(core: &'a Core, user: UserId, channel: &ChannelRef) -> Option<&'a Channel> {
    let ch = core.channel(resolve(core, channel)?)?;
    let network = ch.space == Some(core.network());
    let ok = if network {
        !ch.flags.secret || core.is_member(user, ch.id)
    } else {
        core.channel_permissions(user, ch.id)
            .contains(Permissions::VIEW_CHANNEL)
    };
    ok.then_some(ch)
}

#[derive(Serialize)]
struct MemberOut {
    nick: String,
    modes: String,
}

fn members_of(core: &Core, channel: ChannelId) -> Vec<MemberOut> {
    let mut members: Vec<MemberOut> = core
        .members(channel)
        .filter_map(|(user, modes)| {
            let nick = core.user(user)?.nick.clone();
            let mut m = String::new();
            if modes.op {
                m.push('o');
            }
            if modes.voice {
                m.push('v');
            }
            Some(MemberOut { nick, modes: m })
        })
        .collect();
    members.sort_by_key(|m| m.nick.to_ascii_lowercase());
    members
}

fn topic_json(ch: &Channel, core: &Core) -> serde_json::Value {
    match &ch.topic {
        Some(t) => json!({
            "text": t.text,
            "by": core.user(t.by).map(|u| u.nick.clone()),
            "at": render::iso(t.at),
        }),
        None => serde_json::Value::Null,
    }
}

async fn channel_info(
    State(inner): Api,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Answer {
    let session = inner.auth(&headers).await?;
    let name = segment(name, "name")?;
    let channel = wire::channel_ref(&name);
    let user = session.user;
    let info = inner
        .query(move |core| {
            let ch = visible(core, user, &channel)?;
            Some(json!({
                "name": ch.name,
                "id": ch.id.to_string(),
                "kind": ch.kind.name(),
                "topic": ch.topic.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
                "topic_set": topic_json(ch, core),
                "modes": core.mode_string(ch.id, user),
                "created": render::iso(ch.created_at),
                "members": members_of(core, ch.id),
            }))
        })
        .await?;
    match info {
        Some(v) => ok_json(v),
        None => Err(chat_core::Error::NoSuchChannel.into()),
    }
}

async fn channel_members(
    State(inner): Api,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Answer {
    let session = inner.auth(&headers).await?;
    let name = segment(name, "name")?;
    let channel = wire::channel_ref(&name);
    let user = session.user;
    let members = inner
        .query(move |core| {
            let ch = visible(core, user, &channel)?;
            Some(members_of(core, ch.id))
        })
        .await?;
    match members {
        Some(m) => ok_json(json!({ "members": m })),
        None => Err(chat_core::Error::NoSuchChannel.into()),
    }
}

/// The user's network channels with their topic, modes, the user's own modes and unread counts.
fn joined(core: &Core, user: UserId) -> Vec<serde_json::Value> {
    let network = core.network();
    let mut out: Vec<(String, serde_json::Value)> = core
        .list_channels(user)
        .filter(|ch| ch.space == Some(network) && core.is_member(user, ch.id))
        .map(|ch| {
            let mine = core
                .members(ch.id)
                .find(|(u, _)| *u == user)
                .map(|(_, m)| {
                    let mut s = String::new();
                    if m.op {
                        s.push('o');
                    }
                    if m.voice {
                        s.push('v');
                    }
                    s
                })
                .unwrap_or_default();
            let mentions = core
                .read_state(user, ch.id)
                .map_or(0, chat_core::ReadState::mention_count);
            (
                ch.name.to_ascii_lowercase(),
                json!({
                    "name": ch.name,
                    "id": ch.id.to_string(),
                    "topic": ch.topic.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
                    "modes": core.mode_string(ch.id, user),
                    "my_modes": mine,
                    "members": core.member_count(ch.id),
                    "unread": core.unread_count(user, ch.id),
                    "mentions": mentions,
                }),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

/// The user's DMs, with the other side's nick and unread counts.
fn dms(core: &Core, user: UserId) -> Vec<serde_json::Value> {
    core.channels()
        .filter(|ch| ch.kind == ChannelKind::Dm && core.is_member(user, ch.id))
        .map(|ch| {
            let other = core
                .members(ch.id)
                .map(|(u, _)| u)
                .find(|u| *u != user)
                .unwrap_or(user);
            json!({
                "nick": core.user(other).map(|u| u.nick.clone()),
                "id": ch.id.to_string(),
                "unread": core.unread_count(user, ch.id),
            })
        })
        .collect()
}

async fn channels(
    State(inner): Api,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let session = inner.auth(&headers).await?;
    let user = session.user;
    let all = matches!(param(&q, "all"), Some("1" | "true" | "yes"));
    let list = inner
        .query(move |core| {
            if !all {
                return joined(core, user);
            }
            let network = core.network();
            let mut out: Vec<(String, serde_json::Value)> = core
                .list_channels(user)
                .filter(|ch| ch.space == Some(network))
                .map(|ch| {
                    (
                        ch.name.to_ascii_lowercase(),
                        json!({
                            "name": ch.name,
                            "id": ch.id.to_string(),
                            "topic": ch.topic.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
                            "members": core.member_count(ch.id),
                        }),
                    )
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out.into_iter().map(|(_, v)| v).collect()
        })
        .await?;
    ok_json(json!({ "channels": list }))
}

// --- users --------------------------------------------------------------------------------------------------

async fn state(State(inner): Api, headers: HeaderMap) -> Answer {
    let session = inner.auth(&headers).await?;
    let user = session.user;
    let cursor = inner
        .engine
        .cursor(session.client)
        .unwrap_or_else(|| inner.engine.last_seq());
    let value = inner
        .query(move |core| {
            let me = user_out(core, user);
            let u = core.user(user);
            json!({
                "user": me,
                "away": u.and_then(|u| u.away.clone()),
                "status": render::status_name(core.presence(user)),
                "channels": joined(core, user),
                "dms": dms(core, user),
            })
        })
        .await?;
    let mut value = value;
    value["cursor"] = json!(cursor);
    value["epoch"] = json!(inner.epoch());
    ok_json(value)
}

async fn nick(State(inner): Api, headers: HeaderMap, body: Body) -> Answer {
    let session = inner.auth(&headers).await?;
    let b: NickBody = inner.body(body).await?;
    run(
        &inner,
        &session,
        Command::Nick {
            nick: b.nick.trim().to_owned(),
        },
        None,
    )
    .await
}

async fn whois(
    State(inner): Api,
    headers: HeaderMap,
    nick: Result<Path<String>, PathRejection>,
) -> Answer {
    inner.auth(&headers).await?;
    let nick = segment(nick, "nick")?;
    let now = chat_engine::now_ms();
    let info = inner
        .query(move |core| {
            let u = core.user_by_nick(&nick).filter(|u| !u.released)?;
            let status = core.presence(u.id);
            let last = u
                .clients()
                .filter_map(|c| core.client(c))
                .map(|c| c.last_seen)
                .max();
            Some(json!({
                "id": u.id.to_string(),
                "nick": u.nick,
                "display_name": u.display_name,
                "bot": u.bot,
                "guest": u.is_guest(),
                "online": status != Status::Offline,
                "status": render::status_name(status),
                "idle_seconds": last.map(|l| now.saturating_sub(l) / 1000),
                "away": u.away,
                "created": render::iso(u.created_at),
            }))
        })
        .await?;
    match info {
        Some(v) => ok_json(v),
        None => Err(chat_core::Error::NoSuchNick.into()),
    }
}

async fn server(State(inner): Api) -> Answer {
    let (users, channels, max_message_size) = inner
        .query(|core| {
            let users = core.users().filter(|u| !u.system && !u.released).count();
            let network = core.network();
            let channels = core
                .channels()
                .filter(|c| c.space == Some(network) && c.kind == ChannelKind::Text)
                .count();
            (users, channels, core.config().max_message_size)
        })
        .await?;
    let s = &inner.settings;
    let (bits, resource) = inner.engine.hashcash();
    let nodes = match inner.engine.cluster_status().await? {
        Some(status) => status
            .nodes
            .iter()
            .map(|(n, lag)| {
                json!({
                    "id": n.id,
                    "address": n.addr,
                    "role": n.role.as_str(),
                    "applied_seq": n.applied,
                    "lag": lag,
                    "last_report_ms": n.age_ms,
                    "self": n.id == status.node,
                })
            })
            .collect::<Vec<_>>(),
        // One node: itself, which writes.
        None => {
            let id = inner.query(|core| core.config().node_id).await?;
            vec![json!({
                "id": id,
                "address": null,
                "role": "writer",
                "applied_seq": inner.engine.last_seq(),
                "lag": 0,
                "last_report_ms": 0,
                "self": true,
            })]
        }
    };
    ok_json(json!({
        "nodes": nodes,
        "name": s.server_name,
        "hashcash": { "bits": bits, "resource": resource },
        "version": s.version,
        "motd": s.motd,
        "users": users,
        "channels": channels,
        // In bytes of UTF-8, so that a client can hold a message back before the server refuses it.
        "max_message_size": max_message_size,
        "epoch": inner.epoch(),
    }))
}

// --- history and search -------------------------------------------------------------------------------------

/// Resolves a `target` (`#channel`, channel id, or nick for a DM) to a channel the user may read history of.
fn readable(core: &Core, user: UserId, target: &str) -> Result<ChannelId, ApiError> {
    let target = target.trim();
    if target.starts_with('#') || target.parse::<u64>().is_ok() {
        let ch = visible(core, user, &wire::channel_ref(target))
            .ok_or(chat_core::Error::NoSuchChannel)?;
        let network = ch.space == Some(core.network());
        let perms = core.channel_permissions(user, ch.id);
        // On IRC whoever reads a channel is in its member list: reading a network channel's history without
        // joining would be invisible lurking, so it takes membership (and a `+s` one stays unknown).
        if network && !core.is_member(user, ch.id) {
            return Err(if ch.flags.secret {
                chat_core::Error::NoSuchChannel
            } else {
                chat_core::Error::NotOnChannel
            }
            .into());
        }
        if !perms.contains(Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY) {
            return Err(chat_core::Error::PrivilegesNeeded {
                permission: Permissions::READ_MESSAGE_HISTORY,
            }
            .into());
        }
        Ok(ch.id)
    } else {
        let other = core
            .user_by_nick(target)
            .ok_or(chat_core::Error::NoSuchNick)?;
        core.dm_channel(user, other.id)
            .ok_or_else(|| chat_core::Error::NoSuchChannel.into())
    }
}

async fn history(
    State(inner): Api,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let session = inner.auth(&headers).await?;
    let target = param(&q, "target")
        .ok_or_else(|| ApiError::invalid("target", "required"))?
        .to_owned();
    let before = wire::query_message_id("before", param(&q, "before"))?;
    let after = wire::query_message_id("after", param(&q, "after"))?;
    let limit = limit(&q, 50, 100)?;
    let user = session.user;
    let channel = inner
        .query(move |core| readable(core, user, &target))
        .await??;
    let query = HistoryQuery {
        channel,
        before,
        after,
        around: None,
        limit,
    };
    let page = inner.engine.history(query).await?;
    messages(&inner, &page)
}

/// A page of history or search results (a struct, so that fields keep their documented order).
#[derive(Serialize)]
struct Page {
    messages: Vec<render::Wire>,
}

fn messages(inner: &Inner, page: &[StoredMessage]) -> Answer {
    let dir = inner.engine.directory();
    let messages: Vec<render::Wire> = page.iter().map(|m| render::stored(&dir, m)).collect();
    drop(dir);
    ok_json(Page { messages })
}

async fn search(
    State(inner): Api,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let session = inner.auth(&headers).await?;
    let text = param(&q, "q")
        .ok_or_else(|| ApiError::invalid("q", "required"))?
        .to_owned();
    if text.len() > 512 {
        return Err(ApiError::invalid("q", "longer than 512 bytes"));
    }
    let before = wire::query_message_id("before", param(&q, "before"))?;
    let after = wire::query_message_id("after", param(&q, "after"))?;
    let limit = limit(&q, 25, 100)?;
    let target = param(&q, "target").map(str::to_owned);
    let from = param(&q, "from").map(str::to_owned);
    let user = session.user;
    let scope = inner
        .query(move |core| -> Result<_, ApiError> {
            let channel = match &target {
                Some(t) => Some(readable(core, user, t)?),
                None => None,
            };
            let author = match &from {
                Some(nick) => Some(
                    core.user_by_nick(nick)
                        .ok_or(chat_core::Error::NoSuchNick)?
                        .id,
                ),
                None => None,
            };
            // Everything the user may read: their network channels and DMs, and space channels they can
            // view with history.
            let network = core.network();
            let channels: Vec<ChannelId> = core
                .channels()
                .filter(|ch| {
                    if ch.space == Some(network) || ch.space.is_none() {
                        core.is_member(user, ch.id)
                    } else {
                        core.channel_permissions(user, ch.id)
                            .contains(Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY)
                    }
                })
                .map(|ch| ch.id)
                .chain(channel)
                .collect();
            Ok((channels, channel, author))
        })
        .await??;
    let (channels, channel, author) = scope;
    let query = SearchQuery {
        text,
        channels,
        author,
        channel,
        space: None,
        before,
        after,
        limit,
        offset: 0,
    };
    let hits = inner.engine.search(query).await?;
    let page: Vec<StoredMessage> = hits.into_iter().map(|h| h.message).collect();
    messages(&inner, &page)
}
