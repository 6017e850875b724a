//! The reference model: the rules of sessions, nicks, network channels, modes, invites and derived space
//! membership restated as plain maps and booleans, written from the product rules rather than from the core.
//!
//! The model decides whether each command is accepted (and with which refusal), what it changes, whether it
//! changes nothing, and who must hear about the changes that go to a fixed list of users (quits, nick changes,
//! presence). The runner compares all of that with the core after every step.

use std::collections::{BTreeMap, BTreeSet};

use chat_core::{
    ChannelId, ChannelKind, ClientId, Created, Event, EventKind, MessageId, RoleId, SpaceId, UserId,
};

/// How long a client may stay idle; short so that runs see expiry.
pub(super) const IDLE_MS: u64 = 10_000;
/// A client's activity moves its idle deadline at most this often.
const TOUCH_MS: u64 = 1_000;
/// A user's typing in a channel is announced at most this often.
const TYPING_MS: u64 = 5_000;

/// A refusal, named as `chat_core::Error::name` names it.
pub(super) type Refusal = &'static str;

/// A set of users (an audience).
pub(super) type Users = BTreeSet<UserId>;

/// Who may enter each `+i` channel before an input: its invited users and the server's operators.
pub(super) type Gate = BTreeMap<ChannelId, Users>;

/// Who acts, once the runner resolved the operation's origin.
#[derive(Clone, Copy, Debug)]
pub(super) enum Act {
    /// No client yet (register, login).
    Anon,
    /// The server's operator.
    Sys,
    /// A live client of a user.
    Client(UserId, ClientId),
    /// A client that logged out or expired.
    Dead,
}

/// The concrete command the model judges (the runner turns it into a `chat_core::Command`).
#[derive(Clone, Debug)]
pub(super) enum MOp {
    Register {
        nick: String,
        account: bool,
    },
    Login {
        user: UserId,
    },
    Logout,
    Quit,
    Connect {
        up: bool,
    },
    Touch,
    Nick {
        nick: String,
    },
    Join {
        name: String,
        key: Option<String>,
    },
    Part {
        name: String,
    },
    Kick {
        name: String,
        nick: String,
    },
    Invite {
        name: String,
        nick: String,
    },
    Topic {
        name: String,
        text: String,
    },
    Mode {
        name: String,
        modes: String,
        args: Vec<String>,
    },
    Say {
        name: String,
    },
    Dm {
        nick: String,
    },
    React {
        message: MessageId,
        emoji: String,
    },
    CreateInvite {
        channel: ChannelId,
        max_uses: u32,
        max_age_secs: u32,
    },
    UseInvite {
        code: String,
    },
    DeleteChan {
        channel: ChannelId,
    },
    Operator {
        user: UserId,
        on: bool,
    },
    CreateSpace {
        public: bool,
    },
    JoinSpace {
        space: SpaceId,
    },
    LeaveSpace {
        space: SpaceId,
    },
    CreateRole {
        space: SpaceId,
    },
    HideGeneral {
        space: SpaceId,
        hide: bool,
    },
    RoleView {
        space: SpaceId,
        role: RoleId,
        allow: bool,
    },
    SetRoles {
        space: SpaceId,
        user: UserId,
        roles: Vec<RoleId>,
    },
    SaySpace {
        space: SpaceId,
    },
    Typing {
        name: String,
    },
}

/// An event whose audience is a list fixed when it is made, identified by kind and subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Heard {
    Quit(UserId),
    Nick(UserId),
    Presence(UserId),
}

/// What an accepted command (or a timer) should have done besides the state the runner compares.
#[derive(Clone, Debug, Default)]
pub(super) struct Outcome {
    /// The command changes nothing visible: no events.
    pub(super) quiet: bool,
    /// The fixed-list events it makes, in order, with who must receive each.
    pub(super) heard: Vec<(Heard, Users)>,
    /// It joined through an invite link (which passes `+i`).
    pub(super) by_link: bool,
    /// Who hears of a channel deleted while it had members (everyone else hears of none).
    pub(super) deleted_for: Users,
}

impl Outcome {
    fn loud() -> Self {
        Self::default()
    }

    fn quiet() -> Self {
        Self {
            quiet: true,
            ..Self::default()
        }
    }

