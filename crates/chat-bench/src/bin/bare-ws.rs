//! The bare WebSocket broadcast baseline server binary: binds, prints `bare-ws listening on http://ADDR`,
//! serves until Ctrl-C. The address comes from `--listen ADDR` (or a lone `ADDR` argument), else `BARE_LISTEN`,
//! else `127.0.0.1:0`. `--threads N` sets the runtime's worker threads (default: one per core).

use std::io::Write;

use anyhow::{Context, bail};
use chat_bench::bare_ws;

fn main() -> anyhow::Result<()> {
    let mut listen = std::env::var("BARE_LISTEN").ok();
    let mut threads = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = Some(args.next().context("--listen ADDR")?),
            "--threads" => {
                threads = Some(args.next().context("--threads N")?.parse::<usize>()?);
            }
            other if !other.starts_with('-') => listen = Some(other.to_owned()),
            other => bail!("unknown argument {other}"),
        }
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        runtime.worker_threads(n.max(1));
    }
    runtime
        .enable_all()
        .build()?
        .block_on(run(listen.unwrap_or_else(|| "127.0.0.1:0".to_owned())))
}

async fn run(addr: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let local = listener.local_addr()?;
    // The banner is the readiness signal benches wait for, so it goes out (flushed) only once we can accept.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "bare-ws listening on http://{local}")?;
    stdout.flush()?;
    drop(stdout);
    let shutdown = async {
        // If the signal handler cannot be installed, serve until killed rather than exit at once.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    bare_ws::serve(listener, bare_ws::BareWs::new(), shutdown).await?;
    Ok(())
}
