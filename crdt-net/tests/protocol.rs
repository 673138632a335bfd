//! Bad input from a peer: a typed error, no panic, nothing stored changes, and the replica keeps
//! serving others. Also the message golden vectors of `docs/wire-format.md`.

mod support;

use crdt_core::{CausalContext, Dot, ReplicaId, VersionVector};
use crdt_net::message::{
    fingerprint, DeltaEntry, Digest, ReadReply, ReadRequest, StateChunk, StateDone, StateEntry,
};
use crdt_net::store::MemStore;
use crdt_net::{Config, Message, Object, Op, PeerInfo, ProtocolError, Replica, Transmit};

const A: ReplicaId = ReplicaId::new(1);
const B: ReplicaId = ReplicaId::new(2);
const C: ReplicaId = ReplicaId::new(3);

fn replica_with_data() -> Replica {
    replica_with_log(8 << 20)
}

fn replica_with_log(max_log_bytes: usize) -> Replica {
    let mut config = Config::new(A).with_peer(B).with_peer(C);
    config.max_log_bytes = max_log_bytes;
    let mut r = Replica::new(config);
    r.update("n", &Op::Inc(5)).unwrap();
    r.update("s", &Op::Add("x".into())).unwrap();
    r.update("m", &Op::Update("k".into(), Box::new(Op::Inc(1))))
        .unwrap();
    transmits(&mut r);
    r
}

/// Commits what `r` changed (nothing may leave before) and takes what it sends.
fn transmits(r: &mut Replica) -> Vec<Transmit> {
    r.persist(&mut MemStore::default()).unwrap();
    std::iter::from_fn(|| r.poll_transmit()).collect()
}

fn delta_from(writer: ReplicaId, counter: u64) -> Vec<u8> {
    let mut source = Object::Empty;
    let delta = source.apply(writer, &Op::Inc(7)).unwrap();
    Message::Deltas(vec![DeltaEntry {
        dot: Dot::new(writer, counter),
        key: "n".into(),
        delta,
    }])
    .encode()
}

#[test]
fn bad_messages_are_refused_and_change_nothing() {
    let mut r = replica_with_data();
    let before = r.durable().clone();
    let huge = vec![1u8; (1 << 20) + 1];
    let cases: Vec<(&str, Vec<u8>, ProtocolError)> = vec![
        ("empty", vec![], ProtocolError::Empty),
        (
            "wrong version",
            vec![9, 1],
            ProtocolError::UnsupportedVersion(9),
        ),
        (
            "garbage",
            vec![crdt_net::PROTOCOL_VERSION, 0xff, 0xff, 0xff],
            ProtocolError::Malformed,
        ),
        (
            "trailing bytes",
            {
                let mut m = Message::InSync.encode();
                m.push(0);
                m
            },
            ProtocolError::Malformed,
        ),
        (
            "oversized",
            huge,
            ProtocolError::TooLarge {
                len: (1 << 20) + 1,
                max: 1 << 20,
            },
        ),
        (
            "forged dot",
            delta_from(A, 99),
            ProtocolError::ForgedDot(Dot::new(A, 99)),
        ),
    ];
    for (what, bytes, expected) in cases {
        assert_eq!(r.handle_message(0, B, &bytes), Err(expected), "{what}");
        assert_eq!(r.durable(), &before, "{what} changed stored state");
    }
    assert_eq!(
        r.handle_message(0, A, &Message::InSync.encode()),
        Err(ProtocolError::FromSelf(A))
    );
    assert_eq!(r.stats().errors, 7);

    // The replica keeps serving: a valid delta from C still lands.
    r.handle_message(0, C, &delta_from(C, 1)).unwrap();
    assert_eq!(r.get("n").map(|o| o.to_string()), Some("12".into()));
}

#[test]
fn mutated_messages_never_panic_and_errors_change_nothing() {
    // No delta buffer, so a peer catching up gets state chunks.
    let mut source = replica_with_log(0);
    // Real messages of every kind: a digest, deltas, state chunks.
    let mut samples = vec![
        Message::Digest(Digest {
            seen: source.seen().clone(),
            reply: true,
            want: true,
            resume: None,
        })
        .encode(),
        delta_from(C, 4),
        Message::Summary(fingerprint(source.seen())).encode(),
        Message::Mismatch.encode(),
    ];
    let mut peer = Replica::new(Config::new(B).with_peer(A));
    peer.handle_timeout(10_000);
    for t in transmits(&mut peer) {
        source.handle_message(0, B, &t.payload).unwrap();
    }
    samples.extend(transmits(&mut source).into_iter().map(|t| t.payload));
    let kinds: Vec<u8> = samples.iter().map(|m| m[1]).collect();
    assert!(
        samples.len() >= 4,
        "expected state chunks in the samples, got kinds {kinds:?}"
    );

    let mut rng = fastrand::Rng::with_seed(42);
    let mut target = replica_with_data();
    for i in 0..20_000 {
        let mut m = samples[i % samples.len()].clone();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..m.len());
            m[at] ^= rng.u8(1..);
        }
        if rng.u8(..8) == 0 {
            m.truncate(rng.usize(..m.len()));
        }
        let before = target.durable().clone();
        if target.handle_message(0, C, &m).is_err() {
            assert_eq!(target.durable(), &before, "a refused message changed state");
        }
    }
}

