//! Removing a map key resets it (observed-remove), the two scenarios a new user tries first.
//! Both failed with the earlier hide-only map: the first gave 6, the second {0, 2}.

use crdt_core::{Crdt, OrMap, OrSet, PNCounter, ReplicaId};

#[test]
fn a_removed_counter_starts_again_from_zero() {
    let a = ReplicaId::new(1);
    let mut m: OrMap<u64, PNCounter> = OrMap::new();
    m.update(a, 7, |c| c.inc(a, 5));
    m.remove(&7);
    m.update(a, 7, |c| c.inc(a, 1));
    assert_eq!(m.get(&7).map(PNCounter::value), Some(1));
}

#[test]
fn a_remove_discards_what_it_saw_and_keeps_a_concurrent_add() {
    let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
    let mut x: OrMap<&str, OrSet<u8>> = OrMap::new();
    let mut y = x.clone();
    // At A: add 2 under k, then remove k (the remove saw the add of 2).
    x.update(a, "k", |s| s.add(a, 2));
    x.remove(&"k");
    // At B, concurrently: add 0 under k.
    y.update(b, "k", |s| s.add(b, 0));

    let merged = x.joined(&y);
    assert_eq!(merged, y.joined(&x));
    let values: Vec<u8> = merged
        .get(&"k")
        .map_or(Vec::new(), |s| s.iter().copied().collect());
    assert_eq!(values, [0]);
}

#[test]
fn update_present_leaves_an_absent_key_alone() {
    let a = ReplicaId::new(1);
    let mut m: OrMap<&str, PNCounter> = OrMap::new();
    assert!(m.update_present(a, &"cart", |c| c.inc(a, 1)).is_none());
    assert!(!m.contains_key(&"cart"));
    m.update(a, "cart", |c| c.inc(a, 1));
    let delta = m.update_present(a, &"cart", |c| c.inc(a, 1));
    assert!(delta.is_some());
    assert_eq!(m.get(&"cart").map(PNCounter::value), Some(2));
}
