//! The store conformance suite: every test is written once over `S: Store` and run against the in-memory
//! reference, SQLite on a real file and PostgreSQL on a real server, with events made by a real
//! `chat_core::Core`.

mod format;
mod postgres_only;
mod random;
mod sqlite_only;

use std::collections::{BTreeMap, BTreeSet};

use chat_core::{
    ChannelId, ChannelKind, ChannelRef, ClientId, Command, Config, Core, Created, Event, MessageId,
    MessageKind, NewClient, Origin, Outgoing, OverwriteTarget, Permissions, Seq, SpaceId, Target,
    UserId, UserRef,
};
use chat_store::{
    Batch, HistoryQuery, MemoryStore, NonceRecord, RetentionReport, SearchQuery, Store, StoreError,
    StoredMessage,
};

/// Where the clock starts (2027).
pub(crate) const NOW: u64 = 1_800_000_000_000;

/// A core driven the way the engine drives it: each input is followed by draining its events, and each
/// durable event's recipients are resolved right away (they are only valid until the next input).
pub(crate) struct World {
    pub(crate) core: Core,
    pub(crate) now: u64,
    pending: Vec<Event>,
    /// Every durable event so far, in order.
    pub(crate) log: Vec<Event>,
    /// Who received each durable event, by seq: what the store's `user_stream` must reproduce.
    pub(crate) recipients: BTreeMap<Seq, BTreeSet<UserId>>,
    /// The last seq of each input that produced durable events and are not yet handed to a store.
    ends: Vec<Seq>,
    /// The command ends of the last batch `flush` appended.
    pub(crate) flushed_ends: Vec<Seq>,
    tokens: u32,
}

impl World {
    pub(crate) fn new() -> Self {
        let mut w = Self {
            core: Core::new(Config::default(), NOW),
            now: NOW,
            pending: Vec::new(),
            log: Vec::new(),
            recipients: BTreeMap::new(),
            ends: Vec::new(),
            flushed_ends: Vec::new(),
            tokens: 0,
        };
        w.drain();
        w
    }

    fn drain(&mut self) {
        let before = self.pending.last().map(|e| e.seq);
        while let Some(ev) = self.core.poll_event() {
            if ev.is_durable() {
                let r: BTreeSet<UserId> = self.core.recipients(&ev).collect();
                self.recipients.insert(ev.seq, r);
                self.log.push(ev.clone());
                self.pending.push(ev);
            }
        }
        if self.pending.last().map(|e| e.seq) != before {
            self.ends.push(self.core.last_seq());
        }
    }

    /// Runs a command as a client (or the system with `None`), advancing the clock; panics if refused.
    pub(crate) fn run(&mut self, client: Option<ClientId>, cmd: Command) -> Option<Created> {
        self.try_run(client, cmd.clone())
            .unwrap_or_else(|e| panic!("{cmd:?} refused: {e}"))
    }

    /// Runs a command that may be refused.
    pub(crate) fn try_run(
        &mut self,
        client: Option<ClientId>,
        cmd: Command,
    ) -> Result<Option<Created>, chat_core::Error> {
        self.now += 1_000;
        let origin = client.map_or(Origin::System, Origin::Client);
        let reply = self.core.handle(self.now, origin, cmd);
        self.drain();
        Ok(reply?.created)
    }

    pub(crate) fn guest(&mut self, nick: &str) -> (UserId, ClientId) {
        self.register(nick, None)
    }

    /// A user with an account (a password hash), who may own spaces.
    pub(crate) fn account(&mut self, nick: &str) -> (UserId, ClientId) {
        self.register(nick, Some("$argon2id$test".into()))
    }

