//! Guilds (spaces; the network is one): the guild itself, its channels, members, roles, bans, invites and
//! message search.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chat_core::{
    ChannelId, ChannelKind, Command, Core, Created, InviteTarget, MessageId, OverwriteTarget,
    Permissions, RoleId, Space, SpaceId, UserId,
};
use chat_engine::SearchQuery;
use serde_json::{Value, json};

use super::{Auth, Form, Inner, P, Q, Sight, St, no_content, ok, sight};
use crate::error::{Answer, RestError, code};
use crate::model;

/// The space, if `user` is in it.
fn guild_of(core: &Core, user: UserId, g: SpaceId) -> Result<&Space, RestError> {
    let space = core.space(g).ok_or_else(RestError::unknown_guild)?;
    if space.member(user).is_none() {
        return Err(RestError::missing_access());
    }
    Ok(space)
}

fn created(v: Value) -> Answer {
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// The reason Discord clients give in `X-Audit-Log-Reason` (percent-encoded by discord.py).
fn audit_reason(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("x-audit-log-reason")?.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits make one byte (at most 0xFF): the cast cannot truncate.
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&out);
    let text: String = text.chars().filter(|c| !c.is_control()).take(512).collect();
    (!text.is_empty()).then_some(text)
}

async fn guild_json(inner: &Inner, me: UserId, g: SpaceId) -> Answer {
    let v = inner
        .query(move |core| guild_of(core, me, g).map(model::guild))
        .await??;
    ok(v)
}

// --- the guild ----------------------------------------------------------------------------------------------

pub(super) async fn get_guild(State(inner): St, Auth(me): Auth, p: P, q: Q) -> Answer {
    let g = p.guild()?;
    let counts = q.bool("with_counts");
    let v = inner
        .query(move |core| {
            guild_of(core, me.user, g).map(|s| {
                let mut v = model::guild(s);
                if counts && let Some(map) = v.as_object_mut() {
                    let online = s
                        .members()
                        .filter(|m| core.presence(m.user) != chat_core::Status::Offline)
                        .count();
                    map.insert("approximate_member_count".into(), json!(s.member_count()));
                    map.insert("approximate_presence_count".into(), json!(online));
                }
                v
            })
        })
        .await??;
    ok(v)
}

const GUILD_FIELDS: &[&str] = &[
    "name",
    "description",
    "icon",
    "region",
    "verification_level",
    "default_message_notifications",
    "explicit_content_filter",
    "roles",
    "channels",
    "afk_channel_id",
    "afk_timeout",
    "system_channel_id",
    "system_channel_flags",
    "owner_id",
    "splash",
    "discovery_splash",
    "banner",
    "rules_channel_id",
    "public_updates_channel_id",
    "preferred_locale",
    "features",
    "premium_progress_bar_enabled",
    "safety_alerts_channel_id",
    "public",
];

pub(super) async fn create(State(inner): St, Auth(me): Auth, body: Body) -> Answer {
    let form = inner.form(body, GUILD_FIELDS).await?;
    let name = form.req_str("name")?;
    let description = form.str("description")?;
    let public = form.bool("public")?.unwrap_or(false);
    let reply = inner
        .run(
            &me,
            Command::CreateSpace {
                name,
                description,
                public,
            },
            None,
        )
        .await?;
    let Some(Created::Space(g)) = reply.created else {
        return Err(RestError::unknown_guild());
    };
    let v = inner
        .query(move |core| {
            guild_of(core, me.user, g).map(|s| model::guild_create(core, s, me.user, usize::MAX))
        })
        .await??;
    created(v)
}

pub(super) async fn patch_guild(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let g = p.guild()?;
    let form = inner.form(body, GUILD_FIELDS).await?;
    let name = form.str("name")?;
    let description = form.change_str("description")?;
    let icon_url = match form.change_str("icon")? {
        Some(Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(Some(url))
        }
        Some(None) => Some(None),
        _ => None,
    };
    let public = form.bool("public")?;
    inner
        .query(move |core| guild_of(core, me.user, g).map(|_| ()))
        .await??;
    if name.is_some() || description.is_some() || icon_url.is_some() || public.is_some() {
        inner
            .run(
                &me,
                Command::UpdateSpace {
                    space: g,
                    name,
                    description,
                    icon_url,
                    public,
                },
                None,
            )
            .await?;
    }
    guild_json(&inner, me.user, g).await
}

