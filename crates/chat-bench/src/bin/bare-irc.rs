//! The bare IRC line-broadcast baseline server binary: binds, prints `bare-irc listening on irc://ADDR`,
//! serves until Ctrl-C. The address comes from `--listen ADDR` (or a lone `ADDR` argument), else
//! `BARE_LISTEN`, else `127.0.0.1:0`.

use std::io::Write;

use anyhow::{Context, bail};
use chat_bench::bare_irc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = std::env::var("BARE_LISTEN").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = Some(args.next().context("--listen ADDR")?),
            other if !other.starts_with('-') => listen = Some(other.to_owned()),
            other => bail!("unknown argument {other}"),
        }
    }
    let addr = listen.unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let local = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "bare-irc listening on irc://{local}")?;
    stdout.flush()?;
    drop(stdout);
    let shutdown = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    bare_irc::serve(listener, bare_irc::BareIrc::new(), shutdown).await?;
    Ok(())
}
