//! The Discord gateway frame by frame: raw WebSocket text against the real binary, for what libraries take
//! on trust (field order, `s` as the log's seq, close codes, Resume after a dropped socket or a restart).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::harness::{Client, Server};

const GUILDS: u64 = 1;
const GUILD_MESSAGES: u64 = 1 << 9;
const DIRECT_MESSAGES: u64 = 1 << 12;
const MESSAGE_CONTENT: u64 = 1 << 15;
const GUILD_MODERATION: u64 = 1 << 2;
const GUILD_PRESENCES: u64 = 1 << 8;
pub(crate) const ALL: u64 = GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT;

/// What a read from the socket gave.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A text frame: its raw text and its JSON.
    Text(String, Value),
    /// A close frame's code and reason (1006 when the socket ended without one).
    Close(u16, String),
}

pub(crate) struct Gw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Gw {
    /// Connects to `/gateway` with a query and reads Hello.
    pub(crate) async fn connect_with(server: &Server, query: &str) -> (Gw, Value) {
        let url = format!("{}/gateway{query}", server.base.replacen("http", "ws", 1));
        let (ws, _) = connect_async(url).await.expect("connect");
        let mut gw = Gw { ws };
        let hello = gw.text().await;
        (gw, hello)
    }

    pub(crate) async fn connect(server: &Server) -> Gw {
        let (gw, hello) = Self::connect_with(server, "/?v=10&encoding=json").await;
        assert_eq!(hello["op"], 10, "{hello}");
        gw
    }

    pub(crate) async fn next(&mut self) -> Frame {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let text = t.as_str().to_owned();
                    let v = serde_json::from_str(&text).expect("frames are JSON");
                    return Frame::Text(text, v);
                }
                Some(Ok(Message::Binary(_))) => panic!("the gateway sent a binary frame"),
                Some(Ok(Message::Close(c))) => {
                    return match c {
                        Some(c) => Frame::Close(c.code.into(), c.reason.as_str().to_owned()),
                        None => Frame::Close(1005, String::new()),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Frame::Close(1006, String::new()),
            }
        }
    }

    pub(crate) async fn text(&mut self) -> Value {
        match self.next().await {
            Frame::Text(_, v) => v,
            Frame::Close(code, reason) => panic!("closed {code} {reason}"),
        }
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.send_raw(v.to_string()).await;
    }

    pub(crate) async fn send_raw(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Reads until the connection closes; returns the close code (skipping frames before it).
    pub(crate) async fn close_code(&mut self) -> u16 {
        loop {
            if let Frame::Close(code, reason) = self.next().await {
                if code >= 4000 {
                    assert!(!reason.is_empty(), "close {code} without a reason");
                }
                return code;
            }
        }
    }

    /// Heartbeats and waits for the ack (skipping dispatches): everything the connection was sent before has
    /// been handled, and it is following its stream.
    pub(crate) async fn sync(&mut self) {
        self.send(json!({"op": 1, "d": null})).await;
        loop {
            if self.text().await["op"] == 11 {
                return;
            }
        }
    }

    /// Reads dispatches until one named `t`; returns it.
    pub(crate) async fn until(&mut self, t: &str) -> Value {
        loop {
            let v = self.text().await;
            if v["t"] == t {
                return v;
            }
        }
    }

    pub(crate) async fn identify(&mut self, token: &str, intents: u64) -> Value {
        self.send(json!({
            "op": 2,
            "d": {
                "token": format!("Bot {token}"),
                "intents": intents,
                "properties": {"os": "linux", "browser": "test", "device": "test"},
                "compress": false,
                "large_threshold": 250,
            }
        }))
        .await;
        let ready = self.text().await;
        assert_eq!(ready["t"], "READY", "{ready}");
        ready
    }
}

async fn join(server: &Server, c: &Client, channel: &str) {
    server
        .ok(c, json!({"command": "JOIN", "to": channel}))
        .await;
}

async fn say(server: &Server, c: &Client, to: &str, body: &str) -> u64 {
    server
        .ok(c, json!({"command": "PRIVMSG", "to": to, "body": body}))
        .await
}

