//! The run's report: a table for people and a JSON object for tools.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::gateway::SwarmResult;
use crate::sample::ServerUsage;

/// Everything a run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) started_at: SystemTime,
    pub(crate) url: String,
    pub(crate) conns: usize,
    pub(crate) rate: f64,
    pub(crate) messages: u64,
    pub(crate) duration: u64,
    pub(crate) procs: usize,
    pub(crate) room_size: usize,
    /// Gateway and NATS receivers: `--socket-buffer-kib` (0: the kernel's default).
    pub(crate) socket_buffer_kib: Option<u32>,
    pub(crate) setup_s: f64,
    pub(crate) connect_s: f64,
    pub(crate) phase_s: f64,
    pub(crate) first_send_ns: u64,
    pub(crate) sent: u64,
    pub(crate) send_errors: u64,
    pub(crate) expected: u64,
    pub(crate) result: SwarmResult,
    pub(crate) usage: Option<ServerUsage>,
    /// `longpoll`: which server was driven (`chatd` or `bare`).
    pub(crate) server_kind: Option<&'static str>,
    /// `longpoll`: poll answers received in the measured window, and per second over it.
    pub(crate) polls: Option<(u64, f64)>,
    /// `durable-send`: acknowledged sends per second.
    pub(crate) acks_per_s: Option<f64>,
}

impl Report {
    /// Deliveries per second from the first send to the last arrival.
    fn deliveries_per_s(&self) -> f64 {
        let r = &self.result;
        if r.deliveries == 0 || self.first_send_ns == 0 || r.last_ns <= self.first_send_ns {
            return 0.0;
        }
        r.deliveries as f64 / ((r.last_ns - self.first_send_ns) as f64 / 1e9)
    }

    /// A latency quantile in milliseconds, or None without deliveries.
    fn latency_ms(&self, q: f64) -> Option<f64> {
        let h = &self.result.latency;
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
    }

    fn errors(&self) -> u64 {
        let r = &self.result;
        u64::try_from(r.failed + r.closed).unwrap_or(u64::MAX) + self.send_errors + r.poll_errors
    }

