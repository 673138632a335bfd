//! Partial replication: each key is held by `N` nodes of a consistent-hash ring, as a sans-IO
//! state machine over many [`Replica`]s.
//!
//! The key space is cut into 2^[`ClusterConfig::partition_bits`] fixed partitions
//! ([`partition_of`]); partition `p` lives on the first `N` nodes clockwise from its first
//! position on the [`Ring`] (its *owners*). A node runs one [`Replica`] per partition it holds,
//! so the protocol, its checks, state transfer and acknowledgements are the ones of a single
//! replica, each among the partition's holders only: two nodes compare only the partitions both
//! hold.
//!
//! * **Membership is replicated state.** A system partition, held by every node, keeps the
//!   members as an add-wins set; a node adds itself when it starts ([`Cluster::new`]) and
//!   removes itself with [`Cluster::leave`]. Every node builds its ring from that set, and
//!   takes liveness from the system replica's view of its peers.
//! * **Writes and reads go to the key's replicas from any node.** A key's *targets* are the
//!   first `N` nodes of its partition's preference order that are up (a sloppy quorum): a node
//!   that is one applies a write itself; any other forwards it to the first target. The answer
//!   ([`ClusterEvent::Written`]) comes once `level` of them hold it durably; a read
//!   ([`ClusterEvent::Read`]) merges `level` replicas' copies first.
//! * **Hinted handoff, joins and leaves move data by one rule:** a node that holds a partition
//!   it does not own (a fallback that took writes while an owner was down, or a former owner
//!   after a join) keeps gossiping it to the owners, and drops its copy only once every owner
//!   is known to hold all of it. Nothing is dropped before `N` nodes hold it.
//!
//! Nothing leaves a node before what it depends on is committed, as for one replica: the
//! driver calls [`Cluster::persist`] with one [`Store`] per partition ([`PartitionStores`]).
//!
//! ```
//! use crdt_core::ReplicaId;
//! use crdt_net::cluster::{Cluster, ClusterConfig, ClusterEvent, PartitionId};
//! use crdt_net::store::MemStore;
//! use crdt_net::Op;
//! use std::collections::BTreeMap;
//!
//! // One node alone holds every partition (N is capped by the members).
//! let mut node = Cluster::new(ClusterConfig::new(ReplicaId::new(1)));
//! let mut disk: BTreeMap<PartitionId, MemStore> = BTreeMap::new();
//! let id = node.write(0, "likes", &Op::Inc(2), 1).unwrap();
//! node.persist(&mut disk).unwrap();
//! let done = std::iter::from_fn(|| node.poll_event())
//!     .find(|event| matches!(event, ClusterEvent::Written { .. }));
//! assert_eq!(done, Some(ClusterEvent::Written { id, result: Ok(1) }));
//! assert_eq!(node.get("likes").map(|o| o.to_string()), Some("2".into()));
//! ```

mod message;
mod placement;

pub use message::{ClusterMessage, CLUSTER_VERSION};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crdt_core::{Dot, ReplicaId};
use serde::{Deserialize, Serialize};

use crate::message::Fingerprint;
use crate::replica::{Config, Durable, Event, Millis, Replica, Transmit};
use crate::ring::{partition_of, Ring, DEFAULT_VNODES, MAX_PARTITION_BITS};
use crate::store::{MemStore, Store, StoreError};
use crate::{Message, Object, Op, PeerInfo, ProtocolError};
use message::ENVELOPE_OVERHEAD;
use placement::Placement;

/// Which of a node's replicas: the system partition (the member set) or a key partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartitionId {
    /// The member set, held by every node.
    System,
    /// Key partition `p` ([`partition_of`]).
    Keys(u32),
}

/// How a cluster node runs. [`ClusterConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// This node's id; unique among all nodes.
    pub id: ReplicaId,
    /// Nodes to learn the member set from at start.
    pub seeds: Vec<ReplicaId>,
    /// Replicas per key (`N`). Default 3.
    pub replicas: usize,
    /// The key space is cut into 2^this partitions, at most 2^[`MAX_PARTITION_BITS`];
    /// every node must use the same value. Default 6 (64 partitions).
    pub partition_bits: u32,
    /// Virtual nodes per node on the ring. Default [`DEFAULT_VNODES`].
    pub vnodes: usize,
    /// How long a write or read waits for its level before it fails with
    /// [`RequestError::Timeout`]. Default 5,000 ms.
    pub request_timeout: Millis,
    /// Every partition replica's settings (gossip interval, fanout, limits); its `id` and
    /// `peers` are the cluster's to set.
    pub replica: Config,
    /// When set, only these nodes (and this one) may be on the ring: a member id outside it,
    /// as a lying peer may add to the member set, is left out. A driver with a trust list
    /// passes it ([`ClusterNode`](crate::node::ClusterNode) does). Default: any member.
    pub allowed: Option<BTreeSet<ReplicaId>>,
}

impl ClusterConfig {
    /// The defaults for node `id`.
    pub fn new(id: ReplicaId) -> Self {
        ClusterConfig {
            id,
            seeds: Vec::new(),
            replicas: 3,
            partition_bits: 6,
            vnodes: DEFAULT_VNODES,
            request_timeout: 5_000,
            replica: Config::new(id),
            allowed: None,
        }
    }

    /// Adds a node to learn the member set from.
    pub fn with_seed(mut self, id: ReplicaId) -> Self {
        self.seeds.push(id);
        self
    }
}

/// Names a write or read until its [`ClusterEvent`] reports the outcome.
pub type RequestId = u64;

