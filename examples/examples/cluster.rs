//! Five nodes on loopback QUIC in one process: concurrent edits of every type while a partition
//! splits them 2 | 3, then a heal. Prints progress, the time to converge and the bytes sent,
//! checks that all five hold identical state, and exits 0.
//!
//! ```text
//! cargo run --release --example cluster
//! ```
//!
//! Set `RUST_LOG=crdt_net=info` to watch connections come and go.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crdt_core::{Hlc, ReplicaId};
use crdt_net::node::{Fingerprint, Identity, Node, NodeBuilder, NodeError};
use crdt_net::{Object, Op};

const NODES: usize = 5;
const EDITS_PER_NODE: usize = 200;

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

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let dirs: Vec<tempfile::TempDir> = (0..NODES)
        .map(|_| tempfile::TempDir::new())
        .collect::<Result<_, _>>()?;
    // Each node pins the others' keys.
    let keys: Vec<Fingerprint> = dirs
        .iter()
        .map(|d| Identity::load_or_create(d.path())?.fingerprint())
        .collect::<Result<_, _>>()?;
    let ids: Vec<ReplicaId> = keys.iter().map(Fingerprint::id).collect();
    println!("[1/5] starting {NODES} nodes on loopback QUIC, each trusting the other four");
    let mut nodes: Vec<Node> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut builder = NodeBuilder::new(dir.path()).gossip_interval(Duration::from_millis(200));
        for (j, key) in keys.iter().enumerate() {
            if i != j {
                builder = builder.trust_key(*key);
            }
        }
        for earlier in &nodes {
            builder = builder.peer(earlier.local_addr());
        }
        let node = builder.start().await?;
        println!("      node {i}: {} at {}", node.id(), node.local_addr());
        nodes.push(node);
    }
    wait_for(
        "every node to see the other four",
        Duration::from_secs(10),
        async || {
            let mut all = true;
            for node in &nodes {
                all &= node.peers().await.iter().filter(|p| p.up).count() == NODES - 1;
            }
            all
        },
    )
    .await?;

    println!("[2/5] partition: nodes 0-1 | nodes 2-4");
    let (left, right) = ids.split_at(2);
    for (i, node) in nodes.iter().enumerate() {
        node.isolate_from(if i < 2 { right } else { left });
    }

    println!("[3/5] {EDITS_PER_NODE} concurrent edits per node, on every type");
    let mut clocks: Vec<Hlc> = (0..NODES).map(|_| Hlc::new(60_000)).collect();
    for round in 0..EDITS_PER_NODE {
        for (i, node) in nodes.iter().enumerate() {
            let wall = started.elapsed().as_millis() as u64;
            for (key, op) in edits(i, round, clocks[i].now(wall)) {
                node.update(key, op).await?;
            }
        }
    }
    let sides_differ = world(&nodes[0])? != world(&nodes[4])?;
    println!("      the two sides now disagree: {sides_differ}");

    println!("[4/5] heal");
    let bytes_before = total_bytes(&nodes).await;
    let healed = Instant::now();
    for node in &nodes {
        node.isolate_from(&[]);
    }
    wait_for(
        "all five to hold the same state",
        Duration::from_secs(20),
        async || {
            let Ok(first) = world(&nodes[0]) else {
                return false;
            };
            let mut same = true;
            for node in &nodes[1..] {
                same &= world(node).is_ok_and(|w| w == first);
            }
            same
        },
    )
    .await?;
    let converge = healed.elapsed();
    let healing_bytes = total_bytes(&nodes).await - bytes_before;

    println!(
        "[5/5] converged {converge:.2?} after the heal; {healing_bytes} bytes sent while healing"
    );
    let state = world(&nodes[0])?;
    for (key, value) in &state {
        if !key.starts_with("doc") {
            println!("      {key:>8} = {}", truncate(&value.to_string(), 70));
        }
    }
    let total = total_bytes(&nodes).await;
    println!(
        "all {NODES} nodes identical ({} objects); {total} bytes sent in all; {:.1?} end to end",
        state.len(),
        started.elapsed()
    );
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

/// The edits node `i` makes in round `round`: one of each type.
fn edits(i: usize, round: usize, now: crdt_core::HlcTimestamp) -> Vec<(&'static str, Op)> {
    vec![
        ("visits", Op::Inc(1)),
        (
            "stock",
            if i % 2 == 0 {
                Op::PnInc(3)
            } else {
                Op::PnDec(1)
            },
        ),
        ("tags", Op::Add(format!("n{i}-{}", round % 20).into())),
        (
            "tags",
            Op::Remove(format!("n{}-{}", (i + 1) % NODES, round % 20).into()),
        ),
        (
            "title",
            Op::Lww(now, format!("title by node {i} at round {round}").into()),
        ),
        (
            "status",
            Op::Mv(format!("node {i} says {}", round % 3).into()),
        ),
        (
            "doc",
            Op::Update(
                format!("section-{}", round % 4).into(),
                Box::new(Op::Inc(1)),
            ),
        ),
    ]
}

/// A copy of every object at `node`, to compare and print whole states.
fn world(node: &Node) -> Result<BTreeMap<String, Object>, NodeError> {
    let mut world = BTreeMap::new();
    node.for_each(|key, object| {
        world.insert(key.to_owned(), object.clone());
    })?;
    Ok(world)
}

async fn total_bytes(nodes: &[Node]) -> u64 {
    let mut total = 0;
    for node in nodes {
        total += node.metrics().await.stats.bytes_sent;
    }
    total
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("gave up waiting for {what} after {limit:?}"))
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}
