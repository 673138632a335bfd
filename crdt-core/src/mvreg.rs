//! The multi-value register.

use alloc::vec::Vec;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::deserialize_ascending;
use crate::dots::join_sorted;
use crate::{CausalContext, Crdt, Dot, ReplicaId};

/// A register that keeps every concurrent write, so the application can resolve conflicts.
///
/// A write replaces every value its replica has seen; values written concurrently all stay
/// visible until a later write that has seen them replaces them.
///
/// ```
/// use crdt_core::{Crdt, MvRegister, ReplicaId};
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut x = MvRegister::new();
/// let mut y = MvRegister::new();
/// x.write(a, "blue");
/// y.write(b, "green");
/// x.merge(&y);
/// assert_eq!(x.values().collect::<Vec<_>>(), [&"blue", &"green"]);
/// x.write(a, "teal"); // resolves the conflict
/// assert_eq!(x.values().collect::<Vec<_>>(), [&"teal"]);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct MvRegister<T> {
    /// Ascending by dot.
    entries: Vec<(Dot, T)>,
    ctx: CausalContext,
}

impl<T> Default for MvRegister<T> {
    fn default() -> Self {
        MvRegister {
            entries: Vec::new(),
            ctx: CausalContext::new(),
        }
    }
}

impl<T: Clone> MvRegister<T> {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` on behalf of `replica`, replacing every value seen; returns the delta.
    pub fn write(&mut self, replica: ReplicaId, value: T) -> MvRegister<T> {
        let dot = self.ctx.next_dot(replica);
        let mut ctx: CausalContext = self.entries.iter().map(|e| e.0).collect();
        ctx.insert(dot);
        self.entries.clear();
        self.entries.push((dot, value.clone()));
        MvRegister {
            entries: alloc::vec![(dot, value)],
            ctx,
        }
    }
}

impl<T> MvRegister<T> {
    /// The concurrent values, ordered by the dot of their write.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.entries.iter().map(|e| &e.1)
    }

    /// Whether nothing has been written (or every write was merged away, which cannot happen).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every write this state reflects.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }
}

impl<T: Clone + PartialEq + core::fmt::Debug> crate::Reset for MvRegister<T> {
    /// Empties the register: the values observed are gone, writes made concurrently elsewhere
    /// stay.
    fn reset(&mut self) -> Self {
        let ctx = core::mem::take(&mut self.entries)
            .into_iter()
            .map(|e| e.0)
            .collect();
        MvRegister {
            entries: Vec::new(),
            ctx,
        }
    }
}

impl<T: Clone + PartialEq + core::fmt::Debug> Crdt for MvRegister<T> {
    fn merge(&mut self, other: &Self) {
        self.entries = join_sorted(&self.entries, &self.ctx, &other.entries, &other.ctx, |e| {
            e.0
        });
        self.ctx.merge(&other.ctx);
    }
}

impl<T: Serialize> Serialize for MvRegister<T> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("MvRegister", 2)?;
        s.serialize_field("ctx", &self.ctx)?;
        s.serialize_field("entries", &self.entries)?;
        s.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MvRegister<T> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "MvRegister", bound = "T: Deserialize<'de>")]
        struct Raw<T> {
            ctx: CausalContext,
            #[serde(deserialize_with = "ascending_writes")]
            entries: Vec<(Dot, T)>,
        }
        let raw = Raw::<T>::deserialize(de)?;
        if !raw.entries.iter().all(|e| raw.ctx.contains(e.0)) {
            return Err(serde::de::Error::custom(
                "a write outside the causal context",
            ));
        }
        Ok(MvRegister {
            entries: raw.entries,
            ctx: raw.ctx,
        })
    }
}

fn ascending_writes<'de, D, T>(de: D) -> Result<Vec<(Dot, T)>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserialize_ascending(de, |e: &(Dot, T)| &e.0)
}
