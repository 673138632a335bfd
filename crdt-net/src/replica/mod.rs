//! The sans-IO replica: a keyspace of objects and the anti-entropy protocol around it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crdt_core::{CausalContext, Crdt, Dot, Hlc, HlcTimestamp, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};

mod membership;
mod read;
mod transfer;
mod validate;

pub(crate) use validate::counter_over_limit;
pub use validate::MAX_COUNTER;

use membership::{bound_known, Peer, KNOWN_CLOUD};
use read::PendingRead;
use transfer::{fit, Incoming, Outgoing};

use crate::log::DeltaLog;
use crate::message::{fingerprint, DeltaEntry, Digest, Fingerprint, Message, PeerInfo, Resume};
use crate::store::{Batch, Store, StoreError};
use crate::{Object, Op, ProtocolError, UpdateError, MAX_DEPTH};

/// Milliseconds on the caller's clock. The replica's hybrid logical clock reads it as
/// physical time, so a driver whose peers write last-writer-wins registers passes wall-clock
/// time (the node: milliseconds since the Unix epoch); the simulator starts at 0.
pub type Millis = u64;

/// How a replica gossips. [`Config::new`] gives the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// This replica's id; unique among all replicas.
    pub id: ReplicaId,
    /// Peers known at start.
    pub peers: Vec<PeerInfo>,
    /// Time between anti-entropy rounds. Default 1000 ms.
    pub gossip_interval: Millis,
    /// Peers contacted per round. Default 2.
    pub fanout: usize,
    /// Push fresh local deltas to every peer that is up as soon as the driver polls, rather than
    /// waiting for the next round. Default on.
    pub eager_push: bool,
    /// The largest message sent or accepted, in bytes. Default 1 MiB.
    pub max_message: usize,
    /// Bytes of deltas kept for peers that lack them. Default 8 MiB.
    pub max_log_bytes: usize,
    /// Unanswered rounds after which a peer is marked down. Default 3.
    pub down_after: u32,
    /// Longest wait, in rounds, between retries of a down peer. Default 32.
    pub max_backoff_rounds: u64,
    /// Share the peer list every this many rounds. Default 10.
    pub peer_exchange_every: u64,
    /// Most peers remembered; ids learned beyond it (say, from a peer exchange flooded with
    /// made-up ids) are ignored (with peer sampling, they take the place of a random peer
    /// outside the view). Default 1024.
    pub max_peers: usize,
    /// Peer sampling: when non-zero, gossip partners and eager pushes are drawn from a
    /// partial view of at most this many peers, refreshed by peer exchange (each exchange
    /// sends half the view and this replica; a received one puts a few of its peers in the
    /// view, in place of down or random ones), so a replica's traffic per round stays the
    /// same however many replicas there are. 0 (the default): every known peer is a partner.
    /// Acknowledgement levels count only the peers remembered ([`Config::max_peers`]).
    pub view: usize,
    /// Seeds the choice of gossip partners (the replica draws no other randomness).
    pub seed: u64,
    /// How far ahead of this replica's clock a received last-writer-wins timestamp may be,
    /// in ms. A delta or state entry carrying a later one is refused (counted in
    /// [`Stats::drift_refused`], reported as [`Event::ClockDrift`]) and arrives again by
    /// anti-entropy once this replica's clock has caught up; so a peer whose clock runs ahead
    /// cannot make its writes win over later writes by more than this. Default 60,000.
    pub max_drift: Millis,
    /// Most writers the replica's context may name; deltas from further new writers are
    /// refused. Default 4,096.
    pub max_writers: usize,
    /// Most dots the replica's context may hold beyond gaps (received out of order); deltas
    /// that would add more are refused until anti-entropy fills the gaps. Default 65,536.
    pub max_cloud: usize,
}

impl Config {
    /// The defaults for replica `id`.
    pub fn new(id: ReplicaId) -> Self {
        Config {
            id,
            peers: Vec::new(),
            gossip_interval: 1000,
            fanout: 2,
            eager_push: true,
            max_message: 1 << 20,
            max_log_bytes: 8 << 20,
            down_after: 3,
            max_backoff_rounds: 32,
            peer_exchange_every: 10,
            max_peers: 1024,
            view: 0,
            seed: id.get(),
            max_drift: 60_000,
            max_writers: 4096,
            max_cloud: 1 << 16,
        }
    }
}

/// A message for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer.
    pub to: ReplicaId,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// Something the application may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An object changed, by a local update (`local`) or a merge from a peer.
    Changed {
        /// Its key.
        key: String,
        /// Whether the change was made here.
        local: bool,
        /// What changed: the update's delta, or what a peer sent (a delta, or the object or a
        /// piece of it in a state transfer). Merging it into a copy of the object, as a user
        /// interface may keep, gives the object as it is now.
        change: Object,
    },
    /// A peer answered again after being marked down, or was heard from for the first time.
    PeerUp(ReplicaId),
    /// A peer missed `down_after` rounds in a row.
    PeerDown(ReplicaId),
    /// Two types were written under one key; the later type in [`Object`]'s order won and
    /// the other's writes are gone. Reported once per key.
    TypeConflict {
        /// The key.
        key: String,
    },
    /// A peer sent a last-writer-wins write stamped further ahead of this replica's clock
    /// than [`Config::max_drift`]; it was refused. The peer's clock is probably wrong.
    ClockDrift {
        /// The peer.
        peer: ReplicaId,
        /// How far ahead of this replica's clock the write was stamped, in ms.
        ahead_ms: u64,
    },
}

