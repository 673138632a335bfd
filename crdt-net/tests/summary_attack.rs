//! Hostile tests of constant-size idle rounds (summaries): late, duplicated and replayed
//! answers, crashes between a summary and its answer, a peer that answers `Mismatch` forever,
//! deltas refused for clock drift, and peers whose rounds are faster than ours.

use crdt_core::ReplicaId;
use crdt_net::message::fingerprint;
use crdt_net::store::MemStore;
use crdt_net::{Config, Message, Op, Replica};

const A: ReplicaId = ReplicaId::new(0xA000_0000_0000_0001);
const B: ReplicaId = ReplicaId::new(0xB000_0000_0000_0002);
const H: ReplicaId = ReplicaId::new(0xC000_0000_0000_0003);

fn replica(id: ReplicaId, peer: ReplicaId, interval: u64) -> (Replica, MemStore) {
    let mut config = Config::new(id).with_peer(peer);
    config.gossip_interval = interval;
    (Replica::new(config), MemStore::default())
}

/// Delivers every message between the two until none is left (bounded); returns the kinds
/// (variant index) sent by each, in order.
fn drain(
    x: &mut (Replica, MemStore),
    y: &mut (Replica, MemStore),
    now: u64,
) -> Vec<(ReplicaId, u8)> {
    let mut log = Vec::new();
    for _ in 0..1000 {
        x.0.persist(&mut x.1).unwrap();
        y.0.persist(&mut y.1).unwrap();
        let mut quiet = true;
        while let Some(t) = x.0.poll_transmit() {
            log.push((x.0.id(), t.payload[1]));
            y.0.handle_message(now, x.0.id(), &t.payload).unwrap();
            quiet = false;
        }
        while let Some(t) = y.0.poll_transmit() {
            log.push((y.0.id(), t.payload[1]));
            x.0.handle_message(now, y.0.id(), &t.payload).unwrap();
            quiet = false;
        }
        if quiet {
            return log;
        }
    }
    panic!("messages kept coming");
}

/// A round of each (both due at `now`), and everything it sets off.
fn round(
    x: &mut (Replica, MemStore),
    y: &mut (Replica, MemStore),
    now: u64,
) -> Vec<(ReplicaId, u8)> {
    x.0.handle_timeout(now);
    y.0.handle_timeout(now);
    drain(x, y, now)
}

fn sent(r: &mut Replica) -> Vec<Message> {
    std::iter::from_fn(|| r.poll_transmit())
        .map(|t| Message::decode(&t.payload, 1 << 20).unwrap())
        .collect()
}

const DIGEST: u8 = 0;
const SUMMARY: u8 = 9;

/// A peer whose rounds come twenty times as often as ours (a server gossiping every 500 ms
/// with a device that gossips every 10 s) sends more summaries in one of our rounds than the
/// per-round budget. It must still be answered: a summary left unanswered is a missed round
/// to it, and enough of them mark us down there (no more pushes to us, retries backing off).
#[test]
fn a_peer_with_faster_rounds_never_marks_us_down_for_its_summaries() {
    let mut slow = replica(A, B, 10_000);
    let mut fast = replica(B, A, 500);
    slow.0.update("a", &Op::Inc(1)).unwrap();
    fast.0.update("b", &Op::Inc(1)).unwrap();
    // Warm up until the fast peer sends summaries.
    let mut now = 0;
    let mut summaries = 0;
    for _ in 0..400 {
        now += 50;
        let log = round(&mut slow, &mut fast, now);
        summaries += log
            .iter()
            .filter(|(from, k)| *from == B && *k == SUMMARY)
            .count();
        while let Some(e) = fast.0.poll_event() {
            assert!(
                !matches!(e, crdt_net::Event::PeerDown(_)),
                "the fast peer marked the slow one down at {now} ms"
            );
        }
    }
    assert!(summaries > 30, "only {summaries} summaries sent");
    assert!(fast.0.peers().all(|p| p.up));
}

/// A peer that answers every summary of ours with `Mismatch` (and every digest too) gets at
/// most one full digest per summary we sent: at most one per round.
#[test]
fn a_peer_answering_mismatch_forever_gets_one_digest_per_round_at_most() {
    let (mut a, mut store) = replica(A, H, 100);
    a.update("n", &Op::Inc(3)).unwrap();
    a.persist(&mut store).unwrap();
    sent(&mut a);
    // H claims our context once (a digest), so our rounds to it are summaries.
    let claim = Message::Digest(crdt_net::message::Digest {
        seen: a.seen().clone(),
        reply: false,
        want: false,
        resume: None,
    })
    .encode();
    a.handle_message(1, H, &claim).unwrap();
    sent(&mut a);
    let mismatch = Message::Mismatch.encode();
    let mut digests = 0;
    let rounds = 50;
    for round in 1..=rounds {
        let now = round * 1_000;
        a.handle_timeout(now);
        for _ in 0..20 {
            a.handle_message(now, H, &mismatch).unwrap();
        }
        digests += sent(&mut a)
            .iter()
            .filter(|m| matches!(m, Message::Digest(_)))
            .count();
    }
    assert!(
        digests <= rounds as usize,
        "{digests} digests in {rounds} rounds"
    );
    assert!(digests > 0, "a mismatch got no digest at all");
}

