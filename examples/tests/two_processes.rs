//! Two `crdt-node` processes, driven through stdin, see each other's edits over QUIC.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_crdt-node");

fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next output line that satisfies `want`, within 10 s.
    fn expect(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no matching output line within 10 s");
    }

    /// Asks `get KEY` until the answer contains `needle`.
    fn wait_for(&mut self, key: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            self.send(&format!("get {key}"));
            let answer = self.expect(|l| l.starts_with(&format!("{key} ")));
            if answer.contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{key} never came to contain {needle}");
    }

    fn quit(mut self) {
        self.send("quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the node did not quit");
    }
}

#[test]
fn two_nodes_see_each_others_edits() {
    let (a, b) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    let id = |out: String| out.trim().strip_prefix("node id: ").unwrap().to_owned();
    let a_id = id(cli(&["init", "--data-dir", a_dir]));
    let b_id = id(cli(&["init", "--data-dir", b_dir]));
    cli(&["trust", &b_id, "--data-dir", a_dir]);
    cli(&["trust", &a_id, "--data-dir", b_dir]);

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
