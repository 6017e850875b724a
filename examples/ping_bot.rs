//! A Discord bot written with twilight 0.17, unmodified, that answers `!ping` with `pong` on chatd.
//!
//! chatd speaks Discord's gateway and REST API, so the only chatd-specific part of this bot is where it
//! points twilight: the gateway at `ws://HOST:PORT/gateway` and the REST API at `http://HOST:PORT/api/v10`.
//!
//! Create the bot's account (prints its token on stdout, the only time it is shown), start the server, make
//! the bot join a channel, and run it:
//!
//! ```sh
//! cargo run --release -- admin create-bot pingbot --password 'a long secret'   # prints TOKEN
//! cargo run --release                                                          # the server, on 127.0.0.1:8080
//! curl -X POST -H "Authorization: Bearer TOKEN" -H 'Content-Type: application/json' \
//!      -d '{"command":"JOIN","to":"#general"}' http://127.0.0.1:8080/api/v1/messages
//! CHATD_URL=127.0.0.1:8080 CHATD_TOKEN=TOKEN cargo run -p chatd-examples --example ping-bot
//! ```
//!
//! Then say `!ping` in `#general` from any client. The bot hears the channels its account has joined (with
//! the long-poll `JOIN` above, or `PUT /api/v10/channels/{id}/members/@me`).

use std::error::Error;
use std::sync::Arc;

use twilight_gateway::{
    ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _,
};
use twilight_http::Client;

/// Any error the bot can stop on.
pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // `HOST:PORT` of the chatd server, without a scheme: twilight builds both URLs from it.
    let addr = std::env::var("CHATD_URL").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let token = std::env::var("CHATD_TOKEN")
        .map_err(|_| "set CHATD_TOKEN to the bot's token (from `chatd admin create-bot`)")?;
    run(&addr, &token).await
}

/// Connects to the chatd at `addr` (`HOST:PORT`) as the bot with `token` and answers `!ping` until the gateway
/// closes for good (for instance on a token the server refuses).
pub(crate) async fn run(addr: &str, token: &str) -> Result<(), BoxError> {
    // Shared with the tasks that send the answers, so that a slow request never holds up the gateway.
    let http = Arc::new(
        Client::builder()
            .token(token.to_owned())
            // `true`: plain HTTP; twilight then requests `http://{addr}/api/v10/...`.
            .proxy(addr.to_owned(), true)
            .build(),
    );
    // MESSAGE_CONTENT: without it a server following Discord's rules blanks the content of other people's
    // messages, and the bot could not see the `!ping`.
    let intents = Intents::GUILDS
        | Intents::GUILD_MESSAGES
        | Intents::DIRECT_MESSAGES
        | Intents::MESSAGE_CONTENT;
    // twilight appends `/?v=10&encoding=json` to this, and later resumes at the `resume_gateway_url` the
    // server gives in READY.
    let config = ConfigBuilder::new(token.to_owned(), intents)
        .proxy_url(format!("ws://{addr}/gateway"))
        .build();
    let mut shard = Shard::with_config(ShardId::ONE, config);
    println!("ping-bot: connecting to ws://{addr}/gateway");

    let wanted = EventTypeFlags::READY | EventTypeFlags::RESUMED | EventTypeFlags::MESSAGE_CREATE;
    while let Some(item) = shard.next_event(wanted).await {
        let event = match item {
            Ok(event) => event,
            // twilight reconnects (and resumes) by itself after an error; the bot only reports it.
            Err(error) => {
                eprintln!("ping-bot: gateway error: {error}");
                continue;
            }
        };
        match event {
            Event::Ready(ready) => println!(
                "ping-bot: logged in as {} (id {}), {} guild(s)",
                ready.user.name,
                ready.user.id,
                ready.guilds.len()
            ),
            Event::Resumed => println!("ping-bot: resumed the session"),
            Event::MessageCreate(message) => {
                // Never answer a bot (itself included): two bots could otherwise answer each other forever.
                if message.author.bot {
                    continue;
                }
                let Some(reply) = answer(&message.content) else {
                    continue;
                };
                println!(
                    "ping-bot: {} said {:?} in channel {}; answering {reply:?}",
                    message.author.name, message.content, message.channel_id
                );
                let http = Arc::clone(&http);
                let channel = message.channel_id;
                tokio::spawn(async move {
                    if let Err(error) = http.create_message(channel).content(reply).await {
                        eprintln!("ping-bot: could not answer in channel {channel}: {error}");
                    }
                });
            }
            _ => {}
        }
    }
    println!("ping-bot: the gateway closed for good");
    Ok(())
}

/// What the bot says to a message, if anything.
pub(crate) fn answer(content: &str) -> Option<&'static str> {
    (content.trim() == "!ping").then_some("pong")
}
