//! Embeds chat-core in a plain synchronous program: two users, a channel, a few messages, a DM, mode changes
//! and an idle expiry, with every event printed as it comes out of the core.
//!
//! Run it with `cargo run -p chat-core --example embed`.
//!
//! There is no async runtime and no clock: the program owns the time (`now`), feeds commands to
//! [`Core::handle`], drains [`Core::poll_event`] after each one, and when it wants time to pass it jumps
//! straight to [`Core::poll_timeout`] and calls [`Core::handle_timeout`], as a server's timer would.

use chat_core::{
    ChannelId, ChannelKind, ClientId, Command, Config, Core, Created, Error, Event, EventKind,
    MessageKind, ModeChange, NewClient, Origin, Outgoing, Target, UnixMillis, UserId,
};

/// The embedding program: the core plus the clock it drives it with.
struct Host {
    core: Core,
    now: UnixMillis,
}

impl Host {
    /// Applies one command a second after the previous one and prints what it produced.
    fn run(
        &mut self,
        who: &str,
        origin: Origin,
        command: Command,
    ) -> Result<Option<Created>, Error> {
        self.now += 1_000;
        let result = self.core.handle(self.now, origin, command);
        match &result {
            Ok(reply) => println!("{who}: accepted, {} event(s)", reply.events),
            Err(e) => println!("{who}: refused: {e} ({})", e.name()),
        }
        self.drain();
        result.map(|reply| reply.created)
    }

    /// Prints every event waiting in the core. Recipients must be resolved before the next input.
    fn drain(&mut self) {
        while let Some(event) = self.core.poll_event() {
            let seq = if event.is_durable() {
                format!("#{:<3}", event.seq)
            } else {
                "live".to_owned()
            };
            let to: Vec<String> = self.core.recipients(&event).map(|u| self.nick(u)).collect();
            println!("  {seq} {:<40} -> [{}]", self.render(&event), to.join(", "));
        }
    }

    fn nick(&self, user: UserId) -> String {
        self.core
            .user(user)
            .map_or_else(|| user.to_string(), |u| u.nick.clone())
    }

    /// A channel's name, or for a DM the two people in it.
    fn place(&self, channel: ChannelId) -> String {
        match self.core.channel(channel) {
            Some(ch) if ch.kind == ChannelKind::Dm => {
                let people: Vec<String> = ch.members().map(|(u, _)| self.nick(u)).collect();
                format!("DM({})", people.join("+"))
            }
            Some(ch) => ch.name.clone(),
            None => channel.to_string(),
        }
    }

    /// One line per event, in the style of an IRC client's buffer.
    fn render(&self, event: &Event) -> String {
        match &event.kind {
            EventKind::UserCreated { nick, .. } => format!("user {nick} created"),
            EventKind::ClientCreated { user, name, .. } => {
                format!("client '{name}' of {} created", self.nick(*user))
            }
            EventKind::ClientRemoved { user, reason, .. } => {
                format!("client of {} removed ({reason:?})", self.nick(*user))
            }
            EventKind::ChannelCreated { channel, .. } => {
                format!("channel {} created", self.place(channel.id))
            }
            EventKind::ChannelDeleted { channel } => format!("channel {channel} deleted"),
            EventKind::Joined { channel, user, .. } => {
                format!("{} joined {}", self.nick(*user), self.place(*channel))
            }
            EventKind::Parted { channel, user, .. } => {
                format!("{} left {}", self.nick(*user), self.place(*channel))
            }
            EventKind::MessageCreated { message: m } => {
                let (from, body, place) = (self.nick(m.author), &m.body, self.place(m.channel));
                match m.kind {
                    MessageKind::Action => format!("{place}: * {from} {body}"),
                    MessageKind::Notice => format!("{place}: -{from}- {body}"),
                    _ => format!("{place}: <{from}> {body}"),
                }
            }
            EventKind::ModeChanged {
                channel,
                by,
                changes,
                ..
            } => {
                let changes: Vec<String> = changes.iter().map(|c| self.mode(c)).collect();
                format!(
                    "{} sets mode {} on {}",
                    self.nick(*by),
                    changes.join(" "),
                    self.place(*channel)
                )
            }
            EventKind::Quit { user, reason, .. } => format!(
                "{} quit ({})",
                self.nick(*user),
                reason.as_deref().unwrap_or("")
            ),
            EventKind::PresenceChanged { user, status }
            | EventKind::PresenceUpdated { user, status, .. } => {
                format!("{} is now {status:?}", self.nick(*user))
            }
            other => format!("{other:?}"),
        }
    }

