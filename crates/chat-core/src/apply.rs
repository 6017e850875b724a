//! Applying an event to the state: the only place durable state changes, for live commands and replay alike.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::core::{Config, State};
use crate::error::ReplayError;
use crate::event::{Event, EventKind, ModeChange};
use crate::federation::RemoteAction;
use crate::id::{ChannelId, MessageId, UserId};
use crate::model::{
    Channel, ChannelKind, Client, MemberModes, MessageRecord, Role, Space, SpaceMember, User,
};
use crate::name::casefold;
use crate::perm::{OverwriteTarget, Permissions};

impl State {
    pub(crate) fn apply(&mut self, ev: &Event, config: &Config) -> Result<(), ReplayError> {
        let seq = ev.seq;
        let unknown = |what| ReplayError::Unknown { seq, what };
        let now = ev.ts;
        match &ev.kind {
            EventKind::UserCreated {
                user,
                nick,
                password_hash,
                bot,
                system,
            } => {
                self.observe(user.0);
                if *bot {
                    self.bots.insert(*user);
                }
                self.insert_user(User {
                    password_hash: password_hash.clone(),
                    bot: *bot,
                    system: *system,
                    ..User::new(*user, nick.clone(), now)
                });
                if *system {
                    self.system_user = Some(*user);
                }
            }
            EventKind::ProfileUpdated {
                user,
                display_name,
                bio,
                avatar_url,
            } => {
                let u = self.users.get_mut(user).ok_or_else(|| unknown("user"))?;
                u.display_name.clone_from(display_name);
                u.bio.clone_from(bio);
                u.avatar_url.clone_from(avatar_url);
            }
            EventKind::PasswordChanged {
                user,
                password_hash,
            } => {
                let u = self.users.get_mut(user).ok_or_else(|| unknown("user"))?;
                u.password_hash = Some(password_hash.clone());
            }
            EventKind::NickChanged {
                user,
                old,
                new,
                notices,
            } => {
                self.bind_bans_before_rename(*user);
                let u = self.users.get_mut(user).ok_or_else(|| unknown("user"))?;
                u.nick.clone_from(new);
                self.nicks.remove(&casefold(old));
                self.nicks.insert(casefold(new), *user);
                for (channel, message) in notices {
                    self.record_message(
                        *channel,
                        *message,
                        *user,
                        crate::model::MessageKind::Nick,
                        config,
                    );
                }
            }
            EventKind::ClientCreated {
                client,
                user,
                name,
                token_hash,
            } => {
                self.observe(client.0);
                let u = self.users.get_mut(user).ok_or_else(|| unknown("user"))?;
                u.clients.insert(*client);
                self.clients.insert(
                    *client,
                    Client {
                        id: *client,
                        user: *user,
                        name: name.clone(),
                        token_hash: *token_hash,
                        created_at: now,
                        last_seen: now,
                        connections: 0,
                    },
                );
                self.tokens.insert(*token_hash, *client);
                self.client_deadlines
                    .insert((now.saturating_add(config.session_idle_timeout_ms), *client));
            }
            EventKind::ClientRemoved { client, user, .. } => {
                let c = self
                    .clients
                    .remove(client)
                    .ok_or_else(|| unknown("client"))?;
                self.tokens.remove(&c.token_hash);
                self.client_deadlines.remove(&(
                    c.last_seen.saturating_add(config.session_idle_timeout_ms),
                    *client,
                ));
                if let Some(u) = self.users.get_mut(user) {
                    u.clients.remove(client);
                }
            }
            EventKind::Quit {
                user,
                notices,
                released,
                ..
            } => {
                for (channel, message) in notices {
                    self.record_message(
                        *channel,
                        *message,
                        *user,
                        crate::model::MessageKind::Quit,
                        config,
                    );
                }
                let u = self.users.get(user).ok_or_else(|| unknown("user"))?;
                let explicit: Vec<ChannelId> = u.channels.iter().copied().collect();
                let spaces: Vec<_> = u.spaces.iter().copied().collect();
                for c in explicit {
                    let Some(ch) = self.channels.get(&c) else {
                        continue;
                    };
                    // A quit leaves network channels; a released guest also leaves its group DMs. DMs stay so
                    // that the other side keeps the conversation.
                    let leaves =
                        ch.space.is_some() || (*released && ch.kind == ChannelKind::GroupDm);
                    if leaves {
                        self.remove_channel_member(c, *user);
                    }
                }
                if *released {
                    for s in spaces {
                        self.remove_space_member(s, *user);
                    }
                    let u = self.users.get_mut(user).ok_or_else(|| unknown("user"))?;
                    u.released = true;
                    u.away = None;
                    if let Some(home) = &u.home
                        && let Some(ids) = self.remote_users.get_mut(&home.server)
                    {
                        ids.remove(&home.id);
                    }
                    let key = casefold(&u.nick);
                    if self.nicks.get(&key) == Some(user) {
                        self.nicks.remove(&key);
                    }
                    self.read_states.retain(|(_, u), _| u != user);
                    self.slow_mode_last.retain(|(_, u), _| u != user);
                    for ch in self.channels.values_mut() {
                        ch.invited.remove(user);
                    }
                }
            }
            EventKind::AwayChanged { user, message } => {
                self.users
                    .get_mut(user)
                    .ok_or_else(|| unknown("user"))?
                    .away
                    .clone_from(message);
            }
            EventKind::PresenceChanged { .. }
            | EventKind::PresenceUpdated { .. }
            | EventKind::Typing { .. } => {}
            EventKind::ReadAck {
                user,
                channel,
                message,
                ..
            } => {
                let rs = self.read_states.entry((*channel, *user)).or_default();
                rs.last_read = Some(*message);
                rs.mentions.retain(|m| m > message);
            }
            EventKind::SpaceCreated { space, everyone } => {
                self.observe(space.id.0);
                let mut roles = BTreeMap::new();
                roles.insert(
                    space.id.everyone_role(),
                    Role {
                        id: space.id.everyone_role(),
                        name: "@everyone".to_owned(),
                        permissions: *everyone,
                        color: 0,
                        hoist: false,
                        mentionable: false,
                        position: 0,
                    },
                );
                self.spaces.insert(
                    space.id,
                    Space {
                        id: space.id,
                        name: space.name.clone(),
                        description: space.description.clone(),
                        icon_url: space.icon_url.clone(),
                        owner: space.owner,
                        public: space.public,
                        network: space.network,
                        created_at: now,
                        roles,
                        members: BTreeMap::new(),
                        bans: BTreeMap::new(),
                        channels: BTreeSet::new(),
                    },
                );
                if space.network {
                    self.network = Some(space.id);
                    let users: Vec<UserId> = self
                        .users
                        .values()
                        .filter(|u| !u.released)
                        .map(|u| u.id)
                        .collect();
                    for u in users {
                        self.add_space_member(space.id, u, now);
                    }
                }
            }
            EventKind::SpaceUpdated { space } => {
                let sp = self
                    .spaces
                    .get_mut(&space.id)
                    .ok_or_else(|| unknown("space"))?;
                sp.name.clone_from(&space.name);
                sp.description.clone_from(&space.description);
                sp.icon_url.clone_from(&space.icon_url);
                sp.public = space.public;
                sp.owner = space.owner;
            }
            EventKind::SpaceDeleted { space } => {
                let sp = self.spaces.get(space).ok_or_else(|| unknown("space"))?;
                let members: Vec<UserId> = sp.members.keys().copied().collect();
                let channels: Vec<ChannelId> = sp.channels.iter().copied().collect();
                for c in channels {
                    self.remove_channel(c);
                }
                for u in members {
                    self.remove_space_member(*space, u);
                }
                self.retain_invites(
                    |i| !matches!(i.target, crate::model::InviteTarget::Space(s, _) if s == *space),
                );
                self.spaces.remove(space);
            }
            EventKind::MemberJoined { space, user, .. } => {
                if !self.spaces.contains_key(space) {
                    return Err(unknown("space"));
                }
                self.add_space_member(*space, *user, now);
            }
            EventKind::MemberLeft { space, user, .. } => {
                self.remove_space_member(*space, *user);
            }
            EventKind::MemberUpdated {
                space,
                user,
                roles,
                nick,
            } => {
                let sp = self.spaces.get_mut(space).ok_or_else(|| unknown("space"))?;
                let m = sp.members.get_mut(user).ok_or_else(|| unknown("member"))?;
                m.roles = roles.iter().copied().collect();
                m.nick.clone_from(nick);
            }
            EventKind::SpaceBanned {
                space,
                user,
                reason,
                ..
            } => {
                let sp = self.spaces.get_mut(space).ok_or_else(|| unknown("space"))?;
                sp.bans.insert(*user, reason.clone());
                self.remove_space_member(*space, *user);
            }
            EventKind::SpaceUnbanned { space, user } => {
                self.spaces
                    .get_mut(space)
                    .ok_or_else(|| unknown("space"))?
                    .bans
                    .remove(user);
            }
            EventKind::RoleUpserted { space, role, .. } => {
                self.observe(role.id.0);
                let sp = self.spaces.get_mut(space).ok_or_else(|| unknown("space"))?;
                sp.roles.insert(role.id, role.clone());
            }
            EventKind::RoleDeleted { space, role } => {
                let sp = self.spaces.get_mut(space).ok_or_else(|| unknown("space"))?;
                sp.roles.remove(role);
                for m in sp.members.values_mut() {
                    m.roles.remove(role);
                }
                let channels: Vec<ChannelId> = sp.channels.iter().copied().collect();
                for c in channels {
                    if let Some(ch) = self.channels.get_mut(&c) {
                        ch.overwrites.remove(&OverwriteTarget::Role(*role));
                    }
                }
            }
            EventKind::ChannelCreated {
                channel: info,
                members,
            } => {
                self.observe(info.id.0);
                let ch = Channel {
                    id: info.id,
                    kind: info.kind,
                    space: info.space,
                    parent: info.parent,
                    name: info.name.clone(),
                    topic: info.topic.clone(),
                    position: info.position,
                    slowmode_secs: info.slowmode_secs,
                    flags: info.flags.clone(),
                    bans: Vec::new(),
                    invited: BTreeSet::new(),
                    owner: info.owner,
                    starter: info.starter,
                    created_at: now,
                    last_message: None,
                    pins: Vec::new(),
                    overwrites: info
                        .overwrites
                        .iter()
                        .map(|(t, a, d)| (*t, (*a, *d)))
                        .collect(),
                    members: BTreeMap::new(),
                    history: VecDeque::new(),
                };
                self.channels.insert(info.id, ch);
                let network = info.space.is_some() && info.space == self.network;
                if network && info.kind == ChannelKind::Text {
                    self.channel_names.insert(casefold(&info.name), info.id);
                }
                if let Some(space) = info.space
                    && info.kind != ChannelKind::Thread
                {
                    self.spaces
                        .get_mut(&space)
                        .ok_or_else(|| unknown("space"))?
                        .channels
                        .insert(info.id);
                }
                if let (Some(starter), ChannelKind::Thread) = (info.starter, info.kind)
                    && let Some(m) = self.messages.get_mut(&starter)
                {
                    m.thread = Some(info.id);
                }
                if info.kind == ChannelKind::Dm && members.len() == 2 {
                    self.dms.insert(
                        (members[0].min(members[1]), members[0].max(members[1])),
                        info.id,
                    );
                }
                for u in members {
                    self.add_channel_member(info.id, *u, MemberModes::default());
                }
            }
            EventKind::ChannelUpdated { channel: info } => {
                let ch = self
                    .channels
                    .get_mut(&info.id)
                    .ok_or_else(|| unknown("channel"))?;
                ch.name.clone_from(&info.name);
                ch.topic.clone_from(&info.topic);
                ch.position = info.position;
                ch.parent = info.parent;
                ch.slowmode_secs = info.slowmode_secs;
                ch.flags = info.flags.clone();
                ch.owner = info.owner;
            }
            EventKind::ChannelDeleted { channel } => {
                if !self.channels.contains_key(channel) {
                    return Err(unknown("channel"));
                }
                self.remove_channel(*channel);
            }
            EventKind::ChannelAccess {
                channel,
                added,
                removed,
            } => {
                for u in added {
                    self.add_channel_member(*channel, *u, MemberModes::default());
                }
                for u in removed {
                    self.remove_channel_member(*channel, *u);
                }
            }
            EventKind::OverwriteSet {
                channel,
                target,
                allow,
                deny,
            } => {
                let ch = self
                    .channels
                    .get_mut(channel)
                    .ok_or_else(|| unknown("channel"))?;
                ch.overwrites.insert(*target, (*allow, *deny));
            }
            EventKind::OverwriteDeleted { channel, target } => {
                let ch = self
                    .channels
                    .get_mut(channel)
                    .ok_or_else(|| unknown("channel"))?;
                ch.overwrites.remove(target);
            }
            EventKind::Joined {
                channel,
                user,
                message,
                modes,
            } => {
                if !self.channels.contains_key(channel) {
                    return Err(unknown("channel"));
                }
                self.add_channel_member(*channel, *user, *modes);
                if let Some(ch) = self.channels.get_mut(channel) {
                    ch.invited.remove(user);
                }
                self.record_message(
                    *channel,
                    *message,
                    *user,
                    crate::model::MessageKind::Join,
                    config,
                );
            }
            EventKind::Parted {
                channel,
                user,
                message,
                ..
            } => {
                self.record_message(
                    *channel,
                    *message,
                    *user,
                    crate::model::MessageKind::Part,
                    config,
                );
                self.remove_channel_member(*channel, *user);
            }
            EventKind::Kicked {
                channel,
                user,
                by,
                message,
                ..
            } => {
                self.record_message(
                    *channel,
                    *message,
                    *by,
                    crate::model::MessageKind::Kick,
                    config,
                );
                self.remove_channel_member(*channel, *user);
            }
            EventKind::TopicChanged {
                channel,
                topic,
                by,
                message,
            } => {
                let ch = self
                    .channels
                    .get_mut(channel)
                    .ok_or_else(|| unknown("channel"))?;
                ch.topic.clone_from(topic);
                self.record_message(
                    *channel,
                    *message,
                    *by,
                    crate::model::MessageKind::Topic,
                    config,
                );
            }
            EventKind::ModeChanged {
                channel,
                by,
                changes,
                message,
            } => {
                let network = self.network.ok_or_else(|| unknown("network"))?;
                let bound: Vec<BTreeSet<UserId>> = changes
                    .iter()
                    .map(|change| match change {
                        ModeChange::Ban { mask, on: true } => self.users_matching(*channel, mask),
                        _ => BTreeSet::new(),
                    })
                    .collect();
                let ch = self
                    .channels
                    .get_mut(channel)
                    .ok_or_else(|| unknown("channel"))?;
                for (change, bound) in changes.iter().zip(bound) {
                    apply_mode(ch, network.everyone_role(), change, *by, now, bound);
                }
                self.record_message(
                    *channel,
                    *message,
                    *by,
                    crate::model::MessageKind::Mode,
                    config,
                );
            }
            EventKind::Invited {
                channel,
                user,
                by,
                message,
            } => {
                let ch = self
                    .channels
                    .get_mut(channel)
                    .ok_or_else(|| unknown("channel"))?;
                ch.invited.insert(*user);
                self.record_message(
                    *channel,
                    *message,
                    *by,
                    crate::model::MessageKind::Invite,
                    config,
                );
            }
            EventKind::MessageCreated { message: m } => {
                if !self.channels.contains_key(&m.channel) {
                    return Err(unknown("channel"));
                }
                self.record_message(m.channel, m.id, m.author, m.kind, config);
                if let Some(rec) = self.messages.get_mut(&m.id) {
                    rec.reply_to = m.reply_to;
                }
                let ch = &self.channels[&m.channel];
                if ch.slowmode_secs > 0 {
                    self.slow_mode_last.insert((m.channel, m.author), now);
                }
                let mentioned: Vec<UserId> = if m.mention_everyone || m.mention_here {
                    self.members_of(m.channel)
                        .filter(|u| *u != m.author)
                        .collect()
                } else {
                    let members = self.member_map(m.channel);
                    m.mentions
                        .iter()
                        .copied()
                        .filter(|u| *u != m.author && members.is_some_and(|mm| mm.contains_key(u)))
                        .collect()
                };
                for u in mentioned {
                    self.read_states
                        .entry((m.channel, u))
                        .or_default()
                        .mentions
                        .push(m.id);
                }
            }
            EventKind::MessageEdited {
                message,
                body: _,
                edited_at,
                ..
            } => {
                let rec = self
                    .messages
                    .get_mut(message)
                    .ok_or_else(|| unknown("message"))?;
                rec.edited_at = Some(*edited_at);
            }
            EventKind::MessageDeleted {
                channel, message, ..
            } => {
                self.forget_message(*channel, *message);
            }
            EventKind::MessagesDeleted {
                channel, messages, ..
            } => {
                for m in messages {
                    self.forget_message(*channel, *m);
                }
            }
            EventKind::ReactionAdded {
                message,
                user,
                emoji,
                ..
            } => {
                let rec = self
                    .messages
                    .get_mut(message)
                    .ok_or_else(|| unknown("message"))?;
                rec.reactions.entry(emoji.clone()).or_default().push(*user);
            }
            EventKind::ReactionRemoved {
                message,
                user,
                emoji,
                ..
            } => {
                let rec = self
                    .messages
                    .get_mut(message)
                    .ok_or_else(|| unknown("message"))?;
                if let Some(users) = rec.reactions.get_mut(emoji) {
                    users.retain(|u| u != user);
                    if users.is_empty() {
                        rec.reactions.remove(emoji);
                    }
                }
            }
            EventKind::Pinned {
                channel,
                message,
                by,
                notice,
            } => {
                self.messages
                    .get_mut(message)
                    .ok_or_else(|| unknown("message"))?
                    .pinned = true;
                self.channels
                    .get_mut(channel)
                    .ok_or_else(|| unknown("channel"))?
                    .pins
                    .push(*message);
                self.record_message(
                    *channel,
                    *notice,
                    *by,
                    crate::model::MessageKind::Pin,
                    config,
                );
            }
            EventKind::Unpinned {
                channel, message, ..
            } => {
                if let Some(m) = self.messages.get_mut(message) {
                    m.pinned = false;
                }
                self.channels
                    .get_mut(channel)
                    .ok_or_else(|| unknown("channel"))?
                    .pins
                    .retain(|m| m != message);
            }
            EventKind::InviteCreated { invite } => {
                self.observe(invite.id.0);
                if let Some(at) = invite.expires_at {
                    self.invite_deadlines.insert((at, invite.code.clone()));
                }
                self.invites.insert(invite.code.clone(), invite.clone());
            }
            EventKind::InviteUsed { code, user } => {
                let inv = self
                    .invites
                    .get_mut(code)
                    .ok_or_else(|| unknown("invite"))?;
                inv.uses += 1;
                if let crate::model::InviteTarget::Channel(c) = inv.target
                    && let Some(ch) = self.channels.get_mut(&c)
                {
                    ch.invited.insert(*user);
                }
            }
            EventKind::InviteDeleted { code } => {
                if let Some(inv) = self.invites.remove(code)
                    && let Some(at) = inv.expires_at
                {
                    self.invite_deadlines.remove(&(at, code.clone()));
                }
            }
            // The secret flag changed with the ModeChanged before; this only tells non-members.
            EventKind::ChannelListed { .. } => {}
            EventKind::RemoteUserCreated { user, nick, home } => {
                self.observe(user.0);
                self.insert_user(User {
                    home: Some(home.clone()),
                    ..User::new(*user, nick.clone(), now)
                });
                self.remote_users
                    .entry(home.server.clone())
                    .or_default()
                    .insert(home.id, *user);
            }
            EventKind::Relayed { op, made, .. } => {
                if config.server_name.as_deref() != Some(op.origin.as_str()) {
                    let seen = self.relayed.entry(op.origin.clone()).or_default();
                    *seen = (*seen).max(op.id);
                }
                match &op.action {
                    RemoteAction::Send { message, .. } => {
                        if let Some(id) = made
                            && self.messages.contains_key(id)
                        {
                            self.origins.insert(*id, message.clone());
                            self.by_origin.insert(message.clone(), *id);
                        }
                    }
                    // The older channel wins: it takes the older creation time (its modes and topic came
                    // with the events just before).
                    RemoteAction::Channel(theirs) => {
                        if let Some(id) = self.channel_names.get(&casefold(&theirs.name))
                            && let Some(ch) = self.channels.get_mut(id)
                            && theirs.created_at < ch.created_at
                        {
                            ch.created_at = theirs.created_at;
                        }
                    }
                    _ => {}
                }
            }
        }
        if ev.is_durable() {
            self.last_seq = seq;
        }
        Ok(())
    }

