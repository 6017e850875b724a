//! `chat-loadgen`: drives gateway connections against a running chatd on loopback and reports deliveries,
//! delivery latency and the server's RSS and CPU.
//!
//! Scenarios: `idle` (hold identified connections with heartbeats), `fanout` (one channel, one sender),
//! `rooms` (rooms of `--room-size`, each message sent by a member of its room), `longpoll` (parked long
//! polls on chatd or the bare hyper baseline, woken by stamped messages) and `durable-send` (acknowledged
//! sends per second and their latency). `fanout` and `rooms` also run against nats-server over its WebSocket
//! listener (`--server-kind nats`) as a fan-out peer.
//!
//! Gateway connections and NATS receivers use the crate's own minimal WebSocket client (`raw_ws`), which
//! parses frames in place and batches latency recording, so that fan-out measures the server.
//!
//! Connections are spread over the source addresses 127.0.0.2..=251, so more than one address's ~28k
//! ephemeral ports can be used; `--procs P` splits them over P child processes of this binary (each with
//! its own file limit and slice of source addresses), which report one JSON line each that the parent
//! merges. Every run is bounded in connections and time and exits by itself.

mod durable;
mod gateway;
mod http;
mod irc;
mod longpoll;
mod nats;
mod raw_ws;
mod report;
mod sample;
mod setup;
mod util;

/// mimalloc, as chatd uses: the senders and receivers allocate per message, and the load generator shares
/// the machine's cores with the server it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ::http::Method;
use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, oneshot};

use crate::gateway::{Swarm, SwarmResult};
use crate::setup::{Api, HINT};

/// Most connections one run may ask for.
const MAX_CONNS: usize = 200_000;
/// Longest measured phase, in seconds.
const MAX_DURATION: u64 = 600;
/// Most child processes.
const MAX_PROCS: usize = 64;
/// Most `--url`s (cluster nodes) one run spreads its connections over.
const MAX_URLS: usize = 16;
/// Sends in flight at once.
const SEND_PARALLELISM: usize = 256;
/// File descriptors kept free for everything but gateway connections (setup and send pools, stdio).
const FD_MARGIN: u64 = 600;
/// How long deliveries may keep arriving after the last send.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Hold N identified gateway connections with heartbeats for --duration.
    Idle,
    /// N members in one channel; one sender posts --messages at --rate.
    Fanout,
    /// N members in rooms of --room-size; --rate msgs/s in total, spread over the rooms.
    Rooms,
    /// N long-poll clients parked on one channel; one sender posts stamped messages at --rate.
    Longpoll,
    /// --conns senders, each to its own channel, one send in flight each (or --rate in total).
    DurableSend,
}

impl Scenario {
    /// The name on the command line.
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Fanout => "fanout",
            Self::Rooms => "rooms",
            Self::Longpoll => "longpoll",
            Self::DurableSend => "durable-send",
        }
    }
}

