//! Arbitrary bytes as a peer's messages to a replica holding data: no panic, a refused message
//! leaves the stored state exactly as it was, and what the replica commits to its store is
//! exactly what it holds.
#![no_main]

use crdt_core::ReplicaId;
use crdt_net::store::MemStore;
use crdt_net::{Config, Op, Replica};
use libfuzzer_sys::fuzz_target;

fn replica() -> (Replica, MemStore) {
    let mut r = Replica::new(Config::new(ReplicaId::new(1)).with_peer(ReplicaId::new(2)));
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
    let (mut r, mut store) = replica();
    // Several messages per input, split at 0xFE bytes, so sequences (chunks then done) happen.
    for (i, message) in data.split(|b| *b == 0xfe).enumerate() {
        let mut bytes = vec![crdt_net::PROTOCOL_VERSION];
        bytes.extend_from_slice(message);
        let before = r.durable().clone();
        if r.handle_message(i as u64, ReplicaId::new(2), &bytes).is_err() {
            assert_eq!(r.durable(), &before);
        }
        r.handle_timeout(i as u64 * 1_000);
        assert!(r.persist(&mut store).is_ok());
        assert_eq!(store.durable().seen, r.durable().seen);
        assert_eq!(store.durable().touched, r.durable().touched);
        let live = |d: &crdt_net::Durable| {
            d.objects.iter().filter(|(_, o)| **o != crdt_net::Object::Empty).count()
        };
        assert_eq!(live(store.durable()), live(r.durable()));
        while r.poll_transmit().is_some() {}
    }
});