    fn observe(&mut self, id: crate::id::Snowflake) {
        if let Some(ids) = &mut self.ids {
            ids.observe(id);
        }
    }

    /// The users a new `+b` mask binds when it is set: the channel's members it matches, and the one user
    /// whose nick it names exactly (so that `mal!*@*` or `$a:mal` set after mal left still binds mal).
    /// Other users are bound if they leave a matching nick while the ban stands
    /// ([`Self::bind_bans_before_rename`]); until then the mask itself holds them.
    fn users_matching(&self, channel: ChannelId, mask: &str) -> BTreeSet<UserId> {
        let named = crate::name::mask_exact_nick(mask)
            .and_then(|nick| self.nicks.get(&casefold(nick)))
            .copied();
        let members = self
            .channels
            .get(&channel)
            .into_iter()
            .flat_map(|ch| ch.members.keys().copied());
        members
            .chain(named)
            .filter(|u| {
                self.users
                    .get(u)
                    .is_some_and(|u| crate::name::ban_matches(mask, u))
            })
            .collect()
    }

    /// Binds `user` to every network channel ban that matches them now, before their nick changes, so that
    /// a new nick does not lift a ban. A scan of the network's channels with bans, once per nick change.
    fn bind_bans_before_rename(&mut self, user: UserId) {
        let (Some(network), Some(u)) = (self.network, self.users.get(&user)) else {
            return;
        };
        let Some(space) = self.spaces.get(&network) else {
            return;
        };
        let mut hits: Vec<(ChannelId, usize)> = Vec::new();
        for id in &space.channels {
            if let Some(ch) = self.channels.get(id) {
                for (i, ban) in ch.bans.iter().enumerate() {
                    if !ban.bound.contains(&user) && crate::name::ban_matches(&ban.mask, u) {
                        hits.push((*id, i));
                    }
                }
            }
        }
        for (id, i) in hits {
            if let Some(ban) = self.channels.get_mut(&id).and_then(|ch| ch.bans.get_mut(i)) {
                ban.bound.insert(user);
            }
        }
    }

