//! Channels and their messages: history, sending (JSON or multipart), edits, deletions, reactions, pins,
//! typing, read acks, joining network channels, invites, permission overwrites and threads.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chat_core::{
    ChannelKind, ChannelRef, Command, Core, Created, InviteTarget, MessageId, Outgoing,
    OverwriteTarget, Permissions, RoleId, Target, UserId,
};
use chat_engine::{HistoryQuery, StoredMessage};
use serde_json::{Value, json};

use super::{
    Auth, Form, Inner, P, Q, St, created_channel, no_content, ok, readable, readable_message,
    visible,
};
use crate::error::{Answer, RestError, code};
use crate::model;

// --- channels -----------------------------------------------------------------------------------------------

pub(super) async fn get_channel(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let c = p.channel()?;
    let v = inner
        .query(move |core| visible(core, me.user, c).map(|ch| model::channel(core, ch, me.user)))
        .await??;
    ok(v)
}

async fn channel_json(inner: &Inner, me: UserId, c: chat_core::ChannelId) -> Answer {
    let v = inner
        .query(move |core| {
            core.channel(c)
                .map(|ch| model::channel(core, ch, me))
                .ok_or_else(RestError::unknown_channel)
        })
        .await??;
    ok(v)
}

pub(super) async fn patch_channel(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let c = p.channel()?;
    let form = inner
        .form(
            body,
            &[
                "name",
                "topic",
                "position",
                "parent_id",
                "rate_limit_per_user",
                "nsfw",
                "permission_overwrites",
                "type",
                "bitrate",
                "user_limit",
                "default_auto_archive_duration",
                "flags",
                "archived",
                "locked",
                "auto_archive_duration",
                "invitable",
                "icon",
            ],
        )
        .await?;
    let name = form.str("name")?;
    let topic = form.change_str("topic")?;
    let position = form
        .i64("position")?
        .map(|p| {
            i32::try_from(p)
                .map_err(|_| RestError::field("position", "NUMBER_TYPE_MAX", "out of range"))
        })
        .transpose()?;
    let parent = if form.has("parent_id") {
        Some(
            form.id("parent_id")?
                .and_then(chat_core::ChannelId::from_raw),
        )
    } else {
        None
    };
    let slowmode = form
        .u64("rate_limit_per_user")?
        .map(|s| {
            u32::try_from(s).map_err(|_| {
                RestError::field("rate_limit_per_user", "NUMBER_TYPE_MAX", "out of range")
            })
        })
        .transpose()?;
    let network = inner
        .query(move |core| {
            visible(core, me.user, c)
                .map(|ch| ch.space == Some(core.network()) || ch.space.is_none())
        })
        .await??;
    // A network channel's topic is IRC's TOPIC (so `+t` applies as on IRC); everything else is a channel
    // update, permission-checked by the core.
    let mut topic_rest = topic;
    if network && let Some(t) = topic_rest.take() {
        inner
            .run(
                &me,
                Command::Topic {
                    channel: ChannelRef::Id(c),
                    topic: t.unwrap_or_default(),
                },
                None,
            )
            .await?;
    }
    if name.is_some()
        || topic_rest.is_some()
        || position.is_some()
        || parent.is_some()
        || slowmode.is_some()
    {
        inner
            .run(
                &me,
                Command::UpdateChannel {
                    channel: c,
                    name,
                    topic: topic_rest,
                    position,
                    parent,
                    slowmode_secs: slowmode,
                },
                None,
            )
            .await?;
    }
    channel_json(&inner, me.user, c).await
}

pub(super) async fn delete_channel(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let c = p.channel()?;
    let v = inner
        .query(move |core| visible(core, me.user, c).map(|ch| model::channel(core, ch, me.user)))
        .await??;
    inner
        .run(&me, Command::DeleteChannel { channel: c }, None)
        .await?;
    ok(v)
}

// --- messages -----------------------------------------------------------------------------------------------

pub(super) async fn messages(State(inner): St, Auth(me): Auth, p: P, q: Q) -> Answer {
    let c = p.channel()?;
    let limit = q.limit(50, 100)?;
    let before = q.id("before")?.and_then(MessageId::from_raw);
    let after = q.id("after")?.and_then(MessageId::from_raw);
    let around = q.id("around")?.and_then(MessageId::from_raw);
    inner
        .query(move |core| readable(core, me.user, c).map(|_| ()))
        .await??;
    // Discord takes one of the three; `around` wins, then `before`, as Discord's own precedence.
    let query = HistoryQuery {
        channel: c,
        before: if around.is_some() { None } else { before },
        after: if around.is_some() || before.is_some() {
            None
        } else {
            after
        },
        around,
        limit,
    };
    let mut page = inner.engine.history(query).await?;
    // The store pages oldest first; Discord answers newest first.
    page.reverse();
    ok(Value::Array(message_objects(&inner, &page, me.user)))
}

