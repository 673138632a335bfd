//! A local HTTP API for a [`Node`] (feature `http`): JSON reads and typed writes with
//! acknowledgement and read levels and read-your-writes tokens, and a Server-Sent Events
//! stream of changes, for applications not written in Rust. Every request carries a bearer
//! token kept in the data directory ([`ApiToken`]); the server listens on loopback only
//! unless [`Server::allow_remote`] says otherwise. The endpoints, their JSON and curl and
//! Python examples are in `docs/http-api.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use crdt_net::http::{self, ApiToken};
//! use crdt_net::node::NodeBuilder;
//!
//! let dir = std::path::Path::new("./data/laptop");
//! let node = Arc::new(NodeBuilder::new(dir).start().await?);
//! let token = ApiToken::load_or_create(dir)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // Serves until Ctrl-C.
//! http::serve(node, listener, token, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```

mod conn;
mod json;
mod request;
mod routes;
mod sse;
mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use token::{ApiToken, TOKEN_FILE};

use crate::node::Node;

/// The largest request body accepted by default (a value at the largest a message carries,
/// written as hex, fits).
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// Event streams open at once; one more is refused with 503.
pub const MAX_STREAMS: usize = 64;

/// How long requests still running when the server is told to stop may take to finish, by
/// default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Connections open at once, by default; one more is answered `503 too_many_connections`.
/// Well above [`MAX_STREAMS`], and well below the file descriptors a process may open.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// How long a client may take to send a request's headers, and a connection may sit idle
/// between requests, by default (hyper's own default).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the API could not be served, or its token not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The token file may be read or written by others than its owner; it is not used (a
    /// token others have read admits them). Fix with `chmod 600`, or delete it for a new one.
    #[error("{path} has mode {mode:o}: others than its owner may read or change the token; `chmod 600` it, or delete it to make a new one")]
    TokenPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file belongs to another user, who may change it at will; it is not used.
    /// Fix with `chown`, or delete it for a new one.
    #[error("{path} belongs to user {uid}, who may change the token; `chown` it to the user running the node, or delete it to make a new one")]
    TokenOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// The token file does not hold a token.
    #[error("{path} does not hold a token ({reason}); delete it to make a new one")]
    TokenMalformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The listener is not on a loopback address and [`Server::allow_remote`] was not set.
    #[error("{0} is not a loopback address; the HTTP API listens on loopback only unless remote access is allowed")]
    NotLoopback(SocketAddr),
    /// The listener failed.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves the API for `node` on `listener` until `shutdown` completes, with the defaults
/// (loopback only, [`DEFAULT_BODY_LIMIT`]); see [`Server`] for the options.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    token: ApiToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    Server::new(node, token).serve(listener, shutdown).await
}

/// The API's options; [`serve`](Server::serve) runs it.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    token: ApiToken,
    allow_remote: bool,
    body_limit: usize,
    grace: Duration,
    max_connections: usize,
    header_timeout: Duration,
}

/// What every handler sees.
struct AppState {
    node: Arc<Node>,
    token: ApiToken,
    /// Places for open event streams.
    streams: Arc<Semaphore>,
    /// Becomes true when the server stops, which ends the event streams.
    shutdown: watch::Receiver<bool>,
    /// How long requests may go on after that.
    grace: Duration,
}

impl Server {
    /// The API for `node`, admitting requests that carry `token`.
    pub fn new(node: Arc<Node>, token: ApiToken) -> Self {
        Server {
            node,
            token,
            allow_remote: false,
            body_limit: DEFAULT_BODY_LIMIT,
            grace: DEFAULT_GRACE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }

    /// How many connections may be open at once (default [`DEFAULT_MAX_CONNECTIONS`], at
    /// least 1); one more is answered `503 too_many_connections` and closed. Event streams
    /// and requests waiting for a level or a token each hold one while they last.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// How long a client may take to send a request's headers, and a connection may sit
    /// idle between requests, before it is closed (default [`DEFAULT_HEADER_TIMEOUT`]).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Whether a listener on an address other than loopback is accepted (default false).
    /// The API is plain HTTP: anyone on the path sees the token.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// The largest request body, in bytes; a larger one is refused with 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long requests still running when the server stops may go on (default
    /// [`DEFAULT_GRACE`]); then they are answered `503 stopped` (a write among them stays
    /// durable and keeps spreading, as after an acknowledgement timeout).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves until `shutdown` completes: then event streams end, new connections are
    /// refused, and requests still running get [`grace`](Server::grace) to finish; a
    /// connection still open after twice the grace period (its client not reading the
    /// answer) is dropped. When it returns, every connection is closed and the server holds
    /// no reference to the node (so `Arc::try_unwrap` and [`Node::shutdown`] work).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let addr = listener.local_addr().map_err(HttpError::Serve)?;
        if !self.allow_remote && !addr.ip().is_loopback() {
            return Err(HttpError::NotLoopback(addr));
        }
        let (stop, stopping) = watch::channel(false);
        let (kill, killed) = watch::channel(false);
        let connections = conn::Connections::new(
            self.max_connections,
            self.header_timeout,
            stopping.clone(),
            killed,
        );
        let state = Arc::new(AppState {
            node: self.node,
            token: self.token,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            shutdown: stopping,
            grace: self.grace,
        });
        let held = Arc::downgrade(&state);
        let app = router(state, self.body_limit);
        tokio::select! {
            () = connections.accept(listener, &app) => {}
            () = shutdown => {}
        }
        // The listener is closed now: new connections are refused. Requests still running
        // get the grace period, then are answered 503 (`routes::until_stopped`); a connection
        // still open after twice the grace period (a client not reading its answer) is dropped.
        let _ = stop.send(true);
        drop(app);
        if !connections.closed(self.grace.saturating_mul(2)).await {
            let _ = kill.send(true);
            // Dropping a connection is quick; this bound only keeps a stuck task from
            // holding `serve` forever.
            connections.closed(KILL_WAIT).await;
        }
        // Event streams' forwarding tasks (`sse.rs`) end as soon as they hear of the stop.
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        while held.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// How long dropping the connections still open at the end, and the event streams' tasks
/// ending, may take.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Returns once the server is stopping (or gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// The endpoints, behind the token check, the body limit, and the cut at shutdown.
fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/keys", get(routes::keys))
        .route("/v1/status", get(routes::status))
        .route("/v1/events", get(sse::events))
        .route("/v1/objects/", get(routes::no_key).post(routes::no_key))
        .route("/v1/objects/{key}", get(routes::read).post(routes::write))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::until_stopped,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::authorize,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
