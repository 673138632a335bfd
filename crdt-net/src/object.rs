//! The values a replica stores: one enum over every crdt-core type, so one keyspace can hold
//! counters, sets, registers and nested maps side by side.

use core::fmt;
use std::cell::Cell;

use crdt_core::{
    Crdt, Decompose, GCounter, HlcTimestamp, LwwRegister, MvRegister, OrMap, OrSet, PNCounter,
    ReplicaId,
};
use serde::{de::Error as _, Deserialize, Deserializer, Serialize};

use crate::value::Shown;

/// A replicated object: any crdt-core type, nested maps included.
///
/// `Object` is itself a lattice: the same variants merge by their own merge, and when two
/// replicas write *different* types under one key concurrently, the variant declared later in
/// this enum wins and the other's writes are dropped. That keeps merging total; applications
/// avoid the case by giving each key one type.
///
/// Maps nest at most [`MAX_DEPTH`] objects deep: a deeper object is refused when decoded (so a
/// peer cannot exhaust a decoder's stack) and when made by a local update.
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize)]
#[non_exhaustive]
pub enum Object {
    /// Nothing written yet (the bottom).
    #[default]
    Empty,
    /// A grow-only counter.
    GCounter(GCounter),
    /// An up-down counter.
    PNCounter(PNCounter),
    /// An add-wins set of values.
    Set(OrSet<Vec<u8>>),
    /// A last-writer-wins register.
    Lww(LwwRegister<Vec<u8>>),
    /// A multi-value register.
    Mv(MvRegister<Vec<u8>>),
    /// A map of nested objects.
    Map(OrMap<Vec<u8>, Object>),
}

/// How deep objects may nest (a top-level counter is 1 deep, a counter in a map 2, and so on).
pub const MAX_DEPTH: usize = 32;

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let _level = Nesting::enter()
            .ok_or_else(|| D::Error::custom("objects nested deeper than MAX_DEPTH"))?;
        Ok(match Repr::deserialize(de)? {
            Repr::Empty => Object::Empty,
            Repr::GCounter(c) => Object::GCounter(c),
            Repr::PNCounter(c) => Object::PNCounter(c),
            Repr::Set(s) => Object::Set(s),
            Repr::Lww(r) => Object::Lww(r),
            Repr::Mv(r) => Object::Mv(r),
            Repr::Map(m) => Object::Map(m),
        })
    }
}

/// `Object`'s layout, decoded by serde's derive; the nested objects of a map go through
/// `Object`'s own (depth-counting) `Deserialize`.
#[derive(Deserialize)]
#[serde(rename = "Object")]
enum Repr {
    Empty,
    GCounter(GCounter),
    PNCounter(PNCounter),
    Set(OrSet<Vec<u8>>),
    Lww(LwwRegister<Vec<u8>>),
    Mv(MvRegister<Vec<u8>>),
    Map(OrMap<Vec<u8>, Object>),
}

thread_local! {
    /// Objects being decoded on this thread, outermost to innermost.
    static NESTING: Cell<usize> = const { Cell::new(0) };
}

/// One level of an object being decoded; leaving it (even by an error) pops the level.
struct Nesting;

impl Nesting {
    fn enter() -> Option<Nesting> {
        NESTING.with(|depth| {
            let now = depth.get();
            (now < MAX_DEPTH).then(|| {
                depth.set(now + 1);
                Nesting
            })
        })
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        NESTING.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// An operation on an [`Object`]; [`Object::apply`] turns it into a delta.
///
/// It is encoded (a write forwarded to a key's replicas, see [`cluster`](crate::cluster)) as
/// serde's derive lays it out; decoding refuses an operation nested deeper than
/// [`MAX_DEPTH`], as for objects.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[non_exhaustive]
pub enum Op {
    /// Add to a grow-only counter.
    Inc(u64),
    /// Add to an up-down counter.
    PnInc(u64),
    /// Subtract from an up-down counter.
    PnDec(u64),
    /// Add an element to a set.
    Add(Vec<u8>),
    /// Remove an element from a set.
    Remove(Vec<u8>),
    /// Write a last-writer-wins register at a hybrid logical clock reading.
    Lww(HlcTimestamp, Vec<u8>),
    /// Write a multi-value register.
    Mv(Vec<u8>),
    /// Apply an operation to the value of a map key.
    Update(Vec<u8>, Box<Op>),
    /// Remove a map key, resetting its value (see [`OrMap`]).
    Delete(Vec<u8>),
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let _level = Nesting::enter()
            .ok_or_else(|| D::Error::custom("operations nested deeper than MAX_DEPTH"))?;
        Ok(match OpRepr::deserialize(de)? {
            OpRepr::Inc(n) => Op::Inc(n),
            OpRepr::PnInc(n) => Op::PnInc(n),
            OpRepr::PnDec(n) => Op::PnDec(n),
            OpRepr::Add(v) => Op::Add(v),
            OpRepr::Remove(v) => Op::Remove(v),
            OpRepr::Lww(stamp, v) => Op::Lww(stamp, v),
            OpRepr::Mv(v) => Op::Mv(v),
            OpRepr::Update(key, inner) => Op::Update(key, inner),
            OpRepr::Delete(key) => Op::Delete(key),
        })
    }
}

/// `Op`'s layout for serde's derive; a nested operation goes through `Op`'s own
/// (depth-counting) `Deserialize`.
#[derive(Deserialize)]
#[serde(rename = "Op")]
enum OpRepr {
    Inc(u64),
    PnInc(u64),
    PnDec(u64),
    Add(Vec<u8>),
    Remove(Vec<u8>),
    Lww(HlcTimestamp, Vec<u8>),
    Mv(Vec<u8>),
    Update(Vec<u8>, Box<Op>),
    Delete(Vec<u8>),
}

impl Op {
    /// Bytes of the values it carries (keys, elements, register values), the largest part of
    /// its delta. Computed without recursion.
    pub fn value_bytes(&self) -> usize {
        let mut bytes = 0;
        let mut op = self;
        loop {
            match op {
                Op::Update(key, inner) => {
                    // A map's delta holds the key twice: in its key set and its value map.
                    bytes += 2 * key.len();
                    op = inner;
                }
                Op::Add(v) | Op::Remove(v) | Op::Lww(_, v) | Op::Mv(v) | Op::Delete(v) => {
                    return bytes + v.len()
                }
                Op::Inc(_) | Op::PnInc(_) | Op::PnDec(_) => return bytes,
            }
        }
    }

