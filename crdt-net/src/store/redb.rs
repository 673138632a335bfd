//! The on-disk store: one redb file, written incrementally.
//!
//! Tables (every value is a record: a CRC-32 of the table name, the key and the payload, then
//! the payload in crdt-core's canonical encoding):
//!
//! | table | key | payload |
//! | --- | --- | --- |
//! | `meta` | `"format"` | the store format, 4 |
//! | `meta` | `"seen"` | the replica's causal context (its own entry is the dot counter) |
//! | `objects` | object key | the object as of its last compaction |
//! | `deltas` | (object key, sequence) | what was merged into the object since, in order |
//! | `touched` | object key | the object's per-writer progress |
//!
//! A small update appends one delta record and rewrites the key's `touched` and the context,
//! whatever the object's size. When the deltas of a key outgrow its compacted record, the
//! next commit rewrites the object whole and drops them, so the bytes written stay a constant
//! multiple of the bytes changed and a load merges at most about one object's worth of deltas
//! per key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ::redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};
use crdt_core::{codec, Crdt};
use serde::{de::DeserializeOwned, Serialize};

use super::{Batch, Store, StoreError};
use crate::{Durable, Object};

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("objects");
const DELTAS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("deltas");
const TOUCHED: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("touched");

const FORMAT: u8 = 4;
/// A key's deltas are folded into one record once they pass this many bytes or the size of
/// that record, whichever is larger.
const COMPACT_MIN_BYTES: u64 = 4096;

