//! Federation in the core: servers (each a [`Sim`]) pass their markers to each other as linked servers do,
//! by hand here; the network part (signing, the outbox, HTTP) is chatd's tests' business.

use chat_core::{
    ChannelRef, Command, Config, Error, EventKind, GlobalUser, MessageKind, Origin, Outgoing,
    RemoteAction, RemoteOp, Target, UserRef,
};

use crate::harness::Sim;

fn server(name: &str) -> Sim {
    Sim::with_config(Config {
        server_name: Some(name.to_owned()),
        ..Config::default()
    })
}

/// The markers of `from`'s log after seq `after`, as the outbox would send them, with the seq reached.
fn markers(from: &Sim, after: u64) -> (Vec<(RemoteOp, String)>, u64) {
    let mut last = after;
    let mut out = Vec::new();
    for e in from.log() {
        if e.seq <= after {
            continue;
        }
        last = e.seq;
        if let EventKind::Relayed { op, from, .. } = &e.kind {
            out.push(((**op).clone(), from.clone()));
        }
    }
    (out, last)
}

/// A link's one direction: every marker of `from` after `cursor` not from `to` itself goes to `to`.
fn pump(from: &Sim, from_name: &str, to: &mut Sim, to_name: &str, cursor: &mut u64) {
    let (ops, last) = markers(from, *cursor);
    for (op, came) in ops {
        if came == to_name || op.origin == to_name {
            continue;
        }
        let _ = to
            .handle(
                Origin::System,
                Command::Relay {
                    op: Box::new(op),
                    from: from_name.to_owned(),
                },
            )
            .expect("a relayed op is taken");
    }
    *cursor = last;
}

fn say(sim: &mut Sim, client: &str, to: &str, body: &str) -> chat_core::MessageId {
    let reply = sim
        .send(
            client,
            Command::Send {
                to: Target::parse(to),
                message: Outgoing {
                    body: body.to_owned(),
                    ..Outgoing::default()
                },
            },
        )
        .expect("sent");
    match reply.created {
        Some(chat_core::Created::Message(id)) => id,
        other => panic!("no message: {other:?}"),
    }
}

/// The bodies of a channel's messages as `nick: body`, in order, from the log.
fn transcript(sim: &Sim, channel: &str) -> Vec<String> {
    let id = sim.core().channel_by_name(channel).expect("channel").id;
    let mut out = Vec::new();
    for e in sim.log() {
        if let EventKind::MessageCreated { message } = &e.kind
            && message.channel == id
        {
            let nick = &sim.core().user(message.author).expect("author").nick;
            out.push(format!("{nick}: {}", message.body));
        }
    }
    out
}

#[test]
fn two_servers_share_a_channel_and_its_edits_reactions_topic_and_modes() {
    let mut a = server("a.example");
    let mut b = server("b.example");
    a.guest("alice").unwrap();
    b.guest("bob").unwrap();
    let (mut ab, mut ba) = (0, 0);
    let _ = a
        .send(
            "alice",
            Command::Join {
                channel: "#rust".into(),
                key: None,
            },
        )
        .unwrap();
    pump(&a, "a.example", &mut b, "b.example", &mut ab);
    let _ = b
        .send(
            "bob",
            Command::Join {
                channel: "#rust".into(),
                key: None,
            },
        )
        .unwrap();
    pump(&b, "b.example", &mut a, "a.example", &mut ba);
    let hi = say(&mut a, "alice", "#rust", "hi from a");
    say(&mut b, "bob", "#rust", "hi from b");
    pump(&a, "a.example", &mut b, "b.example", &mut ab);
    pump(&b, "b.example", &mut a, "a.example", &mut ba);
    assert_eq!(
        transcript(&a, "#rust"),
        ["alice: hi from a", "bob@b.example: hi from b"]
    );
    // Sent at the same time on two servers: each puts its own first (as linked IRC servers do).
    assert_eq!(
        transcript(&b, "#rust"),
        ["bob: hi from b", "alice@a.example: hi from a"]
    );

    // bob reacts to alice's message on b; alice edits it on a; the channel's op (alice) sets topic and +v.
    let on_b = b
        .core()
        .local_message(&a.core().global_ref(hi).unwrap())
        .expect("alice's message is known on b");
    let _ = b
        .send(
            "bob",
            Command::React {
                message: on_b,
                emoji: "👍".into(),
            },
        )
        .unwrap();
    let _ = a
        .send(
            "alice",
            Command::Edit {
                message: hi,
                body: "hi from a (edited)".into(),
                meta: None,
                embeds: None,
            },
        )
        .unwrap();
    let _ = a
        .send(
            "alice",
            Command::Topic {
                channel: ChannelRef::Name("#rust".into()),
                topic: "Rust, linked".into(),
            },
        )
        .unwrap();
    let _ = a
        .send(
            "alice",
            Command::Mode {
                channel: ChannelRef::Name("#rust".into()),
                modes: "+mv".into(),
                args: vec!["bob@b.example".into()],
            },
        )
        .unwrap();
    pump(&a, "a.example", &mut b, "b.example", &mut ab);
    pump(&b, "b.example", &mut a, "a.example", &mut ba);
    let (ra, rb) = (
        a.core().message(hi).unwrap(),
        b.core().message(on_b).unwrap(),
    );
    assert_eq!(ra.reactions["👍"].len(), 1, "bob's reaction reached a");
    assert!(ra.edited_at.is_some() && rb.edited_at.is_some());
    for (sim, bob) in [(&a, "bob@b.example"), (&b, "bob")] {
        let ch = sim.core().channel_by_name("#rust").unwrap();
        assert_eq!(ch.topic.as_ref().unwrap().text, "Rust, linked");
        assert_eq!(ch.flag_letters(), "mnt");
        let bob = sim.core().user_by_nick(bob).unwrap().id;
        assert!(ch.members().any(|(u, m)| u == bob && m.voice), "+v bob");
    }

    // alice deletes her message: gone on both.
    let _ = a.send("alice", Command::Delete { message: hi }).unwrap();
    pump(&a, "a.example", &mut b, "b.example", &mut ab);
    assert!(b.core().message(on_b).is_none());
    assert!(
        b.core()
            .local_message(&a.core().global_ref(hi).unwrap())
            .is_none()
    );
    a.replay_check();
    b.replay_check();
}

