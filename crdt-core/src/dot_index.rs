//! An index from dots to the OR-Set elements that hold them.
//!
//! A remove delta names dots, not elements (its context holds the removed adds' dots), so
//! without an index applying it means walking the whole set. The index answers "which element
//! holds this dot" in `O(log n)`. It is a cache: never part of a state's equality, hash or
//! encoding, built the first time a set needs it and kept up to date from then on.

use alloc::boxed::Box;
use alloc::collections::btree_map::Entry;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::dots::Dots;
use crate::{Dot, ReplicaId};

/// Dot to element, for every dot live in a set, plus some that no longer are.
///
/// Forgetting is lazy: a dot that stops being live stays until the stale ones outnumber the
/// live ones and the owner rebuilds. A stale entry is harmless, because the owner checks that the
/// element it names still holds the dot, and a dot, once no longer live, never becomes live
/// again (it stays in the set's causal context, and only unseen dots are added).
#[derive(Clone, Debug)]
pub(crate) struct DotIndex<T> {
    /// Per replica, the counters of its dots and their elements. A map, not a sorted vector: a
    /// set can hold dots of a hundred thousand replicas (one device each), and a delta adding
    /// many new ones must not shift the whole vector for each.
    replicas: BTreeMap<ReplicaId, Counters<T>>,
    /// Pairs that arrived below the highest counter of their replica.
    late: BTreeMap<Dot, T>,
    /// Entries held, live or stale.
    len: usize,
    /// Entries whose dot the owner reported no longer live.
    stale: usize,
}

/// One replica's counters. A set's dots are mostly consecutive per replica (each add takes the
/// next counter), so they are kept as runs of consecutive counters, which store only the
/// elements: 8 bytes a dot for `u64` members, where a (counter, element) pair takes 16. Counters
/// that do not form a run of [`MIN_RUN`] are kept as pairs, which is no dearer than before.
#[derive(Clone, Debug)]
struct Counters<T> {
    /// Ascending by first counter, not overlapping.
    runs: Vec<Run<T>>,
    /// Ascending by counter, none inside a run.
    loose: Vec<(u64, T)>,
}

/// The elements of the consecutive counters `first..first + values.len()`; never empty.
#[derive(Clone, Debug)]
struct Run<T> {
    first: u64,
    values: Vec<T>,
}

/// Consecutive counters shorter than this are kept as pairs: below it a run's own 32 bytes
/// outweigh the 8 bytes a pair's counter costs.
const MIN_RUN: usize = 4;

impl<T> Run<T> {
    fn last(&self) -> u64 {
        self.first
            .saturating_add((self.values.len() as u64).saturating_sub(1))
    }

    fn get(&self, counter: u64) -> Option<&T> {
        let offset = usize::try_from(counter.checked_sub(self.first)?).ok()?;
        self.values.get(offset)
    }
}

impl<T> Counters<T> {
    /// The counters `(counter, element)`, ascending and distinct, as runs and pairs.
    fn from_sorted(pairs: Vec<(u64, T)>) -> Counters<T> {
        let mut out = Counters {
            runs: Vec::new(),
            loose: Vec::new(),
        };
        let mut pending: Vec<(u64, T)> = Vec::new();
        for (counter, value) in pairs {
            if pending
                .last()
                .is_some_and(|last| last.0.checked_add(1) != Some(counter))
            {
                out.settle(core::mem::take(&mut pending));
            }
            pending.push((counter, value));
        }
        out.settle(pending);
        out
    }

    /// Files consecutive counters, above all held so far, as a run if long enough.
    fn settle(&mut self, consecutive: Vec<(u64, T)>) {
        match consecutive.first() {
            Some(&(first, _)) if consecutive.len() >= MIN_RUN => {
                // Sized exactly: collecting in place would keep the pairs' buffer, twice as big.
                let mut values = Vec::with_capacity(consecutive.len());
                values.extend(consecutive.into_iter().map(|(_, v)| v));
                self.runs.push(Run { first, values });
            }
            _ => self.loose.extend(consecutive),
        }
    }

    /// The highest counter held.
    fn highest(&self) -> Option<u64> {
        let run = self.runs.last().map(Run::last);
        let loose = self.loose.last().map(|e| e.0);
        run.max(loose)
    }

