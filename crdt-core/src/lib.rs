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
mod cloud;
pub mod codec;
mod dot;
mod dot_index;
mod dots;
mod dotted;
mod entries;
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

/// A CRDT that can forget what it has observed: what [`OrMap`] needs of its values so that
/// removing a key resets it.
///
/// [`reset`](Reset::reset) discards every effect this state reflects and returns the delta
/// that does the same wherever it is merged; effects it has not observed (updates concurrent
/// with the reset, made elsewhere) survive, each with only its own effect. So a counter reset
/// at 5 and incremented by 1 concurrently elsewhere merges to 1, and a set cleared while an
/// element is added elsewhere merges to that element.
///
/// ```
/// use crdt_core::{Crdt, PNCounter, ReplicaId, Reset};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut here = PNCounter::new();
/// here.inc(a, 5);
/// let mut there = here.clone();
/// here.reset();
/// there.inc(b, 1); // concurrent with the reset
/// here.merge(&there);
/// assert_eq!(here.value(), 1);
/// ```
pub trait Reset: Crdt {
    /// Discards what this state has observed; returns the delta.
    fn reset(&mut self) -> Self;
}

/// A state that can be cut into smaller states whose join is the whole, so that a large state
/// can travel in messages of bounded size.
///
/// Each piece is a valid state on its own: merging the pieces into any replica, in any order and
/// at any time, has exactly the effect of merging the whole. (Cutting an observed-remove type is
/// subtle: every piece carries only the dots it holds, and the removed dots travel in a piece of
/// their own, so no piece removes what another adds.)
///
/// ```
/// use crdt_core::{Crdt, Decompose, OrSet, ReplicaId};
///
/// let mut set: OrSet<u32> = (0..100).map(|i| (ReplicaId::new(i as u64 % 3), i)).collect();
/// set.remove(&7);
/// let pieces = set.split(10);
/// assert!(pieces.len() > 10); // ten of ten elements, one for the removal
/// let mut rebuilt = OrSet::new();
/// for piece in pieces.iter().rev() {
///     rebuilt.merge(piece);
/// }
/// assert_eq!(rebuilt, set);
/// ```
pub trait Decompose: Crdt {
    /// Pieces holding at most `max_entries` entries each (at least one), whose join is `self`.
    ///
    /// Types without entries to cut (counters, registers) return one piece, a clone. So does a
    /// set whose removed dots are too scattered to list within a budget proportional to its
    /// size (which only a hostile peer's context produces).
    fn split(&self, max_entries: usize) -> alloc::vec::Vec<Self>;
}

macro_rules! indivisible {
    ($($ty:ty),*) => {$(
        impl Decompose for $ty {
            fn split(&self, _max_entries: usize) -> alloc::vec::Vec<Self> {
                alloc::vec![self.clone()]
            }
        }
    )*};
}
indivisible!(GCounter, PNCounter);
impl<T: Ord + Clone + core::fmt::Debug> Decompose for LwwRegister<T> {
    fn split(&self, _max_entries: usize) -> alloc::vec::Vec<Self> {
        alloc::vec![self.clone()]
    }
}
impl<T: Clone + PartialEq + core::fmt::Debug> Decompose for MvRegister<T> {
    fn split(&self, _max_entries: usize) -> alloc::vec::Vec<Self> {
        alloc::vec![self.clone()]
    }
}
