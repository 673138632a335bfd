//! Running a [`Request`] on a node, and how its answer reads: a line or a few for people, and
//! JSON fields for scripts.

use crdt_net::node::{parse_node_id, Fingerprint, Node, NodeError, ReadLevel, Token};
use crdt_net::{value, Object, Op};
use serde_json::{json, Map, Value};

use crate::request::{timeout, Request};

/// A request's answer: `text` for people, `data` for scripts.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// What the prompt and the control command print.
    pub text: String,
    /// The answer's fields (with `--json`, or on the socket).
    pub data: Map<String, Value>,
}

impl Reply {
    fn new(text: impl Into<String>, data: Value) -> Reply {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Reply {
            text: text.into(),
            data,
        }
    }

    /// The answer as one line of JSON: `{"ok":true,"text":...,` and the fields `}`.
    pub fn to_json(&self) -> String {
        let mut line = Map::new();
        line.insert("ok".into(), Value::Bool(true));
        line.insert("text".into(), Value::String(self.text.clone()));
        line.extend(self.data.clone());
        Value::Object(line).to_string()
    }
}

/// Why a request failed: a kind for scripts to branch on, and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `bad_request`, `not_set`, `wrong_type`, `refused`, `timeout`, `too_long`, `busy`,
    /// `stopped` or `failed`.
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// A request that cannot be run as given.
    pub fn bad(message: impl Into<String>) -> Failure {
        Failure::new("bad_request", message)
    }

    /// The failure as one line of JSON: `{"ok":false,"error":{"kind":...,"message":...}}`.
    pub fn to_json(&self) -> String {
        json!({"ok": false, "error": {"kind": self.kind, "message": self.message}}).to_string()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Failure {
        let kind = match &e {
            NodeError::Update(_) | NodeError::Refused(_) => "refused",
            NodeError::WrongType(_) | NodeError::Value(_) => "wrong_type",
            NodeError::AckTimeout { .. }
            | NodeError::ReadTimeout { .. }
            | NodeError::NotSeen(_) => "timeout",
            NodeError::BadToken(_) | NodeError::BadNodeId(_) => "bad_request",
            NodeError::Stopped => "stopped",
            _ => "failed",
        };
        Failure::new(kind, e.to_string())
    }
}

/// Runs `request` on `node`. (`Watch` streams, so the control socket serves it itself.)
pub async fn execute(node: &Node, request: Request) -> Result<Reply, Failure> {
    if request.key().is_some_and(|k| k.trim().is_empty()) {
        return Err(Failure::bad("a key cannot be empty"));
    }
    let (key, op, wait) = match request {
        Request::Add { key, value, wait } => (key, Op::Add(value::encode(&value)), wait),
        Request::Remove { key, value, wait } => {
            // Removing from a key that holds nothing would make an empty set there.
            if node.get(&key).await.is_none() {
                return Err(Failure::new("not_set", format!("remove: {key} is not set")));
            }
            (key, Op::Remove(value::encode(&value)), wait)
        }
        Request::Inc { key, by, wait } => (key, Op::Inc(by), wait),
        Request::Incr { key, by, wait } => (key, Op::PnInc(by), wait),
        Request::Decr { key, by, wait } => (key, Op::PnDec(by), wait),
        Request::Write { key, value, wait } => (key, Op::Mv(value::encode(&value)), wait),
        Request::Set { key, value, wait } => {
            // The node stamps it with its own hybrid logical clock.
            let token = node
                .register::<String>(&key)
                .acked(wait.ack(), wait.timeout())
                .set(&value)
                .await?;
            return Ok(written(token));
        }
        Request::Get {
            key,
            all,
            after,
            read,
            timeout_ms,
        } => return get(node, &key, all, after, read, timeout_ms).await,
        Request::Keys {} => return keys(node),
        Request::Status {} => return Ok(status(node).await),
        Request::Peers {} => return Ok(peers(node).await),
        Request::Trust { peer } => return trust(node, &peer),
        Request::Untrust { peer } => return untrust(node, &peer),
        Request::Watch { .. } => {
            return Err(Failure::bad(
                "watch streams changes: ask the control socket (`crdt-node watch`)",
            ))
        }
    };
    let token = node
        .update_acked(&key, op, wait.ack(), wait.timeout())
        .await?;
    Ok(written(token))
}

fn written(token: Token) -> Reply {
    Reply::new(format!("ok {token}"), json!({"token": token.to_string()}))
}

