//! What only a database file has: reopening, migrations, backups, row counts, readers beside the writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chat_core::{ChannelRef, Command};
use chat_store::{Durability, HistoryQuery, SCHEMA_VERSION, SqliteStore, Store, StoreError};

use crate::{NOW, World};

fn open(path: &Path) -> Result<SqliteStore, StoreError> {
    SqliteStore::open(path, Durability::Full, NOW)
}

#[test]
fn reopen_keeps_identity_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    w.join(a, "#rust");
    let (meta, last) = {
        let s = open(&path).unwrap();
        w.flush(&s);
        (s.meta(), s.last_seq().unwrap())
    };
    assert_eq!(meta.created_at, NOW);
    let s = SqliteStore::open(&path, Durability::Relaxed, NOW + 1).unwrap();
    assert_eq!(
        s.meta(),
        meta,
        "epoch and invite seed are fixed at creation"
    );
    assert_eq!(s.last_seq().unwrap(), last);
    // Appending continues the log after a reopen.
    w.say(a, "#rust", "after reopen");
    w.flush(&s);
    let other = open(&dir.path().join("other.db")).unwrap();
    assert_ne!(
        other.meta().epoch,
        meta.epoch,
        "each database draws its own epoch"
    );
    let versions: Vec<(u32, i64)> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        versions,
        [
            (1, NOW as i64),
            (2, NOW as i64),
            (3, NOW as i64),
            (4, NOW as i64),
            (5, NOW as i64)
        ]
    );
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    drop(open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
    match open(&path) {
        Err(StoreError::TooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn older_schema_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    w.say(a, "#rust", "kept across the upgrade");
    let meta = {
        let s = open(&path).unwrap();
        w.flush(&s);
        s.meta()
    };
    // Turn the file back into a version-1 database.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP INDEX messages_pinned;
         DROP TABLE spent_stamps;
         DROP TABLE server_links;
         CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
             WHEN new.kind IN ('message', 'action', 'notice')
         BEGIN
             INSERT INTO messages_fts (rowid, body)
                 VALUES (new.id, replace(replace(new.body, char(2), ' '), char(3), ' '));
         END;
         DELETE FROM schema_migrations WHERE version >= 2;",
    )
    .unwrap();
    drop(c);
    let s = open(&path).unwrap();
    assert_eq!(s.meta(), meta);
    let c = rusqlite::Connection::open(&path).unwrap();
    let has_index: bool = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'messages_pinned'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(has_index);
    assert_eq!(s.links().unwrap(), vec![], "the links table is back, empty");
    let h = s
        .history(&HistoryQuery {
            channel: ch,
            before: None,
            after: None,
            around: None,
            limit: 10,
        })
        .unwrap();
    assert_eq!(h.last().unwrap().body, "kept across the upgrade");
    // After the upgrade each new message is indexed once: by the append code, no longer by a trigger.
    let has_trigger: bool = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'messages_fts_insert'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!has_trigger);
    let before = fts_rows(&path);
    w.say(a, "#rust", "written after the upgrade");
    w.flush(&s);
    assert_eq!(fts_rows(&path), before + 1);
    let hits = s
        .search(&chat_store::SearchQuery {
            text: "upgrade".into(),
            channels: vec![ch],
            author: None,
            channel: None,
            space: None,
            before: None,
            after: None,
            limit: 10,
            offset: 0,
        })
        .unwrap();
    assert_eq!(hits.len(), 2);
}

