//! Hostile input: random commands of every kind, full of hostile strings, stale or garbage ids and wrong
//! origins, with random clock jumps, must only ever produce events or typed refusals, and a refusal must
//! change nothing.
//!
//! Each case builds a small world (accounts, guests, a bot, network channels with modes, a space with a role,
//! a thread, DMs, a group DM, an invite) and then runs a few dozen random steps against it. A step picks a
//! [`Command`] variant and fills every field from generated ingredients: strings made of hostile pieces
//! (empty, huge, control characters and NUL, RTL overrides, combining marks, look-alike letters, runs of `#`,
//! `@`, `<@id>`, `*`, `!`, `,`, `:` and whitespace, lengths just under and over every limit) mixed with real
//! nicks, mentions and channel names so that commands also get past validation; ids picked from everything
//! the core has ever shown (deleted ones included) or made up; and origins that are live clients, stale or
//! made-up clients, `Anonymous` or `System`. Before a step the clock may stand still, move a little or a lot,
//! go back, jump to [`Core::poll_timeout`], or jump to an absurd time (zero, the end of time), with
//! [`Core::handle_timeout`] run on every move.
//!
//! After every call: events come out with dense seqs, the reply counts them, each event's recipients are
//! distinct and agree with [`Core::may_see`]; a refusal leaves no events, the same `last_seq` and an equal
//! [`State`]. A panic anywhere fails the case, and proptest shrinks it to a small reproduction.
//!
//! `PROPTEST_CASES` raises the number of cases for a deeper local run.

use std::collections::BTreeSet;

use chat_core::{
    Attachment, ChannelId, ChannelKind, ChannelRef, ClientId, Command, Config, Core, Created,
    MessageId, MessageKind, NewClient, Origin, Outgoing, OverwriteTarget, Permissions, RoleId, Seq,
    SpaceId, State, Status, Target, UnixMillis, UserId, UserRef,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Cases run by default: enough for thousands of commands overall while staying quick in a debug build.
const DEFAULT_CASES: u32 = 400;
/// How many `Command` variants [`build`] knows; every one of them is generated.
const VARIANTS: usize = 53;
/// A well-formed password hash; the core only stores it.
const ARGON2: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
/// When the world is built (a date in 2027).
const START: UnixMillis = 1_800_000_000_000;

// --- ingredients ---------------------------------------------------------------------------------------------

/// Fragments that have broken parsers before, and plain valid values so that some commands get deep.
const LITERALS: &[&str] = &[
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    "a\0b",
    "\u{1}",
    "\u{7}",
    "\u{1b}[31m",
    "\u{2}bold\u{2}",
    "\u{3}4,5colour",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{202e}",
    "\u{202d}gnp.exe",
    "\u{200b}",
    "\u{200d}",
    "\u{feff}",
    "\u{301}",
    "e\u{301}\u{301}\u{301}\u{301}",
    "\u{fffd}",
    "\u{10ffff}",
    "\u{1f600}",
    "\u{1f469}\u{200d}\u{1f469}\u{200d}\u{1f467}",
    "\u{210c}",
    "\u{430}lice",
    "\u{430}lic\u{435}",
    "ALICE",
    "alice",
    "Bob",
    "bob",
    "carol",
    "dave",
    "chatd",
    "#rust",
    "#RUST",
    "#r\u{446}st",
    "#ops",
    "#new",
    "#",
    "##",
    "#a,#b",
    "#a:b",
    "# a",
    "#\u{202e}",
    "@",
    "@everyone",
    "@here",
    "@alice",
    "@@@@",
    "a@alice",
    "<@",
    "<@>",
    "<@123>",
    "<@!0>",
    "<@18446744073709551615>",
    "<@99999999999999999999999>",
    "*",
    "*!*@*",
    "b?b",
    "!",
    ",",
    ":",
    "+",
    "-",
    "+-+-",
    "+o",
    "-o",
    "+v",
    "+ov",
    "+imnst",
    "-imnst",
    "+k",
    "-k",
    "+l",
    "-l",
    "+l-l+l",
    "+b",
    "-b",
    "+x",
    "+\u{26a}",
    "0",
    "-1",
    "1",
    "100000",
    "100001",
    "4294967296",
    "{}",
    "{\"a\":1}",
    "[]",
    "null",
    "hello",
    "laptop",
    ARGON2,
    "\u{1f44d}",
    "name:123",
];

/// Characters that long runs are made of: one to four bytes each, so byte and character limits differ.
const RUN_CHARS: &[char] = &[
    'a',
    'Z',
    '\u{e9}',
    '\u{4e2d}',
    '\u{1f600}',
    '#',
    '@',
    '*',
    ' ',
    '\0',
    '\u{301}',
    '\u{430}',
];

/// Run lengths just under, at and over the core's limits.
const RUN_LENS: &[usize] = &[
    1, 2, 31, 32, 33, 62, 63, 64, 65, 99, 100, 101, 255, 256, 511, 512, 513, 1023, 1024, 1025,
    2048, 2049, 4095, 4096, 4097, 8192, 8193, 16384, 16385,
];

/// Numbers for counts, limits, positions, colours, permissions and token hashes.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0..8u64,
        2 => 0..200u64,
        2 => prop::sample::select(vec![
            59, 60, 61, 3_600, 21_600, 21_601, 604_800, 604_801, 0xff_ff_ff, 0x100_0000,
            u64::from(u32::MAX), i32::MAX as u64, u64::MAX, 1 << 63, 8, 1 << 10, 1 << 11, 1 << 28,
        ]),
        1 => any::<u64>(),
    ]
}