pub(super) async fn delete_guild(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let g = p.guild()?;
    inner
        .query(move |core| guild_of(core, me.user, g).map(|_| ()))
        .await??;
    inner
        .run(&me, Command::DeleteSpace { space: g }, None)
        .await?;
    no_content()
}

pub(super) async fn leave(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let g = p.guild()?;
    inner
        .query(move |core| guild_of(core, me.user, g).map(|_| ()))
        .await??;
    inner
        .run(&me, Command::LeaveSpace { space: g }, None)
        .await?;
    no_content()
}

// --- channels -----------------------------------------------------------------------------------------------

pub(super) async fn channels(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let g = p.guild()?;
    let list = inner
        .query(move |core| {
            guild_of(core, me.user, g).map(|s| {
                s.channels()
                    .filter_map(|c| core.channel(c))
                    .filter(|ch| ch.kind != ChannelKind::Thread)
                    .filter(|ch| model::sees(core, s, ch, me.user))
                    .map(|ch| model::channel(core, ch, me.user))
                    .collect::<Vec<_>>()
            })
        })
        .await??;
    ok(Value::Array(list))
}

/// Parses `permission_overwrites: [{id, type, allow, deny}]`.
fn overwrites(form: &Form) -> Result<Vec<(OverwriteTarget, Permissions, Permissions)>, RestError> {
    let bad = || {
        RestError::field(
            "permission_overwrites",
            "BASE_TYPE_INVALID",
            "Must be a list of {id, type, allow, deny}.",
        )
    };
    let Some(list) = form.get("permission_overwrites") else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = list else {
        return Err(bad());
    };
    items
        .iter()
        .map(|item| {
            let o = Form::from_value(item.clone(), &["id", "type", "allow", "deny"])
                .map_err(|_| bad())?;
            let id = o.id("id").map_err(|_| bad())?.ok_or_else(bad)?;
            let target = match o.u64("type").map_err(|_| bad())? {
                Some(1) => UserId::from_raw(id).map(OverwriteTarget::Member),
                Some(0) | None => RoleId::from_raw(id).map(OverwriteTarget::Role),
                Some(_) => None,
            }
            .ok_or_else(bad)?;
            let allow =
                Permissions::from_bits_truncate(o.u64("allow").map_err(|_| bad())?.unwrap_or(0));
            let deny =
                Permissions::from_bits_truncate(o.u64("deny").map_err(|_| bad())?.unwrap_or(0));
            Ok((target, allow, deny))
        })
        .collect()
}

pub(super) async fn create_channel(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let g = p.guild()?;
    let form = inner
        .form(
            body,
            &[
                "name",
                "type",
                "topic",
                "parent_id",
                "position",
                "permission_overwrites",
                "nsfw",
                "rate_limit_per_user",
                "bitrate",
                "user_limit",
                "rtc_region",
                "video_quality_mode",
                "default_auto_archive_duration",
                "default_reaction_emoji",
                "available_tags",
                "default_sort_order",
                "default_forum_layout",
                "default_thread_rate_limit_per_user",
            ],
        )
        .await?;
    let name = form.req_str("name")?;
    let kind = match form.u64("type")? {
        None | Some(0) => ChannelKind::Text,
        Some(4) => ChannelKind::Category,
        Some(_) => {
            return Err(RestError::field(
                "type",
                "BASE_TYPE_CHOICES",
                "Only text (0) and category (4) channels are supported.",
            ));
        }
    };
    let topic = form.str("topic")?;
    let parent = form.id("parent_id")?.and_then(ChannelId::from_raw);
    let overwrites = overwrites(&form)?;
    inner
        .query(move |core| guild_of(core, me.user, g).map(|_| ()))
        .await??;
    let reply = inner
        .run(
            &me,
            Command::CreateChannel {
                space: g,
                name,
                kind,
                parent,
                topic,
                overwrites,
            },
            None,
        )
        .await?;
    let id = super::created_channel(&reply).ok_or_else(RestError::unknown_channel)?;
    let v = inner
        .query(move |core| core.channel(id).map(|ch| model::channel(core, ch, me.user)))
        .await?
        .ok_or_else(RestError::unknown_channel)?;
    created(v)
}

// --- members ------------------------------------------------------------------------------------------------

