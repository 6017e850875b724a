//! Append throughput, SQLite against PostgreSQL: group commits of 1 and of 64 messages (one command each),
//! through each store's real `append`, and beside them the floor of a PostgreSQL commit on the same server:
//! one bare single-row `INSERT` and `COMMIT`, whose p50/p99 latency is printed after the criterion groups.
//!
//! Run with `cargo bench -p chat-store --bench append`. It starts a PostgreSQL server of its own (the
//! test-postgres fixture, so PostgreSQL's programs must be installed: `scripts/install-test-deps`) with
//! `fsync = on`, so that both stores wait for the disk at every commit (SQLite with `Durability::Full`).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};

use chat_core::{ClientId, Command, Config, Core, Event, NewClient, Origin, Outgoing, Seq, Target};
use chat_store::{Batch, Durability, PostgresStore, SqliteStore, Store};

/// Where the simulated clock starts (2027).
const NOW: u64 = 1_800_000_000_000;

/// A core with one user in one channel, making batches of messages that continue a store's log.
struct Maker {
    core: Core,
    now: u64,
    client: ClientId,
    events: Vec<Event>,
    ends: Vec<Seq>,
}

impl Maker {
    fn new() -> Self {
        let mut core = Core::new(Config::default(), NOW);
        let reply = core
            .handle(
                NOW + 1,
                Origin::Anonymous,
                Command::Register {
                    nick: "bench".into(),
                    password_hash: None,
                    bot: false,
                    client: Some(NewClient {
                        name: "bench".into(),
                        token_hash: [7; 32],
                    }),
                },
            )
            .expect("register");
        let Some(chat_core::Created::User {
            client: Some(client),
            ..
        }) = reply.created
        else {
            panic!("no client");
        };
        let mut m = Self {
            core,
            now: NOW + 1,
            client,
            events: Vec::new(),
            ends: Vec::new(),
        };
        m.drain();
        m.command(Command::Join {
            channel: "#bench".into(),
            key: None,
        });
        m
    }

    fn drain(&mut self) {
        let before = self.events.len();
        while let Some(ev) = self.core.poll_event() {
            if ev.is_durable() {
                self.events.push(ev);
            }
        }
        if self.events.len() > before {
            self.ends.push(self.core.last_seq());
        }
    }

    fn command(&mut self, cmd: Command) {
        // A second between commands: no rate limit is ever reached.
        self.now += 1_000;
        // Only the events matter here.
        let _reply = self
            .core
            .handle(self.now, Origin::Client(self.client), cmd)
            .expect("command");
        self.drain();
    }

    /// The pending events (the set-up's, at first) and their command ends, taken.
    fn take(&mut self) -> (Vec<Event>, Vec<Seq>) {
        (
            std::mem::take(&mut self.events),
            std::mem::take(&mut self.ends),
        )
    }

    /// A batch of `n` messages.
    fn messages(&mut self, n: usize) -> (Vec<Event>, Vec<Seq>) {
        for i in 0..n {
            self.command(Command::Send {
                to: Target::parse("#bench"),
                message: Outgoing {
                    body: format!("message number {i} of a batch, with a few words to index"),
                    ..Outgoing::default()
                },
            });
        }
        self.take()
    }
}

fn append(store: &dyn Store, (events, ends): &(Vec<Event>, Vec<Seq>)) {
    store
        .append(&Batch {
            events,
            command_ends: ends,
            ..Batch::default()
        })
        .expect("append");
}

fn bench_store(c: &mut Criterion, name: &str, open: &dyn Fn() -> Box<dyn Store>) {
    let mut group = c.benchmark_group(format!("append/{name}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for size in [1usize, 64] {
        group.throughput(Throughput::Elements(size as u64));
        let store = open();
        let mut maker = Maker::new();
        append(store.as_ref(), &maker.take());
        group.bench_with_input(BenchmarkId::new("messages", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let batches: Vec<_> = (0..iters).map(|_| maker.messages(size)).collect();
                let t = Instant::now();
                for batch in &batches {
                    append(store.as_ref(), batch);
                }
                t.elapsed()
            });
        });
    }
    group.finish();
}

/// p50 and p99 of a bare single-row INSERT and COMMIT through tokio-postgres on the same server.
fn bare_commit_latency(url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut samples = rt.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute("CREATE TABLE bare (id BIGINT PRIMARY KEY, body TEXT NOT NULL)")
            .await
            .expect("create");
        let insert = client
            .prepare("INSERT INTO bare (id, body) VALUES ($1, $2)")
            .await
            .expect("prepare");
        let mut samples = Vec::with_capacity(2_000);
        for i in 0..2_000i64 {
            let t = Instant::now();
            let tx = client.transaction().await.expect("begin");
            tx.execute(&insert, &[&i, &"a bare row"])
                .await
                .expect("insert");
            tx.commit().await.expect("commit");
            samples.push(t.elapsed());
        }
        samples
    });
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "bare INSERT+COMMIT on the same server (fsync on, 2000 commits): p50 {:?}, p99 {:?}, max {:?}",
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}

fn main() {
    let server = test_postgres::Server::start_new(test_postgres::Options {
        fsync: true,
        ..test_postgres::Options::default()
    });
    server.psql("postgres", "CREATE DATABASE bare");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = Criterion::default().configure_from_args();
    let n = std::cell::Cell::new(0);
    bench_store(&mut c, "sqlite", &|| {
        n.set(n.get() + 1);
        Box::new(
            SqliteStore::open(
                dir.path().join(format!("bench{}.db", n.get())),
                Durability::Full,
                NOW,
            )
            .expect("open SQLite"),
        )
    });
    bench_store(&mut c, "postgres", &|| {
        n.set(n.get() + 1);
        let db = format!("bench{}", n.get());
        server.psql("postgres", &format!("CREATE DATABASE {db}"));
        Box::new(PostgresStore::open(&server.url(&db), NOW).expect("open PostgreSQL"))
    });
    c.final_summary();
    bare_commit_latency(&server.url("bare"));
}
