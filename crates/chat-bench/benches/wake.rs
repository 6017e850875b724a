//! Wake-up latency of parked long polls, chatd against the bare hyper baseline (SPEC §10), in one run.
//!
//! For each server and each parked count (10 and 1000 by default), every round parks N polls (one connection
//! each), sends one message from another connection, and records for every poll the time from the sender's
//! acknowledgement (its POST response received) to that poll's response received. Percentiles go into a table,
//! followed by the targets: chatd p99 / bare p99 at 1000 parked (<= 1.5) and chatd p99 at 10 parked (<= 5 ms).
//!
//! Both servers run at once, as child processes (never inside the bench), and take turns round by round, so
//! whatever else loads this shared 2-core machine hits both alike. Both wake their polls before writing the
//! sender's ack, so some answers arrive before the ack (column `early`, recorded as 0); the table therefore
//! also gives the latency from the start of the send, which does not depend on where the ack lands.
//!
//! Environment:
//! - `WAKE_PARKED` (default `10,1000`) and `WAKE_ROUNDS` (default `200,50`; one value applies to every case);
//! - `WAKE_WARMUP` rounds discarded before each case (default 2), `WAKE_SETTLE_MS` the pause that lets the
//!   re-issued polls park before each send (default 30 ms + 0.15 ms per poll);
//! - `WAKE_SERVERS` (default `bare,chatd`); `CHATD_BIN` a chatd binary to use instead of building one with
//!   `cargo build --release -p chatd`; `WAKE_REQUIRE_CHATD=1` makes a chatd that cannot be built or started an
//!   error instead of a skipped row.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use chat_bench::client::Conn;
use chat_bench::process::ServerProcess;
use hdrhistogram::Histogram;
use http::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Poll timeout asked of the server: far longer than a round, so a poll only returns because of a message.
const POLL_TIMEOUT_SECS: u64 = 30;
/// How long a round may wait for all its responses before the bench gives up on the server.
const ROUND_DEADLINE: Duration = Duration::from_secs(20);
/// Concurrent connection set-ups; bounded so a 1000-client set-up does not look like a SYN flood.
const SETUP_PARALLELISM: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bare,
    Chatd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bare => "bare",
            Kind::Chatd => "chatd",
        }
    }

    fn poll_path(self, after: u64, timeout: u64) -> String {
        match self {
            Kind::Bare => format!("/poll?after={after}&timeout={timeout}"),
            Kind::Chatd => format!("/api/v1/messages?after={after}&timeout={timeout}"),
        }
    }
}

/// A number that chatd may send as a JSON string (ids and seqs are strings there) or as a JSON number.
fn lenient_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_json(status: http::StatusCode, body: &Bytes, what: &str) -> Result<Value> {
    ensure!(
        status.is_success(),
        "{what}: HTTP {status}: {}",
        String::from_utf8_lossy(body)
    );
    serde_json::from_slice(body)
        .with_context(|| format!("{what}: bad JSON {}", String::from_utf8_lossy(body)))
}

/// One simulated client: its connection, token (chatd only) and stream cursor.
struct Client {
    conn: Conn,
    token: Option<String>,
    cursor: u64,
}

impl Client {
    async fn request(&mut self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, bytes) = self
            .conn
            .request(method, path, self.token.as_deref(), body)
            .await?;
        parse_json(status, &bytes, path)
    }

    /// Polls with `timeout=0` until the stream is empty, so measurement rounds see only their own message.
    async fn drain(&mut self, kind: Kind) -> Result<()> {
        loop {
            let page = self
                .request(Method::GET, &kind.poll_path(self.cursor, 0), None)
                .await?;
            let cursor = lenient_u64(page.get("cursor")).context("poll answer without a cursor")?;
            let empty = page
                .get("messages")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            // A reset answer carries no messages but moves the cursor; loop once more from there.
            if empty && cursor == self.cursor {
                return Ok(());
            }
            self.cursor = cursor;
        }
    }

    /// Sends one message and returns its seq, as acknowledged by the server.
    async fn send(&mut self, kind: Kind, channel: &str, round: usize) -> Result<u64> {
        let ack = match kind {
            Kind::Bare => {
                self.request(
                    Method::POST,
                    "/send",
                    Some(json!({ "body": format!("wake {round}") })),
                )
                .await?
            }
            Kind::Chatd => {
                let msg =
                    json!({ "command": "PRIVMSG", "to": channel, "body": format!("wake {round}") });
                self.request(Method::POST, "/api/v1/messages", Some(msg))
                    .await?
            }
        };
        lenient_u64(ack.get("seq")).with_context(|| format!("send answer without a seq: {ack}"))
    }
}

