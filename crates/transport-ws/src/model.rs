//! Discord's object shapes (users, guilds, channels, roles, members, messages, emoji), built from the core's
//! state for both the gateway and the REST API, so that the two always agree. Field lists follow
//! `discord-compat.md`: what discord.py, twilight and serenity require.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use chat_core::{
    Channel, ChannelKind, Core, MemberModes, Message, MessageId, MessageKind, OverwriteTarget,
    Permissions, Role, Space, SpaceId, SpaceMember, User, UserId,
};
use chat_engine::StoredMessage;
use chat_engine::{Directory, UserCard};
use serde_json::{Value, json};

/// Discord's channel types.
pub(crate) mod channel_type {
    pub(crate) const GUILD_TEXT: u8 = 0;
    pub(crate) const DM: u8 = 1;
    pub(crate) const GROUP_DM: u8 = 3;
    pub(crate) const GUILD_CATEGORY: u8 = 4;
    pub(crate) const PUBLIC_THREAD: u8 = 11;
}

/// Discord's message types used here.
pub(crate) mod message_type {
    pub(crate) const DEFAULT: u8 = 0;
    pub(crate) const CHANNEL_NAME_CHANGE: u8 = 4;
    pub(crate) const CHANNEL_PINNED_MESSAGE: u8 = 6;
    pub(crate) const USER_JOIN: u8 = 7;
    pub(crate) const THREAD_CREATED: u8 = 18;
    pub(crate) const REPLY: u8 = 19;
}

/// A timestamp as Discord writes it: `2026-11-23T08:00:00.000000+00:00` (twilight refuses the shorter
/// `...Z` form).
pub(crate) fn timestamp(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let text = humantime::format_rfc3339_micros(at).to_string();
    match text.strip_suffix('Z') {
        Some(head) => format!("{head}+00:00"),
        None => text,
    }
}

/// A user object from the core's record.
pub(crate) fn user(u: &User) -> Value {
    json!({
        "id": u.id.to_string(),
        "username": u.nick,
        "discriminator": "0",
        "global_name": u.display_name,
        "avatar": Value::Null,
        "bot": u.bot,
        "system": u.system,
        "mfa_enabled": false,
        "verified": true,
        "flags": 0,
        "public_flags": 0,
        "bio": u.bio,
    })
}

/// A user object from the engine's directory (what event rendering has at hand).
pub(crate) fn user_card(id: UserId, card: Option<&UserCard>) -> Value {
    let name = card.map_or_else(|| id.to_string(), |c| c.nick.to_string());
    json!({
        "id": id.to_string(),
        "username": name,
        "discriminator": "0",
        "global_name": card.and_then(|c| c.display_name.as_deref()),
        "avatar": Value::Null,
        "bot": card.is_some_and(|c| c.bot),
        "system": card.is_some_and(|c| c.system),
        "public_flags": 0,
    })
}

/// A role object.
pub(crate) fn role(r: &Role) -> Value {
    json!({
        "id": r.id.to_string(),
        "name": r.name,
        "color": r.color,
        "colors": {
            "primary_color": r.color,
            "secondary_color": Value::Null,
            "tertiary_color": Value::Null,
        },
        "hoist": r.hoist,
        "icon": Value::Null,
        "unicode_emoji": Value::Null,
        "position": r.position,
        "permissions": r.permissions.bits().to_string(),
        "managed": false,
        "mentionable": r.mentionable,
        "flags": 0,
    })
}

/// A guild member object.
pub(crate) fn member(core: &Core, space: &Space, m: &SpaceMember) -> Value {
    let everyone = space.id.everyone_role();
    json!({
        "user": core.user(m.user).map(user),
        "nick": m.nick,
        "avatar": Value::Null,
        "roles": m.roles.iter().filter(|r| **r != everyone).map(ToString::to_string).collect::<Vec<_>>(),
        "joined_at": timestamp(m.joined_at),
        "premium_since": Value::Null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
    })
}

/// A permission overwrite object (`type` 0 for a role, 1 for a member).
fn overwrite(target: OverwriteTarget, allow: Permissions, deny: Permissions) -> Value {
    let (id, kind) = match target {
        OverwriteTarget::Role(r) => (r.to_string(), 0),
        OverwriteTarget::Member(u) => (u.to_string(), 1),
    };
    json!({
        "id": id,
        "type": kind,
        "allow": allow.bits().to_string(),
        "deny": deny.bits().to_string(),
    })
}

/// A channel's overwrites as a Discord client needs them to compute what the core allows (libraries check
/// permissions from their cache before sending): the stored ones and, on a network channel, the member
/// overwrites its modes stand for ([`Permissions::OPERATOR`] for `+o`, [`Permissions::VOICE`] for `+v`, and
/// [`Permissions::JOINED`] for a member of a `+i` channel), merged into each member's own allow as the core
/// merges them. Bans match nick masks, not users, and are not shown.
fn overwrites(
    ch: &Channel,
    network: bool,
) -> BTreeMap<OverwriteTarget, (Permissions, Permissions)> {
    let mut list: BTreeMap<_, _> = ch
        .overwrites()
        .map(|o| (o.target, (o.allow, o.deny)))
        .collect();
    if network {
        let invite_only = ch.is_invite_only();
        for (user, modes) in ch.members() {
            let mut implied = Permissions::empty();
            if invite_only {
                implied |= Permissions::JOINED;
            }
            if modes.voice {
                implied |= Permissions::VOICE;
            }
            if modes.op {
                implied |= Permissions::OPERATOR;
            }
            if !implied.is_empty() {
                list.entry(OverwriteTarget::Member(user))
                    .or_insert((Permissions::empty(), Permissions::empty()))
                    .0 |= implied;
            }
        }
    }
    list
}

/// The member modes that [`overwrites`] shows for `ch`: every member's on a `+i` channel, else those of
/// operators and voiced members.
fn shown_modes(ch: &Channel) -> impl Iterator<Item = (UserId, MemberModes)> + '_ {
    let invite_only = ch.is_invite_only();
    ch.members()
        .filter(move |(_, m)| invite_only || m.op || m.voice)
}

