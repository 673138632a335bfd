//! A replica on the network: the sans-IO [`Replica`] driven over QUIC (quinn + tokio), with
//! mutually authenticated TLS 1.3 between nodes on each other's trust lists.
//!
//! The driver is thin glue: it feeds the replica the messages that arrive on each peer's
//! connection and the passing time, and sends what the replica returns. One connection per peer
//! carries length-prefixed messages on one unidirectional stream each way. Per-peer send queues
//! are bounded: when a slow or dead peer's queue is full, messages to it are dropped (and
//! counted), and anti-entropy repairs the gap later. A peer that sends a malformed or oversized
//! message is disconnected; the node keeps serving the others.
//!
//! One thread owns the replica and its store (a [`RedbStore`] in the data directory, which
//! also locks the directory against a second process); every other task talks to it through
//! a channel. It commits the changes of everything waiting in one transaction (group commit)
//! and only then answers writers and lets messages go: an update acknowledged at
//! [`Ack::Local`] survives SIGKILL, and no dot is ever sent before it is durable, so a
//! restarted node never reuses one. Reads ([`Node::with`] and the typed handles' getters) do
//! not queue behind it: they share a read lock that the owner takes for writing for each whole
//! turn, so they see only committed states and copy nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), crdt_net::node::NodeError> {
//! use crdt_net::node::NodeBuilder;
//! use crdt_net::Op;
//!
//! let node = NodeBuilder::new("./data/laptop")
//!     .listen("0.0.0.0:4433".parse().unwrap())
//!     .peer("192.0.2.10:4433".parse().unwrap())
//!     .start()
//!     .await?;
//! node.update("groceries", Op::Add("milk".into())).await?; // durable here when it returns
//! println!("{:?}", node.get("groceries").await);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

mod admission;
mod cluster;
mod dial;
#[cfg(feature = "mdns")]
mod discovery;
mod frames;
mod handle;
mod identity;
mod owner;
mod progress;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crdt_core::{Dot, ReplicaId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn, Instrument};

pub use cluster::{ClusterNode, ClusterNodeBuilder};
pub use handle::{
    CounterHandle, GCounterHandle, MapHandle, MvRegisterHandle, RegisterHandle, SetHandle,
};
pub use identity::{fingerprint, node_id, parse_node_id, Fingerprint, Identity, TrustList};
pub use progress::CatchUp;

use self::dial::{dial, dial_new_peers, Target};
use self::owner::{Change, Command, Owner, State};
use crate::replica::{Config, Durable, Event, PeerStatus, Replica, Stats, Transmit};
use crate::store::{RedbStore, StoreError};
use crate::value::ValueError;
use crate::{Object, Op, PeerInfo, TypeMismatch, UpdateError};

/// Why a node could not start or act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Reading or writing the data directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The identity could not be made or read.
    #[error("identity: {0}")]
    Identity(String),
    /// A node id that is not 16 hex digits.
    #[error("not a node id (16 hex digits): {0:?}")]
    BadNodeId(String),
    /// The persisted state does not decode; the node refuses to start rather than lose it.
    #[error("persisted state {path} is unreadable: {reason}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: crdt_core::DecodeError,
    },
    /// TLS or QUIC could not be set up, or a connection failed.
    #[error("transport: {what}: {source}")]
    Transport {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The update was refused: the operation does not fit the object's type, nests too deep
    /// or carries a value too large for a message.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// An [`update_with`](Node::update_with) closure refused the change.
    #[error("update refused: {0}")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store could not be opened, read or written. An update that fails with it is not
    /// known to be durable (it is sent to no one until a later commit succeeds).
    #[error("store: {0}")]
    Store(#[source] Arc<StoreError>),
    /// Fewer replicas than the [`Ack`] level asked for acknowledged the write in time. The
    /// write is durable here and keeps spreading.
    #[error("acknowledged by {acked} of the {wanted} replicas asked for (this node included) before the timeout; the write stays and keeps spreading")]
    AckTimeout {
        /// Replicas known to hold the write durably, this one included.
        acked: usize,
        /// Replicas the level asked for, this one included.
        wanted: usize,
    },
    /// Fewer replicas than the [`ReadLevel`] asked for answered in time.
    #[error("{answered} of the {wanted} replicas asked for (this node included) answered before the timeout")]
    ReadTimeout {
        /// Replicas whose state the read merged, this one included.
        answered: usize,
        /// Replicas the level asked for, this one included.
        wanted: usize,
    },
    /// The node had not seen the write a [`Token`] names before the timeout.
    #[error("write {0} not seen here before the timeout")]
    NotSeen(Token),
    /// A token that is not `REPLICA:COUNTER` (16 hex digits, a colon, a positive number).
    #[error("not a write token (REPLICA:COUNTER): {0:?}")]
    BadToken(String),
    /// A typed handle read an object of another type (see [`Node::set`] and the others).
    #[error("{0}")]
    WrongType(TypeMismatch),
    /// A value did not decode as the type a handle reads (see [`crate::value`]).
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A [`ClusterNode`] write or read did not reach its level (see
    /// [`RequestError`](crate::cluster::RequestError)).
    #[error("request: {0}")]
    Request(#[source] crate::cluster::RequestError),
    /// The node is shutting down or has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// How many replicas must hold a write durably before [`Node::update_acked`] returns.
///
/// Every level first commits the write here; the others then wait for peers that have merged
/// and committed it. A level that is not met in time fails the call with
/// [`NodeError::AckTimeout`], and the write stays and keeps spreading: acknowledgement levels
/// choose when a writer hears back, never whether the write happens (the node stays on the
/// available side of CAP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ack {
    /// Durable on this node (the default).
    #[default]
    Local,
    /// Durable here and on `n` peers.
    Peers(usize),
    /// Durable on more than half of the replicas this node knows (itself included).
    Majority,
    /// Durable on every peer this node knows.
    All,
}

impl Ack {
    /// How many peers must hold the write, out of `peers` known.
    fn peers_needed(self, peers: usize) -> usize {
        match self {
            Ack::Local => 0,
            Ack::Peers(n) => n,
            // More than half of `peers + 1` replicas, this one included.
            Ack::Majority => peers.div_ceil(2),
            Ack::All => peers,
        }
    }
}

/// How many replicas a read consults before it answers ([`Node::read`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadLevel {
    /// This node's state as it is (the default; may be stale).
    #[default]
    Local,
    /// This node's state merged with the object from `n` peers. With writes acknowledged
    /// by `W` replicas ([`Ack`]) and `n + 1 + W` greater than the number of replicas, the
    /// answer includes every acknowledged write (a quorum read).
    Peers(usize),
}

/// Names one write, for reading it back at any node ([`Node::get_after`]): read-your-writes
/// across nodes. Printed and parsed as `REPLICA:COUNTER`.
///
/// ```
/// use crdt_net::node::Token;
///
/// let token: Token = "00000000000000ff:7".parse().unwrap();
/// assert_eq!(token.to_string(), "00000000000000ff:7");
/// assert!("ff:0".parse::<Token>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub Dot);

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0.replica, self.0.counter)
    }
}

