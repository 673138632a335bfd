//! Driving `crdt-node` processes through stdin, shared by the process-level tests.

#![allow(dead_code)] // Each test binary uses part of it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_crdt-node");

pub fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        Running::start_command(Command::new(BIN), args)
    }

    /// Starts `command` (for example `ip netns exec NS crdt-node`) with `args`.
    pub fn start_command(mut command: Command, args: &[&str]) -> Running {
        let mut child = command
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

    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next output line that satisfies `want`, within 10 s.
    pub fn expect(&self, want: impl Fn(&str) -> bool) -> String {
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
    pub fn wait_for(&mut self, key: &str, needle: &str) {
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

    pub fn quit(mut self) {
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

/// Initializes two data directories whose nodes trust each other; returns their ids.
pub fn trusting_pair(a: &str, b: &str) -> (String, String) {
    let id = |out: String| out.trim().strip_prefix("node id: ").unwrap().to_owned();
    let a_id = id(cli(&["init", "--data-dir", a]));
    let b_id = id(cli(&["init", "--data-dir", b]));
    cli(&["trust", &b_id, "--data-dir", a]);
    cli(&["trust", &a_id, "--data-dir", b]);
    (a_id, b_id)
}
