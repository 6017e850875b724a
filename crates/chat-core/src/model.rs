//! The records the core holds: users, clients, spaces, roles, channels, members, messages, invites.
//!
//! Records refer to each other by id. Fields that only the core may change are private to the crate; the
//! public ones are what embedders and the transports read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::id::{ChannelId, ClientId, InviteId, MessageId, RoleId, SpaceId, UnixMillis, UserId};
use crate::perm::{OverwriteTarget, Permissions};

/// A user: an account (with a password hash) or a guest (without one), a bot, or the server's own user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// The current nick, case preserved. A released guest keeps its last nick here for display in history.
    pub nick: String,
    /// The password hash (PHC string) set by the engine; `None` for guests. The core never hashes.
    pub password_hash: Option<String>,
    /// Display name shown instead of the nick where a client chooses to.
    pub display_name: Option<String>,
    /// Free-text bio.
    pub bio: Option<String>,
    /// Avatar url.
    pub avatar_url: Option<String>,
    /// A bot account.
    pub bot: bool,
    /// The server's own user (owner of the network; author of system notices). Cannot log in.
    pub system: bool,
    /// When the user was created.
    pub created_at: UnixMillis,
    /// The away message, if away.
    pub away: Option<String>,
    /// An explicit presence that overrides the derived one. Live-only, like presence: not in snapshots.
    #[serde(skip)]
    pub status_override: Option<Status>,
    /// What the user is doing, as their client said last. Live-only: not in snapshots, cleared when the
    /// user goes offline.
    #[serde(skip)]
    pub activities: Vec<Activity>,
    /// A cluster follower's copy of the presence the writer last announced (see [`crate::Core::observe`]):
    /// when set, it is the user's presence on this node. Live-only.
    #[serde(skip)]
    pub(crate) observed: Option<Status>,
    /// A guest whose session ended: its nick is free again and it has no clients or memberships.
    pub released: bool,
    /// Explicit channel memberships (network channels, DMs, group DMs).
    pub(crate) channels: BTreeSet<ChannelId>,
    /// Spaces the user is a member of, the network included.
    pub(crate) spaces: BTreeSet<SpaceId>,
    /// The user's clients.
    pub(crate) clients: BTreeSet<ClientId>,
    /// A remote user's home (a linked server and the user's id there); `None` for this server's users.
    /// A remote user's nick is `nick@server`; it has no clients and no password, and it never expires.
    #[serde(default)]
    pub home: Option<crate::federation::Home>,
}

impl User {
    /// A user as it is created: `nick`, nothing else set (a guest of this server until told otherwise).
    pub(crate) fn new(id: UserId, nick: String, created_at: UnixMillis) -> Self {
        Self {
            id,
            nick,
            password_hash: None,
            display_name: None,
            bio: None,
            avatar_url: None,
            bot: false,
            system: false,
            created_at,
            away: None,
            status_override: None,
            activities: Vec::new(),
            observed: None,
            released: false,
            channels: BTreeSet::new(),
            spaces: BTreeSet::new(),
            clients: BTreeSet::new(),
            home: None,
        }
    }

    /// A guest has no password; its nick is released when its session ends.
    pub fn is_guest(&self) -> bool {
        self.password_hash.is_none() && !self.bot && !self.system && self.home.is_none()
    }

    /// A user of a linked server.
    pub fn is_remote(&self) -> bool {
        self.home.is_some()
    }

    /// Channels the user joined explicitly: network channels, DMs and group DMs.
    pub fn joined_channels(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.channels.iter().copied()
    }

    /// Spaces the user is a member of, the network included.
    pub fn spaces(&self) -> impl Iterator<Item = SpaceId> + '_ {
        self.spaces.iter().copied()
    }

    /// The user's clients (devices).
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.clients.iter().copied()
    }
}

/// What a user is doing, as their client says (Discord's activities): live-only, like presence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Activity {
    /// What: a game's name, a song, a stream's title.
    pub name: String,
    /// How to read the name.
    pub kind: ActivityKind,
    /// A line of detail (a custom status's text, a party's state).
    pub state: Option<String>,
}

