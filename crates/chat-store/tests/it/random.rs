//! Random worlds: long runs of random commands (refusals included), after which every store (memory, SQLite,
//! PostgreSQL) must agree with the core's live deliveries and with each other on every query.

use std::collections::BTreeSet;

use chat_core::{
    ChannelKind, ChannelRef, ClientId, Command, EventKind, MessageId, Outgoing, OverwriteTarget,
    Permissions, Seq, Target, UserId, UserRef,
};
use chat_store::{
    Durability, HistoryQuery, MemoryStore, SearchQuery, SqliteStore, Store, StoredMessage,
};

use crate::{NOW, World, whole_stream};

/// A small deterministic generator (splitmix64): reproducible runs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len())])
    }
}

const WORDS: &[&str] = &[
    "apple", "banana", "cherry", "quick", "fox", "rust", "tea", "zebra",
];

fn random_command(w: &World, rng: &mut Rng, users: &[UserId], messages: &[MessageId]) -> Command {
    let channels: Vec<_> = w.core.channels().map(|c| c.id).collect();
    let spaces: Vec<_> = w
        .core
        .spaces()
        .filter(|s| !s.network)
        .map(|s| s.id)
        .collect();
    let names = ["#a", "#b", "#c"];
    let text = |rng: &mut Rng| {
        (0..1 + rng.below(4))
            .map(|_| WORDS[rng.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let chan = |rng: &mut Rng| {
        ChannelRef::Id(
            rng.pick(&channels)
                .unwrap_or(chat_core::ChannelId::from_raw(1).unwrap()),
        )
    };
    let user = |rng: &mut Rng| rng.pick(users).unwrap_or(UserId::from_raw(1).unwrap());
    let msg = |rng: &mut Rng| {
        rng.pick(messages)
            .unwrap_or(MessageId::from_raw(1).unwrap())
    };
    let space = |rng: &mut Rng| {
        rng.pick(&spaces)
            .unwrap_or(chat_core::SpaceId::from_raw(1).unwrap())
    };
    match rng.below(32) {
        0..=2 => Command::Join {
            channel: names[rng.below(3)].into(),
            key: None,
        },
        3 => Command::Part {
            channel: chan(rng),
            reason: Some(text(rng)),
        },
        4..=8 => Command::Send {
            to: if rng.below(4) == 0 {
                Target::User(UserRef::Id(user(rng)))
            } else {
                Target::Channel(chan(rng))
            },
            message: Outgoing {
                body: text(rng),
                ..Outgoing::default()
            },
        },
        9 => Command::Edit {
            message: msg(rng),
            body: text(rng),
            meta: None,
            embeds: (rng.below(3) == 0).then(|| format!("[{{\"title\":\"{}\"}}]", rng.below(100))),
        },
        10 => Command::Delete { message: msg(rng) },
        11 => Command::React {
            message: msg(rng),
            emoji: ["👍", "🎉"][rng.below(2)].into(),
        },
        12 => Command::Kick {
            channel: chan(rng),
            user: UserRef::Id(user(rng)),
            reason: None,
        },
        13 => Command::CreateSpace {
            name: "s".into(),
            description: None,
            public: true,
        },
        14 => Command::JoinSpace { space: space(rng) },
        15 => Command::LeaveSpace { space: space(rng) },
        16 => Command::CreateChannel {
            space: space(rng),
            name: "c".into(),
            kind: ChannelKind::Text,
            parent: None,
            topic: None,
            overwrites: if rng.below(2) == 0 {
                Vec::new()
            } else {
                let s = space(rng);
                vec![(
                    OverwriteTarget::Role(s.everyone_role()),
                    Permissions::empty(),
                    Permissions::VIEW_CHANNEL,
                )]
            },
        },
        17 => Command::SetOverwrite {
            channel: rng
                .pick(&channels)
                .unwrap_or(chat_core::ChannelId::from_raw(1).unwrap()),
            target: OverwriteTarget::Member(user(rng)),
            allow: if rng.below(2) == 0 {
                Permissions::VIEW_CHANNEL
            } else {
                Permissions::empty()
            },
            deny: Permissions::empty(),
        },
        18 => Command::CreateThread {
            channel: chan(rng),
            name: "t".into(),
            message: rng.pick(messages),
        },
        19 => Command::BanMember {
            space: space(rng),
            user: user(rng),
            reason: None,
        },
        20 => Command::DeleteChannel {
            channel: rng
                .pick(&channels)
                .unwrap_or(chat_core::ChannelId::from_raw(1).unwrap()),
        },
        21 => Command::CreateGroupDm {
            users: vec![user(rng), user(rng)],
            name: None,
        },
        22 => Command::Nick {
            nick: format!("n{}", rng.below(1000)),
        },
        23 => Command::RemoveRecipient {
            channel: rng
                .pick(&channels)
                .unwrap_or(chat_core::ChannelId::from_raw(1).unwrap()),
            user: user(rng),
        },
        24 | 25 => Command::JoinSpace { space: space(rng) },
        26 => Command::KickMember {
            space: space(rng),
            user: user(rng),
            reason: None,
        },
        27 => Command::Pin { message: msg(rng) },
        28 => Command::Topic {
            channel: chan(rng),
            topic: text(rng),
        },
        29 => Command::CreateSpace {
            name: "s2".into(),
            description: None,
            public: true,
        },
        30 => Command::DeleteSpace { space: space(rng) },
        _ => {
            if rng.below(3) == 0 {
                Command::Quit {
                    reason: Some(text(rng)),
                }
            } else {
                Command::Logout
            }
        }
    }
}

fn sorted_history<S: Store>(s: &S, w: &World) -> Vec<Vec<StoredMessage>> {
    let mut channels: BTreeSet<_> = w.core.channels().map(|c| c.id).collect();
    for e in &w.log {
        if let EventKind::ChannelCreated { channel, .. } = &e.kind {
            channels.insert(channel.id);
        }
    }
    channels
        .into_iter()
        .map(|c| {
            s.history(&HistoryQuery {
                channel: c,
                before: None,
                after: None,
                around: None,
                limit: 100,
            })
            .unwrap()
        })
        .collect()
}

fn run_seed(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut w = World::new();
    let mut clients: Vec<(UserId, ClientId)> = Vec::new();
    for i in 0..5 {
        clients.push(if i % 2 == 0 {
            w.account(&format!("acct{i}"))
        } else {
            w.guest(&format!("guest{i}"))
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("chat.db"), Durability::Relaxed, NOW).unwrap();
    let memory = MemoryStore::new();
    let postgres =
        chat_store::PostgresStore::open(&test_postgres::server().fresh_db(), NOW).unwrap();
    let mut guests = 100;
    for step in 0..steps {
        let users: Vec<UserId> = clients.iter().map(|(u, _)| *u).collect();
        let messages: Vec<MessageId> = w
            .log
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::MessageCreated { message } => Some(message.id),
                _ => None,
            })
            .collect();
        let cmd = random_command(&w, &mut rng, &users, &messages);
        let live: Vec<ClientId> = clients
            .iter()
            .map(|(_, c)| *c)
            .filter(|c| w.core.client(*c).is_some())
            .collect();
        let Some(client) = rng.pick(&live) else {
            clients.push(w.guest(&format!("g{step}")));
            continue;
        };
        let _ = w.try_run(Some(client), cmd);
        if rng.below(25) == 0 {
            guests += 1;
            clients.push(w.guest(&format!("g{guests}")));
        }
        if step % 17 == 0 || step + 1 == steps {
            w.flush(&sqlite);
            // The memory store gets the same events; flush took them, so replay them from the SQLite log.
            let have = memory.last_seq().unwrap();
            let events = sqlite.events_after(have, usize::MAX).unwrap();
            let ends: Vec<Seq> = w.flushed_ends.clone();
            let batch = chat_store::Batch {
                events: &events,
                command_ends: &ends,
                ..chat_store::Batch::default()
            };
            memory.append(&batch).unwrap();
            postgres.append(&batch).unwrap();
        }
    }
    let everyone: BTreeSet<UserId> = w.recipients.values().flatten().copied().collect();
    for user in everyone {
        let expected: Vec<Seq> = w
            .recipients
            .iter()
            .filter(|(_, r)| r.contains(&user))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(
            whole_stream(&memory, user, 0),
            expected,
            "seed {seed}: memory stream of {user}"
        );
        assert_eq!(
            whole_stream(&sqlite, user, 0),
            expected,
            "seed {seed}: sqlite stream of {user}"
        );
        assert_eq!(
            whole_stream(&postgres, user, 0),
            expected,
            "seed {seed}: postgres stream of {user}"
        );
    }
    assert_eq!(
        sorted_history(&memory, &w),
        sorted_history(&sqlite, &w),
        "seed {seed}: history"
    );
    assert_eq!(
        sorted_history(&postgres, &w),
        sorted_history(&sqlite, &w),
        "seed {seed}: postgres history"
    );
    let channels: Vec<_> = w.core.channels().map(|c| c.id).collect();
    for q in WORDS.iter().map(|w| w.to_string()).chain([
        "qu*".into(),
        "\"quick fox\"".into(),
        "ba* rust".into(),
    ]) {
        let query = SearchQuery {
            text: q.clone(),
            channels: channels.clone(),
            author: None,
            channel: None,
            space: None,
            before: None,
            after: None,
            limit: 100,
            offset: 0,
        };
        let ids = |s: &dyn Store| -> Vec<MessageId> {
            s.search(&query)
                .unwrap()
                .into_iter()
                .map(|h| h.message.id)
                .collect()
        };
        assert_eq!(ids(&memory), ids(&sqlite), "seed {seed}: search {q}");
        assert_eq!(
            ids(&postgres),
            ids(&sqlite),
            "seed {seed}: postgres search {q}"
        );
    }
}

#[test]
fn random_worlds_agree_with_the_core_and_each_other() {
    // Three runs at a time: most of a run's time is spent waiting for PostgreSQL's round trips.
    std::thread::scope(|scope| {
        for lane in 0..3 {
            scope.spawn(move || {
                for seed in (lane..24).step_by(3) {
                    run_seed(seed, 600);
                }
            });
        }
    });
}