/// Stored messages as message objects, seen by `viewer`.
fn message_objects(inner: &Inner, page: &[StoredMessage], viewer: chat_core::UserId) -> Vec<Value> {
    let dir = inner.engine.directory();
    page.iter()
        .map(|m| model::message(&dir, &model::MessageView::stored(m), Some(viewer)))
        .collect()
}

pub(super) async fn get_message(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m) = (p.channel()?, p.message()?);
    inner
        .query(move |core| readable(core, me.user, c).map(|_| ()))
        .await??;
    inner.message_json(c, m, me.user).await
}

/// The fields of a message create that Discord documents (those we do not use are accepted and ignored).
const CREATE_FIELDS: &[&str] = &[
    "content",
    "tts",
    "nonce",
    "enforce_nonce",
    "message_reference",
    "allowed_mentions",
    "embeds",
    "embed",
    "components",
    "sticker_ids",
    "flags",
    "attachments",
    "poll",
    "applied_tags",
    "thread_name",
    "username",
    "avatar_url",
];

fn embeds(form: &Form) -> Result<Option<String>, RestError> {
    // The single `embed` object of older libraries counts as a list of one.
    if form.get("embeds").is_none()
        && let Some(Value::Object(one)) = form.get("embed")
    {
        return Ok(Some(
            Value::Array(vec![Value::Object(one.clone())]).to_string(),
        ));
    }
    match form.get("embeds") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.is_empty() => Ok(None),
        Some(Value::Array(a)) => {
            if a.len() > 10 {
                return Err(RestError::field(
                    "embeds",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 10 or fewer in length.",
                ));
            }
            if a.iter().any(|e| !e.is_object()) {
                return Err(RestError::field(
                    "embeds",
                    "DICT_TYPE_CONVERT",
                    "Only dictionaries may be used in a DictType",
                ));
            }
            Ok(Some(Value::Array(a.clone()).to_string()))
        }
        Some(_) => Err(RestError::field(
            "embeds",
            "BASE_TYPE_ARRAY",
            "Must be an array.",
        )),
    }
}

fn reply_to(form: &Form) -> Result<Option<MessageId>, RestError> {
    match form.get("message_reference") {
        None => Ok(None),
        Some(Value::Object(r)) => {
            let sub = Form::from_value(
                Value::Object(r.clone()),
                &[
                    "message_id",
                    "channel_id",
                    "guild_id",
                    "fail_if_not_exists",
                    "type",
                ],
            )
            .map_err(|_| {
                RestError::field(
                    "message_reference",
                    "BASE_TYPE_INVALID",
                    "Invalid message reference.",
                )
            })?;
            let id = sub.id("message_id").map_err(|_| {
                RestError::field(
                    "message_reference",
                    "BASE_TYPE_INVALID",
                    "Invalid message_id.",
                )
            })?;
            Ok(id.and_then(MessageId::from_raw))
        }
        Some(_) => Err(RestError::field(
            "message_reference",
            "DICT_TYPE_CONVERT",
            "Must be an object.",
        )),
    }
}

pub(super) async fn create_message(State(inner): St, Auth(me): Auth, p: P, req: Request) -> Answer {
    let c = p.channel()?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    inner
        .query(move |core| visible(core, me.user, c).map(|_| ()))
        .await??;
    let target = Target::Channel(ChannelRef::Id(c));
    let (form, upload) = if multipart {
        let (form, upload) = super::files::read_upload(&inner, c, req, CREATE_FIELDS).await?;
        (form, Some(upload))
    } else {
        (inner.form(req.into_body(), CREATE_FIELDS).await?, None)
    };
    // A refused message's files are removed by the engine (or by the upload, dropped before it was sent).
    send(&inner, me, target, &form, upload).await
}

