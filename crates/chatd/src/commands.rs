//! The operator subcommands that are not the server: `init`, `migrate`, `admin ...`, `invite create`,
//! `backup` and `check`. Each opens the database, does its one job through the engine (or the store), stops
//! the engine cleanly, and prints its result on stdout; logs and progress go to stderr.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use chat_core::{ChannelKind, Command, Created, MessageKind};
use chat_engine::Engine;
use chat_store::format::FORMAT_VERSION;
use chat_store::{HistoryQuery, POSTGRES_SCHEMA_VERSION, SCHEMA_VERSION, ServerLink};

use crate::cli::{AdminCmd, InviteCmd, LinkCmd, PasswordArg};
use crate::config::{Config, DbUrl};
use crate::db::{self, Create, Db, Lock};

/// The client name the CLI's short-lived clients carry, so they are recognisable in the log.
const CLI_CLIENT: &str = "chatd-cli";

/// `init`: creates the data directory and the database with its genesis, or says it already exists.
pub(crate) async fn init(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
    let existed = matches!(&config.db, DbUrl::Sqlite(path) if path.exists());
    let db = Db::open(config, Create::Allow, Lock::Engine)?;
    let existed = existed || db.store().last_seq()? > 0;
    let (engine, task) = db.start(config.engine()).await?;
    let last_seq = engine.last_seq();
    let epoch = engine.epoch();
    db::stop(&engine, task).await?;
    let what = if existed {
        "already initialized"
    } else {
        "initialized"
    };
    println!(
        "{} {what} (schema version {}, epoch {epoch}, last seq {last_seq})",
        config.db,
        schema_version(config)
    );
    Ok(())
}

/// `migrate`: opening the store applies pending schema migrations; converting the log's format is asked
/// for explicitly, since it rewrites every record.
pub(crate) fn migrate(config: &Config) -> anyhow::Result<()> {
    let (_db, upgraded) = Db::upgrade(config)?;
    let converted = match upgraded {
        Some(from) => format!(" (converted from format version {from})"),
        None => String::new(),
    };
    println!(
        "{}: schema version {}, log format version {FORMAT_VERSION}{converted}",
        config.db,
        schema_version(config)
    );
    Ok(())
}

/// The schema version this build writes for the configured kind of database.
fn schema_version(config: &Config) -> u32 {
    match config.db {
        DbUrl::Postgres(_) => POSTGRES_SCHEMA_VERSION,
        _ => SCHEMA_VERSION,
    }
}

/// Resolves a password: the flag (or CHATD_PASSWORD, which clap already folded into it), else one line of
/// stdin. Read before the engine starts, so a prompt never races with log lines.
pub(crate) fn read_password(arg: &PasswordArg) -> anyhow::Result<String> {
    if let Some(password) = arg.password.as_deref().filter(|p| !p.is_empty()) {
        return Ok(password.to_owned());
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password given: use --password, CHATD_PASSWORD, or a line on stdin");
    }
    Ok(password.to_owned())
}

/// `admin ...`.
pub(crate) async fn admin(config: &Config, action: AdminCmd) -> anyhow::Result<()> {
    let password = match &action {
        AdminCmd::CreateUser { password, .. }
        | AdminCmd::CreateBot { password, .. }
        | AdminCmd::SetPassword { password, .. } => read_password(password)?,
    };
    let db = Db::open(config, Create::Allow, Lock::Engine)?;
    let (engine, task) = db.start(config.engine()).await?;
    let result = admin_inner(&engine, action, &password).await;
    // The engine is stopped whatever happened, so that cursors and a snapshot are saved.
    let stopped = db::stop(&engine, task).await;
    result?;
    stopped
}

async fn admin_inner(engine: &Engine, action: AdminCmd, password: &str) -> anyhow::Result<()> {
    match action {
        AdminCmd::CreateUser { nick, .. } => {
            let login = engine
                .register(&nick, password, false, CLI_CLIENT)
                .await
                .with_context(|| format!("creating the user {nick}"))?;
            // Registering always makes a first client; the CLI has no use for it, and a client left behind
            // would be a live credential nobody holds.
            engine
                .command(&login.session, Command::Logout, None)
                .await
                .context("logging the CLI's client out")?;
            println!("created user {nick} (id {})", login.session.user.0);
        }
        AdminCmd::CreateBot { nick, .. } => {
            let login = engine
                .register(&nick, password, true, "bot")
                .await
                .with_context(|| format!("creating the bot {nick}"))?;
            eprintln!(
                "created bot {nick} (id {}); its token follows, shown only this once",
                login.session.user.0
            );
            println!("{}", login.token);
        }
        AdminCmd::SetPassword { nick, .. } => {
            set_password(engine, &nick, password).await?;
            println!("password set for {nick}");
        }
    }
    Ok(())
}

