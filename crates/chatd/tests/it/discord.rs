//! The yardstick of the Discord-compatible API: twilight 0.17, unmodified, pointed at a real chatd only by
//! its base URLs (gateway `ws://HOST:PORT/gateway`, REST `http://HOST:PORT/api/v10`), logs in, sees the
//! network guild, receives and sends messages, and resumes after a dropped connection and a server restart
//! without missing or repeating an event. Long-poll users on the same server check each protocol's view.

use std::error::Error as _;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use twilight_gateway::error::ReceiveMessageErrorType;
use twilight_gateway::{
    CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, Session, Shard, ShardId,
    StreamExt as _,
};
use twilight_http::api_error::ApiError;
use twilight_http::error::ErrorType;
use twilight_http::request::channel::reaction::RequestReactionType;
use twilight_model::channel::ChannelType;
use twilight_model::channel::message::EmojiReactionType;
use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::gateway::payload::outgoing::RequestGuildMembers;
use twilight_model::guild::Guild;
use twilight_model::http::attachment::Attachment;
use twilight_model::id::Id;
use twilight_model::id::marker::{ChannelMarker, GuildMarker, UserMarker};

use crate::harness::{Client, Relay, Server, of_type};

/// The example bot's own source, compiled into this test so that the test runs exactly what it documents.
#[path = "../../../../examples/ping_bot.rs"]
#[allow(
    dead_code,
    reason = "the example's `main` is not called here; its `run` is"
)]
mod ping_bot;

/// How long any one expected thing may take before the test fails (twilight waits 1 s before each connect).
const WAIT: Duration = Duration::from_secs(8);

// --- helpers ------------------------------------------------------------------------------------------------

/// `HOST:PORT` of the server (twilight's HTTP proxy setting takes no scheme).
fn addr(server: &Server) -> String {
    server
        .base
        .strip_prefix("http://")
        .expect("the harness serves plain http")
        .to_owned()
}

/// The gateway URL twilight is given: it appends `/?v=10&encoding=json`.
fn gateway_url(server: &Server) -> String {
    format!("ws://{}/gateway", addr(server))
}

fn intents() -> Intents {
    Intents::GUILDS
        | Intents::GUILD_MEMBERS
        | Intents::GUILD_MESSAGES
        | Intents::GUILD_MESSAGE_REACTIONS
        | Intents::DIRECT_MESSAGES
        | Intents::MESSAGE_CONTENT
}

/// A shard for `token`, connecting (on its first poll) to `server`'s gateway.
fn shard(server: &Server, token: &str) -> Shard {
    shard_with(server, token, intents())
}

/// A shard with chosen intents.
fn shard_with(server: &Server, token: &str, intents: Intents) -> Shard {
    let config = ConfigBuilder::new(format!("Bot {token}"), intents)
        .proxy_url(gateway_url(server))
        .build();
    Shard::with_config(ShardId::ONE, config)
}

/// The HTTP status and Discord error code of a failed twilight-http request (`None`: not an API error).
fn api_error(e: &twilight_http::Error) -> Option<(u16, u64)> {
    match e.kind() {
        ErrorType::Response {
            status,
            error: ApiError::General(general),
            ..
        } => Some((status.get(), general.code)),
        _ => None,
    }
}

/// A twilight HTTP client for `token` against `server`'s REST API.
fn http(server: &Server, token: &str) -> twilight_http::Client {
    twilight_http::Client::builder()
        .token(format!("Bot {token}"))
        .proxy(addr(server), true)
        .timeout(Duration::from_secs(10))
        .build()
}

/// The next event from the shard within `left`: `None` on timeout. A frame twilight cannot parse fails the
/// test at once, naming the frame (that is the server's bug to fix); connection errors are only logged, as
/// twilight reconnects by itself.
async fn next_event(shard: &mut Shard, left: Duration, what: &str) -> Option<Event> {
    let deadline = Instant::now() + left;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, shard.next_event(EventTypeFlags::all()))
            .await
            .ok()?;
        match item {
            None => panic!("the shard closed for good while waiting for {what}"),
            Some(Ok(event)) => return Some(event),
            Some(Err(e)) => {
                if matches!(e.kind(), ReceiveMessageErrorType::Deserializing { .. }) {
                    panic!(
                        "twilight could not parse a gateway frame (waiting for {what}): {e}; cause: {:?}",
                        e.source().map(ToString::to_string)
                    );
                }
                eprintln!(
                    "twilight gateway error (waiting for {what}): {e}; cause: {:?}",
                    e.source()
                );
            }
        }
    }
}

/// Reads events until `pick` accepts one, failing the test after `WAIT`.
async fn wait_for<T>(
    shard: &mut Shard,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = next_event(shard, left, what).await else {
            panic!("no {what} within {WAIT:?}; saw {seen:?}");
        };
        if let Some(t) = pick(&event) {
            return t;
        }
        seen.push(event.kind());
    }
}

/// Reads every event until `done` holds for what was read so far (failing the test after `WAIT`), then for
/// `grace` more (to catch anything repeated); returns them all.
async fn collect(
    shard: &mut Shard,
    what: &str,
    grace: Duration,
    done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    collect_within(shard, WAIT, what, grace, done).await
}

/// [`collect`] with its own bound.
async fn collect_within(
    shard: &mut Shard,
    within: Duration,
    what: &str,
    grace: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    while !done(&all) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = next_event(shard, left, what).await else {
            panic!(
                "no {what} within {within:?}; saw {:?}",
                all.iter().map(describe).collect::<Vec<_>>()
            );
        };
        all.push(event);
    }
    while let Some(event) = next_event(shard, grace, what).await {
        all.push(event);
    }
    all
}

/// An event in a failure message: its kind, and the content of a message.
fn describe(event: &Event) -> String {
    match event {
        Event::MessageCreate(m) => format!("MessageCreate({:?})", m.content),
        other => format!("{:?}", other.kind()),
    }
}

/// The contents of the MESSAGE_CREATEs among `events`, in order.
fn contents(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::MessageCreate(m) => Some(m.content.clone()),
            _ => None,
        })
        .collect()
}

/// What a fresh connection learns: who it is and the network guild.
struct LoggedIn {
    user: Id<UserMarker>,
    name: String,
    guild: Box<Guild>,
}

