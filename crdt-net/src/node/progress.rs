//! Catch-up progress: how far the state transfers arriving from each peer have come, for
//! [`Node::catch_up`], `crdt-node status` and the log.
//!
//! A transfer's sender cuts it into chunks as it goes (see the replica's `transfer` module),
//! so its total is known to neither side before its closing message: what is reported is
//! what has arrived, and whether the transfer is complete.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crdt_core::ReplicaId;
use tracing::info;

use super::Node;
use crate::Replica;

/// A state transfer from a peer: what has arrived of it ([`Node::catch_up`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatchUp {
    /// The peer sending it.
    pub peer: ReplicaId,
    /// Chunks received.
    pub chunks: u32,
    /// Objects, or pieces of large objects, received in them.
    pub objects: u64,
    /// Bytes of the messages that carried them.
    pub bytes: u64,
    /// The number of chunks, once the closing message has arrived: the sender cuts the
    /// transfer as it goes, so the total is not known before.
    pub total_chunks: Option<u32>,
    /// How many of the sender's keys its cursor has passed (sent or skipped), as its chunks
    /// say: the progress the sender knows. Never more than `keys`; informational only.
    pub walked: u64,
    /// How many keys the sender had when the transfer began, as its chunks say.
    pub keys: u64,
    /// Since its first chunk arrived (until its last, once it is finished).
    pub elapsed: Duration,
    /// Since anything of it last arrived.
    pub idle: Duration,
    /// Whether it is over: every chunk arrived, or a newer transfer from the same peer
    /// replaced it. The last finished transfer of each peer stays listed.
    pub finished: bool,
}

/// What the driver keeps of one peer's latest transfer.
#[derive(Debug)]
pub(super) struct Record {
    id: u64,
    chunks: u32,
    entries: u64,
    bytes: u64,
    total: Option<u32>,
    walked: u64,
    keys: u64,
    started: Instant,
    last: Instant,
    logged: Instant,
    finished: bool,
}

/// A transfer as the replica reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    id: u64,
    chunks: u32,
    entries: u64,
    total: Option<u32>,
    walked: u64,
    keys: u64,
}

/// How often a transfer's progress is logged while it runs.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Peers whose transfers are remembered; past it the finished ones are forgotten.
const MAX_RECORDS: usize = 1024;

/// The latest unfinished transfer from `peer`, as the replica has it.
pub(super) fn seen(replica: &Replica, peer: ReplicaId) -> Option<Seen> {
    replica.incoming_transfer(peer).map(|t| Seen {
        id: t.id,
        chunks: t.chunks,
        entries: t.entries,
        total: t.total_chunks,
        walked: t.walked,
        keys: t.keys,
    })
}

/// Records what a message of `bytes` bytes from `peer` did to its transfers: `before` and
/// `after` are the latest transfer as the replica reported it around the message.
pub(super) fn note(
    records: &Mutex<BTreeMap<ReplicaId, Record>>,
    peer: ReplicaId,
    bytes: usize,
    before: Option<Seen>,
    after: Option<Seen>,
) {
    if before == after {
        return; // Not a message of a transfer (or one that changed nothing).
    }
    let Ok(mut records) = records.lock() else {
        return;
    };
    let now = Instant::now();
    let bytes = bytes as u64;
    let after_id = after.map(|a| a.id);
    if let Some(record) = records
        .get_mut(&peer)
        .filter(|r| !r.finished && Some(r.id) != after_id)
    {
        // The transfer followed so far is over: this message completed it, or began a newer one.
        record.finished = true;
        if before.map(|b| b.id) == Some(record.id) {
            record.bytes += bytes;
            record.last = now;
        }
        let (chunks, objects, bytes) = (record.chunks, record.entries, record.bytes);
        let ms = record.last.duration_since(record.started).as_millis() as u64;
        if after.is_none() {
            info!(%peer, chunks, objects, bytes, ms, "caught up: the state transfer from this peer is complete");
        } else {
            info!(%peer, chunks, objects, bytes, ms, "a newer state transfer from this peer replaced the one under way");
        }
    }
    let Some(after) = after else {
        return;
    };
    if records.len() >= MAX_RECORDS {
        records.retain(|_, r| !r.finished);
    }
    if records
        .get(&peer)
        .is_none_or(|r| r.id != after.id || r.finished)
    {
        records.insert(peer, Record::new(after.id, now));
        info!(%peer, "catching up: a state transfer from this peer began (its size is known only at its end)");
    }
    let Some(record) = records.get_mut(&peer) else {
        return;
    };
    record.chunks = after.chunks;
    record.entries = after.entries;
    record.total = after.total;
    record.walked = after.walked;
    record.keys = after.keys;
    record.bytes += bytes;
    record.last = now;
    if now.duration_since(record.logged) >= LOG_EVERY {
        record.logged = now;
        let (chunks, objects, bytes) = (record.chunks, record.entries, record.bytes);
        let (walked, keys) = (record.walked, record.keys);
        let percent = percent(walked, keys);
        info!(%peer, chunks, objects, bytes, walked, keys, "catching up ({percent}% of the sender's keys walked)");
    }
}