impl std::str::FromStr for Token {
    type Err = NodeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || NodeError::BadToken(text.to_owned());
        let (replica, counter) = text.trim().split_once(':').ok_or_else(bad)?;
        let replica = parse_node_id(replica).map_err(|_| bad())?;
        let counter: u64 = counter.parse().map_err(|_| bad())?;
        if counter == 0 {
            return Err(bad());
        }
        Ok(Token(Dot::new(replica, counter)))
    }
}

/// Configures and starts a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    data_dir: PathBuf,
    listen: SocketAddr,
    peers: Vec<Target>,
    trust: Vec<ReplicaId>,
    trust_keys: Vec<Fingerprint>,
    gossip_interval: Duration,
    fanout: usize,
    view: usize,
    queue: usize,
    mdns: bool,
    max_drift: Duration,
    clock_offset: i64,
}

/// How many messages may wait for one peer before more are dropped.
const DEFAULT_QUEUE: usize = 1024;
/// The store, in the data directory.
const STORE_FILE: &str = "store.redb";
/// The snapshot file of earlier versions, imported into the store on first start.
const STATE_FILE: &str = "state.bin";
/// How long [`Node::update`] waits for peers at [`Ack`] levels above `Local` by default.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
const ALPN: &[u8] = b"crdt/1";

