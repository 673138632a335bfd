//! Changing whom a running node admits. The trust list is shared with the TLS verifiers, so a
//! change applies to the next handshake; these methods also act on the connections and dials
//! already under way, so that a change takes effect at once.

use crdt_core::ReplicaId;
use tracing::info;

use super::{Fingerprint, Node, NodeError};

impl Node {
    /// Pins the key with `fingerprint` (see [`TrustList::set_key`](super::TrustList::set_key)),
    /// and redials at once the peers whose dials wait out a backoff, so a peer refused before
    /// is admitted without a restart. (A peer that was refused retries on its own backoff.)
    pub fn trust_key(&self, fingerprint: Fingerprint) -> Result<(), NodeError> {
        self.trust.set_key(fingerprint, true)?;
        self.shared.redial.notify_waiters();
        Ok(())
    }

    /// Trusts any key with the node id `id` (64 bits: prefer
    /// [`trust_key`](Node::trust_key)), and redials as `trust_key` does.
    pub fn trust_id(&self, id: ReplicaId) -> Result<(), NodeError> {
        self.trust.set(id, true)?;
        self.shared.redial.notify_waiters();
        Ok(())
    }

    /// Stops trusting the node `id` (its id entry and every pinned key with that id), and
    /// closes its connections; returns how many were closed. Its later attempts are refused
    /// in the handshake.
    pub fn untrust(&self, id: ReplicaId) -> Result<usize, NodeError> {
        self.trust.set(id, false)?;
        Ok(self.drop_untrusted())
    }

    /// Unpins the key with `fingerprint` and closes the connections of keys no longer
    /// admitted; returns how many were closed. (An id-only entry for its id still admits it:
    /// [`untrust`](Node::untrust) removes that too.)
    pub fn untrust_key(&self, fingerprint: Fingerprint) -> Result<usize, NodeError> {
        self.trust.set_key(fingerprint, false)?;
        Ok(self.drop_untrusted())
    }

    /// Closes every connection whose peer's key the trust list no longer admits.
    fn drop_untrusted(&self) -> usize {
        let Ok(mut links) = self.shared.links.lock() else {
            return 0;
        };
        let gone: Vec<ReplicaId> = links
            .iter()
            .filter(|(_, link)| !self.trust.admits(&link.key))
            .map(|(id, _)| *id)
            .collect();
        let mut closed = 0;
        for id in &gone {
            if let Some(link) = links.remove(id) {
                // A connection refused at its start (untrusted by then) is already closed and
                // only waits for its task to take it off the list: not one this call closes.
                if link.connection.close_reason().is_none() {
                    closed += 1;
                    info!(peer = %id, "closed the connection of a peer no longer trusted");
                }
                link.connection.close(4u32.into(), b"no longer trusted");
            }
        }
        closed
    }
}
