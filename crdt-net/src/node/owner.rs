//! The one task that owns a node's replica and its store.
//!
//! Every other task talks to it through a channel: the application's calls, each peer's
//! incoming messages, reads. It runs on its own thread because a commit blocks on fsync. Each
//! turn it takes every command waiting (up to a bound), commits all their changes in one
//! transaction (group commit), and only then answers the writers and hands the replica's
//! messages to the peers' queues: nothing leaves before it is durable, by construction.
//!
//! Reads do not queue here: the replica sits behind a [`RwLock`] that readers share (see
//! [`Node::with`](super::Node::with)). The owner, the only writer, holds the write lock for a
//! whole turn, from applying its first command through the commit (and the restore from the
//! store when the commit fails) to handing out the messages; so under the read lock a reader
//! sees only committed states, never a change in between. A reader waits at most one turn:
//! its changes, its linger under load and its commit's fsync.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crdt_core::Dot;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{dial_new_peers, progress, Ack, NodeError, Shared, Token};
use crate::store::{RedbStore, StoreError};
use crate::{Event, Object, ProtocolError, Replica};

/// Commands handled per commit at most, so a flood of writes still gets its commits.
const MAX_BATCH: usize = 4096;
/// How long a turn under load waits for more commands before its commit.
const LINGER: Duration = Duration::from_micros(500);

/// What other tasks ask of the owner.
pub(super) enum Command {
    /// A local update: `change` makes it and returns its delta; the writer then waits for its
    /// commit and its acknowledgement level.
    Update {
        change: Change,
        ack: Ack,
        timeout: Duration,
        reply: oneshot::Sender<Result<(Token, Object), NodeError>>,
    },
    /// A peer's message.
    Message {
        peer: crdt_core::ReplicaId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), ProtocolError>>,
    },
    /// A read or a change that is not an update (such as learning of a peer). It runs after
    /// the turn's commit, so a read never sees a write that a crash could still lose.
    With(Job),
    /// A read of `key` that waits until the replica has seen `dot` (or answers `None` at the
    /// deadline).
    After {
        dot: Dot,
        key: String,
        deadline: Instant,
        reply: oneshot::Sender<Option<Option<Object>>>,
    },
    /// A read that merges the object from `peers` peers first.
    Read {
        key: String,
        peers: usize,
        deadline: Instant,
        reply: oneshot::Sender<Result<Option<Object>, NodeError>>,
    },
    /// A peer's queue has drained: the turn sends more of a state transfer to it.
    Wake,
    /// Commit, close the store and stop; answered once the store is closed.
    Stop(oneshot::Sender<()>),
}

/// A read or a change run on the owner's thread.
pub(super) type Job = Box<dyn FnOnce(&mut Replica) + Send>;

/// What a waiting read does once its write has arrived (`None`: the deadline passed).
/// A local update, made on the owner's thread.
pub(super) type Change = Box<dyn FnOnce(&mut Replica) -> Result<Object, NodeError> + Send>;

/// A writer waiting for its update to be committed, then acknowledged.
struct Writer {
    dot: Dot,
    delta: Object,
    ack: Ack,
    deadline: Instant,
    reply: oneshot::Sender<Result<(Token, Object), NodeError>>,
}

impl Writer {
    fn done(self) {
        let _ = self.reply.send(Ok((Token(self.dot), self.delta)));
    }
}

/// A read waiting for its turn's commit and, at a level above local, for peers' answers.
struct Quorum {
    /// The replica's read id, when peers were asked.
    id: Option<u64>,
    key: String,
    peers: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<Option<Object>, NodeError>>,
}

struct Reader {
    dot: Dot,
    key: String,
    deadline: Instant,
    reply: oneshot::Sender<Option<Option<Object>>>,
}

/// What the owner shares with readers, behind the lock: the replica between turns, so only as
/// the store holds it.
#[derive(Debug)]
pub(super) struct State {
    pub(super) replica: Replica,
    /// The last commit's failure, while commits fail: if the store could not even be read
    /// back, the replica still holds changes the store refused, and reads refuse with this
    /// rather than show them.
    pub(super) failure: Option<Arc<StoreError>>,
}

