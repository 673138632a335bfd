//! [`ClusterNode`]: a [`Cluster`] (partial replication, see [`crate::cluster`]) over QUIC, with
//! one redb store per partition.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crdt_core::ReplicaId;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use super::identity::{Fingerprint, Identity, TrustList};
use super::{endpoint, frames, key_of, transport_failed, NodeError, DEFAULT_QUEUE};
use crate::cluster::{
    Cluster, ClusterConfig, ClusterEvent, PartitionId, PartitionStores, RequestError, RequestId,
};
use crate::replica::Millis;
use crate::store::{RedbStore, Store, StoreError};
use crate::{Object, Op};

/// The ALPN protocol of cluster nodes.
pub(super) const CLUSTER_ALPN: &[u8] = b"crdt-cluster/1";

/// Where a cluster node keeps its partitions' stores, in its data directory.
const PARTITIONS_DIR: &str = "partitions";

/// Configures and starts a [`ClusterNode`].
#[derive(Debug)]
pub struct ClusterNodeBuilder {
    data_dir: PathBuf,
    listen: SocketAddr,
    peers: Vec<SocketAddr>,
    trust: Vec<ReplicaId>,
    trust_keys: Vec<Fingerprint>,
    replicas: usize,
    partition_bits: u32,
    gossip_interval: Duration,
    request_timeout: Duration,
}

impl ClusterNodeBuilder {
    /// A node keeping its identity, trust list and stores in `data_dir`, listening on an
    /// ephemeral port of every interface, N = 3, 64 partitions, 1 s rounds.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterNodeBuilder {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            peers: Vec::new(),
            trust: Vec::new(),
            trust_keys: Vec::new(),
            replicas: 3,
            partition_bits: 6,
            gossip_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The address to listen on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// A node to connect to (and keep connected to, reconnecting with backoff).
    pub fn peer(mut self, addr: SocketAddr) -> Self {
        self.peers.push(addr);
        self
    }

    /// Trusts the node whose key has `fingerprint` (pinned in the trust list on disk); only
    /// trusted nodes may connect.
    pub fn trust_key(mut self, fingerprint: Fingerprint) -> Self {
        self.trust_keys.push(fingerprint);
        self
    }

    /// Trusts node `id` by id alone (prefer [`trust_key`](Self::trust_key), see
    /// [`TrustList`]).
    pub fn trust(mut self, id: ReplicaId) -> Self {
        self.trust.push(id);
        self
    }

    /// Replicas per key (N). Every node of a cluster must use the same.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }

    /// 2^`bits` partitions. Every node of a cluster must use the same.
    pub fn partition_bits(mut self, bits: u32) -> Self {
        self.partition_bits = bits;
        self
    }

    /// Time between anti-entropy rounds.
    pub fn gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// How long a write or read waits for its level.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Opens the stores, loads (or makes) the identity and the trust list, binds the socket
    /// and joins the cluster.
    pub async fn start(self) -> Result<ClusterNode, NodeError> {
        let dir = self.data_dir.join(PARTITIONS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| NodeError::Io {
            path: dir.clone(),
            source,
        })?;
        let identity = Identity::load_or_create(&self.data_dir)?;
        let trust = TrustList::load(&self.data_dir)?;
        for id in &self.trust {
            trust.set(*id, true)?;
        }
        for key in &self.trust_keys {
            trust.set_key(*key, true)?;
        }
        let (stores, states) = DirStores::open(dir)?;
        let mut config = ClusterConfig::new(identity.id());
        config.seeds = trust.ids();
        // Only trusted nodes on the ring (trust changes take effect at the next start).
        config.allowed = Some(config.seeds.iter().copied().collect());
        config.replicas = self.replicas;
        config.partition_bits = self.partition_bits;
        config.request_timeout = self.request_timeout.as_millis() as Millis;
        config.replica.gossip_interval = self.gossip_interval.as_millis().max(1) as Millis;
        config.replica.seed = super::seed_from_clock(identity.id());
        let cluster = Cluster::restore(config, states);
        let max_message = cluster.max_message();
        let endpoint = endpoint(&identity, &trust, self.listen, CLUSTER_ALPN)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(transport_failed("reading the endpoint's address"))?;
        let (commands, received) = std::sync::mpsc::channel();
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            id: identity.id(),
            commands,
            links: Mutex::new(BTreeMap::new()),
            endpoint,
            trust,
            stop,
            max_message,
        });
        let span = info_span!("cluster-node", id = %identity.id());
        let owner = Owner {
            cluster,
            stores,
            shared: shared.clone(),
            waiting: BTreeMap::new(),
        };
        let owner_span = span.clone();
        let thread = std::thread::Builder::new()
            .name(format!("crdt-cluster-{}", identity.id()))
            .spawn(move || owner_span.in_scope(|| owner.run(received)))
            .map_err(|source| NodeError::Io {
                path: self.data_dir.clone(),
                source,
            })?;
        let mut tasks = vec![tokio::spawn(
            accept_loop(shared.clone()).instrument(span.clone()),
        )];
        for addr in self.peers {
            tasks.push(tokio::spawn(
                dial(shared.clone(), addr).instrument(span.clone()),
            ));
        }
        info!(node = %identity.id(), %local_addr, "cluster node started");
        Ok(ClusterNode {
            shared,
            tasks,
            thread: Some(thread),
            local_addr,
        })
    }
}

