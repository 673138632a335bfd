//! A write's JSON body, read and checked.
//!
//! Every field has a type of its own that refuses anything else as soon as the parser meets
//! it, so a body of the size limit cannot make a large tree of JSON values first (an array of
//! a million zeros where a string belongs), and a `path` keeps at most [`MAX_DEPTH`] keys.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::routes::ApiError;
use crate::node::Ack;
use crate::{value, MAX_DEPTH};

/// The longest timeout a request may ask for.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The most peers an acknowledgement or read level may name (more replicas than any
/// deployment has; a larger count would only wait for the timeout).
pub(super) const MAX_PEERS: usize = 1 << 16;

/// The timeout when a request names none (the node's own default for writes).
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A write's body, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteBody {
    /// What to do.
    op: OpName,
    /// The element or register value (`add`, `remove`, `set`, `write`).
    #[serde(default)]
    value: Option<JsonBytes>,
    /// How much (`inc`, `dec`, `grow`); 1 if absent.
    #[serde(default)]
    by: Option<u64>,
    /// The map key to remove (`delete`).
    #[serde(default)]
    key: Option<JsonBytes>,
    /// Map keys from the object at the URL's key down to the object the operation changes.
    #[serde(default)]
    path: PathJson,
    /// How many replicas must hold the write.
    #[serde(default)]
    ack: AckJson,
    /// How long to wait for `ack`, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
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
        let needs = |field: &str, present: bool, wanted: bool| match (present, wanted) {
            (false, true) => Err(ApiError::bad_request(format!("{name} needs \"{field}\""))),
            (true, false) => Err(ApiError::bad_request(format!(
                "{name} takes no \"{field}\""
            ))),
            _ => Ok(()),
        };
        let (value, counts, key) = match self.op {
            OpName::Add | OpName::Remove | OpName::Set | OpName::Write => (true, false, false),
            OpName::Inc | OpName::Dec | OpName::Grow => (false, true, false),
            OpName::Delete => (false, false, true),
        };
        needs("value", self.value.is_some(), value)?;
        if !counts {
            needs("by", self.by.is_some(), false)?;
        }
        needs("key", self.key.is_some(), key)?;
        // Refused before any operation is built: a deep one would be dropped by recursion.
        if self.path.len >= MAX_DEPTH {
            return Err(ApiError::too_deep(self.path.len + 1));
        }
        let bytes = match self.value.or(self.key) {
            Some(v) => v.bytes()?,
            None => Vec::new(),
        };
        let path = self
            .path
            .keys
            .into_iter()
            .map(JsonBytes::bytes)
            .collect::<Result<_, _>>()?;
        Ok(Write {
            op: self.op,
            value: bytes,
            by: self.by.unwrap_or(1),
            path,
            ack: self.ack.0,
            timeout: timeout(self.timeout_ms)?,
        })
    }
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

/// A value in a request: a string (stored as [`value::encode`] writes it) or
/// `{"hex": "..."}` (stored as those bytes).
#[derive(Debug, PartialEq, Eq)]
enum JsonBytes {
    Text(String),
    Hex(String),
}

impl JsonBytes {
    fn bytes(self) -> Result<Vec<u8>, ApiError> {
        match self {
            JsonBytes::Text(text) => Ok(value::encode(&text)),
            JsonBytes::Hex(digits) => unhex(&digits).ok_or_else(|| {
                ApiError::bad_request(format!("not pairs of hex digits: {digits:.40?}"))
            }),
        }
    }
}

