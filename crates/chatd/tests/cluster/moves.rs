//! Clients that move between the nodes of a cluster mid-stream, and what crosses nodes besides the log:
//! typing, presence and uploaded files. Each test talks to the nodes directly (not through the proxy), so
//! that which node serves what is the test's choice.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::harness::{Server, of_type, try_request};

const GUILDS: u64 = 1;
const GUILD_PRESENCES: u64 = 1 << 8;
const GUILD_MESSAGES: u64 = 1 << 9;
const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
const MESSAGE_CONTENT: u64 = 1 << 15;

/// Node A (the writer: NODE_ID 1 starts first) and node B (a follower).
fn nodes(server: &Server) -> (&Server, &Server) {
    let nodes = &server.nodes.as_ref().expect("cluster mode").servers;
    (&nodes[0], &nodes[1])
}

/// Sends `n` messages from `token` to `#c`, alternating the nodes, a few milliseconds apart; returns their
/// bodies in the order they were acknowledged (one sender: the log's order).
fn send_through_both(
    bases: [String; 2],
    token: String,
    n: usize,
) -> tokio::task::JoinHandle<Vec<String>> {
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 0..n {
            let body = format!("m{i}");
            let (s, v) = try_request(
                &http,
                &bases[i % 2],
                Method::POST,
                "/api/v1/messages",
                Some(&token),
                Some(&json!({ "command": "PRIVMSG", "to": "#c", "body": body })),
                Duration::from_secs(10),
            )
            .await
            .expect("send");
            assert_eq!(s, StatusCode::OK, "{body}: {v}");
            sent.push(body);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    })
}

/// Adds the messages among `events` to `got` as (seq, body).
fn record(got: &mut Vec<(u64, String)>, events: &[Value]) {
    for m in of_type(events, "message") {
        got.push((
            m["seq"].as_u64().expect("seq"),
            m["body"].as_str().expect("body").to_owned(),
        ));
    }
}

fn assert_once_in_order(got: &[(u64, String)], sent: &[String]) {
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "seqs ascend: {got:?}"
    );
    let bodies: Vec<&String> = got.iter().map(|(_, b)| b).collect();
    let sent: Vec<&String> = sent.iter().collect();
    assert_eq!(bodies, sent, "every message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_reader_moves_to_the_other_node_mid_stream() {
    let server = Server::start(&[]).await;
    let (a, b) = nodes(&server);
    let mut alice = a.guest("alice").await;
    let bob = b.guest("bob").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#c" })).await;
    b.ok(&bob, json!({ "command": "JOIN", "to": "#c" })).await;
    a.drain(&mut alice).await;

    const N: usize = 60;
    let sender = send_through_both([a.base.clone(), b.base.clone()], bob.token.clone(), N);
    let mut got: Vec<(u64, String)> = Vec::new();
    // Part of the stream on A, while messages keep coming through both nodes...
    while got.len() < 15 {
        let events = a.poll(&mut alice, 5).await;
        record(&mut got, &events);
    }
    let moved_at = alice.cursor;
    // ...then the rest on B, from the cursor A gave.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = b.poll(&mut alice, 1).await;
        record(&mut got, &events);
        if sender.is_finished()
            && b.poll_raw(&alice, Some(alice.cursor), 0, None).await["messages"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream did not end"
        );
    }
    let sent = sender.await.expect("sender");
    assert_eq!(sent.len(), N);
    let on_a = got.iter().filter(|(seq, _)| *seq <= moved_at).count();
    assert!(
        on_a > 0 && on_a < N,
        "the move happened mid-stream ({on_a} of {N} read on A)"
    );
    assert_once_in_order(&got, &sent);
}