/// A running cluster node: a [`Cluster`] over QUIC, with one redb store per partition (see
/// [`crate::cluster`] for what it guarantees).
///
/// The same thin-driver shape as [`Node`](super::Node): one thread owns the cluster and its
/// stores and is the only one to touch them; the application's calls and each peer's messages
/// reach it through a channel; each turn it commits every partition changed, and only then
/// answers callers and hands messages to the peers' queues. Peers authenticate with the same
/// identities and trust list as nodes (mutual TLS), on their own ALPN protocol, so a cluster
/// node and a fully replicating node never mistake each other's messages.
///
/// ```no_run
/// # async fn run() -> Result<(), crdt_net::node::NodeError> {
/// use crdt_net::node::ClusterNodeBuilder;
/// use crdt_net::Op;
///
/// let node = ClusterNodeBuilder::new("/var/lib/features")
///     .listen("0.0.0.0:4433".parse().unwrap())
///     .peer("192.0.2.7:4433".parse().unwrap())
///     .start()
///     .await?;
/// // Held by 2 of the key's 3 replicas before it returns.
/// node.write("user:42", Op::Inc(1), 2).await?;
/// let seen = node.read("user:42", 2).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClusterNode {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl ClusterNode {
    /// This node's id (from its key).
    pub fn id(&self) -> ReplicaId {
        self.shared.id
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Writes `op` to `key` at the key's replicas (forwarded when this node is not one);
    /// returns once `level` of them hold it durably, with how many do. Fails with
    /// [`NodeError::Request`] when the level is out of range, the replica refused the
    /// operation, or too few replicas confirmed in time (the write is not undone).
    pub async fn write(&self, key: &str, op: Op, level: usize) -> Result<usize, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Write {
            key: key.to_owned(),
            op,
            level,
            reply,
        })?;
        match answer.await.map_err(|_| NodeError::Stopped)? {
            Answer::Written(result) => result.map_err(NodeError::Request),
            Answer::Read(_) => Err(NodeError::Stopped),
        }
    }

    /// Reads `key` merged from `level` of its replicas (`None`: never written).
    pub async fn read(&self, key: &str, level: usize) -> Result<Option<Object>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Read {
            key: key.to_owned(),
            level,
            reply,
        })?;
        match answer.await.map_err(|_| NodeError::Stopped)? {
            Answer::Read(result) => result.map_err(NodeError::Request),
            Answer::Written(_) => Err(NodeError::Stopped),
        }
    }

    /// The nodes on the ring, as this node knows them.
    pub async fn members(&self) -> Result<Vec<ReplicaId>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Members(reply))?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// The owners of `key` (its `N` replicas on the ring) and its targets now (the first `N`
    /// nodes of its preference order believed up: owners, or fallbacks for those down), as
    /// this node sees the ring.
    pub async fn replicas_of(
        &self,
        key: &str,
    ) -> Result<(Vec<ReplicaId>, Vec<ReplicaId>), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Replicas {
            key: key.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// Whether this node holds a copy of `key`'s partition (as an owner, or as a fallback
    /// until it has handed it over).
    pub async fn holds(&self, key: &str) -> Result<bool, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Holds {
            key: key.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// Commits, closes the stores and the endpoint, and stops.
    pub async fn shutdown(mut self) {
        let _ = self.shared.stop.send(true);
        let (reply, stopped) = oneshot::channel();
        if self.command(Command::Stop(reply)).is_ok() {
            let _ = stopped.await;
        }
        self.shared.endpoint.close(0u32.into(), b"shutdown");
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // The socket is released once the connections have closed and every task holding the
        // endpoint has ended: wait (a bounded while) so a restart can bind the same address.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.shared) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn command(&self, command: Command) -> Result<(), NodeError> {
        self.shared
            .commands
            .send(command)
            .map_err(|_| NodeError::Stopped)
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.shared.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the driver's tasks share with the owner thread.
#[derive(Debug)]
struct Shared {
    id: ReplicaId,
    commands: std::sync::mpsc::Sender<Command>,
    /// Each connected peer's queues of outgoing messages, one per connection (with its id),
    /// newest last: a second connection with a peer's key (a reconnect racing the old one, or
    /// another process holding the key) does not cut off the first when it ends.
    links: Mutex<BTreeMap<ReplicaId, Vec<Link>>>,
    endpoint: quinn::Endpoint,
    trust: TrustList,
    stop: watch::Sender<bool>,
    max_message: usize,
}

/// A connection's queue of outgoing messages, and the connection's id.
type Link = (mpsc::Sender<Vec<u8>>, usize);

impl Shared {
    fn now() -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    }

    /// Puts messages on their peers' queues; a full queue or a missing connection drops the
    /// message (anti-entropy repairs it later; a request waiting on it times out).
    fn send(&self, to: ReplicaId, payload: Vec<u8>) {
        let Ok(links) = self.links.lock() else {
            return;
        };
        if let Some((queue, _)) = links.get(&to).and_then(|l| l.last()) {
            let _ = queue.try_send(payload);
        }
    }
}

enum Command {
    Message {
        peer: ReplicaId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), crate::ProtocolError>>,
    },
    Connected(ReplicaId),
    Write {
        key: String,
        op: Op,
        level: usize,
        reply: oneshot::Sender<Answer>,
    },
    Read {
        key: String,
        level: usize,
        reply: oneshot::Sender<Answer>,
    },
    Members(oneshot::Sender<Vec<ReplicaId>>),
    Replicas {
        key: String,
        reply: oneshot::Sender<(Vec<ReplicaId>, Vec<ReplicaId>)>,
    },
    Holds {
        key: String,
        reply: oneshot::Sender<bool>,
    },
    Stop(oneshot::Sender<()>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

enum Answer {
    Written(Result<usize, RequestError>),
    Read(Result<Option<Object>, RequestError>),
}

/// The thread that owns the cluster and its stores.
struct Owner {
    cluster: Cluster,
    stores: DirStores,
    shared: Arc<Shared>,
    /// Callers waiting for their request's event.
    waiting: BTreeMap<RequestId, oneshot::Sender<Answer>>,
}

/// Commands handled per commit at most.
const MAX_BATCH: usize = 4096;

impl Owner {
    fn run(mut self, commands: Receiver<Command>) {
        let mut stopped = None;
        while stopped.is_none() {
            let wait = self
                .cluster
                .poll_timeout()
                .map_or(Duration::from_secs(1), |at| {
                    Duration::from_millis(at.saturating_sub(Shared::now()))
                });
            let deadline = Instant::now() + wait;
            let mut handled = 0;
            let mut next = match commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            while let Some(command) = next.take() {
                if let Command::Stop(reply) = command {
                    stopped = Some(reply);
                    break;
                }
                self.handle(command);
                handled += 1;
                if handled < MAX_BATCH && Instant::now() < deadline {
                    next = commands.try_recv().ok();
                }
            }
            self.cluster.handle_timeout(Shared::now());
            if let Err(e) = self.cluster.persist(&mut self.stores) {
                // Nothing that depends on the changes leaves; the next turn tries again.
                warn!(error = %e, "cannot commit; holding messages and answers until a commit succeeds");
            }
            self.flush();
        }
        if let Some(reply) = stopped {
            let _ = self.cluster.persist(&mut self.stores);
            drop(self.stores);
            let _ = reply.send(());
        }
    }

    fn handle(&mut self, command: Command) {
        let now = Shared::now();
        match command {
            Command::Message { peer, bytes, reply } => {
                let _ = reply.send(self.cluster.handle_message(now, peer, &bytes));
            }
            Command::Connected(peer) => self.cluster.add_seed(peer),
            Command::Write {
                key,
                op,
                level,
                reply,
            } => match self.cluster.write(now, &key, &op, level) {
                Ok(id) => {
                    self.waiting.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Answer::Written(Err(e)));
                }
            },
            Command::Read { key, level, reply } => match self.cluster.read(now, &key, level) {
                Ok(id) => {
                    self.waiting.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Answer::Read(Err(e)));
                }
            },
            Command::Members(reply) => {
                let _ = reply.send(self.cluster.members().collect());
            }
            Command::Replicas { key, reply } => {
                let p = self.cluster.partition_of(&key);
                let owners = self.cluster.owners(p).to_vec();
                let _ = reply.send((owners, self.cluster.targets(p)));
            }
            Command::Holds { key, reply } => {
                let p = self.cluster.partition_of(&key);
                let _ = reply.send(self.cluster.hosted().any(|(q, _)| q == p));
            }
            Command::Stop(_) => {}
        }
    }

    /// Answers the finished requests and hands the messages to the peers' queues.
    fn flush(&mut self) {
        while let Some(event) = self.cluster.poll_event() {
            let (id, answer) = match event {
                ClusterEvent::Written { id, result } => (id, Answer::Written(result)),
                ClusterEvent::Read { id, result } => (id, Answer::Read(result)),
                ClusterEvent::Members(members) => {
                    info!(?members, "member set changed");
                    continue;
                }
                _ => continue,
            };
            if let Some(reply) = self.waiting.remove(&id) {
                let _ = reply.send(answer);
            }
        }
        while let Some(t) = self.cluster.poll_transmit() {
            self.shared.send(t.to, t.payload);
        }
    }
}

/// One redb store per partition, in `partitions/` of the data directory: `system.redb` and
/// `p<N>.redb`.
struct DirStores {
    dir: PathBuf,
    open: BTreeMap<PartitionId, RedbStore>,
}

impl DirStores {
    /// Opens every partition store in `dir`, with what each holds.
    fn open(dir: PathBuf) -> Result<(DirStores, BTreeMap<PartitionId, crate::Durable>), NodeError> {
        let entries = std::fs::read_dir(&dir).map_err(|source| NodeError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut stores = DirStores {
            dir,
            open: BTreeMap::new(),
        };
        let mut states = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(partition) = name.to_str().and_then(partition_of_file) else {
                continue;
            };
            let (store, durable) = RedbStore::open(entry.path())?;
            stores.open.insert(partition, store);
            states.insert(partition, durable);
        }
        Ok((stores, states))
    }

    fn path(dir: &Path, partition: PartitionId) -> PathBuf {
        match partition {
            PartitionId::System => dir.join("system.redb"),
            PartitionId::Keys(p) => dir.join(format!("p{p}.redb")),
        }
    }
}

/// The partition a store file holds, from its name.
fn partition_of_file(name: &str) -> Option<PartitionId> {
    let stem = name.strip_suffix(".redb")?;
    if stem == "system" {
        return Some(PartitionId::System);
    }
    let number = stem.strip_prefix('p')?;
    // Only the canonical spelling: "p007" is not partition 7's file.
    let p: u32 = number.parse().ok()?;
    (p.to_string() == number).then_some(PartitionId::Keys(p))
}

impl PartitionStores for DirStores {
    fn store(&mut self, partition: PartitionId) -> Result<&mut dyn Store, StoreError> {
        let store = match self.open.entry(partition) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let (store, _) = RedbStore::open(DirStores::path(&self.dir, partition))?;
                e.insert(store)
            }
        };
        Ok(store)
    }

    fn remove(&mut self, partition: PartitionId) -> Result<(), StoreError> {
        // Closed first: the file is locked while open.
        self.open.remove(&partition);
        let path = DirStores::path(&self.dir, partition);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                path,
                source: Box::new(e),
            }),
            _ => Ok(()),
        }
    }
}

