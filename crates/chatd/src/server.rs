//! The server: one listener serving every route (the long-poll API, the gateway, health, metrics, the web
//! client), until a shutdown future resolves; then a bounded graceful drain and the engine's shutdown.
//!
//! Shutdown is an argument (as in tokio's mini-redis) so that tests and `main` decide what ends the server:
//! `main` passes SIGTERM or Ctrl-C. Connections are served by hyper's http1 connection directly rather than
//! through `axum::serve`, which has no way to set hyper's header-read timeout: see `conn.rs` for the
//! timeouts and `errors.rs` for the one error shape.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use chat_engine::{Engine, EngineTask};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;
use transport_longpoll::LongPoll;
use transport_ws::WsApi;

use crate::conn::{ConnState, HeadTimer, Timeouts, Watched};
use crate::listener::{CountedStream, CountingListener};
use crate::{errors, routes};

/// How long in-flight requests get to finish once shutdown begins. Parked long-polls are answered at once
/// by `LongPoll::close`, so anything still open after this is a slow client, not work worth waiting for.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the server runs.
pub(crate) struct Server {
    pub(crate) engine: Engine,
    pub(crate) engine_task: EngineTask,
    pub(crate) longpoll: LongPoll,
    pub(crate) ws: WsApi,
    /// The server-link routes, when FEDERATION_NAME is set.
    pub(crate) federation: Option<std::sync::Arc<chat_federation::Federation>>,
    /// The IRC door, when IRC_LISTEN is set.
    pub(crate) irc: Option<transport_irc::Irc>,
    pub(crate) routes: routes::Shared,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) timeouts: Timeouts,
}

impl Server {
    fn router(&self) -> Router {
        let mut router = Router::new()
            .merge(self.longpoll.router())
            .merge(self.ws.router())
            .merge(routes::router(self.routes.clone()))
            .merge(crate::web::router());
        if let Some(federation) = &self.federation {
            router = router.merge(federation.router());
        }
        router.fallback(routes::not_found)
    }
}

/// Serves on `listener` until `shutdown` resolves, then: stops accepting, answers parked long-polls, lets
/// in-flight requests finish (at most [`DRAIN_TIMEOUT`]), and shuts the engine down (cursors and a
/// snapshot saved). Returns once the engine has stopped.
pub(crate) async fn run(
    listener: TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = server.router();
    let mut listener = CountingListener::new(listener, server.max_connections_per_ip);
    // Every connection task holds a receiver: `true` asks it to finish its request and close, and the
    // sender's `closed` resolves once every task has ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            server.engine.clone(),
            server.timeouts,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; answering parked long-polls");
    // Before waiting for connections to finish: a parked long-poll would otherwise hold its connection for
    // up to 30 s.
    server.longpoll.close();
    server.ws.close();
    if let Some(irc) = &server.irc {
        // Before the engine stops: each connection saves its client's cursor as its last lines are written.
        irc.close(Duration::from_secs(5)).await;
    }
    stop_tx.send_replace(true);
    drop(stop_rx);
    if tokio::time::timeout(DRAIN_TIMEOUT, stop_tx.closed())
        .await
        .is_err()
    {
        // Connections still open are tasks of their own; they end when the runtime does, right after the
        // engine has stopped.
        tracing::warn!(
            timeout = ?DRAIN_TIMEOUT,
            "connections still open after the drain timeout; leaving them to be cut at exit"
        );
    }
    tracing::info!("connections drained; stopping the engine");
    crate::db::stop(&server.engine, server.engine_task).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Serves one connection until it closes, or, once `stop` turns true, until its request in flight is done.
async fn serve_connection(
    stream: CountedStream,
    peer: SocketAddr,
    app: Router,
    engine: Engine,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&state)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(HeadTimer::new(Arc::clone(&state), timeouts))
        .header_read_timeout(timeouts.header);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        state.mark_served();
        handle(app.clone(), engine.clone(), request, peer)
    });
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // Timeouts, refused heads and resets: the client's doing, not worth more than a debug line.
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            () = async { let _ = stop.wait_for(|stop| *stop).await; }, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// One request: refused if its head is over our limits, else routed; any error answer leaves in JSON.
async fn handle(
    app: Router,
    engine: Engine,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response, Infallible> {
    let discord = errors::is_discord(request.uri().path());
    if let Some(refusal) = errors::check_head(&request) {
        return Ok(refusal);
    }
    // A cluster is one server: a request to this node sees every command acknowledged before it, whichever
    // node acknowledged it (a no-op on a single node and on the writer).
    engine.sync().await;
    // The transports read the peer's address for per-address limits.
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = app.oneshot(request.map(Body::new)).await?;
    Ok(errors::to_json(response, discord).await)
}

/// Listens for SIGTERM and Ctrl-C (SIGINT) from now on, and returns a future that resolves on either.
///
/// The handlers are installed here, before the future is first polled, so that a signal arriving just
/// after start-up (a test that reads the listening line and sends SIGTERM at once) is caught rather than
/// killing the process with the default action.
#[cfg(unix)]
pub(crate) fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = sigint.recv() => tracing::info!("Ctrl-C received"),
        }
    })
}

/// Returns a future that resolves on Ctrl-C.
#[cfg(not(unix))]
pub(crate) fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        } else {
            std::future::pending::<()>().await;
        }
    })
}
