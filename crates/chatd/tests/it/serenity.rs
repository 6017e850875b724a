//! serenity 0.12, unmodified, as a bot author uses it: a `Client` with an `EventHandler`, its cache and its
//! shard runner, pointed at a real chatd only by `HttpBuilder::proxy` (serenity then asks `GET /api/v10/gateway`
//! for the gateway URL). The bot logs in, reads READY and GUILD_CREATE, answers a long-poll user, sends,
//! replies, edits, reacts, types, deletes, uploads a file, reads history, and resumes after a cut connection
//! and after a server restart without missing an event.
//!
//! serenity resumes at once when a connection drops, tries once more if that fails, and then identifies
//! afresh (a new session: the events in between are lost). So across a restart the bot reaches chatd through a
//! front with a stable address that holds new connections until the server listens again, as a reverse proxy
//! or a socket-activated service does in production.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use serenity::all::{
    CacheHttp, ChannelId, ChannelPinsUpdateEvent, ChannelType, ChunkGuildFilter, ClientBuilder,
    Context, CreateAttachment, CreateEmbed, CreateMessage, CreateThread, EditChannel, EditMessage,
    EventHandler, GatewayIntents, GetMessages, Guild, GuildChannel, GuildId,
    GuildMembersChunkEvent, HttpBuilder, Member, Mentionable, Message, MessageId, MessageType,
    MessageUpdateEvent, OnlineStatus, Presence, Reaction, ReactionType, Ready, ResumedEvent,
    ShardId, ShardManager, TypingStartEvent,
};
use serenity::async_trait;
use tokio::sync::mpsc;

use crate::harness::{Client as LongPoll, Relay, Server, of_type};

/// How long any one expected thing may take.
const WAIT: Duration = Duration::from_secs(10);

// --- the bot ------------------------------------------------------------------------------------------------

/// What the bot's event handler saw, in the order serenity dispatched it.
#[derive(Debug)]
enum Seen {
    Ready(Box<Ready>),
    GuildCreate(Box<Guild>, Option<bool>),
    CacheReady(Vec<GuildId>),
    Message(Box<Message>),
    Update(Box<MessageUpdateEvent>),
    Reaction(Box<Reaction>),
    Delete(ChannelId, MessageId),
    Typing(Box<TypingStartEvent>),
    Resumed,
    ReactionRemove(Box<Reaction>),
    DeleteBulk(ChannelId, Vec<MessageId>),
    ThreadCreate(Box<GuildChannel>),
    Pins(ChannelId),
    Chunk(Box<GuildMembersChunkEvent>),
    ChannelUpdate(Box<GuildChannel>),
    MemberAdd(Box<Member>),
    Presence(Box<Presence>),
}

/// The bot: forwards every event to the test, and answers `!echo TEXT` with a reply, as bots do.
struct Bot {
    seen: mpsc::UnboundedSender<Seen>,
}

impl Bot {
    fn tell(&self, seen: Seen) {
        // The receiver lives as long as the test; a send after it ends has no one to tell.
        let _ = self.seen.send(seen);
    }
}

#[async_trait]
impl EventHandler for Bot {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        self.tell(Seen::Ready(Box::new(ready)));
    }

    async fn guild_create(&self, _ctx: Context, guild: Guild, is_new: Option<bool>) {
        self.tell(Seen::GuildCreate(Box::new(guild), is_new));
    }

    async fn cache_ready(&self, _ctx: Context, guilds: Vec<GuildId>) {
        self.tell(Seen::CacheReady(guilds));
    }

    async fn message(&self, ctx: Context, msg: Message) {
        if let Some(text) = msg.content.strip_prefix("!echo ")
            && msg.author.id != ctx.cache.current_user().id
        {
            // The reply goes through serenity's model method, with the cache's permission checks.
            if let Err(e) = msg.reply(&ctx, text).await {
                panic!("the bot could not reply: {e:?}");
            }
        }
        self.tell(Seen::Message(Box::new(msg)));
    }

    async fn message_update(
        &self,
        _ctx: Context,
        _old: Option<Message>,
        _new: Option<Message>,
        event: MessageUpdateEvent,
    ) {
        self.tell(Seen::Update(Box::new(event)));
    }

    async fn reaction_add(&self, _ctx: Context, reaction: Reaction) {
        self.tell(Seen::Reaction(Box::new(reaction)));
    }

    async fn message_delete(
        &self,
        _ctx: Context,
        channel: ChannelId,
        message: MessageId,
        _guild: Option<GuildId>,
    ) {
        self.tell(Seen::Delete(channel, message));
    }

    async fn typing_start(&self, _ctx: Context, event: TypingStartEvent) {
        self.tell(Seen::Typing(Box::new(event)));
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.tell(Seen::Resumed);
    }

    async fn reaction_remove(&self, _ctx: Context, reaction: Reaction) {
        self.tell(Seen::ReactionRemove(Box::new(reaction)));
    }

    async fn message_delete_bulk(
        &self,
        _ctx: Context,
        channel: ChannelId,
        messages: Vec<MessageId>,
        _guild: Option<GuildId>,
    ) {
        self.tell(Seen::DeleteBulk(channel, messages));
    }

    async fn thread_create(&self, _ctx: Context, thread: GuildChannel) {
        self.tell(Seen::ThreadCreate(Box::new(thread)));
    }

    async fn channel_update(&self, _ctx: Context, _old: Option<GuildChannel>, new: GuildChannel) {
        self.tell(Seen::ChannelUpdate(Box::new(new)));
    }

    async fn presence_update(&self, _ctx: Context, presence: Presence) {
        self.tell(Seen::Presence(Box::new(presence)));
    }

    async fn guild_member_addition(&self, _ctx: Context, member: Member) {
        self.tell(Seen::MemberAdd(Box::new(member)));
    }

    async fn guild_members_chunk(&self, _ctx: Context, chunk: GuildMembersChunkEvent) {
        self.tell(Seen::Chunk(Box::new(chunk)));
    }

    async fn channel_pins_update(&self, _ctx: Context, pin: ChannelPinsUpdateEvent) {
        self.tell(Seen::Pins(pin.channel_id));
    }
}

