//! Users, clients and sessions: register, login, logout, quit, nick, profile, away, presence, idle expiry.

use crate::command::NewClient;
use crate::core::{Actor, Core, Created};
use crate::error::{Error, Field};
use crate::event::{Audience, ClientEnd, EventKind};
use crate::id::{ChannelId, ClientId, MessageId, UserId};
use crate::model::{Activity, ChannelKind, Status};
use crate::name::{casefold, check_label, check_text, validate_nick};

/// Longest away message, quit or part reason, in bytes.
pub(crate) const REASON_MAX: usize = 512;
/// Most activities a user shows at once.
const MAX_ACTIVITIES: usize = 5;
/// Longest activity name or state, in characters (Discord's limit).
const ACTIVITY_TEXT_MAX: usize = 128;

impl Core {
    fn check_new_client(&self, client: &NewClient) -> Result<(), Error> {
        check_text(Field::ClientName, &client.name, 64, true)?;
        if self.state.tokens.contains_key(&client.token_hash) {
            return Err(Error::InvalidInput {
                field: Field::ClientName,
                reason: "token hash already in use",
            });
        }
        Ok(())
    }

    fn check_password_hash(hash: &str) -> Result<(), Error> {
        if hash.is_empty()
            || hash.len() > 512
            || !hash.is_ascii()
            || hash.chars().any(|c| c.is_ascii_control())
        {
            return Err(Error::InvalidInput {
                field: Field::PasswordHash,
                reason: "not a password hash",
            });
        }
        Ok(())
    }

    pub(crate) fn register(
        &mut self,
        actor: Actor,
        nick: String,
        password_hash: Option<String>,
        bot: bool,
        client: Option<NewClient>,
    ) -> Result<Option<Created>, Error> {
        validate_nick(&nick)?;
        if self.state.nicks.contains_key(&casefold(&nick)) {
            return Err(Error::NickInUse);
        }
        if let Some(hash) = &password_hash {
            Self::check_password_hash(hash)?;
        }
        match &client {
            Some(c) => self.check_new_client(c)?,
            // A guest or anonymous sign-up without a client could never act or be expired.
            None if !actor.system => return Err(Error::NeedMoreParams { what: "client" }),
            None if password_hash.is_none() && !bot => {
                return Err(Error::NeedMoreParams { what: "client" });
            }
            None => {}
        }
        let user = UserId(self.next_id());
        self.emit(
            Audience::User(user),
            EventKind::UserCreated {
                user,
                nick,
                password_hash,
                bot,
                system: false,
            },
        );
        // Creating the user made it a member of the network. The network's bots hear of it, as a guild's
        // bots hear of a new member; people do not (IRC never announces a new user, and telling every user of
        // every new one would cost O(users²)). The creation event itself stays with the user: it carries the
        // password hash.
        let network = self.network_id();
        self.emit(
            self.network_news(user),
            EventKind::MemberJoined {
                space: network,
                user,
                invite: None,
            },
        );
        let client = client.map(|c| self.add_client(user, c));
        Ok(Some(Created::User { user, client }))
    }

    fn add_client(&mut self, user: UserId, client: NewClient) -> ClientId {
        let id = ClientId(self.next_id());
        self.emit(
            Audience::User(user),
            EventKind::ClientCreated {
                client: id,
                user,
                name: client.name,
                token_hash: client.token_hash,
            },
        );
        id
    }

    /// Adds a client to a session. Guests may have several devices too (SPEC: a guest's *last* client ends
    /// its session), so the core does not refuse them; the engine decides who may ask (a password for an
    /// account, an existing client's token for a guest).
    pub(crate) fn login(
        &mut self,
        _actor: Actor,
        user: UserId,
        client: NewClient,
    ) -> Result<Option<Created>, Error> {
        let u = self.state.users.get(&user).ok_or(Error::NoSuchNick)?;
        if u.released || u.system {
            return Err(Error::NoSuchNick);
        }
        self.check_new_client(&client)?;
        let id = self.add_client(user, client);
        Ok(Some(Created::Client(id)))
    }

