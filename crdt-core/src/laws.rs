//! One law harness for every CRDT in this crate (feature `laws`).
//!
//! [`check`] turns arbitrary bytes into a schedule of operations, full-state merges and delta
//! deliveries on three to five replicas, runs it, and checks:
//!
//! * **delta = full state**: every mutator's delta `d` satisfies `s ⊔ d = s'` and
//!   `(t ⊔ s) ⊔ d = t ⊔ s'` for another replica `t`;
//! * **lattice laws** on the reached states and deltas: commutativity, associativity, idempotence
//!   and inflation (`a ⊔ b` is an upper bound of `a` and `b`);
//! * **convergence under any delivery**: deltas delivered out of order, duplicated or never,
//!   then repaired by full-state merges, leave every replica equal, with identical bytes; a fresh
//!   replica fed every delta (shuffled, duplicated) reaches the same state;
//! * **value semantics**: after every step, each replica's value equals the type's oracle
//!   ([`Subject::expected`]) over the exact causal history it has seen;
//! * **codec round trip** of every state and delta;
//! * **decomposition**: the pieces of [`Decompose::split`] are valid states (they round-trip
//!   through the codec) whose join, in any order, is the whole.
//!
//! The same [`check`] backs the property tests ([`law_tests!`](crate::law_tests)) and the `merge`
//! fuzz target.

// Test support: replicas are only ever indexed modulo their (non-zero) count.
#![allow(clippy::indexing_slicing)]

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Debug};

pub use arbitrary::{self, Unstructured};
pub use proptest;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{
    codec, Crdt, Decompose, GCounter, HlcTimestamp, LwwRegister, MvRegister, OrMap, OrSet,
    PNCounter, ReplicaId, Reset,
};

/// Declares one property test per `name: Type` pair, each running [`check`] on arbitrary
/// schedules (256 cases by default; set `PROPTEST_CASES` for more).
///
/// ```ignore
/// crdt_core::law_tests! { gcounter: GCounter, orset: OrSet<u8> }
/// ```
#[macro_export]
macro_rules! law_tests {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $crate::laws::proptest::proptest! {
            $(
                #[test]
                fn $name(bytes in $crate::laws::schedule_bytes()) {
                    if let Err(violation) = $crate::laws::check::<$ty>(&bytes) {
                        return Err($crate::laws::proptest::test_runner::TestCaseError::fail(
                            violation.to_string(),
                        ));
                    }
                }
            )*
        }
    };
}

/// The hex blocks of a document: each ```` ```TAG NAME ```` fence up to the closing fence,
/// with `#` comments dropped, as `(NAME, bytes)`. Golden-vector tests read them from
/// `docs/wire-format.md`, so the document and the tests cannot drift apart.
///
/// Panics on a block that is not hex, which is a broken document.
pub fn hex_blocks(doc: &str, tag: &str) -> Vec<(String, Vec<u8>)> {
    let opening = format!("```{tag} ");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix(opening.as_str()) else {
            continue;
        };
        let bytes = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .flat_map(|l| l.split('#').next())
            .flat_map(str::split_whitespace)
            .map(|b| match u8::from_str_radix(b, 16) {
                Ok(byte) => byte,
                Err(_) => panic!("{name}: {b:?} is not a hex byte"),
            })
            .collect();
        out.push((name.trim().into(), bytes));
    }
    out
}

/// The byte strings [`law_tests!`] draws schedules from.
pub fn schedule_bytes() -> proptest::collection::VecStrategy<proptest::num::u8::Any> {
    proptest::collection::vec(proptest::num::u8::ANY, 0..1024)
}

/// A CRDT the harness can drive: how to make arbitrary operations, apply them, read the value,
/// and what the value must be given the operations seen.
pub trait Subject: Crdt + Decompose + Serialize + DeserializeOwned {
    /// One operation, as the harness generates it.
    type Op: Clone + Debug;
    /// What the application reads.
    type Value: PartialEq + Debug;

