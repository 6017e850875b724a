//! The [`Core`]: its input/output contract, the state it owns, and the queries and permission rules that
//! every command handler shares.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

// A fixed hasher, not std's randomly seeded one: the core reads no RNG, and the same inputs must give the
// same state, down to a snapshot's bytes.
use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};

use crate::command::{ChannelRef, Command, Origin, UserRef};
use crate::error::{Error, ReplayError};
use crate::event::{Audience, Event, EventKind, SpaceInfo};
use crate::id::{
    ChannelId, ClientId, MessageId, RoleId, Seq, SnowflakeGen, SpaceId, UnixMillis, UserId,
};
use crate::model::{
    Activity, Channel, ChannelKind, Client, Invite, MemberModes, MessageRecord, ReadState, Role,
    Space, Status, User,
};
use crate::name::casefold;
use crate::perm::Permissions;

/// Settings fixed for the life of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id in snowflakes (0..=1023).
    pub node_id: u16,
    /// Longest message body in bytes (MAX_MESSAGE_SIZE).
    pub max_message_size: usize,
    /// Messages kept per channel (MAX_HISTORY); older ones leave the core's index.
    pub max_history: usize,
    /// A client idle this long (ms) expires; a guest whose last client expires quits (SESSION_IDLE_TIMEOUT).
    pub session_idle_timeout_ms: u64,
    /// Secret seed for invite codes: codes are a keyed hash of the invite id, so they cannot be guessed
    /// without it. The engine keeps it with the database.
    pub invite_seed: u64,
    /// The nick of the server's own user.
    pub system_nick: String,
    /// This server's name among linked servers (FEDERATION_NAME); `None` = it does not federate, and
    /// records no federation markers.
    pub server_name: Option<String>,
    /// The network space's name.
    pub network_name: String,
    /// Presence changes are pushed to the members of a user's channels and spaces up to this size; larger
    /// ones are not told (their members look presence up), as large Discord guilds do not push it. Without
    /// the cap, N members coming online in one channel cost N² wake-ups.
    pub presence_fanout_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 0,
            max_message_size: 4096,
            max_history: 10_000,
            session_idle_timeout_ms: 24 * 60 * 60 * 1000,
            invite_seed: 0,
            system_nick: "chatd".to_owned(),
            server_name: None,
            network_name: "chatd".to_owned(),
            presence_fanout_max: 1000,
        }
    }
}

/// What a command made, for the caller's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Created {
    /// A user and, when asked for, its first client.
    User {
        /// The user.
        user: UserId,
        /// The client.
        client: Option<ClientId>,
    },
    /// A client.
    Client(ClientId),
    /// A message (also a system message such as a pin notice).
    Message(MessageId),
    /// A channel (DM, group DM, thread, space channel, network channel on first JOIN).
    Channel(ChannelId),
    /// A space.
    Space(SpaceId),
    /// A role.
    Role(RoleId),
    /// An invite, by code.
    Invite(String),
    /// A linked server's op ([`Command::Relay`]): `false` when it was seen before (nothing changed); the
    /// message it made; why this server refused it, if it did (it is still recorded as seen and passed on).
    Relayed {
        /// Whether the op was new here.
        new: bool,
        /// The message it made.
        made: Option<MessageId>,
        /// Why it changed nothing here.
        refused: Option<Error>,
    },
}

/// The result of an accepted command.
#[must_use = "the reply says what the command made and where its events end"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The seq of the last durable event the command produced, or the current last seq if it produced none.
    pub seq: Seq,
    /// How many events (durable and live) it produced; they wait in [`Core::poll_event`].
    pub events: usize,
    /// What it made.
    pub created: Option<Created>,
}

