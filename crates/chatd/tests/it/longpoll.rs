//! The long-poll API (`/api/v1`) end to end: a real chatd process, real HTTP clients. Each test starts its
//! own server on a fresh database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Client, Server, of_type};

// --- helpers ------------------------------------------------------------------------------------------------

/// Asserts an error answer: status, `error` name and IRC numeric (`None`: the numeric is null or absent).
#[track_caller]
fn assert_err(got: (StatusCode, Value), status: StatusCode, name: &str, numeric: Option<u64>) {
    let (s, v) = got;
    assert_eq!(s, status, "expected {status} {name}, got {s}: {v}");
    assert_eq!(v["error"], json!(name), "error name: {v}");
    assert_eq!(v["numeric"].as_u64(), numeric, "numeric: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error carries a message: {v}"
    );
}

/// Message-like events (`message`, `action`, `notice`) with the given body.
fn with_body<'a>(events: &'a [Value], body: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            matches!(e["type"].as_str(), Some("message" | "action" | "notice")) && e["body"] == body
        })
        .collect()
}

/// The single event of a type, panicking unless there is exactly one.
#[track_caller]
fn one<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    let found = of_type(events, kind);
    assert_eq!(found.len(), 1, "expected one {kind} event in {events:?}");
    found[0]
}

/// Polls (without waiting) until an event matching `pred` arrives or `within` passes; returns everything read.
async fn poll_until(
    server: &Server,
    c: &mut Client,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let secs = left.as_secs().clamp(1, 5);
        let batch = server.poll(c, secs).await;
        let hit = batch.iter().any(&pred);
        all.extend(batch);
        if hit || Instant::now() >= deadline {
            return all;
        }
    }
}