    fn get(&self, counter: u64) -> Option<&T> {
        let after = self.runs.partition_point(|r| r.first <= counter);
        let in_run = after
            .checked_sub(1)
            .and_then(|i| self.runs.get(i))
            .and_then(|run| run.get(counter));
        in_run.or_else(|| {
            let loose = &self.loose;
            loose.get(position(loose, counter)?).map(|e| &e.1)
        })
    }

    /// Adds `counter`, above every counter held.
    fn push(&mut self, counter: u64, value: T) {
        if let Some(run) = self.runs.last_mut() {
            if run.last().checked_add(1) == Some(counter) {
                run.values.push(value);
                return;
            }
        }
        self.loose.push((counter, value));
        // The loose tail may have become long enough to be a run.
        let tail = self.loose.len().saturating_sub(MIN_RUN);
        let consecutive = self.loose.get(tail..).is_some_and(|t| {
            t.len() == MIN_RUN
                && t.windows(2)
                    .all(|w| w.first().and_then(|e| e.0.checked_add(1)) == w.get(1).map(|e| e.0))
        });
        if consecutive {
            let run = self.loose.split_off(tail);
            self.settle(run);
        }
    }
}

/// A dot was found live on two elements: only a state from a faulty or hostile replica (one
/// that reused a dot) can do that, and the index cannot answer for such a set.
#[derive(Debug)]
pub(crate) struct DuplicateDot;

impl<T: Clone> DotIndex<T> {
    /// The index of `(dot, element)` pairs.
    pub(crate) fn build<'a>(
        pairs: impl Iterator<Item = (Dot, &'a T)>,
    ) -> Result<DotIndex<T>, DuplicateDot>
    where
        T: 'a,
    {
        let mut by_replica: BTreeMap<ReplicaId, Vec<(u64, T)>> = BTreeMap::new();
        let mut len = 0;
        for (dot, value) in pairs {
            by_replica
                .entry(dot.replica)
                .or_default()
                .push((dot.counter, value.clone()));
            len += 1;
        }
        let mut replicas = BTreeMap::new();
        for (replica, mut pairs) in by_replica {
            pairs.sort_unstable_by_key(|e| e.0);
            if pairs
                .windows(2)
                .any(|w| w.first().map(|e| e.0) == w.get(1).map(|e| e.0))
            {
                return Err(DuplicateDot);
            }
            replicas.insert(replica, Counters::from_sorted(pairs));
        }
        Ok(DotIndex {
            replicas,
            late: BTreeMap::new(),
            len,
            stale: 0,
        })
    }

    /// Records that `value` holds `dot`, which no element held before.
    pub(crate) fn insert(&mut self, dot: Dot, value: T) -> Result<(), DuplicateDot> {
        let counters = self
            .replicas
            .entry(dot.replica)
            .or_insert_with(|| Counters {
                runs: Vec::new(),
                loose: Vec::new(),
            });
        match counters.highest() {
            Some(highest) if highest >= dot.counter => {
                if counters.get(dot.counter).is_some() {
                    return Err(DuplicateDot);
                }
                match self.late.entry(dot) {
                    Entry::Occupied(_) => return Err(DuplicateDot),
                    Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                }
            }
            _ => counters.push(dot.counter, value),
        }
        self.len += 1;
        Ok(())
    }
}

impl<T> DotIndex<T> {
    /// The element recorded for `dot`, if any (it may no longer hold it).
    pub(crate) fn get(&self, dot: Dot) -> Option<&T> {
        let counters = self.replicas.get(&dot.replica);
        counters
            .and_then(|c| c.get(dot.counter))
            .or_else(|| self.late.get(&dot))
    }

    /// Notes that `n` recorded dots are no longer live.
    pub(crate) fn forget(&mut self, n: usize) {
        self.stale = self.stale.saturating_add(n);
    }

    /// Whether stale entries outnumber live ones, so a rebuild pays for itself.
    pub(crate) fn wants_rebuild(&self) -> bool {
        self.stale > self.len.saturating_sub(self.stale).saturating_add(32)
    }
}

