//! Objects and values as JSON.
//!
//! A value (set element, register value, map key) is stored as bytes. One that is a string
//! as [`value::encode`] writes it (what `node.set::<String>` and the command line write) is a
//! JSON string; any other is `{"hex": "..."}`. Writes take either form (`request.rs`), so
//! every value round-trips.

use serde_json::{json, Value};

use crate::value;
use crate::Object;

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
    json!({ "type": object.type_name(), "value": value })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