/// Sets another user's password, as the server's operator.
async fn set_password(engine: &Engine, nick: &str, password: &str) -> anyhow::Result<()> {
    let nick_owned = nick.to_owned();
    let user = engine
        .query(move |core| {
            core.user_by_nick(&nick_owned)
                .filter(|u| !u.system && !u.released)
                .map(|u| u.id)
        })
        .await?
        .with_context(|| format!("no user named {nick}"))?;
    engine
        .set_user_password(user, password)
        .await
        .with_context(|| format!("setting the password of {nick}"))?;
    Ok(())
}

/// A fresh 32-byte value to stand in for a token's SHA-256 for clients the CLI makes for itself. No token is
/// ever shown, and finding one that hashes to this value is a SHA-256 preimage, so nobody can authenticate
/// as such a client; it only has to be unique, which std's randomly keyed hasher and a counter give.
pub(crate) fn unusable_token_hash() -> [u8; 32] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = RandomState::new();
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(count);
        h.write_usize(i);
        h.write_u64(db::now_ms());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// `invite create`.
pub(crate) async fn invite(config: &Config, action: InviteCmd) -> anyhow::Result<()> {
    let InviteCmd::Create {
        channel,
        max_uses,
        max_age,
    } = action;
    let db = Db::open(config, Create::Allow, Lock::Engine)?;
    let (engine, task) = db.start(config.engine()).await?;
    let result = create_invite(&engine, &channel, max_uses, max_age).await;
    let stopped = db::stop(&engine, task).await;
    println!("{}", result?);
    stopped
}

async fn create_invite(
    engine: &Engine,
    channel: &str,
    max_uses: u32,
    max_age: u32,
) -> anyhow::Result<String> {
    let name = if channel.starts_with('#') {
        channel.to_owned()
    } else {
        format!("#{channel}")
    };
    let lookup = name.clone();
    let id = engine
        .query(move |core| core.channel_by_name(&lookup).map(|c| c.id))
        .await?
        .with_context(|| format!("no channel named {name}"))?;
    let reply = engine
        .system(Command::CreateInvite {
            channel: id,
            max_uses,
            max_age_secs: max_age,
        })
        .await
        .with_context(|| format!("creating an invite to {name}"))?;
    match reply.created {
        Some(Created::Invite(code)) => Ok(code),
        other => bail!("the engine did not report the invite's code: {other:?}"),
    }
}

/// `link add|list|remove`: the servers this one links to. Works while a server runs on the database.
pub(crate) fn link(config: &Config, action: LinkCmd) -> anyhow::Result<()> {
    let db = Db::open(config, Create::Allow, Lock::None)?;
    let store = db.store();
    match action {
        LinkCmd::Add { name, url, key } => {
            let name = chat_federation::peer::server_name(&name)?;
            let url = chat_federation::peer::server_url(&url)?;
            if key.as_deref() == Some("") {
                bail!("an empty key signs nothing: give a key, or none to use FEDERATION_KEY");
            }
            let own_key = key.is_some();
            let link = ServerLink {
                name: name.clone(),
                url: url.clone(),
                key,
                added_at: db::now_ms(),
                cursor: store.last_seq()?,
            };
            if !store.add_link(&link)? {
                bail!("a link to {name} exists already; `chatd link remove {name}` first");
            }
            println!(
                "linked to {name} at {url} ({})",
                if own_key {
                    "its own key"
                } else {
                    "FEDERATION_KEY"
                }
            );
            if !own_key && config.federation_key.is_none() {
                eprintln!(
                    "warning: FEDERATION_KEY is not set here; the server needs it to sign for {name}"
                );
            }
        }
        LinkCmd::List => {
            for l in store.links()? {
                println!(
                    "{}\t{}\t{}\tcursor {}",
                    l.name,
                    l.url,
                    if l.key.is_some() {
                        "own key"
                    } else {
                        "FEDERATION_KEY"
                    },
                    l.cursor
                );
            }
        }
        LinkCmd::Remove { name } => {
            if !store.remove_link(&name)? {
                bail!("there is no link to {name}");
            }
            println!("removed the link to {name}");
        }
    }
    Ok(())
}

/// `backup PATH`: SQLite's online backup of the live database, safe while a server writes to it.
pub(crate) fn backup(config: &Config, path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; backup does not overwrite files",
            path.display()
        );
    }
    // Whatever the log's format: a backup is what to take before `chatd migrate` converts an older one.
    let db = Db::open_to_copy(config)?;
    let store = db.store();
    store
        .backup(path)
        .with_context(|| format!("backing up to {}", path.display()))?;
    let last_seq = store.last_seq()?;
    println!(
        "backed up {} to {} (last seq {last_seq})",
        config.db,
        path.display()
    );
    Ok(())
}

/// What `check` found.
#[derive(Debug, Default)]
struct Census {
    users: usize,
    bots: usize,
    channels: usize,
    dms: usize,
    spaces: usize,
}