    /// An arbitrary operation.
    fn arbitrary_op(u: &mut Unstructured<'_>) -> arbitrary::Result<Self::Op>;

    /// Applies `op` on behalf of `replica`, returning the mutator's delta.
    fn apply(&mut self, replica: ReplicaId, op: &Self::Op) -> Self;

    /// The value the application reads.
    fn value(&self) -> Self::Value;

    /// The value a replica must show after seeing exactly `events` (in a causal order).
    fn expected(events: &[&Event<Self::Op>]) -> Self::Value;

    /// The value after seeing `survivors` and `removed`, where a [`Reset`] (the removal of
    /// the key holding this value in a map) observed exactly the events in `removed`. By
    /// default a reset is exact: the value of the survivors alone.
    fn expected_reset(survivors: &[&Event<Self::Op>], removed: &[&Event<Self::Op>]) -> Self::Value {
        let _ = removed;
        Self::expected(survivors)
    }
}

/// An operation as it happened: who did it, and which events it had seen.
#[derive(Clone, Debug)]
pub struct Event<Op> {
    /// Unique, and increasing along causality.
    pub id: usize,
    /// Where it happened.
    pub replica: ReplicaId,
    /// What it was.
    pub op: Op,
    /// The events its replica had seen when it happened (its causal past): bit `i` stands for
    /// the event with id `i`.
    pub past: History,
}

/// A set of event ids as a bit set: a schedule has at most [`MAX_STEPS`] events.
pub type History = u64;

/// The longest schedule [`check`] runs.
pub const MAX_STEPS: usize = 64;

impl<Op> Event<Op> {
    /// Whether `other` is in this event's causal past.
    pub fn saw(&self, other: &Event<Op>) -> bool {
        self.past & (1 << other.id) != 0
    }
}

/// A broken law, with what broke it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The law's name.
    pub law: &'static str,
    /// The states and values involved.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.law, self.detail)
    }
}

fn ensure(ok: bool, law: &'static str, detail: impl FnOnce() -> String) -> Result<(), Violation> {
    if ok {
        Ok(())
    } else {
        Err(Violation {
            law,
            detail: detail(),
        })
    }
}

enum Step<Op> {
    Apply { replica: usize, op: Op },
    Merge { from: usize, to: usize },
    Deliver { delta: usize, to: usize },
}

/// Runs the schedule that `bytes` describes on `T` and checks every law.
///
/// Never panics for a lawful type, whatever the bytes; returns the first violation otherwise.
pub fn check<T: Subject>(bytes: &[u8]) -> Result<(), Violation> {
    let mut u = Unstructured::new(bytes);
    let replicas = u.int_in_range(3..=5usize).unwrap_or(3);
    let mut steps = Vec::new();
    while !u.is_empty() && steps.len() < MAX_STEPS {
        let Ok(step) = arbitrary_step::<T>(&mut u, replicas) else {
            break;
        };
        steps.push(step);
    }
    Run::<T>::new(replicas).execute(&steps)
}

fn arbitrary_step<T: Subject>(
    u: &mut Unstructured<'_>,
    replicas: usize,
) -> arbitrary::Result<Step<T::Op>> {
    let pick = |u: &mut Unstructured<'_>| u.choose_index(replicas);
    Ok(match u.int_in_range(0..=9u8)? {
        0..=4 => Step::Apply {
            replica: pick(u)?,
            op: T::arbitrary_op(u)?,
        },
        5..=6 => Step::Merge {
            from: pick(u)?,
            to: pick(u)?,
        },
        _ => Step::Deliver {
            delta: usize::from(u.arbitrary::<u8>()?),
            to: pick(u)?,
        },
    })
}

/// Two worlds run the same operations: in `exact`, replicas only exchange full states, so each
/// replica's causal history is known exactly and its value can be checked against the oracle; in
/// `gossip`, they also receive individual deltas in any order, duplicated or not at all.
struct Run<T: Subject> {
    events: Vec<Event<T::Op>>,
    exact: Vec<(T, History)>,
    gossip: Vec<T>,
    deltas: Vec<T>,
}

impl<T: Subject> Run<T> {
    fn new(replicas: usize) -> Self {
        Run {
            events: Vec::new(),
            exact: (0..replicas).map(|_| (T::default(), 0)).collect(),
            gossip: (0..replicas).map(|_| T::default()).collect(),
            deltas: Vec::new(),
        }
    }

