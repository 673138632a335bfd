//! The origin scenario: a trainer writes checkpoint records to its node A and goes on only once
//! two *storage* replicas hold each record durably (`Ack::Peers(2)`); the followers get every
//! record asynchronously, through the storage nodes. One storage node is a separate
//! `crdt-node` process, killed with SIGKILL mid-run and restarted on the same data directory a
//! little later. At the end every node, the restarted process included, must hold every
//! acknowledged checkpoint, and A must never have had a connection to a follower; the program
//! exits non-zero otherwise.
//!
//! ```text
//! cargo run --release --example checkpoint_replication
//! ```
//!
//! The cluster, all on loopback QUIC:
//!
//! * A: the trainer's node (in this process); trusts only S1, S2 and S3;
//! * S1, S3: storage nodes (in this process); trust everyone;
//! * S2: a storage node, a `crdt-node` process (built with cargo if it is missing) on a fixed
//!   loopback port; trusts everyone;
//! * F1, F2: followers (in this process); trust only S1, S2 and S3.
//!
//! A dials S1, S2 and S3; among the storage nodes S3 dials S1, and S2 dials S1 and S3; the
//! followers dial S1, S2 and S3. Nobody dials A, and nobody can learn its address (see
//! `run`), so A's only peers are the storage nodes: `Ack::Peers(2)`, which counts peers of A
//! that have durably merged the record, means two storage replicas. While S2 is down, S1 and
//! S3 meet it, so training never stalls; S2 catches up from S1 and S3 by anti-entropy once it
//! is back. Set `RUST_LOG=crdt_net=info` to watch connections come and go.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crdt_core::ReplicaId;
use crdt_net::node::{
    parse_node_id, Ack, Fingerprint, Identity, Node, NodeBuilder, NodeError, Token,
};
use crdt_net::{Object, Op};
use tokio::sync::mpsc;

