//! The REST API under `/api/v10` (and `/api/v9`), in Discord's object shapes and error codes.
//!
//! Every change goes through the engine as a core command, so the core checks permissions and the change
//! reaches every client's stream; reads of state come from `Engine::query` (one consistent snapshot) and
//! reads of message bodies from the store. Reads check visibility here, with the core's permission rules.

mod channels;
mod files;
mod form;
mod guilds;
mod users;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use chat_core::{
    Channel, ChannelId, ChannelKind, Command, Core, Created, MessageId, Permissions, SpaceId,
    UserId,
};
use chat_engine::{CommandReply, Engine, Session, StoredMessage};
use serde_json::Value;

use crate::Settings;
use crate::error::{Answer, RestError};
use crate::model;

pub(crate) use form::Form;

/// The REST API's shared state.
#[derive(Clone, Debug)]
pub(crate) struct Rest {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    engine: Engine,
    settings: Settings,
}

type St = axum::extract::State<Arc<Inner>>;

impl Rest {
    pub(crate) fn new(engine: Engine, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner { engine, settings }),
        }
    }

    pub(crate) fn router(&self) -> Router {
        // A message create may carry files: its route takes bodies up to the upload cap (each JSON body is
        // still read against `max_body`).
        let upload_cap = usize::try_from(self.inner.settings.max_upload)
            .unwrap_or(usize::MAX)
            .saturating_add(self.inner.settings.max_body);
        let api = api_routes(upload_cap)
            .fallback(|| async {
                RestError::new(StatusCode::NOT_FOUND, 0, "404: Not Found").into_response()
            })
            .method_not_allowed_fallback(|| async {
                RestError::new(StatusCode::METHOD_NOT_ALLOWED, 0, "405: Method Not Allowed")
                    .into_response()
            })
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.inner),
                absolute_urls,
            ))
            .with_state(Arc::clone(&self.inner));
        Router::new()
            .nest("/api/v10", api.clone())
            .nest("/api/v9", api)
            .merge(files::router(Arc::clone(&self.inner)))
    }
}

fn api_routes(upload_cap: usize) -> Router<Arc<Inner>> {
    Router::new()
        // Logging in and chatting.
        .route("/users/@me", get(users::me).patch(users::patch_me))
        .route("/users/@me/guilds", get(users::my_guilds))
        .route("/users/@me/guilds/{guild}", delete(guilds::leave))
        .route(
            "/users/@me/channels",
            get(users::my_dms).post(users::open_dm),
        )
        .route("/users/{user}", get(users::user))
        .route("/oauth2/applications/@me", get(users::application))
        .route("/applications/@me", get(users::application))
        .route("/gateway", get(users::gateway))
        .route("/gateway/bot", get(users::gateway_bot))
        .route("/auth/register", post(users::register))
        .route("/auth/login", post(users::login))
        .route("/auth/logout", post(users::logout))
        .route(
            "/channels/{channel}",
            get(channels::get_channel)
                .patch(channels::patch_channel)
                .delete(channels::delete_channel),
        )
        .route(
            "/channels/{channel}/messages",
            get(channels::messages)
                .post(channels::create_message)
                .layer(axum::extract::DefaultBodyLimit::max(upload_cap)),
        )
        .route(
            "/channels/{channel}/messages/bulk-delete",
            post(channels::bulk_delete),
        )
        .route(
            "/channels/{channel}/messages/{message}",
            get(channels::get_message)
                .patch(channels::edit_message)
                .delete(channels::delete_message),
        )
        .route(
            "/channels/{channel}/messages/{message}/ack",
            post(channels::ack),
        )
        .route(
            "/channels/{channel}/messages/{message}/threads",
            post(channels::thread_from_message),
        )
        .route(
            "/channels/{channel}/messages/{message}/reactions/{emoji}",
            get(channels::reactions),
        )
        .route(
            "/channels/{channel}/messages/{message}/reactions/{emoji}/@me",
            put(channels::react).delete(channels::unreact),
        )
        .route(
            "/channels/{channel}/messages/{message}/reactions/{emoji}/{user}",
            delete(channels::unreact_user),
        )
        .route("/channels/{channel}/typing", post(channels::typing))
        .route("/channels/{channel}/pins", get(channels::pins))
        .route(
            "/channels/{channel}/messages/pins",
            get(channels::pins_paged),
        )
        .route(
            "/channels/{channel}/messages/pins/{message}",
            put(channels::pin).delete(channels::unpin),
        )
        .route(
            "/channels/{channel}/pins/{message}",
            put(channels::pin).delete(channels::unpin),
        )
        .route(
            "/channels/{channel}/members/@me",
            put(channels::join).delete(channels::part),
        )
        .route(
            "/channels/{channel}/invites",
            get(channels::invites).post(channels::create_invite),
        )
        .route(
            "/channels/{channel}/permissions/{target}",
            put(channels::set_overwrite).delete(channels::delete_overwrite),
        )
        .route("/channels/{channel}/threads", post(channels::thread))
        .route(
            "/invites/{code}",
            get(channels::get_invite)
                .delete(channels::revoke_invite)
                .post(channels::use_invite),
        )
        .route("/guilds", post(guilds::create))
        .route(
            "/guilds/{guild}",
            get(guilds::get_guild)
                .patch(guilds::patch_guild)
                .delete(guilds::delete_guild),
        )
        .route(
            "/guilds/{guild}/channels",
            get(guilds::channels).post(guilds::create_channel),
        )
        .route("/guilds/{guild}/members", get(guilds::members))
        .route(
            "/guilds/{guild}/members/@me",
            axum::routing::patch(guilds::patch_me_member),
        )
        .route(
            "/guilds/{guild}/members/{user}",
            get(guilds::member)
                .patch(guilds::patch_member)
                .delete(guilds::kick)
                .put(guilds::join_guild),
        )
        .route(
            "/guilds/{guild}/members/{user}/roles/{role}",
            put(guilds::add_role).delete(guilds::remove_role),
        )
        .route(
            "/guilds/{guild}/roles",
            get(guilds::roles).post(guilds::create_role),
        )
        .route(
            "/guilds/{guild}/roles/{role}",
            axum::routing::patch(guilds::patch_role).delete(guilds::delete_role),
        )
        .route("/guilds/{guild}/bans", get(guilds::bans))
        .route(
            "/guilds/{guild}/bans/{user}",
            get(guilds::get_ban).put(guilds::ban).delete(guilds::unban),
        )
        .route("/guilds/{guild}/invites", get(guilds::invites))
        .route("/guilds/{guild}/messages/search", get(guilds::search))
}