impl State {
    /// The replica for a reader: refused while it holds changes the store has not taken.
    pub(super) fn committed(&self) -> Result<&Replica, NodeError> {
        if self.replica.is_persisted() {
            return Ok(&self.replica);
        }
        Err(self
            .failure
            .clone()
            .map_or(NodeError::Stopped, NodeError::Store))
    }
}

pub(super) struct Owner {
    /// The replica, shared with readers ([`super::Shared::state`] is the same lock).
    pub(super) state: Arc<RwLock<State>>,
    pub(super) store: RedbStore,
    pub(super) shared: Arc<Shared>,
    pub(super) runtime: tokio::runtime::Handle,
    /// Peers whose clock drift has been logged.
    pub(super) drift_reported: std::collections::BTreeSet<crdt_core::ReplicaId>,
}

/// The owner's bookkeeping between turns.
#[derive(Default)]
struct Waiting {
    /// Updates made this turn, to answer after the commit.
    committing: Vec<Writer>,
    /// Committed updates waiting for peers' acknowledgements.
    acking: Vec<Writer>,
    reading: Vec<Reader>,
    quorums: Vec<Quorum>,
    /// `With` commands of this turn, run after its commit.
    after_commit: Vec<Job>,
    stop: Option<oneshot::Sender<()>>,
    /// The last commit's failure and when it happened, while the store is failing.
    failing: Option<(Arc<StoreError>, Instant)>,
}

/// While the store fails, a new commit is tried at most this often; in between, updates are
/// refused at once and peers' messages dropped (anti-entropy brings them again).
const RETRY_STORE: Duration = Duration::from_secs(1);

impl Owner {
    /// Runs until stopped or every sender is gone.
    pub(super) fn run(mut self, commands: Receiver<Command>) {
        let _runtime = self.runtime.enter();
        let state = self.state.clone();
        let mut waiting = Waiting::default();
        let mut rounds = read(&state).replica.stats().rounds;
        // Whether the last turn took several commands: under load, a turn lingers briefly for
        // more, since the writers the last commit answered are sending their next updates.
        let mut busy = false;
        while waiting.stop.is_none() {
            let wakeup = self.next_wakeup(&read(&state).replica, &waiting);
            let wait = wakeup.saturating_duration_since(Instant::now());
            let first = match commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // The turn: from its first change to its commit, readers wait (see the module's
            // comment); they never see a change its commit has not made durable.
            let mut turn = state.write().unwrap_or_else(PoisonError::into_inner);
            let mut handled = 0;
            if let Some(command) = first {
                self.handle(&mut turn.replica, command, &mut waiting);
                handled += 1;
            }
            let linger = Instant::now() + if busy { LINGER } else { Duration::ZERO };
            while handled > 0 && handled < MAX_BATCH && waiting.stop.is_none() {
                let left = linger.saturating_duration_since(Instant::now());
                match commands.recv_timeout(left) {
                    Ok(command) => {
                        self.handle(&mut turn.replica, command, &mut waiting);
                        handled += 1;
                    }
                    Err(_) => break,
                }
            }
            busy = handled > 1;
            turn.replica.handle_timeout(self.shared.now());
            self.commit(&mut turn, &mut waiting);
            let replica = &mut turn.replica;
            for f in waiting.after_commit.drain(..) {
                f(replica);
            }
            self.flush(replica);
            self.settle(replica, &mut waiting);
            if replica.stats().rounds != rounds {
                rounds = replica.stats().rounds;
                dial_new_peers(&self.shared, replica);
            }
        }
        let Owner { store, .. } = self;
        // Closing the store releases its lock: only then may a restart open it.
        drop(store);
        if let Some(stopped) = waiting.stop {
            let _ = stopped.send(());
        }
    }