/// Discord's channel type for a kind.
pub(crate) fn channel_type(kind: ChannelKind) -> u8 {
    match kind {
        ChannelKind::Text => channel_type::GUILD_TEXT,
        ChannelKind::Category => channel_type::GUILD_CATEGORY,
        ChannelKind::Dm => channel_type::DM,
        ChannelKind::GroupDm => channel_type::GROUP_DM,
        ChannelKind::Thread => channel_type::PUBLIC_THREAD,
    }
}

/// A channel's name as Discord shows it: network channels without their `#`.
pub(crate) fn channel_name(name: &str) -> &str {
    name.strip_prefix('#').unwrap_or(name)
}

/// A channel object. DMs list their recipients other than `viewer`.
///
/// A field added here for text channels or categories must also go into [`ChannelShape`], or GUILD_CREATE's
/// cached copies ([`ChannelTexts`]) would not notice when it changes.
///
/// `last_message_id` is there only for a viewer who may view the channel ([`sees_activity`]): a channel
/// listed to someone who may not open it (a `+i` network channel) tells nothing of its activity.
pub(crate) fn channel(core: &Core, ch: &Channel, viewer: UserId) -> Value {
    let activity = sees_activity(core, ch, viewer);
    channel_as(core, ch, viewer, activity)
}

/// A channel object rendered once for many viewers (CHANNEL_UPDATE and the like): without
/// `last_message_id`, since some of them may not view the channel. Members learn of messages from
/// MESSAGE_CREATE all the same.
pub(crate) fn shared_channel(core: &Core, ch: &Channel) -> Value {
    channel_as(core, ch, core.system_user(), false)
}

/// Whether `viewer` may see a channel's activity (its newest message): they are on it, or may view it.
/// Listing is wider than this: a network's channels are listed to every member, `+i` ones included.
pub(crate) fn sees_activity(core: &Core, ch: &Channel, viewer: UserId) -> bool {
    core.is_member(viewer, ch.id)
        || core
            .channel_permissions(viewer, ch.id)
            .contains(Permissions::VIEW_CHANNEL)
}

fn channel_as(core: &Core, ch: &Channel, viewer: UserId, activity: bool) -> Value {
    let last_message = ch.last_message.filter(|_| activity);
    let mut v = json!({
        "id": ch.id.to_string(),
        "type": channel_type(ch.kind),
        "last_message_id": last_message.map(|m| m.to_string()),
        "flags": 0,
    });
    let map = v.as_object_mut().expect("a json! object is an object");
    match ch.kind {
        ChannelKind::Dm | ChannelKind::GroupDm => {
            let recipients: Vec<Value> = core
                .members(ch.id)
                .filter(|(u, _)| *u != viewer || ch.kind == ChannelKind::GroupDm)
                .filter_map(|(u, _)| core.user(u).map(user))
                .collect();
            map.insert("recipients".into(), Value::Array(recipients));
            if ch.kind == ChannelKind::GroupDm {
                map.insert("name".into(), json!(ch.name));
                map.insert("owner_id".into(), json!(ch.owner.map(|o| o.to_string())));
                map.insert("icon".into(), Value::Null);
            }
        }
        _ => {
            map.insert("guild_id".into(), json!(ch.space.map(|s| s.to_string())));
            map.insert("name".into(), json!(channel_name(&ch.name)));
            map.insert("position".into(), json!(ch.position));
            map.insert("parent_id".into(), json!(ch.parent.map(|p| p.to_string())));
            map.insert(
                "topic".into(),
                json!(ch.topic.as_ref().map(|t| t.text.clone())),
            );
            map.insert("nsfw".into(), json!(false));
            map.insert("rate_limit_per_user".into(), json!(ch.slowmode_secs));
            let network = ch
                .space
                .and_then(|s| core.space(s))
                .is_some_and(|s| s.network);
            let overwrites: Vec<Value> = overwrites(ch, network)
                .into_iter()
                .map(|(target, (allow, deny))| overwrite(target, allow, deny))
                .collect();
            map.insert("permission_overwrites".into(), Value::Array(overwrites));
            if ch.kind == ChannelKind::Thread {
                map.insert("owner_id".into(), json!(ch.owner.map(|o| o.to_string())));
                map.insert("member_count".into(), json!(core.member_count(ch.id)));
                map.insert("message_count".into(), json!(0));
                map.insert(
                    "thread_metadata".into(),
                    json!({
                        "archived": false,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": timestamp(ch.created_at),
                        "locked": false,
                        "create_timestamp": timestamp(ch.created_at),
                    }),
                );
            }
        }
    }
    v
}

/// Whether `viewer` sees a space's channel in the guild: network channels always (as Discord lists channels
/// a member could open; joining is `PUT /channels/{id}/members/@me`), other channels with VIEW_CHANNEL.
pub(crate) fn sees(core: &Core, space: &Space, ch: &Channel, viewer: UserId) -> bool {
    if space.network {
        !ch.flags.secret || core.is_member(viewer, ch.id)
    } else {
        core.channel_permissions(viewer, ch.id)
            .contains(chat_core::Permissions::VIEW_CHANNEL)
    }
}

/// Identify's `large_threshold`: Discord's default and its largest allowed value.
pub(crate) const LARGE_THRESHOLD_DEFAULT: usize = 50;
pub(crate) const LARGE_THRESHOLD_MAX: usize = 250;

/// A full guild object as GUILD_CREATE sends it: roles, the channels `viewer` sees, and every member while
/// the guild has at most `large_threshold` of them (with `member_count` matching, so that libraries do not
/// wait for member chunks). A larger guild is `large`, as on Discord: it lists only the viewer and leaves the
/// rest to Request Guild Members, since every member in every GUILD_CREATE would cost each connection the
/// size of the whole member list (megabytes at 10k members).
pub(crate) fn guild_create(
    core: &Core,
    space: &Space,
    viewer: UserId,
    large_threshold: usize,
) -> Value {
    let channels: Vec<Value> = space
        .channels()
        .filter_map(|c| core.channel(c))
        .filter(|ch| sees(core, space, ch, viewer))
        .map(|ch| channel(core, ch, viewer))
        .collect();
    guild_create_around(core, space, viewer, large_threshold, Value::Array(channels))
}

/// The same GUILD_CREATE as [`guild_create`], with its channel list taken from `texts` (see [`ChannelTexts`])
/// and left as text: the part that grows with the space is copied, not built, and the JSON is written by
/// [`GuildCreate::write_json`], which needs no core and so runs outside the engine's writer.
pub(crate) fn guild_create_cached(
    core: &Core,
    space: &Space,
    viewer: UserId,
    large_threshold: usize,
    texts: &ChannelTexts,
) -> GuildCreate {
    let channels = texts.list(core, space, viewer);
    let guild = guild_create_around(core, space, viewer, large_threshold, Value::Null);
    GuildCreate { guild, channels }
}