    pub(crate) fn member_map(&self, channel: ChannelId) -> Option<&BTreeMap<UserId, MemberModes>> {
        let ch = self.channels.get(&channel)?;
        match (ch.kind, ch.parent) {
            (ChannelKind::Thread, Some(parent)) => self.channels.get(&parent).map(|p| &p.members),
            _ => Some(&ch.members),
        }
    }

    fn members_of(&self, channel: ChannelId) -> impl Iterator<Item = UserId> + '_ {
        self.member_map(channel)
            .into_iter()
            .flat_map(|m| m.keys().copied())
    }

    fn add_space_member(&mut self, space: crate::id::SpaceId, user: UserId, now: u64) {
        if let Some(sp) = self.spaces.get_mut(&space) {
            sp.members.entry(user).or_insert_with(|| SpaceMember {
                user,
                roles: BTreeSet::new(),
                nick: None,
                joined_at: now,
            });
        }
        if let Some(u) = self.users.get_mut(&user) {
            u.spaces.insert(space);
        }
    }

    fn remove_space_member(&mut self, space: crate::id::SpaceId, user: UserId) {
        let Some(sp) = self.spaces.get_mut(&space) else {
            return;
        };
        sp.members.remove(&user);
        let channels: Vec<ChannelId> = sp.channels.iter().copied().collect();
        for c in channels {
            self.remove_channel_member(c, user);
        }
        if let Some(u) = self.users.get_mut(&user) {
            u.spaces.remove(&space);
        }
    }

    fn add_channel_member(&mut self, channel: ChannelId, user: UserId, modes: MemberModes) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        ch.members.insert(user, modes);
        let explicit = ch.space.is_none() || ch.space == self.network;
        if explicit && let Some(u) = self.users.get_mut(&user) {
            u.channels.insert(channel);
        }
    }

    fn remove_channel_member(&mut self, channel: ChannelId, user: UserId) {
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.members.remove(&user);
        }
        if let Some(u) = self.users.get_mut(&user) {
            u.channels.remove(&channel);
        }
    }

    /// Removes a channel with its threads, messages, read states and invites.
    fn remove_channel(&mut self, channel: ChannelId) {
        let threads: Vec<ChannelId> = self
            .channels
            .values()
            .filter(|c| c.kind == ChannelKind::Thread && c.parent == Some(channel))
            .map(|c| c.id)
            .collect();
        for t in threads {
            self.remove_channel(t);
        }
        let Some(ch) = self.channels.remove(&channel) else {
            return;
        };
        for user in ch.members.keys() {
            if let Some(u) = self.users.get_mut(user) {
                u.channels.remove(&channel);
            }
        }
        for m in &ch.history {
            self.drop_message(*m);
        }
        if let Some(space) = ch.space {
            if let Some(sp) = self.spaces.get_mut(&space) {
                sp.channels.remove(&channel);
            }
            if Some(space) == self.network {
                let key = casefold(&ch.name);
                if self.channel_names.get(&key) == Some(&channel) {
                    self.channel_names.remove(&key);
                }
            }
        }
        if ch.kind == ChannelKind::Category {
            for c in self.channels.values_mut() {
                if c.parent == Some(channel) && c.kind != ChannelKind::Thread {
                    c.parent = None;
                }
            }
        }
        self.dms.retain(|_, c| *c != channel);
        self.read_states.retain(|(c, _), _| *c != channel);
        self.slow_mode_last.retain(|(c, _), _| *c != channel);
        self.retain_invites(|i| match i.target {
            crate::model::InviteTarget::Channel(c)
            | crate::model::InviteTarget::Space(_, Some(c)) => c != channel,
            crate::model::InviteTarget::Space(_, None) => true,
        });
    }

    /// Drops the invites `keep` refuses, with their expiry deadlines, so that `poll_timeout` does not wake
    /// the caller for invites that are gone.
    fn retain_invites(&mut self, keep: impl Fn(&crate::model::Invite) -> bool) {
        let deadlines = &mut self.invite_deadlines;
        self.invites.retain(|code, i| {
            let kept = keep(i);
            if !kept && let Some(at) = i.expires_at {
                deadlines.remove(&(at, code.clone()));
            }
            kept
        });
    }

    /// Adds a message to the core's index and the channel's retention window.
    fn record_message(
        &mut self,
        channel: ChannelId,
        id: MessageId,
        author: UserId,
        kind: crate::model::MessageKind,
        config: &Config,
    ) {
        self.observe(id.0);
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        ch.history.push_back(id);
        ch.last_message = Some(id);
        let mut evicted = None;
        if ch.history.len() > config.max_history.max(1) {
            evicted = ch.history.pop_front();
        }
        self.messages.insert(
            id,
            MessageRecord {
                channel,
                author,
                kind,
                thread: None,
                reply_to: None,
                pinned: false,
                edited_at: None,
                reactions: BTreeMap::new(),
            },
        );
        if let Some(old) = evicted {
            self.drop_message(old);
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.pins.retain(|p| *p != old);
            }
        }
    }

    /// A new user: its nick taken, a member of the network (as every user is).
    fn insert_user(&mut self, user: User) {
        let (id, created_at) = (user.id, user.created_at);
        self.nicks.insert(casefold(&user.nick), id);
        self.users.insert(id, user);
        if let Some(network) = self.network {
            self.add_space_member(network, id, created_at);
        }
    }

    /// A message leaves the core's index (deleted, evicted, or its channel removed).
    fn drop_message(&mut self, id: MessageId) {
        self.messages.remove(&id);
        if let Some(r) = self.origins.remove(&id) {
            self.by_origin.remove(&r);
        }
    }

    fn forget_message(&mut self, channel: ChannelId, message: MessageId) {
        self.drop_message(message);
        if let Some(ch) = self.channels.get_mut(&channel) {
            if let Ok(i) = ch.history.binary_search(&message) {
                ch.history.remove(i);
            }
            ch.pins.retain(|p| *p != message);
            if ch.last_message == Some(message) {
                ch.last_message = ch.history.back().copied();
            }
        }
        for ((c, _), rs) in self
            .read_states
            .range_mut((channel, UserId(crate::id::Snowflake::MIN))..)
        {
            if *c != channel {
                break;
            }
            rs.mentions.retain(|m| *m != message);
        }
    }
}

