//! The observed-remove map of nested CRDTs.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dotted;

use crate::{Crdt, Decompose, OrSet, ReplicaId, Reset};

/// An observed-remove map from keys to nested CRDTs (counters, sets, registers, other maps).
///
/// Updating a key makes it present. **Removing a key resets it**: the remove discards exactly
/// the updates of that key it has observed, at any nesting depth (each value is
/// [`Reset`]), so a key removed and updated again starts from bottom. An update concurrent
/// with the remove survives it, with only its own effect: the key stays, showing that update.
///
/// ```
/// use crdt_core::{Crdt, OrMap, PNCounter, ReplicaId};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut stock: OrMap<&str, PNCounter> = OrMap::new();
/// stock.update(a, "apples", |c| c.inc(a, 5));
/// stock.remove(&"apples");
/// stock.update(a, "apples", |c| c.inc(a, 1));
/// assert_eq!(stock.get(&"apples").map(PNCounter::value), Some(1)); // not 6
///
/// let mut other = stock.clone();
/// stock.remove(&"apples");
/// other.update(b, "apples", |c| c.inc(b, 2)); // concurrent with the remove
/// stock.merge(&other);
/// assert_eq!(stock.get(&"apples").map(PNCounter::value), Some(2)); // only its own effect
/// ```
///
/// A removed key keeps a small trace in the value map (what its reset observed: per-writer
/// floors, or a causal context), which is what lets a late update from before the remove be
/// recognised and discarded. (Every updated key keeps a value entry, so the entries are a
/// function of the updates seen and equal maps are identical.)
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct OrMap<K, V> {
    keys: OrSet<K>,
    /// An entry for every key ever updated (present or hidden).
    values: BTreeMap<K, V>,
}

impl<K, V> Default for OrMap<K, V> {
    fn default() -> Self {
        OrMap {
            keys: OrSet::default(),
            values: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone + core::fmt::Debug, V: Reset> OrMap<K, V> {
    /// The empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `f` to the value of `key` (bottom if absent) on behalf of `replica`, making the
    /// key present. `f` mutates the value and returns the value's delta, as every mutator in
    /// this crate does; the map's delta wraps it.
    pub fn update<F>(&mut self, replica: ReplicaId, key: K, f: F) -> OrMap<K, V>
    where
        F: FnOnce(&mut V) -> V,
    {
        let keys = self.keys.add(replica, key.clone());
        let value_delta = f(self.values.entry(key.clone()).or_default());
        let mut values = BTreeMap::new();
        values.insert(key, value_delta);
        OrMap { keys, values }
    }

    /// Like [`update`](OrMap::update), but only if `key` is present; `None` (and no change)
    /// otherwise.
    pub fn update_present<F>(&mut self, replica: ReplicaId, key: &K, f: F) -> Option<OrMap<K, V>>
    where
        F: FnOnce(&mut V) -> V,
    {
        self.contains_key(key)
            .then(|| self.update(replica, key.clone(), f))
    }

    /// Removes `key`, resetting its value: every update of it this map has observed is
    /// discarded, here and wherever the delta is merged; updates made concurrently elsewhere
    /// survive. Returns the delta (empty if the key was never updated).
    pub fn remove<Q>(&mut self, key: &Q) -> OrMap<K, V>
    where
        K: core::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let mut values = BTreeMap::new();
        if let Some(reset) = self.values.get_mut(key).map(V::reset) {
            if let Some((k, _)) = self.values.get_key_value(key) {
                values.insert(k.clone(), reset);
            }
        }
        OrMap {
            keys: self.keys.remove(key),
            values,
        }
    }
}

impl<K: Ord + Clone + core::fmt::Debug, V: Reset> Reset for OrMap<K, V> {
    /// Removes every key.
    fn reset(&mut self) -> Self {
        OrMap {
            keys: self.keys.clear(),
            values: self
                .values
                .iter_mut()
                .map(|(k, v)| (k.clone(), v.reset()))
                .collect(),
        }
    }
}

impl<K: Ord, V> OrMap<K, V> {
    /// The value of `key` if the key is present.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: core::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if self.keys.contains(key) {
            self.values.get(key)
        } else {
            None
        }
    }

