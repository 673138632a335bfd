//! The on-disk store's durability costs, measured on a real file ([`RedbStore`] in a temporary
//! directory):
//!
//! 1. Bytes written per small update (one `Op::Add` of a new short element, each committed
//!    alone) on sets of 1k, 10k and 100k elements, and with 64 updates per commit (group
//!    commit); the same for a counter's increments: the store's own record bytes
//!    ([`RedbStore::bytes_written`]), the bytes the process handed to `write(2)` (`wchar` in
//!    `/proc/self/io`), the bytes it caused to be sent to the storage layer (`write_bytes`,
//!    the engine's pages included), and the file's growth; with commits per second (each commit
//!    is an fsync).
//! 2. Restart: open (load) plus [`Replica::restore`] of a store holding the set, compacted
//!    or with as many delta records pending as the store keeps before it compacts.
//!
//! ```text
//! cargo bench -p crdt-net --bench store
//! ```
//!
//! Prints one table per figure. The file system's page cache is warm (the benchmark does not
//! drop it), so the restart times are those of a process restarted on a running machine.
//!
//! A commit's time is mostly its fsync, and an fsync on a shared disk also waits for whatever
//! other processes have written: the last column counts the bytes written to the whole device
//! (every process) while the row ran, to tell a busy disk from a slow store.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crdt_core::ReplicaId;
use crdt_net::store::RedbStore;
use crdt_net::{Config, Object, Op, Replica};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const UPDATES: usize = 1_000;
const KEY: &str = "set";
/// Updates per commit while filling a store's delta records up to its compaction threshold.
const BATCH: usize = 500;
/// Updates per commit in the group-commit row (as many as 64 concurrent writers give a node).
const GROUP: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    println!(
        "\n## Bytes written per small update (one add of a new element; for the counter, one increment)\n"
    );
    println!(
        "| object | updates | per commit | record bytes/update | write(2) bytes/update | OS write_bytes/update | file growth/update | commits/s | commit p50 | commit p99 | device writes, all processes |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut stores = Vec::new();
    let largest = SIZES[SIZES.len() - 1];
    let rows = SIZES.iter().map(|&size| (Some(size), 1)).chain([
        (Some(largest), GROUP),
        (None, 1),
        (None, GROUP),
    ]);
    for (set, per_commit) in rows {
        let name = set.map_or("counter".to_owned(), |size| format!("set of {size}"));
        let path = dir.path().join(format!("store-{name}-{per_commit}.redb"));
        let row = small_updates(&path, set, per_commit)?;
        println!(
            "| {name} | {UPDATES} | {per_commit} | {:.1} | {:.0} | {} | {:.0} | {:.0} | {:.2?} | {:.2?} | {} |",
            row.record_bytes,
            row.wchar,
            row.write_bytes
                .map_or("n/a".to_owned(), |b| format!("{b:.0}")),
            row.file_growth,
            row.commits_per_second,
            row.commit_p50,
            row.commit_p99,
            row.device,
        );
        if let (Some(size), 1) = (set, per_commit) {
            stores.push((size, path));
        }
    }

    println!("\n## Restart: open (load) and restore a store holding the set\n");
    println!("| elements | store state | file size | open (load) | restore | total |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: |");
    for (size, path) in &stores {
        restart(path, *size, &format!("compacted + {UPDATES} deltas"))?;
    }
    // The same set with no deltas pending: the compacted record alone.
    let path = dir.path().join("store-compacted.redb");
    filled(&path, largest, 0)?;
    restart(&path, largest, "compacted")?;
    // The most deltas a load merges: as many as the store keeps before it compacts the key.
    let probe = dir.path().join("store-probe.redb");
    let (most, compaction) = filled(&probe, largest, usize::MAX)?;
    let path = dir.path().join("store-most-deltas.redb");
    filled(&path, largest, most)?;
    restart(
        &path,
        largest,
        &format!("compacted + {most} deltas (the most before compaction)"),
    )?;
    if let Some((took, bytes, file)) = compaction {
        println!(
            "\nThe commit that compacted the {largest}-element set (with {BATCH} new deltas) wrote \
             {:.2} MB of records in {took:.2?}; the file is {:.1} MB after it.",
            bytes as f64 / 1e6,
            file as f64 / 1e6
        );
    }
    Ok(())
}

/// Writes a set of `size` elements to a new store at `path`, commits it (compacted), then adds
/// `deltas` more elements, [`BATCH`] per commit, stopping early when a commit compacts the
/// key. Returns how many were added before the commit that compacted (or all of them), and
/// that commit's time and record bytes and the file's size after it.
#[allow(clippy::type_complexity)]
fn filled(
    path: &Path,
    size: usize,
    deltas: usize,
) -> Result<(usize, Option<(Duration, u64, u64)>), Box<dyn std::error::Error>> {
    let (mut store, durable) = RedbStore::open(path)?;
    let mut replica = Replica::restore(config(), durable);
    fill(&mut replica, size);
    replica.persist(&mut store)?;
    drain(&mut replica);
    let compacted = store.bytes_written();
    let mut added = 0;
    while added < deltas {
        let before = store.bytes_written();
        let batch = BATCH.min(deltas - added);
        for j in added..added + batch {
            replica.update(KEY, &Op::Add(format!("more-{j:07}").into()))?;
        }
        let at = Instant::now();
        replica.persist(&mut store)?;
        let took = at.elapsed();
        drain(&mut replica);
        // A commit that rewrote the object whole wrote about as much as the first one.
        let wrote = store.bytes_written() - before;
        if wrote > compacted / 2 {
            let file = std::fs::metadata(path)?.len();
            return Ok((added, Some((took, wrote, file))));
        }
        added += batch;
    }
    Ok((added, None))
}

