//! The protocol's bandwidth and latency figures, measured in the deterministic simulator.
//!
//! ```text
//! cargo bench -p crdt-net --bench protocol
//! ```
//!
//! Prints one table per figure; `docs/benchmarks.md` records a run. Replicas use full 64-bit
//! ids (as real nodes do), so version vectors cost what they cost in deployment.

use crdt_core::{Crdt, ReplicaId};
use crdt_net::message::{Digest, Resume};
use crdt_net::sim::{written_by, Sim, SimConfig};
use crdt_net::store::MemStore;
use crdt_net::{Config, Durable, Message, Object, Op, Replica};

const INTERVAL: u64 = 100;

fn main() {
    idle_rounds();
    one_add_bandwidth();
    rounds_to_spread();
    fresh_join();
    peer_sampling();
    ring_balance();
    resume_ranges();
}

fn config(replicas: usize, seed: u64) -> SimConfig {
    SimConfig {
        replicas,
        wide_ids: true,
        gossip_interval: INTERVAL,
        ..SimConfig::new(seed)
    }
}

/// Bytes per idle exchange (a round's digest or summary and its answer) among 8 converged
/// replicas, as the number of writers their context names grows; and all bytes per replica
/// per round (peer exchange included).
fn idle_rounds() {
    println!("\n## Idle rounds (8 converged replicas, fanout 2, 50 rounds)\n");
    println!("| writers | context bytes | bytes per exchange | all bytes per replica per round |");
    println!("| ---: | ---: | ---: | ---: |");
    for writers in [1, 64, 1_000] {
        let state = written_by("hits", writers);
        let context = crdt_core::codec::encode(&state.seen).len() - 1;
        let mut sim = Sim::with_states(config(8, 1), |_| state.clone());
        sim.run_for(10 * INTERVAL);
        let before = sim.stats().clone();
        let rounds = 50;
        sim.run_for(rounds * INTERVAL);
        assert!(sim.converged());
        let exchange = (sim.stats().exchange_bytes - before.exchange_bytes) as f64;
        let all = (sim.stats().bytes - before.bytes) as f64;
        let exchanges = (rounds * 2 * sim.len() as u64) as f64;
        let replica_rounds = (rounds * sim.len() as u64) as f64;
        println!(
            "| {writers} | {context} | {:.1} | {:.1} |",
            exchange / exchanges,
            all / replica_rounds
        );
    }
}

/// A converged set of `n` elements written by replica `writer`, as every replica would persist it.
fn converged_set(n: usize, writer: ReplicaId) -> Durable {
    let mut config = Config::new(writer);
    config.eager_push = false;
    let mut replica = Replica::new(config);
    for i in 0..n {
        let _ = replica.update("set", &Op::Add(format!("element-{i:07}").into()));
    }
    replica.durable().clone()
}

/// Idle traffic per ms, measured over `rounds` rounds.
fn idle_rate(sim: &mut Sim, rounds: u64) -> f64 {
    let before = sim.stats().bytes;
    sim.run_for(rounds * INTERVAL);
    (sim.stats().bytes - before) as f64 / (rounds * INTERVAL) as f64
}

/// 8 converged replicas of an OR-Set; one adds an element. Bytes until all 8 have it, minus what
/// the same time costs idle.
fn one_add_bandwidth() {
    println!("\n## One add to a converged OR-Set, 8 replicas\n");
    println!("| elements | push | ms until all have it | bytes sent | idle bytes in that time | extra bytes per replica |");
    println!("| ---: | :---: | ---: | ---: | ---: | ---: |");
    for n in [1_000, 10_000, 100_000] {
        for eager_push in [true, false] {
            let base = config(8, 2);
            let state = converged_set(n, base.id(0));
            let mut sim = Sim::with_states(SimConfig { eager_push, ..base }, |_| state.clone());
            let rate = idle_rate(&mut sim, 20);
            let before = sim.stats().bytes;
            sim.update(3, "set", &Op::Add("one more".into()));
            let has_it = |s: &Sim| {
                (0..s.len()).all(|i| {
                    matches!(s.replica(i).and_then(|r| r.get("set")),
                        Some(Object::Set(set)) if set.contains("one more".as_bytes()))
                })
            };
            let took = sim.run_until(60_000, has_it).expect("the add spreads");
            let sent = (sim.stats().bytes - before) as f64;
            let idle = rate * took as f64;
            println!(
                "| {n} | {} | {took} | {sent:.0} | {idle:.0} | {:.0} |",
                if eager_push { "eager" } else { "rounds only" },
                (sent - idle) / 8.0
            );
        }
    }
}

