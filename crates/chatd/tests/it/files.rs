//! The life of uploaded files: every way a message goes (a REST delete or bulk delete, a long-poll DELETE, a
//! channel's or a space's deletion, the last member leaving a network channel, retention) removes its files
//! from DATA_DIR, and what a crash leaves
//! behind is found by `chatd check`, removed by `chatd check --fix` and by the sweep at start-up, while files
//! that messages hold stay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::harness::{Client, Server};

/// A Discord-style caller of `/api/v10` with a bot token.
struct Rest<'a> {
    server: &'a Server,
    token: String,
}

impl<'a> Rest<'a> {
    fn new(server: &'a Server, c: &Client) -> Self {
        Self {
            server,
            token: c.token.clone(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .server
            .http()
            .request(method, format!("{}/api/v10{path}", self.server.base))
            .header("authorization", format!("Bot {}", self.token))
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sends a message with one file to channel `c`; returns the message.
    async fn upload(&self, c: &str, content: &str, name: &str, bytes: &[u8]) -> Value {
        let (status, m) = self.try_upload(c, content, name, bytes).await;
        assert_eq!(status, StatusCode::OK, "{m}");
        assert_eq!(m["attachments"].as_array().map(Vec::len), Some(1), "{m}");
        m
    }

    async fn try_upload(
        &self,
        c: &str,
        content: &str,
        name: &str,
        bytes: &[u8],
    ) -> (StatusCode, Value) {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec())
            .file_name(name.to_owned())
            .mime_str("text/plain")
            .expect("mime");
        let form = reqwest::multipart::Form::new()
            .text("payload_json", json!({ "content": content }).to_string())
            .part("files[0]", part);
        let resp = self
            .server
            .http()
            .post(format!(
                "{}/api/v10/channels/{c}/messages",
                self.server.base
            ))
            .header("authorization", format!("Bot {}", self.token))
            .multipart(form)
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// The id of network channel `#name` (the caller is on it).
async fn network_channel(rest: &Rest<'_>, name: &str) -> String {
    let (_, guilds) = rest.call(Method::GET, "/users/@me/guilds", None).await;
    let guild = guilds[0]["id"].as_str().expect("a guild").to_owned();
    let (_, channels) = rest
        .call(Method::GET, &format!("/guilds/{guild}/channels"), None)
        .await;
    channels
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("#{name} in {channels}"))["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// A server with alice on `#files`; returns her and the channel's id.
async fn alice_on_files(server: &Server) -> (Client, String) {
    let alice = server.register("alice", "correct horse battery").await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#files"}))
        .await;
    let c = network_channel(&Rest::new(server, &alice), "files").await;
    (alice, c)
}

/// The stored files (bytes and record) of a message's attachments, from their URLs
/// (`.../attachments/{channel}/{id}/{token}/{name}`).
fn stored(server: &Server, message: &Value) -> Vec<PathBuf> {
    let root = server.dir().join("data").join("attachments");
    let mut out = Vec::new();
    for a in message["attachments"].as_array().expect("attachments") {
        let url = a["url"].as_str().expect("url");
        let path = &url[url.find("/attachments/").expect("an attachment url") + 13..];
        let parts: Vec<&str> = path.split('/').collect();
        let file = root
            .join(parts[0])
            .join(format!("{}-{}", parts[1], parts[2]));
        let mut record = file.clone().into_os_string();
        record.push(".json");
        out.push(file);
        out.push(PathBuf::from(record));
    }
    out
}

fn assert_present(paths: &[PathBuf]) {
    assert!(!paths.is_empty());
    for p in paths {
        assert!(p.is_file(), "{} should be stored", p.display());
    }
}

/// Waits until none of `paths` exists (files go right after the commit, beside the reply).
async fn assert_gone_soon(paths: &[PathBuf], within: Duration) {
    assert!(!paths.is_empty());
    let start = Instant::now();
    while paths.iter().any(|p| p.exists()) {
        assert!(
            start.elapsed() < within,
            "still on disk after {within:?}: {:?}",
            paths.iter().filter(|p| p.exists()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SOON: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_delete_removes_the_messages_file() {
    let server = Server::start(&[]).await;
    let (alice, c) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let doomed = a.upload(&c, "one", "a.txt", b"first").await;
    let kept = a.upload(&c, "two", "b.txt", b"second").await;
    let (doomed_files, kept_files) = (stored(&server, &doomed), stored(&server, &kept));
    assert_present(&doomed_files);
    let id = doomed["id"].as_str().unwrap();
    let (s, v) = a
        .call(
            Method::DELETE,
            &format!("/channels/{c}/messages/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_gone_soon(&doomed_files, SOON).await;
    assert_present(&kept_files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_bulk_delete_removes_every_messages_files() {
    let server = Server::start(&[]).await;
    let (alice, c) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let one = a.upload(&c, "one", "a.txt", b"first").await;
    let two = a.upload(&c, "two", "b.txt", b"second").await;
    let kept = a.upload(&c, "three", "c.txt", b"third").await;
    let mut doomed = stored(&server, &one);
    doomed.extend(stored(&server, &two));
    assert_present(&doomed);
    let (s, v) = a
        .call(
            Method::POST,
            &format!("/channels/{c}/messages/bulk-delete"),
            Some(json!({ "messages": [one["id"], two["id"]] })),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_gone_soon(&doomed, SOON).await;
    assert_present(&stored(&server, &kept));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_delete_removes_the_messages_file() {
    let server = Server::start(&[]).await;
    let (alice, c) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let doomed = a.upload(&c, "one", "a.txt", b"first").await;
    let kept = a.upload(&c, "two", "b.txt", b"second").await;
    let files = stored(&server, &doomed);
    assert_present(&files);
    server
        .ok(
            &alice,
            json!({"command": "DELETE", "to": "#files", "ref": doomed["id"]}),
        )
        .await;
    assert_gone_soon(&files, SOON).await;
    assert_present(&stored(&server, &kept));
}

/// A guild of alice's with one text channel; returns the guild's and the channel's ids.
async fn guild_with_channel(a: &Rest<'_>) -> (String, String) {
    let (s, g) = a
        .call(Method::POST, "/guilds", Some(json!({"name": "Files"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().unwrap().to_owned();
    let (s, ch) = a
        .call(
            Method::POST,
            &format!("/guilds/{gid}/channels"),
            Some(json!({"name": "shared"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ch}");
    (gid, ch["id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_delete_removes_its_files_and_its_threads_files() {
    let server = Server::start(&[]).await;
    let (alice, other) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let (_, cid) = guild_with_channel(&a).await;
    let m = a.upload(&cid, "in the channel", "a.txt", b"first").await;
    let (s, t) = a
        .call(
            Method::POST,
            &format!(
                "/channels/{cid}/messages/{}/threads",
                m["id"].as_str().unwrap()
            ),
            Some(json!({"name": "sub"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let tid = t["id"].as_str().unwrap().to_owned();
    let in_thread = a.upload(&tid, "in the thread", "b.txt", b"second").await;
    let elsewhere = a.upload(&other, "elsewhere", "c.txt", b"third").await;
    let mut doomed = stored(&server, &m);
    doomed.extend(stored(&server, &in_thread));
    assert_present(&doomed);
    let (s, v) = a
        .call(Method::DELETE, &format!("/channels/{cid}"), None)
        .await;
    assert!(s.is_success(), "{s} {v}");
    assert_gone_soon(&doomed, SOON).await;
    let root = server.dir().join("data").join("attachments");
    assert!(
        !root.join(&cid).exists(),
        "the channel's directory goes too"
    );
    assert!(!root.join(&tid).exists(), "and its thread's");
    assert_present(&stored(&server, &elsewhere));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_delete_removes_its_channels_files() {
    let server = Server::start(&[]).await;
    let (alice, other) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let (gid, cid) = guild_with_channel(&a).await;
    let m = a.upload(&cid, "in the guild", "a.txt", b"first").await;
    let elsewhere = a.upload(&other, "elsewhere", "c.txt", b"third").await;
    let doomed = stored(&server, &m);
    assert_present(&doomed);
    let (s, v) = a
        .call(Method::DELETE, &format!("/guilds/{gid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_gone_soon(&doomed, SOON).await;
    assert_present(&stored(&server, &elsewhere));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_channel_emptied_by_its_last_part_takes_its_files() {
    let server = Server::start(&[]).await;
    let (alice, c) = alice_on_files(&server).await;
    server
        .ok(&alice, json!({"command": "JOIN", "to": "#stays"}))
        .await;
    let a = Rest::new(&server, &alice);
    let stays = network_channel(&a, "stays").await;
    let doomed = stored(&server, &a.upload(&c, "one", "a.txt", b"first").await);
    let kept = stored(&server, &a.upload(&stays, "two", "b.txt", b"second").await);
    server
        .ok(&alice, json!({"command": "PART", "to": "#files"}))
        .await;
    assert_gone_soon(&doomed, SOON).await;
    assert_present(&kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_the_files_of_the_messages_it_trims() {
    let server = Server::start(&[("MAX_HISTORY", "2"), ("RETENTION_INTERVAL", "1")]).await;
    let (alice, c) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let old = a.upload(&c, "old", "a.txt", b"first").await;
    let doomed = stored(&server, &old);
    assert_present(&doomed);
    let (s, v) = a
        .call(
            Method::POST,
            &format!("/channels/{c}/messages"),
            Some(json!({"content": "newer"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let newest = a.upload(&c, "newest", "b.txt", b"second").await;
    // The pass runs every second; the oldest message is trimmed from the store and its file goes.
    assert_gone_soon(&doomed, Duration::from_secs(20)).await;
    let (_, history) = a
        .call(Method::GET, &format!("/channels/{c}/messages"), None)
        .await;
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != old["id"]),
        "the trimmed message is gone from history: {history}"
    );
    assert_present(&stored(&server, &newest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_leaves_no_file() {
    let server = Server::start(&[("MAX_MESSAGE_SIZE", "10")]).await;
    let (alice, c) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let (s, v) = a
        .try_upload(&c, "far longer than ten bytes", "a.txt", b"bytes")
        .await;
    assert!(s.is_client_error(), "{s} {v}");
    let dir = server.dir().join("data").join("attachments").join(&c);
    let start = Instant::now();
    while std::fs::read_dir(&dir).is_ok_and(|d| d.count() > 0) {
        assert!(start.elapsed() < SOON, "the refused message's file stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plants a file of chatd's naming that no message refers to, written an hour ago; returns its path.
fn plant_orphan(server: &Server, channel: &str) -> PathBuf {
    let dir = server.dir().join("data").join("attachments").join(channel);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("123456789-0123456789abcdef0123456789abcdef");
    std::fs::write(&path, b"nobody's").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    path
}

/// Starts an upload over a raw socket and stops sending half-way, so that its file is on disk while its
/// message is not sent; returns the socket (to keep it open) once the file exists, and the file.
async fn upload_in_flight(
    server: &Server,
    token: &str,
    channel: &str,
) -> (tokio::net::TcpStream, PathBuf) {
    let dir = server.dir().join("data").join("attachments").join(channel);
    let before: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let addr = server.base.strip_prefix("http://").unwrap();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v10/channels/{channel}/messages HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bot {token}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Content-Length: 100000\r\n\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"half.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&[7u8; 4096]).await.unwrap();
    sock.flush().await.unwrap();
    let start = Instant::now();
    loop {
        let fresh: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if let [file] = fresh.as_slice() {
            return (sock, file.clone());
        }
        assert!(start.elapsed() < SOON, "the upload's file never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `chatd check` (with `args`) on the server's database, which must be stopped; returns stdout.
fn check(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DBURL",
            format!("sqlite://{}", dir.join("chat.db").display()),
        )
        .env("DATA_DIR", dir.join("data"))
        .env("RUST_LOG", "warn")
        .arg("check")
        .args(args)
        .output()
        .expect("run chatd check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_orphan_files_and_fix_removes_only_them() {
    let mut server = Server::start(&[]).await;
    let (alice, c) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let live = stored(&server, &a.upload(&c, "kept", "a.txt", b"kept").await);
    let planted = plant_orphan(&server, &c);
    // A crash while an upload is in flight: its file is written, its message never sent.
    let (sock, in_flight) = upload_in_flight(&server, &alice.token, &c).await;
    server.kill9().await;
    drop(sock);

    let dir = server.dir().to_owned();
    let report = check(&dir, &[]);
    assert!(report.contains("attachment files: 2\n"), "{report}");
    for orphan in [&planted, &in_flight] {
        assert!(
            report.contains(&format!("orphan file: {}", orphan.display())),
            "{report}"
        );
    }
    assert!(report.contains("orphan files: 2 ("), "{report}");
    assert!(
        planted.exists() && in_flight.exists(),
        "check alone removes nothing"
    );

    let fixed = check(&dir, &["--fix"]);
    assert!(fixed.contains("orphan files: 2 removed"), "{fixed}");
    assert!(!planted.exists() && !in_flight.exists(), "{fixed}");
    assert_present(&live);
    let again = check(&dir, &[]);
    assert!(again.contains("orphan files: 0\n"), "{again}");
    assert!(again.contains("attachment files: 2\n"), "{again}");

    // The live file is still served after all this.
    server.restart().await;
    let a = Rest::new(&server, &alice);
    let (_, history) = a
        .call(Method::GET, &format!("/channels/{c}/messages"), None)
        .await;
    let url = history[0]["attachments"][0]["url"].as_str().unwrap();
    let path = &url[url.find("/attachments/").unwrap()..];
    let r = server
        .http()
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_sweeps_what_a_crash_left() {
    let mut server = Server::start(&[]).await;
    let (alice, c) = alice_on_files(&server).await;
    let a = Rest::new(&server, &alice);
    let live = stored(&server, &a.upload(&c, "kept", "a.txt", b"kept").await);
    let (sock, in_flight) = upload_in_flight(&server, &alice.token, &c).await;
    server.kill9().await;
    drop(sock);
    let planted = plant_orphan(&server, &c);
    // A directory of a channel that does not exist, holding a file of chatd's naming.
    let stray = plant_orphan(&server, "987654321");

    server.restart().await;
    assert_gone_soon(&[planted, in_flight, stray], SOON).await;
    assert_present(&live);
}