async fn get(
    node: &Node,
    key: &str,
    all: bool,
    after: Option<String>,
    read: usize,
    timeout_ms: Option<u64>,
) -> Result<Reply, Failure> {
    let timeout = timeout(timeout_ms);
    let object = match after {
        Some(token) => {
            let token: Token = token.parse()?;
            node.get_after(key, token, timeout).await?
        }
        None if read > 0 => node.read(key, ReadLevel::Peers(read), timeout).await?,
        None => node.get(key).await,
    };
    Ok(match object {
        Some(object) => Reply::new(
            format!("{key} = {}", shown(&object, all)),
            json!({"key": key, "type": object.type_name(), "value": limited(&object, all)}),
        ),
        None => Reply::new(
            format!("{key} is not set"),
            json!({"key": key, "type": null, "value": null}),
        ),
    })
}

fn keys(node: &Node) -> Result<Reply, Failure> {
    let (mut text, mut list) = (Vec::new(), Vec::new());
    node.for_each(|key, object| {
        text.push(format!(
            "{key} ({}) = {}",
            object.type_name(),
            shown(object, false)
        ));
        list.push(json!({"key": key, "type": object.type_name(), "value": limited(object, false)}));
    })?;
    Ok(Reply::new(text.join("\n"), json!({ "keys": list })))
}

async fn peers(node: &Node) -> Reply {
    let peers = node.peers().await;
    let text: Vec<String> = peers
        .iter()
        .map(|peer| {
            let state = if peer.up { "up" } else { "down" };
            let addr = peer.info.addr.as_deref().unwrap_or("-");
            format!(
                "{} {addr} {state}, lacks {} of our updates",
                peer.info.id, peer.lag
            )
        })
        .collect();
    let list: Vec<Value> = peers
        .iter()
        .map(|peer| {
            json!({
                "id": peer.info.id.to_string(),
                "addr": peer.info.addr,
                "up": peer.up,
                "lag": peer.lag,
                "trusted": node.trust_list().contains(peer.info.id),
            })
        })
        .collect();
    Reply::new(text.join("\n"), json!({ "peers": list }))
}

async fn status(node: &Node) -> Reply {
    let m = node.metrics().await;
    let up = m.peers.iter().filter(|p| p.up).count();
    let mut text = vec![
        format!(
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
        ),
        format!("fingerprint: {}", node.fingerprint()),
        format!("peers: {up} up of {} known", m.peers.len()),
    ];
    let mut catch_up = Vec::new();
    for c in node.catch_up() {
        let secs = c.elapsed.as_secs_f64();
        text.push(if c.finished {
            format!(
                "caught up from {}: {} chunks, {} objects, {} bytes in {secs:.1} s",
                c.peer, c.chunks, c.objects, c.bytes
            )
        } else {
            let total = c
                .total_chunks
                .map_or("total not known until its last chunk".into(), |t| {
                    format!("of {t} chunks")
                });
            format!(
                "catching up from {}: {}% of its {} keys walked, {} chunks ({total}), {} objects, {} bytes so far in {secs:.1} s, last {:.1} s ago",
                c.peer,
                c.walked_percent(),
                c.keys,
                c.chunks,
                c.objects,
                c.bytes,
                c.idle.as_secs_f64()
            )
        });
        catch_up.push(json!({
            "peer": c.peer.to_string(),
            "chunks": c.chunks,
            "total_chunks": c.total_chunks,
            "walked": c.walked,
            "keys": c.keys,
            "objects": c.objects,
            "bytes": c.bytes,
            "elapsed_ms": c.elapsed.as_millis() as u64,
            "idle_ms": c.idle.as_millis() as u64,
            "finished": c.finished,
        }));
    }
    Reply::new(
        text.join("\n"),
        json!({
            "id": node.id().to_string(),
            "fingerprint": node.fingerprint().to_string(),
            "listen": node.local_addr().to_string(),
            "rounds": m.stats.rounds,
            "messages_sent": m.stats.messages_sent,
            "bytes_sent": m.stats.bytes_sent,
            "messages_received": m.stats.messages_received,
            "bytes_received": m.stats.bytes_received,
            "dropped": m.dropped,
            "pending_acks": m.pending_acks,
            "dials": m.dials,
            "peers_up": up,
            "peers_known": m.peers.len(),
            "catch_up": catch_up,
        }),
    )
}

/// A peer as `trust` and `untrust` take it.
pub enum PeerKey {
    /// A key's fingerprint (64 hex digits): pins that key.
    Key(Fingerprint),
    /// A node id (16 hex digits): any key with that id.
    Id(crdt_core::ReplicaId),
}

/// Parses a fingerprint or a node id.
pub fn peer_key(text: &str) -> Result<PeerKey, Failure> {
    let text = text.trim();
    if text.len() == 64 {
        Ok(PeerKey::Key(text.parse().map_err(|_| {
            Failure::bad(format!(
                "not a fingerprint (64 hex digits): {}",
                quoted(text)
            ))
        })?))
    } else {
        Ok(PeerKey::Id(parse_node_id(text).map_err(|_| {
            Failure::bad(format!(
                "not a fingerprint (64 hex digits) or a node id (16): {}",
                quoted(text)
            ))
        })?))
    }
}