/// A [`Store`] in one redb file: crash-safe (copy-on-write pages, fsync per commit), locked
/// against a second process, checksummed per record.
///
/// ```
/// use crdt_core::ReplicaId;
/// use crdt_net::store::RedbStore;
/// use crdt_net::{Config, Op, Replica};
///
/// let dir = tempfile::tempdir().unwrap();
/// let (mut store, durable) = RedbStore::open(dir.path().join("store.redb")).unwrap();
/// let mut replica = Replica::restore(Config::new(ReplicaId::new(1)), durable);
/// replica.update("visits", &Op::Inc(1)).unwrap();
/// replica.persist(&mut store).unwrap(); // now the update may leave
/// drop(store);
///
/// let (_, durable) = RedbStore::open(dir.path().join("store.redb")).unwrap();
/// assert_eq!(durable.objects["visits"].to_string(), "1");
/// ```
pub struct RedbStore {
    /// `None` after a failed commit: redb then refuses every transaction until the file is
    /// opened again, which the next commit does.
    db: Option<Database>,
    path: PathBuf,
    /// Per key: bytes of its compacted record and of its deltas since.
    sizes: BTreeMap<String, (u64, u64)>,
    next_sequence: u64,
    bytes_written: u64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("keys", &self.sizes.len())
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path` (creating it if absent) and reads everything it holds.
    ///
    /// Fails with [`StoreError::Locked`] if another process has it open, and with
    /// [`StoreError::Corrupt`] if any record fails its checksum or does not decode.
    pub fn open(path: impl AsRef<Path>) -> Result<(RedbStore, Durable), StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = open_file(&path)?;
        let mut store = RedbStore {
            db: Some(db),
            path,
            sizes: BTreeMap::new(),
            next_sequence: 0,
            bytes_written: 0,
        };
        let durable = store.load()?;
        Ok((store, durable))
    }

    /// Closes and reopens the file and reads back everything committed: what a replica whose
    /// commit failed restarts from.
    pub fn reload(&mut self) -> Result<Durable, StoreError> {
        self.db = None;
        self.sizes.clear();
        self.next_sequence = 0;
        self.db()?;
        self.load()
    }

    /// Whether the store holds nothing yet (a fresh file).
    pub fn is_empty(&mut self) -> Result<bool, StoreError> {
        let txn = self.db()?.begin_read().map_err(io(&self.path))?;
        match txn.open_table(META) {
            Ok(meta) => Ok(meta.len().map_err(io(&self.path))? == 0),
            Err(::redb::TableError::TableDoesNotExist(_)) => Ok(true),
            Err(e) => Err(io(&self.path)(e)),
        }
    }

    /// Writes `durable` whole, in one commit: for importing a state kept elsewhere (such as an
    /// older snapshot file) into an empty store.
    pub fn import(&mut self, durable: &Durable) -> Result<(), StoreError> {
        let deltas: Vec<(String, Object)> = durable
            .objects
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        self.write(
            &Batch {
                deltas: &deltas,
                seen: &durable.seen,
                objects: &durable.objects,
                touched: &durable.touched,
            },
            true,
        )
    }

    /// Bytes of records written since the store was opened (payloads and keys, before the
    /// engine's own pages): what a benchmark compares across object sizes.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    fn load(&mut self) -> Result<Durable, StoreError> {
        // As in `open_file`: redb asserts on some damage inside its pages (a B-tree node
        // overwritten with garbage) instead of returning an error. That too is a damaged file.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.load_records()));
        loaded.unwrap_or_else(|_| {
            self.sizes.clear();
            self.next_sequence = 0;
            Err(corrupt(
                &self.path,
                "the file is damaged (the database engine failed reading it)".into(),
            ))
        })
    }

    fn load_records(&mut self) -> Result<Durable, StoreError> {
        let path = self.path.clone();
        let txn = self.db()?.begin_read().map_err(io(&path))?;
        let mut durable = Durable::default();
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(durable),
            Err(e) => return Err(io(&path)(e)),
        };
        let format = match meta.get("format").map_err(io(&path))? {
            Some(v) => read_format(&path, v.value())?,
            None => return Ok(durable),
        };
        if format != FORMAT {
            return Err(StoreError::Version {
                path,
                found: format,
                expected: FORMAT,
            });
        }
        if let Some(v) = meta.get("seen").map_err(io(&path))? {
            durable.seen = read(&path, "meta", "seen".as_bytes(), v.value())?;
        }
        let objects = txn.open_table(OBJECTS).map_err(io(&path))?;
        for row in objects.iter().map_err(io(&path))? {
            let (k, v) = row.map_err(io(&path))?;
            let key = k.value();
            let object: Object = read(&path, "objects", key.as_bytes(), v.value())?;
            self.sizes
                .insert(key.to_owned(), (v.value().len() as u64, 0));
            durable.objects.insert(key.to_owned(), object);
        }
        let deltas = txn.open_table(DELTAS).map_err(io(&path))?;
        for row in deltas.iter().map_err(io(&path))? {
            let (k, v) = row.map_err(io(&path))?;
            let (key, sequence) = k.value();
            let delta: Object = read(&path, "deltas", &delta_id(key, sequence), v.value())?;
            self.sizes.entry(key.to_owned()).or_default().1 += v.value().len() as u64;
            self.next_sequence = self.next_sequence.max(sequence.saturating_add(1));
            durable
                .objects
                .entry(key.to_owned())
                .or_default()
                .merge(&delta);
        }
        let touched = txn.open_table(TOUCHED).map_err(io(&path))?;
        for row in touched.iter().map_err(io(&path))? {
            let (k, v) = row.map_err(io(&path))?;
            let key = k.value();
            durable.touched.insert(
                key.to_owned(),
                read(&path, "touched", key.as_bytes(), v.value())?,
            );
        }
        Ok(durable)
    }

    /// The open database, reopened first if a failed commit closed it.
    fn db(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            self.db = Some(open_file(&self.path)?);
        }
        self.db
            .as_ref()
            .ok_or_else(|| corrupt(&self.path, "not open".into()))
    }

    /// One write transaction for `batch`; a failure closes the file, to be reopened by the
    /// next commit (after a failed write, redb refuses all further ones on that handle).
    fn write(&mut self, batch: &Batch<'_>, whole: bool) -> Result<(), StoreError> {
        let result = self.write_once(batch, whole);
        if result.is_err() {
            self.db = None;
        }
        result
    }

    /// One write transaction for `batch`; with `whole`, every key's object is written whole.
    fn write_once(&mut self, batch: &Batch<'_>, whole: bool) -> Result<(), StoreError> {
        let path = self.path.clone();
        let mut per_key: BTreeMap<&str, Vec<&Object>> = BTreeMap::new();
        for (key, delta) in batch.deltas {
            per_key.entry(key.as_str()).or_default().push(delta);
        }
        let mut sizes = BTreeMap::new();
        let mut sequence = self.next_sequence;
        let mut written = 0;
        let txn = self.db()?.begin_write().map_err(io(&path))?;
        {
            let mut meta = txn.open_table(META).map_err(io(&path))?;
            let mut objects = txn.open_table(OBJECTS).map_err(io(&path))?;
            let mut deltas = txn.open_table(DELTAS).map_err(io(&path))?;
            let mut touched = txn.open_table(TOUCHED).map_err(io(&path))?;
            for (key, changes) in per_key {
                let (base, since) = self.sizes.get(key).copied().unwrap_or_default();
                let records: Vec<(u64, Vec<u8>)> = changes
                    .iter()
                    .map(|delta| {
                        let id = sequence;
                        sequence += 1;
                        (id, record("deltas", &delta_id(key, id), delta))
                    })
                    .collect();
                let added: u64 = records.iter().map(|(_, r)| r.len() as u64).sum();
                if whole || since + added > base.max(COMPACT_MIN_BYTES) {
                    let object = batch.objects.get(key).cloned().unwrap_or_default();
                    let bytes = record("objects", key.as_bytes(), &object);
                    objects.insert(key, bytes.as_slice()).map_err(io(&path))?;
                    // One removal per record: redb's range deletion copies a page path per
                    // record (slow and file-bloating for tens of thousands of them).
                    let sequences = deltas
                        .range((key, 0)..=(key, u64::MAX))
                        .map_err(io(&path))?
                        .map(|row| row.map(|(k, _)| k.value().1))
                        .collect::<Result<Vec<u64>, _>>()
                        .map_err(io(&path))?;
                    for sequence in sequences {
                        deltas.remove((key, sequence)).map_err(io(&path))?;
                    }
                    written += bytes.len() as u64;
                    sizes.insert(key.to_owned(), (bytes.len() as u64, 0));
                } else {
                    for (id, bytes) in &records {
                        deltas
                            .insert((key, *id), bytes.as_slice())
                            .map_err(io(&path))?;
                    }
                    written += added;
                    sizes.insert(key.to_owned(), (base, since + added));
                }
                if let Some(progress) = batch.touched.get(key) {
                    let bytes = record("touched", key.as_bytes(), progress);
                    touched.insert(key, bytes.as_slice()).map_err(io(&path))?;
                    written += bytes.len() as u64;
                }
            }
            let format = record("meta", b"format", &FORMAT);
            meta.insert("format", format.as_slice())
                .map_err(io(&path))?;
            let seen = record("meta", b"seen", batch.seen);
            meta.insert("seen", seen.as_slice()).map_err(io(&path))?;
            written += seen.len() as u64;
        }
        txn.commit().map_err(io(&path))?;
        // Only now is the batch on disk: the bookkeeping follows it.
        self.sizes.extend(sizes);
        self.next_sequence = sequence;
        self.bytes_written += written;
        Ok(())
    }
}

impl Store for RedbStore {
    fn commit(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        self.write(batch, false)
    }
}

/// A record: CRC-32 (little-endian) of the table, the key and the payload, then the payload.
fn record<T: Serialize + ?Sized>(table: &str, key: &[u8], value: &T) -> Vec<u8> {
    let payload = codec::encode(value);
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&checksum(table, key, &payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Opens (or creates) the file; a lock held elsewhere is [`StoreError::Locked`].
fn open_file(path: &Path) -> Result<Database, StoreError> {
    // redb asserts on some damage (a file truncated below its header's layout) instead of
    // returning an error: that is a damaged file too, not a reason to abort.
    let opened = std::panic::catch_unwind(|| Database::create(path)).map_err(|_| {
        corrupt(
            path,
            "the file is damaged (the database engine could not open it)".into(),
        )
    })?;
    opened.map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        other => io(path)(other),
    })
}

/// The store format from its record. Every store format so far wrote it as crdt-core's
/// encoding of a `u8` (a codec version byte, then the format), whatever the codec version, so
/// a store of another format is recognised as such instead of failing to decode.
fn read_format(path: &Path, bytes: &[u8]) -> Result<u8, StoreError> {
    match bytes.get(4..) {
        Some(&[codec_version, format]) if codec_version != codec::FORMAT_VERSION => {
            let sound = bytes
                .split_first_chunk::<4>()
                .is_some_and(|(sum, payload)| {
                    u32::from_le_bytes(*sum) == checksum("meta", b"format", payload)
                });
            if sound {
                Ok(format)
            } else {
                Err(corrupt(path, "meta/format: checksum mismatch".into()))
            }
        }
        _ => read(path, "meta", b"format", bytes),
    }
}

fn read<T: DeserializeOwned>(
    path: &Path,
    table: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    let name = || match table {
        // A delta's key is the object's key followed by its sequence number.
        "deltas" if key.len() >= 8 => {
            let (object, sequence) = key.split_at(key.len() - 8);
            let sequence = sequence.try_into().map_or(0, u64::from_le_bytes);
            format!("deltas/{}#{sequence}", String::from_utf8_lossy(object))
        }
        _ => format!("{table}/{}", String::from_utf8_lossy(key)),
    };
    let (sum, payload) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(path, format!("{}: truncated", name())))?;
    if u32::from_le_bytes(*sum) != checksum(table, key, payload) {
        return Err(corrupt(path, format!("{}: checksum mismatch", name())));
    }
    codec::decode(payload).map_err(|e| corrupt(path, format!("{}: {e}", name())))
}

fn checksum(table: &str, key: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in [
        table.as_bytes(),
        &(key.len() as u64).to_le_bytes(),
        key,
        payload,
    ] {
        hasher.update(part);
    }
    hasher.finalize()
}

fn delta_id(key: &str, sequence: u64) -> Vec<u8> {
    let mut id = key.as_bytes().to_vec();
    id.extend_from_slice(&sequence.to_le_bytes());
    id
}

fn corrupt(path: &Path, what: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        what,
    }
}

fn io<E: std::error::Error + Send + Sync + 'static>(path: &Path) -> impl Fn(E) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written by the build before counters had floors (store format 1, whose format
    /// record was encoded with crdt-core's format 1) is refused by name, and left as it was.
    #[test]
    fn a_store_of_an_older_format_is_refused_as_such() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("store.redb");
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                let payload = [1u8, 1]; // codec format 1, store format 1
                let mut record = checksum("meta", b"format", &payload).to_le_bytes().to_vec();
                record.extend_from_slice(&payload);
                meta.insert("format", record.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        match RedbStore::open(&path) {
            Err(StoreError::Version {
                found: 1,
                expected: FORMAT,
                ..
            }) => {}
            other => panic!("expected a version error, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file was changed"
        );
    }
}