/// The state of a set's [`DotIndex`].
#[derive(Clone, Debug)]
pub(crate) enum Index<T> {
    /// Not built: built the first time a small merge into a large set needs it.
    Absent,
    Built(Box<DotIndex<T>>),
    /// The set holds one dot on two elements (only a replica that reused a dot makes such a
    /// state): merges that remove by dot walk the set instead.
    Unusable,
}

impl<T: Clone> Index<T> {
    /// Records that `value` now holds `dot`.
    pub(crate) fn insert(&mut self, dot: Dot, value: &T) {
        if let Index::Built(index) = self {
            if index.insert(dot, value.clone()).is_err() {
                *self = Index::Unusable;
            }
        }
    }

    /// Records that `n` dots are no longer live.
    pub(crate) fn forget(&mut self, n: usize) {
        if let Index::Built(index) = self {
            index.forget(n);
        }
    }

    /// Drops the index once mostly stale (it is rebuilt when next needed), so its memory stays
    /// proportional to the set's.
    pub(crate) fn tidy(&mut self) {
        if let Index::Built(index) = self {
            if index.wants_rebuild() {
                *self = Index::Absent;
            }
        }
    }

    /// Records that `value`'s dots changed from `before` to `after`.
    pub(crate) fn replace(&mut self, value: &T, before: &Dots, after: Option<&Dots>) {
        if let Index::Built(_) = self {
            let mut gone = 0;
            for dot in before.iter() {
                if !after.is_some_and(|a| a.contains(dot)) {
                    gone += 1;
                }
            }
            for dot in after.into_iter().flat_map(Dots::iter) {
                if !before.contains(dot) {
                    self.insert(dot, value);
                }
            }
            self.forget(gone);
        }
    }
}

