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
//! node.update("groceries", Op::Add("milk".into())).await?;
//! println!("{:?}", node.get("groceries").await);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

#[cfg(feature = "mdns")]
mod discovery;
mod identity;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crdt_core::ReplicaId;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

pub use identity::{node_id, parse_node_id, Identity, TrustList};

use crate::replica::{Config, Durable, Event, PeerStatus, Replica, Stats};
use crate::{Object, Op, PeerInfo, TypeMismatch};

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
    /// TLS or QUIC could not be set up.
    #[error("transport: {0}")]
    Transport(String),
    /// The operation does not fit the object's type.
    #[error(transparent)]
    TypeMismatch(#[from] TypeMismatch),
}

/// Configures and starts a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    data_dir: PathBuf,
    listen: SocketAddr,
    peers: Vec<SocketAddr>,
    trust: Vec<ReplicaId>,
    round_interval: Duration,
    fanout: usize,
    queue: usize,
    mdns: bool,
}

/// How many messages may wait for one peer before more are dropped.
const DEFAULT_QUEUE: usize = 1024;
const STATE_FILE: &str = "state.bin";
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
            round_interval: Duration::from_secs(1),
            fanout: 2,
            queue: DEFAULT_QUEUE,
            mdns: true,
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
        self.peers.push(addr);
        self
    }

    /// Trusts `id` in addition to the trust file.
    pub fn trust(mut self, id: ReplicaId) -> Self {
        self.trust.push(id);
        self
    }

    /// Time between anti-entropy rounds.
    pub fn gossip_interval(mut self, interval: Duration) -> Self {
        self.round_interval = interval;
        self
    }

    /// Peers contacted per round.
    pub fn fanout(mut self, fanout: usize) -> Self {
        self.fanout = fanout;
        self
    }

    /// Messages that may wait for one peer before more are dropped.
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// Loads (or makes) the identity, the trust list and the persisted state, binds the socket
    /// and starts gossiping.
    pub async fn start(self) -> Result<Node, NodeError> {
        let identity = Identity::load_or_create(&self.data_dir)?;
        let trust = TrustList::load(&self.data_dir)?;
        for id in &self.trust {
            trust.set(*id, true)?;
        }
        let durable = load_state(&self.data_dir)?;
        let mut config = Config::new(identity.id());
        config.round_interval = self.round_interval.as_millis().max(1) as u64;
        config.fanout = self.fanout;
        config.seed = seed_from_clock(identity.id());
        let endpoint = endpoint(&identity, &trust, self.listen)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        let (events, _) = broadcast::channel(4096);
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            replica: Mutex::new(Replica::restore(config, durable)),
            start: Instant::now(),
            wake: Notify::new(),
            links: Mutex::new(BTreeMap::new()),
            dialing: Mutex::new(BTreeSet::new()),
            blocked: Mutex::new(BTreeSet::new()),
            events,
            dropped: AtomicU64::new(0),
            stop,
            endpoint,
            data_dir: self.data_dir.clone(),
            queue: self.queue,
            id: identity.id(),
            trust: trust.clone(),
        });
        info!(node = %identity.id(), %local_addr, "node started");
        let span = info_span!("node", id = %identity.id());
        let mut tasks = vec![
            tokio::spawn(accept_loop(shared.clone()).instrument(span.clone())),
            tokio::spawn(drive(shared.clone()).instrument(span.clone())),
        ];
        for addr in self.peers {
            tasks.push(tokio::spawn(
                dial(shared.clone(), addr).instrument(span.clone()),
            ));
        }
        #[cfg(feature = "mdns")]
        let mdns = (self.mdns && !local_addr.ip().is_loopback())
            .then(|| span.in_scope(|| discovery::start(&shared, local_addr.port())))
            .flatten()
            .map(Mdns);

        Ok(Node {
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
}

impl Node {
    /// This node's id.
    pub fn id(&self) -> ReplicaId {
        self.shared.id
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies `op` to the object at `key`; the change reaches peers in milliseconds when they
    /// are connected, and by anti-entropy otherwise.
    pub async fn update(&self, key: &str, op: Op) -> Result<(), NodeError> {
        self.shared.replica().update(key, &op)?;
        // The driver sends; updates made before it wakes go out together, in one batch.
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Mutates the object at `key` with `f`, which returns the mutation's delta (see
    /// [`Replica::update_with`]); for changes [`Op`] cannot express, such as several mutations
    /// of one nested map in one update.
    pub async fn update_with<E>(
        &self,
        key: &str,
        f: impl FnOnce(&mut Object) -> Result<Object, E>,
    ) -> Result<Object, E> {
        let delta = self.shared.replica().update_with(key, f)?;
        self.shared.wake.notify_one();
        Ok(delta)
    }

    /// This node's replica id, for calling crdt-core mutators inside
    /// [`update_with`](Node::update_with).
    pub fn replica_id(&self) -> ReplicaId {
        self.shared.id
    }

    /// The object at `key`.
    pub async fn get(&self, key: &str) -> Option<Object> {
        self.shared.replica().get(key).cloned()
    }

    /// Every object.
    pub async fn objects(&self) -> BTreeMap<String, Object> {
        self.shared.replica().objects().clone()
    }

    /// Changes (local and remote) and peers going up or down, as they happen. A receiver that
    /// falls more than 4096 events behind skips ahead (and is told how many it missed).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The known peers.
    pub async fn peers(&self) -> Vec<PeerStatus> {
        self.shared.replica().peers().collect()
    }

    /// Traffic counters.
    pub async fn metrics(&self) -> Metrics {
        let replica = self.shared.replica();
        Metrics {
            stats: replica.stats().clone(),
            peers: replica.peers().collect(),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// The trust list (changes apply to new connections).
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

    /// Persists the state, closes every connection and stops.
    pub async fn shutdown(self) {
        #[cfg(feature = "mdns")]
        if let Some(Mdns(daemon)) = &self.mdns {
            let _ = daemon.shutdown();
        }
        let _ = self.shared.stop.send(true);
        self.shared.wake.notify_one();
        save_state(&self.shared).await;
        self.shared.endpoint.close(0u32.into(), b"shutdown");
        for task in &self.tasks {
            task.abort();
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
        info!(node = %self.shared.id, "node stopped");
    }
}

#[derive(Debug)]
struct Shared {
    replica: Mutex<Replica>,
    start: Instant,
    wake: Notify,
    links: Mutex<BTreeMap<ReplicaId, Link>>,
    /// Addresses with a dialing task, so peer exchange starts at most one per address.
    dialing: Mutex<BTreeSet<SocketAddr>>,
    blocked: Mutex<BTreeSet<ReplicaId>>,
    events: broadcast::Sender<Event>,
    dropped: AtomicU64,
    stop: watch::Sender<bool>,
    endpoint: quinn::Endpoint,
    data_dir: PathBuf,
    queue: usize,
    id: ReplicaId,
    trust: TrustList,
}

#[derive(Debug)]
struct Link {
    queue: mpsc::Sender<Vec<u8>>,
    connection: quinn::Connection,
}

impl Shared {
    fn replica(&self) -> MutexGuard<'_, Replica> {
        // A panic elsewhere while holding the lock leaves the replica as it was between two
        // complete calls: every Replica method is all-or-nothing. Keep serving.
        self.replica
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn is_blocked(&self, id: ReplicaId) -> bool {
        self.blocked
            .lock()
            .map(|b| b.contains(&id))
            .unwrap_or(false)
    }

    /// Moves the replica's outgoing messages onto the peers' queues, and its events out.
    fn flush(&self) {
        let (transmits, events) = {
            let mut replica = self.replica();
            let transmits: Vec<_> = std::iter::from_fn(|| replica.poll_transmit()).collect();
            let events: Vec<_> = std::iter::from_fn(|| replica.poll_event()).collect();
            (transmits, events)
        };
        for event in events {
            let _ = self.events.send(event);
        }
        let Ok(links) = self.links.lock() else {
            return;
        };
        for t in transmits {
            let sent = !self.is_blocked(t.to)
                && links
                    .get(&t.to)
                    .is_some_and(|link| link.queue.try_send(t.payload).is_ok());
            if !sent {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Time and outgoing messages: wakes for the replica's timer or when asked to flush.
async fn drive(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut saved_seen = shared.replica().seen().clone();
    loop {
        let deadline = shared.replica().poll_timeout().unwrap_or(u64::MAX / 2);
        let at = shared.start + Duration::from_millis(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {
                shared.replica().handle_timeout(shared.now());
                dial_new_peers(&shared);
                let seen = shared.replica().seen().clone();
                if seen != saved_seen {
                    save_state(&shared).await;
                    saved_seen = seen;
                }
            }
            _ = shared.wake.notified() => {}
            _ = stop.changed() => return,
        }
        shared.flush();
    }
}

/// Dials peers learned by peer exchange that have an address and no connection.
fn dial_new_peers(shared: &Arc<Shared>) {
    let candidates: Vec<SocketAddr> = {
        let links = shared
            .links
            .lock()
            .map(|l| l.keys().copied().collect::<BTreeSet<_>>());
        let connected = links.unwrap_or_default();
        shared
            .replica()
            .peers()
            .filter(|p| !connected.contains(&p.info.id))
            .filter_map(|p| p.info.addr.as_deref()?.parse().ok())
            .collect()
    };
    for addr in candidates {
        dial_once(shared, addr);
    }
}

/// Starts dialing `addr` unless a task already does; returns whether it started one.
fn dial_once(shared: &Arc<Shared>, addr: SocketAddr) -> bool {
    let fresh = shared
        .dialing
        .lock()
        .map(|mut d| d.insert(addr))
        .unwrap_or(false);
    if fresh {
        tokio::spawn(dial(shared.clone(), addr).in_current_span());
    }
    fresh
}

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

/// Keeps a connection to `addr` open, reconnecting with backoff.
async fn dial(shared: Arc<Shared>, addr: SocketAddr) {
    if let Ok(mut dialing) = shared.dialing.lock() {
        dialing.insert(addr);
    }
    let mut stop = shared.stop.subscribe();
    let mut backoff = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        match shared.endpoint.connect(addr, "crdt-node") {
            Ok(connecting) => match connecting.await {
                Ok(connection) => {
                    backoff = Duration::from_millis(200);
                    serve(shared.clone(), connection, Some(addr)).await;
                }
                Err(e) => debug!(%addr, error = %e, "connection failed"),
            },
            Err(e) => warn!(%addr, error = %e, "cannot connect"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Runs one authenticated connection until it closes.
async fn serve(shared: Arc<Shared>, connection: quinn::Connection, dialed: Option<SocketAddr>) {
    let Some(peer) = peer_of(&connection) else {
        connection.close(1u32.into(), b"no identity");
        return;
    };
    serve_peer(shared, connection, dialed, peer)
        .instrument(info_span!("peer", %peer))
        .await;
}

async fn serve_peer(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    dialed: Option<SocketAddr>,
    peer: ReplicaId,
) {
    let addr = dialed.unwrap_or_else(|| connection.remote_address());
    info!(%peer, %addr, "connected");
    let (queue, outgoing) = mpsc::channel(shared.queue);
    if let Ok(mut links) = shared.links.lock() {
        links.insert(
            peer,
            Link {
                queue,
                connection: connection.clone(),
            },
        );
    }
    // Only an address we dialed is worth sharing: an accepted connection's source port is
    // ephemeral.
    shared.replica().add_peer(PeerInfo {
        id: peer,
        addr: dialed.map(|a| a.to_string()),
    });
    let writer = tokio::spawn(write_loop(connection.clone(), outgoing).in_current_span());
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

async fn write_loop(connection: quinn::Connection, mut outgoing: mpsc::Receiver<Vec<u8>>) {
    let Ok(mut stream) = connection.open_uni().await else {
        return;
    };
    while let Some(payload) = outgoing.recv().await {
        let len = (payload.len() as u32).to_le_bytes();
        if stream.write_all(&len).await.is_err() || stream.write_all(&payload).await.is_err() {
            return;
        }
    }
}

/// Feeds the peer's messages to the replica; returns why the connection ended.
async fn read_loop(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    peer: ReplicaId,
) -> String {
    let max = shared.replica().max_message();
    let mut buffer = Vec::new();
    loop {
        let mut stream = match connection.accept_uni().await {
            Ok(stream) => stream,
            Err(e) => return e.to_string(),
        };
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = stream.read_exact(&mut len).await {
                if matches!(e, quinn::ReadExactError::FinishedEarly(0)) {
                    break; // The peer finished its stream cleanly.
                }
                return e.to_string();
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > max {
                warn!(%peer, len, max, "oversized message; disconnecting the peer");
                connection.close(2u32.into(), b"message too large");
                return "oversized message".into();
            }
            buffer.resize(len, 0);
            if let Err(e) = stream.read_exact(&mut buffer).await {
                return e.to_string();
            }
            if shared.is_blocked(peer) {
                continue;
            }
            let result = shared.replica().handle_message(shared.now(), peer, &buffer);
            if let Err(e) = result {
                warn!(%peer, error = %e, "protocol error; disconnecting the peer");
                connection.close(3u32.into(), b"protocol error");
                return format!("protocol error: {e}");
            }
            shared.flush();
        }
    }
}

fn peer_of(connection: &quinn::Connection) -> Option<ReplicaId> {
    let identity = connection.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    node_id(certs.first()?).ok()
}

fn endpoint(
    identity: &Identity,
    trust: &TrustList,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, NodeError> {
    let transport_error = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = identity::TrustVerifier::new(trust.clone());

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| transport_error(&e))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(|e| transport_error(&e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| transport_error(&e))?;

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| transport_error(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(|e| transport_error(&e))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| transport_error(&e))?;

    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).map_err(|e| transport_error(&e))?,
    ));
    let transport = Arc::new(transport);

    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server));
    server_config.transport_config(transport.clone());
    let mut endpoint = quinn::Endpoint::server(server_config, listen)
        .map_err(|e| NodeError::Transport(format!("cannot listen on {listen}: {e}")))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client));
    client_config.transport_config(transport);
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

fn load_state(dir: &Path) -> Result<Durable, NodeError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => crdt_core::codec::decode(&bytes)
            .map_err(|reason| NodeError::CorruptState { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Durable::default()),
        Err(source) => Err(NodeError::Io { path, source }),
    }
}

/// Writes the state to a temporary file and renames it over the old one, so a crash leaves
/// either the old state or the new, never half of one.
async fn save_state(shared: &Shared) {
    let bytes = crdt_core::codec::encode(shared.replica().durable());
    let path = shared.data_dir.join(STATE_FILE);
    let temporary = shared.data_dir.join(format!("{STATE_FILE}.tmp"));
    let result = async {
        tokio::fs::write(&temporary, &bytes).await?;
        tokio::fs::File::open(&temporary).await?.sync_all().await?;
        tokio::fs::rename(&temporary, &path).await
    }
    .await;
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "could not persist state");
    }
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
        let identity = Identity::load_or_create(data_dir)?;
        let trust = TrustList::load(data_dir)?;
        trust.set(server, true)?;
        let endpoint = endpoint(&identity, &trust, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let connection = endpoint
            .connect(to, "crdt-node")
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        let mut stream = connection
            .open_uni()
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?;
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
