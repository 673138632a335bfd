//! Arbitrary bytes into every type's decoder: no panic, and allocation bounded by the input
//! (at most 128 bytes per input byte plus 4 KiB, the bound docs/wire-format.md states).
#![no_main]

use std::alloc::System;

use crdt_core::{
    codec, CausalContext, GCounter, LwwRegister, MvRegister, OrMap, OrSet, PNCounter,
    VersionVector,
};
use libfuzzer_sys::fuzz_target;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn decode<T>(bytes: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let region = Region::new(GLOBAL);
    let decoded = codec::decode::<T>(bytes);
    let stats = region.change();
    let allocated = stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize;
    assert!(
        allocated <= 128 * bytes.len() + 4096,
        "{allocated} bytes allocated for {} input bytes",
        bytes.len()
    );
    // Whatever decodes is a valid value: it re-encodes and decodes to itself.
    if let Ok(value) = decoded {
        let again = codec::decode::<T>(&codec::encode(&value));
        assert_eq!(again.as_ref(), Ok(&value));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = Vec::with_capacity(rest.len() + 1);
    bytes.push(codec::FORMAT_VERSION);
    bytes.extend_from_slice(rest);
    // Also feed the raw input, so version-byte handling is fuzzed too.
    match which % 10 {
        0 => decode::<GCounter>(&bytes),
        1 => decode::<PNCounter>(&bytes),
        2 => decode::<VersionVector>(&bytes),
        3 => decode::<CausalContext>(&bytes),
        4 => decode::<OrSet<u64>>(&bytes),
        5 => decode::<OrSet<String>>(&bytes),
        6 => decode::<LwwRegister<String>>(&bytes),
        7 => decode::<MvRegister<String>>(&bytes),
        8 => decode::<OrMap<String, GCounter>>(&bytes),
        _ => decode::<OrMap<u64, OrSet<u64>>>(&bytes),
    }
    decode::<OrMap<u8, OrMap<u8, PNCounter>>>(data);
});