    fn heard(heard: Vec<(Heard, Users)>) -> Self {
        Self {
            heard,
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct MClient {
    pub(super) id: ClientId,
    pub(super) last_seen: u64,
    pub(super) conns: u32,
}

#[derive(Clone, Debug)]
pub(super) struct MUser {
    pub(super) nick: String,
    pub(super) guest: bool,
    pub(super) released: bool,
    /// Holds the network's Server Operator role.
    pub(super) admin: bool,
    pub(super) clients: Vec<MClient>,
}

/// A network channel.
#[derive(Clone, Debug)]
pub(super) struct MChan {
    pub(super) id: ChannelId,
    /// Members with (op, voice).
    pub(super) members: BTreeMap<UserId, (bool, bool)>,
    pub(super) invite_only: bool,
    pub(super) moderated: bool,
    pub(super) no_external: bool,
    pub(super) secret: bool,
    pub(super) topic_lock: bool,
    pub(super) key: Option<String>,
    pub(super) limit: Option<u32>,
    pub(super) bans: Vec<String>,
    /// Who each ban (same index) binds whatever their nick: those matched when set or on leaving a nick.
    pub(super) bans_bound: Vec<Users>,
    pub(super) invited: Users,
    pub(super) topic: Option<String>,
}

#[derive(Clone, Debug)]
pub(super) struct MMsg {
    pub(super) id: MessageId,
    pub(super) channel: ChannelId,
    pub(super) reactions: BTreeMap<String, Users>,
}

#[derive(Clone, Debug)]
pub(super) struct MInvite {
    pub(super) code: String,
    pub(super) channel: ChannelId,
    pub(super) creator: UserId,
    pub(super) max_uses: u32,
    pub(super) uses: u32,
    pub(super) expires: Option<u64>,
    pub(super) alive: bool,
}

/// A space other than the network, with its one text channel `general`.
#[derive(Clone, Debug)]
pub(super) struct MSpace {
    pub(super) id: SpaceId,
    pub(super) owner: UserId,
    pub(super) public: bool,
    pub(super) general: ChannelId,
    pub(super) members: BTreeMap<UserId, BTreeSet<RoleId>>,
    pub(super) roles: Vec<RoleId>,
    /// The @everyone overwrite on `general`, if set: whether it denies VIEW_CHANNEL.
    pub(super) hide: Option<bool>,
    /// Role overwrites on `general`: whether each allows VIEW_CHANNEL.
    pub(super) role_view: BTreeMap<RoleId, bool>,
}

#[derive(Clone, Debug)]
pub(super) struct Model {
    pub(super) now: u64,
    pub(super) system: UserId,
    pub(super) users: BTreeMap<UserId, MUser>,
    /// Folded nick to holder, the server's own nick included.
    pub(super) nicks: BTreeMap<String, UserId>,
    /// Folded name to network channel.
    pub(super) chans: BTreeMap<String, MChan>,
    /// Network channels that existed and were removed (their ids make good stale references).
    pub(super) dead_chans: Vec<ChannelId>,
    /// Removed network channels that were `+s` when they went (their deletion reaches nobody).
    pub(super) dead_secret: BTreeSet<ChannelId>,
    pub(super) dms: BTreeMap<(UserId, UserId), ChannelId>,
    pub(super) msgs: Vec<MMsg>,
    pub(super) invites: Vec<MInvite>,
    pub(super) spaces: Vec<MSpace>,
    /// When each user last announced typing in each channel.
    pub(super) typing: BTreeMap<(UserId, ChannelId), u64>,
}

/// IRC's `ascii` casemapping: only A-Z fold.
pub(super) fn fold(name: &str) -> String {
    name.chars().map(|c| c.to_ascii_lowercase()).collect()
}

fn valid_nick(nick: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-[]\\^{}|`".contains(c);
    match nick.chars().next() {
        None => false,
        Some(first) => {
            nick.len() <= 32 && !first.is_ascii_digit() && first != '-' && nick.chars().all(ok)
        }
    }
}

fn valid_channel(name: &str) -> bool {
    match name.strip_prefix('#') {
        None => false,
        Some(rest) => {
            let n = rest.chars().count();
            (1..=63).contains(&n) && !rest.chars().any(|c| " ,:".contains(c) || c.is_control())
        }
    }
}

/// A ban mask against a nick: `*` any run, `?` one character, ASCII case-insensitive, nick part only.
fn glob(mask: &str, nick: &str) -> bool {
    fn go(m: &[u8], n: &[u8]) -> bool {
        match (m.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&m[1..], n) || (!n.is_empty() && go(m, &n[1..])),
            (Some(b'?'), Some(_)) => go(&m[1..], &n[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&m[1..], &n[1..]),
            _ => false,
        }
    }
    let mask = mask.split('!').next().unwrap_or(mask);
    go(mask.as_bytes(), nick.as_bytes())
}

/// The key of a network channel known by id.
fn fold_key(chans: &BTreeMap<String, MChan>, id: ChannelId) -> String {
    chans
        .iter()
        .find(|(_, c)| c.id == id)
        .map(|(k, _)| k.clone())
        .expect("a channel the model holds")
}

impl MChan {
    /// The IRC mode string: flag letters in `imnstkl` order, then the key (`*` unless `member`) and limit.
    pub(super) fn mode_string(&self, member: bool) -> String {
        let flags = [
            (self.invite_only, 'i'),
            (self.moderated, 'm'),
            (self.no_external, 'n'),
            (self.secret, 's'),
            (self.topic_lock, 't'),
            (self.key.is_some(), 'k'),
            (self.limit.is_some(), 'l'),
        ];
        let letters: String = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, l)| *l)
            .collect();
        if letters.is_empty() {
            return String::new();
        }
        let mut out = format!("+{letters}");
        if let Some(key) = &self.key {
            out.push(' ');
            out.push_str(if member { key } else { "*" });
        }
        if let Some(l) = self.limit {
            out.push_str(&format!(" {l}"));
        }
        out
    }

    fn new(id: ChannelId, creator: UserId) -> Self {
        Self {
            id,
            members: BTreeMap::from([(creator, (true, false))]),
            invite_only: false,
            moderated: false,
            no_external: true,
            secret: false,
            topic_lock: true,
            key: None,
            limit: None,
            bans: Vec::new(),
            bans_bound: Vec::new(),
            invited: Users::new(),
            topic: None,
        }
    }

    fn op(&self, u: UserId) -> bool {
        self.members.get(&u).is_some_and(|m| m.0)
    }

    fn voice(&self, u: UserId) -> bool {
        self.members.get(&u).is_some_and(|m| m.1)
    }

    pub(super) fn ops(&self) -> Users {
        self.members
            .iter()
            .filter(|(_, m)| m.0)
            .map(|(u, _)| *u)
            .collect()
    }
}

impl MSpace {
    /// Whether a user sees `general`: members only; the owner always; else @everyone's VIEW unless the
    /// @everyone overwrite denies it, given back by a role overwrite that allows it.
    pub(super) fn sees(&self, u: UserId) -> bool {
        let Some(roles) = self.members.get(&u) else {
            return false;
        };
        if self.owner == u {
            return true;
        }
        let by_role = roles.iter().any(|r| self.role_view.get(r) == Some(&true));
        self.hide != Some(true) || by_role
    }

    pub(super) fn viewers(&self) -> Users {
        self.members
            .keys()
            .copied()
            .filter(|u| self.sees(*u))
            .collect()
    }
}

impl Model {
    pub(super) fn new(now: u64, system: UserId, system_nick: &str) -> Self {
        let mut users = BTreeMap::new();
        users.insert(
            system,
            MUser {
                nick: system_nick.to_owned(),
                guest: false,
                released: false,
                admin: true,
                clients: Vec::new(),
            },
        );
        Self {
            now,
            system,
            users,
            nicks: BTreeMap::from([(fold(system_nick), system)]),
            chans: BTreeMap::new(),
            dead_chans: Vec::new(),
            dead_secret: BTreeSet::new(),
            dms: BTreeMap::new(),
            msgs: Vec::new(),
            invites: Vec::new(),
            spaces: Vec::new(),
            typing: BTreeMap::new(),
        }
    }

    // --- queries ------------------------------------------------------------------------------------------

    /// The `+i` gate as it stands, to check afterwards that nobody else got in.
    pub(super) fn gate(&self) -> Gate {
        let admins = self
            .users
            .iter()
            .filter(|(_, u)| u.admin)
            .map(|(id, _)| *id);
        self.chans
            .values()
            .filter(|c| c.invite_only)
            .map(|c| {
                (
                    c.id,
                    c.invited.iter().copied().chain(admins.clone()).collect(),
                )
            })
            .collect()
    }

    fn user(&self, u: UserId) -> &MUser {
        &self.users[&u]
    }

    fn admin(&self, u: UserId) -> bool {
        self.users.get(&u).is_some_and(|x| x.admin)
    }

    pub(super) fn online(&self, u: UserId) -> bool {
        self.user(u).clients.iter().any(|c| c.conns > 0)
    }

    /// The holder of a nick that commands may name (not the server's own user).
    fn resolve_nick(&self, nick: &str) -> Option<UserId> {
        self.nicks
            .get(&fold(nick))
            .copied()
            .filter(|u| *u != self.system)
    }

    pub(super) fn chan_by_id(&self, id: ChannelId) -> Option<&MChan> {
        self.chans.values().find(|c| c.id == id)
    }

    fn banned(&self, c: &MChan, u: UserId) -> bool {
        let nick = &self.user(u).nick;
        c.bans.iter().any(|m| glob(m, nick)) || c.bans_bound.iter().any(|b| b.contains(&u))
    }

    /// May see the channel (hence join it): a member, or anyone not banned whom `+i` does not keep out (an
    /// invite opens `+i`, but is no unban). Operators are handled by the callers (they bypass everything).
    fn view(&self, c: &MChan, u: UserId) -> bool {
        c.members.contains_key(&u)
            || (!self.banned(c, u) && (c.invited.contains(&u) || !c.invite_only))
    }

    /// May speak (and add a new reaction): ops and voiced members always, others unless `+m` or a ban.
    fn speak(&self, c: &MChan, u: UserId) -> bool {
        self.view(c, u) && (c.op(u) || c.voice(u) || (!c.moderated && !self.banned(c, u)))
    }

    /// The user, everyone sharing a network channel or a DM with them, and the members of their spaces other
    /// than the network (Discord tells guild members; telling the network would tell every user).
    pub(super) fn peers(&self, u: UserId) -> Users {
        let mut peers = Users::from([u]);
        for c in self.chans.values() {
            if c.members.contains_key(&u) {
                peers.extend(c.members.keys());
            }
        }
        for (a, b) in self.dms.keys() {
            if *a == u || *b == u {
                peers.extend([*a, *b]);
            }
        }
        for s in &self.spaces {
            if s.members.contains_key(&u) {
                peers.extend(s.members.keys());
            }
        }
        peers
    }

    /// Who receives a channel's events now: network channel members, DM parties, or a space channel's
    /// viewers; nobody for a channel that is gone.
    pub(super) fn channel_audience(&self, id: ChannelId) -> Users {
        if let Some(c) = self.chan_by_id(id) {
            return c.members.keys().copied().collect();
        }
        if let Some((pair, _)) = self.dms.iter().find(|(_, c)| **c == id) {
            return Users::from([pair.0, pair.1]);
        }
        if let Some(s) = self.spaces.iter().find(|s| s.general == id) {
            return s.viewers();
        }
        Users::new()
    }

    /// The members of a space; for the network, every user not released (the server's own user too).
    pub(super) fn space_members(&self, id: SpaceId, network: SpaceId) -> Users {
        if id == network {
            return self
                .users
                .iter()
                .filter(|(_, u)| !u.released)
                .map(|(id, _)| *id)
                .collect();
        }
        self.spaces
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.members.keys().copied().collect())
            .unwrap_or_default()
    }

    fn space(&self, id: SpaceId) -> &MSpace {
        // The runner only names spaces the model created.
        self.spaces
            .iter()
            .find(|s| s.id == id)
            .expect("a known space")
    }

    fn space_mut(&mut self, id: SpaceId) -> &mut MSpace {
        self.spaces
            .iter_mut()
            .find(|s| s.id == id)
            .expect("a known space")
    }

    /// The earliest time a timer is due: an idle client or an expiring invite.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        let clients = self
            .users
            .values()
            .flat_map(|u| u.clients.iter().map(|c| c.last_seen + IDLE_MS));
        let invites = self
            .invites
            .iter()
            .filter(|i| i.alive)
            .filter_map(|i| i.expires);
        clients.chain(invites).min()
    }

    /// Whether a message can still be acted on: its channel still exists.
    pub(super) fn msg_alive(&self, m: &MMsg) -> bool {
        self.chan_by_id(m.channel).is_some()
            || self.dms.values().any(|c| *c == m.channel)
            || self.spaces.iter().any(|s| s.general == m.channel)
    }

    // --- changes ------------------------------------------------------------------------------------------

    fn remove_member(&mut self, key: &str, u: UserId) {
        let Some(c) = self.chans.get_mut(key) else {
            return;
        };
        c.members.remove(&u);
        if c.members.is_empty() {
            let id = c.id;
            if c.secret {
                self.dead_secret.insert(id);
            }
            self.chans.remove(key);
            self.dead_chans.push(id);
            for inv in &mut self.invites {
                if inv.channel == id {
                    inv.alive = false;
                }
            }
        }
    }

    fn leave_network(&mut self, u: UserId) {
        let keys: Vec<String> = self
            .chans
            .iter()
            .filter(|(_, c)| c.members.contains_key(&u))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.remove_member(&k, u);
        }
    }

    /// A guest's session ends: it quits every network channel, leaves every space, frees its nick.
    fn release(&mut self, u: UserId) -> Vec<(Heard, Users)> {
        let peers = self.peers(u);
        self.leave_network(u);
        for s in &mut self.spaces {
            s.members.remove(&u);
        }
        for c in self.chans.values_mut() {
            c.invited.remove(&u);
        }
        let user = self.users.get_mut(&u).expect("a known user");
        user.clients.clear();
        user.released = true;
        user.admin = false;
        let key = fold(&user.nick);
        if self.nicks.get(&key) == Some(&u) {
            self.nicks.remove(&key);
        }
        vec![(Heard::Quit(u), peers)]
    }

    /// A client goes away (logout or expiry); a guest left without clients is released.
    fn drop_client(&mut self, u: UserId, c: ClientId) -> Vec<(Heard, Users)> {
        let was = self.online(u);
        let user = self.users.get_mut(&u).expect("a known user");
        user.clients.retain(|x| x.id != c);
        if user.guest && user.clients.is_empty() {
            return self.release(u);
        }
        if was != self.online(u) {
            return vec![(Heard::Presence(u), self.peers(u))];
        }
        Vec::new()
    }

    /// The clock reached `now`: idle clients expire in deadline order (a client with a live connection is in
    /// use and starts a new idle period instead), then invites.
    pub(super) fn expire(&mut self, now: u64) -> Outcome {
        self.now = now;
        let mut due: Vec<(u64, ClientId, UserId)> = self
            .users
            .iter()
            .flat_map(|(u, user)| {
                user.clients
                    .iter()
                    .map(move |c| (c.last_seen + IDLE_MS, c.id, *u))
            })
            .filter(|(at, _, _)| *at <= now)
            .collect();
        due.sort();
        let mut out = Outcome::quiet();
        for (_, c, u) in due {
            let user = self.users.get_mut(&u).expect("a known user");
            match user.clients.iter_mut().find(|x| x.id == c) {
                Some(client) if client.conns > 0 => client.last_seen = now,
                Some(_) => {
                    out.quiet = false;
                    out.heard.extend(self.drop_client(u, c));
                }
                None => {}
            }
        }
        for inv in &mut self.invites {
            if inv.alive && inv.expires.is_some_and(|at| at <= now) {
                inv.alive = false;
                out.quiet = false;
            }
        }
        out
    }

    fn touch(&mut self, u: UserId, c: ClientId) {
        let now = self.now;
        if let Some(client) = self
            .users
            .get_mut(&u)
            .and_then(|x| x.clients.iter_mut().find(|x| x.id == c))
            && now >= client.last_seen + TOUCH_MS
        {
            client.last_seen = now;
        }
    }

    /// Judges one command and, when it is accepted, applies it. `created` and `events` are the core's answer,
    /// read only for the ids of what the command made; when the core refused what the model accepts, the
    /// model returns its verdict without the ids and the runner reports the disagreement.
    pub(super) fn step(
        &mut self,
        now: u64,
        act: Act,
        op: &MOp,
        created: Option<&Created>,
        events: &[Event],
    ) -> Result<Outcome, Refusal> {
        self.now = now;
        let (me, client) = match act {
            Act::Dead => return Err("no_such_client"),
            Act::Client(u, c) => (Some(u), Some(c)),
            Act::Sys | Act::Anon => (None, None),
        };
        let out = self.judge(me, client, op, created, events)?;
        if let Act::Client(u, c) = act {
            self.touch(u, c);
        }
        Ok(out)
    }

    fn judge(
        &mut self,
        me: Option<UserId>,
        client: Option<ClientId>,
        op: &MOp,
        created: Option<&Created>,
        events: &[Event],
    ) -> Result<Outcome, Refusal> {
        // The acting user: the server's own user for the operator.
        let actor = me.unwrap_or(self.system);
        let sys = me.is_none();
        match op {
            MOp::Register { nick, account } => {
                if !valid_nick(nick) {
                    return Err("erroneous_nick");
                }
                if self.nicks.contains_key(&fold(nick)) {
                    return Err("nick_in_use");
                }
                let Some(Created::User {
                    user,
                    client: Some(client),
                }) = created
                else {
                    return Ok(Outcome::loud());
                };
                self.users.insert(
                    *user,
                    MUser {
                        nick: nick.clone(),
                        guest: !account,
                        released: false,
                        admin: false,
                        clients: vec![MClient {
                            id: *client,
                            last_seen: self.now,
                            conns: 0,
                        }],
                    },
                );
                self.nicks.insert(fold(nick), *user);
                Ok(Outcome::loud())
            }
            MOp::Login { user } => {
                if self.user(*user).released {
                    return Err("no_such_nick");
                }
                let Some(Created::Client(client)) = created else {
                    return Ok(Outcome::loud());
                };
                let now = self.now;
                self.users
                    .get_mut(user)
                    .expect("a known user")
                    .clients
                    .push(MClient {
                        id: *client,
                        last_seen: now,
                        conns: 0,
                    });
                Ok(Outcome::loud())
            }
            MOp::Logout => {
                let (Some(u), Some(c)) = (me, client) else {
                    return Err("no_such_client");
                };
                Ok(Outcome::heard(self.drop_client(u, c)))
            }
            MOp::Quit => {
                let Some(u) = me else {
                    return Err("not_supported");
                };
                if self.user(u).guest {
                    return Ok(Outcome::heard(self.release(u)));
                }
                let peers = self.peers(u);
                self.leave_network(u);
                Ok(Outcome::heard(vec![(Heard::Quit(u), peers)]))
            }
            MOp::Connect { up } => {
                let (Some(u), Some(client)) = (me, client) else {
                    return Err("no_such_client");
                };
                let was = self.online(u);
                let user = self.users.get_mut(&u).expect("a known user");
                if let Some(c) = user.clients.iter_mut().find(|c| c.id == client) {
                    c.conns = if *up {
                        c.conns + 1
                    } else {
                        c.conns.saturating_sub(1)
                    };
                }
                if was == self.online(u) {
                    Ok(Outcome::quiet())
                } else {
                    Ok(Outcome::heard(vec![(Heard::Presence(u), self.peers(u))]))
                }
            }
            MOp::Touch => Ok(Outcome::quiet()),
            MOp::Nick { nick } => {
                let Some(u) = me else {
                    return Err("not_supported");
                };
                if !valid_nick(nick) {
                    return Err("erroneous_nick");
                }
                if self.user(u).nick == *nick {
                    return Ok(Outcome::quiet());
                }
                if self.nicks.get(&fold(nick)).is_some_and(|h| *h != u) {
                    return Err("nick_in_use");
                }
                let peers = self.peers(u);
                // Every ban that matches the nick being left binds its holder.
                let leaving = self.user(u).nick.clone();
                for c in self.chans.values_mut() {
                    for (mask, bound) in c.bans.iter().zip(c.bans_bound.iter_mut()) {
                        if glob(mask, &leaving) {
                            bound.insert(u);
                        }
                    }
                }
                let old = std::mem::replace(
                    &mut self.users.get_mut(&u).expect("a known user").nick,
                    nick.clone(),
                );
                self.nicks.remove(&fold(&old));
                self.nicks.insert(fold(nick), u);
                Ok(Outcome::heard(vec![(Heard::Nick(u), peers)]))
            }
            MOp::Join { name, key } => {
                let Some(u) = me else {
                    return Err("not_supported");
                };
                if !valid_channel(name) {
                    return Err("bad_channel_name");
                }
                let k = fold(name);
                let Some(c) = self.chans.get(&k) else {
                    let Some(Created::Channel(id)) = created else {
                        return Ok(Outcome::loud());
                    };
                    self.chans.insert(k, MChan::new(*id, u));
                    return Ok(Outcome::loud());
                };
                if c.members.contains_key(&u) {
                    return Ok(Outcome::quiet());
                }
                if !self.admin(u) {
                    if !self.view(c, u) {
                        if self.banned(c, u) {
                            return Err("banned");
                        }
                        return Err(if c.invite_only {
                            "invite_only"
                        } else {
                            "privileges_needed"
                        });
                    }
                    if !c.invited.contains(&u) {
                        if c.key.is_some() && c.key != *key {
                            return Err("bad_key");
                        }
                        if c.limit.is_some_and(|l| c.members.len() >= l as usize) {
                            return Err("channel_full");
                        }
                    }
                }
                let c = self.chans.get_mut(&k).expect("checked above");
                c.members.insert(u, (false, false));
                c.invited.remove(&u);
                Ok(Outcome::loud())
            }
            MOp::Part { name } => {
                let k = fold(name);
                let c = self.chans.get(&k).ok_or("no_such_channel")?;
                if !c.members.contains_key(&actor) {
                    return Err("not_on_channel");
                }
                self.remove_member(&k, actor);
                Ok(Outcome::loud())
            }
            MOp::Kick { name, nick } => {
                let k = fold(name);
                let c = self.chans.get(&k).ok_or("no_such_channel")?;
                let target = self.resolve_nick(nick).ok_or("no_such_nick")?;
                self.on_channel(sys, c, actor)?;
                if !(sys || self.admin(actor) || c.op(actor)) {
                    return Err("privileges_needed");
                }
                if !c.members.contains_key(&target) {
                    return Err("user_not_in_channel");
                }
                self.remove_member(&k, target);
                Ok(Outcome::loud())
            }
            MOp::Invite { name, nick } => {
                let k = fold(name);
                let c = self.chans.get(&k).ok_or("no_such_channel")?;
                let target = self.resolve_nick(nick).ok_or("no_such_nick")?;
                self.on_channel(sys, c, actor)?;
                // Anyone on the channel may invite, except to a `+i` channel, where it takes an operator.
                if c.invite_only && !(sys || self.admin(actor) || c.op(actor)) {
                    return Err("privileges_needed");
                }
                if c.members.contains_key(&target) {
                    return Err("user_on_channel");
                }
                if c.invited.contains(&target) {
                    return Ok(Outcome::quiet());
                }
                self.chans
                    .get_mut(&k)
                    .expect("checked above")
                    .invited
                    .insert(target);
                Ok(Outcome::loud())
            }
            MOp::Topic { name, text } => {
                let k = fold(name);
                let c = self.chans.get(&k).ok_or("no_such_channel")?;
                self.on_channel(sys, c, actor)?;
                if c.topic_lock && !(sys || self.admin(actor) || c.op(actor)) {
                    return Err("privileges_needed");
                }
                let topic = (!text.is_empty()).then(|| text.clone());
                if c.topic == topic {
                    return Ok(Outcome::quiet());
                }
                self.chans.get_mut(&k).expect("checked above").topic = topic;
                Ok(Outcome::loud())
            }
            MOp::Mode { name, modes, args } => {
                let k = fold(name);
                let c = self.chans.get(&k).ok_or("no_such_channel")?;
                // As IRC servers do, the permission is checked before the arguments: only the letters are
                // looked at first (an unknown one is refused at once).
                if modes.is_empty() {
                    return Err("need_more_params");
                }
                if modes.chars().any(|l| !"+-imnstklbov".contains(l)) {
                    return Err("unknown_mode");
                }
                if modes.chars().any(|l| l != '+' && l != '-') {
                    self.on_channel(sys, c, actor)?;
                    if !(sys || self.admin(actor) || c.op(actor)) {
                        return Err("privileges_needed");
                    }
                }
                let (after, changed) = self.parse_modes(c, modes, args)?;
                if changed == 0 {
                    return Ok(Outcome::quiet());
                }
                self.chans.insert(k, after);
                Ok(Outcome::loud())
            }
            MOp::Say { name } => {
                let c = self.chans.get(&fold(name)).ok_or("no_such_channel")?;
                if !sys {
                    let admin = self.admin(actor);
                    let member = c.members.contains_key(&actor);
                    if !(admin || self.view(c, actor))
                        || (c.no_external && !member)
                        || !(admin || self.speak(c, actor))
                    {
                        return Err("cannot_send");
                    }
                }
                let channel = c.id;
                self.record(channel, created);
                Ok(Outcome::loud())
            }
            MOp::Dm { nick } => {
                let other = self.resolve_nick(nick).ok_or("no_such_nick")?;
                if other == actor {
                    return Err("invalid_input");
                }
                let pair = (actor.min(other), actor.max(other));
                let channel = match self.dms.get(&pair) {
                    Some(c) => *c,
                    None => {
                        let Some(id) = events.iter().find_map(|e| match &e.kind {
                            EventKind::ChannelCreated { channel, .. }
                                if channel.kind == ChannelKind::Dm =>
                            {
                                Some(channel.id)
                            }
                            _ => None,
                        }) else {
                            return Ok(Outcome::loud());
                        };
                        self.dms.insert(pair, id);
                        id
                    }
                };
                self.record(channel, created);
                Ok(Outcome::loud())
            }
            MOp::React { message, emoji } => {
                let m = self
                    .msgs
                    .iter()
                    .find(|m| m.id == *message)
                    .expect("a known message");
                if !self.msg_alive(m) {
                    return Err("no_such_message");
                }
                let (visible, may_add) = self.reaction_rights(sys, actor, m.channel);
                if !visible {
                    return Err("no_such_message");
                }
                let users = m.reactions.get(emoji);
                if users.is_some_and(|r| r.contains(&actor)) {
                    return Ok(Outcome::quiet());
                }
                if users.is_none() && !may_add {
                    return Err("privileges_needed");
                }
                let m = self
                    .msgs
                    .iter_mut()
                    .find(|m| m.id == *message)
                    .expect("found above");
                m.reactions.entry(emoji.clone()).or_default().insert(actor);
                Ok(Outcome::loud())
            }
            MOp::CreateInvite {
                channel,
                max_uses,
                max_age_secs,
            } => {
                let c = self.chan_by_id(*channel).ok_or("no_such_channel")?;
                if !sys {
                    if !(self.admin(actor) || self.view(c, actor)) {
                        return Err("no_such_channel");
                    }
                    if !c.members.contains_key(&actor) {
                        return Err("not_on_channel");
                    }
                    if c.invite_only && !(self.admin(actor) || c.op(actor)) {
                        return Err("privileges_needed");
                    }
                }
                let Some(Created::Invite(code)) = created else {
                    return Ok(Outcome::loud());
                };
                self.invites.push(MInvite {
                    code: code.clone(),
                    channel: *channel,
                    creator: actor,
                    max_uses: *max_uses,
                    uses: 0,
                    expires: (*max_age_secs > 0)
                        .then(|| self.now + u64::from(*max_age_secs) * 1000),
                    alive: true,
                });
                Ok(Outcome::loud())
            }
            MOp::UseInvite { code } => {
                let inv = self
                    .invites
                    .iter()
                    .find(|i| i.code == *code)
                    .expect("a known invite");
                if !inv.alive || inv.expires.is_some_and(|at| at <= self.now) {
                    return Err("no_such_invite");
                }
                if sys {
                    return Err("not_supported");
                }
                let k = fold_key(&self.chans, inv.channel);
                if self.chans[&k].members.contains_key(&actor) {
                    return Err("user_on_channel");
                }
                let inv = self
                    .invites
                    .iter_mut()
                    .find(|i| i.code == *code)
                    .expect("found above");
                inv.uses += 1;
                if inv.max_uses > 0 && inv.uses >= inv.max_uses {
                    inv.alive = false;
                }
                let c = self.chans.get_mut(&k).expect("found above");
                c.members.insert(actor, (false, false));
                c.invited.remove(&actor);
                Ok(Outcome {
                    by_link: true,
                    ..Outcome::loud()
                })
            }
            MOp::DeleteChan { channel } => {
                let c = self.chan_by_id(*channel).ok_or("no_such_channel")?;
                // A network channel lives while it has members; only the server's operators remove one.
                if !sys && !self.admin(actor) {
                    return Err("privileges_needed");
                }
                let deleted_for: Users = c.members.keys().copied().collect();
                let k = fold_key(&self.chans, *channel);
                for u in &deleted_for {
                    self.remove_member(&k, *u);
                }
                Ok(Outcome {
                    deleted_for,
                    ..Outcome::loud()
                })
            }
            MOp::Operator { user, on } => {
                // The network's member roles: only the operator (or an administrator, who may not touch a
                // role as high as their own) may change them.
                if !sys && !self.admin(actor) {
                    return Err("privileges_needed");
                }
                if self.user(*user).released {
                    return Err("no_such_nick");
                }
                if self.user(*user).admin == *on {
                    return Ok(Outcome::quiet());
                }
                if !sys {
                    return Err("role_hierarchy");
                }
                self.users.get_mut(user).expect("a known user").admin = *on;
                Ok(Outcome::loud())
            }
            MOp::CreateSpace { public } => {
                if !sys && self.user(actor).guest {
                    return Err("not_supported");
                }
                let Some(Created::Space(id)) = created else {
                    return Ok(Outcome::loud());
                };
                let general = events
                    .iter()
                    .find_map(|e| match &e.kind {
                        EventKind::ChannelCreated { channel, .. } if channel.space == Some(*id) => {
                            Some(channel.id)
                        }
                        _ => None,
                    })
                    .expect("a new space has its general channel");
                self.spaces.push(MSpace {
                    id: *id,
                    owner: actor,
                    public: *public,
                    general,
                    members: BTreeMap::from([(actor, BTreeSet::new())]),
                    roles: Vec::new(),
                    hide: None,
                    role_view: BTreeMap::new(),
                });
                Ok(Outcome::loud())
            }
            MOp::JoinSpace { space } => {
                let s = self.space(*space);
                if s.members.contains_key(&actor) {
                    return Err("already_member");
                }
                if !s.public {
                    return Err("no_such_space");
                }
                if sys {
                    return Err("not_supported");
                }
                self.space_mut(*space)
                    .members
                    .insert(actor, BTreeSet::new());
                Ok(Outcome::loud())
            }
            MOp::LeaveSpace { space } => {
                let s = self.space(*space);
                if !sys && !s.members.contains_key(&actor) {
                    return Err("no_such_space");
                }
                if sys || s.owner == actor {
                    return Err("not_supported");
                }
                self.space_mut(*space).members.remove(&actor);
                Ok(Outcome::loud())
            }
            MOp::CreateRole { space } => {
                self.space_admin(sys, actor, *space)?;
                let Some(Created::Role(role)) = created else {
                    return Ok(Outcome::loud());
                };
                self.space_mut(*space).roles.push(*role);
                Ok(Outcome::loud())
            }
            MOp::HideGeneral { space, hide } => {
                self.overwrite_rights(sys, actor, *space)?;
                let s = self.space_mut(*space);
                if s.hide == Some(*hide) {
                    return Ok(Outcome::quiet());
                }
                s.hide = Some(*hide);
                Ok(Outcome::loud())
            }
            MOp::RoleView { space, role, allow } => {
                self.overwrite_rights(sys, actor, *space)?;
                let s = self.space_mut(*space);
                if s.role_view.get(role) == Some(allow) {
                    return Ok(Outcome::quiet());
                }
                s.role_view.insert(*role, *allow);
                Ok(Outcome::loud())
            }
            MOp::SetRoles { space, user, roles } => {
                self.space_admin(sys, actor, *space)?;
                let s = self.space(*space);
                let new: BTreeSet<RoleId> = roles.iter().copied().collect();
                let old = s.members.get(user).ok_or("no_such_nick")?;
                if *old == new {
                    return Ok(Outcome::quiet());
                }
                self.space_mut(*space).members.insert(*user, new);
                Ok(Outcome::loud())
            }
            MOp::Typing { name } => {
                let c = self.chans.get(&fold(name)).ok_or("no_such_channel")?;
                if !c.members.contains_key(&actor) {
                    return Err("not_on_channel");
                }
                // Typing is announced only where the user could send what they type.
                if !(self.admin(actor) || self.speak(c, actor)) {
                    return Err("cannot_send");
                }
                let key = (actor, c.id);
                if self
                    .typing
                    .get(&key)
                    .is_some_and(|at| self.now < at + TYPING_MS)
                {
                    return Ok(Outcome::quiet());
                }
                self.typing.insert(key, self.now);
                Ok(Outcome::loud())
            }
            MOp::SaySpace { space } => {
                let s = self.space(*space);
                if !sys && !s.sees(actor) {
                    return Err("no_such_channel");
                }
                let general = s.general;
                self.record(general, created);
                Ok(Outcome::loud())
            }
        }
    }

    /// IRC asks channel operators to be on the channel they act on; operators of the server need not be.
    fn on_channel(&self, sys: bool, c: &MChan, actor: UserId) -> Result<(), Refusal> {
        if sys || c.members.contains_key(&actor) || self.admin(actor) {
            Ok(())
        } else {
            Err("not_on_channel")
        }
    }

    /// Space roles and overwrites are managed by the space's owner (and the server's operator).
    fn space_admin(&self, sys: bool, actor: UserId, space: SpaceId) -> Result<(), Refusal> {
        let s = self.space(space);
        if !sys && !s.members.contains_key(&actor) {
            return Err("no_such_space");
        }
        if !sys && s.owner != actor {
            return Err("privileges_needed");
        }
        Ok(())
    }

    /// Setting an overwrite on `general` needs seeing it, then managing roles there (the owner).
    fn overwrite_rights(&self, sys: bool, actor: UserId, space: SpaceId) -> Result<(), Refusal> {
        let s = self.space(space);
        if !sys && !s.sees(actor) {
            return Err("no_such_channel");
        }
        if !sys && s.owner != actor {
            return Err("privileges_needed");
        }
        Ok(())
    }

    /// Whether the actor may see a message's channel (and is on it) and may add a new reaction there.
    fn reaction_rights(&self, sys: bool, actor: UserId, channel: ChannelId) -> (bool, bool) {
        if sys {
            return (true, true);
        }
        if let Some(c) = self.chan_by_id(channel) {
            if self.admin(actor) {
                return (true, true);
            }
            let visible = c.members.contains_key(&actor) && self.view(c, actor);
            return (visible, self.speak(c, actor));
        }
        if let Some((pair, _)) = self.dms.iter().find(|(_, c)| **c == channel) {
            let member = pair.0 == actor || pair.1 == actor;
            return (member, member);
        }
        let s = self
            .spaces
            .iter()
            .find(|s| s.general == channel)
            .expect("a known channel");
        let sees = s.sees(actor);
        (sees, sees)
    }

    fn record(&mut self, channel: ChannelId, created: Option<&Created>) {
        if let Some(Created::Message(id)) = created {
            self.msgs.push(MMsg {
                id: *id,
                channel,
                reactions: BTreeMap::new(),
            });
        }
    }

    /// Parses a mode string against the channel the way IRC does, letter by letter with its argument;
    /// returns the channel as it would be and how many changes are not no-ops.
    fn parse_modes(
        &self,
        c: &MChan,
        modes: &str,
        args: &[String],
    ) -> Result<(MChan, usize), Refusal> {
        if modes.is_empty() {
            return Err("need_more_params");
        }
        let mut after = c.clone();
        let mut args = args.iter();
        let mut on = true;
        let mut changed = 0;
        for letter in modes.chars() {
            match letter {
                '+' => on = true,
                '-' => on = false,
                'i' | 'm' | 'n' | 's' | 't' => {
                    let flag = match letter {
                        'i' => &mut after.invite_only,
                        'm' => &mut after.moderated,
                        'n' => &mut after.no_external,
                        's' => &mut after.secret,
                        _ => &mut after.topic_lock,
                    };
                    if *flag != on {
                        *flag = on;
                        changed += 1;
                    }
                }
                'k' if on => {
                    let key = args.next().ok_or("need_more_params")?;
                    if after.key.as_ref() != Some(key) {
                        after.key = Some(key.clone());
                        changed += 1;
                    }
                }
                'k' => {
                    // `-k` takes the key as its argument, as IRC clients send it.
                    args.next();
                    if after.key.take().is_some() {
                        changed += 1;
                    }
                }
                'l' if on => {
                    let arg = args.next().ok_or("need_more_params")?;
                    let limit: u32 = arg
                        .parse()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or("invalid_input")?;
                    if after.limit != Some(limit) {
                        after.limit = Some(limit);
                        changed += 1;
                    }
                }
                'l' => {
                    if after.limit.take().is_some() {
                        changed += 1;
                    }
                }
                'b' => {
                    let mask = args.next().ok_or("need_more_params")?;
                    let present = after.bans.iter().position(|b| b.eq_ignore_ascii_case(mask));
                    match (on, present) {
                        (true, None) => {
                            // Bound when set: the members it matches, and the holder of the one nick it names.
                            let nick_part = mask.split('!').next().unwrap_or(mask);
                            let named = (!nick_part.contains(['*', '?']))
                                .then(|| self.nicks.get(&fold(nick_part)).copied())
                                .flatten();
                            let bound: Users = c
                                .members
                                .keys()
                                .copied()
                                .chain(named)
                                .filter(|u| glob(mask, &self.user(*u).nick))
                                .collect();
                            after.bans.push(mask.clone());
                            after.bans_bound.push(bound);
                            changed += 1;
                        }
                        (false, Some(i)) => {
                            after.bans.remove(i);
                            after.bans_bound.remove(i);
                            changed += 1;
                        }
                        _ => {}
                    }
                }
                'o' | 'v' => {
                    let nick = args.next().ok_or("need_more_params")?;
                    let user = self.resolve_nick(nick).ok_or("no_such_nick")?;
                    let m = after.members.get_mut(&user).ok_or("user_not_in_channel")?;
                    let slot = if letter == 'o' { &mut m.0 } else { &mut m.1 };
                    if *slot != on {
                        *slot = on;
                        changed += 1;
                    }
                }
                _ => return Err("unknown_mode"),
            }
        }
        Ok((after, changed))
    }
}
