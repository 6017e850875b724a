//! The server: one listener serving every route (the long-poll API, health, metrics), until a shutdown
//! future resolves; then a bounded graceful drain and the engine's shutdown.
//!
//! Shutdown is an argument (as in tokio's mini-redis) so that tests and `main` decide what ends the server:
//! `main` passes SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt as _;
use chat_engine::{Engine, EngineTask};
use tokio::net::TcpListener;
use transport_longpoll::LongPoll;
use transport_ws::WsApi;

use crate::listener::CountingListener;
use crate::routes;

/// How long in-flight requests get to finish once shutdown begins. Parked long-polls are answered at once
/// by `LongPoll::close`, so anything still open after this is a slow client, not work worth waiting for.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the server runs.
pub(crate) struct Server {
    pub(crate) engine: Engine,
    pub(crate) engine_task: EngineTask,
    pub(crate) longpoll: LongPoll,
    pub(crate) ws: WsApi,
    pub(crate) routes: routes::Shared,
    pub(crate) max_connections_per_ip: usize,
}

impl Server {
    fn router(&self) -> Router {
        Router::new()
            .merge(self.longpoll.router())
            .merge(self.ws.router())
            .merge(routes::router(self.routes.clone()))
            .merge(crate::web::router())
            .fallback(routes::not_found)
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
    let longpoll = server.longpoll.clone();
    let ws = server.ws.clone();
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; answering parked long-polls");
        // Before axum waits for connections to finish: a parked long-poll would otherwise hold its
        // connection for up to 30 s.
        longpoll.close();
        ws.close();
        let _ = draining_tx.send(());
    };
    // `tap_io` is a no-op here; it gives axum a listener type for which it can extract the peer's
    // `SocketAddr` as `ConnectInfo`, which the transports read for per-address limits.
    let listener = CountingListener::new(listener, server.max_connections_per_ip).tap_io(|_| {});
    let served = {
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .into_future();
        tokio::pin!(serve);
        let deadline = async {
            // Resolves only once shutdown has begun; an error means `serve` ended first and dropped the
            // sender.
            if draining_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = &mut serve => result.map_err(anyhow::Error::from),
            () = deadline => {
                tracing::warn!(
                    timeout = ?DRAIN_TIMEOUT,
                    "connections still open after the drain timeout; leaving them to be cut at exit"
                );
                Ok(())
            }
        }
        // The serve future ends here: the listener is closed. Connections still open after the deadline
        // are tasks of their own; they end when the runtime does, right after the engine has stopped.
    };
    tracing::info!("connections drained; stopping the engine");
    let stopped = crate::db::stop(&server.engine, server.engine_task).await;
    served?;
    stopped?;
    tracing::info!("stopped");
    Ok(())
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
