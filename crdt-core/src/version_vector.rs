//! Version vectors: per-replica event counts.

use alloc::vec::Vec;
use core::cmp::Ordering;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use crate::codec::deserialize_ascending;
use crate::{Crdt, Dot, ReplicaId};

/// For each replica, how many of its events are included: the dots `(r, 1..=n)`.
///
/// Kept as a vector sorted by replica, because replica sets are small and a linear merge of two
/// sorted vectors beats any tree. One entry is stored inline, so the delta of a counter increment
/// or of a single event costs no allocation. Zero entries are never stored, so equal vectors are
/// identical.
///
/// ```
/// use crdt_core::{Crdt, Dot, ReplicaId, VersionVector};
///
/// let a = ReplicaId::new(1);
/// let mut vv = VersionVector::new();
/// let dot = vv.next_dot(a);
/// assert_eq!(dot, Dot::new(a, 1));
/// assert!(vv.contains(dot));
/// assert_eq!(vv.get(a), 1);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: SmallVec<[(ReplicaId, u64); 1]>,
}

impl VersionVector {
    /// The empty vector: no events seen.
    pub const fn new() -> Self {
        VersionVector {
            entries: SmallVec::new_const(),
        }
    }

    /// How many events of `replica` are included.
    #[inline]
    pub fn get(&self, replica: ReplicaId) -> u64 {
        match self.position(replica) {
            Ok(i) => self.entries.get(i).map_or(0, |e| e.1),
            Err(_) => 0,
        }
    }

    /// Whether the event `dot` is included.
    #[inline]
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.replica)
    }

    /// Records the next event of `replica` and returns its dot.
    pub fn next_dot(&mut self, replica: ReplicaId) -> Dot {
        let counter = self.get(replica).saturating_add(1);
        self.raise(replica, counter);
        Dot::new(replica, counter)
    }

    /// A vector holding one entry (nothing if `counter` is 0).
    #[inline]
    pub fn single(replica: ReplicaId, counter: u64) -> Self {
        if counter == 0 {
            return VersionVector::new();
        }
        // Built in place: the entry fits inline, so no insertion and no allocation.
        VersionVector {
            entries: SmallVec::from_buf([(replica, counter)]),
        }
    }

    /// Adds `n` to the count of `replica`, saturating, and returns the new count.
    #[inline]
    pub(crate) fn add(&mut self, replica: ReplicaId, n: u64) -> u64 {
        match self.position(replica) {
            Ok(i) => match self.entries.get_mut(i) {
                Some(entry) => {
                    entry.1 = entry.1.saturating_add(n);
                    entry.1
                }
                None => 0,
            },
            Err(i) => {
                if n > 0 {
                    self.entries.insert(i, (replica, n));
                }
                n
            }
        }
    }

    /// Raises the count of `replica` to at least `counter`.
    #[inline]
    pub fn raise(&mut self, replica: ReplicaId, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.position(replica) {
            Ok(i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = entry.1.max(counter);
                }
            }
            Err(i) => self.entries.insert(i, (replica, counter)),
        }
    }

    /// The replicas and counts, in replica order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ReplicaId, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// How many replicas have a non-zero count.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event is included.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether every event in `other` is also in `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.iter().all(|(r, n)| self.get(r) >= n)
    }

    /// The sum of all counts, saturating.
    #[inline]
    pub fn total(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.1))
    }

    #[inline]
    fn position(&self, replica: ReplicaId) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| e.0.cmp(&replica))
    }
}

impl Crdt for VersionVector {
    fn merge(&mut self, other: &Self) {
        // Deltas carry one or two entries: look each up rather than walk all of ours.
        if other.entries.len() <= 2 {
            for &(r, n) in &other.entries {
                self.raise(r, n);
            }
            return;
        }
        let mut merged = SmallVec::with_capacity(self.entries.len().max(other.entries.len()));
        let mut ours = self.entries.iter().peekable();
        let mut theirs = other.entries.iter().peekable();
        loop {
            let next = match (ours.peek(), theirs.peek()) {
                (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                    Ordering::Less => ours.next().copied(),
                    Ordering::Greater => theirs.next().copied(),
                    Ordering::Equal => {
                        let entry = (a.0, a.1.max(b.1));
                        ours.next();
                        theirs.next();
                        Some(entry)
                    }
                },
                (Some(_), None) => ours.next().copied(),
                (None, Some(_)) => theirs.next().copied(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.entries = merged;
    }
}

impl core::fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (r, n) in iter {
            vv.raise(r, n);
        }
        vv
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let entries: Vec<(ReplicaId, u64)> =
            deserialize_ascending(de, |e: &(ReplicaId, u64)| &e.0)?;
        if entries.iter().any(|e| e.1 == 0) {
            return Err(serde::de::Error::custom("zero count in version vector"));
        }
        Ok(VersionVector {
            entries: SmallVec::from_vec(entries),
        })
    }
}

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(&self.entries)
    }
}