/// With N = 64 and fanout 1, rounds until one update reaches every replica, over 1,000 seeds.
fn rounds_to_spread() {
    let seeds = std::env::var("ROUND_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000u64);
    println!("\n## Rounds for one update to reach all of N = 64 (fanout 1, no eager push, {seeds} seeds)\n");
    println!("| loss | p50 | p90 | p99 | max | goal | distribution (rounds: runs) |");
    println!("| ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for (loss, goal) in [(0.0, "p99 ≤ ⌈log2 64⌉ + 4 = 10"), (0.1, "p99 ≤ 12")] {
        let mut rounds: Vec<u64> = (0..seeds)
            .map(|seed| {
                let mut sim = Sim::new(SimConfig {
                    fanout: 1,
                    eager_push: false,
                    loss,
                    ..config(64, seed)
                });
                sim.run_for(3 * INTERVAL);
                sim.update(0, "x", &Op::Inc(1));
                let everyone =
                    |s: &Sim| (0..s.len()).all(|i| s.replica(i).and_then(|r| r.get("x")).is_some());
                let took = sim.run_until(600 * INTERVAL, everyone).expect("spreads");
                took.div_ceil(INTERVAL)
            })
            .collect();
        rounds.sort_unstable();
        let pct = |p: f64| rounds[((rounds.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        let mut histogram = std::collections::BTreeMap::new();
        for r in &rounds {
            *histogram.entry(*r).or_insert(0) += 1;
        }
        let dist: Vec<String> = histogram.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        println!(
            "| {:.0}% | {} | {} | {} | {} | {goal} | {} |",
            loss * 100.0,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            rounds.last().copied().unwrap_or(0),
            dist.join(", ")
        );
    }
}

/// A fresh replica joins 8 converged replicas holding 100k elements.
fn fresh_join() {
    println!("\n## A fresh replica joins 8 converged replicas of a 100k-element OR-Set\n");
    let base = config(9, 3);
    let state = converged_set(100_000, base.id(0));
    let Some(Object::Set(set)) = state.objects.get("set") else {
        unreachable!("converged_set makes a set")
    };
    let encoded = crdt_core::codec::encode(set).len() as f64;
    let mut idle = Sim::with_states(config(8, 3), |_| state.clone());
    let rate = idle_rate(&mut idle, 20);
    let mut sim = Sim::with_states(base, |i| {
        if i < 8 {
            state.clone()
        } else {
            Durable::default()
        }
    });
    let took = sim
        .run_until_converged(600_000)
        .expect("the newcomer catches up");
    let sent = sim.stats().bytes as f64;
    let net = sent - rate * took as f64;
    println!("| encoded state | bytes sent | of which idle | ratio (net) | largest message | ms to catch up |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {encoded:.0} | {sent:.0} | {:.0} | {:.3} | {} | {took} |",
        rate * took as f64,
        net / encoded,
        sim.stats().largest_message
    );
    let joined = sim.replica(8).and_then(|r| r.get("set")).cloned();
    assert_eq!(joined, Some(Object::Set(set.joined(set))));
}

/// The consistent-hash ring (128 virtual nodes) over 50 random sets of 5 node ids, 100,000
/// keys: how evenly keys spread (standard deviation over mean of keys per node, as primary and
/// as one of N = 3 replicas), and what share of replica slots a sixth node's join and one
/// node's leave move (ideal: 1/6 and 1/5).
fn ring_balance() {
    use crdt_net::ring::Ring;
    let sets = 50u64;
    let keys: Vec<String> = (0..100_000).map(|i| format!("feature:{i}")).collect();
    let lists = |ring: &Ring| -> Vec<Vec<ReplicaId>> {
        keys.iter()
            .map(|k| ring.preference_list(k.as_bytes(), 3))
            .collect()
    };
    let spread = |counts: &std::collections::BTreeMap<ReplicaId, f64>| {
        let n = counts.len() as f64;
        let mean = counts.values().sum::<f64>() / n;
        let var = counts.values().map(|c| (c - mean).powi(2)).sum::<f64>() / n;
        var.sqrt() / mean
    };
    let moved = |before: &[Vec<ReplicaId>], after: &[Vec<ReplicaId>]| {
        let slots: usize = before
            .iter()
            .zip(after)
            .map(|(b, a)| a.iter().filter(|n| !b.contains(n)).count())
            .sum();
        slots as f64 / (3 * keys.len()) as f64
    };
    let mut rows: [Vec<f64>; 4] = Default::default();
    for set in 0..sets {
        let mut rng = fastrand::Rng::with_seed(set);
        let ids: Vec<ReplicaId> = (0..6).map(|_| ReplicaId::new(rng.u64(1..))).collect();
        let mut ring = Ring::new();
        ids.iter().take(5).for_each(|id| {
            ring.add(*id);
        });
        let before = lists(&ring);
        let mut primary = std::collections::BTreeMap::new();
        let mut held = std::collections::BTreeMap::new();
        for list in &before {
            *primary.entry(list[0]).or_insert(0.0) += 1.0;
            for n in list {
                *held.entry(*n).or_insert(0.0) += 1.0;
            }
        }
        rows[0].push(spread(&primary));
        rows[1].push(spread(&held));
        ring.add(ids[5]);
        rows[2].push(moved(&before, &lists(&ring)));
        ring.remove(ids[5]);
        ring.remove(ids[0]);
        rows[3].push(moved(&before, &lists(&ring)));
    }
    println!("\n## Consistent-hash ring: 5 nodes x 128 virtual nodes, 100,000 keys, {sets} random id sets\n");
    println!("| figure | min | p50 | p90 | max | goal |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    let names = [
        ("keys per node as primary: std dev / mean", "≤ 0.10"),
        ("keys per node as one of N = 3: std dev / mean", "≤ 0.10"),
        ("slots moved by a join (1/6 = 0.167)", "0.125–0.208"),
        ("slots moved by a leave (1/5 = 0.200)", "0.150–0.250"),
    ];
    for (row, (name, goal)) in rows.iter_mut().zip(names) {
        row.sort_by(f64::total_cmp);
        let pct = |p: f64| row[((row.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {goal} |",
            row.first().copied().unwrap_or(0.0),
            pct(0.5),
            pct(0.9),
            row.last().copied().unwrap_or(0.0)
        );
    }
}

/// N = 100 and 1,000 replicas gossiping within partial views of 8 (fanout 2, no eager push):
/// rounds for one update to reach all, over many seeds, and bytes each replica sends per round
/// over the whole run (20 rounds before the update, its spread, 20 rounds after; peer
/// exchange every 10 rounds included); beside full membership (every replica knows every
/// other).
fn peer_sampling() {
    let seeds: u64 = std::env::var("SAMPLING_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    println!("\n## Peer sampling: one update among N replicas (fanout 2, no eager push, 1–5 ms delays)\n");
    println!("| N | view | seeds | p50 rounds | p99 rounds | max | goal: p99 ≤ 2·log2 N | bytes per replica per round |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, view, seeds) in [
        (100, 8, seeds),
        (1_000, 8, seeds),
        (100, 0, seeds.min(20)),
        (1_000, 0, seeds.min(5)),
    ] {
        let mut rounds = Vec::new();
        let (mut bytes, mut replica_rounds) = (0, 0);
        for seed in 0..seeds {
            let mut sim = Sim::new(SimConfig {
                fanout: 2,
                eager_push: false,
                view,
                ..config(n, seed)
            });
            sim.run_for(20 * INTERVAL);
            sim.update(0, "x", &Op::Inc(1));
            let everyone =
                |s: &Sim| (0..s.len()).all(|i| s.replica(i).and_then(|r| r.get("x")).is_some());
            let took = sim.run_until(600 * INTERVAL, everyone).expect("spreads");
            rounds.push(took.div_ceil(INTERVAL));
            sim.run_for(20 * INTERVAL);
            assert_eq!(sim.stats().protocol_errors, 0);
            bytes += sim.stats().bytes;
            replica_rounds += sim.stats().rounds;
        }
        rounds.sort_unstable();
        let pct = |p: f64| rounds[((rounds.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        let goal = 2.0 * (n as f64).log2();
        println!(
            "| {n} | {} | {seeds} | {} | {} | {} | {goal:.1} | {:.1} |",
            if view == 0 {
                "all".to_string()
            } else {
                view.to_string()
            },
            pct(0.5),
            pct(0.99),
            rounds.last().copied().unwrap_or(0),
            bytes as f64 / replica_rounds.max(1) as f64,
        );
    }
}

/// The owner's time for one hostile digest: 16,000 resume ranges (224 kB) against a replica of
/// 5,000 keys. The ranges were once looked up key by key (keys x ranges comparisons, seconds
/// per digest); now by binary search.
fn resume_ranges() {
    let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
    let mut replica = Replica::new(Config::new(a).with_peer(b));
    for i in 0..5000 {
        replica.update(&format!("key{i:05}"), &Op::Inc(1)).unwrap();
    }
    let mut store = MemStore::default();
    replica.persist(&mut store).unwrap();
    while replica.poll_transmit().is_some() {}
    let ranges: Vec<(String, String)> = (0..16_000)
        .map(|i| (format!("z{i:05}"), format!("z{i:05}")))
        .collect();
    let digest = Message::Digest(Digest {
        seen: Default::default(),
        reply: false,
        want: true,
        resume: Some(Resume {
            ranges,
            base: Default::default(),
        }),
    })
    .encode();
    let started = std::time::Instant::now();
    replica.handle_message(0, b, &digest).unwrap();
    replica.persist(&mut store).unwrap();
    let sent = std::iter::from_fn(|| replica.poll_transmit()).count();
    let took = started.elapsed();
    println!("\n## A digest with 16,000 resume ranges, 5,000 keys\n");
    println!(
        "{} bytes: {:.1} ms of the owner's time, {sent} messages sent",
        digest.len(),
        took.as_secs_f64() * 1e3
    );
}