/// Why a write or read did not reach its level. Sent between nodes in
/// [`ClusterMessage::Written`] and [`ClusterMessage::Got`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RequestError {
    /// No node is known that could hold the key (the ring is empty).
    #[error("no replica is known for this key")]
    NoReplica,
    /// The node asked does not hold the key by its view of the ring (views differ while the
    /// member set converges); try again.
    #[error("the node asked is not one of the key's replicas")]
    NotReplica,
    /// A level of 0 or above the replicas per key.
    #[error("level {asked} is not between 1 and the {replicas} replicas per key")]
    Level {
        /// The level asked.
        asked: u32,
        /// Replicas per key.
        replicas: u32,
    },
    /// The level was not reached in time; `held` replicas were known to hold the write (a
    /// write may still reach the others: it is not undone).
    #[error("timed out with {held} replicas holding it")]
    Timeout {
        /// Replicas known to hold it when the time ran out.
        held: u32,
    },
    /// The replica refused the operation (see [`UpdateError`](crate::UpdateError)).
    #[error("refused: {0}")]
    Refused(String),
    /// Too many requests are waiting at the node asked.
    #[error("too many requests in flight")]
    Busy,
    /// The object is too large for one answer; read it at one of its replicas.
    #[error("the object is too large for one answer")]
    TooLarge,
}

/// What a cluster node reports to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A write finished: how many replicas hold it durably, or why too few do.
    Written {
        /// The write.
        id: RequestId,
        /// Replicas holding it (at least the level asked), or the failure.
        result: Result<usize, RequestError>,
    },
    /// A read finished.
    Read {
        /// The read.
        id: RequestId,
        /// The merged object (`None`: never written), or the failure.
        result: Result<Option<Object>, RequestError>,
    },
    /// An object held here changed (see [`Event::Changed`]).
    Changed {
        /// Its key.
        key: String,
        /// Whether the update was made at this node.
        local: bool,
        /// What changed.
        change: Object,
    },
    /// The member set changed: the nodes now on the ring.
    Members(Vec<ReplicaId>),
}

/// The stores a node keeps, one per partition it holds.
pub trait PartitionStores {
    /// The store of `partition`, created empty on first use.
    fn store(&mut self, partition: PartitionId) -> Result<&mut dyn Store, StoreError>;
    /// Deletes `partition`'s store: its data is held by all of the partition's owners.
    fn remove(&mut self, partition: PartitionId) -> Result<(), StoreError>;
}

impl PartitionStores for BTreeMap<PartitionId, MemStore> {
    fn store(&mut self, partition: PartitionId) -> Result<&mut dyn Store, StoreError> {
        Ok(self.entry(partition).or_default())
    }

    fn remove(&mut self, partition: PartitionId) -> Result<(), StoreError> {
        BTreeMap::remove(self, &partition);
        Ok(())
    }
}

/// Writes and reads waiting at one node, its own and those it serves for others.
const MAX_PENDING: usize = 4096;

/// Of those, what other nodes' requests may take in all, and each node's share: a flood from
/// one peer leaves room for the others and for this node's own.
const MAX_REMOTE: usize = 3072;
const MAX_PER_PEER: usize = 512;

/// Reads merging other replicas' copies in flight at once (each holds one of the partition
/// replica's 256 read trackers), and each peer's share.
const MAX_QUORUM_READS: usize = 192;
const MAX_QUORUM_READS_PER_PEER: usize = 32;

/// The most members a ring may have: a member set that would grow beyond it is refused.
pub const MAX_MEMBERS: usize = 4096;

/// Answers to forwarded writes remembered, so a duplicated `Forward` is not applied twice.
const MAX_ANSWERED: usize = 4096;

/// A key partition's replica runs its own rounds this many times less often than the cluster:
/// between them, one cluster summary per peer and round stands for all the partitions two nodes
/// share, and only a mismatch sets off the partitions' own exchanges.
const PARTITION_ROUND_FACTOR: u64 = 8;

/// The key of the system partition's member set.
const MEMBERS: &str = "members";

/// The key of the system partition's start counts: a G-Counter whose every writer's total is
/// how often it started. Request ids begin with it, so a restarted node never reuses one.
const STARTS: &str = "starts";

/// A node of a partially replicated cluster (see the [module documentation](self)).
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    system: Replica,
    partitions: BTreeMap<u32, Replica>,
    members: BTreeSet<ReplicaId>,
    ring: Ring,
    placement: Placement,
    writes: Vec<PendingWrite>,
    reads: Vec<PendingRead>,
    /// Requests sent to other nodes, awaiting their answers.
    asked: BTreeMap<RequestId, Asked>,
    /// Forwarded writes applied here: the answer once known, by (sender, its id).
    answered: BTreeMap<(ReplicaId, u64), Option<Result<u32, RequestError>>>,
    answered_order: VecDeque<(ReplicaId, u64)>,
    /// Partitions dropped whose stores are to be removed at the next commit.
    removed: BTreeSet<u32>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<ClusterEvent>,
    next_request: RequestId,
    /// The partition whose replica `poll_transmit` asks first next.
    cursor: u32,
    /// When the next cluster round (one summary to each of `fanout` peers) is due.
    next_round: Millis,
    /// Picks the round's peers (seeded from the configuration: no randomness of its own).
    rng: fastrand::Rng,
}

#[derive(Debug)]
struct PendingWrite {
    partition: u32,
    dot: Dot,
    level: usize,
    deadline: Millis,
    origin: Origin,
}

#[derive(Debug)]
struct PendingRead {
    partition: u32,
    key: String,
    /// The replica's read of its peers, when the level needs any.
    read: Option<u64>,
    level: usize,
    deadline: Millis,
    origin: Origin,
}

#[derive(Debug, Clone, Copy)]
enum Origin {
    Local(RequestId),
    Remote(ReplicaId, u64),
}

#[derive(Debug)]
struct Asked {
    to: ReplicaId,
    deadline: Millis,
    /// A write's level; None for a read.
    level: Option<usize>,
}

impl Cluster {
    /// A node with no data, joining the member set.
    pub fn new(config: ClusterConfig) -> Self {
        Cluster::restore(config, BTreeMap::new())
    }

