//! Cluster mode with several engines in one process on one shared store (the memory store's reference of
//! the cluster contract): forwarding, following, read-your-writes on a follower, and a takeover. The same
//! scenarios run across real processes on PostgreSQL in chatd's tests.

use std::sync::Arc;
use std::time::Duration;

use chat_core::{Command, EventKind, Outgoing, Target};
use chat_engine::{ClusterConfig, Engine, EngineConfig, EngineTask, NodeRole, StreamRead};
use chat_store::MemoryStore;

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        rate_limit: None,
        data_dir: dir.to_path_buf(),
        ..EngineConfig::default()
    }
}

async fn node(store: &Arc<MemoryStore>, dir: &std::path::Path, id: u16) -> (Engine, EngineTask) {
    Engine::open_cluster(
        Arc::clone(store),
        config(dir),
        ClusterConfig {
            node_id: id,
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            lease_ttl: Duration::from_millis(800),
        },
    )
    .await
    .expect("node starts")
}

fn say(body: &str) -> Command {
    Command::Send {
        to: Target::parse("#c"),
        message: Outgoing {
            body: body.into(),
            ..Outgoing::default()
        },
    }
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

async fn role(engine: &Engine) -> NodeRole {
    engine.cluster_status().await.unwrap().unwrap().role
}

async fn until_writer(engine: &Engine) {
    for _ in 0..100 {
        if role(engine).await == NodeRole::Writer {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node never took the writer lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_and_reads_its_own_writes_then_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let (a, a_task) = node(&store, dir.path(), 1).await;
    until_writer(&a).await;
    let (b, b_task) = node(&store, dir.path(), 2).await;
    assert_eq!(role(&b).await, NodeRole::Follower);

    // A guest signs up on the follower: the command crosses to the writer, and the follower answers only
    // once it applied it, so the token works on the follower at once.
    let mut alice = None;
    for _ in 0..100 {
        match b.guest("alice", "phone").await {
            Ok(login) => {
                alice = Some(login);
                break;
            }
            // The follower has not linked to the writer yet.
            Err(chat_engine::EngineError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let alice = alice.expect("the follower links to the writer");
    assert_eq!(b.authenticate(&alice.token).await.unwrap(), alice.session);
    assert_eq!(a.authenticate(&alice.token).await.unwrap(), alice.session);

    let join = Command::Join {
        channel: "#c".into(),
        key: None,
    };
    b.command(&alice.session, join, None).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..20 {
        let on = if i % 2 == 0 { &a } else { &b };
        let r = on
            .command(&alice.session, say(&format!("m{i}")), None)
            .await
            .unwrap();
        seqs.push(r.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one order: {seqs:?}");
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let on_b = b
        .read(&alice.session, Some(alice.cursor), 1000)
        .await
        .unwrap();
    assert_eq!(bodies(&on_b), expected, "the follower's stream");
    let on_a = a
        .read(&alice.session, Some(alice.cursor), 1000)
        .await
        .unwrap();
    assert_eq!(bodies(&on_a), expected, "the writer's stream");

    // The same nonce sent through both nodes is one message.
    let first = a
        .command(&alice.session, say("once"), Some("n1".into()))
        .await
        .unwrap();
    let again = b
        .command(&alice.session, say("once"), Some("n1".into()))
        .await
        .unwrap();
    assert_eq!(first, again);
    // The nonces nodes make for commands without one cannot be sent by a client.
    let err = b
        .command(&alice.session, say("x"), Some("\u{1}1.2.3".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            chat_engine::EngineError::InvalidInput { field: "nonce", .. }
        ),
        "{err:?}"
    );

    // The writer stops: the follower takes over, with the log caught up, and keeps the order.
    a.shutdown().await.unwrap();
    a_task.await.unwrap().unwrap();
    let last = b.last_seq();
    let mut sent = None;
    for _ in 0..100 {
        match b.command(&alice.session, say("after"), None).await {
            Ok(r) => {
                sent = Some(r);
                break;
            }
            Err(chat_engine::EngineError::Unavailable { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let sent = sent.expect("the follower took over");
    assert_eq!(
        sent.seq,
        last + 1,
        "the log stays dense across the takeover"
    );
    assert_eq!(role(&b).await, NodeRole::Writer);
    b.shutdown().await.unwrap();
    b_task.await.unwrap().unwrap();
}

async fn retry<T>(mut f: impl AsyncFnMut() -> Result<T, chat_engine::EngineError>) -> T {
    for _ in 0..100 {
        match f().await {
            Ok(v) => return v,
            Err(chat_engine::EngineError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no writer settled the command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_cross_nodes_and_a_follower_answers_presence() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let (a, a_task) = node(&store, dir.path(), 1).await;
    until_writer(&a).await;
    let (b, b_task) = node(&store, dir.path(), 2).await;
    let alice = retry(async || b.guest("alice", "phone").await).await;
    let bob = retry(async || a.guest("bob", "web").await).await;
    let join = || Command::Join {
        channel: "#c".into(),
        key: None,
    };
    retry(async || b.command(&alice.session, join(), None).await).await;
    retry(async || a.command(&bob.session, join(), None).await).await;
    let start = a.read(&bob.session, None, 1000).await.unwrap().cursor;
    let live = a.live_generation(bob.session.user);

    // Alice connects through the follower: bob, on the writer, hears it.
    retry(async || b.command(&alice.session, Command::Connect, None).await).await;
    let read = a
        .wait_from(
            &bob.session,
            Some(start),
            100,
            Duration::from_secs(5),
            Some(live),
        )
        .await
        .unwrap();
    assert!(
        read.events.iter().any(|e| matches!(
            &e.kind,
            EventKind::PresenceChanged { user, status: chat_core::Status::Online }
                | EventKind::PresenceUpdated { user, status: chat_core::Status::Online, .. }
                if *user == alice.session.user
        )),
        "bob hears alice come online: {:?}",
        read.events
    );

    // Bob connects and types on the writer: alice, on the follower, hears both, and the follower's core
    // answers bob's presence as the writer announced it.
    let alice_start = b.read(&alice.session, None, 1000).await.unwrap().cursor;
    let mut live = b.live_generation(alice.session.user);
    retry(async || a.command(&bob.session, Command::Connect, None).await).await;
    let typing = Command::Typing {
        channel: chat_core::ChannelRef::Name("#c".into()),
    };
    retry(async || a.command(&bob.session, typing.clone(), None).await).await;
    let mut seen_typing = false;
    let mut cursor = alice_start;
    for _ in 0..20 {
        let read = b
            .wait_from(
                &alice.session,
                Some(cursor),
                100,
                Duration::from_secs(2),
                Some(live),
            )
            .await
            .unwrap();
        cursor = read.cursor;
        live = read.live;
        seen_typing |= read.events.iter().any(
            |e| matches!(&e.kind, EventKind::Typing { user, .. } if *user == bob.session.user),
        );
        if seen_typing {
            break;
        }
    }
    assert!(
        seen_typing,
        "typing on the writer reaches a reader on the follower"
    );
    let bob_user = bob.session.user;
    let on_b = b.query(move |core| core.presence(bob_user)).await.unwrap();
    assert_eq!(on_b, chat_core::Status::Online);

    a.shutdown().await.unwrap();
    a_task.await.unwrap().unwrap();
    b.shutdown().await.unwrap();
    b_task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_rate_holds_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let limited = || EngineConfig {
        rate_limit: Some(chat_engine::RateLimit {
            burst: 4,
            per_second: 0.01,
        }),
        data_dir: dir.path().to_path_buf(),
        ..EngineConfig::default()
    };
    let cluster = |id| ClusterConfig {
        node_id: id,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        lease_ttl: Duration::from_millis(800),
    };
    let (a, a_task) = Engine::open_cluster(Arc::clone(&store), limited(), cluster(1))
        .await
        .unwrap();
    until_writer(&a).await;
    let (b, b_task) = Engine::open_cluster(Arc::clone(&store), limited(), cluster(2))
        .await
        .unwrap();
    let alice = retry(async || b.guest("alice", "phone").await).await;
    let join = Command::Join {
        channel: "#c".into(),
        key: None,
    };
    retry(async || b.command(&alice.session, join.clone(), None).await).await;
    // The join took one token of four; three more messages pass, alternating nodes, and the next is refused
    // whichever node it goes through: one bucket, kept by the writer.
    for i in 0..3 {
        let on = if i % 2 == 0 { &a } else { &b };
        on.command(&alice.session, say(&format!("m{i}")), None)
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    for on in [&a, &b] {
        let err = on
            .command(&alice.session, say("one too many"), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, chat_engine::EngineError::RateLimited { .. }),
            "{err:?}"
        );
    }
    a.shutdown().await.unwrap();
    a_task.await.unwrap().unwrap();
    b.shutdown().await.unwrap();
    b_task.await.unwrap().unwrap();
}
