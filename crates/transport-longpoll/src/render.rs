//! Events and stored messages as the long-poll API's JSON: `{seq, id, ts, type, from, to, body, meta, ...}`.
//!
//! An event renders the same for every recipient, so each durable event is rendered once and the bytes are
//! kept in a small cache keyed by seq: a message to a channel of a thousand parked polls is serialized once,
//! not a thousand times (SPEC §4). Names come from the engine's [`Directory`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use chat_core::{
    ChannelId, ChannelKind, ClientEnd, Event, EventKind, LeaveReason, MessageKind, ModeChange, Seq,
    Status, UnixMillis, UserId,
};
use chat_engine::Directory;
use chat_engine::StoredMessage;
use serde::Serialize;
use serde_json::value::RawValue;

/// One event or message on the wire. Absent fields are left out.
#[derive(Serialize, Default)]
pub(crate) struct Wire {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    pub(crate) ts: String,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) to: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) meta: Option<Box<RawValue>>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mentions: Option<u32>,
    // History only: the message's state now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) edited: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pinned: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reactions: Option<std::collections::BTreeMap<String, Vec<Arc<str>>>>,
}

/// Unix milliseconds as ISO 8601 UTC with milliseconds (`2026-11-23T08:00:00.000Z`).
pub(crate) fn iso(ms: UnixMillis) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// The stored meta as raw JSON (the transport checked it was an object when it came in); `{}` when absent.
fn meta(meta: Option<&str>) -> Option<Box<RawValue>> {
    let text = meta.unwrap_or("{}");
    RawValue::from_string(text.to_owned())
        .ok()
        .or_else(|| RawValue::from_string("{}".to_owned()).ok())
}

pub(crate) fn status_name(status: Status) -> &'static str {
    match status {
        Status::Online => "online",
        Status::Idle => "idle",
        Status::Dnd => "dnd",
        Status::Invisible => "invisible",
        Status::Offline => "offline",
    }
}

/// How a channel is named in `to`: `#name` for a network channel, the other user's nick for a DM (seen from
/// `actor`), the name for anything else.
pub(crate) fn channel_to(dir: &Directory, channel: ChannelId, actor: Option<UserId>) -> Arc<str> {
    match dir.channel(channel) {
        Some(card) if card.kind == ChannelKind::Dm => {
            let other = card
                .dm
                .iter()
                .copied()
                .filter(|u| Some(*u) != actor)
                // Without an actor, the lowest id: the directory's order of the pair is not kept across a
                // restart, and an event must render the same before and after one.
                .min()
                .or_else(|| card.dm.first().copied());
            match other {
                Some(u) => dir.nick(u),
                None => channel.to_string().into(),
            }
        }
        Some(card) => Arc::clone(&card.name),
        None => channel.to_string().into(),
    }
}

fn mode_text(dir: &Directory, changes: &[ModeChange]) -> (String, Vec<String>) {
    let mut modes = String::new();
    let mut args = Vec::new();
    let mut sign = None;
    for change in changes {
        let (on, letter, arg) = match change {
            ModeChange::Flag { letter, on } => (*on, *letter, None),
            ModeChange::Key(key) => (key.is_some(), 'k', key.clone()),
            ModeChange::Limit(limit) => (limit.is_some(), 'l', limit.map(|l| l.to_string())),
            ModeChange::Ban { mask, on } => (*on, 'b', Some(mask.clone())),
            ModeChange::Op { user, on } => (*on, 'o', Some(dir.nick(*user).to_string())),
            ModeChange::Voice { user, on } => (*on, 'v', Some(dir.nick(*user).to_string())),
        };
        if sign != Some(on) {
            modes.push(if on { '+' } else { '-' });
            sign = Some(on);
        }
        modes.push(letter);
        args.extend(arg);
    }
    (modes, args)
}