async fn send(
    inner: &Inner,
    me: chat_engine::Session,
    target: Target,
    form: &Form,
    upload: Option<chat_engine::Upload>,
) -> Answer {
    let content = form.str("content")?.unwrap_or_default();
    let tts = form.bool("tts")?.unwrap_or(false);
    let nonce = form.nonce()?;
    let enforce = form.bool("enforce_nonce")?.unwrap_or(false);
    let embeds = embeds(form)?;
    let reply_to = reply_to(form)?;
    let outgoing = Outgoing {
        kind: None,
        body: content,
        meta: None,
        reply_to,
        attachments: upload
            .as_ref()
            .map(|u| u.attachments().to_vec())
            .unwrap_or_default(),
        embeds,
        nonce: nonce.clone(),
        tts,
    };
    let command = Command::Send {
        to: target,
        message: outgoing,
    };
    let nonce = nonce.filter(|_| enforce);
    let reply = match upload {
        Some(upload) => inner
            .engine
            .command_with_upload(&me, command, nonce, upload)
            .await
            .map_err(RestError::from)?,
        None => inner.run(&me, command, nonce).await?,
    };
    let Some(Created::Message(id)) = reply.created else {
        return Err(RestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::GENERAL,
            "500: The message was not created",
        ));
    };
    match inner.stored(id).await? {
        Some(m) => ok(inner.render(&m, me.user)),
        None => Err(RestError::unknown_message()),
    }
}

pub(super) async fn edit_message(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let (c, m) = (p.channel()?, p.message()?);
    let form = inner
        .form(
            body,
            &[
                "content",
                "embeds",
                "embed",
                "flags",
                "allowed_mentions",
                "components",
                "attachments",
            ],
        )
        .await?;
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    let content = form.str("content")?;
    // `embeds: []` (or `embed: null`) clears them; a missing field keeps them.
    let embeds = match embeds(&form)? {
        Some(e) => Some(e),
        None if form.get("embeds").is_some() || form.get("embed").is_some() => {
            Some("[]".to_owned())
        }
        None => None,
    };
    if content.is_some() || embeds.is_some() {
        let body = match content {
            Some(content) => content,
            // Only the embeds change: the text stays as it is.
            None => inner
                .stored(m)
                .await?
                .map(|s| s.body)
                .ok_or_else(RestError::unknown_message)?,
        };
        inner
            .run(
                &me,
                Command::Edit {
                    message: m,
                    body,
                    meta: None,
                    embeds,
                },
                None,
            )
            .await?;
    }
    inner.message_json(c, m, me.user).await
}

pub(super) async fn delete_message(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m) = (p.channel()?, p.message()?);
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    // The engine removes the message's files once its deletion has committed.
    inner.run(&me, Command::Delete { message: m }, None).await?;
    no_content()
}

pub(super) async fn bulk_delete(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let c = p.channel()?;
    let form = inner.form(body, &["messages"]).await?;
    let ids = form.ids("messages")?.ok_or_else(|| {
        RestError::field("messages", "BASE_TYPE_REQUIRED", "This field is required")
    })?;
    if !(2..=100).contains(&ids.len()) {
        return Err(RestError::field(
            "messages",
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 2 and 100 in length.",
        ));
    }
    let messages: Vec<MessageId> = ids.into_iter().filter_map(MessageId::from_raw).collect();
    inner
        .query(move |core| readable(core, me.user, c).map(|_| ()))
        .await??;
    inner
        .run(
            &me,
            Command::BulkDelete {
                channel: c,
                messages,
            },
            None,
        )
        .await?;
    no_content()
}

pub(super) async fn ack(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m) = (p.channel()?, p.message()?);
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    inner
        .run(
            &me,
            Command::Read {
                channel: ChannelRef::Id(c),
                message: m,
            },
            None,
        )
        .await?;
    ok(json!({ "token": Value::Null }))
}

// --- reactions ----------------------------------------------------------------------------------------------

fn emoji(p: &P) -> Result<String, RestError> {
    let e = p.str("emoji").trim();
    // A custom emoji may come as `<:name:id>` or `<a:name:id>`; it is kept as `name:id`.
    let e = e.trim_start_matches('<').trim_end_matches('>');
    let e = match e.strip_prefix("a:").or_else(|| e.strip_prefix(':')) {
        // Only markup when what follows is still `name:id` (an emoji may be named `a`).
        Some(rest) if rest.contains(':') => rest,
        _ => e,
    };
    if e.is_empty() || e.len() > 128 || e.chars().any(char::is_control) {
        return Err(RestError::unknown(code::UNKNOWN_EMOJI, "Emoji"));
    }
    Ok(e.to_owned())
}

pub(super) async fn react(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m, emoji) = (p.channel()?, p.message()?, emoji(&p)?);
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    inner
        .run(&me, Command::React { message: m, emoji }, None)
        .await?;
    no_content()
}

