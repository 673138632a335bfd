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
    /// `None` for a daemon, started with stdin closed.
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

/// The arguments of `crdt-node run` as the tests start nodes: on a loopback port, gossiping
/// every 100 ms, dialing `peers`.
pub fn node_args<'a>(dir: &'a str, peers: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--listen", "127.0.0.1:0", "--data-dir", dir];
    args.extend(["--gossip-ms", "100"]);
    for peer in peers {
        args.extend(["--peer", peer]);
    }
    args
}

/// The address in a node's `node ID listening on ADDR` banner.
pub fn banner_addr(banner: &str) -> String {
    banner.trim().rsplit(' ').next().unwrap().to_owned()
}

/// What a control command printed, and its exit code.
pub struct Answer {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the control command `crdt-node ARGS --data-dir DIR`.
pub fn control(dir: &str, args: &[&str]) -> Answer {
    let out = Command::new(BIN)
        .args(args)
        .args(["--data-dir", dir])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Answer {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `control` until its stdout contains `needle` (15 s at most); returns that stdout.
pub fn control_until(dir: &str, args: &[&str], needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = control(dir, args);
        if answer.stdout.contains(needle) {
            return answer.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never printed {needle:?}; last: {} {}",
            answer.stdout,
            answer.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node still running when its test ends (a failed assertion, say) is killed, not left
/// behind.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        Running::start_command(Command::new(BIN), args)
    }

    /// Starts `command` (for example `ip netns exec NS crdt-node`) with `args`.
    pub fn start_command(command: Command, args: &[&str]) -> Running {
        Running::spawn(command, args, Stdio::null())
    }

    /// Starts a node as a service starts it: stdin closed (`/dev/null`), its stderr going to
    /// `stderr`; its stdout lines are read as for the others.
    pub fn daemon(args: &[&str], stderr: Stdio) -> Running {
        let mut command = Command::new(BIN);
        command.stdin(Stdio::null());
        Running::spawn_with(command, args, stderr, false)
    }

    /// Sends SIGTERM; waits (10 s at most) for the exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.wait_exit(Duration::from_secs(10))
            .expect("no exit within 10 s of SIGTERM")
    }

    /// Starts `command` with `args` and its stderr going to `stderr`; reads its stdout lines.
    fn spawn(command: Command, args: &[&str], stderr: Stdio) -> Running {
        Running::spawn_with(command, args, stderr, true)
    }

    fn spawn_with(mut command: Command, args: &[&str], stderr: Stdio, prompt: bool) -> Running {
        if prompt {
            command.stdin(Stdio::piped());
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
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
        let stdin = self.stdin.as_mut().expect("a daemon reads no stdin");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
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
            self.send(&format!("get {key} --all"));
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

/// Initializes two data directories whose nodes trust each other (each pins the other's key);
/// returns their ids.
pub fn trusting_pair(a: &str, b: &str) -> (String, String) {
    let ids = trusting_group(&[a, b]);
    (ids[0].clone(), ids[1].clone())
}

/// Initializes data directories whose nodes all trust each other (each pins the others'
/// keys); returns their ids in order.
pub fn trusting_group(dirs: &[&str]) -> Vec<String> {
    let identities: Vec<(String, String)> = dirs.iter().map(|dir| init(dir)).collect();
    for (i, dir) in dirs.iter().enumerate() {
        for (j, (_, fingerprint)) in identities.iter().enumerate() {
            if i != j {
                cli(&["trust", fingerprint, "--data-dir", dir]);
            }
        }
    }
    identities.into_iter().map(|(id, _)| id).collect()
}

/// Runs `crdt-node init` in `dir`; returns the node id and the key fingerprint it printed.
pub fn init(dir: &str) -> (String, String) {
    let out = cli(&["init", "--data-dir", dir]);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("`init` printed no {name:?}: {out}"))
            .trim()
            .to_owned()
    };
    (field("node id: "), field("fingerprint: "))
}

impl Running {
    /// Like [`Running::start`], but the node's stderr goes to `stderr` (a log file, say).
    pub fn start_logged(args: &[&str], stderr: std::fs::File) -> Running {
        Running::spawn(Command::new(BIN), args, Stdio::from(stderr))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a line without panicking; `false` if the process no longer reads its stdin.
    pub fn try_send(&mut self, line: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        writeln!(stdin, "{line}").is_ok() && stdin.flush().is_ok()
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

impl Running {
    /// Like [`Running::start_command`] (for example `ip netns exec NS crdt-node`), but the
    /// process's stderr goes to `stderr` (a log file, say).
    pub fn start_command_logged(command: Command, args: &[&str], stderr: std::fs::File) -> Running {
        Running::spawn(command, args, Stdio::from(stderr))
    }
}

/// Parses `KEY = {"e0", "e1"}` (the Display of a set of `e<n>` elements) or `KEY is not set`
/// into the numbers.
pub fn parse_set(key: &str, line: &str) -> Option<std::collections::BTreeSet<u64>> {
    use std::collections::BTreeSet;
    if line == format!("{key} is not set") {
        return Some(BTreeSet::new());
    }
    let body = line.strip_prefix(&format!("{key} = "))?;
    if body == "(empty)" {
        return Some(BTreeSet::new());
    }
    let inner = body.strip_prefix('{')?.strip_suffix('}')?.trim();
    if inner.is_empty() {
        return Some(BTreeSet::new());
    }
    inner
        .split(", ")
        .map(|e| e.strip_prefix("\"e")?.strip_suffix('"')?.parse().ok())
        .collect()
}

/// Whether a prompt line acknowledges a write: `ok`, or `ok <token>`.
pub fn is_ok(line: &str) -> bool {
    line == "ok" || line.starts_with("ok ")
}

/// Why network namespaces cannot be made here, if they cannot: tried for real, then removed.
pub fn cannot_make_namespaces() -> Option<String> {
    let probe = format!("crdt-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            None
        }
        Ok(out) => Some(format!(
            "`ip netns add` failed (root needed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("no `ip` command: {e}")),
    }
}

/// Says on the terminal itself, past the test harness's capture, that `test` did not run.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// Prints a test's figures on the terminal itself, past the harness's capture, so a passing
/// run shows them in CI logs too.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The number in the environment variable `name`, if it is set; panics if it is not a number.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// SplitMix64: a small deterministic generator (no random crate is a dependency here), so a
/// seed replays a test's schedule.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (near enough); `n` > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `0..=max` (near enough).
    pub fn up_to(&mut self, max: u64) -> u64 {
        self.below(max + 1)
    }
}

/// A named `crdt-node` process that can be killed and restarted, with its stderr appended to
/// a log file that failures quote. `running` is `None` while it is down.
pub struct LoggedProcess {
    pub name: String,
    pub log: std::path::PathBuf,
    pub running: Option<Running>,
    /// How long any one answer may take.
    pub answer: Duration,
}

impl LoggedProcess {
    pub fn new(name: String, log: std::path::PathBuf, answer: Duration) -> LoggedProcess {
        LoggedProcess {
            name,
            log,
            running: None,
            answer,
        }
    }

    /// Its log file, opened for appending, for the process about to start; it must be down.
    pub fn start_log(&self) -> std::fs::File {
        assert!(self.running.is_none(), "{} is already running", self.name);
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap()
    }

    /// Takes the process just started and waits (bounded) for its banner; returns the
    /// `listening on` line.
    pub fn started(&mut self, running: Running) -> String {
        self.running = Some(running);
        self.line(|l| l.contains("listening on"))
    }

    pub fn running(&mut self) -> &mut Running {
        match self.running.as_mut() {
            Some(running) => running,
            None => panic!("{} is not running", self.name),
        }
    }

    /// The last lines of the process's stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines.get(from..).unwrap_or_default().join("\n")
        )
    }

    pub fn fail(&self, what: &str) -> ! {
        panic!("{}: {what}\n{}", self.name, self.log_tail());
    }

    /// The next output line within `timeout`; `None` on timeout. Fails if the process exited.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        use std::sync::mpsc::RecvTimeoutError;
        match self.running().next_line(timeout) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => self.fail("the process exited unexpectedly"),
        }
    }

    /// The next line satisfying `want`, within `answer`.
    pub fn line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + self.answer;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next_line(left) {
                Some(line) if want(&line) => return line,
                Some(_) => {}
                None => break,
            }
        }
        self.fail(&format!("no expected output line within {:?}", self.answer))
    }

