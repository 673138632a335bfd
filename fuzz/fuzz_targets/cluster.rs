//! Peers' messages to a cluster node (`crdt_net::cluster::Cluster`) holding data: raw bytes
//! after the cluster version byte, several messages per input split at 0xFE bytes, from two
//! peers in turn.
//!
//! Checked: no panic on any message; each refused message is an error the driver would
//! disconnect on; after all of them the node still commits, and still applies and
//! acknowledges a write of its own.
//!
//! `cargo +nightly fuzz run -O -s none cluster -- -max_len=1048576`.
#![no_main]

use std::collections::BTreeMap;

use crdt_core::ReplicaId;
use crdt_net::cluster::{Cluster, ClusterConfig, ClusterEvent, PartitionId, CLUSTER_VERSION};
use crdt_net::store::MemStore;
use crdt_net::Op;
use libfuzzer_sys::fuzz_target;

const ME: ReplicaId = ReplicaId::new(1);

fuzz_target!(|data: &[u8]| {
    let mut config = ClusterConfig::new(ME);
    config.partition_bits = 3;
    config.seeds = vec![ReplicaId::new(2), ReplicaId::new(3)];
    let mut node = Cluster::new(config);
    let mut stores: BTreeMap<PartitionId, MemStore> = BTreeMap::new();
    for (key, op) in [("n", Op::Inc(3)), ("s", Op::Add(b"x".to_vec()))] {
        let _ = node.write(0, key, &op, 1);
    }
    node.persist(&mut stores).expect("memory stores never fail");
    let mut now = 1;
    for (i, message) in data.split(|b| *b == 0xfe).take(256).enumerate() {
        let from = ReplicaId::new(2 + (i % 2) as u64);
        let bytes = [&[CLUSTER_VERSION], message].concat();
        let _ = node.handle_message(now, from, &bytes);
        now += 7;
        node.handle_timeout(now);
        node.persist(&mut stores).expect("memory stores never fail");
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
    }
    // A node that no longer applies its own writes would be a denial of service.
    if let Ok(id) = node.write(now, "after", &Op::Inc(1), 1) {
        node.persist(&mut stores).expect("memory stores never fail");
        let answered = std::iter::from_fn(|| node.poll_event())
            .any(|e| matches!(e, ClusterEvent::Written { id: done, .. } if done == id));
        let forwarded = node.get("after").is_none();
        assert!(answered || forwarded, "the node stopped applying its own writes");
    }
});
