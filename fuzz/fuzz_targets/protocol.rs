//! A trusted peer's messages to a replica holding data, two ways: raw bytes (anything a
//! decoder may see), and structured sequences of well-formed messages with fuzzer-chosen
//! dots, contexts, transfers and objects (what reaches the logic behind the decoder). The
//! first input byte picks the way.
//!
//! Checked after every message: no panic; a refused message leaves the stored state exactly
//! as it was; what the replica commits is exactly what it holds. At the end: the replica's own
//! dot counter was not moved by anything a peer said (its next update takes the next dot).
//!
//! Run it with inputs as large as a message may be:
//! `cargo +nightly fuzz run -O -s none protocol -- -max_len=1048576`.
#![no_main]

use crdt_core::{CausalContext, Dot, HlcTimestamp, ReplicaId, VersionVector};
use crdt_net::message::{
    fingerprint, DeltaEntry, Digest, PeerInfo, ReadReply, ReadRequest, Resume, StateChunk,
    StateDone, StateEntry,
};
use crdt_net::store::MemStore;
use crdt_net::{Config, Message, Object, Op, Replica};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const ME: ReplicaId = ReplicaId::new(1);
const PEER: ReplicaId = ReplicaId::new(2);
/// Local updates made before the messages arrive.
const LOCAL: u64 = 3;

fn replica() -> (Replica, MemStore) {
    let mut r = Replica::new(Config::new(ME).with_peer(PEER));
    for (key, op) in [
        ("n", Op::Inc(3)),
        ("s", Op::Add("x".into())),
        ("m", Op::Update("k".into(), Box::new(Op::PnDec(2)))),
    ] {
        let _ = r.update(key, &op);
    }
    let mut store = MemStore::default();
    let _ = r.persist(&mut store);
    while r.poll_transmit().is_some() {}
    (r, store)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut r, mut store) = replica();
    let messages: Vec<Vec<u8>> = if mode % 2 == 0 {
        // Several messages per input, split at 0xFE bytes, so sequences (chunks then done)
        // happen.
        rest.split(|b| *b == 0xfe)
            .map(|m| [&[crdt_net::PROTOCOL_VERSION], m].concat())
            .collect()
    } else {
        let mut u = Unstructured::new(rest);
        std::iter::from_fn(|| message(&mut u).ok().map(|m| m.encode()))
            .take(64)
            .collect()
    };
    for (i, bytes) in messages.iter().enumerate() {
        let now = 1_700_000_000_000 + i as u64 * 1_000;
        let before = r.durable().clone();
        if r.handle_message(now, PEER, bytes).is_err() {
            assert_eq!(r.durable(), &before);
        }
        r.handle_timeout(now);
        assert!(r.persist(&mut store).is_ok());
        assert_eq!(store.durable().seen, r.durable().seen);
        assert_eq!(store.durable().touched, r.durable().touched);
        let live = |d: &crdt_net::Durable| {
            d.objects
                .iter()
                .filter(|(_, o)| **o != Object::Empty)
                .count()
        };
        assert_eq!(live(store.durable()), live(r.durable()));
        while r.poll_transmit().is_some() {}
    }
    // No peer moved our counter: the next local update takes the next dot.
    assert!(r.update("local-after", &Op::Inc(1)).is_ok());
    assert_eq!(r.last_local_dot(), Some(Dot::new(ME, LOCAL + 1)));
});

fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    Ok(match u.int_in_range(0..=10u8)? {
        0 => Message::Digest(Digest {
            seen: context(u)?,
            reply: u.arbitrary()?,
            want: u.arbitrary()?,
            resume: if u.arbitrary()? {
                Some(Resume {
                    ranges: vec![(key(u)?, key(u)?); u.int_in_range(0..=3)?],
                    base: vv(u)?,
                })
            } else {
                None
            },
        }),
        1 => Message::InSync,
        2 => Message::Deltas(
            (0..u.int_in_range(1..=4)?)
                .map(|_| {
                    Ok(DeltaEntry {
                        dot: dot(u)?,
                        key: key(u)?,
                        delta: object(u)?,
                    })
                })
                .collect::<Result<_>>()?,
        ),
        3 => Message::Ack(context(u)?),
        4 => Message::State(StateChunk {
            transfer: u.int_in_range(0..=3)?,
            index: u.int_in_range(0..=4)?,
            // Anything, lies included: it must only ever show as progress.
            walked: u.arbitrary()?,
            keys: u.arbitrary()?,
            base: vv(u)?,
            complete: if u.arbitrary()? {
                Some((key(u)?, key(u)?))
            } else {
                None
            },
            objects: (0..u.int_in_range(0..=3)?)
                .map(|_| entry(u))
                .collect::<Result<_>>()?,
        }),
        5 => Message::StateDone(StateDone {
            transfer: u.int_in_range(0..=3)?,
            chunks: u.int_in_range(0..=4)?,
            covers: context(u)?,
        }),
        6 => Message::Peers(vec![
            PeerInfo {
                id: writer(u)?,
                addr: None,
            };
            u.int_in_range(0..=3)?
        ]),
        7 => Message::Read(ReadRequest {
            id: u.int_in_range(0..=3)?,
            key: key(u)?,
        }),
        // A summary of the target's own context (its LOCAL updates, so it matches until the
        // target learns more), of a fuzzer-chosen context, or any 16 bytes.
        9 => Message::Summary(match u.int_in_range(0..=2u8)? {
            0 => fingerprint(&(1..=LOCAL).map(|n| Dot::new(ME, n)).collect()),
            1 => fingerprint(&context(u)?),
            _ => u.arbitrary()?,
        }),
        10 => Message::Mismatch,
        _ => Message::ReadReply(ReadReply {
            id: u.int_in_range(0..=3)?,
            part: u.int_in_range(0..=2)?,
            parts: u.int_in_range(0..=2)?,
            entry: if u.arbitrary()? { Some(entry(u)?) } else { None },
        }),
    })
}

fn entry(u: &mut Unstructured<'_>) -> Result<StateEntry> {
    Ok(StateEntry {
        key: key(u)?,
        touched: vv(u)?,
        object: object(u)?,
    })
}

/// Replica 1 is the target itself: messages may claim its dots.
fn writer(u: &mut Unstructured<'_>) -> Result<ReplicaId> {
    Ok(ReplicaId::new(u.int_in_range(1..=4)?))
}

/// Mostly small counters (near the target's own), sometimes anything at all.
fn counter(u: &mut Unstructured<'_>) -> Result<u64> {
    if u.ratio(1, 8)? {
        Ok(u.arbitrary::<u64>()?.max(1))
    } else {
        u.int_in_range(1..=8)
    }
}

fn dot(u: &mut Unstructured<'_>) -> Result<Dot> {
    Ok(Dot::new(writer(u)?, counter(u)?))
}

fn context(u: &mut Unstructured<'_>) -> Result<CausalContext> {
    (0..u.int_in_range(0..=6)?).map(|_| dot(u)).collect()
}

fn vv(u: &mut Unstructured<'_>) -> Result<VersionVector> {
    let mut vv = VersionVector::default();
    for _ in 0..u.int_in_range(0..=3)? {
        vv.raise(writer(u)?, counter(u)?);
    }
    Ok(vv)
}

fn key(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(u.choose(&["n", "s", "m", "k", "z"])?.to_string())
}

/// A well-formed object: the join of a few updates by fuzzer-chosen replicas.
fn object(u: &mut Unstructured<'_>) -> Result<Object> {
    let mut object = Object::Empty;
    let mut joined = Object::Empty;
    for _ in 0..u.int_in_range(1..=3)? {
        let by = writer(u)?;
        if let Ok(delta) = object.apply(by, &op(u, 0)?) {
            crdt_core::Crdt::merge(&mut joined, &delta);
        }
    }
    Ok(joined)
}

fn op(u: &mut Unstructured<'_>, depth: usize) -> Result<Op> {
    let element = |u: &mut Unstructured<'_>| -> Result<Vec<u8>> {
        Ok(u.choose(&["x", "y", "z"])?.as_bytes().to_vec())
    };
    Ok(match u.int_in_range(0..=7u8)? {
        0 => Op::Inc(u.int_in_range(1..=5)?),
        1 => Op::PnInc(u.int_in_range(1..=5)?),
        2 => Op::PnDec(u.int_in_range(1..=5)?),
        3 => Op::Add(element(u)?),
        4 => Op::Remove(element(u)?),
        5 => Op::Lww(
            HlcTimestamp::new(
                1_700_000_000_000 + u.int_in_range(0..=200_000)?,
                u.int_in_range(0..=3)?,
            ),
            element(u)?,
        ),
        6 => Op::Mv(element(u)?),
        _ if depth < 3 => Op::Update(key(u)?.into(), Box::new(op(u, depth + 1)?)),
        _ => Op::Delete(key(u)?.into()),
    })
}