#[test]
fn a_batch_failing_inside_sqlite_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let s = open(&path).unwrap();
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    w.flush(&s);
    let last = s.last_seq().unwrap();
    let m1 = w.say(a, "#rust", "one");
    w.say(a, "#rust", "two");
    w.say(a, "#rust", "three");
    let (events, ends) = w.take_commands();
    // Plant a row where the batch's third event goes, behind the store's back: the order check passes, and
    // the insert fails halfway through the transaction.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO events (seq, ts, kind, aud, aud_at, payload) VALUES (?1, 0, 'x', 0, 0, x'00')",
            [(last + 3) as i64],
        )
        .unwrap();
    let r = s.append(&chat_store::Batch {
        events: &events,
        command_ends: &ends,
        ..chat_store::Batch::default()
    });
    assert!(matches!(r, Err(StoreError::Database(_))), "{r:?}");
    assert_eq!(s.last_seq().unwrap(), last);
    assert!(
        s.message(m1).unwrap().is_none(),
        "the first events of the batch are gone too"
    );
    let q = HistoryQuery {
        channel: ch,
        before: None,
        after: None,
        around: None,
        limit: 100,
    };
    assert_eq!(s.history(&q).unwrap().len(), 1);
    // Reading the planted row reports it as damaged, typed, rather than panicking.
    match s.events_after(last, 10) {
        Err(StoreError::Corrupt {
            what: "event", at, ..
        }) => assert_eq!(at, last + 3),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn backup_opens_as_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("chat.db")).unwrap();
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    for i in 0..50 {
        w.say(a, "#rust", &format!("hello {i}"));
    }
    w.flush(&s);
    s.save_snapshot(3, b"snap").unwrap();
    let copy = dir.path().join("copy.db");
    s.backup(&copy).unwrap();
    let b = open(&copy).unwrap();
    assert_eq!(b.meta(), s.meta());
    assert_eq!(b.last_seq().unwrap(), s.last_seq().unwrap());
    assert_eq!(
        b.events_after(0, usize::MAX).unwrap(),
        s.events_after(0, usize::MAX).unwrap()
    );
    assert_eq!(b.latest_snapshot().unwrap(), Some((3, b"snap".to_vec())));
    let hits = b
        .search(&chat_store::SearchQuery {
            text: "hello".into(),
            channels: vec![ch],
            author: None,
            channel: None,
            space: None,
            before: None,
            after: None,
            limit: 100,
            offset: 0,
        })
        .unwrap();
    assert_eq!(hits.len(), 50);
    let ok: String = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// Rows in every table but the FTS index's own (whose segment layout depends on merge timing).
fn row_counts(path: &Path) -> BTreeMap<String, i64> {
    let c = rusqlite::Connection::open(path).unwrap();
    let tables: Vec<String> = c
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND name NOT LIKE 'messages_fts%' AND name NOT LIKE 'sqlite_%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let n: i64 = c
                .query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))
                .unwrap();
            (t, n)
        })
        .collect()
}

fn fts_rows(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM messages_fts_docsize", [], |r| {
            r.get(0)
        })
        .unwrap()
}

/// The row delta of one message to a channel of `members` members.
fn message_delta(members: usize) -> (BTreeMap<String, i64>, i64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let s = open(&path).unwrap();
    let mut w = World::new();
    let (_, a) = w.guest("op");
    w.join(a, "#big");
    for i in 0..members - 1 {
        let (_, c) = w.guest(&format!("u{i}"));
        w.join(c, "#big");
    }
    w.flush(&s);
    let before = row_counts(&path);
    let fts_before = fts_rows(&path);
    w.say(a, "#big", "hello everyone");
    let events = w.take();
    assert_eq!(events.len(), 1, "one message is one event");
    s.append(&chat_store::Batch {
        events: &events,
        ..chat_store::Batch::default()
    })
    .unwrap();
    let after = row_counts(&path);
    let delta = after
        .iter()
        .map(|(t, n)| (t.clone(), n - before.get(t).copied().unwrap_or(0)))
        .filter(|(_, d)| *d != 0)
        .collect();
    (delta, fts_rows(&path) - fts_before)
}

#[test]
fn a_message_adds_o1_rows_whatever_the_channel_size() {
    let (small, small_fts) = message_delta(10);
    let (big, big_fts) = message_delta(10_000);
    assert_eq!(small, big);
    assert_eq!(
        small,
        BTreeMap::from([("events".to_owned(), 1), ("messages".to_owned(), 1)])
    );
    assert_eq!((small_fts, big_fts), (1, 1));
}

#[test]
fn readers_do_not_wait_for_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir.path().join("chat.db")).unwrap());
    let mut w = World::new();
    let (alice, a) = w.guest("alice");
    let ch = w.join(a, "#rust");
    w.flush(&*s);
    let reader = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            let mut reads = 0;
            while reads < 200 {
                let page = s.user_stream(alice, 0, 1000).unwrap();
                // Each read sees a committed prefix of the log, never a torn batch.
                for pair in page.events.windows(2) {
                    assert!(pair[0].seq < pair[1].seq);
                }
                reads += 1;
            }
        })
    };
    for i in 0..200 {
        w.say(a, "#rust", &format!("m{i}"));
        w.flush(&*s);
    }
    reader.join().unwrap();
    let q = HistoryQuery {
        channel: ch,
        before: None,
        after: None,
        around: None,
        limit: 100,
    };
    assert_eq!(s.history(&q).unwrap().len(), 100);
    w.run(
        Some(a),
        Command::Part {
            channel: ChannelRef::Id(ch),
            reason: None,
        },
    );
    w.flush(&*s);
}
