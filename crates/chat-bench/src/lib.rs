//! Benchmark tooling for chatd: the bare hyper long-poll baseline server ([`bare`]), the bare IRC
//! line-broadcast server ([`bare_irc`]), the bare
//! tokio-tungstenite broadcast server that speaks just enough of chatd's gateway ([`bare_ws`]), a one-connection
//! HTTP/1.1 bench client ([`client::Conn`]) and child-process handling for servers under test
//! ([`process::ServerProcess`]).
//!
//! SPEC §10 states chatd's performance targets as ratios to bare servers measured in the same run; this crate
//! holds those bare servers and the benches that drive both. Run the wake-up latency bench with
//! `cargo bench -p chat-bench --bench wake`; run the baseline alone with
//! `cargo run --release -p chat-bench --bin bare-longpoll -- 127.0.0.1:8090`, and the WebSocket one with
//! `cargo run --release -p chat-bench --bin bare-ws -- --listen 127.0.0.1:8091`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use chat_bench::{bare, client::Conn};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(bare::serve(listener, bare::Bare::new(), std::future::pending()));
//! let mut conn = Conn::connect(addr).await?;
//! let (status, body) = conn.request(http::Method::POST, "/send", None, Some("{}".into())).await?;
//! assert!(status.is_success() && body.starts_with(b"{\"seq\":"));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod bare;
pub mod bare_irc;
pub mod bare_ws;
pub mod client;
pub mod process;
