//! The add-wins observed-remove set.

use alloc::collections::btree_map::Entry;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dot_index::{DotIndex, Index};
use crate::dots::Dots;
use crate::dotted;
use crate::entries::Entries;
use crate::{CausalContext, Crdt, Decompose, Dot, ReplicaId};
use alloc::boxed::Box;

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
#[derive(Clone)]
pub struct OrSet<T> {
    entries: Entries<T>,
    ctx: CausalContext,
    /// Which element holds a dot, for deltas that remove by dot. A cache: not part of the
    /// state, so equality, hashing and encoding ignore it.
    index: Index<T>,
}

impl<T> Default for OrSet<T> {
    fn default() -> Self {
        OrSet::from_parts(Entries::default(), CausalContext::new())
    }
}

impl<T> OrSet<T> {
    fn from_parts(entries: impl Into<Entries<T>>, ctx: CausalContext) -> Self {
        OrSet {
            entries: entries.into(),
            ctx,
            index: Index::Absent,
        }
    }
}

impl<T: PartialEq> PartialEq for OrSet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.ctx == other.ctx
    }
}

impl<T: Eq> Eq for OrSet<T> {}

impl<T: core::hash::Hash> core::hash::Hash for OrSet<T> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.entries.hash(state);
        self.ctx.hash(state);
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for OrSet<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OrSet")
            .field("entries", &self.entries)
            .field("ctx", &self.ctx)
            .finish()
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
        if let Some(old) = self
            .entries
            .tree_mut()
            .insert(value.clone(), Dots::one(dot))
        {
            old.iter().for_each(|d| ctx.insert(d));
            self.index.forget(old.len());
            self.index.tidy();
        }
        self.index.insert(dot, &value);
        OrSet::from_parts(Entries::One(value, Dots::one(dot)), ctx)
    }

    /// Removes `value` if present; returns the delta (empty when there was nothing to remove).
    pub fn remove<Q>(&mut self, value: &Q) -> OrSet<T>
    where
        T: core::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let ctx = match self.entries.tree_mut().remove(value) {
            Some(dots) => {
                self.index.forget(dots.len());
                self.index.tidy();
                dots.iter().collect()
            }
            None => CausalContext::new(),
        };
        OrSet::from_parts(Entries::default(), ctx)
    }

    /// Removes every element; returns the delta.
    pub fn clear(&mut self) -> OrSet<T> {
        self.index = Index::Absent;
        let ctx = core::mem::take(&mut self.entries)
            .values()
            .flat_map(Dots::iter)
            .collect();
        OrSet::from_parts(Entries::default(), ctx)
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

/// A merge takes the small-delta path when the other side's elements and context dots number at
/// most this, or an eighth of our elements if more.
const SMALL_DELTA: usize = 64;

/// Sets up to this size find the element holding a dot by walking; larger ones build an index.
const INDEX_MIN: usize = 32;

impl<T: Ord + Clone + core::fmt::Debug> Crdt for OrSet<T> {
    fn merge(&mut self, other: &Self) {
        if !self.merge_new_add(other) && !self.merge_small(other) {
            self.merge_full(other);
        }
        self.index.tidy();
    }
}

impl<T: Ord + Clone + core::fmt::Debug> crate::Reset for OrSet<T> {
    /// [`clear`](OrSet::clear): removes every element observed.
    fn reset(&mut self) -> Self {
        self.clear()
    }
}

impl<T: Ord + Clone> OrSet<T> {
    /// The merge of the delta of one add we have not seen, of an element we lack: the element
    /// goes in with its dot, and the dot into our context. This is what
    /// [`merge_small`](Self::merge_small) does with such a delta, without its search for
    /// removed dots and its general context merge. Returns `false`, changing nothing, for any
    /// other delta (a re-add of an element we hold included, after one wasted descent).
    fn merge_new_add(&mut self, other: &Self) -> bool {
        let Entries::One(value, dots) = &other.entries else {
            return false;
        };
        let Some(dot) = dots.only() else {
            return false;
        };
        // The context is the add's dot alone, and it is new to us.
        if other.ctx.dot_count() != 1 || !other.ctx.contains(dot) || self.ctx.contains(dot) {
            return false;
        }
        match self.entries.tree_mut().entry(value.clone()) {
            Entry::Vacant(slot) => {
                self.index.insert(dot, value);
                slot.insert(Dots::one(dot));
            }
            Entry::Occupied(_) => return false,
        }
        self.ctx.insert(dot);
        true
    }

    /// The merge of a delta much smaller than this set, in time proportional to the delta:
    /// each dot of its context that we have seen is looked up (in the index, or by walking a
    /// small set) to drop it from the element holding it, then each of its elements is joined
    /// with ours. Returns `false`, changing nothing, if `other` is too large for this to pay.
    fn merge_small(&mut self, other: &Self) -> bool {
        let budget = SMALL_DELTA.max(self.entries.len() / 8) as u64;
        if other.entries.len() as u64 > budget || other.ctx.dot_count() > budget {
            return false;
        }
        let walk = self.entries.len() <= INDEX_MIN;
        if walk {
            // Walking a set this small is as fast, and needs no upkeep.
            self.index = Index::Absent;
        }
        let removes = other.ctx.dots().any(|d| self.ctx.contains(d));
        if removes && !walk && !self.build_index() {
            return false;
        }
        if removes {
            let mut many = Vec::new();
            for dot in other.ctx.dots() {
                if self.ctx.contains(dot) {
                    self.drop_seen_dot(dot, &other.entries, walk, &mut many);
                }
            }
            self.drop_from_many(many);
        }
        let entries = self.entries.tree_mut();
        for (value, theirs) in other.entries.iter() {
            // One descent of the tree, for the common case of an element new to us.
            match entries.entry(value.clone()) {
                Entry::Occupied(ours) if ours.get() == theirs => {}
                Entry::Occupied(mut ours) => {
                    let before = ours.get().clone();
                    let alive = ours.get_mut().join(&self.ctx, Some(theirs), &other.ctx);
                    self.index
                        .replace(value, &before, alive.then_some(ours.get()));
                    if !alive {
                        ours.remove();
                    }
                }
                Entry::Vacant(slot) => {
                    if let Some(kept) = theirs.unseen_by(&self.ctx) {
                        kept.iter().for_each(|d| self.index.insert(d, value));
                        slot.insert(kept);
                    }
                }
            }
        }
        self.ctx.merge(&other.ctx);
        true
    }

    /// Drops `dot`, which the other side has seen (and we too), from the element of ours holding
    /// it, unless the other side holds that element (its join decides then). A dot of an element
    /// holding several is left in `many`, for [`drop_from_many`](Self::drop_from_many).
    fn drop_seen_dot(
        &mut self,
        dot: Dot,
        theirs: &Entries<T>,
        walk: bool,
        many: &mut Vec<(T, Dot)>,
    ) {
        let dropped = |dots: &mut Dots| match dots.without(dot) {
            Some(rest) => {
                *dots = rest;
                true
            }
            None => false,
        };
        if walk {
            // Every holder, should a faulty replica have put the dot on two elements.
            self.entries.tree_mut().retain(|value, dots| {
                !dots.contains(dot) || theirs.contains_key(value) || dropped(dots)
            });
            return;
        }
        let Index::Built(index) = &self.index else {
            return;
        };
        let Some(value) = index.get(dot) else {
            return;
        };
        if theirs.contains_key(value) {
            return;
        }
        // Taken out and put back only if something is left: one descent of the tree for the
        // usual element of one dot.
        let entries = self.entries.tree_mut();
        let Some((value, mut dots)) = entries.remove_entry(value) else {
            return;
        };
        if !dots.contains(dot) {
            // A stale index entry: the dot is no longer live here.
            entries.insert(value, dots);
            return;
        }
        if dots.len() > 1 {
            // Dropped with the element's other dropped dots in one pass: an element added
            // concurrently by many replicas holds a dot of each, and copying them all once per
            // dropped dot made one remove of it quadratic.
            many.push((value.clone(), dot));
            entries.insert(value, dots);
            return;
        }
        if dropped(&mut dots) {
            entries.insert(value, dots);
        }
        self.index.forget(1);
    }

    /// Drops each `(element, dot)` pair's dot, every element's in one pass.
    fn drop_from_many(&mut self, mut many: Vec<(T, Dot)>) {
        many.sort_unstable();
        for group in many.chunk_by(|a, b| a.0 == b.0) {
            let Some((value, _)) = group.first() else {
                continue;
            };
            let Entry::Occupied(mut entry) = self.entries.tree_mut().entry(value.clone()) else {
                continue;
            };
            let gone = |d: &Dot| group.binary_search_by(|(_, g)| g.cmp(d)).is_ok();
            let before = entry.get().len();
            let kept = Dots::from_sorted(entry.get().iter().filter(|d| !gone(d)).collect());
            match kept {
                Some(kept) => {
                    self.index.forget(before - kept.len());
                    *entry.get_mut() = kept;
                }
                None => {
                    self.index.forget(before);
                    entry.remove();
                }
            }
        }
    }

    /// Builds the index if it is absent; `false` if it cannot be (a dot on two elements).
    fn build_index(&mut self) -> bool {
        if let Index::Absent = self.index {
            let pairs = self
                .entries
                .iter()
                .flat_map(|(value, dots)| dots.iter().map(move |d| (d, value)));
            self.index = match DotIndex::build(pairs) {
                Ok(index) => Index::Built(Box::new(index)),
                Err(_) => Index::Unusable,
            };
        }
        matches!(self.index, Index::Built(_))
    }

    /// The merge of any two states: one ordered pass over both element maps.
    fn merge_full(&mut self, other: &Self) {
        // Rebuilt when next needed: cheaper than keeping it through a pass that may touch every
        // element. (An unusable one stays so: the set may still hold a dot twice.)
        if let Index::Built(_) = self.index {
            self.index = Index::Absent;
        }
        // Elements only we hold survive unless the other side saw their dots (and so removed
        // them); elements only they hold are new to us unless we saw their dots; shared elements
        // join their dots.
        let mut theirs = other.entries.iter().peekable();
        let mut new_to_us = Vec::new();
        let our_ctx = &self.ctx;
        let entries = self.entries.tree_mut();
        entries.retain(|value, dots| {
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
        if new_to_us.len() > entries.len() / 4 {
            // Many new elements: bulk-build the tree from the sorted union, faster than inserting
            // one by one and with full nodes.
            let ours = core::mem::take(entries);
            *entries = union_ascending(ours.into_iter(), new_to_us.into_iter()).collect();
        } else {
            entries.extend(new_to_us);
        }
        self.ctx.merge(&other.ctx);
    }
}

/// Two ascending sequences of pairs with distinct keys, as one ascending sequence.
fn union_ascending<K: Ord, V>(
    a: impl Iterator<Item = (K, V)>,
    b: impl Iterator<Item = (K, V)>,
) -> impl Iterator<Item = (K, V)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    core::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.0 < x.0 => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
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
            let ctx = chunk.values().flat_map(Dots::iter).collect();
            pieces.push(OrSet::from_parts(chunk, ctx));
        }
        if !dead.is_empty() {
            pieces.push(OrSet::from_parts(BTreeMap::new(), dead));
        }
        pieces
    }
}