#[test]
fn an_op_is_taken_once_whatever_the_path() {
    // A triangle: a's ops reach c directly and through b; each is applied once.
    let (mut a, mut b, mut c) = (server("a"), server("b"), server("c"));
    a.guest("alice").unwrap();
    c.guest("carol").unwrap();
    let _ = c
        .send(
            "carol",
            Command::Join {
                channel: "#t".into(),
                key: None,
            },
        )
        .unwrap();
    let mut cursors = [0u64; 6];
    let mut round = |a: &mut Sim, b: &mut Sim, c: &mut Sim| {
        pump(a, "a", b, "b", &mut cursors[0]);
        pump(b, "b", c, "c", &mut cursors[1]);
        pump(a, "a", c, "c", &mut cursors[2]);
        pump(c, "c", a, "a", &mut cursors[3]);
        pump(c, "c", b, "b", &mut cursors[4]);
        pump(b, "b", a, "a", &mut cursors[5]);
    };
    round(&mut a, &mut b, &mut c);
    let _ = a
        .send(
            "alice",
            Command::Join {
                channel: "#t".into(),
                key: None,
            },
        )
        .unwrap();
    for i in 0..5 {
        say(&mut a, "alice", "#t", &format!("m{i}"));
    }
    for _ in 0..3 {
        round(&mut a, &mut b, &mut c);
    }
    let want: Vec<String> = (0..5).map(|i| format!("alice@a: m{i}")).collect();
    assert_eq!(transcript(&c, "#t"), want);
    assert_eq!(transcript(&b, "#t"), want);
    let last_of_a = markers(&a, 0).0.last().map(|(op, _)| op.id);
    assert_eq!(
        c.core().relayed().find(|(o, _)| *o == "a").map(|x| x.1),
        last_of_a,
        "c saw a's ops up to a's last"
    );
    c.replay_check();
}