/// What a replica keeps across restarts.
///
/// A [`Store`] persists it incrementally (see [`Replica::persist`]) and hands it back to
/// [`Replica::restore`]. Everything else (the delta buffer, peer liveness, transfers in flight)
/// is rebuilt by the protocol.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// The objects, by key.
    pub objects: BTreeMap<String, Object>,
    /// Every update incorporated, local or remote.
    pub seen: CausalContext,
    /// Per object, the latest update of each writer to it: what a peer behind a given digest
    /// needs.
    pub touched: BTreeMap<String, VersionVector>,
}

/// Counters of a replica's traffic.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Anti-entropy rounds started.
    pub rounds: u64,
    /// Messages handed to the driver.
    pub messages_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Messages received (valid or not).
    pub messages_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Deltas sent, pushed or on request.
    pub deltas_sent: u64,
    /// Objects or pieces sent in state transfers.
    pub state_entries_sent: u64,
    /// Messages refused with a [`ProtocolError`].
    pub errors: u64,
    /// Entries refused because their last-writer-wins timestamp was too far ahead (see
    /// [`Config::max_drift`]).
    pub drift_refused: u64,
    /// Merges of two different types under one key (the later type won; see [`Object`]).
    pub type_conflicts: u64,
    /// Reads from peers left unanswered because the peer had used its budget for the round.
    pub reads_refused: u64,
    /// Summaries from peers beyond `SUMMARIES_PER_ROUND` in one round: answered from the
    /// cached fingerprint without changing what the peer is known to have, or left
    /// unanswered while changes await commit.
    pub summaries_refused: u64,
}

/// What this replica knows of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStatus {
    /// Who.
    pub info: PeerInfo,
    /// Whether it answers.
    pub up: bool,
    /// How many of our updates it is known to lack (from its last digest or acks).
    pub lag: u64,
}

/// One replica: a keyspace of [`Object`]s and the anti-entropy protocol, as a state machine.
///
/// It does no I/O and reads no clock: the driver (or the simulator) feeds it messages with
/// [`handle_message`](Replica::handle_message) and time with
/// [`handle_timeout`](Replica::handle_timeout), and sends whatever
/// [`poll_transmit`](Replica::poll_transmit) returns.
///
/// **Nothing leaves before it is durable.** After any change (a local update, a merged
/// message) `poll_transmit` and `poll_event` return `None` until the driver has committed the
/// changes with [`persist`](Replica::persist). A driver that batches several updates and
/// messages before one `persist` gets group commit for free.
///
/// ```
/// use crdt_net::store::MemStore;
/// use crdt_net::{Config, Op, Replica};
/// use crdt_core::ReplicaId;
///
/// let (a, b) = (ReplicaId::new(1), ReplicaId::new(2));
/// let mut x = Replica::new(Config::new(a).with_peer(b));
/// let mut y = Replica::new(Config::new(b).with_peer(a));
/// let (mut x_disk, mut y_disk) = (MemStore::default(), MemStore::default());
/// x.update("likes", &Op::Inc(3)).unwrap();
/// // Drive both by hand until quiet: push, then a round each way. Each commits its changes
/// // before anything it sends can leave.
/// for now in [0, 1_000, 2_000] {
///     x.handle_timeout(now);
///     y.handle_timeout(now);
///     loop {
///         x.persist(&mut x_disk).unwrap();
///         y.persist(&mut y_disk).unwrap();
///         let mut quiet = true;
///         while let Some(t) = x.poll_transmit() {
///             y.handle_message(now, a, &t.payload).unwrap();
///             quiet = false;
///         }
///         while let Some(t) = y.poll_transmit() {
///             x.handle_message(now, b, &t.payload).unwrap();
///             quiet = false;
///         }
///         if quiet { break; }
///     }
/// }
/// assert_eq!(y.get("likes").map(|o| o.to_string()), Some("3".into()));
/// ```
#[derive(Debug)]
pub struct Replica {
    config: Config,
    durable: Durable,
    log: DeltaLog,
    peers: BTreeMap<ReplicaId, Peer>,
    /// With peer sampling ([`Config::view`]), the peers gossiped with; else empty.
    view: Vec<ReplicaId>,
    /// Local deltas not yet pushed.
    fresh: Vec<(DeltaEntry, usize)>,
    /// Dots received per peer, to acknowledge.
    acks_due: BTreeMap<ReplicaId, CausalContext>,
    /// State transfers from each peer, as they arrive.
    incoming: BTreeMap<ReplicaId, Incoming>,
    /// The state transfer under way to each peer, produced as its link has room.
    outgoing: BTreeMap<ReplicaId, Outgoing>,
    /// The peer that last got a chunk: the next goes to the one after it.
    last_served: Option<ReplicaId>,
    /// Reads waiting for peers' answers, by id.
    reads: BTreeMap<u64, PendingRead>,
    /// Bytes of read answers sent to each peer this round (estimated).
    reads_served: BTreeMap<ReplicaId, usize>,
    /// Summaries answered for each peer this round.
    summaries_answered: BTreeMap<ReplicaId, u32>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// What changed since the last commit, in order (see [`Replica::persist`]).
    unpersisted: Vec<(String, Object)>,
    /// Whether anything (objects or context) changed since the last commit.
    dirty: bool,
    /// The fingerprint of `durable.seen` as of the last commit, once computed: the context
    /// changes only with `dirty` set, so it holds until the next commit (a peer's stream of
    /// summaries then costs a comparison each, not an encoding of the context).
    committed_fingerprint: Option<Fingerprint>,
    next_round: Millis,
    /// The peer we last asked for what we lack, and when it last made progress: we ask no other
    /// until a round passes without progress.
    pull: Option<(ReplicaId, Millis, Millis)>,
    /// The peer whose last pull did not finish, and until when others are asked first.
    stalled: Option<(ReplicaId, Millis)>,
    rng: fastrand::Rng,
    /// Stamps this replica's last-writer-wins writes; every received stamp advances it.
    clock: Hlc,
    /// Keys with a type conflict already reported.
    conflicted: BTreeSet<String>,
    /// The dot of the latest local update.
    last_local: Option<Dot>,
    /// Own dots up to this were issued by an earlier copy of this replica whose state was
    /// dropped (see [`Replica::set_issued_floor`]).
    issued_floor: u64,
    /// Transfers in a row that could not complete because an entry was refused, and the
    /// round before which no pull starts (backing off from them).
    refused_pulls: u32,
    pull_not_before: u64,
    stats: Stats,
}