/// The test's side of the bot: its events, and serenity's HTTP client and cache.
struct Running {
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Events a `wait_for` passed over.
    backlog: VecDeque<Seen>,
    http: Arc<serenity::http::Http>,
    cache: Arc<serenity::cache::Cache>,
    manager: Arc<ShardManager>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    /// What serenity's model methods take: the cache (for permission checks) and the HTTP client.
    fn ctx(&self) -> impl CacheHttp + '_ {
        (&self.cache, &*self.http)
    }

    /// The next event `pick` accepts, failing the test after `WAIT`. Events passed over are kept for later
    /// calls: serenity runs each handler call in its own task, so events sent in one order may reach the
    /// handler in another (CACHE_READY before the GUILD_CREATE that completed the cache, for one).
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Seen) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|s| pick(s).is_some()) {
            let seen = self
                .backlog
                .remove(i)
                .expect("a position within the backlog");
            return pick(&seen).expect("picked a moment ago");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(seen)) = tokio::time::timeout(left, self.seen.recv()).await else {
                panic!(
                    "no {what} within {WAIT:?}; saw {:?}",
                    self.backlog.iter().map(describe).collect::<Vec<_>>()
                );
            };
            if let Some(t) = pick(&seen) {
                return t;
            }
            if let Seen::Ready(_) = seen {
                panic!("a second READY while waiting for {what}: the session was lost");
            }
            self.backlog.push_back(seen);
        }
    }

    /// Forgets every event seen so far, after `quiet` without a new one.
    async fn settle(&mut self, quiet: Duration) {
        self.backlog.clear();
        while let Ok(Some(seen)) = tokio::time::timeout(quiet, self.seen.recv()).await {
            if let Seen::Ready(_) = seen {
                panic!("a second READY: the session was lost");
            }
        }
    }

    /// Every event until `done` holds for them (failing after `within`), then `grace` more.
    async fn collect(
        &mut self,
        what: &str,
        within: Duration,
        grace: Duration,
        mut done: impl FnMut(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        let mut all: Vec<Seen> = self.backlog.drain(..).collect();
        while !done(&all) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(seen)) = tokio::time::timeout(left, self.seen.recv()).await else {
                panic!(
                    "no {what} within {within:?}; saw {:?}",
                    all.iter().map(describe).collect::<Vec<_>>()
                );
            };
            if let Seen::Ready(_) = seen {
                panic!("READY again while waiting for {what}: serenity lost its session");
            }
            all.push(seen);
        }
        while let Ok(Some(seen)) = tokio::time::timeout(grace, self.seen.recv()).await {
            if let Seen::Ready(_) = seen {
                panic!("READY again after {what}: serenity lost its session");
            }
            all.push(seen);
        }
        all
    }
}

fn describe(seen: &Seen) -> String {
    match seen {
        Seen::Message(m) => format!("Message({:?})", m.content),
        Seen::Ready(_) => "Ready".into(),
        Seen::GuildCreate(g, _) => format!("GuildCreate({})", g.id),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// The contents of the messages among `seen`, by message id (serenity runs each handler call in its own
/// task, so the handler's order is not the wire's; ids are).
fn contents(seen: &[Seen]) -> Vec<String> {
    let mut messages: Vec<(MessageId, String)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Message(m) => Some((m.id, m.content.clone())),
            _ => None,
        })
        .collect();
    messages.sort();
    messages.into_iter().map(|(_, c)| c).collect()
}

fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MEMBERS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::GUILD_MESSAGE_REACTIONS
        | GatewayIntents::GUILD_MESSAGE_TYPING
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_PRESENCES
}