/// A GUILD_CREATE object around the given `channels` value.
fn guild_create_around(
    core: &Core,
    space: &Space,
    viewer: UserId,
    large_threshold: usize,
    channels: Value,
) -> Value {
    let mut v = guild(space);
    let map = v.as_object_mut().expect("a json! object is an object");
    let large = space.member_count() > large_threshold;
    let members: Vec<Value> = if large {
        space
            .member(viewer)
            .map(|m| member(core, space, m))
            .into_iter()
            .collect()
    } else {
        space.members().map(|m| member(core, space, m)).collect()
    };
    let threads: Vec<Value> = core
        .channels()
        .filter(|ch| ch.kind == ChannelKind::Thread && ch.space == Some(space.id))
        .filter(|ch| {
            ch.parent
                .and_then(|p| core.channel(p))
                .is_some_and(|p| sees(core, space, p, viewer))
        })
        .map(|ch| channel(core, ch, viewer))
        .collect();
    let joined_at = space.member(viewer).map(|m| timestamp(m.joined_at));
    map.insert("joined_at".into(), json!(joined_at));
    map.insert("large".into(), json!(large));
    map.insert("unavailable".into(), json!(false));
    map.insert("member_count".into(), json!(space.member_count()));
    map.insert("members".into(), Value::Array(members));
    map.insert("channels".into(), channels);
    map.insert("threads".into(), Value::Array(threads));
    map.insert("presences".into(), json!([]));
    map.insert("voice_states".into(), json!([]));
    map.insert("stage_instances".into(), json!([]));
    map.insert("guild_scheduled_events".into(), json!([]));
    map.insert("soundboard_sounds".into(), json!([]));
    v
}

/// A GUILD_CREATE whose channel list is kept as cached text: `guild` holds every other field (its
/// `channels` is a placeholder, in its place in the field order), `channels` the viewer's list.
#[derive(Debug)]
pub(crate) struct GuildCreate {
    /// The guild object; its `channels` entry is replaced by `channels` when written.
    pub(crate) guild: Value,
    channels: Vec<ListedChannel>,
}

impl GuildCreate {
    /// Roughly how long the object's text is, to size the buffer it is written into.
    pub(crate) fn len_hint(&self) -> usize {
        let listed: usize = self.channels.iter().map(ListedChannel::len_hint).sum();
        listed + 4096
    }

    /// The object as JSON text, exactly as [`guild_create`]'s value would serialise.
    #[cfg(test)]
    fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.len_hint());
        self.write_json(&mut out);
        out
    }

    /// Appends the object as JSON text to `out`, exactly as [`guild_create`]'s value would serialise.
    pub(crate) fn write_json(&self, out: &mut String) {
        out.push('{');
        if let Some(map) = self.guild.as_object() {
            for (i, (key, value)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if key == "channels" {
                    out.push('[');
                    for (j, c) in self.channels.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        c.write(out);
                    }
                    out.push(']');
                } else {
                    out.push_str(&value.to_string());
                }
            }
        }
        out.push('}');
    }
}

/// One channel of a viewer's list: cached text with the channel's newest message spliced in, or (for a kind
/// the cache does not keep) its object.
#[derive(Debug)]
enum ListedChannel {
    Cached(Arc<ChannelText>, Option<MessageId>),
    Built(Value),
}

impl ListedChannel {
    fn len_hint(&self) -> usize {
        match self {
            Self::Cached(text, _) => text.head.len() + text.tail.len() + 24,
            Self::Built(_) => 256,
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Cached(text, last) => {
                out.push_str(&text.head);
                match last {
                    // A snowflake's digits need no escaping.
                    Some(id) => {
                        out.push('"');
                        out.push_str(&id.to_string());
                        out.push('"');
                    }
                    None => out.push_str("null"),
                }
                out.push_str(&text.tail);
            }
            Self::Built(v) => out.push_str(&v.to_string()),
        }
    }
}

/// What a space channel's object shows besides `id`, `type` and `last_message_id`: a cached text is used only
/// while the channel still has exactly these, so no event can leave it stale, whatever changed the channel.
#[derive(Debug, PartialEq, Eq)]
struct ChannelShape {
    kind: ChannelKind,
    space: Option<SpaceId>,
    name: String,
    position: i32,
    parent: Option<chat_core::ChannelId>,
    topic: Option<String>,
    slowmode_secs: u32,
    overwrites: Vec<(OverwriteTarget, Permissions, Permissions)>,
    /// The member modes the object shows as overwrites ([`shown_modes`]).
    modes: Vec<(UserId, MemberModes)>,
}

impl ChannelShape {
    fn of(ch: &Channel) -> Self {
        Self {
            kind: ch.kind,
            space: ch.space,
            name: ch.name.clone(),
            position: ch.position,
            parent: ch.parent,
            topic: ch.topic.as_ref().map(|t| t.text.clone()),
            slowmode_secs: ch.slowmode_secs,
            overwrites: ch
                .overwrites()
                .map(|o| (o.target, o.allow, o.deny))
                .collect(),
            modes: shown_modes(ch).collect(),
        }
    }

    /// Whether `ch` still has this shape (compared in place: nothing is allocated).
    fn fits(&self, ch: &Channel) -> bool {
        self.kind == ch.kind
            && self.space == ch.space
            && self.name == ch.name
            && self.position == ch.position
            && self.parent == ch.parent
            && self.topic.as_deref() == ch.topic.as_ref().map(|t| t.text.as_str())
            && self.slowmode_secs == ch.slowmode_secs
            && self
                .overwrites
                .iter()
                .copied()
                .eq(ch.overwrites().map(|o| (o.target, o.allow, o.deny)))
            && self.modes.iter().copied().eq(shown_modes(ch))
    }
}

/// A space channel's object as JSON text, split where its `last_message_id` goes (the one field that changes
/// with every message): `head` ends with `"last_message_id":`, `tail` is the rest of the object.
#[derive(Debug)]
struct ChannelText {
    shape: ChannelShape,
    head: Box<str>,
    tail: Box<str>,
}

