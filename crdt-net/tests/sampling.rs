//! Peer sampling: replicas gossiping within bounded partial views still spread every update
//! to all, remember a bounded number of peers, send a bounded number of bytes per round
//! however many replicas there are, and replay exactly from a seed.

use crdt_core::ReplicaId;
use crdt_net::sim::{Sim, SimConfig};
use crdt_net::{Config, Message, Op, PeerInfo, Replica};

const INTERVAL: u64 = 100;
const VIEW: usize = 6;

fn sampled(replicas: usize, seed: u64) -> Sim {
    Sim::new(SimConfig {
        replicas,
        view: VIEW,
        eager_push: false,
        wide_ids: true,
        gossip_interval: INTERVAL,
        ..SimConfig::new(seed)
    })
}

fn everyone_has(sim: &Sim, key: &str) -> bool {
    (0..sim.len()).all(|i| sim.replica(i).and_then(|r| r.get(key)).is_some())
}

/// Rounds for one update at replica 0 to reach all, and bytes per replica per round over
/// the run (a warm-up, the spread, and as long again idle).
fn spread(sim: &mut Sim) -> (u64, f64) {
    sim.run_for(20 * INTERVAL);
    assert!(sim.update(0, "x", &Op::Inc(1)));
    let took = sim
        .run_until(300 * INTERVAL, |s| everyone_has(s, "x"))
        .expect("the update reaches every replica");
    sim.run_for(20 * INTERVAL);
    assert_eq!(sim.stats().protocol_errors, 0);
    let per_round = sim.stats().bytes as f64 / sim.stats().rounds as f64;
    (took.div_ceil(INTERVAL), per_round)
}

#[test]
fn an_update_reaches_all_of_300_replicas_within_views_of_6() {
    let mut sim = sampled(300, 1);
    let (rounds, _) = spread(&mut sim);
    // 2 * log2(300) = 16.5
    assert!(rounds <= 16, "{rounds} rounds");
    for i in 0..sim.len() {
        let known = sim.replica(i).map_or(0, |r| r.peers().count());
        assert!(known <= 4 * VIEW, "replica {i} remembers {known} peers");
    }
}

#[test]
fn bytes_per_replica_per_round_do_not_grow_with_the_cluster() {
    let (_, small) = spread(&mut sampled(40, 2));
    let (_, large) = spread(&mut sampled(400, 2));
    assert!(
        large <= small * 1.25,
        "{small:.1} bytes per replica per round at 40 replicas, {large:.1} at 400"
    );
    // Full membership, for contrast: peer exchange alone grows with the cluster.
    let full = |replicas| {
        let mut sim = Sim::new(SimConfig {
            replicas,
            eager_push: false,
            wide_ids: true,
            gossip_interval: INTERVAL,
            ..SimConfig::new(2)
        });
        spread(&mut sim).1
    };
    assert!(full(400) > 4.0 * full(40));
}

#[test]
fn a_sampled_run_replays_from_its_seed() {
    let run = |seed| {
        let mut sim = sampled(60, seed);
        spread(&mut sim);
        (sim.stats().clone(), sim.now())
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9).0, run(10).0);
}

#[test]
fn replicas_converge_through_a_partition_and_crashes_with_peer_sampling() {
    let mut sim = sampled(60, 4);
    sim.run_for(10 * INTERVAL);
    let groups: Vec<u32> = (0..60).map(|i| u32::from(i % 3 == 0)).collect();
    sim.partition(&groups);
    for i in 0..60 {
        sim.update(i, "n", &Op::Inc(1));
    }
    sim.crash(5);
    sim.crash(6);
    sim.run_for(30 * INTERVAL);
    sim.heal();
    sim.restart(5);
    sim.restart(6);
    assert!(
        sim.run_until_converged(600 * INTERVAL).is_some(),
        "{:?}",
        sim.divergence()
    );
    assert_eq!(sim.stats().protocol_errors, 0);
}

#[test]
fn a_replica_started_without_peers_fills_its_view_from_peers_learned_later() {
    let mut config = Config::new(ReplicaId::new(1));
    config.view = 2;
    let mut r = Replica::new(config);
    for id in 2..=5 {
        r.add_peer(PeerInfo {
            id: ReplicaId::new(id),
            addr: None,
        });
    }
    r.handle_timeout(10_000);
    let mut partners: Vec<ReplicaId> = std::iter::from_fn(|| r.poll_transmit())
        .filter(|t| matches!(Message::decode(&t.payload, 1 << 20), Ok(Message::Digest(_))))
        .map(|t| t.to)
        .collect();
    partners.sort_unstable();
    // Fanout 2 within a view of the first two peers learned.
    assert_eq!(partners, [ReplicaId::new(2), ReplicaId::new(3)]);
}
