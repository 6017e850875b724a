//! Events: what the core emits for every change it accepts, each with its audience.

use serde::{Deserialize, Serialize};

use crate::id::{ChannelId, ClientId, MessageId, RoleId, Seq, SpaceId, UnixMillis, UserId};
use crate::model::{
    Activity, ChannelFlags, ChannelKind, Invite, Message, MessageKind, Role, Status, Topic,
};
use crate::perm::{OverwriteTarget, Permissions};

/// One change, in log order.
///
/// Durable events have dense seqs from 1. Ephemeral events (typing, presence) are delivered live and never
/// logged: they carry the seq of the last durable event before them and [`Event::is_durable`] is false.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The event's position in the log.
    pub seq: Seq,
    /// When it happened (unix ms), from the `now` of the call that made it.
    pub ts: UnixMillis,
    /// Who receives it in their stream.
    pub audience: Audience,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// Whether the event goes into the log (true) or is live-only (typing, presence).
    pub fn is_durable(&self) -> bool {
        !matches!(
            self.kind,
            EventKind::Typing { .. }
                | EventKind::PresenceChanged { .. }
                | EventKind::PresenceUpdated { .. }
        )
    }
}

/// Who receives an event in their stream.
///
/// Channel and space audiences are resolved against the state as it stands right after the command that
/// produced the event; [`crate::Core::recipients`] does that without scanning all users. Where the state after
/// the command no longer says who should see an event (a QUIT, a deleted channel), the core lists the users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// Nobody: internal state such as a new client's token hash.
    Nobody,
    /// One user (all of their clients).
    User(UserId),
    /// These users (sorted, deduplicated: build with [`Audience::users`]).
    Users(Vec<UserId>),
    /// The members of a channel (a thread's are its parent's).
    Channel(ChannelId),
    /// The members of a channel and one more user (who just parted or was kicked).
    ChannelAnd(ChannelId, UserId),
    /// The members of a space.
    Space(SpaceId),
    /// The members of a space and one more user (who just left or was removed).
    SpaceAnd(SpaceId, UserId),
}

impl Audience {
    /// A [`Audience::Users`] from any list: sorts and deduplicates it.
    pub fn users(mut users: Vec<UserId>) -> Self {
        users.sort_unstable();
        users.dedup();
        Audience::Users(users)
    }
}

/// Why a client went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientEnd {
    /// It logged out.
    Logout,
    /// It was idle longer than SESSION_IDLE_TIMEOUT.
    Expired,
    /// Its session ended (QUIT) or an operator removed it.
    Revoked,
}

/// Why a member left a space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    /// They left.
    Left,
    /// They were kicked.
    Kicked {
        /// By whom.
        by: UserId,
        /// Why.
        reason: Option<String>,
    },
    /// The space was deleted or their session ended.
    Gone,
}

/// One mode change, as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModeChange {
    /// A flag mode (`i m n s t`) set or unset.
    Flag {
        /// The letter.
        letter: char,
        /// `+` or `-`.
        on: bool,
    },
    /// `+k key` / `-k`.
    Key(Option<String>),
    /// `+l n` / `-l`.
    Limit(Option<u32>),
    /// `+b mask` / `-b mask`.
    Ban {
        /// The mask.
        mask: String,
        /// `+` or `-`.
        on: bool,
    },
    /// `+o nick` / `-o nick`.
    Op {
        /// Whom.
        user: UserId,
        /// `+` or `-`.
        on: bool,
    },
    /// `+v nick` / `-v nick`.
    Voice {
        /// Whom.
        user: UserId,
        /// `+` or `-`.
        on: bool,
    },
}

impl ModeChange {
    /// The IRC mode string of a list of changes, e.g. `+ok-v secret 123 456`. Member modes name the user by
    /// id (transports resolve ids to nicks when they render).
    pub fn line(changes: &[ModeChange]) -> String {
        let mut letters = String::new();
        let mut args: Vec<String> = Vec::new();
        let mut sign: Option<bool> = None;
        let mut push = |letters: &mut String, on: bool, letter: char| {
            if sign != Some(on) {
                letters.push(if on { '+' } else { '-' });
                sign = Some(on);
            }
            letters.push(letter);
        };
        for change in changes {
            match change {
                ModeChange::Flag { letter, on } => push(&mut letters, *on, *letter),
                ModeChange::Key(key) => {
                    push(&mut letters, key.is_some(), 'k');
                    if let Some(k) = key {
                        args.push(k.clone());
                    }
                }
                ModeChange::Limit(limit) => {
                    push(&mut letters, limit.is_some(), 'l');
                    if let Some(l) = limit {
                        args.push(l.to_string());
                    }
                }
                ModeChange::Ban { mask, on } => {
                    push(&mut letters, *on, 'b');
                    args.push(mask.clone());
                }
                ModeChange::Op { user, on } => {
                    push(&mut letters, *on, 'o');
                    args.push(user.to_string());
                }
                ModeChange::Voice { user, on } => {
                    push(&mut letters, *on, 'v');
                    args.push(user.to_string());
                }
            }
        }
        for a in args {
            letters.push(' ');
            letters.push_str(&a);
        }
        letters
    }
}

