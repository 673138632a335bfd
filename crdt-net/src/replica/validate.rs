//! The validation layer: every message is checked against the replica's state before anything
//! of it is applied, so a refused message changes nothing.
//!
//! What a trusted but faulty (or compromised) peer could otherwise do with one message:
//! claim dots of this replica that it never issued (its later writes would then reuse them and
//! be dropped everywhere), claim counters near `u64::MAX` (a writer's later updates would look
//! seen), complete a state transfer whose covers nothing justifies, or flood the replica's
//! context with dots from made-up writers until its digests no longer fit in a message.

use std::collections::BTreeSet;

use crdt_core::{CausalContext, Dot, ReplicaId, VersionVector};

use super::Replica;
use crate::message::{DeltaEntry, Message, StateDone};
use crate::{Object, ProtocolError};

/// Counters (dot counters, version vector entries, counter contributions) above this are
/// refused: a million updates a second for eight years stays below it, and no arithmetic on
/// such counters comes near `u64::MAX`.
pub const MAX_COUNTER: u64 = 1 << 48;

impl Replica {
    /// Checks `message` from `from` against this replica's state; `Ok` means applying it is
    /// safe.
    pub(super) fn validate(&self, from: ReplicaId, message: &Message) -> Result<(), ProtocolError> {
        let claims = Claims {
            me: self.config.id,
            issued: self.issued(),
        };
        match message {
            Message::Digest(digest) => {
                claims.context(&digest.seen)?;
                if let Some(resume) = &digest.resume {
                    claims.vv(&resume.base)?;
                    self.check_resume(&resume.ranges)?;
                }
            }
            Message::InSync
            | Message::Peers(_)
            | Message::Read(_)
            | Message::Summary(_)
            | Message::Mismatch => {}
            Message::Deltas(entries) => {
                for entry in entries {
                    claims.dot(entry.dot)?;
                    claims.object(&entry.delta)?;
                    self.check_own_counters(&entry.key, &entry.delta)?;
                }
                self.check_growth(entries)?;
            }
            Message::Ack(dots) => claims.context(dots)?,
            Message::State(chunk) => {
                // `walked` and `keys` are refused for nothing: they only show progress, and
                // the receiver clamps them.
                claims.vv(&chunk.base)?;
                for entry in &chunk.objects {
                    claims.vv(&entry.touched)?;
                    claims.object(&entry.object)?;
                    self.check_own_counters(&entry.key, &entry.object)?;
                }
            }
            Message::StateDone(done) => {
                claims.context(&done.covers)?;
                if self.claims_on_arrival(from, done) {
                    if !self.justified(&done.covers) {
                        return Err(ProtocolError::UnjustifiedCovers);
                    }
                    self.check_context_growth(&done.covers)?;
                }
            }
            Message::ReadReply(reply) => {
                if let Some(entry) = &reply.entry {
                    claims.vv(&entry.touched)?;
                    claims.object(&entry.object)?;
                    self.check_own_counters(&entry.key, &entry.object)?;
                }
            }
        }
        Ok(())
    }

    /// Whether `covers` claims only what this replica has seen or what the objects it holds
    /// account for (the chunks of a transfer are merged, their progress included, as they
    /// arrive).
    ///
    /// An honest transfer always passes (one with an entry refused for clock drift never
    /// claims its covers, so it is not checked): every dot of the sender's context updated some key,
    /// whose per-writer progress (`touched`) reached it; the sender sent that key unless the
    /// receiver's digest showed it already had it, and the receiver keeps the `touched` of
    /// every key it merged.
    pub(super) fn justified(&self, covers: &CausalContext) -> bool {
        let seen = &self.durable.seen;
        let beyond_seen = covers.vv().iter().any(|(r, n)| n > seen.vv().get(r))
            || covers.cloud().any(|d| !seen.contains(d));
        if !beyond_seen {
            return true;
        }
        let mut reach = VersionVector::default();
        for touched in self.durable.touched.values() {
            crdt_core::Crdt::merge(&mut reach, touched);
        }
        covers
            .vv()
            .iter()
            .all(|(r, n)| n <= seen.highest(r).max(reach.get(r)))
            && covers
                .cloud()
                .all(|d| seen.contains(d) || d.counter <= reach.get(d.replica))
    }

