//! The feature store the project was born from: five cluster nodes on loopback QUIC, keys on a
//! consistent-hash ring with N = 3 replicas each. A writer updates a user's feature vector (a
//! last-writer-wins register of bytes) while a reader at another replica reads it:
//!
//! 1. with W = 1 and R = 1 (eventually consistent) some reads are stale, and all reads agree
//!    once writes stop;
//! 2. with W = 2 and R = 2 (R + W > N) every read sees the latest acknowledged write;
//! 3. one of the key's replicas is stopped mid-run and restarted: writes go on even at W = 3,
//!    because the next node on the ring stands in for it (a sloppy quorum); when it returns it
//!    gets what it missed, and the stand-in drops its copy (hinted handoff).
//!
//! Prints what it shows and exits 0, or says what failed and exits 1.
//!
//! ```text
//! cargo run --release --example feature_store
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crdt_core::{Hlc, ReplicaId};
use crdt_net::node::{ClusterNode, ClusterNodeBuilder, Fingerprint, Identity};
use crdt_net::{Object, Op};

const NODES: usize = 5;
const KEY: &str = "user:7:embedding";
/// Writes per phase.
const WRITES: u64 = 200;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let started = Instant::now();
    let dirs: Vec<tempfile::TempDir> = (0..NODES)
        .map(|_| tempfile::TempDir::new())
        .collect::<Result<_, _>>()?;
    let keys: Vec<Fingerprint> = dirs
        .iter()
        .map(|d| Identity::load_or_create(d.path())?.fingerprint())
        .collect::<Result<_, _>>()?;
    println!("[1/4] five cluster nodes on loopback QUIC, N = 3, 64 partitions");
    let mut nodes: Vec<Option<ClusterNode>> = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let node = start(
            dir.path(),
            &keys,
            i,
            &addrs,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await?;
        println!("      node {i}: {} at {}", node.id(), node.local_addr());
        addrs.push(node.local_addr());
        nodes.push(Some(node));
    }
    wait_for(
        "every node to see five members",
        Duration::from_secs(20),
        async || {
            for node in nodes.iter().flatten() {
                if node.members().await.map_or(true, |m| m.len() != NODES) {
                    return false;
                }
            }
            true
        },
    )
    .await?;
    let ids: Vec<ReplicaId> = nodes.iter().flatten().map(ClusterNode::id).collect();
    let index = |id: ReplicaId| ids.iter().position(|&x| x == id);
    let (owners, _) = up(&nodes, 0)?.replicas_of(KEY).await?;
    let replicas: Vec<usize> = owners.iter().filter_map(|&id| index(id)).collect();
    let (Some(&first), Some(&reader), Some(&stopped)) =
        (replicas.first(), replicas.get(1), replicas.get(2))
    else {
        return Err("the key has fewer than three replicas".into());
    };
    let writer = (0..NODES)
        .find(|n| !replicas.contains(n))
        .ok_or("every node is a replica")?;
    println!(
        "      {KEY} lives on nodes {replicas:?}; node {writer} writes (forwarding to node {first}), node {reader} reads"
    );

    println!("[2/4] W = 1, R = 1: {WRITES} writes while node {reader} reads its own copy");
    let mut clock = Hlc::new(60_000);
    let phase = race(&nodes, writer, reader, 1, 1, &mut clock, 1).await?;
    println!(
        "      {} of {} reads were stale (older than the latest write acknowledged before the read began)",
        phase.stale, phase.reads
    );
    if phase.stale == 0 {
        return Err(
            "no stale read at W = 1, R = 1: the run did not show eventual consistency".into(),
        );
    }
    let last = phase.last;
    wait_for(
        "every replica to hold the last write",
        Duration::from_secs(10),
        async || {
            for &n in &replicas {
                let Ok(node) = up(&nodes, n) else {
                    return false;
                };
                if version(node.read(KEY, 1).await.ok().flatten()) != Some(last) {
                    return false;
                }
            }
            true
        },
    )
    .await?;
    println!("      after the writes stop, all three replicas return version {last} at R = 1");

    println!(
        "[3/4] W = 2, R = 2: {WRITES} writes, every read must see the latest acknowledged one"
    );
    let phase = race(&nodes, writer, reader, 2, 2, &mut clock, last + 1).await?;
    println!("      {} of {} reads were stale", phase.stale, phase.reads);
    if phase.stale > 0 {
        return Err(format!("{} stale reads at W = 2, R = 2", phase.stale).into());
    }

    println!("[4/4] node {stopped} (a replica of {KEY}) stops; writes go on at W = 3; it restarts");
    if let Some(node) = nodes.get_mut(stopped).and_then(Option::take) {
        node.shutdown().await;
    }
    // Until the others notice the stop, a W = 3 write times out waiting for the stopped node
    // (it is not undone); the writer retries, as an application would.
    let mut next = phase.last + 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut written, mut retries) = (0, 0);
    while written < 50 {
        if Instant::now() > deadline {
            return Err("W = 3 writes did not succeed with one replica down".into());
        }
        let value = Op::Lww(clock.now(wall_ms()), next.to_be_bytes().to_vec());
        match up(&nodes, writer)?.write(KEY, value, 3).await {
            Ok(_) => written += 1,
            Err(_) => retries += 1,
        }
        next += 1;
    }
    let last = next - 1;
    let (_, targets) = up(&nodes, writer)?.replicas_of(KEY).await?;
    let targets: Vec<usize> = targets.iter().filter_map(|&id| index(id)).collect();
    let fallback = *targets
        .iter()
        .find(|n| !replicas.contains(n))
        .ok_or("no fallback took the stopped replica's place")?;
    if !up(&nodes, fallback)?.holds(KEY).await? {
        return Err(format!("the fallback node {fallback} does not hold the key").into());
    }
    println!(
        "      50 writes held by 3 nodes ({retries} timed out before the stop was noticed, retried); targets now {targets:?}: node {fallback} stands in"
    );
    let dir = dirs.get(stopped).ok_or("no dir")?;
    let addr = *addrs.get(stopped).ok_or("no addr")?;
    let earlier: Vec<SocketAddr> = addrs.iter().take(stopped).copied().collect();
    let restarted = start(dir.path(), &keys, stopped, &earlier, addr).await?;
    if let Some(slot) = nodes.get_mut(stopped) {
        *slot = Some(restarted);
    }
    let took = wait_for(
        "the restarted replica to hold the writes it missed",
        Duration::from_secs(30),
        async || {
            let Ok(node) = up(&nodes, stopped) else {
                return false;
            };
            version(node.read(KEY, 1).await.ok().flatten()) == Some(last)
        },
    )
    .await?;
    println!(
        "      node {stopped} restarted and holds version {last} after {} ms",
        took.as_millis()
    );
    let took = wait_for(
        "the fallback to hand the key over and drop it",
        Duration::from_secs(30),
        async || match up(&nodes, fallback) {
            Ok(node) => !node.holds(KEY).await.unwrap_or(true),
            Err(_) => false,
        },
    )
    .await?;
    println!(
        "      node {fallback} dropped its copy {} ms later, once all three replicas held it",
        took.as_millis()
    );

    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What one phase of writes and reads saw.