/// Load generator for chatd on loopback.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-loadgen", version)]
struct Cli {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// The server's base URL; its host must be in 127.0.0.0/8. Several (`--url A --url B` or
    /// `--url A,B`): the nodes of one cluster; gateway connections are spread over them round-robin
    /// (connection `i` to URL `i % n`), while setup and sends go through the first.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    urls: Vec<String>,
    /// The first `--url`: where setup and sends go.
    #[arg(skip)]
    url: String,
    /// In `fanout`: the sender's server, when it is not the receivers' (a server linked to it by
    /// federation): the sender's session, its join and its sends go there, and every delivery crosses the
    /// link.
    #[arg(long)]
    send_url: Option<String>,
    /// Connections: gateway connections, long-poll clients or senders (at most 200000) [default: 1000;
    /// durable-send 64].
    #[arg(long = "conns")]
    conns_arg: Option<usize>,
    /// `--conns`, or the scenario's default.
    #[arg(skip)]
    conns: usize,
    /// Messages per second in total (0: as fast as the server answers) [default: 100; longpoll 20;
    /// durable-send 0].
    #[arg(long)]
    rate: Option<f64>,
    /// Messages to send [default: fanout 20, rooms and longpoll rate x duration].
    #[arg(long)]
    messages: Option<u64>,
    /// Seconds of the measured phase: how long idle holds, and the most sending may take (at most 600).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Processes holding the gateway connections (children of this one).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// The server's pid, to sample its RSS and CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Members per room in `rooms`.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// The server: for `longpoll` chatd or bare [default: detected from its first answer]; `nats` runs
    /// `fanout` and `rooms` against nats-server, `--url` being its WebSocket listener (see the README).
    #[arg(long, value_enum)]
    server_kind: Option<longpoll::Kind>,
    /// Kernel send and receive buffers (SO_SNDBUF, SO_RCVBUF) of each gateway or NATS receiver, in KiB;
    /// 0 leaves them to the kernel (autotuned). Small buffers keep thousands of sockets cheap, but on
    /// loopback they also move the server's transmit work into the receivers' reads (see the README).
    #[arg(long, default_value_t = 16)]
    socket_buffer_kib: u32,
    /// The send window: in `fanout`, the most messages sent that any one connection has not received yet
    /// (from each connection's counts, which lag by at most 50 ms); in `rooms`, the most deliveries
    /// outstanding per connection on average. The sender waits while more are out. It keeps an unpaced
    /// run from queueing more than a server holds for a connection (bare-ws closes one with 1 MiB queued:
    /// about 2,400 of these frames), so that every server is measured at the rate it sustains. 0: none.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// With `--server-kind irc` or `bare-irc`: the IRC listener's address (`127.0.0.1:6667`), where the
    /// connections and the sender go; chatd's setup (guests and their joins) still goes over `--url`.
    #[arg(long)]
    irc: Option<SocketAddr>,
    #[arg(long, hide = true)]
    child_index: Option<usize>,
    #[arg(long, hide = true)]
    child_of: Option<usize>,
    /// The run-wide index of a child's first connection, which picks its first connection's `--url`.
    #[arg(long, hide = true, default_value_t = 0)]
    child_first: usize,
}

impl Cli {
    /// `--socket-buffer-kib` in bytes.
    fn socket_buffer(&self) -> u32 {
        self.socket_buffer_kib.saturating_mul(1024)
    }

    /// `--rate`, or the scenario's default.
    fn rate(&self) -> f64 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::Longpoll => 20.0,
            Scenario::DurableSend => 0.0,
            _ => 100.0,
        })
    }
}

fn main() {
    let mut cli = Cli::parse();
    cli.url = cli.urls.first().cloned().unwrap_or_default();
    cli.conns = cli.conns_arg.unwrap_or(match cli.scenario {
        Scenario::DurableSend => 64,
        _ => 1000,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-loadgen: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match (cli.child_index, cli.child_of) {
            (Some(index), Some(of)) => child(cli, index, of).await,
            (None, None) => parent(cli).await,
            _ => bail!("--child-index and --child-of go together"),
        }
    });
    if let Err(e) = result {
        eprintln!("chat-loadgen: {e:#}");
        std::process::exit(1);
    }
    // Do not wait for connection tasks still winding down.
    std::process::exit(0);
}

/// Exits the process if it is still running after `limit`, whatever it is doing.
fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "chat-loadgen: time limit of {}s reached, exiting",
            limit.as_secs()
        );
        std::process::exit(3);
    });
}

/// The longest a whole run may take: setup grows with the connections, then the measured phase and drain.
/// Setting up one channel of n members grows with n squared (each join goes to every member so far, on
/// every node of a cluster), hence the square term: generous (a fan-out to 57k members on a 3-node cluster
/// sets up in under three minutes on two cores), so that a slower server is measured rather than cut off.
fn run_limit(cli: &Cli) -> Duration {
    let conns = u64::try_from(cli.conns).unwrap_or(u64::MAX);
    let thousands = conns / 1000;
    let joins = if cli.scenario == Scenario::Fanout {
        thousands.saturating_mul(thousands)
    } else {
        0
    };
    Duration::from_secs(
        (120 + conns / 50 + joins).min(6 * 3600) + cli.duration + DRAIN.as_secs() + 30,
    )
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft),
    }
}

/// Refuses a share of connections that the open-file limit cannot hold.
fn check_share(share: usize, limit: u64, conns: usize) -> Result<()> {
    let share = u64::try_from(share).unwrap_or(u64::MAX);
    if share + FD_MARGIN > limit {
        let per = limit.saturating_sub(FD_MARGIN).max(1);
        let procs = u64::try_from(conns).unwrap_or(u64::MAX).div_ceil(per);
        bail!(
            "{share} connections in one process need more than the open-file limit of {limit} allows \
             (with a margin of {FD_MARGIN}); use --procs {}",
            procs.max(2)
        );
    }
    Ok(())
}

