//! Server links on a real chatd: signed handshakes from configured peers are answered; unsigned, forged,
//! replayed, stale, unlinked and oversize requests are refused and change nothing; the status shows each
//! link's contact and refusals.

use std::time::{SystemTime, UNIX_EPOCH};

use chat_federation::sign::{SERVER_HEADER, SIGNATURE_HEADER, Signed, TIMESTAMP_HEADER, sign};
use serde_json::{Value, json};

use crate::harness::Server;

const LINK: &str = "/api/v1/federation/link";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A request to `a.example` from `from`, signed with `key` at `timestamp`.
struct Outgoing {
    from: &'static str,
    timestamp: u64,
    body: Vec<u8>,
    signature: String,
}

fn signed(from: &'static str, key: &str, body: &Value, timestamp: u64) -> Outgoing {
    let body = serde_json::to_vec(body).unwrap();
    let signature = sign(
        key.as_bytes(),
        &Signed {
            method: "POST",
            path: LINK,
            from,
            to: "a.example",
            timestamp,
            body: &body,
        },
    );
    Outgoing {
        from,
        timestamp,
        body,
        signature,
    }
}

fn hello(name: &str) -> Value {
    json!({ "name": name, "version": "test", "capabilities": [] })
}

async fn send(server: &Server, r: &Outgoing) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{LINK}", server.base))
        .header(SERVER_HEADER, r.from)
        .header(TIMESTAMP_HEADER, r.timestamp.to_string())
        .header(SIGNATURE_HEADER, &r.signature)
        .header("content-type", "application/json")
        .body(r.body.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn status(server: &Server) -> Value {
    reqwest::get(format!("{}/api/v1/federation/status", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn link_add(server: &Server, name: &str, key: Option<&str>) {
    link_add_at(server, name, "http://127.0.0.1:9", key);
}

/// `chatd link add NAME URL` on `server`'s database, while it runs.
fn link_add_at(server: &Server, name: &str, url: &str, key: Option<&str>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"));
    cmd.env_clear()
        .env(
            "DBURL",
            format!("sqlite://{}", server.dir.join("chat.db").display()),
        )
        .env("DATA_DIR", server.dir.join("data"))
        .args(["link", "add", name, url]);
    if let Some(k) = key {
        cmd.env("CHATD_LINK_KEY", k);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn only_signed_fresh_requests_of_linked_servers_are_answered() {
    let dir = tempfile::tempdir().unwrap().keep();
    let server = Server::start_single(
        dir,
        &[
            ("FEDERATION_NAME", "a.example"),
            ("FEDERATION_KEY", "the shared key"),
        ],
    )
    .await;
    let now = now_ms();

    // Not linked yet: refused, whatever the signature.
    let (code, body) = send(
        &server,
        &signed("b.example", "k-b", &hello("b.example"), now),
    )
    .await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not linked"),
        "{body}"
    );

    // Linked while the server runs, with a key of its own.
    link_add(&server, "b.example", Some("k-b"));
    let good = signed("b.example", "k-b", &hello("b.example"), now);
    let (code, body) = send(&server, &good).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["name"], "a.example");
    let s = status(&server).await;
    assert_eq!(s["name"], "a.example");
    assert_eq!(s["peers"][0]["name"], "b.example");
    assert_eq!(s["peers"][0]["version"], "test");
    assert_eq!(s["peers"][0]["key"], "own");
    let contact = s["peers"][0]["last_inbound_ms"].as_u64().unwrap();

    // The same request again: a replay.
    let (code, body) = send(&server, &good).await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("replay"),
        "{body}"
    );
    // Signed with the shared key, not the link's own: forged.
    let (code, body) = send(
        &server,
        &signed("b.example", "the shared key", &hello("b.example"), now + 1),
    )
    .await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("does not match"),
        "{body}"
    );
    // Ten minutes old.
    let (code, body) = send(
        &server,
        &signed("b.example", "k-b", &hello("b.example"), now - 600_000),
    )
    .await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("clock"),
        "{body}"
    );
    // Unsigned.
    let resp = reqwest::Client::new()
        .post(format!("{}{LINK}", server.base))
        .json(&hello("b.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Signed, but the handshake names another server.
    let (code, _) = send(
        &server,
        &signed("b.example", "k-b", &hello("c.example"), now + 2),
    )
    .await;
    assert_eq!(code, 400);
    // Over the body cap (1 MiB).
    let big = json!({ "name": "b.example", "version": "x".repeat(2 << 20) });
    let (code, _) = send(&server, &signed("b.example", "k-b", &big, now + 3)).await;
    assert_eq!(code, 413);

    // None of that counted as contact; the refusals are shown.
    let s = status(&server).await;
    assert_eq!(s["peers"][0]["last_inbound_ms"].as_u64(), Some(contact));
    assert!(
        s["peers"][0]["last_refusal"]["reason"]
            .as_str()
            .unwrap()
            .contains("clock"),
        "{s}"
    );

    // A link without its own key uses FEDERATION_KEY.
    link_add(&server, "c.example", None);
    let (code, body) = send(
        &server,
        &signed("c.example", "the shared key", &hello("c.example"), now + 4),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = send(
        &server,
        &signed("c.example", "k-b", &hello("c.example"), now + 5),
    )
    .await;
    assert_eq!(code, 401);
}

/// Without FEDERATION_NAME the routes do not exist.
#[tokio::test]
async fn without_a_federation_name_the_routes_are_off() {
    let server = Server::start(&[]).await;
    let resp = reqwest::get(format!("{}/api/v1/federation/status", server.base))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

/// The state of `server`'s link to `peer` (`up`, `down`, ...), with the whole entry.
async fn peer_state(server: &Server, peer: &str) -> (String, Value) {
    let s = status(server).await;
    let entry = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .cloned()
        .unwrap_or(Value::Null);
    (entry["state"].as_str().unwrap_or("").to_owned(), entry)
}

/// Waits (at most 15 s) until `server` says its link to `peer` is in `state`.
async fn wait_state(server: &Server, peer: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (now, entry) = peer_state(server, peer).await;
        if now == state {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} is not {state} on {} within 15 s: {entry}",
            server.base
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Two real servers linked both ways greet each other; one killed with SIGKILL is seen down by the other,
/// with the reason, and up again once it is back; a link whose keys differ on the two sides stays down and
/// says why.
#[tokio::test]
async fn linked_servers_greet_each_other_and_see_one_go_down_and_return() {
    let env = [
        ("FEDERATION_KEY", "the shared key"),
        ("FEDERATION_HANDSHAKE_EVERY", "300ms"),
    ];
    let with_name = |name: &'static str| {
        let mut e = env.to_vec();
        e.push(("FEDERATION_NAME", name));
        e
    };
    let a =
        Server::start_single(tempfile::tempdir().unwrap().keep(), &with_name("a.example")).await;
    let mut b =
        Server::start_single(tempfile::tempdir().unwrap().keep(), &with_name("b.example")).await;
    link_add_at(&a, "b.example", &b.base, None);
    link_add_at(&b, "a.example", &a.base, None);
    let entry = wait_state(&a, "b.example", "up").await;
    assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"));
    wait_state(&b, "a.example", "up").await;
    // b's handshakes reached a: a saw it inbound too.
    let (_, entry) = peer_state(&a, "b.example").await;
    assert!(entry["last_inbound_ms"].as_u64().is_some(), "{entry}");
    assert_eq!(peer_up_metric(&a, "b.example").await, Some(1.0));

    // b dies: a sees it down, and why.
    let port = b.base.rsplit(':').next().unwrap().to_owned();
    b.kill9().await;
    let entry = wait_state(&a, "b.example", "down").await;
    let reason = entry["last_error"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&b.base),
        "the error names the peer: {entry}"
    );
    assert_eq!(peer_up_metric(&a, "b.example").await, Some(0.0));

    // b again, on its port and database: up again.
    let mut again = with_name("b.example");
    let listen = format!("127.0.0.1:{port}");
    again.push(("LISTEN", &listen));
    let _b = Server::start_single(b.dir.clone(), &again).await;
    wait_state(&a, "b.example", "up").await;

    // Keys that differ: a signs for c with a key of the link's own, c checks with the shared one; c refuses
    // a's handshakes, and a says so.
    let c =
        Server::start_single(tempfile::tempdir().unwrap().keep(), &with_name("c.example")).await;
    link_add_at(&c, "a.example", &a.base, None);
    link_add_at(&a, "c.example", &c.base, Some("a key only a has"));
    let entry = wait_state(&a, "c.example", "down").await;
    let reason = entry["last_error"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("401") && reason.contains("does not match"),
        "{entry}"
    );
}

/// `chatd_federation_peer_up{peer="PEER"}` in `server`'s `/metrics`.
async fn peer_up_metric(server: &Server, peer: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("chatd_federation_peer_up{{peer=\"{peer}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A linked server over FEDERATION_RATE_LIMIT is answered 429 with Retry-After, and served again once its
/// budget refills; another peer's budget is its own.
#[tokio::test]
async fn a_peer_over_its_rate_limit_waits() {
    let server = Server::start_single(
        tempfile::tempdir().unwrap().keep(),
        &[
            ("FEDERATION_NAME", "a.example"),
            ("FEDERATION_KEY", "the shared key"),
            ("FEDERATION_RATE_LIMIT", "5/2"),
        ],
    )
    .await;
    link_add(&server, "b.example", None);
    link_add(&server, "c.example", None);
    let now = now_ms();
    let mut codes = Vec::new();
    for i in 0..8 {
        let r = signed("b.example", "the shared key", &hello("b.example"), now + i);
        codes.push(send(&server, &r).await.0);
    }
    assert_eq!(&codes[..5], &[200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    // The answer says when to come back.
    let r = signed(
        "b.example",
        "the shared key",
        &hello("b.example"),
        now + 100,
    );
    let resp = reqwest::Client::new()
        .post(format!("{}{LINK}", server.base))
        .header(SERVER_HEADER, r.from)
        .header(TIMESTAMP_HEADER, r.timestamp.to_string())
        .header(SIGNATURE_HEADER, &r.signature)
        .body(r.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    // c is not held back by b.
    let r = signed("c.example", "the shared key", &hello("c.example"), now);
    assert_eq!(send(&server, &r).await.0, 200);
    // Half a second gives b one request back (2/s).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = signed(
        "b.example",
        "the shared key",
        &hello("b.example"),
        now + 200,
    );
    assert_eq!(send(&server, &r).await.0, 200);
}

// --- relaying ----------------------------------------------------------------------------------------------

/// A linked server's environment: its name, the shared key, quick handshakes.
fn linked_env(name: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("FEDERATION_NAME", name),
        ("FEDERATION_KEY", "the shared key"),
        ("FEDERATION_HANDSHAKE_EVERY", "300ms"),
    ]
}

async fn linked_server(name: &'static str) -> Server {
    Server::start_single(tempfile::tempdir().unwrap().keep(), &linked_env(name)).await
}

/// Links `a` and `b` both ways and waits until each sees the other up.
async fn link_both(a: &Server, a_name: &str, b: &Server, b_name: &str) {
    link_add_at(a, b_name, &b.base, None);
    link_add_at(b, a_name, &a.base, None);
    wait_state(a, b_name, "up").await;
    wait_state(b, a_name, "up").await;
}

/// Polls `c` until `done` holds for everything it has read so far (at most 20 s); returns it all.
async fn poll_until(
    server: &Server,
    c: &mut crate::harness::Client,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut all = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done(&all) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never saw what was expected; it saw {all:#?}",
            c.nick
        );
        all.extend(server.poll(c, 1).await);
    }
    all
}

/// `(from, body)` of the messages among `events` sent to `to`.
fn said(events: &[Value], to: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "message" && e["to"] == to)
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").to_owned(),
                e["body"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn users_of_two_linked_servers_share_a_channel() {
    let a = linked_server("a.example").await;
    let b = linked_server("b.example").await;
    link_both(&a, "a.example", &b, "b.example").await;
    let mut alice = a.guest("alice").await;
    let mut bob = b.guest("bob").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#rust" }))
        .await;
    // bob joins once alice's join reached b, so that both are on one channel from the start.
    wait_for(|| async {
        let (_, v) = b
            .get("/api/v1/channels/%23rust/members", Some(&bob.token))
            .await;
        v.to_string().contains("alice@a.example")
    })
    .await;
    b.ok(&bob, json!({ "command": "JOIN", "to": "#rust" }))
        .await;
    let seen = poll_until(&a, &mut alice, |e| {
        e.iter()
            .any(|e| e["type"] == "join" && e["from"] == "bob@b.example")
    })
    .await;
    assert_eq!(of_type_from(&seen, "join", "bob@b.example"), 1);
    a.ok(
        &alice,
        json!({ "command": "PRIVMSG", "to": "#rust", "body": "hello from a" }),
    )
    .await;
    b.ok(
        &bob,
        json!({ "command": "PRIVMSG", "to": "#rust", "body": "hello from b" }),
    )
    .await;
    let on_b = poll_until(&b, &mut bob, |e| said(e, "#rust").len() >= 2).await;
    let on_a = poll_until(&a, &mut alice, |e| said(e, "#rust").len() >= 2).await;
    let mut got_b = said(&on_b, "#rust");
    let mut got_a = said(&on_a, "#rust");
    got_a.sort();
    got_b.sort();
    assert_eq!(
        got_a,
        [
            ("alice".to_owned(), "hello from a".to_owned()),
            ("bob@b.example".to_owned(), "hello from b".to_owned())
        ]
    );
    assert_eq!(
        got_b,
        [
            ("alice@a.example".to_owned(), "hello from a".to_owned()),
            ("bob".to_owned(), "hello from b".to_owned())
        ]
    );
}

fn of_type_from(events: &[Value], kind: &str, from: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["from"] == from)
        .count()
}

async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