/// The key holding the set of checkpoint records.
const KEY: &str = "checkpoints";
/// Checkpoints the trainer writes.
const CHECKPOINTS: usize = 300;
/// S2 is killed before this step's checkpoint is written…
const KILL_AT: usize = 100;
/// …and restarted before this one's.
const RESTART_AT: usize = 200;
/// Simulated training between two checkpoints.
const TRAINING: Duration = Duration::from_millis(10);
/// How long a checkpoint may wait for its two acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// A progress line every this many checkpoints.
const PROGRESS_EVERY: usize = 50;
/// How long the final check waits for every node to hold every acknowledged checkpoint.
const CONVERGE_LIMIT: Duration = Duration::from_secs(20);
const GOSSIP: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenario; `Ok(false)` when a final check fails.
///
/// Who dials whom is chosen so that nobody ever learns A's address. A node learns an address
/// in three ways only: its own configuration (`NodeBuilder::peer`, `crdt-node run --peer`),
/// mDNS (never here: a node runs it only when listening on a non-loopback address, and every
/// node here listens on 127.0.0.1) and peer exchange. Peer exchange passes on only addresses
/// that a node dialed itself: `serve_peer` (crdt-net/src/node/mod.rs) records a peer's
/// address as `dialed.map(..)`, so a peer that connected to us is listed without one; a
/// replica lists itself with `addr: None`; and `Replica::add_peer` never replaces a known
/// address with none. A's address is in no node's configuration (A dials, nobody dials A),
/// so no peer list anywhere ever holds it and nobody ever dials A: A's only connections are
/// the three it opens, to S1, S2 and S3. (The followers' addresses stay unknown in the same
/// way. And should anyone dial anyway, A's TLS admits only the three storage ids on its trust
/// list, and the followers' TLS only the storage ids on theirs.) A may still hear the
/// followers' ids in peer exchange, without an address: the final check shows that it never
/// heard from them.
async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let bin = crdt_node_binary()?;
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("checkpoint-replication-")
        .tempdir()?;
    println!(
        "[1/5] data directories under {}; S2 runs {}",
        root.path().display(),
        bin.display()
    );

    // Identities first, so every node knows whom to trust before it starts.
    let dir = |name: &str| root.path().join(name);
    let id_of = |name: &str| Identity::load_or_create(&dir(name)).map(|i| i.id());
    // Trust pins keys: each node's fingerprint.
    let key_of = |name: &str| Identity::load_or_create(&dir(name))?.fingerprint();
    let (a_id, s1_id, s3_id, f1_id, f2_id) = (
        id_of("A")?,
        id_of("S1")?,
        id_of("S3")?,
        id_of("F1")?,
        id_of("F2")?,
    );
    let s2_dir = dir("S2");
    let s2_dir_arg = s2_dir.to_string_lossy().into_owned();
    let s2_out = cli(&bin, &["init", "--data-dir", &s2_dir_arg])?;
    let field = |name: &str| {
        s2_out
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .ok_or_else(|| format!("unexpected output of `crdt-node init`: {s2_out:?}"))
    };
    let s2_id = parse_node_id(field("node id: ")?)?;
    let s2_key: Fingerprint = field("fingerprint: ")?.parse()?;
    let storage = [s1_id, s2_id, s3_id];
    let everyone = [a_id, s1_id, s2_id, s3_id, f1_id, f2_id];
    let storage_keys = [key_of("S1")?, s2_key, key_of("S3")?];
    let everyone_keys = [
        key_of("A")?,
        storage_keys[0],
        s2_key,
        storage_keys[2],
        key_of("F1")?,
        key_of("F2")?,
    ];
    let names = ["A", "S1", "S2", "S3", "F1", "F2"];
    let name_of = |id: ReplicaId| -> String {
        everyone
            .iter()
            .position(|&i| i == id)
            .map_or_else(|| id.to_string(), |i| names[i].to_owned())
    };
    // Storage nodes trust everyone.
    for key in everyone_keys.iter().filter(|&&key| key != s2_key) {
        cli(
            &bin,
            &["trust", &key.to_string(), "--data-dir", &s2_dir_arg],
        )?;
    }

    println!(
        "[2/5] starting S1, S3 in this process, S2 as a crdt-node process, then A, F1, F2 in \
         this process"
    );
    // S3 dials S1.
    let s1 = start_node(&dir("S1"), &everyone_keys, &[]).await?;
    let s3 = start_node(&dir("S3"), &everyone_keys, &[s1.local_addr()]).await?;
    // S2 listens on a fixed port, so it comes back at the same address after its restart, and
    // dials S1 and S3 itself (at once, also after its restart); it is given no other address.
    let s2_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
    let mut s2_args: Vec<String> = [
        "run",
        "--listen",
        &s2_addr.to_string(),
        "--data-dir",
        &s2_dir_arg,
        "--gossip-ms",
        &GOSSIP.as_millis().to_string(),
    ]
    .map(String::from)
    .to_vec();
    for addr in [s1.local_addr(), s3.local_addr()] {
        s2_args.extend(["--peer".to_owned(), addr.to_string()]);
    }
    let mut s2 = Some(NodeProcess::start(&bin, &s2_args).await?);
    // A trusts and dials only the storage nodes; the followers trust only them and dial them.
    let storage_addrs = [s1.local_addr(), s2_addr, s3.local_addr()];
    let a = start_node(&dir("A"), &storage_keys, &storage_addrs).await?;
    let f1 = start_node(&dir("F1"), &storage_keys, &storage_addrs).await?;
    let f2 = start_node(&dir("F2"), &storage_keys, &storage_addrs).await?;
    let roles = [
        "trainer's node; trusts and dials S1, S2, S3",
        "storage, in process; trusts everyone",
        "storage, crdt-node process; trusts everyone; dials S1, S3",
        "storage, in process; trusts everyone; dials S1",
        "follower, in process; trusts and dials S1, S2, S3",
        "follower, in process; trusts and dials S1, S2, S3",
    ];
    for ((name, id), role) in names.iter().zip(&everyone).zip(roles) {
        println!("      {name:<2} {id}  ({role})");
    }
    // A first write per in-process node, acknowledged by every peer it should have, returns
    // once every link is up: A to the three storage nodes, S1 and S3 to everyone, each
    // follower to the three storage nodes (which covers S2's links too).
    let links = tokio::join!(
        hello(&a, 3),
        hello(&s1, 5),
        hello(&s3, 5),
        hello(&f1, 3),
        hello(&f2, 3)
    );
    for (name, up) in ["A", "S1", "S3", "F1", "F2"]
        .iter()
        .zip([links.0, links.1, links.2, links.3, links.4])
    {
        up.map_err(|e| format!("the cluster did not come up ({name}'s links): {e}"))?;
    }
    println!(
        "      all links up after {:.1?}: A to S1, S2, S3 (its only peers); the storage nodes \
         to each other; F1, F2 to each storage node",
        started.elapsed()
    );

    println!(
        "[3/5] training: {CHECKPOINTS} checkpoints, each written to A with Ack::Peers(2) \
         (two of S1, S2, S3 durable: A has no other peers); S2 is SIGKILLed before step \
         {KILL_AT} and restarted before step {RESTART_AT}"
    );
    let mut last_token: Option<Token> = None;
    let mut acked: Vec<String> = Vec::new();
    let mut not_acked = 0usize;
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    let mut window: Vec<Duration> = Vec::new();
    let mut killed_at = None;
    let mut restarted_at = None;
    let mut restart_time = None;
    let mut caught_up = None;
    for step in 1..=CHECKPOINTS {
        if step == KILL_AT {
            if let Some(mut process) = s2.take() {
                process.kill()?;
            }
            killed_at = Some(Instant::now());
            println!("      step {step:>3}: S2 killed (SIGKILL); Peers(2) is now met by S1 and S3");
        }
        if step == RESTART_AT {
            let down = killed_at.map(|t| t.elapsed()).unwrap_or_default();
            s2 = Some(NodeProcess::start(&bin, &s2_args).await?);
            restarted_at = Some(step);
            restart_time = Some(Instant::now());
            println!(
                "      step {step:>3}: S2 restarted on its data directory after {down:.1?} down"
            );
        }
        tokio::time::sleep(TRAINING).await;
        if let (Some(since), None, Some(process)) = (restart_time, caught_up, s2.as_mut()) {
            // Asked at its prompt: does S2 hold every checkpoint acknowledged so far?
            process.send(&format!("get {KEY} --all"))?;
            let line = process.answer(KEY, Duration::from_secs(10)).await?;
            if count_in_line(&acked, &line) == acked.len() {
                let took = since.elapsed();
                caught_up = Some(took);
                println!(
                    "      step {step:>3}: S2 has caught up (it holds all {} checkpoints \
                     acknowledged so far) {took:.1?} after its restart",
                    acked.len()
                );
            }
        }
        let record = format!("step-{step:05} digest={:016x}", fake_weights_digest(step));
        let began = Instant::now();
        match a
            .update_acked(
                KEY,
                Op::Add(record.clone().into()),
                Ack::Peers(2),
                ACK_TIMEOUT,
            )
            .await
        {
            Ok(token) => {
                let latency = began.elapsed();
                let phase = usize::from(step >= KILL_AT) + usize::from(step >= RESTART_AT);
                latencies[phase].push(latency);
                window.push(latency);
                acked.push(record);
                last_token = Some(token);
            }
            Err(NodeError::AckTimeout { acked, wanted }) => {
                // The record is durable on A and keeps spreading; it is not acknowledged.
                println!("      step {step:>3}: only {acked} of {wanted} replicas in {ACK_TIMEOUT:?}; training goes on");
                not_acked += 1;
            }
            Err(e) => return Err(e.into()),
        }
        if step % PROGRESS_EVERY == 0 {
            window.sort();
            // Asked at its prompt, as S2 sees it itself.
            let s2_state = match s2.as_mut() {
                Some(process) => {
                    process.send(&format!("get {KEY} --all"))?;
                    let line = process.answer(KEY, Duration::from_secs(10)).await?;
                    format!("S2 up, holding {} of them", count_in_line(&acked, &line))
                }
                None => "S2 down".to_owned(),
            };
            println!(
                "      step {step:>3}/{CHECKPOINTS}: {} acknowledged; ack latency of the last {} \
                 p50 {} p99 {}; {s2_state}",
                acked.len(),
                window.len(),
                ms(percentile(&window, 0.50)),
                ms(percentile(&window, 0.99)),
            );
            window.clear();
        }
    }
    let mut all: Vec<Duration> = latencies.concat();
    all.sort();
    for phase in &mut latencies {
        phase.sort();
    }
    println!(
        "      ack latency p50 {} p99 {} (S2 up before: p50 {} p99 {}; S2 down: p50 {} p99 {}; \
         after restart: p50 {} p99 {})",
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(percentile(&latencies[0], 0.50)),
        ms(percentile(&latencies[0], 0.99)),
        ms(percentile(&latencies[1], 0.50)),
        ms(percentile(&latencies[1], 0.99)),
        ms(percentile(&latencies[2], 0.50)),
        ms(percentile(&latencies[2], 0.99)),
    );

    println!(
        "[4/5] waiting (at most {CONVERGE_LIMIT:?}) for every node to hold every acknowledged \
         checkpoint"
    );
    let mut s2 = s2.ok_or("S2 is not running")?;
    let wanted: BTreeSet<String> = acked.iter().cloned().collect();
    let deadline = Instant::now() + CONVERGE_LIMIT;
    // Read-your-writes across nodes: S2 first waits for the trainer's last write by its token.
    if let Some(token) = last_token {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .as_millis();
        s2.send(&format!("get --after {token} --timeout {wait} {KEY} --all"))?;
        s2.answer(KEY, CONVERGE_LIMIT).await?;
    }
    let waiting = Instant::now();
    // In the order of `names`; S2 (index 2) answers at its prompt.
    let in_process: [(usize, &Node); 5] = [(0, &a), (1, &s1), (3, &s3), (4, &f1), (5, &f2)];
    let mut held: Vec<usize> = vec![0; names.len()];
    loop {
        for &(i, node) in &in_process {
            held[i] = count_held(&wanted, &set_elements(node.get(KEY).await));
        }
        s2.send(&format!("get {KEY} --all"))?;
        let line = s2.answer(KEY, Duration::from_secs(10)).await?;
        held[2] = count_in_line(&wanted, &line);
        if held.iter().all(|&h| h == wanted.len()) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let complete = held.iter().all(|&h| h == wanted.len());
    let per_node: Vec<String> = names
        .iter()
        .zip(&held)
        .map(|(n, h)| format!("{n} {h}/{}", wanted.len()))
        .collect();
    println!(
        "      {} after {:.1?}: {}",
        if complete { "complete" } else { "INCOMPLETE" },
        waiting.elapsed(),
        per_node.join(", ")
    );

    println!("[5/5] summary");
    println!(
        "      checkpoints written {CHECKPOINTS}, acknowledged by 2 storage replicas (Peers(2); \
         A's only peers are S1, S2, S3) {}, not acknowledged in time {not_acked}",
        acked.len()
    );
    println!(
        "      S2 killed at step {KILL_AT} and restarted at step {}; caught up {}",
        restarted_at.map_or("(never)".to_owned(), |s| s.to_string()),
        caught_up.map_or("after training ended".to_owned(), |t| format!(
            "{t:.1?} after its restart"
        ))
    );
    println!(
        "      all {} nodes hold all {} acknowledged checkpoints: {} ({:.1?} end to end)",
        names.len(),
        acked.len(),
        if complete { "yes" } else { "NO" },
        started.elapsed()
    );
    // A's peer list holds every node A heard of: the storage nodes it dialed and, perhaps,
    // ids it learned only by name in peer exchange. A peer that was ever connected would have
    // told A (by digest or acknowledgement) that it holds A's writes; one that never was lacks
    // them all in A's view, and has no address.
    let storage_set: BTreeSet<ReplicaId> = storage.into_iter().collect();
    let a_trusts: BTreeSet<ReplicaId> = a.trust_list().ids().into_iter().collect();
    let (mut a_peers, mut by_name, mut strays) = (Vec::new(), Vec::new(), Vec::new());
    let mut a_known = a.peers().await;
    a_known.sort_by_key(|p| everyone.iter().position(|&id| id == p.info.id));
    for peer in a_known {
        let who = name_of(peer.info.id);
        if storage_set.contains(&peer.info.id) {
            a_peers.push(who);
        } else if peer.info.addr.is_none() && peer.lag >= acked.len() as u64 {
            by_name.push((who, peer.lag));
        } else {
            strays.push(format!(
                "{who} (address {}, lacking {} writes)",
                peer.info.addr.as_deref().unwrap_or("none"),
                peer.lag
            ));
        }
    }
    let isolated = a_trusts == storage_set && strays.is_empty();
    println!(
        "      A trusts {}; A's peers: {}",
        everyone
            .iter()
            .filter(|id| a_trusts.contains(id))
            .map(|&id| name_of(id))
            .collect::<Vec<_>>()
            .join(", "),
        a_peers.join(", ")
    );
    if !by_name.is_empty() {
        println!(
            "      A knows {} only by name, from the storage nodes' peer exchange: no address, \
             never heard from (A counts them lacking {} writes)",
            by_name
                .iter()
                .map(|(who, _)| who.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            by_name
                .iter()
                .map(|(_, lag)| lag.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !strays.is_empty() {
        println!(
            "      non-storage peers of A with an address or acknowledged writes: {}",
            strays.join(", ")
        );
    }
    println!(
        "      A never had a connection to a follower: {}",
        if isolated { "yes" } else { "NO" }
    );
    s2.quit().await;
    for node in [a, s1, s3, f1, f2] {
        node.shutdown().await;
    }
    Ok(complete && isolated)
}

/// A first write at `node`, acknowledged by `peers` peers: it returns once that many links are
/// up.
async fn hello(node: &Node, peers: usize) -> Result<Token, NodeError> {
    let timeout = Duration::from_secs(15);
    node.update_acked("hello", Op::Inc(1), Ack::Peers(peers), timeout)
        .await
}

/// Starts an in-process node in `dir` that pins the keys `trusted` (its own left out) and
/// dials `dials`.
async fn start_node(
    dir: &Path,
    trusted: &[Fingerprint],
    dials: &[SocketAddr],
) -> Result<Node, NodeError> {
    let me = Identity::load_or_create(dir)?.fingerprint()?;
    let mut builder = NodeBuilder::new(dir).gossip_interval(GOSSIP);
    for &key in trusted.iter().filter(|&&key| key != me) {
        builder = builder.trust_key(key);
    }
    for &addr in dials {
        builder = builder.peer(addr);
    }
    builder.start().await
}

/// The `crdt-node` binary next to this example's own (`target/<profile>/crdt-node`), built
/// with cargo first so it is neither missing nor stale.
fn crdt_node_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this program: {e}"))?;
    // target/<profile>/examples/checkpoint_replication -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected location {}", exe.display()))?;
    let bin = profile_dir.join(format!("crdt-node{}", std::env::consts::EXE_SUFFIX));
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(name) => name.to_owned(),
    };
    let flag = if profile == "dev" { "" } else { "--release " };
    println!("[0/5] cargo build {flag}-p examples --bin crdt-node (for S2; quick when up to date)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let build = Command::new(&cargo)
        .args(["build", "-q", "--profile", &profile, "-p", "examples"])
        .args(["--bin", "crdt-node", "--manifest-path"])
        .arg(&manifest)
        .status();
    let hint =
        format!("build it with `cargo build {flag}-p examples --bin crdt-node` and run this again");
    match build {
        Ok(status) if status.success() => {}
        Ok(status) if bin.exists() => {
            eprintln!(
                "warning: building crdt-node failed ({status}); using the existing {}",
                bin.display()
            );
        }
        Err(e) if bin.exists() => {
            eprintln!(
                "warning: cannot run cargo ({e}); using the existing {}",
                bin.display()
            );
        }
        Ok(status) => return Err(format!("building crdt-node failed ({status}); {hint}")),
        Err(e) => return Err(format!("cannot run cargo to build crdt-node ({e}); {hint}")),
    }
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} is missing; {hint}", bin.display()))
    }
}

/// Runs a one-shot `crdt-node` command and returns its standard output.
fn cli(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "crdt-node {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `crdt-node run` process driven through its prompt.
struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
}

impl NodeProcess {
    /// Starts the node and waits until it listens.
    async fn start(bin: &Path, args: &[String]) -> Result<NodeProcess, String> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err("crdt-node: no pipes".into());
        };
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = NodeProcess {
            child,
            stdin,
            lines,
        };
        process
            .line(
                |l| l.starts_with("node ") && l.contains(" listening on "),
                Duration::from_secs(10),
            )
            .await?;
        Ok(process)
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("crdt-node's prompt: {e}"))
    }

    /// The next output line that satisfies `want`, within `limit`.
    async fn line(
        &mut self,
        want: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if want(&line) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => return Err("crdt-node exited".into()),
                Err(_) => return Err(format!("no answer from crdt-node within {limit:?}")),
            }
        }
    }

    /// The answer to a `get KEY`: the object, or an error line.
    async fn answer(&mut self, key: &str, limit: Duration) -> Result<String, String> {
        let prefix = format!("{key} ");
        let line = self
            .line(|l| l.starts_with(&prefix) || l.starts_with("error:"), limit)
            .await?;
        if line.starts_with("error:") {
            println!("      S2 answered: {line}");
        }
        Ok(line)
    }

    /// SIGKILL: no clean shutdown, no final commit.
    fn kill(&mut self) -> Result<(), String> {
        self.child
            .kill()
            .and_then(|()| self.child.wait().map(drop))
            .map_err(|e| format!("cannot kill crdt-node: {e}"))
    }

    /// Asks the node to quit; kills it if it has not within 10 s.
    async fn quit(mut self) {
        let _ = self.send("quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.kill();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Never leave the process behind, whatever went wrong.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A UDP port free on loopback right now.
fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The elements of a set object (none for anything else).
fn set_elements(object: Option<Object>) -> BTreeSet<String> {
    match object {
        Some(Object::Set(set)) => set
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn count_held(wanted: &BTreeSet<String>, held: &BTreeSet<String>) -> usize {
    wanted.intersection(held).count()
}

/// How many of the `wanted` records a `crdt-node` answer line (`KEY = {...}`) holds.
fn count_in_line<'a>(wanted: impl IntoIterator<Item = &'a String>, line: &str) -> usize {
    wanted
        .into_iter()
        .filter(|r| line.contains(&format!("{r:?}")))
        .count()
}

/// Stands in for the digest of the weights a step produced (FNV-1a of a made-up blob).
fn fake_weights_digest(step: usize) -> u64 {
    format!("weights after step {step}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The value at quantile `q` of sorted `samples` (zero when there are none).
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let rank = (q * samples.len() as f64).ceil() as usize;
    samples
        .get(rank.clamp(1, samples.len().max(1)) - 1)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
