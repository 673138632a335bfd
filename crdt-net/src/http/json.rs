//! Objects and values as JSON.
//!
//! A value (set element, register value, map key) is stored as bytes. One that is a string
//! as [`value::encode`] writes it (what `node.set::<String>` and the command line write) is a
//! JSON string; any other is `{"hex": "..."}`. Writes take either form (`request.rs`), so
//! every value round-trips.
//!
//! Objects are written straight into the answer, not built as a tree of JSON values first:
//! that tree costs several times the text (a set of 100,000 short strings: about ten times).

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

use crate::value;
use crate::Object;

/// An object as `{"key": ..., "type": ..., "value": ...}` (the key if it has one): a
/// counter's number, a set's elements, a register's value (or `null`), a multi-value
/// register's values, a map's entries each as an object with its key, nested maps likewise.
/// Nesting is bounded by [`crate::MAX_DEPTH`], and so is the recursion here.
pub(super) struct ObjectJson<'a> {
    pub object: &'a Object,
    pub key: Option<KeyJson<'a>>,
}

/// A key: an object's own (a string), or a map entry's (bytes, as values are).
#[derive(Clone, Copy)]
pub(super) enum KeyJson<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> ObjectJson<'a> {
    /// `object`, without a key.
    pub fn new(object: &'a Object) -> Self {
        ObjectJson { object, key: None }
    }
}

impl Serialize for ObjectJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Fields in alphabetical order, as before.
        let mut map = s.serialize_map(None)?;
        match self.key {
            Some(KeyJson::Str(key)) => map.serialize_entry("key", key)?,
            Some(KeyJson::Bytes(key)) => map.serialize_entry("key", &BytesJson(key))?,
            None => {}
        }
        map.serialize_entry("type", self.object.type_name())?;
        map.serialize_entry("value", &ValueJson(self.object))?;
        map.end()
    }
}

/// An object's `value`.
struct ValueJson<'a>(&'a Object);

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Object::GCounter(c) => s.serialize_u64(c.value()),
            Object::PNCounter(c) => s.serialize_i64(c.value()),
            Object::Set(set) => s.collect_seq(set.iter().map(|v| BytesJson(v))),
            Object::Lww(r) => match r.get() {
                Some(v) => BytesJson(v).serialize(s),
                None => s.serialize_none(),
            },
            Object::Mv(r) => s.collect_seq(r.values().map(|v| BytesJson(v))),
            Object::Map(m) => {
                let mut seq = s.serialize_seq(None)?;
                for (k, v) in m.iter() {
                    seq.serialize_element(&ObjectJson {
                        object: v,
                        key: Some(KeyJson::Bytes(k)),
                    })?;
                }
                seq.end()
            }
            Object::Empty => s.serialize_none(),
        }
    }
}

/// Bytes as JSON: the string they encode, else `{"hex": ...}`.
struct BytesJson<'a>(&'a [u8]);

impl Serialize for BytesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match value::decode::<String>(self.0) {
            Ok(text) => s.serialize_str(&text),
            Err(_) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("hex", &hex(self.0))?;
                map.end()
            }
        }
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
