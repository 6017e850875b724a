//! Relaying: each link's outbox (a cursor into the local log, kept in the store) and the relay route.
//!
//! The core records every op linked servers share as a `Relayed` marker in the log, made here or taken from
//! a peer. A link's outbox reads the log after its cursor, sends the markers' ops in order in signed batches
//! (`POST /api/v1/federation/relay`), and moves the cursor once the peer has answered: what a peer has not
//! acknowledged is sent again, after a restart of either side too. It leaves out ops of the peer itself, ops
//! that came from it, and ops of servers it is linked to directly (those speak for themselves). Memory is
//! bounded by one batch per link.
//!
//! The relay route checks a batch whole before anything of it is applied: every op's user must live on the
//! op's origin; the origin must be the sender, or a server the sender said is behind it, never this server;
//! ops of a server linked here directly are skipped (they come from it). The core then takes each op once
//! per origin ([`chat_core::Command::Relay`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat_core::{Command, Created, EventKind, RemoteOp};

use crate::routes::{Batch, Federation, RETRY_FIRST, Taken, lock, now_ms, refuse};

/// The most ops in one batch.
pub const BATCH_OPS: usize = 1000;
/// The most bytes of ops in one batch: well under the relay route's body cap.
const BATCH_BYTES: usize = 512 * 1024;
/// Events read from the log at a time.
const READ_EVENTS: usize = 2000;
/// The longest wait between two tries of a batch that failed (a handshake that succeeds ends it sooner).
const RETRY_MOST: Duration = Duration::from_secs(5);
/// How often a link's cursor is saved while it moves.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often an idle outbox looks at the log even without a commit (a link added, a writer change).
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// One link's outbox: runs until the link is removed (or the task aborted).
pub(crate) async fn run(f: Arc<Federation>, name: String) {
    let mut committed = f.engine.committed();
    let mut backoff = RETRY_FIRST;
    let mut cursor: Option<u64> = None;
    let mut gap_noted = false;
    let mut saved_at = std::time::Instant::now();
    let mut last_post = std::time::Instant::now();
    // The link as last read (its URL and key may change while it runs), and the cursor last saved.
    let mut known: Option<(chat_log::ServerLink, std::time::Instant)> = None;
    let mut saved = 0;
    loop {
        if !f.engine.is_writer() {
            // In a cluster, the writer's outbox sends; a follower's waits its turn and reads the cursor again.
            cursor = None;
            known = None;
            tokio::time::sleep(IDLE_LOOK).await;
            continue;
        }
        if known
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= IDLE_LOOK)
        {
            match f.link_of(&name).await {
                Ok(Some(l)) => known = Some((l, std::time::Instant::now())),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(peer = %name, error = %e, "cannot read the link");
                    tokio::time::sleep(IDLE_LOOK).await;
                    continue;
                }
            }
        }
        let Some((link, _)) = known.clone() else {
            continue;
        };
        let at = *cursor.get_or_insert_with(|| {
            saved = link.cursor;
            link.cursor
        });
        if f.engine.last_seq() <= at {
            if at > saved && saved_at.elapsed() >= SAVE_EVERY {
                if !save(&f, &name, at).await {
                    return;
                }
                saved = at;
                saved_at = std::time::Instant::now();
            }
            let _ = tokio::time::timeout(SAVE_EVERY, committed.changed()).await;
            continue;
        }
        // Kept under the rate the peer takes: what comes meanwhile joins this batch.
        tokio::time::sleep_until((last_post + f.gap_for(&name)).into()).await;
        let events = match f.engine.log_after(at, READ_EVENTS).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(peer = %name, error = %e, "cannot read the log for a link");
                tokio::time::sleep(IDLE_LOOK).await;
                continue;
            }
        };
        let Some(first) = events.first() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if first.seq > at + 1 && !gap_noted {
            gap_noted = true;
            let why = format!(
                "the log no longer holds seqs {}..{} (older than QUEUE_MAX_AGE): ops in them were not sent",
                at + 1,
                first.seq - 1
            );
            tracing::warn!(peer = %name, "{why}");
            note_error(&f, &name, why);
        }
        let direct = f.links_of(&name);
        // The batch's JSON, `{"ops":[...]}`, written as the ops are taken: each op is encoded once.
        let mut body = Vec::with_capacity(64 * 1024);
        body.extend_from_slice(b"{\"ops\":[");
        let mut ops = 0;
        let mut last = at;
        for e in &events {
            if let EventKind::Relayed { op, from, .. } = &e.kind
                && *from != name
                && op.origin != name
                && (op.origin == f.settings.name || !direct.contains(&op.origin))
            {
                if ops > 0 && (ops >= BATCH_OPS || body.len() > BATCH_BYTES) {
                    break;
                }
                if ops > 0 {
                    body.push(b',');
                }
                if let Err(e) = serde_json::to_writer(&mut body, op) {
                    // Plain data always encodes; were it not to, the op is left out rather than the link stuck.
                    tracing::error!(peer = %name, error = %e, "cannot encode an op");
                }
                ops += 1;
            }
            last = e.seq;
        }
        body.extend_from_slice(b"]}");
        if ops > 0 {
            let sent = ops;
            last_post = std::time::Instant::now();
            let started = std::time::Instant::now();
            let bytes = body.len();
            match f.post(&link, "/api/v1/federation/relay", body).await {
                Ok(_) => {
                    tracing::debug!(peer = %name, ops = sent, bytes, read = events.len(), ms = started.elapsed().as_secs_f64() * 1000.0, "batch sent");
                    backoff = RETRY_FIRST;
                    let mut contacts = lock(&f.contacts);
                    let c = contacts.entry(name.clone()).or_default();
                    c.last_outbound = Some(now_ms());
                    c.ops_out += sent as u64;
                }
                Err(why) => {
                    note_error(&f, &name, why);
                    // Until the wait is over, or a handshake finds the link back up.
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = f.back_up.notified() => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MOST);
                    continue;
                }
            }
        }
        cursor = Some(last);
        lock(&f.contacts).entry(name.clone()).or_default().cursor = Some(last);
        // Saved at most every SAVE_EVERY: a write to the store per batch would contend with the engine's
        // own commits. After a restart the peer is sent up to that much again, and takes it once.
        if saved_at.elapsed() >= SAVE_EVERY {
            if !save(&f, &name, last).await {
                return;
            }
            saved = last;
            saved_at = std::time::Instant::now();
        }
    }
}