impl ChannelText {
    /// The text of `ch`'s object, if it is a kind whose object does not depend on the viewer or on members.
    fn of(core: &Core, ch: &Channel) -> Option<Self> {
        if !matches!(ch.kind, ChannelKind::Text | ChannelKind::Category) {
            return None;
        }
        // The object of a text channel or category does not depend on the viewer.
        let mut v = shared_channel(core, ch);
        // Replaced in place: the field keeps its position.
        v.as_object_mut()?
            .insert("last_message_id".into(), Value::Null);
        let text = v.to_string();
        const FIELD: &str = "\"last_message_id\":";
        // The first occurrence is the field itself: only `id` (digits) and `type` (a number) come before it.
        let at = text.find(FIELD)? + FIELD.len();
        let tail = text[at..].strip_prefix("null")?;
        Some(Self {
            shape: ChannelShape::of(ch),
            head: text[..at].into(),
            tail: tail.into(),
        })
    }
}

/// How far the cache of channel texts may grow past what it held after its last pruning.
const TEXTS_SLACK: usize = 256;

/// The JSON text of space channels, kept between GUILD_CREATEs: with a thousand channels in the network,
/// building every channel's object for every Identify was most of a connection's cost, and it ran on the
/// engine's writer. An entry is reused while its channel's shape is unchanged ([`ChannelShape`], checked
/// against the core at every use), so no event needs to be known here for the text to stay right; the newest
/// message is spliced in per use. Which channels a viewer sees is decided per viewer, as [`guild_create`]
/// does.
#[derive(Debug, Default)]
pub(crate) struct ChannelTexts {
    inner: Mutex<Texts>,
}

/// The cached texts, and the size past which those of deleted channels are dropped.
#[derive(Debug, Default)]
struct Texts {
    by_channel: HashMap<chat_core::ChannelId, Arc<ChannelText>>,
    prune_at: usize,
}

impl ChannelTexts {
    /// The channels of `space` that `viewer` sees, in [`guild_create`]'s order, as cached texts (made now for
    /// channels new or changed since they were cached).
    fn list(&self, core: &Core, space: &Space, viewer: UserId) -> Vec<ListedChannel> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Texts {
            by_channel: texts,
            prune_at,
        } = &mut *inner;
        let listed: Vec<ListedChannel> = space
            .channels()
            .filter_map(|c| core.channel(c))
            .filter(|ch| sees(core, space, ch, viewer))
            .map(|ch| {
                let cached = texts.get(&ch.id).filter(|t| t.shape.fits(ch)).cloned();
                let text = cached.or_else(|| {
                    let made = Arc::new(ChannelText::of(core, ch)?);
                    texts.insert(ch.id, Arc::clone(&made));
                    Some(made)
                });
                match text {
                    Some(text) => ListedChannel::Cached(
                        text,
                        ch.last_message.filter(|_| sees_activity(core, ch, viewer)),
                    ),
                    None => ListedChannel::Built(channel(core, ch, viewer)),
                }
            })
            .collect();
        // Deleted channels' texts go once the cache has grown well past what it last held.
        if texts.len() > *prune_at {
            texts.retain(|id, _| core.channel(*id).is_some());
            *prune_at = texts.len().saturating_mul(2).saturating_add(TEXTS_SLACK);
        }
        listed
    }
}

/// A guild object without the GUILD_CREATE extras (REST `GET /guilds/{id}`, GUILD_UPDATE).
pub(crate) fn guild(space: &Space) -> Value {
    let mut roles: Vec<&Role> = space.roles.values().collect();
    roles.sort_by_key(|r| (r.position, r.id));
    json!({
        "id": space.id.to_string(),
        "name": space.name,
        "icon": Value::Null,
        "icon_hash": Value::Null,
        "splash": Value::Null,
        "discovery_splash": Value::Null,
        "banner": Value::Null,
        "description": space.description,
        "owner_id": space.owner.to_string(),
        "region": Value::Null,
        "afk_channel_id": Value::Null,
        "afk_timeout": 300,
        "widget_enabled": false,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": roles.into_iter().map(role).collect::<Vec<_>>(),
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "application_id": Value::Null,
        "system_channel_id": Value::Null,
        "system_channel_flags": 0,
        "rules_channel_id": Value::Null,
        "public_updates_channel_id": Value::Null,
        "safety_alerts_channel_id": Value::Null,
        "max_members": 500_000,
        "vanity_url_code": Value::Null,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "nsfw": false,
        "premium_progress_bar_enabled": false,
    })
}

/// An emoji object for a reaction: unicode emoji have no id; custom ones are `name:id`.
pub(crate) fn emoji(text: &str) -> Value {
    match text.rsplit_once(':') {
        Some((name, id))
            if !name.is_empty() && id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty() =>
        {
            // `<a:name:id>` / `<:name:id>` lose their markup; a name that merely starts with `a` keeps it.
            let name = name.strip_prefix('<').unwrap_or(name);
            let name = name
                .strip_prefix("a:")
                .or_else(|| name.strip_prefix(':'))
                .unwrap_or(name);
            json!({ "id": id, "name": name })
        }
        _ => json!({ "id": Value::Null, "name": text }),
    }
}

/// What a message object needs, from either a live event or the store.
#[derive(Debug)]
pub(crate) struct MessageView<'a> {
    pub(crate) id: MessageId,
    pub(crate) channel: chat_core::ChannelId,
    pub(crate) space: Option<SpaceId>,
    pub(crate) author: UserId,
    pub(crate) kind: MessageKind,
    pub(crate) body: &'a str,
    pub(crate) reply_to: Option<MessageId>,
    pub(crate) mentions: &'a [UserId],
    pub(crate) mention_everyone: bool,
    pub(crate) attachments: &'a [chat_core::Attachment],
    pub(crate) embeds: Option<&'a str>,
    pub(crate) nonce: Option<&'a str>,
    pub(crate) tts: bool,
    pub(crate) pinned: bool,
    pub(crate) edited_at: Option<u64>,
    pub(crate) reactions: Option<&'a std::collections::BTreeMap<String, Vec<UserId>>>,
}

