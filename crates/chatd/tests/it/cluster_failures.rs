//! The cluster under failure (SPEC §12): nodes racing to start, a paused writer, `kill -9` of nodes under
//! load, and a PostgreSQL primary killed and its synchronous standby promoted. Clients send with nonces and
//! retry an unanswered request, with the same nonce, on another node, as a real client would. Every test ends
//! by reading the log itself (the `events` table: seqs dense from 1) and by checking that each acknowledged
//! message is present exactly once, under the seq and id it was acknowledged with, in the database, in
//! history on every node and in every reader's stream.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster::{Cluster, node};
use crate::harness::{Client, Server, try_request};

const LOAD: &str = "#load";

/// Where each node answers now (`""` while it is down), by node index.
type Bases = watch::Receiver<Vec<String>>;

/// A message whose POST was answered 200.
#[derive(Clone, Debug)]
struct Acked {
    body: String,
    seq: u64,
    id: String,
    /// Requests sent until the answer came (more than one: a node failed or did not answer in time).
    attempts: u32,
}

fn live_only(e: &Value) -> bool {
    matches!(e["type"].as_str(), Some("presence" | "typing"))
}

fn seq_of(e: &Value) -> u64 {
    e["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without seq: {e}"))
}

/// The database name of a `postgres://` URL.
fn db_name(url: &str) -> &str {
    let path = url.rsplit('/').next().expect("a path");
    path.split('?').next().expect("a name")
}

/// The log as the database holds it: (rows, distinct seqs, min seq, max seq).
fn log_shape(pg: &test_postgres::Server, db: &str) -> (u64, u64, u64, u64) {
    let out = pg.psql(
        db,
        "SELECT count(*), count(DISTINCT seq), COALESCE(min(seq), 0), COALESCE(max(seq), 0) FROM events",
    );
    let v: Vec<u64> = out
        .trim()
        .split('|')
        .map(|x| x.parse().expect("a number"))
        .collect();
    (v[0], v[1], v[2], v[3])
}

/// Checks that the log's seqs are exactly 1..=N; returns N.
fn assert_dense(pg: &test_postgres::Server, db: &str) -> u64 {
    let (rows, distinct, min, max) = log_shape(pg, db);
    assert!(rows > 0, "an empty log");
    assert_eq!(
        (rows, distinct, min),
        (max, max, 1),
        "the log is not dense 1..={max}: {rows} rows, {distinct} distinct seqs, first {min}"
    );
    max
}

/// The stored messages of the load, `(body, seq)`, read from the database itself.
fn db_messages(pg: &test_postgres::Server, db: &str) -> Vec<(String, u64)> {
    pg.psql(
        db,
        "SELECT body, seq FROM messages WHERE body LIKE 'load %' ORDER BY seq",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let (body, seq) = l.rsplit_once('|').expect("body|seq");
        (body.to_owned(), seq.parse().expect("seq"))
    })
    .collect()
}