/// Makes the attachment URLs of a JSON answer absolute, under PUBLIC_URL or the request's own host. Messages
/// are rendered with relative URLs by the code shared with the gateway ([`model::message`]); the base is a
/// property of the request, so it is applied here, once, for every route that answers with messages.
async fn absolute_urls(
    axum::extract::State(inner): St,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let base = model::base_url(inner.settings.public_url.as_deref(), req.headers());
    let resp = next.run(req).await;
    let Some(base) = base else { return resp };
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Our own answers, already in memory: reading them whole cannot run away.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return RestError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                0,
                "500: Internal Server Error",
            )
            .into_response();
        }
    };
    let rewritten = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| model::absolute_attachment_urls(text, &base));
    match rewritten {
        Some(text) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            axum::response::Response::from_parts(parts, Body::from(text))
        }
        None => axum::response::Response::from_parts(parts, Body::from(bytes)),
    }
}

// --- extractors ---------------------------------------------------------------------------------------------

/// The authenticated session: `Authorization: Bot <token>`, `Bearer <token>` or the bare token.
pub(crate) struct Auth(pub(crate) Session);

impl FromRequestParts<Arc<Inner>> for Auth {
    type Rejection = RestError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Inner>,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(RestError::unauthorized)?
            .trim();
        let token = ["Bot ", "Bearer ", "bot ", "bearer "]
            .iter()
            .find_map(|p| value.strip_prefix(p))
            .unwrap_or(value)
            .trim();
        Ok(Auth(state.engine.authenticate(token).await?))
    }
}

/// The path's parameters, by name (already percent-decoded).
pub(crate) struct P(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for P {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Path(map)) => Ok(P(map)),
            Err(_) => Err(RestError::new(
                StatusCode::BAD_REQUEST,
                0,
                "400: Bad Request (path)",
            )),
        }
    }
}