/// A piece of a generated string; names and ids are resolved against the core when the step runs.
#[derive(Clone, Debug)]
enum Piece {
    Lit(&'static str),
    Random(String),
    Run(char, usize),
    /// The nick of a known user (by index).
    Nick(usize),
    /// `<@id>` or `@nick` of a known user.
    Mention(usize),
    /// The name of a known channel.
    ChannelName(usize),
    Number(u64),
    /// A valid nick that is probably free.
    FreshNick(u16),
    /// A valid channel name that probably does not exist yet.
    FreshChannel(u16),
    /// Something shaped like a mode string.
    Modes(String),
}

/// A generated string: pieces concatenated.
#[derive(Clone, Debug)]
struct Text(Vec<Piece>);

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        5 => prop::sample::select(LITERALS).prop_map(Piece::Lit),
        2 => "(?s).{0,12}".prop_map(Piece::Random),
        1 => (prop::sample::select(RUN_CHARS), prop::sample::select(RUN_LENS))
            .prop_map(|(c, n)| Piece::Run(c, n)),
        3 => any::<usize>().prop_map(Piece::Nick),
        1 => any::<usize>().prop_map(Piece::Mention),
        2 => any::<usize>().prop_map(Piece::ChannelName),
        1 => number().prop_map(Piece::Number),
        2 => any::<u16>().prop_map(Piece::FreshNick),
        2 => any::<u16>().prop_map(Piece::FreshChannel),
        2 => "[+-]?[imnstklbov+-]{1,5}".prop_map(Piece::Modes),
    ]
}

fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        1 => Just(Text(Vec::new())),
        // Far past every limit: the core must refuse it by length without choking on it.
        1 => (prop::sample::select(RUN_CHARS), 100_000..100_010usize)
            .prop_map(|(c, n)| Text(vec![Piece::Run(c, n)])),
        // A single piece is often a valid value (a nick, a channel name, a mode string) that gets a command
        // past validation into the code behind it; several pieces make the strings that break parsers.
        8 => piece().prop_map(|p| Text(vec![p])),
        6 => prop::collection::vec(piece(), 2..5).prop_map(Text),
    ]
}

/// An id: one the core has shown (deleted ones included), or a made-up one.
#[derive(Clone, Copy, Debug)]
enum Pick {
    Known(usize),
    Raw(u64),
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => any::<usize>().prop_map(Pick::Known),
        1 => prop_oneof![Just(1), Just(u64::MAX), Just(1 << 63), any::<u64>()].prop_map(Pick::Raw),
    ]
}

/// Who sends a step's command.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// A client that exists right now.
    Live(usize),
    /// Any client ever seen (most are gone by the time they are picked), or a made-up one.
    Client(Pick),
    Anonymous,
    System,
}

/// How the clock moves before a step.
#[derive(Clone, Copy, Debug)]
enum Jump {
    Stay,
    Forward(u64),
    Back(u64),
    /// To the core's next deadline.
    ToDeadline,
    /// To an absurd time.
    Far(u64),
}

fn jump() -> impl Strategy<Value = Jump> {
    prop_oneof![
        6 => Just(Jump::Stay),
        4 => (1..10_000u64).prop_map(Jump::Forward),
        1 => (3_600_000..4 * 86_400_000u64).prop_map(Jump::Forward),
        1 => (1..100_000u64).prop_map(Jump::Back),
        1 => Just(Jump::ToDeadline),
        // A caller's clock gone wrong: zero, before the snowflake epoch, or at the end of time.
        1 => prop::sample::select(vec![0, 1_420_070_399_999, 1 << 62, u64::MAX - 10_000, u64::MAX])
            .prop_map(Jump::Far),
    ]
}

/// One step: the ingredients a command is built from, its origin and the clock's move before it.
#[derive(Clone, Debug)]
struct Step {
    jump: Jump,
    who: Who,
    variant: usize,
    texts: [Text; 6],
    /// Per text slot: replace the generated string with a valid value of the field's kind (a known or fresh
    /// nick, a channel name, a mode string...), so that commands also get past validation.
    tame: [bool; 6],
    /// Per text slot: which valid value, when tamed.
    choice: [u16; 6],
    picks: [Pick; 4],
    nums: [u64; 3],
    flags: [bool; 8],
    list: Vec<Pick>,
}

fn step() -> impl Strategy<Value = Step> {
    let who = prop_oneof![
        8 => any::<usize>().prop_map(Who::Live),
        2 => pick().prop_map(Who::Client),
        1 => Just(Who::Anonymous),
        1 => Just(Who::System),
    ];
    let list = prop_oneof![
        9 => prop::collection::vec(pick(), 0..6),
        1 => prop::collection::vec(pick(), 99..103),
    ];
    (
        jump(),
        who,
        0..VARIANTS,
        (
            prop::array::uniform::<_, 6>(text()),
            prop::array::uniform::<_, 6>(any::<bool>()),
            prop::array::uniform::<_, 6>(any::<u16>()),
        ),
        prop::array::uniform::<_, 4>(pick()),
        prop::array::uniform::<_, 3>(number()),
        prop::array::uniform::<_, 8>(any::<bool>()),
        list,
    )
        .prop_map(
            |(jump, who, variant, (texts, tame, choice), picks, nums, flags, list)| Step {
                jump,
                who,
                variant,
                texts,
                tame,
                choice,
                picks,
                nums,
                flags,
                list,
            },
        )
}

