//! Arbitrary schedules of operations, merges and out-of-order delta deliveries on several
//! replicas of every type; panics on any broken law (see `crdt_core::laws`).
#![no_main]

use crdt_core::laws::check;
use crdt_core::{GCounter, LwwRegister, MvRegister, OrMap, OrSet, PNCounter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, schedule)) = data.split_first() else {
        return;
    };
    let result = match which % 10 {
        0 => check::<GCounter>(schedule),
        1 => check::<PNCounter>(schedule),
        2 => check::<OrSet<u8>>(schedule),
        3 => check::<LwwRegister<u8>>(schedule),
        4 => check::<MvRegister<u8>>(schedule),
        5 => check::<OrMap<u8, GCounter>>(schedule),
        6 => check::<OrMap<u8, OrSet<u8>>>(schedule),
        7 => check::<OrMap<u8, PNCounter>>(schedule),
        8 => check::<OrMap<u8, LwwRegister<u8>>>(schedule),
        _ => check::<OrMap<u8, OrMap<u8, MvRegister<u8>>>>(schedule),
    };
    if let Err(violation) = result {
        panic!("{violation}");
    }
});