    fn execute(mut self, steps: &[Step<T::Op>]) -> Result<(), Violation> {
        for step in steps {
            match step {
                Step::Apply { replica, op } => self.apply(*replica, op)?,
                Step::Merge { from, to } => {
                    let (state, history) = self.exact_at(*from).clone();
                    let target = self.exact_at_mut(*to);
                    target.0.merge(&state);
                    target.1 |= history;
                    self.check_value(*to)?;
                    let state = self.gossip_at(*from).clone();
                    self.gossip_at_mut(*to).merge(&state);
                }
                Step::Deliver { delta, to } => {
                    if let Some(d) = self.deltas.get(delta % self.deltas.len().max(1)).cloned() {
                        self.gossip_at_mut(*to).merge(&d);
                    }
                }
            }
        }
        self.finish()
    }

    fn apply(&mut self, replica: usize, op: &T::Op) -> Result<(), Violation> {
        let id = ReplicaId::new(replica as u64 + 1);
        let (state, history) = self.exact_at(replica).clone();
        self.events.push(Event {
            id: self.events.len(),
            replica: id,
            op: op.clone(),
            past: history,
        });
        let mut after = state.clone();
        let delta = after.apply(id, op);
        check_delta(&state, &delta, &after, None)?;
        let event_id = self.events.len() - 1;
        let target = self.exact_at_mut(replica);
        target.0 = after;
        target.1 |= 1 << event_id;
        self.check_value(replica)?;

        let before = self.gossip_at(replica).clone();
        let mut after = before.clone();
        let delta = after.apply(id, op);
        let other = self.gossip_at((replica + 1) % self.gossip.len()).clone();
        check_delta(&before, &delta, &after, Some(&other))?;
        *self.gossip_at_mut(replica) = after;
        self.deltas.push(delta);
        Ok(())
    }

    fn check_value(&self, replica: usize) -> Result<(), Violation> {
        let (state, history) = self.exact_at(replica);
        let seen: Vec<&Event<T::Op>> = self
            .events
            .iter()
            .filter(|e| history & (1 << e.id) != 0)
            .collect();
        let (got, want) = (state.value(), T::expected(&seen));
        ensure(got == want, "value semantics", || {
            format!("replica {replica} shows {got:?}, expected {want:?} after {seen:?}; state {state:?}")
        })
    }

    fn finish(mut self) -> Result<(), Violation> {
        let exact: Vec<T> = self.exact.iter().map(|e| e.0.clone()).collect();
        lattice_laws(&exact)?;
        lattice_laws(&self.gossip)?;
        lattice_laws(&self.deltas)?;
        for value in exact.iter().chain(&self.gossip).chain(&self.deltas) {
            round_trip(value)?;
        }
        for (i, whole) in exact.iter().enumerate() {
            let other = &exact[(i + 1) % exact.len()];
            decomposition(whole, other)?;
        }

        // Anti-entropy repair: every replica merges every other, each in its own order.
        let join = self
            .gossip
            .iter()
            .fold(T::default(), |acc, s| acc.joined(s));
        let n = self.gossip.len();
        for i in 0..n {
            for k in 1..n {
                let other = self.gossip_at((i + k) % n).clone();
                self.gossip_at_mut(i).merge(&other);
            }
        }
        let join_bytes = codec::encode(&join);
        for (i, state) in self.gossip.iter().enumerate() {
            ensure(*state == join, "convergence", || {
                format!("replica {i} ended at {state:?}, the join is {join:?}")
            })?;
            ensure(
                codec::encode(state) == join_bytes,
                "canonical bytes",
                || format!("replica {i} equals the join but encodes differently: {state:?}"),
            )?;
        }

        // Deltas alone, backwards then forwards (so out of order and each twice), reach the join.
        let mut fresh = T::default();
        for d in self.deltas.iter().rev().chain(&self.deltas) {
            fresh.merge(d);
        }
        ensure(fresh == join, "convergence from deltas alone", || {
            format!("deltas gave {fresh:?}, the join is {join:?}")
        })?;

        // The exact world converges too, to the value the oracle gives for all events.
        let mut all = T::default();
        for state in &exact {
            all.merge(state);
        }
        let events: Vec<&Event<T::Op>> = self.events.iter().collect();
        let (got, want) = (all.value(), T::expected(&events));
        ensure(got == want, "value semantics after convergence", || {
            format!("converged to {got:?}, expected {want:?}")
        })
    }

