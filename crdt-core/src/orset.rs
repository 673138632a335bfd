//! The add-wins observed-remove set.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::deserialize_ascending;
use crate::dots::Dots;
use crate::{CausalContext, Crdt, Decompose, Dot, ReplicaId};

/// An add-wins observed-remove set without tombstones.
///
/// Each add tags its element with a fresh [`Dot`](crate::Dot); a remove drops the dots it has
/// observed. The causal context remembers which dots were ever seen, so a removed element leaves
/// nothing behind in the element map: a replica that still holds the element learns of the
/// remove because the dot is in the other side's context but not in its elements.
///
/// * An add concurrent with a remove of the same element wins: the remove did not observe the
///   new dot.
/// * A remove of an observed add sticks, whatever order deltas arrive in.
///
/// ```
/// use crdt_core::{Crdt, OrSet, ReplicaId};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut x = OrSet::new();
/// x.add(a, 1);
/// let mut y = x.clone();
/// x.remove(&1); // removes the add it has seen...
/// y.add(b, 1); // ...while a concurrent add happens elsewhere
/// x.merge(&y);
/// assert!(x.contains(&1)); // add wins
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct OrSet<T> {
    entries: BTreeMap<T, Dots>,
    ctx: CausalContext,
}

impl<T> Default for OrSet<T> {
    fn default() -> Self {
        OrSet {
            entries: BTreeMap::new(),
            ctx: CausalContext::new(),
        }
    }
}

