//! The layout OR-Sets and OR-Maps share: a leading *shape* varint, the causal context only
//! when it says something the entries do not, then each entry with its dots.
//!
//! A one-add delta is an element, its dot, and framing. Framing it with separate length
//! prefixes (the vector's, the cloud's, the entries', each element's dots') cost four bytes;
//! the shape folds what they said into one: the entry count, whether the context is written,
//! and whether entries carry a list of dots or exactly one each.

use alloc::vec::Vec;
use core::marker::PhantomData;
use serde::de::SeqAccess;
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::causal::ascending_dots;
use crate::dots::Dots;
use crate::{CausalContext, Dot};

/// Bit 1 of the shape: the context follows.
const CTX_WRITTEN: u64 = 0b10;
/// Bit 0 of the shape: each entry carries a list of dots (some entry has other than one).
const DOT_LISTS: u64 = 0b01;

/// One entry to write: its key, its dots (none for a map key that is not present), and for
/// maps its value.
pub(crate) type Entry<'a, K, V> = (&'a K, Option<&'a Dots>, Option<&'a V>);

/// Writes `ctx` and `entries` (ascending by key, `len` of them, each with a value if `values`)
/// in the shared layout.
///
/// `entries` is walked twice, to find the shape first. The context is written without the
/// cloud dots the entries carry (the reader adds them back), so a delta's dot appears once.
pub(crate) fn serialize<'a, S, K, V, I>(
    ser: S,
    ctx: &CausalContext,
    len: usize,
    values: bool,
    entries: impl Fn() -> I,
) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    K: Serialize + 'a,
    V: Serialize + 'a,
    I: Iterator<Item = Entry<'a, K, V>>,
{
    let carried =
        ctx.in_cloud(entries().flat_map(|(_, dots, _)| dots.into_iter().flat_map(Dots::iter)));
    let written = ctx.without(&carried);
    let with_ctx = !written.is_empty();
    let lists = entries().any(|(_, dots, _)| dots.map_or(0, Dots::len) != 1);
    let shape = ((len as u64) << 2)
        | if with_ctx { CTX_WRITTEN } else { 0 }
        | if lists { DOT_LISTS } else { 0 };
    let fields = 1 + usize::from(with_ctx) + len.saturating_mul(2 + usize::from(values));
    let mut t = ser.serialize_tuple(fields)?;
    t.serialize_element(&shape)?;
    if with_ctx {
        t.serialize_element(&written)?;
    }
    for (key, dots, value) in entries() {
        t.serialize_element(key)?;
        match dots {
            Some(dots) if !lists => t.serialize_element(&OneDot(dots))?,
            Some(dots) => t.serialize_element(dots)?,
            None => t.serialize_element(&[] as &[Dot])?,
        }
        if let Some(value) = value {
            t.serialize_element(value)?;
        }
    }
    t.end()
}

/// The one dot of an entry, written bare.
struct OneDot<'a>(&'a Dots);

impl Serialize for OneDot<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self.0.iter().next() {
            Some(dot) => dot.serialize(ser),
            // Not reached: the shape says "one dot each" only when every entry has one.
            None => Err(serde::ser::Error::custom("an entry without its dot")),
        }
    }
}

/// What [`deserialize`] read: the context (with the carried dots back in its cloud) and the
/// entries, ascending by key, each with its dots (`None`: none, allowed only for maps) and,
/// for maps, its value.
pub(crate) type Decoded<K, V> = (CausalContext, Vec<(K, Option<Dots>, Option<V>)>);

/// Reads what [`serialize`] writes, checking that it is what `serialize` would have written:
/// keys strictly ascending, a written context non-empty, dot lists only when some entry needs
/// one, and the context's cloud compact once the carried dots are back.
///
/// With `values`, each entry has a value and may have no dots (a map key not present); without,
/// every entry needs a dot (a set element). Memory grows with the bytes read: the entry count
/// of the shape is never used to size anything, and every entry takes at least one byte.
pub(crate) fn deserialize<'de, D, K, V>(de: D, values: bool) -> Result<Decoded<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    struct Visit<K, V>(bool, PhantomData<fn() -> (K, V)>);

    impl<'de, K, V> serde::de::Visitor<'de> for Visit<K, V>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        type Value = Decoded<K, V>;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("a shape, a context and dotted entries")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            read(&mut seq, self.0)
        }
    }

    de.deserialize_tuple(usize::MAX, Visit::<K, V>(values, PhantomData))
}

fn read<'de, A, K, V>(seq: &mut A, values: bool) -> Result<Decoded<K, V>, A::Error>
where
    A: SeqAccess<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    let shape: u64 = next(seq)?;
    let mut ctx = if shape & CTX_WRITTEN != 0 {
        let ctx: CausalContext = next(seq)?;
        if ctx.is_empty() {
            return Err(invalid("an empty context written"));
        }
        ctx
    } else {
        CausalContext::new()
    };
    let lists = shape & DOT_LISTS != 0;
    let mut needs_list = false;
    let mut entries: Vec<(K, Option<Dots>, Option<V>)> = Vec::new();
    for _ in 0..shape >> 2 {
        let key: K = next(seq)?;
        if entries.last().is_some_and(|last| last.0 >= key) {
            return Err(invalid("keys out of canonical order"));
        }
        let dots = if lists {
            let DotList(list) = next(seq)?;
            needs_list |= list.len() != 1;
            Dots::from_sorted(list)
        } else {
            Some(Dots::one(next::<A, Dot>(seq)?))
        };
        if dots.is_none() && !values {
            return Err(invalid("an element without dots"));
        }
        let value = if values { Some(next(seq)?) } else { None };
        entries.push((key, dots, value));
    }
    if lists && !needs_list {
        return Err(invalid("dot lists where every entry has one dot"));
    }
    ctx.add_carried(entries.iter().flat_map(|e| e.1.iter().flat_map(Dots::iter)))
        .map_err(|()| invalid("a cloud dot written beside the entry carrying it"))?;
    Ok((ctx, entries))
}

fn next<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(seq: &mut A) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| serde::de::Error::custom("input ends inside a dotted store"))
}

fn invalid<E: serde::de::Error>(why: &'static str) -> E {
    E::custom(why)
}

/// An entry's dots as a list: ascending, possibly empty.
struct DotList(Vec<Dot>);

impl<'de> Deserialize<'de> for DotList {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        ascending_dots(de).map(DotList)
    }
}