    fn exact_at(&self, i: usize) -> &(T, History) {
        &self.exact[i % self.exact.len()]
    }
    fn exact_at_mut(&mut self, i: usize) -> &mut (T, History) {
        let n = self.exact.len();
        &mut self.exact[i % n]
    }
    fn gossip_at(&self, i: usize) -> &T {
        &self.gossip[i % self.gossip.len()]
    }
    fn gossip_at_mut(&mut self, i: usize) -> &mut T {
        let n = self.gossip.len();
        &mut self.gossip[i % n]
    }
}

fn check_delta<T: Crdt>(
    before: &T,
    delta: &T,
    after: &T,
    other: Option<&T>,
) -> Result<(), Violation> {
    let via_delta = before.joined(delta);
    ensure(via_delta == *after, "delta = full state", || {
        format!("{before:?} ⊔ delta {delta:?} = {via_delta:?}, but the mutation gave {after:?}")
    })?;
    if let Some(t) = other {
        let lhs = t.joined(before).joined(delta);
        let rhs = t.joined(after);
        ensure(lhs == rhs, "delta = full state at another replica", || {
            format!("(t ⊔ s) ⊔ d = {lhs:?} but t ⊔ s' = {rhs:?}")
        })?;
    }
    Ok(())
}

fn lattice_laws<T: Crdt>(states: &[T]) -> Result<(), Violation> {
    for (i, a) in states.iter().enumerate() {
        ensure(a.joined(a) == *a, "idempotence", || format!("{a:?}"))?;
        let (Some(b), Some(c)) = (states.get(i + 1), states.get(i + 2)) else {
            continue;
        };
        let (ab, ba) = (a.joined(b), b.joined(a));
        ensure(ab == ba, "commutativity", || {
            format!("a={a:?} b={b:?}: a⊔b={ab:?} b⊔a={ba:?}")
        })?;
        let (left, right) = (ab.joined(c), a.joined(&b.joined(c)));
        ensure(left == right, "associativity", || {
            format!("a={a:?} b={b:?} c={c:?}: (a⊔b)⊔c={left:?} a⊔(b⊔c)={right:?}")
        })?;
        ensure(
            ab.joined(a) == ab && ab.joined(b) == ab,
            "inflation",
            || format!("a⊔b={ab:?} is not above a={a:?} and b={b:?}"),
        )?;
    }
    Ok(())
}

fn decomposition<T: Crdt + Decompose + Serialize + DeserializeOwned>(
    whole: &T,
    other: &T,
) -> Result<(), Violation> {
    for max in [1, 2] {
        let pieces = whole.split(max);
        let mut into_other = other.clone();
        for piece in pieces.iter().rev() {
            round_trip(piece)?;
            into_other.merge(piece);
        }
        let want = other.joined(whole);
        ensure(into_other == want, "decomposition", || {
            format!("pieces {pieces:?} of {whole:?} merged into {other:?} gave {into_other:?}, not {want:?}")
        })?;
    }
    Ok(())
}

fn round_trip<T: Crdt + Serialize + DeserializeOwned>(value: &T) -> Result<(), Violation> {
    let bytes = codec::encode(value);
    let back = codec::decode::<T>(&bytes);
    ensure(back.as_ref() == Ok(value), "codec round trip", || {
        format!("{value:?} encoded as {bytes:02x?} decoded as {back:?}")
    })
}

/// Operations on [`GCounter`].
#[derive(Clone, Debug)]
pub struct Inc(pub u64);

impl Subject for GCounter {
    type Op = Inc;
    type Value = u64;

    fn arbitrary_op(u: &mut Unstructured<'_>) -> arbitrary::Result<Inc> {
        Ok(Inc(u.int_in_range(0..=5)?))
    }
    fn apply(&mut self, replica: ReplicaId, op: &Inc) -> Self {
        self.inc(replica, op.0)
    }
    fn value(&self) -> u64 {
        GCounter::value(self)
    }
    fn expected(events: &[&Event<Inc>]) -> u64 {
        events.iter().map(|e| e.op.0).sum()
    }
}

