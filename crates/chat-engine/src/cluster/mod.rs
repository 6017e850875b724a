//! Cluster mode: many chatd processes on one shared store ([`chat_log::Cluster`], PostgreSQL) are one server.
//!
//! Every node keeps the core in memory by following the log. One node at a time holds the writer lease and
//! runs the writer loop exactly as a single node does; the others hand their commands to it over a link (one
//! TCP connection each, [`link`]) and apply what it commits. What keeps the log one order is the store, not a
//! timer: every append names the writer's term and the store refuses it once another node has taken the
//! lease ([`chat_log::Cluster::append_fenced`]). A writer whose append is refused, or whose commit ends in an
//! unknown outcome, steps down, rebuilds its core from the log, and follows.
//!
//! Exactly once across writer changes: every command a node sends on carries a nonce (the client's, or one
//! the node makes), stored in the same transaction as its events; a command whose writer went away before
//! answering is sent again, with the same nonce, to the next writer, which answers the first reply if the
//! first writer had committed it.

mod follow;
pub(crate) mod link;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chat_core::{ClientId, Command, Origin, Seq, UserId};
use chat_log::{Cluster, NodeRecord, NodeRole};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{CommandReply, Shared, decode_reply, encode_reply, lock};
use crate::error::EngineError;
use crate::writer::Job;
use link::{Down, Up, WireError, WireReply};

/// A node's place in a cluster (`NODE_ID`, the link's address, the lease's length).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster (0 to 1023: it is part of every id the node makes).
    pub node_id: u16,
    /// Where this node listens for the other nodes' links (used while it is the writer).
    pub listen: SocketAddr,
    /// The address other nodes reach `listen` at, if not `listen` itself (behind NAT, or for `0.0.0.0`).
    pub advertise: Option<String>,
    /// How long the writer lease lasts without renewal: the longest a dead writer's lease keeps the others
    /// waiting. Renewed every quarter of it.
    pub lease_ttl: Duration,
}

/// How many frames may wait for one follower's link before the link is dropped (the follower then reads
/// the log from the store, and connects again).
const LINK_QUEUE: usize = 8192;

