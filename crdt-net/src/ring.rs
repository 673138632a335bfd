//! A consistent-hash ring with virtual nodes: which nodes hold a key when each key lives on a
//! few of them (sans-IO: plain data, no I/O).
//!
//! Every node owns [`Ring::vnodes`] points on a ring of 2^64 positions (default
//! [`DEFAULT_VNODES`] = 128); a key sits at the hash of its bytes, and its preference list is
//! the first `n` distinct nodes met clockwise from there. Adding or removing a node moves only
//! the keys whose lists change: about `n/N` of them for `N` nodes, spread over every node,
//! rather than reshuffling everything. The ring is a value: replicas that agree on the node set
//! agree on every preference list, on any platform.
//!
//! **The hash** is SipHash-2-4 with 64-bit output and the all-zero key
//! (`siphasher::sip::SipHasher24`), the reference algorithm of Aumasson and Bernstein: a
//! key's position is the hash of its bytes ([`key_position`]); node `id`'s virtual node `i`
//! sits at the hash of `b"node"` ++ `id` (8 bytes, big endian) ++ `i` (4 bytes, big endian)
//! ([`vnode_position`]). Points at one position are ordered by node id. The positions are part of the format: a
//! change would move keys between nodes, so it would need a new protocol version.
//!
//! Partial replication built on it (forwarding to a key's replicas, hinted handoff, anti-entropy
//! per key range) is not built yet; the ring only answers where keys and partitions
//! ([`partition_of`]) live. The design is in `docs/partial-replication.md`.
//!
//! ```
//! use crdt_core::ReplicaId;
//! use crdt_net::ring::Ring;
//!
//! let mut ring = Ring::new();
//! for id in 1..=5 {
//!     ring.add(ReplicaId::new(id));
//! }
//! let replicas = ring.preference_list(b"user:42", 3);
//! assert_eq!(replicas.len(), 3);
//! ring.remove(replicas[0]);
//! // The key's other replicas stay; one more node takes the place of the one that left.
//! let after = ring.preference_list(b"user:42", 3);
//! assert_eq!(&after[..2], &replicas[1..]);
//! ```

use std::collections::BTreeSet;

use crdt_core::ReplicaId;
use siphasher::sip::SipHasher24;

/// Virtual nodes per node unless chosen otherwise.
pub const DEFAULT_VNODES: usize = 128;

/// The most virtual nodes per node: a ring of 1,000 nodes at this many holds 4 million points
/// (64 MiB), so a caller's choice cannot make it unbounded.
pub const MAX_VNODES: usize = 4096;

/// A consistent-hash ring of nodes (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    vnodes: usize,
    /// Every node's points, sorted by (position, node).
    points: Vec<(u64, ReplicaId)>,
    nodes: BTreeSet<ReplicaId>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new()
    }
}

/// Where `key` sits on the ring: SipHash-2-4 (64-bit, key zero) of its bytes.
pub fn key_position(key: &[u8]) -> u64 {
    SipHasher24::new_with_key(&[0; 16]).hash(key)
}

/// Where virtual node `index` of `node` sits: SipHash-2-4 (64-bit, key zero) of the 16 bytes
/// `b"node"` ++ the node id (8 bytes, big endian) ++ `index` (4 bytes, big endian).
pub fn vnode_position(node: ReplicaId, index: u32) -> u64 {
    let mut bytes = [0u8; 16];
    let (prefix, rest) = bytes.split_at_mut(4);
    let (id, i) = rest.split_at_mut(8);
    prefix.copy_from_slice(b"node");
    id.copy_from_slice(&node.get().to_be_bytes());
    i.copy_from_slice(&index.to_be_bytes());
    SipHasher24::new_with_key(&[0; 16]).hash(&bytes)
}

/// The most partition bits: 2^16 partitions.
pub const MAX_PARTITION_BITS: u32 = 16;

/// The partition holding `key` when the ring's positions are cut into `2^bits` equal ranges
/// (`bits` at most [`MAX_PARTITION_BITS`], clamped): the top `bits` bits of its position.
/// Keys of one partition share one preference list (that of [`partition_start`]), so a
/// partition is what a join or a leave moves, and what two replicas compare.
///
/// ```
/// use crdt_net::ring::{key_position, partition_of, partition_start};
///
/// let p = partition_of(b"user:42", 6); // one of 64
/// assert!(p < 64);
/// assert!(partition_start(p, 6) <= key_position(b"user:42"));
/// ```
pub fn partition_of(key: &[u8], bits: u32) -> u32 {
    let bits = bits.min(MAX_PARTITION_BITS);
    // `checked_shr` covers `bits == 0` (a shift by 64): one partition.
    let top = key_position(key).checked_shr(64 - bits).unwrap_or(0);
    // At most 16 bits remain.
    top as u32
}

