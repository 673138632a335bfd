//! Persistence: the seam between a [`Replica`](crate::Replica) and its disk.
//!
//! A replica records every change it makes (a local update's delta, a merged peer delta, a piece
//! of a state transfer, a transfer's completed context) and holds back every message and event
//! until the driver has committed those changes to a [`Store`] with
//! [`Replica::persist`](crate::Replica::persist). So nothing leaves a replica before it is
//! durable, and a replica restarted from its store never issues a dot a peer already holds: the
//! replica's own entry in the persisted context is its dot counter, and it is committed in the
//! same atomic batch as the data the dots stand for.
//!
//! [`MemStore`] keeps the batches in memory (the simulator uses it, so a simulated crash loses
//! exactly what was not committed); [`RedbStore`] (feature `store`) keeps them in one crash-safe
//! file.

#[cfg(feature = "store")]
mod redb;

use std::collections::BTreeMap;

use crdt_core::{CausalContext, Crdt, VersionVector};

use crate::{Durable, Object};

#[cfg(feature = "store")]
pub use self::redb::RedbStore;

/// Everything a replica changed since its last commit, to be persisted atomically.
#[derive(Debug)]
#[non_exhaustive]
pub struct Batch<'a> {
    /// What was merged into each key, in order. Each is an inflation of the key's object:
    /// the object persisted before, merged with these, is the object now.
    pub deltas: &'a [(String, Object)],
    /// The replica's whole context after these changes. Its entry for the replica's own id is
    /// the dot counter.
    pub seen: &'a CausalContext,
    /// Every object now, for a store that compacts a key's deltas into one record.
    pub objects: &'a BTreeMap<String, Object>,
    /// Every object's per-writer progress now (see [`Durable::touched`]).
    pub touched: &'a BTreeMap<String, VersionVector>,
}

/// Where a replica persists its changes.
///
/// `commit` must be atomic and durable: once it returns `Ok`, a crash (of the process or the
/// machine) keeps the whole batch; if it fails or the process dies during it, the store holds
/// exactly what it held before.
pub trait Store {
    /// Persists `batch`.
    fn commit(&mut self, batch: &Batch<'_>) -> Result<(), StoreError>;
}

/// Why a store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another node in this one) has the store open.
    #[error("{path} is in use by another process")]
    Locked {
        /// The store file.
        path: std::path::PathBuf,
    },
    /// A record failed its checksum or does not decode: the file was changed outside the
    /// store, or the disk returned other bytes than were written. Nothing was overwritten.
    #[error("{path}: damaged record ({what})")]
    Corrupt {
        /// The store file.
        path: std::path::PathBuf,
        /// Which record, and how.
        what: String,
    },
    /// The store was written by a build with another store format: nothing was read or
    /// changed. Move the data directory aside (or export it with the build that wrote it).
    #[error("{path}: written in store format {found}; this build reads format {expected}")]
    Version {
        /// The store file.
        path: std::path::PathBuf,
        /// The format the file is in.
        found: u8,
        /// The format this build reads.
        expected: u8,
    },
    /// The file system or the database engine failed (full disk, no permission, I/O error).
    #[error("{path}: {source}")]
    Io {
        /// The store file.
        path: std::path::PathBuf,
        /// The failure.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A store in memory: what the simulator crashes and restarts from.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    durable: Durable,
    commits: u64,
}

impl MemStore {
    /// A store holding `durable`, as if committed.
    pub fn new(durable: Durable) -> Self {
        MemStore {
            durable,
            commits: 0,
        }
    }

    /// What a replica restarted from this store starts with.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Commits so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }
}

impl Store for MemStore {
    fn commit(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        for (key, delta) in batch.deltas {
            self.durable
                .objects
                .entry(key.clone())
                .or_default()
                .merge(delta);
            if let Some(touched) = batch.touched.get(key) {
                self.durable.touched.insert(key.clone(), touched.clone());
            }
        }
        self.durable.seen = batch.seen.clone();
        self.commits += 1;
        Ok(())
    }
}
