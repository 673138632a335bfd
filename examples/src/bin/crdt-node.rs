//! `crdt-node`: a replica for laptops, synced over QUIC with the peers you trust.
//!
//! ```text
//! crdt-node init                       # make the identity; prints the node id and fingerprint
//! crdt-node trust 1f2e3d4c...          # pin a peer's key (its fingerprint)
//! crdt-node run --peer laptop-b.local:4433 </dev/null &   # serve until SIGTERM
//! crdt-node add cart milk              # from any terminal or script, while it runs
//! crdt-node get cart --json
//! ```
//!
//! `run` reads commands from stdin when it is a terminal (type `help`). When stdin ends, or
//! with `--no-prompt`, the node keeps serving its peers and its control socket until SIGTERM
//! or SIGINT, so it runs under systemd, launchd, nohup or in a container. The other commands
//! talk to the running node over the control socket in its data directory
//! (`crdt_node::control`); `config.toml` there holds what would otherwise be flags
//! (`crdt_node::config`).

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use crdt_net::http::{ApiToken, HttpError, Server};
use crdt_net::node::{Identity, Node, NodeBuilder, TrustList};
use crdt_net::Event;
use crdt_node::args::{Cli, Command, Control, DataDir, Run, RunArgs};
use crdt_node::config::{data_dir_or_default, private_dir, Config, Peer};
use crdt_node::control::{self, Client, Unreachable};
use crdt_node::execute::{execute, peer_key, trusted_id_text, trusted_key_text, PeerKey};
use crdt_node::prompt::{self, Line, HELP};
use crdt_node::request::Request;
use tokio::signal::unix::{signal, SignalKind};

/// Prints a line on stdout; whether it could (a reader such as `head` may have left: that
/// ends a control command quietly, and a node serves on, rather than panicking as
/// `println!` does).
macro_rules! say {
    ($($t:tt)*) => {
        say(format_args!($($t)*))
    };
}

/// Prints a line on stderr, if it can.
macro_rules! tell {
    ($($t:tt)*) => {
        tell(format_args!($($t)*))
    };
}

