//! Events as gateway dispatches, rendered once per event and shared by every connection.
//!
//! An event becomes zero or more [`Dispatch`]es, each a finished frame with who receives it (everyone in the
//! event's audience, or one user: the joiner of a space gets its GUILD_CREATE while the others get
//! GUILD_MEMBER_ADD) and which intents let it through. A connection only filters: it never serializes an
//! event itself. A message's content-blanked variant (for connections without MESSAGE_CONTENT) is made from
//! the full frame the first time such a connection needs it, and kept beside it, so each event is serialized
//! at most once per variant however many connections it reaches (SPEC §4). Hot kinds (messages, reactions,
//! typing, deletions) render from the event and the engine's directory alone; rare kinds that need more of
//! the state ask the core once, through the cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::extract::ws::Utf8Bytes;
use chat_core::{
    ChannelId, ChannelKind, Event, EventKind, InviteTarget, MessageKind, SpaceId, Status, UserId,
};
use chat_engine::{Directory, Engine};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::frame::{self, intents};
use crate::model::{self, MessageView};

/// Who among the event's audience gets a dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Who {
    /// Everyone who sees the event.
    All,
    /// Only this user.
    Only(UserId),
    /// Everyone but this user.
    AllBut(UserId),
    /// These users, sorted (made by [`Who::among`]).
    Among(Vec<UserId>),
}

impl Who {
    /// These users (sorted here, so that [`Who::includes`] can search them).
    fn among(mut users: Vec<UserId>) -> Self {
        users.sort_unstable();
        users.dedup();
        Who::Among(users)
    }

    fn includes(&self, user: UserId) -> bool {
        match self {
            Who::All => true,
            Who::Only(u) => *u == user,
            Who::AllBut(u) => *u != user,
            Who::Among(list) => list.binary_search(&user).is_ok(),
        }
    }
}

/// One finished dispatch frame and who gets it.
#[derive(Debug)]
pub(crate) struct Dispatch {
    to: Who,
    /// Intents any one of which lets the dispatch through; 0 = never filtered.
    intent: u64,
    /// The user the dispatch is about: they get it whatever their intents (their own member updates).
    about: Option<UserId>,
    frame: Utf8Bytes,
    /// For messages in guilds: the content-blanked variant and who is shown the content anyway.
    gate: Option<Gate>,
    /// A frame made on demand instead of `frame` (a joiner's GUILD_CREATE).
    deferred: Option<Deferred>,
    /// Whether `frame` holds relative attachment URLs, which each connection makes absolute: looked for once
    /// here, so that the many connections a dispatch goes to do not each scan it.
    attachment_urls: bool,
}

/// A GUILD_CREATE for one user, made when one of their connections first needs it.
#[derive(Debug)]
struct Deferred {
    seq: u64,
    space: SpaceId,
    frame: OnceCell<Option<Utf8Bytes>>,
}

#[derive(Debug)]
struct Gate {
    /// The author and the users the message mentions.
    exempt: Vec<UserId>,
    blanked: OnceLock<Utf8Bytes>,
}

impl Dispatch {
    fn new(to: Who, intent: u64, seq: u64, name: &str, d: &Value) -> Self {
        let frame = frame::dispatch(seq, name, &d.to_string());
        Self {
            to,
            intent,
            about: None,
            attachment_urls: model::has_relative_attachment_urls(&frame),
            frame: frame.into(),
            gate: None,
            deferred: None,
        }
    }

    /// Whether the frames of this dispatch may hold relative attachment URLs to make absolute.
    pub(crate) fn has_attachment_urls(&self) -> bool {
        self.attachment_urls
    }

    fn about(mut self, user: UserId) -> Self {
        self.about = Some(user);
        self
    }

    fn gated(mut self, exempt: Vec<UserId>) -> Self {
        self.gate = Some(Gate {
            exempt,
            blanked: OnceLock::new(),
        });
        self
    }

    fn admits(&self, viewer: UserId, intents: u64) -> bool {
        self.to.includes(viewer)
            && (self.intent == 0 || intents & self.intent != 0 || self.about == Some(viewer))
    }

    /// The frame `viewer`, identified with `intents`, receives; `None` if none. A deferred frame is made
    /// now, once.
    pub(crate) async fn resolve(
        &self,
        ctx: &Context,
        viewer: UserId,
        intents: u64,
    ) -> Option<Utf8Bytes> {
        match &self.deferred {
            None => self.for_viewer(viewer, intents),
            Some(deferred) if self.admits(viewer, intents) => deferred
                .frame
                .get_or_init(|| async {
                    let space = deferred.space;
                    let texts = Arc::clone(&ctx.channel_texts);
                    let guild = ctx
                        .engine
                        .query(move |core| {
                            core.space(space).map(|s| {
                                let threshold = model::LARGE_THRESHOLD_MAX;
                                model::guild_create_cached(core, s, viewer, threshold, &texts)
                            })
                        })
                        .await
                        .ok()
                        .flatten()?;
                    // Written here, off the engine's writer.
                    let text =
                        frame::dispatch_with(deferred.seq, "GUILD_CREATE", guild.len_hint(), |d| {
                            guild.write_json(d);
                        });
                    Some(text.into())
                })
                .await
                .clone(),
            Some(_) => None,
        }
    }

