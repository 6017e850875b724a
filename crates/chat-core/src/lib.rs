//! The chatd chat model as a synchronous, deterministic state machine.
//!
//! `chat-core` holds IRC's model (channels, nicks, topics, modes) and Discord's (spaces, roles, permission
//! overwrites, reactions, edits, threads, presence, read states, invites) in one [`Core`]. It has no
//! networking, reads no clock and no RNG, and never blocks: every call carries `now` (unix milliseconds),
//! [`Core::poll_timeout`] says when it next needs [`Core::handle_timeout`], and everything it accepts comes
//! out as [`Event`]s with their [`Audience`]. The same inputs always give the same outputs.
//!
//! The loop is "mutate, drain events, re-arm the timer":
//!
//! ```
//! use chat_core::{Command, Config, Core, Created, NewClient, Origin, Outgoing, Target};
//!
//! let mut now = 1_800_000_000_000;
//! let mut core = Core::new(Config::default(), now);
//! while let Some(_genesis) = core.poll_event() {}
//!
//! let reply = core.handle(now, Origin::Anonymous, Command::Register {
//!     nick: "alice".into(),
//!     password_hash: None,
//!     bot: false,
//!     client: Some(NewClient { name: "laptop".into(), token_hash: [1; 32] }),
//! })?;
//! let Some(Created::User { client: Some(alice), .. }) = reply.created else { unreachable!() };
//!
//! now += 10;
//! core.handle(now, Origin::Client(alice), Command::Join { channel: "#rust".into(), key: None })?;
//! core.handle(now, Origin::Client(alice), Command::Send {
//!     to: Target::parse("#rust"),
//!     message: Outgoing { body: "hello".into(), ..Outgoing::default() },
//! })?;
//! while let Some(event) = core.poll_event() {
//!     let recipients: Vec<_> = core.recipients(&event).collect();
//!     println!("{} {:?} -> {recipients:?}", event.seq, event.kind);
//! }
//! assert!(core.poll_timeout().is_some(), "alice's client expires if idle");
//! # Ok::<(), chat_core::Error>(())
//! ```
//!
//! The main types: [`Core`] (the machine and its queries), [`Command`] and [`Origin`] (inputs), [`Event`],
//! [`EventKind`] and [`Audience`] (outputs), [`Error`] (typed refusals), [`State`] (what a snapshot holds),
//! [`Permissions`] (Discord's bit values, with the IRC modes expressed through them).
#![deny(missing_docs)]

mod access;
mod apply;
mod command;
mod core;
mod error;
mod event;
mod federation;
mod handle;
mod id;
mod model;
mod name;
mod perm;

pub use crate::access::Recipients;
pub use crate::command::{
    Change, ChannelRef, Command, NewClient, Origin, Outgoing, Target, UserRef,
};
pub use crate::core::{Config, Core, Created, Reply, State};
pub use crate::error::{Error, Field, ReplayError};
pub use crate::event::{
    Audience, ChannelInfo, ClientEnd, Event, EventKind, LeaveReason, ModeChange, SpaceInfo,
};
pub use crate::federation::{
    ChannelState, GlobalRef, GlobalUser, Home, ModeArg, RemoteAction, RemoteOp, RemoteTarget,
    SERVER_NAME_MAX, check_server_name,
};
pub use crate::id::{
    ChannelId, ClientId, DISCORD_EPOCH, InviteId, MAX_NODE_ID, MessageId, RoleId, Seq, Snowflake,
    SpaceId, UnixMillis, UserId,
};
pub use crate::model::{
    Activity, ActivityKind, Attachment, Ban, Channel, ChannelFlags, ChannelKind, Client, Invite,
    InviteTarget, MemberModes, Message, MessageKind, MessageRecord, ReadState, Role, Space,
    SpaceMember, Status, Topic, User,
};
pub use crate::name::{
    CHANNEL_NAME_MAX, NICK_MAX, ban_matches, casefold, mask_matches, user_host,
    validate_channel_name, validate_nick,
};
pub use crate::perm::{Overwrite, OverwriteTarget, Permissions};