/// Connects one client; for chatd also opens a guest session and joins `channel`.
async fn new_client(kind: Kind, addr: SocketAddr, nick: String, channel: String) -> Result<Client> {
    let mut client = Client {
        conn: Conn::connect(addr).await?,
        token: None,
        cursor: 0,
    };
    if kind == Kind::Bare {
        // A connect completes when the kernel queues it, before the server accepts; one round trip here keeps
        // the set-up parallelism bound real. Without it 1000 back-to-back connects overflowed the accept queue
        // and a hundred of them waited out the 1 s SYN retransmit.
        client.request(Method::GET, "/stats", None).await?;
    } else {
        let session = client
            .request(
                Method::POST,
                "/api/v1/session",
                Some(json!({ "nick": nick })),
            )
            .await?;
        client.token = Some(
            session
                .get("token")
                .and_then(Value::as_str)
                .context("session answer without a token")?
                .to_owned(),
        );
        client.cursor = lenient_u64(session.get("cursor")).unwrap_or(0);
        client
            .request(
                Method::POST,
                "/api/v1/messages",
                Some(json!({ "command": "JOIN", "to": channel })),
            )
            .await?;
    }
    Ok(client)
}

/// Sets up `n` clients in parallel (bounded), returned in index order.
async fn new_clients(
    kind: Kind,
    addr: SocketAddr,
    n: usize,
    channel: &str,
    nick_prefix: &str,
) -> Result<Vec<Client>> {
    let limit = Arc::new(Semaphore::new(SETUP_PARALLELISM));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (limit, channel) = (Arc::clone(&limit), channel.to_owned());
        // Nicks must be letters then digits; the caller's prefix keeps them unique across cases.
        let nick = format!("{nick_prefix}{i}");
        set.spawn(async move {
            let _permit = limit.acquire().await?;
            anyhow::Ok((i, new_client(kind, addr, nick, channel).await?))
        });
    }
    let mut clients: Vec<Option<Client>> = (0..n).map(|_| None).collect();
    while let Some(res) = set.join_next().await {
        let (i, client) = res??;
        clients[i] = Some(client);
    }
    let connected = Instant::now();
    // Joins of later clients land in earlier clients' streams, so draining waits until every join is done.
    let mut set = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let mut client = client.context("client set-up lost")?;
        let limit = Arc::clone(&limit);
        set.spawn(async move {
            let _permit = limit.acquire().await?;
            client.drain(kind).await?;
            anyhow::Ok((i, client))
        });
    }
    let mut out: Vec<Option<Client>> = (0..n).map(|_| None).collect();
    while let Some(res) = set.join_next().await {
        let (i, client) = res??;
        out[i] = Some(client);
    }
    if n > 1 {
        eprintln!(
            "wake: {} {n} clients: drained in {:.1?}",
            kind.name(),
            connected.elapsed()
        );
    }
    out.into_iter()
        .map(|c| c.context("client drain lost"))
        .collect()
}

/// One poll response as seen by a poller task: who, when it was fully received, and the cursor it carried.
struct Report {
    idx: usize,
    at: Instant,
    cursor: Result<u64, String>,
}

