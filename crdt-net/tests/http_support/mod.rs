//! What the HTTP API tests share: nodes on loopback QUIC with their API served on loopback
//! TCP, and a real HTTP client for them.

// Each test file uses its own part of this.
#![allow(dead_code)]

use std::sync::Arc;

use crdt_net::http::{ApiToken, HttpError, Server};
use crdt_net::node::{Node, NodeBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[path = "../support/mod.rs"]
mod support;

pub use support::WAIT;

/// A node with its API on a loopback port.
pub struct Served {
    pub node: Arc<Node>,
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
    pub stop: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<Result<(), HttpError>>>,
    pub _dir: TempDir,
}

impl Served {
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).body(body.to_string()))
            .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = tokio::time::timeout(WAIT, request.bearer_auth(&self.token).send())
            .await
            .expect("an answer in time")
            .expect("an answer");
        let status = response.status();
        let body = response.json::<Value>().await.expect("a JSON body");
        (status, body)
    }

    /// Stops the server, checks it ended cleanly and in time and holds no reference to the
    /// node any more, and stops the node.
    pub async fn stop(self) {
        let (node, _dir) = self.stop_server().await;
        let node = Arc::try_unwrap(node).expect("the server let go of the node");
        node.shutdown().await;
    }

    /// Stops the server and checks it ended cleanly and in time; the node goes on.
    pub async fn stop_server(self) -> (Arc<Node>, TempDir) {
        let Served {
            stop,
            server,
            node,
            _dir,
            ..
        } = self;
        let _ = stop.expect("running").send(());
        tokio::time::timeout(WAIT, server.expect("running"))
            .await
            .expect("the server stops in time")
            .expect("the server task did not panic")
            .expect("the server ended cleanly");
        (node, _dir)
    }
}

/// Starts `n` nodes that trust each other (each dialing the ones before it), each with its
/// API served on a fresh loopback port.
pub async fn cluster(n: usize) -> Vec<Served> {
    let (dirs, keys) = support::identities(n);
    let mut served: Vec<Served> = Vec::new();
    for (i, dir) in dirs.into_iter().enumerate() {
        let mut builder = support::trusting(&dir, i, &keys)
            .listen("127.0.0.1:0".parse().unwrap())
            .mdns(false);
        for other in &served {
            builder = builder.peer(other.node.local_addr());
        }
        let node = Arc::new(builder.start().await.unwrap());
        served.push(serve(node, dir, |server| server).await);
    }
    served
}

/// Serves `node`'s API (its builder passed through `configure`).
pub async fn serve(
    node: Arc<Node>,
    dir: TempDir,
    configure: impl FnOnce(Server) -> Server,
) -> Served {
    let token = ApiToken::load_or_create(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel();
    let server = configure(Server::new(node.clone(), token.clone()));
    let server = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Served {
        node,
        base,
        token: token.as_str().to_owned(),
        client: reqwest::Client::new(),
        stop: Some(stop),
        server: Some(server),
        _dir: dir,
    }
}

/// A node on its own with its API served (its builder passed through `configure`).
pub async fn lone_api(configure: impl FnOnce(Server) -> Server) -> Served {
    let dir = TempDir::new().unwrap();
    let node = lone_node(&dir).await;
    serve(node, dir, configure).await
}

/// A node on its own in `dir`.
pub async fn lone_node(dir: &TempDir) -> Arc<Node> {
    let builder = NodeBuilder::new(dir.path())
        .listen("127.0.0.1:0".parse().unwrap())
        .mdns(false);
    Arc::new(builder.start().await.unwrap())
}

/// Reads `key` at `api` once the write `token` names has arrived, and checks it holds
/// `element`.
pub async fn read_after(api: &Served, key: &str, token: &str, element: &str) {
    let url = format!("/v1/objects/{key}?after={token}&timeout_ms=10000");
    let (status, body) = api.get(&url).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let elements = body["value"].as_array().unwrap();
    assert!(elements.contains(&json!(element)), "{body}");
}

pub async fn one_node() -> Served {
    cluster(1).await.pop().unwrap()
}

/// Reads Server-Sent Events from `response` until one satisfies `wanted`.
pub async fn next_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
    wanted: impl Fn(&str, &Value) -> bool,
) -> (String, Value) {
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim_start().to_owned())
                };
                if let (Some(name), Some(data)) = (field("event:"), field("data:")) {
                    let data: Value = serde_json::from_str(&data).unwrap();
                    if wanted(&name, &data) {
                        return (name, data);
                    }
                }
            }
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the stream stays open");
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("the event in time")
}
