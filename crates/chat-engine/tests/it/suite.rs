//! The engine suite: every test is generic over the store, and `main.rs` runs it on each implementation.

use std::sync::Arc;
use std::time::Duration;

use chat_core::{Command, Created, EventKind, Outgoing, Target};
use chat_engine::{
    CommandReply, Cursor, Engine, EngineConfig, EngineError, EngineTask, HistoryQuery, RateLimit,
    SearchQuery, Session, StreamRead,
};

use crate::Backend;

fn config() -> EngineConfig {
    EngineConfig {
        rate_limit: None,
        ..EngineConfig::default()
    }
}

async fn open<B: Backend>(backend: &B, config: EngineConfig) -> (Engine, EngineTask) {
    Engine::open(backend.open(), config)
        .await
        .expect("engine opens")
}

async fn stop(engine: Engine, task: EngineTask) {
    engine.shutdown().await.expect("clean shutdown");
    task.await
        .expect("writer joins")
        .expect("writer ends cleanly");
}

async fn join(engine: &Engine, s: &Session, channel: &str) -> CommandReply {
    engine
        .command(
            s,
            Command::Join {
                channel: channel.into(),
                key: None,
            },
            None,
        )
        .await
        .expect("join")
}

async fn say(
    engine: &Engine,
    s: &Session,
    to: &str,
    body: &str,
    nonce: Option<&str>,
) -> Result<CommandReply, EngineError> {
    engine
        .command(
            s,
            Command::Send {
                to: Target::parse(to),
                message: Outgoing {
                    body: body.into(),
                    ..Outgoing::default()
                },
            },
            nonce.map(str::to_owned),
        )
        .await
}

fn bodies(read: &StreamRead) -> Vec<String> {
    read.events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MessageCreated { message } => Some(message.body.clone()),
            _ => None,
        })
        .collect()
}

pub(crate) async fn commands_and_replies<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    assert_eq!(alice.token.len(), 64);
    assert_eq!(alice.cursor.epoch, engine.epoch());

    let joined = join(&engine, &alice.session, "#rust").await;
    assert!(matches!(joined.created, Some(Created::Channel(_))));
    let sent = say(&engine, &alice.session, "#rust", "hello", None)
        .await
        .unwrap();
    assert!(matches!(sent.created, Some(Created::Message(_))));
    assert_eq!(
        sent.seq,
        engine.last_seq(),
        "the reply names the last durable seq"
    );
    assert!(sent.seq > joined.seq);

    // Refusals are typed and change nothing.
    let before = engine.last_seq();
    let err = say(&engine, &alice.session, "#nowhere", "x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Refused(_)), "{err:?}");
    let err = engine.guest("ALICE", "phone").await.unwrap_err();
    assert!(
        matches!(err, EngineError::Refused(chat_core::Error::NickInUse)),
        "{err:?}"
    );
    assert_eq!(engine.last_seq(), before);

    // A logged-out client's token stops working at once.
    let bob = engine.guest("bob", "phone").await.unwrap();
    assert_eq!(engine.authenticate(&bob.token).await.unwrap(), bob.session);
    engine
        .command(&bob.session, Command::Logout, None)
        .await
        .unwrap();
    assert!(matches!(
        engine.authenticate(&bob.token).await,
        Err(EngineError::InvalidToken)
    ));
    assert!(matches!(
        engine.read(&bob.session, None, 10).await,
        Err(EngineError::InvalidToken)
    ));
    assert_eq!(
        engine.cursor(bob.session.client),
        None,
        "its cursor is gone"
    );

    // Tokens authenticate; garbage does not.
    assert_eq!(
        engine.authenticate(&alice.token).await.unwrap(),
        alice.session
    );
    assert!(matches!(
        engine.authenticate("nope").await,
        Err(EngineError::InvalidToken)
    ));
    assert!(matches!(
        engine.authenticate(&"0".repeat(64)).await,
        Err(EngineError::InvalidToken)
    ));
    stop(engine, task).await;
}

pub(crate) async fn two_clients_share_a_stream<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let laptop = engine
        .register("alice", "pw-alice", false, "laptop")
        .await
        .unwrap();
    let phone = engine
        .login("alice", "pw-alice", "phone", None)
        .await
        .unwrap();
    assert_eq!(laptop.session.user, phone.session.user);
    assert_ne!(laptop.session.client, phone.session.client);
    let bob = engine.guest("bob", "web").await.unwrap();

    join(&engine, &laptop.session, "#rust").await;
    join(&engine, &bob.session, "#rust").await;
    say(&engine, &laptop.session, "#rust", "from the laptop", None)
        .await
        .unwrap();
    say(&engine, &bob.session, "#rust", "from bob", None)
        .await
        .unwrap();

    let a = engine
        .read(&laptop.session, Some(phone.cursor), 100)
        .await
        .unwrap();
    let b = engine
        .read(&phone.session, Some(phone.cursor), 100)
        .await
        .unwrap();
    assert!(!a.reset && !b.reset);
    assert_eq!(bodies(&a), ["from the laptop", "from bob"]);
    let seqs = |r: &StreamRead| r.events.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&a),
        seqs(&b),
        "every device of a user reads the same stream"
    );
    assert_eq!(a.cursor, b.cursor);
    assert!(
        a.events
            .iter()
            .zip(&b.events)
            .all(|(x, y)| Arc::ptr_eq(x, y)),
        "readers share one copy of each event"
    );

    // Bob sees both messages as well, but not alice's own client events.
    let bob_read = engine
        .read(&bob.session, Some(bob.cursor), 100)
        .await
        .unwrap();
    assert_eq!(bodies(&bob_read), ["from the laptop", "from bob"]);
    assert!(
        !bob_read
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ClientCreated { .. })),
        "another user's client is not in bob's stream"
    );

    // Without a cursor, a client continues where it was; a small limit pages.
    let again = engine.read(&phone.session, None, 100).await.unwrap();
    assert!(again.events.is_empty());
    assert_eq!(again.cursor, b.cursor);
    let page = engine
        .read(&phone.session, Some(phone.cursor), 1)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    let rest = engine.read(&phone.session, None, 100).await.unwrap();
    assert_eq!(page.events.len() + rest.events.len(), b.events.len());
    stop(engine, task).await;
}