    fn handle(&mut self, replica: &mut Replica, command: Command, waiting: &mut Waiting) {
        match command {
            Command::Update {
                change,
                ack,
                timeout,
                reply,
            } => {
                if let Some(e) = waiting.store_down() {
                    let _ = reply.send(Err(NodeError::Store(e)));
                    return;
                }
                let made = change(replica).and_then(|delta| {
                    let dot = replica.last_local_dot().ok_or(NodeError::Stopped)?;
                    Ok((dot, delta))
                });
                match made {
                    Ok((dot, delta)) => waiting.committing.push(Writer {
                        dot,
                        delta,
                        ack,
                        deadline: super::deadline_after(timeout),
                        reply,
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Message { peer, bytes, reply } => {
                if waiting.store_down().is_some() {
                    // Nothing could be committed: drop it; anti-entropy brings it again.
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Ok(()));
                    return;
                }
                let before = progress::seen(replica, peer);
                let result = replica.handle_message(self.shared.now(), peer, &bytes);
                let after = progress::seen(replica, peer);
                progress::note(&self.shared.catch_up, peer, bytes.len(), before, after);
                let _ = reply.send(result);
            }
            Command::With(f) => waiting.after_commit.push(f),
            Command::After {
                dot,
                key,
                deadline,
                reply,
            } => waiting.reading.push(Reader {
                dot,
                key,
                deadline,
                reply,
            }),
            Command::Read {
                key,
                peers,
                deadline,
                reply,
            } => waiting.quorums.push(Quorum {
                id: (peers > 0).then(|| replica.start_read(&key)),
                key,
                peers,
                deadline,
                reply,
            }),
            Command::Wake => {}
            Command::Stop(reply) => waiting.stop = Some(reply),
        }
    }

    /// One commit for everything this turn changed; then the writers hear of it.
    ///
    /// A failed commit is undone: the replica restarts from what the store holds, so no read
    /// shows, and no later commit makes durable, a write whose caller was told it failed (the
    /// caller may retry it safely). Peers' changes lost with it come again by anti-entropy.
    fn commit(&mut self, state: &mut State, waiting: &mut Waiting) {
        match state.replica.persist(&mut self.store) {
            Ok(()) => {
                if waiting.failing.take().is_some() {
                    info!("the store accepts writes again");
                }
                state.failure = None;
                for writer in waiting.committing.drain(..) {
                    if writer.ack == Ack::Local {
                        writer.done();
                    } else {
                        waiting.acking.push(writer);
                    }
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                if waiting.failing.is_none() {
                    error!(error = %e, "cannot write the store; updates fail and nothing is sent until it can");
                }
                waiting.failing = Some((e.clone(), Instant::now()));
                state.failure = Some(e.clone());
                for writer in waiting.committing.drain(..) {
                    let _ = writer.reply.send(Err(NodeError::Store(e.clone())));
                }
                match self.store.reload() {
                    Ok(durable) => {
                        let mut config = state.replica.config().clone();
                        // A fresh seed: transfer ids must not repeat those already sent.
                        config.seed = super::seed_from_clock(config.id);
                        state.replica = Replica::restore(config, durable);
                    }
                    Err(e) => {
                        error!(error = %e, "cannot read the store back either; uncommitted changes stay in memory, unsent");
                    }
                }
            }
        }
    }

    /// Moves the replica's messages onto the peers' queues and its events out.
    fn flush(&mut self, replica: &mut Replica) {
        let pending: Vec<_> = replica.transfers_pending().collect();
        for peer in pending {
            replica.set_credit(peer, self.shared.room(peer));
        }
        let transmits: Vec<_> = std::iter::from_fn(|| replica.poll_transmit()).collect();
        for event in std::iter::from_fn(|| replica.poll_event()) {
            match &event {
                Event::TypeConflict { key } => {
                    warn!(%key, "two types were written under this key; the later type won and the other's writes are lost");
                }
                Event::ClockDrift { peer, ahead_ms }
                    if self.drift_reported.len() < 1024 && self.drift_reported.insert(*peer) =>
                {
                    warn!(%peer, ahead_ms, "refused writes stamped too far ahead of this clock; check that peer's clock (logged once per peer, counted in metrics)");
                }
                _ => {}
            }
            let _ = self.shared.events.send(event);
        }
        self.shared.send(transmits);
    }

    /// Answers the writers whose acknowledgement level is met or whose time is up, and the
    /// readers whose token has arrived or whose time is up.
    fn settle(&mut self, replica: &mut Replica, waiting: &mut Waiting) {
        let now = Instant::now();
        // The cluster is the trusted peers: ids merely heard of (say, from a peer exchange
        // flooded with made-up ones) neither count towards a level nor make it unreachable.
        let trust = &self.shared.trust;
        let peers = replica
            .peers()
            .filter(|p| trust.contains(p.info.id))
            .count();
        let mut still = Vec::new();
        for writer in waiting.acking.drain(..) {
            let wanted = writer.ack.peers_needed(peers);
            let acked = replica
                .holders(writer.dot)
                .filter(|id| trust.contains(*id))
                .count();
            if acked >= wanted {
                writer.done();
            } else if now >= writer.deadline {
                warn!(dot = ?writer.dot, acked, wanted, "acknowledgement timed out; the write stays and keeps spreading");
                let _ = writer.reply.send(Err(NodeError::AckTimeout {
                    acked: acked.saturating_add(1),
                    wanted: wanted.saturating_add(1),
                }));
            } else if !writer.reply.is_closed() {
                still.push(writer);
            }
        }
        waiting.acking = still;
        self.shared.pending_acks.store(
            waiting.acking.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut still = Vec::new();
        for reader in waiting.reading.drain(..) {
            if replica.is_persisted() && replica.seen().contains(reader.dot) {
                let _ = reader.reply.send(Some(replica.get(&reader.key).cloned()));
            } else if now >= reader.deadline {
                let _ = reader.reply.send(None);
            } else if !reader.reply.is_closed() {
                // A caller that gave up is forgotten now, not at its deadline.
                still.push(reader);
            }
        }
        waiting.reading = still;
        let mut still = Vec::new();
        for quorum in waiting.quorums.drain(..) {
            let answered = quorum.id.map_or(0, |id| replica.read_answers(id));
            let done = answered >= quorum.peers;
            let over = now >= quorum.deadline || quorum.reply.is_closed();
            if let Some(id) = quorum.id.filter(|_| done || over) {
                replica.end_read(id);
            }
            if done {
                let _ = quorum.reply.send(Ok(replica.get(&quorum.key).cloned()));
            } else if over {
                let _ = quorum.reply.send(Err(NodeError::ReadTimeout {
                    answered: answered.saturating_add(1),
                    wanted: quorum.peers.saturating_add(1),
                }));
            } else {
                still.push(quorum);
            }
        }
        waiting.quorums = still;
    }

    /// The replica's next round, or the earliest deadline of a waiting call.
    fn next_wakeup(&self, replica: &Replica, waiting: &Waiting) -> Instant {
        let round = replica
            .poll_timeout()
            .map_or(Instant::now() + Duration::from_secs(1), |at| {
                Instant::now() + Duration::from_millis(at.saturating_sub(self.shared.now()))
            });
        waiting
            .acking
            .iter()
            .map(|w| w.deadline)
            .chain(waiting.reading.iter().map(|r| r.deadline))
            .chain(waiting.quorums.iter().map(|q| q.deadline))
            .fold(round, Instant::min)
    }
}

/// The state for a read on the owner's thread (it is the only writer, so this never waits).
fn read(state: &RwLock<State>) -> std::sync::RwLockReadGuard<'_, State> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}

impl Waiting {
    /// The store's failure, if it failed less than [`RETRY_STORE`] ago.
    fn store_down(&self) -> Option<Arc<StoreError>> {
        let (e, at) = self.failing.as_ref()?;
        (at.elapsed() < RETRY_STORE).then(|| e.clone())
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        NodeError::Store(Arc::new(e))
    }
}
