//! The writer: the one task that owns the [`Core`]. It takes batches of commands, applies them, appends their
//! events in one group commit, and only then answers the callers and wakes the readers. Like quinn's
//! `ConnectionDriver`, it re-arms a timer to the core's `poll_timeout` after every batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_core::{
    Attachment, ChannelId, ClientId, Command, Core, Created, Event, EventKind, MessageId, Origin,
    Seq, UnixMillis, UserId,
};
use chat_log::{Batch, NonceRecord, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{Node, link};
use crate::engine::{CommandReply, Shared, encode_reply, now_ms};
use crate::error::EngineError;
use crate::files::{Files, Upload};

/// A request to the writer.
pub(crate) enum Job {
    /// A command to apply and commit.
    Command {
        origin: Origin,
        /// Boxed: commands are large, and the queue should not reserve that much per slot.
        command: Box<Command>,
        /// The acting user and the nonce, when the command carries one.
        nonce: Option<(UserId, String)>,
        reply: oneshot::Sender<Result<CommandReply, EngineError>>,
        /// Files written for the command's message: kept if it commits, removed if it is refused.
        upload: Option<Upload>,
        /// Whether the per-user message rate is checked here (in a cluster, by the writer, so that it holds
        /// across nodes); a single node checks it before queueing.
        rate: bool,
        /// Handed over by another node's link: only a writer may take it.
        forwarded: bool,
    },
    /// A read of the committed state, run after the batch it arrives in has committed.
    Query(Query),
    /// Stop: finish, flush, snapshot, then answer.
    Shutdown(oneshot::Sender<Result<(), EngineError>>),
}

/// A read of the committed state, queued like a command.
pub(crate) type Query = Box<dyn FnOnce(&Core) + Send>;

/// An event with its recipients.
type Routed = (Event, Vec<UserId>);

/// The outcome of one command inside a batch, answered after the commit.
type Pending = (
    oneshot::Sender<Result<CommandReply, EngineError>>,
    Result<CommandReply, EngineError>,
);

/// How the writing loop ended.
pub(crate) enum Step {
    /// The engine stops.
    Stopped,
    /// A cluster node lost its writer term (or the outcome of a commit): it follows from here.
    Demoted,
}

pub(crate) struct Writer {
    pub(crate) core: Core,
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: mpsc::Receiver<Job>,
    pub(crate) since_snapshot: u64,
    pub(crate) snapshot_task: Option<JoinHandle<()>>,
    pub(crate) now: UnixMillis,
    /// In a cluster: this node.
    pub(crate) node: Option<Arc<Node>>,
    /// In a cluster: the term this node writes under, while it does.
    pub(crate) term: Option<u64>,
    /// The term the engine starts writing under, if start-up took the lease.
    pub(crate) initial_term: Option<u64>,
    /// Queries that arrived in a batch whose commit failed in a cluster: run once the core is rebuilt.
    pub(crate) stashed: Vec<Query>,
}

impl Writer {
    pub(crate) fn clock(&mut self) -> UnixMillis {
        // Never let time run backwards inside the engine: a stepped-back wall clock would reorder event
        // timestamps (the core's ids cope on their own, timestamps do not).
        self.now = self.now.max(now_ms());
        self.now
    }

    /// The writer task: a single node's writing loop, or a cluster node's (see `cluster::follow`).
    pub(crate) async fn run(mut self) -> Result<(), EngineError> {
        if let Some(node) = self.node.clone() {
            let term = self.initial_term.take();
            let shared = Arc::clone(&self.shared);
            let result = self.run_cluster(node, term).await;
            if let Err(e) = &result {
                // Nothing answers for this node's writer task any more: say why, in the log and to every
                // request, rather than leave the node to answer as if it were merely shutting down.
                tracing::error!(error = %e, "the cluster node's writer task stopped; restart the node");
                shared.set_fatal(e.to_string().into());
            }
            return result;
        }
        self.lead_loop().await.map(|_| ())
    }

    /// The writing loop. Returns when every handle is gone or on `Shutdown`, after flushing; returns an error
    /// after a failed commit, having refused everything still queued. In a cluster it returns
    /// [`Step::Demoted`] instead when the node loses its term or a commit's outcome.
    pub(crate) async fn lead_loop(&mut self) -> Result<Step, EngineError> {
        let mut lost = self.node.as_ref().map(|node| node.lost.subscribe());
        let term = self.term.unwrap_or(0);
        let flush_every = self
            .shared
            .config
            .cursor_flush_interval
            .clamp(Duration::from_millis(10), Duration::from_secs(3600));
        let mut next_flush = Instant::now() + flush_every;
        loop {
            // One millisecond late rather than early: waking before the deadline would find nothing due and
            // spin until the wall clock catches up.
            // A deadline too far to represent is no deadline at all.
            let deadline = self.core.poll_timeout().and_then(|at| {
                let now = now_ms();
                Instant::now().checked_add(Duration::from_millis(
                    at.saturating_sub(now).saturating_add(1),
                ))
            });
            let first = tokio::select! {
                biased;
                () = lost_term(lost.as_mut(), term) => return Ok(Step::Demoted),
                job = self.rx.recv() => match job {
                    Some(job) => Some(job),
                    None => return self.finish().await.map(|()| Step::Stopped),
                },
                () = sleep_opt(deadline) => None,
                () = tokio::time::sleep_until(next_flush) => {
                    next_flush = Instant::now() + flush_every;
                    self.flush_cursors().await?;
                    continue;
                }
            };
            let mut jobs = Vec::new();
            let mut stop = None;
            match first {
                Some(Job::Shutdown(done)) => stop = Some(done),
                Some(job) => jobs.push(job),
                None => {}
            }
            // Group commit: take whatever else is already queued, up to the cap, into the same transaction.
            while stop.is_none() && jobs.len() < self.shared.config.max_batch.max(1) {
                match self.rx.try_recv() {
                    Ok(Job::Shutdown(done)) => stop = Some(done),
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.batch(jobs).await {
                if self.node.is_some() && matches!(e, EngineError::Unavailable { .. }) {
                    if let Some(done) = stop {
                        // A stop asked for while stepping down: the node stops rather than follows.
                        let result = self.finish().await;
                        let _ = done.send(result.as_ref().map(|_| ()).map_err(stopped));
                        return result.map(|()| Step::Stopped);
                    }
                    return Ok(Step::Demoted);
                }
                if let Some(done) = stop {
                    let _ = done.send(Err(stopped(&e)));
                }
                return Err(e);
            }
            if let Some(done) = stop {
                let result = self.finish().await;
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(stopped(e)),
                };
                let _ = done.send(answer);
                return result.map(|()| Step::Stopped);
            }
        }
    }

    /// Runs due timers (always: a batch is also the moment to expire what is due), then the commands, commits
    /// everything in one append, then answers and publishes.
    pub(crate) async fn batch(&mut self, jobs: Vec<Job>) -> Result<(), EngineError> {
        let now = self.clock();
        let mut events: Vec<Event> = Vec::new();
        let mut recipients: Vec<Vec<UserId>> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        let mut queries = Vec::new();
        let mut nonces: Vec<NonceRecord> = Vec::new();
        let mut batch_nonces: HashMap<(UserId, String), CommandReply> = HashMap::new();
        let mut new_cursors: Vec<(ClientId, Seq)> = Vec::new();
        // Uploads of accepted commands: kept once the batch commits.
        let mut uploads: Vec<Upload> = Vec::new();

        // The seq where each command's (or timer call's) durable events end: the store resolves audiences
        // at those points, as the core did.
        let mut command_ends: Vec<Seq> = Vec::new();
        let mut mark = self.core.last_seq();

        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.core.handle_timeout(now);
            self.drain(&mut events, &mut recipients);
            note_end(self.core.last_seq(), &mut mark, &mut command_ends);
        }
        for job in jobs {
            match job {
                Job::Query(q) => queries.push(q),
                Job::Shutdown(_) => {}
                Job::Command {
                    origin,
                    command,
                    nonce,
                    reply,
                    mut upload,
                    rate,
                    forwarded: _,
                } => {
                    if let Some(u) = &mut upload {
                        u.take();
                    }
                    if rate && let Err(e) = self.take_rate(origin, now) {
                        if let Some(u) = upload {
                            u.discard_later();
                        }
                        pending.push((reply, Err(e)));
                        continue;
                    }
                    if let Some(key) = &nonce {
                        let seen = batch_nonces
                            .get(key)
                            .cloned()
                            .or_else(|| self.shared.nonce_lookup(key, now));
                        if let Some(first) = seen {
                            // A repeat: the first message stands, and this one's files belong to nothing.
                            if let Some(u) = upload {
                                u.discard_later();
                            }
                            pending.push((reply, Ok(first)));
                            continue;
                        }
                    }
                    let result = self.core.handle(now, origin, *command);
                    self.drain(&mut events, &mut recipients);
                    note_end(self.core.last_seq(), &mut mark, &mut command_ends);
                    let result = result.map(|r| CommandReply {
                        seq: r.seq,
                        created: r.created,
                    });
                    if let Ok(r) = &result {
                        if let Some(client) = new_client(r.created.as_ref()) {
                            new_cursors.push((client, r.seq));
                        }
                        if let Some(key) = nonce {
                            nonces.push(NonceRecord {
                                user: key.0,
                                nonce: key.1.clone(),
                                at: now,
                                reply: encode_reply(r),
                            });
                            batch_nonces.insert(key, r.clone());
                        }
                    }
                    if let Some(u) = upload {
                        if result.is_ok() {
                            uploads.push(u);
                        } else {
                            u.discard_later();
                        }
                    }
                    let outcome = if result.is_ok() { "ok" } else { "refused" };
                    metrics::counter!("chatd_commands_total", "outcome" => outcome).increment(1);
                    pending.push((reply, result.map_err(EngineError::from)));
                }
            }
        }

        // Clients that went away no longer need a cursor; new ones start where they were created.
        let mut removed = Vec::new();
        for e in &events {
            if let EventKind::ClientRemoved { client, .. } = &e.kind {
                removed.push(*client);
            }
        }
        let cursors = self.shared.take_dirty_cursors(&new_cursors, &removed);

        let (durable, live): (Vec<Routed>, Vec<Routed>) = events
            .into_iter()
            .zip(recipients)
            .partition(|(e, _)| e.is_durable());
        let (durable_events, durable_recipients): (Vec<Event>, Vec<Vec<UserId>>) =
            durable.into_iter().unzip();

        if !durable_events.is_empty() || !cursors.is_empty() || !nonces.is_empty() {
            metrics::histogram!("chatd_commit_batch_size").record(pending.len() as f64);
            metrics::counter!("chatd_events_total").increment(durable_events.len() as u64);
            let started = Instant::now();
            let store = Arc::clone(&self.shared.store);
            let fenced = self
                .node
                .as_ref()
                .zip(self.term)
                .map(|(node, term)| (Arc::clone(&node.store), term));
            let doomed = Doomed::of(&durable_events, &self.shared);
            let committed = tokio::task::spawn_blocking(move || {
                // Which files the batch's removals orphan is read before the append, while the messages
                // are still there; the files go only after the append has committed.
                let doomed = doomed.resolve(&*store);
                let batch = Batch {
                    events: &durable_events,
                    command_ends: &command_ends,
                    cursors: &cursors,
                    nonces: &nonces,
                };
                let result = match &fenced {
                    Some((cluster, term)) => cluster.append_fenced(*term, &batch),
                    None => store.append(&batch),
                };
                result.map(|()| (durable_events, nonces, doomed, command_ends))
            })
            .await
            .map_err(|e| EngineError::Stopped {
                reason: format!("the commit task failed: {e}").into(),
            })
            .and_then(|r| r.map_err(EngineError::from));
            let (durable_events, nonces, doomed, command_ends) = match committed {
                Ok(done) => done,
                Err(e) if self.node.is_some() => {
                    // Refused by fencing, or an outcome this node cannot know: nothing of the batch is
                    // acknowledged, and the node steps down; each caller's engine resends its command, with
                    // its nonce, to whichever node writes next.
                    tracing::warn!(error = %e, "a cluster commit failed; stepping down");
                    for u in uploads {
                        u.keep();
                    }
                    let reason: Arc<str> = e.to_string().into();
                    for (tx, _) in pending {
                        let _ = tx.send(Err(EngineError::Unavailable {
                            reason: Arc::clone(&reason),
                        }));
                    }
                    self.stashed.extend(queries);
                    return Err(EngineError::Unavailable { reason });
                }
                Err(e) => {
                    // Nothing of this batch may be acknowledged: tell each caller why, before anyone else
                    // can observe the engine as merely closed.
                    self.fail(&e);
                    for (tx, _) in pending {
                        let _ = tx.send(Err(stopped(&e)));
                    }
                    return Err(e);
                }
            };
            metrics::histogram!("chatd_commit_seconds").record(started.elapsed().as_secs_f64());
            // From here on the batch is durable: its messages' files stay, its removals' files go, then
            // answer, remember and publish.
            for u in uploads {
                u.keep();
            }
            doomed.remove(&self.shared.files);
            self.shared.remember_nonces(nonces, batch_nonces);
            self.since_snapshot += u64::try_from(durable_events.len()).unwrap_or(u64::MAX);
            if let Some(node) = &self.node {
                // Committed: followers may apply it (they check it continues their log).
                node.broadcast(link::encode(&link::DownRef::Committed {
                    events: &durable_events,
                    ends: &command_ends,
                }));
                if !live.is_empty() {
                    let events: Vec<&Event> = live.iter().map(|(e, _)| e).collect();
                    node.broadcast(link::encode(&link::DownRef::Live { events: &events }));
                }
            }
            self.shared
                .publish(durable_events, durable_recipients, live);
        } else {
            // Nothing to commit: an accepted command made no durable event, so no message holds these.
            for u in uploads {
                u.discard_later();
            }
            if let Some(node) = &self.node
                && !live.is_empty()
            {
                let events: Vec<&Event> = live.iter().map(|(e, _)| e).collect();
                node.broadcast(link::encode(&link::DownRef::Live { events: &events }));
            }
            self.shared.publish(Vec::new(), Vec::new(), live);
        }
        for (tx, result) in pending {
            let _ = tx.send(result);
        }
        for q in queries {
            q(&self.core);
        }
        let every = self.shared.config.snapshot_every;
        if every > 0 && self.since_snapshot >= every && (self.node.is_none() || self.term.is_some())
        {
            self.snapshot(false).await;
        }
        self.shared.forget_old(now);
        Ok(())
    }

    /// Takes one from the acting user's message bucket, or says how long to wait.
    fn take_rate(&self, origin: Origin, now: UnixMillis) -> Result<(), EngineError> {
        let user = match origin {
            Origin::Client(client) => self.core.client(client).map(|c| c.user),
            _ => None,
        };
        match user {
            Some(user) => self.shared.take_rate(user, now),
            None => Ok(()),
        }
    }

    /// Moves the core's queued events out, each with its recipients resolved right away: the core's contract
    /// is that an audience is resolved against the state just after the input that produced it.
    fn drain(&mut self, events: &mut Vec<Event>, recipients: &mut Vec<Vec<UserId>>) {
        while let Some(event) = self.core.poll_event() {
            recipients.push(self.core.recipients(&event).collect());
            events.push(event);
        }
    }

    /// Saves a snapshot of the state in the background (or waits for it at shutdown).
    async fn snapshot(&mut self, wait: bool) {
        if let Some(task) = self.snapshot_task.take() {
            if !task.is_finished() && !wait {
                // One snapshot at a time: a slow disk must not pile them up.
                self.snapshot_task = Some(task);
                return;
            }
            let _ = task.await;
        }
        let seq = self.core.last_seq();
        // A copy of the state is taken here and encoded beside the writer: encoding takes several times as
        // long as copying (tens of milliseconds with a full history per channel), and every command waits
        // for what the writer does meanwhile.
        let state = self.core.state().clone();
        self.since_snapshot = 0;
        let store = Arc::clone(&self.shared.store);
        let task = tokio::task::spawn_blocking(move || {
            let bytes = match postcard::to_stdvec(&state) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a snapshot");
                    return;
                }
            };
            drop(state);
            if let Err(e) = store.save_snapshot(seq, &bytes) {
                // A missing snapshot costs start-up time, never data: the log still holds everything.
                tracing::warn!(error = %e, seq, "cannot save a snapshot");
            }
        });
        if wait {
            let _ = task.await;
        } else {
            self.snapshot_task = Some(task);
        }
    }

    pub(crate) async fn flush_cursors(&mut self) -> Result<(), EngineError> {
        let cursors = self.shared.take_dirty_cursors(&[], &[]);
        if cursors.is_empty() {
            return Ok(());
        }
        let store = Arc::clone(&self.shared.store);
        let result = tokio::task::spawn_blocking(move || store.save_cursors(&cursors)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            // A lost cursor save is not a divergence of state: the next save carries the newer cursor.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot save cursors");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "the cursor save task failed");
                Ok(())
            }
        }
    }

    /// The end of a clean run: refuse what is still queued, flush cursors, save a snapshot.
    async fn finish(&mut self) -> Result<(), EngineError> {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            refuse(job, || EngineError::ShuttingDown);
        }
        self.flush_cursors().await?;
        if self.since_snapshot > 0 || self.snapshot_task.is_some() {
            self.snapshot(true).await;
        }
        Ok(())
    }

    /// After a failed commit the core holds changes the log does not: answering anything from it again would
    /// acknowledge state that a restart would not have. So every waiting and later request is refused, and
    /// the error goes to whoever awaits the writer task; a restart rebuilds the state from the log.
    fn fail(&mut self, error: &EngineError) {
        tracing::error!(%error, "a commit failed; the engine stops");
        let reason: Arc<str> = error.to_string().into();
        self.shared.set_fatal(Arc::clone(&reason));
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            refuse(job, || EngineError::Stopped {
                reason: Arc::clone(&reason),
            });
        }
    }
}

