//! Hybrid logical clocks.

use core::fmt;
use serde::{Deserialize, Serialize};

/// A hybrid logical clock reading: physical milliseconds, then a logical counter that orders
/// events within the same millisecond (or while the physical clock lags a peer's).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct HlcTimestamp {
    /// Milliseconds since an epoch the application chooses (usually the Unix epoch).
    pub wall_ms: u64,
    /// Orders readings that share `wall_ms`.
    pub logical: u32,
}

impl HlcTimestamp {
    /// A reading.
    pub const fn new(wall_ms: u64, logical: u32) -> Self {
        HlcTimestamp { wall_ms, logical }
    }

    /// The smallest reading strictly after `self`.
    fn successor(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => HlcTimestamp::new(self.wall_ms, logical),
            None => HlcTimestamp::new(self.wall_ms.saturating_add(1), 0),
        }
    }
}

/// A hybrid logical clock (Kulkarni et al., 2014): timestamps that follow physical time, never go
/// backwards, and order causally related events even when physical clocks disagree.
///
/// The clock does no I/O: callers pass the physical time in. A remote timestamp further ahead of
/// the local physical time than `max_drift_ms` is refused with [`HlcError::DriftExceeded`] and
/// counted, never adopted, so one peer with a broken clock cannot drag every replica into the
/// future.
///
/// ```
/// use crdt_core::{Hlc, HlcError, HlcTimestamp};
///
/// let mut clock = Hlc::new(60_000);
/// let t1 = clock.now(1_000);
/// let t2 = clock.now(1_000); // same millisecond: the logical part orders them
/// assert!(t2 > t1);
///
/// // A peer one minute ahead is accepted and later local readings stay above it...
/// clock.observe(HlcTimestamp::new(61_000, 0), 1_000).unwrap();
/// assert!(clock.now(1_001) > HlcTimestamp::new(61_000, 0));
/// // ...but one a day ahead is refused.
/// let far = HlcTimestamp::new(86_400_000, 0);
/// assert!(matches!(clock.observe(far, 1_002), Err(HlcError::DriftExceeded { .. })));
/// assert_eq!(clock.rejected(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Hlc {
    last: HlcTimestamp,
    max_drift_ms: u64,
    rejected: u64,
}

impl Hlc {
    /// A clock that refuses remote timestamps more than `max_drift_ms` ahead of physical time.
    pub const fn new(max_drift_ms: u64) -> Self {
        Hlc {
            last: HlcTimestamp::new(0, 0),
            max_drift_ms,
            rejected: 0,
        }
    }

    /// A clock resumed from the last timestamp it issued (for example after a restart).
    pub const fn resume(last: HlcTimestamp, max_drift_ms: u64) -> Self {
        Hlc {
            last,
            max_drift_ms,
            rejected: 0,
        }
    }

    /// A timestamp for a local event, given the current physical time.
    pub fn now(&mut self, physical_ms: u64) -> HlcTimestamp {
        self.last = if physical_ms > self.last.wall_ms {
            HlcTimestamp::new(physical_ms, 0)
        } else {
            self.last.successor()
        };
        self.last
    }

    /// Moves the clock past `remote`, a timestamp received from a peer, unless it is too far
    /// ahead of `physical_ms`. Returns the clock's new reading.
    pub fn observe(
        &mut self,
        remote: HlcTimestamp,
        physical_ms: u64,
    ) -> Result<HlcTimestamp, HlcError> {
        let limit = physical_ms.saturating_add(self.max_drift_ms);
        if remote.wall_ms > limit {
            self.rejected = self.rejected.saturating_add(1);
            return Err(HlcError::DriftExceeded {
                remote_ms: remote.wall_ms,
                limit_ms: limit,
            });
        }
        let local = HlcTimestamp::new(physical_ms, 0);
        let highest = self.last.max(remote);
        self.last = if local > highest {
            local
        } else {
            highest.successor()
        };
        Ok(self.last)
    }

    /// The last timestamp issued.
    pub fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// How many remote timestamps were refused for drift.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

/// Why a remote timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HlcError {
    /// The remote timestamp is further in the future than the configured drift allows.
    DriftExceeded {
        /// The remote physical milliseconds.
        remote_ms: u64,
        /// Local physical time plus the maximum drift.
        limit_ms: u64,
    },
}

impl fmt::Display for HlcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HlcError::DriftExceeded {
                remote_ms,
                limit_ms,
            } => write!(
                f,
                "remote timestamp {remote_ms} ms is past the drift limit {limit_ms} ms"
            ),
        }
    }
}

impl core::error::Error for HlcError {}