/// Keys whose type conflict is remembered (so reported once); further ones are only counted.
const MAX_CONFLICTED_KEYS: usize = 1024;

/// Rounds one pull may last, progress or not, before another may start; and rounds a peer
/// whose pull did not finish waits before it is asked again.
const PULL_ROUNDS: u64 = 4;

/// Summaries learned from per peer per round. An honest peer sends one a round, and one in
/// answer to each of our digests; a matching summary costs a copy of the context, so beyond
/// this a peer's summaries only get the cheap answer (and none while changes await commit).
const SUMMARIES_PER_ROUND: u32 = 8;

/// The largest indivisible value an update may carry with messages of `max_message` bytes (see
/// [`Replica::largest_value`]).
pub(crate) fn largest_value(max_message: usize) -> usize {
    (max_message - max_message / 16).saturating_sub(MESSAGE_OVERHEAD)
}

/// Refuses an operation nested deeper than [`MAX_DEPTH`] or carrying more than `largest` bytes
/// of key and values, before anything is changed (or, for a forwarded write, sent).
pub(crate) fn check_op(key: &str, op: &Op, largest: usize) -> Result<(), UpdateError> {
    let depth = op.depth();
    if depth > MAX_DEPTH {
        return Err(UpdateError::TooDeep {
            depth,
            max: MAX_DEPTH,
        });
    }
    let bytes = op.value_bytes() + key.len();
    if bytes > largest {
        return Err(UpdateError::TooLarge {
            bytes,
            max: largest,
        });
    }
    Ok(())
}

/// Room left in a message for everything but its entries.
const MESSAGE_OVERHEAD: usize = 64;

impl Config {
    /// Adds a peer known at start (no address).
    pub fn with_peer(mut self, id: ReplicaId) -> Self {
        self.peers.push(PeerInfo { id, addr: None });
        self
    }
}

impl Replica {
    /// A replica with no objects.
    pub fn new(config: Config) -> Self {
        Replica::restore(config, Durable::default())
    }

    /// A replica resumed from what it persisted.
    pub fn restore(config: Config, durable: Durable) -> Self {
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let next_round = rng.u64(0..config.gossip_interval.max(1));
        // The clock resumes past every stamp it may have issued.
        let latest = durable
            .objects
            .values()
            .filter_map(Object::latest_stamp)
            .max()
            .unwrap_or_default();
        let mut replica = Replica {
            clock: Hlc::resume(latest, config.max_drift),
            conflicted: BTreeSet::new(),
            last_local: None,
            issued_floor: 0,
            refused_pulls: 0,
            pull_not_before: 0,
            log: DeltaLog::new(config.max_log_bytes),
            durable,
            peers: BTreeMap::new(),
            view: Vec::new(),
            fresh: Vec::new(),
            acks_due: BTreeMap::new(),
            incoming: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            last_served: None,
            reads: BTreeMap::new(),
            reads_served: BTreeMap::new(),
            summaries_answered: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            unpersisted: Vec::new(),
            dirty: false,
            committed_fingerprint: None,
            next_round,
            pull: None,
            stalled: None,
            rng,
            stats: Stats::default(),
            config,
        };
        for info in replica.config.peers.clone() {
            replica.add_peer(info);
        }
        replica.start_view();
        replica
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.config.id
    }