struct Phase {
    reads: u64,
    stale: u64,
    /// The last version written.
    last: u64,
}

/// Writes versions `from..from + WRITES` at `writer` with level `w` while `reader` reads at
/// level `r`; a read is stale if it returns a version older than the latest one acknowledged
/// before it began.
async fn race(
    nodes: &[Option<ClusterNode>],
    writer: usize,
    reader: usize,
    w: usize,
    r: usize,
    clock: &mut Hlc,
    from: u64,
) -> Result<Phase, Error> {
    let acknowledged = Arc::new(AtomicU64::new(from.saturating_sub(1)));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_node = up(nodes, writer)?;
    let reader_node = up(nodes, reader)?;
    let reads = async {
        let (mut reads, mut stale) = (0, 0);
        while !done.load(Ordering::Relaxed) {
            let floor = acknowledged.load(Ordering::Acquire);
            let seen = version(reader_node.read(KEY, r).await?).unwrap_or(0);
            reads += 1;
            if seen < floor {
                stale += 1;
            }
        }
        Ok::<_, crdt_net::node::NodeError>((reads, stale))
    };
    let writes = async {
        for version in from..from + WRITES {
            let value = Op::Lww(clock.now(wall_ms()), version.to_be_bytes().to_vec());
            let result = writer_node.write(KEY, value, w).await;
            if result.is_ok() {
                acknowledged.store(version, Ordering::Release);
            }
            if let Err(e) = result {
                done.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        done.store(true, Ordering::Relaxed);
        Ok(())
    };
    let (reads, writes) = tokio::join!(reads, writes);
    writes?;
    let (reads, stale) = reads?;
    Ok(Phase {
        reads,
        stale,
        last: from + WRITES - 1,
    })
}

/// Starts node `i`, trusting the others and dialing the nodes at `peers`.
async fn start(
    dir: &Path,
    keys: &[Fingerprint],
    i: usize,
    peers: &[SocketAddr],
    listen: SocketAddr,
) -> Result<ClusterNode, Error> {
    let mut builder = ClusterNodeBuilder::new(dir)
        .listen(listen)
        .gossip_interval(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(2));
    for (j, key) in keys.iter().enumerate() {
        if i != j {
            builder = builder.trust_key(*key);
        }
    }
    for &peer in peers {
        builder = builder.peer(peer);
    }
    Ok(builder.start().await?)
}

fn up(nodes: &[Option<ClusterNode>], i: usize) -> Result<&ClusterNode, Error> {
    nodes
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| format!("node {i} is not running").into())
}

/// The version a feature vector holds (its first 8 bytes).
fn version(object: Option<Object>) -> Option<u64> {
    let Some(Object::Lww(register)) = object else {
        return None;
    };
    let bytes: [u8; 8] = register.get()?.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls `done` until it holds, or fails after `limit` naming what it waited for.
async fn wait_for(
    what: &str,
    limit: Duration,
    done: impl AsyncFn() -> bool,
) -> Result<Duration, Error> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done().await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("timed out after {limit:?} waiting for {what}").into())
}
