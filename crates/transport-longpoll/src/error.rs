//! The API's errors: an HTTP status and the `{error, message, numeric}` body, mapped from the engine's and the
//! core's typed refusals.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_engine::EngineError;
use serde::Serialize;

/// An error answer: what went wrong, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case name (`nick_in_use`), for programs.
    pub error: &'static str,
    /// A sentence, for people.
    pub message: String,
    /// The IRC numeric, where IRC has one.
    pub numeric: Option<u16>,
    /// For 429: how long to wait.
    pub retry_after: Option<Duration>,
    /// For 402 `hashcash_required`: the zero bits a stamp must have and the resource it must name.
    pub hashcash: Option<(u32, String)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    numeric: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
}

impl ApiError {
    /// An error with a status, a name and a message, and no numeric.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            numeric: None,
            retry_after: None,
            hashcash: None,
        }
    }

    /// 400 `invalid_input`, naming the field.
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        Self {
            numeric: None,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                format!("Invalid {field}: {reason}"),
            )
        }
    }

    /// 401 `unauthorized`: no token, or one the server does not know.
    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 `not_found`: no such route or resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `unavailable`: the server is shutting down or has stopped.
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<chat_core::Error> for ApiError {
    fn from(e: chat_core::Error) -> Self {
        use chat_core::Error as E;
        let status = match &e {
            E::NickInUse | E::UserOnChannel | E::AlreadyMember => StatusCode::CONFLICT,
            E::NoSuchChannel
            | E::NoSuchNick
            | E::NoSuchMessage
            | E::NoSuchSpace
            | E::NoSuchRole
            | E::NoSuchInvite
            | E::NoSuchClient => StatusCode::NOT_FOUND,
            E::NotOnChannel
            | E::UserNotInChannel
            | E::PrivilegesNeeded { .. }
            | E::NotOwner
            | E::RoleHierarchy
            | E::Banned
            | E::InviteOnly
            | E::BadKey
            | E::ChannelFull
            | E::CannotSend => StatusCode::FORBIDDEN,
            E::MessageTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        let retry_after = match &e {
            E::RateLimited { retry_after_ms } => Some(Duration::from_millis(*retry_after_ms)),
            _ => None,
        };
        Self {
            status,
            error: e.name(),
            message: e.to_string(),
            numeric: e.irc_numeric(),
            retry_after,
            hashcash: None,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Refused(e) => e.into(),
            EngineError::RateLimited { retry_after, .. } => Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "Too many requests: retry after {:.1} s",
                        retry_after.as_secs_f64()
                    ),
                )
            },
            EngineError::InvalidCredentials => Self {
                numeric: Some(464),
                ..Self::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_credentials",
                    "Invalid nick or password",
                )
            },
            EngineError::InvalidToken => Self::unauthorized("Invalid or expired token"),
            EngineError::InvalidInput { field, reason } => Self::invalid(field, reason),
            EngineError::Password(e) => Self::invalid("password", e),
            EngineError::HashcashRequired {
                bits,
                resource,
                reason,
            } => Self {
                hashcash: Some((bits, resource)),
                ..Self::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "hashcash_required",
                    format!(
                        "Guest sign-up needs a proof-of-work stamp of {bits} bits \
                         (\"hashcash\" field; see GET /api/v1/server): {reason}"
                    ),
                )
            },
            EngineError::ShuttingDown => Self::unavailable("The server is shutting down"),
            EngineError::Unavailable { reason } => {
                tracing::warn!(%reason, "no writer settled a command");
                Self::unavailable(
                    "The server's writer is changing; try again (a command sent with a nonce is applied \
                     at most once)",
                )
            }
            other => {
                // Storage failures and a stopped engine are the server's fault, never the client's: log the
                // detail here and answer without it.
                tracing::error!(error = %other, "request failed inside the engine");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "The server failed to handle the request",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.retry_after.map(|d| d.as_secs_f64());
        let body = Body {
            error: self.error,
            message: &self.message,
            numeric: self.numeric,
            retry_after: retry,
            bits: self.hashcash.as_ref().map(|h| h.0),
            resource: self.hashcash.as_ref().map(|h| h.1.as_str()),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(d) = self.retry_after {
            // Retry-After is whole seconds; round up so a client that obeys it is not refused again.
            let secs = d.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