impl NodeBuilder {
    /// A node keeping its identity, trust list and state in `data_dir`; listening on an
    /// ephemeral loopback port; 1 s rounds, fanout 2.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeBuilder {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: Vec::new(),
            trust: Vec::new(),
            trust_keys: Vec::new(),
            gossip_interval: Duration::from_secs(1),
            fanout: 2,
            view: 0,
            queue: DEFAULT_QUEUE,
            mdns: true,
            max_drift: Duration::from_secs(60),
            clock_offset: 0,
        }
    }

    /// Whether to announce and discover nodes on the LAN by mDNS (feature `mdns`, on by
    /// default). It applies only when listening on a non-loopback address.
    pub fn mdns(mut self, enabled: bool) -> Self {
        self.mdns = enabled;
        self
    }

    /// The UDP address to listen on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// A peer to connect to (and reconnect to, with backoff).
    pub fn peer(mut self, addr: SocketAddr) -> Self {
        self.peers.push(Target::Addr(addr));
        self
    }

    /// A peer to connect to by name, `host:port` (such as `laptop.local:4433`): the name is
    /// resolved again before every attempt, so a peer whose address changes is found again.
    /// A name that does not resolve is logged once and retried with backoff.
    pub fn peer_named(mut self, host_and_port: impl Into<String>) -> Self {
        self.peers.push(Target::Name(host_and_port.into()));
        self
    }

    /// Trusts the node with `id` in addition to the trust file: any key whose fingerprint
    /// starts with it (64 bits; prefer [`trust_key`](NodeBuilder::trust_key)).
    pub fn trust(mut self, id: ReplicaId) -> Self {
        self.trust.push(id);
        self
    }

    /// Pins the key with `fingerprint` in addition to the trust file.
    pub fn trust_key(mut self, fingerprint: Fingerprint) -> Self {
        self.trust_keys.push(fingerprint);
        self
    }

    /// Time between anti-entropy rounds.
    pub fn gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// Peers contacted per round.
    pub fn fanout(mut self, fanout: usize) -> Self {
        self.fanout = fanout;
        self
    }

    /// Peer sampling: gossip with at most `peers` peers of a partial view refreshed by peer
    /// exchange ([`Config::view`](crate::Config::view)), so a node's traffic per round does
    /// not grow with the cluster. 0 (the default): every known peer is a gossip partner.
    pub fn view(mut self, peers: usize) -> Self {
        self.view = peers;
        self
    }

    /// How far ahead of this node's clock a peer's last-writer-wins timestamp may be before
    /// the write is refused (and counted in [`Metrics`], and reported as
    /// [`Event::ClockDrift`]) until this clock catches up. Default 60 s.
    pub fn max_drift(mut self, drift: Duration) -> Self {
        self.max_drift = drift;
        self
    }

    /// Runs this node's clock `offset_ms` ahead of (or, negative, behind) the system clock:
    /// for testing what a skewed clock does.
    pub fn clock_offset(mut self, offset_ms: i64) -> Self {
        self.clock_offset = offset_ms;
        self
    }

    /// Messages that may wait for one peer before more are dropped.
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// Opens the store (locking the data directory against a second process), loads (or
    /// makes) the identity and the trust list, binds the socket and starts gossiping.
    ///
    /// A data directory written by an earlier version (a `state.bin` snapshot) is imported
    /// into the store on first start, and the snapshot renamed to `state.bin.imported`.
    pub async fn start(self) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|source| NodeError::Io {
            path: self.data_dir.clone(),
            source,
        })?;
        let (store, durable) = open_store(&self.data_dir)?;
        let identity = Identity::load_or_create(&self.data_dir)?;
        let trust = TrustList::load(&self.data_dir)?;
        for id in &self.trust {
            trust.set(*id, true)?;
        }
        for key in &self.trust_keys {
            trust.set_key(*key, true)?;
        }
        let mut config = Config::new(identity.id());
        config.gossip_interval = self.gossip_interval.as_millis().max(1) as u64;
        config.fanout = self.fanout;
        config.view = self.view;
        config.seed = seed_from_clock(identity.id());
        config.max_drift = self.max_drift.as_millis() as u64;
        let endpoint = endpoint(&identity, &trust, self.listen, ALPN)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(transport_failed("reading the endpoint's address"))?;
        let (events, _) = broadcast::channel(4096);
        let (stop, _) = watch::channel(false);
        let (commands, received) = std::sync::mpsc::channel();
        let replica = Replica::restore(config, durable);
        let max_message = replica.max_message();
        let state = Arc::new(RwLock::new(State {
            replica,
            failure: None,
        }));
        let shared = Arc::new(Shared {
            state: state.clone(),
            clock_offset: self.clock_offset,
            commands,
            max_message,
            links: Mutex::new(BTreeMap::new()),
            dialing: Mutex::new(BTreeSet::new()),
            redial: tokio::sync::Notify::new(),
            catch_up: Mutex::new(BTreeMap::new()),
            blocked: Mutex::new(BTreeSet::new()),
            events,
            dropped: AtomicU64::new(0),
            pending_acks: AtomicU64::new(0),
            dials: AtomicU64::new(0),
            stop,
            endpoint,
            queue: self.queue,
            id: identity.id(),
            trust: trust.clone(),
        });
        let span = info_span!("node", id = %identity.id());
        let owner = Owner {
            state,
            store,
            shared: shared.clone(),
            runtime: tokio::runtime::Handle::current(),
            drift_reported: BTreeSet::new(),
        };
        let owner_span = span.clone();
        std::thread::Builder::new()
            .name(format!("crdt-owner-{}", identity.id()))
            .spawn(move || owner_span.in_scope(|| owner.run(received)))
            .map_err(|source| NodeError::Io {
                path: self.data_dir.clone(),
                source,
            })?;
        info!(node = %identity.id(), %local_addr, "node started");
        let mut tasks = vec![tokio::spawn(
            accept_loop(shared.clone()).instrument(span.clone()),
        )];
        for target in self.peers {
            if let Target::Addr(addr) = target {
                if let Ok(mut dialing) = shared.dialing.lock() {
                    dialing.insert(addr);
                }
            }
            tasks.push(tokio::spawn(
                dial(shared.clone(), target).instrument(span.clone()),
            ));
        }
        #[cfg(feature = "mdns")]
        let mdns = (self.mdns && !local_addr.ip().is_loopback())
            .then(|| span.in_scope(|| discovery::start(&shared, local_addr.port())))
            .flatten()
            .map(Mdns);

        Ok(Node {
            fingerprint: identity.fingerprint()?,
            shared,
            tasks,
            local_addr,
            trust,
            #[cfg(feature = "mdns")]
            mdns,
        })
    }
}