fn config() -> Config {
    Config::new(ReplicaId::new(0x5eed_0000_0000_0001))
}

fn fill(replica: &mut Replica, size: usize) {
    for i in 0..size {
        replica
            .update(KEY, &Op::Add(format!("element-{i:07}").into()))
            .expect("a set");
    }
}

/// Drops what the replica holds back for a driver (there are no peers).
fn drain(replica: &mut Replica) {
    while replica.poll_transmit().is_some() {}
    while replica.poll_event().is_some() {}
}

struct Row {
    record_bytes: f64,
    wchar: f64,
    write_bytes: Option<f64>,
    file_growth: f64,
    commits_per_second: f64,
    commit_p50: Duration,
    commit_p99: Duration,
    /// Bytes and flushes of the whole device during the updates.
    device: String,
}

/// Fills a set of `set` elements (or, with `None`, starts a counter), commits it, then makes
/// [`UPDATES`] small updates (an add of a new element, or an increment), committing after every
/// `per_commit` of them.
fn small_updates(
    path: &Path,
    set: Option<usize>,
    per_commit: usize,
) -> Result<Row, Box<dyn std::error::Error>> {
    let (mut store, durable) = RedbStore::open(path)?;
    let mut replica = Replica::restore(config(), durable);
    match set {
        Some(size) => fill(&mut replica, size),
        None => drop(replica.update(KEY, &Op::Inc(1))?),
    }
    replica.persist(&mut store)?;
    drain(&mut replica);

    let records_before = store.bytes_written();
    let device_before = DiskStats::read(path);
    let io_before = ProcIo::read();
    let file_before = std::fs::metadata(path)?.len();
    let mut commits = Vec::with_capacity(UPDATES);
    let began = Instant::now();
    for j in 0..UPDATES {
        let op = match set {
            Some(_) => Op::Add(format!("new-{j:04}").into()),
            None => Op::Inc(1),
        };
        replica.update(KEY, &op)?;
        if (j + 1) % per_commit == 0 || j + 1 == UPDATES {
            let at = Instant::now();
            replica.persist(&mut store)?;
            commits.push(at.elapsed());
            drain(&mut replica);
        }
    }
    let elapsed = began.elapsed();
    let io_after = ProcIo::read();
    let device = device_writes(device_before, DiskStats::read(path));
    let file_after = std::fs::metadata(path)?.len();
    let records = store.bytes_written() - records_before;
    match (set, replica.get(KEY)) {
        (Some(size), Some(Object::Set(s))) => assert_eq!(s.len(), size + UPDATES),
        (None, Some(Object::GCounter(c))) => assert_eq!(c.value(), 1 + UPDATES as u64),
        (_, other) => panic!("unexpected object {other:?}"),
    }

    commits.sort_unstable();
    let per = |bytes: u64| bytes as f64 / UPDATES as f64;
    Ok(Row {
        record_bytes: per(records),
        wchar: per(io_after.wchar.saturating_sub(io_before.wchar)),
        write_bytes: match (io_before.write_bytes, io_after.write_bytes) {
            (Some(b), Some(a)) => Some(per(a.saturating_sub(b))),
            _ => None,
        },
        file_growth: per(file_after.saturating_sub(file_before)),
        commits_per_second: commits.len() as f64 / elapsed.as_secs_f64(),
        commit_p50: commits[commits.len() / 2],
        commit_p99: commits[commits.len() * 99 / 100],
        device,
    })
}

/// Times opening the store at `path` (which reads everything) and restoring a replica from it.
fn restart(path: &Path, size: usize, state: &str) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::fs::metadata(path)?.len();
    let began = Instant::now();
    let (store, durable) = RedbStore::open(path)?;
    let opened = began.elapsed();
    let replica = Replica::restore(config(), durable);
    let total = began.elapsed();
    match replica.get(KEY) {
        Some(Object::Set(set)) => assert!(set.len() >= size),
        other => panic!("expected a set, found {other:?}"),
    }
    println!(
        "| {size} | {state} | {:.2} MB | {opened:.2?} | {:.2?} | {total:.2?} |",
        file as f64 / 1e6,
        total - opened,
    );
    drop(store);
    Ok(())
}

/// Writes to the block device holding a directory, by every process (`/proc/diskstats`).
struct DiskStats {
    sectors_written: u64,
    flushes: u64,
}

impl DiskStats {
    fn read(dir: &Path) -> Option<DiskStats> {
        let dev = std::fs::metadata(dir).ok()?.dev();
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let text = std::fs::read_to_string("/proc/diskstats").ok()?;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
            if number(0)? != major || number(1)? != minor {
                return None;
            }
            Some(DiskStats {
                sectors_written: number(9)?,
                flushes: number(18).unwrap_or(0),
            })
        })
    }
}

/// What the whole device wrote between two readings, for the table.
fn device_writes(before: Option<DiskStats>, after: Option<DiskStats>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.1} MB, {} flushes",
            a.sectors_written.saturating_sub(b.sectors_written) as f64 * 512.0 / 1e6,
            a.flushes.saturating_sub(b.flushes)
        ),
        _ => "n/a".into(),
    }
}

/// The process's I/O counters (`/proc/self/io`): `wchar` is what it passed to write calls,
/// `write_bytes` what it caused to be sent to the storage layer (absent without task I/O
/// accounting).
struct ProcIo {
    wchar: u64,
    write_bytes: Option<u64>,
}

impl ProcIo {
    fn read() -> ProcIo {
        let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        ProcIo {
            wchar: field("wchar").unwrap_or(0),
            write_bytes: field("write_bytes"),
        }
    }
}
