//! Permissions: Discord's bit values, permission overwrites, and what each IRC mode means in their terms.

use bitflags::bitflags;
use serde::{Deserialize, Serialize};

use crate::id::{RoleId, UserId};

bitflags! {
    /// Permission bits with Discord's values, so they cross the Discord API unchanged.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct Permissions: u64 {
        /// Create invites (and INVITE users to a network channel).
        const CREATE_INSTANT_INVITE = 1 << 0;
        /// Kick members (KICK in a channel, or from a space).
        const KICK_MEMBERS = 1 << 1;
        /// Ban members (`+b` in a channel, or from a space).
        const BAN_MEMBERS = 1 << 2;
        /// Every permission, bypassing overwrites.
        const ADMINISTRATOR = 1 << 3;
        /// Edit or delete channels; set channel modes and a `+t` topic.
        const MANAGE_CHANNELS = 1 << 4;
        /// Edit the space.
        const MANAGE_GUILD = 1 << 5;
        /// Add a new reaction emoji to a message.
        const ADD_REACTIONS = 1 << 6;
        /// Read the audit log.
        const VIEW_AUDIT_LOG = 1 << 7;
        /// Priority speaker (voice; kept for Discord parity).
        const PRIORITY_SPEAKER = 1 << 8;
        /// Stream (voice; kept for Discord parity).
        const STREAM = 1 << 9;
        /// See a channel; in spaces this is what makes a member a channel member.
        const VIEW_CHANNEL = 1 << 10;
        /// Send messages.
        const SEND_MESSAGES = 1 << 11;
        /// Send text-to-speech messages.
        const SEND_TTS_MESSAGES = 1 << 12;
        /// Delete or pin others' messages, remove others' reactions, bypass slow mode.
        const MANAGE_MESSAGES = 1 << 13;
        /// Links show embeds.
        const EMBED_LINKS = 1 << 14;
        /// Upload files.
        const ATTACH_FILES = 1 << 15;
        /// Read history.
        const READ_MESSAGE_HISTORY = 1 << 16;
        /// Make `@everyone` and `@here` notify.
        const MENTION_EVERYONE = 1 << 17;
        /// Use emoji from other spaces.
        const USE_EXTERNAL_EMOJIS = 1 << 18;
        /// View space insights.
        const VIEW_GUILD_INSIGHTS = 1 << 19;
        /// Connect to voice.
        const CONNECT = 1 << 20;
        /// Speak in voice.
        const SPEAK = 1 << 21;
        /// Mute others in voice.
        const MUTE_MEMBERS = 1 << 22;
        /// Deafen others in voice.
        const DEAFEN_MEMBERS = 1 << 23;
        /// Move others between voice channels.
        const MOVE_MEMBERS = 1 << 24;
        /// Voice activity detection.
        const USE_VAD = 1 << 25;
        /// Change one's own nickname in a space.
        const CHANGE_NICKNAME = 1 << 26;
        /// Change others' nicknames in a space.
        const MANAGE_NICKNAMES = 1 << 27;
        /// Manage roles; at channel level, manage its overwrites (`+o`, `+v`).
        const MANAGE_ROLES = 1 << 28;
        /// Manage webhooks.
        const MANAGE_WEBHOOKS = 1 << 29;
        /// Manage emoji and stickers.
        const MANAGE_GUILD_EXPRESSIONS = 1 << 30;
        /// Use application commands.
        const USE_APPLICATION_COMMANDS = 1 << 31;
        /// Request to speak in stage channels.
        const REQUEST_TO_SPEAK = 1 << 32;
        /// Manage scheduled events.
        const MANAGE_EVENTS = 1 << 33;
        /// Manage threads.
        const MANAGE_THREADS = 1 << 34;
        /// Create public threads.
        const CREATE_PUBLIC_THREADS = 1 << 35;
        /// Create private threads.
        const CREATE_PRIVATE_THREADS = 1 << 36;
        /// Use stickers from other spaces.
        const USE_EXTERNAL_STICKERS = 1 << 37;
        /// Send messages in threads.
        const SEND_MESSAGES_IN_THREADS = 1 << 38;
        /// Use activities.
        const USE_EMBEDDED_ACTIVITIES = 1 << 39;
        /// Time members out.
        const MODERATE_MEMBERS = 1 << 40;
        /// Pin and unpin messages.
        const PIN_MESSAGES = 1 << 51;
    }
}

