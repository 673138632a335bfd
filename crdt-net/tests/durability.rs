//! Durability of a node's store, with real nodes on loopback QUIC and real files: one node per
//! data directory, damage detected rather than loaded, a full disk failing the call (never a
//! false success), acknowledgement levels counted over real peers, and read-your-writes tokens
//! across nodes.
//!
//! Every wait is bounded: a hang fails the test with the step that hung.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crdt_core::{Dot, ReplicaId};
use crdt_net::node::{Ack, Identity, Node, NodeBuilder, NodeError, Token};
use crdt_net::store::StoreError;
use crdt_net::{Object, Op};
use tempfile::TempDir;

/// The longest any single step (a start, an update, a read, a shutdown) may take.
const STEP: Duration = Duration::from_secs(15);
/// How long replication may take to reach a node.
const WAIT: Duration = Duration::from_secs(20);
const GOSSIP: Duration = Duration::from_millis(100);
const STORE_FILE: &str = "store.redb";

/// Says on the terminal itself (past the test harness's capture) that a test did not run.
macro_rules! skipped {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Awaits `future`, failing the test if it takes longer than `limit`.
async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` until it holds, failing the test after [`WAIT`].
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if within(what, STEP, check()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A builder for the node in `dir`, trusting every id in `trust` but its own.
fn builder(dir: &Path, trust: &[ReplicaId]) -> NodeBuilder {
    let own = Identity::load_or_create(dir).unwrap().id();
    let mut builder = NodeBuilder::new(dir).gossip_interval(GOSSIP);
    for id in trust.iter().filter(|id| **id != own) {
        builder = builder.trust(*id);
    }
    builder
}

async fn start(what: &str, builder: NodeBuilder) -> Result<Node, NodeError> {
    within(what, STEP, builder.start()).await
}

async fn stop(node: Node) {
    within("a shutdown", STEP, node.shutdown()).await;
}

/// Starts nodes in fresh directories, each trusting all the others, each dialing the ones
/// started before it.
async fn cluster(n: usize) -> (Vec<Node>, Vec<TempDir>, Vec<ReplicaId>) {
    let dirs: Vec<TempDir> = (0..n).map(|_| TempDir::new().unwrap()).collect();
    let ids: Vec<ReplicaId> = dirs
        .iter()
        .map(|d| Identity::load_or_create(d.path()).unwrap().id())
        .collect();
    let mut nodes: Vec<Node> = Vec::new();
    for dir in &dirs {
        let mut b = builder(dir.path(), &ids);
        for node in &nodes {
            b = b.peer(node.local_addr());
        }
        nodes.push(start("a cluster node start", b).await.unwrap());
    }
    (nodes, dirs, ids)
}

/// Waits until every node knows every other one as a peer that is up.
async fn connected(nodes: &[Node]) {
    eventually("every node knows every other one, up", async || {
        for node in nodes {
            let peers = node.peers().await;
            let up = nodes
                .iter()
                .filter(|other| other.id() != node.id())
                .all(|other| peers.iter().any(|p| p.info.id == other.id() && p.up));
            if !up {
                return false;
            }
        }
        true
    })
    .await;
}

/// The set at `key` on `node`, as sorted strings (`None` if the key is absent).
async fn set_at(node: &Node, key: &str) -> Option<Vec<String>> {
    match within("a get", STEP, node.get(key)).await? {
        Object::Set(set) => {
            let mut elements: Vec<String> = set
                .iter()
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect();
            elements.sort();
            Some(elements)
        }
        other => panic!("{key} is not a set: {other:?}"),
    }
}

fn holds(object: &Option<Object>, element: &str) -> bool {
    matches!(object, Some(Object::Set(set)) if set.contains(element.as_bytes()))
}

fn store_error(e: &NodeError) -> Option<&StoreError> {
    match e {
        NodeError::Store(e) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_one_data_directory_is_refused() {
    let dir = TempDir::new().unwrap();
    let first = start("the first start", NodeBuilder::new(dir.path()))
        .await
        .unwrap();
    first.update("kept", Op::Inc(3)).await.unwrap();

    let refused = start("the second start", NodeBuilder::new(dir.path()))
        .await
        .expect_err("a second node started on a data directory in use");
    match &refused {
        NodeError::Store(e) => match &**e {
            StoreError::Locked { path } => {
                assert_eq!(path, &dir.path().join(STORE_FILE), "{refused}")
            }
            other => panic!("refused for another store reason: {other}"),
        },
        other => panic!("refused for another reason: {other}"),
    }
    // The refusal disturbed nothing: the first node still writes.
    within(
        "an update after the refusal",
        STEP,
        first.update("kept", Op::Inc(1)),
    )
    .await
    .unwrap();
    let id = first.id();
    stop(first).await;

    let again = start("a start after the shutdown", NodeBuilder::new(dir.path()))
        .await
        .unwrap();
    assert_eq!(again.id(), id);
    let kept = within("a get", STEP, again.get("kept")).await;
    assert_eq!(kept.map(|o| o.to_string()).as_deref(), Some("4"));
    stop(again).await;
}

/// Flips one bit (`mask`) at `offset` within every occurrence of `needle` in `bytes`; returns
/// how many occurrences there were.
fn flip_everywhere(bytes: &mut [u8], needle: &[u8], offset: usize, mask: u8) -> usize {
    let starts: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    for &i in &starts {
        bytes[i + offset] ^= mask;
    }
    starts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_the_store_is_detected() {
    const NEEDLE: &str = "needle-0123456789";
    const KEY: &str = "haystack";
    let dir = TempDir::new().unwrap();
    let node = start("the first start", NodeBuilder::new(dir.path()))
        .await
        .unwrap();
    within("the update", STEP, node.update(KEY, Op::Add(NEEDLE.into())))
        .await
        .unwrap();
    stop(node).await;

    let file = dir.path().join(STORE_FILE);
    let original = std::fs::read(&file).unwrap();
    let mut damaged = original.clone();
    let copies = flip_everywhere(&mut damaged, NEEDLE.as_bytes(), 7, 0x01);
    assert!(copies >= 1, "the element is not in {}", file.display());
    std::fs::write(&file, &damaged).unwrap();

    let err = start("a start on the damaged store", NodeBuilder::new(dir.path()))
        .await
        .expect_err("the node started on a damaged store");
    match store_error(&err) {
        Some(StoreError::Corrupt { path, what }) => {
            assert_eq!(path, &file);
            assert!(
                what.contains(KEY) && (what.starts_with("deltas/") || what.starts_with("objects/")),
                "the message does not name the record: {what}"
            );
        }
        _ => panic!("not reported as a damaged record: {err}"),
    }

    // Whichever bit of the element flips, the node refuses to start: it never serves other
    // data than was written.
    for offset in 0..NEEDLE.len() {
        for bit in 0..8 {
            let mut damaged = original.clone();
            flip_everywhere(&mut damaged, NEEDLE.as_bytes(), offset, 1 << bit);
            std::fs::write(&file, &damaged).unwrap();
            match start("a start on a damaged store", NodeBuilder::new(dir.path())).await {
                Err(e) => assert!(
                    matches!(store_error(&e), Some(StoreError::Corrupt { .. })),
                    "byte {offset} bit {bit}: not reported as damage: {e}"
                ),
                Ok(node) => {
                    let got = set_at(&node, KEY).await;
                    stop(node).await;
                    panic!("byte {offset} bit {bit}: the node started silently, with {got:?}");
                }
            }
        }
    }

    // The undamaged bytes load: it was the flipped bit the node refused.
    std::fs::write(&file, &original).unwrap();
    let node = start(
        "a start on the repaired store",
        NodeBuilder::new(dir.path()),
    )
    .await
    .unwrap();
    assert_eq!(set_at(&node, KEY).await, Some(vec![NEEDLE.to_owned()]));
    stop(node).await;
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            let effective = line.split_whitespace().nth(2)?;
            Some(effective == "0")
        })
        .unwrap_or(false)
}

/// A small tmpfs mounted on a fresh directory, unmounted when dropped (lazily if a node that
/// was never shut down still holds a file open on it).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = TempDir::new().map_err(|e| e.to_string())?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = std::process::Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount {}", self.dir.path().display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_written_fails_the_call() {
    if !is_root() {
        skipped!(
            "SKIPPED: a_store_that_cannot_be_written_fails_the_call needs root (to mount a tmpfs)"
        );
        return;
    }
    let tmpfs = match Tmpfs::mount("2m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            skipped!("SKIPPED: a_store_that_cannot_be_written_fails_the_call: {why}");
            return;
        }
    };
    const KEY: &str = "big";
    const LIMIT: usize = 256;
    const AFTER_FULL: usize = 8;
    let data = tmpfs.path().join("node");
    let node = start("a start on the tmpfs", NodeBuilder::new(&data))
        .await
        .unwrap();
    let value = |i: usize| format!("{i:06}-{}", "x".repeat(64 * 1024 - 7));

    let mut acked: Vec<usize> = Vec::new();
    let mut first_failure = None;
    let mut after_full_ok = Vec::new();
    for i in 0..LIMIT {
        let result = within(
            "an update on a filling disk",
            STEP,
            node.update(KEY, Op::Add(value(i).into())),
        )
        .await;
        match result {
            Ok(_) => {
                acked.push(i);
                if first_failure.is_some() {
                    after_full_ok.push(i);
                }
            }
            Err(e) => {
                assert!(
                    store_error(&e).is_some(),
                    "update {i} failed with another error than NodeError::Store: {e}"
                );
                if first_failure.is_none() {
                    eprintln!("update {i} failed: {e}");
                    first_failure = Some(i);
                }
            }
        }
        if first_failure.is_some_and(|f| i >= f + AFTER_FULL) {
            break;
        }
    }
    let first_failure =
        first_failure.unwrap_or_else(|| panic!("{LIMIT} updates of 64 KiB fit in 2 MiB"));
    assert!(!acked.is_empty(), "not even the first update fitted");
    eprintln!(
        "{} updates acknowledged, the first failure at {first_failure}, {} acknowledged after it",
        acked.len(),
        after_full_ok.len()
    );
    stop(node).await;

    // Nothing deleted: the restart finds every acknowledged update on the same full disk.
    let node = start("a restart on the full tmpfs", NodeBuilder::new(&data))
        .await
        .unwrap_or_else(|e| panic!("the node does not restart on its full disk: {e}"));
    let object = within("a get", STEP, node.get(KEY)).await;
    let missing: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|i| !holds(&object, &value(*i)))
        .collect();
    stop(node).await;
    assert!(
        missing.is_empty(),
        "updates acknowledged as durable but lost: {missing:?}"
    );
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_levels_count_peers_that_hold_the_write() {
    let (mut nodes, dirs, ids) = cluster(3).await;
    connected(&nodes).await;
    const KEY: &str = "acked";
    async fn update(
        node: &Node,
        element: &str,
        ack: Ack,
        timeout: Duration,
    ) -> Result<Token, NodeError> {
        let update = node.update_acked(KEY, Op::Add(element.into()), ack, timeout);
        within("an acknowledged update", timeout + STEP, update).await
    }

    update(
        &nodes[0],
        "two-peers",
        Ack::Peers(2),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // Acknowledged by both: both hold it already, with no waiting.
    for node in &nodes[1..] {
        let object = within("a get", STEP, node.get(KEY)).await;
        assert!(
            holds(&object, "two-peers"),
            "{} acknowledged a write it does not hold: {object:?}",
            node.id()
        );
    }
    update(
        &nodes[0],
        "majority",
        Ack::Majority,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    update(&nodes[0], "all", Ack::All, Duration::from_secs(10))
        .await
        .unwrap();
    for node in &nodes[1..] {
        let object = within("a get", STEP, node.get(KEY)).await;
        assert!(
            holds(&object, "all"),
            "Ack::All returned before {} held the write",
            node.id()
        );
    }

    // B and C go away: one peer cannot be had.
    let c = nodes.pop().unwrap();
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    stop(b).await;
    stop(c).await;
    let begun = Instant::now();
    let err = update(&a, "alone", Ack::Peers(1), Duration::from_millis(500))
        .await
        .expect_err("acknowledged by a peer that is down");
    let took = begun.elapsed();
    assert!(
        matches!(
            err,
            NodeError::AckTimeout {
                acked: 1,
                wanted: 2
            }
        ),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "the 500 ms timeout took {took:?}"
    );
    let object = within("a get", STEP, a.get(KEY)).await;
    assert!(
        holds(&object, "alone"),
        "a timed-out write is gone: {object:?}"
    );

    // B comes back from its data directory and gets the write it missed.
    let b = start(
        "the restart of B",
        builder(dirs[1].path(), &ids).peer(a.local_addr()),
    )
    .await
    .unwrap();
    assert_eq!(b.id(), ids[1]);
    eventually("the restarted B holds the write it missed", async || {
        holds(&b.get(KEY).await, "alone")
    })
    .await;
    assert_eq!(
        set_at(&b, KEY).await,
        set_at(&a, KEY).await,
        "B lost what it acknowledged"
    );
    stop(b).await;
    stop(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_token_at_a_second_node() {
    let (mut nodes, _dirs, _ids) = cluster(2).await;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    const KEY: &str = "ryw";

    let token = within("the update", STEP, a.update(KEY, Op::Add("mine".into())))
        .await
        .unwrap();
    assert_eq!(token.0.replica, a.id());
    // The token survives being printed and parsed, as a client would carry it.
    let carried: Token = token.to_string().parse().unwrap();
    assert_eq!(carried, token);

    let object = within(
        "get_after at B",
        STEP,
        b.get_after(KEY, carried, Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert!(holds(&object, "mine"), "B read {object:?}");
    let own = within(
        "get_after at A",
        STEP,
        a.get_after(KEY, token, Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert!(holds(&own, "mine"), "A read {own:?}");

    // A write that was never made is never seen.
    let never = Token(Dot::new(a.id(), token.0.counter + 1_000_000));
    for node in [&a, &b] {
        let begun = Instant::now();
        let err = within(
            "get_after for a write never made",
            STEP,
            node.get_after(KEY, never, Duration::from_millis(300)),
        )
        .await
        .expect_err("read a write that was never made");
        let took = begun.elapsed();
        assert!(matches!(err, NodeError::NotSeen(t) if t == never), "{err}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "the 300 ms timeout took {took:?}"
        );
    }
    stop(b).await;
    stop(a).await;
}

/// A commit that failed for lack of space is retried on the owner's next turn. redb refuses
/// every transaction on a handle after an I/O error (`PreviousIo`), so the store reopens its
/// file after a failed commit: once space is freed, writes succeed again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_was_full_accepts_writes_once_space_is_freed() {
    if !is_root() {
        skipped!("SKIPPED: a_store_that_was_full_accepts_writes_once_space_is_freed needs root");
        return;
    }
    let tmpfs = match Tmpfs::mount("2m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            skipped!("SKIPPED: a_store_that_was_full_accepts_writes_once_space_is_freed: {why}");
            return;
        }
    };
    let filler = tmpfs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 768 * 1024]).unwrap();
    let data = tmpfs.path().join("node");
    let node = start("a start on the tmpfs", NodeBuilder::new(&data))
        .await
        .unwrap();
    let first = within("the first update", STEP, node.update("small", Op::Inc(1)))
        .await
        .unwrap();
    let mut full = false;
    for i in 0..256 {
        let value = format!("{i:06}-{}", "x".repeat(64 * 1024 - 7));
        let result = within("an update", STEP, node.update("big", Op::Add(value.into()))).await;
        if let Err(e) = result {
            assert!(store_error(&e).is_some(), "{e}");
            full = true;
            break;
        }
    }
    assert!(full, "the disk never filled");
    std::fs::remove_file(&filler).unwrap();

    // After a failed commit the node retries the store once a second, refusing updates at
    // once in between: a writer that retries gets through within about a second.
    let retried = Instant::now();
    let after = loop {
        let result = within(
            "an update after space was freed",
            STEP,
            node.update("small", Op::Inc(1)),
        )
        .await;
        if result.is_ok() || retried.elapsed() > Duration::from_secs(5) {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read = within(
        "a read of a write committed before the failure",
        STEP,
        node.get_after("small", first, Duration::from_secs(1)),
    )
    .await;
    stop(node).await;
    after.expect("the store still refuses writes after space was freed");
    read.expect("a write committed before the failure is never seen");
    drop(tmpfs);
}

/// A node dropped without `shutdown` stops too: its owner closes the store, so its data
/// directory can be opened again in the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_node_releases_its_data_directory() {
    let dir = TempDir::new().unwrap();
    let node = start("the first start", NodeBuilder::new(dir.path()))
        .await
        .unwrap();
    within("an update", STEP, node.update("kept", Op::Inc(1)))
        .await
        .unwrap();
    drop(node);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match start("a start after the drop", NodeBuilder::new(dir.path())).await {
            Ok(node) => {
                let kept = within("a get", STEP, node.get("kept")).await;
                stop(node).await;
                assert_eq!(kept.map(|o| o.to_string()).as_deref(), Some("1"));
                return;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(
                    matches!(store_error(&e), Some(StoreError::Locked { .. })),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("5 s after the node was dropped: {e}"),
        }
    }
}