pub(crate) async fn waiting_reader_wakes<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    let bob = engine.guest("bob", "web").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    join(&engine, &bob.session, "#rust").await;
    let cursor = engine
        .read(&bob.session, Some(bob.cursor), 100)
        .await
        .unwrap()
        .cursor;

    let waiter = {
        let engine = engine.clone();
        let bob = bob.session;
        tokio::spawn(async move {
            engine
                .wait(&bob, Some(cursor), 100, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "nothing new yet: the reader waits");
    let started = std::time::Instant::now();
    say(&engine, &alice.session, "#rust", "wake up", None)
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(bodies(&got), ["wake up"]);

    // A wait with nothing to come times out empty, keeping the cursor.
    let idle = engine
        .wait(&bob.session, None, 100, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(idle.events.is_empty() && !idle.reset);
    assert_eq!(idle.cursor, got.cursor);
    stop(engine, task).await;
}

pub(crate) async fn live_events_reach_waiters_only<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    let bob = engine.guest("bob", "web").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    join(&engine, &bob.session, "#rust").await;
    engine
        .read(&bob.session, Some(bob.cursor), 100)
        .await
        .unwrap();

    let waiter = {
        let engine = engine.clone();
        let bob = bob.session;
        tokio::spawn(async move { engine.wait(&bob, None, 100, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = engine.last_seq();
    let typing = Command::Typing {
        channel: chat_core::ChannelRef::Name("#rust".into()),
    };
    engine.command(&alice.session, typing, None).await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(engine.last_seq(), before, "typing is never logged");
    assert!(
        got.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Typing { .. }) && !e.is_durable()),
        "{:?}",
        got.events
    );
    // A later read does not see it again: live events are not in the stream.
    let later = engine.read(&bob.session, None, 100).await.unwrap();
    assert!(later.events.is_empty(), "{:?}", later.events);
    stop(engine, task).await;
}

pub(crate) async fn restart_keeps_state_and_cursors<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine
        .register("alice", "alice-pw", false, "laptop")
        .await
        .unwrap();
    let phone = engine
        .login("alice", "alice-pw", "phone", None)
        .await
        .unwrap();
    let bob = engine.guest("bob", "web").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    join(&engine, &bob.session, "#rust").await;
    engine
        .command(
            &alice.session,
            Command::Topic {
                channel: chat_core::ChannelRef::Name("#rust".into()),
                topic: "all about crabs".into(),
            },
            None,
        )
        .await
        .unwrap();
    for n in 0..5 {
        say(&engine, &bob.session, "#rust", &format!("m{n}"), None)
            .await
            .unwrap();
    }
    // Different cursors per client: the laptop reads everything, the phone only part, bob a page.
    engine
        .read(&alice.session, Some(alice.cursor), 1000)
        .await
        .unwrap();
    engine
        .read(&phone.session, Some(phone.cursor), 2)
        .await
        .unwrap();
    engine
        .read(&bob.session, Some(bob.cursor), 3)
        .await
        .unwrap();
    let clients = [alice.session, phone.session, bob.session];
    let cursors: Vec<_> = clients.iter().map(|s| engine.cursor(s.client)).collect();
    let last = engine.last_seq();
    let before = engine.query(state_summary).await.unwrap();
    stop(engine, task).await;

    let (engine, task) = open(backend, config()).await;
    assert_eq!(engine.last_seq(), last);
    assert_eq!(engine.query(state_summary).await.unwrap(), before);
    let after: Vec<_> = clients.iter().map(|s| engine.cursor(s.client)).collect();
    assert_eq!(after, cursors, "every client's cursor survives the restart");
    // The tokens still work and every client continues from its own cursor.
    assert_eq!(
        engine.authenticate(&phone.token).await.unwrap(),
        phone.session
    );
    let rest = engine.read(&phone.session, None, 1000).await.unwrap();
    assert!(!rest.reset);
    assert_eq!(rest.cursor.seq, last);
    let nothing = engine.read(&alice.session, None, 1000).await.unwrap();
    assert!(nothing.events.is_empty() && !nothing.reset);
    // And the engine keeps working on the restored state.
    say(&engine, &alice.session, "#rust", "after restart", None)
        .await
        .unwrap();
    let fresh = engine
        .read(&bob.session, Some(nothing.cursor), 100)
        .await
        .unwrap();
    assert_eq!(bodies(&fresh), ["after restart"]);
    stop(engine, task).await;
}

/// What a restart must preserve, as plain comparable data.
type Summary = (
    u64,
    Vec<(u64, String, bool)>,
    Vec<(u64, String, Option<String>, Vec<u64>, usize)>,
    Vec<(u64, u64)>,
);

fn state_summary(core: &chat_core::Core) -> Summary {
    let users = core
        .users()
        .map(|u| (u.id.get(), u.nick.clone(), u.password_hash.is_some()))
        .collect();
    let channels = core
        .channels()
        .map(|c| {
            (
                c.id.get(),
                c.name.clone(),
                c.topic.as_ref().map(|t| t.text.clone()),
                core.members(c.id).map(|(u, _)| u.get()).collect(),
                c.history().count(),
            )
        })
        .collect();
    let clients = core
        .users()
        .flat_map(|u| u.clients().map(move |c| (c.get(), u.id.get())))
        .collect();
    (core.last_seq(), users, channels, clients)
}

pub(crate) async fn restart_after_dropping_every_handle<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    let read = engine
        .read(&alice.session, Some(alice.cursor), 100)
        .await
        .unwrap();
    drop(engine);
    task.await
        .unwrap()
        .expect("the writer flushes when the last handle goes");

    let (engine, task) = open(backend, config()).await;
    assert_eq!(engine.cursor(alice.session.client), Some(read.cursor.seq));
    assert_eq!(
        engine.authenticate(&alice.token).await.unwrap(),
        alice.session
    );
    stop(engine, task).await;
}

pub(crate) async fn nonce_is_idempotent<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    let bob = engine.guest("bob", "web").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    join(&engine, &bob.session, "#rust").await;

    let first = say(&engine, &alice.session, "#rust", "once", Some("n1"))
        .await
        .unwrap();
    let last = engine.last_seq();
    let again = say(&engine, &alice.session, "#rust", "once", Some("n1"))
        .await
        .unwrap();
    assert_eq!(again, first, "a retried nonce returns the first reply");
    assert_eq!(engine.last_seq(), last, "and appends nothing");

    // Concurrent retries of one nonce also make one message.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let engine = engine.clone();
        let s = alice.session;
        tasks.push(tokio::spawn(async move {
            say(&engine, &s, "#rust", "burst", Some("n2"))
                .await
                .unwrap()
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "{replies:?}");
    let read = engine
        .read(&bob.session, Some(bob.cursor), 100)
        .await
        .unwrap();
    assert_eq!(bodies(&read), ["once", "burst"]);

    // The same nonce from another user is another command.
    let other = say(&engine, &bob.session, "#rust", "mine", Some("n1"))
        .await
        .unwrap();
    assert_ne!(other, first);

    // Nonces are bounded.
    let long = "x".repeat(65);
    let err = say(&engine, &alice.session, "#rust", "x", Some(&long))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::InvalidInput { field: "nonce", .. }
    ));
    stop(engine, task).await;
}

pub(crate) async fn nonce_survives_restart<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    let first = say(&engine, &alice.session, "#rust", "once", Some("n1"))
        .await
        .unwrap();
    stop(engine, task).await;

    let (engine, task) = open(backend, config()).await;
    let last = engine.last_seq();
    let again = say(&engine, &alice.session, "#rust", "once", Some("n1"))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(engine.last_seq(), last);
    stop(engine, task).await;
}

