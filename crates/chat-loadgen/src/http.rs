//! One keep-alive HTTP/1.1 connection per simulated client (hyper's low-level handshake, no pool), bound to a
//! chosen loopback source address.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// Kernel socket buffers: poll answers and sends are small, and thousands of sockets add up.
const SOCKET_BUFFER: u32 = 16 * 1024;

/// One HTTP/1.1 connection; one request at a time.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Connects to `server` from `source` (any port), with TCP_NODELAY.
    pub(crate) async fn connect(server: SocketAddr, source: SocketAddr) -> Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket
            .bind(source)
            .with_context(|| format!("binding {source}"))?;
        let stream = socket.connect(server).await.context("connect")?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .context("http handshake")?;
        // The connection future does the reading and writing; it ends when the sender is dropped or the
        // peer closes, and its error then surfaces through the next request.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: server.to_string(),
        })
    }

    /// Sends one request and reads the whole answer; `body` goes out as JSON.
    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        if let Some(token) = bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

/// Keep-alive connections to one server shared by concurrent senders: a request takes an idle connection
/// (or opens one) and gives it back when answered, so a sender costs no URL parsing, pool bookkeeping or
/// header maps beyond the request's own.
#[derive(Debug)]
pub(crate) struct Pool {
    server: SocketAddr,
    idle: std::sync::Mutex<Vec<Conn>>,
}

impl Pool {
    /// A pool for `base` (`http://127.0.0.1:PORT`).
    pub(crate) fn new(base: &str) -> Result<Self> {
        let authority = base
            .trim_end_matches('/')
            .strip_prefix("http://")
            .with_context(|| format!("{base}: only http:// is supported"))?;
        let server = authority
            .parse()
            .with_context(|| format!("{base}: the host must be an IP address and port"))?;
        Ok(Self {
            server,
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Sends one request on an idle connection (a new one if none is); a connection that failed is dropped.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match idle {
            Some(conn) => conn,
            None => Conn::connect(self.server, SocketAddr::from(([127, 0, 0, 1], 0))).await?,
        };
        let answer = conn.request(method, path, bearer, body).await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        Ok(answer)
    }
}
