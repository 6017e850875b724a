//! The gateway's wire: op codes, close codes, intents, outgoing frames in Discord's `op, s, t, d` order, and
//! the shapes of the payloads clients send.

use serde::Deserialize;
use serde_json::Value;

/// Op codes (Discord's numbering).
pub(crate) mod op {
    pub(crate) const HEARTBEAT: u64 = 1;
    pub(crate) const IDENTIFY: u64 = 2;
    pub(crate) const PRESENCE_UPDATE: u64 = 3;
    pub(crate) const VOICE_STATE_UPDATE: u64 = 4;
    pub(crate) const RESUME: u64 = 6;
    pub(crate) const RECONNECT: u64 = 7;
    pub(crate) const REQUEST_GUILD_MEMBERS: u64 = 8;
    pub(crate) const INVALID_SESSION: u64 = 9;
    pub(crate) const HELLO: u64 = 10;
    pub(crate) const HEARTBEAT_ACK: u64 = 11;
    pub(crate) const REQUEST_SOUNDBOARD_SOUNDS: u64 = 31;
}

/// Close codes with Discord's meanings. Libraries give up on 4004 and 4010-4014 and resume on the others.
pub(crate) mod close {
    /// Resumable: used for a heartbeat timeout, a full outbound queue and a graceful shutdown, because every
    /// library resumes on it (4009 would also be resumed, but Discord means "session invalid" by it).
    pub(crate) const UNKNOWN_ERROR: u16 = 4000;
    pub(crate) const UNKNOWN_OPCODE: u16 = 4001;
    pub(crate) const DECODE_ERROR: u16 = 4002;
    pub(crate) const NOT_AUTHENTICATED: u16 = 4003;
    pub(crate) const AUTHENTICATION_FAILED: u16 = 4004;
    pub(crate) const ALREADY_AUTHENTICATED: u16 = 4005;
    pub(crate) const RATE_LIMITED: u16 = 4008;
    pub(crate) const INVALID_SHARD: u16 = 4010;
    pub(crate) const INVALID_API_VERSION: u16 = 4012;
    pub(crate) const INVALID_INTENTS: u16 = 4013;
}

/// Gateway intents (the bits this server filters on).
pub(crate) mod intents {
    pub(crate) const GUILDS: u64 = 1 << 0;
    pub(crate) const GUILD_MEMBERS: u64 = 1 << 1;
    pub(crate) const GUILD_MODERATION: u64 = 1 << 2;
    pub(crate) const GUILD_INVITES: u64 = 1 << 6;
    pub(crate) const GUILD_PRESENCES: u64 = 1 << 8;
    pub(crate) const GUILD_MESSAGES: u64 = 1 << 9;
    pub(crate) const GUILD_MESSAGE_REACTIONS: u64 = 1 << 10;
    pub(crate) const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
    pub(crate) const DIRECT_MESSAGES: u64 = 1 << 12;
    pub(crate) const DIRECT_MESSAGE_REACTIONS: u64 = 1 << 13;
    pub(crate) const DIRECT_MESSAGE_TYPING: u64 = 1 << 14;
    pub(crate) const MESSAGE_CONTENT: u64 = 1 << 15;
    /// Every bit Discord defines (0-16, 20, 21, 24, 25); any other bit closes the connection with 4013.
    pub(crate) const DEFINED: u64 = 0x1_FFFF | 1 << 20 | 1 << 21 | 1 << 24 | 1 << 25;
    /// Our extension, asked for with `chatd_irc: true` in Identify (never as an intent bit): the IRC notices
    /// of network channels (part, quit, kick, mode, nick, invite, topic) as MESSAGE_CREATEs with
    /// `chatd_kind`. It rides in the session's intents so that a Resume keeps it.
    pub(crate) const CHATD_IRC: u64 = 1 << 40;
    /// What a session id's intents may hold.
    pub(crate) const SESSION: u64 = DEFINED | CHATD_IRC;
}

/// A dispatch frame: `{"op":0,"s":seq,"t":"NAME","d":...}`, assembled as text so that the field order is
/// Discord's (twilight scans the raw text for the first `"op":`, `"s":` and `"t":`). `d` must be JSON.
pub(crate) fn dispatch(seq: u64, name: &str, d: &str) -> String {
    dispatch_with(seq, name, d.len(), |s| s.push_str(d))
}

