//! Values as bytes, with typed access.
//!
//! Set elements, register values and map keys are bytes on the wire and in the store, so one
//! keyspace holds values of any type. The typed handles ([`Node::set`](crate::node::Node::set)
//! and the others) write a value of type `T` as its postcard encoding and read it back the
//! same way; [`encode`] and [`decode`] do that for code that builds [`Op`](crate::Op)s itself.
//! Values are compared by their bytes (a set holds an element once per encoding), so a type
//! used as a set element or map key must encode equal values identically: not `HashMap` or
//! `HashSet` (postcard writes them in iteration order; use `BTreeMap`, `BTreeSet`), and no
//! floats that may be `-0.0` or NaN.
//!
//! A `String` written this way shows as text in [`Object`](crate::Object)'s `Display` (and so
//! in the command line).
//!
//! ```
//! use crdt_net::value;
//!
//! let bytes = value::encode(&("milk", 2u8));
//! assert_eq!(value::decode::<(String, u8)>(&bytes).unwrap(), ("milk".to_string(), 2));
//! assert!(value::decode::<u64>(&bytes).is_err());
//! ```

use core::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that does not decode as the type it was read as (written as another type, or by
/// another application under the same key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a value of {len} bytes does not decode as {wanted}")]
#[non_exhaustive]
pub struct ValueError {
    /// The type asked for.
    pub wanted: &'static str,
    /// The value's size.
    pub len: usize,
}

/// `value`'s bytes: its postcard encoding.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // postcard writes every serde data model type into a vector; only a `Serialize` impl that
    // fails by itself could end here, and its value is then written as empty.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Reads bytes written by [`encode`] as a `T`; every byte must be used.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValueError> {
    let error = || ValueError {
        wanted: std::any::type_name::<T>(),
        len: bytes.len(),
    };
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        _ => Err(error()),
    }
}

/// Bytes as [`Object`](crate::Object)'s `Display` shows them: a string written by [`encode`]
/// as that string, quoted; other UTF-8 text quoted too; anything else as hex.
///
/// ```
/// use crdt_net::value;
///
/// assert_eq!(value::show(&value::encode("milk")), "\"milk\"");
/// assert_eq!(value::show(&[0xff, 0x00]), "0xff00");
/// ```
pub fn show(bytes: &[u8]) -> String {
    format!("{:?}", Shown(bytes))
}

/// Shows bytes for people: a string written by [`encode`] as that string, quoted; other UTF-8
/// text (bytes written raw) quoted too; anything else as hex.
pub(crate) struct Shown<'a>(pub &'a [u8]);

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Ok(text) = decode::<String>(self.0) {
            return write!(f, "{text:?}");
        }
        match std::str::from_utf8(self.0) {
            Ok(text) => write!(f, "{text:?}"),
            Err(_) => {
                f.write_str("0x")?;
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}
