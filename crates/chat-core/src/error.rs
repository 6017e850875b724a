//! Typed refusals: each says which rule refused a command, with an IRC numeric where IRC has one.

use std::fmt;

use crate::perm::Permissions;

/// A refusal's fixed text. Spelled as an alias so that serde does not take the field for one it may borrow
/// from the input (it reads them with `interned` instead).
type Text = &'static str;

/// Why the core refused a command. Nothing changes when a command is refused.
///
/// `name()` gives a stable snake_case identifier and `irc_numeric()` the IRC reply code, for the transports to
/// put on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The nick is held by another user (433).
    #[error("Nickname is already in use")]
    NickInUse,
    /// The nick breaks the nick rules (432).
    #[error("Erroneous nickname: {reason}")]
    ErroneousNick {
        /// Which rule it breaks.
        #[serde(deserialize_with = "interned")]
        reason: Text,
    },
    /// The channel name breaks the channel-name rules (479).
    #[error("Illegal channel name: {reason}")]
    BadChannelName {
        /// Which rule it breaks.
        #[serde(deserialize_with = "interned")]
        reason: Text,
    },
    /// No such channel, or not one the user may see (403).
    #[error("No such channel")]
    NoSuchChannel,
    /// No user has that nick or id (401).
    #[error("No such nick")]
    NoSuchNick,
    /// No such message in that channel, or deleted.
    #[error("No such message")]
    NoSuchMessage,
    /// No such space, or not one the user is in.
    #[error("No such space")]
    NoSuchSpace,
    /// No such role in that space.
    #[error("No such role")]
    NoSuchRole,
    /// No such invite, or it expired or is used up.
    #[error("No such invite")]
    NoSuchInvite,
    /// The client (device) does not exist: it logged out, expired, or never was.
    #[error("No such client")]
    NoSuchClient,
    /// The acting user is not on the channel (442).
    #[error("You're not on that channel")]
    NotOnChannel,
    /// The target user is not on the channel (441).
    #[error("They aren't on that channel")]
    UserNotInChannel,
    /// The target user is already on the channel (443).
    #[error("is already on channel")]
    UserOnChannel,
    /// The acting user is already a member of the space.
    #[error("Already a member of that space")]
    AlreadyMember,
    /// The acting user lacks a permission (482 in channels; Discord 50013).
    #[error("Permission needed: {}", .permission.first_name())]
    PrivilegesNeeded {
        /// The permission that was missing.
        permission: Permissions,
    },
    /// Only the space owner (or the acting user themself) may do this.
    #[error("Only the owner may do that")]
    NotOwner,
    /// The action targets a member whose top role is not below the actor's.
    #[error("Cannot act on a member or role at or above your highest role")]
    RoleHierarchy,
    /// Banned from the channel or space (474).
    #[error("Cannot join channel (+b)")]
    Banned,
    /// The channel is invite-only (473).
    #[error("Cannot join channel (+i)")]
    InviteOnly,
    /// Wrong or missing channel key (475).
    #[error("Cannot join channel (+k)")]
    BadKey,
    /// The channel is at its `+l` limit (471).
    #[error("Cannot join channel (+l)")]
    ChannelFull,
    /// Cannot send to the channel: `+m`, `+n`, a ban, or no send permission (404).
    #[error("Cannot send to channel")]
    CannotSend,
    /// The message body is longer than MAX_MESSAGE_SIZE bytes (417).
    #[error("Message too long: {len} bytes, at most {max}")]
    MessageTooLong {
        /// The body's length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// An empty message with nothing attached (412).
    #[error("No text to send")]
    NoTextToSend,
    /// Too fast: slow mode, or a limit on how often something may be done.
    #[error("Rate limited: retry after {retry_after_ms} ms")]
    RateLimited {
        /// Milliseconds until the command would be accepted.
        retry_after_ms: u64,
    },
    /// A mode letter the server does not know (472).
    #[error("is unknown mode char to me: {letter}")]
    UnknownMode {
        /// The letter.
        letter: char,
    },
    /// A mode or command lacks a parameter it needs (461).
    #[error("Not enough parameters: {what}")]
    NeedMoreParams {
        /// What is missing.
        #[serde(deserialize_with = "interned")]
        what: Text,
    },
    /// Something is at its limit (too many pins, channels, roles, recipients...).
    #[error("Limit reached: {what}")]
    LimitReached {
        /// Which limit.
        #[serde(deserialize_with = "interned")]
        what: Text,
    },
    /// A field of the command is invalid.
    #[error("Invalid {field}: {reason}")]
    InvalidInput {
        /// Which field.
        field: Field,
        /// What is wrong with it.
        #[serde(deserialize_with = "interned")]
        reason: Text,
    },
    /// The command does not apply to this kind of target (e.g. `+k` on a space channel, JOIN of a DM).
    #[error("Not supported here: {what}")]
    NotSupported {
        /// What was attempted.
        #[serde(deserialize_with = "interned")]
        what: Text,
    },
    /// The message already started a thread: a thread takes its starter message's id, so there can be one.
    #[error("A thread has already been created for this message")]
    ThreadExists,
}

