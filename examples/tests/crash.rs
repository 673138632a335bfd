//! Crash tests with real `crdt-node` processes: a node killed with SIGKILL while writes stream
//! into it, and restarted on the same data directory, keeps every write it acknowledged, and
//! what it writes after each restart still reaches its peers (no dot is reused); a node sent
//! SIGTERM shuts down cleanly and keeps everything.
//!
//! The kill schedule is seeded: the seed is printed, `CRASH_SEED` replays it (the schedule,
//! not the processes' timing) and `CRASH_KILLS` sets the number of kills (default 20).

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{env_u64, is_ok, parse_set, report, trusting_group, LoggedProcess, Rng, Running};

/// The set the crash test writes to.
const KEY: &str = "crash";
/// Updates written ahead of their `ok`, so a kill finds writes in flight.
const WINDOW: usize = 8;
/// The longest stretch of writing between a restart and the next kill.
const MAX_DELAY_MS: u64 = 300;
/// How long any one answer from a node may take.
const ANSWER: Duration = Duration::from_secs(10);
/// How long writes may take to reach the other nodes.
const SPREAD: Duration = Duration::from_secs(20);

/// A `crdt-node` process that can be killed and restarted on the same data directory, its
/// stderr appended to a log file that failures quote.
struct Node {
    process: LoggedProcess,
    dir: String,
    peers: Vec<String>,
    /// Its address once started.
    addr: String,
}

impl Node {
    fn new(name: &'static str, root: &Path, peers: Vec<String>) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Node {
            process: LoggedProcess::new(name.to_owned(), root.join(format!("{name}.log")), ANSWER),
            dir: dir.to_str().unwrap().to_owned(),
            peers,
            addr: String::new(),
        }
    }

    /// Starts the process and waits (bounded) for its banner; returns its address.
    fn start(&mut self) -> String {
        let log = self.process.start_log();
        let mut args = vec!["run", "--listen", "127.0.0.1:0", "--data-dir", &self.dir];
        for peer in &self.peers {
            args.extend(["--peer", peer.as_str()]);
        }
        args.extend(["--gossip-ms", "100"]);
        let banner = self.process.started(Running::start_logged(&args, log));
        self.addr = banner.rsplit(' ').next().unwrap().to_owned();
        self.addr.clone()
    }

    /// The elements `e<i>` of the set at `key`, as numbers. Only for a node with no writes
    /// in flight: the next prompt answer must be this one.
    fn get_set(&mut self, key: &str) -> BTreeSet<u64> {
        self.send(&format!("get {key} --all"));
        let answer = self.line(|l| !l.starts_with('~'));
        match parse_set(key, &answer) {
            Some(set) => set,
            None => self.fail(&format!("unexpected answer to `get {key}`: {answer:?}")),
        }
    }

    fn quit(&mut self) {
        if let Some(running) = self.process.running.take() {
            running.quit();
        }
    }
}

common::deref_to_process!(Node);

/// Streams `add KEY e<i>` into a node, a few ahead of their acknowledgements.
#[derive(Default)]
struct Writer {
    /// The next element to write (so also the number of writes sent).
    next: u64,
    /// Sent, not yet answered, oldest first.
    pending: VecDeque<u64>,
    acked: BTreeSet<u64>,
}

impl Writer {
    /// Takes one output line of the writing node; panics on anything but `ok` or an event.
    fn take(&mut self, node: &Node, line: &str) {
        if line.starts_with('~') {
            return;
        }
        if !is_ok(line) {
            node.fail(&format!("unexpected answer to a write: {line:?}"));
        }
        match self.pending.pop_front() {
            Some(i) => {
                self.acked.insert(i);
            }
            None => node.fail(&format!("{line:?} with no write in flight")),
        }
    }

    /// Writes for `time`, keeping [`WINDOW`] writes in flight; returns with writes in flight.
    fn write_for(&mut self, node: &mut Node, time: Duration) {
        let end = Instant::now() + time;
        loop {
            while self.pending.len() < WINDOW {
                node.send(&format!("add {KEY} e{}", self.next));
                self.pending.push_back(self.next);
                self.next += 1;
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return;
            };
            match node.next_line(left) {
                Some(line) => self.take(node, &line),
                None => return,
            }
        }
    }