fn golden_messages() -> Vec<(&'static str, Message)> {
    let seen: CausalContext = [Dot::new(A, 1), Dot::new(A, 2), Dot::new(B, 1)]
        .into_iter()
        .collect();
    let seen_again = seen.clone();
    let mut counter = Object::Empty;
    let delta = counter.apply(A, &Op::Inc(3)).unwrap();
    vec![
        (
            "digest",
            Message::Digest(Digest {
                seen: seen.clone(),
                reply: true,
                want: true,
                resume: None,
            }),
        ),
        ("in-sync", Message::InSync),
        (
            "deltas",
            Message::Deltas(vec![DeltaEntry {
                dot: Dot::new(A, 3),
                key: "n".into(),
                delta,
            }]),
        ),
        ("ack", Message::Ack([Dot::new(A, 3)].into_iter().collect())),
        (
            "state",
            Message::State(StateChunk {
                transfer: 7,
                index: 0,
                walked: 1,
                keys: 1,
                base: VersionVector::single(A, 2),
                complete: Some(("n".into(), "n".into())),
                objects: vec![StateEntry {
                    key: "n".into(),
                    touched: VersionVector::single(A, 2),
                    object: counter.clone(),
                }],
            }),
        ),
        (
            "state-done",
            Message::StateDone(StateDone {
                transfer: 7,
                chunks: 1,
                covers: seen,
            }),
        ),
        (
            "peers",
            Message::Peers(vec![PeerInfo {
                id: B,
                addr: Some("10.0.0.2:4433".into()),
            }]),
        ),
        (
            "read",
            Message::Read(ReadRequest {
                id: 9,
                key: "n".into(),
            }),
        ),
        (
            "read-reply",
            Message::ReadReply(ReadReply {
                id: 9,
                part: 0,
                parts: 1,
                entry: Some(StateEntry {
                    key: "n".into(),
                    touched: VersionVector::single(A, 2),
                    object: counter.clone(),
                }),
            }),
        ),
        ("summary", Message::Summary(fingerprint(&seen_again))),
        ("mismatch", Message::Mismatch),
    ]
}

#[test]
fn message_golden_vectors_match_the_document_both_ways() {
    support::golden_vectors_match(
        include_str!("../../docs/wire-format.md"),
        "message",
        golden_messages(),
        Message::encode,
        |bytes| Message::decode(bytes, 1 << 20),
    );
}

#[test]
#[ignore = "prints the message vectors for docs/wire-format.md"]
fn print_message_vectors() {
    for (name, message) in golden_messages() {
        let hex: Vec<String> = message
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        println!("```message {name}\n{}\n```", hex.join(" "));
    }
}

#[test]
fn a_silent_peer_goes_down_after_missed_rounds_and_comes_back() {
    let mut config = Config::new(A).with_peer(B);
    config.gossip_interval = 100;
    config.fanout = 1;
    let mut a = Replica::new(config);
    let mut events = Vec::new();
    for round in 0..6 {
        a.handle_timeout(round * 100 + 99);
        transmits(&mut a);
        events.extend(std::iter::from_fn(|| a.poll_event()));
    }
    assert_eq!(
        events,
        [crdt_net::Event::PeerDown(B)],
        "down after 3 unanswered rounds"
    );
    assert!(a.peers().all(|p| !p.up));
    a.handle_message(700, B, &Message::InSync.encode()).unwrap();
    transmits(&mut a);
    assert_eq!(a.poll_event(), Some(crdt_net::Event::PeerUp(B)));
    assert!(a.peers().all(|p| p.up));
}

#[test]
fn a_flood_of_made_up_peers_is_capped() {
    let mut r = replica_with_data();
    let flood: Vec<PeerInfo> = (1_000..6_000)
        .map(|i| PeerInfo {
            id: ReplicaId::new(i),
            addr: Some("192.0.2.1:1".into()),
        })
        .collect();
    for chunk in flood.chunks(1_000) {
        r.handle_message(0, B, &Message::Peers(chunk.to_vec()).encode())
            .unwrap();
    }
    assert_eq!(r.peers().count(), 1024);
}

