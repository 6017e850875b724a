//! The binary's own HTTP routes beside the transports: the health check, Prometheus metrics (optionally
//! behind basic auth), and the JSON 404 for every unknown path.
//!
//! `GET /.well-known/healthcheck.json` answers 200 with
//! `{"status":"ok","version":"0.1.0","uptime_seconds":12,"last_seq":42,"epoch":"9876543210"}`: `epoch` is a
//! string because it is a random 64-bit number that JavaScript cannot hold exactly; `last_seq` is the last
//! committed event. It answers 503 with `"status":"unavailable"` when the engine's writer does not answer
//! within two seconds (stopped after a failed commit, or shutting down).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chat_engine::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::MetricsAuth;

/// What the routes need.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) metrics_auth: Option<Arc<MetricsAuth>>,
    pub(crate) started: Instant,
    /// The server links, for their series in `/metrics`.
    pub(crate) federation: Option<Arc<chat_federation::Federation>>,
}

/// The routes, with the JSON 404 as fallback. Merge transports' routers into it.
pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/.well-known/healthcheck.json", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// The fallback for paths no router knows: the API's error shape, so clients parse one format.
pub(crate) async fn not_found() -> Response {
    crate::errors::error(StatusCode::NOT_FOUND, None, false)
}

async fn health(State(shared): State<Shared>) -> Response {
    // A round trip through the writer's queue: proves the task that owns the core is alive and not wedged,
    // which the counters alone cannot.
    let alive = tokio::time::timeout(Duration::from_secs(2), shared.engine.query(|_| ())).await;
    let ok = matches!(alive, Ok(Ok(())));
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "last_seq": shared.engine.last_seq(),
        "epoch": shared.engine.epoch().to_string(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(body),
    )
        .into_response()
}

async fn metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(auth) = &shared.metrics_auth
        && !authorized(auth, headers.get(header::AUTHORIZATION))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"chatd metrics\", charset=\"UTF-8\""),
            )],
            axum::Json(json!({
                "error": "unauthorized",
                "message": "Metrics need basic authentication",
                "numeric": null,
            })),
        )
            .into_response();
    }
    let Some(handle) = &shared.metrics else {
        return not_found().await;
    };
    // Every node's last report, as this node reads it from the shared store: one series per node.
    if let Ok(Some(status)) = shared.engine.cluster_status().await {
        for (n, lag) in &status.nodes {
            let id = n.id.to_string();
            metrics::gauge!("chatd_cluster_node_lag_events", "node" => id.clone()).set(*lag as f64);
            metrics::gauge!("chatd_cluster_node_applied_seq", "node" => id.clone())
                .set(n.applied as f64);
            metrics::gauge!("chatd_cluster_node_report_age_seconds", "node" => id.clone())
                .set(n.age_ms as f64 / 1000.0);
            let writer = f64::from(u8::from(n.role == chat_engine::NodeRole::Writer));
            metrics::gauge!("chatd_cluster_node_writer", "node" => id).set(writer);
        }
    }
    // Each server link as the federation knows it: one series per peer.
    let peers = match &shared.federation {
        Some(f) => f.peers().await.ok(),
        None => None,
    };
    if let Some(peers) = peers {
        let now = chat_engine::now_ms();
        for p in peers {
            let up = f64::from(u8::from(p.state == "up"));
            metrics::gauge!("chatd_federation_peer_up", "peer" => p.name.clone()).set(up);
            metrics::gauge!("chatd_federation_peer_lag_events", "peer" => p.name.clone())
                .set(p.lag_events as f64);
            let contact = p.last_inbound.max(p.last_outbound);
            if let Some(at) = contact {
                metrics::gauge!("chatd_federation_peer_contact_age_seconds", "peer" => p.name)
                    .set(now.saturating_sub(at) as f64 / 1000.0);
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// Checks `Authorization: Basic base64(user:password)`. Both halves are compared in constant time and the
/// results combined without branching, so the time taken does not tell which half was wrong.
fn authorized(auth: &MetricsAuth, header: Option<&HeaderValue>) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Some(decoded) = base64_decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let user_ok = user.ct_eq(auth.username.as_bytes());
    let password_ok = password.ct_eq(auth.password.0.as_bytes());
    bool::from(user_ok & password_ok)
}

/// Standard base64 with padding (RFC 4648 §4), as basic auth uses. Small enough to keep here rather than
/// take a dependency for one header.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) || bytes.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.chunks(4);
    let count = chunks.len();
    for (i, chunk) in chunks.enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != count) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad;
        let [_, a, b, c] = n.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("Zg==").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_decode("Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64_decode("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(
            base64_decode("cHJvbTpzZWNyZXQ=").as_deref(),
            Some(&b"prom:secret"[..])
        );
        assert_eq!(base64_decode("Zm9"), None);
        assert_eq!(base64_decode("Z=9v"), None);
        assert_eq!(base64_decode("Zg==Zg=="), None);
    }

    #[test]
    fn basic_auth() {
        let auth = MetricsAuth {
            username: "prom".into(),
            password: Secret("secret".into()),
        };
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(authorized(&auth, Some(&h("Basic cHJvbTpzZWNyZXQ="))));
        assert!(authorized(&auth, Some(&h("basic cHJvbTpzZWNyZXQ="))));
        // prom:secreT
        assert!(!authorized(&auth, Some(&h("Basic cHJvbTpzZWNyZVQ="))));
        assert!(!authorized(&auth, Some(&h("Bearer cHJvbTpzZWNyZXQ="))));
        assert!(!authorized(&auth, None));
    }
}
