//! Commands: everything a user, a client or the server's operator may ask of the core.

use serde::{Deserialize, Serialize};

use crate::id::{ChannelId, ClientId, MessageId, RoleId, SpaceId, UserId};
use crate::model::{Activity, Attachment, ChannelKind, MessageKind, Status};
use crate::perm::{OverwriteTarget, Permissions};

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// A client of a user (authenticated by the engine from its token).
    Client(ClientId),
    /// Nobody yet: creating a guest session or an account, or logging in (the engine checked the password).
    Anonymous,
    /// The server's operator (the CLI, the engine's own housekeeping): acts as the server's user, who owns
    /// the network and bypasses every permission there.
    System,
}

/// A channel named by id or by `#name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelRef {
    /// By id.
    Id(ChannelId),
    /// By network name (`#name`, any case).
    Name(String),
}

/// A user named by id or by nick.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserRef {
    /// By id.
    Id(UserId),
    /// By nick (any case).
    Nick(String),
}

/// Where a message goes: a channel, or a user (a DM, created on first use).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A channel.
    Channel(ChannelRef),
    /// A user, by DM.
    User(UserRef),
}

impl Target {
    /// Parses the IRC-style `to` field: `#name` is a channel, anything else a nick.
    pub fn parse(to: &str) -> Self {
        if to.starts_with('#') {
            Target::Channel(ChannelRef::Name(to.to_owned()))
        } else {
            Target::User(UserRef::Nick(to.to_owned()))
        }
    }
}

/// A new client's details; the engine made the token and passes only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewClient {
    /// A label ("web", "phone"); at most 64 bytes.
    pub name: String,
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
}

/// A message to send.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// `Message`, `Action` or `Notice`.
    pub kind: Option<MessageKind>,
    /// The text.
    pub body: String,
    /// A JSON object kept verbatim (the transport checks that it is one).
    pub meta: Option<String>,
    /// The message replied to.
    pub reply_to: Option<MessageId>,
    /// Files, already stored by the engine.
    pub attachments: Vec<Attachment>,
    /// Embeds as a JSON array, kept verbatim.
    pub embeds: Option<String>,
    /// The client's nonce, echoed back (at most 64 bytes).
    pub nonce: Option<String>,
    /// Text-to-speech.
    pub tts: bool,
}

/// Field changes: `None` leaves a field as it is; `Some(None)` clears an optional one.
pub type Change<T> = Option<T>;

