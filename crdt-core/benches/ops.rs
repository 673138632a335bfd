//! Criterion benchmarks of the four things every replica does: mutate, merge, encode, decode.
//!
//! ```text
//! cargo bench -p crdt-core --bench ops
//! ```

use std::hint::black_box;

use crdt_core::{codec, Crdt, GCounter, Hlc, LwwRegister, OrMap, OrSet, ReplicaId};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn replica(i: u64) -> ReplicaId {
    ReplicaId::new(i)
}

/// A set of `n` elements added round-robin by 8 replicas.
fn set_of(n: u64) -> OrSet<u64> {
    (0..n).map(|i| (replica(i % 8), i * 31)).collect()
}

fn mutate(c: &mut Criterion) {
    let mut g = c.benchmark_group("mutate");
    g.bench_function("gcounter_inc", |b| {
        let mut counter = GCounter::new();
        b.iter(|| black_box(counter.inc(replica(1), 1)));
    });
    g.bench_function("orset_add_to_10k", |b| {
        let mut set = set_of(10_000);
        let mut next = 1_000_000u64;
        b.iter(|| {
            next += 1;
            black_box(set.add(replica(1), next))
        });
    });
    g.bench_function("lww_set", |b| {
        let mut reg = LwwRegister::new();
        let mut clock = Hlc::new(60_000);
        b.iter(|| black_box(reg.set(clock.now(1_000), replica(1), 7u64)));
    });
    g.bench_function("ormap_update_counter", |b| {
        let mut map: OrMap<u32, GCounter> = OrMap::new();
        let mut key = 0u32;
        b.iter(|| {
            key = (key + 1) % 1_000;
            black_box(map.update(replica(1), key, |c| c.inc(replica(1), 1)))
        });
    });
    g.finish();
}

fn merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    let big = set_of(10_000);
    let mut other = set_of(10_000);
    for i in 0..1_000 {
        other.add(replica(9), 5_000_000 + i);
    }
    g.bench_function("orset_10k_with_10k", |b| {
        b.iter_batched(
            || big.clone(),
            |mut s| {
                s.merge(&other);
                s
            },
            BatchSize::LargeInput,
        );
    });
    let mut source = big.clone();
    let delta = source.add(replica(9), 42);
    g.bench_function("orset_10k_with_add_delta", |b| {
        b.iter_batched(
            || big.clone(),
            |mut s| {
                s.merge(&delta);
                s
            },
            BatchSize::LargeInput,
        );
    });
    // A remove delta names dots: the set looks them up in its dot index, built here by a
    // first merge (a re-add names the element's old dot).
    let mut indexed = big.clone();
    indexed.merge(&indexed.clone().add(replica(9), 31));
    let delta = indexed.clone().remove(&(31 * 5_000));
    g.bench_function("orset_10k_with_remove_delta", |b| {
        b.iter_batched(
            || indexed.clone(),
            |mut s| {
                s.merge(&delta);
                s
            },
            BatchSize::LargeInput,
        );
    });
    // A set of one element per replica (a device adding itself), indexed, taking a delta of
    // 1,000 adds by replicas new to it, their ids between the old ones: the index makes room for
    // each new replica (a sorted vector of replicas made this quadratic: ~2.5 s at 100k).
    let mut devices: OrSet<u64> = (0..10_000u64).map(|i| (replica(2 * i), i)).collect();
    devices.merge(&devices.clone().remove(&0));
    let mut source = OrSet::new();
    let mut newcomers = OrSet::new();
    for i in 0..1_000u64 {
        newcomers.merge(&source.add(replica(16 * i + 1), 20_000 + i));
    }
    g.bench_function("orset_10k_replicas_indexed_with_1k_new_replicas", |b| {
        b.iter_batched(
            || devices.clone(),
            |mut s| {
                s.merge(&newcomers);
                s
            },
            BatchSize::LargeInput,
        );
    });
    // An element added concurrently by 1,000 replicas holds a dot of each; its remove drops
    // them all through the index, in one pass over the element (one copy per dot was quadratic).
    let mut popular = big.clone();
    for r in 0..1_000u64 {
        popular.merge(&OrSet::new().add(replica(100 + r), 7));
    }
    popular.merge(&popular.clone().remove(&31));
    let delta = popular.clone().remove(&7);
    g.bench_function("orset_10k_with_remove_of_1k_dot_element", |b| {
        b.iter_batched(
            || popular.clone(),
            |mut s| {
                s.merge(&delta);
                s
            },
            BatchSize::LargeInput,
        );
    });
    // A map's key set is an OR-Set: a key's remove delta is found through its index too.
    let mut map: OrMap<u64, GCounter> = OrMap::new();
    for k in 0..10_000u64 {
        map.update(replica(k % 8), k * 31, |c| c.inc(replica(k % 8), 1));
    }
    map.merge(&map.clone().update(replica(9), 31, |c| c.inc(replica(9), 1)));
    let delta = map.clone().remove(&(31 * 5_000));
    g.bench_function("ormap_10k_with_key_remove_delta", |b| {
        b.iter_batched(
            || map.clone(),
            |mut m| {
                m.merge(&delta);
                m
            },
            BatchSize::LargeInput,
        );
    });
    let counters: Vec<GCounter> = (0..64)
        .map(|r| {
            let mut c = GCounter::new();
            c.inc(replica(r), r + 1);
            c
        })
        .collect();
    let full = counters.iter().fold(GCounter::new(), |a, c| a.joined(c));
    g.bench_function("gcounter_64_with_64", |b| {
        b.iter(|| {
            let mut x = full.clone();
            x.merge(black_box(&full));
            x
        });
    });
    g.finish();
}

fn codec_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let set = set_of(10_000);
    let bytes = codec::encode(&set);
    g.bench_function("encode_orset_10k", |b| {
        b.iter(|| codec::encode(black_box(&set)))
    });
    g.bench_function("decode_orset_10k", |b| {
        b.iter(|| codec::decode::<OrSet<u64>>(black_box(&bytes)))
    });
    g.finish();
}

criterion_group!(benches, mutate, merge, codec_benches);
criterion_main!(benches);
