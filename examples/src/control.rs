//! The control socket: a Unix socket in the data directory (`control.sock`, owner-only) on
//! which a running node serves [`Request`]s, one line of JSON each, answered by one line of
//! JSON: `{"ok":true,"text":...,...}` or `{"ok":false,"error":{"kind":...,"message":...}}`.
//! A `watch` request is answered by `{"ok":true,...}` and then one line per change, until
//! the client closes the connection.
//!
//! ```sh
//! printf '%s\n' '{"op":"add","key":"cart","value":"milk"}' | socat - UNIX-CONNECT:$DIR/control.sock
//! ```
//!
//! Requests are user input: a line longer than [`MAX_LINE`] is answered with a `too_long`
//! error and the connection closed; one that does not parse gets a `bad_request` error and
//! the connection goes on. At most [`MAX_CLIENTS`] connections are served at once, and
//! [`MAX_WATCHERS`] watches besides: a watch gives its client's slot back, so watchers left
//! open never keep `status` or `trust` out. When every slot is taken, a newcomer waits a
//! little and connections idle for a second or more are closed to make room (they were
//! waiting for nothing), rather than keeping every command out until their idle timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crdt_net::node::Node;
use crdt_net::Event;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::execute::{cut, execute, limited, shown, Failure, QUOTED};
use crate::request::Request;

/// The socket's name in the data directory.
pub const SOCKET: &str = "control.sock";
/// The longest request line, in bytes (a value may be up to a message's size, 1 MiB, and
/// JSON escapes can make it longer).
pub const MAX_LINE: usize = 8 << 20;
/// Connections served at once; more are told `busy` and closed.
pub const MAX_CLIENTS: usize = 32;
/// Watches served at once, apart from the [`MAX_CLIENTS`] slots; one more is told `busy`.
pub const MAX_WATCHERS: usize = 32;
/// How long a connection may sit without a request before it is closed.
const IDLE: Duration = Duration::from_secs(300);
/// The longest answer a client reads (a large set with `--all`).
const MAX_ANSWER: usize = 512 << 20;
/// Unix socket paths are limited (108 bytes on Linux, 104 on macOS).
const MAX_SOCKET_PATH: usize = 100;

/// The control socket's path for the data directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Whether the control socket's path in `dir` is short enough for a Unix socket, checked
/// before a node starts so that it does not start only to stop.
pub fn check_path(dir: &Path) -> Result<(), String> {
    let path = socket_path(dir);
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "{}: the path is too long for a Unix socket ({} bytes, at most {MAX_SOCKET_PATH}); use a shorter --data-dir",
            path.display(),
            path.as_os_str().len()
        ));
    }
    Ok(())
}

