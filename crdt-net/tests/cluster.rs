//! Partial replication in the deterministic simulator: keys live on their `N` replicas, writes
//! from any node reach them, a write made while a replica is down is held by a fallback and
//! handed over on its return, and the acknowledgement and read levels hold per key.

mod support;

use crdt_core::ReplicaId;
use crdt_net::cluster::{ClusterMessage, RequestError};
use crdt_net::sim::cluster::{cluster_chaos, ClusterSim, ClusterSimConfig, Outcome};
use crdt_net::{Object, Op};

/// A cluster of `nodes` nodes whose member set has converged.
fn settled(nodes: usize, seed: u64) -> ClusterSim {
    let mut sim = ClusterSim::new(ClusterSimConfig {
        nodes,
        ..ClusterSimConfig::new(seed)
    });
    let converged = sim.run_until(30_000, |s| {
        (0..s.len()).all(|i| s.cluster(i).is_some_and(|c| c.members().count() == nodes))
    });
    assert!(
        converged.is_some(),
        "seed {seed}: member set did not converge"
    );
    sim
}

/// Runs until request `id` at node `at` has an outcome, and returns it.
fn finish(sim: &mut ClusterSim, at: usize, id: u64) -> Outcome {
    sim.run_until(10_000, |s| s.outcome(at, id).is_some());
    sim.outcome(at, id)
        .cloned()
        .unwrap_or_else(|| panic!("request {id} at node {at} never finished"))
}

/// The indices of the nodes that own `key`'s partition, as node `view` sees the ring.
fn owners(sim: &ClusterSim, view: usize, key: &str) -> Vec<usize> {
    let cluster = sim.cluster(view).expect("node up");
    let p = cluster.partition_of(key);
    cluster
        .owners(p)
        .iter()
        .filter_map(|id| sim.index_of(*id))
        .collect()
}

fn shown(sim: &ClusterSim, node: usize, key: &str) -> Option<String> {
    sim.cluster(node)?.get(key).map(Object::to_string)
}