pub(crate) fn refuse(job: Job, error: impl Fn() -> EngineError) {
    match job {
        Job::Command { reply, upload, .. } => {
            // Never applied: no message holds its files.
            if let Some(u) = upload {
                u.discard_later();
            }
            let _ = reply.send(Err(error()));
        }
        Job::Shutdown(done) => {
            let _ = done.send(Err(error()));
        }
        // Dropping a query drops its reply sender, which its caller reads as the engine being gone.
        Job::Query(_) => {}
    }
}

fn stopped(e: &EngineError) -> EngineError {
    EngineError::Stopped {
        reason: e.to_string().into(),
    }
}

/// Records the end of a command's durable events, if it made any.
fn note_end(last: Seq, mark: &mut Seq, ends: &mut Vec<Seq>) {
    if last > *mark {
        ends.push(last);
        *mark = last;
    }
}

fn new_client(created: Option<&Created>) -> Option<ClientId> {
    match created {
        Some(Created::User {
            client: Some(client),
            ..
        })
        | Some(Created::Client(client)) => Some(*client),
        _ => None,
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The files a batch's removals orphan: those of deleted messages, and whole directories of deleted channels.
#[derive(Debug, Default)]
struct Doomed {
    /// Deleted messages, resolved to their files by asking the store before the append.
    messages: Vec<MessageId>,
    /// Messages created earlier in the same batch (not in the store yet), with their files.
    created: HashMap<MessageId, (ChannelId, Vec<Attachment>)>,
    /// Channels deleted, threads and a space's channels included.
    channels: Vec<ChannelId>,
    /// What `resolve` found.
    files: Vec<(ChannelId, Vec<Attachment>)>,
}

impl Doomed {
    fn of(events: &[Event], shared: &Shared) -> Self {
        let mut doomed = Doomed::default();
        let removes = |k: &EventKind| {
            matches!(
                k,
                EventKind::MessageDeleted { .. }
                    | EventKind::MessagesDeleted { .. }
                    | EventKind::ChannelDeleted { .. }
                    | EventKind::SpaceDeleted { .. }
            )
        };
        // Most batches remove nothing: they copy no attachment lists and take no look at the directory.
        if !events.iter().any(|e| removes(&e.kind)) {
            return doomed;
        }
        let directory = shared.directory();
        for e in events {
            match &e.kind {
                EventKind::MessageCreated { message } if !message.attachments.is_empty() => {
                    doomed
                        .created
                        .insert(message.id, (message.channel, message.attachments.clone()));
                }
                EventKind::MessageDeleted { message, .. } => doomed.messages.push(*message),
                EventKind::MessagesDeleted { messages, .. } => {
                    doomed.messages.extend(messages.iter().copied());
                }
                EventKind::ChannelDeleted { .. } | EventKind::SpaceDeleted { .. } => {
                    doomed.channels.extend(directory.removed_channels(&e.kind));
                }
                _ => {}
            }
        }
        doomed
    }

    /// Finds the deleted messages' files. Blocking; a failed read leaves those files to the sweep rather than
    /// failing the commit.
    fn resolve(mut self, store: &dyn Store) -> Self {
        for id in std::mem::take(&mut self.messages) {
            if let Some(found) = self.created.remove(&id) {
                self.files.push(found);
                continue;
            }
            match store.message(id) {
                Ok(Some(m)) if !m.attachments.is_empty() => {
                    self.files.push((m.channel, m.attachments));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, message = id.get(), "cannot read a deleted message's files");
                }
            }
        }
        self.created.clear();
        self
    }

    /// Removes the files, on the blocking pool: the commit is done, the writer does not wait.
    fn remove(self, files: &Arc<Files>) {
        if self.files.is_empty() && self.channels.is_empty() {
            return;
        }
        let files = Arc::clone(files);
        tokio::task::spawn_blocking(move || {
            for (channel, attachments) in &self.files {
                files.remove(*channel, attachments);
            }
            for channel in self.channels {
                files.remove_channel(channel);
            }
        });
    }
}

/// Resolves when the node learns it lost `term`; never without a node.
async fn lost_term(lost: Option<&mut tokio::sync::watch::Receiver<u64>>, term: u64) {
    match lost {
        Some(rx) => {
            while *rx.borrow_and_update() != term || term == 0 {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
        None => std::future::pending().await,
    }
}
