//! The law suite: every type, one line each (see `crdt_core::laws`).

use crdt_core::{GCounter, LwwRegister, MvRegister, OrMap, OrSet, PNCounter};

crdt_core::law_tests! {
    gcounter: GCounter,
    pncounter: PNCounter,
    orset: OrSet<u8>,
    lww_register: LwwRegister<u8>,
    mv_register: MvRegister<u8>,
    ormap_of_counters: OrMap<u8, GCounter>,
    ormap_of_sets: OrMap<u8, OrSet<u8>>,
    ormap_of_registers: OrMap<u8, MvRegister<u8>>,
    ormap_of_maps: OrMap<u8, OrMap<u8, PNCounter>>,
    ormap_of_pncounters: OrMap<u8, PNCounter>,
    ormap_of_lww: OrMap<u8, LwwRegister<u8>>,
    ormap_of_maps_of_sets: OrMap<u8, OrMap<u8, OrSet<u8>>>,
}
