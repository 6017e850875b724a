//! The store at scale: search latency p50/p95 and start-up time (snapshot plus log tail replayed into a
//! `chat_core::Core`) over a database of 1M messages. A load program, not a criterion bench: it prints figures.
//!
//! Run with `cargo bench -p chat-store --bench scale`. The database is built once through the real append path
//! (the core makes the events, `SqliteStore::append` writes them in large group commits) and cached under
//! `target/bench-data/` for later runs; `BENCH_MESSAGES` changes its size (default 1000000) and
//! `BENCH_REBUILD=1` builds it again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chat_core::{
    ChannelId, Command, Config, Core, NewClient, Origin, Outgoing, Seq, State, Target,
};
use chat_store::{Batch, Durability, SCHEMA_VERSION, SearchQuery, SqliteStore, Store};

/// Where the simulated clock starts (2027).
const NOW: u64 = 1_800_000_000_000;
const USERS: usize = 2_000;
const CHANNELS: usize = 200;
/// Channels each user joins: a typical user's `channels` filter in a search.
const CHANNELS_PER_USER: usize = 8;
/// Commands per group commit while building.
const BATCH: usize = 5_000;
/// Events logged after the newest snapshot: just under the engine's default `snapshot_every` (10000), the
/// longest tail a start-up replays after a clean or unclean stop.
const TAIL: usize = 9_999;
/// Bump when the generated content changes, so a cached database of the old kind is rebuilt.
const GENERATION: u32 = 4;

/// A small deterministic generator (xorshift64*): the same database on every machine, no RNG dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A Zipf-like pick in `0..n` (rank k has weight about 1/k), as word frequencies in chat follow: the
    /// commonest word is in most messages, most words are rare.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let k = ((n as f64 + 1.0).ln() * u).exp() as usize;
        k.saturating_sub(1).min(n - 1)
    }
}

/// A vocabulary of made-up but pronounceable words (about 3000), so that prefixes share stems like real text.
fn vocabulary() -> Vec<String> {
    let onsets = [
        "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr",
        "gr", "pl",
    ];
    let vowels = ["a", "e", "i", "o", "u", "ai", "ou", "ea"];
    let codas = ["", "n", "r", "st", "ck", "ll", "m", "sh", "t", "nd"];
    let mut words = Vec::new();
    for o in onsets {
        for v in vowels {
            for c in codas {
                words.push(format!("{o}{v}{c}"));
                words.push(format!("{o}{v}{c}ing"));
            }
        }
    }
    // A fixed shuffle, so that frequency does not follow the alphabet.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in (1..words.len()).rev() {
        let j = rng.below(i + 1);
        words.swap(i, j);
    }
    words
}

fn body(rng: &mut Rng, vocab: &[String]) -> String {
    let n = 4 + rng.below(12);
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&vocab[rng.zipf(vocab.len())]);
    }
    out
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    )
}

fn channel_name(c: usize) -> String {
    format!("#room{c}")
}

