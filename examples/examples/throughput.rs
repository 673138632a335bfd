//! End-to-end replication over QUIC on loopback, two figures:
//!
//! 1. Throughput: one node makes small updates as fast as it can while two peers apply them;
//!    updates per second applied on all three, and the replication lag (median, p99).
//! 2. Catch-up: a fresh node joins a node holding a 100,000-element set; time until it holds
//!    every element.
//!
//! ```text
//! cargo run --release --example throughput
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crdt_net::node::{Identity, Node, NodeBuilder};
use crdt_net::{Event, Object, Op};

const UPDATES: u64 = 200_000;
const SET_SIZE: usize = 100_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("## Throughput, 3 nodes on loopback QUIC (one writer, two receivers)\n");
    println!(
        "| offered load | updates | applied on all 3 after | updates/s | lag p50 | lag p99 | max |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    throughput(UPDATES, None).await?;
    throughput(100_000, Some(50_000)).await?;
    catch_up().await?;
    Ok(())
}

/// Starts the node in `dirs[index]`, trusting every other directory's node, dialing `peers`.
async fn start(
    dirs: &[tempfile::TempDir],
    index: usize,
    peers: &[std::net::SocketAddr],
) -> Result<Node, Box<dyn std::error::Error>> {
    let mut builder =
        NodeBuilder::new(dirs[index].path()).gossip_interval(Duration::from_millis(200));
    for (j, dir) in dirs.iter().enumerate() {
        if j != index {
            builder = builder.trust(Identity::load_or_create(dir.path())?.id());
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

/// Makes `updates` increments, as fast as possible or at `rate` per second.
async fn throughput(updates: u64, rate: Option<u64>) -> Result<(), Box<dyn std::error::Error>> {
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

    // Each receiver records when it first saw each counter value.
    let mut watchers = Vec::new();
    let nodes = Arc::new(nodes);
    for r in 1..3 {
        let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let mut events = nodes[r].subscribe();
        let (nodes2, seen2) = (nodes.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::Changed { key, .. }) if key == "counter" => {
                        if let Some(Object::GCounter(c)) = nodes2[r].get("counter").await {
                            let v = c.value();
                            let mut seen = seen2.lock().unwrap();
                            if seen.last().is_none_or(|(last, _)| v > *last) {
                                seen.push((v, Instant::now()));
                            }
                            if v >= updates {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        watchers.push((seen, task));
    }

    let start_at = Instant::now();
    let mut made = Vec::with_capacity(updates as usize);
    for i in 0..updates {
        nodes[0].update("counter", Op::Inc(1)).await?;
        made.push(Instant::now());
        // Let the driver and the network run now and then, as an application would.
        if made.len() % 256 == 0 {
            match rate {
                Some(rate) => {
                    let due = start_at + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                None => tokio::task::yield_now().await,
            }
        }
    }
    let mut all_applied = start_at;
    let mut lags = Vec::new();
    for (seen, task) in watchers {
        tokio::time::timeout(Duration::from_secs(60), task).await??;
        let seen = seen.lock().unwrap();
        all_applied = all_applied.max(seen.last().map_or(start_at, |s| s.1));
        // Lag of update i: the first time this receiver's value reached i, minus when it was made.
        let mut k = 0;
        for (i, made_at) in made.iter().enumerate() {
            while k < seen.len() && seen[k].0 < i as u64 + 1 {
                k += 1;
            }
            if let Some((_, at)) = seen.get(k) {
                lags.push(at.saturating_duration_since(*made_at));
            }
        }
    }
    lags.sort_unstable();
    let elapsed = all_applied - start_at;
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    let load = rate.map_or("as fast as possible".to_owned(), |r| {
        format!("{r} updates/s")
    });
    println!(
        "| {load} | {updates} | {elapsed:.2?} | {:.0} | {:.2?} | {:.2?} | {:.2?} |",
        updates as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lags.last().copied().unwrap_or_default()
    );
    if let Ok(nodes) = Arc::try_unwrap(nodes) {
        for node in nodes {
            node.shutdown().await;
        }
    }
    Ok(())
}

async fn catch_up() -> Result<(), Box<dyn std::error::Error>> {
    let dirs = dirs(2)?;
    let holder = start(&dirs, 0, &[]).await?;
    for i in 0..SET_SIZE {
        holder
            .update("set", Op::Add(format!("element-{i:07}")))
            .await?;
    }
    let began = Instant::now();
    let addr = holder.local_addr();
    let fresh = start(&dirs, 1, &[addr]).await?;
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
    println!("\n## Catch-up of a fresh node\n");
    println!("| elements | time (start to holding all) | bytes received |");
    println!("| ---: | ---: | ---: |");
    println!("| {SET_SIZE} | {took:.2?} | {bytes} |");
    fresh.shutdown().await;
    holder.shutdown().await;
    Ok(())
}
