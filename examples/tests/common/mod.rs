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

/// Initializes data directories whose nodes all trust each other; returns their ids in order.
pub fn trusting_group(dirs: &[&str]) -> Vec<String> {
    let ids: Vec<String> = dirs
        .iter()
        .map(|dir| {
            let out = cli(&["init", "--data-dir", dir]);
            out.trim().strip_prefix("node id: ").unwrap().to_owned()
        })
        .collect();
    for dir in dirs {
        for id in &ids {
            cli(&["trust", id, "--data-dir", dir]);
        }
    }
    ids
}

impl Running {
    /// Like [`Running::start`], but the node's stderr goes to `stderr` (a log file, say).
    pub fn start_logged(args: &[&str], stderr: std::fs::File) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a line without panicking; `false` if the process no longer reads its stdin.
    pub fn try_send(&mut self, line: &str) -> bool {
        writeln!(self.stdin, "{line}").is_ok() && self.stdin.flush().is_ok()
    }

    /// The next output line within `timeout`. `Err(Disconnected)` once the process closed its
    /// stdout (it exited) and every line it printed has been read.
    pub fn next_line(
        &self,
        timeout: Duration,
    ) -> Result<String, std::sync::mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process with SIGKILL, reaps it, and returns the lines it printed that were
    /// not read yet (waiting at most 5 s for its stdout to close).
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut rest = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(_) => break,
            }
        }
        rest
    }
}