impl<'a> MessageView<'a> {
    /// A message as the core's event carries it; `space` comes from the directory.
    pub(crate) fn live(m: &'a Message, space: Option<SpaceId>) -> Self {
        Self {
            id: m.id,
            channel: m.channel,
            space,
            author: m.author,
            kind: m.kind,
            body: &m.body,
            reply_to: m.reply_to,
            mentions: &m.mentions,
            mention_everyone: m.mention_everyone || m.mention_here,
            attachments: &m.attachments,
            embeds: m.embeds.as_deref(),
            nonce: m.nonce.as_deref(),
            tts: m.tts,
            pinned: false,
            edited_at: None,
            reactions: None,
        }
    }

    /// A message as the store keeps it (REST reads).
    /// A message known only by what an event says of it: no reply, attachments, embeds, pins or reactions
    /// (a system notice, or an edit whose stored copy is gone).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bare(
        id: MessageId,
        channel: chat_core::ChannelId,
        space: Option<SpaceId>,
        author: UserId,
        kind: MessageKind,
        body: &'a str,
        mentions: &'a [UserId],
    ) -> Self {
        Self {
            id,
            channel,
            space,
            author,
            kind,
            body,
            reply_to: None,
            mentions,
            mention_everyone: false,
            attachments: &[],
            embeds: None,
            nonce: None,
            tts: false,
            pinned: false,
            edited_at: None,
            reactions: None,
        }
    }

    pub(crate) fn stored(m: &'a StoredMessage) -> Self {
        Self {
            id: m.id,
            channel: m.channel,
            space: m.space,
            author: m.author,
            kind: m.kind,
            body: &m.body,
            reply_to: m.reply_to,
            mentions: &m.mentions,
            mention_everyone: m.mention_everyone,
            attachments: &m.attachments,
            embeds: m.embeds.as_deref(),
            nonce: m.nonce.as_deref(),
            tts: false,
            pinned: m.pinned,
            edited_at: m.edited_at,
            reactions: Some(&m.reactions),
        }
    }
}

/// Discord's message type and the content shown for a kind: IRC actions become italics, system messages
/// keep their text.
fn kind_and_content(kind: MessageKind, body: &str, reply: bool) -> (u8, String) {
    match kind {
        MessageKind::Message | MessageKind::Notice if reply => {
            (message_type::REPLY, body.to_owned())
        }
        MessageKind::Message | MessageKind::Notice => (message_type::DEFAULT, body.to_owned()),
        MessageKind::Action => (message_type::DEFAULT, format!("_{body}_")),
        MessageKind::Join => (message_type::USER_JOIN, body.to_owned()),
        MessageKind::Pin => (message_type::CHANNEL_PINNED_MESSAGE, body.to_owned()),
        MessageKind::ThreadCreated => (message_type::THREAD_CREATED, body.to_owned()),
        MessageKind::Topic => (message_type::CHANNEL_NAME_CHANGE, body.to_owned()),
        _ => (message_type::DEFAULT, body.to_owned()),
    }
}

/// The base URL attachment URLs start with for a request: PUBLIC_URL when set, else the scheme and `Host`
/// the client used (`https` behind a proxy that says `X-Forwarded-Proto: https`). `None` without a usable
/// `Host`: the URLs then stay relative.
pub(crate) fn base_url(public_url: Option<&str>, headers: &http::HeaderMap) -> Option<String> {
    if let Some(url) = public_url {
        return Some(url.to_owned());
    }
    // Only the characters of a host name, an IP literal and a port: the base goes into JSON text unescaped.
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })?;
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    Some(format!(
        "{}://{host}",
        if secure { "https" } else { "http" }
    ))
}

/// Attachment URLs as [`message`] writes them, relative, and the key each is under.
const RELATIVE_URLS: [(&str, &str); 2] = [
    ("\"url\":\"/attachments/", "\"url\":\""),
    ("\"proxy_url\":\"/attachments/", "\"proxy_url\":\""),
];

/// Whether rendered JSON text holds an attachment URL that [`absolute_attachment_urls`] would rewrite.
pub(crate) fn has_relative_attachment_urls(text: &str) -> bool {
    text.contains("\":\"/attachments/")
}

/// Rendered JSON text with its attachment URLs made absolute under `base` (`None` when it has none).
///
/// Messages are rendered once for every reader (the gateway's cache), with relative URLs; each answer and
/// each connection prefixes its own base here. The match is exact: inside a JSON string a quote is always
/// escaped, so `"url":"/attachments/` can only be a key and the start of its value, never text in a message.
/// `base` holds no quote or backslash ([`base_url`] and PUBLIC_URL's check see to it).
pub(crate) fn absolute_attachment_urls(text: &str, base: &str) -> Option<String> {
    if !has_relative_attachment_urls(text) {
        return None;
    }
    let mut out = text.to_owned();
    for (relative, key) in RELATIVE_URLS {
        if out.contains(relative) {
            out = out.replace(relative, &format!("{key}{base}/attachments/"));
        }
    }
    Some(out)
}

/// An attachment's URL (the path below the server's base): `/attachments/{channel}/{id}/{token}/{filename}`.
pub(crate) fn attachment_url(channel: chat_core::ChannelId, a: &chat_core::Attachment) -> String {
    format!("/attachments/{channel}/{}/{}/{}", a.id, a.token, a.filename)
}

/// A mode notice's text with nicks for the user ids its `+o`/`+v` arguments hold (as the log keeps them):
/// `+o-v 123 456` -> `+o-v alice bob`.
fn mode_with_nicks(dir: &Directory, line: &str) -> String {
    let mut words = line.split(' ');
    let letters = words.next().unwrap_or("");
    let mut out = vec![letters.to_owned()];
    let mut on = true;
    for letter in letters.chars() {
        let takes_arg = match letter {
            '+' | '-' => {
                on = letter == '+';
                false
            }
            'k' | 'l' => on,
            'b' | 'o' | 'v' => true,
            _ => false,
        };
        if !takes_arg {
            continue;
        }
        let Some(arg) = words.next() else { break };
        let user = matches!(letter, 'o' | 'v')
            .then(|| arg.parse().ok().and_then(UserId::from_raw))
            .flatten();
        out.push(user.map_or_else(|| arg.to_owned(), |u| dir.nick(u).to_string()));
    }
    out.extend(words.map(str::to_owned));
    out.join(" ")
}

