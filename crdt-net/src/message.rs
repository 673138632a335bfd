//! Protocol messages and their versioned encoding (documented in `docs/wire-format.md`).

use crdt_core::{CausalContext, Dot, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};

use crate::{Object, ProtocolError};

/// The protocol version this build speaks: the first byte of every message.
pub const PROTOCOL_VERSION: u8 = 5;

/// One protocol message between two replicas.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// What the sender has seen. `want` asks the receiver to send what the sender lacks;
    /// `reply` asks it to answer with its own digest unless it lacks nothing.
    Digest(Digest),
    /// The answer to a digest or summary when there is nothing to exchange. It names no
    /// context, so it tells nothing of what the sender holds.
    InSync,
    /// Deltas the receiver lacks, each named by the dot of the update that made it.
    Deltas(Vec<DeltaEntry>),
    /// The dots of deltas received, so the sender knows what the receiver holds.
    Ack(CausalContext),
    /// Part of a state transfer: whole objects, or pieces of large ones.
    State(StateChunk),
    /// The end of a state transfer: once every chunk has arrived, the receiver has seen `covers`.
    StateDone(StateDone),
    /// Peers the sender knows, for peer exchange.
    Peers(Vec<PeerInfo>),
    /// Asks for one object, for a read that must merge it from several replicas.
    Read(ReadRequest),
    /// One piece of the answer to a [`Message::Read`].
    ReadReply(ReadReply),
    /// A round's digest in short: the [`fingerprint`] of the sender's context, sent instead of
    /// a [`Message::Digest`] when the sender believes the receiver has everything it has. The
    /// receiver answers [`Message::InSync`] if its own context has the same fingerprint, else
    /// [`Message::Mismatch`]; so an idle exchange costs 20 bytes whatever the context holds.
    /// Also the answer to a full digest equal to the receiver's context, so the sender learns
    /// the receiver has it.
    Summary(Fingerprint),
    /// The answer to a [`Message::Summary`] whose fingerprint is not the receiver's: the
    /// sender of the summary sends its full [`Message::Digest`] instead.
    Mismatch,
}

/// A short, stable fingerprint of a causal context (see [`fingerprint`]).
pub type Fingerprint = [u8; 16];

/// The fingerprint of `context`: SipHash-2-4 with 128-bit output and the all-zero key, over
/// the context's canonical encoding (crdt-core's postcard layout, without a version byte, as
/// it appears inside a [`Message::Digest`]).
///
/// Equal contexts have equal encodings (crdt-core's states are canonical), so equal
/// fingerprints; the encoding and the hash are fixed by the protocol version, so the
/// fingerprint is the same on every platform and build speaking it. Different contexts share
/// a fingerprint with probability about 2^-128. SipHash is not collision-resistant against
/// someone choosing contexts with the key known, which the protocol does not need: see
/// docs/robustness.md ("Summaries").
///
/// ```
/// use crdt_core::{CausalContext, Dot, ReplicaId};
/// use crdt_net::message::fingerprint;
///
/// let one: CausalContext = [Dot::new(ReplicaId::new(1), 1)].into_iter().collect();
/// assert_eq!(fingerprint(&one), fingerprint(&one.clone()));
/// assert_ne!(fingerprint(&one), fingerprint(&CausalContext::new()));
/// ```
pub fn fingerprint(context: &CausalContext) -> Fingerprint {
    // A context always encodes: postcard writes a vector without failing.
    let bytes = postcard::to_allocvec(context).unwrap_or_default();
    siphasher::sip128::SipHasher24::new_with_key(&[0; 16])
        .hash(&bytes)
        .as_bytes()
}

/// A request for the object at `key`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadRequest {
    /// Chosen by the reader; echoed in the reply.
    pub id: u64,
    /// The object's key.
    pub key: String,
}

/// Piece `part` of `parts` of the answer to read `id`: the object (or a piece of it, for one
/// too large for a message), or nothing if the sender has no such object.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadReply {
    /// The request's id.
    pub id: u64,
    /// Which piece, from 0.
    pub part: u32,
    /// How many pieces the answer has.
    pub parts: u32,
    /// The piece, if the sender holds the object.
    pub entry: Option<StateEntry>,
}