/// Operations on [`PNCounter`].
#[derive(Clone, Debug)]
pub enum Count {
    /// Add.
    Inc(u64),
    /// Subtract.
    Dec(u64),
}

impl Subject for PNCounter {
    type Op = Count;
    type Value = i64;

    fn arbitrary_op(u: &mut Unstructured<'_>) -> arbitrary::Result<Count> {
        let n = u.int_in_range(0..=5)?;
        Ok(if u.arbitrary()? {
            Count::Inc(n)
        } else {
            Count::Dec(n)
        })
    }
    fn apply(&mut self, replica: ReplicaId, op: &Count) -> Self {
        match op {
            Count::Inc(n) => self.inc(replica, *n),
            Count::Dec(n) => self.dec(replica, *n),
        }
    }
    fn value(&self) -> i64 {
        PNCounter::value(self)
    }
    fn expected(events: &[&Event<Count>]) -> i64 {
        events
            .iter()
            .map(|e| match e.op {
                Count::Inc(n) => n as i64,
                Count::Dec(n) => -(n as i64),
            })
            .sum()
    }
}

/// Operations on [`OrSet`].
#[derive(Clone, Debug)]
pub enum SetOp {
    /// Add an element.
    Add(u8),
    /// Remove an element.
    Remove(u8),
    /// Remove every element.
    Clear,
}

impl Subject for OrSet<u8> {
    type Op = SetOp;
    type Value = Vec<u8>;

    fn arbitrary_op(u: &mut Unstructured<'_>) -> arbitrary::Result<SetOp> {
        let x = u.int_in_range(0..=5)?;
        Ok(match u.int_in_range(0..=9u8)? {
            0..=5 => SetOp::Add(x),
            6..=8 => SetOp::Remove(x),
            _ => SetOp::Clear,
        })
    }
    fn apply(&mut self, replica: ReplicaId, op: &SetOp) -> Self {
        match op {
            SetOp::Add(x) => self.add(replica, *x),
            SetOp::Remove(x) => self.remove(x),
            SetOp::Clear => self.clear(),
        }
    }
    fn value(&self) -> Vec<u8> {
        self.iter().copied().collect()
    }
    /// Add wins: `x` is present iff some add of `x` was seen by no remove of `x`.
    fn expected(events: &[&Event<SetOp>]) -> Vec<u8> {
        let removes = |x: u8, add: &Event<SetOp>| {
            events.iter().any(|r| {
                let removes_x = match r.op {
                    SetOp::Remove(y) => y == x,
                    SetOp::Clear => true,
                    SetOp::Add(_) => false,
                };
                removes_x && r.saw(add)
            })
        };
        let present: BTreeSet<u8> = events
            .iter()
            .filter_map(|e| match e.op {
                SetOp::Add(x) if !removes(x, e) => Some(x),
                _ => None,
            })
            .collect();
        present.into_iter().collect()
    }
}

/// A write to an [`LwwRegister`] at a given clock reading.
#[derive(Clone, Debug)]
pub struct LwwSet {
    /// The writer's clock reading.
    pub time: HlcTimestamp,
    /// The value written.
    pub value: u8,
}

impl Subject for LwwRegister<u8> {
    type Op = LwwSet;
    type Value = Option<u8>;

    fn arbitrary_op(u: &mut Unstructured<'_>) -> arbitrary::Result<LwwSet> {
        // Few distinct readings, so ties between replicas are common.
        let time = HlcTimestamp::new(u.int_in_range(0..=3)?, u.int_in_range(0..=1)?);
        Ok(LwwSet {
            time,
            value: u.arbitrary()?,
        })
    }
    fn apply(&mut self, replica: ReplicaId, op: &LwwSet) -> Self {
        self.set(op.time, replica, op.value)
    }
    fn value(&self) -> Option<u8> {
        self.get().copied()
    }
    /// The write with the greatest (timestamp, replica), then value.
    fn expected(events: &[&Event<LwwSet>]) -> Option<u8> {
        Self::expected_reset(events, &[])
    }