/// The MESSAGE_CREATE whose content is `body` (skipping everything else).
async fn message(gw: &mut Gw, body: &str) -> (String, Value) {
    loop {
        if let Frame::Text(text, v) = gw.next().await {
            if v["t"] == "MESSAGE_CREATE" && v["d"]["content"] == body {
                return (text, v);
            }
        } else {
            panic!("closed while waiting for {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_comes_first_and_heartbeats_are_acked_before_identify() {
    let server = Server::start(&[]).await;
    let (mut gw, hello) =
        Gw::connect_with(&server, "?v=10&encoding=json&compress=zlib-stream").await;
    assert_eq!(
        hello,
        json!({"op": 10, "s": null, "t": null, "d": {"heartbeat_interval": 41250}})
    );
    gw.send(json!({"op": 1, "d": null})).await;
    assert_eq!(gw.text().await["op"], 11);
    gw.send(json!({"op": 1, "d": 5})).await;
    assert_eq!(gw.text().await["op"], 11);

    // A client's close is answered with a close frame (libraries wait for it before reconnecting).
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "resuming".into(),
    };
    gw.ws.close(Some(close)).await.expect("close");
    match gw.next().await {
        Frame::Close(code, _) => assert_eq!(code, 4000),
        Frame::Text(text, _) => panic!("a frame after the close: {text}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_gives_ready_and_a_full_guild_create() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    say(&server, &bob, "alice", "psst").await;
    let mut gw = Gw::connect(&server).await;
    let ready = gw.identify(&alice.token, ALL).await;
    assert!(ready["s"].is_u64(), "{ready}");
    let d = &ready["d"];
    assert_eq!(d["v"], 10);
    assert_eq!(d["user"]["username"], "alice");
    assert_eq!(d["user"]["discriminator"], "0");
    for key in [
        "id",
        "global_name",
        "avatar",
        "bot",
        "mfa_enabled",
        "verified",
        "flags",
    ] {
        assert!(d["user"].get(key).is_some(), "user lacks {key}: {d}");
    }
    let guilds = d["guilds"].as_array().expect("guilds");
    assert!(!guilds.is_empty());
    assert!(
        guilds
            .iter()
            .all(|g| g["unavailable"] == true && g["id"].is_string())
    );
    let session = d["session_id"].as_str().expect("session_id");
    assert!(!session.is_empty());
    let port = server.base.rsplit(':').next().expect("port");
    assert_eq!(
        d["resume_gateway_url"],
        format!("ws://127.0.0.1:{port}/gateway")
    );
    assert_eq!(d["application"]["id"], d["user"]["id"]);
    assert!(d["application"]["flags"].is_u64());
    assert_eq!(d["relationships"], json!([]));
    assert_eq!(d["user_settings"], json!({}));
    let dms = d["private_channels"].as_array().expect("private_channels");
    assert_eq!(dms.len(), 1, "{d}");
    assert_eq!(dms[0]["type"], 1);
    assert_eq!(dms[0]["recipients"][0]["username"], "bob");

    let create = gw.text().await;
    assert_eq!(create["t"], "GUILD_CREATE", "{create}");
    assert_eq!(create["s"], ready["s"]);
    let g = &create["d"];
    assert_eq!(g["id"], guilds[0]["id"]);
    let members = g["members"].as_array().expect("members");
    assert_eq!(g["member_count"].as_u64(), Some(members.len() as u64));
    assert!(members.iter().any(|m| m["user"]["username"] == "alice"));
    assert!(
        g["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r["id"] == g["id"])
    );
    for key in [
        "name",
        "owner_id",
        "afk_timeout",
        "features",
        "channels",
        "preferred_locale",
        "verification_level",
    ] {
        assert!(g.get(key).is_some(), "guild lacks {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arrives_as_message_create_with_its_seq_in_discords_field_order() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#test").await;
    join(&server, &bob, "#test").await;
    let mut gw = Gw::connect(&server).await;
    gw.identify(&alice.token, ALL).await;
    let seq = say(&server, &bob, "#test", "hello there").await;
    let (text, v) = message(&mut gw, "hello there").await;
    assert_eq!(v["s"].as_u64(), Some(seq));
    assert!(
        text.starts_with(&format!(
            "{{\"op\":0,\"s\":{seq},\"t\":\"MESSAGE_CREATE\",\"d\":{{"
        )),
        "{text}"
    );
    let d = &v["d"];
    assert_eq!(d["author"]["username"], "bob");
    assert!(d["guild_id"].is_string());
    for key in [
        "id",
        "channel_id",
        "timestamp",
        "edited_timestamp",
        "tts",
        "mention_everyone",
        "mentions",
        "mention_roles",
        "attachments",
        "embeds",
        "components",
        "pinned",
        "type",
        "flags",
    ] {
        assert!(d.get(key).is_some(), "message lacks {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_message_content_guild_messages_are_blank_but_dms_are_not() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#test").await;
    join(&server, &bob, "#test").await;
    let mut gw = Gw::connect(&server).await;
    gw.identify(&alice.token, GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES)
        .await;
    let in_channel = say(&server, &bob, "#test", "guild secret").await;
    let mentioning = say(&server, &bob, "#test", "hey @alice").await;
    let dm = say(&server, &bob, "alice", "dm secret").await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let v = gw.until("MESSAGE_CREATE").await;
        if v["d"]["type"] == 0 {
            seen.push(v);
        }
    }
    assert_eq!(seen[0]["s"].as_u64(), Some(in_channel));
    assert_eq!(seen[0]["d"]["content"], "");
    assert_eq!(seen[1]["s"].as_u64(), Some(mentioning));
    assert_eq!(seen[1]["d"]["content"], "hey @alice");
    assert_eq!(seen[2]["s"].as_u64(), Some(dm));
    assert_eq!(seen[2]["d"]["content"], "dm secret");
    assert!(seen[2]["d"].get("guild_id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;

    // 4001: an unknown op, identified or not.
    let mut gw = Gw::connect(&server).await;
    gw.identify(&alice.token, ALL).await;
    gw.send(json!({"op": 99, "d": null})).await;
    assert_eq!(gw.close_code().await, 4001);
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 42})).await;
    assert_eq!(gw.close_code().await, 4001);

    // 4002: not JSON, no op, and a payload over 4096 bytes.
    let mut gw = Gw::connect(&server).await;
    gw.send_raw("{not json".into()).await;
    assert_eq!(gw.close_code().await, 4002);
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"d": null})).await;
    assert_eq!(gw.close_code().await, 4002);
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 1, "d": "x".repeat(5000)})).await;
    assert_eq!(gw.close_code().await, 4002);

    // 4003: anything but heartbeat, identify and resume before identifying.
    let mut gw = Gw::connect(&server).await;
    gw.send(
        json!({"op": 3, "d": {"status": "idle", "since": null, "activities": [], "afk": false}}),
    )
    .await;
    assert_eq!(gw.close_code().await, 4003);
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}}))
        .await;
    assert_eq!(gw.close_code().await, 4003);

    // 4004: a bad token.
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 2, "d": {"token": "Bot nope", "intents": 513, "properties": {}}}))
        .await;
    assert_eq!(gw.close_code().await, 4004);

    // 4005: identifying twice.
    let mut gw = Gw::connect(&server).await;
    gw.identify(&alice.token, ALL).await;
    gw.send(json!({"op": 2, "d": {"token": alice.token, "intents": 513, "properties": {}}}))
        .await;
    assert_eq!(gw.close_code().await, 4005);

    // 4008: more than 120 payloads in a minute.
    let mut gw = Gw::connect(&server).await;
    for _ in 0..121 {
        gw.send(json!({"op": 1, "d": null})).await;
    }
    assert_eq!(gw.close_code().await, 4008);

    // 4010: a shard this server does not serve.
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 2, "d": {"token": alice.token, "intents": 513, "shard": [1, 2], "properties": {}}}))
        .await;
    assert_eq!(gw.close_code().await, 4010);

    // 4012: an API version other than 9 or 10.
    let (mut gw, hello) = Gw::connect_with(&server, "?v=6&encoding=json").await;
    assert_eq!(hello["op"], 10);
    assert_eq!(gw.close_code().await, 4012);

    // 4013: intents Discord does not define.
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 2, "d": {"token": alice.token, "intents": 1u64 << 22, "properties": {}}}))
        .await;
    assert_eq!(gw.close_code().await, 4013);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_an_unknown_or_foreign_session_is_refused_with_op_9() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let mut gw = Gw::connect(&server).await;
    let ready = gw.identify(&alice.token, ALL).await;
    let session = ready["d"]["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    let seq = ready["s"].as_u64().expect("s");
    drop(gw);

    let (client, rest) = session.split_once('-').expect("client-epoch-intents");
    let (epoch, intents) = rest.split_once('-').expect("epoch-intents");
    let other_epoch = format!(
        "{client}-{}-{intents}",
        epoch.parse::<u64>().expect("epoch") ^ 1
    );
    for bad in ["nonsense", "1-2-3", other_epoch.as_str()] {
        let mut gw = Gw::connect(&server).await;
        gw.send(json!({"op": 6, "d": {"token": alice.token, "session_id": bad, "seq": seq}}))
            .await;
        let v = gw.text().await;
        assert_eq!(
            v,
            json!({"op": 9, "s": null, "t": null, "d": false}),
            "{bad}"
        );
        // The connection may identify afresh after an Invalid Session.
        gw.identify(&alice.token, ALL).await;
    }

    // A seq ahead of the log cannot be resumed either.
    let mut gw = Gw::connect(&server).await;
    gw.send(
        json!({"op": 6, "d": {"token": alice.token, "session_id": session, "seq": seq + 1000}}),
    )
    .await;
    assert_eq!(gw.text().await["op"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_dropped_socket_replays_exactly_the_missed_events() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#test").await;
    join(&server, &bob, "#test").await;
    let mut gw = Gw::connect(&server).await;
    let ready = gw.identify(&alice.token, ALL).await;
    let session = ready["d"]["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    say(&server, &bob, "#test", "before").await;
    let (_, seen) = message(&mut gw, "before").await;
    let last = seen["s"].as_u64().expect("s");
    drop(gw);

    let first = say(&server, &bob, "#test", "missed one").await;
    let second = say(&server, &bob, "#test", "missed two").await;

    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 6, "d": {"token": format!("Bot {}", alice.token), "session_id": session, "seq": last}}))
        .await;
    let mut replayed = Vec::new();
    let resumed = loop {
        let v = gw.text().await;
        if v["t"] == "RESUMED" {
            break v;
        }
        replayed.push(v);
    };
    let got: Vec<(u64, String)> = replayed
        .iter()
        .map(|v| {
            (
                v["s"].as_u64().expect("s"),
                format!("{} {}", v["t"].as_str().unwrap_or(""), v["d"]["content"]),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (first, "MESSAGE_CREATE \"missed one\"".to_owned()),
            (second, "MESSAGE_CREATE \"missed two\"".to_owned()),
        ]
    );
    assert_eq!(resumed["d"], json!({}));
    assert!(resumed["s"].as_u64().expect("s") >= second);

    // Live again after the replay.
    let seq = say(&server, &bob, "#test", "live").await;
    let (_, v) = message(&mut gw, "live").await;
    assert_eq!(v["s"].as_u64(), Some(seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_across_a_server_restart_and_shutdown_says_reconnect() {
    // Not in a cluster: a whole-server restart is one process's; moving between nodes is `moves`'s.
    if crate::two_nodes::single_node_only(
        "a_session_resumes_across_a_server_restart_and_shutdown_says_reconnect",
        "restarts the server's one process (SIGTERM, then a new process)",
    ) {
        return;
    }
    let mut server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#test").await;
    join(&server, &bob, "#test").await;
    let mut gw = Gw::connect(&server).await;
    let ready = gw.identify(&alice.token, ALL).await;
    let session = ready["d"]["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    let last = ready["s"].as_u64().expect("s");

    // A graceful shutdown: Reconnect (op 7), then a close libraries resume on.
    let shutdown = tokio::spawn(async move {
        let _ = server.terminate().await;
        server
    });
    // (GUILD_CREATE and other dispatches may come first.)
    loop {
        let v = gw.text().await;
        if v["op"] == 7 {
            assert_eq!(v, json!({"op": 7, "s": null, "t": null, "d": null}));
            break;
        }
    }
    assert_eq!(gw.close_code().await, 4000);
    let mut server = shutdown.await.expect("terminate");
    server.restart().await;

    let seq = say(&server, &bob, "#test", "after restart").await;
    let mut gw = Gw::connect(&server).await;
    gw.send(json!({"op": 6, "d": {"token": alice.token, "session_id": session, "seq": last}}))
        .await;
    let mut got = Vec::new();
    loop {
        let v = gw.text().await;
        if v["t"] == "RESUMED" {
            break;
        }
        got.push(v);
    }
    assert!(
        got.iter()
            .any(|v| v["s"].as_u64() == Some(seq) && v["d"]["content"] == "after restart"),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_guild_members_answers_one_chunk() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    server.register("bob", "correct horse").await;
    let mut gw = Gw::connect(&server).await;
    gw.identify(&alice.token, ALL).await;
    let guild = gw.until("GUILD_CREATE").await;
    let id: u64 = guild["d"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("snowflake");
    // discord.py sends the guild id as a number.
    gw.send(json!({"op": 8, "d": {"guild_id": id, "query": "", "limit": 0, "nonce": "n1"}}))
        .await;
    let chunk = gw.until("GUILD_MEMBERS_CHUNK").await;
    let d = &chunk["d"];
    assert_eq!(d["guild_id"], id.to_string());
    assert_eq!(d["chunk_index"], 0);
    assert_eq!(d["chunk_count"], 1);
    assert_eq!(d["nonce"], "n1");
    assert!(chunk["s"].is_u64());
    let names: Vec<&str> = d["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user"]["username"].as_str())
        .collect();
    assert!(
        names.contains(&"alice") && names.contains(&"bob"),
        "{names:?}"
    );
    gw.send(json!({"op": 8, "d": {"guild_id": id.to_string(), "query": "bo", "limit": 10}}))
        .await;
    let chunk = gw.until("GUILD_MEMBERS_CHUNK").await;
    let members = chunk["d"]["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["user"]["username"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reactions_typing_and_deletions_arrive_as_their_dispatches() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#test").await;
    join(&server, &bob, "#test").await;
    let mut gw = Gw::connect(&server).await;
    gw.identify(&alice.token, ALL | 1 << 10 | 1 << 11).await;
    let (_, v) = server
        .cmd(
            &bob,
            json!({"command": "PRIVMSG", "to": "#test", "body": "first"}),
        )
        .await;
    let id = v["id"].as_str().expect("id").to_owned();
    let (_, created) = message(&mut gw, "first").await;
    let guild = created["d"]["guild_id"].clone();
    let channel = created["d"]["channel_id"].clone();

    let edit = server
        .ok(
            &bob,
            json!({"command": "EDIT", "ref": id, "body": "second"}),
        )
        .await;
    let v = gw.until("MESSAGE_UPDATE").await;
    assert_eq!(v["s"].as_u64(), Some(edit));
    assert_eq!(v["d"]["id"], id);
    assert_eq!(v["d"]["content"], "second");
    assert_eq!(v["d"]["author"]["username"], "bob");
    assert!(v["d"]["edited_timestamp"].is_string());
    assert_eq!(v["d"]["guild_id"], guild);

    let react = server
        .ok(&bob, json!({"command": "REACT", "ref": id, "body": "👍"}))
        .await;
    let v = gw.until("MESSAGE_REACTION_ADD").await;
    assert_eq!(v["s"].as_u64(), Some(react));
    assert_eq!(v["d"]["message_id"], id);
    assert_eq!(v["d"]["channel_id"], channel);
    assert_eq!(v["d"]["guild_id"], guild);
    assert_eq!(v["d"]["emoji"], json!({"id": null, "name": "👍"}));
    assert_eq!(v["d"]["type"], 0);
    assert_eq!(v["d"]["burst"], false);

    server
        .ok(&bob, json!({"command": "TYPING", "to": "#test"}))
        .await;
    let v = gw.until("TYPING_START").await;
    assert_eq!(v["d"]["channel_id"], channel);
    assert!(v["d"]["timestamp"].is_u64());
    assert!(
        v["s"].as_u64().expect("s") >= react,
        "typing must not move s back"
    );

    let delete = server
        .ok(&bob, json!({"command": "DELETE", "ref": id}))
        .await;
    let v = gw.until("MESSAGE_DELETE").await;
    assert_eq!(v["s"].as_u64(), Some(delete));
    assert_eq!(
        v["d"],
        json!({"id": id, "channel_id": channel, "guild_id": guild})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_channel_leaves_and_rejoins_outsiders_channel_lists() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#hush").await;
    let mut b = Gw::connect(&server).await;
    let ready = b.identify(&bob.token, ALL).await;
    assert!(ready["d"]["guilds"].is_array());
    let guild = b.until("GUILD_CREATE").await;
    let hush = guild["d"]["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == "hush")
        .expect("#hush is listed to bob")["id"]
        .clone();

    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#hush", "body": "+s"}),
        )
        .await;
    let v = b.until("CHANNEL_DELETE").await;
    assert_eq!(v["d"]["id"], hush, "{v}");
    // A gateway connection made now does not list it either.
    let mut late = Gw::connect(&server).await;
    late.identify(&bob.token, ALL).await;
    let guild = late.until("GUILD_CREATE").await;
    assert!(
        !guild["d"]["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .any(|c| c["id"] == hush),
        "{guild}"
    );

    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#hush", "body": "-s"}),
        )
        .await;
    let v = b.until("CHANNEL_CREATE").await;
    assert_eq!(v["d"]["id"], hush, "{v}");
    assert_eq!(v["d"]["name"], "hush", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_made_before_a_restart_is_deleted_with_a_dispatch() {
    // Not in a cluster: a whole-server restart is one process's; moving between nodes is `moves`'s.
    if crate::two_nodes::single_node_only(
        "an_invite_made_before_a_restart_is_deleted_with_a_dispatch",
        "restarts the server's one process",
    ) {
        return;
    }
    use reqwest::Method;
    const GUILD_INVITES: u64 = 1 << 6;
    let mut server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let g = rest(
        &server,
        Method::POST,
        "/guilds",
        &alice.token,
        json!({"name": "Club"}),
    )
    .await;
    let gid = g["id"].as_str().expect("guild id").to_owned();
    let (_, channels) = server
        .get(
            &format!("/api/v10/guilds/{gid}/channels"),
            Some(&alice.token),
        )
        .await;
    let channel = channels[0]["id"].as_str().expect("a channel").to_owned();
    let invite = rest(
        &server,
        Method::POST,
        &format!("/channels/{channel}/invites"),
        &alice.token,
        json!({}),
    )
    .await;
    let code = invite["code"].as_str().expect("code").to_owned();

    server.restart().await;
    let mut a = Gw::connect(&server).await;
    a.identify(&alice.token, ALL | GUILD_INVITES).await;
    rest(
        &server,
        Method::DELETE,
        &format!("/invites/{code}"),
        &alice.token,
        json!({}),
    )
    .await;
    let v = a.until("INVITE_DELETE").await;
    assert_eq!(
        v["d"],
        json!({"channel_id": channel, "code": code, "guild_id": gid})
    );
}

/// Identify with our `chatd_irc` extension.
async fn identify_irc(gw: &mut Gw, token: &str) -> Value {
    gw.send(json!({
        "op": 2,
        "d": {
            "token": token,
            "intents": ALL,
            "properties": {"os": "linux", "browser": "test", "device": "test"},
            "chatd_irc": true,
        }
    }))
    .await;
    let ready = gw.text().await;
    assert_eq!(ready["t"], "READY", "{ready}");
    ready
}

/// The next MESSAGE_CREATE (skipping other dispatches).
async fn next_message(gw: &mut Gw) -> Value {
    gw.until("MESSAGE_CREATE").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_notices_reach_connections_that_ask_for_them_with_their_kind() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    let carol = server.register("carol", "correct horse").await;
    join(&server, &alice, "#irc").await;
    join(&server, &bob, "#irc").await;
    join(&server, &carol, "#elsewhere").await;
    join(&server, &bob, "#elsewhere").await;
    let mut irc = Gw::connect(&server).await;
    let ready = identify_irc(&mut irc, &alice.token).await;
    let session = ready["d"]["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    let mut plain = Gw::connect(&server).await;
    plain.identify(&alice.token, ALL).await;
    let mut outside = Gw::connect(&server).await;
    identify_irc(&mut outside, &carol.token).await;
    irc.sync().await;
    plain.sync().await;
    outside.sync().await;

    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#irc", "body": "+o", "args": ["bob"]}),
        )
        .await;
    server
        .ok(
            &alice,
            json!({"command": "TOPIC", "to": "#irc", "body": "tea & <b>cake</b>"}),
        )
        .await;
    server
        .ok(
            &bob,
            json!({"command": "PART", "to": "#irc", "body": "off to lunch"}),
        )
        .await;
    server
        .ok(&bob, json!({"command": "NICK", "body": "robert"}))
        .await;
    say(&server, &alice, "#irc", "after").await;

    let mut kinds = Vec::new();
    let last = loop {
        let m = next_message(&mut irc).await;
        if m["d"]["content"] == "after" {
            assert!(m["d"].get("chatd_kind").is_none(), "{m}");
            break m["s"].as_u64().expect("s");
        }
        kinds.push((
            m["d"]["chatd_kind"].as_str().unwrap_or("").to_owned(),
            m["d"]["content"].as_str().unwrap_or("").to_owned(),
            m["d"]["author"]["username"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ));
    };
    let owned = |k: &str, c: &str, a: &str| (k.to_owned(), c.to_owned(), a.to_owned());
    assert_eq!(
        kinds,
        [
            owned("mode", "+o bob", "alice"),
            owned("topic", "tea & <b>cake</b>", "alice"),
            owned("part", "off to lunch", "bob"),
        ],
        "bob's nick notice is in #elsewhere, which alice is not in"
    );
    // Without the extension, a connection gets the message and none of the notices.
    let m = next_message(&mut plain).await;
    assert_eq!(m["d"]["content"], "after", "{m}");
    // Carol shares #elsewhere with bob: she hears his nick change there, and nothing of #irc.
    let m = next_message(&mut outside).await;
    assert_eq!(
        (&m["d"]["chatd_kind"], &m["d"]["content"]),
        (&json!("nick"), &json!("robert")),
        "{m}"
    );

    // History shows the same lines with their kind; a Resume keeps the extension.
    let (_, history) = server
        .get(
            &format!(
                "/api/v10/channels/{}/messages?limit=10",
                m["d"]["channel_id"].as_str().unwrap()
            ),
            Some(&bob.token),
        )
        .await;
    assert!(
        history
            .as_array()
            .expect("a page")
            .iter()
            .any(|m| m["chatd_kind"] == "nick"),
        "{history}"
    );
    drop(irc);
    let mut again = Gw::connect(&server).await;
    again
        .send(json!({"op": 6, "d": {"token": alice.token, "session_id": session, "seq": last}}))
        .await;
    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#irc", "body": "-t"}),
        )
        .await;
    let m = next_message(&mut again).await;
    assert_eq!(m["d"]["chatd_kind"], "mode", "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_carries_read_states() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#r").await;
    join(&server, &bob, "#r").await;
    say(&server, &bob, "#r", "one").await;
    let (_, first) = server
        .post(
            "/api/v1/messages",
            Some(&bob.token),
            json!({"command": "PRIVMSG", "to": "#r", "body": "@alice hey"}),
        )
        .await;
    let mention = first["id"].as_str().expect("id").to_owned();
    say(&server, &bob, "#r", "two").await;
    let mut gw = Gw::connect(&server).await;
    let ready = gw.identify(&alice.token, ALL).await;
    let entries = ready["d"]["read_state"]["entries"]
        .as_array()
        .expect("entries")
        .clone();
    let entry = entries
        .iter()
        .find(|e| e["mention_count"].as_u64() == Some(1));
    assert!(entry.is_some(), "alice has one unread mention: {entries:?}");
    let channel = entry.unwrap()["id"].as_str().unwrap().to_owned();
    server
        .ok(
            &alice,
            json!({"command": "READ", "to": "#r", "ref": mention}),
        )
        .await;
    let mut gw = Gw::connect(&server).await;
    let ready = gw.identify(&alice.token, ALL).await;
    let entry = ready["d"]["read_state"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["id"] == json!(channel))
        .cloned()
        .expect("the channel's entry");
    assert_eq!(entry["last_message_id"], json!(mention), "{entry}");
    assert_eq!(entry["mention_count"], 0, "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_display_name_reaches_the_users_peers() {
    use reqwest::Method;
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#p").await;
    join(&server, &bob, "#p").await;
    let mut a = Gw::connect(&server).await;
    a.identify(&alice.token, ALL | (1 << 1)).await;
    a.sync().await;
    rest(
        &server,
        Method::PATCH,
        "/users/@me",
        &bob.token,
        json!({"global_name": "Bobby"}),
    )
    .await;
    let v = a.until("GUILD_MEMBER_UPDATE").await;
    assert_eq!(v["d"]["user"]["username"], "bob", "{v}");
    assert_eq!(v["d"]["user"]["global_name"], "Bobby", "{v}");
}

/// A REST call that must succeed; returns its JSON (null for 204).
async fn rest(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Value,
) -> Value {
    let (s, _, v) = server
        .raw(
            method.clone(),
            &format!("/api/v10{path}"),
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert!(s.is_success(), "{method} {path}: {s} {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guilds_life_reaches_its_members_gateways() {
    use reqwest::Method;
    const GUILD_MEMBERS: u64 = 1 << 1;
    const GUILD_INVITES: u64 = 1 << 6;
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    let mut a = Gw::connect(&server).await;
    a.identify(
        &alice.token,
        ALL | GUILD_MEMBERS | GUILD_INVITES | GUILD_MODERATION,
    )
    .await;
    let mut b = Gw::connect(&server).await;
    b.identify(&bob.token, ALL).await;

    let g = rest(
        &server,
        Method::POST,
        "/guilds",
        &alice.token,
        json!({"name": "Club"}),
    )
    .await;
    let gid = g["id"].as_str().expect("guild id").to_owned();
    let created = loop {
        let v = a.until("GUILD_CREATE").await;
        if v["d"]["id"] == gid {
            break v;
        }
    };
    let members = created["d"]["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(created["d"]["member_count"], 1);
    let channel = created["d"]["channels"][0]["id"]
        .as_str()
        .expect("a channel")
        .to_owned();

    rest(
        &server,
        Method::POST,
        &format!("/guilds/{gid}/roles"),
        &alice.token,
        json!({"name": "mods"}),
    )
    .await;
    let v = a.until("GUILD_ROLE_CREATE").await;
    assert_eq!(v["d"]["guild_id"], gid);
    assert_eq!(v["d"]["role"]["name"], "mods");

    let invite = rest(
        &server,
        Method::POST,
        &format!("/channels/{channel}/invites"),
        &alice.token,
        json!({}),
    )
    .await;
    let code = invite["code"].as_str().expect("code").to_owned();
    let v = a.until("INVITE_CREATE").await;
    assert_eq!(v["d"]["code"], code);
    assert_eq!(v["d"]["channel_id"], channel);

    rest(
        &server,
        Method::POST,
        &format!("/invites/{code}"),
        &bob.token,
        json!({}),
    )
    .await;
    let v = loop {
        let v = b.until("GUILD_CREATE").await;
        if v["d"]["id"] == gid {
            break v;
        }
    };
    assert_eq!(v["d"]["member_count"], 2);
    assert_eq!(v["d"]["members"].as_array().map(Vec::len), Some(2));
    let v = a.until("GUILD_MEMBER_ADD").await;
    assert_eq!(v["d"]["guild_id"], gid);
    assert_eq!(v["d"]["user"]["username"], "bob");

    rest(
        &server,
        Method::DELETE,
        &format!("/invites/{code}"),
        &alice.token,
        json!({}),
    )
    .await;
    let v = a.until("INVITE_DELETE").await;
    assert_eq!(
        v["d"],
        json!({"channel_id": channel, "code": code, "guild_id": gid})
    );

    rest(
        &server,
        Method::PATCH,
        &format!("/guilds/{gid}"),
        &alice.token,
        json!({"name": "Club Two"}),
    )
    .await;
    let v = b.until("GUILD_UPDATE").await;
    assert_eq!(v["d"]["name"], "Club Two");

    rest(
        &server,
        Method::DELETE,
        &format!("/users/@me/guilds/{gid}"),
        &bob.token,
        json!({}),
    )
    .await;
    let v = b.until("GUILD_DELETE").await;
    assert_eq!(v["d"]["id"], gid);
    let v = a.until("GUILD_MEMBER_REMOVE").await;
    assert_eq!(v["d"]["user"]["username"], "bob");
    let bob_id = v["d"]["user"]["id"].as_str().expect("bob's id").to_owned();

    // Bans reach the guild's moderators as GUILD_BAN_ADD and GUILD_BAN_REMOVE.
    let ban = format!("/guilds/{gid}/bans/{bob_id}");
    rest(&server, Method::PUT, &ban, &alice.token, json!({})).await;
    let v = a.until("GUILD_BAN_ADD").await;
    assert_eq!(v["d"]["guild_id"], gid);
    assert_eq!(v["d"]["user"]["id"], bob_id);
    rest(&server, Method::DELETE, &ban, &alice.token, json!({})).await;
    let v = a.until("GUILD_BAN_REMOVE").await;
    assert_eq!(v["d"]["user"]["username"], "bob");

    rest(
        &server,
        Method::DELETE,
        &format!("/guilds/{gid}"),
        &alice.token,
        json!({}),
    )
    .await;
    let v = a.until("GUILD_DELETE").await;
    assert_eq!(v["d"]["id"], gid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presences_show_in_guild_create_and_follow_presence_updates() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    // Presence goes to the peers one shares a channel with.
    join(&server, &alice, "#test").await;
    join(&server, &bob, "#test").await;
    let mut b = Gw::connect(&server).await;
    let ready = b.identify(&bob.token, ALL).await;
    let bob_id = ready["d"]["user"]["id"].clone();
    // Bob is connected (online) once his identify is handled.
    b.sync().await;

    let mut a = Gw::connect(&server).await;
    a.identify(&alice.token, GUILDS | GUILD_PRESENCES).await;
    let guild = a.until("GUILD_CREATE").await;
    // Presence is live-only: alice must be following her stream when it changes.
    a.sync().await;
    let presences = guild["d"]["presences"].as_array().expect("presences");
    assert!(
        presences
            .iter()
            .any(|p| p["user"]["id"] == bob_id && p["status"] == "online"),
        "{presences:?}"
    );

    b.send(json!({"op": 3, "d": {"since": null, "activities": [], "status": "dnd", "afk": false}}))
        .await;
    let update = loop {
        let v = a.until("PRESENCE_UPDATE").await;
        if v["d"]["user"]["id"] == bob_id && v["d"]["status"] == "dnd" {
            break v;
        }
    };
    assert_eq!(update["d"]["guild_id"], guild["d"]["id"]);
}

/// A guild with more members than the identify's `large_threshold` comes `large`, with only the viewer's own
/// member and the true `member_count`, as on Discord; the rest is there through Request Guild Members. Below
/// the threshold every member is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_guilds_leave_their_members_to_chunks() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    for i in 0..55 {
        server.guest(&format!("g{i}")).await;
    }
    let identify = |threshold: u64| {
        json!({
            "op": 2,
            "d": {
                "token": format!("Bot {}", alice.token),
                "intents": ALL,
                "properties": {"os": "linux", "browser": "test", "device": "test"},
                "large_threshold": threshold,
            }
        })
    };
    // 56 users and the server's own: over a threshold of 50, under one of 250.
    let mut gw = Gw::connect(&server).await;
    gw.send(identify(50)).await;
    let create = gw.until("GUILD_CREATE").await;
    let d = &create["d"];
    assert_eq!(d["large"], true, "{d}");
    let count = d["member_count"].as_u64().expect("member_count");
    assert!(count > 56, "{count}");
    let members = d["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["user"]["username"], "alice");
    gw.send(json!({"op": 8, "d": {"guild_id": d["id"], "query": "", "limit": 0}}))
        .await;
    let chunk = gw.until("GUILD_MEMBERS_CHUNK").await;
    let chunked = chunk["d"]["members"].as_array().map(Vec::len);
    assert_eq!(chunked.and_then(|n| u64::try_from(n).ok()), Some(count));

    let mut gw = Gw::connect(&server).await;
    gw.send(identify(250)).await;
    let create = gw.until("GUILD_CREATE").await;
    assert_eq!(create["d"]["large"], false);
    let listed = create["d"]["members"].as_array().map(Vec::len);
    assert_eq!(listed.and_then(|n| u64::try_from(n).ok()), Some(count));
}

/// A connection that stops heartbeating is closed as a zombie with 4000 (which libraries resume on) after
/// 1.5 heartbeat intervals; one that keeps heartbeating stays open. The interval comes from
/// GATEWAY_HEARTBEAT_INTERVAL, shortened here so the test takes a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_its_heartbeat_deadline() {
    let server = Server::start(&[("GATEWAY_HEARTBEAT_INTERVAL", "300ms")]).await;
    let alice = server.register("alice", "correct horse").await;
    let (mut silent, hello) = Gw::connect_with(&server, "/?v=10&encoding=json").await;
    assert_eq!(hello["d"]["heartbeat_interval"], 300, "{hello}");
    silent.identify(&alice.token, ALL).await;
    let mut alive = Gw::connect(&server).await;
    alive.identify(&alice.token, ALL).await;
    let started = std::time::Instant::now();
    let code = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            tokio::select! {
                code = silent.close_code() => return code,
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => alive.sync().await,
            }
        }
    })
    .await
    .expect("the silent connection is closed within 10 s");
    assert_eq!(code, 4000);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "closed before 1.5 intervals: {:?}",
        started.elapsed()
    );
    // The heartbeating one is still served.
    alive.sync().await;
}

/// A connection that heartbeats but never identifies is closed with 4003 (Not authenticated) once the
/// identify deadline passes (two heartbeat intervals, at least 10 s), while an identified connection beside it
/// stays open; a guild MESSAGE_CREATE carries its author's `member`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unidentified_connection_is_closed_with_4003_after_the_identify_deadline() {
    let server = Server::start(&[("GATEWAY_HEARTBEAT_INTERVAL", "300ms")]).await;
    let alice = server.register("alice", "correct horse").await;
    join(&server, &alice, "#test").await;
    let mut anonymous = Gw::connect(&server).await;
    let mut identified = Gw::connect(&server).await;
    identified.identify(&alice.token, ALL).await;
    let started = std::time::Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            // Heartbeats before Identify are acked, and keep the heartbeat deadline away.
            anonymous.send(json!({"op": 1, "d": null})).await;
            loop {
                match anonymous.next().await {
                    Frame::Text(_, v) if v["op"] == 11 => break,
                    Frame::Text(..) => {}
                    Frame::Close(code, reason) => {
                        if code >= 4000 {
                            assert!(!reason.is_empty(), "close {code} without a reason");
                        }
                        return code;
                    }
                }
            }
            identified.sync().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the unidentified connection is closed within 30 s");
    assert_eq!(code, 4003);
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed before the identify deadline: {:?}",
        started.elapsed()
    );
    // The identified one is still served, and a guild message names its author's member.
    identified.sync().await;
    say(&server, &alice, "#test", "still here").await;
    let (_, v) = message(&mut identified, "still here").await;
    let member = &v["d"]["member"];
    assert!(member["roles"].is_array(), "{v}");
    assert!(
        member["joined_at"].as_str().is_some_and(|t| t.len() >= 25),
        "{v}"
    );
}

/// The network's channels as a GUILD_CREATE lists them: `(name, topic, last_message_id)` by name.
fn listed(guild: &Value) -> Vec<(String, Value, Value)> {
    guild["d"]["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("a name").to_owned();
            (name, c["topic"].clone(), c["last_message_id"].clone())
        })
        .collect()
}

/// A fresh connection's network GUILD_CREATE for `token`.
async fn network_guild(server: &Server, token: &str) -> Value {
    let mut gw = Gw::connect(server).await;
    gw.identify(token, ALL).await;
    gw.until("GUILD_CREATE").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guild_create_channel_lists_follow_every_change_after_the_cache_is_warm() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#one").await;
    join(&server, &alice, "#two").await;
    // Warm: both users' lists have been made once.
    let names = |g: &Value| listed(g).into_iter().map(|(n, ..)| n).collect::<Vec<_>>();
    assert_eq!(
        names(&network_guild(&server, &alice.token).await),
        ["one", "two"]
    );
    let before = network_guild(&server, &bob.token).await;
    assert_eq!(names(&before), ["one", "two"]);

    // A new channel, a topic and a message show on the next connection.
    join(&server, &bob, "#three").await;
    server
        .ok(
            &alice,
            json!({"command": "TOPIC", "to": "#one", "body": "a \"new\" topic"}),
        )
        .await;
    say(&server, &alice, "#two", "hello").await;
    let after = network_guild(&server, &bob.token).await;
    let list = listed(&after);
    assert_eq!(list.len(), 3, "{after}");
    assert_eq!(list[0].1, json!("a \"new\" topic"), "{after}");
    assert_eq!(list[2].0, "three", "{after}");
    let two = &listed(&before)[1];
    assert_ne!(list[1].2, two.2, "#two's last message moved: {after}");
    assert!(list[1].2.is_string(), "{after}");

    // A secret channel stays listed to its member and leaves the others' lists, from the same cache.
    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#two", "body": "+s"}),
        )
        .await;
    let of_alice = network_guild(&server, &alice.token).await;
    let of_bob = network_guild(&server, &bob.token).await;
    assert_eq!(names(&of_alice), ["one", "two", "three"], "{of_alice}");
    assert_eq!(names(&of_bob), ["one", "three"], "{of_bob}");
    // Everything else about a channel is the same for both.
    assert_eq!(of_alice["d"]["channels"][0], of_bob["d"]["channels"][0]);
    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#two", "body": "-s"}),
        )
        .await;
    let of_bob = network_guild(&server, &bob.token).await;
    assert_eq!(names(&of_bob), ["one", "two", "three"], "{of_bob}");
}

/// The id of network channel `#name` as `token`'s REST API lists it.
async fn channel_id(server: &Server, token: &str, name: &str) -> String {
    let (_, guilds) = server.get("/api/v10/users/@me/guilds", Some(token)).await;
    let guild = guilds[0]["id"].as_str().expect("a guild").to_owned();
    let (_, channels) = server
        .get(&format!("/api/v10/guilds/{guild}/channels"), Some(token))
        .await;
    channels
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == name.trim_start_matches('#'))
        .and_then(|c| c["id"].as_str())
        .unwrap_or_else(|| panic!("{name} in {channels}"))
        .to_owned()
}

/// discord.py's `Message.edit()` sends `tts` with every edit: the edit is taken and reaches the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_with_fields_the_route_does_not_know_is_taken_and_dispatched() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    join(&server, &alice, "#test").await;
    let c = channel_id(&server, &alice.token, "#test").await;
    let mut gw = Gw::connect(&server).await;
    gw.identify(&alice.token, ALL).await;
    gw.sync().await;
    let m = rest(
        &server,
        reqwest::Method::POST,
        &format!("/channels/{c}/messages"),
        &alice.token,
        json!({"content": "first"}),
    )
    .await;
    let id = m["id"].as_str().expect("id").to_owned();
    let (s, _, v) = server
        .raw(
            reqwest::Method::PATCH,
            &format!("/api/v10/channels/{c}/messages/{id}"),
            Some(&alice.token),
            Some(
                json!({"content": "x", "tts": false})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(v["content"], "x");
    let update = gw.until("MESSAGE_UPDATE").await;
    assert_eq!(update["d"]["id"], json!(id));
    assert_eq!(update["d"]["content"], "x");
}

/// A client's WebSocket over a bare TCP socket, to see what each read of the socket gives.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(server: &Server) -> RawWs {
        use tokio::io::AsyncWriteExt;
        let addr = server.base.trim_start_matches("http://").to_owned();
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let request = format!(
            "GET /gateway/?v=10&encoding=json HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.expect("handshake");
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
        };
        // The handshake's answer, then Hello.
        while !ws.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            ws.read_once().await;
        }
        let end = ws
            .buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end")
            + 4;
        assert!(
            ws.buf.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&ws.buf)
        );
        ws.buf.drain(..end);
        let hello = ws.frame().await;
        assert_eq!(hello["op"], 10, "{hello}");
        ws
    }

    /// One read of the socket, appended to the buffer; returns how many bytes it gave.
    async fn read_once(&mut self) -> usize {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 1 << 20];
        let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
            .await
            .expect("data within 10 s")
            .expect("read");
        assert!(n > 0, "the server closed the socket");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The complete text frames at the start of the buffer, taken out of it.
    fn complete_frames(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let b = &self.buf;
            if b.len() < 2 {
                break;
            }
            assert_eq!(b[0], 0x81, "a final text frame");
            let (len, start) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (usize::try_from(u64::from_be_bytes(n)).expect("len"), 10)
                }
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if b.len() < start + len {
                break;
            }
            let v = serde_json::from_slice(&b[start..start + len]).expect("a JSON frame");
            self.buf.drain(..start + len);
            frames.push(v);
        }
        frames
    }

    /// The next text frame, reading as much as it takes.
    async fn frame(&mut self) -> Value {
        loop {
            let mut frames = self.complete_frames();
            if !frames.is_empty() {
                assert_eq!(frames.len(), 1, "one frame at a time here: {frames:?}");
                return frames.remove(0);
            }
            self.read_once().await;
        }
    }

    /// Sends a text frame, masked as a client must.
    async fn send(&mut self, v: Value) {
        use tokio::io::AsyncWriteExt;
        let payload = v.to_string().into_bytes();
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut out = vec![0x81u8];
        match payload.len() {
            n if n < 126 => out.push(0x80 | u8::try_from(n).expect("small")),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&u16::try_from(n).expect("under 64 KiB").to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&out).await.expect("send");
    }
}