// --- what the core has shown, to pick ids from ---------------------------------------------------------------

/// Every id the core has shown so far. Nothing is ever removed, so stale ids keep being tried.
#[derive(Default)]
struct Pools {
    users: BTreeSet<UserId>,
    clients: BTreeSet<ClientId>,
    channels: BTreeSet<ChannelId>,
    messages: BTreeSet<MessageId>,
    spaces: BTreeSet<SpaceId>,
    roles: BTreeSet<RoleId>,
    invites: BTreeSet<String>,
}

impl Pools {
    fn observe(&mut self, core: &Core) {
        for u in core.users() {
            self.users.insert(u.id);
            self.clients.extend(u.clients());
        }
        for ch in core.channels() {
            self.channels.insert(ch.id);
            self.messages.extend(ch.history());
        }
        for sp in core.spaces() {
            self.spaces.insert(sp.id);
            self.roles.extend(sp.roles.keys().copied());
        }
    }

    fn learn(&mut self, created: Option<&Created>) {
        if let Some(Created::Invite(code)) = created {
            self.invites.insert(code.clone());
        }
    }
}

/// The `i`-th element of a set, wrapping around; `None` for an empty set.
fn nth<T: Clone>(set: &BTreeSet<T>, i: usize) -> Option<T> {
    if set.is_empty() {
        return None;
    }
    set.iter().nth(i % set.len()).cloned()
}

/// Resolves a pick against a pool, falling back to a made-up id when the pool is empty.
fn resolve<T: Clone>(set: &BTreeSet<T>, p: Pick, raw: impl Fn(u64) -> Option<T>) -> T {
    let made_up = |r: u64| raw(r.max(1)).expect("a non-zero raw value is a valid id");
    match p {
        Pick::Known(i) => nth(set, i).unwrap_or_else(|| made_up(i as u64)),
        Pick::Raw(r) => made_up(r),
    }
}

/// Builds one step's command from its ingredients and the core's current ids.
struct Ctx<'a> {
    core: &'a Core,
    pools: &'a Pools,
    step: &'a Step,
}

