//! Many [`Cluster`] nodes on virtual time, on the same simulated network as [`Sim`](super::Sim):
//! seeded loss, duplication, delay, partitions, crashes and restarts, joins and leaves.
//!
//! Each node commits its partitions to [`MemStore`]s `commit_latency` ms after a change and
//! sends nothing that depends on a change before; a crash loses what was not committed, and a
//! restart resumes from the stores.
//!
//! ```
//! use crdt_net::sim::cluster::{ClusterSim, ClusterSimConfig, Outcome};
//! use crdt_net::Op;
//!
//! let mut sim = ClusterSim::new(ClusterSimConfig { nodes: 5, ..ClusterSimConfig::new(1) });
//! sim.run_for(2_000); // the nodes learn the member set
//! let id = sim.write(0, "visits", &Op::Inc(1), 2).unwrap();
//! sim.run_until(5_000, |s| s.outcome(0, id).is_some());
//! assert!(matches!(sim.outcome(0, id), Some(Outcome::Written(Ok(held))) if *held >= 2));
//! ```

use std::collections::BTreeMap;

use crdt_core::ReplicaId;

use super::network::{InFlight, Network};
use super::SimStats;
use crate::cluster::{Cluster, ClusterConfig, ClusterEvent, PartitionId, RequestError, RequestId};
use crate::replica::{Durable, Millis};
use crate::store::MemStore;
use crate::{Object, Op};

/// The shape of a simulated cluster. [`ClusterSimConfig::new`] gives a perfect network.
#[derive(Clone, Debug)]
pub struct ClusterSimConfig {
    /// Nodes at start (ids 1..=n).
    pub nodes: usize,
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Each delivery takes a uniformly random delay in this range (ms).
    pub delay: (Millis, Millis),
    /// Replicas per key (`N`).
    pub replicas: usize,
    /// 2^this partitions.
    pub partition_bits: u32,
    /// The replicas' round interval (ms).
    pub gossip_interval: Millis,
    /// How long after a change a node commits it, in ms.
    pub commit_latency: Millis,
    /// How long a write or read waits for its level.
    pub request_timeout: Millis,
    /// Seeds each node starts with: this many of the others (0: all of them).
    pub seeds: usize,
    /// Peer sampling in the system partition (see [`Config::view`](crate::Config::view)).
    pub view: usize,
}

impl ClusterSimConfig {
    /// Three nodes, N = 3, 16 partitions, on a perfect 1 to 5 ms network, 100 ms rounds.
    pub fn new(seed: u64) -> Self {
        ClusterSimConfig {
            nodes: 3,
            seed,
            loss: 0.0,
            duplicate: 0.0,
            delay: (1, 5),
            replicas: 3,
            partition_bits: 4,
            gossip_interval: 100,
            commit_latency: 0,
            request_timeout: 2_000,
            seeds: 0,
            view: 0,
        }
    }
}

/// How a request made in the simulator ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write: replicas holding it, or the failure.
    Written(Result<usize, RequestError>),
    /// A read: the object, or the failure.
    Read(Result<Option<Object>, RequestError>),
}

/// A simulated cluster of [`Cluster`] nodes.
#[derive(Debug)]
pub struct ClusterSim {
    config: ClusterSimConfig,
    now: Millis,
    nodes: Vec<SimNode>,
    index: BTreeMap<ReplicaId, usize>,
    network: Network,
    stats: SimStats,
}

#[derive(Debug)]
struct SimNode {
    id: ReplicaId,
    seeds: Vec<ReplicaId>,
    cluster: Option<Cluster>,
    /// What survives a crash.
    stores: BTreeMap<PartitionId, MemStore>,
    dirty_since: Option<Millis>,
    outcomes: BTreeMap<RequestId, Outcome>,
    restarts: u64,
    /// Whether it left the member set: `Some(false)` until the leave is committed (a crash
    /// before loses it, as any uncommitted change).
    left: Option<bool>,
}

/// Most nodes one simulator can hold (the network's partition groups are sized for them).
const MAX_NODES: usize = 4096;