/// A running node. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local_addr: SocketAddr,
    trust: TrustList,
    #[cfg(feature = "mdns")]
    mdns: Option<Mdns>,
}

/// The mDNS daemon, which has no `Debug` of its own.
#[cfg(feature = "mdns")]
struct Mdns(mdns_sd::ServiceDaemon);

#[cfg(feature = "mdns")]
impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mdns")
    }
}

/// A node's counters: the replica's traffic, its peers, and what the driver dropped.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Metrics {
    /// Rounds, messages and bytes in and out.
    pub stats: Stats,
    /// Each known peer, up or down, and how many of our updates it lacks.
    pub peers: Vec<PeerStatus>,
    /// Messages dropped because a peer's queue was full or it had no connection.
    pub dropped: u64,
    /// Committed writes whose callers still wait for peers' acknowledgements.
    pub pending_acks: u64,
    /// Connection attempts this node has made (dials and redials).
    pub dials: u64,
}

impl Node {
    /// This node's id.
    pub fn id(&self) -> ReplicaId {
        self.shared.id
    }

    /// The SHA-256 of this node's public key: what peers pin to trust it
    /// ([`NodeBuilder::trust_key`], `crdt-node trust`).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies `op` to the object at `key` and returns once the change is committed to this
    /// node's store ([`Ack::Local`]); it reaches peers in milliseconds when they are
    /// connected, and by anti-entropy otherwise. The token names the write for
    /// [`get_after`](Node::get_after) at any node.
    pub async fn update(&self, key: &str, op: Op) -> Result<Token, NodeError> {
        self.update_acked(key, op, Ack::Local, DEFAULT_ACK_TIMEOUT)
            .await
    }

