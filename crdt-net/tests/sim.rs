//! Seeded fault schedules in the deterministic simulator (see `crdt_net::sim::chaos`).
//!
//! `SIM_SEEDS=N` runs N seeds instead of 1,000; `SIM_SEED=S` replays one.

use crdt_net::sim::chaos;

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
