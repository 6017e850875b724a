//! The directory: names of users, channels and spaces as of the last commit, for transports rendering events.
//!
//! Events refer to everything by id, and wire formats want names (`"from":"alice","to":"#rust"`). Asking the
//! writer for every name would put a round trip on the path of every delivery, so the engine keeps this small
//! copy of the naming facts beside the streams: built from the core at start-up, then advanced by the same
//! committed events the streams get, before they get them. A reader that holds an event therefore always
//! finds the names it needs. Entries of deleted channels and released users stay, so old events still render.
//!
//! It also keeps each space member's card (roles, space nick, join time), which Discord's message objects
//! carry as `member`; unlike names, a member's card goes when they leave the space, since a message by someone
//! no longer a member carries none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chat_core::{
    ChannelId, ChannelKind, Core, Event, EventKind, RoleId, SpaceId, UnixMillis, UserId,
};

/// What a transport needs to name a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCard {
    /// The current nick (or the last one, for a released guest).
    pub nick: Arc<str>,
    /// The display name, if set.
    pub display_name: Option<Arc<str>>,
    /// The avatar url, if set.
    pub avatar_url: Option<Arc<str>>,
    /// A bot account.
    pub bot: bool,
    /// The server's own user.
    pub system: bool,
    /// A guest (no password): gone when its session ends.
    pub guest: bool,
}

/// What a transport needs to name a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelCard {
    /// Its name (`#name` for network channels; DMs have none worth showing).
    pub name: Arc<str>,
    /// Its kind.
    pub kind: ChannelKind,
    /// Its space (none for DMs).
    pub space: Option<SpaceId>,
    /// Its parent (a thread's channel, a channel's category).
    pub parent: Option<ChannelId>,
    /// The two users of a DM (for naming the other side); empty for other kinds.
    pub dm: Vec<UserId>,
    /// Deleted since: kept so that older events still render.
    pub deleted: bool,
}

/// What a transport needs to name a space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceCard {
    /// Its name.
    pub name: Arc<str>,
    /// The built-in network space.
    pub network: bool,
}

/// What a transport needs to show a user as a member of a space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberCard {
    /// Their roles besides @everyone, in id order.
    pub roles: Vec<RoleId>,
    /// Their nickname in this space, if set.
    pub nick: Option<Arc<str>>,
    /// When they joined (the `ts` of the event that made them a member).
    pub joined_at: UnixMillis,
}

/// Names of everything, as of the last committed event (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Directory {
    users: HashMap<UserId, UserCard>,
    channels: HashMap<ChannelId, ChannelCard>,
    spaces: HashMap<SpaceId, SpaceCard>,
    /// Each space's members.
    members: HashMap<SpaceId, HashMap<UserId, MemberCard>>,
    /// The network space, which every user who is not released belongs to.
    network: Option<SpaceId>,
    /// Released users (guests gone): a network created later does not count them.
    released: HashSet<UserId>,
}

