//! Nodes over real QUIC on loopback: convergence on every type, refusal of untrusted keys, and
//! disconnection of a trusted peer that sends garbage.

use std::collections::BTreeMap;
use std::time::Duration;

use crdt_core::{Hlc, ReplicaId};
use crdt_net::node::{testing, Identity, Node, NodeBuilder};
use crdt_net::{Message, Object, Op};
use tempfile::TempDir;

mod support;

use support::{eventually, WAIT};

/// A copy of every object at `node`, to compare whole states.
fn world(node: &Node) -> BTreeMap<String, Object> {
    let mut world = BTreeMap::new();
    node.for_each(|key, object| {
        world.insert(key.to_owned(), object.clone());
    })
    .unwrap();
    world
}

/// Starts nodes in fresh directories, each trusting all the others, each dialing the ones
/// started before it.
async fn cluster(n: usize) -> (Vec<Node>, Vec<TempDir>) {
    cluster_with(n, |_, builder| builder).await
}

/// [`cluster`], with node `i`'s builder passed through `configure(i, builder)`.
async fn cluster_with(
    n: usize,
    configure: impl Fn(usize, NodeBuilder) -> NodeBuilder,
) -> (Vec<Node>, Vec<TempDir>) {
    let (dirs, keys) = support::identities(n);
    let mut nodes: Vec<Node> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut builder = support::trusting(dir, i, &keys);
        for node in &nodes {
            builder = builder.peer(node.local_addr());
        }
        nodes.push(configure(i, builder).start().await.unwrap());
    }
    (nodes, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_on_every_type() {
    let (nodes, _dirs) = cluster(3).await;
    let mut clock = Hlc::new(60_000);
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("from-{i}");
        let now = 1_000 + i as u64;
        let ops = [
            ("views", Op::Inc(i as u64 + 1)),
            ("stock", Op::PnDec(2)),
            ("tags", Op::Add(name.clone().into())),
            ("title", Op::Lww(clock.now(now), name.clone().into())),
            ("status", Op::Mv(name.clone().into())),
            (
                "doc",
                Op::Update(name.clone().into(), Box::new(Op::Add("x".into()))),
            ),
        ];
        for (key, op) in ops {
            node.update(key, op).await.unwrap();
        }
    }
    nodes[0]
        .update("tags", Op::Remove("from-0".into()))
        .await
        .unwrap();
    // Two nested changes in one update, with crdt-core's own mutators: a write to a new field
    // and the removal of the field node 0 made itself.
    let me = nodes[0].replica_id();
    nodes[0]
        .update_with("doc", move |doc| {
            let Object::Map(map) = doc else {
                return Err(doc.type_name());
            };
            let mut delta = map.update(me, "title".into(), |v| {
                v.apply(me, &Op::Mv("t".into())).unwrap()
            });
            crdt_core::Crdt::merge(&mut delta, &map.remove("from-0".as_bytes()));
            Ok(Object::Map(delta))
        })
        .await
        .unwrap();
    eventually("all three hold the same objects", async || {
        let first = world(&nodes[0]);
        let mut all_equal = first.len() == 6;
        for node in &nodes[1..] {
            all_equal &= world(node) == first;
        }
        all_equal
    })
    .await;
    let views = nodes[2].get("views").await.map(|o| o.to_string());
    assert_eq!(views.as_deref(), Some("6"));
    let tags = nodes[1].get("tags").await.map(|o| o.to_string());
    assert_eq!(tags.as_deref(), Some(r#"{"from-1", "from-2"}"#));
    let doc = nodes[2].get("doc").await.map(|o| o.to_string()).unwrap();
    assert!(doc.contains("title") && !doc.contains("from-0"), "{doc}");
    for node in nodes {
        node.shutdown().await;
    }
}

/// Peer sampling on real nodes: six nodes gossiping within views of two peers each (each
/// started knowing only the ones before it) still bring every write to every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_gossiping_within_partial_views_converge() {
    let (nodes, _dirs) = cluster_with(6, |_, builder| builder.view(2).fanout(1)).await;
    for (i, node) in nodes.iter().enumerate() {
        let me = format!("node-{i}");
        node.set::<String>("members").add(&me).await.unwrap();
    }
    for (i, node) in nodes.iter().enumerate() {
        let members = node.set::<String>("members");
        eventually(&format!("node {i} holds all six members"), async || {
            members.len_now().unwrap() == 6
        })
        .await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_node_can_neither_read_nor_write() {
    let (nodes, _dirs) = cluster(2).await;
    let outsider_dir = TempDir::new().unwrap();
    // The outsider trusts the cluster, but the cluster does not trust it.
    let mut builder =
        NodeBuilder::new(outsider_dir.path()).gossip_interval(Duration::from_millis(100));
    for node in &nodes {
        builder = builder.trust(node.id()).peer(node.local_addr());
    }
    let outsider = builder.start().await.unwrap();
    let started = std::time::Instant::now();
    outsider.update("secret", Op::Inc(1)).await.unwrap();
    nodes[0].update("shared", Op::Inc(1)).await.unwrap();
    eventually("the trusted pair syncs", async || {
        nodes[1].get("shared").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &nodes {
        assert_eq!(
            node.get("secret").await,
            None,
            "the outsider's write leaked in"
        );
        assert!(node
            .peers()
            .await
            .iter()
            .all(|p| p.info.id != outsider.id()));
    }
    assert_eq!(
        outsider.get("shared").await,
        None,
        "the outsider read the cluster's data"
    );
    // TLS 1.3 lets a client finish its half of the handshake before the server checks the client
    // certificate, so the outsider may list the nodes it dialed; none ever answered it.
    assert!(outsider.peers().await.iter().all(|p| !p.up));
    // Refused, the outsider backs off (doubling from 200 ms) instead of redialing every 200 ms.
    let dials = outsider.metrics().await.dials;
    println!(
        "the outsider dialed {dials} times in {:?}",
        started.elapsed()
    );
    assert!(
        dials <= 2 * 7,
        "{dials} dials to 2 nodes in {:?}",
        started.elapsed()
    );
    outsider.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_is_disconnected_and_the_others_keep_syncing() {
    let (nodes, _dirs) = cluster(2).await;
    let rogue_dir = TempDir::new().unwrap();
    let rogue = Identity::load_or_create(rogue_dir.path()).unwrap().id();
    nodes[0].trust_list().set(rogue, true).unwrap();
    let before = world(&nodes[0]);

    // A valid message first, then garbage.
    let frames = vec![Message::InSync.encode(), vec![1, 0xde, 0xad, 0xbe, 0xef]];
    let closed = testing::send_raw_frames(
        rogue_dir.path(),
        nodes[0].id(),
        nodes[0].local_addr(),
        frames,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let reason = closed.expect("the node closes the connection");
    assert!(
        reason.contains("protocol error"),
        "closed for another reason: {reason}"
    );
    assert_eq!(world(&nodes[0]), before);

    nodes[1].update("after", Op::Inc(1)).await.unwrap();
    eventually("the honest peers still sync", async || {
        nodes[0].get("after").await.is_some()
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = TempDir::new().unwrap();
    let node = NodeBuilder::new(dir.path()).start().await.unwrap();
    node.update("kept", Op::Add("a".into())).await.unwrap();
    let id = node.id();
    node.shutdown().await;
    let node = NodeBuilder::new(dir.path()).start().await.unwrap();
    assert_eq!(node.id(), id, "the identity is kept");
    assert!(matches!(node.get("kept").await, Some(Object::Set(s)) if s.len() == 1));
    node.shutdown().await;

    // A snapshot left by an earlier version is imported on first start, once.
    let old = TempDir::new().unwrap();
    let mut durable = crdt_net::Durable::default();
    let mut replica = crdt_net::Replica::new(crdt_net::Config::new(ReplicaId::new(7)));
    replica.update("old", &Op::Inc(4)).unwrap();
    durable.objects = replica.objects().clone();
    durable.seen = replica.seen().clone();
    std::fs::write(
        old.path().join("state.bin"),
        crdt_core::codec::encode(&durable),
    )
    .unwrap();
    let node = NodeBuilder::new(old.path()).start().await.unwrap();
    assert_eq!(
        node.get("old").await.map(|o| o.to_string()),
        Some("4".into())
    );
    node.shutdown().await;
    assert!(old.path().join("state.bin.imported").exists());

    // An unreadable snapshot is an error, never silently dropped.
    let bad = TempDir::new().unwrap();
    std::fs::write(bad.path().join("state.bin"), b"\x01garbage").unwrap();
    let err = NodeBuilder::new(bad.path()).start().await.unwrap_err();
    assert!(err.to_string().contains("unreadable"), "{err}");
}

/// Needs multicast on a non-loopback interface, which sandboxed CI machines may lack; run it on
/// a LAN with `cargo test -p crdt-net --test quic -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs LAN multicast"]
async fn nodes_find_each_other_by_mdns() {
    let dirs: Vec<TempDir> = (0..2).map(|_| TempDir::new().unwrap()).collect();
    let ids: Vec<ReplicaId> = dirs
        .iter()
        .map(|d| Identity::load_or_create(d.path()).unwrap().id())
        .collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let node = NodeBuilder::new(dir.path())
            .listen("0.0.0.0:0".parse().unwrap())
            .trust(ids[1 - i])
            .gossip_interval(Duration::from_millis(100))
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    nodes[0].update("found", Op::Inc(1)).await.unwrap();
    eventually(
        "the second node gets the update, with no static peers",
        async || nodes[1].get("found").await.is_some(),
    )
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// A node whose clock runs 10 minutes ahead writes a register; the others refuse that write
/// (it is stamped beyond their 1 s drift bound), count the refusals, and a write made after it
/// at a correct clock is what they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_far_ahead_cannot_win_over_later_writes() {
    let ten_minutes = 10 * 60 * 1000;
    let (nodes, _dirs) = cluster_with(3, |i, builder| {
        let builder = builder.max_drift(Duration::from_secs(1));
        if i == 2 {
            builder.clock_offset(ten_minutes)
        } else {
            builder
        }
    })
    .await;
    let mut events = nodes[0].subscribe();
    eventually("all peers are up", async || {
        nodes[0].peers().await.iter().filter(|p| p.up).count() == 2
    })
    .await;
    nodes[2]
        .register::<String>("leader")
        .set(&"from-the-future".into())
        .await
        .unwrap();
    eventually("the future write is refused at node 0", async || {
        nodes[0].metrics().await.stats.drift_refused > 0
    })
    .await;
    nodes[1]
        .register::<String>("leader")
        .set(&"later".into())
        .await
        .unwrap();
    eventually("nodes 0 and 1 hold the later write", async || {
        let mut all = true;
        for node in &nodes[..2] {
            all &= node.get("leader").await.map(|o| o.to_string()) == Some("\"later\"".into());
        }
        all
    })
    .await;
    // Gossip goes on for a while: the future write stays refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in &nodes[..2] {
        assert_eq!(
            node.get("leader").await.map(|o| o.to_string()),
            Some("\"later\"".into())
        );
        assert!(node.metrics().await.stats.drift_refused > 0);
    }
    let mut reported = false;
    while let Ok(event) = events.try_recv() {
        if let crdt_net::Event::ClockDrift { peer, ahead_ms } = event {
            assert_eq!(peer, nodes[2].id());
            assert!(ahead_ms > 9 * 60 * 1000, "{ahead_ms}");
            reported = true;
        }
    }
    assert!(reported, "no ClockDrift event");
    for node in nodes {
        node.shutdown().await;
    }
}

/// N = 3, W = 2 (`Ack::Peers(1)`), R = 2 (`ReadLevel::Peers(1)`): a read at a node that has
/// not received the write still returns it, because it merges a peer that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_read_sees_a_quorum_write() {
    use crdt_net::node::{Ack, NodeError, ReadLevel};
    let (nodes, _dirs) = cluster_with(3, |_, builder| {
        builder.gossip_interval(Duration::from_millis(1_000))
    })
    .await;
    eventually("all peers are up", async || {
        let mut all = true;
        for node in &nodes {
            all &= node.peers().await.iter().filter(|p| p.up).count() == 2;
        }
        all
    })
    .await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    c.isolate_from(&[a.id(), b.id()]);
    a.update_acked("cart", Op::Add("milk".into()), Ack::Peers(1), WAIT)
        .await
        .unwrap();
    assert_eq!(c.get("cart").await, None, "C is cut off");
    // C cannot reach anyone: the read times out, saying who answered.
    let err = c
        .read("cart", ReadLevel::Peers(1), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NodeError::ReadTimeout {
                answered: 1,
                wanted: 2
            }
        ),
        "{err}"
    );
    // Reachable again, but only to B: the quorum read merges B's copy.
    c.isolate_from(&[a.id()]);
    let cart = c
        .read("cart", ReadLevel::Peers(1), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cart.map(|o| o.to_string()), Some("{\"milk\"}".into()));
    for node in nodes {
        node.shutdown().await;
    }
}