pub(crate) async fn message_rate_limit<B: Backend>(backend: &B) {
    let config = EngineConfig {
        rate_limit: Some(RateLimit {
            burst: 3,
            per_second: 2.0,
        }),
        ..EngineConfig::default()
    };
    let (engine, task) = open(backend, config).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    let bob = engine.guest("bob", "web").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    say(&engine, &alice.session, "#rust", "1", None)
        .await
        .unwrap();
    say(&engine, &alice.session, "#rust", "2", None)
        .await
        .unwrap();
    let before = engine.last_seq();
    let err = say(&engine, &alice.session, "#rust", "3", None)
        .await
        .unwrap_err();
    let EngineError::RateLimited { retry_after, .. } = err else {
        panic!("expected a rate limit, got {err:?}");
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500));
    assert_eq!(
        engine.last_seq(),
        before,
        "a limited command never reaches the core"
    );
    // Another user has their own budget, and the budget refills.
    join(&engine, &bob.session, "#rust").await;
    say(&engine, &bob.session, "#rust", "bob", None)
        .await
        .unwrap();
    tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
    say(&engine, &alice.session, "#rust", "3", None)
        .await
        .unwrap();
    stop(engine, task).await;
}

pub(crate) async fn rate_limit_off<B: Backend>(backend: &B) {
    assert_eq!(RateLimit::parse("off"), Some(None));
    assert_eq!(
        RateLimit::parse("20/5"),
        Some(Some(RateLimit {
            burst: 20,
            per_second: 5.0
        }))
    );
    assert_eq!(RateLimit::parse("20"), None);
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    for n in 0..60 {
        say(&engine, &alice.session, "#rust", &n.to_string(), None)
            .await
            .unwrap();
    }
    stop(engine, task).await;
}

