//! `crdt-node run` as a service: with stdin closed (as under systemd, nohup or a container) it
//! keeps serving its peers until SIGTERM, then exits cleanly with what it received kept.
//! (It used to exit at once, with status 0, when stdin ended.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{trusting_pair, Running, BIN};

#[test]
fn a_node_with_stdin_closed_serves_until_sigterm() {
    let (a, b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    trusting_pair(a_dir, b_dir);

    // A: stdin is /dev/null from the start.
    let mut daemon = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            a_dir,
            "--gossip-ms",
            "100",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(daemon.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    assert!(banner.contains("listening on"), "banner: {banner:?}");
    let addr = banner.trim().rsplit(' ').next().unwrap().to_owned();

    // Well after stdin ended, it still runs and answers B.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the node exited when stdin ended"
    );
    let mut peer = Running::start(&[
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
    peer.expect(|l| l.contains("listening on"));
    peer.send("add --ack 1 --timeout 10000 cart milk");
    let acked = peer.expect(|l| l.starts_with("ok ") || l.starts_with("error"));
    assert!(
        acked.starts_with("ok "),
        "the daemon did not acknowledge: {acked}"
    );
    peer.send("get --read 1 cart");
    let read = peer.expect(|l| l.starts_with("cart ") || l.starts_with("error"));
    assert!(
        read.contains("\"milk\""),
        "quorum read through the daemon: {read}"
    );
    peer.quit();

    // SIGTERM: a clean exit, status 0.
    let pid = daemon.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");

    // The acknowledged write is in its store.
    let mut again = Running::start(&["run", "--listen", "127.0.0.1:0", "--data-dir", a_dir]);
    again.expect(|l| l.contains("listening on"));
    again.wait_for("cart", "\"milk\"");
    again.quit();
}
