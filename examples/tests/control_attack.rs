//! The service mode attacked as a careless or hostile local user would: output piped into a
//! reader that leaves, clients that hang up while their request waits, oversized or odd
//! arguments, a data directory too deep for a socket, and odd configuration files.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{control, control_until, init, node_args, Running, BIN};

/// A node of its own in a fresh data directory, started with stdin closed.
fn lone_daemon() -> (tempfile::TempDir, Running) {
    let dir = tempfile::TempDir::new().unwrap();
    init(dir.path().to_str().unwrap());
    let node = Running::daemon(&node_args(dir.path().to_str().unwrap(), &[]), Stdio::null());
    node.expect(|l| l.contains("listening on"));
    (dir, node)
}

/// A pipe whose reading end is already closed: writing to it fails (EPIPE).
fn reader_gone() -> Stdio {
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

/// Waits (10 s at most) for `child` to exit.
fn exited(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn output_piped_into_a_reader_that_left_ends_quietly() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    assert_eq!(control(dir_str, &["add", "cart", "milk"]).code, 0);

    // `crdt-node keys | head -0`: the answer cannot be printed; no panic.
    for args in [&["keys"][..], &["get", "cart", "--json"], &["status"]] {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--data-dir", dir_str])
            .stdout(reader_gone())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = exited(&mut child);
        let stderr = stderr_of(&mut child);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(status.code(), Some(101), "{args:?}: {stderr}");
    }

    // `crdt-node watch | head -1`: once the reader leaves, the next change ends the watch.
    let mut watcher = Command::new(BIN)
        .args(["watch", "--data-dir", dir_str])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(watcher.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap(); // Dropped here: the reader leaves.
    assert!(first.contains("watching"), "{first}");
    assert_eq!(control(dir_str, &["add", "cart", "tea"]).code, 0);
    let status = exited(&mut watcher);
    let stderr = stderr_of(&mut watcher);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status}: {stderr}");
    assert!(node.terminate().success());

    // A daemon whose stdout is a pipe nobody reads any more (a `| tee` that was killed)
    // serves on instead of dying at its banner.
    let log = dir.path().join("stderr.log");
    let mut daemon = Command::new(BIN)
        .args(node_args(dir_str, &[]))
        .stdin(Stdio::null())
        .stdout(reader_gone())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = control_until(dir_str, &["get", "cart"], "\"tea\"");
    assert!(status.contains("milk"), "{status}");
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    let pid = daemon.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(exited(&mut daemon).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "{text}");
}