impl Error {
    /// A stable snake_case name for the refusal, e.g. `nick_in_use`.
    pub fn name(&self) -> &'static str {
        match self {
            Error::NickInUse => "nick_in_use",
            Error::ErroneousNick { .. } => "erroneous_nick",
            Error::BadChannelName { .. } => "bad_channel_name",
            Error::NoSuchChannel => "no_such_channel",
            Error::NoSuchNick => "no_such_nick",
            Error::NoSuchMessage => "no_such_message",
            Error::NoSuchSpace => "no_such_space",
            Error::NoSuchRole => "no_such_role",
            Error::NoSuchInvite => "no_such_invite",
            Error::NoSuchClient => "no_such_client",
            Error::NotOnChannel => "not_on_channel",
            Error::UserNotInChannel => "user_not_in_channel",
            Error::UserOnChannel => "user_on_channel",
            Error::AlreadyMember => "already_member",
            Error::PrivilegesNeeded { .. } => "privileges_needed",
            Error::NotOwner => "not_owner",
            Error::RoleHierarchy => "role_hierarchy",
            Error::Banned => "banned",
            Error::InviteOnly => "invite_only",
            Error::BadKey => "bad_key",
            Error::ChannelFull => "channel_full",
            Error::CannotSend => "cannot_send",
            Error::MessageTooLong { .. } => "message_too_long",
            Error::NoTextToSend => "no_text_to_send",
            Error::RateLimited { .. } => "rate_limited",
            Error::UnknownMode { .. } => "unknown_mode",
            Error::NeedMoreParams { .. } => "need_more_params",
            Error::LimitReached { .. } => "limit_reached",
            Error::InvalidInput { .. } => "invalid_input",
            Error::NotSupported { .. } => "not_supported",
            Error::ThreadExists => "thread_exists",
        }
    }

    /// The IRC numeric reply for this refusal, where IRC has one.
    pub fn irc_numeric(&self) -> Option<u16> {
        Some(match self {
            Error::NoSuchNick => 401,
            Error::NoSuchChannel => 403,
            Error::CannotSend => 404,
            Error::NoTextToSend => 412,
            Error::MessageTooLong { .. } => 417,
            Error::ErroneousNick { .. } => 432,
            Error::NickInUse => 433,
            Error::UserNotInChannel => 441,
            Error::NotOnChannel => 442,
            Error::UserOnChannel => 443,
            Error::NeedMoreParams { .. } => 461,
            Error::ChannelFull => 471,
            Error::UnknownMode { .. } => 472,
            Error::InviteOnly => 473,
            Error::Banned => 474,
            Error::BadKey => 475,
            Error::BadChannelName { .. } => 479,
            Error::PrivilegesNeeded { .. } | Error::NotOwner | Error::RoleHierarchy => 482,
            _ => return None,
        })
    }
}

