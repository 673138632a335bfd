//! The simulated network both simulators share: seeded loss, duplication, delay (and so
//! reordering) and partitions between numbered nodes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::SimStats;
use crate::replica::Millis;

#[derive(Debug)]
pub(super) struct Network {
    loss: f64,
    duplicate: f64,
    delay: (Millis, Millis),
    queue: BinaryHeap<Reverse<InFlight>>,
    /// Bytes in `queue` per link (from, to).
    in_flight: BTreeMap<(usize, usize), usize>,
    sequence: u64,
    rng: fastrand::Rng,
    /// Partition group of each node; messages cross only within a group.
    groups: Vec<u32>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct InFlight {
    pub(super) at: Millis,
    sequence: u64,
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) payload: Vec<u8>,
}

impl Network {
    /// A network of `nodes` nodes in one partition; every random choice comes from `seed`.
    pub(super) fn new(
        seed: u64,
        nodes: usize,
        loss: f64,
        duplicate: f64,
        delay: (Millis, Millis),
    ) -> Self {
        Network {
            loss,
            duplicate,
            delay,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            sequence: 0,
            rng: fastrand::Rng::with_seed(seed),
            groups: vec![0; nodes],
        }
    }

    /// Puts a message on the wire: lost, or delivered once or twice after a random delay.
    pub(super) fn send(
        &mut self,
        now: Millis,
        from: usize,
        to: usize,
        payload: Vec<u8>,
        stats: &mut SimStats,
    ) {
        if self.rng.f64() < self.loss {
            stats.dropped += 1;
            return;
        }
        let copies = if self.rng.f64() < self.duplicate {
            stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.delay;
            let at = now + self.rng.u64(lo..=hi.max(lo));
            self.sequence += 1;
            let busy = self.in_flight.entry((from, to)).or_default();
            *busy += payload.len();
            stats.peak_in_flight = stats.peak_in_flight.max(*busy as u64);
            self.queue.push(Reverse(InFlight {
                at,
                sequence: self.sequence,
                from,
                to,
                payload: payload.clone(),
            }));
        }
    }

    /// When the next message arrives.
    pub(super) fn next_at(&self) -> Option<Millis> {
        self.queue.peek().map(|m| m.0.at)
    }

    /// The next message due by `now`, and whether its sender can reach its receiver.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<(InFlight, bool)> {
        if self.next_at()? > now {
            return None;
        }
        let Reverse(m) = self.queue.pop()?;
        if let Some(bytes) = self.in_flight.get_mut(&(m.from, m.to)) {
            *bytes = bytes.saturating_sub(m.payload.len());
        }
        let reachable = self.groups.get(m.from) == self.groups.get(m.to);
        Some((m, reachable))
    }

    /// Bytes in flight from `from` to `to`.
    pub(super) fn busy(&self, from: usize, to: usize) -> usize {
        self.in_flight.get(&(from, to)).copied().unwrap_or(0)
    }

    /// Node `i` reaches node `j` only if `groups[i] == groups[j]`.
    pub(super) fn partition(&mut self, groups: &[u32]) {
        for (slot, &g) in self.groups.iter_mut().zip(groups) {
            *slot = g;
        }
    }

    /// Joins all partitions.
    pub(super) fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
    }
}
