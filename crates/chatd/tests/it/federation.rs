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
    path: &'static str,
    from: &'static str,
    timestamp: u64,
    body: Vec<u8>,
    signature: String,
}

fn signed(from: &'static str, key: &str, body: &Value, timestamp: u64) -> Outgoing {
    signed_to(LINK, from, key, body, timestamp)
}

/// A request to `a.example`'s `path`, signed.
fn signed_to(
    path: &'static str,
    from: &'static str,
    key: &str,
    body: &Value,
    timestamp: u64,
) -> Outgoing {
    let body = serde_json::to_vec(body).unwrap();
    let signature = sign(
        key.as_bytes(),
        &Signed {
            method: "POST",
            path,
            from,
            to: "a.example",
            timestamp,
            body: &body,
        },
    );
    Outgoing {
        path,
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
        .post(format!("{}{}", server.base, r.path))
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
pub(crate) fn link_add_at(server: &Server, name: &str, url: &str, key: Option<&str>) {
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
pub(crate) async fn wait_state(server: &Server, peer: &str, state: &str) -> Value {
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

/// Events of one type from one sender among `events`.
fn from_of<'a>(events: &'a [Value], kind: &str, from: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["from"] == from)
        .collect()
}

/// Two linked servers share `#rust`: joins, messages, a reaction, an edit, a deletion, a topic and modes
/// made on either side reach the other once, as long-poll events there and as gateway dispatches to a
/// Discord client, with the remote users as `nick@server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_two_linked_servers_share_a_channel_on_every_door() {
    let a = linked_server("a.example").await;
    let b = linked_server("b.example").await;
    link_both(&a, "a.example", &b, "b.example").await;
    let mut alice = a.guest("alice").await;
    let mut bob = b.guest("bob").await;
    let carol = b.guest("carol").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#rust" }))
        .await;
    // bob and carol join once alice's join reached b, so that #rust is one channel from the start.
    wait_for(|| async {
        let (_, v) = b
            .get("/api/v1/channels/%23rust/members", Some(&bob.token))
            .await;
        v.to_string().contains("alice@a.example")
    })
    .await;
    b.ok(&bob, json!({ "command": "JOIN", "to": "#rust" }))
        .await;
    b.ok(&carol, json!({ "command": "JOIN", "to": "#rust" }))
        .await;
    let mut gw = crate::gateway::Gw::connect(&b).await;
    gw.identify(&carol.token, crate::gateway::ALL).await;

    let mut on_a = poll_until(&a, &mut alice, |e| {
        !from_of(e, "join", "carol@b.example").is_empty()
    })
    .await;
    a.ok(
        &alice,
        json!({ "command": "PRIVMSG", "to": "#rust", "body": "one" }),
    )
    .await;
    b.ok(
        &bob,
        json!({ "command": "PRIVMSG", "to": "#rust", "body": "two" }),
    )
    .await;
    let mut on_b = poll_until(&b, &mut bob, |e| said(e, "#rust").len() >= 2).await;
    let one_on_b = from_of(&on_b, "message", "alice@a.example")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let two_on_b = from_of(&on_b, "message", "bob")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    on_a.extend(poll_until(&a, &mut alice, |e| said(e, "#rust").len() >= 2).await);
    let one_on_a = from_of(&on_a, "message", "alice")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.ok(
        &bob,
        json!({ "command": "REACT", "ref": one_on_b, "body": "👍" }),
    )
    .await;
    b.ok(&bob, json!({ "command": "DELETE", "ref": two_on_b }))
        .await;
    a.ok(
        &alice,
        json!({ "command": "EDIT", "ref": one_on_a, "body": "one, edited" }),
    )
    .await;
    a.ok(
        &alice,
        json!({ "command": "TOPIC", "to": "#rust", "body": "linked" }),
    )
    .await;
    a.ok(
        &alice,
        json!({ "command": "MODE", "to": "#rust", "body": "+mv", "args": ["bob@b.example"] }),
    )
    .await;
    on_a.extend(
        poll_until(&a, &mut alice, |e| {
            !from_of(e, "react", "bob@b.example").is_empty()
                && !from_of(e, "delete", "bob@b.example").is_empty()
        })
        .await,
    );
    on_b.extend(
        poll_until(&b, &mut bob, |e| {
            !from_of(e, "edit", "alice@a.example").is_empty()
                && !from_of(e, "topic", "alice@a.example").is_empty()
                && !from_of(e, "mode", "alice@a.example").is_empty()
        })
        .await,
    );
    // Anything doubled would have come by now.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    on_a.extend(a.drain(&mut alice).await);
    on_b.extend(b.drain(&mut bob).await);
    for (events, remote, kinds) in [
        (
            &on_a,
            "bob@b.example",
            &["join", "message", "react", "delete"][..],
        ),
        (
            &on_b,
            "alice@a.example",
            &["message", "edit", "topic", "mode"][..],
        ),
    ] {
        for kind in kinds {
            assert_eq!(
                from_of(events, kind, remote).len(),
                1,
                "one {kind} from {remote}: {events:#?}"
            );
        }
    }
    let edit = &from_of(&on_b, "edit", "alice@a.example")[0];
    assert_eq!(edit["ref"], json!(one_on_b), "the edit names b's copy");
    assert_eq!(edit["body"], "one, edited");
    assert_eq!(
        from_of(&on_a, "react", "bob@b.example")[0]["ref"],
        json!(one_on_a)
    );
    // Both ends hold the same channel.
    for (server, c, bob_nick) in [(&a, &alice, "bob@b.example"), (&b, &bob, "bob")] {
        let (_, ch) = server.get("/api/v1/channels/%23rust", Some(&c.token)).await;
        assert_eq!(ch["topic"], "linked", "{ch}");
        let (_, members) = server
            .get("/api/v1/channels/%23rust/members", Some(&c.token))
            .await;
        let text = members.to_string();
        assert!(text.contains(bob_nick), "{members}");
    }

    // A DM to `bob@b.example` reaches bob on b, and his answer to `alice@a.example` reaches alice, once each.
    a.ok(
        &alice,
        json!({ "command": "PRIVMSG", "to": "bob@b.example", "body": "psst, bob" }),
    )
    .await;
    let dm = |events: &[Value], from: &str, body: &str| {
        events
            .iter()
            .filter(|e| e["type"] == "message" && e["from"] == from && e["body"] == body)
            .count()
    };
    let mut seen_b = poll_until(&b, &mut bob, |e| dm(e, "alice@a.example", "psst, bob") > 0).await;
    b.ok(
        &bob,
        json!({ "command": "PRIVMSG", "to": "alice@a.example", "body": "hi alice" }),
    )
    .await;
    let mut seen_a = poll_until(&a, &mut alice, |e| dm(e, "bob@b.example", "hi alice") > 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    seen_b.extend(b.drain(&mut bob).await);
    seen_a.extend(a.drain(&mut alice).await);
    assert_eq!(dm(&seen_b, "alice@a.example", "psst, bob"), 1);
    assert_eq!(dm(&seen_a, "bob@b.example", "hi alice"), 1);

    // carol's Discord client on b: alice is a user of her own, `alice@a.example`, with one id throughout.
    let created = gw.until("MESSAGE_CREATE").await;
    let (author, content) = (&created["d"]["author"], &created["d"]["content"]);
    let (author, content) = if content == "one" {
        (author.clone(), content.clone())
    } else {
        let next = gw.until("MESSAGE_CREATE").await;
        (next["d"]["author"].clone(), next["d"]["content"].clone())
    };
    assert_eq!(content, "one");
    assert_eq!(author["username"], "alice@a.example", "{author}");
    let updated = gw.until("MESSAGE_UPDATE").await;
    assert_eq!(updated["d"]["content"], "one, edited");
    assert_eq!(updated["d"]["author"]["id"], author["id"], "{updated}");
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

/// Starts servers named `names`, links the `pairs` (indexes) both ways, and waits for every link to be up
/// and for every server to know what is behind its peers.
async fn network(names: &[&'static str], pairs: &[(usize, usize)]) -> Vec<Server> {
    let mut servers = Vec::new();
    for name in names {
        servers.push(linked_server(name).await);
    }
    for &(x, y) in pairs {
        link_add_at(&servers[x], names[y], &servers[y].base, None);
        link_add_at(&servers[y], names[x], &servers[x].base, None);
    }
    for &(x, y) in pairs {
        wait_state(&servers[x], names[y], "up").await;
        wait_state(&servers[y], names[x], "up").await;
    }
    servers
}

/// One guest per server, all on `channel`: each joins once the previous joins reached its server.
async fn everyone_joins(
    servers: &[Server],
    names: &[&str],
    channel: &str,
) -> Vec<crate::harness::Client> {
    let mut clients = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let c = server.guest(&format!("u{i}")).await;
        clients.push(c);
    }
    let path = format!("/api/v1/channels/{}/members", channel.replace('#', "%23"));
    for (i, server) in servers.iter().enumerate() {
        let c = &clients[i];
        // Everyone who joined before is seen here first, so that the channel is one from the start.
        for (j, name) in names.iter().enumerate().take(i) {
            let nick = format!("u{j}@{name}");
            wait_for(|| async {
                let (_, v) = server.get(&path, Some(&c.token)).await;
                v.to_string().contains(&nick)
            })
            .await;
        }
        server
            .ok(c, json!({ "command": "JOIN", "to": channel }))
            .await;
    }
    clients
}

/// Every user reads every other user's `count` messages to `channel` exactly once, in the order sent.
async fn everyone_hears_everyone_once(
    servers: &[Server],
    names: &[&str],
    clients: &mut [crate::harness::Client],
    channel: &str,
    count: usize,
    tag: &str,
) {
    let n = servers.len();
    for i in 0..n {
        let mut events = poll_until(&servers[i], &mut clients[i], |e| {
            said(e, channel)
                .iter()
                .filter(|(_, b)| b.starts_with(tag))
                .count()
                >= n * count
        })
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        events.extend(servers[i].drain(&mut clients[i]).await);
        for j in 0..n {
            let from = if i == j {
                format!("u{j}")
            } else {
                format!("u{j}@{}", names[j])
            };
            let got: Vec<String> = said(&events, channel)
                .into_iter()
                .filter(|(f, b)| *f == from && b.starts_with(tag))
                .map(|(_, b)| b)
                .collect();
            let want: Vec<String> = (0..count).map(|k| format!("{tag} {j}.{k}")).collect();
            assert_eq!(got, want, "u{i} on {} hears {from}", names[i]);
        }
    }
}

async fn everyone_says(
    servers: &[Server],
    clients: &[crate::harness::Client],
    channel: &str,
    count: usize,
    tag: &str,
) {
    for k in 0..count {
        for (j, server) in servers.iter().enumerate() {
            server
                .ok(
                    &clients[j],
                    json!({ "command": "PRIVMSG", "to": channel, "body": format!("{tag} {j}.{k}") }),
                )
                .await;
        }
    }
}

/// Three servers in a triangle, and three in a line: every message reaches every user once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triangle_and_a_line_deliver_every_message_once() {
    for (names, pairs) in [
        (
            ["t1.example", "t2.example", "t3.example"],
            &[(0, 1), (1, 2), (2, 0)][..],
        ),
        (
            ["l1.example", "l2.example", "l3.example"],
            &[(0, 1), (1, 2)][..],
        ),
    ] {
        let servers = network(&names, pairs).await;
        let mut clients = everyone_joins(&servers, &names, "#net").await;
        everyone_says(&servers, &clients, "#net", 10, "m").await;
        everyone_hears_everyone_once(&servers, &names, &mut clients, "#net", 10, "m").await;
    }
}

/// In a triangle, one server killed with SIGKILL while the others talk, then one stopped with SIGSTOP (its
/// links cut, its process alive): once back, each reads everything it missed, in order, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_was_down_or_cut_off_gets_everything_it_missed() {
    let names = ["k1.example", "k2.example", "k3.example"];
    let mut servers = network(&names, &[(0, 1), (1, 2), (2, 0)]).await;
    let mut clients = everyone_joins(&servers, &names, "#net").await;
    everyone_says(&servers, &clients, "#net", 3, "before").await;
    everyone_hears_everyone_once(&servers, &names, &mut clients, "#net", 3, "before").await;

    // k2 dies; k1 and k3 talk on; k2 comes back on its port and database.
    let port = servers[1].base.rsplit(':').next().unwrap().to_owned();
    servers[1].kill9().await;
    for k in 0..10 {
        for j in [0, 2] {
            servers[j]
                .ok(
                    &clients[j],
                    json!({ "command": "PRIVMSG", "to": "#net", "body": format!("down {j}.{k}") }),
                )
                .await;
        }
    }
    let mut env = linked_env("k2.example");
    let listen = format!("127.0.0.1:{port}");
    env.push(("LISTEN", &listen));
    servers[1] = Server::start_single(servers[1].dir.clone(), &env).await;
    // k2 says its 10 too, so that every server has 10 of each origin to deliver.
    for k in 0..10 {
        servers[1]
            .ok(
                &clients[1],
                json!({ "command": "PRIVMSG", "to": "#net", "body": format!("down 1.{k}") }),
            )
            .await;
    }
    everyone_hears_everyone_once(&servers, &names, &mut clients, "#net", 10, "down").await;

    // k3 stops (SIGSTOP): its links time out while k1 and k2 talk; then it continues.
    servers[2].signal("STOP");
    for k in 0..10 {
        for j in [0, 1] {
            servers[j]
                .ok(
                    &clients[j],
                    json!({ "command": "PRIVMSG", "to": "#net", "body": format!("cut {j}.{k}") }),
                )
                .await;
        }
    }
    wait_state(&servers[0], "k3.example", "down").await;
    servers[2].signal("CONT");
    for k in 0..10 {
        servers[2]
            .ok(
                &clients[2],
                json!({ "command": "PRIVMSG", "to": "#net", "body": format!("cut 2.{k}") }),
            )
            .await;
    }
    everyone_hears_everyone_once(&servers, &names, &mut clients, "#net", 10, "cut").await;
    let (_, st) = peer_state(&servers[0], "k3.example").await;
    assert_eq!(st["lag_events"], 0, "{st}");
}

const RELAY: &str = "/api/v1/federation/relay";

/// An op of `user` (`nick@server` with id `id`) from `origin`, numbered `n`.
fn op(origin: &str, n: u64, server: &str, id: u64, nick: &str, action: Value) -> Value {
    json!({
        "origin": origin,
        "id": n,
        "at": now_ms(),
        "user": { "server": server, "id": id, "nick": nick },
        "action": action,
    })
}

fn said_to(channel: &str, server: &str, id: u64, body: &str) -> Value {
    json!({ "send": {
        "to": { "channel": channel },
        "message": { "server": server, "id": id },
        "kind": "Message",
        "body": body,
        "meta": null,
        "reply_to": null,
    }})
}

/// A linked peer's batches: taken when its ops are its own users'; refused whole (and nothing changed) when
/// forged, replayed, malformed, speaking for this server's users or for a server it did not say is behind
/// it; an op this server cannot apply (an unknown channel) is reported and changes nothing.
#[tokio::test]
async fn a_peer_speaks_only_for_its_own_users() {
    let a = Server::start_single(
        tempfile::tempdir().unwrap().keep(),
        &[
            ("FEDERATION_NAME", "a.example"),
            ("FEDERATION_KEY", "the shared key"),
        ],
    )
    .await;
    link_add(&a, "b.example", None);
    let alice = a.guest("alice").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#x" })).await;
    a.ok(
        &alice,
        json!({ "command": "PRIVMSG", "to": "#x", "body": "hi" }),
    )
    .await;
    let alice_id = {
        let (_, v) = a.get("/api/v1/state", Some(&alice.token)).await;
        v["user"]["id"].as_str().unwrap().parse::<u64>().unwrap()
    };
    let key = "the shared key";
    let now = now_ms();
    let batch = |ops: Vec<Value>| json!({ "ops": ops });

    // mallory of b joins #x and speaks: taken.
    let good = signed_to(
        RELAY,
        "b.example",
        key,
        &batch(vec![
            op(
                "b.example",
                10,
                "b.example",
                77,
                "mallory",
                json!({ "join": { "channel": "#x", "key": null } }),
            ),
            op(
                "b.example",
                11,
                "b.example",
                77,
                "mallory",
                said_to("#x", "b.example", 500, "hello from b"),
            ),
        ]),
        now,
    );
    let (code, body) = send(&a, &good).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["new"], 2, "{body}");
    // The same batch again, freshly signed: seen, nothing changes.
    let (code, body) = send(
        &a,
        &signed_to(
            RELAY,
            "b.example",
            key,
            &serde_json::from_slice(&good.body).unwrap(),
            now + 1,
        ),
    )
    .await;
    assert_eq!((code, body["seen"].clone()), (200, json!(2)), "{body}");
    let before = snapshot(&a, &alice).await;

    let refused: Vec<(Outgoing, u16, &str)> = vec![
        // The exact request again: a replay.
        (good, 401, "replay"),
        // Signed with another key: forged.
        (
            signed_to(
                RELAY,
                "b.example",
                "not the key",
                &batch(vec![op(
                    "b.example",
                    20,
                    "b.example",
                    77,
                    "mallory",
                    said_to("#x", "b.example", 501, "forged"),
                )]),
                now + 2,
            ),
            401,
            "does not match",
        ),
        // b speaking for alice, a user of this server.
        (
            signed_to(
                RELAY,
                "b.example",
                key,
                &batch(vec![op(
                    "b.example",
                    21,
                    "a.example",
                    alice_id,
                    "alice",
                    said_to("#x", "a.example", 502, "not alice"),
                )]),
                now + 3,
            ),
            403,
            "user of this server",
        ),
        (
            signed_to(
                RELAY,
                "b.example",
                key,
                &batch(vec![op(
                    "a.example",
                    22,
                    "a.example",
                    alice_id,
                    "alice",
                    said_to("#x", "a.example", 503, "not alice"),
                )]),
                now + 4,
            ),
            403,
            "user of this server",
        ),
        // b speaking for a user of c, which b never said is behind it; the whole batch goes, the good op too.
        (
            signed_to(
                RELAY,
                "b.example",
                key,
                &batch(vec![
                    op(
                        "b.example",
                        23,
                        "b.example",
                        77,
                        "mallory",
                        said_to("#x", "b.example", 504, "first"),
                    ),
                    op(
                        "c.example",
                        5,
                        "c.example",
                        9,
                        "carol",
                        said_to("#x", "c.example", 505, "not carol"),
                    ),
                ]),
                now + 5,
            ),
            403,
            "did not say is behind it",
        ),
        // An op whose user lives elsewhere than its origin.
        (
            signed_to(
                RELAY,
                "b.example",
                key,
                &batch(vec![op(
                    "b.example",
                    24,
                    "c.example",
                    9,
                    "carol",
                    said_to("#x", "b.example", 506, "not carol"),
                )]),
                now + 6,
            ),
            403,
            "lives on its origin",
        ),
        // Not a batch.
        (
            signed_to(
                RELAY,
                "b.example",
                key,
                &json!({ "ops": [{ "origin": "b.example" }] }),
                now + 7,
            ),
            400,
            "not {ops",
        ),
    ];
    for (request, want, says) in refused {
        let (code, body) = send(&a, &request).await;
        assert_eq!(code, want, "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(says),
            "{says}: {body}"
        );
    }
    assert_eq!(snapshot(&a, &alice).await, before, "nothing changed");

    // An op for a channel this server does not have: reported, recorded as seen, nothing else.
    let (code, body) = send(
        &a,
        &signed_to(
            RELAY,
            "b.example",
            key,
            &batch(vec![op(
                "b.example",
                30,
                "b.example",
                77,
                "mallory",
                said_to("#nowhere", "b.example", 507, "lost"),
            )]),
            now + 8,
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["refused"][0][1], 30, "{body}");
    assert!(
        body["refused"][0][2].as_str().unwrap().contains("channel"),
        "{body}"
    );
    assert_eq!(snapshot(&a, &alice).await, before, "nothing changed");
}

/// What a refused batch must leave as it was: the users, #x's members and its history.
async fn snapshot(a: &Server, alice: &crate::harness::Client) -> (Value, Value, Vec<String>) {
    let (_, server) = a.get("/api/v1/server", None).await;
    let (_, members) = a
        .get("/api/v1/channels/%23x/members", Some(&alice.token))
        .await;
    let (_, channels) = a.get("/api/v1/channels?all=1", Some(&alice.token)).await;
    let history: Vec<String> = a
        .history_all(&alice.token, "#x")
        .await
        .iter()
        .map(|m| format!("{} {}", m["from"], m["body"]))
        .collect();
    (
        json!([server["users"], server["channels"], channels]),
        members,
        history,
    )
}

/// Two servers that each made `#rust` before they were linked, with their own topic and modes, converge
/// on link to the older channel's topic and modes, with both servers' members, the newer side's op
/// losing `+o` (ARCHITECTURE.md, "Federation": the older channel wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_made_apart_converge_on_link_to_the_older_ones_state() {
    let a = linked_server("a.example").await;
    let b = linked_server("b.example").await;
    let alice = a.guest("alice").await;
    let bob = b.guest("bob").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#rust" }))
        .await;
    a.ok(
        &alice,
        json!({ "command": "TOPIC", "to": "#rust", "body": "made on a first" }),
    )
    .await;
    a.ok(
        &alice,
        json!({ "command": "MODE", "to": "#rust", "body": "+s" }),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    b.ok(&bob, json!({ "command": "JOIN", "to": "#rust" }))
        .await;
    b.ok(
        &bob,
        json!({ "command": "TOPIC", "to": "#rust", "body": "made on b later" }),
    )
    .await;
    b.ok(
        &bob,
        json!({ "command": "MODE", "to": "#rust", "body": "+mk", "args": ["sesame"] }),
    )
    .await;
    link_both(&a, "a.example", &b, "b.example").await;
    async fn view(server: &Server, token: String) -> (Value, Value, Vec<(String, bool)>) {
        let path = "/api/v1/channels/%23rust";
        {
            let (_, ch) = server.get(path, Some(&token)).await;
            let (_, members) = server.get(&format!("{path}/members"), Some(&token)).await;
            let mut members: Vec<(String, bool)> = members["members"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    let nick = m["nick"].as_str().unwrap_or("");
                    let nick = nick.split('@').next().unwrap().to_owned();
                    (nick, m["modes"].as_str().unwrap_or("").contains('o'))
                })
                .collect();
            members.sort();
            (ch["topic"].clone(), ch["modes"].clone(), members)
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let va = view(&a, alice.token.clone()).await;
        let vb = view(&b, bob.token.clone()).await;
        if va == vb && va.2.len() == 2 {
            assert_eq!(va.0, "made on a first", "{va:?}");
            assert_eq!(va.1, "+nst", "{va:?}");
            assert_eq!(
                va.2,
                [("alice".to_owned(), true), ("bob".to_owned(), false)],
                "{va:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence: a {va:?}, b {vb:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The outbox is durable on the sending side too: a server killed with SIGKILL while its peer is stopped
/// (its ops waiting in the outbox) and started again sends them once the peer is back, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_waiting_for_a_stopped_peer_survive_the_senders_kill() {
    let names = ["s1.example", "s2.example"];
    let mut servers = network(&names, &[(0, 1)]).await;
    let mut clients = everyone_joins(&servers, &names, "#net").await;
    everyone_says(&servers, &clients, "#net", 2, "first").await;
    everyone_hears_everyone_once(&servers, &names, &mut clients, "#net", 2, "first").await;

    // s2 stops; s1's user talks on, then s1 is killed before s2 comes back.
    servers[1].signal("STOP");
    for k in 0..10 {
        servers[0]
            .ok(
                &clients[0],
                json!({ "command": "PRIVMSG", "to": "#net", "body": format!("held 0.{k}") }),
            )
            .await;
    }
    let port = servers[0].base.rsplit(':').next().unwrap().to_owned();
    servers[0].kill9().await;
    servers[1].signal("CONT");
    let mut env = linked_env("s1.example");
    let listen = format!("127.0.0.1:{port}");
    env.push(("LISTEN", &listen));
    servers[0] = Server::start_single(servers[0].dir.clone(), &env).await;
    for k in 0..10 {
        servers[1]
            .ok(
                &clients[1],
                json!({ "command": "PRIVMSG", "to": "#net", "body": format!("held 1.{k}") }),
            )
            .await;
    }
    everyone_hears_everyone_once(&servers, &names, &mut clients, "#net", 10, "held").await;
}