/// Every acknowledged message once under its seq, and nothing unacknowledged (every sender retried until
/// acknowledged, so a body with no acknowledgement, or a body twice, is a retry the nonce failed to settle).
fn assert_exactly_once(what: &str, acked: &[Acked], found: &[(String, u64)]) {
    let by_body: HashMap<&str, &Acked> = acked.iter().map(|a| (a.body.as_str(), a)).collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (body, seq) in found {
        let a = by_body
            .get(body.as_str())
            .unwrap_or_else(|| panic!("{what}: {body:?} (seq {seq}) was never acknowledged"));
        assert_eq!(*seq, a.seq, "{what}: seq of {a:?}");
        *count.entry(body).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{what}: more than once: {twice:?}");
    let lost: Vec<&Acked> = acked
        .iter()
        .filter(|a| !count.contains_key(a.body.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{what}: {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// `(body, seq)` of the load's messages among events (a stream or history).
fn load_messages(events: &[Value]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .filter_map(|e| {
            let body = e["body"].as_str()?;
            body.starts_with("load ")
                .then(|| (body.to_owned(), seq_of(e)))
        })
        .collect()
}

/// Checks acknowledged ids against what a stream or history shows.
fn assert_ids(what: &str, acked: &[Acked], events: &[Value]) {
    let by_body: HashMap<&str, &Acked> = acked.iter().map(|a| (a.body.as_str(), a)).collect();
    for e in events.iter().filter(|e| e["type"] == "message") {
        if let Some(a) = e["body"].as_str().and_then(|b| by_body.get(b)) {
            assert_eq!(e["id"], json!(a.id), "{what}: id of {a:?}: {e}");
        }
    }
}

/// Seqs and ids acknowledged are distinct.
fn assert_distinct(acked: &[Acked]) {
    let mut seqs = HashSet::new();
    let mut ids = HashSet::new();
    for a in acked {
        assert!(
            seqs.insert(a.seq),
            "seq {} acknowledged twice: {a:?}",
            a.seq
        );
        assert!(ids.insert(&a.id), "id {} acknowledged twice: {a:?}", a.id);
    }
}

/// POSTs one command until a node acknowledges it: the same body and nonce every time, starting at node
/// `*at` and moving to the next live node after any failure or a request left unanswered for `timeout`.
async fn send_until_acked(
    http: &reqwest::Client,
    bases: &Bases,
    c: &Client,
    command: &Value,
    at: &mut usize,
    timeout: Duration,
) -> (Value, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: not acknowledged within 60 s: {command}",
            c.nick
        );
        let addr = {
            let bases = bases.borrow();
            bases[*at % bases.len()].clone()
        };
        if addr.is_empty() {
            *at += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        attempts += 1;
        let answer = try_request(
            http,
            &addr,
            Method::POST,
            "/api/v1/messages",
            Some(&c.token),
            Some(command),
            timeout,
        )
        .await;
        match &answer {
            Ok((StatusCode::OK, v)) => return (v.clone(), attempts),
            Ok((s, v)) => assert!(s.is_server_error(), "{} {command}: {s} {v}", c.nick),
            Err(_) => {}
        }
        *at += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn say(body: &str, nonce: &str) -> Value {
    json!({"command": "PRIVMSG", "to": LOAD, "body": body, "nonce": nonce})
}

/// Sends unique messages as fast as acknowledgements come back, until `stop`, spreading them over the
/// nodes.
async fn sender(
    http: reqwest::Client,
    bases: Bases,
    c: Client,
    first: usize,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut at = first;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let body = format!("load {} {i}", c.nick);
        let nonce = format!("{}-{i}", c.nick);
        let (v, attempts) =
            send_until_acked(&http, &bases, &c, &say(&body, &nonce), &mut at, timeout).await;
        acked.push(Acked {
            body,
            seq: v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {v}")),
            id: v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no id: {v}"))
                .to_owned(),
            attempts,
        });
        i += 1;
        at += 1;
    }
    acked
}

/// Follows a client's stream on one node with its own `after` across the whole run (through the node's
/// kills, restarts and pauses), until it reaches `until` (set once the senders are done). Accepts no reset,
/// no epoch change, no event at or before its cursor and no seq out of order.
async fn reader(
    http: reqwest::Client,
    bases: Bases,
    node: usize,
    c: Client,
    until: Arc<AtomicU64>,
) -> Vec<Value> {
    let mut cursor = c.cursor;
    let mut events: Vec<Value> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let target = until.load(Ordering::SeqCst);
        if target > 0 {
            if cursor >= target {
                return events;
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
            assert!(
                Instant::now() < d,
                "{} on node {node}: stream stuck at {cursor}, wanted {target}",
                c.nick
            );
        }
        let addr = bases.borrow()[node].clone();
        if addr.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let path = format!(
            "/api/v1/messages?after={cursor}&epoch={}&timeout=1&limit=1000",
            c.epoch
        );
        let answer = try_request(
            &http,
            &addr,
            Method::GET,
            &path,
            Some(&c.token),
            None,
            Duration::from_secs(4),
        )
        .await;
        let v = match answer {
            Ok((StatusCode::OK, v)) => v,
            Ok((s, v)) => {
                assert!(s.is_server_error(), "{} on node {node}: {s} {v}", c.nick);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        assert_ne!(
            v["reset"],
            json!(true),
            "{} on node {node}: reset after {cursor}: {v}",
            c.nick
        );
        assert_eq!(
            v["epoch"],
            json!(c.epoch),
            "{} on node {node}: epoch changed",
            c.nick
        );
        let next = v["cursor"].as_u64().expect("cursor");
        assert!(
            next >= cursor,
            "{} on node {node}: cursor went back {cursor} -> {next}",
            c.nick
        );
        for e in v["messages"].as_array().into_iter().flatten() {
            if live_only(e) {
                continue;
            }
            let seq = seq_of(e);
            assert!(
                seq > cursor,
                "{} on node {node}: event {seq} at or before after={cursor}: {e}",
                c.nick
            );
            if let Some(last) = events.last() {
                assert!(
                    seq > seq_of(last),
                    "{} on node {node}: seq {seq} after {}",
                    c.nick,
                    seq_of(last)
                );
            }
            events.push(e.clone());
        }
        cursor = next;
    }
}

/// A node's own view of its role (`GET /api/v1/server`), or `None` if it does not answer in time.
async fn role_of(http: &reqwest::Client, base: &str) -> Option<String> {
    if base.is_empty() {
        return None;
    }
    let answer = try_request(
        http,
        base,
        Method::GET,
        "/api/v1/server",
        None,
        None,
        Duration::from_secs(2),
    )
    .await;
    let Ok((StatusCode::OK, v)) = answer else {
        return None;
    };
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["self"] == json!(true))
        .and_then(|n| n["role"].as_str().map(str::to_owned))
}

/// Waits until exactly one of `bases` reports itself the writer; returns its index.
async fn the_writer(http: &reqwest::Client, bases: &[String], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut writers = Vec::new();
        for (i, b) in bases.iter().enumerate() {
            if role_of(http, b).await.as_deref() == Some("writer") {
                writers.push(i);
            }
        }
        if writers.len() == 1 {
            return writers[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single writer among {bases:?} within {within:?}: {writers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A value of a counter in `/metrics`.
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix(' ').or_else(|| {
                rest.starts_with('{')
                    .then(|| rest.split_once("} ").map(|x| x.1))
                    .flatten()
            })?;
            rest.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// A command that must succeed on some node: retried (same nonce) while the cluster settles.
async fn ok_anywhere(
    http: &reqwest::Client,
    bases: &Bases,
    first: usize,
    c: &Client,
    body: Value,
) -> u64 {
    let mut body = body;
    body["nonce"] = json!(format!("setup-{}-{}", c.nick, body["command"]));
    let mut at = first;
    let (v, _) = send_until_acked(http, bases, c, &body, &mut at, Duration::from_secs(5)).await;
    v["seq"].as_u64().expect("seq")
}

/// Guests for the load, made on node `i % n`, all in the load's channel; their streams start after the join.
async fn guests(
    servers: &[&Server],
    bases: &Bases,
    prefix: &str,
    n: usize,
) -> Vec<(usize, Client)> {
    let mut out = Vec::new();
    for i in 0..n {
        let on = i % servers.len();
        let mut c = servers[on].guest(&format!("{prefix}{i}")).await;
        let seq = ok_anywhere(
            &servers[on].http(),
            bases,
            on,
            &c,
            json!({"command": "JOIN", "to": LOAD}),
        )
        .await;
        c.cursor = seq;
        out.push((on, c));
    }
    out
}

/// Percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The end of a load: stops the senders, waits for every reader to reach the last acknowledged seq, and
/// checks the database, history on every node and every stream.
#[allow(
    clippy::too_many_arguments,
    reason = "one place for the checks every test shares"
)]
async fn finish_and_check(
    what: &str,
    pg: &test_postgres::Server,
    db: &str,
    servers: &[&Server],
    token: &str,
    stop: &AtomicBool,
    until: &AtomicU64,
    sends: Vec<tokio::task::JoinHandle<Vec<Acked>>>,
    mut acked: Vec<Acked>,
    reads: Vec<(usize, tokio::task::JoinHandle<Vec<Value>>)>,
) -> Vec<Acked> {
    stop.store(true, Ordering::SeqCst);
    for h in sends {
        let mine = h.await.expect("sender task");
        assert!(
            !mine.is_empty(),
            "{what}: a sender got nothing acknowledged"
        );
        acked.extend(mine);
    }
    assert_distinct(&acked);
    let max_seq = acked
        .iter()
        .map(|a| a.seq)
        .max()
        .expect("acknowledged messages");
    until.store(max_seq, Ordering::SeqCst);
    let last = assert_dense(pg, db);
    assert!(
        last >= max_seq,
        "{what}: acknowledged {max_seq}, log ends at {last}"
    );
    assert_exactly_once(
        &format!("{what}: the database"),
        &acked,
        &db_messages(pg, db),
    );
    for (i, s) in servers.iter().enumerate() {
        let history = s.history_all(token, LOAD).await;
        assert_ids(&format!("{what}: history on node {i}"), &acked, &history);
        assert_exactly_once(
            &format!("{what}: history on node {i}"),
            &acked,
            &load_messages(&history),
        );
    }
    for (node, h) in reads {
        let events = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("a reader did not finish")
            .expect("reader task");
        let who = format!("{what}: the stream read on node {node}");
        assert_ids(&who, &acked, &events);
        assert_exactly_once(&who, &acked, &load_messages(&events));
    }
    let retried = acked.iter().filter(|a| a.attempts > 1).count();
    println!(
        "{what}: {} acknowledged ({retried} after a retry), log dense 1..={last}: none lost, none twice",
        acked.len()
    );
    acked
}

/// Removes the directories the cluster's processes used.
fn remove_dirs(data: &Path, servers: &[&Server]) {
    let _ = std::fs::remove_dir_all(data);
    for s in servers {
        let _ = std::fs::remove_dir_all(s.dir());
    }
}

// --- 1. racing writers -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_starts_make_one_writer_and_one_order() {
    let pg = test_postgres::server();
    for round in 0..8 {
        let url = pg.fresh_db();
        let db = db_name(&url).to_owned();
        let data = tempfile::tempdir().expect("tempdir").keep();
        let n = if round % 2 == 0 { 3 } else { 2 };
        // Every node starts at the same instant on the empty database.
        let mut nodes: Vec<Server> = match n {
            3 => {
                let (a, b, c) = tokio::join!(
                    node(&url, &data, 1, &[]),
                    node(&url, &data, 2, &[]),
                    node(&url, &data, 3, &[])
                );
                vec![a, b, c]
            }
            _ => {
                let (a, b) = tokio::join!(node(&url, &data, 1, &[]), node(&url, &data, 2, &[]));
                vec![a, b]
            }
        };
        let http = nodes[0].http();
        let base_list: Vec<String> = nodes.iter().map(|s| s.base.clone()).collect();
        let writer = the_writer(&http, &base_list, Duration::from_secs(10)).await;
        // One lease was taken, once: the first term, by the node that reports itself the writer.
        let lease = pg.psql(&db, "SELECT term, node FROM lease");
        assert_eq!(
            lease.trim(),
            format!("1|{}", writer + 1),
            "round {round}: the lease"
        );
        // Genesis once: one network space, one creation of it in the log.
        assert_eq!(
            pg.psql(&db, "SELECT count(*) FROM spaces WHERE network")
                .trim(),
            "1"
        );
        assert_eq!(
            pg.psql(
                &db,
                "SELECT count(*) FROM events WHERE kind = 'space_created'"
            )
            .trim(),
            "1",
            "round {round}: genesis logged more than once"
        );

        // A client that signs up through the writer and goes on at once through another node: its token
        // and its cursor hold there, although that node may not have applied its sign-up yet.
        for m in 0..4 {
            let c = nodes[writer].guest(&format!("mover{m}")).await;
            for (i, other) in nodes.iter().enumerate().filter(|(i, _)| *i != writer) {
                let v = other.poll_raw(&c, Some(c.cursor), 0, None).await;
                assert_ne!(
                    v["reset"],
                    json!(true),
                    "round {round}: a cursor from the writer reset on node {i}: {v}"
                );
                assert!(
                    v["cursor"].as_u64().expect("cursor") >= c.cursor,
                    "round {round}: {v}"
                );
            }
        }

        // Every node sends at once; each node's reader sees one order, the same everywhere.
        let (_tx, bases) = watch::channel(base_list.clone());
        let servers: Vec<&Server> = nodes.iter().collect();
        let readers = guests(&servers, &bases, "reader", n).await;
        let senders = guests(&servers, &bases, "sender", n * 2).await;
        let stop = Arc::new(AtomicBool::new(false));
        let until = Arc::new(AtomicU64::new(0));
        let reads: Vec<_> = readers
            .iter()
            .map(|(on, c)| {
                (
                    *on,
                    tokio::spawn(reader(
                        http.clone(),
                        bases.clone(),
                        *on,
                        c.clone(),
                        Arc::clone(&until),
                    )),
                )
            })
            .collect();
        let sends: Vec<_> = senders
            .iter()
            .map(|(on, c)| {
                tokio::spawn(sender(
                    http.clone(),
                    bases.clone(),
                    c.clone(),
                    *on,
                    Arc::clone(&stop),
                    Duration::from_secs(5),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The readers' streams are compared with each other below, so keep their handles' results.
        stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        for h in sends {
            acked.extend(h.await.expect("sender"));
        }
        assert_distinct(&acked);
        let max_seq = acked.iter().map(|a| a.seq).max().expect("acknowledged");
        until.store(max_seq, Ordering::SeqCst);
        let mut orders = Vec::new();
        for (on, h) in reads {
            let events = h.await.expect("reader");
            let order = load_messages(&events);
            assert_exactly_once(
                &format!("round {round}: stream on node {on}"),
                &acked,
                &order,
            );
            orders.push(order);
        }
        for o in &orders[1..] {
            assert_eq!(o, &orders[0], "round {round}: two nodes saw two orders");
        }
        assert_dense(pg, &db);
        assert_exactly_once(
            &format!("round {round}: the database"),
            &acked,
            &db_messages(pg, &db),
        );
        println!(
            "round {round}: {n} nodes raced, node {} writes; {} messages in one order",
            writer + 1,
            acked.len()
        );
        for s in &mut nodes {
            s.kill9().await;
        }
        remove_dirs(&data, &nodes.iter().collect::<Vec<_>>());
    }
}

// --- 2. a paused writer ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_writer_is_fenced_and_steps_down() {
    let pg = test_postgres::server();
    let mut cluster = Cluster::start(2, &[]).await;
    let db = db_name(&cluster.url).to_owned();
    let http = cluster.nodes[0].http();
    let base_list: Vec<String> = cluster.nodes.iter().map(|s| s.base.clone()).collect();
    let (_bases_tx, bases) = watch::channel(base_list.clone());
    let old = the_writer(&http, &base_list, Duration::from_secs(10)).await;
    let other = 1 - old;
    let servers: Vec<&Server> = cluster.nodes.iter().collect();
    let readers = guests(&servers, &bases, "reader", 2).await;
    let senders = guests(&servers, &bases, "sender", 4).await;
    let token = readers[0].1.token.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicU64::new(0));
    let reads: Vec<_> = readers
        .iter()
        .map(|(on, c)| {
            (
                *on,
                tokio::spawn(reader(
                    http.clone(),
                    bases.clone(),
                    *on,
                    c.clone(),
                    Arc::clone(&until),
                )),
            )
        })
        .collect();
    let sends: Vec<_> = senders
        .iter()
        .map(|(on, c)| {
            tokio::spawn(sender(
                http.clone(),
                bases.clone(),
                c.clone(),
                *on,
                Arc::clone(&stop),
                Duration::from_secs(2),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    cluster.nodes[old].signal("STOP");
    let paused = Instant::now();
    // The other node takes over once the lease lapses.
    loop {
        if role_of(&http, &base_list[other]).await.as_deref() == Some("writer") {
            break;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(15),
            "node {other} did not take over from the paused writer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took_over = paused.elapsed();
    // About a lease (1 s), even when the writer stopped inside an append, holding its locks.
    assert!(
        took_over < Duration::from_secs(4),
        "the takeover from a paused writer took {took_over:?}"
    );
    // Writes go on through the new writer while the old one sleeps, its clients' requests unanswered.
    let mut prober = servers[other].guest("prober").await;
    prober.cursor = ok_anywhere(
        &http,
        &bases,
        other,
        &prober,
        json!({"command": "JOIN", "to": LOAD}),
    )
    .await;
    let joined = paused.elapsed();
    let mut at = other;
    let (v, _) = send_until_acked(
        &http,
        &bases,
        &prober,
        &say("load prober 0", "prober-0"),
        &mut at,
        Duration::from_secs(5),
    )
    .await;
    let probe = Acked {
        body: "load prober 0".into(),
        seq: v["seq"].as_u64().expect("seq"),
        id: v["id"].as_str().expect("id").to_owned(),
        attempts: 1,
    };
    let writing_again = paused.elapsed();
    println!(
        "paused writer: the prober's sign-up and join done at {} ms",
        joined.as_millis()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[old].signal("CONT");
    let resumed = Instant::now();
    // The old writer learns it lost its term (its renewal or its next append is refused) and follows.
    loop {
        if role_of(&http, &base_list[old]).await.as_deref() == Some("follower") {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "the resumed writer did not step down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stepped = resumed.elapsed();
    // And serves: writes through it are settled by the new writer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        role_of(&http, &base_list[other]).await.as_deref(),
        Some("writer")
    );
    assert!(
        metric(&http, &base_list[old], "chatd_cluster_stepdowns_total").await >= 1.0,
        "the resumed writer counts no step-down"
    );
    println!(
        "paused writer: node {} took over {} ms after SIGSTOP, a write was acknowledged at {} ms; the old \
         writer stepped down {} ms after SIGCONT",
        other + 1,
        took_over.as_millis(),
        writing_again.as_millis(),
        stepped.as_millis()
    );
    finish_and_check(
        "paused writer",
        pg,
        &db,
        &servers,
        &token,
        &stop,
        &until,
        sends,
        vec![probe],
        reads,
    )
    .await;
    drop(servers);
    for s in &mut cluster.nodes {
        s.kill9().await;
    }
    remove_dirs(&cluster.data, &cluster.nodes.iter().collect::<Vec<_>>());
}

// --- 3. kill -9 under load ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_nodes_under_load_loses_and_doubles_nothing() {
    let kills: usize = std::env::var("CHATD_CLUSTER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let started = Instant::now();
    let pg = test_postgres::server();
    let mut cluster = Cluster::start(3, &[]).await;
    let db = db_name(&cluster.url).to_owned();
    let http = cluster.nodes[0].http();
    let base_list: Vec<String> = cluster.nodes.iter().map(|s| s.base.clone()).collect();
    let (bases_tx, bases) = watch::channel(base_list.clone());
    let (readers, senders, prober) = {
        let servers: Vec<&Server> = cluster.nodes.iter().collect();
        let readers = guests(&servers, &bases, "reader", 3).await;
        let senders = guests(&servers, &bases, "sender", 4).await;
        let mut prober = servers[0].guest("prober").await;
        prober.cursor = ok_anywhere(
            &http,
            &bases,
            0,
            &prober,
            json!({"command": "JOIN", "to": LOAD}),
        )
        .await;
        (readers, senders, prober)
    };
    let token = readers[0].1.token.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicU64::new(0));
    let reads: Vec<_> = readers
        .iter()
        .map(|(on, c)| {
            (
                *on,
                tokio::spawn(reader(
                    http.clone(),
                    bases.clone(),
                    *on,
                    c.clone(),
                    Arc::clone(&until),
                )),
            )
        })
        .collect();
    let sends: Vec<_> = senders
        .iter()
        .map(|(on, c)| {
            tokio::spawn(sender(
                http.clone(),
                bases.clone(),
                c.clone(),
                *on,
                Arc::clone(&stop),
                Duration::from_secs(5),
            ))
        })
        .collect();

    let mut probes: Vec<Acked> = Vec::new();
    let mut failover: Vec<Duration> = Vec::new();
    let mut seed: u64 = std::env::var("CHATD_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    println!("kill -9 under load: CHATD_CLUSTER_KILLS={kills} CHATD_SEED={seed}");
    for k in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(100 + seed % 200)).await;
        let live = bases.borrow().clone();
        let writer = the_writer(&http, &live, Duration::from_secs(15)).await;
        let victim = if k % 2 == 0 {
            writer
        } else {
            (writer + 1 + (k / 2) % 2) % live.len()
        };
        bases_tx.send_modify(|b| b[victim].clear());
        cluster.nodes[victim].kill9().await;
        let killed = Instant::now();
        if victim == writer {
            // A new message, sent only after the kill: acknowledged once another node writes.
            let body = format!("load prober {k}");
            let mut at = victim + 1;
            let (v, attempts) = send_until_acked(
                &http,
                &bases,
                &prober,
                &say(&body, &format!("prober-{k}")),
                &mut at,
                Duration::from_secs(5),
            )
            .await;
            let took = killed.elapsed();
            failover.push(took);
            probes.push(Acked {
                body,
                seq: v["seq"].as_u64().expect("seq"),
                id: v["id"].as_str().expect("id").to_owned(),
                attempts,
            });
            println!(
                "kill {}: writer node {} killed; a write acknowledged again after {} ms",
                k + 1,
                victim + 1,
                took.as_millis()
            );
        } else {
            println!("kill {}: follower node {} killed", k + 1, victim + 1);
        }
        cluster.nodes[victim].restart().await;
        let base = cluster.nodes[victim].base.clone();
        bases_tx.send_modify(|b| b[victim] = base);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let servers: Vec<&Server> = cluster.nodes.iter().collect();
    finish_and_check(
        "kill -9 under load",
        pg,
        &db,
        &servers,
        &token,
        &stop,
        &until,
        sends,
        probes,
        reads,
    )
    .await;
    failover.sort();
    // SPEC §10: writes resume within 5 s of the writer's death.
    assert!(
        failover.last().is_none_or(|d| *d < Duration::from_secs(5)),
        "writes resumed only after {failover:?}"
    );
    println!(
        "kill -9 under load: {kills} kills ({} of the writer) in {:.1} s; from a writer's kill to the next \
         acknowledged write: p50 {} ms, p99 {} ms, max {} ms",
        failover.len(),
        started.elapsed().as_secs_f64(),
        pct(&failover, 0.5).as_millis(),
        pct(&failover, 0.99).as_millis(),
        failover.last().copied().unwrap_or_default().as_millis()
    );
    drop(servers);
    for s in &mut cluster.nodes {
        s.kill9().await;
    }
    remove_dirs(&cluster.data, &cluster.nodes.iter().collect::<Vec<_>>());
}

// --- 4. PostgreSQL failover to a synchronous standby -----------------------------------------------------

/// Runs a command to success, or panics with its output.
fn run(mut cmd: std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_and_standby_promoted_loses_nothing_acknowledged() {
    let sync = |standby: bool| test_postgres::Options {
        fsync: true,
        conf: vec![
            "wal_level = replica".into(),
            "max_wal_senders = 4".into(),
            "hot_standby = on".into(),
            "synchronous_commit = on".into(),
            // The promoted standby has no standby of its own: it waits for none.
            if standby {
                "synchronous_standby_names = ''".into()
            } else {
                "synchronous_standby_names = '*'".into()
            },
            "max_connections = 100".into(),
        ],
        empty: standby,
    };
    let primary = test_postgres::Server::start_new(sync(false));
    let standby = test_postgres::Server::start_new(sync(true));
    let mut backup = standby.command("pg_basebackup");
    backup
        .arg("-D")
        .arg(standby.data_dir())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(primary.port().to_string())
        .args([
            "-U",
            test_postgres::SUPERUSER,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]);
    run(backup, "pg_basebackup");
    standby.configure(&sync(true));
    standby.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while primary
        .psql("postgres", "SELECT sync_state FROM pg_stat_replication")
        .trim()
        != "sync"
    {
        assert!(
            Instant::now() < deadline,
            "the standby never became synchronous"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = primary.fresh_db();
    let db = db_name(&url).to_owned();
    let multi = format!(
        "postgres://{}@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
        test_postgres::SUPERUSER,
        primary.port(),
        standby.port()
    );
    let data = tempfile::tempdir().expect("tempdir").keep();
    let mut nodes = vec![
        node(&multi, &data, 1, &[]).await,
        node(&multi, &data, 2, &[]).await,
    ];
    let http = nodes[0].http();
    let base_list: Vec<String> = nodes.iter().map(|s| s.base.clone()).collect();
    let (_bases_tx, bases) = watch::channel(base_list.clone());
    let servers: Vec<&Server> = nodes.iter().collect();
    let readers = guests(&servers, &bases, "reader", 2).await;
    let senders = guests(&servers, &bases, "sender", 4).await;
    let mut prober = servers[0].guest("prober").await;
    prober.cursor = ok_anywhere(
        &http,
        &bases,
        0,
        &prober,
        json!({"command": "JOIN", "to": LOAD}),
    )
    .await;
    let token = readers[0].1.token.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicU64::new(0));
    let reads: Vec<_> = readers
        .iter()
        .map(|(on, c)| {
            (
                *on,
                tokio::spawn(reader(
                    http.clone(),
                    bases.clone(),
                    *on,
                    c.clone(),
                    Arc::clone(&until),
                )),
            )
        })
        .collect();
    let sends: Vec<_> = senders
        .iter()
        .map(|(on, c)| {
            tokio::spawn(sender(
                http.clone(),
                bases.clone(),
                c.clone(),
                *on,
                Arc::clone(&stop),
                Duration::from_secs(5),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    primary.kill9();
    let killed = Instant::now();
    let mut promote = standby.command("pg_ctl");
    promote
        .arg("-D")
        .arg(standby.data_dir())
        .args(["-w", "-t", "60", "promote"]);
    run(promote, "pg_ctl promote");
    let promoted = killed.elapsed();
    let mut at = 0;
    let (v, attempts) = send_until_acked(
        &http,
        &bases,
        &prober,
        &say("load prober 0", "prober-0"),
        &mut at,
        Duration::from_secs(5),
    )
    .await;
    let again = killed.elapsed();
    let probe = Acked {
        body: "load prober 0".into(),
        seq: v["seq"].as_u64().expect("seq"),
        id: v["id"].as_str().expect("id").to_owned(),
        attempts,
    };
    println!(
        "failover: primary killed, standby promoted after {} ms, a write acknowledged again after {} ms",
        promoted.as_millis(),
        again.as_millis()
    );
    // Each node on its own writes through the new primary.
    let mut probes = vec![probe];
    for (i, s) in servers.iter().enumerate() {
        let body = format!("load prober through {i}");
        let (_one, only) = watch::channel(vec![s.base.clone()]);
        let mut at = 0;
        let (v, attempts) = send_until_acked(
            &http,
            &only,
            &prober,
            &say(&body, &format!("prober-through-{i}")),
            &mut at,
            Duration::from_secs(5),
        )
        .await;
        probes.push(Acked {
            body,
            seq: v["seq"].as_u64().expect("seq"),
            id: v["id"].as_str().expect("id").to_owned(),
            attempts,
        });
    }
    // The nodes write to the promoted server, which is no standby any more.
    assert_eq!(
        standby
            .psql("postgres", "SELECT pg_is_in_recovery()")
            .trim(),
        "f"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    finish_and_check(
        "PostgreSQL failover",
        &standby,
        &db,
        &servers,
        &token,
        &stop,
        &until,
        sends,
        probes,
        reads,
    )
    .await;
    drop(servers);
    for s in &mut nodes {
        s.kill9().await;
    }
    remove_dirs(&data, &nodes.iter().collect::<Vec<_>>());
}