    /// The value kept for `key`, present or removed (a removed key's value is reset: it keeps
    /// only what recognises the updates the remove observed).
    pub fn value_kept<Q>(&self, key: &Q) -> Option<&V>
    where
        K: core::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.values.get(key)
    }

    /// The causal context of the keys: every add and remove of a key this map has seen.
    pub fn context(&self) -> &crate::CausalContext {
        self.keys.context()
    }

    /// Every value kept, for present and removed keys alike, in key order.
    pub fn values_kept(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.values.iter()
    }

    /// Whether `key` is present.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: core::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.keys.contains(key)
    }

    /// The present keys and their values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.keys
            .iter()
            .filter_map(|k| Some((k, self.values.get(k)?)))
    }

    /// The present keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        self.keys.iter()
    }

    /// How many keys are present.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl<K: Ord + Clone + core::fmt::Debug, V: Crdt> Crdt for OrMap<K, V> {
    fn merge(&mut self, other: &Self) {
        self.keys.merge(&other.keys);
        for (key, theirs) in &other.values {
            match self.values.get_mut(key) {
                Some(ours) => ours.merge(theirs),
                None => {
                    self.values.insert(key.clone(), theirs.clone());
                }
            }
        }
    }
}

impl<K: Ord + Clone + core::fmt::Debug, V: Crdt> Decompose for OrMap<K, V> {
    /// Cuts the keys as an [`OrSet`] does, each piece carrying its keys' values; values of
    /// hidden keys travel in pieces of their own. A nested value is never cut.
    fn split(&self, max_entries: usize) -> Vec<Self> {
        let max = max_entries.max(1);
        if self.values.len() <= max {
            return alloc::vec![self.clone()];
        }
        let mut pieces: Vec<Self> = self
            .keys
            .split(max)
            .into_iter()
            .map(|keys| {
                let values = keys
                    .iter()
                    .filter_map(|k| Some((k.clone(), self.values.get(k)?.clone())))
                    .collect();
                OrMap { keys, values }
            })
            .collect();
        let mut hidden = self
            .values
            .iter()
            .filter(|(k, _)| !self.keys.contains(k))
            .peekable();
        while hidden.peek().is_some() {
            let values = hidden
                .by_ref()
                .take(max)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            pieces.push(OrMap {
                keys: OrSet::new(),
                values,
            });
        }
        pieces
    }
}

impl<K: Serialize + Ord, V: Serialize> Serialize for OrMap<K, V> {
    /// Each key once, with its dots in the key set (none if it is not present) and its value.
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let entries = || {
            let mut keys = self.keys.dotted_entries().iter().peekable();
            self.values.iter().map(move |(key, value)| {
                // Every present key has a value, so this skips nothing.
                while keys.next_if(|(k, _)| *k < key).is_some() {}
                let dots = keys.next_if(|(k, _)| *k == key).map(|(_, dots)| dots);
                (key, dots, Some(value))
            })
        };
        dotted::serialize(ser, self.keys.context(), self.values.len(), true, entries)
    }
}

impl<'de, K, V> Deserialize<'de> for OrMap<K, V>
where
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let (ctx, entries) = dotted::deserialize::<D, K, V>(de, true)?;
        let mut keys = Vec::new();
        let mut values = Vec::with_capacity(entries.len());
        for (key, dots, value) in entries {
            if let Some(dots) = dots {
                keys.push((key.clone(), dots));
            }
            // Always there: the decoder reads a value for every entry of a map.
            if let Some(value) = value {
                values.push((key, value));
            }
        }
        Ok(OrMap {
            keys: OrSet::from_decoded(keys.into_iter().collect(), ctx),
            values: values.into_iter().collect(),
        })
    }
}
