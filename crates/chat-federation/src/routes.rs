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
}

/// What a server tells a peer in the handshake, both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The server's name (must be the request's signer).
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it can do beyond the base protocol.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// What this server knows of a peer's contact.
#[derive(Clone, Debug, Default)]
struct Contact {
    /// When the peer's last accepted request came (unix ms).
    last_inbound: Option<u64>,
    /// The version it said it runs.
    version: Option<String>,
    /// The last refusal of one of its requests, and when.
    last_refusal: Option<(u64, String)>,
}

/// Server links over HTTP: the routes, and what they remember.
pub struct Federation {
    settings: Settings,
    store: Arc<dyn Store>,
    verifier: Mutex<Verifier>,
    contacts: Mutex<HashMap<String, Contact>>,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn refuse(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "message": message })),
    )
        .into_response()
}

/// A request that passed the signature check: who sent it, and its body.
struct Verified {
    from: String,
    body: bytes::Bytes,
}

impl Federation {
    /// Federation over `store`'s links.
    pub fn new(settings: Settings, store: Arc<dyn Store>) -> Arc<Self> {
        let skew = u64::try_from(settings.skew.as_millis()).unwrap_or(u64::MAX);
        Arc::new(Self {
            settings,
            store,
            verifier: Mutex::new(Verifier::new(skew, REPLAY_CAP)),
            contacts: Mutex::new(HashMap::new()),
        })
    }

    /// The routes under `/api/v1/federation`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/federation/link", post(link))
            .route("/api/v1/federation/status", get(status))
            .with_state(Arc::clone(self))
    }

    /// Checks a peer's request: signed by a configured link with its key, fresh, not seen before, with a
    /// body under the cap. The refusal is the response to send.
    async fn verify(&self, request: Request) -> Result<Verified, Response> {
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
        let links = self.store.links().map_err(|e| {
            tracing::warn!(error = %e, "cannot read the server links");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server cannot read its links",
            )
        })?;
        let Some(link) = links.into_iter().find(|l| l.name == from) else {
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

    fn hello(&self) -> Hello {
        Hello {
            name: self.settings.name.clone(),
            version: self.settings.version.clone(),
            capabilities: Vec::new(),
        }
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
        let c = contacts.entry(v.from).or_default();
        c.last_inbound = Some(now_ms());
        c.version = Some(hello.version);
    }
    axum::Json(f.hello()).into_response()
}

async fn status(State(f): State<Arc<Federation>>, _headers: HeaderMap) -> Response {
    let (links, last) = match (f.store.links(), f.store.last_seq()) {
        (Ok(l), Ok(s)) => (l, s),
        _ => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server cannot read its links",
            );
        }
    };
    let contacts = lock(&f.contacts).clone();
    let peers: Vec<_> = links
        .iter()
        .map(|l| {
            let c = contacts.get(&l.name).cloned().unwrap_or_default();
            json!({
                "name": l.name,
                "url": l.url,
                "key": if l.key.is_some() { "own" } else { "FEDERATION_KEY" },
                "state": if c.last_inbound.is_some() { "linked" } else { "never contacted" },
                "version": c.version,
                "last_contact_ms": c.last_inbound,
                "lag_events": last.saturating_sub(l.cursor),
                "last_refusal": c.last_refusal.map(|(at, why)| json!({ "at_ms": at, "reason": why })),
            })
        })
        .collect();
    axum::Json(json!({ "name": f.settings.name, "peers": peers })).into_response()
}
