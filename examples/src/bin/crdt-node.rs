//! `crdt-node`: a replica for laptops, synced over QUIC with the peers you trust.
//!
//! ```text
//! crdt-node init --data-dir ~/.crdt            # make the identity; prints the node id
//! crdt-node trust 1f2e3d4c5b6a7988 --data-dir ~/.crdt
//! crdt-node run --listen 0.0.0.0:4433 --peer 192.0.2.10:4433 --data-dir ~/.crdt
//! ```
//!
//! `run` reads commands from stdin (a prompt on a terminal; type `help`). When stdin ends,
//! or with `--no-prompt`, the node keeps serving its peers until SIGTERM or SIGINT, so it runs
//! under systemd, launchd, nohup or in a container (`crdt-node run ... </dev/null`).

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use crdt_net::node::{
    parse_node_id, Ack, Fingerprint, Identity, Node, NodeBuilder, NodeError, ReadLevel, Token,
    TrustList,
};
use crdt_net::{value, Event, Op};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "crdt-node",
    version = VERSION,
    about = "A CRDT replica that syncs with trusted peers over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make this node's identity (key pair and certificate) and print its id.
    Init {
        /// Where the node keeps its identity, trust list and state (default: see `run`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Allow a peer to connect: pin its key's fingerprint (or, weaker, trust its id).
    Trust {
        /// The peer's fingerprint, as its `init` printed it (64 hex digits); or its node id
        /// (16 hex digits), which admits any key with that id.
        id: String,
        /// The node's data directory (default: see `run`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the node: commands from stdin, then serve until SIGTERM or SIGINT.
    Run {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: SocketAddr,
        /// Peers to connect to (repeatable).
        #[arg(long = "peer")]
        peers: Vec<SocketAddr>,
        /// The node's data directory. Default: $CRDT_NODE_DIR, else the per-user data directory
        /// ($XDG_DATA_HOME/crdt-node or ~/.local/share/crdt-node; on macOS
        /// ~/Library/Application Support/crdt-node).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Milliseconds between anti-entropy rounds.
        #[arg(long, default_value_t = 1000)]
        gossip_ms: u64,
        /// Run this node's clock this many milliseconds ahead of the system clock (negative:
        /// behind). For testing what skewed clocks do.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true, hide = true)]
        clock_offset_ms: i64,
        /// Read no commands: only serve peers until SIGTERM or SIGINT.
        #[arg(long)]
        no_prompt: bool,
    },
}

/// The version, with the wire formats it speaks (checked against the libraries by a test).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (wire protocol 3, encoding format 2)"
);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        // No colour codes in a log file or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Init { data_dir } => data_dir_or_default(data_dir).and_then(|d| init(&d)),
        Command::Trust { id, data_dir } => {
            data_dir_or_default(data_dir).and_then(|d| trust(&id, &d))
        }
        Command::Run {
            listen,
            peers,
            data_dir,
            gossip_ms,
            clock_offset_ms,
            no_prompt,
        } => match data_dir_or_default(data_dir) {
            Err(e) => Err(e),
            Ok(data_dir) => {
                let settings = Settings {
                    listen,
                    peers,
                    data_dir,
                    gossip_ms,
                    clock_offset_ms,
                    no_prompt,
                };
                run(settings).await
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `given`, else $CRDT_NODE_DIR, else the platform's per-user data directory.
fn data_dir_or_default(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CRDT_NODE_DIR") {
        return Ok(dir);
    }
    let home = var("HOME");
    let dir = if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library/Application Support"))
    } else {
        var("XDG_DATA_HOME").or_else(|| home.map(|h| h.join(".local/share")))
    };
    dir.map(|d| d.join("crdt-node"))
        .ok_or_else(|| "no --data-dir, and neither CRDT_NODE_DIR nor HOME is set".into())
}

/// Makes (or reads) the identity; prints the node id and the fingerprint peers pin.
fn init(data_dir: &std::path::Path) -> Result<(), String> {
    let identity = Identity::load_or_create(data_dir).map_err(|e| e.to_string())?;
    let fingerprint = identity.fingerprint().map_err(|e| e.to_string())?;
    println!("node id: {}", identity.id());
    println!("fingerprint: {fingerprint}");
    Ok(())
}