/// The kinds of activity, in Discord's order (its `type` numbers are the positions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivityKind {
    /// "Playing {name}".
    Playing,
    /// "Streaming {name}".
    Streaming,
    /// "Listening to {name}".
    Listening,
    /// "Watching {name}".
    Watching,
    /// A custom status: the text is in `state`.
    Custom,
    /// "Competing in {name}".
    Competing,
}

/// Presence as others see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Connected and active.
    Online,
    /// Connected but idle, or set idle.
    Idle,
    /// Do not disturb.
    Dnd,
    /// Connected but shown as offline (only as an override).
    Invisible,
    /// No live client.
    Offline,
}

/// A client: one device of a user, with its own token (stored as a hash) and its own cursor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// The client's id.
    pub id: ClientId,
    /// Whose client it is.
    pub user: UserId,
    /// A label the device gave itself ("web", "phone").
    pub name: String,
    /// SHA-256 of the client's token, computed by the engine.
    pub token_hash: [u8; 32],
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it last did anything; it expires SESSION_IDLE_TIMEOUT after this.
    pub last_seen: UnixMillis,
    /// Live connections (long-polls, sockets) right now; presence is derived from these. Not durable.
    #[serde(skip)]
    pub connections: u32,
}

/// A space (a Discord guild). The network is the built-in one that holds `#channels` and every user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// The space's id, which is also its @everyone role's id.
    pub id: SpaceId,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its icon url.
    pub icon_url: Option<String>,
    /// The owner, who bypasses every permission.
    pub owner: UserId,
    /// Whether anyone may join without an invite.
    pub public: bool,
    /// The built-in network space.
    pub network: bool,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Roles by id, @everyone included.
    pub roles: BTreeMap<RoleId, Role>,
    pub(crate) members: BTreeMap<UserId, SpaceMember>,
    pub(crate) bans: BTreeMap<UserId, Option<String>>,
    pub(crate) channels: BTreeSet<ChannelId>,
}

impl Space {
    /// The members of the space.
    pub fn members(&self) -> impl Iterator<Item = &SpaceMember> {
        self.members.values()
    }

    /// One member.
    pub fn member(&self, user: UserId) -> Option<&SpaceMember> {
        self.members.get(&user)
    }

    /// How many members it has.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The space's channels (categories and text channels; not threads).
    pub fn channels(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.channels.iter().copied()
    }

    /// Banned users with the reason given.
    pub fn bans(&self) -> impl Iterator<Item = (UserId, Option<&str>)> {
        self.bans.iter().map(|(u, r)| (*u, r.as_deref()))
    }
}

/// A role in a space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The role's id; @everyone's equals the space's.
    pub id: RoleId,
    /// Its name.
    pub name: String,
    /// What it grants.
    pub permissions: Permissions,
    /// Its color (RGB).
    pub color: u32,
    /// Shown separately in member lists.
    pub hoist: bool,
    /// May be mentioned.
    pub mentionable: bool,
    /// Its place in the hierarchy: higher outranks lower. @everyone is 0.
    pub position: i32,
}

/// A user's membership of a space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceMember {
    /// The member.
    pub user: UserId,
    /// Roles besides @everyone.
    pub roles: BTreeSet<RoleId>,
    /// A nickname in this space.
    pub nick: Option<String>,
    /// When they joined.
    pub joined_at: UnixMillis,
}

/// What a channel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelKind {
    /// A text channel: a `#channel` in the network, or a channel in a space.
    Text,
    /// A category that groups a space's channels.
    Category,
    /// A direct-message channel between two users.
    Dm,
    /// A direct-message channel between several users.
    GroupDm,
    /// A thread started in a text channel.
    Thread,
}

impl ChannelKind {
    /// The kind's stable snake_case name (`text`, `category`, `dm`, `group_dm`, `thread`).
    pub fn name(self) -> &'static str {
        match self {
            ChannelKind::Text => "text",
            ChannelKind::Category => "category",
            ChannelKind::Dm => "dm",
            ChannelKind::GroupDm => "group_dm",
            ChannelKind::Thread => "thread",
        }
    }
}

