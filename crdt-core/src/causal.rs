//! Causal contexts: the set of events a replica has seen, kept compact.

use alloc::vec::Vec;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cloud::Cloud;
use crate::codec::{deserialize_ascending, deserialize_seq_where};
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
    cloud: Cloud,
}

impl CausalContext {
    /// The empty context.
    pub const fn new() -> Self {
        CausalContext {
            vv: VersionVector::new(),
            cloud: Cloud::new(),
        }
    }

    /// Whether `dot` has been seen.
    // This and the other small lookups on every add and delta merge (here, in the cloud, the
    // version vector and `Dots`) are inlined: the sets are generic, so their code lives in the
    // caller's crate, where a call into this one costs about as much as these bodies.
    #[inline]
    pub fn contains(&self, dot: Dot) -> bool {
        self.vv.contains(dot) || self.cloud.contains(&dot)
    }

    /// Records that `dot` has been seen.
    #[inline]
    pub fn insert(&mut self, dot: Dot) {
        let seen = self.vv.get(dot.replica);
        if dot.counter <= seen {
            return;
        }
        if Some(dot.counter) == seen.checked_add(1) {
            self.vv.raise(dot.replica, dot.counter);
            self.fold(dot.replica);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Folds the cloud dots of `replica` that its vector entry now reaches (or continues) into
    /// the vector: `O(log n)` per dot folded, where [`compact`](Self::compact) walks the cloud.
    fn fold(&mut self, replica: ReplicaId) {
        if self.cloud.is_empty() {
            return;
        }
        let mut seen = self.vv.get(replica);
        while let Some(first) = self.cloud.first_of(replica) {
            if first.counter > seen.saturating_add(1) {
                break;
            }
            self.cloud.remove(&first);
            seen = seen.max(first.counter);
        }
        self.vv.raise(replica, seen);
    }

    /// How many dots the context holds (saturating): the length of [`dots`](Self::dots).
    #[inline]
    pub(crate) fn dot_count(&self) -> u64 {
        self.vv.total().saturating_add(self.cloud.len() as u64)
    }

    /// Every dot, replica by replica: the vector's prefixes, then the cloud. As many as
    /// [`dot_count`](Self::dot_count) says, which can be vast: check it first.
    pub(crate) fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.vv
            .iter()
            .flat_map(|(r, n)| (1..=n).map(move |c| Dot::new(r, c)))
            .chain(self.cloud.iter())
    }

    /// Records the dots `(replica, from..=to)`; returns how many went to the cloud, or `None`
    /// (recording nothing) if that would be more than `budget`: the budget is checked before
    /// the work.
    pub(crate) fn insert_range(
        &mut self,
        replica: ReplicaId,
        from: u64,
        to: u64,
        budget: u64,
    ) -> Option<u64> {
        if from > to {
            return Some(0);
        }
        if from <= self.vv.get(replica).saturating_add(1) {
            self.vv.raise(replica, to);
            self.compact();
            return Some(0);
        }
        let count = (to - from).saturating_add(1);
        if count > budget {
            return None;
        }
        (from..=to).for_each(|c| {
            self.cloud.insert(Dot::new(replica, c));
        });
        Some(count)
    }

    /// Makes a fresh dot for `replica`, records it and returns it.
    ///
    /// The counter is above every dot of `replica` seen so far, in the vector or the cloud, so a
    /// replica restarted from an older state never reuses a dot it has already handed out and
    /// received back from a peer.
    #[inline]
    pub fn next_dot(&mut self, replica: ReplicaId) -> Dot {
        let counter = self.highest(replica).saturating_add(1);
        let dot = Dot::new(replica, counter);
        self.insert(dot);
        dot
    }

    /// The highest counter of `replica` seen, in the vector or the cloud (0 if none).
    #[inline]
    pub fn highest(&self, replica: ReplicaId) -> u64 {
        let highest_in_cloud = self.cloud.last_of(replica).map_or(0, |last| last.counter);
        self.vv.get(replica).max(highest_in_cloud)
    }

    /// How many dots lie beyond a gap (in the cloud).
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }

    /// Forgets the dots beyond gaps, keeping the gap-free part: a smaller context that claims
    /// less (for an estimate that may err low, such as what a peer is known to have).
    pub fn truncate_cloud(&mut self) {
        self.cloud.clear();
    }

    /// Whether every dot of `other` is in `self`.
    pub fn includes(&self, other: &CausalContext) -> bool {
        self.missing_from_self(other, 0)
            .is_some_and(|m| m.is_empty())
    }

