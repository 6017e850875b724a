//! Opening the database named by DBURL (SQLite or in memory) and starting the engine on it.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chat_engine::{ClusterConfig, Engine, EngineConfig, EngineTask};
use chat_store::{MemoryStore, PostgresStore, SqliteStore, Store};

use crate::config::{Config, DbUrl, redact_password};

pub(crate) use chat_engine::now_ms;

/// An open store of either kind. The engine is generic over its store, so the binary keeps the concrete type
/// to hand it over.
#[derive(Clone)]
enum Kind {
    Sqlite(Arc<SqliteStore>),
    Memory(Arc<MemoryStore>),
    /// Every process on it is a node of one cluster.
    Postgres(Arc<PostgresStore>, ClusterConfig),
}

/// An open database, with the lock that makes this process its only engine.
#[derive(Clone)]
pub(crate) struct Db {
    kind: Kind,
    /// Held while the process lives (the OS releases it on exit, even on a crash).
    _lock: Option<Arc<File>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Sqlite(s) => write!(f, "Db::Sqlite({})", s.path().display()),
            Kind::Memory(_) => f.write_str("Db::Memory"),
            Kind::Postgres(s, _) => write!(f, "Db::Postgres({})", redact_password(s.url())),
        }
    }
}

/// Whether opening may create a database that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Create {
    /// `serve`, `init`, `migrate` and the admin commands start a new database when there is none.
    Allow,
    /// `check` and `backup` are about an existing database: creating an empty one would hide a wrong path.
    Refuse,
}

impl Db {
    /// Opens the database, applying any pending schema migrations (SQLite); a log in an older format is
    /// refused with what to do (see [`Db::upgrade`]). With [`Lock::Engine`] it first takes the database's
    /// lock file. Blocking: call it before the server runs, or on the blocking pool.
    pub(crate) fn open(config: &Config, create: Create, lock: Lock) -> anyhow::Result<Self> {
        Ok(Self::open_as(config, create, lock, Format::Refuse)?.0)
    }

    /// Opens an existing database to copy it, whatever its log's format (a backup before `chatd migrate`).
    /// Only the store's backup may be used: its records may be in a format this build does not read.
    pub(crate) fn open_to_copy(config: &Config) -> anyhow::Result<Self> {
        Ok(Self::open_as(config, Create::Refuse, Lock::None, Format::AsIs)?.0)
    }

    /// Opens the database as [`Db::open`] does, converting a log in an older format to this build's
    /// (`chatd migrate`), under the engine's lock. Returns the format version it converted from, if any.
    pub(crate) fn upgrade(config: &Config) -> anyhow::Result<(Self, Option<u32>)> {
        Self::open_as(config, Create::Allow, Lock::Engine, Format::Convert)
    }

    fn open_as(
        config: &Config,
        create: Create,
        lock: Lock,
        format: Format,
    ) -> anyhow::Result<(Self, Option<u32>)> {
        match &config.db {
            DbUrl::Memory => {
                if create == Create::Refuse {
                    bail!(
                        "DBURL=memory: holds nothing outside a running server; name a SQLite file"
                    );
                }
                let db = Db {
                    kind: Kind::Memory(Arc::new(MemoryStore::new())),
                    _lock: None,
                };
                Ok((db, None))
            }
            DbUrl::Sqlite(path) => {
                if create == Create::Refuse && !path.exists() {
                    bail!("no database at {}", path.display());
                }
                if create == Create::Allow {
                    ensure_parent(path)?;
                }
                let lock = match lock {
                    Lock::Engine => Some(Arc::new(take_lock(path)?)),
                    Lock::None => None,
                };
                let now = now_ms();
                let (store, upgraded) = match format {
                    Format::Refuse => {
                        SqliteStore::open(path, config.durability, now).map(|s| (s, None))
                    }
                    Format::Convert => SqliteStore::upgrade(path, config.durability, now),
                    Format::AsIs => SqliteStore::open_as_is(path, config.durability, now)
                        .map(|(s, _)| (s, None)),
                }
                .with_context(|| format!("opening the database {}", path.display()))?;
                let db = Db {
                    kind: Kind::Sqlite(Arc::new(store)),
                    _lock: lock,
                };
                Ok((db, upgraded))
            }
            DbUrl::Postgres(url) => {
                // No lock file: every process on the database is a node of the cluster, and the writer
                // lease with its fenced appends keeps the log one order however many run.
                let now = now_ms();
                let shown = redact_password(&url.0);
                let (store, upgraded) = match format {
                    Format::Refuse => PostgresStore::open(&url.0, now).map(|s| (s, None)),
                    Format::Convert => PostgresStore::upgrade(&url.0, now),
                    Format::AsIs => PostgresStore::open_as_is(&url.0, now).map(|(s, _)| (s, None)),
                }
                .with_context(|| format!("opening the database {shown}"))?;
                let db = Db {
                    kind: Kind::Postgres(Arc::new(store), config.cluster()),
                    _lock: None,
                };
                Ok((db, upgraded))
            }
        }
    }

    /// The store behind the trait, for backups and queries.
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        match &self.kind {
            Kind::Sqlite(s) => Arc::clone(s) as Arc<dyn Store>,
            Kind::Memory(s) => Arc::clone(s) as Arc<dyn Store>,
            Kind::Postgres(s, _) => Arc::clone(s) as Arc<dyn Store>,
        }
    }

    /// Starts the engine: restores the state from the snapshot and log, and spawns the writer.
    pub(crate) async fn start(&self, config: EngineConfig) -> anyhow::Result<(Engine, EngineTask)> {
        let started = match &self.kind {
            Kind::Sqlite(s) => Engine::open(Arc::clone(s), config).await,
            Kind::Memory(s) => Engine::open(Arc::clone(s), config).await,
            Kind::Postgres(s, cluster) => {
                Engine::open_cluster(Arc::clone(s), config, cluster.clone()).await
            }
        };
        started.context("starting the engine (rebuilding the state from the database)")
    }
}

/// What opening does with a log in another format than this build's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Refuse it, saying what to do: everything that reads the log.
    Refuse,
    /// Convert an older one (`migrate`).
    Convert,
    /// Take it as it is, to copy it (`backup`).
    AsIs,
}

/// Whether this process will run an engine on the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    /// It will: take the lock, so no second engine (a `check` or `admin` beside a running server) appends
    /// to the same log. Two writers would each number events from their own idea of the last seq, and the
    /// loser's next commit would fail and stop its engine.
    Engine,
    /// Only the store is read (`backup`): safe beside a running server, which is the point of an online
    /// backup.
    None,
}

/// Takes an exclusive lock on `PATH.lock` beside the database, without waiting.
fn take_lock(db: &Path) -> anyhow::Result<File> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => bail!(
            "the database {} is in use by another chatd process (a running server?); stop it first \
             (`backup` is safe while it runs)",
            db.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Creates the directory a database file goes in: SQLite creates the file but not its folders.
fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    Ok(())
}

/// Stops the engine: drains, saves cursors and a snapshot, and waits for the writer task to end.
pub(crate) async fn stop(engine: &Engine, task: EngineTask) -> anyhow::Result<()> {
    engine
        .shutdown()
        .await
        .context("shutting the engine down")?;
    match task.await {
        Ok(result) => result.context("the engine's writer failed"),
        Err(e) => Err(anyhow::anyhow!("the engine's writer task failed: {e}")),
    }
}
