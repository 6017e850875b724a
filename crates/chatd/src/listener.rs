//! The TCP listener the server accepts on: counts open connections for the `chatd_connections` gauge and
//! closes a new connection at once when its IP address already has MAX_CONNECTIONS_PER_IP open.
//!
//! Both happen here, below HTTP, because a connection costs memory and a task whether or not it ever sends
//! a request; a per-request limit would come too late.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::telemetry::{CONNECTIONS, CONNECTIONS_REFUSED};

/// Open connections per address.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A [`TcpListener`] with per-address accounting.
#[derive(Debug)]
pub(crate) struct CountingListener {
    inner: TcpListener,
    max_per_ip: usize,
    counts: Counts,
}

impl CountingListener {
    pub(crate) fn new(inner: TcpListener, max_per_ip: usize) -> Self {
        Self {
            inner,
            max_per_ip: max_per_ip.max(1),
            counts: Arc::default(),
        }
    }

    /// Takes one of the address's slots, or says it has none left.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let open = counts.entry(ip).or_insert(0);
        if *open >= self.max_per_ip {
            return None;
        }
        *open += 1;
        metrics::gauge!(CONNECTIONS, "transport" => "http").increment(1.0);
        Some(Slot {
            ip,
            counts: Arc::clone(&self.counts),
        })
    }
}

/// One admitted connection's place in the counts; given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    counts: Counts,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = counts.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                // Addresses with nothing open are forgotten, so the map does not grow with every client
                // that ever connected.
                counts.remove(&self.ip);
            }
        }
        metrics::gauge!(CONNECTIONS, "transport" => "http").decrement(1.0);
    }
}

/// An accepted connection: the stream plus its slot, released when hyper drops the connection.
#[derive(Debug)]
pub(crate) struct CountedStream {
    stream: TcpStream,
    _slot: Slot,
}

impl CountingListener {
    /// The next connection from an address with a slot free; waits out accept errors.
    pub(crate) async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    handle_accept_error(e).await;
                    continue;
                }
            };
            let Some(slot) = self.admit(addr.ip()) else {
                metrics::counter!(CONNECTIONS_REFUSED).increment(1);
                tracing::debug!(%addr, limit = self.max_per_ip, "too many connections from this address; closed");
                // Dropping the stream closes it before any byte is read.
                drop(stream);
                continue;
            };
            // Small JSON answers should leave at once rather than wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            return (
                CountedStream {
                    stream,
                    _slot: slot,
                },
                addr,
            );
        }
    }
}

/// Errors of one connection (reset before accept) are skipped; anything else (out of file descriptors) is
/// logged and waited out briefly, instead of spinning on a listener that keeps failing.
async fn handle_accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_capped_and_given_back() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = CountingListener::new(inner, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = listener.admit(ip).expect("first");
        let _b = listener.admit(ip).expect("second");
        assert!(listener.admit(ip).is_none(), "a third is over the cap");
        assert!(
            listener.admit("10.0.0.2".parse().unwrap()).is_some(),
            "other addresses are separate"
        );
        drop(a);
        assert!(
            listener.admit(ip).is_some(),
            "a dropped connection frees its slot"
        );
    }
}