/// The IRC channel modes that are flags rather than permission overwrites.
///
/// `+m` and `+i` live in the @everyone overwrite, `+o` and `+v` are member modes that contribute member
/// overwrites, and `+b` masks deny at their own layer; see [`crate::Core::channel_permissions`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelFlags {
    /// `+s`: hidden from channel lists and from non-members' whois.
    pub secret: bool,
    /// `+t`: only those with MANAGE_CHANNELS set the topic.
    pub topic_lock: bool,
    /// `+n`: non-members cannot send to the channel.
    pub no_external: bool,
    /// `+k`: the key needed to join.
    pub key: Option<String>,
    /// `+l`: the most members the channel admits.
    pub limit: Option<u32>,
}

/// A channel's topic with who set it and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// The text.
    pub text: String,
    /// Who set it.
    pub by: UserId,
    /// When.
    pub at: UnixMillis,
}

/// A `+b` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The mask (see [`crate::name::ban_matches`]).
    pub mask: String,
    /// Who set it.
    pub by: UserId,
    /// When.
    pub at: UnixMillis,
    /// The users the ban holds whatever their nick: those it matched when it was set, and any who took
    /// another nick while it matched them. A mask names a nick, but a ban is meant for a person, who must
    /// not walk out of it with `NICK`. Removing the ban frees them all. Added in the log's format 3 (a ban
    /// of an older snapshot binds no one until it matches someone again).
    #[serde(default)]
    pub bound: BTreeSet<UserId>,
}

impl Ban {
    /// Whether the ban holds against `user`: bound by it, or matched by its mask now.
    pub fn holds(&self, user: &User) -> bool {
        self.bound.contains(&user.id) || crate::name::ban_matches(&self.mask, user)
    }
}

/// A member's modes on a network channel (`+o`, `+v`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberModes {
    /// `+o`: channel operator.
    pub op: bool,
    /// `+v`: may speak when the channel is `+m`.
    pub voice: bool,
}

/// A channel of any kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The channel's id.
    pub id: ChannelId,
    /// What kind it is.
    pub kind: ChannelKind,
    /// Its space; `None` for DMs and group DMs.
    pub space: Option<SpaceId>,
    /// Its category (text channels in spaces) or parent channel (threads).
    pub parent: Option<ChannelId>,
    /// Its name (`#name` in the network; free text in spaces; empty for DMs).
    pub name: String,
    /// Its topic.
    pub topic: Option<Topic>,
    /// Sort position within its space.
    pub position: i32,
    /// Slow mode: seconds a member must wait between messages (0 = off).
    pub slowmode_secs: u32,
    /// Modes that are flags.
    pub flags: ChannelFlags,
    /// `+b` masks.
    pub bans: Vec<Ban>,
    /// Users invited (they may join past `+i`, `+k`, `+l` and `+b`).
    pub invited: BTreeSet<UserId>,
    /// Who created it (the group DM owner; the thread starter).
    pub owner: Option<UserId>,
    /// The message a thread was started from.
    pub starter: Option<MessageId>,
    /// When it was created.
    pub created_at: UnixMillis,
    /// The newest message.
    pub last_message: Option<MessageId>,
    /// Pinned messages, oldest first.
    pub pins: Vec<MessageId>,
    pub(crate) overwrites: BTreeMap<OverwriteTarget, (Permissions, Permissions)>,
    pub(crate) members: BTreeMap<UserId, MemberModes>,
    /// Message ids in order, at most MAX_HISTORY: the retention window the core knows about.
    pub(crate) history: VecDeque<MessageId>,
}