fn say(line: std::fmt::Arguments<'_>) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

fn tell(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The address a node listens on unless told otherwise.
const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node that serves in the background logs its connections and catch-ups; the prompt
    // and the control commands only say what went wrong.
    let serving_log = match &cli.command {
        Command::Run(run) => run.args.no_prompt || !std::io::stdin().is_terminal(),
        _ => false,
    };
    let default = if serving_log {
        "warn,crdt_net=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // No colour codes in a log file or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command.into_control() {
        Ok(control) => return control_command(control).await,
        Err(Command::Init(dir)) => init(dir),
        Err(Command::Run(boxed)) => {
            let Run { args, dir } = *boxed;
            run(args, dir).await
        }
        Err(_) => Err("not a command".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tell!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes (or reads) the identity; prints the node id and the fingerprint peers pin.
fn init(dir: DataDir) -> Result<(), String> {
    let data_dir = data_dir_or_default(dir.data_dir)?;
    private_dir(&data_dir)?;
    let identity = Identity::load_or_create(&data_dir).map_err(|e| e.to_string())?;
    let fingerprint = identity.fingerprint().map_err(|e| e.to_string())?;
    say!("node id: {}", identity.id());
    say!("fingerprint: {fingerprint}");
    if Config::write_default(&data_dir)? {
        tell!(
            "wrote {} (commented defaults)",
            data_dir.join(crdt_node::config::CONFIG_FILE).display()
        );
    }
    Ok(())
}

/// Sends a control command to the running node and prints its answer; `trust` and `untrust`
/// edit the trust file when no node runs.
async fn control_command(control: Control) -> ExitCode {
    let Control { request, dir, json } = control;
    let fail = |kind: &str, message: String| {
        if json {
            let line =
                serde_json::json!({"ok": false, "error": {"kind": kind, "message": message}});
            say!("{line}");
        } else {
            tell!("error: {message}");
        }
        ExitCode::FAILURE
    };
    let dir = match data_dir_or_default(dir) {
        Ok(dir) => dir,
        Err(e) => return fail("bad_request", e),
    };
    let client = match Client::connect(&dir).await {
        Ok(client) => client,
        Err(Unreachable::NotRunning(message)) => {
            return match &request {
                Request::Trust { peer } => offline_trust(&dir, peer, true, json),
                Request::Untrust { peer } => offline_trust(&dir, peer, false, json),
                Request::Status {} => offline_status(&dir, message, json),
                _ => fail("not_running", message),
            }
        }
        Err(Unreachable::Failed(message)) => return fail("failed", message),
    };
    match talk(client, &request, json).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail("failed", e.to_string()),
    }
}

/// Sends `request` and prints the answers (a watch's until the node or the user ends it);
/// whether the node answered `ok`.
async fn talk(mut client: Client, request: &Request, json: bool) -> Result<bool, Unreachable> {
    client.send(request).await?;
    let watching = matches!(request, Request::Watch { .. });
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| Unreachable::Failed(e.to_string()))?;
    let mut first = true;
    loop {
        let answer = tokio::select! {
            answer = client.answer() => answer?,
            _ = interrupt.recv() => return Ok(true),
        };
        let Some((line, value)) = answer else {
            if first {
                return Err(Unreachable::Failed(
                    "the node closed the connection without answering (is it stopping?); a write may or may not have been made: `get` tells".into(),
                ));
            }
            return Ok(true);
        };
        let ok = value.get("ok").and_then(|v| v.as_bool());
        let text = value.get("text").and_then(|v| v.as_str()).unwrap_or("");
        let printed = if json {
            say!("{line}")
        } else if ok == Some(false) {
            let message = value
                .pointer("/error/message")
                .and_then(|v| v.as_str())
                .unwrap_or("the node refused the request");
            tell!("error: {message}");
            true
        } else {
            text.is_empty() || say!("{text}")
        };
        if !printed {
            // Nobody reads the answers any more (`crdt-node watch | head -3`): done.
            return Ok(ok != Some(false));
        }
        if ok == Some(false) {
            return Ok(false);
        }
        if !watching {
            return Ok(true);
        }
        first = false;
    }
}

/// `status` with no node running: it says so (exit status 1), with the node's id and
/// fingerprint if the data directory has an identity.
fn offline_status(dir: &Path, message: String, json: bool) -> ExitCode {
    let identity = dir
        .join("node.crt")
        .exists()
        .then(|| Identity::load_or_create(dir).ok())
        .flatten();
    let id = identity.as_ref().map(|i| i.id().to_string());
    let fingerprint = identity
        .as_ref()
        .and_then(|i| i.fingerprint().ok())
        .map(|f| f.to_string());
    if json {
        let line = serde_json::json!({
            "ok": false,
            "error": {"kind": "not_running", "message": message},
            "id": id,
            "fingerprint": fingerprint,
        });
        say!("{line}");
    } else {
        if let (Some(id), Some(fingerprint)) = (id, fingerprint) {
            say!("node {id} (not running)\nfingerprint: {fingerprint}");
        }
        tell!("error: {message}");
    }
    ExitCode::FAILURE
}

/// `trust` or `untrust` with no node running: edits the trust file it reads when it starts.
fn offline_trust(dir: &Path, peer: &str, trusted: bool, json: bool) -> ExitCode {
    let edited = (|| -> Result<String, String> {
        let list = TrustList::load(dir).map_err(|e| e.to_string())?;
        let key = peer_key(peer).map_err(|e| e.message)?;
        Ok(match (key, trusted) {
            (PeerKey::Key(key), true) => {
                list.set_key(key, true).map_err(|e| e.to_string())?;
                trusted_key_text(key)
            }
            (PeerKey::Id(id), true) => {
                list.set(id, true).map_err(|e| e.to_string())?;
                trusted_id_text(id)
            }
            (PeerKey::Key(key), false) => {
                list.set_key(key, false).map_err(|e| e.to_string())?;
                format!("no longer trusting the key {key}")
            }
            (PeerKey::Id(id), false) => {
                list.set(id, false).map_err(|e| e.to_string())?;
                format!("no longer trusting {id}")
            }
        })
    })();
    match edited {
        Ok(text) => {
            if json {
                say!(
                    "{}",
                    serde_json::json!({"ok": true, "text": text, "running": false})
                );
            } else {
                say!("{text} (no node is running: it reads the trust list when it starts)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                say!(
                    "{}",
                    serde_json::json!({"ok": false, "error": {"kind": "bad_request", "message": e}})
                );
            } else {
                tell!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the node: its flags over `config.toml` over the defaults; a prompt on stdin while it
/// has lines, the control socket, and peers until SIGTERM or SIGINT.
async fn run(args: RunArgs, dir: DataDir) -> Result<(), String> {
    let data_dir = data_dir_or_default(dir.data_dir)?;
    control::check_path(&data_dir)?;
    private_dir(&data_dir)?;
    let config = Config::load(&data_dir)?;
    let listen = match args.listen.or(config.listen) {
        Some(listen) => listen,
        None => DEFAULT_LISTEN.parse().map_err(|e| format!("{e}"))?,
    };
    let peers = if args.peers.is_empty() {
        config
            .peers
            .iter()
            .map(|p| Peer::parse(p))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.peers
    };
    let gossip_ms = args.gossip_ms.or(config.gossip_ms).unwrap_or(1000);
    let mut builder = NodeBuilder::new(&data_dir)
        .listen(listen)
        .gossip_interval(Duration::from_millis(gossip_ms.max(10)))
        .fanout(config.fanout.unwrap_or(2).max(1))
        .mdns(config.mdns.unwrap_or(true))
        .clock_offset(args.clock_offset_ms);
    for peer in peers {
        builder = match peer {
            Peer::Addr(addr) => builder.peer(addr),
            Peer::Name(name) => builder.peer_named(name),
        };
    }
    // Handlers first: a signal that arrives while the node starts still closes it cleanly.
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let node = builder.start().await.map_err(|e| e.to_string())?;
    // Bound once the store's lock is held: a socket left there is a killed node's.
    let listener = match control::bind(&data_dir) {
        Ok(listener) => listener,
        Err(e) => {
            node.shutdown().await;
            return Err(format!("cannot open the control socket: {e}"));
        }
    };
    let node = Arc::new(node);
    say!("node {} listening on {}", node.id(), node.local_addr());
    let no_prompt = args.no_prompt;
    let interactive = std::io::stdin().is_terminal() && !no_prompt;
    if interactive {
        say!("type `help` for commands");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = match args.http.or(config.http) {
        Some(addr) => {
            let remote = args.http_allow_remote || config.http_allow_remote.unwrap_or(false);
            match start_http(&node, &data_dir, addr, remote, stopped.clone()).await {
                Ok(task) => Some(task),
                Err(e) => {
                    drop(listener);
                    let _ = std::fs::remove_file(control::socket_path(&data_dir));
                    if let Ok(node) = Arc::try_unwrap(node) {
                        node.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let server = tokio::spawn(control::serve(listener, node.clone(), stopped));

    let mut changes = node.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = changes.recv().await {
            let line = match event {
                Event::Changed {
                    key, local: false, ..
                } => format!("~ {key} changed by a peer"),
                Event::PeerUp(id) => format!("~ peer {id} up"),
                Event::PeerDown(id) => format!("~ peer {id} down"),
                Event::TypeConflict { key } => {
                    format!("~ {key}: two types were written under it; the later type won")
                }
                Event::ClockDrift { peer, ahead_ms } => format!(
                    "~ refused a write from {peer} stamped {ahead_ms} ms ahead of our clock"
                ),
                _ => continue,
            };
            // Stdout gone (a pipe whose reader left): the node serves on, silently.
            if !say!("{line}") {
                break;
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
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"> ").and_then(|()| out.flush());
        }
        // Every write answered `ok` is already committed; a signal only closes the store
        // and the connections cleanly.
        let line = tokio::select! {
            line = lines.recv(), if reading => line,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let Some(line) = line else {
            reading = false;
            tell!(
                "no more commands on stdin; serving peers and {} until SIGTERM or SIGINT",
                control::SOCKET
            );
            continue;
        };
        // A prompt whose output is gone still runs its commands (stdin may go on).
        let _ = match prompt::parse(&line) {
            Ok(Line::Nothing) => true,
            Ok(Line::Help) => say!("{HELP}"),
            Ok(Line::Quit) => break,
            Ok(Line::Request(request)) => match execute(&node, request).await {
                Ok(reply) => say!("{}", reply.text),
                Err(e) => say!("error: {e}"),
            },
            Err(e) => say!("error: {e}"),
        };
    }
    let _ = stop.send(true);
    let _ = server.await;
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => tell!("warning: {e}"),
            Err(e) => tell!("warning: the HTTP API stopped abnormally: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let _ = std::fs::remove_file(control::socket_path(&data_dir));
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        // Not expected: every holder has stopped. Dropping the node still stops it (every
        // write answered `ok` is committed already), without waiting for the store to close.
        Err(node) => {
            tell!("warning: the node is still in use at exit; stopping it without waiting");
            drop(node)
        }
    }
    Ok(())
}

/// Starts the local HTTP API on `addr` (its token in the data directory); it stops when
/// `stopped` turns true.
async fn start_http(
    node: &Arc<Node>,
    data_dir: &Path,
    addr: SocketAddr,
    allow_remote: bool,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), HttpError>>, String> {
    let token = ApiToken::load_or_create(data_dir).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    if !allow_remote && !bound.ip().is_loopback() {
        return Err(HttpError::NotLoopback(bound).to_string() + " (--http-allow-remote)");
    }
    say!(
        "HTTP API on http://{bound} (bearer token in {})",
        data_dir.join(crdt_net::http::TOKEN_FILE).display()
    );
    let server = Server::new(node.clone(), token).allow_remote(allow_remote);
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    Ok(tokio::spawn(server.serve(listener, shutdown)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_wire_formats_this_build_speaks() {
        let version = crdt_node::args::VERSION;
        let protocol = format!("wire protocol {}", crdt_net::PROTOCOL_VERSION);
        let format = format!("encoding format {}", crdt_core::FORMAT_VERSION);
        assert!(version.contains(&protocol), "{version}");
        assert!(version.contains(&format), "{version}");
    }
}
