//! A differential test of the OR-Set against a naive model written from the definition.
//!
//! The set's merge takes shortcuts (the small-delta path through the dot index, the inline
//! forms of dots and cloud dots, the per-replica fold of a context): a merge that differs from
//! the plain definition anywhere makes replicas diverge for good. The model keeps each element's
//! dots in a `BTreeSet` and the context as a vector plus a cloud normalised by brute force, and
//! merges by the textbook rule. Replicas run random adds, removes, clears, delta and full-state
//! merges, clones and codec round trips, and take hostile states a peer could send (counters
//! near 2^48 and `u64::MAX`, replica ids far apart, clouds beyond gaps, one dot on two
//! elements); after every step each replica must equal its model in state, encoding and
//! iteration.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use proptest::prelude::*;

use super::*;

/// Replica ids far apart, and at the ends of the range.
const REPLICAS: [u64; 6] = [0, 1, 2, 1 << 40, u64::MAX - 1, u64::MAX];

/// The context by definition: per replica a prefix `1..=n`, plus dots beyond gaps.
#[derive(Clone, Debug, Default, PartialEq)]
struct Ctx {
    vv: BTreeMap<u64, u64>,
    cloud: BTreeSet<(u64, u64)>,
}

impl Ctx {
    fn contains(&self, (r, c): (u64, u64)) -> bool {
        c <= self.vv.get(&r).copied().unwrap_or(0) || self.cloud.contains(&(r, c))
    }

    /// Moves cloud dots that continue or fall within their prefix into the vector, until none.
    fn normalise(&mut self) {
        loop {
            let vv = &self.vv;
            let Some(&(r, c)) = self
                .cloud
                .iter()
                .find(|(r, c)| *c <= vv.get(r).copied().unwrap_or(0).saturating_add(1))
            else {
                return;
            };
            self.cloud.remove(&(r, c));
            let n = self.vv.entry(r).or_insert(0);
            *n = (*n).max(c);
        }
    }

    fn insert(&mut self, dot: (u64, u64)) {
        self.cloud.insert(dot);
        self.normalise();
    }

    fn join(&mut self, other: &Ctx) {
        for (&r, &n) in &other.vv {
            let ours = self.vv.entry(r).or_insert(0);
            *ours = (*ours).max(n);
        }
        self.cloud.extend(other.cloud.iter().copied());
        self.normalise();
    }

    fn highest(&self, r: u64) -> u64 {
        let cloud = self.cloud.range((r, 0)..=(r, u64::MAX)).next_back();
        let vv = self.vv.get(&r).copied().unwrap_or(0);
        vv.max(cloud.map_or(0, |d| d.1))
    }

    fn real(&self) -> CausalContext {
        let mut ctx = CausalContext::new();
        for (&r, &n) in &self.vv {
            ctx.insert_range(ReplicaId::new(r), 1, n, 0);
        }
        for &(r, c) in &self.cloud {
            ctx.insert(Dot::new(ReplicaId::new(r), c));
        }
        ctx
    }
}

/// The OR-Set by definition.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    entries: BTreeMap<u16, BTreeSet<(u64, u64)>>,
    ctx: Ctx,
}

impl Model {
    fn add(&mut self, r: u64, value: u16) -> Model {
        let dot = (r, self.ctx.highest(r).saturating_add(1));
        self.ctx.insert(dot);
        let mut delta = Model::default();
        delta.ctx.insert(dot);
        if let Some(old) = self.entries.insert(value, [dot].into()) {
            old.into_iter().for_each(|d| delta.ctx.insert(d));
        }
        delta.entries.insert(value, [dot].into());
        delta
    }

    fn remove(&mut self, value: u16) -> Model {
        let mut delta = Model::default();
        for d in self.entries.remove(&value).unwrap_or_default() {
            delta.ctx.insert(d);
        }
        delta
    }

    fn clear(&mut self) -> Model {
        let mut delta = Model::default();
        for d in core::mem::take(&mut self.entries).into_values().flatten() {
            delta.ctx.insert(d);
        }
        delta
    }