impl LoggedIn {
    /// The guild's text channel named `name` (a network channel `#name`).
    fn channel(&self, name: &str) -> Id<ChannelMarker> {
        self.guild
            .channels
            .iter()
            .find(|c| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| {
                panic!(
                    "no channel {name} in GUILD_CREATE: {:?}",
                    self.guild
                        .channels
                        .iter()
                        .map(|c| &c.name)
                        .collect::<Vec<_>>()
                )
            })
            .id
    }

    fn guild_id(&self) -> Id<GuildMarker> {
        self.guild.id
    }
}

/// Waits for READY, then for the GUILD_CREATE of the one guild READY lists (the network).
async fn log_in(shard: &mut Shard) -> LoggedIn {
    let ready = wait_for(shard, "READY", |e| match e {
        Event::Ready(r) => Some(r.clone()),
        Event::Resumed => panic!("a fresh shard got RESUMED instead of READY"),
        _ => None,
    })
    .await;
    assert!(
        !ready.guilds.is_empty(),
        "READY lists no guild (the network space should be one)"
    );
    let first = ready.guilds[0].id;
    let guild = wait_for(shard, "GUILD_CREATE", |e| match e {
        Event::GuildCreate(g) => match &**g {
            GuildCreate::Available(guild) if guild.id == first => Some(Box::new(guild.clone())),
            GuildCreate::Available(_) => None,
            GuildCreate::Unavailable(u) => {
                panic!("GUILD_CREATE of {} came as unavailable", u.id)
            }
        },
        _ => None,
    })
    .await;
    LoggedIn {
        user: ready.user.id,
        name: ready.user.name.clone(),
        guild,
    }
}

/// The user id the long-poll API gives for `c`.
async fn user_id(server: &Server, c: &Client) -> String {
    let (s, v) = server.get("/api/v1/state", Some(&c.token)).await;
    assert_eq!(s, StatusCode::OK, "state: {v}");
    v["user"]["id"].as_str().expect("user.id").to_owned()
}

/// The network channel `#name`'s id as the long-poll API gives it.
async fn channel_id(server: &Server, c: &Client, name: &str) -> String {
    let (s, v) = server
        .get(&format!("/api/v1/channels/{name}"), Some(&c.token))
        .await;
    assert_eq!(s, StatusCode::OK, "channel {name}: {v}");
    v["id"].as_str().expect("channel id").to_owned()
}

/// A long-poll PRIVMSG to `#chan`; returns the message id.
async fn say(server: &Server, c: &Client, body: &str) -> String {
    let (s, v) = server
        .cmd(
            c,
            json!({ "command": "PRIVMSG", "to": "#chan", "body": body }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{} says {body}: {v}", c.nick);
    v["id"].as_str().expect("message id").to_owned()
}

async fn join(server: &Server, c: &Client, channel: &str) {
    server
        .ok(c, json!({ "command": "JOIN", "to": channel }))
        .await;
}

/// A long-poll event of `kind` about message `id` (`ref`), or the message itself (`id`).
fn about<'a>(events: &'a [Value], kind: &str, id: &str) -> Vec<&'a Value> {
    of_type(events, kind)
        .into_iter()
        .filter(|e| e["ref"] == id || (kind == "message" && e["id"] == id))
        .collect()
}

// --- tests --------------------------------------------------------------------------------------------------