impl ClusterSim {
    /// A cluster of `config.nodes` fresh nodes at time 0, each knowing the others as seeds.
    pub fn new(config: ClusterSimConfig) -> Self {
        let network = Network::new(
            config.seed,
            MAX_NODES,
            config.loss,
            config.duplicate,
            config.delay,
        );
        let mut sim = ClusterSim {
            now: 0,
            nodes: Vec::new(),
            index: BTreeMap::new(),
            network,
            stats: SimStats::default(),
            config,
        };
        for _ in 0..sim.config.nodes.min(MAX_NODES) {
            sim.add_node();
        }
        sim
    }

    /// Starts a new node that joins the cluster; returns its index.
    pub fn join(&mut self) -> Option<usize> {
        (self.nodes.len() < MAX_NODES).then(|| self.add_node())
    }

    /// Node `index` leaves the member set; it keeps running until it has handed its
    /// partitions over (see [`Cluster::leave`]).
    pub fn leave(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            if let Some(cluster) = node.cluster.as_mut() {
                cluster.leave();
                node.left = Some(false);
            }
        }
        self.collect();
    }

    /// Whether node `index` left the member set and committed it.
    pub fn has_left(&self, index: usize) -> bool {
        self.nodes.get(index).is_some_and(|n| n.left == Some(true))
    }

    /// Writes `op` to `key` at node `index` with acknowledgement level `level`; None if the
    /// node is crashed or refused the write at once. The outcome comes as
    /// [`outcome`](ClusterSim::outcome).
    pub fn write(&mut self, index: usize, key: &str, op: &Op, level: usize) -> Option<RequestId> {
        let now = self.now;
        let id = self.cluster_mut(index)?.write(now, key, op, level).ok()?;
        self.collect();
        Some(id)
    }

    /// Reads `key` at node `index` from `level` replicas; None if the node is crashed or
    /// refused the read at once.
    pub fn read(&mut self, index: usize, key: &str, level: usize) -> Option<RequestId> {
        let now = self.now;
        let id = self.cluster_mut(index)?.read(now, key, level).ok()?;
        self.collect();
        Some(id)
    }

    /// How request `id` made at node `index` ended, once it has.
    pub fn outcome(&self, index: usize, id: RequestId) -> Option<&Outcome> {
        self.nodes.get(index)?.outcomes.get(&id)
    }

    /// Node `index`, unless it is crashed.
    pub fn cluster(&self, index: usize) -> Option<&Cluster> {
        self.nodes.get(index)?.cluster.as_ref()
    }

    /// Node `index`'s id.
    pub fn id(&self, index: usize) -> Option<ReplicaId> {
        self.nodes.get(index).map(|n| n.id)
    }

    /// The index of node `id`.
    pub fn index_of(&self, id: ReplicaId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// How many nodes were started.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was started.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time now (ms).
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The network traffic so far (`rounds` counts the system partitions' rounds).
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Crashes node `index`: what it had not committed is lost.
    pub fn crash(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.cluster = None;
            node.dirty_since = None;
            if node.left == Some(false) {
                node.left = None;
            }
        }
    }

    /// Restarts a crashed node from its stores.
    pub fn restart(&mut self, index: usize) {
        let config = self.node_config(index);
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if node.cluster.is_some() {
            return;
        }
        node.restarts += 1;
        let Some(mut config) = config else {
            return;
        };
        config.replica.seed ^= node.restarts;
        let states: BTreeMap<PartitionId, Durable> = node
            .stores
            .iter()
            .map(|(p, store)| (*p, store.durable().clone()))
            .collect();
        let mut cluster = Cluster::restore(config, states);
        cluster.handle_timeout(self.now);
        node.cluster = Some(cluster);
        self.collect();
    }

    /// Whether node `index` is crashed.
    pub fn is_crashed(&self, index: usize) -> bool {
        self.nodes.get(index).is_some_and(|n| n.cluster.is_none())
    }

    /// Node `i` reaches node `j` only if `groups[i] == groups[j]`.
    pub fn partition(&mut self, groups: &[u32]) {
        self.network.partition(groups);
    }

    /// Joins all partitions.
    pub fn heal(&mut self) {
        self.network.heal();
    }

    /// Runs for `duration` ms of virtual time.
    pub fn run_for(&mut self, duration: Millis) {
        let until = self.now + duration;
        while self.step(until) {}
    }

    /// Runs until `done(self)` or `limit` ms have passed; returns the time it took.
    pub fn run_until(
        &mut self,
        limit: Millis,
        done: impl Fn(&ClusterSim) -> bool,
    ) -> Option<Millis> {
        let start = self.now;
        let until = start + limit;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if !self.step(until) {
                return None;
            }
        }
    }
}