impl Ctx<'_> {
    fn text(&self, i: usize) -> String {
        let mut out = String::new();
        for piece in &self.step.texts[i].0 {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Random(s) => out.push_str(s),
                Piece::Run(c, n) => out.extend(std::iter::repeat_n(*c, *n)),
                Piece::Nick(k) => {
                    if let Some(u) = nth(&self.pools.users, *k).and_then(|u| self.core.user(u)) {
                        out.push_str(&u.nick);
                    }
                }
                Piece::Mention(k) => {
                    if let Some(u) = nth(&self.pools.users, *k).and_then(|u| self.core.user(u)) {
                        if k % 2 == 0 {
                            out.push_str(&format!("<@{}>", u.id));
                        } else {
                            out.push('@');
                            out.push_str(&u.nick);
                        }
                    }
                }
                Piece::ChannelName(k) => {
                    if let Some(ch) =
                        nth(&self.pools.channels, *k).and_then(|c| self.core.channel(c))
                    {
                        out.push_str(&ch.name);
                    }
                }
                Piece::Number(n) => out.push_str(&n.to_string()),
                Piece::FreshNick(n) => out.push_str(&format!("n{n}")),
                Piece::FreshChannel(n) => out.push_str(&format!("#c{n}")),
                Piece::Modes(m) => out.push_str(m),
            }
        }
        out
    }

    /// The tamed value of slot `i` from `values`, or the generated string.
    fn tamed(&self, i: usize, values: &[String]) -> String {
        if self.step.tame[i] && !values.is_empty() {
            values[usize::from(self.step.choice[i]) % values.len()].clone()
        } else {
            self.text(i)
        }
    }

    /// A nick: a user's (any case), a fresh one, or the generated string.
    fn nick(&self, i: usize) -> String {
        let mut values: Vec<String> = self.core.users().map(|u| u.nick.clone()).collect();
        values.push(format!("n{}", self.step.choice[i]));
        values.push(values[0].to_ascii_uppercase());
        self.tamed(i, &values)
    }

    /// A network channel name: an existing one (any case), a fresh one, or the generated string.
    fn channel_name(&self, i: usize) -> String {
        let mut values: Vec<String> = self
            .core
            .channels()
            .filter(|c| c.name.starts_with('#'))
            .map(|c| c.name.clone())
            .collect();
        values.push(format!("#c{}", self.step.choice[i]));
        values.push(values[0].to_ascii_uppercase());
        self.tamed(i, &values)
    }

    fn modes(&self, i: usize) -> String {
        let values = [
            "+o", "-o", "+v", "-v", "+m", "-m", "+i", "-i", "+k", "-k", "+l", "-l", "+b", "-b",
            "+ntsi", "-ntsi", "+ov", "+b-b", "+kl", "o", "+mv-v",
        ];
        self.tamed(i, &values.map(str::to_owned))
    }

    fn mode_arg(&self, i: usize) -> String {
        let mut values: Vec<String> = ["sesame", "10", "1", "bo*", "*!*@*", "*"]
            .map(str::to_owned)
            .to_vec();
        values.extend(self.core.users().map(|u| u.nick.clone()));
        self.tamed(i, &values)
    }

    fn emoji(&self, i: usize) -> String {
        let values = ["\u{1f44d}", "\u{2764}\u{fe0f}", "party:123", "x"];
        self.tamed(i, &values.map(str::to_owned))
    }

    fn opt(&self, i: usize) -> Option<String> {
        self.step.flags[i % 8].then(|| self.text(i))
    }

    /// A three-way change: leave as is, clear, or set.
    fn change(&self, i: usize) -> Option<Option<String>> {
        match (self.step.flags[i % 8], self.step.flags[(i + 3) % 8]) {
            (false, _) => None,
            (true, false) => Some(None),
            (true, true) => Some(Some(self.text(i))),
        }
    }

    fn user(&self, i: usize) -> UserId {
        resolve(&self.pools.users, self.step.picks[i], UserId::from_raw)
    }

    fn channel(&self, i: usize) -> ChannelId {
        resolve(
            &self.pools.channels,
            self.step.picks[i],
            ChannelId::from_raw,
        )
    }

    fn message(&self, i: usize) -> MessageId {
        resolve(
            &self.pools.messages,
            self.step.picks[i],
            MessageId::from_raw,
        )
    }

    fn space(&self, i: usize) -> SpaceId {
        resolve(&self.pools.spaces, self.step.picks[i], SpaceId::from_raw)
    }

    fn role(&self, i: usize) -> RoleId {
        resolve(&self.pools.roles, self.step.picks[i], RoleId::from_raw)
    }

    fn channel_ref(&self, i: usize) -> ChannelRef {
        if self.step.flags[i] {
            ChannelRef::Id(self.channel(i))
        } else {
            ChannelRef::Name(self.channel_name(i))
        }
    }

    fn user_ref(&self, i: usize) -> UserRef {
        if self.step.flags[i + 4] {
            UserRef::Id(self.user(i))
        } else {
            UserRef::Nick(self.nick(i + 1))
        }
    }

    fn target(&self) -> Target {
        if self.step.flags[6] {
            Target::User(self.user_ref(0))
        } else {
            Target::Channel(self.channel_ref(0))
        }
    }

    fn code(&self) -> String {
        match self.step.picks[3] {
            Pick::Known(i) if self.step.flags[7] => nth(&self.pools.invites, i).unwrap_or_default(),
            _ => self.text(5),
        }
    }

    fn n32(&self, i: usize) -> u32 {
        self.step.nums[i] as u32
    }

    fn perms(&self, i: usize) -> Permissions {
        Permissions::from_bits_retain(self.step.nums[i])
    }

    fn token(&self) -> [u8; 32] {
        // Small numbers collide with the world's own token hashes on purpose.
        let n = self.step.nums[0];
        if n < 8 {
            [n as u8; 32]
        } else {
            let mut t = [0xa5; 32];
            t[..8].copy_from_slice(&n.to_le_bytes());
            t
        }
    }

    fn new_client(&self) -> NewClient {
        NewClient {
            name: self.text(2),
            token_hash: self.token(),
        }
    }

    fn users(&self) -> Vec<UserId> {
        let pool = &self.pools.users;
        self.step
            .list
            .iter()
            .map(|p| resolve(pool, *p, UserId::from_raw))
            .collect()
    }

    fn status(&self) -> Option<Status> {
        const ALL: [Status; 5] = [
            Status::Online,
            Status::Idle,
            Status::Dnd,
            Status::Invisible,
            Status::Offline,
        ];
        self.step.flags[1].then(|| ALL[(self.step.nums[1] % 5) as usize])
    }

    fn outgoing(&self) -> Outgoing {
        const KINDS: [MessageKind; 13] = [
            MessageKind::Message,
            MessageKind::Action,
            MessageKind::Notice,
            MessageKind::Join,
            MessageKind::Part,
            MessageKind::Quit,
            MessageKind::Kick,
            MessageKind::Topic,
            MessageKind::Mode,
            MessageKind::Nick,
            MessageKind::Invite,
            MessageKind::Pin,
            MessageKind::ThreadCreated,
        ];
        let n = self.step.nums[1];
        let attachments = match n % 16 {
            0 => Vec::new(),
            1 => (0..11).map(|i| self.attachment(i)).collect(),
            _ if self.step.flags[5] => vec![self.attachment(0)],
            _ => Vec::new(),
        };
        let kind = if self.step.tame[1] {
            [None, Some(MessageKind::Action), Some(MessageKind::Notice)][(n % 3) as usize]
        } else {
            (!n.is_multiple_of(3)).then(|| KINDS[(n % 13) as usize])
        };
        Outgoing {
            kind,
            body: self.text(1),
            meta: self.opt(2),
            reply_to: self.step.flags[4].then(|| self.message(1)),
            attachments,
            embeds: self.opt(3),
            nonce: self.opt(4),
            tts: self.step.flags[7],
        }
    }

    fn attachment(&self, i: u64) -> Attachment {
        Attachment {
            id: self.step.nums[2].wrapping_add(i),
            filename: self.text(3),
            size: self.step.nums[2],
            content_type: self.opt(5),
            token: self.text(5),
        }
    }

    fn overwrite_target(&self, i: usize) -> OverwriteTarget {
        if self.step.flags[i] {
            OverwriteTarget::Role(self.role(i))
        } else {
            OverwriteTarget::Member(self.user(i))
        }
    }
}

