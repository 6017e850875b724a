//! Spaces: the space itself, members, bans, roles, channels and categories, overwrites, invites.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

use crate::core::{Actor, Core, Created};
use crate::error::{Error, Field};
use crate::event::{Audience, ChannelInfo, EventKind, LeaveReason, SpaceInfo};
use crate::id::{ChannelId, InviteId, MessageId, RoleId, SpaceId, UserId};
use crate::model::{ChannelKind, Invite, InviteTarget, Role};
use crate::name::{check_label, check_text};
use crate::perm::{OverwriteTarget, Permissions};

/// Most spaces one user may own.
const SPACES_PER_OWNER: usize = 100;
/// Most channels (categories included) per space.
const CHANNELS_PER_SPACE: usize = 500;
/// Most roles per space.
const ROLES_PER_SPACE: usize = 250;
/// Longest invite lifetime: 7 days.
const INVITE_MAX_AGE_SECS: u32 = 7 * 24 * 3600;
/// Longest slow-mode interval: 6 hours, as Discord.
const SLOWMODE_MAX_SECS: u32 = 21_600;

impl Core {
    fn space_info(&self, space: SpaceId) -> SpaceInfo {
        let sp = &self.state.spaces[&space];
        SpaceInfo {
            id: sp.id,
            name: sp.name.clone(),
            description: sp.description.clone(),
            icon_url: sp.icon_url.clone(),
            owner: sp.owner,
            public: sp.public,
            network: sp.network,
        }
    }

    pub(crate) fn channel_info(&self, channel: ChannelId) -> ChannelInfo {
        let ch = self.chan(channel);
        ChannelInfo {
            id: ch.id,
            kind: ch.kind,
            space: ch.space,
            parent: ch.parent,
            name: ch.name.clone(),
            topic: ch.topic.clone(),
            position: ch.position,
            slowmode_secs: ch.slowmode_secs,
            flags: ch.flags.clone(),
            owner: ch.owner,
            starter: ch.starter,
            overwrites: ch
                .overwrites()
                .map(|o| (o.target, o.allow, o.deny))
                .collect(),
        }
    }

    /// A space the actor is in (the server's operator sees all).
    fn member_space(&self, actor: Actor, space: SpaceId) -> Result<(), Error> {
        let sp = self.state.spaces.get(&space).ok_or(Error::NoSuchSpace)?;
        if actor.system || sp.members.contains_key(&actor.user) {
            Ok(())
        } else {
            Err(Error::NoSuchSpace)
        }
    }

    /// A space other than the network, which is managed through JOIN and MODE instead.
    fn own_space(&self, actor: Actor, space: SpaceId) -> Result<(), Error> {
        self.member_space(actor, space)?;
        if self.state.spaces[&space].network {
            return Err(Error::NotSupported {
                what: "the network is managed with JOIN and MODE",
            });
        }
        Ok(())
    }

    fn check_space_name(name: &str) -> Result<(), Error> {
        check_label(Field::Name, name, 100)?;
        if name.trim().chars().count() < 2 {
            return Err(Error::InvalidInput {
                field: Field::Name,
                reason: "shorter than 2 characters",
            });
        }
        Ok(())
    }

    pub(crate) fn create_space(
        &mut self,
        actor: Actor,
        name: String,
        description: Option<String>,
        public: bool,
    ) -> Result<Option<Created>, Error> {
        let owner = &self.state.users[&actor.user];
        if owner.is_guest() {
            return Err(Error::NotSupported {
                what: "guests cannot own spaces; register first",
            });
        }
        Self::check_space_name(&name)?;
        let description = description.filter(|d| !d.is_empty());
        if let Some(d) = &description {
            check_text(Field::Description, d, 1024, false)?;
        }
        if self
            .state
            .spaces
            .values()
            .filter(|s| s.owner == actor.user)
            .count()
            >= SPACES_PER_OWNER
        {
            return Err(Error::LimitReached {
                what: "spaces per owner",
            });
        }
        let id = SpaceId(self.next_id());
        let info = SpaceInfo {
            id,
            name,
            description,
            icon_url: None,
            owner: actor.user,
            public,
            network: false,
        };
        self.emit(
            Audience::Space(id),
            EventKind::SpaceCreated {
                space: info,
                everyone: Permissions::DEFAULT_EVERYONE,
            },
        );
        self.emit(
            Audience::Space(id),
            EventKind::MemberJoined {
                space: id,
                user: actor.user,
                invite: None,
            },
        );
        let general = ChannelId(self.next_id());
        let info = ChannelInfo::new(general, ChannelKind::Text, Some(id), "general".to_owned());
        self.emit(
            Audience::Channel(general),
            EventKind::ChannelCreated {
                channel: info,
                members: Vec::new(),
            },
        );
        self.recompute_access(id, Some(general), None);
        Ok(Some(Created::Space(id)))
    }

