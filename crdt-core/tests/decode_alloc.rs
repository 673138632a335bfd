//! Decoding hostile bytes allocates at most a bounded multiple of the input length.
//!
//! Its own test binary, because the counting allocator sees every thread of the process.

use std::alloc::System;

use crdt_core::{
    codec, CausalContext, GCounter, LwwRegister, MvRegister, OrMap, OrSet, PNCounter, VersionVector,
};
use serde::de::DeserializeOwned;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The bound the wire-format document promises: bytes allocated per input byte, plus a constant
/// (a B-tree node holds eleven values inline, so one small map of maps of counters allocates
/// a few KiB however few its input bytes).
const PER_INPUT_BYTE: usize = 128;
const CONSTANT: usize = 4096;

fn allocated_while_decoding<T: DeserializeOwned>(bytes: &[u8]) -> usize {
    let region = Region::new(GLOBAL);
    let decoded = codec::decode::<T>(bytes);
    let stats = region.change();
    drop(decoded);
    stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize
}

fn check_all(bytes: &[u8], worst: &mut f64) {
    let sizes = [
        allocated_while_decoding::<GCounter>(bytes),
        allocated_while_decoding::<PNCounter>(bytes),
        allocated_while_decoding::<VersionVector>(bytes),
        allocated_while_decoding::<CausalContext>(bytes),
        allocated_while_decoding::<OrSet<u64>>(bytes),
        allocated_while_decoding::<OrSet<String>>(bytes),
        allocated_while_decoding::<LwwRegister<String>>(bytes),
        allocated_while_decoding::<MvRegister<String>>(bytes),
        allocated_while_decoding::<OrMap<String, GCounter>>(bytes),
        allocated_while_decoding::<OrMap<u64, OrSet<u64>>>(bytes),
    ];
    for size in sizes {
        assert!(
            size <= PER_INPUT_BYTE * bytes.len() + CONSTANT,
            "{size} bytes allocated decoding {} input bytes: {bytes:02x?}",
            bytes.len()
        );
        *worst = worst.max(size as f64 / bytes.len().max(1) as f64);
    }
}

// One test function: a second one would run on another thread and its allocations would count.
#[test]
fn decoding_allocates_a_bounded_multiple_of_the_input() {
    let mut worst = 0.0;
    hostile_length_prefixes(&mut worst);
    random_and_valid_inputs(&mut worst);
    println!("worst case: {worst:.1} bytes allocated per input byte");
}

fn hostile_length_prefixes(worst: &mut f64) {
    // Every collection position claiming u32::MAX or u64::MAX elements.
    let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let huge64 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    for prefix_len in 0..6 {
        for claim in [&huge[..], &huge64[..]] {
            let mut bytes = vec![codec::FORMAT_VERSION];
            bytes.extend(std::iter::repeat_n(0u8, prefix_len));
            bytes.extend_from_slice(claim);
            bytes.extend_from_slice(&[1, 1, 1, 1]);
            check_all(&bytes, worst);
        }
    }
}

fn random_and_valid_inputs(worst: &mut f64) {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let len = rng.usize(1..64);
        let mut bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
        bytes[0] = codec::FORMAT_VERSION;
        check_all(&bytes, worst);
    }
    // Large valid states: the densest legitimate input.
    let mut set = OrSet::new();
    for i in 0..10_000u64 {
        set.add(crdt_core::ReplicaId::new(i % 7), i);
    }
    check_all(&codec::encode(&set), worst);
}
