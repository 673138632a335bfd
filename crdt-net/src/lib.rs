//! Anti-entropy replication of [`crdt_core`] objects between replicas.
//!
//! * [`Replica`] is the protocol as a sans-IO state machine: feed it messages and time, send
//!   what it returns. It holds a keyspace of [`Object`]s (any crdt-core type, nested maps
//!   included), tags every local update with a dot, pushes fresh deltas to peers, and runs
//!   push-pull rounds in which peers exchange digests and then send each other only what the
//!   other lacks: buffered deltas, or the state of just the objects changed since the peer's
//!   digest, in messages of bounded size that resume after an interruption.
//! * [`node`] (feature `quic`, on by default) runs a replica over QUIC: authenticated peers, a
//!   trust list, reconnects, bounded queues, persisted state.
//! * `http` (feature `http`, off by default) serves a node's objects and change stream as a
//!   local JSON API for applications in any language.
//! * [`sim`] runs many replicas on virtual time with seeded loss, duplication, reordering,
//!   partitions and crashes.
//!
//! The messages are specified in `docs/wire-format.md`.
//!
//! # Code map
//!
//! | module | what |
//! | --- | --- |
//! | `replica` | [`Replica`], [`Config`], [`Durable`] (what a store keeps), events and stats; `replica::validate`, the checks every message passes first |
//! | `cluster` | [`cluster::Cluster`]: partial replication, one replica per partition of a consistent-hash ring, forwarding, sloppy quorums, handoff |
//! | `message` | [`Message`] and its versioned encoding |
//! | `object` | [`Object`] (one enum over the crdt-core types) and [`Op`] |
//! | `log` | the bounded delta buffer |
//! | `sim` | the deterministic simulator |
//! | `store` | [`store::Store`] (the storage seam), [`store::MemStore`], [`store::RedbStore`] |
//! | `node` | the tokio + quinn driver, [`node::Node`] and its builder |
//! | `node::identity` | key pair, self-signed certificate, node id, trust list, TLS verifiers |
//! | `error` | [`ProtocolError`] |
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod cluster;
mod error;
// A local HTTP API for a node (its docs are in the module; see `docs/http-api.md`).
#[cfg(feature = "http")]
pub mod http;
mod log;
pub mod message;
#[cfg(feature = "quic")]
pub mod node;
mod object;
mod replica;
pub mod ring;
pub mod sim;
pub mod store;
pub mod value;

pub use error::{ProtocolError, UpdateError};
pub use message::{Message, PeerInfo, PROTOCOL_VERSION};
pub use object::{Object, Op, TypeMismatch, MAX_DEPTH};
pub use replica::{
    Config, Durable, Event, Millis, PeerStatus, Replica, Stats, Transmit, MAX_COUNTER,
};