impl<T: Ord + Clone> OrSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` on behalf of `replica`; returns the delta.
    ///
    /// Re-adding a present element replaces its dots with the new one, so the set does not
    /// accumulate dots for elements added over and over.
    pub fn add(&mut self, replica: ReplicaId, value: T) -> OrSet<T> {
        let dot = self.ctx.next_dot(replica);
        let mut ctx = CausalContext::new();
        ctx.insert(dot);
        if let Some(old) = self.entries.insert(value.clone(), Dots::One(dot)) {
            old.as_slice().iter().for_each(|d| ctx.insert(*d));
        }
        let mut entries = BTreeMap::new();
        entries.insert(value, Dots::One(dot));
        OrSet { entries, ctx }
    }

    /// Removes `value` if present; returns the delta (empty when there was nothing to remove).
    pub fn remove<Q>(&mut self, value: &Q) -> OrSet<T>
    where
        T: core::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let ctx = match self.entries.remove(value) {
            Some(dots) => dots.as_slice().iter().copied().collect(),
            None => CausalContext::new(),
        };
        OrSet {
            entries: BTreeMap::new(),
            ctx,
        }
    }

    /// Removes every element; returns the delta.
    pub fn clear(&mut self) -> OrSet<T> {
        let ctx = core::mem::take(&mut self.entries)
            .values()
            .flat_map(|dots| dots.as_slice().iter().copied())
            .collect();
        OrSet {
            entries: BTreeMap::new(),
            ctx,
        }
    }
}

impl<T: Ord> OrSet<T> {
    /// Whether `value` is in the set.
    pub fn contains<Q>(&self, value: &Q) -> bool
    where
        T: core::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.contains_key(value)
    }

    /// The elements, in ascending order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.entries.keys()
    }

    /// How many elements the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every add and remove this state reflects.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }
}

/// A delta's context is enumerated for the fast merge path only up to this many dots.
const SMALL_CONTEXT: usize = 64;

impl<T: Ord + Clone + core::fmt::Debug> Crdt for OrSet<T> {
    fn merge(&mut self, other: &Self) {
        if other.entries.len() < SMALL_CONTEXT && !self.removes_elsewhere(other) {
            self.merge_by_lookup(other);
            return;
        }
        // One ordered pass over both element maps: elements only we hold survive unless the other
        // side saw their dots (and so removed them); elements only they hold are new to us unless
        // we saw their dots; shared elements join their dots.
        let mut theirs = other.entries.iter().peekable();
        let mut new_to_us = Vec::new();
        let our_ctx = &self.ctx;
        self.entries.retain(|value, dots| {
            while let Some((k, d)) = theirs.next_if(|(k, _)| *k < value) {
                if let Some(kept) = d.unseen_by(our_ctx) {
                    new_to_us.push((k.clone(), kept));
                }
            }
            let same = theirs.next_if(|(k, _)| *k == value).map(|(_, d)| d);
            dots.join(our_ctx, same, &other.ctx)
        });
        for (k, d) in theirs {
            if let Some(kept) = d.unseen_by(our_ctx) {
                new_to_us.push((k.clone(), kept));
            }
        }
        if self.entries.is_empty() {
            // Bulk-builds the tree from sorted input, much faster than inserting one by one.
            self.entries = new_to_us.into_iter().collect();
        } else {
            self.entries.extend(new_to_us);
        }
        self.ctx.merge(&other.ctx);
    }
}

impl<T: Ord + Clone + core::fmt::Debug> crate::Reset for OrSet<T> {
    /// [`clear`](OrSet::clear): removes every element observed.
    fn reset(&mut self) -> Self {
        self.clear()
    }
}

impl<T: Ord + Clone> OrSet<T> {
    /// Whether `other` may remove elements it does not itself hold: whether its context has a
    /// dot we have seen that is not live in its elements. Answers `true` when the context is too
    /// large to check cheaply.
    fn removes_elsewhere(&self, other: &Self) -> bool {
        let Some(dots) = other.ctx.missing_from(&CausalContext::new(), SMALL_CONTEXT) else {
            return true;
        };
        dots.into_iter().any(|d| {
            self.ctx.contains(d) && !other.entries.values().any(|e| e.as_slice().contains(&d))
        })
    }

    /// The merge when no element outside `other`'s can change: a lookup per element of
    /// `other`, instead of a pass over all of ours. This is the common case of applying a small
    /// delta (an add) to a large set.
    fn merge_by_lookup(&mut self, other: &Self) {
        let (entries, ctx) = (&mut self.entries, &self.ctx);
        for (value, theirs) in &other.entries {
            match entries.get_mut(value) {
                Some(ours) => {
                    if !ours.join(ctx, Some(theirs), &other.ctx) {
                        entries.remove(value);
                    }
                }
                None => {
                    if let Some(kept) = theirs.unseen_by(ctx) {
                        entries.insert(value.clone(), kept);
                    }
                }
            }
        }
        self.ctx.merge(&other.ctx);
    }
}

impl<T: Ord + Clone + core::fmt::Debug> Decompose for OrSet<T> {
    fn split(&self, max_entries: usize) -> Vec<Self> {
        let max = max_entries.max(1);
        if self.entries.len() <= max {
            return alloc::vec![self.clone()];
        }
        let Some(dead) = self.removed_dots() else {
            return alloc::vec![self.clone()];
        };
        let mut pieces = Vec::with_capacity(self.entries.len() / max + 2);
        let mut entries = self.entries.iter().peekable();
        while entries.peek().is_some() {
            let chunk: BTreeMap<T, Dots> = entries
                .by_ref()
                .take(max)
                .map(|(k, d)| (k.clone(), d.clone()))
                .collect();
            let ctx = chunk
                .values()
                .flat_map(|d| d.as_slice().iter().copied())
                .collect();
            pieces.push(OrSet {
                entries: chunk,
                ctx,
            });
        }
        if !dead.is_empty() {
            pieces.push(OrSet {
                entries: BTreeMap::new(),
                ctx: dead,
            });
        }
        pieces
    }
}

impl<T: Ord> OrSet<T> {
    /// The context minus the live dots: the adds that were removed or replaced. `None` if listing
    /// them would take more than a budget proportional to the set (a context with huge gaps).
    fn removed_dots(&self) -> Option<CausalContext> {
        let live: alloc::collections::BTreeSet<Dot> = self
            .entries
            .values()
            .flat_map(|d| d.as_slice().iter().copied())
            .collect();
        let mut budget = (live.len() as u64)
            .saturating_mul(4)
            .saturating_add(1 << 16);
        let mut dead = CausalContext::new();
        for (replica, seen) in self.ctx.vv().iter() {
            let mut next = 1;
            let range = Dot::new(replica, 1)..=Dot::new(replica, seen);
            for dot in live.range(range) {
                budget -= dead.insert_range(replica, next, dot.counter - 1, budget)?;
                next = dot.counter + 1;
            }
            budget -= dead.insert_range(replica, next, seen, budget)?;
        }
        for dot in self.ctx.cloud().filter(|d| !live.contains(d)) {
            budget = budget.checked_sub(1)?;
            dead.insert(dot);
        }
        Some(dead)
    }
}

impl<T: Ord + Clone> FromIterator<(ReplicaId, T)> for OrSet<T> {
    /// Adds each `(replica, value)` in turn.
    fn from_iter<I: IntoIterator<Item = (ReplicaId, T)>>(iter: I) -> Self {
        let mut set = OrSet::new();
        for (replica, value) in iter {
            set.add(replica, value);
        }
        set
    }
}

impl<T: Serialize> Serialize for OrSet<T> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("OrSet", 2)?;
        s.serialize_field("ctx", &self.ctx)?;
        s.serialize_field("entries", &Entries(&self.entries))?;
        s.end()
    }
}

/// A sorted map written as a sequence of pairs, the form decoders check for order.
pub(crate) struct Entries<'a, K, V>(pub(crate) &'a BTreeMap<K, V>);

impl<K: Serialize, V: Serialize> Serialize for Entries<'_, K, V> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(self.0.iter())
    }
}

/// Reads what [`Entries`] writes, rejecting keys out of order.
pub(crate) fn ascending_entries<'de, D, K, V>(de: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    let pairs: Vec<(K, V)> = deserialize_ascending(de, |e: &(K, V)| &e.0)?;
    Ok(pairs.into_iter().collect())
}

impl<'de, T: Deserialize<'de> + Ord> Deserialize<'de> for OrSet<T> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "OrSet", bound = "T: Deserialize<'de> + Ord")]
        struct Raw<T> {
            ctx: CausalContext,
            #[serde(deserialize_with = "ascending_entries")]
            entries: BTreeMap<T, Dots>,
        }
        let raw = Raw::<T>::deserialize(de)?;
        let all_seen = raw
            .entries
            .values()
            .flat_map(Dots::as_slice)
            .all(|d| raw.ctx.contains(*d));
        if !all_seen {
            return Err(serde::de::Error::custom(
                "a live dot outside the causal context",
            ));
        }
        Ok(OrSet {
            entries: raw.entries,
            ctx: raw.ctx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Live dots `(r, 1)` and `(r, 2^40)` in a context that has seen every dot up to there:
    /// the removed dots between them are too many to list,
    /// and finding that out must not cost listing them (the budget is checked first).
    #[test]
    fn a_huge_gap_between_live_dots_is_not_listed() {
        let r = ReplicaId::new(7);
        let far = 1u64 << 40;
        let mut entries = BTreeMap::new();
        for (value, counter) in [("a", 1), ("b", far), ("c", far + 1)] {
            let dots = Dots::from_sorted(alloc::vec![Dot::new(r, counter)]);
            entries.insert(value, dots.expect("one dot"));
        }
        // Every dot up to far + 1 seen: those between are removed adds.
        let mut ctx = CausalContext::new();
        ctx.insert_range(r, 1, far + 1, 0);
        let set = OrSet { entries, ctx };
        assert!(set.removed_dots().is_none());
        // Decompose falls back to the whole set.
        assert_eq!(set.split(1), alloc::vec![set.clone()]);
    }
}
