//! The bare hyper long-poll server: the yardstick of SPEC §10 that chatd's long-poll API is compared against.
//!
//! It does what a long-poll chat server must do and nothing more: no auth, no persistence, no channels. The
//! messages live in one in-memory list; a `tokio::sync::watch` holds the latest sequence number, so a send wakes
//! every parked poll at once and each woken poll writes its own response, exactly the work chatd has to do too.
//! It is served the plain hyper way (HTTP/1.1, keep-alive, one task per connection) so it is neither handicapped
//! nor tuned beyond what a straightforward server would be.
//!
//! Routes:
//! - `GET /poll?after=N&timeout=S` parks until a message after `N` exists (or `S` seconds, default 15, at most 30,
//!   pass `0` to not wait) and answers `{"messages":[{"seq":..,"body":..},..],"cursor":N}`, at most 100 messages.
//! - `POST /send` appends the body (embedded as JSON if it parses, else as a string) and answers `{"seq":N}`
//!   after the append, having woken every parked poll.
//! - `GET /stats` answers `{"seq":N,"parked":N}` so a load generator can check that its polls are parked.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The same cap chatd puts on a poll's `timeout` (SPEC §5).
const MAX_TIMEOUT_SECS: u64 = 30;
/// chatd's default `LONG_POLL_TIMEOUT`.
const DEFAULT_TIMEOUT_SECS: u64 = 15;
/// The same request body cap chatd has (SPEC §8).
const MAX_BODY: usize = 64 * 1024;
/// Messages per poll response, so a client far behind gets pages rather than one huge answer.
const MAX_BATCH: usize = 100;

/// The shared state of the bare server: the message list and the "latest seq" signal parked polls wait on.
///
/// Create it with [`Bare::new`] and hand it to [`serve`].
#[derive(Debug)]
pub struct Bare {
    /// Each message pre-serialised once at append time, so a wake-up of N polls serialises nothing N times.
    /// A std `Mutex` (not tokio's) because it is held only for a push or a slice copy, never across an await.
    log: Mutex<Vec<Bytes>>,
    /// The seq of the last message (0: none). `watch` is the natural tokio tool: every receiver sees the
    /// newest value, and `send` wakes all of them with one call.
    latest: watch::Sender<u64>,
}

impl Bare {
    /// An empty server state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            log: Mutex::new(Vec::new()),
            latest: watch::Sender::new(0),
        })
    }

    /// Appends one message and wakes every parked poll; returns its seq (1-based, dense).
    pub fn append(&self, body: &[u8]) -> u64 {
        let value = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
        });
        // The lock is held while the seq is published so two concurrent sends can never make the watched
        // value go backwards (2 published, then 1).
        let mut log = lock(&self.log);
        let seq = log.len() as u64 + 1;
        let encoded = serde_json::json!({ "seq": seq, "body": value }).to_string();
        log.push(Bytes::from(encoded));
        self.latest.send_replace(seq);
        seq
    }

    /// The response body for a poll after `after`: up to [`MAX_BATCH`] messages and the new cursor.
    fn page(&self, after: u64) -> Bytes {
        let log = lock(&self.log);
        let latest = log.len() as u64;
        let start = after.min(latest) as usize;
        let end = (start + MAX_BATCH).min(log.len());
        let page = &log[start..end];
        let cursor = if page.is_empty() {
            after.min(latest)
        } else {
            end as u64
        };
        let mut out = BytesMut::with_capacity(32 + page.iter().map(|m| m.len() + 1).sum::<usize>());
        out.put_slice(b"{\"messages\":[");
        for (i, m) in page.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(m);
        }
        out.put_slice(format!("],\"cursor\":{cursor}}}").as_bytes());
        out.freeze()
    }

    async fn poll(&self, after: u64, timeout: Duration) -> Bytes {
        if !timeout.is_zero() {
            let mut rx = self.latest.subscribe();
            // `wait_for` looks at the current value first, so a message that arrived before we subscribed is
            // not missed. It fails only if the sender is dropped, and the sender lives as long as `self`.
            let _ = tokio::time::timeout(timeout, rx.wait_for(|&seq| seq > after)).await;
        }
        self.page(after)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/poll") => {
                let query = req.uri().query().unwrap_or("");
                let after = query_u64(query, "after").unwrap_or(0);
                let secs = query_u64(query, "timeout")
                    .unwrap_or(DEFAULT_TIMEOUT_SECS)
                    .min(MAX_TIMEOUT_SECS);
                json(
                    StatusCode::OK,
                    self.poll(after, Duration::from_secs(secs)).await,
                )
            }
            (&Method::POST, "/send") => {
                match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(body) => {
                        let seq = self.append(&body.to_bytes());
                        json(StatusCode::OK, Bytes::from(format!("{{\"seq\":{seq}}}")))
                    }
                    Err(_) => json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Bytes::from_static(b"{\"error\":\"body_too_large\"}"),
                    ),
                }
            }
            (&Method::GET, "/stats") => {
                let seq = *self.latest.borrow();
                // Receivers exist only inside `poll`, so their count is the number of parked polls.
                let parked = self.latest.receiver_count();
                json(
                    StatusCode::OK,
                    Bytes::from(format!("{{\"seq\":{seq},\"parked\":{parked}}}")),
                )
            }
            _ => json(
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"{\"error\":\"not_found\"}"),
            ),
        }
    }
}