pub(crate) async fn idle_clients_expire_by_timer<B: Backend>(backend: &B) {
    let mut config = config();
    config.core.session_idle_timeout_ms = 1_000;
    let (engine, task) = open(backend, config).await;
    // The account first: hashing its password takes a while in a debug build.
    let bob = engine
        .register("bob", "bob-password", false, "web")
        .await
        .unwrap();
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    join(&engine, &bob.session, "#rust").await;
    let before = engine.last_seq();
    // Nobody sends anything: only the timer can act.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        engine.last_seq() > before,
        "the expiry was committed by the timer"
    );
    assert!(matches!(
        engine.authenticate(&alice.token).await,
        Err(EngineError::InvalidToken)
    ));
    assert!(matches!(
        engine.authenticate(&bob.token).await,
        Err(EngineError::InvalidToken)
    ));
    // The guest's nick is free again; the account remains and can log in.
    engine.guest("alice", "again").await.unwrap();
    engine
        .login("bob", "bob-password", "web", None)
        .await
        .unwrap();
    stop(engine, task).await;
}

pub(crate) async fn foreign_epoch_resets<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    let foreign = Cursor {
        epoch: engine.epoch().wrapping_add(1),
        seq: 1,
    };
    let read = engine
        .read(&alice.session, Some(foreign), 100)
        .await
        .unwrap();
    assert!(read.reset && read.events.is_empty());
    assert_eq!(read.cursor.epoch, engine.epoch());
    assert_eq!(read.cursor.seq, engine.last_seq());
    let ahead = Cursor {
        epoch: engine.epoch(),
        seq: engine.last_seq() + 100,
    };
    let read = engine
        .wait(&alice.session, Some(ahead), 100, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        read.reset,
        "a cursor ahead of the log is not silently accepted"
    );
    stop(engine, task).await;
}

pub(crate) async fn passwords_and_login_throttle<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    engine
        .register("alice", "right password", false, "laptop")
        .await
        .unwrap();
    engine
        .login("alice", "right password", "x", None)
        .await
        .unwrap();
    // Unknown nicks and guests answer like a wrong password.
    let err = engine
        .login("nobody", "some password", "x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidCredentials));
    let carol = engine.guest("carol", "web").await.unwrap();
    let err = engine.login("carol", "", "x", None).await.unwrap_err();
    assert!(matches!(err, EngineError::InvalidCredentials));
    // A guest that sets a password becomes an account.
    engine
        .set_password(&carol.session, "carol-pw")
        .await
        .unwrap();
    engine
        .login("carol", "carol-pw", "phone", None)
        .await
        .unwrap();
    stop(engine, task).await;
}

/// The password rule holds on every path that sets a password: sign-up, a user's own change and the
/// operator's; each refusal is typed and changes nothing.
pub(crate) async fn password_rule_on_every_path<B: Backend>(backend: &B) {
    use chat_engine::PasswordError;
    let (engine, task) = open(backend, config()).await;
    let short =
        |e: &EngineError| matches!(e, EngineError::Password(PasswordError::TooShort { min: 8 }));
    let err = engine.register("dave", "", false, "x").await.unwrap_err();
    assert!(short(&err), "{err:?}");
    let err = engine
        .register("dave", "2short", false, "x")
        .await
        .unwrap_err();
    assert!(short(&err), "{err:?}");
    // Seven characters are too few even when they take 14 bytes.
    let err = engine
        .register("dave", "ééééééé", false, "x")
        .await
        .unwrap_err();
    assert!(short(&err), "{err:?}");
    let err = engine
        .register("dave", &"x".repeat(129), false, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Password(PasswordError::TooLong { max: 128 })
        ),
        "{err:?}"
    );
    let err = engine
        .register("dave", "Password1", false, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Password(PasswordError::Common)),
        "{err:?}"
    );
    // Nothing was created by the refusals: the nick is still free.
    let dave = engine
        .register("dave", "ééééééééé", false, "x")
        .await
        .unwrap();
    let err = engine
        .set_password(&dave.session, "short")
        .await
        .unwrap_err();
    assert!(short(&err), "{err:?}");
    let err = engine
        .set_user_password(dave.session.user, "iloveyou")
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Password(PasswordError::Common)),
        "{err:?}"
    );
    engine.login("dave", "ééééééééé", "x", None).await.unwrap();
    engine
        .set_user_password(dave.session.user, "a much longer passphrase")
        .await
        .unwrap();
    engine
        .login("dave", "a much longer passphrase", "x", None)
        .await
        .unwrap();
    stop(engine, task).await;
}

