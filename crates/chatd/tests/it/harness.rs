//! Runs the real `chatd` binary on 127.0.0.1:0 over a temporary database, and talks to it with a real HTTP
//! client: what every long-poll integration test stands on.
#![allow(
    unreachable_pub,
    reason = "a test crate's modules share these items; `pub` is only read within it"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running chatd process and where it listens.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The database directory (kept across restarts).
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    /// In cluster mode (the `cluster` target): the nodes behind `base`.
    #[allow(dead_code, reason = "read by the cluster target's own tests")]
    pub nodes: Option<Box<crate::two_nodes::Nodes>>,
    /// The IRC door's address, when the server was started with IRC_LISTEN.
    #[allow(dead_code, reason = "read by the IRC tests of the `it` target only")]
    pub irc: Option<std::net::SocketAddr>,
}

impl Server {
    /// Starts chatd on a fresh temporary database, with the rate limit off unless `env` sets it.
    pub async fn start(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        Self::start_in(dir, env).await
    }

    /// Starts chatd on the database in `dir`; in cluster mode, two nodes on a fresh PostgreSQL database with
    /// their DATA_DIR in `dir`, behind a proxy that spreads the requests over them (see `two_nodes`).
    pub async fn start_in(dir: PathBuf, env: &[(&str, &str)]) -> Server {
        if crate::CLUSTER {
            return crate::two_nodes::start(dir, env).await;
        }
        Self::start_single(dir, env).await
    }

    /// Starts one chatd process on the database in `dir`, whatever the mode.
    pub async fn start_single(dir: PathBuf, env: &[(&str, &str)]) -> Server {
        let mut vars: Vec<(String, String)> = vec![
            ("LISTEN".into(), "127.0.0.1:0".into()),
            (
                "DBURL".into(),
                format!("sqlite://{}", dir.join("chat.db").display()),
            ),
            ("DATA_DIR".into(), dir.join("data").display().to_string()),
            ("RATE_LIMIT".into(), "off".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push(((*k).into(), (*v).into()));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        let mut server = Server {
            child: None,
            base: String::new(),
            dir,
            env: vars,
            http,
            nodes: None,
            irc: None,
        };
        server.spawn().await;
        server
    }

    /// The server of cluster mode: the proxy at `base` in front of `nodes`, no process of its own.
    pub(crate) fn front(base: String, nodes: crate::two_nodes::Nodes) -> Server {
        let dir = nodes.servers[0].dir.clone();
        Server {
            child: None,
            base,
            dir,
            env: Vec::new(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            nodes: Some(Box::new(nodes)),
            irc: None,
        }
    }

    async fn spawn(&mut self) {
        // CHATD_BIN runs another build of the binary (a target dir shared by several checkouts may hold
        // another's by the time the tests run).
        let bin = std::env::var("CHATD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chatd").into());
        let mut cmd = Command::new(bin);
        cmd.current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn chatd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("chatd did not start within 30 s")
            .expect("read stdout")
            .expect("chatd exited before listening");
        let base = line
            .strip_prefix("chatd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .trim()
            .to_owned();
        if self
            .env
            .iter()
            .any(|(k, v)| k == "IRC_LISTEN" && !v.is_empty())
        {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("chatd did not print the IRC address within 30 s")
                .expect("read stdout")
                .expect("chatd exited before listening for IRC");
            let addr = line
                .strip_prefix("chatd IRC listening on irc://")
                .unwrap_or_else(|| panic!("unexpected second line: {line}"));
            self.irc = Some(addr.trim().parse().expect("an IRC address"));
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.base = base;
        self.child = Some(child);
    }

    /// Whether the process is running (not killed or stopped by the test).
    pub fn child_alive(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs (to pause it with SIGSTOP).
    #[allow(dead_code, reason = "used by the cluster target's own tests")]
    pub fn child_pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and waits for it.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// The process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...) to the process, as `kill -SIG` does; panics if it is
    /// not running or the signal cannot be sent.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("a running chatd");
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid}: {status}");
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = child.id()?;
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("chatd did not exit within 20 s of SIGTERM")
            .expect("wait");
        status.code()
    }

    /// Starts the server again on the same database (after `kill9` or `terminate`). The port may change.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate().await;
        }
        self.spawn().await;
    }

    /// Stops the server gracefully and starts it again on the same database and the same address, so that
    /// clients holding its URL (a browser page) reconnect to it.
    pub async fn restart_in_place(&mut self) {
        let addr = self
            .base
            .strip_prefix("http://")
            .expect("an http base")
            .to_owned();
        self.env.retain(|(k, _)| k != "LISTEN");
        self.env.push(("LISTEN".into(), addr));
        self.restart().await;
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A raw request: method, path (with query), optional bearer token, optional body bytes.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(Duration::from_secs(60));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    /// GET with a token; returns status and JSON.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, _, v) = self.raw(Method::GET, path, token, None).await;
        (s, v)
    }

    /// POST JSON with a token; returns status and JSON.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self
            .raw(
                Method::POST,
                path,
                token,
                Some(body.to_string().into_bytes()),
            )
            .await;
        (s, v)
    }

