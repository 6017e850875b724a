//! IRC-style channel commands: JOIN, PART, KICK, INVITE, TOPIC, MODE.

use std::collections::BTreeMap;

use crate::command::{ChannelRef, UserRef};
use crate::core::{Actor, Core, Created};
use crate::error::{Error, Field};
use crate::event::{Audience, ChannelInfo, EventKind, ModeChange};
use crate::handle::session::REASON_MAX;
use crate::id::{ChannelId, MessageId, UserId};
use crate::model::{ChannelFlags, ChannelKind, MemberModes, Topic};
use crate::name::{casefold, check_text, validate_channel_name, validate_mask};
use crate::perm::Permissions;

/// Most network channels one user may be on (IRC's CHANLIMIT).
pub(crate) const CHANNELS_PER_USER: usize = 200;
/// Longest topic, in bytes.
pub(crate) const TOPIC_MAX: usize = 1024;
/// Most `+b` entries on a channel.
const BANS_MAX: usize = 100;
/// Most mode changes that take an argument in one MODE command.
const MODE_ARGS_MAX: usize = 12;

impl Core {
    /// Resolves a channel the actor acts on and checks it is a network channel (or, where `dm_ok`, a group DM).
    pub(crate) fn network_channel(&self, channel: &ChannelRef) -> Result<ChannelId, Error> {
        let id = self.resolve_channel(channel)?;
        let ch = self.chan(id);
        if ch.space != self.state.network || ch.kind != ChannelKind::Text {
            return Err(Error::NotSupported {
                what: "this command applies to network #channels",
            });
        }
        Ok(id)
    }

    fn check_reason(reason: Option<String>) -> Result<Option<String>, Error> {
        let reason = reason.filter(|r| !r.is_empty());
        if let Some(r) = &reason {
            check_text(Field::Reason, r, REASON_MAX, true)?;
        }
        Ok(reason)
    }

    pub(crate) fn join(
        &mut self,
        actor: Actor,
        name: String,
        key: Option<String>,
    ) -> Result<Option<Created>, Error> {
        self.join_as(actor, name, key, false)
    }

    /// A join a linked server vouches for (its channel state lists the user as a member): no key, invite,
    /// limit or ban check here.
    pub(crate) fn join_trusted(
        &mut self,
        actor: Actor,
        name: &str,
    ) -> Result<Option<Created>, Error> {
        self.join_as(actor, name.to_owned(), None, true)
    }