/// The node's part of the shared state.
pub(crate) struct Node {
    pub(crate) store: Arc<dyn Cluster>,
    pub(crate) id: u16,
    pub(crate) addr: String,
    pub(crate) ttl: Duration,
    pub(crate) secret: [u8; 32],
    /// 0 follower, 1 writer.
    role: AtomicU8,
    /// The term this node writes under (while writer) or last talked to (while following).
    pub(crate) term: AtomicU64,
    /// Links of followers, while this node writes.
    hub: Mutex<Vec<mpsc::Sender<Arc<Vec<u8>>>>>,
    /// This node's own live connections per client, as its clients' Connect and Disconnect commands were
    /// acknowledged: whichever node writes counts them.
    pub(crate) local: Mutex<HashMap<ClientId, u32>>,
    /// Makes nonces for commands that came without one.
    next_nonce: AtomicU64,
    nonce_salt: u64,
    /// Rung by the store's commit doorbell.
    pub(crate) doorbell: watch::Sender<Seq>,
    /// Set to a term when this node learns it lost that term's lease.
    pub(crate) lost: watch::Sender<u64>,
    /// The link listener, taken by the acceptor task once the engine runs.
    pub(crate) listener: Mutex<Option<TcpListener>>,
    /// Asks for a report at once (the role changed).
    report_now: tokio::sync::Notify,
    /// While following: the link to the writer, which barriers ([`Node::writer_seq`]) ask through. Its
    /// presence shows in `/metrics` as `chatd_cluster_linked`.
    pub(crate) uplink: Mutex<Option<mpsc::Sender<Arc<Vec<u8>>>>>,
    /// Barriers waiting for the writer's answer, by id; dropped (answered with nothing) when the link goes.
    syncs: Mutex<HashMap<u64, oneshot::Sender<Seq>>>,
    next_sync: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub(crate) async fn new(
        store: Arc<dyn Cluster>,
        config: &ClusterConfig,
    ) -> Result<Arc<Node>, EngineError> {
        if config.node_id > chat_core::MAX_NODE_ID {
            return Err(EngineError::InvalidInput {
                field: "NODE_ID",
                reason: "must be 0 to 1023",
            });
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(EngineError::Files)?;
        let bound = listener.local_addr().map_err(EngineError::Files)?;
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let reader = Arc::clone(&store);
        let secret = tokio::task::spawn_blocking(move || reader.cluster_secret())
            .await
            .map_err(|e| EngineError::Stopped {
                reason: format!("the start-up task failed: {e}").into(),
            })??;
        let mut salt = [0u8; 8];
        getrandom::fill(&mut salt).map_err(|e| EngineError::Hashing(e.to_string()))?;
        Ok(Arc::new(Node {
            store,
            id: config.node_id,
            addr,
            ttl: config
                .lease_ttl
                .clamp(Duration::from_millis(200), Duration::from_secs(600)),
            secret,
            role: AtomicU8::new(0),
            term: AtomicU64::new(0),
            hub: Mutex::new(Vec::new()),
            local: Mutex::new(HashMap::new()),
            next_nonce: AtomicU64::new(0),
            nonce_salt: u64::from_le_bytes(salt),
            doorbell: watch::channel(0).0,
            lost: watch::channel(0).0,
            listener: Mutex::new(Some(listener)),
            report_now: tokio::sync::Notify::new(),
            uplink: Mutex::new(None),
            syncs: Mutex::new(HashMap::new()),
            next_sync: AtomicU64::new(0),
        }))
    }

    pub(crate) fn role(&self) -> NodeRole {
        if self.role.load(Ordering::SeqCst) == 1 {
            NodeRole::Writer
        } else {
            NodeRole::Follower
        }
    }

    pub(crate) fn set_writer(&self, term: u64) {
        self.term.store(term, Ordering::SeqCst);
        self.role.store(1, Ordering::SeqCst);
        metrics::gauge!("chatd_cluster_term").set(term as f64);
        metrics::gauge!("chatd_cluster_writer").set(1.0);
        self.report_now.notify_one();
    }

    /// Steps down: drops every follower's link (they find the next writer through the lease).
    pub(crate) fn set_follower(&self) {
        self.role.store(0, Ordering::SeqCst);
        lock(&self.hub).clear();
        metrics::gauge!("chatd_cluster_writer").set(0.0);
        self.report_now.notify_one();
    }

    /// Whether this node writes under `term` right now.
    fn writes_under(&self, term: u64) -> bool {
        self.role() == NodeRole::Writer && self.term.load(Ordering::SeqCst) == term
    }

    /// Sends an encoded frame to every follower. A follower whose queue is full loses its link: it reads
    /// the log from the store instead and connects again.
    pub(crate) fn broadcast(&self, frame: Vec<u8>) {
        let frame = Arc::new(frame);
        lock(&self.hub).retain(|tx| tx.try_send(Arc::clone(&frame)).is_ok());
    }

    /// A nonce for a command that came without one: unique to this process, and marked (a leading U+0001,
    /// which clients' nonces may not have) so that it is kept only as long as a resend may come.
    pub(crate) fn make_nonce(&self) -> String {
        let n = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        format!("{INTERNAL_NONCE_MARK}{}.{:x}.{n}", self.id, self.nonce_salt)
    }

    /// Counts a connection of this node's client that the writer acknowledged.
    pub(crate) fn count_connection(&self, client: ClientId, up: bool) {
        let mut local = lock(&self.local);
        let n = local.entry(client).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                local.remove(&client);
            }
        }
    }

    pub(crate) fn connections(&self) -> Vec<(ClientId, u32)> {
        lock(&self.local).iter().map(|(c, n)| (*c, *n)).collect()
    }

    /// Sets (or, with `None`, drops) the link barriers ask through. Dropping it answers every barrier
    /// still waiting with nothing: the next writer knows nothing of them.
    pub(crate) fn set_uplink(&self, frames: Option<mpsc::Sender<Arc<Vec<u8>>>>) {
        let gone = frames.is_none();
        metrics::gauge!("chatd_cluster_linked").set(if gone { 0.0 } else { 1.0 });
        *lock(&self.uplink) = frames;
        if gone {
            lock(&self.syncs).clear();
        }
    }

    /// Answers a barrier with the writer's seq.
    pub(crate) fn synced(&self, id: u64, seq: Seq) {
        if let Some(tx) = lock(&self.syncs).remove(&id) {
            let _ = tx.send(seq);
        }
    }

    /// The seq of the last batch the writer has published, asked over the link: every command acknowledged
    /// anywhere before this call is at or before it. `None` without a link, or without an answer within
    /// `wait` (a writer paused or gone: the caller serves what this node has).
    pub(crate) async fn writer_seq(&self, wait: Duration) -> Option<Seq> {
        let link = lock(&self.uplink).clone()?;
        let id = self.next_sync.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.syncs).insert(id, tx);
        if link
            .try_send(Arc::new(link::encode(&Up::Sync { id })))
            .is_err()
        {
            lock(&self.syncs).remove(&id);
            return None;
        }
        let answer = tokio::time::timeout(wait, rx).await;
        lock(&self.syncs).remove(&id);
        answer.ok()?.ok()
    }
}

