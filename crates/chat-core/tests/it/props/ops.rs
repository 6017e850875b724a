//! The random inputs of the state-machine properties: a small universe of names and the abstract operations.
//!
//! Operations name users by slot and channels, nicks, keys and masks by index into the fixed lists below, so
//! that any sequence (and any shrunk sub-sequence) can be run: an operation that refers to something that does
//! not exist yet is skipped by the runner rather than made invalid.

use proptest::prelude::*;

/// How many people take part; each slot holds at most one live user at a time.
pub(super) const SLOTS: u8 = 6;

/// Nicks: case variants, look-alikes (`[x]`/`{x}` differ under ASCII casemapping, Cyrillic `а` is not a nick
/// character), the server's own nick in two cases, and a nick that starts with a digit.
pub(super) const NICKS: &[&str] = &[
    "alice",
    "Alice",
    "ALICE",
    "bob",
    "Bob",
    "b0b",
    "bob_",
    "carol",
    "dave",
    "eve",
    "Eve",
    "[x]",
    "{x}",
    "chatd",
    "ChatD",
    "\u{430}lice",
    "9lives",
];

/// Network channel names: one channel in three cases, a look-alike with a Cyrillic letter (a different
/// channel under ASCII casemapping), two others, a name without `#`, and the look-alike in capitals (the
/// same channel as the look-alike under Unicode case folding, but not under ASCII casemapping).
pub(super) const CHANNELS: &[&str] = &[
    "#rust",
    "#Rust",
    "#RUST",
    "#ru\u{455}t",
    "#go",
    "#chat",
    "rust",
    "#RU\u{405}T",
];

/// Channel keys; keys compare case-sensitively.
pub(super) const KEYS: &[&str] = &["k1", "K1"];

/// Ban masks, matched case-insensitively against nicks.
pub(super) const MASKS: &[&str] = &["bob", "B*", "*", "alice!*@*", "?ve", "*x*"];

/// `+l` arguments, two of them invalid.
pub(super) const LIMITS: &[&str] = &["1", "2", "3", "0", "x"];

/// Topics; the empty one clears.
pub(super) const TOPICS: &[&str] = &["", "hello", "Hello"];

/// Reaction emoji.
pub(super) const EMOJI: &[&str] = &["\u{1f44d}", "\u{1f389}", "x"];

/// Who issues a command: the server's operator, or one client of the user in a slot.
///
/// `lead` asks the runner to act instead as an operator of the channel (or the owner of the space) the
/// command is about, when there is one: random actors are rarely operators, and the interesting refusals
/// (`+i`, `+k`, `+l`, `+b`, `+m`) only come after an operator set the modes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Who {
    pub(super) slot: u8,
    pub(super) client: u8,
    pub(super) system: bool,
    pub(super) lead: bool,
}

/// One letter of a MODE command with its argument.
#[derive(Clone, Copy, Debug)]
pub(super) enum Atom {
    /// `i m n s t` by index into "imnst".
    Flag(u8, bool),
    /// `+k`/`-k`, with or without a key.
    Key(bool, Option<u8>),
    /// `+l n` or `-l`.
    Limit(bool, u8),
    /// `+b mask`/`-b mask`.
    Ban(bool, u8),
    /// `+o nick`/`+v nick` (`true` = o).
    Member(bool, bool, u8),
    /// A letter the server does not know.
    Unknown,
}

/// Builds a MODE command's mode string and arguments from atoms, each with its own sign.
pub(super) fn mode_line(atoms: &[Atom]) -> (String, Vec<String>) {
    let mut modes = String::new();
    let mut args = Vec::new();
    let sign = |on: bool| if on { '+' } else { '-' };
    for atom in atoms {
        match *atom {
            Atom::Flag(i, on) => {
                modes.push(sign(on));
                modes.push(b"imnst"[usize::from(i) % 5] as char);
            }
            Atom::Key(on, key) => {
                modes.push(sign(on));
                modes.push('k');
                if let Some(k) = key {
                    args.push(pick(KEYS, k).to_owned());
                }
            }
            Atom::Limit(on, i) => {
                modes.push(sign(on));
                modes.push('l');
                if on {
                    args.push(pick(LIMITS, i).to_owned());
                }
            }
            Atom::Ban(on, i) => {
                modes.push(sign(on));
                modes.push('b');
                args.push(pick(MASKS, i).to_owned());
            }
            Atom::Member(op, on, i) => {
                modes.push(sign(on));
                modes.push(if op { 'o' } else { 'v' });
                args.push(pick(NICKS, i).to_owned());
            }
            Atom::Unknown => modes.push_str("+q"),
        }
    }
    (modes, args)
}

