//! The store at scale: search latency p50/p95 and start-up time (snapshot plus log tail replayed into a
//! `chat_core::Core`) over a database of 1M messages. A load program, not a criterion bench: it prints figures.
//!
//! Run with `cargo bench -p chat-store --bench scale`. The database is built once through the real append path
//! (the core makes the events, `SqliteStore::append` writes them in large group commits) and cached under
//! `target/bench-data/` for later runs; `BENCH_MESSAGES` changes its size (default 1000000) and
//! `BENCH_REBUILD=1` builds it again.
//!
//! Beside each figure stands a bare SQLite baseline on the same file, through a separate read-only rusqlite
//! connection: for start-up, reading the newest snapshot's blob and the tail's event rows as raw bytes (the
//! I/O floor, no decoding and no replay); for search, the same queries in the same order as one FTS5 MATCH
//! restricted to the user's channels, newest first, `LIMIT 25`, reading only the ids (SQLite's floor for
//! that query, without chat-store's query building, row decoding, reactions and snippets). The baseline must
//! find the very same rows; the bench counts the queries where it does not. With `BENCH_JSON=path` every
//! figure is also written to `path` as one JSON object.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

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
/// Search queries timed per kind.
const QUERIES: usize = 200;
/// The page size of every search.
const LIMIT: usize = 25;

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

/// A duration in milliseconds, for the JSON output.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The system's load averages (1, 5 and 15 minutes), where the OS tells them: the machine may be shared.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// A read-only rusqlite connection of its own on the database, for the baselines.
fn open_bare(path: &Path) -> Connection {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open read-only")
}

/// One start-up's figures: the total and its three phases.
#[derive(Clone, Copy, Debug)]
struct Startup {
    total: Duration,
    open: Duration,
    snapshot: Duration,
    tail: Duration,
    /// Events replayed into the core, or event rows read by the baseline.
    tail_events: u64,
}

impl Startup {
    fn json(&self) -> serde_json::Value {
        json!({
            "total_ms": ms(self.total),
            "open_ms": ms(self.open),
            "snapshot_ms": ms(self.snapshot),
            "tail_ms": ms(self.tail),
            "tail_events": self.tail_events,
        })
    }
}

/// Opens the store, loads the newest snapshot and replays the tail, as the engine's start-up does.
fn startup(path: &Path) -> Startup {
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
    Startup {
        total,
        open: opened,
        snapshot: restored - opened,
        tail: total - restored,
        tail_events: core.last_seq() - seq,
    }
}

/// The I/O floor of a start-up: a read-only connection reads the newest snapshot's blob, the tail's event
/// rows and the cursors as raw bytes, with no decoding and no replay. Returns the figures and the bytes read
/// for the snapshot and for the tail.
fn bare_startup(path: &Path) -> (Startup, usize, usize) {
    let start = Instant::now();
    let conn = open_bare(path);
    let opened = start.elapsed();
    let (seq, snapshot_bytes) = conn
        .query_row(
            "SELECT seq, state FROM snapshots ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                let blob = r.get_ref(1)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    blob.as_blob().expect("a snapshot blob").len(),
                ))
            },
        )
        .expect("snapshot");
    let restored = start.elapsed();
    let (mut rows, mut tail_bytes) = (0u64, 0usize);
    {
        let mut stmt = conn
            .prepare("SELECT seq, payload FROM events WHERE seq > ?1 ORDER BY seq")
            .expect("tail");
        let mut found = stmt.query([seq]).expect("tail");
        while let Some(r) = found.next().expect("tail row") {
            let payload = r.get_ref(1).expect("payload");
            tail_bytes += payload.as_blob().expect("a payload blob").len();
            rows += 1;
        }
        let mut stmt = conn
            .prepare("SELECT client, seq FROM cursors ORDER BY client")
            .expect("cursors");
        let cursors = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .expect("cursors")
            .collect::<Result<Vec<_>, _>>()
            .expect("cursor row");
        std::hint::black_box(cursors);
    }
    let total = start.elapsed();
    let figures = Startup {
        total,
        open: opened,
        snapshot: restored - opened,
        tail: total - restored,
        tail_events: rows,
    };
    (figures, snapshot_bytes, tail_bytes)
}

/// Percentiles of a set of query times.
#[derive(Clone, Copy, Debug)]
struct Latency {
    p50: Duration,
    p95: Duration,
    max: Duration,
}

impl Latency {
    /// Sorts `times` and takes their percentiles.
    fn of(times: &mut [Duration]) -> Self {
        times.sort();
        Self {
            p50: percentile(times, 0.5),
            p95: percentile(times, 0.95),
            max: times[times.len() - 1],
        }
    }

