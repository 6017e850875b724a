//! Abuse limits over HTTP (SPEC §8): failed logins are throttled per account and per address, and each address
//! may hold only so many connections. Also who may call the API from a browser (CORS).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Server;

/// A client whose connections come from `ip` (any 127.x address reaches the server on loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().ok())
        .build()
        .expect("client")
}

async fn login_from(
    client: &reqwest::Client,
    server: &Server,
    nick: &str,
    password: &str,
) -> (StatusCode, serde_json::Value) {
    let r = client
        .post(format!("{}/api/v1/login", server.base))
        .json(&json!({ "nick": nick, "password": password }))
        .send()
        .await
        .expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_account_and_address() {
    let server = Server::start(&[]).await;
    let bob = server.register("bob", "right password").await;
    server.register("carol", "her password").await;
    for _ in 0..5 {
        let (s, v) = server
            .post(
                "/api/v1/login",
                None,
                json!({"nick": "bob", "password": "wrong"}),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"], "invalid_credentials");
        assert_eq!(v["numeric"], 464);
    }
    // Each check takes a while (argon2, slower still in a debug build) and the bucket refills one try per
    // 12 s, so the attacker may get a try or two more before the pair is refused.
    let mut refused = false;
    for _ in 0..3 {
        let (s, v) = server
            .post(
                "/api/v1/login",
                None,
                json!({"nick": "bob", "password": "wrong"}),
            )
            .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            refused = true;
            break;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }
    assert!(refused, "the attacker's pair is refused");
    // The pair's bucket is empty: even the right password from this address waits now, and says how long.
    let (s, headers, v) = server
        .raw(
            reqwest::Method::POST,
            "/api/v1/login",
            None,
            Some(br#"{"nick":"bob","password":"right password"}"#.to_vec()),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"], "rate_limited");
    assert!(v["retry_after"].as_f64().is_some_and(|r| r > 0.0), "{v}");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    // The owner at another address is not locked out by the attacker's failures.
    let owner = client_from("127.0.0.2");
    for _ in 0..2 {
        let (s, v) = login_from(&owner, &server, "bob", "right password").await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // This address guessing another account is refused only by its own looser limit, not yet reached.
    let (s, v) = server
        .post(
            "/api/v1/login",
            None,
            json!({"nick": "carol", "password": "wrong"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // Existing sessions are untouched by the throttle.
    let (s, v) = server.get("/api/v1/state", Some(&bob.token)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Sends one request on a raw connection and says whether a whole `200` answer came back (the body read to
/// its `Content-Length`, so that the connection is ready for the next request).
async fn answers(stream: &mut TcpStream) -> bool {
    let request = b"GET /api/v1/server HTTP/1.1\r\nHost: x\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if got.len() >= end + 4 + length {
            return text.starts_with("HTTP/1.1 200");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let server = Server::start(&[("MAX_CONNECTIONS_PER_IP", "2")]).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut first = TcpStream::connect(&addr).await.expect("connect");
    let mut second = TcpStream::connect(&addr).await.expect("connect");
    assert!(answers(&mut first).await, "first connection served");
    assert!(answers(&mut second).await, "second connection served");
    let mut third = TcpStream::connect(&addr).await.expect("connect");
    assert!(
        !answers(&mut third).await,
        "a third connection from the same address is closed"
    );
    drop(first);
    // The slot comes back once the server sees the close.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut again = TcpStream::connect(&addr).await.expect("connect");
        if answers(&mut again).await {
            ok = true;
            break;
        }
    }
    assert!(ok, "a freed slot is usable again");
    assert!(
        answers(&mut second).await,
        "the open connection still works"
    );
}

/// A CORS preflight from `origin`: the `Access-Control-Allow-Origin` answered, if any.
async fn preflight(server: &Server, origin: &str) -> Option<String> {
    let resp = server
        .http()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/messages", server.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    resp.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().expect("ascii").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_an_allowlist_when_on() {
    let closed = Server::start(&[]).await;
    assert_eq!(preflight(&closed, "https://chat.example").await, None);

    let open = Server::start(&[(
        "CORS_ORIGINS",
        "https://chat.example, https://other.example",
    )])
    .await;
    assert_eq!(
        preflight(&open, "https://chat.example").await.as_deref(),
        Some("https://chat.example")
    );
    assert_eq!(
        preflight(&open, "https://other.example").await.as_deref(),
        Some("https://other.example")
    );
    assert_eq!(preflight(&open, "https://evil.example").await, None);
    // A real request from an allowed origin carries the header too, so the browser hands over the answer.
    let resp = open
        .http()
        .get(format!("{}/api/v1/server", open.base))
        .header("origin", "https://chat.example")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
}
