//! Where partitions live, as one node sees the ring and its members' liveness.

use std::collections::BTreeSet;

use crdt_core::ReplicaId;

use crate::ring::{partition_start, Ring};

/// Nodes past the first `N` of a partition's preference order that may stand in for owners
/// that are down.
const FALLBACKS: usize = 8;

#[derive(Debug)]
pub(super) struct Placement {
    me: ReplicaId,
    /// Replicas per key (`N`).
    replicas: usize,
    /// Per partition, the first `N + FALLBACKS` nodes of its preference order.
    order: Vec<Vec<ReplicaId>>,
    /// Members believed down.
    pub(super) down: BTreeSet<ReplicaId>,
    /// The partitions this node owns, in order.
    owned: Vec<u32>,
}

impl Placement {
    pub(super) fn new(me: ReplicaId, replicas: usize) -> Self {
        Placement {
            me,
            replicas,
            order: Vec::new(),
            down: BTreeSet::new(),
            owned: Vec::new(),
        }
    }

    /// Recomputes every partition's preference order from `ring`.
    pub(super) fn rebuild(&mut self, ring: &Ring, partitions: u32, bits: u32) {
        let depth = self.replicas + FALLBACKS;
        self.order = (0..partitions)
            .map(|p| ring.preference_list_at(partition_start(p, bits), depth))
            .collect();
        self.owned = (0..partitions).filter(|&p| self.is_owner(p)).collect();
    }

    /// The partitions this node owns.
    pub(super) fn owned(&self) -> &[u32] {
        &self.owned
    }

    /// The first `N` nodes of the partition's preference order.
    pub(super) fn owners(&self, partition: u32) -> &[ReplicaId] {
        let order = self.order(partition);
        order.get(..self.replicas).unwrap_or(order)
    }

    /// The first `N` nodes of the partition's preference order not believed down.
    pub(super) fn targets(&self, partition: u32) -> impl Iterator<Item = ReplicaId> + '_ {
        self.order(partition)
            .iter()
            .filter(|id| !self.down.contains(id))
            .take(self.replicas)
            .copied()
    }

    pub(super) fn is_owner(&self, partition: u32) -> bool {
        self.owners(partition).contains(&self.me)
    }

    pub(super) fn is_target(&self, partition: u32) -> bool {
        self.targets(partition).any(|id| id == self.me)
    }

    /// The nodes a replica of the partition gossips with: its owners and targets, less this
    /// node.
    pub(super) fn holders(&self, partition: u32) -> BTreeSet<ReplicaId> {
        let mut holders: BTreeSet<ReplicaId> = self.owners(partition).iter().copied().collect();
        holders.extend(self.targets(partition));
        holders.remove(&self.me);
        holders
    }

    fn order(&self, partition: u32) -> &[ReplicaId] {
        self.order
            .get(partition as usize)
            .map_or(&[][..], Vec::as_slice)
    }
}
