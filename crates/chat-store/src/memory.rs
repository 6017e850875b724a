//! The in-memory reference store: the [`Store`] contract in plain maps, simple enough to be obviously right.
//!
//! It applies the same [`crate::project`] effects as the SQLite store and answers the same queries by
//! scanning, so the shared conformance suite can hold the two side by side.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_core::{
    Attachment, ChannelId, ChannelInfo, ChannelKind, ClientId, Event, Invite, MessageId,
    OverwriteTarget, Permissions, Role, RoleId, Seq, SpaceId, SpaceInfo, UnixMillis, UserId,
};

use crate::project::{
    self, AUD_CHANNEL, AUD_CHANNEL_AND, AUD_SPACE, AUD_SPACE_AND, AUD_USER, AUD_USERS, Effect,
};
use crate::text;
use chat_log::{
    Batch, Cluster, DbMeta, HistoryQuery, Lease, NodeRecord, NodeRole, NonceRecord,
    RetentionReport, SearchHit, SearchQuery, ServerLink, Store, StoreError, StoredMessage,
    StreamPage,
};

/// A stretch of seqs during which a user was a member: from `from` (inclusive) to `to` (exclusive).
#[derive(Clone, Copy, Debug)]
struct Interval {
    from: Seq,
    to: Option<Seq>,
    op: bool,
    voice: bool,
}

// The user columns mirror the SQLite table; no trait query reads some of them yet.
#[allow(dead_code)]
#[derive(Clone, Debug)]
struct UserRow {
    nick: String,
    password_hash: Option<String>,
    display_name: Option<String>,
    bio: Option<String>,
    avatar_url: Option<String>,
    away: Option<String>,
    bot: bool,
    system: bool,
    released: bool,
}

#[derive(Clone, Debug)]
struct ChannelRow {
    info: ChannelInfo,
    deleted: Option<Seq>,
}

/// The materialized tables, as maps.
#[derive(Debug, Default)]
struct Tables {
    users: BTreeMap<UserId, UserRow>,
    clients: BTreeMap<ClientId, (UserId, String, [u8; 32])>,
    spaces: BTreeMap<SpaceId, (SpaceInfo, Option<Seq>)>,
    space_members: BTreeMap<(SpaceId, UserId), Vec<Interval>>,
    member_info: BTreeMap<(SpaceId, UserId), (Vec<RoleId>, Option<String>)>,
    space_bans: BTreeMap<(SpaceId, UserId), Option<String>>,
    roles: BTreeMap<RoleId, (SpaceId, Role)>,
    channels: BTreeMap<ChannelId, ChannelRow>,
    members: BTreeMap<(ChannelId, UserId), Vec<Interval>>,
    overwrites: BTreeMap<(ChannelId, OverwriteTarget), (Permissions, Permissions)>,
    messages: BTreeMap<MessageId, StoredMessage>,
    read_states: BTreeMap<(UserId, ChannelId), (MessageId, u32)>,
    invites: BTreeMap<String, Invite>,
}

/// A logged event with the channel whose members receive it (a thread's parent), resolved when appended.
#[derive(Debug)]
struct Logged {
    event: Event,
    channel: Option<ChannelId>,
    /// Where its audience is resolved: the end of its command.
    at: Seq,
}

#[derive(Debug, Default)]
struct Inner {
    events: BTreeMap<Seq, Logged>,
    last_seq: Seq,
    snapshots: BTreeMap<Seq, Vec<u8>>,
    cursors: BTreeMap<ClientId, Seq>,
    nonces: BTreeMap<(UserId, String), NonceRecord>,
    stamps: BTreeMap<[u8; 32], UnixMillis>,
    links: BTreeMap<String, ServerLink>,
    tables: Tables,
    /// The writer lease: term, holder, address, and when it lapses.
    lease: Option<(u64, u16, String, Instant)>,
    nodes: BTreeMap<u16, (String, NodeRole, Seq, Instant)>,
    data_dir_mark: Option<u64>,
}

