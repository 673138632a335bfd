//! A deterministic simulator: many [`Replica`]s on virtual time, with seeded message loss,
//! duplication, delay (and so reordering), partitions, crashes and restarts.
//!
//! Everything random comes from one seed, so a run replays exactly. Each replica commits its
//! changes to a [`MemStore`] `commit_latency` ms after they are made (a disk's group commit),
//! and, as every driver must, sends nothing before that. A crash loses what was not committed
//! yet, as a real one does: the replica restarts from its store. An update counts as
//! acknowledged once committed; [`truth`](Sim::truth) holds the acknowledged ones.
//!
//! ```
//! use crdt_net::sim::{Sim, SimConfig};
//! use crdt_net::Op;
//!
//! let mut sim = Sim::new(SimConfig { replicas: 4, loss: 0.2, ..SimConfig::new(7) });
//! sim.update(0, "visits", &Op::Inc(1));
//! sim.partition(&[0, 0, 1, 1]);
//! sim.update(3, "visits", &Op::Inc(2));
//! sim.run_for(2_000);
//! sim.heal();
//! assert!(sim.run_until_converged(60_000).is_some());
//! assert_eq!(sim.replica(2).and_then(|r| r.get("visits")).map(|o| o.to_string()), Some("3".into()));
//! ```

pub mod cluster;
mod network;

use std::collections::BTreeMap;

use crdt_core::{Crdt, ReplicaId};

use crate::replica::{Config, Durable, Millis, Replica};
use crate::store::MemStore;
use crate::{Object, Op};
use network::{InFlight, Network};

/// The shape of a simulated network. [`SimConfig::new`] gives a perfect one.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many replicas (ids 1..=n).
    pub replicas: usize,
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Each delivery takes a uniformly random delay in this range (ms), which reorders messages.
    pub delay: (Millis, Millis),
    /// The replicas' round interval (ms).
    pub gossip_interval: Millis,
    /// The replicas' fanout.
    pub fanout: usize,
    /// Whether replicas push fresh deltas eagerly.
    pub eager_push: bool,
    /// The replicas' message size limit.
    pub max_message: usize,
    /// The replicas' delta buffer size.
    pub max_log_bytes: usize,
    /// Give replicas full 64-bit ids, as real nodes have (derived from keys), instead of 1..=n;
    /// version vectors then cost what they cost in deployment.
    pub wide_ids: bool,
    /// How long after a change a replica commits it (and may send what depends on it), in ms.
    /// A crash in between loses the change. 0 commits at once.
    pub commit_latency: Millis,
    /// Bytes that may be in flight on one link before a state transfer on it waits (the
    /// replicas' credit, as a driver sets it from its send queue); so a transfer's pace is
    /// this window per delivery delay.
    pub send_window: usize,
    /// Peer sampling: when non-zero, each replica starts knowing this many random others and
    /// gossips within a partial view of that size ([`Config::view`]), remembering at most four
    /// times as many peers; 0 (the default): every replica knows every other.
    pub view: usize,
}

impl SimConfig {
    /// Three replicas on a perfect 1 to 5 ms network, 100 ms rounds, fanout 2.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            replicas: 3,
            seed,
            loss: 0.0,
            duplicate: 0.0,
            delay: (1, 5),
            gossip_interval: 100,
            fanout: 2,
            eager_push: true,
            max_message: 1 << 20,
            max_log_bytes: 8 << 20,
            wide_ids: false,
            commit_latency: 0,
            send_window: 4 << 20,
            view: 0,
        }
    }

    /// Replica `index`'s id.
    pub fn id(&self, index: usize) -> ReplicaId {
        let n = index as u64 + 1;
        if self.wide_ids {
            // A fixed odd multiplier spreads the ids over the whole range, like key hashes.
            ReplicaId::new(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63)
        } else {
            ReplicaId::new(n)
        }
    }

    fn replica_config(&self, index: usize) -> Config {
        let mut config = Config::new(self.id(index));
        let mut others: Vec<usize> = (0..self.replicas).filter(|&j| j != index).collect();
        if self.view > 0 {
            // A random first view, as a bootstrap list would give; replayed by the seed.
            let mut rng = fastrand::Rng::with_seed(self.seed ^ (index as u64).rotate_left(32));
            rng.shuffle(&mut others);
            others.truncate(self.view);
            config.view = self.view;
            config.max_peers = self.view.saturating_mul(4);
        }
        config.peers = others
            .into_iter()
            .map(|j| crate::PeerInfo {
                id: self.id(j),
                addr: None,
            })
            .collect();
        config.gossip_interval = self.gossip_interval;
        config.fanout = self.fanout;
        config.eager_push = self.eager_push;
        config.max_message = self.max_message;
        config.max_log_bytes = self.max_log_bytes;
        config.seed = self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        config
    }
}