fn trust(peer: &str, data_dir: &std::path::Path) -> Result<(), String> {
    let trust = TrustList::load(data_dir).map_err(|e| e.to_string())?;
    if peer.trim().len() == 64 {
        let key: Fingerprint = peer.parse().map_err(|e: NodeError| e.to_string())?;
        trust.set_key(key, true).map_err(|e| e.to_string())?;
        println!("trusted the key {key} (node {})", key.id());
    } else {
        let id = parse_node_id(peer).map_err(|e| e.to_string())?;
        trust.set(id, true).map_err(|e| e.to_string())?;
        println!("trusted {id} (by id only: prefer its fingerprint, which pins its key)");
    }
    Ok(())
}

/// How `run` runs.
struct Settings {
    listen: SocketAddr,
    peers: Vec<SocketAddr>,
    data_dir: PathBuf,
    gossip_ms: u64,
    clock_offset_ms: i64,
    no_prompt: bool,
}

async fn run(settings: Settings) -> Result<(), String> {
    let Settings {
        listen,
        peers,
        data_dir,
        gossip_ms,
        clock_offset_ms,
        no_prompt,
    } = settings;
    let mut builder = NodeBuilder::new(&data_dir)
        .listen(listen)
        .gossip_interval(Duration::from_millis(gossip_ms.max(10)))
        .clock_offset(clock_offset_ms);
    for peer in peers {
        builder = builder.peer(peer);
    }
    // Handlers first: a signal that arrives while the node starts still closes it cleanly.
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let node = builder.start().await.map_err(|e| e.to_string())?;
    println!("node {} listening on {}", node.id(), node.local_addr());
    let interactive = std::io::stdin().is_terminal() && !no_prompt;
    if interactive {
        println!("type `help` for commands");
    }

    let mut changes = node.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = changes.recv().await {
            match event {
                Event::Changed {
                    key, local: false, ..
                } => println!("~ {key} changed by a peer"),
                Event::PeerUp(id) => println!("~ peer {id} up"),
                Event::PeerDown(id) => println!("~ peer {id} down"),
                Event::TypeConflict { key } => {
                    println!("~ {key}: two types were written under it; the later type won")
                }
                Event::ClockDrift { peer, ahead_ms } => {
                    println!(
                        "~ refused a write from {peer} stamped {ahead_ms} ms ahead of our clock"
                    )
                }
                _ => {}
            }
        }
    });

    // Stdin is blocking: read it on its own thread and hand lines over. Its end closes the
    // channel; the node then serves until a signal.
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    if !no_prompt {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if lines_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
    } else {
        drop(lines_tx);
    }
    let mut reading = true;
    loop {
        if interactive {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        // Every write the prompt answered `ok` is already committed; a signal only closes
        // the store and the connections cleanly.
        let line = tokio::select! {
            line = lines.recv(), if reading => line,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let Some(line) = line else {
            reading = false;
            eprintln!("no more commands on stdin; serving peers until SIGTERM or SIGINT");
            continue;
        };
        match execute(&node, line.trim()).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => println!("error: {e}"),
        }
    }
    node.shutdown().await;
    Ok(())
}

const HELP: &str = "\
commands:
  inc KEY [N]           add N (default 1) to a grow-only counter
  incr KEY N | decr KEY N   change an up-down counter
  add KEY ELEMENT       add to a set
  remove KEY ELEMENT    remove from a set
  set KEY VALUE         write a last-writer-wins register
  write KEY VALUE       write a multi-value register (concurrent writes stay visible)
  get KEY [--all]       show an object (a large set or map: its size and first entries)
  get --after TOKEN KEY show it once this node has the write TOKEN names
                        (read-your-writes across nodes; waits up to --timeout)
  get --read N KEY      merge it from N peers first (with writes acknowledged by W
                        replicas, a quorum read when N + 1 + W exceeds the replicas)
  keys                  list every object
  peers                 known peers, up or down, and how far behind
  status                this node's id, address and traffic
  help                  this text
  quit                  stop the node