/// An in-memory store: the reference implementation of [`Store`], for tests and for embedders that need no
/// durability. Nothing survives the process.
#[derive(Debug)]
pub struct MemoryStore {
    meta: DbMeta,
    inner: Mutex<Inner>,
    /// Rung at every commit, for [`Cluster::wait_commit`].
    committed: Condvar,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with a fixed identity (epoch 1, invite seed 0): tests want reproducible runs.
    pub fn new() -> Self {
        Self::with_meta(DbMeta {
            epoch: 1,
            invite_seed: 0,
            created_at: 0,
        })
    }

    /// An empty store with the given identity.
    pub fn with_meta(meta: DbMeta) -> Self {
        Self {
            meta,
            inner: Mutex::new(Inner::default()),
            committed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held can only come from a bug in this file; the maps are still usable,
        // so recover them rather than poisoning every later call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Tables {
    fn network(&self) -> Option<SpaceId> {
        self.spaces
            .iter()
            .find(|(_, (info, deleted))| info.network && deleted.is_none())
            .map(|(id, _)| *id)
    }

    /// The channel whose members receive a channel's events: a thread's parent, else itself.
    fn membership_channel(&self, channel: ChannelId) -> ChannelId {
        match self.channels.get(&channel) {
            Some(row) if row.info.kind == ChannelKind::Thread => row.info.parent.unwrap_or(channel),
            _ => channel,
        }
    }

    fn join(list: &mut Vec<Interval>, seq: Seq, op: bool, voice: bool) {
        if list.last().is_none_or(|i| i.to.is_some()) {
            list.push(Interval {
                from: seq,
                to: None,
                op,
                voice,
            });
        }
    }

    fn leave(list: &mut [Interval], seq: Seq) {
        if let Some(last) = list.last_mut()
            && last.to.is_none()
        {
            last.to = Some(seq);
        }
    }

    fn channel_leave_where(&mut self, seq: Seq, user: UserId, pred: impl Fn(&ChannelRow) -> bool) {
        let channels = &self.channels;
        for ((c, u), list) in self.members.iter_mut() {
            if *u == user && channels.get(c).is_some_and(&pred) {
                Self::leave(list, seq);
            }
        }
    }

    fn channel_gone(&mut self, seq: Seq, channel: ChannelId) {
        let threads: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, r)| r.info.kind == ChannelKind::Thread && r.info.parent == Some(channel))
            .map(|(id, _)| *id)
            .collect();
        for t in threads {
            self.channel_gone(seq, t);
        }
        if let Some(row) = self.channels.get_mut(&channel)
            && row.deleted.is_none()
        {
            row.deleted = Some(seq);
        }
        for ((c, _), list) in self.members.iter_mut() {
            if *c == channel {
                Self::leave(list, seq);
            }
        }
        self.messages.retain(|_, m| m.channel != channel);
    }

