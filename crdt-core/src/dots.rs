//! The dot kernel shared by the observed-remove types: sets of dots and their join.

use alloc::vec::Vec;
use core::cmp::Ordering;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::causal::ascending_dots;
use crate::{CausalContext, Dot};

/// The dots that keep one element alive: almost always one, several after concurrent adds.
///
/// One dot is stored inline, so a typical set element costs no allocation of its own.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Dots {
    One(Dot),
    /// Two or more, ascending.
    Many(Vec<Dot>),
}

impl Dots {
    pub(crate) fn as_slice(&self) -> &[Dot] {
        match self {
            Dots::One(dot) => core::slice::from_ref(dot),
            Dots::Many(dots) => dots,
        }
    }

    /// The dots `ctx` has not seen: what survives a merge with a replica that lacks this element.
    pub(crate) fn unseen_by(&self, ctx: &CausalContext) -> Option<Dots> {
        match self {
            Dots::One(dot) => (!ctx.contains(*dot)).then_some(Dots::One(*dot)),
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
                let joined = join_sorted(
                    self.as_slice(),
                    our_ctx,
                    theirs.as_slice(),
                    their_ctx,
                    |d| *d,
                );
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
            1 => dots.pop().map(Dots::One),
            _ => Some(Dots::Many(dots)),
        }
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
        ser.collect_seq(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for Dots {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Dots::from_sorted(ascending_dots(de)?)
            .ok_or_else(|| serde::de::Error::custom("an element without dots"))
    }
}