/// An element of a fixed list by a generated index.
pub(super) fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

/// One step of a run.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Register {
        slot: u8,
        nick: u8,
        account: bool,
    },
    Login {
        slot: u8,
    },
    Logout(Who),
    Quit(Who),
    Connect(Who, bool),
    Touch(Who),
    Nick(Who, u8),
    Join(Who, u8, Option<u8>),
    Part(Who, u8),
    Kick(Who, u8, u8),
    Invite(Who, u8, u8),
    Topic(Who, u8, u8),
    Mode(Who, u8, Vec<Atom>),
    Say(Who, u8),
    Dm(Who, u8),
    React(Who, u8, u8),
    CreateInvite(Who, u8, u8, bool),
    UseInvite(Who, u8),
    /// DELETE of a network channel (only the server's operators may).
    DeleteChan(Who, u8),
    /// The network's Server Operator role given to (or taken from) a slot's user.
    Operator(Who, u8, bool),
    CreateSpace(Who, bool),
    JoinSpace(Who, u8),
    LeaveSpace(Who, u8),
    CreateRole(Who, u8),
    /// The @everyone overwrite of a space's `general`: deny VIEW_CHANNEL or nothing.
    HideGeneral(Who, u8, bool),
    /// A role's overwrite on a space's `general`: allow VIEW_CHANNEL or nothing.
    RoleView(Who, u8, u8, bool),
    /// A member's roles in a space, as a bit mask over the space's roles.
    SetRoles(Who, u8, u8, u8),
    SaySpace(Who, u8),
    Typing(Who, u8),
    /// The clock jumps (idle clients and invites expire).
    Advance(u32),
}

/// How often each kind of operation is drawn; each property stresses a different part of the model.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mix {
    pub(super) session: u32,
    pub(super) channel: u32,
    pub(super) mode: u32,
    pub(super) message: u32,
    pub(super) space: u32,
    pub(super) time: u32,
}

fn who_with(system: f64) -> impl Strategy<Value = Who> {
    (
        0..SLOTS,
        0..6u8,
        prop::bool::weighted(system),
        any::<bool>(),
    )
        .prop_map(|(slot, client, system, lead)| Who {
            slot,
            client,
            system,
            lead,
        })
}

fn who() -> impl Strategy<Value = Who> {
    who_with(0.08)
}

/// A channel index: mostly the three spellings of `#rust` and `#go`, so that channels fill up and collide,
/// and the two spellings of the Cyrillic look-alike.
fn chan() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0..3u8, 2 => Just(4u8), 1 => Just(3u8), 1 => Just(7u8), 2 => 0..u8::MAX]
}

fn atom() -> impl Strategy<Value = Atom> {
    let i = || 0..u8::MAX;
    prop_oneof![
        6 => (0..5u8, any::<bool>()).prop_map(|(l, on)| Atom::Flag(l, on)),
        3 => (any::<bool>(), prop::option::weighted(0.9, i())).prop_map(|(on, k)| Atom::Key(on, k)),
        3 => (any::<bool>(), i()).prop_map(|(on, n)| Atom::Limit(on, n)),
        4 => (prop::bool::weighted(0.7), i()).prop_map(|(on, m)| Atom::Ban(on, m)),
        5 => (any::<bool>(), any::<bool>(), i()).prop_map(|(op, on, n)| Atom::Member(op, on, n)),
        1 => Just(Atom::Unknown),
    ]
}