    /// A dot survives if both sides hold it, or if the side without it never saw it.
    fn merge(&mut self, other: &Model) {
        let keys: BTreeSet<u16> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .copied()
            .collect();
        let empty = BTreeSet::new();
        let mut entries = BTreeMap::new();
        for k in keys {
            let ours = self.entries.get(&k).unwrap_or(&empty);
            let theirs = other.entries.get(&k).unwrap_or(&empty);
            let kept: BTreeSet<(u64, u64)> = ours
                .intersection(theirs)
                .copied()
                .chain(ours.iter().copied().filter(|d| !other.ctx.contains(*d)))
                .chain(theirs.iter().copied().filter(|d| !self.ctx.contains(*d)))
                .collect();
            if !kept.is_empty() {
                entries.insert(k, kept);
            }
        }
        self.entries = entries;
        self.ctx.join(&other.ctx);
    }

    fn real(&self) -> OrSet<u16> {
        let entries: BTreeMap<u16, Dots> = self
            .entries
            .iter()
            .filter_map(|(k, dots)| {
                let dots = dots.iter().map(|&(r, c)| Dot::new(ReplicaId::new(r), c));
                Some((*k, Dots::from_sorted(dots.collect())?))
            })
            .collect();
        OrSet::from_parts(entries, self.ctx.real())
    }
}

/// Checks a set against its model: state, encoding, iteration, and the context's parts.
fn agree(set: &OrSet<u16>, model: &Model) -> Result<(), TestCaseError> {
    let entries: BTreeMap<u16, BTreeSet<(u64, u64)>> = set
        .entries
        .iter()
        .map(|(k, d)| (*k, d.iter().map(|d| (d.replica.get(), d.counter)).collect()))
        .collect();
    prop_assert_eq!(&entries, &model.entries);
    let vv: BTreeMap<u64, u64> = set.ctx.vv().iter().map(|(r, n)| (r.get(), n)).collect();
    prop_assert_eq!(&vv, &model.ctx.vv);
    let cloud: BTreeSet<(u64, u64)> = set
        .ctx
        .cloud()
        .map(|d| (d.replica.get(), d.counter))
        .collect();
    prop_assert_eq!(&cloud, &model.ctx.cloud);
    let real = model.real();
    prop_assert_eq!(set, &real);
    prop_assert_eq!(crate::encode(set), crate::encode(&real));
    prop_assert!(set.iter().eq(model.entries.keys()));
    prop_assert_eq!(set.len(), model.entries.len());
    Ok(())
}

/// A counter from a hostile distribution: small, near 2^48, or near `u64::MAX`.
fn counter(pick: u8, k: u64) -> u64 {
    let k = k % 8;
    match pick % 4 {
        0 => 1 + k,
        1 => (1 << 48) - 4 + k,
        2 => u64::MAX - k,
        _ => 1 + (k * 1_000_003),
    }
}

/// A state a peer could send: a few elements on dots of any replica and counter (sometimes one
/// dot on two elements), in a context that holds them plus prefixes and scattered dots.
fn hostile(seed: &[u64]) -> Model {
    let mut model = Model::default();
    let mut seeds = seed.iter().copied().cycle();
    let mut next = move || seeds.next().unwrap_or(0);
    let n = next() % 6;
    let mut last = None;
    for _ in 0..n {
        let r = REPLICAS[(next() % 6) as usize];
        let dot = if next() % 4 == 0 {
            last.unwrap_or((r, 1))
        } else {
            (r, counter(next() as u8, next()))
        };
        last = Some(dot);
        model
            .entries
            .entry((next() % 400) as u16)
            .or_default()
            .insert(dot);
        model.ctx.insert(dot);
    }
    for _ in 0..next() % 4 {
        let r = REPLICAS[(next() % 6) as usize];
        if next() % 3 == 0 {
            let n = model.ctx.vv.entry(r).or_insert(0);
            *n = (*n).max(counter(next() as u8, next()));
            model.ctx.normalise();
        } else {
            model.ctx.insert((r, counter(next() as u8, next())));
        }
    }
    model
}

