//! The versioned binary encoding of every type: one format-version byte, then postcard.
//!
//! The layout of each type is specified, with golden vectors, in `docs/wire-format.md`.
//! Encodings are canonical: maps and sets are written in ascending key order and decoders reject
//! anything else (unsorted or repeated keys, zero counts, uncompacted contexts, dots outside their
//! context), so a value has exactly one encoding and equal states have identical bytes.
//!
//! Decoding never panics on any input, and the structures it builds grow with the input
//! (collections are filled element by element, never pre-sized from a length the input claims).
//!
//! ```
//! use crdt_core::{codec, GCounter, ReplicaId};
//!
//! let mut c = GCounter::new();
//! c.inc(ReplicaId::new(1), 3);
//! let bytes = codec::encode(&c);
//! assert_eq!(bytes, [0x04, 0x01, 0x01, 0x03, 0x00]);
//! assert_eq!(codec::decode::<GCounter>(&bytes), Ok(c));
//! assert_eq!(
//!     codec::decode::<GCounter>(&[0x03]),
//!     Err(codec::DecodeError::UnsupportedVersion(3))
//! );
//! ```

use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The format version this build writes and reads, the first byte of every encoding.
pub const FORMAT_VERSION: u8 = 4;

/// Encodes `value` as the format-version byte followed by its postcard encoding.
///
/// crdt-core's types always encode. Should an element type's own `Serialize` fail, the result is
/// the version byte alone, which [`decode`] reports as [`DecodeError::Truncated`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    // Our types contain nothing postcard refuses (no maps of unknown length, no untagged
    // enums), so only an element type's own failure lands here.
    if let Ok(out) = postcard::to_extend(value, out) {
        return out;
    }
    alloc::vec![FORMAT_VERSION]
}

/// Decodes a value written by [`encode`], checking the version byte and that no bytes are left.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(DecodeError::from)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// There were no bytes at all.
    Empty,
    /// The format-version byte names a version this build does not read.
    UnsupportedVersion(u8),
    /// The input ended in the middle of a value.
    Truncated,
    /// A value was complete, but this many bytes followed it.
    TrailingBytes(usize),
    /// The bytes are not a valid encoding: a bad varint, tag or UTF-8 string, or a structure
    /// that breaks an invariant (unsorted or repeated keys, zero counts, dots outside their
    /// causal context).
    Malformed,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("no bytes to decode"),
            DecodeError::UnsupportedVersion(v) => write!(
                f,
                "unsupported format version {v} (this build reads {FORMAT_VERSION})"
            ),
            DecodeError::Truncated => f.write_str("input ends in the middle of a value"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the end of the value"),
            DecodeError::Malformed => f.write_str("malformed or non-canonical encoding"),
        }
    }
}

impl core::error::Error for DecodeError {}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
            _ => DecodeError::Malformed,
        }
    }
}

/// Reads a sequence whose elements must be in strictly ascending `key` order.
pub(crate) fn deserialize_ascending<'de, D, E, K, F>(de: D, key: F) -> Result<Vec<E>, D::Error>
where
    D: Deserializer<'de>,
    E: Deserialize<'de>,
    K: Ord + ?Sized,
    F: Fn(&E) -> &K,
{
    deserialize_seq_where(de, |a, b| key(a) < key(b))
}

/// Reads a sequence in which every element is `in_order` after the one before it.
///
/// The vector grows element by element rather than from the length the input claims, so a
/// hostile length prefix cannot make us allocate more than the input can fill.
pub(crate) fn deserialize_seq_where<'de, D, E, F>(de: D, in_order: F) -> Result<Vec<E>, D::Error>
where
    D: Deserializer<'de>,
    E: Deserialize<'de>,
    F: Fn(&E, &E) -> bool,
{
    struct Checked<E, F>(F, PhantomData<fn() -> E>);

    impl<'de, E, F> Visitor<'de> for Checked<E, F>
    where
        E: Deserialize<'de>,
        F: Fn(&E, &E) -> bool,
    {
        type Value = Vec<E>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence in canonical order")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<E>, A::Error> {
            let mut out: Vec<E> = Vec::new();
            while let Some(item) = seq.next_element::<E>()? {
                if let Some(last) = out.last() {
                    if !(self.0)(last, &item) {
                        return Err(serde::de::Error::custom("sequence out of canonical order"));
                    }
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    de.deserialize_seq(Checked(in_order, PhantomData))
}
