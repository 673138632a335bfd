//! What a read of one element of a large set costs at a running node (real store in a
//! temporary directory, QUIC endpoint on loopback, no peers):
//!
//! 1. `contains` on a 100,000-element set through the async [`Node::get`], which goes through
//!    the owner thread's queue and copies the whole set, against the synchronous
//!    [`SetHandle::contains_now`](crdt_net::node::SetHandle::contains_now), which reads under
//!    the replica's read lock and copies nothing.
//! 2. How long such a read waits while a writer keeps the owner busy: the owner holds the
//!    write lock for each whole turn (apply and commit, an fsync), so a read that arrives
//!    during a commit waits for its end. Reported as percentiles of the read's latency.
//!
//! ```text
//! cargo bench -p crdt-net --bench reads
//! ```

use std::time::{Duration, Instant};

use crdt_core::Crdt;
use crdt_net::node::{Node, NodeBuilder};
use crdt_net::value::encode;
use crdt_net::{Object, Op};

const KEY: &str = "set";
const ELEMENTS: u64 = 100_000;
/// Elements added per update while filling the set.
const BATCH: u64 = 1_000;
/// Reads through `get` (each copies the set) and through `contains_now`.
const SLOW_READS: u32 = 200;
const FAST_READS: u32 = 200_000;
/// Reads timed while a writer commits.
const CONTENDED_READS: usize = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let node = NodeBuilder::new(dir.path()).mdns(false).start().await?;
    fill(&node).await?;
    let set = node.set::<u64>(KEY);
    assert_eq!(set.len_now()?, ELEMENTS as usize);
    let probe = ELEMENTS / 2;

    println!("\n## contains on a set of {ELEMENTS} elements\n");
    println!("| read | reads | per read |");
    println!("| --- | ---: | ---: |");
    let started = Instant::now();
    for _ in 0..SLOW_READS {
        let found =
            matches!(node.get(KEY).await, Some(Object::Set(s)) if s.contains(&encode(&probe)));
        assert!(found);
    }
    let slow = started.elapsed() / SLOW_READS;
    println!("| `node.get(key).await` + `contains` | {SLOW_READS} | {slow:?} |");
    let started = Instant::now();
    for _ in 0..FAST_READS {
        assert!(set.contains_now(&probe)?);
    }
    let fast = started.elapsed() / FAST_READS;
    println!("| `set.contains_now(&x)` | {FAST_READS} | {fast:?} |");
    println!(
        "\n`contains_now` is {:.0}x faster.",
        slow.as_secs_f64() / fast.as_secs_f64()
    );

    println!(
        "\n## contains_now latency while another task writes (one add per commit, each an fsync)\n"
    );
    let writer = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let node = std::sync::Arc::new(node);
        let writing = node.clone();
        let task = tokio::spawn(async move {
            let mut commits = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                writing
                    .update("other", Op::Add(encode(&commits)))
                    .await
                    .map_err(|e| e.to_string())?;
                commits += 1;
            }
            Ok::<u64, String>(commits)
        });
        (node, stop, task)
    };
    let (node, stop, task) = writer;
    // Reads on a blocking thread, as an application's UI thread would make them.
    let reader = node.clone();
    let (latencies, took) = tokio::task::spawn_blocking(move || {
        let set = reader.set::<u64>(KEY);
        let mut latencies = Vec::with_capacity(CONTENDED_READS);
        let started = Instant::now();
        for _ in 0..CONTENDED_READS {
            let at = Instant::now();
            let found = set.contains_now(&probe).unwrap_or(false);
            latencies.push(at.elapsed());
            assert!(found);
            // Spread the reads over many commits.
            std::thread::sleep(Duration::from_micros(50));
        }
        (latencies, started.elapsed())
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let commits = task.await??;
    let mut sorted = latencies;
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    println!("| reads | commits meanwhile | p50 | p99 | p99.9 | max |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {commits} in {took:.1?} | {:?} | {:?} | {:?} | {:?} |",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    if let Ok(node) = std::sync::Arc::try_unwrap(node) {
        node.shutdown().await;
    }
    Ok(())
}

/// Adds `ELEMENTS` elements to the set at `KEY`, `BATCH` per update.
async fn fill(node: &Node) -> Result<(), Box<dyn std::error::Error>> {
    let me = node.replica_id();
    for start in (0..ELEMENTS).step_by(BATCH as usize) {
        node.update_with(KEY, move |object| {
            if *object == Object::Empty {
                *object = Object::Set(Default::default());
            }
            let Object::Set(set) = object else {
                return Err("not a set");
            };
            let mut delta = crdt_core::OrSet::new();
            for i in start..start + BATCH {
                delta.merge(&set.add(me, encode(&i)));
            }
            Ok(Object::Set(delta))
        })
        .await?;
    }
    Ok(())
}
