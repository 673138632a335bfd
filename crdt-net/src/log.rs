//! The delta buffer: recent deltas by dot, bounded in bytes.

use std::collections::{BTreeMap, VecDeque};

use crdt_core::Dot;

use crate::message::DeltaEntry;

/// Deltas kept to answer peers that lack them, oldest evicted first once over `max_bytes`.
///
/// A peer that needs an evicted delta gets the state of the objects it touched instead, so the
/// bound costs bandwidth after long partitions, never correctness.
#[derive(Debug)]
pub(crate) struct DeltaLog {
    entries: BTreeMap<Dot, (DeltaEntry, usize)>,
    order: VecDeque<Dot>,
    bytes: usize,
    max_bytes: usize,
}

impl DeltaLog {
    pub(crate) fn new(max_bytes: usize) -> Self {
        DeltaLog {
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Keeps `entry`, whose encoding takes `size` bytes.
    pub(crate) fn insert(&mut self, entry: DeltaEntry, size: usize) {
        let dot = entry.dot;
        if self.entries.insert(dot, (entry, size)).is_none() {
            self.order.push_back(dot);
            self.bytes += size;
        }
        while self.bytes > self.max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    pub(crate) fn get(&self, dot: &Dot) -> Option<&(DeltaEntry, usize)> {
        self.entries.get(dot)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the oldest deltas for as long as `everyone_has` says every peer holds them.
    pub(crate) fn trim(&mut self, everyone_has: impl Fn(Dot) -> bool) {
        while let Some(&dot) = self.order.front() {
            if !everyone_has(dot) || !self.evict_oldest() {
                break;
            }
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(dot) = self.order.pop_front() else {
            return false;
        };
        if let Some((_, size)) = self.entries.remove(&dot) {
            self.bytes -= size;
        }
        true
    }
}
