//! The messages between cluster nodes, and their versioned encoding (`docs/wire-format.md`,
//! "Cluster messages").

use serde::{Deserialize, Serialize};

use super::RequestError;
use crate::message::{decode_versioned, encode_versioned, Fingerprint};
use crate::{Object, Op, ProtocolError};

/// The version byte that starts every cluster message.
pub const CLUSTER_VERSION: u8 = 1;

/// Bytes a cluster message adds around a replica message: the version byte, the variant, the
/// partition number and the length of the replica message, each at most a 5-byte varint.
pub(super) const ENVELOPE_OVERHEAD: usize = 16;

/// One message between two cluster nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClusterMessage {
    /// A message of the system partition's replica (the member set), itself an encoded
    /// [`Message`](crate::Message).
    System(Vec<u8>),
    /// A message of key partition `partition`'s replica.
    Partition {
        /// The partition, below 2^`partition_bits`.
        partition: u32,
        /// The encoded [`Message`](crate::Message).
        message: Vec<u8>,
    },
    /// A write sent to one of its key's replicas by a node that is not one.
    Forward {
        /// The sender's request id, echoed in [`ClusterMessage::Written`].
        id: u64,
        /// The key.
        key: String,
        /// The operation, applied by the receiver as its own update.
        op: Op,
        /// How many of the key's replicas must hold it before the answer.
        level: u8,
    },
    /// The answer to a [`ClusterMessage::Forward`]: how many replicas hold the write.
    Written {
        /// The request id.
        id: u64,
        /// Replicas holding it, or why not enough do.
        outcome: Result<u32, RequestError>,
    },
    /// A read sent to one of its key's replicas by a node that is not one.
    Get {
        /// The sender's request id, echoed in [`ClusterMessage::Got`].
        id: u64,
        /// The key.
        key: String,
        /// How many of the key's replicas to merge before the answer.
        level: u8,
    },
    /// The answer to a [`ClusterMessage::Get`].
    Got {
        /// The request id.
        id: u64,
        /// The object (`None`: never written), or why it could not be read.
        outcome: Result<Option<Object>, RequestError>,
    },
    /// A round's idle check: the fingerprint of the fingerprints of every partition the sender
    /// holds with the receiver as one of its holders, in partition order. The receiver
    /// compares its own; only on a mismatch do the partitions' replicas exchange summaries.
    Summary(Fingerprint),
}

impl ClusterMessage {
    /// [`CLUSTER_VERSION`] followed by the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(CLUSTER_VERSION, self)
    }

    /// Decodes a message of at most `max_len` bytes.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<ClusterMessage, ProtocolError> {
        decode_versioned(CLUSTER_VERSION, bytes, max_len)
    }
}