/// Accepts connections; each authenticated one is served until it closes.
async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(
            async move {
                if let Ok(connection) = incoming.await {
                    serve(shared, connection).await;
                }
            }
            .in_current_span(),
        );
    }
}

/// Keeps a connection to `addr` open, reconnecting with backoff (100 ms doubling to 5 s).
async fn dial(shared: Arc<Shared>, addr: SocketAddr) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        let started = Instant::now();
        match shared.endpoint.connect(addr, "crdt-node") {
            Ok(connecting) => match connecting.await {
                Ok(connection) => serve(shared.clone(), connection).await,
                Err(e) => debug!(%addr, error = %e, "dial failed"),
            },
            Err(e) => debug!(%addr, error = %e, "dial failed"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Runs one authenticated connection until it closes.
async fn serve(shared: Arc<Shared>, connection: quinn::Connection) {
    let Some(key) = key_of(&connection) else {
        connection.close(1u32.into(), b"no identity");
        return;
    };
    let peer = key.id();
    if !shared.trust.admits(&key) {
        connection.close(4u32.into(), b"not trusted");
        return;
    }
    let (queue, outgoing) = mpsc::channel(DEFAULT_QUEUE);
    if let Ok(mut links) = shared.links.lock() {
        links
            .entry(peer)
            .or_default()
            .push((queue, connection.stable_id()));
    }
    let _ = shared.commands.send(Command::Connected(peer));
    info!(%peer, "connected");
    let writer = {
        let connection = connection.clone();
        tokio::spawn(async move { frames::write_frames(&connection, outgoing, |_| {}).await })
    };
    let reason = frames::read_frames(&connection, peer, shared.max_message, |bytes| {
        let shared = shared.clone();
        let connection = connection.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            shared
                .commands
                .send(Command::Message { peer, bytes, reply })
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
        }
    })
    .await;
    writer.abort();
    if let Ok(mut links) = shared.links.lock() {
        if let Some(queues) = links.get_mut(&peer) {
            queues.retain(|(_, id)| *id != connection.stable_id());
            if queues.is_empty() {
                links.remove(&peer);
            }
        }
    }
    info!(%peer, %reason, "disconnected");
}