    /// The frame `viewer`, identified with `intents`, receives, for a frame rendered already; `None` if none.
    pub(crate) fn for_viewer(&self, viewer: UserId, intents: u64) -> Option<Utf8Bytes> {
        if self.deferred.is_some() || !self.admits(viewer, intents) {
            return None;
        }
        match &self.gate {
            Some(gate)
                if intents & intents::MESSAGE_CONTENT == 0 && !gate.exempt.contains(&viewer) =>
            {
                Some(gate.blanked.get_or_init(|| blank(&self.frame)).clone())
            }
            _ => Some(self.frame.clone()),
        }
    }

    /// The frame's text (tests).
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.frame
    }
}

/// A message frame without its content: `content`, `embeds`, `attachments` and `components` emptied, as
/// Discord sends messages to bots without the MESSAGE_CONTENT intent. The field order is kept (the JSON map
/// preserves insertion order).
fn blank(frame: &str) -> Utf8Bytes {
    let Ok(mut v) = serde_json::from_str::<Value>(frame) else {
        return frame.into();
    };
    if let Some(d) = v.get_mut("d").and_then(Value::as_object_mut) {
        for (key, empty) in [
            ("content", json!("")),
            ("embeds", json!([])),
            ("attachments", json!([])),
            ("components", json!([])),
        ] {
            if let Some(field) = d.get_mut(key) {
                *field = empty;
            }
        }
    }
    serde_json::to_string(&v).map_or_else(|_| frame.into(), Into::into)
}

/// What one event renders to.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// Held so that a live event's address, its key in the cache, is not reused while the entry lives.
    _event: Arc<Event>,
    pub(crate) dispatches: Vec<Dispatch>,
}

/// Where an entry lives: durable events by seq; live-only ones (typing, presence), which share the seq of
/// the event before them, by the address of the one `Arc` every reader shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Seq(u64),
    Live(usize),
}

type Slot = Arc<OnceCell<Arc<Rendered>>>;

/// Rendered events, most recent first out: each event is rendered by the first connection that needs it while
/// the others wait for that render.
#[derive(Debug)]
pub(crate) struct Cache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<Key, Slot>,
    order: VecDeque<Key>,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(CacheInner::default()),
            capacity: capacity.max(1),
        }
    }

    /// The event's dispatches, rendered now or earlier.
    pub(crate) async fn get(&self, ctx: &Context, event: &Arc<Event>) -> Arc<Rendered> {
        let key = if event.is_durable() {
            Key::Seq(event.seq)
        } else {
            Key::Live(Arc::as_ptr(event) as usize)
        };
        let slot = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            match inner.map.get(&key) {
                Some(slot) => Arc::clone(slot),
                None => {
                    let slot: Slot = Arc::new(OnceCell::new());
                    inner.map.insert(key, Arc::clone(&slot));
                    inner.order.push_back(key);
                    while inner.order.len() > self.capacity {
                        if let Some(old) = inner.order.pop_front() {
                            inner.map.remove(&old);
                        }
                    }
                    slot
                }
            }
        };
        let rendered = slot
            .get_or_init(|| async {
                Arc::new(Rendered {
                    _event: Arc::clone(event),
                    dispatches: render(ctx, event).await,
                })
            })
            .await;
        Arc::clone(rendered)
    }
}

/// What rendering needs besides the event.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) engine: Engine,
    /// The network space (the guild presence updates are sent in), learned at the first READY.
    pub(crate) network: OnceLock<SpaceId>,
    /// Where each invite leads, by code: INVITE_DELETE must name the channel, which its event does not carry
    /// and the core forgets with the invite. Filled with the live invites at start (see
    /// [`Context::learn_invites`]) and by every INVITE_CREATE since, and forgotten at its INVITE_DELETE. A
    /// delete replayed after it left the render cache (or after a restart) finds no entry and sends nothing.
    pub(crate) invites: Mutex<HashMap<String, (ChannelId, Option<SpaceId>)>>,
    /// The JSON text of space channels, shared by every GUILD_CREATE (see [`model::ChannelTexts`]).
    pub(crate) channel_texts: Arc<model::ChannelTexts>,
}

