//! The projection's row effects (`project.rs`) as PostgreSQL statements, applied inside an append's
//! transaction. Each arm does what the SQLite store's arm does; `INSERT OR REPLACE` becomes an upsert that
//! sets every column (a replaced row loses what the new values do not name), `INSERT OR IGNORE` becomes
//! `ON CONFLICT DO NOTHING`.

use std::collections::BTreeMap;

use chat_core::{ChannelId, Event, OverwriteTarget};
use chat_log::StoreError;
use tokio_postgres::Transaction;

use super::db::{Q, col};
use super::search;
use super::{bound, encode, sql};
use crate::project::{self, AUD_CHANNEL, AUD_CHANNEL_AND, Effect};

pub(super) type TxQ<'a, 'b> = Q<'a, Transaction<'b>>;

/// What an append gathers while it applies events, to write once per batch.
#[derive(Default)]
pub(super) struct Deferred {
    /// Each channel's newest message in the batch: `channels.last_message` is written once per channel.
    pub(super) last_message: BTreeMap<i64, i64>,
    /// Channels whose members receive a channel's events (a thread's parent), as found so far in this batch
    /// (and the committed ones before it). Cleared whenever a channel is created, changed or removed.
    membership: BTreeMap<i64, i64>,
    /// The log's rows, inserted together at the end of the batch in one statement.
    pub(super) rows: EventRows,
    /// New messages not yet inserted: a run of them goes in as one statement, before the next effect of
    /// another kind (which may read or change them) and at the end of the batch.
    messages: MessageRows,
}

impl Deferred {
    /// An append's gatherings, starting from the membership channels an earlier append found.
    pub(super) fn knowing(membership: BTreeMap<i64, i64>) -> Self {
        Self {
            membership,
            ..Self::default()
        }
    }

    /// The membership channels known at the end of the batch (once every event is applied).
    pub(super) fn take_membership(&mut self) -> BTreeMap<i64, i64> {
        std::mem::take(&mut self.membership)
    }
}

/// The columns of new messages, as arrays for one `INSERT ... SELECT FROM UNNEST`.
#[derive(Default)]
struct MessageRows {
    id: Vec<i64>,
    seq: Vec<i64>,
    ts: Vec<i64>,
    channel: Vec<i64>,
    author: Vec<i64>,
    kind: Vec<&'static str>,
    body: Vec<String>,
    meta: Vec<Option<String>>,
    reply_to: Vec<Option<i64>>,
    thread: Vec<Option<i64>>,
    mention_everyone: Vec<bool>,
    embeds: Vec<Option<String>>,
    nonce: Vec<Option<String>>,
    mentions: Vec<Vec<u8>>,
    attachments: Vec<Vec<u8>>,
    words: Vec<Option<String>>,
}

/// Inserts the buffered messages, in their order (the first of two with one id wins, as row by row).
pub(super) async fn flush_messages(
    q: &mut TxQ<'_, '_>,
    deferred: &mut Deferred,
) -> Result<(), StoreError> {
    if deferred.messages.id.is_empty() {
        return Ok(());
    }
    let m = std::mem::take(&mut deferred.messages);
    q.exec(
        "INSERT INTO messages (id, seq, ts, channel, space, author, kind, body, meta, reply_to, thread,
             mention_everyone, embeds, pinned, edited_at, nonce, mentions, attachments, words)
         SELECT u.id, u.seq, u.ts, u.channel, (SELECT space FROM channels WHERE id = u.channel), u.author,
             u.kind, u.body, u.meta, u.reply_to, u.thread, u.mention_everyone, u.embeds, FALSE, NULL,
             u.nonce, u.mentions, u.attachments, u.words::tsvector
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],
             $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::boolean[], $12::text[], $13::text[],
             $14::bytea[], $15::bytea[], $16::text[])
             WITH ORDINALITY AS u (id, seq, ts, channel, author, kind, body, meta, reply_to, thread,
                 mention_everyone, embeds, nonce, mentions, attachments, words, ord)
         ORDER BY u.ord
         ON CONFLICT (id) DO NOTHING",
        &[
            &m.id,
            &m.seq,
            &m.ts,
            &m.channel,
            &m.author,
            &m.kind,
            &m.body,
            &m.meta,
            &m.reply_to,
            &m.thread,
            &m.mention_everyone,
            &m.embeds,
            &m.nonce,
            &m.mentions,
            &m.attachments,
            &m.words,
        ],
    )
    .await?;
    Ok(())
}

