//! Real PostgreSQL servers for chatd's tests: one shared server per test process, started on first use, and
//! private servers for the tests that stop, kill or reconfigure theirs.
//!
//! [`server`] starts the shared one lazily (a `OnceLock`); [`Server::fresh_db`] makes a new, uniquely named
//! database on it and returns its `postgres://` URL, so tests running in parallel never see each other's rows.
//! [`Server::start_new`] starts a server of a test's own (for failover tests: a primary and a standby), with
//! [`Server::stop`], [`Server::start`] and [`Server::kill9`] to play its failures, and [`Server::command`] to
//! run PostgreSQL's programs as the server's user.
//!
//! Each server lives in a fresh temp dir on a free port of 127.0.0.1, its unix socket inside that dir. The
//! binaries are found through `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin`; when they
//! are missing the fixture panics with a message naming `scripts/install-test-deps`, never skipping a test
//! in silence. PostgreSQL refuses to run as root, so as root the dir is handed to the `postgres` user and every
//! program runs through `runuser -u postgres --`.
//!
//! A server must not outlive its test process (a test binary killed by a timeout runs no destructor, and the
//! shared server, a static, never drops). So each server is watched by a small `sh` loop that polls the test
//! process's pid and, once it is gone, stops the server at once and removes its dir.
//!
//! ```no_run
//! let url = test_postgres::server().fresh_db();
//! assert!(url.starts_with("postgres://"));
//! ```
#![deny(missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The OS user a server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

/// The database superuser every server is made with (trust authentication on 127.0.0.1 and the socket).
pub const SUPERUSER: &str = "postgres";

/// How to start a server of one's own.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Whether commits wait for the disk. Off by default: the tests' databases are thrown away, and without
    /// fsync a test suite runs several times faster. A test that kills a server and checks what survived
    /// (power-loss semantics aside, a `kill -9` keeps what the OS has) may still want it on.
    pub fsync: bool,
    /// Lines appended to `postgresql.conf` (e.g. `wal_level = replica`, `synchronous_standby_names = '*'`).
    pub conf: Vec<String>,
    /// Skip `initdb`: the data dir is filled by the caller before [`Server::start`] (a standby made by
    /// `pg_basebackup`). The server is then not started by [`Server::start_new`].
    pub empty: bool,
}

/// How [`Server::stop`] stops a server (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for clients to disconnect.
    Smart,
    /// Disconnects clients and shuts down cleanly.
    Fast,
    /// Stops at once, as a crash would: recovery runs at the next start.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running (or stopped) PostgreSQL server in a temp dir of its own.
#[derive(Debug)]
pub struct Server {
    bin_dir: PathBuf,
    root: PathBuf,
    port: u16,
    as_postgres: bool,
    databases: AtomicU32,
    watchdog: Mutex<Option<Child>>,
}

/// The shared server of this test process, started on first use.
pub fn server() -> &'static Server {
    static SHARED: OnceLock<Server> = OnceLock::new();
    SHARED.get_or_init(|| {
        Server::start_new(Options {
            // Many tests at once, each with a few stores of a few connections.
            conf: vec!["max_connections = 400".into()],
            ..Options::default()
        })
    })
}

