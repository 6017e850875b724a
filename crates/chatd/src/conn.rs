//! One HTTP connection as hyper serves it: the timer behind the header-read and keep-alive timeouts, and the
//! stream wrapper that gives hyper's own refusals the JSON error shape.
//!
//! hyper has one timer for a server connection, its `header_read_timeout`, armed whenever it waits for a
//! request head: right after connecting, and again as soon as a response is done. A parked long-poll or an
//! upgraded WebSocket is never waiting for a head, so neither is ever cut by it. [`HeadTimer`] gives that
//! one timer two lengths: the first head of a connection gets HEADER_READ_TIMEOUT from the connect; every
//! later wait is keep-alive idleness and gets KEEPALIVE_IDLE_TIMEOUT, until the client's next byte arrives,
//! from when the rest of that head must come within HEADER_READ_TIMEOUT. Without it a client could hold a
//! connection forever by never finishing a head (slowloris) or by never sending one.
//!
//! hyper answers a head it cannot parse (400), a URL over 64 KiB (414) and a head over its buffer or with
//! more than 100 headers (431) itself, with an empty body, before any service sees the request. [`Watched`]
//! recognises that answer as it is written and writes the JSON shape instead. It does so only on a
//! connection whose service has not been called yet: after a first response the bytes written could be a
//! body, which is never rewritten, so a malformed second request on a keep-alive connection keeps hyper's
//! empty body (README says so).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::errors;
use crate::listener::CountedStream;

/// What the connection's stream, its timer and its service tell each other.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Reads that brought bytes: a change tells the timer that the client has begun a head.
    reads: AtomicU64,
    /// Set once hyper has handed a request to the service.
    served: AtomicBool,
}

impl ConnState {
    /// Records that a request reached the service: from now on, nothing written is rewritten.
    pub(crate) fn mark_served(&self) {
        self.served.store(true, Ordering::Relaxed);
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

/// The two timeouts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// How long a whole request head may take (HEADER_READ_TIMEOUT).
    pub(crate) header: Duration,
    /// How long a keep-alive connection may wait for the next request's first byte (KEEPALIVE_IDLE_TIMEOUT).
    pub(crate) idle: Duration,
}

/// The timer of one connection (hyper's `Timer`). hyper's http1 server uses its timer only for the
/// header-read timeout, once per head it waits for, which is what lets this one tell the first wait from
/// the later (keep-alive) ones.
///
/// A later wait switches to the header deadline on the first read after it began. Bytes that arrived while
/// the previous request was still being answered (a pipelined head) were read before, so such a head gets
/// the idle deadline: still bounded, by KEEPALIVE_IDLE_TIMEOUT.
#[derive(Debug)]
pub(crate) struct HeadTimer {
    state: Arc<ConnState>,
    timeouts: Timeouts,
    first: AtomicBool,
}

impl HeadTimer {
    pub(crate) fn new(state: Arc<ConnState>, timeouts: Timeouts) -> Self {
        Self {
            state,
            timeouts,
            first: AtomicBool::new(true),
        }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        if self.first.swap(false, Ordering::Relaxed) {
            // The first head: hyper's deadline is the connect plus HEADER_READ_TIMEOUT.
            return Box::pin(HeadSleep {
                sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
                idle: None,
            });
        }
        Box::pin(HeadSleep {
            sleep: Box::pin(tokio::time::sleep(self.timeouts.idle)),
            idle: Some(Idle {
                state: Arc::clone(&self.state),
                reads: self.state.reads(),
                header: self.timeouts.header,
            }),
        })
    }
}

/// A wait for a request head: fires at its deadline, which moves from the idle one to the header one once the
/// client sends a byte.
struct HeadSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Set while the connection is idle (no byte of the next head yet).
    idle: Option<Idle>,
}

struct Idle {
    state: Arc<ConnState>,
    /// The stream's read count when the wait began.
    reads: u64,
    header: Duration,
}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this right after each read that did not complete the head, so a new byte is seen here
        // at once.
        if let Some(idle) = &self.idle
            && idle.state.reads() != idle.reads
        {
            let deadline = tokio::time::Instant::now() + idle.header;
            self.idle = None;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// An accepted connection's stream as hyper sees it: counts reads for [`HeadTimer`] and rewrites hyper's own
/// refusals into JSON.
#[derive(Debug)]
pub(crate) struct Watched {
    inner: CountedStream,
    state: Arc<ConnState>,
    /// A rewritten refusal not yet written whole; hyper was told it was.
    pending: Vec<u8>,
    written: usize,
}

impl Watched {
    pub(crate) fn new(inner: CountedStream, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            pending: Vec::new(),
            written: 0,
        }
    }

    /// Writes what is left of a rewritten refusal.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.pending.is_empty() {
            self.pending = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's answer to a head it refused, as JSON; `None` for anything else. hyper writes such an answer as one
/// buffer holding only the head: `HTTP/1.1 431 Request Header Fields Too Large`, `connection: close`,
/// `content-length: 0` and `date`.
fn rewrite_refusal(written: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(written)
        .ok()?
        .strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = match status_line.strip_prefix("HTTP/1.1 ")?.get(..4)? {
        "400 " => StatusCode::BAD_REQUEST,
        "414 " => StatusCode::URI_TOO_LONG,
        "431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let mut empty = false;
    let mut date = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if name.eq_ignore_ascii_case("date") {
            date = Some(line);
        }
    }
    if !empty {
        return None;
    }
    let message = match status {
        StatusCode::BAD_REQUEST => "Malformed HTTP request",
        StatusCode::URI_TOO_LONG => "The request URL is too long",
        _ => "The request head is too large or has too many headers",
    };
    let (name, _) = errors::describe(status);
    let body = serde_json::json!({"error": name, "message": message, "numeric": null}).to_string();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(date) = date {
        out.push_str(date);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.state.reads.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if !self.state.served.load(Ordering::Relaxed)
            && let Some(json) = rewrite_refusal(buf)
        {
            self.pending = json;
            // Whatever this cannot write now is written by the flush that follows.
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.state.served.load(Ordering::Relaxed) && self.pending.is_empty() {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        // Until the first request is served, one buffer at a time, so that a refusal is seen whole.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_refusals_become_json() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 14:40:46 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_refusal(hyper).expect("rewritten")).expect("utf-8");
        let (head, body) = out.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert!(head.contains("\r\ndate: Mon, 07 Dec 2026 14:40:46 GMT"));
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"], "headers_too_large");
        assert_eq!(json["numeric"], serde_json::Value::Null);
    }

    #[test]
    fn other_writes_pass() {
        // A body, a head with a body of its own, another status, a head cut short.
        assert!(rewrite_refusal(b"{\"error\":\"x\"}").is_none());
        assert!(
            rewrite_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none()
        );
        assert!(rewrite_refusal(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
        assert!(
            rewrite_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_some()
        );
    }
}