    pub(crate) fn logout(&mut self, actor: Actor) -> Result<Option<Created>, Error> {
        let Some(client) = actor.client else {
            return Err(Error::NoSuchClient);
        };
        self.drop_client(client, ClientEnd::Logout);
        Ok(None)
    }

    /// Removes a client; a guest left without clients quits and is released.
    fn drop_client(&mut self, client: ClientId, reason: ClientEnd) {
        let Some(user) = self.state.clients.get(&client).map(|c| c.user) else {
            return;
        };
        let was_online = self.presence(user);
        self.emit(
            Audience::User(user),
            EventKind::ClientRemoved {
                client,
                user,
                reason,
            },
        );
        let guest = self
            .state
            .users
            .get(&user)
            .is_some_and(|u| u.is_guest() && u.clients.is_empty());
        if guest {
            let reason = match reason {
                ClientEnd::Expired => Some("Session expired".to_owned()),
                _ => Some("Logged out".to_owned()),
            };
            self.end_session(user, reason, true);
        } else {
            self.presence_changed(user, was_online);
        }
    }

    pub(crate) fn expire_client(&mut self, client: ClientId) {
        self.drop_client(client, ClientEnd::Expired);
    }

    pub(crate) fn set_password(
        &mut self,
        actor: Actor,
        user: UserId,
        hash: String,
    ) -> Result<Option<Created>, Error> {
        if !actor.system && actor.user != user {
            return Err(Error::NotOwner);
        }
        let u = self.state.users.get(&user).ok_or(Error::NoSuchNick)?;
        if u.released || u.system {
            return Err(Error::NoSuchNick);
        }
        Self::check_password_hash(&hash)?;
        self.emit(
            Audience::User(user),
            EventKind::PasswordChanged {
                user,
                password_hash: hash,
            },
        );
        Ok(None)
    }