/// The first position of partition `partition` of `2^bits` (see [`partition_of`]); a
/// partition number beyond the last wraps.
pub fn partition_start(partition: u32, bits: u32) -> u64 {
    let bits = bits.min(MAX_PARTITION_BITS);
    let mask = (1u64 << bits) - 1;
    (u64::from(partition) & mask)
        .checked_shl(64 - bits)
        .unwrap_or(0)
}

impl Ring {
    /// An empty ring with [`DEFAULT_VNODES`] virtual nodes per node.
    pub fn new() -> Self {
        Ring::with_vnodes(DEFAULT_VNODES)
    }

    /// An empty ring with `vnodes` virtual nodes per node (at least 1, at most
    /// [`MAX_VNODES`]). More spread keys more evenly (the spread of a node's share falls
    /// as 1/√vnodes) and cost memory and time in [`add`](Ring::add).
    pub fn with_vnodes(vnodes: usize) -> Self {
        Ring {
            vnodes: vnodes.clamp(1, MAX_VNODES),
            points: Vec::new(),
            nodes: BTreeSet::new(),
        }
    }

    /// Virtual nodes per node.
    pub fn vnodes(&self) -> usize {
        self.vnodes
    }

    /// Adds `node`; false if it was already there.
    pub fn add(&mut self, node: ReplicaId) -> bool {
        if !self.nodes.insert(node) {
            return false;
        }
        // `vnodes` is at most MAX_VNODES, so the index fits.
        let points = (0..self.vnodes as u32).map(|i| (vnode_position(node, i), node));
        self.points.extend(points);
        self.points.sort_unstable();
        true
    }

    /// A ring of `nodes` with `vnodes` virtual nodes each (at most [`MAX_VNODES`]), sorted
    /// once: what [`add`](Ring::add) one by one builds, in O(points log points) rather than a
    /// sort per node.
    pub fn with_nodes(vnodes: usize, nodes: impl IntoIterator<Item = ReplicaId>) -> Self {
        let mut ring = Ring::with_vnodes(vnodes);
        for node in nodes {
            if ring.nodes.insert(node) {
                let points = (0..ring.vnodes as u32).map(|i| (vnode_position(node, i), node));
                ring.points.extend(points);
            }
        }
        ring.points.sort_unstable();
        ring
    }

    /// Removes `node`; false if it was not there.
    pub fn remove(&mut self, node: ReplicaId) -> bool {
        if !self.nodes.remove(&node) {
            return false;
        }
        self.points.retain(|(_, n)| *n != node);
        true
    }

    /// Whether `node` is on the ring.
    pub fn contains(&self, node: ReplicaId) -> bool {
        self.nodes.contains(&node)
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.nodes.iter().copied()
    }

    /// How many nodes the ring has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the ring has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The first `n` distinct nodes clockwise from `key`'s position: the key's replicas, the
    /// first being its primary. All nodes if the ring has fewer than `n`.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<ReplicaId> {
        self.preference_list_at(key_position(key), n)
    }

    /// The first `n` distinct nodes clockwise from position `at` (a key's position, or a
    /// partition's first position, [`partition_start`]). All nodes if the ring has fewer.
    pub fn preference_list_at(&self, at: u64, n: usize) -> Vec<ReplicaId> {
        let want = n.min(self.nodes.len());
        let mut list = Vec::with_capacity(want);
        if want == 0 {
            return list;
        }
        let start = self.points.partition_point(|(p, _)| *p < at);
        let (after, before) = (
            self.points.get(start..).unwrap_or_default(),
            self.points.get(..start).unwrap_or_default(),
        );
        let mut taken = BTreeSet::new();
        // One lap at most: every node appears within it.
        for (_, node) in after.iter().chain(before) {
            if taken.insert(*node) {
                list.push(*node);
                if list.len() == want {
                    break;
                }
            }
        }
        list
    }

    /// The key's primary (the first node of its preference list), if the ring has any node.
    pub fn primary(&self, key: &[u8]) -> Option<ReplicaId> {
        self.preference_list(key, 1).first().copied()
    }
}