    /// How deep the object it makes nests (1 unless it updates a map). Computed without
    /// recursion.
    pub fn depth(&self) -> usize {
        let mut depth = 1;
        let mut op = self;
        while let Op::Update(_, inner) = op {
            depth += 1;
            op = inner;
        }
        depth
    }
}

/// An operation that does not fit the object's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMismatch {
    /// The object's type.
    pub found: &'static str,
    /// The type the operation needs.
    pub wanted: &'static str,
}

impl fmt::Display for TypeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the object is a {}, the operation needs a {}",
            self.found, self.wanted
        )
    }
}

impl std::error::Error for TypeMismatch {}

impl Object {
    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Empty => "empty object",
            Object::GCounter(_) => "g-counter",
            Object::PNCounter(_) => "pn-counter",
            Object::Set(_) => "set",
            Object::Lww(_) => "lww-register",
            Object::Mv(_) => "mv-register",
            Object::Map(_) => "map",
        }
    }

    /// Applies `op` on behalf of `replica` and returns the delta. An empty object takes the type
    /// the operation needs; an operation for another type changes nothing and is refused.
    pub fn apply(&mut self, replica: ReplicaId, op: &Op) -> Result<Object, TypeMismatch> {
        self.check(op)?;
        Ok(self.apply_checked(replica, op))
    }

    /// Whether `op` fits this object, nested map values included.
    fn check(&self, op: &Op) -> Result<(), TypeMismatch> {
        let wanted = Object::empty_for(op);
        match (self, op) {
            (Object::Empty, _) => Ok(()),
            (Object::Map(m), Op::Update(key, inner)) => {
                m.value_kept(key).map_or(Ok(()), |v| v.check(inner))
            }
            (found, _) if found.rank() == wanted.rank() => Ok(()),
            (found, _) => Err(TypeMismatch {
                found: found.type_name(),
                wanted: wanted.type_name(),
            }),
        }
    }

    fn apply_checked(&mut self, replica: ReplicaId, op: &Op) -> Object {
        if *self == Object::Empty {
            *self = Object::empty_for(op);
        }
        match (self, op) {
            (Object::GCounter(c), Op::Inc(n)) => Object::GCounter(c.inc(replica, *n)),
            (Object::PNCounter(c), Op::PnInc(n)) => Object::PNCounter(c.inc(replica, *n)),
            (Object::PNCounter(c), Op::PnDec(n)) => Object::PNCounter(c.dec(replica, *n)),
            (Object::Set(s), Op::Add(x)) => Object::Set(s.add(replica, x.clone())),
            (Object::Set(s), Op::Remove(x)) => Object::Set(s.remove(x)),
            (Object::Lww(r), Op::Lww(t, v)) => Object::Lww(r.set(*t, replica, v.clone())),
            (Object::Mv(r), Op::Mv(v)) => Object::Mv(r.write(replica, v.clone())),
            (Object::Map(m), Op::Update(key, inner)) => {
                Object::Map(m.update(replica, key.clone(), |value| {
                    value.apply_checked(replica, inner)
                }))
            }
            (Object::Map(m), Op::Delete(key)) => Object::Map(m.remove(key)),
            // `check` rules this out.
            _ => Object::Empty,
        }
    }

    fn empty_for(op: &Op) -> Object {
        match op {
            Op::Inc(_) => Object::GCounter(GCounter::new()),
            Op::PnInc(_) | Op::PnDec(_) => Object::PNCounter(PNCounter::new()),
            Op::Add(_) | Op::Remove(_) => Object::Set(OrSet::new()),
            Op::Lww(..) => Object::Lww(LwwRegister::new()),
            Op::Mv(_) => Object::Mv(MvRegister::new()),
            Op::Update(..) | Op::Delete(_) => Object::Map(OrMap::new()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Object::Empty => 0,
            Object::GCounter(_) => 1,
            Object::PNCounter(_) => 2,
            Object::Set(_) => 3,
            Object::Lww(_) => 4,
            Object::Mv(_) => 5,
            Object::Map(_) => 6,
        }
    }

    /// The running total `replica` would reach by applying `op`, if `op` counts (an increment
    /// or decrement, possibly in nested maps); `None` for other operations. Saturates.
    pub(crate) fn counter_total_after(&self, replica: ReplicaId, op: &Op) -> Option<u64> {
        let mut object = Some(self);
        let mut op = op;
        while let Op::Update(key, inner) = op {
            object = match object {
                Some(Object::Map(map)) => map.value_kept(key),
                _ => None,
            };
            op = inner;
        }
        let total = |counter: Option<&GCounter>| counter.map_or(0, |c| c.total_of(replica));
        let (before, n) = match (object, op) {
            (Some(Object::GCounter(c)), Op::Inc(n)) => (total(Some(c)), n),
            (Some(Object::PNCounter(c)), Op::PnInc(n)) => (total(Some(c.increments())), n),
            (Some(Object::PNCounter(c)), Op::PnDec(n)) => (total(Some(c.decrements())), n),
            (_, Op::Inc(n) | Op::PnInc(n) | Op::PnDec(n)) => (0, n),
            _ => return None,
        };
        Some(before.saturating_add(*n))
    }

    /// How deep the object nests: 1 for anything but a map, 1 + the deepest value for a map.
    /// (Computed without recursion, so any object can be measured.)
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1)];
        while let Some((object, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            if let Object::Map(map) = object {
                stack.extend(map.values_kept().map(|(_, v)| (v, depth + 1)));
            }
        }
        deepest
    }

    /// The latest hybrid-logical-clock time of any last-writer-wins register in the object,
    /// nested maps included (removed keys too, whose floors count: a floor far ahead would
    /// hide every write until then): what a receiver checks against its clock.
    pub fn latest_stamp(&self) -> Option<HlcTimestamp> {
        match self {
            Object::Lww(register) => register.latest().map(|s| s.time),
            Object::Map(map) => map
                .values_kept()
                .filter_map(|(_, value)| value.latest_stamp())
                .max(),
            _ => None,
        }
    }

    /// How many entries [`Decompose::split`] would cut (elements or keys); 1 for the rest.
    pub fn entries(&self) -> usize {
        match self {
            Object::Set(s) => s.len().max(1),
            // Removed keys keep a (reset) value, which a split cuts as well.
            Object::Map(m) => m.values_kept().count().max(1),
            _ => 1,
        }
    }
}