#[test]
fn a_peer_cannot_speak_for_this_servers_users_or_a_user_of_another_home() {
    let mut a = server("a");
    a.guest("alice").unwrap();
    let alice = a.user("alice");
    let forged = |origin: &str, user_server: &str, id: u64| RemoteOp {
        origin: origin.into(),
        id: 7,
        at: 0,
        user: GlobalUser {
            server: user_server.into(),
            id,
            nick: "alice".into(),
        },
        action: RemoteAction::Join {
            channel: "#x".into(),
            key: None,
        },
    };
    let before = a.core().last_seq();
    for (op, from) in [
        (forged("a", "a", alice.get()), "b"),
        (forged("b", "a", alice.get()), "b"),
        (forged("b", "c", 5), "b"),
        (forged("b", "b", 5), "a"),
    ] {
        let err = a
            .handle(
                Origin::System,
                Command::Relay {
                    op: Box::new(op),
                    from: from.into(),
                },
            )
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    }
    // Only the server itself relays.
    let err = a
        .send(
            "alice",
            Command::Relay {
                op: Box::new(forged("b", "b", 5)),
                from: "b".into(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::NotSupported { .. }), "{err}");
    assert_eq!(a.core().last_seq(), before, "nothing was recorded");
}

#[test]
fn dms_reach_the_remote_user_and_back() {
    let mut a = server("a");
    let mut b = server("b");
    a.guest("alice").unwrap();
    b.guest("bob").unwrap();
    let (mut ab, mut ba) = (0, 0);
    // alice cannot name bob@b before b told a of him: a remote user is known from its first op.
    let _ = b
        .send(
            "bob",
            Command::Join {
                channel: "#hello".into(),
                key: None,
            },
        )
        .unwrap();
    pump(&b, "b", &mut a, "a", &mut ba);
    say(&mut a, "alice", "bob@b", "psst");
    pump(&a, "a", &mut b, "b", &mut ab);
    let alice_on_b = b
        .core()
        .user_by_nick("alice@a")
        .expect("alice known on b")
        .id;
    let bob = b.user("bob");
    let dm = b.core().dm_channel(bob, alice_on_b).expect("a DM on b");
    let msgs: Vec<_> = b
        .log()
        .filter_map(|e| match &e.kind {
            EventKind::MessageCreated { message } if message.channel == dm => {
                Some((message.body.clone(), message.kind))
            }
            _ => None,
        })
        .collect();
    assert_eq!(msgs, [("psst".to_owned(), MessageKind::Message)]);
    let _ = b
        .send(
            "bob",
            Command::Send {
                to: Target::User(UserRef::Nick("alice@a".into())),
                message: Outgoing {
                    body: "hi alice".into(),
                    ..Outgoing::default()
                },
            },
        )
        .unwrap();
    pump(&b, "b", &mut a, "a", &mut ba);
    let alice = a.user("alice");
    let bob_on_a = a.core().user_by_nick("bob@b").unwrap().id;
    let dm = a.core().dm_channel(alice, bob_on_a).expect("the DM on a");
    assert_eq!(a.core().channel(dm).unwrap().history().count(), 2);
    a.replay_check();
}

#[test]
fn channels_created_apart_converge_to_the_older_ones_state() {
    let mut a = server("a");
    let mut b = server("b");
    a.guest("alice").unwrap();
    b.guest("bob").unwrap();
    let _ = a
        .send(
            "alice",
            Command::Join {
                channel: "#rust".into(),
                key: None,
            },
        )
        .unwrap();
    let _ = a
        .send(
            "alice",
            Command::Topic {
                channel: ChannelRef::Name("#rust".into()),
                topic: "older".into(),
            },
        )
        .unwrap();
    a.advance(1000);
    b.advance(1000);
    let _ = b
        .send(
            "bob",
            Command::Join {
                channel: "#rust".into(),
                key: None,
            },
        )
        .unwrap();
    for (modes, args) in [("+ms", vec![]), ("+k", vec!["sesame".to_owned()])] {
        let _ = b
            .send(
                "bob",
                Command::Mode {
                    channel: ChannelRef::Name("#rust".into()),
                    modes: modes.into(),
                    args,
                },
            )
            .unwrap();
    }
    let _ = b
        .send(
            "bob",
            Command::Topic {
                channel: ChannelRef::Name("#rust".into()),
                topic: "newer".into(),
            },
        )
        .unwrap();
    // The link comes up: each announces, each takes the other's announcement.
    let (mut ab, mut ba) = (a.core().last_seq(), b.core().last_seq());
    let _ = a.handle(Origin::System, Command::AnnounceChannels).unwrap();
    let _ = b.handle(Origin::System, Command::AnnounceChannels).unwrap();
    pump(&a, "a", &mut b, "b", &mut ab);
    pump(&b, "b", &mut a, "a", &mut ba);
    let view = |sim: &Sim| {
        let ch = sim.core().channel_by_name("#rust").unwrap();
        let mut members: Vec<(String, bool)> = ch
            .members()
            .map(|(u, m)| {
                let nick = sim.core().user(u).unwrap().nick.clone();
                let nick = nick.split('@').next().unwrap().to_owned();
                (nick, m.op)
            })
            .collect();
        members.sort();
        (
            ch.topic.as_ref().map(|t| t.text.clone()),
            ch.flag_letters(),
            ch.flags.key.clone(),
            ch.created_at,
            members,
        )
    };
    let (va, vb) = (view(&a), view(&b));
    assert_eq!(va, vb, "both servers hold the same state");
    assert_eq!(va.0.as_deref(), Some("older"), "the older channel's topic");
    assert_eq!(va.1, "nt");
    assert_eq!(va.2, None);
    assert_eq!(
        va.4,
        [("alice".to_owned(), true), ("bob".to_owned(), false)],
        "the newer side's op lost +o"
    );
    a.replay_check();
    b.replay_check();
}