/// The core's whole durable state: what a snapshot holds.
///
/// Serializable (the engine stores it with postcard); rebuilding it by [`Core::apply`]ing the log from the
/// start gives an equal value, apart from live-only fields: clients' connections and last activity (with
/// the idle deadlines it sets), presence overrides, typing. See [`Core::resume`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub(crate) last_seq: Seq,
    pub(crate) ids: Option<SnowflakeGen>,
    pub(crate) system_user: Option<UserId>,
    pub(crate) network: Option<SpaceId>,
    pub(crate) users: BTreeMap<UserId, User>,
    pub(crate) nicks: BTreeMap<String, UserId>,
    pub(crate) clients: BTreeMap<ClientId, Client>,
    pub(crate) tokens: BTreeMap<[u8; 32], ClientId>,
    pub(crate) spaces: BTreeMap<SpaceId, Space>,
    pub(crate) channels: BTreeMap<ChannelId, Channel>,
    pub(crate) channel_names: BTreeMap<String, ChannelId>,
    pub(crate) dms: BTreeMap<(UserId, UserId), ChannelId>,
    pub(crate) messages: HashMap<MessageId, MessageRecord>,
    pub(crate) read_states: BTreeMap<(ChannelId, UserId), ReadState>,
    pub(crate) invites: BTreeMap<String, Invite>,
    pub(crate) slow_mode_last: BTreeMap<(ChannelId, UserId), UnixMillis>,
    pub(crate) client_deadlines: BTreeSet<(UnixMillis, ClientId)>,
    pub(crate) invite_deadlines: BTreeSet<(UnixMillis, String)>,
    #[serde(skip)]
    pub(crate) typing: HashMap<(UserId, ChannelId), UnixMillis>,
    /// The bot accounts (derived from `users`, rebuilt on restore): who hears of network joins and leaves.
    #[serde(skip)]
    pub(crate) bots: BTreeSet<UserId>,
    /// Remote users by their home (derived from `users`, rebuilt on restore).
    #[serde(skip)]
    pub(crate) remote_users: HashMap<String, HashMap<u64, UserId>>,
    /// Messages of linked servers by their network name (derived from `origins`, rebuilt on restore).
    #[serde(skip)]
    pub(crate) by_origin: HashMap<crate::federation::GlobalRef, MessageId>,
    /// Federation: the highest op taken from each origin server (ops at or below it are seen).
    #[serde(default)]
    pub(crate) relayed: BTreeMap<String, u64>,
    /// Federation: the network name of each message here that was written on a linked server (while the
    /// message is kept).
    #[serde(default)]
    pub(crate) origins: HashMap<MessageId, crate::federation::GlobalRef>,
}

impl State {
    /// The seq of the last durable event applied.
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }
}

/// Who acts for a command, once the origin is resolved.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Actor {
    pub(crate) user: UserId,
    pub(crate) client: Option<ClientId>,
    /// The server's operator: bypasses every permission.
    pub(crate) system: bool,
}

/// Typing events are throttled to one per user per channel per this many ms.
pub(crate) const TYPING_INTERVAL_MS: u64 = 5_000;
/// last_seen is refreshed at most this often, so a busy client does not churn the expiry index.
const TOUCH_GRANULARITY_MS: u64 = 1_000;

/// The chat state machine.
///
/// # Contract
/// - Inputs: [`Core::handle`] (a command with its `now` and origin) and [`Core::handle_timeout`] (the clock
///   reached [`Core::poll_timeout`]). The core reads no clock and no RNG and does no I/O; the same inputs give
///   the same outputs.
/// - Outputs: events, drained with [`Core::poll_event`] after every input. A refused command returns a typed
///   [`Error`] and changes nothing.
/// - Audiences: an event's recipients ([`Core::recipients`], [`Core::may_see`]) are resolved against the
///   state right after the input that produced it; resolve them before the next input.
/// - Replay: every durable change is an event, and [`Core::apply`] of the log onto a snapshot (or an empty
///   core) rebuilds the state.
#[derive(Debug)]
pub struct Core {
    pub(crate) config: Config,
    pub(crate) state: State,
    pub(crate) out: VecDeque<Event>,
    pub(crate) now: UnixMillis,
}