/// A command that must succeed; returns `(seq, id)`.
async fn send(server: &Server, c: &Client, body: Value) -> (u64, String) {
    let (s, v) = server.cmd(c, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{} {body}: {v}", c.nick);
    let seq = v["seq"].as_u64().expect("seq");
    let id = v["id"].as_str().map(str::to_owned).unwrap_or_default();
    (seq, id)
}

async fn privmsg(server: &Server, c: &Client, to: &str, body: &str) -> (u64, String) {
    send(
        server,
        c,
        json!({ "command": "PRIVMSG", "to": to, "body": body }),
    )
    .await
}

async fn join(server: &Server, c: &Client, channel: &str) -> u64 {
    server
        .ok(c, json!({ "command": "JOIN", "to": channel }))
        .await
}

async fn mode(server: &Server, c: &Client, channel: &str, modes: &str, args: &[&str]) -> u64 {
    server
        .ok(
            c,
            json!({ "command": "MODE", "to": channel, "body": modes, "args": args }),
        )
        .await
}

/// The bodies of a channel's (or DM's) history as `c` reads it.
async fn history_bodies(server: &Server, c: &Client, target: &str) -> Vec<String> {
    let path = format!(
        "/api/v1/history?target={}&limit=100",
        target.replace('#', "%23")
    );
    let (s, v) = server.get(&path, Some(&c.token)).await;
    assert_eq!(s, StatusCode::OK, "history {target}: {v}");
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["type"] == "message")
        .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A GET answered as text, for what a JSON value would lose (number precision, key order).
async fn get_text(server: &Server, path: &str, token: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", server.base))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.expect("body")
}

fn channel_names(v: &Value) -> Vec<String> {
    v["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// --- 1. two users, a channel and a DM ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_in_a_channel_and_by_dm() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse 1").await;
    let mut alice_r = alice.clone();
    let mut bob = server.guest("bob").await;

    join(&server, &alice, "#talk").await;
    join(&server, &bob, "#talk").await;
    let seen = server.drain(&mut alice_r).await;
    let bob_join = of_type(&seen, "join")
        .into_iter()
        .find(|e| e["from"] == "bob")
        .expect("alice sees bob join");
    assert_eq!(bob_join["to"], "#talk");
    server.drain(&mut bob).await;

    let meta = json!({
        "client": {"name": "it", "tags": ["a", "b", {"deep": [1, 2.5, null, true]}]},
        "n": 42,
        "text": "é ✓ \"quoted\"",
        "empty": {}
    });
    let (s1, id1) = send(
        &server,
        &alice,
        json!({ "command": "PRIVMSG", "to": "#talk", "body": "Hello, bob", "meta": meta }),
    )
    .await;
    let (s2, id2) = send(
        &server,
        &bob,
        json!({ "command": "PRIVMSG", "to": "#talk", "body": "Hi alice", "ref": id1 }),
    )
    .await;
    let (s3, _) = send(
        &server,
        &alice,
        json!({ "command": "ACTION", "to": "#talk", "body": "waves" }),
    )
    .await;
    let (s4, id4) = privmsg(&server, &alice, "bob", "psst, a secret").await;
    let (s5, _) = privmsg(&server, &bob, "alice", "secret received").await;
    assert!(s1 < s2 && s2 < s3 && s3 < s4 && s4 < s5, "seqs increase");
    assert_ne!(id1, id2);

    for (who, c) in [("alice", &mut alice_r), ("bob", &mut bob)] {
        let events = server.drain(c).await;
        let m1 = with_body(&events, "Hello, bob");
        assert_eq!(m1.len(), 1, "{who} sees alice's message once: {events:?}");
        let m1 = m1[0];
        assert_eq!(m1["type"], "message");
        assert_eq!(m1["from"], "alice");
        assert_eq!(m1["to"], "#talk");
        assert_eq!(m1["seq"], json!(s1));
        assert_eq!(m1["id"], json!(id1));
        assert_eq!(m1["meta"], meta, "{who}: meta kept verbatim");
        assert!(m1["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(m1.get("ref").is_none(), "no ref on a plain message");

        let m2 = with_body(&events, "Hi alice");
        assert_eq!(m2.len(), 1, "{who} sees bob's reply once");
        assert_eq!(m2[0]["from"], "bob");
        assert_eq!(m2[0]["to"], "#talk");
        assert_eq!(m2[0]["ref"], json!(id1), "the reply names the message");
        assert_eq!(m2[0]["meta"], json!({}), "no meta is an empty object");

        let m3 = with_body(&events, "waves");
        assert_eq!(m3.len(), 1);
        assert_eq!(m3[0]["type"], "action");

        let dm = with_body(&events, "psst, a secret");
        assert_eq!(dm.len(), 1, "{who} sees the DM once: {events:?}");
        assert_eq!(dm[0]["from"], "alice");
        assert_eq!(dm[0]["to"], "bob", "{who}: a DM's `to` is its recipient");
        assert_eq!(dm[0]["id"], json!(id4));
        let back = with_body(&events, "secret received");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0]["from"], "bob");
        assert_eq!(back[0]["to"], "alice");

        // Seqs in one stream only go up.
        let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{who}: {seqs:?}");
    }

    // Meta is kept as written: numbers beyond f64, exponents and key order survive (the whitespace between
    // tokens aside), in the stream and in history.
    let raw = r##"{"command":"PRIVMSG","to":"#talk","body":"exact meta","meta":{ "z": 1, "a": 123456789012345678901234567890, "e": 1E+2, "f": 2.50, "s": "q\"x" }}"##;
    let (s, _, v) = server
        .raw(
            Method::POST,
            "/api/v1/messages",
            Some(&alice.token),
            Some(raw.as_bytes().to_vec()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let want = r#""meta":{"z":1,"a":123456789012345678901234567890,"e":1E+2,"f":2.50,"s":"q\"x"}"#;
    let text = get_text(
        &server,
        &format!("/api/v1/messages?after={}&timeout=0", bob.cursor),
        &bob.token,
    )
    .await;
    assert!(text.contains(want), "stream: {text}");
    let text = get_text(
        &server,
        "/api/v1/history?target=%23talk&limit=1",
        &bob.token,
    )
    .await;
    assert!(text.contains(want), "history: {text}");
    server.drain(&mut bob).await;

    // A third user sees neither the channel (not a member) nor the DM.
    let mut carol = server.guest("carol").await;
    privmsg(&server, &alice, "#talk", "carol cannot see this").await;
    privmsg(&server, &alice, "bob", "nor this").await;
    let events = server.drain(&mut carol).await;
    assert!(with_body(&events, "carol cannot see this").is_empty());
    assert!(with_body(&events, "nor this").is_empty());
}

// --- 2. a second device ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_sees_the_same_stream() {
    let server = Server::start(&[]).await;
    let mut phone = server.register("carol", "secret-pass-1").await;
    let mut laptop = server.login("carol", "secret-pass-1").await;
    assert_ne!(phone.token, laptop.token, "each device has its own token");
    // Accounts: the nick is taken case-insensitively; a wrong password or an unknown account is one answer.
    let creds = |nick: &str, password: &str| json!({ "nick": nick, "password": password });
    assert_err(
        server
            .post("/api/v1/register", None, creds("CAROL", "another-pass"))
            .await,
        StatusCode::CONFLICT,
        "nick_in_use",
        Some(433),
    );
    assert_err(
        server
            .post("/api/v1/session", None, json!({ "nick": "Carol" }))
            .await,
        StatusCode::CONFLICT,
        "nick_in_use",
        Some(433),
    );
    assert_err(
        server
            .post("/api/v1/register", None, creds("erin", ""))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
    );
    for (nick, password) in [("carol", "wrong-pass"), ("nobody", "secret-pass-1")] {
        assert_err(
            server
                .post("/api/v1/login", None, creds(nick, password))
                .await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            Some(464),
        );
    }
    assert_err(
        server
            .post(
                "/api/v1/session",
                None,
                json!({ "nick": "erin", "password": "x" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
    );
    let dave = server.guest("dave").await;

    let (join_seq, _) = send(&server, &phone, json!({ "command": "JOIN", "to": "#dev" })).await;
    join(&server, &dave, "#dev").await;
    let (from_phone, id_phone) = privmsg(&server, &phone, "#dev", "sent from the phone").await;
    let (from_laptop, _) = privmsg(&server, &laptop, "#dev", "sent from the laptop").await;
    let (dm_seq, _) = privmsg(&server, &dave, "carol", "dm to carol").await;

    let on_phone = server.drain(&mut phone).await;
    let on_laptop = server.drain(&mut laptop).await;
    for (which, events) in [("phone", &on_phone), ("laptop", &on_laptop)] {
        let join = of_type(events, "join")
            .into_iter()
            .find(|e| e["from"] == "carol")
            .unwrap_or_else(|| panic!("{which} sees carol's own join"));
        assert_eq!(join["seq"], json!(join_seq));
        let m = with_body(events, "sent from the phone");
        assert_eq!(m.len(), 1, "{which}: {events:?}");
        assert_eq!(m[0]["seq"], json!(from_phone));
        assert_eq!(m[0]["id"], json!(id_phone));
        assert_eq!(m[0]["from"], "carol");
        let m = with_body(events, "sent from the laptop");
        assert_eq!(m.len(), 1, "{which}");
        assert_eq!(m[0]["seq"], json!(from_laptop));
        let dm = with_body(events, "dm to carol");
        assert_eq!(dm.len(), 1, "{which}");
        assert_eq!(dm[0]["seq"], json!(dm_seq));
        assert_eq!(dm[0]["to"], "carol");
    }
    // The same durable events, in the same order, on both devices.
    let durable = |events: &[Value]| -> Vec<u64> {
        events.iter().filter_map(|e| e["seq"].as_u64()).collect()
    };
    let phone_seqs: HashSet<u64> = durable(&on_phone).into_iter().collect();
    let laptop_seqs: HashSet<u64> = durable(&on_laptop).into_iter().collect();
    for seq in [join_seq, from_phone, from_laptop, dm_seq] {
        assert!(phone_seqs.contains(&seq) && laptop_seqs.contains(&seq));
    }

    // Reading on one device is told to the other, and the unread count is the user's, not the device's.
    let (_, dave_said) = privmsg(&server, &dave, "#dev", "dave in dev").await;
    let (_, st) = server.get("/api/v1/state", Some(&laptop.token)).await;
    let dev = st["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == "#dev")
        .expect("#dev in state")
        .clone();
    assert_eq!(
        dev["unread"], 1,
        "dave's one message; carol's own do not count: {st}"
    );
    let dm = st["dms"]
        .as_array()
        .expect("dms")
        .iter()
        .find(|d| d["nick"] == "dave")
        .unwrap_or_else(|| panic!("the DM with dave in state: {st}"))
        .clone();
    assert_eq!(dm["unread"], 1, "{st}");
    let last_dev = json!(dave_said);
    let read_seq = server
        .ok(
            &phone,
            json!({ "command": "READ", "to": "#dev", "ref": last_dev }),
        )
        .await;
    let events = server.drain(&mut laptop).await;
    let r = one(&events, "read");
    assert_eq!(r["seq"], json!(read_seq));
    assert_eq!(r["ref"], last_dev);
    assert_eq!(r["to"], "#dev");
    let (_, st) = server.get("/api/v1/state", Some(&laptop.token)).await;
    let dev = st["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == "#dev")
        .expect("#dev in state")
        .clone();
    assert_eq!(
        dev["unread"], 0,
        "read on the phone, seen from the laptop: {st}"
    );
    server.drain(&mut phone).await;

    // A third device that never gives `after` continues from the cursor the server keeps for it.
    let tablet = server.login("carol", "secret-pass-1").await;
    let (later, _) = privmsg(&server, &dave, "#dev", "while the tablet was away").await;
    let (s, v) = server
        .get("/api/v1/messages?timeout=0", Some(&tablet.token))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let first = v["messages"].as_array().expect("messages").clone();
    let m = with_body(&first, "while the tablet was away");
    assert_eq!(m.len(), 1, "the first poll without after: {v}");
    assert_eq!(m[0]["seq"], json!(later));
    assert!(
        !first
            .iter()
            .any(|e| e["seq"].as_u64().is_some_and(|s| s <= tablet.cursor)),
        "nothing from before the login cursor {}: {v}",
        tablet.cursor
    );
    let cursor = v["cursor"].as_u64().expect("cursor");
    assert!(cursor >= later);
    let (s, v) = server
        .get("/api/v1/messages?timeout=0", Some(&tablet.token))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let again = v["messages"].as_array().expect("messages");
    assert!(
        again.iter().all(|e| e["seq"].is_null()),
        "the second poll without after returns nothing durable again: {v}"
    );
    assert_eq!(
        v["cursor"].as_u64(),
        Some(cursor),
        "the kept cursor stays put"
    );
    // And the next message is the only new one.
    let (next, _) = privmsg(&server, &dave, "#dev", "one more").await;
    let (_, v) = server
        .get("/api/v1/messages?timeout=5", Some(&tablet.token))
        .await;
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![next], "{v}");

    // A cursor from another epoch, or from the future, is told to reset, with the cursor to go on from.
    for q in [
        "after=1&epoch=1&timeout=0".to_owned(),
        format!("after={}&epoch={}&timeout=0", next + 1000, tablet.epoch),
    ] {
        let (s, v) = server
            .get(&format!("/api/v1/messages?{q}"), Some(&tablet.token))
            .await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        assert_eq!(v["reset"], true, "{q}: {v}");
        assert_eq!(v["epoch"], json!(tablet.epoch), "{q}: {v}");
        assert!(v["cursor"].as_u64().is_some_and(|c| c >= next), "{q}: {v}");
    }

    // Logging one device out answers its parked poll at once, and leaves the others working.
    let started = Instant::now();
    let (parked, (s, v)) = tokio::join!(
        server.get("/api/v1/messages?timeout=20", Some(&tablet.token)),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server
                .post("/api/v1/logout", Some(&tablet.token), json!({}))
                .await
        }
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["seq"].as_u64().is_some(), "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the parked poll of a logged-out device is answered at once"
    );
    assert_err(parked, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert_err(
        server
            .get("/api/v1/messages?timeout=0", Some(&tablet.token))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let (last, _) = privmsg(&server, &laptop, "#dev", "still here").await;
    let events = server.drain(&mut phone).await;
    let m = with_body(&events, "still here");
    assert_eq!(m.len(), 1, "{events:?}");
    assert_eq!(m[0]["seq"], json!(last));
}

// --- 3. modes --------------------------------------------------------------------------------------------------

/// The ban evasion found by hostile requests: `+b mal!*@*`, KICK, `NICK mx`, JOIN. The ban holds the person, so
/// the new nick stays out until the ban is lifted; `$a:name` bans an account whatever its nick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_holds_whatever_nick_the_user_takes() {
    let server = Server::start(&[]).await;
    let op = server.guest("opal").await;
    let mal = server.register("mal", "correct horse battery").await;
    let forbidden = StatusCode::FORBIDDEN;
    join(&server, &op, "#c").await;
    join(&server, &mal, "#c").await;
    mode(&server, &op, "#c", "+b", &["mal!*@*"]).await;
    server
        .ok(
            &op,
            json!({ "command": "KICK", "to": "#c", "target": "mal", "body": "out" }),
        )
        .await;
    server
        .ok(&mal, json!({ "command": "NICK", "body": "mx" }))
        .await;
    assert_err(
        server
            .cmd(&mal, json!({ "command": "JOIN", "to": "#c" }))
            .await,
        forbidden,
        "banned",
        Some(474),
    );
    mode(&server, &op, "#c", "-b", &["mal!*@*"]).await;
    join(&server, &mal, "#c").await;

    // By account: the account named mx now, whatever nick it takes next.
    mode(&server, &op, "#c", "+b", &["$a:mx"]).await;
    server
        .ok(&mal, json!({ "command": "NICK", "body": "mal" }))
        .await;
    assert_err(
        server
            .cmd(
                &mal,
                json!({ "command": "PRIVMSG", "to": "#c", "body": "hello?" }),
            )
            .await,
        forbidden,
        "cannot_send",
        Some(404),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_refuses_what_it_should() {
    let server = Server::start(&[]).await;
    let op = server.guest("opal").await;
    let mut opal = op.clone();
    let bob = server.guest("bob").await;
    let carol = server.guest("carol").await;
    let forbidden = StatusCode::FORBIDDEN;

    // +m: only voiced members (and ops) speak.
    join(&server, &op, "#m").await;
    join(&server, &bob, "#m").await;
    mode(&server, &op, "#m", "+m", &[]).await;
    server.drain(&mut opal).await;
    assert_err(
        server
            .cmd(
                &bob,
                json!({ "command": "PRIVMSG", "to": "#m", "body": "muted" }),
            )
            .await,
        forbidden,
        "cannot_send",
        Some(404),
    );
    let events = server.drain(&mut opal).await;
    assert!(
        with_body(&events, "muted").is_empty(),
        "a refused message is not delivered"
    );
    let v_seq = mode(&server, &op, "#m", "+v", &["bob"]).await;
    privmsg(&server, &bob, "#m", "voiced now").await;
    let events = server.drain(&mut opal).await;
    let m = one(&events, "mode");
    assert_eq!(m["seq"], json!(v_seq));
    assert_eq!(m["body"], "+v");
    assert_eq!(m["args"], json!(["bob"]));
    assert_eq!(with_body(&events, "voiced now").len(), 1);
    privmsg(&server, &op, "#m", "ops speak under +m").await;

    // MODE by someone who is not an op.
    assert_err(
        server
            .cmd(&bob, json!({ "command": "MODE", "to": "#m", "body": "-m" }))
            .await,
        forbidden,
        "privileges_needed",
        Some(482),
    );
    let (_, info) = server.get("/api/v1/channels/m", Some(&bob.token)).await;
    assert!(
        info["modes"].as_str().is_some_and(|m| m.contains('m')),
        "the refused MODE changed nothing: {info}"
    );

    // +i: only the invited join.
    join(&server, &op, "#i").await;
    mode(&server, &op, "#i", "+i", &[]).await;
    assert_err(
        server
            .cmd(&bob, json!({ "command": "JOIN", "to": "#i" }))
            .await,
        forbidden,
        "invite_only",
        Some(473),
    );
    server
        .ok(
            &op,
            json!({ "command": "INVITE", "to": "#i", "target": "bob" }),
        )
        .await;
    join(&server, &bob, "#i").await;
    assert_err(
        server
            .cmd(&carol, json!({ "command": "JOIN", "to": "#i" }))
            .await,
        forbidden,
        "invite_only",
        Some(473),
    );

    // +k: the right key joins.
    join(&server, &op, "#k").await;
    mode(&server, &op, "#k", "+k", &["sesame"]).await;
    assert_err(
        server
            .cmd(&bob, json!({ "command": "JOIN", "to": "#k" }))
            .await,
        forbidden,
        "bad_key",
        Some(475),
    );
    assert_err(
        server
            .cmd(
                &bob,
                json!({ "command": "JOIN", "to": "#k", "key": "wrong" }),
            )
            .await,
        forbidden,
        "bad_key",
        Some(475),
    );
    server
        .ok(
            &bob,
            json!({ "command": "JOIN", "to": "#k", "key": "sesame" }),
        )
        .await;
    // The REST join takes the key too.
    assert_err(
        server
            .post(
                "/api/v1/channels/join",
                Some(&carol.token),
                json!({ "channel": "#k" }),
            )
            .await,
        forbidden,
        "bad_key",
        Some(475),
    );
    let (s, v) = server
        .post(
            "/api/v1/channels/join",
            Some(&carol.token),
            json!({ "channel": "#k", "key": "sesame" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // +l 1: full with one member.
    join(&server, &op, "#l").await;
    mode(&server, &op, "#l", "+l", &["1"]).await;
    assert_err(
        server
            .cmd(&bob, json!({ "command": "JOIN", "to": "#l" }))
            .await,
        forbidden,
        "channel_full",
        Some(471),
    );

    // +b: a matching mask is kept out; others are not.
    join(&server, &op, "#b").await;
    mode(&server, &op, "#b", "+b", &["bo*"]).await;
    assert_err(
        server
            .cmd(&bob, json!({ "command": "JOIN", "to": "#b" }))
            .await,
        forbidden,
        "banned",
        Some(474),
    );
    join(&server, &carol, "#b").await;

    // +t: only ops set the topic.
    join(&server, &op, "#t").await;
    join(&server, &bob, "#t").await;
    mode(&server, &op, "#t", "+t", &[]).await;
    assert_err(
        server
            .cmd(
                &bob,
                json!({ "command": "TOPIC", "to": "#t", "body": "bob's topic" }),
            )
            .await,
        forbidden,
        "privileges_needed",
        Some(482),
    );
    server
        .ok(
            &op,
            json!({ "command": "TOPIC", "to": "#t", "body": "the op's topic" }),
        )
        .await;
    let (_, info) = server.get("/api/v1/channels/%23t", Some(&bob.token)).await;
    assert_eq!(info["topic"], "the op's topic");

    // +n: no messages from outside.
    join(&server, &op, "#n").await;
    mode(&server, &op, "#n", "+n", &[]).await;
    server.drain(&mut opal).await;
    assert_err(
        server
            .cmd(
                &carol,
                json!({ "command": "PRIVMSG", "to": "#n", "body": "from outside" }),
            )
            .await,
        forbidden,
        "cannot_send",
        Some(404),
    );
    let events = server.drain(&mut opal).await;
    assert!(with_body(&events, "from outside").is_empty());

    // KICK: only ops; the kicked user is told, then hears nothing more from the channel.
    let mut bobby = bob.clone();
    server.drain(&mut bobby).await;
    assert_err(
        server
            .cmd(
                &bob,
                json!({ "command": "KICK", "to": "#m", "target": "opal" }),
            )
            .await,
        forbidden,
        "privileges_needed",
        Some(482),
    );
    let kick = server
        .ok(
            &op,
            json!({ "command": "KICK", "to": "#m", "target": "bob", "body": "enough" }),
        )
        .await;
    privmsg(&server, &op, "#m", "after the kick").await;
    let events = server.drain(&mut bobby).await;
    let k = one(&events, "kick");
    assert_eq!(k["seq"], json!(kick));
    assert_eq!(k["from"], "opal");
    assert_eq!(k["target"], "bob");
    assert_eq!(k["body"], "enough");
    assert!(
        with_body(&events, "after the kick").is_empty(),
        "{events:?}"
    );
    assert_err(
        server
            .cmd(
                &op,
                json!({ "command": "KICK", "to": "#m", "target": "bob" }),
            )
            .await,
        forbidden,
        "user_not_in_channel",
        Some(441),
    );

    // +s: hidden from the public list and from channel info for non-members.
    join(&server, &op, "#s").await;
    join(&server, &bob, "#s").await;
    mode(&server, &op, "#s", "+s", &[]).await;
    let (s, v) = server
        .get("/api/v1/channels?all=1", Some(&carol.token))
        .await;
    assert_eq!(s, StatusCode::OK);
    let names = channel_names(&v);
    assert!(!names.contains(&"#s".to_owned()), "{names:?}");
    assert!(names.contains(&"#m".to_owned()), "{names:?}");
    for who in [&op, &bob] {
        let (_, v) = server.get("/api/v1/channels?all=1", Some(&who.token)).await;
        assert!(
            channel_names(&v).contains(&"#s".to_owned()),
            "a member sees its secret channel: {v}"
        );
    }
    for path in ["/api/v1/channels/s", "/api/v1/channels/%23s"] {
        assert_err(
            server.get(path, Some(&carol.token)).await,
            StatusCode::NOT_FOUND,
            "no_such_channel",
            Some(403),
        );
        let (s, v) = server.get(path, Some(&bob.token)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["name"], "#s");
    }
    assert_err(
        server
            .get("/api/v1/history?target=%23s", Some(&carol.token))
            .await,
        StatusCode::NOT_FOUND,
        "no_such_channel",
        Some(403),
    );
}

// --- 4. waking parked polls and catching up --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_poll_wakes_and_an_offline_client_catches_up() {
    let server = Server::start(&[]).await;
    let alice = server.guest("alice").await;
    let mut bob = server.guest("bob").await;
    join(&server, &alice, "#w").await;
    join(&server, &bob, "#w").await;
    server.drain(&mut bob).await;

    let started = Instant::now();
    let (events, (sent, _)) = tokio::join!(server.poll(&mut bob, 25), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        privmsg(&server, &alice, "#w", "wake up").await
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "the poll answered after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(150),
        "the poll parked before the message was sent ({elapsed:?}): {events:?}"
    );
    let m = with_body(&events, "wake up");
    assert_eq!(m.len(), 1, "{events:?}");
    assert_eq!(m[0]["seq"], json!(sent));
    assert_eq!(bob.cursor, sent);

    // Offline while 50 messages go by; then everything, in order, once, 7 at a time.
    let mut carol = server.guest("carol").await;
    join(&server, &carol, "#w").await;
    server.drain(&mut carol).await;
    let mut sent = Vec::new();
    for i in 0..50 {
        let (seq, id) = privmsg(&server, &alice, "#w", &format!("backlog {i}")).await;
        sent.push((seq, id));
    }
    let mut got = Vec::new();
    let mut polls = 0;
    loop {
        let path = format!("/api/v1/messages?after={}&timeout=0&limit=7", carol.cursor);
        let (s, v) = server.get(&path, Some(&carol.token)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let batch = v["messages"].as_array().expect("messages").clone();
        assert!(batch.len() <= 7, "limit=7 returned {}", batch.len());
        carol.cursor = v["cursor"].as_u64().expect("cursor");
        polls += 1;
        if batch.is_empty() {
            break;
        }
        assert_eq!(
            batch.last().and_then(|e| e["seq"].as_u64()),
            Some(carol.cursor),
            "the cursor is the last event's seq"
        );
        got.extend(batch);
        assert!(polls < 30, "too many polls");
    }
    assert!(
        polls >= 8,
        "50 events at 7 a poll take 8 polls, took {polls}"
    );
    let msgs: Vec<&Value> = got.iter().filter(|e| e["type"] == "message").collect();
    assert_eq!(msgs.len(), 50, "{got:?}");
    for (i, (m, (seq, id))) in msgs.iter().zip(&sent).enumerate() {
        assert_eq!(m["body"], json!(format!("backlog {i}")));
        assert_eq!(m["seq"], json!(seq));
        assert_eq!(m["id"], json!(id));
    }
    let seqs: Vec<u64> = got.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "dense, increasing, no duplicates: {seqs:?}"
    );
    assert_eq!(carol.cursor, sent.last().expect("sent").0);

    // With nothing to say, a poll holds for its timeout and answers empty, the cursor unchanged.
    let before = carol.cursor;
    let started = Instant::now();
    let events = server.poll(&mut carol, 1).await;
    let elapsed = started.elapsed();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(carol.cursor, before);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "timeout=1 held for {elapsed:?}"
    );

    // Typing wakes a parked poll but is live-only: no seq, and the cursor does not move.
    let started = Instant::now();
    let (events, _) = tokio::join!(server.poll(&mut carol, 25), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server
            .ok(&alice, json!({ "command": "TYPING", "to": "#w" }))
            .await
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    let t = one(&events, "typing");
    assert_eq!(t["from"], "alice");
    assert_eq!(t["to"], "#w");
    assert!(t.get("seq").is_none(), "typing is not replayed: {t}");
    assert_eq!(carol.cursor, before);
    let events = server.drain(&mut carol).await;
    assert!(
        of_type(&events, "typing").is_empty(),
        "not replayed: {events:?}"
    );

    // A graceful shutdown answers a parked poll at once rather than dropping it.
    // Not in a cluster: it stops the one process the test talks to (the cluster's failure tests stop nodes).
    if crate::two_nodes::single_node_only(
        "a_parked_poll_wakes_and_an_offline_client_catches_up (its shutdown part)",
        "stops the server's one process with SIGTERM",
    ) {
        return;
    }
    let mut server = server;
    let path = format!("/api/v1/messages?after={}&timeout=25", carol.cursor);
    let http = reqwest::Client::new();
    let url = format!("{}{path}", server.base);
    let parked = tokio::spawn(async move {
        let started = Instant::now();
        let resp = http
            .get(url)
            .bearer_auth(&carol.token)
            .send()
            .await
            .expect("the parked poll is answered, not dropped");
        (resp.status(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = server.terminate().await;
    assert_eq!(code, Some(0), "a clean exit on SIGTERM");
    let (status, held) = parked.await.expect("poll task");
    assert_eq!(status, StatusCode::OK);
    assert!(held < Duration::from_secs(10), "answered after {held:?}");
}

// --- 5. an idle guest expires ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_guest_expires_and_its_nick_is_free_again() {
    let server = Server::start(&[("SESSION_IDLE_TIMEOUT", "2s")]).await;
    let anna = server.guest("anna").await;
    let mut ben = server.guest("ben").await;
    join(&server, &anna, "#x").await;
    join(&server, &ben, "#x").await;
    privmsg(&server, &anna, "#x", "going quiet now").await;
    // Anna does nothing more; ben keeps following his stream.
    let events = poll_until(&server, &mut ben, Duration::from_secs(10), |e| {
        e["type"] == "quit" && e["from"] == "anna"
    })
    .await;
    let quit = of_type(&events, "quit");
    assert_eq!(quit.len(), 1, "ben sees anna quit once: {events:?}");
    assert_eq!(quit[0]["from"], "anna");
    assert!(quit[0]["seq"].as_u64().is_some());

    let (_, info) = server.get("/api/v1/channels/x", Some(&ben.token)).await;
    let members: Vec<&str> = info["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["nick"].as_str())
        .collect();
    assert_eq!(members, vec!["ben"], "{info}");

    // The nick is free, and the old token is dead.
    let anna2 = server.guest("anna").await;
    assert_ne!(anna2.token, anna.token);
    assert_err(
        server.get("/api/v1/state", Some(&anna.token)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    assert_err(
        server
            .cmd(
                &anna,
                json!({ "command": "PRIVMSG", "to": "#x", "body": "ghost" }),
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    // Ben, who kept polling, is still here.
    let (s, _) = server.get("/api/v1/state", Some(&ben.token)).await;
    assert_eq!(s, StatusCode::OK);

    // A guest's logout of its last client ends the session at once: a QUIT, and the nick is free.
    join(&server, &anna2, "#x").await;
    server.drain(&mut ben).await;
    let (s, v) = server
        .post("/api/v1/logout", Some(&anna2.token), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let events = server.drain(&mut ben).await;
    let quit = one(&events, "quit");
    assert_eq!(quit["from"], "anna");
    assert_eq!(quit["seq"], v["seq"], "logout answers the QUIT's seq: {v}");
    server.guest("anna").await;
}

// --- 6. nonces -------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_with_the_same_nonce_appends_nothing() {
    let server = Server::start(&[]).await;
    let alice = server.guest("alice").await;
    let mut bob = server.guest("bob").await;
    join(&server, &alice, "#n").await;
    join(&server, &bob, "#n").await;
    server.drain(&mut bob).await;

    let body = json!({ "command": "PRIVMSG", "to": "#n", "body": "only once", "nonce": "retry-1" });
    let (s1, v1) = server.cmd(&alice, body.clone()).await;
    assert_eq!(s1, StatusCode::OK, "{v1}");
    let (s2, v2) = server.cmd(&alice, body.clone()).await;
    assert_eq!(s2, StatusCode::OK, "{v2}");
    assert_eq!(v1["seq"], v2["seq"]);
    assert_eq!(v1["id"], v2["id"]);
    assert!(v1["id"].as_str().is_some_and(|id| !id.is_empty()));
    // A retry with a different body but the same nonce is still the first result.
    let (_, v3) = server
        .cmd(
            &alice,
            json!({ "command": "PRIVMSG", "to": "#n", "body": "changed", "nonce": "retry-1" }),
        )
        .await;
    assert_eq!(v3["seq"], v1["seq"], "{v3}");
    // Another nonce is another message.
    let (_, v4) = server
        .cmd(
            &alice,
            json!({ "command": "PRIVMSG", "to": "#n", "body": "only once", "nonce": "retry-2" }),
        )
        .await;
    assert_ne!(v4["seq"], v1["seq"]);

    let events = server.drain(&mut bob).await;
    let copies = with_body(&events, "only once");
    assert_eq!(copies.len(), 2, "one per nonce: {events:?}");
    assert_eq!(copies[0]["seq"], v1["seq"]);
    assert_eq!(copies[0]["id"], v1["id"]);
    assert_eq!(copies[1]["seq"], v4["seq"]);
    assert!(with_body(&events, "changed").is_empty());
    assert_eq!(
        history_bodies(&server, &bob, "#n").await,
        vec!["only once", "only once"]
    );

    // Retries racing each other (the first still in flight) also get one message.
    let body = json!({ "command": "PRIVMSG", "to": "#n", "body": "raced", "nonce": "race-1" });
    let (a, b, c, d) = tokio::join!(
        server.cmd(&alice, body.clone()),
        server.cmd(&alice, body.clone()),
        server.cmd(&alice, body.clone()),
        server.cmd(&alice, body.clone()),
    );
    for (s, v) in [&a, &b, &c, &d] {
        assert_eq!(*s, StatusCode::OK, "{v}");
        assert_eq!(v["seq"], a.1["seq"], "{v}");
        assert_eq!(v["id"], a.1["id"], "{v}");
    }
    let events = server.drain(&mut bob).await;
    assert_eq!(with_body(&events, "raced").len(), 1, "{events:?}");
    // The nonce belongs to its user: another user's same nonce is another message.
    let (s, v) = server.cmd(&bob, body.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(v["seq"], a.1["seq"]);
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "#n", "body": "n", "nonce": "x".repeat(65) }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
    );
}

// --- 7. bad input ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_typed_error_and_changes_nothing() {
    let server = Server::start(&[("MAX_MESSAGE_SIZE", "100")]).await;
    let alice = server.guest("alice").await;
    let mut bob = server.guest("bob").await;
    join(&server, &alice, "#x").await;
    join(&server, &bob, "#x").await;
    privmsg(&server, &alice, "#x", "the only message").await;
    server.drain(&mut bob).await;
    let bad = StatusCode::BAD_REQUEST;
    let raw = |bytes: Vec<u8>| {
        let server = &server;
        let token = alice.token.clone();
        async move {
            let (s, _, v) = server
                .raw(Method::POST, "/api/v1/messages", Some(&token), Some(bytes))
                .await;
            (s, v)
        }
    };

    assert_err(
        raw(b"{\"command\":\"PRIVMSG\",\"to\":\"#x\",".to_vec()).await,
        bad,
        "invalid_json",
        None,
    );
    assert_err(
        raw(b"not json at all".to_vec()).await,
        bad,
        "invalid_json",
        None,
    );
    assert_err(
        raw(b"{\"command\":\"PRIVMSG\",\"to\":\"#x\",\"body\":\"\xff\xfe bad\"}".to_vec()).await,
        bad,
        "invalid_utf8",
        None,
    );
    let huge = json!({ "command": "PRIVMSG", "to": "#x", "body": "y".repeat(70 * 1024) });
    assert_err(
        raw(huge.to_string().into_bytes()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        None,
    );
    // MAX_MESSAGE_SIZE=100: 100 bytes pass, 101 do not; clients learn the limit from the server's info.
    let (s, info) = server.get("/api/v1/server", None).await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!(info["max_message_size"], 100, "{info}");
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "#x", "body": "z".repeat(101) }),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "message_too_long",
        Some(417),
    );
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "#x", "body": "é".repeat(51) }),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "message_too_long",
        Some(417),
    );
    let limit_ok = "z".repeat(100);
    privmsg(&server, &alice, "#x", &limit_ok).await;

    for nick in ["9lives", "-dash", "has space", "", "a.b", &"n".repeat(33)] {
        assert_err(
            server
                .post("/api/v1/session", None, json!({ "nick": nick }))
                .await,
            bad,
            "erroneous_nick",
            Some(432),
        );
    }
    for nick in ["alice", "ALICE", "Bob"] {
        assert_err(
            server
                .post("/api/v1/session", None, json!({ "nick": nick }))
                .await,
            StatusCode::CONFLICT,
            "nick_in_use",
            Some(433),
        );
    }
    assert_err(
        server
            .post(
                "/api/v1/users/nick",
                Some(&alice.token),
                json!({ "nick": "bob" }),
            )
            .await,
        StatusCode::CONFLICT,
        "nick_in_use",
        Some(433),
    );
    for name in [
        "#",
        "#a b",
        "#a,b",
        "#a:b",
        "#\u{7}bell",
        &format!("#{}", "c".repeat(64)),
    ] {
        let (s, v) = server
            .cmd(&alice, json!({ "command": "JOIN", "to": name }))
            .await;
        assert_eq!(s, bad, "JOIN {name:?}: {v}");
        assert_eq!(v["error"], "bad_channel_name", "JOIN {name:?}: {v}");
    }
    assert_err(
        server
            .cmd(&alice, json!({ "command": "FROBNICATE", "to": "#x" }))
            .await,
        bad,
        "unknown_command",
        Some(421),
    );
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "#x", "body": "hi", "colour": "red" }),
            )
            .await,
        bad,
        "invalid_input",
        None,
    );
    assert_err(
        server
            .post(
                "/api/v1/session",
                None,
                json!({ "nick": "newbie", "admin": true }),
            )
            .await,
        bad,
        "invalid_input",
        None,
    );
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "nobody", "body": "hi" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "no_such_nick",
        Some(401),
    );
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "#nowhere", "body": "hi" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "no_such_channel",
        Some(403),
    );
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "#x", "body": "" }),
            )
            .await,
        bad,
        "no_text_to_send",
        Some(412),
    );
    assert_err(
        server
            .cmd(&alice, json!({ "command": "PRIVMSG", "to": "#x" }))
            .await,
        bad,
        "no_text_to_send",
        Some(412),
    );
    assert_err(
        server
            .cmd(&alice, json!({ "command": "PRIVMSG", "body": "nowhere" }))
            .await,
        bad,
        "invalid_input",
        None,
    );
    assert_err(
        server
            .cmd(
                &alice,
                json!({ "command": "PRIVMSG", "to": "#x", "body": "bad ref", "ref": "not-an-id" }),
            )
            .await,
        bad,
        "invalid_input",
        None,
    );
    assert_err(
        server
            .cmd(
                &bob,
                json!({ "command": "TOPIC", "to": "#nowhere", "body": "t" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "no_such_channel",
        Some(403),
    );
    for meta in [json!([1, 2]), json!("text"), json!(7), json!(true)] {
        assert_err(
            server
                .cmd(
                    &alice,
                    json!({ "command": "PRIVMSG", "to": "#x", "body": "with meta", "meta": meta }),
                )
                .await,
            bad,
            "invalid_input",
            None,
        );
    }

    // Authentication.
    let unauthorized = StatusCode::UNAUTHORIZED;
    assert_err(
        server.get("/api/v1/state", None).await,
        unauthorized,
        "unauthorized",
        None,
    );
    assert_err(
        server
            .get("/api/v1/messages?timeout=0", Some(&"0".repeat(64)))
            .await,
        unauthorized,
        "unauthorized",
        None,
    );
    assert_err(
        server
            .post(
                "/api/v1/messages",
                None,
                json!({ "command": "PRIVMSG", "to": "#x", "body": "anonymous" }),
            )
            .await,
        unauthorized,
        "unauthorized",
        None,
    );
    assert_err(
        server
            .post(
                "/api/v1/messages",
                Some("not-a-token"),
                json!({ "command": "PRIVMSG", "to": "#x", "body": "forged" }),
            )
            .await,
        unauthorized,
        "unauthorized",
        None,
    );

    // Query strings.
    for q in [
        "timeout=31",
        "timeout=abc",
        "timeout=-1",
        "limit=0",
        "after=xyz",
    ] {
        assert_err(
            server
                .get(&format!("/api/v1/messages?{q}"), Some(&alice.token))
                .await,
            bad,
            "invalid_input",
            None,
        );
    }
    // A cursor from the future is not bad input: it is told to reset, at once rather than after the timeout.
    let started = Instant::now();
    let (s, v) = server
        .get(
            "/api/v1/messages?timeout=30&after=999999999",
            Some(&alice.token),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["reset"], true, "{v}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Routes.
    assert_err(
        server.get("/api/v1/nope", Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_err(
        server.get("/nope/at/all", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );

    let (s, _, v) = server
        .raw(Method::DELETE, "/api/v1/messages", Some(&alice.token), None)
        .await;
    assert_err(
        (s, v),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    assert_err(
        server.get("/api/v1/session", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    for path in [
        "/api/v1/channels/%FF",
        "/api/v1/users/%FF%FE",
        "/api/v1/channels/%C3/members",
    ] {
        assert_err(
            server.get(path, Some(&alice.token)).await,
            bad,
            "invalid_input",
            None,
        );
    }
    let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    assert_err(
        raw(
            format!(r##"{{"command":"PRIVMSG","to":"#x","body":"deep","meta":{deep}}}"##)
                .into_bytes(),
        )
        .await,
        bad,
        "invalid_input",
        None,
    );

    // Nothing changed: one message plus the one at the size limit, and bob was told nothing else.
    assert_eq!(
        history_bodies(&server, &bob, "#x").await,
        vec!["the only message".to_owned(), limit_ok.clone()]
    );
    let events = server.drain(&mut bob).await;
    let msgs = of_type(&events, "message");
    assert_eq!(msgs.len(), 1, "{events:?}");
    assert_eq!(msgs[0]["body"], json!(limit_ok));
    let (_, v) = server.get("/api/v1/server", None).await;
    assert_eq!(
        v["users"],
        json!(2),
        "no user was created by bad input: {v}"
    );
    assert_eq!(v["channels"], json!(1), "no channel was created: {v}");
}

// --- 8. flooding -----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_gets_429_and_loses_nothing_accepted() {
    let server = Server::start(&[("RATE_LIMIT", "5/1")]).await;
    let alice = server.guest("alice").await;
    let mut bob = server.guest("bob").await;
    join(&server, &alice, "#r").await;
    join(&server, &bob, "#r").await;
    server.drain(&mut bob).await;
    // Let alice's bucket refill after her JOIN.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..20 {
        let body = format!("flood {i}");
        let (s, headers, v) = server
            .raw(
                Method::POST,
                "/api/v1/messages",
                Some(&alice.token),
                Some(
                    json!({ "command": "PRIVMSG", "to": "#r", "body": body })
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await;
        match s {
            StatusCode::OK => accepted.push((body, v["seq"].as_u64().expect("seq"))),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(v["error"], "rate_limited", "{v}");
                let retry = v["retry_after"].as_f64().expect("retry_after in the body");
                assert!(retry > 0.0 && retry <= 1.5, "retry_after {retry}");
                let header = headers
                    .get("retry-after")
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.parse::<u64>().ok())
                    .expect("a Retry-After header in whole seconds");
                assert!((1..=2).contains(&header), "Retry-After: {header}");
                refused.push(body);
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        !refused.is_empty(),
        "20 quick messages at 5/1 must hit the limit"
    );
    assert!(accepted.len() >= 5, "the burst of 5 passes: {accepted:?}");
    let most = 5 + (elapsed * 1.0).ceil() as usize + 1;
    assert!(
        accepted.len() <= most,
        "{} accepted in {elapsed:.2} s at 5/1",
        accepted.len()
    );
    assert_eq!(accepted.len() + refused.len(), 20);

    let events = server.drain(&mut bob).await;
    for (body, seq) in &accepted {
        let found = with_body(&events, body);
        assert_eq!(found.len(), 1, "{body} delivered once");
        assert_eq!(found[0]["seq"], json!(seq));
    }
    for body in &refused {
        assert!(with_body(&events, body).is_empty(), "{body} was refused");
    }
    assert_eq!(of_type(&events, "message").len(), accepted.len());

    // After waiting as told, alice may speak again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    privmsg(&server, &alice, "#r", "patient again").await;
}

// --- 9. history, search, state, whois, server, message operations, REST routes ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_search_stays_in_scope() {
    let server = Server::start(&[]).await;
    let alice = server.guest("alice").await;
    let bob = server.guest("bob").await;
    join(&server, &alice, "#h").await;
    join(&server, &bob, "#h").await;
    let mut ids = Vec::new();
    for i in 0..120 {
        let (_, id) = privmsg(&server, &alice, "#h", &format!("line {i:03}")).await;
        ids.push(id);
    }
    // A channel alice is not on, with a word she searches for.
    join(&server, &bob, "#private").await;
    privmsg(&server, &bob, "#private", "zebracorn hidden from alice").await;
    privmsg(&server, &bob, "#h", "zebracorn in the open").await;
    privmsg(&server, &bob, "alice", "zebracorn by dm").await;

    let page = |path: String, token: String| {
        let server = &server;
        async move {
            let (s, v) = server.get(&path, Some(&token)).await;
            assert_eq!(s, StatusCode::OK, "{path}: {v}");
            v["messages"].as_array().expect("messages").clone()
        }
    };
    let bodies = |msgs: &[Value]| -> Vec<String> {
        msgs.iter()
            .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    // The latest page, oldest first.
    let last = page(
        "/api/v1/history?target=%23h&limit=10".into(),
        alice.token.clone(),
    )
    .await;
    assert_eq!(last.len(), 10);
    assert_eq!(last[9]["body"], "zebracorn in the open");
    assert_eq!(last[8]["body"], "line 119");
    assert_eq!(last[0]["body"], "line 111");
    assert_eq!(last[0]["from"], "alice");
    assert_eq!(last[0]["to"], "#h");
    let seqs: Vec<u64> = last.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );
    // The page before it.
    let before = last[0]["id"].as_str().expect("id");
    let prev = page(
        format!("/api/v1/history?target=%23h&limit=10&before={before}"),
        alice.token.clone(),
    )
    .await;
    let want: Vec<String> = (101..111).map(|i| format!("line {i:03}")).collect();
    assert_eq!(bodies(&prev), want);
    // At most 100 a page.
    let full = page(
        "/api/v1/history?target=%23h&limit=100".into(),
        alice.token.clone(),
    )
    .await;
    assert_eq!(full.len(), 100);
    assert_err(
        server
            .get("/api/v1/history?target=%23h&limit=101", Some(&alice.token))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
    );
    // Paging back to the start reaches the first message (the join notices may come before it).
    let mut before = full[0]["id"].as_str().expect("id").to_owned();
    let mut seen: Vec<String> = bodies(&full);
    loop {
        let older = page(
            format!("/api/v1/history?target=%23h&limit=100&before={before}"),
            alice.token.clone(),
        )
        .await;
        if older.is_empty() {
            break;
        }
        before = older[0]["id"].as_str().expect("id").to_owned();
        let mut b = bodies(&older);
        b.extend(seen);
        seen = b;
    }
    let lines: Vec<&String> = seen.iter().filter(|b| b.starts_with("line ")).collect();
    assert_eq!(lines.len(), 120, "every line once");
    assert_eq!(lines[0], "line 000");
    // The `after` bound.
    let after = page(
        format!("/api/v1/history?target=%23h&limit=3&after={}", ids[5]),
        alice.token.clone(),
    )
    .await;
    assert_eq!(bodies(&after), vec!["line 006", "line 007", "line 008"]);

    // By channel id, the same.
    let (_, info) = server.get("/api/v1/channels/h", Some(&alice.token)).await;
    let by_id = page(
        format!(
            "/api/v1/history?target={}&limit=10",
            info["id"].as_str().expect("id")
        ),
        alice.token.clone(),
    )
    .await;
    assert_eq!(bodies(&by_id), bodies(&last));

    // DM history by nick, from both sides.
    let dm = page("/api/v1/history?target=bob".into(), alice.token.clone()).await;
    assert_eq!(bodies(&dm), vec!["zebracorn by dm"]);
    assert_eq!(dm[0]["from"], "bob");
    assert_eq!(dm[0]["to"], "alice");
    let dm = page("/api/v1/history?target=alice".into(), bob.token.clone()).await;
    assert_eq!(bodies(&dm), vec!["zebracorn by dm"]);

    // Search: what alice may read, nothing from #private.
    let found = page("/api/v1/search?q=zebracorn".into(), alice.token.clone()).await;
    let mut b = bodies(&found);
    b.sort();
    assert_eq!(b, vec!["zebracorn by dm", "zebracorn in the open"]);
    let found = page("/api/v1/search?q=zebracorn".into(), bob.token.clone()).await;
    assert_eq!(found.len(), 3, "bob is on all three: {found:?}");
    let found = page(
        "/api/v1/search?q=zebracorn&target=%23h".into(),
        bob.token.clone(),
    )
    .await;
    assert_eq!(bodies(&found), vec!["zebracorn in the open"]);
    let found = page("/api/v1/search?q=line&from=bob".into(), alice.token.clone()).await;
    assert!(found.is_empty(), "{found:?}");
    let carol = server.guest("carol").await;
    let found = page("/api/v1/search?q=zebracorn".into(), carol.token.clone()).await;
    assert!(found.is_empty(), "carol is on nothing: {found:?}");
    // Reading a network channel takes being on it, as on IRC, where readers show in the member list: #h is
    // public, yet carol gets neither its history nor a search scoped to it until she joins.
    assert_err(
        server
            .get("/api/v1/history?target=%23h", Some(&carol.token))
            .await,
        StatusCode::FORBIDDEN,
        "not_on_channel",
        Some(442),
    );
    assert_err(
        server
            .get("/api/v1/search?q=zebracorn&target=%23h", Some(&carol.token))
            .await,
        StatusCode::FORBIDDEN,
        "not_on_channel",
        Some(442),
    );
    join(&server, &carol, "#h").await;
    let found = page(
        "/api/v1/search?q=zebracorn&target=%23h".into(),
        carol.token.clone(),
    )
    .await;
    assert_eq!(bodies(&found), vec!["zebracorn in the open"]);
    let found = page(
        "/api/v1/search?q=nothingmatches".into(),
        alice.token.clone(),
    )
    .await;
    assert!(found.is_empty());
    assert_err(
        server.get("/api/v1/search", Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_whois_and_server_info() {
    let server = Server::start(&[("SERVER_NAME", "testnet"), ("MOTD", "be nice")]).await;
    let mut alice = server.guest("alice").await;
    let bob = server.guest("bob").await;
    join(&server, &alice, "#one").await;
    join(&server, &alice, "#two").await;
    join(&server, &bob, "#one").await;
    mode(&server, &alice, "#one", "+t", &[]).await;
    server
        .ok(
            &alice,
            json!({ "command": "TOPIC", "to": "#one", "body": "first topic" }),
        )
        .await;
    privmsg(&server, &alice, "#one", "unread 1").await;
    let (_, last) = privmsg(&server, &alice, "#one", "unread 2").await;

    let (s, v) = server.get("/api/v1/state", Some(&alice.token)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"]["nick"], "alice");
    assert_eq!(v["user"]["guest"], true);
    assert_eq!(channel_names(&v), vec!["#one", "#two"]);
    let one = &v["channels"][0];
    assert_eq!(one["topic"], "first topic");
    assert!(
        one["modes"].as_str().is_some_and(|m| m.contains('t')),
        "{one}"
    );
    assert_eq!(one["my_modes"], "o");
    assert_eq!(one["members"], 2);
    assert!(v["cursor"].as_u64().is_some());
    assert!(v["epoch"].as_str().is_some());
    let (_, me) = server.get("/api/v1/users/me", Some(&alice.token)).await;
    assert_eq!(me["user"], v["user"], "users/me is state");

    let (_, v) = server.get("/api/v1/state", Some(&bob.token)).await;
    assert_eq!(channel_names(&v), vec!["#one"]);
    let one = &v["channels"][0];
    assert_eq!(one["my_modes"], "");
    assert!(
        one["unread"].as_u64().is_some_and(|n| n >= 2),
        "bob has not read alice's messages: {one}"
    );
    server
        .ok(
            &bob,
            json!({ "command": "READ", "to": "#one", "ref": last }),
        )
        .await;
    let (_, v) = server.get("/api/v1/state", Some(&bob.token)).await;
    assert_eq!(v["channels"][0]["unread"], 0, "{v}");
    let (_, joined) = server.get("/api/v1/channels", Some(&bob.token)).await;
    assert_eq!(channel_names(&joined), vec!["#one"]);

    // Whois, with presence from polling and an away message.
    server.drain(&mut alice).await;
    server
        .ok(&alice, json!({ "command": "AWAY", "body": "at lunch" }))
        .await;
    let (s, w) = server.get("/api/v1/users/alice", Some(&bob.token)).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_eq!(w["nick"], "alice");
    assert_eq!(w["online"], true, "alice polls: {w}");
    assert!(w["idle_seconds"].as_u64().is_some_and(|s| s < 60), "{w}");
    assert_eq!(w["away"], "at lunch");
    let mut bob_r = bob.clone();
    let events = server.drain(&mut bob_r).await;
    let away = of_type(&events, "away");
    assert_eq!(away.len(), 1, "{events:?}");
    let away = away[0];
    assert_eq!(away["from"], "alice");
    assert_eq!(away["body"], "at lunch");
    let (_, st) = server.get("/api/v1/state", Some(&alice.token)).await;
    assert_eq!(st["away"], "at lunch", "{st}");
    let (_, w) = server.get("/api/v1/users/ALICE", Some(&bob.token)).await;
    assert_eq!(w["nick"], "alice", "whois is case-insensitive");
    server.ok(&alice, json!({ "command": "AWAY" })).await;
    let (_, w) = server.get("/api/v1/users/alice", Some(&bob.token)).await;
    assert!(w["away"].is_null(), "back: {w}");
    server.guest("quiet").await;
    let (_, w) = server.get("/api/v1/users/quiet", Some(&alice.token)).await;
    assert_eq!(w["online"], false, "quiet never polled: {w}");
    assert_eq!(w["status"], "offline", "{w}");
    assert_err(
        server.get("/api/v1/users/nobody", Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "no_such_nick",
        Some(401),
    );

    let (s, v) = server.get("/api/v1/server", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "testnet");
    assert_eq!(v["motd"], "be nice");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(v["users"], 3, "{v}");
    assert_eq!(v["channels"], 2, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_delete_react_and_pin_reach_the_channel() {
    let server = Server::start(&[]).await;
    let alice = server.guest("alice").await;
    let mut bob = server.guest("bob").await;
    join(&server, &alice, "#e").await;
    join(&server, &bob, "#e").await;
    let (_, id) = send(
        &server,
        &alice,
        json!({ "command": "PRIVMSG", "to": "#e", "body": "tpyo", "meta": {"v": 1} }),
    )
    .await;
    server.drain(&mut bob).await;

    let edit_seq = server
        .ok(
            &alice,
            json!({ "command": "EDIT", "ref": id, "body": "typo", "meta": {"v": 2} }),
        )
        .await;
    server
        .ok(&bob, json!({ "command": "REACT", "ref": id, "body": "👍" }))
        .await;
    server
        .ok(&alice, json!({ "command": "PIN", "ref": id }))
        .await;
    let events = server.drain(&mut bob).await;
    let e = one(&events, "edit");
    assert_eq!(e["seq"], json!(edit_seq));
    assert_eq!(e["ref"], json!(id));
    assert_eq!(e["body"], "typo");
    assert_eq!(e["meta"], json!({"v": 2}));
    assert_eq!(e["to"], "#e");
    assert_eq!(e["from"], "alice", "an edit names its author: {e}");
    let r = one(&events, "react");
    assert_eq!(r["ref"], json!(id));
    assert_eq!(r["from"], "bob");
    assert_eq!(r["body"], "👍");
    let p = one(&events, "pin");
    assert_eq!(p["ref"], json!(id));
    assert_eq!(p["from"], "alice");

    // History shows the message as it is now.
    let (_, h) = server
        .get("/api/v1/history?target=%23e", Some(&bob.token))
        .await;
    let m = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["id"] == json!(id))
        .expect("the message in history")
        .clone();
    assert_eq!(m["body"], "typo");
    assert!(m["edited"].as_str().is_some(), "{m}");
    assert_eq!(m["pinned"], true);
    assert_eq!(m["reactions"], json!({"👍": ["bob"]}));

    // Someone else's message may not be edited.
    assert_err(
        server
            .cmd(
                &bob,
                json!({ "command": "EDIT", "ref": id, "body": "mine now" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "not_owner",
        Some(482),
    );
    assert_err(
        server
            .cmd(
                &bob,
                json!({ "command": "EDIT", "ref": "12345678901234", "body": "x" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "no_such_message",
        None,
    );

    server
        .ok(
            &bob,
            json!({ "command": "UNREACT", "ref": id, "body": "👍" }),
        )
        .await;
    server
        .ok(&alice, json!({ "command": "UNPIN", "ref": id }))
        .await;
    let del_seq = server
        .ok(&alice, json!({ "command": "DELETE", "ref": id }))
        .await;
    let events = server.drain(&mut bob).await;
    assert_eq!(one(&events, "unreact")["ref"], json!(id));
    assert_eq!(one(&events, "unpin")["ref"], json!(id));
    let d = one(&events, "delete");
    assert_eq!(d["seq"], json!(del_seq));
    assert_eq!(d["ref"], json!(id));
    assert_eq!(d["from"], "alice");
    let (_, h) = server
        .get("/api/v1/history?target=%23e", Some(&bob.token))
        .await;
    assert!(
        !h["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .any(|m| m["id"] == json!(id) && m["body"] == "typo"),
        "a deleted message is gone from history: {h}"
    );

    // In a DM, an edit's `to` is the recipient for both sides, as the message's was, whoever edits.
    let mut alice_r = alice.clone();
    server.drain(&mut alice_r).await;
    let (_, to_bob) = privmsg(&server, &alice, "bob", "dm draft").await;
    let (_, to_alice) = privmsg(&server, &bob, "alice", "reply draft").await;
    server
        .ok(
            &alice,
            json!({ "command": "EDIT", "ref": to_bob, "body": "dm final" }),
        )
        .await;
    server
        .ok(
            &bob,
            json!({ "command": "EDIT", "ref": to_alice, "body": "reply final" }),
        )
        .await;
    for (who, c) in [("alice", &mut alice_r), ("bob", &mut bob)] {
        let events = server.drain(c).await;
        let edits = of_type(&events, "edit");
        assert_eq!(edits.len(), 2, "{who}: {events:?}");
        let mine = edits
            .iter()
            .find(|e| e["ref"] == json!(to_bob))
            .expect("edit");
        assert_eq!(mine["from"], "alice", "{who}: {mine}");
        assert_eq!(mine["to"], "bob", "{who}: {mine}");
        assert_eq!(mine["body"], "dm final");
        let theirs = edits
            .iter()
            .find(|e| e["ref"] == json!(to_alice))
            .expect("edit");
        assert_eq!(theirs["from"], "bob", "{who}: {theirs}");
        assert_eq!(theirs["to"], "alice", "{who}: {theirs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_and_nick_routes() {
    let server = Server::start(&[]).await;
    let alice = server.guest("alice").await;
    let mut bob = server.guest("bob").await;

    let (s, v) = server
        .post(
            "/api/v1/channels/join",
            Some(&alice.token),
            json!({ "channel": "#rest" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["seq"].as_u64().is_some());
    let (s, _) = server
        .post(
            "/api/v1/channels/join",
            Some(&bob.token),
            json!({ "channel": "Rest" }),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "channel names are case-insensitive, and the # may be left out"
    );
    server.drain(&mut bob).await;

    let (s, info) = server
        .get("/api/v1/channels/%23rest", Some(&bob.token))
        .await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!(info["name"], "#rest");
    assert_eq!(
        info["members"],
        json!([{"nick": "alice", "modes": "o"}, {"nick": "bob", "modes": ""}])
    );
    let id = info["id"].as_str().expect("id").to_owned();
    for path in ["rest", "%23rest", id.as_str()] {
        let (s, v) = server
            .get(&format!("/api/v1/channels/{path}"), Some(&bob.token))
            .await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        assert_eq!(v["id"], json!(id));
        let (s, v) = server
            .get(
                &format!("/api/v1/channels/{path}/members"),
                Some(&bob.token),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{path}/members: {v}");
        assert_eq!(v["members"].as_array().map(Vec::len), Some(2));
    }

    // Topic by each form of the name.
    for (path, topic) in [
        ("%23rest", "topic one"),
        ("rest", "topic two"),
        (id.as_str(), "topic three"),
    ] {
        let (s, v) = server
            .post(
                &format!("/api/v1/channels/{path}/topic"),
                Some(&alice.token),
                json!({ "topic": topic }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        let (_, info) = server.get("/api/v1/channels/rest", Some(&bob.token)).await;
        assert_eq!(info["topic"], topic);
        let events = server.drain(&mut bob).await;
        let t = one(&events, "topic");
        assert_eq!(t["body"], topic);
        assert_eq!(t["from"], "alice");
        assert_eq!(t["to"], "#rest");
    }
    assert_err(
        server
            .post(
                "/api/v1/channels/nowhere/topic",
                Some(&alice.token),
                json!({ "topic": "x" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "no_such_channel",
        Some(403),
    );

    // Nick change.
    let (s, v) = server
        .post(
            "/api/v1/users/nick",
            Some(&alice.token),
            json!({ "nick": "alicia" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let events = server.drain(&mut bob).await;
    let n = one(&events, "nick");
    assert_eq!(n["from"], "alice");
    assert_eq!(n["body"], "alicia");
    let (s, w) = server.get("/api/v1/users/alicia", Some(&bob.token)).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    assert_err(
        server.get("/api/v1/users/alice", Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "no_such_nick",
        Some(401),
    );
    let (_, st) = server.get("/api/v1/state", Some(&alice.token)).await;
    assert_eq!(st["user"]["nick"], "alicia");
    let mut own = alice.clone();
    own.cursor = 0;
    let events = server.drain(&mut own).await;
    assert_eq!(
        one(&events, "nick")["body"],
        "alicia",
        "a user sees its own nick change"
    );
    // The old nick is free for someone else.
    server.guest("alice").await;

    // Part with a reason; the channel is still there for bob.
    let (s, v) = server
        .post(
            "/api/v1/channels/part",
            Some(&alice.token),
            json!({ "channel": "#rest", "reason": "bye now" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let events = server.drain(&mut bob).await;
    let p = one(&events, "part");
    assert_eq!(p["from"], "alicia");
    assert_eq!(p["body"], "bye now");
    assert_eq!(p["to"], "#rest");
    let (_, info) = server.get("/api/v1/channels/rest", Some(&bob.token)).await;
    assert_eq!(info["members"], json!([{"nick": "bob", "modes": ""}]));
    assert_err(
        server
            .post(
                "/api/v1/channels/part",
                Some(&alice.token),
                json!({ "channel": "#rest" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "not_on_channel",
        Some(442),
    );
    // The last member leaving deletes the channel.
    server
        .ok(&bob, json!({ "command": "PART", "to": "#rest" }))
        .await;
    assert_err(
        server.get("/api/v1/channels/rest", Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "no_such_channel",
        Some(403),
    );
}

/// Typing and presence are live-only: a client between two polls would miss them, unless it passes the
/// previous answer's `live` back, as it does `after`. Then the next poll returns what came in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_between_polls_come_with_live() {
    let server = Server::start(&[]).await;
    let mut alice = server.guest("alice").await;
    let bob = server.guest("bob").await;
    join(&server, &alice, "#t").await;
    join(&server, &bob, "#t").await;
    server.drain(&mut alice).await;
    let poll = |after: u64, extra: String| {
        let server = &server;
        let token = alice.token.clone();
        async move {
            let (s, v) = server
                .get(
                    &format!("/api/v1/messages?after={after}&timeout=1{extra}"),
                    Some(&token),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v
        }
    };
    let before = poll(alice.cursor, String::new()).await;
    let live = before["live"].as_u64().expect("live");

    server
        .ok(&bob, json!({ "command": "TYPING", "to": "#t" }))
        .await;
    // Without `live` the typing, sent while no poll was parked, is not there.
    let plain = poll(alice.cursor, String::new()).await;
    assert_eq!(plain["messages"], json!([]), "{plain}");
    // With it, it is, once.
    let caught = poll(alice.cursor, format!("&live={live}")).await;
    let messages = caught["messages"].as_array().expect("messages");
    assert!(
        messages
            .iter()
            .any(|m| m["type"] == "typing" && m["from"] == "bob"),
        "{caught}"
    );
    let next = caught["live"].as_u64().expect("live");
    assert!(next > live);
    let again = poll(alice.cursor, format!("&live={next}")).await;
    assert_eq!(again["messages"], json!([]), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_hear_a_channel_become_secret_and_public_again() {
    let server = Server::start(&[]).await;
    let alice = server.guest("alice").await;
    let mut bob = server.guest("bob").await;
    let mut carol = server.guest("carol").await;
    join(&server, &alice, "#hush").await;
    join(&server, &carol, "#hush").await;
    server.drain(&mut bob).await;
    server.drain(&mut carol).await;
    mode(&server, &alice, "#hush", "+s", &[]).await;
    let seen = poll_until(&server, &mut bob, Duration::from_secs(5), |e| {
        e["type"] == "channel"
    })
    .await;
    let e = one(&seen, "channel");
    assert_eq!(
        (&e["to"], &e["body"]),
        (&json!("#hush"), &json!("unlisted"))
    );
    mode(&server, &alice, "#hush", "-s", &[]).await;
    let seen = poll_until(&server, &mut bob, Duration::from_secs(5), |e| {
        e["type"] == "channel"
    })
    .await;
    assert_eq!(one(&seen, "channel")["body"], "listed");
    // A member sees the mode changes, not the listing.
    let seen = server.drain(&mut carol).await;
    assert_eq!(of_type(&seen, "mode").len(), 2, "{seen:?}");
    assert!(of_type(&seen, "channel").is_empty(), "{seen:?}");
}