/// A dispatch frame as [`dispatch`] makes it, with `d` (about `d_len` bytes) written into the frame by
/// `write`: a large `d` is not made first and then copied.
pub(crate) fn dispatch_with(
    seq: u64,
    name: &str,
    d_len: usize,
    write: impl FnOnce(&mut String),
) -> String {
    let mut s = String::with_capacity(d_len + name.len() + 40);
    s.push_str("{\"op\":0,\"s\":");
    s.push_str(&seq.to_string());
    s.push_str(",\"t\":\"");
    s.push_str(name);
    s.push_str("\",\"d\":");
    write(&mut s);
    s.push('}');
    s
}

/// A dispatch frame with its `s` replaced. Live-only events (typing, presence) carry the seq of the durable
/// event before them, which may be older than what a connection already sent; a client sets its sequence
/// from every dispatch, so sending the older seq would make its next Resume replay events twice.
pub(crate) fn with_seq(text: &str, seq: u64) -> Option<String> {
    let rest = text.strip_prefix("{\"op\":0,\"s\":")?;
    let at = rest.find(',')?;
    Some(format!("{{\"op\":0,\"s\":{seq}{}", &rest[at..]))
}

/// A non-dispatch frame: `{"op":N,"s":null,"t":null,"d":...}`.
pub(crate) fn control(op: u64, d: &str) -> String {
    format!("{{\"op\":{op},\"s\":null,\"t\":null,\"d\":{d}}}")
}

/// A client payload: `op` and `d` are all this server reads (`s` and `t` are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct Inbound {
    pub(crate) op: Value,
    #[serde(default)]
    pub(crate) d: Value,
}

/// Identify's `d`.
#[derive(Debug, Deserialize)]
pub(crate) struct Identify {
    pub(crate) token: String,
    #[serde(default)]
    pub(crate) intents: Option<Value>,
    #[serde(default)]
    pub(crate) shard: Option<Value>,
    #[serde(default)]
    pub(crate) presence: Option<PresenceUpdate>,
    /// Guilds with more members than this are sent `large`, without their member list (50..=250).
    #[serde(default)]
    pub(crate) large_threshold: Option<Value>,
    /// Our extension: also send IRC notices (see [`intents::CHATD_IRC`]).
    #[serde(default)]
    pub(crate) chatd_irc: Option<bool>,
}

/// Resume's `d`.
#[derive(Debug, Deserialize)]
pub(crate) struct Resume {
    pub(crate) token: String,
    pub(crate) session_id: String,
    #[serde(default)]
    pub(crate) seq: Option<Value>,
}

/// Presence Update's `d` (op 3; also Identify's `presence`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PresenceUpdate {
    #[serde(default)]
    pub(crate) status: Option<String>,
    // `afk` and `since` are not read: Discord routes push notifications by them and shows nothing of them.
    /// Absent or null leaves them as they are; a list replaces them.
    #[serde(default)]
    pub(crate) activities: Option<Vec<Activity>>,
}

/// One of a presence's activities: the fields kept (the rest, such as `url` or `created_at`, are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct Activity {
    pub(crate) name: String,
    #[serde(rename = "type", default)]
    pub(crate) kind: u64,
    #[serde(default)]
    pub(crate) state: Option<String>,
}

impl Activity {
    /// The core's activity; `None` for a type Discord does not define.
    pub(crate) fn to_core(&self) -> Option<chat_core::Activity> {
        use chat_core::ActivityKind as K;
        let kind = match self.kind {
            0 => K::Playing,
            1 => K::Streaming,
            2 => K::Listening,
            3 => K::Watching,
            4 => K::Custom,
            5 => K::Competing,
            _ => return None,
        };
        Some(chat_core::Activity {
            name: self.name.clone(),
            kind,
            state: self.state.clone(),
        })
    }
}

