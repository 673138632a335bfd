//! `crdt-node run` as a service: with stdin closed (as under systemd, nohup or a container) it
//! keeps serving its peers and its control socket until SIGTERM, then exits cleanly with every
//! acknowledged write kept. (It used to exit at once, with status 0, when stdin ended.)

mod common;

use std::process::Stdio;

use common::{banner_addr, control, control_until, node_args, trusting_pair, Running};

#[test]
fn a_daemon_serves_control_commands_and_peers_until_sigterm() {
    let (a, b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    let (a_id, _) = trusting_pair(a_dir, b_dir);

    // A: stdin is /dev/null from the start.
    let mut daemon = Running::daemon(&node_args(a_dir, &[]), Stdio::null());
    let addr = banner_addr(&daemon.expect(|l| l.contains("listening on")));

    // Control commands change and read its state; the shell does the quoting.
    let added = control(a_dir, &["add", "cart", "milk"]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert!(added.stdout.starts_with("ok "), "{}", added.stdout);
    assert_eq!(control(a_dir, &["add", "my cart", "oat milk"]).code, 0);
    assert_eq!(control(a_dir, &["inc", "visits", "2"]).code, 0);
    assert_eq!(control(a_dir, &["set", "title", "hello world"]).code, 0);
    let got = control(a_dir, &["get", "my cart"]);
    assert_eq!(got.stdout.trim(), "my cart = {\"oat milk\"}");
    let json = control(a_dir, &["get", "cart", "--json"]).stdout;
    assert_eq!(
        json.trim(),
        r#"{"key":"cart","ok":true,"text":"cart = {\"milk\"}","type":"set","value":["milk"]}"#
    );
    let keys = control(a_dir, &["keys"]).stdout;
    assert!(
        keys.contains("visits (pn-counter) = 2") || keys.contains("visits (g-counter) = 2"),
        "{keys}"
    );
    assert!(
        keys.contains("title (lww-register) = \"hello world\""),
        "{keys}"
    );
    let removed = control(a_dir, &["remove", "my cart", "oat milk"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_eq!(
        control(a_dir, &["get", "my cart"]).stdout.trim(),
        "my cart = {}"
    );
    assert!(
        daemon.wait_exit(std::time::Duration::ZERO).is_none(),
        "it exited"
    );

    // A peer writes through it with an acknowledgement from the daemon.
    let mut peer = Running::start(&node_args(b_dir, &[&addr]));
    peer.expect(|l| l.contains("listening on"));
    peer.send("add --ack 1 --timeout 10000 cart tea");
    let acked = peer.expect(|l| l.starts_with("ok ") || l.starts_with("error"));
    assert!(
        acked.starts_with("ok "),
        "the daemon did not acknowledge: {acked}"
    );
    control_until(a_dir, &["get", "cart"], "\"tea\"");
    peer.quit();

    // A write acknowledged by the control command, then SIGTERM: a clean exit, status 0,
    // and the control socket gone.
    let kept = control(a_dir, &["add", "cart", "kept"]);
    assert!(kept.stdout.starts_with("ok "), "{}", kept.stderr);
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(!a.path().join("control.sock").exists());
    let absent = control(a_dir, &["get", "cart"]);
    assert_eq!(absent.code, 1);
    assert!(
        absent.stderr.contains("no node is running"),
        "{}",
        absent.stderr
    );
    // `status` still names the node, from its identity.
    let status = control(a_dir, &["status"]);
    assert_eq!(status.code, 1);
    assert!(
        status
            .stdout
            .contains(&format!("node {a_id} (not running)")),
        "{}",
        status.stdout
    );

    // Every acknowledged write is in its store.
    let again = Running::daemon(&node_args(a_dir, &[]), Stdio::null());
    again.expect(|l| l.contains("listening on"));
    let cart = control(a_dir, &["get", "cart", "--all"]).stdout;
    for element in ["\"milk\"", "\"tea\"", "\"kept\""] {
        assert!(cart.contains(element), "{element} lost: {cart}");
    }

    // Killed, it leaves its socket behind: the commands say no node runs, and the next start
    // replaces the socket.
    again.kill();
    let stale = control(a_dir, &["keys"]);
    assert_eq!(stale.code, 1);
    assert!(
        stale.stderr.contains("did not stop cleanly"),
        "{}",
        stale.stderr
    );
    let mut third = Running::daemon(&node_args(a_dir, &[]), Stdio::null());
    third.expect(|l| l.contains("listening on"));
    assert!(control(a_dir, &["get", "cart"]).stdout.contains("\"kept\""));
    assert!(third.terminate().success());
}