/// READY arrives in a read of its own, as Discord's does: a client that reads whatever is there, a little
/// after the first byte of the answer arrived, finds READY alone, and the GUILD_CREATEs in later reads. (A
/// popular JavaScript library handled a GUILD_CREATE read together with READY before READY.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_arrives_alone_before_the_guild_creates() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    join(&server, &alice, "#test").await;
    let (s, _) = server
        .post(
            "/api/v10/guilds",
            Some(&alice.token),
            json!({"name": "Second guild"}),
        )
        .await;
    assert!(s.is_success(), "{s}");
    let mut ws = RawWs::connect(&server).await;
    ws.send(json!({
        "op": 2,
        "d": {"token": format!("Bot {}", alice.token), "intents": ALL, "properties": {}},
    }))
    .await;
    // A client that reads 10 ms after its socket became readable: long after the server wrote GUILD_CREATE
    // right behind READY, as it used to.
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), ws.tcp.peek(&mut one))
        .await
        .expect("an answer within 10 s")
        .expect("peek");
    tokio::time::sleep(Duration::from_millis(10)).await;
    ws.read_once().await;
    let first_read = ws.complete_frames();
    assert_eq!(first_read.len(), 1, "READY shared its read: {first_read:?}");
    assert_eq!(first_read[0]["t"], "READY", "{}", first_read[0]);
    assert!(ws.buf.is_empty(), "READY came with more bytes in its read");
    let guilds = first_read[0]["d"]["guilds"]
        .as_array()
        .expect("guilds")
        .len();
    assert_eq!(guilds, 2);
    let mut rest = Vec::new();
    while rest.len() < guilds {
        ws.read_once().await;
        rest.extend(ws.complete_frames());
    }
    assert!(rest.iter().all(|f| f["t"] == "GUILD_CREATE"), "{rest:?}");
}

