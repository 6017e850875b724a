//! End-to-end check of the bare baseline as benches use it: the binary as a child process, its banner,
//! and a parked poll woken by a send over real loopback connections.

mod bare_ws;

use std::process::{Command, Stdio};
use std::time::Duration;

use chat_bench::client::Conn;
use chat_bench::process::ServerProcess;
use http::Method;

#[tokio::test]
async fn parked_poll_is_woken_by_a_send() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bare-longpoll"));
    cmd.arg("127.0.0.1:0").stderr(Stdio::inherit());
    let server =
        ServerProcess::spawn("bare-longpoll", cmd, Duration::from_secs(10)).expect("server starts");
    let addr = server.addr();

    let mut poller = Conn::connect(addr).await.expect("connect");
    let poll = tokio::spawn(async move {
        poller
            .request(Method::GET, "/poll?after=0&timeout=10", None, None)
            .await
            .expect("poll")
    });
    // Wait until the poll is really parked, so the send below is what answers it.
    let mut sender = Conn::connect(addr).await.expect("connect");
    loop {
        let (_, stats) = sender
            .request(Method::GET, "/stats", None, None)
            .await
            .expect("stats");
        if stats.ends_with(b"\"parked\":1}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, ack) = sender
        .request(Method::POST, "/send", None, Some(r#"{"body":"hi"}"#.into()))
        .await
        .expect("send");
    assert!(status.is_success());
    assert_eq!(&ack[..], br#"{"seq":1}"#);

    let (status, body) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("woken well before the poll timeout")
        .expect("poll task");
    assert!(status.is_success());
    let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["cursor"], 1);
    assert_eq!(page["messages"][0]["body"]["body"], "hi");

    // With nothing new, `timeout=0` answers at once with the same cursor.
    let (_, empty) = sender
        .request(Method::GET, "/poll?after=1&timeout=0", None, None)
        .await
        .expect("poll");
    assert_eq!(&empty[..], br#"{"messages":[],"cursor":1}"#);
}
