//! Regression tests from a hostile review of typed handles, reset deltas and how they travel.
//! Each test failed on main at 7ec1950 for the cause in its comment; the fixes are in
//! `object.rs` (map keys counted twice, removed keys counted when cutting), `validate.rs`
//! (this replica's own counter totals and floors) and `node/handle.rs` (reads through a
//! non-map).

use std::time::Duration;

use crdt_core::{Dot, PNCounter, ReplicaId, Reset};
use crdt_net::message::DeltaEntry;
use crdt_net::node::{Identity, Node, NodeBuilder, NodeError};
use crdt_net::sim::{Sim, SimConfig};
use crdt_net::{Config, Message, Object, Op, Replica, MAX_COUNTER};
use tempfile::TempDir;

const A: ReplicaId = ReplicaId::new(1);
const B: ReplicaId = ReplicaId::new(2);

async fn start(builder: NodeBuilder) -> Node {
    tokio::time::timeout(Duration::from_secs(20), builder.start())
        .await
        .expect("node starts in time")
        .expect("node starts")
}

fn builder(dir: &TempDir) -> NodeBuilder {
    NodeBuilder::new(dir.path())
        .listen("127.0.0.1:0".parse().unwrap())
        .mdns(false)
        .gossip_interval(Duration::from_millis(100))
}

/// Two connected nodes that trust each other.
async fn pair() -> (Node, Node, TempDir, TempDir) {
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let key = |d: &TempDir| {
        Identity::load_or_create(d.path())
            .unwrap()
            .fingerprint()
            .unwrap()
    };
    let (ka, kb) = (key(&da), key(&db));
    let a = start(builder(&da).trust_key(kb)).await;
    let b = start(builder(&db).trust_key(ka).peer(a.local_addr())).await;
    (a, b, da, db)
}

/// Polls `node` for `key` for at most `wait`.
async fn arrives(node: &Node, key: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if node.get(key).await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// BUG: a write through a nested map handle is accepted, then never reaches any peer.
///
/// Cause: `Replica::update` (crdt-net/src/replica/mod.rs:372) bounds a write by
/// `Op::value_bytes` (crdt-net/src/object.rs:130-136), which counts each map key on the path
/// once; but an `OrMap` delta writes every key twice (once in `keys`, once in `values`,
/// crdt-core/src/ormap.rs:241-246). A key of 0.6 x `largest_value` passes the check and
/// makes a ~1.2 MiB delta: too large to push, so it goes by state transfer, where `fit`
/// cannot cut a map with one key, and the receiver refuses the oversized chunk
/// (`ProtocolError::TooLarge`) on every round.
///
/// Fix: bound what is sent, not the op: in `update`, measure the delta as `update_with`
/// already does (`fit(&delta, budget)` after applying to a copy, or count each map key twice
/// in `value_bytes`), and refuse with `UpdateError::TooLarge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_register_under_a_long_map_key_replicates() {
    let (a, b, _da, _db) = pair().await;
    let long_key = vec![7u8; 600_000]; // below largest_value (982,976 bytes)
    let write = a
        .map::<Vec<u8>>("doc")
        .register::<u8>(&long_key)
        .set(&1)
        .await;
    a.register::<u8>("control").set(&1).await.unwrap();
    assert!(
        arrives(&b, "control", Duration::from_secs(30)).await,
        "the nodes are connected"
    );
    // Either the writer refuses it with a typed error (its delta holds the key twice, too
    // large for a message) and keeps nothing, or it replicates.
    let (here, there) = match write {
        Err(NodeError::Update(crdt_net::UpdateError::TooLarge { .. })) => {
            (a.get("doc").await.is_some(), false)
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => (true, arrives(&b, "doc", Duration::from_secs(10)).await),
    };
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(here, there, "a write the node kept never reached its peer");
}

/// BUG: a map whose keys were mostly removed can no longer be transferred to a new replica.
///
/// Cause: `Object::entries` (crdt-net/src/object.rs:316-319) counts a map's *present* keys,
/// but since removing a key resets it, every removed key keeps a value entry (its reset
/// trace, with the key's bytes) that `OrMap::split` cuts too. `fit`
/// (crdt-net/src/replica/transfer.rs:447-451) returns a map with 0 or 1 present keys whole,
/// however large: 400 removed carts make an 8.4 KB piece sent in one chunk against a 4 KiB
/// limit, refused by the receiver every round; the replicas never converge. (The same count
/// feeds `estimated_len`, replica/mod.rs:991, which the read budget trusts, and `on_read`'s
/// `fit`, so reads of such a map send oversized replies too.)
///
/// Fix: count what `split` cuts: `Object::Map(m) => m.values_kept().count().max(1)` (and
/// likewise for `estimated_len`).
#[test]
fn a_map_whose_keys_were_removed_still_transfers() {
    let config = SimConfig {
        replicas: 2,
        max_message: 4096,
        max_log_bytes: 0, // the newcomer needs a state transfer
        eager_push: false,
        ..SimConfig::new(3)
    };
    let mut source = Replica::new(Config::new(config.id(0)));
    for k in 0..400u32 {
        let cart = format!("cart-{k:06}").into_bytes();
        let add = Op::Update(cart.clone(), Box::new(Op::PnInc(1)));
        source.update("carts", &add).unwrap();
        source.update("carts", &Op::Delete(cart)).unwrap();
    }
    let durable = source.durable().clone();
    let mut sim = Sim::with_states(config, |i| {
        if i == 0 {
            durable.clone()
        } else {
            Default::default()
        }
    });
    let converged = sim.run_until_converged(30_000);
    assert_eq!(
        sim.stats().protocol_errors,
        0,
        "largest message {} bytes",
        sim.stats().largest_message
    );
    assert!(converged.is_some(), "the replicas never converge");
}

/// BUG: one message from a peer disables this replica's counter for good.
///
/// Cause: validation bounds a counter's totals and floors only by `MAX_COUNTER`
/// (crdt-net/src/replica/validate.rs:244-282, `Claims::object`/`Claims::total`), even for this
/// replica's own id, whose total only this replica can advance (the dot analogue is refused as
/// `ForgedDot`). A reset delta claiming our floor at `MAX_COUNTER` is accepted, and every
/// increment we make afterwards is hidden below it (`GCounter::contribution` is
/// `counts - floors`, saturating): the counter is stuck, and the increments that could lift
/// it past the floor are refused with `UpdateError::CounterLimit`. (Forging our total instead
/// of our floor makes the next increment fail with `CounterLimit` at once.)
///
/// Fix: in `Claims::object`, refuse a total or floor of `me` above this replica's own total
/// in the same counter (walk the local object at the delta's key alongside the delta; an
/// absent counter is 0), as `ForgedDot`. Alternatively/additionally `GCounter::inc` could
/// continue from `max(count, floor)` so an own increment is never hidden.
#[test]
fn a_peer_cannot_hide_our_increments_with_a_forged_floor() {
    let mut a = Replica::new(Config::new(A).with_peer(B));
    a.update("stock", &Op::PnInc(1)).unwrap();
    let mut forged = PNCounter::new();
    forged.inc(A, MAX_COUNTER); // a total of ours we never reached
    let reset = forged.reset(); // floors only: {A: 2^48}
    let message = Message::Deltas(vec![DeltaEntry {
        dot: Dot::new(B, 1),
        key: "stock".into(),
        delta: Object::PNCounter(reset),
    }])
    .encode();
    if a.handle_message(0, B, &message).is_err() {
        return; // refused: fixed
    }
    let value = |a: &Replica| match a.get("stock") {
        Some(Object::PNCounter(c)) => c.value(),
        other => panic!("{other:?}"),
    };
    let before = value(&a);
    let inc = a.update("stock", &Op::PnInc(5));
    assert!(inc.is_ok(), "our increment is refused: {inc:?}");
    assert_eq!(
        value(&a),
        before + 5,
        "our own increment of 5 does not show: a peer's forged floor hides it"
    );
}

/// BUG: a nested handle reads "empty" through a parent that is not a map, where every other
/// read and write of the same place reports the wrong type.
///
/// Cause: `Handle::object` (crdt-net/src/node/handle.rs:177-183) maps a non-map object on the
/// path (`_ => None`) to "nothing written here", so `elements()` answers `Ok([])`, `get()`
/// `Ok(None)`, `value()` `Ok(0)`; meanwhile `add` through the same handle fails with a type
/// mismatch and `node.map("x").keys()` with `NodeError::WrongType`. An application reading
/// the wrong key silently sees an empty value.
///
/// Fix: make the walk return `Result<Option<Object>, NodeError>`: an absent or removed key
/// is `Ok(None)`, an object on the path that is not a map is `Err(wrong_type(obj, "map"))`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_read_through_a_non_map_reports_the_wrong_type() {
    let dir = TempDir::new().unwrap();
    let node = start(builder(&dir)).await;
    node.counter("x").inc(1).await.unwrap();
    let nested = node.map::<u8>("x").set::<u8>(&1);
    let read = nested.elements().await;
    let write = nested.add(&1).await;
    let keys = node.map::<u8>("x").keys().await;
    node.shutdown().await;
    assert!(write.is_err() && matches!(keys, Err(NodeError::WrongType(_))));
    assert!(
        matches!(read, Err(NodeError::WrongType(_))),
        "read through a counter gave {read:?}"
    );
}

