//! The writer task of a cluster node: following the log, taking the lease, writing, and stepping down.

use std::collections::HashMap;
use std::sync::Arc;

use chat_core::{Command, Core, Event, Origin, Seq, State, UserId};
use chat_log::Store;
use tokio::sync::{mpsc, oneshot};

use super::link::{self, Down, Up};
use super::{LinkEvent, Node, Uplink, from_wire, spawn_renewal, spawn_uplink};
use crate::engine::{CommandReply, now_ms};
use crate::error::EngineError;
use crate::files::Upload;
use crate::writer::{Job, Step, Writer};

/// Log events read per catch-up call.
const CATCH_UP: usize = 4096;

/// How long a follower with a link to the writer lets a doorbell ring go unanswered before it reads the store.
/// The store rings at commit, about when the writer's push of the same batch leaves; reading the store at
/// every ring made each follower read every batch twice, and held its deliveries behind a database round
/// trip the push had made needless. The ring is a fallback for a push that was lost.
const BELL_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

type Answer = oneshot::Sender<Result<CommandReply, EngineError>>;

/// A command sent to the writer, waiting for its reply.
struct Forwarded {
    reply: Answer,
    upload: Option<Upload>,
}

/// A reply that arrived before this node applied the events it names: held until it has, so that a client
/// that reads this node right after its command sees the command's effects.
struct Held {
    seq: Seq,
    reply: Answer,
    result: Result<CommandReply, EngineError>,
    upload: Option<Upload>,
}

fn unavailable(reason: &str) -> EngineError {
    EngineError::Unavailable {
        reason: reason.into(),
    }
}

fn settle(upload: Option<Upload>, kept: bool) {
    if let Some(u) = upload {
        if kept {
            u.keep();
        } else {
            u.discard_later();
        }
    }
}

