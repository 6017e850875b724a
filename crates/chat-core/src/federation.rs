//! Federation: what linked servers tell each other, and how the core makes and takes it.
//!
//! A server with a name ([`crate::Config::server_name`]) records, right after every event one of its own
//! users causes in a network channel or a DM with a remote user, a [`EventKind::Relayed`] marker holding the
//! same action as a [`RemoteOp`]: the action named in network terms (channels by name, users and messages by
//! their home server and their id there). The markers are the outbox: a link's cursor walks the log and sends
//! every marker it finds, its own and those it took from peers, to every peer but the one it came from.
//!
//! A peer's op comes in as [`Command::Relay`](crate::Command::Relay). It is applied once: ops of one origin
//! are numbered in the origin's log order and travel each path in that order, so an op at or below the
//! highest one taken from that origin has been seen, whichever path brought it. The op's user becomes a
//! remote user (`nick@server`, created on first sight, never a guest that expires), the action is checked
//! against this server's view as a local user's would be, and the marker is recorded even when the action
//! is refused here, so that it is passed on and never retried.

use serde::{Deserialize, Serialize};

use crate::command::{ChannelRef, Outgoing, Target, UserRef};
use crate::core::{Actor, Core, Created};
use crate::error::{Error, Field};
use crate::event::{Audience, EventKind, ModeChange};
use crate::id::{ChannelId, MessageId, UnixMillis, UserId};
use crate::model::{ChannelKind, MessageKind, Topic};
use crate::name::casefold;

/// Where a remote user lives: its home server and its id there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Home {
    /// The home server's name.
    pub server: String,
    /// The user's id on its home server.
    pub id: u64,
}

/// A user named across linked servers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GlobalUser {
    /// Its home server.
    pub server: String,
    /// Its id there.
    pub id: u64,
    /// Its nick there (without `@server`).
    pub nick: String,
}

/// A message named across linked servers: the server it was written on and its id there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GlobalRef {
    /// The server the message was written on.
    pub server: String,
    /// Its id there.
    pub id: u64,
}

/// One action of one user, as linked servers pass it on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteOp {
    /// The server whose user acted.
    pub origin: String,
    /// Unique per origin and increasing in the origin's log order (the seq of the origin's marker).
    pub id: u64,
    /// When it happened on the origin (unix ms).
    pub at: UnixMillis,
    /// Who acted; its home is `origin`.
    pub user: GlobalUser,
    /// What they did.
    pub action: RemoteAction,
}

/// A mode argument: text (`+k key`, `+l 10`, `+b mask`) or a user (`+o`, `+v`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeArg {
    /// Text.
    Text(String),
    /// A user.
    User(GlobalUser),
}

/// Where a relayed message goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteTarget {
    /// A network channel, by name.
    Channel(String),
    /// A user, by DM.
    User(GlobalUser),
}

/// The state of a network channel as one server sees it, sent on link so that linked servers converge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// `#name`.
    pub name: String,
    /// When the channel was created (the older channel wins).
    pub created_at: UnixMillis,
    /// The topic, who set it and when.
    pub topic: Option<(String, GlobalUser, UnixMillis)>,
    /// The flag modes, like `imnst` (only the letters set).
    pub flags: String,
    /// `+k`.
    pub key: Option<String>,
    /// `+l`.
    pub limit: Option<u32>,
    /// `+b` masks.
    pub bans: Vec<String>,
    /// The announcing server's own members, with `+o` and `+v`.
    pub members: Vec<(GlobalUser, bool, bool)>,
}

