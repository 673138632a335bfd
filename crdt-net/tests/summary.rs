//! Constant-size idle rounds: a round's digest is a fingerprint of the sender's context when
//! the peer is known to have everything; the full context follows only on a mismatch. What a
//! summary costs, that a mismatch still converges, and what a forged summary can claim.

use crdt_core::ReplicaId;
use crdt_net::message::{fingerprint, Digest};
use crdt_net::sim::{written_by, Sim, SimConfig};
use crdt_net::store::MemStore;
use crdt_net::{Config, Message, Op, Replica};

// Full 64-bit ids, as nodes have: a context of two writers is then larger than a fingerprint.
const A: ReplicaId = ReplicaId::new(0xA000_0000_0000_0001);
const B: ReplicaId = ReplicaId::new(0xB000_0000_0000_0002);
const C: ReplicaId = ReplicaId::new(0xC000_0000_0000_0003);
const INTERVAL: u64 = 100;

/// Bytes per idle exchange (a digest or summary and its answer) among 4 converged replicas
/// (fanout 2), after a warm-up.
fn idle_exchange_bytes(writers: usize) -> f64 {
    let state = written_by("hits", writers);
    let config = SimConfig {
        replicas: 4,
        wide_ids: true,
        gossip_interval: INTERVAL,
        ..SimConfig::new(5)
    };
    let mut sim = Sim::with_states(config, |_| state.clone());
    sim.run_for(10 * INTERVAL);
    let before = sim.stats().exchange_bytes;
    let rounds = 20;
    sim.run_for(rounds * INTERVAL);
    assert!(sim.converged());
    assert_eq!(sim.stats().protocol_errors, 0);
    let exchanges = rounds * 2 * sim.len() as u64;
    (sim.stats().exchange_bytes - before) as f64 / exchanges as f64
}

#[test]
fn an_idle_exchange_costs_at_most_32_bytes_whatever_the_number_of_writers() {
    for writers in [1, 64, 1000] {
        let bytes = idle_exchange_bytes(writers);
        assert!(
            bytes <= 32.0,
            "{writers} writers: {bytes:.1} bytes per idle exchange"
        );
    }
}

/// Replicas and their stores, driven by hand: messages go to whichever replica they name.
struct Cluster {
    nodes: Vec<(Replica, MemStore)>,
    /// Every message delivered: (from, to, kind), kind being the variant index.
    log: Vec<(ReplicaId, ReplicaId, u8)>,
}

impl Cluster {
    fn new(ids: &[ReplicaId]) -> Self {
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut config = Config::new(id);
                config.peers = ids
                    .iter()
                    .filter(|&&p| p != id)
                    .map(|&p| crdt_net::PeerInfo { id: p, addr: None })
                    .collect();
                (Replica::new(config), MemStore::default())
            })
            .collect();
        Cluster {
            nodes,
            log: Vec::new(),
        }
    }

    fn get(&mut self, id: ReplicaId) -> &mut Replica {
        &mut self.nodes.iter_mut().find(|(r, _)| r.id() == id).unwrap().0
    }

    /// Delivers every message until none is left (bounded).
    fn drain(&mut self, now: u64) {
        for _ in 0..1000 {
            let mut sent = Vec::new();
            for (r, store) in &mut self.nodes {
                r.persist(store).unwrap();
                while let Some(t) = r.poll_transmit() {
                    sent.push((r.id(), t));
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, t) in sent {
                self.log.push((from, t.to, t.payload[1]));
                if let Some((r, _)) = self.nodes.iter_mut().find(|(r, _)| r.id() == t.to) {
                    r.handle_message(now, from, &t.payload).unwrap();
                }
            }
        }
        panic!("messages kept coming");
    }

    /// Three rounds of every replica (at 10 s, 20 s, 30 s, one second apart), so each knows
    /// what the others have.
    fn settle(&mut self) {
        let ids: Vec<ReplicaId> = self.nodes.iter().map(|(r, _)| r.id()).collect();
        for round in 1..=3 {
            for (i, id) in ids.iter().enumerate() {
                self.round(*id, round * 10_000 + i as u64 * 1_000);
            }
        }
    }

    /// One round of `id` at `now`, and everything it sets off.
    fn round(&mut self, id: ReplicaId, now: u64) {
        self.log.clear();
        self.get(id).handle_timeout(now);
        self.drain(now);
    }
}

/// A and B, each having written once, every message delivered.
fn two_writers() -> Cluster {
    let mut c = Cluster::new(&[A, B]);
    c.get(A).update("n", &Op::Inc(3)).unwrap();
    c.get(B).update("b", &Op::Inc(1)).unwrap();
    c.drain(0);
    c
}