impl P {
    pub(crate) fn str(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    fn raw(&self, name: &str) -> Option<u64> {
        self.str(name).parse::<u64>().ok()
    }

    pub(crate) fn channel(&self) -> Result<ChannelId, RestError> {
        self.raw("channel")
            .and_then(ChannelId::from_raw)
            .ok_or_else(RestError::unknown_channel)
    }

    pub(crate) fn message(&self) -> Result<MessageId, RestError> {
        self.raw("message")
            .and_then(MessageId::from_raw)
            .ok_or_else(RestError::unknown_message)
    }

    pub(crate) fn guild(&self) -> Result<SpaceId, RestError> {
        self.raw("guild")
            .and_then(SpaceId::from_raw)
            .ok_or_else(RestError::unknown_guild)
    }

    pub(crate) fn user(&self) -> Result<UserId, RestError> {
        self.raw("user")
            .and_then(UserId::from_raw)
            .ok_or_else(RestError::unknown_user)
    }

    pub(crate) fn role(&self) -> Result<chat_core::RoleId, RestError> {
        self.raw("role")
            .and_then(chat_core::RoleId::from_raw)
            .ok_or_else(|| RestError::unknown(crate::error::code::UNKNOWN_ROLE, "Role"))
    }
}

/// The query string's parameters (a malformed one is treated as empty rather than refused).
pub(crate) struct Q(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Q {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Q(Query::<HashMap<String, String>>::from_request_parts(
            parts, state,
        )
        .await
        .map(|Query(q)| q)
        .unwrap_or_default()))
    }
}

impl Q {
    pub(crate) fn str(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// A numeric parameter; a non-number is a 50035 naming it.
    pub(crate) fn num(&self, name: &str) -> Result<Option<u64>, RestError> {
        self.str(name)
            .map(|s| {
                s.parse::<u64>().map_err(|_| {
                    RestError::field(
                        name,
                        "NUMBER_TYPE_COERCE",
                        format!("Value \"{s}\" is not int."),
                    )
                })
            })
            .transpose()
    }

    /// A snowflake parameter.
    pub(crate) fn id(&self, name: &str) -> Result<Option<u64>, RestError> {
        self.str(name)
            .map(|s| {
                s.parse::<u64>().ok().filter(|v| *v != 0).ok_or_else(|| {
                    RestError::field(
                        name,
                        "NUMBER_TYPE_COERCE",
                        format!("Value \"{s}\" is not snowflake."),
                    )
                })
            })
            .transpose()
    }

    /// A limit within `1..=max` (Discord refuses out-of-range values rather than clamping them).
    pub(crate) fn limit(&self, default: u64, max: u64) -> Result<usize, RestError> {
        let v = self.num("limit")?.unwrap_or(default);
        if v == 0 || v > max {
            return Err(RestError::field(
                "limit",
                "NUMBER_TYPE_MAX",
                format!("int value should be between 1 and {max}."),
            ));
        }
        usize::try_from(v).map_err(|_| RestError::field("limit", "NUMBER_TYPE_MAX", "too large"))
    }

    pub(crate) fn bool(&self, name: &str) -> bool {
        matches!(self.str(name), Some("true" | "1" | "True"))
    }
}

// --- helpers ------------------------------------------------------------------------------------------------

/// A JSON answer with status 200. axum's `Json` sets `Content-Type: application/json` exactly, which
/// discord.py compares as a string.
pub(crate) fn ok(value: Value) -> Answer {
    Ok((StatusCode::OK, axum::Json(value)).into_response())
}

pub(crate) fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl Inner {
    /// Reads a JSON body up to the cap and checks that its fields are among `known`.
    pub(crate) async fn form(&self, body: Body, known: &[&str]) -> Result<Form, RestError> {
        let bytes = self.bytes(body, self.settings.max_body).await?;
        Form::parse(&bytes, known)
    }

    /// Reads a body up to `max` bytes; 413 past it (it is never buffered whole).
    pub(crate) async fn bytes(&self, body: Body, max: usize) -> Result<Bytes, RestError> {
        axum::body::to_bytes(body, max).await.map_err(|e| {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"))
                || e.to_string().contains("length limit");
            if too_big {
                RestError::too_large(max as u64)
            } else {
                RestError::new(
                    StatusCode::BAD_REQUEST,
                    0,
                    "400: The body could not be read",
                )
            }
        })
    }

    pub(crate) async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> R + Send + 'static,
    ) -> Result<R, RestError> {
        Ok(self.engine.query(f).await?)
    }

    pub(crate) async fn run(
        &self,
        me: &Session,
        command: Command,
        nonce: Option<String>,
    ) -> Result<CommandReply, RestError> {
        Ok(self.engine.command(me, command, nonce).await?)
    }

