//! A minimal HTTP/1.1 keep-alive client connection for benches: one TCP connection, one request at a time.
//!
//! Benches want exactly one connection per simulated client (1000 parked polls = 1000 sockets), with no pool
//! deciding for them, so this wraps hyper's low-level `client::conn::http1` handshake rather than a pooled client.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What can go wrong on a bench connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (connection closed, malformed response, ...).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a bad path or header value).
    #[error("request: {0}")]
    Request(#[from] http::Error),
}

/// One keep-alive HTTP/1.1 connection to a server.
#[derive(Debug)]
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Opens a connection to `addr` (with TCP_NODELAY, as request/response traffic wants).
    pub async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // hyper's connection future does the actual reading and writing; it ends when the sender is dropped
        // or the peer closes, and its error then surfaces through the next `request` call.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole response body. `bearer` adds `Authorization: Bearer ...`;
    /// a `body` is sent as `application/json`.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
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
        let req = builder.body(Full::new(body.unwrap_or_default()))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}