/// Opens the control socket in `dir` for the node that holds `dir`'s lock (so a socket left
/// there is stale: a node that was killed). The socket is readable and writable by its owner
/// only, and `dir` must belong to the same user.
pub fn bind(dir: &Path) -> Result<UnixListener, String> {
    check_path(dir)?;
    let path = socket_path(dir);
    #[cfg(unix)]
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path)
            .map_err(|e| format!("{}: cannot remove the stale socket: {e}", path.display()))?,
        Ok(_) => {
            return Err(format!(
                "{}: exists and is not a socket; move it away",
                path.display()
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // The socket is ours: the directory must be too, or its owner could replace the socket.
    let owner = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.uid())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    if owner(dir)? != owner(&path)? {
        let _ = std::fs::remove_file(&path);
        return Err(format!(
            "{}: belongs to another user; a node runs on a data directory of its own user",
            dir.display()
        ));
    }
    Ok(listener)
}

/// Serves `listener` until `stop` turns true; then closes every connection and returns.
pub async fn serve(listener: UnixListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let slots = Slots::default();
    let mut clients = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        // Reap finished connections so the set stays bounded.
        while clients.try_join_next().is_some() {}
        let Ok((mut stream, _)) = accepted else {
            // Out of descriptors, say: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (node, slots) = (node.clone(), slots.clone());
        // Newcomers already waiting go first.
        let waiting = slots.queued.available_permits() < MAX_CLIENTS;
        if let Some(slot) = (!waiting)
            .then(|| slots.clients.clone().try_acquire_owned().ok())
            .flatten()
        {
            clients.spawn(async move { connection(stream, &node, slot, &slots).await });
            continue;
        }
        let Ok(queued) = slots.queued.clone().try_acquire_owned() else {
            busy(&mut stream).await;
            continue;
        };
        // Full: idle connections make room, and the newcomer takes the first slot freed.
        slots.crowded.notify_waiters();
        clients.spawn(async move {
            let slot = tokio::time::timeout(QUEUED, slots.clients.clone().acquire_owned()).await;
            drop(queued);
            match slot {
                Ok(Ok(slot)) => connection(stream, &node, slot, &slots).await,
                _ => busy(&mut stream).await,
            }
        });
    }
    clients.shutdown().await;
}

/// The control socket's connection slots.
#[derive(Clone)]
struct Slots {
    /// One per connection served.
    clients: Arc<Semaphore>,
    /// One per watch (which gives its client slot back).
    watchers: Arc<Semaphore>,
    /// One per newcomer waiting for a client slot.
    queued: Arc<Semaphore>,
    /// Told when a newcomer waits: idle connections close.
    crowded: Arc<Notify>,
}

impl Default for Slots {
    fn default() -> Slots {
        Slots {
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
            queued: Arc::new(Semaphore::new(MAX_CLIENTS)),
            crowded: Arc::new(Notify::new()),
        }
    }
}

/// How long a newcomer waits for a slot when every one is taken.
const QUEUED: Duration = Duration::from_secs(2);
/// A connection idle this long is closed when a newcomer waits for its slot.
const IDLE_WHEN_CROWDED: Duration = Duration::from_secs(1);

/// Tells a client that no slot is free, and closes its connection.
async fn busy(stream: &mut UnixStream) {
    let busy = Failure::new(
        "busy",
        format!("{MAX_CLIENTS} clients are connected; try again"),
    );
    let _ = stream
        .write_all(format!("{}\n", busy.to_json()).as_bytes())
        .await;
}

/// Resolves when a newcomer waits for a slot after this connection has been idle for
/// [`IDLE_WHEN_CROWDED`].
async fn crowded_out(crowded: &Notify) {
    tokio::time::sleep(IDLE_WHEN_CROWDED).await;
    crowded.notified().await;
}

/// Serves one client, holding `slot`: request lines, each answered in turn; a watch trades
/// the slot for one of the watch slots.
async fn connection(stream: UnixStream, node: &Node, slot: OwnedSemaphorePermit, slots: &Slots) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let next = tokio::time::timeout(IDLE, read_line(&mut reader, MAX_LINE));
        let next = tokio::select! {
            next = next => next,
            // A line under way is cut off too: that client was not sending either.
            () = crowded_out(&slots.crowded) => return,
        };
        let line = match next {
            Err(_) | Ok(Ok(None)) | Ok(Err(_)) => return,
            Ok(Ok(Some(Line::TooLong))) => {
                let e = Failure::new(
                    "too_long",
                    format!("a request line is at most {MAX_LINE} bytes"),
                );
                let _ = send(&mut writer, &e.to_json()).await;
                return; // The rest of the line cannot be told from the next request.
            }
            Ok(Ok(Some(Line::Text(line)))) => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request = match parse(&line) {
            Ok(request) => request,
            Err(e) => {
                if send(&mut writer, &e.to_json()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Request::Watch { key } = request {
            let Ok(watching) = slots.watchers.clone().try_acquire_owned() else {
                let busy = Failure::new(
                    "busy",
                    format!("{MAX_WATCHERS} watches are open; close one or try again"),
                );
                let _ = send(&mut writer, &busy.to_json()).await;
                return;
            };
            drop(slot);
            watch_changes(node, key, &mut reader, &mut writer).await;
            drop(watching);
            return;
        }
        // A request may wait long (for acknowledgements, or a read from peers): a client
        // that leaves meanwhile must not hold its slot until the wait times out.
        let answer = tokio::select! {
            answer = execute(node, request) => match answer {
                Ok(reply) => reply.to_json(),
                Err(e) => e.to_json(),
            },
            () = hung_up(reader.get_ref().as_ref()) => return,
        };
        if send(&mut writer, &answer).await.is_err() {
            return;
        }
    }
}

/// How often a connection whose request waits is checked for a client that left.
const HANG_UP_CHECK: Duration = Duration::from_millis(500);

/// Resolves once the client has closed its connection. Only a full close counts: a client
/// that shut just its writing side after its request (`socat`, `nc -N`) still waits for the
/// answer. (Reading cannot tell the two apart; the socket's hang-up flag can.)
async fn hung_up(stream: &UnixStream) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut every = tokio::time::interval(HANG_UP_CHECK);
    loop {
        every.tick().await;
        let mut fds = [PollFd::new(stream, PollFlags::empty())];
        if poll(&mut fds, Some(&now)).is_ok_and(|n| n > 0)
            && fds[0].revents().contains(PollFlags::HUP)
        {
            return;
        }
    }
}

/// A request line, or why it is not one.
fn parse(line: &[u8]) -> Result<Request, Failure> {
    let text =
        std::str::from_utf8(line).map_err(|_| Failure::bad("a request must be UTF-8 text"))?;
    serde_json::from_str(text).map_err(|e| {
        // serde's message quotes what it did not expect: an unknown op or field, whole.
        let e = cut(&e.to_string(), 4 * QUOTED);
        Failure::bad(format!(
            "not a request ({e}); a request is one line of JSON such as {{\"op\":\"get\",\"key\":\"cart\"}}"
        ))
    })
}

/// Streams the changes (of `key` only, if given) until the client closes its end.
async fn watch_changes(
    node: &Node,
    key: Option<String>,
    reader: &mut (impl AsyncBufRead + Unpin),
    writer: &mut (impl AsyncWriteExt + Unpin),
) {
    if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        let _ = send(writer, &Failure::bad("a key cannot be empty").to_json()).await;
        return;
    }
    let mut events = node.subscribe();
    let what = key.as_deref().map_or("every key".into(), str::to_owned);
    let started = json!({"ok": true, "text": format!("watching {what} (until interrupted)"), "watching": key});
    if send(writer, &started.to_string()).await.is_err() {
        return;
    }
    let mut ignored = [0u8; 1024];
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // Anything the client sends is ignored; its end closing ends the watch.
            read = reader.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        // Take what else is waiting too, and read each changed key once for all of it: a
        // burst of changes (a catch-up) costs one read per key, not one per change.
        let mut batch = vec![event];
        while batch.len() < WATCH_BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(Ok(event)),
                Err(TryRecvError::Lagged(missed)) => batch.push(Err(RecvError::Lagged(missed))),
                Err(_) => break,
            }
        }
        let mut read = std::collections::BTreeSet::new();
        for event in batch {
            let line = match event {
                Ok(Event::Changed {
                    key: changed,
                    local,
                    ..
                }) => {
                    if key.as_ref().is_some_and(|k| *k != changed) || !read.insert(changed.clone())
                    {
                        continue;
                    }
                    let object = node.get(&changed).await.unwrap_or_default();
                    let by = if local { "here" } else { "by a peer" };
                    json!({
                        "event": "changed",
                        "key": changed,
                        "local": local,
                        "type": object.type_name(),
                        "value": limited(&object, false),
                        "text": format!("{changed} = {} (changed {by})", shown(&object, false)),
                    })
                }
                Ok(Event::PeerUp(peer)) => {
                    json!({"event": "peer_up", "peer": peer.to_string(), "text": format!("peer {peer} up")})
                }
                Ok(Event::PeerDown(peer)) => {
                    json!({"event": "peer_down", "peer": peer.to_string(), "text": format!("peer {peer} down")})
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => json!({
                    "event": "lagged",
                    "missed": missed,
                    "text": format!("missed {missed} events (this watcher fell behind); `get` shows the objects as they are"),
                }),
                Err(RecvError::Closed) => return,
            };
            if send(writer, &line.to_string()).await.is_err() {
                return;
            }
        }
    }
}

