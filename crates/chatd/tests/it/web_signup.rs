//! The sign-up scenario (`tests/web/signup.test.mjs`) in headless Chromium against a server that asks guests
//! for proof of work (`HASHCASH_BITS=16`): the page mints the stamp with WebCrypto in a Web Worker.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::harness::Server;
use crate::web::{ensure_node_modules, web_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_signs_up_a_guest_with_proof_of_work() {
    let dir = web_dir();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).is_file(),
        "no Chromium at {chromium}: install it (`apt-get install -y chromium`) or point $CHROMIUM at one"
    );
    ensure_node_modules(&dir).await;
    let server = Server::start(&[("HASHCASH_BITS", "16")]).await;
    let run = Command::new("node")
        .arg("run.mjs")
        .current_dir(&dir)
        .env("CHATD_URL", &server.base)
        .env("CHROMIUM", &chromium)
        .env("FILTER", "signup")
        .env("EXPECT_HASHCASH_BITS", "16")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("node run.mjs finishes within 300 s")
        .expect("node runs (install Node.js: `apt-get install -y nodejs npm`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the sign-up scenario failed:\n{text}");
    assert!(
        text.contains("hashcash bits 16"),
        "the scenario ran against HASHCASH_BITS=16:\n{text}"
    );
}