pub(super) async fn members(State(inner): St, Auth(me): Auth, p: P, q: Q) -> Answer {
    let g = p.guild()?;
    let limit = q.limit(1, 1000)?;
    let after = q.id("after")?.unwrap_or(0);
    let list = inner
        .query(move |core| {
            guild_of(core, me.user, g).map(|s| {
                let mut ms: Vec<_> = s.members().filter(|m| m.user.get() > after).collect();
                ms.sort_by_key(|m| m.user);
                ms.into_iter()
                    .take(limit)
                    .map(|m| model::member(core, s, m))
                    .collect::<Vec<_>>()
            })
        })
        .await??;
    ok(Value::Array(list))
}

async fn member_json(inner: &Inner, me: UserId, g: SpaceId, user: UserId) -> Answer {
    let v = inner
        .query(move |core| -> Result<Value, RestError> {
            let s = guild_of(core, me, g)?;
            let m = s.member(user).ok_or_else(RestError::unknown_member)?;
            Ok(model::member(core, s, m))
        })
        .await??;
    ok(v)
}

pub(super) async fn member(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (g, user) = (p.guild()?, p.user()?);
    member_json(&inner, me.user, g, user).await
}

const MEMBER_FIELDS: &[&str] = &[
    "nick",
    "roles",
    "mute",
    "deaf",
    "channel_id",
    "communication_disabled_until",
    "flags",
];

async fn update_member(
    inner: &Inner,
    me: chat_engine::Session,
    g: SpaceId,
    user: UserId,
    form: &Form,
) -> Answer {
    inner
        .query(move |core| -> Result<(), RestError> {
            let s = guild_of(core, me.user, g)?;
            s.member(user).ok_or_else(RestError::unknown_member)?;
            Ok(())
        })
        .await??;
    if let Some(nick) = form.change_str("nick")? {
        inner
            .run(
                &me,
                Command::SetMemberNick {
                    space: g,
                    user,
                    nick: nick.filter(|n| !n.is_empty()),
                },
                None,
            )
            .await?;
    }
    if let Some(roles) = form.ids("roles")? {
        let roles = roles.into_iter().filter_map(RoleId::from_raw).collect();
        inner
            .run(
                &me,
                Command::SetMemberRoles {
                    space: g,
                    user,
                    roles,
                },
                None,
            )
            .await?;
    }
    member_json(inner, me.user, g, user).await
}

pub(super) async fn patch_member(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let (g, user) = (p.guild()?, p.user()?);
    let form = inner.form(body, MEMBER_FIELDS).await?;
    update_member(&inner, me, g, user, &form).await
}

pub(super) async fn patch_me_member(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let g = p.guild()?;
    let form = inner
        .form(body, &["nick", "banner", "avatar", "bio"])
        .await?;
    update_member(&inner, me, g, me.user, &form).await
}

pub(super) async fn kick(State(inner): St, Auth(me): Auth, p: P, headers: HeaderMap) -> Answer {
    let (g, user) = (p.guild()?, p.user()?);
    inner
        .run(
            &me,
            Command::KickMember {
                space: g,
                user,
                reason: audit_reason(&headers),
            },
            None,
        )
        .await?;
    no_content()
}

/// `PUT /guilds/{g}/members/{user}`: on Discord an OAuth2 join; here a user joins a public guild itself.
pub(super) async fn join_guild(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (g, user) = (p.guild()?, p.user()?);
    if user != me.user {
        return Err(RestError::missing_permissions());
    }
    let already = inner
        .query(move |core| {
            core.space(g)
                .map(|s| s.member(user).is_some())
                .ok_or_else(RestError::unknown_guild)
        })
        .await??;
    if already {
        return no_content();
    }
    inner
        .run(&me, Command::JoinSpace { space: g }, None)
        .await?;
    let v = member_json(&inner, me.user, g, user).await?;
    Ok((StatusCode::CREATED, v).into_response())
}

async fn change_role(inner: &Inner, me: chat_engine::Session, p: &P, add: bool) -> Answer {
    let (g, user, role) = (p.guild()?, p.user()?, p.role()?);
    let roles = inner
        .query(move |core| -> Result<Vec<RoleId>, RestError> {
            let s = guild_of(core, me.user, g)?;
            if !s.roles.contains_key(&role) {
                return Err(RestError::unknown(code::UNKNOWN_ROLE, "Role"));
            }
            let m = s.member(user).ok_or_else(RestError::unknown_member)?;
            let everyone = g.everyone_role();
            let mut roles: Vec<RoleId> = m
                .roles
                .iter()
                .copied()
                .filter(|r| *r != everyone && *r != role)
                .collect();
            if add {
                roles.push(role);
            }
            Ok(roles)
        })
        .await??;
    inner
        .run(
            &me,
            Command::SetMemberRoles {
                space: g,
                user,
                roles,
            },
            None,
        )
        .await?;
    no_content()
}

