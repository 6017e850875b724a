//! Scenario tests: scripts in `tests/scenarios/*.chat` of commands and the events or errors they must give.
//!
//! Each file is one `#[test]`, so a failure names its file. A script runs on a fresh [`Sim`]; every step's
//! events are rendered as text with their recipients and compared, in order and in full, with the lines
//! that follow the step. After the last line the core is rebuilt from its log ([`Sim::replay_check`]).
//!
//! # The language
//!
//! ```text
//! # A comment. A trailing comment starts with " # " outside double quotes.
//! config max_message_size=64          # before the first step: session_idle_timeout, max_history, presence_fanout_max too
//! guest alice                         # a guest: user, client and nick all named alice
//! guest alice2 alice                  # a guest named alice2 whose nick is alice
//! account bob pw                      # an account (password hash "$test$pw"), client bob
//! bot robo                            # a bot account
//! login bob2 bob                      # a second client (device) of bob, named bob2
//! alice: JOIN #rust                   # a command from a client ("system:" is the server's operator)
//! = [alice] channel_created #rust text +nt
//! = [alice] join #rust alice +o       # every event, with its recipients, in order
//! let m1 = alice: PRIVMSG #rust hi    # names what the command created (message, channel, space, ...)
//! = [alice] message m1 #rust alice "hi"
//! bob: PRIVMSG #rust hi
//! ! cannot_send                       # the refusal, by Error::name(); more words must match its detail
//! ~alice: PART #rust                  # "~": the step's events are not checked (errors still are)
//! wait 24h                            # the clock jumps through every timeout due (ms s m h d)
//! settle                              # fires timeouts until none is left (30 days at most)
//! ? members #rust == @alice +bob carol
//! repeat 3 ~alice: PRIVMSG #rust n{i}  # runs a quiet step 3 times with {i} = 1, 2, 3
//! replay                              # replay_check now, not only at the end
//! ```
//!
//! Setup directives (`guest`, `account`, `bot`, `login`) are quiet unless expectation lines follow them.
//! Any other step is strict: no expectation lines means it must produce no event.
//!
//! Names: users and clients by their simulation names; network channels by `#name`; other channels by a
//! label: given with `let`, or made up when they appear (`space/name` for space channels, `dm:a,b` for DMs,
//! `thread:name`, `gdm:name`); spaces by label (`network` is the network); roles by label, `@everyone` in a
//! space; messages by label, `msgN` for the N-th message made, `^` for the last one a command made;
//! invites by label (`invN`). `nosuch` is an id that exists nowhere. A message target that is not `#name`
//! nor a channel label is a nick.
//!
//! Bodies: the rest of the line, or a "quoted string" with `\n`, `\t`, `\0`, `\"`, `\u{hex}` escapes;
//! `${x*4097}` repeats a text; `${id:alice}` is alice's raw user id (for `<@id>` mentions). Options are
//! `key=value` words (`key="with spaces"`).
//!
//! Verbs, after `client:` (see [`Runner::command`] for the arguments):
//! - sessions: NICK QUIT LOGOUT CONNECT DISCONNECT TOUCH AWAY STATUS PROFILE PASSWORD;
//! - network channels: JOIN PART KICK INVITE (nick then channel, as IRC) TOPIC MODE;
//! - messages: PRIVMSG NOTICE ACTION (options reply= meta= nonce= attach= embeds= tts=yes before the body)
//!   EDIT DELETE BULKDELETE REACT UNREACT PIN UNPIN TYPING READ THREAD (from=msg) GROUPDM (name=)
//!   ADDRECIPIENT REMOVERECIPIENT;
//! - spaces: SPACE (public) UPDATESPACE DELETESPACE JOINSPACE LEAVESPACE SPACEKICK SPACEBAN SPACEUNBAN ROLE
//!   (perms=A|B hoist mentionable) UPDATEROLE ROLES SPACENICK CHANNEL CATEGORY (allow:target=P deny:target=P
//!   parent= topic=) UPDATECHANNEL DELETECHANNEL OVERWRITE DELOVERWRITE CREATEINVITE (uses= age=)
//!   REVOKEINVITE USEINVITE.
//!
//! Queries (`? what args == answer`, `-` for nothing): members, channels (the list a user may see), joined,
//! spaces, modes (channel, viewer), topic, presence, nick, whois, user, clients, unread, mentions, lastread,
//! pins, history, message, channel, can (user, channel, PERMISSION), space_members, bans, space, invite,
//! timeout (the next one, relative to now).
//!
//! Blessing: `UPDATE_EXPECT=1 cargo test -p chat-core --test it scenarios` rewrites every expectation and
//! query answer with what the core did; review the diff before keeping it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chat_core::{
    Attachment, ChannelFlags, ChannelId, ChannelInfo, ChannelKind, ChannelRef, ClientEnd, Command,
    Config, Created, Error, EventKind, LeaveReason, MemberModes, MessageId, MessageKind,
    ModeChange, Origin, Outgoing, OverwriteTarget, Permissions, RoleId, SpaceId, Status, Target,
    UserId, UserRef,
};

use crate::harness::{DAY, Delivered, Sim};

/// One `#[test]` per scenario file; [`every_file_has_a_test`] checks that none is forgotten.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios! {
    session_guests_accounts,
    session_nick_rules,
    session_nick_seen_by_peers,
    session_devices,
    session_guest_logout,
    session_idle_expiry,
    session_quit,
    session_presence,
    session_presence_large_channels,
    session_profile,
    session_guest_in_space,
    channel_join_create_delete,
    channel_part_kick,
    channel_invite,
    channel_topic,
    channel_list_secret,
    mode_flags,
    mode_invite_only,
    mode_key_limit,
    mode_ban,
    mode_ban_binding,
    mode_moderated,
    mode_moderated_threads,
    mode_no_external,
    mode_ops,
    message_send,
    message_limits,
    message_dm,
    message_group_dm,
    message_edit_delete,
    message_reactions,
    message_replies_threads,
    message_pins,
    message_mentions,
    message_slow_mode,
    message_typing,
    message_read_states,
    message_history_retention,
    space_create_join,
    space_roles,
    space_private_channels,
    space_owner_admin,
    space_moderation,
    space_invites,
    space_channels,
    space_delete_cleanup,
    network_channel_invites,
    network_operators,
    system_operator,
}

#[test]
fn every_file_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(scenario_dir())
        .expect("the scenario directory exists")
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "chat").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    files.sort();
    let mut names: Vec<String> = NAMES.iter().map(|s| (*s).to_owned()).collect();
    names.sort();
    assert_eq!(
        files, names,
        "every tests/scenarios/*.chat file needs its line in scenarios!"
    );
}

