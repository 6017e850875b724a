//! The crash test: a writer in a child process is killed with SIGKILL at random moments under load, again and
//! again; every command it acknowledged must then be in the log exactly once, retried nonces must return their
//! first reply, and SQLite's integrity check must pass.
//!
//! The child is this same test binary, re-run on the `crash::child` test with the database path in the
//! environment (without it, that test does nothing). `CHAT_ENGINE_CRASH_KILLS` sets the number of kills.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_core::{Command, EventKind, Outgoing, Target};
use chat_engine::{Engine, EngineConfig};
use chat_store::{Durability, SqliteStore, Store};

const DB: &str = "CHAT_ENGINE_CRASH_DB";
const TOKEN: &str = "CHAT_ENGINE_CRASH_TOKEN";
const ITERATION: &str = "CHAT_ENGINE_CRASH_ITERATION";
const RETRY: &str = "CHAT_ENGINE_CRASH_RETRY";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

fn say(body: &str) -> Command {
    Command::Send {
        to: Target::parse("#crash"),
        message: Outgoing {
            body: body.into(),
            ..Outgoing::default()
        },
    }
}

/// The child: writes until it is killed, printing each nonce before sending it and after it is acknowledged.
#[test]
fn child() {
    let Ok(path) = std::env::var(DB) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(SqliteStore::open(&path, Durability::Full, now_ms()).unwrap());
        let config = EngineConfig {
            rate_limit: None,
            snapshot_every: 200,
            ..EngineConfig::default()
        };
        let (engine, _task) = Engine::open(store, config).await.unwrap();
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let line = |text: String| {
            let mut out = out.lock().unwrap();
            writeln!(out, "{text}").unwrap();
            out.flush().unwrap();
        };
        // libtest has printed "test crash::child ... " without a newline: end that line first.
        line(String::new());
        let session = match std::env::var(TOKEN) {
            Ok(token) => engine.authenticate(&token).await.unwrap(),
            Err(_) => {
                let login = engine.guest("writer", "crash").await.unwrap();
                engine
                    .command(
                        &login.session,
                        Command::Join {
                            channel: "#crash".into(),
                            key: None,
                        },
                        None,
                    )
                    .await
                    .unwrap();
                line(format!("TOKEN {}", login.token));
                login.session
            }
        };
        // Retries first: nonces the previous child sent (acknowledged or not) must not make a second message.
        for nonce in std::env::var(RETRY)
            .unwrap_or_default()
            .split(',')
            .filter(|n| !n.is_empty())
        {
            let reply = engine
                .command(&session, say(nonce), Some(nonce.to_owned()))
                .await
                .unwrap();
            line(format!("ACK {nonce} {}", reply.seq));
        }
        line("READY".to_owned());
        let iteration = std::env::var(ITERATION).unwrap_or_default();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let engine = engine.clone();
            let out = Arc::clone(&out);
            let iteration = iteration.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let nonce = format!("i{iteration}-t{t}-{n}");
                    {
                        let mut out = out.lock().unwrap();
                        writeln!(out, "SEND {nonce}").unwrap();
                        out.flush().unwrap();
                    }
                    let reply = engine
                        .command(&session, say(&nonce), Some(nonce.clone()))
                        .await
                        .unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ACK {nonce} {}", reply.seq).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn sigkill_loses_nothing_acknowledged() {
    let kills: usize = std::env::var("CHAT_ENGINE_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut token: Option<String> = None;
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut retry: Vec<String> = Vec::new();
    let started = Instant::now();
    for iteration in 0..kills {
        let mut cmd = Process::new(&exe);
        cmd.args(["crash::child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DB, &db)
            .env(ITERATION, iteration.to_string())
            .env(RETRY, retry.join(","))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("child.err")).unwrap());
        if let Some(t) = &token {
            cmd.env(TOKEN, t);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let ready = Arc::new(Mutex::new(false));
        let reader = {
            let lines = Arc::clone(&lines);
            let ready = Arc::clone(&ready);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line == "READY" {
                        *ready.lock().unwrap() = true;
                    }
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !*ready.lock().unwrap() {
            assert!(
                Instant::now() < deadline,
                "child {iteration} never got ready"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "child {iteration} exited early: {:?}\n{}",
                lines.lock().unwrap(),
                std::fs::read_to_string(dir.path().join("child.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(10 + random_below(250)));
        child.kill().unwrap(); // SIGKILL on Unix.
        child.wait().unwrap();
        reader.join().unwrap();

        let mut sent = BTreeSet::new();
        for line in lines.lock().unwrap().iter() {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TOKEN"), Some(t), None) => token = Some(t.to_owned()),
                (Some("SEND"), Some(n), None) => {
                    sent.insert(n.to_owned());
                }
                (Some("ACK"), Some(n), Some(seq)) => {
                    let seq: u64 = seq.parse().unwrap();
                    sent.remove(n);
                    if let Some(first) = acked.insert(n.to_owned(), seq) {
                        assert_eq!(first, seq, "a retried nonce {n} got another reply");
                    }
                }
                _ => {}
            }
        }
        // Next child retries what this one sent without an answer, plus a few it acknowledged.
        retry = sent.into_iter().collect();
        let mut some_acked: Vec<_> = acked.keys().cloned().collect();
        some_acked.sort();
        retry.extend(some_acked.into_iter().rev().take(4));
    }
    assert!(token.is_some(), "the first child started");

    let store = SqliteStore::open(&db, Durability::Full, now_ms()).unwrap();
    let mut bodies: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let events = store.events_after(after, 10_000).unwrap();
        let Some(last) = events.last() else { break };
        after = last.seq;
        for e in events {
            if let EventKind::MessageCreated { message } = &e.kind {
                bodies.entry(message.body.clone()).or_default().push(e.seq);
            }
        }
    }
    let duplicated: Vec<_> = bodies.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    let lost: Vec<_> = acked
        .iter()
        .filter(|(n, seq)| bodies.get(*n).is_none_or(|s| s[0] != **seq))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    eprintln!(
        "crash test: {kills} kills, {} acknowledged, 0 lost, 0 duplicated, integrity ok, {:?}",
        acked.len(),
        started.elapsed()
    );
}
