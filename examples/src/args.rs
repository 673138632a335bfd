//! `crdt-node`'s command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Peer;
use crate::request::{Level, Request, Wait};

/// The version, with the wire formats it speaks (checked against the libraries by a test).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (wire protocol 5, encoding format 4)"
);

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "crdt-node",
    version = VERSION,
    about = "A CRDT replica that syncs with trusted peers over QUIC",
    after_help = "A running node (`crdt-node run`) is also driven from other terminals and scripts: \
`crdt-node add cart milk`, `crdt-node get cart --json`, `crdt-node watch`. They talk to it over \
the control socket in its data directory."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The data directory, as every command takes it.
#[derive(Debug, Args)]
pub struct DataDir {
    /// The node's data directory. Default: $CRDT_NODE_DIR, else the per-user data directory
    /// ($XDG_DATA_HOME/crdt-node or ~/.local/share/crdt-node; on macOS
    /// ~/Library/Application Support/crdt-node).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// How a control command prints its answer.
#[derive(Debug, Args)]
pub struct Output {
    /// Print the answer as one line of JSON (for scripts): `{"ok":true,...}`, or
    /// `{"ok":false,"error":{"kind":...,"message":...}}` with exit status 1.
    #[arg(long)]
    pub json: bool,
}

/// When a write returns.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until this many peers (or `majority`, `all`) hold the write durably too.
    #[arg(long, default_value = "local")]
    pub ack: Level,
    /// How long to wait for them, in ms; on timeout the write stays and keeps spreading.
    #[arg(long, default_value_t = 5000)]
    pub timeout: u64,
}

impl WaitArgs {
    fn wait(&self) -> Wait {
        Wait {
            ack: self.ack,
            timeout_ms: Some(self.timeout),
        }
    }
}

/// `crdt-node run`'s flags. Those not given come from `config.toml` in the data directory,
/// then from the defaults.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// UDP address to listen on [config: listen; default 0.0.0.0:4433].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A peer to connect to, HOST:PORT (repeatable; replaces the config's `peers`). A host
    /// name is resolved again at each reconnect.
    #[arg(long = "peer", value_parser = Peer::parse)]
    pub peers: Vec<Peer>,
    /// Milliseconds between anti-entropy rounds, 10 to 3600000 [config: gossip_ms; default
    /// 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub gossip_ms: Option<u64>,
    /// Run this node's clock this many milliseconds ahead of the system clock (negative:
    /// behind). For testing what skewed clocks do.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, hide = true)]
    pub clock_offset_ms: i64,
    /// Read no commands: only serve peers (and the control socket) until SIGTERM or SIGINT.
    #[arg(long)]
    pub no_prompt: bool,
    /// Serve the local HTTP API (docs/http-api.md) on this TCP address, e.g. 127.0.0.1:8080
    /// [config: http; default off]. Requests need the bearer token in `http.token` in the
    /// data directory.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Let `--http` listen on an address other than loopback [config: http_allow_remote].
    /// The API is plain HTTP: anyone on the path sees the token.
    #[arg(long)]
    pub http_allow_remote: bool,
}

/// A key: not empty.
fn key(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("a key cannot be empty".into());
    }
    Ok(text.to_owned())
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make this node's identity (key pair and certificate) and print its id; writes a
    /// commented config.toml if there is none.
    Init(DataDir),
    /// Run the node: a prompt on stdin (when it is a terminal), the control socket, and its
    /// peers, until SIGTERM or SIGINT.
    Run(Box<Run>),
    /// Allow a peer to connect: pin its key's fingerprint (or, weaker, trust its id). A
    /// running node admits it at once; otherwise the trust file is edited.
    Trust(PeerArgs),
    /// Stop trusting a peer; a running node drops its connections at once.
    Untrust(PeerArgs),
    /// Add VALUE to the set at KEY.
    Add(ValueWrite),
    /// Remove VALUE from the set at KEY.
    Remove(ValueWrite),
    /// Write VALUE to the last-writer-wins register at KEY.
    Set(ValueWrite),
    /// Write VALUE to the multi-value register at KEY (concurrent writes stay visible).
    Write(ValueWrite),
    /// Add N (default 1) to the grow-only counter at KEY.
    Inc(CountWrite),
    /// Add N (default 1) to the up-down counter at KEY.
    Incr(CountWrite),
    /// Subtract N (default 1) from the up-down counter at KEY.
    Decr(CountWrite),
    /// Show the object at KEY (a large set or map: its size and first entries).
    Get(Get),
    /// List every object.
    Keys(Plain),
    /// Print changes as they happen (of KEY only, if given), until interrupted.
    Watch(Watch),
    /// This node's id, fingerprint, address, traffic and catch-up progress.
    Status(Plain),
    /// The known peers, up or down, and how far behind.
    Peers(Plain),
}

