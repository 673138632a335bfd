//! State transfer, both ends.
//!
//! The sender produces a transfer lazily: [`Outgoing`] is a cursor over the keyspace, and
//! `poll_transmit` cuts the next chunk only while the peer's link has room (its credit, set
//! by the driver). A transfer of any size costs the sender one chunk and the pieces of one key
//! at a time, and a slow peer slows only its own transfer.
//!
//! The receiver merges chunks as they arrive, remembers which key ranges arrived whole (so an
//! interrupted transfer resumes instead of starting over), and adopts the sender's context
//! once every chunk is in and what arrived justifies it.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use crdt_core::{CausalContext, Crdt, Decompose, ReplicaId, VersionVector};

use super::{encoded_len, Durable, Millis, Replica, Transmit, MESSAGE_OVERHEAD};
use crate::message::{Message, Resume, StateChunk, StateDone, StateEntry};
use crate::Object;

/// How many transfers per peer we track at once.
const TRACKED_TRANSFERS: usize = 4;
/// Chunks tracked per transfer (64 GiB at the default message size): a peer sending more is
/// not describing a real transfer, and its chunks stop counting.
pub(super) const MAX_CHUNKS: usize = 1 << 16;
/// Bytes of key ranges remembered per transfer, to resume it; chunks beyond count without one.
const RANGE_BYTES: usize = 1 << 20;

/// A state transfer to one peer, cut into chunks as the peer's link has room.
#[derive(Debug)]
pub(super) struct Outgoing {
    id: u64,
    /// This replica's context when the transfer began: what it claims on completion. Keys
    /// sent later carry at least as much, since objects only grow.
    covers: CausalContext,
    base: VersionVector,
    /// What the peer has, and what it has in the key ranges an earlier transfer delivered:
    /// computed once, not per key (a digest may name many writers).
    theirs: VersionVector,
    resumed: Option<(Vec<(String, String)>, VersionVector)>,
    /// Bytes of entries per chunk.
    budget: usize,
    /// Bytes the peer's link can take now (see [`Replica::set_credit`]).
    credit: usize,
    /// The last key taken; the keys after it are still to consider.
    cursor: Option<String>,
    /// Keys the cursor has passed, taken or skipped (for the peer's progress display).
    walked: u64,
    /// Keys in the keyspace when the transfer began.
    keys: u64,
    keys_done: bool,
    /// Pieces of the last key taken that are not in a chunk yet.
    pieces: VecDeque<Piece>,
    next_index: u32,
}

#[derive(Debug)]
struct Piece {
    entry: StateEntry,
    size: usize,
    first: bool,
    last: bool,
}

/// Progress of state transfers from one peer: the few most recent, latest last.
#[derive(Debug, Default)]
pub(super) struct Incoming {
    pub(super) transfers: Vec<(u64, Transfer)>,
}

#[derive(Debug, Default)]
pub(super) struct Transfer {
    base: VersionVector,
    /// Received chunk indices and each one's range of whole keys.
    pub(super) chunks: BTreeMap<u32, Option<(String, String)>>,
    done: Option<StateDone>,
    /// An entry of it was refused, so its covers cannot be claimed: it never completes.
    pub(super) refused: bool,
    /// Bytes of the key ranges in `chunks`.
    range_bytes: usize,
    /// Objects or pieces of objects received in its chunks (repeats included).
    entries: u64,
    /// The furthest `walked` and the latest `keys` its chunks claimed (unchecked).
    walked: u64,
    keys: u64,
}

/// What has arrived of the latest unfinished state transfer from a peer
/// ([`Replica::incoming_transfer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TransferProgress {
    /// Names the transfer.
    pub(crate) id: u64,
    /// Chunks received.
    pub(crate) chunks: u32,
    /// Objects, or pieces of large objects, received in them.
    pub(crate) entries: u64,
    /// How many chunks the transfer has, once its closing message has arrived (the sender
    /// cuts chunks as it goes, so neither side knows the total before the end).
    pub(crate) total_chunks: Option<u32>,
    /// How many of the sender's keys its cursor has passed, as its chunks say; never more
    /// than `keys` (a peer claiming more is clamped). Only for showing progress.
    pub(crate) walked: u64,
    /// How many keys the sender had when the transfer began, as its chunks say.
    pub(crate) keys: u64,
}