fn trust(node: &Node, peer: &str) -> Result<Reply, Failure> {
    let (text, fingerprint) = match peer_key(peer)? {
        PeerKey::Key(key) => {
            node.trust_key(key)?;
            (trusted_key_text(key), Some(key.to_string()))
        }
        PeerKey::Id(id) => {
            node.trust_id(id)?;
            (trusted_id_text(id), None)
        }
    };
    Ok(Reply::new(
        format!("{text}; the running node admits it now"),
        json!({"trusted": peer.trim(), "fingerprint": fingerprint}),
    ))
}

/// What `trust` says for a key.
pub fn trusted_key_text(key: Fingerprint) -> String {
    format!("trusted the key {key} (node {})", key.id())
}

/// What `trust` says for a bare id.
pub fn trusted_id_text(id: crdt_core::ReplicaId) -> String {
    format!("trusted {id} (by id only: prefer its fingerprint, which pins its key)")
}

fn untrust(node: &Node, peer: &str) -> Result<Reply, Failure> {
    let (closed, still) = match peer_key(peer)? {
        PeerKey::Key(key) => (node.untrust_key(key)?, node.trust_list().admits(&key)),
        PeerKey::Id(id) => (node.untrust(id)?, false),
    };
    let text = if still {
        format!(
            "unpinned the key {}, but an id-only entry still admits it (`untrust` its 16-digit id removes that)",
            peer.trim()
        )
    } else {
        format!(
            "no longer trusting {}; closed {closed} connection(s)",
            peer.trim()
        )
    };
    Ok(Reply::new(
        text,
        json!({"untrusted": peer.trim(), "closed": closed, "still_admitted": still}),
    ))
}

/// `text` quoted (as `{:?}` does) for a message, cut after its first [`QUOTED`] characters:
/// what a user typed comes back in the error, but a megabyte of it would make no message.
pub fn quoted(text: &str) -> String {
    cut(&format!("{text:?}"), QUOTED)
}

/// `text` cut after its first `max` characters, saying how long it was.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!(
            "{}... ({} bytes in all)",
            text.get(..end).unwrap_or_default(),
            text.len()
        ),
    }
}

/// The characters of an input [`quoted`] keeps.
pub const QUOTED: usize = 80;

/// Elements shown before saying how many more there are (unless `all`).
pub const SHOWN: usize = 20;

/// `object` for people: a large set or map as its size and first entries, unless `all`.
pub fn shown(object: &Object, all: bool) -> String {
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

/// `object` as JSON, a large set or map cut to its first entries (with its size) unless
/// `all`.
pub fn limited(object: &Object, all: bool) -> Value {
    let count = match object {
        Object::Set(set) => set.len(),
        Object::Map(map) => map.len(),
        _ => 0,
    };
    if all || count <= SHOWN {
        return to_json(object);
    }
    let first: Value = match object {
        Object::Set(set) => set.iter().take(SHOWN).map(|e| text_value(e)).collect(),
        Object::Map(map) => Value::Object(
            map.iter()
                .take(SHOWN)
                .map(|(k, v)| (key_text(k), to_json(v)))
                .collect(),
        ),
        _ => Value::Null,
    };
    json!({"entries": count, "first": first, "truncated": true})
}

/// `object` as JSON: counters as numbers, sets and multi-value registers as arrays, maps as
/// objects, values as strings (see [`text_value`]), nothing written as `null`.
pub fn to_json(object: &Object) -> Value {
    match object {
        Object::GCounter(c) => json!(c.value()),
        Object::PNCounter(c) => json!(c.value()),
        Object::Set(set) => set.iter().map(|e| text_value(e)).collect(),
        Object::Lww(register) => register.get().map_or(Value::Null, |v| text_value(v)),
        Object::Mv(register) => register.values().map(|v| text_value(v)).collect(),
        // Nesting is bounded by `crdt_net::MAX_DEPTH`.
        Object::Map(map) => {
            Value::Object(map.iter().map(|(k, v)| (key_text(k), to_json(v))).collect())
        }
        _ => Value::Null,
    }
}

/// A stored value as JSON: a string as written by `crdt-node` or the typed API
/// (`Node::set::<String>`), or other UTF-8 bytes, as that string; anything else as
/// `{"hex": "..."}`.
pub fn text_value(bytes: &[u8]) -> Value {
    match text_of(bytes) {
        Some(text) => Value::String(text),
        None => json!({ "hex": hex(bytes) }),
    }
}

/// A map key as a JSON object's key: its text, else `0x` and hex.
fn key_text(bytes: &[u8]) -> String {
    text_of(bytes).unwrap_or_else(|| format!("0x{}", hex(bytes)))
}

fn text_of(bytes: &[u8]) -> Option<String> {
    value::decode::<String>(bytes)
        .ok()
        .or_else(|| std::str::from_utf8(bytes).ok().map(str::to_owned))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
