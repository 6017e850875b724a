//! The directory: names of users, channels and spaces as of the last commit, for transports rendering events.
//!
//! Events refer to everything by id, and wire formats want names (`"from":"alice","to":"#rust"`). Asking the
//! writer for every name would put a round trip on the path of every delivery, so the engine keeps this small
//! copy of the naming facts beside the streams: built from the core at start-up, then advanced by the same
//! committed events the streams get, before they get them. A reader that holds an event therefore always
//! finds the names it needs. Entries of deleted channels and released users stay, so old events still render.

use std::collections::HashMap;
use std::sync::Arc;

use chat_core::{ChannelId, ChannelKind, Core, Event, EventKind, SpaceId, UserId};

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

/// Names of everything, as of the last committed event (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Directory {
    users: HashMap<UserId, UserCard>,
    channels: HashMap<ChannelId, ChannelCard>,
    spaces: HashMap<SpaceId, SpaceCard>,
}

impl Directory {
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
                },
            );
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
        }
        dir
    }

    /// Whether an event changes any name (most do not, and then the directory's lock is not taken).
    pub(crate) fn touches(event: &Event) -> bool {
        matches!(
            event.kind,
            EventKind::UserCreated { .. }
                | EventKind::NickChanged { .. }
                | EventKind::ProfileUpdated { .. }
                | EventKind::ChannelCreated { .. }
                | EventKind::ChannelUpdated { .. }
                | EventKind::ChannelDeleted { .. }
                | EventKind::SpaceCreated { .. }
                | EventKind::SpaceUpdated { .. }
        )
    }

    /// Advances the directory by one committed event.
    pub(crate) fn apply(&mut self, event: &Event) {
        match &event.kind {
            EventKind::UserCreated {
                user,
                nick,
                bot,
                system,
                ..
            } => {
                self.users.insert(
                    *user,
                    UserCard {
                        nick: nick.as_str().into(),
                        display_name: None,
                        avatar_url: None,
                        bot: *bot,
                        system: *system,
                    },
                );
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
}