    fn json(&self, hits: usize, queries: usize) -> serde_json::Value {
        json!({
            "p50_ms": ms(self.p50),
            "p95_ms": ms(self.p95),
            "max_ms": ms(self.max),
            "hits_per_query": hits as f64 / queries as f64,
        })
    }
}

/// chat-store's time over the baseline's.
fn ratio(store: Duration, bare: Duration) -> f64 {
    store.as_secs_f64() / bare.as_secs_f64().max(1e-9)
}

/// One set of search queries timed on both sides, with the hits each found and where they disagreed.
#[derive(Debug, Default)]
struct SearchRun {
    store: Vec<Duration>,
    bare: Vec<Duration>,
    store_hits: usize,
    bare_hits: usize,
    /// Queries where the baseline found another number of hits than the store.
    count_mismatches: usize,
    /// Queries where the baseline's hits (ids, in order) differ from the store's in any way.
    row_mismatches: usize,
}

impl SearchRun {
    fn add(&mut self, other: &Self) {
        self.store.extend(&other.store);
        self.bare.extend(&other.bare);
        self.store_hits += other.store_hits;
        self.bare_hits += other.bare_hits;
        self.count_mismatches += other.count_mismatches;
        self.row_mismatches += other.row_mismatches;
    }

    /// Prints the baseline's line under the store's and returns every figure as JSON.
    fn report(&mut self) -> serde_json::Value {
        let queries = self.store.len();
        let store = Latency::of(&mut self.store);
        let bare = Latency::of(&mut self.bare);
        let (r50, r95) = (ratio(store.p50, bare.p50), ratio(store.p95, bare.p95));
        println!(
            "  {:<16}: p50 {:.2?} p95 {:.2?} max {:.2?} ({:.1} hits a query); store/bare p50 {r50:.1}x \
             p95 {r95:.1}x; mismatches {} (hit count {})",
            "bare FTS5",
            bare.p50,
            bare.p95,
            bare.max,
            self.bare_hits as f64 / queries as f64,
            self.row_mismatches,
            self.count_mismatches,
        );
        json!({
            "queries": queries,
            "store": store.json(self.store_hits, queries),
            "bare": bare.json(self.bare_hits, queries),
            "ratio_p50": r50,
            "ratio_p95": r95,
            "ratio_max": ratio(store.max, bare.max),
            "mismatches": self.row_mismatches,
            "hit_count_mismatches": self.count_mismatches,
        })
    }
}