/// The channels user `u` joins (distinct, deterministic).
fn channels_of(u: usize) -> Vec<usize> {
    let mut rng = Rng(0x5151_u64.wrapping_add(u as u64 * 7919) | 1);
    let mut out = Vec::new();
    while out.len() < CHANNELS_PER_USER {
        let c = rng.below(CHANNELS);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Collects the core's durable events, noting where the command that made them ends.
fn drain(core: &mut Core, events: &mut Vec<chat_core::Event>, ends: &mut Vec<Seq>) {
    let before = events.len();
    while let Some(ev) = core.poll_event() {
        if ev.is_durable() {
            events.push(ev);
        }
    }
    if events.len() > before {
        ends.push(core.last_seq());
    }
}

fn flush(store: &SqliteStore, events: &mut Vec<chat_core::Event>, ends: &mut Vec<Seq>) {
    store
        .append(&Batch {
            events,
            command_ends: ends,
            ..Batch::default()
        })
        .expect("append");
    events.clear();
    ends.clear();
}

/// Builds the database: users, channels, then `messages` messages in group commits of [`BATCH`] commands,
/// with a snapshot [`TAIL`] messages before the end.
fn build(path: &Path, messages: usize) {
    let store = SqliteStore::open(path, Durability::Full, NOW).expect("open");
    let config = Config {
        invite_seed: store.meta().invite_seed,
        ..Config::default()
    };
    let mut core = Core::new(config, NOW);
    let mut now = NOW;
    let (mut events, mut ends) = (Vec::new(), Vec::new());
    drain(&mut core, &mut events, &mut ends);
    let mut clients = Vec::with_capacity(USERS);
    for u in 0..USERS {
        now += 1;
        let mut token_hash = [0u8; 32];
        token_hash[..8].copy_from_slice(&(u as u64 + 1).to_le_bytes());
        let reply = core
            .handle(
                now,
                Origin::Anonymous,
                Command::Register {
                    nick: format!("user{u}"),
                    password_hash: None,
                    bot: false,
                    client: Some(NewClient {
                        name: "bench".into(),
                        token_hash,
                    }),
                },
            )
            .expect("register");
        drain(&mut core, &mut events, &mut ends);
        let Some(chat_core::Created::User {
            client: Some(client),
            ..
        }) = reply.created
        else {
            panic!("no client for user{u}");
        };
        clients.push(client);
        for c in channels_of(u) {
            now += 1;
            // Only the events matter here; the reply names nothing the build needs.
            let _joined = core
                .handle(
                    now,
                    Origin::Client(client),
                    Command::Join {
                        channel: channel_name(c),
                        key: None,
                    },
                )
                .expect("join");
            drain(&mut core, &mut events, &mut ends);
        }
    }
    flush(&store, &mut events, &mut ends);
    // Each channel's members, to pick authors from.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); CHANNELS];
    for u in 0..USERS {
        for c in channels_of(u) {
            members[c].push(u);
        }
    }
    let vocab = vocabulary();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let start = Instant::now();
    for n in 0..messages {
        let c = rng.below(CHANNELS);
        let Some(&u) = members[c].get(rng.below(members[c].len().max(1))) else {
            continue;
        };
        now += 1;
        let _sent = core
            .handle(
                now,
                Origin::Client(clients[u]),
                Command::Send {
                    to: Target::parse(&channel_name(c)),
                    message: Outgoing {
                        body: body(&mut rng, &vocab),
                        ..Outgoing::default()
                    },
                },
            )
            .expect("send");
        drain(&mut core, &mut events, &mut ends);
        if ends.len() >= BATCH || n + 1 == messages || n + 1 == messages - TAIL {
            flush(&store, &mut events, &mut ends);
        }
        if n + 1 == messages - TAIL {
            let state = postcard::to_allocvec(core.state()).expect("encode");
            store
                .save_snapshot(core.last_seq(), &state)
                .expect("snapshot");
        }
        if (n + 1) % 100_000 == 0 {
            eprintln!(
                "  {} messages appended, {:.0} messages/s",
                n + 1,
                (n + 1) as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "built: {messages} messages through SqliteStore::append (Full, {BATCH} commands a batch) in {:.1?} \
         = {:.0} messages/s (core included)",
        start.elapsed(),
        messages as f64 / start.elapsed().as_secs_f64()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Opens the store, loads the newest snapshot and replays the tail, as the engine's start-up does.
fn startup(path: &Path) -> (Duration, [Duration; 3], Seq) {
    let start = Instant::now();
    let store = SqliteStore::open(path, Durability::Full, NOW).expect("open");
    let opened = start.elapsed();
    let config = Config {
        invite_seed: store.meta().invite_seed,
        ..Config::default()
    };
    let (seq, bytes) = store
        .latest_snapshot()
        .expect("snapshot")
        .expect("a snapshot");
    let state: State = postcard::from_bytes(&bytes).expect("decode");
    let mut core = Core::from_state(config, state);
    let restored = start.elapsed();
    loop {
        let events = store.events_after(core.last_seq(), 10_000).expect("tail");
        if events.is_empty() {
            break;
        }
        for e in &events {
            core.apply(e).expect("apply");
        }
    }
    core.resume(NOW + 10_000_000);
    let cursors = store.cursors().expect("cursors");
    std::hint::black_box(cursors);
    let total = start.elapsed();
    assert_eq!(core.last_seq(), store.last_seq().expect("last"));
    (
        total,
        [opened, restored - opened, total - restored],
        core.last_seq() - seq,
    )
}

fn main() {
    let messages: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let dir = target_dir().join("bench-data");
    std::fs::create_dir_all(&dir).expect("bench-data dir");
    let path = dir.join(format!(
        "chat-store-scale-{messages}-g{GENERATION}-s{SCHEMA_VERSION}.db"
    ));
    let done = path.with_extension("done");
    if !done.exists() || std::env::var_os("BENCH_REBUILD").is_some() {
        for ext in ["db", "db-wal", "db-shm", "done"] {
            let _ = std::fs::remove_file(path.with_extension(ext));
        }
        println!("building {} ...", path.display());
        build(&path, messages);
        std::fs::write(&done, b"").expect("marker");
    }
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!(
        "database: {} ({:.0} MiB)",
        path.display(),
        size as f64 / 1048576.0
    );

    // Start-up: the first run after a build meets a warm page cache, as a restart on a live server does.
    for _ in 0..3 {
        let (total, [open, snap, tail], replayed) = startup(&path);
        println!(
            "start-up with {messages} messages: {total:.2?} (open {open:.2?}, snapshot load {snap:.2?}, \
             tail of {replayed} events {tail:.2?})"
        );
    }

    // Search, as a typical user: the channels they are on, queries of each kind made from the vocabulary.
    let store = SqliteStore::open(&path, Durability::Full, NOW).expect("open");
    let vocab = vocabulary();
    let mut rng = Rng(0xfeed_beef_cafe_f00d);
    let ids = channel_ids(&store);
    let channels_of_user =
        |u: usize| -> Vec<ChannelId> { channels_of(u).into_iter().map(|c| ids[c]).collect() };
    let kinds: [(&str, MakeQuery); 5] = [
        ("single term", |r, v| v[r.zipf(v.len())].clone()),
        ("rare term", |r, v| {
            v[v.len() - 1 - r.below(v.len() / 4)].clone()
        }),
        ("two terms", |r, v| {
            format!("{} {}", v[r.zipf(v.len())], v[r.zipf(v.len())])
        }),
        ("phrase", |r, v| {
            format!("\"{} {}\"", v[r.zipf(v.len())], v[r.zipf(v.len())])
        }),
        ("prefix", |r, v| {
            let w = &v[r.zipf(v.len())];
            format!("{}*", &w[..w.len().min(3)])
        }),
    ];
    let mut all = Vec::new();
    for (name, make) in kinds {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..200 {
            let user = rng.below(USERS);
            let q = SearchQuery {
                text: make(&mut rng, &vocab),
                channels: channels_of_user(user),
                author: None,
                channel: None,
                space: None,
                before: None,
                after: None,
                limit: 25,
                offset: 0,
            };
            let start = Instant::now();
            hits += store.search(&q).expect("search").len();
            times.push(start.elapsed());
        }
        times.sort();
        println!(
            "search {name:<11}: p50 {:.2?} p95 {:.2?} max {:.2?} ({:.1} hits a query, limit 25)",
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            times[times.len() - 1],
            hits as f64 / times.len() as f64
        );
        all.extend(times);
    }
    all.sort();
    println!(
        "search all kinds ({} queries, {CHANNELS_PER_USER} of {CHANNELS} channels each): p50 {:.2?} p95 {:.2?}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.95)
    );
}

/// Makes one search text of a kind from the vocabulary.
type MakeQuery = fn(&mut Rng, &[String]) -> String;

/// Each bench channel's id, found by name in the snapshot's state.
fn channel_ids(store: &SqliteStore) -> Vec<ChannelId> {
    let (_, bytes) = store
        .latest_snapshot()
        .expect("snapshot")
        .expect("a snapshot");
    let state: State = postcard::from_bytes(&bytes).expect("decode");
    let core = Core::from_state(Config::default(), state);
    (0..CHANNELS)
        .map(|c| core.channel_by_name(&channel_name(c)).expect("channel").id)
        .collect()
}