/// Failed logins throttle the account and address pair: an attacker at one address is refused, the owner at
/// another is not, and existing sessions are untouched.
pub(crate) async fn login_throttle_is_per_account_and_address<B: Backend>(backend: &B) {
    let mut config = config();
    config.login_limit = RateLimit {
        burst: 2,
        per_second: 0.01,
    };
    let (engine, task) = open(backend, config).await;
    let alice = engine
        .register("alice", "right password", false, "laptop")
        .await
        .unwrap();
    let attacker = "192.0.2.1".parse().ok();
    let owner = "198.51.100.7".parse().ok();
    for _ in 0..2 {
        let err = engine
            .login("alice", "wrong guess", "x", attacker)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidCredentials), "{err:?}");
    }
    // The attacker's pair is refused now, even with the right password.
    let err = engine
        .login("ALICE", "right password", "x", attacker)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::RateLimited { .. }), "{err:?}");
    // The owner elsewhere logs in, again and again.
    for _ in 0..3 {
        engine
            .login("alice", "right password", "phone", owner)
            .await
            .unwrap();
    }
    // The attacker's address may still log in to its own account.
    engine
        .register("mallory", "mallory's own", false, "x")
        .await
        .unwrap();
    engine
        .login("mallory", "mallory's own", "x", attacker)
        .await
        .unwrap();
    // The session alice had before is untouched.
    assert_eq!(
        engine.authenticate(&alice.token).await.unwrap(),
        alice.session
    );
    join(&engine, &alice.session, "#rust").await;
    stop(engine, task).await;
}

/// Failures from many addresses slow every login to the account, never refuse it: the right password still
/// gets in, only later. One address trying many accounts is refused.
pub(crate) async fn account_limit_slows_and_address_limit_refuses<B: Backend>(backend: &B) {
    let mut config = config();
    config.login_account_limit = RateLimit {
        burst: 3,
        per_second: 0.01,
    };
    config.login_slowdown = Duration::from_millis(1500);
    config.login_address_limit = RateLimit {
        burst: 4,
        per_second: 0.01,
    };
    let (engine, task) = open(backend, config).await;
    let alice = engine
        .register("alice", "right password", false, "laptop")
        .await
        .unwrap();
    for n in 0..5u8 {
        let ip = format!("203.0.113.{n}").parse().ok();
        let err = engine
            .login("alice", "wrong guess", "x", ip)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidCredentials), "{err:?}");
    }
    let t = std::time::Instant::now();
    engine
        .login("alice", "right password", "x", "198.51.100.7".parse().ok())
        .await
        .unwrap();
    let slowed = t.elapsed();
    assert!(
        slowed >= Duration::from_millis(1500),
        "slowed only {slowed:?}"
    );
    assert_eq!(
        engine.authenticate(&alice.token).await.unwrap(),
        alice.session
    );
    // One address failing across accounts runs out of its own, looser, budget.
    let spray = "192.0.2.99".parse().ok();
    for nick in ["u1", "u2", "u3", "u4"] {
        let err = engine
            .login(nick, "wrong guess", "x", spray)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidCredentials), "{err:?}");
    }
    let err = engine
        .login("u5", "wrong guess", "x", spray)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::RateLimited { .. }), "{err:?}");
    stop(engine, task).await;
}

/// A proof-of-work stamp for `resource` dated `date` (`YYMMDD`) with at least `bits` zero bits.
fn mint(bits: u32, date: &str, resource: &str) -> String {
    (0u64..)
        .map(|c| format!("1:{bits}:{date}:{resource}::dGVzdA:{c:x}"))
        .find(|s| mint_zeros(s) >= bits)
        .expect("a counter that works")
}

fn utc_date(days_ago: u64) -> String {
    let t = std::time::SystemTime::now() - Duration::from_secs(days_ago * 86_400);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}{}{}", &s[2..4], &s[5..7], &s[8..10])
}

/// With `hashcash_bits` set, a guest needs a valid stamp for this server and day, and each stamp works once.
pub(crate) async fn guest_sign_up_needs_an_unspent_stamp<B: Backend>(backend: &B) {
    use chat_engine::StampError;
    let mut config = config();
    config.hashcash_bits = 10;
    config.hashcash_resource = "chat.example".into();
    let (engine, task) = open(backend, config).await;
    assert_eq!(engine.hashcash(), (10, "chat.example"));
    let refused = |e: EngineError, want: StampError| match e {
        EngineError::HashcashRequired {
            bits: 10,
            reason,
            resource,
        } if reason == want && resource == "chat.example" => {}
        other => panic!("expected {want:?}, got {other:?}"),
    };
    refused(
        engine.guest("alice", "web").await.unwrap_err(),
        StampError::Missing,
    );
    let today = utc_date(0);
    let stamp = mint(10, &today, "chat.example");
    let alice = engine
        .guest_with_stamp("alice", "web", Some(&stamp))
        .await
        .unwrap();
    // Replayed, for another nick.
    refused(
        engine
            .guest_with_stamp("bob", "web", Some(&stamp))
            .await
            .unwrap_err(),
        StampError::Spent,
    );
    let other = mint(10, &today, "other.example");
    refused(
        engine
            .guest_with_stamp("bob", "web", Some(&other))
            .await
            .unwrap_err(),
        StampError::WrongResource,
    );
    let old = mint(10, &utc_date(2), "chat.example");
    refused(
        engine
            .guest_with_stamp("bob", "web", Some(&old))
            .await
            .unwrap_err(),
        StampError::WrongDate,
    );
    // Claims fewer bits than asked; and claims enough but has too few.
    let weak = mint(4, &today, "chat.example");
    refused(
        engine
            .guest_with_stamp("bob", "web", Some(&weak))
            .await
            .unwrap_err(),
        StampError::TooFewBits,
    );
    let liar = (0u64..)
        .map(|c| format!("1:10:{today}:chat.example::dGVzdA:{c:x}"))
        .find(|s| mint_zeros(s) < 10)
        .unwrap();
    refused(
        engine
            .guest_with_stamp("bob", "web", Some(&liar))
            .await
            .unwrap_err(),
        StampError::TooFewBits,
    );
    refused(
        engine
            .guest_with_stamp("bob", "web", Some("not a stamp"))
            .await
            .unwrap_err(),
        StampError::Malformed,
    );
    // Yesterday's stamp still works (midnight), and a sign-up refused for its nick keeps its stamp.
    let yesterday = mint(10, &utc_date(1), "chat.example");
    let err = engine
        .guest_with_stamp("alice", "web", Some(&yesterday))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Refused(chat_core::Error::NickInUse)),
        "{err:?}"
    );
    engine
        .guest_with_stamp("bob", "web", Some(&yesterday))
        .await
        .unwrap();
    // Accounts need no stamp.
    engine
        .register("carol", "carol's password", false, "web")
        .await
        .unwrap();
    assert_eq!(
        engine.authenticate(&alice.token).await.unwrap(),
        alice.session
    );
    stop(engine, task).await;
}