/// `check`: opens the database, rebuilds the state through the engine exactly as the server would, and
/// reports what is there, and the attachment files no message refers to (with `fix`, removes them). Any
/// failure on the way (a damaged log, a snapshot that does not decode, a replay that does not reach the
/// log's end) is an error and a nonzero exit; orphan files are reported, not a failure.
pub(crate) async fn check(config: &Config, fix: bool) -> anyhow::Result<()> {
    // Files written after this are not judged. The database lock held from here on means no server runs
    // on it, so no upload is in flight; the cutoff is the grace for anything that still raced the lock. A
    // cluster's nodes keep running while `check` runs: an upload in flight on one of them is a file no
    // message names yet, so only files older than the longest an upload takes are judged there.
    let cluster = matches!(config.db, DbUrl::Postgres(_));
    let grace = if cluster {
        std::time::Duration::from_secs(3600)
    } else {
        std::time::Duration::ZERO
    };
    let cutoff = std::time::SystemTime::now() - grace;
    let db = Db::open(config, Create::Refuse, Lock::Engine)?;
    let store = db.store();
    let meta = store.meta();
    let logged = store.last_seq().context("reading the log's last seq")?;
    let first = store.first_seq().context("reading the log's first seq")?;
    let (engine, task) = db.start(config.engine()).await?;
    let result = census(&engine).await;
    let swept = engine.sweep_files(cutoff, fix).await;
    let replayed = engine.last_seq();
    let stopped = db::stop(&engine, task).await;
    let (census, channels) = result?;
    let swept = swept.context("comparing the attachment files with the messages")?;
    stopped?;
    // A cluster's writer may append while `check` reads: the state must reach the log's end as it was
    // read first, and may pass it.
    if replayed < logged || (!cluster && replayed != logged) {
        bail!("the rebuilt state ends at seq {replayed} but the log ends at seq {logged}");
    }
    // Messages are counted from the store's history, which is what clients can page through.
    let messages = tokio::task::spawn_blocking(move || count_messages(&*store, &channels))
        .await
        .context("the counting task failed")??;
    println!("database: {}", config.db);
    println!("schema version: {}", schema_version(config));
    // An open store's log is in this build's format: an older or newer one was refused on opening.
    println!("log format version: {FORMAT_VERSION}");
    println!("epoch: {}", meta.epoch);
    println!("last seq: {logged}");
    if let Some(first) = first {
        println!("first seq: {first}");
    }
    println!("users: {}", census.users);
    println!("bots: {}", census.bots);
    println!("spaces: {}", census.spaces);
    println!("channels: {}", census.channels);
    println!("dms: {}", census.dms);
    println!("messages: {messages}");
    println!("attachment files: {}", swept.live);
    for path in &swept.orphans {
        println!("orphan file: {}", path.display());
    }
    for path in &swept.unknown {
        println!("unknown file (left alone): {}", path.display());
    }
    let orphans = swept.orphans.len();
    if fix {
        println!(
            "orphan files: {orphans} removed ({} bytes)",
            swept.orphan_bytes
        );
    } else if orphans > 0 {
        println!(
            "orphan files: {orphans} ({} bytes); `chatd check --fix` removes them",
            swept.orphan_bytes
        );
    } else {
        println!("orphan files: 0");
    }
    println!("ok");
    Ok(())
}

async fn census(engine: &Engine) -> anyhow::Result<(Census, Vec<chat_core::ChannelId>)> {
    let found = engine
        .query(|core| {
            let mut census = Census::default();
            for user in core.users().filter(|u| !u.system && !u.released) {
                if user.bot {
                    census.bots += 1;
                } else {
                    census.users += 1;
                }
            }
            let network = core.network();
            census.spaces = core.spaces().filter(|s| s.id != network).count();
            let mut with_messages = Vec::new();
            for channel in core.channels() {
                match channel.kind {
                    ChannelKind::Text | ChannelKind::Thread => census.channels += 1,
                    ChannelKind::Dm | ChannelKind::GroupDm => census.dms += 1,
                    _ => {}
                }
                if channel.last_message.is_some() {
                    with_messages.push(channel.id);
                }
            }
            (census, with_messages)
        })
        .await?;
    Ok(found)
}

/// Counts user-written messages (not join or topic notices) by paging each channel's history back to front.
fn count_messages(
    store: &dyn chat_store::Store,
    channels: &[chat_core::ChannelId],
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for &channel in channels {
        let mut before = None;
        loop {
            let page = store.history(&HistoryQuery {
                channel,
                before,
                after: None,
                around: None,
                limit: 100,
            })?;
            let Some(oldest) = page.first() else { break };
            before = Some(oldest.id);
            total += page
                .iter()
                .filter(|m| {
                    matches!(
                        m.kind,
                        MessageKind::Message | MessageKind::Action | MessageKind::Notice
                    )
                })
                .count() as u64;
        }
    }
    Ok(total)
}
