//! `gateway-swarm`: many Discord-gateway connections in one process, for fan-out benchmarks.
//!
//! It reads bearer tokens (one per line) from the file named by `--tokens`, opens one gateway connection per
//! token to `ws://ADDR/gateway`, identifies each (GUILDS, GUILD_MESSAGES, MESSAGE_CONTENT), and prints
//! `ready N` on stdout once every connection has its READY. From then on it counts MESSAGE_CREATE dispatches
//! whose content is `t=<unix nanoseconds>` and records, per delivery, the time from that stamp to the frame's
//! arrival, printing `count N` as deliveries come in. When stdin closes (or `--seconds` pass) it prints one
//! JSON line: the deliveries, the first and last arrival (unix ns) and the latency percentiles in
//! microseconds.
//!
//! One process holds at most a few thousand sockets (this machine allows 20,000 open files per process), so a
//! bench starts several swarms beside the server. The swarm does as little as it can per frame (a substring
//! search, no JSON parse of dispatches) so that it measures the server, not itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT.
const INTENTS: u64 = 1 | (1 << 9) | (1 << 15);
/// Handshakes in flight at once: enough to set up thousands of sockets quickly without a SYN flood.
const CONNECT_PARALLELISM: usize = 128;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

struct Args {
    addr: String,
    tokens: String,
    seconds: u64,
}

fn args() -> Result<Args> {
    let mut addr = None;
    let mut tokens = None;
    let mut seconds = 600;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--addr" => addr = it.next(),
            "--tokens" => tokens = it.next(),
            "--seconds" => seconds = it.next().context("--seconds N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        addr: addr.context("--addr HOST:PORT")?,
        tokens: tokens.context("--tokens FILE")?,
        seconds,
    })
}

/// The `t=<ns>` stamp of a MESSAGE_CREATE frame, found without parsing the JSON.
fn stamp(frame: &str) -> Option<u64> {
    if !frame.contains("\"t\":\"MESSAGE_CREATE\"") {
        return None;
    }
    let at = frame.find("\"content\":\"t=")? + "\"content\":\"t=".len();
    let digits: &str = &frame[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// The `heartbeat_interval` of a Hello frame.
fn heartbeat_interval(frame: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(frame).ok()?;
    v["d"]["heartbeat_interval"].as_u64()
}

struct Totals {
    latency: Mutex<Histogram<u64>>,
    deliveries: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    ready: AtomicUsize,
    failed: AtomicUsize,
}

async fn connection(
    addr: String,
    token: String,
    totals: Arc<Totals>,
    setup: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permit = setup.acquire().await?;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/gateway/?v=10&encoding=json"))
            .await
            .context("connect")?;
    let hello = match ws.next().await {
        Some(Ok(Message::Text(t))) => t,
        other => bail!("expected Hello, got {other:?}"),
    };
    let interval = heartbeat_interval(&hello).context("Hello without heartbeat_interval")?;
    let identify = serde_json::json!({
        "op": 2,
        "d": {
            "token": format!("Bot {token}"),
            "intents": INTENTS,
            "properties": {"os": "linux", "browser": "gateway-swarm", "device": "gateway-swarm"},
        }
    });
    ws.send(Message::text(identify.to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"t\":\"READY\"") => break,
            Some(Ok(Message::Text(_))) => {}
            Some(Ok(Message::Close(c))) => bail!("closed before READY: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("ended before READY"),
        }
    }
    drop(permit);
    totals.ready.fetch_add(1, Ordering::SeqCst);
    let mut local = Histogram::<u64>::new(3)?;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(interval.max(1000)));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Some(sent) = stamp(&t) {
                        let at = now_ns();
                        local.record(at.saturating_sub(sent) / 1000).ok();
                        totals.deliveries.fetch_add(1, Ordering::Relaxed);
                        totals.first.fetch_min(at, Ordering::Relaxed);
                        totals.last.fetch_max(at, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("ended"),
            },
            _ = heartbeat.tick() => {
                ws.send(Message::text(r#"{"op":1,"d":null}"#)).await?;
            }
            _ = stop.changed() => break,
        }
    }
    totals.latency.lock().await.add(&local)?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = args()?;
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("reading {}", args.tokens))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let totals = Arc::new(Totals {
        latency: Mutex::new(Histogram::new(3)?),
        deliveries: AtomicU64::new(0),
        first: AtomicU64::new(u64::MAX),
        last: AtomicU64::new(0),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let setup = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for token in &tokens {
        let (addr, token, totals, setup, stop) = (
            args.addr.clone(),
            token.clone(),
            Arc::clone(&totals),
            Arc::clone(&setup),
            stop_rx.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = connection(addr, token, Arc::clone(&totals), setup, stop).await {
                totals.failed.fetch_add(1, Ordering::SeqCst);
                eprintln!("gateway-swarm: {e:#}");
            }
        });
    }
    // Ready once every connection identified (or failed: the bench sees the count and decides).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    while totals.ready.load(Ordering::SeqCst) + totals.failed.load(Ordering::SeqCst) < tokens.len()
    {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready {}", totals.ready.load(Ordering::SeqCst));
    // Progress, so that the bench knows when every delivery has arrived without guessing a wait.
    let progress = {
        let totals = Arc::clone(&totals);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = totals.deliveries.load(Ordering::Relaxed);
                if now != last {
                    println!("count {now}");
                    last = now;
                }
            }
        })
    };
    // Wait for stdin to close (the bench is done sending and waiting) or the time limit.
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut lines = stdin.lines();
    let _ = tokio::time::timeout_at(deadline, async {
        while let Ok(Some(_)) = lines.next_line().await {}
    })
    .await;
    progress.abort();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let h = totals.latency.lock().await;
    let summary = serde_json::json!({
        "connections": tokens.len(),
        "ready": totals.ready.load(Ordering::SeqCst),
        "failed": totals.failed.load(Ordering::SeqCst),
        "deliveries": totals.deliveries.load(Ordering::SeqCst),
        "first_ns": totals.first.load(Ordering::SeqCst),
        "last_ns": totals.last.load(Ordering::SeqCst),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    });
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_without_parsing() {
        let frame =
            r#"{"op":0,"s":9,"t":"MESSAGE_CREATE","d":{"id":"1","content":"t=12345","x":1}}"#;
        assert_eq!(stamp(frame), Some(12345));
        assert_eq!(stamp(r#"{"op":0,"s":9,"t":"TYPING_START","d":{}}"#), None);
        assert_eq!(
            stamp(r#"{"op":0,"t":"MESSAGE_CREATE","d":{"content":"hello"}}"#),
            None
        );
    }
}