impl Replica {
    /// Peers with a state transfer under way. A driver that meters its links tells the
    /// replica, before polling, how many bytes each of them can take now
    /// ([`set_credit`](Replica::set_credit)).
    pub fn transfers_pending(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.outgoing.keys().copied()
    }

    /// Lets about `bytes` more of state transfer go to `peer` (a chunk starts while any credit
    /// is left); until a driver sets it, a peer's credit is unlimited. Other messages are not
    /// metered: they are small, or bounded per round.
    ///
    /// A driver sets it to the room in the peer's send queue, so a transfer to a slow peer is
    /// produced as fast as that peer takes it, never built whole in memory.
    pub fn set_credit(&mut self, peer: ReplicaId, bytes: usize) {
        if let Some(outgoing) = self.outgoing.get_mut(&peer) {
            outgoing.credit = bytes;
        }
    }

    /// Starts a state transfer to `to` of the objects its context `theirs` may lack (`resume`
    /// says what arrived of an earlier one), unless one is under way.
    pub(super) fn send_state(
        &mut self,
        to: ReplicaId,
        theirs: &CausalContext,
        resume: Option<&Resume>,
    ) {
        // One under way goes on: starting over would send again what it has sent, and a
        // transfer slower than the peer's patience would never end. When it ends, the peer
        // asks again for what is still missing, with the ranges it received.
        if self.outgoing.contains_key(&to) {
            return;
        }
        // Random, not sequential: ids must not repeat across restarts of this replica, or a
        // peer could count chunks of an old transfer towards a new one.
        let id = self.rng.u64(..);
        let outgoing = Outgoing::new(id, &self.durable, theirs, resume, self.config.max_message);
        self.outgoing.insert(to, outgoing);
    }

    /// What `peer`'s new digest says it has, for the transfer to it: the transfer skips
    /// what the peer has since received (a context only grows), and ends if it would give the
    /// peer nothing (it caught up by other means).
    pub(super) fn learn_in_transfer(&mut self, peer: ReplicaId, theirs: &CausalContext) {
        let Some(outgoing) = self.outgoing.get_mut(&peer) else {
            return;
        };
        if theirs.includes(&outgoing.covers) {
            self.outgoing.remove(&peer);
            return;
        }
        outgoing.theirs.merge(theirs.vv());
        if let Some((_, vv)) = &mut outgoing.resumed {
            vv.merge(theirs.vv());
        }
    }

    /// The next message of a state transfer to a peer with credit left, taking the peers in
    /// turn so one large transfer does not hold up the others.
    pub(super) fn poll_chunk(&mut self) -> Option<Transmit> {
        let after = self.last_served.unwrap_or(ReplicaId::new(0));
        let order: Vec<ReplicaId> = self
            .outgoing
            .range((Bound::Excluded(after), Bound::Unbounded))
            .chain(self.outgoing.range(..=after))
            .map(|(id, _)| *id)
            .collect();
        for to in order {
            let Some(outgoing) = self.outgoing.get_mut(&to).filter(|o| o.credit > 0) else {
                continue;
            };
            let (message, entries) = outgoing.next_message(&self.durable);
            let payload = message.encode();
            outgoing.credit = outgoing.credit.saturating_sub(payload.len());
            if matches!(message, Message::StateDone(_)) {
                self.outgoing.remove(&to);
            }
            self.stats.state_entries_sent += entries;
            self.last_served = Some(to);
            return Some(Transmit { to, payload });
        }
        None
    }

    /// What has arrived of the latest unfinished state transfer from `peer`, if one is under
    /// way. A transfer that completes is no longer reported.
    pub(crate) fn incoming_transfer(&self, peer: ReplicaId) -> Option<TransferProgress> {
        let (id, transfer) = self.incoming.get(&peer)?.transfers.last()?;
        Some(TransferProgress {
            id: *id,
            chunks: transfer.chunks.len() as u32,
            entries: transfer.entries,
            total_chunks: transfer.done.as_ref().map(|d| d.chunks),
            walked: transfer.walked.min(transfer.keys),
            keys: transfer.keys,
        })
    }