/// Saves a link's cursor; `false` when the link is gone.
async fn save(f: &Federation, name: &str, cursor: u64) -> bool {
    let store = Arc::clone(&f.store);
    let saved = name.to_owned();
    match tokio::task::spawn_blocking(move || store.save_link_cursor(&saved, cursor)).await {
        Ok(Ok(exists)) => exists,
        Ok(Err(e)) => {
            tracing::warn!(peer = %name, error = %e, "cannot save a link's cursor");
            true
        }
        Err(e) => {
            tracing::warn!(peer = %name, error = %e, "cannot save a link's cursor");
            true
        }
    }
}

fn note_error(f: &Federation, name: &str, why: String) {
    let mut contacts = lock(&f.contacts);
    let c = contacts.entry(name.to_owned()).or_default();
    if c.last_error.as_ref().is_none_or(|(_, w)| *w != why) {
        tracing::info!(peer = %name, reason = %why, "a batch to a linked server failed");
    }
    c.last_error = Some((now_ms(), why));
}

impl Federation {
    /// The servers a peer said it is linked to directly.
    fn links_of(&self, peer: &str) -> Vec<String> {
        lock(&self.told)
            .get(peer)
            .map(|h| h.links.clone())
            .unwrap_or_default()
    }

    /// The least time between two batches to a peer: a little over the inverse of the rate it said it takes.
    fn gap_for(&self, peer: &str) -> Duration {
        let rate = lock(&self.told)
            .get(peer)
            .and_then(|h| h.requests_per_second)
            .filter(|r| *r > 0.0)
            .unwrap_or(100.0);
        Duration::from_secs_f64((1.05 / rate).min(1.0))
    }