impl<T: Ord> OrSet<T> {
    /// The context minus the live dots: the adds that were removed or replaced. `None` if listing
    /// them would take more than a budget proportional to the set (a context with huge gaps).
    fn removed_dots(&self) -> Option<CausalContext> {
        let live: alloc::collections::BTreeSet<Dot> =
            self.entries.values().flat_map(Dots::iter).collect();
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
        let entries = || {
            self.entries
                .iter()
                .map(|(value, dots)| (value, Some(dots), None::<&()>))
        };
        dotted::serialize(ser, &self.ctx, self.entries.len(), false, entries)
    }
}

impl<'de, T: Deserialize<'de> + Ord> Deserialize<'de> for OrSet<T> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let (ctx, entries) = dotted::deserialize::<D, T, ()>(de, false)?;
        // Every element has its dots: the decoder refuses one without.
        let entries: BTreeMap<T, Dots> = entries
            .into_iter()
            .filter_map(|(value, dots, _)| Some((value, dots?)))
            .collect();
        Ok(OrSet::from_parts(entries, ctx))
    }
}

impl<T> OrSet<T> {
    /// The elements and their dots, for the map that keeps its keys in a set.
    pub(crate) fn dotted_entries(&self) -> &Entries<T> {
        &self.entries
    }

    /// A set decoded by its map: elements ascending, the context compact and holding their dots.
    pub(crate) fn from_decoded(entries: BTreeMap<T, Dots>, ctx: CausalContext) -> Self {
        OrSet::from_parts(entries, ctx)
    }
}

#[cfg(test)]
#[path = "orset_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "orset_diff.rs"]
mod diff;