fn validate(cli: &Cli) -> Result<SocketAddr> {
    let server = util::loopback_target(&cli.url)?;
    let servers = servers(cli)?;
    let one_server_only = matches!(cli.scenario, Scenario::Longpoll | Scenario::DurableSend)
        || cli.server_kind == Some(longpoll::Kind::Nats);
    if servers.len() > 1 && one_server_only {
        bail!("several --url are for gateway connections to chatd (idle, fanout, rooms)");
    }
    if cli.conns == 0 || cli.conns > MAX_CONNS {
        bail!("--conns must be 1..={MAX_CONNS}");
    }
    if cli.duration == 0 || cli.duration > MAX_DURATION {
        bail!("--duration must be 1..={MAX_DURATION} seconds");
    }
    if cli.procs == 0 || cli.procs > MAX_PROCS {
        bail!("--procs must be 1..={MAX_PROCS}");
    }
    if !(0.0..=1_000_000.0).contains(&cli.rate()) {
        bail!("--rate must be 0..=1000000 (0: unpaced)");
    }
    if cli.room_size == 0 {
        bail!("--room-size must be at least 1");
    }
    if cli.socket_buffer_kib > 16 * 1024 {
        bail!("--socket-buffer-kib must be 0..=16384");
    }
    if cli.messages.is_some_and(|m| m > 10_000_000) {
        bail!("--messages must be at most 10000000");
    }
    if let Some(kind @ (longpoll::Kind::Irc | longpoll::Kind::BareIrc)) = cli.server_kind {
        let addr = cli
            .irc
            .context("--server-kind irc and bare-irc need --irc ADDR")?;
        if !addr.ip().is_loopback() {
            bail!("--irc {addr}: loopback only");
        }
        if !matches!(cli.scenario, Scenario::Idle | Scenario::Fanout) {
            bail!("--server-kind {} drives idle and fanout", kind.name());
        }
        if cli.send_url.is_some() {
            bail!("--send-url is for fanout on chatd's HTTP API");
        }
    }
    if let Some(url) = &cli.send_url {
        util::loopback_target(url)?;
        if cli.scenario != Scenario::Fanout || cli.server_kind == Some(longpoll::Kind::Nats) {
            bail!("--send-url is for fanout on chatd");
        }
    }
    Ok(server)
}

/// The IRC listener the connections go to, with `--server-kind irc` or `bare-irc`.
fn irc_addr(cli: &Cli) -> Option<SocketAddr> {
    matches!(
        cli.server_kind,
        Some(longpoll::Kind::Irc | longpoll::Kind::BareIrc)
    )
    .then_some(cli.irc)
    .flatten()
}

/// Every `--url`'s address, in order.
fn servers(cli: &Cli) -> Result<Vec<SocketAddr>> {
    if cli.urls.is_empty() || cli.urls.len() > MAX_URLS {
        bail!("--url: 1..={MAX_URLS} of them");
    }
    cli.urls.iter().map(|u| util::loopback_target(u)).collect()
}

/// A child: reads its tokens from stdin (one per line, then an empty line), holds them, prints
/// `ready R F`, `count N` lines as deliveries arrive, and on `stop` (or stdin closing) `result {json}`.
async fn child(cli: Cli, index: usize, of: usize) -> Result<()> {
    let server = validate(&cli)?;
    watchdog(run_limit(&cli));
    let limit = raise_fd_limit();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut tokens = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        tokens.push(line.to_owned());
    }
    check_share(tokens.len(), limit, cli.conns)?;
    let swarm = if cli.scenario == Scenario::Longpoll {
        let kind = cli
            .server_kind
            .context("a longpoll child needs --server-kind")?;
        let pollers = tokens
            .iter()
            .map(|l| longpoll::Poller::from_line(l))
            .collect::<Result<Vec<_>>>()?;
        longpoll::start(server, kind, pollers, index, of)
    } else if cli.server_kind == Some(longpoll::Kind::Nats) {
        nats::start(server, tokens, index, of, cli.socket_buffer())
    } else if let Some(addr) = irc_addr(&cli) {
        irc::start(addr, tokens, index, of, cli.socket_buffer())
    } else {
        Swarm::start(
            &servers(&cli)?,
            cli.child_first,
            tokens,
            index,
            of,
            cli.socket_buffer(),
        )
    };
    let (ready, failed) = swarm.wait_ready(run_limit(&cli)).await;
    println!("ready {ready} {failed}");
    let totals = Arc::clone(&swarm.totals);
    let progress = tokio::spawn(async move {
        let (mut last, mut last_open, mut last_polls) = (0, usize::MAX, 0);
        loop {
            // Often: the parent's send window (`--window`) waits on these counts.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = totals.deliveries.load(Ordering::Relaxed);
            if now != last {
                println!("count {now}");
                println!("least {}", totals.least_delivered());
                last = now;
            }
            let polls = totals.polls.load(Ordering::Relaxed);
            if polls != last_polls {
                println!("polls {polls}");
                last_polls = polls;
            }
            let open = totals
                .ready
                .load(Ordering::Relaxed)
                .saturating_sub(totals.closed.load(Ordering::Relaxed));
            if open != last_open {
                println!("open {open}");
                last_open = open;
            }
        }
    });
    // Any line, or the parent going away, ends the run.
    let _ = lines.next_line().await;
    progress.abort();
    let result = swarm.finish().await;
    println!("result {}", result.to_json()?);
    Ok(())
}