    /// The servers a peer said are behind it.
    fn behind(&self, peer: &str) -> Vec<String> {
        lock(&self.told)
            .get(peer)
            .map(|h| h.behind.clone())
            .unwrap_or_default()
    }
}

/// `POST /api/v1/federation/relay`: a peer's batch of ops.
pub(crate) async fn relay(State(f): State<Arc<Federation>>, request: Request) -> Response {
    let v = match f.verify(request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let bad = |why: &str| refuse(StatusCode::BAD_REQUEST, "bad_request", why);
    let forbidden = |why: &str| refuse(StatusCode::FORBIDDEN, "forbidden", why);
    let batch: Batch = match serde_json::from_slice(&v.body) {
        Ok(b) => b,
        Err(e) => return bad(&format!("the batch is not {{ops: [...]}}: {e}")),
    };
    if batch.ops.len() > BATCH_OPS {
        return bad(&format!("over {BATCH_OPS} ops in one batch"));
    }
    let me = &f.settings.name;
    let linked = f.linked();
    let behind = f.behind(&v.from);
    let mut commands = Vec::with_capacity(batch.ops.len());
    let mut ids = Vec::with_capacity(batch.ops.len());
    let mut taken = Taken::default();
    for op in batch.ops {
        if let Err(why) = check_op(&op, me, &v.from, &behind) {
            return forbidden(&why);
        }
        if op.origin != v.from && linked.contains(&op.origin) {
            taken.skipped += 1;
            continue;
        }
        ids.push((op.origin.clone(), op.id));
        commands.push(Command::Relay {
            op: Box::new(op),
            from: v.from.clone(),
        });
    }
    f.contacted(&v.from, commands.len());
    for (result, (origin, id)) in f.engine.system_batch(commands).await.into_iter().zip(ids) {
        match result {
            Ok(reply) => match reply.created {
                Some(Created::Relayed {
                    new: true, refused, ..
                }) => {
                    taken.new += 1;
                    if let Some(e) = refused {
                        taken.refused.push((origin, id, e.to_string()));
                    }
                }
                _ => taken.seen += 1,
            },
            // Checked above, so this is the engine's trouble (stopping, a full disk) or an op the core finds
            // malformed: the ops before it are taken, the sender resends the rest.
            Err(e) => {
                let status = if matches!(e, chat_engine::EngineError::Refused(_)) {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return refuse(
                    status,
                    "not_taken",
                    &format!("op {id} of {origin} was not taken: {e}"),
                );
            }
        }
    }
    axum::Json(taken).into_response()
}

/// Whether the sender may speak for an op: its user lives on its origin, the origin is the sender or behind
/// it, and never this server.
fn check_op(op: &RemoteOp, me: &str, from: &str, behind: &[String]) -> Result<(), String> {
    if op.origin == me || op.user.server == me {
        return Err(format!(
            "{from} speaks for a user of this server ({}): a server speaks only for its own users",
            op.user.nick
        ));
    }
    if op.user.server != op.origin {
        return Err(format!(
            "op {} of {} names a user of {}: an op's user lives on its origin",
            op.id, op.origin, op.user.server
        ));
    }
    if op.origin != from && !behind.contains(&op.origin) {
        return Err(format!(
            "{from} speaks for {}, which it did not say is behind it",
            op.origin
        ));
    }
    chat_core::check_server_name(&op.origin).map_err(|e| e.to_string())?;
    chat_core::validate_nick(&op.user.nick).map_err(|e| format!("op {}: {e}", op.id))?;
    Ok(())
}
