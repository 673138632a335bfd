//! An OR-Set's elements with their dots: a B-tree, or one element held inline.

use alloc::collections::{btree_map, BTreeMap};
use core::borrow::Borrow;

use crate::dots::Dots;

/// The elements of an OR-Set with their dots, ascending.
///
/// The delta of an add holds one element. Kept inline, it costs no tree node: making an add
/// allocates nothing beyond the set's own insertion, and applying it reads no node of the
/// delta's. Whatever changes a state's elements works on the tree ([`tree_mut`]), so a
/// one-element delta becomes a tree the first time it is changed, as when deltas are joined.
/// How the elements are held never shows: equality and hashing go by content.
///
/// [`tree_mut`]: Entries::tree_mut
#[derive(Clone)]
pub(crate) enum Entries<T> {
    /// Any number of elements, none and one included.
    Tree(BTreeMap<T, Dots>),
    /// Exactly one.
    One(T, Dots),
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries::Tree(BTreeMap::new())
    }
}

impl<T> From<BTreeMap<T, Dots>> for Entries<T> {
    fn from(tree: BTreeMap<T, Dots>) -> Self {
        Entries::Tree(tree)
    }
}

impl<T> Entries<T> {
    /// How many elements.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Entries::Tree(tree) => tree.len(),
            Entries::One(..) => 1,
        }
    }

    /// Whether there is no element.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements and their dots, ascending.
    #[inline]
    pub(crate) fn iter(&self) -> Iter<'_, T> {
        match self {
            Entries::Tree(tree) => Iter::Tree(tree.iter()),
            Entries::One(value, dots) => Iter::One(Some((value, dots))),
        }
    }

    /// The elements, ascending.
    pub(crate) fn keys(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.iter().map(|(value, _)| value)
    }

    /// Each element's dots, in element order.
    pub(crate) fn values(&self) -> impl ExactSizeIterator<Item = &Dots> + '_ {
        self.iter().map(|(_, dots)| dots)
    }
}

impl<T: Ord> Entries<T> {
    /// The dots of `value`, if it is present.
    pub(crate) fn get<Q>(&self, value: &Q) -> Option<&Dots>
    where
        T: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self {
            Entries::Tree(tree) => tree.get(value),
            Entries::One(one, dots) => (one.borrow() == value).then_some(dots),
        }
    }

    /// Whether `value` is present.
    pub(crate) fn contains_key<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(value).is_some()
    }

    /// The elements as a tree, to be changed; an inline element moves into one first.
    #[inline]
    pub(crate) fn tree_mut(&mut self) -> &mut BTreeMap<T, Dots> {
        match self {
            Entries::Tree(tree) => tree,
            Entries::One(..) => {
                let tree = core::mem::take(self).into_tree();
                *self = Entries::Tree(tree);
                // A tree now: this call returns at the first arm.
                self.tree_mut()
            }
        }
    }

    /// The elements as a tree.
    pub(crate) fn into_tree(self) -> BTreeMap<T, Dots> {
        match self {
            Entries::Tree(tree) => tree,
            Entries::One(value, dots) => BTreeMap::from([(value, dots)]),
        }
    }
}

impl<T: PartialEq> PartialEq for Entries<T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Entries::Tree(a), Entries::Tree(b)) => a == b,
            _ => self.len() == other.len() && self.iter().eq(other.iter()),
        }
    }
}

impl<T: Eq> Eq for Entries<T> {}

impl<T: core::hash::Hash> core::hash::Hash for Entries<T> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for entry in self.iter() {
            entry.hash(state);
        }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Entries<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The iterator of [`Entries::iter`].
pub(crate) enum Iter<'a, T> {
    Tree(btree_map::Iter<'a, T, Dots>),
    One(Option<(&'a T, &'a Dots)>),
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = (&'a T, &'a Dots);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Tree(iter) => iter.next(),
            Iter::One(one) => one.take(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Tree(iter) => iter.size_hint(),
            Iter::One(one) => {
                let n = usize::from(one.is_some());
                (n, Some(n))
            }
        }
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, ReplicaId};

    fn dots(counter: u64) -> Dots {
        Dots::one(Dot::new(ReplicaId::new(1), counter))
    }

    fn hash_of(entries: &Entries<u8>) -> u64 {
        use core::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        entries.hash(&mut hasher);
        hasher.finish()
    }

    /// One element inline and the same element in a tree are the same entries.
    #[test]
    fn inline_and_tree_forms_agree() {
        let inline = Entries::One(7u8, dots(1));
        let tree = Entries::from(BTreeMap::from([(7u8, dots(1))]));
        assert_eq!(inline, tree);
        assert_eq!(tree, inline);
        assert_eq!(hash_of(&inline), hash_of(&tree));
        assert_eq!(format!("{inline:?}"), format!("{tree:?}"));
        assert_eq!(inline.iter().len(), 1);
        assert_eq!(inline.get(&7), Some(&dots(1)));
        assert_eq!(inline.get(&8), None);
        assert_ne!(inline, Entries::One(7u8, dots(2)));
        assert_ne!(inline, Entries::One(8u8, dots(1)));
        assert_ne!(inline, Entries::default());
        let two = Entries::from(BTreeMap::from([(7u8, dots(1)), (8, dots(2))]));
        assert_ne!(inline, two);
        assert_ne!(hash_of(&inline), hash_of(&two));
    }

    /// Changing an inline element moves it into a tree, keeping it.
    #[test]
    fn changing_an_inline_element_makes_a_tree() {
        let mut entries = Entries::One(7u8, dots(1));
        entries.tree_mut().insert(3, dots(2));
        assert!(matches!(entries, Entries::Tree(_)));
        assert!(entries.keys().eq([&3, &7]));
        assert_eq!(
            entries.into_tree(),
            BTreeMap::from([(3, dots(2)), (7, dots(1))])
        );
    }
}
