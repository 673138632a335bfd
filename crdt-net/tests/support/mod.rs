//! What the tests of nodes on loopback QUIC share: fresh identities that trust each other, and
//! waiting (bounded) for a condition.

// Each test file uses its own part of this.
#![allow(dead_code)]

use std::time::Duration;

use crdt_net::node::{Fingerprint, Identity, NodeBuilder};
use tempfile::TempDir;

/// How long anything in these tests may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(20);

/// `n` fresh data directories, each with its identity made, and each one's fingerprint.
pub fn identities(n: usize) -> (Vec<TempDir>, Vec<Fingerprint>) {
    let dirs: Vec<TempDir> = (0..n).map(|_| TempDir::new().unwrap()).collect();
    let keys = dirs
        .iter()
        .map(|d| {
            Identity::load_or_create(d.path())
                .unwrap()
                .fingerprint()
                .unwrap()
        })
        .collect();
    (dirs, keys)
}

/// A builder for node `i` of [`identities`]: gossip every 100 ms, trusting every other key.
pub fn trusting(dir: &TempDir, i: usize, keys: &[Fingerprint]) -> NodeBuilder {
    let mut builder = NodeBuilder::new(dir.path()).gossip_interval(Duration::from_millis(100));
    for (j, key) in keys.iter().enumerate() {
        if j != i {
            builder = builder.trust_key(*key);
        }
    }
    builder
}

/// Waits until `check` holds, polling every 50 ms; panics naming `what` after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Checks the golden vectors of `docs/wire-format.md` (`doc`) in blocks tagged `tag` against
/// `cases` both ways: each case encodes to its block's bytes, the bytes decode to the case,
/// and the document has no block no case checks.
pub fn golden_vectors_match<M, E>(
    doc: &str,
    tag: &str,
    cases: Vec<(&str, M)>,
    encode: impl Fn(&M) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<M, E>,
) where
    M: PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    let blocks = crdt_core::laws::hex_blocks(doc, tag);
    for (name, message) in &cases {
        let encoded = encode(message);
        let hex: Vec<String> = encoded.iter().map(|b| format!("{b:02x}")).collect();
        let Some((_, bytes)) = blocks.iter().find(|(n, _)| n == name) else {
            panic!("docs/wire-format.md lacks {tag} {name}: {}", hex.join(" "));
        };
        assert_eq!(
            bytes,
            &encoded,
            "{name}: document vs encoder ({})",
            hex.join(" ")
        );
        assert_eq!(decode(bytes).as_ref().ok(), Some(message), "{name}");
    }
    assert_eq!(
        blocks.len(),
        cases.len(),
        "the document has {tag} vectors no test checks"
    );
}