/// What a user did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteAction {
    /// Joined a network channel.
    Join {
        /// `#name`.
        channel: String,
        /// The `+k` key the user gave.
        key: Option<String>,
    },
    /// Left a network channel.
    Part {
        /// `#name`.
        channel: String,
        /// Why.
        reason: Option<String>,
    },
    /// Quit the network; `released` when its session ended for good (a guest).
    Quit {
        /// Why.
        reason: Option<String>,
        /// Whether the user is gone for good.
        released: bool,
    },
    /// Changed nick (the op's `user.nick` is the old one).
    Nick {
        /// The new nick.
        new: String,
    },
    /// Sent a message.
    Send {
        /// Where.
        to: RemoteTarget,
        /// The message's network name.
        message: GlobalRef,
        /// `message`, `action` or `notice`.
        kind: MessageKind,
        /// The text.
        body: String,
        /// The client's JSON object, verbatim.
        meta: Option<String>,
        /// The message replied to.
        reply_to: Option<GlobalRef>,
    },
    /// Edited a message.
    Edit {
        /// Which.
        message: GlobalRef,
        /// The new text.
        body: String,
        /// The new meta.
        meta: Option<String>,
    },
    /// Deleted a message.
    Delete {
        /// Which.
        message: GlobalRef,
    },
    /// Reacted to a message.
    React {
        /// Which.
        message: GlobalRef,
        /// The emoji.
        emoji: String,
    },
    /// Took a reaction back.
    Unreact {
        /// Which.
        message: GlobalRef,
        /// The emoji.
        emoji: String,
    },
    /// Set or cleared a topic.
    Topic {
        /// `#name`.
        channel: String,
        /// The topic; empty clears it.
        topic: String,
    },
    /// Changed modes.
    Mode {
        /// `#name`.
        channel: String,
        /// Like `+o-t`.
        modes: String,
        /// The arguments, in order.
        args: Vec<ModeArg>,
    },
    /// Kicked someone.
    Kick {
        /// `#name`.
        channel: String,
        /// Whom.
        target: GlobalUser,
        /// Why.
        reason: Option<String>,
    },
    /// Announced a channel's state (made on link by [`Command::AnnounceChannels`](crate::Command)).
    Channel(ChannelState),
}

/// The longest server name, in bytes.
pub const SERVER_NAME_MAX: usize = 63;

impl Core {
    /// This server's name, when it federates.
    pub(crate) fn server_name(&self) -> Option<&str> {
        self.config.server_name.as_deref()
    }

    /// The network name of a user known here: a local user's is this server's name and its id, a remote
    /// user's its home.
    pub fn global_user(&self, user: UserId) -> Option<GlobalUser> {
        let u = self.state.users.get(&user)?;
        match &u.home {
            Some(home) => Some(GlobalUser {
                server: home.server.clone(),
                id: home.id,
                nick: u
                    .nick
                    .strip_suffix(&format!("@{}", home.server))
                    .unwrap_or(&u.nick)
                    .to_owned(),
            }),
            None => Some(GlobalUser {
                server: self.server_name()?.to_owned(),
                id: user.0.get(),
                nick: u.nick.clone(),
            }),
        }
    }

    /// The network name of a message known here.
    pub fn global_ref(&self, message: MessageId) -> Option<GlobalRef> {
        match self.state.origins.get(&message) {
            Some(r) => Some(r.clone()),
            None => Some(GlobalRef {
                server: self.server_name()?.to_owned(),
                id: message.0.get(),
            }),
        }
    }

    /// The local id of a message named across the network, if it is known here.
    pub fn local_message(&self, message: &GlobalRef) -> Option<MessageId> {
        if Some(message.server.as_str()) == self.server_name() {
            return MessageId::from_raw(message.id).filter(|m| self.state.messages.contains_key(m));
        }
        self.state.by_origin.get(message).copied()
    }

    /// The local id of a remote user, if known.
    pub fn remote_user(&self, server: &str, id: u64) -> Option<UserId> {
        self.state.remote_users.get(server)?.get(&id).copied()
    }