    /// A node resumed from what its partitions persisted (those in `states`). A node that
    /// never committed its system partition joins the member set; one that did keeps its
    /// standing (a node that left stays out until [`join`](Cluster::join)).
    pub fn restore(config: ClusterConfig, mut states: BTreeMap<PartitionId, Durable>) -> Self {
        let mut config = config;
        config.partition_bits = config.partition_bits.min(MAX_PARTITION_BITS);
        // Levels travel as one byte.
        config.replicas = config.replicas.clamp(1, u8::MAX as usize);
        let system_durable = states.remove(&PartitionId::System).unwrap_or_default();
        let fresh = system_durable == Durable::default();
        let mut system_config = config.replica.clone();
        system_config.id = config.id;
        system_config.max_message = system_config.max_message.saturating_sub(ENVELOPE_OVERHEAD);
        system_config.peers = config
            .seeds
            .iter()
            .map(|&id| PeerInfo { id, addr: None })
            .collect();
        let system = Replica::restore(system_config, system_durable);
        let mut node = Cluster {
            ring: Ring::with_vnodes(config.vnodes),
            system,
            partitions: BTreeMap::new(),
            members: BTreeSet::new(),
            placement: Placement::new(config.id, config.replicas),
            writes: Vec::new(),
            reads: Vec::new(),
            asked: BTreeMap::new(),
            answered: BTreeMap::new(),
            answered_order: VecDeque::new(),
            removed: BTreeSet::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_request: 0,
            next_round: 0,
            rng: fastrand::Rng::with_seed(config.replica.seed ^ 0xC1A5_7E12),
            cursor: 0,
            config,
        };
        for (partition, durable) in states {
            if let PartitionId::Keys(p) = partition {
                if p < node.partition_count() {
                    let mut replica = Replica::restore(partition_config(&node.config, p), durable);
                    replica.set_issued_floor(node.issued_floor(p));
                    node.partitions.insert(p, replica);
                }
            }
        }
        if fresh {
            node.join();
        }
        node.new_epoch();
        node.reconcile();
        node
    }

    /// Joins the member set (a new node does so at start): the ring gives this node its share
    /// of the partitions, which it fills from their holders.
    pub fn join(&mut self) {
        let me = self.config.id.get().to_be_bytes().to_vec();
        // The member set is a set of 8-byte ids: small, and never refused.
        let _ = self.system.update(MEMBERS, &Op::Add(me));
        self.reconcile();
    }

    /// This node's id.
    pub fn id(&self) -> ReplicaId {
        self.config.id
    }

    /// Writes `op` to `key` at its replicas; the outcome comes as [`ClusterEvent::Written`]
    /// once `level` replicas hold it durably (or [`ClusterConfig::request_timeout`] passed).
    /// A write this node applies itself (it is one of the key's targets) is refused here if
    /// the operation does not fit the object.
    pub fn write(
        &mut self,
        now: Millis,
        key: &str,
        op: &Op,
        level: usize,
    ) -> Result<RequestId, RequestError> {
        self.check_level(level)?;
        // What the applier's partition replica takes (its messages leave room for the envelope).
        let room = self
            .config
            .replica
            .max_message
            .saturating_sub(ENVELOPE_OVERHEAD);
        let largest = crate::replica::largest_value(room);
        crate::replica::check_op(key, op, largest)
            .map_err(|e| RequestError::Refused(e.to_string()))?;
        if self.pending_local() >= MAX_PENDING {
            return Err(RequestError::Busy);
        }
        let partition = self.partition_of(key);
        let id = self.next_request_id();
        if self.writable(partition) {
            self.apply(now, partition, key, op, level, Origin::Local(id))?;
        } else {
            let me = self.config.id;
            let to = self
                .placement
                .targets(partition)
                .find(|&id| id != me)
                .ok_or(RequestError::NoReplica)?;
            let forward = ClusterMessage::Forward {
                id,
                key: key.to_owned(),
                op: op.clone(),
                level: level as u8,
            };
            self.ask(now, to, id, Some(level), &forward);
        }
        Ok(id)
    }

    /// Reads `key`, merged from `level` of its replicas; the outcome comes as
    /// [`ClusterEvent::Read`]. With `level` 1 at a node that holds the key, it comes at the
    /// next poll.
    pub fn read(
        &mut self,
        now: Millis,
        key: &str,
        level: usize,
    ) -> Result<RequestId, RequestError> {
        self.check_level(level)?;
        let quorum = level > 1 && self.quorum_reads(None) >= MAX_QUORUM_READS;
        if self.pending_local() >= MAX_PENDING || quorum {
            return Err(RequestError::Busy);
        }
        let partition = self.partition_of(key);
        let id = self.next_request_id();
        if self.placement.is_target(partition) {
            self.start_read(now, partition, key, level, Origin::Local(id));
        } else {
            let to = self
                .placement
                .targets(partition)
                .next()
                .ok_or(RequestError::NoReplica)?;
            let get = ClusterMessage::Get {
                id,
                key: key.to_owned(),
                level: level as u8,
            };
            self.ask(now, to, id, None, &get);
        }
        Ok(id)
    }

    /// The object at `key` as this node holds it, if it holds the key's partition.
    pub fn get(&self, key: &str) -> Option<&Object> {
        self.partitions.get(&self.partition_of(key))?.get(key)
    }

    /// Leaves the member set: the other nodes take over this node's partitions, and this node
    /// drops each once its owners hold it. It may stop when [`hosted`](Cluster::hosted) is
    /// empty and [`is_persisted`](Cluster::is_persisted).
    pub fn leave(&mut self) {
        let me = self.config.id.get().to_be_bytes().to_vec();
        let _ = self.system.update(MEMBERS, &Op::Remove(me));
        self.reconcile();
    }

    /// Learns of a node to gossip the member set with (say, one that just connected).
    pub fn add_seed(&mut self, id: ReplicaId) {
        self.system.add_peer(PeerInfo { id, addr: None });
    }

