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
    /// A dot, context or progress vector claiming an update of ours that we never made.
    #[error("peer claims our dot {0:?}, which we never issued")]
    ForgedDot(Dot),
    /// A counter above [`MAX_COUNTER`](crate::MAX_COUNTER).
    #[error("counter {0:?} exceeds the limit")]
    CounterTooLarge(Dot),
    /// A state transfer whose covers claim updates that nothing it sent (nor anything we
    /// hold) accounts for.
    #[error("a state transfer claims updates it did not carry")]
    UnjustifiedCovers,
    /// Applying the message would exceed a budget (named).
    #[error("over budget: {0}")]
    OverBudget(&'static str),
}

/// Why a local update was refused. Nothing was recorded and the object is as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError<E = crate::TypeMismatch> {
    /// The operation (or an `update_with` closure) refused the change.
    #[error("{0}")]
    Refused(E),
    /// The object would nest deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
    #[error("object nested {depth} deep; the limit is {max}")]
    TooDeep {
        /// How deep.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// A counter would pass [`MAX_COUNTER`](crate::MAX_COUNTER) for this writer, which peers
    /// refuse.
    #[error("a counter total of {total} would pass the limit of {max}")]
    CounterLimit {
        /// The writer's running total the update would reach.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// A value too large to be sent in one message; peers would refuse it.
    #[error("a value of {bytes} bytes exceeds the largest that fits in a message ({max})")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit ([`Replica::largest_value`](crate::Replica::largest_value)).
        max: usize,
    },
}