    fn join_as(
        &mut self,
        actor: Actor,
        name: String,
        key: Option<String>,
        trusted: bool,
    ) -> Result<Option<Created>, Error> {
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user does not join channels",
            });
        }
        validate_channel_name(&name)?;
        let user = &self.state.users[&actor.user];
        let on = user
            .channels
            .iter()
            .filter(|c| {
                self.state
                    .channels
                    .get(c)
                    .is_some_and(|ch| ch.space.is_some())
            })
            .count();
        match self.state.channel_names.get(&casefold(&name)).copied() {
            Some(id) => {
                if self.is_member(actor.user, id) {
                    return Ok(None);
                }
                if on >= CHANNELS_PER_USER {
                    return Err(Error::LimitReached {
                        what: "channels per user",
                    });
                }
                let perms = self.channel_permissions(actor.user, id);
                if !trusted && !perms.contains(Permissions::ADMINISTRATOR) {
                    let ch = self.chan(id);
                    let invited = ch.invited.contains(&actor.user);
                    if !perms.contains(Permissions::VIEW_CHANNEL) {
                        let user = &self.state.users[&actor.user];
                        if ch.bans.iter().any(|b| b.holds(user)) {
                            return Err(Error::Banned);
                        }
                        if ch.is_invite_only() {
                            return Err(Error::InviteOnly);
                        }
                        return Err(Error::PrivilegesNeeded {
                            permission: Permissions::VIEW_CHANNEL,
                        });
                    }
                    if !invited {
                        if let Some(k) = &ch.flags.key
                            && key.as_deref() != Some(k.as_str())
                        {
                            return Err(Error::BadKey);
                        }
                        if let Some(limit) = ch.flags.limit
                            && ch.members.len() >= limit as usize
                        {
                            return Err(Error::ChannelFull);
                        }
                    }
                }
                let message = MessageId(self.next_id());
                self.emit(
                    Audience::Channel(id),
                    EventKind::Joined {
                        channel: id,
                        user: actor.user,
                        message,
                        modes: MemberModes::default(),
                    },
                );
                Ok(None)
            }
            None => {
                if on >= CHANNELS_PER_USER {
                    return Err(Error::LimitReached {
                        what: "channels per user",
                    });
                }
                let network = self.network_id();
                let id = ChannelId(self.next_id());
                let info = ChannelInfo {
                    // New channels get IRC's usual `+nt`.
                    flags: ChannelFlags {
                        no_external: true,
                        topic_lock: true,
                        ..ChannelFlags::default()
                    },
                    owner: Some(actor.user),
                    ..ChannelInfo::new(id, ChannelKind::Text, Some(network), name)
                };
                // Everyone in the network learns of a new channel, as a Discord guild's members do: a new
                // channel is never `+s` (only its members learn of a secret one's deletion).
                self.emit(
                    Audience::Space(network),
                    EventKind::ChannelCreated {
                        channel: info,
                        members: Vec::new(),
                    },
                );
                let message = MessageId(self.next_id());
                self.emit(
                    Audience::Channel(id),
                    EventKind::Joined {
                        channel: id,
                        user: actor.user,
                        message,
                        modes: MemberModes {
                            op: true,
                            voice: false,
                        },
                    },
                );
                Ok(Some(Created::Channel(id)))
            }
        }
    }

    pub(crate) fn part(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
        reason: Option<String>,
    ) -> Result<Option<Created>, Error> {
        let id = self.resolve_channel(&channel)?;
        let ch = self.chan(id);
        let network = ch.space == self.state.network && ch.kind == ChannelKind::Text;
        if !network && ch.kind != ChannelKind::GroupDm {
            return Err(Error::NotSupported {
                what: "PART applies to network #channels and group DMs",
            });
        }
        if !ch.members.contains_key(&actor.user) {
            return Err(Error::NotOnChannel);
        }
        let reason = Self::check_reason(reason)?;
        let message = MessageId(self.next_id());
        self.emit(
            Audience::ChannelAnd(id, actor.user),
            EventKind::Parted {
                channel: id,
                user: actor.user,
                reason,
                message,
            },
        );
        self.remove_empty_channels(&[id]);
        Ok(None)
    }

    pub(crate) fn kick(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
        user: UserRef,
        reason: Option<String>,
    ) -> Result<Option<Created>, Error> {
        let id = self.network_channel(&channel)?;
        let target = self.resolve_user(&user)?;
        self.require_on_channel(actor, id)?;
        self.require_channel(actor, id, Permissions::KICK_MEMBERS)?;
        if !self.chan(id).members.contains_key(&target) {
            return Err(Error::UserNotInChannel);
        }
        let reason = Self::check_reason(reason)?;
        // The kicked user hears of it; so does a server operator kicking from outside the channel (rare, so
        // the list is spelled out).
        let audience = if actor.system || self.is_member(actor.user, id) {
            Audience::ChannelAnd(id, target)
        } else {
            let mut users: Vec<UserId> = self.chan(id).members.keys().copied().collect();
            users.push(actor.user);
            Audience::users(users)
        };
        let message = MessageId(self.next_id());
        self.emit(
            audience,
            EventKind::Kicked {
                channel: id,
                user: target,
                by: actor.user,
                reason,
                message,
            },
        );
        self.remove_empty_channels(&[id]);
        Ok(None)
    }

    /// IRC asks ops to be on the channel they act on; the server's operator and administrators need not be.
    fn require_on_channel(&self, actor: Actor, channel: ChannelId) -> Result<(), Error> {
        if actor.system
            || self.chan(channel).members.contains_key(&actor.user)
            || self
                .channel_permissions(actor.user, channel)
                .contains(Permissions::ADMINISTRATOR)
        {
            Ok(())
        } else {
            Err(Error::NotOnChannel)
        }
    }

    pub(crate) fn invite_user(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
        user: UserRef,
    ) -> Result<Option<Created>, Error> {
        let id = self.network_channel(&channel)?;
        let target = self.resolve_user(&user)?;
        self.require_on_channel(actor, id)?;
        let needed = if self.chan(id).is_invite_only() {
            Permissions::CREATE_INSTANT_INVITE | Permissions::MANAGE_CHANNELS
        } else {
            Permissions::CREATE_INSTANT_INVITE
        };
        self.require_channel(actor, id, needed)?;
        let ch = self.chan(id);
        if ch.members.contains_key(&target) {
            return Err(Error::UserOnChannel);
        }
        if ch.invited.contains(&target) {
            return Ok(None);
        }
        let mut audience = vec![actor.user, target];
        // Channel operators hear of invites too (IRC's invite-notify).
        audience.extend(ch.members.iter().filter(|(_, m)| m.op).map(|(u, _)| *u));
        let message = MessageId(self.next_id());
        self.emit(
            Audience::users(audience),
            EventKind::Invited {
                channel: id,
                user: target,
                by: actor.user,
                message,
            },
        );
        Ok(None)
    }

    pub(crate) fn topic(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
        topic: String,
    ) -> Result<Option<Created>, Error> {
        let id = self.resolve_channel(&channel)?;
        let ch = self.chan(id);
        match ch.kind {
            ChannelKind::Text | ChannelKind::GroupDm | ChannelKind::Thread => {}
            _ => {
                return Err(Error::NotSupported {
                    what: "this channel has no topic",
                });
            }
        }
        let network = ch.space.is_some() && ch.space == self.state.network;
        if network {
            self.require_on_channel(actor, id)?;
        }
        if ch.space.is_none() {
            if !actor.system && !ch.members.contains_key(&actor.user) {
                return Err(Error::NotOnChannel);
            }
        } else if !network || ch.flags.topic_lock {
            self.require_channel(actor, id, Permissions::MANAGE_CHANNELS)?;
        } else {
            self.require_channel(actor, id, Permissions::VIEW_CHANNEL)?;
        }
        check_text(Field::Topic, &topic, TOPIC_MAX, false)?;
        let topic = (!topic.is_empty()).then_some(Topic {
            text: topic,
            by: actor.user,
            at: self.now,
        });
        if topic.as_ref().map(|t| &t.text) == self.chan(id).topic.as_ref().map(|t| &t.text) {
            return Ok(None);
        }
        let message = MessageId(self.next_id());
        let audience = self.channel_echo(actor, id);
        self.emit(
            audience,
            EventKind::TopicChanged {
                channel: id,
                topic,
                by: actor.user,
                message,
            },
        );
        Ok(None)
    }

    pub(crate) fn mode(
        &mut self,
        actor: Actor,
        channel: ChannelRef,
        modes: String,
        args: Vec<String>,
    ) -> Result<Option<Created>, Error> {
        let id = self.network_channel(&channel)?;
        if modes.len() > 64 {
            return Err(Error::InvalidInput {
                field: Field::Modes,
                reason: "too long",
            });
        }
        let changes = self.parse_modes(actor, id, &modes, args)?;
        if changes.is_empty() {
            return Ok(None);
        }
        let message = MessageId(self.next_id());
        let audience = self.channel_echo(actor, id);
        self.emit(
            audience,
            EventKind::ModeChanged {
                channel: id,
                by: actor.user,
                changes: changes.clone(),
                message,
            },
        );
        // +s hides the channel from the network's non-members, -s shows it again: tell them.
        let secret = changes.iter().rev().find_map(|c| match c {
            ModeChange::Flag { letter: 's', on } => Some(*on),
            _ => None,
        });
        if let Some(on) = secret {
            let network = self.network();
            let outside: Vec<UserId> = self.state.spaces[&network]
                .members
                .keys()
                .filter(|u| !self.state.channels[&id].members.contains_key(u))
                .copied()
                .collect();
            if !outside.is_empty() {
                self.emit(
                    Audience::Users(outside),
                    EventKind::ChannelListed {
                        channel: id,
                        listed: !on,
                    },
                );
            }
        }
        Ok(None)
    }

    /// Parses and checks a mode string against the channel as it is; drops changes that change nothing.
    fn parse_modes(
        &self,
        actor: Actor,
        id: ChannelId,
        modes: &str,
        args: Vec<String>,
    ) -> Result<Vec<ModeChange>, Error> {
        let ch = self.chan(id);
        let mut args = args.into_iter();
        let mut on = true;
        let mut changes = Vec::new();
        let mut with_args = 0;
        // What the channel would look like after the changes so far, to drop no-ops and duplicates.
        let mut flags = (ch.is_invite_only(), ch.is_moderated(), ch.flags.clone());
        // Member modes touched so far; the rest are read from the channel (no copy of a big member list).
        let mut member_modes: BTreeMap<UserId, MemberModes> = BTreeMap::new();
        let mut bans: Vec<String> = ch.bans.iter().map(|b| b.mask.clone()).collect();
        if modes.is_empty() {
            return Err(Error::NeedMoreParams {
                what: "mode string",
            });
        }
        // Permission first, as IRC servers answer 482 before looking at arguments: a non-operator learns
        // nothing about nicks or masks from the refusal.
        let mut needed = Permissions::empty();
        for letter in modes.chars() {
            needed |= match letter {
                '+' | '-' => Permissions::empty(),
                'i' | 'm' | 'n' | 's' | 't' | 'k' | 'l' => Permissions::MANAGE_CHANNELS,
                'b' => Permissions::BAN_MEMBERS,
                'o' | 'v' => Permissions::MANAGE_ROLES,
                other => return Err(Error::UnknownMode { letter: other }),
            };
        }
        if !needed.is_empty() {
            self.require_on_channel(actor, id)?;
            self.require_channel(actor, id, needed)?;
        }
        for letter in modes.chars() {
            match letter {
                '+' => on = true,
                '-' => on = false,
                'i' | 'm' | 'n' | 's' | 't' => {
                    let current = match letter {
                        'i' => &mut flags.0,
                        'm' => &mut flags.1,
                        'n' => &mut flags.2.no_external,
                        's' => &mut flags.2.secret,
                        _ => &mut flags.2.topic_lock,
                    };
                    if *current != on {
                        *current = on;
                        changes.push(ModeChange::Flag { letter, on });
                    }
                }
                'k' => {
                    with_args += 1;
                    if on {
                        let key = args
                            .next()
                            .ok_or(Error::NeedMoreParams { what: "+k key" })?;
                        if key.is_empty()
                            || key.len() > 32
                            || key.chars().any(|c| c == ' ' || c == ',' || c.is_control())
                        {
                            return Err(Error::InvalidInput {
                                field: Field::Key,
                                reason: "1..32 bytes, no space or comma",
                            });
                        }
                        if flags.2.key.as_deref() != Some(key.as_str()) {
                            flags.2.key = Some(key.clone());
                            changes.push(ModeChange::Key(Some(key)));
                        }
                    } else {
                        // IRC sends the key with -k; accept and ignore it.
                        let _ = args.next();
                        if flags.2.key.take().is_some() {
                            changes.push(ModeChange::Key(None));
                        }
                    }
                }
                'l' => {
                    if on {
                        with_args += 1;
                        let arg = args
                            .next()
                            .ok_or(Error::NeedMoreParams { what: "+l limit" })?;
                        let limit: u32 = arg
                            .parse()
                            .ok()
                            .filter(|n| (1..=100_000).contains(n))
                            .ok_or(Error::InvalidInput {
                                field: Field::Limit,
                                reason: "a number from 1 to 100000",
                            })?;
                        if flags.2.limit != Some(limit) {
                            flags.2.limit = Some(limit);
                            changes.push(ModeChange::Limit(Some(limit)));
                        }
                    } else if flags.2.limit.take().is_some() {
                        changes.push(ModeChange::Limit(None));
                    }
                }
                'b' => {
                    with_args += 1;
                    let mask = args
                        .next()
                        .ok_or(Error::NeedMoreParams { what: "+b mask" })?;
                    validate_mask(&mask)?;
                    let present = bans.iter().position(|b| b.eq_ignore_ascii_case(&mask));
                    match (on, present) {
                        (true, None) => {
                            if bans.len() >= BANS_MAX {
                                return Err(Error::LimitReached {
                                    what: "bans per channel",
                                });
                            }
                            bans.push(mask.clone());
                            changes.push(ModeChange::Ban { mask, on });
                        }
                        (false, Some(i)) => {
                            bans.remove(i);
                            changes.push(ModeChange::Ban { mask, on });
                        }
                        _ => {}
                    }
                }
                'o' | 'v' => {
                    with_args += 1;
                    let nick = args
                        .next()
                        .ok_or(Error::NeedMoreParams { what: "+o/+v nick" })?;
                    let user = self.resolve_user(&UserRef::Nick(nick))?;
                    let current = ch
                        .members
                        .get(&user)
                        .copied()
                        .ok_or(Error::UserNotInChannel)?;
                    let m = member_modes.entry(user).or_insert(current);
                    let slot = if letter == 'o' {
                        &mut m.op
                    } else {
                        &mut m.voice
                    };
                    if *slot != on {
                        *slot = on;
                        changes.push(if letter == 'o' {
                            ModeChange::Op { user, on }
                        } else {
                            ModeChange::Voice { user, on }
                        });
                    }
                }
                other => return Err(Error::UnknownMode { letter: other }),
            }
            if with_args > MODE_ARGS_MAX {
                return Err(Error::LimitReached {
                    what: "mode changes with arguments per command",
                });
            }
        }
        Ok(changes)
    }

    /// Adds a user to a group DM.
    pub(crate) fn add_recipient(
        &mut self,
        actor: Actor,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<Created>, Error> {
        let ch = self
            .state
            .channels
            .get(&channel)
            .ok_or(Error::NoSuchChannel)?;
        if ch.kind != ChannelKind::GroupDm {
            return Err(Error::NotSupported {
                what: "recipients belong to group DMs",
            });
        }
        if !actor.system && !ch.members.contains_key(&actor.user) {
            return Err(Error::NotOnChannel);
        }
        let target = self.resolve_user(&UserRef::Id(user))?;
        if ch.members.contains_key(&target) {
            return Err(Error::UserOnChannel);
        }
        if ch.members.len() >= crate::handle::message::GROUP_DM_MAX {
            return Err(Error::LimitReached {
                what: "group DM members",
            });
        }
        let message = MessageId(self.next_id());
        self.emit(
            Audience::Channel(channel),
            EventKind::Joined {
                channel,
                user: target,
                message,
                modes: MemberModes::default(),
            },
        );
        Ok(None)
    }

    /// Removes a user from a group DM: its owner may remove anyone, anyone may remove themself.
    pub(crate) fn remove_recipient(
        &mut self,
        actor: Actor,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<Created>, Error> {
        let ch = self
            .state
            .channels
            .get(&channel)
            .ok_or(Error::NoSuchChannel)?;
        if ch.kind != ChannelKind::GroupDm {
            return Err(Error::NotSupported {
                what: "recipients belong to group DMs",
            });
        }
        if !ch.members.contains_key(&user) {
            return Err(Error::UserNotInChannel);
        }
        if !actor.system && actor.user != user && ch.owner != Some(actor.user) {
            return Err(Error::NotOwner);
        }
        let message = MessageId(self.next_id());
        let kind = if actor.user == user {
            EventKind::Parted {
                channel,
                user,
                reason: None,
                message,
            }
        } else {
            EventKind::Kicked {
                channel,
                user,
                by: actor.user,
                reason: None,
                message,
            }
        };
        self.emit(Audience::ChannelAnd(channel, user), kind);
        Ok(None)
    }
}