/// A frame of a megabyte is refused with 4002 like any payload over 4096 bytes, not with a reset: also when
/// the client is still writing it as the server sees its header (over a real network, or from a client
/// that writes in pieces), which is when a server that stops reading early resets the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_frame_closes_with_4002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    for identified in [false, true] {
        let mut gw = Gw::connect(&server).await;
        if identified {
            gw.identify(&alice.token, ALL).await;
        }
        gw.send(json!({"op": 1, "d": "x".repeat(1 << 20)})).await;
        assert_eq!(gw.close_code().await, 4002);
    }

    // The same frame, written in pieces 20 ms apart.
    let mut ws = RawWs::connect(&server).await;
    let head = "{\"op\":1,\"d\":\"";
    let payload = format!("{head}{}\"}}", "x".repeat((1 << 20) - head.len() - 2));
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81u8, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    for piece in frame.chunks(64 << 10) {
        let wrote = ws.tcp.write_all(piece).await;
        assert!(wrote.is_ok(), "the server reset the connection: {wrote:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), ws.tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes within 10 s");
    assert!(read.is_ok(), "the server reset the connection: {read:?}");
    // A close frame: 0x88, its length, then the code.
    assert!(answer.len() >= 4 && answer[0] == 0x88, "{answer:?}");
    assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), 4002);
}