A write prints `ok TOKEN` once it is durable on this node. Before its key, a write takes
  --ack N | majority | all   wait until N peers (a majority, all) hold it durably too
  --timeout MS               how long to wait for them (default 5000); on timeout the write
                             stays and keeps spreading, and the error says who has it";

/// Runs one command line; `Ok(false)` means quit.
///
/// Words are separated by any run of spaces or tabs; a value (an element, a register value) is
/// the rest of the line after the key, with its inner spaces kept.
async fn execute(node: &Node, line: &str) -> Result<bool, String> {
    let (command, line) = word(line);
    let (options, line) = options(command, line)?;
    let (key, rest) = word(line);
    let key = (!key.is_empty()).then(|| key.to_owned());
    let rest = (!rest.is_empty()).then(|| rest.to_owned());
    let need = |what: Option<String>, name: &str| {
        what.ok_or(format!("{command}: missing {name} (try `help`)"))
    };
    // Commands that take nothing, or only a key, refuse stray words rather than ignore them.
    let no_more = |what: &Option<String>, after: &str| match what {
        Some(extra) => Err(format!("{command}: unexpected {extra:?} after {after}")),
        None => Ok(()),
    };
    let number = |what: Option<String>, default: Option<u64>| -> Result<u64, String> {
        match (what, default) {
            (Some(text), _) => text
                .trim()
                .parse()
                .map_err(|_| format!("{command}: not a number: {text}")),
            (None, Some(n)) => Ok(n),
            (None, None) => Err(format!("{command}: missing a number")),
        }
    };
    if matches!(
        command,
        "help" | "quit" | "exit" | "keys" | "peers" | "status"
    ) {
        no_more(&key, command)?;
    }
    let op = match command {
        "" => return Ok(true),
        "help" => {
            println!("{HELP}");
            return Ok(true);
        }
        "quit" | "exit" => return Ok(false),
        "get" => {
            let key = need(key, "KEY")?;
            let all = match rest.as_deref() {
                Some("--all") => true,
                None => false,
                Some(extra) => return Err(format!("get: unexpected {extra:?} after the key")),
            };
            let object = match options.after {
                Some(token) => node.get_after(&key, token, options.timeout).await,
                None => node.read(&key, options.read, options.timeout).await,
            }
            .map_err(|e| e.to_string())?;
            match object {
                Some(object) => println!("{key} = {}", shown(&object, all)),
                None => println!("{key} is not set"),
            }
            return Ok(true);
        }
        "keys" => {
            for (key, object) in node.objects().await {
                println!("{key} ({}) = {object}", object.type_name());
            }
            return Ok(true);
        }
        "peers" => {
            for peer in node.peers().await {
                let state = if peer.up { "up" } else { "down" };
                let addr = peer.info.addr.unwrap_or_else(|| "-".into());
                println!(
                    "{} {addr} {state}, lacks {} of our updates",
                    peer.info.id, peer.lag
                );
            }
            return Ok(true);
        }
        "status" => {
            let m = node.metrics().await;
            println!(
                "node {} on {}: {} rounds, {} messages / {} bytes sent, {} messages / {} bytes received, {} dropped, {} writes awaiting acknowledgements, {} type conflicts, {} writes refused for clock drift",
                node.id(),
                node.local_addr(),
                m.stats.rounds,
                m.stats.messages_sent,
                m.stats.bytes_sent,
                m.stats.messages_received,
                m.stats.bytes_received,
                m.dropped,
                m.pending_acks,
                m.stats.type_conflicts,
                m.stats.drift_refused
            );
            return Ok(true);
        }
        "inc" => Op::Inc(number(rest, Some(1))?),
        "incr" => Op::PnInc(number(rest, None)?),
        "decr" => Op::PnDec(number(rest, None)?),
        // Strings as the typed API writes them (`node.set::<String>`), so both read alike.
        "add" => Op::Add(value::encode(&need(rest, "ELEMENT")?)),
        "remove" => {
            // Removing from a key that holds nothing would make an empty set there.
            let key = need(key.clone(), "KEY")?;
            if node.get(&key).await.is_none() {
                return Err(format!("remove: {key} is not set"));
            }
            Op::Remove(value::encode(&need(rest, "ELEMENT")?))
        }
        "set" => {
            // The node stamps it with its own hybrid logical clock.
            let (key, value) = (need(key, "KEY")?, need(rest, "VALUE")?);
            let token = node
                .register::<String>(&key)
                .acked(options.ack, options.timeout)
                .set(&value)
                .await
                .map_err(|e| e.to_string())?;
            println!("ok {token}");
            return Ok(true);
        }
        "write" => Op::Mv(value::encode(&need(rest, "VALUE")?)),
        other => return Err(format!("unknown command {other:?} (try `help`)")),
    };
    let key = need(key, "KEY")?;
    let token = node
        .update_acked(&key, op, options.ack, options.timeout)
        .await
        .map_err(|e| e.to_string())?;
    println!("ok {token}");
    Ok(true)
}

