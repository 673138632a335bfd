//! Two `crdt-node` processes, driven through stdin, see each other's edits over QUIC.

mod common;

use common::{trusting_pair, Running};

#[test]
fn two_nodes_see_each_others_edits() {
    let (a, b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    trusting_pair(a_dir, b_dir);

    let mut first = Running::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        a_dir,
        "--gossip-ms",
        "100",
    ]);
    let banner = first.expect(|l| l.contains("listening on"));
    let addr = banner.rsplit(' ').next().unwrap().to_owned();
    let mut second = Running::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &addr,
        "--data-dir",
        b_dir,
        "--gossip-ms",
        "100",
    ]);
    second.expect(|l| l.contains("listening on"));

    second.send("add groceries milk");
    first.wait_for("groceries", "\"milk\"");
    first.send("inc visits 2");
    first.send("set title hello");
    second.wait_for("visits", "= 2");
    second.wait_for("title", "\"hello\"");
    first.quit();
    second.quit();
}