/// What crossed the simulated network.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Anti-entropy rounds started, over all replicas.
    pub rounds: u64,
    /// Messages sent.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Messages lost to loss, partitions or crashed receivers.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages a replica refused (there should be none between honest replicas).
    pub protocol_errors: u64,
    /// The largest message sent.
    pub largest_message: u64,
    /// Commits, over all replicas.
    pub commits: u64,
    /// Updates lost to a crash before they were committed (never acknowledged).
    pub lost_unacknowledged: u64,
    /// The most bytes ever in flight on one link: what a sender queued for one peer.
    pub peak_in_flight: u64,
    /// Bytes of anti-entropy exchanges: digests, summaries and their answers (`InSync`,
    /// `Mismatch`), without the deltas or state they set off.
    pub exchange_bytes: u64,
}

/// A simulated cluster.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    now: Millis,
    nodes: Vec<Node>,
    /// Replica id to node index.
    index: BTreeMap<ReplicaId, usize>,
    network: Network,
    /// Every acknowledged delta, folded per key: the state every replica must reach.
    truth: BTreeMap<String, Object>,
    stats: SimStats,
}

#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    /// What survives a crash.
    store: MemStore,
    /// Local updates made but not yet committed.
    unacknowledged: Vec<(String, Object)>,
    /// Since when the replica has had uncommitted changes.
    dirty_since: Option<Millis>,
    restarts: u64,
}

impl Sim {
    /// A cluster of `config.replicas` fresh replicas at time 0, all in one partition.
    pub fn new(config: SimConfig) -> Self {
        Sim::with_states(config, |_| Durable::default())
    }

    /// A cluster whose replica `i` starts from `state(i)`, as if restarted from it.
    pub fn with_states(config: SimConfig, state: impl Fn(usize) -> Durable) -> Self {
        let mut truth: BTreeMap<String, Object> = BTreeMap::new();
        let nodes = (0..config.replicas)
            .map(|i| {
                let durable = state(i);
                for (key, object) in &durable.objects {
                    truth.entry(key.clone()).or_default().merge(object);
                }
                Node {
                    replica: Some(Replica::restore(config.replica_config(i), durable.clone())),
                    store: MemStore::new(durable),
                    unacknowledged: Vec::new(),
                    dirty_since: None,
                    restarts: 0,
                }
            })
            .collect();
        let index = (0..config.replicas).map(|i| (config.id(i), i)).collect();
        Sim {
            index,
            network: Network::new(
                config.seed,
                config.replicas,
                config.loss,
                config.duplicate,
                config.delay,
            ),
            nodes,
            now: 0,
            truth,
            stats: SimStats::default(),
            config,
        }
    }

    /// Virtual time now (ms).
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The network traffic so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Replica `index`, unless it is crashed.
    pub fn replica(&self, index: usize) -> Option<&Replica> {
        self.nodes.get(index).and_then(|n| n.replica.as_ref())
    }

