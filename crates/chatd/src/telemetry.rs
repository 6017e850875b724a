//! Prometheus metrics: installs the global `metrics` recorder with the histogram buckets chatd's metrics
//! need, and describes every metric the engine, the transports and the binary emit, so that the text
//! exposition carries HELP lines.

use std::time::Duration;

use anyhow::Context as _;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open TCP connections, labelled by transport (emitted by `listener.rs`).
pub(crate) const CONNECTIONS: &str = "chatd_connections";
/// Connections closed at once because their address had too many open (emitted by `listener.rs`).
pub(crate) const CONNECTIONS_REFUSED: &str = "chatd_connections_refused_total";

/// Powers of two from 1 to 1024: how many commands one group commit took.
fn batch_buckets() -> Vec<f64> {
    (0..=10).map(|i| f64::from(1u32 << i)).collect()
}

/// Installs the recorder. Without a listener feature the exporter only renders text, which `GET /metrics`
/// serves; histograms are summarised into buckets when rendered, and `run_upkeep` drains them in between.
pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    let commit_seconds = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    let lag = [0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0];
    let wake = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("chatd_commit_seconds".into()),
            &commit_seconds,
        )?
        .set_buckets_for_metric(
            Matcher::Full("chatd_commit_batch_size".into()),
            &batch_buckets(),
        )?
        .set_buckets_for_metric(Matcher::Full("chatd_stream_lag_events".into()), &lag)?
        .set_buckets_for_metric(Matcher::Full("chatd_longpoll_wake_seconds".into()), &wake)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    // Series the binary owns exist from the start, so a dashboard sees 0 rather than no data until the first
    // connection or refusal.
    metrics::gauge!(CONNECTIONS, "transport" => "http").set(0.0);
    metrics::counter!(CONNECTIONS_REFUSED).absolute(0);
    Ok(handle)
}

/// Drains histogram samples into their buckets now and then, so memory stays bounded between scrapes.
pub(crate) fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

fn describe() {
    describe_counter!(
        "chatd_commands_total",
        "Commands handled by the engine, by outcome."
    );
    describe_counter!("chatd_events_total", "Durable events appended to the log.");
    describe_histogram!(
        "chatd_commit_seconds",
        Unit::Seconds,
        "Time to commit one group of commands to the store."
    );
    describe_histogram!(
        "chatd_commit_batch_size",
        Unit::Count,
        "Commands per group commit."
    );
    describe_histogram!(
        "chatd_stream_lag_events",
        Unit::Count,
        "How many events behind the log's head a stream read started."
    );
    describe_histogram!(
        "chatd_longpoll_wake_seconds",
        Unit::Seconds,
        "Time from an event's commit to the parked long-poll that receives it answering."
    );
    describe_gauge!(
        "chatd_longpoll_parked",
        Unit::Count,
        "Long-poll requests currently waiting for events."
    );
    describe_gauge!(
        CONNECTIONS,
        Unit::Count,
        "Open TCP connections, by transport."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "TCP connections closed at once because their IP address had MAX_CONNECTIONS_PER_IP open."
    );
    describe_gauge!(
        "chatd_cluster_writer",
        "In a cluster: 1 while this node holds the writer lease, else 0."
    );
    describe_gauge!(
        "chatd_cluster_linked",
        "In a cluster: 1 while this follower has a link to the writer (its commands can be settled), else 0."
    );
    describe_gauge!(
        "chatd_cluster_term",
        "In a cluster: the writer term this node last wrote under."
    );
    describe_gauge!(
        "chatd_cluster_applied_seq",
        "In a cluster: the last seq this node applied and published."
    );
    describe_gauge!(
        "chatd_federation_peer_up",
        "1 while the linked server answers this server's handshakes, else 0, by peer."
    );
    describe_gauge!(
        "chatd_federation_peer_lag_events",
        Unit::Count,
        "Local events not yet acknowledged by the linked server (after its outbox cursor), by peer."
    );
    describe_gauge!(
        "chatd_federation_peer_contact_age_seconds",
        Unit::Seconds,
        "Time since the last request from or handshake answered by the linked server, by peer."
    );
    describe_gauge!(
        "chatd_cluster_node_lag_events",
        Unit::Count,
        "In a cluster: each node's distance behind the log's last seq at its last report, by node."
    );
    describe_gauge!(
        "chatd_cluster_node_applied_seq",
        "In a cluster: each node's applied seq at its last report, by node."
    );
    describe_gauge!(
        "chatd_cluster_node_writer",
        "In a cluster: 1 for the node that reported itself the writer, by node."
    );
    describe_gauge!(
        "chatd_cluster_node_report_age_seconds",
        Unit::Seconds,
        "In a cluster: how long ago each node last reported, by node."
    );
    describe_counter!(
        "chatd_cluster_takeovers_total",
        Unit::Count,
        "In a cluster: times this node took the writer lease."
    );
    describe_counter!(
        "chatd_cluster_stepdowns_total",
        Unit::Count,
        "In a cluster: times this node stepped down (a fenced append, a lost lease, a commit of unknown outcome)."
    );
    describe_counter!(
        "chatd_cluster_resends_total",
        Unit::Count,
        "In a cluster: commands sent again (with their nonce) because no writer could settle them."
    );
}
