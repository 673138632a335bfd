//! The increment/decrement counter.

use serde::{Deserialize, Serialize};

use crate::{Crdt, GCounter, ReplicaId, Reset};

/// A counter that goes up and down: a pair of grow-only counters, increments minus decrements.
///
/// ```
/// use crdt_core::{Crdt, PNCounter, ReplicaId};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut stock = PNCounter::new();
/// stock.inc(a, 10);
/// let mut other = stock.clone();
/// stock.dec(a, 3);
/// other.dec(b, 4);
/// stock.merge(&other);
/// assert_eq!(stock.value(), 3);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct PNCounter {
    increments: GCounter,
    decrements: GCounter,
}

impl PNCounter {
    /// A counter at zero.
    pub const fn new() -> Self {
        PNCounter {
            increments: GCounter::new(),
            decrements: GCounter::new(),
        }
    }

    /// Adds `n` on behalf of `replica`; returns the delta.
    #[inline]
    pub fn inc(&mut self, replica: ReplicaId, n: u64) -> PNCounter {
        PNCounter {
            increments: self.increments.inc(replica, n),
            decrements: GCounter::new(),
        }
    }

    /// Subtracts `n` on behalf of `replica`; returns the delta.
    #[inline]
    pub fn dec(&mut self, replica: ReplicaId, n: u64) -> PNCounter {
        PNCounter {
            increments: GCounter::new(),
            decrements: self.decrements.inc(replica, n),
        }
    }

    /// Increments minus decrements, clamped to the `i64` range.
    pub fn value(&self) -> i64 {
        let v = i128::from(self.increments.value()) - i128::from(self.decrements.value());
        i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
    }

    /// All increments.
    pub fn increments(&self) -> &GCounter {
        &self.increments
    }

    /// All decrements.
    pub fn decrements(&self) -> &GCounter {
        &self.decrements
    }
}

impl Reset for PNCounter {
    fn reset(&mut self) -> PNCounter {
        PNCounter {
            increments: self.increments.reset(),
            decrements: self.decrements.reset(),
        }
    }
}

impl Crdt for PNCounter {
    fn merge(&mut self, other: &Self) {
        self.increments.merge(&other.increments);
        self.decrements.merge(&other.decrements);
    }
}