    fn mode(&self, change: &ModeChange) -> String {
        let sign = |on: bool| if on { '+' } else { '-' };
        match change {
            ModeChange::Flag { letter, on } => format!("{}{letter}", sign(*on)),
            ModeChange::Key(Some(_)) => "+k ***".to_owned(),
            ModeChange::Key(None) => "-k".to_owned(),
            ModeChange::Limit(Some(n)) => format!("+l {n}"),
            ModeChange::Limit(None) => "-l".to_owned(),
            ModeChange::Ban { mask, on } => format!("{}b {mask}", sign(*on)),
            ModeChange::Op { user, on } => format!("{}o {}", sign(*on), self.nick(*user)),
            ModeChange::Voice { user, on } => format!("{}v {}", sign(*on), self.nick(*user)),
        }
    }

    /// Registers a guest with one client. The engine would make a random token and pass its SHA-256; any
    /// distinct 32 bytes do here.
    fn guest(&mut self, nick: &str, token_hash: [u8; 32]) -> Result<ClientId, Error> {
        let created = self.run(
            nick,
            Origin::Anonymous,
            Command::Register {
                nick: nick.to_owned(),
                password_hash: None,
                bot: false,
                client: Some(NewClient {
                    name: "laptop".to_owned(),
                    token_hash,
                }),
            },
        )?;
        match created {
            Some(Created::User {
                client: Some(client),
                ..
            }) => Ok(client),
            // A guest registration always makes its client; anything else would be a bug in the core.
            other => panic!("register made {other:?}"),
        }
    }
}

fn say(kind: MessageKind, to: &str, body: &str) -> Command {
    Command::Send {
        to: Target::parse(to),
        message: Outgoing {
            kind: Some(kind),
            body: body.to_owned(),
            ..Outgoing::default()
        },
    }
}

fn mode(modes: &str, args: &[&str]) -> Command {
    Command::Mode {
        channel: chat_core::ChannelRef::Name("#rust".to_owned()),
        modes: modes.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    }
}

fn main() -> Result<(), Error> {
    let now = 1_800_000_000_000;
    let mut host = Host {
        core: Core::new(Config::default(), now),
        now,
    };
    // The genesis events (the server's user, the network space) would go to the log; nobody sees them.
    while host.core.poll_event().is_some() {}

    println!("-- two guests sign up");
    let alice = host.guest("alice", [1; 32])?;
    let bob = host.guest("bob", [2; 32])?;
    let (alice, bob) = (Origin::Client(alice), Origin::Client(bob));

    println!("\n-- a channel: the first JOIN creates it and makes alice its operator");
    let join = |name: &str| Command::Join {
        channel: name.to_owned(),
        key: None,
    };
    host.run("alice", alice, join("#rust"))?;
    host.run("bob", bob, join("#rust"))?;

    println!(
        "\n-- messages: a PRIVMSG, an ACTION, and a DM by nick (which creates the DM channel)"
    );
    host.run(
        "alice",
        alice,
        say(MessageKind::Message, "#rust", "hello, @bob"),
    )?;
    host.run(
        "bob",
        bob,
        say(MessageKind::Action, "#rust", "waves at alice"),
    )?;
    host.run(
        "alice",
        alice,
        say(MessageKind::Message, "bob", "psst, want voice?"),
    )?;

    println!("\n-- +m silences everyone without voice; bob is refused and nothing is emitted");
    host.run("alice", alice, mode("+m", &[]))?;
    let refused = host.run("bob", bob, say(MessageKind::Message, "#rust", "hello?"));
    assert_eq!(refused, Err(Error::CannotSend));

    println!("\n-- +v gives bob his voice back");
    host.run("alice", alice, mode("+v", &["bob"]))?;
    host.run("bob", bob, say(MessageKind::Message, "#rust", "thanks!"))?;

    println!("\n-- time passes: alice stays active, bob's client idles out and the guest quits");
    // Jump the clock 23 hours ahead; alice's client does something and so stays alive for another day.
    host.now += 23 * 3_600_000;
    host.run("alice", alice, Command::Touch)?;
    // Then fire every timer due in the next two hours, as the engine's timer task would.
    let until = host.now + 2 * 3_600_000;
    while let Some(at) = host.core.poll_timeout().filter(|at| *at <= until) {
        host.now = at;
        println!("timer fires at +{:.1} h", (at - now) as f64 / 3_600_000.0);
        host.core.handle_timeout(at);
        host.drain();
    }
    let members: Vec<String> = host
        .core
        .channel_by_name("#rust")
        .map(|ch| ch.members().map(|(u, _)| host.nick(u)).collect())
        .unwrap_or_default();
    println!("#rust now has [{}]", members.join(", "));
    Ok(())
}