    fn apply(&mut self, seq: Seq, effect: Effect<'_>) {
        match effect {
            Effect::User {
                id,
                nick,
                password_hash,
                bot,
                system,
            } => {
                self.users.insert(
                    id,
                    UserRow {
                        nick: nick.to_owned(),
                        password_hash: password_hash.map(str::to_owned),
                        display_name: None,
                        bio: None,
                        avatar_url: None,
                        away: None,
                        bot,
                        system,
                        released: false,
                    },
                );
            }
            Effect::NetworkJoin(user) => {
                if let Some(network) = self.network() {
                    Self::join(
                        self.space_members.entry((network, user)).or_default(),
                        seq,
                        false,
                        false,
                    );
                }
            }
            Effect::SpaceJoinAll(space) => {
                let users: Vec<UserId> = self
                    .users
                    .iter()
                    .filter(|(_, u)| !u.released)
                    .map(|(id, _)| *id)
                    .collect();
                for u in users {
                    Self::join(
                        self.space_members.entry((space, u)).or_default(),
                        seq,
                        false,
                        false,
                    );
                }
            }
            Effect::Nick(user, nick) => {
                if let Some(u) = self.users.get_mut(&user) {
                    nick.clone_into(&mut u.nick);
                }
            }
            Effect::Profile {
                user,
                display_name,
                bio,
                avatar_url,
            } => {
                if let Some(u) = self.users.get_mut(&user) {
                    u.display_name = display_name.map(str::to_owned);
                    u.bio = bio.map(str::to_owned);
                    u.avatar_url = avatar_url.map(str::to_owned);
                }
            }
            Effect::Password(user, hash) => {
                if let Some(u) = self.users.get_mut(&user) {
                    u.password_hash = Some(hash.to_owned());
                }
            }
            Effect::Away(user, message) => {
                if let Some(u) = self.users.get_mut(&user) {
                    u.away = message.map(str::to_owned);
                }
            }
            Effect::Client {
                id,
                user,
                name,
                token_hash,
            } => {
                self.clients
                    .insert(id, (user, name.to_owned(), *token_hash));
            }
            Effect::ClientGone(id) => {
                self.clients.remove(&id);
            }
            Effect::Quit { user, released } => {
                if released {
                    self.channel_leave_where(seq, user, |c| c.info.kind != ChannelKind::Dm);
                    for ((_, u), list) in self.space_members.iter_mut() {
                        if *u == user {
                            Self::leave(list, seq);
                        }
                    }
                    if let Some(u) = self.users.get_mut(&user) {
                        u.released = true;
                        u.away = None;
                    }
                    self.read_states.retain(|(u, _), _| *u != user);
                } else {
                    let network = self.network();
                    self.channel_leave_where(seq, user, |c| {
                        c.info.space.is_some() && c.info.space == network
                    });
                }
            }
            Effect::Read {
                user,
                channel,
                message,
                mentions,
            } => {
                self.read_states
                    .insert((user, channel), (message, mentions));
            }
            Effect::Space(info) => {
                let deleted = self.spaces.get(&info.id).and_then(|s| s.1);
                self.spaces.insert(info.id, (info.clone(), deleted));
            }
            Effect::SpaceGone(space) => {
                let channels: Vec<ChannelId> = self
                    .channels
                    .iter()
                    .filter(|(_, r)| r.info.space == Some(space))
                    .map(|(id, _)| *id)
                    .collect();
                for c in channels {
                    self.channel_gone(seq, c);
                }
                for ((s, _), list) in self.space_members.iter_mut() {
                    if *s == space {
                        Self::leave(list, seq);
                    }
                }
                if let Some(s) = self.spaces.get_mut(&space) {
                    s.1 = Some(seq);
                }
                self.invites.retain(
                    |_, i| !matches!(i.target, chat_core::InviteTarget::Space(s, _) if s == space),
                );
            }
            Effect::SpaceJoin(space, user) => {
                Self::join(
                    self.space_members.entry((space, user)).or_default(),
                    seq,
                    false,
                    false,
                );
            }
            Effect::SpaceLeave(space, user) => {
                if let Some(list) = self.space_members.get_mut(&(space, user)) {
                    Self::leave(list, seq);
                }
                self.member_info.remove(&(space, user));
                self.channel_leave_where(seq, user, |c| c.info.space == Some(space));
            }
            Effect::SpaceBan {
                space,
                user,
                reason,
                on,
            } => {
                if on {
                    self.space_bans
                        .insert((space, user), reason.map(str::to_owned));
                } else {
                    self.space_bans.remove(&(space, user));
                }
            }
            Effect::MemberUpdate {
                space,
                user,
                roles,
                nick,
            } => {
                self.member_info
                    .insert((space, user), (roles.to_vec(), nick.map(str::to_owned)));
            }
            Effect::Role(space, role) => {
                self.roles.insert(role.id, (space, role));
            }
            Effect::RoleGone(role) => {
                self.roles.remove(&role);
                self.overwrites
                    .retain(|(_, t), _| *t != OverwriteTarget::Role(role));
            }
            Effect::Channel { info, created } => {
                if created {
                    for (t, a, d) in &info.overwrites {
                        self.overwrites.insert((info.id, *t), (*a, *d));
                    }
                    self.channels.insert(
                        info.id,
                        ChannelRow {
                            info: info.clone(),
                            deleted: None,
                        },
                    );
                } else if let Some(row) = self.channels.get_mut(&info.id) {
                    // An update carries settings only: the overwrites stay as their own events left them.
                    let overwrites = std::mem::take(&mut row.info.overwrites);
                    row.info = ChannelInfo {
                        overwrites,
                        ..info.clone()
                    };
                }
            }
            Effect::ChannelGone(channel) => self.channel_gone(seq, channel),
            Effect::ChannelJoin {
                channel,
                user,
                op,
                voice,
            } => {
                Self::join(
                    self.members.entry((channel, user)).or_default(),
                    seq,
                    op,
                    voice,
                );
            }
            Effect::ChannelLeave(channel, user) => {
                if let Some(list) = self.members.get_mut(&(channel, user)) {
                    Self::leave(list, seq);
                }
            }
            Effect::Overwrite {
                channel,
                target,
                value,
            } => match value {
                Some(v) => {
                    self.overwrites.insert((channel, target), v);
                }
                None => {
                    self.overwrites.remove(&(channel, target));
                }
            },
            Effect::Topic(channel, topic) => {
                if let Some(row) = self.channels.get_mut(&channel) {
                    row.info.topic = topic.cloned();
                }
            }
            Effect::MemberMode {
                channel,
                user,
                op,
                voice,
            } => {
                if let Some(last) = self
                    .members
                    .get_mut(&(channel, user))
                    .and_then(|l| l.last_mut())
                    .filter(|i| i.to.is_none())
                {
                    last.op = op.unwrap_or(last.op);
                    last.voice = voice.unwrap_or(last.voice);
                }
            }
            Effect::Message(mut m) => {
                m.space = self.channels.get(&m.channel).and_then(|r| r.info.space);
                self.messages.insert(m.id, *m);
            }
            Effect::Edit {
                id,
                body,
                meta,
                mentions,
                edited_at,
                embeds,
            } => {
                if let Some(m) = self.messages.get_mut(&id) {
                    body.clone_into(&mut m.body);
                    if let Some(meta) = meta {
                        m.meta = Some(meta.to_owned());
                    }
                    if let Some(embeds) = embeds {
                        m.embeds = Some(embeds.to_owned());
                    }
                    m.mentions = mentions.to_vec();
                    m.edited_at = Some(edited_at);
                }
            }
            Effect::Delete(id) => {
                self.messages.remove(&id);
            }
            Effect::React {
                id,
                user,
                emoji,
                on,
            } => {
                if let Some(m) = self.messages.get_mut(&id) {
                    if on {
                        let users = m.reactions.entry(emoji.to_owned()).or_default();
                        if !users.contains(&user) {
                            users.push(user);
                        }
                    } else if let Some(users) = m.reactions.get_mut(emoji) {
                        users.retain(|u| *u != user);
                        if users.is_empty() {
                            m.reactions.remove(emoji);
                        }
                    }
                }
            }
            Effect::Pin(id, on) => {
                if let Some(m) = self.messages.get_mut(&id) {
                    m.pinned = on;
                }
            }
            Effect::Thread { starter, thread } => {
                if let Some(m) = self.messages.get_mut(&starter) {
                    m.thread = Some(thread);
                }
            }
            Effect::Invite(invite) => {
                self.invites.insert(invite.code.clone(), invite.clone());
            }
            Effect::InviteUsed(code) => {
                if let Some(i) = self.invites.get_mut(code) {
                    i.uses = i.uses.saturating_add(1);
                }
            }
            Effect::InviteGone(code) => {
                self.invites.remove(code);
            }
        }
    }