/// A message object. `viewer` decides the `me` of reactions; `dir` names the author and mentions.
pub(crate) fn message(dir: &Directory, m: &MessageView<'_>, viewer: Option<UserId>) -> Value {
    let (kind, mut content) = kind_and_content(m.kind, m.body, m.reply_to.is_some());
    if m.kind == MessageKind::Mode {
        content = mode_with_nicks(dir, &content);
    }
    let author = user_card(m.author, dir.user(m.author));
    let mentions: Vec<Value> = m
        .mentions
        .iter()
        .map(|u| user_card(*u, dir.user(*u)))
        .collect();
    let attachments: Vec<Value> = m
        .attachments
        .iter()
        .map(|a| {
            json!({
                "id": a.id.to_string(),
                "filename": a.filename,
                "size": a.size,
                "content_type": a.content_type,
                "url": attachment_url(m.channel, a),
                "proxy_url": attachment_url(m.channel, a),
            })
        })
        .collect();
    let embeds: Value = m
        .embeds
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_else(|| json!([]));
    let mut v = json!({
        "id": m.id.to_string(),
        "channel_id": m.channel.to_string(),
        "author": author,
        "content": content,
        "timestamp": timestamp(snowflake_ms(m.id.get())),
        "edited_timestamp": m.edited_at.map(timestamp),
        "tts": m.tts,
        "mention_everyone": m.mention_everyone,
        "mentions": mentions,
        "mention_roles": [],
        "mention_channels": [],
        "attachments": attachments,
        "embeds": embeds,
        "components": [],
        "pinned": m.pinned,
        "type": kind,
        "flags": 0,
    });
    let map = v.as_object_mut().expect("a json! object is an object");
    // Our extension: what kind of line this is when Discord's `type` cannot say (an IRC part, a mode change,
    // an action...). Libraries ignore fields they do not know; the web client shows these compactly.
    if m.kind != MessageKind::Message {
        map.insert("chatd_kind".into(), json!(m.kind.name()));
    }
    if let Some(space) = m.space {
        map.insert("guild_id".into(), json!(space.to_string()));
        // The author as a member, from the directory (no round trip to the writer); omitted when they are
        // no longer a member, as Discord does for webhooks and departed users.
        if let Some(card) = dir.member(space, m.author) {
            let mut member = json!({
                "roles": card.roles.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "joined_at": timestamp(card.joined_at),
                "deaf": false,
                "mute": false,
                "flags": 0,
            });
            if let (Some(nick), Some(obj)) = (card.nick.as_deref(), member.as_object_mut()) {
                obj.insert("nick".into(), json!(nick));
            }
            map.insert("member".into(), member);
        }
    }
    if let Some(nonce) = m.nonce {
        map.insert("nonce".into(), json!(nonce));
    }
    if let Some(reply) = m.reply_to {
        map.insert(
            "message_reference".into(),
            json!({
                "type": 0,
                "message_id": reply.to_string(),
                "channel_id": m.channel.to_string(),
                "guild_id": m.space.map(|s| s.to_string()),
            }),
        );
    }
    if let Some(reactions) = m.reactions.filter(|r| !r.is_empty()) {
        let list: Vec<Value> = reactions
            .iter()
            .map(|(e, users)| {
                json!({
                    "count": users.len(),
                    "count_details": { "burst": 0, "normal": users.len() },
                    "me": viewer.is_some_and(|v| users.contains(&v)),
                    "me_burst": false,
                    "burst_colors": [],
                    "emoji": emoji(e),
                })
            })
            .collect();
        map.insert("reactions".into(), Value::Array(list));
    }
    v
}

/// The unix milliseconds a snowflake was made at (Discord's epoch, 2015).
pub(crate) fn snowflake_ms(id: u64) -> u64 {
    (id >> 22) + 1_420_070_400_000
}

/// The space a channel belongs to, by the directory.
pub(crate) fn channel_space(dir: &Directory, channel: chat_core::ChannelId) -> Option<SpaceId> {
    dir.channel(channel).and_then(|c| c.space)
}

