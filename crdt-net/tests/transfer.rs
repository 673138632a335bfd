//! A state transfer cut off by a partition resumes where it stopped instead of starting over.

use crdt_net::sim::{Sim, SimConfig};
use crdt_net::{Config, Durable, Op, Replica};

const KEYS: usize = 2_000;

fn many_keys() -> Durable {
    let mut config = Config::new(crdt_core::ReplicaId::new(1));
    config.eager_push = false;
    let mut replica = Replica::new(config);
    for k in 0..KEYS {
        replica.update(&format!("k{k:05}"), &Op::Inc(1)).unwrap();
    }
    replica.durable().clone()
}

#[test]
fn an_interrupted_transfer_resumes() {
    let state = many_keys();
    let config = SimConfig {
        replicas: 2,
        max_message: 4096,
        max_log_bytes: 0, // no delta buffer: the newcomer needs a state transfer
        delay: (1, 400),  // chunks arrive spread over 400 ms, out of order
        round_interval: 1_000,
        eager_push: false,
        ..SimConfig::new(11)
    };
    let mut sim = Sim::with_states(config, |i| {
        if i == 0 {
            state.clone()
        } else {
            Durable::default()
        }
    });
    let received = |s: &Sim| s.replica(1).map_or(0, |r| r.objects().len());
    sim.run_until(10_000, |s| received(s) >= KEYS * 3 / 4)
        .expect("the transfer starts");
    sim.partition(&[0, 1]);
    sim.run_for(3_000);
    let before_heal = received(&sim);
    assert!(before_heal < KEYS, "the partition cut the transfer short");
    sim.heal();
    sim.run_until_converged(30_000)
        .expect("converges after the heal");

    assert_eq!(sim.stats().protocol_errors, 0);
    assert!(sim.stats().largest_message <= 4096);
    let sent = sim.replica(0).unwrap().stats().state_entries_sent as usize;
    println!("{before_heal} of {KEYS} keys before the cut; {sent} objects sent in all");
    // Starting over would send every key twice; resuming sends the first transfer plus what was
    // lost in flight (give or take the keys of one chunk, about 270 here).
    let lost = KEYS - before_heal;
    assert!(
        sent <= KEYS + lost + 300,
        "{sent} objects sent for {lost} lost: the transfer started over"
    );
}