    /// How many replicas the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no replicas.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Applies `op` at replica `index`; false if it is crashed or the op does not fit. The
    /// update is acknowledged (and joins [`truth`](Sim::truth)) once the replica commits it.
    pub fn update(&mut self, index: usize, key: &str, op: &Op) -> bool {
        let Some(node) = self.nodes.get_mut(index) else {
            return false;
        };
        let Some(replica) = node.replica.as_mut() else {
            return false;
        };
        let Ok(delta) = replica.update(key, op) else {
            return false;
        };
        node.unacknowledged.push((key.to_owned(), delta));
        self.collect();
        true
    }

    /// Whether replica `index` has committed every update made at it.
    pub fn is_acknowledged(&self, index: usize) -> bool {
        self.nodes
            .get(index)
            .is_some_and(|n| n.unacknowledged.is_empty())
    }

    /// Splits the network: replica `i` can reach replica `j` only if `groups[i] == groups[j]`.
    pub fn partition(&mut self, groups: &[u32]) {
        self.network.partition(groups);
    }

    /// Joins all partitions.
    pub fn heal(&mut self) {
        self.network.heal();
    }

    /// Crashes replica `index`: everything it had not committed is lost.
    pub fn crash(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            if node.replica.take().is_some() {
                self.stats.lost_unacknowledged += node.unacknowledged.len() as u64;
                node.unacknowledged.clear();
                node.dirty_since = None;
            }
        }
    }

    /// Restarts a crashed replica from its persisted state.
    pub fn restart(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if node.replica.is_some() {
            return;
        }
        node.restarts += 1;
        let mut config = self.config.replica_config(index);
        config.seed ^= node.restarts;
        let mut replica = Replica::restore(config, node.store.durable().clone());
        // Time moved on while it was down: its first round is due now.
        replica.handle_timeout(self.now);
        node.replica = Some(replica);
        self.collect();
    }

    /// Whether replica `index` is crashed.
    pub fn is_crashed(&self, index: usize) -> bool {
        self.nodes.get(index).is_some_and(|n| n.replica.is_none())
    }

    /// Replica `index`'s id.
    pub fn id(&self, index: usize) -> ReplicaId {
        self.config.id(index)
    }

    /// The join of every acknowledged update: what every replica must converge to.
    pub fn truth(&self) -> &BTreeMap<String, Object> {
        &self.truth
    }

    /// Whether every replica is up and holds exactly [`truth`](Sim::truth).
    pub fn converged(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.replica
                .as_ref()
                .is_some_and(|r| same_objects(r.objects(), &self.truth))
        })
    }

    /// Runs the network for `duration` ms of virtual time.
    pub fn run_for(&mut self, duration: Millis) {
        let until = self.now + duration;
        while self.step(until) {}
    }

    /// Runs until [`converged`](Sim::converged) or `limit` ms have passed; returns the time it
    /// took.
    pub fn run_until_converged(&mut self, limit: Millis) -> Option<Millis> {
        self.run_until(limit, Sim::converged)
    }

    /// Runs until `done(self)` or `limit` ms have passed; returns the time it took. `done` is
    /// checked after every event.
    pub fn run_until(&mut self, limit: Millis, done: impl Fn(&Sim) -> bool) -> Option<Millis> {
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

    /// Handles the next event no later than `until`; false once there is none.
    fn step(&mut self, until: Millis) -> bool {
        let next_message = self.network.next_at();
        let latency = self.config.commit_latency;
        let next_timer = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref()?.poll_timeout())
            .chain(
                self.nodes
                    .iter()
                    .filter_map(|n| Some(n.dirty_since? + latency)),
            )
            .min();
        let next = match (next_message, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => {
                    self.now = until;
                    return false;
                }
            },
        };
        if next > until {
            self.now = until;
            return false;
        }
        self.now = self.now.max(next);
        while let Some((m, reachable)) = self.network.pop_due(self.now) {
            self.deliver(m, reachable);
        }
        let now = self.now;
        for node in &mut self.nodes {
            if let Some(r) = node.replica.as_mut() {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    let before = r.stats().rounds;
                    r.handle_timeout(now);
                    self.stats.rounds += r.stats().rounds - before;
                }
            }
        }
        self.collect();
        true
    }

    fn deliver(&mut self, m: InFlight, reachable: bool) {
        let now = self.now;
        let from_id = self.config.id(m.from);
        let Some(replica) = self.nodes.get_mut(m.to).and_then(|n| n.replica.as_mut()) else {
            self.stats.dropped += 1;
            return;
        };
        if !reachable {
            self.stats.dropped += 1;
            return;
        }
        if replica.handle_message(now, from_id, &m.payload).is_err() {
            self.stats.protocol_errors += 1;
        }
        // Replicas drain their events; the simulator checks state, not notifications.
        while replica.poll_event().is_some() {}
    }

    /// Commits what is due, then takes every replica's outgoing messages onto the network.
    fn collect(&mut self) {
        let now = self.now;
        let latency = self.config.commit_latency;
        for node in &mut self.nodes {
            let Some(replica) = node.replica.as_mut() else {
                continue;
            };
            if replica.is_persisted() {
                continue;
            }
            let since = *node.dirty_since.get_or_insert(now);
            if now < since + latency {
                continue;
            }
            if replica.persist(&mut node.store).is_ok() {
                self.stats.commits += 1;
                node.dirty_since = None;
                for (key, delta) in node.unacknowledged.drain(..) {
                    self.truth.entry(key).or_default().merge(&delta);
                }
            }
        }
        for from in 0..self.nodes.len() {
            self.grant_credit(from);
            while let Some(t) = self
                .nodes
                .get_mut(from)
                .and_then(|n| n.replica.as_mut())
                .and_then(Replica::poll_transmit)
            {
                self.schedule(from, t.to, t.payload);
            }
        }
    }

    /// Tells `from`'s replica how much each peer it is transferring state to can take: the
    /// window less what is in flight to it.
    fn grant_credit(&mut self, from: usize) {
        let Some(replica) = self.nodes.get_mut(from).and_then(|n| n.replica.as_mut()) else {
            return;
        };
        let pending: Vec<ReplicaId> = replica.transfers_pending().collect();
        for peer in pending {
            let to = self.index.get(&peer).copied().unwrap_or(usize::MAX);
            let busy = self.network.busy(from, to);
            replica.set_credit(peer, self.config.send_window.saturating_sub(busy));
        }
    }

    fn schedule(&mut self, from: usize, to: ReplicaId, payload: Vec<u8>) {
        self.stats.messages += 1;
        self.stats.bytes += payload.len() as u64;
        // The message's variant index follows the version byte (docs/wire-format.md).
        if matches!(payload.get(1), Some(0 | 1 | 9 | 10)) {
            self.stats.exchange_bytes += payload.len() as u64;
        }
        self.stats.largest_message = self.stats.largest_message.max(payload.len() as u64);
        let Some(&to) = self.index.get(&to) else {
            return;
        };
        self.network
            .send(self.now, from, to, payload, &mut self.stats);
    }
}