/// What a replica has seen, and where an interrupted transfer from the receiver stopped.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Digest {
    /// Every update the sender has incorporated.
    pub seen: CausalContext,
    /// Whether the receiver should answer with its own digest.
    pub reply: bool,
    /// Whether the receiver should send what the sender lacks. A replica asks one peer at a
    /// time, so a large catch-up is not sent twice by two peers.
    pub want: bool,
    /// Progress of an unfinished state transfer from the receiver.
    pub resume: Option<Resume>,
}

/// "I hold your objects in these key ranges, as of your context `base`": lets a transfer resume
/// without sending again what arrived before it broke off.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Resume {
    /// Inclusive key ranges received in full, in key order.
    pub ranges: Vec<(String, String)>,
    /// The sender's context when the transfer began.
    pub base: VersionVector,
}

/// A buffered delta.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeltaEntry {
    /// The update that made it.
    pub dot: Dot,
    /// The object it changes.
    pub key: String,
    /// The change.
    pub delta: Object,
}

/// Objects of a state transfer, in key order.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StateChunk {
    /// Names the transfer; chunks of an older transfer still merge but do not count.
    pub transfer: u64,
    /// The chunk's place in the transfer, from 0.
    pub index: u32,
    /// How many keys of the sender's keyspace its cursor had passed when it cut this chunk,
    /// sent or skipped: with `keys`, how far the transfer has come. Informational only (the
    /// sender cuts chunks as it goes, so it knows no other total); a receiver clamps it to
    /// `keys` and relies on it for nothing.
    pub walked: u64,
    /// How many keys the sender's keyspace had when the transfer began.
    pub keys: u64,
    /// The sender's context when the transfer began.
    pub base: VersionVector,
    /// The first and last keys whose every piece is in this chunk; every key of the transfer
    /// between them is whole in this chunk too.
    pub complete: Option<(String, String)>,
    /// The objects or pieces.
    pub objects: Vec<StateEntry>,
}

/// One object, or one piece of it, in a state transfer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StateEntry {
    /// The object's key.
    pub key: String,
    /// The latest update of each writer to this object, as far as the sender knows.
    pub touched: VersionVector,
    /// The object, or a piece of it (see `crdt_core::Decompose`).
    pub object: Object,
}

/// Closes a state transfer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StateDone {
    /// The transfer.
    pub transfer: u64,
    /// How many chunks it had.
    pub chunks: u32,
    /// Everything the sender had seen when the transfer began.
    pub covers: CausalContext,
}

/// A peer: its id, and where to reach it if the sender knows.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's replica id.
    pub id: ReplicaId,
    /// An address the driver understands (for example `192.0.2.7:4433`).
    pub addr: Option<String>,
}

impl Message {
    /// The protocol version byte followed by the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(PROTOCOL_VERSION, self)
    }

    /// Decodes a message of at most `max_len` bytes.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Message, ProtocolError> {
        decode_versioned(PROTOCOL_VERSION, bytes, max_len)
    }
}

/// `version` followed by the postcard encoding of `message`.
pub(crate) fn encode_versioned(version: u8, message: &impl Serialize) -> Vec<u8> {
    // Messages hold only types postcard can always write into a vector.
    postcard::to_extend(message, vec![version]).unwrap_or_else(|_| vec![version])
}

/// Decodes a message of at most `max_len` bytes that starts with `version` and holds nothing
/// after its postcard encoding.
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(
    version: u8,
    bytes: &[u8],
    max_len: usize,
) -> Result<T, ProtocolError> {
    if bytes.len() > max_len {
        return Err(ProtocolError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let (&found, body) = bytes.split_first().ok_or(ProtocolError::Empty)?;
    if found != version {
        return Err(ProtocolError::UnsupportedVersion(found));
    }
    let (message, rest) = postcard::take_from_bytes(body).map_err(|_| ProtocolError::Malformed)?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed);
    }
    Ok(message)
}