#[derive(Clone, Debug)]
enum Op {
    Add {
        at: usize,
        replica: usize,
        value: u16,
    },
    Remove {
        at: usize,
        nth: usize,
    },
    Clear {
        at: usize,
    },
    /// Merges one delta as its mutator made it (an add's in its inline form).
    Deliver {
        at: usize,
        nth: usize,
    },
    /// Merges the join of the `count` deltas starting at `from` (sizes around the threshold).
    Deltas {
        at: usize,
        from: usize,
        count: usize,
    },
    Full {
        at: usize,
        from: usize,
    },
    Clone {
        at: usize,
        from: usize,
    },
    RoundTrip {
        at: usize,
    },
    Hostile {
        at: usize,
        seed: Vec<u64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let at = 0..4usize;
    prop_oneof![
        6 => (at.clone(), 0..6usize, 0..400u16)
            .prop_map(|(at, replica, value)| Op::Add { at, replica, value }),
        4 => (at.clone(), any::<usize>()).prop_map(|(at, nth)| Op::Remove { at, nth }),
        1 => at.clone().prop_map(|at| Op::Clear { at }),
        4 => (at.clone(), any::<usize>()).prop_map(|(at, nth)| Op::Deliver { at, nth }),
        6 => (at.clone(), any::<usize>(), prop_oneof![1..3usize, 60..70usize, 0..200usize])
            .prop_map(|(at, from, count)| Op::Deltas { at, from, count }),
        1 => (at.clone(), 0..4usize).prop_map(|(at, from)| Op::Full { at, from }),
        1 => (at.clone(), 0..4usize).prop_map(|(at, from)| Op::Clone { at, from }),
        1 => at.clone().prop_map(|at| Op::RoundTrip { at }),
        2 => (at, proptest::collection::vec(any::<u64>(), 1..40))
            .prop_map(|(at, seed)| Op::Hostile { at, seed }),
    ]
}

fn run(base: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for i in 0..base {
        model.add(REPLICAS[i % 3], (i * 7 % 400) as u16);
    }
    let mut models = alloc::vec![model; 4];
    let mut sets: Vec<OrSet<u16>> = models.iter().map(Model::real).collect();
    // Each replica has indexed its set, as a long-running one would have.
    for set in &mut sets {
        set.build_index();
    }
    let mut deltas: Vec<(OrSet<u16>, Model)> = Vec::new();
    for op in ops {
        match op {
            Op::Add { at, replica, value } => {
                let r = REPLICAS[*replica];
                let delta = sets[*at].add(ReplicaId::new(r), *value);
                let model = models[*at].add(r, *value);
                agree(&delta, &model)?;
                deltas.push((delta, model));
            }
            Op::Remove { at, nth } => {
                let n = models[*at].entries.len();
                if let Some(&value) = models[*at].entries.keys().nth(nth % n.max(1)) {
                    let delta = sets[*at].remove(&value);
                    let model = models[*at].remove(value);
                    agree(&delta, &model)?;
                    deltas.push((delta, model));
                }
            }
            Op::Clear { at } => {
                let delta = sets[*at].clear();
                let model = models[*at].clear();
                agree(&delta, &model)?;
                deltas.push((delta, model));
            }
            Op::Deliver { at, nth } => {
                if let Some((d, m)) = deltas.get(nth % deltas.len().max(1)) {
                    sets[*at].merge(d);
                    models[*at].merge(m);
                }
            }
            Op::Deltas { at, from, count } => {
                if deltas.is_empty() {
                    continue;
                }
                let start = from % deltas.len();
                let mut joined = (OrSet::new(), Model::default());
                for (d, m) in deltas.iter().skip(start).take(*count) {
                    joined.0.merge(d);
                    joined.1.merge(m);
                }
                sets[*at].merge(&joined.0);
                models[*at].merge(&joined.1);
            }
            Op::Full { at, from } => {
                let (set, model) = (sets[*from].clone(), models[*from].clone());
                sets[*at].merge(&set);
                models[*at].merge(&model);
            }
            Op::Clone { at, from } => {
                sets[*at] = sets[*from].clone();
                models[*at] = models[*from].clone();
            }
            Op::RoundTrip { at } => {
                let bytes = crate::encode(&sets[*at]);
                sets[*at] =
                    crate::decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            }
            Op::Hostile { at, seed } => {
                let model = hostile(seed);
                // What the peer sends is bytes: the decoder must take them.
                let bytes = crate::encode(&model.real());
                let set: OrSet<u16> =
                    crate::decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
                agree(&set, &model)?;
                sets[*at].merge(&set);
                models[*at].merge(&model);
                deltas.push((set, model));
            }
        }
        for (set, model) in sets.iter().zip(&models) {
            agree(set, model)?;
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_merge_matches_the_definition(
        base in prop_oneof![0..8usize, 30..40usize, 100..400usize],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(base, &ops)?;
    }
}
