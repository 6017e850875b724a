//! Gateway connections: a swarm of identified connections in one process, counting stamped deliveries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::util::{self, now_ns, stamp};

/// GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT.
const INTENTS: u64 = 1 | (1 << 9) | (1 << 15);
/// Handshakes in flight at once per process.
const CONNECT_PARALLELISM: usize = 128;
/// One connection's time from TCP connect to READY.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Kernel socket buffers: deliveries are small frames, and thousands of sockets add up.
const SOCKET_BUFFER: u32 = 16 * 1024;
/// Latency shards, so that recording does not contend on one lock.
const SHARDS: usize = 16;

/// Counts shared by every connection of a swarm.
#[derive(Debug)]
pub(crate) struct Totals {
    shards: Vec<Mutex<Histogram<u64>>>,
    pub(crate) deliveries: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    pub(crate) ready: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) refused: AtomicUsize,
    pub(crate) closed: AtomicUsize,
    max_frame: AtomicUsize,
    /// Long-poll answers received (any content).
    pub(crate) polls: AtomicU64,
    /// Long polls that failed: a non-2xx answer or a broken connection (then reopened).
    pub(crate) poll_errors: AtomicU64,
}

impl Totals {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(util::histogram())).collect(),
            deliveries: AtomicU64::new(0),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            max_frame: AtomicUsize::new(0),
            polls: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
        }
    }

    /// Records one delivery (or acknowledgement) of something stamped `sent_ns`, received now.
    pub(crate) fn record(&self, shard: usize, sent_ns: u64) {
        let at = now_ns();
        let micros = (at.saturating_sub(sent_ns) / 1000).clamp(1, 600_000_000);
        if let Ok(mut h) = self.shards[shard % SHARDS].lock() {
            h.saturating_record(micros);
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.first.fetch_min(at, Ordering::Relaxed);
        self.last.fetch_max(at, Ordering::Relaxed);
    }
}

/// What one swarm (one process's share of the connections) saw.
#[derive(Debug)]
pub(crate) struct SwarmResult {
    pub(crate) connections: usize,
    pub(crate) ready: usize,
    pub(crate) failed: usize,
    pub(crate) refused: usize,
    pub(crate) closed: usize,
    pub(crate) open: usize,
    pub(crate) deliveries: u64,
    pub(crate) first_ns: u64,
    pub(crate) last_ns: u64,
    pub(crate) latency: Histogram<u64>,
    /// The largest text frame received, in bytes (READY and GUILD_CREATE grow with the server's channels).
    pub(crate) max_frame_bytes: usize,
    /// This process's resident memory when the connections were stopped, in KiB (summed over processes).
    pub(crate) rss_kib: u64,
    /// Long-poll answers received, and long polls that failed.
    pub(crate) polls: u64,
    pub(crate) poll_errors: u64,
}

impl SwarmResult {
    pub(crate) fn empty() -> Self {
        Self {
            connections: 0,
            ready: 0,
            failed: 0,
            refused: 0,
            closed: 0,
            open: 0,
            deliveries: 0,
            first_ns: u64::MAX,
            last_ns: 0,
            latency: util::histogram(),
            max_frame_bytes: 0,
            rss_kib: 0,
            polls: 0,
            poll_errors: 0,
        }
    }

    pub(crate) fn to_json(&self) -> Result<Value> {
        Ok(json!({
            "connections": self.connections,
            "ready": self.ready,
            "failed": self.failed,
            "refused": self.refused,
            "closed": self.closed,
            "open": self.open,
            "deliveries": self.deliveries,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latency_v2": util::encode(&self.latency)?,
            "max_frame_bytes": self.max_frame_bytes,
            "rss_kib": self.rss_kib,
            "polls": self.polls,
            "poll_errors": self.poll_errors,
        }))
    }

