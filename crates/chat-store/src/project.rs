//! The projection from log events to materialized rows, written once for both stores.
//!
//! [`effects`] turns one event into a short list of [`Effect`]s; each store applies them to its own tables.
//! Keeping the rules here (what a part's body says, which memberships a quit ends) is what makes the SQLite
//! store and the in-memory reference behave the same. Every effect is O(1) rows except the few that end many
//! memberships at once (a quit, a deleted space or channel), which are bounded by what they end.

use std::collections::BTreeMap;

use chat_core::{
    Audience, ChannelId, ChannelInfo, Event, EventKind, Invite, MessageId, MessageKind, ModeChange,
    OverwriteTarget, Permissions, Role, RoleId, Seq, SpaceId, SpaceInfo, Topic, UnixMillis, UserId,
};

use chat_log::StoredMessage;

/// One change to the materialized tables.
#[derive(Debug)]
pub(crate) enum Effect<'a> {
    /// A new user.
    User {
        id: UserId,
        nick: &'a str,
        password_hash: Option<&'a str>,
        bot: bool,
        system: bool,
    },
    /// Everyone not released joins a space (the network, when it is created).
    SpaceJoinAll(SpaceId),
    /// A nick change.
    Nick(UserId, &'a str),
    /// A profile's full new values.
    Profile {
        user: UserId,
        display_name: Option<&'a str>,
        bio: Option<&'a str>,
        avatar_url: Option<&'a str>,
    },
    /// A new password hash.
    Password(UserId, &'a str),
    /// Away set or cleared.
    Away(UserId, Option<&'a str>),
    /// A new client, with only its token's hash.
    Client {
        id: chat_core::ClientId,
        user: UserId,
        name: &'a str,
        token_hash: &'a [u8; 32],
    },
    /// A client went away.
    ClientGone(chat_core::ClientId),
    /// A quit: the user leaves every network channel; a released guest leaves everything but its DMs and is
    /// marked released.
    Quit { user: UserId, released: bool },
    /// A read marker.
    Read {
        user: UserId,
        channel: ChannelId,
        message: MessageId,
        mentions: u32,
    },
    /// A space created or updated.
    Space(&'a SpaceInfo),
    /// A space and all its channels are gone; every membership in them ends.
    SpaceGone(SpaceId),
    /// A user joins a space (no-op when already a member).
    SpaceJoin(SpaceId, UserId),
    /// A user leaves a space and every channel in it.
    SpaceLeave(SpaceId, UserId),
    /// A ban set (with its reason) or lifted.
    SpaceBan {
        space: SpaceId,
        user: UserId,
        reason: Option<&'a str>,
        on: bool,
    },
    /// A member's roles and space nickname.
    MemberUpdate {
        space: SpaceId,
        user: UserId,
        roles: &'a [RoleId],
        nick: Option<&'a str>,
    },
    /// A role created or changed.
    Role(SpaceId, Role),
    /// A new user joins the network space (every user is in it).
    NetworkJoin(UserId),
    /// A role deleted, with the overwrites that name it.
    RoleGone(RoleId),
    /// A channel created (with its initial overwrites) or updated (settings only).
    Channel {
        info: &'a ChannelInfo,
        created: bool,
    },
    /// A channel and its threads are gone; their memberships end.
    ChannelGone(ChannelId),
    /// A user becomes a member of a channel (no-op when already one).
    ChannelJoin {
        channel: ChannelId,
        user: UserId,
        op: bool,
        voice: bool,
    },
    /// A user stops being a member of a channel.
    ChannelLeave(ChannelId, UserId),
    /// An overwrite set (`Some`) or removed (`None`).
    Overwrite {
        channel: ChannelId,
        target: OverwriteTarget,
        value: Option<(Permissions, Permissions)>,
    },
    /// The topic changed.
    Topic(ChannelId, Option<&'a Topic>),
    /// A member mode (`+o`/`+v`) changed.
    MemberMode {
        channel: ChannelId,
        user: UserId,
        op: Option<bool>,
        voice: Option<bool>,
    },
    /// A message (user-written or system) enters history.
    Message(Box<StoredMessage>),
    /// A message's new text.
    Edit {
        id: MessageId,
        body: &'a str,
        meta: Option<&'a str>,
        mentions: &'a [UserId],
        edited_at: UnixMillis,
        embeds: Option<&'a str>,
    },
    /// A message leaves history.
    Delete(MessageId),
    /// A reaction added or removed.
    React {
        id: MessageId,
        user: UserId,
        emoji: &'a str,
        on: bool,
    },
    /// A message pinned or unpinned.
    Pin(MessageId, bool),
    /// A thread was started from a message.
    Thread {
        starter: MessageId,
        thread: ChannelId,
    },
    /// An invite made.
    Invite(&'a Invite),
    /// An invite used once more.
    InviteUsed(&'a str),
    /// An invite gone.
    InviteGone(&'a str),
}

/// The audience of an event as the log's columns store it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AudienceCols {
    /// 0 nobody, 1 user, 2 users, 3 channel, 4 channel and one user, 5 space, 6 space and one user.
    pub(crate) kind: u8,
    /// The channel named by the audience (before resolving a thread to its parent).
    pub(crate) channel: Option<ChannelId>,
    /// The space named by the audience.
    pub(crate) space: Option<SpaceId>,
    /// The one user named by the audience.
    pub(crate) user: Option<UserId>,
}

/// Audience kinds, as stored.
pub(crate) const AUD_NOBODY: u8 = 0;
pub(crate) const AUD_USER: u8 = 1;
pub(crate) const AUD_USERS: u8 = 2;
pub(crate) const AUD_CHANNEL: u8 = 3;
pub(crate) const AUD_CHANNEL_AND: u8 = 4;
pub(crate) const AUD_SPACE: u8 = 5;
pub(crate) const AUD_SPACE_AND: u8 = 6;

/// Splits an audience into the log's columns.
pub(crate) fn audience_cols(audience: &Audience) -> AudienceCols {
    let none = AudienceCols {
        kind: AUD_NOBODY,
        channel: None,
        space: None,
        user: None,
    };
    match audience {
        Audience::Nobody => none,
        Audience::User(u) => AudienceCols {
            kind: AUD_USER,
            user: Some(*u),
            ..none
        },
        Audience::Users(_) => AudienceCols {
            kind: AUD_USERS,
            ..none
        },
        Audience::Channel(c) => AudienceCols {
            kind: AUD_CHANNEL,
            channel: Some(*c),
            ..none
        },
        Audience::ChannelAnd(c, u) => AudienceCols {
            kind: AUD_CHANNEL_AND,
            channel: Some(*c),
            user: Some(*u),
            ..none
        },
        Audience::Space(s) => AudienceCols {
            kind: AUD_SPACE,
            space: Some(*s),
            ..none
        },
        Audience::SpaceAnd(s, u) => AudienceCols {
            kind: AUD_SPACE_AND,
            space: Some(*s),
            user: Some(*u),
            ..none
        },
    }
}

/// The event kind's name, stored beside the payload for operators reading the log with `sqlite3`.
pub(crate) fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::UserCreated { .. } => "user_created",
        EventKind::ProfileUpdated { .. } => "profile_updated",
        EventKind::PasswordChanged { .. } => "password_changed",
        EventKind::NickChanged { .. } => "nick_changed",
        EventKind::ClientCreated { .. } => "client_created",
        EventKind::ClientRemoved { .. } => "client_removed",
        EventKind::Quit { .. } => "quit",
        EventKind::AwayChanged { .. } => "away_changed",
        EventKind::PresenceChanged { .. } => "presence_changed",
        EventKind::PresenceUpdated { .. } => "presence_updated",
        EventKind::Typing { .. } => "typing",
        EventKind::ReadAck { .. } => "read_ack",
        EventKind::SpaceCreated { .. } => "space_created",
        EventKind::SpaceUpdated { .. } => "space_updated",
        EventKind::SpaceDeleted { .. } => "space_deleted",
        EventKind::MemberJoined { .. } => "member_joined",
        EventKind::MemberLeft { .. } => "member_left",
        EventKind::MemberUpdated { .. } => "member_updated",
        EventKind::SpaceBanned { .. } => "space_banned",
        EventKind::SpaceUnbanned { .. } => "space_unbanned",
        EventKind::RoleUpserted { .. } => "role_upserted",
        EventKind::RoleDeleted { .. } => "role_deleted",
        EventKind::ChannelCreated { .. } => "channel_created",
        EventKind::ChannelUpdated { .. } => "channel_updated",
        EventKind::ChannelDeleted { .. } => "channel_deleted",
        EventKind::ChannelAccess { .. } => "channel_access",
        EventKind::OverwriteSet { .. } => "overwrite_set",
        EventKind::OverwriteDeleted { .. } => "overwrite_deleted",
        EventKind::Joined { .. } => "joined",
        EventKind::Parted { .. } => "parted",
        EventKind::Kicked { .. } => "kicked",
        EventKind::TopicChanged { .. } => "topic_changed",
        EventKind::ModeChanged { .. } => "mode_changed",
        EventKind::Invited { .. } => "invited",
        EventKind::MessageCreated { .. } => "message_created",
        EventKind::MessageEdited { .. } => "message_edited",
        EventKind::MessageDeleted { .. } => "message_deleted",
        EventKind::MessagesDeleted { .. } => "messages_deleted",
        EventKind::ReactionAdded { .. } => "reaction_added",
        EventKind::ReactionRemoved { .. } => "reaction_removed",
        EventKind::Pinned { .. } => "pinned",
        EventKind::Unpinned { .. } => "unpinned",
        EventKind::InviteCreated { .. } => "invite_created",
        EventKind::InviteUsed { .. } => "invite_used",
        EventKind::InviteDeleted { .. } => "invite_deleted",
        // The enum is non-exhaustive: a kind added later is still logged, under a neutral name.
        EventKind::RemoteUserCreated { .. } => "remote_user_created",
        EventKind::Relayed { .. } => "relayed",
        _ => "other",
    }
}

/// Whether a message kind is indexed for search (what users wrote, not system notices).
pub(crate) fn searchable(kind: MessageKind) -> bool {
    kind.is_user_written()
}

/// A system message recorded in a channel's history by an event that is not itself a message.
fn system(
    ev: &Event,
    id: MessageId,
    channel: ChannelId,
    author: UserId,
    kind: MessageKind,
    body: String,
) -> StoredMessage {
    StoredMessage {
        id,
        seq: ev.seq,
        ts: ev.ts,
        channel,
        // Filled by the store from its channel table.
        space: None,
        author,
        kind,
        body,
        meta: None,
        reply_to: None,
        thread: None,
        mentions: Vec::new(),
        mention_everyone: false,
        attachments: Vec::new(),
        embeds: None,
        reactions: BTreeMap::new(),
        pinned: false,
        edited_at: None,
        nonce: None,
    }
}

/// Turns one event into the row changes it implies, in the order they must be applied.
pub(crate) fn effects(ev: &Event) -> Vec<Effect<'_>> {
    let sys = |id, channel, author, kind, body: String| {
        Effect::Message(Box::new(system(ev, id, channel, author, kind, body)))
    };
    match &ev.kind {
        EventKind::UserCreated {
            user,
            nick,
            password_hash,
            bot,
            system,
        } => vec![
            Effect::User {
                id: *user,
                nick,
                password_hash: password_hash.as_deref(),
                bot: *bot,
                system: *system,
            },
            Effect::NetworkJoin(*user),
        ],
        EventKind::RemoteUserCreated { user, nick, .. } => vec![
            Effect::User {
                id: *user,
                nick,
                password_hash: None,
                bot: false,
                system: false,
            },
            Effect::NetworkJoin(*user),
        ],
        EventKind::ProfileUpdated {
            user,
            display_name,
            bio,
            avatar_url,
        } => vec![Effect::Profile {
            user: *user,
            display_name: display_name.as_deref(),
            bio: bio.as_deref(),
            avatar_url: avatar_url.as_deref(),
        }],
        EventKind::PasswordChanged {
            user,
            password_hash,
        } => vec![Effect::Password(*user, password_hash)],
        EventKind::NickChanged {
            user, new, notices, ..
        } => {
            let mut out = vec![Effect::Nick(*user, new)];
            for (channel, message) in notices {
                out.push(sys(
                    *message,
                    *channel,
                    *user,
                    MessageKind::Nick,
                    new.clone(),
                ));
            }
            out
        }
        EventKind::ClientCreated {
            client,
            user,
            name,
            token_hash,
        } => vec![Effect::Client {
            id: *client,
            user: *user,
            name,
            token_hash,
        }],
        EventKind::ClientRemoved { client, .. } => vec![Effect::ClientGone(*client)],
        EventKind::Quit {
            user,
            reason,
            notices,
            released,
        } => {
            // The notices go in before the memberships end, as the core records them.
            let mut out: Vec<Effect<'_>> = notices
                .iter()
                .map(|(channel, message)| {
                    sys(
                        *message,
                        *channel,
                        *user,
                        MessageKind::Quit,
                        reason.clone().unwrap_or_default(),
                    )
                })
                .collect();
            out.push(Effect::Quit {
                user: *user,
                released: *released,
            });
            out
        }
        EventKind::AwayChanged { user, message } => vec![Effect::Away(*user, message.as_deref())],
        EventKind::ReadAck {
            user,
            channel,
            message,
            mention_count,
        } => vec![Effect::Read {
            user: *user,
            channel: *channel,
            message: *message,
            mentions: *mention_count,
        }],
        EventKind::SpaceCreated { space, everyone } => {
            let role = Role {
                id: space.id.everyone_role(),
                name: "@everyone".to_owned(),
                permissions: *everyone,
                color: 0,
                hoist: false,
                mentionable: false,
                position: 0,
            };
            let mut out = vec![Effect::Space(space), Effect::Role(space.id, role)];
            if space.network {
                out.push(Effect::SpaceJoinAll(space.id));
            }
            out
        }
        EventKind::SpaceUpdated { space } => vec![Effect::Space(space)],
        EventKind::SpaceDeleted { space } => vec![Effect::SpaceGone(*space)],
        EventKind::MemberJoined { space, user, .. } => vec![Effect::SpaceJoin(*space, *user)],
        EventKind::MemberLeft { space, user, .. } => vec![Effect::SpaceLeave(*space, *user)],
        EventKind::MemberUpdated {
            space,
            user,
            roles,
            nick,
        } => vec![Effect::MemberUpdate {
            space: *space,
            user: *user,
            roles,
            nick: nick.as_deref(),
        }],
        EventKind::SpaceBanned {
            space,
            user,
            reason,
            ..
        } => vec![
            Effect::SpaceBan {
                space: *space,
                user: *user,
                reason: reason.as_deref(),
                on: true,
            },
            Effect::SpaceLeave(*space, *user),
        ],
        EventKind::SpaceUnbanned { space, user } => vec![Effect::SpaceBan {
            space: *space,
            user: *user,
            reason: None,
            on: false,
        }],
        EventKind::RoleUpserted { space, role, .. } => vec![Effect::Role(*space, role.clone())],
        EventKind::RoleDeleted { role, .. } => vec![Effect::RoleGone(*role)],
        EventKind::ChannelCreated { channel, members } => {
            let mut out = vec![Effect::Channel {
                info: channel,
                created: true,
            }];
            if let (Some(starter), chat_core::ChannelKind::Thread) = (channel.starter, channel.kind)
            {
                out.push(Effect::Thread {
                    starter,
                    thread: channel.id,
                });
            }
            for u in members {
                out.push(Effect::ChannelJoin {
                    channel: channel.id,
                    user: *u,
                    op: false,
                    voice: false,
                });
            }
            out
        }
        EventKind::ChannelUpdated { channel } => vec![Effect::Channel {
            info: channel,
            created: false,
        }],
        EventKind::ChannelDeleted { channel } => vec![Effect::ChannelGone(*channel)],
        EventKind::ChannelAccess {
            channel,
            added,
            removed,
        } => added
            .iter()
            .map(|u| Effect::ChannelJoin {
                channel: *channel,
                user: *u,
                op: false,
                voice: false,
            })
            .chain(removed.iter().map(|u| Effect::ChannelLeave(*channel, *u)))
            .collect(),
        EventKind::OverwriteSet {
            channel,
            target,
            allow,
            deny,
        } => vec![Effect::Overwrite {
            channel: *channel,
            target: *target,
            value: Some((*allow, *deny)),
        }],
        EventKind::OverwriteDeleted { channel, target } => vec![Effect::Overwrite {
            channel: *channel,
            target: *target,
            value: None,
        }],
        EventKind::Joined {
            channel,
            user,
            message,
            modes,
        } => vec![
            Effect::ChannelJoin {
                channel: *channel,
                user: *user,
                op: modes.op,
                voice: modes.voice,
            },
            sys(*message, *channel, *user, MessageKind::Join, String::new()),
        ],
        EventKind::Parted {
            channel,
            user,
            reason,
            message,
        } => vec![
            sys(
                *message,
                *channel,
                *user,
                MessageKind::Part,
                reason.clone().unwrap_or_default(),
            ),
            Effect::ChannelLeave(*channel, *user),
        ],
        EventKind::Kicked {
            channel,
            user,
            by,
            reason,
            message,
        } => {
            let mut m = system(
                ev,
                *message,
                *channel,
                *by,
                MessageKind::Kick,
                reason.clone().unwrap_or_default(),
            );
            // Who was kicked travels as the notice's one mention.
            m.mentions = vec![*user];
            vec![
                Effect::Message(Box::new(m)),
                Effect::ChannelLeave(*channel, *user),
            ]
        }
        EventKind::TopicChanged {
            channel,
            topic,
            by,
            message,
        } => vec![
            Effect::Topic(*channel, topic.as_ref()),
            sys(
                *message,
                *channel,
                *by,
                MessageKind::Topic,
                topic.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
            ),
        ],
        EventKind::ModeChanged {
            channel,
            by,
            changes,
            message,
        } => {
            let mut out: Vec<Effect<'_>> = changes
                .iter()
                .filter_map(|c| match c {
                    ModeChange::Op { user, on } => Some(Effect::MemberMode {
                        channel: *channel,
                        user: *user,
                        op: Some(*on),
                        voice: None,
                    }),
                    ModeChange::Voice { user, on } => Some(Effect::MemberMode {
                        channel: *channel,
                        user: *user,
                        op: None,
                        voice: Some(*on),
                    }),
                    _ => None,
                })
                .collect();
            out.push(sys(
                *message,
                *channel,
                *by,
                MessageKind::Mode,
                ModeChange::line(changes),
            ));
            out
        }
        EventKind::Invited {
            channel,
            user,
            by,
            message,
        } => {
            let mut m = system(
                ev,
                *message,
                *channel,
                *by,
                MessageKind::Invite,
                String::new(),
            );
            m.mentions = vec![*user];
            vec![Effect::Message(Box::new(m))]
        }
        EventKind::MessageCreated { message: m } => {
            vec![Effect::Message(Box::new(StoredMessage {
                id: m.id,
                seq: ev.seq,
                ts: ev.ts,
                channel: m.channel,
                space: None,
                author: m.author,
                kind: m.kind,
                body: m.body.clone(),
                meta: m.meta.clone(),
                reply_to: m.reply_to,
                thread: None,
                mentions: m.mentions.clone(),
                mention_everyone: m.mention_everyone || m.mention_here,
                attachments: m.attachments.clone(),
                embeds: m.embeds.clone(),
                reactions: BTreeMap::new(),
                pinned: false,
                edited_at: None,
                nonce: m.nonce.clone(),
            }))]
        }
        EventKind::MessageEdited {
            message,
            body,
            meta,
            mentions,
            edited_at,
            embeds,
            ..
        } => vec![Effect::Edit {
            id: *message,
            body,
            meta: meta.as_deref(),
            mentions,
            edited_at: *edited_at,
            embeds: embeds.as_deref(),
        }],
        EventKind::MessageDeleted { message, .. } => vec![Effect::Delete(*message)],
        EventKind::MessagesDeleted { messages, .. } => {
            messages.iter().map(|m| Effect::Delete(*m)).collect()
        }
        EventKind::ReactionAdded {
            message,
            user,
            emoji,
            ..
        } => vec![Effect::React {
            id: *message,
            user: *user,
            emoji,
            on: true,
        }],
        EventKind::ReactionRemoved {
            message,
            user,
            emoji,
            ..
        } => vec![Effect::React {
            id: *message,
            user: *user,
            emoji,
            on: false,
        }],
        EventKind::Pinned {
            channel,
            message,
            by,
            notice,
        } => {
            let mut m = system(ev, *notice, *channel, *by, MessageKind::Pin, String::new());
            m.reply_to = Some(*message);
            vec![Effect::Pin(*message, true), Effect::Message(Box::new(m))]
        }
        EventKind::Unpinned { message, .. } => vec![Effect::Pin(*message, false)],
        EventKind::InviteCreated { invite } => vec![Effect::Invite(invite)],
        EventKind::InviteUsed { code, .. } => vec![Effect::InviteUsed(code)],
        EventKind::InviteDeleted { code } => vec![Effect::InviteGone(code)],
        // Live-only kinds change no table; a kind added later is logged but not yet projected.
        _ => Vec::new(),
    }
}

/// The seq at which each event's audience is resolved: the end of its command (see `Batch::command_ends`),
/// never past the batch's last event.
pub(crate) fn audience_points(events: &[Event], command_ends: &[Seq]) -> Vec<Seq> {
    let last = events.last().map_or(0, |e| e.seq);
    events
        .iter()
        .map(|e| {
            let i = command_ends.partition_point(|end| *end < e.seq);
            command_ends.get(i).map_or(e.seq, |end| (*end).min(last))
        })
        .collect()
}

/// Whether a membership interval `[from, to)` covers the point `at`.
pub(crate) fn member_at(from: Seq, to: Option<Seq>, at: Seq) -> bool {
    from <= at && to.is_none_or(|t| t > at)
}