/// What an operator sees of the cluster (`GET /api/v1/server`, `/metrics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id.
    pub node: u16,
    /// Its role now.
    pub role: NodeRole,
    /// The writer's term this node knows.
    pub term: u64,
    /// Every node's last report, with its lag behind the log's end in events.
    pub nodes: Vec<(NodeRecord, u64)>,
}

/// The first character of every nonce a node makes.
const INTERNAL_NONCE_MARK: char = '\u{1}';

/// How long a node's own nonces are remembered in memory: far longer than a command is resent for (twice the
/// lease and a little), far shorter than clients' 10 minutes, so that a busy cluster does not keep one entry
/// per command for 10 minutes.
pub(crate) const INTERNAL_NONCE_TTL_MS: u64 = 120_000;

/// Whether a nonce was made by a node (see [`Node::make_nonce`]).
pub(crate) fn is_internal_nonce(nonce: &str) -> bool {
    nonce.starts_with(INTERNAL_NONCE_MARK)
}

/// The placeholder user of nonces a node makes for commands without a user (sign-ups, the operator's).
pub(crate) const ANONYMOUS_NONCE_USER: UserId = UserId(chat_core::Snowflake::MIN);

/// Accepts followers' links for as long as the engine lives. Links are answered only while this node
/// writes, under the term the follower names.
pub(crate) fn spawn_acceptor(shared: &Arc<Shared>, tx: &mpsc::Sender<Job>) {
    let Some(node) = shared.node.clone() else {
        return;
    };
    let Some(listener) = lock(&node.listener).take() else {
        return;
    };
    let weak_shared = Arc::downgrade(shared);
    let weak_tx = tx.downgrade();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if weak_shared.strong_count() == 0 {
                break;
            }
            let _ = stream.set_nodelay(true);
            let (node, weak_shared, weak_tx) =
                (Arc::clone(&node), weak_shared.clone(), weak_tx.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_link(stream, node, weak_shared, weak_tx).await {
                    tracing::debug!(error = %e, "a follower's link ended");
                }
            });
        }
    });
}

