//! The link routes: `POST /api/v1/federation/link` (the handshake) and `GET /api/v1/federation/status`.
//!
//! Every request from a peer is signed ([`crate::sign`]); the sender must be a configured link (`chatd link
//! add`) and its key that link's own, else `FEDERATION_KEY`. A refused request is answered 401 with the
//! reason and changes nothing (not even the peer's last contact).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chat_engine::{Bucket, RateLimit};
use chat_log::Store;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::sign::{SERVER_HEADER, SIGNATURE_HEADER, Signed, TIMESTAMP_HEADER, Verifier};

/// The federation's settings (the binary fills them from its configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// This server's name on the network (`FEDERATION_NAME`), checked by [`crate::peer::server_name`].
    pub name: String,
    /// The key of links without their own (`FEDERATION_KEY`).
    pub default_key: Option<String>,
    /// This server's version, told to peers.
    pub version: String,
    /// The largest request body a peer may send.
    pub max_body: usize,
    /// How far a request's timestamp may be from this server's clock.
    pub skew: Duration,
    /// How often a peer that answers is greeted again (`FEDERATION_HANDSHAKE_EVERY`), and the longest wait
    /// between tries after failures.
    pub handshake_every: Duration,
    /// Requests each linked server may send (`FEDERATION_RATE_LIMIT`); over it, 429.
    pub rate_limit: RateLimit,
}

/// What a server tells a peer in the handshake, both ways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The server's name (must be the request's signer).
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it can do beyond the base protocol.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The servers it is linked to.
    #[serde(default)]
    pub links: Vec<String>,
    /// The servers reachable through it (its links and what they told it is behind them), not counting the
    /// server it talks to: ops of those servers' users may come through it.
    #[serde(default)]
    pub behind: Vec<String>,
    /// The requests a second it takes from each peer (its FEDERATION_RATE_LIMIT): peers pace their batches
    /// to stay under it.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
}

/// A batch of ops, `POST /api/v1/federation/relay`: in the sender's log order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The ops.
    pub ops: Vec<chat_core::RemoteOp>,
}

/// The answer to a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    /// Ops new here.
    pub new: usize,
    /// Ops seen before (through another path, or a resent batch): nothing changed.
    pub seen: usize,
    /// Ops this server speaks for itself about, left to come from their origin (linked here directly).
    pub skipped: usize,
    /// New ops this server refused to apply (recorded as seen, and passed on): the op's id and why.
    pub refused: Vec<(String, u64, String)>,
}

/// What this server knows of a peer's contact.
#[derive(Clone, Debug, Default)]
pub(crate) struct Contact {
    /// When the peer's last accepted request came (unix ms).
    last_inbound: Option<u64>,
    /// The version it said it runs.
    version: Option<String>,
    /// The last refusal of one of its requests, and when.
    last_refusal: Option<(u64, String)>,
    /// When this server's last handshake or batch to the peer was answered (unix ms).
    pub(crate) last_outbound: Option<u64>,
    /// The last failure of a handshake or a batch to the peer, and when.
    pub(crate) last_error: Option<(u64, String)>,
    /// Ops sent to it and acknowledged.
    pub(crate) ops_out: u64,
    /// Its outbox's cursor as it stands (the store's lags by up to a second).
    pub(crate) cursor: Option<u64>,
    /// Ops taken from it (new or seen).
    pub(crate) ops_in: u64,
    /// How many handshakes to it failed in a row (the backoff's exponent).
    failures: u32,
    /// When the next handshake to it is due (unix ms).
    due: u64,
}

impl Contact {
    /// `up` (its last handshake was answered), `down` (it failed since), or `never contacted`.
    fn state(&self) -> &'static str {
        match (self.last_outbound, &self.last_error) {
            (Some(ok), Some((failed, _))) if *failed > ok => "down",
            (Some(_), _) => "up",
            (None, Some(_)) => "down",
            (None, None) if self.last_inbound.is_some() => "contacted",
            (None, None) => "never contacted",
        }
    }
}