    /// Applies `op` to the object at `key` and returns once `ack` is met, or fails with
    /// [`NodeError::AckTimeout`] (saying how many replicas acknowledged) after `timeout`.
    /// Peers count only once they have durably merged the write.
    ///
    /// ```no_run
    /// # async fn demo(node: &crdt_net::node::Node) -> Result<(), crdt_net::node::NodeError> {
    /// use std::time::Duration;
    /// use crdt_net::node::Ack;
    /// use crdt_net::Op;
    ///
    /// // A checkpoint must be on two more replicas before training goes on.
    /// node.update_acked("checkpoints", Op::Add("step-1000".into()), Ack::Peers(2), Duration::from_secs(10))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_acked(
        &self,
        key: &str,
        op: Op,
        ack: Ack,
        timeout: Duration,
    ) -> Result<Token, NodeError> {
        let key = key.to_owned();
        let change: Change = Box::new(move |replica| Ok(replica.update(&key, &op)?));
        self.change(change, ack, timeout)
            .await
            .map(|(token, _)| token)
    }

    /// Mutates the object at `key` with `f`, which returns the mutation's delta (see
    /// [`Replica::update_with`]); for changes [`Op`] cannot express, such as several mutations
    /// of one nested map in one update. Returns the delta once it is committed here. An error
    /// from `f` comes back as [`NodeError::Refused`] and changes nothing.
    pub async fn update_with<E>(
        &self,
        key: &str,
        f: impl FnOnce(&mut Object) -> Result<Object, E> + Send + 'static,
    ) -> Result<Object, NodeError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let key = key.to_owned();
        let change: Change = Box::new(move |replica| {
            replica.update_with(&key, f).map_err(|e| match e {
                UpdateError::Refused(e) => NodeError::Refused(e.into()),
                UpdateError::TooDeep { depth, max } => {
                    NodeError::Update(UpdateError::TooDeep { depth, max })
                }
                UpdateError::TooLarge { bytes, max } => {
                    NodeError::Update(UpdateError::TooLarge { bytes, max })
                }
                UpdateError::CounterLimit { total, max } => {
                    NodeError::Update(UpdateError::CounterLimit { total, max })
                }
            })
        });
        self.change(change, Ack::Local, DEFAULT_ACK_TIMEOUT)
            .await
            .map(|(_, delta)| delta)
    }

    /// This node's replica id, for calling crdt-core mutators inside
    /// [`update_with`](Node::update_with).
    pub fn replica_id(&self) -> ReplicaId {
        self.shared.id
    }

    /// A copy of the object at `key`, read on the owner thread after its turn's commit. To
    /// read without copying or waiting for the owner, use [`with`](Node::with) or a typed
    /// handle's getters.
    pub async fn get(&self, key: &str) -> Option<Object> {
        let key = key.to_owned();
        self.query(move |r| r.get(&key).cloned()).await.flatten()
    }

    /// The object at `key` at read level `level`: with [`ReadLevel::Peers`]`(n)`, after
    /// merging the object from `n` peers (it fails with [`NodeError::ReadTimeout`] if fewer
    /// answer within `timeout`; what did answer stays merged).
    ///
    /// ```no_run
    /// # async fn demo(node: &crdt_net::node::Node) -> Result<(), crdt_net::node::NodeError> {
    /// use std::time::Duration;
    /// use crdt_net::node::ReadLevel;
    ///
    /// // Three replicas, writes acknowledged by two (Ack::Peers(1)): R = 2 sees them all.
    /// let cart = node.read("cart", ReadLevel::Peers(1), Duration::from_secs(2)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read(
        &self,
        key: &str,
        level: ReadLevel,
        timeout: Duration,
    ) -> Result<Option<Object>, NodeError> {
        let peers = match level {
            ReadLevel::Local => 0,
            ReadLevel::Peers(n) => n,
        };
        let (reply, answer) = oneshot::channel();
        self.shared.command(Command::Read {
            key: key.to_owned(),
            peers,
            deadline: deadline_after(timeout),
            reply,
        })?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// The object at `key` once this node has seen the write `token` names (made here or at
    /// any other node): read-your-writes across nodes. Fails with [`NodeError::NotSeen`] if
    /// the write has not arrived within `timeout`.
    pub async fn get_after(
        &self,
        key: &str,
        token: Token,
        timeout: Duration,
    ) -> Result<Option<Object>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.shared.command(Command::After {
            dot: token.0,
            key: key.to_owned(),
            deadline: deadline_after(timeout),
            reply,
        })?;
        answer
            .await
            .map_err(|_| NodeError::Stopped)?
            .ok_or(NodeError::NotSeen(token))
    }

    /// Calls `f` with the object at `key` as this node has committed it, without copying it
    /// and without waiting for the owner thread: `Ok(None)` if nothing is written there.
    ///
    /// `f` runs under the replica's read lock. Reads never see a write before its commit:
    /// the owner thread holds the write lock for a whole turn (its changes and their commit,
    /// or the restore from the store when the commit fails), so a read may wait for one turn,
    /// mostly one fsync (see docs/benchmarks.md for its time). While `f` runs the owner cannot
    /// start its next turn: keep `f` short, and do not call the node's reads from inside it
    /// (a second read lock taken while the owner waits for its write lock deadlocks).
    ///
    /// Fails with [`NodeError::Store`] while the replica holds changes the store refused and
    /// could not be read back from (so they are not shown), and with [`NodeError::Stopped`]
    /// once the owner thread has failed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let node = crdt_net::node::NodeBuilder::new(dir.path())
    /// #     .listen("127.0.0.1:0".parse()?).mdns(false).start().await?;
    /// use crdt_net::{Object, Op};
    ///
    /// node.update("cart", Op::Add(b"milk".to_vec())).await?;
    /// let has_milk = node.with("cart", |cart| match cart {
    ///     Object::Set(set) => set.contains(&b"milk"[..]),
    ///     _ => false,
    /// })?;
    /// assert_eq!(has_milk, Some(true));
    /// assert_eq!(node.with("nothing", |_| ())?, None);
    /// # node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&Object) -> R) -> Result<Option<R>, NodeError> {
        self.with_replica(|replica| replica.get(key).map(f))
    }

    /// Calls `f` with every key and its object, in key order, under one read lock (see
    /// [`with`](Node::with): the same guarantees and the same advice to keep `f` short).
    pub fn for_each(&self, mut f: impl FnMut(&str, &Object)) -> Result<(), NodeError> {
        self.with_replica(|replica| {
            for (key, object) in replica.objects() {
                f(key, object);
            }
        })
    }

    /// Every key, in order.
    pub fn keys(&self) -> Result<Vec<String>, NodeError> {
        self.with_replica(|replica| replica.objects().keys().cloned().collect())
    }

    /// Calls `f` with the replica as committed, under the read lock.
    fn with_replica<R>(&self, f: impl FnOnce(&Replica) -> R) -> Result<R, NodeError> {
        let state = self.shared.state.read().map_err(|_| NodeError::Stopped)?;
        Ok(f(state.committed()?))
    }

    /// Changes (local and remote) and peers going up or down, as they happen. A receiver that
    /// falls more than 4096 events behind skips ahead (and is told how many it missed).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The known peers.
    pub async fn peers(&self) -> Vec<PeerStatus> {
        self.query(|r| r.peers().collect())
            .await
            .unwrap_or_default()
    }

    /// Traffic counters.
    pub async fn metrics(&self) -> Metrics {
        let (stats, peers) = self
            .query(|r| (r.stats().clone(), r.peers().collect()))
            .await
            .unwrap_or_default();
        Metrics {
            stats,
            peers,
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            pending_acks: self.shared.pending_acks.load(Ordering::Relaxed),
            dials: self.shared.dials.load(Ordering::Relaxed),
        }
    }

    /// The trust list. Its changes apply to the next handshake; [`trust_key`](Node::trust_key)
    /// and [`untrust`](Node::untrust) also redial and drop connections, to apply at once.
    pub fn trust_list(&self) -> &TrustList {
        &self.trust
    }

    /// Stops exchanging messages with `ids` (and resumes with everyone else): a partition made
    /// in software, for demos and tests.
    pub fn isolate_from(&self, ids: &[ReplicaId]) {
        if let Ok(mut blocked) = self.shared.blocked.lock() {
            *blocked = ids.iter().copied().collect();
        }
    }

    /// Commits what is pending, closes the store (releasing the data directory), closes every
    /// connection and stops. (Dropping a `Node` stops it too, without waiting.)
    pub async fn shutdown(self) {
        let closed = self.stop();
        let _ = closed.await;
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
        info!(node = %self.shared.id, "node stopped");
    }

    /// Tells every task and the owner to stop; the receiver hears once the store is closed.
    fn stop(&self) -> oneshot::Receiver<()> {
        #[cfg(feature = "mdns")]
        if let Some(Mdns(daemon)) = &self.mdns {
            let _ = daemon.shutdown();
        }
        let _ = self.shared.stop.send(true);
        let (stopped, closed) = oneshot::channel();
        let _ = self.shared.command(Command::Stop(stopped));
        self.shared.endpoint.close(0u32.into(), b"shutdown");
        for task in &self.tasks {
            task.abort();
        }
        closed
    }

    async fn change(
        &self,
        change: Change,
        ack: Ack,
        timeout: Duration,
    ) -> Result<(Token, Object), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.shared.command(Command::Update {
            change,
            ack,
            timeout,
            reply,
        })?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `f` on the replica's owner; `None` once the node has stopped.
    async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Replica) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .command(Command::With(Box::new(move |r| {
                let _ = reply.send(f(r));
            })))
            .ok()?;
        answer.await.ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The owner and the tasks hold the command channel too, so it never closes by
        // itself: stop them explicitly (a no-op after `shutdown`), without waiting.
        drop(self.stop());
    }
}