    /// The highest op taken from each origin server.
    pub fn relayed(&self) -> impl Iterator<Item = (&str, u64)> {
        self.state.relayed.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// A user named across the network, here: a local user by id, a remote one found or created.
    fn resolve_global(&mut self, user: &GlobalUser) -> Result<UserId, Error> {
        if Some(user.server.as_str()) == self.server_name() {
            let id = UserId::from_raw(user.id).ok_or(Error::NoSuchNick)?;
            return match self.state.users.get(&id) {
                Some(u) if u.home.is_none() && !u.released => Ok(id),
                _ => Err(Error::NoSuchNick),
            };
        }
        if let Some(id) = self.remote_user(&user.server, user.id) {
            // The common case, without building `nick@server`: the nick is still the one known here.
            let known = &self.state.users[&id].nick;
            let same = known.len() == user.nick.len() + 1 + user.server.len()
                && known.starts_with(user.nick.as_str())
                && known.ends_with(user.server.as_str())
                && known.as_bytes()[user.nick.len()] == b'@';
            if !same {
                crate::name::validate_nick(&user.nick)?;
                let nick = format!("{}@{}", user.nick, user.server);
                self.free_nick(&nick, Some(id));
                self.rename(id, nick);
            }
            return Ok(id);
        }
        check_server_name(&user.server)?;
        crate::name::validate_nick(&user.nick)?;
        let nick = format!("{}@{}", user.nick, user.server);
        self.free_nick(&nick, None);
        let id = UserId(self.next_id());
        self.emit(
            Audience::Nobody,
            EventKind::RemoteUserCreated {
                user: id,
                nick,
                home: Home {
                    server: user.server.clone(),
                    id: user.id,
                },
            },
        );
        Ok(id)
    }

    /// A remote nick held by another remote user of the same home (one whose rename or quit was not heard)
    /// moves aside to `nick-<id>@server`, since the home server says the name is now someone else's.
    fn free_nick(&mut self, nick: &str, keep: Option<UserId>) {
        if let Some(&holder) = self.state.nicks.get(&casefold(nick))
            && Some(holder) != keep
            && let Some(home) = self.state.users[&holder].home.clone()
        {
            let (name, server) = nick.rsplit_once('@').unwrap_or((nick, ""));
            let aside = format!("{name}-{}@{server}", home.id);
            self.rename(holder, aside);
        }
    }

    /// Records the marker of an op made here, right after the event it stems from.
    pub(crate) fn record_local_op(&mut self, user: GlobalUser, action: RemoteAction) {
        let Some(me) = self.server_name().map(str::to_owned) else {
            return;
        };
        let op = RemoteOp {
            origin: me.clone(),
            id: self.state.last_seq + 1,
            at: self.now,
            user,
            action,
        };
        self.emit(
            Audience::Nobody,
            EventKind::Relayed {
                op: Box::new(op),
                from: me,
                made: None,
            },
        );
    }

    /// Takes an op from a linked server (`from`): applies it once, records its marker.
    pub(crate) fn relay(&mut self, op: RemoteOp, from: String) -> Result<Option<Created>, Error> {
        let me = self.server_name().ok_or(Error::NotSupported {
            what: "this server has no FEDERATION_NAME",
        })?;
        if op.origin == me || from == me {
            return Err(Error::InvalidInput {
                field: Field::Target,
                reason: "an op of this server's own users cannot come from a peer",
            });
        }
        if op.user.server != op.origin {
            return Err(Error::InvalidInput {
                field: Field::Target,
                reason: "an op's user must live on its origin server",
            });
        }
        check_server_name(&op.origin)?;
        check_server_name(&from)?;
        if op.id == 0 {
            return Err(Error::InvalidInput {
                field: Field::Target,
                reason: "op ids start at 1",
            });
        }
        if self
            .state
            .relayed
            .get(&op.origin)
            .is_some_and(|hw| *hw >= op.id)
        {
            return Ok(Some(Created::Relayed {
                new: false,
                made: None,
                refused: None,
            }));
        }
        let user = self.resolve_global(&op.user)?;
        let actor = Actor {
            user,
            client: None,
            system: false,
        };
        let (made, refused) = match self.apply_remote(actor, &op) {
            Ok(made) => (made, None),
            // Refused here (a ban, a mode, a message no longer known): nothing of it changed, since handlers
            // check before they emit; the marker below still records that it was seen.
            // (Users the op names may have become known here first; that is all it leaves.)
            Err(e) => (None, Some(e)),
        };
        self.emit(
            Audience::Nobody,
            EventKind::Relayed {
                op: Box::new(op),
                from,
                made,
            },
        );
        Ok(Some(Created::Relayed {
            new: true,
            made,
            refused,
        }))
    }

    fn apply_remote(&mut self, actor: Actor, op: &RemoteOp) -> Result<Option<MessageId>, Error> {
        let channel = |name: &str| ChannelRef::Name(name.to_owned());
        match &op.action {
            RemoteAction::Join { channel, key } => {
                self.join(actor, channel.clone(), key.clone())?;
            }
            RemoteAction::Part { channel: c, reason } => {
                self.part(actor, channel(c), reason.clone())?;
            }
            RemoteAction::Quit { reason, released } => {
                let reason = reason.clone().filter(|r| !r.is_empty());
                if let Some(r) = &reason {
                    crate::name::check_text(
                        Field::Reason,
                        r,
                        crate::handle::session::REASON_MAX,
                        true,
                    )?;
                }
                self.end_session(actor.user, reason, *released);
            }
            RemoteAction::Nick { new } => {
                crate::name::validate_nick(new)?;
                let nick = format!("{new}@{}", op.origin);
                self.free_nick(&nick, Some(actor.user));
                self.rename(actor.user, nick);
            }
            RemoteAction::Send {
                to,
                message,
                kind,
                body,
                meta,
                reply_to,
            } => {
                if message.server != op.origin {
                    return Err(Error::InvalidInput {
                        field: Field::Target,
                        reason: "a message is named by the server it was written on",
                    });
                }
                if !matches!(
                    kind,
                    MessageKind::Message | MessageKind::Action | MessageKind::Notice
                ) {
                    return Err(Error::InvalidInput {
                        field: Field::Body,
                        reason: "only messages, actions and notices are relayed",
                    });
                }
                let to = match to {
                    RemoteTarget::Channel(c) => Target::Channel(channel(c)),
                    RemoteTarget::User(u) => Target::User(UserRef::Id(self.resolve_global(u)?)),
                };
                let reply_to = reply_to.as_ref().and_then(|r| self.local_message(r));
                let created = self.send(
                    actor,
                    to,
                    Outgoing {
                        kind: Some(*kind),
                        body: body.clone(),
                        meta: meta.clone(),
                        reply_to,
                        ..Outgoing::default()
                    },
                )?;
                if let Some(Created::Message(id)) = created {
                    return Ok(Some(id));
                }
            }
            RemoteAction::Edit {
                message,
                body,
                meta,
            } => {
                let id = self.local_message(message).ok_or(Error::NoSuchMessage)?;
                self.edit(actor, id, body.clone(), meta.clone(), None)?;
            }
            RemoteAction::Delete { message } => {
                let id = self.local_message(message).ok_or(Error::NoSuchMessage)?;
                self.delete(actor, id)?;
            }
            RemoteAction::React { message, emoji } => {
                let id = self.local_message(message).ok_or(Error::NoSuchMessage)?;
                self.react(actor, id, emoji.clone())?;
            }
            RemoteAction::Unreact { message, emoji } => {
                let id = self.local_message(message).ok_or(Error::NoSuchMessage)?;
                self.unreact(actor, id, emoji.clone(), None)?;
            }
            RemoteAction::Topic { channel: c, topic } => {
                self.topic(actor, channel(c), topic.clone())?;
            }
            RemoteAction::Mode {
                channel: c,
                modes,
                args,
            } => {
                let mut text = Vec::with_capacity(args.len());
                for a in args {
                    text.push(match a {
                        ModeArg::Text(t) => t.clone(),
                        ModeArg::User(u) => {
                            let id = self.resolve_global(u)?;
                            self.state.users[&id].nick.clone()
                        }
                    });
                }
                self.mode(actor, channel(c), modes.clone(), text)?;
            }
            RemoteAction::Kick {
                channel: c,
                target,
                reason,
            } => {
                let target = self.resolve_global(target)?;
                self.kick(actor, channel(c), UserRef::Id(target), reason.clone())?;
            }
            RemoteAction::Channel(state) => self.merge_channel(op, state)?,
        }
        Ok(None)
    }

    /// The op a local event makes, if it is one linked servers share: an action of a local user (not the
    /// server's own) in a network channel or in a DM with a remote user.
    pub(crate) fn local_op(&self, kind: &EventKind) -> Option<(GlobalUser, RemoteAction)> {
        self.server_name()?;
        let local = |user: &UserId| {
            self.state
                .users
                .get(user)
                .is_some_and(|u| u.home.is_none() && !u.system)
        };
        let name = |channel: &ChannelId| self.network_channel_name(*channel);
        let op = |user: &UserId, action| Some((self.global_user(*user)?, action));
        match kind {
            EventKind::Joined { channel, user, .. } if local(user) => op(
                user,
                RemoteAction::Join {
                    channel: name(channel)?,
                    key: self.state.channels.get(channel)?.flags.key.clone(),
                },
            ),
            EventKind::Parted {
                channel,
                user,
                reason,
                ..
            } if local(user) => op(
                user,
                RemoteAction::Part {
                    channel: name(channel)?,
                    reason: reason.clone(),
                },
            ),
            EventKind::Kicked {
                channel,
                user,
                by,
                reason,
                ..
            } if local(by) => op(
                by,
                RemoteAction::Kick {
                    channel: name(channel)?,
                    target: self.global_user(*user)?,
                    reason: reason.clone(),
                },
            ),
            EventKind::Quit {
                user,
                reason,
                released,
                ..
            } if local(user) => op(
                user,
                RemoteAction::Quit {
                    reason: reason.clone(),
                    released: *released,
                },
            ),
            EventKind::NickChanged { user, new, .. } if local(user) => {
                op(user, RemoteAction::Nick { new: new.clone() })
            }
            EventKind::TopicChanged {
                channel, topic, by, ..
            } if local(by) => op(
                by,
                RemoteAction::Topic {
                    channel: name(channel)?,
                    topic: topic.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
                },
            ),
            EventKind::ModeChanged {
                channel,
                by,
                changes,
                ..
            } if local(by) => {
                let (modes, args) = self.mode_text(changes)?;
                op(
                    by,
                    RemoteAction::Mode {
                        channel: name(channel)?,
                        modes,
                        args,
                    },
                )
            }
            EventKind::MessageCreated { message: m }
                if local(&m.author)
                    && matches!(
                        m.kind,
                        MessageKind::Message | MessageKind::Action | MessageKind::Notice
                    ) =>
            {
                let to = self.shared_target(m.channel, m.author)?;
                op(
                    &m.author,
                    RemoteAction::Send {
                        to,
                        // Not in `origins`: a message made here is named by this server.
                        message: self.global_ref(m.id)?,
                        kind: m.kind,
                        body: m.body.clone(),
                        meta: m.meta.clone(),
                        reply_to: m.reply_to.and_then(|r| self.global_ref(r)),
                    },
                )
            }
            EventKind::MessageEdited {
                channel,
                message,
                author,
                body,
                meta,
                ..
            } if local(author) => {
                self.shared_target(*channel, *author)?;
                op(
                    author,
                    RemoteAction::Edit {
                        message: self.global_ref(*message)?,
                        body: body.clone(),
                        meta: meta.clone(),
                    },
                )
            }
            EventKind::MessageDeleted {
                channel,
                message,
                by,
            } if local(by) => {
                self.shared_target(*channel, *by)?;
                op(
                    by,
                    RemoteAction::Delete {
                        message: self.global_ref(*message)?,
                    },
                )
            }
            EventKind::ReactionAdded {
                channel,
                message,
                user,
                emoji,
            } if local(user) => {
                self.shared_target(*channel, *user)?;
                op(
                    user,
                    RemoteAction::React {
                        message: self.global_ref(*message)?,
                        emoji: emoji.clone(),
                    },
                )
            }
            EventKind::ReactionRemoved {
                channel,
                message,
                user,
                emoji,
            } if local(user) => {
                self.shared_target(*channel, *user)?;
                op(
                    user,
                    RemoteAction::Unreact {
                        message: self.global_ref(*message)?,
                        emoji: emoji.clone(),
                    },
                )
            }
            _ => None,
        }
    }

    fn network_channel_name(&self, channel: ChannelId) -> Option<String> {
        let ch = self.state.channels.get(&channel)?;
        (ch.kind == ChannelKind::Text && ch.space.is_some() && ch.space == self.state.network)
            .then(|| ch.name.clone())
    }

    /// Where a message in `channel` by `author` goes across the network: a network channel, or the remote
    /// user of a DM; `None` when the channel is not shared.
    fn shared_target(&self, channel: ChannelId, author: UserId) -> Option<RemoteTarget> {
        if let Some(name) = self.network_channel_name(channel) {
            return Some(RemoteTarget::Channel(name));
        }
        let ch = self.state.channels.get(&channel)?;
        if ch.kind != ChannelKind::Dm {
            return None;
        }
        let other = ch.members.keys().find(|u| **u != author)?;
        self.state.users.get(other)?.home.as_ref()?;
        Some(RemoteTarget::User(self.global_user(*other)?))
    }

    fn mode_text(&self, changes: &[ModeChange]) -> Option<(String, Vec<ModeArg>)> {
        let mut modes = String::new();
        let mut args = Vec::new();
        let sign = |on: bool| if on { '+' } else { '-' };
        for c in changes {
            match c {
                ModeChange::Flag { letter, on } => {
                    modes.push(sign(*on));
                    modes.push(*letter);
                }
                ModeChange::Key(k) => {
                    modes.push(sign(k.is_some()));
                    modes.push('k');
                    args.push(ModeArg::Text(k.clone().unwrap_or_else(|| "*".to_owned())));
                }
                ModeChange::Limit(l) => {
                    modes.push(sign(l.is_some()));
                    modes.push('l');
                    if let Some(l) = l {
                        args.push(ModeArg::Text(l.to_string()));
                    }
                }
                ModeChange::Ban { mask, on } => {
                    modes.push(sign(*on));
                    modes.push('b');
                    args.push(ModeArg::Text(mask.clone()));
                }
                ModeChange::Op { user, on } | ModeChange::Voice { user, on } => {
                    modes.push(sign(*on));
                    modes.push(if matches!(c, ModeChange::Op { .. }) {
                        'o'
                    } else {
                        'v'
                    });
                    args.push(ModeArg::User(self.global_user(*user)?));
                }
            }
        }
        Some((modes, args))
    }

    /// Records, for each network channel with local members, its state as an op of the server's own user,
    /// for linked servers to merge ([`Command::AnnounceChannels`](crate::Command)).
    pub(crate) fn announce_channels(&mut self) -> Result<Option<Created>, Error> {
        let me = self
            .server_name()
            .ok_or(Error::NotSupported {
                what: "this server has no FEDERATION_NAME",
            })?
            .to_owned();
        let system = self.system_user();
        let Some(who) = self.global_user(system) else {
            return Ok(None);
        };
        let network = self.state.network;
        let mut states = Vec::new();
        for ch in self.state.channels.values() {
            if ch.kind != ChannelKind::Text || ch.space.is_none() || ch.space != network {
                continue;
            }
            let members: Vec<_> = ch
                .members
                .iter()
                .filter(|(u, _)| self.state.users.get(u).is_some_and(|u| u.home.is_none()))
                .filter_map(|(u, m)| Some((self.global_user(*u)?, m.op, m.voice)))
                .collect();
            if members.is_empty() {
                continue;
            }
            let topic = ch
                .topic
                .as_ref()
                .and_then(|t| Some((t.text.clone(), self.global_user(t.by)?, t.at)));
            states.push(ChannelState {
                name: ch.name.clone(),
                created_at: ch.created_at,
                topic,
                flags: ch.flag_letters(),
                key: ch.flags.key.clone(),
                limit: ch.flags.limit,
                bans: ch.bans.iter().map(|b| b.mask.clone()).collect(),
                members,
            });
        }
        for state in states {
            let id = self.state.last_seq + 1;
            let op = RemoteOp {
                origin: me.clone(),
                id,
                at: self.now,
                user: who.clone(),
                action: RemoteAction::Channel(state),
            };
            self.emit(
                Audience::Nobody,
                EventKind::Relayed {
                    op: Box::new(op),
                    from: me.clone(),
                    made: None,
                },
            );
        }
        Ok(None)
    }

    /// Merges a peer's view of a channel: its members join; if its channel is older (or, created in the same
    /// millisecond, its modes and topic sort first), its topic, modes and bans replace ours, our members lose
    /// `+o`/`+v`, and the channel takes its creation time; otherwise ours stand and its members join
    /// without `+o`/`+v`. Every server applies the same rule to the same two states, so they converge.
    fn merge_channel(&mut self, op: &RemoteOp, theirs: &ChannelState) -> Result<(), Error> {
        crate::name::validate_channel_name(&theirs.name)?;
        let system = Actor {
            user: self.system_user(),
            client: None,
            system: true,
        };
        let mut joined = Vec::new();
        for (user, o, v) in &theirs.members {
            if user.server != op.origin {
                return Err(Error::InvalidInput {
                    field: Field::Target,
                    reason: "a channel's state lists only its announcing server's members",
                });
            }
            let id = self.resolve_global(user)?;
            let actor = Actor {
                user: id,
                client: None,
                system: false,
            };
            // Its own server let it in; a ban or a key set here since is settled by the merged modes.
            if self.join_trusted(actor, &theirs.name).is_ok() {
                joined.push((id, *o, *v));
            }
        }
        let Some(&id) = self.state.channel_names.get(&casefold(&theirs.name)) else {
            return Ok(());
        };
        let ours = self.chan(id);
        let ours_key = (
            ours.created_at,
            ours.flag_letters(),
            ours.flags.key.clone(),
            ours.topic.as_ref().map(|t| t.text.clone()),
        );
        let theirs_key = (
            theirs.created_at,
            theirs.flags.clone(),
            theirs.key.clone(),
            theirs.topic.as_ref().map(|t| t.0.clone()),
        );
        let they_win = theirs_key < ours_key;
        let mut modes = String::new();
        let mut args = Vec::new();
        if they_win {
            let ch = self.chan(id);
            for letter in ['i', 'm', 'n', 's', 't'] {
                let want = theirs.flags.contains(letter);
                if ch.flag_letters().contains(letter) != want {
                    modes.push(if want { '+' } else { '-' });
                    modes.push(letter);
                }
            }
            if ch.flags.key != theirs.key {
                match &theirs.key {
                    Some(k) => {
                        modes.push_str("+k");
                        args.push(k.clone());
                    }
                    None => {
                        modes.push_str("-k");
                        args.push("*".to_owned());
                    }
                }
            }
            if ch.flags.limit != theirs.limit {
                match theirs.limit {
                    Some(l) => {
                        modes.push_str("+l");
                        args.push(l.to_string());
                    }
                    None => modes.push_str("-l"),
                }
            }
            for ban in &ch.bans {
                if !theirs
                    .bans
                    .iter()
                    .any(|b| b.eq_ignore_ascii_case(&ban.mask))
                {
                    modes.push_str("-b");
                    args.push(ban.mask.clone());
                }
            }
            for mask in &theirs.bans {
                if !ch.bans.iter().any(|b| b.mask.eq_ignore_ascii_case(mask)) {
                    modes.push_str("+b");
                    args.push(mask.clone());
                }
            }
            let joined_ids: Vec<UserId> = joined.iter().map(|j| j.0).collect();
            for (user, m) in ch.members.iter() {
                if joined_ids.contains(user) {
                    continue;
                }
                let nick = self.state.users[user].nick.clone();
                if m.op {
                    modes.push_str("-o");
                    args.push(nick.clone());
                }
                if m.voice {
                    modes.push_str("-v");
                    args.push(nick);
                }
            }
        }
        if they_win || theirs_key == ours_key {
            let ch = self.chan(id);
            for (user, o, v) in &joined {
                let m = ch.members.get(user).copied().unwrap_or_default();
                let nick = self.state.users[user].nick.clone();
                if *o && !m.op {
                    modes.push_str("+o");
                    args.push(nick.clone());
                }
                if *v && !m.voice {
                    modes.push_str("+v");
                    args.push(nick);
                }
            }
        }
        if !modes.is_empty() {
            // Each mode change is one letter and its argument: 64 bytes of mode string at most per command.
            let letters: Vec<(String, Option<String>)> = split_modes(&modes, args);
            for chunk in letters.chunks(20) {
                let mut m = String::new();
                let mut a = Vec::new();
                for (l, arg) in chunk {
                    m.push_str(l);
                    a.extend(arg.clone());
                }
                self.mode(system, ChannelRef::Id(id), m, a)?;
            }
        }
        if they_win {
            let topic = match &theirs.topic {
                Some((text, by, at)) => {
                    crate::name::check_text(
                        Field::Topic,
                        text,
                        crate::handle::channel::TOPIC_MAX,
                        false,
                    )?;
                    let by = self.resolve_global(by)?;
                    Some(Topic {
                        text: text.clone(),
                        by,
                        at: *at,
                    })
                }
                None => None,
            };
            let same =
                topic.as_ref().map(|t| &t.text) == self.chan(id).topic.as_ref().map(|t| &t.text);
            if !same {
                let message = MessageId(self.next_id());
                let by = topic.as_ref().map_or(system.user, |t| t.by);
                self.emit(
                    Audience::Channel(id),
                    EventKind::TopicChanged {
                        channel: id,
                        topic,
                        by,
                        message,
                    },
                );
            }
        }
        Ok(())
    }
}

/// Splits `+o-v+k` with its arguments into one entry per letter.
fn split_modes(modes: &str, args: Vec<String>) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    let mut sign = '+';
    for c in modes.chars() {
        if c == '+' || c == '-' {
            sign = c;
            continue;
        }
        let takes = matches!(c, 'o' | 'v' | 'b' | 'k') || (c == 'l' && sign == '+');
        out.push((format!("{sign}{c}"), if takes { args.next() } else { None }));
    }
    out
}

/// A server name as linked servers name each other: 1..63 bytes of `a-z 0-9 . -`, starting with a letter
/// or a digit.
pub fn check_server_name(name: &str) -> Result<(), Error> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= SERVER_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            field: Field::Name,
            reason: "a server name is 1..63 of a-z 0-9 . -, starting with a letter or digit",
        })
    }
}
