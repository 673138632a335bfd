//! Delta-state CRDTs for applications that keep working offline and merge later.
//!
//! Every type here is a join-semilattice: [`Crdt::merge`] is commutative, associative and
//! idempotent, takes the other replica by reference and never fails. Every mutator returns a
//! *delta*: a small value of the same type whose merge into any replica has the same effect as
//! merging the whole mutated state. Deltas may be delivered in any order, duplicated or lost (and
//! repaired later by a full-state merge); nothing assumes causal delivery.
//!
//! | type | what it holds |
//! | --- | --- |
//! | [`GCounter`] | a grow-only counter |
//! | [`PNCounter`] | a counter that can go up and down |
//! | [`OrSet`] | an add-wins observed-remove set, without tombstones |
//! | [`LwwRegister`] | a last-writer-wins register ordered by [`Hlc`] timestamp, then replica |
//! | [`MvRegister`] | a multi-value register that shows concurrent writes |
//! | [`OrMap`] | a map of nested CRDTs with add-wins keys |
//!
//! States encode deterministically (see [`codec`] and `docs/wire-format.md`), so equal states
//! have identical bytes.
//!
//! # Two replicas, offline, then merged
//!
//! ```
//! use crdt_core::{Crdt, OrSet, ReplicaId};
//!
//! let (laptop, phone) = (ReplicaId::new(1), ReplicaId::new(2));
//! let mut on_laptop = OrSet::new();
//! on_laptop.add(laptop, "milk");
//! let mut on_phone = on_laptop.clone(); // both synced once
//!
//! // Offline: the laptop removes milk while the phone adds eggs.
//! on_laptop.remove(&"milk");
//! let delta = on_phone.add(phone, "eggs");
//!
//! // They meet again: merge deltas or whole states, in any order.
//! on_laptop.merge(&delta);
//! on_phone.merge(&on_laptop);
//! assert_eq!(on_laptop, on_phone);
//! assert_eq!(on_phone.iter().collect::<Vec<_>>(), [&"eggs"]);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

extern crate alloc;

mod causal;
pub mod codec;
mod dot;
mod dots;
mod gcounter;
mod hlc;
mod lww;
mod mvreg;
mod ormap;
mod orset;
mod pncounter;
mod version_vector;

#[cfg(feature = "laws")]
pub mod laws;

pub use causal::CausalContext;
pub use codec::{decode, encode, DecodeError, FORMAT_VERSION};
pub use dot::{Dot, ReplicaId};
pub use gcounter::GCounter;
pub use hlc::{Hlc, HlcError, HlcTimestamp};
pub use lww::{LwwRegister, Stamp};
pub use mvreg::MvRegister;
pub use ormap::OrMap;
pub use orset::OrSet;
pub use pncounter::PNCounter;
pub use version_vector::VersionVector;

/// A state-based CRDT: a join-semilattice whose join is [`merge`](Crdt::merge).
///
/// `Default` is the bottom element (the state of a replica that has seen nothing).
pub trait Crdt: Clone + Default + PartialEq + core::fmt::Debug {
    /// Joins `other` into `self`.
    ///
    /// Total and deterministic: it never fails, never panics, and the result does not depend on
    /// which side is `self`. Merging the same state twice changes nothing.
    fn merge(&mut self, other: &Self);

    /// Returns the join of `self` and `other` without changing either.
    fn joined(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.merge(other);
        out
    }
}
