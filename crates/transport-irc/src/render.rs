//! Events as IRC lines, seen by one connection: what IRC has a command for is that command (PRIVMSG, JOIN,
//! MODE...); what it has not (edits, deletions, reactions, pins) is a server NOTICE to the channel, or a
//! TAGMSG with IRCv3 client tags where the client negotiated `message-tags`. Spaces' channels and threads
//! have no IRC name and are not shown (see the README's "IRC" section).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use chat_core::{
    ChannelId, ChannelKind, Event, EventKind, MessageKind, ModeChange, UnixMillis, UserId,
};
use chat_engine::Directory;

use crate::line::{Line, split_text};

/// The IRCv3 capabilities a connection negotiated that change how lines are written.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Caps {
    pub(crate) server_time: bool,
    pub(crate) message_tags: bool,
    pub(crate) echo_message: bool,
    pub(crate) batch: bool,
    pub(crate) chathistory: bool,
    pub(crate) labeled_response: bool,
    pub(crate) account_tag: bool,
    pub(crate) away_notify: bool,
    pub(crate) multi_prefix: bool,
    pub(crate) sasl: bool,
}

/// Channel events kept encoded: the most recent this many (event, capabilities) pairs.
const CACHE_ENTRIES: usize = 8192;

/// The encoded lines of recent events of network channels, by seq and the capabilities that change them:
/// such an event's lines are the same for every member, so a message to a channel of 10,000 connections is
/// encoded a handful of times (once per set of capabilities in use), not 10,000 times.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    lines: HashMap<(u64, u8), Arc<[String]>>,
    order: VecDeque<(u64, u8)>,
}

impl Cache {
    pub(crate) fn get(&self, key: (u64, u8)) -> Option<Arc<[String]>> {
        self.lines.get(&key).cloned()
    }

    pub(crate) fn put(&mut self, key: (u64, u8), lines: Arc<[String]>) {
        if self.lines.insert(key, lines).is_none() {
            self.order.push_back(key);
            while self.order.len() > CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.lines.remove(&old);
                }
            }
        }
    }
}

impl Caps {
    /// The capabilities a channel event's lines depend on, as a cache key.
    pub(crate) fn render_key(self) -> u8 {
        u8::from(self.server_time)
            | u8::from(self.message_tags) << 1
            | u8::from(self.account_tag) << 2
    }
}

/// Whether an event's lines are the same for every viewer (an event of a network channel that names no
/// viewer), and so may come from the [`Cache`].
pub(crate) fn shared_by_all(dir: &Directory, event: &Event) -> bool {
    let channel = match &event.kind {
        EventKind::MessageCreated { message } => message.channel,
        EventKind::Joined { channel, .. }
        | EventKind::Parted { channel, .. }
        | EventKind::Kicked { channel, .. }
        | EventKind::TopicChanged { channel, .. }
        | EventKind::ModeChanged { channel, .. }
        | EventKind::MessageEdited { channel, .. }
        | EventKind::MessageDeleted { channel, .. }
        | EventKind::MessagesDeleted { channel, .. }
        | EventKind::ReactionAdded { channel, .. }
        | EventKind::ReactionRemoved { channel, .. }
        | EventKind::Pinned { channel, .. }
        | EventKind::Unpinned { channel, .. } => *channel,
        _ => return false,
    };
    dir.channel(channel)
        .is_some_and(|c| c.kind == ChannelKind::Text && c.name.starts_with('#'))
}

/// Who is looking, and how.
pub(crate) struct View<'a> {
    pub(crate) dir: &'a Directory,
    pub(crate) server: &'a str,
    pub(crate) me: UserId,
    pub(crate) caps: Caps,
    /// Played back after a reconnect: only messages and what happened to them, each with its time.
    pub(crate) playback: bool,
}