    /// Starts a guest session, panicking unless it succeeds.
    pub async fn guest(&self, nick: &str) -> Client {
        let (s, v) = self
            .post("/api/v1/session", None, json!({ "nick": nick }))
            .await;
        assert_eq!(s, StatusCode::OK, "guest {nick}: {v}");
        Client::from_login(nick, &v)
    }

    /// Registers an account, panicking unless it succeeds.
    pub async fn register(&self, nick: &str, password: &str) -> Client {
        let (s, v) = self
            .post(
                "/api/v1/register",
                None,
                json!({ "nick": nick, "password": password }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "register {nick}: {v}");
        Client::from_login(nick, &v)
    }

    /// Logs in to an account as a new device, panicking unless it succeeds.
    pub async fn login(&self, nick: &str, password: &str) -> Client {
        let (s, v) = self
            .post(
                "/api/v1/login",
                None,
                json!({ "nick": nick, "password": password }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "login {nick}: {v}");
        Client::from_login(nick, &v)
    }

    /// Runs a command for a client; returns status and JSON.
    pub async fn cmd(&self, c: &Client, body: Value) -> (StatusCode, Value) {
        self.post("/api/v1/messages", Some(&c.token), body).await
    }

    /// Runs a command that must succeed; returns its seq.
    pub async fn ok(&self, c: &Client, body: Value) -> u64 {
        let (s, v) = self.cmd(c, body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{} {body}: {v}", c.nick);
        v["seq"].as_u64().expect("seq")
    }

    /// One long-poll from the client's own cursor (`after` = its last seen), holding up to `timeout` s;
    /// advances the client's cursor and returns the messages.
    pub async fn poll(&self, c: &mut Client, timeout: u64) -> Vec<Value> {
        let path = format!(
            "/api/v1/messages?after={}&timeout={timeout}&epoch={}",
            c.cursor, c.epoch
        );
        let (s, v) = self.get(&path, Some(&c.token)).await;
        assert_eq!(s, StatusCode::OK, "poll {}: {v}", c.nick);
        assert_ne!(
            v["reset"],
            json!(true),
            "unexpected reset for {}: {v}",
            c.nick
        );
        c.cursor = v["cursor"].as_u64().expect("cursor");
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Polls without waiting until the stream is empty; returns everything read.
    pub async fn drain(&self, c: &mut Client) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let batch = self.poll(c, 0).await;
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }
}

/// One device's credentials and stream position.
#[derive(Clone, Debug)]
pub struct Client {
    pub nick: String,
    pub token: String,
    pub cursor: u64,
    pub epoch: String,
}

impl Client {
    fn from_login(nick: &str, v: &Value) -> Client {
        Client {
            nick: nick.to_owned(),
            token: v["token"].as_str().expect("token").to_owned(),
            cursor: v["cursor"].as_u64().expect("cursor"),
            epoch: v["epoch"].as_str().expect("epoch").to_owned(),
        }
    }
}

/// The messages of one type.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

impl Server {
    /// A clone of the HTTP client, for tasks that talk to the server while the test restarts it.
    pub(crate) fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// One long-poll with an explicit `after` (none: the server-kept cursor) and `limit`, without touching
    /// the client; returns the whole answer (`{messages, cursor, epoch}` or `{reset, ...}`).
    pub(crate) async fn poll_raw(
        &self,
        c: &Client,
        after: Option<u64>,
        timeout: u64,
        limit: Option<usize>,
    ) -> Value {
        let mut path = format!("/api/v1/messages?timeout={timeout}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}&epoch={}", c.epoch));
        }
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        let (s, v) = self.get(&path, Some(&c.token)).await;
        assert_eq!(s, StatusCode::OK, "poll {}: {v}", c.nick);
        v
    }

    /// A conversation's whole history (`target` = `#channel` or a nick), oldest first, paging back with
    /// `before=` 100 at a time.
    pub(crate) async fn history_all(&self, token: &str, target: &str) -> Vec<Value> {
        let target = target.replace('#', "%23");
        let mut all: Vec<Value> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/history?target={target}&limit=100");
            if let Some(b) = &before {
                path.push_str(&format!("&before={b}"));
            }
            let (s, v) = self.get(&path, Some(token)).await;
            assert_eq!(s, StatusCode::OK, "history {target}: {v}");
            let page = v["messages"].as_array().cloned().unwrap_or_default();
            let full = page.len() == 100;
            let oldest = page
                .first()
                .and_then(|m| m["id"].as_str())
                .map(str::to_owned);
            all.splice(0..0, page);
            match oldest {
                Some(id) if full => {
                    assert_ne!(before.as_deref(), Some(id.as_str()), "history paging stuck");
                    before = Some(id);
                }
                _ => return all,
            }
        }
    }
}

