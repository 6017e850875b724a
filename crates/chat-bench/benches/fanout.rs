//! Fan-out through the gateway: messages to one channel of N gateway connections on loopback (SPEC §10, issue 5).
//!
//! chatd runs as a child process; N guest users join `#fan` over the long-poll API; `gateway-swarm` processes
//! (a few thousand sockets each, beside the server) identify one gateway connection per user. Then a sender
//! posts `FANOUT_MESSAGES` messages back to back, each stamped with its send time, and the swarms record every
//! MESSAGE_CREATE's delivery latency. Reported: deliveries per second (all deliveries over the time from the
//! first send to the last arrival) and the latency percentiles over every delivery.
//!
//! Environment: `FANOUT_CONNS` (default 10000), `FANOUT_MESSAGES` (default 20), `FANOUT_PROCS` (swarm
//! processes, default 2), `CHATD_BIN` (a chatd binary instead of `cargo build --release -p chatd`).
//! Run: `cargo bench -p chat-bench --bench fanout`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use chat_bench::client::Conn;
use chat_bench::process::Chatd;
use http::Method;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const CHANNEL: &str = "#fan";
/// Users set up at once over HTTP.
const SETUP_PARALLELISM: usize = 32;

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

async fn call(
    conn: &mut Conn,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Value> {
    let (status, bytes) = conn
        .request(method, path, token, Some(body.to_string().into()))
        .await?;
    ensure!(
        status.is_success(),
        "{path}: HTTP {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(serde_json::from_slice(&bytes)?)
}

/// A guest in `#fan`; returns its token.
async fn user(addr: SocketAddr, nick: String) -> Result<String> {
    let mut conn = Conn::connect(addr).await?;
    let login = call(
        &mut conn,
        Method::POST,
        "/api/v1/session",
        None,
        json!({ "nick": nick }),
    )
    .await?;
    let token = login["token"].as_str().context("token")?.to_owned();
    call(
        &mut conn,
        Method::POST,
        "/api/v1/messages",
        Some(&token),
        json!({ "command": "JOIN", "to": CHANNEL }),
    )
    .await?;
    Ok(token)
}

/// A swarm process and the deliveries it has reported so far.
struct Swarm {
    child: Child,
    count: Arc<AtomicU64>,
    summary: std::sync::mpsc::Receiver<Value>,
}

fn swarm(
    addr: SocketAddr,
    tokens: &[String],
    dir: &std::path::Path,
    index: usize,
) -> Result<(Swarm, usize)> {
    let file = dir.join(format!("tokens-{index}.txt"));
    std::fs::write(&file, tokens.join("\n"))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-swarm"))
        .args(["--addr", &addr.to_string(), "--tokens"])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting gateway-swarm")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        let line = lines.next().context("swarm ended before ready")??;
        if let Some(n) = line.strip_prefix("ready ") {
            break n.trim().parse::<usize>()?;
        }
    };
    let count = Arc::new(AtomicU64::new(0));
    let (tx, summary) = std::sync::mpsc::channel();
    let seen = Arc::clone(&count);
    // A thread keeps reading the swarm's progress (and finally its summary) so its pipe never fills.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("count ") {
                seen.store(n.trim().parse().unwrap_or(0), Ordering::SeqCst);
            } else if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Ok((
        Swarm {
            child,
            count,
            summary,
        },
        ready,
    ))
}

