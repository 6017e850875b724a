//! The bare long-poll baseline server binary: binds, prints `bare-longpoll listening on http://ADDR`, serves
//! until Ctrl-C. The address comes from the first argument, else `BARE_LISTEN`, else `127.0.0.1:0`.

use std::io::Write;

use anyhow::Context;
use chat_bench::bare;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BARE_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let local = listener.local_addr()?;
    // The banner is the readiness signal benches wait for, so it goes out (flushed) only once we can accept.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "bare-longpoll listening on http://{local}")?;
    stdout.flush()?;
    drop(stdout);
    let shutdown = async {
        // If the signal handler cannot be installed, serve until killed rather than exit at once.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    bare::serve(listener, bare::Bare::new(), shutdown).await?;
    Ok(())
}