/// Presence has a limit of its own: a spent message rate does not cost a presence update, and the sixth
/// update in a minute closes the connection with 4008 (the gateway has no other answer to op 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_updates_have_their_own_limit_and_are_never_dropped_silently() {
    let server = Server::start(&[("RATE_LIMIT", "1/1")]).await;
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(&server, &alice, "#test").await;
    join(&server, &bob, "#test").await;
    let mut a = Gw::connect(&server).await;
    a.identify(&alice.token, GUILDS | GUILD_PRESENCES).await;
    a.sync().await;
    let mut b = Gw::connect(&server).await;
    let bob_id = b.identify(&bob.token, ALL).await["d"]["user"]["id"].clone();
    b.sync().await;

    // Bob spends his message rate...
    let mut limited = false;
    for i in 0..3 {
        let (s, _) = server
            .cmd(
                &bob,
                json!({"command": "PRIVMSG", "to": "#test", "body": format!("m{i}")}),
            )
            .await;
        limited |= s == reqwest::StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "the message rate was not spent");
    // ...and still changes his presence.
    for status in ["dnd", "idle", "dnd", "idle", "dnd"] {
        b.send(json!({"op": 3, "d": {"since": null, "activities": [], "status": status, "afk": false}}))
            .await;
        loop {
            let v = a.until("PRESENCE_UPDATE").await;
            if v["d"]["user"]["id"] == bob_id && v["d"]["status"] == status {
                break;
            }
        }
    }
    // The sixth within the minute is refused out loud.
    b.send(
        json!({"op": 3, "d": {"since": null, "activities": [], "status": "idle", "afk": false}}),
    )
    .await;
    assert_eq!(b.close_code().await, 4008);
}