    /// What arrived of the latest unfinished transfer from `peer`: the key ranges of the
    /// chunks received, in key order and apart (a made-up transfer's other ranges are left
    /// out), as many as fit in a quarter of a message.
    ///
    /// Only `peer` gets it. Another peer could resume from it too (it says which updates are
    /// here, whoever sent them), but then one faulty peer's made-up ranges would keep the
    /// honest ones from sending what this replica lacks.
    pub(super) fn resume_point(&self, peer: ReplicaId) -> Option<Resume> {
        let (_, transfer) = self.incoming.get(&peer)?.transfers.last()?;
        let mut room = self.config.max_message / 4;
        let mut previous: Option<&String> = None;
        let ranges: Vec<(String, String)> = transfer
            .chunks
            .values()
            .flatten()
            .filter(|(first, last)| {
                let apart = first <= last && previous.is_none_or(|p| p < first);
                if apart {
                    previous = Some(last);
                }
                apart
            })
            .take_while(|(first, last)| {
                let size = first.len() + last.len() + 4;
                room = room.saturating_sub(size);
                room > 0
            })
            .cloned()
            .collect();
        (!ranges.is_empty()).then(|| Resume {
            ranges,
            base: transfer.base.clone(),
        })
    }

    pub(super) fn on_state(&mut self, now: Millis, from: ReplicaId, chunk: StateChunk) {
        self.pull_progressed(from, now);
        let mut refused = false;
        for entry in &chunk.objects {
            if !self.clock_accepts(now, from, &entry.object) {
                refused = true;
                continue;
            }
            self.merge_remote(&entry.key, &entry.object, Some(&entry.touched));
        }
        self.transfer_from(from, chunk.transfer, |transfer| {
            if transfer.chunks.is_empty() {
                transfer.base = chunk.base;
            }
            if transfer.chunks.len() < MAX_CHUNKS {
                let size = chunk
                    .complete
                    .as_ref()
                    .map_or(0, |(a, b)| a.len() + b.len());
                let range = if transfer.range_bytes + size <= RANGE_BYTES {
                    transfer.range_bytes += size;
                    chunk.complete
                } else {
                    None
                };
                transfer.chunks.insert(chunk.index, range);
            }
            transfer.refused |= refused;
            transfer.entries = transfer.entries.saturating_add(chunk.objects.len() as u64);
            transfer.walked = transfer.walked.max(chunk.walked);
            transfer.keys = chunk.keys;
        });
        self.try_complete(from, chunk.transfer, false);
    }

    /// A transfer's end. Validation has already checked its covers if it completes it.
    pub(super) fn on_state_done(&mut self, from: ReplicaId, done: StateDone) {
        let id = done.transfer;
        self.transfer_from(from, id, |transfer| transfer.done = Some(done));
        self.try_complete(from, id, true);
    }

    /// The progress record of transfer `id` from `peer`, made the latest; only the latest few
    /// are tracked.
    fn transfer_from(&mut self, peer: ReplicaId, id: u64, update: impl FnOnce(&mut Transfer)) {
        let transfers = &mut self.incoming.entry(peer).or_default().transfers;
        let mut record = match transfers.iter().position(|(t, _)| *t == id) {
            Some(i) => transfers.remove(i).1,
            None => Transfer::default(),
        };
        if transfers.len() >= TRACKED_TRANSFERS {
            transfers.remove(0);
        }
        update(&mut record);
        transfers.push((id, record));
    }

