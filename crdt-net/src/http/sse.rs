//! `GET /v1/events`: the node's events ([`Node::subscribe`]) as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit};

use super::json::object_json;
use super::routes::ApiError;
use super::{stopped, AppState};
use crate::node::Node;
use crate::Event;

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

/// Opens a stream; at most [`MAX_STREAMS`](super::MAX_STREAMS) are open at once.
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
    let watch = Watch {
        events: state.node.subscribe(),
        node: state.node.clone(),
        shutdown: state.shutdown.clone(),
        key: query.key,
        value: query.value.unwrap_or(true),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        let event = watch.next().await?;
        Some((Ok(event), watch))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One open stream.
struct Watch {
    events: broadcast::Receiver<Event>,
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
    key: Option<String>,
    value: bool,
    /// Its place among the open streams, given back when the stream ends.
    _permit: OwnedSemaphorePermit,
}

impl Watch {
    /// The next event to send; `None` ends the stream (the server or the node stopping).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let received = tokio::select! {
                () = stopped(&mut self.shutdown) => return None,
                received = self.events.recv() => received,
            };
            match received {
                Ok(event) => {
                    if let Some(event) = self.render(event).await {
                        return Some(event);
                    }
                }
                // The client can read again to catch up.
                Err(RecvError::Lagged(missed)) => {
                    return sse("lagged", json!({ "missed": missed }));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// `event` as sent, if this stream wants it.
    async fn render(&self, event: Event) -> Option<SseEvent> {
        let wanted = |key: &str| self.key.as_deref().is_none_or(|k| k == key);
        let unfiltered = self.key.is_none();
        match event {
            Event::Changed { key, local, change } if wanted(&key) => {
                let value = match self.value {
                    true => Some(
                        self.node
                            .get(&key)
                            .await
                            .as_ref()
                            .map_or(Value::Null, object_json),
                    ),
                    false => None,
                };
                let mut data =
                    json!({ "key": key, "local": local, "change": object_json(&change) });
                if let (Some(value), Value::Object(fields)) = (value, &mut data) {
                    fields.insert("value".into(), value);
                }
                sse("change", data)
            }
            Event::TypeConflict { key } if wanted(&key) => {
                sse("type_conflict", json!({ "key": key }))
            }
            Event::PeerUp(peer) if unfiltered => {
                sse("peer_up", json!({ "peer": peer.to_string() }))
            }
            Event::PeerDown(peer) if unfiltered => {
                sse("peer_down", json!({ "peer": peer.to_string() }))
            }
            Event::ClockDrift { peer, ahead_ms } if unfiltered => sse(
                "clock_drift",
                json!({ "peer": peer.to_string(), "ahead_ms": ahead_ms }),
            ),
            _ => None,
        }
    }
}

fn sse(name: &'static str, data: Value) -> Option<SseEvent> {
    SseEvent::default().event(name).json_data(data).ok()
}