/// The columns of `events` for a batch, as arrays for one `INSERT ... SELECT FROM UNNEST`.
#[derive(Default)]
pub(super) struct EventRows {
    pub(super) seq: Vec<i64>,
    pub(super) ts: Vec<i64>,
    pub(super) kind: Vec<&'static str>,
    pub(super) aud: Vec<i16>,
    pub(super) aud_at: Vec<i64>,
    pub(super) aud_channel: Vec<Option<i64>>,
    pub(super) aud_space: Vec<Option<i64>>,
    pub(super) aud_user: Vec<Option<i64>>,
    pub(super) payload: Vec<Vec<u8>>,
}

fn target_cols(t: OverwriteTarget) -> (i16, i64) {
    match t {
        OverwriteTarget::Role(r) => (0, sql(r.get())),
        OverwriteTarget::Member(u) => (1, sql(u.get())),
    }
}

async fn space_join(
    q: &mut TxQ<'_, '_>,
    seq: i64,
    space: i64,
    user: i64,
) -> Result<(), StoreError> {
    q.exec(
        "INSERT INTO space_members (space, user_id, from_seq)
         SELECT $1::bigint, $2::bigint, $3::bigint WHERE NOT EXISTS (
             SELECT 1 FROM space_members WHERE space = $1 AND user_id = $2 AND to_seq IS NULL)
         ON CONFLICT (space, user_id, from_seq) DO UPDATE SET to_seq = NULL",
        &[&space, &user, &seq],
    )
    .await?;
    Ok(())
}

