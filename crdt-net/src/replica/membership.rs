//! Membership: the peers a replica knows, whether they answer, and what each is known to
//! have seen.

use crdt_core::{CausalContext, Dot, ReplicaId};

use super::{PeerStatus, Replica};
use crate::message::PeerInfo;
use crate::Event;

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) info: PeerInfo,
    /// What it has seen, as far as we know.
    pub(super) known: CausalContext,
    pub(super) awaiting_reply: bool,
    /// Whether our last round sent it a [`Message::Summary`](crate::Message::Summary) not yet
    /// answered with a mismatch (only then does a mismatch get our full digest), and whether
    /// that round asked it for what we lack.
    pub(super) summary_sent: Option<bool>,
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

    /// Whether `peer` is known to hold every update this replica has seen (its digests or
    /// acknowledgements cover this replica's whole context): a copy kept here for it is then
    /// redundant. The estimate errs low, never high.
    pub fn peer_has_all(&self, peer: ReplicaId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.known.includes(&self.durable.seen))
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
        if let Some(peer) = self.peers.get_mut(&info.id) {
            if info.addr.is_some() {
                peer.info.addr = info.addr;
            }
            return;
        }
        let id = info.id;
        let full = self.peers.len() >= self.config.max_peers;
        if full && !self.evict_outside_view() {
            return;
        }
        self.peers.insert(
            info.id,
            Peer {
                info,
                known: CausalContext::new(),
                awaiting_reply: false,
                summary_sent: None,
                missed: 0,
                down: false,
                heard: false,
                retry_round: 0,
                backoff: 1,
            },
        );
        // With peer sampling, a view not yet full takes any peer learned (configured,
        // discovered, or heard from), so a replica started with few or no peers fills it.
        if self.config.view > 0 && self.view.len() < self.config.view {
            self.view.push(id);
        }
    }

    /// Forgets a peer (for example one removed from the trust list).
    pub fn remove_peer(&mut self, id: ReplicaId) {
        self.peers.remove(&id);
        self.view.retain(|v| *v != id);
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

    /// The peers worth a digest this round: those up, and those down whose retry is due
    /// (with peer sampling, of the view).
    pub(super) fn reachable_peers(&self, round: u64) -> Vec<ReplicaId> {
        self.peers
            .iter()
            .filter(|(id, p)| (!p.down || p.retry_round <= round) && self.in_view(**id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The peers fresh deltas are pushed to: those up (with peer sampling, of the view).
    pub(super) fn push_targets(&self) -> Vec<ReplicaId> {
        let mut up = self.peers_up();
        up.retain(|id| self.in_view(*id));
        up
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

/// Peer sampling (see [`Config::view`](super::Config::view)): a bounded partial view of the
/// peers, refreshed by peer exchange, as in Cyclon, so the partners of a replica are a small
/// random sample of the cluster however large it grows.
impl Replica {
    /// Whether `id` may be a gossip partner: any peer, or with peer sampling one in the view.
    fn in_view(&self, id: ReplicaId) -> bool {
        self.config.view == 0 || self.view.contains(&id)
    }

    /// The first view: a random choice of the peers known at start.
    pub(super) fn start_view(&mut self) {
        if self.config.view == 0 {
            return;
        }
        let mut ids: Vec<ReplicaId> = self.peers.keys().copied().collect();
        self.rng.shuffle(&mut ids);
        ids.truncate(self.config.view);
        self.view = ids;
    }

    /// Makes room for a new peer when the peer list is full: with peer sampling, a random peer
    /// outside the view is forgotten (so the view can take in new peers); else none is.
    fn evict_outside_view(&mut self) -> bool {
        if self.config.view == 0 {
            return false;
        }
        let outside: Vec<ReplicaId> = self
            .peers
            .keys()
            .filter(|id| !self.view.contains(id))
            .copied()
            .collect();
        let Some(&gone) = outside.get(self.rng.usize(..outside.len().max(1))) else {
            return false;
        };
        self.remove_peer(gone);
        true
    }

    /// What a peer exchange sends: every peer and this replica, or with peer sampling half
    /// the view (a random half) and this replica.
    pub(super) fn exchange_list(&mut self) -> Vec<PeerInfo> {
        let mut ids: Vec<ReplicaId> = if self.config.view == 0 {
            self.peers.keys().copied().collect()
        } else {
            let mut view = self.view.clone();
            self.rng.shuffle(&mut view);
            view.truncate(self.config.view.div_ceil(2));
            view
        };
        ids.sort_unstable();
        let mut list: Vec<PeerInfo> = ids
            .iter()
            .filter_map(|id| self.peers.get(id))
            .map(|p| p.info.clone())
            .collect();
        list.push(PeerInfo {
            id: self.config.id,
            addr: None,
        });
        list
    }

    /// A peer exchange received: every peer is learned (up to `max_peers`), or with peer
    /// sampling a few (as many as an exchange sends) join the view, in place of peers that
    /// are down, else of random ones.
    pub(super) fn on_peers(&mut self, list: Vec<PeerInfo>) {
        if self.config.view == 0 {
            list.into_iter().for_each(|info| self.add_peer(info));
            return;
        }
        let me = self.config.id;
        let mut list: Vec<PeerInfo> = list.into_iter().filter(|i| i.id != me).collect();
        self.rng.shuffle(&mut list);
        list.truncate(self.config.view.div_ceil(2) + 1);
        for info in list {
            let id = info.id;
            self.add_peer(info);
            if self.peers.contains_key(&id) && !self.view.contains(&id) {
                self.view_insert(id);
            }
        }
    }

    fn view_insert(&mut self, id: ReplicaId) {
        if self.view.len() < self.config.view {
            self.view.push(id);
            return;
        }
        let down = self
            .view
            .iter()
            .position(|v| self.peers.get(v).is_none_or(|p| p.down));
        let slot = down.unwrap_or_else(|| self.rng.usize(..self.view.len().max(1)));
        if let Some(v) = self.view.get_mut(slot) {
            *v = id;
        }
    }
}