impl Directory {
    /// The channels `kind` removes, as known before it is applied: a deleted channel with its threads, a
    /// deleted space's channels with theirs. Empty for any other event.
    pub(crate) fn removed_channels(&self, kind: &EventKind) -> Vec<ChannelId> {
        let mut gone: Vec<ChannelId> = match kind {
            EventKind::ChannelDeleted { channel } => vec![*channel],
            EventKind::SpaceDeleted { space } => self
                .channels
                .iter()
                .filter(|(_, card)| card.space == Some(*space))
                .map(|(id, _)| *id)
                .collect(),
            _ => return Vec::new(),
        };
        let threads: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(id, card)| {
                card.kind == ChannelKind::Thread
                    && card.parent.is_some_and(|p| gone.contains(&p))
                    && !gone.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        gone.extend(threads);
        gone
    }

    /// Builds the directory from a core's state.
    pub(crate) fn from_core(core: &Core) -> Self {
        let mut dir = Self::default();
        for u in core.users() {
            dir.users.insert(
                u.id,
                UserCard {
                    nick: u.nick.as_str().into(),
                    display_name: u.display_name.as_deref().map(Into::into),
                    avatar_url: u.avatar_url.as_deref().map(Into::into),
                    bot: u.bot,
                    system: u.system,
                    guest: u.is_guest(),
                },
            );
            if u.released {
                dir.released.insert(u.id);
            }
        }
        for c in core.channels() {
            let dm = if c.kind == ChannelKind::Dm {
                core.members(c.id).map(|(u, _)| u).collect()
            } else {
                Vec::new()
            };
            dir.channels.insert(
                c.id,
                ChannelCard {
                    name: c.name.as_str().into(),
                    kind: c.kind,
                    space: c.space,
                    parent: c.parent,
                    dm,
                    deleted: false,
                },
            );
        }
        for s in core.spaces() {
            dir.spaces.insert(
                s.id,
                SpaceCard {
                    name: s.name.as_str().into(),
                    network: s.network,
                },
            );
            if s.network {
                dir.network = Some(s.id);
            }
            let everyone = s.id.everyone_role();
            let members = s
                .members()
                .map(|m| {
                    let card = MemberCard {
                        roles: m.roles.iter().copied().filter(|r| *r != everyone).collect(),
                        nick: m.nick.as_deref().map(Into::into),
                        joined_at: m.joined_at,
                    };
                    (m.user, card)
                })
                .collect();
            dir.members.insert(s.id, members);
        }
        dir
    }

    fn join(&mut self, space: SpaceId, user: UserId, at: UnixMillis) {
        self.members
            .entry(space)
            .or_default()
            .entry(user)
            .or_insert_with(|| MemberCard {
                roles: Vec::new(),
                nick: None,
                joined_at: at,
            });
    }

    fn leave(&mut self, space: SpaceId, user: UserId) {
        if let Some(members) = self.members.get_mut(&space) {
            members.remove(&user);
        }
    }

    /// Whether an event changes any name (most do not, and then the directory's lock is not taken).
    pub(crate) fn touches(event: &Event) -> bool {
        matches!(
            event.kind,
            EventKind::UserCreated { .. }
                | EventKind::RemoteUserCreated { .. }
                | EventKind::NickChanged { .. }
                | EventKind::PasswordChanged { .. }
                | EventKind::ProfileUpdated { .. }
                | EventKind::ChannelCreated { .. }
                | EventKind::ChannelUpdated { .. }
                | EventKind::ChannelDeleted { .. }
                | EventKind::SpaceCreated { .. }
                | EventKind::SpaceUpdated { .. }
                | EventKind::SpaceDeleted { .. }
                | EventKind::MemberJoined { .. }
                | EventKind::MemberUpdated { .. }
                | EventKind::MemberLeft { .. }
                | EventKind::SpaceBanned { .. }
                | EventKind::RoleDeleted { .. }
                | EventKind::Quit { released: true, .. }
        )
    }

    /// Advances the directory by one committed event.
    pub(crate) fn apply(&mut self, event: &Event) {
        match &event.kind {
            EventKind::UserCreated {
                user,
                nick,
                password_hash,
                bot,
                system,
            } => {
                self.users.insert(
                    *user,
                    UserCard {
                        nick: nick.as_str().into(),
                        display_name: None,
                        avatar_url: None,
                        bot: *bot,
                        system: *system,
                        guest: password_hash.is_none() && !*bot && !*system,
                    },
                );
                // Every user is a member of the network (as the core's state has it).
                if let Some(network) = self.network {
                    self.join(network, *user, event.ts);
                }
            }
            EventKind::RemoteUserCreated { user, nick, .. } => {
                self.users.insert(
                    *user,
                    UserCard {
                        nick: nick.as_str().into(),
                        display_name: None,
                        avatar_url: None,
                        bot: false,
                        system: false,
                        guest: false,
                    },
                );
                if let Some(network) = self.network {
                    self.join(network, *user, event.ts);
                }
            }
            EventKind::PasswordChanged { user, .. } => {
                if let Some(card) = self.users.get_mut(user) {
                    card.guest = false;
                }
            }
            EventKind::NickChanged { user, new, .. } => {
                if let Some(card) = self.users.get_mut(user) {
                    card.nick = new.as_str().into();
                }
            }
            EventKind::ProfileUpdated {
                user,
                display_name,
                avatar_url,
                ..
            } => {
                if let Some(card) = self.users.get_mut(user) {
                    card.display_name = display_name.as_deref().map(Into::into);
                    card.avatar_url = avatar_url.as_deref().map(Into::into);
                }
            }
            EventKind::ChannelCreated { channel, members } => {
                let dm = if channel.kind == ChannelKind::Dm {
                    members.clone()
                } else {
                    Vec::new()
                };
                self.channels.insert(
                    channel.id,
                    ChannelCard {
                        name: channel.name.as_str().into(),
                        kind: channel.kind,
                        space: channel.space,
                        parent: channel.parent,
                        dm,
                        deleted: false,
                    },
                );
            }
            EventKind::ChannelUpdated { channel } => {
                if let Some(card) = self.channels.get_mut(&channel.id) {
                    card.name = channel.name.as_str().into();
                    card.parent = channel.parent;
                }
            }
            EventKind::ChannelDeleted { channel } => {
                if let Some(card) = self.channels.get_mut(channel) {
                    card.deleted = true;
                }
            }
            EventKind::SpaceCreated { space, .. } | EventKind::SpaceUpdated { space } => {
                self.spaces.insert(
                    space.id,
                    SpaceCard {
                        name: space.name.as_str().into(),
                        network: space.network,
                    },
                );
                if matches!(event.kind, EventKind::SpaceCreated { .. }) {
                    self.members.entry(space.id).or_default();
                    if space.network {
                        self.network = Some(space.id);
                        let users: Vec<UserId> = self
                            .users
                            .keys()
                            .filter(|u| !self.released.contains(u))
                            .copied()
                            .collect();
                        for u in users {
                            self.join(space.id, u, event.ts);
                        }
                    }
                }
            }
            EventKind::SpaceDeleted { space } => {
                self.members.remove(space);
            }
            EventKind::MemberJoined { space, user, .. } => self.join(*space, *user, event.ts),
            EventKind::MemberLeft { space, user, .. }
            | EventKind::SpaceBanned { space, user, .. } => self.leave(*space, *user),
            EventKind::MemberUpdated {
                space,
                user,
                roles,
                nick,
            } => {
                let everyone = space.everyone_role();
                if let Some(card) = self
                    .members
                    .get_mut(space)
                    .and_then(|members| members.get_mut(user))
                {
                    let mut roles: Vec<RoleId> =
                        roles.iter().copied().filter(|r| *r != everyone).collect();
                    roles.sort_unstable();
                    roles.dedup();
                    card.roles = roles;
                    card.nick = nick.as_deref().map(Into::into);
                }
            }
            EventKind::RoleDeleted { space, role } => {
                if let Some(members) = self.members.get_mut(space) {
                    for card in members.values_mut() {
                        card.roles.retain(|r| r != role);
                    }
                }
            }
            EventKind::Quit {
                user,
                released: true,
                ..
            } => {
                // A released guest leaves every space.
                self.released.insert(*user);
                for members in self.members.values_mut() {
                    members.remove(user);
                }
            }
            _ => {}
        }
    }

    /// A user's card.
    pub fn user(&self, id: UserId) -> Option<&UserCard> {
        self.users.get(&id)
    }

    /// A user's nick, or the id in decimal when the user is unknown (which only a bug would cause).
    pub fn nick(&self, id: UserId) -> Arc<str> {
        match self.users.get(&id) {
            Some(card) => Arc::clone(&card.nick),
            None => id.to_string().into(),
        }
    }

    /// A channel's card.
    pub fn channel(&self, id: ChannelId) -> Option<&ChannelCard> {
        self.channels.get(&id)
    }

    /// A space's card.
    pub fn space(&self, id: SpaceId) -> Option<&SpaceCard> {
        self.spaces.get(&id)
    }

    /// A user's card as a member of a space; `None` when they are not a member (or never were).
    pub fn member(&self, space: SpaceId, user: UserId) -> Option<&MemberCard> {
        self.members
            .get(&space)
            .and_then(|members| members.get(&user))
    }
}

#[cfg(test)]
mod tests {
    use chat_core::{Audience, LeaveReason};

