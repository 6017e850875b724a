//! The server's RSS and CPU from /proc, sampled every second.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Peak and mean RSS and mean CPU over a measured phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerUsage {
    /// RSS just before the gateway connections opened (users and joins already made), when known: what
    /// the connections themselves cost is the peak less this.
    pub(crate) rss_before_mib: Option<f64>,
    pub(crate) rss_peak_mib: f64,
    pub(crate) rss_mean_mib: f64,
    pub(crate) cpu_cores: f64,
    pub(crate) samples: usize,
}

/// VmRSS in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The median of ten RSS samples a tenth of a second apart, in KiB: the server's RSS just after setup still
/// moves while the allocator returns what setup used, and one sample made the per-connection figure of a
/// run vary by a few KiB.
pub(crate) async fn settled_rss_kib(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let mut samples = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.extend(rss_kib(pid));
    }
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state (field 3).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A sampler running until [`Sampler::stop`].
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<ServerUsage>>,
}

impl Sampler {
    pub(crate) fn start(pid: u32) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let hz = tokio::task::spawn_blocking(clock_ticks)
                .await
                .unwrap_or(100.0);
            let started = Instant::now();
            let ticks0 = cpu_ticks(pid)?;
            let mut rss = vec![rss_kib(pid)?];
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if let Some(r) = rss_kib(pid) { rss.push(r); }
                    }
                    _ = &mut stopped => break,
                }
            }
            let ticks1 = cpu_ticks(pid)?;
            rss.extend(rss_kib(pid));
            let elapsed = started.elapsed().as_secs_f64().max(1e-3);
            let mib = |kib: u64| kib as f64 / 1024.0;
            Some(ServerUsage {
                rss_before_mib: None,
                rss_peak_mib: mib(rss.iter().copied().max().unwrap_or(0)),
                rss_mean_mib: rss.iter().map(|&k| mib(k)).sum::<f64>() / rss.len() as f64,
                cpu_cores: (ticks1.saturating_sub(ticks0)) as f64 / hz / elapsed,
                samples: rss.len(),
            })
        });
        Self { stop, task }
    }

    pub(crate) async fn stop(self) -> Option<ServerUsage> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_ticks(pid).is_some());
    }
}
