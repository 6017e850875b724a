//! Benchmarks of the core's hot paths: one channel message, JOIN/PART churn and a nick change.
//!
//! Run them with `cargo bench -p chat-core --bench core` (add `-- --warm-up-time 1 --measurement-time 3` for a
//! quicker run, or a filter such as `-- privmsg/` for one group).
//!
//! - `privmsg/{10,1000,10000}`: one PRIVMSG applied to a network channel of that many members, its event
//!   drained. The core's work per message must not depend on the channel's size: the audience is
//!   `Audience::Channel`, resolved later, so the figures for 10 and 10k members should be close. Each message
//!   advances the clock by 1 ms; the channel's history is at MAX_HISTORY in steady state, so every message
//!   also evicts the oldest one, as on a busy server.
//! - `privmsg_with_recipients/{10,1000,10000}`: the same, plus iterating the event's recipients, which is
//!   the O(N) wake-up side the engine pays once per message (and no more: no per-recipient copies).
//! - `join_part_churn`: one user joins and parts a channel of 1000 members, per iteration one JOIN and one
//!   PART with their events drained.
//! - `nick_change/{1,10,100}`: a user on K channels of 100 members each changes nick back and forth; the
//!   cost is the peers computation (every member of every channel the user is on) and one system message
//!   per channel.

use std::hint::black_box;

use chat_core::{
    ChannelRef, ClientId, Command, Config, Core, Created, NewClient, Origin, Outgoing, Target,
    UnixMillis,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// The clock the benchmarks start at (a date in 2027); each command moves it forward.
const START: UnixMillis = 1_800_000_000_000;

/// A core with users registered, and the clock used to drive it.
struct Bench {
    core: Core,
    now: UnixMillis,
    next_user: u64,
}

impl Bench {
    fn new() -> Self {
        let mut core = Core::new(Config::default(), START);
        while core.poll_event().is_some() {}
        Self {
            core,
            now: START,
            next_user: 0,
        }
    }

    /// Runs a command that must succeed during setup, and drops its events.
    fn run(&mut self, origin: Origin, command: Command) -> Option<Created> {
        self.now += 1;
        let reply = self
            .core
            .handle(self.now, origin, command)
            .unwrap_or_else(|e| panic!("setup command refused: {e}"));
        while self.core.poll_event().is_some() {}
        reply.created
    }

    /// Registers a guest with one client. Token hashes come from a counter so that they are distinct.
    fn guest(&mut self) -> ClientId {
        let i = self.next_user;
        self.next_user += 1;
        let mut token_hash = [0; 32];
        token_hash[..8].copy_from_slice(&i.to_le_bytes());
        let created = self.run(
            Origin::Anonymous,
            Command::Register {
                nick: format!("u{i}"),
                password_hash: None,
                bot: false,
                client: Some(NewClient {
                    name: "bench".to_owned(),
                    token_hash,
                }),
            },
        );
        match created {
            Some(Created::User {
                client: Some(client),
                ..
            }) => client,
            other => panic!("register made {other:?}"),
        }
    }

    fn join(&mut self, client: ClientId, channel: &str) {
        self.run(
            Origin::Client(client),
            Command::Join {
                channel: channel.to_owned(),
                key: None,
            },
        );
    }

    /// A channel of `members` guests; returns the first one's client (the channel's creator).
    fn channel(&mut self, name: &str, members: usize) -> ClientId {
        let first = self.guest();
        self.join(first, name);
        for _ in 1..members {
            let c = self.guest();
            self.join(c, name);
        }
        first
    }
}

/// A 100-byte message body.
const BODY: &str = concat!(
    "The quick brown fox jumps over the lazy dog, ",
    "as a hundred-byte chat line tends to do; or so it says."
);

/// One PRIVMSG with a 100-byte body. The benches build it outside the timed routine (`iter_batched`): parsing
/// a request into a `Command` is the transport's work, not the core's.
fn privmsg_command() -> Command {
    Command::Send {
        to: Target::parse("#bench"),
        message: Outgoing {
            body: BODY.to_owned(),
            ..Outgoing::default()
        },
    }
}

fn privmsg(c: &mut Criterion) {
    let mut group = c.benchmark_group("privmsg");
    group.throughput(Throughput::Elements(1));
    for members in [10, 1_000, 10_000] {
        let mut b = Bench::new();
        let sender = b.channel("#bench", members);
        let (core, mut now) = (&mut b.core, b.now);
        group.bench_function(BenchmarkId::from_parameter(members), |bencher| {
            bencher.iter_batched(
                privmsg_command,
                |command| {
                    now += 1;
                    let reply = core.handle(now, Origin::Client(sender), command);
                    black_box(reply.expect("the sender may speak").seq);
                    while let Some(event) = core.poll_event() {
                        black_box(event);
                    }
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn privmsg_with_recipients(c: &mut Criterion) {
    let mut group = c.benchmark_group("privmsg_with_recipients");
    group.throughput(Throughput::Elements(1));
    for members in [10, 1_000, 10_000] {
        let mut b = Bench::new();
        let sender = b.channel("#bench", members);
        let (core, mut now) = (&mut b.core, b.now);
        group.bench_function(BenchmarkId::from_parameter(members), |bencher| {
            bencher.iter_batched(
                privmsg_command,
                |command| {
                    now += 1;
                    let reply = core.handle(now, Origin::Client(sender), command);
                    black_box(reply.expect("the sender may speak").seq);
                    let mut woken = 0usize;
                    while let Some(event) = core.poll_event() {
                        woken += core.recipients(&event).count();
                    }
                    assert_eq!(woken, members, "every member hears the message");
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn join_part_churn(c: &mut Criterion) {
    let mut b = Bench::new();
    b.channel("#bench", 1_000);
    let churner = b.guest();
    let (core, mut now) = (&mut b.core, b.now);
    c.bench_function("join_part_churn", |bencher| {
        bencher.iter(|| {
            now += 1;
            let join = Command::Join {
                channel: "#bench".to_owned(),
                key: None,
            };
            let reply = core.handle(now, Origin::Client(churner), join);
            black_box(reply.expect("the churner may join").seq);
            while let Some(event) = core.poll_event() {
                black_box(event);
            }
            let part = Command::Part {
                channel: ChannelRef::Name("#bench".to_owned()),
                reason: None,
            };
            let reply = core.handle(now, Origin::Client(churner), part);
            black_box(reply.expect("the churner is on the channel").seq);
            while let Some(event) = core.poll_event() {
                black_box(event);
            }
        });
    });
}

fn nick_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("nick_change");
    for channels in [1, 10, 100] {
        let mut b = Bench::new();
        let mover = b.guest();
        for k in 0..channels {
            let name = format!("#room{k}");
            b.channel(&name, 99);
            b.join(mover, &name);
        }
        let (core, mut now) = (&mut b.core, b.now);
        let mut flip = false;
        group.bench_function(BenchmarkId::from_parameter(channels), |bencher| {
            bencher.iter(|| {
                now += 1;
                flip = !flip;
                let nick = if flip { "mover_a" } else { "mover_b" }.to_owned();
                let reply = core.handle(now, Origin::Client(mover), Command::Nick { nick });
                black_box(reply.expect("the nick is free").seq);
                while let Some(event) = core.poll_event() {
                    black_box(event);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    privmsg,
    privmsg_with_recipients,
    join_part_churn,
    nick_change
);
criterion_main!(benches);
