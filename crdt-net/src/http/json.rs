//! Objects and values as JSON, and the JSON of a write.
//!
//! A value (set element, register value, map key) is stored as bytes. One that is a string
//! as [`value::encode`] writes it (what `node.set::<String>` and the command line write) is a
//! JSON string; any other is `{"hex": "..."}`. Writes take either form, so every value
//! round-trips.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::routes::ApiError;
use crate::node::Ack;
use crate::value;
use crate::Object;

/// The longest timeout a request may ask for.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The most peers an acknowledgement or read level may name (more replicas than any
/// deployment has; a larger count would only wait for the timeout).
pub(super) const MAX_PEERS: usize = 1 << 16;

/// The timeout when a request names none (the node's own default for writes).
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `bytes` as JSON: the string it encodes, else its hex digits.
pub(super) fn bytes_json(bytes: &[u8]) -> Value {
    match value::decode::<String>(bytes) {
        Ok(text) => Value::String(text),
        Err(_) => json!({ "hex": hex(bytes) }),
    }
}

/// An object as `{"type": ..., "value": ...}`: a counter's number, a set's elements, a
/// register's value (or `null`), a multi-value register's values, a map's entries each as
/// `{"key": ..., "type": ..., "value": ...}`. Nesting is bounded by [`crate::MAX_DEPTH`].
pub(super) fn object_json(object: &Object) -> Value {
    let value = match object {
        Object::GCounter(c) => json!(c.value()),
        Object::PNCounter(c) => json!(c.value()),
        Object::Set(s) => Value::Array(s.iter().map(|v| bytes_json(v)).collect()),
        Object::Lww(r) => r.get().map_or(Value::Null, |v| bytes_json(v)),
        Object::Mv(r) => Value::Array(r.values().map(|v| bytes_json(v)).collect()),
        Object::Map(m) => Value::Array(
            m.iter()
                .map(|(k, v)| {
                    let mut entry = object_json(v);
                    if let Value::Object(fields) = &mut entry {
                        fields.insert("key".into(), bytes_json(k));
                    }
                    entry
                })
                .collect(),
        ),
        Object::Empty => Value::Null,
    };
    json!({ "type": type_name(object), "value": value })
}

/// The type's name in JSON.
pub(super) fn type_name(object: &Object) -> &'static str {
    match object {
        Object::Empty => "empty",
        Object::GCounter(_) => "g-counter",
        Object::PNCounter(_) => "pn-counter",
        Object::Set(_) => "set",
        Object::Lww(_) => "lww-register",
        Object::Mv(_) => "mv-register",
        Object::Map(_) => "map",
    }
}

