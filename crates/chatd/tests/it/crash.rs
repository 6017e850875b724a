//! Restarts and crashes (SPEC §4, §9): a graceful restart keeps every channel, mode, topic, member, session,
//! cursor and message; `kill -9` under load loses nothing that was acknowledged and duplicates nothing
//! (nonces); a client offline across restarts gets everything it missed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::harness::{Client, Server, try_request};

/// The channel of the load test.
const LOAD: &str = "#load";

/// Live-only event types (not replayed after a restart, SPEC §4).
const LIVE_ONLY: [&str; 2] = ["presence", "typing"];

fn seq_of(e: &Value) -> u64 {
    e["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without seq: {e}"))
}

fn live_only(e: &Value) -> bool {
    LIVE_ONLY.contains(&e["type"].as_str().unwrap_or(""))
}

/// The durable events (live-only ones left out) up to `head`.
fn durable(events: &[Value], head: u64) -> Vec<Value> {
    events
        .iter()
        .filter(|e| !live_only(e) && seq_of(e) <= head)
        .cloned()
        .collect()
}

/// Durable events have strictly increasing seqs (live-only ones carry none, or share the one before them).
fn assert_increasing(who: &str, events: &[Value]) {
    let events: Vec<&Value> = events.iter().filter(|e| !live_only(e)).collect();
    for pair in events.windows(2) {
        assert!(
            seq_of(pair[0]) < seq_of(pair[1]),
            "{who}: seqs not strictly increasing: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

/// Reads a client's stream to its current end without waiting: from `after`, or, with `None`, from the
/// server-kept cursor on every request. Returns the events and the last cursor.
async fn read_to_end(srv: &Server, c: &Client, after: Option<u64>) -> (Vec<Value>, u64) {
    let mut all = Vec::new();
    let mut next = after;
    loop {
        let v = srv.poll_raw(c, next, 0, Some(1000)).await;
        assert_ne!(
            v["reset"],
            json!(true),
            "unexpected reset for {}: {v}",
            c.nick
        );
        assert_eq!(v["epoch"], json!(c.epoch), "epoch changed for {}", c.nick);
        let cursor = v["cursor"].as_u64().expect("cursor");
        let batch = v["messages"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            assert_increasing(&c.nick, &all);
            return (all, cursor);
        }
        all.extend(batch);
        if after.is_some() {
            next = Some(cursor);
        }
    }
}

/// `GET /api/v1/state` without what legitimately changes across a restart (presence, the cursor).
async fn stable_state(srv: &Server, c: &Client) -> Value {
    let (s, mut v) = srv.get("/api/v1/state", Some(&c.token)).await;
    assert_eq!(s, StatusCode::OK, "state of {} after restart: {v}", c.nick);
    let map = v.as_object_mut().expect("state object");
    map.remove("status");
    map.remove("cursor");
    v
}

fn privmsg(to: &str, body: &str) -> Value {
    json!({ "command": "PRIVMSG", "to": to, "body": body })
}

/// The bodies of the `message` events, in order.
fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_state_sessions_cursors_and_history() {
    let mut srv = Server::start(&[]).await;
    let pw_a = "correct horse battery staple";
    let alice = srv.register("alice", pw_a).await;
    let alice2 = srv.login("alice", pw_a).await;
    let bob = srv.register("bob", "bob's long enough password").await;
    let carol = srv.guest("carol").await;
    let dave = srv.guest("dave").await;

    // #ops: moderated, keyed, topic-locked; bob voiced.
    srv.ok(&alice, json!({"command": "JOIN", "to": "#ops"}))
        .await;
    srv.ok(
        &alice,
        json!({"command": "MODE", "to": "#ops", "body": "+mtk", "args": ["sekrit"]}),
    )
    .await;
    srv.ok(
        &alice,
        json!({"command": "TOPIC", "to": "#ops", "body": "ops only, keep it short"}),
    )
    .await;
    for c in [&bob, &carol] {
        srv.ok(c, json!({"command": "JOIN", "to": "#ops", "key": "sekrit"}))
            .await;
    }
    srv.ok(
        &alice,
        json!({"command": "MODE", "to": "#ops", "body": "+v", "args": ["bob"]}),
    )
    .await;
    let (s, v) = srv.cmd(&carol, privmsg("#ops", "unvoiced")).await;
    assert!(!s.is_success(), "+m let carol speak: {v}");
    let (s, v) = srv
        .cmd(
            &carol,
            json!({"command": "TOPIC", "to": "#ops", "body": "mine"}),
        )
        .await;
    assert!(!s.is_success(), "+t let carol set the topic: {v}");

    // #general: everyone.
    for c in [&alice, &bob, &carol, &dave] {
        srv.ok(c, json!({"command": "JOIN", "to": "#general"}))
            .await;
    }
    srv.ok(
        &alice,
        json!({"command": "TOPIC", "to": "#general", "body": "welcome, all"}),
    )
    .await;
    srv.ok(&alice, privmsg("#ops", "ops 1")).await;
    srv.ok(&bob, privmsg("#ops", "ops 2, voiced")).await;
    srv.ok(&dave, privmsg("#general", "hello all")).await;
    srv.ok(&carol, privmsg("#general", "hi dave")).await;
    srv.ok(&alice, privmsg("carol", "psst carol")).await;
    srv.ok(&carol, privmsg("alice", "hi alice")).await;
    srv.ok(&bob, privmsg("dave", "dave, ping")).await;
    srv.ok(&dave, json!({"command": "AWAY", "body": "lunch"}))
        .await;

    // Everyone catches up.
    // Owned copies that track each client's cursor (the originals only send).
    let mut clients = [
        alice.clone(),
        alice2.clone(),
        bob.clone(),
        carol.clone(),
        dave.clone(),
    ];
    for c in clients.iter_mut() {
        srv.drain(c).await;
    }

    // More traffic, which each client then reads only partly.
    srv.ok(&alice, privmsg("#ops", "ops 3")).await;
    srv.ok(&bob, privmsg("#general", "general 2")).await;
    srv.ok(&alice, privmsg("dave", "dm to dave")).await;
    srv.ok(&carol, privmsg("#general", "general 3")).await;
    srv.ok(
        &alice,
        json!({"command": "MODE", "to": "#ops", "body": "+o", "args": ["bob"]}),
    )
    .await;
    srv.ok(&bob, privmsg("#ops", "ops 4")).await;
    srv.ok(&carol, privmsg("bob", "carol to bob")).await;
    srv.ok(&dave, privmsg("#general", "general 4")).await;

    // Each client reads everything once (the reference), then rewinds its server-kept cursor to partway
    // through by reading the first `k` events again from its old cursor: what it has "seen" is then k events.
    let wanted = [1usize, 2, 3, usize::MAX, 2];
    let mut expected: Vec<Vec<Value>> = Vec::new();
    let mut head = 0;
    for (c, k) in clients.iter_mut().zip(wanted) {
        let (all, cursor) = read_to_end(&srv, c, Some(c.cursor)).await;
        head = head.max(cursor);
        let k = k.min(all.len());
        assert!(k > 0, "{} saw nothing of the second round", c.nick);
        let v = srv.poll_raw(c, Some(c.cursor), 0, Some(k)).await;
        let seen = v["messages"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            durable(&seen, head),
            durable(&all[..k], head),
            "{}: re-reading the first {k} events",
            c.nick
        );
        c.cursor = v["cursor"].as_u64().expect("cursor");
        let last = all[..k]
            .iter()
            .rev()
            .find(|e| !live_only(e))
            .expect("an event");
        assert_eq!(
            c.cursor,
            seq_of(last),
            "{}: cursor after {k} events",
            c.nick
        );
        expected.push(all[k..].to_vec());
    }
    assert!(
        expected.iter().any(|e| !durable(e, head).is_empty()),
        "nobody has anything left to read"
    );

    // Snapshot what must survive.
    let mut states = Vec::new();
    for c in clients.iter() {
        states.push(stable_state(&srv, c).await);
    }
    let mut infos = Vec::new();
    for name in ["ops", "general"] {
        let (s, v) = srv
            .get(&format!("/api/v1/channels/{name}"), Some(&alice.token))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        infos.push(v);
    }
    let conversations = [
        (&alice.token, "#ops"),
        (&alice.token, "#general"),
        (&alice.token, "carol"),
        (&alice.token, "dave"),
        (&bob.token, "dave"),
        (&carol.token, "bob"),
    ];
    let mut histories = Vec::new();
    for (token, target) in conversations {
        let h = srv.history_all(token, target).await;
        assert!(!h.is_empty(), "no history in {target}");
        histories.push(h);
    }
    let (_, server_before) = srv.get("/api/v1/server", None).await;

    // SIGTERM: a clean exit, then the same database again.
    let code = srv.terminate().await;
    assert_eq!(code, Some(0), "chatd did not exit 0 on SIGTERM");
    assert!(srv.dir().join("chat.db").exists(), "the database is gone");
    srv.restart().await;

    let (_, server_after) = srv.get("/api/v1/server", None).await;
    assert_eq!(
        server_after["epoch"], server_before["epoch"],
        "epoch changed"
    );
    for (c, before) in clients.iter().zip(&states) {
        assert_eq!(&stable_state(&srv, c).await, before, "state of {}", c.nick);
    }
    for (name, before) in ["ops", "general"].iter().zip(&infos) {
        let (s, v) = srv
            .get(&format!("/api/v1/channels/{name}"), Some(&alice.token))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(&v, before, "channel {name}");
    }
    for ((token, target), before) in conversations.iter().zip(&histories) {
        let h = srv.history_all(token, target).await;
        assert_eq!(&h, before, "history of {target}");
    }

    // Each client continues from its cursor: from the server-kept one, and from its own `after`.
    for (c, want) in clients.iter_mut().zip(&expected) {
        let want = durable(want, head);
        let (kept, _) = read_to_end(&srv, c, None).await;
        assert_eq!(
            durable(&kept, head),
            want,
            "{}: stream from the server-kept cursor",
            c.nick
        );
        let (mine, cursor) = read_to_end(&srv, c, Some(c.cursor)).await;
        assert_eq!(
            durable(&mine, head),
            want,
            "{}: stream from its own cursor",
            c.nick
        );
        c.cursor = cursor;
    }

    // The modes still hold, and new messages flow to everyone concerned.
    let (s, v) = srv.cmd(&carol, privmsg("#ops", "still unvoiced")).await;
    assert!(!s.is_success(), "+m lost: {v}");
    let (s, v) = srv
        .cmd(&dave, json!({"command": "JOIN", "to": "#ops"}))
        .await;
    assert!(!s.is_success(), "+k lost: {v}");
    srv.ok(&bob, privmsg("#ops", "ops 5, after restart")).await;
    srv.ok(&alice, privmsg("#general", "general 5, after restart"))
        .await;
    srv.ok(&alice, privmsg("carol", "still there?")).await;
    let expect_new: [&[&str]; 5] = [
        &[
            "ops 5, after restart",
            "general 5, after restart",
            "still there?",
        ],
        &[
            "ops 5, after restart",
            "general 5, after restart",
            "still there?",
        ],
        &["ops 5, after restart", "general 5, after restart"],
        &[
            "ops 5, after restart",
            "general 5, after restart",
            "still there?",
        ],
        &["general 5, after restart"],
    ];
    for (c, want) in clients.iter_mut().zip(expect_new) {
        let got = srv.drain(c).await;
        assert_eq!(bodies(&got), want, "{}: new messages after restart", c.nick);
    }
}

// --- kill -9 under load -------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64), so that a failing run can be repeated with `CHATD_SEED`.
struct Rng(u64);

impl Rng {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A message whose POST was answered 200.
#[derive(Clone, Debug)]
struct Acked {
    body: String,
    nonce: String,
    seq: u64,
    id: String,
    /// Requests sent until the answer came (more than one: the server was killed meanwhile).
    attempts: u32,
    /// Kills before the first request.
    generation: u64,
}

/// Whether a failed request is one to retry against the (maybe new) server: it could not connect or read
/// the answer, the server failed, or the address was stale.
fn retryable(answer: &Result<(StatusCode, Value), reqwest::Error>, stale: bool) -> bool {
    match answer {
        Err(_) => true,
        Ok((s, _)) => s.is_server_error() || (stale && *s == StatusCode::UNAUTHORIZED),
    }
}

/// POSTs one command until it is acknowledged, against whatever address the server has now; the same body
/// and nonce every time. Returns the answer, how many requests reached for a server, and how many kills had
/// happened when the first one was sent (`kills`: counted just before each kill).
async fn send_until_acked(
    http: &reqwest::Client,
    base: &watch::Receiver<String>,
    c: &Client,
    command: &Value,
    kills: &AtomicU64,
) -> (Value, u32, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    let mut generation = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: not acknowledged within 30 s: {command}",
            c.nick
        );
        let now = kills.load(Ordering::SeqCst);
        let addr = base.borrow().clone();
        if addr.is_empty() {
            // The server is down.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if attempts == 0 {
            generation = now;
        }
        attempts += 1;
        let answer = try_request(
            http,
            &addr,
            Method::POST,
            "/api/v1/messages",
            Some(&c.token),
            Some(command),
            Duration::from_secs(10),
        )
        .await;
        if let Ok((StatusCode::OK, v)) = &answer {
            return (v.clone(), attempts, generation);
        }
        let stale = *base.borrow() != addr;
        assert!(
            retryable(&answer, stale),
            "{} {command}: {answer:?}",
            c.nick
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends unique messages to `channel` as fast as acknowledgements come back, until `stop` or `max`.
async fn sender(
    http: reqwest::Client,
    base: watch::Receiver<String>,
    c: Client,
    tag: u64,
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
    max: u64,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    for i in 0..max {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let body = format!("{} says {i} ({tag:x})", c.nick);
        let nonce = format!("{}-{i}-{tag:x}", c.nick);
        let command = json!({"command": "PRIVMSG", "to": LOAD, "body": body, "nonce": nonce});
        let (v, attempts, generation) = send_until_acked(&http, &base, &c, &command, &kills).await;
        acked.push(Acked {
            body,
            nonce,
            seq: v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {v}")),
            id: v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no id: {v}"))
                .to_owned(),
            attempts,
            generation,
        });
    }
    acked
}

/// Follows a client's stream across kills and restarts, until its cursor reaches `until` (set once the
/// senders are done). Never accepts a reset. With `own_after`, it polls with its own `after` and accepts no
/// event twice; without, it relies on the server-kept cursor, which a kill -9 may set back to its last save
/// (SPEC §9 asks for no loss; repeats are counted and returned, not kept).
async fn follow(
    http: reqwest::Client,
    base: watch::Receiver<String>,
    c: Client,
    until: Arc<AtomicU64>,
    own_after: bool,
) -> (Vec<Value>, usize) {
    let mut repeats = 0;
    let mut cursor = c.cursor;
    let mut events: Vec<Value> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let target = until.load(Ordering::SeqCst);
        if target > 0 {
            if cursor >= target {
                return (events, repeats);
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            assert!(
                Instant::now() < d,
                "{}: stream stuck at {cursor}, wanted {target}",
                c.nick
            );
        }
        let addr = base.borrow().clone();
        let path = if own_after {
            format!(
                "/api/v1/messages?after={cursor}&epoch={}&timeout=1&limit=1000",
                c.epoch
            )
        } else {
            "/api/v1/messages?timeout=1&limit=1000".to_owned()
        };
        let answer = try_request(
            &http,
            &addr,
            Method::GET,
            &path,
            Some(&c.token),
            None,
            Duration::from_secs(10),
        )
        .await;
        match &answer {
            Ok((StatusCode::OK, v)) => {
                assert_ne!(
                    v["reset"],
                    json!(true),
                    "{}: reset after {cursor}: {v}",
                    c.nick
                );
                assert_eq!(v["epoch"], json!(c.epoch), "{}: epoch changed: {v}", c.nick);
                let next = v["cursor"].as_u64().expect("cursor");
                assert!(
                    next >= cursor || !own_after,
                    "{}: cursor went back {cursor} -> {next}",
                    c.nick
                );
                for e in v["messages"].as_array().into_iter().flatten() {
                    if live_only(e) {
                        continue;
                    }
                    let seq = seq_of(e);
                    if !own_after && events.last().is_some_and(|l| seq <= seq_of(l)) {
                        repeats += 1;
                        continue;
                    }
                    assert!(
                        seq > cursor || !own_after,
                        "{}: event {seq} at or before after={cursor}",
                        c.nick
                    );
                    if let Some(last) = events.last() {
                        assert!(
                            seq > seq_of(last),
                            "{}: seq {seq} after {} (repeated or out of order)",
                            c.nick,
                            seq_of(last)
                        );
                    }
                    events.push(e.clone());
                }
                cursor = next;
            }
            _ => {
                let stale = *base.borrow() != addr;
                assert!(retryable(&answer, stale), "{} poll: {answer:?}", c.nick);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_and_duplicates_nothing() {
    let kills = env_number("CHATD_KILLS", 4);
    let seed = env_number(
        "CHATD_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1,
    );
    let max_per_sender = env_number("CHATD_MAX_PER_SENDER", 750);
    println!("kill9 under load: CHATD_KILLS={kills} CHATD_SEED={seed}");
    let mut rng = Rng(seed.max(1));
    let started = Instant::now();

    let mut srv = Server::start(&[("DURABILITY", "full"), ("RATE_LIMIT", "off")]).await;
    let senders = [
        srv.register("sender0", "sender zero password").await,
        srv.register("sender1", "sender one password").await,
        srv.guest("sender2").await,
        srv.guest("sender3").await,
    ];
    // listener0 and listener1 poll with their own `after`; listener2 relies on the server-kept cursor.
    let mut listeners = vec![
        srv.register("listener0", "listener zero password").await,
        srv.guest("listener1").await,
        srv.guest("listener2").await,
    ];
    for c in senders.iter().chain(&listeners) {
        srv.ok(c, json!({"command": "JOIN", "to": LOAD})).await;
    }
    for c in &mut listeners {
        srv.drain(c).await;
    }

    let (base_tx, base_rx) = watch::channel(srv.base.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicU64::new(0));
    let kills_done = Arc::new(AtomicU64::new(0));
    // The newest message in the log as each restart found it.
    let mut recovered: Vec<u64> = Vec::new();
    let follows: Vec<_> = listeners
        .iter()
        .map(|c| {
            tokio::spawn(follow(
                srv.http(),
                base_rx.clone(),
                c.clone(),
                Arc::clone(&until),
                c.nick != "listener2",
            ))
        })
        .collect();
    let sends: Vec<_> = senders
        .iter()
        .map(|c| {
            tokio::spawn(sender(
                srv.http(),
                base_rx.clone(),
                c.clone(),
                seed,
                Arc::clone(&stop),
                Arc::clone(&kills_done),
                max_per_sender,
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in 0..kills {
        let wait = rng.range(200, 700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // No address while the server is down: a request then fails at once, and an answer from whatever
        // might take over the old port is known to be stale.
        base_tx.send_replace(String::new());
        kills_done.fetch_add(1, Ordering::SeqCst);
        srv.kill9().await;
        let down = Instant::now();
        srv.restart().await;
        let up = down.elapsed();
        // Where the log ends now, before any client can reach the new process.
        let (s, v) = srv
            .get(
                "/api/v1/history?target=%23load&limit=1",
                Some(&listeners[0].token),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let head = v["messages"][0]["seq"].as_u64().unwrap_or(0);
        recovered.push(head);
        println!(
            "kill {} after {wait} ms; serving again at {} in {} ms; last message seq {head}",
            k + 1,
            srv.base,
            up.as_millis()
        );
        base_tx.send_replace(srv.base.clone());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut acked: Vec<Acked> = Vec::new();
    for (c, h) in senders.iter().zip(sends) {
        let mine = h.await.expect("sender task");
        assert!(!mine.is_empty(), "{} got nothing acknowledged", c.nick);
        acked.extend(mine);
    }
    // A message acknowledged at the first try was committed before the next kill, so the restart after it
    // found it; a retried one whose seq the restart found had committed before the kill, and its retry was
    // answered from the nonce.
    let head_after = |a: &Acked| {
        usize::try_from(a.generation)
            .ok()
            .and_then(|g| recovered.get(g).copied())
    };
    for a in acked.iter().filter(|a| a.attempts == 1) {
        if let Some(head) = head_after(a) {
            assert!(
                a.seq <= head,
                "acknowledged before kill {} but past the end of the log after it ({head}): {a:?}",
                a.generation + 1
            );
        }
    }
    let retried = acked.iter().filter(|a| a.attempts > 1).count();
    let replayed = acked
        .iter()
        .filter(|a| a.attempts > 1 && head_after(a).is_some_and(|h| a.seq <= h))
        .count();
    println!(
        "{} messages acknowledged ({retried} after a retry, {replayed} of them answered from the nonce of a \
         commit before the kill) in {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    let max_seq = acked.iter().map(|a| a.seq).max().expect("some messages");
    until.store(max_seq, Ordering::SeqCst);

    // Acknowledgements are distinct.
    let mut seqs = HashSet::new();
    let mut ids = HashSet::new();
    for a in &acked {
        assert!(
            seqs.insert(a.seq),
            "seq {} acknowledged twice: {a:?}",
            a.seq
        );
        assert!(
            ids.insert(a.id.clone()),
            "id {} acknowledged twice: {a:?}",
            a.id
        );
    }
    let by_body: HashMap<&str, &Acked> = acked.iter().map(|a| (a.body.as_str(), a)).collect();
    let by_id: HashMap<&str, &Acked> = acked.iter().map(|a| (a.id.as_str(), a)).collect();

    // (a), (b): history holds every acknowledged message exactly once, under the id and seq its POST got,
    // and nothing else: every sender retried until acknowledged, so a body with no acknowledgement, or a body
    // twice, would be a retry the nonce failed to de-duplicate.
    let check_history = |history: &[Value]| {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for m in history.iter().filter(|m| m["type"] == "message") {
            let body = m["body"].as_str().expect("body");
            *count.entry(body).or_default() += 1;
            let a = by_body
                .get(body)
                .unwrap_or_else(|| panic!("in history but never acknowledged: {m}"));
            assert_eq!(m["id"], json!(a.id), "history id of {a:?}: {m}");
            assert_eq!(m["seq"], json!(a.seq), "history seq of {a:?}: {m}");
        }
        let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "bodies more than once in history: {twice:?}"
        );
        let lost: Vec<_> = acked
            .iter()
            .filter(|a| !count.contains_key(a.body.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged messages missing from history, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    };
    let history = srv.history_all(&listeners[0].token, LOAD).await;
    check_history(&history);

    // (c): each listener's stream, read across all the restarts, has every acknowledged message exactly
    // once, in strictly increasing seq order (checked as it was read), with no reset.
    for (c, h) in listeners.iter().zip(follows) {
        let (events, repeats) = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("listener did not finish")
            .expect("listener task");
        if repeats > 0 {
            println!(
                "{}: {repeats} events delivered again after a kill (server-kept cursor set back)",
                c.nick
            );
        }
        assert_increasing(&c.nick, &events);
        let mut seen: HashSet<&str> = HashSet::new();
        for e in events
            .iter()
            .filter(|e| e["type"] == "message" && e["to"] == LOAD)
        {
            let id = e["id"].as_str().expect("id");
            let a = by_id
                .get(id)
                .unwrap_or_else(|| panic!("{}: a message never acknowledged: {e}", c.nick));
            assert_eq!(e["body"], json!(a.body), "{}: body of {id}", c.nick);
            assert_eq!(seq_of(e), a.seq, "{}: seq of {id}", c.nick);
            assert!(seen.insert(id), "{}: {id} twice in the stream", c.nick);
        }
        let missing: Vec<_> = acked
            .iter()
            .filter(|a| !seen.contains(a.id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: {} acknowledged messages missing from the stream, e.g. {:?}",
            c.nick,
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }

    // The nonce contract across kills: a retry now returns the first result and appends nothing.
    let mut sample: Vec<&Acked> = acked.iter().filter(|a| a.attempts > 1).take(20).collect();
    sample.extend(acked.iter().step_by(acked.len() / 10 + 1));
    let http = srv.http();
    for a in sample {
        let sender = senders
            .iter()
            .find(|c| a.nonce.starts_with(&format!("{}-", c.nick)))
            .expect("sender");
        let command = json!({"command": "PRIVMSG", "to": LOAD, "body": a.body, "nonce": a.nonce});
        let (v, _, _) = send_until_acked(&http, &base_rx, sender, &command, &kills_done).await;
        assert_eq!(v["seq"], json!(a.seq), "nonce retry of {a:?}: {v}");
        assert_eq!(v["id"], json!(a.id), "nonce retry of {a:?}: {v}");
    }
    check_history(&srv.history_all(&listeners[0].token, LOAD).await);
    println!(
        "kill9 under load: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// --- offline across restarts --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_client_gets_everything_it_missed_across_restarts() {
    let mut srv = Server::start(&[]).await;
    let alice = srv.register("alice", "alice's long password").await;
    let bob = srv.guest("bob").await;
    let mut carol = srv.register("carol", "carol's long password").await;
    let mut dave = srv.guest("dave").await;
    for c in [&alice, &bob, &carol, &dave] {
        srv.ok(c, json!({"command": "JOIN", "to": "#room"})).await;
    }
    srv.drain(&mut carol).await;
    srv.drain(&mut dave).await;
    let (carol_from, dave_from) = (carol.cursor, dave.cursor);

    // carol and dave go quiet; the world goes on through a kill -9 and a graceful restart.
    let mut log: Vec<(&str, String)> = Vec::new();
    for i in 0..5 {
        say(&srv, &alice, "#room", format!("before {i}"), &mut log).await;
    }
    say(&srv, &bob, "carol", "dm to carol before".into(), &mut log).await;
    srv.kill9().await;
    srv.restart().await;
    for i in 0..5 {
        say(&srv, &bob, "#room", format!("between {i}"), &mut log).await;
    }
    say(&srv, &alice, "dave", "dm to dave between".into(), &mut log).await;
    assert_eq!(srv.terminate().await, Some(0), "exit code on SIGTERM");
    srv.restart().await;
    for i in 0..3 {
        say(&srv, &alice, "#room", format!("after {i}"), &mut log).await;
    }
    let to = |who: &str| -> Vec<String> {
        log.iter()
            .filter(|(to, _)| *to == "#room" || *to == who)
            .map(|(_, body)| body.clone())
            .collect()
    };

    // carol comes back with the server-kept cursor, dave with his own `after`.
    let (got, _) = read_to_end(&srv, &carol, None).await;
    assert!(
        got.iter().all(|e| seq_of(e) > carol_from),
        "carol: replayed old events"
    );
    assert_eq!(
        bodies(&got),
        to("carol"),
        "carol missed or repeated something"
    );
    let (got, _) = read_to_end(&srv, &dave, Some(dave_from)).await;
    assert!(
        got.iter().all(|e| seq_of(e) > dave_from),
        "dave: replayed old events"
    );
    assert_eq!(
        bodies(&got),
        to("dave"),
        "dave missed or repeated something"
    );
}

/// Sends a message that must succeed and notes where it went.
async fn say<'a>(
    srv: &Server,
    who: &Client,
    to: &'a str,
    body: String,
    log: &mut Vec<(&'a str, String)>,
) {
    srv.ok(who, privmsg(to, &body)).await;
    log.push((to, body));
}

/// A client that relies on the server-kept cursor (polls with no `after`) and sees the server killed right
/// after a read loses nothing: the cursor is saved with the next commit or within a second, so a kill -9 in
/// that window can only set it back. What comes again is exactly a run of events the client already had, in
/// order, and everything after them follows; a client that drops seqs it has seen reads the stream exactly.
/// (Clients that send `after` never see a repeat: the other tests hold them to that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_right_after_a_read_repeats_at_most_and_loses_nothing() {
    let mut srv = Server::start(&[]).await;
    let alice = srv.guest("alice").await;
    let bob = srv.guest("bob").await;
    for c in [&alice, &bob] {
        srv.ok(c, json!({"command": "JOIN", "to": "#c"})).await;
    }
    for i in 0..3 {
        srv.ok(&bob, privmsg("#c", &format!("m{i}"))).await;
    }
    let (read, cursor) = read_to_end(&srv, &alice, None).await;
    assert_eq!(bodies(&read), ["m0", "m1", "m2"]);
    srv.kill9().await;
    srv.restart().await;
    srv.ok(&bob, privmsg("#c", "after")).await;
    let (again, _) = read_to_end(&srv, &alice, None).await;
    let again = durable(&again, u64::MAX);
    let (repeated, fresh): (Vec<_>, Vec<_>) = again.iter().partition(|e| seq_of(e) <= cursor);
    let had: Vec<u64> = durable(&read, u64::MAX).iter().map(seq_of).collect();
    let repeated: Vec<u64> = repeated.iter().map(|e| seq_of(e)).collect();
    assert!(
        had.ends_with(&repeated),
        "repeats must be the tail of what was read: had {had:?}, again {repeated:?}"
    );
    assert_eq!(
        bodies(&fresh.into_iter().cloned().collect::<Vec<_>>()),
        ["after"],
        "the new message arrives once"
    );
}