async fn run() -> Result<()> {
    let conns = env_usize("FANOUT_CONNS", 10_000)?;
    let messages = env_usize("FANOUT_MESSAGES", 20)?;
    let procs = env_usize("FANOUT_PROCS", 2)?.max(1);
    let chatd = Chatd::start(&[])?;
    let addr = chatd.process.addr();
    eprintln!("fanout: chatd at {addr}; setting up {conns} users in {CHANNEL}");

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(SETUP_PARALLELISM));
    let mut set = JoinSet::new();
    for i in 0..conns {
        let gate = Arc::clone(&gate);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            user(addr, format!("fan{i}")).await
        });
    }
    let mut tokens = Vec::with_capacity(conns);
    while let Some(t) = set.join_next().await {
        tokens.push(t??);
    }
    eprintln!("fanout: {conns} users joined in {:.1?}", started.elapsed());

    let started = Instant::now();
    let mut swarms = Vec::new();
    let mut ready = 0;
    let per = conns.div_ceil(procs);
    for (i, chunk) in tokens.chunks(per.max(1)).enumerate() {
        let (s, n) = swarm(addr, chunk, chatd.dir.path(), i)?;
        ready += n;
        swarms.push(s);
    }
    ensure!(
        ready == conns,
        "only {ready} of {conns} gateway connections identified"
    );
    eprintln!(
        "fanout: {ready} gateway connections ready in {:.1?}",
        started.elapsed()
    );

    let mut sender = Conn::connect(addr).await?;
    let sender_token = {
        let login = call(
            &mut sender,
            Method::POST,
            "/api/v1/session",
            None,
            json!({"nick": "sender"}),
        )
        .await?;
        login["token"].as_str().context("token")?.to_owned()
    };
    call(
        &mut sender,
        Method::POST,
        "/api/v1/messages",
        Some(&sender_token),
        json!({ "command": "JOIN", "to": CHANNEL }),
    )
    .await?;
    // Let the sender's own join reach everyone before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline: u64 = swarms.iter().map(|s| s.count.load(Ordering::SeqCst)).sum();

    let first_send = now_ns();
    for _ in 0..messages {
        call(
            &mut sender,
            Method::POST,
            "/api/v1/messages",
            Some(&sender_token),
            json!({ "command": "PRIVMSG", "to": CHANNEL, "body": format!("t={}", now_ns()) }),
        )
        .await?;
    }
    let expected = (messages * conns) as u64 + baseline;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got: u64 = swarms.iter().map(|s| s.count.load(Ordering::SeqCst)).sum();
        if got >= expected {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("fanout: timed out with {got} of {expected} deliveries");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut deliveries = 0u64;
    let mut last = 0u64;
    let mut p50 = Vec::new();
    let mut p99 = 0u64;
    let mut max = 0u64;
    for mut s in swarms {
        // Closing stdin asks the swarm for its summary.
        drop(s.child.stdin.take());
        let v = s
            .summary
            .recv_timeout(Duration::from_secs(30))
            .context("swarm summary")?;
        deliveries += v["deliveries"].as_u64().unwrap_or(0);
        last = last.max(v["last_ns"].as_u64().unwrap_or(0));
        p50.push(v["p50_us"].as_u64().unwrap_or(0));
        p99 = p99.max(v["p99_us"].as_u64().unwrap_or(0));
        max = max.max(v["max_us"].as_u64().unwrap_or(0));
        let _ = s.child.wait();
    }
    if deliveries == 0 {
        bail!("no deliveries");
    }
    let seconds = last.saturating_sub(first_send) as f64 / 1e9;
    println!();
    println!(
        "fan-out: {messages} messages to {CHANNEL} with {conns} gateway connections (loopback)"
    );
    println!("  deliveries:      {deliveries} of {}", messages * conns);
    println!("  first send -> last arrival: {seconds:.3} s");
    println!(
        "  deliveries/s:    {:.0}",
        deliveries as f64 / seconds.max(1e-9)
    );
    println!(
        "  latency p50:     {:.2} ms (per swarm: {:?} µs)",
        p50.iter().max().copied().unwrap_or(0) as f64 / 1000.0,
        p50
    );
    println!(
        "  latency p99:     {:.2} ms (worst swarm)",
        p99 as f64 / 1000.0
    );
    println!("  latency max:     {:.2} ms", max as f64 / 1000.0);
    std::io::stdout().flush()?;
    Ok(())
}

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}
