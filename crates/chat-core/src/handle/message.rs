//! Messages: send (channels and DMs by nick), edit, delete, reactions, pins, typing, read states, threads,
//! group DMs.

use crate::command::{ChannelRef, Outgoing, Target, UserRef};
use crate::core::{Actor, Core, Created, TYPING_INTERVAL_MS};
use crate::error::{Error, Field};
use crate::event::{Audience, ChannelInfo, EventKind};
use crate::id::{ChannelId, MessageId, UserId};
use crate::model::{ChannelKind, Message, MessageKind};
use crate::name::{casefold, check_label, check_text};
use crate::perm::Permissions;

/// Most members of a group DM.
pub(crate) const GROUP_DM_MAX: usize = 10;
/// Most pinned messages per channel.
const PINS_MAX: usize = 50;
/// Most distinct reaction emoji per message.
const REACTIONS_MAX: usize = 20;
/// Most users resolved from one message's mentions.
const MENTIONS_MAX: usize = 100;

/// What a message's body mentions.
struct Mentions {
    users: Vec<UserId>,
    everyone: bool,
    here: bool,
}

impl Core {
    /// Parses `@nick`, `<@id>`, `<@!id>`, `@everyone` and `@here` in a body.
    fn parse_mentions(&self, body: &str) -> Mentions {
        let mut out = Mentions {
            users: Vec::new(),
            everyone: false,
            here: false,
        };
        let bytes = body.as_bytes();
        let mut i = 0;
        while let Some(off) = bytes[i..].iter().position(|b| *b == b'@') {
            let at = i + off;
            i = at + 1;
            let discord = at > 0 && bytes[at - 1] == b'<';
            let rest = &body[at + 1..];
            let rest = if discord {
                rest.strip_prefix('!').unwrap_or(rest)
            } else {
                rest
            };
            if discord {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                if digits > 0
                    && rest.as_bytes().get(digits) == Some(&b'>')
                    && let Some(id) = rest[..digits]
                        .parse()
                        .ok()
                        .and_then(crate::id::UserId::from_raw)
                    && self.state.users.get(&id).is_some_and(|u| !u.released)
                {
                    out.users.push(id);
                }
                continue;
            }
            // A mention follows start-of-text or a non-word character, so e-mail addresses do not mention.
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || b"_-[]\\^{}|`".contains(b))
                .count()
                .min(crate::name::NICK_MAX);
            let word = &rest[..len];
            if word == "everyone" {
                out.everyone = true;
            } else if word == "here" {
                out.here = true;
            } else if !word.is_empty()
                && let Some(id) = self.state.nicks.get(&casefold(word))
            {
                out.users.push(*id);
            }
            if out.users.len() >= MENTIONS_MAX {
                break;
            }
        }
        out.users.sort_unstable();
        out.users.dedup();
        out
    }

    fn check_body(&self, body: &str, has_attachments: bool) -> Result<(), Error> {
        if body.len() > self.config.max_message_size {
            return Err(Error::MessageTooLong {
                len: body.len(),
                max: self.config.max_message_size,
            });
        }
        if body.trim().is_empty() && !has_attachments {
            return Err(Error::NoTextToSend);
        }
        // IRC formatting codes (bold, colors...) are control characters and stay; NUL never does.
        if body.contains('\0') {
            return Err(Error::InvalidInput {
                field: Field::Body,
                reason: "contains NUL",
            });
        }
        Ok(())
    }

    fn check_outgoing(&self, m: &Outgoing) -> Result<MessageKind, Error> {
        let kind = m.kind.unwrap_or(MessageKind::Message);
        if !kind.is_user_written() {
            return Err(Error::InvalidInput {
                field: Field::Body,
                reason: "system kinds cannot be sent",
            });
        }
        // Attachments or embeds stand in for text (a bot's embed-only message).
        self.check_body(&m.body, !m.attachments.is_empty() || m.embeds.is_some())?;
        if let Some(meta) = &m.meta {
            check_text(Field::Meta, meta, 8192, false)?;
        }
        if let Some(embeds) = &m.embeds {
            check_text(Field::Embeds, embeds, 16384, false)?;
        }
        if let Some(nonce) = &m.nonce {
            check_text(Field::Nonce, nonce, 64, true)?;
        }
        if m.attachments.len() > 10 {
            return Err(Error::InvalidInput {
                field: Field::Attachments,
                reason: "more than 10",
            });
        }
        for a in &m.attachments {
            check_label(Field::Attachments, &a.filename, 255)?;
            if a.token.len() > 64 || !a.token.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(Error::InvalidInput {
                    field: Field::Attachments,
                    reason: "a token is ASCII letters and digits, at most 64",
                });
            }
        }
        Ok(kind)
    }

    /// The other side of a DM the actor opens or writes to.
    fn dm_peer(&self, actor: Actor, to: &UserRef) -> Result<UserId, Error> {
        let other = self.resolve_user(to)?;
        if other == actor.user && !actor.system {
            return Err(Error::InvalidInput {
                field: Field::Target,
                reason: "cannot DM yourself",
            });
        }
        Ok(other)
    }

    /// Creates the DM channel of two users (who have none yet); its creator is listed first.
    fn create_dm(&mut self, by: UserId, other: UserId) -> ChannelId {
        let id = ChannelId(self.next_id());
        let info = ChannelInfo::new(id, ChannelKind::Dm, None, String::new());
        self.emit(
            Audience::Channel(id),
            EventKind::ChannelCreated {
                channel: info,
                members: vec![by, other],
            },
        );
        id
    }

    pub(crate) fn open_dm(&mut self, actor: Actor, to: UserRef) -> Result<Option<Created>, Error> {
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user has no DMs",
            });
        }
        let other = self.dm_peer(actor, &to)?;
        let id = match self.dm_channel(actor.user, other) {
            Some(id) => id,
            None => self.create_dm(actor.user, other),
        };
        Ok(Some(Created::Channel(id)))
    }

    pub(crate) fn send(
        &mut self,
        actor: Actor,
        to: Target,
        message: Outgoing,
    ) -> Result<Option<Created>, Error> {
        let kind = self.check_outgoing(&message)?;
        // Where the message goes: an existing channel, or a user with no DM channel yet.
        let dest = match &to {
            Target::Channel(c) => Ok(self.resolve_channel(c)?),
            Target::User(u) => {
                let other = self.dm_peer(actor, u)?;
                self.dm_channel(actor.user, other).ok_or(other)
            }
        };
        let perms = match dest {
            Ok(c) => self.check_can_send(actor, c)?,
            Err(_) => Permissions::all(),
        };
        if let Some(reply) = message.reply_to {
            let same = dest.is_ok_and(|c| {
                self.state
                    .messages
                    .get(&reply)
                    .is_some_and(|m| m.channel == c)
            });
            if !same {
                return Err(Error::NoSuchMessage);
            }
        }
        let mentions = self.parse_mentions(&message.body);
        let may_mention_all = perms.contains(Permissions::MENTION_EVERYONE);
        let channel = match dest {
            Ok(c) => c,
            Err(other) => self.create_dm(actor.user, other),
        };
        let id = MessageId(self.next_id());
        let m = Message {
            id,
            channel,
            author: actor.user,
            kind,
            body: message.body,
            meta: message.meta,
            reply_to: message.reply_to,
            mentions: mentions.users,
            mention_everyone: mentions.everyone && may_mention_all,
            mention_here: mentions.here && may_mention_all,
            attachments: message.attachments,
            embeds: message.embeds,
            nonce: message.nonce,
            tts: message.tts && perms.contains(Permissions::SEND_TTS_MESSAGES),
        };
        // A message sent from outside a channel (-n) still reaches the author's other devices.
        let audience = self.channel_echo(actor, channel);
        self.emit(audience, EventKind::MessageCreated { message: m });
        Ok(Some(Created::Message(id)))
    }

    /// Checks the actor may send to a channel now; returns their permissions there.
    fn check_can_send(&self, actor: Actor, channel: ChannelId) -> Result<Permissions, Error> {
        let ch = self.chan(channel);
        let perms = if actor.system {
            Permissions::all()
        } else {
            self.channel_permissions(actor.user, channel)
        };
        match ch.kind {
            ChannelKind::Category => {
                return Err(Error::NotSupported {
                    what: "categories hold no messages",
                });
            }
            ChannelKind::Dm | ChannelKind::GroupDm => {
                return if ch.members.contains_key(&actor.user) {
                    Ok(perms)
                } else {
                    Err(Error::NotOnChannel)
                };
            }
            ChannelKind::Text | ChannelKind::Thread => {}
        }
        // A thread of a network channel is under its parent's `+n`: membership and flags are the parent's.
        let base = match (ch.kind, ch.parent) {
            (ChannelKind::Thread, Some(parent)) => self.chan(parent),
            _ => ch,
        };
        let network = base.space == self.state.network && base.kind == ChannelKind::Text;
        if !perms.contains(Permissions::VIEW_CHANNEL) {
            return Err(if network && !self.is_member(actor.user, channel) {
                Error::CannotSend
            } else {
                Error::NoSuchChannel
            });
        }
        if network
            && base.flags.no_external
            && !base.members.contains_key(&actor.user)
            && !actor.system
        {
            return Err(Error::CannotSend);
        }
        let send = if ch.kind == ChannelKind::Thread {
            Permissions::SEND_MESSAGES_IN_THREADS
        } else {
            Permissions::SEND_MESSAGES
        };
        if !perms.contains(send) {
            return Err(Error::CannotSend);
        }
        if ch.slowmode_secs > 0
            && !perms.intersects(Permissions::MANAGE_MESSAGES | Permissions::MANAGE_CHANNELS)
        {
            let wait = u64::from(ch.slowmode_secs) * 1000;
            // Times are the caller's; saturating keeps an absurd `now` from overflowing into a panic.
            if let Some(last) = self.state.slow_mode_last.get(&(channel, actor.user))
                && self.now < last.saturating_add(wait)
            {
                return Err(Error::RateLimited {
                    retry_after_ms: last.saturating_add(wait) - self.now,
                });
            }
        }
        Ok(perms)
    }

    /// The message and its channel, if the actor may see the channel.
    fn visible_message(
        &self,
        actor: Actor,
        message: MessageId,
    ) -> Result<(ChannelId, Permissions), Error> {
        let rec = self
            .state
            .messages
            .get(&message)
            .ok_or(Error::NoSuchMessage)?;
        let perms = if actor.system {
            Permissions::all()
        } else {
            self.channel_permissions(actor.user, rec.channel)
        };
        let member = self.is_member(actor.user, rec.channel);
        if !perms.contains(Permissions::VIEW_CHANNEL)
            || (!member && !actor.system && !perms.contains(Permissions::ADMINISTRATOR))
        {
            return Err(Error::NoSuchMessage);
        }
        Ok((rec.channel, perms))
    }

    pub(crate) fn edit(
        &mut self,
        actor: Actor,
        message: MessageId,
        body: String,
        meta: Option<String>,
        embeds: Option<String>,
    ) -> Result<Option<Created>, Error> {
        let (channel, _) = self.visible_message(actor, message)?;
        let rec = &self.state.messages[&message];
        if rec.author != actor.user {
            return Err(Error::NotOwner);
        }
        if !rec.kind.is_user_written() {
            return Err(Error::NotSupported {
                what: "system messages cannot be edited",
            });
        }
        if let Some(embeds) = &embeds {
            check_text(Field::Embeds, embeds, 16384, false)?;
        }
        // Embeds stand in for text, as when sending.
        let with_embeds = embeds.as_deref().is_some_and(|e| e.trim() != "[]");
        self.check_body(&body, with_embeds)?;
        if let Some(meta) = &meta {
            check_text(Field::Meta, meta, 8192, false)?;
        }
        let mentions = self.parse_mentions(&body).users;
        let audience = self.channel_echo(actor, channel);
        self.emit(
            audience,
            EventKind::MessageEdited {
                channel,
                message,
                author: rec.author,
                body,
                meta,
                mentions,
                edited_at: self.now,
                embeds,
            },
        );
        Ok(None)
    }

    pub(crate) fn delete(
        &mut self,
        actor: Actor,
        message: MessageId,
    ) -> Result<Option<Created>, Error> {
        let (channel, perms) = self.visible_message(actor, message)?;
        let rec = &self.state.messages[&message];
        let own = rec.author == actor.user && rec.kind.is_user_written();
        if !own && !perms.contains(Permissions::MANAGE_MESSAGES) {
            return Err(Error::PrivilegesNeeded {
                permission: Permissions::MANAGE_MESSAGES,
            });
        }
        let audience = self.channel_echo(actor, channel);
        self.emit(
            audience,
            EventKind::MessageDeleted {
                channel,
                message,
                by: actor.user,
            },
        );
        Ok(None)
    }

    pub(crate) fn bulk_delete(
        &mut self,
        actor: Actor,
        channel: ChannelId,
        messages: Vec<MessageId>,
    ) -> Result<Option<Created>, Error> {
        if !self.state.channels.contains_key(&channel) {
            return Err(Error::NoSuchChannel);
        }
        if !(2..=100).contains(&messages.len()) {
            return Err(Error::InvalidInput {
                field: Field::List,
                reason: "2 to 100 messages",
            });
        }
        self.require_channel(
            actor,
            channel,
            Permissions::MANAGE_MESSAGES | Permissions::VIEW_CHANNEL,
        )?;
        let mut messages = messages;
        messages.sort_unstable();
        messages.dedup();
        if messages.iter().any(|m| {
            self.state
                .messages
                .get(m)
                .is_none_or(|r| r.channel != channel)
        }) {
            return Err(Error::NoSuchMessage);
        }
        let audience = self.channel_echo(actor, channel);
        self.emit(
            audience,
            EventKind::MessagesDeleted {
                channel,
                messages,
                by: actor.user,
            },
        );
        Ok(None)
    }

    fn check_emoji(emoji: &str) -> Result<(), Error> {
        if emoji.is_empty()
            || emoji.len() > 64
            || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::InvalidInput {
                field: Field::Emoji,
                reason: "1..64 bytes, no spaces",
            });
        }
        Ok(())
    }

    pub(crate) fn react(
        &mut self,
        actor: Actor,
        message: MessageId,
        emoji: String,
    ) -> Result<Option<Created>, Error> {
        Self::check_emoji(&emoji)?;
        let (channel, perms) = self.visible_message(actor, message)?;
        let rec = &self.state.messages[&message];
        let users = rec.reactions.get(&emoji);
        if users.is_some_and(|u| u.contains(&actor.user)) {
            return Ok(None);
        }
        if users.is_none() {
            if !perms.contains(Permissions::ADD_REACTIONS) {
                return Err(Error::PrivilegesNeeded {
                    permission: Permissions::ADD_REACTIONS,
                });
            }
            if rec.reactions.len() >= REACTIONS_MAX {
                return Err(Error::LimitReached {
                    what: "reaction emoji per message",
                });
            }
        }
        let audience = self.channel_echo(actor, channel);
        self.emit(
            audience,
            EventKind::ReactionAdded {
                channel,
                message,
                user: actor.user,
                emoji,
            },
        );
        Ok(None)
    }

    pub(crate) fn unreact(
        &mut self,
        actor: Actor,
        message: MessageId,
        emoji: String,
        user: Option<UserId>,
    ) -> Result<Option<Created>, Error> {
        Self::check_emoji(&emoji)?;
        let (channel, perms) = self.visible_message(actor, message)?;
        let user = user.unwrap_or(actor.user);
        if user != actor.user && !perms.contains(Permissions::MANAGE_MESSAGES) {
            return Err(Error::PrivilegesNeeded {
                permission: Permissions::MANAGE_MESSAGES,
            });
        }
        let reacted = self.state.messages[&message]
            .reactions
            .get(&emoji)
            .is_some_and(|u| u.contains(&user));
        if !reacted {
            return Ok(None);
        }
        let audience = self.channel_echo(actor, channel);
        self.emit(
            audience,
            EventKind::ReactionRemoved {
                channel,
                message,
                user,
                emoji,
            },
        );
        Ok(None)
    }

    pub(crate) fn pin(
        &mut self,
        actor: Actor,
        message: MessageId,
        on: bool,
    ) -> Result<Option<Created>, Error> {
        let (channel, perms) = self.visible_message(actor, message)?;
        if !perms.intersects(Permissions::MANAGE_MESSAGES | Permissions::PIN_MESSAGES) {
            return Err(Error::PrivilegesNeeded {
                permission: Permissions::PIN_MESSAGES,
            });
        }
        let rec = &self.state.messages[&message];
        if rec.pinned == on {
            return Ok(None);
        }
        if on {
            if !rec.kind.is_user_written() {
                return Err(Error::NotSupported {
                    what: "system messages cannot be pinned",
                });
            }
            if self.chan(channel).pins.len() >= PINS_MAX {
                return Err(Error::LimitReached {
                    what: "pins per channel",
                });
            }
            let notice = MessageId(self.next_id());
            let audience = self.channel_echo(actor, channel);
            self.emit(
                audience,
                EventKind::Pinned {
                    channel,
                    message,
                    by: actor.user,
                    notice,
                },
            );
            Ok(Some(Created::Message(notice)))
        } else {
            let audience = self.channel_echo(actor, channel);
            self.emit(
                audience,
                EventKind::Unpinned {
                    channel,
                    message,
                    by: actor.user,
                },
            );
            Ok(None)
        }
    }

    pub(crate) fn typing(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
    ) -> Result<Option<Created>, Error> {
        let channel = self.resolve_channel(&channel)?;
        if !self.is_member(actor.user, channel) {
            return Err(Error::NotOnChannel);
        }
        self.check_can_send(actor, channel)?;
        let key = (actor.user, channel);
        if let Some(last) = self.state.typing.get(&key)
            && self.now < last.saturating_add(TYPING_INTERVAL_MS)
        {
            return Ok(None);
        }
        if self.state.typing.len() >= 100_000 {
            let now = self.now;
            self.state
                .typing
                .retain(|_, at| now < at.saturating_add(TYPING_INTERVAL_MS));
        }
        self.state.typing.insert(key, self.now);
        self.emit(
            Audience::Channel(channel),
            EventKind::Typing {
                user: actor.user,
                channel,
            },
        );
        Ok(None)
    }

    pub(crate) fn read(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
        message: MessageId,
    ) -> Result<Option<Created>, Error> {
        let channel = self.resolve_channel(&channel)?;
        if !self.is_member(actor.user, channel) {
            return Err(Error::NotOnChannel);
        }
        let ch = self.chan(channel);
        let known = self.state.messages.get(&message).is_some_and(|m| m.channel == channel)
            // An id older than retention still marks everything up to it read.
            || ch.history.front().is_some_and(|first| message < *first);
        if !known {
            return Err(Error::NoSuchMessage);
        }
        let rs = self.state.read_states.get(&(channel, actor.user));
        if rs.and_then(|r| r.last_read) == Some(message) {
            return Ok(None);
        }
        let mention_count = rs.map_or(0, |r| r.mentions.iter().filter(|m| **m > message).count());
        self.emit(
            Audience::User(actor.user),
            EventKind::ReadAck {
                user: actor.user,
                channel,
                message,
                mention_count: mention_count as u32,
            },
        );
        Ok(None)
    }

    pub(crate) fn create_thread(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
        name: String,
        message: Option<MessageId>,
    ) -> Result<Option<Created>, Error> {
        let parent = self.resolve_channel(&channel)?;
        if self.chan(parent).kind != ChannelKind::Text || self.chan(parent).space.is_none() {
            return Err(Error::NotSupported {
                what: "threads start in text channels",
            });
        }
        if !self.is_member(actor.user, parent) && !actor.system {
            return Err(Error::NotOnChannel);
        }
        self.require_channel(
            actor,
            parent,
            Permissions::VIEW_CHANNEL | Permissions::CREATE_PUBLIC_THREADS,
        )?;
        check_label(Field::Name, &name, 100)?;
        if let Some(m) = message {
            let rec = self
                .state
                .messages
                .get(&m)
                .filter(|r| r.channel == parent)
                .ok_or(Error::NoSuchMessage)?;
            // The thread takes the message's id, so a message starts one thread at most, ever: a deleted
            // thread's id stays its own (its starter keeps pointing at it), as the store's rows for it may.
            if rec.thread.is_some() || self.state.channels.contains_key(&ChannelId(m.0)) {
                return Err(Error::ThreadExists);
            }
        }
        // A thread started from a message takes the message's id, as Discord's do (libraries look the thread
        // up by it). No other object can hold that id: every id comes from one strictly increasing
        // generator, which handed this one to the message alone.
        let id = match message {
            Some(m) => ChannelId(m.0),
            None => ChannelId(self.next_id()),
        };
        let info = ChannelInfo {
            parent: Some(parent),
            owner: Some(actor.user),
            starter: message,
            ..ChannelInfo::new(
                id,
                ChannelKind::Thread,
                self.chan(parent).space,
                name.clone(),
            )
        };
        self.emit(
            Audience::Channel(id),
            EventKind::ChannelCreated {
                channel: info,
                members: Vec::new(),
            },
        );
        let notice = MessageId(self.next_id());
        let m = Message {
            id: notice,
            channel: parent,
            author: actor.user,
            kind: MessageKind::ThreadCreated,
            body: name,
            meta: None,
            reply_to: message,
            mentions: Vec::new(),
            mention_everyone: false,
            mention_here: false,
            attachments: Vec::new(),
            embeds: None,
            nonce: None,
            tts: false,
        };
        self.emit(
            Audience::Channel(parent),
            EventKind::MessageCreated { message: m },
        );
        Ok(Some(Created::Channel(id)))
    }

    pub(crate) fn create_group_dm(
        &mut self,
        actor: Actor,
        users: Vec<UserId>,
        name: Option<String>,
    ) -> Result<Option<Created>, Error> {
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user has no DMs",
            });
        }
        let mut members = users;
        members.push(actor.user);
        members.sort_unstable();
        members.dedup();
        if members.len() < 2 || members.len() > GROUP_DM_MAX {
            return Err(Error::InvalidInput {
                field: Field::List,
                reason: "1 to 9 other users",
            });
        }
        for u in &members {
            self.resolve_user(&crate::command::UserRef::Id(*u))?;
        }
        let name = name.filter(|n| !n.is_empty());
        if let Some(n) = &name {
            check_label(Field::Name, n, 100)?;
        }
        let id = ChannelId(self.next_id());
        let info = ChannelInfo {
            owner: Some(actor.user),
            ..ChannelInfo::new(id, ChannelKind::GroupDm, None, name.unwrap_or_default())
        };
        self.emit(
            Audience::Channel(id),
            EventKind::ChannelCreated {
                channel: info,
                members,
            },
        );
        Ok(Some(Created::Channel(id)))
    }
}