    pub(crate) fn update_space(
        &mut self,
        actor: Actor,
        space: SpaceId,
        name: Option<String>,
        description: Option<Option<String>>,
        icon_url: Option<Option<String>>,
        public: Option<bool>,
    ) -> Result<Option<Created>, Error> {
        self.member_space(actor, space)?;
        self.require_space(actor, space, Permissions::MANAGE_GUILD)?;
        let mut info = self.space_info(space);
        if let Some(n) = name {
            Self::check_space_name(&n)?;
            info.name = n;
        }
        if let Some(d) = description {
            let d = d.filter(|d| !d.is_empty());
            if let Some(d) = &d {
                check_text(Field::Description, d, 1024, false)?;
            }
            info.description = d;
        }
        if let Some(i) = icon_url {
            let i = i.filter(|i| !i.is_empty());
            if let Some(i) = &i {
                check_text(Field::Url, i, 2048, true)?;
            }
            info.icon_url = i;
        }
        if let Some(p) = public {
            if info.network && !p {
                return Err(Error::NotSupported {
                    what: "the network is public",
                });
            }
            info.public = p;
        }
        if info == self.space_info(space) {
            return Ok(None);
        }
        self.emit(
            Audience::Space(space),
            EventKind::SpaceUpdated { space: info },
        );
        Ok(None)
    }

    pub(crate) fn delete_space(
        &mut self,
        actor: Actor,
        space: SpaceId,
    ) -> Result<Option<Created>, Error> {
        self.own_space(actor, space)?;
        if !actor.system && self.state.spaces[&space].owner != actor.user {
            return Err(Error::NotOwner);
        }
        let members: Vec<UserId> = self.state.spaces[&space].members.keys().copied().collect();
        self.emit(Audience::Users(members), EventKind::SpaceDeleted { space });
        Ok(None)
    }