    pub(crate) fn from_json(v: &Value) -> Result<Self> {
        let n = |k: &str| v[k].as_u64().with_context(|| format!("result without {k}"));
        let u = |k: &str| n(k).map(|x| usize::try_from(x).unwrap_or(usize::MAX));
        Ok(Self {
            connections: u("connections")?,
            ready: u("ready")?,
            failed: u("failed")?,
            refused: u("refused")?,
            closed: u("closed")?,
            open: u("open")?,
            deliveries: n("deliveries")?,
            first_ns: n("first_ns")?,
            last_ns: n("last_ns")?,
            latency: util::decode(v["latency_v2"].as_str().context("result without latency")?)?,
            max_frame_bytes: u("max_frame_bytes")?,
            rss_kib: n("rss_kib")?,
            polls: n("polls").unwrap_or(0),
            poll_errors: n("poll_errors").unwrap_or(0),
        })
    }

    /// Adds another swarm's counts and latencies to these.
    pub(crate) fn merge(&mut self, other: &Self) -> Result<()> {
        self.connections += other.connections;
        self.ready += other.ready;
        self.failed += other.failed;
        self.refused += other.refused;
        self.closed += other.closed;
        self.open += other.open;
        self.deliveries += other.deliveries;
        self.first_ns = self.first_ns.min(other.first_ns);
        self.last_ns = self.last_ns.max(other.last_ns);
        self.latency.add(&other.latency)?;
        self.max_frame_bytes = self.max_frame_bytes.max(other.max_frame_bytes);
        self.rss_kib += other.rss_kib;
        self.polls += other.polls;
        self.poll_errors += other.poll_errors;
        Ok(())
    }
}

/// One process's gateway connections.
#[derive(Debug)]
pub(crate) struct Swarm {
    pub(crate) totals: Arc<Totals>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    connections: usize,
}

impl Swarm {
    /// Opens one connection per token, connection `i` bound to `util::source_addr(i, child, procs)`.
    pub(crate) fn start(
        server: SocketAddr,
        tokens: Vec<String>,
        child: usize,
        procs: usize,
    ) -> Self {
        let totals = Arc::new(Totals::new());
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
        let mut tasks = JoinSet::new();
        let connections = tokens.len();
        for (i, token) in tokens.into_iter().enumerate() {
            let (totals, gate, stop) = (Arc::clone(&totals), Arc::clone(&gate), stop_rx.clone());
            let source = SocketAddr::new(util::source_addr(i, child, procs).into(), 0);
            tasks.spawn(async move {
                if let Err(e) = connection(server, source, token, i, &totals, gate, stop).await {
                    // Before READY it is a failure to connect; after, the connection was closed.
                    if let Some(Closed) = e.downcast_ref::<Closed>() {
                        totals.closed.fetch_add(1, Ordering::SeqCst);
                    } else {
                        if is_refusal(&e) {
                            totals.refused.fetch_add(1, Ordering::SeqCst);
                        }
                        totals.failed.fetch_add(1, Ordering::SeqCst);
                    }
                    if totals.failed.load(Ordering::Relaxed) + totals.closed.load(Ordering::Relaxed)
                        <= 5
                    {
                        eprintln!("chat-loadgen: connection {i}: {e:#}");
                    }
                }
            });
        }
        Self {
            totals,
            stop,
            tasks,
            connections,
        }
    }

    /// A swarm of tasks spawned elsewhere (long-poll clients) that report into `totals` and end on `stop`.
    pub(crate) fn from_parts(
        totals: Arc<Totals>,
        stop: watch::Sender<bool>,
        tasks: JoinSet<()>,
        connections: usize,
    ) -> Self {
        Self {
            totals,
            stop,
            tasks,
            connections,
        }
    }