// The event loop.
impl ClusterSim {
    fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let id = ReplicaId::new(index as u64 + 1);
        // Nodes started together know each other; a later one knows those before it.
        let known = index.max(self.config.nodes.min(MAX_NODES));
        let mut seeds: Vec<ReplicaId> = (0..known)
            .filter(|&j| j != index)
            .map(|j| ReplicaId::new(j as u64 + 1))
            .collect();
        if self.config.seeds > 0 {
            let mut rng = fastrand::Rng::with_seed(self.config.seed ^ id.get().rotate_left(32));
            rng.shuffle(&mut seeds);
            seeds.truncate(self.config.seeds);
        }
        self.nodes.push(SimNode {
            id,
            seeds,
            cluster: None,
            stores: BTreeMap::new(),
            dirty_since: None,
            outcomes: BTreeMap::new(),
            restarts: 0,
            left: None,
        });
        self.index.insert(id, index);
        if let (Some(config), Some(node)) = (self.node_config(index), self.nodes.get_mut(index)) {
            let mut cluster = Cluster::new(config);
            cluster.handle_timeout(self.now);
            node.cluster = Some(cluster);
        }
        self.collect();
        index
    }

    fn node_config(&self, index: usize) -> Option<ClusterConfig> {
        let node = self.nodes.get(index)?;
        let mut config = ClusterConfig::new(node.id);
        config.seeds = node.seeds.clone();
        config.replicas = self.config.replicas;
        config.partition_bits = self.config.partition_bits;
        config.request_timeout = self.config.request_timeout;
        config.replica.gossip_interval = self.config.gossip_interval;
        config.replica.view = self.config.view;
        if self.config.view > 0 {
            config.replica.max_peers = self.config.view.saturating_mul(4);
        }
        config.replica.seed = self.config.seed ^ node.id.get().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some(config)
    }

    fn cluster_mut(&mut self, index: usize) -> Option<&mut Cluster> {
        self.nodes.get_mut(index)?.cluster.as_mut()
    }

    /// Handles the next event no later than `until`; false once there is none.
    fn step(&mut self, until: Millis) -> bool {
        let latency = self.config.commit_latency;
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.cluster.as_ref()?.poll_timeout());
        let commits = self
            .nodes
            .iter()
            .filter_map(|n| Some(n.dirty_since? + latency));
        let next = timers.chain(commits).chain(self.network.next_at()).min();
        let Some(next) = next.filter(|&t| t <= until) else {
            self.now = until;
            return false;
        };
        self.now = self.now.max(next);
        while let Some((m, reachable)) = self.network.pop_due(self.now) {
            self.deliver(m, reachable);
        }
        let now = self.now;
        for node in &mut self.nodes {
            if let Some(cluster) = node.cluster.as_mut() {
                if cluster.poll_timeout().is_some_and(|t| t <= now) {
                    cluster.handle_timeout(now);
                }
            }
        }
        self.collect();
        true
    }

    fn deliver(&mut self, m: InFlight, reachable: bool) {
        let now = self.now;
        let from = self.nodes.get(m.from).map(|n| n.id);
        let cluster = self.nodes.get_mut(m.to).and_then(|n| n.cluster.as_mut());
        let (Some(cluster), Some(from), true) = (cluster, from, reachable) else {
            self.stats.dropped += 1;
            return;
        };
        if cluster.handle_message(now, from, &m.payload).is_err() {
            self.stats.protocol_errors += 1;
        }
    }

    /// Commits what is due, records finished requests, and takes every node's messages onto
    /// the network.
    fn collect(&mut self) {
        let (now, latency) = (self.now, self.config.commit_latency);
        for node in &mut self.nodes {
            let Some(cluster) = node.cluster.as_mut() else {
                continue;
            };
            if !cluster.is_persisted() {
                let since = *node.dirty_since.get_or_insert(now);
                if now >= since + latency && cluster.persist(&mut node.stores).is_ok() {
                    self.stats.commits += 1;
                    node.dirty_since = None;
                    if node.left.is_some() {
                        node.left = Some(true);
                    }
                }
            }
            while let Some(event) = cluster.poll_event() {
                match event {
                    ClusterEvent::Written { id, result } => {
                        node.outcomes.insert(id, Outcome::Written(result));
                    }
                    ClusterEvent::Read { id, result } => {
                        node.outcomes.insert(id, Outcome::Read(result));
                    }
                    _ => {}
                }
            }
        }
        for from in 0..self.nodes.len() {
            while let Some(t) = self
                .nodes
                .get_mut(from)
                .and_then(|n| n.cluster.as_mut())
                .and_then(Cluster::poll_transmit)
            {
                self.stats.messages += 1;
                self.stats.bytes += t.payload.len() as u64;
                self.stats.largest_message = self.stats.largest_message.max(t.payload.len() as u64);
                if let Some(&to) = self.index.get(&t.to) {
                    self.network
                        .send(self.now, from, to, t.payload, &mut self.stats);
                }
            }
        }
    }
}