impl Channel {
    /// The channel's own member list with modes: explicit members (network channels, DMs) or derived ones
    /// (space channels). Empty for threads, whose members are their parent's ([`crate::Core::members`]).
    pub fn members(&self) -> impl Iterator<Item = (UserId, MemberModes)> + '_ {
        self.members.iter().map(|(u, m)| (*u, *m))
    }

    /// Message ids within the retention window the core keeps, oldest first.
    pub fn history(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.history.iter().copied()
    }

    /// Stored permission overwrites as (target, allow, deny).
    pub fn overwrites(&self) -> impl Iterator<Item = crate::perm::Overwrite> + '_ {
        self.overwrites
            .iter()
            .map(|(t, (a, d))| crate::perm::Overwrite {
                target: *t,
                allow: *a,
                deny: *d,
            })
    }

    /// The @everyone overwrite as (allow, deny).
    pub(crate) fn everyone_overwrite(&self, space: SpaceId) -> (Permissions, Permissions) {
        self.overwrites
            .get(&OverwriteTarget::Role(space.everyone_role()))
            .copied()
            .unwrap_or((Permissions::empty(), Permissions::empty()))
    }

    /// Whether `+m` is set: @everyone is denied SEND_MESSAGES.
    pub fn is_moderated(&self) -> bool {
        self.space.is_some_and(|s| {
            self.everyone_overwrite(s)
                .1
                .contains(Permissions::SEND_MESSAGES)
        })
    }

    /// Whether `+i` is set: @everyone is denied VIEW_CHANNEL.
    pub fn is_invite_only(&self) -> bool {
        self.space.is_some_and(|s| {
            self.everyone_overwrite(s)
                .1
                .contains(Permissions::VIEW_CHANNEL)
        })
    }

    /// The flag modes set, as letters in the order `imnst` (no `+`, no key or limit).
    pub fn flag_letters(&self) -> String {
        let mut letters = String::new();
        for (on, letter) in [
            (self.is_invite_only(), 'i'),
            (self.is_moderated(), 'm'),
            (self.flags.no_external, 'n'),
            (self.flags.secret, 's'),
            (self.flags.topic_lock, 't'),
        ] {
            if on {
                letters.push(letter);
            }
        }
        letters
    }

    /// The channel's modes as an IRC mode string, e.g. `+int` or `+kl secret 10` (key shown when `show_key`).
    pub fn mode_string(&self, show_key: bool) -> String {
        let mut letters = String::from("+");
        let mut args = Vec::new();
        if self.is_invite_only() {
            letters.push('i');
        }
        if self.is_moderated() {
            letters.push('m');
        }
        if self.flags.no_external {
            letters.push('n');
        }
        if self.flags.secret {
            letters.push('s');
        }
        if self.flags.topic_lock {
            letters.push('t');
        }
        if let Some(key) = &self.flags.key {
            letters.push('k');
            args.push(if show_key {
                key.clone()
            } else {
                "*".to_owned()
            });
        }
        if let Some(limit) = self.flags.limit {
            letters.push('l');
            args.push(limit.to_string());
        }
        if letters.len() == 1 {
            return String::new();
        }
        for a in args {
            letters.push(' ');
            letters.push_str(&a);
        }
        letters
    }
}

/// The kind of a message: user-written kinds and system kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    /// A normal message (PRIVMSG).
    Message,
    /// An action (`/me`).
    Action,
    /// A notice (never answered automatically).
    Notice,
    /// System: a user joined.
    Join,
    /// System: a user parted.
    Part,
    /// System: a user quit.
    Quit,
    /// System: a user was kicked.
    Kick,
    /// System: the topic changed.
    Topic,
    /// System: modes changed.
    Mode,
    /// System: a user changed nick.
    Nick,
    /// System: a user was invited.
    Invite,
    /// System: a message was pinned.
    Pin,
    /// System: a thread was started.
    ThreadCreated,
}

impl MessageKind {
    /// Every kind, user-written ones first.
    pub const ALL: [MessageKind; 13] = [
        MessageKind::Message,
        MessageKind::Action,
        MessageKind::Notice,
        MessageKind::Join,
        MessageKind::Part,
        MessageKind::Quit,
        MessageKind::Kick,
        MessageKind::Topic,
        MessageKind::Mode,
        MessageKind::Nick,
        MessageKind::Invite,
        MessageKind::Pin,
        MessageKind::ThreadCreated,
    ];