/// The first wait after a failed handshake; doubled per failure up to [`Settings::handshake_every`].
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(500);
/// How long a handshake or a batch may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One link as the status tells it.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    /// The peer's name.
    pub name: String,
    /// Its base URL.
    pub url: String,
    /// Whether the link has a key of its own (else `FEDERATION_KEY`).
    pub own_key: bool,
    /// `up`, `down`, `contacted` (only inbound so far) or `never contacted`.
    pub state: &'static str,
    /// The version it said it runs.
    pub version: Option<String>,
    /// When its last accepted request came (unix ms).
    pub last_inbound: Option<u64>,
    /// When this server's last handshake to it was answered (unix ms).
    pub last_outbound: Option<u64>,
    /// The last failed handshake to it: when, and why.
    pub last_error: Option<(u64, String)>,
    /// The last refused request from it: when, and why.
    pub last_refusal: Option<(u64, String)>,
    /// Local events after the link's outbox cursor.
    pub lag_events: u64,
    /// The link's outbox cursor: the last local seq the peer has taken.
    pub cursor: u64,
    /// Ops sent to it and acknowledged since this server started.
    pub ops_out: u64,
    /// Ops taken from it since this server started.
    pub ops_in: u64,
}

/// Server links over HTTP: the routes, and what they remember.
pub struct Federation {
    pub(crate) settings: Settings,
    pub(crate) engine: chat_engine::Engine,
    pub(crate) store: Arc<dyn Store>,
    /// What each peer said in its last hello: its links, and the servers behind it.
    pub(crate) told: Mutex<HashMap<String, Hello>>,
    /// Each link's outbox task, by name.
    outboxes: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    verifier: Mutex<Verifier>,
    pub(crate) contacts: Mutex<HashMap<String, Contact>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// The links as last read from the store (by the greeting loop every second, or by a request naming a
    /// link not in them), and when.
    link_cache: Mutex<Option<(Vec<chat_log::ServerLink>, std::time::Instant)>>,
    /// Rung when a link comes back up: outboxes waiting after a failure try again at once.
    pub(crate) back_up: tokio::sync::Notify,
    client: reqwest::Client,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("name", &self.settings.name)
            .finish_non_exhaustive()
    }
}

/// Requests remembered per peer by the replay guard: far above what a link sends in a skew window.
const REPLAY_CAP: usize = 1 << 20;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn refuse(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "message": message })),
    )
        .into_response()
}

/// A request that passed the signature check: who sent it, and its body.
pub(crate) struct Verified {
    pub(crate) from: String,
    pub(crate) body: bytes::Bytes,
}