pub(super) async fn unreact(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m, emoji) = (p.channel()?, p.message()?, emoji(&p)?);
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    inner
        .run(
            &me,
            Command::Unreact {
                message: m,
                emoji,
                user: None,
            },
            None,
        )
        .await?;
    no_content()
}

pub(super) async fn unreact_user(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m, emoji, user) = (p.channel()?, p.message()?, emoji(&p)?, p.user()?);
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    inner
        .run(
            &me,
            Command::Unreact {
                message: m,
                emoji,
                user: Some(user),
            },
            None,
        )
        .await?;
    no_content()
}

pub(super) async fn reactions(State(inner): St, Auth(me): Auth, p: P, q: Q) -> Answer {
    let (c, m, emoji) = (p.channel()?, p.message()?, emoji(&p)?);
    let limit = q.limit(25, 100)?;
    let after = q.id("after")?.unwrap_or(0);
    let list = inner
        .query(move |core| -> Result<Vec<Value>, RestError> {
            readable_message(core, me.user, c, m)?;
            let users = core
                .message(m)
                .and_then(|r| r.reactions.get(&emoji))
                .cloned()
                .unwrap_or_default();
            let mut users: Vec<UserId> = users.into_iter().filter(|u| u.get() > after).collect();
            users.sort();
            Ok(users
                .into_iter()
                .take(limit)
                .filter_map(|u| core.user(u).map(model::user))
                .collect())
        })
        .await??;
    ok(Value::Array(list))
}

// --- typing, pins, membership -------------------------------------------------------------------------------

pub(super) async fn typing(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let c = p.channel()?;
    inner
        .query(move |core| visible(core, me.user, c).map(|_| ()))
        .await??;
    inner
        .run(
            &me,
            Command::Typing {
                channel: ChannelRef::Id(c),
            },
            None,
        )
        .await?;
    no_content()
}

/// The channel's pinned messages, newest pin first, as the store has them.
async fn pinned(
    inner: &Inner,
    me: &chat_engine::Session,
    p: &P,
) -> Result<Vec<StoredMessage>, RestError> {
    let c = p.channel()?;
    let user = me.user;
    let ids = inner
        .query(move |core| readable(core, user, c).map(|ch| ch.pins.clone()))
        .await??;
    Ok(inner
        .engine
        .messages(ids.into_iter().rev().collect())
        .await?)
}

/// `GET /channels/{id}/pins`: the older route, a bare array of messages.
pub(super) async fn pins(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let stored = pinned(&inner, &me, &p).await?;
    ok(Value::Array(message_objects(&inner, &stored, me.user)))
}

/// `GET /channels/{id}/messages/pins`: the newer route (twilight 0.17 uses it), `{items: [{pinned_at,
/// message}], has_more}`. The core keeps no pin time, so `pinned_at` is the message's own timestamp.
pub(super) async fn pins_paged(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let stored = pinned(&inner, &me, &p).await?;
    let dir = inner.engine.directory();
    let items: Vec<Value> = stored
        .iter()
        .map(|m| {
            serde_json::json!({
                "pinned_at": model::timestamp(m.ts),
                "message": model::message(&dir, &model::MessageView::stored(m), Some(me.user)),
            })
        })
        .collect();
    drop(dir);
    ok(serde_json::json!({ "items": items, "has_more": false }))
}

pub(super) async fn pin(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m) = (p.channel()?, p.message()?);
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    inner.run(&me, Command::Pin { message: m }, None).await?;
    no_content()
}

pub(super) async fn unpin(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (c, m) = (p.channel()?, p.message()?);
    inner
        .query(move |core| readable_message(core, me.user, c, m))
        .await??;
    inner.run(&me, Command::Unpin { message: m }, None).await?;
    no_content()
}

/// `PUT /channels/{id}/members/@me` (our extension): JOIN a network channel.
pub(super) async fn join(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let c = p.channel()?;
    let name = inner
        .query(move |core| -> Result<String, RestError> {
            let ch = visible(core, me.user, c)?;
            if ch.space != Some(core.network()) || ch.kind != ChannelKind::Text {
                return Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_CHANNEL_TYPE,
                    "Only network channels are joined",
                ));
            }
            Ok(ch.name.clone())
        })
        .await??;
    inner
        .run(
            &me,
            Command::Join {
                channel: name,
                key: None,
            },
            None,
        )
        .await?;
    no_content()
}

