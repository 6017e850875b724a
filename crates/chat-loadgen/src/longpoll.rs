//! The `longpoll` scenario: N clients each holding a parked long poll on its own keep-alive connection, one
//! sender posting stamped messages; every answer is a completed poll, every stamped message in it a wake.
//!
//! It runs against chatd (`GET /api/v1/messages`, guests all joined to one channel) and against the bare
//! hyper long-poll server of `chat-bench` (`GET /poll`, `POST /send`), so the two can be compared with the
//! same client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use http::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::gateway::{Swarm, Totals};
use crate::http::Conn;
use crate::util::{self, now_ns};

/// The `timeout` of every poll, in seconds: longer than a run's quiet spells, so polls end because of messages.
pub(crate) const POLL_TIMEOUT_SECS: u64 = 25;
/// A poll answer later than this is a failure (the server's own timeout plus slack).
const POLL_DEADLINE: Duration = Duration::from_secs(POLL_TIMEOUT_SECS + 15);
/// Connects in flight at once per process.
const CONNECT_PARALLELISM: usize = 128;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which long-poll protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    /// chatd: guests, a channel, `GET /api/v1/messages`, `POST /api/v1/messages`.
    Chatd,
    /// The bare hyper baseline (`bare-longpoll`): `GET /poll`, `POST /send`, no auth.
    Bare,
    /// nats-server over its WebSocket listener (`--url` is that listener): `fanout` and `rooms` only.
    Nats,
    /// chatd's IRC door (`--irc` is its address; setup goes over `--url`): `idle` and `fanout`.
    Irc,
    /// `chat-bench`'s bare IRC line-broadcast server (`--irc` is its address): `idle` and `fanout`.
    BareIrc,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Chatd => "chatd",
            Self::Bare => "bare",
            Self::Nats => "nats",
            Self::Irc => "irc",
            Self::BareIrc => "bare-irc",
        }
    }

    fn poll_path(self, after: u64) -> String {
        match self {
            Self::Chatd => format!("/api/v1/messages?after={after}&timeout={POLL_TIMEOUT_SECS}"),
            Self::Bare | Self::Nats | Self::Irc | Self::BareIrc => {
                format!("/poll?after={after}&timeout={POLL_TIMEOUT_SECS}")
            }
        }
    }

    /// Tells the two apart from their answers: chatd has `/api/v1/server`, the bare server `/stats`.
    pub(crate) async fn detect(server: SocketAddr) -> Result<Self> {
        let mut conn = Conn::connect(server, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let (status, body) = conn
            .request(Method::GET, "/api/v1/server", None, None)
            .await?;
        if status.is_success() && serde_json::from_slice::<Value>(&body).is_ok() {
            return Ok(Self::Chatd);
        }
        let (status, body) = conn.request(Method::GET, "/stats", None, None).await?;
        let stats: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() && stats.get("parked").is_some() {
            return Ok(Self::Bare);
        }
        bail!(
            "{server} is neither chatd (/api/v1/server) nor bare-longpoll (/stats); try --server-kind"
        )
    }
}

/// The sender: its own connection, and for chatd a guest joined to the channel.
#[derive(Debug)]
pub(crate) struct Sender {
    kind: Kind,
    conn: Conn,
    token: Option<String>,
    channel: String,
}

impl Sender {
    /// Connects the sender (for chatd: a guest that joins `channel`, after every poller has joined) and
    /// returns it with the stream position the pollers start after.
    pub(crate) async fn start(
        kind: Kind,
        server: SocketAddr,
        nick: &str,
        channel: &str,
    ) -> Result<(Self, u64)> {
        let mut conn = Conn::connect(server, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        match kind {
            Kind::Nats | Kind::Irc | Kind::BareIrc => {
                bail!("longpoll drives chatd or bare-longpoll")
            }
            Kind::Bare => {
                let (_, body) = conn.request(Method::GET, "/stats", None, None).await?;
                let stats: Value = serde_json::from_slice(&body).context("bare /stats")?;
                let seq = stats["seq"].as_u64().context("bare /stats without seq")?;
                Ok((
                    Self {
                        kind,
                        conn,
                        token: None,
                        channel: String::new(),
                    },
                    seq,
                ))
            }
            Kind::Chatd => {
                let session = ok_json(
                    conn.request(
                        Method::POST,
                        "/api/v1/session",
                        None,
                        Some(json!({ "nick": nick }).to_string()),
                    )
                    .await?,
                    "POST /api/v1/session",
                )?;
                let token = session["token"]
                    .as_str()
                    .context("session without token")?
                    .to_owned();
                let joined = ok_json(
                    conn.request(
                        Method::POST,
                        "/api/v1/messages",
                        Some(&token),
                        Some(json!({ "command": "JOIN", "to": channel }).to_string()),
                    )
                    .await?,
                    "JOIN",
                )?;
                let seq = lenient_u64(&joined["seq"]).context("JOIN answer without seq")?;
                Ok((
                    Self {
                        kind,
                        conn,
                        token: Some(token),
                        channel: channel.to_owned(),
                    },
                    seq,
                ))
            }
        }
    }

    /// Posts one message stamped now; returns once it is acknowledged.
    pub(crate) async fn send(&mut self) -> Result<()> {
        let stamp = crate::util::stamped_body();
        let (path, body) = match self.kind {
            Kind::Bare | Kind::Nats | Kind::Irc | Kind::BareIrc => {
                ("/send", json!({ "body": stamp }))
            }
            Kind::Chatd => (
                "/api/v1/messages",
                json!({ "command": "PRIVMSG", "to": self.channel, "body": stamp }),
            ),
        };
        let answer = self
            .conn
            .request(
                Method::POST,
                path,
                self.token.as_deref(),
                Some(body.to_string()),
            )
            .await?;
        ok_json(answer, path).map(drop)
    }
}

fn ok_json((status, body): (http::StatusCode, bytes::Bytes), what: &str) -> Result<Value> {
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{what}: not JSON"))
}

fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// One poller's identity: its token (chatd) and where its stream starts.
#[derive(Debug, Clone)]
pub(crate) struct Poller {
    pub(crate) token: Option<String>,
    pub(crate) cursor: u64,
}

impl Poller {
    /// `token cursor` (`-` for no token): how the parent hands pollers to a child process.
    pub(crate) fn to_line(&self) -> String {
        format!("{} {}", self.token.as_deref().unwrap_or("-"), self.cursor)
    }

