//! What only a shared PostgreSQL database has: several stores (as several chatd processes) on one database
//! racing for the writer lease and the log, fencing of a replaced writer, the commit doorbell, node reports,
//! migrations under concurrent opens, reconnection after a server restart, multi-host URLs, and pg_dump.

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use chat_core::{Event, Seq};
use chat_store::format::FORMAT_VERSION;
use chat_store::{
    Batch, Cluster, NodeRole, POSTGRES_SCHEMA_VERSION, PostgresStore, SearchQuery, Store,
    StoreError,
};

use crate::{NOW, World};

fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, NOW).unwrap()
}

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// A world's commands, one batch each (events and command ends), as an engine would append them.
fn command_batches(n: usize) -> Vec<(Vec<Event>, Vec<Seq>)> {
    let mut w = World::new();
    let mut out = vec![w.take_commands()];
    let (_, a) = w.guest("alice");
    out.push(w.take_commands());
    w.join(a, "#race");
    out.push(w.take_commands());
    for i in 0..n {
        w.say(a, "#race", &format!("message {i}"));
        out.push(w.take_commands());
    }
    out
}

fn batch<'a>((events, ends): &'a (Vec<Event>, Vec<Seq>)) -> Batch<'a> {
    Batch {
        events,
        command_ends: ends,
        ..Batch::default()
    }
}

#[test]
fn one_of_racing_nodes_takes_the_lease() {
    let url = test_postgres::server().fresh_db();
    let stores: Vec<Arc<PostgresStore>> = (0..6).map(|_| Arc::new(open(&url))).collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                s.try_lead(
                    i as u16 + 1,
                    &format!("127.0.0.1:{}", 9000 + i),
                    Duration::from_secs(60),
                )
                .unwrap()
                .map(|term| (i as u16 + 1, term))
            })
        })
        .collect();
    let winners: Vec<(u16, u64)> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (node, term) = winners[0];
    assert_eq!(term, 1, "the first lease starts the first term");
    let lease = stores[0].lease().unwrap().unwrap();
    assert_eq!((lease.node, lease.term, lease.live), (node, term, true));
    assert_eq!(lease.addr, format!("127.0.0.1:{}", 9000 + node - 1));
    // The holder renews by taking it again, in the same term; the others still cannot.
    let holder = &stores[usize::from(node) - 1];
    assert_eq!(
        holder
            .try_lead(node, &lease.addr, Duration::from_secs(60))
            .unwrap(),
        Some(term)
    );
    let other = node % 6 + 1;
    assert_eq!(
        stores[0]
            .try_lead(other, "x:1", Duration::from_secs(60))
            .unwrap(),
        None
    );
}