    fn is_member(&self, channel: ChannelId, user: UserId, seq: Seq) -> bool {
        self.members
            .get(&(channel, user))
            .is_some_and(|l| l.iter().any(|i| project::member_at(i.from, i.to, seq)))
    }

    fn is_space_member(&self, space: SpaceId, user: UserId, seq: Seq) -> bool {
        self.space_members
            .get(&(space, user))
            .is_some_and(|l| l.iter().any(|i| project::member_at(i.from, i.to, seq)))
    }

    fn may_see(&self, user: UserId, logged: &Logged) -> bool {
        let ev = &logged.event;
        let cols = project::audience_cols(&ev.audience);
        match cols.kind {
            AUD_USER => cols.user == Some(user),
            AUD_USERS => match &ev.audience {
                chat_core::Audience::Users(users) => users.contains(&user),
                _ => false,
            },
            AUD_CHANNEL | AUD_CHANNEL_AND => {
                cols.user == Some(user)
                    || logged
                        .channel
                        .is_some_and(|c| self.is_member(c, user, logged.at))
            }
            AUD_SPACE | AUD_SPACE_AND => {
                cols.user == Some(user)
                    || cols
                        .space
                        .is_some_and(|s| self.is_space_member(s, user, logged.at))
            }
            _ => false,
        }
    }
}