/// Events a watcher takes at once before reading the keys they changed.
const WATCH_BATCH: usize = 1024;

async fn send(writer: &mut (impl AsyncWriteExt + Unpin), line: &str) -> std::io::Result<()> {
    writer.write_all(line.as_bytes()).await?;
    writer.write_all(b"\n").await?;
    writer.flush().await
}

/// A line read with a bound.
enum Line {
    Text(Vec<u8>),
    TooLong,
}

/// The next line (without its newline), at most `max` bytes; `None` at the end of input.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let read = reader
        .take(max as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(Line::Text(line)))
}

/// Why a control command could not reach a node.
#[derive(Debug)]
pub enum Unreachable {
    /// No node runs on the data directory.
    NotRunning(String),
    /// Something else failed.
    Failed(String),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::NotRunning(e) | Unreachable::Failed(e) => f.write_str(e),
        }
    }
}

/// A client's connection to the node running on a data directory.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the node running on `dir`.
    pub async fn connect(dir: &Path) -> Result<Client, Unreachable> {
        // No node can run there (`run` refuses it): say why, not the socket call's error.
        check_path(dir).map_err(|e| {
            Unreachable::NotRunning(format!("no node can run on this data directory: {e}"))
        })?;
        let path = socket_path(dir);
        let stream = UnixStream::connect(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Unreachable::NotRunning(format!(
                "no node is running on {} (no {SOCKET} there); start one with `crdt-node run`",
                dir.display()
            )),
            std::io::ErrorKind::ConnectionRefused => Unreachable::NotRunning(format!(
                "no node is running on {} (its {SOCKET} was left by a node that did not stop cleanly); start one with `crdt-node run`",
                dir.display()
            )),
            _ => Unreachable::Failed(format!("{}: {e}", path.display())),
        })?;
        let (reader, writer) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// Sends `request`.
    pub async fn send(&mut self, request: &Request) -> Result<(), Unreachable> {
        let line =
            serde_json::to_string(request).map_err(|e| Unreachable::Failed(e.to_string()))?;
        send(&mut self.writer, &line).await.map_err(|e| {
            Unreachable::Failed(format!("the node closed the control connection: {e}"))
        })
    }

    /// The next answer line, parsed; `None` once the node closed the connection.
    pub async fn answer(&mut self) -> Result<Option<(String, Value)>, Unreachable> {
        let failed = |e: String| Unreachable::Failed(format!("reading the node's answer: {e}"));
        match read_line(&mut self.reader, MAX_ANSWER).await {
            Ok(None) => Ok(None),
            Ok(Some(Line::TooLong)) => Err(failed(format!("longer than {MAX_ANSWER} bytes"))),
            Ok(Some(Line::Text(bytes))) => {
                let text = String::from_utf8(bytes).map_err(|e| failed(e.to_string()))?;
                let value = serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
                Ok(Some((text, value)))
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }
}
