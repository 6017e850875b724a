//! The command line: subcommands and their own flags (clap derive). The configuration flags shared by every
//! subcommand live in `config.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::ConfigArgs;

/// chatd: a self-hosted chat server (IRC-style long-poll API and a Discord-compatible API on one port).
///
/// With no subcommand, `serve` runs. Every setting can be a flag, an environment variable, or a line of a
/// `.env` file in the working directory; a flag wins over the environment, which wins over `.env`.
#[derive(Parser, Debug)]
#[command(name = "chatd", version, about, long_about = None, max_term_width = 110)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,

    #[command(flatten)]
    pub(crate) config: ConfigArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Run the server (the default). Prints `chatd listening on http://ADDR` on stdout once it accepts.
    Serve,
    /// Create the database (and DATA_DIR) if missing, with its genesis events; harmless when it exists.
    Init,
    /// Apply pending schema migrations and convert the log to this build's format, and report both versions.
    Migrate,
    /// Manage accounts.
    Admin {
        #[command(subcommand)]
        action: AdminCmd,
    },
    /// Manage invites.
    Invite {
        #[command(subcommand)]
        action: InviteCmd,
    },
    /// Manage links to other chatd servers (federation, SPEC §13).
    Link {
        #[command(subcommand)]
        action: LinkCmd,
    },
    /// Fill the database with generated users, spaces, channels and messages (for demos and benchmarks).
    Seed(SeedArgs),
    /// Copy the SQLite database to PATH while it may be in use (SQLite online backup).
    Backup {
        /// Where to write the copy; must not exist yet.
        path: PathBuf,
    },
    /// Open the database, rebuild the state from it, and report what it holds, orphan attachment files
    /// included; exits nonzero on failure.
    Check {
        /// Remove the orphan files found (files under DATA_DIR/attachments that no message refers to).
        #[arg(long)]
        fix: bool,
    },
}

/// Where a password comes from: `--password`, else the `CHATD_PASSWORD` environment variable, else one line
/// of standard input.
#[derive(clap::Args, Debug)]
pub(crate) struct PasswordArg {
    /// The password [default: CHATD_PASSWORD, else a line read from stdin].
    #[arg(long, env = "CHATD_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AdminCmd {
    /// Create an account with a password.
    CreateUser {
        /// Its nick.
        nick: String,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Create a bot account and print its bearer token on stdout (the only time it is shown).
    CreateBot {
        /// Its nick.
        nick: String,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Set an account's password (a guest that is online becomes an account).
    SetPassword {
        /// Whose.
        nick: String,
        #[command(flatten)]
        password: PasswordArg,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum InviteCmd {
    /// Create an invite to a network channel and print its code on stdout.
    Create {
        /// The channel, like `#general`.
        #[arg(long)]
        channel: String,
        /// How many times it may be used (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        max_uses: u32,
        /// Seconds until it expires (0 = never).
        #[arg(long, default_value_t = 0)]
        max_age: u32,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum LinkCmd {
    /// Add a link to a server: its relays start at the end of this server's log.
    Add {
        /// The server's name, as it signs its requests (lower case, e.g. `chat.example.org`).
        name: String,
        /// Its base URL (`https://chat.example.org`).
        url: String,
        /// This link's own key [default: CHATD_LINK_KEY, else FEDERATION_KEY when the server runs].
        #[arg(long, env = "CHATD_LINK_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// List the links: name, URL, whether it has its own key, and its outbox cursor.
    List,
    /// Remove a link: nothing more is relayed to or accepted from that server.
    Remove {
        /// The server's name.
        name: String,
    },
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct SeedArgs {
    /// How many accounts to create (password `seed-password`).
    #[arg(long, default_value_t = 100)]
    pub(crate) users: u32,
    /// How many spaces to create.
    #[arg(long, default_value_t = 3)]
    pub(crate) spaces: u32,
    /// How many messages to send, spread over the network channels.
    #[arg(long, default_value_t = 1000)]
    pub(crate) messages: u32,
}
