//! End-to-end replication over QUIC on loopback, with durable writes:
//!
//! 1. Throughput: node A of three makes small updates (counter increments), each awaited until
//!    it is durable at A ([`Node::update`], acknowledgement level `Local`). One writer waits for
//!    one fsync per update; many concurrent writers share each commit (the owner's group
//!    commit). Reported: durable updates per second at A, when all three held them, and the
//!    replication lag.
//! 2. Lag at a paced load: updates issued at a fixed rate (open loop: each is issued at its
//!    time whether or not the earlier ones have returned); the replication lag to the two
//!    other nodes.
//! 3. Catch-up: a fresh node joins a node holding a 100,000-element set; time until it holds
//!    every element.
//!
//! The lag of an update is the time from its `update()` call to a receiver first showing it
//! (so it includes the commit at A and the commit at the receiver); "ack" is the time from the
//! call to `update()` returning (durable at A).
//!
//! ```text
//! cargo run --release --example throughput
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crdt_net::node::{Identity, Node, NodeBuilder};
use crdt_net::{Event, Object, Op};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinSet;

const SET_SIZE: usize = 100_000;
/// Concurrent writers filling the set for the catch-up measurement.
const FILL_WRITERS: u64 = 256;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One update as its writer saw it: its dot's counter at A, when `update()` was called and when
/// it returned.
#[derive(Clone, Copy)]
struct Made {
    counter: u64,
    called: Instant,
    returned: Instant,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    println!("# Replication over QUIC on loopback, 3 nodes, durable writes (Ack::Local)");
    for (writers, updates) in [(1, 2_000), (64, 100_000), (256, 100_000)] {
        let run = Cluster::start()
            .await?
            .run(updates, Load::Writers(writers))
            .await?;
        let label = if writers == 1 {
            "1 sequential writer".to_owned()
        } else {
            format!("{writers} concurrent writers")
        };
        run.print(&format!("throughput, {label}"));
    }
    for rate in [10_000, 20_000] {
        let updates = rate * 5;
        let run = Cluster::start()
            .await?
            .run(updates, Load::Paced(rate))
            .await?;
        run.print(&format!("lag at an offered {rate} updates/s (open loop)"));
    }
    catch_up().await?;
    Ok(())
}

/// How the writers issue updates.
#[derive(Clone, Copy)]
enum Load {
    /// This many tasks, each issuing its next update once its previous one returned.
    Writers(u64),
    /// A fixed rate per second, each update in its own task.
    Paced(u64),
}

struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    nodes: Arc<Vec<Node>>,
}

/// What one run measured.
struct Run {
    updates: u64,
    /// From the first call until the last update returned (durable at A).
    durable_at_a: Duration,
    /// From the first call until both receivers showed the last update.
    on_all: Duration,
    acks: Vec<Duration>,
    lags: Vec<Duration>,
}