    /// The largest message this node sends or accepts.
    pub fn max_message(&self) -> usize {
        self.config.replica.max_message
    }

    /// The nodes on the ring, as this node knows them.
    pub fn members(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.members.iter().copied()
    }

    /// The key partitions this node holds, with their replicas.
    pub fn hosted(&self) -> impl Iterator<Item = (u32, &Replica)> + '_ {
        self.partitions.iter().map(|(p, r)| (*p, r))
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_of(key.as_bytes(), self.config.partition_bits)
    }

    /// The nodes that own `partition` (the first `N` of its preference order), as this node
    /// knows the ring.
    pub fn owners(&self, partition: u32) -> &[ReplicaId] {
        self.placement.owners(partition)
    }

    /// Where writes and reads of `partition` go now: the first `N` nodes of its preference
    /// order not believed down (owners, or fallbacks in their place).
    pub fn targets(&self, partition: u32) -> Vec<ReplicaId> {
        self.placement.targets(partition).collect()
    }

    /// Whether every change is committed.
    pub fn is_persisted(&self) -> bool {
        self.removed.is_empty()
            && self.system.is_persisted()
            && self.partitions.values().all(Replica::is_persisted)
    }

    /// Commits every partition's changes to its store, and removes the stores of partitions
    /// dropped. Until a partition's changes are committed, nothing that depends on them leaves.
    pub fn persist(&mut self, stores: &mut dyn PartitionStores) -> Result<(), StoreError> {
        // The system partition first: it holds the own dots of partitions about to be removed.
        self.system.persist(stores.store(PartitionId::System)?)?;
        while let Some(&p) = self.removed.first() {
            stores.remove(PartitionId::Keys(p))?;
            self.removed.remove(&p);
        }
        for (&p, replica) in &mut self.partitions {
            replica.persist(stores.store(PartitionId::Keys(p))?)?;
        }
        self.progress();
        Ok(())
    }

    /// When [`handle_timeout`](Cluster::handle_timeout) next needs calling.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let deadlines = self.writes.iter().map(|w| w.deadline);
        let deadlines = deadlines
            .chain(self.reads.iter().map(|r| r.deadline))
            .chain(self.asked.values().map(|a| a.deadline));
        self.partitions
            .values()
            .chain([&self.system])
            .filter_map(Replica::poll_timeout)
            .chain(deadlines)
            .chain([self.next_round])
            .min()
    }

    /// Advances time: runs the replicas' rounds, fails requests past their deadline, and
    /// follows membership and liveness changes.
    pub fn handle_timeout(&mut self, now: Millis) {
        if now >= self.next_round {
            self.next_round = now.saturating_add(self.config.replica.gossip_interval.max(1));
            self.round();
        }
        self.system.handle_timeout(now);
        for replica in self.partitions.values_mut() {
            replica.handle_timeout(now);
        }
        self.expire(now);
        self.reconcile();
        self.progress();
    }

    /// Handles a message from node `from`. On error nothing stored changes and the driver
    /// should disconnect the peer.
    pub fn handle_message(
        &mut self,
        now: Millis,
        from: ReplicaId,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        if from == self.config.id {
            return Err(ProtocolError::FromSelf(from));
        }
        match ClusterMessage::decode(bytes, self.config.replica.max_message)? {
            ClusterMessage::System(message) => {
                let decoded = Message::decode(&message, self.system.max_message())?;
                self.check_system(&decoded)?;
                self.system.handle_message(now, from, &message)?;
                self.reconcile();
            }
            ClusterMessage::Partition { partition, message } => {
                if partition >= self.partition_count() {
                    return Err(ProtocolError::Malformed);
                }
                // A partition this node neither holds nor should hold is not taken up: the
                // sender holds it, and stops asking once it sees this node silent.
                let max = self.config.replica.max_message;
                match self.host_if_holder(partition) {
                    Some(replica) => replica.handle_message(now, from, &message)?,
                    // Garbage is garbage even for a partition not held.
                    None => drop(Message::decode(&message, max)?),
                }
            }
            ClusterMessage::Forward { id, key, op, level } => {
                self.on_forward(now, from, id, &key, &op, level)
            }
            ClusterMessage::Get { id, key, level } => self.on_get(now, from, id, &key, level),
            ClusterMessage::Written { id, outcome } => {
                if let Some(Some(level)) = self.take_asked(from, id, true) {
                    // An answer claiming fewer holders than asked is no acknowledgement.
                    let result = match outcome {
                        Ok(held) if (held as usize) < level => Err(RequestError::Timeout { held }),
                        other => other.map(|held| held as usize),
                    };
                    self.events.push_back(ClusterEvent::Written { id, result });
                }
            }
            ClusterMessage::Summary(theirs) => {
                if self.shared_fingerprint(from) != theirs {
                    for p in self.shared_with(from) {
                        if let Some(replica) = self.partitions.get_mut(&p) {
                            replica.gossip_with(now, from);
                        }
                    }
                }
            }
            ClusterMessage::Got { id, outcome } => {
                // An answer passes the checks a replica's own state would.
                if let Ok(Some(object)) = &outcome {
                    if crate::replica::counter_over_limit(object).is_some() {
                        return Err(ProtocolError::Malformed);
                    }
                }
                if self.take_asked(from, id, false).is_some() {
                    self.events.push_back(ClusterEvent::Read {
                        id,
                        result: outcome,
                    });
                }
            }
        }
        self.progress();
        Ok(())
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        // Requests and answers wait for the start count their ids depend on.
        if self.system.is_persisted() {
            if let Some(t) = self.outbox.pop_front() {
                return Some(t);
            }
        }
        if let Some(t) = self.system.poll_transmit() {
            let payload = ClusterMessage::System(t.payload).encode();
            return Some(Transmit { to: t.to, payload });
        }
        // Round robin over the partitions, so a long transfer of one does not hold up others.
        let start = self.cursor;
        let order: Vec<u32> = (self.partitions.range(start..))
            .chain(self.partitions.range(..start))
            .map(|(p, _)| *p)
            .collect();
        for p in order {
            let Some(t) = self.partitions.get_mut(&p).and_then(Replica::poll_transmit) else {
                continue;
            };
            self.cursor = p.wrapping_add(1);
            let message = ClusterMessage::Partition {
                partition: p,
                message: t.payload,
            };
            return Some(Transmit {
                to: t.to,
                payload: message.encode(),
            });
        }
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClusterEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        while self.system.poll_event().is_some() {}
        for replica in self.partitions.values_mut() {
            while let Some(event) = replica.poll_event() {
                if let Event::Changed { key, local, change } = event {
                    return Some(ClusterEvent::Changed { key, local, change });
                }
            }
        }
        None
    }
}