/// What one [`cluster_chaos`] run did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClusterChaosReport {
    /// The seed that replays it.
    pub seed: u64,
    /// Nodes started, joins included.
    pub nodes: usize,
    /// Writes acknowledged at their level.
    pub acknowledged: usize,
    /// Writes that failed or whose outcome was lost with a crash of their node.
    pub unacknowledged: usize,
    /// Virtual ms from the last heal until every acknowledged write was at all its owners.
    pub settled_after: Millis,
    /// The traffic.
    pub stats: SimStats,
}

/// One seeded run of a cluster through loss, duplication, reordering, partitions, crashes,
/// restarts, a join and a leave, writing unique set elements at levels 1 to 3. After healing
/// and restarting every node, every acknowledged write must be held by all `N` owners of its
/// key (as the converged ring places it), and the node that left must hold no partition.
/// Errors name the seed and what was wrong.
pub fn cluster_chaos(seed: u64) -> Result<ClusterChaosReport, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let nodes = rng.usize(4..=7);
    let mut sim = ClusterSim::new(ClusterSimConfig {
        nodes,
        loss: rng.f64() * 0.2,
        duplicate: rng.f64() * 0.05,
        delay: (1, rng.u64(2..=40)),
        partition_bits: rng.u32(2..=5),
        commit_latency: rng.choice([0, 1, 5, 20]).unwrap_or(0),
        request_timeout: 1_000,
        ..ClusterSimConfig::new(seed)
    });
    let fail = |what: &str, sim: &ClusterSim| {
        format!(
            "cluster chaos seed {seed} (replay: CLUSTER_SEED={seed}): {what} at {} ms",
            sim.now()
        )
    };
    sim.run_for(1_000);
    let mut pending: Vec<(usize, RequestId, String, Vec<u8>)> = Vec::new();
    let mut acknowledged: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut unacknowledged, mut joined, mut left) = (0, false, None);
    for step in 0..rng.usize(40..160) {
        sim.run_for(rng.u64(0..80));
        let count = sim.len();
        match rng.u8(0..100) {
            0..=64 => {
                let node = rng.usize(0..count);
                let key = format!("k{}", rng.u8(0..24));
                let element = format!("e{step}").into_bytes();
                let level = rng.usize(1..=3);
                match sim.write(node, &key, &Op::Add(element.clone()), level) {
                    Some(id) => pending.push((node, id, key, element)),
                    None => unacknowledged += 1,
                }
            }
            65..=72 => {
                let groups: Vec<u32> = (0..count).map(|_| rng.u32(0..2)).collect();
                sim.partition(&groups);
            }
            73..=80 => sim.heal(),
            81..=88 => {
                let up = (0..count).filter(|&i| !sim.is_crashed(i)).count();
                if up > 3 {
                    sim.crash(rng.usize(0..count));
                }
            }
            89..=95 => sim.restart(rng.usize(0..count)),
            96..=97 if !joined => {
                joined = true;
                sim.join();
            }
            _ if left.is_none() && count > 4 => {
                let node = rng.usize(0..count);
                if !sim.is_crashed(node) {
                    left = Some(node);
                    sim.leave(node);
                }
            }
            _ => {}
        }
        pending.retain(|(node, id, key, element)| match sim.outcome(*node, *id) {
            Some(Outcome::Written(Ok(_))) => {
                acknowledged.push((key.clone(), element.clone()));
                false
            }
            Some(_) => {
                unacknowledged += 1;
                false
            }
            None if sim.is_crashed(*node) => {
                unacknowledged += 1;
                false
            }
            None => true,
        });
    }
    sim.heal();
    (0..sim.len()).for_each(|i| sim.restart(i));
    // A leave lost to a crash before it was committed did not happen.
    let left = left.filter(|&node| sim.has_left(node));
    let settled = sim.run_until(120_000, |s| settled_state(s, &acknowledged, left).is_ok());
    let Some(settled_after) = settled else {
        let detail = settled_state(&sim, &acknowledged, left)
            .err()
            .unwrap_or_default();
        return Err(fail(
            &format!("not settled 120 s after the last heal: {detail}"),
            &sim,
        ));
    };
    if sim.stats().protocol_errors > 0 {
        return Err(fail("a node refused an honest peer's message", &sim));
    }
    Ok(ClusterChaosReport {
        seed,
        nodes: sim.len(),
        acknowledged: acknowledged.len(),
        unacknowledged: unacknowledged + pending.len(),
        settled_after,
        stats: sim.stats().clone(),
    })
}

