//! The web client end to end: a real chatd serves `crates/chatd/web/`, and headless Chromium drives it
//! through every `tests/web/*.test.mjs` (run by `tests/web/run.mjs` with playwright-core). Needs Node.js,
//! Chromium (`$CHROMIUM` or `/usr/bin/chromium`) and `npm ci` in `tests/web`; a missing piece fails the
//! test with what to install, it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::harness::Server;

/// Longer than run.mjs's own global limit (300 s), so its report comes first.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);
const NPM_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("web")
}

/// Prints each line of `stream` as it comes (prefixed with `tag`) and returns them all.
async fn relay(stream: impl AsyncRead + Unpin, tag: &'static str) -> String {
    let mut lines = BufReader::new(stream).lines();
    let mut all = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{tag}{line}");
        all.push_str(&line);
        all.push('\n');
    }
    all
}

/// Installs the harness's npm dependencies when they are missing.
pub(crate) async fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules").join("playwright-core").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(NPM_TIMEOUT, status).await;
    match status {
        Ok(Ok(s)) if s.success() => {}
        other => panic!(
            "`npm ci` in {} failed ({other:?}); install Node.js and npm, then run `.ci/run` or `npm ci` in \
             that directory",
            dir.display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_end_to_end() {
    let dir = web_dir();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).is_file(),
        "no Chromium at {chromium}: install it (`apt-get install -y chromium`) or point $CHROMIUM at one"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "Node.js is required for the web client tests (`apt-get install -y nodejs npm`): {node:?}"
    );
    ensure_node_modules(&dir).await;

    // The server is linked to a second one, for the federation scenario.
    let federated = |name| {
        [
            ("FEDERATION_NAME", name),
            ("FEDERATION_KEY", "the web tests' key"),
            ("FEDERATION_HANDSHAKE_EVERY", "300ms"),
        ]
    };
    // And it runs the IRC door, on a port kept across the restarts the tests ask for.
    let irc_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let irc_listen = format!("127.0.0.1:{irc_port}");
    let mut env = federated("web.example").to_vec();
    env.push(("IRC_LISTEN", irc_listen.as_str()));
    let mut server = Server::start(&env).await;
    let peer = Server::start(&federated("peer.example")).await;
    crate::federation::link_add_at(&server, "peer.example", &peer.base, None);
    crate::federation::link_add_at(&peer, "web.example", &server.base, None);
    crate::federation::wait_state(&server, "peer.example", "up").await;
    crate::federation::wait_state(&peer, "web.example", "up").await;
    let mut child = Command::new("node")
        .arg("run.mjs")
        .current_dir(&dir)
        .env("CHATD_URL", &server.base)
        .env("CHATD_PEER_URL", &peer.base)
        .env("CHATD_IRC", &irc_listen)
        .env("CHROMIUM", &chromium)
        .env("CHATD_RESTART", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node run.mjs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let stderr = tokio::spawn(relay(child.stderr.take().expect("stderr"), "stderr: "));

    // Relay the runner's output, and restart chatd in place when a test asks (`t.restartServer()`).
    let run = async {
        let mut out = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{line}");
            if line.trim() == "@@chatd-restart" {
                server.restart_in_place().await;
                stdin
                    .write_all(b"@@chatd-restarted\n")
                    .await
                    .expect("tell the runner the server is back");
                stdin.flush().await.expect("flush");
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    };
    let out = match tokio::time::timeout(RUN_TIMEOUT, run).await {
        Ok(out) => out,
        Err(_) => {
            let _ = child.kill().await;
            panic!("node run.mjs did not finish within {RUN_TIMEOUT:?}");
        }
    };
    let status = child.wait().await.expect("wait for node run.mjs");
    let err = stderr.await.unwrap_or_default();
    assert!(
        status.success(),
        "web client tests failed ({status}) against {}:\n{out}{err}",
        server.base
    );
}