#[test]
fn racing_fenced_appends_keep_the_log_dense_and_terms_ordered() {
    let url = test_postgres::server().fresh_db();
    let batches = Arc::new(command_batches(60));
    let all: Vec<Event> = batches.iter().flat_map(|(e, _)| e.clone()).collect();
    let last = all.last().unwrap().seq;
    // Appended batches: (first seq, term).
    let appended = Arc::new(Mutex::new(Vec::<(Seq, u64)>::new()));
    let fenced = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = (1..=4u16)
        .map(|node| {
            let (url, batches, appended, fenced) = (
                url.clone(),
                batches.clone(),
                appended.clone(),
                fenced.clone(),
            );
            std::thread::spawn(move || {
                let s = open(&url);
                // Each node remembers its term and goes on appending with it, as a node that does not
                // know it was replaced would.
                let mut term = None;
                let mut round = 0u64;
                while s.last_seq().unwrap() < last {
                    round += 1;
                    if term.is_none() || round.is_multiple_of(3) {
                        // Short leases: they expire between rounds, so nodes take over from each other.
                        if let Some(t) = s.try_lead(node, "n", Duration::from_millis(5)).unwrap() {
                            term = Some(t);
                        }
                    }
                    let Some(t) = term else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    let next = s.last_seq().unwrap() + 1;
                    let Some(b) = batches.iter().find(|(e, _)| e[0].seq == next) else {
                        continue;
                    };
                    match s.append_fenced(t, &batch(b)) {
                        Ok(()) => appended.lock().unwrap().push((next, t)),
                        Err(StoreError::Fenced { term: was, current }) => {
                            assert_eq!(was, t);
                            assert!(current > t, "a term is only ever replaced by a newer one");
                            *fenced.lock().unwrap() += 1;
                            term = None;
                        }
                        // Another node appended this batch first.
                        Err(StoreError::OutOfOrder { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    std::thread::sleep(Duration::from_millis(u64::from(node)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = open(&url);
    assert_eq!(
        s.events_after(0, usize::MAX).unwrap(),
        all,
        "every batch once, in order"
    );
    let mut appended = appended.lock().unwrap().clone();
    assert_eq!(appended.len(), batches.len(), "{appended:?}");
    appended.sort();
    assert!(
        appended.windows(2).all(|w| w[0].1 <= w[1].1),
        "no append under an older term after one under a newer: {appended:?}"
    );
    let terms: std::collections::BTreeSet<u64> = appended.iter().map(|a| a.1).collect();
    assert!(terms.len() > 1, "the lease changed hands: {appended:?}");
    assert!(*fenced.lock().unwrap() > 0, "some stale writer was fenced");
}

#[test]
fn a_lease_taken_over_after_expiry_fences_the_old_holder() {
    let url = test_postgres::server().fresh_db();
    let (a, b) = (open(&url), open(&url));
    let batches = command_batches(2);
    assert_eq!(a.lease().unwrap(), None);
    let t1 = a
        .try_lead(1, "a:1", Duration::from_secs(2))
        .unwrap()
        .unwrap();
    a.append_fenced(t1, &batch(&batches[0])).unwrap();
    assert_eq!(b.try_lead(2, "b:1", Duration::from_secs(60)).unwrap(), None);
    // The lease runs out by the database's clock.
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.lease().unwrap().unwrap().live {
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A still believes it leads (a pause, a lost connection): B takes over.
    let t2 = b
        .try_lead(2, "b:1", Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert_eq!(t2, t1 + 1);
    let before = a.last_seq().unwrap();
    match a.append_fenced(t1, &batch(&batches[1])) {
        Err(StoreError::Fenced { term, current }) => assert_eq!((term, current), (t1, t2)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(
        a.last_seq().unwrap(),
        before,
        "nothing of a fenced batch is written"
    );
    assert!(!a.renew_lease(t1, Duration::from_secs(60)).unwrap());
    b.append_fenced(t2, &batch(&batches[1])).unwrap();
    assert!(b.renew_lease(t2, Duration::from_secs(60)).unwrap());
    // A fenced node cannot take a live lease back; after a resignation anyone can, in a new term.
    assert_eq!(a.try_lead(1, "a:1", Duration::from_secs(60)).unwrap(), None);
    b.resign(t2).unwrap();
    assert!(!a.lease().unwrap().unwrap().live);
    let t3 = a
        .try_lead(1, "a:1", Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert_eq!(t3, t2 + 1);
    assert!(matches!(
        b.append_fenced(t2, &batch(&batches[2])),
        Err(StoreError::Fenced { .. })
    ));
    // A fenced append that does not continue the log is still refused as fenced, and an append under the
    // right term that does not continue it as out of order.
    assert!(matches!(
        a.append_fenced(t3, &batch(&batches[0])),
        Err(StoreError::OutOfOrder { got: 1, .. })
    ));
    a.append_fenced(t3, &batch(&batches[2])).unwrap();
    let all: Vec<Event> = batches[..3].iter().flat_map(|(e, _)| e.clone()).collect();
    assert_eq!(b.events_after(0, usize::MAX).unwrap(), all);
}

#[test]
fn wait_commit_wakes_on_another_stores_commit() {
    let url = test_postgres::server().fresh_db();
    let writer = open(&url);
    let follower = Arc::new(open(&url));
    let batches = command_batches(1);
    writer.append(&batch(&batches[0])).unwrap();
    let after = writer.last_seq().unwrap();
    // Nothing new: it waits the whole timeout and says where the log ends.
    let t = Instant::now();
    assert_eq!(
        follower
            .wait_commit(after, Duration::from_millis(300))
            .unwrap(),
        after
    );
    assert!(t.elapsed() >= Duration::from_millis(290));
    let waiter = {
        let follower = follower.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let seq = follower
                .wait_commit(after, Duration::from_secs(20))
                .unwrap();
            (seq, t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    writer.append(&batch(&batches[1])).unwrap();
    let committed = writer.last_seq().unwrap();
    let (seq, waited) = waiter.join().unwrap();
    // The commit's seq, not the one waited after: it did not return before the commit.
    assert_eq!(seq, committed);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Already past: no wait at all.
    let t = Instant::now();
    assert_eq!(
        follower
            .wait_commit(after, Duration::from_secs(20))
            .unwrap(),
        committed
    );
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn reopening_applies_no_migration_twice() {
    let server = test_postgres::server();
    let url = server.fresh_db();
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    w.join(a, "#rust");
    let (meta, last) = {
        let s = open(&url);
        w.flush(&s);
        (s.meta(), s.last_seq().unwrap())
    };
    assert_eq!(meta.created_at, NOW);
    let s = PostgresStore::open(&url, NOW + 5).unwrap();
    assert_eq!(
        s.meta(),
        meta,
        "epoch and invite seed are fixed at creation"
    );
    assert_eq!(s.last_seq().unwrap(), last);
    w.say(a, "#rust", "after reopen");
    w.flush(&s);
    assert_eq!(
        server.psql(
            db_name(&url),
            "SELECT version, applied_at FROM schema_migrations ORDER BY version"
        ),
        (1..=POSTGRES_SCHEMA_VERSION)
            .map(|v| format!("{v}|{NOW}\n"))
            .collect::<String>(),
        "each migration once, when the database was made"
    );
    assert_ne!(open(&server.fresh_db()).meta().epoch, meta.epoch);
}

#[test]
fn concurrent_opens_of_a_fresh_database_do_not_race() {
    let server = test_postgres::server();
    let url = server.fresh_db();
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let s = open(&url);
                (s.meta(), s.cluster_secret().unwrap())
            })
        })
        .collect();
    let opened: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        opened.iter().all(|o| *o == opened[0]),
        "one identity, one secret"
    );
    assert_eq!(
        server.psql(db_name(&url), "SELECT count(*) FROM schema_migrations"),
        format!("{POSTGRES_SCHEMA_VERSION}\n")
    );
    assert_eq!(
        server.psql(
            db_name(&url),
            "SELECT count(*) FROM meta WHERE key = 'epoch'"
        ),
        "1\n"
    );
}

#[test]
fn a_newer_schema_or_format_is_refused_and_an_older_format_upgraded() {
    let server = test_postgres::server();
    let url = server.fresh_db();
    let db = db_name(&url);
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    w.join(a, "#rust");
    w.say(a, "#rust", "kept across the upgrade");
    let events = {
        let s = open(&url);
        w.flush(&s);
        s.events_after(0, usize::MAX).unwrap()
    };
    // A database of a chatd that recorded no format: format 1, which this build reads once converted.
    server.psql(db, "DELETE FROM meta WHERE key = 'format_version'");
    match PostgresStore::open(&url, NOW) {
        Err(StoreError::FormatTooOld { found: 1, known }) => assert_eq!(known, FORMAT_VERSION),
        other => panic!("expected FormatTooOld, got {other:?}"),
    }
    let (_, found) = PostgresStore::open_as_is(&url, NOW).unwrap();
    assert_eq!(found, 1);
    let (s, from) = PostgresStore::upgrade(&url, NOW).unwrap();
    assert_eq!(from, Some(1));
    assert_eq!(s.events_after(0, usize::MAX).unwrap(), events);
    drop(s);
    assert_eq!(PostgresStore::upgrade(&url, NOW).unwrap().1, None);
    server.psql(
        db,
        &format!(
            "UPDATE meta SET value = {} WHERE key = 'format_version'",
            FORMAT_VERSION + 1
        ),
    );
    assert!(matches!(
        PostgresStore::open(&url, NOW),
        Err(StoreError::FormatTooNew { .. })
    ));
    server.psql(
        db,
        &format!(
            "INSERT INTO schema_migrations VALUES ({}, 0)",
            POSTGRES_SCHEMA_VERSION + 1
        ),
    );
    match PostgresStore::open(&url, NOW) {
        Err(StoreError::TooNew { found, known }) => {
            assert_eq!(
                (found, known),
                (POSTGRES_SCHEMA_VERSION + 1, POSTGRES_SCHEMA_VERSION)
            );
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn nodes_secret_and_data_dir_mark() {
    let url = test_postgres::server().fresh_db();
    let (a, b) = (open(&url), open(&url));
    assert!(a.nodes().unwrap().is_empty());
    a.report_node(1, "10.0.0.1:7000", NodeRole::Writer, 10)
        .unwrap();
    b.report_node(2, "10.0.0.2:7000", NodeRole::Follower, 5)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    b.report_node(2, "10.0.0.2:7001", NodeRole::Follower, 9)
        .unwrap();
    let nodes = a.nodes().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(
        (
            nodes[0].id,
            nodes[0].addr.as_str(),
            nodes[0].role,
            nodes[0].applied
        ),
        (1, "10.0.0.1:7000", NodeRole::Writer, 10)
    );
    assert_eq!(
        (
            nodes[1].id,
            nodes[1].addr.as_str(),
            nodes[1].role,
            nodes[1].applied
        ),
        (2, "10.0.0.2:7001", NodeRole::Follower, 9)
    );
    assert!(
        nodes[0].age_ms >= 250 && nodes[0].age_ms < 10_000,
        "{nodes:?}"
    );
    assert!(nodes[1].age_ms < nodes[0].age_ms, "{nodes:?}");
    let secret = a.cluster_secret().unwrap();
    assert_eq!(b.cluster_secret().unwrap(), secret);
    assert_ne!(secret, [0; 32]);
    let other = open(&test_postgres::server().fresh_db());
    assert_ne!(other.cluster_secret().unwrap(), secret);
    assert_eq!(a.data_dir_mark(7).unwrap(), 7);
    assert_eq!(b.data_dir_mark(9).unwrap(), 7, "the first mark stays");
    assert_eq!(other.data_dir_mark(u64::MAX).unwrap(), u64::MAX);
}

#[test]
fn diacritics_are_folded_as_sqlite_folds_them() {
    let url = test_postgres::server().fresh_db();
    let pg = open(&url);
    let dir = tempfile::tempdir().unwrap();
    let lite = chat_store::SqliteStore::open(
        dir.path().join("chat.db"),
        chat_store::Durability::Full,
        NOW,
    )
    .unwrap();
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let ch = w.join(a, "#cafe");
    let cafe = w.say(a, "#cafe", "un café crème, s'il vous plaît");
    let plain = w.say(a, "#cafe", "cafe creme");
    let host = w.say(a, "#cafe", "see docs.example.com or mail bob@example.org");
    let (events, ends) = w.take_commands();
    let b = Batch {
        events: &events,
        command_ends: &ends,
        ..Batch::default()
    };
    pg.append(&b).unwrap();
    lite.append(&b).unwrap();
    for (q, expect) in [
        ("cafe", vec![plain, cafe]),
        ("CAFÉ", vec![plain, cafe]),
        ("\"café crème\"", vec![plain, cafe]),
        ("crè*", vec![plain, cafe]),
        ("plait", vec![cafe]),
        ("example", vec![host]),
        ("docs", vec![host]),
        ("org", vec![host]),
        ("\"example com\"", vec![host]),
    ] {
        let query = SearchQuery {
            text: q.into(),
            channels: vec![ch],
            author: None,
            channel: None,
            space: None,
            before: None,
            after: None,
            limit: 100,
            offset: 0,
        };
        let ids = |s: &dyn Store| -> Vec<_> {
            s.search(&query)
                .unwrap()
                .into_iter()
                .map(|h| h.message.id)
                .collect()
        };
        assert_eq!(ids(&lite), expect, "SQLite, {q:?}");
        assert_eq!(ids(&pg), expect, "PostgreSQL, {q:?}");
    }
    let hit = &pg
        .search(&SearchQuery {
            text: "cafe".into(),
            channels: vec![ch],
            author: None,
            channel: None,
            space: None,
            before: None,
            after: None,
            limit: 100,
            offset: 0,
        })
        .unwrap()[1];
    assert_eq!(hit.snippet, "un \u{2}café\u{3} crème, s'il vous plaît");
}

#[test]
fn backup_is_a_pg_dump_that_restores() {
    let server = test_postgres::server();
    let url = server.fresh_db();
    let s = open(&url);
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    w.join(a, "#rust");
    for i in 0..20 {
        w.say(a, "#rust", &format!("hello {i}"));
    }
    w.flush(&s);
    s.save_snapshot(3, b"snap").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("chat.dump");
    s.backup(&dump).unwrap();
    assert!(std::fs::read(&dump).unwrap().starts_with(b"PGDMP"));
    let restored = server.fresh_db();
    let out = std::process::Command::new(server.bin_dir().join("pg_restore"))
        .args(["--no-owner", "--dbname", &restored])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = open(&restored);
    assert_eq!(b.meta(), s.meta());
    assert_eq!(
        b.events_after(0, usize::MAX).unwrap(),
        s.events_after(0, usize::MAX).unwrap()
    );
    assert_eq!(b.latest_snapshot().unwrap(), Some((3, b"snap".to_vec())));
    assert_eq!(b.cluster_secret().unwrap(), s.cluster_secret().unwrap());
}

#[test]
fn a_restarted_server_is_reconnected_and_multi_host_urls_fail_over() {
    let server = test_postgres::Server::start_new(test_postgres::Options::default());
    server.psql("postgres", "CREATE DATABASE chat");
    // The first host refuses connections: the store goes on to the next one that is read-write.
    let url = format!(
        "postgres://{}@127.0.0.1:1,127.0.0.1:{}/chat?target_session_attrs=read-write",
        test_postgres::SUPERUSER,
        server.port()
    );
    let s = open(&url);
    let batches = command_batches(3);
    s.append(&batch(&batches[0])).unwrap();
    s.append(&batch(&batches[1])).unwrap();
    server.stop(test_postgres::StopMode::Fast);
    assert!(s.last_seq().is_err(), "the server is down");
    server.start();
    // Reads retry once on a new connection.
    let last = s.last_seq().unwrap();
    assert_eq!(last, batches[1].0.last().unwrap().seq);
    // A write on the broken writer connection fails once (its outcome is known here: nothing was sent);
    // the next one reconnects.
    let mut tries = 0;
    while let Err(e) = s.append(&batch(&batches[2])) {
        tries += 1;
        assert!(tries < 3, "{e}");
    }
    let all: Vec<Event> = batches[..3].iter().flat_map(|(e, _)| e.clone()).collect();
    assert_eq!(s.events_after(0, usize::MAX).unwrap(), all);
}

#[test]
fn usable_and_droppable_inside_an_async_runtime() {
    let url = test_postgres::server().fresh_db();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let batches = command_batches(1);
    let seq = rt.block_on(async move {
        tokio::spawn(async move {
            // Opened, used and dropped on a worker of another runtime: nothing may nest its block_on.
            let s = PostgresStore::open(&url, NOW).unwrap();
            s.append(&batch(&batches[0])).unwrap();
            let seq = s.last_seq().unwrap();
            assert_eq!(s.wait_commit(0, Duration::from_secs(5)).unwrap(), seq);
            drop(s);
            seq
        })
        .await
        .unwrap()
    });
    assert!(seq > 0);
}

#[test]
fn search_can_use_the_gin_index() {
    let server = test_postgres::server();
    let url = server.fresh_db();
    drop(open(&url));
    // With sequential and plain index scans off, the planner must find the partial GIN index usable for the
    // search's condition (`@@` is strict, so it implies the index's `words IS NOT NULL`).
    let plan = server.psql(
        db_name(&url),
        "SET enable_seqscan = off; SET enable_indexscan = off;
         EXPLAIN SELECT id FROM messages m WHERE m.words @@ '''fox'':*'::text::tsquery
             ORDER BY m.id DESC LIMIT 25",
    );
    assert!(plan.contains("messages_words"), "{plan}");
}

#[test]
fn a_batch_failing_inside_postgres_is_rolled_back_and_the_connection_stays_usable() {
    let server = test_postgres::server();
    let url = server.fresh_db();
    let s = open(&url);
    // The core is deterministic: the same set-up makes the same events, so each case starts from a world the
    // store agrees with.
    let setup = || {
        let mut w = World::new();
        let (_, a) = w.guest("alice");
        let ch = w.join(a, "#rust");
        (w, a, ch)
    };
    setup().0.flush(&s);
    let client = chat_core::ClientId::from_raw(7).unwrap();
    // Constraints planted behind the store's back make a statement fail inside the transaction: among the
    // closing writes sent together with COMMIT (a message body), or among the effects before them (a
    // channel's name).
    server.psql(
        db_name(&url),
        "ALTER TABLE messages ADD CHECK (body <> 'boom');
         ALTER TABLE channels ADD CHECK (name <> '#boom')",
    );
    for case in 0..2 {
        let (mut w, a, ch) = setup();
        let _ = w.take_commands();
        let last = s.last_seq().unwrap();
        assert_eq!(w.core.last_seq(), last);
        w.say(a, "#rust", "fine");
        if case == 0 {
            w.say(a, "#rust", "boom");
        } else {
            w.join(a, "#boom");
        }
        let (events, ends) = w.take_commands();
        let r = s.append(&Batch {
            events: &events,
            command_ends: &ends,
            cursors: &[(client, last + 1)],
            ..Batch::default()
        });
        assert!(
            matches!(r, Err(StoreError::Database(_))),
            "case {case}: {r:?}"
        );
        assert_eq!(
            s.last_seq().unwrap(),
            last,
            "nothing of the batch is in the log"
        );
        assert!(s.cursors().unwrap().is_empty(), "nor its cursors");
        let history = s
            .history(&chat_store::HistoryQuery {
                channel: ch,
                before: None,
                after: None,
                around: None,
                limit: 100,
            })
            .unwrap();
        assert!(
            history.iter().all(|m| m.body != "fine"),
            "nor its messages: {history:?}"
        );
        // The same connection goes on: an empty batch commits, with its cursor.
        s.append(&Batch {
            cursors: &[(client, last)],
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(s.cursors().unwrap(), [(client, last)]);
        server.psql(db_name(&url), "DELETE FROM cursors");
    }
}
