//! The Discord-compatible REST API (`/api/v10`) against the real binary: the login sequence libraries run,
//! messages end to end (seen by another user's long-poll), reactions, permission refusals, Discord's error
//! codes, rate limits and attachments.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Client, Server};

/// A Discord-style client: `Authorization: Bot <token>` on every request to `/api/v10`.
struct Bot<'a> {
    server: &'a Server,
    token: String,
}

impl<'a> Bot<'a> {
    fn new(server: &'a Server, c: &Client) -> Self {
        Self {
            server,
            token: c.token.clone(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = self
            .server
            .http()
            .request(method, format!("{}/api/v10{}", self.server.base, path))
            .header("authorization", format!("Bot {}", self.token))
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.call(Method::GET, path, None).await;
        (s, v)
    }

    async fn send(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.call(method, path, Some(body)).await;
        (s, v)
    }

    async fn empty(&self, method: Method, path: &str) -> StatusCode {
        self.call(method, path, None).await.0
    }
}

/// An attachment's `url` without the server's base, which it is absolute under.
fn below_base<'v>(server: &Server, attachment: &'v Value) -> &'v str {
    let url = attachment["url"].as_str().expect("url");
    url.strip_prefix(&server.base)
        .unwrap_or_else(|| panic!("{url} is not under {}", server.base))
}

/// The network guild's id and the id of one of its channels by name (without `#`).
async fn network_channel(bot: &Bot<'_>, name: &str) -> (String, String) {
    let (s, guilds) = bot.get("/users/@me/guilds").await;
    assert_eq!(s, StatusCode::OK, "{guilds}");
    let guild = guilds[0]["id"].as_str().expect("a guild").to_owned();
    let (s, channels) = bot.get(&format!("/guilds/{guild}/channels")).await;
    assert_eq!(s, StatusCode::OK, "{channels}");
    let id = channels
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("#{name} in {channels}"))["id"]
        .as_str()
        .expect("id")
        .to_owned();
    (guild, id)
}

