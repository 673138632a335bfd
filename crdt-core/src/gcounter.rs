//! The grow-only counter.

use serde::{Deserialize, Serialize};

use crate::{Crdt, ReplicaId, VersionVector};

/// A counter that only grows: each replica counts its own increments, the value is the sum.
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
#[serde(transparent)]
pub struct GCounter {
    // Per-replica totals merge by maximum, which is exactly a version vector's join.
    counts: VersionVector,
}

impl GCounter {
    /// A counter at zero.
    pub const fn new() -> Self {
        GCounter {
            counts: VersionVector::new(),
        }
    }

    /// Adds `n` on behalf of `replica` and returns the delta: that replica's new total.
    ///
    /// Totals saturate at `u64::MAX`.
    pub fn inc(&mut self, replica: ReplicaId, n: u64) -> GCounter {
        let total = self.counts.add(replica, n);
        GCounter {
            counts: VersionVector::single(replica, total),
        }
    }

    /// The sum of all replicas' increments, saturating at `u64::MAX`.
    pub fn value(&self) -> u64 {
        self.counts.total()
    }

    /// The total contributed by `replica`.
    pub fn contribution(&self, replica: ReplicaId) -> u64 {
        self.counts.get(replica)
    }

    /// Each replica's total, in replica order.
    pub fn contributions(&self) -> impl ExactSizeIterator<Item = (ReplicaId, u64)> + '_ {
        self.counts.iter()
    }
}

impl Crdt for GCounter {
    fn merge(&mut self, other: &Self) {
        self.counts.merge(&other.counts);
    }
}
