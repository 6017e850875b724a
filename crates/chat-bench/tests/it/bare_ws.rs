//! The `bare-ws` binary as the load generator sees it: Hello, heartbeat ACK, READY, and one message over each
//! send route reaching every connection of its room as MESSAGE_CREATE frames in chatd's `op, s, t, d` order.

use std::process::{Command, Stdio};
use std::time::Duration;

use chat_bench::client::Conn;
use chat_bench::process::ServerProcess;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Opens a gateway connection, checks Hello and the heartbeat ACK, identifies with `token`, checks READY.
async fn identified(addr: std::net::SocketAddr, token: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/gateway/?v=10&encoding=json"))
            .await
            .expect("connect");
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"op":10,"s":null,"t":null,"d":{"heartbeat_interval":41250}}"#
    );
    ws.send(Message::text(r#"{"op":1,"d":null}"#))
        .await
        .expect("heartbeat");
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"op":11,"s":null,"t":null,"d":null}"#
    );
    let identify = json!({"op": 2, "d": {"token": format!("Bot {token}"), "intents": 33281,
        "properties": {"os": "linux", "browser": "test", "device": "test"}}});
    ws.send(Message::text(identify.to_string()))
        .await
        .expect("identify");
    let ready = next_text(&mut ws).await;
    assert!(
        ready.starts_with(r#"{"op":0,"s":0,"t":"READY","d":{"#),
        "{ready}"
    );
    let ready: Value = serde_json::from_str(&ready).expect("json");
    assert_eq!(ready["d"]["v"], 10);
    assert_eq!(ready["d"]["guilds"], json!([]));
    assert!(ready["d"]["session_id"].is_string());
    assert!(ready["d"]["user"]["id"].is_string());
    ws
}

async fn call(conn: &mut Conn, path: &str, token: Option<&str>, body: Value) -> Value {
    let (status, bytes) = conn
        .request(Method::POST, path, token, Some(body.to_string().into()))
        .await
        .expect("request");
    assert!(status.is_success(), "{path}: {status}");
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test]
async fn both_send_routes_reach_every_connection_of_the_room() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bare-ws"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::inherit());
    let server = ServerProcess::spawn("bare-ws", cmd, Duration::from_secs(10)).expect("starts");
    let addr = server.addr();
    let mut http = Conn::connect(addr).await.expect("connect");

    // One member joins the way the load generator sets chatd up (session, then JOIN), two name the room in
    // their token, and one names no room and lands in `all`.
    let login = call(&mut http, "/api/v1/session", None, json!({"nick": "alice"})).await;
    assert_eq!(
        login,
        json!({"token": "alice", "user": "alice", "cursor": 0, "epoch": 1})
    );
    let joined = call(
        &mut http,
        "/api/v1/messages",
        Some("alice"),
        json!({"command": "JOIN", "to": "#room1"}),
    )
    .await;
    assert_eq!(joined, json!({"seq": 0, "id": null}));
    let (status, found) = http
        .request(Method::GET, "/api/v1/channels/%23room1", None, None)
        .await
        .expect("lookup");
    assert!(status.is_success());
    let found: Value = serde_json::from_slice(&found).expect("json");
    assert_eq!(found, json!({"name": "#room1", "id": "room1"}));

    let mut members = Vec::new();
    for token in ["alice", "u2:room1", "u3:room1"] {
        members.push(identified(addr, token).await);
    }
    let mut loner = identified(addr, "u4").await;

    let created = call(
        &mut http,
        "/api/v10/channels/room1/messages",
        Some("whatever"),
        json!({"content": "one"}),
    )
    .await;
    assert_eq!(created["content"], "one");
    assert_eq!(created["channel_id"], "room1");
    let id = created["id"].as_str().expect("id").to_owned();
    let sent = call(
        &mut http,
        "/api/v1/messages",
        Some("alice"),
        json!({"command": "PRIVMSG", "to": "#room1", "body": "two"}),
    )
    .await;
    assert_eq!(sent["seq"], 2);
    assert!(sent["id"].is_string());

    for ws in &mut members {
        for (seq, content) in [(1, "one"), (2, "two")] {
            let text = next_text(ws).await;
            let head = format!(r#"{{"op":0,"s":{seq},"t":"MESSAGE_CREATE","d":{{"#);
            assert!(text.starts_with(&head), "{text}");
            let frame: Value = serde_json::from_str(&text).expect("json");
            assert_eq!(frame["d"]["content"], content);
            assert_eq!(frame["d"]["channel_id"], "room1");
            assert_eq!(frame["d"]["author"]["username"], "bench");
            if seq == 1 {
                assert_eq!(frame["d"]["id"], id.as_str());
            }
        }
    }

    // Nothing of room1 reached the connection in `all`: its first dispatch is the message to `all`.
    call(
        &mut http,
        "/api/v10/channels/all/messages",
        None,
        json!({"content": "three"}),
    )
    .await;
    let text = next_text(&mut loner).await;
    assert!(
        text.starts_with(r#"{"op":0,"s":3,"t":"MESSAGE_CREATE","d":{"#),
        "{text}"
    );
    assert!(text.contains(r#""content":"three""#), "{text}");
}
