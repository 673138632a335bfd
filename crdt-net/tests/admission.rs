//! A running node's trust list changed through the `Node` API, peers dialed by host name, and
//! catch-up progress: real QUIC on loopback.

use std::time::Duration;

use crdt_net::node::{Identity, Node, NodeBuilder};
use crdt_net::{Event, Op};
use tempfile::TempDir;

mod support;

use support::{eventually, WAIT};

fn builder(dir: &TempDir) -> NodeBuilder {
    NodeBuilder::new(dir.path())
        .gossip_interval(Duration::from_millis(100))
        .mdns(false)
}

async fn is_up(node: &Node, peer: &Node) -> bool {
    node.peers()
        .await
        .iter()
        .any(|p| p.info.id == peer.id() && p.up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_admits_at_once_and_untrust_drops_the_connection() {
    let (a_dir, b_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a_key = Identity::load_or_create(a_dir.path())
        .unwrap()
        .fingerprint()
        .unwrap();
    let b = builder(&b_dir).trust_key(a_key).start().await.unwrap();
    // A dials B but does not trust it: every handshake fails.
    let a = builder(&a_dir).peer(b.local_addr()).start().await.unwrap();
    let mut events = a.subscribe();
    eventually("A has dialed B a few times", async || {
        a.metrics().await.dials >= 2
    })
    .await;
    assert!(!is_up(&a, &b).await);

    a.trust_key(b.fingerprint()).unwrap();
    let up = tokio::time::timeout(WAIT, async {
        while let Ok(event) = events.recv().await {
            if event == Event::PeerUp(b.id()) {
                return;
            }
        }
    });
    up.await.expect("B was admitted without a restart");
    b.update("cart", Op::Add("milk".into())).await.unwrap();
    eventually("B's write reaches A", async || {
        a.get("cart").await.is_some()
    })
    .await;

    assert_eq!(a.untrust(b.id()).unwrap(), 1, "one connection closed");
    assert!(!a.trust_list().contains(b.id()));
    eventually("B sees A down", async || !is_up(&b, &a).await).await;
    // Nothing of B's is admitted again: a second untrust finds nothing to close.
    assert_eq!(a.untrust_key(b.fingerprint()).unwrap(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_by_host_name_is_dialed_and_its_state_caught_up() {
    let (a_dir, b_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let key = |dir: &TempDir| {
        Identity::load_or_create(dir.path())
            .unwrap()
            .fingerprint()
            .unwrap()
    };
    let (a_key, b_key) = (key(&a_dir), key(&b_dir));
    let b = builder(&b_dir).trust_key(a_key).start().await.unwrap();
    for i in 0..50 {
        b.update(&format!("k{i}"), Op::Add("x".into()))
            .await
            .unwrap();
    }
    let name = format!("localhost:{}", b.local_addr().port());
    let a = builder(&a_dir)
        .trust_key(b_key)
        .peer_named(name)
        // A name that resolves to nothing is retried, and keeps nothing else from working.
        .peer_named("no-such-host.invalid:4433")
        .start()
        .await
        .unwrap();
    eventually("A has B's 50 objects", async || {
        a.keys().unwrap().len() == 50
    })
    .await;
    eventually("A's catch-up is finished", async || {
        a.catch_up().iter().any(|c| c.peer == b.id() && c.finished)
    })
    .await;
    let progress = a.catch_up();
    let from_b = progress.iter().find(|c| c.peer == b.id()).unwrap();
    assert!(
        from_b.chunks >= 1 && from_b.objects >= 1 && from_b.bytes > 0,
        "{from_b:?}"
    );
    // B's cursor walked all of B's keys, as it said in its chunks.
    assert_eq!((from_b.walked, from_b.keys), (50, 50), "{from_b:?}");
    assert_eq!(from_b.walked_percent(), 100);
    a.shutdown().await;
    b.shutdown().await;
}
