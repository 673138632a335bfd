//! Accepting and serving connections, bounded: at most a set number open at once, each
//! closed if it takes too long to send a request's headers (or sits idle between requests
//! that long). axum's own `serve` has neither bound, so a local process could hold
//! connections open until the node runs out of file descriptors.
//!
//! A connection past the limit is answered `503 too_many_connections` (a client hears why,
//! rather than hanging); a few such answers run at once, and past those a connection is
//! closed at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::routes::ApiError;
use super::stopped;

/// Connections past the limit being answered 503 at once; more are closed unanswered.
const REFUSALS: usize = 16;

/// What every connection task needs.
pub(super) struct Connections {
    /// Places for open connections.
    open: Arc<Semaphore>,
    /// Places for connections being refused.
    refusing: Arc<Semaphore>,
    /// How many places `open` has.
    limit: u32,
    http: http1::Builder,
    /// Becomes true when the server stops: connections finish what they are doing and close.
    stopping: watch::Receiver<bool>,
    /// Becomes true when connections still open must be dropped.
    kill: watch::Receiver<bool>,
}

impl Connections {
    pub(super) fn new(
        limit: usize,
        header_timeout: Duration,
        stopping: watch::Receiver<bool>,
        kill: watch::Receiver<bool>,
    ) -> Self {
        // At least one, and at most what a semaphore can hand out at once.
        let limit = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        Connections {
            open: Arc::new(Semaphore::new(limit as usize)),
            refusing: Arc::new(Semaphore::new(REFUSALS)),
            limit,
            http,
            stopping,
            kill,
        }
    }

    /// Accepts connections and serves `app` on them until the server is stopping.
    pub(super) async fn accept(&self, listener: TcpListener, app: &Router) {
        let mut stopping = self.stopping.clone();
        loop {
            let stream = tokio::select! {
                () = stopped(&mut stopping) => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                },
            };
            if let Ok(place) = self.open.clone().try_acquire_owned() {
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(self.serve(stream, service, place, true));
            } else if let Ok(place) = self.refusing.clone().try_acquire_owned() {
                let service = hyper::service::service_fn(refuse);
                tokio::spawn(self.serve(stream, service, place, false));
            }
            // Else `stream` is dropped: closed unanswered.
        }
    }

    /// Serves one connection until it closes, the server stops and it has finished its
    /// request, or it is killed; then gives its place back.
    fn serve<S>(
        &self,
        stream: TcpStream,
        service: S,
        place: OwnedSemaphorePermit,
        keep_alive: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
        S::Future: Send + 'static,
        S::ResBody: Send + 'static,
        <S::ResBody as hyper::body::Body>::Data: Send,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut http = self.http.clone();
        http.keep_alive(keep_alive);
        let mut stopping = self.stopping.clone();
        let mut kill = self.kill.clone();
        async move {
            // Boxed, not pinned in place, so that it can be dropped before `place`.
            let mut conn = Box::pin(http.serve_connection(TokioIo::new(stream), service));
            let finished = async {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = stopped(&mut stopping) => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            };
            tokio::select! {
                () = finished => {}
                () = stopped(&mut kill) => {}
            }
            // The connection (and so the router and the node it holds) goes before its place,
            // so that every place back means no connection holds the node.
            drop(conn);
            drop(place);
        }
    }

    /// Waits until every connection has closed, for `wait` at most; whether they all did.
    pub(super) async fn closed(&self, wait: Duration) -> bool {
        let all = async {
            let open = self.open.acquire_many(self.limit).await;
            let refusing = self.refusing.acquire_many(REFUSALS as u32).await;
            open.is_ok() && refusing.is_ok()
        };
        tokio::time::timeout(wait, all).await.unwrap_or(false)
    }
}

/// The answer on a connection past the limit.
async fn refuse(
    _: hyper::Request<hyper::body::Incoming>,
) -> Result<axum::response::Response, Infallible> {
    Ok(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "the server has as many connections open as it allows; close some (or reuse them)",
    )
    .into_response())
}

/// An error accepting a connection: one about that connection is passed over; another (out
/// of file descriptors, say) is waited out a moment rather than retried at once in a loop.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::warn!("http: accepting a connection failed: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