pub(super) async fn add_role(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    change_role(&inner, me, &p, true).await
}

pub(super) async fn remove_role(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    change_role(&inner, me, &p, false).await
}

// --- roles --------------------------------------------------------------------------------------------------

pub(super) async fn roles(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let g = p.guild()?;
    let list = inner
        .query(move |core| {
            guild_of(core, me.user, g).map(|s| {
                let mut roles: Vec<_> = s.roles.values().collect();
                roles.sort_by_key(|r| (r.position, r.id));
                roles.into_iter().map(model::role).collect::<Vec<_>>()
            })
        })
        .await??;
    ok(Value::Array(list))
}

const ROLE_FIELDS: &[&str] = &[
    "name",
    "permissions",
    "color",
    "colors",
    "hoist",
    "icon",
    "unicode_emoji",
    "mentionable",
    "position",
];

fn color(form: &Form) -> Result<Option<u32>, RestError> {
    form.u64("color")?
        .map(|c| {
            u32::try_from(c)
                .ok()
                .filter(|c| *c <= 0xFF_FFFF)
                .ok_or_else(|| {
                    RestError::field("color", "NUMBER_TYPE_MAX", "Must be at most 16777215.")
                })
        })
        .transpose()
}

async fn role_json(
    inner: &Inner,
    me: UserId,
    g: SpaceId,
    role: RoleId,
) -> Result<Value, RestError> {
    inner
        .query(move |core| -> Result<Value, RestError> {
            let s = guild_of(core, me, g)?;
            s.roles
                .get(&role)
                .map(model::role)
                .ok_or_else(|| RestError::unknown(code::UNKNOWN_ROLE, "Role"))
        })
        .await?
}

pub(super) async fn create_role(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let g = p.guild()?;
    let form = inner.form(body, ROLE_FIELDS).await?;
    let name = form.str("name")?.unwrap_or_else(|| "new role".to_owned());
    let permissions = Permissions::from_bits_truncate(form.u64("permissions")?.unwrap_or(0));
    let reply = inner
        .run(
            &me,
            Command::CreateRole {
                space: g,
                name,
                permissions,
                color: color(&form)?.unwrap_or(0),
                hoist: form.bool("hoist")?.unwrap_or(false),
                mentionable: form.bool("mentionable")?.unwrap_or(false),
            },
            None,
        )
        .await?;
    let Some(Created::Role(role)) = reply.created else {
        return Err(RestError::unknown(code::UNKNOWN_ROLE, "Role"));
    };
    ok(role_json(&inner, me.user, g, role).await?)
}

pub(super) async fn patch_role(State(inner): St, Auth(me): Auth, p: P, body: Body) -> Answer {
    let (g, role) = (p.guild()?, p.role()?);
    let form = inner.form(body, ROLE_FIELDS).await?;
    let position = form
        .i64("position")?
        .map(|v| {
            i32::try_from(v)
                .map_err(|_| RestError::field("position", "NUMBER_TYPE_MAX", "out of range"))
        })
        .transpose()?;
    inner
        .run(
            &me,
            Command::UpdateRole {
                space: g,
                role,
                name: form.str("name")?,
                permissions: form
                    .u64("permissions")?
                    .map(Permissions::from_bits_truncate),
                color: color(&form)?,
                hoist: form.bool("hoist")?,
                mentionable: form.bool("mentionable")?,
                position,
            },
            None,
        )
        .await?;
    ok(role_json(&inner, me.user, g, role).await?)
}

pub(super) async fn delete_role(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (g, role) = (p.guild()?, p.role()?);
    inner
        .run(&me, Command::DeleteRole { space: g, role }, None)
        .await?;
    no_content()
}

// --- bans ---------------------------------------------------------------------------------------------------

fn ban_json(core: &Core, user: UserId, reason: Option<&str>) -> Value {
    json!({
        "user": core.user(user).map_or_else(
            || model::user_card(user, None),
            model::user,
        ),
        "reason": reason,
    })
}

