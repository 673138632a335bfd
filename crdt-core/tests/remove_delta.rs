//! A remove delta names dots, not elements: applied to a large set (or a large map's keys) it
//! must remove exactly the element it names, and a set that has built its dot index must behave
//! exactly as its clones and as copies decoded from its bytes (which hold no index).

use crdt_core::{codec, Crdt, GCounter, OrMap, OrSet, ReplicaId};

fn big_set(n: u64) -> OrSet<u64> {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut set = OrSet::new();
    for i in 0..n {
        set.add(ReplicaId::new(i % 4), rng.u64(..));
    }
    set
}

#[test]
fn a_remove_delta_removes_exactly_its_element_from_a_large_set() {
    let mut reader = big_set(20_000);
    let before: Vec<u64> = reader.iter().copied().collect();
    let mut writer = reader.clone();
    for victim in [before[0], before[777], before[19_999]] {
        let delta = writer.remove(&victim);
        reader.merge(&delta);
        assert!(!reader.contains(&victim));
        assert_eq!(reader, writer);
    }
    let after: Vec<u64> = reader.iter().copied().collect();
    let expected: Vec<u64> = before
        .iter()
        .copied()
        .filter(|e| ![before[0], before[777], before[19_999]].contains(e))
        .collect();
    assert_eq!(after, expected);
    // The same delta again, or a remove of something already gone, changes nothing.
    let again = reader.clone();
    reader.merge(&writer.remove(&before[777]));
    assert_eq!(reader, again);
}

#[test]
fn an_indexed_set_its_clone_and_its_decoded_copy_merge_alike() {
    let mut writer = big_set(5_000);
    let mut indexed = writer.clone();
    let members: Vec<u64> = writer.iter().copied().collect();
    // The first remove delta builds the reader's index.
    indexed.merge(&writer.remove(&members[1]));
    let mut cloned = indexed.clone();
    let mut decoded: OrSet<u64> =
        codec::decode(&codec::encode(&indexed)).expect("valid bytes decode");
    let mut rng = fastrand::Rng::with_seed(9);
    let mut deltas = Vec::new();
    for i in 0..400u64 {
        let delta = match i % 3 {
            0 => writer.add(ReplicaId::new(rng.u64(0..6)), rng.u64(..)),
            1 => writer.add(ReplicaId::new(2), members[rng.usize(0..members.len())]),
            _ => writer.remove(&members[rng.usize(0..members.len())]),
        };
        deltas.push(delta);
    }
    // Delivered out of order (late dots), some twice.
    rng.shuffle(&mut deltas);
    for (i, delta) in deltas.iter().enumerate() {
        for state in [&mut indexed, &mut cloned, &mut decoded] {
            state.merge(delta);
            if i % 7 == 0 {
                state.merge(delta);
            }
        }
        assert_eq!(indexed, cloned);
        assert_eq!(indexed, decoded);
        assert_eq!(codec::encode(&indexed), codec::encode(&decoded));
    }
    assert_eq!(indexed, writer);
    // And merged with each other, in both directions, as whole states.
    assert_eq!(indexed.joined(&decoded), decoded.joined(&cloned));
    assert_eq!(indexed.joined(&decoded), writer);
}

#[test]
fn a_key_remove_delta_removes_exactly_its_key_from_a_large_map() {
    let a = ReplicaId::new(1);
    let mut writer: OrMap<u64, GCounter> = OrMap::new();
    for k in 0..3_000u64 {
        writer.update(ReplicaId::new(k % 3), k, |c| c.inc(a, k + 1));
    }
    let mut reader = writer.clone();
    for victim in [0u64, 1_500, 2_999] {
        let delta = writer.remove(&victim);
        reader.merge(&delta);
        assert!(!reader.contains_key(&victim));
        assert_eq!(reader, writer);
    }
    assert_eq!(reader.len(), 2_997);
    assert_eq!(reader.get(&1_499).map(GCounter::value), Some(1_500));
    // A removed key updated again starts from zero.
    reader.merge(&writer.update(a, 1_500, |c| c.inc(a, 2)));
    assert_eq!(reader.get(&1_500).map(GCounter::value), Some(2));
}