/// One child process as the parent sees it.
#[derive(Debug)]
struct ChildSwarm {
    process: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    deliveries: Arc<AtomicU64>,
    /// The fewest deliveries any of the child's live connections has (its `least` lines).
    least: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
    polls: Arc<AtomicU64>,
    ready: Option<oneshot::Receiver<(usize, usize)>>,
    result: oneshot::Receiver<serde_json::Value>,
}

impl ChildSwarm {
    async fn start(cli: &Cli, index: usize, first: usize, tokens: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let mut command = tokio::process::Command::new(exe);
        if let Some(kind) = cli.server_kind {
            command.args(["--server-kind", kind.name()]);
        }
        if let Some(addr) = cli.irc {
            command.args(["--irc", &addr.to_string()]);
        }
        let mut process = command
            .arg(cli.scenario.name())
            .args(["--url", &cli.urls.join(",")])
            .args(["--conns", &cli.conns.to_string()])
            .args(["--duration", &cli.duration.to_string()])
            .args(["--socket-buffer-kib", &cli.socket_buffer_kib.to_string()])
            .args(["--child-index", &index.to_string()])
            .args(["--child-of", &cli.procs.to_string()])
            .args(["--child-first", &first.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a child process")?;
        let mut stdin = process.stdin.take().context("child stdin")?;
        let mut text = tokens.join("\n");
        text.push_str("\n\n");
        stdin.write_all(text.as_bytes()).await?;
        stdin.flush().await?;
        let stdout = process.stdout.take().context("child stdout")?;
        let deliveries = Arc::new(AtomicU64::new(0));
        let least = Arc::new(AtomicU64::new(0));
        let least_now = Arc::clone(&least);
        let (ready_tx, ready) = oneshot::channel();
        let (result_tx, result) = oneshot::channel();
        let seen = Arc::clone(&deliveries);
        let open = Arc::new(AtomicU64::new(0));
        let open_now = Arc::clone(&open);
        let polls = Arc::new(AtomicU64::new(0));
        let polls_now = Arc::clone(&polls);
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut result_tx = Some(result_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.strip_prefix("count ") {
                    seen.store(n.trim().parse().unwrap_or(0), Ordering::SeqCst);
                } else if let Some(n) = line.strip_prefix("least ") {
                    least_now.store(n.trim().parse().unwrap_or(0), Ordering::SeqCst);
                } else if let Some(n) = line.strip_prefix("polls ") {
                    polls_now.store(n.trim().parse().unwrap_or(0), Ordering::SeqCst);
                } else if let Some(n) = line.strip_prefix("open ") {
                    open_now.store(n.trim().parse().unwrap_or(0), Ordering::SeqCst);
                } else if let Some(rest) = line.strip_prefix("ready ") {
                    let mut it = rest.split_whitespace().map(|x| x.parse().unwrap_or(0));
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send((it.next().unwrap_or(0), it.next().unwrap_or(0)));
                    }
                } else if let Some(json) = line.strip_prefix("result ")
                    && let (Some(tx), Ok(v)) = (result_tx.take(), serde_json::from_str(json))
                {
                    let _ = tx.send(v);
                }
            }
        });
        Ok(Self {
            process,
            stdin: Some(stdin),
            deliveries,
            least,
            open,
            polls,
            ready: Some(ready),
            result,
        })
    }
}

/// Every gateway connection of a run: in this process, or in children.
#[derive(Debug)]
enum Swarms {
    Local(Swarm),
    Children(Vec<ChildSwarm>),
}