impl Core {
    /// A new server: creates the server's user and the network space, whose events wait in
    /// [`Core::poll_event`] to be logged.
    pub fn new(config: Config, now: UnixMillis) -> Self {
        let mut core = Self::empty(config);
        core.now = now;
        core.genesis();
        core
    }

    /// A core with nothing in it, to [`apply`](Core::apply) a log onto from its first event.
    pub fn empty(config: Config) -> Self {
        let state = State {
            ids: Some(SnowflakeGen::new(config.node_id)),
            ..State::default()
        };
        Self {
            config,
            state,
            out: VecDeque::new(),
            now: 0,
        }
    }

    /// A core restored from a snapshot, to apply the log tail onto.
    pub fn from_state(config: Config, mut state: State) -> Self {
        let ids = match &state.ids {
            Some(old) => old.rebased(config.node_id),
            None => SnowflakeGen::new(config.node_id),
        };
        state.ids = Some(ids);
        state.bots = state
            .users
            .values()
            .filter(|u| u.bot)
            .map(|u| u.id)
            .collect();
        state.remote_users = HashMap::default();
        for u in state.users.values().filter(|u| !u.released) {
            if let Some(home) = &u.home {
                state
                    .remote_users
                    .entry(home.server.clone())
                    .or_default()
                    .insert(home.id, u.id);
            }
        }
        state.by_origin = state
            .origins
            .iter()
            .map(|(id, r)| (r.clone(), *id))
            .collect();
        Self {
            config,
            state,
            out: VecDeque::new(),
            now: 0,
        }
    }

    /// Starts every client's idle window afresh at `now`. Call once after restoring (a snapshot plus the log
    /// tail) and before the first input: clients' activity is live-only and not in the log, so without this a
    /// client that was busy a minute before a restart could expire at once.
    pub fn resume(&mut self, now: UnixMillis) {
        let timeout = self.config.session_idle_timeout_ms;
        self.now = self.now.max(now);
        self.state.client_deadlines.clear();
        for c in self.state.clients.values_mut() {
            c.last_seen = c.last_seen.max(now);
            self.state
                .client_deadlines
                .insert((c.last_seen.saturating_add(timeout), c.id));
        }
    }

    /// Takes in a live-only event made by another core (a cluster's writer), on a core that follows the log
    /// with [`Core::apply`]: presence changes become this core's answer to [`Core::presence`] and the user's
    /// activities; typing changes nothing. Durable events are ignored (they are applied).
    pub fn observe(&mut self, event: &Event) {
        let (user, status, activities) = match &event.kind {
            EventKind::PresenceChanged { user, status } => (*user, *status, Vec::new()),
            EventKind::PresenceUpdated {
                user,
                status,
                activities,
            } => (*user, *status, activities.clone()),
            _ => return,
        };
        self.observe_presence(user, status, activities);
    }

    /// Sets what a following core answers for a user's presence and activities (see [`Core::observe`]).
    pub fn observe_presence(&mut self, user: UserId, status: Status, activities: Vec<Activity>) {
        if let Some(u) = self.state.users.get_mut(&user) {
            u.observed = Some(status);
            u.activities = activities;
        }
    }

    /// Forgets every observed presence: before a following core takes a writer's full list, and when it
    /// becomes the writer itself (presence is then derived from its own connections again).
    pub fn forget_observed(&mut self) {
        for u in self.state.users.values_mut() {
            if u.observed.take().is_some() {
                u.activities.clear();
            }
        }
    }