/// Unix milliseconds as IRCv3 `server-time` (`2026-11-23T08:00:00.000Z`).
pub(crate) fn iso(ms: UnixMillis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A nick as IRC can carry it: a remote user's `nick@server` becomes `nick/server` (an `@` would end the
/// nick in a source `nick!user@host`).
pub(crate) fn irc_nick(nick: &str) -> String {
    nick.replace('@', "/")
}

/// A nick an IRC client typed, back in the core's spelling (`nick/server` is `nick@server`).
pub(crate) fn core_nick(nick: &str) -> String {
    nick.replacen('/', "@", 1)
}

impl View<'_> {
    /// `nick!id@kind` (the same parts a `+b` mask matches).
    pub(crate) fn source(&self, user: UserId) -> String {
        source_of(self.dir, user)
    }

    fn nick(&self, user: UserId) -> String {
        irc_nick(&self.dir.nick(user))
    }

    /// The IRC target of a channel for this viewer: `#name`, or for a DM the other side's nick seen from
    /// `author` (a DM from me is to the other; to me, it is to me). `None` for what IRC cannot name.
    pub(crate) fn target(&self, channel: ChannelId, author: UserId) -> Option<String> {
        let card = self.dir.channel(channel)?;
        match card.kind {
            ChannelKind::Dm => {
                if author == self.me {
                    let other = card
                        .dm
                        .iter()
                        .copied()
                        .find(|u| *u != self.me)
                        .unwrap_or(self.me);
                    Some(self.nick(other))
                } else {
                    Some(self.nick(self.me))
                }
            }
            ChannelKind::Text
                if card.name.starts_with('#') && self.dir.space(card.space?)?.network =>
            {
                Some(card.name.to_string())
            }
            _ => None,
        }
    }

    fn channel_name(&self, channel: ChannelId) -> Option<String> {
        let card = self.dir.channel(channel)?;
        (card.kind == ChannelKind::Text && card.name.starts_with('#'))
            .then(|| card.name.to_string())
    }

    /// Tags every line of an event carries when negotiated: its time, and the author's account.
    fn tags(&self, ts: UnixMillis, author: Option<UserId>) -> Vec<(String, Option<String>)> {
        let mut tags = Vec::new();
        if self.caps.server_time {
            tags.push(("time".into(), Some(iso(ts))));
        }
        if self.caps.account_tag
            && let Some(user) = author
            && let Some(card) = self.dir.user(user)
            && !card.guest
        {
            tags.push(("account".into(), Some(irc_nick(&card.nick))));
        }
        tags
    }

    /// A text played back to a client without `server-time`: its time in front.
    fn stamped(&self, ts: UnixMillis, text: &str) -> String {
        if self.playback && !self.caps.server_time {
            format!("[{}] {text}", &iso(ts)[..16].replace('T', " "))
        } else {
            text.to_owned()
        }
    }

    fn server_notice(&self, ts: UnixMillis, target: &str, text: &str) -> Line {
        Line::new("NOTICE")
            .tags(self.tags(ts, None))
            .source(self.server)
            .arg(target)
            .trailing(self.stamped(ts, text))
    }

    /// The lines `event` gives this viewer (none for what IRC cannot show).
    pub(crate) fn lines(&self, event: &Event) -> Vec<Line> {
        let ts = event.ts;
        let mut out = Vec::new();
        match &event.kind {
            EventKind::MessageCreated { message } => {
                out = self.message_lines(&Said {
                    ts,
                    id: message.id,
                    channel: message.channel,
                    author: message.author,
                    kind: message.kind,
                    body: &message.body,
                    reply_to: message.reply_to,
                    attachments: &message.attachments,
                });
            }
            _ if self.playback => {
                // Played back: what happened to messages, as notices; membership and modes are shown as they
                // are now by the join burst instead.
                if let Some(line) = self.message_change(event) {
                    out.push(line);
                }
            }
            EventKind::Joined { channel, user, .. } => {
                if let Some(name) = self.channel_name(*channel) {
                    out.push(
                        Line::new("JOIN")
                            .tags(self.tags(ts, Some(*user)))
                            .source(self.source(*user))
                            .arg(name),
                    );
                }
            }
            EventKind::Parted {
                channel,
                user,
                reason,
                ..
            } => {
                if let Some(name) = self.channel_name(*channel) {
                    let line = Line::new("PART")
                        .tags(self.tags(ts, Some(*user)))
                        .source(self.source(*user))
                        .arg(name);
                    out.push(match reason {
                        Some(r) => line.trailing(r.clone()),
                        None => line,
                    });
                }
            }
            EventKind::Kicked {
                channel,
                user,
                by,
                reason,
                ..
            } => {
                if let Some(name) = self.channel_name(*channel) {
                    out.push(
                        Line::new("KICK")
                            .tags(self.tags(ts, Some(*by)))
                            .source(self.source(*by))
                            .arg(name)
                            .arg(self.nick(*user))
                            .trailing(reason.clone().unwrap_or_default()),
                    );
                }
            }
            EventKind::Quit { user, reason, .. } if *user != self.me => {
                out.push(
                    Line::new("QUIT")
                        .tags(self.tags(ts, Some(*user)))
                        .source(self.source(*user))
                        .trailing(reason.clone().unwrap_or_else(|| "Quit".into())),
                );
            }
            EventKind::NickChanged { user, old, new, .. } => {
                let card = self.dir.user(*user);
                let host = card.map_or("account", host_of);
                out.push(
                    Line::new("NICK")
                        .tags(self.tags(ts, Some(*user)))
                        .source(format!("{}!{}@{host}", irc_nick(old), user))
                        .arg(irc_nick(new)),
                );
            }
            EventKind::TopicChanged {
                channel, topic, by, ..
            } => {
                if let Some(name) = self.channel_name(*channel) {
                    out.push(
                        Line::new("TOPIC")
                            .tags(self.tags(ts, Some(*by)))
                            .source(self.source(*by))
                            .arg(name)
                            .trailing(topic.as_ref().map(|t| t.text.clone()).unwrap_or_default()),
                    );
                }
            }
            EventKind::ModeChanged {
                channel,
                by,
                changes,
                ..
            } => {
                if let Some(name) = self.channel_name(*channel) {
                    let (modes, args) = mode_text(self, changes);
                    let mut line = Line::new("MODE")
                        .tags(self.tags(ts, Some(*by)))
                        .source(self.source(*by))
                        .arg(name)
                        .arg(modes);
                    for a in args {
                        line = line.arg(a);
                    }
                    out.push(line);
                }
            }
            EventKind::Invited {
                channel, user, by, ..
            } if *user == self.me => {
                if let Some(name) = self.channel_name(*channel) {
                    out.push(
                        Line::new("INVITE")
                            .tags(self.tags(ts, Some(*by)))
                            .source(self.source(*by))
                            .arg(self.nick(*user))
                            .arg(name),
                    );
                }
            }
            EventKind::AwayChanged { user, message }
                if self.caps.away_notify && *user != self.me =>
            {
                let line = Line::new("AWAY")
                    .tags(self.tags(ts, Some(*user)))
                    .source(self.source(*user));
                out.push(match message {
                    Some(m) => line.trailing(m.clone()),
                    None => line,
                });
            }
            _ => {
                if let Some(line) = self.message_change(event) {
                    out.push(line);
                }
            }
        }
        out
    }

    /// An edit, deletion, reaction or pin: a TAGMSG with client tags for a reaction where `message-tags` was
    /// negotiated, a server NOTICE to the channel otherwise.
    fn message_change(&self, event: &Event) -> Option<Line> {
        let ts = event.ts;
        match &event.kind {
            EventKind::MessageEdited {
                channel,
                message,
                author,
                body,
                ..
            } => {
                let target = self.target(*channel, *author)?;
                let who = self.nick(*author);
                let mut line = self.server_notice(
                    ts,
                    &target,
                    &format!("{who} edited a message: {}", first_line(body)),
                );
                if self.caps.message_tags {
                    line = line.tag("+draft/reply", Some(message.to_string()));
                }
                Some(line)
            }
            EventKind::MessageDeleted {
                channel,
                message,
                by,
            } => {
                let target = self.target(*channel, *by)?;
                let who = self.nick(*by);
                let mut line = self.server_notice(ts, &target, &format!("{who} deleted a message"));
                if self.caps.message_tags {
                    line = line.tag("+draft/reply", Some(message.to_string()));
                }
                Some(line)
            }
            EventKind::MessagesDeleted {
                channel,
                messages,
                by,
            } => {
                let target = self.target(*channel, *by)?;
                let who = self.nick(*by);
                Some(self.server_notice(
                    ts,
                    &target,
                    &format!("{who} deleted {} messages", messages.len()),
                ))
            }
            EventKind::ReactionAdded {
                channel,
                message,
                user,
                emoji,
            }
            | EventKind::ReactionRemoved {
                channel,
                message,
                user,
                emoji,
                ..
            } => {
                let added = matches!(event.kind, EventKind::ReactionAdded { .. });
                let target = self.target(*channel, *user)?;
                if self.caps.message_tags && !self.playback {
                    let key = if added {
                        "+draft/react"
                    } else {
                        "+draft/unreact"
                    };
                    return Some(
                        Line::new("TAGMSG")
                            .tags(self.tags(ts, Some(*user)))
                            .tag(key, Some(emoji.clone()))
                            .tag("+draft/reply", Some(message.to_string()))
                            .source(self.source(*user))
                            .arg(target),
                    );
                }
                let who = self.nick(*user);
                let what = if added {
                    "reacted"
                } else {
                    "took back the reaction"
                };
                Some(self.server_notice(ts, &target, &format!("{who} {what} {emoji} to a message")))
            }
            EventKind::Pinned { channel, by, .. } | EventKind::Unpinned { channel, by, .. } => {
                let target = self.target(*channel, *by)?;
                let who = self.nick(*by);
                let what = if matches!(event.kind, EventKind::Pinned { .. }) {
                    "pinned"
                } else {
                    "unpinned"
                };
                Some(self.server_notice(ts, &target, &format!("{who} {what} a message")))
            }
            _ => None,
        }
    }
}

