//! `GET /v1/events`: the node's events ([`Node::subscribe`]) as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::json::ObjectJson;
use super::routes::ApiError;
use super::{stopped, AppState};
use crate::{Event, Object};

/// `GET /v1/events`'s query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Only changes (and type conflicts) of this key.
    #[serde(default)]
    key: Option<String>,
    /// Whether each change carries the object as it is now (default true).
    #[serde(default)]
    value: Option<bool>,
}

/// Rendered events a stream may hold for its client, in bytes: past that, new events are
/// dropped (and counted, for a `lagged` event) until the client reads. One larger event goes
/// alone into an empty buffer.
pub(super) const STREAM_BUFFER: usize = 1 << 20;

/// What a `lagged` event takes of the buffer (about its size).
const LAGGED_BYTES: u32 = 64;

/// Opens a stream; at most [`MAX_STREAMS`](super::MAX_STREAMS) are open at once.
///
/// A task takes every event from the node as it comes and renders it into the stream's own
/// buffer, bounded in bytes; the response reads that buffer. So a client that stops reading
/// costs at most [`STREAM_BUFFER`], not the node's whole event queue (4096 events, each
/// possibly a value of a megabyte, held for the slowest reader).
pub(super) async fn events(
    State(state): State<Arc<AppState>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "at most {} event streams are open at once",
                super::MAX_STREAMS
            ),
        )
    })?;
    let (to_client, from_node) = mpsc::unbounded_channel();
    let watch = Watch {
        events: state.node.subscribe(),
        state: state.clone(),
        shutdown: state.shutdown.clone(),
        key: query.key,
        value: query.value.unwrap_or(true),
        buffer: Arc::new(Semaphore::new(STREAM_BUFFER)),
        to_client,
    };
    tokio::spawn(watch.forward());
    let stream =
        futures_util::stream::unfold((from_node, permit), |(mut from_node, permit)| async move {
            let Buffered(event, _bytes) = from_node.recv().await?;
            Some((Ok(event), (from_node, permit)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// An event in a stream's buffer, holding its bytes' places there until the client takes it.
struct Buffered(SseEvent, OwnedSemaphorePermit);

/// One open stream's forwarding task.
struct Watch {
    events: broadcast::Receiver<Event>,
    /// The node (through the server's state, which `serve` waits to be let go of).
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    key: Option<String>,
    value: bool,
    /// Places for bytes in the stream's buffer.
    buffer: Arc<Semaphore>,
    to_client: mpsc::UnboundedSender<Buffered>,
}

impl Watch {
    /// Renders events into the buffer until the server or the node stops, or the client is
    /// gone. Events that find the buffer full are counted, and a `lagged` event tells of them
    /// as soon as there is room again; events after it are dropped until then too, so what
    /// the client sees is in order.
    async fn forward(mut self) {
        let mut missed: u64 = 0;
        loop {
            let received = tokio::select! {
                biased;
                () = stopped(&mut self.shutdown) => return,
                () = self.to_client.closed() => return,
                places = self.buffer.clone().acquire_many_owned(LAGGED_BYTES), if missed > 0 => {
                    let Ok(places) = places else { return };
                    if let Some((lagged, _)) = sse("lagged", &json!({ "missed": missed })) {
                        if self.to_client.send(Buffered(lagged, places)).is_err() {
                            return;
                        }
                    }
                    missed = 0;
                    continue;
                }
                received = self.events.recv() => received,
            };
            match received {
                Ok(event) if !self.wants(&event) => {}
                // Behind a full buffer it is counted, without the cost of rendering it.
                Ok(_) if missed > 0 || self.buffer.available_permits() == 0 => {
                    missed = missed.saturating_add(1);
                }
                Ok(event) => {
                    if let Some((event, bytes)) = self.render(event).await {
                        if !self.buffer(event, bytes) {
                            missed = missed.saturating_add(1);
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => missed = missed.saturating_add(n),
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Puts `event` (`bytes` long) in the buffer if it has room; whether it had.
    fn buffer(&self, event: SseEvent, bytes: usize) -> bool {
        let places = u32::try_from(bytes.clamp(1, STREAM_BUFFER)).unwrap_or(u32::MAX);
        match self.buffer.clone().try_acquire_many_owned(places) {
            Ok(places) => self.to_client.send(Buffered(event, places)).is_ok(),
            Err(_) => false,
        }
    }

    /// Whether this stream sends `event`: those of its key, or all with no key given (peers
    /// and clocks only then).
    fn wants(&self, event: &Event) -> bool {
        match (event, self.key.as_deref()) {
            (Event::Changed { key, .. } | Event::TypeConflict { key }, Some(wanted)) => {
                key == wanted
            }
            (Event::Changed { .. } | Event::TypeConflict { .. }, None) => true,
            (_, filter) => filter.is_none(),
        }
    }

    /// `event` as sent and its size, if this stream wants it.
    async fn render(&self, event: Event) -> Option<(SseEvent, usize)> {
        let wanted = |key: &str| self.key.as_deref().is_none_or(|k| k == key);
        let unfiltered = self.key.is_none();
        match event {
            Event::Changed { key, local, change } if wanted(&key) => {
                let render = |now: Option<Option<&Object>>| {
                    let data = ChangeJson {
                        change: ObjectJson::new(&change),
                        key: &key,
                        local,
                        value: now.map(|now| now.map(ObjectJson::new)),
                    };
                    sse("change", &data)
                };
                if !self.value {
                    return render(None);
                }
                // The object as it is now, rendered where it is (under the node's read lock)
                // instead of copied first.
                match self.state.node.with(&key, |now| render(Some(Some(now)))) {
                    Ok(Some(rendered)) => rendered,
                    Ok(None) => render(Some(None)),
                    Err(_) => {
                        let now = self.state.node.get(&key).await;
                        render(Some(now.as_ref()))
                    }
                }
            }
            Event::TypeConflict { key } if wanted(&key) => {
                sse("type_conflict", &json!({ "key": key }))
            }
            Event::PeerUp(peer) if unfiltered => {
                sse("peer_up", &json!({ "peer": peer.to_string() }))
            }
            Event::PeerDown(peer) if unfiltered => {
                sse("peer_down", &json!({ "peer": peer.to_string() }))
            }
            Event::ClockDrift { peer, ahead_ms } if unfiltered => sse(
                "clock_drift",
                &json!({ "peer": peer.to_string(), "ahead_ms": ahead_ms }),
            ),
            _ => None,
        }
    }
}

/// A `change` event's data (fields in alphabetical order, as elsewhere).
#[derive(Serialize)]
struct ChangeJson<'a> {
    change: ObjectJson<'a>,
    key: &'a str,
    local: bool,
    /// The object now (`null` if there is none), unless the stream leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Option<ObjectJson<'a>>>,
}

/// An event named `name` carrying `data`, and its size.
fn sse(name: &'static str, data: &impl Serialize) -> Option<(SseEvent, usize)> {
    // JSON text has no line breaks (they are escaped inside strings): one `data:` line.
    let text = serde_json::to_string(data).ok()?;
    let bytes = text.len();
    Some((SseEvent::default().event(name).data(text), bytes))
}
