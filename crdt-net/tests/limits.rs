//! Limits on what a replica accepts: nesting depth (decoded and made locally) and values too
//! large for a message. Each is refused with a typed error, never a crash, and changes nothing.

use crdt_core::{Dot, ReplicaId};
use crdt_net::message::DeltaEntry;
use crdt_net::{Config, Message, Object, Op, ProtocolError, Replica, UpdateError, MAX_DEPTH};

const A: ReplicaId = ReplicaId::new(1);
const B: ReplicaId = ReplicaId::new(2);

/// An operation writing a counter under `depth - 1` nested maps.
fn nested_op(depth: usize) -> Op {
    let mut op = Op::Inc(1);
    for _ in 1..depth {
        op = Op::Update("k".into(), Box::new(op));
    }
    op
}

/// A `Deltas` message whose object nests `depth` deep, built from bytes: encoding so deep an
/// object with serde would itself recurse that deep. Each level adds the same prefix, since a
/// map's nested value is the last thing it encodes.
fn deep_deltas(depth: usize) -> Vec<u8> {
    let message = |object: Object| {
        Message::Deltas(vec![DeltaEntry {
            dot: Dot::new(B, 1),
            key: "deep".into(),
            delta: object,
        }])
        .encode()
    };
    let object = |depth: usize| Object::Empty.apply(B, &nested_op(depth)).unwrap();
    let (one, two) = (message(object(1)), message(object(2)));
    let header = one.len() - crdt_core::codec::encode(&object(1)).len() + 1;
    let leaf = &one[header..];
    let level = &two[header..two.len() - leaf.len()];
    assert_eq!(
        message(object(3)).len(),
        two.len() + level.len(),
        "a level is a prefix"
    );
    let mut bytes = one[..header].to_vec();
    for _ in 1..depth {
        bytes.extend_from_slice(level);
    }
    bytes.extend_from_slice(leaf);
    bytes
}

#[test]
fn an_object_nested_too_deep_is_refused_when_decoded_not_a_crash() {
    let mut replica = Replica::new(Config::new(A).with_peer(B));
    let fits = deep_deltas(MAX_DEPTH);
    assert_eq!(replica.handle_message(0, B, &fits), Ok(()));
    assert_eq!(replica.get("deep").map(Object::depth), Some(MAX_DEPTH));

    let mut replica = Replica::new(Config::new(A).with_peer(B));
    let before = replica.durable().clone();
    for depth in [MAX_DEPTH + 1, 1_000, 70_000] {
        let bytes = deep_deltas(depth);
        assert!(bytes.len() < replica.max_message(), "{} bytes", bytes.len());
        assert_eq!(
            replica.handle_message(0, B, &bytes),
            Err(ProtocolError::Malformed),
            "depth {depth}"
        );
        assert_eq!(replica.durable(), &before);
    }
}

#[test]
fn a_local_update_nested_too_deep_is_refused() {
    let mut replica = Replica::new(Config::new(A));
    assert!(replica.update("ok", &nested_op(MAX_DEPTH)).is_ok());
    assert_eq!(
        replica.update("deep", &nested_op(MAX_DEPTH + 1)),
        Err(UpdateError::TooDeep {
            depth: MAX_DEPTH + 1,
            max: MAX_DEPTH
        })
    );
    // Measured without recursion: an absurdly deep operation is refused, not a crash.
    assert!(matches!(
        replica.update("deep", &nested_op(5_000)),
        Err(UpdateError::TooDeep { .. })
    ));
    assert_eq!(replica.get("deep"), None);
    // The same through a closure: the object is put back.
    let me = replica.id();
    let before = replica.get("ok").cloned();
    let result = replica.update_with("ok", |object| {
        object.apply(
            me,
            &Op::Update("other".into(), Box::new(nested_op(MAX_DEPTH))),
        )
    });
    assert!(
        matches!(result, Err(UpdateError::TooDeep { .. })),
        "{result:?}"
    );
    assert_eq!(replica.get("ok").cloned(), before);
    assert_eq!(
        replica.seen().vv().get(me),
        1,
        "no dot issued for refused updates"
    );
}