    /// Once every chunk of a transfer has arrived, its sender's context is ours too, if what
    /// arrived justifies it (`checked`: validation already found it does).
    fn try_complete(&mut self, peer: ReplicaId, id: u64, checked: bool) {
        let Some(incoming) = self.incoming.get_mut(&peer) else {
            return;
        };
        let Some(i) = incoming.transfers.iter().position(|(t, _)| *t == id) else {
            return;
        };
        let complete = incoming.transfers.get(i).is_some_and(|(_, t)| {
            t.done
                .as_ref()
                .is_some_and(|d| all_chunks(&t.chunks, d.chunks))
        });
        if !complete {
            return;
        }
        // This transfer supersedes the ones before it.
        let (_, transfer) = incoming.transfers.remove(i);
        incoming.transfers.drain(..i);
        let claims = transfer
            .done
            .filter(|d| !transfer.refused && (checked || self.justified(&d.covers)));
        if let Some(done) = claims {
            self.durable.seen.merge(&done.covers);
            self.dirty = true;
            self.refused_pulls = 0;
        } else if transfer.refused {
            // Its covers cannot land while an entry stays refused (a write stamped beyond the
            // drift bound): pulling again at once would fetch the same state every round.
            self.refused_pulls = self.refused_pulls.saturating_add(1);
            self.pull_not_before = self.stats.rounds + (1 << self.refused_pulls.min(5));
        }
        self.pull_finished(peer);
    }
}

impl Outgoing {
    fn new(
        id: u64,
        durable: &Durable,
        theirs: &CausalContext,
        resume: Option<&Resume>,
        max_message: usize,
    ) -> Self {
        let base = durable.seen.vv().clone();
        let budget = max_message
            .saturating_sub(MESSAGE_OVERHEAD + encoded_len(&base))
            .max(1);
        let theirs = theirs.vv().clone();
        let resumed = resume.map(|r| {
            let mut vv = theirs.clone();
            vv.merge(&r.base);
            (r.ranges.clone(), vv)
        });
        Outgoing {
            id,
            covers: durable.seen.clone(),
            base,
            theirs,
            resumed,
            budget,
            credit: usize::MAX,
            cursor: None,
            walked: 0,
            keys: durable.touched.len() as u64,
            keys_done: false,
            pieces: VecDeque::new(),
            next_index: 0,
        }
    }

    /// The next chunk, with how many entries it holds; after the last chunk, the closing
    /// [`StateDone`], which ends the transfer.
    fn next_message(&mut self, durable: &Durable) -> (Message, u64) {
        let mut objects = Vec::new();
        let mut bytes = 0;
        // The first and last keys whose every piece is in this chunk, as far as room allows:
        // the range is a hint for resuming, and a key too long for it is left out of it.
        let mut whole: Option<(String, String)> = None;
        // Whether this chunk holds the first piece of the key being added.
        let mut started_here = false;
        while !self.pieces.is_empty() || self.take_next_key(durable) {
            let Some(piece) = self.pieces.front() else {
                break;
            };
            if !objects.is_empty() && bytes + piece.size + range_len(&whole) > self.budget {
                break;
            }
            let Some(piece) = self.pieces.pop_front() else {
                break;
            };
            bytes += piece.size;
            started_here |= piece.first;
            if piece.last && started_here {
                let key = piece.entry.key.clone();
                let wider = match &whole {
                    Some((first, _)) => Some((first.clone(), key)),
                    None => Some((key.clone(), key)),
                };
                if bytes + range_len(&wider) <= self.budget {
                    whole = wider;
                }
            }
            objects.push(piece.entry);
        }
        if objects.is_empty() {
            let done = StateDone {
                transfer: self.id,
                chunks: self.next_index,
                covers: std::mem::take(&mut self.covers),
            };
            return (Message::StateDone(done), 0);
        }
        let chunk = StateChunk {
            transfer: self.id,
            index: self.next_index,
            // Keys written since the transfer began may be walked too: never past the total.
            walked: self.walked.min(self.keys),
            keys: self.keys,
            base: self.base.clone(),
            complete: whole,
            objects,
        };
        self.next_index += 1;
        let entries = chunk.objects.len() as u64;
        (Message::State(chunk), entries)
    }

