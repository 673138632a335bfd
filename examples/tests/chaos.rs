//! A chaos test with real processes: five `crdt-node` processes, each in its own network
//! namespace, joined by a bridge in a sixth, under a seeded schedule of writes (acknowledged by a
//! peer or only locally), partitions (a node's veth link set down, later up, some for longer
//! than the transport's idle timeout; or a 2 | 3 split onto two bridges), SIGKILLs (each node
//! restarted on the same data directory a little later) and clocks skewed by up to ten
//! minutes. At the end everything is healed and restarted, and every node must hold every
//! acknowledged element of the set (and every element whose acknowledgement timed out, which
//! the node says stays and keeps spreading), and all five sets must be equal.
//!
//! The seed is printed; `CHAOS_SEED` replays the schedule (not the processes' timing) and
//! `CHAOS_SECONDS` sets how long faults are injected (default 90). Needs root and `ip`
//! (iproute2); where it cannot make namespaces it prints `SKIPPED chaos: <why>` on the terminal
//! (past the test harness's capture) and does nothing else. Every namespace it made (and with
//! them the bridge and the veth pairs) is removed on drop, also when the test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    cannot_make_namespaces, env_u64, is_ok, parse_set, report, skipped, trusting_group,
    LoggedProcess, Rng, Running, BIN,
};

/// Number of nodes.
const NODES: usize = 5;
/// The set every node writes to; the final check is on it.
const KEY: &str = "chaos";
/// A last-writer-wins register written now and then (its stamps do depend on the clocks).
const REGISTER: &str = "chaos-reg";
/// The address range, only inside the test's namespaces (`netns_partition.rs` uses 10.231).
const SUBNET: &str = "10.232.0";
const PORT: u16 = 4433;
/// Default length of the fault schedule, in seconds.
const DEFAULT_SECONDS: u64 = 90;
/// Writes sent to one node ahead of its answers.
const WINDOW: usize = 4;
/// At most this many nodes are down (killed) at once, and at most this many cut off.
const MAX_DEAD: usize = 2;
const MAX_CUT: usize = 3;
/// The largest clock skew, either way.
const MAX_SKEW_MS: u64 = 10 * 60 * 1000;
/// How long a node may take to start, or to answer what it was sent.
const ANSWER: Duration = Duration::from_secs(20);
/// How long the healed cluster may take to converge.
const CONVERGE: Duration = Duration::from_secs(60);

/// A clock offset: none a third of the time, else up to [`MAX_SKEW_MS`] either way.
fn skew(rng: &mut Rng) -> i64 {
    if rng.below(3) == 0 {
        0
    } else {
        rng.below(2 * MAX_SKEW_MS + 1) as i64 - MAX_SKEW_MS as i64
    }
}

/// Runs `ip ARGS`; the error names the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Which end of a node's veth pair a partition set down.
#[derive(Clone, Copy, Debug)]
enum Side {
    /// `eth0` in the node's namespace: its address route goes, sends fail at once.
    Node,
    /// The bridge port: the node's link loses its carrier, packets vanish silently.
    Bridge,
}

/// The test's namespaces: one per node and a hub holding the bridges `br0` and `br1`; node `i`
/// has `eth0` (address `10.232.0.<i+1>/24`) whose peer `p<i>` is a port of `br0` (of `br1`
/// while it is split off with another). The veth pairs are created inside the namespaces, so
/// nothing appears in the namespace the test runs in. Dropping it deletes the namespaces it
/// made, and with them every link in them.
struct Net {
    hub: String,
    nodes: Vec<String>,
    /// Namespaces made so far, removed on drop.
    made: Vec<String>,
}