/// A message as the lines need it (from an event or from history).
pub(crate) struct Said<'a> {
    pub(crate) ts: UnixMillis,
    pub(crate) id: chat_core::MessageId,
    pub(crate) channel: ChannelId,
    pub(crate) author: UserId,
    pub(crate) kind: MessageKind,
    pub(crate) body: &'a str,
    pub(crate) reply_to: Option<chat_core::MessageId>,
    pub(crate) attachments: &'a [chat_core::Attachment],
}

impl View<'_> {
    /// A message's lines: PRIVMSG (a CTCP ACTION for an action) or NOTICE, one per line of its text, with
    /// its time, id, author's account and the message it replies to as tags where negotiated.
    pub(crate) fn message_lines(&self, m: &Said<'_>) -> Vec<Line> {
        let mut out = Vec::new();
        let Some(target) = self.target(m.channel, m.author) else {
            return out;
        };
        let (command, action) = match m.kind {
            MessageKind::Message => ("PRIVMSG", false),
            MessageKind::Action => ("PRIVMSG", true),
            MessageKind::Notice => ("NOTICE", false),
            // Joins, parts, topics... are their own events; the stored system line is not shown.
            _ => return out,
        };
        let ts = m.ts;
        let mut tags = self.tags(ts, Some(m.author));
        if self.caps.message_tags {
            tags.push(("msgid".into(), Some(m.id.to_string())));
            if let Some(reply) = m.reply_to {
                tags.push(("+draft/reply".into(), Some(reply.to_string())));
            }
        }
        let source = self.source(m.author);
        let mut body = m.body.to_owned();
        for a in m.attachments {
            body.push_str(&format!("\n[file: {} ({} bytes)]", a.filename, a.size));
        }
        let overhead = source.len() + target.len() + 24;
        let pieces = split_text(&body, overhead);
        for (i, piece) in pieces.iter().enumerate() {
            let text = self.stamped(ts, piece);
            let text = if action {
                format!("\u{1}ACTION {text}\u{1}")
            } else {
                text
            };
            // The message's id goes on its first line only: a client keys replies on it.
            let line_tags = if i == 0 {
                tags.clone()
            } else {
                tags.iter().filter(|(k, _)| k != "msgid").cloned().collect()
            };
            out.push(
                Line::new(command)
                    .tags(line_tags)
                    .source(source.clone())
                    .arg(target.clone())
                    .trailing(text),
            );
        }
        out
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn host_of(card: &chat_engine::UserCard) -> &'static str {
    if card.system {
        "server"
    } else if card.bot {
        "bot"
    } else if card.guest {
        "guest"
    } else {
        "account"
    }
}