// Requests: applying, reading, answering.
impl Cluster {
    fn check_level(&self, level: usize) -> Result<(), RequestError> {
        if level == 0 || level > self.config.replicas {
            return Err(RequestError::Level {
                asked: level.min(u32::MAX as usize) as u32,
                replicas: self.config.replicas.min(u32::MAX as usize) as u32,
            });
        }
        Ok(())
    }

    /// Request ids are this node's start count (high 32 bits) and a counter: a restarted node
    /// never reuses an id a receiver may still remember (it would take the old answer for the
    /// new write), whatever the clock does. The count is committed before any request leaves
    /// (`poll_transmit` holds them until the system partition is committed).
    fn next_request_id(&mut self) -> RequestId {
        if self.next_request & u64::from(u32::MAX) == u64::from(u32::MAX) {
            self.new_epoch();
        }
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    /// Counts a start (or 2^32 requests) in the system partition; ids continue above it.
    fn new_epoch(&mut self) {
        // A counter of this node's own, far below the limit a counter may reach.
        let _ = self.system.update(STARTS, &Op::Inc(1));
        let starts = match self.system.get(STARTS) {
            Some(Object::GCounter(counter)) => counter.total_of(self.config.id),
            _ => 0,
        };
        self.next_request = starts << 32;
    }

    /// Requests waiting here: this node's own (made here, or forwarded and not answered
    /// yet), and those it serves for others.
    fn pending_local(&self) -> usize {
        self.writes.len() + self.reads.len() + self.asked.len()
    }

    /// Requests served here for `peer` (`None`: for any other node).
    fn pending_remote(&self, peer: Option<ReplicaId>) -> usize {
        let counts = |origin: &Origin| match (origin, peer) {
            (Origin::Remote(from, _), Some(p)) => *from == p,
            (Origin::Remote(..), None) => true,
            (Origin::Local(_), _) => false,
        };
        self.writes.iter().filter(|w| counts(&w.origin)).count()
            + self.reads.iter().filter(|r| counts(&r.origin)).count()
    }

    /// Reads merging other replicas in flight: all (`None`), or those for `peer`.
    fn quorum_reads(&self, peer: Option<ReplicaId>) -> usize {
        self.reads
            .iter()
            .filter(|r| r.read.is_some())
            .filter(|r| match (peer, r.origin) {
                (None, _) => true,
                (Some(p), Origin::Remote(from, _)) => from == p,
                (Some(_), Origin::Local(_)) => false,
            })
            .count()
    }

    /// Whether a request from `peer` fits: within its share, and leaving room for others.
    fn remote_room(&self, peer: ReplicaId) -> bool {
        self.pending_local() < MAX_PENDING
            && self.pending_remote(None) < MAX_REMOTE
            && self.pending_remote(Some(peer)) < MAX_PER_PEER
    }

    /// Applies a write as this node's own update of `partition` and waits for its level.
    fn apply(
        &mut self,
        now: Millis,
        partition: u32,
        key: &str,
        op: &Op,
        level: usize,
        origin: Origin,
    ) -> Result<(), RequestError> {
        let replica = self.host(partition);
        replica
            .update(key, op)
            .map_err(|e| RequestError::Refused(e.to_string()))?;
        let Some(dot) = replica.last_local_dot() else {
            return Err(RequestError::Refused("no dot was issued".into()));
        };
        self.writes.push(PendingWrite {
            partition,
            dot,
            level,
            deadline: now.saturating_add(self.config.request_timeout),
            origin,
        });
        Ok(())
    }

    fn start_read(&mut self, now: Millis, partition: u32, key: &str, level: usize, origin: Origin) {
        let replica = self.host(partition);
        let read = (level > 1).then(|| replica.start_read(key));
        self.reads.push(PendingRead {
            partition,
            key: key.to_owned(),
            read,
            level,
            deadline: now.saturating_add(self.config.request_timeout),
            origin,
        });
    }

    /// Sends a request to `to`; `level` is a write's (None: a read).
    fn ask(
        &mut self,
        now: Millis,
        to: ReplicaId,
        id: RequestId,
        level: Option<usize>,
        message: &ClusterMessage,
    ) {
        let deadline = now.saturating_add(self.config.request_timeout);
        self.asked.insert(
            id,
            Asked {
                to,
                deadline,
                level,
            },
        );
        self.outbox.push_back(Transmit {
            to,
            payload: message.encode(),
        });
    }

    /// If `id` is a request of ours to `from` of that kind (a write, or a read), takes it
    /// and returns its level (a read's: None).
    fn take_asked(&mut self, from: ReplicaId, id: RequestId, write: bool) -> Option<Option<usize>> {
        match self.asked.get(&id) {
            Some(asked) if asked.to == from && asked.level.is_some() == write => {
                self.asked.remove(&id).map(|a| a.level)
            }
            _ => None,
        }
    }

    fn on_forward(&mut self, now: Millis, from: ReplicaId, id: u64, key: &str, op: &Op, level: u8) {
        match self.answered.get(&(from, id)) {
            // A copy of a write applied here: answered already, or to be answered.
            Some(Some(outcome)) => {
                let outcome = outcome.clone();
                self.send(from, &ClusterMessage::Written { id, outcome });
                return;
            }
            Some(None) => return,
            None => {}
        }
        let partition = self.partition_of(key);
        let outcome = if self.check_level(level as usize).is_err() {
            Err(RequestError::Level {
                asked: level as u32,
                replicas: self.config.replicas as u32,
            })
        } else if !self.writable(partition) {
            Err(RequestError::NotReplica)
        } else if !self.remote_room(from) {
            Err(RequestError::Busy)
        } else {
            let origin = Origin::Remote(from, id);
            self.apply(now, partition, key, op, level as usize, origin)
        };
        match outcome {
            Ok(()) => self.remember_answer(from, id, None),
            Err(e) => {
                if !matches!(e, RequestError::Busy | RequestError::NotReplica) {
                    self.remember_answer(from, id, Some(Err(e.clone())));
                }
                self.send(
                    from,
                    &ClusterMessage::Written {
                        id,
                        outcome: Err(e),
                    },
                );
            }
        }
    }

    fn remember_answer(
        &mut self,
        from: ReplicaId,
        id: u64,
        answer: Option<Result<u32, RequestError>>,
    ) {
        if self.answered.insert((from, id), answer).is_none() {
            self.answered_order.push_back((from, id));
        }
        // Only answers already sent are forgotten; a pending write keeps its entry. One pass
        // at most (pending writes are fewer than MAX_ANSWERED, so one is found).
        let mut turns = self.answered_order.len();
        while self.answered_order.len() > MAX_ANSWERED && turns > 0 {
            turns -= 1;
            let Some(old) = self.answered_order.pop_front() else {
                break;
            };
            if self.answered.get(&old).is_some_and(Option::is_some) {
                self.answered.remove(&old);
            } else {
                self.answered_order.push_back(old);
            }
        }
    }

    fn on_get(&mut self, now: Millis, from: ReplicaId, id: u64, key: &str, level: u8) {
        let partition = self.partition_of(key);
        let refusal = if self.check_level(level as usize).is_err() {
            Some(RequestError::Level {
                asked: level as u32,
                replicas: self.config.replicas as u32,
            })
        } else if !self.placement.is_target(partition) {
            Some(RequestError::NotReplica)
        } else if !self.remote_room(from)
            || (level > 1
                && (self.quorum_reads(None) >= MAX_QUORUM_READS
                    || self.quorum_reads(Some(from)) >= MAX_QUORUM_READS_PER_PEER))
        {
            Some(RequestError::Busy)
        } else {
            None
        };
        match refusal {
            Some(e) => self.send(
                from,
                &ClusterMessage::Got {
                    id,
                    outcome: Err(e),
                },
            ),
            None => self.start_read(
                now,
                partition,
                key,
                level as usize,
                Origin::Remote(from, id),
            ),
        }
    }

    /// Finishes the writes and reads whose level is reached, once their partition has
    /// committed.
    fn progress(&mut self) {
        let mut i = 0;
        while let Some(write) = self.writes.get(i) {
            match self.write_held(write) {
                Some(held) if held >= write.level => {
                    let write = self.writes.swap_remove(i);
                    self.finish_write(write.origin, Ok(held));
                }
                _ => i += 1,
            }
        }
        let mut i = 0;
        while let Some(read) = self.reads.get(i) {
            let Some(replica) = self.partitions.get(&read.partition) else {
                i += 1;
                continue;
            };
            let answers = self.read_held(read.partition, read.read);
            if replica.is_persisted() && answers + 1 >= read.level {
                let read = self.reads.swap_remove(i);
                self.finish_read(read, true);
            } else {
                i += 1;
            }
        }
    }

    /// Replicas holding a write durably: this one once committed, and the partition's holders
    /// that acknowledged it (a node merely heard from, a stray or one that left, is no replica
    /// of the key).
    fn write_held(&self, write: &PendingWrite) -> Option<usize> {
        let replica = self.partitions.get(&write.partition)?;
        let holders = self.placement.holders(write.partition);
        replica.is_persisted().then(|| {
            1 + replica
                .holders(write.dot)
                .filter(|h| holders.contains(h))
                .count()
        })
    }

    /// The partition's holders that have answered a read whole.
    fn read_held(&self, partition: u32, read: Option<u64>) -> usize {
        let (Some(replica), Some(id)) = (self.partitions.get(&partition), read) else {
            return 0;
        };
        let holders = self.placement.holders(partition);
        replica
            .read_answerers(id)
            .filter(|h| holders.contains(h))
            .count()
    }

    fn finish_write(&mut self, origin: Origin, result: Result<usize, RequestError>) {
        match origin {
            Origin::Local(id) => self.events.push_back(ClusterEvent::Written { id, result }),
            Origin::Remote(to, id) => {
                let outcome = result.map(|held| held as u32);
                self.remember_answer(to, id, Some(outcome.clone()));
                self.send(to, &ClusterMessage::Written { id, outcome });
            }
        }
    }

    /// Answers a read with the object (`complete`) or a timeout.
    fn finish_read(&mut self, read: PendingRead, complete: bool) {
        let answers = self.read_held(read.partition, read.read);
        let replica = self.partitions.get_mut(&read.partition);
        let result = match replica {
            Some(replica) => {
                if let Some(id) = read.read {
                    replica.end_read(id);
                }
                if complete {
                    Ok(replica.get(&read.key).cloned())
                } else {
                    Err(RequestError::Timeout {
                        held: answers as u32 + 1,
                    })
                }
            }
            None => Err(RequestError::NotReplica),
        };
        match read.origin {
            Origin::Local(id) => self.events.push_back(ClusterEvent::Read { id, result }),
            Origin::Remote(to, id) => {
                let mut answer = ClusterMessage::Got {
                    id,
                    outcome: result,
                };
                let room = self
                    .config
                    .replica
                    .max_message
                    .saturating_sub(ENVELOPE_OVERHEAD);
                if answer.encode().len() > room {
                    answer = ClusterMessage::Got {
                        id,
                        outcome: Err(RequestError::TooLarge),
                    };
                }
                self.send(to, &answer);
            }
        }
    }

    /// Fails the requests past their deadline.
    fn expire(&mut self, now: Millis) {
        let (late, waiting): (Vec<_>, Vec<_>) =
            self.writes.drain(..).partition(|w| w.deadline <= now);
        self.writes = waiting;
        for write in late {
            let held = self.write_held(&write).unwrap_or(0) as u32;
            self.finish_write(write.origin, Err(RequestError::Timeout { held }));
        }
        let (late, waiting): (Vec<_>, Vec<_>) =
            self.reads.drain(..).partition(|r| r.deadline <= now);
        self.reads = waiting;
        for read in late {
            self.finish_read(read, false);
        }
        let late: Vec<(RequestId, bool)> = self
            .asked
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, a)| (*id, a.level.is_some()))
            .collect();
        for (id, write) in late {
            self.asked.remove(&id);
            let error = RequestError::Timeout { held: 0 };
            self.events.push_back(if write {
                ClusterEvent::Written {
                    id,
                    result: Err(error),
                }
            } else {
                ClusterEvent::Read {
                    id,
                    result: Err(error),
                }
            });
        }
    }

    fn send(&mut self, to: ReplicaId, message: &ClusterMessage) {
        self.outbox.push_back(Transmit {
            to,
            payload: message.encode(),
        });
    }
}