/// The command of a step: every variant of [`Command`], each field from the step's ingredients.
fn build(cx: &Ctx<'_>) -> Command {
    let s = cx.step;
    let kinds = [
        ChannelKind::Text,
        ChannelKind::Category,
        ChannelKind::Dm,
        ChannelKind::GroupDm,
        ChannelKind::Thread,
    ];
    match s.variant {
        0 => Command::Register {
            nick: cx.nick(0),
            password_hash: cx.opt(1),
            bot: s.flags[2],
            client: s.flags[3].then(|| cx.new_client()),
        },
        1 => Command::Login {
            user: cx.user(0),
            client: cx.new_client(),
        },
        2 => Command::Logout,
        3 => Command::SetPassword {
            user: cx.user(0),
            password_hash: cx.text(1),
        },
        4 => Command::Quit { reason: cx.opt(0) },
        5 => Command::Connect,
        6 => Command::Disconnect,
        7 => Command::Touch,
        8 => Command::Nick { nick: cx.nick(0) },
        9 => Command::UpdateProfile {
            display_name: cx.change(0),
            bio: cx.change(1),
            avatar_url: cx.change(2),
        },
        10 => Command::Away { message: cx.opt(0) },
        11 => Command::SetStatus {
            status: cx.status(),
        },
        12 => Command::Join {
            channel: cx.channel_name(0),
            key: s.flags[1].then(|| cx.mode_arg(1)),
        },
        13 => Command::Part {
            channel: cx.channel_ref(0),
            reason: cx.opt(1),
        },
        14 => Command::Kick {
            channel: cx.channel_ref(0),
            user: cx.user_ref(1),
            reason: cx.opt(3),
        },
        15 => Command::Invite {
            channel: cx.channel_ref(0),
            user: cx.user_ref(1),
        },
        16 => Command::Topic {
            channel: cx.channel_ref(0),
            topic: cx.text(1),
        },
        17 => Command::Mode {
            channel: cx.channel_ref(0),
            modes: cx.modes(1),
            args: (2..6)
                .take((s.nums[0] % 5) as usize)
                .map(|i| cx.mode_arg(i))
                .collect(),
        },
        18 => Command::Send {
            to: cx.target(),
            message: cx.outgoing(),
        },
        19 => Command::Edit {
            message: cx.message(0),
            body: cx.text(1),
            meta: cx.opt(2),
            embeds: cx.opt(3),
        },
        20 => Command::Delete {
            message: cx.message(0),
        },
        21 => Command::BulkDelete {
            channel: cx.channel(0),
            messages: s
                .list
                .iter()
                .map(|p| resolve(&cx.pools.messages, *p, MessageId::from_raw))
                .collect(),
        },
        22 => Command::React {
            message: cx.message(0),
            emoji: cx.emoji(1),
        },
        23 => Command::Unreact {
            message: cx.message(0),
            emoji: cx.emoji(1),
            user: s.flags[2].then(|| cx.user(2)),
        },
        24 => Command::Pin {
            message: cx.message(0),
        },
        25 => Command::Unpin {
            message: cx.message(0),
        },
        26 => Command::Typing {
            channel: cx.channel_ref(0),
        },
        27 => Command::Read {
            channel: cx.channel_ref(0),
            message: cx.message(1),
        },
        28 => Command::CreateThread {
            channel: cx.channel_ref(0),
            name: cx.text(1),
            message: s.flags[2].then(|| cx.message(2)),
        },
        29 => Command::CreateGroupDm {
            users: cx.users(),
            name: cx.opt(1),
        },
        30 => Command::AddRecipient {
            channel: cx.channel(0),
            user: cx.user(1),
        },
        31 => Command::RemoveRecipient {
            channel: cx.channel(0),
            user: cx.user(1),
        },
        32 => Command::CreateSpace {
            name: cx.text(0),
            description: cx.opt(1),
            public: s.flags[2],
        },
        33 => Command::UpdateSpace {
            space: cx.space(0),
            name: cx.opt(0),
            description: cx.change(1),
            icon_url: cx.change(2),
            public: s.flags[3].then_some(s.flags[4]),
        },
        34 => Command::DeleteSpace { space: cx.space(0) },
        35 => Command::JoinSpace { space: cx.space(0) },
        36 => Command::LeaveSpace { space: cx.space(0) },
        37 => Command::KickMember {
            space: cx.space(0),
            user: cx.user(1),
            reason: cx.opt(2),
        },
        38 => Command::BanMember {
            space: cx.space(0),
            user: cx.user(1),
            reason: cx.opt(2),
        },
        39 => Command::UnbanMember {
            space: cx.space(0),
            user: cx.user(1),
        },
        40 => Command::CreateRole {
            space: cx.space(0),
            name: cx.text(0),
            permissions: cx.perms(0),
            color: cx.n32(1),
            hoist: s.flags[1],
            mentionable: s.flags[2],
        },
        41 => Command::UpdateRole {
            space: cx.space(0),
            role: cx.role(1),
            name: cx.opt(0),
            permissions: s.flags[1].then(|| cx.perms(0)),
            color: s.flags[2].then(|| cx.n32(1)),
            hoist: s.flags[3].then_some(s.flags[4]),
            mentionable: s.flags[5].then_some(s.flags[6]),
            position: s.flags[7].then(|| s.nums[2] as i32),
        },
        42 => Command::DeleteRole {
            space: cx.space(0),
            role: cx.role(1),
        },
        43 => Command::SetMemberRoles {
            space: cx.space(0),
            user: cx.user(1),
            roles: s
                .list
                .iter()
                .map(|p| resolve(&cx.pools.roles, *p, RoleId::from_raw))
                .collect(),
        },
        44 => Command::SetMemberNick {
            space: cx.space(0),
            user: cx.user(1),
            nick: cx.opt(2),
        },
        45 => Command::CreateChannel {
            space: cx.space(0),
            name: cx.text(0),
            kind: kinds[(s.nums[0] % 5) as usize],
            parent: s.flags[1].then(|| cx.channel(1)),
            topic: cx.opt(2),
            overwrites: (0..s.list.len().min(4))
                .map(|i| (cx.overwrite_target(i), cx.perms(1), cx.perms(2)))
                .collect(),
        },
        46 => Command::UpdateChannel {
            channel: cx.channel(0),
            name: cx.opt(0),
            topic: cx.change(1),
            position: s.flags[2].then(|| s.nums[0] as i32),
            parent: s.flags[3].then(|| s.flags[4].then(|| cx.channel(1))),
            slowmode_secs: s.flags[5].then(|| cx.n32(1)),
        },
        47 => Command::DeleteChannel {
            channel: cx.channel(0),
        },
        48 => Command::SetOverwrite {
            channel: cx.channel(0),
            target: cx.overwrite_target(1),
            allow: cx.perms(1),
            deny: cx.perms(2),
        },
        49 => Command::DeleteOverwrite {
            channel: cx.channel(0),
            target: cx.overwrite_target(1),
        },
        50 => Command::CreateInvite {
            channel: cx.channel(0),
            max_uses: cx.n32(0),
            max_age_secs: cx.n32(1),
        },
        51 => Command::RevokeInvite { code: cx.code() },
        52 => Command::UseInvite { code: cx.code() },
        other => unreachable!("variant {other} is outside 0..VARIANTS"),
    }
}