    /// The dots of `self` that `other` lacks, in order, or `None` if there are more than
    /// `limit` of them (so asking never costs more than `limit` allows).
    pub fn missing_from(
        &self,
        other: &CausalContext,
        limit: usize,
    ) -> Option<alloc::vec::Vec<Dot>> {
        other.missing_from_self(self, limit)
    }

    /// The dots of `theirs` that `self` lacks, up to `limit`.
    fn missing_from_self(&self, theirs: &CausalContext, limit: usize) -> Option<Vec<Dot>> {
        let mut missing = Vec::new();
        let push = |dot: Dot, missing: &mut Vec<Dot>| {
            if missing.len() >= limit {
                return None;
            }
            missing.push(dot);
            Some(())
        };
        for (replica, theirs_seen) in theirs.vv.iter() {
            let ours_seen = self.vv.get(replica);
            if theirs_seen <= ours_seen {
                continue;
            }
            // Beyond our prefix, only our cloud can hold their dots: a gap longer than the cloud
            // certainly misses some, and `limit` caps the walk.
            for counter in ours_seen + 1..=theirs_seen {
                let dot = Dot::new(replica, counter);
                if !self.cloud.contains(&dot) {
                    push(dot, &mut missing)?;
                }
            }
        }
        for dot in theirs.cloud.iter().filter(|d| !self.contains(*d)) {
            push(dot, &mut missing)?;
        }
        missing.sort_unstable();
        Some(missing)
    }

    /// The gap-free part: every replica's events `1..=n`.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// The dots seen beyond a gap, in order.
    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter()
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

/// Up to this many cloud dots of another context are merged one by one.
const SMALL_CLOUD: usize = 16;

impl Crdt for CausalContext {
    fn merge(&mut self, other: &Self) {
        self.vv.merge(&other.vv);
        if other.cloud.len() > SMALL_CLOUD {
            self.cloud.extend(other.cloud.iter());
            self.compact();
            return;
        }
        // A delta's context is a dot or two: fold only the replicas it touches, and insert its
        // cloud dots one by one (a dot that continues our prefix never enters our cloud), so the
        // merge costs what the delta holds, not what our cloud holds.
        if !self.cloud.is_empty() {
            for (replica, _) in other.vv.iter() {
                self.fold(replica);
            }
        }
        for dot in other.cloud.iter() {
            self.insert(dot);
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
        self.without(&[]).serialize(ser)
    }
}

/// A context written without some of its cloud dots: the dots a set's elements carry, which
/// the set's decoder adds back (see [`CausalContext::add_carried`]).
pub(crate) struct Without<'a> {
    ctx: &'a CausalContext,
    /// Ascending.
    omit: &'a [Dot],
}

impl CausalContext {
    /// This context, to be written without the cloud dots in `omit` (ascending).
    pub(crate) fn without<'a>(&'a self, omit: &'a [Dot]) -> Without<'a> {
        Without { ctx: self, omit }
    }

    /// Of `dots`, those in the cloud, ascending and once each: what [`without`](Self::without)
    /// may leave out when the reader learns them elsewhere.
    pub(crate) fn in_cloud(&self, dots: impl Iterator<Item = Dot>) -> Vec<Dot> {
        if self.cloud.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<Dot> = dots.filter(|d| self.cloud.contains(d)).collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Adds back the cloud dots a writer left out because `dots` carry them. Fails, changing
    /// nothing, unless the result is what [`in_cloud`](Self::in_cloud) and
    /// [`without`](Self::without) would write: a dot in the written cloud should have been left
    /// out, and one at or next to its replica's vector entry would have been folded.
    pub(crate) fn add_carried(&mut self, dots: impl Iterator<Item = Dot>) -> Result<(), ()> {
        let mut carried = Vec::new();
        for dot in dots {
            let seen = self.vv.get(dot.replica);
            if dot.counter <= seen {
                continue;
            }
            if self.cloud.contains(&dot) || dot.counter == seen.saturating_add(1) {
                return Err(());
            }
            carried.push(dot);
        }
        // Each dot lies beyond the gap after its vector entry, so the cloud stays compact.
        self.cloud.extend(carried);
        Ok(())
    }
}

impl Without<'_> {
    /// Whether nothing would be written: no vector entry, and every cloud dot omitted.
    pub(crate) fn is_empty(&self) -> bool {
        let omit = self.omit;
        self.ctx.vv.is_empty()
            && self.ctx.cloud.len() <= omit.len()
            && self
                .ctx
                .cloud
                .iter()
                .all(|d| omit.binary_search(&d).is_ok())
    }
}

impl Serialize for Without<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("CausalContext", 2)?;
        s.serialize_field("vv", &self.ctx.vv)?;
        let omit = self.omit;
        let cloud = self
            .ctx
            .cloud
            .iter()
            .filter(|d| omit.binary_search(d).is_err());
        s.serialize_field("cloud", &cloud_runs(cloud))?;
        s.end()
    }
}

