//! The service mode attacked as a careless or hostile local user would: output piped into a
//! reader that leaves, clients that hang up while their request waits, oversized or odd
//! arguments, a data directory too deep for a socket, and odd configuration files.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{control, control_until, init, lone_daemon, node_args, raw, BIN};

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

/// Waits (10 s at most) for a `run` that must refuse to start; kills it if it runs.
fn start_refused(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`run` still running after 10 s: it should have refused to start");
        }
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

#[test]
fn a_client_that_leaves_while_its_request_waits_frees_its_slot() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    let socket = dir.path().join("control.sock");
    // Every slot taken by a request that waits an hour (for a peer this node does not
    // have), its client gone at once.
    for i in 0..32 {
        let mut stream = UnixStream::connect(&socket).unwrap();
        let line = if i % 2 == 0 {
            r#"{"op":"add","key":"k","value":"v","wait":{"ack":1,"timeout_ms":3600000}}"#
        } else {
            r#"{"op":"get","key":"k","read":1,"timeout_ms":3600000}"#
        };
        writeln!(stream, "{line}").unwrap();
    }
    // The node notices, serves others again, and stops waiting for those acknowledgements.
    control_until(dir_str, &["status", "--json"], "\"pending_acks\":0");

    // A client that shut only its writing side after its request still gets the answer,
    // also one that waits.
    for (line, says) in [
        (r#"{"op":"add","key":"cart","value":"milk"}"#, "\"ok\":true"),
        (
            r#"{"op":"get","key":"cart","read":1,"timeout_ms":300}"#,
            "\"timeout\"",
        ),
    ] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        writeln!(stream, "{line}").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).unwrap();
        assert!(answer.contains(says), "{line}: {answer:?}");
    }
    let mut stream = UnixStream::connect(&socket).unwrap();
    let got = raw(&mut stream, br#"{"op":"get","key":"cart"}"#);
    assert_eq!(got["value"], serde_json::json!(["milk"]), "{got}");
    assert!(node.terminate().success());
}