/// The state of a G-Counter at `key` incremented once by each of `writers` replicas with full
/// 64-bit ids (none of them a simulated replica): a converged state whose context names
/// `writers` writers, to start a [`Sim::with_states`] from.
pub fn written_by(key: &str, writers: usize) -> Durable {
    let mut state = Durable::default();
    for i in 0..writers as u64 {
        let id = ReplicaId::new((i + (1 << 20)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63);
        let mut writer = Replica::new(Config::new(id));
        if writer.update(key, &Op::Inc(1)).is_err() {
            continue;
        }
        let d = writer.durable();
        for (k, object) in &d.objects {
            state.objects.entry(k.clone()).or_default().merge(object);
        }
        for (k, touched) in &d.touched {
            state.touched.entry(k.clone()).or_default().merge(touched);
        }
        state.seen.merge(&d.seen);
    }
    state
}

/// Equal objects, treating a missing key and an empty object alike.
fn same_objects(a: &BTreeMap<String, Object>, b: &BTreeMap<String, Object>) -> bool {
    let non_empty = |m: &BTreeMap<String, Object>| {
        m.iter()
            .filter(|(_, o)| **o != Object::Empty)
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect::<Vec<_>>()
    };
    non_empty(a) == non_empty(b)
}

/// What a [`chaos`] run did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// The cluster size.
    pub replicas: usize,
    /// Updates applied.
    pub updates: u64,
    /// Updates acknowledged (committed before any crash); every one must be everywhere.
    pub acknowledged: u64,
    /// Virtual ms from the last heal to convergence.
    pub converged_after: Millis,
    /// Network totals.
    pub stats: SimStats,
}