/// `DELETE /channels/{id}/members/@me` (our extension): PART a network channel (or leave a group DM).
pub(super) async fn part(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let c = p.channel()?;
    inner
        .query(move |core| visible(core, me.user, c).map(|_| ()))
        .await??;
    inner
        .run(
            &me,
            Command::Part {
                channel: ChannelRef::Id(c),
                reason: None,
            },
            None,
        )
        .await?;
    no_content()
}

// --- invites ------------------------------------------------------------------------------------------------

/// An invite object.
pub(super) fn invite_json(core: &Core, inv: &chat_core::Invite) -> Value {
    let (guild, channel) = match inv.target {
        InviteTarget::Space(s, c) => (Some(s), c),
        InviteTarget::Channel(c) => (core.channel(c).and_then(|ch| ch.space), Some(c)),
    };
    let guild = guild.and_then(|s| core.space(s)).map(|s| {
        json!({
            "id": s.id.to_string(),
            "name": s.name,
            "icon": Value::Null,
            "splash": Value::Null,
            "banner": Value::Null,
            "description": s.description,
            "features": [],
            "verification_level": 0,
            "nsfw_level": 0,
        })
    });
    let channel = channel.and_then(|c| core.channel(c)).map(|ch| {
        json!({
            "id": ch.id.to_string(),
            "name": model::channel_name(&ch.name),
            "type": model::channel_type(ch.kind),
        })
    });
    let max_age = inv
        .expires_at
        .map_or(0, |e| e.saturating_sub(inv.created_at) / 1000);
    json!({
        "type": 0,
        "code": inv.code,
        "guild": guild,
        "channel": channel,
        "inviter": core.user(inv.creator).map(model::user),
        "uses": inv.uses,
        "max_uses": inv.max_uses,
        "max_age": max_age,
        "temporary": false,
        "created_at": model::timestamp(inv.created_at),
        "expires_at": inv.expires_at.map(model::timestamp),
    })
}

async fn invite_by_code(inner: &Inner, code: String) -> Answer {
    let v = inner
        .query(move |core| core.invite(&code).map(|i| invite_json(core, i)))
        .await?
        .ok_or_else(|| RestError::unknown(code::UNKNOWN_INVITE, "Invite"))?;
    ok(v)
}

pub(super) async fn invites(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let c = p.channel()?;
    let list = inner
        .query(move |core| {
            visible(core, me.user, c)?;
            // As on Discord, listing a channel's invites takes Manage Channels.
            if !core
                .channel_permissions(me.user, c)
                .contains(Permissions::MANAGE_CHANNELS)
            {
                return Err(RestError::missing_permissions());
            }
            Ok(core
                .invites()
                .filter(|i| match i.target {
                    InviteTarget::Channel(ch) => ch == c,
                    InviteTarget::Space(_, ch) => ch == Some(c),
                })
                .map(|i| invite_json(core, i))
                .collect::<Vec<_>>())
        })
        .await??;
    ok(json!(list))
}

pub(super) async fn create_invite(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let c = p.channel()?;
    let form = inner
        .form(
            body,
            &[
                "max_age",
                "max_uses",
                "temporary",
                "unique",
                "target_type",
                "target_user_id",
                "target_application_id",
            ],
        )
        .await?;
    let max_age = form.u64("max_age")?.unwrap_or(86_400);
    let max_uses = form.u64("max_uses")?.unwrap_or(0);
    let max_age_secs = u32::try_from(max_age)
        .map_err(|_| RestError::field("max_age", "NUMBER_TYPE_MAX", "out of range"))?;
    let max_uses = u32::try_from(max_uses)
        .map_err(|_| RestError::field("max_uses", "NUMBER_TYPE_MAX", "out of range"))?;
    inner
        .query(move |core| visible(core, me.user, c).map(|_| ()))
        .await??;
    let reply = inner
        .run(
            &me,
            Command::CreateInvite {
                channel: c,
                max_uses,
                max_age_secs,
            },
            None,
        )
        .await?;
    match reply.created {
        Some(Created::Invite(code)) => invite_by_code(&inner, code).await,
        _ => Err(RestError::unknown(code::UNKNOWN_INVITE, "Invite")),
    }
}

pub(super) async fn get_invite(State(inner): St, Auth(_me): Auth, p: P) -> Answer {
    invite_by_code(&inner, p.str("code").to_owned()).await
}

pub(super) async fn revoke_invite(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let code = p.str("code").to_owned();
    let before = invite_by_code(&inner, code.clone()).await?;
    inner.run(&me, Command::RevokeInvite { code }, None).await?;
    Ok(before)
}