/// The first word of `line` and the rest, both without surrounding blanks.
fn word(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.split_once(char::is_whitespace) {
        Some((first, rest)) => (first, rest.trim_start()),
        None => (line, ""),
    }
}

/// Elements shown by `get` before it says how many more there are (unless `--all`).
const SHOWN: usize = 20;

/// `object` for `get`: a large set or map as its size and first entries.
fn shown(object: &crdt_net::Object, all: bool) -> String {
    use crdt_net::Object;
    let (count, first): (usize, Vec<String>) = match object {
        Object::Set(set) => (
            set.len(),
            set.iter().take(SHOWN).map(|e| value::show(e)).collect(),
        ),
        Object::Map(map) => (
            map.len(),
            map.iter()
                .take(SHOWN)
                .map(|(k, v)| format!("{}: {v}", value::show(k)))
                .collect(),
        ),
        _ => (0, Vec::new()),
    };
    if all || count <= SHOWN {
        return object.to_string();
    }
    format!(
        "{{{}, ...}} ({count} entries; `get KEY --all` shows every one)",
        first.join(", ")
    )
}

/// A command's `--ack`, `--timeout` and `--after` options.
struct Options {
    ack: Ack,
    read: ReadLevel,
    timeout: Duration,
    after: Option<Token>,
}

/// Takes the options at the start of `line`; returns them and the rest.
fn options<'a>(command: &str, mut line: &'a str) -> Result<(Options, &'a str), String> {
    let mut options = Options {
        ack: Ack::Local,
        read: ReadLevel::Local,
        timeout: Duration::from_secs(5),
        after: None,
    };
    while let Some(rest) = line.strip_prefix("--") {
        let (name, rest) = word(rest);
        let (value, rest) = word(rest);
        let bad = || format!("{command}: bad value for --{name}: {value:?}");
        match name {
            "ack" => {
                options.ack = match value {
                    "majority" => Ack::Majority,
                    "all" => Ack::All,
                    n => Ack::Peers(n.parse().map_err(|_| bad())?),
                }
            }
            "read" => options.read = ReadLevel::Peers(value.parse().map_err(|_| bad())?),
            "timeout" => options.timeout = Duration::from_millis(value.parse().map_err(|_| bad())?),
            "after" => options.after = Some(value.parse().map_err(|_| bad())?),
            other => return Err(format!("{command}: unknown option --{other} (try `help`)")),
        }
        line = rest;
    }
    Ok((options, line))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_wire_formats_this_build_speaks() {
        let protocol = format!("wire protocol {}", crdt_net::PROTOCOL_VERSION);
        let format = format!("encoding format {}", crdt_core::FORMAT_VERSION);
        assert!(super::VERSION.contains(&protocol), "{}", super::VERSION);
        assert!(super::VERSION.contains(&format), "{}", super::VERSION);
    }

    #[test]
    fn words_are_split_on_any_blanks() {
        assert_eq!(super::word("  add\tcart   milk  "), ("add", "cart   milk"));
        assert_eq!(super::word("quit"), ("quit", ""));
        assert_eq!(super::word(""), ("", ""));
    }
}
