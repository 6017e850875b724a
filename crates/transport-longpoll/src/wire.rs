//! Request bodies and query strings, and the IRC-style command (`{"command":"PRIVMSG",...}`) turned into the
//! core's [`Command`]. Everything here is checked before the engine sees it: bad JSON, bad UTF-8 and unknown
//! fields get a 400 that names the problem.

use axum::http::StatusCode;
use chat_core::{
    ChannelId, ChannelRef, Command, MessageId, MessageKind, Outgoing, Target, UserRef,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Parses a JSON body: UTF-8 first (so that the error says so), then JSON into `T`.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
            format!("The body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| {
        let (status, name) = match e.classify() {
            // Well-formed JSON of the wrong shape: a missing field, an unknown one, a wrong type.
            serde_json::error::Category::Data => (StatusCode::BAD_REQUEST, "invalid_input"),
            _ => (StatusCode::BAD_REQUEST, "invalid_json"),
        };
        ApiError::new(status, name, format!("Invalid request body: {e}"))
    })
}

/// `POST /session`, `/register`, `/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    pub(crate) nick: String,
    #[serde(default)]
    pub(crate) password: Option<String>,
    /// A label for this device ("phone"); defaults to the API's name.
    #[serde(default)]
    pub(crate) client: Option<String>,
    /// A guest's proof-of-work stamp, when the server asks for one (`HASHCASH_BITS`).
    #[serde(default)]
    pub(crate) hashcash: Option<String>,
}

/// `POST /messages`: one command. Which fields a command reads is listed in the README.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandBody {
    pub(crate) command: String,
    #[serde(default)]
    pub(crate) to: Option<String>,
    #[serde(default)]
    pub(crate) body: Option<String>,
    /// Kept as the client wrote it, so that numbers beyond f64 and key order survive (SPEC §3: verbatim).
    #[serde(default)]
    pub(crate) meta: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) nonce: Option<String>,
    #[serde(default, rename = "ref")]
    pub(crate) reference: Option<IdText>,
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) target: Option<String>,
    #[serde(default)]
    pub(crate) args: Option<Vec<String>>,
}

/// An id given as a JSON string (as the API writes them) or a number.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(crate) enum IdText {
    Text(String),
    Number(u64),
}

impl IdText {
    fn raw(&self) -> Option<u64> {
        match self {
            IdText::Text(t) => t.trim().parse().ok(),
            IdText::Number(n) => Some(*n),
        }
    }
}

/// A message id from a `ref`-like field.
pub(crate) fn message_id(field: &str, id: Option<&IdText>) -> Result<MessageId, ApiError> {
    let id = id.ok_or_else(|| ApiError::invalid(field, "required"))?;
    id.raw()
        .and_then(MessageId::from_raw)
        .ok_or_else(|| ApiError::invalid(field, "not a message id"))
}

/// A message id from a query parameter, if given.
pub(crate) fn query_message_id(
    field: &str,
    text: Option<&str>,
) -> Result<Option<MessageId>, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t
            .parse()
            .ok()
            .and_then(MessageId::from_raw)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "not a message id")),
    }
}

/// A channel named by `#name` or by id (all digits: nicks cannot start with a digit).
pub(crate) fn channel_ref(text: &str) -> ChannelRef {
    let text = text.trim();
    match text.parse::<u64>().ok().and_then(ChannelId::from_raw) {
        Some(id) => ChannelRef::Id(id),
        None if text.starts_with('#') => ChannelRef::Name(text.to_owned()),
        // A path segment may leave the `#` out (`/channels/general`).
        None => ChannelRef::Name(format!("#{text}")),
    }
}

/// The `to` of a message: a channel (by `#name` or id) or a nick.
fn target(to: &str) -> Target {
    if to.starts_with('#') || to.parse::<u64>().is_ok() {
        Target::Channel(channel_ref(to))
    } else {
        Target::User(UserRef::Nick(to.to_owned()))
    }
}

fn required<'a>(field: &str, value: Option<&'a str>) -> Result<&'a str, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid(field, "required"))
}

/// The meta object as the JSON text the core keeps verbatim (only the whitespace between tokens is dropped);
/// anything but an object is refused, and so is nesting deeper than a JSON parser's usual limit.
fn meta_text(meta: Option<&RawValue>) -> Result<Option<String>, ApiError> {
    let Some(raw) = meta else {
        return Ok(None);
    };
    let text = compact(raw.get()).ok_or_else(|| ApiError::invalid("meta", "nested too deeply"))?;
    match text.as_str() {
        "null" | "{}" => Ok(None),
        t if t.starts_with('{') => Ok(Some(text)),
        _ => Err(ApiError::invalid("meta", "must be a JSON object")),
    }
}

/// The deepest nesting of objects and arrays accepted in meta (serde_json's own limit for parsed values).
const MAX_DEPTH: usize = 128;

/// Drops the whitespace between the tokens of valid JSON text, leaving every token (strings, numbers) as is;
/// `None` when objects and arrays nest deeper than [`MAX_DEPTH`].
fn compact(json: &str) -> Option<String> {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped, mut depth) = (false, false, 0usize);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => continue,
            '"' => in_string = true,
            '{' | '[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(c);
    }
    Some(out)
}