impl<'de> Deserialize<'de> for JsonBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Expect;
        impl<'de> Visitor<'de> for Expect {
            type Value = JsonBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string or {"hex": "..."}"#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<JsonBytes, E> {
                Ok(JsonBytes::Text(text.to_owned()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<JsonBytes, E> {
                Ok(JsonBytes::Text(text))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonBytes, A::Error> {
                let only_hex = || de::Error::custom(r#"a value object is {"hex": "..."}"#);
                let mut hex = None;
                while let Some(field) = map.next_key::<String>()? {
                    if field != "hex" || hex.is_some() {
                        return Err(only_hex());
                    }
                    hex = Some(map.next_value::<String>()?);
                }
                hex.map(JsonBytes::Hex).ok_or_else(only_hex)
            }
        }
        d.deserialize_any(Expect)
    }
}

fn unhex(digits: &str) -> Option<Vec<u8>> {
    let digits = digits.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// A `path`: its first [`MAX_DEPTH`] keys, and how many it had.
#[derive(Default)]
struct PathJson {
    keys: Vec<JsonBytes>,
    len: usize,
}

impl<'de> Deserialize<'de> for PathJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Expect;
        impl<'de> Visitor<'de> for Expect {
            type Value = PathJson;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of map keys")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PathJson, A::Error> {
                let mut path = PathJson::default();
                loop {
                    // Keys past the depth limit are counted, not kept: the path is refused.
                    let more = if path.keys.len() < MAX_DEPTH {
                        seq.next_element::<JsonBytes>()?
                            .map(|key| path.keys.push(key))
                            .is_some()
                    } else {
                        seq.next_element::<IgnoredAny>()?.is_some()
                    };
                    if !more {
                        return Ok(path);
                    }
                    path.len += 1;
                }
            }
        }
        d.deserialize_seq(Expect)
    }
}

/// An acknowledgement level: `"local"`, a number of peers, `"majority"` or `"all"`.
#[derive(Default)]
struct AckJson(Ack);

impl<'de> Deserialize<'de> for AckJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Expect;
        impl Visitor<'_> for Expect {
            type Value = AckJson;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    r#""local", a number of peers up to {MAX_PEERS}, "majority" or "all""#
                )
            }
            fn visit_str<E: de::Error>(self, level: &str) -> Result<AckJson, E> {
                match level {
                    "local" => Ok(AckJson(Ack::Local)),
                    "majority" => Ok(AckJson(Ack::Majority)),
                    "all" => Ok(AckJson(Ack::All)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(level), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, peers: u64) -> Result<AckJson, E> {
                match usize::try_from(peers) {
                    Ok(0) => Ok(AckJson(Ack::Local)),
                    Ok(n) if n <= MAX_PEERS => Ok(AckJson(Ack::Peers(n))),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(peers), &self)),
                }
            }
        }
        d.deserialize_any(Expect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Write, String> {
        let body: WriteBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
        body.check().map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn values_are_strings_or_hex() {
        let write = parse(r#"{"op":"add","value":"milk"}"#).unwrap();
        assert_eq!(write.value, value::encode("milk"));
        let write = parse(r#"{"op":"add","value":{"hex":"ff0010"}}"#).unwrap();
        assert_eq!(write.value, [0xff, 0x00, 0x10]);
        for bad in [
            r#"{"hex":"f"}"#,
            r#"{"hex":"zz"}"#,
            r#"{"hex":"é1"}"#,
            r#"{"hex":"00","hex":"00"}"#,
            r#"{"hex":"00","other":1}"#,
            r#"{}"#,
            "7",
            "null",
            "[0,0,0]",
        ] {
            assert!(
                parse(&format!(r#"{{"op":"add","value":{bad}}}"#)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn levels_and_paths_are_bounded() {
        assert_eq!(parse(r#"{"op":"inc","ack":2}"#).unwrap().ack, Ack::Peers(2));
        assert_eq!(parse(r#"{"op":"inc","ack":"all"}"#).unwrap().ack, Ack::All);
        for bad in [r#""most""#, "-1", "65537", "1.5", "[1]"] {
            assert!(
                parse(&format!(r#"{{"op":"inc","ack":{bad}}}"#)).is_err(),
                "{bad}"
            );
        }
        let deep = format!(
            r#"{{"op":"inc","path":[{}"k"]}}"#,
            r#""k","#.repeat(100_000)
        );
        let refused = parse(&deep).err().unwrap_or_default();
        assert!(
            refused.contains("too_deep") && refused.contains("100002"),
            "{refused}"
        );
        let write = parse(r#"{"op":"inc","path":["a",{"hex":"01"}]}"#).unwrap();
        assert_eq!(write.path, [value::encode("a"), vec![1]]);
    }
}