/// A poller: polls forever, re-issuing at once with the new cursor, and reports every response.
async fn poller(kind: Kind, idx: usize, mut client: Client, tx: mpsc::UnboundedSender<Report>) {
    loop {
        let path = kind.poll_path(client.cursor, POLL_TIMEOUT_SECS);
        let res = client
            .conn
            .request(Method::GET, &path, client.token.as_deref(), None)
            .await;
        // The timestamp is taken as soon as the whole body is in, before any parsing.
        let at = Instant::now();
        let cursor = res
            .map_err(|e| e.to_string())
            .and_then(|(status, body)| parse_json(status, &body, "poll").map_err(|e| e.to_string()))
            .and_then(|page| {
                lenient_u64(page.get("cursor")).ok_or_else(|| "poll answer without a cursor".into())
            });
        let failed = cursor.is_err();
        if let Ok(c) = cursor {
            client.cursor = c;
        }
        if tx.send(Report { idx, at, cursor }).is_err() || failed {
            return;
        }
    }
}

/// The figures of one (server, parked count) case.
struct CaseResult {
    server: &'static str,
    parked: usize,
    rounds: usize,
    /// Ack -> poll response received, µs.
    wake: Histogram<u64>,
    /// Send start -> poll response received, µs: does not depend on where the ack lands among the wake-ups.
    from_send: Histogram<u64>,
    /// Send start -> ack received, µs (for chatd this includes the durable commit).
    ack: Histogram<u64>,
    /// Poll responses that arrived before the sender's acknowledgement (recorded as 0 µs).
    early: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// One server's side of a case: its sender, its running pollers and the figures so far.
struct Case {
    kind: Kind,
    channel: String,
    parked: usize,
    sender: Client,
    rx: mpsc::UnboundedReceiver<Report>,
    /// Dropping the JoinSet aborts the pollers and closes their connections.
    pollers: JoinSet<()>,
    done: Vec<bool>,
    /// Answers that did not carry the round's message (chatd's presence events, for one).
    stray: u64,
    result: CaseResult,
}

impl Case {
    async fn setup(kind: Kind, addr: SocketAddr, parked: usize, rounds: usize) -> Result<Self> {
        let channel = format!("#bench{parked}");
        let started = Instant::now();
        let sender = new_clients(kind, addr, 1, &channel, &format!("s{parked}x"))
            .await?
            .pop()
            .context("no sender")?;
        let clients = new_clients(kind, addr, parked, &channel, &format!("w{parked}p")).await?;
        eprintln!(
            "wake: {} {parked} pollers ready in {:.1?}",
            kind.name(),
            started.elapsed()
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let mut pollers = JoinSet::new();
        for (idx, client) in clients.into_iter().enumerate() {
            pollers.spawn(poller(kind, idx, client, tx.clone()));
        }
        Ok(Self {
            kind,
            channel,
            parked,
            sender,
            rx,
            pollers,
            done: vec![false; parked],
            stray: 0,
            result: CaseResult {
                server: kind.name(),
                parked,
                rounds,
                wake: histogram(),
                from_send: histogram(),
                ack: histogram(),
                early: 0,
            },
        })
    }

    /// One round: let the polls park, send, and wait for every poller's answer carrying the message.
    async fn round(&mut self, round: usize, measured: bool, settle: Duration) -> Result<()> {
        let name = self.kind.name();
        // Every poller re-issued its poll the moment its previous answer came in; this pause lets those
        // requests reach the server and park. There is no portable way to ask chatd how many are parked.
        tokio::time::sleep(settle).await;
        let sent = Instant::now();
        let seq = self.sender.send(self.kind, &self.channel, round).await?;
        let acked = Instant::now();
        let result = &mut self.result;
        if measured {
            result.ack.record(micros(acked - sent).max(1))?;
        }
        self.done.fill(false);
        let mut pending = self.parked;
        let deadline = tokio::time::Instant::now() + ROUND_DEADLINE;
        while pending > 0 {
            let report = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => bail!("{name}: all pollers failed"),
                Err(_) => bail!(
                    "{name}: round {round}: {pending} of {} polls not woken after {ROUND_DEADLINE:?}",
                    self.parked
                ),
            };
            let cursor = match report.cursor {
                Ok(c) => c,
                Err(e) => bail!("{name}: poller {} failed: {e}", report.idx),
            };
            // An answer whose cursor is still before this round's message (a stray event, a spurious wake-up)
            // does not count: the poller has already re-polled and will report again.
            if cursor < seq || self.done[report.idx] {
                self.stray += 1;
                continue;
            }
            self.done[report.idx] = true;
            pending -= 1;
            if measured {
                if report.at < acked {
                    result.early += 1;
                }
                result
                    .wake
                    .record(micros(report.at.saturating_duration_since(acked)).max(1))?;
                result.from_send.record(micros(report.at - sent).max(1))?;
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> CaseResult {
        self.pollers.shutdown().await;
        let r = self.result;
        eprintln!(
            "wake: {} {} parked: p50 {} ms p99 {} ms ({} stray answers)",
            r.server,
            r.parked,
            ms(&r.wake, 0.5),
            ms(&r.wake, 0.99),
            self.stray
        );
        r
    }
}

struct Config {
    cases: Vec<(usize, usize)>,
    warmup: usize,
    settle: Option<Duration>,
    servers: Vec<Kind>,
    require_chatd: bool,
}

fn env_list(name: &str, default: &str) -> Result<Vec<usize>> {
    let raw = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    raw.split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("{name}: bad number {s:?}"))
        })
        .collect()
}

impl Config {
    fn from_env() -> Result<Self> {
        let parked = env_list("WAKE_PARKED", "10,1000")?;
        let rounds = env_list("WAKE_ROUNDS", "200,50")?;
        ensure!(
            !rounds.is_empty() && !parked.contains(&0),
            "WAKE_PARKED/WAKE_ROUNDS must be positive"
        );
        let cases = parked
            .iter()
            .enumerate()
            .map(|(i, &p)| (p, *rounds.get(i).or(rounds.last()).unwrap_or(&1)))
            .collect();
        let servers = std::env::var("WAKE_SERVERS")
            .unwrap_or_else(|_| "bare,chatd".to_owned())
            .split(',')
            .map(|s| match s.trim() {
                "bare" => Ok(Kind::Bare),
                "chatd" => Ok(Kind::Chatd),
                other => bail!("WAKE_SERVERS: unknown server {other:?}"),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cases,
            warmup: env_list("WAKE_WARMUP", "2")?.first().copied().unwrap_or(2),
            settle: match std::env::var("WAKE_SETTLE_MS") {
                Ok(ms) => Some(Duration::from_millis(
                    ms.trim().parse().context("WAKE_SETTLE_MS")?,
                )),
                Err(_) => None,
            },
            servers,
            require_chatd: std::env::var("WAKE_REQUIRE_CHATD").is_ok_and(|v| v == "1"),
        })
    }
}

/// A running server; field order matters: the process is killed before its data directory is removed.
struct Server {
    process: ServerProcess,
    _dir: Option<tempfile::TempDir>,
}

fn start(kind: Kind) -> Result<Server> {
    match kind {
        Kind::Bare => {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_bare-longpoll"));
            cmd.arg("127.0.0.1:0").stderr(Stdio::inherit());
            Ok(Server {
                process: ServerProcess::spawn("bare-longpoll", cmd, Duration::from_secs(10))?,
                _dir: None,
            })
        }
        Kind::Chatd => {
            let chatd = chat_bench::process::Chatd::start(&[])?;
            let (process, dir) = (chatd.process, chatd.dir);
            Ok(Server {
                process,
                _dir: Some(dir),
            })
        }
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
}

fn print_table(results: &[CaseResult]) {
    println!();
    println!("wake-up latency: sender's ack received -> each parked poll's response received (ms)");
    println!(
        "{:<7} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>8} {:>8}",
        "server",
        "parked",
        "rounds",
        "samples",
        "p50",
        "p90",
        "p99",
        "max",
        "early",
        "send p50",
        "send p99",
        "ack p50",
        "ack p99"
    );
    for r in results {
        println!(
            "{:<7} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>8} {:>8}",
            r.server,
            r.parked,
            r.rounds,
            r.wake.len(),
            ms(&r.wake, 0.50),
            ms(&r.wake, 0.90),
            ms(&r.wake, 0.99),
            format!("{:.2}", r.wake.max() as f64 / 1000.0),
            r.early,
            ms(&r.from_send, 0.50),
            ms(&r.from_send, 0.99),
            ms(&r.ack, 0.50),
            ms(&r.ack, 0.99),
        );
    }
    println!("early: poll responses received before the sender's ack (counted as 0 in p50..max)");
    println!(
        "send: sender's POST start -> poll response; ack: POST start -> ack (chatd: includes the commit)"
    );
    let find = |server: &str, parked: usize| {
        results
            .iter()
            .find(|r| r.server == server && r.parked == parked)
    };
    if let (Some(c), Some(b)) = (find("chatd", 1000), find("bare", 1000)) {
        let ratio =
            c.wake.value_at_quantile(0.99) as f64 / b.wake.value_at_quantile(0.99).max(1) as f64;
        let verdict = if ratio <= 1.5 { "met" } else { "MISSED" };
        println!("1000 parked: chatd p99 / bare p99 = {ratio:.2} (target <= 1.5: {verdict})");
        let send_ratio = c.from_send.value_at_quantile(0.99) as f64
            / b.from_send.value_at_quantile(0.99).max(1) as f64;
        println!(
            "1000 parked, measured from the send instead: chatd p99 / bare p99 = {send_ratio:.2}"
        );
    }
    if let Some(c) = find("chatd", 10) {
        let p99 = c.wake.value_at_quantile(0.99) as f64 / 1000.0;
        let verdict = if p99 <= 5.0 { "met" } else { "MISSED" };
        println!("10 parked: chatd p99 = {p99:.2} ms (target <= 5 ms: {verdict})");
    }
}

async fn run(cfg: Config) -> Result<()> {
    let mut servers = Vec::new();
    for &kind in &cfg.servers {
        match start(kind) {
            Ok(server) => {
                eprintln!("wake: {} at {}", kind.name(), server.process.addr());
                servers.push((kind, server));
            }
            Err(e) if kind == Kind::Chatd && !cfg.require_chatd => {
                eprintln!("wake: chatd skipped: {e:#}");
                println!(
                    "chatd: skipped ({})",
                    format!("{e:#}").lines().next().unwrap_or_default()
                );
            }
            Err(e) => return Err(e),
        }
    }
    let mut results = Vec::new();
    for &(parked, rounds) in &cfg.cases {
        let mut cases = Vec::new();
        for (kind, server) in &servers {
            let case = Case::setup(*kind, server.process.addr(), parked, rounds)
                .await
                .with_context(|| format!("{} with {parked} parked: set-up", kind.name()))?;
            cases.push(case);
        }
        let settle = cfg.settle.unwrap_or_else(|| {
            Duration::from_millis(30)
                + Duration::from_micros(150) * u32::try_from(parked).unwrap_or(u32::MAX)
        });
        // The servers take turns round by round (and swap who goes first), so a burst of load from anything
        // else on this shared machine lands on both rather than skewing the ratio the targets are stated in.
        for round in 0..cfg.warmup + rounds {
            let measured = round >= cfg.warmup;
            if round % 2 == 1 {
                cases.reverse();
            }
            for case in &mut cases {
                let name = case.kind.name();
                case.round(round, measured, settle)
                    .await
                    .with_context(|| format!("{name} with {parked} parked"))?;
            }
            if round % 2 == 1 {
                cases.reverse();
            }
        }
        for case in cases {
            results.push(case.finish().await);
        }
    }
    drop(servers);
    print_table(&results);
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes flags such as `--bench`; this bench has no flags of its own, so they are ignored.
    let cfg = Config::from_env()?;
    // Two workers, like the servers: the machine has two cores, and the client must keep up with 1000
    // responses arriving at once without its own scheduling dominating what is measured.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(cfg))
}
