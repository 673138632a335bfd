//! The dot cloud of a causal context: the dots seen beyond a gap.

use alloc::collections::BTreeSet;

use crate::{Dot, ReplicaId};

/// A sorted set of dots that holds one dot inline: the context of a delta (one add, one
/// remove) is usually a single dot beyond its replica's prefix, and this spares every such
/// delta a tree node.
///
/// Equality and hashing go by content, so how the set is held never shows.
#[derive(Clone, Default)]
pub(crate) struct Cloud(Repr);

#[derive(Clone, Default)]
enum Repr {
    #[default]
    Empty,
    One(Dot),
    /// Two or more.
    Many(BTreeSet<Dot>),
}

impl Cloud {
    pub(crate) const fn new() -> Self {
        Cloud(Repr::Empty)
    }

    #[inline]
    pub(crate) fn contains(&self, dot: &Dot) -> bool {
        match &self.0 {
            Repr::Empty => false,
            Repr::One(one) => one == dot,
            Repr::Many(set) => set.contains(dot),
        }
    }

    #[inline]
    pub(crate) fn insert(&mut self, dot: Dot) {
        match &mut self.0 {
            Repr::Empty => self.0 = Repr::One(dot),
            Repr::One(one) if *one == dot => {}
            Repr::One(one) => self.0 = Repr::Many([*one, dot].into_iter().collect()),
            Repr::Many(set) => {
                set.insert(dot);
            }
        }
    }

    pub(crate) fn remove(&mut self, dot: &Dot) {
        match &mut self.0 {
            Repr::Empty => {}
            Repr::One(one) => {
                if one == dot {
                    self.0 = Repr::Empty;
                }
            }
            Repr::Many(set) => {
                set.remove(dot);
                self.shrink();
            }
        }
    }

    /// Keeps the dots `keep` says to, visiting them in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Dot) -> bool) {
        match &mut self.0 {
            Repr::Empty => {}
            Repr::One(one) => {
                if !keep(one) {
                    self.0 = Repr::Empty;
                }
            }
            Repr::Many(set) => {
                set.retain(keep);
                self.shrink();
            }
        }
    }

    /// Back to the inline forms once a tree holds one dot or none.
    fn shrink(&mut self) {
        if let Repr::Many(set) = &self.0 {
            match set.len() {
                0 => self.0 = Repr::Empty,
                1 => self.0 = set.first().map_or(Repr::Empty, |d| Repr::One(*d)),
                _ => {}
            }
        }
    }

    /// The lowest dot of `replica`.
    pub(crate) fn first_of(&self, replica: ReplicaId) -> Option<Dot> {
        match &self.0 {
            Repr::Empty => None,
            Repr::One(one) => (one.replica == replica).then_some(*one),
            Repr::Many(set) => set.range(Self::all_of(replica)).next().copied(),
        }
    }

    /// The highest dot of `replica`.
    #[inline]
    pub(crate) fn last_of(&self, replica: ReplicaId) -> Option<Dot> {
        match &self.0 {
            Repr::Empty => None,
            Repr::One(one) => (one.replica == replica).then_some(*one),
            Repr::Many(set) => set.range(Self::all_of(replica)).next_back().copied(),
        }
    }

    fn all_of(replica: ReplicaId) -> core::ops::RangeInclusive<Dot> {
        Dot::new(replica, 0)..=Dot::new(replica, u64::MAX)
    }

    /// The dots, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Dot> + '_ {
        let (one, many) = match &self.0 {
            Repr::Empty => (None, None),
            Repr::One(one) => (Some(*one), None),
            Repr::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            Repr::Empty => 0,
            Repr::One(_) => 1,
            Repr::Many(set) => set.len(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self.0, Repr::Empty)
    }

    pub(crate) fn clear(&mut self) {
        self.0 = Repr::Empty;
    }
}

impl Extend<Dot> for Cloud {
    fn extend<I: IntoIterator<Item = Dot>>(&mut self, dots: I) {
        for dot in dots {
            self.insert(dot);
        }
    }
}

impl FromIterator<Dot> for Cloud {
    fn from_iter<I: IntoIterator<Item = Dot>>(dots: I) -> Self {
        let mut cloud = Cloud::new();
        cloud.extend(dots);
        cloud
    }
}

impl PartialEq for Cloud {
    fn eq(&self, other: &Cloud) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Cloud {}

impl core::hash::Hash for Cloud {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        self.iter().for_each(|d| d.hash(state));
    }
}

impl core::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_tree_forms_agree() {
        let d = |r, c| Dot::new(ReplicaId::new(r), c);
        let mut cloud = Cloud::new();
        cloud.insert(d(1, 5));
        let one = cloud.clone();
        cloud.insert(d(2, 3));
        cloud.insert(d(1, 9));
        assert_eq!(cloud.len(), 3);
        assert_eq!(cloud.first_of(ReplicaId::new(1)), Some(d(1, 5)));
        assert_eq!(cloud.last_of(ReplicaId::new(1)), Some(d(1, 9)));
        assert_eq!(cloud.last_of(ReplicaId::new(3)), None);
        cloud.remove(&d(2, 3));
        cloud.retain(|x| x.counter != 9);
        assert_eq!(cloud, one);
        assert!(matches!(cloud.0, Repr::One(_)));
        assert_eq!(cloud.iter().collect::<alloc::vec::Vec<_>>(), [d(1, 5)]);
        cloud.remove(&d(1, 5));
        assert!(cloud.is_empty() && cloud == Cloud::new());
    }
}