/// A stamp spent before a restart stays spent after it: the store remembers what the table in memory
/// forgets. A stamp refused for its nick before the restart is still good after it.
pub(crate) async fn spent_stamp_survives_restart<B: Backend>(backend: &B) {
    use chat_engine::StampError;
    let mut config = config();
    config.hashcash_bits = 8;
    config.hashcash_resource = "chat.example".into();
    let (engine, task) = open(backend, config.clone()).await;
    let today = utc_date(0);
    let stamp = mint(8, &today, "chat.example");
    let kept = mint(8, &format!("{today}1200"), "chat.example");
    engine
        .guest_with_stamp("alice", "web", Some(&stamp))
        .await
        .unwrap();
    let err = engine
        .guest_with_stamp("alice", "web", Some(&kept))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Refused(chat_core::Error::NickInUse)),
        "{err:?}"
    );
    stop(engine, task).await;

    let (engine, task) = open(backend, config).await;
    match engine
        .guest_with_stamp("bob", "web", Some(&stamp))
        .await
        .unwrap_err()
    {
        EngineError::HashcashRequired {
            reason: StampError::Spent,
            ..
        } => {}
        other => panic!("a stamp spent before the restart was taken again: {other:?}"),
    }
    engine
        .guest_with_stamp("bob", "web", Some(&kept))
        .await
        .unwrap();
    stop(engine, task).await;
}

/// The leading zero bits of a stamp's SHA-256.
fn mint_zeros(s: &str) -> u32 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(s.as_bytes());
    h.iter()
        .position(|b| *b != 0)
        .map_or(256, |i| i as u32 * 8 + h[i].leading_zeros())
}

pub(crate) async fn shutdown_refuses_new_work<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    let other = engine.clone();
    stop(engine, task).await;
    let err = other.guest("bob", "web").await.unwrap_err();
    assert!(matches!(err, EngineError::ShuttingDown), "{err:?}");
    let err = say(&other, &alice.session, "#rust", "x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::ShuttingDown), "{err:?}");
}

pub(crate) async fn snapshots_are_taken_and_used<B: Backend>(backend: &B) {
    let config = EngineConfig {
        snapshot_every: 5,
        ..config()
    };
    let (engine, task) = open(backend, config.clone()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    for n in 0..20 {
        say(&engine, &alice.session, "#rust", &n.to_string(), None)
            .await
            .unwrap();
    }
    let store = backend.open();
    // Snapshots are saved in the background; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (seq, _) = chat_store::Store::latest_snapshot(&*store)
        .unwrap()
        .expect("a snapshot was saved");
    assert!(seq > 5);
    let before = engine.query(state_summary).await.unwrap();
    stop(engine, task).await;
    let (seq, _) = chat_store::Store::latest_snapshot(&*store)
        .unwrap()
        .unwrap();
    assert_eq!(seq, before.0, "shutdown saves a snapshot at the last seq");
    let (engine, task) = open(backend, config).await;
    assert_eq!(engine.query(state_summary).await.unwrap(), before);
    stop(engine, task).await;
}

pub(crate) async fn failed_commit_stops_the_engine<B: Backend>(backend: &B, fail: impl Fn(bool)) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    let last = engine.last_seq();
    fail(true);
    let err = say(&engine, &alice.session, "#rust", "lost", None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Stopped { .. }), "{err:?}");
    let err = say(&engine, &alice.session, "#rust", "later", None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Stopped { .. }), "{err:?}");
    assert_eq!(
        engine.last_seq(),
        last,
        "nothing unacknowledged is published"
    );
    assert!(
        task.await.unwrap().is_err(),
        "the writer reports the failure"
    );
    fail(false);
    // A restart rebuilds the state from the log: the failed message is not there.
    let (engine, task) = open(backend, config()).await;
    assert_eq!(engine.last_seq(), last);
    stop(engine, task).await;
}

pub(crate) async fn concurrent_commands_share_commits<B: Backend>(
    backend: &B,
    appends: impl Fn() -> usize,
) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    let before = appends();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let engine = engine.clone();
        let s = alice.session;
        tasks.push(tokio::spawn(async move {
            say(&engine, &s, "#rust", &n.to_string(), None)
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().seq);
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 200, "every command got its own event");
    let commits = appends() - before;
    assert!(
        commits < 200,
        "200 concurrent commands took {commits} commits"
    );
    stop(engine, task).await;
}