/// `POST /invites/{code}` (a user route on Discord, kept here for our users): uses the invite.
pub(super) async fn use_invite(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let code = p.str("code").to_owned();
    let before = invite_by_code(&inner, code.clone()).await?;
    inner.run(&me, Command::UseInvite { code }, None).await?;
    Ok(before)
}

// --- permission overwrites ----------------------------------------------------------------------------------

fn overwrite_target(p: &P, kind: Option<u64>) -> Result<OverwriteTarget, RestError> {
    let raw = p
        .str("target")
        .parse::<u64>()
        .ok()
        .filter(|v| *v != 0)
        .ok_or_else(|| RestError::field("id", "NUMBER_TYPE_COERCE", "Must be a snowflake."))?;
    match kind {
        Some(1) => UserId::from_raw(raw).map(OverwriteTarget::Member),
        _ => RoleId::from_raw(raw).map(OverwriteTarget::Role),
    }
    .ok_or_else(|| RestError::field("id", "NUMBER_TYPE_COERCE", "Must be a snowflake."))
}

pub(super) async fn set_overwrite(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let c = p.channel()?;
    let form = inner.form(body, &["type", "allow", "deny"]).await?;
    let kind = form.u64("type")?;
    if !matches!(kind, Some(0 | 1)) {
        return Err(RestError::field(
            "type",
            "BASE_TYPE_CHOICES",
            "Value must be one of {0, 1}.",
        ));
    }
    let target = overwrite_target(&p, kind)?;
    let allow = Permissions::from_bits_truncate(form.u64("allow")?.unwrap_or(0));
    let deny = Permissions::from_bits_truncate(form.u64("deny")?.unwrap_or(0));
    inner
        .query(move |core| visible(core, me.user, c).map(|_| ()))
        .await??;
    inner
        .run(
            &me,
            Command::SetOverwrite {
                channel: c,
                target,
                allow,
                deny,
            },
            None,
        )
        .await?;
    no_content()
}

pub(super) async fn delete_overwrite(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let c = p.channel()?;
    // The path does not say whether the id is a role or a member: the channel's overwrites do.
    let raw = p.str("target").parse::<u64>().unwrap_or(0);
    let target = inner
        .query(move |core| -> Result<OverwriteTarget, RestError> {
            let ch = visible(core, me.user, c)?;
            ch.overwrites()
                .map(|o| o.target)
                .find(|t| match t {
                    OverwriteTarget::Role(r) => r.get() == raw,
                    OverwriteTarget::Member(u) => u.get() == raw,
                })
                .ok_or_else(|| RestError::unknown(10009, "Overwrite"))
        })
        .await??;
    inner
        .run(&me, Command::DeleteOverwrite { channel: c, target }, None)
        .await?;
    no_content()
}

// --- threads ------------------------------------------------------------------------------------------------

const THREAD_FIELDS: &[&str] = &[
    "name",
    "auto_archive_duration",
    "type",
    "invitable",
    "rate_limit_per_user",
    "message",
    "applied_tags",
];

async fn start_thread(
    inner: &Inner,
    me: chat_engine::Session,
    c: chat_core::ChannelId,
    message: Option<MessageId>,
    form: &Form,
) -> Answer {
    let name = form.req_str("name")?;
    inner
        .query(move |core| match message {
            Some(m) => readable_message(core, me.user, c, m),
            None => visible(core, me.user, c).map(|_| ()),
        })
        .await??;
    let reply = inner
        .run(
            &me,
            Command::CreateThread {
                channel: ChannelRef::Id(c),
                name,
                message,
            },
            None,
        )
        .await?;
    let id = created_channel(&reply).ok_or_else(RestError::unknown_channel)?;
    let v = inner
        .query(move |core| core.channel(id).map(|ch| model::channel(core, ch, me.user)))
        .await?
        .ok_or_else(RestError::unknown_channel)?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

pub(super) async fn thread(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let c = p.channel()?;
    let form = inner.form(body, THREAD_FIELDS).await?;
    start_thread(&inner, me, c, None, &form).await
}

pub(super) async fn thread_from_message(
    State(inner): St,
    Auth(me): Auth,
    p: P,
    body: Body,
) -> Answer {
    let (c, m) = (p.channel()?, p.message()?);
    let form = inner.form(body, THREAD_FIELDS).await?;
    start_thread(&inner, me, c, Some(m), &form).await
}