/// `run`'s arguments.
#[derive(Debug, Args)]
pub struct Run {
    /// Its flags.
    #[command(flatten)]
    pub args: RunArgs,
    /// Its data directory.
    #[command(flatten)]
    pub dir: DataDir,
}

/// A control command that takes nothing.
#[derive(Debug, Args)]
pub struct Plain {
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    out: Output,
}

/// `trust` and `untrust`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// The peer's fingerprint, as its `init` printed it (64 hex digits); or its node id
    /// (16 hex digits), which stands for any key with that id.
    id: String,
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    out: Output,
}

/// A write of a value: `add`, `remove`, `set`, `write`.
#[derive(Debug, Args)]
pub struct ValueWrite {
    /// The object's key.
    #[arg(value_parser = key)]
    key: String,
    /// The element or value.
    #[arg(allow_hyphen_values = true)]
    value: String,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    out: Output,
}

/// A counter write: `inc`, `incr`, `decr`.
#[derive(Debug, Args)]
pub struct CountWrite {
    /// The object's key.
    #[arg(value_parser = key)]
    key: String,
    /// How much.
    #[arg(default_value_t = 1)]
    n: u64,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    out: Output,
}

/// `get`.
#[derive(Debug, Args)]
pub struct Get {
    /// The object's key.
    #[arg(value_parser = key)]
    key: String,
    /// Every entry of a large set or map (in JSON too).
    #[arg(long)]
    all: bool,
    /// Once this node has the write TOKEN names (read-your-writes across nodes).
    #[arg(long, value_name = "TOKEN")]
    after: Option<String>,
    /// Merge the object from N peers first.
    #[arg(long, default_value_t = 0, value_name = "N")]
    read: usize,
    /// How long to wait for --after or --read, in ms.
    #[arg(long, default_value_t = 5000)]
    timeout: u64,
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    out: Output,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct Watch {
    /// Only this object's changes.
    #[arg(value_parser = key)]
    key: Option<String>,
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    out: Output,
}

/// A command for a running node: its request, data directory and output.
pub struct Control {
    /// What to ask.
    pub request: Request,
    /// The node's data directory, as given.
    pub dir: Option<PathBuf>,
    /// Whether to print JSON.
    pub json: bool,
}

impl Control {
    fn new(request: Request, dir: DataDir, out: Output) -> Control {
        Control {
            request,
            dir: dir.data_dir,
            json: out.json,
        }
    }
}

impl Command {
    /// The request of a control command; `Err(self)` for `init` and `run`.
    pub fn into_control(self) -> Result<Control, Command> {
        let valued = |w: ValueWrite, make: fn(String, String, Wait) -> Request| {
            Control::new(make(w.key, w.value, w.wait.wait()), w.dir, w.out)
        };
        let counted = |w: CountWrite, make: fn(String, u64, Wait) -> Request| {
            Control::new(make(w.key, w.n, w.wait.wait()), w.dir, w.out)
        };
        Ok(match self {
            Command::Init(_) | Command::Run(_) => return Err(self),
            Command::Trust(p) => Control::new(Request::Trust { peer: p.id }, p.dir, p.out),
            Command::Untrust(p) => Control::new(Request::Untrust { peer: p.id }, p.dir, p.out),
            Command::Add(w) => valued(w, |key, value, wait| Request::Add { key, value, wait }),
            Command::Remove(w) => {
                valued(w, |key, value, wait| Request::Remove { key, value, wait })
            }
            Command::Set(w) => valued(w, |key, value, wait| Request::Set { key, value, wait }),
            Command::Write(w) => valued(w, |key, value, wait| Request::Write { key, value, wait }),
            Command::Inc(w) => counted(w, |key, by, wait| Request::Inc { key, by, wait }),
            Command::Incr(w) => counted(w, |key, by, wait| Request::Incr { key, by, wait }),
            Command::Decr(w) => counted(w, |key, by, wait| Request::Decr { key, by, wait }),
            Command::Get(g) => Control::new(
                Request::Get {
                    key: g.key,
                    all: g.all,
                    after: g.after,
                    read: g.read,
                    timeout_ms: Some(g.timeout),
                },
                g.dir,
                g.out,
            ),
            Command::Watch(w) => Control::new(Request::Watch { key: w.key }, w.dir, w.out),
            Command::Keys(p) => Control::new(Request::Keys {}, p.dir, p.out),
            Command::Status(p) => Control::new(Request::Status {}, p.dir, p.out),
            Command::Peers(p) => Control::new(Request::Peers {}, p.dir, p.out),
        })
    }
}
