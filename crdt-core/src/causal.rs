//! Causal contexts: the set of events a replica has seen, kept compact.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::deserialize_ascending;
use crate::{Crdt, Dot, ReplicaId, VersionVector};

/// A set of dots, stored as a version vector (the gap-free prefix of each replica's events) plus
/// a *dot cloud* of the events seen out of order.
///
/// Deltas arrive in any order, so a replica can see `(r, 5)` before `(r, 4)`; the cloud holds such
/// dots until the gap closes, then they fold into the vector. The representation is canonical
/// (no cloud dot is at or next to its replica's vector entry), so equal sets compare equal.
///
/// ```
/// use crdt_core::{CausalContext, Dot, ReplicaId};
///
/// let r = ReplicaId::new(7);
/// let mut ctx = CausalContext::new();
/// ctx.insert(Dot::new(r, 2));
/// assert!(!ctx.contains(Dot::new(r, 1)));
/// ctx.insert(Dot::new(r, 1));
/// assert_eq!(ctx.vv().get(r), 2); // the gap closed
/// assert!(ctx.cloud().next().is_none());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CausalContext {
    vv: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// The empty context.
    pub const fn new() -> Self {
        CausalContext {
            vv: VersionVector::new(),
            cloud: BTreeSet::new(),
        }
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        self.vv.contains(dot) || self.cloud.contains(&dot)
    }

    /// Records that `dot` has been seen.
    pub fn insert(&mut self, dot: Dot) {
        let seen = self.vv.get(dot.replica);
        if dot.counter <= seen {
            return;
        }
        if Some(dot.counter) == seen.checked_add(1) {
            self.vv.raise(dot.replica, dot.counter);
            self.compact();
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Records the dots `(replica, from..=to)`; returns how many went to the cloud.
    pub(crate) fn insert_range(&mut self, replica: ReplicaId, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        if from <= self.vv.get(replica).saturating_add(1) {
            self.vv.raise(replica, to);
            self.compact();
            return 0;
        }
        (from..=to).for_each(|c| {
            self.cloud.insert(Dot::new(replica, c));
        });
        to - from + 1
    }

    /// Makes a fresh dot for `replica`, records it and returns it.
    ///
    /// The counter is above every dot of `replica` seen so far, in the vector or the cloud, so a
    /// replica restarted from an older state never reuses a dot it has already handed out and
    /// received back from a peer.
    pub fn next_dot(&mut self, replica: ReplicaId) -> Dot {
        let highest_in_cloud = self
            .cloud
            .range(Dot::new(replica, 0)..=Dot::new(replica, u64::MAX))
            .next_back()
            .map_or(0, |d| d.counter);
        let counter = self.vv.get(replica).max(highest_in_cloud).saturating_add(1);
        let dot = Dot::new(replica, counter);
        self.insert(dot);
        dot
    }

    /// The gap-free part: every replica's events `1..=n`.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// The dots seen beyond a gap, in order.
    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }

    /// Whether no dot has been seen.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// Folds cloud dots that now continue their replica's prefix into the vector.
    fn compact(&mut self) {
        let vv = &mut self.vv;
        // Ascending order visits each replica's dots from low to high, so one pass closes every
        // gap that can be closed.
        self.cloud.retain(|dot| {
            let seen = vv.get(dot.replica);
            if dot.counter <= seen {
                false
            } else if Some(dot.counter) == seen.checked_add(1) {
                vv.raise(dot.replica, dot.counter);
                false
            } else {
                true
            }
        });
    }
}

impl Crdt for CausalContext {
    fn merge(&mut self, other: &Self) {
        self.vv.merge(&other.vv);
        if !other.cloud.is_empty() {
            self.cloud.extend(other.cloud.iter().copied());
        }
        if !self.cloud.is_empty() {
            self.compact();
        }
    }
}

impl core::fmt::Debug for CausalContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CausalContext")
            .field("vv", &self.vv)
            .field("cloud", &self.cloud)
            .finish()
    }
}

impl FromIterator<Dot> for CausalContext {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut ctx = CausalContext::new();
        for dot in iter {
            ctx.insert(dot);
        }
        ctx
    }
}

impl Serialize for CausalContext {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("CausalContext", 2)?;
        s.serialize_field("vv", &self.vv)?;
        s.serialize_field("cloud", &Cloud(&self.cloud))?;
        s.end()
    }
}

struct Cloud<'a>(&'a BTreeSet<Dot>);

impl Serialize for Cloud<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(self.0)
    }
}

impl<'de> Deserialize<'de> for CausalContext {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "CausalContext")]
        struct Raw {
            vv: VersionVector,
            #[serde(deserialize_with = "ascending_dots")]
            cloud: Vec<Dot>,
        }
        let raw = Raw::deserialize(de)?;
        if raw
            .cloud
            .iter()
            .any(|d| d.counter <= raw.vv.get(d.replica).saturating_add(1))
        {
            return Err(serde::de::Error::custom("causal context is not compacted"));
        }
        Ok(CausalContext {
            vv: raw.vv,
            cloud: raw.cloud.into_iter().collect(),
        })
    }
}

pub(crate) fn ascending_dots<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Dot>, D::Error> {
    deserialize_ascending(de, |d: &Dot| d)
}