impl Crdt for Object {
    fn merge(&mut self, other: &Self) {
        match (&mut *self, other) {
            (Object::GCounter(a), Object::GCounter(b)) => a.merge(b),
            (Object::PNCounter(a), Object::PNCounter(b)) => a.merge(b),
            (Object::Set(a), Object::Set(b)) => a.merge(b),
            (Object::Lww(a), Object::Lww(b)) => a.merge(b),
            (Object::Mv(a), Object::Mv(b)) => a.merge(b),
            (Object::Map(a), Object::Map(b)) => a.merge(b),
            // Different types: a linear sum of lattices, the later variant wins.
            (ours, theirs) => {
                if theirs.rank() > ours.rank() {
                    *ours = theirs.clone();
                }
            }
        }
    }
}

impl crdt_core::Reset for Object {
    /// Resets the object as its type does (what removing its key from a map does).
    fn reset(&mut self) -> Self {
        match self {
            Object::Empty => Object::Empty,
            Object::GCounter(c) => Object::GCounter(c.reset()),
            Object::PNCounter(c) => Object::PNCounter(c.reset()),
            Object::Set(s) => Object::Set(s.reset()),
            Object::Lww(r) => Object::Lww(r.reset()),
            Object::Mv(r) => Object::Mv(r.reset()),
            Object::Map(m) => Object::Map(m.reset()),
        }
    }
}

impl Decompose for Object {
    fn split(&self, max_entries: usize) -> Vec<Self> {
        match self {
            Object::Set(s) => s.split(max_entries).into_iter().map(Object::Set).collect(),
            Object::Map(m) => m.split(max_entries).into_iter().map(Object::Map).collect(),
            other => vec![other.clone()],
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Empty => f.write_str("(empty)"),
            Object::GCounter(c) => write!(f, "{}", c.value()),
            Object::PNCounter(c) => write!(f, "{}", c.value()),
            Object::Set(s) => f.debug_set().entries(s.iter().map(|v| Shown(v))).finish(),
            Object::Lww(r) => match r.get() {
                Some(v) => write!(f, "{:?}", Shown(v)),
                None => f.write_str("(unset)"),
            },
            Object::Mv(r) => f
                .debug_list()
                .entries(r.values().map(|v| Shown(v)))
                .finish(),
            Object::Map(m) => {
                let mut map = f.debug_map();
                for (k, v) in m.iter() {
                    map.entry(&Shown(k), &format_args!("{v}"));
                }
                map.finish()
            }
        }
    }
}
