//! Gateway connections: a swarm of identified connections in one process, counting stamped deliveries.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::raw_ws::{self, RawWs};
use crate::util::{self, now_ns, stamp};

/// GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT.
const INTENTS: u64 = 1 | (1 << 9) | (1 << 15);
/// Handshakes in flight at once per process.
const CONNECT_PARALLELISM: usize = 128;
/// One connection's time from TCP connect to READY.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Latency shards, so that recording does not contend on one lock.
const SHARDS: usize = 16;
/// Deliveries a connection keeps before recording them into the shared totals.
const BATCH: usize = 256;
/// The longest a delivery waits in a connection's batch before it is counted in the totals (the progress
/// lines and the parent's wait for the expected count read the totals).
const FLUSH_EVERY: Duration = Duration::from_millis(50);

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
    pub(crate) max_frame: AtomicUsize,
    /// Long-poll answers received (any content).
    pub(crate) polls: AtomicU64,
    /// Long polls that failed: a non-2xx answer or a broken connection (then reopened).
    pub(crate) poll_errors: AtomicU64,
    /// Deliveries recorded per connection (by index), `u64::MAX` once a connection has ended: the least of
    /// them bounds the send window of a fan-out (`--window`).
    per_connection: Vec<AtomicU64>,
}

impl Totals {
    pub(crate) fn new() -> Self {
        Self::for_connections(0)
    }