/// A strategy for one operation drawn with the given mix.
pub(super) fn op(mix: Mix) -> BoxedStrategy<Op> {
    let i = || 0..u8::MAX;
    let slot = || 0..SLOTS;
    prop_oneof![
        mix.session * 3 => (slot(), i(), prop::bool::weighted(0.4))
            .prop_map(|(slot, nick, account)| Op::Register { slot, nick, account }),
        mix.session => slot().prop_map(|slot| Op::Login { slot }),
        mix.session => who().prop_map(Op::Logout),
        mix.session => who().prop_map(Op::Quit),
        mix.session * 2 => (who(), any::<bool>()).prop_map(|(w, up)| Op::Connect(w, up)),
        mix.session => who().prop_map(Op::Touch),
        mix.session * 3 => (who(), i()).prop_map(|(w, n)| Op::Nick(w, n)),
        mix.channel * 6 => (who(), chan(), prop::option::weighted(0.3, i()))
            .prop_map(|(w, c, k)| Op::Join(w, c, k)),
        mix.channel * 2 => (who(), chan()).prop_map(|(w, c)| Op::Part(w, c)),
        mix.channel * 2 => (who(), chan(), i()).prop_map(|(w, c, n)| Op::Kick(w, c, n)),
        mix.channel * 3 => (who(), chan(), i()).prop_map(|(w, c, n)| Op::Invite(w, c, n)),
        mix.channel => (who(), chan(), i()).prop_map(|(w, c, t)| Op::Topic(w, c, t)),
        mix.mode * 6 => (who(), chan(), prop::collection::vec(atom(), 1..=3))
            .prop_map(|(w, c, atoms)| Op::Mode(w, c, atoms)),
        mix.message * 4 => (who(), chan()).prop_map(|(w, c)| Op::Say(w, c)),
        mix.message * 2 => (who(), i()).prop_map(|(w, n)| Op::Dm(w, n)),
        mix.message * 3 => (who(), i(), i()).prop_map(|(w, m, e)| Op::React(w, m, e)),
        mix.channel => (who(), chan(), 0..3u8, any::<bool>())
            .prop_map(|(w, c, uses, exp)| Op::CreateInvite(w, c, uses, exp)),
        mix.channel * 3 => (who(), i()).prop_map(|(w, n)| Op::UseInvite(w, n)),
        mix.channel => (who_with(0.3), chan()).prop_map(|(w, c)| Op::DeleteChan(w, c)),
        mix.session + mix.mode => (who_with(0.8), slot(), prop::bool::weighted(0.7))
            .prop_map(|(w, s, on)| Op::Operator(w, s, on)),
        mix.space * 2 => (who(), any::<bool>()).prop_map(|(w, p)| Op::CreateSpace(w, p)),
        mix.space * 3 => (who(), i()).prop_map(|(w, s)| Op::JoinSpace(w, s)),
        mix.space => (who(), i()).prop_map(|(w, s)| Op::LeaveSpace(w, s)),
        mix.space * 2 => (who(), i()).prop_map(|(w, s)| Op::CreateRole(w, s)),
        mix.space * 2 => (who(), i(), any::<bool>()).prop_map(|(w, s, h)| Op::HideGeneral(w, s, h)),
        mix.space * 2 => (who(), i(), i(), any::<bool>())
            .prop_map(|(w, s, r, a)| Op::RoleView(w, s, r, a)),
        mix.space * 3 => (who(), i(), slot(), i()).prop_map(|(w, s, u, m)| Op::SetRoles(w, s, u, m)),
        mix.space * 2 => (who(), i()).prop_map(|(w, s)| Op::SaySpace(w, s)),
        mix.message * 3 => (who(), chan()).prop_map(|(w, c)| Op::Typing(w, c)),
        mix.time * 3 => (100..2_000u32).prop_map(Op::Advance),
        mix.time => (4_000..16_000u32).prop_map(Op::Advance),
    ]
    .boxed()
}

/// Every run starts with two accounts and two guests on two channels so that short sequences interact.
pub(super) fn prelude() -> Vec<Op> {
    let nick = |n: &str| NICKS.iter().position(|x| *x == n).map_or(0, |i| i as u8);
    let chan = |n: &str| CHANNELS.iter().position(|x| *x == n).map_or(0, |i| i as u8);
    let who = |slot| Who {
        slot,
        client: 0,
        system: false,
        lead: false,
    };
    let register = |slot, n, account| Op::Register {
        slot,
        nick: nick(n),
        account,
    };
    vec![
        register(0, "alice", true),
        register(1, "bob", false),
        register(2, "carol", true),
        register(3, "dave", false),
        Op::Join(who(0), chan("#rust"), None),
        Op::Join(who(1), chan("#Rust"), None),
        Op::Join(who(2), chan("#go"), None),
        Op::Join(who(3), chan("#go"), None),
    ]
}

/// The spaces property also starts with a public space of three members, two roles, `general` hidden from
/// @everyone and shown to the first role, so that role changes move derived membership from the start.
pub(super) fn space_prelude() -> Vec<Op> {
    let who = |slot| Who {
        slot,
        client: 0,
        system: false,
        lead: false,
    };
    vec![
        Op::CreateSpace(who(0), true),
        Op::JoinSpace(who(1), 0),
        Op::JoinSpace(who(2), 0),
        Op::CreateRole(who(0), 0),
        Op::CreateRole(who(0), 0),
        Op::HideGeneral(who(0), 0, true),
        Op::RoleView(who(0), 0, 0, true),
        Op::SetRoles(who(0), 0, 4, 1),
    ]
}