fn apply_mode(
    ch: &mut Channel,
    everyone: crate::id::RoleId,
    change: &ModeChange,
    by: UserId,
    now: u64,
    bound: BTreeSet<UserId>,
) {
    let set_deny = |ch: &mut Channel, bits: Permissions, on: bool| {
        let key = OverwriteTarget::Role(everyone);
        let (allow, mut deny) = ch
            .overwrites
            .get(&key)
            .copied()
            .unwrap_or((Permissions::empty(), Permissions::empty()));
        if on {
            deny |= bits;
        } else {
            deny &= !bits;
        }
        if allow.is_empty() && deny.is_empty() {
            ch.overwrites.remove(&key);
        } else {
            ch.overwrites.insert(key, (allow & !deny, deny));
        }
    };
    match change {
        ModeChange::Flag { letter: 'i', on } => set_deny(ch, Permissions::INVITE_ONLY, *on),
        ModeChange::Flag { letter: 'm', on } => set_deny(ch, Permissions::MODERATED, *on),
        ModeChange::Flag { letter: 'n', on } => ch.flags.no_external = *on,
        ModeChange::Flag { letter: 's', on } => ch.flags.secret = *on,
        ModeChange::Flag { letter: 't', on } => ch.flags.topic_lock = *on,
        ModeChange::Flag { .. } => {}
        ModeChange::Key(key) => ch.flags.key.clone_from(key),
        ModeChange::Limit(limit) => ch.flags.limit = *limit,
        ModeChange::Ban { mask, on: true } => {
            ch.bans.push(crate::model::Ban {
                mask: mask.clone(),
                by,
                at: now,
                bound,
            });
        }
        ModeChange::Ban { mask, on: false } => {
            ch.bans.retain(|b| !b.mask.eq_ignore_ascii_case(mask));
        }
        ModeChange::Op { user, on } => {
            if let Some(m) = ch.members.get_mut(user) {
                m.op = *on;
            }
        }
        ModeChange::Voice { user, on } => {
            if let Some(m) = ch.members.get_mut(user) {
                m.voice = *on;
            }
        }
    }
}