/// The grow-only counter and multi-value register handles between two real nodes: increments
/// from both add up; writes made while the nodes cannot talk are both kept, and a write that
/// has seen them both replaces them. The sync getters read each node's committed state, and
/// read another type under the key as the typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_only_counters_and_multi_value_registers_between_two_nodes() {
    let (a, b, _da, _db) = pair().await;
    a.gcounter("views").inc(2).await.unwrap();
    b.gcounter("views").inc(3).await.unwrap();
    let wait = Duration::from_secs(20);
    let deadline = tokio::time::Instant::now() + wait;
    while a.gcounter("views").value_now().unwrap() != 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.gcounter("views").value_now().unwrap(), 5);

    a.isolate_from(&[b.id()]);
    b.isolate_from(&[a.id()]);
    a.mv_register::<u32>("title").set(&1).await.unwrap();
    b.mv_register::<u32>("title").set(&2).await.unwrap();
    a.isolate_from(&[]);
    b.isolate_from(&[]);
    let both = |node: &Node| {
        let mut values = node.mv_register::<u32>("title").values_now().unwrap();
        values.sort();
        values
    };
    let deadline = tokio::time::Instant::now() + wait;
    while (both(&a) != [1, 2] || both(&b) != [1, 2]) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((both(&a), both(&b)), (vec![1, 2], vec![1, 2]));
    a.mv_register::<u32>("title").set(&3).await.unwrap();
    let deadline = tokio::time::Instant::now() + wait;
    while both(&b) != [3] && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(both(&b), [3]);

    let wrong = a.mv_register::<u32>("views").values_now();
    let also_wrong = a.gcounter("title").value_now();
    a.shutdown().await;
    b.shutdown().await;
    assert!(matches!(wrong, Err(NodeError::WrongType(_))), "{wrong:?}");
    assert!(
        matches!(also_wrong, Err(NodeError::WrongType(_))),
        "{also_wrong:?}"
    );
}