/// Names the field of a command that [`Error::InvalidInput`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Field {
    /// A message body.
    Body,
    /// Where a message or command is addressed.
    Target,
    /// A message's client-supplied JSON metadata.
    Meta,
    /// A message's embeds.
    Embeds,
    /// A message's attachments.
    Attachments,
    /// A client nonce.
    Nonce,
    /// A topic.
    Topic,
    /// A PART, KICK or QUIT reason.
    Reason,
    /// An away message.
    Away,
    /// A name (space, channel, role, category, thread).
    Name,
    /// A description or bio.
    Description,
    /// A display name.
    DisplayName,
    /// A url (avatar, icon).
    Url,
    /// A channel key (`+k`).
    Key,
    /// A channel limit (`+l`).
    Limit,
    /// A ban mask (`+b`).
    Mask,
    /// A mode string.
    Modes,
    /// An emoji.
    Emoji,
    /// A client (device) name.
    ClientName,
    /// A password hash.
    PasswordHash,
    /// A permission value.
    Permissions,
    /// A position.
    Position,
    /// A slow-mode interval.
    SlowMode,
    /// An invite's limits.
    Invite,
    /// A list of users or messages.
    List,
    /// A color.
    Color,
    /// A presence status.
    Status,
    /// An activity (its name or state).
    Activity,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Field::Body => "body",
            Field::Target => "target",
            Field::Meta => "meta",
            Field::Embeds => "embeds",
            Field::Attachments => "attachments",
            Field::Nonce => "nonce",
            Field::Topic => "topic",
            Field::Reason => "reason",
            Field::Away => "away",
            Field::Name => "name",
            Field::Description => "description",
            Field::DisplayName => "display_name",
            Field::Url => "url",
            Field::Key => "key",
            Field::Limit => "limit",
            Field::Mask => "mask",
            Field::Modes => "modes",
            Field::Emoji => "emoji",
            Field::ClientName => "client_name",
            Field::PasswordHash => "password_hash",
            Field::Permissions => "permissions",
            Field::Position => "position",
            Field::SlowMode => "slow_mode",
            Field::Invite => "invite",
            Field::List => "list",
            Field::Color => "color",
            Field::Status => "status",
            Field::Activity => "activity",
        };
        f.write_str(name)
    }
}

/// Reads a refusal's `&'static str` field back (a cluster node hands refusals to the node that asked): the
/// texts are the core's own literals, few and fixed, so each distinct one is kept once for the life of the
/// process. Past a bound (a peer sending texts the core never makes), the text is replaced, not kept.
fn interned<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    use std::collections::BTreeSet;
    use std::sync::{Mutex, PoisonError};
    const MAX_INTERNED: usize = 1024;
    static TEXTS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let text = <String as serde::Deserialize>::deserialize(d)?;
    let mut texts = TEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = texts.get(text.as_str()) {
        return Ok(known);
    }
    if texts.len() >= MAX_INTERNED {
        return Ok("(a reason this build does not know)");
    }
    let kept: &'static str = Box::leak(text.into_boxed_str());
    texts.insert(kept);
    Ok(kept)
}

/// Misuse of the core's API by its caller (not a user's refusal): replaying an event that does not fit the
/// state, restoring a snapshot from another configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The event's seq is not the next one after the state's last seq.
    #[error("event seq {got} does not follow {last}")]
    OutOfOrder {
        /// The state's last seq.
        last: u64,
        /// The event's seq.
        got: u64,
    },
    /// The event refers to something the state does not hold.
    #[error("event {seq} refers to an unknown {what}")]
    Unknown {
        /// The event's seq.
        seq: u64,
        /// What was missing.
        what: &'static str,
    },
}
