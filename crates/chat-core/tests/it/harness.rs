//! A deterministic simulation of one chat-core: a virtual clock, named users and clients, and the log.
//!
//! [`Sim`] drives a [`Core`] the way the engine will: every input is followed by draining the core's events
//! and resolving each event's recipients right away (the audience contract says they are only valid until
//! the next input). Time is virtual: [`Sim::advance`] and [`Sim::run_until_idle_or`] jump the clock straight
//! to [`Core::poll_timeout`] and call [`Core::handle_timeout`] there, as quinn-proto's test `Pair` does, so a
//! day of idle expiry costs a few microseconds.
//!
//! Every input is checked on the way: durable seqs are dense and live events carry the last one, new ids
//! strictly increase and carry the node id, recipients never repeat and agree with [`Core::may_see`] for
//! every user, and a refused command leaves the state exactly as it was.
//!
//! Every durable event is kept in a journal together with the few live-only inputs that change state which
//! is not carried by events (a client's idle timer, an explicit status), so that [`Sim::replay_check`] can
//! rebuild the core from its log, and from snapshots taken anywhere along it, and demand exact equality.
//!
//! ```ignore
//! let mut sim = Sim::new();
//! sim.guest("alice").unwrap();
//! sim.send("alice", Command::Join { channel: "#rust".into(), key: None }).unwrap();
//! for d in sim.take_events() {
//!     println!("{:?} -> {:?}", d.event.kind, d.recipients);
//! }
//! sim.advance(24 * HOUR);
//! sim.replay_check();
//! ```

// The harness is shared by every module of the test binary, and no single module uses all of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use chat_core::{
    ChannelKind, ClientId, Command, Config, Core, Created, Error, Event, EventKind, MessageId,
    NewClient, Origin, Reply, Snowflake, State, UnixMillis, UserId,
};

/// Where the virtual clock starts: 2027-01-15, well after the snowflake epoch.
pub(crate) const START: UnixMillis = 1_800_000_000_000;
/// One second of virtual time.
pub(crate) const SECOND: UnixMillis = 1_000;
/// One minute of virtual time.
pub(crate) const MINUTE: UnixMillis = 60 * SECOND;
/// One hour of virtual time.
pub(crate) const HOUR: UnixMillis = 60 * MINUTE;
/// One day of virtual time.
pub(crate) const DAY: UnixMillis = 24 * HOUR;

/// Stops a timer loop that would otherwise spin forever when `handle_timeout` fails to clear what is due.
const MAX_TIMEOUTS_PER_CALL: usize = 1_000_000;

/// One event as the simulation saw it: the event and who received it, resolved right after the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// The event.
    pub(crate) event: Event,
    /// Its recipients, sorted. Resolved against the state right after the input that produced the event.
    pub(crate) recipients: Vec<UserId>,
}

/// What a replay must feed the core to rebuild the live state: durable events and live-only inputs.
#[derive(Clone, Debug)]
enum Entry {
    /// A durable event, applied with [`Core::apply`].
    Event(Event),
    /// An accepted client command whose live-only effect the log does not carry: the idle timer that every
    /// client command resets (`Command::Touch` reproduces it), or an explicit status. Replayed through
    /// [`Core::handle`], which must then produce no durable event.
    Live {
        now: UnixMillis,
        client: ClientId,
        command: Command,
    },
}