/// Where `counter` is in `run` (ascending by counter).
///
/// A replica's counters are nearly consecutive, so interpolating between the first and last
/// counter lands on or next to the entry: the search gallops out from there, a probe or two
/// where a binary search would take a dozen scattered ones.
fn position<T>(run: &[(u64, T)], counter: u64) -> Option<usize> {
    let (first, last) = (run.first()?.0, run.last()?.0);
    if counter < first || counter > last {
        return None;
    }
    let top = run.len() - 1;
    let span = u128::from(last - first).max(1);
    let guess = (u128::from(counter - first) * top as u128 / span) as usize;
    let at = |i: usize| run.get(i).map_or(u64::MAX, |e| e.0);
    // Bracket the counter between `lo` and `hi`, doubling the step away from the guess.
    let (mut lo, mut hi) = (guess, guess);
    let mut step = 1;
    while at(lo) > counter {
        hi = lo;
        lo = lo.saturating_sub(step);
        step = step.saturating_mul(2);
    }
    while at(hi) < counter && hi < top {
        lo = hi;
        hi = hi.saturating_add(step).min(top);
        step = step.saturating_mul(2);
    }
    let i = run
        .get(lo..=hi)?
        .binary_search_by_key(&counter, |e| e.0)
        .ok()?;
    Some(lo + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(r: u64, c: u64) -> Dot {
        Dot::new(ReplicaId::new(r), c)
    }

    #[test]
    fn the_galloping_search_finds_every_counter_and_no_other() {
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..200 {
            let mut counter = rng.u64(1..5);
            let run: Vec<(u64, ())> = (0..rng.usize(1..300))
                .map(|_| {
                    counter += if rng.u8(0..10) == 0 {
                        rng.u64(1..1000)
                    } else {
                        1
                    };
                    (counter, ())
                })
                .collect();
            for c in 0..=counter + 2 {
                let expected = run.binary_search_by_key(&c, |e| e.0).ok();
                assert_eq!(position(&run, c), expected, "{c} in {run:?}");
            }
        }
        assert_eq!(position(&[(u64::MAX, ())], u64::MAX), Some(0));
        assert_eq!(position(&[(1, ()), (u64::MAX, ())], u64::MAX - 1), None);
    }

    /// Counters a peer may choose: clustered at 1, at 2^48 and at `u64::MAX`, or spread over
    /// the whole range, so interpolation guesses land far from the entry.
    fn hostile_counter() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            1..64u64,
            ((1u64 << 48) - 32)..((1u64 << 48) + 32),
            (u64::MAX - 64)..=u64::MAX,
            any::<u64>(),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_galloping_search_agrees_with_binary_search_on_any_run(
            counters in proptest::collection::btree_set(hostile_counter(), 1..200),
            probes in proptest::collection::vec(hostile_counter(), 1..50),
        ) {
            let run: Vec<(u64, ())> = counters.iter().map(|&c| (c, ())).collect();
            for c in probes.into_iter().chain(counters.iter().copied()) {
                let expected = run.binary_search_by_key(&c, |e| e.0).ok();
                proptest::prop_assert_eq!(position(&run, c), expected);
            }
        }
    }

    proptest::proptest! {
        /// Built from any dots, then given more in any order, the index finds exactly the dots
        /// it holds, and refuses exactly the ones it already holds.
        #[test]
        fn runs_pairs_and_late_dots_answer_as_a_map(
            built in proptest::collection::btree_set((0..3u64, 1..80u64), 0..120),
            added in proptest::collection::vec((0..4u64, 1..100u64), 0..120),
        ) {
            let mut model: BTreeMap<Dot, u64> = BTreeMap::new();
            let values: Vec<(Dot, u64)> = built.iter().map(|&(r, c)| (d(r, c), r * 1000 + c)).collect();
            let mut index = DotIndex::build(values.iter().map(|(dot, v)| (*dot, v))).unwrap();
            model.extend(values.iter().copied());
            for (i, &(r, c)) in added.iter().enumerate() {
                let refused = index.insert(d(r, c), i as u64).is_err();
                proptest::prop_assert_eq!(refused, model.contains_key(&d(r, c)));
                model.entry(d(r, c)).or_insert(i as u64);
            }
            for r in 0..4 {
                for c in 0..=101 {
                    let expected = model.get(&d(r, c));
                    proptest::prop_assert_eq!(index.get(d(r, c)), expected, "{:?}", d(r, c));
                }
            }
        }
    }

    #[test]
    fn consecutive_counters_are_kept_as_runs() {
        let values: Vec<u64> = (0..100).collect();
        let index = DotIndex::build(values.iter().map(|v| (d(1, v + 1), v))).unwrap();
        let counters = index.replicas.get(&ReplicaId::new(1)).unwrap();
        assert_eq!((counters.runs.len(), counters.loose.len()), (1, 0));
        let mut index = DotIndex::build([(d(1, 1), &0u64), (d(1, 3), &1)].into_iter()).unwrap();
        for c in 4..=7 {
            index.insert(d(1, c), c).unwrap();
        }
        let counters = index.replicas.get(&ReplicaId::new(1)).unwrap();
        // 3 to 7 became a run once four were consecutive; 1 stays a pair.
        assert_eq!((counters.runs.len(), counters.loose.len()), (1, 1));
        assert_eq!(index.get(d(1, 5)), Some(&5));
        assert_eq!(index.get(d(1, 3)), Some(&1));
        assert_eq!(index.get(d(1, 2)), None);
    }

    #[test]
    fn finds_in_order_and_late_dots_and_refuses_duplicates() {
        let values = [10u32, 20, 30];
        let mut index = DotIndex::build([(d(1, 2), &values[0]), (d(2, 1), &values[1])].into_iter())
            .expect("distinct dots");
        index.insert(d(1, 5), 30).expect("new dot");
        index.insert(d(1, 3), 40).expect("a late dot");
        assert_eq!(index.get(d(1, 2)), Some(&10));
        assert_eq!(index.get(d(2, 1)), Some(&20));
        assert_eq!(index.get(d(1, 5)), Some(&30));
        assert_eq!(index.get(d(1, 3)), Some(&40));
        assert_eq!(index.get(d(1, 4)), None);
        assert_eq!(index.get(d(3, 1)), None);
        assert!(index.insert(d(1, 5), 50).is_err());
        assert!(index.insert(d(1, 3), 50).is_err());
        assert!(
            DotIndex::build([(d(1, 2), &values[0]), (d(1, 2), &values[2])].into_iter()).is_err()
        );
    }
}
