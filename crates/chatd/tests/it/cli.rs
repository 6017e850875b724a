//! The binary's command line and process behaviour: subcommands on temporary databases, configuration from
//! flags, environment and `.env`, and a served process's health, metrics, connection cap and clean SIGTERM.
//! Every test runs the real `chatd` executable with a cleared environment in a temporary directory.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_chatd");

/// Every configuration variable of SPEC §7 plus the binary's own; `--help` must name each.
const VARIABLES: [&str; 31] = [
    "PORT",
    "LISTEN",
    "DBURL",
    "DATA_DIR",
    "DEBUG",
    "SERVER_NAME",
    "MOTD",
    "MAX_HISTORY",
    "MAX_MESSAGE_SIZE",
    "SESSION_IDLE_TIMEOUT",
    "QUEUE_MAX_AGE",
    "LONG_POLL_TIMEOUT",
    "NODE_ID",
    "DURABILITY",
    "RATE_LIMIT",
    "MAX_UPLOAD_SIZE",
    "METRICS_USERNAME",
    "METRICS_PASSWORD",
    "FEDERATION_KEY",
    "CORS_ORIGINS",
    "LOG_FORMAT",
    "MAX_CONNECTIONS_PER_IP",
    "GATEWAY_HEARTBEAT_INTERVAL",
    "PRESENCE_FANOUT_MAX",
    "PUBLIC_URL",
    "CLUSTER_LISTEN",
    "CLUSTER_ADVERTISE",
    "LEASE_TTL",
    "FEDERATION_NAME",
    "FEDERATION_HANDSHAKE_EVERY",
    "FEDERATION_RATE_LIMIT",
];

/// A `std::process::Command` for chatd in `dir`, with only PATH and the given variables in its environment
/// (so nothing from the test runner's environment leaks in) and the database at `dir/chat.db`.
fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DBURL",
            format!("sqlite://{}", dir.join("chat.db").display()),
        )
        .env("DATA_DIR", dir.join("data"))
        .env("RUST_LOG", "warn")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs chatd to completion with stdin closed.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(dir, args, env)
        .stdin(Stdio::null())
        .output()
        .expect("run chatd")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs chatd and insists it succeeded; returns stdout.