    pub(crate) fn from_line(line: &str) -> Result<Self> {
        let (token, cursor) = line.split_once(' ').context("poller line without cursor")?;
        Ok(Self {
            token: (token != "-").then(|| token.to_owned()),
            cursor: cursor.trim().parse().context("poller cursor")?,
        })
    }
}

/// Starts one long-poll client per poller, client `i` bound to `util::source_addr(i, child, procs)`.
pub(crate) fn start(
    server: SocketAddr,
    kind: Kind,
    pollers: Vec<Poller>,
    child: usize,
    procs: usize,
) -> Swarm {
    let totals = Arc::new(Totals::new());
    let (stop, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut tasks = JoinSet::new();
    let connections = pollers.len();
    for (i, poller) in pollers.into_iter().enumerate() {
        let (totals, gate, stop) = (Arc::clone(&totals), Arc::clone(&gate), stop_rx.clone());
        let source = SocketAddr::new(util::source_addr(i, child, procs).into(), 0);
        tasks.spawn(async move {
            if let Err(e) = client(server, source, kind, poller, i, &totals, gate, stop).await
                && totals.failed.fetch_add(1, Ordering::SeqCst) < 5
            {
                eprintln!("chat-loadgen: poller {i}: {e:#}");
            }
        });
    }
    Swarm::from_parts(totals, stop, tasks, connections)
}

/// One long-poll client: connects, then polls until stopped, re-polling the moment an answer is in. A failed
/// poll counts as a poll error; a broken connection is reopened.
#[allow(clippy::too_many_arguments)]
async fn client(
    server: SocketAddr,
    source: SocketAddr,
    kind: Kind,
    poller: Poller,
    index: usize,
    totals: &Totals,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let connect = || async {
        tokio::time::timeout(CONNECT_TIMEOUT, Conn::connect(server, source))
            .await
            .context("connect timed out")?
    };
    let permit = gate.acquire_owned().await?;
    let mut conn = connect().await?;
    drop(permit);
    totals.ready.fetch_add(1, Ordering::SeqCst);
    let token = poller.token;
    let mut cursor = poller.cursor;
    loop {
        let path = kind.poll_path(cursor);
        let answer = tokio::select! {
            a = tokio::time::timeout(POLL_DEADLINE, conn.request(Method::GET, &path, token.as_deref(), None)) => a,
            _ = stop.changed() => return Ok(()),
        };
        match answer {
            Ok(Ok((status, body))) if status.is_success() => {
                totals.polls.fetch_add(1, Ordering::Relaxed);
                for sent in util::stamps(&body) {
                    totals.record(index, sent);
                }
                if let Some(c) = util::cursor(&body) {
                    cursor = c;
                }
            }
            Ok(Ok((status, body))) => {
                if totals.poll_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!(
                        "chat-loadgen: poller {index}: HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => {
                let e = match other {
                    Ok(Err(e)) => e,
                    _ => anyhow::anyhow!("no answer within {POLL_DEADLINE:?}"),
                };
                if totals.poll_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("chat-loadgen: poller {index}: {e:#}; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                conn = connect().await?;
            }
        }
    }
}

/// Runs `longpoll` from the parent: setup, the pollers (here or in children), the sender, the report.
pub(crate) async fn run(cli: &crate::Cli, server: SocketAddr) -> Result<()> {
    use std::time::{Instant, SystemTime};

    let started_at = SystemTime::now();
    let kind = match cli.server_kind {
        Some(Kind::Nats | Kind::Irc | Kind::BareIrc) => {
            bail!("--server-kind nats, irc and bare-irc drive fanout (and idle), not longpoll")
        }
        Some(k) => k,
        None => Kind::detect(server).await?,
    };
    // Children are told the kind rather than detecting it again.
    let mut cli = cli.clone();
    cli.server_kind = Some(kind);
    let cli = &cli;
    eprintln!("longpoll: server is {}", kind.name());
    let run = crate::run_id();
    let channel = format!("#lg{run}");
    let n = cli.conns;

    let setup_started = Instant::now();
    let tokens: Vec<Option<String>> = match kind {
        Kind::Chatd => {
            let api = crate::setup::Api::new(&cli.url)?;
            let nicks: Vec<String> = (0..n).map(|i| format!("lg{run}u{i}")).collect();
            api.users(nicks, |_| Some(channel.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("{e:#}\n{}", crate::setup::HINT))?
                .into_iter()
                .map(Some)
                .collect()
        }
        Kind::Bare | Kind::Nats | Kind::Irc | Kind::BareIrc => vec![None; n],
    };
    // The sender joins last, so its JOIN's seq is past every poller's join: the pollers start there.
    let (mut sender, cursor) = Sender::start(kind, server, &format!("lg{run}s"), &channel).await?;
    let pollers: Vec<Poller> = tokens
        .into_iter()
        .map(|token| Poller { token, cursor })
        .collect();
    let setup_s = setup_started.elapsed().as_secs_f64();

    let rss_before_kib = crate::sample::settled_rss_kib(cli.server_pid).await;
    let connect_started = Instant::now();
    eprintln!(
        "longpoll: opening {n} poll connections in {} process(es)",
        cli.procs
    );
    let mut swarms = crate::Swarms::start_longpoll(cli, server, kind, pollers).await?;
    let (ready, failed) = swarms.wait_ready(crate::run_limit(cli)).await;
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!("longpoll: {ready} polling, {failed} failed in {connect_s:.1}s");
    // The first polls must reach the server and park before the clock starts.
    let settle =
        Duration::from_millis(500) + Duration::from_micros(150) * u32::try_from(n).unwrap_or(0);
    tokio::time::sleep(settle).await;

    let sampler = cli.server_pid.map(crate::sample::Sampler::start);
    let rate = cli.rate();
    let messages = cli.messages.unwrap_or(if rate > 0.0 {
        (rate * cli.duration as f64).ceil() as u64
    } else {
        u64::MAX
    });
    let phase = Instant::now();
    let polls_before = swarms.polls();
    let deadline = phase + Duration::from_secs(cli.duration);
    let first_send_ns = now_ns();
    eprintln!(
        "longpoll: sending {} at {}",
        if messages == u64::MAX {
            "messages".to_owned()
        } else {
            format!("{messages} messages")
        },
        if rate > 0.0 {
            format!("{rate} msgs/s")
        } else {
            "one in flight, back to back".to_owned()
        }
    );
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let clock = tokio::time::Instant::now();
    for k in 0..messages {
        if Instant::now() >= deadline {
            break;
        }
        if rate > 0.0 {
            tokio::time::sleep_until(clock + Duration::from_secs_f64(k as f64 / rate)).await;
        }
        match sender.send().await {
            Ok(()) => sent += 1,
            Err(e) => {
                send_errors += 1;
                if send_errors <= 5 {
                    eprintln!("send: {e:#}");
                }
                if send_errors >= 100 && sent == 0 {
                    bail!("every send failed");
                }
            }
        }
    }
    let expected = sent * u64::try_from(ready).unwrap_or(0);
    let drain = Instant::now() + crate::DRAIN;
    while swarms.deliveries() < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Children report their poll counts every 100 ms; let the last one in.
    if cli.procs > 1 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let polls = swarms.polls().saturating_sub(polls_before);
    let phase_s = phase.elapsed().as_secs_f64();
    eprintln!(
        "longpoll: {sent} sent, {} of {expected} wakes, {polls} polls in {phase_s:.1}s",
        swarms.deliveries()
    );
    let usage = match sampler {
        Some(s) => s.stop().await.map(|mut u| {
            u.rss_before_mib = rss_before_kib.map(|k| k as f64 / 1024.0);
            u
        }),
        None => None,
    };
    let result = swarms.finish().await?;
    let report = crate::report::Report {
        scenario: "longpoll".to_owned(),
        started_at,
        url: cli.url.clone(),
        conns: n,
        rate,
        messages: if messages == u64::MAX { sent } else { messages },
        duration: cli.duration,
        procs: cli.procs,
        room_size: n,
        socket_buffer_kib: None,
        setup_s,
        connect_s,
        phase_s,
        first_send_ns,
        sent,
        send_errors,
        expected,
        result,
        usage,
        server_kind: Some(kind.name()),
        polls: Some((polls, polls as f64 / phase_s.max(1e-9))),
        acks_per_s: None,
    };
    crate::write_report(cli, &report)
}
