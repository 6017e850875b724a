//! The long-poll, gateway and REST end-to-end suites once more, against a two-node cluster on PostgreSQL:
//! the same files as the `it` target's, with [`CLUSTER`] set, so that the harness's `Server` is two chatd
//! nodes behind a proxy that splits each client's requests across them (see `two_nodes`). Tests that
//! cannot hold in a cluster by their nature return at once through `two_nodes::single_node_only`, each
//! with its reason. `moves` adds what only a cluster has: clients that move between nodes mid-stream.

/// This target runs the suites against a two-node cluster.
pub(crate) const CLUSTER: bool = true;

#[path = "../it/gateway.rs"]
mod gateway;
#[allow(
    dead_code,
    reason = "helpers of the `it` target's other suites, which this target does not run"
)]
#[path = "../it/harness.rs"]
mod harness;
#[path = "../it/longpoll.rs"]
mod longpoll;
mod moves;
#[path = "../it/rest.rs"]
mod rest;
#[path = "../it/two_nodes.rs"]
mod two_nodes;
