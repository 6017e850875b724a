//! Who may do what (permissions, with IRC modes folded in as overwrites) and who sees what (audiences,
//! recipients, derived channel membership).

use std::collections::BTreeMap;

use crate::core::{Actor, Core};
use crate::error::Error;
use crate::event::{Audience, Event, EventKind};
use crate::id::{ChannelId, SpaceId, UserId};
use crate::model::{ChannelKind, MemberModes, Space};
use crate::perm::{OverwriteTarget, Permissions};

/// What members of a DM or group DM may do there.
const DM_PERMISSIONS: Permissions = Permissions::VIEW_CHANNEL
    .union(Permissions::SEND_MESSAGES)
    .union(Permissions::READ_MESSAGE_HISTORY)
    .union(Permissions::ADD_REACTIONS)
    .union(Permissions::ATTACH_FILES)
    .union(Permissions::EMBED_LINKS)
    .union(Permissions::PIN_MESSAGES)
    .union(Permissions::CREATE_PUBLIC_THREADS)
    .union(Permissions::SEND_MESSAGES_IN_THREADS);

impl Core {
    /// A user's permissions in a space before channel overwrites: the owner and ADMINISTRATOR get all.
    pub fn space_permissions(&self, user: UserId, space: SpaceId) -> Permissions {
        let Some(sp) = self.state.spaces.get(&space) else {
            return Permissions::empty();
        };
        Self::base_permissions(sp, user)
    }

    fn base_permissions(sp: &Space, user: UserId) -> Permissions {
        if sp.owner == user {
            return Permissions::all();
        }
        let Some(member) = sp.members.get(&user) else {
            return Permissions::empty();
        };
        let mut perms = sp
            .roles
            .get(&sp.id.everyone_role())
            .map_or(Permissions::empty(), |r| r.permissions);
        for role in &member.roles {
            if let Some(r) = sp.roles.get(role) {
                perms |= r.permissions;
            }
        }
        if perms.contains(Permissions::ADMINISTRATOR) {
            Permissions::all()
        } else {
            perms
        }
    }

    /// A user's permissions in a channel, by Discord's algorithm with the IRC modes folded in:
    /// space permissions; then the @everyone overwrite (`+m`, `+i` live there); then role overwrites; then an
    /// invite (`VIEW`); then `+b` masks that match the user's nick; then the member layer, which adds what
    /// membership (`VIEW`), `+v` and `+o` grant on network channels to any stored member overwrite.
    /// Without VIEW_CHANNEL nothing else is left. Threads take their parent's permissions.
    pub fn channel_permissions(&self, user: UserId, channel: ChannelId) -> Permissions {
        let Some(ch) = self.state.channels.get(&channel) else {
            return Permissions::empty();
        };
        let ch = match (ch.kind, ch.parent) {
            (ChannelKind::Thread, Some(parent)) => match self.state.channels.get(&parent) {
                Some(p) => p,
                None => return Permissions::empty(),
            },
            _ => ch,
        };
        let Some(space_id) = ch.space else {
            return if ch.members.contains_key(&user) {
                DM_PERMISSIONS
            } else {
                Permissions::empty()
            };
        };
        let Some(sp) = self.state.spaces.get(&space_id) else {
            return Permissions::empty();
        };
        let mut perms = Self::base_permissions(sp, user);
        if perms.contains(Permissions::ADMINISTRATOR) {
            return Permissions::all();
        }
        if !sp.members.contains_key(&user) {
            return Permissions::empty();
        }
        let (allow, deny) = ch.everyone_overwrite(space_id);
        perms = (perms & !deny) | allow;
        let (mut role_allow, mut role_deny) = (Permissions::empty(), Permissions::empty());
        if let Some(member) = sp.members.get(&user) {
            for role in &member.roles {
                if let Some((a, d)) = ch.overwrites.get(&OverwriteTarget::Role(*role)) {
                    role_allow |= *a;
                    role_deny |= *d;
                }
            }
        }
        perms = (perms & !role_deny) | role_allow;
        // An invite opens a `+i` channel but does not lift a ban: it sits below the `+b` layer, so an operator
        // lets a banned user back in by removing the ban (or giving them voice once they are on).
        if sp.network && ch.invited.contains(&user) {
            perms |= Permissions::VIEW_CHANNEL;
        }
        if !ch.bans.is_empty()
            && let Some(u) = self.state.users.get(&user)
            && ch.bans.iter().any(|b| b.holds(u))
        {
            perms &= !Permissions::BANNED;
        }
        let (mut allow, deny) = ch
            .overwrites
            .get(&OverwriteTarget::Member(user))
            .copied()
            .unwrap_or((Permissions::empty(), Permissions::empty()));
        if sp.network
            && let Some(modes) = ch.members.get(&user)
        {
            allow |= Permissions::JOINED;
            if modes.voice {
                allow |= Permissions::VOICE;
            }
            if modes.op {
                allow |= Permissions::OPERATOR;
            }
        }
        perms = (perms & !deny) | allow;
        if perms.contains(Permissions::VIEW_CHANNEL) {
            perms
        } else {
            Permissions::empty()
        }
    }