/// READY names the user; GUILD_CREATE carries the network guild with every member and `#chan` as a text
/// channel; `PUT /channels/{id}/members/@me` joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_guild_create() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;

    let mut gw = shard(&server, &botty.token);
    let me = log_in(&mut gw).await;
    assert_eq!(me.name, "botty");
    assert_eq!(me.user.to_string(), user_id(&server, &botty).await);
    let resume = gw.resume_url().expect("READY gives a resume_gateway_url");
    assert_eq!(
        resume,
        gateway_url(&server),
        "resume_gateway_url should lead back to this gateway (twilight appends `/?v=10...`)"
    );

    let guild = &me.guild;
    assert_eq!(
        guild.member_count,
        Some(guild.members.len() as u64),
        "member_count equals the members sent"
    );
    let names: Vec<&str> = guild.members.iter().map(|m| m.user.name.as_str()).collect();
    assert!(names.contains(&"botty"), "our own member: {names:?}");
    assert!(names.contains(&"alice"), "the other user: {names:?}");
    assert!(
        guild.roles.iter().any(|r| r.id.get() == guild.id.get()),
        "an @everyone role with the guild's id"
    );
    let chan = me.channel("chan");
    let channel = guild.channels.iter().find(|c| c.id == chan).expect("chan");
    assert_eq!(channel.kind, ChannelType::GuildText);
    assert_eq!(
        chan.to_string(),
        channel_id(&server, &alice, "chan").await,
        "the same id over both protocols"
    );

    // Request Guild Members (op 8): one chunk with everyone, echoing the nonce.
    gw.command(
        &RequestGuildMembers::builder(guild.id)
            .nonce("all-of-them")
            .query("", None),
    );
    let chunk = wait_for(&mut gw, "GUILD_MEMBERS_CHUNK", |e| match e {
        Event::MemberChunk(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!(chunk.guild_id, guild.id);
    assert_eq!(chunk.nonce.as_deref(), Some("all-of-them"));
    assert_eq!((chunk.chunk_index, chunk.chunk_count), (0, 1));
    assert_eq!(chunk.members.len(), guild.members.len(), "every member");

    // Our extension: joining a network channel over REST.
    let (s, _, v) = server
        .raw(
            reqwest::Method::PUT,
            &format!("/api/v10/channels/{chan}/members/@me"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no token: {v}");
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/api/v10/channels/{chan}/members/@me",
            server.base
        ))
        .header("authorization", format!("Bot {}", botty.token))
        .send()
        .await
        .expect("PUT members/@me");
    assert!(
        resp.status().is_success(),
        "PUT /channels/{{id}}/members/@me: {}",
        resp.status()
    );
    let (s, v) = server
        .get("/api/v1/channels/chan/members", Some(&alice.token))
        .await;
    assert_eq!(s, StatusCode::OK, "members: {v}");
    assert!(
        v.to_string().contains("\"botty\""),
        "botty joined #chan: {v}"
    );
    // Joined, the shard hears the channel.
    say(&server, &alice, "welcome").await;
    wait_for(
        &mut gw,
        "MESSAGE_CREATE after joining over REST",
        |e| match e {
            Event::MessageCreate(m) if m.content == "welcome" => Some(()),
            _ => None,
        },
    )
    .await;
}

/// A long-poll user's PRIVMSG reaches the shard as MESSAGE_CREATE: content, author, channel, guild, and the
/// same message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_create_from_long_poll() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;

    let mut gw = shard(&server, &botty.token);
    let me = log_in(&mut gw).await;
    let chan = me.channel("chan");

    let id = say(&server, &alice, "hello twilight").await;
    let msg = wait_for(&mut gw, "MESSAGE_CREATE", |e| match e {
        Event::MessageCreate(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(msg.content, "hello twilight");
    assert_eq!(msg.author.name, "alice");
    assert_eq!(msg.author.id.to_string(), user_id(&server, &alice).await);
    assert_eq!(msg.channel_id, chan);
    assert_eq!(msg.guild_id, Some(me.guild_id()));
    assert_eq!(
        msg.id.to_string(),
        id,
        "the same message id over both protocols"
    );

    // The rest of a message's life, from the long-poll side.
    server
        .ok(
            &alice,
            json!({ "command": "EDIT", "ref": id, "body": "hello again" }),
        )
        .await;
    let update = wait_for(&mut gw, "MESSAGE_UPDATE", |e| match e {
        Event::MessageUpdate(m) if m.id == msg.id => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(update.content, "hello again");
    assert!(update.edited_timestamp.is_some(), "edited_timestamp is set");
    for command in ["REACT", "UNREACT"] {
        server
            .ok(
                &alice,
                json!({ "command": command, "ref": id, "body": "🎉" }),
            )
            .await;
    }
    let added = wait_for(&mut gw, "MESSAGE_REACTION_ADD", |e| match e {
        Event::ReactionAdd(r) if r.message_id == msg.id => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(added.user_id, msg.author.id);
    assert!(
        matches!(&added.emoji, EmojiReactionType::Unicode { name } if name == "🎉"),
        "emoji: {:?}",
        added.emoji
    );
    wait_for(&mut gw, "MESSAGE_REACTION_REMOVE", |e| match e {
        Event::ReactionRemove(r) if r.message_id == msg.id => Some(()),
        _ => None,
    })
    .await;
    server
        .ok(&alice, json!({ "command": "DELETE", "ref": id }))
        .await;
    let deleted = wait_for(&mut gw, "MESSAGE_DELETE", |e| match e {
        Event::MessageDelete(d) if d.id == msg.id => Some(d.clone()),
        _ => None,
    })
    .await;
    assert_eq!(deleted.channel_id, chan);
}

/// twilight-http creates, edits, reacts to and deletes a message; a second gateway connection sees each as
/// its dispatch, and a long-poll user sees each as its event, all about the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_create_edit_react_delete() {
    let server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let watcher = server.register("watcher", "pw-watcher").await;
    join(&server, &watcher, "#chan").await;
    server.drain(&mut alice).await;

    let mut gw = shard(&server, &watcher.token);
    let me = log_in(&mut gw).await;
    let chan = me.channel("chan");
    let rest = http(&server, &botty.token);

    let current = rest
        .current_user()
        .await
        .expect("GET users/@me")
        .model()
        .await
        .expect("a user twilight can parse");
    assert_eq!(current.name, "botty");

    let created = rest
        .create_message(chan)
        .content("first draft")
        .await
        .expect("POST channels/{id}/messages")
        .model()
        .await
        .expect("a message twilight can parse");
    assert_eq!(created.content, "first draft");
    assert_eq!(created.author.name, "botty");
    assert_eq!(created.channel_id, chan);
    let id = created.id;

    let edited = rest
        .update_message(chan, id)
        .content(Some("second draft"))
        .await
        .expect("PATCH channels/{id}/messages/{id}")
        .model()
        .await
        .expect("an edited message twilight can parse");
    assert_eq!(edited.id, id);
    assert_eq!(edited.content, "second draft");
    assert!(edited.edited_timestamp.is_some(), "edited_timestamp is set");

    let thumbs = RequestReactionType::Unicode { name: "👍" };
    rest.create_reaction(chan, id, &thumbs)
        .await
        .expect("PUT channels/{id}/messages/{id}/reactions/{emoji}/@me");
    let fetched = rest
        .message(chan, id)
        .await
        .expect("GET channels/{id}/messages/{id}")
        .model()
        .await
        .expect("a message twilight can parse");
    assert_eq!(fetched.content, "second draft");
    assert!(
        fetched.reactions.iter().any(|r| r.count == 1
            && matches!(&r.emoji, EmojiReactionType::Unicode { name } if name == "👍")),
        "the reaction is on the message: {:?}",
        fetched.reactions
    );
    rest.delete_message(chan, id)
        .await
        .expect("DELETE channels/{id}/messages/{id}");

    // The second gateway connection: one dispatch per step, in order.
    let create = wait_for(&mut gw, "MESSAGE_CREATE", |e| match e {
        Event::MessageCreate(m) if m.id == id => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(create.content, "first draft");
    assert_eq!(create.author.name, "botty");
    assert_eq!(create.guild_id, Some(me.guild_id()));
    let update = wait_for(&mut gw, "MESSAGE_UPDATE", |e| match e {
        Event::MessageUpdate(m) if m.id == id => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(update.content, "second draft");
    let reaction = wait_for(&mut gw, "MESSAGE_REACTION_ADD", |e| match e {
        Event::ReactionAdd(r) if r.message_id == id => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reaction.channel_id, chan);
    assert_eq!(reaction.user_id, current.id);
    assert!(
        matches!(&reaction.emoji, EmojiReactionType::Unicode { name } if name == "👍"),
        "emoji: {:?}",
        reaction.emoji
    );
    let delete = wait_for(&mut gw, "MESSAGE_DELETE", |e| match e {
        Event::MessageDelete(d) if d.id == id => Some(d.clone()),
        _ => None,
    })
    .await;
    assert_eq!(delete.channel_id, chan);

    // The long-poll user: the same four, about the same id.
    let id = id.to_string();
    let events = server.drain(&mut alice).await;
    let message = about(&events, "message", &id);
    assert_eq!(message.len(), 1, "one message {id}: {events:?}");
    assert_eq!(message[0]["body"], "first draft");
    assert_eq!(message[0]["from"], "botty");
    let edit = about(&events, "edit", &id);
    assert_eq!(edit.len(), 1, "one edit of {id}: {events:?}");
    assert_eq!(edit[0]["body"], "second draft");
    let react = about(&events, "react", &id);
    assert_eq!(react.len(), 1, "one react to {id}: {events:?}");
    assert_eq!(react[0]["body"], "👍");
    assert_eq!(react[0]["from"], "botty");
    assert_eq!(
        about(&events, "delete", &id).len(),
        1,
        "one delete of {id}: {events:?}"
    );
}

/// The rest of what a twilight bot commonly calls: who am I and where, the guild, its channels and members,
/// history pages, replies with a nonce, typing, reaction lists and removal, and Discord's error codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reads_replies_typing_reactions_pins_errors() {
    let server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let watcher = server.register("watcher", "pw-watcher").await;
    join(&server, &watcher, "#chan").await;

    let mut gw = shard_with(
        &server,
        &watcher.token,
        intents() | Intents::GUILD_MESSAGE_TYPING,
    );
    let me = log_in(&mut gw).await;
    let (guild, chan) = (me.guild_id(), me.channel("chan"));
    let rest = http(&server, &botty.token);
    let bot_id = rest
        .current_user()
        .await
        .expect("GET users/@me")
        .model()
        .await
        .expect("user")
        .id;

    // Where am I.
    let guilds = rest
        .current_user_guilds()
        .await
        .expect("GET users/@me/guilds")
        .models()
        .await
        .expect("guild infos twilight can parse");
    assert!(
        guilds.iter().any(|g| g.id == guild),
        "the network guild is listed"
    );
    let got = rest
        .guild(guild)
        .await
        .expect("GET guilds/{id}")
        .model()
        .await
        .expect("a guild twilight can parse");
    assert_eq!(got.id, guild);
    let channels = rest
        .guild_channels(guild)
        .await
        .expect("GET guilds/{id}/channels")
        .models()
        .await
        .expect("channels twilight can parse");
    assert!(channels.iter().any(|c| c.id == chan), "#chan is listed");
    let members = rest
        .guild_members(guild)
        .limit(100)
        .await
        .expect("GET guilds/{id}/members")
        .models()
        .await
        .expect("members twilight can parse");
    assert!(
        members.iter().any(|m| m.user.id == bot_id),
        "botty is a member"
    );
    let channel = rest
        .channel(chan)
        .await
        .expect("GET channels/{id}")
        .model()
        .await
        .expect("a channel twilight can parse");
    assert_eq!(channel.name.as_deref(), Some("chan"));
    rest.current_user_application()
        .await
        .expect("GET oauth2/applications/@me")
        .model()
        .await
        .expect("an application twilight can parse");
    let bot_gateway = rest
        .gateway()
        .authed()
        .await
        .expect("GET gateway/bot")
        .model()
        .await
        .expect("gateway info twilight can parse");
    assert!(bot_gateway.shards >= 1, "shards: {}", bot_gateway.shards);

    // History: newest first, paging back with `before`.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(say(&server, &alice, &format!("history-{i}")).await);
    }
    let page = rest
        .channel_messages(chan)
        .limit(2)
        .await
        .expect("GET channels/{id}/messages?limit=2")
        .models()
        .await
        .expect("messages twilight can parse");
    let page: Vec<String> = page.iter().map(|m| m.content.clone()).collect();
    assert_eq!(page, ["history-2", "history-1"], "newest first");
    let older = rest
        .channel_messages(chan)
        .before(ids[1].parse().map(Id::new).expect("id"))
        .limit(10)
        .await
        .expect("GET channels/{id}/messages?before=")
        .models()
        .await
        .expect("messages twilight can parse");
    assert_eq!(
        older.first().map(|m| m.content.as_str()),
        Some("history-0"),
        "before= pages back"
    );

    // A reply with a nonce.
    let target = Id::new(ids[0].parse().expect("id"));
    let reply = rest
        .create_message(chan)
        .content("a reply")
        .reply(target)
        .nonce(4242)
        .await
        .expect("POST a reply")
        .model()
        .await
        .expect("a reply twilight can parse");
    assert_eq!(
        reply.reference.as_ref().and_then(|r| r.message_id),
        Some(target),
        "message_reference of the reply"
    );
    let seen = wait_for(&mut gw, "MESSAGE_CREATE of the reply", |e| match e {
        Event::MessageCreate(m) if m.id == reply.id => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        seen.reference.as_ref().and_then(|r| r.message_id),
        Some(target)
    );
    let events = server.drain(&mut alice).await;
    let lp = about(&events, "message", &reply.id.to_string());
    assert_eq!(lp.len(), 1, "the reply over long-poll: {events:?}");
    assert_eq!(
        lp[0]["ref"], ids[0],
        "the long-poll reply names what it answers"
    );

    // Typing.
    rest.create_typing_trigger(chan)
        .await
        .expect("POST channels/{id}/typing");
    let typing = wait_for(&mut gw, "TYPING_START", |e| match e {
        Event::TypingStart(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!((typing.channel_id, typing.user_id), (chan, bot_id));

    // Reactions: who reacted, then removal.
    let heart = RequestReactionType::Unicode { name: "❤️" };
    rest.create_reaction(chan, target, &heart)
        .await
        .expect("PUT reaction");
    let users = rest
        .reactions(chan, target, &heart)
        .await
        .expect("GET channels/{id}/messages/{id}/reactions/{emoji}")
        .models()
        .await
        .expect("users twilight can parse");
    assert_eq!(users.iter().map(|u| u.id).collect::<Vec<_>>(), [bot_id]);
    rest.delete_current_user_reaction(chan, target, &heart)
        .await
        .expect("DELETE reaction/@me");
    let removed = wait_for(&mut gw, "MESSAGE_REACTION_REMOVE", |e| match e {
        Event::ReactionRemove(r) if r.message_id == target => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(removed.user_id, bot_id);

    // Discord's error codes, as twilight reads them.
    let bogus = rest
        .message(chan, Id::new(12345))
        .await
        .expect_err("an unknown message");
    assert_eq!(api_error(&bogus), Some((404, 10008)), "{bogus}");
    let stranger = http(&server, &"0".repeat(64));
    let refused = stranger.current_user().await.expect_err("a bad token");
    // twilight reports the first 401 as a response (code 0, "401: Unauthorized"); later ones as
    // `Unauthorized` without asking again.
    assert_eq!(
        api_error(&refused),
        Some((401, 0)),
        "a bad token: {refused}"
    );
}

/// Pins: twilight 0.17 uses Discord's newer routes `PUT /channels/{c}/messages/pins/{m}` and
/// `GET /channels/{c}/messages/pins` (answering `{items: [{pinned_at, message}], has_more}`), not the older
/// `/channels/{c}/pins`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_over_twilights_routes() {
    let server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    // Pinning takes PIN_MESSAGES, which a channel operator has: alice, who created #chan, ops the bot.
    server
        .ok(
            &alice,
            serde_json::json!({"command": "MODE", "to": "#chan", "body": "+o", "args": ["botty"]}),
        )
        .await;
    let mut gw = shard(&server, &botty.token);
    let me = log_in(&mut gw).await;
    let chan = me.channel("chan");
    let rest = http(&server, &botty.token);
    let ids = [say(&server, &alice, "pin me").await];
    let target = Id::new(ids[0].parse().expect("id"));
    server.drain(&mut alice).await;

    rest.create_pin(chan, target)
        .await
        .expect("PUT channels/{id}/messages/pins/{id}");
    let pins = rest
        .pins(chan)
        .await
        .expect("GET channels/{id}/messages/pins")
        .model()
        .await
        .expect("a pins listing twilight can parse");
    assert_eq!(
        pins.items.iter().map(|p| p.message.id).collect::<Vec<_>>(),
        [target]
    );
    let update = wait_for(&mut gw, "CHANNEL_PINS_UPDATE", |e| match e {
        Event::ChannelPinsUpdate(u) => Some(u.clone()),
        _ => None,
    })
    .await;
    assert_eq!(update.channel_id, chan);
    let events = server.drain(&mut alice).await;
    assert_eq!(
        about(&events, "pin", &ids[0]).len(),
        1,
        "the pin over long-poll: {events:?}"
    );
}

/// An attachment sent with twilight (multipart: `payload_json` and `files[0]`) comes back in the message
/// and in MESSAGE_CREATE, and its URL serves the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_over_multipart() {
    let server = Server::start(&[]).await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let watcher = server.register("watcher", "pw-watcher").await;
    join(&server, &watcher, "#chan").await;
    let mut gw = shard(&server, &watcher.token);
    let me = log_in(&mut gw).await;
    let chan = me.channel("chan");
    let rest = http(&server, &botty.token);

    let bytes = b"hello, file\n".to_vec();
    let files = [Attachment::from_bytes(
        "note.txt".to_owned(),
        bytes.clone(),
        1,
    )];
    let sent = rest
        .create_message(chan)
        .content("see attached")
        .attachments(&files)
        .await
        .expect("POST a message with an attachment")
        .model()
        .await
        .expect("a message twilight can parse");
    assert_eq!(sent.attachments.len(), 1, "{:?}", sent.attachments);
    let att = &sent.attachments[0];
    assert_eq!(att.filename, "note.txt");
    assert_eq!(att.size, bytes.len() as u64);
    let seen = wait_for(&mut gw, "MESSAGE_CREATE with the attachment", |e| match e {
        Event::MessageCreate(m) if m.id == sent.id => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        seen.attachments.iter().map(|a| &a.url).collect::<Vec<_>>(),
        [&att.url]
    );
    // The URL may be absolute or relative to the server.
    let url = if att.url.starts_with("http") {
        att.url.clone()
    } else {
        format!("{}{}", server.base, att.url)
    };
    let resp = reqwest::get(&url).await.expect("GET the attachment");
    assert_eq!(resp.status(), StatusCode::OK, "{url}");
    assert_eq!(resp.bytes().await.expect("body").to_vec(), bytes, "{url}");
}

/// A thread started from a message with twilight: THREAD_CREATE on the gateway, and a message posted in it
/// arrives with the thread as its channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_from_messages() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let watcher = server.register("watcher", "pw-watcher").await;
    join(&server, &watcher, "#chan").await;
    let mut gw = shard(&server, &watcher.token);
    let me = log_in(&mut gw).await;
    let chan = me.channel("chan");
    let rest = http(&server, &botty.token);

    let start = Id::new(
        say(&server, &alice, "let us discuss")
            .await
            .parse()
            .expect("id"),
    );
    let thread = rest
        .create_thread_from_message(chan, start, "discussion")
        .await
        .expect("POST channels/{id}/messages/{id}/threads")
        .model()
        .await
        .expect("a thread twilight can parse");
    assert_eq!(thread.kind, ChannelType::PublicThread);
    assert_eq!(thread.parent_id, Some(chan));
    assert_eq!(thread.name.as_deref(), Some("discussion"));
    let created = wait_for(&mut gw, "THREAD_CREATE", |e| match e {
        Event::ThreadCreate(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(created.id, thread.id);

    let inside = rest
        .create_message(thread.id)
        .content("in the thread")
        .await
        .expect("POST in the thread")
        .model()
        .await
        .expect("message");
    let seen = wait_for(&mut gw, "MESSAGE_CREATE in the thread", |e| match e {
        Event::MessageCreate(m) if m.id == inside.id => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(seen.channel_id, thread.id);
    assert_eq!(seen.content, "in the thread");
}

/// A new account joins the network guild (the core adds every user to the network space): connected
/// shards with the GUILD_MEMBERS intent hear GUILD_MEMBER_ADD, as Discord sends when someone joins a guild,
/// and GUILD_MEMBER_REMOVE when a guest's session ends, so that member caches stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_account_is_guild_member_add() {
    let server = Server::start(&[]).await;
    // The network tells its bots of new and departed users (people are not told, as on IRC).
    let (status, bot) = server
        .post(
            "/api/v10/auth/register",
            None,
            json!({"username": "botty", "password": "pw-botty-long", "bot": true}),
        )
        .await;
    assert!(status.is_success(), "register a bot: {bot}");
    let token = bot["token"].as_str().expect("token").to_owned();
    // A person's shard hears nothing of it: its next dispatch is the channel made at the end.
    let dave = server.register("dave", "pw-dave-long").await;
    let mut person = shard(&server, &dave.token);
    log_in(&mut person).await;
    let mut gw = shard(&server, &token);
    let me = log_in(&mut gw).await;

    server.register("carol", "pw-carol").await;
    let added = wait_for(&mut gw, "GUILD_MEMBER_ADD for a new account", |e| match e {
        Event::MemberAdd(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(added.guild_id, me.guild_id());
    assert_eq!(added.member.user.name, "carol");

    // A guest whose session ends leaves the network: GUILD_MEMBER_REMOVE.
    let gus = server.guest("gus").await;
    let (status, body) = server
        .post("/api/v1/logout", Some(&gus.token), json!({}))
        .await;
    assert!(status.is_success(), "logout: {body}");
    let removed = wait_for(
        &mut gw,
        "GUILD_MEMBER_REMOVE for a released guest",
        |e| match e {
            Event::MemberRemove(m) => Some(m.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(removed.guild_id, me.guild_id());
    assert_eq!(removed.user.name, "gus");

    join(&server, &dave, "#quiet").await;
    let first = wait_for(&mut person, "dave's next dispatch", |e| match e {
        Event::MemberAdd(_) | Event::MemberRemove(_) | Event::ChannelCreate(_) => Some(e.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(first, Event::ChannelCreate(_)),
        "a person hears no network joins or leaves: {first:?}"
    );
}

/// A network channel created (by a long-poll JOIN) while a shard is connected: GUILD_CREATE lists every
/// non-secret network channel to every member, so connected shards should hear CHANNEL_CREATE for a new one
/// too (Discord sends it to everyone who can see the channel), or their channel caches go stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_network_channel_is_channel_create() {
    let server = Server::start(&[]).await;
    let botty = server.register("botty", "pw-botty").await;
    let carol = server.register("carol", "pw-carol").await;
    let mut gw = shard(&server, &botty.token);
    let me = log_in(&mut gw).await;

    join(&server, &carol, "#fresh").await;
    let created = wait_for(
        &mut gw,
        "CHANNEL_CREATE for a new network channel",
        |e| match e {
            Event::ChannelCreate(c) => Some(c.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(created.name.as_deref(), Some("fresh"));
    assert_eq!(created.kind, ChannelType::GuildText);
    assert_eq!(created.guild_id, Some(me.guild_id()));

    // Its last member leaves: the channel is gone, and the shard hears so.
    server
        .ok(&carol, json!({ "command": "PART", "to": "#fresh" }))
        .await;
    let deleted = wait_for(
        &mut gw,
        "CHANNEL_DELETE for an emptied network channel",
        |e| match e {
            Event::ChannelDelete(c) => Some(c.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(deleted.id, created.id);
}

/// A topic change in a channel the shard's user is in arrives as CHANNEL_UPDATE that twilight parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_change_is_channel_update() {
    let server = Server::start(&[]).await;
    let carol = server.register("carol", "pw-carol").await;
    join(&server, &carol, "#fresh").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#fresh").await;
    let mut gw = shard(&server, &botty.token);
    let me = log_in(&mut gw).await;
    let fresh = me.channel("fresh");

    server
        .ok(
            &carol,
            json!({ "command": "TOPIC", "to": "#fresh", "body": "all things new" }),
        )
        .await;
    let updated = wait_for(&mut gw, "CHANNEL_UPDATE", |e| match e {
        Event::ChannelUpdate(c) if c.id == fresh => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!(updated.topic.as_deref(), Some("all things new"));
    assert_eq!(updated.guild_id, Some(me.guild_id()));
}

/// Direct messages: a long-poll user's DM reaches the shard without a guild; the bot answers through the DM
/// channel twilight-http opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages() {
    let server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    let botty = server.register("botty", "pw-botty").await;
    let mut gw = shard(&server, &botty.token);
    log_in(&mut gw).await;
    server.drain(&mut alice).await;

    server
        .ok(
            &alice,
            json!({ "command": "PRIVMSG", "to": "botty", "body": "psst" }),
        )
        .await;
    let dm = wait_for(&mut gw, "MESSAGE_CREATE of a DM", |e| match e {
        Event::MessageCreate(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(dm.content, "psst");
    assert_eq!(dm.guild_id, None, "a DM has no guild");
    assert_eq!(dm.author.name, "alice");

    let rest = http(&server, &botty.token);
    let channel = rest
        .create_private_channel(dm.author.id)
        .await
        .expect("POST users/@me/channels")
        .model()
        .await
        .expect("a DM channel twilight can parse");
    assert_eq!(channel.kind, ChannelType::Private);
    assert_eq!(channel.id, dm.channel_id, "the same DM channel");
    rest.create_message(channel.id)
        .content("hi back")
        .await
        .expect("POST a DM");
    let events = server.drain(&mut alice).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "message" && e["from"] == "botty" && e["body"] == "hi back"),
        "alice gets the answer: {events:?}"
    );
}

/// A resume the server cannot honour (an unknown session) is refused with op 9, and twilight identifies
/// afresh: READY, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_is_invalidated_then_identifies() {
    let server = Server::start(&[]).await;
    let botty = server.register("botty", "pw-botty").await;
    let config = ConfigBuilder::new(format!("Bot {}", botty.token), intents())
        .proxy_url(gateway_url(&server))
        .session(Session::new(3, "no-such-session".to_owned()))
        .resume_url(gateway_url(&server))
        .build();
    let mut gw = Shard::with_config(ShardId::ONE, config);
    let invalidated = wait_for(&mut gw, "INVALID_SESSION", |e| match e {
        Event::GatewayInvalidateSession(resumable) => Some(*resumable),
        Event::Resumed => panic!("an unknown session was resumed"),
        _ => None,
    })
    .await;
    assert!(!invalidated, "an unknown session is not resumable");
    let me = log_in(&mut gw).await;
    assert_eq!(me.name, "botty");
}

/// Without the MESSAGE_CONTENT intent, others' guild messages come with blank content; the bot's own keep
/// theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_content_intent() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let mut gw = shard_with(
        &server,
        &botty.token,
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    );
    log_in(&mut gw).await;
    say(&server, &alice, "secret").await;
    say(&server, &botty, "mine").await;
    let got = collect(&mut gw, "two messages", Duration::ZERO, |all| {
        contents(all).len() == 2
    })
    .await;
    assert_eq!(contents(&got), ["", "mine"]);
}

/// The shard drops its connection (close code 4000, keeping the session); messages sent while it is away
/// arrive after it resumes, each exactly once, in order, followed by the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_dropped_connection() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;

    let mut gw = shard(&server, &botty.token);
    log_in(&mut gw).await;
    say(&server, &alice, "before").await;
    let before = collect(&mut gw, "the first message", Duration::ZERO, |all| {
        contents(all).len() == 1
    })
    .await;
    assert_eq!(contents(&before), ["before"]);
    let session = gw.session().expect("a session after READY").clone();

    // Drop the connection the way a resuming client does; wait for the close to go through (or a second, if
    // the server drops the socket without a close frame), then talk while the shard is away.
    gw.close(CloseFrame::RESUME);
    let closed = Instant::now();
    while closed.elapsed() < Duration::from_secs(1) {
        match next_event(&mut gw, Duration::from_millis(200), "the close").await {
            Some(Event::GatewayClose(_)) => break,
            Some(other) => panic!("unexpected {:?} while closing", describe(&other)),
            None => {}
        }
    }
    let away: Vec<String> = (0..5).map(|i| format!("away-{i}")).collect();
    for body in &away {
        say(&server, &alice, body).await;
    }

    let mut resumed = false;
    let got = collect(
        &mut gw,
        "RESUMED and the missed messages",
        Duration::ZERO,
        |all| {
            if let Some(Event::Ready(_)) = all.last() {
                panic!("the server refused the resume (READY again, session {session:?})");
            }
            if let Some(Event::GatewayInvalidateSession(r)) = all.last() {
                panic!("the server invalidated the session (resumable: {r}) instead of resuming");
            }
            resumed |= matches!(all.last(), Some(Event::Resumed));
            resumed && contents(all).len() >= away.len()
        },
    )
    .await;
    let live: Vec<String> = (0..2).map(|i| format!("live-{i}")).collect();
    for body in &live {
        say(&server, &alice, body).await;
    }
    let after = collect(
        &mut gw,
        "the live messages",
        Duration::from_millis(500),
        |all| contents(all).len() >= live.len(),
    )
    .await;
    let mut want = away.clone();
    want.extend(live);
    let mut have = contents(&got);
    have.extend(contents(&after));
    assert_eq!(have, want, "every message exactly once, in order");
    assert!(
        gw.session().expect("session").sequence() > session.sequence(),
        "the sequence advanced"
    );
}

/// The TCP connection under the shard dies (no close frame): twilight reconnects through the same address
/// (the `resume_gateway_url` the server derived from the request), resumes, and gets what was said
/// meanwhile exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_killed_tcp_connection() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let relay = Relay::start(addr(&server)).await;

    let config = ConfigBuilder::new(format!("Bot {}", botty.token), intents())
        .proxy_url(format!("ws://{}/gateway", relay.addr))
        .build();
    let mut gw = Shard::with_config(ShardId::ONE, config);
    log_in(&mut gw).await;
    assert_eq!(
        gw.resume_url(),
        Some(format!("ws://{}/gateway", relay.addr).as_str()),
        "resume_gateway_url follows the address the client used (its Host header)"
    );
    say(&server, &alice, "before").await;
    let before = collect(&mut gw, "the first message", Duration::ZERO, |all| {
        contents(all).len() == 1
    })
    .await;
    assert_eq!(contents(&before), ["before"]);

    assert_eq!(relay.cut(), 1, "one gateway connection to cut");
    let gone: Vec<String> = (0..4).map(|i| format!("gone-{i}")).collect();
    for body in &gone {
        say(&server, &alice, body).await;
    }
    let mut resumed = false;
    let got = collect(
        &mut gw,
        "RESUMED and the messages said while cut off",
        Duration::from_millis(500),
        |all| {
            if let Some(Event::Ready(_)) = all.last() {
                panic!("the server refused the resume after a cut connection (READY again)");
            }
            resumed |= matches!(all.last(), Some(Event::Resumed));
            resumed && contents(all).len() >= gone.len()
        },
    )
    .await;
    assert_eq!(contents(&got), gone, "every message exactly once, in order");
}

/// Messages keep coming while the connection is cut twice: the replay on resume and the live stream after
/// it meet without a gap or an overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_races_with_live_traffic() {
    let server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let relay = Relay::start(addr(&server)).await;
    let config = ConfigBuilder::new(format!("Bot {}", botty.token), intents())
        .proxy_url(format!("ws://{}/gateway", relay.addr))
        .build();
    let mut gw = Shard::with_config(ShardId::ONE, config);
    log_in(&mut gw).await;

    // A sender task talks all along (about 2.5 s); the shard is cut off twice meanwhile.
    let total = 50;
    let (http, base, token) = (server.http(), server.base.clone(), alice.token.clone());
    let sender = tokio::spawn(async move {
        for i in 0..total {
            let body = json!({ "command": "PRIVMSG", "to": "#chan", "body": format!("n-{i}") });
            let (s, v) = crate::harness::try_request(
                &http,
                &base,
                reqwest::Method::POST,
                "/api/v1/messages",
                Some(&token),
                Some(&body),
                Duration::from_secs(10),
            )
            .await
            .expect("send");
            assert_eq!(s, StatusCode::OK, "send n-{i}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut cuts = 0;
    let mut resumes = 0;
    let got = collect_within(
        &mut gw,
        Duration::from_secs(20),
        "all the messages across two cuts",
        Duration::from_millis(500),
        |all| {
            match all.last() {
                Some(Event::Ready(_)) => panic!("the server refused a resume (READY again)"),
                Some(Event::Resumed) => resumes += 1,
                // Cut after the 10th and the 30th message arrive.
                Some(Event::MessageCreate(_)) => {
                    let n = contents(all).len();
                    if (n == 10 || n == 30) && cuts == resumes {
                        cuts += relay.cut();
                    }
                }
                _ => {}
            }
            contents(all).len() >= total
        },
    )
    .await;
    sender.await.expect("sender");
    assert_eq!(cuts, 2, "two connections cut");
    assert_eq!(resumes, 2, "two resumes");
    let want: Vec<String> = (0..total).map(|i| format!("n-{i}")).collect();
    assert_eq!(contents(&got), want, "every message exactly once, in order");
}

/// chatd restarts on the same database behind a stable address (as in production): the SAME shard, left
/// to twilight's own reconnect logic, resumes on the new process and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_reconnects_by_itself_across_restart() {
    let mut server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;
    let relay = Relay::start(addr(&server)).await;
    let config = ConfigBuilder::new(format!("Bot {}", botty.token), intents())
        .proxy_url(format!("ws://{}/gateway", relay.addr))
        .build();
    let mut gw = Shard::with_config(ShardId::ONE, config);
    log_in(&mut gw).await;
    say(&server, &alice, "before").await;
    let before = collect(&mut gw, "the first message", Duration::ZERO, |all| {
        contents(all).len() == 1
    })
    .await;
    assert_eq!(contents(&before), ["before"]);

    // The shard is not polled during the restart; it finds out when it next reads.
    say(&server, &alice, "unread").await;
    server.restart().await;
    relay.retarget(addr(&server));
    say(&server, &alice, "after").await;
    let mut resumed = false;
    // twilight backs off 1, 2, 4 s between failed attempts: allow for a few.
    let got = collect_within(
        &mut gw,
        Duration::from_secs(20),
        "RESUMED on the restarted server",
        Duration::from_millis(500),
        |all| {
            if let Some(Event::Ready(_)) = all.last() {
                panic!("the restarted server refused the resume (READY again)");
            }
            resumed |= matches!(all.last(), Some(Event::Resumed));
            resumed && contents(all).len() >= 2
        },
    )
    .await;
    assert_eq!(
        contents(&got),
        ["unread", "after"],
        "exactly once, in order"
    );
}

/// chatd restarts on the same database (on a new port): a new shard given the saved session resumes there
/// and receives what was sent between its last event and the restart and after the restart, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_server_restart() {
    let mut server = Server::start(&[]).await;
    let alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let botty = server.register("botty", "pw-botty").await;
    join(&server, &botty, "#chan").await;

    let mut gw = shard(&server, &botty.token);
    log_in(&mut gw).await;
    for i in 0..3 {
        say(&server, &alice, &format!("seen-{i}")).await;
    }
    let seen = collect(&mut gw, "the first messages", Duration::ZERO, |all| {
        contents(all).len() == 3
    })
    .await;
    assert_eq!(contents(&seen), ["seen-0", "seen-1", "seen-2"]);

    // Sent after the shard's last read event: the server may push them, but the shard never processes them,
    // so its session's sequence stays before them.
    for i in 0..2 {
        say(&server, &alice, &format!("unread-{i}")).await;
    }
    let session = gw.session().expect("a session after READY").clone();
    drop(gw);
    server.restart().await;
    for i in 0..2 {
        say(&server, &alice, &format!("after-{i}")).await;
    }

    let config = ConfigBuilder::new(format!("Bot {}", botty.token), intents())
        .proxy_url(gateway_url(&server))
        .session(session.clone())
        .resume_url(gateway_url(&server))
        .build();
    let mut gw = Shard::with_config(ShardId::ONE, config);
    let mut resumed = false;
    let got = collect(
        &mut gw,
        "RESUMED and the messages since the last event",
        Duration::from_millis(500),
        |all| {
            if let Some(Event::Ready(_)) = all.last() {
                panic!(
                    "the restarted server refused the resume (READY again, session {session:?})"
                );
            }
            if let Some(Event::GatewayInvalidateSession(r)) = all.last() {
                panic!("the restarted server invalidated the session (resumable: {r})");
            }
            resumed |= matches!(all.last(), Some(Event::Resumed));
            resumed && contents(all).len() >= 4
        },
    )
    .await;
    assert_eq!(
        contents(&got),
        ["unread-0", "unread-1", "after-0", "after-1"],
        "every message since the last event exactly once, in order"
    );
    // And the resumed session is live.
    say(&server, &alice, "live").await;
    let live = collect(
        &mut gw,
        "a live message",
        Duration::from_millis(300),
        |all| !contents(all).is_empty(),
    )
    .await;
    assert_eq!(contents(&live), ["live"]);
}

/// The example bot (examples/ping_bot.rs, compiled in) answers a long-poll user's `!ping` with `pong`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_bot_answers() {
    assert_eq!(ping_bot::answer(" !ping "), Some("pong"));
    assert_eq!(ping_bot::answer("ping"), None);

    let server = Server::start(&[]).await;
    let mut alice = server.register("alice", "pw-alice").await;
    join(&server, &alice, "#chan").await;
    let bot = server.register("pingbot", "pw-pingbot").await;
    join(&server, &bot, "#chan").await;
    let bot_task = tokio::spawn({
        let (addr, token) = (addr(&server), bot.token.clone());
        async move {
            ping_bot::run(&addr, &token)
                .await
                .map_err(|e| e.to_string())
        }
    });

    // The bot hears only what is said after it connects, so ask until it answers (it connects within a few
    // seconds), then check it answered each `!ping` it heard once.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut events = Vec::new();
    let mut asked = 0;
    let pong = loop {
        assert!(
            Instant::now() < deadline,
            "no pong within 15 s ({asked} pings); bot task finished: {}; saw {events:?}",
            bot_task.is_finished()
        );
        say(&server, &alice, "!ping").await;
        asked += 1;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            events.extend(server.poll(&mut alice, 1).await);
            if events.iter().any(|e| e["body"] == "pong") {
                break;
            }
        }
        if let Some(p) = events.iter().find(|e| e["body"] == "pong") {
            break p.clone();
        }
    };
    assert_eq!(pong["type"], "message");
    assert_eq!(pong["from"], "pingbot");
    assert_eq!(pong["to"], "#chan");
    bot_task.abort();
}
