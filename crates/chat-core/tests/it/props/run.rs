//! The runner: drives the core and the reference model side by side with a virtual clock and checks every
//! invariant after every step, then rebuilds the state from the log and compares.

use std::collections::{BTreeMap, BTreeSet};

use chat_core::{
    ChannelId, ChannelKind, ChannelRef, ClientId, Command, Config, Core, Created, Event, EventKind,
    NewClient, Origin, Outgoing, OverwriteTarget, Permissions, RoleId, SpaceId, Status, Target,
    UserId, UserRef,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::model::{Act, Gate, Heard, IDLE_MS, MOp, Model, Outcome, Users, fold};
use super::ops::{self, CHANNELS, EMOJI, KEYS, NICKS, Op, TOPICS, Who, mode_line, pick, prelude};

type Check = Result<(), TestCaseError>;

/// Runs the prelude, the property's own `setup` and then `ops`, checking after every step; then checks
/// replay.
pub(super) fn run(setup: &[Op], ops: &[Op]) -> Check {
    let mut runner = Runner::new();
    for op in prelude().iter().chain(setup).chain(ops) {
        runner.step(op)?;
    }
    runner.check_replay()
}

/// A person: the user they currently are, and every client they ever had (the dead ones make stale origins).
#[derive(Default)]
struct Slot {
    user: Option<UserId>,
    clients: Vec<ClientId>,
}

struct Runner {
    config: Config,
    core: Core,
    model: Model,
    now: u64,
    /// Every event the core emitted, genesis included, for the replay check.
    log: Vec<Event>,
    slots: Vec<Slot>,
    tokens: u32,
    /// The slot the current operation registers a user for.
    register_slot: Option<usize>,
    network: SpaceId,
    operators: RoleId,
}

fn fail(msg: String) -> Check {
    Err(TestCaseError::fail(msg))
}

/// The same nick with every ASCII letter's case flipped: another spelling of a nick already held.
fn swapcase(nick: &str) -> String {
    nick.chars()
        .map(|c| {
            if c.is_ascii_uppercase() {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

impl Runner {
    fn new() -> Self {
        let config = Config {
            session_idle_timeout_ms: IDLE_MS,
            ..Config::default()
        };
        let now = 1_800_000_000_000;
        let mut core = Core::new(config.clone(), now);
        let log: Vec<Event> = std::iter::from_fn(|| core.poll_event()).collect();
        let network = core.network();
        let operators = core
            .space(network)
            .and_then(|s| s.roles.values().find(|r| r.name == "Server Operator"))
            .map(|r| r.id)
            .expect("genesis makes the Server Operator role");
        let model = Model::new(now, core.system_user(), &config.system_nick);
        Self {
            config,
            core,
            model,
            now,
            log,
            slots: (0..ops::SLOTS).map(|_| Slot::default()).collect(),
            tokens: 0,
            register_slot: None,
            network,
            operators,
        }
    }

    fn step(&mut self, op: &Op) -> Check {
        self.now += 1;
        if let Op::Advance(ms) = op {
            self.now += u64::from(*ms);
        }
        self.tick()?;
        self.register_slot = match op {
            Op::Register { slot, .. } => {
                // Registration fills the first free slot from the drawn one on, so that the cast stays full.
                let n = self.slots.len();
                let first = usize::from(*slot);
                let free = (first..first + n)
                    .map(|i| i % n)
                    .find(|i| self.live_user(*i).is_none());
                Some(free.unwrap_or(first))
            }
            _ => None,
        };
        match self.resolve(op) {
            Some((origin, act, mop)) => self.exec(origin, act, mop),
            None => Ok(()),
        }
    }

    /// Runs the timers at the current time, as an embedding's loop does when `poll_timeout` is reached.
    fn tick(&mut self) -> Check {
        let seq = self.core.last_seq();
        self.core.handle_timeout(self.now);
        let events: Vec<Event> = std::iter::from_fn(|| self.core.poll_event()).collect();
        let outcome = self.model.expire(self.now);
        prop_assert_eq!(
            outcome.quiet,
            events.is_empty(),
            "timers at {}: the model expects {:?}, the core emitted {:#?}",
            self.now,
            outcome,
            events
        );
        self.check_events(&Gate::default(), seq, &events, &outcome)?;
        let changed = !events.is_empty();
        self.log.extend(events);
        if changed {
            self.check_state()?;
        }
        Ok(())
    }

    // --- from abstract operations to commands -----------------------------------------------------------

    /// The origin for a `Who`: the operator, a live client of the slot's user, or one of its dead clients.
    fn origin(&self, who: &Who) -> Option<(Origin, Act)> {
        if who.system {
            return Some((Origin::System, Act::Sys));
        }
        let slot = &self.slots[usize::from(who.slot)];
        let user = slot.user?;
        let live = &self.model.users[&user].clients;
        if !live.is_empty() {
            let c = live[usize::from(who.client) % live.len()].id;
            return Some((Origin::Client(c), Act::Client(user, c)));
        }
        // A client that is gone is tried now and then; otherwise the operation is skipped.
        if !who.client.is_multiple_of(3) {
            return None;
        }
        let c = *slot
            .clients
            .get(usize::from(who.client) % slot.clients.len().max(1))?;
        Some((Origin::Client(c), Act::Dead))
    }

    /// The slot's user, unless it is a released guest.
    fn live_user(&self, slot: usize) -> Option<UserId> {
        self.slots[slot]
            .user
            .filter(|u| !self.model.users[u].released)
    }

    /// With `lead`, the same operation done by one of `users` (a channel's operators, a space's owner).
    fn lead(&self, who: &Who, users: &Users) -> Who {
        if !who.lead || who.system {
            return *who;
        }
        let slots: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.live_user(*i).is_some_and(|u| users.contains(&u)))
            .collect();
        match slots.get(usize::from(who.slot) % slots.len().max(1)) {
            Some(i) => Who {
                slot: *i as u8,
                ..*who
            },
            None => *who,
        }
    }

    fn chan_ops(&self, name: &str) -> Users {
        self.model
            .chans
            .get(&fold(name))
            .map(|c| c.ops())
            .unwrap_or_default()
    }

    fn owner(&self, space: SpaceId) -> Users {
        self.model
            .spaces
            .iter()
            .filter(|s| s.id == space)
            .map(|s| s.owner)
            .collect()
    }

    fn space_at(&self, i: u8) -> Option<SpaceId> {
        let n = self.model.spaces.len();
        (n > 0).then(|| self.model.spaces[usize::from(i) % n].id)
    }

    fn resolve(&self, op: &Op) -> Option<(Origin, Act, MOp)> {
        let chan = |i: u8| pick(CHANNELS, i).to_owned();
        let nick = |i: u8| pick(NICKS, i).to_owned();
        let with = |who: &Who, mop: MOp| self.origin(who).map(|(o, a)| (o, a, mop));
        match op {
            Op::Register {
                nick: n, account, ..
            } => {
                // A full house tries another spelling of a live user's nick, which must be refused.
                let slot = self.register_slot?;
                let nick = match self.live_user(slot) {
                    Some(u) => swapcase(&self.model.users[&u].nick),
                    None => nick(*n),
                };
                Some((
                    Origin::Anonymous,
                    Act::Anon,
                    MOp::Register {
                        nick,
                        account: *account,
                    },
                ))
            }
            Op::Login { slot } => {
                let user = self.slots[usize::from(*slot)].user?;
                Some((Origin::Anonymous, Act::Anon, MOp::Login { user }))
            }
            Op::Logout(w) => with(w, MOp::Logout),
            Op::Quit(w) => with(w, MOp::Quit),
            Op::Connect(w, up) => with(w, MOp::Connect { up: *up }),
            Op::Touch(w) => with(w, MOp::Touch),
            Op::Nick(w, n) => with(w, MOp::Nick { nick: nick(*n) }),
            Op::Join(w, c, k) => with(
                w,
                MOp::Join {
                    name: chan(*c),
                    key: k.map(|k| pick(KEYS, k).to_owned()),
                },
            ),
            Op::Part(w, c) => with(w, MOp::Part { name: chan(*c) }),
            Op::Kick(w, c, n) => with(
                &self.lead(w, &self.chan_ops(&chan(*c))),
                MOp::Kick {
                    name: chan(*c),
                    nick: nick(*n),
                },
            ),
            Op::Invite(w, c, n) => with(
                &self.lead(w, &self.chan_ops(&chan(*c))),
                MOp::Invite {
                    name: chan(*c),
                    nick: nick(*n),
                },
            ),
            Op::Topic(w, c, t) => with(
                &self.lead(w, &self.chan_ops(&chan(*c))),
                MOp::Topic {
                    name: chan(*c),
                    text: pick(TOPICS, *t).to_owned(),
                },
            ),
            Op::Mode(w, c, atoms) => {
                let (modes, args) = mode_line(atoms);
                with(
                    &self.lead(w, &self.chan_ops(&chan(*c))),
                    MOp::Mode {
                        name: chan(*c),
                        modes,
                        args,
                    },
                )
            }
            Op::Say(w, c) => with(
                &self.lead(w, &self.chan_ops(&chan(*c))),
                MOp::Say { name: chan(*c) },
            ),
            Op::Dm(w, n) => with(w, MOp::Dm { nick: nick(*n) }),
            Op::React(w, m, e) => {
                let msgs = &self.model.msgs;
                let message = msgs.get(usize::from(*m) % msgs.len().max(1))?.id;
                with(
                    w,
                    MOp::React {
                        message,
                        emoji: pick(EMOJI, *e).to_owned(),
                    },
                )
            }
            Op::CreateInvite(w, c, uses, expires) => {
                // A channel that is gone keeps its id: a stale reference the core must refuse.
                let channel = self
                    .model
                    .chans
                    .get(&fold(&chan(*c)))
                    .map(|c| c.id)
                    .or_else(|| self.model.dead_chans.last().copied())?;
                with(
                    &self.lead(w, &self.chan_ops(&chan(*c))),
                    MOp::CreateInvite {
                        channel,
                        max_uses: u32::from(*uses),
                        max_age_secs: if *expires { 5 } else { 0 },
                    },
                )
            }
            Op::UseInvite(w, i) => {
                let invites = &self.model.invites;
                let code = invites
                    .get(usize::from(*i) % invites.len().max(1))?
                    .code
                    .clone();
                with(w, MOp::UseInvite { code })
            }
            Op::DeleteChan(w, c) => {
                let channel = self
                    .model
                    .chans
                    .get(&fold(&chan(*c)))
                    .map(|c| c.id)
                    .or_else(|| self.model.dead_chans.last().copied())?;
                with(w, MOp::DeleteChan { channel })
            }
            Op::Operator(w, s, on) => {
                let user = self.slots[usize::from(*s)].user?;
                with(w, MOp::Operator { user, on: *on })
            }
            Op::CreateSpace(w, public) => with(w, MOp::CreateSpace { public: *public }),
            Op::JoinSpace(w, s) => with(
                w,
                MOp::JoinSpace {
                    space: self.space_at(*s)?,
                },
            ),
            Op::LeaveSpace(w, s) => with(
                w,
                MOp::LeaveSpace {
                    space: self.space_at(*s)?,
                },
            ),
            Op::CreateRole(w, s) => {
                let space = self.space_at(*s)?;
                with(&self.lead(w, &self.owner(space)), MOp::CreateRole { space })
            }
            Op::HideGeneral(w, s, hide) => {
                let space = self.space_at(*s)?;
                with(
                    &self.lead(w, &self.owner(space)),
                    MOp::HideGeneral { space, hide: *hide },
                )
            }
            Op::RoleView(w, s, r, allow) => {
                let space = self.space_at(*s)?;
                let roles = &self.model.spaces.iter().find(|x| x.id == space)?.roles;
                let role = *roles.get(usize::from(*r) % roles.len().max(1))?;
                with(
                    &self.lead(w, &self.owner(space)),
                    MOp::RoleView {
                        space,
                        role,
                        allow: *allow,
                    },
                )
            }
            Op::SetRoles(w, s, u, mask) => {
                let space = self.space_at(*s)?;
                // Half the time the target is one of the space's members, else whoever holds a slot.
                let members = self.model.space_members(space, self.network);
                let user = match members
                    .iter()
                    .nth(usize::from(*u / 2) % members.len().max(1))
                {
                    Some(m) if u.is_multiple_of(2) => *m,
                    _ => self.slots[usize::from(*u)].user?,
                };
                let roles = self
                    .model
                    .spaces
                    .iter()
                    .find(|x| x.id == space)?
                    .roles
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> (i % 8) & 1 == 1)
                    .map(|(_, r)| *r)
                    .collect();
                with(
                    &self.lead(w, &self.owner(space)),
                    MOp::SetRoles { space, user, roles },
                )
            }
            Op::Typing(w, c) => with(w, MOp::Typing { name: chan(*c) }),
            Op::SaySpace(w, s) => with(
                w,
                MOp::SaySpace {
                    space: self.space_at(*s)?,
                },
            ),
            Op::Advance(_) => None,
        }
    }

    fn new_client(&mut self) -> NewClient {
        self.tokens += 1;
        let mut token_hash = [0; 32];
        token_hash[..4].copy_from_slice(&self.tokens.to_le_bytes());
        NewClient {
            name: "web".to_owned(),
            token_hash,
        }
    }

    fn general(&self, space: SpaceId) -> ChannelId {
        self.model
            .spaces
            .iter()
            .find(|s| s.id == space)
            .map(|s| s.general)
            .expect("a known space")
    }

    fn command(&mut self, op: &MOp) -> Command {
        let say = |to| Command::Send {
            to,
            message: Outgoing {
                body: "hello".to_owned(),
                ..Outgoing::default()
            },
        };
        match op.clone() {
            MOp::Register { nick, account } => Command::Register {
                nick,
                password_hash: account.then(|| "$argon2id$v=19$stub".to_owned()),
                bot: false,
                client: Some(self.new_client()),
            },
            MOp::Login { user } => Command::Login {
                user,
                client: self.new_client(),
            },
            MOp::Logout => Command::Logout,
            MOp::Quit => Command::Quit { reason: None },
            MOp::Connect { up: true } => Command::Connect,
            MOp::Connect { up: false } => Command::Disconnect,
            MOp::Touch => Command::Touch,
            MOp::Nick { nick } => Command::Nick { nick },
            MOp::Join { name, key } => Command::Join { channel: name, key },
            MOp::Part { name } => Command::Part {
                channel: ChannelRef::Name(name),
                reason: None,
            },
            MOp::Kick { name, nick } => Command::Kick {
                channel: ChannelRef::Name(name),
                user: UserRef::Nick(nick),
                reason: None,
            },
            MOp::Invite { name, nick } => Command::Invite {
                channel: ChannelRef::Name(name),
                user: UserRef::Nick(nick),
            },
            MOp::Topic { name, text } => Command::Topic {
                channel: ChannelRef::Name(name),
                topic: text,
            },
            MOp::Mode { name, modes, args } => Command::Mode {
                channel: ChannelRef::Name(name),
                modes,
                args,
            },
            MOp::Say { name } => say(Target::Channel(ChannelRef::Name(name))),
            MOp::Dm { nick } => say(Target::User(UserRef::Nick(nick))),
            MOp::React { message, emoji } => Command::React { message, emoji },
            MOp::CreateInvite {
                channel,
                max_uses,
                max_age_secs,
            } => Command::CreateInvite {
                channel,
                max_uses,
                max_age_secs,
            },
            MOp::UseInvite { code } => Command::UseInvite { code },
            MOp::DeleteChan { channel } => Command::DeleteChannel { channel },
            MOp::Operator { user, on } => Command::SetMemberRoles {
                space: self.network,
                user,
                roles: if on { vec![self.operators] } else { Vec::new() },
            },
            MOp::CreateSpace { public } => Command::CreateSpace {
                name: "Space".to_owned(),
                description: None,
                public,
            },
            MOp::JoinSpace { space } => Command::JoinSpace { space },
            MOp::LeaveSpace { space } => Command::LeaveSpace { space },
            MOp::CreateRole { space } => Command::CreateRole {
                space,
                name: "role".to_owned(),
                permissions: Permissions::empty(),
                color: 0,
                hoist: false,
                mentionable: false,
            },
            MOp::HideGeneral { space, hide } => Command::SetOverwrite {
                channel: self.general(space),
                target: OverwriteTarget::Role(space.everyone_role()),
                allow: Permissions::empty(),
                deny: if hide {
                    Permissions::VIEW_CHANNEL
                } else {
                    Permissions::empty()
                },
            },
            MOp::RoleView { space, role, allow } => Command::SetOverwrite {
                channel: self.general(space),
                target: OverwriteTarget::Role(role),
                allow: if allow {
                    Permissions::VIEW_CHANNEL
                } else {
                    Permissions::empty()
                },
                deny: Permissions::empty(),
            },
            MOp::SetRoles { space, user, roles } => Command::SetMemberRoles { space, user, roles },
            MOp::SaySpace { space } => say(Target::Channel(ChannelRef::Id(self.general(space)))),
            MOp::Typing { name } => Command::Typing {
                channel: ChannelRef::Name(name),
            },
        }
    }

    // --- one command --------------------------------------------------------------------------------------

    fn exec(&mut self, origin: Origin, act: Act, op: MOp) -> Check {
        let before = self.core.state().clone();
        let gate = self.model.gate();
        let seq = self.core.last_seq();
        let command = self.command(&op);
        let result = self.core.handle(self.now, origin, command);
        let events: Vec<Event> = std::iter::from_fn(|| self.core.poll_event()).collect();
        let created = result.as_ref().ok().and_then(|r| r.created.clone());
        let verdict = self
            .model
            .step(self.now, act, &op, created.as_ref(), &events);
        match (result, verdict) {
            (Err(got), Err(want)) => {
                prop_assert_eq!(
                    got.name(),
                    want,
                    "{:?} by {:?}: refused for another reason",
                    op,
                    act
                );
                prop_assert!(
                    events.is_empty(),
                    "{:?} was refused but emitted {:#?}",
                    op,
                    events
                );
                prop_assert!(
                    *self.core.state() == before,
                    "{:?} by {:?} was refused ({}) but changed the state",
                    op,
                    act,
                    got
                );
            }
            (Ok(reply), Ok(outcome)) => {
                prop_assert_eq!(reply.events, events.len(), "{:?}: reply.events", op);
                prop_assert_eq!(
                    outcome.quiet,
                    events.is_empty(),
                    "{:?} by {:?}: the model expects {:?}, the core emitted {:#?}",
                    op,
                    act,
                    outcome,
                    events
                );
                self.check_events(&gate, seq, &events, &outcome)?;
                prop_assert_eq!(reply.seq, self.core.last_seq());
                match created {
                    Some(Created::User {
                        user,
                        client: Some(client),
                    }) => {
                        if let MOp::Register { .. } = op
                            && let Some(slot) = self.register_slot
                        {
                            self.slots[slot].user = Some(user);
                            self.slots[slot].clients.push(client);
                        }
                    }
                    Some(Created::Client(client)) => {
                        if let MOp::Login { user } = op
                            && let Some(slot) = self.slots.iter_mut().find(|s| s.user == Some(user))
                        {
                            slot.clients.push(client);
                        }
                    }
                    _ => {}
                }
            }
            (Ok(_), Err(want)) => {
                return fail(format!(
                    "{op:?} by {act:?}: the core accepted it and emitted {events:#?}, the model refuses with {want}"
                ));
            }
            (Err(got), Ok(_)) => {
                return fail(format!(
                    "{op:?} by {act:?}: the core refused it with {got:?}, the model accepts it"
                ));
            }
        }
        self.log.extend(events);
        self.check_state()
    }
}

impl Runner {
    // --- events -------------------------------------------------------------------------------------------

    /// Checks the events of one input: dense seqs; `recipients` equal to `may_see` over every user; the
    /// audience the model expects for each kind; the fixed-list events the model expects, in order; and that
    /// nobody enters a `+i` channel without an invite or an operator's override.
    fn check_events(&self, gate: &Gate, seq: u64, events: &[Event], outcome: &Outcome) -> Check {
        let everyone: Vec<UserId> = self.model.users.keys().copied().collect();
        let mut seq = seq;
        let mut heard = Vec::new();
        for ev in events {
            if ev.is_durable() {
                seq += 1;
            }
            prop_assert_eq!(ev.seq, seq, "seq of {:?}", ev.kind);
            let list: Vec<UserId> = self.core.recipients(ev).collect();
            let got: Users = list.iter().copied().collect();
            prop_assert_eq!(list.len(), got.len(), "duplicate recipients for {:?}", ev);
            let seen: Users = everyone
                .iter()
                .copied()
                .filter(|u| self.core.may_see(*u, ev))
                .collect();
            prop_assert_eq!(&got, &seen, "recipients and may_see disagree on {:?}", ev);
            let want = match ev.kind {
                // A channel removed by an operator reaches its members; one emptied by its last member
                // leaving reaches the network, unless it was secret.
                EventKind::ChannelDeleted { .. } if !outcome.deleted_for.is_empty() => {
                    Some(outcome.deleted_for.clone())
                }
                EventKind::ChannelDeleted { channel } => {
                    Some(if self.model.dead_secret.contains(&channel) {
                        Users::new()
                    } else {
                        self.model.space_members(self.network, self.network)
                    })
                }
                _ => self.expected_audience(ev),
            };
            if let Some(want) = want {
                prop_assert_eq!(&got, &want, "the audience of {:?}", ev);
            }
            match &ev.kind {
                EventKind::Quit { user, .. } => heard.push((Heard::Quit(*user), got)),
                EventKind::NickChanged { user, .. } => heard.push((Heard::Nick(*user), got)),
                EventKind::PresenceChanged { user, .. } => {
                    heard.push((Heard::Presence(*user), got))
                }
                EventKind::Joined { channel, user, .. } => {
                    if let Some(admits) = gate.get(channel) {
                        let admitted = admits.contains(user) || outcome.by_link;
                        prop_assert!(
                            admitted,
                            "{:?} entered +i channel {:?} without an invite or an override",
                            user,
                            channel
                        );
                    }
                }
                _ => {}
            }
        }
        prop_assert_eq!(self.core.last_seq(), seq);
        prop_assert_eq!(
            heard,
            outcome.heard.clone(),
            "users told of quits, nick and presence changes"
        );
        Ok(())
    }

    /// Who the model says must receive an event, for the kinds whose audience follows from the state after
    /// the input (channel and space events) or from the event itself.
    fn expected_audience(&self, ev: &Event) -> Option<Users> {
        let m = &self.model;
        let one = |u: UserId| Users::from([u]);
        let creator = |code: &str| m.invites.iter().find(|i| i.code == code).map(|i| i.creator);
        Some(match &ev.kind {
            EventKind::MessageCreated { message } => {
                // The author's other devices get the message even when it was sent from outside (-n).
                let mut a = m.channel_audience(message.channel);
                if message.author != m.system {
                    a.insert(message.author);
                }
                a
            }
            // What a user does to a channel from outside (a server operator) reaches their own devices too.
            EventKind::ReactionAdded {
                channel, user: by, ..
            }
            | EventKind::ModeChanged { channel, by, .. }
            | EventKind::TopicChanged { channel, by, .. } => {
                let mut a = m.channel_audience(*channel);
                if *by != m.system {
                    a.insert(*by);
                }
                a
            }
            EventKind::Typing { channel, .. }
            | EventKind::Joined { channel, .. }
            | EventKind::OverwriteSet { channel, .. } => m.channel_audience(*channel),
            EventKind::Parted { channel, user, .. } => {
                let mut a = m.channel_audience(*channel);
                a.insert(*user);
                a
            }
            EventKind::Kicked {
                channel, user, by, ..
            } => {
                let mut a = m.channel_audience(*channel);
                a.insert(*user);
                if *by != m.system {
                    a.insert(*by);
                }
                a
            }
            EventKind::Invited {
                channel, user, by, ..
            } => {
                // The inviter, the invited user, and the channel's operators (invite-notify).
                let mut a = m.chan_by_id(*channel).map(|c| c.ops()).unwrap_or_default();
                a.extend([*user, *by]);
                a
            }
            EventKind::ChannelCreated { channel, members } => match channel.kind {
                ChannelKind::Dm => members.iter().copied().collect(),
                ChannelKind::Text if channel.space == Some(self.network) => {
                    m.space_members(self.network, self.network)
                }
                _ => m.channel_audience(channel.id),
            },
            EventKind::ChannelAccess { added, removed, .. } => {
                added.iter().chain(removed).copied().collect()
            }
            // A network channel going +s or -s: the network's members outside it.
            EventKind::ChannelListed { channel, .. } => {
                let inside = m.channel_audience(*channel);
                m.space_members(self.network, self.network)
                    .into_iter()
                    .filter(|u| !inside.contains(u))
                    .collect()
            }
            EventKind::UserCreated { user, .. }
            | EventKind::ClientCreated { user, .. }
            | EventKind::ClientRemoved { user, .. } => one(*user),
            EventKind::InviteCreated { invite } => one(creator(&invite.code)?),
            EventKind::InviteUsed { code, user } => Users::from([creator(code)?, *user]),
            EventKind::InviteDeleted { code } => one(creator(code)?),
            EventKind::SpaceCreated { space, .. } => m.space_members(space.id, self.network),
            // Network joins and leaves reach the user and the network's bots (the model makes none).
            EventKind::MemberJoined { space, user, .. }
            | EventKind::MemberLeft { space, user, .. }
                if *space == self.network =>
            {
                one(*user)
            }
            EventKind::MemberJoined { space, .. }
            | EventKind::RoleUpserted { space, .. }
            | EventKind::MemberUpdated { space, .. } => m.space_members(*space, self.network),
            EventKind::MemberLeft { space, user, .. } => {
                let mut a = m.space_members(*space, self.network);
                a.insert(*user);
                a
            }
            _ => return None,
        })
    }

    // --- state --------------------------------------------------------------------------------------------

    /// Compares the core's state with the model's: users, nicks, clients, presence, operator roles, network
    /// channels with their members and modes, DMs, spaces with derived membership, messages with reactions,
    /// invites and timers.
    fn check_state(&self) -> Check {
        let core = &self.core;
        let m = &self.model;
        prop_assert_eq!(core.users().count(), m.users.len(), "users");
        let network = core.space(self.network).expect("the network");
        for (id, mu) in &m.users {
            let Some(cu) = core.user(*id) else {
                return fail(format!("user {id:?} missing"));
            };
            prop_assert_eq!(&cu.nick, &mu.nick);
            prop_assert_eq!(cu.released, mu.released, "released: {}", mu.nick);
            if *id == m.system {
                continue;
            }
            prop_assert_eq!(cu.is_guest(), mu.guest);
            if !mu.released {
                prop_assert_eq!(core.user_by_nick(&mu.nick).map(|u| u.id), Some(*id));
            }
            let clients: BTreeSet<ClientId> = cu.clients().collect();
            let want: BTreeSet<ClientId> = mu.clients.iter().map(|c| c.id).collect();
            prop_assert_eq!(clients, want, "clients of {}", mu.nick);
            for c in &mu.clients {
                let cc = core.client(c.id).expect("compared above");
                prop_assert_eq!(
                    cc.last_seen,
                    c.last_seen,
                    "last_seen of a client of {}",
                    mu.nick
                );
                prop_assert_eq!(cc.connections, c.conns);
            }
            prop_assert_eq!(core.presence(*id) == Status::Online, m.online(*id));
            let member = network.member(*id);
            prop_assert_eq!(member.is_some(), !mu.released, "{} in the network", mu.nick);
            if let Some(member) = member {
                prop_assert_eq!(member.roles.contains(&self.operators), mu.admin);
            }
        }
        // A nick maps to at most one user, whatever its case.
        let mut holders = BTreeMap::new();
        for u in core.users().filter(|u| !u.released) {
            prop_assert!(
                holders.insert(fold(&u.nick), u.id).is_none(),
                "two users hold {}",
                u.nick
            );
        }
        for nick in NICKS {
            prop_assert_eq!(
                core.user_by_nick(nick).map(|u| u.id),
                m.nicks.get(&fold(nick)).copied(),
                "holder of {}",
                nick
            );
        }

        for name in CHANNELS {
            prop_assert_eq!(
                core.channel_by_name(name).map(|c| c.id),
                m.chans.get(&fold(name)).map(|c| c.id),
                "channel {}",
                name
            );
        }
        let named = core
            .channels()
            .filter(|c| c.space == Some(self.network) && c.kind == ChannelKind::Text)
            .count();
        prop_assert_eq!(named, m.chans.len(), "network channels");
        for (name, c) in &m.chans {
            prop_assert!(!c.members.is_empty(), "{} exists without members", name);
            let cc = core.channel(c.id).expect("compared by name above");
            let members: BTreeMap<UserId, (bool, bool)> = core
                .members(c.id)
                .map(|(u, mm)| (u, (mm.op, mm.voice)))
                .collect();
            prop_assert_eq!(&members, &c.members, "members of {}", name);
            let flags = (
                cc.is_invite_only(),
                cc.is_moderated(),
                cc.flags.no_external,
                cc.flags.secret,
                cc.flags.topic_lock,
            );
            let want = (
                c.invite_only,
                c.moderated,
                c.no_external,
                c.secret,
                c.topic_lock,
            );
            prop_assert_eq!(flags, want, "+imnst of {}", name);
            prop_assert_eq!(&cc.flags.key, &c.key, "+k of {}", name);
            prop_assert_eq!(cc.flags.limit, c.limit, "+l of {}", name);
            let bans: Vec<&str> = cc.bans.iter().map(|b| b.mask.as_str()).collect();
            prop_assert_eq!(bans, c.bans.iter().map(String::as_str).collect::<Vec<_>>());
            let bound: Vec<&Users> = cc.bans.iter().map(|b| &b.bound).collect();
            prop_assert_eq!(
                bound,
                c.bans_bound.iter().collect::<Vec<_>>(),
                "ban bindings of {}",
                name
            );
            prop_assert_eq!(&cc.invited, &c.invited, "invited to {}", name);
            prop_assert_eq!(
                cc.topic.as_ref().map(|t| t.text.as_str()),
                c.topic.as_deref()
            );
            // The key shows only to members.
            let member = *c.members.keys().next().expect("checked non-empty");
            prop_assert_eq!(core.mode_string(c.id, member), c.mode_string(true));
            prop_assert_eq!(core.mode_string(c.id, m.system), c.mode_string(false));
        }
        // `+s` channels are listed only to their members.
        for (id, mu) in &m.users {
            if mu.released {
                continue;
            }
            let listed: BTreeSet<ChannelId> = core.list_channels(*id).map(|c| c.id).collect();
            let want: BTreeSet<ChannelId> = m
                .chans
                .values()
                .filter(|c| !c.secret || c.members.contains_key(id))
                .map(|c| c.id)
                .collect();
            prop_assert_eq!(listed, want, "channels listed to {}", mu.nick);
        }

        // The per-user indexes that `peers` and quits walk: explicit channels and spaces.
        for (id, mu) in m.users.iter().filter(|(id, _)| **id != m.system) {
            let cu = core.user(*id).expect("compared above");
            let joined: BTreeSet<ChannelId> = cu.joined_channels().collect();
            let mut want: BTreeSet<ChannelId> = m
                .chans
                .values()
                .filter(|c| c.members.contains_key(id))
                .map(|c| c.id)
                .collect();
            want.extend(
                m.dms
                    .iter()
                    .filter(|(pair, _)| pair.0 == *id || pair.1 == *id)
                    .map(|(_, c)| *c),
            );
            prop_assert_eq!(joined, want, "channels {} joined", mu.nick);
            let spaces: BTreeSet<SpaceId> = cu.spaces().collect();
            let mut want: BTreeSet<SpaceId> = m
                .spaces
                .iter()
                .filter(|s| s.members.contains_key(id))
                .map(|s| s.id)
                .collect();
            if !mu.released {
                want.insert(self.network);
            }
            prop_assert_eq!(spaces, want, "spaces of {}", mu.nick);
        }
        for (pair, id) in &m.dms {
            prop_assert_eq!(core.dm_channel(pair.0, pair.1), Some(*id));
            let members: Users = core.members(*id).map(|(u, _)| u).collect();
            prop_assert_eq!(members, Users::from([pair.0, pair.1]));
        }

        prop_assert_eq!(core.spaces().count(), m.spaces.len() + 1, "spaces");
        for s in &m.spaces {
            let sp = core.space(s.id).expect("a space the model made");
            prop_assert_eq!(sp.owner, s.owner);
            let members: BTreeMap<UserId, BTreeSet<RoleId>> =
                sp.members().map(|x| (x.user, x.roles.clone())).collect();
            prop_assert_eq!(&members, &s.members, "members of a space");
            let derived: Users = core.members(s.general).map(|(u, _)| u).collect();
            prop_assert_eq!(derived, s.viewers(), "derived members of general");
        }

        for msg in &m.msgs {
            let alive = m.msg_alive(msg);
            match core.message(msg.id) {
                Some(rec) => {
                    prop_assert!(alive, "message {:?} outlived its channel", msg.id);
                    prop_assert_eq!(rec.channel, msg.channel);
                    let reactions: BTreeMap<String, Users> = rec
                        .reactions
                        .iter()
                        .map(|(e, us)| (e.clone(), us.iter().copied().collect()))
                        .collect();
                    prop_assert_eq!(&reactions, &msg.reactions);
                }
                None => prop_assert!(!alive, "message {:?} lost", msg.id),
            }
        }
        for inv in &m.invites {
            let ci = core.invite(&inv.code);
            prop_assert_eq!(ci.is_some(), inv.alive, "invite {} alive", inv.code);
            if let Some(ci) = ci {
                prop_assert_eq!(ci.uses, inv.uses);
            }
        }

        // The timer never sleeps past a due client or invite, and nothing due is left unhandled.
        if let Some(due) = m.next_deadline() {
            prop_assert!(
                core.poll_timeout().is_some_and(|t| t <= due),
                "poll_timeout {:?} after the model's next deadline {}",
                core.poll_timeout(),
                due
            );
        }
        if let Some(t) = core.poll_timeout() {
            prop_assert!(
                t > self.now,
                "a timer due at {} was left at {}",
                t,
                self.now
            );
        }
        Ok(())
    }

    /// Rebuilds a core from the durable events alone and compares what the log must carry.
    fn check_replay(&self) -> Check {
        let mut replay = Core::empty(self.config.clone());
        for ev in self.log.iter().filter(|e| e.is_durable()) {
            if let Err(e) = replay.apply(ev) {
                return fail(format!("replaying {ev:?}: {e}"));
            }
        }
        let core = &self.core;
        prop_assert_eq!(replay.last_seq(), core.last_seq());
        prop_assert_eq!(
            replay.users().collect::<Vec<_>>(),
            core.users().collect::<Vec<_>>()
        );
        prop_assert_eq!(
            replay.channels().collect::<Vec<_>>(),
            core.channels().collect::<Vec<_>>()
        );
        prop_assert_eq!(
            replay.spaces().collect::<Vec<_>>(),
            core.spaces().collect::<Vec<_>>()
        );
        for u in core.users() {
            for c in u.clients() {
                let (a, b) = (core.client(c), replay.client(c));
                let key = |x: Option<&chat_core::Client>| {
                    x.map(|x| (x.id, x.user, x.name.clone(), x.token_hash, x.created_at))
                };
                prop_assert_eq!(key(a), key(b), "client {:?} after replay", c);
            }
        }
        for ch in core.channels() {
            for id in ch.history() {
                prop_assert_eq!(core.message(id), replay.message(id));
            }
        }
        for inv in &self.model.invites {
            prop_assert_eq!(core.invite(&inv.code), replay.invite(&inv.code));
        }
        Ok(())
    }
}