    pub(crate) fn quit(
        &mut self,
        actor: Actor,
        reason: Option<String>,
    ) -> Result<Option<Created>, Error> {
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user cannot quit",
            });
        }
        let reason = reason.filter(|r| !r.is_empty());
        if let Some(r) = &reason {
            check_text(Field::Reason, r, REASON_MAX, true)?;
        }
        let guest = self
            .state
            .users
            .get(&actor.user)
            .is_some_and(|u| u.is_guest());
        self.end_session(actor.user, reason, guest);
        Ok(None)
    }

    /// A QUIT: leaves every network channel (one system message in each), and for a released guest also
    /// drops its clients, frees its nick and leaves every space. Empty network channels are removed.
    pub(crate) fn end_session(&mut self, user: UserId, reason: Option<String>, release: bool) {
        let Some(u) = self.state.users.get(&user) else {
            return;
        };
        let channels: Vec<ChannelId> = u
            .channels
            .iter()
            .copied()
            .filter(|c| {
                self.state
                    .channels
                    .get(c)
                    .is_some_and(|ch| ch.space.is_some())
            })
            .collect();
        let clients: Vec<ClientId> = if release {
            u.clients.iter().copied().collect()
        } else {
            Vec::new()
        };
        let audience = Audience::Users(self.peers(user));
        if release {
            // Members of the spaces a released guest was in, the network included, see it leave (as a guild
            // sees a member go); its channels also see the QUIT.
            let spaces: Vec<_> = u.spaces.iter().copied().collect();
            let network = self.network_id();
            for space in spaces {
                let audience = if space == network {
                    self.network_news(user)
                } else {
                    Audience::SpaceAnd(space, user)
                };
                self.emit(
                    audience,
                    EventKind::MemberLeft {
                        space,
                        user,
                        reason: crate::event::LeaveReason::Gone,
                    },
                );
            }
        }
        for client in clients {
            self.emit(
                Audience::User(user),
                EventKind::ClientRemoved {
                    client,
                    user,
                    reason: ClientEnd::Revoked,
                },
            );
        }
        let notices: Vec<(ChannelId, MessageId)> = channels
            .iter()
            .map(|c| (*c, MessageId(self.next_id())))
            .collect();
        self.emit(
            audience,
            EventKind::Quit {
                user,
                reason,
                notices,
                released: release,
            },
        );
        self.remove_empty_channels(&channels);
    }

    pub(crate) fn remove_empty_channels(&mut self, channels: &[ChannelId]) {
        for c in channels {
            let empty = self.state.channels.get(c).and_then(|ch| {
                (ch.kind == ChannelKind::Text
                    && ch.space == self.state.network
                    && ch.members.is_empty())
                .then_some(ch.flags.secret)
            });
            // The network learns that a channel it could see is gone; a secret one was never shown to it.
            let audience = match (empty, self.state.network) {
                (Some(false), Some(network)) => Audience::Space(network),
                (Some(_), _) => Audience::Nobody,
                (None, _) => continue,
            };
            self.emit(audience, EventKind::ChannelDeleted { channel: *c });
        }
    }

    pub(crate) fn connect(&mut self, actor: Actor, up: bool) -> Result<Option<Created>, Error> {
        let Some(client) = actor.client else {
            return Err(Error::NoSuchClient);
        };
        let before = self.presence(actor.user);
        // Connection counts are live-only: they are not events and are not replayed.
        if let Some(c) = self.state.clients.get_mut(&client) {
            c.connections = if up {
                c.connections.saturating_add(1)
            } else {
                c.connections.saturating_sub(1)
            };
        }
        self.presence_changed(actor.user, before);
        Ok(None)
    }

    /// Emits a live presence event to the user's peers if their presence differs from `before`.
    pub(crate) fn presence_changed(&mut self, user: UserId, before: Status) {
        let after = self.presence(user);
        if after != before {
            // Activities belong to a live session: a user who goes offline is doing nothing any more.
            let had_activities = if after == Status::Offline {
                self.state
                    .users
                    .get_mut(&user)
                    .is_some_and(|u| !std::mem::take(&mut u.activities).is_empty())
            } else {
                false
            };
            self.presence_event(user, after, had_activities);
        }
    }

    /// Emits a user's presence to their peers: a `PresenceUpdated` carrying the activities when there are
    /// some (or `activities_changed`), else the plain `PresenceChanged` every door knows.
    fn presence_event(&mut self, user: UserId, status: Status, activities_changed: bool) {
        let activities = self
            .state
            .users
            .get(&user)
            .map(|u| u.activities.clone())
            .unwrap_or_default();
        let audience = Audience::Users(self.presence_peers(user));
        let kind = if activities.is_empty() && !activities_changed {
            EventKind::PresenceChanged { user, status }
        } else {
            EventKind::PresenceUpdated {
                user,
                status,
                activities,
            }
        };
        self.emit(audience, kind);
    }

    pub(crate) fn set_activities(
        &mut self,
        actor: Actor,
        activities: Vec<Activity>,
    ) -> Result<Option<Created>, Error> {
        if activities.len() > MAX_ACTIVITIES {
            return Err(Error::InvalidInput {
                field: Field::Activity,
                reason: "at most 5 activities",
            });
        }
        for a in &activities {
            let name = a.name.chars().count();
            if name == 0 || name > ACTIVITY_TEXT_MAX {
                return Err(Error::InvalidInput {
                    field: Field::Activity,
                    reason: "an activity's name has 1 to 128 characters",
                });
            }
            if a.state
                .as_ref()
                .is_some_and(|s| s.chars().count() > ACTIVITY_TEXT_MAX)
            {
                return Err(Error::InvalidInput {
                    field: Field::Activity,
                    reason: "an activity's state has at most 128 characters",
                });
            }
            if a.name
                .chars()
                .chain(a.state.iter().flat_map(|s| s.chars()))
                .any(char::is_control)
            {
                return Err(Error::InvalidInput {
                    field: Field::Activity,
                    reason: "no control characters",
                });
            }
        }
        let Some(u) = self.state.users.get_mut(&actor.user) else {
            return Err(Error::NoSuchNick);
        };
        if u.activities == activities {
            return Ok(None);
        }
        u.activities = activities;
        let status = self.presence(actor.user);
        // Someone offline (not connected, or invisible) shows no activity: their peers learn nothing.
        if status != Status::Offline {
            self.presence_event(actor.user, status, true);
        }
        Ok(None)
    }

    pub(crate) fn nick(&mut self, actor: Actor, nick: String) -> Result<Option<Created>, Error> {
        if actor.system {
            return Err(Error::NotSupported {
                what: "the server's user keeps its nick",
            });
        }
        validate_nick(&nick)?;
        let old = &self.state.users[&actor.user].nick;
        if *old == nick {
            return Ok(None);
        }
        if let Some(holder) = self.state.nicks.get(&casefold(&nick))
            && *holder != actor.user
        {
            return Err(Error::NickInUse);
        }
        self.rename(actor.user, nick);
        Ok(None)
    }

    /// Gives a user a new nick, free and valid (the callers checked): one system message in each of its
    /// channels, the event to everyone who shares one.
    pub(crate) fn rename(&mut self, user: UserId, nick: String) {
        let old = self.state.users[&user].nick.clone();
        if old == nick {
            return;
        }
        let channels: Vec<ChannelId> = self.state.users[&user]
            .channels
            .iter()
            .copied()
            .filter(|c| {
                self.state
                    .channels
                    .get(c)
                    .is_some_and(|ch| ch.space.is_some())
            })
            .collect();
        let notices = channels
            .into_iter()
            .map(|c| (c, MessageId(self.next_id())))
            .collect();
        let audience = Audience::Users(self.peers(user));
        self.emit(
            audience,
            EventKind::NickChanged {
                user,
                old,
                new: nick,
                notices,
            },
        );
    }

    pub(crate) fn update_profile(
        &mut self,
        actor: Actor,
        display_name: Option<Option<String>>,
        bio: Option<Option<String>>,
        avatar_url: Option<Option<String>>,
    ) -> Result<Option<Created>, Error> {
        let u = &self.state.users[&actor.user];
        let display_name = display_name
            .unwrap_or_else(|| u.display_name.clone())
            .filter(|s| !s.is_empty());
        let bio = bio
            .unwrap_or_else(|| u.bio.clone())
            .filter(|s| !s.is_empty());
        let avatar_url = avatar_url
            .unwrap_or_else(|| u.avatar_url.clone())
            .filter(|s| !s.is_empty());
        if let Some(d) = &display_name {
            check_label(Field::DisplayName, d, 32)?;
        }
        if let Some(b) = &bio {
            check_text(Field::Description, b, 1024, false)?;
        }
        if let Some(a) = &avatar_url {
            check_text(Field::Url, a, 2048, true)?;
        }
        if (&display_name, &bio, &avatar_url) == (&u.display_name, &u.bio, &u.avatar_url) {
            return Ok(None);
        }
        let audience = Audience::Users(self.peers(actor.user));
        self.emit(
            audience,
            EventKind::ProfileUpdated {
                user: actor.user,
                display_name,
                bio,
                avatar_url,
            },
        );
        Ok(None)
    }

    pub(crate) fn away(
        &mut self,
        actor: Actor,
        message: Option<String>,
    ) -> Result<Option<Created>, Error> {
        let message = message.filter(|m| !m.is_empty());
        if let Some(m) = &message {
            check_text(Field::Away, m, REASON_MAX, true)?;
        }
        if self.state.users[&actor.user].away == message {
            return Ok(None);
        }
        let before = self.presence(actor.user);
        let audience = Audience::Users(self.peers(actor.user));
        self.emit(
            audience,
            EventKind::AwayChanged {
                user: actor.user,
                message,
            },
        );
        self.presence_changed(actor.user, before);
        Ok(None)
    }

    pub(crate) fn set_status(
        &mut self,
        actor: Actor,
        status: Option<Status>,
    ) -> Result<Option<Created>, Error> {
        if status == Some(Status::Offline) {
            return Err(Error::InvalidInput {
                field: Field::Status,
                reason: "use invisible to appear offline",
            });
        }
        let before = self.presence(actor.user);
        // The override is session state but, like presence, live-only: a restart clears it.
        if let Some(u) = self.state.users.get_mut(&actor.user) {
            u.status_override = status;
        }
        self.presence_changed(actor.user, before);
        Ok(None)
    }
}