/// Our own summary, echoed back much later by the network (or a peer), after we wrote again:
/// it matches nothing we have now and claims nothing.
#[test]
fn an_old_summary_of_ours_replayed_after_a_write_claims_nothing() {
    let (mut a, mut store) = replica(A, H, 100);
    a.update("n", &Op::Inc(3)).unwrap();
    a.persist(&mut store).unwrap();
    sent(&mut a);
    let old = Message::Summary(fingerprint(a.seen())).encode();
    a.update("n", &Op::Inc(1)).unwrap();
    let dot = a.last_local_dot().unwrap();
    a.persist(&mut store).unwrap();
    sent(&mut a);
    for _ in 0..3 {
        a.handle_message(5, H, &old).unwrap();
    }
    assert_eq!(a.holders(dot).count(), 0);
    assert!(sent(&mut a).iter().all(|m| *m == Message::Mismatch));
}

/// A crash of the summary's sender between the summary and its answer: the restarted replica
/// knows nothing of its peers, takes the late `InSync` or `Mismatch` for nothing, and its next
/// round is a full digest; the two still converge on a write made meanwhile.
#[test]
fn a_crash_between_a_summary_and_its_answer_loses_no_write() {
    let mut a = replica(A, B, 100);
    let mut b = replica(B, A, 100);
    a.0.update("a", &Op::Inc(1)).unwrap();
    b.0.update("b", &Op::Inc(1)).unwrap();
    for now in (100..=1_000).step_by(100) {
        round(&mut a, &mut b, now);
    }
    // A's round sends a summary; B writes, and B's answer (a mismatch) is held.
    a.0.handle_timeout(1_100);
    a.0.persist(&mut a.1).unwrap();
    let to_b: Vec<_> = std::iter::from_fn(|| a.0.poll_transmit()).collect();
    assert!(to_b.iter().any(|t| t.payload[1] == SUMMARY));
    b.0.update("b", &Op::Inc(1)).unwrap();
    b.0.persist(&mut b.1).unwrap();
    sent(&mut b.0); // the push is lost
    for t in &to_b {
        b.0.handle_message(1_100, A, &t.payload).unwrap();
    }
    let answers: Vec<_> = std::iter::from_fn(|| b.0.poll_transmit()).collect();
    // A crashes and restarts from its store before the answer arrives.
    let durable = a.0.durable().clone();
    let mut config = Config::new(A).with_peer(B);
    config.gossip_interval = 100;
    a.0 = Replica::restore(config, durable);
    for t in &answers {
        a.0.handle_message(1_150, B, &t.payload).unwrap();
    }
    assert!(
        sent(&mut a.0).is_empty(),
        "the restarted replica answered a mismatch it never asked for"
    );
    let mut rounds_digest = false;
    for now in (1_200..=3_000).step_by(100) {
        let log = round(&mut a, &mut b, now);
        rounds_digest |= log.contains(&(A, DIGEST));
    }
    assert!(rounds_digest);
    assert_eq!(a.0.get("b").map(|o| o.to_string()), Some("2".into()));
}

/// A delta refused for clock drift still counts its sender as holding it (the sender does),
/// and the receiver, though it now believes the sender has everything it has, gets the write
/// once its clock has caught up: the summary mismatches, and the full digest follows.
#[test]
fn a_delta_refused_for_drift_arrives_once_the_clock_catches_up() {
    let mut a = replica(A, B, 1_000);
    let mut b = replica(B, A, 1_000);
    a.0.update("x", &Op::Inc(1)).unwrap();
    for now in (1_000..=5_000).step_by(1_000) {
        round(&mut a, &mut b, now);
    }
    // B's clock runs 10 minutes ahead: its write is refused by A.
    let ahead = 600_000;
    let stamp = b.0.stamp(5_000 + ahead);
    b.0.update("reg", &Op::Lww(stamp, "late".into())).unwrap();
    let dot = b.0.last_local_dot().unwrap();
    b.0.persist(&mut b.1).unwrap();
    for t in std::iter::from_fn(|| b.0.poll_transmit()).collect::<Vec<_>>() {
        a.0.handle_message(5_001, B, &t.payload).unwrap();
    }
    assert!(a.0.stats().drift_refused > 0);
    assert!(a.0.get("reg").is_none());
    assert!(!a.0.seen().contains(dot));
    // Rounds until A's clock is past the stamp (B's clock is given as its own).
    let mut now = 5_000;
    for _ in 0..700 {
        now += 1_000;
        a.0.handle_timeout(now);
        b.0.handle_timeout(now + ahead);
        drain(&mut a, &mut b, now);
        if a.0.seen().contains(dot) {
            break;
        }
    }
    assert!(a.0.seen().contains(dot), "never arrived");
    assert_eq!(a.0.get("reg"), b.0.get("reg"));
}

/// A hostile peer spending its budget of summaries does not spend an honest peer's.
#[test]
fn a_flood_from_one_peer_leaves_another_answered() {
    let mut config = Config::new(A).with_peer(B).with_peer(H);
    config.gossip_interval = 100;
    let mut a = Replica::new(config);
    a.update("n", &Op::Inc(3)).unwrap();
    a.persist(&mut MemStore::default()).unwrap();
    sent(&mut a);
    let ours = Message::Summary(fingerprint(a.seen())).encode();
    for _ in 0..1_000 {
        a.handle_message(1, H, &ours).unwrap();
    }
    sent(&mut a);
    a.handle_message(2, B, &ours).unwrap();
    assert_eq!(sent(&mut a), [Message::InSync]);
}