/// alice and bob on #test, each with a gateway connection: alice's told of presences, bob's with every
/// unprivileged intent. Returns alice, her connection, bob's, and bob's user id as READY gave it.
async fn presence_pair(server: &Server) -> (Client, Gw, Gw, Value) {
    let alice = server.register("alice", "correct horse").await;
    let bob = server.register("bob", "correct horse").await;
    join(server, &alice, "#test").await;
    join(server, &bob, "#test").await;
    let mut a = Gw::connect(server).await;
    a.identify(&alice.token, GUILDS | GUILD_PRESENCES).await;
    a.sync().await;
    let mut b = Gw::connect(server).await;
    let bob_id = b.identify(&bob.token, ALL).await["d"]["user"]["id"].clone();
    b.sync().await;
    (alice, a, b, bob_id)
}

/// Activities are kept and sent: in PRESENCE_UPDATE and in GUILD_CREATE's presences, as raw frames show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_activities_reach_presence_update_and_guild_create() {
    let server = Server::start(&[]).await;
    let (alice, mut a, mut b, bob_id) = presence_pair(&server).await;

    b.send(json!({"op": 3, "d": {
        "since": null,
        "status": "online",
        "afk": false,
        "activities": [
            {"name": "chess", "type": 0, "url": null},
            {"name": "Custom Status", "type": 4, "state": "thinking"},
        ],
    }}))
    .await;
    let want = json!([
        {"name": "chess", "type": 0},
        {"name": "Custom Status", "type": 4, "state": "thinking"},
    ]);
    // (Bob's coming online, without activities, may come first.)
    let text = loop {
        if let Frame::Text(text, v) = a.next().await {
            if v["t"] == "PRESENCE_UPDATE"
                && v["d"]["user"]["id"] == bob_id
                && v["d"]["activities"] != json!([])
            {
                assert_eq!(v["d"]["activities"], want, "{text}");
                assert_eq!(v["d"]["status"], "online");
                break text;
            }
        } else {
            panic!("closed");
        }
    };
    assert!(text.contains("\"state\":\"thinking\""), "{text}");

    // A later connection sees them in GUILD_CREATE's presences.
    let mut c = Gw::connect(&server).await;
    c.identify(&alice.token, GUILDS | GUILD_PRESENCES).await;
    let guild = c.until("GUILD_CREATE").await;
    let bobs = guild["d"]["presences"]
        .as_array()
        .expect("presences")
        .iter()
        .find(|p| p["user"]["id"] == bob_id)
        .cloned()
        .expect("bob's presence");
    assert_eq!(bobs["activities"], want);

    // Clearing them is an update too; going offline shows none.
    b.send(
        json!({"op": 3, "d": {"since": null, "status": "online", "afk": false, "activities": []}}),
    )
    .await;
    loop {
        let v = a.until("PRESENCE_UPDATE").await;
        if v["d"]["user"]["id"] == bob_id && v["d"]["activities"] == json!([]) {
            break;
        }
    }
}