// --- the world and the checks ----------------------------------------------------------------------------------

/// Runs a command the world needs; it must be accepted.
fn setup(
    core: &mut Core,
    now: &mut UnixMillis,
    origin: Origin,
    command: Command,
) -> Option<Created> {
    *now += 1_000;
    let reply = core
        .handle(*now, origin, command.clone())
        .unwrap_or_else(|e| panic!("world setup refused {command:?}: {e}"));
    while core.poll_event().is_some() {}
    reply.created
}

/// A small world with something of every kind in it for random commands to act on.
fn world() -> (Core, UnixMillis, Pools) {
    let mut now = START;
    let mut core = Core::new(Config::default(), now);
    while core.poll_event().is_some() {}
    let mut pools = Pools::default();
    let client =
        |core: &mut Core, now: &mut UnixMillis, nick: &str, token: u8, hash: bool, bot: bool| {
            let created = setup(
                core,
                now,
                Origin::Anonymous,
                Command::Register {
                    nick: nick.to_owned(),
                    password_hash: hash.then(|| ARGON2.to_owned()),
                    bot,
                    client: Some(NewClient {
                        name: "laptop".to_owned(),
                        token_hash: [token; 32],
                    }),
                },
            );
            match created {
                Some(Created::User {
                    client: Some(c), ..
                }) => Origin::Client(c),
                other => panic!("register made {other:?}"),
            }
        };
    let alice = client(&mut core, &mut now, "alice", 1, true, false);
    let bob = client(&mut core, &mut now, "bob", 2, false, false);
    let carol = client(&mut core, &mut now, "carol", 3, false, false);
    let dave = client(&mut core, &mut now, "dave", 4, true, true);
    let join = |name: &str, key: Option<&str>| Command::Join {
        channel: name.to_owned(),
        key: key.map(str::to_owned),
    };
    let say = |to: &str, body: &str| Command::Send {
        to: Target::parse(to),
        message: Outgoing {
            body: body.to_owned(),
            ..Outgoing::default()
        },
    };
    for who in [alice, bob, carol, dave] {
        setup(&mut core, &mut now, who, join("#rust", None));
    }
    setup(&mut core, &mut now, alice, join("#ops", None));
    setup(
        &mut core,
        &mut now,
        alice,
        Command::Mode {
            channel: ChannelRef::Name("#ops".to_owned()),
            modes: "+imk-t+b".to_owned(),
            args: vec!["sesame".to_owned(), "bo*".to_owned()],
        },
    );
    setup(
        &mut core,
        &mut now,
        alice,
        say("#rust", "hello @bob and @everyone"),
    );
    setup(
        &mut core,
        &mut now,
        bob,
        say("#rust", "hi <@1> \u{202e}olleh"),
    );
    setup(&mut core, &mut now, bob, say("alice", "a DM"));
    let Some(Created::Space(space)) = setup(
        &mut core,
        &mut now,
        alice,
        Command::CreateSpace {
            name: "Guild".to_owned(),
            description: None,
            public: true,
        },
    ) else {
        panic!("a space was expected")
    };
    setup(&mut core, &mut now, bob, Command::JoinSpace { space });
    setup(
        &mut core,
        &mut now,
        alice,
        Command::CreateRole {
            space,
            name: "mods".to_owned(),
            permissions: Permissions::MANAGE_MESSAGES | Permissions::KICK_MEMBERS,
            color: 0x33_66_99,
            hoist: true,
            mentionable: true,
        },
    );
    pools.observe(&core);
    let general = core
        .space(space)
        .and_then(|sp| sp.channels().next())
        .expect("a new space has a general channel");
    let general_name = ChannelRef::Id(general);
    let Some(Created::Message(first)) = setup(
        &mut core,
        &mut now,
        alice,
        Command::Send {
            to: Target::Channel(general_name.clone()),
            message: Outgoing {
                body: "welcome".to_owned(),
                ..Outgoing::default()
            },
        },
    ) else {
        panic!("a message was expected")
    };
    setup(
        &mut core,
        &mut now,
        alice,
        Command::CreateThread {
            channel: general_name,
            name: "a thread".to_owned(),
            message: Some(first),
        },
    );
    let users: Vec<UserId> = ["bob", "carol"]
        .iter()
        .filter_map(|n| core.user_by_nick(n).map(|u| u.id))
        .collect();
    setup(
        &mut core,
        &mut now,
        alice,
        Command::CreateGroupDm {
            users,
            name: Some("trio".to_owned()),
        },
    );
    let rust = core
        .channel_by_name("#rust")
        .map(|c| c.id)
        .expect("#rust exists");
    for (channel, max_age_secs) in [(rust, 60), (general, 0)] {
        let created = setup(
            &mut core,
            &mut now,
            alice,
            Command::CreateInvite {
                channel,
                max_uses: 2,
                max_age_secs,
            },
        );
        pools.learn(created.as_ref());
    }
    pools.observe(&core);
    (core, now, pools)
}