impl Net {
    fn new() -> Result<Net, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = format!("{}-{}", std::process::id(), nanos % 10_000);
        let mut net = Net {
            hub: format!("crdt-chaos-{tag}-hub"),
            nodes: (0..NODES)
                .map(|i| format!("crdt-chaos-{tag}-n{i}"))
                .collect(),
            made: Vec::new(),
        };
        // On an error, dropping `net` removes what was made.
        for ns in std::iter::once(net.hub.clone()).chain(net.nodes.clone()) {
            ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let hub = net.hub.as_str();
        for bridge in ["br0", "br1"] {
            ip(&["-n", hub, "link", "add", bridge, "type", "bridge"])?;
            ip(&["-n", hub, "link", "set", bridge, "up"])?;
        }
        for (i, ns) in net.nodes.iter().enumerate() {
            let port = format!("p{i}");
            ip(&[
                "-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip(&["-n", hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", hub, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", Net::ip_of(i));
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    fn ip_of(i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    fn addr_of(i: usize) -> String {
        format!("{}:{PORT}", Net::ip_of(i))
    }

    /// Sets node `i`'s link (the end on `side`) up or down.
    fn link(&self, i: usize, side: Side, up: bool) {
        let state = if up { "up" } else { "down" };
        let result = match side {
            Side::Node => ip(&["-n", &self.nodes[i], "link", "set", "eth0", state]),
            Side::Bridge => ip(&["-n", &self.hub, "link", "set", &format!("p{i}"), state]),
        };
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

impl Net {
    /// Attaches node `i`'s bridge port to `bridge` (`br0`, or `br1` for a split).
    fn bridge(&self, i: usize, bridge: &str) {
        if let Err(e) = ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &format!("p{i}"),
            "master",
            bridge,
        ]) {
            panic!("{e}");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                let _ = writeln!(std::io::stderr().lock(), "chaos: cleanup: {e}");
            }
        }
    }
}

/// A write sent to a node and not answered yet.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// `add [--ack 1 --timeout 2000] chaos e<i>`.
    Add(u64),
    /// `set chaos-reg r<i>`.
    Set,
}

/// One `crdt-node` process in its namespace, killed and restarted on the same data directory;
/// its stderr is appended to a log that failures quote. Dropping it kills the process.
struct Node {
    index: usize,
    process: LoggedProcess,
    ns: String,
    dir: String,
    peers: Vec<String>,
    /// Its clock offset (ms) in the current (or last) run.
    offset_ms: i64,
    pending: VecDeque<Pending>,
    /// Which end of its link is down, if it is cut off, and the step that heals it.
    cut: Option<(Side, u64)>,
    /// When killed: the step that restarts it.
    restart_at: u64,
}

impl Node {
    fn name(&self) -> &str {
        &self.process.name
    }

    fn is_up(&self) -> bool {
        self.process.running.is_some()
    }

    /// Starts the process with clock offset `offset_ms` and waits (bounded) for its prompt.
    fn start(&mut self, offset_ms: i64) {
        let mut log = self.process.start_log();
        self.offset_ms = offset_ms;
        let _ = writeln!(log, "=== chaos: start, clock offset {offset_ms} ms ===");
        let offset = offset_ms.to_string();
        let listen = Net::addr_of(self.index);
        let mut args = vec!["run", "--listen", &listen, "--data-dir", &self.dir];
        for peer in &self.peers {
            args.extend(["--peer", peer.as_str()]);
        }
        args.extend(["--gossip-ms", "200", "--clock-offset-ms", &offset]);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns, BIN]);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        self.process
            .started(Running::start_command_logged(command, &args, log));
    }

    /// Asks it to quit; [`Node::wait_quit`] then waits for it.
    fn ask_quit(&mut self) {
        if let Some(running) = self.process.running.as_mut() {
            let _ = running.try_send("quit");
        }
    }

    /// Waits (bounded) for the clean exit `quit` asked for.
    fn wait_quit(&mut self) {
        let Some(mut running) = self.process.running.take() else {
            return;
        };
        match running.wait_exit(ANSWER) {
            Some(status) if status.success() => {}
            Some(status) => self.fail(&format!("exited with {status} after `quit`")),
            None => {
                running.kill();
                self.fail(&format!("still running {ANSWER:?} after `quit`"));
            }
        }
    }
}

common::deref_to_process!(Node);

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the schedule did, and the fate of every write.
#[derive(Default)]
struct Tally {
    /// Elements `e0..e<writes>` were sent.
    writes: u64,
    acked: BTreeSet<u64>,
    /// Answered with an error, or in flight at a kill: maybe held, maybe not.
    unknown: BTreeSet<u64>,
    /// Of those, answered that too few peers acknowledged in time, which also says the write
    /// is durable at the node and keeps spreading: so every node must come to hold them too.
    timed_out: BTreeSet<u64>,
    /// Error answers by kind (numbers as `N`), for the report.
    error_kinds: BTreeMap<String, u64>,
    /// Register writes sent, and answered `ok`.
    sets: u64,
    sets_acked: u64,
    kills: u64,
    partitions: u64,
    restarts: u64,
}

impl Tally {
    /// Takes one output line of `node`, the answer to its oldest write in flight (or an event).
    fn take(&mut self, node: &mut Node, line: &str) {
        if line.starts_with('~') {
            return;
        }
        let ok = is_ok(line);
        if !ok && !line.starts_with("error: ") {
            node.fail(&format!("unexpected answer to a write: {line:?}"));
        }
        match (node.pending.pop_front(), ok) {
            (Some(Pending::Add(i)), true) => {
                self.acked.insert(i);
            }
            (Some(Pending::Add(i)), false) => {
                self.unknown.insert(i);
                if line.contains("the write stays and keeps spreading") {
                    self.timed_out.insert(i);
                }
            }
            (Some(Pending::Set), true) => self.sets_acked += 1,
            (Some(Pending::Set), false) => {}
            (None, _) => node.fail(&format!("{line:?} with no write in flight")),
        }
        if !ok {
            let mut kind = String::new();
            for c in line.chars() {
                match (c.is_ascii_digit(), kind.ends_with('N')) {
                    (true, true) => {}
                    (true, false) => kind.push('N'),
                    (false, _) => kind.push(c),
                }
            }
            *self.error_kinds.entry(kind).or_default() += 1;
        }
    }