/// Removes channels with their threads (at any depth): memberships end, their messages leave history.
async fn channels_gone(q: &mut TxQ<'_, '_>, seq: i64, roots: &[i64]) -> Result<(), StoreError> {
    let rows = q
        .query(
            "WITH RECURSIVE gone (id) AS (
                 SELECT unnest($1::bigint[])
                 UNION SELECT c.id FROM channels c JOIN gone ON c.parent = gone.id WHERE c.kind = 'thread')
             SELECT id FROM gone",
            &[&roots],
        )
        .await?;
    let ids = rows
        .iter()
        .map(|r| col::<i64>(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    q.exec(
        "UPDATE channels SET deleted_seq = $1 WHERE id = ANY($2) AND deleted_seq IS NULL",
        &[&seq, &ids],
    )
    .await?;
    q.exec(
        "UPDATE members SET to_seq = $1 WHERE channel = ANY($2) AND to_seq IS NULL",
        &[&seq, &ids],
    )
    .await?;
    q.exec(
        "DELETE FROM reactions WHERE message IN (SELECT id FROM messages WHERE channel = ANY($1))",
        &[&ids],
    )
    .await?;
    q.exec("DELETE FROM messages WHERE channel = ANY($1)", &[&ids])
        .await?;
    Ok(())
}

/// Ends `user`'s open channel memberships in the channels `channels` (a subquery) selects.
async fn leave_channels(
    q: &mut TxQ<'_, '_>,
    seq: i64,
    user: i64,
    channels: &str,
    arg: Option<i64>,
) -> Result<(), StoreError> {
    let text = format!(
        "UPDATE members SET to_seq = $1 WHERE user_id = $2 AND to_seq IS NULL AND channel IN ({channels})"
    );
    match arg {
        Some(a) => q.exec(&text, &[&seq, &user, &a]).await?,
        None => q.exec(&text, &[&seq, &user]).await?,
    };
    Ok(())
}

const NETWORK: &str =
    "SELECT id FROM spaces WHERE network AND deleted_seq IS NULL ORDER BY id LIMIT 1";

/// Applies one projected effect inside the append transaction.
async fn apply(
    q: &mut TxQ<'_, '_>,
    ev: &Event,
    effect: Effect<'_>,
    deferred: &mut Deferred,
) -> Result<(), StoreError> {
    let seq = bound(ev.seq);
    let ts = bound(ev.ts);
    if !matches!(effect, Effect::Message(_)) {
        flush_messages(q, deferred).await?;
    }
    match effect {
        Effect::User {
            id,
            nick,
            password_hash,
            bot,
            system,
        } => {
            q.exec(
                "INSERT INTO users (id, nick, password_hash, bot, system, released, created_at)
                 VALUES ($1, $2, $3, $4, $5, FALSE, $6)
                 ON CONFLICT (id) DO UPDATE SET nick = EXCLUDED.nick,
                     password_hash = EXCLUDED.password_hash, display_name = NULL, bio = NULL,
                     avatar_url = NULL, away = NULL, bot = EXCLUDED.bot, system = EXCLUDED.system,
                     released = FALSE, created_at = EXCLUDED.created_at",
                &[&sql(id.get()), &nick, &password_hash, &bot, &system, &ts],
            )
            .await?;
        }
        Effect::NetworkJoin(user) => {
            if let Some(r) = q.opt(NETWORK, &[]).await? {
                space_join(q, seq, col(&r, 0)?, sql(user.get())).await?;
            }
        }
        Effect::SpaceJoinAll(space) => {
            q.exec(
                "INSERT INTO space_members (space, user_id, from_seq)
                 SELECT $1::bigint, u.id, $2::bigint FROM users u WHERE NOT u.released AND NOT EXISTS (
                     SELECT 1 FROM space_members m
                     WHERE m.space = $1 AND m.user_id = u.id AND m.to_seq IS NULL)
                 ON CONFLICT (space, user_id, from_seq) DO UPDATE SET to_seq = NULL",
                &[&sql(space.get()), &seq],
            )
            .await?;
        }
        Effect::Nick(user, nick) => {
            q.exec(
                "UPDATE users SET nick = $1 WHERE id = $2",
                &[&nick, &sql(user.get())],
            )
            .await?;
        }
        Effect::Profile {
            user,
            display_name,
            bio,
            avatar_url,
        } => {
            q.exec(
                "UPDATE users SET display_name = $1, bio = $2, avatar_url = $3 WHERE id = $4",
                &[&display_name, &bio, &avatar_url, &sql(user.get())],
            )
            .await?;
        }
        Effect::Password(user, hash) => {
            q.exec(
                "UPDATE users SET password_hash = $1 WHERE id = $2",
                &[&hash, &sql(user.get())],
            )
            .await?;
        }
        Effect::Away(user, message) => {
            q.exec(
                "UPDATE users SET away = $1 WHERE id = $2",
                &[&message, &sql(user.get())],
            )
            .await?;
        }
        Effect::Client {
            id,
            user,
            name,
            token_hash,
        } => {
            q.exec(
                "INSERT INTO clients (id, user_id, name, token_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, name = EXCLUDED.name,
                     token_hash = EXCLUDED.token_hash, created_at = EXCLUDED.created_at",
                &[
                    &sql(id.get()),
                    &sql(user.get()),
                    &name,
                    &&token_hash[..],
                    &ts,
                ],
            )
            .await?;
        }
        Effect::ClientGone(id) => {
            q.exec("DELETE FROM clients WHERE id = $1", &[&sql(id.get())])
                .await?;
        }
        Effect::Quit { user, released } => {
            let u = sql(user.get());
            if released {
                leave_channels(
                    q,
                    seq,
                    u,
                    "SELECT id FROM channels WHERE kind <> 'dm'",
                    None,
                )
                .await?;
                q.exec(
                    "UPDATE space_members SET to_seq = $1 WHERE user_id = $2 AND to_seq IS NULL",
                    &[&seq, &u],
                )
                .await?;
                q.exec(
                    "UPDATE users SET released = TRUE, away = NULL WHERE id = $1",
                    &[&u],
                )
                .await?;
                q.exec("DELETE FROM read_states WHERE user_id = $1", &[&u])
                    .await?;
            } else {
                leave_channels(
                    q,
                    seq,
                    u,
                    &format!("SELECT id FROM channels WHERE space = ({NETWORK})"),
                    None,
                )
                .await?;
            }
        }
        Effect::Read {
            user,
            channel,
            message,
            mentions,
        } => {
            q.exec(
                "INSERT INTO read_states (user_id, channel, last_read, mention_count)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, channel) DO UPDATE SET last_read = EXCLUDED.last_read,
                     mention_count = EXCLUDED.mention_count",
                &[
                    &sql(user.get()),
                    &sql(channel.get()),
                    &sql(message.get()),
                    &i64::from(mentions),
                ],
            )
            .await?;
        }
        Effect::Space(info) => {
            q.exec(
                "INSERT INTO spaces (id, name, description, icon_url, owner, public, network, created_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET name = $2, description = $3, icon_url = $4, owner = $5,
                     public = $6, network = $7",
                &[
                    &sql(info.id.get()),
                    &info.name,
                    &info.description,
                    &info.icon_url,
                    &sql(info.owner.get()),
                    &info.public,
                    &info.network,
                    &seq,
                ],
            )
            .await?;
        }
        Effect::SpaceGone(space) => {
            let s = sql(space.get());
            let channels = q
                .query("SELECT id FROM channels WHERE space = $1", &[&s])
                .await?
                .iter()
                .map(|r| col::<i64>(r, 0))
                .collect::<Result<Vec<_>, _>>()?;
            channels_gone(q, seq, &channels).await?;
            deferred.membership.clear();
            q.exec(
                "UPDATE space_members SET to_seq = $1 WHERE space = $2 AND to_seq IS NULL",
                &[&seq, &s],
            )
            .await?;
            q.exec(
                "UPDATE spaces SET deleted_seq = $1 WHERE id = $2",
                &[&seq, &s],
            )
            .await?;
            q.exec("DELETE FROM invites WHERE space = $1", &[&s])
                .await?;
        }
        Effect::SpaceJoin(space, user) => {
            space_join(q, seq, sql(space.get()), sql(user.get())).await?;
        }
        Effect::SpaceLeave(space, user) => {
            let (s, u) = (sql(space.get()), sql(user.get()));
            q.exec(
                "UPDATE space_members SET to_seq = $1
                 WHERE space = $2 AND user_id = $3 AND to_seq IS NULL",
                &[&seq, &s, &u],
            )
            .await?;
            leave_channels(
                q,
                seq,
                u,
                "SELECT id FROM channels WHERE space = $3",
                Some(s),
            )
            .await?;
        }
        Effect::SpaceBan {
            space,
            user,
            reason,
            on,
        } => {
            let (s, u) = (sql(space.get()), sql(user.get()));
            if on {
                q.exec(
                    "INSERT INTO space_bans (space, user_id, reason) VALUES ($1, $2, $3)
                     ON CONFLICT (space, user_id) DO UPDATE SET reason = EXCLUDED.reason",
                    &[&s, &u, &reason],
                )
                .await?;
            } else {
                q.exec(
                    "DELETE FROM space_bans WHERE space = $1 AND user_id = $2",
                    &[&s, &u],
                )
                .await?;
            }
        }
        Effect::MemberUpdate {
            space,
            user,
            roles,
            nick,
        } => {
            let blob = encode(&roles, "roles", ev.seq)?;
            q.exec(
                "UPDATE space_members SET roles = $1, nick = $2
                 WHERE space = $3 AND user_id = $4 AND to_seq IS NULL",
                &[&blob, &nick, &sql(space.get()), &sql(user.get())],
            )
            .await?;
        }
        Effect::Role(space, role) => {
            q.exec(
                "INSERT INTO roles (id, space, name, permissions, color, hoist, mentionable, position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET space = EXCLUDED.space, name = EXCLUDED.name,
                     permissions = EXCLUDED.permissions, color = EXCLUDED.color, hoist = EXCLUDED.hoist,
                     mentionable = EXCLUDED.mentionable, position = EXCLUDED.position",
                &[
                    &sql(role.id.get()),
                    &sql(space.get()),
                    &role.name,
                    &sql(role.permissions.bits()),
                    &i64::from(role.color),
                    &role.hoist,
                    &role.mentionable,
                    &i64::from(role.position),
                ],
            )
            .await?;
        }
        Effect::RoleGone(role) => {
            let r = sql(role.get());
            q.exec("DELETE FROM roles WHERE id = $1", &[&r]).await?;
            q.exec(
                "DELETE FROM overwrites WHERE target_kind = 0 AND target = $1",
                &[&r],
            )
            .await?;
        }
        Effect::Channel { info, created } => {
            deferred.membership.clear();
            let c = sql(info.id.get());
            let topic = info.topic.as_ref();
            let topic_text = topic.map(|t| t.text.as_str());
            let topic_by = topic.map(|t| sql(t.by.get()));
            let topic_at = topic.map(|t| bound(t.at));
            let parent = info.parent.map(|p| sql(p.get()));
            let owner = info.owner.map(|o| sql(o.get()));
            if created {
                q.exec(
                    "INSERT INTO channels (id, space, kind, parent, name, topic, topic_by, topic_at,
                         position, slowmode_secs, owner, starter, created_seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     ON CONFLICT (id) DO UPDATE SET space = EXCLUDED.space, kind = EXCLUDED.kind,
                         parent = EXCLUDED.parent, name = EXCLUDED.name, topic = EXCLUDED.topic,
                         topic_by = EXCLUDED.topic_by, topic_at = EXCLUDED.topic_at,
                         position = EXCLUDED.position, slowmode_secs = EXCLUDED.slowmode_secs,
                         owner = EXCLUDED.owner, starter = EXCLUDED.starter, last_message = NULL,
                         created_seq = EXCLUDED.created_seq, deleted_seq = NULL",
                    &[
                        &c,
                        &info.space.map(|s| sql(s.get())),
                        &info.kind.name(),
                        &parent,
                        &info.name,
                        &topic_text,
                        &topic_by,
                        &topic_at,
                        &i64::from(info.position),
                        &i64::from(info.slowmode_secs),
                        &owner,
                        &info.starter.map(|s| sql(s.get())),
                        &seq,
                    ],
                )
                .await?;
                for (t, allow, deny) in &info.overwrites {
                    let (tk, tv) = target_cols(*t);
                    q.exec(
                        "INSERT INTO overwrites (channel, target_kind, target, allow, deny)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (channel, target_kind, target) DO UPDATE SET allow = EXCLUDED.allow,
                             deny = EXCLUDED.deny",
                        &[&c, &tk, &tv, &sql(allow.bits()), &sql(deny.bits())],
                    )
                    .await?;
                }
            } else {
                q.exec(
                    "UPDATE channels SET name = $2, topic = $3, topic_by = $4, topic_at = $5,
                         position = $6, parent = $7, slowmode_secs = $8, owner = $9
                     WHERE id = $1",
                    &[
                        &c,
                        &info.name,
                        &topic_text,
                        &topic_by,
                        &topic_at,
                        &i64::from(info.position),
                        &parent,
                        &i64::from(info.slowmode_secs),
                        &owner,
                    ],
                )
                .await?;
            }
        }
        Effect::ChannelGone(channel) => {
            deferred.membership.clear();
            channels_gone(q, seq, &[sql(channel.get())]).await?;
        }
        Effect::ChannelJoin {
            channel,
            user,
            op,
            voice,
        } => {
            q.exec(
                "INSERT INTO members (channel, user_id, from_seq, op, voice)
                 SELECT $1::bigint, $2::bigint, $3::bigint, $4::boolean, $5::boolean WHERE NOT EXISTS (
                     SELECT 1 FROM members WHERE channel = $1 AND user_id = $2 AND to_seq IS NULL)
                 ON CONFLICT (channel, user_id, from_seq) DO UPDATE SET to_seq = NULL",
                &[&sql(channel.get()), &sql(user.get()), &seq, &op, &voice],
            )
            .await?;
        }
        Effect::ChannelLeave(channel, user) => {
            q.exec(
                "UPDATE members SET to_seq = $1 WHERE channel = $2 AND user_id = $3 AND to_seq IS NULL",
                &[&seq, &sql(channel.get()), &sql(user.get())],
            )
            .await?;
        }
        Effect::Overwrite {
            channel,
            target,
            value,
        } => {
            let (tk, tv) = target_cols(target);
            match value {
                Some((allow, deny)) => {
                    q.exec(
                        "INSERT INTO overwrites (channel, target_kind, target, allow, deny)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (channel, target_kind, target) DO UPDATE SET allow = EXCLUDED.allow,
                             deny = EXCLUDED.deny",
                        &[
                            &sql(channel.get()),
                            &tk,
                            &tv,
                            &sql(allow.bits()),
                            &sql(deny.bits()),
                        ],
                    )
                    .await?;
                }
                None => {
                    q.exec(
                        "DELETE FROM overwrites WHERE channel = $1 AND target_kind = $2 AND target = $3",
                        &[&sql(channel.get()), &tk, &tv],
                    )
                    .await?;
                }
            }
        }
        Effect::Topic(channel, topic) => {
            q.exec(
                "UPDATE channels SET topic = $1, topic_by = $2, topic_at = $3 WHERE id = $4",
                &[
                    &topic.map(|t| t.text.as_str()),
                    &topic.map(|t| sql(t.by.get())),
                    &topic.map(|t| bound(t.at)),
                    &sql(channel.get()),
                ],
            )
            .await?;
        }
        Effect::MemberMode {
            channel,
            user,
            op,
            voice,
        } => {
            q.exec(
                "UPDATE members SET op = COALESCE($1, op), voice = COALESCE($2, voice)
                 WHERE channel = $3 AND user_id = $4 AND to_seq IS NULL",
                &[&op, &voice, &sql(channel.get()), &sql(user.get())],
            )
            .await?;
        }
        Effect::Message(m) => {
            let c = sql(m.channel.get());
            let id = sql(m.id.get());
            let rows = &mut deferred.messages;
            rows.words
                .push(project::searchable(m.kind).then(|| search::tsvector(&m.body)));
            rows.mentions.push(encode(&m.mentions, "mentions", ev.seq)?);
            rows.attachments
                .push(encode(&m.attachments, "attachments", ev.seq)?);
            rows.id.push(id);
            rows.seq.push(bound(m.seq));
            rows.ts.push(bound(m.ts));
            rows.channel.push(c);
            rows.author.push(sql(m.author.get()));
            rows.kind.push(m.kind.name());
            rows.mention_everyone.push(m.mention_everyone);
            let m = *m;
            rows.body.push(m.body);
            rows.meta.push(m.meta);
            rows.reply_to.push(m.reply_to.map(|r| sql(r.get())));
            rows.thread.push(m.thread.map(|t| sql(t.get())));
            rows.embeds.push(m.embeds);
            rows.nonce.push(m.nonce);
            deferred.last_message.insert(c, id);
        }
        Effect::Edit {
            id,
            body,
            meta,
            mentions,
            edited_at,
            embeds,
        } => {
            // Only a message the index holds is indexed again: `words` is NULL for the kinds search skips.
            q.exec(
                "UPDATE messages SET body = $1, meta = COALESCE($2, meta), mentions = $3, edited_at = $4,
                     embeds = COALESCE($6, embeds),
                     words = CASE WHEN words IS NULL THEN NULL ELSE $7::text::tsvector END
                 WHERE id = $5",
                &[
                    &body,
                    &meta,
                    &encode(&mentions, "mentions", ev.seq)?,
                    &bound(edited_at),
                    &sql(id.get()),
                    &embeds,
                    &search::tsvector(body),
                ],
            )
            .await?;
        }
        Effect::Delete(id) => {
            let m = sql(id.get());
            q.exec("DELETE FROM reactions WHERE message = $1", &[&m])
                .await?;
            q.exec("DELETE FROM messages WHERE id = $1", &[&m]).await?;
        }
        Effect::React {
            id,
            user,
            emoji,
            on,
        } => {
            if on {
                q.exec(
                    "INSERT INTO reactions (message, emoji, user_id, n)
                     SELECT $1::bigint, $2::text, $3::bigint, $4::bigint
                     WHERE EXISTS (SELECT 1 FROM messages WHERE id = $1)
                     ON CONFLICT (message, emoji, user_id) DO NOTHING",
                    &[&sql(id.get()), &emoji, &sql(user.get()), &seq],
                )
                .await?;
            } else {
                q.exec(
                    "DELETE FROM reactions WHERE message = $1 AND emoji = $2 AND user_id = $3",
                    &[&sql(id.get()), &emoji, &sql(user.get())],
                )
                .await?;
            }
        }
        Effect::Pin(id, on) => {
            q.exec(
                "UPDATE messages SET pinned = $1 WHERE id = $2",
                &[&on, &sql(id.get())],
            )
            .await?;
        }
        Effect::Thread { starter, thread } => {
            q.exec(
                "UPDATE messages SET thread = $1 WHERE id = $2",
                &[&sql(thread.get()), &sql(starter.get())],
            )
            .await?;
        }
        Effect::Invite(inv) => {
            let (space, channel) = match inv.target {
                chat_core::InviteTarget::Space(s, c) => (Some(s.get()), c.map(|c| c.get())),
                chat_core::InviteTarget::Channel(c) => (None, Some(c.get())),
            };
            q.exec(
                "INSERT INTO invites (code, id, space, channel, creator, max_uses, uses, expires_at,
                     created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (code) DO UPDATE SET id = EXCLUDED.id, space = EXCLUDED.space,
                     channel = EXCLUDED.channel, creator = EXCLUDED.creator, max_uses = EXCLUDED.max_uses,
                     uses = EXCLUDED.uses, expires_at = EXCLUDED.expires_at,
                     created_at = EXCLUDED.created_at",
                &[
                    &inv.code,
                    &sql(inv.id.get()),
                    &space.map(sql),
                    &channel.map(sql),
                    &sql(inv.creator.get()),
                    &i64::from(inv.max_uses),
                    &i64::from(inv.uses),
                    &inv.expires_at.map(bound),
                    &bound(inv.created_at),
                ],
            )
            .await?;
        }
        Effect::InviteUsed(code) => {
            q.exec(
                "UPDATE invites SET uses = uses + 1 WHERE code = $1",
                &[&code],
            )
            .await?;
        }
        Effect::InviteGone(code) => {
            q.exec("DELETE FROM invites WHERE code = $1", &[&code])
                .await?;
        }
    }
    Ok(())
}

/// The channel whose members receive `channel`'s events: a thread's parent, else the channel itself.
async fn membership_channel(
    q: &mut TxQ<'_, '_>,
    channel: ChannelId,
    deferred: &mut Deferred,
) -> Result<i64, StoreError> {
    let c = sql(channel.get());
    if let Some(m) = deferred.membership.get(&c) {
        return Ok(*m);
    }
    let parent: Option<Option<i64>> = q
        .opt(
            "SELECT parent FROM channels WHERE id = $1 AND kind = 'thread'",
            &[&c],
        )
        .await?
        .map(|r| col(&r, 0))
        .transpose()?;
    let m = parent.flatten().unwrap_or(c);
    deferred.membership.insert(c, m);
    Ok(m)
}

/// Applies one event's effects and gathers its log row.
pub(super) async fn append_event(
    q: &mut TxQ<'_, '_>,
    ev: &Event,
    at: u64,
    deferred: &mut Deferred,
) -> Result<(), StoreError> {
    for effect in project::effects(ev) {
        apply(q, ev, effect, deferred).await?;
    }
    // Resolved after the event's own effects: a new thread's first event names the thread.
    let cols = project::audience_cols(&ev.audience);
    let channel = match cols.kind {
        AUD_CHANNEL | AUD_CHANNEL_AND => match cols.channel {
            Some(c) => Some(membership_channel(q, c, deferred).await?),
            None => None,
        },
        _ => None,
    };
    let rows = &mut deferred.rows;
    rows.seq.push(bound(ev.seq));
    rows.ts.push(bound(ev.ts));
    rows.kind.push(project::kind_name(&ev.kind));
    rows.aud.push(i16::from(cols.kind));
    rows.aud_at.push(bound(at));
    rows.aud_channel.push(channel);
    rows.aud_space.push(cols.space.map(|s| sql(s.get())));
    rows.aud_user.push(cols.user.map(|u| sql(u.get())));
    rows.payload.push(encode(ev, "event", ev.seq)?);
    Ok(())
}
