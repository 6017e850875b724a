//! Discord-shaped errors: an HTTP status and `{"code", "message"}` with Discord's codes.
//!
//! Discord's libraries branch on the status and the JSON code, so each of the core's typed refusals maps to the
//! code Discord uses for the same situation. Rate limits get Discord's exact 429 shape: discord.py treats a
//! 429 without `Via` as a Cloudflare ban, and twilight reads the limit headers only when a scope is given.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_engine::EngineError;
use serde_json::{Value, json};

/// Discord's JSON error codes used here.
pub(crate) mod code {
    pub(crate) const GENERAL: u32 = 0;
    pub(crate) const UNKNOWN_CHANNEL: u32 = 10003;
    pub(crate) const UNKNOWN_GUILD: u32 = 10004;
    pub(crate) const UNKNOWN_INVITE: u32 = 10006;
    pub(crate) const UNKNOWN_MEMBER: u32 = 10007;
    pub(crate) const UNKNOWN_MESSAGE: u32 = 10008;
    pub(crate) const UNKNOWN_ROLE: u32 = 10011;
    pub(crate) const UNKNOWN_USER: u32 = 10013;
    pub(crate) const UNKNOWN_EMOJI: u32 = 10014;
    pub(crate) const UNKNOWN_BAN: u32 = 10026;
    pub(crate) const MAX_REACHED: u32 = 30003;
    pub(crate) const TOO_LARGE: u32 = 40005;
    pub(crate) const BANNED: u32 = 40007;
    pub(crate) const MISSING_ACCESS: u32 = 50001;
    pub(crate) const EMPTY_MESSAGE: u32 = 50006;
    pub(crate) const MISSING_PERMISSIONS: u32 = 50013;
    pub(crate) const INVALID_CHANNEL_TYPE: u32 = 50024;
    pub(crate) const INVALID_FORM_BODY: u32 = 50035;
    pub(crate) const THREAD_EXISTS: u32 = 160_004;
}

/// Which limit a 429 reports in its `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    /// One of the engine's token buckets (RATE_LIMIT per user, or logins): `Limit` is its size.
    User(u32),
    /// One action per interval (a channel's slow mode, the core's own limits): `Limit` is 1.
    Single,
}

/// An error answer.
#[derive(Debug, Clone)]
pub(crate) struct RestError {
    status: StatusCode,
    code: u32,
    message: String,
    /// Discord's nested `errors` object (50035), naming the field.
    errors: Option<Box<Value>>,
    /// For 429: how long to wait.
    retry_after: Option<Duration>,
    /// For 429: which limit was hit (a field of its own, so that the error stays small).
    bucket: Bucket,
}

pub(crate) type Answer = Result<Response, RestError>;

impl RestError {
    pub(crate) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            errors: None,
            retry_after: None,
            bucket: Bucket::Single,
        }
    }

    /// 401 `{"code":0,"message":"401: Unauthorized"}`, as Discord answers a bad token.
    pub(crate) fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code::GENERAL, "401: Unauthorized")
    }

    /// 404 with an "Unknown X" code.
    pub(crate) fn unknown(code: u32, what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, format!("Unknown {what}"))
    }

    pub(crate) fn unknown_channel() -> Self {
        Self::unknown(code::UNKNOWN_CHANNEL, "Channel")
    }

    pub(crate) fn unknown_message() -> Self {
        Self::unknown(code::UNKNOWN_MESSAGE, "Message")
    }

    pub(crate) fn unknown_guild() -> Self {
        Self::unknown(code::UNKNOWN_GUILD, "Guild")
    }

    pub(crate) fn unknown_user() -> Self {
        Self::unknown(code::UNKNOWN_USER, "User")
    }

    pub(crate) fn unknown_member() -> Self {
        Self::unknown(code::UNKNOWN_MEMBER, "Member")
    }

    /// 403 50001: the thing exists but the user may not see it.
    pub(crate) fn missing_access() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            code::MISSING_ACCESS,
            "Missing Access",
        )
    }

    /// 403 50013.
    pub(crate) fn missing_permissions() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            code::MISSING_PERMISSIONS,
            "Missing Permissions",
        )
    }

    /// 400 50035 naming one field, with Discord's nested `errors` shape.
    pub(crate) fn field(field: &str, kind: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            errors: Some(Box::new(
                json!({ field: { "_errors": [{ "code": kind, "message": message }] } }),
            )),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_FORM_BODY,
                "Invalid Form Body",
            )
        }
    }

    /// 413 for a body over the cap.
    pub(crate) fn too_large(max: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::TOO_LARGE,
            format!("Request entity too large (at most {max} bytes)"),
        )
    }

    /// 429 with Discord's body and headers, for the engine's per-user message limit.
    pub(crate) fn rate_limited(retry_after: Duration, limit: u32) -> Self {
        Self::limited(retry_after, Bucket::User(limit))
    }

    fn limited(retry_after: Duration, bucket: Bucket) -> Self {
        Self {
            retry_after: Some(retry_after),
            bucket,
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::GENERAL,
                "You are being rate limited.",
            )
        }
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::GENERAL,
            "500: Internal Server Error",
        )
    }
}

