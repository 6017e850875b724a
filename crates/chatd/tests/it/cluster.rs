//! chatd as a cluster: several real chatd processes on one real PostgreSQL database (started by the
//! tests), each client's commands and reads split across the nodes.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Client, Server, of_type};

/// chatd processes on one PostgreSQL database and one shared DATA_DIR.
#[allow(
    dead_code,
    reason = "tests of failures use the URL and the shared directory"
)]
pub(crate) struct Cluster {
    pub(crate) url: String,
    pub(crate) data: PathBuf,
    pub(crate) nodes: Vec<Server>,
}

impl Cluster {
    /// Starts `n` nodes (NODE_ID 1..=n) on a fresh database, with a short lease so that failures are quick.
    pub(crate) async fn start(n: usize, env: &[(&str, &str)]) -> Cluster {
        let url = test_postgres::server().fresh_db();
        let data = tempfile::tempdir().expect("tempdir").keep();
        let mut nodes = Vec::new();
        for i in 1..=n {
            nodes.push(node(&url, &data, i, env).await);
        }
        Cluster { url, data, nodes }
    }

    /// Which node reports itself the writer now, by `GET /api/v1/server`.
    pub(crate) async fn writer(&self) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child_alive() {
                let (s, v) = n.get("/api/v1/server", None).await;
                if s == StatusCode::OK
                    && v["nodes"].as_array().is_some_and(|ns| {
                        ns.iter()
                            .any(|x| x["self"] == json!(true) && x["role"] == "writer")
                    })
                {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// Starts one node of the cluster.
pub(crate) async fn node(
    url: &str,
    data: &std::path::Path,
    id: usize,
    env: &[(&str, &str)],
) -> Server {
    let id = id.to_string();
    let data = data.display().to_string();
    let mut vars: Vec<(&str, &str)> = vec![
        ("DBURL", url),
        ("NODE_ID", &id),
        ("DATA_DIR", &data),
        ("LEASE_TTL", "1s"),
    ];
    vars.extend_from_slice(env);
    Server::start(&vars).await
}

fn say(text: &str) -> Value {
    json!({ "command": "PRIVMSG", "to": "#c", "body": text })
}

fn texts(events: &[Value]) -> Vec<String> {
    of_type(events, "message")
        .iter()
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect()
}

/// Sends until a writer settles it: right after start, a follower may not have linked to the writer yet.
async fn ok_eventually(server: &Server, c: &Client, body: Value) -> u64 {
    for _ in 0..100 {
        let (s, v) = server.cmd(c, body.clone()).await;
        if s == StatusCode::OK {
            return v["seq"].as_u64().expect("seq");
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no writer settled {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_are_one_server() {
    let cluster = Cluster::start(2, &[]).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = a.guest("alice").await;
    let mut bob = b.guest("bob").await;
    ok_eventually(a, &alice, json!({ "command": "JOIN", "to": "#c" })).await;
    ok_eventually(b, &bob, json!({ "command": "JOIN", "to": "#c" })).await;
    let mut seqs = Vec::new();
    for i in 0..10 {
        let (on, who) = if i % 2 == 0 { (a, &alice) } else { (b, &bob) };
        seqs.push(ok_eventually(on, who, say(&format!("m{i}"))).await);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one order: {seqs:?}");
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    // Alice reads on the other node than she signed up on; bob on his own.
    let on_b = b.drain(&mut alice).await;
    assert_eq!(texts(&on_b), expected);
    let on_b = b.drain(&mut bob).await;
    assert_eq!(texts(&on_b), expected);

    let (s, v) = a.get("/api/v1/server", None).await;
    assert_eq!(s, StatusCode::OK);
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{v}");
    let writers = nodes.iter().filter(|n| n["role"] == "writer").count();
    assert_eq!(writers, 1, "{v}");
    assert!(cluster.writer().await.is_some());
}
