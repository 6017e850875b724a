//! JSON request bodies: an object whose fields are read one by one with Discord's 50035 error naming the
//! field that is wrong, so that a client learns exactly what to fix.

use serde_json::{Map, Value};

use crate::error::RestError;

/// A parsed JSON object body.
#[derive(Debug, Default)]
pub(crate) struct Form(Map<String, Value>);

fn type_error(field: &str, kind: &str, what: &str) -> RestError {
    RestError::field(field, kind, format!("Must be {what}."))
}

impl Form {
    /// Parses a body (empty = `{}`), keeping only the fields in `known` (the fields the route reads). Fields
    /// outside it are ignored, as Discord ignores them: libraries send fields we have no use for (discord.py
    /// sends `tts` on every edit). A known field of the wrong type is still refused, by the getters below.
    pub(crate) fn parse(bytes: &[u8], known: &[&str]) -> Result<Self, RestError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            RestError::field("_body", "BASE_TYPE_INVALID", format!("Invalid JSON: {e}"))
        })?;
        let Value::Object(mut map) = value else {
            return Err(type_error("_body", "DICT_TYPE_CONVERT", "an object"));
        };
        map.retain(|k, _| known.contains(&k.as_str()));
        Ok(Self(map))
    }

    /// A form built from a JSON object (multipart `payload_json`).
    pub(crate) fn from_value(value: Value, known: &[&str]) -> Result<Self, RestError> {
        Self::parse(value.to_string().as_bytes(), known)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A string; absent or null is `None`.
    pub(crate) fn str(&self, name: &str) -> Result<Option<String>, RestError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(type_error(name, "BASE_TYPE_STRING", "a string")),
        }
    }

    /// A required string.
    pub(crate) fn req_str(&self, name: &str) -> Result<String, RestError> {
        self.str(name)?
            .ok_or_else(|| RestError::field(name, "BASE_TYPE_REQUIRED", "This field is required"))
    }

    /// A nullable string change: absent = no change, null = clear.
    pub(crate) fn change_str(&self, name: &str) -> Result<Option<Option<String>>, RestError> {
        if !self.has(name) {
            return Ok(None);
        }
        Ok(Some(self.str(name)?))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, RestError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(type_error(name, "BASE_TYPE_BOOLEAN", "a boolean")),
        }
    }

    /// An integer, as a number or a numeric string (permissions come as strings).
    pub(crate) fn u64(&self, name: &str) -> Result<Option<u64>, RestError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => number(v)
                .map(Some)
                .ok_or_else(|| type_error(name, "NUMBER_TYPE_COERCE", "an integer")),
        }
    }

    pub(crate) fn i64(&self, name: &str) -> Result<Option<i64>, RestError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| type_error(name, "NUMBER_TYPE_COERCE", "an integer")),
            Some(_) => Err(type_error(name, "NUMBER_TYPE_COERCE", "an integer")),
        }
    }

    /// A snowflake (string or number, never 0).
    pub(crate) fn id(&self, name: &str) -> Result<Option<u64>, RestError> {
        match self.u64(name)? {
            Some(0) => Err(type_error(name, "NUMBER_TYPE_COERCE", "a snowflake")),
            other => Ok(other),
        }
    }

    /// A list of snowflakes.
    pub(crate) fn ids(&self, name: &str) -> Result<Option<Vec<u64>>, RestError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| number(v).filter(|n| *n != 0))
                .collect::<Option<Vec<u64>>>()
                .map(Some)
                .ok_or_else(|| type_error(name, "BASE_TYPE_INVALID", "a list of snowflakes")),
            Some(_) => Err(type_error(name, "BASE_TYPE_ARRAY", "an array")),
        }
    }

    /// A nonce: Discord accepts a string or an integer; it is echoed as text.
    pub(crate) fn nonce(&self) -> Result<Option<String>, RestError> {
        match self.get("nonce") {
            None => Ok(None),
            Some(Value::String(s)) if s.len() <= 64 => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(RestError::field(
                "nonce",
                "BASE_TYPE_MAX_LENGTH",
                "Must be a string of at most 64 characters or an integer.",
            )),
        }
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
