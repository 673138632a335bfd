//! The observed-remove map of nested CRDTs.

use alloc::collections::BTreeMap;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::orset::{ascending_entries, Entries};
use crate::{Crdt, OrSet, ReplicaId};

/// A map from keys to nested CRDTs (counters, sets, registers, other maps) whose keys behave
/// like an add-wins [`OrSet`].
///
/// Updating a key makes it present; removing it hides it. The nested value of a key is merged
/// from every update ever made to it, on any replica.
///
/// **Concurrent update and remove of the same key: the update wins.** The key stays, and its
/// value is the join of all updates to it, including those the remove had observed: a remove
/// hides a key, it does not reset its value (a grow-only counter cannot shrink). Updating a
/// removed key later likewise shows the merged history again. The hidden value is kept so that
/// merging stays a lattice; an application that wants a reset models it inside the value (for
/// example a fresh key per generation).
///
/// ```
/// use crdt_core::{Crdt, GCounter, OrMap, ReplicaId};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut likes: OrMap<&str, GCounter> = OrMap::new();
/// likes.update(a, "post-1", |c| c.inc(a, 1));
/// let mut other = likes.clone();
/// likes.remove(&"post-1");
/// other.update(b, "post-1", |c| c.inc(b, 1)); // concurrent with the remove
/// likes.merge(&other);
/// assert_eq!(likes.get(&"post-1").map(GCounter::value), Some(2));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct OrMap<K, V> {
    keys: OrSet<K>,
    /// Never holds a bottom value, so equal maps are identical.
    values: BTreeMap<K, V>,
    /// Returned by `get` for a present key whose value is still bottom.
    bottom: V,
}

impl<K, V: Default> Default for OrMap<K, V> {
    fn default() -> Self {
        OrMap {
            keys: OrSet::default(),
            values: BTreeMap::new(),
            bottom: V::default(),
        }
    }
}

impl<K: Ord + Clone + core::fmt::Debug, V: Crdt> OrMap<K, V> {
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
        let mut value = self.values.remove(&key).unwrap_or_default();
        let value_delta = f(&mut value);
        let mut values = BTreeMap::new();
        if value != V::default() {
            self.values.insert(key.clone(), value);
        }
        if value_delta != V::default() {
            values.insert(key, value_delta);
        }
        OrMap {
            keys,
            values,
            bottom: V::default(),
        }
    }

    /// Hides `key`; returns the delta. A concurrent update of the key wins over this remove.
    pub fn remove(&mut self, key: &K) -> OrMap<K, V> {
        OrMap {
            keys: self.keys.remove(key),
            values: BTreeMap::new(),
            bottom: V::default(),
        }
    }
}

impl<K: Ord, V> OrMap<K, V> {
    /// The value of `key` if the key is present.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.keys
            .contains(key)
            .then(|| self.values.get(key).unwrap_or(&self.bottom))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.keys.contains(key)
    }

    /// The present keys and their values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.keys
            .iter()
            .map(|k| (k, self.values.get(k).unwrap_or(&self.bottom)))
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

impl<K: Serialize, V: Serialize> Serialize for OrMap<K, V> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("OrMap", 2)?;
        s.serialize_field("keys", &self.keys)?;
        s.serialize_field("values", &Entries(&self.values))?;
        s.end()
    }
}

impl<'de, K, V> Deserialize<'de> for OrMap<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de> + Default + PartialEq,
{
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            rename = "OrMap",
            bound = "K: Deserialize<'de> + Ord, V: Deserialize<'de>"
        )]
        struct Raw<K, V> {
            keys: OrSet<K>,
            #[serde(deserialize_with = "ascending_entries")]
            values: BTreeMap<K, V>,
        }
        let raw = Raw::<K, V>::deserialize(de)?;
        let bottom = V::default();
        if raw.values.values().any(|v| *v == bottom) {
            return Err(serde::de::Error::custom("a map value at bottom"));
        }
        Ok(OrMap {
            keys: raw.keys,
            values: raw.values,
            bottom,
        })
    }
}