impl CatchUp {
    /// How far the sender's cursor has walked through its keys, in whole percent: 100 for
    /// an empty keyspace. Only what the sender says; a finished transfer is over whatever
    /// it shows.
    pub fn walked_percent(&self) -> u64 {
        percent(self.walked, self.keys)
    }
}

/// `walked` of `keys` in whole percent (100 for an empty keyspace).
fn percent(walked: u64, keys: u64) -> u64 {
    match keys {
        0 => 100,
        keys => (u128::from(walked.min(keys)) * 100 / u128::from(keys)) as u64,
    }
}

impl Record {
    fn new(id: u64, now: Instant) -> Record {
        Record {
            id,
            chunks: 0,
            entries: 0,
            bytes: 0,
            total: None,
            walked: 0,
            keys: 0,
            started: now,
            last: now,
            logged: now,
            finished: false,
        }
    }
}

impl Node {
    /// The state transfers arriving from peers: for each peer that has sent one, its latest,
    /// under way or finished (a node that is behind catches up by them; small gaps are
    /// filled by deltas, which are not listed).
    pub fn catch_up(&self) -> Vec<CatchUp> {
        let Ok(records) = self.shared.catch_up.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        records
            .iter()
            .map(|(peer, r)| CatchUp {
                peer: *peer,
                chunks: r.chunks,
                objects: r.entries,
                bytes: r.bytes,
                total_chunks: r.total,
                walked: r.walked,
                keys: r.keys,
                elapsed: if r.finished { r.last } else { now }.duration_since(r.started),
                idle: now.duration_since(r.last),
                finished: r.finished,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: u64, chunks: u32, entries: u64, total: Option<u32>) -> Option<Seen> {
        Some(Seen {
            id,
            chunks,
            entries,
            total,
            walked: 0,
            keys: 0,
        })
    }

    #[test]
    fn a_transfer_is_followed_from_its_first_chunk_to_its_end() {
        let records = Mutex::new(BTreeMap::new());
        let peer = ReplicaId::new(7);
        let record = |records: &Mutex<BTreeMap<ReplicaId, Record>>| {
            let r = records.lock().unwrap();
            let r = r.get(&peer).unwrap();
            (r.id, r.chunks, r.entries, r.bytes, r.total, r.finished)
        };
        // A message that is no part of a transfer changes nothing.
        note(&records, peer, 50, None, None);
        assert!(records.lock().unwrap().is_empty());
        note(&records, peer, 100, None, seen(1, 1, 10, None));
        assert_eq!(record(&records), (1, 1, 10, 100, None, false));
        note(
            &records,
            peer,
            50,
            seen(1, 1, 10, None),
            seen(1, 1, 10, None),
        );
        assert_eq!(record(&records), (1, 1, 10, 100, None, false));
        note(
            &records,
            peer,
            100,
            seen(1, 1, 10, None),
            seen(1, 2, 20, None),
        );
        // The closing message names the total; chunks may still be missing.
        note(
            &records,
            peer,
            30,
            seen(1, 2, 20, None),
            seen(1, 2, 20, Some(3)),
        );
        assert_eq!(record(&records), (1, 2, 20, 230, Some(3), false));
        // The last chunk completes it: the replica no longer reports it.
        note(&records, peer, 100, seen(1, 2, 20, Some(3)), None);
        assert_eq!(record(&records), (1, 2, 20, 330, Some(3), true));
        // A newer transfer starts a new record; one replacing it ends the older.
        note(&records, peer, 100, None, seen(2, 1, 5, None));
        assert_eq!(record(&records), (2, 1, 5, 100, None, false));
        note(
            &records,
            peer,
            100,
            seen(2, 1, 5, None),
            seen(3, 1, 4, None),
        );
        assert_eq!(record(&records), (3, 1, 4, 100, None, false));
    }
}