/// An activity as Discord writes it in presences.
pub(crate) fn activity_json(a: &chat_core::Activity) -> Value {
    use chat_core::ActivityKind as K;
    let kind = match a.kind {
        K::Playing => 0,
        K::Streaming => 1,
        K::Listening => 2,
        K::Watching => 3,
        K::Custom => 4,
        K::Competing => 5,
    };
    let mut v = serde_json::json!({ "name": a.name, "type": kind });
    if let (Some(state), Some(map)) = (&a.state, v.as_object_mut()) {
        map.insert("state".into(), Value::String(state.clone()));
    }
    v
}

/// Request Guild Members' `d` (op 8). `guild_id` and `user_ids` are snowflakes as strings or numbers.
#[derive(Debug, Deserialize)]
pub(crate) struct RequestMembers {
    pub(crate) guild_id: Value,
    #[serde(default)]
    pub(crate) query: Option<String>,
    #[serde(default)]
    pub(crate) limit: Option<u64>,
    #[serde(default)]
    pub(crate) user_ids: Option<Value>,
    #[serde(default)]
    pub(crate) nonce: Option<String>,
}

/// A snowflake given as a JSON string or number (discord.py sends some as numbers).
pub(crate) fn snowflake(v: &Value) -> Option<u64> {
    let n = match v {
        Value::String(s) => s.trim().parse().ok()?,
        Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    (n != 0).then_some(n)
}

/// The intents of an Identify: an integer with only defined bits. Absent means every defined intent (as
/// before intents existed); anything else is `None` (close 4013).
pub(crate) fn parse_intents(v: Option<&Value>) -> Option<u64> {
    match v {
        None | Some(Value::Null) => Some(intents::DEFINED),
        Some(Value::Number(n)) => n.as_u64().filter(|bits| bits & !intents::DEFINED == 0),
        Some(Value::String(s)) => s
            .parse::<u64>()
            .ok()
            .filter(|bits| bits & !intents::DEFINED == 0),
        Some(_) => None,
    }
}

/// Whether an Identify's `shard` is one this server serves: absent, or `[0, 1]` (it does not shard, and
/// `GET /gateway/bot` says one shard).
pub(crate) fn shard_ok(v: Option<&Value>) -> Result<Option<[u64; 2]>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.len() == 2 => match (a[0].as_u64(), a[1].as_u64()) {
            (Some(0), Some(1)) => Ok(Some([0, 1])),
            _ => Err(()),
        },
        Some(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_keep_discords_field_order() {
        assert_eq!(
            dispatch(7, "RESUMED", "{}"),
            r#"{"op":0,"s":7,"t":"RESUMED","d":{}}"#
        );
        assert_eq!(
            control(op::HELLO, r#"{"heartbeat_interval":41250}"#),
            r#"{"op":10,"s":null,"t":null,"d":{"heartbeat_interval":41250}}"#
        );
    }

    #[test]
    fn a_dispatch_takes_a_newer_seq() {
        let text = dispatch(7, "TYPING_START", r#"{"a":1}"#);
        assert_eq!(
            with_seq(&text, 12).as_deref(),
            Some(r#"{"op":0,"s":12,"t":"TYPING_START","d":{"a":1}}"#)
        );
        assert_eq!(with_seq("{}", 3), None);
    }

    #[test]
    fn intents_allow_only_defined_bits() {
        assert_eq!(parse_intents(Some(&json!(513))), Some(513));
        assert_eq!(parse_intents(Some(&json!(3276799))), Some(3276799));
        assert_eq!(parse_intents(Some(&json!(1u64 << 22))), None);
        assert_eq!(parse_intents(Some(&json!(1u64 << 17))), None);
        assert_eq!(parse_intents(Some(&json!(-1))), None);
        assert_eq!(parse_intents(Some(&json!("x"))), None);
        assert_eq!(parse_intents(None), Some(intents::DEFINED));
    }

    #[test]
    fn shards_and_snowflakes() {
        assert_eq!(shard_ok(Some(&json!([0, 1]))), Ok(Some([0, 1])));
        assert!(shard_ok(Some(&json!([1, 2]))).is_err());
        assert!(shard_ok(Some(&json!([0, 0]))).is_err());
        assert_eq!(snowflake(&json!("42")), Some(42));
        assert_eq!(snowflake(&json!(42)), Some(42));
        assert_eq!(snowflake(&json!(0)), None);
        assert_eq!(snowflake(&json!([])), None);
    }
}