    /// Takes every line the running nodes have printed so far.
    fn poll(&mut self, nodes: &mut [Node]) {
        for node in nodes.iter_mut().filter(|n| n.is_up()) {
            while let Some(line) = node.next_line(Duration::ZERO) {
                self.take(node, &line);
            }
        }
    }

    /// Polls the nodes for `time`.
    fn poll_for(&mut self, nodes: &mut [Node], time: Duration) {
        let end = Instant::now() + time;
        loop {
            self.poll(nodes);
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return;
            };
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }

    /// Waits (bounded) until every running node answered every write sent to it.
    fn drain(&mut self, nodes: &mut [Node]) {
        let deadline = Instant::now() + ANSWER;
        while nodes.iter().any(|n| !n.pending.is_empty()) {
            if Instant::now() >= deadline {
                let stuck = nodes.iter().find(|n| !n.pending.is_empty());
                if let Some(node) = stuck {
                    node.fail(&format!(
                        "{} writes unanswered after {ANSWER:?}",
                        node.pending.len()
                    ));
                }
            }
            self.poll_for(nodes, Duration::from_millis(20));
        }
    }

    /// `node` was killed: its unread lines still answer writes it finished; the rest in flight
    /// have an unknown outcome.
    fn killed(&mut self, node: &mut Node, unread: Vec<String>) {
        for line in unread {
            self.take(node, &line);
        }
        for pending in std::mem::take(&mut node.pending) {
            if let Pending::Add(i) = pending {
                self.unknown.insert(i);
            }
        }
    }
}

/// Asks every node for `get KEY` at once; the answers, in node order. Only with no writes in
/// flight: the next prompt answer of each node must be this one.
fn get_all(nodes: &mut [Node], key: &str) -> Vec<String> {
    for node in nodes.iter_mut() {
        node.send(&format!("get {key} --all"));
    }
    nodes
        .iter_mut()
        .map(|n| n.line(|l| !l.starts_with('~')))
        .collect()
}

fn get_sets(nodes: &mut [Node]) -> Vec<BTreeSet<u64>> {
    let answers = get_all(nodes, KEY);
    nodes
        .iter()
        .zip(answers)
        .map(|(node, answer)| match parse_set(KEY, &answer) {
            Some(set) => set,
            None => node.fail(&format!("unexpected answer to `get {KEY}`: {answer:?}")),
        })
        .collect()
}

fn union_of(sets: &[BTreeSet<u64>]) -> BTreeSet<u64> {
    sets.iter().flatten().copied().collect()
}

/// At most `max` elements of `set`, for messages.
fn some(set: &BTreeSet<u64>, max: usize) -> String {
    let shown: Vec<String> = set.iter().take(max).map(|i| format!("e{i}")).collect();
    let more = set.len().saturating_sub(max);
    if more > 0 {
        format!("{} (and {more} more)", shown.join(" "))
    } else {
        shown.join(" ")
    }
}

#[test]
fn five_nodes_under_partitions_kills_and_skewed_clocks_lose_no_acknowledged_write() {
    if let Some(why) = cannot_make_namespaces() {
        skipped("chaos", &why);
        return;
    }
    let started = Instant::now();
    let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let seconds = env_u64("CHAOS_SECONDS").unwrap_or(DEFAULT_SECONDS);
    println!("chaos seed {seed} (CHAOS_SEED={seed} replays the schedule), {seconds} s of faults");
    let mut rng = Rng(seed);

    // Declared before the nodes, so dropped after them: no process is left in a namespace.
    let net = match Net::new() {
        Ok(net) => net,
        Err(e) => {
            skipped(
                "chaos",
                &format!("cannot set up the bridged namespaces: {e}"),
            );
            return;
        }
    };
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            let dir = root.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            // Two or three of the others, from the next one on.
            let count = 2 + rng.below(2) as usize;
            let peers = (1..=count).map(|d| Net::addr_of((i + d) % NODES)).collect();
            Node {
                index: i,
                process: LoggedProcess::new(
                    format!("n{i}"),
                    root.path().join(format!("n{i}.log")),
                    ANSWER,
                ),
                ns: net.nodes[i].clone(),
                dir: dir.to_str().unwrap().to_owned(),
                peers,
                offset_ms: 0,
                pending: VecDeque::new(),
                cut: None,
                restart_at: 0,
            }
        })
        .collect();
    let dirs: Vec<&str> = nodes.iter().map(|n| n.dir.as_str()).collect();
    trusting_group(&dirs);
    for node in nodes.iter_mut() {
        let offset = skew(&mut rng);
        node.start(offset);
    }
    let offsets: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} {:+} s", n.name(), n.offset_ms / 1000))
        .collect();
    println!(
        "started ({:.1} s), clocks {}",
        started.elapsed().as_secs_f64(),
        offsets.join(", ")
    );

    let mut tally = Tally::default();
    // The nodes moved to the second bridge, and the step that moves them back.
    let mut split: Option<(Vec<usize>, u64)> = None;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut step = 0u64;
    while Instant::now() < end {
        step += 1;
        let at = started.elapsed().as_secs_f64();
        // Faults whose time is up end first.
        for (i, node) in nodes.iter_mut().enumerate() {
            if let Some((side, until)) = node.cut {
                if until <= step {
                    net.link(i, side, true);
                    node.cut = None;
                    println!("{at:6.1} s: heal n{i}");
                }
            }
            if !node.is_up() && node.restart_at <= step {
                let offset = skew(&mut Rng(seed ^ step));
                node.start(offset);
                tally.restarts += 1;
                println!("{at:6.1} s: restart n{i}, clock {:+} s", offset / 1000);
            }
        }
        if let Some((group, until)) = split.take() {
            if until <= step {
                for &i in &group {
                    net.bridge(i, "br0");
                }
                println!("{at:6.1} s: split healed");
            } else {
                split = Some((group, until));
            }
        }

        // Every random number is drawn whatever the state, so a seed replays the schedule
        // (not the processes' timing).
        let action = rng.below(100);
        let which = rng.next();
        let flavour = rng.below(100);
        let steps = rng.below(1000);
        let pause = Duration::from_millis(20 + rng.below(180));
        let up: Vec<usize> = (0..NODES).filter(|&i| nodes[i].is_up()).collect();
        let dead = NODES - up.len();
        let linked: Vec<usize> = (0..NODES).filter(|&i| nodes[i].cut.is_none()).collect();
        let choose = |from: &[usize]| -> Option<usize> {
            (!from.is_empty()).then(|| from[(which % from.len() as u64) as usize])
        };
        match action {
            // SIGKILL a running node; it restarts 2 to 40 steps later on the same directory.
            0..=3 if dead < MAX_DEAD => {
                if let Some(i) = choose(&up) {
                    let unread = nodes[i].kill();
                    tally.killed(&mut nodes[i], unread);
                    nodes[i].restart_at = step + 2 + steps % 39;
                    tally.kills += 1;
                    println!("{at:6.1} s: kill n{i}");
                }
            }
            // Cut a node off, mostly for up to ~10 s, sometimes for 300 to 400 steps (about 35
            // to 50 s: longer than the transport's 30 s idle timeout, so its connections die).
            4..=9 if NODES - linked.len() < MAX_CUT => {
                if let Some(i) = choose(&linked) {
                    let side = if flavour % 2 == 0 {
                        Side::Node
                    } else {
                        Side::Bridge
                    };
                    let hold = if flavour < 12 {
                        300 + steps % 100
                    } else {
                        5 + steps % 90
                    };
                    net.link(i, side, false);
                    nodes[i].cut = Some((side, step + hold));
                    tally.partitions += 1;
                    println!("{at:6.1} s: cut n{i} off ({side:?} side) for {hold} steps");
                }
            }
            // Split the cluster 2 | 3: two nodes move to a bridge of their own.
            10..=11 if split.is_none() => {
                let first = (which % NODES as u64) as usize;
                let second = (first + 1 + ((which >> 8) % (NODES as u64 - 1)) as usize) % NODES;
                let group = vec![first, second];
                for &i in &group {
                    net.bridge(i, "br1");
                }
                let hold = 20 + steps % 130;
                println!("{at:6.1} s: split n{first} n{second} | the rest, for {hold} steps");
                split = Some((group, step + hold));
                tally.partitions += 1;
            }
            // A write at a running node, unless it has a full window of writes in flight.
            _ => {
                if let Some(i) = choose(&up).filter(|&i| nodes[i].pending.len() < WINDOW) {
                    let (line, pending) = match flavour {
                        0..=4 => {
                            tally.sets += 1;
                            (format!("set {REGISTER} r{}", tally.sets), Pending::Set)
                        }
                        5..=54 => {
                            let e = tally.writes;
                            tally.writes += 1;
                            (
                                format!("add --ack 1 --timeout 2000 {KEY} e{e}"),
                                Pending::Add(e),
                            )
                        }
                        _ => {
                            let e = tally.writes;
                            tally.writes += 1;
                            (format!("add {KEY} e{e}"), Pending::Add(e))
                        }
                    };
                    nodes[i].send(&line);
                    nodes[i].pending.push_back(pending);
                }
            }
        }
        tally.poll_for(&mut nodes, pause);
    }

    // The end: heal every link, restart every killed node, let every write be answered.
    println!(
        "{:6.1} s: faults over; healing and restarting",
        started.elapsed().as_secs_f64()
    );
    if let Some((group, _)) = split.take() {
        for i in group {
            net.bridge(i, "br0");
        }
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        if let Some((side, _)) = node.cut.take() {
            net.link(i, side, true);
        }
        if !node.is_up() {
            let offset = skew(&mut rng);
            node.start(offset);
            tally.restarts += 1;
        }
    }
    tally.drain(&mut nodes);
    let healed = Instant::now();

    // Then every node must come to hold every acknowledged element, and all the same ones.
    let deadline = healed + CONVERGE;
    let mut sets;
    loop {
        sets = get_sets(&mut nodes);
        let complete = sets
            .iter()
            .all(|s| s.is_superset(&tally.acked) && s.is_superset(&tally.timed_out));
        let equal = sets.windows(2).all(|w| w[0] == w[1]);
        if (complete && equal) || Instant::now() >= deadline {
            break;
        }
        tally.poll_for(&mut nodes, Duration::from_millis(250));
    }
    let converged_in = healed.elapsed();
    let mut lost = BTreeSet::new();
    for set in &sets {
        lost.extend(tally.acked.difference(set).copied());
    }
    let mut dropped = BTreeSet::new();
    for set in &sets {
        dropped.extend(tally.timed_out.difference(set).copied());
    }
    let registers = get_all(&mut nodes, REGISTER);
    for (kind, count) in &tally.error_kinds {
        println!("{count} answers {kind:?}");
    }
    println!(
        "outcome unknown {} (in flight at a kill, or an error answer), of which held at the end {}; \
         acknowledgement timed out {} (durable at their node), of which missing somewhere {}",
        tally.unknown.len(),
        tally.unknown.intersection(&union_of(&sets)).count(),
        tally.timed_out.len(),
        dropped.len(),
    );
    println!(
        "restarts {}; register writes {}, acknowledged {}; registers at the end (clocks skewed \
         past the 60 s drift bound keep some apart): {}",
        tally.restarts,
        tally.sets,
        tally.sets_acked,
        registers.join(" | ")
    );
    println!(
        "converged {:.1} s after the heal, {:.1} s in all",
        converged_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    report(&format!(
        "chaos (seed {seed}): writes {}, acknowledged {}, kills {}, partitions {}, lost {}",
        tally.writes,
        tally.acked.len(),
        tally.kills,
        tally.partitions,
        lost.len()
    ));

    for (node, set) in nodes.iter().zip(&sets) {
        if let Some(phantom) = set.range(tally.writes..).next() {
            node.fail(&format!("holds e{phantom}, which was never written"));
        }
    }
    for (node, set) in nodes.iter().zip(&sets) {
        let missing: BTreeSet<u64> = tally.acked.difference(set).copied().collect();
        if !missing.is_empty() {
            node.fail(&format!(
                "lacks {} acknowledged elements {CONVERGE:?} after the heal (seed {seed}): {}",
                missing.len(),
                some(&missing, 20)
            ));
        }
    }
    for (node, set) in nodes.iter().zip(&sets) {
        let missing: BTreeSet<u64> = tally.timed_out.difference(set).copied().collect();
        if !missing.is_empty() {
            node.fail(&format!(
                "lacks {} elements whose acknowledgement timed out (which says the write stays \
                 and keeps spreading) {CONVERGE:?} after the heal (seed {seed}): {}",
                missing.len(),
                some(&missing, 20)
            ));
        }
    }
    let union = union_of(&sets);
    for (node, set) in nodes.iter().zip(&sets) {
        let lacks: BTreeSet<u64> = union.difference(set).copied().collect();
        if !lacks.is_empty() {
            node.fail(&format!(
                "the sets differ {CONVERGE:?} after the heal (seed {seed}): this one lacks {} that others hold: {}",
                lacks.len(),
                some(&lacks, 20)
            ));
        }
    }
    assert!(lost.is_empty(), "lost {} acknowledged writes", lost.len());
    let quitting = Instant::now();
    nodes.iter_mut().for_each(Node::ask_quit);
    nodes.iter_mut().for_each(Node::wait_quit);
    println!(
        "all quit cleanly in {:.1} s",
        quitting.elapsed().as_secs_f64()
    );
    // Dropped in reverse order: the nodes, the directories, then the namespaces.
}
