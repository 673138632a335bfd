//! Membership: the peers a replica knows, whether they answer, and what each is known to
//! have seen.

use crdt_core::{CausalContext, Dot, ReplicaId};

use super::{PeerStatus, Replica};
use crate::message::{Fingerprint, PeerInfo};
use crate::Event;

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) info: PeerInfo,
    /// What it has seen, as far as we know.
    pub(super) known: CausalContext,
    pub(super) awaiting_reply: bool,
    /// Whether our last round sent it a [`Message::Summary`](crate::Message::Summary) not yet
    /// answered with a mismatch: only then does a mismatch get our full digest.
    pub(super) summary_sent: bool,
    /// The fingerprint of our context when our last round's digest or summary went to it:
    /// its `InSync` then means it has at least that context.
    pub(super) digest_sent: Option<Fingerprint>,
    missed: u32,
    pub(super) down: bool,
    /// Whether it has been heard from since it was added.
    heard: bool,
    retry_round: u64,
    backoff: u64,
}

/// Dots beyond gaps kept per peer in what it is known to have.
pub(super) const KNOWN_CLOUD: usize = 4096;

/// Keeps what a peer is known to have within budget: the scattered part beyond
/// [`KNOWN_CLOUD`] dots is forgotten, and a context naming more than `max_writers` writers is
/// forgotten whole (the estimate may err low, never high).
pub(super) fn bound_known(known: &mut CausalContext, max_writers: usize) {
    if known.cloud_len() > KNOWN_CLOUD {
        known.truncate_cloud();
    }
    if known.vv().len() > max_writers {
        *known = CausalContext::new();
    }
}

impl Replica {
    /// The peers known to hold `dot`: those that acknowledged it, or whose digest covered it.
    pub fn holders(&self, dot: Dot) -> impl Iterator<Item = ReplicaId> + '_ {
        self.peers
            .iter()
            .filter(move |(_, p)| p.known.contains(dot))
            .map(|(id, _)| *id)
    }

    /// The peers this replica knows, with liveness and lag.
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.values().map(|p| PeerStatus {
            info: p.info.clone(),
            up: !p.down,
            lag: self
                .durable
                .seen
                .vv()
                .iter()
                .map(|(r, n)| n.saturating_sub(p.known.vv().get(r)))
                .sum(),
        })
    }

    /// Learns of a peer (from configuration, discovery or peer exchange).
    pub fn add_peer(&mut self, info: PeerInfo) {
        if info.id == self.config.id {
            return;
        }
        let full = self.peers.len() >= self.config.max_peers;
        match self.peers.get_mut(&info.id) {
            Some(peer) => {
                if info.addr.is_some() {
                    peer.info.addr = info.addr;
                }
            }
            None if full => {}
            None => {
                self.peers.insert(
                    info.id,
                    Peer {
                        info,
                        known: CausalContext::new(),
                        awaiting_reply: false,
                        summary_sent: false,
                        digest_sent: None,
                        missed: 0,
                        down: false,
                        heard: false,
                        retry_round: 0,
                        backoff: 1,
                    },
                );
            }
        }
    }

    /// Forgets a peer (for example one removed from the trust list).
    pub fn remove_peer(&mut self, id: ReplicaId) {
        self.peers.remove(&id);
        self.incoming.remove(&id);
        self.outgoing.remove(&id);
        self.acks_due.remove(&id);
    }

    pub(super) fn heard_from(&mut self, from: ReplicaId) {
        if !self.peers.contains_key(&from) {
            self.add_peer(PeerInfo {
                id: from,
                addr: None,
            });
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.awaiting_reply = false;
            peer.missed = 0;
            peer.backoff = 1;
            // Up when it answers again, and when it is first heard from (a peer the driver
            // added on connecting, or from configuration, before any message).
            if peer.down || !peer.heard {
                peer.down = false;
                peer.heard = true;
                self.events.push_back(Event::PeerUp(from));
            }
        }
    }

    /// Counts a missed round against every peer that did not answer the last one: one that
    /// missed `down_after` in a row is marked down (and its unfinished transfer dropped: it
    /// asks again, resuming, when it is back); a down one is retried less and less often.
    pub(super) fn note_silent_peers(&mut self, round: u64) {
        let mut went_down = Vec::new();
        for (id, peer) in &mut self.peers {
            if !std::mem::take(&mut peer.awaiting_reply) {
                continue;
            }
            peer.missed += 1;
            if peer.down {
                peer.backoff = (peer.backoff * 2).min(self.config.max_backoff_rounds.max(1));
                peer.retry_round = round + peer.backoff;
            } else if peer.missed >= self.config.down_after {
                peer.down = true;
                peer.backoff = 1;
                peer.retry_round = round + 1;
                went_down.push(*id);
            }
        }
        for id in went_down {
            self.outgoing.remove(&id);
            self.events.push_back(Event::PeerDown(id));
        }
    }

    /// The peers worth a digest this round: those up, and those down whose retry is due.
    pub(super) fn reachable_peers(&self, round: u64) -> Vec<ReplicaId> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.down || p.retry_round <= round)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The peers not marked down.
    pub(super) fn peers_up(&self) -> Vec<ReplicaId> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.down)
            .map(|(id, _)| *id)
            .collect()
    }
}