impl Federation {
    /// Federation of `engine`'s server over `store`'s links (the engine's store).
    pub fn new(
        settings: Settings,
        engine: chat_engine::Engine,
        store: Arc<dyn Store>,
    ) -> Arc<Self> {
        let skew = u64::try_from(settings.skew.as_millis()).unwrap_or(u64::MAX);
        Arc::new(Self {
            settings,
            engine,
            store,
            told: Mutex::new(HashMap::new()),
            outboxes: Mutex::new(HashMap::new()),
            link_cache: Mutex::new(None),
            back_up: tokio::sync::Notify::new(),
            verifier: Mutex::new(Verifier::new(skew, REPLAY_CAP)),
            contacts: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            client: reqwest::Client::builder()
                .timeout(HANDSHAKE_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        })
    }

    /// Greets every link: at once for a link not greeted yet (one added while the server runs is seen within
    /// a second), every [`Settings::handshake_every`] while it answers, and with a doubling wait after
    /// failures. Runs until the returned task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let f = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(f.settings.handshake_every.min(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let links = match f.links().await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the server links");
                        continue;
                    }
                };
                let now = now_ms();
                {
                    // Forget links removed since; start the outbox of links added.
                    let linked = |name: &String| links.iter().any(|l| &l.name == name);
                    lock(&f.contacts).retain(|name, _| linked(name));
                    lock(&f.buckets).retain(|name, _| linked(name));
                    lock(&f.told).retain(|name, _| linked(name));
                    let mut outboxes = lock(&f.outboxes);
                    outboxes.retain(|name, task| {
                        let keep = linked(name) && !task.is_finished();
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for l in &links {
                        if !outboxes.contains_key(&l.name) {
                            let task =
                                tokio::spawn(crate::outbox::run(Arc::clone(&f), l.name.clone()));
                            outboxes.insert(l.name.clone(), task);
                        }
                    }
                    drop(outboxes);
                    *lock(&f.link_cache) = Some((links.clone(), std::time::Instant::now()));
                }
                let due: Vec<_> = links
                    .into_iter()
                    .filter(|l| lock(&f.contacts).get(&l.name).is_none_or(|c| c.due <= now))
                    .collect();
                // One at a time: a handshake is small, and a slow peer only delays the others by its timeout.
                for link in due {
                    let result = f.handshake(&link).await;
                    if let Some(hello) = f.handshake_done(&link.name, result) {
                        if hello.0 {
                            f.back_up.notify_waiters();
                        }
                        let back = f.learn(hello.1);
                        if hello.0 || back {
                            // A link (re)established, or the servers behind it changed: tell the peers the
                            // state of our channels.
                            f.announce().await;
                        }
                    }
                }
            }
        })
    }

    /// Notes a handshake's outcome; on success, whether the link was down or never up before, and the
    /// peer's hello.
    fn handshake_done(&self, name: &str, result: Result<Hello, String>) -> Option<(bool, Hello)> {
        let now = now_ms();
        let mut contacts = lock(&self.contacts);
        let c = contacts.entry(name.to_owned()).or_default();
        match result {
            Ok(hello) => {
                let back = c.last_outbound.is_none() || c.failures > 0;
                c.last_outbound = Some(now);
                c.version = Some(hello.version.clone());
                c.failures = 0;
                c.due = now + millis(self.settings.handshake_every);
                Some((back, hello))
            }
            Err(why) => {
                if c.last_error.is_none() || c.state() == "up" {
                    tracing::info!(peer = %name, reason = %why, "a linked server does not answer");
                }
                c.last_error = Some((now, why));
                c.failures = c.failures.saturating_add(1);
                let wait = RETRY_FIRST
                    .saturating_mul(1 << c.failures.min(16).saturating_sub(1))
                    .min(self.settings.handshake_every);
                c.due = now + millis(wait);
                None
            }
        }
    }

    /// Sends this server's signed hello to a link; its answer, or why there is none.
    async fn handshake(&self, link: &chat_log::ServerLink) -> Result<Hello, String> {
        let body = serde_json::to_vec(&self.hello(&link.name)).map_err(|e| e.to_string())?;
        let bytes = self.post(link, "/api/v1/federation/link", body).await?;
        let hello: Hello = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: the answer is not a hello: {e}", link.url))?;
        if hello.name != link.name {
            return Err(format!(
                "{} calls itself {}, not {}",
                link.url, hello.name, link.name
            ));
        }
        Ok(hello)
    }

    /// POSTs a signed body to a link's `path`; the answer's body, or why there is none.
    pub(crate) async fn post(
        &self,
        link: &chat_log::ServerLink,
        path: &str,
        body: Vec<u8>,
    ) -> Result<bytes::Bytes, String> {
        let Some(key) = link
            .key
            .clone()
            .or_else(|| self.settings.default_key.clone())
        else {
            return Err("no key for this link (its own, or FEDERATION_KEY)".into());
        };
        let url = format!("{}{path}", link.url);
        let signed_path = reqwest::Url::parse(&url)
            .map_err(|e| format!("bad URL {url}: {e}"))?
            .path()
            .to_owned();
        let timestamp = now_ms();
        let signature = crate::sign::sign(
            key.as_bytes(),
            &Signed {
                method: "POST",
                path: &signed_path,
                from: &self.settings.name,
                to: &link.name,
                timestamp,
                body: &body,
            },
        );
        let response = self
            .client
            .post(&url)
            .header(SERVER_HEADER, &self.settings.name)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(format!("{url} answered {status}: {message}"));
        }
        Ok(bytes)
    }

    /// Takes in what a peer said of itself; whether it is news (its links or what is behind it changed),
    /// in which case every peer is greeted again soon, so that what is behind this server reaches them.
    fn learn(&self, hello: Hello) -> bool {
        let mut told = lock(&self.told);
        let changed = told
            .get(&hello.name)
            .is_none_or(|h| h.links != hello.links || h.behind != hello.behind);
        told.insert(hello.name.clone(), hello);
        drop(told);
        if changed {
            let soon = now_ms() + 200;
            for c in lock(&self.contacts).values_mut() {
                c.due = c.due.min(soon);
            }
        }
        changed
    }

    /// Records the state of the shared channels, for every peer's outbox to carry.
    async fn announce(&self) {
        if let Err(e) = self
            .engine
            .system(chat_core::Command::AnnounceChannels)
            .await
        {
            tracing::warn!(error = %e, "cannot announce the channels to linked servers");
        }
    }

    /// The routes under `/api/v1/federation`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/federation/link", post(link))
            .route("/api/v1/federation/relay", post(crate::outbox::relay))
            .route("/api/v1/federation/status", get(status))
            .with_state(Arc::clone(self))
    }

    /// Checks a peer's request: signed by a configured link with its key, fresh, not seen before, with a
    /// body under the cap. The refusal is the response to send.
    pub(crate) async fn verify(&self, request: Request) -> Result<Verified, Response> {
        let (parts, body) = request.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let unauthorized = |why: &str| refuse(StatusCode::UNAUTHORIZED, "unauthorized", why);
        let (Some(from), Some(timestamp), Some(signature)) = (
            header(SERVER_HEADER),
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
        ) else {
            return Err(unauthorized(
                "the request is not signed (chatd-server, chatd-timestamp and chatd-signature)",
            ));
        };
        let Ok(timestamp) = timestamp.parse::<u64>() else {
            return Err(unauthorized(
                "chatd-timestamp is not a number of milliseconds",
            ));
        };
        let link = self.link_of(&from).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read the server links");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server cannot read its links",
            )
        })?;
        let Some(link) = link else {
            return Err(unauthorized(&format!(
                "{from} is not linked to this server"
            )));
        };
        let Some(key) = link.key.or_else(|| self.settings.default_key.clone()) else {
            return Err(self.refused(&from, "this server has no key for the link"));
        };
        let body = match to_bytes(body, self.settings.max_body).await {
            Ok(b) => b,
            Err(_) => {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    &format!("the body is over {} bytes", self.settings.max_body),
                ));
            }
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        let signed = Signed {
            method: parts.method.as_str(),
            path: &path,
            from: &from,
            to: &self.settings.name,
            timestamp,
            body: &body,
        };
        let checked = lock(&self.verifier).verify(key.as_bytes(), &signed, &signature, now_ms());
        if let Err(e) = checked {
            return Err(self.refused(&from, &e.to_string()));
        }
        let limit = self.settings.rate_limit;
        let now = now_ms();
        let taken = lock(&self.buckets)
            .entry(from.clone())
            .or_insert_with(|| Bucket::full(limit, now))
            .take(limit, now);
        if let Err(wait_ms) = taken {
            let secs = wait_ms.div_ceil(1000).max(1);
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &format!(
                    "over {} requests at once or {}/s from {from}; retry after {secs} s",
                    limit.burst, limit.per_second
                ),
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
            return Err(response);
        }
        Ok(Verified { from, body })
    }

    /// Notes a refused request of a configured peer (for the status), and answers 401.
    fn refused(&self, from: &str, why: &str) -> Response {
        tracing::info!(peer = from, reason = why, "refused a link request");
        lock(&self.contacts)
            .entry(from.to_owned())
            .or_default()
            .last_refusal = Some((now_ms(), why.to_owned()));
        refuse(StatusCode::UNAUTHORIZED, "unauthorized", why)
    }

    /// The link named `from` (a peer's request, an outbox): from the copy read less than a second ago, else (or when it is not there, so
    /// that a link just added is known at once) from the store.
    pub(crate) async fn link_of(
        &self,
        from: &str,
    ) -> Result<Option<chat_log::ServerLink>, chat_log::StoreError> {
        {
            let cache = lock(&self.link_cache);
            if let Some((links, at)) = &*cache
                && at.elapsed() < Duration::from_secs(1)
                && let Some(l) = links.iter().find(|l| l.name == from)
            {
                return Ok(Some(l.clone()));
            }
        }
        let links = self.links().await?;
        let found = links.iter().find(|l| l.name == from).cloned();
        *lock(&self.link_cache) = Some((links, std::time::Instant::now()));
        Ok(found)
    }

    /// The store's links, read on the blocking pool (a PostgreSQL store waits for a round trip).
    async fn links(&self) -> Result<Vec<chat_log::ServerLink>, chat_log::StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.links())
            .await
            .unwrap_or_else(|e| Err(chat_log::StoreError::Io(std::io::Error::other(e))))
    }

    /// Every link and what this server knows of it, by name.
    pub async fn peers(&self) -> Result<Vec<PeerStatus>, chat_log::StoreError> {
        let store = Arc::clone(&self.store);
        let (links, last) =
            tokio::task::spawn_blocking(move || Ok((store.links()?, store.last_seq()?)))
                .await
                .unwrap_or_else(|e| Err(chat_log::StoreError::Io(std::io::Error::other(e))))?;
        let contacts = lock(&self.contacts).clone();
        Ok(links
            .into_iter()
            .map(|l| {
                let c = contacts.get(&l.name).cloned().unwrap_or_default();
                PeerStatus {
                    state: c.state(),
                    lag_events: last.saturating_sub(c.cursor.unwrap_or(0).max(l.cursor)),
                    cursor: c.cursor.unwrap_or(0).max(l.cursor),
                    ops_out: c.ops_out,
                    ops_in: c.ops_in,
                    own_key: l.key.is_some(),
                    name: l.name,
                    url: l.url,
                    version: c.version,
                    last_inbound: c.last_inbound,
                    last_outbound: c.last_outbound,
                    last_error: c.last_error,
                    last_refusal: c.last_refusal,
                }
            })
            .collect())
    }

    /// This server's hello to `to`: its links, and the servers behind it as `to` sees it.
    fn hello(&self, to: &str) -> Hello {
        let links = self.linked();
        let mut behind: Vec<String> = links.clone();
        for (peer, h) in lock(&self.told).iter() {
            if peer != to {
                behind.extend(h.behind.iter().cloned());
            }
        }
        behind.retain(|s| s != to && *s != self.settings.name);
        behind.sort();
        behind.dedup();
        Hello {
            name: self.settings.name.clone(),
            version: self.settings.version.clone(),
            capabilities: vec!["relay".to_owned()],
            links,
            behind,
            requests_per_second: Some(self.settings.rate_limit.per_second),
        }
    }

    /// Notes a peer's accepted request (for the status).
    pub(crate) fn contacted(&self, from: &str, ops: usize) {
        let mut contacts = lock(&self.contacts);
        let c = contacts.entry(from.to_owned()).or_default();
        c.last_inbound = Some(now_ms());
        c.ops_in += ops as u64;
    }

    /// The links' names, as last read.
    pub(crate) fn linked(&self) -> Vec<String> {
        lock(&self.link_cache)
            .as_ref()
            .map(|(links, _)| links.iter().map(|l| l.name.clone()).collect())
            .unwrap_or_default()
    }
}

