//! Users, the application, the gateway's address, DMs, and our account routes (`auth/*`).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use chat_core::{ChannelKind, Command, UserId, UserRef};
use serde_json::{Value, json};

use super::{Auth, Inner, P, St, no_content, ok};
use crate::error::{Answer, RestError};
use crate::model;

/// The user object of `users/@me`: the public fields plus the private ones Discord adds for oneself.
fn me_json(u: &chat_core::User) -> Value {
    let mut v = model::user(u);
    if let Some(map) = v.as_object_mut() {
        map.insert("email".into(), Value::Null);
        map.insert("locale".into(), json!("en-US"));
        map.insert("premium_type".into(), json!(0));
        map.insert("banner".into(), Value::Null);
        map.insert("accent_color".into(), Value::Null);
    }
    v
}

async fn my_user(inner: &Inner, user: UserId) -> Answer {
    let v = inner
        .query(move |core| core.user(user).map(me_json))
        .await?
        .ok_or_else(RestError::unauthorized)?;
    ok(v)
}

pub(super) async fn me(axum::extract::State(inner): St, Auth(me): Auth) -> Answer {
    my_user(&inner, me.user).await
}

pub(super) async fn patch_me(
    axum::extract::State(inner): St,
    Auth(me): Auth,
    body: Body,
) -> Answer {
    let form = inner
        .form(
            body,
            &[
                "username",
                "global_name",
                "avatar",
                "bio",
                "banner",
                "accent_color",
            ],
        )
        .await?;
    if let Some(nick) = form.str("username")? {
        let current = inner
            .query(move |core| core.user(me.user).map(|u| u.nick.clone()))
            .await?;
        if current.as_deref() != Some(nick.as_str()) {
            inner.run(&me, Command::Nick { nick }, None).await?;
        }
    }
    let display_name = form.change_str("global_name")?;
    let bio = form.change_str("bio")?;
    // Discord sends avatars as data URIs, which this server does not store; a URL is kept, null clears.
    let avatar_url = match form.change_str("avatar")? {
        Some(Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(Some(url))
        }
        Some(None) => Some(None),
        _ => None,
    };
    if display_name.is_some() || bio.is_some() || avatar_url.is_some() {
        inner
            .run(
                &me,
                Command::UpdateProfile {
                    display_name,
                    bio,
                    avatar_url,
                },
                None,
            )
            .await?;
    }
    my_user(&inner, me.user).await
}

pub(super) async fn user(axum::extract::State(inner): St, Auth(_me): Auth, p: P) -> Answer {
    let id = p.user()?;
    let v = inner
        .query(move |core| core.user(id).filter(|u| !u.released).map(model::user))
        .await?
        .ok_or_else(RestError::unknown_user)?;
    ok(v)
}