fn assert_code(status: StatusCode, v: &Value, want_status: StatusCode, code: u64) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["code"], json!(code), "{v}");
    assert!(v["message"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sequence_answers_what_libraries_read() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bot = Bot::new(&server, &alice);

    // users/@me with the Bot prefix, Content-Type exactly application/json (discord.py compares the string).
    let (s, h, me) = bot.call(Method::GET, "/users/@me", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(me["username"], "alice");
    assert_eq!(me["discriminator"], "0");
    assert!(me.get("avatar").is_some_and(Value::is_null), "{me}");
    let id = me["id"].as_str().expect("id as a string").to_owned();
    assert!(id.parse::<u64>().is_ok_and(|v| v > 0));

    let (s, h, app) = bot
        .call(Method::GET, "/oauth2/applications/@me", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{app}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(app["id"], json!(id));
    for field in [
        "name",
        "description",
        "icon",
        "bot_public",
        "bot_require_code_grant",
        "owner",
        "verify_key",
    ] {
        assert!(app.get(field).is_some(), "{field} missing in {app}");
    }
    assert_eq!(app["owner"]["id"], json!(id));

    let (s, gw) = bot.get("/gateway/bot").await;
    assert_eq!(s, StatusCode::OK, "{gw}");
    let url = gw["url"].as_str().expect("url");
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/gateway"),
        "{url}"
    );
    assert_eq!(gw["shards"], 1);
    for field in ["total", "remaining", "reset_after", "max_concurrency"] {
        assert!(gw["session_start_limit"][field].is_u64(), "{gw}");
    }
    let (s, gw) = bot.get("/gateway").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(gw["url"].as_str(), Some(url));

    // Bearer, the bare token, and /api/v9 work too.
    let http = server.http();
    for auth in [format!("Bearer {}", alice.token), alice.token.clone()] {
        let r = http
            .get(format!("{}/api/v9/users/@me", server.base))
            .header("authorization", auth)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
    }

    // A bad or missing token is Discord's 401.
    let bad = Bot {
        server: &server,
        token: "0".repeat(64),
    };
    let (s, h, v) = bad.call(Method::GET, "/users/@me", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(v, json!({"code": 0, "message": "401: Unauthorized"}));
    let r = http
        .get(format!("{}/api/v10/users/@me", server.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // users/{id} and an unknown user.
    let (s, u) = bot.get(&format!("/users/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(u["username"], "alice");
    let (s, v) = bot.get("/users/12345").await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10013);

    // PATCH users/@me changes the display name.
    let (s, u) = bot
        .send(
            Method::PATCH,
            "/users/@me",
            json!({"global_name": "Alice A."}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["global_name"], "Alice A.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_round_trip_and_reach_other_users() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let mut bob = server.register("bob", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#rest"}))
        .await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let (guild, c) = network_channel(&b, "rest").await;

    // Bob cannot read #rest before joining it (our extension joins it).
    let (s, v) = b.get(&format!("/channels/{c}/messages")).await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50001);
    assert_eq!(
        b.empty(Method::PUT, &format!("/channels/{c}/members/@me"))
            .await,
        StatusCode::NO_CONTENT
    );
    server.drain(&mut bob).await;

    let (s, ch) = a.get(&format!("/channels/{c}")).await;
    assert_eq!(s, StatusCode::OK, "{ch}");
    assert_eq!(ch["name"], "rest");
    assert_eq!(ch["guild_id"], json!(guild));

    // Send, with a nonce echoed back.
    let (s, m) = a
        .send(
            Method::POST,
            &format!("/channels/{c}/messages"),
            json!({"content": "hello from REST", "nonce": "n-1", "tts": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["content"], "hello from REST");
    assert_eq!(m["channel_id"], json!(c));
    assert_eq!(m["guild_id"], json!(guild));
    assert_eq!(m["author"]["username"], "alice");
    assert_eq!(m["nonce"], "n-1");
    assert_eq!(m["timestamp"].as_str().map(str::len), Some(32), "{m}");
    for field in [
        "mentions",
        "mention_roles",
        "attachments",
        "embeds",
        "components",
        "pinned",
        "tts",
        "type",
        "flags",
    ] {
        assert!(m.get(field).is_some(), "{field} missing in {m}");
    }
    let mid = m["id"].as_str().expect("id").to_owned();

    // Bob's long-poll sees it.
    let seen = server.poll(&mut bob, 5).await;
    assert!(
        seen.iter()
            .any(|e| e["type"] == "message" && e["body"] == "hello from REST"),
        "{seen:?}"
    );

    // enforce_nonce makes a repeat return the first message.
    let body = json!({"content": "once", "nonce": "idem-1", "enforce_nonce": true});
    let (_, m1) = a
        .send(
            Method::POST,
            &format!("/channels/{c}/messages"),
            body.clone(),
        )
        .await;
    let (_, m2) = a
        .send(Method::POST, &format!("/channels/{c}/messages"), body)
        .await;
    assert_eq!(m1["id"], m2["id"]);

    // History: newest first, with limit.
    let (s, list) = b.get(&format!("/channels/{c}/messages?limit=2")).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let list = list.as_array().expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["content"], "once");
    assert_eq!(list[1]["content"], "hello from REST");
    let (s, list) = b
        .get(&format!(
            "/channels/{c}/messages?before={}",
            m1["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"] != "once")
    );
    let (s, v) = b.get(&format!("/channels/{c}/messages?limit=101")).await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50035);

    // Get one, edit it, and see the edit.
    let (s, got) = b.get(&format!("/channels/{c}/messages/{mid}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["id"], json!(mid));
    let (s, edited) = a
        .send(
            Method::PATCH,
            &format!("/channels/{c}/messages/{mid}"),
            json!({"content": "edited"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{edited}");
    assert_eq!(edited["content"], "edited");
    assert!(edited["edited_timestamp"].is_string(), "{edited}");
    let seen = server.poll(&mut bob, 5).await;
    assert!(!seen.is_empty());

    // Bob may neither edit nor delete Alice's message.
    let (s, v) = b
        .send(
            Method::PATCH,
            &format!("/channels/{c}/messages/{mid}"),
            json!({"content": "mine now"}),
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    let (s, _, v) = b
        .call(
            Method::DELETE,
            &format!("/channels/{c}/messages/{mid}"),
            None,
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);

    // Typing and read acks.
    assert_eq!(
        b.empty(Method::POST, &format!("/channels/{c}/typing"))
            .await,
        StatusCode::NO_CONTENT
    );
    let (s, v) = b
        .send(
            Method::POST,
            &format!("/channels/{c}/messages/{mid}/ack"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Pins.
    assert_eq!(
        a.empty(Method::PUT, &format!("/channels/{c}/pins/{mid}"))
            .await,
        StatusCode::NO_CONTENT
    );
    let (s, pins) = b.get(&format!("/channels/{c}/pins")).await;
    assert_eq!(s, StatusCode::OK, "{pins}");
    assert_eq!(pins[0]["id"], json!(mid));
    assert_eq!(pins[0]["pinned"], true);

    // Alice deletes it; it is gone.
    assert_eq!(
        a.empty(Method::DELETE, &format!("/channels/{c}/messages/{mid}"))
            .await,
        StatusCode::NO_CONTENT
    );
    let (s, v) = b.get(&format!("/channels/{c}/messages/{mid}")).await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10008);

    // around= centres on a message; bulk-delete (Alice is the channel's op) removes several at once.
    let once = m1["id"].as_str().unwrap().to_owned();
    let (s, list) = b
        .get(&format!("/channels/{c}/messages?around={once}&limit=3"))
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == json!(once)),
        "{list}"
    );
    let mut ids = Vec::new();
    for text in ["bulk 1", "bulk 2"] {
        let (_, m) = a
            .send(
                Method::POST,
                &format!("/channels/{c}/messages"),
                json!({"content": text}),
            )
            .await;
        ids.push(m["id"].clone());
    }
    let (s, v) = b
        .send(
            Method::POST,
            &format!("/channels/{c}/messages/bulk-delete"),
            json!({"messages": ids}),
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    let (s, v) = a
        .send(
            Method::POST,
            &format!("/channels/{c}/messages/bulk-delete"),
            json!({"messages": ids}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, list) = b.get(&format!("/channels/{c}/messages")).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|m| !m["content"].as_str().unwrap_or("").starts_with("bulk")),
        "{list}"
    );

    // Bob leaves #rest again.
    assert_eq!(
        b.empty(Method::DELETE, &format!("/channels/{c}/members/@me"))
            .await,
        StatusCode::NO_CONTENT
    );
    let (s, v) = b.get(&format!("/channels/{c}/messages")).await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_add_list_and_remove() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#r"}))
        .await;
    server
        .ok(&bob, json!({"command": "JOIN", "to": "#r"}))
        .await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let (_, c) = network_channel(&a, "r").await;
    let (_, m) = a
        .send(
            Method::POST,
            &format!("/channels/{c}/messages"),
            json!({"content": "react to me"}),
        )
        .await;
    let mid = m["id"].as_str().expect("id").to_owned();
    // 👍 percent-encoded, as libraries send it; and a custom emoji as name:id.
    let thumbs = "%F0%9F%91%8D";
    for (who, emoji) in [(&a, thumbs), (&b, thumbs), (&b, "party%3A123")] {
        let s = who
            .empty(
                Method::PUT,
                &format!("/channels/{c}/messages/{mid}/reactions/{emoji}/@me"),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let (s, got) = a.get(&format!("/channels/{c}/messages/{mid}")).await;
    assert_eq!(s, StatusCode::OK);
    let reactions = got["reactions"].as_array().expect("reactions");
    let up = reactions
        .iter()
        .find(|r| r["emoji"]["name"] == "👍")
        .expect("👍");
    assert_eq!(up["count"], 2);
    assert_eq!(up["me"], true);
    let party = reactions
        .iter()
        .find(|r| r["emoji"]["name"] == "party")
        .expect("party");
    assert_eq!(party["emoji"]["id"], "123");
    assert_eq!(party["me"], false);

    let (s, users) = a
        .get(&format!("/channels/{c}/messages/{mid}/reactions/{thumbs}"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{users}");
    assert!(names.contains(&"alice") && names.contains(&"bob"));

    // Bob cannot remove Alice's reaction; Alice, the channel op, can remove Bob's; each removes their own.
    let alice_id = a.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_id = b.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _, v) = b
        .call(
            Method::DELETE,
            &format!("/channels/{c}/messages/{mid}/reactions/{thumbs}/{alice_id}"),
            None,
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    let s = a
        .empty(
            Method::DELETE,
            &format!("/channels/{c}/messages/{mid}/reactions/{thumbs}/{bob_id}"),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let s = a
        .empty(
            Method::DELETE,
            &format!("/channels/{c}/messages/{mid}/reactions/{thumbs}/@me"),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, users) = a
        .get(&format!("/channels/{c}/messages/{mid}/reactions/{thumbs}"))
        .await;
    assert_eq!(users, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_discords_codes() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#e"}))
        .await;
    server
        .ok(&bob, json!({"command": "JOIN", "to": "#e"}))
        .await;
    server
        .ok(
            &alice,
            json!({"command": "MODE", "to": "#e", "body": "+t", "args": []}),
        )
        .await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let (_, c) = network_channel(&a, "e").await;

    // Unknown ids.
    let (s, v) = a.get("/channels/1234567").await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10003);
    let (s, v) = a.get(&format!("/channels/{c}/messages/1234567")).await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10008);
    let (s, v) = a.get("/guilds/1234567").await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10004);
    let (s, v) = a.get("/channels/not-a-number").await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10003);
    let (s, v) = a.get("/no/such/route").await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 0);

    // +t: the topic is for ops; the op may set it.
    let (s, v) = b
        .send(
            Method::PATCH,
            &format!("/channels/{c}"),
            json!({"topic": "bob's"}),
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    let (s, v) = a
        .send(
            Method::PATCH,
            &format!("/channels/{c}"),
            json!({"topic": "ops only"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["topic"], "ops only");

    // Invalid bodies name the field.
    let path = format!("/channels/{c}/messages");
    let (s, v) = a
        .send(Method::POST, &path, json!({"content": "x".repeat(5000)}))
        .await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50035);
    assert_eq!(
        v["errors"]["content"]["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH",
        "{v}"
    );
    let (s, v) = a.send(Method::POST, &path, json!({"content": 5})).await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50035);
    assert!(
        v["errors"]["content"]["_errors"][0]["message"].is_string(),
        "{v}"
    );
    let (s, v) = a
        .send(Method::POST, &path, json!({"content": "hi", "tts": "yes"}))
        .await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50035);
    assert!(v["errors"]["tts"].is_object(), "{v}");
    // A field the route does not know is ignored, as Discord ignores it.
    let (s, v) = a
        .send(
            Method::POST,
            &path,
            json!({"content": "hi", "frobnicate": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = a.send(Method::POST, &path, json!({"content": ""})).await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50006);
    let (s, _, v) = a.call(Method::POST, &path, None).await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50006);
    let r = server
        .http()
        .post(format!("{}/api/v10{path}", server.base))
        .header("authorization", format!("Bot {}", alice.token))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["code"], 50035);
    let big = json!({"content": "x", "embeds": [{"description": "y".repeat(70 * 1024)}]});
    let (s, v) = a.send(Method::POST, &path, big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_discords_429() {
    let server = Server::start(&[("RATE_LIMIT", "3/1")]).await;
    let alice = server.register("alice", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#flood"}))
        .await;
    let a = Bot::new(&server, &alice);
    let (_, c) = network_channel(&a, "flood").await;
    let mut limited = None;
    for i in 0..20 {
        let (s, h, v) = a
            .call(
                Method::POST,
                &format!("/channels/{c}/messages"),
                Some(json!({"content": format!("m{i}")})),
            )
            .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((h, v));
            break;
        }
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (h, v) = limited.expect("a 429 within 20 quick messages");
    assert!(h.contains_key("via"), "{h:?}");
    assert_eq!(h["content-type"], "application/json");
    assert!(
        h["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .is_ok_and(|s| s >= 1)
    );
    assert_eq!(h["x-ratelimit-scope"], "user");
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-reset-after",
        "x-ratelimit-bucket",
    ] {
        assert!(h.contains_key(name), "{name} missing: {h:?}");
    }
    // The set agrees with itself and with RATE_LIMIT=3/1: the bucket holds 3, none is left, and it resets
    // after the body's retry_after.
    let header = |name: &str| h[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-ratelimit-limit"), "3", "{h:?}");
    assert_eq!(header("x-ratelimit-remaining"), "0", "{h:?}");
    assert!(!header("x-ratelimit-bucket").is_empty());
    let reset_after: f64 = header("x-ratelimit-reset-after").parse().unwrap();
    assert!(
        (reset_after - v["retry_after"].as_f64().unwrap()).abs() < 0.001,
        "{h:?} {v}"
    );
    let reset: f64 = header("x-ratelimit-reset").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        reset > now - 5.0 && reset <= now + reset_after + 1.0,
        "{reset} {now}"
    );
    assert!(
        header("retry-after").parse::<f64>().unwrap() >= reset_after,
        "{h:?}"
    );
    assert!(
        v["retry_after"]
            .as_f64()
            .is_some_and(|r| r > 0.0 && r <= 1.0),
        "{v}"
    );
    assert_eq!(v["global"], false);
    assert!(v["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_open_before_the_first_message() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let mut bob = server.register("bob", "correct horse battery").await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let bob_id = b.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, dm) = a
        .send(
            Method::POST,
            "/users/@me/channels",
            json!({"recipient_id": bob_id}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{dm}");
    assert_eq!(dm["type"], 1);
    assert_eq!(dm["recipients"][0]["username"], "bob");
    // The DM exists before its first message: a channel of its own, listed on both sides, empty.
    let real = dm["id"].as_str().unwrap().to_owned();
    assert_ne!(real, bob_id);
    let (s, v) = a.get(&format!("/channels/{real}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["type"], 1);
    let (s, v) = a.get(&format!("/channels/{real}/messages")).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, list) = b.get("/users/@me/channels").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["id"], json!(real));
    assert_eq!(list[0]["recipients"][0]["username"], "alice");
    // Opening it again gives the same channel; a DM with oneself is refused, naming the field.
    let (_, again) = a
        .send(
            Method::POST,
            "/users/@me/channels",
            json!({"recipient_id": bob_id}),
        )
        .await;
    assert_eq!(again["id"], json!(real));
    let alice_id = a.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = a
        .send(
            Method::POST,
            "/users/@me/channels",
            json!({"recipient_id": alice_id}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], 50035, "{v}");
    let (s, m) = a
        .send(
            Method::POST,
            &format!("/channels/{real}/messages"),
            json!({"content": "psst"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert!(m.get("guild_id").is_none(), "{m}");
    assert_eq!(m["channel_id"], json!(real));
    let seen = server.poll(&mut bob, 5).await;
    assert!(
        seen.iter()
            .any(|e| e["type"] == "channel" && e["body"] == "create"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e["body"] == "psst"), "{seen:?}");
    let (s, hist) = b.get(&format!("/channels/{real}/messages")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hist[0]["content"], "psst");
    // A third user sees nothing of it.
    let carol = server.register("carol", "correct horse battery").await;
    let (s, v) = Bot::new(&server, &carol)
        .get(&format!("/channels/{real}/messages"))
        .await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guilds_roles_members_and_search() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let (s, g) = a
        .send(
            Method::POST,
            "/guilds",
            json!({"name": "Team", "public": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().unwrap().to_owned();
    assert_eq!(
        g["roles"][0]["id"],
        json!(gid),
        "@everyone has the guild's id: {g}"
    );
    let (s, v) = a.send(Method::POST, "/guilds", json!({"name": "T"})).await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50035);
    assert!(v["errors"]["name"].is_object(), "{v}");

    // Bob is not in it; then joins (public).
    let (s, v) = b.get(&format!("/guilds/{gid}")).await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50001);
    let bob_id = b.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _, v) = b
        .call(
            Method::PUT,
            &format!("/guilds/{gid}/members/{bob_id}"),
            Some(json!({})),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, v) = b.get(&format!("/guilds/{gid}?with_counts=true")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["approximate_member_count"], 2);

    // Channels: Bob may not create one; Alice may.
    let (s, v) = b
        .send(
            Method::POST,
            &format!("/guilds/{gid}/channels"),
            json!({"name": "nope"}),
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    let (s, ch) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/channels"),
            json!({"name": "plans", "topic": "t"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ch}");
    let cid = ch["id"].as_str().unwrap().to_owned();
    let (s, list) = b.get(&format!("/guilds/{gid}/channels")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == json!(cid))
    );

    // Roles and member roles.
    let (s, role) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/roles"),
            json!({"name": "mods", "permissions": "8192", "color": 255}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{role}");
    let rid = role["id"].as_str().unwrap().to_owned();
    assert_eq!(role["permissions"], "8192");
    let s = a
        .empty(
            Method::PUT,
            &format!("/guilds/{gid}/members/{bob_id}/roles/{rid}"),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, m) = a.get(&format!("/guilds/{gid}/members/{bob_id}")).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["roles"], json!([rid]));
    let (s, members) = a.get(&format!("/guilds/{gid}/members?limit=10")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(members.as_array().unwrap().len(), 2);
    let (s, roles) = b.get(&format!("/guilds/{gid}/roles")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(roles.as_array().unwrap().len(), 2);

    // Messages and search.
    for text in ["the quarterly plan", "lunch?", "plan B"] {
        let (s, v) = b
            .send(
                Method::POST,
                &format!("/channels/{cid}/messages"),
                json!({"content": text}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, found) = a
        .get(&format!("/guilds/{gid}/messages/search?content=plan"))
        .await;
    assert_eq!(s, StatusCode::OK, "{found}");
    let hits = found["messages"].as_array().unwrap();
    assert_eq!(hits.len(), 2, "{found}");
    assert!(
        hits.iter()
            .all(|h| h[0]["content"].as_str().unwrap().contains("plan"))
    );

    // Kick, ban, unban.
    let (s, v) = b
        .send(
            Method::PUT,
            &format!("/guilds/{gid}/bans/{bob_id}"),
            json!({}),
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    let (s, v) = a
        .send(
            Method::PUT,
            &format!("/guilds/{gid}/bans/{bob_id}"),
            json!({"delete_message_seconds": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, bans) = a.get(&format!("/guilds/{gid}/bans")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(bans[0]["user"]["id"], json!(bob_id));
    let (s, v) = b.get(&format!("/channels/{cid}/messages")).await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50001);
    assert_eq!(
        a.empty(Method::DELETE, &format!("/guilds/{gid}/bans/{bob_id}"))
            .await,
        StatusCode::NO_CONTENT
    );

    // Invites: create, read, use.
    let (s, inv) = a
        .send(
            Method::POST,
            &format!("/channels/{cid}/invites"),
            json!({"max_age": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{inv}");
    let code = inv["code"].as_str().unwrap().to_owned();
    assert_eq!(inv["guild"]["id"], json!(gid));
    let (s, v) = b
        .send(Method::POST, &format!("/invites/{code}"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = b.get(&format!("/guilds/{gid}")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = b.get("/invites/nosuchcode").await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10006);
    // Listed by channel and by guild to those who manage them; a plain member gets 50013.
    for path in [
        format!("/channels/{cid}/invites"),
        format!("/guilds/{gid}/invites"),
    ] {
        let (s, list) = a.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {list}");
        let codes: Vec<&str> = list
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|i| i["code"].as_str())
            .collect();
        assert_eq!(codes, [code.as_str()], "{path}");
        assert_eq!(list[0]["uses"], 1, "{path}");
        let (s, v) = b.get(&path).await;
        assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    }

    // Only the owner deletes the guild.
    assert_eq!(
        b.empty(Method::DELETE, &format!("/guilds/{gid}")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.empty(Method::DELETE, &format!("/guilds/{gid}")).await,
        StatusCode::NO_CONTENT
    );
    let (s, v) = a.get(&format!("/guilds/{gid}")).await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10004);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_upload_and_download_safely() {
    let server = Server::start(&[("MAX_UPLOAD_SIZE", "1000")]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    let carol = server.register("carol", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#files"}))
        .await;
    server
        .ok(&bob, json!({"command": "JOIN", "to": "#files"}))
        .await;
    let a = Bot::new(&server, &alice);
    let (_, c) = network_channel(&a, "files").await;
    let http = server.http();
    let upload = |parts: Vec<(&'static str, &'static str, Vec<u8>)>| {
        let mut form = reqwest::multipart::Form::new().text(
            "payload_json",
            json!({"content": "see attached"}).to_string(),
        );
        for (i, (name, ct, bytes)) in parts.into_iter().enumerate() {
            let part = reqwest::multipart::Part::bytes(bytes)
                .file_name(name)
                .mime_str(ct)
                .expect("mime");
            form = form.part(format!("files[{i}]"), part);
        }
        http.post(format!("{}/api/v10/channels/{c}/messages", server.base))
            .header("authorization", format!("Bot {}", alice.token))
            .multipart(form)
            .send()
    };
    let r = upload(vec![
        ("../../notes.txt", "text/plain", b"hello file".to_vec()),
        (
            "page.html",
            "text/html",
            b"<script>alert(1)</script>".to_vec(),
        ),
    ])
    .await
    .expect("upload");
    assert_eq!(r.status(), StatusCode::OK);
    let m: Value = r.json().await.expect("json");
    assert_eq!(m["content"], "see attached");
    let files = m["attachments"].as_array().expect("attachments");
    assert_eq!(files.len(), 2, "{m}");
    assert_eq!(files[0]["filename"], "notes.txt");
    assert_eq!(files[0]["size"], 10);

    // Served back: plain text inline, HTML never inline.
    let url = below_base(&server, &files[0]);
    let r = http
        .get(format!("{}{url}", server.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("notes.txt")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello file");
    let url = below_base(&server, &files[1]);
    let r = http
        .get(format!("{}{url}", server.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );

    // A reader who may not read the channel is refused; one who may is served.
    let url = below_base(&server, &files[0]);
    for (who, want) in [(&carol, StatusCode::FORBIDDEN), (&bob, StatusCode::OK)] {
        let r = http
            .get(format!("{}{url}", server.base))
            .header("authorization", format!("Bot {}", who.token))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), want, "{}", who.nick);
    }

    // Over MAX_UPLOAD_SIZE: 413, and nothing is sent.
    let r = upload(vec![(
        "big.bin",
        "application/octet-stream",
        vec![0u8; 2000],
    )])
    .await
    .expect("upload");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, list) = a.get(&format!("/channels/{c}/messages")).await;
    let with_files = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["attachments"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    assert_eq!(with_files, 1, "{list}");
    // Its stored file was removed again.
    let dir = server.dir().join("data").join("attachments").join(&c);
    let stored = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 4, "two files and their two records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_routes_register_login_and_logout() {
    let server = Server::start(&[]).await;
    let http = server.http();
    let post = |path: &str, body: Value| {
        http.post(format!("{}/api/v10{path}", server.base))
            .json(&body)
            .send()
    };
    let r = post(
        "/auth/register",
        json!({"username": "dora", "password": "correct horse battery"}),
    )
    .await
    .expect("register");
    assert_eq!(r.status(), StatusCode::OK);
    let reg: Value = r.json().await.expect("json");
    let token = reg["token"].as_str().expect("token").to_owned();
    assert!(reg["user_id"].is_string());
    let r = post(
        "/auth/register",
        json!({"username": "dora", "password": "correct horse battery"}),
    )
    .await
    .expect("register");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["code"], 50035);
    assert!(v["errors"]["username"].is_object(), "{v}");

    let r = post(
        "/auth/login",
        json!({"login": "dora", "password": "wrong password!"}),
    )
    .await
    .expect("login");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(
        "/auth/login",
        json!({"username": "dora", "password": "correct horse battery"}),
    )
    .await
    .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    let login: Value = r.json().await.expect("json");
    assert_eq!(login["user_id"], reg["user_id"]);
    let second = login["token"].as_str().expect("token").to_owned();
    assert_ne!(second, token);

    // Logging out ends that token only.
    let r = http
        .post(format!("{}/api/v10/auth/logout", server.base))
        .header("authorization", format!("Bot {second}"))
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for (t, want) in [
        (&second, StatusCode::UNAUTHORIZED),
        (&token, StatusCode::OK),
    ] {
        let r = http
            .get(format!("{}/api/v10/users/@me", server.base))
            .header("authorization", format!("Bot {t}"))
            .send()
            .await
            .expect("me");
        assert_eq!(r.status(), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_overwrites_and_member_changes() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let (_, g) = a
        .send(
            Method::POST,
            "/guilds",
            json!({"name": "Threads", "public": true}),
        )
        .await;
    let gid = g["id"].as_str().unwrap().to_owned();
    let bob_id = b.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.call(
        Method::PUT,
        &format!("/guilds/{gid}/members/{bob_id}"),
        None,
    )
    .await;
    let (_, ch) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/channels"),
            json!({"name": "secret"}),
        )
        .await;
    let cid = ch["id"].as_str().unwrap().to_owned();

    // A member overwrite hides the channel from Bob; removing it shows it again.
    let deny_view = (1u64 << 10).to_string();
    let s = a
        .call(
            Method::PUT,
            &format!("/channels/{cid}/permissions/{bob_id}"),
            Some(json!({"type": 1, "allow": "0", "deny": deny_view})),
        )
        .await
        .0;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = b.get(&format!("/channels/{cid}")).await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50001);
    let (_, ch) = a.get(&format!("/channels/{cid}")).await;
    assert_eq!(ch["permission_overwrites"][0]["id"], json!(bob_id), "{ch}");
    assert_eq!(
        a.empty(
            Method::DELETE,
            &format!("/channels/{cid}/permissions/{bob_id}")
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let (s, _) = b.get(&format!("/channels/{cid}")).await;
    assert_eq!(s, StatusCode::OK);

    // Threads: from a message and on their own.
    let (_, m) = b
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages"),
            json!({"content": "start here"}),
        )
        .await;
    let mid = m["id"].as_str().unwrap();
    let (s, t) = b
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages/{mid}/threads"),
            json!({"name": "sub"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["type"], 11);
    assert_eq!(t["parent_id"], json!(cid));
    let tid = t["id"].as_str().unwrap();
    let (s, v) = a
        .send(
            Method::POST,
            &format!("/channels/{tid}/messages"),
            json!({"content": "in thread"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, t2) = a
        .send(
            Method::POST,
            &format!("/channels/{cid}/threads"),
            json!({"name": "other", "type": 11}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t2}");

    // Nicknames and role changes; Bob cannot rename Alice.
    let (s, v) = b
        .send(
            Method::PATCH,
            &format!("/guilds/{gid}/members/@me"),
            json!({"nick": "bobby"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["nick"], "bobby");
    let alice_id = a.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = b
        .send(
            Method::PATCH,
            &format!("/guilds/{gid}/members/{alice_id}"),
            json!({"nick": "x"}),
        )
        .await;
    assert_code(s, &v, StatusCode::FORBIDDEN, 50013);
    let (_, role) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/roles"),
            json!({"name": "r"}),
        )
        .await;
    let rid = role["id"].as_str().unwrap().to_owned();
    let (s, v) = a
        .send(
            Method::PATCH,
            &format!("/guilds/{gid}/roles/{rid}"),
            json!({"name": "renamed", "hoist": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["hoist"], true);
    let (s, v) = a
        .send(
            Method::PATCH,
            &format!("/guilds/{gid}/members/{bob_id}"),
            json!({"roles": [rid]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["roles"], json!([rid]));
    assert_eq!(
        a.empty(Method::DELETE, &format!("/guilds/{gid}/roles/{rid}"))
            .await,
        StatusCode::NO_CONTENT
    );

    // Kick: Bob is gone from the guild.
    assert_eq!(
        a.empty(Method::DELETE, &format!("/guilds/{gid}/members/{bob_id}"))
            .await,
        StatusCode::NO_CONTENT
    );
    let (s, v) = a.get(&format!("/guilds/{gid}/members/{bob_id}")).await;
    assert_code(s, &v, StatusCode::NOT_FOUND, 10007);
}

/// Parses a REST answer as twilight's model type, failing with the JSON shown.
fn parse<T: serde::de::DeserializeOwned>(what: &str, v: &Value) -> T {
    serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as twilight's model: {e}\n{v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_objects_parse_as_twilight_models() {
    use twilight_model::channel::{Channel, Message};
    use twilight_model::guild::invite::Invite;
    use twilight_model::guild::{Ban, Guild, Member, Role};
    use twilight_model::oauth::Application;
    use twilight_model::user::{CurrentUser, User};

    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let (_, me) = a.get("/users/@me").await;
    let _: CurrentUser = parse("users/@me", &me);
    let (_, app) = a.get("/oauth2/applications/@me").await;
    let _: Application = parse("oauth2/applications/@me", &app);
    let (_, u) = a
        .get(&format!("/users/{}", me["id"].as_str().unwrap()))
        .await;
    let _: User = parse("users/{id}", &u);

    let (_, g) = a
        .send(
            Method::POST,
            "/guilds",
            json!({"name": "Models", "public": true}),
        )
        .await;
    let gid = g["id"].as_str().unwrap().to_owned();
    let _: Guild = parse("POST guilds", &g);
    let (_, g) = a.get(&format!("/guilds/{gid}?with_counts=true")).await;
    let _: Guild = parse("guilds/{id}", &g);
    let bob_id = b.get("/users/@me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.call(
        Method::PUT,
        &format!("/guilds/{gid}/members/{bob_id}"),
        None,
    )
    .await;
    let (_, members) = a.get(&format!("/guilds/{gid}/members?limit=5")).await;
    let _: Vec<Member> = parse("guilds/{id}/members", &members);
    let (_, roles) = a.get(&format!("/guilds/{gid}/roles")).await;
    let _: Vec<Role> = parse("guilds/{id}/roles", &roles);
    let (_, chans) = a.get(&format!("/guilds/{gid}/channels")).await;
    let chans: Vec<Channel> = parse("guilds/{id}/channels", &chans);
    let cid = chans[0].id;

    let (_, m) = b
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages"),
            json!({"content": "hi @alice"}),
        )
        .await;
    let msg: Message = parse("POST messages", &m);
    let mid = msg.id;
    a.empty(
        Method::PUT,
        &format!("/channels/{cid}/messages/{mid}/reactions/%F0%9F%91%8D/@me"),
    )
    .await;
    let (_, m) = a
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages"),
            json!({"content": "reply", "message_reference": {"message_id": mid.to_string()}}),
        )
        .await;
    let reply: Message = parse("POST messages (reply)", &m);
    assert_eq!(reply.reference.and_then(|r| r.message_id), Some(mid));
    let (_, list) = a.get(&format!("/channels/{cid}/messages")).await;
    let list: Vec<Message> = parse("GET messages", &list);
    assert!(list.iter().any(|m| m.id == mid && !m.reactions.is_empty()));
    let (_, t) = a
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages/{mid}/threads"),
            json!({"name": "thread"}),
        )
        .await;
    let _: Channel = parse("POST threads", &t);
    let (_, inv) = a
        .send(Method::POST, &format!("/channels/{cid}/invites"), json!({}))
        .await;
    let _: Invite = parse("POST invites", &inv);
    a.call(
        Method::PUT,
        &format!("/guilds/{gid}/bans/{bob_id}"),
        Some(json!({})),
    )
    .await;
    let (_, bans) = a.get(&format!("/guilds/{gid}/bans")).await;
    let _: Vec<Ban> = parse("guilds/{id}/bans", &bans);
    let (_, dms) = b
        .send(
            Method::POST,
            "/users/@me/channels",
            json!({"recipient_id": me["id"]}),
        )
        .await;
    let _: Channel = parse("POST users/@me/channels", &dms);
}

/// A message in a guild channel carries its author's `member` (roles without @everyone, joined_at in
/// Discord's long form, nick when set), from creation through edits and reads; a DM's carries none, nor does
/// one whose author has left the guild. twilight still parses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guild_messages_carry_their_authors_member() {
    use twilight_model::channel::Message;
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let id_of = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let alice_id = id_of(&a.get("/users/@me").await.1);
    let bob_id = id_of(&b.get("/users/@me").await.1);
    let (s, g) = a
        .send(
            Method::POST,
            "/guilds",
            json!({"name": "Team", "public": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = id_of(&g);
    let (s, ch) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/channels"),
            json!({"name": "plans"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ch}");
    let cid = id_of(&ch);
    let (s, role) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/roles"),
            json!({"name": "mods"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{role}");
    let rid = id_of(&role);
    let s = a
        .empty(
            Method::PUT,
            &format!("/guilds/{gid}/members/{alice_id}/roles/{rid}"),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let (s, m) = a
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages"),
            json!({"content": "with my roles"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let member = &m["member"];
    assert_eq!(member["roles"], json!([rid]), "{m}");
    assert!(
        member["joined_at"].as_str().is_some_and(|t| t.len() >= 25),
        "{m}"
    );
    assert_eq!(member["deaf"], false);
    assert_eq!(member["mute"], false);
    assert_eq!(member["flags"], 0);
    let parsed: Message = parse("POST messages with a member", &m);
    let pm = parsed.member.expect("twilight reads the member");
    assert_eq!(pm.roles.len(), 1);
    assert!(pm.joined_at.is_some());
    let mid = id_of(&m);

    // An edit and a read carry it too.
    let (s, v) = a
        .send(
            Method::PATCH,
            &format!("/channels/{cid}/messages/{mid}"),
            json!({"content": "edited"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["member"]["roles"], json!([rid]), "{v}");
    let (s, list) = a.get(&format!("/channels/{cid}/messages")).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == json!(mid))
        .expect("the message")
        .clone();
    assert_eq!(listed["member"]["roles"], json!([rid]), "{listed}");

    // Bob joins: his message carries a member with no roles; once he leaves, his old message carries none.
    let (s, _, v) = b
        .call(
            Method::PUT,
            &format!("/guilds/{gid}/members/{bob_id}"),
            Some(json!({})),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, m) = b
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages"),
            json!({"content": "hi from bob"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["member"]["roles"], json!([]), "{m}");
    let bob_mid = id_of(&m);
    assert_eq!(
        b.empty(Method::DELETE, &format!("/users/@me/guilds/{gid}"))
            .await,
        StatusCode::NO_CONTENT
    );
    let (s, list) = a.get(&format!("/channels/{cid}/messages")).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let old = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == json!(bob_mid))
        .expect("bob's message")
        .clone();
    assert!(old.get("member").is_none(), "{old}");
    assert!(old["guild_id"].is_string(), "{old}");

    // A DM's message has no guild and no member.
    let (s, dm) = a
        .send(
            Method::POST,
            "/users/@me/channels",
            json!({"recipient_id": bob_id}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{dm}");
    let (s, m) = a
        .send(
            Method::POST,
            &format!("/channels/{}/messages", id_of(&dm)),
            json!({"content": "direct"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert!(
        m.get("member").is_none() && m.get("guild_id").is_none(),
        "{m}"
    );
}

/// An attachment is served only at its exact URL: a wrong or missing token, or a token for another id or
/// channel, is 404 (with or without an Authorization header), while the URL the message gives is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_urls_need_their_token() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#files"}))
        .await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#other"}))
        .await;
    let a = Bot::new(&server, &alice);
    let (_, c) = network_channel(&a, "files").await;
    let (_, other) = network_channel(&a, "other").await;
    let http = server.http();
    let upload = |name: &'static str| {
        let form = reqwest::multipart::Form::new()
            .text("payload_json", json!({"content": "f"}).to_string())
            .part(
                "files[0]",
                reqwest::multipart::Part::bytes(b"secret bytes".to_vec())
                    .file_name(name)
                    .mime_str("text/plain")
                    .expect("mime"),
            );
        http.post(format!("{}/api/v10/channels/{c}/messages", server.base))
            .header("authorization", format!("Bot {}", alice.token))
            .multipart(form)
            .send()
    };
    let first: Value = upload("a.txt")
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let second: Value = upload("b.txt")
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let file = &first["attachments"][0];
    let id = file["id"].as_str().unwrap().to_owned();
    let raw: u64 = id.parse().unwrap();
    assert!(raw > 0);
    let ms = (raw >> 22) + 1_420_070_400_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        ms.abs_diff(now) < 600_000,
        "the id's timestamp is the upload's: {id}"
    );
    let url = below_base(&server, file).to_owned();
    let parts: Vec<&str> = url.split('/').collect();
    assert_eq!(
        parts.len(),
        6,
        "/attachments/{{channel}}/{{id}}/{{token}}/{{name}}: {url}"
    );
    assert_eq!(
        (parts[2], parts[3], parts[5]),
        (c.as_str(), id.as_str(), "a.txt")
    );
    let token = parts[4];
    assert!(token.len() >= 32, "{url}");
    assert_eq!(file["proxy_url"], file["url"]);
    let second_url = below_base(&server, &second["attachments"][0]).to_owned();
    let second_token = second_url.split('/').nth(4).unwrap().to_owned();
    assert_ne!(token, second_token);

    let get = |path: String, auth: bool| {
        let mut req = http.get(format!("{}{path}", server.base));
        if auth {
            req = req.header("authorization", format!("Bot {}", alice.token));
        }
        req.send()
    };
    let r = get(url.clone(), false).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"secret bytes");
    let mut flipped = token.to_owned();
    let last = if flipped.ends_with('0') { "1" } else { "0" };
    flipped.replace_range(flipped.len() - 1.., last);
    for (what, path) in [
        (
            "a wrong token",
            format!("/attachments/{c}/{id}/{flipped}/a.txt"),
        ),
        ("no token", format!("/attachments/{c}/{id}/a.txt")),
        ("an empty token", format!("/attachments/{c}/{id}//a.txt")),
        (
            "another attachment's token",
            format!("/attachments/{c}/{id}/{second_token}/a.txt"),
        ),
        (
            "another channel",
            format!("/attachments/{other}/{id}/{token}/a.txt"),
        ),
        (
            "a neighbouring id",
            format!("/attachments/{c}/{}/{token}/a.txt", raw + 1),
        ),
    ] {
        for auth in [false, true] {
            let r = get(path.clone(), auth).await.expect("get");
            assert_eq!(
                r.status(),
                StatusCode::NOT_FOUND,
                "{what} (auth {auth}): {path}"
            );
        }
    }
    let r = get(url.clone(), true).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);

    // Deleting the message deletes its file: the URL is 404 and nothing of it stays on disk.
    let message = first["id"].as_str().unwrap();
    let stored = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("data/attachments").join(&c))
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    assert_eq!(stored(server.dir()), 4, "two files, each with its metadata");
    assert_eq!(
        a.empty(Method::DELETE, &format!("/channels/{c}/messages/{message}"))
            .await,
        StatusCode::NO_CONTENT
    );
    let r = get(url, false).await.expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(stored(server.dir()), 2, "only the second upload is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeds_can_be_sent_alone_and_edited_without_the_text() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#bots"}))
        .await;
    let a = Bot::new(&server, &alice);
    let (_, c) = network_channel(&a, "bots").await;
    // A bot's embed-only message is accepted, as on Discord.
    let (s, m) = a
        .send(
            Method::POST,
            &format!("/channels/{c}/messages"),
            json!({"embeds": [{"title": "status", "description": "starting"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["content"], "");
    assert_eq!(m["embeds"][0]["description"], "starting");
    let id = m["id"].as_str().unwrap().to_owned();
    // Nothing at all is still refused.
    let (s, v) = a
        .send(Method::POST, &format!("/channels/{c}/messages"), json!({}))
        .await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50006);

    // An edit of the embeds alone keeps the text; an edit of the text alone keeps the embeds.
    let (s, m) = a
        .send(
            Method::POST,
            &format!("/channels/{c}/messages"),
            json!({"content": "build", "embeds": [{"title": "old"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let second = m["id"].as_str().unwrap().to_owned();
    let (s, m) = a
        .send(
            Method::PATCH,
            &format!("/channels/{c}/messages/{second}"),
            json!({"embeds": [{"title": "new"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (&m["content"], &m["embeds"][0]["title"]),
        (&json!("build"), &json!("new"))
    );
    assert!(m["edited_timestamp"].is_string(), "{m}");
    let (_, m) = a
        .send(
            Method::PATCH,
            &format!("/channels/{c}/messages/{second}"),
            json!({"content": "build passed"}),
        )
        .await;
    assert_eq!(
        (&m["content"], &m["embeds"][0]["title"]),
        (&json!("build passed"), &json!("new"))
    );
    // `embeds: []` clears them; read back from the store.
    a.send(
        Method::PATCH,
        &format!("/channels/{c}/messages/{second}"),
        json!({"embeds": []}),
    )
    .await;
    let (s, m) = a.get(&format!("/channels/{c}/messages/{second}")).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["embeds"], json!([]), "{m}");
    assert_eq!(m["content"], "build passed");
    let (_, m) = a.get(&format!("/channels/{c}/messages/{id}")).await;
    assert_eq!(m["embeds"][0]["title"], "status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_register_and_login_keep_the_client_name() {
    let server = Server::start(&[]).await;
    let (s, v) = server
        .post(
            "/api/v10/auth/register",
            None,
            json!({"username": "alice", "password": "correct horse battery", "client": "my laptop"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().expect("token").to_owned();
    let (s, v) = server
        .post(
            "/api/v10/auth/login",
            None,
            json!({"login": "alice", "password": "correct horse battery", "client": "phone"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The account's stream names each device as it was given.
    let (s, v) = server
        .get("/api/v1/messages?after=0&timeout=0", Some(&token))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let names: Vec<&str> = v["messages"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["body"] == "client_created")
        .filter_map(|e| e["args"][0].as_str())
        .collect();
    assert_eq!(names, ["my laptop", "phone"], "{v}");
    // A bad name is refused, naming the field, and makes no account.
    let (s, v) = server
        .post(
            "/api/v10/auth/register",
            None,
            json!({"username": "bob", "password": "correct horse battery", "client": "  "}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["errors"]["client"].is_object(), "{v}");
    let (s, _) = server
        .post(
            "/api/v10/auth/login",
            None,
            json!({"login": "bob", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// Every route that reads a JSON body ignores a field it does not know, as Discord does: libraries send fields
/// we have no use for (discord.py sends `tts` on every edit). The table is every route of the router whose
/// handler reads a body (`Inner::form` and the multipart `payload_json`), each with a valid body plus a field
/// no route knows; a known field of the wrong type is still refused with 50035 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_body_fields_are_ignored_on_every_route() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let bob = server.register("bob", "correct horse battery").await;
    let a = Bot::new(&server, &alice);
    let b = Bot::new(&server, &bob);
    let (_, g) = a
        .send(
            Method::POST,
            "/guilds",
            json!({"name": "Fields", "public": true}),
        )
        .await;
    let gid = g["id"].as_str().expect("guild").to_owned();
    let bob_id = b.get("/users/@me").await.1["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let s = b
        .call(
            Method::PUT,
            &format!("/guilds/{gid}/members/{bob_id}"),
            None,
        )
        .await
        .0;
    assert!(s.is_success(), "{s}");
    let (_, ch) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/channels"),
            json!({"name": "talk"}),
        )
        .await;
    let cid = ch["id"].as_str().expect("channel").to_owned();
    let mut messages = Vec::new();
    for text in ["one", "two", "three", "four"] {
        let (s, m) = a
            .send(
                Method::POST,
                &format!("/channels/{cid}/messages"),
                json!({"content": text}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{m}");
        messages.push(m["id"].as_str().expect("id").to_owned());
    }
    let (_, role) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/roles"),
            json!({"name": "r"}),
        )
        .await;
    let rid = role["id"].as_str().expect("role").to_owned();

    let unknown = json!({"zzz_not_a_field": {"nested": [1, 2]}, "tts": false});
    let with_unknown = |body: Value| {
        let mut body = body;
        if let (Some(map), Some(extra)) = (body.as_object_mut(), unknown.as_object()) {
            for (k, v) in extra {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        body
    };
    // (method, path, valid body): the order matters only for the ban, which goes last.
    let routes: Vec<(Method, String, Value)> = vec![
        (
            Method::PATCH,
            "/users/@me".into(),
            json!({"global_name": "Al"}),
        ),
        (
            Method::POST,
            "/users/@me/channels".into(),
            json!({"recipient_id": bob_id}),
        ),
        (
            Method::POST,
            "/auth/register".into(),
            json!({"username": "carol", "password": "correct horse battery"}),
        ),
        (
            Method::POST,
            "/auth/login".into(),
            json!({"login": "carol", "password": "correct horse battery"}),
        ),
        (
            Method::PATCH,
            format!("/channels/{cid}"),
            json!({"topic": "t"}),
        ),
        (
            Method::POST,
            format!("/channels/{cid}/messages"),
            json!({"content": "more"}),
        ),
        (
            Method::PATCH,
            format!("/channels/{cid}/messages/{}", messages[0]),
            json!({"content": "edited"}),
        ),
        (
            Method::POST,
            format!("/channels/{cid}/messages/bulk-delete"),
            json!({"messages": [messages[2], messages[3]]}),
        ),
        (
            Method::POST,
            format!("/channels/{cid}/invites"),
            json!({"max_age": 0}),
        ),
        (
            Method::PUT,
            format!("/channels/{cid}/permissions/{bob_id}"),
            json!({"type": 1, "allow": "0", "deny": "0"}),
        ),
        (
            Method::POST,
            format!("/channels/{cid}/threads"),
            json!({"name": "alone", "type": 11}),
        ),
        (
            Method::POST,
            format!("/channels/{cid}/messages/{}/threads", messages[1]),
            json!({"name": "from a message"}),
        ),
        (Method::POST, "/guilds".into(), json!({"name": "Second"})),
        (
            Method::PATCH,
            format!("/guilds/{gid}"),
            json!({"name": "Renamed"}),
        ),
        (
            Method::POST,
            format!("/guilds/{gid}/channels"),
            json!({"name": "more"}),
        ),
        (
            Method::PATCH,
            format!("/guilds/{gid}/members/@me"),
            json!({"nick": "boss"}),
        ),
        (
            Method::PATCH,
            format!("/guilds/{gid}/members/{bob_id}"),
            json!({"nick": "b"}),
        ),
        (
            Method::POST,
            format!("/guilds/{gid}/roles"),
            json!({"name": "another"}),
        ),
        (
            Method::PATCH,
            format!("/guilds/{gid}/roles/{rid}"),
            json!({"name": "renamed"}),
        ),
        (
            Method::PUT,
            format!("/guilds/{gid}/bans/{bob_id}"),
            json!({"delete_message_seconds": 0}),
        ),
    ];
    for (method, path, body) in routes {
        let (s, v) = a.send(method.clone(), &path, with_unknown(body)).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
    }

    // The multipart form's payload_json too.
    let form = reqwest::multipart::Form::new()
        .text(
            "payload_json",
            with_unknown(json!({"content": "with a file"})).to_string(),
        )
        .part(
            "files[0]",
            reqwest::multipart::Part::bytes(b"hi".to_vec())
                .file_name("a.txt")
                .mime_str("text/plain")
                .expect("mime"),
        );
    let r = server
        .http()
        .post(format!("{}/api/v10/channels/{cid}/messages", server.base))
        .header("authorization", format!("Bot {}", alice.token))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::OK);

    // A known field of the wrong type is still refused, naming the field.
    let (s, v) = a
        .send(
            Method::PATCH,
            &format!("/channels/{cid}/messages/{}", messages[0]),
            json!({"content": 5, "tts": false}),
        )
        .await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 50035);
    assert!(v["errors"]["content"].is_object(), "{v}");
}

/// Attachment URLs in REST answers are absolute: under PUBLIC_URL when set, else under the request's Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_urls_in_answers_are_absolute() {
    for public in [None, Some("https://chat.example.org/")] {
        let env: Vec<(&str, &str)> = public.iter().map(|p| ("PUBLIC_URL", *p)).collect();
        let server = Server::start(&env).await;
        let alice = server.register("alice", "correct horse battery").await;
        server
            .ok(&alice, json!({"command": "JOIN", "to": "#files"}))
            .await;
        let a = Bot::new(&server, &alice);
        let (_, c) = network_channel(&a, "files").await;
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
        assert_eq!(r.status(), StatusCode::OK);
        let created: Value = r.json().await.expect("json");
        let id = created["id"].as_str().expect("id").to_owned();
        let base = public.map_or_else(
            || server.base.clone(),
            |p| p.trim_end_matches('/').to_owned(),
        );
        let (_, got) = a.get(&format!("/channels/{c}/messages/{id}")).await;
        let (_, list) = a.get(&format!("/channels/{c}/messages?limit=5")).await;
        for m in [&created, &got, &list[0]] {
            let file = &m["attachments"][0];
            let url = file["url"].as_str().expect("url");
            assert!(url.starts_with(&format!("{base}/attachments/")), "{m}");
            assert_eq!(file["proxy_url"], file["url"]);
        }
        // The Host the client used is the one it gets back (a proxy's own name, say).
        if public.is_none() {
            let r = server
                .http()
                .get(format!(
                    "{}/api/v10/channels/{c}/messages/{id}",
                    server.base
                ))
                .header("authorization", format!("Bot {}", alice.token))
                .header("host", "chat.internal:8443")
                .header("x-forwarded-proto", "https")
                .send()
                .await
                .expect("get");
            let m: Value = r.json().await.expect("json");
            let url = m["attachments"][0]["url"].as_str().expect("url");
            assert!(
                url.starts_with("https://chat.internal:8443/attachments/"),
                "{m}"
            );
        }
    }
}

/// A thread started from a message takes the message's id, as Discord's does; a second one from the same
/// message is refused with Discord's 160004.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_from_a_message_takes_its_id() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "correct horse battery").await;
    let a = Bot::new(&server, &alice);
    let (_, g) = a
        .send(Method::POST, "/guilds", json!({"name": "Threads"}))
        .await;
    let gid = g["id"].as_str().expect("guild").to_owned();
    let (_, ch) = a
        .send(
            Method::POST,
            &format!("/guilds/{gid}/channels"),
            json!({"name": "talk"}),
        )
        .await;
    let cid = ch["id"].as_str().expect("channel").to_owned();
    let (_, m) = a
        .send(
            Method::POST,
            &format!("/channels/{cid}/messages"),
            json!({"content": "start here"}),
        )
        .await;
    let mid = m["id"].as_str().expect("id").to_owned();
    let path = format!("/channels/{cid}/messages/{mid}/threads");
    let (s, t) = a.send(Method::POST, &path, json!({"name": "sub"})).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["id"], json!(mid), "{t}");
    let (s, by_id) = a.get(&format!("/channels/{mid}")).await;
    assert_eq!(s, StatusCode::OK, "{by_id}");
    assert_eq!(by_id["type"], 11);
    assert_eq!(by_id["parent_id"], json!(cid));
    let (s, v) = a
        .send(
            Method::POST,
            &format!("/channels/{mid}/messages"),
            json!({"content": "in the thread"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["channel_id"], json!(mid));

    let (s, v) = a.send(Method::POST, &path, json!({"name": "again"})).await;
    assert_code(s, &v, StatusCode::BAD_REQUEST, 160_004);
    // The message itself is still the message.
    let (s, v) = a.get(&format!("/channels/{cid}/messages/{mid}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["content"], "start here");
}