    /// A reset hides every write stamped at or below the latest one it observed: of the
    /// others, the greatest.
    fn expected_reset(survivors: &[&Event<LwwSet>], removed: &[&Event<LwwSet>]) -> Option<u8> {
        let floor = removed.iter().map(|e| (e.op.time, e.replica)).max();
        survivors
            .iter()
            .map(|e| ((e.op.time, e.replica), e.op.value))
            .filter(|(stamp, _)| Some(*stamp) > floor)
            .max()
            .map(|w| w.1)
    }
}

/// A write to an [`MvRegister`].
#[derive(Clone, Debug)]
pub struct MvWrite(pub u8);

impl Subject for MvRegister<u8> {
    type Op = MvWrite;
    type Value = Vec<u8>;

    fn arbitrary_op(u: &mut Unstructured<'_>) -> arbitrary::Result<MvWrite> {
        Ok(MvWrite(u.arbitrary()?))
    }
    fn apply(&mut self, replica: ReplicaId, op: &MvWrite) -> Self {
        self.write(replica, op.0)
    }
    fn value(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self.values().copied().collect();
        v.sort_unstable();
        v
    }
    /// Exactly the writes no other seen write has seen: the concurrent maxima.
    fn expected(events: &[&Event<MvWrite>]) -> Vec<u8> {
        let mut v: Vec<u8> = events
            .iter()
            .filter(|w| !events.iter().any(|later| later.saw(w)))
            .map(|w| w.op.0)
            .collect();
        v.sort_unstable();
        v
    }
}

/// Operations on an [`OrMap`] with small keys.
#[derive(Clone, Debug)]
pub enum MapOp<Op> {
    /// Apply a nested operation to a key's value.
    Update(u8, Op),
    /// Remove a key.
    Remove(u8),
}

impl<V: Subject + Reset> Subject for OrMap<u8, V> {
    type Op = MapOp<V::Op>;
    type Value = BTreeMap<u8, V::Value>;

    fn arbitrary_op(u: &mut Unstructured<'_>) -> arbitrary::Result<Self::Op> {
        let key = u.int_in_range(0..=3)?;
        Ok(if u.int_in_range(0..=3u8)? == 0 {
            MapOp::Remove(key)
        } else {
            MapOp::Update(key, V::arbitrary_op(u)?)
        })
    }

    fn apply(&mut self, replica: ReplicaId, op: &Self::Op) -> Self {
        match op {
            MapOp::Update(key, op) => self.update(replica, *key, |v| v.apply(replica, op)),
            MapOp::Remove(key) => self.remove(key),
        }
    }

    fn value(&self) -> Self::Value {
        self.iter().map(|(k, v)| (*k, v.value())).collect()
    }

    fn expected(events: &[&Event<Self::Op>]) -> Self::Value {
        Self::expected_reset(events, &[])
    }

    /// Observed-remove: a key's updates seen by a remove of the key (or by a reset of the
    /// whole map) are discarded; the key is present iff an update of it survives, and its
    /// value is the nested oracle over the survivors, told which updates were discarded.
    fn expected_reset(survivors: &[&Event<Self::Op>], removed: &[&Event<Self::Op>]) -> Self::Value {
        let mut out = BTreeMap::new();
        for key in 0..=3u8 {
            let updates = |events: &[&Event<Self::Op>]| -> Vec<Event<V::Op>> {
                events
                    .iter()
                    .filter_map(|e| match &e.op {
                        MapOp::Update(k, op) if *k == key => Some(Event {
                            id: e.id,
                            replica: e.replica,
                            op: op.clone(),
                            past: e.past,
                        }),
                        _ => None,
                    })
                    .collect()
            };
            let seen_by_remove = |u: &Event<V::Op>| {
                survivors.iter().any(|r| {
                    matches!(r.op, MapOp::Remove(k) if k == key) && r.past & (1 << u.id) != 0
                })
            };
            let mine = updates(survivors);
            let earlier = updates(removed);
            let kept: Vec<&Event<V::Op>> = mine.iter().filter(|u| !seen_by_remove(u)).collect();
            if kept.is_empty() {
                continue;
            }
            let gone: Vec<&Event<V::Op>> = mine
                .iter()
                .filter(|u| seen_by_remove(u))
                .chain(&earlier)
                .collect();
            out.insert(key, V::expected_reset(&kept, &gone));
        }
        out
    }
}
