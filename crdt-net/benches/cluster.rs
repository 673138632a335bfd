//! Partial replication's traffic, measured in the deterministic cluster simulator
//! (`crdt_net::sim::cluster`).
//!
//! ```text
//! cargo bench -p crdt-net --bench cluster
//! ```
//!
//! Prints one table per figure; `docs/benchmarks.md` records a run.

use std::time::Instant;

use crdt_net::sim::cluster::{ClusterSim, ClusterSimConfig, Outcome};
use crdt_net::Op;

const INTERVAL: u64 = 100;

fn main() {
    idle_cost();
    join_moves();
    scale();
}

fn config(nodes: usize, bits: u32, seed: u64) -> ClusterSimConfig {
    ClusterSimConfig {
        nodes,
        partition_bits: bits,
        gossip_interval: INTERVAL,
        ..ClusterSimConfig::new(seed)
    }
}

/// Runs until every node knows `nodes` members; the virtual ms it took.
fn settle(sim: &mut ClusterSim, nodes: usize, limit: u64) -> Option<u64> {
    sim.run_until(limit, |s| {
        (0..s.len()).all(|i| s.cluster(i).is_some_and(|c| c.members().count() == nodes))
    })
}

/// Idle traffic between converged nodes, as the number of keys written grows: bytes and
/// messages per node per round (cluster summaries, the partitions' own rounds every eighth
/// round, the system partition's rounds).
fn idle_cost() {
    println!("\n## Idle traffic (5 nodes, N = 3, 64 partitions, fanout 2)\n");
    println!("| keys written (by the 5 nodes) | bytes per node per round | messages per node per round | bytes per message |");
    println!("| ---: | ---: | ---: | ---: |");
    for writes in [1usize, 64, 1_000] {
        let mut sim = ClusterSim::new(config(5, 6, 1));
        settle(&mut sim, 5, 30_000).expect("members converge");
        for i in 0..writes {
            let at = i % 5;
            let id = sim
                .write(at, &format!("k{i}"), &Op::Inc(1), 1)
                .expect("accepted");
            sim.run_until(5_000, |s| s.outcome(at, id).is_some());
            assert!(matches!(sim.outcome(at, id), Some(Outcome::Written(Ok(_)))));
        }
        sim.run_for(50 * INTERVAL);
        let before = sim.stats().clone();
        let rounds = 50;
        sim.run_for(rounds * INTERVAL);
        let bytes = (sim.stats().bytes - before.bytes) as f64;
        let messages = (sim.stats().messages - before.messages) as f64;
        let node_rounds = (rounds * 5) as f64;
        println!(
            "| {writes} | {:.0} | {:.1} | {:.1} |",
            bytes / node_rounds,
            messages / node_rounds,
            bytes / messages
        );
    }
}

/// A sixth node joins five: how many partitions change owners, and how long until the
/// newcomer holds what it owns and the old owners dropped what they no longer own.
fn join_moves() {
    println!("\n## A join (5 → 6 nodes, N = 3, 64 partitions, one key per partition written)\n");
    let mut sim = ClusterSim::new(config(5, 6, 2));
    settle(&mut sim, 5, 30_000).expect("members converge");
    let keys: Vec<String> = (0..2_000).map(|i| format!("user:{i}")).collect();
    for (i, key) in keys.iter().enumerate().step_by(10) {
        let _ = sim.write(i % 5, key, &Op::Inc(1), 1);
    }
    sim.run_for(2_000);
    let view = |sim: &ClusterSim| {
        let c = sim.cluster(0).expect("up");
        (0..64u32).map(|p| c.owners(p).to_vec()).collect::<Vec<_>>()
    };
    let before = view(&sim);
    let bytes_before = sim.stats().bytes;
    let newcomer = sim.join().expect("room");
    settle(&mut sim, 6, 30_000).expect("members converge");
    let after = view(&sim);
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let new_id = sim.id(newcomer).expect("node");
    let gained = after.iter().filter(|o| o.contains(&new_id)).count();
    let settled = sim.run_until(60_000, |s| {
        (0..s.len()).all(|i| {
            let Some(c) = s.cluster(i) else { return false };
            let id = s.id(i).expect("node");
            c.hosted().all(|(p, _)| c.owners(p).contains(&id))
                && (0..64u32)
                    .filter(|&p| c.owners(p).contains(&id))
                    .all(|p| c.hosted().any(|(q, _)| q == p))
        })
    });
    println!("| partitions whose owners changed | owned by the newcomer | expected (N·Q/n) | virtual ms until every node holds exactly what it owns | bytes sent meanwhile |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {changed} of 64 | {gained} | {:.1} | {} | {} |",
        3.0 * 64.0 / 6.0,
        settled.map_or("not within 60 s".into(), |t| t.to_string()),
        sim.stats().bytes - bytes_before
    );
}

/// 100 and 1,000 nodes, partial replication (N = 3) with a partial view of 8 in the system
/// partition: rounds until every node knows every member, rounds until a write is at its 3
/// replicas, and the traffic per node per round once idle.
fn scale() {
    println!("\n## Scale (N = 3, seeds 3 per node, system view 8)\n");
    println!("| nodes | partitions | rounds until all know all members | rounds until a W = 1 write is at its 3 replicas | idle bytes per node per round | wall time of the run |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (nodes, bits) in [(100usize, 8u32), (1_000, 10)] {
        let wall = Instant::now();
        let mut sim = ClusterSim::new(ClusterSimConfig {
            seeds: 3,
            view: 8,
            ..config(nodes, bits, 3)
        });
        let members = settle(&mut sim, nodes, 600_000);
        let key = "feature:1";
        let id = sim.write(0, key, &Op::Inc(1), 1).expect("accepted");
        let start = sim.now();
        let spread = sim.run_until(60_000, |s| {
            let Some(c) = s.cluster(0) else { return false };
            let owners = c.owners(c.partition_of(key)).to_vec();
            owners.iter().all(|o| {
                s.index_of(*o)
                    .and_then(|i| s.cluster(i))
                    .is_some_and(|c| c.get(key).is_some())
            })
        });
        let _ = (id, start);
        // Idle once the partitions held under the rings seen before the member set converged
        // have been handed over (hand-offs wait for the partitions' own rounds).
        sim.run_for(150 * INTERVAL);
        let before = sim.stats().clone();
        let rounds = 20;
        sim.run_for(rounds * INTERVAL);
        let idle = (sim.stats().bytes - before.bytes) as f64 / (rounds as f64 * nodes as f64);
        let show = |t: Option<u64>| {
            t.map_or("no".to_string(), |t| {
                format!("{:.1}", t as f64 / INTERVAL as f64)
            })
        };
        println!(
            "| {nodes} | {} | {} | {} | {idle:.0} | {:.0} s |",
            1u32 << bits,
            show(members),
            show(spread),
            wall.elapsed().as_secs_f64()
        );
    }
}
