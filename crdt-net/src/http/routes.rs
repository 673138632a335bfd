//! The endpoints: reads, writes, keys and status, and the JSON error every failure returns.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::json::{KeyJson, ObjectJson};
use super::request::{timeout, OpName, Write, WriteBody, MAX_PEERS};
use super::{stopped, AppState};
use crate::node::{NodeError, ReadLevel, Token};
use crate::{Object, Op, UpdateError};

/// A failed request, sent as `{"error": CODE, "message": TEXT, ...details}` with its status.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// A request that does not make sense (400).
    pub(super) fn bad_request(message: String) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn with(mut self, field: &str, value: impl Serialize) -> Self {
        self.details.insert(
            field.to_owned(),
            serde_json::to_value(value).unwrap_or_default(),
        );
        self
    }

    /// A write that would nest objects `depth` deep, past [`crate::MAX_DEPTH`] (400).
    pub(super) fn too_deep(depth: usize) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_deep",
            format!(
                "object nested {depth} deep; the limit is {}",
                crate::MAX_DEPTH
            ),
        )
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("error".into(), Value::String(self.code.into()));
        body.insert("message".into(), Value::String(self.message));
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            NodeError::WrongType(_) | NodeError::Update(UpdateError::Refused(_)) => {
                (StatusCode::CONFLICT, "wrong_type")
            }
            NodeError::Update(UpdateError::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            NodeError::Update(UpdateError::TooDeep { .. }) => (StatusCode::BAD_REQUEST, "too_deep"),
            NodeError::Update(UpdateError::CounterLimit { .. }) => {
                (StatusCode::CONFLICT, "counter_limit")
            }
            NodeError::BadToken(_) => (StatusCode::BAD_REQUEST, "bad_token"),
            NodeError::Value(_) => (StatusCode::CONFLICT, "wrong_type"),
            NodeError::AckTimeout { acked, wanted } => {
                return ApiError::new(StatusCode::GATEWAY_TIMEOUT, "ack_timeout", message)
                    .with("acked", acked)
                    .with("wanted", wanted)
            }
            NodeError::ReadTimeout { answered, wanted } => {
                return ApiError::new(StatusCode::GATEWAY_TIMEOUT, "read_timeout", message)
                    .with("answered", answered)
                    .with("wanted", wanted)
            }
            NodeError::NotSeen(token) => {
                return ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_seen", message)
                    .with("token", token.to_string())
            }
            NodeError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

/// What axum refused before a handler ran: a body over the limit (413), a bad path or query.
fn refused(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "too_large", text)
    } else {
        ApiError::bad_request(text)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        refused(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        refused(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        refused(r.status(), r.body_text())
    }
}

/// Lets through requests that carry the token; the rest get 401.
pub(super) async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()));
    match presented {
        Some(token) if state.token.matches(token) => next.run(request).await,
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the token from the data directory's http.token as `Authorization: Bearer TOKEN`",
        )
        .into_response(),
    }
}

/// The token in an `Authorization` header's value: after the scheme `Bearer` (in any case,
/// as schemes are) and blanks.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(b"Bearer".len())?;
    let token = rest.trim_ascii_start();
    let separated = token.len() < rest.len();
    (scheme.eq_ignore_ascii_case(b"Bearer") && separated).then_some(token.trim_ascii_end())
}

/// Answers `503 stopped` for a request still running the grace period after the server was
/// told to stop, so that its connection can close.
pub(super) async fn until_stopped(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let mut shutdown = state.shutdown.clone();
    let grace = state.grace;
    drop(state);
    tokio::select! {
        response = next.run(request) => response,
        () = async {
            stopped(&mut shutdown).await;
            tokio::time::sleep(grace).await;
        } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the server stopped before the request finished; a write stays and keeps spreading",
        )
        .into_response(),
    }
}

/// A key from the URL, which must not be empty.
pub(super) fn key_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path?;
    if key.is_empty() {
        return Err(empty_key());
    }
    Ok(key)
}

/// `/v1/objects/` without a key.
pub(super) async fn no_key() -> ApiError {
    empty_key()
}

fn empty_key() -> ApiError {
    ApiError::bad_request("the key is empty".to_owned())
}

/// Any other path.
pub(super) async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint (see docs/http-api.md)")
}

/// A known path with another method.
pub(super) async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (see docs/http-api.md)",
    )
}

/// `GET /v1/objects/{key}`'s query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadQuery {
    /// Merge this many peers' copies first ([`ReadLevel::Peers`]).
    #[serde(default)]
    read: Option<usize>,
    /// Wait until the write this token names has arrived.
    #[serde(default)]
    after: Option<String>,
    /// How long to wait for either, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `GET /v1/objects/{key}`: the object, typed.