/// Turns a `POST /messages` body into a core command.
pub(crate) fn command(body: CommandBody) -> Result<Command, ApiError> {
    let CommandBody {
        command,
        to,
        body: text,
        meta,
        nonce: _,
        reference,
        key,
        target: who,
        args,
    } = body;
    let to = to.as_deref().map(str::trim);
    let verb = command.trim().to_ascii_uppercase();
    let send = |kind: MessageKind| -> Result<Command, ApiError> {
        Ok(Command::Send {
            to: target(required("to", to)?),
            message: Outgoing {
                kind: Some(kind),
                body: text.clone().unwrap_or_default(),
                meta: meta_text(meta.as_deref())?,
                reply_to: match &reference {
                    Some(_) => Some(message_id("ref", reference.as_ref())?),
                    None => None,
                },
                ..Outgoing::default()
            },
        })
    };
    Ok(match verb.as_str() {
        "PRIVMSG" => send(MessageKind::Message)?,
        "NOTICE" => send(MessageKind::Notice)?,
        "ACTION" => send(MessageKind::Action)?,
        "JOIN" => Command::Join {
            channel: required("to", to)?.to_owned(),
            key,
        },
        "PART" => Command::Part {
            channel: channel_ref(required("to", to)?),
            reason: text.filter(|t| !t.is_empty()),
        },
        "NICK" => Command::Nick {
            nick: required("body", text.as_deref())?.trim().to_owned(),
        },
        "TOPIC" => Command::Topic {
            channel: channel_ref(required("to", to)?),
            topic: text.unwrap_or_default(),
        },
        "MODE" => Command::Mode {
            channel: channel_ref(required("to", to)?),
            modes: required("body", text.as_deref())?.to_owned(),
            args: args.unwrap_or_default(),
        },
        "KICK" => Command::Kick {
            channel: channel_ref(required("to", to)?),
            user: UserRef::Nick(required("target", who.as_deref())?.to_owned()),
            reason: text.filter(|t| !t.is_empty()),
        },
        "INVITE" => Command::Invite {
            channel: channel_ref(required("to", to)?),
            user: UserRef::Nick(required("target", who.as_deref())?.to_owned()),
        },
        "QUIT" => Command::Quit {
            reason: text.filter(|t| !t.is_empty()),
        },
        "AWAY" => Command::Away {
            message: text.filter(|t| !t.is_empty()),
        },
        "EDIT" => Command::Edit {
            message: message_id("ref", reference.as_ref())?,
            body: text.unwrap_or_default(),
            meta: meta_text(meta.as_deref())?,
            embeds: None,
        },
        "DELETE" => Command::Delete {
            message: message_id("ref", reference.as_ref())?,
        },
        "REACT" => Command::React {
            message: message_id("ref", reference.as_ref())?,
            emoji: required("body", text.as_deref())?.to_owned(),
        },
        "UNREACT" => Command::Unreact {
            message: message_id("ref", reference.as_ref())?,
            emoji: required("body", text.as_deref())?.to_owned(),
            user: None,
        },
        "PIN" => Command::Pin {
            message: message_id("ref", reference.as_ref())?,
        },
        "UNPIN" => Command::Unpin {
            message: message_id("ref", reference.as_ref())?,
        },
        "TYPING" => Command::Typing {
            channel: channel_ref(required("to", to)?),
        },
        "READ" => Command::Read {
            channel: channel_ref(required("to", to)?),
            message: message_id("ref", reference.as_ref())?,
        },
        _ => {
            return Err(ApiError {
                numeric: Some(421),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_command",
                    format!(
                        "Unknown command: {}",
                        command.chars().take(32).collect::<String>()
                    ),
                )
            });
        }
    })
}

/// `POST /channels/join`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinBody {
    pub(crate) channel: String,
    #[serde(default)]
    pub(crate) key: Option<String>,
}

/// `POST /channels/part`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartBody {
    pub(crate) channel: String,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// `POST /channels/{name}/topic`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicBody {
    pub(crate) topic: String,
}

/// `POST /users/nick`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NickBody {
    pub(crate) nick: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> Result<Option<String>, ApiError> {
        let raw: Box<RawValue> = serde_json::from_str(json).expect("valid JSON");
        meta_text(Some(&raw))
    }

    #[test]
    fn meta_is_kept_verbatim_but_compact() {
        assert_eq!(
            meta(r#" { "z" : 1, "a" : 123456789012345678901234567890, "e": 1E+2, "s": "a \" b\\" , "t":[ 1 ,2.50 ] } "#)
                .unwrap()
                .as_deref(),
            Some(r#"{"z":1,"a":123456789012345678901234567890,"e":1E+2,"s":"a \" b\\","t":[1,2.50]}"#)
        );
        assert_eq!(meta("{ }").unwrap(), None);
        assert_eq!(meta("null").unwrap(), None);
        for bad in ["[1]", "\"{}\"", "7", "true"] {
            assert_eq!(meta(bad).unwrap_err().error, "invalid_input", "{bad}");
        }
        let deep = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(meta(&deep(MAX_DEPTH)).unwrap().is_some());
        assert_eq!(
            meta(&deep(MAX_DEPTH + 1)).unwrap_err().error,
            "invalid_input"
        );
        // Brackets inside strings do not count.
        assert!(
            meta(&format!("{{\"s\":\"{}\"}}", "[".repeat(500)))
                .unwrap()
                .is_some()
        );
    }
}