    /// Applies `op` to the object at `key` (created on first use), queues the delta for peers
    /// and returns it. An operation for another type than the object's, nested deeper than
    /// [`MAX_DEPTH`](crate::MAX_DEPTH), or carrying a value too large for one message (see
    /// [`largest_value`](Replica::largest_value)) is refused and changes nothing.
    pub fn update(&mut self, key: &str, op: &Op) -> Result<Object, UpdateError> {
        check_op(key, op, self.largest_value())?;
        let id = self.config.id;
        if let Some(total) = self
            .durable
            .objects
            .get(key)
            .unwrap_or(&Object::Empty)
            .counter_total_after(id, op)
            .filter(|total| *total > MAX_COUNTER)
        {
            return Err(UpdateError::CounterLimit {
                total,
                max: MAX_COUNTER,
            });
        }
        let object = self.durable.objects.entry(key.to_owned()).or_default();
        match object.apply(id, op) {
            Ok(delta) => Ok(self.record_local(key, delta)),
            Err(e) => {
                if *object == Object::Empty {
                    self.durable.objects.remove(key);
                }
                Err(UpdateError::Refused(e))
            }
        }
    }

    /// Mutates the object at `key` (empty on first use) with `f`, which returns the mutation's
    /// delta, as every crdt-core mutator does; queues the delta for peers and returns it. If `f`
    /// fails, or its delta nests deeper than [`MAX_DEPTH`](crate::MAX_DEPTH) or holds a piece
    /// too large for one message, the object is put back as it was and nothing is recorded (to
    /// that end the object is copied first: for single changes to large sets, [`update`]
    /// costs less).
    ///
    /// The delta must be what the mutation added (merging it into the object before the
    /// mutation gives the object after); peers receive only the delta.
    ///
    /// ```
    /// use crdt_core::ReplicaId;
    /// use crdt_net::{Config, Object, Replica};
    ///
    /// let me = ReplicaId::new(1);
    /// let mut replica = Replica::new(Config::new(me));
    /// replica
    ///     .update_with("tags", |object| {
    ///         if *object == Object::Empty {
    ///             *object = Object::Set(Default::default());
    ///         }
    ///         match object {
    ///             Object::Set(set) => Ok(Object::Set(set.add(me, "rust".into()))),
    ///             other => Err(other.type_name()),
    ///         }
    ///     })
    ///     .unwrap();
    /// ```
    ///
    /// [`update`]: Replica::update
    pub fn update_with<E>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Object) -> Result<Object, E>,
    ) -> Result<Object, UpdateError<E>> {
        let budget = self.largest_value();
        let object = self.durable.objects.entry(key.to_owned()).or_default();
        let before = object.clone();
        let checked = f(object).map_err(UpdateError::Refused).and_then(|delta| {
            let depth = delta.depth();
            if depth > MAX_DEPTH {
                return Err(UpdateError::TooDeep {
                    depth,
                    max: MAX_DEPTH,
                });
            }
            if let Some(total) = validate::counter_over_limit(&delta) {
                return Err(UpdateError::CounterLimit {
                    total,
                    max: MAX_COUNTER,
                });
            }
            let largest = fit(&delta, budget).into_iter().map(|(_, size)| size).max();
            match largest {
                Some(bytes) if bytes + key.len() > budget => Err(UpdateError::TooLarge {
                    bytes: bytes + key.len(),
                    max: budget,
                }),
                _ => Ok(delta),
            }
        });
        match checked {
            Ok(delta) => Ok(self.record_local(key, delta)),
            Err(e) => {
                if before == Object::Empty {
                    self.durable.objects.remove(key);
                } else {
                    *object = before;
                }
                Err(e)
            }
        }
    }

    /// The largest indivisible value (a register's value, a set element, with its key) an
    /// update may carry: what fits in one message with room for the entry around it. A
    /// fifteen-sixteenth of [`Config::max_message`], less 64 bytes.
    pub fn largest_value(&self) -> usize {
        largest_value(self.config.max_message)
    }

    /// Tags a local change with the next dot and queues it for the store and the peers.
    fn record_local(&mut self, key: &str, delta: Object) -> Object {
        let dot = Dot::new(self.config.id, self.issued().saturating_add(1));
        self.durable.seen.insert(dot);
        self.last_local = Some(dot);
        self.touch(key, dot);
        self.record(key, &delta);
        if let Some(stamp) = delta.latest_stamp() {
            // A stamp the caller chose: later ones of this replica must exceed it.
            let _ = self.clock.observe(stamp, stamp.wall_ms);
        }
        let entry = DeltaEntry {
            dot,
            key: key.to_owned(),
            delta,
        };
        let size = encoded_len(&entry);
        let delta = entry.delta.clone();
        // A delta too large for one message (many elements at once) reaches peers by state
        // transfer, which cuts it.
        if size <= self.config.max_message.saturating_sub(MESSAGE_OVERHEAD) {
            if self.config.eager_push {
                self.fresh.push((entry.clone(), size));
            }
            self.log.insert(entry, size);
        }
        self.events.push_back(Event::Changed {
            key: key.to_owned(),
            local: true,
            change: delta.clone(),
        });
        delta
    }

    /// Commits every change since the last commit to `store`, in one batch; until then no
    /// message or event leaves the replica. On error nothing is marked committed: the changes
    /// stay pending (and held back) for the next call.
    pub fn persist(&mut self, store: &mut dyn Store) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        store.commit(&Batch {
            deltas: &self.unpersisted,
            seen: &self.durable.seen,
            objects: &self.durable.objects,
            touched: &self.durable.touched,
        })?;
        self.unpersisted.clear();
        self.dirty = false;
        self.committed_fingerprint = None;
        Ok(())
    }

    /// Whether every change is committed (so messages and events may leave).
    pub fn is_persisted(&self) -> bool {
        !self.dirty
    }

    /// The dot of this replica's latest local update since it started, if it made any: what a
    /// write's acknowledgement is counted against.
    pub fn last_local_dot(&self) -> Option<Dot> {
        self.last_local
    }

    /// The highest counter of this replica's own dots issued so far, by it or by an earlier
    /// copy (see [`set_issued_floor`](Replica::set_issued_floor)).
    pub fn issued(&self) -> u64 {
        self.durable
            .seen
            .highest(self.config.id)
            .max(self.issued_floor)
    }

    /// Declares that this replica's own dots up to `counter` were issued before, by an earlier
    /// copy of it whose state was since dropped (a partition handed over and taken up again,
    /// see [`cluster`](crate::cluster)): they are never issued again, and peers holding them
    /// are not taken for forgers. The dots themselves arrive from peers like any other.
    pub fn set_issued_floor(&mut self, counter: u64) {
        self.issued_floor = self.issued_floor.max(counter);
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A fresh hybrid-logical-clock reading for a last-writer-wins write made now: later
    /// than every stamp this replica has issued or received.
    ///
    /// ```
    /// use crdt_core::ReplicaId;
    /// use crdt_net::{Config, Op, Replica};
    ///
    /// let mut replica = Replica::new(Config::new(ReplicaId::new(1)));
    /// let now = 1_700_000_000_000; // the driver's wall clock, ms
    /// let stamp = replica.stamp(now);
    /// replica.update("title", &Op::Lww(stamp, "draft".into())).unwrap();
    /// assert!(replica.stamp(now) > stamp);
    /// ```
    pub fn stamp(&mut self, now: Millis) -> HlcTimestamp {
        self.clock.now(now)
    }

    /// The object at `key`.
    pub fn get(&self, key: &str) -> Option<&Object> {
        self.durable.objects.get(key)
    }

    /// Every object, by key.
    pub fn objects(&self) -> &BTreeMap<String, Object> {
        &self.durable.objects
    }

    /// What to persist (see [`Durable`]).
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Every update incorporated so far.
    pub fn seen(&self) -> &CausalContext {
        &self.durable.seen
    }

    /// The largest message this replica sends or accepts.
    pub fn max_message(&self) -> usize {
        self.config.max_message
    }

    /// Traffic counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The fingerprint of everything this replica has seen (what a
    /// [`Message::Summary`] carries): equal fingerprints, equal contexts.
    pub fn fingerprint(&mut self) -> Fingerprint {
        self.own_fingerprint()
    }

    /// Starts an anti-entropy exchange with `peer` now, between rounds (a driver that learned
    /// the two differ, as a cluster does from its own summaries). Nothing for an unknown peer.
    pub fn gossip_with(&mut self, now: Millis, peer: ReplicaId) {
        if self.peers.contains_key(&peer) {
            self.exchange(peer, now);
        }
    }

    /// When [`handle_timeout`](Replica::handle_timeout) next needs calling.
    pub fn poll_timeout(&self) -> Option<Millis> {
        Some(self.next_round)
    }

    /// Advances time: starts an anti-entropy round when one is due.
    pub fn handle_timeout(&mut self, now: Millis) {
        if now < self.next_round {
            return;
        }
        self.next_round = now + self.config.gossip_interval.max(1);
        self.start_round(now);
    }

    /// The next message to send, if any. None while changes await [`persist`](Replica::persist).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.dirty {
            return None;
        }
        self.flush_fresh();
        self.flush_acks();
        let t = self.outbox.pop_front().or_else(|| self.poll_chunk())?;
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += t.payload.len() as u64;
        Some(t)
    }

    /// The next event, if any. None while changes await [`persist`](Replica::persist).
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.dirty {
            return None;
        }
        self.events.pop_front()
    }

    /// Handles a message from `from`. On error the message is dropped whole, nothing stored
    /// changes, and the driver should disconnect the peer.
    pub fn handle_message(
        &mut self,
        now: Millis,
        from: ReplicaId,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let result = self.dispatch(now, from, bytes);
        if result.is_err() {
            self.stats.errors += 1;
        }
        result
    }

    fn dispatch(
        &mut self,
        now: Millis,
        from: ReplicaId,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        if from == self.config.id {
            return Err(ProtocolError::FromSelf(from));
        }
        let message = Message::decode(bytes, self.config.max_message)?;
        self.validate(from, &message)?;
        self.heard_from(from);
        match message {
            Message::Digest(digest) => self.on_digest(now, from, digest),
            Message::InSync => self.pull_finished(from),
            Message::Deltas(entries) => self.on_deltas(now, from, entries),
            Message::Ack(mut dots) => {
                let max_writers = self.config.max_writers;
                if let Some(peer) = self.peers.get_mut(&from) {
                    // An estimate may err low: the scattered part, and an ack naming more
                    // writers than a context may hold, are not kept.
                    if dots.cloud_len() > KNOWN_CLOUD {
                        dots.truncate_cloud();
                    }
                    if dots.vv().len() <= max_writers {
                        peer.known.merge(&dots);
                    }
                    bound_known(&mut peer.known, max_writers);
                }
            }
            Message::State(chunk) => self.on_state(now, from, chunk),
            Message::StateDone(done) => self.on_state_done(from, done),
            Message::Peers(list) => self.on_peers(list),
            Message::Read(request) => self.on_read(from, request),
            Message::ReadReply(reply) => self.on_read_reply(now, from, reply),
            Message::Summary(theirs) => self.on_summary(from, theirs),
            Message::Mismatch => self.on_mismatch(from),
        }
        Ok(())
    }

    fn start_round(&mut self, now: Millis) {
        self.stats.rounds += 1;
        self.reads_served.clear();
        self.summaries_answered.clear();
        let round = self.stats.rounds;
        self.note_silent_peers(round);
        let mut candidates = self.reachable_peers(round);
        self.rng.shuffle(&mut candidates);
        candidates.truncate(self.config.fanout);
        for &to in &candidates {
            self.exchange(to, now);
        }
        if let Some(&to) = candidates.first() {
            if round % self.config.peer_exchange_every.max(1) == 0 {
                let list = self.exchange_list();
                self.send(to, &Message::Peers(list));
            }
        }
        let (peers, view, sampling) = (&self.peers, &self.view, self.config.view > 0);
        self.log.trim(|dot| {
            peers
                .iter()
                .filter(|(id, _)| !sampling || view.contains(id))
                .all(|(_, p)| p.down || p.known.contains(dot))
        });
    }

    /// Whether to ask `peer` for what we lack now; if so, it becomes the one peer we ask. We ask
    /// again (anyone, the same peer included) only once the last request has finished or made
    /// no progress for a round: asking twice would have a transfer sent twice.
    fn start_pull(&mut self, peer: ReplicaId, now: Millis) -> bool {
        if self.stats.rounds < self.pull_not_before {
            return false;
        }
        let round = self.config.gossip_interval;
        if self
            .stalled
            .is_some_and(|(p, until)| p == peer && now < until)
        {
            return false;
        }
        let free = match self.pull {
            None => true,
            // A peer that keeps sending chunks (of any transfer: made-up ones too) holds the
            // pull for at most PULL_ROUNDS rounds.
            Some((holder, progress, started)) => {
                let over = now >= progress.saturating_add(round)
                    || now >= started.saturating_add(round.saturating_mul(PULL_ROUNDS));
                if over {
                    // It did not finish: the next pulls go to others first, so a peer that
                    // claims to have something and never delivers cannot keep the pull. The
                    // pull itself ends here, or the holder would be found stalled again on
                    // every call and, as the only peer left, never asked again.
                    let until = now.saturating_add(round.saturating_mul(PULL_ROUNDS));
                    self.stalled = Some((holder, until));
                    self.pull = None;
                }
                over
            }
        };
        if free
            && self
                .stalled
                .is_some_and(|(p, until)| p == peer && now < until)
        {
            return false;
        }
        if free {
            self.pull = Some((peer, now, now));
        }
        free
    }

    fn pull_progressed(&mut self, peer: ReplicaId, now: Millis) {
        if let Some((p, progress, _)) = &mut self.pull {
            if *p == peer {
                *progress = now;
            }
        }
    }

    fn pull_finished(&mut self, peer: ReplicaId) {
        if self.pull.is_some_and(|(p, _, _)| p == peer) {
            self.pull = None;
        }
    }

    fn digest(&self, to: ReplicaId, reply: bool, want: bool) -> Message {
        Message::Digest(Digest {
            seen: self.durable.seen.clone(),
            reply,
            want,
            resume: self.resume_point(to),
        })
    }

    /// The fingerprint of this replica's context.
    /// Opens an anti-entropy exchange with `to`: a summary, or a digest when `to` probably
    /// lacks something (asking for what we lack, if we may ask it now).
    fn exchange(&mut self, to: ReplicaId, now: Millis) {
        let want = self.start_pull(to, now);
        let summary = self.summary_will_do(to);
        let digest = if summary {
            Message::Summary(self.own_fingerprint())
        } else {
            self.digest(to, true, want)
        };
        self.send(to, &digest);
        if let Some(peer) = self.peers.get_mut(&to) {
            peer.awaiting_reply = true;
            peer.summary_sent = summary.then_some(want);
        }
    }

    fn own_fingerprint(&mut self) -> Fingerprint {
        if self.dirty {
            return fingerprint(&self.durable.seen);
        }
        let seen = &self.durable.seen;
        *self
            .committed_fingerprint
            .get_or_insert_with(|| fingerprint(seen))
    }

    /// Whether a round's digest to `to` may be a [`Message::Summary`]: when `to` is known to
    /// have everything this replica has (so the fingerprints most likely match), no transfer
    /// from it is to be resumed, and the context is larger than its fingerprint. Otherwise
    /// the peer most likely lacks something, and the full digest saves a round trip.
    fn summary_will_do(&self, to: ReplicaId) -> bool {
        let known = self
            .peers
            .get(&to)
            .is_some_and(|p| p.known.includes(&self.durable.seen));
        known && self.resume_point(to).is_none() && self.summary_pays()
    }

    /// Whether this replica's context is larger than its fingerprint.
    fn summary_pays(&self) -> bool {
        encoded_len(&self.durable.seen) > std::mem::size_of::<Fingerprint>()
    }

    /// A peer's summary: if its fingerprint is ours, the peer has seen exactly what this
    /// replica has (as a full digest with our context would claim), so there is nothing to
    /// exchange; else it is asked for its full digest.
    fn on_summary(&mut self, from: ReplicaId, theirs: Fingerprint) {
        let answered = self.summaries_answered.entry(from).or_default();
        let learn = *answered < SUMMARIES_PER_ROUND;
        if learn {
            *answered += 1;
        } else {
            self.stats.summaries_refused += 1;
            // Beyond the budget a summary is still answered when that is cheap (the
            // fingerprint is cached while nothing awaits commit), but teaches nothing: a
            // peer whose rounds are much faster than ours would otherwise count us as silent
            // and mark us down.
            if self.dirty {
                return;
            }
        }
        if theirs != self.own_fingerprint() {
            self.send(from, &Message::Mismatch);
            return;
        }
        if !learn {
            self.send(from, &Message::InSync);
            return;
        }
        let ours = self.durable.seen.clone();
        let max_writers = self.config.max_writers;
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.known = ours.clone();
            bound_known(&mut peer.known, max_writers);
        }
        self.learn_in_transfer(from, &ours);
        // Nothing to pull from a peer that has what we have.
        self.pull_finished(from);
        self.send(from, &Message::InSync);
    }

    /// The answer to our summary: the peer's context differs, so the round goes on as with a
    /// full digest. Answered once per summary sent, so a peer cannot have full digests sent
    /// at will.
    fn on_mismatch(&mut self, from: ReplicaId) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        let Some(want) = peer.summary_sent.take() else {
            return;
        };
        peer.awaiting_reply = true;
        // As the round would have asked, had it sent the digest.
        let digest = self.digest(from, true, want);
        self.send(from, &digest);
    }

    fn on_digest(&mut self, now: Millis, from: ReplicaId, digest: Digest) {
        let max_writers = self.config.max_writers;
        if let Some(peer) = self.peers.get_mut(&from) {
            // The peer's whole context, newer than anything it acknowledged before.
            peer.known = digest.seen.clone();
            bound_known(&mut peer.known, max_writers);
        }
        self.learn_in_transfer(from, &digest.seen);
        let sent = digest.want && self.send_missing(from, &digest.seen, digest.resume.as_ref());
        if digest.reply {
            if !self.durable.seen.includes(&digest.seen) {
                let want = self.start_pull(from, now);
                let ours = self.digest(from, false, want);
                self.send(from, &ours);
            } else if !sent && digest.seen == self.durable.seen && self.summary_pays() {
                // Equal contexts: answered with our summary rather than InSync, which names
                // nothing, so the peer learns we have its context however late the answer
                // arrives (and answers InSync itself).
                let ours = Message::Summary(self.own_fingerprint());
                self.send(from, &ours);
            } else if !sent {
                self.send(from, &Message::InSync);
            }
        }
    }

    /// Sends `to` what its context `theirs` lacks: buffered deltas when the buffer has them all
    /// and they are smaller than the objects they touch, else those objects' states. Returns
    /// whether anything was sent.
    fn send_missing(
        &mut self,
        to: ReplicaId,
        theirs: &CausalContext,
        resume: Option<&Resume>,
    ) -> bool {
        match self.durable.seen.missing_from(theirs, self.log.len()) {
            Some(missing) if missing.is_empty() => return false,
            Some(missing) => {
                if let Some(entries) = self.buffered(&missing) {
                    let delta_bytes: usize = entries.iter().map(|e| e.1).sum();
                    let keys: BTreeSet<&str> = entries.iter().map(|e| e.0.key.as_str()).collect();
                    let state_bytes: usize = keys
                        .iter()
                        .filter_map(|k| self.durable.objects.get(*k))
                        .map(estimated_len)
                        .sum();
                    if delta_bytes * 2 <= state_bytes {
                        let entries: Vec<(DeltaEntry, usize)> =
                            entries.into_iter().map(|(e, s)| (e.clone(), s)).collect();
                        self.send_deltas(&[to], entries);
                        return true;
                    }
                }
            }
            None => {}
        }
        self.send_state(to, theirs, resume);
        true
    }

    /// The buffered deltas for `dots`, if the buffer still holds every one.
    fn buffered(&self, dots: &[Dot]) -> Option<Vec<(&DeltaEntry, usize)>> {
        dots.iter()
            .map(|d| self.log.get(d).map(|(e, s)| (e, *s)))
            .collect()
    }

    fn on_deltas(&mut self, now: Millis, from: ReplicaId, entries: Vec<DeltaEntry>) {
        // The sender holds what it sends (committed before it left), as its digest would say;
        // knowing so lets the next round to it be a summary.
        let max_writers = self.config.max_writers;
        if let Some(peer) = self.peers.get_mut(&from) {
            entries.iter().for_each(|e| peer.known.insert(e.dot));
            bound_known(&mut peer.known, max_writers);
        }
        for entry in entries {
            if self.durable.seen.contains(entry.dot) {
                self.acks_due.entry(from).or_default().insert(entry.dot);
                continue;
            }
            if !self.clock_accepts(now, from, &entry.delta) {
                continue; // not acknowledged: it comes again by anti-entropy
            }
            self.acks_due.entry(from).or_default().insert(entry.dot);
            self.merge_remote(&entry.key, &entry.delta, None);
            self.durable.seen.insert(entry.dot);
            self.touch(&entry.key, entry.dot);
            let size = encoded_len(&entry);
            self.log.insert(entry, size);
        }
    }

    /// Whether `object`'s last-writer-wins stamps are within the drift bound of `now`; if so
    /// they advance the clock, else the refusal is counted and reported.
    fn clock_accepts(&mut self, now: Millis, from: ReplicaId, object: &Object) -> bool {
        let Some(stamp) = object.latest_stamp() else {
            return true;
        };
        match self.clock.observe(stamp, now) {
            Ok(_) => true,
            Err(_) => {
                self.stats.drift_refused += 1;
                self.events.push_back(Event::ClockDrift {
                    peer: from,
                    ahead_ms: stamp.wall_ms.saturating_sub(now),
                });
                false
            }
        }
    }

    /// Merges a peer's delta or state (with its per-writer progress, for state) into the
    /// object at `key`, to be persisted, and reports the change.
    ///
    /// Two types under one key merge by the later variant winning (see [`Object`]): the
    /// other's writes are lost, so the conflict is counted and reported, once per key.
    fn merge_remote(&mut self, key: &str, object: &Object, touched: Option<&VersionVector>) {
        let ours = self.durable.objects.entry(key.to_owned()).or_default();
        let conflict = *ours != Object::Empty
            && *object != Object::Empty
            && ours.type_name() != object.type_name();
        ours.merge(object);
        if let Some(touched) = touched {
            self.durable
                .touched
                .entry(key.to_owned())
                .or_default()
                .merge(touched);
        }
        if conflict {
            self.stats.type_conflicts += 1;
            if self.conflicted.len() < MAX_CONFLICTED_KEYS && self.conflicted.insert(key.to_owned())
            {
                self.events.push_back(Event::TypeConflict {
                    key: key.to_owned(),
                });
            }
        }
        self.record(key, object);
        self.events.push_back(Event::Changed {
            key: key.to_owned(),
            local: false,
            change: object.clone(),
        });
    }

    /// Notes a change to persist before anything leaves.
    fn record(&mut self, key: &str, delta: &Object) {
        self.unpersisted.push((key.to_owned(), delta.clone()));
        self.dirty = true;
    }

    fn touch(&mut self, key: &str, dot: Dot) {
        self.durable
            .touched
            .entry(key.to_owned())
            .or_default()
            .raise(dot.replica, dot.counter);
    }

    /// Pushes fresh local deltas to every peer that is up.
    fn flush_fresh(&mut self) {
        if self.fresh.is_empty() {
            return;
        }
        let fresh = std::mem::take(&mut self.fresh);
        let up = self.push_targets();
        self.send_deltas(&up, fresh);
    }

    fn flush_acks(&mut self) {
        for (to, dots) in std::mem::take(&mut self.acks_due) {
            self.send(to, &Message::Ack(dots));
        }
    }

    /// Sends `entries` to each of `peers`, in messages of bounded size, each encoded once.
    fn send_deltas(&mut self, peers: &[ReplicaId], entries: Vec<(DeltaEntry, usize)>) {
        if peers.is_empty() || entries.is_empty() {
            return;
        }
        let budget = self.config.max_message.saturating_sub(MESSAGE_OVERHEAD);
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut payloads = Vec::new();
        let count = entries.len() as u64;
        for (entry, size) in entries {
            if !batch.is_empty() && batch_bytes + size > budget {
                payloads.push(Message::Deltas(std::mem::take(&mut batch)).encode());
                batch_bytes = 0;
            }
            batch.push(entry);
            batch_bytes += size;
        }
        payloads.push(Message::Deltas(batch).encode());
        for &to in peers {
            for payload in &payloads {
                self.outbox.push_back(Transmit {
                    to,
                    payload: payload.clone(),
                });
            }
        }
        self.stats.deltas_sent += count * peers.len() as u64;
    }

    fn send(&mut self, to: ReplicaId, message: &Message) {
        self.outbox.push_back(Transmit {
            to,
            payload: message.encode(),
        });
    }
}

/// A cheap upper estimate of an object's encoded size, to weigh deltas against state.
fn estimated_len(object: &Object) -> usize {
    16 + 16 * object.entries()
}

fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_allocvec(value).map_or(0, |v| v.len())
}