    /// Totals that also count each of `n` connections' deliveries.
    pub(crate) fn for_connections(n: usize) -> Self {
        Self {
            per_connection: (0..n).map(|_| AtomicU64::new(0)).collect(),
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

    /// The fewest deliveries any live connection has recorded (`u64::MAX` with none).
    pub(crate) fn least_delivered(&self) -> u64 {
        self.per_connection
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Marks connection `i` as ended: it no longer holds the send window back.
    pub(crate) fn ended(&self, i: usize) {
        if let Some(n) = self.per_connection.get(i) {
            n.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// Counts a connection that ended with `e`: before it was ready a failure to connect (and perhaps a
    /// refusal), after it a close ([`Closed`]). The first few are printed.
    pub(crate) fn count_failure(&self, i: usize, e: &anyhow::Error) {
        if let Some(Closed) = e.downcast_ref::<Closed>() {
            self.closed.fetch_add(1, Ordering::SeqCst);
        } else {
            if is_refusal(e) {
                self.refused.fetch_add(1, Ordering::SeqCst);
            }
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        if self.failed.load(Ordering::Relaxed) + self.closed.load(Ordering::Relaxed) <= 5 {
            eprintln!("chat-loadgen: connection {i}: {e:#}");
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

/// One connection's deliveries not yet in the shared [`Totals`]: latencies are batched so that a delivery
/// costs a push, not a lock, and recorded when the batch is full or [`FLUSH_EVERY`] after its first one.
#[derive(Debug)]
pub(crate) struct Recorder {
    shard: usize,
    micros: Vec<u64>,
    first: u64,
    last: u64,
    /// When a pending batch is recorded anyway; one timer per connection, reset rather than made anew.
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl Recorder {
    /// A batch for the connection with this index (which picks its latency shard).
    pub(crate) fn new(shard: usize) -> Self {
        Self {
            shard,
            micros: Vec::new(),
            first: u64::MAX,
            last: 0,
            deadline: Box::pin(tokio::time::sleep(FLUSH_EVERY)),
            armed: false,
        }
    }

    /// After a read: records a full batch now, or arms the timer for a pending one.
    pub(crate) fn settle(&mut self, totals: &Totals) {
        if self.micros.len() >= BATCH {
            self.flush(totals);
        } else if !self.micros.is_empty() && !self.armed {
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + FLUSH_EVERY);
            self.armed = true;
        }
    }

    /// A pending batch waits for its timer.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    /// Resolves when the armed timer fires; then call [`Recorder::flush`].
    pub(crate) async fn due(&mut self) {
        self.deadline.as_mut().await;
    }

    /// Adds one delivery of something stamped `sent_ns`, received at `at_ns`.
    pub(crate) fn add(&mut self, at_ns: u64, sent_ns: u64) {
        if self.micros.capacity() == 0 {
            self.micros.reserve_exact(BATCH);
        }
        self.micros
            .push((at_ns.saturating_sub(sent_ns) / 1000).clamp(1, 600_000_000));
        self.first = self.first.min(at_ns);
        self.last = self.last.max(at_ns);
    }

    /// Records the batch into `totals` (one lock for all of it) and empties it.
    pub(crate) fn flush(&mut self, totals: &Totals) {
        self.armed = false;
        if self.micros.is_empty() {
            return;
        }
        if let Ok(mut h) = totals.shards[self.shard % SHARDS].lock() {
            for &m in &self.micros {
                h.saturating_record(m);
            }
        }
        let n = u64::try_from(self.micros.len()).unwrap_or(u64::MAX);
        totals.deliveries.fetch_add(n, Ordering::Relaxed);
        if let Some(mine) = totals.per_connection.get(self.shard) {
            // An ended connection stays at MAX.
            let _ = mine.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c != u64::MAX).then(|| c + n)
            });
        }
        totals.first.fetch_min(self.first, Ordering::Relaxed);
        totals.last.fetch_max(self.last, Ordering::Relaxed);
        self.micros.clear();
        self.first = u64::MAX;
        self.last = 0;
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
    /// Opens one connection per token, connection `i` bound to `util::source_addr(i, child, procs)`, with
    /// kernel socket buffers of `socket_buffer` bytes (0: the kernel's default, autotuned). Connection `i`
    /// goes to `servers[(first + i) % servers.len()]`: `first` is the run-wide index of this swarm's first
    /// connection, so that a run's connections take the servers (a cluster's nodes) in turn.
    pub(crate) fn start(
        servers: &[SocketAddr],
        first: usize,
        tokens: Vec<String>,
        child: usize,
        procs: usize,
        socket_buffer: u32,
    ) -> Self {
        let totals = Arc::new(Totals::for_connections(tokens.len()));
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
        let mut tasks = JoinSet::new();
        let connections = tokens.len();
        for (i, token) in tokens.into_iter().enumerate() {
            let (totals, gate, stop) = (Arc::clone(&totals), Arc::clone(&gate), stop_rx.clone());
            let source = SocketAddr::new(util::source_addr(i, child, procs).into(), 0);
            let Some(&server) = servers.get((first + i) % servers.len().max(1)) else {
                // No server at all: nothing to connect to (the callers pass at least one).
                break;
            };
            tasks.spawn(async move {
                let conn = connection(server, source, socket_buffer, token, i, &totals, gate, stop);
                if let Err(e) = conn.await {
                    totals.count_failure(i, &e);
                }
                totals.ended(i);
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
pub(crate) struct Closed;

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

#[allow(clippy::too_many_arguments)]
async fn connection(
    server: SocketAddr,
    source: SocketAddr,
    socket_buffer: u32,
    token: String,
    index: usize,
    totals: &Totals,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permit = gate.acquire_owned().await?;
    let (mut ws, interval) = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut ws =
            RawWs::connect(server, source, socket_buffer, "/gateway?v=10&encoding=json").await?;
        let hello = ws.next_message().await?.context("closed before Hello")?;
        let interval = std::str::from_utf8(&hello)
            .ok()
            .and_then(heartbeat_interval)
            .context("Hello without heartbeat_interval")?;
        let identify = json!({
            "op": 2,
            "d": {
                "token": format!("Bot {token}"),
                "intents": INTENTS,
                "properties": {"os": "linux", "browser": "chat-loadgen", "device": "chat-loadgen"},
            }
        });
        ws.send(raw_ws::OP_TEXT, identify.to_string().as_bytes())
            .await?;
        loop {
            let frame = ws.next_message().await?.context("closed before READY")?;
            totals.max_frame.fetch_max(frame.len(), Ordering::Relaxed);
            if raw_ws::find(&frame, b"\"t\":\"READY\"").is_some() {
                break;
            }
        }
        ws.frames.shrink();
        Ok::<_, anyhow::Error>((ws, interval))
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
    let mut recorder = Recorder::new(index);
    // One wait for the stop signal for the whole loop, not a new one per frame.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let outcome = loop {
        tokio::select! {
            read = ws.read() => {
                if !matches!(read, Ok(n) if n > 0) {
                    break Err(Closed.into());
                }
                // Every frame of one read arrived at the same time, as far as latency goes.
                let at = now_ns();
                let mut largest = 0;
                let parsed = ws.frames.parse(usize::MAX, |frame| {
                    match stamp(frame) {
                        Some(sent) => recorder.add(at, sent),
                        None => largest = largest.max(frame.len()),
                    }
                });
                if largest > 0 {
                    totals.max_frame.fetch_max(largest, Ordering::Relaxed);
                }
                if !matches!(parsed, Ok(false)) || ws.answer_ping().await.is_err() {
                    break Err(Closed.into());
                }
                recorder.settle(totals);
            }
            () = recorder.due(), if recorder.is_armed() => recorder.flush(totals),
            _ = heartbeat.tick() => {
                if ws.send(raw_ws::OP_TEXT, br#"{"op":1,"d":null}"#).await.is_err() {
                    break Err(Closed.into());
                }
            }
            _ = &mut stopped => break Ok(()),
        }
    };
    recorder.flush(totals);
    outcome
}