/// `afk` in a Presence Update sets no away message (Discord only routes push notifications by it): before,
/// `afk: true` left a durable "afk" away that no later update cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn afk_in_a_presence_update_sets_no_away_message() {
    let server = Server::start(&[]).await;
    let (alice, mut a, mut b, bob_id) = presence_pair(&server).await;
    b.send(json!({"op": 3, "d": {"since": null, "activities": [], "status": "idle", "afk": true}}))
        .await;
    loop {
        let v = a.until("PRESENCE_UPDATE").await;
        if v["d"]["user"]["id"] == bob_id && v["d"]["status"] == "idle" {
            break;
        }
    }
    let (status, whois) = server.get("/api/v1/users/bob", Some(&alice.token)).await;
    assert!(status.is_success(), "{whois}");
    assert_eq!(whois["status"], "idle", "{whois}");
    assert!(whois["away"].is_null(), "afk set an away message: {whois}");
}

/// Attachment URLs are absolute: under the Host the gateway connection was opened with, and under
/// PUBLIC_URL when it is set (REST answers are covered in rest.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_urls_in_dispatches_are_absolute() {
    for public in [None, Some("https://chat.example.org")] {
        let env: Vec<(&str, &str)> = public.iter().map(|p| ("PUBLIC_URL", *p)).collect();
        let server = Server::start(&env).await;
        let alice = server.register("alice", "correct horse").await;
        join(&server, &alice, "#files").await;
        let c = channel_id(&server, &alice.token, "#files").await;
        let mut gw = Gw::connect(&server).await;
        gw.identify(&alice.token, ALL).await;
        gw.sync().await;
        let form = reqwest::multipart::Form::new()
            .text("payload_json", json!({"content": "a file"}).to_string())
            .part(
                "files[0]",
                reqwest::multipart::Part::bytes(b"hello".to_vec())
                    .file_name("a.txt")
                    .mime_str("text/plain")
                    .expect("mime"),
            );
        let r = server
            .http()
            .post(format!("{}/api/v10/channels/{c}/messages", server.base))
            .header("authorization", format!("Bot {}", alice.token))
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        let (_, v) = message(&mut gw, "a file").await;
        let file = &v["d"]["attachments"][0];
        let base = public.map_or_else(|| server.base.clone(), str::to_owned);
        let url = file["url"].as_str().expect("url");
        assert!(url.starts_with(&format!("{base}/attachments/")), "{url}");
        assert_eq!(file["proxy_url"], file["url"]);
        if public.is_none() {
            // The URL works as it is.
            let got = server.http().get(url).send().await.expect("download");
            assert_eq!(got.status(), reqwest::StatusCode::OK);
            assert_eq!(got.text().await.expect("body"), "hello");
        }
    }
}