/// A channel's settings as carried by create and update events (membership is carried elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Its id.
    pub id: ChannelId,
    /// Its kind.
    pub kind: ChannelKind,
    /// Its space.
    pub space: Option<SpaceId>,
    /// Category or thread parent.
    pub parent: Option<ChannelId>,
    /// Name.
    pub name: String,
    /// Topic.
    pub topic: Option<Topic>,
    /// Position.
    pub position: i32,
    /// Slow mode seconds.
    pub slowmode_secs: u32,
    /// Flag modes.
    pub flags: ChannelFlags,
    /// Owner (group DM) or starter (thread).
    pub owner: Option<UserId>,
    /// A thread's starter message.
    pub starter: Option<MessageId>,
    /// Initial overwrites as (target, allow, deny).
    pub overwrites: Vec<(OverwriteTarget, Permissions, Permissions)>,
}

impl ChannelInfo {
    /// A new channel's settings: everything but its id, kind, space and name at its default.
    pub(crate) fn new(
        id: ChannelId,
        kind: ChannelKind,
        space: Option<SpaceId>,
        name: String,
    ) -> Self {
        Self {
            id,
            kind,
            space,
            parent: None,
            name,
            topic: None,
            position: 0,
            slowmode_secs: 0,
            flags: ChannelFlags::default(),
            owner: None,
            starter: None,
            overwrites: Vec::new(),
        }
    }
}