/// What the driver's tasks share. The replica is here for readers only: its owner thread is
/// the one writer (see [`owner`]).
#[derive(Debug)]
struct Shared {
    /// The replica as committed, for reads under the read lock ([`Node::with`]).
    state: Arc<RwLock<State>>,
    /// Added to the wall clock (ms): a skewed clock, for tests.
    clock_offset: i64,
    commands: std::sync::mpsc::Sender<Command>,
    max_message: usize,
    links: Mutex<BTreeMap<ReplicaId, Link>>,
    /// Addresses with a dialing task, so peer exchange starts at most one per address.
    dialing: Mutex<BTreeSet<SocketAddr>>,
    /// Wakes the dialing tasks waiting out a backoff: the trust list gained an entry.
    redial: tokio::sync::Notify,
    /// State transfers arriving from each peer (see [`Node::catch_up`]).
    catch_up: Mutex<BTreeMap<ReplicaId, progress::Record>>,
    blocked: Mutex<BTreeSet<ReplicaId>>,
    events: broadcast::Sender<Event>,
    dropped: AtomicU64,
    pending_acks: AtomicU64,
    dials: AtomicU64,
    stop: watch::Sender<bool>,
    endpoint: quinn::Endpoint,
    queue: usize,
    id: ReplicaId,
    trust: TrustList,
}

#[derive(Debug)]
struct Link {
    /// The peer's key, to drop the connection once it is no longer trusted.
    key: Fingerprint,
    queue: mpsc::Sender<Vec<u8>>,
    /// Bytes waiting in `queue`: a slow or silent peer holds at most [`MAX_QUEUED_BYTES`].
    queued: Arc<AtomicU64>,
    connection: quinn::Connection,
}

/// Bytes a peer may have in flight to us on one stream (a message and its length, with room).
const RECEIVE_WINDOW: u32 = (1 << 20) + (1 << 18);

/// Bytes that may wait for one peer before more messages to it are dropped.
const MAX_QUEUED_BYTES: u64 = 32 << 20;

/// Messages of the largest size that may wait for a peer before its state transfer pauses.
const TRANSFER_WINDOW: usize = 4;

impl Shared {
    /// The replica's time: the wall clock in ms since the Unix epoch (its hybrid logical
    /// clock's physical time), plus any configured offset.
    fn now(&self) -> u64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wall.saturating_add_signed(self.clock_offset)
    }

    fn command(&self, command: Command) -> Result<(), NodeError> {
        self.commands.send(command).map_err(|_| NodeError::Stopped)
    }

    fn is_blocked(&self, id: ReplicaId) -> bool {
        self.blocked
            .lock()
            .map(|b| b.contains(&id))
            .unwrap_or(false)
    }

    /// How many bytes of state transfer `peer`'s queue can take now: a transfer is produced
    /// as the queue drains (see [`Replica::set_credit`]), never queued whole.
    fn room(&self, peer: ReplicaId) -> usize {
        let window = self.max_message.saturating_mul(TRANSFER_WINDOW) as u64;
        let queued = self.links.lock().ok().and_then(|links| {
            let link = links.get(&peer)?;
            // A queue out of message slots drops what comes next, whatever its bytes.
            if link.queue.capacity() < TRANSFER_WINDOW {
                return Some(u64::MAX);
            }
            Some(link.queued.load(Ordering::Relaxed))
        });
        // No connection: nothing to send it on; the transfer waits (and is dropped once the
        // peer is marked down).
        queued.map_or(0, |q| window.saturating_sub(q) as usize)
    }

    /// Puts messages on their peers' queues; a full queue or a missing connection drops the
    /// message (anti-entropy repairs it later).
    fn send(&self, transmits: Vec<Transmit>) {
        let Ok(links) = self.links.lock() else {
            return;
        };
        for t in transmits {
            let sent = !self.is_blocked(t.to)
                && links.get(&t.to).is_some_and(|link| {
                    let len = t.payload.len() as u64;
                    if link.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
                        return false;
                    }
                    link.queued.fetch_add(len, Ordering::Relaxed);
                    let sent = link.queue.try_send(t.payload).is_ok();
                    if !sent {
                        link.queued.fetch_sub(len, Ordering::Relaxed);
                    }
                    sent
                });
            if !sent {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Accepts connections; each authenticated one is served until it closes.
async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => serve(shared, connection, None).await,
                    Err(e) => debug!(%remote, error = %e, "incoming handshake failed"),
                }
            }
            .in_current_span(),
        );
    }
}