/// One seeded fault schedule: 5 to 16 replicas, loss up to 30%, duplicates, reordering delays,
/// small message and buffer limits, partitions, heals, crashes and restarts, with random updates
/// on every object type (nested maps included). After the last heal every replica must hold the
/// join of all updates, and no honest replica may refuse another's message.
///
/// The error names the seed; `chaos(seed)` replays the run exactly.
pub fn chaos(seed: u64) -> Result<ChaosReport, String> {
    chaos_in_views(seed, 0)
}

/// The schedule of [`chaos`]`(seed)` with peer sampling: each replica gossips within a
/// partial view of `view` peers ([`SimConfig::view`]). `chaos_in_views(seed, view)` replays it.
pub fn chaos_in_views(seed: u64, view: usize) -> Result<ChaosReport, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let replicas = rng.usize(5..=16);
    let config = SimConfig {
        replicas,
        seed,
        loss: rng.f64() * 0.3,
        duplicate: rng.f64() * 0.1,
        delay: (1, rng.u64(2..=80)),
        gossip_interval: 100,
        fanout: rng.usize(1..=3),
        eager_push: rng.bool(),
        max_message: rng.choice([4096, 16 << 10, 1 << 20]).unwrap_or(4096),
        max_log_bytes: rng.choice([2048, 64 << 10, 8 << 20]).unwrap_or(2048),
        wide_ids: rng.bool(),
        commit_latency: rng.choice([0, 1, 5, 20]).unwrap_or(0),
        send_window: rng.choice([1, 64 << 10, 4 << 20]).unwrap_or(1),
        view,
    };
    let mut sim = Sim::new(config.clone());
    let mut clocks: Vec<crdt_core::Hlc> =
        (0..replicas).map(|_| crdt_core::Hlc::new(60_000)).collect();
    let skews: Vec<Millis> = (0..replicas).map(|_| rng.u64(0..500)).collect();
    let mut updates = 0;
    let fail = |why: &str, sim: &Sim| {
        format!(
            "seed {seed}: {why} (config {config:?}, stats {:?}); replay with crdt_net::sim::chaos_in_views({seed}, {view})",
            sim.stats()
        )
    };
    for step in 0..rng.usize(20..200) {
        sim.run_for(rng.u64(0..60));
        if step % 16 == 0 {
            let wrong = sim.false_beliefs();
            if let Some(first) = wrong.first() {
                return Err(fail(&format!("a false belief: {first}"), &sim));
            }
        }
        match rng.u8(0..100) {
            0..=74 => {
                let node = rng.usize(0..replicas);
                let physical = sim.now() + skews.get(node).copied().unwrap_or(0);
                let Some(clock) = clocks.get_mut(node) else {
                    continue;
                };
                let (key, op) = random_op(&mut rng, clock, physical);
                updates += u64::from(sim.update(node, &key, &op));
            }
            75..=82 => {
                let groups: Vec<u32> = (0..replicas).map(|_| rng.u32(0..3)).collect();
                sim.partition(&groups);
            }
            83..=88 => sim.heal(),
            89..=94 => {
                let node = rng.usize(0..replicas);
                let up = (0..replicas).filter(|&i| !sim.is_crashed(i)).count();
                if up > 1 {
                    sim.crash(node);
                }
            }
            _ => sim.restart(rng.usize(0..replicas)),
        }
    }
    sim.heal();
    (0..replicas).for_each(|i| sim.restart(i));
    let Some(converged_after) = sim.run_until_converged(120_000) else {
        let detail = sim.divergence().join("\n");
        return Err(fail(
            &format!("not converged 120 s after the last heal:\n{detail}\n"),
            &sim,
        ));
    };
    if let Some(first) = sim.false_beliefs().first() {
        return Err(fail(&format!("a false belief: {first}"), &sim));
    }
    if sim.stats().protocol_errors > 0 {
        return Err(fail("a replica refused an honest peer's message", &sim));
    }
    Ok(ChaosReport {
        seed,
        replicas,
        acknowledged: updates - sim.stats().lost_unacknowledged,
        updates,
        converged_after,
        stats: sim.stats().clone(),
    })
}

