//! Durable commit figures for the engine on SQLite: group-commit throughput (messages/s, FTS maintained) with
//! DURABILITY=full (also with a nonce on every message) and relaxed, single-message commit latency p50/p99,
//! and the raw fdatasync latency of the same disk measured in the same run for comparison. A load generator,
//! not a criterion bench: it prints figures. Run with `cargo bench -p chat-engine --bench commit` (`BENCH_DIR`
//! picks the disk; default: a temporary directory; `BENCH_STARTUP_MESSAGES` the size of the start-up test,
//! default 100000).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_core::{Command, Outgoing, Target};
use chat_engine::{Engine, EngineConfig, Session};
use chat_store::{Durability, MemoryStore, SqliteStore};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fdatasync(dir: &Path, rounds: usize) -> Vec<Duration> {
    let mut file = std::fs::File::create(dir.join("fsync.bin")).expect("create");
    let block = [7u8; 4096];
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        out.push(start.elapsed());
    }
    out.sort();
    out
}

fn send(body: String) -> Command {
    Command::Send {
        to: Target::parse("#bench"),
        message: Outgoing {
            body,
            ..Outgoing::default()
        },
    }
}

async fn setup(dir: &Path, name: &str, durability: Option<Durability>) -> (Engine, Session) {
    let path = dir.join(format!("bench-{name}-{durability:?}.db"));
    let config = EngineConfig {
        rate_limit: None,
        snapshot_every: 0,
        ..EngineConfig::default()
    };
    let (engine, _task) = match durability {
        Some(durability) => {
            let store = Arc::new(SqliteStore::open(&path, durability, now_ms()).expect("open"));
            Engine::open(store, config).await.expect("engine")
        }
        // The in-memory reference store: the engine's own overhead, without SQLite.
        None => Engine::open(Arc::new(MemoryStore::new()), config)
            .await
            .expect("engine"),
    };
    let login = engine.guest("bench", "bench").await.expect("guest");
    let join = Command::Join {
        channel: "#bench".into(),
        key: None,
    };
    engine
        .command(&login.session, join, None)
        .await
        .expect("join");
    (engine, login.session)
}

/// Group-commit throughput; with `nonces`, every message carries an idempotency nonce, as Discord clients send.
async fn throughput(
    dir: &Path,
    durability: Option<Durability>,
    nonces: bool,
    senders: usize,
    each: usize,
) {
    let name = if nonces { "nonces" } else { "throughput" };
    let (engine, session) = setup(dir, name, durability).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..senders {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..each {
                let body =
                    format!("message {t}-{n} with a few words to index in the full text search");
                let nonce = nonces.then(|| format!("{t}-{n}"));
                engine
                    .command(&session, send(body), nonce)
                    .await
                    .expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let elapsed = start.elapsed();
    let total = senders * each;
    println!(
        "group commit {}{}: {total} messages from {senders} senders in {elapsed:.2?} = {:.0} messages/s",
        durability.map_or_else(|| "memory store".to_owned(), |d| format!("sqlite {d:?}")),
        if nonces { " with nonces" } else { "" },
        total as f64 / elapsed.as_secs_f64(),
    );
    engine.shutdown().await.expect("shutdown");
}

async fn latency(dir: &Path, rounds: usize) -> Vec<Duration> {
    let (engine, session) = setup(dir, "latency", Some(Durability::Full)).await;
    let mut out = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let start = Instant::now();
        engine
            .command(&session, send(format!("single {n}")), None)
            .await
            .expect("send");
        out.push(start.elapsed());
    }
    engine.shutdown().await.expect("shutdown");
    out.sort();
    out
}

/// Logs `messages` messages, stops (saving a snapshot), and times how long a fresh engine takes to serve again.
async fn startup(dir: &Path, messages: usize) {
    let (engine, session) = setup(dir, "startup", Some(Durability::Relaxed)).await;
    let senders = 1000.min(messages.max(1));
    let mut tasks = Vec::new();
    for t in 0..senders {
        let engine = engine.clone();
        let each = messages / senders;
        tasks.push(tokio::spawn(async move {
            for n in 0..each {
                let body = format!("startup message {t}-{n}");
                engine
                    .command(&session, send(body), None)
                    .await
                    .expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    let path = dir.join("bench-startup-Some(Relaxed).db");
    let start = Instant::now();
    let store = Arc::new(SqliteStore::open(&path, Durability::Full, now_ms()).expect("open"));
    let (engine, _task) = Engine::open(store, EngineConfig::default())
        .await
        .expect("engine");
    engine.authenticate(&"0".repeat(64)).await.ok();
    println!(
        "start-up with {messages} messages logged (snapshot + tail): {:.2?}",
        start.elapsed()
    );
    engine.shutdown().await.expect("shutdown");
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("BENCH_DIR").map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sync = fdatasync(&dir, 500);
    println!(
        "fdatasync 4 KiB: p50 {:.2?} p99 {:.2?}",
        percentile(&sync, 0.5),
        percentile(&sync, 0.99)
    );
    runtime.block_on(async {
        let single = latency(&dir, 500).await;
        println!(
            "single-message commit (full): p50 {:.2?} p99 {:.2?}",
            percentile(&single, 0.5),
            percentile(&single, 0.99)
        );
        throughput(&dir, Some(Durability::Full), false, 1000, 100).await;
        throughput(&dir, Some(Durability::Full), true, 1000, 100).await;
        throughput(&dir, Some(Durability::Relaxed), false, 1000, 100).await;
        throughput(&dir, None, false, 1000, 100).await;
        let messages = std::env::var("BENCH_STARTUP_MESSAGES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(100_000);
        startup(&dir, messages).await;
    });
}