fn main() {
    let messages: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let load_before = load_average();
    let dir = target_dir().join("bench-data");
    std::fs::create_dir_all(&dir).expect("bench-data dir");
    let path = dir.join(format!(
        "chat-store-scale-{messages}-g{GENERATION}-s{SCHEMA_VERSION}-f{}.db",
        chat_store::format::FORMAT_VERSION
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
    let mib = size as f64 / 1048576.0;
    println!("database: {} ({mib:.0} MiB)", path.display());

    // Start-up: the first run after a build meets a warm page cache, as a restart on a live server does. The
    // baseline runs beside each, first on every other run, so neither always finds the other's pages cached.
    let mut runs = Vec::new();
    let mut bare_runs = Vec::new();
    for i in 0..3 {
        let (stored, bare) = if i % 2 == 0 {
            let s = startup(&path);
            (s, bare_startup(&path))
        } else {
            let b = bare_startup(&path);
            (startup(&path), b)
        };
        let Startup {
            total,
            open,
            snapshot: snap,
            tail,
            tail_events: replayed,
        } = stored;
        println!(
            "start-up with {messages} messages: {total:.2?} (open {open:.2?}, snapshot load {snap:.2?}, \
             tail of {replayed} events {tail:.2?})"
        );
        let (b, snapshot_bytes, tail_bytes) = bare;
        println!(
            "  bare start-up (read-only rusqlite, raw bytes): {:.2?} (open {:.2?}, snapshot blob of {:.1} MiB \
             {:.2?}, {} tail rows of {:.1} MiB {:.2?}); store/bare {:.1}x",
            b.total,
            b.open,
            snapshot_bytes as f64 / 1048576.0,
            b.snapshot,
            b.tail_events,
            tail_bytes as f64 / 1048576.0,
            b.tail,
            ratio(total, b.total),
        );
        runs.push(stored);
        bare_runs.push(b);
    }
    let best = *runs.iter().min_by_key(|s| s.total).expect("runs");
    let bare_best = *bare_runs.iter().min_by_key(|s| s.total).expect("runs");
    println!(
        "start-up best of 3: {:.2?}, bare {:.2?}: store/bare {:.1}x",
        best.total,
        bare_best.total,
        ratio(best.total, bare_best.total)
    );

    // Search, as a typical user: the channels they are on, queries of each kind made from the vocabulary.
    let store = SqliteStore::open(&path, Durability::Full, NOW).expect("open");
    let bare = open_bare(&path);
    // The store's read connections' page cache, so that the baseline is not slowed by a smaller one.
    bare.execute_batch("PRAGMA cache_size = -65536")
        .expect("cache size");
    // The texts the bench makes are FTS5 syntax already, with the meaning chat-store gives them (words all
    // required, a quoted phrase, a `pre*` prefix), so the baseline passes them as they are.
    let bare_sql = format!(
        "SELECT m.id FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid
         WHERE messages_fts MATCH ?1 AND m.channel IN ({})
         ORDER BY messages_fts.rowid DESC LIMIT {LIMIT}",
        (2..2 + CHANNELS_PER_USER)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
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
    let time_store = |q: &SearchQuery| {
        let start = Instant::now();
        let hits = store.search(q).expect("search");
        let took = start.elapsed();
        (took, hits.iter().map(|h| h.message.id.get()).collect())
    };
    let time_bare = |args: &[Value]| {
        let start = Instant::now();
        let mut stmt = bare.prepare_cached(&bare_sql).expect("prepare");
        let found: Vec<u64> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))
            .expect("bare search")
            .map(|id| id.expect("bare row") as u64)
            .collect();
        (start.elapsed(), found)
    };
    let mut all = SearchRun::default();
    let mut kinds_json = Vec::new();
    let mut n = 0;
    for (name, make) in kinds {
        let mut run = SearchRun::default();
        for _ in 0..QUERIES {
            let user = rng.below(USERS);
            let q = SearchQuery {
                text: make(&mut rng, &vocab),
                channels: channels_of_user(user),
                author: None,
                channel: None,
                space: None,
                before: None,
                after: None,
                limit: LIMIT,
                offset: 0,
            };
            let mut args = vec![Value::Text(q.text.clone())];
            args.extend(q.channels.iter().map(|c| Value::Integer(c.get() as i64)));
            // Each side goes first on every other query, so neither always finds the other's pages cached.
            let ((store_took, store_ids), (bare_took, bare_ids)): ((_, Vec<u64>), _) = if n % 2 == 0
            {
                let s = time_store(&q);
                (s, time_bare(&args))
            } else {
                let b = time_bare(&args);
                (time_store(&q), b)
            };
            n += 1;
            run.store.push(store_took);
            run.bare.push(bare_took);
            run.store_hits += store_ids.len();
            run.bare_hits += bare_ids.len();
            run.count_mismatches += usize::from(store_ids.len() != bare_ids.len());
            run.row_mismatches += usize::from(store_ids != bare_ids);
        }
        let latency = Latency::of(&mut run.store.clone());
        println!(
            "search {name:<11}: p50 {:.2?} p95 {:.2?} max {:.2?} ({:.1} hits a query, limit {LIMIT})",
            latency.p50,
            latency.p95,
            latency.max,
            run.store_hits as f64 / QUERIES as f64
        );
        all.add(&run);
        let mut figures = run.report();
        figures["kind"] = json!(name);
        kinds_json.push(figures);
    }
    let overall = Latency::of(&mut all.store.clone());
    println!(
        "search all kinds ({} queries, {CHANNELS_PER_USER} of {CHANNELS} channels each): p50 {:.2?} p95 {:.2?}",
        all.store.len(),
        overall.p50,
        overall.p95
    );
    let overall_json = all.report();
    let load_after = load_average();
    println!(
        "load average (1, 5, 15 min) before: {}, after: {}",
        load_before.as_deref().unwrap_or("unknown"),
        load_after.as_deref().unwrap_or("unknown")
    );

    if let Some(out) = std::env::var_os("BENCH_JSON") {
        let report = json!({
            "messages": messages,
            "generation": GENERATION,
            "schema_version": SCHEMA_VERSION,
            "db_path": path.display().to_string(),
            "db_mib": mib,
            "startup": {
                "runs": runs.iter().map(Startup::json).collect::<Vec<_>>(),
                "best": best.json(),
                "bare_runs": bare_runs.iter().map(Startup::json).collect::<Vec<_>>(),
                "bare_best": bare_best.json(),
                "bare_best_ms": ms(bare_best.total),
                "ratio_best": ratio(best.total, bare_best.total),
            },
            "search": {
                "limit": LIMIT,
                "channels_per_user": CHANNELS_PER_USER,
                "channels": CHANNELS,
                "kinds": kinds_json,
                "overall": overall_json,
            },
            "load_average_before": load_before,
            "load_average_after": load_after,
        });
        let text = serde_json::to_string_pretty(&report).expect("json");
        std::fs::write(&out, text + "\n").expect("write BENCH_JSON");
        println!("figures written to {}", Path::new(&out).display());
    }
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