/// The runner must fail on every kind of mismatch, or the scenarios prove nothing.
#[test]
fn mismatches_fail() {
    let cases: &[(&str, &str)] = &[
        ("a missing event", "guest a\na: JOIN #x"),
        (
            "a wrong event",
            "guest a\na: JOIN #x\n= [a] channel_created #y text +nt\n= [a] join #x a +o",
        ),
        (
            "a wrong audience",
            "guest a\na: JOIN #x\n= [] channel_created #x text +nt\n= [a] join #x a +o",
        ),
        (
            "an extra expected event",
            "guest a\n~a: JOIN #x\na: PART #x\n= [a] part #x a\n= [a] channel_deleted #x\n= [a] x",
        ),
        ("an unexpected refusal", "guest a\na: PART #x"),
        ("a refusal in a quiet step", "guest a\n~a: PART #x"),
        ("a refusal in a setup line", "guest 1a"),
        (
            "a missing refusal",
            "guest a\na: JOIN #x\n! bad_channel_name",
        ),
        ("the wrong refusal", "guest a\na: PART #x\n! not_on_channel"),
        (
            "the wrong refusal detail",
            "guest a\na: JOIN x\n! bad_channel_name empty",
        ),
        ("a wrong query answer", "guest a\n? nick a == b"),
        ("an orphan expectation", "= [a] x"),
    ];
    for (what, script) in cases {
        let mut runner = Runner::new("inline", false);
        let lines: Vec<&str> = script.lines().collect();
        runner.run(&lines);
        assert!(runner.failure.is_some(), "{what} went unnoticed");
    }
    let mut runner = Runner::new("inline", false);
    runner.run(&[
        "guest a",
        "a: JOIN x",
        "! bad_channel_name",
        "? nick a == a",
    ]);
    assert_eq!(
        runner.failure, None,
        "a refusal may be named without its detail"
    );
    let mut runner = Runner::new("inline", false);
    runner.run(&["guest a", "a: PART #x", "! no_such"]);
    assert!(
        runner.failure.is_some(),
        "a refusal's name is matched whole, not by its first letters"
    );
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

/// Runs one scenario file, panicking with a readable report at the first mismatch.
fn run(name: &str) {
    let path = scenario_dir().join(format!("{name}.chat"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let bless = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut runner = Runner::new(name, bless);
    let lines: Vec<&str> = text.lines().collect();
    runner.run(&lines);
    if bless && !runner.rewrites.is_empty() {
        let new = apply_rewrites(&lines, &runner.rewrites);
        std::fs::write(&path, new).expect("the scenario file is writable");
    }
    if let Some(failure) = runner.failure {
        panic!("{failure}");
    }
    runner.sim().replay_check();
}

/// Replaces line ranges, bottom up so that earlier ranges keep their indices.
fn apply_rewrites(lines: &[&str], rewrites: &[Rewrite]) -> String {
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let mut rewrites = rewrites.to_vec();
    // Bottom up; at the same line a replacement goes before an insertion, so the insertion lands above it.
    rewrites.sort_by_key(|r| std::cmp::Reverse((r.from, r.to)));
    for r in rewrites {
        out.splice(r.from..r.to, r.lines);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// New text for lines `from..to` of a file (an empty range inserts).
#[derive(Clone, Debug)]
struct Rewrite {
    from: usize,
    to: usize,
    lines: Vec<String>,
}

/// Names of the things a script refers to, both ways.
#[derive(Debug, Default)]
struct Labels {
    spaces: BTreeMap<String, SpaceId>,
    space_names: HashMap<SpaceId, String>,
    channels: BTreeMap<String, ChannelId>,
    channel_names: HashMap<ChannelId, String>,
    roles: BTreeMap<String, RoleId>,
    role_names: HashMap<RoleId, String>,
    messages: BTreeMap<String, MessageId>,
    message_names: HashMap<MessageId, String>,
    invites: BTreeMap<String, String>,
    invite_names: HashMap<String, String>,
    messages_made: usize,
    invites_made: usize,
}

impl Labels {
    fn space(&mut self, name: &str, id: SpaceId) {
        self.spaces.insert(name.to_owned(), id);
        self.space_names.insert(id, name.to_owned());
    }

    fn channel(&mut self, name: &str, id: ChannelId) {
        self.channels.insert(name.to_owned(), id);
        self.channel_names.insert(id, name.to_owned());
    }

    fn role(&mut self, name: &str, id: RoleId) {
        self.roles.insert(name.to_owned(), id);
        self.role_names.insert(id, name.to_owned());
    }

    fn message(&mut self, name: &str, id: MessageId) {
        self.messages.insert(name.to_owned(), id);
        self.message_names.insert(id, name.to_owned());
    }

    fn invite(&mut self, name: &str, code: &str) {
        self.invites.insert(name.to_owned(), code.to_owned());
        self.invite_names.insert(code.to_owned(), name.to_owned());
    }

    /// A channel label not used yet, from a wanted one.
    fn fresh_channel(&self, wanted: String) -> String {
        if !self.channels.contains_key(&wanted) {
            return wanted;
        }
        (2..)
            .map(|n| format!("{wanted}~{n}"))
            .find(|l| !self.channels.contains_key(l))
            .expect("some suffix is free")
    }
}

/// What a step line asks for, once its prefix (`~`, `let x =`, `repeat`) is taken off.
struct Step<'a> {
    quiet: bool,
    label: Option<&'a str>,
    actor: &'a str,
    verb: String,
    args: &'a str,
}

/// A script being run.
struct Runner {
    name: String,
    bless: bool,
    config: Config,
    sim: Option<Sim>,
    labels: Labels,
    last_message: Option<MessageId>,
    next_attachment: u64,
    rewrites: Vec<Rewrite>,
    failure: Option<String>,
}

type StepResult = Result<Option<Created>, Error>;

impl Runner {
    fn new(name: &str, bless: bool) -> Self {
        Self {
            name: name.to_owned(),
            bless,
            config: Config::default(),
            sim: None,
            labels: Labels::default(),
            last_message: None,
            next_attachment: 0,
            rewrites: Vec::new(),
            failure: None,
        }
    }

    /// The simulation, started with the configuration read so far.
    fn sim(&mut self) -> &mut Sim {
        if self.sim.is_none() {
            let sim = Sim::with_config(self.config.clone());
            let network = sim.core().network();
            self.labels.space("network", network);
            if let Some(space) = sim.core().space(network) {
                for role in space.roles.values() {
                    if role.id != network.everyone_role() {
                        self.labels.role(&role.name.replace(' ', "_"), role.id);
                    }
                }
            }
            self.sim = Some(sim);
        }
        self.sim.as_mut().expect("just set")
    }

    fn fail(&mut self, line: usize, msg: String) {
        if self.failure.is_none() {
            self.failure = Some(format!(
                "scenario {} failed at tests/scenarios/{}.chat:{}\n{msg}",
                self.name,
                self.name,
                line + 1
            ));
        }
    }

    fn run(&mut self, lines: &[&str]) {
        let mut i = 0;
        while i < lines.len() && (self.failure.is_none() || self.bless) {
            let line = strip_comment(lines[i]).trim();
            // The expectation block of a step: the `=` and `!` lines right after it.
            let mut end = i + 1;
            while end < lines.len() && is_expectation(lines[end]) {
                end += 1;
            }
            let block: Vec<String> = lines[i + 1..end]
                .iter()
                .map(|l| normalize(strip_comment(l)))
                .collect();
            if line.is_empty() {
                i += 1;
                continue;
            }
            if is_expectation(line) {
                self.fail(i, "an expectation line with no step before it".into());
                return;
            }
            match self.line(i, line, &block) {
                Ok(()) => {}
                Err(msg) => {
                    self.fail(i, format!("in `{line}`: {msg}"));
                    return;
                }
            }
            i = end;
        }
    }

    /// Runs one non-expectation line and checks its block.
    fn line(&mut self, at: usize, line: &str, block: &[String]) -> Result<(), String> {
        let (word, rest) = split_word(line);
        match word {
            "config" => {
                if self.sim.is_some() {
                    return Err("config must come before the first step".into());
                }
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').ok_or("config takes key=value")?;
                    match k {
                        "max_message_size" => self.config.max_message_size = parse_num(v)?,
                        "max_history" => self.config.max_history = parse_num(v)?,
                        "presence_fanout_max" => self.config.presence_fanout_max = parse_num(v)?,
                        "session_idle_timeout" => {
                            self.config.session_idle_timeout_ms = parse_duration(v)?;
                        }
                        _ => return Err(format!("unknown config key {k}")),
                    }
                }
                self.no_block(block)
            }
            "guest" | "account" | "bot" | "login" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let sim = self.sim();
                let result = match (word, words.as_slice()) {
                    ("guest", [name]) => sim.guest(name),
                    ("guest", [name, nick]) => sim.register(name, nick, None, false),
                    ("account", [name, pw]) => sim.account(name, pw),
                    ("account", [name, pw, nick]) => {
                        sim.register(name, nick, Some(format!("$test${pw}")), false)
                    }
                    ("bot", [name]) => sim.register(name, name, Some("$test$bot".into()), true),
                    ("login", [client, user]) => sim.login(client, user),
                    _ => return Err(format!("bad arguments to {word}")),
                };
                let quiet = block.is_empty();
                self.check(at, line, result.map(|_| None), quiet, block);
                Ok(())
            }
            "wait" => {
                let ms = parse_duration(rest.trim())?;
                self.sim().advance(ms);
                self.check(at, line, Ok(None), false, block);
                Ok(())
            }
            "settle" => {
                let idle = self.sim().run_until_idle_or(30 * DAY);
                if !idle {
                    return Err("the core still has timeouts 30 days later".into());
                }
                self.check(at, line, Ok(None), false, block);
                Ok(())
            }
            "replay" => {
                self.sim().replay_check();
                self.no_block(block)
            }
            "repeat" => {
                let (n, step) = split_word(rest);
                let n: usize = parse_num(n)?;
                if !step.starts_with('~') {
                    return Err("a repeated step must be quiet (~)".into());
                }
                self.no_block(block)?;
                for i in 1..=n {
                    let step = step.replace("{i}", &i.to_string());
                    self.step(at, &step, &[])?;
                }
                Ok(())
            }
            _ if line.starts_with('?') => self.query(at, line),
            _ => self.step(at, line, block),
        }
    }

    fn no_block(&self, block: &[String]) -> Result<(), String> {
        if block.is_empty() {
            Ok(())
        } else {
            Err("this line takes no expectation lines".into())
        }
    }

    fn parse_step<'a>(&self, line: &'a str) -> Result<Step<'a>, String> {
        let (quiet, line) = match line.strip_prefix('~') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let (label, line) = match line.strip_prefix("let ") {
            Some(rest) => {
                let (name, rest) = rest.split_once('=').ok_or("let takes `let name = step`")?;
                (Some(name.trim()), rest.trim_start())
            }
            None => (None, line),
        };
        let (actor, command) = line
            .split_once(": ")
            .ok_or("a step is `client: VERB args`")?;
        let (verb, args) = split_word(command);
        Ok(Step {
            quiet,
            label,
            actor: actor.trim(),
            verb: verb.to_ascii_uppercase(),
            args,
        })
    }

    fn step(&mut self, at: usize, line: &str, block: &[String]) -> Result<(), String> {
        let line = &self.expand_ids(line)?;
        let step = self.parse_step(line)?;
        let origin = match step.actor {
            "system" => Origin::System,
            "anon" => Origin::Anonymous,
            name => match self.sim().try_client(name) {
                Some(c) => Origin::Client(c),
                None => return Err(format!("no client named {name}")),
            },
        };
        let command = self.command(&step.verb, step.args)?;
        let result = self.sim().handle(origin, command).map(|r| r.created);
        if let Ok(created) = &result {
            if let Some(Created::Message(m)) = created {
                self.last_message = Some(*m);
            }
            if let Some(label) = step.label {
                self.label_created(label, created.as_ref())?;
            }
        }
        self.check(at, line, result, step.quiet, block);
        Ok(())
    }

    /// Replaces `${id:name}` with the raw id of the user named `name`, for Discord-style `<@id>` mentions.
    fn expand_ids(&mut self, line: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = line;
        while let Some(start) = rest.find("${id:") {
            let len = rest[start..].find('}').ok_or("unclosed ${id:")?;
            let name = &rest[start + 5..start + len];
            out.push_str(&rest[..start]);
            out.push_str(&self.user_id(name)?.get().to_string());
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn label_created(&mut self, label: &str, created: Option<&Created>) -> Result<(), String> {
        match created {
            Some(Created::Message(m)) => self.labels.message(label, *m),
            Some(Created::Channel(c)) => self.labels.channel(label, *c),
            Some(Created::Space(s)) => self.labels.space(label, *s),
            Some(Created::Role(r)) => self.labels.role(label, *r),
            Some(Created::Invite(code)) => self.labels.invite(label, code),
            Some(Created::Client(c)) => {
                let c = *c;
                self.sim().name_client(label, c);
            }
            Some(Created::User { user, client }) => {
                let (user, client) = (*user, *client);
                self.sim().name_user(label, user);
                if let Some(c) = client {
                    self.sim().name_client(label, c);
                }
            }
            other => return Err(format!("`let {label}` but the command made {other:?}")),
        }
        Ok(())
    }

    /// Compares what a step did with its expectation block (or records the new block when blessing).
    fn check(&mut self, at: usize, line: &str, result: StepResult, quiet: bool, block: &[String]) {
        let events = self.sim().take_events();
        self.auto_label(&events);
        let mut actual = Vec::new();
        if let Err(e) = &result {
            actual.push(format!("! {}", error_text(e)));
        }
        for d in &events {
            let mut line = normalize(&format!("= {}", self.render(d)));
            // Raw ids in bodies (`<@id>` mentions) are written back as the `${id:name}` that made them.
            if line.contains("<@") {
                for (name, id) in self.sim().named_users() {
                    line = line.replace(&id.get().to_string(), &format!("${{id:{name}}}"));
                }
            }
            actual.push(line);
        }
        if quiet && block.is_empty() {
            if let Err(e) = &result {
                if self.bless {
                    self.rewrites.push(Rewrite {
                        from: at + 1,
                        to: at + 1,
                        lines: actual,
                    });
                    return;
                }
                self.fail(at, format!("`{line}` was refused: {} ({e})", error_text(e)));
            }
            return;
        }
        let matches = block.len() == actual.len()
            && block.iter().zip(&actual).all(|(want, got)| {
                want == got || (want.starts_with('!') && got.starts_with(&format!("{want} ")))
            });
        if matches {
            return;
        }
        if self.bless {
            // Keep a shorter expected error if it still matches the same refusal.
            let lines = actual
                .iter()
                .enumerate()
                .map(|(i, got)| match block.get(i) {
                    Some(want) if want.starts_with('!') && got.starts_with(&format!("{want} ")) => {
                        want.clone()
                    }
                    _ => got.clone(),
                })
                .collect();
            self.rewrites.push(Rewrite {
                from: at + 1,
                to: at + 1 + block.len(),
                lines,
            });
            return;
        }
        let mut msg = format!("step: {line}\n--- expected ---\n");
        for l in block {
            let _ = writeln!(msg, "{l}");
        }
        msg.push_str("--- actual ---\n");
        for l in &actual {
            let _ = writeln!(msg, "{l}");
        }
        self.fail(at, msg);
    }

    // --- references ---------------------------------------------------------------------------------------

    fn user_id(&mut self, name: &str) -> Result<UserId, String> {
        if name == "nosuch" {
            return Ok(nosuch_user());
        }
        self.sim()
            .try_user(name)
            .ok_or_else(|| format!("no user named {name}"))
    }

    fn channel_id(&mut self, name: &str) -> Result<ChannelId, String> {
        if name == "nosuch" {
            return Ok(ChannelId::from_raw(1).expect("1 is not 0"));
        }
        if let Some(id) = self.labels.channels.get(name) {
            return Ok(*id);
        }
        if name.starts_with('#')
            && let Some(ch) = self.sim().core().channel_by_name(name)
        {
            return Ok(ch.id);
        }
        Err(format!("no channel labelled {name}"))
    }

    /// `#name` stays a name (so that resolution by name is what is tested); labels become ids.
    fn channel_ref(&mut self, name: &str) -> Result<ChannelRef, String> {
        if name.starts_with('#') {
            Ok(ChannelRef::Name(name.to_owned()))
        } else {
            Ok(ChannelRef::Id(self.channel_id(name)?))
        }
    }

    fn target(&mut self, name: &str) -> Result<Target, String> {
        if name.starts_with('#') {
            return Ok(Target::Channel(ChannelRef::Name(name.to_owned())));
        }
        if self.labels.channels.contains_key(name) || name == "nosuch" {
            return Ok(Target::Channel(ChannelRef::Id(self.channel_id(name)?)));
        }
        Ok(Target::User(UserRef::Nick(name.to_owned())))
    }

    fn message_id(&self, name: &str) -> Result<MessageId, String> {
        match name {
            "^" => self
                .last_message
                .ok_or_else(|| "no message made yet".into()),
            "nosuch" => Ok(MessageId::from_raw(1).expect("1 is not 0")),
            _ => self
                .labels
                .messages
                .get(name)
                .copied()
                .ok_or_else(|| format!("no message labelled {name}")),
        }
    }

    fn space_id(&self, name: &str) -> Result<SpaceId, String> {
        if name == "nosuch" {
            return Ok(SpaceId::from_raw(1).expect("1 is not 0"));
        }
        self.labels
            .spaces
            .get(name)
            .copied()
            .ok_or_else(|| format!("no space labelled {name}"))
    }

    fn role_id(&self, space: SpaceId, name: &str) -> Result<RoleId, String> {
        match name {
            "@everyone" => Ok(space.everyone_role()),
            "nosuch" => Ok(RoleId::from_raw(1).expect("1 is not 0")),
            _ => self
                .labels
                .roles
                .get(name)
                .copied()
                .ok_or_else(|| format!("no role labelled {name}")),
        }
    }

    fn invite_code(&self, name: &str) -> String {
        self.labels
            .invites
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }

    /// `@everyone`, a role label, or a user name; the space is the channel's.
    fn overwrite_target(
        &mut self,
        channel: ChannelId,
        name: &str,
    ) -> Result<OverwriteTarget, String> {
        // A DM has no space; its overwrites are refused by the core, so any space will do for the target.
        let core = self.sim().core();
        let space = core
            .channel(channel)
            .and_then(|c| c.space)
            .unwrap_or_else(|| core.network());
        if name == "@everyone" || self.labels.roles.contains_key(name) {
            return Ok(OverwriteTarget::Role(self.role_id(space, name)?));
        }
        Ok(OverwriteTarget::Member(self.user_id(name)?))
    }

    // --- commands -----------------------------------------------------------------------------------------

    fn command(&mut self, verb: &str, args: &str) -> Result<Command, String> {
        let mut a = Args::new(args);
        let command = match verb {
            // Sessions.
            "NICK" => Command::Nick {
                nick: a.rest_text(),
            },
            "QUIT" => Command::Quit {
                reason: a.opt_rest(),
            },
            "LOGOUT" => Command::Logout,
            "CONNECT" => Command::Connect,
            "DISCONNECT" => Command::Disconnect,
            "TOUCH" => Command::Touch,
            "AWAY" => Command::Away {
                message: a.opt_rest(),
            },
            "STATUS" => Command::SetStatus {
                status: match a.word()?.as_str() {
                    "online" => Some(Status::Online),
                    "idle" => Some(Status::Idle),
                    "dnd" => Some(Status::Dnd),
                    "invisible" => Some(Status::Invisible),
                    "offline" => Some(Status::Offline),
                    "none" => None,
                    other => return Err(format!("unknown status {other}")),
                },
            },
            "PROFILE" => {
                let opts = a.options()?;
                let field = |k: &str| opts.get(k).map(|v| (v != "-").then(|| v.clone()));
                Command::UpdateProfile {
                    display_name: field("display_name"),
                    bio: field("bio"),
                    avatar_url: field("avatar"),
                }
            }
            "PASSWORD" => Command::SetPassword {
                user: self.user_id(&a.word()?)?,
                password_hash: a.rest_text(),
            },
            // Network channels.
            "JOIN" => Command::Join {
                channel: a.word()?,
                key: a.opt_word(),
            },
            "PART" => Command::Part {
                channel: self.channel_ref(&a.word()?)?,
                reason: a.opt_rest(),
            },
            "KICK" => Command::Kick {
                channel: self.channel_ref(&a.word()?)?,
                user: UserRef::Nick(a.word()?),
                reason: a.opt_rest(),
            },
            "INVITE" => {
                let user = UserRef::Nick(a.word()?);
                Command::Invite {
                    channel: self.channel_ref(&a.word()?)?,
                    user,
                }
            }
            "TOPIC" => Command::Topic {
                channel: self.channel_ref(&a.word()?)?,
                topic: a.rest_text(),
            },
            "MODE" => Command::Mode {
                channel: self.channel_ref(&a.word()?)?,
                modes: a.opt_word().unwrap_or_default(),
                args: a.words(),
            },
            // Messages.
            "PRIVMSG" | "NOTICE" | "ACTION" => {
                let to = self.target(&a.word()?)?;
                let kind = match verb {
                    "NOTICE" => MessageKind::Notice,
                    "ACTION" => MessageKind::Action,
                    _ => MessageKind::Message,
                };
                let mut message = Outgoing {
                    kind: Some(kind),
                    ..Outgoing::default()
                };
                while let Some((k, v)) =
                    a.known_option(&["reply", "meta", "nonce", "attach", "embeds", "tts"])
                {
                    match k.as_str() {
                        "reply" => message.reply_to = Some(self.message_id(&v)?),
                        "meta" => message.meta = Some(v),
                        "nonce" => message.nonce = Some(v),
                        "embeds" => message.embeds = Some(v),
                        "tts" => message.tts = v == "yes",
                        _ => {
                            self.next_attachment += 1;
                            message.attachments.push(Attachment {
                                id: self.next_attachment,
                                filename: v,
                                size: 1,
                                content_type: None,
                                token: format!("t{}", self.next_attachment),
                            });
                        }
                    }
                }
                message.body = a.rest_text();
                Command::Send { to, message }
            }
            "EDIT" => {
                let message = self.message_id(&a.word()?)?;
                let meta = a.known_option(&["meta"]).map(|(_, v)| v);
                Command::Edit {
                    message,
                    body: a.rest_text(),
                    meta,
                    embeds: None,
                }
            }
            "DELETE" => Command::Delete {
                message: self.message_id(&a.word()?)?,
            },
            "BULKDELETE" => {
                let channel = self.channel_id(&a.word()?)?;
                let messages = a
                    .words()
                    .iter()
                    .map(|m| self.message_id(m))
                    .collect::<Result<_, _>>()?;
                Command::BulkDelete { channel, messages }
            }
            "REACT" => Command::React {
                message: self.message_id(&a.word()?)?,
                emoji: a.word()?,
            },
            "UNREACT" => {
                let message = self.message_id(&a.word()?)?;
                let emoji = a.word()?;
                let user = match a.opt_word() {
                    Some(u) => Some(self.user_id(&u)?),
                    None => None,
                };
                Command::Unreact {
                    message,
                    emoji,
                    user,
                }
            }
            "PIN" => Command::Pin {
                message: self.message_id(&a.word()?)?,
            },
            "UNPIN" => Command::Unpin {
                message: self.message_id(&a.word()?)?,
            },
            "TYPING" => Command::Typing {
                channel: self.channel_ref(&a.word()?)?,
            },
            "READ" => Command::Read {
                channel: self.channel_ref(&a.word()?)?,
                message: self.message_id(&a.word()?)?,
            },
            "THREAD" => {
                let channel = self.channel_ref(&a.word()?)?;
                let message = match a.known_option(&["from"]) {
                    Some((_, m)) => Some(self.message_id(&m)?),
                    None => None,
                };
                Command::CreateThread {
                    channel,
                    name: a.rest_text(),
                    message,
                }
            }
            "GROUPDM" => {
                let name = a.known_option(&["name"]).map(|(_, v)| v);
                let users = a
                    .words()
                    .iter()
                    .map(|u| self.user_id(u))
                    .collect::<Result<_, _>>()?;
                Command::CreateGroupDm { users, name }
            }
            "ADDRECIPIENT" | "REMOVERECIPIENT" => {
                let channel = self.channel_id(&a.word()?)?;
                let user = self.user_id(&a.word()?)?;
                if verb == "ADDRECIPIENT" {
                    Command::AddRecipient { channel, user }
                } else {
                    Command::RemoveRecipient { channel, user }
                }
            }
            // Spaces.
            "SPACE" => {
                let name = a.word()?;
                let public = a.flag("public");
                let opts = a.options()?;
                Command::CreateSpace {
                    name,
                    description: opts.get("desc").cloned(),
                    public,
                }
            }
            "UPDATESPACE" => {
                let space = self.space_id(&a.word()?)?;
                let opts = a.options()?;
                let clearable = |k: &str| opts.get(k).map(|v| (v != "-").then(|| v.clone()));
                Command::UpdateSpace {
                    space,
                    name: opts.get("name").cloned(),
                    description: clearable("desc"),
                    icon_url: clearable("icon"),
                    public: opts.get("public").map(|v| v == "yes"),
                }
            }
            "DELETESPACE" => Command::DeleteSpace {
                space: self.space_id(&a.word()?)?,
            },
            "JOINSPACE" => Command::JoinSpace {
                space: self.space_id(&a.word()?)?,
            },
            "LEAVESPACE" => Command::LeaveSpace {
                space: self.space_id(&a.word()?)?,
            },
            "SPACEKICK" | "SPACEBAN" => {
                let space = self.space_id(&a.word()?)?;
                let user = self.user_id(&a.word()?)?;
                let reason = a.opt_rest();
                if verb == "SPACEKICK" {
                    Command::KickMember {
                        space,
                        user,
                        reason,
                    }
                } else {
                    Command::BanMember {
                        space,
                        user,
                        reason,
                    }
                }
            }
            "SPACEUNBAN" => Command::UnbanMember {
                space: self.space_id(&a.word()?)?,
                user: self.user_id(&a.word()?)?,
            },
            "ROLE" => {
                let space = self.space_id(&a.word()?)?;
                let name = a.word()?;
                let (mut hoist, mut mentionable) = (false, false);
                let mut opts = BTreeMap::new();
                for word in a.words() {
                    match word.split_once('=') {
                        _ if word == "hoist" => hoist = true,
                        _ if word == "mentionable" => mentionable = true,
                        Some((k, v)) => {
                            opts.insert(k.to_owned(), v.to_owned());
                        }
                        None => return Err(format!("unknown ROLE option {word}")),
                    }
                }
                Command::CreateRole {
                    space,
                    name,
                    permissions: parse_perms(opts.get("perms").map_or("-", String::as_str))?,
                    color: opts.get("color").map_or(Ok(0), |c| parse_num(c))?,
                    hoist,
                    mentionable,
                }
            }
            "UPDATEROLE" => {
                let space = self.space_id(&a.word()?)?;
                let role = self.role_id(space, &a.word()?)?;
                let opts = a.options()?;
                Command::UpdateRole {
                    space,
                    role,
                    name: opts.get("name").cloned(),
                    permissions: opts.get("perms").map(|p| parse_perms(p)).transpose()?,
                    color: opts.get("color").map(|c| parse_num(c)).transpose()?,
                    hoist: opts.get("hoist").map(|v| v == "yes"),
                    mentionable: opts.get("mentionable").map(|v| v == "yes"),
                    position: opts.get("pos").map(|p| parse_num(p)).transpose()?,
                }
            }
            "DELETEROLE" => {
                let space = self.space_id(&a.word()?)?;
                Command::DeleteRole {
                    space,
                    role: self.role_id(space, &a.word()?)?,
                }
            }
            "ROLES" => {
                let space = self.space_id(&a.word()?)?;
                let user = self.user_id(&a.word()?)?;
                let roles = a
                    .words()
                    .iter()
                    .map(|r| self.role_id(space, r))
                    .collect::<Result<_, _>>()?;
                Command::SetMemberRoles { space, user, roles }
            }
            "SPACENICK" => Command::SetMemberNick {
                space: self.space_id(&a.word()?)?,
                user: self.user_id(&a.word()?)?,
                nick: a.opt_rest(),
            },
            "CHANNEL" | "CATEGORY" => {
                let space = self.space_id(&a.word()?)?;
                let name = a.word()?;
                let mut parent = None;
                let mut topic = None;
                let mut overwrites: Vec<(OverwriteTarget, Permissions, Permissions)> = Vec::new();
                for (k, v) in a.options()? {
                    match k.split_once(':') {
                        Some((side @ ("allow" | "deny"), target)) => {
                            let target = if target == "@everyone" {
                                OverwriteTarget::Role(space.everyone_role())
                            } else if self.labels.roles.contains_key(target) {
                                OverwriteTarget::Role(self.role_id(space, target)?)
                            } else {
                                OverwriteTarget::Member(self.user_id(target)?)
                            };
                            let perms = parse_perms(&v)?;
                            let i = match overwrites.iter().position(|o| o.0 == target) {
                                Some(i) => i,
                                None => {
                                    overwrites.push((
                                        target,
                                        Permissions::empty(),
                                        Permissions::empty(),
                                    ));
                                    overwrites.len() - 1
                                }
                            };
                            if side == "allow" {
                                overwrites[i].1 |= perms;
                            } else {
                                overwrites[i].2 |= perms;
                            }
                        }
                        _ if k == "parent" => parent = Some(self.channel_id(&v)?),
                        _ if k == "topic" => topic = Some(v),
                        _ => return Err(format!("unknown option {k}")),
                    }
                }
                Command::CreateChannel {
                    space,
                    name,
                    kind: if verb == "CATEGORY" {
                        ChannelKind::Category
                    } else {
                        ChannelKind::Text
                    },
                    parent,
                    topic,
                    overwrites,
                }
            }
            "UPDATECHANNEL" => {
                let channel = self.channel_id(&a.word()?)?;
                let opts = a.options()?;
                let parent = match opts.get("parent").map(String::as_str) {
                    None => None,
                    Some("-") => Some(None),
                    Some(p) => Some(Some(self.channel_id(p)?)),
                };
                Command::UpdateChannel {
                    channel,
                    name: opts.get("name").cloned(),
                    topic: opts.get("topic").map(|t| (t != "-").then(|| t.clone())),
                    position: opts.get("pos").map(|p| parse_num(p)).transpose()?,
                    parent,
                    slowmode_secs: opts.get("slowmode").map(|s| parse_num(s)).transpose()?,
                }
            }
            "DELETECHANNEL" => Command::DeleteChannel {
                channel: self.channel_id(&a.word()?)?,
            },
            "OVERWRITE" => {
                let channel = self.channel_id(&a.word()?)?;
                let target = self.overwrite_target(channel, &a.word()?)?;
                let opts = a.options()?;
                Command::SetOverwrite {
                    channel,
                    target,
                    allow: parse_perms(opts.get("allow").map_or("-", String::as_str))?,
                    deny: parse_perms(opts.get("deny").map_or("-", String::as_str))?,
                }
            }
            "DELOVERWRITE" => {
                let channel = self.channel_id(&a.word()?)?;
                let target = self.overwrite_target(channel, &a.word()?)?;
                Command::DeleteOverwrite { channel, target }
            }
            "CREATEINVITE" => {
                let channel = self.channel_id(&a.word()?)?;
                let opts = a.options()?;
                Command::CreateInvite {
                    channel,
                    max_uses: opts.get("uses").map_or(Ok(0), |n| parse_num(n))?,
                    max_age_secs: opts
                        .get("age")
                        .map_or(Ok(0), |d| parse_duration(d).map(|ms| (ms / 1000) as u32))?,
                }
            }
            "REVOKEINVITE" => Command::RevokeInvite {
                code: self.invite_code(&a.word()?),
            },
            "USEINVITE" => Command::UseInvite {
                code: self.invite_code(&a.word()?),
            },
            other => return Err(format!("unknown verb {other}")),
        };
        if !a.done() {
            return Err(format!("unused arguments: {}", a.rest));
        }
        Ok(command)
    }

    // --- queries ------------------------------------------------------------------------------------------

    fn query(&mut self, at: usize, line: &str) -> Result<(), String> {
        let body = line[1..].trim();
        let (question, want) = body
            .split_once(" == ")
            .ok_or("a query is `? what args == expected`")?;
        let got = normalize(&self.answer(question.trim())?);
        let want = normalize(want);
        if got == want {
            return Ok(());
        }
        if self.bless {
            self.rewrites.push(Rewrite {
                from: at,
                to: at + 1,
                lines: vec![format!("? {} == {got}", question.trim())],
            });
            return Ok(());
        }
        self.fail(
            at,
            format!("query: {question}\n--- expected ---\n{want}\n--- actual ---\n{got}"),
        );
        Ok(())
    }

    fn answer(&mut self, question: &str) -> Result<String, String> {
        let words: Vec<&str> = question.split_whitespace().collect();
        let dash = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(" ")
            }
        };
        Ok(match words.as_slice() {
            ["members", c] => {
                let id = self.channel_id(c)?;
                let view = self.view();
                let mut v: Vec<String> = view
                    .sim
                    .core()
                    .members(id)
                    .map(|(u, m)| {
                        let prefix = if m.op {
                            "@"
                        } else if m.voice {
                            "+"
                        } else {
                            ""
                        };
                        format!("{prefix}{}", view.user(u))
                    })
                    .collect();
                v.sort_by(|a, b| {
                    a.trim_start_matches(['@', '+'])
                        .cmp(b.trim_start_matches(['@', '+']))
                });
                dash(v)
            }
            ["channels", u] => {
                let u = self.user_id(u)?;
                let view = self.view();
                let mut v: Vec<String> = view
                    .sim
                    .core()
                    .list_channels(u)
                    .map(|c| view.channel(c.id))
                    .collect();
                v.sort();
                dash(v)
            }
            ["joined", u] => {
                let u = self.user_id(u)?;
                let view = self.view();
                let mut v: Vec<String> = view
                    .sim
                    .core()
                    .user(u)
                    .map(|u| u.joined_channels().map(|c| view.channel(c)).collect())
                    .unwrap_or_default();
                v.sort();
                dash(v)
            }
            ["spaces", u] => {
                let u = self.user_id(u)?;
                let view = self.view();
                let mut v: Vec<String> = view
                    .sim
                    .core()
                    .user(u)
                    .map(|u| u.spaces().map(|s| view.space(s)).collect())
                    .unwrap_or_default();
                v.sort();
                dash(v)
            }
            ["modes", c, viewer] => {
                let c = self.channel_id(c)?;
                let viewer = self.user_id(viewer)?;
                let s = self.sim().core().mode_string(c, viewer);
                if s.is_empty() { "-".into() } else { s }
            }
            ["topic", c] => {
                let c = self.channel_id(c)?;
                let view = self.view();
                match view.sim.core().channel(c).and_then(|c| c.topic.as_ref()) {
                    Some(t) => format!("{:?} by {}", t.text, view.user(t.by)),
                    None => "-".into(),
                }
            }
            ["presence", u] => {
                let u = self.user_id(u)?;
                lower(self.sim().core().presence(u))
            }
            ["nick", u] => {
                let u = self.user_id(u)?;
                self.sim()
                    .core()
                    .user(u)
                    .map_or("-".into(), |u| u.nick.clone())
            }
            ["whois", nick] => {
                let view = self.view();
                view.sim
                    .core()
                    .user_by_nick(nick)
                    .map_or("-".into(), |u| view.user(u.id))
            }
            ["user", u] => {
                let u = self.user_id(u)?;
                let core = self.sim().core();
                match core.user(u) {
                    None => "-".into(),
                    Some(u) => {
                        let mut s = if u.bot {
                            "bot".to_owned()
                        } else if u.is_guest() {
                            "guest".to_owned()
                        } else {
                            "account".to_owned()
                        };
                        if u.released {
                            s.push_str(" released");
                        }
                        if let Some(away) = &u.away {
                            let _ = write!(s, " away={away:?}");
                        }
                        s
                    }
                }
            }
            ["clients", u] => {
                let u = self.user_id(u)?;
                let sim = self.sim();
                let mut v: Vec<String> = sim
                    .core()
                    .user(u)
                    .map(|u| u.clients().map(|c| sim.client_name(c)).collect())
                    .unwrap_or_default();
                v.sort();
                dash(v)
            }
            ["unread", u, c] => {
                let (u, c) = (self.user_id(u)?, self.channel_id(c)?);
                self.sim().core().unread_count(u, c).to_string()
            }
            ["mentions", u, c] => {
                let (u, c) = (self.user_id(u)?, self.channel_id(c)?);
                self.sim()
                    .core()
                    .read_state(u, c)
                    .map_or(0, |r| r.mention_count())
                    .to_string()
            }
            ["lastread", u, c] => {
                let (u, c) = (self.user_id(u)?, self.channel_id(c)?);
                let view = self.view();
                view.sim
                    .core()
                    .read_state(u, c)
                    .and_then(|r| r.last_read)
                    .map_or("-".into(), |m| view.message(m))
            }
            ["pins", c] => {
                let c = self.channel_id(c)?;
                let view = self.view();
                let v = view
                    .sim
                    .core()
                    .channel(c)
                    .map(|c| c.pins.iter().map(|m| view.message(*m)).collect())
                    .unwrap_or_default();
                dash(v)
            }
            ["history", c] => {
                let c = self.channel_id(c)?;
                self.sim()
                    .core()
                    .channel(c)
                    .map_or(0, |c| c.history().count())
                    .to_string()
            }
            ["message", m] => {
                let m = self.message_id(m)?;
                let view = self.view();
                match view.sim.core().message(m) {
                    None => "-".into(),
                    Some(r) => {
                        let mut s = format!(
                            "{} in {} by {}",
                            r.kind.name(),
                            view.channel(r.channel),
                            view.user(r.author)
                        );
                        if r.pinned {
                            s.push_str(" pinned");
                        }
                        if r.edited_at.is_some() {
                            s.push_str(" edited");
                        }
                        if let Some(t) = r.thread {
                            let _ = write!(s, " thread={}", view.channel(t));
                        }
                        if let Some(p) = r.reply_to {
                            let _ = write!(s, " reply={}", view.message(p));
                        }
                        for (emoji, users) in &r.reactions {
                            let users: Vec<String> = users.iter().map(|u| view.user(*u)).collect();
                            let _ = write!(s, " {emoji}:{}", users.join(","));
                        }
                        s
                    }
                }
            }
            ["channel", c] => {
                let c = self.channel_id(c);
                let view = self.view();
                match c.ok().and_then(|c| view.sim.core().channel(c)) {
                    None => "-".into(),
                    Some(ch) => {
                        let mut s = lower(ch.kind);
                        if let Some(p) = ch.parent {
                            let _ = write!(s, " parent={}", view.channel(p));
                        }
                        if ch.slowmode_secs > 0 {
                            let _ = write!(s, " slowmode={}", ch.slowmode_secs);
                        }
                        let _ = write!(s, " members={}", view.sim.core().member_count(ch.id));
                        s
                    }
                }
            }
            ["can", u, c, perm] => {
                let (u, c) = (self.user_id(u)?, self.channel_id(c)?);
                let p = parse_perms(perm)?;
                let has = self.sim().core().channel_permissions(u, c).contains(p);
                if has { "yes" } else { "no" }.into()
            }
            ["space_members", s] => {
                let s = self.space_id(s)?;
                let view = self.view();
                let mut v: Vec<String> = view
                    .sim
                    .core()
                    .space(s)
                    .map(|sp| {
                        sp.members()
                            .map(|m| {
                                let mut roles: Vec<String> =
                                    m.roles.iter().map(|r| view.role(*r)).collect();
                                roles.sort();
                                if roles.is_empty() {
                                    view.user(m.user)
                                } else {
                                    format!("{}:{}", view.user(m.user), roles.join(","))
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                dash(v)
            }
            ["bans", s] => {
                let s = self.space_id(s)?;
                let view = self.view();
                let mut v: Vec<String> = view
                    .sim
                    .core()
                    .space(s)
                    .map(|sp| sp.bans().map(|(u, _)| view.user(u)).collect())
                    .unwrap_or_default();
                v.sort();
                dash(v)
            }
            ["space", s] => {
                let s = self.space_id(s)?;
                let view = self.view();
                match view.sim.core().space(s) {
                    None => "-".into(),
                    Some(sp) => format!(
                        "{:?} owner={} {}",
                        sp.name,
                        view.user(sp.owner),
                        if sp.public { "public" } else { "private" }
                    ),
                }
            }
            ["invite", i] => {
                let code = self.invite_code(i);
                match self.sim().core().invite(&code) {
                    None => "-".into(),
                    Some(inv) => format!("uses={}/{}", inv.uses, inv.max_uses),
                }
            }
            ["timeout"] => {
                let sim = self.sim();
                match sim.core().poll_timeout() {
                    None => "-".into(),
                    Some(at) if at >= sim.now() => format!("+{}", duration_text(at - sim.now())),
                    Some(at) => format!("-{}", duration_text(sim.now() - at)),
                }
            }
            _ => return Err(format!("unknown query {question}")),
        })
    }

    // --- rendering ----------------------------------------------------------------------------------------

    fn view(&mut self) -> View<'_> {
        self.sim();
        View {
            sim: self.sim.as_ref().expect("started above"),
            labels: &self.labels,
        }
    }

    /// Names what new events bring into being, unless a `let` already did.
    fn auto_label(&mut self, events: &[Delivered]) {
        for d in events {
            match &d.event.kind {
                EventKind::ChannelCreated { channel, members } => {
                    self.label_channel(channel, members);
                }
                EventKind::SpaceCreated { space, .. }
                    if !self.labels.space_names.contains_key(&space.id) =>
                {
                    let name = space.name.replace(' ', "_");
                    self.labels.space(&name, space.id);
                }
                EventKind::RoleUpserted {
                    role,
                    created: true,
                    ..
                } if !self.labels.role_names.contains_key(&role.id) => {
                    self.labels.role(&role.name.replace(' ', "_"), role.id);
                }
                EventKind::MessageCreated { message } => {
                    self.labels.messages_made += 1;
                    if !self.labels.message_names.contains_key(&message.id) {
                        let name = format!("msg{}", self.labels.messages_made);
                        self.labels.message(&name, message.id);
                    }
                }
                EventKind::InviteCreated { invite } => {
                    self.labels.invites_made += 1;
                    if !self.labels.invite_names.contains_key(&invite.code) {
                        let name = format!("inv{}", self.labels.invites_made);
                        self.labels.invite(&name, &invite.code);
                    }
                }
                _ => {}
            }
        }
    }

    fn label_channel(&mut self, info: &ChannelInfo, members: &[UserId]) {
        let network = Some(self.sim().core().network());
        if info.space == network && info.kind == ChannelKind::Text {
            // A network channel is always known by its name; a new one of the same name takes it over.
            self.labels.channel(&info.name, info.id);
            return;
        }
        if self.labels.channel_names.contains_key(&info.id) {
            return;
        }
        let wanted = match info.kind {
            ChannelKind::Dm => {
                let sim = self.sim();
                let mut names: Vec<String> = members.iter().map(|u| sim.user_name(*u)).collect();
                names.sort();
                format!("dm:{}", names.join(","))
            }
            ChannelKind::GroupDm => format!("gdm:{}", info.name.replace(' ', "_")),
            ChannelKind::Thread => format!("thread:{}", info.name.replace(' ', "_")),
            _ => {
                let space = info.space.map_or("?".into(), |s| self.view().space(s));
                format!("{space}/{}", info.name.replace(' ', "_"))
            }
        };
        let label = self.labels.fresh_channel(wanted);
        self.labels.channel(&label, info.id);
    }

    fn render(&mut self, d: &Delivered) -> String {
        let view = self.view();
        let mut recipients: Vec<String> = d.recipients.iter().map(|u| view.user(*u)).collect();
        recipients.sort();
        format!("[{}] {}", recipients.join(" "), view.event(&d.event.kind))
    }
}

/// Read-only rendering of ids and events with the script's names.
struct View<'a> {
    sim: &'a Sim,
    labels: &'a Labels,
}

impl View<'_> {
    fn user(&self, u: UserId) -> String {
        self.sim.user_name(u)
    }

    fn users(&self, users: &[UserId]) -> String {
        let mut v: Vec<String> = users.iter().map(|u| self.user(*u)).collect();
        v.sort();
        v.join(",")
    }

    fn channel(&self, c: ChannelId) -> String {
        self.labels
            .channel_names
            .get(&c)
            .cloned()
            .unwrap_or_else(|| format!("?{c}"))
    }

    fn space(&self, s: SpaceId) -> String {
        self.labels
            .space_names
            .get(&s)
            .cloned()
            .unwrap_or_else(|| format!("?{s}"))
    }

    fn role(&self, r: RoleId) -> String {
        if self.labels.space_names.contains_key(&SpaceId(r.0)) {
            return "@everyone".into();
        }
        self.labels
            .role_names
            .get(&r)
            .cloned()
            .unwrap_or_else(|| format!("?{r}"))
    }

    fn message(&self, m: MessageId) -> String {
        self.labels
            .message_names
            .get(&m)
            .cloned()
            .unwrap_or_else(|| format!("?{m}"))
    }

    fn invite(&self, code: &str) -> String {
        self.labels
            .invite_names
            .get(code)
            .cloned()
            .unwrap_or_else(|| format!("?{code}"))
    }

    fn target(&self, t: &OverwriteTarget) -> String {
        match t {
            OverwriteTarget::Role(r) => self.role(*r),
            OverwriteTarget::Member(u) => self.user(*u),
        }
    }

    fn overwrite(&self, t: &OverwriteTarget, allow: Permissions, deny: Permissions) -> String {
        let mut s = format!("{}:", self.target(t));
        if !allow.is_empty() {
            let _ = write!(s, "+{}", perms_text(allow));
        }
        if !deny.is_empty() {
            let _ = write!(s, "-{}", perms_text(deny));
        }
        s
    }

    fn channels(&self, notices: &[(ChannelId, MessageId)]) -> String {
        let mut v: Vec<String> = notices.iter().map(|(c, _)| self.channel(*c)).collect();
        v.sort();
        v.join(",")
    }

    fn event(&self, kind: &EventKind) -> String {
        use EventKind as E;
        let mut s = String::new();
        let w = &mut s;
        let opt = |w: &mut String, text: &Option<String>| {
            if let Some(t) = text {
                let _ = write!(w, " {t:?}");
            }
        };
        match kind {
            E::UserCreated {
                user,
                password_hash,
                bot,
                system,
                ..
            } => {
                let what = if *system {
                    "system"
                } else if *bot {
                    "bot"
                } else if password_hash.is_some() {
                    "account"
                } else {
                    "guest"
                };
                let _ = write!(w, "user_created {} {what}", self.user(*user));
            }
            E::ProfileUpdated {
                user,
                display_name,
                bio,
                avatar_url,
            } => {
                let _ = write!(w, "profile {}", self.user(*user));
                for (k, v) in [
                    ("display_name", display_name),
                    ("bio", bio),
                    ("avatar", avatar_url),
                ] {
                    if let Some(v) = v {
                        let _ = write!(w, " {k}={v:?}");
                    }
                }
            }
            E::PasswordChanged { user, .. } => {
                let _ = write!(w, "password {}", self.user(*user));
            }
            E::NickChanged {
                user,
                old,
                new,
                notices,
            } => {
                let _ = write!(w, "nick {} {old} -> {new}", self.user(*user));
                if !notices.is_empty() {
                    let _ = write!(w, " in {}", self.channels(notices));
                }
            }
            E::ClientCreated { client, user, .. } => {
                let _ = write!(
                    w,
                    "client_created {} of {}",
                    self.sim.client_name(*client),
                    self.user(*user)
                );
            }
            E::ClientRemoved { client, reason, .. } => {
                let why = match reason {
                    ClientEnd::Logout => "logout",
                    ClientEnd::Expired => "expired",
                    ClientEnd::Revoked => "revoked",
                };
                let _ = write!(w, "client_removed {} {why}", self.sim.client_name(*client));
            }
            E::Quit {
                user,
                reason,
                notices,
                released,
            } => {
                let _ = write!(w, "quit {}", self.user(*user));
                if *released {
                    w.push_str(" released");
                }
                if !notices.is_empty() {
                    let _ = write!(w, " from {}", self.channels(notices));
                }
                opt(w, reason);
            }
            E::AwayChanged { user, message } => match message {
                Some(m) => {
                    let _ = write!(w, "away {} {m:?}", self.user(*user));
                }
                None => {
                    let _ = write!(w, "back {}", self.user(*user));
                }
            },
            E::PresenceChanged { user, status } => {
                let _ = write!(w, "presence {} {}", self.user(*user), lower(status));
            }
            E::Typing { user, channel } => {
                let _ = write!(w, "typing {} {}", self.channel(*channel), self.user(*user));
            }
            E::ReadAck {
                user,
                channel,
                message,
                mention_count,
            } => {
                let _ = write!(
                    w,
                    "read {} {} {} mentions={mention_count}",
                    self.channel(*channel),
                    self.user(*user),
                    self.message(*message)
                );
            }
            E::SpaceCreated { space, .. } => {
                let _ = write!(
                    w,
                    "space_created {} {:?} owner={} {}",
                    self.space(space.id),
                    space.name,
                    self.user(space.owner),
                    if space.public { "public" } else { "private" }
                );
            }
            E::SpaceUpdated { space } => {
                let _ = write!(
                    w,
                    "space_updated {} {:?} {}",
                    self.space(space.id),
                    space.name,
                    if space.public { "public" } else { "private" }
                );
                if let Some(d) = &space.description {
                    let _ = write!(w, " desc={d:?}");
                }
                if let Some(i) = &space.icon_url {
                    let _ = write!(w, " icon={i:?}");
                }
            }
            E::SpaceDeleted { space } => {
                let _ = write!(w, "space_deleted {}", self.space(*space));
            }
            E::MemberJoined {
                space,
                user,
                invite,
            } => {
                let _ = write!(
                    w,
                    "member_joined {} {}",
                    self.space(*space),
                    self.user(*user)
                );
                if let Some(code) = invite {
                    let _ = write!(w, " invite={}", self.invite(code));
                }
            }
            E::MemberLeft {
                space,
                user,
                reason,
            } => {
                let _ = write!(w, "member_left {} {}", self.space(*space), self.user(*user));
                match reason {
                    LeaveReason::Left => w.push_str(" left"),
                    LeaveReason::Gone => w.push_str(" gone"),
                    LeaveReason::Kicked { by, reason } => {
                        let _ = write!(w, " kicked by {}", self.user(*by));
                        opt(w, reason);
                    }
                }
            }
            E::MemberUpdated {
                space,
                user,
                roles,
                nick,
            } => {
                let mut r: Vec<String> = roles.iter().map(|r| self.role(*r)).collect();
                r.sort();
                let _ = write!(
                    w,
                    "member_updated {} {} roles={}",
                    self.space(*space),
                    self.user(*user),
                    if r.is_empty() {
                        "-".into()
                    } else {
                        r.join(",")
                    }
                );
                if let Some(n) = nick {
                    let _ = write!(w, " nick={n:?}");
                }
            }
            E::SpaceBanned {
                space,
                user,
                by,
                reason,
            } => {
                let _ = write!(
                    w,
                    "space_banned {} {} by {}",
                    self.space(*space),
                    self.user(*user),
                    self.user(*by)
                );
                opt(w, reason);
            }
            E::SpaceUnbanned { space, user } => {
                let _ = write!(
                    w,
                    "space_unbanned {} {}",
                    self.space(*space),
                    self.user(*user)
                );
            }
            E::RoleUpserted {
                space,
                role,
                created,
            } => {
                let _ = write!(
                    w,
                    "{} {} {} {:?} pos={} perms={}",
                    if *created {
                        "role_created"
                    } else {
                        "role_updated"
                    },
                    self.space(*space),
                    self.role(role.id),
                    role.name,
                    role.position,
                    perms_text(role.permissions)
                );
                if role.color != 0 {
                    let _ = write!(w, " color={}", role.color);
                }
                if role.hoist {
                    w.push_str(" hoist");
                }
                if role.mentionable {
                    w.push_str(" mentionable");
                }
            }
            E::RoleDeleted { space, role } => {
                let _ = write!(
                    w,
                    "role_deleted {} {}",
                    self.space(*space),
                    self.role(*role)
                );
            }
            E::ChannelCreated { channel, members } => {
                let _ = write!(
                    w,
                    "channel_created {} {}",
                    self.channel(channel.id),
                    lower(channel.kind)
                );
                self.channel_info(w, channel);
                if !members.is_empty() {
                    let _ = write!(w, " members={}", self.users(members));
                }
            }
            E::ChannelUpdated { channel } => {
                let _ = write!(w, "channel_updated {}", self.channel(channel.id));
                self.channel_info(w, channel);
            }
            E::ChannelDeleted { channel } => {
                let _ = write!(w, "channel_deleted {}", self.channel(*channel));
            }
            E::ChannelAccess {
                channel,
                added,
                removed,
            } => {
                let _ = write!(w, "access {}", self.channel(*channel));
                if !added.is_empty() {
                    let _ = write!(w, " +{}", self.users(added));
                }
                if !removed.is_empty() {
                    let _ = write!(w, " -{}", self.users(removed));
                }
            }
            E::OverwriteSet {
                channel,
                target,
                allow,
                deny,
            } => {
                let _ = write!(
                    w,
                    "overwrite {} {}",
                    self.channel(*channel),
                    self.overwrite(target, *allow, *deny)
                );
            }
            E::OverwriteDeleted { channel, target } => {
                let _ = write!(
                    w,
                    "overwrite_deleted {} {}",
                    self.channel(*channel),
                    self.target(target)
                );
            }
            E::Joined {
                channel,
                user,
                modes,
                ..
            } => {
                let _ = write!(
                    w,
                    "join {} {}{}",
                    self.channel(*channel),
                    self.user(*user),
                    member_modes(*modes)
                );
            }
            E::Parted {
                channel,
                user,
                reason,
                ..
            } => {
                let _ = write!(w, "part {} {}", self.channel(*channel), self.user(*user));
                opt(w, reason);
            }
            E::Kicked {
                channel,
                user,
                by,
                reason,
                ..
            } => {
                let _ = write!(
                    w,
                    "kick {} {} by {}",
                    self.channel(*channel),
                    self.user(*user),
                    self.user(*by)
                );
                opt(w, reason);
            }
            E::TopicChanged { channel, topic, .. } => match topic {
                Some(t) => {
                    let _ = write!(
                        w,
                        "topic {} {:?} by {}",
                        self.channel(*channel),
                        t.text,
                        self.user(t.by)
                    );
                }
                None => {
                    let _ = write!(w, "topic {} cleared", self.channel(*channel));
                }
            },
            E::ModeChanged {
                channel,
                by,
                changes,
                ..
            } => {
                let _ = write!(
                    w,
                    "mode {} {} by {}",
                    self.channel(*channel),
                    self.mode_changes(changes),
                    self.user(*by)
                );
            }
            E::Invited {
                channel, user, by, ..
            } => {
                let _ = write!(
                    w,
                    "invited {} {} by {}",
                    self.channel(*channel),
                    self.user(*user),
                    self.user(*by)
                );
            }
            E::MessageCreated { message: m } => {
                let _ = write!(
                    w,
                    "{} {} {} {} {:?}",
                    m.kind.name(),
                    self.message(m.id),
                    self.channel(m.channel),
                    self.user(m.author),
                    m.body
                );
                if let Some(r) = m.reply_to {
                    let _ = write!(w, " reply={}", self.message(r));
                }
                if !m.mentions.is_empty() {
                    let _ = write!(w, " mentions={}", self.users(&m.mentions));
                }
                if m.mention_everyone {
                    w.push_str(" @everyone");
                }
                if m.mention_here {
                    w.push_str(" @here");
                }
                for a in &m.attachments {
                    let _ = write!(w, " attach={}", a.filename);
                }
                if let Some(meta) = &m.meta {
                    let _ = write!(w, " meta={meta}");
                }
                if let Some(e) = &m.embeds {
                    let _ = write!(w, " embeds={e}");
                }
                if let Some(n) = &m.nonce {
                    let _ = write!(w, " nonce={n}");
                }
                if m.tts {
                    w.push_str(" tts");
                }
            }
            E::MessageEdited {
                message,
                body,
                meta,
                mentions,
                ..
            } => {
                let _ = write!(w, "edit {} {body:?}", self.message(*message));
                if !mentions.is_empty() {
                    let _ = write!(w, " mentions={}", self.users(mentions));
                }
                if let Some(meta) = meta {
                    let _ = write!(w, " meta={meta}");
                }
            }
            E::MessageDeleted { message, by, .. } => {
                let _ = write!(w, "delete {} by {}", self.message(*message), self.user(*by));
            }
            E::MessagesDeleted {
                channel,
                messages,
                by,
            } => {
                let m: Vec<String> = messages.iter().map(|m| self.message(*m)).collect();
                let _ = write!(
                    w,
                    "bulk_delete {} {} by {}",
                    self.channel(*channel),
                    m.join(","),
                    self.user(*by)
                );
            }
            E::ReactionAdded {
                message,
                user,
                emoji,
                ..
            } => {
                let _ = write!(
                    w,
                    "react {} {} {emoji}",
                    self.message(*message),
                    self.user(*user)
                );
            }
            E::ReactionRemoved {
                message,
                user,
                emoji,
                ..
            } => {
                let _ = write!(
                    w,
                    "unreact {} {} {emoji}",
                    self.message(*message),
                    self.user(*user)
                );
            }
            E::Pinned { message, by, .. } => {
                let _ = write!(w, "pin {} by {}", self.message(*message), self.user(*by));
            }
            E::Unpinned { message, by, .. } => {
                let _ = write!(w, "unpin {} by {}", self.message(*message), self.user(*by));
            }
            E::InviteCreated { invite } => {
                let to = match invite.target {
                    chat_core::InviteTarget::Channel(c) => self.channel(c),
                    chat_core::InviteTarget::Space(s, _) => self.space(s),
                };
                let _ = write!(
                    w,
                    "invite_created {} to {to} by {}",
                    self.invite(&invite.code),
                    self.user(invite.creator)
                );
                if invite.max_uses > 0 {
                    let _ = write!(w, " uses={}", invite.max_uses);
                }
                if let Some(at) = invite.expires_at {
                    let _ = write!(w, " expires=+{}", duration_text(at - invite.created_at));
                }
            }
            E::InviteUsed { code, user } => {
                let _ = write!(w, "invite_used {} {}", self.invite(code), self.user(*user));
            }
            E::InviteDeleted { code } => {
                let _ = write!(w, "invite_deleted {}", self.invite(code));
            }
            E::ChannelListed { channel, listed } => {
                let what = if *listed { "listed" } else { "unlisted" };
                let _ = write!(w, "{what} {}", self.channel(*channel));
            }
            other => {
                let _ = write!(w, "{other:?}");
            }
        }
        s
    }

    fn channel_info(&self, w: &mut String, c: &ChannelInfo) {
        if c.kind != ChannelKind::Dm && !c.name.is_empty() && !c.name.starts_with('#') {
            let _ = write!(w, " {:?}", c.name);
        }
        if let Some(p) = c.parent {
            let _ = write!(w, " parent={}", self.channel(p));
        }
        if let Some(m) = c.starter {
            let _ = write!(w, " from={}", self.message(m));
        }
        let flags = flags_text(&c.flags);
        if !flags.is_empty() {
            let _ = write!(w, " {flags}");
        }
        if let Some(t) = &c.topic {
            let _ = write!(w, " topic={:?}", t.text);
        }
        if c.slowmode_secs > 0 {
            let _ = write!(w, " slowmode={}", c.slowmode_secs);
        }
        if c.position != 0 {
            let _ = write!(w, " pos={}", c.position);
        }
        for (t, a, d) in &c.overwrites {
            let _ = write!(w, " {}", self.overwrite(t, *a, *d));
        }
    }

    /// IRC's notation: `+ik-o key bob`.
    fn mode_changes(&self, changes: &[ModeChange]) -> String {
        let mut letters = String::new();
        let mut args = Vec::new();
        let mut sign = None;
        let mut put = |on: bool, letter: char, letters: &mut String| {
            if sign != Some(on) {
                letters.push(if on { '+' } else { '-' });
                sign = Some(on);
            }
            letters.push(letter);
        };
        for c in changes {
            match c {
                ModeChange::Flag { letter, on } => put(*on, *letter, &mut letters),
                ModeChange::Key(k) => {
                    put(k.is_some(), 'k', &mut letters);
                    args.extend(k.clone());
                }
                ModeChange::Limit(l) => {
                    put(l.is_some(), 'l', &mut letters);
                    args.extend(l.map(|l| l.to_string()));
                }
                ModeChange::Ban { mask, on } => {
                    put(*on, 'b', &mut letters);
                    args.push(mask.clone());
                }
                ModeChange::Op { user, on } => {
                    put(*on, 'o', &mut letters);
                    args.push(self.user(*user));
                }
                ModeChange::Voice { user, on } => {
                    put(*on, 'v', &mut letters);
                    args.push(self.user(*user));
                }
            }
        }
        for a in args {
            letters.push(' ');
            letters.push_str(&a);
        }
        letters
    }
}

fn member_modes(m: MemberModes) -> String {
    match (m.op, m.voice) {
        (true, true) => " +ov".into(),
        (true, false) => " +o".into(),
        (false, true) => " +v".into(),
        (false, false) => String::new(),
    }
}

fn flags_text(f: &ChannelFlags) -> String {
    let mut s = String::new();
    for (on, letter) in [
        (f.no_external, 'n'),
        (f.secret, 's'),
        (f.topic_lock, 't'),
        (f.key.is_some(), 'k'),
        (f.limit.is_some(), 'l'),
    ] {
        if on {
            s.push(letter);
        }
    }
    if s.is_empty() {
        return s;
    }
    let mut s = format!("+{s}");
    if let Some(k) = &f.key {
        let _ = write!(s, " {k}");
    }
    if let Some(l) = f.limit {
        let _ = write!(s, " {l}");
    }
    s
}

/// `KICK_MEMBERS|BAN_MEMBERS`, `-` for none, `ALL` for every bit.
fn perms_text(p: Permissions) -> String {
    if p.is_empty() {
        return "-".into();
    }
    if p == Permissions::all() {
        return "ALL".into();
    }
    p.iter_names().map(|(n, _)| n).collect::<Vec<_>>().join("|")
}

fn parse_perms(s: &str) -> Result<Permissions, String> {
    match s {
        "-" | "none" => return Ok(Permissions::empty()),
        "ALL" => return Ok(Permissions::all()),
        "DEFAULT" => return Ok(Permissions::DEFAULT_EVERYONE),
        _ => {}
    }
    s.split('|').try_fold(Permissions::empty(), |acc, name| {
        Permissions::from_name(name)
            .map(|p| acc | p)
            .ok_or_else(|| format!("unknown permission {name}"))
    })
}

/// The refusal as a script writes it: its name, then the detail that says which rule or field.
fn error_text(e: &Error) -> String {
    let detail = match e {
        Error::PrivilegesNeeded { permission } => perms_text(*permission),
        Error::InvalidInput { field, .. } => field.to_string(),
        Error::RateLimited { retry_after_ms } => duration_text(*retry_after_ms),
        Error::MessageTooLong { len, max } => format!("{len} > {max}"),
        Error::UnknownMode { letter } => letter.to_string(),
        Error::NeedMoreParams { what } | Error::LimitReached { what } => (*what).to_owned(),
        Error::NotSupported { what } => (*what).to_owned(),
        Error::ErroneousNick { reason } | Error::BadChannelName { reason } => (*reason).to_owned(),
        _ => String::new(),
    };
    if detail.is_empty() {
        e.name().to_owned()
    } else {
        format!("{} {detail}", e.name())
    }
}

fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

fn nosuch_user() -> UserId {
    UserId::from_raw(1).expect("1 is not 0")
}

fn duration_text(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// `500ms`, `5s`, `10m`, `24h`, `7d`, or a sum of them such as `19h59m59s`.
fn parse_duration(s: &str) -> Result<u64, String> {
    let mut total = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration {s}"))?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..letters] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("bad duration unit in {s}")),
        };
        rest = &rest[letters..];
        total += n * unit;
    }
    Ok(total)
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

fn is_expectation(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with('=') || t.starts_with('!')
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Collapses runs of whitespace, so that alignment in scripts does not matter.
fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts a trailing ` # comment` that is outside double quotes; a line starting with `#` is all comment.
fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'#' if !quoted
                && i > 0
                && bytes[i - 1].is_ascii_whitespace()
                && bytes.get(i + 1).is_none_or(u8::is_ascii_whitespace) =>
            {
                return &line[..i];
            }
            _ => {}
        }
    }
    line
}