#[test]
fn a_value_too_large_for_a_message_is_refused_at_the_writer() {
    let mut replica = Replica::new(Config::new(A).with_peer(B));
    let max = replica.largest_value();
    let big = "x".repeat(1_100_000);
    let err = replica
        .update(
            "k",
            &Op::Lww(crdt_core::HlcTimestamp::new(1, 0), big.clone().into()),
        )
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::TooLarge { max: m, .. } if m == max),
        "{err}"
    );
    assert!(matches!(
        replica.update("s", &Op::Add(big.clone().into())),
        Err(UpdateError::TooLarge { .. })
    ));
    assert!(replica.objects().is_empty());
    // Through a closure too, and the set is put back as it was.
    replica.update("s", &Op::Add("small".into())).unwrap();
    let before = replica.get("s").cloned();
    let result = replica.update_with("s", |object| object.apply(A, &Op::Add(big.into())));
    assert!(
        matches!(result, Err(UpdateError::TooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(replica.get("s").cloned(), before);
    // Just under the limit is fine, and its delta fits in a message.
    let fits = "y".repeat(max - 1);
    replica.update("r", &Op::Mv(fits.into())).unwrap();
    replica
        .persist(&mut crdt_net::store::MemStore::default())
        .unwrap();
    while let Some(t) = replica.poll_transmit() {
        assert!(
            t.payload.len() <= replica.max_message(),
            "{}",
            t.payload.len()
        );
    }
}

/// A writer's counter total may not pass MAX_COUNTER: peers refuse such counters, so an update
/// reaching it would never replicate (and, before this check, cut the writer off from every
/// peer that received it). Refused with a typed error, the object unchanged, at any depth and
/// through `update_with` too.
#[test]
fn a_counter_past_the_limit_is_refused_locally() {
    let mut a = Replica::new(Config::new(A));
    a.update("n", &Op::PnInc(crdt_net::MAX_COUNTER - 1))
        .unwrap();
    let before = a.get("n").cloned();
    assert_eq!(
        a.update("n", &Op::PnInc(2)),
        Err(UpdateError::CounterLimit {
            total: crdt_net::MAX_COUNTER + 1,
            max: crdt_net::MAX_COUNTER
        })
    );
    assert_eq!(a.get("n").cloned(), before);
    a.update("n", &Op::PnInc(1)).unwrap(); // exactly at the limit is fine

    let nested = Op::Update("k".into(), Box::new(Op::Inc(crdt_net::MAX_COUNTER + 1)));
    assert!(matches!(
        a.update("m", &nested),
        Err(UpdateError::CounterLimit { .. })
    ));
    assert_eq!(a.get("m"), None);

    let result = a.update_with("w", |object| {
        object.apply(A, &Op::Inc(crdt_net::MAX_COUNTER + 5))
    });
    assert!(matches!(result, Err(UpdateError::CounterLimit { .. })));
    assert_eq!(a.get("w"), None);
}

/// A counter whose running totals are past the limit is refused even when its reset floors
/// make its value small: a writer's later increments would saturate at u64::MAX.
#[test]
fn a_counter_with_huge_totals_behind_its_floors_is_refused() {
    let mut source = crdt_core::GCounter::new();
    source.inc(B, u64::MAX - 10);
    crdt_core::Reset::reset(&mut source);
    source.inc(B, 1);
    assert_eq!(source.value(), 1);
    let message = Message::Deltas(vec![DeltaEntry {
        dot: Dot::new(B, 1),
        key: "n".into(),
        delta: Object::GCounter(source),
    }])
    .encode();
    let mut a = Replica::new(Config::new(A).with_peer(B));
    assert!(matches!(
        a.handle_message(0, B, &message),
        Err(ProtocolError::CounterTooLarge(_))
    ));
    assert_eq!(a.get("n"), None);
}
