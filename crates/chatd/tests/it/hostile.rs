//! Hostile HTTP over raw TCP: connections that never finish a request head (slowloris) are closed after
//! HEADER_READ_TIMEOUT, idle keep-alive connections after KEEPALIVE_IDLE_TIMEOUT, while parked long-polls and
//! WebSockets outlive both; and every error the server writes, hyper's own refusals included, has the JSON
//! error shape.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::harness::Server;

/// Short timeouts, so that each test waits seconds; distinct, so that each test shows which one acted.
const HEADER: Duration = Duration::from_secs(2);
const IDLE: Duration = Duration::from_secs(5);

async fn start() -> Server {
    start_with(&[]).await
}

async fn start_with(env: &[(&str, &str)]) -> Server {
    let mut all = vec![
        ("HEADER_READ_TIMEOUT", "2s"),
        ("KEEPALIVE_IDLE_TIMEOUT", "5s"),
    ];
    all.extend_from_slice(env);
    Server::start(&all).await
}

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (end of stream or a reset), at most `cap`; returns how long
/// that took, or `None` if the connection was still open at `cap`.
async fn time_to_close(
    stream: &mut (impl AsyncReadExt + Unpin),
    cap: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = cap.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer (head, then a body of its `content-length`) from `stream`.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status line: {head:?}"));
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().expect("a length"));
            if got.len() >= end + 4 + length {
                let body = got[end + 4..end + 4 + length].to_vec();
                return Answer {
                    status,
                    headers,
                    body,
                };
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("an answer within 20 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `request` on a fresh connection and reads the answer. A write the server cut short (it refused
/// the head before reading it all) is not an error: the answer is what counts.
async fn exchange(server: &Server, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr(server)).await.expect("connect");
    let _ = stream.write_all(request).await;
    read_answer(&mut stream).await
}

/// Asserts `{"error": name, "message": text, "numeric": null}` and nothing else, served as JSON.
fn assert_error_shape(what: &str, answer: &Answer, status: u16, name: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{what}: {answer:?}"
    );
    let body: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("{what}: a JSON body ({e}): {answer:?}"));
    let object = body.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message", "numeric"], "{what}: {body}");
    assert_eq!(body["error"], name, "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    assert_eq!(body["numeric"], Value::Null, "{what}: {body}");
}