/// Where PostgreSQL's programs are: `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|d| d.join("initdb").exists());
    if let Some(dir) = from_pg_config {
        return dir;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, dir)) => dir,
        None => panic!(
            "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found through `pg_config --bindir` \
             or in /usr/lib/postgresql/*/bin: run scripts/install-test-deps"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    listener.local_addr().expect("the bound address").port()
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Quotes a string for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Server {
    /// Starts a server of the test's own (or, with [`Options::empty`], prepares its dir and port only).
    /// It stops and its dir goes when it is dropped, or when the test process ends, whichever comes first.
    pub fn start_new(options: Options) -> Server {
        let bin_dir = bin_dir();
        let as_postgres = is_root();
        let root = tempfile::Builder::new()
            .prefix("chatd-pg-")
            .tempdir()
            .expect("a temp dir for PostgreSQL")
            .keep();
        let server = Server {
            bin_dir,
            root,
            port: free_port(),
            as_postgres,
            databases: AtomicU32::new(0),
            watchdog: Mutex::new(None),
        };
        std::fs::create_dir_all(server.socket_dir()).expect("the socket dir");
        if as_postgres {
            let mut chown = Command::new("chown");
            chown
                .arg("-R")
                .arg(format!("{SERVER_USER}:{SERVER_USER}"))
                .arg(&server.root);
            run(chown, "chown the server's dir to postgres");
        }
        server.start_watchdog();
        if options.empty {
            return server;
        }
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(server.data_dir()).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "-N",
        ]);
        run(initdb, "initdb");
        server.configure(&options);
        server.start();
        server
    }

    /// Writes the server's settings (port, socket, listen address, fsync, the caller's lines) into
    /// `postgresql.conf` of the data dir, so that they hold across restarts. [`Server::start_new`] does it; a
    /// caller that filled an empty data dir (a base backup) calls it before [`Server::start`].
    pub fn configure(&self, options: &Options) {
        let mut conf = format!(
            "\n# test-postgres\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = {}\nlog_min_messages = warning\n",
            self.port,
            self.socket_dir().display(),
            if options.fsync { "on" } else { "off" },
        );
        for line in &options.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write postgresql.conf");
        // Replication connections from 127.0.0.1 (a standby's), trusted like every other.
        let hba = self.data_dir().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap_or_default();
        text.push_str("\nhost replication all 127.0.0.1/32 trust\n");
        std::fs::write(&hba, text).expect("write pg_hba.conf");
    }

    /// Polls this process's pid from a shell loop and stops the server (immediately) and removes its dir once
    /// the process is gone: a test binary that is killed runs no destructor.
    fn start_watchdog(&self) {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let stop = format!(
            "{}{} -D {} stop -m immediate",
            if self.as_postgres {
                format!("runuser -u {SERVER_USER} -- ")
            } else {
                String::new()
            },
            sh_quote(&pg_ctl.to_string_lossy()),
            sh_quote(&self.data_dir().to_string_lossy()),
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            root = sh_quote(&self.root.to_string_lossy()),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server's watchdog");
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
    }

    /// A command that runs one of PostgreSQL's programs (`program` names a file of [`Server::bin_dir`], or any
    /// program on PATH) as the server's OS user: through `runuser -u postgres --` when the tests run as root.
    pub fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let program = if path.exists() {
            path
        } else {
            PathBuf::from(program)
        };
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", SERVER_USER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Starts the server (after [`Server::stop`], or an empty dir filled by the caller) and waits until it
    /// accepts connections.
    pub fn start(&self) {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null());
        let out = pg_ctl.output().expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed ({}): {}\n--- server log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
    }

    /// Stops the server with `pg_ctl stop -m <mode>`, waiting until it is down.
    pub fn stop(&self, mode: StopMode) {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "-m", mode.as_str(), "stop"]);
        run(pg_ctl, "pg_ctl stop");
    }

    /// Starts a streaming standby of `primary` (a base backup with `pg_basebackup -R`, then its own port and
    /// socket, with `options.conf` appended), and waits until it accepts connections. With
    /// `synchronous = true` the primary is reconfigured to wait for it (`synchronous_standby_names`, reloaded)
    /// and the call returns once the primary reports the standby as synchronous.
    pub fn standby_of(primary: &Server, options: Options, synchronous: bool) -> Server {
        let standby = Server::start_new(Options {
            empty: true,
            ..options.clone()
        });
        let name = format!("standby{}", standby.port);
        let mut backup = standby.command("pg_basebackup");
        backup
            .arg("-D")
            .arg(standby.data_dir())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-R", "-X", "stream", "--no-sync"]);
        run(backup, "pg_basebackup");
        standby.configure(&options);
        // The standby names itself to the primary, which `synchronous_standby_names` refers to. The line goes
        // last into postgresql.auto.conf, where `-R` put its own, which it overrides.
        let auto = standby.data_dir().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user={SUPERUSER} application_name={name}'\n",
            primary.port
        ));
        std::fs::write(&auto, text).expect("write postgresql.auto.conf");
        standby.start();
        if synchronous {
            primary.psql(
                "postgres",
                &format!("ALTER SYSTEM SET synchronous_standby_names = '{name}'"),
            );
            primary.psql("postgres", "SELECT pg_reload_conf()");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let state = primary.psql(
                    "postgres",
                    &format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"),
                );
                if state.trim() == "sync" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the standby did not become synchronous in 30 s (state {state:?})\n--- primary log:\n{}",
                    primary.log()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        standby
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it is done).
    pub fn promote(&self) {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "promote"]);
        run(pg_ctl, "pg_ctl promote");
    }

    /// Kills the postmaster with SIGKILL, as a crash of the machine's server would (its backends notice and
    /// exit; recovery runs at the next start). Returns once the postmaster is gone.
    pub fn kill9(&self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).expect("postmaster.pid of a running server");
        let pid = text.lines().next().unwrap_or_default().trim().to_owned();
        let mut kill = Command::new("kill");
        kill.args(["-9", &pid]);
        run(kill, "kill -9 the postmaster");
        for _ in 0..500 {
            let alive = Command::new("kill")
                .args(["-0", &pid])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !alive {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the postmaster {pid} survived kill -9 for 5 s");
    }

    /// Creates a new database with a name no other call in this process used, and returns its URL.
    pub fn fresh_db(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// The URL of database `db` on this server, as the superuser over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with `psql` on database `db` (stopping at the first error) and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut psql = self.command("psql");
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ]);
        run(psql, "psql")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The directory of its unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    /// The directory of PostgreSQL's programs it was started with.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The temp dir everything of this server lives in (data, socket, log); owned by the server's user.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stopped at once: the data is thrown away. The watchdog is ended first so that it does not race.
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = w.kill();
            let _ = w.wait();
        }
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_server_makes_separate_databases() {
        let s = server();
        let (a, b) = (s.fresh_db(), s.fresh_db());
        assert_ne!(a, b);
        let db = a.rsplit('/').next().unwrap();
        s.psql(db, "CREATE TABLE t (x INT); INSERT INTO t VALUES (1)");
        assert_eq!(s.psql(db, "SELECT count(*) FROM t"), "1\n");
        let other = b.rsplit('/').next().unwrap();
        assert_eq!(
            s.psql(
                other,
                "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
            ),
            "0\n"
        );
        assert!(std::ptr::eq(s, server()), "one server per process");
    }

    #[test]
    fn a_synchronous_standby_keeps_commits_through_kill9_and_promotion() {
        let primary = Server::start_new(Options::default());
        let standby = Server::standby_of(&primary, Options::default(), true);
        primary.psql(
            "postgres",
            "CREATE TABLE t (x INT); INSERT INTO t VALUES (1), (2)",
        );
        // Committed on the primary means flushed on the synchronous standby: nothing waits here.
        primary.kill9();
        standby.promote();
        assert_eq!(standby.psql("postgres", "SELECT sum(x) FROM t"), "3\n");
        standby.psql("postgres", "INSERT INTO t VALUES (3)");
        assert_eq!(
            standby.psql("postgres", "SELECT pg_is_in_recovery()"),
            "f\n"
        );
        drop(primary);
        let root = standby.root().to_path_buf();
        drop(standby);
        assert!(!root.exists(), "a dropped server's dir is removed");
    }
}