async fn link(State(f): State<Arc<Federation>>, request: Request<Body>) -> Response {
    let v = match f.verify(request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let hello: Hello = match serde_json::from_slice(&v.body) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("the handshake is not {{name, version, capabilities}}: {e}"),
            );
        }
    };
    if hello.name != v.from {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the handshake names another server than its signer",
        );
    }
    {
        let mut contacts = lock(&f.contacts);
        let c = contacts.entry(v.from.clone()).or_default();
        c.last_inbound = Some(now_ms());
        c.version = Some(hello.version.clone());
    }
    f.learn(hello);
    axum::Json(f.hello(&v.from)).into_response()
}

async fn status(State(f): State<Arc<Federation>>, _headers: HeaderMap) -> Response {
    let Ok(peers) = f.peers().await else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server cannot read its links",
        );
    };
    let peers: Vec<_> = peers
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name,
                "url": p.url,
                "key": if p.own_key { "own" } else { "FEDERATION_KEY" },
                "state": p.state,
                "version": p.version,
                "last_inbound_ms": p.last_inbound,
                "last_outbound_ms": p.last_outbound,
                "last_error": p.last_error.map(|(at, why)| json!({ "at_ms": at, "reason": why })),
                "lag_events": p.lag_events,
                "cursor": p.cursor,
                "ops_out": p.ops_out,
                "ops_in": p.ops_in,
                "last_refusal": p.last_refusal.map(|(at, why)| json!({ "at_ms": at, "reason": why })),
            })
        })
        .collect();
    axum::Json(json!({ "name": f.settings.name, "peers": peers })).into_response()
}