/// One follower's link, on the writer.
async fn serve_link(
    stream: TcpStream,
    node: Arc<Node>,
    shared: Weak<Shared>,
    tx: mpsc::WeakSender<Job>,
) -> std::io::Result<()> {
    let (mut r, mut w) = stream.into_split();
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(link::HELLO_TIMEOUT, link::read::<Up, _>(&mut r, &mut buf))
        .await
        .map_err(|_| std::io::Error::other("no hello"))??;
    let Some(Up::Hello {
        node: peer,
        term,
        proof,
        connections,
    }) = hello
    else {
        return Err(std::io::Error::other("the first frame is not a hello"));
    };
    let expected = link::proof(&node.secret, term);
    if !bool::from(expected.ct_eq(&proof)) {
        return Err(std::io::Error::other("the hello's proof is wrong"));
    }
    if !node.writes_under(term) {
        // Not (or no longer) the writer of that term: close, and the follower reads the lease again.
        return Ok(());
    }
    let (frames, mut queue) = mpsc::channel::<Arc<Vec<u8>>>(LINK_QUEUE);
    let welcome = {
        // Registered under the hub's lock, with the last seq read under the same lock as broadcasts, so the
        // follower misses no batch between its welcome and its first pushed frame.
        let mut hub = lock(&node.hub);
        let last = shared.upgrade().map_or(0, |s| s.last_published());
        hub.push(frames.clone());
        link::encode(&Down::Welcome { term, last })
    };
    w.write_all(&welcome).await?;
    tracing::info!(peer, term, "a follower linked");
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while queue.recv_many(&mut batch, 64).await > 0 {
            if link::write_all(&mut w, &batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    });
    // Presence as this writer sees it, read in the writer's order after the hub registration above: any
    // change after it reaches the follower behind this list, never before it.
    if let Some(users) = presences(&tx).await {
        let _ = frames
            .send(Arc::new(link::encode(&Down::Presences { users })))
            .await;
    }
    // The follower's connections count here until the link goes.
    let counts: Arc<Mutex<HashMap<ClientId, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    for (client, n) in connections {
        for _ in 0..n {
            let result = submit(&tx, Origin::Client(client), Command::Connect, None, false).await;
            if result.is_ok() {
                *lock(&counts).entry(client).or_insert(0) += 1;
            }
        }
    }
    let result = loop {
        let frame = match link::read::<Up, _>(&mut r, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let (id, origin, command, nonce, rate) = match frame {
            Up::Command {
                id,
                origin,
                command,
                nonce,
                rate,
            } => (id, origin, command, nonce, rate),
            Up::Sync { id } => {
                // Published follows committed, and every acknowledgement follows publishing: the seq read
                // now covers every command acknowledged so far, through any node.
                let seq = shared.upgrade().map_or(0, |s| s.last_published());
                // A full queue drops the link at the next broadcast; the barrier then ends unanswered.
                let _ = frames.try_send(Arc::new(link::encode(&Down::Synced { id, seq })));
                continue;
            }
            Up::Hello { .. } => break Err(std::io::Error::other("a second hello")),
        };
        let (tx, frames, counts) = (tx.clone(), frames.clone(), Arc::clone(&counts));
        tokio::spawn(async move {
            let connect = match (&origin, &command) {
                (Origin::Client(c), Command::Connect) => Some((*c, true)),
                (Origin::Client(c), Command::Disconnect) => Some((*c, false)),
                _ => None,
            };
            let result = submit(&tx, origin, command, Some(nonce), rate).await;
            if let (Some((client, up)), Ok(_)) = (connect, &result) {
                let mut counts = lock(&counts);
                let n = counts.entry(client).or_insert(0);
                *n = if up { *n + 1 } else { n.saturating_sub(1) };
            }
            let result = match result {
                Ok(r) => Ok(WireReply {
                    seq: r.seq,
                    reply: encode_reply(&r),
                }),
                Err(EngineError::Refused(e)) => Err(WireError::Refused(e)),
                Err(EngineError::RateLimited { retry_after, limit }) => {
                    Err(WireError::RateLimited {
                        retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                        limit,
                    })
                }
                Err(e) => Err(WireError::Retry(e.to_string())),
            };
            let _ = frames
                .send(Arc::new(link::encode(&Down::Reply { id, result })))
                .await;
        });
    };
    writer.abort();
    // The follower is gone (or stepped away): its clients' connections end with it.
    let counts: Vec<(ClientId, u32)> = lock(&counts).drain().collect();
    for (client, n) in counts {
        for _ in 0..n {
            let _ = submit(
                &tx,
                Origin::Client(client),
                Command::Disconnect,
                None,
                false,
            )
            .await;
        }
    }
    tracing::info!(peer, "a follower's link closed");
    result
}

/// Every user who is not offline, read in the writer's order.
async fn presences(
    tx: &mpsc::WeakSender<Job>,
) -> Option<Vec<(UserId, chat_core::Status, Vec<chat_core::Activity>)>> {
    let tx = tx.upgrade()?;
    let (reply, rx) = oneshot::channel();
    let query: crate::writer::Query = Box::new(move |core: &chat_core::Core| {
        let users = core
            .users()
            .filter_map(|u| {
                let status = core.presence(u.id);
                (status != chat_core::Status::Offline).then(|| (u.id, status, u.activities.clone()))
            })
            .collect();
        let _ = reply.send(users);
    });
    tx.send(Job::Query(query)).await.ok()?;
    rx.await.ok()
}

/// Hands a command to this node's writer loop, as a forwarded one (refused unless this node writes).
async fn submit(
    tx: &mpsc::WeakSender<Job>,
    origin: Origin,
    command: Command,
    nonce: Option<(UserId, String)>,
    rate: bool,
) -> Result<CommandReply, EngineError> {
    let Some(tx) = tx.upgrade() else {
        return Err(EngineError::ShuttingDown);
    };
    let (reply, rx) = oneshot::channel();
    tx.send(Job::Command {
        origin,
        command: Box::new(command),
        nonce,
        reply,
        upload: None,
        rate,
        forwarded: true,
    })
    .await
    .map_err(|_| EngineError::ShuttingDown)?;
    rx.await.map_err(|_| EngineError::ShuttingDown)?
}

/// A follower's link to the writer, as the follower's loop sees it.
pub(crate) struct Uplink {
    /// Which connection attempt this is (frames of older ones are ignored).
    pub(crate) generation: u64,
    pub(crate) term: u64,
    pub(crate) frames: mpsc::Sender<Arc<Vec<u8>>>,
}

/// What the follower's link tasks tell the follower's loop.
pub(crate) enum LinkEvent {
    /// Linked to the writer of `term`, whose log ended at `last` when it welcomed us.
    Up {
        generation: u64,
        term: u64,
        last: Seq,
        frames: mpsc::Sender<Arc<Vec<u8>>>,
    },
    /// A frame from the writer.
    Frame { generation: u64, frame: Down },
    /// The link failed or closed.
    Closed { generation: u64 },
}

/// Connects to the writer at `addr` under `term` and runs the link until it closes, reporting to `events`.
pub(crate) fn spawn_uplink(
    node: Arc<Node>,
    addr: String,
    term: u64,
    generation: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    tokio::spawn(async move {
        let linked = async {
            let stream = tokio::time::timeout(link::HELLO_TIMEOUT, TcpStream::connect(&addr))
                .await
                .map_err(|_| std::io::Error::other("connect timed out"))??;
            let _ = stream.set_nodelay(true);
            let (mut r, mut w) = stream.into_split();
            let hello = Up::Hello {
                node: node.id,
                term,
                proof: link::proof(&node.secret, term),
                connections: node.connections(),
            };
            w.write_all(&link::encode(&hello)).await?;
            let mut buf = Vec::new();
            let welcome =
                tokio::time::timeout(link::HELLO_TIMEOUT, link::read::<Down, _>(&mut r, &mut buf))
                    .await
                    .map_err(|_| std::io::Error::other("no welcome"))??;
            match welcome {
                Some(Down::Welcome { term: t, last }) if t == term => Ok((r, w, last, buf)),
                _ => Err(std::io::Error::other("not welcomed")),
            }
        };
        let (mut r, mut w, last, mut buf) = match linked.await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, %addr, "cannot link to the writer");
                let _ = events.send(LinkEvent::Closed { generation });
                return;
            }
        };
        let (frames, mut queue) = mpsc::channel::<Arc<Vec<u8>>>(LINK_QUEUE);
        if events
            .send(LinkEvent::Up {
                generation,
                term,
                last,
                frames,
            })
            .is_err()
        {
            return;
        }
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while queue.recv_many(&mut batch, 64).await > 0 {
                if link::write_all(&mut w, &batch).await.is_err() {
                    break;
                }
                batch.clear();
            }
        });
        while let Ok(Some(frame)) = link::read::<Down, _>(&mut r, &mut buf).await {
            if events.send(LinkEvent::Frame { generation, frame }).is_err() {
                break;
            }
        }
        writer.abort();
        let _ = events.send(LinkEvent::Closed { generation });
    });
}