    /// Waits until every connection is ready or has failed (or `limit` passes); returns (ready, failed).
    pub(crate) async fn wait_ready(&self, limit: Duration) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ready = self.totals.ready.load(Ordering::SeqCst);
            let failed = self.totals.failed.load(Ordering::SeqCst);
            if ready + failed >= self.connections || tokio::time::Instant::now() > deadline {
                return (ready, failed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every connection and returns what the swarm saw.
    pub(crate) async fn finish(mut self) -> SwarmResult {
        let t = &self.totals;
        let ready = t.ready.load(Ordering::SeqCst);
        let closed = t.closed.load(Ordering::SeqCst);
        let rss_kib = crate::sample::rss_kib(std::process::id()).unwrap_or(0);
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        let mut latency = util::histogram();
        for shard in &t.shards {
            if let Ok(h) = shard.lock() {
                let _ = latency.add(&*h);
            }
        }
        SwarmResult {
            connections: self.connections,
            ready,
            failed: t.failed.load(Ordering::SeqCst),
            refused: t.refused.load(Ordering::SeqCst),
            closed,
            open: ready.saturating_sub(closed),
            deliveries: t.deliveries.load(Ordering::SeqCst),
            first_ns: t.first.load(Ordering::SeqCst),
            last_ns: t.last.load(Ordering::SeqCst),
            latency,
            max_frame_bytes: t.max_frame.load(Ordering::SeqCst),
            rss_kib,
            polls: t.polls.load(Ordering::SeqCst),
            poll_errors: t.poll_errors.load(Ordering::SeqCst),
        }
    }
}

/// A connection that was identified and then closed or broke.
#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed after READY")
    }
}

impl std::error::Error for Closed {}

fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            )
        }) || c.to_string().contains("reset")
            || c.to_string().contains("refused")
    })
}

/// The `heartbeat_interval` of a Hello frame.
fn heartbeat_interval(frame: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(frame).ok()?;
    v["d"]["heartbeat_interval"].as_u64()
}

async fn connection(
    server: SocketAddr,
    source: SocketAddr,
    token: String,
    index: usize,
    totals: &Totals,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permit = gate.acquire_owned().await?;
    let (mut ws, interval) = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let socket = TcpSocket::new_v4()?;
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket
            .bind(source)
            .with_context(|| format!("binding {source}"))?;
        let stream = socket.connect(server).await.context("connect")?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20);
        let url = format!("ws://{server}/gateway?v=10&encoding=json");
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("websocket handshake")?;
        let hello = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            other => bail!("expected Hello, got {other:?}"),
        };
        let interval = heartbeat_interval(&hello).context("Hello without heartbeat_interval")?;
        let identify = json!({
            "op": 2,
            "d": {
                "token": format!("Bot {token}"),
                "intents": INTENTS,
                "properties": {"os": "linux", "browser": "chat-loadgen", "device": "chat-loadgen"},
            }
        });
        ws.send(Message::text(identify.to_string())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    totals.max_frame.fetch_max(t.len(), Ordering::Relaxed);
                    if t.contains("\"t\":\"READY\"") {
                        break;
                    }
                }
                Some(Ok(Message::Close(c))) => bail!("closed before READY: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("ended before READY"),
            }
        }
        Ok((ws, interval))
    })
    .await
    .context("timed out before READY")??;
    drop(permit);
    totals.ready.fetch_add(1, Ordering::SeqCst);
    let period = Duration::from_millis(interval.max(1000));
    // Spread the first heartbeats over the interval, as clients with jitter do.
    let jitter =
        Duration::from_millis(u64::try_from(index).unwrap_or(0) * 7919 % interval.max(1000));
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + jitter.min(period), period);
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Some(sent) = stamp(&t) {
                        totals.record(index, sent);
                    } else {
                        totals.max_frame.fetch_max(t.len(), Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Err(Closed.into()),
                Some(Ok(_)) => {}
                Some(Err(_)) => return Err(Closed.into()),
            },
            _ = heartbeat.tick() => {
                if ws.send(Message::text(r#"{"op":1,"d":null}"#)).await.is_err() {
                    return Err(Closed.into());
                }
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}
