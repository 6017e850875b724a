//! Users, channels and sends over chatd's long-poll HTTP API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Setup requests in flight at once.
const SETUP_PARALLELISM: usize = 64;

/// Waits (at most `limit`) until every node of `apis` has applied at least the seq the first had applied
/// when this began: then a session made through the first is known to all of them.
pub(crate) async fn wait_applied(apis: &[Api], limit: Duration) -> Result<()> {
    let Some(first) = apis.first() else {
        return Ok(());
    };
    let target = first.applied_seq().await?;
    let deadline = Instant::now() + limit;
    for api in apis {
        while api.applied_seq().await? < target {
            if Instant::now() > deadline {
                bail!("{} has not applied seq {target} after {limit:?}", api.base);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// An HTTP client for one server.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
}

/// What the user should do when chatd refuses connections or rate-limits.
pub(crate) const HINT: &str =
    "hint: start chatd with MAX_CONNECTIONS_PER_IP=100000 RATE_LIMIT=off for load runs";

impl Api {
    pub(crate) fn new(base: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// The server's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value> {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            if status.as_u16() == 429 {
                bail!("POST {path}: HTTP 429 (rate limited): {text}\n{HINT}");
            }
            bail!("POST {path}: HTTP {status}: {text}");
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// This node's applied seq, from `GET /api/v1/server` (its own entry in `nodes`).
    pub(crate) async fn applied_seq(&self) -> Result<u64> {
        let url = format!("{}/api/v1/server", self.base);
        let v: Value = self.client.get(&url).send().await?.json().await?;
        v["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["self"] == true))
            .and_then(|n| n["applied_seq"].as_u64())
            .with_context(|| format!("GET {url}: no applied_seq of its own"))
    }

    /// A guest session; returns its token.
    pub(crate) async fn guest(&self, nick: &str) -> Result<String> {
        let v = self
            .post("/api/v1/session", None, json!({ "nick": nick }))
            .await?;
        Ok(v["token"]
            .as_str()
            .context("session without token")?
            .to_owned())
    }

    pub(crate) async fn join(&self, token: &str, channel: &str) -> Result<()> {
        self.post(
            "/api/v1/messages",
            Some(token),
            json!({ "command": "JOIN", "to": channel }),
        )
        .await
        .map(drop)
    }

    /// Creates `nicks.len()` guests, each joining the channel `channel_of(i)` if any, with bounded
    /// parallelism and a progress line; returns their tokens in order.
    pub(crate) async fn users(
        &self,
        nicks: Vec<String>,
        channel_of: impl Fn(usize) -> Option<String>,
    ) -> Result<Vec<String>> {
        let total = nicks.len();
        let done = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let progress = {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    eprint!(
                        "\rsetup: {}/{total} users ({:.0?})",
                        done.load(Ordering::Relaxed),
                        started.elapsed()
                    );
                }
            })
        };
        let jobs = nicks.into_iter().enumerate().map(|(i, nick)| {
            let channel = channel_of(i);
            let done = Arc::clone(&done);
            async move {
                let token = self.guest(&nick).await?;
                if let Some(c) = channel {
                    self.join(&token, &c).await?;
                }
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>((i, token))
            }
        });
        let mut results = futures_util::stream::iter(jobs).buffer_unordered(SETUP_PARALLELISM);
        let mut tokens = vec![String::new(); total];
        let mut outcome = Ok(());
        while let Some(r) = results.next().await {
            match r {
                Ok((i, t)) => tokens[i] = t,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        progress.abort();
        eprintln!(
            "\rsetup: {}/{total} users in {:.1?}",
            done.load(Ordering::Relaxed),
            started.elapsed()
        );
        outcome.context("setting up users")?;
        Ok(tokens)
    }
}