pub(crate) async fn old_cursors_come_from_the_store<B: Backend>(backend: &B) {
    let config = EngineConfig {
        tail_capacity: 4,
        user_tail_capacity: 4,
        ..config()
    };
    let (engine, task) = open(backend, config).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    let bob = engine.guest("bob", "web").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    join(&engine, &bob.session, "#rust").await;
    let expected: Vec<String> = (0..10).map(|n| format!("m{n}")).collect();
    for body in &expected {
        say(&engine, &alice.session, "#rust", body, None)
            .await
            .unwrap();
    }
    // Bob's cursor is far behind the 4-event tail: pages come from the store until he catches up.
    let mut cursor = bob.cursor;
    let mut got = Vec::new();
    for _ in 0..100 {
        let page = engine.read(&bob.session, Some(cursor), 3).await.unwrap();
        assert!(!page.reset);
        assert!(page.cursor.seq >= cursor.seq, "cursors never go back");
        got.extend(bodies(&page));
        if page.events.is_empty() && page.cursor == cursor {
            break;
        }
        cursor = page.cursor;
    }
    assert_eq!(got, expected);
    assert_eq!(cursor.seq, engine.last_seq());
    stop(engine, task).await;
}

pub(crate) async fn cursor_older_than_retention_resets<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    for n in 0..5 {
        say(&engine, &alice.session, "#rust", &n.to_string(), None)
            .await
            .unwrap();
    }
    stop(engine, task).await;

    let store = backend.open();
    // The shutdown snapshot covers the whole log, so retention may drop every event before it.
    let tomorrow = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 86_400_000;
    let mut dropped = 0;
    loop {
        let report = chat_store::Store::enforce_retention(&*store, 10_000, tomorrow, 0).unwrap();
        if report.events == 0 {
            break;
        }
        dropped += report.events;
    }
    assert!(dropped > 0, "retention dropped events");
    drop(store);
    let (engine, task) = open(backend, config()).await;
    let old = Cursor {
        epoch: engine.epoch(),
        seq: 1,
    };
    let read = engine.read(&alice.session, Some(old), 100).await.unwrap();
    assert!(read.reset, "a cursor older than retention is told so");
    assert_eq!(read.cursor.seq, engine.last_seq());
    // From the new cursor the stream works again.
    say(&engine, &alice.session, "#rust", "fresh", None)
        .await
        .unwrap();
    let next = engine.read(&alice.session, None, 100).await.unwrap();
    assert_eq!(bodies(&next), ["fresh"]);
    stop(engine, task).await;
}

pub(crate) async fn background_retention_resets_old_cursors<B: Backend>(backend: &B) {
    let config = EngineConfig {
        snapshot_every: 1,
        queue_max_age: Duration::ZERO,
        retention_interval: Duration::from_millis(50),
        ..config()
    };
    let (engine, task) = open(backend, config).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    for n in 0..5 {
        say(&engine, &alice.session, "#rust", &n.to_string(), None)
            .await
            .unwrap();
    }
    let store = backend.open();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while chat_store::Store::first_seq(&*store).unwrap() <= Some(2) {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(engine, task).await;
    // After a restart the tail is empty, so an old cursor goes to the store, which no longer has it.
    let (engine, task) = open(backend, EngineConfig::default()).await;
    let old = Cursor {
        epoch: engine.epoch(),
        seq: 1,
    };
    let read = engine.read(&alice.session, Some(old), 100).await.unwrap();
    assert!(read.reset);
    stop(engine, task).await;
}

pub(crate) async fn one_message_wakes_every_waiting_member<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let speaker = engine.guest("speaker", "web").await.unwrap();
    join(&engine, &speaker.session, "#big").await;
    let mut waiters = Vec::new();
    for n in 0..200 {
        let member = engine.guest(&format!("m{n}"), "web").await.unwrap();
        join(&engine, &member.session, "#big").await;
        waiters.push(member);
    }
    let last = engine.last_seq();
    let mut tasks = Vec::new();
    for member in &waiters {
        let engine = engine.clone();
        let s = member.session;
        let cursor = Cursor {
            epoch: engine.epoch(),
            seq: last,
        };
        tasks.push(tokio::spawn(async move {
            engine
                .wait(&s, Some(cursor), 10, Duration::from_secs(20))
                .await
                .unwrap()
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = say(&engine, &speaker.session, "#big", "to everyone", None)
        .await
        .unwrap();
    let mut first: Option<Arc<chat_core::Event>> = None;
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(bodies(&got), ["to everyone"]);
        assert_eq!(got.cursor.seq, sent.seq);
        // Every reader holds the same allocation of the event.
        let event = &got.events[0];
        if let Some(f) = &first {
            assert!(Arc::ptr_eq(f, event));
        } else {
            first = Some(Arc::clone(event));
        }
    }
    stop(engine, task).await;
}

/// The directory names every user and channel an event refers to, before a reader can hold the event, and
/// keeps up with nick changes and DMs; a restarted engine rebuilds the same names from its state.
pub(crate) async fn directory_names_follow_commits<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "t").await.expect("alice");
    let bob = engine.guest("bob", "t").await.expect("bob");
    join(&engine, &alice.session, "#Names").await;
    say(&engine, &alice.session, "bob", "psst", None)
        .await
        .expect("dm");
    let read = engine
        .read(&bob.session, Some(bob.cursor), 100)
        .await
        .expect("read");
    let dm = read
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::MessageCreated { message } => Some(message.channel),
            _ => None,
        })
        .expect("bob got the dm");
    let network = engine
        .query(|core| core.channel_by_name("#names").map(|c| c.id))
        .await
        .expect("query")
        .expect("channel");
    {
        let dir = engine.directory();
        assert_eq!(&*dir.nick(alice.session.user), "alice");
        let card = dir.channel(dm).expect("dm card");
        assert_eq!(card.kind, chat_core::ChannelKind::Dm);
        let mut expected = vec![alice.session.user, bob.session.user];
        expected.sort();
        let mut got = card.dm.clone();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(&*dir.channel(network).expect("card").name, "#Names");
    }
    engine
        .command(
            &alice.session,
            Command::Nick {
                nick: "alicia".into(),
            },
            None,
        )
        .await
        .expect("nick");
    assert_eq!(&*engine.directory().nick(alice.session.user), "alicia");
    stop(engine, task).await;

    let (engine, task) = open(backend, config()).await;
    assert_eq!(&*engine.directory().nick(alice.session.user), "alicia");
    assert_eq!(&*engine.directory().nick(bob.session.user), "bob");
    stop(engine, task).await;
}