/// Whether the member sets agree, every acknowledged element is at every owner of its key,
/// and the node that left holds nothing; else what is not so.
fn settled_state(
    sim: &ClusterSim,
    acknowledged: &[(String, Vec<u8>)],
    left: Option<usize>,
) -> Result<(), String> {
    let members: Vec<Vec<ReplicaId>> = (0..sim.len())
        .filter_map(|i| Some(sim.cluster(i)?.members().collect()))
        .collect();
    if members.windows(2).any(|w| w.first() != w.get(1)) {
        return Err("member sets differ".into());
    }
    let Some(view) = (0..sim.len())
        .find(|&i| Some(i) != left)
        .and_then(|i| sim.cluster(i))
    else {
        return Err("no node up".into());
    };
    for (key, element) in acknowledged {
        let partition = view.partition_of(key);
        for owner in view.owners(partition) {
            let held = sim
                .index_of(*owner)
                .and_then(|i| sim.cluster(i))
                .and_then(|c| c.get(key))
                .is_some_and(|o| matches!(o, Object::Set(s) if s.contains(element)));
            if !held {
                return Err(format!(
                    "{key}: acknowledged {:?} missing at owner {owner:?}",
                    String::from_utf8_lossy(element)
                ));
            }
        }
    }
    if let Some(node) = left.and_then(|i| sim.cluster(i)) {
        if let Some((p, replica)) = node.hosted().next() {
            let lagging: Vec<ReplicaId> = node
                .owners(p)
                .iter()
                .copied()
                .filter(|&o| !replica.peer_has_all(o))
                .collect();
            return Err(format!(
                "the node that left still holds partition {p} (owners not known to hold it: {lagging:?})"
            ));
        }
    }
    Ok(())
}
