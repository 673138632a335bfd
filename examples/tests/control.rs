//! The control command line against real `crdt-node` daemons: trust and untrust applied to a
//! running node, bad input on the control socket, the configuration file with a peer given
//! by host name, catch-up progress in `status`, `watch`, and clear errors for bad arguments.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    banner_addr, control, control_until, init, lone_daemon, node_args, raw, trusting_pair, Running,
    BIN,
};

/// A daemon whose stderr goes to a log file in `dir`'s parent.
fn daemon(dir: &str, peers: &[&str], log: &std::path::Path) -> Running {
    let file = std::fs::File::create(log).unwrap();
    Running::daemon(&node_args(dir, peers), Stdio::from(file))
}

/// Waits (15 s at most) for `log` to contain `needle`.
fn log_shows(log: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{log:?} never showed {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `peers --json` on `dir` lists `id` as up.
fn is_up(dir: &str, id: &str) -> bool {
    let out = control(dir, &["peers", "--json"]).stdout;
    let value: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    value["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == id && p["up"] == true)
}

#[test]
fn trust_and_untrust_apply_to_the_running_node() {
    let root = tempfile::TempDir::new().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let (a_dir, b_dir) = (a.to_str().unwrap(), b.to_str().unwrap());
    let (a_id, a_key) = init(a_dir);
    let (b_id, b_key) = init(b_dir);
    // B trusts A; A does not trust B yet.
    common::cli(&["trust", &a_key, "--data-dir", b_dir]);
    let a_log = root.path().join("a.log");
    let mut b_node = daemon(b_dir, &[], &root.path().join("b.log"));
    let b_addr = banner_addr(&b_node.expect(|l| l.contains("listening on")));
    let mut a_node = daemon(a_dir, &[&b_addr], &a_log);
    a_node.expect(|l| l.contains("listening on"));
    log_shows(&a_log, "refused");
    assert!(!is_up(a_dir, &b_id));

    // Trusted through the control socket: admitted at once, without a restart.
    let trusted = control(a_dir, &["trust", &b_key]);
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    assert!(
        trusted.stdout.contains("admits it now"),
        "{}",
        trusted.stdout
    );
    a_node.expect(|l| l == format!("~ peer {b_id} up"));
    assert_eq!(control(b_dir, &["add", "cart", "milk"]).code, 0);
    control_until(a_dir, &["get", "cart"], "\"milk\"");
    // The trust file says so too, for the next start.
    let file = std::fs::read_to_string(a.join("trusted")).unwrap();
    assert!(file.contains(&b_key), "{file}");

    // Untrusted: its connection is dropped at once, and it stays out.
    let untrusted = control(a_dir, &["untrust", &b_key, "--json"]);
    assert_eq!(untrusted.code, 0, "{}", untrusted.stderr);
    let value: serde_json::Value = serde_json::from_str(untrusted.stdout.trim()).unwrap();
    assert_eq!(value["closed"], 1, "{}", untrusted.stdout);
    log_shows(&a_log, "closed the connection of a peer no longer trusted");
    b_node.expect(|l| l == format!("~ peer {a_id} down"));
    let file = std::fs::read_to_string(a.join("trusted")).unwrap();
    assert!(!file.contains(&b_key), "{file}");
    assert!(a_node.terminate().success());
    assert!(b_node.terminate().success());

    // With no node running, `trust` edits the file, and says so.
    let offline = control(a_dir, &["trust", &b_key]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    assert!(
        offline.stdout.contains("no node is running"),
        "{}",
        offline.stdout
    );
    let file = std::fs::read_to_string(a.join("trusted")).unwrap();
    assert!(file.contains(&b_key), "{file}");
}

#[test]
fn bad_input_on_the_control_socket_gets_errors_and_the_node_keeps_serving() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    let socket = dir.path().join("control.sock");
    // Owner-only: the socket and its directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(dir.path()), 0o700);

    let mut stream = UnixStream::connect(&socket).unwrap();
    for (line, kind) in [
        (&b"garbage\n"[..], "bad_request"),
        (b"{\"op\":\"launch\"}\n", "bad_request"),
        (b"{\"op\":\"add\",\"key\":\"cart\"}\n", "bad_request"),
        (
            b"{\"op\":\"add\",\"key\":\"\",\"value\":\"x\"}\n",
            "bad_request",
        ),
        (
            b"{\"op\":\"inc\",\"key\":\"n\",\"by\":18446744073709551616}\n",
            "bad_request",
        ),
        (b"\xff\xfe\n", "bad_request"),
        (&[b'['; 10_000][..], "bad_request"),
        (
            b"\n{\"op\":\"remove\",\"key\":\"nothing\",\"value\":\"x\"}\n",
            "not_set",
        ),
    ] {
        let mut line = line.to_vec();
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let answer = raw(&mut stream, &line);
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["error"]["kind"], kind, "{answer}");
    }
    // Levels past any cluster's size time out like any level not met (they overflowed the
    // owner thread's arithmetic and stopped the node).
    let huge = raw(
        &mut stream,
        b"{\"op\":\"add\",\"key\":\"k\",\"value\":\"v\",\"wait\":{\"ack\":18446744073709551615,\"timeout_ms\":10}}\n",
    );
    assert_eq!(huge["error"]["kind"], "timeout", "{huge}");
    let huge = raw(
        &mut stream,
        b"{\"op\":\"get\",\"key\":\"k\",\"read\":18446744073709551615,\"timeout_ms\":10}\n",
    );
    assert_eq!(huge["error"]["kind"], "timeout", "{huge}");
    // The same connection still serves good requests.
    let answer = raw(
        &mut stream,
        b"{\"op\":\"add\",\"key\":\"cart\",\"value\":\"milk\"}\n",
    );
    assert_eq!(answer["ok"], true, "{answer}");

    // An oversized line: an error, then the connection is closed.
    let mut big = UnixStream::connect(&socket).unwrap();
    let line = vec![b'x'; (8 << 20) + 1];
    let writer = {
        let mut big = big.try_clone().unwrap();
        std::thread::spawn(move || big.write_all(&line))
    };
    let mut answer = String::new();
    BufReader::new(&mut big).read_line(&mut answer).unwrap();
    let _ = writer.join();
    assert!(answer.contains("too_long"), "{answer}");
    let mut rest = Vec::new();
    assert_eq!(
        big.read_to_end(&mut rest).unwrap_or(0),
        0,
        "the connection stays open"
    );

    // More clients than it serves at once, each waiting for an answer: one too many is
    // told so. (Which one depends on when the connections above are let go; idle ones
    // would be closed to make room.)
    drop((stream, big));
    let held: Vec<UnixStream> = (0..33)
        .map(|_| {
            let mut held = UnixStream::connect(&socket).unwrap();
            held.write_all(b"{\"op\":\"get\",\"key\":\"k\",\"read\":1,\"timeout_ms\":3600000}\n")
                .unwrap();
            held.set_nonblocking(true).unwrap();
            held
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    'busy: loop {
        for mut held in &held {
            let mut answer = [0u8; 256];
            if let Ok(n) = held.read(&mut answer) {
                let answer = String::from_utf8_lossy(&answer[..n]);
                assert!(answer.contains("\"busy\""), "{answer}");
                break 'busy;
            }
        }
        assert!(Instant::now() < deadline, "no client was told `busy`");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);

    // The node goes on serving.
    control_until(dir_str, &["get", "cart"], "\"milk\"");
    assert!(control(dir_str, &["get", "cart"])
        .stdout
        .contains("\"milk\""));
    assert!(node.terminate().success());
}

#[test]
fn bad_arguments_are_clear_errors() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    for (args, says) in [
        (&["add", "", "milk"][..], "a key cannot be empty"),
        (&["get", "cart", "extra"], "unexpected argument 'extra'"),
        (&["inc", "n", "99999999999999999999"], "too large"),
        (&["inc", "n", "-1"], "unexpected argument"),
        (
            &["add", "cart", "milk", "--ack", "most"],
            "not an acknowledgement level",
        ),
        (&["keys", "now"], "unexpected argument 'now'"),
    ] {
        let answer = control(dir_str, args);
        assert_eq!(answer.code, 2, "{args:?}: {}", answer.stdout);
        assert!(answer.stderr.contains(says), "{args:?}: {}", answer.stderr);
    }
    // A counter at the limit peers accept: the next increment is refused, not `ok`.
    assert_eq!(
        control(dir_str, &["incr", "big", "281474976710656"]).code,
        0
    );
    let over = control(dir_str, &["incr", "big", "1", "--json"]);
    assert_eq!(over.code, 1);
    let value: serde_json::Value = serde_json::from_str(over.stdout.trim()).unwrap();
    assert_eq!(value["error"]["kind"], "refused", "{}", over.stdout);
    // A large set: its size and first entries, unless --all.
    for i in 0..25 {
        assert_eq!(
            control(dir_str, &["add", "many", &format!("e{i:02}")]).code,
            0
        );
    }
    let short = control(dir_str, &["get", "many"]).stdout;
    assert!(
        short.contains("(25 entries;") && !short.contains("e24"),
        "{short}"
    );
    assert!(control(dir_str, &["get", "many", "--all"])
        .stdout
        .contains("\"e24\""));
    assert!(node.terminate().success());
}

#[test]
fn a_config_file_names_a_peer_by_host_name_and_status_shows_the_catch_up() {
    let root = tempfile::TempDir::new().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let (a_dir, b_dir) = (a.to_str().unwrap(), b.to_str().unwrap());
    trusting_pair(a_dir, b_dir);
    let mut b_node = Running::daemon(&node_args(b_dir, &[]), Stdio::null());
    let b_addr = banner_addr(&b_node.expect(|l| l.contains("listening on")));
    // B holds objects written before A ever connects: A catches up by a state transfer.
    for i in 0..30 {
        assert_eq!(control(b_dir, &["add", "many", &format!("e{i}")]).code, 0);
    }
    let port = b_addr.rsplit(':').next().unwrap();
    std::fs::write(
        a.join("config.toml"),
        format!("listen = \"127.0.0.1:0\"\npeers = [\"localhost:{port}\"]\ngossip_ms = 100\n"),
    )
    .unwrap();
    // Only the data directory on the command line.
    let a_log = root.path().join("a.log");
    let log = std::fs::File::create(&a_log).unwrap();
    let mut a_node = Running::daemon(&["run", "--data-dir", a_dir], Stdio::from(log));
    let banner = a_node.expect(|l| l.contains("listening on"));
    assert!(banner.contains("127.0.0.1:"), "{banner}");
    control_until(a_dir, &["get", "many", "--all"], "\"e29\"");
    let status = control_until(a_dir, &["status"], "caught up from");
    assert!(status.contains("objects"), "{status}");
    let json = control(a_dir, &["status", "--json"]).stdout;
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let catch_up = &value["catch_up"][0];
    assert_eq!(catch_up["finished"], true, "{json}");
    assert!(catch_up["objects"].as_u64().unwrap() >= 1, "{json}");
    assert!(catch_up["bytes"].as_u64().unwrap() > 0, "{json}");
    // B's one key, walked by B's cursor.
    assert_eq!(
        (&catch_up["walked"], &catch_up["keys"]),
        (&1.into(), &1.into()),
        "{json}"
    );
    log_shows(
        &a_log,
        "caught up: the state transfer from this peer is complete",
    );

    // A flag wins over the file: a bad peer name on the command line is refused at once.
    let bad = control(a_dir, &["run", "--peer", "no port here"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("HOST:PORT"), "{}", bad.stderr);
    assert!(a_node.terminate().success());
    assert!(b_node.terminate().success());

    // A misspelt setting is an error naming the file, and the node does not start.
    std::fs::write(a.join("config.toml"), "lisen = \"127.0.0.1:0\"\n").unwrap();
    let refused = Command::new(BIN)
        .args(["run", "--data-dir", a_dir])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("config.toml") && stderr.contains("lisen"),
        "{stderr}"
    );
}

#[test]
fn watch_streams_changes_until_interrupted() {
    let (dir, mut node) = lone_daemon();
    let dir_str = dir.path().to_str().unwrap();
    let mut watcher = Command::new(BIN)
        .args(["watch", "cart", "--json", "--data-dir", dir_str])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"watching\":\"cart\""), "{first}");
    assert_eq!(control(dir_str, &["add", "other", "x"]).code, 0);
    assert_eq!(control(dir_str, &["add", "cart", "tea"]).code, 0);
    let change: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(change["event"], "changed");
    assert_eq!(change["key"], "cart", "only the watched key: {change}");
    assert_eq!(change["value"], serde_json::json!(["tea"]));
    let pid = watcher.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert!(watcher.wait().unwrap().success());
    // The node serves on after its watcher left.
    assert!(control(dir_str, &["get", "cart"])
        .stdout
        .contains("\"tea\""));
    assert!(node.terminate().success());
}