/// Drains the events of one input and checks them: dense seqs from `last`, distinct recipients that agree
/// with `may_see`. Returns how many there were.
fn drain(
    core: &mut Core,
    mut last: Seq,
    input: &dyn std::fmt::Debug,
) -> Result<usize, TestCaseError> {
    let mut count = 0;
    while let Some(event) = core.poll_event() {
        count += 1;
        if event.is_durable() {
            prop_assert_eq!(event.seq, last + 1, "seq gap after {:?}", input);
            last = event.seq;
        } else {
            prop_assert_eq!(event.seq, last, "a live event carries the last seq");
        }
        let recipients: Vec<UserId> = core.recipients(&event).collect();
        let distinct: BTreeSet<UserId> = recipients.iter().copied().collect();
        prop_assert_eq!(
            distinct.len(),
            recipients.len(),
            "a recipient twice in {:?}",
            event
        );
        for user in core.users() {
            prop_assert_eq!(
                core.may_see(user.id, &event),
                distinct.contains(&user.id),
                "may_see and recipients disagree on {:?} for {:?}",
                user.id,
                event
            );
        }
    }
    prop_assert_eq!(core.last_seq(), last, "last_seq after {:?}", input);
    Ok(count)
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let (mut core, mut now, mut pools) = world();
    let mut logins = 0;
    for step in steps {
        let moved = match step.jump {
            Jump::Stay => None,
            Jump::Forward(ms) => Some(now.saturating_add(ms)),
            Jump::Back(ms) => Some(now.saturating_sub(ms)),
            Jump::ToDeadline => Some(core.poll_timeout().unwrap_or(now)),
            Jump::Far(at) => Some(at),
        };
        if let Some(at) = moved {
            now = at;
            let last = core.last_seq();
            core.handle_timeout(now);
            drain(&mut core, last, &step.jump)?;
        }
        let origin = match step.who {
            Who::Live(i) => {
                let live: BTreeSet<ClientId> = core.users().flat_map(|u| u.clients()).collect();
                Origin::Client(resolve(&live, Pick::Known(i), ClientId::from_raw))
            }
            Who::Client(p) => Origin::Client(resolve(&pools.clients, p, ClientId::from_raw)),
            Who::Anonymous => Origin::Anonymous,
            Who::System => Origin::System,
        };
        let command = build(&Ctx {
            core: &core,
            pools: &pools,
            step,
        });
        let last = core.last_seq();
        let before: State = core.state().clone();
        match core.handle(now, origin, command.clone()) {
            Ok(reply) => {
                let count = drain(&mut core, last, &command)?;
                prop_assert_eq!(reply.events, count, "events counted for {:?}", command);
                prop_assert_eq!(reply.seq, core.last_seq());
                pools.learn(reply.created.as_ref());
            }
            Err(error) => {
                // The error must render and name itself without trouble: transports put all three on the wire.
                let _ = (error.name(), error.irc_numeric(), error.to_string());
                prop_assert!(
                    core.poll_event().is_none(),
                    "{:?} refused with {:?} but emitted events",
                    command,
                    error
                );
                prop_assert_eq!(core.last_seq(), last);
                prop_assert!(
                    core.state() == &before,
                    "{:?} refused with {:?} but changed the state",
                    command,
                    error
                );
            }
        }
        revive(&mut core, now, &mut logins)?;
        pools.observe(&core);
    }
    Ok(())
}