/// One request that reports a failure to connect or to read the answer (the server was killed) as `Err`
/// instead of panicking: for tasks that keep talking to a server the test kills and restarts.
pub(crate) async fn try_request(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let mut req = http
        .request(method, format!("{base}{path}"))
        .timeout(timeout);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// A TCP relay between a client and chatd. The test can cut its connections without any WebSocket close
/// (what a network failure looks like to both ends), and move new connections to another address (a server
/// restarted on another port). A holding relay also waits, up to its hold, for the target to accept, so
/// that a restart looks like a slow connect, as behind a reverse proxy that retries its upstream.
pub struct Relay {
    /// `HOST:PORT` the client connects to.
    pub addr: String,
    /// Where new connections go (`HOST:PORT`).
    target: std::sync::Arc<std::sync::Mutex<String>>,
    /// The relayed connections, to cut.
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay that tries the target once per connection: refused there, refused here.
    pub async fn start(target: String) -> Relay {
        Self::holding(target, Duration::ZERO).await
    }

    /// A relay that retries the target every 20 ms for up to `hold` before giving a connection up.
    pub async fn holding(target: String, hold: Duration) -> Relay {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr").to_string();
        let target = Arc::new(Mutex::new(target));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let conns = Arc::clone(&conns);
            let target = Arc::clone(&target);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let target = Arc::clone(&target);
                    let task = tokio::spawn(async move {
                        let deadline = tokio::time::Instant::now() + hold;
                        loop {
                            let to = target.lock().expect("relay lock").clone();
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                                return;
                            }
                            if tokio::time::Instant::now() >= deadline {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    });
                    conns.lock().expect("relay lock").push(task.abort_handle());
                }
            }
        });
        Relay {
            addr,
            target,
            conns,
            accept,
        }
    }

    /// `http://HOST:PORT` of the relay.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: String) {
        *self.target.lock().expect("relay lock") = target;
    }

    /// Cuts every relayed connection: both sockets close at once, no close frame either way. Returns how
    /// many there were (finished ones included).
    pub fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().expect("relay lock"));
        for c in &conns {
            c.abort();
        }
        conns.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
