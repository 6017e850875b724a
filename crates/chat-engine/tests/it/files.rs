//! The engine's side of the files' lifecycle, on SQLite in a temporary directory: an upload in flight is
//! never swept, a committed one is kept, a refused, repeated or abandoned one is removed, and a file no
//! message refers to is found by the sweep.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chat_core::{ChannelId, Command, Outgoing, Target};
use chat_engine::{Engine, EngineConfig, EngineTask, Session, Upload};

struct World {
    engine: Engine,
    task: EngineTask,
    alice: Session,
    channel: ChannelId,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = chat_store::SqliteStore::open(
        dir.path().join("chat.db"),
        chat_store::Durability::Full,
        chat_engine::now_ms(),
    )
    .expect("the database opens");
    let config = EngineConfig {
        rate_limit: None,
        data_dir: dir.path().join("data"),
        ..EngineConfig::default()
    };
    let (engine, task) = Engine::open(std::sync::Arc::new(store), config)
        .await
        .expect("engine opens");
    let alice = engine.guest("alice", "t").await.expect("guest").session;
    engine
        .command(
            &alice,
            Command::Join {
                channel: "#f".into(),
                key: None,
            },
            None,
        )
        .await
        .expect("join");
    let channel = engine
        .query(|core| core.channel_by_name("#f").map(|c| c.id))
        .await
        .expect("query")
        .expect("#f exists");
    World {
        engine,
        task,
        alice,
        channel,
        dir,
    }
}

/// An upload of one file with `bytes`; returns it and the file's path.
async fn upload(w: &World, bytes: &[u8]) -> (Upload, PathBuf) {
    let mut upload = w.engine.files().upload(w.channel);
    let mut file = upload
        .create("a.txt".into(), Some("text/plain".into()))
        .await
        .expect("create");
    file.write(bytes).await.expect("write");
    upload.finish(file).await.expect("finish");
    let a = &upload.attachments()[0];
    let path = w
        .engine
        .files()
        .root()
        .join(w.channel.to_string())
        .join(format!("{}-{}", a.id, a.token));
    assert!(path.is_file());
    (upload, path)
}

fn send(to: &str, upload: &Upload) -> Command {
    Command::Send {
        to: Target::parse(to),
        message: Outgoing {
            body: "see attached".into(),
            attachments: upload.attachments().to_vec(),
            ..Outgoing::default()
        },
    }
}

/// A cutoff an hour ahead: every file counts as old enough, so only the pending set protects one.
fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

async fn gone_soon(path: &Path) {
    let start = Instant::now();
    while path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} stays",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_flight_is_never_swept_and_a_committed_one_is_kept() {
    let w = world().await;
    let (up, path) = upload(&w, b"bytes").await;
    let report = w.engine.sweep_files(later(), true).await.expect("sweep");
    assert!(report.orphans.is_empty(), "{report:?}");
    assert_eq!(report.young, 2, "the file and its record: {report:?}");
    assert!(path.is_file());

    let command = send("#f", &up);
    w.engine
        .command_with_upload(&w.alice, command, None, up)
        .await
        .expect("sent");
    let report = w.engine.sweep_files(later(), true).await.expect("sweep");
    assert_eq!((report.live, report.orphans.len()), (2, 0), "{report:?}");
    assert!(path.is_file());

    // A file of chatd's naming that no message refers to is an orphan; the live one stays.
    let orphan = path.with_file_name("42-0123456789abcdef0123456789abcdef");
    std::fs::write(&orphan, b"x").unwrap();
    let report = w.engine.sweep_files(later(), false).await.expect("sweep");
    assert_eq!(report.orphans, vec![orphan.clone()]);
    assert!(orphan.exists(), "a sweep without fix removes nothing");
    // Written after the cutoff: an upload in flight elsewhere would be that young.
    let report = w
        .engine
        .sweep_files(SystemTime::now() - Duration::from_secs(60), true)
        .await
        .expect("sweep");
    assert!(report.orphans.is_empty() && orphan.exists(), "{report:?}");
    let report = w.engine.sweep_files(later(), true).await.expect("sweep");
    assert_eq!(report.orphans, vec![orphan.clone()]);
    assert!(!orphan.exists() && path.is_file());
    w.engine.shutdown().await.expect("shutdown");
    let _ = w.task.await;
    drop(w.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_repeated_and_abandoned_uploads_remove_their_files() {
    let w = world().await;

    // Refused by the core: no such channel.
    let (up, refused) = upload(&w, b"refused").await;
    let command = send("#nowhere", &up);
    assert!(
        w.engine
            .command_with_upload(&w.alice, command, None, up)
            .await
            .is_err()
    );
    gone_soon(&refused).await;

    // A repeat of a nonce returns the first message: the repeat's files belong to nothing.
    let (first, kept) = upload(&w, b"first").await;
    let command = send("#f", &first);
    let one = w
        .engine
        .command_with_upload(&w.alice, command, Some("n1".into()), first)
        .await
        .expect("sent");
    let (again, repeat) = upload(&w, b"again").await;
    let command = send("#f", &again);
    let two = w
        .engine
        .command_with_upload(&w.alice, command, Some("n1".into()), again)
        .await
        .expect("the first reply");
    assert_eq!(one, two);
    gone_soon(&repeat).await;
    assert!(kept.is_file());

    // Abandoned before it was sent (a client gone mid-request).
    let (up, abandoned) = upload(&w, b"abandoned").await;
    drop(up);
    gone_soon(&abandoned).await;
    assert!(kept.is_file());
    w.engine.shutdown().await.expect("shutdown");
    let _ = w.task.await;
}