    /// Cuts the next key the peer may lack into pieces; false once no key is left.
    fn take_next_key(&mut self, durable: &Durable) -> bool {
        if self.keys_done {
            return false;
        }
        let start = match &self.cursor {
            Some(key) => Bound::Excluded(key.as_str()),
            None => Bound::Unbounded,
        };
        let mut walked = 0;
        let next = durable
            .touched
            .range::<str, _>((start, Bound::Unbounded))
            .inspect(|_| walked += 1)
            .filter(|(key, touched)| !self.covered(key).dominates(touched))
            .find_map(|(key, touched)| Some((key, touched, durable.objects.get(key)?)));
        self.walked = self.walked.saturating_add(walked);
        let Some((key, touched, object)) = next else {
            // The whole keyspace is walked, whatever keys were removed meanwhile.
            self.walked = self.walked.max(self.keys);
            self.keys_done = true;
            return false;
        };
        let entry_overhead = encoded_len(key) + encoded_len(touched);
        let pieces = fit(object, self.budget.saturating_sub(entry_overhead));
        let count = pieces.len();
        self.pieces.extend(
            pieces
                .into_iter()
                .enumerate()
                .map(|(i, (piece, size))| Piece {
                    entry: StateEntry {
                        key: key.clone(),
                        touched: touched.clone(),
                        object: piece,
                    },
                    size: size + entry_overhead,
                    first: i == 0,
                    last: i + 1 == count,
                }),
        );
        self.cursor = Some(key.clone());
        true
    }

    /// What the peer is known to have of `key`. (Validation keeps resume ranges in key order
    /// and apart, so one binary search finds the range that may hold it.)
    fn covered(&self, key: &str) -> &VersionVector {
        match &self.resumed {
            Some((ranges, vv)) => {
                let i = ranges.partition_point(|(_, last)| last.as_str() < key);
                match ranges.get(i) {
                    Some((first, _)) if first.as_str() <= key => vv,
                    _ => &self.theirs,
                }
            }
            None => &self.theirs,
        }
    }
}

/// The encoded size of a chunk's `complete` range.
fn range_len(range: &Option<(String, String)>) -> usize {
    range.as_ref().map_or(1, |(first, last)| {
        1 + encoded_len(first) + encoded_len(last)
    })
}

/// Whether chunks `0..count` have all arrived (and no other).
pub(super) fn all_chunks<T>(chunks: &BTreeMap<u32, T>, count: u32) -> bool {
    chunks.len() == count as usize && chunks.keys().all(|c| *c < count)
}

/// `object` whole if it encodes within `budget`, else cut into pieces that do (as far as its
/// type can be cut), each with its encoded size.
pub(super) fn fit(object: &Object, budget: usize) -> Vec<(Object, usize)> {
    let size = encoded_len(object);
    let entries = object.entries();
    if size <= budget || entries <= 1 {
        return vec![(object.clone(), size)];
    }
    let parts = size.div_ceil(budget.max(1)) + 1;
    let per_piece = entries.div_ceil(parts).max(1);
    let mut out = Vec::new();
    for piece in object.split(per_piece) {
        let piece_size = encoded_len(&piece);
        if piece_size > budget && piece.entries() > 1 && piece.entries() < entries {
            out.extend(fit(&piece, budget));
        } else {
            out.push((piece, piece_size));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn chunk(index: u32, walked: u64, keys: u64) -> Vec<u8> {
        Message::State(StateChunk {
            transfer: 1,
            index,
            walked,
            keys,
            base: VersionVector::default(),
            complete: None,
            objects: Vec::new(),
        })
        .encode()
    }

    /// A peer's progress claims are shown, never believed: `walked` is clamped to `keys`,
    /// and a later chunk claiming less does not move it back.
    #[test]
    fn a_lying_peers_walked_is_clamped_to_its_keys() {
        let (me, liar) = (ReplicaId::new(1), ReplicaId::new(2));
        let mut replica = Replica::new(Config::new(me).with_peer(liar));
        let walked = |r: &Replica| r.incoming_transfer(liar).map(|t| (t.walked, t.keys));
        replica
            .handle_message(0, liar, &chunk(0, u64::MAX, 5))
            .unwrap();
        assert_eq!(walked(&replica), Some((5, 5)));
        replica.handle_message(0, liar, &chunk(1, 2, 5)).unwrap();
        assert_eq!(walked(&replica), Some((5, 5)));
        replica
            .handle_message(0, liar, &chunk(2, u64::MAX, 0))
            .unwrap();
        assert_eq!(walked(&replica), Some((0, 0)));
    }
}