pub(super) async fn read(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key_of(path)?;
    let Query(query) = query?;
    let timeout = timeout(query.timeout_ms)?;
    if query.read.is_some_and(|peers| peers > MAX_PEERS) {
        return Err(ApiError::bad_request(format!(
            "read is a number of peers up to {MAX_PEERS}"
        )));
    }
    let node = &state.node;
    let not_found = || ApiError::not_found(format!("nothing is stored under {key:?}"));
    let render = |object: &Object| {
        let body = ObjectJson {
            object,
            key: Some(KeyJson::Str(&key)),
        };
        Json(body).into_response()
    };
    let waited = match &query.after {
        Some(token) => {
            let token: Token = token.parse()?;
            node.get_after(&key, token, timeout).await?
        }
        None => None,
    };
    let object = match query.read {
        Some(peers) if peers > 0 => node.read(&key, ReadLevel::Peers(peers), timeout).await?,
        _ if query.after.is_some() => waited,
        // A plain read renders the object where it is, under the node's read lock, instead
        // of copying it first (a large set was copied whole for every read).
        _ => return node.with(&key, render)?.ok_or_else(not_found),
    };
    object.as_ref().map(render).ok_or_else(not_found)
}

/// `POST /v1/objects/{key}`: one typed operation; answers with the write's token.
pub(super) async fn write(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let key = key_of(path)?;
    let body: WriteBody = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request(format!("not a write: {e}")))?;
    let write = body.check()?;
    let node = &state.node;
    // Removing from nothing would make an empty object there (of the type the removal
    // needs), which no one asked for.
    if matches!(write.op, OpName::Remove | OpName::Delete)
        && write.path.is_empty()
        && node.with(&key, |_| ())?.is_none()
    {
        return Err(ApiError::not_found(format!(
            "nothing is stored under {key:?}"
        )));
    }
    let op = match write.op {
        OpName::Set => {
            let token = set_register(&state, &key, write).await?;
            return Ok(Json(json!({ "token": token.to_string() })));
        }
        OpName::Add => Op::Add(write.value),
        OpName::Remove => Op::Remove(write.value),
        OpName::Inc => Op::PnInc(write.by),
        OpName::Dec => Op::PnDec(write.by),
        OpName::Grow => Op::Inc(write.by),
        OpName::Write => Op::Mv(write.value),
        OpName::Delete => Op::Delete(write.value),
    };
    // The operation applies at the end of the path: wrapped in one map update per key on it.
    let op = write
        .path
        .into_iter()
        .rev()
        .fold(op, |op, k| Op::Update(k, Box::new(op)));
    let token = node
        .update_acked(&key, op, write.ack, write.timeout)
        .await?;
    Ok(Json(json!({ "token": token.to_string() })))
}

/// Writes a last-writer-wins register through the node's typed handles, which stamp it with
/// the node's hybrid logical clock.
async fn set_register(state: &AppState, key: &str, write: Write) -> Result<Token, ApiError> {
    let node = &state.node;
    let value = Raw(write.value);
    let mut path = write.path.into_iter();
    let Some(first) = path.next() else {
        let register = node.register::<Raw>(key).acked(write.ack, write.timeout);
        return Ok(register.set(&value).await?);
    };
    let mut map = node.map::<Raw>(key).acked(write.ack, write.timeout);
    let mut last = first;
    for next in path {
        map = map.map::<Raw>(&Raw(last));
        last = next;
    }
    Ok(map.register::<Raw>(&Raw(last)).set(&value).await?)
}

/// Bytes that encode as themselves: postcard writes a tuple without a length and each `u8` as
/// one byte, so the typed handles store exactly these bytes (already a value's encoding).
struct Raw(Vec<u8>);

impl Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = s.serialize_tuple(self.0.len())?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

/// Never read back: the typed handles only need the bound.
impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("raw values are written only"))
    }
}

/// `GET /v1/keys`: every key and its object's type.
pub(super) async fn keys(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let mut keys: Vec<Value> = Vec::new();
    state.node.for_each(|key, object| {
        keys.push(json!({ "key": key, "type": object.type_name() }));
    })?;
    Ok(Json(json!({ "keys": keys })))
}

/// `GET /v1/status`: the node and its peers.
pub(super) async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let node = &state.node;
    let metrics = node.metrics().await;
    let peers: Vec<Value> = metrics
        .peers
        .iter()
        .map(|p| {
            json!({
                "id": p.info.id.to_string(),
                "addr": p.info.addr,
                "up": p.up,
                "lag": p.lag,
            })
        })
        .collect();
    Json(json!({
        "id": node.id().to_string(),
        "fingerprint": node.fingerprint().to_string(),
        "listen": node.local_addr().to_string(),
        "peers": peers,
        "pending_acks": metrics.pending_acks,
        "dropped": metrics.dropped,
        "messages_sent": metrics.stats.messages_sent,
        "messages_received": metrics.stats.messages_received,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_encode_as_themselves() {
        for bytes in [
            vec![],
            vec![0u8],
            vec![0xff, 0x00, 0x80, 0x7f],
            vec![7; 300],
        ] {
            assert_eq!(crate::value::encode(&Raw(bytes.clone())), bytes);
        }
    }
}