/// A register write stamped beyond the drift bound is refused on its own (the rest of the
/// message lands), not acknowledged, counted and reported; the same write lands once this
/// replica's clock has caught up.
#[test]
fn a_write_stamped_too_far_ahead_waits_for_the_clock() {
    let mut config = Config::new(A).with_peer(B);
    config.max_drift = 1_000;
    let mut a = Replica::new(config);
    let now = 1_700_000_000_000;
    let future = crdt_core::HlcTimestamp::new(now + 600_000, 0);
    let mut register = Object::Empty;
    let early = register
        .apply(B, &Op::Lww(future, "future".into()))
        .unwrap();
    let mut counter = Object::Empty;
    let count = counter.apply(B, &Op::Inc(1)).unwrap();
    let message = Message::Deltas(vec![
        DeltaEntry {
            dot: Dot::new(B, 1),
            key: "r".into(),
            delta: early,
        },
        DeltaEntry {
            dot: Dot::new(B, 2),
            key: "n".into(),
            delta: count,
        },
    ])
    .encode();
    a.handle_message(now, B, &message).unwrap();
    assert_eq!(a.get("r"), None);
    assert_eq!(a.get("n").map(|o| o.to_string()), Some("1".into()));
    assert!(!a.seen().contains(Dot::new(B, 1)));
    assert_eq!(a.stats().drift_refused, 1);
    let sent = transmits(&mut a);
    let acked: Vec<Message> = sent
        .iter()
        .filter_map(|t| Message::decode(&t.payload, 1 << 20).ok())
        .collect();
    assert!(
        acked
            .iter()
            .all(|m| !matches!(m, Message::Ack(c) if c.contains(Dot::new(B, 1)))),
        "a refused write is not acknowledged"
    );
    let events: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(
        e,
        crdt_net::Event::ClockDrift { peer, ahead_ms: 600_000 } if *peer == B
    )));
    // Ten minutes later the same message is within the bound.
    a.handle_message(now + 600_000, B, &message).unwrap();
    assert_eq!(a.get("r").map(|o| o.to_string()), Some("\"future\"".into()));
    // And the clock has moved past it: local stamps come later.
    assert!(a.stamp(now) > future);
}

/// Removing a map key resets its registers to a floor stamp, which hides every write at or
/// below it: a floor far ahead of this clock is refused like a write stamped there, or a peer
/// with a fast clock could hide every write for as long.
#[test]
fn a_reset_floor_too_far_ahead_is_refused() {
    let mut config = Config::new(A).with_peer(B);
    config.max_drift = 1_000;
    let mut a = Replica::new(config);
    let now = 1_700_000_000_000;
    let future = crdt_core::HlcTimestamp::new(now + 600_000, 0);
    let mut map = Object::Empty;
    let write = Op::Update("title".into(), Box::new(Op::Lww(future, "x".into())));
    map.apply(B, &write).unwrap();
    let removed = map.apply(B, &Op::Delete("title".into())).unwrap();
    let message = Message::Deltas(vec![DeltaEntry {
        dot: Dot::new(B, 2),
        key: "doc".into(),
        delta: removed,
    }])
    .encode();
    a.handle_message(now, B, &message).unwrap();
    assert_eq!(a.get("doc"), None);
    assert_eq!(a.stats().drift_refused, 1);
}

/// A counter and a set written under one key at two replicas: the later type wins (merge stays
/// total), and the receiver counts the conflict and reports it once.
#[test]
fn a_type_conflict_is_counted_and_reported_once() {
    let mut a = Replica::new(Config::new(A).with_peer(B));
    a.update("k", &Op::Inc(1)).unwrap();
    transmits(&mut a);
    let mut b = Replica::new(Config::new(B).with_peer(A));
    for (i, element) in ["x", "y"].into_iter().enumerate() {
        let delta = b.update("k", &Op::Add(element.into())).unwrap();
        let message = Message::Deltas(vec![DeltaEntry {
            dot: Dot::new(B, i as u64 + 1),
            key: "k".into(),
            delta,
        }]);
        a.handle_message(0, B, &message.encode()).unwrap();
    }
    assert_eq!(
        a.stats().type_conflicts,
        1,
        "the second add merges a set into a set"
    );
    transmits(&mut a);
    let conflicts = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, crdt_net::Event::TypeConflict { key } if key == "k"))
        .count();
    assert_eq!(conflicts, 1);
    assert_eq!(a.get("k").map(|o| o.type_name()), Some("set"));
}