#[test]
fn each_key_ends_on_exactly_its_three_replicas() {
    let mut sim = settled(5, 11);
    let keys: Vec<String> = (0..60).map(|i| format!("user:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let at = i % 5;
        let id = sim.write(at, key, &Op::Inc(1), 1).expect("accepted");
        assert!(matches!(finish(&mut sim, at, id), Outcome::Written(Ok(_))));
    }
    sim.run_for(5_000);
    for key in &keys {
        let holders = owners(&sim, 0, key);
        assert_eq!(holders.len(), 3);
        for node in 0..5 {
            let held = shown(&sim, node, key);
            if holders.contains(&node) {
                assert_eq!(held.as_deref(), Some("1"), "{key} missing at owner {node}");
            } else {
                assert_eq!(held, None, "{key} still at non-owner {node}");
            }
        }
    }
    // A node holds only the partitions it owns: the forwarded writes left nothing behind.
    for node in 0..5 {
        let cluster = sim.cluster(node).expect("up");
        for (p, _) in cluster.hosted() {
            let id = sim.id(node).expect("node");
            assert!(
                cluster.owners(p).contains(&id),
                "node {node} hosts partition {p}"
            );
        }
    }
    assert_eq!(sim.stats().protocol_errors, 0);
}

#[test]
fn a_write_made_while_a_replica_is_down_reaches_it_after_restart() {
    let mut sim = settled(5, 12);
    let key = "feature:7";
    let replicas = owners(&sim, 0, key);
    let (down, writer) = (
        replicas[0],
        (0..5).find(|n| !replicas.contains(n)).expect("one"),
    );
    sim.crash(down);
    // Long enough for the others to mark it down: the write's targets take a fallback.
    sim.run_for(1_000);
    let id = sim.write(writer, key, &Op::Inc(5), 3).expect("accepted");
    assert_eq!(finish(&mut sim, writer, id), Outcome::Written(Ok(3)));
    let p = sim.cluster(writer).expect("up").partition_of(key);
    let fallbacks: Vec<usize> = (0..5)
        .filter(|n| !replicas.contains(n) && shown(&sim, *n, key).is_some())
        .collect();
    assert_eq!(
        fallbacks.len(),
        1,
        "one fallback holds the write for the node down"
    );
    // The other owners go down too: the returning replica can get the write only from the
    // fallback, which must not drop it before every owner holds it.
    let others: Vec<usize> = replicas.iter().copied().filter(|&n| n != down).collect();
    for &n in &others {
        sim.crash(n);
    }
    sim.restart(down);
    let reached = sim.run_until(20_000, |s| shown(s, down, key).as_deref() == Some("5"));
    assert!(
        reached.is_some(),
        "the fallback handed the write to the returning replica"
    );
    sim.run_for(2_000);
    for &f in &fallbacks {
        let cluster = sim.cluster(f).expect("up");
        assert!(
            cluster.hosted().any(|(q, _)| q == p),
            "the fallback keeps its copy while two owners are down"
        );
    }
    for &n in &others {
        sim.restart(n);
    }
    let dropped = sim.run_until(20_000, |s| {
        others
            .iter()
            .all(|&n| shown(s, n, key).as_deref() == Some("5"))
            && fallbacks.iter().all(|&f| {
                s.cluster(f)
                    .is_some_and(|c| c.hosted().all(|(q, _)| q != p))
            })
    });
    assert!(
        dropped.is_some(),
        "every owner holds the write and the fallback dropped its copy"
    );
}

#[test]
fn w2_r2_reads_see_every_acknowledged_write_and_r1_may_not() {
    let mut sim = settled(5, 13);
    let key = "vector:1";
    let replicas = owners(&sim, 0, key);
    let (writer, reader) = (replicas[0], replicas[1]);
    let mut stale = 0;
    for round in 1..=20u64 {
        let stamp = crdt_core::HlcTimestamp::new(round * 1_000, 0);
        let value = round.to_be_bytes().to_vec();
        let id = sim
            .write(writer, key, &Op::Lww(stamp, value.clone()), 1)
            .expect("accepted");
        assert!(matches!(
            finish(&mut sim, writer, id),
            Outcome::Written(Ok(_))
        ));
        let read = sim.read(reader, key, 1).expect("accepted");
        let Outcome::Read(Ok(object)) = finish(&mut sim, reader, read) else {
            panic!("read failed");
        };
        if !matches!(&object, Some(Object::Lww(r)) if r.get() == Some(&value)) {
            stale += 1;
        }
    }
    eprintln!("W = 1, R = 1: {stale} of 20 reads stale");
    assert!(
        stale > 0,
        "W = 1, R = 1 at another replica right after the write: some read is stale"
    );
    for round in 21..=40u64 {
        let stamp = crdt_core::HlcTimestamp::new(round * 1_000, 0);
        let value = round.to_be_bytes().to_vec();
        let id = sim
            .write(writer, key, &Op::Lww(stamp, value.clone()), 2)
            .expect("accepted");
        assert!(matches!(finish(&mut sim, writer, id), Outcome::Written(Ok(n)) if n >= 2));
        // Read at the third replica, or from a node that is none: R = 2 overlaps W = 2.
        let at = if round % 2 == 0 {
            replicas[2]
        } else {
            (0..5).find(|n| !replicas.contains(n)).expect("one")
        };
        let read = sim.read(at, key, 2).expect("accepted");
        let Outcome::Read(Ok(Some(Object::Lww(register)))) = finish(&mut sim, at, read) else {
            panic!("read failed");
        };
        assert_eq!(
            register.get(),
            Some(&value),
            "round {round}: R = 2 missed the W = 2 write"
        );
    }
}

#[test]
fn levels_outside_one_to_n_are_refused() {
    let mut sim = settled(3, 14);
    assert_eq!(sim.write(0, "k", &Op::Inc(1), 0), None);
    assert_eq!(sim.write(0, "k", &Op::Inc(1), 4), None);
    assert_eq!(sim.read(0, "k", 0), None);
    let id = sim.write(0, "k", &Op::Inc(1), 3).expect("accepted");
    assert_eq!(finish(&mut sim, 0, id), Outcome::Written(Ok(3)));
}

/// `CLUSTER_SEEDS=N` runs N seeded schedules instead of 60; `CLUSTER_SEED=S` replays one.
#[test]
fn no_acknowledged_write_is_lost_through_crashes_joins_and_leaves() {
    if let Some(seed) = std::env::var("CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let report = cluster_chaos(seed).unwrap_or_else(|e| panic!("{e}"));
        println!("{report:?}");
        return;
    }
    let seeds: u64 = std::env::var("CLUSTER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let (mut acknowledged, mut slowest) = (0, 0);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        match cluster_chaos(seed) {
            Ok(report) => {
                acknowledged += report.acknowledged;
                slowest = slowest.max(report.settled_after);
            }
            Err(e) => failures.push(e),
        }
    }
    println!(
        "{seeds} schedules, {acknowledged} acknowledged writes, slowest {slowest} ms after heal"
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} schedules failed; first: {}",
        failures.len(),
        failures[0]
    );
}

