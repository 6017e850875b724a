//! The harness's server as a two-node cluster (the `cluster` test target): two chatd processes on one fresh
//! PostgreSQL database and one shared DATA_DIR, behind a proxy that spreads the requests over them, so that
//! the end-to-end suites run unchanged against a cluster with each client's commands and reads split
//! across the nodes.
//!
//! The proxy speaks HTTP/1.1: each request goes to a node of its own choosing, on a fresh connection to that
//! node. Requests carrying a bearer token alternate between the nodes per token (a client's command goes to
//! one node, its next read to the other); requests without one, and WebSocket upgrades (the gateway's token
//! travels inside the socket), alternate globally. An upgrade is relayed byte for byte once both sides have
//! switched protocols. The `Host` header passes unchanged, so the nodes build absolute URLs on the proxy's
//! address, which is the server's `base`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::Server;

/// The nodes of a cluster-mode [`Server`] and the proxy in front of them.
pub(crate) struct Nodes {
    /// The chatd processes, NODE_ID 1 and 2 (1 starts first and writes).
    pub(crate) servers: Vec<Server>,
    proxy: tokio::task::JoinHandle<()>,
    /// The temp dir the nodes run in (DATA_DIR is `data` inside it), removed on drop.
    dir: PathBuf,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.proxy.abort();
        // The processes are killed as their handles drop right after this; their files go now.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts two nodes on a fresh database in `dir` (DATA_DIR = `dir/data`, so that tests that look at the
/// attachments' files find them where a single node keeps them), waits until one writes and the other has
/// linked to it, and puts the proxy in front. `env` goes to both nodes.
pub(crate) async fn start(dir: PathBuf, env: &[(&str, &str)]) -> Server {
    let url = test_postgres::server().fresh_db();
    let data = dir.join("data").display().to_string();
    let mut servers = Vec::new();
    for id in ["1", "2"] {
        let mut vars: Vec<(&str, &str)> = vec![
            ("DBURL", &url),
            ("NODE_ID", id),
            ("DATA_DIR", &data),
            ("LEASE_TTL", "1s"),
        ];
        vars.extend(
            env.iter()
                .filter(|(k, _)| !matches!(*k, "DBURL" | "NODE_ID" | "DATA_DIR" | "LEASE_TTL")),
        );
        servers.push(Server::start_single(dir.clone(), &vars).await);
    }
    ready(&servers).await;
    let targets: Vec<String> = servers
        .iter()
        .map(|s| s.base.trim_start_matches("http://").to_owned())
        .collect();
    let (addr, proxy) = spread(targets).await;
    Server::front(
        format!("http://{addr}"),
        Nodes {
            servers,
            proxy,
            dir,
        },
    )
}

/// Waits (up to 30 s) until both nodes list each other in `GET /api/v1/server` with one writer, and every
/// follower shows a live link in `/metrics`: before that a follower answers commands with 503.
pub(crate) async fn ready(servers: &[Server]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut writers = 0;
        let mut linked = 0;
        for s in servers {
            let (status, v) = s.get("/api/v1/server", None).await;
            let listed = v["nodes"].as_array().cloned().unwrap_or_default();
            let me = listed.iter().find(|n| n["self"] == json!(true));
            if status != StatusCode::OK || listed.len() != servers.len() || me.is_none() {
                continue;
            }
            if me.is_some_and(|n| n["role"] == "writer") {
                writers += 1;
            } else if metrics_text(s)
                .await
                .lines()
                .any(|l| l == "chatd_cluster_linked 1")
            {
                linked += 1;
            }
        }
        if writers == 1 && linked == servers.len() - 1 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut seen = String::new();
            for s in servers {
                let cluster: Vec<String> = metrics_text(s)
                    .await
                    .lines()
                    .filter(|l| l.starts_with("chatd_cluster"))
                    .map(str::to_owned)
                    .collect();
                seen.push_str(&format!("\n{}: {}", s.base, cluster.join("; ")));
            }
            panic!(
                "the cluster did not settle within 30 s ({writers} writers, {linked} linked \
                 followers):{seen}"
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metrics_text(server: &Server) -> String {
    let (_, _, v) = server
        .raw(reqwest::Method::GET, "/metrics", None, None)
        .await;
    v.as_str().unwrap_or_default().to_owned()
}

/// Which node each request goes to.
struct Spread {
    targets: Vec<String>,
    by_token: Mutex<HashMap<Vec<u8>, usize>>,
    next: AtomicUsize,
}

impl Spread {
    fn pick(&self, request: &Request<Incoming>) -> &str {
        let n = self.targets.len();
        let global = || self.next.fetch_add(1, Ordering::Relaxed);
        let i = match request.headers().get(hyper::header::AUTHORIZATION) {
            Some(token) => {
                let mut by_token = self.by_token.lock().expect("spread lock");
                let slot = by_token
                    .entry(token.as_bytes().to_vec())
                    .or_insert_with(global);
                *slot += 1;
                *slot
            }
            None => global(),
        };
        &self.targets[i % n]
    }
}

/// Starts the proxy; returns its address and its accept task.
async fn spread(targets: Vec<String>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr").to_string();
    let spread = Arc::new(Spread {
        targets,
        by_token: Mutex::default(),
        next: AtomicUsize::new(0),
    });
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let spread = Arc::clone(&spread);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let spread = Arc::clone(&spread);
                    async move { forward(&spread, req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

/// Sends one request to the next node and hands its answer back; relays an upgraded connection.
async fn forward(
    spread: &Spread,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, std::io::Error> {
    let target = spread.pick(&request).to_owned();
    let stream = TcpStream::connect(&target).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn.with_upgrades());
    let upgrade = request
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let mut response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    if let Some(client_side) = upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let node_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(node)) = tokio::join!(client_side, node_side) else {
                return;
            };
            let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
        });
    }
    Ok(response)
}

/// Marks a test that cannot hold in a cluster by its nature, and says so on stderr: true in the `cluster`
/// target, where the test returns at once. Each caller names its reason.
pub(crate) fn single_node_only(test: &str, reason: &str) -> bool {
    if crate::CLUSTER {
        eprintln!("{test}: skipped in cluster mode: {reason}");
    }
    crate::CLUSTER
}
