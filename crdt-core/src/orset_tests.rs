//! Unit tests of the OR-Set: the dot index against the full merge pass, and huge gaps.

use super::*;

/// Live dots `(r, 1)` and `(r, 2^40)` in a context that has seen every dot up to there:
/// the removed dots between them are too many to list,
/// and finding that out must not cost listing them (the budget is checked first).
#[test]
fn a_huge_gap_between_live_dots_is_not_listed() {
    let r = ReplicaId::new(7);
    let far = 1u64 << 40;
    let mut entries = BTreeMap::new();
    for (value, counter) in [("a", 1), ("b", far), ("c", far + 1)] {
        let dots = Dots::from_sorted(alloc::vec![Dot::new(r, counter)]);
        entries.insert(value, dots.expect("one dot"));
    }
    // Every dot up to far + 1 seen: those between are removed adds.
    let mut ctx = CausalContext::new();
    ctx.insert_range(r, 1, far + 1, 0);
    let set = OrSet::from_parts(entries, ctx);
    assert!(set.removed_dots().is_none());
    // Decompose falls back to the whole set.
    assert_eq!(set.split(1), alloc::vec![set.clone()]);
}

/// `a` merged with `b` by the full pass only: the reference the small-delta path must match.
fn full(a: &OrSet<u64>, b: &OrSet<u64>) -> OrSet<u64> {
    let mut out = a.clone();
    out.merge_full(b);
    out
}

fn indexed(set: &OrSet<u64>) -> bool {
    matches!(set.index, Index::Built(_))
}

/// Three replicas of a 300-element set make random adds, re-adds, removes and (rarely) clears,
/// and deliver each other's deltas in random order, duplicated, while some replicas are replaced
/// by clones or by their decoded bytes (which drop the index). After every step each replica
/// must equal, and encode as, its reference, which merges only by the full pass.
#[test]
fn small_merges_match_the_full_pass_on_large_sets() {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut used_index = 0;
    for _ in 0..12 {
        let mut base = OrSet::new();
        for i in 0..300u64 {
            base.add(ReplicaId::new(i % 3), i * 3);
        }
        let mut replicas = alloc::vec![base.clone(), base.clone(), base];
        let mut reference = replicas.clone();
        let mut deltas: Vec<OrSet<u64>> = Vec::new();
        for _ in 0..300 {
            let r = rng.usize(0..3);
            let made = match rng.u8(0..20) {
                0..=6 => Some(replicas[r].add(ReplicaId::new(r as u64), rng.u64(0..1000))),
                7..=12 => {
                    let n = replicas[r].len();
                    let victim = replicas[r].iter().nth(rng.usize(0..n.max(1))).copied();
                    victim.map(|v| replicas[r].remove(&v))
                }
                13 if rng.u8(0..10) == 0 => Some(replicas[r].clear()),
                14 => {
                    // Replaced by a clone or by its decoded bytes.
                    replicas[r] = if rng.bool() {
                        replicas[r].clone()
                    } else {
                        crate::decode(&crate::encode(&replicas[r])).expect("round trip")
                    };
                    None
                }
                _ => {
                    if let Some(d) = deltas.get(rng.usize(0..deltas.len().max(1))) {
                        replicas[r].merge(d);
                        reference[r] = full(&reference[r], d);
                        used_index += usize::from(indexed(&replicas[r]));
                    }
                    None
                }
            };
            if let Some(d) = made {
                reference[r] = full(&reference[r], &d);
                deltas.push(d);
            }
            assert_eq!(replicas[r], reference[r]);
            assert_eq!(crate::encode(&replicas[r]), crate::encode(&reference[r]));
        }
        // Every delta everywhere, in a random order: all converge.
        for replica in &mut replicas {
            rng.shuffle(&mut deltas);
            deltas.iter().for_each(|d| replica.merge(d));
        }
        let converged = deltas
            .iter()
            .fold(reference[0].clone(), |acc, d| full(&acc, d));
        for replica in &replicas {
            assert_eq!(replica, &converged);
        }
    }
    assert!(used_index > 100, "the index path ran {used_index} times");
}

/// Removing most of an indexed set one delta at a time: the index is dropped once mostly stale
/// and rebuilt on the next remove, and every step removes exactly the named element.
#[test]
fn an_index_gone_stale_is_rebuilt() {
    let mut writer = OrSet::new();
    for i in 0..200u64 {
        writer.add(ReplicaId::new(i % 2), i);
    }
    let mut reader = writer.clone();
    let mut dropped = false;
    for i in 0..190u64 {
        let delta = writer.remove(&i);
        reader.merge(&delta);
        dropped |= !indexed(&reader);
        assert_eq!(reader, writer);
        assert!(!reader.contains(&i) && reader.contains(&(i + 1)));
        if let Index::Built(index) = &reader.index {
            assert!(!index.wants_rebuild());
        }
    }
    assert!(dropped, "the index was never dropped");
}

/// A set holding one dot on two elements (only a replica reusing a dot makes one) cannot be
/// indexed: a remove of that dot walks the set and removes it from both, as the full pass does.
#[test]
fn a_dot_on_two_elements_disables_the_index() {
    let r = ReplicaId::new(1);
    let mut entries = BTreeMap::new();
    for i in 0..100u64 {
        entries.insert(i, Dots::one(Dot::new(r, i + 1)));
    }
    entries.insert(1000, Dots::one(Dot::new(r, 5)));
    let mut ctx = CausalContext::new();
    ctx.insert_range(r, 1, 100, 0);
    let mut set = OrSet::from_parts(entries, ctx);
    let remove = OrSet::<u64>::from_parts(BTreeMap::new(), [Dot::new(r, 5)].into_iter().collect());
    let expected = full(&set, &remove);
    set.merge(&remove);
    assert!(matches!(set.index, Index::Unusable));
    assert_eq!(set, expected);
    assert!(!set.contains(&4) && !set.contains(&1000));
}
