//! Servers under test as child processes: start one, learn its address from its banner line, kill it on drop.
//!
//! Benches never run a server inside their own process, so the server's CPU and the load generator's are
//! separate and the server can be any binary (the bare baseline or chatd). Both print one stdout line
//! `... listening on http://ADDR` once they accept connections; that line is the readiness signal.

use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server child process; dropping it kills the process (also when a bench panics).
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `cmd` with stdout piped and waits up to `timeout` for a stdout line containing
    /// `listening on http://ADDR`. The caller chooses stderr (inherit it, or send it to a log file).
    pub fn spawn(name: &str, mut cmd: Command, timeout: Duration) -> io::Result<Self> {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("child stdout was not piped"))?;
        let (tx, rx) = mpsc::channel();
        // A thread (not a task) reads stdout: it must keep draining after the banner, or a chatty server would
        // block on a full pipe, and it must not depend on any async runtime the caller may or may not have.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(addr) = parse_banner(&line) {
                    sent = tx.send(addr).is_ok();
                }
            }
        });
        let mut this = Self {
            name: name.to_owned(),
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        match rx.recv_timeout(timeout) {
            Ok(addr) => {
                this.addr = addr;
                Ok(this)
            }
            // Dropping `this` kills the child.
            Err(_) => {
                let status = this.child.try_wait().ok().flatten();
                Err(io::Error::other(match status {
                    Some(status) => format!("{name} exited ({status}) before printing its address"),
                    None => format!(
                        "{name} printed no 'listening on http://ADDR' line within {timeout:?}"
                    ),
                }))
            }
        }
    }

    /// The address the server listens on (an unspecified IP is replaced by 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OS process id (for reading /proc figures such as RSS).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGKILL: a bench's server holds nothing worth a graceful shutdown, and waiting reaps the zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `... listening on http://ADDR` line, if this is one.
pub fn parse_banner(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    let addr = rest.split(|c: char| c == '/' || c.is_whitespace()).next()?;
    let mut addr: SocketAddr = addr.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    Some(addr)
}

#[cfg(test)]
mod tests {
    use super::parse_banner;

    #[test]
    fn banners() {
        assert_eq!(
            parse_banner("chatd listening on http://127.0.0.1:4321").map(|a| a.port()),
            Some(4321)
        );
        assert_eq!(
            parse_banner("bare-longpoll listening on http://0.0.0.0:80/ now")
                .map(|a| a.to_string()),
            Some("127.0.0.1:80".to_owned())
        );
        assert_eq!(parse_banner("starting up"), None);
    }
}

/// The chatd binary to benchmark: `CHATD_BIN` if set (made absolute, because chatd runs in its own temporary
/// directory), else the result of a fresh `cargo build --release -p chatd` in this workspace.
pub fn chatd_binary() -> io::Result<std::path::PathBuf> {
    if let Ok(bin) = std::env::var("CHATD_BIN") {
        return std::fs::canonicalize(&bin)
            .map_err(|e| io::Error::other(format!("CHATD_BIN={bin}: {e}")));
    }
    let workspace = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("bench: building chatd (cargo build --release -p chatd) ...");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "chatd"])
        .current_dir(&workspace)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "cargo build --release -p chatd failed ({status})"
        )));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), std::path::PathBuf::from);
    Ok(target.join("release").join("chatd"))
}

/// A chatd under test and the temporary directory holding its database, data and log. Field order matters:
/// the process is killed before the directory is removed.
#[derive(Debug)]
pub struct Chatd {
    /// The running server.
    pub process: ServerProcess,
    /// Its directory (`bench.db`, `data/`, `chatd.log`).
    pub dir: tempfile::TempDir,
}

impl Chatd {
    /// Starts chatd on a fresh database in a temporary directory, on 127.0.0.1:0, with the rate limit off,
    /// DURABILITY=full, no per-address connection cap (every bench client comes from 127.0.0.1), and `env`
    /// on top. Its stderr goes to `chatd.log` in the directory; a failed start reports the log's tail.
    pub fn start(env: &[(&str, &str)]) -> io::Result<Self> {
        let bin = chatd_binary()?;
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("chatd.log"))?;
        let mut cmd = Command::new(&bin);
        cmd.env("LISTEN", "127.0.0.1:0")
            .env(
                "DBURL",
                format!("sqlite://{}", dir.path().join("bench.db").display()),
            )
            .env("RATE_LIMIT", "off")
            .env("MAX_CONNECTIONS_PER_IP", "1000000")
            .env("DURABILITY", "full")
            .env("DATA_DIR", dir.path().join("data"))
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stderr(log);
        let process = ServerProcess::spawn("chatd", cmd, Duration::from_secs(30)).map_err(|e| {
            let log = std::fs::read_to_string(dir.path().join("chatd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            io::Error::other(format!(
                "{e}; {} stderr ends:\n{}",
                bin.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        })?;
        Ok(Self { process, dir })
    }
}