/// A space's settings as carried by create and update events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Its id.
    pub id: SpaceId,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Icon url.
    pub icon_url: Option<String>,
    /// Owner.
    pub owner: UserId,
    /// Joinable without invite.
    pub public: bool,
    /// The network.
    pub network: bool,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    /// A user was created (a guest session, an account, a bot, the server's user).
    UserCreated {
        /// The user's id.
        user: UserId,
        /// The nick.
        nick: String,
        /// The password hash; `None` for a guest.
        password_hash: Option<String>,
        /// A bot.
        bot: bool,
        /// The server's own user.
        system: bool,
    },
    /// A user's profile changed (full new values).
    ProfileUpdated {
        /// Whose.
        user: UserId,
        /// Display name.
        display_name: Option<String>,
        /// Bio.
        bio: Option<String>,
        /// Avatar url.
        avatar_url: Option<String>,
    },
    /// A user's password hash changed (guests become accounts this way).
    PasswordChanged {
        /// Whose.
        user: UserId,
        /// The new hash.
        password_hash: String,
    },
    /// A user changed nick; one system message per channel they are on.
    NickChanged {
        /// Who.
        user: UserId,
        /// The old nick.
        old: String,
        /// The new nick.
        new: String,
        /// The system message recorded in each of their channels.
        notices: Vec<(ChannelId, MessageId)>,
    },
    /// A client (device) was created.
    ClientCreated {
        /// The client.
        client: ClientId,
        /// Whose.
        user: UserId,
        /// Its label.
        name: String,
        /// SHA-256 of its token.
        token_hash: [u8; 32],
    },
    /// A client went away.
    ClientRemoved {
        /// The client.
        client: ClientId,
        /// Whose.
        user: UserId,
        /// Why.
        reason: ClientEnd,
    },
    /// A user quit: they left every network channel (and, for a guest, the nick and the user are released).
    Quit {
        /// Who.
        user: UserId,
        /// The quit message.
        reason: Option<String>,
        /// The system message recorded in each channel they were on.
        notices: Vec<(ChannelId, MessageId)>,
        /// Whether the user is released (a guest): nick freed, removed from every space.
        released: bool,
    },
    /// Away set or cleared.
    AwayChanged {
        /// Who.
        user: UserId,
        /// The away message; `None` = back.
        message: Option<String>,
    },
    /// Presence changed (live only).
    PresenceChanged {
        /// Whose.
        user: UserId,
        /// As others see it.
        status: Status,
    },
    /// Someone is typing (live only).
    Typing {
        /// Who.
        user: UserId,
        /// Where.
        channel: ChannelId,
    },
    /// A user read a channel up to a message; their other clients sync to it.
    ReadAck {
        /// Who.
        user: UserId,
        /// Where.
        channel: ChannelId,
        /// Up to which message.
        message: MessageId,
        /// Mentions still unread after it.
        mention_count: u32,
    },
    /// A space was created.
    SpaceCreated {
        /// The space.
        space: SpaceInfo,
        /// @everyone's permissions.
        everyone: Permissions,
    },
    /// A space's settings changed.
    SpaceUpdated {
        /// The space.
        space: SpaceInfo,
    },
    /// A space was deleted.
    SpaceDeleted {
        /// Which.
        space: SpaceId,
    },
    /// A user became a member of a space.
    MemberJoined {
        /// Which space.
        space: SpaceId,
        /// Who.
        user: UserId,
        /// The invite used.
        invite: Option<String>,
    },
    /// A member left a space.
    MemberLeft {
        /// Which space.
        space: SpaceId,
        /// Who.
        user: UserId,
        /// Why.
        reason: LeaveReason,
    },
    /// A member's roles or space nickname changed.
    MemberUpdated {
        /// Which space.
        space: SpaceId,
        /// Who.
        user: UserId,
        /// All their roles now.
        roles: Vec<RoleId>,
        /// Their space nickname now.
        nick: Option<String>,
    },
    /// A user was banned from a space (and removed from it if a member).
    SpaceBanned {
        /// Which space.
        space: SpaceId,
        /// Who.
        user: UserId,
        /// By whom.
        by: UserId,
        /// Why.
        reason: Option<String>,
    },
    /// A user was unbanned from a space.
    SpaceUnbanned {
        /// Which space.
        space: SpaceId,
        /// Who.
        user: UserId,
    },
    /// A role was created or changed (full new value).
    RoleUpserted {
        /// Which space.
        space: SpaceId,
        /// The role.
        role: Role,
        /// Whether it is new.
        created: bool,
    },
    /// A role was deleted.
    RoleDeleted {
        /// Which space.
        space: SpaceId,
        /// Which role.
        role: RoleId,
    },
    /// A channel was created (any kind).
    ChannelCreated {
        /// The channel.
        channel: ChannelInfo,
        /// Its first explicit members (DMs and group DMs).
        members: Vec<UserId>,
    },
    /// A channel's settings changed (full new values).
    ChannelUpdated {
        /// The channel.
        channel: ChannelInfo,
    },
    /// A channel was deleted (network channels when their last member leaves).
    ChannelDeleted {
        /// Which.
        channel: ChannelId,
    },
    /// Derived membership changed: these users gained or lost view of a space channel.
    ChannelAccess {
        /// Which channel.
        channel: ChannelId,
        /// Who can now see it.
        added: Vec<UserId>,
        /// Who no longer can.
        removed: Vec<UserId>,
    },
    /// A permission overwrite was set.
    OverwriteSet {
        /// Which channel.
        channel: ChannelId,
        /// Whose.
        target: OverwriteTarget,
        /// Granted.
        allow: Permissions,
        /// Denied.
        deny: Permissions,
    },
    /// A permission overwrite was removed.
    OverwriteDeleted {
        /// Which channel.
        channel: ChannelId,
        /// Whose.
        target: OverwriteTarget,
    },
    /// A user joined a channel explicitly (network channel, group DM, DM).
    Joined {
        /// Where.
        channel: ChannelId,
        /// Who.
        user: UserId,
        /// The join's system message.
        message: MessageId,
        /// Modes given on joining (the creator of a network channel gets `+o`).
        modes: crate::model::MemberModes,
    },
    /// A user left a channel.
    Parted {
        /// Where.
        channel: ChannelId,
        /// Who.
        user: UserId,
        /// Why.
        reason: Option<String>,
        /// The part's system message.
        message: MessageId,
    },
    /// A user was kicked from a channel.
    Kicked {
        /// Where.
        channel: ChannelId,
        /// Who.
        user: UserId,
        /// By whom.
        by: UserId,
        /// Why.
        reason: Option<String>,
        /// The kick's system message.
        message: MessageId,
    },
    /// The topic changed.
    TopicChanged {
        /// Where.
        channel: ChannelId,
        /// The new topic; `None` clears it.
        topic: Option<Topic>,
        /// Who changed it.
        by: UserId,
        /// The system message.
        message: MessageId,
    },
    /// Modes changed.
    ModeChanged {
        /// Where.
        channel: ChannelId,
        /// By whom.
        by: UserId,
        /// What changed, in order.
        changes: Vec<ModeChange>,
        /// The system message.
        message: MessageId,
    },
    /// A user was invited to a channel.
    Invited {
        /// Where.
        channel: ChannelId,
        /// Who.
        user: UserId,
        /// By whom.
        by: UserId,
        /// The system message.
        message: MessageId,
    },
    /// A message was sent (any kind, system kinds included when they stand alone, e.g. `thread_created`).
    MessageCreated {
        /// The message.
        message: Message,
    },
    /// A message was edited.
    MessageEdited {
        /// Where.
        channel: ChannelId,
        /// Which.
        message: MessageId,
        /// Who edited it: its author (only authors edit).
        author: UserId,
        /// The new body.
        body: String,
        /// The new meta, if replaced.
        meta: Option<String>,
        /// The mentions in the new body.
        mentions: Vec<UserId>,
        /// When.
        edited_at: UnixMillis,
        /// The new embeds, if replaced.
        embeds: Option<String>,
    },
    /// A message was deleted.
    MessageDeleted {
        /// Where.
        channel: ChannelId,
        /// Which.
        message: MessageId,
        /// By whom.
        by: UserId,
    },
    /// Several messages were deleted at once.
    MessagesDeleted {
        /// Where.
        channel: ChannelId,
        /// Which.
        messages: Vec<MessageId>,
        /// By whom.
        by: UserId,
    },
    /// A reaction was added.
    ReactionAdded {
        /// Where.
        channel: ChannelId,
        /// On which message.
        message: MessageId,
        /// Who reacted.
        user: UserId,
        /// The emoji (unicode, or `name:id`).
        emoji: String,
    },
    /// A reaction was removed.
    ReactionRemoved {
        /// Where.
        channel: ChannelId,
        /// On which message.
        message: MessageId,
        /// Whose reaction.
        user: UserId,
        /// The emoji.
        emoji: String,
    },
    /// A message was pinned.
    Pinned {
        /// Where.
        channel: ChannelId,
        /// Which.
        message: MessageId,
        /// By whom.
        by: UserId,
        /// The `pin` system message.
        notice: MessageId,
    },
    /// A message was unpinned.
    Unpinned {
        /// Where.
        channel: ChannelId,
        /// Which.
        message: MessageId,
        /// By whom.
        by: UserId,
    },
    /// An invite link was made.
    InviteCreated {
        /// The invite.
        invite: Invite,
    },
    /// An invite link was used.
    InviteUsed {
        /// Its code.
        code: String,
        /// By whom.
        user: UserId,
    },
    /// An invite link was revoked, used up or expired.
    InviteDeleted {
        /// Its code.
        code: String,
    },
    /// A network channel became secret (`listed: false`) or stopped being secret (`listed: true`). Its
    /// audience is the network's members who are not in the channel: their channel list loses or gains it.
    /// The flag itself changes with the [`EventKind::ModeChanged`] just before.
    ChannelListed {
        /// Which channel.
        channel: ChannelId,
        /// Whether non-members see it now.
        listed: bool,
    },
    /// Presence changed, or what the user is doing did (live only). Emitted in place of
    /// [`EventKind::PresenceChanged`] whenever the user has activities or they just changed, so that one
    /// event carries the whole presence; without activities a status change stays a `PresenceChanged`.
    PresenceUpdated {
        /// Whose.
        user: UserId,
        /// As others see it.
        status: Status,
        /// What they are doing (empty when offline).
        activities: Vec<Activity>,
    },
    /// A user of a linked server became known here (as `nick@server`).
    RemoteUserCreated {
        /// The user's id here.
        user: UserId,
        /// `nick@server`.
        nick: String,
        /// Its home server and its id there.
        home: crate::federation::Home,
    },
    /// Federation's marker (audience: nobody): an op linked servers share, made here (`from` is this
    /// server's name) or taken from the peer `from`. The outbox sends markers to peers; the highest `op.id`
    /// per origin is what was seen.
    Relayed {
        /// The op.
        op: Box<crate::federation::RemoteOp>,
        /// The server it came from (this server's own name for an op made here).
        from: String,
        /// The message it made here, for an op that sent one.
        made: Option<MessageId>,
    },
}

impl EventKind {
    /// The kind of system message this event records in channel history, if any.
    pub fn system_kind(&self) -> Option<MessageKind> {
        Some(match self {
            EventKind::Joined { .. } => MessageKind::Join,
            EventKind::Parted { .. } => MessageKind::Part,
            EventKind::Quit { .. } => MessageKind::Quit,
            EventKind::Kicked { .. } => MessageKind::Kick,
            EventKind::TopicChanged { .. } => MessageKind::Topic,
            EventKind::ModeChanged { .. } => MessageKind::Mode,
            EventKind::NickChanged { .. } => MessageKind::Nick,
            EventKind::Invited { .. } => MessageKind::Invite,
            EventKind::Pinned { .. } => MessageKind::Pin,
            _ => return None,
        })
    }
}