const SUMMARY: u8 = 9;
const MISMATCH: u8 = 10;
const DIGEST: u8 = 0;
const IN_SYNC: u8 = 1;

#[test]
fn converged_replicas_exchange_summaries_and_a_difference_still_converges() {
    let mut c = Cluster::new(&[A, B]);
    for i in 0..20 {
        c.get(A).update(&format!("k{i}"), &Op::Inc(1)).unwrap();
    }
    c.get(B).update("b", &Op::Inc(1)).unwrap();
    c.drain(0);
    // Rounds until each side knows the other has everything.
    c.settle();
    c.round(A, 40_000);
    assert_eq!(c.log, [(A, B, SUMMARY), (B, A, IN_SYNC)]);

    // B learns something A lacks, by a path A does not see (no push).
    let mut config = Config::new(C).with_peer(B);
    config.eager_push = false;
    let mut other = Replica::new(config);
    other.update("from-c", &Op::Inc(5)).unwrap();
    let mut disk = MemStore::default();
    other.persist(&mut disk).unwrap();
    other.handle_timeout(0);
    while let Some(t) = other.poll_transmit() {
        if t.to == B {
            let digest = Message::decode(&t.payload, 1 << 20).unwrap();
            assert!(matches!(digest, Message::Digest(_)));
        }
    }
    let delta = crdt_net::message::DeltaEntry {
        dot: other.last_local_dot().unwrap(),
        key: "from-c".into(),
        delta: other.get("from-c").unwrap().clone(),
    };
    c.get(B)
        .handle_message(41_000, C, &Message::Deltas(vec![delta]).encode())
        .unwrap();
    c.drain(41_000);

    // A still believes B has exactly what A has: a summary, a mismatch, then the full digest
    // with `want`, and B sends what A lacks.
    c.round(A, 50_000);
    let kinds: Vec<(ReplicaId, u8)> = c.log.iter().map(|(f, _, k)| (*f, *k)).collect();
    assert_eq!(&kinds[..3], &[(A, SUMMARY), (B, MISMATCH), (A, DIGEST)]);
    assert_eq!(
        c.get(A).get("from-c").map(|o| o.to_string()),
        Some("5".into())
    );
}

#[test]
fn a_peer_that_lost_its_state_is_caught_up_though_known_to_have_everything() {
    // B writes nothing: a wiped replica that had issued dots would reuse them, which peers
    // refuse (a different failure, outside this test).
    let mut c = Cluster::new(&[A, B, C]);
    c.get(A).update("n", &Op::Inc(3)).unwrap();
    c.get(C).update("c", &Op::Inc(1)).unwrap();
    c.drain(0);
    c.settle();
    c.round(A, 40_000);
    assert!(c.log.contains(&(A, B, SUMMARY)), "{:?}", c.log);
    // B comes back empty under the same id (a wiped disk).
    let mut config = Config::new(B).with_peer(A);
    config.seed = 99;
    c.nodes[1] = (Replica::new(config), MemStore::default());
    c.round(A, 50_000);
    assert!(c.log.contains(&(B, A, MISMATCH)), "{:?}", c.log);
    assert_eq!(c.get(B).get("n").map(|o| o.to_string()), Some("3".into()));
    assert_eq!(c.get(B).get("c").map(|o| o.to_string()), Some("1".into()));
}

/// Every message `r` sends now, decoded.
fn sent(r: &mut Replica) -> Vec<Message> {
    std::iter::from_fn(|| r.poll_transmit())
        .map(|t| Message::decode(&t.payload, 1 << 20).unwrap())
        .collect()
}

/// A replica holding data, its own write committed, and a twin restored from the same state.
fn twins() -> (Replica, Replica) {
    let mut r = Replica::new(Config::new(A).with_peer(B).with_peer(C));
    r.update("n", &Op::Inc(3)).unwrap();
    r.persist(&mut MemStore::default()).unwrap();
    while r.poll_transmit().is_some() {}
    let twin = Replica::restore(
        Config::new(A).with_peer(B).with_peer(C),
        r.durable().clone(),
    );
    (r, twin)
}