// Idle rounds: one summary per peer for every partition shared.
impl Cluster {
    /// Sends a summary of the partitions shared with each of `fanout` peers, drawn from the
    /// nodes sharing a partition with this one that are not believed down.
    fn round(&mut self) {
        let mut peers: Vec<ReplicaId> = self
            .partitions
            .keys()
            .flat_map(|&p| self.placement.holders(p))
            .filter(|id| !self.placement.down.contains(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.rng.shuffle(&mut peers);
        peers.truncate(self.config.replica.fanout.max(1));
        for peer in peers {
            let summary = ClusterMessage::Summary(self.shared_fingerprint(peer));
            self.send(peer, &summary);
        }
    }

    /// The partitions held here that `peer` also holds, as this node sees the ring.
    fn shared_with(&self, peer: ReplicaId) -> Vec<u32> {
        self.partitions
            .keys()
            .copied()
            .filter(|&p| self.placement.holders(p).contains(&peer))
            .collect()
    }

    /// SipHash-2-4-128 (key 0) of each shared partition's number (4 bytes, big endian) and
    /// fingerprint, in partition order.
    fn shared_fingerprint(&mut self, peer: ReplicaId) -> Fingerprint {
        let mut bytes = Vec::new();
        for p in self.shared_with(peer) {
            if let Some(replica) = self.partitions.get_mut(&p) {
                bytes.extend_from_slice(&p.to_be_bytes());
                bytes.extend_from_slice(&replica.fingerprint());
            }
        }
        siphasher::sip128::SipHasher24::new_with_key(&[0; 16])
            .hash(&bytes)
            .as_bytes()
    }
}

// Membership, hosting and handoff.
impl Cluster {
    fn partition_count(&self) -> u32 {
        1 << self.config.partition_bits
    }

    /// The replica of `partition`, created empty (with its holders as peers) if new. A
    /// partition dropped and taken up again before its removal was committed keeps its new
    /// store: the removal is committed first.
    fn host(&mut self, partition: u32) -> &mut Replica {
        let floor = self.issued_floor(partition);
        let (placement, config) = (&self.placement, &self.config);
        self.partitions.entry(partition).or_insert_with(|| {
            let mut replica = Replica::new(partition_config(config, partition));
            replica.set_issued_floor(floor);
            for id in placement.holders(partition) {
                replica.add_peer(PeerInfo { id, addr: None });
            }
            replica
        })
    }

    /// Whether this node applies writes of `partition` itself: it is a target, and holds again
    /// every update it made there before it dropped the partition. Until then its objects may
    /// lack its own earlier writes, and a new write would reuse their dots (an OR-Set's tag, a
    /// counter's running total) and undo them.
    fn writable(&self, partition: u32) -> bool {
        let floor = self.issued_floor(partition);
        self.placement.is_target(partition)
            && (floor == 0
                || self
                    .partitions
                    .get(&partition)
                    .is_some_and(|r| r.seen().vv().get(self.config.id) >= floor))
    }

    /// The highest of this node's own dots it issued in `partition` before dropping it, as
    /// the system partition remembers: a replica taken up again must never issue them again.
    fn issued_floor(&self, partition: u32) -> u64 {
        match self.system.get(&floor_key(partition)) {
            Some(Object::GCounter(counter)) => counter.total_of(self.config.id),
            _ => 0,
        }
    }

    /// Drops `partition`'s replica, its own dots remembered first: the system partition is
    /// committed before the partition's store is removed (see [`Cluster::persist`]).
    fn drop_partition(&mut self, partition: u32) {
        let Some(replica) = self.partitions.remove(&partition) else {
            return;
        };
        let (issued, floor) = (replica.issued(), self.issued_floor(partition));
        if issued > floor {
            // A counter of this node's own, far below the limit a counter may reach.
            let _ = self
                .system
                .update(&floor_key(partition), &Op::Inc(issued - floor));
        }
        self.removed.insert(partition);
    }

    /// The replica of `partition` if this node holds it or should: an owner, or a target.
    fn host_if_holder(&mut self, partition: u32) -> Option<&mut Replica> {
        let should = self.partitions.contains_key(&partition)
            || self.placement.is_owner(partition)
            || self.placement.is_target(partition);
        should.then(|| self.host(partition))
    }

    /// Refuses a system-partition message carrying anything but the member set (an OR-Set of
    /// 8-byte ids, at most [`MAX_MEMBERS`] with the members known) and the nodes' issued
    /// dots (`issued/<p>`, G-Counters): a peer must not replace either with another type
    /// (the later type would win the merge and erase it), nor store other keys there.
    fn check_system(&self, message: &Message) -> Result<(), ProtocolError> {
        let objects: Vec<(&str, &Object)> = match message {
            Message::Deltas(entries) => {
                entries.iter().map(|e| (e.key.as_str(), &e.delta)).collect()
            }
            Message::State(chunk) => chunk
                .objects
                .iter()
                .map(|e| (e.key.as_str(), &e.object))
                .collect(),
            Message::ReadReply(reply) => reply
                .entry
                .iter()
                .map(|e| (e.key.as_str(), &e.object))
                .collect(),
            _ => Vec::new(),
        };
        for (key, object) in objects {
            let fits = match object {
                Object::Empty => true,
                Object::Set(set) if key == MEMBERS => {
                    let known = self.member_set();
                    let mut ids = 0;
                    for element in set.iter() {
                        let id = <[u8; 8]>::try_from(element.as_slice())
                            .map_err(|_| ProtocolError::Malformed)?;
                        ids +=
                            usize::from(!known.contains(&ReplicaId::new(u64::from_be_bytes(id))));
                    }
                    if known.len() + ids > MAX_MEMBERS {
                        return Err(ProtocolError::OverBudget("members"));
                    }
                    true
                }
                Object::GCounter(_) if key == STARTS => true,
                Object::GCounter(_) => key
                    .strip_prefix("issued/")
                    .and_then(|p| p.parse::<u32>().ok().filter(|n| n.to_string() == p))
                    .is_some_and(|p| p < self.partition_count()),
                _ => false,
            };
            if !fits {
                return Err(ProtocolError::Malformed);
            }
        }
        Ok(())
    }

    /// The nodes on the ring: the member set, less ids outside [`ClusterConfig::allowed`].
    fn member_ids(&self) -> BTreeSet<ReplicaId> {
        let allowed = |id: &ReplicaId| {
            *id == self.config.id || self.config.allowed.as_ref().is_none_or(|a| a.contains(id))
        };
        self.member_set().into_iter().filter(allowed).collect()
    }

    /// Every id in the member set.
    fn member_set(&self) -> BTreeSet<ReplicaId> {
        let Some(Object::Set(set)) = self.system.get(MEMBERS) else {
            return BTreeSet::new();
        };
        set.iter()
            .filter_map(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(|id| ReplicaId::new(u64::from_be_bytes(id)))
            .collect()
    }

    /// Follows the member set and liveness: rebuilds the ring when the members changed, hosts
    /// the partitions this node owns, gives each replica its holders as peers, and drops the
    /// partitions this node holds for others once their owners hold all of it.
    fn reconcile(&mut self) {
        let members = self.member_ids();
        if members != self.members {
            self.ring = Ring::with_nodes(self.config.vnodes, members.iter().copied());
            for &id in &members {
                self.system.add_peer(PeerInfo { id, addr: None });
            }
            let (count, bits) = (self.partition_count(), self.config.partition_bits);
            self.placement.rebuild(&self.ring, count, bits);
            self.members = members;
            self.events.push_back(ClusterEvent::Members(
                self.members.iter().copied().collect(),
            ));
        }
        self.placement.down = self
            .system
            .peers()
            .filter(|peer| !peer.up)
            .map(|peer| peer.info.id)
            .collect();
        for p in self.placement.owned().to_vec() {
            self.host(p);
        }
        let hosted: Vec<u32> = self.partitions.keys().copied().collect();
        for p in hosted {
            self.reconcile_partition(p);
        }
    }

    fn reconcile_partition(&mut self, p: u32) {
        let holders = self.placement.holders(p);
        let me = self.config.id;
        let owner = self.placement.is_owner(p);
        let target = self.placement.is_target(p);
        let busy = self.writes.iter().any(|w| w.partition == p)
            || self.reads.iter().any(|r| r.partition == p);
        let owners = self.placement.owners(p);
        let Some(replica) = self.partitions.get_mut(&p) else {
            return;
        };
        for &id in &holders {
            replica.add_peer(PeerInfo { id, addr: None });
        }
        // A peer that is no longer a holder is forgotten once it stops answering (it dropped
        // the partition); while it answers, it may hold writes the owners lack.
        let gone: Vec<ReplicaId> = replica
            .peers()
            .filter(|peer| !peer.up && !holders.contains(&peer.info.id))
            .map(|peer| peer.info.id)
            .collect();
        for id in gone {
            replica.remove_peer(id);
        }
        // With no other owner known (a node that left before it learned of any other), there
        // is no one to hand over to: it keeps the partition.
        let handed_over = !owner
            && !target
            && !busy
            && replica.is_persisted()
            && owners.iter().any(|&o| o != me)
            && owners.iter().all(|&o| o == me || replica.peer_has_all(o));
        if handed_over {
            self.drop_partition(p);
        }
    }
}

/// The system partition's key for this node's issued dots in `partition`: a G-Counter whose
/// every writer's total is its own highest dot there.
fn floor_key(partition: u32) -> String {
    format!("issued/{partition}")
}

/// A key partition's replica settings: the cluster's template, as this node, within the
/// envelope's room, with its own seed.
fn partition_config(config: &ClusterConfig, partition: u32) -> Config {
    let mut replica = config.replica.clone();
    replica.id = config.id;
    replica.peers = Vec::new();
    replica.max_message = replica.max_message.saturating_sub(ENVELOPE_OVERHEAD);
    replica.seed ^= u64::from(partition).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    replica.gossip_interval = replica
        .gossip_interval
        .saturating_mul(PARTITION_ROUND_FACTOR);
    replica
}
