//! Cluster nodes on real QUIC sockets on loopback, with real stores in temporary directories:
//! writes and reads at levels from any node, a replica stopped and restarted (its data
//! directory kept), and a trusted peer sending garbage is disconnected while the node keeps
//! serving.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crdt_core::HlcTimestamp;
use crdt_net::cluster::ClusterMessage;
use crdt_net::node::{testing, ClusterNode, ClusterNodeBuilder, Fingerprint, NodeError};
use crdt_net::{Object, Op};

mod support;

const NODES: usize = 4;

async fn start(
    dir: &Path,
    keys: &[Fingerprint],
    me: usize,
    peers: &[SocketAddr],
    listen: SocketAddr,
) -> ClusterNode {
    let mut builder = ClusterNodeBuilder::new(dir)
        .listen(listen)
        .partition_bits(4)
        .gossip_interval(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(3));
    for (j, key) in keys.iter().enumerate() {
        if j != me {
            builder = builder.trust_key(*key);
        }
    }
    for &peer in peers {
        builder = builder.peer(peer);
    }
    builder.start().await.expect("node starts")
}

fn node(nodes: &[Option<ClusterNode>], i: usize) -> Option<&ClusterNode> {
    nodes.get(i).and_then(Option::as_ref)
}

fn lww(version: u64) -> Op {
    Op::Lww(
        HlcTimestamp::new(version, 0),
        version.to_be_bytes().to_vec(),
    )
}

fn version(object: Option<Object>) -> Option<u64> {
    let Some(Object::Lww(register)) = object else {
        return None;
    };
    Some(u64::from_be_bytes(
        register.get()?.get(..8)?.try_into().ok()?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_at_levels_survive_a_replica_restart_and_a_lying_peer() {
    let (dirs, keys) = support::identities(NODES);
    let mut nodes: Vec<Option<ClusterNode>> = Vec::new();
    let mut addrs = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let node = start(dir.path(), &keys, i, &addrs, "127.0.0.1:0".parse().unwrap()).await;
        addrs.push(node.local_addr());
        nodes.push(Some(node));
    }
    let all = |nodes: &[Option<ClusterNode>]| nodes.iter().flatten().count();
    support::eventually("four members everywhere", async || {
        for node in nodes.iter().flatten() {
            if node.members().await.map_or(true, |m| m.len() != NODES) {
                return false;
            }
        }
        true
    })
    .await;
    assert_eq!(all(&nodes), NODES);
    let ids: Vec<_> = nodes.iter().flatten().map(ClusterNode::id).collect();
    let key = "item:1";
    let (owners, _) = node(&nodes, 0).unwrap().replicas_of(key).await.unwrap();
    let replicas: Vec<usize> = owners
        .iter()
        .filter_map(|o| ids.iter().position(|i| i == o))
        .collect();
    let outsider = (0..NODES).find(|n| !replicas.contains(n)).unwrap();

    // A write at the node that holds no copy is forwarded; W = 2 and R = 2 overlap (N = 3).
    let held = node(&nodes, outsider)
        .unwrap()
        .write(key, lww(1), 2)
        .await
        .unwrap();
    assert!(held >= 2);
    for &r in &replicas {
        let read = node(&nodes, r).unwrap().read(key, 2).await.unwrap();
        assert_eq!(version(read), Some(1), "R = 2 at replica {r}");
    }
    assert!(!node(&nodes, outsider).unwrap().holds(key).await.unwrap());
    assert!(matches!(
        node(&nodes, outsider).unwrap().write(key, lww(2), 4).await,
        Err(NodeError::Request(_))
    ));

    // A replica stops; writes go on at W = 2; it restarts from its directory and catches up.
    let stopped = replicas[2];
    nodes[stopped].take().unwrap().shutdown().await;
    for v in 2..=20 {
        let mut tries = 0;
        while node(&nodes, outsider)
            .unwrap()
            .write(key, lww(v), 2)
            .await
            .is_err()
        {
            tries += 1;
            assert!(
                tries < 5,
                "W = 2 write {v} failed with one replica of three down"
            );
        }
    }
    let earlier: Vec<SocketAddr> = addrs[..stopped].to_vec();
    nodes[stopped] = Some(
        start(
            dirs[stopped].path(),
            &keys,
            stopped,
            &earlier,
            addrs[stopped],
        )
        .await,
    );
    support::eventually("the restarted replica to catch up", async || {
        let n = node(&nodes, stopped).unwrap();
        version(n.read(key, 1).await.ok().flatten()) == Some(20)
    })
    .await;

    // A trusted peer (node 0's identity, from another process's point of view) sends garbage:
    // the connection is closed and the node keeps serving.
    let victim = replicas[0];
    let liar = dirs[(victim + 1) % NODES].path();
    let mut frames = vec![vec![0xff, 0x00, 0x01]];
    frames.push(
        ClusterMessage::Partition {
            partition: 1 << 20,
            message: vec![5, 1],
        }
        .encode(),
    );
    let closed = testing::send_raw_cluster_frames(
        liar,
        ids[victim],
        addrs[victim],
        frames,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        closed.is_some_and(|reason| reason.contains("protocol error")),
        "the liar was disconnected"
    );
    let held = node(&nodes, outsider)
        .unwrap()
        .write(key, lww(21), 3)
        .await
        .unwrap();
    assert_eq!(held, 3);
    assert_eq!(
        version(node(&nodes, victim).unwrap().read(key, 3).await.unwrap()),
        Some(21)
    );
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}