/// A command. Each is permission-checked against the acting user; a refused command changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    // --- sessions -------------------------------------------------------------------------------------------
    /// Creates a user with its first client: a guest (no hash), an account, or a bot. From `Anonymous` (or
    /// `System`, e.g. the CLI creating accounts, where the client is optional).
    Register {
        /// The nick.
        nick: String,
        /// The password hash; `None` makes a guest.
        password_hash: Option<String>,
        /// A bot account.
        bot: bool,
        /// The first client.
        client: Option<NewClient>,
    },
    /// Adds a client to an existing account (the engine verified the password). From `Anonymous` or `System`.
    Login {
        /// Whose session.
        user: UserId,
        /// The new client.
        client: NewClient,
    },
    /// Drops the acting client; a guest's last client ends its session.
    Logout,
    /// Sets a user's password hash (self, or any user from `System`). A guest that sets one becomes an account.
    SetPassword {
        /// Whose.
        user: UserId,
        /// The new hash.
        password_hash: String,
    },
    /// Ends the session: leaves every network channel with a QUIT; a guest is released.
    Quit {
        /// The quit message.
        reason: Option<String>,
    },
    /// The acting client gained a live connection (presence).
    Connect,
    /// The acting client lost a live connection (presence).
    Disconnect,
    /// Marks the acting client as alive without doing anything else (resets its idle timer).
    Touch,
    /// Changes nick.
    Nick {
        /// The new nick.
        nick: String,
    },
    /// Changes the profile.
    UpdateProfile {
        /// Display name.
        display_name: Change<Option<String>>,
        /// Bio.
        bio: Change<Option<String>>,
        /// Avatar url.
        avatar_url: Change<Option<String>>,
    },
    /// Sets or clears away.
    Away {
        /// The message; `None` or empty = back.
        message: Option<String>,
    },
    /// Sets or clears an explicit presence.
    SetStatus {
        /// The status; `None` = derive from live clients.
        status: Option<Status>,
    },

    // --- network channels -----------------------------------------------------------------------------------
    /// Joins a network channel, creating it (with `+o` for the creator) if it does not exist.
    Join {
        /// `#name`.
        channel: String,
        /// The `+k` key.
        key: Option<String>,
    },
    /// Leaves a network channel, or a group DM.
    Part {
        /// Which.
        channel: ChannelRef,
        /// Why.
        reason: Option<String>,
    },
    /// Removes a user from a network channel.
    Kick {
        /// Where.
        channel: ChannelRef,
        /// Whom.
        user: UserRef,
        /// Why.
        reason: Option<String>,
    },
    /// Invites a user to a network channel.
    Invite {
        /// Where.
        channel: ChannelRef,
        /// Whom.
        user: UserRef,
    },
    /// Sets or clears the topic.
    Topic {
        /// Where.
        channel: ChannelRef,
        /// The topic; empty clears it.
        topic: String,
    },
    /// Changes modes: `modes` like `+o-v+k`, `args` consumed in order by the letters that take one.
    Mode {
        /// Where.
        channel: ChannelRef,
        /// The mode string.
        modes: String,
        /// Arguments.
        args: Vec<String>,
    },

    // --- messages -------------------------------------------------------------------------------------------
    /// Sends a message, an action or a notice to a channel or a user.
    Send {
        /// Where.
        to: Target,
        /// What.
        message: Outgoing,
    },
    /// Edits one's own message.
    Edit {
        /// Which.
        message: MessageId,
        /// The new body.
        body: String,
        /// New meta, if replaced.
        meta: Option<String>,
        /// New embeds (a JSON array, opaque to the core), if replaced.
        embeds: Option<String>,
    },
    /// Deletes a message (one's own, or any with MANAGE_MESSAGES).
    Delete {
        /// Which.
        message: MessageId,
    },
    /// Deletes several messages of one channel (MANAGE_MESSAGES).
    BulkDelete {
        /// Where.
        channel: ChannelId,
        /// Which (2..=100).
        messages: Vec<MessageId>,
    },
    /// Adds one's reaction.
    React {
        /// To which message.
        message: MessageId,
        /// The emoji.
        emoji: String,
    },
    /// Removes a reaction: one's own, or another user's with MANAGE_MESSAGES.
    Unreact {
        /// From which message.
        message: MessageId,
        /// The emoji.
        emoji: String,
        /// Whose reaction; `None` = one's own.
        user: Option<UserId>,
    },
    /// Pins a message.
    Pin {
        /// Which.
        message: MessageId,
    },
    /// Unpins a message.
    Unpin {
        /// Which.
        message: MessageId,
    },
    /// Says the user is typing (at most one event per user per channel per 5 s).
    Typing {
        /// Where.
        channel: ChannelRef,
    },
    /// Marks a channel read up to a message.
    Read {
        /// Where.
        channel: ChannelRef,
        /// Up to which message.
        message: MessageId,
    },
    /// Starts a thread in a text channel, optionally from a message.
    CreateThread {
        /// The parent channel.
        channel: ChannelRef,
        /// The thread's name.
        name: String,
        /// The message it starts from.
        message: Option<MessageId>,
    },
    /// Opens the DM with a user without sending anything: creates the DM channel unless it exists, and
    /// answers [`crate::Created::Channel`] either way.
    OpenDm {
        /// The other side.
        user: UserRef,
    },
    /// Creates a group DM with the acting user and these users.
    CreateGroupDm {
        /// The other members (1..=9).
        users: Vec<UserId>,
        /// Its name.
        name: Option<String>,
    },
    /// Adds a user to a group DM (any member may).
    AddRecipient {
        /// Which group DM.
        channel: ChannelId,
        /// Whom.
        user: UserId,
    },
    /// Removes a user from a group DM (the owner may; anyone may remove themself).
    RemoveRecipient {
        /// Which group DM.
        channel: ChannelId,
        /// Whom.
        user: UserId,
    },

    // --- spaces ---------------------------------------------------------------------------------------------
    /// Creates a space owned by the acting user, with @everyone and a `general` channel.
    CreateSpace {
        /// Name.
        name: String,
        /// Description.
        description: Option<String>,
        /// Joinable without invite.
        public: bool,
    },
    /// Changes a space (MANAGE_GUILD).
    UpdateSpace {
        /// Which.
        space: SpaceId,
        /// Name.
        name: Change<String>,
        /// Description.
        description: Change<Option<String>>,
        /// Icon url.
        icon_url: Change<Option<String>>,
        /// Public.
        public: Change<bool>,
    },
    /// Deletes a space (owner only; not the network).
    DeleteSpace {
        /// Which.
        space: SpaceId,
    },
    /// Joins a public space.
    JoinSpace {
        /// Which.
        space: SpaceId,
    },
    /// Leaves a space (not the network; not as its owner).
    LeaveSpace {
        /// Which.
        space: SpaceId,
    },
    /// Removes a member (KICK_MEMBERS, above them in the hierarchy).
    KickMember {
        /// Where.
        space: SpaceId,
        /// Whom.
        user: UserId,
        /// Why.
        reason: Option<String>,
    },
    /// Bans a user (BAN_MEMBERS, above them): removed and kept out.
    BanMember {
        /// Where.
        space: SpaceId,
        /// Whom.
        user: UserId,
        /// Why.
        reason: Option<String>,
    },
    /// Lifts a ban (BAN_MEMBERS).
    UnbanMember {
        /// Where.
        space: SpaceId,
        /// Whom.
        user: UserId,
    },
    /// Creates a role (MANAGE_ROLES; only permissions the actor has).
    CreateRole {
        /// Where.
        space: SpaceId,
        /// Name.
        name: String,
        /// Permissions.
        permissions: Permissions,
        /// Color.
        color: u32,
        /// Hoisted.
        hoist: bool,
        /// Mentionable.
        mentionable: bool,
    },
    /// Changes a role (MANAGE_ROLES, below the actor's top role).
    UpdateRole {
        /// Where.
        space: SpaceId,
        /// Which.
        role: RoleId,
        /// Name.
        name: Change<String>,
        /// Permissions.
        permissions: Change<Permissions>,
        /// Color.
        color: Change<u32>,
        /// Hoisted.
        hoist: Change<bool>,
        /// Mentionable.
        mentionable: Change<bool>,
        /// Position.
        position: Change<i32>,
    },
    /// Deletes a role (MANAGE_ROLES; not @everyone).
    DeleteRole {
        /// Where.
        space: SpaceId,
        /// Which.
        role: RoleId,
    },
    /// Sets a member's roles (MANAGE_ROLES; only roles below the actor's top role change).
    SetMemberRoles {
        /// Where.
        space: SpaceId,
        /// Whom.
        user: UserId,
        /// All roles besides @everyone.
        roles: Vec<RoleId>,
    },
    /// Sets a member's space nickname (CHANGE_NICKNAME for oneself, MANAGE_NICKNAMES for others).
    SetMemberNick {
        /// Where.
        space: SpaceId,
        /// Whom.
        user: UserId,
        /// The nickname; `None` clears it.
        nick: Option<String>,
    },
    /// Creates a channel or category in a space (MANAGE_CHANNELS). Network channels come from JOIN.
    CreateChannel {
        /// Where.
        space: SpaceId,
        /// Name.
        name: String,
        /// `Text` or `Category`.
        kind: ChannelKind,
        /// Its category.
        parent: Option<ChannelId>,
        /// Topic.
        topic: Option<String>,
        /// Initial overwrites.
        overwrites: Vec<(OverwriteTarget, Permissions, Permissions)>,
    },
    /// Changes a channel (MANAGE_CHANNELS; a network channel keeps its name).
    UpdateChannel {
        /// Which.
        channel: ChannelId,
        /// Name.
        name: Change<String>,
        /// Topic.
        topic: Change<Option<String>>,
        /// Position.
        position: Change<i32>,
        /// Category.
        parent: Change<Option<ChannelId>>,
        /// Slow mode seconds (0..=21600).
        slowmode_secs: Change<u32>,
    },
    /// Deletes a channel (MANAGE_CHANNELS): everyone on it is removed.
    DeleteChannel {
        /// Which.
        channel: ChannelId,
    },
    /// Sets a permission overwrite (MANAGE_ROLES on the channel).
    SetOverwrite {
        /// Where.
        channel: ChannelId,
        /// Whose.
        target: OverwriteTarget,
        /// Granted.
        allow: Permissions,
        /// Denied.
        deny: Permissions,
    },
    /// Removes a permission overwrite (MANAGE_ROLES on the channel).
    DeleteOverwrite {
        /// Where.
        channel: ChannelId,
        /// Whose.
        target: OverwriteTarget,
    },

    // --- invites --------------------------------------------------------------------------------------------
    /// Makes an invite link to a space (CREATE_INSTANT_INVITE) or a network channel.
    CreateInvite {
        /// Where it leads: a space's channel or a network channel.
        channel: ChannelId,
        /// Uses allowed (0 = unlimited).
        max_uses: u32,
        /// Seconds until it expires (0 = never).
        max_age_secs: u32,
    },
    /// Revokes an invite (its creator, or MANAGE_GUILD / MANAGE_CHANNELS).
    RevokeInvite {
        /// Its code.
        code: String,
    },
    /// Uses an invite: joins its space, or its network channel.
    UseInvite {
        /// Its code.
        code: String,
    },

    // --- presence, continued ------------------------------------------------------------------------------------
    /// Sets what the user is doing (replacing what was set before; empty clears it). Live-only, like presence.
    SetActivities {
        /// At most 5, each with a name of 1 to 128 characters and a state of at most 128 (Discord's
        /// limits).
        activities: Vec<Activity>,
    },
    /// Federation: takes an op from a linked server (`from`), once. Origin: [`Origin::System`].
    Relay {
        /// The op.
        op: Box<crate::federation::RemoteOp>,
        /// The linked server that sent it.
        from: String,
    },
    /// Federation: records the state of every network channel with local members, for linked servers to
    /// merge (on link, and when a link comes back). Origin: [`Origin::System`].
    AnnounceChannels,
}