impl Swarms {
    /// Gateway connections, one per token (NATS receivers, one per subject, with `--server-kind nats`).
    async fn start(cli: &Cli, server: SocketAddr, tokens: Vec<String>) -> Result<Self> {
        if cli.procs == 1 {
            return Ok(Self::Local(
                if cli.server_kind == Some(longpoll::Kind::Nats) {
                    nats::start(server, tokens, 0, 1, cli.socket_buffer())
                } else if let Some(addr) = irc_addr(cli) {
                    irc::start(addr, tokens, 0, 1, cli.socket_buffer())
                } else {
                    Swarm::start(&servers(cli)?, 0, tokens, 0, 1, cli.socket_buffer())
                },
            ));
        }
        Self::children(cli, &tokens).await
    }

    /// Long-poll clients, one per poller.
    async fn start_longpoll(
        cli: &Cli,
        server: SocketAddr,
        kind: longpoll::Kind,
        pollers: Vec<longpoll::Poller>,
    ) -> Result<Self> {
        if cli.procs == 1 {
            return Ok(Self::Local(longpoll::start(server, kind, pollers, 0, 1)));
        }
        let lines: Vec<String> = pollers.iter().map(longpoll::Poller::to_line).collect();
        Self::children(cli, &lines).await
    }

    /// `cli.procs` children, each handed its share of `tokens` (one line each).
    async fn children(cli: &Cli, tokens: &[String]) -> Result<Self> {
        let per = tokens.len().div_ceil(cli.procs).max(1);
        let mut children = Vec::new();
        for (i, chunk) in tokens.chunks(per).enumerate() {
            children.push(ChildSwarm::start(cli, i, i * per, chunk).await?);
        }
        Ok(Self::Children(children))
    }

    async fn wait_ready(&mut self, limit: Duration) -> (usize, usize) {
        match self {
            Self::Local(s) => s.wait_ready(limit).await,
            Self::Children(cs) => {
                let (mut ready, mut failed) = (0, 0);
                for c in cs {
                    if let Some(rx) = c.ready.take()
                        && let Ok(Ok((r, f))) = tokio::time::timeout(limit, rx).await
                    {
                        ready += r;
                        failed += f;
                    }
                }
                (ready, failed)
            }
        }
    }