    pub fn send(&mut self, line: &str) {
        if !self.running().try_send(line) {
            self.fail(&format!("cannot write {line:?} to its stdin"));
        }
    }

    /// Kills the process with SIGKILL; returns the output lines it left unread.
    pub fn kill(&mut self) -> Vec<String> {
        match self.running.take() {
            Some(running) => running.kill(),
            None => Vec::new(),
        }
    }
}

/// Gives a test's node type, a struct with a `process: LoggedProcess` field, the
/// [`LoggedProcess`] methods (`send`, `line`, `fail`, `kill`, ...) and fields through
/// `Deref`/`DerefMut`.
#[allow(unused_macros)] // Like the rest, unused by some test binaries.
macro_rules! deref_to_process {
    ($node:ty) => {
        impl std::ops::Deref for $node {
            type Target = $crate::common::LoggedProcess;

            fn deref(&self) -> &$crate::common::LoggedProcess {
                &self.process
            }
        }

        impl std::ops::DerefMut for $node {
            fn deref_mut(&mut self) -> &mut $crate::common::LoggedProcess {
                &mut self.process
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use deref_to_process;

/// A node of its own in a fresh data directory, started with stdin closed.
pub fn lone_daemon() -> (tempfile::TempDir, Running) {
    let dir = tempfile::TempDir::new().unwrap();
    init(dir.path().to_str().unwrap());
    let node = Running::daemon(&node_args(dir.path().to_str().unwrap(), &[]), Stdio::null());
    node.expect(|l| l.contains("listening on"));
    (dir, node)
}

/// Sends `line` (a newline is added if it has none) on `stream`, a connection to a control
/// socket, and returns the answer line parsed.
pub fn raw(stream: &mut std::os::unix::net::UnixStream, line: &[u8]) -> serde_json::Value {
    stream.write_all(line).unwrap();
    if line.last() != Some(&b'\n') {
        stream.write_all(b"\n").unwrap();
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}
