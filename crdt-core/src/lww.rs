//! The last-writer-wins register.

use alloc::boxed::Box;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Crdt, HlcTimestamp, ReplicaId, Reset};

/// When and where a write happened: the total order of last-writer-wins.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Stamp {
    /// The writer's hybrid logical clock reading; compared first.
    pub time: HlcTimestamp,
    /// The writer; breaks ties between equal readings.
    pub replica: ReplicaId,
}

impl Stamp {
    /// The stamp as integers that order as the stamp does: tuple comparison of plain integers
    /// compiles to a short chain of compares where the derived order builds `Ordering`s.
    fn key(&self) -> (u64, u32, u64) {
        (self.time.wall_ms, self.time.logical, self.replica.get())
    }
}

/// A register that keeps the write with the greatest [`Stamp`]: hybrid logical clock timestamp
/// first, then replica id.
///
/// Concurrent writes are resolved silently; use [`MvRegister`](crate::MvRegister) to see them.
/// Two writes with the same stamp can only come from a replica reusing its clock readings; the
/// greater value wins then, so even that merges deterministically.
///
/// [`reset`](Reset::reset) (what a map does when its key is removed) empties the register and
/// keeps the stamp it observed as a *floor*: writes stamped at or below it stay hidden, later
/// ones show. Writers stamp with a hybrid logical clock that has seen what they overwrite, so
/// every write made after the reset, or concurrently with it and later in time, shows; a write
/// concurrent with the reset but stamped before what it observed stays hidden, as it would
/// have lost to that value anyway.
///
/// ```
/// use crdt_core::{Crdt, Hlc, LwwRegister, ReplicaId};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let (mut clock_a, mut clock_b) = (Hlc::new(60_000), Hlc::new(60_000));
/// let mut x = LwwRegister::new();
/// let mut y = LwwRegister::new();
/// x.set(clock_a.now(1_000), a, "draft");
/// y.set(clock_b.now(1_005), b, "final");
/// x.merge(&y);
/// assert_eq!(x.get(), Some(&"final"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct LwwRegister<T> {
    /// The winning write; always stamped above `floor`.
    current: Option<(Stamp, T)>,
    /// The latest stamp a reset observed. Boxed because it is rare (only after a reset): the
    /// register stays 48 bytes for a `u64` value instead of 72, so a merge walks fewer cache lines.
    floor: Option<Box<Stamp>>,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        LwwRegister {
            current: None,
            floor: None,
        }
    }
}

impl<T: Ord + Clone> LwwRegister<T> {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` at `time` on behalf of `replica`; returns the delta (the write itself).
    ///
    /// A write older than the current one is kept out, exactly as if it had arrived by merge.
    pub fn set(&mut self, time: HlcTimestamp, replica: ReplicaId, value: T) -> LwwRegister<T> {
        let delta = LwwRegister {
            current: Some((Stamp { time, replica }, value)),
            floor: None,
        };
        self.merge_ref(&delta);
        delta
    }

    // Inlined: a merge is a few compares, less than the call, and callers merge in loops.
    #[inline]
    fn merge_ref(&mut self, other: &Self) {
        // Floors are rare (only after a reset): tested first, handled out of line.
        if let Some(floor) = &other.floor {
            self.raise_floor(**floor);
        }
        if let Some((stamp, value)) = &other.current {
            let newer = match &self.current {
                // Stamps almost always differ: the value breaks only a (reused) tie.
                Some((ours, our_value)) => {
                    let (theirs, ours) = (stamp.key(), ours.key());
                    theirs > ours || (theirs == ours && value > our_value)
                }
                None => Some(*stamp) > self.floor(),
            };
            if newer {
                self.current = Some((*stamp, value.clone()));
            }
        }
    }

    #[cold]
    fn raise_floor(&mut self, floor: Stamp) {
        if Some(floor) > self.floor() {
            self.floor = Some(Box::new(floor));
            if self.current.as_ref().is_some_and(|c| c.0 <= floor) {
                self.current = None;
            }
        }
    }
}

impl<T> LwwRegister<T> {
    /// The current value, if any write has been seen.
    pub fn get(&self) -> Option<&T> {
        self.current.as_ref().map(|c| &c.1)
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> Option<Stamp> {
        self.current.as_ref().map(|c| c.0)
    }

    /// The latest stamp a reset observed: writes at or below it stay hidden.
    pub fn floor(&self) -> Option<Stamp> {
        self.floor.as_deref().copied()
    }

    /// The latest stamp this state holds, of its value or its floor.
    pub fn latest(&self) -> Option<Stamp> {
        self.stamp().max(self.floor())
    }
}

impl<T: Ord + Clone + core::fmt::Debug> Reset for LwwRegister<T> {
    fn reset(&mut self) -> Self {
        if let Some((stamp, _)) = self.current.take() {
            if Some(stamp) > self.floor() {
                self.floor = Some(Box::new(stamp));
            }
        }
        LwwRegister {
            current: None,
            floor: self.floor.clone(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LwwRegister<T> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "LwwRegister", bound = "T: Deserialize<'de>")]
        struct Raw<T> {
            current: Option<(Stamp, T)>,
            floor: Option<Box<Stamp>>,
        }
        let raw = Raw::<T>::deserialize(de)?;
        if raw
            .current
            .as_ref()
            .is_some_and(|c| Some(&c.0) <= raw.floor.as_deref())
        {
            return Err(serde::de::Error::custom(
                "a value stamped at or below the floor",
            ));
        }
        Ok(LwwRegister {
            current: raw.current,
            floor: raw.floor,
        })
    }
}

impl<T: Ord + Clone + core::fmt::Debug> Crdt for LwwRegister<T> {
    #[inline]
    fn merge(&mut self, other: &Self) {
        self.merge_ref(other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any field value, with the ends of each field's range likely.
    fn edgy_u64() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            Just(0),
            Just(1),
            Just(u64::MAX - 1),
            Just(u64::MAX),
            any::<u64>()
        ]
    }

    fn stamp() -> impl proptest::strategy::Strategy<Value = Stamp> {
        use proptest::prelude::*;
        let logical = prop_oneof![Just(0), Just(u32::MAX), any::<u32>()];
        (edgy_u64(), logical, edgy_u64()).prop_map(|(wall, logical, replica)| Stamp {
            time: HlcTimestamp::new(wall, logical),
            replica: ReplicaId::new(replica),
        })
    }

    proptest::proptest! {
        /// The key orders stamps as the derived order does at every width, maxima included.
        #[test]
        fn the_key_orders_as_the_stamp_at_the_edges(a in stamp(), b in stamp()) {
            proptest::prop_assert_eq!(a.key().cmp(&b.key()), a.cmp(&b));
            proptest::prop_assert_eq!(a.key().cmp(&a.key()), core::cmp::Ordering::Equal);
        }
    }

    /// The integer key orders stamps exactly as their derived order does.
    #[test]
    fn the_key_orders_as_the_stamp() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut stamp = || Stamp {
            time: HlcTimestamp::new(rng.u64(0..4), rng.u32(0..3)),
            replica: ReplicaId::new(rng.u64(0..3)),
        };
        for _ in 0..10_000 {
            let (a, b) = (stamp(), stamp());
            assert_eq!(a.key().cmp(&b.key()), a.cmp(&b), "{a:?} {b:?}");
        }
    }
}