    /// Whether `done` completes its transfer from `from` (every chunk has arrived) and its
    /// covers would then be merged: not when an entry of the transfer was refused (a write
    /// stamped beyond the drift bound, whose progress is missing on purpose).
    fn claims_on_arrival(&self, from: ReplicaId, done: &StateDone) -> bool {
        let transfer = self
            .incoming
            .get(&from)
            .and_then(|i| i.transfers.iter().find(|(t, _)| *t == done.transfer))
            .map(|(_, t)| t);
        match transfer {
            Some(t) => !t.refused && super::transfer::all_chunks(&t.chunks, done.chunks),
            None => done.chunks == 0,
        }
    }

    /// Refuses counter totals or reset floors of this replica's own increments beyond what it
    /// has counted itself: only this replica raises its total, so a higher one is made up.
    /// Merged, a floor above it would hide this replica's later increments, and a total above
    /// it would block them at [`MAX_COUNTER`]. (Where this replica holds another type under
    /// the key, the merge settles the conflict and nothing is checked.)
    fn check_own_counters(&self, key: &str, incoming: &Object) -> Result<(), ProtocolError> {
        let me = self.config.id;
        let mut stack = vec![(self.durable.objects.get(key), incoming)];
        while let Some((ours, theirs)) = stack.pop() {
            let ours = ours.filter(|o| **o != Object::Empty);
            match (ours, theirs) {
                (None | Some(Object::GCounter(_)), Object::GCounter(c)) => {
                    let mine = match ours {
                        Some(Object::GCounter(m)) => Some(m),
                        _ => None,
                    };
                    own_within(me, mine, c)?;
                }
                (None | Some(Object::PNCounter(_)), Object::PNCounter(c)) => {
                    let mine = match ours {
                        Some(Object::PNCounter(m)) => Some(m),
                        _ => None,
                    };
                    own_within(me, mine.map(|m| m.increments()), c.increments())?;
                    own_within(me, mine.map(|m| m.decrements()), c.decrements())?;
                }
                (None | Some(Object::Map(_)), Object::Map(map)) => {
                    for (k, v) in map.values_kept() {
                        let mine = match ours {
                            Some(Object::Map(m)) => m.value_kept(k),
                            _ => None,
                        };
                        stack.push((mine, v));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Refuses resume ranges no honest replica sends: out of key order, overlapping, or more
    /// than a quarter of a message of them (what an honest replica's resume point keeps). A transfer
    /// looks a key up in them by binary search, so they must be ordered.
    fn check_resume(&self, ranges: &[(String, String)]) -> Result<(), ProtocolError> {
        let bytes: usize = ranges.iter().map(|(a, b)| a.len() + b.len() + 4).sum();
        if bytes > self.config.max_message / 4 {
            return Err(ProtocolError::OverBudget("resume ranges"));
        }
        let ordered = ranges.iter().all(|(first, last)| first <= last)
            && ranges.windows(2).all(|w| match w {
                [(_, last), (next, _)] => last < next,
                _ => true,
            });
        if !ordered {
            return Err(ProtocolError::Malformed);
        }
        Ok(())
    }

    /// Refuses deltas that would grow the context past its budgets: more writers than
    /// `max_writers`, or more dots beyond gaps than `max_cloud`.
    fn check_growth(&self, entries: &[DeltaEntry]) -> Result<(), ProtocolError> {
        let seen = &self.durable.seen;
        let mut writers = BTreeSet::new();
        let mut cloud = 0;
        for entry in entries.iter().filter(|e| !seen.contains(e.dot)) {
            let writer = entry.dot.replica;
            if seen.highest(writer) == 0 {
                writers.insert(writer);
            }
            if entry.dot.counter > seen.vv().get(writer).saturating_add(1) {
                cloud += 1;
            }
        }
        if !writers.is_empty() {
            // Only when new writers come: listing the known ones walks the cloud.
            let known: BTreeSet<ReplicaId> = seen
                .vv()
                .iter()
                .map(|(r, _)| r)
                .chain(seen.cloud().map(|d| d.replica))
                .collect();
            if known.len() + writers.len() > self.config.max_writers {
                return Err(ProtocolError::OverBudget("writers in the causal context"));
            }
        }
        if cloud > 0 && seen.cloud_len() + cloud > self.config.max_cloud {
            return Err(ProtocolError::OverBudget(
                "dots beyond gaps in the causal context",
            ));
        }
        Ok(())
    }
}

impl Replica {
    /// Refuses covers that would take the context past its budgets (writers, dots beyond
    /// gaps), as [`check_growth`](Replica::check_growth) does for deltas.
    fn check_context_growth(&self, covers: &CausalContext) -> Result<(), ProtocolError> {
        let seen = &self.durable.seen;
        let new_writers = covers
            .vv()
            .iter()
            .map(|(r, _)| r)
            .chain(covers.cloud().map(|d| d.replica))
            .filter(|r| seen.highest(*r) == 0)
            .collect::<BTreeSet<_>>()
            .len();
        if new_writers > 0 && seen.vv().len() + new_writers > self.config.max_writers {
            return Err(ProtocolError::OverBudget("writers in the causal context"));
        }
        if seen.cloud_len() + covers.cloud_len() > self.config.max_cloud {
            return Err(ProtocolError::OverBudget(
                "dots beyond gaps in the causal context",
            ));
        }
        Ok(())
    }
}

/// Whether `theirs` claims no more of `me`'s increments (its total, or its floor) than `ours`
/// counts.
fn own_within(
    me: ReplicaId,
    ours: Option<&crdt_core::GCounter>,
    theirs: &crdt_core::GCounter,
) -> Result<(), ProtocolError> {
    let counted = ours.map_or(0, |c| c.total_of(me));
    let floor = theirs
        .floors()
        .find(|(r, _)| *r == me)
        .map_or(0, |(_, n)| n);
    let claimed = theirs.total_of(me).max(floor);
    if claimed > counted {
        return Err(ProtocolError::ForgedDot(Dot::new(me, claimed)));
    }
    Ok(())
}

/// The first counter in `object` above [`MAX_COUNTER`], if any: what a local update must not
/// make, since peers would refuse it.
pub(crate) fn counter_over_limit(object: &Object) -> Option<u64> {
    let claims = Claims {
        me: ReplicaId::new(0),
        issued: u64::MAX,
    };
    match claims.object(object) {
        Err(ProtocolError::CounterTooLarge(dot)) => Some(dot.counter),
        _ => None,
    }
}

/// What a peer may claim: no counter above [`MAX_COUNTER`], and no dot of this replica beyond
/// the last it issued.
struct Claims {
    me: ReplicaId,
    issued: u64,
}

impl Claims {
    fn counter(&self, replica: ReplicaId, counter: u64) -> Result<(), ProtocolError> {
        let dot = Dot::new(replica, counter);
        if counter > MAX_COUNTER {
            return Err(ProtocolError::CounterTooLarge(dot));
        }
        if replica == self.me && counter > self.issued {
            return Err(ProtocolError::ForgedDot(dot));
        }
        Ok(())
    }

    fn dot(&self, dot: Dot) -> Result<(), ProtocolError> {
        self.counter(dot.replica, dot.counter)
    }

    fn vv(&self, vv: &VersionVector) -> Result<(), ProtocolError> {
        vv.iter().try_for_each(|(r, n)| self.counter(r, n))
    }

    fn context(&self, context: &CausalContext) -> Result<(), ProtocolError> {
        self.vv(context.vv())?;
        context.cloud().try_for_each(|d| self.dot(d))
    }

    /// Every context inside `object`, nested maps included; counters' totals are bounded too.
    fn object(&self, object: &Object) -> Result<(), ProtocolError> {
        let mut stack = vec![object];
        while let Some(object) = stack.pop() {
            match object {
                Object::Empty | Object::Lww(_) => {}
                // Running totals and floors, not what lies between them: a total near
                // u64::MAX would make the writer's later increments saturate.
                Object::GCounter(c) => {
                    self.total(c.totals())?;
                    self.total(c.floors())?;
                }
                Object::PNCounter(c) => {
                    for half in [c.increments(), c.decrements()] {
                        self.total(half.totals())?;
                        self.total(half.floors())?;
                    }
                }
                Object::Set(set) => self.context(set.context())?,
                Object::Mv(register) => self.context(register.context())?,
                Object::Map(map) => {
                    self.context(map.context())?;
                    stack.extend(map.values_kept().map(|(_, v)| v));
                }
            }
        }
        Ok(())
    }

    /// Counter contributions are totals, not dots: only their size is bounded.
    fn total(
        &self,
        contributions: impl Iterator<Item = (ReplicaId, u64)>,
    ) -> Result<(), ProtocolError> {
        for (replica, total) in contributions {
            if total > MAX_COUNTER {
                return Err(ProtocolError::CounterTooLarge(Dot::new(replica, total)));
            }
        }
        Ok(())
    }
}