    fn register(&mut self, nick: &str, password_hash: Option<String>) -> (UserId, ClientId) {
        self.tokens += 1;
        let mut token_hash = [0u8; 32];
        token_hash[..4].copy_from_slice(&self.tokens.to_le_bytes());
        self.now += 1_000;
        let reply = self
            .core
            .handle(
                self.now,
                Origin::Anonymous,
                Command::Register {
                    nick: nick.into(),
                    password_hash,
                    bot: false,
                    client: Some(NewClient {
                        name: "test".into(),
                        token_hash,
                    }),
                },
            )
            .expect("register");
        self.drain();
        match reply.created {
            Some(Created::User {
                user,
                client: Some(client),
            }) => (user, client),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub(crate) fn join(&mut self, c: ClientId, channel: &str) -> ChannelId {
        self.run(
            Some(c),
            Command::Join {
                channel: channel.into(),
                key: None,
            },
        );
        self.core.channel_by_name(channel).expect("joined").id
    }

    pub(crate) fn say(&mut self, c: ClientId, to: &str, body: &str) -> MessageId {
        self.send(c, Target::parse(to), body)
    }

    pub(crate) fn send(&mut self, c: ClientId, to: Target, body: &str) -> MessageId {
        match self.run(
            Some(c),
            Command::Send {
                to,
                message: Outgoing {
                    body: body.into(),
                    ..Outgoing::default()
                },
            },
        ) {
            Some(Created::Message(id)) => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The durable events not yet handed to a store.
    pub(crate) fn take(&mut self) -> Vec<Event> {
        self.ends.clear();
        std::mem::take(&mut self.pending)
    }

    /// The pending events with their command ends, taken.
    pub(crate) fn take_commands(&mut self) -> (Vec<Event>, Vec<Seq>) {
        let ends = std::mem::take(&mut self.ends);
        (std::mem::take(&mut self.pending), ends)
    }

    /// Appends everything pending to `store` as one batch.
    pub(crate) fn flush<S: Store>(&mut self, store: &S) {
        let (events, ends) = self.take_commands();
        self.flushed_ends.clone_from(&ends);
        store
            .append(&Batch {
                events: &events,
                command_ends: &ends,
                ..Batch::default()
            })
            .expect("append");
    }
}

fn hq(channel: ChannelId, limit: usize) -> HistoryQuery {
    HistoryQuery {
        channel,
        before: None,
        after: None,
        around: None,
        limit,
    }
}

fn sq(text: &str, channels: &[ChannelId]) -> SearchQuery {
    SearchQuery {
        text: text.into(),
        channels: channels.to_vec(),
        author: None,
        channel: None,
        space: None,
        before: None,
        after: None,
        limit: 100,
        offset: 0,
    }
}

fn bodies(ms: &[StoredMessage]) -> Vec<&str> {
    ms.iter().map(|m| m.body.as_str()).collect()
}

/// Reads a whole user stream page by page, checking that pages continue where the last one ended.
pub(crate) fn whole_stream<S: Store>(s: &S, user: UserId, after: Seq) -> Vec<Seq> {
    let mut out = Vec::new();
    let mut cursor = after;
    let last = s.last_seq().unwrap();
    for _ in 0..100_000 {
        let page = s.user_stream(user, cursor, 7).unwrap();
        assert!(!page.reset);
        assert!(page.next >= cursor);
        out.extend(page.events.iter().map(|e| e.seq));
        if page.next == cursor || page.next >= last {
            break;
        }
        cursor = page.next;
    }
    out
}

// ---- the conformance tests ------------------------------------------------------------------------------

fn round_trip_and_out_of_order<S: Store>(s: &S) {
    assert_eq!(s.last_seq().unwrap(), 0);
    assert_eq!(s.first_seq().unwrap(), None);
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    w.join(a, "#rust");
    w.say(a, "#rust", "hello");
    let events = w.take();
    s.append(&Batch {
        events: &events,
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(s.last_seq().unwrap(), events.last().unwrap().seq);
    assert_eq!(s.first_seq().unwrap(), Some(1));
    assert_eq!(s.events_after(0, usize::MAX).unwrap(), events);
    assert_eq!(s.events_after(2, 3).unwrap(), events[2..5].to_vec());
    // The same batch again does not continue the log.
    let again = s.append(&Batch {
        events: &events[..1],
        ..Batch::default()
    });
    assert!(
        matches!(again, Err(StoreError::OutOfOrder { got: 1, .. })),
        "{again:?}"
    );
    // Nor does a gap.
    let mut gap = w.log.last().unwrap().clone();
    gap.seq += 2;
    assert!(matches!(
        s.append(&Batch {
            events: &[gap],
            ..Batch::default()
        }),
        Err(StoreError::OutOfOrder { .. })
    ));
    assert_eq!(s.events_after(0, usize::MAX).unwrap(), events);
}

fn failing_batch_leaves_nothing<S: Store>(s: &S) {
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    let m = w.say(a, "#rust", "hello");
    let mut events = w.take();
    let mut bad = events.last().unwrap().clone();
    bad.seq += 5;
    events.push(bad);
    let client = ClientId::from_raw(7).unwrap();
    let nonce = NonceRecord {
        user: alice,
        nonce: "n1".into(),
        at: NOW,
        reply: vec![1, 2, 3],
    };
    let r = s.append(&Batch {
        events: &events,
        cursors: &[(client, 3)],
        nonces: std::slice::from_ref(&nonce),
        ..Batch::default()
    });
    assert!(matches!(r, Err(StoreError::OutOfOrder { .. })));
    assert_eq!(s.last_seq().unwrap(), 0);
    assert!(s.events_after(0, 100).unwrap().is_empty());
    assert!(s.history(&hq(ch, 50)).unwrap().is_empty());
    assert!(s.message(m).unwrap().is_none());
    assert!(s.cursors().unwrap().is_empty());
    assert!(s.nonce(alice, "n1").unwrap().is_none());
    // The good prefix still goes in afterwards.
    events.pop();
    s.append(&Batch {
        events: &events,
        cursors: &[(client, 3)],
        nonces: &[nonce],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(s.message(m).unwrap().unwrap().body, "hello");
}

fn history_paging<S: Store>(s: &S) {
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    let ids: Vec<MessageId> = (0..30)
        .map(|i| w.say(a, "#rust", &format!("m{i}")))
        .collect();
    w.flush(s);
    let newest = s.history(&hq(ch, 10)).unwrap();
    assert_eq!(
        bodies(&newest),
        (20..30).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let first = &newest[0];
    assert_eq!(first.author, alice);
    assert_eq!(first.channel, ch);
    assert_eq!(first.kind, MessageKind::Message);
    assert!(
        first.space.is_some(),
        "network channels are in the network space"
    );
    let before = s
        .history(&HistoryQuery {
            before: Some(ids[20]),
            ..hq(ch, 5)
        })
        .unwrap();
    assert_eq!(bodies(&before), ["m15", "m16", "m17", "m18", "m19"]);
    let after = s
        .history(&HistoryQuery {
            after: Some(ids[5]),
            ..hq(ch, 3)
        })
        .unwrap();
    assert_eq!(bodies(&after), ["m6", "m7", "m8"]);
    let around = s
        .history(&HistoryQuery {
            around: Some(ids[10]),
            ..hq(ch, 4)
        })
        .unwrap();
    assert_eq!(bodies(&around), ["m8", "m9", "m10", "m11"]);
    // The join notice is history too; the page size is capped at 100.
    let all = s.history(&hq(ch, 500)).unwrap();
    assert_eq!(all.len(), 31);
    assert_eq!(all[0].kind, MessageKind::Join);
    assert!(all.windows(2).all(|p| p[0].id < p[1].id), "oldest first");
    let mut many = World::new();
    let (_, b) = many.guest("bob");
    let c2 = many.join(b, "#big");
    for i in 0..120 {
        many.say(b, "#big", &format!("x{i}"));
    }
    let s2 = MemoryStore::new();
    many.flush(&s2);
    assert_eq!(s2.history(&hq(c2, 1000)).unwrap().len(), 100);
    assert!(
        s.history(&hq(ChannelId::from_raw(12345).unwrap(), 10))
            .unwrap()
            .is_empty()
    );
}

fn changes_are_reflected<S: Store>(s: &S) {
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    let (bob, b) = w.guest("bob");
    let ch = w.join(a, "#rust");
    w.join(b, "#rust");
    let m1 = w.say(a, "#rust", "first");
    let m2 = w.say(a, "#rust", "second");
    w.run(
        Some(a),
        Command::Edit {
            message: m1,
            body: "first, edited".into(),
            meta: None,
            embeds: Some(r#"[{"title":"edited"}]"#.into()),
        },
    );
    w.run(Some(a), Command::Delete { message: m2 });
    for (c, emoji) in [(b, "👍"), (a, "👍"), (a, "🎉")] {
        w.run(
            Some(c),
            Command::React {
                message: m1,
                emoji: emoji.into(),
            },
        );
    }
    w.run(
        Some(a),
        Command::Unreact {
            message: m1,
            emoji: "🎉".into(),
            user: None,
        },
    );
    w.run(Some(a), Command::Pin { message: m1 });
    w.run(
        Some(a),
        Command::Topic {
            channel: ChannelRef::Id(ch),
            topic: "all about rust".into(),
        },
    );
    w.run(
        Some(b),
        Command::Nick {
            nick: "robert".into(),
        },
    );
    w.run(
        Some(a),
        Command::Mode {
            channel: ChannelRef::Id(ch),
            modes: "+v".into(),
            args: vec!["robert".into()],
        },
    );
    w.run(
        Some(b),
        Command::Part {
            channel: ChannelRef::Id(ch),
            reason: Some("bye now".into()),
        },
    );
    w.flush(s);

    let m = s.message(m1).unwrap().unwrap();
    assert_eq!(m.body, "first, edited");
    assert_eq!(m.embeds.as_deref(), Some(r#"[{"title":"edited"}]"#));
    assert!(m.edited_at.is_some());
    assert!(m.pinned);
    assert_eq!(
        m.reactions,
        BTreeMap::from([("👍".to_owned(), vec![bob, alice])])
    );
    assert!(s.message(m2).unwrap().is_none());
    let h = s.history(&hq(ch, 100)).unwrap();
    assert!(h.iter().all(|x| x.id != m2), "deleted messages are absent");
    let kinds: Vec<MessageKind> = h.iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        [
            MessageKind::Join,
            MessageKind::Join,
            MessageKind::Message,
            MessageKind::Pin,
            MessageKind::Topic,
            MessageKind::Nick,
            MessageKind::Mode,
            MessageKind::Part,
        ]
    );
    let by_kind = |k| h.iter().find(|x| x.kind == k).unwrap();
    assert_eq!(by_kind(MessageKind::Pin).reply_to, Some(m1));
    assert_eq!(by_kind(MessageKind::Topic).body, "all about rust");
    assert_eq!(by_kind(MessageKind::Nick).body, "robert");
    assert_eq!(by_kind(MessageKind::Mode).body, format!("+v {bob}"));
    assert_eq!(by_kind(MessageKind::Part).body, "bye now");
    assert_eq!(by_kind(MessageKind::Part).author, bob);
    w.run(Some(a), Command::Unpin { message: m1 });
    w.flush(s);
    assert!(!s.message(m1).unwrap().unwrap().pinned);
}

/// Drives a varied world: network channels, parts, kicks, DMs, a group DM, spaces with a private channel
/// and a thread, a quit. Returns the world (its recipients are the expected streams).
fn busy_world() -> (World, BTreeMap<&'static str, UserId>) {
    let mut w = World::new();
    let (alice, a) = w.account("alice");
    let (bob, b) = w.guest("bob");
    let (carol, c) = w.guest("carol");
    let (dave, d) = w.guest("dave");
    let rust = w.join(a, "#rust");
    w.say(a, "#rust", "before bob");
    w.join(b, "#rust");
    w.say(a, "#rust", "while bob is here");
    w.run(
        Some(b),
        Command::Part {
            channel: ChannelRef::Id(rust),
            reason: None,
        },
    );
    w.say(a, "#rust", "after bob");
    w.join(c, "#rust");
    w.run(
        Some(a),
        Command::Kick {
            channel: ChannelRef::Id(rust),
            user: UserRef::Nick("carol".into()),
            reason: Some("testing".into()),
        },
    );
    w.say(a, "#rust", "after the kick");
    w.say(a, "carol", "a private word");
    w.say(c, "alice", "a private reply");
    w.run(
        Some(a),
        Command::CreateGroupDm {
            users: vec![bob, carol],
            name: None,
        },
    );
    let space = match w.run(
        Some(a),
        Command::CreateSpace {
            name: "lab".into(),
            description: None,
            public: true,
        },
    ) {
        Some(Created::Space(s)) => s,
        other => panic!("{other:?}"),
    };
    w.run(Some(b), Command::JoinSpace { space });
    let private = create_channel(&mut w, a, space, "secret", true);
    let open = create_channel(&mut w, a, space, "open", false);
    w.send(
        a,
        Target::Channel(ChannelRef::Id(private)),
        "hidden from bob",
    );
    let starter = w.send(a, Target::Channel(ChannelRef::Id(open)), "seen by bob");
    if let Some(Created::Channel(thread)) = w.run(
        Some(a),
        Command::CreateThread {
            channel: ChannelRef::Id(open),
            name: "thread".into(),
            message: Some(starter),
        },
    ) {
        w.send(b, Target::Channel(ChannelRef::Id(thread)), "in the thread");
    }
    w.run(
        Some(a),
        Command::SetOverwrite {
            channel: private,
            target: OverwriteTarget::Member(bob),
            allow: Permissions::VIEW_CHANNEL,
            deny: Permissions::empty(),
        },
    );
    w.send(
        a,
        Target::Channel(ChannelRef::Id(private)),
        "now bob sees it",
    );
    w.run(Some(b), Command::LeaveSpace { space });
    w.send(a, Target::Channel(ChannelRef::Id(open)), "bob has left");
    w.join(d, "#rust");
    w.run(
        Some(a),
        Command::Nick {
            nick: "alicia".into(),
        },
    );
    w.run(
        Some(d),
        Command::Quit {
            reason: Some("gone".into()),
        },
    );
    w.say(a, "#rust", "after dave quit");
    let users = BTreeMap::from([
        ("alice", alice),
        ("bob", bob),
        ("carol", carol),
        ("dave", dave),
    ]);
    (w, users)
}

fn create_channel(
    w: &mut World,
    c: ClientId,
    space: SpaceId,
    name: &str,
    private: bool,
) -> ChannelId {
    let overwrites = if private {
        vec![(
            OverwriteTarget::Role(space.everyone_role()),
            Permissions::empty(),
            Permissions::VIEW_CHANNEL,
        )]
    } else {
        Vec::new()
    };
    match w.run(
        Some(c),
        Command::CreateChannel {
            space,
            name: name.into(),
            kind: ChannelKind::Text,
            parent: None,
            topic: None,
            overwrites,
        },
    ) {
        Some(Created::Channel(id)) => id,
        other => panic!("{other:?}"),
    }
}

fn body_of(e: &Event) -> Option<&str> {
    match &e.kind {
        chat_core::EventKind::MessageCreated { message } => Some(message.body.as_str()),
        _ => None,
    }
}

fn user_stream_visibility<S: Store>(s: &S) {
    let (mut w, users) = busy_world();
    // Appended in several batches of a few commands each, as the engine's group commits would.
    let (events, ends) = w.take_commands();
    let mut start = 0;
    for group in ends.chunks(3) {
        let last = *group.last().unwrap();
        let stop = events
            .iter()
            .position(|e| e.seq > last)
            .unwrap_or(events.len());
        s.append(&Batch {
            events: &events[start..stop],
            command_ends: group,
            ..Batch::default()
        })
        .unwrap();
        start = stop;
    }
    assert_eq!(start, events.len());
    // Every user's stream is exactly what the core delivered live, from any starting cursor.
    let everyone: BTreeSet<UserId> = w.recipients.values().flatten().copied().collect();
    for user in everyone {
        let expected: Vec<Seq> = w
            .recipients
            .iter()
            .filter(|(_, r)| r.contains(&user))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(whole_stream(s, user, 0), expected, "stream of {user}");
        let mid = expected.get(expected.len() / 2).copied().unwrap_or(0);
        let tail: Vec<Seq> = expected.iter().copied().filter(|s| *s > mid).collect();
        assert_eq!(whole_stream(s, user, mid), tail);
    }
    // And the named cases, spelled out.
    let seen = |name: &str| -> Vec<String> {
        let seqs: BTreeSet<Seq> = whole_stream(s, users[name], 0).into_iter().collect();
        w.log
            .iter()
            .filter(|e| seqs.contains(&e.seq))
            .filter_map(|e| body_of(e).map(str::to_owned))
            .collect()
    };
    let bob = seen("bob");
    assert!(!bob.contains(&"before bob".into()));
    assert!(bob.contains(&"while bob is here".into()));
    assert!(!bob.contains(&"after bob".into()));
    assert!(!bob.contains(&"a private word".into()));
    assert!(!bob.contains(&"hidden from bob".into()));
    assert!(bob.contains(&"seen by bob".into()));
    assert!(bob.contains(&"in the thread".into()));
    assert!(bob.contains(&"now bob sees it".into()));
    assert!(!bob.contains(&"bob has left".into()));
    let carol = seen("carol");
    assert!(carol.contains(&"a private word".into()));
    assert!(carol.contains(&"a private reply".into()));
    assert!(!carol.contains(&"after the kick".into()));
    let bob_seqs: BTreeSet<Seq> = whole_stream(s, users["bob"], 0).into_iter().collect();
    let own_part = w.log.iter().any(|e| {
        bob_seqs.contains(&e.seq)
            && matches!(&e.kind, chat_core::EventKind::Parted { user, .. } if *user == users["bob"])
    });
    assert!(own_part, "a user sees their own part");
    let dave = seen("dave");
    assert!(!dave.contains(&"after dave quit".into()));
    // Internal events reach nobody.
    let nobody: Vec<Seq> = w
        .log
        .iter()
        .filter(|e| e.audience == chat_core::Audience::Nobody)
        .map(|e| e.seq)
        .collect();
    for u in users.values() {
        let st: BTreeSet<Seq> = whole_stream(s, *u, 0).into_iter().collect();
        assert!(nobody.iter().all(|n| !st.contains(n)));
    }
}

fn stream_reset_after_retention<S: Store>(s: &S) {
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    w.join(a, "#rust");
    for i in 0..20 {
        w.say(a, "#rust", &format!("m{i}"));
    }
    w.flush(s);
    let last = s.last_seq().unwrap();
    let snap = last - 5;
    // Nothing goes without a snapshot to rebuild from.
    let r = s.enforce_retention(usize::MAX, u64::MAX, 0).unwrap();
    assert_eq!(r.events, 0);
    s.save_snapshot(snap, b"state").unwrap();
    let mut total = 0;
    loop {
        let r = s.enforce_retention(usize::MAX, u64::MAX, 0).unwrap();
        if r.events == 0 {
            break;
        }
        total += r.events;
    }
    assert_eq!(total, snap - 1);
    assert_eq!(s.first_seq().unwrap(), Some(snap));
    assert_eq!(s.events_after(0, 100).unwrap().first().unwrap().seq, snap);
    let page = s.user_stream(alice, 0, 100).unwrap();
    assert!(page.reset);
    assert!(page.events.is_empty());
    let page = s.user_stream(alice, snap - 1, 100).unwrap();
    assert!(!page.reset);
    assert_eq!(page.events.first().unwrap().seq, snap);
    // History is untouched by log retention.
    assert_eq!(
        s.history(&hq(w.core.channel_by_name("#rust").unwrap().id, 100))
            .unwrap()
            .len(),
        21
    );
}

fn search_works<S: Store>(s: &S) {
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    let (bob, b) = w.guest("bob");
    let ra = w.join(a, "#a");
    w.join(b, "#a");
    let rb = w.join(b, "#b");
    let hello = w.say(a, "#a", "hello world");
    let fox = w.say(a, "#a", "the quick brown fox");
    let foxes = w.say(b, "#a", "foxes are QUICK");
    let quickly = w.say(b, "#b", "quickly now");
    let gone = w.say(b, "#b", "quick but deleted");
    w.run(Some(b), Command::Delete { message: gone });
    w.flush(s);
    let both = [ra, rb];
    let ids = |q: &SearchQuery| -> Vec<MessageId> {
        s.search(q).unwrap().iter().map(|h| h.message.id).collect()
    };
    assert_eq!(ids(&sq("quick", &both)), [foxes, fox], "newest first");
    assert_eq!(ids(&sq("\"quick brown\"", &both)), [fox]);
    assert_eq!(ids(&sq("\"brown quick\"", &both)), []);
    assert_eq!(ids(&sq("qui*", &both)), [quickly, foxes, fox]);
    assert_eq!(ids(&sq("quick fox", &both)), [fox]);
    assert_eq!(ids(&sq("fox*", &both)), [foxes, fox]);
    // Only what the searcher may view.
    assert_eq!(ids(&sq("qui*", &[ra])), [foxes, fox]);
    assert_eq!(ids(&sq("qui*", &[])), []);
    // Filters.
    assert_eq!(
        ids(&SearchQuery {
            author: Some(bob),
            ..sq("qui*", &both)
        }),
        [quickly, foxes]
    );
    assert_eq!(
        ids(&SearchQuery {
            author: Some(alice),
            ..sq("qui*", &both)
        }),
        [fox]
    );
    assert_eq!(
        ids(&SearchQuery {
            channel: Some(rb),
            ..sq("qui*", &both)
        }),
        [quickly]
    );
    let network = s.message(fox).unwrap().unwrap().space.unwrap();
    assert_eq!(
        ids(&SearchQuery {
            space: Some(network),
            ..sq("qui*", &both)
        })
        .len(),
        3
    );
    assert_eq!(
        ids(&SearchQuery {
            before: Some(quickly),
            after: Some(fox),
            ..sq("qui*", &both)
        }),
        [foxes]
    );
    // Paging.
    assert_eq!(
        ids(&SearchQuery {
            limit: 1,
            offset: 1,
            ..sq("qui*", &both)
        }),
        [foxes]
    );
    assert_eq!(
        ids(&SearchQuery {
            limit: 2,
            offset: 2,
            ..sq("qui*", &both)
        }),
        [fox]
    );
    // Highlights.
    let hit = &s.search(&sq("hello", &both)).unwrap()[0];
    assert_eq!(hit.message.id, hello);
    assert!(hit.snippet.contains("\u{2}hello\u{3}"), "{:?}", hit.snippet);
    // Edits re-index.
    w.run(
        Some(a),
        Command::Edit {
            message: hello,
            body: "goodbye world".into(),
            meta: None,
            embeds: None,
        },
    );
    w.flush(s);
    assert_eq!(ids(&sq("hello", &both)), []);
    assert_eq!(ids(&sq("goodbye", &both)), [hello]);
    // Hostile text never breaks the query.
    for q in [
        "\"",
        "AND (",
        "*",
        "NEAR(",
        "-",
        "a:b",
        "^",
        "\"unclosed",
        "OR",
        "quick AND (",
        ")(",
        "''",
        "\u{2}",
        "body:fox",
        "fox\"*",
        "**",
        "NOT quick",
    ] {
        s.search(&sq(q, &both))
            .unwrap_or_else(|e| panic!("{q:?} failed: {e}"));
    }
    assert_eq!(ids(&sq("fox\"", &both)), [fox]);
    // System notices are not searched.
    assert_eq!(ids(&sq("bob", &both)), []);
}

fn cursors_and_nonces<S: Store>(s: &S) {
    let c1 = ClientId::from_raw(11).unwrap();
    let c2 = ClientId::from_raw(22).unwrap();
    assert!(s.cursors().unwrap().is_empty());
    s.save_cursors(&[(c2, 5), (c1, 3)]).unwrap();
    assert_eq!(s.cursors().unwrap(), [(c1, 3), (c2, 5)]);
    let mut w = World::new();
    let (alice, _) = w.guest("alice");
    let events = w.take();
    let old = NonceRecord {
        user: alice,
        nonce: "old".into(),
        at: NOW,
        reply: b"first".to_vec(),
    };
    let new = NonceRecord {
        user: alice,
        nonce: "new".into(),
        at: NOW + 20 * 60_000,
        reply: b"second".to_vec(),
    };
    s.append(&Batch {
        events: &events,
        cursors: &[(c1, 9)],
        nonces: &[old.clone(), new.clone()],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(s.cursors().unwrap(), [(c1, 9), (c2, 5)]);
    assert_eq!(s.nonce(alice, "old").unwrap(), Some(old));
    assert_eq!(s.nonce(alice, "nope").unwrap(), None);
    assert_eq!(s.nonce(UserId::from_raw(1).unwrap(), "old").unwrap(), None);
    let r = s
        .enforce_retention(usize::MAX, 0, NOW + 10 * 60_000)
        .unwrap();
    assert_eq!(r.nonces, 1);
    assert_eq!(s.nonce(alice, "old").unwrap(), None);
    // Start-up loads the live ones in one read.
    assert!(s.nonces_since(new.at + 1).unwrap().is_empty());
    assert_eq!(s.nonces_since(new.at).unwrap(), std::slice::from_ref(&new));
    assert_eq!(s.nonces_since(NOW).unwrap(), std::slice::from_ref(&new));
    assert_eq!(s.nonce(alice, "new").unwrap(), Some(new));
}

/// Times and cutoffs at the far end of `u64` keep their order in every store: a cutoff of `u64::MAX` means
/// "everything before now and forever", and a time beyond `i64::MAX` is later than any real time, not a
/// negative one.
fn retention_with_extreme_cutoffs<S: Store>(s: &S) {
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    w.join(a, "#rust");
    for i in 0..10 {
        w.say(a, "#rust", &format!("m{i}"));
    }
    let events = w.take();
    let record = |nonce: &str, at| NonceRecord {
        user: alice,
        nonce: nonce.into(),
        at,
        reply: nonce.as_bytes().to_vec(),
    };
    s.append(&Batch {
        events: &events,
        nonces: &[
            record("old", NOW),
            record("later", NOW + 60_000),
            record("never", u64::MAX),
        ],
        ..Batch::default()
    })
    .unwrap();
    let last = s.last_seq().unwrap();
    s.save_snapshot(last, b"state").unwrap();
    // A nonce stamped at the end of time is not older than any real cutoff.
    let r = s.enforce_retention(usize::MAX, 0, NOW + 1).unwrap();
    assert_eq!(r.nonces, 1);
    assert!(s.nonce(alice, "old").unwrap().is_none());
    assert!(s.nonce(alice, "never").unwrap().is_some());
    // A cutoff of `u64::MAX` removes every event the snapshot covers but its own, and every older nonce.
    let mut total = RetentionReport::default();
    loop {
        let r = s.enforce_retention(usize::MAX, u64::MAX, u64::MAX).unwrap();
        if r == RetentionReport::default() {
            break;
        }
        total.events += r.events;
        total.nonces += r.nonces;
    }
    assert_eq!(total.events, last - 1);
    assert_eq!(s.first_seq().unwrap(), Some(last));
    assert_eq!(total.nonces, 1);
    assert!(s.nonce(alice, "later").unwrap().is_none());
    assert!(s.nonce(alice, "never").unwrap().is_some());
}

fn snapshots<S: Store>(s: &S) {
    assert_eq!(s.latest_snapshot().unwrap(), None);
    // A real core state round-trips.
    let w = World::new();
    let state = postcard::to_allocvec(w.core.state()).unwrap();
    s.save_snapshot(w.core.last_seq(), &state).unwrap();
    let (seq, bytes) = s.latest_snapshot().unwrap().unwrap();
    assert_eq!(seq, w.core.last_seq());
    let back: chat_core::State = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(&back, w.core.state());
    // The newest wins.
    s.save_snapshot(5, b"five").unwrap();
    s.save_snapshot(10, b"ten").unwrap();
    assert_eq!(s.latest_snapshot().unwrap(), Some((10, b"ten".to_vec())));
}

fn retention_trims_history<S: Store>(s: &S) {
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    let other = w.join(a, "#other");
    for i in 0..1_200 {
        w.say(a, "#rust", &format!("m{i}"));
    }
    w.say(a, "#other", "keep me");
    w.flush(s);
    let mut removed = 0;
    loop {
        let r = s.enforce_retention(10, 0, 0).unwrap();
        if r.messages == 0 {
            break;
        }
        removed += r.messages;
    }
    assert_eq!(removed, 1_201 - 10);
    let h = s.history(&hq(ch, 100)).unwrap();
    assert_eq!(
        bodies(&h),
        (1_190..1_200).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(s.history(&hq(other, 100)).unwrap().len(), 2);
    assert!(
        s.search(&sq("m5", &[ch])).unwrap().is_empty(),
        "trimmed messages leave the index"
    );
    assert_eq!(s.search(&sq("m1199", &[ch])).unwrap().len(), 1);
}

fn attachments_are_listed_and_trimmed_ones_reported<S: Store>(s: &S) {
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    let other = w.join(a, "#other");
    let file = |id: u64| chat_core::Attachment {
        id,
        filename: format!("f{id}.txt"),
        size: 3,
        content_type: None,
        token: format!("{id:032x}"),
    };
    let mut with_files = Vec::new();
    for id in 1..=3 {
        let created = w.run(
            Some(a),
            Command::Send {
                to: Target::parse("#rust"),
                message: Outgoing {
                    body: format!("file {id}"),
                    attachments: vec![file(id)],
                    ..Outgoing::default()
                },
            },
        );
        match created {
            Some(Created::Message(m)) => with_files.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    w.say(a, "#rust", "no file");
    w.say(a, "#rust", "nor this");
    w.say(a, "#other", "nor here");
    w.run(
        Some(a),
        Command::Delete {
            message: with_files[1],
        },
    );
    w.flush(s);
    let ids = |list: Vec<chat_core::Attachment>| {
        let mut ids: Vec<u64> = list.iter().map(|f| f.id).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(
        ids(s.attachments(ch).unwrap()),
        [1, 3],
        "a deleted message's file is not live"
    );
    assert!(s.attachments(other).unwrap().is_empty());
    // Keep the newest two rows of #rust (the two plain messages are newer than file 3): files 1 and 3 go.
    let mut reported = Vec::new();
    loop {
        let r = s.enforce_retention(2, 0, 0).unwrap();
        if r.messages == 0 {
            break;
        }
        reported.extend(r.attachments);
    }
    reported.sort_by_key(|(_, f)| f.id);
    assert_eq!(reported, vec![(ch, file(1)), (ch, file(3))]);
    assert!(s.attachments(ch).unwrap().is_empty());
}

fn replay_rebuilds_the_core<S: Store>(s: &S) {
    let (mut w, _) = busy_world();
    w.flush(s);
    let mut core = Core::empty(Config::default());
    let logged = s.events_after(0, usize::MAX).unwrap();
    assert_eq!(logged, w.log);
    for ev in &logged {
        core.apply(ev).unwrap();
    }
    // Live-only parts (clients' idle deadlines) differ by design; the durable model is the same.
    assert_eq!(core.last_seq(), w.core.last_seq());
    assert_eq!(
        core.users()
            .map(|u| (u.id, u.nick.clone(), u.released))
            .collect::<Vec<_>>(),
        w.core
            .users()
            .map(|u| (u.id, u.nick.clone(), u.released))
            .collect::<Vec<_>>()
    );
    assert_eq!(core.channels().count(), w.core.channels().count());
}

fn odd_inputs_are_answered<S: Store>(s: &S) {
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    let m = w.say(a, "#rust", "only one");
    w.flush(s);
    let last = s.last_seq().unwrap();
    // Zero limits, cursors past the end, unknown ids: empty answers, never errors.
    assert!(s.events_after(0, 0).unwrap().is_empty());
    assert!(s.events_after(u64::MAX, 10).unwrap().is_empty());
    let page = s.user_stream(alice, 0, 0).unwrap();
    assert!(page.events.is_empty() && !page.reset);
    let page = s.user_stream(alice, last + 100, 10).unwrap();
    assert_eq!(
        (page.events.len(), page.next, page.reset),
        (0, last + 100, false)
    );
    let page = s
        .user_stream(UserId::from_raw(u64::MAX).unwrap(), 0, 10)
        .unwrap();
    assert!(page.events.is_empty());
    let unknown = MessageId::from_raw(u64::MAX).unwrap();
    assert!(s.message(unknown).unwrap().is_none());
    let h = s.history(&hq(ch, 0)).unwrap();
    assert_eq!(bodies(&h), ["only one"], "a zero limit is read as one");
    let h = s
        .history(&HistoryQuery {
            before: Some(unknown),
            ..hq(ch, 100)
        })
        .unwrap();
    assert_eq!(h.len(), 2, "everything is before the largest id");
    let h = s
        .history(&HistoryQuery {
            around: Some(unknown),
            ..hq(ch, 2)
        })
        .unwrap();
    assert_eq!(bodies(&h), ["only one"]);
    assert_eq!(
        s.search(&SearchQuery {
            before: Some(unknown),
            ..sq("only", &[ch])
        })
        .unwrap()
        .len(),
        1
    );
    let h = s
        .history(&HistoryQuery {
            around: Some(m),
            ..hq(ch, 1)
        })
        .unwrap();
    assert_eq!(bodies(&h), ["only one"]);
    let far = SearchQuery {
        offset: usize::MAX,
        ..sq("only", &[ch])
    };
    assert!(s.search(&far).unwrap().is_empty());
    assert!(s.search(&sq("", &[ch])).unwrap().is_empty());
    assert!(
        s.search(&sq(&"x".repeat(10_000), &[ch]))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.search(&SearchQuery {
            limit: 0,
            ..sq("only", &[ch])
        })
        .unwrap()
        .len(),
        1
    );
    assert!(s.nonce(alice, &"n".repeat(1000)).unwrap().is_none());
    s.save_cursors(&[]).unwrap();
    s.append(&Batch::default()).unwrap();
    assert_eq!(s.last_seq().unwrap(), last);
}

/// Server links: added once by name, listed in name order with their keys and cursors, cursors moved,
/// removed; a second add of a name and a change to a link that is gone change nothing.
fn server_links<S: Store>(s: &S) {
    assert_eq!(s.links().unwrap(), vec![]);
    let b = chat_store::ServerLink {
        name: "b.example".into(),
        url: "http://127.0.0.1:9002".into(),
        key: Some("a key for b, with 'quotes' and ünïcode".into()),
        added_at: NOW,
        cursor: 17,
    };
    let a = chat_store::ServerLink {
        name: "a.example".into(),
        url: "https://a.example".into(),
        key: None,
        added_at: NOW + 1,
        cursor: 0,
    };
    assert!(s.add_link(&b).unwrap());
    assert!(s.add_link(&a).unwrap());
    let other_url = chat_store::ServerLink {
        url: "http://elsewhere".into(),
        ..b.clone()
    };
    assert!(!s.add_link(&other_url).unwrap(), "a name is added once");
    assert_eq!(s.links().unwrap(), vec![a.clone(), b.clone()]);
    assert!(s.save_link_cursor("b.example", u64::MAX >> 1).unwrap());
    assert!(!s.save_link_cursor("c.example", 5).unwrap());
    assert_eq!(s.links().unwrap()[1].cursor, u64::MAX >> 1);
    assert!(s.remove_link("a.example").unwrap());
    assert!(!s.remove_link("a.example").unwrap());
    assert_eq!(
        s.links().unwrap(),
        vec![chat_store::ServerLink {
            cursor: u64::MAX >> 1,
            ..b
        }]
    );
}

/// Instantiates each conformance test for every store: memory, SQLite on a file, PostgreSQL on a fresh
/// database of the test process's server.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $name() {
                    super::$name(&chat_store::MemoryStore::new());
                }
            )*
        }
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = chat_store::SqliteStore::open(
                        dir.path().join("chat.db"),
                        chat_store::Durability::Full,
                        super::NOW,
                    )
                    .unwrap();
                    super::$name(&store);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let store = chat_store::PostgresStore::open(
                        &test_postgres::server().fresh_db(),
                        super::NOW,
                    )
                    .unwrap();
                    super::$name(&store);
                }
            )*
        }
    };
}

conformance!(
    round_trip_and_out_of_order,
    failing_batch_leaves_nothing,
    history_paging,
    changes_are_reflected,
    user_stream_visibility,
    stream_reset_after_retention,
    search_works,
    cursors_and_nonces,
    snapshots,
    retention_trims_history,
    retention_with_extreme_cutoffs,
    attachments_are_listed_and_trimmed_ones_reported,
    replay_rebuilds_the_core,
    odd_inputs_are_answered,
    server_links,
);