fn request(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_head_are_closed() {
    // Thirteen connections fill this address's slots, as a slowloris fills them all.
    let server = start_with(&[("MAX_CONNECTIONS_PER_IP", "13")]).await;
    // Ten that send nothing.
    let silent = (0..10).map(|_| {
        let addr = addr(&server);
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            time_to_close(&mut stream, Duration::from_secs(20)).await
        })
    });
    // Three that trickle a header line every second and never end the head.
    let trickling = (0..3).map(|_| {
        let addr = addr(&server);
        tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut read, mut write) = stream.into_split();
            let trickle = tokio::spawn(async move {
                if write
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                for i in 0..20 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if write
                        .write_all(format!("X-Line-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let closed = time_to_close(&mut read, Duration::from_secs(20)).await;
            trickle.abort();
            closed
        })
    });
    let silent: Vec<_> = silent.collect();
    let trickling: Vec<_> = trickling.collect();
    // While they are open, the address has no slot left: another connection is closed unanswered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refused = TcpStream::connect(addr(&server)).await.expect("connect");
    let _ = refused.write_all(&request("GET", "/api/v1/server")).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut buf))
        .await
        .expect("the refused connection is closed at once");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a connection over the cap was answered"
    );
    for (kind, task) in silent
        .into_iter()
        .map(|t| ("silent", t))
        .chain(trickling.into_iter().map(|t| ("trickling", t)))
    {
        let closed = task
            .await
            .expect("task")
            .unwrap_or_else(|| panic!("a {kind} connection still open after 20 s"));
        assert!(
            closed >= HEADER - Duration::from_millis(300) && closed < HEADER * 4,
            "a {kind} connection closed after {closed:?}, not about {HEADER:?}"
        );
    }
    // Once they are closed, their slots are free again.
    let answer = exchange(&server, &request("GET", "/api/v1/server")).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let server = start().await;
    let mut stream = TcpStream::connect(addr(&server)).await.expect("connect");
    let get = b"GET /api/v1/server HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(get).await.expect("write");
    assert_eq!(read_answer(&mut stream).await.status, 200);
    // Idle past the header timeout but within the idle one: still open, and serves.
    tokio::time::sleep(HEADER + Duration::from_secs(1)).await;
    stream.write_all(get).await.expect("write");
    assert_eq!(read_answer(&mut stream).await.status, 200);
    // Then idle past the idle timeout: closed.
    let closed = time_to_close(&mut stream, Duration::from_secs(30))
        .await
        .expect("an idle keep-alive connection still open after 30 s");
    assert!(
        closed >= IDLE - Duration::from_millis(300) && closed < IDLE * 3,
        "closed after {closed:?} idle, not about {IDLE:?}"
    );
    // A request begun after some idleness gets the header timeout from its first byte.
    let mut stream = TcpStream::connect(addr(&server)).await.expect("connect");
    stream.write_all(get).await.expect("write");
    assert_eq!(read_answer(&mut stream).await.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    let closed = time_to_close(&mut stream, Duration::from_secs(30))
        .await
        .expect("a half-sent head still open after 30 s");
    assert!(
        closed >= HEADER - Duration::from_millis(300) && closed < IDLE,
        "a half-sent head closed after {closed:?}, not about {HEADER:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_websockets_outlive_both_timeouts() {
    let server = start().await;
    let alice = server.register("alice", "correct horse").await;
    let mut poller = server.guest("poller").await;
    server.drain(&mut poller).await;
    let hold = IDLE + Duration::from_secs(2);

    let url = format!(
        "{}/gateway/?v=10&encoding=json",
        server.base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = connect_async(url).await.expect("connect");
    assert_eq!(next_json(&mut ws).await["op"], 10, "Hello");
    ws.send(Message::text(
        json!({"op": 2, "d": {
            "token": format!("Bot {}", alice.token),
            "intents": 1,
            "properties": {"os": "linux", "browser": "test", "device": "test"},
        }})
        .to_string(),
    ))
    .await
    .expect("identify");

    // A long-poll parked longer than both timeouts, while the socket sits silent as long.
    let started = Instant::now();
    let events = server.poll(&mut poller, hold.as_secs()).await;
    assert!(events.is_empty(), "{events:?}");
    assert!(
        started.elapsed() >= hold - Duration::from_millis(500),
        "the poll came back after {:?}, before its timeout",
        started.elapsed()
    );

    ws.send(Message::text(json!({"op": 1, "d": null}).to_string()))
        .await
        .expect("the WebSocket is still open");
    while next_json(&mut ws).await["op"] != 11 {}
}

/// The next text frame's JSON.
async fn next_json(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_outside_the_api_has_the_json_shape() {
    let server = Server::start(&[]).await;
    let mut table: Vec<(String, Vec<u8>, u16, &str)> = Vec::new();
    // Wrong methods on every path outside /api.
    for path in [
        "/",
        "/static/app.css",
        "/static/main.js",
        "/metrics",
        "/.well-known/healthcheck.json",
        "/gateway",
        "/gateway/",
        "/attachments/1/2/0123456789abcdef0123456789abcdef/a.txt",
    ] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            table.push((
                format!("{method} {path}"),
                request(method, path),
                405,
                "method_not_allowed",
            ));
        }
    }
    for (what, path, status, name) in [
        ("/gateway without Upgrade", "/gateway", 400, "bad_request"),
        (
            "/gateway/ without Upgrade",
            "/gateway/?v=10",
            400,
            "bad_request",
        ),
        ("a missing asset", "/static/nope.js", 404, "not_found"),
        (
            "the page under /static",
            "/static/index.html",
            404,
            "not_found",
        ),
        (
            "an asset path going up",
            "/static/../Cargo.toml",
            404,
            "not_found",
        ),
        ("an empty asset path", "/static/", 404, "not_found"),
        ("an unknown path", "/nowhere", 404, "not_found"),
    ] {
        table.push((what.to_owned(), request("GET", path), status, name));
    }
    let long_url = |len: usize| request("GET", &format!("/?q={}", "a".repeat(len)));
    table.push((
        "a 100 KB URL (hyper's refusal)".into(),
        long_url(100_000),
        414,
        "uri_too_long",
    ));
    table.push((
        "a 10 KB URL (over our limit)".into(),
        long_url(10_000),
        414,
        "uri_too_long",
    ));
    table.push((
        "100 KB in one header".into(),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(100_000)
        )
        .into_bytes(),
        431,
        "headers_too_large",
    ));
    let many: String = (0..1000)
        .map(|i| format!("X-Header-{i}: {}\r\n", "a".repeat(90)))
        .collect();
    table.push((
        "100 KB in 1000 headers (hyper's refusal)".into(),
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
        431,
        "headers_too_large",
    ));
    table.push((
        "a malformed request line".into(),
        b"GARBAGE\r\n\r\n".to_vec(),
        400,
        "bad_request",
    ));
    table.push((
        "a header line without a colon".into(),
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
        400,
        "bad_request",
    ));
    table.push((
        "a request line with a space in the path".into(),
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        400,
        "bad_request",
    ));
    for (what, bytes, status, name) in &table {
        let answer = exchange(&server, bytes).await;
        assert_error_shape(what, &answer, *status, name);
        if *status == 405 {
            assert!(answer.header("allow").is_some(), "{what}: no Allow");
        }
    }

    // The Discord REST API keeps Discord's shape.
    let answer = exchange(&server, &request("PUT", "/api/v10/users/@me")).await;
    assert_eq!(answer.status, 405);
    let body: Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(
        body,
        json!({"code": 0, "message": "405: Method Not Allowed"})
    );
    // Successes are untouched.
    let answer = exchange(&server, &request("GET", "/static/app.css")).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/css"))
    );
}

#[test]
fn the_timeouts_are_documented() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--help")
        .output()
        .expect("chatd --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let readme = include_str!("../../../../README.md");
    for (var, default) in [
        ("HEADER_READ_TIMEOUT", "10s"),
        ("KEEPALIVE_IDLE_TIMEOUT", "60s"),
    ] {
        assert!(
            help.contains(&format!("[env: {var}"))
                && help.contains(&format!("[default: {default}]")),
            "--help does not document {var}:\n{help}"
        );
        assert!(
            readme.contains(&format!("| `{var}` | `{default}` |")),
            "README's configuration table does not list {var}"
        );
    }
}