/// A `+i` channel that a network member may not view is listed to them (as Discord lists channels without
/// VIEW_CHANNEL) but tells nothing of its activity: no `last_message_id`, over REST or in GUILD_CREATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_one_may_not_view_shows_no_activity() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse").await;
    let mallory = server.register("mallory", "correct horse").await;
    join(&server, &alice, "#club").await;
    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#club", "body": "+i", "args": []}),
        )
        .await;
    say(&server, &alice, "#club", "members only").await;
    let c = channel_id(&server, &alice.token, "#club").await;

    // Alice, on the channel, sees its newest message.
    let (_, mine) = server
        .get(&format!("/api/v10/channels/{c}"), Some(&alice.token))
        .await;
    assert!(mine["last_message_id"].is_string(), "{mine}");
    let guild = network_guild(&server, &alice.token).await;
    let (_, _, last) = listed(&guild)
        .into_iter()
        .find(|(name, _, _)| name == "club")
        .expect("listed");
    assert!(last.is_string(), "{guild}");

    // Mallory may not view it: the channel is there, its activity is not.
    let (s, theirs) = server
        .get(&format!("/api/v10/channels/{c}"), Some(&mallory.token))
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{theirs}");
    assert_eq!(theirs["last_message_id"], Value::Null, "{theirs}");
    let guild = network_guild(&server, &mallory.token).await;
    let (_, _, last) = listed(&guild)
        .into_iter()
        .find(|(name, _, _)| name == "club")
        .expect("listed");
    assert_eq!(last, Value::Null, "{guild}");
}