    /// Whether the actor has `needed` in the channel (the server's operator always has).
    pub(crate) fn require_channel(
        &self,
        actor: Actor,
        channel: ChannelId,
        needed: Permissions,
    ) -> Result<Permissions, Error> {
        if actor.system {
            return Ok(Permissions::all());
        }
        let perms = self.channel_permissions(actor.user, channel);
        if perms.contains(needed) {
            Ok(perms)
        } else {
            Err(Error::PrivilegesNeeded {
                permission: needed - perms,
            })
        }
    }

    /// Whether the actor has `needed` in the space (the server's operator always has).
    pub(crate) fn require_space(
        &self,
        actor: Actor,
        space: SpaceId,
        needed: Permissions,
    ) -> Result<Permissions, Error> {
        if actor.system {
            return Ok(Permissions::all());
        }
        let perms = self.space_permissions(actor.user, space);
        if perms.contains(needed) {
            Ok(perms)
        } else {
            Err(Error::PrivilegesNeeded {
                permission: needed - perms,
            })
        }
    }

    /// The actor's rank in a space's role hierarchy: the owner and the server's operator outrank everyone.
    pub(crate) fn rank(&self, actor: Actor, space: SpaceId) -> (i32, i64) {
        let Some(sp) = self.state.spaces.get(&space) else {
            return (i32::MIN, 0);
        };
        if actor.system || sp.owner == actor.user {
            return (i32::MAX, 0);
        }
        Self::member_rank(sp, actor.user)
    }

    /// A member's highest role as (position, negated id): Discord breaks position ties by the older role.
    pub(crate) fn member_rank(sp: &Space, user: UserId) -> (i32, i64) {
        if sp.owner == user {
            return (i32::MAX, 0);
        }
        sp.members
            .get(&user)
            .into_iter()
            .flat_map(|m| m.roles.iter())
            .filter_map(|r| sp.roles.get(r))
            .map(Self::role_rank)
            .max()
            .unwrap_or((0, i64::MIN))
    }

    pub(crate) fn role_rank(role: &crate::model::Role) -> (i32, i64) {
        // Ids are below 2^63 for any date before the year 2084, so the cast keeps the order.
        (role.position, -(role.id.get() as i64))
    }

    /// The audience of an event a user caused on a channel: its members, plus the actor when acting from
    /// outside (a `-n` message, a server operator's MODE or deletion), so that their own devices see it.
    pub(crate) fn channel_echo(&self, actor: Actor, channel: ChannelId) -> Audience {
        if actor.system || self.is_member(actor.user, channel) {
            Audience::Channel(channel)
        } else {
            Audience::ChannelAnd(channel, actor.user)
        }
    }

    /// Users who should hear about a change to `user` (nick, quit, presence, profile): the user, everyone on a
    /// channel they are on explicitly (network channels, DMs, group DMs), and the members of the spaces they
    /// are in besides the network (as Discord tells guild members). Sorted, deduplicated.
    /// Who hears `user`'s presence change: [`Core::peers`] but only through channels and spaces of at most
    /// `presence_fanout_max` members.
    pub(crate) fn presence_peers(&self, user: UserId) -> Vec<UserId> {
        let max = self.config.presence_fanout_max;
        let mut peers = vec![user];
        if let Some(u) = self.state.users.get(&user) {
            for ch in &u.channels {
                if let Some(members) = self.member_map(*ch).filter(|m| m.len() <= max) {
                    peers.extend(members.keys().copied());
                }
            }
            for space in u.spaces.iter().filter(|s| Some(**s) != self.state.network) {
                if let Some(sp) = self
                    .state
                    .spaces
                    .get(space)
                    .filter(|s| s.members.len() <= max)
                {
                    peers.extend(sp.members.keys().copied());
                }
            }
        }
        peers.sort();
        peers.dedup();
        peers
    }

    pub(crate) fn peers(&self, user: UserId) -> Vec<UserId> {
        // Each channel's member keys are already sorted, so the concatenation is a few sorted runs that the
        // stable sort merges in O(n log k); that is several times faster than inserting into a BTreeSet, which
        // dominated a nick change seen in many channels.
        let mut peers = vec![user];
        if let Some(u) = self.state.users.get(&user) {
            for ch in &u.channels {
                if let Some(members) = self.member_map(*ch) {
                    peers.extend(members.keys().copied());
                }
            }
            // Everyone is in the network, so telling its members would tell every user: IRC never does.
            for space in u.spaces.iter().filter(|s| Some(**s) != self.state.network) {
                if let Some(sp) = self.state.spaces.get(space) {
                    peers.extend(sp.members.keys().copied());
                }
            }
        }
        peers.sort();
        peers.dedup();
        peers
    }