impl Cluster {
    /// Three nodes, each trusting and connected to the others.
    async fn start() -> Result<Cluster, Error> {
        let dirs = dirs(3)?;
        let first = start(&dirs, 0, &[]).await?;
        let addr = first.local_addr();
        let second = start(&dirs, 1, &[addr]).await?;
        let third = start(&dirs, 2, &[addr, second.local_addr()]).await?;
        let nodes = vec![first, second, third];
        for node in &nodes {
            while node.peers().await.iter().filter(|p| p.up).count() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(Cluster {
            _dirs: dirs,
            nodes: Arc::new(nodes),
        })
    }

    /// Makes `updates` increments of one counter at node A (`nodes[0]`) under `load`, and
    /// records when each receiver first showed each value.
    async fn run(self, updates: u64, load: Load) -> Result<Run, Error> {
        let watchers: Vec<_> = (1..3).map(|r| watch(&self.nodes, r, updates)).collect();
        let start_at = Instant::now();
        let mut made = match load {
            Load::Writers(writers) => self.writers(updates, writers).await?,
            Load::Paced(rate) => self.paced(updates, rate).await?,
        };
        let durable_at_a = made
            .iter()
            .map(|m| m.returned)
            .max()
            .unwrap_or(start_at)
            .duration_since(start_at);
        made.sort_unstable_by_key(|m| m.counter);
        let mut acks: Vec<Duration> = made.iter().map(|m| m.returned - m.called).collect();
        acks.sort_unstable();

        let mut all_applied = start_at;
        let mut lags = Vec::with_capacity(made.len() * 2);
        for (seen, task) in watchers {
            tokio::time::timeout(Duration::from_secs(60), task).await??;
            let seen = seen.lock().map_err(|_| "a watcher panicked")?;
            all_applied = all_applied.max(seen.last().map_or(start_at, |s| s.1));
            // Update k (its dot's counter) is shown once this receiver's value reaches k.
            let mut i = 0;
            for m in &made {
                while i < seen.len() && seen[i].0 < m.counter {
                    i += 1;
                }
                if let Some((_, at)) = seen.get(i) {
                    lags.push(at.saturating_duration_since(m.called));
                }
            }
        }
        lags.sort_unstable();
        if let Ok(nodes) = Arc::try_unwrap(self.nodes) {
            for node in nodes {
                node.shutdown().await;
            }
        }
        Ok(Run {
            updates,
            durable_at_a,
            on_all: all_applied - start_at,
            acks,
            lags,
        })
    }

    /// `writers` tasks share `updates` updates, each awaiting its own before making the next.
    async fn writers(&self, updates: u64, writers: u64) -> Result<Vec<Made>, Error> {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..writers {
            let (nodes, next) = (self.nodes.clone(), next.clone());
            tasks.spawn(async move {
                let mut made = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < updates {
                    made.push(increment(&nodes[0]).await?);
                }
                Ok::<_, Error>(made)
            });
        }
        let mut made = Vec::with_capacity(updates as usize);
        while let Some(result) = tasks.join_next().await {
            made.extend(result??);
        }
        Ok(made)
    }

    /// Issues `updates` updates at `rate` per second, each in its own task, whether or not the
    /// earlier ones have returned.
    async fn paced(&self, updates: u64, rate: u64) -> Result<Vec<Made>, Error> {
        let began = Instant::now();
        let mut tasks = JoinSet::new();
        let mut made = Vec::with_capacity(updates as usize);
        let mut issued = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while issued < updates {
            tick.tick().await;
            let due = ((began.elapsed().as_secs_f64() * rate as f64) as u64).min(updates);
            while issued < due {
                let nodes = self.nodes.clone();
                tasks.spawn(async move { increment(&nodes[0]).await });
                issued += 1;
            }
            while let Some(result) = tasks.try_join_next() {
                made.push(result??);
            }
        }
        while let Some(result) = tasks.join_next().await {
            made.push(result??);
        }
        Ok(made)
    }
}

async fn increment(node: &Node) -> Result<Made, Error> {
    let called = Instant::now();
    let token = node.update("counter", Op::Inc(1)).await?;
    Ok(Made {
        counter: token.0.counter,
        called,
        returned: Instant::now(),
    })
}

/// When a receiver first showed each counter value: (value, time), values increasing.
type Seen = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Records when receiver `r` first showed each counter value, until it shows `updates`.
///
/// Each change event is followed by one read of the counter, after skipping the events already
/// queued (the read shows their changes too): reading once per event would fall behind the
/// events and measure its own queue rather than replication.
fn watch(nodes: &Arc<Vec<Node>>, r: usize, updates: u64) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let mut events = nodes[r].subscribe();
    let (nodes, seen2) = (nodes.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Changed { key, .. }) if key == "counter" => {
                    while let Ok(_) | Err(TryRecvError::Lagged(_)) = events.try_recv() {}
                    if let Some(Object::GCounter(c)) = nodes[r].get("counter").await {
                        let v = c.value();
                        let now = Instant::now();
                        let Ok(mut seen) = seen2.lock() else { return };
                        if seen.last().is_none_or(|(last, _)| v > *last) {
                            seen.push((v, now));
                        }
                        if v >= updates {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    (seen, task)
}

impl Run {
    fn print(&self, what: &str) {
        let pct = |v: &[Duration], p: f64| {
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{what}: {} updates durable at A in {:.2?} = {:.0}/s; on all 3 after {:.2?} = {:.0}/s; \
             ack p50 {:.2?} p99 {:.2?}; lag p50 {:.2?} p99 {:.2?} max {:.2?}",
            self.updates,
            self.durable_at_a,
            self.updates as f64 / self.durable_at_a.as_secs_f64(),
            self.on_all,
            self.updates as f64 / self.on_all.as_secs_f64(),
            pct(&self.acks, 0.5),
            pct(&self.acks, 0.99),
            pct(&self.lags, 0.5),
            pct(&self.lags, 0.99),
            self.lags.last().copied().unwrap_or_default(),
        );
    }
}

/// Starts the node in `dirs[index]`, trusting every other directory's node, dialing `peers`.
async fn start(
    dirs: &[tempfile::TempDir],
    index: usize,
    peers: &[std::net::SocketAddr],
) -> Result<Node, Error> {
    let mut builder =
        NodeBuilder::new(dirs[index].path()).gossip_interval(Duration::from_millis(200));
    for (j, dir) in dirs.iter().enumerate() {
        if j != index {
            builder = builder.trust_key(Identity::load_or_create(dir.path())?.fingerprint()?);
        }
    }
    for addr in peers {
        builder = builder.peer(*addr);
    }
    Ok(builder.start().await?)
}

fn dirs(n: usize) -> Result<Vec<tempfile::TempDir>, std::io::Error> {
    (0..n).map(|_| tempfile::TempDir::new()).collect()
}

async fn catch_up() -> Result<(), Error> {
    let dirs = dirs(2)?;
    let holder = Arc::new(start(&dirs, 0, &[]).await?);
    // Fill with concurrent writers, so the fill's commits are shared.
    let filling = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..FILL_WRITERS {
        let (holder, next) = (holder.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SET_SIZE as u64 {
                    return Ok::<_, Error>(());
                }
                holder
                    .update("set", Op::Add(format!("element-{i:07}").into()))
                    .await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let filled = filling.elapsed();

    let began = Instant::now();
    let fresh = start(&dirs, 1, &[holder.local_addr()]).await?;
    loop {
        if let Some(Object::Set(s)) = fresh.get("set").await {
            if s.len() == SET_SIZE {
                break;
            }
        }
        if began.elapsed() > Duration::from_secs(60) {
            return Err("the fresh node did not catch up within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = began.elapsed();
    let bytes = fresh.metrics().await.stats.bytes_received;
    println!(
        "catch-up of a fresh node to a {SET_SIZE}-element set: {took:.2?} (start to holding all), \
         {bytes} bytes received (the set was filled by {FILL_WRITERS} writers in {filled:.2?})"
    );
    fresh.shutdown().await;
    if let Ok(holder) = Arc::try_unwrap(holder) {
        holder.shutdown().await;
    }
    Ok(())
}