/// Idle expiry, QUITs and logouts can leave nobody able to act, after which every command would be refused at
/// the door. Like people coming back, the accounts log in again whenever fewer than two clients are left.
fn revive(core: &mut Core, now: UnixMillis, logins: &mut u64) -> Result<(), TestCaseError> {
    let live: usize = core.users().map(|u| u.clients().count()).sum();
    if live >= 2 {
        return Ok(());
    }
    let accounts: Vec<UserId> = core
        .users()
        .filter(|u| !u.is_guest() && !u.system && !u.released)
        .map(|u| u.id)
        .collect();
    for user in accounts {
        *logins += 1;
        let mut token_hash = [0xee; 32];
        token_hash[..8].copy_from_slice(&logins.to_le_bytes());
        let command = Command::Login {
            user,
            client: NewClient {
                name: "back".to_owned(),
                token_hash,
            },
        };
        let last = core.last_seq();
        let reply = core.handle(now, Origin::Anonymous, command.clone());
        prop_assert!(reply.is_ok(), "{:?} was refused: {:?}", command, reply);
        drain(core, last, &command)?;
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_commands_get_events_or_typed_refusals(steps in prop::collection::vec(step(), 1..48)) {
        run(&steps)?;
    }
}

/// The world itself must be what the random steps expect: a check that the test's setup did not silently
/// degrade into an empty core (where every command would be refused before reaching the code under test).
#[test]
fn the_world_has_something_of_every_kind() {
    let (core, _, pools) = world();
    assert!(pools.users.len() >= 5, "the server's user and four more");
    assert!(pools.clients.len() >= 4);
    assert!(
        pools.channels.len() >= 6,
        "#rust, #ops, a DM, general, a thread, a group DM"
    );
    assert!(pools.messages.len() >= 5);
    assert!(pools.spaces.len() >= 2);
    assert!(pools.roles.len() >= 4);
    assert_eq!(pools.invites.len(), 2);
    assert!(core.poll_timeout().is_some());
}

/// A thread started from a message takes the message's id (as Discord's do, and libraries look it up by it);
/// the message starts no second thread, however it is asked, and the refusal changes nothing.
#[test]
fn a_thread_from_a_message_takes_its_id_once() {
    let (mut core, mut now, _) = world();
    let (thread, starter) = core
        .channels()
        .find_map(|c| Some((c.id, c.starter?)).filter(|_| c.kind == ChannelKind::Thread))
        .expect("the world has a thread started from a message");
    assert_eq!(thread.get(), starter.get());
    let parent = core
        .message(starter)
        .map(|m| m.channel)
        .expect("the starter is in the state");
    let owner = core
        .channel(parent)
        .and_then(|c| c.space)
        .and_then(|s| core.space(s))
        .map(|s| s.owner)
        .expect("the parent is a space's channel");
    let client = core
        .user(owner)
        .and_then(|u| u.clients().next())
        .expect("the owner has a client");
    now += 1_000;
    let before = core.state().clone();
    let again = core.handle(
        now,
        Origin::Client(client),
        Command::CreateThread {
            channel: ChannelRef::Id(parent),
            name: "again".to_owned(),
            message: Some(starter),
        },
    );
    assert_eq!(again.err(), Some(chat_core::Error::ThreadExists));
    assert!(core.poll_event().is_none(), "a refusal emits nothing");
    assert_eq!(core.state(), &before, "a refusal changes nothing");
    // Later ids never meet the thread's: they come after every id handed out.
    let free = setup(
        &mut core,
        &mut now,
        Origin::Client(client),
        Command::CreateThread {
            channel: ChannelRef::Id(parent),
            name: "free".to_owned(),
            message: None,
        },
    );
    match free {
        Some(Created::Channel(c)) => assert!(c.get() > thread.get()),
        other => panic!("a thread was expected, not {other:?}"),
    }
}

/// Activities are live presence: a change reaches the user's peers with the status, a status change carries
/// them, bad ones are refused without a change, and going offline clears them.
#[test]
fn activities_travel_with_presence_and_end_with_it() {
    use chat_core::{Activity, ActivityKind, EventKind};
    let (mut core, mut now, _) = world();
    let alice = core.user_by_nick("alice").map(|u| u.id).expect("alice");
    let client = core
        .user(alice)
        .and_then(|u| u.clients().next())
        .expect("a client");
    let me = Origin::Client(client);
    setup(&mut core, &mut now, me, Command::Connect);
    let chess = Activity {
        name: "chess".to_owned(),
        kind: ActivityKind::Playing,
        state: None,
    };
    let mut run = |core: &mut Core, command: Command| {
        now += 1_000;
        let result = core.handle(now, me, command);
        let events: Vec<EventKind> = std::iter::from_fn(|| core.poll_event())
            .map(|e| e.kind)
            .collect();
        (result, events)
    };
    let (result, events) = run(
        &mut core,
        Command::SetActivities {
            activities: vec![chess.clone()],
        },
    );
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        events,
        [EventKind::PresenceUpdated {
            user: alice,
            status: Status::Online,
            activities: vec![chess.clone()],
        }]
    );
    let (_, events) = run(
        &mut core,
        Command::SetStatus {
            status: Some(Status::Dnd),
        },
    );
    assert_eq!(
        events,
        [EventKind::PresenceUpdated {
            user: alice,
            status: Status::Dnd,
            activities: vec![chess.clone()],
        }]
    );
    let long = "x".repeat(129);
    for bad in [
        vec![chess.clone(); 6],
        vec![Activity {
            name: String::new(),
            ..chess.clone()
        }],
        vec![Activity {
            name: long.clone(),
            ..chess.clone()
        }],
        vec![Activity {
            state: Some(long.clone()),
            ..chess.clone()
        }],
        vec![Activity {
            name: "bell\u{7}".to_owned(),
            ..chess.clone()
        }],
    ] {
        let before = core.state().clone();
        let (result, events) = run(&mut core, Command::SetActivities { activities: bad });
        assert!(
            matches!(result, Err(chat_core::Error::InvalidInput { .. })),
            "{result:?}"
        );
        assert!(events.is_empty());
        assert_eq!(core.state(), &before);
    }
    let (_, events) = run(&mut core, Command::Disconnect);
    assert!(
        events.iter().any(|e| matches!(
            e,
            EventKind::PresenceUpdated { user, status: Status::Offline, activities }
                if *user == alice && activities.is_empty()
        )),
        "{events:?}"
    );
    assert!(core.user(alice).expect("alice").activities.is_empty());
}