/// A random update on a key whose name fixes its type, so concurrent writers never disagree.
fn random_op(
    rng: &mut fastrand::Rng,
    clock: &mut crdt_core::Hlc,
    physical: Millis,
) -> (String, Op) {
    let n = rng.u8(0..4);
    match rng.u8(0..6) {
        0 => (format!("g{n}"), Op::Inc(rng.u64(1..5))),
        1 => {
            let op = if rng.bool() {
                Op::PnInc(rng.u64(1..5))
            } else {
                Op::PnDec(rng.u64(1..5))
            };
            (format!("p{n}"), op)
        }
        2 => {
            let e = format!("e{}", rng.u8(0..16));
            let op = if rng.u8(0..3) == 0 {
                Op::Remove(e.into())
            } else {
                Op::Add(e.into())
            };
            (format!("s{n}"), op)
        }
        3 => (
            format!("l{n}"),
            Op::Lww(clock.now(physical), format!("v{}", rng.u16(..)).into()),
        ),
        4 => (format!("m{n}"), Op::Mv(format!("w{}", rng.u16(..)).into())),
        _ => {
            let field = rng.u8(0..4);
            let op = match rng.u8(0..5) {
                0 => Op::Delete(format!("c{field}").into()),
                1 => Op::Delete(format!("s{field}").into()),
                2 => Op::Update(format!("c{field}").into(), Box::new(Op::Inc(1))),
                3 => Op::Update(
                    format!("s{field}").into(),
                    Box::new(Op::Remove(format!("e{}", rng.u8(0..8)).into())),
                ),
                _ => Op::Update(
                    format!("s{field}").into(),
                    Box::new(Op::Add(format!("e{}", rng.u8(0..8)).into())),
                ),
            };
            (format!("n{}", n % 2), op)
        }
    }
}

impl Sim {
    /// Every false belief of one replica about another: a dot some live replica counts a peer
    /// as holding ([`Replica::holders`], what acknowledgement levels count) that the peer has
    /// not committed to its store. Empty in every honest run: a belief errs low, never high.
    pub fn false_beliefs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(r) = &node.replica else {
                continue;
            };
            let seen = r.seen();
            let dots = seen
                .vv()
                .iter()
                .flat_map(|(w, n)| (1..=n).map(move |c| crdt_core::Dot::new(w, c)))
                .chain(seen.cloud());
            for dot in dots {
                for holder in r.holders(dot) {
                    let Some(h) = self.index.get(&holder).and_then(|&j| self.nodes.get(j)) else {
                        continue;
                    };
                    if !h.store.durable().seen.contains(dot) {
                        out.push(format!("replica {i} counts {holder:?} as holding {dot:?}"));
                    }
                }
            }
        }
        out
    }

    /// For debugging a failed run: each replica's keys that differ from the truth.
    pub fn divergence(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(r) = &node.replica else {
                out.push(format!("replica {i} crashed"));
                continue;
            };
            for (key, want) in &self.truth {
                let got = r.get(key);
                if got != Some(want) {
                    out.push(format!("replica {i} key {key}: has {got:?}, want {want:?}; seen {:?}; touched {:?}", r.seen(), r.durable().touched.get(key)));
                }
            }
        }
        out
    }
}