/// The simulation: a core, its virtual clock, the names of its users and clients, and its journal.
#[derive(Debug)]
pub(crate) struct Sim {
    core: Core,
    config: Config,
    now: UnixMillis,
    journal: Vec<Entry>,
    pending: Vec<Delivered>,
    users: BTreeMap<String, UserId>,
    user_names: BTreeMap<UserId, String>,
    clients: BTreeMap<String, ClientId>,
    client_names: BTreeMap<ClientId, String>,
    next_token: u64,
    check_refusals: bool,
    last_id: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// A simulation of a new server with the default configuration.
    pub(crate) fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A simulation of a new server. The genesis events (the server's user, the network) are logged but
    /// not returned by [`Sim::take_events`].
    pub(crate) fn with_config(config: Config) -> Self {
        let core = Core::new(config.clone(), START);
        let mut sim = Self {
            core,
            config,
            now: START,
            journal: Vec::new(),
            pending: Vec::new(),
            users: BTreeMap::new(),
            user_names: BTreeMap::new(),
            clients: BTreeMap::new(),
            client_names: BTreeMap::new(),
            next_token: 0,
            check_refusals: true,
            last_id: 0,
        };
        sim.drain();
        sim.pending.clear();
        let system = sim.core.system_user();
        sim.name_user("system", system);
        sim
    }

    /// Whether every refused command is checked to have left the state exactly as it was (on by default).
    /// The check clones the state before each command; a long random run may turn it off for speed.
    pub(crate) fn set_check_refusals(&mut self, on: bool) {
        self.check_refusals = on;
    }

    // --- clock and inputs ---------------------------------------------------------------------------------

    /// The core, for queries.
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// The configuration the core runs with.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The virtual clock.
    pub(crate) fn now(&self) -> UnixMillis {
        self.now
    }

    /// Runs one command at the current time and drains its events.
    pub(crate) fn handle(&mut self, origin: Origin, command: Command) -> Result<Reply, Error> {
        let live = match &command {
            Command::SetStatus { .. } => command.clone(),
            _ => Command::Touch,
        };
        // A refused command must change nothing at all, live-only state and the id generator included.
        let before = self.check_refusals.then(|| self.core.state().clone());
        let result = self.core.handle(self.now, origin, command);
        if let (Err(e), Some(before)) = (&result, before) {
            assert!(
                self.core.poll_event().is_none(),
                "a refused command ({e}) made an event"
            );
            assert_same(
                &before,
                self.core.state(),
                &format!("a refused command ({e}) changed the state"),
            );
        }
        self.drain();
        if let (Ok(_), Origin::Client(client)) = (&result, origin) {
            self.journal.push(Entry::Live {
                now: self.now,
                client,
                command: live,
            });
        }
        result
    }

    /// Runs one command from a named client.
    pub(crate) fn send(&mut self, client: &str, command: Command) -> Result<Reply, Error> {
        let id = self.client(client);
        self.handle(Origin::Client(id), command)
    }

    /// Moves the clock forward by `ms`, stopping at every timeout due on the way (the clock jumps straight
    /// to each [`Core::poll_timeout`]) and ending exactly `ms` later.
    pub(crate) fn advance(&mut self, ms: UnixMillis) {
        let target = self.now + ms;
        self.fire_timeouts_until(target);
        self.now = target;
    }

    /// Jumps from timeout to timeout until the core needs none, or the next one lies more than `limit_ms`
    /// past the current time. Returns whether the core went idle; the clock stays at the last timeout fired.
    pub(crate) fn run_until_idle_or(&mut self, limit_ms: UnixMillis) -> bool {
        let limit = self.now + limit_ms;
        self.fire_timeouts_until(limit);
        self.core.poll_timeout().is_none()
    }

    fn fire_timeouts_until(&mut self, limit: UnixMillis) {
        let mut fired = 0;
        while let Some(at) = self.core.poll_timeout() {
            if at > limit {
                break;
            }
            // A deadline already in the past fires now: the clock never runs backwards.
            self.now = self.now.max(at);
            self.core.handle_timeout(self.now);
            self.drain();
            fired += 1;
            assert!(
                fired < MAX_TIMEOUTS_PER_CALL,
                "poll_timeout keeps returning {at} after handle_timeout({})",
                self.now
            );
        }
    }

    /// Pulls every event out of the core, checks the log's invariants, and resolves recipients.
    fn drain(&mut self) {
        while let Some(event) = self.core.poll_event() {
            let last = self.last_logged_seq();
            if event.is_durable() {
                assert_eq!(
                    event.seq,
                    last + 1,
                    "durable seqs are dense: {event:?} after seq {last}"
                );
            } else {
                assert_eq!(
                    event.seq, last,
                    "a live event carries the seq of the durable event before it: {event:?}"
                );
            }
            let mut recipients: Vec<UserId> = self.core.recipients(&event).collect();
            let count = recipients.len();
            recipients.sort_unstable();
            recipients.dedup();
            assert_eq!(
                count,
                recipients.len(),
                "recipients repeat a user: {event:?}"
            );
            // The visibility rule and the recipient index must agree for every user, not only recipients.
            for user in self.core.users() {
                assert_eq!(
                    self.core.may_see(user.id, &event),
                    recipients.binary_search(&user.id).is_ok(),
                    "may_see disagrees with recipients for {} on {event:?}",
                    user.nick
                );
            }
            for id in new_ids(&event.kind) {
                assert!(
                    id > self.last_id,
                    "ids are strictly increasing: {id} after {} in {event:?}",
                    self.last_id
                );
                assert_eq!(
                    Snowflake::new(id).map(Snowflake::node),
                    Some(self.config.node_id),
                    "ids carry the node id"
                );
                self.last_id = id;
            }
            if event.is_durable() {
                self.journal.push(Entry::Event(event.clone()));
            }
            self.pending.push(Delivered { event, recipients });
        }
        assert_eq!(
            self.core.last_seq(),
            self.last_logged_seq(),
            "the core's last seq is the last logged event's"
        );
    }

    fn last_logged_seq(&self) -> u64 {
        self.journal
            .iter()
            .rev()
            .find_map(|e| match e {
                Entry::Event(ev) => Some(ev.seq),
                Entry::Live { .. } => None,
            })
            .unwrap_or(0)
    }

    /// The events produced since the last call, in order, with their recipients.
    pub(crate) fn take_events(&mut self) -> Vec<Delivered> {
        std::mem::take(&mut self.pending)
    }

    /// Every durable event logged so far, genesis included.
    pub(crate) fn log(&self) -> impl Iterator<Item = &Event> {
        self.journal.iter().filter_map(|e| match e {
            Entry::Event(ev) => Some(ev),
            Entry::Live { .. } => None,
        })
    }

    // --- users and clients --------------------------------------------------------------------------------

    fn token(&mut self) -> [u8; 32] {
        self.next_token += 1;
        let mut hash = [0; 32];
        hash[..8].copy_from_slice(&self.next_token.to_le_bytes());
        hash
    }

    fn new_client(&mut self, name: &str) -> NewClient {
        NewClient {
            name: name.to_owned(),
            token_hash: self.token(),
        }
    }

    /// Registers a user with one client, both named `name`, with nick `nick`.
    pub(crate) fn register(
        &mut self,
        name: &str,
        nick: &str,
        password_hash: Option<String>,
        bot: bool,
    ) -> Result<ClientId, Error> {
        assert!(
            !self.users.contains_key(name) && !self.clients.contains_key(name),
            "the name {name} is taken in this simulation"
        );
        let client = self.new_client(name);
        let reply = self.handle(
            Origin::Anonymous,
            Command::Register {
                nick: nick.to_owned(),
                password_hash,
                bot,
                client: Some(client),
            },
        )?;
        let Some(Created::User {
            user,
            client: Some(client),
        }) = reply.created
        else {
            panic!("Register made no user and client: {reply:?}");
        };
        self.name_user(name, user);
        self.name_client(name, client);
        Ok(client)
    }

    /// Registers a guest (no password) with one client; user, client and nick are all `name`.
    pub(crate) fn guest(&mut self, name: &str) -> Result<ClientId, Error> {
        self.register(name, name, None, false)
    }

    /// Registers an account; the password "hash" is a readable stand-in, since the core never hashes.
    pub(crate) fn account(&mut self, name: &str, password: &str) -> Result<ClientId, Error> {
        self.register(name, name, Some(format!("$test${password}")), false)
    }

    /// Adds a client named `client` to the user named `user` (the engine checked the password).
    pub(crate) fn login(&mut self, client: &str, user: &str) -> Result<ClientId, Error> {
        assert!(
            !self.clients.contains_key(client),
            "the client name {client} is taken in this simulation"
        );
        let user = self.user(user);
        let new = self.new_client(client);
        let reply = self.handle(Origin::Anonymous, Command::Login { user, client: new })?;
        let Some(Created::Client(id)) = reply.created else {
            panic!("Login made no client: {reply:?}");
        };
        self.name_client(client, id);
        Ok(id)
    }

    /// Names a user for [`Sim::user`] and [`Sim::user_name`].
    pub(crate) fn name_user(&mut self, name: &str, user: UserId) {
        self.users.insert(name.to_owned(), user);
        self.user_names.insert(user, name.to_owned());
    }

    /// Names a client for [`Sim::client`] and [`Sim::client_name`].
    pub(crate) fn name_client(&mut self, name: &str, client: ClientId) {
        self.clients.insert(name.to_owned(), client);
        self.client_names.insert(client, name.to_owned());
    }

    /// The user named `name`; panics if there is none, since that is a mistake in the test.
    pub(crate) fn user(&self, name: &str) -> UserId {
        self.try_user(name)
            .unwrap_or_else(|| panic!("no user named {name}"))
    }

    /// The user named `name`, if any.
    pub(crate) fn try_user(&self, name: &str) -> Option<UserId> {
        self.users.get(name).copied()
    }

    /// Every named user, by name.
    pub(crate) fn named_users(&self) -> impl Iterator<Item = (&str, UserId)> {
        self.users.iter().map(|(name, id)| (name.as_str(), *id))
    }

    /// The client named `name`; panics if there is none.
    pub(crate) fn client(&self, name: &str) -> ClientId {
        self.try_client(name)
            .unwrap_or_else(|| panic!("no client named {name}"))
    }

    /// The client named `name`, if any.
    pub(crate) fn try_client(&self, name: &str) -> Option<ClientId> {
        self.clients.get(name).copied()
    }

    /// A user's name in this simulation, or its nick in the core, or its raw id.
    pub(crate) fn user_name(&self, user: UserId) -> String {
        if let Some(name) = self.user_names.get(&user) {
            return name.clone();
        }
        self.core
            .user(user)
            .map_or_else(|| format!("?{user}"), |u| u.nick.clone())
    }

    /// A client's name in this simulation, or its raw id.
    pub(crate) fn client_name(&self, client: ClientId) -> String {
        self.client_names
            .get(&client)
            .cloned()
            .unwrap_or_else(|| format!("?{client}"))
    }

    // --- replay -------------------------------------------------------------------------------------------

    /// Rebuilds the core from its log and compares it with the live one; panics on any difference.
    ///
    /// What is compared is the whole [`State`], after a postcard round trip of both sides. The round trip is
    /// what snapshots go through, and it drops exactly the fields marked live-only with `serde(skip)` (a
    /// client's live connections, typing timestamps), which a restart legitimately forgets. The remaining
    /// live-only state, a client's `last_seen` with its `client_deadlines` entry and a user's
    /// `status_override`, is reproduced rather than masked: the journal records the accepted client
    /// commands, and the replay feeds `Touch` (or the `SetStatus` itself) to the rebuilt core at the same
    /// points. Everything else must come from [`Core::apply`] alone, so a field that a handler changes
    /// without an event, or that `apply` rebuilds differently, shows up as a difference.
    ///
    /// Snapshots are checked too: at cut points along the log the rebuilt state is serialized with postcard,
    /// restored with [`Core::from_state`], and the rest of the log applied on top must give the same state.
    /// Events themselves go through postcard before they are applied, as they do in the store.
    pub(crate) fn replay_check(&self) {
        let live = roundtrip(self.core.state());
        let mut replayed = Core::empty(self.config.clone());
        for entry in &self.journal {
            self.replay_entry(&mut replayed, entry);
        }
        assert_same(
            &live,
            &roundtrip(replayed.state()),
            "the state rebuilt from the log differs from the live state",
        );
        // The full replay agrees; now restart from snapshots taken along the way.
        let cuts = self.cut_points();
        let mut replayed = Core::empty(self.config.clone());
        for (i, entry) in self.journal.iter().enumerate() {
            if cuts.contains(&i) {
                self.check_snapshot(&replayed, i, &live);
            }
            self.replay_entry(&mut replayed, entry);
        }
    }

    /// Journal positions to snapshot at: every one for short logs, about 32 evenly spaced ones otherwise.
    fn cut_points(&self) -> Vec<usize> {
        let n = self.journal.len();
        let step = (n / 32).max(1);
        (0..n).step_by(step).collect()
    }

    fn check_snapshot(&self, replayed: &Core, at: usize, live: &State) {
        let bytes = postcard::to_allocvec(replayed.state()).expect("a state serializes");
        let state: State = postcard::from_bytes(&bytes).expect("a snapshot deserializes");
        let mut restored = Core::from_state(self.config.clone(), state);
        for entry in &self.journal[at..] {
            self.replay_entry(&mut restored, entry);
        }
        assert_same(
            live,
            &roundtrip(restored.state()),
            &format!(
                "a snapshot at journal entry {at} plus the log tail differs from the live state"
            ),
        );
    }

    fn replay_entry(&self, core: &mut Core, entry: &Entry) {
        match entry {
            Entry::Event(event) => {
                let bytes = postcard::to_allocvec(event).expect("an event serializes");
                let event: Event = postcard::from_bytes(&bytes).expect("an event deserializes");
                core.apply(&event)
                    .unwrap_or_else(|e| panic!("replay refused {event:?}: {e}"));
            }
            Entry::Live {
                now,
                client,
                command,
            } => {
                let before = core.last_seq();
                // The client may be gone by now (a logout touches nothing); that is not an error here.
                let _ = core.handle(*now, Origin::Client(*client), command.clone());
                while let Some(event) = core.poll_event() {
                    assert!(
                        !event.is_durable(),
                        "a live-only input made a durable event on replay: {event:?}"
                    );
                }
                assert_eq!(core.last_seq(), before);
            }
        }
    }
}

/// The ids an event brings into being, in the order the core made them.
fn new_ids(kind: &EventKind) -> Vec<u64> {
    use EventKind as E;
    match kind {
        E::UserCreated { user, .. } => vec![user.get()],
        E::ClientCreated { client, .. } => vec![client.get()],
        E::SpaceCreated { space, .. } => vec![space.id.get()],
        E::RoleUpserted {
            role,
            created: true,
            ..
        } => vec![role.id.get()],
        // A thread started from a message takes the message's id, handed out (and checked) with the message.
        E::ChannelCreated { channel, .. }
            if channel.kind == ChannelKind::Thread
                && channel.starter.map(MessageId::get) == Some(channel.id.get()) =>
        {
            Vec::new()
        }
        E::ChannelCreated { channel, .. } => vec![channel.id.get()],
        E::MessageCreated { message } => vec![message.id.get()],
        E::InviteCreated { invite } => vec![invite.id.get()],
        E::Joined { message, .. }
        | E::Parted { message, .. }
        | E::Kicked { message, .. }
        | E::TopicChanged { message, .. }
        | E::ModeChanged { message, .. }
        | E::Invited { message, .. } => vec![message.get()],
        E::Pinned { notice, .. } => vec![notice.get()],
        E::NickChanged { notices, .. } | E::Quit { notices, .. } => {
            notices.iter().map(|(_, m)| m.get()).collect()
        }
        _ => Vec::new(),
    }
}

/// A state as a snapshot carries it: serialized and read back, which drops the live-only fields.
fn roundtrip(state: &State) -> State {
    let bytes = postcard::to_allocvec(state).expect("a state serializes");
    postcard::from_bytes(&bytes).expect("a state deserializes")
}

/// Panics with the first differing lines of the two values' pretty debug output when they differ.
pub(crate) fn assert_same<T: PartialEq + Debug>(expected: &T, actual: &T, what: &str) {
    if expected == actual {
        return;
    }
    let a = format!("{expected:#?}");
    let b = format!("{actual:#?}");
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let first = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let from = first.saturating_sub(12);
    let show = |lines: &[&str]| {
        lines
            .iter()
            .enumerate()
            .skip(from)
            .take(30)
            .map(|(i, l)| format!("{}{l}", if i == first { "> " } else { "  " }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{what}\n--- expected (live), from line {from} ---\n{}\n--- actual ---\n{}",
        show(&a),
        show(&b)
    );
}

#[test]
fn the_clock_jumps_to_each_timeout() {
    let mut sim = Sim::new();
    sim.guest("alice").unwrap();
    sim.take_events();
    assert!(
        sim.run_until_idle_or(2 * DAY),
        "the guest's expiry is the only timer"
    );
    assert_eq!(
        sim.now(),
        START + DAY,
        "the clock stopped at the deadline, not the limit"
    );
    assert!(
        sim.take_events().iter().any(|d| matches!(
            d.event.kind,
            chat_core::EventKind::Quit { released: true, .. }
        )),
        "the guest quit when its client expired"
    );
    sim.replay_check();
}

#[test]
#[should_panic(expected = "differs from the live state")]
fn replay_check_notices_divergence() {
    let mut sim = Sim::new();
    sim.guest("alice").unwrap();
    sim.advance(HOUR);
    let _ = sim.send("alice", Command::Touch).unwrap();
    // Forget the live-only input: the rebuilt client's idle timer now differs from the live one.
    sim.journal.retain(|e| matches!(e, Entry::Event(_)));
    sim.replay_check();
}