impl Permissions {
    /// What @everyone may do in the network and in a new space.
    pub const DEFAULT_EVERYONE: Self = Self::VIEW_CHANNEL
        .union(Self::SEND_MESSAGES)
        .union(Self::SEND_MESSAGES_IN_THREADS)
        .union(Self::READ_MESSAGE_HISTORY)
        .union(Self::ADD_REACTIONS)
        .union(Self::EMBED_LINKS)
        .union(Self::ATTACH_FILES)
        .union(Self::CREATE_INSTANT_INVITE)
        .union(Self::CHANGE_NICKNAME)
        .union(Self::CREATE_PUBLIC_THREADS)
        .union(Self::USE_EXTERNAL_EMOJIS)
        .union(Self::CONNECT)
        .union(Self::SPEAK);

    /// What a channel operator (`+o`) is granted on the channel, as a member overwrite. It holds all of
    /// [`Self::VOICE`], so that `+m` (and a ban) never takes from an operator what it takes from others.
    pub const OPERATOR: Self = Self::VIEW_CHANNEL
        .union(Self::VOICE)
        .union(Self::READ_MESSAGE_HISTORY)
        .union(Self::CREATE_INSTANT_INVITE)
        .union(Self::MANAGE_CHANNELS)
        .union(Self::MANAGE_ROLES)
        .union(Self::MANAGE_MESSAGES)
        .union(Self::MANAGE_THREADS)
        .union(Self::KICK_MEMBERS)
        .union(Self::BAN_MEMBERS)
        .union(Self::MENTION_EVERYONE)
        .union(Self::PIN_MESSAGES);

    /// What a voiced member (`+v`) is granted back on a moderated channel. Starting a thread counts as
    /// speaking: it posts a `thread_created` message in the channel.
    pub const VOICE: Self = Self::SEND_MESSAGES
        .union(Self::SEND_MESSAGES_IN_THREADS)
        .union(Self::ADD_REACTIONS)
        .union(Self::CREATE_PUBLIC_THREADS);

    /// What `+m` denies @everyone: every way of speaking in the channel (messages there and in its threads,
    /// new reactions, starting a thread). `+v` and `+o` grant all of it back.
    pub const MODERATED: Self = Self::VOICE;

    /// What `+i` denies @everyone: seeing the channel, hence joining it.
    pub const INVITE_ONLY: Self = Self::VIEW_CHANNEL;

    /// What a `+b` mask denies the users it matches (before their member overwrite, so `+v` and an invite win).
    pub const BANNED: Self = Self::VIEW_CHANNEL.union(Self::VOICE);

    /// What joining a network channel grants the member: seeing it, whatever `+i` says later.
    pub const JOINED: Self = Self::VIEW_CHANNEL;

    /// The name of the lowest set bit, for error messages ("privileges needed: MANAGE_CHANNELS").
    pub fn first_name(self) -> &'static str {
        self.iter_names().next().map_or("NONE", |(name, _)| name)
    }
}

/// Whose permissions an overwrite adjusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OverwriteTarget {
    /// A role; the @everyone role has the space's id.
    Role(RoleId),
    /// One member.
    Member(UserId),
}

/// A per-channel permission overwrite (Discord's algorithm: @everyone, then roles together, then the member).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Overwrite {
    /// Who it applies to.
    pub target: OverwriteTarget,
    /// Bits granted.
    pub allow: Permissions,
    /// Bits taken away.
    pub deny: Permissions,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discord_values() {
        assert_eq!(Permissions::VIEW_CHANNEL.bits(), 1024);
        assert_eq!(Permissions::SEND_MESSAGES.bits(), 2048);
        assert_eq!(Permissions::ADMINISTRATOR.bits(), 8);
        assert_eq!(Permissions::MANAGE_ROLES.bits(), 268_435_456);
        assert_eq!(Permissions::MENTION_EVERYONE.bits(), 131_072);
        assert_eq!(
            Permissions::SEND_MESSAGES_IN_THREADS.bits(),
            274_877_906_944
        );
        assert_eq!(Permissions::PIN_MESSAGES.bits(), 2_251_799_813_685_248);
    }

    #[test]
    fn voice_and_operator_undo_moderation() {
        assert!(Permissions::VOICE.contains(Permissions::MODERATED));
        assert!(Permissions::OPERATOR.contains(Permissions::MODERATED));
        assert!(Permissions::OPERATOR.contains(Permissions::CREATE_PUBLIC_THREADS));
    }

    #[test]
    fn names() {
        assert_eq!(Permissions::MANAGE_CHANNELS.first_name(), "MANAGE_CHANNELS");
        assert_eq!(Permissions::empty().first_name(), "NONE");
    }
}
