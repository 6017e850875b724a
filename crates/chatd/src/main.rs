//! The chatd binary: reads the command line and configuration, sets up logging, and runs the chosen
//! subcommand; the server itself is in `server.rs`, the other subcommands in `commands.rs` and `seed.rs`.

mod cli;
mod commands;
mod config;
mod conn;
mod db;
mod errors;
mod listener;
mod logging;
mod routes;
mod seed;
mod server;
mod telemetry;
mod web;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser as _;

use crate::cli::{Cli, Cmd};

/// mimalloc instead of the system allocator: a woken long-poll allocates its response, and with a thousand
/// of them answered at once glibc's malloc spent a fifth of the server's time in its arenas (measured with
/// `cargo bench -p chat-bench --bench wake`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::config::Config;
use crate::db::{Create, Db, Lock};

fn main() -> ExitCode {
    // `.env` first: dotenvy sets only variables the environment does not already have, and clap reads the
    // environment, so flags beat the environment, which beats the file. A missing file is normal.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("chatd: cannot read .env: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let config = match Config::from_args(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_format, config.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command.unwrap_or(Cmd::Serve), &config));
    // Whatever is still running now (a connection that outlived the drain timeout, a blocking store read)
    // is abandoned after a moment rather than holding the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("chatd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Cmd, config: &Config) -> anyhow::Result<()> {
    match command {
        Cmd::Serve => serve(config).await,
        Cmd::Init => commands::init(config).await,
        Cmd::Migrate => commands::migrate(config),
        Cmd::Admin { action } => commands::admin(config, action).await,
        Cmd::Invite { action } => commands::invite(config, action).await,
        Cmd::Link { action } => commands::link(config, action),
        Cmd::Seed(args) => seed::run(config, args).await,
        Cmd::Backup { path } => commands::backup(config, &path),
        Cmd::Check { fix } => commands::check(config, fix).await,
    }
}

/// Removes, in the background, the attachment files a crash left behind (see `Files::sweep`): only files
/// written before this process started count, since the database lock says no other chatd writes them now,
/// and uploads of this process are skipped while in flight.
fn sweep_files(engine: &chat_engine::Engine, cutoff: std::time::SystemTime) {
    let engine = engine.clone();
    tokio::spawn(async move {
        match engine.sweep_files(cutoff, true).await {
            Ok(report) if !report.orphans.is_empty() => tracing::info!(
                removed = report.orphans.len(),
                bytes = report.orphan_bytes,
                "removed orphan attachment files"
            ),
            Ok(_) => {}
            // A failed sweep costs disk space only; `chatd check --fix` or the next start tries again.
            Err(e) => tracing::warn!(error = %e, "the attachment file sweep failed"),
        }
    });
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    if config.federation_key.is_some() && config.federation_name.is_none() {
        tracing::warn!(
            "FEDERATION_KEY is set, but FEDERATION_NAME is not: the federation routes are off"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
    // Secrets are redacted by `Config`'s Debug. MAX_UPLOAD_SIZE is validated now and used once uploads land.
    tracing::debug!(?config, "configuration");
    let metrics = telemetry::install()?;
    telemetry::spawn_upkeep(metrics.clone());
    // The signal handlers go in before anything is announced, so a SIGTERM right after start-up is a clean
    // shutdown rather than the default kill.
    let shutdown = server::shutdown_signal().context("installing signal handlers")?;

    let started = Instant::now();
    // The port is taken before the database is loaded: a client that reconnects while the server starts
    // (a bot resuming after a restart) waits in the listen backlog until it is served, instead of being
    // refused, which some Discord libraries answer by dropping their session. Only the time between the old
    // process closing its listener and this line refuses connections.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (LISTEN)", config.listen))?;
    let irc_listener = match config.irc_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (IRC_LISTEN)"))?,
        ),
        None => None,
    };
    let start_time = std::time::SystemTime::now();
    let db = Db::open(config, Create::Allow, Lock::Engine)?;
    let (engine, engine_task) = db.start(config.engine()).await?;
    sweep_files(&engine, start_time);
    let longpoll = transport_longpoll::LongPoll::new(engine.clone(), config.longpoll());
    let ws = transport_ws::WsApi::new(engine.clone(), config.ws());
    let federation = config.federation().map(|settings| {
        let federation = chat_federation::Federation::new(settings, engine.clone(), db.store());
        // Greets the links until the process ends.
        drop(federation.spawn());
        federation
    });
    let routes = routes::Shared {
        engine: engine.clone(),
        metrics: Some(metrics),
        metrics_auth: config.metrics_auth.clone().map(Arc::new),
        started,
        federation: federation.clone(),
    };
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        %addr,
        db = %config.db,
        epoch = engine.epoch(),
        last_seq = engine.last_seq(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening"
    );
    let irc = match irc_listener {
        Some(listener) => {
            let mut irc = transport_irc::Irc::new(engine.clone(), config.irc());
            if let Some((cert, key)) = &config.irc_tls {
                irc = irc.with_tls(cert, key)?;
            }
            let irc_addr = listener.local_addr().context("reading the IRC address")?;
            tracing::info!(addr = %irc_addr, "IRC listening");
            let door = irc.clone();
            tokio::spawn(async move { door.serve(listener).await });
            Some((irc, irc_addr))
        }
        None => None,
    };
    // The first line on stdout: scripts and tests read the real port from it (LISTEN may say port 0); the
    // IRC door's address follows on a line of its own when it is on.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "chatd listening on http://{addr}").context("writing to stdout")?;
        if let Some((_, irc_addr)) = &irc {
            writeln!(out, "chatd IRC listening on irc://{irc_addr}")
                .context("writing to stdout")?;
        }
        out.flush().context("flushing stdout")?;
    }
    let server = server::Server {
        engine,
        engine_task,
        longpoll,
        ws,
        federation,
        irc: irc.map(|(irc, _)| irc),
        routes,
        max_connections_per_ip: config.max_connections_per_ip,
        timeouts: conn::Timeouts {
            header: config.header_read_timeout,
            idle: config.keepalive_idle_timeout,
        },
    };
    server::run(listener, server, shutdown).await
}