impl Writer {
    /// The cluster node's writer task: follows until it takes the lease, writes until it loses it, and again.
    pub(crate) async fn run_cluster(
        mut self,
        node: Arc<Node>,
        initial_term: Option<u64>,
    ) -> Result<(), EngineError> {
        let mut term = initial_term;
        loop {
            let lead = match term.take() {
                Some(t) => t,
                None => match self.follow(&node).await? {
                    Some(t) => t,
                    None => return Ok(()),
                },
            };
            let step = match self.take_over(&node, lead).await {
                Ok(()) => self.lead_loop().await?,
                // The store failed under the takeover (its server went away): this node cannot know
                // that its core is the log's, so it steps down as after a failed commit.
                Err(e) => {
                    tracing::warn!(error = %e, term = lead, "the takeover failed; stepping down");
                    Step::Demoted
                }
            };
            node.set_follower();
            match step {
                Step::Stopped => {
                    // A clean stop hands the lease on at once instead of letting it lapse.
                    let store = Arc::clone(&node.store);
                    let _ = tokio::task::spawn_blocking(move || store.resign(lead)).await;
                    return Ok(());
                }
                Step::Demoted => {
                    tracing::warn!(term = lead, node = node.id, "stepped down as writer");
                    metrics::counter!("chatd_cluster_stepdowns_total").increment(1);
                    // The store may be away for a while (a PostgreSQL failover): the node waits for it
                    // rather than dying; a state that cannot be rebuilt at all still ends it.
                    let mut wait = std::time::Duration::from_millis(100);
                    loop {
                        match self.resync().await {
                            Ok(()) => break,
                            Err(
                                e @ (EngineError::Stopped { .. }
                                | EngineError::Replay(_)
                                | EngineError::Snapshot { .. }),
                            ) => return Err(e),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot rebuild the state from the log yet");
                                tokio::time::sleep(wait).await;
                                wait = (wait * 2).min(std::time::Duration::from_secs(1));
                            }
                        }
                    }
                    for q in std::mem::take(&mut self.stashed) {
                        q(&self.core);
                    }
                }
            }
        }
    }

    /// Becomes the writer of `term`: reads the log to its end (no other node can append any more), loads
    /// the nonces the writers before kept, starts every client's idle window afresh, and counts this node's
    /// own connections.
    async fn take_over(&mut self, node: &Arc<Node>, term: u64) -> Result<(), EngineError> {
        self.catch_up_all().await?;
        let store = Arc::clone(&self.shared.store);
        let since = now_ms().saturating_sub(
            u64::try_from(self.shared.config.nonce_ttl.as_millis()).unwrap_or(u64::MAX),
        );
        let nonces = tokio::task::spawn_blocking(move || store.nonces_since(since))
            .await
            .map_err(|e| unavailable(&e.to_string()))??;
        self.shared.load_nonces(nonces);
        // The log is read to its end under the new term: anything after it is ours to write.
        self.catch_up_all().await?;
        let now = self.clock();
        self.core.resume(now);
        // Presence is this node's to derive now, from the connections every node reports to it.
        self.core.forget_observed();
        self.term = Some(term);
        node.set_writer(term);
        spawn_renewal(node, term);
        tracing::info!(term, node = node.id, seq = self.core.last_seq(), "writing");
        metrics::counter!("chatd_cluster_takeovers_total").increment(1);
        let mut jobs = Vec::new();
        for (client, n) in node.connections() {
            for _ in 0..n {
                let (reply, _) = oneshot::channel();
                jobs.push(Job::Command {
                    origin: Origin::Client(client),
                    command: Box::new(Command::Connect),
                    nonce: None,
                    reply,
                    upload: None,
                    rate: false,
                    forwarded: false,
                });
            }
        }
        if !jobs.is_empty() {
            self.batch(jobs).await?;
        }
        Ok(())
    }

    /// Follows the writer: forwards commands, applies what it commits, and watches the lease. Returns the
    /// term this node took the lease under, or `None` when the engine stops.
    async fn follow(&mut self, node: &Arc<Node>) -> Result<Option<u64>, EngineError> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<LinkEvent>();
        let mut uplink: Option<Uplink> = None;
        let mut generation = 0u64;
        let mut connecting: Option<u64> = None;
        let mut forwarded: HashMap<u64, Forwarded> = HashMap::new();
        let mut held: Vec<Held> = Vec::new();
        let mut next_id = 0u64;
        let mut doorbell = node.doorbell.subscribe();
        // A ring not answered yet by a push: the seq it named, and when the store is read for it.
        let mut bell: Option<(Seq, tokio::time::Instant)> = None;
        let mut tick = tokio::time::interval(node.ttl / 4);
        let mut last_flush = tokio::time::Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.term = None;
        loop {
            tokio::select! {
                job = self.rx.recv() => {
                    let Some(job) = job else {
                        fail_all(&mut forwarded, &mut held, "the engine stopped");
                        self.finish_following().await;
                        return Ok(None);
                    };
                    match job {
                        Job::Shutdown(done) => {
                            fail_all(&mut forwarded, &mut held, "the engine stopped");
                            self.finish_following().await;
                            let _ = done.send(Ok(()));
                            return Ok(None);
                        }
                        Job::Query(q) => q(&self.core),
                        Job::Command { reply, upload, forwarded: true, .. } => {
                            settle(upload, false);
                            let _ = reply.send(Err(unavailable("this node does not write any more")));
                        }
                        Job::Command { origin, command, nonce, reply, upload, rate, .. } => {
                            let Some(link) = &uplink else {
                                settle(upload, false);
                                let _ = reply.send(Err(unavailable("no writer is reachable yet")));
                                continue;
                            };
                            next_id += 1;
                            let nonce = nonce.unwrap_or_else(|| (super::ANONYMOUS_NONCE_USER, node.make_nonce()));
                            let frame = link::encode(&Up::Command { id: next_id, origin, command: *command, nonce, rate });
                            if link.frames.try_send(Arc::new(frame)).is_err() {
                                settle(upload, false);
                                let _ = reply.send(Err(unavailable("the link to the writer is full")));
                                continue;
                            }
                            forwarded.insert(next_id, Forwarded { reply, upload });
                        }
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else { continue };
                    match event {
                        LinkEvent::Up { generation: g, term, last, frames } if Some(g) == connecting => {
                            connecting = None;
                            node.set_uplink(Some(frames.clone()));
                            uplink = Some(Uplink { generation: g, term, frames });
                            node.term.store(term, std::sync::atomic::Ordering::SeqCst);
                            if last > self.core.last_seq() {
                                self.catch_up().await?;
                            }
                            release(&mut held, self.core.last_seq());
                        }
                        LinkEvent::Up { .. } => {}
                        LinkEvent::Closed { generation: g } => {
                            if connecting == Some(g) {
                                connecting = None;
                            }
                            if uplink.as_ref().is_some_and(|l| l.generation == g) {
                                uplink = None;
                                node.set_uplink(None);
                                fail_pending(&mut forwarded, "the link to the writer closed");
                            }
                        }
                        LinkEvent::Frame { generation: g, frame } => {
                            if uplink.as_ref().is_none_or(|l| l.generation != g) {
                                continue;
                            }
                            match frame {
                                Down::Committed { events, ends } => {
                                    self.apply_pushed(events, &ends).await?;
                                    release(&mut held, self.core.last_seq());
                                }
                                Down::Live { events } => self.publish_live(events),
                                Down::Reply { id, result } => {
                                    let Some(f) = forwarded.remove(&id) else { continue };
                                    let result = from_wire(result);
                                    match &result {
                                        Ok(r) if r.seq > self.core.last_seq() => {
                                            held.push(Held { seq: r.seq, reply: f.reply, result, upload: f.upload });
                                        }
                                        _ => {
                                            settle(f.upload, result.is_ok());
                                            let _ = f.reply.send(result);
                                        }
                                    }
                                }
                                Down::Presences { users } => {
                                    self.core.forget_observed();
                                    for (user, status, activities) in users {
                                        self.core.observe_presence(user, status, activities);
                                    }
                                }
                                Down::Synced { id, seq } => node.synced(id, seq),
                                Down::Welcome { .. } => {}
                            }
                        }
                    }
                }
                changed = doorbell.changed() => {
                    let rung = *doorbell.borrow_and_update();
                    if changed.is_err() || rung <= self.core.last_seq() {
                        continue;
                    }
                    if uplink.is_some() {
                        // The writer's push is likely on its way: wait for it a little. A ring while one waits
                        // is looked at when that one is done.
                        if bell.is_none() {
                            bell = Some((rung, tokio::time::Instant::now() + BELL_GRACE));
                        }
                    } else {
                        self.catch_up().await?;
                        release(&mut held, self.core.last_seq());
                    }
                }
                () = tokio::time::sleep_until(bell.map_or_else(tokio::time::Instant::now, |(_, due)| due)),
                    if bell.is_some() =>
                {
                    let rung = bell.take().map_or(0, |(seq, _)| seq);
                    if rung > self.core.last_seq() {
                        self.catch_up().await?;
                        release(&mut held, self.core.last_seq());
                    }
                    let latest = *doorbell.borrow();
                    if latest > self.core.last_seq() {
                        bell = Some((latest, tokio::time::Instant::now() + BELL_GRACE));
                    }
                }
                _ = tick.tick() => {
                    // This node's clients' cursors are this node's to save.
                    if last_flush.elapsed() >= self.shared.config.cursor_flush_interval {
                        last_flush = tokio::time::Instant::now();
                        self.flush_cursors().await?;
                    }
                    self.catch_up().await?;
                    release(&mut held, self.core.last_seq());
                    let store = Arc::clone(&node.store);
                    let lease = tokio::task::spawn_blocking(move || store.lease()).await;
                    let lease = match lease {
                        Ok(Ok(l)) => l,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "cannot read the writer lease");
                            continue;
                        }
                        Err(_) => continue,
                    };
                    match lease {
                        Some(l) if l.live && l.node != node.id => {
                            let stale = uplink.as_ref().is_some_and(|u| u.term != l.term);
                            if stale {
                                uplink = None;
                                node.set_uplink(None);
                                fail_pending(&mut forwarded, "the writer changed");
                            }
                            if uplink.is_none() && connecting.is_none() {
                                generation += 1;
                                connecting = Some(generation);
                                spawn_uplink(Arc::clone(node), l.addr.clone(), l.term, generation, events_tx.clone());
                            }
                        }
                        // This node's id holds a live lease: an earlier process of this node that may still
                        // run (paused). Taking over now could share its term; wait for the lease to lapse.
                        Some(l) if l.live => {}
                        _ => {
                            let store = Arc::clone(&node.store);
                            let (id, addr, ttl) = (node.id, node.addr.clone(), node.ttl);
                            let taken = tokio::task::spawn_blocking(move || store.try_lead(id, &addr, ttl)).await;
                            if let Ok(Ok(Some(term))) = taken {
                                drop(uplink.take());
                                node.set_uplink(None);
                                fail_pending(&mut forwarded, "this node takes over as writer");
                                // Replies held for seqs this node has not applied yet are released by the
                                // catch-up of the takeover; answer them after it.
                                self.catch_up_all().await?;
                                release(&mut held, Seq::MAX);
                                return Ok(Some(term));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Applies a batch the writer pushed, if it continues this node's log; reads the store otherwise.
    async fn apply_pushed(&mut self, events: Vec<Event>, ends: &[Seq]) -> Result<(), EngineError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let last = self.core.last_seq();
        if first.seq > last + 1 {
            return self.catch_up().await;
        }
        // Both in seq order: walk the ends alongside the events.
        let mut next_end = ends.iter().copied().peekable();
        let with_ends: Vec<(Event, Seq)> = events
            .into_iter()
            .map(|e| {
                while next_end.next_if(|&end| end < e.seq).is_some() {}
                let end = next_end.peek().copied().unwrap_or(0);
                (e, end)
            })
            .filter(|(e, _)| e.seq > last)
            .collect();
        // Events after the batch's last end form one command of their own (see `Batch::command_ends`).
        let tail_end = with_ends.last().map_or(0, |(e, _)| e.seq);
        let with_ends = with_ends
            .into_iter()
            .map(|(e, end)| (e, if end == 0 { tail_end } else { end }))
            .collect();
        self.apply_logged(with_ends);
        Ok(())
    }

    /// Reads the log after this node's last seq and applies it, once.
    async fn catch_up(&mut self) -> Result<(), EngineError> {
        self.catch_up_step().await.map(|_| ())
    }

    /// Reads the log to its end.
    async fn catch_up_all(&mut self) -> Result<(), EngineError> {
        while self.catch_up_step().await? {}
        Ok(())
    }

    /// One read of the log: whether it was a full page (more may follow).
    async fn catch_up_step(&mut self) -> Result<bool, EngineError> {
        let Some(node) = self.node.clone() else {
            return Ok(false);
        };
        let after = self.core.last_seq();
        let store = Arc::clone(&node.store);
        let read = tokio::task::spawn_blocking(move || store.log_after(after, CATCH_UP)).await;
        let events = match read {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the log; trying again");
                return Ok(false);
            }
            Err(e) => return Err(unavailable(&e.to_string())),
        };
        let full = events.len() >= CATCH_UP;
        let applied = self.apply_logged(events);
        Ok(full && applied > 0)
    }

    /// Applies logged events command by command, resolves each event's recipients at its command's end (as
    /// the writer did) and publishes them. A command whose events are not all in `events` waits for the next
    /// read, unless it is all there is (a command larger than a page). Returns how many were applied.
    fn apply_logged(&mut self, events: Vec<(Event, Seq)>) -> usize {
        let mut durable = Vec::new();
        let mut recipients = Vec::new();
        let mut group: Vec<Event> = Vec::new();
        let mut failed = false;
        for (event, end) in events {
            let next = group.last().map_or(self.core.last_seq(), |e| e.seq) + 1;
            if event.seq < next {
                continue;
            }
            let at_end = event.seq >= end;
            group.push(event);
            if at_end && !apply_group(&mut self.core, &mut group, &mut durable, &mut recipients) {
                failed = true;
                break;
            }
        }
        if !failed && !group.is_empty() && durable.is_empty() {
            failed = !apply_group(&mut self.core, &mut group, &mut durable, &mut recipients);
        }
        if failed {
            // The log is the truth and this node's state cannot take it: a bug or a damaged log. The node
            // refuses service from here on and says why.
            self.shared
                .set_fatal("this node cannot apply the log; restart it".into());
        }
        let n = durable.len();
        if n > 0 {
            self.shared.publish(durable, recipients, Vec::new());
        }
        n
    }

    /// Publishes live-only events the writer made, with recipients resolved against this node's state.
    fn publish_live(&mut self, events: Vec<Event>) {
        let live = events
            .into_iter()
            .map(|e| {
                self.core.observe(&e);
                let users: Vec<UserId> = self.core.recipients(&e).collect();
                (e, users)
            })
            .collect();
        self.shared.publish(Vec::new(), Vec::new(), live);
    }

    /// After stepping down: the core may hold a batch the log does not (refused, or of unknown outcome), so
    /// it is rebuilt from the log up to what this node published, and following continues from there.
    async fn resync(&mut self) -> Result<(), EngineError> {
        let published = self.shared.last_published();
        let store = Arc::clone(&self.shared.store);
        let config = self.core.config().clone();
        let rebuilt = tokio::task::spawn_blocking(move || rebuild(&*store, config, published))
            .await
            .map_err(|e| unavailable(&e.to_string()))??;
        self.core = rebuilt;
        let now = self.clock();
        self.core.resume(now);
        Ok(())
    }

    async fn finish_following(&mut self) {
        if let Some(node) = &self.node {
            node.set_uplink(None);
        }
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            crate::writer::refuse(job, || EngineError::ShuttingDown);
        }
        let _ = self.flush_cursors().await;
    }
}

/// The core as of `upto`: the newest snapshot at or before it, and the log after the snapshot up to it.
fn rebuild(store: &dyn Store, config: chat_core::Config, upto: Seq) -> Result<Core, EngineError> {
    let mut core = match store.latest_snapshot()? {
        Some((seq, bytes)) if seq <= upto => {
            let state: State = postcard::from_bytes(&bytes).map_err(|e| EngineError::Snapshot {
                seq,
                detail: e.to_string(),
            })?;
            Core::from_state(config, state)
        }
        Some((seq, _)) => {
            return Err(EngineError::Stopped {
                reason: format!(
                    "this node stepped down at seq {upto}, and the newest snapshot ({seq}) is past it: \
                     restart the node to rebuild its state"
                )
                .into(),
            });
        }
        None => Core::empty(config),
    };
    while core.last_seq() < upto {
        let events = store.events_after(core.last_seq(), CATCH_UP)?;
        if events.is_empty() {
            break;
        }
        for event in events.iter().filter(|e| e.seq <= upto) {
            core.apply(event)?;
        }
    }
    Ok(core)
}

/// Applies one command's events, then resolves their recipients against the state after the command.
fn apply_group(
    core: &mut Core,
    group: &mut Vec<Event>,
    durable: &mut Vec<Event>,
    recipients: &mut Vec<Vec<UserId>>,
) -> bool {
    for e in group.iter() {
        if let Err(err) = core.apply(e) {
            tracing::error!(error = %err, seq = e.seq, "cannot apply a logged event");
            return false;
        }
    }
    for e in group.drain(..) {
        recipients.push(core.recipients(&e).collect());
        durable.push(e);
    }
    true
}

fn release(held: &mut Vec<Held>, applied: Seq) {
    let (ready, wait): (Vec<Held>, Vec<Held>) = held.drain(..).partition(|h| h.seq <= applied);
    *held = wait;
    for h in ready {
        settle(h.upload, h.result.is_ok());
        let _ = h.reply.send(h.result);
    }
}

fn fail_pending(forwarded: &mut HashMap<u64, Forwarded>, reason: &str) {
    for (_, f) in forwarded.drain() {
        // The outcome is unknown (the command may have committed): its files stay. If it did not commit,
        // the sweep removes them later.
        settle(f.upload, true);
        let _ = f.reply.send(Err(unavailable(reason)));
    }
}

fn fail_all(forwarded: &mut HashMap<u64, Forwarded>, held: &mut Vec<Held>, reason: &str) {
    fail_pending(forwarded, reason);
    for h in held.drain(..) {
        settle(h.upload, false);
        let _ = h.reply.send(Err(unavailable(reason)));
    }
}
