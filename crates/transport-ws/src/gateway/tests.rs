//! Unit tests of the gateway's connection rules that need no socket: the zombie deadline, the payload rate
//! window and session ids.

use std::time::Duration;

use chat_core::ClientId;
use tokio::time::Instant;

use super::conn::{RateWindow, heartbeat_deadline, parse_session_id, session_id};
use super::frame::intents;

#[test]
fn a_connection_is_a_zombie_after_one_and_a_half_intervals_and_slack() {
    let now = Instant::now();
    let interval = Duration::from_millis(1000);
    let deadline = heartbeat_deadline(now, interval);
    assert!(deadline >= now + Duration::from_millis(1500));
    assert!(deadline <= now + Duration::from_millis(3000));
    // An absurd interval does not overflow.
    assert!(heartbeat_deadline(now, Duration::MAX) >= now);
}

#[test]
fn the_deadline_moves_with_each_heartbeat() {
    let interval = Duration::from_millis(200);
    let first = Instant::now();
    let later = first + Duration::from_millis(250);
    assert!(heartbeat_deadline(later, interval) > heartbeat_deadline(first, interval));
    // A connection that heartbeats every interval never reaches its deadline.
    assert!(later + interval < heartbeat_deadline(later, interval));
}

#[test]
fn the_rate_window_admits_the_limit_then_refuses_until_it_turns() {
    let start = Instant::now();
    let mut w = RateWindow::new(start);
    for _ in 0..120 {
        assert!(w.admit(start, 120));
    }
    assert!(!w.admit(start + Duration::from_secs(59), 120));
    assert!(w.admit(start + Duration::from_secs(61), 120));
}

#[test]
fn session_ids_name_client_epoch_and_intents() {
    let client = ClientId::from_raw(1234).expect("non-zero");
    let id = session_id(client, 99, 513);
    assert_eq!(id, "1234-99-513");
    assert_eq!(parse_session_id(&id), Some((1234, 99, 513)));
    assert_eq!(parse_session_id("1234-99"), None);
    assert_eq!(parse_session_id("nonsense"), None);
    let bad = format!("1-2-{}", 1u64 << 41);
    assert_eq!(parse_session_id(&bad), None);
    // Our chatd_irc bit rides in the intents of a session id.
    let irc = 513 | intents::CHATD_IRC;
    assert_eq!(
        parse_session_id(&session_id(client, 99, irc)),
        Some((1234, 99, irc))
    );
    assert_eq!(
        parse_session_id(&format!("1-2-{}", intents::DEFINED)),
        Some((1, 2, intents::DEFINED))
    );
}

/// The gateway alone on 127.0.0.1:0 over an in-memory engine, with `settings`: for the rules the binary's
/// settings cannot reach quickly (a short heartbeat interval, a tiny outbound cap).
mod live {
    use std::sync::Arc;
    use std::time::Duration;

    use chat_core::{Command, Outgoing, Target};
    use chat_engine::{Engine, EngineConfig, Login};
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

    use crate::Settings;
    use crate::gateway::Gateway;

    type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    async fn serve(settings: Settings) -> (String, Engine) {
        let config = EngineConfig {
            rate_limit: None,
            ..EngineConfig::default()
        };
        let store = Arc::new(chat_store::MemoryStore::new());
        let (engine, _task) = Engine::open(store, config).await.expect("engine");
        let router = Gateway::new(engine.clone(), settings).router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        (format!("ws://{addr}/gateway"), engine)
    }

    /// The next text frame as JSON, or `Err(close code)`.
    async fn next(ws: &mut Ws) -> Result<Value, u16> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("JSON"));
                }
                Some(Ok(Message::Close(c))) => return Err(c.map_or(1005, |c| c.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(1006),
            }
        }
    }

    async fn send(ws: &mut Ws, v: Value) {
        ws.send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    async fn guest(engine: &Engine, nick: &str) -> Login {
        let login = engine.guest(nick, "test").await.expect("guest");
        let join = Command::Join {
            channel: "#t".into(),
            key: None,
        };
        engine
            .command(&login.session, join, None)
            .await
            .expect("join");
        login
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_connection_is_closed_resumably_and_a_heartbeating_one_is_not() {
        let settings = Settings {
            heartbeat_interval: Duration::from_millis(200),
            ..Settings::default()
        };
        let (url, _engine) = serve(settings).await;

        let (mut alive, _) = connect_async(url.as_str()).await.expect("connect");
        let hello = next(&mut alive).await.expect("hello");
        assert_eq!(hello["d"]["heartbeat_interval"], 200);
        let (mut silent, _) = connect_async(url.as_str()).await.expect("connect");
        next(&mut silent).await.expect("hello");

        let started = tokio::time::Instant::now();
        let mut silent_closed = None;
        while started.elapsed() < Duration::from_millis(2500) {
            send(&mut alive, json!({"op": 1, "d": null})).await;
            assert_eq!(next(&mut alive).await.expect("ack")["op"], 11);
            if silent_closed.is_none()
                && let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_millis(150), silent.next()).await
            {
                if let Ok(Message::Close(c)) = msg {
                    silent_closed = Some((c.map_or(1005, |c| c.code.into()), started.elapsed()));
                }
            } else {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        let (code, after) = silent_closed.expect("the silent connection was closed");
        assert_eq!(code, 4000);
        assert!(
            after >= Duration::from_millis(250),
            "closed after {after:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_outbound_cap_a_connection_closes_and_resumes_without_loss() {
        let settings = Settings {
            outbound_cap: 1,
            ..Settings::default()
        };
        let (url, engine) = serve(settings).await;
        let alice = guest(&engine, "alice").await;
        let bob = guest(&engine, "bob").await;

        let (mut ws, _) = connect_async(url.as_str()).await.expect("connect");
        next(&mut ws).await.expect("hello");
        send(
            &mut ws,
            json!({"op": 2, "d": {"token": alice.token, "intents": 1 | 1 << 9 | 1 << 15, "properties": {}}}),
        )
        .await;
        let ready = next(&mut ws).await.expect("ready");
        let session = ready["d"]["session_id"].clone();
        let last = ready["s"].as_u64().expect("s");
        let message = Outgoing {
            body: "over the cap".into(),
            ..Outgoing::default()
        };
        let sent = engine
            .command(
                &bob.session,
                Command::Send {
                    to: Target::parse("#t"),
                    message,
                },
                None,
            )
            .await
            .expect("send");
        let code = loop {
            if let Err(code) = next(&mut ws).await {
                break code;
            }
        };
        assert_eq!(code, 4000);

        let (mut ws, _) = connect_async(url.as_str()).await.expect("connect");
        next(&mut ws).await.expect("hello");
        send(
            &mut ws,
            json!({"op": 6, "d": {"token": alice.token, "session_id": session, "seq": last}}),
        )
        .await;
        let mut replayed = Vec::new();
        loop {
            let v = next(&mut ws).await.expect("replay");
            if v["t"] == "RESUMED" {
                break;
            }
            replayed.push(v);
        }
        assert!(
            replayed
                .iter()
                .any(|v| v["s"] == sent.seq && v["d"]["content"] == "over the cap"),
            "{replayed:?}"
        );
    }
}