/// The JSON field Discord names for a field of the core's commands.
fn field_name(f: chat_core::Field) -> &'static str {
    use chat_core::Field as F;
    match f {
        F::Body => "content",
        F::Topic => "topic",
        F::Name => "name",
        F::Description => "description",
        F::DisplayName => "global_name",
        F::Url => "avatar",
        F::Emoji => "emoji",
        F::Nonce => "nonce",
        F::Embeds => "embeds",
        F::Attachments => "attachments",
        F::Permissions => "permissions",
        F::Position => "position",
        F::SlowMode => "rate_limit_per_user",
        F::Invite => "max_uses",
        F::List => "messages",
        F::Color => "color",
        F::Reason => "reason",
        F::Status => "status",
        F::PasswordHash => "password",
        F::ClientName => "client_name",
        _ => "body",
    }
}

impl From<chat_core::Error> for RestError {
    fn from(e: chat_core::Error) -> Self {
        use chat_core::Error as E;
        let text = e.to_string();
        match e {
            E::NoSuchChannel => Self::unknown_channel(),
            E::NoSuchNick => Self::unknown_user(),
            E::NoSuchMessage => Self::unknown_message(),
            E::NoSuchSpace => Self::unknown_guild(),
            E::NoSuchRole => Self::unknown(code::UNKNOWN_ROLE, "Role"),
            E::NoSuchInvite => Self::unknown(code::UNKNOWN_INVITE, "Invite"),
            E::NoSuchClient => Self::unauthorized(),
            E::UserNotInChannel => Self::unknown_member(),
            E::NotOnChannel | E::InviteOnly | E::BadKey | E::ChannelFull => Self::new(
                StatusCode::FORBIDDEN,
                code::MISSING_ACCESS,
                format!("Missing Access: {text}"),
            ),
            E::PrivilegesNeeded { .. } | E::NotOwner | E::RoleHierarchy | E::CannotSend => {
                Self::new(
                    StatusCode::FORBIDDEN,
                    code::MISSING_PERMISSIONS,
                    format!("Missing Permissions: {text}"),
                )
            }
            E::Banned => Self::new(StatusCode::FORBIDDEN, code::BANNED, text),
            E::MessageTooLong { max, .. } => Self::field(
                "content",
                "BASE_TYPE_MAX_LENGTH",
                format!("Must be {max} or fewer in length."),
            ),
            E::NoTextToSend => Self::new(
                StatusCode::BAD_REQUEST,
                code::EMPTY_MESSAGE,
                "Cannot send an empty message",
            ),
            E::RateLimited { retry_after_ms } => {
                Self::limited(Duration::from_millis(retry_after_ms), Bucket::Single)
            }
            E::NickInUse => Self::field("username", "USERNAME_ALREADY_TAKEN", text),
            E::ErroneousNick { .. } => Self::field("username", "USERNAME_INVALID", text),
            E::BadChannelName { .. } => Self::field("name", "CHANNEL_NAME_INVALID", text),
            E::InvalidInput { field, reason } => {
                Self::field(field_name(field), "BASE_TYPE_INVALID", reason)
            }
            E::LimitReached { .. } => Self::new(StatusCode::BAD_REQUEST, code::MAX_REACHED, text),
            E::NotSupported { .. } => {
                Self::new(StatusCode::BAD_REQUEST, code::INVALID_CHANNEL_TYPE, text)
            }
            E::ThreadExists => Self::new(StatusCode::BAD_REQUEST, code::THREAD_EXISTS, text),
            _ => Self::new(StatusCode::BAD_REQUEST, code::GENERAL, text),
        }
    }
}