/// Bans are listed to those who may ban (as on Discord).
fn may_ban(core: &Core, user: UserId, g: SpaceId) -> Result<&Space, RestError> {
    let s = guild_of(core, user, g)?;
    if !core
        .space_permissions(user, g)
        .contains(Permissions::BAN_MEMBERS)
    {
        return Err(RestError::missing_permissions());
    }
    Ok(s)
}

pub(super) async fn bans(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let g = p.guild()?;
    let list = inner
        .query(move |core| {
            may_ban(core, me.user, g).map(|s| {
                s.bans()
                    .map(|(u, reason)| ban_json(core, u, reason))
                    .collect::<Vec<_>>()
            })
        })
        .await??;
    ok(Value::Array(list))
}

pub(super) async fn get_ban(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (g, user) = (p.guild()?, p.user()?);
    let v = inner
        .query(move |core| -> Result<Value, RestError> {
            let s = may_ban(core, me.user, g)?;
            s.bans()
                .find(|(u, _)| *u == user)
                .map(|(u, reason)| ban_json(core, u, reason))
                .ok_or_else(|| RestError::unknown(code::UNKNOWN_BAN, "Ban"))
        })
        .await??;
    ok(v)
}

pub(super) async fn ban(
    State(inner): St,
    Auth(me): Auth,
    p: P,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let (g, user) = (p.guild()?, p.user()?);
    let form = inner
        .form(
            body,
            &["delete_message_days", "delete_message_seconds", "reason"],
        )
        .await?;
    let reason = form.str("reason")?.or_else(|| audit_reason(&headers));
    inner
        .run(
            &me,
            Command::BanMember {
                space: g,
                user,
                reason,
            },
            None,
        )
        .await?;
    no_content()
}

pub(super) async fn unban(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let (g, user) = (p.guild()?, p.user()?);
    inner
        .run(&me, Command::UnbanMember { space: g, user }, None)
        .await?;
    no_content()
}

pub(super) async fn invites(State(inner): St, Auth(me): Auth, p: P) -> Answer {
    let g = p.guild()?;
    let list = inner
        .query(move |core| {
            guild_of(core, me.user, g)?;
            // As on Discord, listing a guild's invites takes Manage Guild.
            if !core
                .space_permissions(me.user, g)
                .contains(Permissions::MANAGE_GUILD)
            {
                return Err(RestError::missing_permissions());
            }
            Ok(core
                .invites()
                .filter(|i| match i.target {
                    InviteTarget::Space(s, _) => s == g,
                    InviteTarget::Channel(c) => core.channel(c).and_then(|ch| ch.space) == Some(g),
                })
                .map(|i| super::channels::invite_json(core, i))
                .collect::<Vec<_>>())
        })
        .await??;
    ok(json!(list))
}

// --- search -------------------------------------------------------------------------------------------------

pub(super) async fn search(State(inner): St, Auth(me): Auth, p: P, q: Q) -> Answer {
    let g = p.guild()?;
    let text = q.str("content").unwrap_or("").to_owned();
    if text.len() > 1024 {
        return Err(RestError::field(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 1024 or fewer in length.",
        ));
    }
    let author = q.id("author_id")?.and_then(UserId::from_raw);
    let channel = q.id("channel_id")?.and_then(ChannelId::from_raw);
    let limit = q.limit(25, 100)?;
    let offset = usize::try_from(q.num("offset")?.unwrap_or(0).min(10_000)).unwrap_or(0);
    // Only channels of this guild that the caller may read.
    let channels = inner
        .query(move |core| -> Result<Vec<ChannelId>, RestError> {
            guild_of(core, me.user, g)?;
            Ok(core
                .channels()
                .filter(|ch| ch.space == Some(g))
                .filter(|ch| sight(core, me.user, ch) == Sight::Readable)
                .map(|ch| ch.id)
                .collect())
        })
        .await??;
    if let Some(c) = channel
        && !channels.contains(&c)
    {
        return Err(RestError::missing_access());
    }
    let query = SearchQuery {
        text,
        channels,
        author,
        channel,
        space: Some(g),
        before: None::<MessageId>,
        after: None,
        limit,
        offset,
    };
    let hits = inner.engine.search(query).await?;
    let dir = inner.engine.directory();
    let messages: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!([model::message(
                &dir,
                &model::MessageView::stored(&h.message),
                Some(me.user)
            )])
        })
        .collect();
    drop(dir);
    ok(json!({
        "total_results": offset + messages.len(),
        "messages": messages,
    }))
}
