//! Reads that merge an object from several replicas first (the quorum reads of
//! [`ReadLevel`](crate::ReadLevel)), both ends.

use std::collections::{BTreeMap, BTreeSet};

use crdt_core::ReplicaId;

use super::transfer::{fit, MAX_CHUNKS};
use super::{encoded_len, estimated_len, Millis, Replica, MESSAGE_OVERHEAD};
use crate::message::{Message, ReadReply, ReadRequest, StateEntry};

/// A read asked of peers: who was asked, and what has arrived.
#[derive(Debug)]
pub(super) struct PendingRead {
    key: String,
    /// Per peer asked: the pieces of its answer received, and how many it has.
    answers: BTreeMap<ReplicaId, (BTreeSet<u32>, Option<u32>)>,
}

/// Bytes of read answers per peer per round, in messages of the largest size.
const READ_BYTES_PER_ROUND: usize = 4;

/// Reads tracked at once; a newer one evicts the oldest.
const TRACKED_READS: usize = 256;

impl Replica {
    /// Asks every peer that is up for the object at `key`; their answers are merged as they
    /// arrive. [`read_answers`](Replica::read_answers) counts the peers that have answered
    /// whole; [`end_read`](Replica::end_read) stops tracking. A read at level `Peers(n)` is
    /// done when `n` have answered: merged with them, this replica's object includes every
    /// write acknowledged by `W` replicas whenever `n + 1 + W` exceeds the replicas holding
    /// the key.
    pub fn start_read(&mut self, key: &str) -> u64 {
        let id = self.rng.u64(..);
        let asked = self.peers_up();
        if self.reads.len() >= TRACKED_READS {
            self.reads.pop_first();
        }
        self.reads.insert(
            id,
            PendingRead {
                key: key.to_owned(),
                answers: asked.iter().map(|p| (*p, Default::default())).collect(),
            },
        );
        let request = Message::Read(ReadRequest {
            id,
            key: key.to_owned(),
        });
        for peer in asked {
            self.send(peer, &request);
        }
        id
    }

    /// How many peers have answered read `id` whole (0 for an unknown read).
    pub fn read_answers(&self, id: u64) -> usize {
        self.read_answerers(id).count()
    }

    /// The peers that have answered read `id` whole.
    pub fn read_answerers(&self, id: u64) -> impl Iterator<Item = ReplicaId> + '_ {
        self.reads.get(&id).into_iter().flat_map(|read| {
            read.answers
                .iter()
                .filter(|(_, (got, parts))| parts.is_some_and(|n| got.len() == n as usize))
                .map(|(peer, _)| *peer)
        })
    }

    /// Stops tracking read `id`; later answers are ignored.
    pub fn end_read(&mut self, id: u64) {
        self.reads.remove(&id);
    }

    /// Answers a read with the object, cut to fit in messages.
    pub(super) fn on_read(&mut self, from: ReplicaId, request: ReadRequest) {
        let ReadRequest { id, key } = request;
        let Some(object) = self.durable.objects.get(&key) else {
            let empty = ReadReply {
                id,
                part: 0,
                parts: 1,
                entry: None,
            };
            self.send(from, &Message::ReadReply(empty));
            return;
        };
        let touched = self.durable.touched.get(&key).cloned().unwrap_or_default();
        let entry_overhead = encoded_len(&key) + encoded_len(&touched) + MESSAGE_OVERHEAD;
        // Answers to one peer are bounded per round, so small requests cannot make this
        // replica queue unbounded bytes; a read beyond it goes unanswered (the reader's
        // level times out).
        let budget = READ_BYTES_PER_ROUND * self.config.max_message;
        let served = self.reads_served.entry(from).or_default();
        let size = estimated_len(object);
        if *served + size > budget {
            self.stats.reads_refused += 1;
            return;
        }
        *served += size;
        let pieces = fit(
            object,
            self.config.max_message.saturating_sub(entry_overhead),
        );
        let parts = pieces.len() as u32;
        for (part, (piece, _)) in pieces.into_iter().enumerate() {
            let reply = ReadReply {
                id,
                part: part as u32,
                parts,
                entry: Some(StateEntry {
                    key: key.clone(),
                    touched: touched.clone(),
                    object: piece,
                }),
            };
            self.send(from, &Message::ReadReply(reply));
        }
    }

    /// Merges a piece of an answer to one of our reads; answers we did not ask for, or for
    /// another key, are ignored.
    pub(super) fn on_read_reply(&mut self, now: Millis, from: ReplicaId, reply: ReadReply) {
        let Some(read) = self.reads.get(&reply.id) else {
            return;
        };
        let Some((_, expected)) = read.answers.get(&from) else {
            return;
        };
        let consistent = reply.part < reply.parts
            && (reply.parts as usize) <= MAX_CHUNKS
            && expected.is_none_or(|n| n == reply.parts)
            && reply.entry.as_ref().is_none_or(|e| e.key == read.key);
        if !consistent {
            return;
        }
        if let Some(entry) = &reply.entry {
            if !self.clock_accepts(now, from, &entry.object) {
                return; // this peer's answer never completes
            }
            self.merge_remote(&entry.key, &entry.object, Some(&entry.touched));
        }
        if let Some((got, expected)) = self
            .reads
            .get_mut(&reply.id)
            .and_then(|r| r.answers.get_mut(&from))
        {
            got.insert(reply.part);
            *expected = Some(reply.parts);
        }
    }
}