impl Context {
    /// Learns where the core's live invites lead (once, at start).
    pub(crate) async fn learn_invites(&self) {
        let live = self
            .engine
            .query(|core| {
                core.invites()
                    .filter_map(|i| {
                        let place = match i.target {
                            InviteTarget::Space(space, Some(channel)) => (channel, Some(space)),
                            InviteTarget::Channel(channel) => {
                                (channel, core.channel(channel).and_then(|c| c.space))
                            }
                            InviteTarget::Space(_, None) => return None,
                        };
                        Some((i.code.clone(), place))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        let mut invites = self.invites.lock().unwrap_or_else(PoisonError::into_inner);
        for (code, place) in live {
            invites.entry(code).or_insert(place);
        }
    }
}

fn msg_intent(dm: bool) -> u64 {
    if dm {
        intents::DIRECT_MESSAGES
    } else {
        intents::GUILD_MESSAGES
    }
}

fn put_guild(d: &mut Value, space: Option<SpaceId>) {
    if let (Some(space), Some(map)) = (space, d.as_object_mut()) {
        map.insert("guild_id".into(), json!(space.to_string()));
    }
}

/// A presence object as Discord writes it in PRESENCE_UPDATE and in GUILD_CREATE's `presences` (without the
/// guild id); an offline user shows no activity.
pub(crate) fn presence_json(
    user: UserId,
    status: Status,
    activities: &[chat_core::Activity],
) -> Value {
    let name = status_name(status);
    let offline = matches!(status, Status::Offline | Status::Invisible);
    let activities: Vec<Value> = if offline {
        Vec::new()
    } else {
        activities.iter().map(super::frame::activity_json).collect()
    };
    json!({
        "user": { "id": user.to_string() },
        "status": name,
        "activities": activities,
        "client_status": if offline { json!({}) } else { json!({ "desktop": name }) },
    })
}

pub(crate) fn status_name(status: Status) -> &'static str {
    match status {
        Status::Online => "online",
        Status::Idle => "idle",
        Status::Dnd => "dnd",
        Status::Invisible | Status::Offline => "offline",
    }
}

/// Renders one event. Hot kinds use only the event and the directory; the others ask the core.
async fn render(ctx: &Context, event: &Event) -> Vec<Dispatch> {
    let hot = {
        let dir = ctx.engine.directory();
        render_hot(ctx, &dir, event)
    };
    match hot {
        Some(list) => list,
        None => render_cold(ctx, event).await,
    }
}

/// An IRC notice of a channel (a part, kick, mode or topic change...) as a MESSAGE_CREATE with `chatd_kind`,
/// for the connections that asked for them with `chatd_irc` ([`intents::CHATD_IRC`]).
#[allow(clippy::too_many_arguments)]
fn irc_notice(
    dir: &Directory,
    to: Who,
    seq: u64,
    id: chat_core::MessageId,
    channel: ChannelId,
    author: UserId,
    kind: MessageKind,
    body: &str,
    mentions: &[UserId],
) -> Dispatch {
    let view = MessageView::bare(
        id,
        channel,
        model::channel_space(dir, channel),
        author,
        kind,
        body,
        mentions,
    );
    let d = model::message(dir, &view, None);
    Dispatch::new(to, intents::CHATD_IRC, seq, "MESSAGE_CREATE", &d)
}

/// A message object for a system notice that the core records without a `MessageCreated` (joins, pins).
fn notice(
    dir: &Directory,
    id: chat_core::MessageId,
    channel: ChannelId,
    author: UserId,
    kind: MessageKind,
    reply_to: Option<chat_core::MessageId>,
) -> Value {
    let view = MessageView::bare(
        id,
        channel,
        model::channel_space(dir, channel),
        author,
        kind,
        "",
        &[],
    );
    let mut d = model::message(dir, &view, None);
    if let (Some(reply), Some(map)) = (reply_to, d.as_object_mut()) {
        map.insert(
            "message_reference".into(),
            json!({
                "type": 0,
                "message_id": reply.to_string(),
                "channel_id": channel.to_string(),
                "guild_id": view.space.map(|s| s.to_string()),
            }),
        );
    }
    d
}

fn render_hot(ctx: &Context, dir: &Directory, event: &Event) -> Option<Vec<Dispatch>> {
    let seq = event.seq;
    let space_of = |c: ChannelId| model::channel_space(dir, c);
    let list = match &event.kind {
        EventKind::MessageCreated { message: m } => {
            let space = space_of(m.channel);
            let d = model::message(dir, &MessageView::live(m, space), None);
            let mut dispatch = Dispatch::new(
                Who::All,
                msg_intent(space.is_none()),
                seq,
                "MESSAGE_CREATE",
                &d,
            );
            if space.is_some() {
                let mut exempt = m.mentions.clone();
                exempt.push(m.author);
                dispatch = dispatch.gated(exempt);
            }
            vec![dispatch]
        }
        // A join that gives modes (the creator of a network channel gets `+o`) changes the channel's
        // overwrites as libraries see them: rendered from the core, with a CHANNEL_UPDATE.
        EventKind::Joined { modes, .. } if modes.op || modes.voice => return None,
        EventKind::Joined {
            channel,
            user,
            message,
            ..
        } => {
            let space = space_of(*channel);
            let d = notice(dir, *message, *channel, *user, MessageKind::Join, None);
            vec![Dispatch::new(
                Who::All,
                msg_intent(space.is_none()),
                seq,
                "MESSAGE_CREATE",
                &d,
            )]
        }
        EventKind::Parted {
            channel,
            user,
            reason,
            message,
        } => vec![irc_notice(
            dir,
            Who::All,
            seq,
            *message,
            *channel,
            *user,
            MessageKind::Part,
            reason.as_deref().unwrap_or(""),
            &[],
        )],
        EventKind::Kicked {
            channel,
            user,
            by,
            reason,
            message,
        } => vec![irc_notice(
            dir,
            Who::All,
            seq,
            *message,
            *channel,
            *by,
            MessageKind::Kick,
            reason.as_deref().unwrap_or(""),
            &[*user],
        )],
        EventKind::Invited {
            channel,
            user,
            by,
            message,
        } => vec![irc_notice(
            dir,
            Who::All,
            seq,
            *message,
            *channel,
            *by,
            MessageKind::Invite,
            "",
            &[*user],
        )],
        EventKind::MessageDeleted {
            channel, message, ..
        } => {
            let space = space_of(*channel);
            let mut d = json!({ "id": message.to_string(), "channel_id": channel.to_string() });
            put_guild(&mut d, space);
            vec![Dispatch::new(
                Who::All,
                msg_intent(space.is_none()),
                seq,
                "MESSAGE_DELETE",
                &d,
            )]
        }
        EventKind::MessagesDeleted {
            channel, messages, ..
        } => {
            let space = space_of(*channel);
            let ids: Vec<String> = messages.iter().map(ToString::to_string).collect();
            let mut d = json!({ "ids": ids, "channel_id": channel.to_string() });
            put_guild(&mut d, space);
            vec![Dispatch::new(
                Who::All,
                msg_intent(space.is_none()),
                seq,
                "MESSAGE_DELETE_BULK",
                &d,
            )]
        }
        EventKind::ReactionAdded {
            channel,
            message,
            user,
            emoji,
        }
        | EventKind::ReactionRemoved {
            channel,
            message,
            user,
            emoji,
        } => {
            let space = space_of(*channel);
            let name = if matches!(event.kind, EventKind::ReactionAdded { .. }) {
                "MESSAGE_REACTION_ADD"
            } else {
                "MESSAGE_REACTION_REMOVE"
            };
            let mut d = json!({
                "user_id": user.to_string(),
                "channel_id": channel.to_string(),
                "message_id": message.to_string(),
                "emoji": model::emoji(emoji),
                "type": 0,
                "burst": false,
            });
            put_guild(&mut d, space);
            let intent = if space.is_some() {
                intents::GUILD_MESSAGE_REACTIONS
            } else {
                intents::DIRECT_MESSAGE_REACTIONS
            };
            vec![Dispatch::new(Who::All, intent, seq, name, &d)]
        }
        EventKind::Pinned {
            channel,
            message,
            by,
            notice: note,
        } => {
            let space = space_of(*channel);
            let mut pins = json!({
                "channel_id": channel.to_string(),
                "last_pin_timestamp": model::timestamp(event.ts),
            });
            put_guild(&mut pins, space);
            let pins_intent = if space.is_some() {
                intents::GUILDS
            } else {
                intents::DIRECT_MESSAGES
            };
            let d = notice(dir, *note, *channel, *by, MessageKind::Pin, Some(*message));
            vec![
                Dispatch::new(
                    Who::All,
                    msg_intent(space.is_none()),
                    seq,
                    "MESSAGE_CREATE",
                    &d,
                ),
                Dispatch::new(Who::All, pins_intent, seq, "CHANNEL_PINS_UPDATE", &pins),
            ]
        }
        EventKind::Unpinned { channel, .. } => {
            let space = space_of(*channel);
            let mut d =
                json!({ "channel_id": channel.to_string(), "last_pin_timestamp": Value::Null });
            put_guild(&mut d, space);
            let intent = if space.is_some() {
                intents::GUILDS
            } else {
                intents::DIRECT_MESSAGES
            };
            vec![Dispatch::new(
                Who::All,
                intent,
                seq,
                "CHANNEL_PINS_UPDATE",
                &d,
            )]
        }
        EventKind::Typing { user, channel } => {
            let space = space_of(*channel);
            let mut d = json!({
                "channel_id": channel.to_string(),
                "user_id": user.to_string(),
                "timestamp": event.ts / 1000,
            });
            put_guild(&mut d, space);
            let intent = if space.is_some() {
                intents::GUILD_MESSAGE_TYPING
            } else {
                intents::DIRECT_MESSAGE_TYPING
            };
            vec![Dispatch::new(Who::All, intent, seq, "TYPING_START", &d)]
        }
        EventKind::PresenceChanged { .. } | EventKind::PresenceUpdated { .. } => {
            let (user, status, activities) = match &event.kind {
                EventKind::PresenceUpdated {
                    user,
                    status,
                    activities,
                } => (user, status, activities.as_slice()),
                EventKind::PresenceChanged { user, status } => (user, status, &[][..]),
                _ => return Some(Vec::new()),
            };
            let mut d = presence_json(*user, *status, activities);
            put_guild(&mut d, ctx.network.get().copied());
            vec![Dispatch::new(
                Who::All,
                intents::GUILD_PRESENCES,
                seq,
                "PRESENCE_UPDATE",
                &d,
            )]
        }
        EventKind::ChannelCreated { channel, members } => {
            let name = if channel.kind == ChannelKind::Thread {
                "THREAD_CREATE"
            } else {
                "CHANNEL_CREATE"
            };
            match channel.kind {
                ChannelKind::Dm => members
                    .iter()
                    .map(|viewer| {
                        let others: Vec<UserId> =
                            members.iter().copied().filter(|u| u != viewer).collect();
                        let d = model::channel_info(dir, channel, &others);
                        Dispatch::new(Who::Only(*viewer), intents::DIRECT_MESSAGES, seq, name, &d)
                    })
                    .collect(),
                ChannelKind::GroupDm => {
                    let d = model::channel_info(dir, channel, members);
                    vec![Dispatch::new(
                        Who::All,
                        intents::DIRECT_MESSAGES,
                        seq,
                        name,
                        &d,
                    )]
                }
                _ => {
                    let mut d = model::channel_info(dir, channel, &[]);
                    if channel.kind == ChannelKind::Thread
                        && let Some(map) = d.as_object_mut()
                    {
                        map.insert("newly_created".into(), json!(true));
                    }
                    vec![Dispatch::new(Who::All, intents::GUILDS, seq, name, &d)]
                }
            }
        }
        // A space's text channel or category is rendered from the core: its object shows the member
        // overwrites the channel's modes stand for, which the event does not carry (without them a
        // library's cached permissions would lose an operator's rights at every slow-mode change).
        EventKind::ChannelUpdated { channel }
            if channel.space.is_some()
                && matches!(channel.kind, ChannelKind::Text | ChannelKind::Category) =>
        {
            return None;
        }
        EventKind::ChannelUpdated { channel } => {
            let name = if channel.kind == ChannelKind::Thread {
                "THREAD_UPDATE"
            } else {
                "CHANNEL_UPDATE"
            };
            let (intent, members) = match channel.kind {
                ChannelKind::Dm | ChannelKind::GroupDm => (
                    intents::DIRECT_MESSAGES,
                    dir.channel(channel.id)
                        .map(|c| c.dm.clone())
                        .unwrap_or_default(),
                ),
                _ => (intents::GUILDS, Vec::new()),
            };
            let d = model::channel_info(dir, channel, &members);
            vec![Dispatch::new(Who::All, intent, seq, name, &d)]
        }
        EventKind::ChannelDeleted { channel } => {
            let card = dir.channel(*channel);
            let kind = card.map_or(ChannelKind::Text, |c| c.kind);
            let space = card.and_then(|c| c.space);
            let parent = card.and_then(|c| c.parent);
            let mut d = json!({
                "id": channel.to_string(),
                "type": model::channel_type(kind),
                "parent_id": parent.map(|p| p.to_string()),
            });
            put_guild(&mut d, space);
            let name = if kind == ChannelKind::Thread {
                "THREAD_DELETE"
            } else {
                if let (Some(map), Some(card)) = (d.as_object_mut(), card) {
                    map.insert("name".into(), json!(model::channel_name(&card.name)));
                    map.insert("position".into(), json!(0));
                    map.insert("permission_overwrites".into(), json!([]));
                }
                "CHANNEL_DELETE"
            };
            let intent = if space.is_some() {
                intents::GUILDS
            } else {
                intents::DIRECT_MESSAGES
            };
            vec![Dispatch::new(Who::All, intent, seq, name, &d)]
        }
        EventKind::MemberLeft { space, user, .. } => {
            let d = json!({
                "guild_id": space.to_string(),
                "user": model::user_card(*user, dir.user(*user)),
            });
            let gone = json!({ "id": space.to_string(), "unavailable": false });
            vec![
                Dispatch::new(
                    Who::AllBut(*user),
                    intents::GUILD_MEMBERS,
                    seq,
                    "GUILD_MEMBER_REMOVE",
                    &d,
                ),
                Dispatch::new(
                    Who::Only(*user),
                    intents::GUILDS,
                    seq,
                    "GUILD_DELETE",
                    &gone,
                ),
            ]
        }
        EventKind::SpaceBanned { space, user, .. } | EventKind::SpaceUnbanned { space, user } => {
            let d = json!({
                "guild_id": space.to_string(),
                "user": model::user_card(*user, dir.user(*user)),
            });
            let name = if matches!(event.kind, EventKind::SpaceBanned { .. }) {
                "GUILD_BAN_ADD"
            } else {
                "GUILD_BAN_REMOVE"
            };
            vec![Dispatch::new(
                Who::All,
                intents::GUILD_MODERATION,
                seq,
                name,
                &d,
            )]
        }
        EventKind::SpaceDeleted { space } => {
            let d = json!({ "id": space.to_string(), "unavailable": false });
            vec![Dispatch::new(
                Who::All,
                intents::GUILDS,
                seq,
                "GUILD_DELETE",
                &d,
            )]
        }
        EventKind::RoleUpserted {
            space,
            role,
            created,
        } => {
            let name = if *created {
                "GUILD_ROLE_CREATE"
            } else {
                "GUILD_ROLE_UPDATE"
            };
            let d = json!({ "guild_id": space.to_string(), "role": model::role(role) });
            vec![Dispatch::new(Who::All, intents::GUILDS, seq, name, &d)]
        }
        EventKind::RoleDeleted { space, role } => {
            let d = json!({ "guild_id": space.to_string(), "role_id": role.to_string() });
            vec![Dispatch::new(
                Who::All,
                intents::GUILDS,
                seq,
                "GUILD_ROLE_DELETE",
                &d,
            )]
        }
        EventKind::ReadAck {
            user,
            channel,
            message,
            mention_count,
        } => {
            let d = json!({
                "channel_id": channel.to_string(),
                "message_id": message.to_string(),
                "mention_count": mention_count,
                "version": seq,
            });
            vec![Dispatch::new(Who::Only(*user), 0, seq, "MESSAGE_ACK", &d)]
        }
        EventKind::InviteCreated { invite } => {
            let (channel, space) = match invite.target {
                InviteTarget::Space(space, Some(channel)) => (channel, Some(space)),
                InviteTarget::Channel(channel) => (channel, space_of(channel)),
                // An invite to a space without a channel has no channel_id to show, which every library
                // requires on INVITE_CREATE.
                InviteTarget::Space(_, None) => return Some(Vec::new()),
            };
            let max_age = invite
                .expires_at
                .map_or(0, |at| at.saturating_sub(invite.created_at) / 1000);
            let mut d = json!({
                "channel_id": channel.to_string(),
                "code": invite.code,
                "created_at": model::timestamp(invite.created_at),
                "inviter": model::user_card(invite.creator, dir.user(invite.creator)),
                "max_age": max_age,
                "max_uses": invite.max_uses,
                "temporary": false,
                "uses": invite.uses,
            });
            put_guild(&mut d, space);
            ctx.invites
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(invite.code.clone(), (channel, space));
            vec![Dispatch::new(
                Who::All,
                intents::GUILD_INVITES,
                seq,
                "INVITE_CREATE",
                &d,
            )]
        }
        EventKind::InviteDeleted { code } => {
            // Forgotten with the invite; a replay of this event usually finds it in the render cache.
            let known = ctx
                .invites
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(code);
            match known {
                Some((channel, space)) => {
                    let mut d = json!({ "channel_id": channel.to_string(), "code": code });
                    put_guild(&mut d, space);
                    vec![Dispatch::new(
                        Who::All,
                        intents::GUILD_INVITES,
                        seq,
                        "INVITE_DELETE",
                        &d,
                    )]
                }
                None => Vec::new(),
            }
        }
        EventKind::MessageEdited { .. }
        | EventKind::TopicChanged { .. }
        | EventKind::ModeChanged { .. }
        | EventKind::OverwriteSet { .. }
        | EventKind::OverwriteDeleted { .. }
        | EventKind::ChannelAccess { .. }
        | EventKind::ChannelListed { .. }
        | EventKind::SpaceUpdated { .. }
        | EventKind::MemberJoined { .. }
        | EventKind::MemberUpdated { .. }
        | EventKind::NickChanged { .. }
        | EventKind::Quit { .. }
        | EventKind::ProfileUpdated { .. } => return None,
        // Nothing in Discord's protocol stands for the rest (credentials, IRC parts and quits of network
        // channels that stay listed, bans, away messages, invite bookkeeping; a space's creation shows
        // through its owner's MemberJoined).
        _ => Vec::new(),
    };
    Some(list)
}

/// CHANNEL_UPDATE (THREAD_UPDATE for a thread) of a space channel as the core has it now.
async fn channel_update(ctx: &Context, seq: u64, channel: ChannelId) -> Option<Dispatch> {
    let (kind, d) = ctx
        .engine
        .query(move |core| {
            let ch = core.channel(channel)?;
            ch.space?;
            Some((ch.kind, model::shared_channel(core, ch)))
        })
        .await
        .ok()
        .flatten()?;
    let name = if kind == ChannelKind::Thread {
        "THREAD_UPDATE"
    } else {
        "CHANNEL_UPDATE"
    };
    Some(Dispatch::new(Who::All, intents::GUILDS, seq, name, &d))
}

/// The kinds that need the core's state (or the store's copy of a message).
async fn render_cold(ctx: &Context, event: &Event) -> Vec<Dispatch> {
    let seq = event.seq;
    match &event.kind {
        EventKind::MessageEdited {
            channel,
            message,
            author,
            body,
            mentions,
            edited_at,
            embeds,
            ..
        } => {
            let stored = ctx.engine.message(*message).await.ok().flatten();
            let dir = ctx.engine.directory();
            let space = model::channel_space(&dir, *channel);
            let mut view = match &stored {
                Some(m) => MessageView::stored(m),
                None => MessageView::bare(
                    *message,
                    *channel,
                    space,
                    *author,
                    MessageKind::Message,
                    body,
                    mentions,
                ),
            };
            // This event's edit, even if the store already holds a later one.
            view.body = body;
            view.mentions = mentions;
            view.edited_at = Some(*edited_at);
            if embeds.is_some() {
                view.embeds = embeds.as_deref();
            }
            let d = model::message(&dir, &view, None);
            let mut exempt = mentions.clone();
            exempt.push(*author);
            let dispatch = Dispatch::new(
                Who::All,
                msg_intent(space.is_none()),
                seq,
                "MESSAGE_UPDATE",
                &d,
            );
            vec![if space.is_some() {
                dispatch.gated(exempt)
            } else {
                dispatch
            }]
        }
        EventKind::Joined {
            channel,
            user,
            message,
            ..
        } => {
            let joined = {
                let dir = ctx.engine.directory();
                let space = model::channel_space(&dir, *channel);
                let d = notice(&dir, *message, *channel, *user, MessageKind::Join, None);
                Dispatch::new(
                    Who::All,
                    msg_intent(space.is_none()),
                    seq,
                    "MESSAGE_CREATE",
                    &d,
                )
            };
            let mut list = vec![joined];
            list.extend(channel_update(ctx, seq, *channel).await);
            list
        }
        EventKind::TopicChanged { channel, .. }
        | EventKind::ModeChanged { channel, .. }
        | EventKind::OverwriteSet { channel, .. }
        | EventKind::OverwriteDeleted { channel, .. }
        | EventKind::ChannelUpdated {
            channel: chat_core::ChannelInfo { id: channel, .. },
        } => {
            let mut list: Vec<Dispatch> = channel_update(ctx, seq, *channel)
                .await
                .into_iter()
                .collect();
            let dir = ctx.engine.directory();
            match &event.kind {
                EventKind::TopicChanged {
                    channel,
                    topic,
                    by,
                    message,
                } => list.push(irc_notice(
                    &dir,
                    Who::All,
                    seq,
                    *message,
                    *channel,
                    *by,
                    MessageKind::Topic,
                    topic.as_ref().map_or("", |t| t.text.as_str()),
                    &[],
                )),
                EventKind::ModeChanged {
                    channel,
                    by,
                    changes,
                    message,
                } => list.push(irc_notice(
                    &dir,
                    Who::All,
                    seq,
                    *message,
                    *channel,
                    *by,
                    MessageKind::Mode,
                    &chat_core::ModeChange::line(changes),
                    &[],
                )),
                _ => {}
            }
            list
        }
        EventKind::ChannelAccess {
            channel,
            added,
            removed,
        } => {
            let id = *channel;
            let d = ctx
                .engine
                .query(move |core| {
                    let ch = core.channel(id)?;
                    let space = core.space(ch.space?)?;
                    // Network channels stay listed to everyone whatever their membership.
                    if space.network {
                        return None;
                    }
                    Some(model::shared_channel(core, ch))
                })
                .await
                .ok()
                .flatten();
            let Some(d) = d else { return Vec::new() };
            let mut list = Vec::new();
            if !added.is_empty() {
                list.push(Dispatch::new(
                    Who::among(added.clone()),
                    intents::GUILDS,
                    seq,
                    "CHANNEL_CREATE",
                    &d,
                ));
            }
            if !removed.is_empty() {
                list.push(Dispatch::new(
                    Who::among(removed.clone()),
                    intents::GUILDS,
                    seq,
                    "CHANNEL_DELETE",
                    &d,
                ));
            }
            list
        }
        EventKind::ChannelListed { channel, listed } => {
            // The recipients are the network's members outside the channel: it enters or leaves their list.
            let id = *channel;
            let d = ctx
                .engine
                .query(move |core| {
                    let ch = core.channel(id)?;
                    ch.space?;
                    Some(model::shared_channel(core, ch))
                })
                .await
                .ok()
                .flatten();
            let name = if *listed {
                "CHANNEL_CREATE"
            } else {
                "CHANNEL_DELETE"
            };
            d.map(|d| vec![Dispatch::new(Who::All, intents::GUILDS, seq, name, &d)])
                .unwrap_or_default()
        }
        EventKind::SpaceUpdated { space } => {
            let id = space.id;
            let d = ctx
                .engine
                .query(move |core| core.space(id).map(model::guild))
                .await
                .ok()
                .flatten();
            d.map(|d| {
                vec![Dispatch::new(
                    Who::All,
                    intents::GUILDS,
                    seq,
                    "GUILD_UPDATE",
                    &d,
                )]
            })
            .unwrap_or_default()
        }
        EventKind::MemberJoined { space, user, .. } => {
            let (space, user) = (*space, *user);
            let member = guild_member(ctx, space, user).await;
            let mut list: Vec<Dispatch> = member
                .map(|member| {
                    Dispatch::new(
                        Who::AllBut(user),
                        intents::GUILD_MEMBERS,
                        seq,
                        "GUILD_MEMBER_ADD",
                        &member,
                    )
                })
                .into_iter()
                .collect();
            // The joiner's GUILD_CREATE lists every member: it is built only if a connection of the joiner
            // asks for it (a new account joins the network before it can have a connection).
            list.push(Dispatch {
                to: Who::Only(user),
                intent: intents::GUILDS,
                about: None,
                frame: Utf8Bytes::from_static(""),
                gate: None,
                attachment_urls: false,
                deferred: Some(Deferred {
                    seq,
                    space,
                    frame: OnceCell::new(),
                }),
            });
            list
        }
        EventKind::MemberUpdated { space, user, .. } => {
            let (space, user) = (*space, *user);
            member_update(ctx, seq, space, user)
                .await
                .into_iter()
                .collect()
        }
        EventKind::NickChanged { user, .. } => {
            let user = *user;
            let network = ctx.engine.query(|core| core.network()).await.ok();
            let me = ctx
                .engine
                .query(move |core| core.user(user).map(model::user))
                .await
                .ok()
                .flatten();
            let mut list: Vec<Dispatch> = me
                .map(|d| Dispatch::new(Who::Only(user), 0, seq, "USER_UPDATE", &d))
                .into_iter()
                .collect();
            if let Some(network) = network {
                list.extend(member_update(ctx, seq, network, user).await);
            }
            if let EventKind::NickChanged { new, notices, .. } = &event.kind {
                list.extend(channel_notices(ctx, seq, user, MessageKind::Nick, new, notices).await);
            }
            list
        }
        EventKind::Quit {
            user,
            reason,
            notices,
            ..
        } => {
            let reason = reason.as_deref().unwrap_or("");
            channel_notices(ctx, seq, *user, MessageKind::Quit, reason, notices).await
        }
        EventKind::ProfileUpdated { user, .. } => {
            let user = *user;
            let found = ctx
                .engine
                .query(move |core| {
                    core.user(user)
                        .map(|u| (model::user(u), u.spaces().collect::<Vec<_>>()))
                })
                .await
                .ok()
                .flatten();
            let Some((me, spaces)) = found else {
                return Vec::new();
            };
            let mut list = vec![Dispatch::new(Who::Only(user), 0, seq, "USER_UPDATE", &me)];
            // The event's audience is the user's peers: they see the new name or avatar on the member.
            for space in spaces {
                list.extend(member_update(ctx, seq, space, user).await);
            }
            list
        }
        _ => Vec::new(),
    }
}

/// The notices a nick change or a quit leaves in each of the user's channels, each to that channel's members
/// (and the user): the event's audience spans all their channels, and a channel's notice must not tell
/// others of a channel they are not in.
async fn channel_notices(
    ctx: &Context,
    seq: u64,
    user: UserId,
    kind: MessageKind,
    body: &str,
    notices: &[(ChannelId, chat_core::MessageId)],
) -> Vec<Dispatch> {
    if notices.is_empty() {
        return Vec::new();
    }
    let channels: Vec<ChannelId> = notices.iter().map(|(c, _)| *c).collect();
    let members = ctx
        .engine
        .query(move |core| {
            channels
                .iter()
                .map(|c| {
                    let mut who: Vec<UserId> = core.members(*c).map(|(u, _)| u).collect();
                    who.push(user);
                    who
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
    let dir = ctx.engine.directory();
    notices
        .iter()
        .zip(members)
        .map(|((channel, message), who)| {
            irc_notice(
                &dir,
                Who::among(who),
                seq,
                *message,
                *channel,
                user,
                kind,
                body,
                &[],
            )
        })
        .collect()
}

/// A member object with its `guild_id`, as the core has the member now (`None` if not a member).
async fn guild_member(ctx: &Context, space: SpaceId, user: UserId) -> Option<Value> {
    ctx.engine
        .query(move |core| {
            let s = core.space(space)?;
            let m = s.member(user)?;
            let mut d = model::member(core, s, m);
            if let Some(map) = d.as_object_mut() {
                map.insert("guild_id".into(), json!(space.to_string()));
            }
            Some(d)
        })
        .await
        .ok()
        .flatten()
}

/// GUILD_MEMBER_UPDATE for a member as the core has them now; the member gets it whatever their intents.
async fn member_update(ctx: &Context, seq: u64, space: SpaceId, user: UserId) -> Option<Dispatch> {
    let d = guild_member(ctx, space, user).await?;
    Some(
        Dispatch::new(
            Who::All,
            intents::GUILD_MEMBERS,
            seq,
            "GUILD_MEMBER_UPDATE",
            &d,
        )
        .about(user),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u64) -> UserId {
        UserId::from_raw(n).expect("non-zero")
    }

    #[test]
    fn content_is_blanked_without_the_intent_except_for_the_exempt() {
        let d = json!({"id": "1", "content": "secret", "embeds": [{"a": 1}], "attachments": [], "components": [], "type": 0});
        let dispatch = Dispatch::new(Who::All, intents::GUILD_MESSAGES, 5, "MESSAGE_CREATE", &d)
            .gated(vec![user(7)]);
        let full = dispatch
            .for_viewer(user(1), intents::GUILD_MESSAGES | intents::MESSAGE_CONTENT)
            .expect("sent");
        assert!(full.contains("secret"));
        let blank = dispatch
            .for_viewer(user(1), intents::GUILD_MESSAGES)
            .expect("sent");
        assert_eq!(
            blank.as_str(),
            r#"{"op":0,"s":5,"t":"MESSAGE_CREATE","d":{"id":"1","content":"","embeds":[],"attachments":[],"components":[],"type":0}}"#
        );
        let author = dispatch
            .for_viewer(user(7), intents::GUILD_MESSAGES)
            .expect("sent");
        assert!(author.contains("secret"));
        assert!(dispatch.for_viewer(user(1), intents::GUILDS).is_none());
        assert!(
            dispatch
                .text()
                .starts_with(r#"{"op":0,"s":5,"t":"MESSAGE_CREATE","d":"#)
        );
    }

    #[test]
    fn who_and_about() {
        let d = json!({});
        let only = Dispatch::new(Who::Only(user(2)), 0, 1, "X", &d);
        assert!(only.for_viewer(user(2), 0).is_some());
        assert!(only.for_viewer(user(3), 0).is_none());
        let about = Dispatch::new(Who::All, intents::GUILD_MEMBERS, 1, "X", &d).about(user(2));
        assert!(about.for_viewer(user(2), 0).is_some());
        assert!(about.for_viewer(user(3), 0).is_none());
        let but = Dispatch::new(Who::AllBut(user(2)), 0, 1, "X", &d);
        assert!(but.for_viewer(user(2), 0).is_none());
        assert!(but.for_viewer(user(3), 0).is_some());
    }
}