    /// A message as the store has it, through the engine.
    pub(crate) async fn stored(&self, id: MessageId) -> Result<Option<StoredMessage>, RestError> {
        Ok(self.engine.message(id).await?)
    }

    /// A stored message as a Discord message object.
    pub(crate) fn render(&self, m: &StoredMessage, viewer: UserId) -> Value {
        let dir = self.engine.directory();
        model::message(&dir, &model::MessageView::stored(m), Some(viewer))
    }

    /// A message of `channel` as a message object, read back from the store.
    pub(crate) async fn message_json(
        &self,
        channel: ChannelId,
        id: MessageId,
        viewer: UserId,
    ) -> Answer {
        match self.stored(id).await? {
            Some(m) if m.channel == channel => ok(self.render(&m, viewer)),
            _ => Err(RestError::unknown_message()),
        }
    }
}

/// What the created thing of a command is, for answers that return it.
pub(crate) fn created_channel(reply: &CommandReply) -> Option<ChannelId> {
    match reply.created {
        Some(Created::Channel(c)) => Some(c),
        _ => None,
    }
}

/// How a user may see a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sight {
    /// It does not exist, or its existence is hidden (`+s`): 10003.
    Unknown,
    /// It exists but the user may not see it: 50001.
    Hidden,
    /// Listed (a network channel the user has not joined, or a space channel it may view).
    Listed,
    /// The user may read its messages.
    Readable,
}

/// Whether `user` sees channel `ch` and may read its history. Network channels are read by their members
/// (on IRC a reader is in the member list); space channels with VIEW_CHANNEL and READ_MESSAGE_HISTORY;
/// DMs by their members; threads as their parent.
pub(crate) fn sight(core: &Core, user: UserId, ch: &Channel) -> Sight {
    match ch.kind {
        ChannelKind::Dm | ChannelKind::GroupDm => {
            if core.is_member(user, ch.id) {
                Sight::Readable
            } else {
                Sight::Unknown
            }
        }
        _ => {
            let network = ch.space == Some(core.network());
            if network {
                if core.is_member(user, ch.id) {
                    return Sight::Readable;
                }
                if ch.kind == ChannelKind::Thread {
                    return match ch.parent.and_then(|p| core.channel(p)) {
                        Some(p) => sight(core, user, p),
                        None => Sight::Unknown,
                    };
                }
                if ch.flags.secret {
                    Sight::Unknown
                } else {
                    Sight::Listed
                }
            } else {
                let in_space = ch
                    .space
                    .and_then(|s| core.space(s))
                    .is_some_and(|s| s.member(user).is_some());
                if !in_space {
                    return Sight::Hidden;
                }
                let perms = core.channel_permissions(user, ch.id);
                if perms.contains(Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY) {
                    Sight::Readable
                } else if perms.contains(Permissions::VIEW_CHANNEL) {
                    Sight::Listed
                } else {
                    Sight::Hidden
                }
            }
        }
    }
}

/// The channel, if `user` sees it at least as listed; the right error otherwise.
pub(crate) fn visible(core: &Core, user: UserId, id: ChannelId) -> Result<&Channel, RestError> {
    let ch = core.channel(id).ok_or_else(RestError::unknown_channel)?;
    match sight(core, user, ch) {
        Sight::Unknown => Err(RestError::unknown_channel()),
        Sight::Hidden => Err(RestError::missing_access()),
        Sight::Listed | Sight::Readable => Ok(ch),
    }
}

/// The channel, if `user` may read its messages.
pub(crate) fn readable(core: &Core, user: UserId, id: ChannelId) -> Result<&Channel, RestError> {
    let ch = core.channel(id).ok_or_else(RestError::unknown_channel)?;
    match sight(core, user, ch) {
        Sight::Unknown => Err(RestError::unknown_channel()),
        Sight::Hidden | Sight::Listed => Err(RestError::missing_access()),
        Sight::Readable => Ok(ch),
    }
}

/// Checks that a message belongs to a channel the user may read (by the core's record).
pub(crate) fn readable_message(
    core: &Core,
    user: UserId,
    channel: ChannelId,
    message: MessageId,
) -> Result<(), RestError> {
    readable(core, user, channel)?;
    match core.message(message) {
        Some(m) if m.channel == channel => Ok(()),
        _ => Err(RestError::unknown_message()),
    }
}