fn ok(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(dir, args, env);
    assert!(
        out.status.success(),
        "chatd {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The value of a `key: value` line of `check`'s report.
fn field(report: &str, key: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key:?} in the report:\n{report}"))
        .trim()
        .to_owned()
}

/// A served chatd: the child process and its base URL.
struct Served {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Served {
    async fn start(dir: &Path, env: &[(&str, &str)]) -> Served {
        let mut cmd = tokio::process::Command::from(command(dir, &[], env));
        cmd.env("LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn chatd");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("chatd did not print its address within 30 s")
            .expect("read stdout")
            .expect("chatd exited before listening");
        let addr = line
            .strip_prefix("chatd listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        assert_ne!(port, 0, "the printed address must be the bound one");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Served {
            child,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("request")
    }

    /// Sends SIGTERM; returns the exit code and how long the process took to exit.
    async fn terminate(mut self) -> (Option<i32>, Duration) {
        let pid = self.child.id().expect("pid");
        let sent = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("chatd did not exit within 20 s of SIGTERM")
            .expect("wait");
        (exit.code(), sent.elapsed())
    }
}

#[test]
fn version_is_the_crate_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["--version"], &[]);
    assert_eq!(out.trim(), format!("chatd {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_documents_every_variable_and_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(dir.path(), &["--help"], &[]);
    for var in VARIABLES {
        assert!(
            help.contains(&format!("[env: {var}")),
            "--help does not document {var}:\n{help}"
        );
    }
    for sub in [
        "serve", "init", "migrate", "admin", "invite", "link", "seed", "backup", "check",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help does not list {sub}"
        );
    }
    // Defaults are shown.
    for default in [
        "[default: 8080]",
        "[default: sqlite://./data.db]",
        "[default: 20/5]",
    ] {
        assert!(help.contains(default), "--help lacks {default}");
    }
    // Secrets set in the environment are not echoed by --help.
    let help = ok(
        dir.path(),
        &["--help"],
        &[("METRICS_PASSWORD", "hunter2"), ("FEDERATION_KEY", "k3y")],
    );
    assert!(!help.contains("hunter2") && !help.contains("k3y"));
}

#[test]
fn bad_values_fail_naming_their_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("PORT", "99999"),
        ("LISTEN", "not an address"),
        ("DBURL", "mysql://localhost/chat"),
        ("DEBUG", "maybe"),
        ("MAX_HISTORY", "-1"),
        ("PRESENCE_FANOUT_MAX", "many"),
        ("MAX_MESSAGE_SIZE", "lots"),
        ("SESSION_IDLE_TIMEOUT", "forever"),
        ("QUEUE_MAX_AGE", "0"),
        ("LONG_POLL_TIMEOUT", "31"),
        ("LONG_POLL_TIMEOUT", "0"),
        ("NODE_ID", "1024"),
        ("DURABILITY", "sometimes"),
        ("RATE_LIMIT", "fast"),
        ("RATE_LIMIT", "0/5"),
        ("MAX_UPLOAD_SIZE", "big"),
        ("CORS_ORIGINS", "example.com"),
        ("LOG_FORMAT", "xml"),
        ("MAX_CONNECTIONS_PER_IP", "0"),
        ("GATEWAY_HEARTBEAT_INTERVAL", "2m"),
        ("METRICS_USERNAME", "prom"),
        ("PUBLIC_URL", "chat.example.org"),
        ("PUBLIC_URL", "https://chat.example.org/?x"),
        ("FEDERATION_NAME", "Chat.Example"),
        ("FEDERATION_NAME", "nick@server"),
        ("FEDERATION_HANDSHAKE_EVERY", "never"),
        ("FEDERATION_RATE_LIMIT", "off"),
        ("FEDERATION_RATE_LIMIT", "0/5"),
    ];
    for (var, value) in cases {
        let out = run(dir.path(), &["check"], &[(var, value)]);
        assert!(
            !out.status.success(),
            "{var}={value} was accepted: {}",
            stdout(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains(var) || (*var == "METRICS_USERNAME" && err.contains("METRICS_PASSWORD")),
            "the error for {var}={value} does not name it: {err}"
        );
    }
    assert!(
        !dir.path().join("chat.db").exists(),
        "a bad configuration must not create a database"
    );
}

#[test]
fn flags_beat_environment_which_beats_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["init"], &[]);
    std::fs::write(dir.path().join(".env"), "NODE_ID=5000\n").unwrap();
    // The .env value is read (and refused)...
    let out = run(dir.path(), &["check"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NODE_ID"), "{}", stderr(&out));
    // ...unless the environment sets the variable...
    ok(dir.path(), &["check"], &[("NODE_ID", "7")]);
    // ...and a flag wins over both.
    ok(
        dir.path(),
        &["--node-id", "3", "check"],
        &[("NODE_ID", "oops")],
    );
}

#[test]
fn init_then_check_reports_the_database() {
    let dir = tempfile::tempdir().unwrap();
    // check refuses a database that does not exist rather than creating an empty one.
    let out = run(dir.path(), &["check"], &[]);
    assert!(!out.status.success());
    assert!(!dir.path().join("chat.db").exists());

    let init = ok(dir.path(), &["init"], &[]);
    assert!(init.contains("initialized"), "{init}");
    assert!(dir.path().join("chat.db").exists());
    assert!(dir.path().join("data").is_dir(), "init creates DATA_DIR");
    let again = ok(dir.path(), &["init"], &[]);
    assert!(again.contains("already initialized"), "{again}");

    let report = ok(dir.path(), &["check"], &[]);
    assert!(report.trim_end().ends_with("ok"), "{report}");
    assert!(field(&report, "schema version").parse::<u32>().unwrap() >= 1);
    assert!(field(&report, "epoch").parse::<u64>().is_ok());
    assert!(
        field(&report, "last seq").parse::<u64>().unwrap() >= 1,
        "genesis is logged"
    );
    assert_eq!(field(&report, "users"), "0");
    assert_eq!(field(&report, "messages"), "0");

    let migrate = ok(dir.path(), &["migrate"], &[]);
    assert!(migrate.contains("schema version"), "{migrate}");
}

/// Records the log's format version in the database at `dir/chat.db`, or with `None` removes it, as a
/// database written by chatd 0.1 (format 1, the same encoding as today's) has none.
fn record_format(dir: &Path, version: Option<u32>) {
    let c = rusqlite::Connection::open(dir.join("chat.db")).unwrap();
    match version {
        Some(v) => c.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('format_version', ?1)",
            [v],
        ),
        None => c.execute("DELETE FROM meta WHERE key = 'format_version'", []),
    }
    .unwrap();
}