/// The cloud as runs, one per replica: its first counter, then the gap to each next one.
///
/// Cloud dots of one replica are often close together (a piece of a large set, a burst of
/// deltas received out of order), so gaps take a byte where counters would take three.
fn cloud_runs(cloud: impl Iterator<Item = Dot>) -> Vec<(ReplicaId, Vec<u64>)> {
    let mut runs: Vec<(ReplicaId, Vec<u64>)> = Vec::new();
    let mut previous: Option<Dot> = None;
    for dot in cloud {
        match (previous, runs.last_mut()) {
            (Some(p), Some(run)) if p.replica == dot.replica => {
                run.1.push(dot.counter - p.counter);
            }
            _ => runs.push((dot.replica, alloc::vec![dot.counter])),
        }
        previous = Some(dot);
    }
    runs
}

impl<'de> Deserialize<'de> for CausalContext {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "CausalContext")]
        struct Raw {
            vv: VersionVector,
            #[serde(deserialize_with = "ascending_runs")]
            cloud: Vec<(ReplicaId, Run)>,
        }
        let raw = Raw::deserialize(de)?;
        let mut cloud = Cloud::new();
        for (replica, run) in raw.cloud {
            // Every cloud dot must lie beyond the gap after its replica's vector entry, or
            // it would have been compacted.
            let mut counter = raw.vv.get(replica).saturating_add(1);
            for (i, step) in run.0.into_iter().enumerate() {
                let next = if i == 0 {
                    (step > counter).then_some(step)
                } else {
                    (step > 0).then(|| counter.checked_add(step)).flatten()
                };
                counter = next
                    .ok_or_else(|| serde::de::Error::custom("causal context is not compacted"))?;
                cloud.insert(Dot::new(replica, counter));
            }
        }
        Ok(CausalContext { vv: raw.vv, cloud })
    }
}

/// A run of cloud counters: the first, then gaps; never empty.
struct Run(Vec<u64>);

impl<'de> Deserialize<'de> for Run {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let steps: Vec<u64> = deserialize_seq_where(de, |_, _| true)?;
        if steps.is_empty() {
            return Err(serde::de::Error::custom("an empty run of cloud dots"));
        }
        Ok(Run(steps))
    }
}

fn ascending_runs<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<(ReplicaId, Run)>, D::Error> {
    deserialize_ascending(de, |run: &(ReplicaId, Run)| &run.0)
}

pub(crate) fn ascending_dots<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Dot>, D::Error> {
    deserialize_ascending(de, |d: &Dot| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dots: &[(u64, u64)]) -> CausalContext {
        dots.iter()
            .map(|&(r, c)| Dot::new(ReplicaId::new(r), c))
            .collect()
    }

    #[test]
    fn missing_dots_are_listed_within_the_limit() {
        let ours = ctx(&[(1, 1), (1, 2), (1, 3), (2, 5)]);
        let theirs = ctx(&[(1, 1), (2, 5), (3, 1)]);
        let d = |r, c| Dot::new(ReplicaId::new(r), c);
        assert_eq!(ours.missing_from(&theirs, 10), Some(vec![d(1, 2), d(1, 3)]));
        assert_eq!(theirs.missing_from(&ours, 10), Some(vec![d(3, 1)]));
        assert_eq!(ours.missing_from(&theirs, 1), None);
        assert!(!ours.includes(&theirs));
        assert!(ours.joined(&theirs).includes(&ours));
        assert!(ours.includes(&CausalContext::new()));
    }

    #[test]
    fn a_huge_gap_costs_only_the_limit() {
        let mut ours = CausalContext::new();
        ours.insert_range(ReplicaId::new(1), 1, u64::MAX, 0);
        assert_eq!(ours.vv().get(ReplicaId::new(1)), u64::MAX);
        assert_eq!(ours.missing_from(&CausalContext::new(), 1000), None);
        assert!(!CausalContext::new().includes(&ours));
    }
}