/// Turns a writer's answer into the engine's.
pub(crate) fn from_wire(result: Result<WireReply, WireError>) -> Result<CommandReply, EngineError> {
    match result {
        Ok(r) => Ok(decode_reply(&r.reply).unwrap_or(CommandReply {
            seq: r.seq,
            created: None,
        })),
        Err(WireError::Refused(e)) => Err(EngineError::Refused(e)),
        Err(WireError::RateLimited {
            retry_after_ms,
            limit,
        }) => Err(EngineError::RateLimited {
            retry_after: Duration::from_millis(retry_after_ms),
            limit,
        }),
        Err(WireError::Retry(reason)) => Err(EngineError::Unavailable {
            reason: reason.into(),
        }),
    }
}

/// Rings the node's doorbell whenever the store says a commit landed, from a thread of its own (the store's
/// wait blocks). Ends with the node.
pub(crate) fn spawn_doorbell(node: &Arc<Node>) {
    let weak = Arc::downgrade(node);
    std::thread::Builder::new()
        .name("chatd-doorbell".into())
        .spawn(move || {
            let mut known = 0;
            loop {
                let Some(node) = weak.upgrade() else { break };
                match node.store.wait_commit(known, Duration::from_secs(1)) {
                    Ok(seq) => {
                        if seq > known {
                            known = seq;
                            node.doorbell.send_replace(seq);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the commit doorbell failed; polling");
                        drop(node);
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        })
        .ok();
}

/// Renews the lease of `term` every quarter of its length while this node writes under it; tells the
/// writer loop when the lease is gone.
pub(crate) fn spawn_renewal(node: &Arc<Node>, term: u64) {
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        loop {
            let Some(node) = weak.upgrade() else { break };
            if !node.writes_under(term) {
                break;
            }
            let every = node.ttl / 4;
            let store = Arc::clone(&node.store);
            let ttl = node.ttl;
            let renewed = tokio::task::spawn_blocking(move || store.renew_lease(term, ttl)).await;
            match renewed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::warn!(term, "the writer lease passed to another node");
                    node.lost.send_replace(term);
                    break;
                }
                // Cut off from the database: appends fail too, and fencing refuses them if another node
                // took over meanwhile. Keep trying.
                Ok(Err(e)) => tracing::warn!(error = %e, term, "cannot renew the writer lease"),
                Err(e) => tracing::warn!(error = %e, "the lease renewal task failed"),
            }
            drop(node);
            tokio::time::sleep(every).await;
        }
    });
}