    pub(crate) fn join_space(
        &mut self,
        actor: Actor,
        space: SpaceId,
    ) -> Result<Option<Created>, Error> {
        let sp = self.state.spaces.get(&space).ok_or(Error::NoSuchSpace)?;
        if sp.members.contains_key(&actor.user) {
            return Err(Error::AlreadyMember);
        }
        if !sp.public {
            return Err(Error::NoSuchSpace);
        }
        if sp.bans.contains_key(&actor.user) {
            return Err(Error::Banned);
        }
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user joins no spaces",
            });
        }
        self.add_member(space, actor.user, None);
        Ok(None)
    }

    fn add_member(&mut self, space: SpaceId, user: UserId, invite: Option<String>) {
        self.emit(
            Audience::Space(space),
            EventKind::MemberJoined {
                space,
                user,
                invite,
            },
        );
        self.recompute_access(space, None, Some(user));
    }

    pub(crate) fn leave_space(
        &mut self,
        actor: Actor,
        space: SpaceId,
    ) -> Result<Option<Created>, Error> {
        self.own_space(actor, space)?;
        if self.state.spaces[&space].owner == actor.user {
            return Err(Error::NotSupported {
                what: "the owner cannot leave; delete the space instead",
            });
        }
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user is in no spaces",
            });
        }
        self.emit(
            Audience::SpaceAnd(space, actor.user),
            EventKind::MemberLeft {
                space,
                user: actor.user,
                reason: LeaveReason::Left,
            },
        );
        Ok(None)
    }

    /// Checks that the actor outranks `target` in the space's role hierarchy and that `target` is not its owner.
    fn check_above(&self, actor: Actor, space: SpaceId, target: UserId) -> Result<(), Error> {
        let sp = &self.state.spaces[&space];
        if sp.owner == target {
            return Err(Error::RoleHierarchy);
        }
        if self.rank(actor, space) <= Self::member_rank(sp, target) {
            return Err(Error::RoleHierarchy);
        }
        Ok(())
    }

    pub(crate) fn kick_member(
        &mut self,
        actor: Actor,
        space: SpaceId,
        user: UserId,
        reason: Option<String>,
    ) -> Result<Option<Created>, Error> {
        self.own_space(actor, space)?;
        self.require_space(actor, space, Permissions::KICK_MEMBERS)?;
        if !self.state.spaces[&space].members.contains_key(&user) {
            return Err(Error::NoSuchNick);
        }
        self.check_above(actor, space, user)?;
        let reason = reason.filter(|r| !r.is_empty());
        if let Some(r) = &reason {
            check_text(Field::Reason, r, 512, true)?;
        }
        self.emit(
            Audience::SpaceAnd(space, user),
            EventKind::MemberLeft {
                space,
                user,
                reason: LeaveReason::Kicked {
                    by: actor.user,
                    reason,
                },
            },
        );
        Ok(None)
    }

    pub(crate) fn ban_member(
        &mut self,
        actor: Actor,
        space: SpaceId,
        user: UserId,
        reason: Option<String>,
    ) -> Result<Option<Created>, Error> {
        self.own_space(actor, space)?;
        self.require_space(actor, space, Permissions::BAN_MEMBERS)?;
        self.resolve_user(&crate::command::UserRef::Id(user))?;
        if user == actor.user {
            return Err(Error::NotSupported {
                what: "you cannot ban yourself",
            });
        }
        if self.state.spaces[&space].members.contains_key(&user) {
            self.check_above(actor, space, user)?;
        }
        if self.state.spaces[&space].bans.contains_key(&user) {
            return Ok(None);
        }
        let reason = reason.filter(|r| !r.is_empty());
        if let Some(r) = &reason {
            check_text(Field::Reason, r, 512, true)?;
        }
        self.emit(
            Audience::SpaceAnd(space, user),
            EventKind::SpaceBanned {
                space,
                user,
                by: actor.user,
                reason,
            },
        );
        Ok(None)
    }

    pub(crate) fn unban_member(
        &mut self,
        actor: Actor,
        space: SpaceId,
        user: UserId,
    ) -> Result<Option<Created>, Error> {
        self.own_space(actor, space)?;
        self.require_space(actor, space, Permissions::BAN_MEMBERS)?;
        if !self.state.spaces[&space].bans.contains_key(&user) {
            return Err(Error::NoSuchNick);
        }
        self.emit(
            Audience::Space(space),
            EventKind::SpaceUnbanned { space, user },
        );
        Ok(None)
    }

    /// Checks the actor may grant `perms` (they hold every bit, or they are the owner or an administrator).
    fn check_grantable(
        &self,
        actor: Actor,
        space: SpaceId,
        perms: Permissions,
    ) -> Result<(), Error> {
        let mine = if actor.system {
            Permissions::all()
        } else {
            self.space_permissions(actor.user, space)
        };
        if mine.contains(perms) {
            Ok(())
        } else {
            Err(Error::PrivilegesNeeded {
                permission: perms - mine,
            })
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_role(
        &mut self,
        actor: Actor,
        space: SpaceId,
        name: String,
        permissions: Permissions,
        color: u32,
        hoist: bool,
        mentionable: bool,
    ) -> Result<Option<Created>, Error> {
        self.member_space(actor, space)?;
        self.require_space(actor, space, Permissions::MANAGE_ROLES)?;
        check_label(Field::Name, &name, 100)?;
        Self::check_color(color)?;
        self.check_grantable(actor, space, permissions)?;
        if self.state.spaces[&space].roles.len() >= ROLES_PER_SPACE {
            return Err(Error::LimitReached {
                what: "roles per space",
            });
        }
        let id = RoleId(self.next_id());
        let role = Role {
            id,
            name,
            permissions,
            color,
            hoist,
            mentionable,
            position: 1,
        };
        self.emit(
            Audience::Space(space),
            EventKind::RoleUpserted {
                space,
                role,
                created: true,
            },
        );
        Ok(Some(Created::Role(id)))
    }

    fn check_color(color: u32) -> Result<(), Error> {
        if color > 0xff_ff_ff {
            return Err(Error::InvalidInput {
                field: Field::Color,
                reason: "not an RGB color",
            });
        }
        Ok(())
    }

    /// Checks the actor outranks a role (the owner and administrators of the network's operator aside).
    fn check_role_below(&self, actor: Actor, space: SpaceId, role: RoleId) -> Result<(), Error> {
        let r = self.state.spaces[&space]
            .roles
            .get(&role)
            .ok_or(Error::NoSuchRole)?;
        if self.rank(actor, space) <= Self::role_rank(r) {
            return Err(Error::RoleHierarchy);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_role(
        &mut self,
        actor: Actor,
        space: SpaceId,
        role: RoleId,
        name: Option<String>,
        permissions: Option<Permissions>,
        color: Option<u32>,
        hoist: Option<bool>,
        mentionable: Option<bool>,
        position: Option<i32>,
    ) -> Result<Option<Created>, Error> {
        self.member_space(actor, space)?;
        self.require_space(actor, space, Permissions::MANAGE_ROLES)?;
        let everyone = role == space.everyone_role();
        if !everyone {
            self.check_role_below(actor, space, role)?;
        }
        let mut r = self.state.spaces[&space]
            .roles
            .get(&role)
            .ok_or(Error::NoSuchRole)?
            .clone();
        if let Some(n) = name {
            if everyone {
                return Err(Error::NotSupported {
                    what: "@everyone keeps its name",
                });
            }
            check_label(Field::Name, &n, 100)?;
            r.name = n;
        }
        if let Some(p) = permissions {
            self.check_grantable(actor, space, p)?;
            r.permissions = p;
        }
        if let Some(c) = color {
            Self::check_color(c)?;
            r.color = c;
        }
        if let Some(h) = hoist {
            r.hoist = h;
        }
        if let Some(m) = mentionable {
            r.mentionable = m;
        }
        if let Some(p) = position {
            if everyone {
                return Err(Error::NotSupported {
                    what: "@everyone stays at position 0",
                });
            }
            if p < 1 || (p, 0) >= self.rank(actor, space) {
                return Err(Error::InvalidInput {
                    field: Field::Position,
                    reason: "must stay below your highest role",
                });
            }
            r.position = p;
        }
        if self.state.spaces[&space].roles[&role] == r {
            return Ok(None);
        }
        self.emit(
            Audience::Space(space),
            EventKind::RoleUpserted {
                space,
                role: r,
                created: false,
            },
        );
        self.recompute_access(space, None, None);
        Ok(None)
    }

    pub(crate) fn delete_role(
        &mut self,
        actor: Actor,
        space: SpaceId,
        role: RoleId,
    ) -> Result<Option<Created>, Error> {
        self.member_space(actor, space)?;
        self.require_space(actor, space, Permissions::MANAGE_ROLES)?;
        if role == space.everyone_role() {
            return Err(Error::NotSupported {
                what: "@everyone cannot be deleted",
            });
        }
        self.check_role_below(actor, space, role)?;
        self.emit(
            Audience::Space(space),
            EventKind::RoleDeleted { space, role },
        );
        self.recompute_access(space, None, None);
        Ok(None)
    }

    pub(crate) fn set_member_roles(
        &mut self,
        actor: Actor,
        space: SpaceId,
        user: UserId,
        roles: Vec<RoleId>,
    ) -> Result<Option<Created>, Error> {
        self.member_space(actor, space)?;
        self.require_space(actor, space, Permissions::MANAGE_ROLES)?;
        let sp = &self.state.spaces[&space];
        let member = sp.members.get(&user).ok_or(Error::NoSuchNick)?;
        let mut roles = roles;
        roles.sort_unstable();
        roles.dedup();
        if roles.len() > ROLES_PER_SPACE {
            return Err(Error::InvalidInput {
                field: Field::List,
                reason: "too many roles",
            });
        }
        for r in &roles {
            if *r == space.everyone_role() || !sp.roles.contains_key(r) {
                return Err(Error::NoSuchRole);
            }
        }
        let old: Vec<RoleId> = member.roles.iter().copied().collect();
        if old == roles {
            return Ok(None);
        }
        for changed in roles
            .iter()
            .filter(|r| !old.contains(r))
            .chain(old.iter().filter(|r| !roles.contains(r)))
        {
            self.check_role_below(actor, space, *changed)?;
        }
        let nick = member.nick.clone();
        self.emit(
            Audience::Space(space),
            EventKind::MemberUpdated {
                space,
                user,
                roles,
                nick,
            },
        );
        self.recompute_access(space, None, Some(user));
        Ok(None)
    }

    pub(crate) fn set_member_nick(
        &mut self,
        actor: Actor,
        space: SpaceId,
        user: UserId,
        nick: Option<String>,
    ) -> Result<Option<Created>, Error> {
        self.member_space(actor, space)?;
        let member = self.state.spaces[&space]
            .members
            .get(&user)
            .ok_or(Error::NoSuchNick)?;
        if user == actor.user {
            self.require_space(actor, space, Permissions::CHANGE_NICKNAME)?;
        } else {
            self.require_space(actor, space, Permissions::MANAGE_NICKNAMES)?;
            self.check_above(actor, space, user)?;
        }
        let nick = nick.filter(|n| !n.is_empty());
        if let Some(n) = &nick {
            check_label(Field::DisplayName, n, 32)?;
        }
        if member.nick == nick {
            return Ok(None);
        }
        let roles = member.roles.iter().copied().collect();
        self.emit(
            Audience::Space(space),
            EventKind::MemberUpdated {
                space,
                user,
                roles,
                nick,
            },
        );
        Ok(None)
    }

    fn check_category(&self, space: SpaceId, parent: Option<ChannelId>) -> Result<(), Error> {
        if let Some(p) = parent {
            let ok = self
                .state
                .channels
                .get(&p)
                .is_some_and(|c| c.kind == ChannelKind::Category && c.space == Some(space));
            if !ok {
                return Err(Error::NoSuchChannel);
            }
        }
        Ok(())
    }

    fn check_overwrite_target(&self, space: SpaceId, target: OverwriteTarget) -> Result<(), Error> {
        let sp = &self.state.spaces[&space];
        match target {
            OverwriteTarget::Role(r) if sp.roles.contains_key(&r) => Ok(()),
            OverwriteTarget::Role(_) => Err(Error::NoSuchRole),
            OverwriteTarget::Member(u) if self.state.users.get(&u).is_some_and(|u| !u.released) => {
                Ok(())
            }
            OverwriteTarget::Member(_) => Err(Error::NoSuchNick),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_channel(
        &mut self,
        actor: Actor,
        space: SpaceId,
        name: String,
        kind: ChannelKind,
        parent: Option<ChannelId>,
        topic: Option<String>,
        overwrites: Vec<(OverwriteTarget, Permissions, Permissions)>,
    ) -> Result<Option<Created>, Error> {
        self.own_space(actor, space)?;
        self.require_space(actor, space, Permissions::MANAGE_CHANNELS)?;
        if !matches!(kind, ChannelKind::Text | ChannelKind::Category) {
            return Err(Error::NotSupported {
                what: "spaces hold text channels and categories",
            });
        }
        check_label(Field::Name, &name, 100)?;
        if kind == ChannelKind::Category && parent.is_some() {
            return Err(Error::NotSupported {
                what: "categories do not nest",
            });
        }
        self.check_category(space, parent)?;
        let topic = topic.filter(|t| !t.is_empty());
        if let Some(t) = &topic {
            check_text(Field::Topic, t, crate::handle::channel::TOPIC_MAX, false)?;
        }
        if overwrites.len() > 100 {
            return Err(Error::InvalidInput {
                field: Field::List,
                reason: "more than 100 overwrites",
            });
        }
        for (target, allow, deny) in &overwrites {
            self.check_overwrite_target(space, *target)?;
            self.check_grantable(actor, space, *allow | *deny)?;
        }
        if self.state.spaces[&space].channels.len() >= CHANNELS_PER_SPACE {
            return Err(Error::LimitReached {
                what: "channels per space",
            });
        }
        let id = ChannelId(self.next_id());
        let position = self.state.spaces[&space].channels.len() as i32;
        let info = ChannelInfo {
            parent,
            topic: topic.map(|text| crate::model::Topic {
                text,
                by: actor.user,
                at: self.now,
            }),
            position,
            overwrites,
            ..ChannelInfo::new(id, kind, Some(space), name)
        };
        let audience = if kind == ChannelKind::Category {
            Audience::Space(space)
        } else {
            Audience::Channel(id)
        };
        self.emit(
            audience,
            EventKind::ChannelCreated {
                channel: info,
                members: Vec::new(),
            },
        );
        self.recompute_access(space, Some(id), None);
        Ok(Some(Created::Channel(id)))
    }

    fn channel_audience(&self, channel: ChannelId) -> Audience {
        let ch = self.chan(channel);
        match (ch.kind, ch.space) {
            (ChannelKind::Category, Some(space)) => Audience::Space(space),
            _ => Audience::Channel(channel),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_channel(
        &mut self,
        actor: Actor,
        channel: ChannelId,
        name: Option<String>,
        topic: Option<Option<String>>,
        position: Option<i32>,
        parent: Option<Option<ChannelId>>,
        slowmode_secs: Option<u32>,
    ) -> Result<Option<Created>, Error> {
        let ch = self
            .state
            .channels
            .get(&channel)
            .ok_or(Error::NoSuchChannel)?;
        match ch.kind {
            ChannelKind::Dm => {
                return Err(Error::NotSupported {
                    what: "DMs have no settings",
                });
            }
            ChannelKind::GroupDm => {
                if !actor.system && !ch.members.contains_key(&actor.user) {
                    return Err(Error::NotOnChannel);
                }
            }
            _ => {
                if !actor.system
                    && !self
                        .channel_permissions(actor.user, channel)
                        .contains(Permissions::VIEW_CHANNEL)
                {
                    return Err(Error::NoSuchChannel);
                }
                self.require_channel(actor, channel, Permissions::MANAGE_CHANNELS)?;
            }
        }
        let network = ch.space.is_some() && ch.space == self.state.network;
        let mut info = self.channel_info(channel);
        if let Some(n) = name {
            if network && ch.kind == ChannelKind::Text {
                return Err(Error::NotSupported {
                    what: "network channels keep their name",
                });
            }
            check_label(Field::Name, &n, 100)?;
            info.name = n;
        }
        if let Some(t) = topic {
            let t = t.filter(|t| !t.is_empty());
            if let Some(t) = &t {
                check_text(Field::Topic, t, crate::handle::channel::TOPIC_MAX, false)?;
            }
            info.topic = t.map(|text| crate::model::Topic {
                text,
                by: actor.user,
                at: self.now,
            });
        }
        if let Some(p) = position {
            if !(0..=10_000).contains(&p) {
                return Err(Error::InvalidInput {
                    field: Field::Position,
                    reason: "0 to 10000",
                });
            }
            info.position = p;
        }
        if let Some(p) = parent {
            let space = ch.space.ok_or(Error::NotSupported {
                what: "DMs have no category",
            })?;
            if ch.kind != ChannelKind::Text || network {
                return Err(Error::NotSupported {
                    what: "only space text channels have a category",
                });
            }
            self.check_category(space, p)?;
            info.parent = p;
        }
        if let Some(s) = slowmode_secs {
            if s > SLOWMODE_MAX_SECS {
                return Err(Error::InvalidInput {
                    field: Field::SlowMode,
                    reason: "0 to 21600 seconds",
                });
            }
            if ch.space.is_none() {
                return Err(Error::NotSupported {
                    what: "DMs have no slow mode",
                });
            }
            info.slowmode_secs = s;
        }
        if info == self.channel_info(channel) {
            return Ok(None);
        }
        let audience = self.channel_audience(channel);
        self.emit(audience, EventKind::ChannelUpdated { channel: info });
        Ok(None)
    }

    pub(crate) fn delete_channel(
        &mut self,
        actor: Actor,
        channel: ChannelId,
    ) -> Result<Option<Created>, Error> {
        let ch = self
            .state
            .channels
            .get(&channel)
            .ok_or(Error::NoSuchChannel)?;
        match ch.kind {
            ChannelKind::Dm | ChannelKind::GroupDm => {
                return Err(Error::NotSupported {
                    what: "leave DMs instead",
                });
            }
            ChannelKind::Thread => {
                if ch.owner != Some(actor.user) {
                    self.require_channel(actor, channel, Permissions::MANAGE_THREADS)?;
                }
            }
            ChannelKind::Text if ch.space.is_some() && ch.space == self.state.network => {
                // A network channel lives while it has members (SPEC 3); its operators' MANAGE_CHANNELS does
                // not stretch to removing everyone at once. The server's operators may.
                self.require_space(actor, self.network_id(), Permissions::ADMINISTRATOR)?;
            }
            _ => {
                self.require_channel(actor, channel, Permissions::MANAGE_CHANNELS)?;
            }
        }
        // Everyone who saw the channel hears it is gone; the state after deletion no longer says who.
        let mut audience: Vec<UserId> = self.members(channel).map(|(u, _)| u).collect();
        if ch.kind == ChannelKind::Category
            && let Some(space) = ch.space
        {
            audience = self.state.spaces[&space].members.keys().copied().collect();
            let children: Vec<ChannelId> = self
                .state
                .channels
                .values()
                .filter(|c| c.parent == Some(channel) && c.kind != ChannelKind::Thread)
                .map(|c| c.id)
                .collect();
            for child in children {
                let mut info = self.channel_info(child);
                info.parent = None;
                let aud = self.channel_audience(child);
                self.emit(aud, EventKind::ChannelUpdated { channel: info });
            }
        }
        self.emit(
            Audience::users(audience),
            EventKind::ChannelDeleted { channel },
        );
        Ok(None)
    }

    pub(crate) fn set_overwrite(
        &mut self,
        actor: Actor,
        channel: ChannelId,
        target: OverwriteTarget,
        allow: Permissions,
        deny: Permissions,
    ) -> Result<Option<Created>, Error> {
        let ch = self
            .state
            .channels
            .get(&channel)
            .ok_or(Error::NoSuchChannel)?;
        let space = match (ch.kind, ch.space) {
            (ChannelKind::Text | ChannelKind::Category, Some(space)) => space,
            _ => {
                return Err(Error::NotSupported {
                    what: "overwrites belong to space channels",
                });
            }
        };
        if !actor.system
            && !self
                .channel_permissions(actor.user, channel)
                .contains(Permissions::VIEW_CHANNEL)
        {
            return Err(Error::NoSuchChannel);
        }
        self.require_channel(actor, channel, Permissions::MANAGE_ROLES)?;
        if !allow.intersection(deny).is_empty() {
            return Err(Error::InvalidInput {
                field: Field::Permissions,
                reason: "a bit is both allowed and denied",
            });
        }
        self.check_overwrite_target(space, target)?;
        let old = ch
            .overwrites
            .get(&target)
            .copied()
            .unwrap_or((Permissions::empty(), Permissions::empty()));
        // Only bits the actor holds in the channel may change.
        let changed = (old.0 ^ allow) | (old.1 ^ deny);
        let mine = if actor.system {
            Permissions::all()
        } else {
            self.channel_permissions(actor.user, channel)
        };
        if !mine.contains(Permissions::ADMINISTRATOR) && !mine.contains(changed) {
            return Err(Error::PrivilegesNeeded {
                permission: changed - mine,
            });
        }
        if old == (allow, deny) && ch.overwrites.contains_key(&target) {
            return Ok(None);
        }
        let audience = self.channel_audience(channel);
        self.emit(
            audience,
            EventKind::OverwriteSet {
                channel,
                target,
                allow,
                deny,
            },
        );
        self.recompute_access(space, Some(channel), None);
        Ok(None)
    }

    pub(crate) fn delete_overwrite(
        &mut self,
        actor: Actor,
        channel: ChannelId,
        target: OverwriteTarget,
    ) -> Result<Option<Created>, Error> {
        let ch = self
            .state
            .channels
            .get(&channel)
            .ok_or(Error::NoSuchChannel)?;
        let Some(space) = ch
            .space
            .filter(|_| matches!(ch.kind, ChannelKind::Text | ChannelKind::Category))
        else {
            return Err(Error::NotSupported {
                what: "overwrites belong to space channels",
            });
        };
        self.require_channel(actor, channel, Permissions::MANAGE_ROLES)?;
        let Some((allow, deny)) = ch.overwrites.get(&target).copied() else {
            return Ok(None);
        };
        let mine = if actor.system {
            Permissions::all()
        } else {
            self.channel_permissions(actor.user, channel)
        };
        if !mine.contains(Permissions::ADMINISTRATOR) && !mine.contains(allow | deny) {
            return Err(Error::PrivilegesNeeded {
                permission: (allow | deny) - mine,
            });
        }
        let audience = self.channel_audience(channel);
        self.emit(audience, EventKind::OverwriteDeleted { channel, target });
        self.recompute_access(space, Some(channel), None);
        Ok(None)
    }

    /// An invite code: a keyed hash of the invite's id, in base 62. Unguessable without the seed, and the
    /// same on replay.
    fn invite_code(&self, id: InviteId) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut h = SipHasher13::new_with_keys(self.config.invite_seed, 0x6368_6174_642d_696e);
        h.write_u64(id.get());
        let mut n = h.finish();
        let mut code = String::with_capacity(10);
        for _ in 0..10 {
            code.push(ALPHABET[(n % 62) as usize] as char);
            n /= 62;
        }
        code
    }

    pub(crate) fn create_invite(
        &mut self,
        actor: Actor,
        channel: ChannelId,
        max_uses: u32,
        max_age_secs: u32,
    ) -> Result<Option<Created>, Error> {
        let ch = self
            .state
            .channels
            .get(&channel)
            .ok_or(Error::NoSuchChannel)?;
        let space = ch.space.ok_or(Error::NotSupported {
            what: "DMs have no invites",
        })?;
        if ch.kind != ChannelKind::Text {
            return Err(Error::NotSupported {
                what: "invites lead to text channels",
            });
        }
        if !actor.system
            && !self
                .channel_permissions(actor.user, channel)
                .contains(Permissions::VIEW_CHANNEL)
        {
            return Err(Error::NoSuchChannel);
        }
        let network = Some(space) == self.state.network;
        let target = if network {
            if !actor.system && !ch.members.contains_key(&actor.user) {
                return Err(Error::NotOnChannel);
            }
            let needed = if ch.is_invite_only() {
                Permissions::CREATE_INSTANT_INVITE | Permissions::MANAGE_CHANNELS
            } else {
                Permissions::CREATE_INSTANT_INVITE
            };
            self.require_channel(actor, channel, needed)?;
            InviteTarget::Channel(channel)
        } else {
            self.require_channel(actor, channel, Permissions::CREATE_INSTANT_INVITE)?;
            InviteTarget::Space(space, Some(channel))
        };
        if max_uses > 100 {
            return Err(Error::InvalidInput {
                field: Field::Invite,
                reason: "max uses 0 to 100",
            });
        }
        if max_age_secs > INVITE_MAX_AGE_SECS {
            return Err(Error::InvalidInput {
                field: Field::Invite,
                reason: "max age 0 to 604800 seconds",
            });
        }
        let id = InviteId(self.next_id());
        let code = self.invite_code(id);
        if self.state.invites.contains_key(&code) {
            // 62^10 codes make this practically impossible; refuse rather than overwrite.
            return Err(Error::LimitReached {
                what: "invite codes",
            });
        }
        let invite = Invite {
            id,
            code: code.clone(),
            target,
            creator: actor.user,
            max_uses,
            uses: 0,
            expires_at: (max_age_secs > 0)
                .then(|| self.now.saturating_add(u64::from(max_age_secs) * 1000)),
            created_at: self.now,
        };
        self.emit(
            Audience::User(actor.user),
            EventKind::InviteCreated { invite },
        );
        Ok(Some(Created::Invite(code)))
    }

    pub(crate) fn revoke_invite(
        &mut self,
        actor: Actor,
        code: String,
    ) -> Result<Option<Created>, Error> {
        let inv = self.state.invites.get(&code).ok_or(Error::NoSuchInvite)?;
        if inv.creator != actor.user && !actor.system {
            match inv.target {
                InviteTarget::Space(space, _) => {
                    self.require_space(actor, space, Permissions::MANAGE_GUILD)?;
                }
                InviteTarget::Channel(c) => {
                    self.require_channel(actor, c, Permissions::MANAGE_CHANNELS)?;
                }
            }
        }
        let audience = Audience::users(vec![inv.creator, actor.user]);
        self.emit(audience, EventKind::InviteDeleted { code });
        Ok(None)
    }

    pub(crate) fn use_invite(
        &mut self,
        actor: Actor,
        code: String,
    ) -> Result<Option<Created>, Error> {
        let inv = self.state.invites.get(&code).ok_or(Error::NoSuchInvite)?;
        if inv.expires_at.is_some_and(|at| at <= self.now) {
            return Err(Error::NoSuchInvite);
        }
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user uses no invites",
            });
        }
        let creator = inv.creator;
        let used_up = inv.max_uses > 0 && inv.uses + 1 >= inv.max_uses;
        match inv.target {
            InviteTarget::Space(space, _) => {
                let sp = &self.state.spaces[&space];
                if sp.members.contains_key(&actor.user) {
                    return Err(Error::AlreadyMember);
                }
                if sp.bans.contains_key(&actor.user) {
                    return Err(Error::Banned);
                }
                self.emit(
                    Audience::users(vec![creator, actor.user]),
                    EventKind::InviteUsed {
                        code: code.clone(),
                        user: actor.user,
                    },
                );
                self.add_member(space, actor.user, Some(code.clone()));
                if used_up {
                    self.emit(Audience::User(creator), EventKind::InviteDeleted { code });
                }
                Ok(Some(Created::Space(space)))
            }
            InviteTarget::Channel(channel) => {
                if self.is_member(actor.user, channel) {
                    return Err(Error::UserOnChannel);
                }
                let on = self.state.users[&actor.user]
                    .channels
                    .iter()
                    .filter(|c| {
                        self.state
                            .channels
                            .get(c)
                            .is_some_and(|ch| ch.space.is_some())
                    })
                    .count();
                if on >= crate::handle::channel::CHANNELS_PER_USER {
                    return Err(Error::LimitReached {
                        what: "channels per user",
                    });
                }
                self.emit(
                    Audience::users(vec![creator, actor.user]),
                    EventKind::InviteUsed {
                        code: code.clone(),
                        user: actor.user,
                    },
                );
                let message = MessageId(self.next_id());
                self.emit(
                    Audience::Channel(channel),
                    EventKind::Joined {
                        channel,
                        user: actor.user,
                        message,
                        modes: Default::default(),
                    },
                );
                if used_up {
                    self.emit(Audience::User(creator), EventKind::InviteDeleted { code });
                }
                Ok(Some(Created::Channel(channel)))
            }
        }
    }
}