    fn deliveries(&self) -> u64 {
        match self {
            Self::Local(s) => s.totals.deliveries.load(Ordering::Relaxed),
            Self::Children(cs) => cs
                .iter()
                .map(|c| c.deliveries.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// The fewest deliveries any live connection has received.
    fn least_delivered(&self) -> u64 {
        match self {
            Self::Local(s) => s.totals.least_delivered(),
            Self::Children(cs) => cs
                .iter()
                .map(|c| c.least.load(Ordering::Relaxed))
                .min()
                .unwrap_or(u64::MAX),
        }
    }

    fn polls(&self) -> u64 {
        match self {
            Self::Local(s) => s.totals.polls.load(Ordering::Relaxed),
            Self::Children(cs) => cs.iter().map(|c| c.polls.load(Ordering::Relaxed)).sum(),
        }
    }

    fn open(&self) -> u64 {
        match self {
            Self::Local(s) => u64::try_from(
                s.totals
                    .ready
                    .load(Ordering::Relaxed)
                    .saturating_sub(s.totals.closed.load(Ordering::Relaxed)),
            )
            .unwrap_or(0),
            Self::Children(cs) => cs.iter().map(|c| c.open.load(Ordering::Relaxed)).sum(),
        }
    }

    async fn finish(self) -> Result<SwarmResult> {
        match self {
            Self::Local(s) => Ok(s.finish().await),
            Self::Children(mut cs) => {
                for c in &mut cs {
                    if let Some(mut stdin) = c.stdin.take() {
                        let _ = stdin.write_all(b"stop\n").await;
                        let _ = stdin.flush().await;
                    }
                }
                // Results come back once each child has stopped its connections.
                let mut total = SwarmResult::empty();
                for (i, mut c) in cs.into_iter().enumerate() {
                    match tokio::time::timeout(Duration::from_secs(30), &mut c.result).await {
                        Ok(Ok(v)) => total.merge(&SwarmResult::from_json(&v)?)?,
                        _ => eprintln!("chat-loadgen: child {i} sent no result"),
                    }
                    if tokio::time::timeout(Duration::from_secs(5), c.process.wait())
                        .await
                        .is_err()
                    {
                        let _ = c.process.kill().await;
                    }
                }
                Ok(total)
            }
        }
    }
}

/// A short id that keeps this run's nicks and channels apart from earlier runs on the same server.
fn run_id() -> String {
    let mut n = util::now_ns() / 1_000_000 % 36u64.pow(6);
    let mut id = String::new();
    for _ in 0..6 {
        let d = u32::try_from(n % 36).unwrap_or(0);
        id.push(char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    id
}

/// What the sends came to: messages accepted, messages refused, and the deliveries expected from them.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    ok: AtomicU64,
    errors: AtomicU64,
    expected: AtomicU64,
}

/// At most this many deliveries may be sent and not yet received; see `--window`.
#[derive(Clone, Copy)]
pub(crate) struct Window<'a> {
    /// Deliveries received so far.
    pub(crate) delivered: &'a (dyn Fn() -> u64 + Sync),
    /// The most outstanding (0: no limit).
    pub(crate) limit: u64,
}

impl Window<'_> {
    /// Waits until `issued` deliveries leave at most `limit` outstanding, or `deadline` passes.
    pub(crate) async fn admit(&self, issued: u64, deadline: Instant) {
        while self.limit > 0
            && issued.saturating_sub((self.delivered)()) > self.limit
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Sends `messages` messages at `rate` per second (unpaced when 0), message `k` as `target(k)` =
/// (token, channel, receivers), stopping at `deadline`, with at most `window` deliveries outstanding.
async fn send_all(
    api: &Api,
    messages: u64,
    rate: f64,
    deadline: Instant,
    window: Window<'_>,
    target: impl Fn(u64) -> (String, String, u64),
) -> Arc<Sent> {
    let sent = Arc::new(Sent::default());
    let pool = match http::Pool::new(api.base()) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            eprintln!("send: {e:#}");
            sent.errors.fetch_add(1, Ordering::SeqCst);
            return sent;
        }
    };
    let gate = Arc::new(Semaphore::new(SEND_PARALLELISM));
    let start = tokio::time::Instant::now();
    let mut issued = 0;
    for k in 0..messages {
        if Instant::now() > deadline {
            eprintln!("send: --duration reached after {k} of {messages} messages");
            break;
        }
        if rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        }
        window.admit(issued, deadline).await;
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
            break;
        };
        let (token, channel, receivers) = target(k);
        issued += receivers;
        let (pool, sent) = (Arc::clone(&pool), Arc::clone(&sent));
        tokio::spawn(async move {
            let body = serde_json::json!({ "command": "PRIVMSG", "to": channel, "body": util::stamped_body() });
            let answer = pool
                .request(
                    Method::POST,
                    "/api/v1/messages",
                    Some(&token),
                    Some(body.to_string()),
                )
                .await
                .and_then(|(status, body)| {
                    if status.is_success() {
                        Ok(())
                    } else {
                        bail!(
                            "POST /api/v1/messages: HTTP {status}: {}",
                            String::from_utf8_lossy(&body)
                        )
                    }
                });
            match answer {
                Ok(()) => {
                    sent.ok.fetch_add(1, Ordering::SeqCst);
                    sent.expected.fetch_add(receivers, Ordering::SeqCst);
                }
                Err(e) => {
                    if sent.errors.fetch_add(1, Ordering::SeqCst) < 5 {
                        eprintln!("send: {e:#}");
                    }
                }
            }
            drop(permit);
        });
    }
    // Every send has finished once all permits are back.
    let all = u32::try_from(SEND_PARALLELISM).unwrap_or(u32::MAX);
    let _ = gate.acquire_many(all).await;
    sent
}

