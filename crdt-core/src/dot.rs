//! Replica identities and dots, the unique names of events.

use core::fmt;
use serde::{Deserialize, Deserializer, Serialize};

/// The identity of a replica: every replica that mutates state needs its own.
///
/// Two replicas that share an id will corrupt each other's counters and dots, so derive ids from
/// something unique (crdt-net derives them from the node's public key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(u64);

impl ReplicaId {
    /// Wraps a raw id.
    pub const fn new(id: u64) -> Self {
        ReplicaId(id)
    }

    /// The raw id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl From<u64> for ReplicaId {
    fn from(id: u64) -> Self {
        ReplicaId(id)
    }
}

/// One event: the `counter`-th event created by `replica`. Counters start at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Dot {
    /// The replica that created the event.
    pub replica: ReplicaId,
    /// Its sequence number at that replica, from 1.
    pub counter: u64,
}

impl Dot {
    /// Names the `counter`-th event of `replica`.
    pub const fn new(replica: ReplicaId, counter: u64) -> Self {
        Dot { replica, counter }
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}.{}", self.replica, self.counter)
    }
}

impl<'de> Deserialize<'de> for Dot {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "Dot")]
        struct Raw {
            replica: ReplicaId,
            counter: u64,
        }
        let raw = Raw::deserialize(de)?;
        if raw.counter == 0 {
            return Err(serde::de::Error::custom("dot counter 0"));
        }
        Ok(Dot::new(raw.replica, raw.counter))
    }
}
