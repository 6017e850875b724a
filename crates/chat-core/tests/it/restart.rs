//! Restoring a core after a restart: snapshot plus log tail, then a fresh idle window for every client.

use chat_core::{Command, Config, Core, Created, Event, NewClient, Origin, State};

const HOUR: u64 = 3_600_000;

/// A client busy right up to a restart keeps its session once the core is restored and resumed, although its
/// activity after the snapshot is not in the log.
#[test]
fn resume_gives_clients_a_fresh_idle_window() {
    let config = Config {
        session_idle_timeout_ms: 24 * HOUR,
        ..Config::default()
    };
    let mut now = 1_800_000_000_000;
    let mut core = Core::new(config.clone(), now);
    let mut log: Vec<Event> = Vec::new();
    let drain = |core: &mut Core, log: &mut Vec<Event>| {
        while let Some(ev) = core.poll_event() {
            if ev.is_durable() {
                log.push(ev);
            }
        }
    };
    let reply = core
        .handle(
            now,
            Origin::Anonymous,
            Command::Register {
                nick: "alice".into(),
                password_hash: None,
                bot: false,
                client: Some(NewClient {
                    name: "web".into(),
                    token_hash: [7; 32],
                }),
            },
        )
        .unwrap();
    let Some(Created::User {
        client: Some(alice),
        ..
    }) = reply.created
    else {
        panic!("a guest session with a client: {reply:?}")
    };
    drain(&mut core, &mut log);
    let snapshot = postcard::to_allocvec(core.state()).unwrap();
    let snapshot_seq = core.last_seq();

    // Busy for 23 hours after the snapshot; only the JOIN reaches the log.
    now += 23 * HOUR;
    let _ = core
        .handle(
            now,
            Origin::Client(alice),
            Command::Join {
                channel: "#rust".into(),
                key: None,
            },
        )
        .unwrap();
    drain(&mut core, &mut log);
    assert_eq!(
        core.poll_timeout(),
        Some(now + 24 * HOUR),
        "the live core knows alice was busy"
    );

    // Restart: snapshot plus log tail.
    let state: State = postcard::from_bytes(&snapshot).unwrap();
    let mut restored = Core::from_state(config, state);
    for ev in log.iter().filter(|e| e.seq > snapshot_seq) {
        restored.apply(ev).unwrap();
    }
    now += HOUR;
    let stale = restored
        .poll_timeout()
        .expect("alice's client has a deadline");
    assert!(
        stale <= now,
        "without resume the restored deadline is already due ({stale} <= {now})"
    );

    restored.resume(now);
    assert_eq!(restored.poll_timeout(), Some(now + 24 * HOUR));
    restored.handle_timeout(now);
    assert!(
        restored.poll_event().is_none(),
        "nothing expires right after the restart"
    );
    assert!(restored.user_by_nick("alice").is_some());
    assert!(restored.client(alice).is_some());
}
