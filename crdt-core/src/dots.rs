//! The dot kernel shared by the observed-remove types: sets of dots and their join.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::num::NonZeroU64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::causal::ascending_dots;
use crate::{CausalContext, Dot, ReplicaId};

/// The dots that keep one element alive: almost always one, several after concurrent adds.
///
/// One dot is stored inline in 16 bytes (its counter, never 0, leaves room for the tag), so a
/// typical set element costs no allocation of its own and a set's tree nodes stay small.
#[derive(Clone, Debug)]
pub(crate) enum Dots {
    One(InlineDot),
    /// Two or more, ascending (or, only if built from a dot with counter 0, that one dot).
    /// Boxed so the variant takes 8 bytes and the enum 16 (a `Vec` or boxed slice would take
    /// 24): the rare case pays one more allocation.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Dot>>),
}

/// A dot whose counter is not 0, the space-saving form of [`Dot`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct InlineDot {
    replica: ReplicaId,
    counter: NonZeroU64,
}

impl InlineDot {
    fn dot(self) -> Dot {
        Dot::new(self.replica, self.counter.get())
    }
}

impl Dots {
    /// Just `dot`.
    #[inline]
    pub(crate) fn one(dot: Dot) -> Dots {
        match NonZeroU64::new(dot.counter) {
            Some(counter) => Dots::One(InlineDot {
                replica: dot.replica,
                counter,
            }),
            // Never made by this crate (counters start at 1), but representable.
            None => Dots::Many(Box::new(alloc::vec![dot])),
        }
    }

    /// Calls `f` with the dots as an ascending slice.
    pub(crate) fn with_slice<R>(&self, f: impl FnOnce(&[Dot]) -> R) -> R {
        match self {
            Dots::One(one) => f(&[one.dot()]),
            Dots::Many(dots) => f(dots),
        }
    }

    /// The dots, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Dot> + '_ {
        let (one, many) = match self {
            Dots::One(one) => (Some(one.dot()), None),
            Dots::Many(dots) => (None, Some(dots.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// The dot, if there is exactly one.
    #[inline]
    pub(crate) fn only(&self) -> Option<Dot> {
        match self {
            Dots::One(one) => Some(one.dot()),
            Dots::Many(dots) => match dots.as_slice() {
                [dot] => Some(*dot),
                _ => None,
            },
        }
    }

    /// How many dots.
    pub(crate) fn len(&self) -> usize {
        match self {
            Dots::One(_) => 1,
            Dots::Many(dots) => dots.len(),
        }
    }

    /// Whether `dot` is one of them.
    pub(crate) fn contains(&self, dot: Dot) -> bool {
        match self {
            Dots::One(one) => one.dot() == dot,
            Dots::Many(dots) => dots.binary_search(&dot).is_ok(),
        }
    }

    /// The dots without `dot` (`None` when nothing is left).
    pub(crate) fn without(&self, dot: Dot) -> Option<Dots> {
        Dots::from_sorted(self.iter().filter(|d| *d != dot).collect())
    }

    /// The dots `ctx` has not seen: what survives a merge with a replica that lacks this element.
    pub(crate) fn unseen_by(&self, ctx: &CausalContext) -> Option<Dots> {
        match self {
            Dots::One(one) => (!ctx.contains(one.dot())).then_some(Dots::One(*one)),
            Dots::Many(dots) => {
                Dots::from_sorted(dots.iter().copied().filter(|d| !ctx.contains(*d)).collect())
            }
        }
    }

    /// Joins `theirs` into `self` (see [`join_sorted`]); returns whether any dot is left.
    pub(crate) fn join(
        &mut self,
        our_ctx: &CausalContext,
        theirs: Option<&Dots>,
        their_ctx: &CausalContext,
    ) -> bool {
        match theirs {
            Some(theirs) if theirs == self => true,
            None => match self.unseen_by(their_ctx) {
                Some(kept) => {
                    *self = kept;
                    true
                }
                None => false,
            },
            Some(theirs) => {
                let joined = self.with_slice(|ours| {
                    theirs
                        .with_slice(|theirs| join_sorted(ours, our_ctx, theirs, their_ctx, |d| *d))
                });
                match Dots::from_sorted(joined) {
                    Some(dots) => {
                        *self = dots;
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// `None` for no dots; `dots` must be ascending.
    pub(crate) fn from_sorted(mut dots: Vec<Dot>) -> Option<Dots> {
        match dots.len() {
            0 => None,
            1 => dots.pop().map(Dots::one),
            _ => Some(Dots::Many(Box::new(dots))),
        }
    }
}

impl PartialEq for Dots {
    fn eq(&self, other: &Dots) -> bool {
        match (self, other) {
            (Dots::One(a), Dots::One(b)) => a.replica == b.replica && a.counter == b.counter,
            // By content: a dot with counter 0 has no inline form.
            _ => self.iter().eq(other.iter()),
        }
    }
}

impl Eq for Dots {}

impl core::hash::Hash for Dots {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.with_slice(|dots| dots.hash(state));
    }
}

/// The join of two dot-indexed stores, each under its causal context (the *dot kernel* of
/// Almeida, Shoker and Baquero, "Delta State Replicated Data Types", 2018).
///
/// An entry survives when both sides hold it, or when the side without it has never seen its dot
/// (so it is new to that side, not removed by it). Both inputs must be ascending by dot; so is
/// the output.
pub(crate) fn join_sorted<E: Clone>(
    ours: &[E],
    our_ctx: &CausalContext,
    theirs: &[E],
    their_ctx: &CausalContext,
    dot: impl Fn(&E) -> Dot,
) -> Vec<E> {
    let mut out = Vec::with_capacity(ours.len().max(theirs.len()));
    let (mut i, mut j) = (ours.iter().peekable(), theirs.iter().peekable());
    loop {
        match (i.peek(), j.peek()) {
            (Some(a), Some(b)) => match dot(a).cmp(&dot(b)) {
                Ordering::Equal => {
                    out.push((*a).clone());
                    i.next();
                    j.next();
                }
                Ordering::Less => {
                    if !their_ctx.contains(dot(a)) {
                        out.push((*a).clone());
                    }
                    i.next();
                }
                Ordering::Greater => {
                    if !our_ctx.contains(dot(b)) {
                        out.push((*b).clone());
                    }
                    j.next();
                }
            },
            (Some(a), None) => {
                if !their_ctx.contains(dot(a)) {
                    out.push((*a).clone());
                }
                i.next();
            }
            (None, Some(b)) => {
                if !our_ctx.contains(dot(b)) {
                    out.push((*b).clone());
                }
                j.next();
            }
            (None, None) => return out,
        }
    }
}

impl Serialize for Dots {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        self.with_slice(|dots| ser.collect_seq(dots))
    }
}

impl<'de> Deserialize<'de> for Dots {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Dots::from_sorted(ascending_dots(de)?)
            .ok_or_else(|| serde::de::Error::custom("an element without dots"))
    }
}