impl MemoryStore {
    /// Appends a batch under the store's one lock, first checking the writer's term when one is given (the
    /// fencing of [`Cluster::append_fenced`]), and wakes whoever waits for a commit.
    fn append_with(&self, term: Option<u64>, batch: &Batch<'_>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(term) = term {
            let current = inner.lease.as_ref().map_or(0, |l| l.0);
            if current != term {
                return Err(StoreError::Fenced { term, current });
            }
        }
        // Check the whole batch before changing anything: applying effects cannot fail, so a batch that
        // passes this check is applied whole, and one that fails leaves nothing behind.
        let mut last = inner.last_seq;
        for ev in batch.events {
            if ev.seq != last + 1 || !ev.is_durable() {
                return Err(StoreError::OutOfOrder { last, got: ev.seq });
            }
            last = ev.seq;
        }
        let points = project::audience_points(batch.events, batch.command_ends);
        for (ev, at) in batch.events.iter().zip(points) {
            for effect in project::effects(ev) {
                inner.tables.apply(ev.seq, effect);
            }
            // Resolved after the event's own effects: a new thread's first event names the thread.
            let channel = match &ev.audience {
                chat_core::Audience::Channel(c) | chat_core::Audience::ChannelAnd(c, _) => {
                    Some(inner.tables.membership_channel(*c))
                }
                _ => None,
            };
            inner.events.insert(
                ev.seq,
                Logged {
                    event: ev.clone(),
                    channel,
                    at,
                },
            );
            inner.last_seq = ev.seq;
        }
        for (client, seq) in batch.cursors {
            inner.cursors.insert(*client, *seq);
        }
        for n in batch.nonces {
            inner.nonces.insert((n.user, n.nonce.clone()), n.clone());
        }
        drop(inner);
        self.committed.notify_all();
        Ok(())
    }
}

/// Messages of a channel in id order, as history pages them.
fn page(all: &[&StoredMessage], q: &HistoryQuery) -> Vec<StoredMessage> {
    let limit = q.limit.clamp(1, 100);
    let out: Vec<&StoredMessage> = if let Some(before) = q.before {
        let older: Vec<_> = all.iter().filter(|m| m.id < before).copied().collect();
        older[older.len().saturating_sub(limit)..].to_vec()
    } else if let Some(after) = q.after {
        all.iter()
            .filter(|m| m.id > after)
            .take(limit)
            .copied()
            .collect()
    } else if let Some(around) = q.around {
        let half = limit / 2;
        let older: Vec<_> = all.iter().filter(|m| m.id < around).copied().collect();
        let mut out = older[older.len().saturating_sub(half)..].to_vec();
        let room = limit - out.len();
        out.extend(all.iter().filter(|m| m.id >= around).take(room).copied());
        out
    } else {
        all[all.len().saturating_sub(limit)..].to_vec()
    };
    out.into_iter().cloned().collect()
}

impl Store for MemoryStore {
    fn meta(&self) -> DbMeta {
        self.meta
    }

    fn last_seq(&self) -> Result<Seq, StoreError> {
        Ok(self.lock().last_seq)
    }

    fn first_seq(&self) -> Result<Option<Seq>, StoreError> {
        Ok(self.lock().events.keys().next().copied())
    }

    fn append(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        self.append_with(None, batch)
    }