/// Builds the client as a bot author would (only the API base is ours) and starts its one shard.
async fn start_bot(base: &str, token: &str) -> Running {
    // serenity's own rate limiter sends to discord.com whatever the proxy; its docs pair `proxy` with
    // `ratelimiter_disabled`, the proxy (here chatd) doing the limiting.
    let http = HttpBuilder::new(token)
        .proxy(base)
        .ratelimiter_disabled(true)
        .build();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut client = ClientBuilder::new_with_http(http, intents())
        .event_handler(Bot { seen: tx })
        .await
        .expect("serenity builds its client");
    let (http, cache) = (Arc::clone(&client.http), Arc::clone(&client.cache));
    let manager = Arc::clone(&client.shard_manager);
    let task = tokio::spawn(async move {
        if let Err(e) = client.start().await {
            panic!("the serenity client stopped: {e:?}");
        }
    });
    Running {
        seen: rx,
        backlog: VecDeque::new(),
        http,
        cache,
        manager,
        task,
    }
}

// --- long-poll helpers --------------------------------------------------------------------------------------

fn addr(server: &Server) -> String {
    server
        .base
        .strip_prefix("http://")
        .expect("the harness serves plain http")
        .to_owned()
}

/// Registers a bot account over `/api/v10/auth/register`; it talks over long-poll too with its token.
async fn register_bot(server: &Server, name: &str) -> LongPoll {
    let (status, v) = server
        .post(
            "/api/v10/auth/register",
            None,
            json!({ "username": name, "password": format!("pw-{name}-long"), "bot": true }),
        )
        .await;
    assert!(status.is_success(), "register the bot {name}: {v}");
    LongPoll {
        nick: name.to_owned(),
        token: v["token"].as_str().expect("token").to_owned(),
        cursor: 0,
        epoch: String::new(),
    }
}

async fn join(server: &Server, c: &LongPoll, channel: &str) {
    server
        .ok(c, json!({ "command": "JOIN", "to": channel }))
        .await;
}