    use super::*;

    fn at(ts: UnixMillis, kind: EventKind) -> Event {
        Event {
            seq: 1,
            ts,
            audience: Audience::Nobody,
            kind,
        }
    }

    fn id<T>(raw: u64, wrap: fn(u64) -> Option<T>) -> T {
        wrap(raw).expect("non-zero")
    }

    #[test]
    fn member_cards_follow_joins_updates_leaves_bans_and_deletions() {
        let space: SpaceId = id(100, SpaceId::from_raw);
        let other: SpaceId = id(200, SpaceId::from_raw);
        let (alice, bob): (UserId, UserId) = (id(1, UserId::from_raw), id(2, UserId::from_raw));
        let (r1, r2): (RoleId, RoleId) = (id(11, RoleId::from_raw), id(12, RoleId::from_raw));
        let mut dir = Directory::default();
        let apply = |dir: &mut Directory, ev: Event| {
            assert!(Directory::touches(&ev), "{:?}", ev.kind);
            dir.apply(&ev);
        };

        apply(
            &mut dir,
            at(
                1_000,
                EventKind::MemberJoined {
                    space,
                    user: alice,
                    invite: None,
                },
            ),
        );
        let card = dir.member(space, alice).expect("a member");
        assert_eq!(
            (card.roles.as_slice(), card.nick.as_deref(), card.joined_at),
            (&[][..], None, 1_000)
        );
        assert!(dir.member(space, bob).is_none());
        assert!(dir.member(other, alice).is_none());

        // Roles are kept without @everyone, in id order; a second join does not reset the card.
        apply(
            &mut dir,
            at(
                2_000,
                EventKind::MemberUpdated {
                    space,
                    user: alice,
                    roles: vec![r2, space.everyone_role(), r1],
                    nick: Some("al".into()),
                },
            ),
        );
        apply(
            &mut dir,
            at(
                2_500,
                EventKind::MemberJoined {
                    space,
                    user: alice,
                    invite: None,
                },
            ),
        );
        let card = dir.member(space, alice).expect("a member");
        assert_eq!(card.roles, vec![r1, r2]);
        assert_eq!(card.nick.as_deref(), Some("al"));
        assert_eq!(card.joined_at, 1_000);

        // A deleted role is stripped from every member.
        apply(
            &mut dir,
            at(3_000, EventKind::RoleDeleted { space, role: r1 }),
        );
        assert_eq!(dir.member(space, alice).expect("a member").roles, vec![r2]);

        // Leaving and being banned remove the card; joining again starts a fresh one.
        apply(
            &mut dir,
            at(
                4_000,
                EventKind::MemberLeft {
                    space,
                    user: alice,
                    reason: LeaveReason::Left,
                },
            ),
        );
        assert!(dir.member(space, alice).is_none());
        apply(
            &mut dir,
            at(
                5_000,
                EventKind::MemberJoined {
                    space,
                    user: alice,
                    invite: None,
                },
            ),
        );
        let card = dir.member(space, alice).expect("a member again");
        assert_eq!((card.roles.len(), card.joined_at), (0, 5_000));
        apply(
            &mut dir,
            at(
                6_000,
                EventKind::SpaceBanned {
                    space,
                    user: alice,
                    by: bob,
                    reason: None,
                },
            ),
        );
        assert!(dir.member(space, alice).is_none());

        // Deleting a space drops its members only.
        apply(
            &mut dir,
            at(
                7_000,
                EventKind::MemberJoined {
                    space,
                    user: bob,
                    invite: None,
                },
            ),
        );
        apply(
            &mut dir,
            at(
                7_000,
                EventKind::MemberJoined {
                    space: other,
                    user: bob,
                    invite: None,
                },
            ),
        );
        apply(&mut dir, at(8_000, EventKind::SpaceDeleted { space }));
        assert!(dir.member(space, bob).is_none());
        assert!(dir.member(other, bob).is_some());

        // A released guest leaves every space; a plain quit leaves none.
        let quit = |released| EventKind::Quit {
            user: bob,
            reason: None,
            notices: Vec::new(),
            released,
        };
        assert!(!Directory::touches(&at(9_000, quit(false))));
        dir.apply(&at(9_000, quit(false)));
        assert!(dir.member(other, bob).is_some());
        apply(&mut dir, at(9_500, quit(true)));
        assert!(dir.member(other, bob).is_none());
    }

    #[test]
    fn member_cards_are_built_from_the_core() {
        let core = Core::new(chat_core::Config::default(), 1_700_000_000_000);
        let dir = Directory::from_core(&core);
        let network = core.network();
        let system = core.system_user();
        let card = dir
            .member(network, system)
            .expect("the server's user is in the network");
        assert!(card.roles.iter().all(|r| *r != network.everyone_role()));
        assert_eq!(dir.network, Some(network));
    }
}