/// Reports this node (role, applied seq) every second, for `nodes` and `/metrics`.
pub(crate) fn spawn_reports(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(node) = weak.upgrade().and_then(|s| s.node.clone()) else {
            return;
        };
        let node_weak = Arc::downgrade(&node);
        drop(node);
        loop {
            let Some(node) = node_weak.upgrade() else {
                break;
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = node.report_now.notified() => {}
            }
            drop(node);
            let Some(shared) = weak.upgrade() else { break };
            let Some(node) = shared.node.clone() else {
                break;
            };
            let applied = shared.last_published();
            metrics::gauge!("chatd_cluster_applied_seq").set(applied as f64);
            drop(shared);
            let store = Arc::clone(&node.store);
            let (id, addr, role) = (node.id, node.addr.clone(), node.role());
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = store.report_node(id, &addr, role, applied) {
                    tracing::debug!(error = %e, "cannot report this node");
                }
            })
            .await;
        }
    });
}

/// The name of the file in DATA_DIR that marks it as the cluster's shared directory.
pub(crate) const DATA_DIR_MARK: &str = "cluster-mark";

/// Checks that `data_dir` is the directory every node of the cluster shares: the first node to start marks
/// it (in the directory and in the database); every later node must find the same mark. Uploads made
/// through one node are served by every other only if they all write to one directory.
pub(crate) fn check_data_dir(
    store: &dyn Cluster,
    data_dir: &std::path::Path,
) -> Result<(), EngineError> {
    std::fs::create_dir_all(data_dir).map_err(EngineError::Files)?;
    let path = data_dir.join(DATA_DIR_MARK);
    let read_mark = |path: &std::path::Path| -> Result<Option<u64>, EngineError> {
        match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|_| {
                EngineError::Files(std::io::Error::other(format!(
                    "{} is not a cluster mark",
                    path.display()
                )))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EngineError::Files(e)),
        }
    };
    let found = read_mark(&path)?;
    // Whether this call made the file (and may remove it again if the database holds another mark).
    let mut made = false;
    let proposed = match found {
        Some(mark) => mark,
        None => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| EngineError::Hashing(e.to_string()))?;
            // Never 0, so that a mark always reads as one.
            let mine = u64::from_le_bytes(bytes) | 1;
            // Written before the database learns it, so that the database never holds a mark no directory
            // has. Nodes sharing the directory may start at the same instant: the mark is written whole to
            // a file of this process's own and then linked into place, which fails if another node's mark
            // got there first. So a mark is never read half-written, and every racing node proposes the
            // mark that won the directory.
            let own = data_dir.join(format!("{DATA_DIR_MARK}.{mine:x}"));
            std::fs::write(&own, mine.to_string()).map_err(EngineError::Files)?;
            let linked = std::fs::hard_link(&own, &path);
            let _ = std::fs::remove_file(&own);
            match linked {
                Ok(()) => {
                    made = true;
                    mine
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_mark(&path)?
                    .ok_or_else(|| {
                        EngineError::Files(std::io::Error::other(format!(
                            "{} came and went while this node started",
                            path.display()
                        )))
                    })?,
                Err(e) => return Err(EngineError::Files(e)),
            }
        }
    };
    let mark = store.data_dir_mark(proposed)?;
    if mark != proposed {
        if made {
            let _ = std::fs::remove_file(&path);
        }
        return Err(EngineError::Files(std::io::Error::other(format!(
            "DATA_DIR {} is not the directory the cluster's other nodes share (it lacks their mark, \
             {DATA_DIR_MARK} = {mark}): every node must use the same DATA_DIR, so that files uploaded \
             through one node are served by the others",
            data_dir.display()
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes sharing one DATA_DIR start at the same instant: every one of them finds the one mark, and the
    /// directory keeps it (a mark written in place could be read half-written, and a node that lost the
    /// race removed the winner's file).
    #[test]
    fn nodes_starting_at_once_agree_on_the_data_dir_mark() {
        for _ in 0..20 {
            let store = Arc::new(chat_store::MemoryStore::new());
            let dir = tempfile::tempdir().expect("tempdir");
            let start = Arc::new(std::sync::Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let (store, path, start) = (
                        Arc::clone(&store),
                        dir.path().to_owned(),
                        Arc::clone(&start),
                    );
                    std::thread::spawn(move || {
                        start.wait();
                        check_data_dir(&*store, &path)
                    })
                })
                .collect();
            for t in threads {
                t.join()
                    .expect("thread")
                    .expect("every node accepts the directory");
            }
            let file: u64 = std::fs::read_to_string(dir.path().join(DATA_DIR_MARK))
                .expect("the mark stays")
                .trim()
                .parse()
                .expect("a whole mark");
            assert_eq!(store.data_dir_mark(1).expect("mark"), file);
            // Only the mark is left behind.
            assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
            // Another directory is refused.
            let other = tempfile::tempdir().expect("tempdir");
            assert!(check_data_dir(&*store, other.path()).is_err());
            assert!(!other.path().join(DATA_DIR_MARK).exists());
        }
    }
}