    /// Who receives an event in their stream, without scanning all users: a channel's member list, a space's
    /// member list, or the users the event names. Valid right after the input that produced the event.
    pub fn recipients<'a>(&'a self, event: &'a Event) -> Recipients<'a> {
        let inner = match &event.audience {
            Audience::Nobody => Inner::Empty,
            Audience::User(u) => Inner::One(Some(*u)),
            Audience::Users(users) => Inner::Slice(users.iter()),
            Audience::Channel(c) => match self.member_map(*c) {
                Some(m) => Inner::Channel(m.keys(), None, m),
                None => Inner::Empty,
            },
            Audience::ChannelAnd(c, u) => match self.member_map(*c) {
                Some(m) => Inner::Channel(m.keys(), Some(*u), m),
                None => Inner::One(Some(*u)),
            },
            Audience::Space(s) => match self.state.spaces.get(s) {
                Some(sp) => Inner::Space(sp.members.keys(), None, &sp.members),
                None => Inner::Empty,
            },
            Audience::SpaceAnd(s, u) => match self.state.spaces.get(s) {
                Some(sp) => Inner::Space(sp.members.keys(), Some(*u), &sp.members),
                None => Inner::One(Some(*u)),
            },
        };
        Recipients { inner }
    }

    /// The visibility rule of the stream: may `user` see `event`? Equal to membership of
    /// [`Core::recipients`], answered in O(log n). Valid right after the input that produced the event.
    pub fn may_see(&self, user: UserId, event: &Event) -> bool {
        match &event.audience {
            Audience::Nobody => false,
            Audience::User(u) => *u == user,
            Audience::Users(users) => users.binary_search(&user).is_ok(),
            Audience::Channel(c) => self.is_member(user, *c),
            Audience::ChannelAnd(c, u) => *u == user || self.is_member(user, *c),
            Audience::Space(s) => self
                .state
                .spaces
                .get(s)
                .is_some_and(|sp| sp.members.contains_key(&user)),
            Audience::SpaceAnd(s, u) => {
                *u == user
                    || self
                        .state
                        .spaces
                        .get(s)
                        .is_some_and(|sp| sp.members.contains_key(&user))
            }
        }
    }

    /// Recomputes derived membership of a space's text channels (members who may view them) and emits a
    /// [`EventKind::ChannelAccess`] for each channel whose membership changed. `only` narrows the work to one
    /// channel or one user.
    pub(crate) fn recompute_access(
        &mut self,
        space: SpaceId,
        channel: Option<ChannelId>,
        user: Option<UserId>,
    ) {
        let Some(sp) = self.state.spaces.get(&space) else {
            return;
        };
        if sp.network {
            return;
        }
        let channels: Vec<ChannelId> = match channel {
            Some(c) => vec![c],
            None => sp.channels.iter().copied().collect(),
        };
        let users: Vec<UserId> = match user {
            Some(u) => vec![u],
            None => sp.members.keys().copied().collect(),
        };
        let mut changes = Vec::new();
        for c in channels {
            let Some(ch) = self.state.channels.get(&c) else {
                continue;
            };
            if ch.kind != ChannelKind::Text {
                continue;
            }
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            for &u in &users {
                let may = self.state.spaces[&space].members.contains_key(&u)
                    && self
                        .channel_permissions(u, c)
                        .contains(Permissions::VIEW_CHANNEL);
                match (may, ch.members.contains_key(&u)) {
                    (true, false) => added.push(u),
                    (false, true) => removed.push(u),
                    _ => {}
                }
            }
            if user.is_none() {
                // MemberLeft drops leavers from every channel; this only guards against a stale entry.
                let members = &self.state.spaces[&space].members;
                removed.extend(
                    ch.members
                        .keys()
                        .filter(|u| !members.contains_key(u))
                        .copied(),
                );
            }
            if !added.is_empty() || !removed.is_empty() {
                changes.push((c, added, removed));
            }
        }
        for (channel, added, removed) in changes {
            let mut who: Vec<UserId> = added.iter().chain(&removed).copied().collect();
            who.sort_unstable();
            self.emit(
                Audience::Users(who),
                EventKind::ChannelAccess {
                    channel,
                    added,
                    removed,
                },
            );
        }
    }
}

/// The recipients of one event; see [`Core::recipients`].
#[derive(Debug)]
pub struct Recipients<'a> {
    inner: Inner<'a>,
}

#[derive(Debug)]
enum Inner<'a> {
    Empty,
    One(Option<UserId>),
    Slice(std::slice::Iter<'a, UserId>),
    Channel(
        std::collections::btree_map::Keys<'a, UserId, MemberModes>,
        Option<UserId>,
        &'a BTreeMap<UserId, MemberModes>,
    ),
    Space(
        std::collections::btree_map::Keys<'a, UserId, crate::model::SpaceMember>,
        Option<UserId>,
        &'a BTreeMap<UserId, crate::model::SpaceMember>,
    ),
}

impl Iterator for Recipients<'_> {
    type Item = UserId;

    fn next(&mut self) -> Option<UserId> {
        match &mut self.inner {
            Inner::Empty => None,
            Inner::One(u) => u.take(),
            Inner::Slice(it) => it.next().copied(),
            Inner::Channel(keys, extra, map) => keys
                .next()
                .copied()
                .or_else(|| extra.take().filter(|u| !map.contains_key(u))),
            Inner::Space(keys, extra, map) => keys
                .next()
                .copied()
                .or_else(|| extra.take().filter(|u| !map.contains_key(u))),
        }
    }
}