    /// The kind's stable snake_case name (`message`, `thread_created`...), as SPEC's event types spell it.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Message => "message",
            MessageKind::Action => "action",
            MessageKind::Notice => "notice",
            MessageKind::Join => "join",
            MessageKind::Part => "part",
            MessageKind::Quit => "quit",
            MessageKind::Kick => "kick",
            MessageKind::Topic => "topic",
            MessageKind::Mode => "mode",
            MessageKind::Nick => "nick",
            MessageKind::Invite => "invite",
            MessageKind::Pin => "pin",
            MessageKind::ThreadCreated => "thread_created",
        }
    }

    /// The kind a [`MessageKind::name`] stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether users write messages of this kind (as opposed to the server recording a change).
    pub fn is_user_written(self) -> bool {
        matches!(
            self,
            MessageKind::Message | MessageKind::Action | MessageKind::Notice
        )
    }
}

/// A file attached to a message; the bytes live outside the core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The attachment's id.
    pub id: u64,
    /// Its file name as uploaded (the transports make it safe to serve).
    pub filename: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub content_type: Option<String>,
    /// The random part of its URL that makes the URL unguessable (chosen by the transport that stored the
    /// file; ASCII letters and digits, at most 64).
    pub token: String,
}

/// A full message, as carried by [`crate::EventKind::MessageCreated`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The message's id.
    pub id: MessageId,
    /// Where it was sent.
    pub channel: ChannelId,
    /// Who wrote it.
    pub author: UserId,
    /// Its kind.
    pub kind: MessageKind,
    /// Its text (UTF-8).
    pub body: String,
    /// Client-supplied JSON object, kept verbatim.
    pub meta: Option<String>,
    /// The message it replies to.
    pub reply_to: Option<MessageId>,
    /// Users it mentions (`@nick`).
    pub mentions: Vec<UserId>,
    /// It mentions `@everyone` and the author may (MENTION_EVERYONE).
    pub mention_everyone: bool,
    /// It mentions `@here` and the author may (MENTION_EVERYONE).
    pub mention_here: bool,
    /// Files attached.
    pub attachments: Vec<Attachment>,
    /// Embeds as a JSON array, kept verbatim.
    pub embeds: Option<String>,
    /// The client's nonce, echoed to it.
    pub nonce: Option<String>,
    /// Text-to-speech.
    pub tts: bool,
}

/// What the core keeps of a message after it is sent: enough to check edits, deletions, reactions, pins and
/// replies. Bodies live in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Where it was sent.
    pub channel: ChannelId,
    /// Who wrote it.
    pub author: UserId,
    /// Its kind.
    pub kind: MessageKind,
    /// The thread started from it.
    pub thread: Option<ChannelId>,
    /// The message it replies to.
    pub reply_to: Option<MessageId>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// When it was last edited.
    pub edited_at: Option<UnixMillis>,
    /// Reactions: emoji to the users who reacted, in order.
    pub reactions: BTreeMap<String, Vec<UserId>>,
}

/// A user's read position in a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    /// The last message read.
    pub last_read: Option<MessageId>,
    /// Messages after `last_read` that mention the user.
    pub(crate) mentions: Vec<MessageId>,
}

impl ReadState {
    /// Unread mentions.
    pub fn mention_count(&self) -> usize {
        self.mentions.len()
    }
}

/// What an invite link leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InviteTarget {
    /// A space (and optionally its channel shown first).
    Space(SpaceId, Option<ChannelId>),
    /// A network channel: using the invite joins it past `+i`, `+k`, `+l` and `+b`.
    Channel(ChannelId),
}

/// An invite link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Its id.
    pub id: InviteId,
    /// Its code (what goes in the link).
    pub code: String,
    /// Where it leads.
    pub target: InviteTarget,
    /// Who made it.
    pub creator: UserId,
    /// How many uses it allows (0 = unlimited).
    pub max_uses: u32,
    /// How many times it was used.
    pub uses: u32,
    /// When it expires.
    pub expires_at: Option<UnixMillis>,
    /// When it was made.
    pub created_at: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_kind_names_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_name(kind.name()), Some(kind));
            assert!(seen.insert(kind.name()), "{} named twice", kind.name());
        }
        assert_eq!(MessageKind::from_name("Message"), None);
        assert_eq!(MessageKind::ThreadCreated.name(), "thread_created");
    }
}