/// A value in a request: a string (stored as [`value::encode`] writes it) or
/// `{"hex": "..."}` (stored as those bytes).
pub(super) fn json_bytes(json: &Value, what: &str) -> Result<Vec<u8>, ApiError> {
    match json {
        Value::String(text) => Ok(value::encode(text)),
        Value::Object(fields) if fields.len() == 1 => match fields.get("hex") {
            Some(Value::String(digits)) => unhex(digits).ok_or_else(|| {
                ApiError::bad_request(format!("{what}: hex needs pairs of hex digits"))
            }),
            _ => Err(ApiError::bad_request(format!(
                "{what}: a value is a string or {{\"hex\": \"...\"}}"
            ))),
        },
        _ => Err(ApiError::bad_request(format!(
            "{what}: a value is a string or {{\"hex\": \"...\"}}"
        ))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(digits: &str) -> Option<Vec<u8>> {
    let digits = digits.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// A write's body, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteBody {
    /// What to do.
    pub op: OpName,
    /// The element or register value (`add`, `remove`, `set`, `write`).
    #[serde(default)]
    pub value: Option<Value>,
    /// How much (`inc`, `dec`, `grow`); 1 if absent.
    #[serde(default)]
    pub by: Option<u64>,
    /// The map key to remove (`delete`).
    #[serde(default)]
    pub key: Option<Value>,
    /// Map keys from the object at the URL's key down to the object the operation changes.
    #[serde(default)]
    pub path: Vec<Value>,
    /// How many replicas must hold the write: `"local"` (default), a number of peers,
    /// `"majority"` or `"all"`.
    #[serde(default)]
    pub ack: Option<Value>,
    /// How long to wait for `ack`, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The operations, by the name a request gives.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum OpName {
    /// Add an element to a set.
    Add,
    /// Remove an element from a set.
    Remove,
    /// Add to an up-down counter.
    Inc,
    /// Subtract from an up-down counter.
    Dec,
    /// Add to a grow-only counter.
    Grow,
    /// Write a last-writer-wins register.
    Set,
    /// Write a multi-value register.
    Write,
    /// Remove a map key (resetting its value).
    Delete,
}

/// A write, checked.
pub(super) struct Write {
    pub op: OpName,
    /// The value, element or map key the operation carries (empty for counters).
    pub value: Vec<u8>,
    pub by: u64,
    pub path: Vec<Vec<u8>>,
    pub ack: Ack,
    pub timeout: Duration,
}

impl WriteBody {
    /// Checks the body: each operation's fields present, and only those.
    pub fn check(self) -> Result<Write, ApiError> {
        let name = format!("{:?}", self.op).to_lowercase();
        let needs = |field: &str, present: bool, wanted: bool| {
            if present == wanted {
                Ok(())
            } else if wanted {
                Err(ApiError::bad_request(format!("{name} needs \"{field}\"")))
            } else {
                Err(ApiError::bad_request(format!(
                    "{name} takes no \"{field}\""
                )))
            }
        };
        let (value, by, key) = match self.op {
            OpName::Add | OpName::Remove | OpName::Set | OpName::Write => (true, false, false),
            OpName::Inc | OpName::Dec | OpName::Grow => (false, true, false),
            OpName::Delete => (false, false, true),
        };
        needs("value", self.value.is_some(), value)?;
        if !by {
            needs("by", self.by.is_some(), false)?;
        }
        needs("key", self.key.is_some(), key)?;
        let bytes = match (&self.value, &self.key) {
            (Some(v), _) => json_bytes(v, "value")?,
            (_, Some(k)) => json_bytes(k, "key")?,
            _ => Vec::new(),
        };
        // Refused before any operation is built: a deep one would be dropped by recursion.
        if self.path.len() >= crate::MAX_DEPTH {
            return Err(ApiError::too_deep(self.path.len() + 1));
        }
        let path = self
            .path
            .iter()
            .map(|k| json_bytes(k, "path"))
            .collect::<Result<_, _>>()?;
        Ok(Write {
            op: self.op,
            value: bytes,
            by: self.by.unwrap_or(1),
            path,
            ack: ack(self.ack.as_ref())?,
            timeout: timeout(self.timeout_ms)?,
        })
    }
}

/// An acknowledgement level from JSON.
fn ack(json: Option<&Value>) -> Result<Ack, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "ack is \"local\", a number of peers up to {MAX_PEERS}, \"majority\" or \"all\""
        ))
    };
    Ok(match json {
        None => Ack::Local,
        Some(Value::String(level)) => match level.as_str() {
            "local" => Ack::Local,
            "majority" => Ack::Majority,
            "all" => Ack::All,
            _ => return Err(bad()),
        },
        Some(Value::Number(n)) => match n.as_u64().map(usize::try_from) {
            Some(Ok(0)) => Ack::Local,
            Some(Ok(n)) if n <= MAX_PEERS => Ack::Peers(n),
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    })
}

/// A timeout in milliseconds, at most [`MAX_TIMEOUT`].
pub(super) fn timeout(ms: Option<u64>) -> Result<Duration, ApiError> {
    match ms.map(Duration::from_millis) {
        None => Ok(DEFAULT_TIMEOUT),
        Some(t) if t <= MAX_TIMEOUT => Ok(t),
        Some(_) => Err(ApiError::bad_request(format!(
            "timeout_ms is at most {}",
            MAX_TIMEOUT.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_as_strings_or_hex() {
        let text = value::encode("milk");
        assert_eq!(bytes_json(&text), json!("milk"));
        assert_eq!(json_bytes(&json!("milk"), "v").ok(), Some(text));
        let raw = vec![0xff, 0x00, 0x10];
        assert_eq!(bytes_json(&raw), json!({ "hex": "ff0010" }));
        assert_eq!(json_bytes(&json!({ "hex": "ff0010" }), "v").ok(), Some(raw));
        for bad in [
            json!({ "hex": "f" }),
            json!({ "hex": "zz" }),
            json!(7),
            json!(null),
        ] {
            assert!(json_bytes(&bad, "v").is_err(), "{bad}");
        }
        // Non-ASCII in a hex string must not be cut inside a character.
        assert!(json_bytes(&json!({ "hex": "é" }), "v").is_err());
    }
}
