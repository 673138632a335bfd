//! State transfers: produced a chunk at a time as the peer takes them, and resumed where they
//! stopped when a partition cuts them off.

use crdt_core::{CausalContext, ReplicaId};
use crdt_net::message::Digest;
use crdt_net::sim::{Sim, SimConfig};
use crdt_net::store::MemStore;
use crdt_net::{Config, Durable, Message, Op, Replica, Transmit};

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

/// A cluster where the first replica holds `state` and the others nothing.
fn first_holds(config: SimConfig, state: &Durable) -> Sim {
    Sim::with_states(config, |i| {
        if i == 0 {
            state.clone()
        } else {
            Durable::default()
        }
    })
}

#[test]
fn an_interrupted_transfer_resumes() {
    let state = many_keys();
    let config = SimConfig {
        replicas: 2,
        max_message: 4096,
        max_log_bytes: 0, // no delta buffer: the newcomer needs a state transfer
        delay: (1, 400),  // chunks arrive spread over 400 ms, out of order
        gossip_interval: 1_000,
        eager_push: false,
        ..SimConfig::new(11)
    };
    let mut sim = first_holds(config, &state);
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

/// A replica with `keys` keys of about `value` bytes each, in a cluster with peer 2.
fn big_replica(keys: usize, value: usize) -> Replica {
    let mut config = Config::new(ReplicaId::new(1)).with_peer(ReplicaId::new(2));
    config.eager_push = false;
    config.max_log_bytes = 0; // no delta buffer: a peer that lacks anything gets state
    let mut replica = Replica::new(config);
    for k in 0..keys {
        let value = format!("{k:0value$}");
        replica
            .update(&format!("k{k:05}"), &Op::Add(value.into()))
            .unwrap();
    }
    replica.persist(&mut MemStore::default()).unwrap();
    while replica.poll_transmit().is_some() {}
    replica
}

fn want_everything() -> Vec<u8> {
    Message::Digest(Digest {
        seen: CausalContext::new(),
        reply: false,
        want: true,
        resume: None,
    })
    .encode()
}

/// The old replica built a whole state transfer into its outbox when a 10-byte digest asked
/// for it (here 8 MB for one request; the whole keyspace in general). Now the transfer is cut
/// a chunk at a time, as the peer's credit allows.
#[test]
fn a_transfer_is_produced_as_the_peer_takes_it() {
    let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
    let mut sender = big_replica(8_000, 1_000);
    sender.handle_message(0, b, &want_everything()).unwrap();
    // A driver meters the peers with a transfer under way, before it polls.
    assert_eq!(sender.transfers_pending().collect::<Vec<_>>(), vec![b]);
    sender.set_credit(b, 0);
    let state_messages = |t: &[Transmit]| {
        t.iter()
            .filter(|t| matches!(Message::decode(&t.payload, 1 << 20), Ok(Message::State(_))))
            .count()
    };
    let taken: Vec<Transmit> = std::iter::from_fn(|| sender.poll_transmit()).collect();
    assert_eq!(state_messages(&taken), 0, "no credit, no chunk");
    assert_eq!(sender.transfers_pending().collect::<Vec<_>>(), vec![b]);

    // A chunk starts while any credit is left, and charges its size.
    sender.set_credit(b, 1);
    let mut taken: Vec<Transmit> = std::iter::from_fn(|| sender.poll_transmit()).collect();
    assert_eq!(state_messages(&taken), 1);
    sender.set_credit(b, 2 << 20);
    taken.extend(std::iter::from_fn(|| sender.poll_transmit()));
    assert_eq!(
        state_messages(&taken),
        1 + 3,
        "chunks just under 1 MiB each"
    );

    // Asking again while it runs does not start it over.
    sender.handle_message(0, b, &want_everything()).unwrap();
    sender.set_credit(b, 0);
    assert_eq!(std::iter::from_fn(|| sender.poll_transmit()).count(), 0);

    // The rest, a window at a time, reaches a fresh replica whole.
    let mut receiver = Replica::new(Config::new(b).with_peer(a));
    let mut store = MemStore::default();
    let mut received = taken;
    let mut turns = 0;
    loop {
        for t in received.drain(..) {
            receiver.handle_message(0, a, &t.payload).unwrap();
        }
        if sender.transfers_pending().next().is_none() {
            break;
        }
        turns += 1;
        sender.set_credit(b, 2 << 20);
        received.extend(std::iter::from_fn(|| sender.poll_transmit()));
    }
    receiver.persist(&mut store).unwrap();
    assert!(turns >= 2, "{turns} turns: the transfer came in pieces");
    assert_eq!(receiver.objects(), sender.objects());
    assert!(receiver.seen().includes(sender.seen()));
}

/// On a slow link (a small window per delivery delay) a transfer takes longer but never
/// queues more than the window for its peer; before, the whole state was in flight at once.
#[test]
fn a_slow_link_holds_no_more_than_its_window() {
    let state = big_replica(2_000, 1_000).durable().clone();
    let config = SimConfig {
        replicas: 2,
        max_message: 16 << 10,
        max_log_bytes: 0,
        delay: (20, 40),
        send_window: 64 << 10,
        eager_push: false,
        ..SimConfig::new(5)
    };
    let mut sim = first_holds(config, &state);
    sim.run_until_converged(120_000)
        .expect("the transfer completes");
    let stats = sim.stats();
    println!(
        "2 MB over a 64 KiB window: peak {} bytes in flight on one link, {} messages",
        stats.peak_in_flight, stats.messages
    );
    assert_eq!(stats.protocol_errors, 0);
    // The window, one chunk started with credit left, and the small messages around them.
    assert!(
        stats.peak_in_flight <= (64 << 10) + (16 << 10) + (8 << 10),
        "{} bytes in flight",
        stats.peak_in_flight
    );
}

/// Each chunk says how far the sender's cursor has walked through its keys and how many it
/// had: a receiver can show a large catch-up's progress before its end, rising to the
/// sender's key count with the last chunk.
#[test]
fn a_large_catch_up_reports_walked_rising_to_the_senders_keys() {
    let b = ReplicaId::new(2);
    let keys = 3_000;
    let mut sender = big_replica(keys, 1_000);
    // Then a peer that has the first half already (the same writer's first updates): the
    // keys skipped are walked too.
    let digest = Message::Digest(Digest {
        seen: big_replica(keys / 2, 1_000).seen().clone(),
        reply: false,
        want: true,
        resume: None,
    })
    .encode();
    for (from_nothing, ask) in [(true, want_everything()), (false, digest)] {
        sender.handle_message(0, b, &ask).unwrap();
        let progress: Vec<(u64, u64, usize)> = std::iter::from_fn(|| sender.poll_transmit())
            .filter_map(|t| match Message::decode(&t.payload, 1 << 20) {
                Ok(Message::State(c)) => Some((c.walked, c.keys, c.objects.len())),
                _ => None,
            })
            .collect();
        assert!(
            progress.len() >= 2,
            "{progress:?}: a transfer of several chunks"
        );
        assert!(
            progress.iter().all(|(_, k, _)| *k == keys as u64),
            "{progress:?}: keys is the sender's key count"
        );
        assert!(
            progress.windows(2).all(|w| w[0].0 < w[1].0),
            "{progress:?}: walked rises"
        );
        assert_eq!(progress.last().map(|p| p.0), Some(keys as u64));
        let sent: usize = progress.iter().map(|p| p.2).sum();
        if from_nothing {
            assert_eq!(sent, keys);
        } else {
            // Only the second half is sent, but the first chunk has walked past the first.
            assert_eq!(sent, keys - keys / 2);
            assert!(progress[0].0 > (keys / 2) as u64, "{progress:?}");
        }
    }
}