/// A long-poll PRIVMSG to `#chan`; returns the message id.
async fn say(server: &Server, c: &LongPoll, body: &str) -> String {
    let (s, v) = server
        .cmd(
            c,
            json!({ "command": "PRIVMSG", "to": "#chan", "body": body }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{} says {body}: {v}", c.nick);
    v["id"].as_str().expect("message id").to_owned()
}

// --- the test -----------------------------------------------------------------------------------------------

/// One bot's life, step by step; each step checks both what serenity made of it and what a long-poll user saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_bot_lives_a_day() {
    let mut server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botc = server.register("serenbot", "pw-serenbot").await;
    join(&server, &botc, "#chan").await;
    let (s, state) = server.get("/api/v1/state", Some(&botc.token)).await;
    assert_eq!(s, StatusCode::OK, "{state}");
    let bot_user = state["user"]["id"].as_str().expect("user.id").to_owned();
    let front = Relay::holding(addr(&server), WAIT).await;
    let mut bot = start_bot(&front.base(), &botc.token).await;

    // Logging in: READY names the bot and lists the network guild; GUILD_CREATE fills it in.
    let ready = bot
        .wait_for("READY", |s| match s {
            Seen::Ready(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ready.user.name, "serenbot");
    assert_eq!(ready.user.id.to_string(), bot_user);
    assert_eq!(
        ready.guilds.len(),
        1,
        "the network guild: {:?}",
        ready.guilds
    );
    let guild_id = ready.guilds[0].id;
    let (guild, is_new) = bot
        .wait_for("GUILD_CREATE", |s| match s {
            Seen::GuildCreate(g, is_new) if g.id == guild_id => Some((g.clone(), *is_new)),
            _ => None,
        })
        .await;
    assert_eq!(
        is_new,
        Some(false),
        "the guild READY announced, not a new one"
    );
    let chan = guild
        .channels
        .values()
        .find(|c| c.name == "chan")
        .unwrap_or_else(|| panic!("#chan in GUILD_CREATE: {:?}", guild.channels))
        .clone();
    assert_eq!(chan.kind, ChannelType::Text);
    let names: HashSet<&str> = guild
        .members
        .values()
        .map(|m| m.user.name.as_str())
        .collect();
    assert!(
        names.contains("alice") && names.contains("serenbot"),
        "members: {names:?}"
    );
    let cached = bot
        .wait_for("cache_ready", |s| match s {
            Seen::CacheReady(g) => Some(g.clone()),
            _ => None,
        })
        .await;
    assert_eq!(cached, [guild_id], "every guild READY listed arrived");
    assert_eq!(bot.cache.current_user().name, "serenbot");
    let chan = chan.id;
    assert_eq!(
        bot.cache
            .guild(guild_id)
            .and_then(|g| g.channels.get(&chan).map(|c| c.name.clone()))
            .as_deref(),
        Some("chan"),
        "the cache knows #chan"
    );
    server.drain(&mut alice).await;

    // Receiving: a long-poll user's message; the bot's handler answers with a reply.
    let asked = say(&server, &alice, "!echo hello there").await;
    let heard = bot
        .wait_for("alice's message", |s| match s {
            Seen::Message(m) if m.id.to_string() == asked => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(heard.content, "!echo hello there");
    assert_eq!(heard.author.name, "alice");
    assert_eq!((heard.channel_id, heard.guild_id), (chan, Some(guild_id)));
    let reply = bot
        .wait_for("the bot's reply", |s| match s {
            Seen::Message(m) if m.content == "hello there" => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reply.author.name, "serenbot");
    assert_eq!(reply.kind, MessageType::InlineReply);
    assert_eq!(
        reply
            .message_reference
            .as_ref()
            .and_then(|r| r.message_id)
            .map(|id| id.to_string()),
        Some(asked.clone()),
        "the reply's message_reference"
    );
    let events = server.drain(&mut alice).await;
    let lp: Vec<_> = of_type(&events, "message")
        .into_iter()
        .filter(|e| e["body"] == "hello there")
        .collect();
    assert_eq!(lp.len(), 1, "the reply over long-poll: {events:?}");
    assert_eq!(lp[0]["from"], "serenbot");
    assert_eq!(lp[0]["ref"], asked.as_str(), "it names what it answers");

    // Sending, editing, reacting, deleting: serenity's model methods.
    let mut sent = chan
        .say(bot.ctx(), "first draft")
        .await
        .expect("ChannelId::say");
    assert_eq!(sent.content, "first draft");
    sent.edit(bot.ctx(), EditMessage::new().content("second draft"))
        .await
        .expect("Message::edit");
    assert_eq!(sent.content, "second draft");
    assert!(sent.edited_timestamp.is_some(), "edited_timestamp is set");
    sent.react(bot.ctx(), '👍').await.expect("Message::react");
    let id = sent.id;
    bot.wait_for("our own MESSAGE_CREATE", |s| match s {
        Seen::Message(m) if m.id == id => Some(()),
        _ => None,
    })
    .await;
    let update = bot
        .wait_for("MESSAGE_UPDATE", |s| match s {
            Seen::Update(u) if u.id == id => Some(u.clone()),
            _ => None,
        })
        .await;
    assert_eq!(update.content.as_deref(), Some("second draft"));
    let reaction = bot
        .wait_for("MESSAGE_REACTION_ADD", |s| match s {
            Seen::Reaction(r) if r.message_id == id => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reaction.user_id, Some(ready.user.id));
    assert_eq!(reaction.emoji, ReactionType::Unicode("👍".into()));
    sent.delete(bot.ctx()).await.expect("Message::delete");
    bot.wait_for("MESSAGE_DELETE", |s| match s {
        Seen::Delete(c, m) if (*c, *m) == (chan, id) => Some(()),
        _ => None,
    })
    .await;
    let events = server.drain(&mut alice).await;
    let id = id.to_string();
    for kind in ["edit", "react", "delete"] {
        let about: Vec<_> = of_type(&events, kind)
            .into_iter()
            .filter(|e| e["ref"] == id.as_str())
            .collect();
        assert_eq!(about.len(), 1, "one {kind} of {id}: {events:?}");
    }

    // Typing, both ways: the bot's reaches a parked long-poll, alice's reaches the bot.
    let (events, typed) = tokio::join!(server.poll(&mut alice, 10), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        chan.broadcast_typing(&bot.http).await
    });
    typed.expect("ChannelId::broadcast_typing");
    assert!(
        of_type(&events, "typing")
            .iter()
            .any(|t| t["from"] == "serenbot"),
        "the bot's typing over long-poll: {events:?}"
    );
    server
        .ok(&alice, json!({ "command": "TYPING", "to": "#chan" }))
        .await;
    let typing = bot
        .wait_for("TYPING_START", |s| match s {
            Seen::Typing(t) if t.user_id != ready.user.id => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!(typing.channel_id, chan);

    // A file: uploaded with the message, and fetched back by its URL.
    let bytes = b"a file from serenity\n".to_vec();
    let with_file = chan
        .send_files(
            bot.ctx(),
            [CreateAttachment::bytes(bytes.clone(), "note.txt")],
            CreateMessage::new().content("see attached"),
        )
        .await
        .expect("ChannelId::send_files");
    assert_eq!(
        with_file.attachments.len(),
        1,
        "{:?}",
        with_file.attachments
    );
    let file = &with_file.attachments[0];
    assert_eq!(file.filename, "note.txt");
    assert_eq!(file.size as usize, bytes.len());
    // Absolute, under the address the bot reached chatd by, so that serenity can fetch it as it is.
    assert!(
        file.url
            .starts_with(&format!("{}/attachments/", front.base())),
        "{}",
        file.url
    );
    let fetched = file.download().await.expect("Attachment::download");
    assert_eq!(fetched, bytes, "the same bytes back from {}", file.url);

    // History: newest first, the deleted message gone.
    let history = chan
        .messages(bot.ctx(), GetMessages::new().limit(10))
        .await
        .expect("ChannelId::messages");
    // The channel's history also holds the two joins (MemberJoin, no content); the said things are these.
    let history: Vec<&str> = history
        .iter()
        .filter(|m| m.kind != MessageType::MemberJoin)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(
        history,
        ["see attached", "hello there", "!echo hello there"],
        "newest first, without the deleted one"
    );
    let older = chan
        .messages(bot.ctx(), GetMessages::new().before(reply.id).limit(10))
        .await
        .expect("ChannelId::messages before");
    assert_eq!(
        older
            .iter()
            .filter(|m| m.kind != MessageType::MemberJoin)
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        ["!echo hello there"],
        "before= pages back"
    );

    // A dropped socket: the TCP connection dies under the shard; what is said meanwhile arrives once.
    // Drain what is in flight first, so the count below is only what was said while cut off.
    bot.settle(Duration::from_millis(300)).await;
    front.cut();
    let gone: Vec<String> = (0..4).map(|i| format!("gone-{i}")).collect();
    for body in &gone {
        say(&server, &alice, body).await;
    }
    let got = bot
        .collect(
            "RESUMED and the messages said while cut off",
            WAIT,
            Duration::from_millis(500),
            |all| {
                all.iter().any(|s| matches!(s, Seen::Resumed)) && contents(all).len() >= gone.len()
            },
        )
        .await;
    assert_eq!(contents(&got), gone, "every message exactly once");

    // A restart: chatd stops gracefully (Reconnect, then a resumable close) and starts again on the same
    // database; the bot resumes on the new process and misses nothing.
    say(&server, &alice, "before restart").await;
    server.restart().await;
    front.retarget(addr(&server));
    say(&server, &alice, "after restart").await;
    let got = bot
        .collect(
            "RESUMED on the restarted server",
            Duration::from_secs(20),
            Duration::from_millis(500),
            |all| all.iter().any(|s| matches!(s, Seen::Resumed)) && contents(all).len() >= 2,
        )
        .await;
    assert_eq!(
        contents(&got),
        ["before restart", "after restart"],
        "exactly once"
    );
    // Away across a restart: the connection is cut and the bot's reconnect held (the front points nowhere)
    // while chatd restarts, so what was said before and after the restart can only come from the new
    // process's replay of the log.
    bot.settle(Duration::from_millis(300)).await;
    front.retarget("127.0.0.1:9".to_owned());
    front.cut();
    say(&server, &alice, "away before restart").await;
    server.restart().await;
    say(&server, &alice, "away after restart").await;
    front.retarget(addr(&server));
    let got = bot
        .collect(
            "RESUMED and the replay after a restart while away",
            WAIT,
            Duration::from_millis(500),
            |all| all.iter().any(|s| matches!(s, Seen::Resumed)) && contents(all).len() >= 2,
        )
        .await;
    assert_eq!(
        contents(&got),
        ["away before restart", "away after restart"],
        "exactly once"
    );

    // And the resumed session is live both ways.
    let asked = say(&server, &alice, "!echo still here").await;
    let got = bot
        .collect(
            "a live message and the bot's answer",
            WAIT,
            Duration::from_millis(300),
            |all| contents(all).len() >= 2,
        )
        .await;
    assert_eq!(contents(&got), ["!echo still here", "still here"]);
    let events = server.drain(&mut alice).await;
    assert!(
        of_type(&events, "message")
            .iter()
            .any(|e| e["body"] == "still here" && e["ref"] == asked.as_str()),
        "{events:?}"
    );
}

/// Logs the bot in and returns it with its guild and `#chan`, once READY, GUILD_CREATE and the cache are in.
async fn logged_in(base: &str, token: &str) -> (Running, GuildId, ChannelId) {
    let mut bot = start_bot(base, token).await;
    let ready = bot
        .wait_for("READY", |s| match s {
            Seen::Ready(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    let guild_id = ready.guilds[0].id;
    let guild = bot
        .wait_for("GUILD_CREATE", |s| match s {
            Seen::GuildCreate(g, _) if g.id == guild_id => Some(g.clone()),
            _ => None,
        })
        .await;
    bot.wait_for("cache_ready", |s| match s {
        Seen::CacheReady(_) => Some(()),
        _ => None,
    })
    .await;
    let chan = guild
        .channels
        .values()
        .find(|c| c.name == "chan")
        .expect("#chan in GUILD_CREATE")
        .id;
    (bot, guild_id, chan)
}

/// The rest of what serenity bots commonly call: who and where am I, the guild's channels, members and roles,
/// one message, pins, who reacted and taking a reaction back, a bulk delete, a thread from a message, and a
/// direct message both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_common_calls() {
    let server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    let botc = server.register("serenbot", "pw-serenbot").await;
    // The bot opens #chan, so it is the channel's operator (pins need it).
    join(&server, &botc, "#chan").await;
    join(&server, &alice, "#chan").await;
    let (mut bot, guild_id, chan) = logged_in(&server.base, &botc.token).await;
    let http = Arc::clone(&bot.http);

    // Who and where.
    let me = http.get_current_user().await.expect("GET users/@me");
    assert_eq!(me.name, "serenbot");
    let gateway = http.get_bot_gateway().await.expect("GET gateway/bot");
    assert!(gateway.url.starts_with("ws://"), "{}", gateway.url);
    let partial = guild_id
        .to_partial_guild(&*http)
        .await
        .expect("GET guilds/{id}");
    assert_eq!(partial.id, guild_id);
    let channels = guild_id
        .channels(&*http)
        .await
        .expect("GET guilds/{id}/channels");
    assert_eq!(channels.get(&chan).map(|c| c.name.as_str()), Some("chan"));
    let members = guild_id
        .members(&*http, Some(100), None)
        .await
        .expect("GET guilds/{id}/members");
    assert!(
        members.iter().any(|m| m.user.name == "alice"),
        "members: {members:?}"
    );
    let roles = guild_id.roles(&*http).await.expect("GET guilds/{id}/roles");
    assert!(
        roles.keys().any(|r| r.get() == guild_id.get()),
        "an @everyone role with the guild's id: {roles:?}"
    );
    let channel = chan.to_channel(&*http).await.expect("GET channels/{id}");
    assert_eq!(channel.guild().map(|c| c.name), Some("chan".to_owned()));

    // One message, pinned, reacted to by both, a reaction taken back.
    let said = say(&server, &alice, "pin me").await;
    let said = MessageId::new(said.parse().expect("a numeric id"));
    let msg = chan.message(bot.ctx(), said).await.expect("GET a message");
    assert_eq!(msg.content, "pin me");
    assert_eq!(msg.author.name, "alice");
    chan.pin(&*http, said)
        .await
        .expect("PUT channels/{id}/pins/{id}");
    let pins = chan.pins(&*http).await.expect("GET channels/{id}/pins");
    assert_eq!(pins.iter().map(|m| m.id).collect::<Vec<_>>(), [said]);
    bot.wait_for("CHANNEL_PINS_UPDATE", |s| match s {
        Seen::Pins(c) if *c == chan => Some(()),
        _ => None,
    })
    .await;
    server
        .ok(
            &alice,
            json!({ "command": "REACT", "ref": said.to_string(), "body": "👍" }),
        )
        .await;
    msg.react(bot.ctx(), '👍').await.expect("Message::react");
    let users = msg
        .reaction_users(&*http, '👍', None, None)
        .await
        .expect("GET reactions/{emoji}");
    let mut names: Vec<String> = users.into_iter().map(|u| u.name).collect();
    names.sort();
    assert_eq!(names, ["alice", "serenbot"]);
    msg.delete_reaction(&*http, None, '👍')
        .await
        .expect("DELETE reactions/{emoji}/@me");
    let removed = bot
        .wait_for("MESSAGE_REACTION_REMOVE", |s| match s {
            Seen::ReactionRemove(r) if r.message_id == said => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(removed.user_id, Some(me.id));

    // A bulk delete of the bot's own messages.
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(
            chan.say(bot.ctx(), format!("bulk-{i}"))
                .await
                .expect("say")
                .id,
        );
    }
    chan.delete_messages(&*http, &mine)
        .await
        .expect("POST messages/bulk-delete");
    let mut gone = bot
        .wait_for("MESSAGE_DELETE_BULK", |s| match s {
            Seen::DeleteBulk(c, ids) if *c == chan => Some(ids.clone()),
            _ => None,
        })
        .await;
    gone.sort();
    assert_eq!(gone, mine);

    // A thread from a message; the bot talks in it.
    let thread = chan
        .create_thread_from_message(bot.ctx(), said, CreateThread::new("about the pin"))
        .await
        .expect("POST messages/{id}/threads");
    assert_eq!(thread.name, "about the pin");
    assert_eq!(thread.parent_id, Some(chan));
    bot.wait_for("THREAD_CREATE", |s| match s {
        Seen::ThreadCreate(t) if t.id == thread.id => Some(()),
        _ => None,
    })
    .await;
    let in_thread = thread
        .say(bot.ctx(), "in the thread")
        .await
        .expect("a message in the thread");
    assert_eq!(in_thread.channel_id, thread.id);

    // Direct messages: alice writes to the bot, which answers; the bot writes to alice first.
    server.drain(&mut alice).await;
    let (s, v) = server
        .cmd(
            &alice,
            json!({ "command": "PRIVMSG", "to": "serenbot", "body": "!echo just us" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let dm = bot
        .wait_for("the direct message", |s| match s {
            Seen::Message(m) if m.content == "!echo just us" => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(dm.guild_id, None, "a direct message has no guild");
    let answer = bot
        .wait_for("the bot's answer in the DM", |s| match s {
            Seen::Message(m) if m.content == "just us" => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(answer.channel_id, dm.channel_id);
    let first = dm
        .author
        .id
        .direct_message(bot.ctx(), CreateMessage::new().content("hello alice"))
        .await
        .expect("UserId::direct_message");
    assert_eq!(first.channel_id, dm.channel_id, "one DM channel per pair");
    let events = server.drain(&mut alice).await;
    let from_bot: Vec<&str> = of_type(&events, "message")
        .into_iter()
        .filter(|e| e["from"] == "serenbot" && e["to"] == "alice")
        .filter_map(|e| e["body"].as_str())
        .collect();
    assert_eq!(from_bot, ["just us", "hello alice"], "{events:?}");
}

/// With a short heartbeat interval the bot heartbeats many times: chatd acknowledges each (serenity measures
/// a latency and never reconnects, as it would on a missed ack), keeps the session, and answers a member
/// request (op 8) sent through serenity's shard messenger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_heartbeats_and_member_chunks() {
    let server = Server::start(&[("GATEWAY_HEARTBEAT_INTERVAL", "1s")]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botc = server.register("serenbot", "pw-serenbot").await;
    join(&server, &botc, "#chan").await;
    let (mut bot, guild_id, _chan) = logged_in(&server.base, &botc.token).await;

    // Five intervals of talk: every message arrives, with no RESUMED and no second READY on the way.
    let said: Vec<String> = (0..10).map(|i| format!("tick-{i}")).collect();
    for body in &said {
        say(&server, &alice, body).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = bot
        .collect("the ticks", WAIT, Duration::from_millis(300), |all| {
            contents(all).len() >= said.len()
        })
        .await;
    assert!(
        !got.iter().any(|s| matches!(s, Seen::Resumed)),
        "no reconnect: {:?}",
        got.iter().map(describe).collect::<Vec<_>>()
    );
    assert_eq!(contents(&got), said);
    let runners = bot.manager.runners.lock().await;
    let runner = runners.get(&ShardId(0)).expect("shard 0 runs");
    assert!(
        runner.latency.is_some(),
        "serenity measured a heartbeat round trip (an ack came back)"
    );

    // Request Guild Members through the shard messenger.
    runner.runner_tx.chunk_guild(
        guild_id,
        None,
        false,
        ChunkGuildFilter::Query(String::new()),
        Some("everyone".to_owned()),
    );
    drop(runners);
    let chunk = bot
        .wait_for("GUILD_MEMBERS_CHUNK", |s| match s {
            Seen::Chunk(c) => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(chunk.guild_id, guild_id);
    assert_eq!(chunk.nonce.as_deref(), Some("everyone"));
    let names: HashSet<String> = chunk
        .members
        .values()
        .map(|m| m.user.name.clone())
        .collect();
    let cached: HashSet<String> = bot
        .cache
        .guild(guild_id)
        .expect("the guild in the cache")
        .members
        .values()
        .map(|m| m.user.name.clone())
        .collect();
    assert_eq!(
        names, cached,
        "every member GUILD_CREATE gave, in one chunk"
    );
    assert!(
        names.contains("alice") && names.contains("serenbot"),
        "{names:?}"
    );
}

/// Embeds, paging around a message, a topic set by the bot (CHANNEL_UPDATE in serenity's cache), and a new
/// member (GUILD_MEMBER_ADD) whom the bot can then greet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_embeds_topics_and_members() {
    let server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    // A bot account: bots hear of new members (GUILD_MEMBER_ADD), people do not.
    let botc = register_bot(&server, "serenbot").await;
    // The bot opens #chan, so it is the channel's operator (topics need it).
    join(&server, &botc, "#chan").await;
    join(&server, &alice, "#chan").await;
    let (mut bot, guild_id, chan) = logged_in(&server.base, &botc.token).await;

    // An embed, as bots send them.
    let sent = chan
        .send_message(
            bot.ctx(),
            CreateMessage::new()
                .content("a card")
                .embed(CreateEmbed::new().title("Title").description("Body")),
        )
        .await
        .expect("a message with an embed");
    assert_eq!(sent.embeds.len(), 1, "{:?}", sent.embeds);
    assert_eq!(sent.embeds[0].title.as_deref(), Some("Title"));
    assert_eq!(sent.embeds[0].description.as_deref(), Some("Body"));
    let seen = bot
        .wait_for("the embed's MESSAGE_CREATE", |s| match s {
            Seen::Message(m) if m.id == sent.id => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(seen.embeds.len(), 1, "{:?}", seen.embeds);

    // Paging around a message.
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = say(&server, &alice, &format!("around-{i}")).await;
        ids.push(MessageId::new(id.parse().expect("a numeric id")));
    }
    let around = chan
        .messages(bot.ctx(), GetMessages::new().around(ids[2]).limit(3))
        .await
        .expect("GET messages?around=");
    let mut around: Vec<&str> = around.iter().map(|m| m.content.as_str()).collect();
    around.sort();
    assert_eq!(around, ["around-1", "around-2", "around-3"]);
    let after = chan
        .messages(bot.ctx(), GetMessages::new().after(ids[3]).limit(10))
        .await
        .expect("GET messages?after=");
    assert_eq!(
        after.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["around-4"]
    );

    // A topic, set through serenity's builder; the cache follows CHANNEL_UPDATE.
    let edited = chan
        .edit(bot.ctx(), EditChannel::new().topic("serenity was here"))
        .await
        .expect("PATCH channels/{id}");
    assert_eq!(edited.topic.as_deref(), Some("serenity was here"));
    bot.wait_for("CHANNEL_UPDATE", |s| match s {
        Seen::ChannelUpdate(c) if c.id == chan => Some(()),
        _ => None,
    })
    .await;
    let cached_topic = bot
        .cache
        .guild(guild_id)
        .and_then(|g| g.channels.get(&chan).and_then(|c| c.topic.clone()));
    assert_eq!(cached_topic.as_deref(), Some("serenity was here"));
    // Slow mode (CHANNEL_UPDATE from a settings change): the cache keeps the bot's operator rights, so it
    // can set the topic again.
    chan.edit(bot.ctx(), EditChannel::new().rate_limit_per_user(2))
        .await
        .expect("PATCH channels/{id} rate_limit_per_user");
    bot.wait_for("CHANNEL_UPDATE of the slow mode", |s| match s {
        Seen::ChannelUpdate(c) if c.id == chan && c.rate_limit_per_user == Some(2) => Some(()),
        _ => None,
    })
    .await;
    chan.edit(
        bot.ctx(),
        EditChannel::new().topic("serenity is still here"),
    )
    .await
    .expect("an operator sets the topic after a slow-mode change");
    // A channel the bot opens (over long-poll, as IRC users do) makes it the operator there: its cache
    // learns so (CHANNEL_UPDATE after the join), and it sets the new channel's topic.
    join(&server, &botc, "#botroom").await;
    let room = bot
        .wait_for(
            "CHANNEL_UPDATE of the channel the bot opened",
            |s| match s {
                Seen::ChannelUpdate(c) if c.name == "botroom" => Some(c.id),
                _ => None,
            },
        )
        .await;
    room.edit(bot.ctx(), EditChannel::new().topic("the bot's room"))
        .await
        .expect("the opener of a channel sets its topic");
    let events = server.drain(&mut alice).await;
    assert!(
        of_type(&events, "topic")
            .iter()
            .any(|e| e["body"] == "serenity was here"),
        "the topic over long-poll: {events:?}"
    );

    // A new account joins the network: the bot learns of the member and greets them by mention.
    let carol = server.register("carol", "pw-carol").await;
    let member = bot
        .wait_for("GUILD_MEMBER_ADD", |s| match s {
            Seen::MemberAdd(m) if m.user.name == "carol" => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(member.guild_id, guild_id);
    assert!(
        bot.cache
            .guild(guild_id)
            .is_some_and(|g| g.members.contains_key(&member.user.id)),
        "the cache holds the new member"
    );
    join(&server, &carol, "#chan").await;
    let hello = chan
        .say(bot.ctx(), format!("welcome {}", member.user.mention()))
        .await
        .expect("a greeting with a mention");
    assert_eq!(
        hello.mentions.iter().map(|u| u.id).collect::<Vec<_>>(),
        [member.user.id],
        "the mention is parsed"
    );
}

/// Two serenity bots in one channel: the second's status, set through its shard messenger (op 3), reaches the
/// first as PRESENCE_UPDATE and in its cache; the first saw the second online in GUILD_CREATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_presences() {
    let server = Server::start(&[]).await;
    let one = register_bot(&server, "serenone").await;
    join(&server, &one, "#chan").await;
    let two = register_bot(&server, "serentwo").await;
    join(&server, &two, "#chan").await;
    let (second, _, _) = logged_in(&server.base, &two.token).await;
    let second_id = second.cache.current_user().id;
    let (mut first, guild_id, _) = logged_in(&server.base, &one.token).await;
    let online = first
        .cache
        .guild(guild_id)
        .and_then(|g| g.presences.get(&second_id).map(|p| p.status));
    assert_eq!(
        online,
        Some(OnlineStatus::Online),
        "GUILD_CREATE's presences"
    );

    let runners = second.manager.runners.lock().await;
    let runner = runners.get(&ShardId(0)).expect("shard 0 runs");
    runner.runner_tx.set_status(OnlineStatus::DoNotDisturb);
    drop(runners);
    let update = first
        .wait_for("PRESENCE_UPDATE", |s| match s {
            Seen::Presence(p)
                if p.user.id == second_id && p.status == OnlineStatus::DoNotDisturb =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(update.guild_id, Some(guild_id));
    let cached = first
        .cache
        .guild(guild_id)
        .and_then(|g| g.presences.get(&second_id).map(|p| p.status));
    assert_eq!(
        cached,
        Some(OnlineStatus::DoNotDisturb),
        "the cache follows"
    );
}