/// Starts `chatd` (serve) and insists that it exits by itself, refusing to start; returns its stderr.
fn refused_to_serve(dir: &Path) -> String {
    let mut child = command(dir, &[], &[("LISTEN", "127.0.0.1:0")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chatd served a database it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    stderr(&out)
}

#[test]
fn an_older_log_format_is_refused_until_migrated_and_a_newer_one_always() {
    let current = chat_store::format::FORMAT_VERSION;
    let newer = current + 1;
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["init"], &[]);
    ok(
        dir.path(),
        &[
            "admin",
            "create-user",
            "alice",
            "--password",
            "secret-enough",
        ],
        &[],
    );
    let report = ok(dir.path(), &["check"], &[]);
    assert_eq!(field(&report, "log format version"), current.to_string());

    // As chatd 0.1 left it: refused at start, by check and by admin, with both versions and what to do. Its
    // snapshots, written in today's encoding, would not read as format 1's (a user has gained a field since):
    // they go, and the log, whole in a new database, is what is converted. (chat-store's format tests convert
    // snapshots written in each older encoding.)
    record_format(dir.path(), None);
    rusqlite::Connection::open(dir.path().join("chat.db"))
        .unwrap()
        .execute("DELETE FROM snapshots", [])
        .unwrap();
    let served = refused_to_serve(dir.path());
    for needle in ["version 1", &format!("({current})"), "chatd migrate"] {
        assert!(served.contains(needle), "{needle:?} not in {served}");
    }
    let checked = run(dir.path(), &["check"], &[]);
    assert!(!checked.status.success());
    assert!(
        stderr(&checked).contains("chatd migrate"),
        "{}",
        stderr(&checked)
    );
    // The backup the message asks for is taken as it is.
    let copy = dir.path().join("before-migrate.db");
    ok(dir.path(), &["backup", copy.to_str().unwrap()], &[]);
    assert!(copy.exists());

    let migrated = ok(dir.path(), &["migrate"], &[]);
    assert!(
        migrated.contains(&format!(
            "log format version {current} (converted from format version 1)"
        )),
        "{migrated}"
    );
    let report = ok(dir.path(), &["check"], &[]);
    assert_eq!(field(&report, "log format version"), current.to_string());
    assert_eq!(field(&report, "users"), "1", "alice came through");
    let again = ok(dir.path(), &["migrate"], &[]);
    assert!(!again.contains("converted"), "{again}");

    // Written by a newer chatd: refused everywhere, migrate included, with what to do.
    record_format(dir.path(), Some(newer));
    let served = refused_to_serve(dir.path());
    for needle in [
        format!("version {newer}"),
        format!("({current})"),
        "upgrade chatd".to_owned(),
    ] {
        assert!(served.contains(&needle), "{needle:?} not in {served}");
    }
    let migrate = run(dir.path(), &["migrate"], &[]);
    assert!(!migrate.status.success());
    assert!(
        stderr(&migrate).contains("upgrade chatd"),
        "{}",
        stderr(&migrate)
    );
}

#[test]
fn check_fails_on_a_damaged_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chat.db"),
        b"this is not a sqlite database at all, not even close",
    )
    .unwrap();
    let out = run(dir.path(), &["check"], &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(!stdout(&out).contains("\nok"));
}

