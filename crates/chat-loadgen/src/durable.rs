//! The `durable-send` scenario: senders, each posting `PRIVMSG` to its own channel on its own keep-alive
//! connection, one request in flight each; every send counts once chatd has acknowledged it (its answer comes
//! only once the message is durable), its latency from the request's start to the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use http::Method;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::gateway::{Swarm, Totals};
use crate::http::Conn;
use crate::util::{self, now_ns};

/// Starts one sender per (token, channel), paced at `rate` messages per second in total (0: as fast as each
/// is acknowledged), until stopped. Acknowledged sends are counted as deliveries, failed ones as poll errors.
pub(crate) fn start(server: SocketAddr, senders: Vec<(String, String)>, rate: f64) -> Swarm {
    let totals = Arc::new(Totals::new());
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let n = senders.len();
    let start = Instant::now() + Duration::from_millis(200);
    for (i, (token, channel)) in senders.into_iter().enumerate() {
        let (totals, mut stop) = (Arc::clone(&totals), stop_rx.clone());
        // Each sender gets its share of the rate, offset so the senders do not fire in step.
        let pacing = (rate > 0.0).then(|| {
            (
                start + Duration::from_secs_f64(i as f64 / rate),
                Duration::from_secs_f64(n as f64 / rate),
            )
        });
        let source = SocketAddr::new(util::source_addr(i, 0, 1).into(), 0);
        tasks.spawn(async move {
            tokio::select! {
                r = sender(server, source, i, &token, &channel, pacing, &totals) => if let Err(e) = r
                    && totals.failed.fetch_add(1, Ordering::SeqCst) < 5
                {
                    eprintln!("durable-send: sender {i}: {e:#}");
                },
                _ = stop.changed() => {}
            }
        });
    }
    Swarm::from_parts(totals, stop, tasks, n)
}

/// One sender: sends until the task is stopped, one request in flight, paced from `pacing` = (first send,
/// interval) if given.
async fn sender(
    server: SocketAddr,
    source: SocketAddr,
    i: usize,
    token: &str,
    channel: &str,
    pacing: Option<(Instant, Duration)>,
    totals: &Totals,
) -> Result<()> {
    let mut conn = Conn::connect(server, source).await?;
    totals.ready.fetch_add(1, Ordering::SeqCst);
    let mut k: u32 = 0;
    loop {
        if let Some((first, every)) = pacing {
            tokio::time::sleep_until(first + every * k).await;
        }
        k = k.saturating_add(1);
        let stamp = now_ns();
        let body = json!({ "command": "PRIVMSG", "to": channel, "body": format!("t={stamp}") });
        let answer = conn
            .request(
                Method::POST,
                "/api/v1/messages",
                Some(token),
                Some(body.to_string()),
            )
            .await;
        match answer {
            Ok((status, _)) if status.is_success() => totals.record(i, stamp),
            Ok((status, text)) => {
                if totals.poll_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!(
                        "durable-send: sender {i}: HTTP {status}: {}",
                        String::from_utf8_lossy(&text)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                if totals.poll_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("durable-send: sender {i}: {e:#}; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn = Conn::connect(server, source)
                    .await
                    .context("reconnecting")?;
            }
        }
    }
}

/// Runs `durable-send`: chatd only (the bare long-poll server keeps nothing), in this process.
pub(crate) async fn run(cli: &crate::Cli, server: SocketAddr) -> Result<()> {
    use crate::longpoll::Kind;

    let started_at = std::time::SystemTime::now();
    if cli.procs != 1 {
        anyhow::bail!("durable-send runs in one process: leave out --procs");
    }
    let kind = match cli.server_kind {
        Some(k) => k,
        None => Kind::detect(server).await?,
    };
    if kind != Kind::Chatd {
        anyhow::bail!("durable-send needs chatd: the bare long-poll server has no durable sends");
    }
    let run = crate::run_id();
    let n = cli.conns;
    let setup_started = std::time::Instant::now();
    let api = crate::setup::Api::new(&cli.url)?;
    let nicks: Vec<String> = (0..n).map(|i| format!("lg{run}d{i}")).collect();
    let channel = |i: usize| format!("#lg{run}d{i}");
    let tokens = api
        .users(nicks, |i| Some(channel(i)))
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", crate::setup::HINT))?;
    let senders: Vec<(String, String)> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, channel(i)))
        .collect();
    let setup_s = setup_started.elapsed().as_secs_f64();

    let rate = cli.rate();
    eprintln!(
        "durable-send: {n} senders, each to its own channel, {}",
        if rate > 0.0 {
            format!("{rate} msgs/s in total")
        } else {
            "one send in flight each".to_owned()
        }
    );
    let sampler = cli.server_pid.map(crate::sample::Sampler::start);
    let swarm = start(server, senders, rate);
    // Sending starts 200 ms after the senders are spawned (see `start`).
    let phase = Instant::now() + Duration::from_millis(200);
    let first_send_ns = now_ns() + 200_000_000;
    let end = phase + Duration::from_secs(cli.duration);
    while Instant::now() < end {
        tokio::time::sleep_until(end.min(Instant::now() + Duration::from_secs(5))).await;
        eprintln!(
            "durable-send: {} acknowledged at {:.0}s",
            swarm.totals.deliveries.load(Ordering::Relaxed),
            Instant::now()
                .saturating_duration_since(phase)
                .as_secs_f64()
        );
    }
    let acked_at_end = swarm.totals.deliveries.load(Ordering::SeqCst);
    let phase_s = Instant::now()
        .saturating_duration_since(phase)
        .as_secs_f64();
    // No RSS-per-connection figure: a handful of senders is not what the server's memory is about here.
    let usage = match sampler {
        Some(s) => s.stop().await,
        None => None,
    };
    let result = swarm.finish().await;
    let report = crate::report::Report {
        scenario: "durable-send".to_owned(),
        started_at,
        url: cli.url.clone(),
        conns: n,
        rate,
        messages: result.deliveries,
        duration: cli.duration,
        procs: 1,
        room_size: 1,
        socket_buffer_kib: None,
        setup_s,
        connect_s: 0.0,
        phase_s,
        first_send_ns,
        sent: result.deliveries,
        send_errors: 0,
        expected: 0,
        usage,
        server_kind: Some(kind.name()),
        polls: None,
        acks_per_s: Some(acked_at_end as f64 / phase_s.max(1e-9)),
        result,
    };
    crate::write_report(cli, &report)
}
