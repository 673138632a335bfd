//! Two `crdt-node` processes, driven through stdin, see each other's edits over QUIC.

mod common;

use common::{banner_addr, node_args, trusting_pair, Running};

#[test]
fn two_nodes_see_each_others_edits() {
    let (a, b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    trusting_pair(a_dir, b_dir);

    let mut first = Running::start(&node_args(a_dir, &[]));
    let addr = banner_addr(&first.expect(|l| l.contains("listening on")));
    let mut second = Running::start(&node_args(b_dir, &[&addr]));
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

/// A second process on a data directory in use is refused with a clear error and a non-zero
/// exit, and the first keeps its data (two processes sharing one identity would issue the same
/// dots).
#[test]
fn a_second_process_on_one_data_directory_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let dir = dir.path().to_str().unwrap();
    common::cli(&["init", "--data-dir", dir]);
    let run = ["run", "--listen", "127.0.0.1:0", "--data-dir", dir];
    let mut first = Running::start(&run);
    first.expect(|l| l.contains("listening on"));
    first.send("add kept a");
    first.expect(|l| l.starts_with("ok "));

    let second = std::process::Command::new(common::BIN)
        .args(run)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second process ran");
    assert!(
        stderr.contains("in use by another process"),
        "unclear error: {stderr}"
    );
    first.wait_for("kept", "{\"a\"}");
    first.quit();
}
