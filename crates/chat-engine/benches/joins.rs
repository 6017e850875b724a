//! The cost of filling one channel: n guests join it one by one, each JOIN going to every member so far (as
//! IRC tells a channel of every join), on the in-memory store, so that the figure is the engine's own work
//! (the core's recipients and the streams' publishing). Prints the time for each step of 5,000 joins and the
//! time per join and per delivery. A load program, not a criterion bench. Run with
//! `cargo bench -p chat-engine --bench joins` (`BENCH_JOINS` sets n, default 20000).

use std::sync::Arc;
use std::time::Instant;

use chat_core::Command;
use chat_engine::{Engine, EngineConfig};
use chat_store::MemoryStore;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_JOINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let config = EngineConfig {
        rate_limit: None,
        snapshot_every: 0,
        ..EngineConfig::default()
    };
    let (engine, _task) = Engine::open(Arc::new(MemoryStore::new()), config)
        .await
        .expect("engine");
    let step = 5_000.min(n.max(1));
    let mut sessions = Vec::with_capacity(step);
    let started = Instant::now();
    let mut joined = 0usize;
    while joined < n {
        let count = step.min(n - joined);
        sessions.clear();
        for i in joined..joined + count {
            let login = engine
                .guest(&format!("j{i}"), "bench")
                .await
                .expect("guest");
            sessions.push(login.session);
        }
        let before = Instant::now();
        // Joins are sent one at a time, as members arrive; the engine still batches whatever queues.
        let mut tasks = Vec::new();
        for chunk in sessions.chunks(count.div_ceil(16).max(1)) {
            let engine = engine.clone();
            let chunk = chunk.to_vec();
            tasks.push(tokio::spawn(async move {
                for session in chunk {
                    let join = Command::Join {
                        channel: "#joins".into(),
                        key: None,
                    };
                    engine.command(&session, join, None).await.expect("join");
                }
            }));
        }
        for t in tasks {
            t.await.expect("joiner");
        }
        let took = before.elapsed();
        // The k-th member's join goes to k members.
        let deliveries: u64 = (joined as u64 + 1..=(joined + count) as u64).sum();
        joined += count;
        println!(
            "members {:>6} -> {joined:>6}: {took:>9.2?}, {:>7.1} µs per join, {:>6.1} ns per delivery",
            joined - count,
            took.as_secs_f64() * 1e6 / count as f64,
            took.as_secs_f64() * 1e9 / deliveries as f64,
        );
    }
    println!(
        "{n} joins in {:.2?} (with the guests' logins)",
        started.elapsed()
    );
    engine.shutdown().await.expect("shutdown");
}