/// A reader that follows its stream wait after wait does not lose a live event (typing) that came between
/// two waits: `wait_from` with the previous read's `live` returns it; a plain `wait` started afterwards
/// cannot know of it.
pub(crate) async fn live_events_between_waits_reach_wait_from<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "t").await.expect("alice");
    let bob = engine.guest("bob", "t").await.expect("bob");
    join(&engine, &alice.session, "#live").await;
    join(&engine, &bob.session, "#live").await;
    let read = engine
        .read(&alice.session, Some(alice.cursor), 100)
        .await
        .expect("read");
    // Between alice's read and her next wait, bob starts typing.
    engine
        .command(
            &bob.session,
            Command::Typing {
                channel: chat_core::ChannelRef::Name("#live".into()),
            },
            None,
        )
        .await
        .expect("typing");
    let plain = engine
        .wait(
            &alice.session,
            Some(read.cursor),
            100,
            Duration::from_millis(50),
        )
        .await
        .expect("wait");
    assert!(
        plain.events.is_empty(),
        "a fresh wait cannot know: {plain:?}"
    );
    let resumed = engine
        .wait_from(
            &alice.session,
            Some(read.cursor),
            100,
            Duration::from_secs(5),
            Some(read.live),
        )
        .await
        .expect("wait_from");
    assert!(
        resumed
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Typing { user, .. } if user == bob.session.user)),
        "{resumed:?}"
    );
    assert!(resumed.live > read.live);
    // Once seen, it is not returned again.
    let again = engine
        .wait_from(
            &alice.session,
            Some(resumed.cursor),
            100,
            Duration::from_millis(50),
            Some(resumed.live),
        )
        .await
        .expect("wait_from");
    assert!(again.events.is_empty(), "{again:?}");
    stop(engine, task).await;
}

/// History, search and message lookups, as the transports make them: through the engine, never the store.
pub(crate) async fn reads_go_through_the_engine<B: Backend>(backend: &B) {
    let (engine, task) = open(backend, config()).await;
    let alice = engine.guest("alice", "laptop").await.unwrap();
    join(&engine, &alice.session, "#rust").await;
    let mut ids = Vec::new();
    for body in ["first", "second", "third, with searchable words"] {
        let sent = say(&engine, &alice.session, "#rust", body, None)
            .await
            .unwrap();
        match sent.created {
            Some(Created::Message(id)) => ids.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    let channel = engine
        .query(|core| core.channel_by_name("#rust").map(|c| c.id))
        .await
        .unwrap()
        .expect("the channel");

    let page = engine
        .history(HistoryQuery {
            channel,
            before: None,
            after: None,
            around: None,
            limit: 100,
        })
        .await
        .unwrap();
    let written: Vec<&str> = page
        .iter()
        .filter(|m| m.kind == chat_core::MessageKind::Message)
        .map(|m| m.body.as_str())
        .collect();
    assert_eq!(written, ["first", "second", "third, with searchable words"]);

    let hits = engine
        .search(SearchQuery {
            text: "searchable".into(),
            channels: vec![channel],
            author: None,
            channel: None,
            space: None,
            before: None,
            after: None,
            limit: 25,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].message.id, ids[2]);

    let second = engine.message(ids[1]).await.unwrap().expect("stored");
    assert_eq!((second.body.as_str(), second.channel), ("second", channel));
    let missing = chat_core::MessageId::from_raw(1).expect("nonzero");
    assert_eq!(engine.message(missing).await.unwrap(), None);
    // In the order asked for, without the ones that do not exist (a channel's pins, newest first).
    let some = engine
        .messages(vec![ids[2], missing, ids[0]])
        .await
        .unwrap();
    let found: Vec<_> = some.iter().map(|m| m.id).collect();
    assert_eq!(found, [ids[2], ids[0]]);
    stop(engine, task).await;
}