/// A fallback that wrote, handed over and dropped a partition, then takes it up again while
/// an owner is down once more: its new writes must not reuse the dots of its earlier ones
/// (which would make the two writes cancel out), so it forwards them until it holds its old
/// writes again.
#[test]
fn a_partition_taken_up_again_never_reuses_its_dots() {
    let mut sim = settled(5, 15);
    let key = "cart:9";
    let replicas = owners(&sim, 0, key);
    let down = replicas[0];
    let mut written = Vec::new();
    for round in 0..3u8 {
        sim.crash(down);
        let p = sim.cluster(replicas[1]).expect("up").partition_of(key);
        let down_id = sim.id(down).expect("node");
        let seen_down = |s: &ClusterSim, n: usize| {
            s.cluster(n)
                .is_some_and(|c| !c.targets(p).contains(&down_id))
        };
        let noticed = sim.run_until(10_000, |s| (0..5).any(|n| n != down && seen_down(s, n)));
        assert!(noticed.is_some(), "round {round}: a node noticed the crash");
        let witness = (0..5)
            .find(|&n| n != down && seen_down(&sim, n))
            .expect("one");
        let fallback = sim
            .cluster(witness)
            .expect("up")
            .targets(p)
            .into_iter()
            .filter_map(|id| sim.index_of(id))
            .find(|n| !replicas.contains(n))
            .expect("a fallback stands in");
        // The write is made at the fallback as soon as it takes the dead owner's place, before
        // gossip brings it the partition.
        let ready = sim.run_until(10_000, |s| seen_down(s, fallback));
        assert!(
            ready.is_some(),
            "round {round}: the fallback noticed the crash"
        );
        // The write is made at the fallback: it applies it itself when it may.
        let element = vec![b'e', round];
        let id = sim
            .write(fallback, key, &Op::Add(element.clone()), 1)
            .expect("accepted");
        let outcome = finish(&mut sim, fallback, id);
        assert!(
            matches!(outcome, Outcome::Written(Ok(_))),
            "round {round}: {outcome:?}"
        );
        written.push(element);
        sim.restart(down);
        let dropped = sim.run_until(20_000, |s| {
            s.cluster(fallback)
                .is_some_and(|c| c.hosted().all(|(q, _)| q != p))
        });
        assert!(
            dropped.is_some(),
            "round {round}: the fallback handed the partition over"
        );
    }
    sim.run_for(3_000);
    for &owner in &replicas {
        let Some(Object::Set(set)) = sim.cluster(owner).and_then(|c| c.get(key)) else {
            panic!("owner {owner} lacks {key}");
        };
        for element in &written {
            assert!(
                set.contains(element),
                "owner {owner} lost {element:?}: {set:?}"
            );
        }
    }
}

fn golden_cluster_messages() -> Vec<(&'static str, ClusterMessage)> {
    let inner = crdt_net::Message::InSync.encode();
    let mut counter = Object::Empty;
    let _ = counter.apply(ReplicaId::new(1), &Op::Inc(3));
    vec![
        ("system", ClusterMessage::System(inner.clone())),
        (
            "partition",
            ClusterMessage::Partition {
                partition: 5,
                message: inner,
            },
        ),
        (
            "forward",
            ClusterMessage::Forward {
                id: 7,
                key: "n".into(),
                op: Op::Update(b"f".to_vec(), Box::new(Op::Inc(2))),
                level: 2,
            },
        ),
        (
            "written",
            ClusterMessage::Written {
                id: 7,
                outcome: Ok(2),
            },
        ),
        (
            "written-timeout",
            ClusterMessage::Written {
                id: 7,
                outcome: Err(RequestError::Timeout { held: 1 }),
            },
        ),
        (
            "get",
            ClusterMessage::Get {
                id: 8,
                key: "n".into(),
                level: 2,
            },
        ),
        (
            "got",
            ClusterMessage::Got {
                id: 8,
                outcome: Ok(Some(counter)),
            },
        ),
        ("summary", ClusterMessage::Summary([0xab; 16])),
    ]
}

#[test]
fn cluster_message_golden_vectors_match_the_document_both_ways() {
    support::golden_vectors_match(
        include_str!("../../docs/wire-format.md"),
        "cluster",
        golden_cluster_messages(),
        ClusterMessage::encode,
        |bytes| ClusterMessage::decode(bytes, 1 << 20),
    );
}

#[test]
#[ignore = "prints the cluster message vectors for docs/wire-format.md"]
fn print_cluster_message_vectors() {
    for (name, message) in golden_cluster_messages() {
        let hex: Vec<String> = message
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        println!("```cluster {name}\n{}\n```", hex.join(" "));
    }
}
