//! The engine's integration tests: one suite, run against every store implementation.

mod cluster;
mod crash;
mod files;
mod suite;
mod teststore;

use std::sync::Arc;

use chat_store::Store;

/// A database the suite can open, close and open again.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The store type.
    type S: Store;
    /// Opens the database: the same one on every call, with everything committed before.
    fn open(&self) -> Arc<Self::S>;
}

/// The tests' own minimal store: a restart reopens the same object.
#[derive(Debug)]
pub(crate) struct Test(Arc<teststore::TestStore>);

impl Test {
    fn new() -> Self {
        Self(Arc::new(teststore::TestStore::new()))
    }
}

impl Backend for Test {
    type S = teststore::TestStore;
    fn open(&self) -> Arc<Self::S> {
        Arc::clone(&self.0)
    }
}

/// The reference in-memory store: a restart reopens the same object.
#[derive(Debug)]
pub(crate) struct Memory(Arc<chat_store::MemoryStore>);

impl Memory {
    fn new() -> Self {
        Self(Arc::new(chat_store::MemoryStore::new()))
    }
}

impl Backend for Memory {
    type S = chat_store::MemoryStore;
    fn open(&self) -> Arc<Self::S> {
        Arc::clone(&self.0)
    }
}

/// SQLite in a temporary directory: a restart opens the file again.
#[derive(Debug)]
pub(crate) struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }
}

impl Backend for Sqlite {
    type S = chat_store::SqliteStore;
    fn open(&self) -> Arc<Self::S> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let path = self.dir.path().join("chat.db");
        Arc::new(
            chat_store::SqliteStore::open(path, chat_store::Durability::Full, now)
                .expect("the database opens"),
        )
    }
}

macro_rules! suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            suite!(@tests $backend;
                commands_and_replies,
                two_clients_share_a_stream,
                waiting_reader_wakes,
                live_events_reach_waiters_only,
                restart_keeps_state_and_cursors,
                restart_after_dropping_every_handle,
                nonce_is_idempotent,
                nonce_survives_restart,
                message_rate_limit,
                rate_limit_off,
                idle_clients_expire_by_timer,
                foreign_epoch_resets,
                passwords_and_login_throttle,
                password_rule_on_every_path,
                login_throttle_is_per_account_and_address,
                account_limit_slows_and_address_limit_refuses,
                guest_sign_up_needs_an_unspent_stamp,
                spent_stamp_survives_restart,
                shutdown_refuses_new_work,
                snapshots_are_taken_and_used,
                one_message_wakes_every_waiting_member,
                directory_names_follow_commits,
                live_events_between_waits_reach_wait_from,
            );
        }
    };
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::suite::$name(&$backend).await;
            }
        )*
    };
}

/// Tests that need a store's own stream and retention logic, which the test store does not have.
macro_rules! store_suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            suite!(@tests $backend;
                old_cursors_come_from_the_store,
                cursor_older_than_retention_resets,
                background_retention_resets_old_cursors,
                reads_go_through_the_engine,
            );
        }
    };
}

suite!(test_store, Test::new());
store_suite!(memory_store, Memory::new());
store_suite!(sqlite_store, Sqlite::new());
suite!(memory, Memory::new());
suite!(sqlite, Sqlite::new());

/// A failed commit stops the engine: the test store can be told to fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_stops_the_engine() {
    let backend = Test::new();
    suite::failed_commit_stops_the_engine(&backend, |fail| backend.0.fail_appends(fail)).await;
}

/// Commands queued together are committed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_commits() {
    let backend = Test::new();
    suite::concurrent_commands_share_commits(&backend, || backend.0.appends()).await;
}