/// Renders one event. `None` for events that clients of this API never see (credentials, for instance).
pub(crate) fn event(dir: &Directory, event: &Event) -> Option<Wire> {
    let nick = |u: UserId| Some(dir.nick(u));
    let mut w = Wire {
        seq: Some(event.seq),
        ts: iso(event.ts),
        ..Wire::default()
    };
    let on = |w: &mut Wire, channel: ChannelId, actor: Option<UserId>| {
        w.to = Some(channel_to(dir, channel, actor));
        w.channel = Some(channel.to_string());
    };
    match &event.kind {
        EventKind::MessageCreated { message: m } => {
            w.kind = match m.kind {
                MessageKind::Message => "message",
                MessageKind::Action => "action",
                MessageKind::Notice => "notice",
                _ => "system",
            };
            w.id = Some(m.id.to_string());
            w.from = nick(m.author);
            on(&mut w, m.channel, Some(m.author));
            w.body = Some(m.body.clone());
            w.meta = meta(m.meta.as_deref());
            w.reference = m.reply_to.map(|r| r.to_string());
        }
        EventKind::Joined {
            channel,
            user,
            message,
            ..
        } => {
            w.kind = "join";
            w.id = Some(message.to_string());
            w.from = nick(*user);
            on(&mut w, *channel, Some(*user));
        }
        EventKind::Parted {
            channel,
            user,
            reason,
            message,
        } => {
            w.kind = "part";
            w.id = Some(message.to_string());
            w.from = nick(*user);
            on(&mut w, *channel, Some(*user));
            w.body = Some(reason.clone().unwrap_or_default());
        }
        EventKind::Quit { user, reason, .. } => {
            w.kind = "quit";
            w.from = nick(*user);
            w.body = Some(reason.clone().unwrap_or_default());
        }
        EventKind::Kicked {
            channel,
            user,
            by,
            reason,
            message,
        } => {
            w.kind = "kick";
            w.id = Some(message.to_string());
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            w.target = nick(*user);
            w.body = Some(reason.clone().unwrap_or_default());
        }
        EventKind::TopicChanged {
            channel,
            topic,
            by,
            message,
        } => {
            w.kind = "topic";
            w.id = Some(message.to_string());
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            w.body = Some(topic.as_ref().map(|t| t.text.clone()).unwrap_or_default());
        }
        EventKind::ModeChanged {
            channel,
            by,
            changes,
            message,
        } => {
            w.kind = "mode";
            w.id = Some(message.to_string());
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            let (modes, args) = mode_text(dir, changes);
            w.body = Some(modes);
            w.args = Some(args);
        }
        EventKind::NickChanged { old, new, .. } => {
            w.kind = "nick";
            w.from = Some(old.as_str().into());
            w.body = Some(new.clone());
        }
        EventKind::Invited {
            channel,
            user,
            by,
            message,
        } => {
            w.kind = "invite";
            w.id = Some(message.to_string());
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            w.target = nick(*user);
        }
        EventKind::MessageEdited {
            channel,
            message,
            author,
            body,
            meta: m,
            edited_at,
            ..
        } => {
            w.kind = "edit";
            w.from = nick(*author);
            on(&mut w, *channel, Some(*author));
            w.reference = Some(message.to_string());
            w.body = Some(body.clone());
            w.meta = meta(m.as_deref());
            w.edited = Some(iso(*edited_at));
        }
        EventKind::MessageDeleted {
            channel,
            message,
            by,
        } => {
            w.kind = "delete";
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            w.reference = Some(message.to_string());
        }
        EventKind::MessagesDeleted {
            channel,
            messages,
            by,
        } => {
            w.kind = "delete";
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            w.args = Some(messages.iter().map(ToString::to_string).collect());
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
            w.kind = if matches!(event.kind, EventKind::ReactionAdded { .. }) {
                "react"
            } else {
                "unreact"
            };
            w.from = nick(*user);
            on(&mut w, *channel, Some(*user));
            w.reference = Some(message.to_string());
            w.body = Some(emoji.clone());
        }
        EventKind::Pinned {
            channel,
            message,
            by,
            notice,
        } => {
            w.kind = "pin";
            w.id = Some(notice.to_string());
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            w.reference = Some(message.to_string());
        }
        EventKind::Unpinned {
            channel,
            message,
            by,
        } => {
            w.kind = "unpin";
            w.from = nick(*by);
            on(&mut w, *channel, Some(*by));
            w.reference = Some(message.to_string());
        }
        EventKind::Typing { user, channel } => {
            w.kind = "typing";
            w.seq = None;
            w.from = nick(*user);
            on(&mut w, *channel, Some(*user));
        }
        // Activities are the Discord door's: here a presence is its status.
        EventKind::PresenceChanged { user, status }
        | EventKind::PresenceUpdated { user, status, .. } => {
            w.kind = "presence";
            w.seq = None;
            w.from = nick(*user);
            w.body = Some(status_name(*status).into());
        }
        EventKind::AwayChanged { user, message } => {
            w.kind = "away";
            w.from = nick(*user);
            w.body = Some(message.clone().unwrap_or_default());
        }
        EventKind::ReadAck {
            user,
            channel,
            message,
            mention_count,
        } => {
            w.kind = "read";
            w.from = nick(*user);
            on(&mut w, *channel, Some(*user));
            w.reference = Some(message.to_string());
            w.mentions = Some(*mention_count);
        }
        EventKind::ChannelCreated { channel, members } => {
            w.kind = "channel";
            // A DM's first member is the one who opened it: `to` is the other side, as for its messages.
            on(&mut w, channel.id, members.first().copied());
            w.body = Some("create".into());
            w.args = Some(vec![channel.kind.name().into()]);
        }
        EventKind::ChannelUpdated { channel } => {
            w.kind = "channel";
            on(&mut w, channel.id, None);
            w.body = Some("update".into());
        }
        EventKind::ChannelDeleted { channel } => {
            w.kind = "channel";
            on(&mut w, *channel, None);
            w.body = Some("delete".into());
        }
        EventKind::ChannelListed { channel, listed } => {
            w.kind = "channel";
            on(&mut w, *channel, None);
            w.body = Some(if *listed { "listed" } else { "unlisted" }.into());
        }
        EventKind::ChannelAccess {
            channel,
            added,
            removed,
        } => {
            w.kind = "channel";
            on(&mut w, *channel, None);
            w.body = Some("access".into());
            let plus = added.iter().map(|u| format!("+{}", dir.nick(*u)));
            let minus = removed.iter().map(|u| format!("-{}", dir.nick(*u)));
            w.args = Some(plus.chain(minus).collect());
        }
        EventKind::OverwriteSet { channel, .. } | EventKind::OverwriteDeleted { channel, .. } => {
            w.kind = "channel";
            on(&mut w, *channel, None);
            w.body = Some("permissions".into());
        }
        EventKind::SpaceCreated { space, .. } | EventKind::SpaceUpdated { space } => {
            w.kind = "space";
            w.to = Some(space.name.as_str().into());
            w.target = Some(space.id.to_string().into());
            w.body = Some(
                if matches!(event.kind, EventKind::SpaceCreated { .. }) {
                    "create"
                } else {
                    "update"
                }
                .into(),
            );
        }
        EventKind::SpaceDeleted { space } => {
            w.kind = "space";
            w.to = dir.space(*space).map(|s| Arc::clone(&s.name));
            w.target = Some(space.to_string().into());
            w.body = Some("delete".into());
        }
        EventKind::MemberJoined { space, user, .. } => {
            member(&mut w, dir, *space, *user, *user, "join");
        }
        EventKind::MemberLeft {
            space,
            user,
            reason,
        } => {
            let (by, what) = match reason {
                LeaveReason::Left | LeaveReason::Gone => (*user, "leave"),
                LeaveReason::Kicked { by, reason } => {
                    w.args = reason.clone().map(|r| vec![r]);
                    (*by, "kick")
                }
            };
            member(&mut w, dir, *space, by, *user, what);
        }
        EventKind::MemberUpdated {
            space, user, roles, ..
        } => {
            member(&mut w, dir, *space, *user, *user, "update");
            w.from = None;
            w.args = Some(roles.iter().map(ToString::to_string).collect());
        }
        EventKind::SpaceBanned {
            space,
            user,
            by,
            reason,
        } => {
            member(&mut w, dir, *space, *by, *user, "ban");
            w.args = reason.clone().map(|r| vec![r]);
        }
        EventKind::SpaceUnbanned { space, user } => {
            member(&mut w, dir, *space, *user, *user, "unban");
            w.from = None;
        }
        EventKind::RoleUpserted {
            space,
            role,
            created,
        } => {
            w.kind = "role";
            w.to = dir.space(*space).map(|s| Arc::clone(&s.name));
            w.target = Some(role.id.to_string().into());
            w.body = Some(if *created { "create" } else { "update" }.into());
            w.args = Some(vec![role.name.clone()]);
        }
        EventKind::RoleDeleted { space, role } => {
            w.kind = "role";
            w.to = dir.space(*space).map(|s| Arc::clone(&s.name));
            w.target = Some(role.to_string().into());
            w.body = Some("delete".into());
        }
        EventKind::InviteCreated { invite } => {
            w.kind = "system";
            w.body = Some("invite_created".into());
            w.args = Some(vec![invite.code.clone()]);
        }
        EventKind::InviteUsed { code, user } => {
            w.kind = "system";
            w.from = nick(*user);
            w.body = Some("invite_used".into());
            w.args = Some(vec![code.clone()]);
        }
        EventKind::InviteDeleted { code } => {
            w.kind = "system";
            w.body = Some("invite_deleted".into());
            w.args = Some(vec![code.clone()]);
        }
        EventKind::ProfileUpdated { user, .. } => {
            w.kind = "system";
            w.from = nick(*user);
            w.body = Some("profile_updated".into());
        }
        EventKind::PasswordChanged { user, .. } => {
            w.kind = "system";
            w.from = nick(*user);
            w.body = Some("password_changed".into());
        }
        EventKind::ClientCreated { name, user, .. } => {
            w.kind = "system";
            w.from = nick(*user);
            w.body = Some("client_created".into());
            w.args = Some(vec![name.clone()]);
        }
        EventKind::ClientRemoved { user, reason, .. } => {
            w.kind = "system";
            w.from = nick(*user);
            w.body = Some("client_removed".into());
            w.args = Some(vec![
                match reason {
                    ClientEnd::Logout => "logout",
                    ClientEnd::Expired => "expired",
                    ClientEnd::Revoked => "revoked",
                }
                .into(),
            ]);
        }
        EventKind::UserCreated { .. } => return None,
        // A kind added to the core later renders as a bare system event rather than failing the stream.
        _ => {
            w.kind = "system";
        }
    }
    Some(w)
}