    /// What the latency figures measure.
    fn latency_of(&self) -> &'static str {
        match self.scenario.as_str() {
            "longpoll" => "wake: send stamp -> poll answer received",
            "durable-send" => "ack: request start -> 200 answer",
            _ => "delivery: send stamp -> frame received",
        }
    }

    pub(crate) fn json(&self) -> Value {
        let r = &self.result;
        let lat = |q| self.latency_ms(q);
        json!({
            "scenario": self.scenario,
            "started_at": humantime::format_rfc3339_seconds(self.started_at).to_string(),
            "parameters": {
                "url": self.url,
                "conns": self.conns,
                "rate": self.rate,
                "messages": self.messages,
                "duration_s": self.duration,
                "procs": self.procs,
                "room_size": self.room_size,
                "socket_buffer_kib": self.socket_buffer_kib,
            },
            "connections": {
                "target": self.conns,
                "ready": r.ready,
                "open_at_end": r.open,
            },
            "sent": self.sent,
            "delivered": r.deliveries,
            "expected": self.expected,
            "deliveries_per_s": self.deliveries_per_s(),
            "server_kind": self.server_kind,
            "polls": self.polls.map(|(n, per_s)| json!({ "completed": n, "per_s": per_s })),
            "acks_per_s": self.acks_per_s,
            "latency_of": self.latency_of(),
            "latency_ms": {
                "p50": lat(0.50),
                "p95": lat(0.95),
                "p99": lat(0.99),
                "p99_9": lat(0.999),
                "max": (!r.latency.is_empty()).then(|| r.latency.max() as f64 / 1000.0),
            },
            "errors": {
                "total": self.errors(),
                "connect_failed": r.failed,
                "connect_refused": r.refused,
                "closed": r.closed,
                "send_failed": self.send_errors,
                "poll_failed": r.poll_errors,
            },
            "server": self.usage.map(|u| json!({
                "rss_before_connect_mib": u.rss_before_mib,
                "rss_per_connection_kib": self.rss_per_connection_kib(),
                "rss_peak_mib": u.rss_peak_mib,
                "rss_mean_mib": u.rss_mean_mib,
                "cpu_cores": u.cpu_cores,
                "samples": u.samples,
            })),
            "loadgen": {
                "rss_mib": r.rss_kib as f64 / 1024.0,
                "max_frame_bytes": r.max_frame_bytes,
            },
            "setup_s": self.setup_s,
            "connect_s": self.connect_s,
            "duration_s": self.phase_s,
        })
    }

    /// What each open connection added to the server's RSS: (peak - before connecting) / connections.
    pub(crate) fn rss_per_connection_kib(&self) -> Option<f64> {
        let u = self.usage?;
        let before = u.rss_before_mib?;
        let conns = self.result.ready.max(1) as f64;
        Some((u.rss_peak_mib - before).max(0.0) * 1024.0 / conns)
    }

    pub(crate) fn table(&self) -> String {
        let r = &self.result;
        let ms = |q| {
            self.latency_ms(q)
                .map_or("-".to_owned(), |v| format!("{v:.2} ms"))
        };
        let mut rows: Vec<(&str, String)> = vec![(
            "scenario",
            match self.server_kind {
                Some(kind) => format!("{} ({kind})", self.scenario),
                None => self.scenario.clone(),
            },
        )];
        let throughput = if let Some(acks) = self.acks_per_s {
            vec![
                (
                    "acknowledged",
                    format!("{} sends to {} channels", self.sent, r.ready),
                ),
                ("acks/s", format!("{acks:.0}")),
            ]
        } else {
            let mut v = vec![
                ("sent", format!("{} (of {})", self.sent, self.messages)),
                (
                    "delivered",
                    format!("{} (expected {})", r.deliveries, self.expected),
                ),
                ("deliveries/s", format!("{:.0}", self.deliveries_per_s())),
            ];
            if let Some((n, per_s)) = self.polls {
                v.push(("polls", format!("{n} answered")));
                v.push(("polls/s", format!("{per_s:.0}")));
            }
            v
        };
        rows.extend([(
            "connections",
            format!(
                "{} ready of {}, {} open at end",
                r.ready, self.conns, r.open
            ),
        )]);
        rows.extend(throughput);
        rows.extend([
            ("latency of", self.latency_of().to_owned()),
            ("latency p50", ms(0.50)),
            ("latency p95", ms(0.95)),
            ("latency p99", ms(0.99)),
            ("latency p99.9", ms(0.999)),
            (
                "errors",
                format!(
                    "{} (connect {}, refused {}, closed {}, send {}, poll {})",
                    self.errors(),
                    r.failed,
                    r.refused,
                    r.closed,
                    self.send_errors,
                    r.poll_errors
                ),
            ),
        ]);
        match self.usage {
            Some(u) => {
                rows.push((
                    "server RSS",
                    format!(
                        "peak {:.1} MiB, mean {:.1} MiB",
                        u.rss_peak_mib, u.rss_mean_mib
                    ),
                ));
                if let (Some(before), Some(per)) = (u.rss_before_mib, self.rss_per_connection_kib())
                {
                    rows.push((
                        "server RSS/conn",
                        format!("{per:.1} KiB (peak less {before:.1} MiB before connecting)"),
                    ));
                }
                rows.push(("server CPU", format!("{:.2} cores", u.cpu_cores)));
            }
            None => rows.push(("server", "not sampled (no --server-pid)".to_owned())),
        }
        rows.push(("loadgen", {
            let mut v = format!("RSS {:.1} MiB", r.rss_kib as f64 / 1024.0);
            if self.server_kind.is_none() {
                let _ = write!(v, ", largest frame {} bytes", r.max_frame_bytes);
            }
            match self.socket_buffer_kib {
                Some(0) => v.push_str(", socket buffers: kernel default"),
                Some(k) => {
                    let _ = write!(v, ", socket buffers {k} KiB");
                }
                None => {}
            }
            v
        }));
        rows.push((
            "duration",
            format!(
                "{:.1} s measured (setup {:.1} s, connect {:.1} s)",
                self.phase_s, self.setup_s, self.connect_s
            ),
        ));
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<14} {v}");
        }
        out
    }
}
