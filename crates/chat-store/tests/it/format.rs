//! The log's format version on a database file: a database as chatd 0.1 left it (format 1: today's encoding,
//! no version recorded) is refused by `open` with what to do and converted by `upgrade` with every record
//! intact; a format 2 snapshot whose bans lack the field format 3 added is converted with its bans; a newer
//! or unknown version is refused by both; a record that does not decode stops a conversion,
//! which then changes nothing.

use std::path::Path;

use chat_core::{Attachment, Command, Outgoing, Target};
use chat_store::format::{FORMAT_VERSION, OLDEST_FORMAT};
use chat_store::{Durability, HistoryQuery, SqliteStore, Store, StoreError};

use crate::{NOW, World};

fn open(path: &Path) -> Result<SqliteStore, StoreError> {
    SqliteStore::open(path, Durability::Full, NOW)
}

fn upgrade(path: &Path) -> Result<(SqliteStore, Option<u32>), StoreError> {
    SqliteStore::upgrade(path, Durability::Full, NOW)
}

/// The format version the file records, `None` if it records none (a database of chatd 0.1).
fn recorded(path: &Path) -> Option<i64> {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE key = 'format_version'",
            [],
            |r| r.get(0),
        )
        .ok()
}

fn record(path: &Path, version: Option<u32>) {
    let c = rusqlite::Connection::open(path).unwrap();
    match version {
        Some(v) => c.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('format_version', ?1)",
            [v],
        ),
        None => c.execute("DELETE FROM meta WHERE key = 'format_version'", []),
    }
    .unwrap();
}

/// Writes a database with every kind of postcard record (events, a snapshot, a message's mentions and
/// attachments) as chatd 0.1 did: format 1 records no version, and its encoding is today's for every record
/// written here (it differs only in `Ban`, which this database has none of; see the format 2 test).
fn format_1_database(path: &Path) -> (World, Vec<u8>, chat_core::ChannelId) {
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let (bob, _) = w.guest("bob");
    let channel = w.join(a, "#rust");
    w.run(
        Some(a),
        Command::Send {
            to: Target::parse("#rust"),
            message: Outgoing {
                body: "a file for bob".into(),
                attachments: vec![Attachment {
                    id: 7,
                    filename: "notes.txt".into(),
                    size: 12,
                    content_type: Some("text/plain".into()),
                    token: "0123456789abcdef".into(),
                }],
                ..Outgoing::default()
            },
        },
    );
    let snapshot = postcard::to_allocvec(w.core.state()).unwrap();
    {
        let s = open(path).unwrap();
        w.flush(&s);
        s.save_snapshot(w.core.last_seq(), &as_format_3(&snapshot, &w.core))
            .unwrap();
        w.say(a, "#rust", "after the snapshot, hi bob");
        w.flush(&s);
    }
    assert_eq!(recorded(path), Some(i64::from(FORMAT_VERSION)));
    record(path, None);
    let _ = bob;
    (w, snapshot, channel)
}

#[test]
fn a_new_database_records_this_builds_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    drop(open(&path).unwrap());
    assert_eq!(recorded(&path), Some(i64::from(FORMAT_VERSION)));
}

#[test]
fn a_format_1_database_is_refused_then_converted_with_every_record_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (w, snapshot, channel) = format_1_database(&path);

    let refused = open(&path).unwrap_err();
    assert!(
        matches!(refused, StoreError::FormatTooOld { found: 1, known } if known == FORMAT_VERSION),
        "{refused:?}"
    );
    let message = refused.to_string();
    for needle in [
        "version 1",
        &format!("({FORMAT_VERSION})"),
        "chatd migrate",
        "chatd backup",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    assert_eq!(recorded(&path), None, "a refusal changes nothing");

    let (s, from) = upgrade(&path).unwrap();
    assert_eq!(from, Some(1));
    assert_eq!(recorded(&path), Some(i64::from(FORMAT_VERSION)));
    assert_eq!(s.events_after(0, 10_000).unwrap(), w.log);
    let (_, bytes) = s.latest_snapshot().unwrap().unwrap();
    assert_eq!(bytes, snapshot);
    let page = s
        .history(&HistoryQuery {
            channel,
            before: None,
            after: None,
            around: None,
            limit: 100,
        })
        .unwrap();
    let sent = page
        .iter()
        .find(|m| m.body == "a file for bob")
        .expect("the message with a file");
    assert_eq!(sent.attachments.len(), 1);
    assert_eq!(sent.attachments[0].filename, "notes.txt");
    assert!(page.iter().any(|m| m.body == "after the snapshot, hi bob"));
    drop(s);

    // Converted once: it opens as it is, and a second conversion has nothing to do.
    drop(open(&path).unwrap());
    let (_, again) = upgrade(&path).unwrap();
    assert_eq!(again, None);
}