    fn events_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, l)| l.event.clone())
            .collect())
    }

    fn user_stream(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        let inner = self.lock();
        if let Some(first) = inner.events.keys().next().copied()
            && after < first - 1
        {
            return Ok(StreamPage {
                events: Vec::new(),
                next: first - 1,
                reset: true,
            });
        }
        let mut events = Vec::new();
        let mut next = after;
        for (seq, logged) in inner.events.range(after.saturating_add(1)..) {
            if events.len() >= limit {
                break;
            }
            next = *seq;
            if inner.tables.may_see(user, logged) {
                events.push(logged.event.clone());
            }
        }
        Ok(StreamPage {
            events,
            next,
            reset: false,
        })
    }

    fn save_snapshot(&self, seq: Seq, state: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        // Only the newest snapshot is ever read; older ones are dropped as in the SQLite store.
        inner.snapshots.retain(|s, _| *s > seq);
        inner.snapshots.insert(seq, state.to_vec());
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .snapshots
            .iter()
            .next_back()
            .map(|(s, b)| (*s, b.clone())))
    }

    fn save_cursors(&self, cursors: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for (c, s) in cursors {
            inner.cursors.insert(*c, *s);
        }
        Ok(())
    }

    fn cursors(&self) -> Result<Vec<(ClientId, Seq)>, StoreError> {
        Ok(self.lock().cursors.iter().map(|(c, s)| (*c, *s)).collect())
    }

    fn nonce(&self, user: UserId, nonce: &str) -> Result<Option<NonceRecord>, StoreError> {
        Ok(self.lock().nonces.get(&(user, nonce.to_owned())).cloned())
    }

    fn spend_stamp(
        &self,
        key: [u8; 32],
        expires: UnixMillis,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        inner.stamps.retain(|_, e| *e > now);
        Ok(inner.stamps.insert(key, expires).is_none())
    }

    fn unspend_stamp(&self, key: [u8; 32]) -> Result<(), StoreError> {
        self.lock().stamps.remove(&key);
        Ok(())
    }

    fn links(&self) -> Result<Vec<ServerLink>, StoreError> {
        Ok(self.lock().links.values().cloned().collect())
    }

    fn add_link(&self, link: &ServerLink) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.links.contains_key(&link.name) {
            return Ok(false);
        }
        inner.links.insert(link.name.clone(), link.clone());
        Ok(true)
    }

    fn remove_link(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.lock().links.remove(name).is_some())
    }

    fn save_link_cursor(&self, name: &str, cursor: Seq) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .links
            .get_mut(name)
            .map(|l| l.cursor = cursor)
            .is_some())
    }

    fn nonces_since(&self, since: UnixMillis) -> Result<Vec<NonceRecord>, StoreError> {
        Ok(self
            .lock()
            .nonces
            .values()
            .filter(|n| n.at >= since)
            .cloned()
            .collect())
    }

    fn history(&self, query: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let inner = self.lock();
        let all: Vec<&StoredMessage> = inner
            .tables
            .messages
            .values()
            .filter(|m| m.channel == query.channel)
            .collect();
        Ok(page(&all, query))
    }

    fn message(&self, id: MessageId) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self.lock().tables.messages.get(&id).cloned())
    }

    fn attachments(&self, channel: ChannelId) -> Result<Vec<Attachment>, StoreError> {
        Ok(self
            .lock()
            .tables
            .messages
            .values()
            .filter(|m| m.channel == channel)
            .flat_map(|m| m.attachments.iter().cloned())
            .collect())
    }

    fn search(&self, q: &SearchQuery) -> Result<Vec<SearchHit>, StoreError> {
        let terms = text::parse(&q.text);
        if terms.is_empty() || q.channels.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.lock();
        Ok(inner
            .tables
            .messages
            .values()
            .rev()
            .filter(|m| {
                project::searchable(m.kind)
                    && q.channels.contains(&m.channel)
                    && q.author.is_none_or(|a| a == m.author)
                    && q.channel.is_none_or(|c| c == m.channel)
                    && q.space.is_none_or(|s| Some(s) == m.space)
                    && q.before.is_none_or(|b| m.id < b)
                    && q.after.is_none_or(|a| m.id > a)
                    && text::matches(&text::tokens(&m.body), &terms)
            })
            .skip(q.offset)
            .take(q.limit.clamp(1, 100))
            .map(|m| SearchHit {
                snippet: text::highlight(&m.body, &terms),
                message: m.clone(),
            })
            .collect())
    }

    fn enforce_retention(
        &self,
        max_history: usize,
        events_before: UnixMillis,
        nonces_before: UnixMillis,
    ) -> Result<RetentionReport, StoreError> {
        let mut inner = self.lock();
        let mut report = RetentionReport::default();
        let mut per_channel: BTreeMap<ChannelId, Vec<MessageId>> = BTreeMap::new();
        for m in inner.tables.messages.values() {
            per_channel.entry(m.channel).or_default().push(m.id);
        }
        for ids in per_channel.values() {
            for id in &ids[..ids.len().saturating_sub(max_history)] {
                if let Some(m) = inner.tables.messages.remove(id) {
                    report
                        .attachments
                        .extend(m.attachments.into_iter().map(|a| (m.channel, a)));
                }
                report.messages += 1;
            }
        }
        // Events go from the front of the log only, so the retained log stays a contiguous range: up to the
        // first event at or after the cutoff time, and never the newest snapshot's seq or later.
        if let Some(snap) = inner.snapshots.keys().next_back().copied() {
            let old: Vec<Seq> = inner
                .events
                .range(..snap)
                .take_while(|(_, l)| l.event.ts < events_before)
                .map(|(s, _)| *s)
                .collect();
            for s in old {
                inner.events.remove(&s);
                report.events += 1;
            }
        }
        let before = inner.nonces.len();
        inner.nonces.retain(|_, n| n.at >= nonces_before);
        report.nonces = (before - inner.nonces.len()) as u64;
        Ok(report)
    }

    fn backup(&self, _path: &Path) -> Result<(), StoreError> {
        // Nothing in memory is meant to outlive the process; a backup of it is refused, not faked.
        Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "an in-memory store has nothing on disk to back up",
        )))
    }
}