#[test]
fn a_data_directory_too_deep_for_a_socket_is_a_clear_error_everywhere() {
    let root = tempfile::TempDir::new().unwrap();
    let deep = root.path().join("d".repeat(60)).join("e".repeat(60));
    let deep_str = deep.to_str().unwrap();
    let (_, fingerprint) = init(deep_str);
    let run = Command::new(BIN)
        .args(node_args(deep_str, &[]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("too long for a Unix socket"), "{stderr}");
    // The control commands say the same, not the socket call's error.
    for args in [&["add", "cart", "milk"][..], &["status"]] {
        let answer = control(deep_str, args);
        assert_eq!(answer.code, 1, "{args:?}: {}", answer.stderr);
        assert!(
            answer.stderr.contains("too long for a Unix socket"),
            "{args:?}: {}",
            answer.stderr
        );
    }
    // No node can run there, so `trust` edits the file as for a stopped node.
    let trusted = control(deep_str, &["trust", &fingerprint]);
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    let file = std::fs::read_to_string(deep.join("trusted")).unwrap();
    assert!(file.contains(&fingerprint), "{file}");
}

#[test]
fn a_huge_argument_is_not_echoed_back_whole() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    // On the command line (an argument is at most 128 KiB on Linux).
    let long = "a".repeat(100_000);
    let answer = control(dir_str, &["trust", &long]);
    assert_eq!(answer.code, 1, "{}", answer.stdout);
    assert!(
        answer.stderr.contains("not a fingerprint"),
        "{}",
        answer.stderr
    );
    assert!(answer.stderr.len() < 1000, "{} bytes", answer.stderr.len());
    // On the socket: a megabyte where a fingerprint, an op, a field or a level goes.
    let mega = "a".repeat(1 << 20);
    let mut stream = UnixStream::connect(dir.path().join("control.sock")).unwrap();
    for line in [
        format!(r#"{{"op":"trust","peer":"{mega}"}}"#),
        format!(r#"{{"op":"untrust","peer":"{mega}"}}"#),
        format!(r#"{{"op":"{mega}"}}"#),
        format!(r#"{{"op":"keys","{mega}":1}}"#),
        format!(r#"{{"op":"add","key":"k","value":"v","wait":{{"ack":"{mega}"}}}}"#),
    ] {
        let answer = raw(&mut stream, line.as_bytes());
        assert_eq!(answer["error"]["kind"], "bad_request");
        let text = answer.to_string();
        assert!(text.len() < 2000, "{} bytes: {}", text.len(), &text[..200]);
    }
    assert!(node.terminate().success());
}

#[test]
fn a_config_file_that_is_no_regular_file_is_refused_at_once() {
    let dir = tempfile::TempDir::new().unwrap();
    let dir_str = dir.path().to_str().unwrap();
    init(dir_str);
    let config = dir.path().join("config.toml");
    std::fs::remove_file(&config).unwrap();
    // A FIFO would block the start for good; a directory is no file either.
    let made = Command::new("mkfifo").arg(&config).status().unwrap();
    assert!(made.success());
    for second in [false, true] {
        if second {
            std::fs::remove_file(&config).unwrap();
            std::fs::create_dir(&config).unwrap();
        }
        let mut run = Command::new(BIN)
            .args(node_args(dir_str, &[]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = start_refused(&mut run);
        let stderr = stderr_of(&mut run);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("config.toml"), "{stderr}");
    }
}

#[test]
fn watchers_left_open_do_not_keep_commands_out() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    let socket = dir.path().join("control.sock");
    let watch = || {
        let mut stream = UnixStream::connect(&socket).unwrap();
        let answer = raw(&mut stream, br#"{"op":"watch"}"#);
        (stream, answer)
    };
    let watchers: Vec<UnixStream> = (0..32)
        .map(|_| {
            let (stream, answer) = watch();
            assert_eq!(answer["ok"], true, "{answer}");
            stream
        })
        .collect();
    // Commands are still served, beside as many watches as there are command slots.
    let status = control(dir_str, &["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(control(dir_str, &["add", "cart", "milk"]).code, 0);
    // One watch too many is told so.
    let (_, answer) = watch();
    assert_eq!(answer["error"]["kind"], "busy", "{answer}");
    // The watchers see the change.
    let mut line = String::new();
    BufReader::new(&watchers[31]).read_line(&mut line).unwrap();
    assert!(line.contains("\"cart\""), "{line}");
    // Once they leave, a watch is served again.
    drop(watchers);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, answer) = watch();
        if answer["ok"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "still busy: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.terminate().success());
}

#[test]
fn silent_connections_make_room_when_every_slot_is_taken() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    let socket = dir.path().join("control.sock");
    // Every slot taken by a connection that never sends (a script leaking its sockets, or
    // a client that connects and stalls); each was idle for 5 minutes before it was closed.
    let silent: Vec<UnixStream> = (0..32)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let answer = control_until(dir_str, &["status"], "fingerprint");
    assert!(answer.contains("node "), "{answer}");
    // Some silent connection was closed to make room.
    let closed = silent.into_iter().any(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        matches!(std::io::Read::read(&mut s, &mut byte), Ok(0))
    });
    assert!(closed, "no silent connection was closed");
    assert!(node.terminate().success());
}

#[test]
fn gossip_settings_out_of_range_are_refused_by_name() {
    let dir = tempfile::TempDir::new().unwrap();
    let dir_str = dir.path().to_str().unwrap();
    init(dir_str);
    let run = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(["run", "--data-dir", dir_str, "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = start_refused(&mut child);
        (status.code(), stderr_of(&mut child))
    };
    // No round ever (u64::MAX ms), or gossip with nobody: said, not silently run.
    for (setting, name) in [
        ("gossip_ms = 18446744073709551615", "gossip_ms"),
        ("gossip_ms = 0", "gossip_ms"),
        ("fanout = 0", "fanout"),
    ] {
        std::fs::write(dir.path().join("config.toml"), setting).unwrap();
        let (code, stderr) = run(&[]);
        assert_eq!(code, Some(1), "{setting}: {stderr}");
        assert!(stderr.contains(name), "{setting}: {stderr}");
    }
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let (code, stderr) = run(&["--gossip-ms", "18446744073709551615"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--gossip-ms"), "{stderr}");
}
