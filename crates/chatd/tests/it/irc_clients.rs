//! A real IRC client from Debian's packages, `ii` (a FIFO and file based client, so it runs headless): it
//! connects with a password, joins, talks both ways with a long-poll user and a gateway user, quits, misses
//! messages, comes back and is played them, once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};

use crate::gateway::{ALL, Gw};
use crate::harness::Server;

struct Ii {
    child: Child,
    dir: PathBuf,
    server_dir: PathBuf,
}

impl Ii {
    async fn start(server: &Server, dir: &Path, nick: &str, password: &str) -> Ii {
        let addr = server.irc.expect("the IRC door");
        let child = Command::new("ii")
            .arg("-s")
            .arg(addr.ip().to_string())
            .arg("-p")
            .arg(addr.port().to_string())
            .arg("-n")
            .arg(nick)
            .arg("-i")
            .arg(dir)
            .arg("-k")
            .arg("IIPASS")
            .env("IIPASS", password)
            .kill_on_drop(true)
            .spawn()
            .expect("ii is installed (scripts/install-test-deps)");
        let server_dir = dir.join(addr.ip().to_string());
        let ii = Ii {
            child,
            dir: dir.to_owned(),
            server_dir,
        };
        // Registered once the welcome is in the server's out file.
        ii.wait_for("", "Welcome to the").await;
        ii
    }

    /// Writes a line to the `in` FIFO of `target` (a channel, or "" for the server).
    async fn say(&self, target: &str, text: &str) {
        let path = self.server_dir.join(target).join("in");
        let line = format!("{text}\n");
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut fifo = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open the in FIFO");
            fifo.write_all(line.as_bytes()).expect("write the in FIFO");
        })
        .await
        .expect("write");
    }

    fn out(&self, target: &str) -> String {
        std::fs::read_to_string(self.server_dir.join(target).join("out")).unwrap_or_default()
    }

    /// Waits (10 s at most) until `target`'s out file holds `needle`; returns the file.
    async fn wait_for(&self, target: &str, needle: &str) -> String {
        for _ in 0..200 {
            let out = self.out(target);
            if out.contains(needle) {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{needle:?} not in {}/{target}/out:\n{}",
            self.dir.display(),
            self.out(target)
        );
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ii_talks_with_the_other_doors_and_is_played_what_it_missed_once() {
    let server = Server::start(&[("IRC_LISTEN", "127.0.0.1:0")]).await;
    server.register("ivy", "a long enough password").await;
    let lena = server.guest("lena").await;
    let bot = server.register("botty", "a long enough password").await;
    server
        .ok(&lena, json!({"command": "JOIN", "to": "#real"}))
        .await;
    server
        .ok(&bot, json!({"command": "JOIN", "to": "#real"}))
        .await;
    let mut gw = Gw::connect(&server).await;
    gw.identify(&bot.token, ALL).await;
    let home = tempfile::tempdir().expect("temp dir");

    let ii = Ii::start(&server, home.path(), "ivy", "a long enough password").await;
    ii.say("", "/j #real").await;
    ii.wait_for("#real", "ivy").await;
    // The other doors to ii.
    server
        .ok(
            &lena,
            json!({"command": "PRIVMSG", "to": "#real", "body": "hi ivy"}),
        )
        .await;
    ii.wait_for("#real", "<lena> hi ivy").await;
    // ii to the other doors.
    ii.say("#real", "hello from ii").await;
    let mut poller = lena.clone();
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.extend(server.poll(&mut poller, 2).await);
        if seen.iter().any(|e| e["body"] == "hello from ii") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|e| e["body"] == "hello from ii" && e["from"] == "ivy"),
        "{seen:?}"
    );
    loop {
        let m = gw.until("MESSAGE_CREATE").await;
        if m["d"]["content"] == "hello from ii" {
            assert_eq!(m["d"]["author"]["username"], "ivy");
            break;
        }
    }
    let (status, _, _) = server
        .raw(
            reqwest::Method::POST,
            &format!(
                "/api/v10/channels/{}/messages",
                seen.iter().find(|e| e["body"] == "hello from ii").unwrap()["channel"]
                    .as_str()
                    .unwrap()
            ),
            Some(&bot.token),
            Some(json!({"content": "a bot says hi"}).to_string().into_bytes()),
        )
        .await;
    assert!(status.is_success(), "{status}");
    ii.wait_for("#real", "<botty> a bot says hi").await;

    // ii goes away; the channel goes on.
    ii.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..=3 {
        server.ok(&lena, json!({"command": "PRIVMSG", "to": "#real", "body": format!("while you were away {i}")})).await;
    }
    let ii = Ii::start(&server, home.path(), "ivy", "a long enough password").await;
    let out = ii.wait_for("#real", "while you were away 3").await;
    for i in 1..=3 {
        let needle = format!("while you were away {i}");
        assert_eq!(out.matches(&needle).count(), 1, "{needle} once:\n{out}");
    }
    // Nothing from before is shown again.
    assert_eq!(out.matches("<lena> hi ivy").count(), 1, "{out}");
    assert_eq!(out.matches("a bot says hi").count(), 1, "{out}");
    // And it talks again.
    ii.say("#real", "back again").await;
    let mut more = Vec::new();
    for _ in 0..20 {
        more.extend(server.poll(&mut poller, 2).await);
        if more.iter().any(|e| e["body"] == "back again") {
            break;
        }
    }
    assert!(more.iter().any(|e| e["body"] == "back again"), "{more:?}");
    ii.stop().await;
}