async fn parent(cli: Cli) -> Result<()> {
    let server = validate(&cli)?;
    watchdog(run_limit(&cli));
    let limit = raise_fd_limit();
    let share = if cli.procs == 1 {
        cli.conns
    } else {
        cli.conns.div_ceil(cli.procs)
    };
    check_share(share, limit, cli.conns)?;
    match cli.scenario {
        Scenario::Longpoll => return longpoll::run(&cli, server).await,
        Scenario::DurableSend => return durable::run(&cli, server).await,
        _ => {}
    }
    let nats = cli.server_kind == Some(longpoll::Kind::Nats);
    if nats && cli.scenario == Scenario::Idle {
        bail!("--server-kind nats drives fanout and rooms only");
    }
    let started_at = SystemTime::now();
    let api = Api::new(&cli.url)?;
    let run = run_id();
    let n = cli.conns;
    let size = cli.room_size.min(n);
    let fan_channel = format!("#lg{run}");
    let room_prefix = format!("#lg{run}r");
    let room_channel = move |r: usize| format!("{room_prefix}{r}");

    let setup_started = Instant::now();
    let nicks: Vec<String> = (0..n).map(|i| format!("lg{run}u{i}")).collect();
    // NATS has no users: each receiver's line is its subject.
    let fan_subject = format!("lg{run}.all");
    let subject_prefix = format!("lg{run}.r");
    let room_subject = move |r: usize| format!("{subject_prefix}{r}");
    let bare_irc = cli.server_kind == Some(longpoll::Kind::BareIrc);
    let chatd_irc = cli.server_kind == Some(longpoll::Kind::Irc);
    let tokens = match cli.scenario {
        // The bare IRC server needs no setup: its receivers join as they register.
        _ if bare_irc => Ok((0..n)
            .map(|i| {
                let channel = if cli.scenario == Scenario::Fanout {
                    fan_channel.as_str()
                } else {
                    "-"
                };
                format!("- lg{run}r{i} {channel}")
            })
            .collect()),
        _ if nats && cli.scenario == Scenario::Fanout => Ok(vec![fan_subject.clone(); n]),
        _ if nats => Ok((0..n).map(|i| room_subject(i / size)).collect()),
        Scenario::Fanout => api.users(nicks, |_| Some(fan_channel.clone())).await,
        Scenario::Rooms => api.users(nicks, |i| Some(room_channel(i / size))).await,
        _ => api.users(nicks, |_| None).await,
    }
    .map_err(|e| anyhow::anyhow!("{e:#}\n{HINT}"))?;
    // chatd's IRC door: each connection continues the session made over HTTP (already on the channel).
    let tokens = if chatd_irc {
        tokens
            .into_iter()
            .enumerate()
            .map(|(i, token)| format!("{token} lg{run}u{i} -"))
            .collect()
    } else {
        tokens
    };
    // The sender's server: the receivers' own, or a linked one (`--send-url`).
    let send_api = match &cli.send_url {
        Some(url) => Api::new(url)?,
        None => Api::new(&cli.url)?,
    };
    let sender = if cli.scenario == Scenario::Fanout && !nats && !bare_irc {
        let t = send_api.guest(&format!("lg{run}s")).await?;
        send_api.join(&t, &fan_channel).await?;
        Some(t)
    } else {
        None
    };
    if cli.urls.len() > 1 && !nats {
        // Connections to the other nodes identify with sessions made through the first.
        let apis = cli
            .urls
            .iter()
            .map(|u| Api::new(u))
            .collect::<Result<Vec<_>>>()?;
        setup::wait_applied(&apis, Duration::from_secs(60)).await?;
    }
    let setup_s = setup_started.elapsed().as_secs_f64();

    let rss_before_kib = sample::settled_rss_kib(cli.server_pid).await;
    let connect_started = Instant::now();
    eprintln!(
        "{}: opening {n} connections in {} process(es)",
        if nats { "nats" } else { "gateway" },
        cli.procs
    );
    let mut swarms = Swarms::start(&cli, server, tokens.clone()).await?;
    let (ready, failed) = swarms.wait_ready(run_limit(&cli)).await;
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "{}: {ready} ready, {failed} failed in {connect_s:.1}s",
        if nats { "nats" } else { "gateway" }
    );
    if failed > 0 && !nats {
        eprintln!("{HINT}");
    }

    let sampler = cli.server_pid.map(sample::Sampler::start);
    let phase = Instant::now();
    let mut sent = Arc::new(Sent::default());
    let mut first_send_ns = 0;
    let mut messages = 0;
    match cli.scenario {
        Scenario::Idle => {
            let end = phase + Duration::from_secs(cli.duration);
            while Instant::now() < end {
                tokio::time::sleep((end - Instant::now()).min(Duration::from_secs(5))).await;
                eprintln!(
                    "idle: {} open at {:.0}s",
                    swarms.open(),
                    phase.elapsed().as_secs_f64()
                );
            }
        }
        Scenario::Fanout | Scenario::Rooms => {
            // Let the joins reach everyone before the clock starts.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rooms = n.div_ceil(size);
            messages = cli.messages.unwrap_or(if cli.scenario == Scenario::Fanout {
                20
            } else if cli.rate() > 0.0 {
                (cli.rate() * cli.duration as f64).ceil() as u64
            } else {
                10_000
            });
            // Paced sends take --duration at the default message count; a second of slack lets them end.
            let deadline = Instant::now() + Duration::from_secs(cli.duration + 1);
            first_send_ns = util::now_ns();
            eprintln!("send: {messages} messages at {} msgs/s", cli.rate());
            // Message k of `rooms` goes to room k % rooms, whose members all receive it.
            let room_of = |k: u64| {
                let room = usize::try_from(k).unwrap_or(0) % rooms;
                (room, u64::try_from(size.min(n - room * size)).unwrap_or(0))
            };
            // Every fan-out message goes to all n: as if each had the fewest any connection has, which
            // bounds every connection's queue. Rooms count all deliveries together.
            let receivers = u64::try_from(n).unwrap_or(u64::MAX);
            let fanout = cli.scenario == Scenario::Fanout;
            let delivered = || {
                if fanout {
                    swarms.least_delivered().saturating_mul(receivers)
                } else {
                    swarms.deliveries()
                }
            };
            let window = Window {
                delivered: &delivered,
                limit: cli.window.saturating_mul(receivers),
            };
            sent = if nats {
                let receivers = u64::try_from(n).unwrap_or(0);
                let fanout = cli.scenario == Scenario::Fanout;
                nats::publish_all(server, messages, cli.rate(), deadline, window, |k| {
                    if fanout {
                        (fan_subject.clone(), receivers)
                    } else {
                        let (room, members) = room_of(k);
                        (room_subject(room), members)
                    }
                })
                .await?
            } else if let Some(addr) = irc_addr(&cli) {
                let receivers = u64::try_from(n).unwrap_or(0);
                let line = match &sender {
                    Some(token) => format!("{token} lg{run}s -"),
                    None => format!("- lg{run}s {fan_channel}"),
                };
                irc::publish_all(addr, &line, messages, cli.rate(), deadline, window, |_| {
                    (fan_channel.clone(), receivers)
                })
                .await?
            } else if let Some(sender) = &sender {
                let receivers = u64::try_from(n).unwrap_or(0);
                send_all(&send_api, messages, cli.rate(), deadline, window, |_| {
                    (sender.clone(), fan_channel.clone(), receivers)
                })
                .await
            } else {
                send_all(&api, messages, cli.rate(), deadline, window, |k| {
                    let k = usize::try_from(k).unwrap_or(0);
                    let room = k % rooms;
                    let members = size.min(n - room * size);
                    let member = (k / rooms) % members;
                    (
                        tokens[room * size + member].clone(),
                        room_channel(room),
                        u64::try_from(members).unwrap_or(0),
                    )
                })
                .await
            };
            let expected = sent.expected.load(Ordering::SeqCst);
            let drain = Instant::now() + DRAIN;
            while swarms.deliveries() < expected && Instant::now() < drain {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!(
                "send: {} sent, {} of {expected} deliveries",
                sent.ok.load(Ordering::SeqCst),
                swarms.deliveries()
            );
        }
        Scenario::Longpoll | Scenario::DurableSend => unreachable!("run above"),
    }
    let phase_s = phase.elapsed().as_secs_f64();
    let usage = match sampler {
        Some(s) => s.stop().await.map(|mut u| {
            u.rss_before_mib = rss_before_kib.map(|k| k as f64 / 1024.0);
            u
        }),
        None => None,
    };
    let result = swarms.finish().await?;

    let report = report::Report {
        scenario: cli.scenario.name().to_owned(),
        started_at,
        url: match &cli.send_url {
            Some(sender) => format!("{} (sender on {sender})", cli.urls.join(",")),
            None => cli.urls.join(","),
        },
        conns: n,
        rate: cli.rate(),
        messages,
        duration: cli.duration,
        procs: cli.procs,
        room_size: size,
        socket_buffer_kib: Some(cli.socket_buffer_kib),
        setup_s,
        connect_s,
        phase_s,
        first_send_ns,
        sent: sent.ok.load(Ordering::SeqCst),
        send_errors: sent.errors.load(Ordering::SeqCst),
        expected: sent.expected.load(Ordering::SeqCst),
        result,
        usage,
        server_kind: nats.then_some("nats"),
        polls: None,
        acks_per_s: None,
    };
    write_report(&cli, &report)
}

/// Prints the table and writes `--json` if asked.
fn write_report(cli: &Cli, report: &report::Report) -> Result<()> {
    print!("{}", report.table());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if report.result.refused > 0 {
        eprintln!("{HINT}");
    }
    Ok(())
}
