//! Errors.

use crdt_core::{Dot, ReplicaId};

/// Why a peer's message was refused. The peer is at fault; the replica's state is unchanged.
/// A driver disconnects such a peer and keeps serving the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An empty message.
    #[error("empty message")]
    Empty,
    /// A message over the size limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Bytes that are not a valid message.
    #[error("malformed message")]
    Malformed,
    /// A message claiming to come from this replica itself.
    #[error("message from our own replica id {0}")]
    FromSelf(ReplicaId),
    /// A delta claiming an update of ours that we never made.
    #[error("peer sent a delta with our dot {0:?}, which we never issued")]
    ForgedDot(Dot),
}
