//! The grow-only counter.

use serde::{Deserialize, Serialize};

use crate::{Crdt, ReplicaId, Reset, VersionVector};

/// A counter that only grows: each replica counts its own increments, the value is the sum.
///
/// It grows until [`reset`](Reset::reset), which a map does when its key is removed: a reset
/// records each replica's total as it observed it (a *floor*), and the value counts only what
/// lies above the floors, so increments the reset did not observe survive it.
///
/// ```
/// use crdt_core::{Crdt, GCounter, ReplicaId};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut x = GCounter::new();
/// let mut y = GCounter::new();
/// x.inc(a, 2);
/// let delta = y.inc(b, 5);
/// x.merge(&delta);
/// assert_eq!(x.value(), 7);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct GCounter {
    // Per-replica totals merge by maximum, which is exactly a version vector's join.
    counts: VersionVector,
    /// Per replica, its total when the counter was last reset (as far as this state knows).
    floors: VersionVector,
}

impl GCounter {
    /// A counter at zero.
    pub const fn new() -> Self {
        GCounter {
            counts: VersionVector::new(),
            floors: VersionVector::new(),
        }
    }

    /// Adds `n` on behalf of `replica` and returns the delta: that replica's new total.
    ///
    /// Totals saturate at `u64::MAX`.
    // Inlined into callers in other crates (no LTO by default): the update is a few
    // instructions, and an opaque call and a returned delta in memory cost three times more.
    #[inline]
    pub fn inc(&mut self, replica: ReplicaId, n: u64) -> GCounter {
        let total = self.counts.add(replica, n);
        GCounter {
            counts: VersionVector::single(replica, total),
            floors: VersionVector::new(),
        }
    }

    /// The sum of all replicas' increments since the last reset, saturating at `u64::MAX`.
    pub fn value(&self) -> u64 {
        if self.floors.is_empty() {
            return self.counts.total();
        }
        self.contributions()
            .fold(0u64, |sum, (_, n)| sum.saturating_add(n))
    }

    /// What `replica` has added since the last reset.
    pub fn contribution(&self, replica: ReplicaId) -> u64 {
        self.counts
            .get(replica)
            .saturating_sub(self.floors.get(replica))
    }

    /// Everything `replica` ever added, resets included: its running total, which only grows.
    pub fn total_of(&self, replica: ReplicaId) -> u64 {
        self.counts.get(replica)
    }

    /// Each replica's running total (see [`total_of`](GCounter::total_of)), in replica order.
    pub fn totals(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.counts.iter()
    }

    /// Each replica's total when the counter was last reset, in replica order.
    pub fn floors(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.floors.iter()
    }

    /// What each replica has added since the last reset, in replica order; replicas with
    /// nothing since are left out.
    pub fn contributions(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.counts
            .iter()
            .map(|(r, n)| (r, n.saturating_sub(self.floors.get(r))))
            .filter(|(_, n)| *n > 0)
    }
}

impl Crdt for GCounter {
    fn merge(&mut self, other: &Self) {
        self.counts.merge(&other.counts);
        if !other.floors.is_empty() {
            self.floors.merge(&other.floors);
        }
    }
}

impl Reset for GCounter {
    /// Raises every floor to the replica's total: the value drops to 0, and increments made
    /// elsewhere that this state has not seen count again once merged.
    fn reset(&mut self) -> GCounter {
        self.floors.merge(&self.counts);
        GCounter {
            counts: VersionVector::new(),
            floors: self.counts.clone(),
        }
    }
}