/// Runs one authenticated connection until it closes.
async fn serve(shared: Arc<Shared>, connection: quinn::Connection, dialed: Option<SocketAddr>) {
    let Some(key) = key_of(&connection) else {
        connection.close(1u32.into(), b"no identity");
        return;
    };
    let peer = key.id();
    serve_peer(shared, connection, dialed, key)
        .instrument(info_span!("peer", %peer))
        .await;
}

async fn serve_peer(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    dialed: Option<SocketAddr>,
    key: Fingerprint,
) {
    let peer = key.id();
    let addr = dialed.unwrap_or_else(|| connection.remote_address());
    let (queue, outgoing) = mpsc::channel(shared.queue);
    let queued = Arc::new(AtomicU64::new(0));
    if let Ok(mut links) = shared.links.lock() {
        links.insert(
            peer,
            Link {
                key,
                queue,
                queued: queued.clone(),
                connection: connection.clone(),
            },
        );
    }
    // Checked after the link is listed: a peer untrusted during its handshake is either
    // refused here or found in the list by `Node::untrust`, which closes it.
    if !shared.trust.admits(&key) {
        connection.close(4u32.into(), b"no longer trusted");
    }
    info!(%peer, %addr, "connected");
    // Only an address we dialed is worth sharing: an accepted connection's source port is
    // ephemeral.
    let info = PeerInfo {
        id: peer,
        addr: dialed.map(|a| a.to_string()),
    };
    let _ = shared.command(Command::With(Box::new(move |r| r.add_peer(info))));
    let writer = tokio::spawn(
        write_loop(shared.clone(), connection.clone(), outgoing, queued).in_current_span(),
    );
    let reason = read_loop(&shared, &connection, peer).await;
    writer.abort();
    if let Ok(mut links) = shared.links.lock() {
        if links
            .get(&peer)
            .is_some_and(|l| l.connection.stable_id() == connection.stable_id())
        {
            links.remove(&peer);
        }
    }
    info!(%peer, %reason, "disconnected");
}

async fn write_loop(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    outgoing: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicU64>,
) {
    // Below this the owner is woken to produce more of a state transfer.
    let low = (shared.max_message.saturating_mul(TRANSFER_WINDOW) / 2) as u64;
    frames::write_frames(&connection, outgoing, |len| {
        let before = queued.fetch_sub(len, Ordering::Relaxed);
        if before >= low && before.saturating_sub(len) < low {
            let _ = shared.command(Command::Wake);
        }
    })
    .await;
}

/// Feeds the peer's messages to the replica; returns why the connection ended.
async fn read_loop(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    peer: ReplicaId,
) -> String {
    frames::read_frames(connection, peer, shared.max_message, |bytes| async move {
        if shared.is_blocked(peer) {
            return Ok(());
        }
        // One message in flight per peer: a fast sender waits for the owner.
        let (reply, answer) = oneshot::channel();
        shared
            .command(Command::Message { peer, bytes, reply })
            .map_err(|_| "node stopped".to_string())?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                warn!(%peer, error = %e, "protocol error; disconnecting the peer");
                connection.close(3u32.into(), b"protocol error");
                Err(format!("protocol error: {e}"))
            }
            Err(_) => Err("node stopped".into()),
        }
    })
    .await
}

/// The key the peer proved in the handshake.
fn key_of(connection: &quinn::Connection) -> Option<Fingerprint> {
    let identity = connection.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    fingerprint(certs.first()?).ok()
}

/// Wraps a transport failure while doing `what`, keeping its source.
fn transport_failed<E>(what: impl Into<String>) -> impl FnOnce(E) -> NodeError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    move |e| NodeError::Transport {
        what,
        source: Box::new(e),
    }
}