impl From<EngineError> for RestError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Refused(e) => e.into(),
            EngineError::RateLimited { retry_after, limit } => {
                Self::rate_limited(retry_after, limit)
            }
            EngineError::InvalidCredentials => {
                Self::field("login", "INVALID_LOGIN", "Login or password is invalid.")
            }
            EngineError::InvalidToken => Self::unauthorized(),
            EngineError::Password(e) => {
                let kind = match e {
                    chat_engine::PasswordError::TooShort { .. }
                    | chat_engine::PasswordError::TooLong { .. } => "BASE_TYPE_BAD_LENGTH",
                    _ => "PASSWORD_TOO_WEAK",
                };
                // Discord's messages are sentences about the field: "Must be ...".
                let text = e.to_string();
                let mut chars = text.chars();
                let mut message: String = chars
                    .next()
                    .into_iter()
                    .flat_map(char::to_uppercase)
                    .collect();
                message.extend(chars);
                message.push('.');
                Self::field("password", kind, message)
            }
            EngineError::HashcashRequired { bits, reason, .. } => Self::new(
                StatusCode::PAYMENT_REQUIRED,
                code::GENERAL,
                format!("Guest sign-up needs a proof-of-work stamp of {bits} bits: {reason}"),
            ),
            EngineError::InvalidInput { field, reason } => {
                Self::field(field, "BASE_TYPE_INVALID", reason)
            }
            EngineError::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::GENERAL,
                "503: The server is shutting down",
            ),
            EngineError::Unavailable { reason } => {
                tracing::warn!(%reason, "no writer settled a command");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code::GENERAL,
                    "503: The server's writer is changing; try again",
                )
            }
            other => {
                // The server's fault, never the client's: log the detail and answer without it.
                tracing::error!(error = %other, "REST request failed inside the engine");
                Self::internal()
            }
        }
    }
}

fn set(response: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), v);
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let Some(wait) = self.retry_after else {
            let mut body = json!({ "code": self.code, "message": self.message });
            if let (Some(errors), Some(map)) = (self.errors, body.as_object_mut()) {
                map.insert("errors".into(), *errors);
            }
            return (self.status, Json(body)).into_response();
        };
        // Discord's 429: the body discord.py needs (no `code`, so that twilight parses it as a rate limit),
        // `Via` (without it discord.py assumes a Cloudflare ban), and every limit header: discord.py crashes on
        // `Remaining` without a reset, and twilight reads the set only when a scope is given. The set agrees with
        // itself: `Limit` is the bucket's real size, `Remaining` 0, `Reset-After` the same wait as the body's
        // `retry_after` (to the millisecond), `Reset` now plus that wait, and `Retry-After` its whole seconds
        // rounded up.
        let secs = wait.as_millis() as f64 / 1000.0;
        let (limit, bucket_name) = match self.bucket {
            Bucket::User(limit) => (limit.max(1), "user"),
            Bucket::Single => (1, "single"),
        };
        let body = json!({ "message": self.message, "retry_after": secs, "global": false });
        let mut response = (self.status, Json(body)).into_response();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        response
            .headers_mut()
            .insert(header::VIA, HeaderValue::from_static("1.1 chatd"));
        // Retry-After is whole seconds; round up so that a client obeying it is not refused again.
        set(
            &mut response,
            "retry-after",
            wait.as_millis().div_ceil(1000).max(1).to_string(),
        );
        set(&mut response, "x-ratelimit-limit", limit.to_string());
        set(&mut response, "x-ratelimit-remaining", "0".into());
        set(
            &mut response,
            "x-ratelimit-reset",
            format!("{:.3}", now + secs),
        );
        set(
            &mut response,
            "x-ratelimit-reset-after",
            format!("{secs:.3}"),
        );
        set(&mut response, "x-ratelimit-bucket", bucket_name.into());
        set(&mut response, "x-ratelimit-scope", "user".into());
        response
    }
}