/// `nick!id@kind`: the nick now, the user's id, and what kind of user it is (chatd shows no addresses).
pub(crate) fn source_of(dir: &Directory, user: UserId) -> String {
    let host = dir.user(user).map_or("account", host_of);
    format!("{}!{}@{host}", irc_nick(&dir.nick(user)), user)
}

fn mode_text(view: &View<'_>, changes: &[ModeChange]) -> (String, Vec<String>) {
    let mut modes = String::new();
    let mut args = Vec::new();
    let mut sign = None;
    for change in changes {
        let (on, letter, arg) = match change {
            ModeChange::Flag { letter, on } => (*on, *letter, None),
            ModeChange::Key(key) => (
                key.is_some(),
                'k',
                Some(key.clone().unwrap_or_else(|| "*".into())),
            ),
            ModeChange::Limit(limit) => (limit.is_some(), 'l', limit.map(|l| l.to_string())),
            ModeChange::Ban { mask, on } => (*on, 'b', Some(mask.clone())),
            ModeChange::Op { user, on } => (*on, 'o', Some(view.nick(*user))),
            ModeChange::Voice { user, on } => (*on, 'v', Some(view.nick(*user))),
        };
        if sign != Some(on) {
            modes.push(if on { '+' } else { '-' });
            sign = Some(on);
        }
        modes.push(letter);
        args.extend(arg);
    }
    (modes, args)
}