/// A raw gateway client: frames as JSON.
struct Gw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Gw {
    async fn connect(node: &Server) -> Gw {
        let url = format!(
            "{}/gateway/?v=10&encoding=json",
            node.base.replacen("http", "ws", 1)
        );
        let (ws, _) = connect_async(url).await.expect("connect");
        let mut gw = Gw { ws };
        assert_eq!(gw.next().await["op"], 10, "hello first");
        gw
    }

    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
                Some(Ok(Message::Close(c))) => panic!("closed: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// Identifies; returns READY.
    async fn identify(&mut self, token: &str, intents: u64) -> Value {
        self.send(json!({"op": 2, "d": {
            "token": format!("Bot {token}"),
            "intents": intents,
            "properties": {"os": "linux", "browser": "test", "device": "test"},
        }}))
        .await;
        let ready = self.next().await;
        assert_eq!(ready["t"], "READY", "{ready}");
        ready
    }

    /// Heartbeats and waits for the ack: everything sent before it has been handled.
    async fn sync(&mut self) {
        self.send(json!({"op": 1, "d": null})).await;
        while self.next().await["op"] != 11 {}
    }

    /// Reads dispatches until one named `t` that `pick` accepts.
    async fn until(&mut self, t: &str, pick: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await;
            if v["t"] == t && pick(&v) {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_session_resumes_on_the_other_node_with_every_event_once() {
    let server = Server::start(&[]).await;
    let (a, b) = nodes(&server);
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "correct horse").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#c" })).await;
    b.ok(&bob, json!({ "command": "JOIN", "to": "#c" })).await;

    let mut gw = Gw::connect(a).await;
    let ready = gw
        .identify(&alice.token, GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT)
        .await;
    let session = ready["d"]["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    gw.sync().await;

    const N: usize = 60;
    let sender = send_through_both([a.base.clone(), b.base.clone()], bob.token.clone(), N);
    let mut got: Vec<(u64, String)> = Vec::new();
    let mut last_s = ready["s"].as_u64().unwrap_or(0);
    // A part of the stream on A...
    while got.len() < 15 {
        let v = gw.next().await;
        if let Some(s) = v["s"].as_u64() {
            last_s = s;
        }
        if v["t"] == "MESSAGE_CREATE" {
            got.push((
                last_s,
                v["d"]["content"].as_str().expect("content").to_owned(),
            ));
        }
    }
    // ...the socket drops while messages keep coming, and the session resumes on B.
    drop(gw);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut gw = Gw::connect(b).await;
    gw.send(json!({"op": 6, "d": {
        "token": format!("Bot {}", alice.token),
        "session_id": session,
        "seq": last_s,
    }}))
    .await;
    let mut resumed = false;
    while got.len() < N {
        let v = gw.next().await;
        assert_ne!(v["t"], "READY", "a resume is not a new session: {v}");
        assert_ne!(v["op"], 9, "the session resumes on the other node: {v}");
        if v["t"] == "RESUMED" {
            resumed = true;
        }
        if v["t"] == "MESSAGE_CREATE" {
            let s = v["s"].as_u64().expect("s");
            got.push((s, v["d"]["content"].as_str().expect("content").to_owned()));
        }
    }
    assert!(resumed, "RESUMED came");
    let sent = sender.await.expect("sender");
    // Nothing more than the N messages arrives.
    gw.sync().await;
    assert_once_in_order(&got, &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_from_one_node_reach_a_gateway_on_the_other() {
    let server = Server::start(&[]).await;
    let (a, b) = nodes(&server);
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "correct horse").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#c" })).await;
    b.ok(&bob, json!({ "command": "JOIN", "to": "#c" })).await;

    let mut on_a = Gw::connect(a).await;
    on_a.identify(
        &alice.token,
        GUILDS | GUILD_PRESENCES | GUILD_MESSAGE_TYPING,
    )
    .await;
    on_a.sync().await;

    // Bob's gateway on B: identifying makes him online, then he goes idle; alice on A sees both.
    let mut on_b = Gw::connect(b).await;
    let ready = on_b.identify(&bob.token, GUILDS).await;
    let bob_id = ready["d"]["user"]["id"].clone();
    let online = on_a
        .until("PRESENCE_UPDATE", |v| v["d"]["user"]["id"] == bob_id)
        .await;
    assert_eq!(online["d"]["status"], "online", "{online}");
    on_b.send(
        json!({"op": 3, "d": {"since": null, "activities": [], "status": "idle", "afk": false}}),
    )
    .await;
    let idle = on_a
        .until("PRESENCE_UPDATE", |v| {
            v["d"]["user"]["id"] == bob_id && v["d"]["status"] != "online"
        })
        .await;
    assert_eq!(idle["d"]["status"], "idle", "{idle}");

    // Typing through B's long-poll API.
    b.ok(&bob, json!({"command": "TYPING", "to": "#c"})).await;
    let typing = on_a
        .until("TYPING_START", |v| v["d"]["user_id"] == bob_id)
        .await;
    assert!(typing["d"]["channel_id"].is_string(), "{typing}");

    // Bob's socket on B closes: he goes offline for alice on A.
    drop(on_b);
    let offline = on_a
        .until("PRESENCE_UPDATE", |v| {
            v["d"]["user"]["id"] == bob_id && v["d"]["status"] == "offline"
        })
        .await;
    assert_eq!(offline["d"]["status"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_through_one_node_downloads_through_the_other() {
    let server = Server::start(&[]).await;
    let (a, b) = nodes(&server);
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "correct horse").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#files" }))
        .await;
    b.ok(&bob, json!({ "command": "JOIN", "to": "#files" }))
        .await;
    let http = reqwest::Client::new();
    let bot = |node: &Server, token: &str, path: &str| {
        http.get(format!("{}/api/v10{path}", node.base))
            .header("authorization", format!("Bot {token}"))
            .send()
    };
    let guilds: Value = bot(a, &alice.token, "/users/@me/guilds")
        .await
        .expect("guilds")
        .json()
        .await
        .expect("json");
    let guild = guilds[0]["id"].as_str().expect("guild");
    let channels: Value = bot(a, &alice.token, &format!("/guilds/{guild}/channels"))
        .await
        .expect("channels")
        .json()
        .await
        .expect("json");
    let channel = channels
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == "files")
        .expect("#files")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let form = reqwest::multipart::Form::new()
        .text("payload_json", json!({"content": "a file"}).to_string())
        .part(
            "files[0]",
            reqwest::multipart::Part::bytes(bytes.clone())
                .file_name("data.bin")
                .mime_str("application/octet-stream")
                .expect("mime"),
        );
    let r = http
        .post(format!("{}/api/v10/channels/{channel}/messages", a.base))
        .header("authorization", format!("Bot {}", alice.token))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::OK);
    let m: Value = r.json().await.expect("json");
    let url = m["attachments"][0]["url"].as_str().expect("url").to_owned();
    let path = url
        .strip_prefix(&a.base)
        .unwrap_or_else(|| panic!("{url} is under the node it was uploaded through"));

    // Bob, on B, finds the message and downloads the file there.
    let r = http
        .get(format!("{}{path}", b.base))
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("bytes").as_ref(), bytes.as_slice());
    let r = bot(
        b,
        &bob.token,
        &format!("/channels/{channel}/messages?limit=5"),
    )
    .await
    .expect("messages");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert!(
        v.as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["attachments"][0]["url"] != Value::Null)),
        "{v}"
    );
}

fn signal(node: &Server, sig: &str) {
    let pid = node.child_pid().expect("a running node");
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_serves_what_another_node_acknowledged() {
    let server = Server::start(&[]).await;
    let (a, b) = nodes(&server);
    let mut alice = a.guest("alice").await;
    let bob = a.guest("bob").await;
    a.ok(&alice, json!({ "command": "JOIN", "to": "#c" })).await;
    a.ok(&bob, json!({ "command": "JOIN", "to": "#c" })).await;
    a.drain(&mut alice).await;

    // B (a follower) is paused while A acknowledges a sign-up and messages, and alice reads them on A: B
    // has applied none of it when it wakes and is asked at once.
    signal(b, "STOP");
    let carol = a.guest("carol").await;
    for i in 0..5 {
        a.ok(
            &bob,
            json!({ "command": "PRIVMSG", "to": "#c", "body": format!("m{i}") }),
        )
        .await;
    }
    let read_on_a = a.drain(&mut alice).await;
    assert_eq!(of_type(&read_on_a, "message").len(), 5);
    signal(b, "CONT");
    let (after_a, carols_state, history) = tokio::join!(
        // A cursor past B's end: B waits until it has applied that far, rather than resetting the reader.
        b.poll_raw(&alice, Some(alice.cursor), 0, None),
        // A token A just gave: B knows it.
        b.get("/api/v1/state", Some(&carol.token)),
        // Messages A acknowledged: B's history has them.
        b.get("/api/v1/history?target=%23c&limit=10", Some(&bob.token)),
    );
    assert_ne!(after_a["reset"], json!(true), "no reset: {after_a}");
    assert_eq!(after_a["cursor"].as_u64(), Some(alice.cursor), "{after_a}");
    assert_eq!(carols_state.0, StatusCode::OK, "{}", carols_state.1);
    assert_eq!(history.0, StatusCode::OK, "{}", history.1);
    let bodies: Vec<&str> = history.1["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
}