#[test]
fn a_forged_summary_claims_no_more_than_a_digest_with_our_context_could() {
    let (mut r, mut twin) = twins();
    let dot = r.last_local_dot().unwrap();
    let before = r.durable().clone();
    // C has nothing but echoes the fingerprint of our context (say, from our own summary).
    let forged = Message::Summary(fingerprint(r.seen())).encode();
    r.handle_message(1, C, &forged).unwrap();
    let claim = Message::Digest(Digest {
        seen: twin.seen().clone(),
        reply: true,
        want: false,
        resume: None,
    })
    .encode();
    twin.handle_message(1, C, &claim).unwrap();
    // Nothing of our own data moved; the belief about C is what the digest would give.
    assert_eq!(r.durable(), &before);
    assert_eq!(r.holders(dot).collect::<Vec<_>>(), [C]);
    assert_eq!(
        r.holders(dot).collect::<Vec<_>>(),
        twin.holders(dot).collect::<Vec<_>>()
    );
    let lag = |x: &Replica| x.peers().map(|p| (p.info.id, p.lag)).collect::<Vec<_>>();
    assert_eq!(lag(&r), lag(&twin));
    let answer = sent(&mut r);
    assert_eq!(answer, [Message::InSync]);
}

#[test]
fn a_summary_of_another_context_changes_nothing_and_claims_nothing() {
    let (mut r, _) = twins();
    let dot = r.last_local_dot().unwrap();
    let before = r.durable().clone();
    r.handle_message(1, C, &Message::Summary([7; 16]).encode())
        .unwrap();
    assert_eq!(r.durable(), &before);
    assert_eq!(r.holders(dot).count(), 0);
    let answer = sent(&mut r);
    assert_eq!(answer, [Message::Mismatch]);
}

#[test]
fn a_mismatch_gets_one_full_digest_per_summary_sent_and_none_unasked() {
    let mut c = two_writers();
    c.settle();
    let a = c.get(A);
    let mismatch = Message::Mismatch.encode();
    // Unasked: no answer.
    a.handle_message(40_000, C, &mismatch).unwrap();
    assert!(a.poll_transmit().is_none());
    // A round sends B a summary; B's mismatch (made up here) gets one digest, a second none.
    a.handle_timeout(40_000);
    assert!(sent(a).iter().any(|m| matches!(m, Message::Summary(_))));
    for expected in [1, 0] {
        a.handle_message(40_001, B, &mismatch).unwrap();
        let digests = std::iter::from_fn(|| a.poll_transmit())
            .filter(|t| t.payload[1] == DIGEST)
            .count();
        assert_eq!(digests, expected);
    }
}

/// `InSync` names nothing: a late or duplicated one, answering an older digest, must not make
/// a peer count as holding a write made since.
#[test]
fn a_late_in_sync_never_makes_a_peer_count_for_a_later_write() {
    let mut c = two_writers();
    let a = c.get(A);
    // A's round digest (or summary) to B; B's answer comes late.
    a.handle_timeout(10_000);
    while a.poll_transmit().is_some() {}
    // A writes; the push to B is lost, and so is A's next round's digest.
    a.update("later", &Op::Inc(1)).unwrap();
    let dot = a.last_local_dot().unwrap();
    a.persist(&mut MemStore::default()).unwrap();
    while a.poll_transmit().is_some() {}
    a.handle_timeout(20_000);
    while a.poll_transmit().is_some() {}
    // The late answer to the first digest, twice (a duplicate).
    for _ in 0..2 {
        a.handle_message(20_001, B, &Message::InSync.encode())
            .unwrap();
    }
    assert_eq!(
        a.holders(dot).count(),
        0,
        "B counted for a write it never got"
    );
}

#[test]
fn a_flood_of_summaries_gets_a_bounded_number_of_answers_per_round() {
    let (mut r, _) = twins();
    let summary = Message::Summary(fingerprint(r.seen())).encode();
    for _ in 0..1_000 {
        r.handle_message(1, C, &summary).unwrap();
    }
    // Each gets a 2-byte answer (a peer whose rounds are faster than ours must not take us
    // for silent), but only the first few are learned from; the rest are counted.
    let answers = sent(&mut r);
    assert_eq!(answers.len(), 1_000);
    assert!(answers.iter().all(|m| *m == Message::InSync));
    assert_eq!(r.stats().summaries_refused, 1_000 - 8);
    // While a change awaits commit, summaries beyond the budget get no answer at all (the
    // fingerprint would have to be computed afresh for each).
    r.update("m", &Op::Inc(1)).unwrap();
    for _ in 0..10 {
        r.handle_message(1, C, &summary).unwrap();
    }
    r.persist(&mut MemStore::default()).unwrap();
    assert!(!sent(&mut r).contains(&Message::InSync));
    // A new round, a new budget.
    r.handle_timeout(100_000);
    sent(&mut r);
    let summary = Message::Summary(fingerprint(r.seen())).encode();
    r.handle_message(100_001, C, &summary).unwrap();
    assert!(sent(&mut r).contains(&Message::InSync));
}
