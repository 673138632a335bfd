//! The validation layer: messages from a trusted but lying peer are refused whole, with a
//! typed reason, before they change anything. One test per way a single message could
//! otherwise poison a replica.

use crdt_core::{CausalContext, Dot, ReplicaId, VersionVector};
use crdt_net::message::{DeltaEntry, StateChunk, StateDone, StateEntry};
use crdt_net::store::MemStore;
use crdt_net::{Config, Message, Object, Op, ProtocolError, Replica, MAX_COUNTER};

const A: ReplicaId = ReplicaId::new(1);
const B: ReplicaId = ReplicaId::new(2);
const C: ReplicaId = ReplicaId::new(3);

fn replica() -> Replica {
    let mut r = Replica::new(Config::new(A).with_peer(B).with_peer(C));
    r.update("n", &Op::Inc(1)).unwrap();
    r.persist(&mut MemStore::default()).unwrap();
    while r.poll_transmit().is_some() {}
    r
}

fn counter_delta(writer: ReplicaId, counter: u64) -> Message {
    let delta = Object::Empty.apply(writer, &Op::Inc(1)).unwrap();
    Message::Deltas(vec![DeltaEntry {
        dot: Dot::new(writer, counter),
        key: "n".into(),
        delta,
    }])
}

fn done(covers: CausalContext) -> Message {
    Message::StateDone(StateDone {
        transfer: 99,
        chunks: 0,
        covers,
    })
}

/// Refused with `expected`, and the replica's stored state is as it was.
fn refused(r: &mut Replica, message: &Message, expected: ProtocolError) {
    let before = r.durable().clone();
    assert_eq!(r.handle_message(0, B, &message.encode()), Err(expected));
    assert_eq!(r.durable(), &before, "a refused message changed the state");
}

#[test]
fn an_empty_transfer_cannot_cover_a_peers_future_updates() {
    let mut r = replica();
    // Covering C's dots up to the counter limit would make every later delta of C look seen.
    let covers: CausalContext = [Dot::new(C, 1 << 40)].into_iter().collect();
    refused(&mut r, &done(covers), ProtocolError::UnjustifiedCovers);
    let huge: CausalContext = [Dot::new(C, u64::MAX)].into_iter().collect();
    refused(
        &mut r,
        &done(huge),
        ProtocolError::CounterTooLarge(Dot::new(C, u64::MAX)),
    );
    // C's real updates still land.
    r.handle_message(0, C, &counter_delta(C, 1).encode())
        .unwrap();
    assert_eq!(r.get("n").map(|o| o.to_string()), Some("2".into()));
}

#[test]
fn no_message_may_claim_our_own_unissued_dots() {
    let mut r = replica();
    let ours = Dot::new(A, 5);
    let forged: CausalContext = [ours].into_iter().collect();
    refused(
        &mut r,
        &done(forged.clone()),
        ProtocolError::ForgedDot(ours),
    );
    refused(
        &mut r,
        &Message::Ack(forged.clone()),
        ProtocolError::ForgedDot(ours),
    );
    refused(
        &mut r,
        &Message::Digest(crdt_net::message::Digest {
            seen: forged,
            reply: true,
            want: true,
            resume: None,
        }),
        ProtocolError::ForgedDot(ours),
    );
    // A set whose context claims our dot: merged, it would hide our next adds.
    let mut poisoned = crdt_core::OrSet::new();
    for _ in 0..5 {
        poisoned.add(A, b"x".to_vec());
    }
    let chunk = Message::State(StateChunk {
        transfer: 1,
        index: 0,
        walked: 0,
        keys: 0,
        base: VersionVector::default(),
        complete: None,
        objects: vec![StateEntry {
            key: "s".into(),
            touched: VersionVector::single(A, 5),
            object: Object::Set(poisoned),
        }],
    });
    refused(&mut r, &chunk, ProtocolError::ForgedDot(Dot::new(A, 5)));
    // Our next write takes the next dot, and a peer would accept it.
    r.update("n", &Op::Inc(1)).unwrap();
    assert_eq!(r.last_local_dot(), Some(Dot::new(A, 2)));
}

#[test]
fn a_flood_of_made_up_writers_is_refused_past_the_budget() {
    let mut config = Config::new(A).with_peer(B);
    config.max_writers = 100;
    config.max_cloud = 50;
    let mut r = Replica::new(config);
    let entry = |writer: u64, counter: u64| DeltaEntry {
        dot: Dot::new(ReplicaId::new(writer), counter),
        key: "n".into(),
        delta: Object::Empty
            .apply(ReplicaId::new(writer), &Op::Inc(1))
            .unwrap(),
    };
    let first: Vec<DeltaEntry> = (10..90).map(|w| entry(w, 1)).collect();
    r.handle_message(0, B, &Message::Deltas(first).encode())
        .unwrap();
    let more: Vec<DeltaEntry> = (90..130).map(|w| entry(w, 1)).collect();
    refused(
        &mut r,
        &Message::Deltas(more),
        ProtocolError::OverBudget("writers in the causal context"),
    );
    // Dots out of order go to the cloud, which has a budget too.
    let scattered: Vec<DeltaEntry> = (0..60).map(|i| entry(10, 10 + 2 * i)).collect();
    refused(
        &mut r,
        &Message::Deltas(scattered),
        ProtocolError::OverBudget("dots beyond gaps in the causal context"),
    );
}

#[test]
fn counters_near_the_top_of_u64_are_refused() {
    let mut r = replica();
    refused(
        &mut r,
        &counter_delta(C, MAX_COUNTER + 1),
        ProtocolError::CounterTooLarge(Dot::new(C, MAX_COUNTER + 1)),
    );
    let mut big = Object::Empty;
    let total = big.apply(C, &Op::Inc(MAX_COUNTER + 1)).unwrap();
    let message = Message::Deltas(vec![DeltaEntry {
        dot: Dot::new(C, 1),
        key: "n".into(),
        delta: total,
    }]);
    refused(
        &mut r,
        &message,
        ProtocolError::CounterTooLarge(Dot::new(C, MAX_COUNTER + 1)),
    );
}

/// A transfer whose only account of a writer is an entry stamped beyond the drift bound: the
/// entry is refused, so the transfer's covers cannot be claimed, and that is no reason to
/// refuse the honest peer's `StateDone` (which would cut the link).
#[test]
fn a_transfer_with_a_refused_entry_is_not_a_protocol_error() {
    let mut r = replica();
    let now = 1_700_000_000_000;
    let future = crdt_core::HlcTimestamp::new(now + 600_000, 0);
    let register = Object::Empty
        .apply(C, &Op::Lww(future, "ahead".into()))
        .unwrap();
    let chunk = Message::State(StateChunk {
        transfer: 5,
        index: 0,
        walked: 0,
        keys: 0,
        base: VersionVector::default(),
        complete: Some(("clock".into(), "clock".into())),
        objects: vec![StateEntry {
            key: "clock".into(),
            touched: VersionVector::single(C, 1),
            object: register,
        }],
    });
    r.handle_message(now, B, &chunk.encode()).unwrap();
    let covers: CausalContext = [Dot::new(C, 1)].into_iter().collect();
    let done = Message::StateDone(StateDone {
        transfer: 5,
        chunks: 1,
        covers,
    });
    assert_eq!(r.handle_message(now, B, &done.encode()), Ok(()));
    assert!(
        !r.seen().contains(Dot::new(C, 1)),
        "covers of a refused entry landed"
    );
    assert_eq!(r.stats().drift_refused, 1);
}
