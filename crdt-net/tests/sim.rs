//! Seeded fault schedules in the deterministic simulator (see `crdt_net::sim::chaos`).
//!
//! `SIM_SEEDS=N` runs N seeds instead of 1,000 (and N / 4 with peer sampling instead of 250);
//! `SIM_SEED=S` replays one of each.

use crdt_net::sim::{chaos, chaos_in_views};

#[test]
fn every_schedule_converges_to_the_join_of_all_updates() {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let report = chaos(seed).unwrap_or_else(|e| panic!("{e}"));
        println!("{report:?}");
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let mut failures = Vec::new();
    let (mut updates, mut slowest) = (0, 0);
    for seed in 0..seeds {
        match chaos(seed) {
            Ok(report) => {
                updates += report.updates;
                slowest = slowest.max(report.converged_after);
            }
            Err(e) => failures.push(e),
        }
    }
    println!("{seeds} schedules, {updates} updates, slowest convergence {slowest} ms after heal");
    assert!(
        failures.is_empty(),
        "{} of {seeds} schedules failed; first: {}",
        failures.len(),
        failures[0]
    );
}

/// The same schedules with peer sampling: each replica gossips within a partial view of 3
/// peers (of 4 to 15), refreshed by peer exchange, through the same partitions, crashes and
/// restarts.
#[test]
fn every_schedule_converges_with_peer_sampling_too() {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let report = chaos_in_views(seed, 3).unwrap_or_else(|e| panic!("{e}"));
        println!("{report:?}");
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(250, |n: u64| n / 4);
    let failures: Vec<String> = (0..seeds)
        .filter_map(|seed| chaos_in_views(seed, 3).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} schedules failed; first: {}",
        failures.len(),
        failures[0]
    );
}

/// The dot-reuse scenario: a replica killed after an update but before its commit restarts
/// with the counter it had committed. Had the update left before the commit, its peers would
/// hold the lost update's dot and take the next update (which reuses that dot) for one they
/// already have: permanent divergence. Nothing leaves before its commit, so the lost update is
/// lost everywhere and the next one reaches everyone.
#[test]
fn an_update_lost_in_a_crash_never_shadows_the_next_one() {
    use crdt_net::sim::{Sim, SimConfig};
    use crdt_net::Op;

    let mut sim = Sim::new(SimConfig {
        commit_latency: 50,
        ..SimConfig::new(11)
    });
    sim.run_for(500);
    assert!(sim.update(0, "visits", &Op::Inc(5)));
    sim.run_for(20); // the commit is 50 ms away
    assert!(!sim.is_acknowledged(0));
    sim.crash(0);
    sim.restart(0);
    assert!(sim.update(0, "visits", &Op::Inc(3)));
    assert!(
        sim.run_until_converged(10_000).is_some(),
        "{:?}",
        sim.divergence()
    );
    for i in 0..3 {
        let value = sim
            .replica(i)
            .and_then(|r| r.get("visits"))
            .map(|o| o.to_string());
        assert_eq!(value.as_deref(), Some("3"), "replica {i}");
    }
    assert_eq!(sim.stats().lost_unacknowledged, 1);
}