/// Unescapes a quoted body and expands `${text*n}`.
fn body_text(raw: &str) -> String {
    let raw = raw.trim();
    let text = if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        unescape(&raw[1..raw.len() - 1])
    } else {
        raw.to_owned()
    };
    expand(&text)
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('u') => {
                // `\u{2}`: a character by its hex code, for control characters.
                let code: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                match u32::from_str_radix(&code, 16).ok().and_then(char::from_u32) {
                    Some(c) => out.push(c),
                    None => out.push('\u{fffd}'),
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + len];
        match inner
            .rsplit_once('*')
            .and_then(|(t, n)| Some((t, n.parse::<usize>().ok()?)))
        {
            Some((text, n)) => {
                out.push_str(&rest[..start]);
                out.push_str(&text.repeat(n));
            }
            None => out.push_str(&rest[..start + len + 1]),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// A cursor over a step's arguments: words (double quotes group), options, and the raw rest of the line.
struct Args<'a> {
    rest: &'a str,
}

impl<'a> Args<'a> {
    fn new(s: &'a str) -> Self {
        Self { rest: s.trim() }
    }

    fn done(&self) -> bool {
        self.rest.trim().is_empty()
    }

    /// The next word; a word may hold "quoted text with spaces".
    fn opt_word(&mut self) -> Option<String> {
        let s = self.rest.trim_start();
        if s.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut end = s.len();
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let word = &s[..end];
        self.rest = &s[end..];
        // Quotes group a `"whole word"` or a `key="value"`; quotes inside a word (JSON) are kept.
        let word = match word.split_once("=\"") {
            Some((key, value)) if value.ends_with('"') => {
                format!("{key}={}", unescape(&value[..value.len() - 1]))
            }
            _ if word.len() >= 2 && word.starts_with('"') && word.ends_with('"') => {
                unescape(&word[1..word.len() - 1])
            }
            _ => word.to_owned(),
        };
        Some(expand(&word))
    }

    fn word(&mut self) -> Result<String, String> {
        self.opt_word().ok_or_else(|| "missing argument".into())
    }

    fn words(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.opt_word()).collect()
    }

    /// Takes the next word if it is exactly `flag`.
    fn flag(&mut self, flag: &str) -> bool {
        let s = self.rest.trim_start();
        let (w, rest) = split_word(s);
        if w == flag {
            self.rest = rest;
            true
        } else {
            false
        }
    }

    /// Takes a `key=value` word if its key is one of `keys`.
    fn known_option(&mut self, keys: &[&str]) -> Option<(String, String)> {
        let s = self.rest.trim_start();
        let (w, _) = split_word(s);
        let (k, _) = w.split_once('=')?;
        if !keys.contains(&k) {
            return None;
        }
        let word = self.opt_word()?;
        let (k, v) = word.split_once('=')?;
        Some((k.to_owned(), v.to_owned()))
    }

    /// Takes every remaining word as `key=value`.
    fn options(&mut self) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        while let Some(word) = self.opt_word() {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {word}"))?;
            out.insert(k.to_owned(), v.to_owned());
        }
        Ok(out)
    }

    /// The rest of the line as text (possibly empty).
    fn rest_text(&mut self) -> String {
        let text = body_text(self.rest);
        self.rest = "";
        text
    }

    /// The rest of the line, `None` when there is none.
    fn opt_rest(&mut self) -> Option<String> {
        let text = self.rest_text();
        (!text.is_empty()).then_some(text)
    }
}