#[test]
fn admin_create_bot_prints_a_working_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(
        dir.path(),
        &["admin", "create-bot", "robot", "--password", "bot-secret"],
        &[],
    );
    let token = out.trim();
    assert_eq!(token.len(), 64, "one 64-hex-digit token on stdout: {out:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // The nick is taken now.
    let again = run(
        dir.path(),
        &[
            "admin",
            "create-bot",
            "robot",
            "--password",
            "another-secret",
        ],
        &[],
    );
    assert!(!again.status.success());
    let report = ok(dir.path(), &["check"], &[]);
    assert_eq!(field(&report, "bots"), "1");
    assert_eq!(field(&report, "users"), "0");
}

#[tokio::test]
async fn admin_users_and_passwords_work_against_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    // Password from CHATD_PASSWORD, then from stdin.
    ok(
        path,
        &["admin", "create-user", "alice"],
        &[("CHATD_PASSWORD", "first-pw")],
    );
    let mut child = command(path, &["admin", "create-user", "bob"], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"bob-password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // No password at all is an error, not an empty password.
    let none = run(path, &["admin", "create-user", "carol"], &[]);
    assert!(!none.status.success());
    ok(
        path,
        &["admin", "set-password", "alice", "--password", "second-pw"],
        &[],
    );
    let unknown = run(
        path,
        &[
            "admin",
            "set-password",
            "nobody",
            "--password",
            "whatever-pw",
        ],
        &[],
    );
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("nobody"), "{}", stderr(&unknown));
    // The password rule holds here as on every door, and says what it is.
    for (args, why) in [
        (
            ["admin", "create-user", "carol", "--password", "short"],
            "at least 8 characters",
        ),
        (
            ["admin", "set-password", "alice", "--password", "iloveyou"],
            "most common",
        ),
    ] {
        let refused = run(path, &args, &[]);
        assert!(!refused.status.success());
        assert!(stderr(&refused).contains(why), "{}", stderr(&refused));
    }

    let served = Served::start(path, &[]).await;
    let login = |nick: &'static str, password: &'static str| {
        let http = served.http.clone();
        let url = served.url("/api/v1/login");
        async move {
            http.post(url)
                .json(&json!({ "nick": nick, "password": password }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(login("alice", "second-pw").await, StatusCode::OK);
    assert_eq!(login("alice", "first-pw").await, StatusCode::UNAUTHORIZED);
    assert_eq!(login("bob", "bob-password").await, StatusCode::OK);
    let (code, _) = served.terminate().await;
    assert_eq!(code, Some(0));
    // create-user and set-password left no client behind: the only clients are the two logins above, and
    // `check` sees exactly two accounts.
    let report = ok(path, &["check"], &[]);
    assert_eq!(field(&report, "users"), "2");
}

#[test]
fn seed_invite_backup_and_check_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let missing = run(path, &["invite", "create", "--channel", "#general"], &[]);
    assert!(!missing.status.success(), "no such channel yet");
    let seeded = ok(
        path,
        &[
            "seed",
            "--users",
            "12",
            "--spaces",
            "2",
            "--messages",
            "150",
        ],
        &[],
    );
    assert!(seeded.contains("seeded 12 users"), "{seeded}");
    let code = ok(
        path,
        &[
            "invite",
            "create",
            "--channel",
            "#general",
            "--max-uses",
            "5",
        ],
        &[],
    );
    assert!(
        !code.trim().is_empty() && !code.trim().contains(char::is_whitespace),
        "one code on stdout: {code:?}"
    );
    let report = ok(path, &["check"], &[]);
    assert_eq!(field(&report, "users"), "12");
    assert_eq!(field(&report, "spaces"), "2");
    assert_eq!(field(&report, "messages"), "150");

    let copy = path.join("backup").join("copy.db");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    ok(path, &["backup", copy.to_str().unwrap()], &[]);
    assert!(copy.exists());
    // backup never overwrites.
    let again = run(path, &["backup", copy.to_str().unwrap()], &[]);
    assert!(!again.status.success());
    let copied = ok(path, &["--db", copy.to_str().unwrap(), "check"], &[]);
    assert_eq!(field(&copied, "last seq"), field(&report, "last seq"));
    assert_eq!(field(&copied, "epoch"), field(&report, "epoch"));
    assert_eq!(field(&copied, "messages"), "150");
}

#[tokio::test]
async fn sigterm_answers_parked_polls_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[("DATA_DIR", "srv-data")]).await;
    assert!(
        dir.path().join("srv-data").is_dir(),
        "serve creates DATA_DIR"
    );

    let health = served.get("/.well-known/healthcheck.json").await;
    assert_eq!(health.status(), StatusCode::OK);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["last_seq"].as_u64().unwrap() >= 1);
    assert!(body["epoch"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(body["uptime_seconds"].is_u64());

    // One engine per database: an admin command beside the running server is refused, while an online
    // backup is fine.
    let beside = run(
        dir.path(),
        &[
            "admin",
            "create-user",
            "late",
            "--password",
            "late-password",
        ],
        &[],
    );
    assert!(
        !beside.status.success(),
        "a second engine on a served database"
    );
    assert!(stderr(&beside).contains("in use"), "{}", stderr(&beside));
    let live_copy = dir.path().join("live-copy.db");
    ok(dir.path(), &["backup", live_copy.to_str().unwrap()], &[]);
    assert!(live_copy.exists());

    let missing = served.get("/no/such/route").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].is_string());
    assert!(body["numeric"].is_null());

    // A guest parks a long-poll for 30 s; shutdown must answer it at once, not wait it out.
    let login: Value = served
        .http
        .post(served.url("/api/v1/session"))
        .json(&json!({ "nick": "sleeper" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().expect("token").to_owned();
    let poll = {
        let req = served
            .http
            .get(served.url("/api/v1/messages?timeout=30"))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(60));
        tokio::spawn(async move {
            let started = Instant::now();
            let status = req.send().await.map(|r| r.status());
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, took) = served.terminate().await;
    assert_eq!(code, Some(0), "a SIGTERM'd server exits 0");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let (status, waited) = poll.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "the parked poll was held {waited:?} instead of answered at shutdown ({status:?})"
    );
    // The database is whole afterwards.
    let report = ok(dir.path(), &["check"], &[]);
    assert!(report.trim_end().ends_with("ok"));
}

/// The port is taken before the database is loaded: a client reconnecting while the server starts (a bot
/// resuming after a restart) is not refused but waits, and is served once loading ends.
#[tokio::test]
async fn connections_made_while_the_database_loads_wait_instead_of_being_refused() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &[
            "seed",
            "--users",
            "50",
            "--spaces",
            "1",
            "--messages",
            "20000",
        ],
        &[("RATE_LIMIT", "off")],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let listen = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = tokio::process::Command::from(command(
        dir.path(),
        &["serve"],
        &[("LISTEN", listen.as_str())],
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("spawn");
    // Connect as early as possible, and send a request on the connection at once.
    let mut tcp = loop {
        match tokio::net::TcpStream::connect(&listen).await {
            Ok(tcp) => break tcp,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("never accepted: {e}"),
        }
    };
    let accepted = started.elapsed();
    {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(
            b"GET /.well-known/healthcheck.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    lines
        .read_line(&mut line)
        .await
        .expect("the listening line");
    let loaded = started.elapsed();
    assert!(line.starts_with("chatd listening on"), "{line}");
    assert!(
        accepted + Duration::from_millis(20) < loaded,
        "the port was taken only when loading ended: accepted after {accepted:?}, loaded after {loaded:?}"
    );
    let mut answer = String::new();
    {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut answer))
            .await
            .expect("an answer")
            .expect("read");
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = child.kill().await;
}

#[tokio::test]
async fn metrics_need_basic_auth_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &[("METRICS_USERNAME", "prom"), ("METRICS_PASSWORD", "s3cret")],
    )
    .await;
    let anonymous = served.get("/metrics").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous
        .headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Basic"), "{challenge}");
    for (user, password) in [("prom", "wrong"), ("other", "s3cret"), ("prom", "s3cre")] {
        let denied = served
            .http
            .get(served.url("/metrics"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(
            denied.status(),
            StatusCode::UNAUTHORIZED,
            "{user}:{password}"
        );
    }
    let allowed = served
        .http
        .get(served.url("/metrics"))
        .basic_auth("prom", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    let text = allowed.text().await.unwrap();
    assert!(
        text.contains("chatd_connections{transport=\"http\"}"),
        "{text}"
    );
    assert!(text.contains("# HELP chatd_connections "), "{text}");
    let (code, _) = served.terminate().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn metrics_are_open_without_credentials_and_count_commits() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[("DURABILITY", "relaxed")]).await;
    // One command through the engine so its histograms have samples, and one poll that reads the stream.
    let login: serde_json::Value = served
        .http
        .post(served.url("/api/v1/session"))
        .json(&json!({ "nick": "counter" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().expect("token");
    let polled = served
        .http
        .get(served.url("/api/v1/messages?timeout=0"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(polled, StatusCode::OK);
    let text = served.get("/metrics").await.text().await.unwrap();
    // Everything the operator is promised: commands and events (as counters, for rates), parked polls and
    // stream lag, besides the commit histograms below.
    for name in [
        "chatd_commands_total{outcome=\"ok\"}",
        "chatd_events_total",
        "chatd_longpoll_parked",
        "chatd_stream_lag_events_bucket",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(text.contains("chatd_commit_seconds_bucket"), "{text}");
    assert!(
        text.contains("le=\"0.0001\""),
        "commit buckets start at 100 µs:\n{text}"
    );
    assert!(text.contains("chatd_commit_batch_size_bucket"), "{text}");
    served.terminate().await;
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[("MAX_CONNECTIONS_PER_IP", "2")]).await;
    let addr = served.addr();
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // Give the server time to accept the two it keeps.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra_addr = addr.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let mut extra = TcpStream::connect(&extra_addr).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = extra.write_all(b"GET /.well-known/healthcheck.json HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        // Closed at once: end of stream (or a reset), never an HTTP answer, and no read timeout.
        match extra.read(&mut buf) {
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        }
    })
    .await
    .unwrap();
    assert!(
        refused,
        "a third connection from one address must be closed"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // With the two released, a request goes through, and the refusal was counted.
    let text = served.get("/metrics").await.text().await.unwrap();
    let refused_total = text
        .lines()
        .find_map(|l| l.strip_prefix("chatd_connections_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no refusal counter:\n{text}"));
    assert!(refused_total >= 1.0);
    let (code, _) = served.terminate().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn json_logs_and_memory_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::from(command(
        dir.path(),
        &[],
        &[
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("DBURL", "memory:"),
            ("FEDERATION_KEY", "reserved"),
            ("LISTEN", "127.0.0.1:0"),
        ],
    ));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("chatd listening on http://127.0.0.1:"),
        "{line}"
    );
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let logs = String::from_utf8_lossy(&output.stderr);
    let records: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        records.iter().any(|r| r["level"] == "WARN"
            && r["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("FEDERATION_KEY")),
        "FEDERATION_KEY is warned about:\n{logs}"
    );
    assert!(!logs.contains("reserved"), "the key itself is never logged");
    assert!(
        !dir.path().join("chat.db").exists(),
        "memory: writes no database file"
    );
}

/// The operator's commands on a PostgreSQL database: `init`, `admin`, `check`, `migrate` and `backup`
/// (which drives `pg_dump`) work there as they do on SQLite.
#[test]
fn operator_commands_work_on_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let url = test_postgres::server().fresh_db();
    let env = [("DBURL", url.as_str())];
    let out = ok(path, &["init"], &env);
    assert!(out.contains("initialized"), "{out}");
    assert!(!out.contains("already"), "{out}");
    let out = ok(path, &["init"], &env);
    assert!(out.contains("already initialized"), "{out}");
    ok(
        path,
        &[
            "admin",
            "create-user",
            "alice",
            "--password",
            "correct horse battery",
        ],
        &env,
    );
    let report = ok(path, &["check"], &env);
    assert_eq!(field(&report, "users"), "1", "{report}");
    let version = chat_store::POSTGRES_SCHEMA_VERSION.to_string();
    assert_eq!(field(&report, "schema version"), version, "{report}");
    let out = ok(path, &["migrate"], &env);
    assert!(out.contains(&format!("schema version {version}")), "{out}");
    // Links are kept in PostgreSQL too.
    ok(
        path,
        &["link", "add", "b.example", "http://127.0.0.1:9"],
        &env,
    );
    assert!(ok(path, &["link", "list"], &env).starts_with("b.example\t"));
    let backup = path.join("chat.dump");
    let out = ok(path, &["backup", backup.to_str().unwrap()], &env);
    assert!(out.contains("backed up"), "{out}");
    let bytes = std::fs::read(&backup).expect("a dump file");
    assert!(
        bytes.starts_with(b"PGDMP"),
        "a pg_dump custom-format archive"
    );
    // A second backup to the same path is refused, not overwritten.
    let again = run(path, &["backup", backup.to_str().unwrap()], &env);
    assert!(!again.status.success());
}

/// `link add|list|remove`: links are added once with a checked name and URL, listed with their cursor at
/// the log's end when added and without their keys, and removed; bad input changes nothing.
#[test]
fn link_add_list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    ok(path, &["init"], &[]);
    let out = ok(
        path,
        &["link", "add", "b.example", "http://127.0.0.1:9002/"],
        &[("CHATD_LINK_KEY", "s3cret-for-b")],
    );
    assert!(
        out.contains("linked to b.example at http://127.0.0.1:9002 (its own key)"),
        "{out}"
    );
    let out = run(
        path,
        &["link", "add", "a.example", "https://a.example"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("FEDERATION_KEY is not set"),
        "a link without a key warns when FEDERATION_KEY is unset: {}",
        stderr(&out)
    );
    let list = ok(path, &["link", "list"], &[]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("a.example\thttps://a.example\tFEDERATION_KEY\tcursor "),
        "{list}"
    );
    assert!(
        lines[1].starts_with("b.example\thttp://127.0.0.1:9002\town key\tcursor "),
        "{list}"
    );
    // A new link starts at the log's end: init's genesis events are not relayed.
    let cursor: u64 = lines[1].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(cursor > 0, "{list}");
    assert!(!list.contains("s3cret"), "keys are never printed");
    for (args, why) in [
        (
            vec!["link", "add", "b.example", "http://elsewhere"],
            "exists already",
        ),
        (
            vec!["link", "add", "B.example", "http://x"],
            "is not a server name",
        ),
        (
            vec!["link", "add", "nick@c", "http://x"],
            "is not a server name",
        ),
        (
            vec!["link", "add", "c.example", "ftp://x"],
            "is not a server URL",
        ),
        (
            vec!["link", "add", "c.example", "http://u@x"],
            "is not a server URL",
        ),
        (
            vec!["link", "remove", "c.example"],
            "there is no link to c.example",
        ),
    ] {
        let out = run(path, &args, &[]);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        ok(path, &["link", "list"], &[]),
        list,
        "refused commands changed nothing"
    );
    let out = ok(path, &["link", "remove", "b.example"], &[]);
    assert!(out.contains("removed the link to b.example"), "{out}");
    let list = ok(path, &["link", "list"], &[]);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.starts_with("a.example\t"), "{list}");
}

/// A PostgreSQL database that cannot be reached is a clear error and a nonzero exit, not a panic.
#[test]
fn an_unreachable_postgresql_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://chatd:secret-pw@127.0.0.1:{port}/chat");
    let out = run(dir.path(), &["check"], &[("DBURL", url.as_str())]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("opening the database"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !err.contains("secret-pw"),
        "the password stays out of the error: {err}"
    );
}
