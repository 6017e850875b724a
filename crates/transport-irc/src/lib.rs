//! The IRC door: RFC 1459/2812 with IRCv3 over TCP, on the engine, as a third transport beside the
//! long-poll API and the Discord-compatible gateway.
//!
//! [`Irc`] is built on an [`Engine`] with [`Settings`]; [`Irc::serve`] accepts connections on a listener
//! until [`Irc::close`]. One IRC connection is one client (device) of its user: the session is the server's,
//! so a client that comes back with the same credentials is played what it missed since the last line this
//! door wrote to it (the client's cursor, saved as lines reach the socket), and what it sends reaches the
//! user's other devices on every door. See the crate's README section "IRC" for what maps to what.
#![deny(missing_docs)]

mod conn;
mod flood;
pub mod line;
mod numeric;
mod reader;
mod render;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chat_engine::Engine;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The door's settings (the binary fills them from its configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The server's name as IRC shows it: the source of numerics and server notices (no spaces).
    pub server_name: String,
    /// The network's name (ISUPPORT `NETWORK`).
    pub network: String,
    /// The message of the day, one IRC line per line of text; empty: `422 MOTD File is missing`.
    pub motd: String,
    /// The server's version string.
    pub version: String,
    /// Connections one address may hold at once; more are refused with `ERROR`.
    pub max_connections_per_ip: usize,
    /// A connection silent this long is sent a `PING`, and closed if it stays silent as long again.
    pub ping_interval: Duration,
    /// A connection must register (NICK and USER, CAP END) within this.
    pub registration_timeout: Duration,
    /// Flood control: lines a client may send at once...
    pub flood_burst: u32,
    /// ...then this many a second (the rest wait)...
    pub flood_rate: f64,
    /// ...and a client this many lines past its allowance is disconnected (`Excess Flood`).
    pub flood_excess: u32,
    /// The most bytes of replies waiting to be written to a connection; past it the connection is closed
    /// (`SendQ exceeded`). The stream is read only while less than a quarter of all that waits.
    pub sendq: usize,
    /// A connection whose send queue stays over a quarter of [`Settings::sendq`] with nothing written for
    /// this long is closed (`SendQ exceeded`); it resumes from the last position it showed it had read (the
    /// PONG to a PING written after it).
    pub slow_limit: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server_name: "chatd".into(),
            network: "chatd".into(),
            motd: String::new(),
            version: env!("CARGO_PKG_VERSION").into(),
            max_connections_per_ip: 64,
            ping_interval: Duration::from_secs(90),
            registration_timeout: Duration::from_secs(60),
            flood_burst: 20,
            flood_rate: 4.0,
            flood_excess: 60,
            sendq: 1 << 20,
            slow_limit: Duration::from_secs(30),
        }
    }
}

/// The IRC door.
#[derive(Clone)]
pub struct Irc {
    shared: Arc<Shared>,
    /// With IRC_TLS_CERT and IRC_TLS_KEY: every connection speaks TLS first.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Irc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Irc")
            .field("shared", &self.shared)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// A certificate chain and key the door cannot use.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) settings: Settings,
    /// `true` once the door is closing: connections say so and end.
    pub(crate) closing: watch::Sender<bool>,
    /// Open connections per address.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// When the door started (RPL_CREATED).
    pub(crate) started: String,
    /// Lines of recent channel events, encoded once for every connection with the same capabilities; read
    /// by every member connection of a channel for each event, written once per event and capability set.
    pub(crate) rendered: RwLock<render::Cache>,
}

impl Irc {
    /// A door on `engine`.
    pub fn new(engine: Engine, settings: Settings) -> Self {
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        Self {
            shared: Arc::new(Shared {
                engine,
                settings,
                closing: watch::channel(false).0,
                per_ip: Mutex::new(HashMap::new()),
                open: AtomicU64::new(0),
                started,
                rendered: RwLock::new(render::Cache::default()),
            }),
            tls: None,
        }
    }

    /// The door with TLS: `cert` is a PEM file with the certificate chain (the server's first), `key` a
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn with_tls(
        mut self,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, TlsError> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError(format!("IRC_TLS_CERT {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(TlsError(format!(
                "IRC_TLS_CERT {}: no certificate in it",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError(format!("IRC_TLS_KEY {}: {e}", key.display())))?;
        #[allow(
            deprecated,
            reason = "ring builds without a C toolchain's cmake and is already in the tree; it lacks only \
                      the post-quantum key exchange"
        )]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| TlsError(format!("IRC_TLS_CERT and IRC_TLS_KEY: {e}")))?;
        self.tls = Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)));
        Ok(self)
    }

    /// Accepts connections on `listener` until [`Irc::close`]; each is served by a task of its own.
    pub async fn serve(&self, listener: TcpListener) {
        let mut closing = self.shared.closing.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = async { let _ = closing.wait_for(|c| *c).await; } => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match &self.tls {
                        None => self.spawn(stream, peer),
                        Some(tls) => {
                            let (door, tls) = (self.clone(), tls.clone());
                            // The handshake runs in a task of its own, so a slow one holds up no other.
                            tokio::spawn(async move {
                                match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(stream)).await
                                {
                                    Ok(Ok(stream)) => door.spawn(stream, peer),
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "IRC TLS handshake failed")
                                    }
                                    Err(_) => tracing::debug!(%peer, "IRC TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors, mostly: wait a little rather than spin.
                    tracing::warn!(error = %e, "IRC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves one connection that was accepted elsewhere (a TLS stream, a test's pipe) from `peer`.
    pub fn spawn<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let Some(slot) = Slot::take(&shared, peer.ip()) else {
            tokio::spawn(conn::refuse(
                stream,
                "Too many connections from your address",
            ));
            return;
        };
        tokio::spawn(async move {
            conn::serve(Arc::clone(&shared), stream, peer).await;
            drop(slot);
        });
    }

    /// Asks every connection to end (`ERROR :Server shutting down`) and stops accepting; returns once every
    /// connection has ended and saved its client's cursor, or after `limit`.
    pub async fn close(&self, limit: Duration) {
        self.shared.closing.send_replace(true);
        let deadline = tokio::time::Instant::now() + limit;
        while self.shared.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }
}

/// One address's claim on a connection, given back when dropped.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Slot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let mut per_ip = shared.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= shared.settings.max_connections_per_ip {
            return None;
        }
        *n += 1;
        shared.open.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            shared: Arc::clone(shared),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self
            .shared
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}