/// A channel object from a create or update event's settings, for the gateway (which renders those events
/// without asking the core). `recipients` are the users a DM or group DM lists: the caller leaves the viewer
/// out of a DM, as [`channel`] does.
pub(crate) fn channel_info(
    dir: &Directory,
    info: &chat_core::ChannelInfo,
    recipients: &[UserId],
) -> Value {
    let mut v = json!({
        "id": info.id.to_string(),
        "type": channel_type(info.kind),
        "last_message_id": Value::Null,
        "flags": 0,
    });
    let map = v.as_object_mut().expect("a json! object is an object");
    match info.kind {
        ChannelKind::Dm | ChannelKind::GroupDm => {
            let list: Vec<Value> = recipients
                .iter()
                .map(|u| user_card(*u, dir.user(*u)))
                .collect();
            map.insert("recipients".into(), Value::Array(list));
            if info.kind == ChannelKind::GroupDm {
                map.insert("name".into(), json!(info.name));
                map.insert("owner_id".into(), json!(info.owner.map(|o| o.to_string())));
                map.insert("icon".into(), Value::Null);
            }
        }
        _ => {
            map.insert("guild_id".into(), json!(info.space.map(|s| s.to_string())));
            map.insert("name".into(), json!(channel_name(&info.name)));
            map.insert("position".into(), json!(info.position));
            map.insert(
                "parent_id".into(),
                json!(info.parent.map(|p| p.to_string())),
            );
            map.insert(
                "topic".into(),
                json!(info.topic.as_ref().map(|t| t.text.clone())),
            );
            map.insert("nsfw".into(), json!(false));
            map.insert("rate_limit_per_user".into(), json!(info.slowmode_secs));
            let overwrites: Vec<Value> = info
                .overwrites
                .iter()
                .map(|(target, allow, deny)| overwrite(*target, *allow, *deny))
                .collect();
            map.insert("permission_overwrites".into(), Value::Array(overwrites));
            if info.kind == ChannelKind::Thread {
                let created = timestamp(snowflake_ms(info.id.get()));
                map.insert("owner_id".into(), json!(info.owner.map(|o| o.to_string())));
                map.insert("member_count".into(), json!(0));
                map.insert("message_count".into(), json!(0));
                map.insert(
                    "thread_metadata".into(),
                    json!({
                        "archived": false,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": created,
                        "locked": false,
                        "create_timestamp": created,
                    }),
                );
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_urls_become_absolute_but_message_text_does_not() {
        let m = json!({
            "content": "\"url\":\"/attachments/not-a-key",
            "attachments": [{"url": "/attachments/1/2/t/a.txt", "proxy_url": "/attachments/1/2/t/a.txt"}],
        })
        .to_string();
        let out = absolute_attachment_urls(&m, "https://chat.example.org").expect("rewritten");
        let v: Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(
            v["attachments"][0]["url"],
            "https://chat.example.org/attachments/1/2/t/a.txt"
        );
        assert_eq!(v["attachments"][0]["proxy_url"], v["attachments"][0]["url"]);
        assert_eq!(v["content"], "\"url\":\"/attachments/not-a-key");
        assert_eq!(
            absolute_attachment_urls("{\"content\":\"hi\"}", "http://x"),
            None
        );

        let mut headers = http::HeaderMap::new();
        assert_eq!(base_url(None, &headers), None);
        headers.insert(
            http::header::HOST,
            "127.0.0.1:8080".parse().expect("header"),
        );
        assert_eq!(
            base_url(None, &headers).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        headers.insert("x-forwarded-proto", "https".parse().expect("header"));
        assert_eq!(
            base_url(None, &headers).as_deref(),
            Some("https://127.0.0.1:8080")
        );
        assert_eq!(
            base_url(Some("https://c.org"), &headers).as_deref(),
            Some("https://c.org")
        );
        headers.insert(http::header::HOST, "evil\"host".parse().expect("header"));
        headers.remove("x-forwarded-proto");
        assert_eq!(base_url(None, &headers), None);
    }

    #[test]
    fn timestamps_have_discords_long_form() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(timestamp(1_800_000_000_123).len(), 32);
    }

    #[test]
    fn emoji_forms() {
        assert_eq!(emoji("👍"), json!({"id": null, "name": "👍"}));
        assert_eq!(emoji("party:123"), json!({"id": "123", "name": "party"}));
        assert_eq!(
            emoji("awesome:123"),
            json!({"id": "123", "name": "awesome"})
        );
        assert_eq!(emoji("<a:dance:9"), json!({"id": "9", "name": "dance"}));
    }

    mod cached_guild_create {
        use chat_core::{
            ChannelRef, Command, Config, Created, NewClient, Origin, Outgoing, Target,
        };

        use super::*;

        const NOW: u64 = 1_800_000_000_000;

        /// A core driven by commands, with its users' clients by name.
        struct World {
            core: Core,
            clients: HashMap<UserId, chat_core::ClientId>,
            texts: ChannelTexts,
        }

        impl World {
            fn new() -> Self {
                Self {
                    core: Core::new(Config::default(), NOW),
                    clients: HashMap::new(),
                    texts: ChannelTexts::default(),
                }
            }

            fn user(&mut self, nick: &str) -> UserId {
                let token_hash = [u8::try_from(self.clients.len() + 1).expect("few"); 32];
                let register = Command::Register {
                    nick: nick.into(),
                    // An account (the core never hashes): guests cannot own spaces.
                    password_hash: Some("$test$pw".into()),
                    bot: false,
                    client: Some(NewClient {
                        name: nick.into(),
                        token_hash,
                    }),
                };
                let reply = self.core.handle(NOW, Origin::Anonymous, register);
                let Ok(chat_core::Reply {
                    created:
                        Some(Created::User {
                            user,
                            client: Some(client),
                        }),
                    ..
                }) = reply
                else {
                    panic!("no user: {reply:?}");
                };
                self.clients.insert(user, client);
                user
            }

            fn run(&mut self, user: UserId, command: Command) -> Option<Created> {
                let client = self.clients[&user];
                match self.core.handle(NOW, Origin::Client(client), command) {
                    Ok(reply) => reply.created,
                    Err(e) => panic!("refused: {e:?}"),
                }
            }

            fn join(&mut self, user: UserId, channel: &str) {
                let join = Command::Join {
                    channel: channel.into(),
                    key: None,
                };
                self.run(user, join);
            }

            fn channel_id(&self, name: &str) -> chat_core::ChannelId {
                self.core.channel_by_name(name).expect("a channel").id
            }

            /// Every space's GUILD_CREATE for `viewers`, from the (warm) cache and built afresh, must be the
            /// same text; returns the cached ones' channel names per viewer in the network.
            fn check(&self, viewers: &[UserId]) -> Vec<Vec<String>> {
                let mut names = Vec::new();
                for viewer in viewers {
                    for space in self.core.spaces() {
                        let fresh = guild_create(&self.core, space, *viewer, 250).to_string();
                        let cached =
                            guild_create_cached(&self.core, space, *viewer, 250, &self.texts);
                        assert_eq!(cached.to_json(), fresh, "{} for {viewer}", space.name);
                        if space.network {
                            let v: Value = serde_json::from_str(&fresh).expect("JSON");
                            let list = v["channels"].as_array().expect("channels");
                            names.push(
                                list.iter()
                                    .map(|c| c["name"].as_str().expect("a name").to_owned())
                                    .collect(),
                            );
                        }
                    }
                }
                names
            }
        }

        /// A user's permissions in a network channel computed as a Discord library computes them from
        /// GUILD_CREATE (the @everyone role and the member's roles, then the @everyone, role and member
        /// overwrites; nothing without VIEW_CHANNEL).
        fn as_a_library_computes(
            guild: &Value,
            user: UserId,
            channel: chat_core::ChannelId,
        ) -> Permissions {
            let bits = |v: &Value| {
                Permissions::from_bits_truncate(
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .expect("permission bits"),
                )
            };
            let guild_id = guild["id"].as_str().expect("id");
            let roles = guild["roles"].as_array().expect("roles");
            let member = guild["members"]
                .as_array()
                .expect("members")
                .iter()
                .find(|m| m["user"]["id"] == user.to_string())
                .expect("a member");
            let mine: Vec<&str> = member["roles"]
                .as_array()
                .expect("roles")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let mut perms = Permissions::empty();
            for r in roles {
                let id = r["id"].as_str().expect("role id");
                if id == guild_id || mine.contains(&id) {
                    perms |= bits(&r["permissions"]);
                }
            }
            if perms.contains(Permissions::ADMINISTRATOR) {
                return Permissions::all();
            }
            let ch = guild["channels"]
                .as_array()
                .expect("channels")
                .iter()
                .find(|c| c["id"] == channel.to_string())
                .expect("the channel");
            let overwrites = ch["permission_overwrites"].as_array().expect("overwrites");
            let apply = |perms: Permissions, pick: &dyn Fn(&Value) -> bool| {
                let (mut allow, mut deny) = (Permissions::empty(), Permissions::empty());
                for o in overwrites.iter().filter(|o| pick(o)) {
                    allow |= bits(&o["allow"]);
                    deny |= bits(&o["deny"]);
                }
                (perms & !deny) | allow
            };
            perms = apply(perms, &|o| o["type"] == 0 && o["id"] == guild_id);
            perms = apply(perms, &|o| {
                o["type"] == 0 && o["id"].as_str().is_some_and(|id| mine.contains(&id))
            });
            perms = apply(perms, &|o| o["type"] == 1 && o["id"] == user.to_string());
            if perms.contains(Permissions::VIEW_CHANNEL) {
                perms
            } else {
                Permissions::empty()
            }
        }

        /// What a network channel's modes grant (`+o`, `+v`, membership of a `+i` channel) is in its
        /// overwrites, so that a library checking permissions from its cache (serenity does before every
        /// send) agrees with the server, for members and others, through every change.
        #[test]
        fn overwrites_show_what_modes_grant() {
            let mut w = World::new();
            let alice = w.user("alice");
            let bob = w.user("bob");
            let carol = w.user("carol");
            w.join(alice, "#a");
            w.join(bob, "#a");
            let a = w.channel_id("#a");
            let mode = |modes: &str, args: &[&str]| Command::Mode {
                channel: ChannelRef::Name("#a".into()),
                modes: modes.into(),
                args: args.iter().map(|s| (*s).to_owned()).collect(),
            };
            let agree = |w: &World, step: &str| {
                w.check(&[alice, bob, carol]);
                let space = w.core.spaces().find(|s| s.network).expect("the network");
                let guild = guild_create(&w.core, space, alice, 250);
                for user in [alice, bob, carol] {
                    assert_eq!(
                        as_a_library_computes(&guild, user, a),
                        w.core.channel_permissions(user, a),
                        "{step}: user {user}"
                    );
                }
            };
            agree(&w, "alice opened #a");
            assert!(
                w.core
                    .channel_permissions(alice, a)
                    .contains(Permissions::MANAGE_CHANNELS),
                "the opener is an operator"
            );
            w.run(alice, mode("+m", &[]));
            agree(&w, "+m");
            w.run(alice, mode("+v", &["bob"]));
            agree(&w, "+v bob");
            w.run(alice, mode("+i", &[]));
            agree(&w, "+i");
            w.run(alice, mode("+o", &["bob"]));
            w.run(bob, mode("-o", &["alice"]));
            agree(&w, "bob op, alice not");
            w.run(bob, mode("-imv", &["bob"]));
            agree(&w, "-imv");
        }

        #[test]
        fn a_warm_cache_follows_every_change_to_the_channels() {
            let mut w = World::new();
            let alice = w.user("alice");
            let bob = w.user("bob");
            w.join(alice, "#a");
            w.join(alice, "#b");
            assert_eq!(w.check(&[alice, bob]), [["a", "b"], ["a", "b"]]);
            // Warm: the texts are made once for every viewer.
            let a = w.channel_id("#a");
            let first = Arc::clone(&w.texts.inner.lock().expect("lock").by_channel[&a]);
            w.check(&[alice, bob]);
            let again = Arc::clone(&w.texts.inner.lock().expect("lock").by_channel[&a]);
            assert!(Arc::ptr_eq(&first, &again));

            // A new channel, a topic, a message (`last_message_id`), a secret channel.
            w.join(bob, "#c");
            w.check(&[alice, bob]);
            w.run(
                alice,
                Command::Topic {
                    channel: ChannelRef::Name("#a".into()),
                    topic: "a \"quoted\" topic".into(),
                },
            );
            w.check(&[alice, bob]);
            let send = Command::Send {
                to: Target::Channel(ChannelRef::Name("#a".into())),
                message: Outgoing {
                    body: "hi".into(),
                    ..Outgoing::default()
                },
            };
            w.run(alice, send);
            w.check(&[alice, bob]);
            let mode = |modes: &str| Command::Mode {
                channel: ChannelRef::Name("#b".into()),
                modes: modes.into(),
                args: Vec::new(),
            };
            w.run(alice, mode("+s"));
            // A member sees a secret channel, others do not, from the same warm cache.
            assert_eq!(
                w.check(&[alice, bob]),
                [vec!["a", "b", "c"], vec!["a", "c"]]
            );
            w.run(alice, mode("-s"));
            assert_eq!(w.check(&[alice, bob]), [["a", "b", "c"], ["a", "b", "c"]]);

            // A space: a category, a channel in it, its overwrites, an update and a deletion.
            let Some(Created::Space(space)) = w.run(
                alice,
                Command::CreateSpace {
                    name: "home".into(),
                    description: None,
                    public: true,
                },
            ) else {
                panic!("no space");
            };
            w.run(bob, Command::JoinSpace { space });
            w.check(&[alice, bob]);
            let create = |name: &str, kind, parent| Command::CreateChannel {
                space,
                name: name.into(),
                kind,
                parent,
                topic: None,
                overwrites: Vec::new(),
            };
            let Some(Created::Channel(cat)) =
                w.run(alice, create("cat", ChannelKind::Category, None))
            else {
                panic!("no category");
            };
            let Some(Created::Channel(staff)) =
                w.run(alice, create("staff", ChannelKind::Text, Some(cat)))
            else {
                panic!("no channel");
            };
            w.check(&[alice, bob]);
            w.run(
                alice,
                Command::SetOverwrite {
                    channel: staff,
                    target: OverwriteTarget::Role(space.everyone_role()),
                    allow: Permissions::empty(),
                    deny: Permissions::VIEW_CHANNEL,
                },
            );
            w.check(&[alice, bob]);
            w.run(
                alice,
                Command::UpdateChannel {
                    channel: staff,
                    name: Some("staff-room".into()),
                    topic: Some(Some("t".into())),
                    position: Some(3),
                    parent: Some(None),
                    slowmode_secs: Some(5),
                },
            );
            w.check(&[alice, bob]);
            w.run(alice, Command::DeleteChannel { channel: staff });
            w.check(&[alice, bob]);
        }
    }
}