/// The in-memory reference of the cluster contract, for nodes that share one process (engine tests). Its
/// clock is the process's monotonic clock.
impl Cluster for MemoryStore {
    fn try_lead(&self, node: u16, addr: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let mut inner = self.lock();
        let now = Instant::now();
        let term = match &inner.lease {
            Some((term, holder, _, until)) if *until > now => {
                if *holder != node {
                    return Ok(None);
                }
                *term
            }
            Some((term, ..)) => term + 1,
            None => 1,
        };
        inner.lease = Some((term, node, addr.to_owned(), now + ttl));
        Ok(Some(term))
    }

    fn renew_lease(&self, term: u64, ttl: Duration) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match &mut inner.lease {
            Some((t, _, _, until)) if *t == term => {
                *until = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn resign(&self, term: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some((t, _, _, until)) = &mut inner.lease
            && *t == term
        {
            *until = Instant::now();
        }
        Ok(())
    }

    fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let inner = self.lock();
        Ok(inner.lease.as_ref().map(|(term, node, addr, until)| Lease {
            term: *term,
            node: *node,
            addr: addr.clone(),
            live: *until > Instant::now(),
        }))
    }

    fn append_fenced(&self, term: u64, batch: &Batch<'_>) -> Result<(), StoreError> {
        self.append_with(Some(term), batch)
    }

    fn log_after(&self, after: Seq, limit: usize) -> Result<Vec<(Event, Seq)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, l)| (l.event.clone(), l.at))
            .collect())
    }

    fn report_node(
        &self,
        id: u16,
        addr: &str,
        role: NodeRole,
        applied: Seq,
    ) -> Result<(), StoreError> {
        self.lock()
            .nodes
            .insert(id, (addr.to_owned(), role, applied, Instant::now()));
        Ok(())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .nodes
            .iter()
            .map(|(id, (addr, role, applied, at))| NodeRecord {
                id: *id,
                addr: addr.clone(),
                role: *role,
                applied: *applied,
                age_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect())
    }

    fn wait_commit(&self, after: Seq, timeout: Duration) -> Result<Seq, StoreError> {
        let inner = self.lock();
        let (inner, _) = self
            .committed
            .wait_timeout_while(inner, timeout, |i| i.last_seq <= after)
            .unwrap_or_else(|e| e.into_inner());
        Ok(inner.last_seq)
    }

    fn cluster_secret(&self) -> Result<[u8; 32], StoreError> {
        // Derived from the identity: fixed for the store's life, as the database's secret is.
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&self.meta.epoch.to_le_bytes());
        secret[8..16].copy_from_slice(&self.meta.invite_seed.to_le_bytes());
        Ok(secret)
    }

    fn data_dir_mark(&self, proposed: u64) -> Result<u64, StoreError> {
        Ok(*self.lock().data_dir_mark.get_or_insert(proposed))
    }
}