#[test]
fn newer_and_unknown_formats_are_refused_by_open_and_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    drop(open(&path).unwrap());

    record(&path, Some(FORMAT_VERSION + 1));
    for refused in [open(&path).unwrap_err(), upgrade(&path).unwrap_err()] {
        assert!(
            matches!(refused, StoreError::FormatTooNew { found, known }
                if found == FORMAT_VERSION + 1 && known == FORMAT_VERSION),
            "{refused:?}"
        );
        let message = refused.to_string();
        for needle in [
            format!("version {}", FORMAT_VERSION + 1),
            format!("({FORMAT_VERSION})"),
            "upgrade chatd".to_owned(),
        ] {
            assert!(message.contains(&needle), "{needle:?} not in {message:?}");
        }
    }
    assert_eq!(recorded(&path), Some(i64::from(FORMAT_VERSION + 1)));

    // A version older than any this build converts (none was ever written below 1).
    record(&path, Some(OLDEST_FORMAT - 1));
    let refused = upgrade(&path).unwrap_err();
    assert!(
        matches!(refused, StoreError::FormatUnsupported { found: 0, .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("version 0"), "{refused}");
}

#[test]
fn a_record_that_does_not_decode_stops_the_conversion_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (w, _, _) = format_1_database(&path);
    let last = w.core.last_seq();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "UPDATE events SET payload = x'ff' WHERE seq = ?1",
        [last as i64],
    )
    .unwrap();
    drop(c);
    match upgrade(&path) {
        Err(StoreError::Corrupt { what, at, .. }) => assert_eq!((what, at), ("event", last)),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, v)| v)),
    }
    assert_eq!(
        recorded(&path),
        None,
        "the failed conversion was rolled back"
    );
}

/// The bytes of today's snapshot as formats 1 to 3 wrote them: without each user's `home` (a remote user's
/// server, added in format 4; `None`, postcard's one byte 0, at the end of a user) and without the state's
/// trailing `relayed` and `origins` (empty maps, a byte 0 each). Each user's bytes are found whole (they hold
/// its id and nick) and their last byte dropped.
fn as_format_3(snapshot: &[u8], core: &chat_core::Core) -> Vec<u8> {
    let mut bytes = snapshot.to_vec();
    assert_eq!(
        bytes[bytes.len() - 2..],
        [0, 0],
        "relayed and origins are empty"
    );
    bytes.truncate(bytes.len() - 2);
    for user in core.users() {
        assert!(user.home.is_none(), "only local users here");
        let new = postcard::to_allocvec(user).unwrap();
        assert_eq!(new.last(), Some(&0));
        let at = bytes
            .windows(new.len())
            .position(|w| w == new.as_slice())
            .expect("the user's bytes in the snapshot");
        bytes.remove(at + new.len() - 1);
    }
    assert!(
        postcard::from_bytes::<chat_core::State>(&bytes).is_err(),
        "format 3's bytes do not read as today's type"
    );
    bytes
}

/// The bytes of today's snapshot with every ban's `bound` (added in format 3) cut out: exactly what chatd
/// wrote at format 2, where a `Ban` was its mask, setter and time. An empty set is postcard's one byte 0
/// after those three fields, so the format-2 bytes of each ban are found and the byte after them dropped.
fn as_format_2(snapshot: &[u8], bans: &[chat_core::Ban]) -> Vec<u8> {
    let mut bytes = snapshot.to_vec();
    for ban in bans {
        assert!(ban.bound.is_empty(), "only bans that bind no one here");
        let old = postcard::to_allocvec(&(&ban.mask, ban.by, ban.at)).unwrap();
        let mut new = old.clone();
        new.push(0);
        let at = bytes
            .windows(new.len())
            .position(|w| w == new.as_slice())
            .expect("the ban's bytes in the snapshot");
        assert_eq!(
            bytes[at + 1..]
                .windows(new.len())
                .filter(|w| *w == new.as_slice())
                .count(),
            0,
            "the ban's bytes are found once"
        );
        bytes.remove(at + old.len());
    }
    bytes
}

#[test]
fn a_format_2_snapshot_with_bans_is_converted_and_its_bans_still_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut w = World::new();
    let (_, a) = w.guest("alice");
    let channel = w.join(a, "#rust");
    // A mask that matches no one present: the ban binds no one when it is set, as every ban of format 2 did.
    w.run(
        Some(a),
        Command::Mode {
            channel: chat_core::ChannelRef::Id(channel),
            modes: "+b".into(),
            args: vec!["mal!*@*".into()],
        },
    );
    let bans = w.core.channel(channel).unwrap().bans.clone();
    assert_eq!(bans.len(), 1);
    let snapshot = postcard::to_allocvec(w.core.state()).unwrap();
    let old = as_format_2(&as_format_3(&snapshot, &w.core), &bans);
    assert!(
        postcard::from_bytes::<chat_core::State>(&old).is_err(),
        "format 2's bytes do not read as today's type"
    );
    {
        let s = open(&path).unwrap();
        w.flush(&s);
        s.save_snapshot(w.core.last_seq(), &old).unwrap();
    }
    record(&path, Some(2));

    let refused = open(&path).unwrap_err();
    assert!(
        matches!(refused, StoreError::FormatTooOld { found: 2, known } if known == FORMAT_VERSION),
        "{refused:?}"
    );
    let (s, from) = upgrade(&path).unwrap();
    assert_eq!(from, Some(2));
    let (_, bytes) = s.latest_snapshot().unwrap().unwrap();
    assert_eq!(bytes, snapshot, "converted to exactly today's encoding");
    let state: chat_core::State = postcard::from_bytes(&bytes).unwrap();
    let core = chat_core::Core::from_state(chat_core::Config::default(), state);
    let ban = &core.channel(channel).unwrap().bans[0];
    assert_eq!(ban.mask, "mal!*@*");
    assert!(ban.bound.is_empty());
}