    /// Waits (bounded) for the answers to every write in flight.
    fn drain(&mut self, node: &mut Node) {
        let deadline = Instant::now() + ANSWER;
        while !self.pending.is_empty() {
            let line = deadline
                .checked_duration_since(Instant::now())
                .and_then(|left| node.next_line(left));
            match line {
                Some(line) => self.take(node, &line),
                None => node.fail(&format!(
                    "{} writes unanswered after {ANSWER:?}",
                    self.pending.len()
                )),
            }
        }
    }

    /// The node was killed: its unread lines still acknowledge writes it finished; the rest
    /// in flight have an unknown outcome.
    fn killed(&mut self, node: &Node, unread: Vec<String>) -> usize {
        for line in unread {
            self.take(node, &line);
        }
        let unknown = self.pending.len();
        self.pending.clear();
        unknown
    }
}

/// Polls `get KEY` at each node until every one holds `want`, within `limit`; returns what
/// each held last.
fn wait_until_all_hold(
    nodes: &mut [&mut Node],
    want: &BTreeSet<u64>,
    exact: bool,
    limit: Duration,
) -> (bool, Vec<BTreeSet<u64>>) {
    let deadline = Instant::now() + limit;
    loop {
        let sets: Vec<BTreeSet<u64>> = nodes.iter_mut().map(|n| n.get_set(KEY)).collect();
        let done = sets.iter().all(|s| {
            if exact {
                s == want
            } else {
                s.is_superset(want)
            }
        });
        if done || Instant::now() >= deadline {
            return (done, sets);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `elements` grouped by the epoch (restart) that wrote them, for failure messages.
fn by_epoch(elements: &BTreeSet<u64>, epochs: &[u64]) -> String {
    let mut out = Vec::new();
    for (epoch, start) in epochs.iter().enumerate() {
        let end = epochs.get(epoch + 1).copied().unwrap_or(u64::MAX);
        let here: Vec<u64> = elements.range(start..&end).copied().collect();
        if !here.is_empty() {
            let shown: Vec<String> = here.iter().take(10).map(|i| format!("e{i}")).collect();
            out.push(format!(
                "epoch {epoch} (from e{start}): {} missing, e.g. {}",
                here.len(),
                shown.join(" ")
            ));
        }
    }
    out.join("; ")
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let started = Instant::now();
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let kills = env_u64("CRASH_KILLS").unwrap_or(20);
    println!("crash seed {seed} (CRASH_SEED={seed} replays the schedule), {kills} kills");
    let mut rng = Rng(seed);

    let root = tempfile::TempDir::new().unwrap();
    let mut a = Node::new("a", root.path(), vec![]);
    let mut b = Node::new("b", root.path(), vec![]);
    let mut c = Node::new("c", root.path(), vec![]);
    trusting_group(&[&a.dir, &b.dir, &c.dir]);
    a.peers = vec![b.start(), c.start()];
    a.start();

    let mut writer = Writer::default();
    // Where each epoch (the life of one process of A) starts writing.
    let mut epochs = vec![0u64];
    let mut unknown = 0;
    for kill in 0..kills {
        // Mostly anywhere in 0..=MAX_DELAY_MS; sometimes right away, as the restarted node
        // connects and takes its first writes.
        let delay = if rng.up_to(4) == 0 {
            rng.up_to(10)
        } else {
            rng.up_to(MAX_DELAY_MS)
        };
        writer.write_for(&mut a, Duration::from_millis(delay));
        let unread = a.kill();
        unknown += writer.killed(&a, unread);

        a.start();
        let held = a.get_set(KEY);
        let lost: BTreeSet<u64> = writer.acked.difference(&held).copied().collect();
        if !lost.is_empty() {
            a.fail(&format!(
                "kill {} (after {delay} ms of writing): {} acknowledged writes lost: {}",
                kill + 1,
                lost.len(),
                by_epoch(&lost, &epochs)
            ));
        }
        if let Some(phantom) = held.range(writer.next..).next() {
            a.fail(&format!("holds e{phantom}, which was never written"));
        }
        // The epoch that just ended (after the previous restart, or from the start) must get
        // its acknowledged writes to B and C now that A is back: a reused dot would not.
        let last = epochs.last().copied().unwrap_or(0);
        let want: BTreeSet<u64> = writer.acked.range(last..).copied().collect();
        let (spread, sets) = wait_until_all_hold(&mut [&mut b, &mut c], &want, false, SPREAD);
        if !spread {
            let missing: Vec<String> = ["b", "c"]
                .iter()
                .zip(&sets)
                .map(|(name, s)| {
                    let m: BTreeSet<u64> = want.difference(s).copied().collect();
                    format!("{name}: {}", by_epoch(&m, &epochs))
                })
                .collect();
            a.fail(&format!(
                "after kill {}: writes of epoch {} never reached the peers within {SPREAD:?}: {}",
                kill + 1,
                epochs.len() - 1,
                missing.join(" | ")
            ));
        }
        epochs.push(writer.next);
        println!(
            "kill {:>2} after {delay:>3} ms: {} writes, {} acknowledged, {} in flight at kills, A holds {} ({:.1} s)",
            kill + 1,
            writer.next,
            writer.acked.len(),
            unknown,
            held.len(),
            started.elapsed().as_secs_f64()
        );
    }

    // A last epoch without a kill, then everyone must converge on A's set.
    writer.write_for(&mut a, Duration::from_millis(MAX_DELAY_MS));
    writer.drain(&mut a);
    let at_a = a.get_set(KEY);
    let (converged, sets) = wait_until_all_hold(&mut [&mut b, &mut c], &at_a, true, SPREAD);
    let mut missing = BTreeSet::new();
    for set in std::iter::once(&at_a).chain(&sets) {
        missing.extend(writer.acked.difference(set).copied());
    }
    report(&format!(
        "crash (seed {seed}): writes {}, acknowledged {}, kills {kills}, lost {} ({:.1} s)",
        writer.next,
        writer.acked.len(),
        missing.len(),
        started.elapsed().as_secs_f64()
    ));
    if !converged {
        let diff: Vec<String> = ["b", "c"]
            .iter()
            .zip(&sets)
            .map(|(name, s)| {
                let lacks: BTreeSet<u64> = at_a.difference(s).copied().collect();
                let extra: BTreeSet<u64> = s.difference(&at_a).copied().collect();
                format!(
                    "{name} lacks [{}], has beyond A {extra:?}",
                    by_epoch(&lacks, &epochs)
                )
            })
            .collect();
        a.fail(&format!(
            "B and C did not converge on A's set within {SPREAD:?}: {}",
            diff.join(" | ")
        ));
    }
    assert!(
        missing.is_empty(),
        "lost acknowledged writes: {}",
        by_epoch(&missing, &epochs)
    );
    assert!(
        kills >= 20,
        "only {kills} kills (CRASH_KILLS); at least 20 wanted"
    );
    a.quit();
    b.quit();
    c.quit();
}

#[test]
fn sigterm_loses_nothing() {
    let root = tempfile::TempDir::new().unwrap();
    let mut a = Node::new("a", root.path(), vec![]);
    let mut b = Node::new("b", root.path(), vec![]);
    trusting_group(&[&a.dir, &b.dir]);
    a.peers = vec![b.start()];
    a.start();

    for i in 0..100 {
        a.send(&format!("add term e{i}"));
    }
    for _ in 0..100 {
        let line = a.line(|l| !l.starts_with('~'));
        if !is_ok(&line) {
            a.fail(&format!("unexpected answer to a write: {line:?}"));
        }
    }

    let pid = a.running().pid().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}: {sent}");
    match a.running().wait_exit(Duration::from_secs(5)) {
        Some(status) if status.success() => {}
        Some(status) => a.fail(&format!(
            "exited with {status} after SIGTERM (signal {:?}), not 0: no clean shutdown on SIGTERM",
            status.signal()
        )),
        None => {
            a.kill();
            a.fail("still running 5 s after SIGTERM")
        }
    }
    a.process.running = None;

    a.start();
    let held = a.get_set("term");
    let missing: Vec<u64> = (0..100).filter(|i| !held.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "lost after SIGTERM and restart: {missing:?}"
    );
    a.quit();
    b.quit();
}