pub(super) async fn my_guilds(axum::extract::State(inner): St, Auth(me): Auth) -> Answer {
    let list = inner
        .query(move |core| {
            let Some(u) = core.user(me.user) else {
                return Vec::new();
            };
            let mut ids: Vec<_> = u.spaces().collect();
            ids.sort();
            ids.into_iter()
                .filter_map(|s| core.space(s))
                .map(|s| {
                    json!({
                        "id": s.id.to_string(),
                        "name": s.name,
                        "icon": Value::Null,
                        "banner": Value::Null,
                        "owner": s.owner == me.user,
                        "permissions": core.space_permissions(me.user, s.id).bits().to_string(),
                        "features": [],
                        "approximate_member_count": s.member_count(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .await?;
    ok(Value::Array(list))
}

pub(super) async fn my_dms(axum::extract::State(inner): St, Auth(me): Auth) -> Answer {
    let list = inner
        .query(move |core| {
            // The user's own memberships, not every channel: this runs in the writer's turn.
            let Some(u) = core.user(me.user) else {
                return Vec::new();
            };
            u.joined_channels()
                .filter_map(|c| core.channel(c))
                .filter(|c| matches!(c.kind, ChannelKind::Dm | ChannelKind::GroupDm))
                .map(|c| model::channel(core, c, me.user))
                .collect::<Vec<_>>()
        })
        .await?;
    ok(Value::Array(list))
}

pub(super) async fn open_dm(axum::extract::State(inner): St, Auth(me): Auth, body: Body) -> Answer {
    let form = inner
        .form(
            body,
            &["recipient_id", "recipients", "access_tokens", "nicks"],
        )
        .await?;
    let to = form
        .id("recipient_id")?
        .and_then(UserId::from_raw)
        .ok_or_else(|| {
            RestError::field(
                "recipient_id",
                "BASE_TYPE_REQUIRED",
                "This field is required",
            )
        })?;
    let known = inner
        .query(move |core| core.user(to).is_some_and(|u| !u.released && !u.system))
        .await?;
    if !known {
        return Err(RestError::unknown_user());
    }
    let reply = inner
        .run(
            &me,
            Command::OpenDm {
                user: UserRef::Id(to),
            },
            None,
        )
        .await?;
    let Some(chat_core::Created::Channel(c)) = reply.created else {
        return Err(RestError::unknown_user());
    };
    let v = inner
        .query(move |core| core.channel(c).map(|ch| model::channel(core, ch, me.user)))
        .await?
        .ok_or_else(RestError::unknown_channel)?;
    ok(v)
}

pub(super) async fn application(axum::extract::State(inner): St, Auth(me): Auth) -> Answer {
    let v = inner
        .query(move |core| {
            let u = core.user(me.user)?;
            Some(json!({
                "id": u.id.to_string(),
                "name": u.nick,
                "description": u.bio.clone().unwrap_or_default(),
                "icon": Value::Null,
                "bot_public": false,
                "bot_require_code_grant": false,
                "owner": model::user(u),
                "verify_key": "0000000000000000000000000000000000000000000000000000000000000000",
                "team": Value::Null,
                "flags": 0,
                "rpc_origins": [],
                "summary": "",
                "bot": model::user(u),
            }))
        })
        .await?
        .ok_or_else(RestError::unauthorized)?;
    ok(v)
}

/// The gateway's address on the host the client used.
fn gateway_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("ws://{host}/gateway")
}

pub(super) async fn gateway(headers: HeaderMap) -> Answer {
    ok(json!({ "url": gateway_url(&headers) }))
}

pub(super) async fn gateway_bot(Auth(_me): Auth, headers: HeaderMap) -> Answer {
    ok(json!({
        "url": gateway_url(&headers),
        "shards": 1,
        "session_start_limit": {
            "total": 1000,
            "remaining": 1000,
            "reset_after": 0,
            "max_concurrency": 1,
        },
    }))
}

fn login_json(login: &chat_engine::Login) -> Value {
    json!({ "token": login.token, "user_id": login.session.user.to_string() })
}

/// The device name a login is kept under (our `client` field; `discord` when a library logs in).
fn client_name(form: &super::Form) -> Result<String, RestError> {
    let name = form.str("client")?.unwrap_or_else(|| "discord".to_owned());
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(RestError::field(
            "client",
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 1 and 64 in length, without control characters.",
        ));
    }
    Ok(name.to_owned())
}

pub(super) async fn register(axum::extract::State(inner): St, body: Body) -> Answer {
    let form = inner
        .form(body, &["username", "password", "bot", "client"])
        .await?;
    let nick = form.req_str("username")?;
    let password = form.req_str("password")?;
    let bot = form.bool("bot")?.unwrap_or(false);
    let client = client_name(&form)?;
    let login = inner
        .engine
        .register(nick.trim(), &password, bot, &client)
        .await?;
    ok(login_json(&login))
}

pub(super) async fn login(
    axum::extract::State(inner): St,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: Body,
) -> Answer {
    let form = inner
        .form(body, &["login", "username", "password", "client"])
        .await?;
    let nick = match form.str("login")? {
        Some(n) => n,
        None => form.req_str("username")?,
    };
    let password = form.req_str("password")?;
    let ip = connect.map(|c| c.0.0.ip());
    let client = client_name(&form)?;
    let login = inner
        .engine
        .login(nick.trim(), &password, &client, ip)
        .await?;
    ok(login_json(&login))
}

pub(super) async fn logout(axum::extract::State(inner): St, Auth(me): Auth) -> Answer {
    inner.run(&me, Command::Logout, None).await?;
    no_content()
}