    /// The state, for snapshots.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn genesis(&mut self) {
        let system = UserId(self.next_id());
        self.emit(
            Audience::Nobody,
            EventKind::UserCreated {
                user: system,
                nick: self.config.system_nick.clone(),
                password_hash: None,
                bot: false,
                system: true,
            },
        );
        let network = SpaceId(self.next_id());
        self.emit(
            Audience::Nobody,
            EventKind::SpaceCreated {
                space: SpaceInfo {
                    id: network,
                    name: self.config.network_name.clone(),
                    description: None,
                    icon_url: None,
                    owner: system,
                    public: true,
                    network: true,
                },
                everyone: Permissions::DEFAULT_EVERYONE,
            },
        );
        let operators = RoleId(self.next_id());
        self.emit(
            Audience::Nobody,
            EventKind::RoleUpserted {
                space: network,
                role: Role {
                    id: operators,
                    name: "Server Operator".to_owned(),
                    permissions: Permissions::ADMINISTRATOR,
                    color: 0xe7_4c_3c,
                    hoist: true,
                    mentionable: false,
                    position: 1,
                },
                created: true,
            },
        );
    }

    // --- the contract -------------------------------------------------------------------------------------

    /// Applies one command. On success its events wait in [`Core::poll_event`]; on refusal nothing changed.
    pub fn handle(
        &mut self,
        now: UnixMillis,
        origin: Origin,
        command: Command,
    ) -> Result<Reply, Error> {
        self.now = now;
        let before = self.out.len();
        let actor = self.resolve_origin(origin, &command)?;
        let created = self.dispatch(actor, command)?;
        if let Some(client) = actor.client {
            self.touch(client);
        }
        Ok(Reply {
            seq: self.state.last_seq,
            events: self.out.len() - before,
            created,
        })
    }

    /// Runs what is due at `now`: expires idle clients (and the guests they leave without one) and invites.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        self.now = now;
        while let Some(&(at, client)) = self.state.client_deadlines.first() {
            if at > now {
                break;
            }
            self.state.client_deadlines.pop_first();
            // A client with a live connection is in use even when it sends nothing: keep it.
            let rearm = now.saturating_add(self.config.session_idle_timeout_ms.max(1));
            let live = self
                .state
                .clients
                .get(&client)
                .is_some_and(|c| c.connections > 0);
            if live && rearm > now {
                if let Some(c) = self.state.clients.get_mut(&client) {
                    c.last_seen = now;
                }
                self.state.client_deadlines.insert((rearm, client));
            } else {
                self.expire_client(client);
            }
        }
        while let Some((at, code)) = self.state.invite_deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.state.invite_deadlines.pop_first();
            if self.state.invites.contains_key(&code) {
                let creator = self.state.invites[&code].creator;
                self.emit(Audience::User(creator), EventKind::InviteDeleted { code });
            }
        }
    }

    /// When the core next needs [`Core::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        let client = self.state.client_deadlines.first().map(|(at, _)| *at);
        let invite = self.state.invite_deadlines.first().map(|(at, _)| *at);
        match (client, invite) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event produced, in order.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.pop_front()
    }

    /// Applies a logged event (replay after a snapshot). Live-only events are ignored.
    pub fn apply(&mut self, event: &Event) -> Result<(), ReplayError> {
        if !event.is_durable() {
            return Ok(());
        }
        if event.seq != self.state.last_seq + 1 {
            return Err(ReplayError::OutOfOrder {
                last: self.state.last_seq,
                got: event.seq,
            });
        }
        self.state.apply(event, &self.config)
    }

    // --- plumbing shared by the handlers ------------------------------------------------------------------

    pub(crate) fn next_id(&mut self) -> crate::id::Snowflake {
        // `ids` is Some from construction on; only a deserialized State lacks it, and from_state sets it.
        self.state
            .ids
            .get_or_insert_with(|| SnowflakeGen::new(self.config.node_id))
            .next(self.now)
    }

    /// Records an event: gives it its seq, applies it to the state, queues it for the caller.
    pub(crate) fn emit(&mut self, audience: Audience, kind: EventKind) {
        let mut event = Event {
            seq: self.state.last_seq,
            ts: self.now,
            audience,
            kind,
        };
        // Computed before the event applies: a deleted message's network name is gone after.
        let shared = if self.config.server_name.is_some() {
            self.local_op(&event.kind)
        } else {
            None
        };
        if event.is_durable() {
            event.seq += 1;
            if let Err(e) = self.state.apply(&event, &self.config) {
                // Handlers check everything an event needs before emitting it; failing here is a bug.
                panic!("bug: an event the core made does not apply: {e}");
            }
        }
        self.out.push_back(event);
        if let Some((user, action)) = shared {
            self.record_local_op(user, action);
        }
    }

    fn resolve_origin(&mut self, origin: Origin, command: &Command) -> Result<Actor, Error> {
        match origin {
            Origin::Client(client) => {
                let c = self.state.clients.get(&client).ok_or(Error::NoSuchClient)?;
                Ok(Actor {
                    user: c.user,
                    client: Some(client),
                    system: false,
                })
            }
            Origin::System => {
                let user = self.state.system_user.ok_or(Error::NoSuchClient)?;
                Ok(Actor {
                    user,
                    client: None,
                    system: true,
                })
            }
            Origin::Anonymous => match command {
                Command::Register { .. } | Command::Login { .. } => {
                    let user = self.state.system_user.ok_or(Error::NoSuchClient)?;
                    Ok(Actor {
                        user,
                        client: None,
                        system: false,
                    })
                }
                _ => Err(Error::NoSuchClient),
            },
        }
    }

    fn touch(&mut self, client: ClientId) {
        let timeout = self.config.session_idle_timeout_ms;
        let now = self.now;
        let Some(c) = self.state.clients.get_mut(&client) else {
            return;
        };
        if now < c.last_seen.saturating_add(TOUCH_GRANULARITY_MS) {
            return;
        }
        self.state
            .client_deadlines
            .remove(&(c.last_seen.saturating_add(timeout), client));
        c.last_seen = now;
        self.state
            .client_deadlines
            .insert((now.saturating_add(timeout), client));
    }

    fn dispatch(&mut self, actor: Actor, command: Command) -> Result<Option<Created>, Error> {
        use Command as C;
        match command {
            C::Register {
                nick,
                password_hash,
                bot,
                client,
            } => self.register(actor, nick, password_hash, bot, client),
            C::Login { user, client } => self.login(actor, user, client),
            C::Logout => self.logout(actor),
            C::SetPassword {
                user,
                password_hash,
            } => self.set_password(actor, user, password_hash),
            C::Quit { reason } => self.quit(actor, reason),
            C::Connect => self.connect(actor, true),
            C::Disconnect => self.connect(actor, false),
            C::Touch => Ok(None),
            C::Nick { nick } => self.nick(actor, nick),
            C::UpdateProfile {
                display_name,
                bio,
                avatar_url,
            } => self.update_profile(actor, display_name, bio, avatar_url),
            C::Away { message } => self.away(actor, message),
            C::SetStatus { status } => self.set_status(actor, status),
            C::SetActivities { activities } => self.set_activities(actor, activities),
            C::Join { channel, key } => self.join(actor, channel, key),
            C::Part { channel, reason } => self.part(actor, channel, reason),
            C::Kick {
                channel,
                user,
                reason,
            } => self.kick(actor, channel, user, reason),
            C::Invite { channel, user } => self.invite_user(actor, channel, user),
            C::Topic { channel, topic } => self.topic(actor, channel, topic),
            C::Mode {
                channel,
                modes,
                args,
            } => self.mode(actor, channel, modes, args),
            C::Send { to, message } => self.send(actor, to, message),
            C::Edit {
                message,
                body,
                meta,
                embeds,
            } => self.edit(actor, message, body, meta, embeds),
            C::Delete { message } => self.delete(actor, message),
            C::BulkDelete { channel, messages } => self.bulk_delete(actor, channel, messages),
            C::React { message, emoji } => self.react(actor, message, emoji),
            C::Unreact {
                message,
                emoji,
                user,
            } => self.unreact(actor, message, emoji, user),
            C::Pin { message } => self.pin(actor, message, true),
            C::Unpin { message } => self.pin(actor, message, false),
            C::Typing { channel } => self.typing(actor, channel),
            C::Read { channel, message } => self.read(actor, channel, message),
            C::CreateThread {
                channel,
                name,
                message,
            } => self.create_thread(actor, channel, name, message),
            C::OpenDm { user } => self.open_dm(actor, user),
            C::CreateGroupDm { users, name } => self.create_group_dm(actor, users, name),
            C::AddRecipient { channel, user } => self.add_recipient(actor, channel, user),
            C::RemoveRecipient { channel, user } => self.remove_recipient(actor, channel, user),
            C::CreateSpace {
                name,
                description,
                public,
            } => self.create_space(actor, name, description, public),
            C::UpdateSpace {
                space,
                name,
                description,
                icon_url,
                public,
            } => self.update_space(actor, space, name, description, icon_url, public),
            C::DeleteSpace { space } => self.delete_space(actor, space),
            C::JoinSpace { space } => self.join_space(actor, space),
            C::LeaveSpace { space } => self.leave_space(actor, space),
            C::KickMember {
                space,
                user,
                reason,
            } => self.kick_member(actor, space, user, reason),
            C::BanMember {
                space,
                user,
                reason,
            } => self.ban_member(actor, space, user, reason),
            C::UnbanMember { space, user } => self.unban_member(actor, space, user),
            C::CreateRole {
                space,
                name,
                permissions,
                color,
                hoist,
                mentionable,
            } => self.create_role(actor, space, name, permissions, color, hoist, mentionable),
            C::UpdateRole {
                space,
                role,
                name,
                permissions,
                color,
                hoist,
                mentionable,
                position,
            } => self.update_role(
                actor,
                space,
                role,
                name,
                permissions,
                color,
                hoist,
                mentionable,
                position,
            ),
            C::DeleteRole { space, role } => self.delete_role(actor, space, role),
            C::SetMemberRoles { space, user, roles } => {
                self.set_member_roles(actor, space, user, roles)
            }
            C::SetMemberNick { space, user, nick } => {
                self.set_member_nick(actor, space, user, nick)
            }
            C::CreateChannel {
                space,
                name,
                kind,
                parent,
                topic,
                overwrites,
            } => self.create_channel(actor, space, name, kind, parent, topic, overwrites),
            C::UpdateChannel {
                channel,
                name,
                topic,
                position,
                parent,
                slowmode_secs,
            } => self.update_channel(actor, channel, name, topic, position, parent, slowmode_secs),
            C::DeleteChannel { channel } => self.delete_channel(actor, channel),
            C::SetOverwrite {
                channel,
                target,
                allow,
                deny,
            } => self.set_overwrite(actor, channel, target, allow, deny),
            C::DeleteOverwrite { channel, target } => self.delete_overwrite(actor, channel, target),
            C::CreateInvite {
                channel,
                max_uses,
                max_age_secs,
            } => self.create_invite(actor, channel, max_uses, max_age_secs),
            C::RevokeInvite { code } => self.revoke_invite(actor, code),
            C::UseInvite { code } => self.use_invite(actor, code),
            C::Relay { op, from } => {
                Self::require_system(actor)?;
                self.relay(*op, from)
            }
            C::AnnounceChannels => {
                Self::require_system(actor)?;
                self.announce_channels()
            }
        }
    }

    fn require_system(actor: Actor) -> Result<(), Error> {
        if actor.system {
            Ok(())
        } else {
            Err(Error::NotSupported {
                what: "only the server itself relays between linked servers",
            })
        }
    }

    // --- lookups ------------------------------------------------------------------------------------------

    pub(crate) fn resolve_channel(&self, channel: &ChannelRef) -> Result<ChannelId, Error> {
        match channel {
            ChannelRef::Id(id) => self.state.channels.contains_key(id).then_some(*id),
            ChannelRef::Name(name) => self.state.channel_names.get(&casefold(name)).copied(),
        }
        .ok_or(Error::NoSuchChannel)
    }

    pub(crate) fn resolve_user(&self, user: &UserRef) -> Result<UserId, Error> {
        match user {
            UserRef::Id(id) => self
                .state
                .users
                .get(id)
                .filter(|u| !u.released && !u.system)
                .map(|u| u.id),
            UserRef::Nick(nick) => self
                .state
                .nicks
                .get(&casefold(nick))
                .copied()
                .filter(|id| Some(*id) != self.state.system_user),
        }
        .ok_or(Error::NoSuchNick)
    }

    pub(crate) fn chan(&self, id: ChannelId) -> &Channel {
        // Callers pass ids they resolved against this state during the same command.
        &self.state.channels[&id]
    }

    /// Who hears that `user` joined or left the network: the user and the network's bots (see
    /// `handle::session`'s registration).
    pub(crate) fn network_news(&self, user: UserId) -> Audience {
        let mut who: Vec<UserId> = self.state.bots.iter().copied().collect();
        if let Err(at) = who.binary_search(&user) {
            who.insert(at, user);
        }
        Audience::Users(who)
    }

    pub(crate) fn network_id(&self) -> SpaceId {
        // Set by genesis, before any command can run.
        self.state
            .network
            .expect("the network exists from genesis on")
    }

    // --- public queries -----------------------------------------------------------------------------------

    /// The seq of the last durable event.
    pub fn last_seq(&self) -> Seq {
        self.state.last_seq
    }

    /// The network space.
    pub fn network(&self) -> SpaceId {
        self.network_id()
    }

    /// The server's own user.
    pub fn system_user(&self) -> UserId {
        // Set by genesis, before any command can run.
        self.state
            .system_user
            .expect("the server's user exists from genesis on")
    }

    /// A user by id (released guests included, for history).
    pub fn user(&self, id: UserId) -> Option<&User> {
        self.state.users.get(&id)
    }

    /// The user holding a nick (any case).
    pub fn user_by_nick(&self, nick: &str) -> Option<&User> {
        self.state
            .nicks
            .get(&casefold(nick))
            .and_then(|id| self.state.users.get(id))
    }

    /// All users, released guests included.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.state.users.values()
    }

    /// A client by id.
    pub fn client(&self, id: ClientId) -> Option<&Client> {
        self.state.clients.get(&id)
    }

    /// A user's clients (devices), in id order.
    pub fn clients_of(&self, user: UserId) -> impl Iterator<Item = &Client> {
        self.state
            .users
            .get(&user)
            .into_iter()
            .flat_map(|u| u.clients.iter())
            .filter_map(|id| self.state.clients.get(id))
    }

    /// The client whose token hashes to `hash`. The engine compares the stored hash in constant time.
    pub fn client_by_token_hash(&self, hash: &[u8; 32]) -> Option<&Client> {
        self.state
            .tokens
            .get(hash)
            .and_then(|id| self.state.clients.get(id))
    }

    /// A space by id.
    pub fn space(&self, id: SpaceId) -> Option<&Space> {
        self.state.spaces.get(&id)
    }

    /// All spaces, the network first.
    pub fn spaces(&self) -> impl Iterator<Item = &Space> {
        self.state.spaces.values()
    }

    /// A channel by id.
    pub fn channel(&self, id: ChannelId) -> Option<&Channel> {
        self.state.channels.get(&id)
    }

    /// A network channel by name (any case, with its `#`).
    pub fn channel_by_name(&self, name: &str) -> Option<&Channel> {
        self.state
            .channel_names
            .get(&casefold(name))
            .and_then(|id| self.state.channels.get(id))
    }

    /// All channels.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.state.channels.values()
    }

    /// The DM channel between two users, if they have one.
    pub fn dm_channel(&self, a: UserId, b: UserId) -> Option<ChannelId> {
        self.state.dms.get(&(a.min(b), a.max(b))).copied()
    }

    /// A channel's members with their modes (a thread's are its parent's).
    pub fn members(&self, channel: ChannelId) -> impl Iterator<Item = (UserId, MemberModes)> + '_ {
        self.member_map(channel)
            .into_iter()
            .flat_map(|m| m.iter().map(|(u, modes)| (*u, *modes)))
    }

    /// How many members a channel has.
    pub fn member_count(&self, channel: ChannelId) -> usize {
        self.member_map(channel).map_or(0, BTreeMap::len)
    }

    /// Whether a user is a member of a channel (receives its events).
    pub fn is_member(&self, user: UserId, channel: ChannelId) -> bool {
        self.member_map(channel)
            .is_some_and(|m| m.contains_key(&user))
    }

    pub(crate) fn member_map(&self, channel: ChannelId) -> Option<&BTreeMap<UserId, MemberModes>> {
        let ch = self.state.channels.get(&channel)?;
        match (ch.kind, ch.parent) {
            (ChannelKind::Thread, Some(parent)) => {
                self.state.channels.get(&parent).map(|p| &p.members)
            }
            _ => Some(&ch.members),
        }
    }

    /// A message the core still knows (within retention, not deleted).
    pub fn message(&self, id: MessageId) -> Option<&MessageRecord> {
        self.state.messages.get(&id)
    }

    /// A user's read state in a channel.
    pub fn read_state(&self, user: UserId, channel: ChannelId) -> Option<&ReadState> {
        self.state.read_states.get(&(channel, user))
    }

    /// Messages others wrote in a channel after the user's last read one (within retention).
    pub fn unread_count(&self, user: UserId, channel: ChannelId) -> usize {
        let Some(ch) = self.state.channels.get(&channel) else {
            return 0;
        };
        let last = self.read_state(user, channel).and_then(|r| r.last_read);
        let start = last.map_or(0, |last| ch.history.partition_point(|id| *id <= last));
        // Only what others wrote is unread: one's own messages and joins, parts and mode changes are not.
        ch.history
            .range(start..)
            .filter(|id| {
                self.state
                    .messages
                    .get(id)
                    .is_some_and(|m| m.author != user && m.kind.is_user_written())
            })
            .count()
    }

    /// An invite by code.
    pub fn invite(&self, code: &str) -> Option<&Invite> {
        self.state.invites.get(code)
    }

    /// Every live invite, by code.
    pub fn invites(&self) -> impl Iterator<Item = &Invite> {
        self.state.invites.values()
    }

    /// A user's presence as others see it.
    pub fn presence(&self, user: UserId) -> Status {
        let Some(u) = self.state.users.get(&user) else {
            return Status::Offline;
        };
        if let Some(observed) = u.observed {
            return observed;
        }
        let connected = u
            .clients
            .iter()
            .any(|c| self.state.clients.get(c).is_some_and(|c| c.connections > 0));
        match (connected, u.status_override) {
            (false, _) | (true, Some(Status::Invisible | Status::Offline)) => Status::Offline,
            (true, Some(status)) => status,
            (true, None) if u.away.is_some() => Status::Idle,
            (true, None) => Status::Online,
        }
    }

    /// Network channels a user may list: every channel that is not `+s`, and `+s` ones they are on.
    pub fn list_channels(&self, user: UserId) -> impl Iterator<Item = &Channel> {
        self.state.channel_names.values().filter_map(move |id| {
            let ch = self.state.channels.get(id)?;
            (!ch.flags.secret || ch.members.contains_key(&user)).then_some(ch)
        })
    }

    /// The channel's modes as an IRC mode string; the key is shown only to members.
    pub fn mode_string(&self, channel: ChannelId, viewer: UserId) -> String {
        self.state
            .channels
            .get(&channel)
            .map_or_else(String::new, |ch| {
                ch.mode_string(ch.members.contains_key(&viewer))
            })
    }
}