fn member(
    w: &mut Wire,
    dir: &Directory,
    space: chat_core::SpaceId,
    from: UserId,
    user: UserId,
    what: &str,
) {
    w.kind = "member";
    w.from = Some(dir.nick(from));
    w.to = dir.space(space).map(|s| Arc::clone(&s.name));
    w.target = Some(dir.nick(user));
    w.body = Some(what.into());
}

/// Renders a message from history or search.
pub(crate) fn stored(dir: &Directory, m: &StoredMessage) -> Wire {
    // System messages (join, part, topic...) carry a body only when it says something (a reason, a topic),
    // and never a meta: only what people write has one.
    let written = m.kind.is_user_written();
    Wire {
        seq: Some(m.seq),
        id: Some(m.id.to_string()),
        ts: iso(m.ts),
        kind: m.kind.name(),
        from: Some(dir.nick(m.author)),
        to: Some(channel_to(dir, m.channel, Some(m.author))),
        channel: Some(m.channel.to_string()),
        body: (written || !m.body.is_empty()).then(|| m.body.clone()),
        meta: if written {
            meta(m.meta.as_deref())
        } else {
            None
        },
        reference: m.reply_to.map(|r| r.to_string()),
        edited: m.edited_at.map(iso),
        pinned: Some(m.pinned),
        reactions: (!m.reactions.is_empty()).then(|| {
            m.reactions
                .iter()
                .map(|(emoji, users)| (emoji.clone(), users.iter().map(|u| dir.nick(*u)).collect()))
                .collect()
        }),
        ..Wire::default()
    }
}

/// Rendered durable events by seq, so that each is serialized once however many readers it reaches.
#[derive(Debug)]
pub(crate) struct Cache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<Seq, Option<Arc<str>>>,
    order: VecDeque<Seq>,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(CacheInner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Whether the event is rendered already.
    /// The event's JSON, rendered now or earlier; `None` if this API does not show it.
    pub(crate) fn render(&self, engine: &chat_engine::Engine, event: &Event) -> Option<Arc<str>> {
        if !event.is_durable() {
            // Live-only events share their seq with the event before them, so they are not cached (and are
            // sent to few readers: typing to a channel, presence to peers).
            return to_json(&engine.directory(), event);
        }
        if let Some(hit) = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(&event.seq)
        {
            return hit.clone();
        }
        let json = to_json(&engine.directory(), event);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.map.insert(event.seq, json.clone()).is_none() {
            inner.order.push_back(event.seq);
            while inner.order.len() > self.capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.map.remove(&old);
                }
            }
        }
        json
    }
}

fn to_json(dir: &Directory, e: &Event) -> Option<Arc<str>> {
    let wire = event(dir, e)?;
    // Serializing plain strings, numbers and already-valid raw JSON cannot fail.
    serde_json::to_string(&wire).ok().map(Into::into)
}