/// Locks a mutex, ignoring poisoning: the guarded data is a list only ever pushed to whole, so a panic
/// elsewhere cannot leave it half-updated.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The value of `key` in a query string, if present and a number.
fn query_u64(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Serves the bare long-poll API on `listener` until `shutdown` completes.
///
/// Each accepted connection gets its own task; connections already open are left to finish on their own
/// (the binary exits right after, which is all a baseline needs).
pub async fn serve(
    listener: TcpListener,
    state: Arc<Bare>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE under a connection flood: back off instead of spinning on accept.
                    eprintln!("bare-longpoll: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Responses are single small writes; without TCP_NODELAY a pipelined client could wait on Nagle.
        // axum (which chatd uses) sets it too, so this keeps the comparison fair.
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(state.handle(req).await) }
            });
            // Errors here are per-connection (a client hung up mid-request); nothing to do but drop it.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_cursor() {
        let bare = Bare::new();
        assert_eq!(&bare.page(0)[..], br#"{"messages":[],"cursor":0}"#);
        assert_eq!(bare.append(br#"{"body":"hi"}"#), 1);
        assert_eq!(bare.append(b"not json"), 2);
        // Compared as JSON values: key order depends on serde_json features that other workspace members
        // turn on.
        let page: serde_json::Value = serde_json::from_slice(&bare.page(0)).expect("json");
        assert_eq!(
            page,
            serde_json::json!({
                "messages": [{"seq": 1, "body": {"body": "hi"}}, {"seq": 2, "body": "not json"}],
                "cursor": 2
            })
        );
        assert_eq!(&bare.page(2)[..], br#"{"messages":[],"cursor":2}"#);
        // A cursor from the future is clamped to what exists.
        assert_eq!(&bare.page(9)[..], br#"{"messages":[],"cursor":2}"#);
    }

    #[tokio::test]
    async fn poll_wakes_on_append() {
        let bare = Bare::new();
        let waiter = {
            let bare = Arc::clone(&bare);
            tokio::spawn(async move { bare.poll(0, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        bare.append(b"x");
        let body = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(body.ends_with(b"\"cursor\":1}"));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_u64("after=5&timeout=0", "after"), Some(5));
        assert_eq!(query_u64("after=5&timeout=0", "timeout"), Some(0));
        assert_eq!(query_u64("after=x", "after"), None);
        assert_eq!(query_u64("", "after"), None);
    }
}