/// A QUIC endpoint on `listen` with mutual TLS between trusted identities, speaking `alpn`.
fn endpoint(
    identity: &Identity,
    trust: &TrustList,
    listen: SocketAddr,
    alpn: &[u8],
) -> Result<quinn::Endpoint, NodeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = identity::TrustVerifier::new(trust.clone());

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(transport_failed("configuring TLS"))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(transport_failed("loading the node's certificate"))?;
    server.alpn_protocols = vec![alpn.to_vec()];
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(transport_failed("configuring QUIC"))?;

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(transport_failed("configuring TLS"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(transport_failed("loading the node's certificate"))?;
    client.alpn_protocols = vec![alpn.to_vec()];
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(transport_failed("configuring QUIC"))?;

    let mut transport = quinn::TransportConfig::default();
    // A peer uses one stream each way per connection; flow control lets it park no more than
    // a couple of messages' worth of bytes with us (quinn's defaults allow 100 streams).
    transport.max_concurrent_uni_streams(4u8.into());
    transport.max_concurrent_bidi_streams(0u8.into());
    transport.stream_receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    transport.receive_window(quinn::VarInt::from_u32(2 * RECEIVE_WINDOW));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        // Keep-alives every 5 s: a peer silent for 10 s (killed, or gone from its address) is
        // dropped, and a dialer reconnects.
        quinn::IdleTimeout::try_from(Duration::from_secs(10))
            .map_err(transport_failed("setting the idle timeout"))?,
    ));
    let transport = Arc::new(transport);

    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server));
    server_config.transport_config(transport.clone());
    let mut endpoint = quinn::Endpoint::server(server_config, listen)
        .map_err(transport_failed(format!("cannot listen on {listen}")))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client));
    client_config.transport_config(transport);
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

/// Opens the store in `dir`; on first start, imports the snapshot an earlier version left.
fn open_store(dir: &Path) -> Result<(RedbStore, Durable), NodeError> {
    let (mut store, durable) = RedbStore::open(dir.join(STORE_FILE))?;
    let snapshot = dir.join(STATE_FILE);
    if !store.is_empty()? || !snapshot.exists() {
        return Ok((store, durable));
    }
    let bytes = std::fs::read(&snapshot).map_err(|source| NodeError::Io {
        path: snapshot.clone(),
        source,
    })?;
    let durable: Durable =
        crdt_core::codec::decode(&bytes).map_err(|reason| NodeError::CorruptState {
            path: snapshot.clone(),
            reason,
        })?;
    store.import(&durable)?;
    let imported = dir.join(format!("{STATE_FILE}.imported"));
    std::fs::rename(&snapshot, &imported).map_err(|source| NodeError::Io {
        path: snapshot.clone(),
        source,
    })?;
    info!(from = %snapshot.display(), keys = durable.objects.len(), "imported the snapshot into the store");
    Ok((store, durable))
}

/// `timeout` from now; a timeout too large for the clock waits for a year.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Gossip partners are chosen by a seeded generator; seed it from the clock so nodes differ.
fn seed_from_clock(id: ReplicaId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ id.get()
}

/// Test support: a trusted client that sends raw frames, to check how a node treats bad input.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// Connects to `to` with the identity in `data_dir` (trusting `server`), writes each frame
    /// length-prefixed, and returns the connection's close reason once the node closes it (or
    /// `None` if it stays open for `wait`).
    pub async fn send_raw_frames(
        data_dir: &Path,
        server: ReplicaId,
        to: SocketAddr,
        frames: Vec<Vec<u8>>,
        wait: Duration,
    ) -> Result<Option<String>, NodeError> {
        send_frames(data_dir, server, to, frames, wait, ALPN).await
    }

    /// [`send_raw_frames`] to a [`ClusterNode`](super::ClusterNode).
    pub async fn send_raw_cluster_frames(
        data_dir: &Path,
        server: ReplicaId,
        to: SocketAddr,
        frames: Vec<Vec<u8>>,
        wait: Duration,
    ) -> Result<Option<String>, NodeError> {
        send_frames(
            data_dir,
            server,
            to,
            frames,
            wait,
            super::cluster::CLUSTER_ALPN,
        )
        .await
    }

    async fn send_frames(
        data_dir: &Path,
        server: ReplicaId,
        to: SocketAddr,
        frames: Vec<Vec<u8>>,
        wait: Duration,
        alpn: &[u8],
    ) -> Result<Option<String>, NodeError> {
        let identity = Identity::load_or_create(data_dir)?;
        let trust = TrustList::load(data_dir)?;
        trust.set(server, true)?;
        let endpoint = endpoint(
            &identity,
            &trust,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            alpn,
        )?;
        let connection = endpoint
            .connect(to, "crdt-node")
            .map_err(transport_failed("connecting"))?
            .await
            .map_err(transport_failed("connecting"))?;
        let mut stream = connection
            .open_uni()
            .await
            .map_err(transport_failed("opening a stream"))?;
        for frame in frames {
            let len = (frame.len() as u32).to_le_bytes();
            let _ = stream.write_all(&len).await;
            let _ = stream.write_all(&frame).await;
        }
        let closed = tokio::time::timeout(wait, connection.closed()).await;
        endpoint.close(0u32.into(), b"done");
        Ok(closed.ok().map(|reason| reason.to_string()))
    }
}
