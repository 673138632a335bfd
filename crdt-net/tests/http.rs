//! The HTTP API with real parts: nodes on loopback QUIC, the API on loopback TCP, a real HTTP
//! client (reqwest), and the Python client from docs/http-api.md as a real process.

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use crdt_net::http::{self, ApiToken, HttpError, Server};
use http_support::{cluster, lone_api, lone_node, next_event, one_node, read_after, WAIT};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_read_back_typed() {
    let api = one_node().await;
    for (key, body) in [
        ("cart", json!({ "op": "add", "value": "milk" })),
        ("cart", json!({ "op": "add", "value": "eggs" })),
        ("cart", json!({ "op": "remove", "value": "milk" })),
        ("cart", json!({ "op": "add", "value": { "hex": "ff00" } })),
        ("stock", json!({ "op": "inc", "by": 10 })),
        ("stock", json!({ "op": "dec", "by": 3 })),
        ("views", json!({ "op": "grow" })),
        ("title", json!({ "op": "set", "value": "draft" })),
        (
            "title",
            json!({ "op": "set", "value": "final", "ack": "local", "timeout_ms": 1000 }),
        ),
        ("status", json!({ "op": "write", "value": "open" })),
        (
            "carts",
            json!({ "op": "add", "path": ["ada"], "value": "tea" }),
        ),
        (
            "carts",
            json!({ "op": "add", "path": ["bob"], "value": "jam" }),
        ),
        ("carts", json!({ "op": "delete", "key": "bob" })),
        // A key with a slash, percent-encoded in the URL.
        ("a%2Fb", json!({ "op": "write", "value": "slashed" })),
        (
            "prefs",
            json!({ "op": "set", "path": ["ada", "theme"], "value": "dark" }),
        ),
    ] {
        let (status, answer) = api.post(&format!("/v1/objects/{key}"), body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body} -> {answer}");
        assert!(
            answer["token"].as_str().is_some_and(|t| t.contains(':')),
            "{answer}"
        );
    }
    let read = |key: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api.get(&format!("/v1/objects/{key}")).await;
            assert_eq!(status, StatusCode::OK, "{key}: {body}");
            assert_eq!(body["key"], key);
            (body["type"].clone(), body["value"].clone())
        }
    };
    assert_eq!(
        read("cart").await,
        (json!("set"), json!(["eggs", { "hex": "ff00" }]))
    );
    assert_eq!(read("stock").await, (json!("pn-counter"), json!(7)));
    assert_eq!(read("views").await, (json!("g-counter"), json!(1)));
    assert_eq!(read("title").await, (json!("lww-register"), json!("final")));
    assert_eq!(
        read("status").await,
        (json!("mv-register"), json!(["open"]))
    );
    assert_eq!(
        read("carts").await,
        (
            json!("map"),
            json!([{ "key": "ada", "type": "set", "value": ["tea"] }])
        )
    );
    assert_eq!(
        read("prefs").await,
        (
            json!("map"),
            json!([{ "key": "ada", "type": "map", "value": [
                { "key": "theme", "type": "lww-register", "value": "dark" }
            ] }])
        )
    );

    assert!(
        api.node.get("a/b").await.is_some(),
        "%2F is part of the key: {:?}",
        api.node.keys()
    );
    let (status, body) = api.get("/v1/objects/a%2Fb").await;
    assert_eq!((status, &body["key"]), (StatusCode::OK, &json!("a/b")));

    // The same values as the typed API (and so the command line) writes and reads them.
    let cart = api.node.set::<String>("cart");
    assert!(cart.contains(&"eggs".to_string()).await.unwrap());
    cart.add(&"bread".to_string()).await.unwrap();
    assert_eq!(
        read("cart").await.1,
        json!(["eggs", "bread", { "hex": "ff00" }]) // in the order of their encodings: length first
    );
    let prefs = api.node.map::<String>("prefs").map::<String>(&"ada".into());
    let theme = prefs
        .register::<String>(&"theme".into())
        .get()
        .await
        .unwrap();
    assert_eq!(theme.as_deref(), Some("dark"));

    // Read-your-writes: a read after the write's token.
    let (_, written) = api
        .post("/v1/objects/cart", json!({ "op": "add", "value": "salt" }))
        .await;
    let token = written["token"].as_str().unwrap().to_owned();
    read_after(&api, "cart", &token, "salt").await;

    let (status, body) = api.get("/v1/keys").await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&str> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["a/b", "cart", "carts", "prefs", "status", "stock", "title", "views"]
    );
    let (status, body) = api.get("/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], api.node.id().to_string());
    api.stop().await;
}

/// The status each error code comes with (docs/http-api.md, "Errors").
fn status_of(code: &str) -> StatusCode {
    match code {
        "bad_request" | "bad_token" | "too_deep" => StatusCode::BAD_REQUEST,
        "not_found" => StatusCode::NOT_FOUND,
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "wrong_type" | "counter_limit" => StatusCode::CONFLICT,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "ack_timeout" | "read_timeout" | "not_seen" => StatusCode::GATEWAY_TIMEOUT,
        other => panic!("no status for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors() {
    let api = lone_api(|s| s.body_limit(64 * 1024)).await;
    api.post("/v1/objects/n", json!({ "op": "inc" })).await;
    let raw = |body: &'static str| {
        let api = &api;
        async move {
            api.send(api.client.post(api.url("/v1/objects/k")).body(body))
                .await
        }
    };
    let cases: Vec<(&str, (StatusCode, Value))> = vec![
        ("bad_request", raw("{not json").await),
        ("bad_request", raw("[]").await),
        ("bad_request", raw(r#"{"op":"shout"}"#).await),
        ("bad_request", raw(r#"{"op":"add"}"#).await),
        (
            "bad_request",
            raw(r#"{"op":"add","value":"x","extra":1}"#).await,
        ),
        (
            "bad_request",
            raw(r#"{"op":"add","value":{"hex":"xyz"}}"#).await,
        ),
        ("bad_request", raw(r#"{"op":"inc","by":-1}"#).await),
        (
            "bad_request",
            raw(r#"{"op":"add","value":"x","ack":"most"}"#).await,
        ),
        (
            "bad_request",
            raw(r#"{"op":"add","value":"x","timeout_ms":99999999}"#).await,
        ),
        (
            "bad_request",
            api.post("/v1/objects/", json!({ "op": "add", "value": "x" }))
                .await,
        ),
        ("bad_request", api.get("/v1/objects/?").await),
        ("bad_token", api.get("/v1/objects/n?after=nope").await),
        ("bad_request", api.get("/v1/objects/n?read=many").await),
        ("bad_request", api.get("/v1/events?colour=red").await),
        (
            "wrong_type",
            api.post("/v1/objects/n", json!({ "op": "add", "value": "x" }))
                .await,
        ),
        (
            "wrong_type",
            api.post(
                "/v1/objects/n",
                json!({ "op": "add", "path": ["a"], "value": "x" }),
            )
            .await,
        ),
        ("not_found", api.get("/v1/objects/missing").await),
        (
            "not_found",
            api.post(
                "/v1/objects/missing",
                json!({ "op": "remove", "value": "x" }),
            )
            .await,
        ),
        ("not_found", api.get("/v2/anything").await),
        (
            "method_not_allowed",
            api.send(api.client.delete(api.url("/v1/objects/n"))).await,
        ),
        (
            "too_large",
            api.post(
                "/v1/objects/k",
                json!({ "op": "add", "value": "x".repeat(100 * 1024) }),
            )
            .await,
        ),
        (
            "counter_limit",
            api.post("/v1/objects/big", json!({ "op": "grow", "by": u64::MAX }))
                .await,
        ),
        (
            "too_deep",
            api.post(
                "/v1/objects/deep",
                json!({ "op": "add", "value": "x", "path": vec!["k"; 40] }),
            )
            .await,
        ),
        // A path far deeper than objects may nest, refused before anything is built.
        (
            "too_deep",
            api.post(
                "/v1/objects/deep",
                json!({ "op": "set", "value": "x", "path": vec!["k"; 5_000] }),
            )
            .await,
        ),
        ("bad_request", api.get("/v1/objects/%ff%fe").await),
        // Levels past any cluster's size (the node's own arithmetic would overflow).
        (
            "bad_request",
            api.get(&format!("/v1/objects/n?read={}&timeout_ms=100", usize::MAX))
                .await,
        ),
        (
            "bad_request",
            api.post(
                "/v1/objects/n",
                json!({ "op": "inc", "ack": u64::MAX, "timeout_ms": 100 }),
            )
            .await,
        ),
        // No peer to acknowledge: the write stays here, the caller hears of the timeout.
        (
            "ack_timeout",
            api.post(
                "/v1/objects/acked",
                json!({ "op": "add", "value": "x", "ack": 1, "timeout_ms": 200 }),
            )
            .await,
        ),
        (
            "read_timeout",
            api.get("/v1/objects/n?read=1&timeout_ms=200").await,
        ),
        (
            "not_seen",
            api.get("/v1/objects/n?after=00000000000000ff:1&timeout_ms=200")
                .await,
        ),
    ];
    for (i, (code, (got_status, body))) in cases.into_iter().enumerate() {
        let status = status_of(code);
        assert_eq!(
            (got_status, body["error"].as_str()),
            (status, Some(code)),
            "case {i}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "case {i}: {body}"
        );
    }
    // The timed-out write is still here.
    let (status, body) = api.get("/v1/objects/acked").await;
    assert_eq!((status, &body["value"]), (StatusCode::OK, &json!(["x"])));
    // After all of that the server still answers.
    let (status, body) = api.get("/v1/objects/n").await;
    assert_eq!((status, &body["value"]), (StatusCode::OK, &json!(1)));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_token_are_refused() {
    let api = one_node().await;
    let url = api.url("/v1/keys");
    let refused = [
        api.client.get(&url),
        api.client.get(&url).bearer_auth("not-the-token"),
        api.client.get(&url).bearer_auth(format!("{}x", api.token)),
        api.client.get(&url).bearer_auth(&api.token[1..]),
        api.client.get(&url).header("authorization", &api.token),
        api.client.get(&url).basic_auth("user", Some(&api.token)),
        api.client.get(api.url("/v1/events")),
        api.client.get(api.url("/v2/unknown")),
        api.client
            .post(api.url("/v1/objects/k"))
            .body(r#"{"op":"add","value":"x"}"#),
    ];
    for request in refused {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    assert!(
        api.node.get("k").await.is_none(),
        "a refused write changes nothing"
    );
    let (status, _) = api.get("/v1/keys").await;
    assert_eq!(status, StatusCode::OK);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_delivers_a_change_made_at_another_node() {
    let mut apis = cluster(2).await;
    let b = apis.pop().unwrap();
    let a = apis.pop().unwrap();
    let mut stream = a
        .client
        .get(a.url("/v1/events?key=cart"))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    // Another key first: the filter keeps it out of this stream.
    b.post("/v1/objects/other", json!({ "op": "add", "value": "x" }))
        .await;
    let (status, _) = b
        .post("/v1/objects/cart", json!({ "op": "add", "value": "milk" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut buffer = String::new();
    let (name, event) = next_event(&mut stream, &mut buffer, |_, _| true).await;
    assert_eq!(name, "change");
    assert_eq!(event["key"], "cart");
    assert_eq!(event["local"], false, "made at the other node: {event}");
    assert_eq!(event["value"], json!({ "type": "set", "value": ["milk"] }));
    assert_eq!(event["change"]["type"], "set");

    // A change made at A itself shows as local.
    a.post("/v1/objects/cart", json!({ "op": "add", "value": "eggs" }))
        .await;
    let (_, event) = next_event(&mut stream, &mut buffer, |_, e| e["local"] == true).await;
    assert_eq!(event["value"]["value"], json!(["eggs", "milk"]));

    // Stopping the server ends the stream.
    drop(b);
    a.stop().await;
    let end = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends when the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_off_loopback_needs_an_explicit_opt_in() {
    let dir = TempDir::new().unwrap();
    let node = lone_node(&dir).await;
    let token = ApiToken::load_or_create(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = http::serve(node.clone(), listener, token.clone(), async {}).await;
    assert!(
        matches!(refused, Err(HttpError::NotLoopback(_))),
        "{refused:?}"
    );
    // With the opt-in it serves (and stops at once, as asked).
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let served = tokio::time::timeout(
        WAIT,
        Server::new(node, token)
            .allow_remote(true)
            .serve(listener, async {}),
    )
    .await
    .expect("stops in time");
    assert!(served.is_ok(), "{served:?}");
}

#[test]
fn the_token_file_is_private_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let token = ApiToken::load_or_create(dir.path()).unwrap();
    let path = ApiToken::path(dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        token.as_str()
    );
    assert_eq!(
        ApiToken::load_or_create(dir.path()).unwrap().as_str(),
        token.as_str()
    );
    assert!(
        !format!("{token:?}").contains(token.as_str()),
        "Debug hides it"
    );
    // Another data directory gets another token.
    let other = TempDir::new().unwrap();
    assert_ne!(
        ApiToken::load_or_create(other.path()).unwrap().as_str(),
        token.as_str()
    );

    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let refused = ApiToken::load_or_create(dir.path());
        assert!(
            matches!(refused, Err(HttpError::TokenPermissions { mode: m, .. }) if m == mode),
            "{mode:o}: {refused:?}"
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    for bad in [
        &b""[..],
        b"short",
        b"has a space in it but is long enough....",
        &[0xff; 40],
        &[b'a'; 4000],
    ] {
        std::fs::write(&path, bad).unwrap();
        let refused = ApiToken::load_or_create(dir.path());
        assert!(
            matches!(refused, Err(HttpError::TokenMalformed { .. })),
            "{refused:?}"
        );
    }
    // A token of the user's own is kept as written.
    std::fs::write(&path, format!("  {}\n", "Z".repeat(40))).unwrap();
    assert_eq!(
        ApiToken::load_or_create(dir.path()).unwrap().as_str(),
        "Z".repeat(40)
    );
    // Nothing was replaced along the way: the file is still the user's.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        "Z".repeat(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_larger_than_a_message_is_refused() {
    let api = one_node().await;
    let value = "x".repeat(1536 * 1024);
    let (status, body) = api
        .post("/v1/objects/big", json!({ "op": "add", "value": value }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{body}"
    );
    assert!(api.node.get("big").await.is_none(), "nothing was written");
    api.stop().await;
}

/// The first ```python block of docs/http-api.md.
fn python_client_from_the_docs() -> String {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/http-api.md"))
        .unwrap();
    let start = docs.find("```python\n").expect("a Python block") + "```python\n".len();
    let end = start + docs[start..].find("```").expect("its end");
    docs[start..end].to_owned()
}

/// Kills the child process when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_in_the_docs_reads_and_watches_a_set() {
    use std::io::BufRead;
    let mut apis = cluster(2).await;
    let b = apis.pop().unwrap();
    let a = apis.pop().unwrap();
    a.node
        .set::<String>("groceries")
        .add(&"bread".into())
        .await
        .unwrap();
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), python_client_from_the_docs()).unwrap();
    let mut child = Child(
        std::process::Command::new("python3")
            .arg(script.path())
            .env("CRDT_HTTP", &a.base)
            .env("CRDT_NODE_DIR", a._dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs"),
    );
    let (lines, printed) = std::sync::mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        printed
            .recv_timeout(WAIT)
            .expect("the client prints in time")
    };
    assert_eq!(next(), "now: ['bread']");
    assert!(next().starts_with("added milk: "));
    assert_eq!(next(), "watching");
    let (status, _) = b
        .post(
            "/v1/objects/groceries",
            json!({ "op": "add", "value": "eggs" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The add at B reaches A. Lines before it may tell of the client's own add (its event
    // can follow the write's answer; the set shown is read when the event is sent, so it may
    // hold eggs already) or of B's copies arriving.
    loop {
        let line = next();
        assert!(line.starts_with("changed "), "{line}");
        if line.starts_with("changed from a peer: ") && line.contains("'eggs'") {
            assert_eq!(line, "changed from a peer: ['eggs', 'milk', 'bread']");
            break;
        }
    }
    assert!(a
        .node
        .set::<String>("groceries")
        .contains(&"milk".into())
        .await
        .unwrap());
    drop(child);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_and_tokens_work_across_nodes() {
    let mut apis = cluster(2).await;
    let b = apis.pop().unwrap();
    let a = apis.pop().unwrap();
    // A write acknowledged by the other node, then read back there by its token.
    let (status, body) = b
        .post(
            "/v1/objects/cart",
            json!({ "op": "add", "value": "x", "ack": 1, "timeout_ms": 10_000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    read_after(&a, "cart", body["token"].as_str().unwrap(), "x").await;

    // Partitioned: the levels time out, the token is not seen, the writes stay.
    a.node.isolate_from(&[b.node.id()]);
    b.node.isolate_from(&[a.node.id()]);
    let (status, body) = b
        .post(
            "/v1/objects/cart",
            json!({ "op": "add", "value": "y", "ack": "all", "timeout_ms": 300 }),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("ack_timeout")),
        "{body}"
    );
    assert_eq!((&body["acked"], &body["wanted"]), (&json!(1), &json!(2)));
    let (_, body) = b
        .post("/v1/objects/cart", json!({ "op": "add", "value": "z" }))
        .await;
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = a
        .get(&format!("/v1/objects/cart?after={token}&timeout_ms=300"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("not_seen")),
        "{body}"
    );
    let (status, body) = a.get("/v1/objects/cart?read=1&timeout_ms=300").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("read_timeout")),
        "{body}"
    );

    // Healed: the token's write arrives, and a quorum read sees everything.
    a.node.isolate_from(&[]);
    b.node.isolate_from(&[]);
    read_after(&a, "cart", &token, "z").await;
    let (status, body) = a.get("/v1/objects/cart?read=1&timeout_ms=10000").await;
    assert_eq!(
        (status, &body["value"]),
        (StatusCode::OK, &json!(["x", "y", "z"])),
        "{body}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_cuts_waiting_requests_and_lets_go_of_the_node() {
    let api = lone_api(|s| s.grace(Duration::from_millis(200))).await;
    let mut stream = api
        .client
        .get(api.url("/v1/events"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    // A write that waits for a peer that does not exist, for ten minutes.
    let waiting = tokio::spawn({
        let request = api
            .client
            .post(api.url("/v1/objects/k"))
            .bearer_auth(&api.token)
            .body(r#"{"op":"add","value":"kept","ack":1,"timeout_ms":600000}"#);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    });
    tokio::time::timeout(WAIT, async {
        while api.node.metrics().await.pending_acks == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the write is waiting");
    // Stop the server but keep the node to look at it afterwards.
    let (node, _dir) = api.stop_server().await;
    let (status, body) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("stopped")),
        "{body}"
    );
    let ended = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream ended");
    let node = Arc::try_unwrap(node).expect("the server let go of the node");
    assert!(
        node.set::<String>("k")
            .contains(&"kept".into())
            .await
            .unwrap(),
        "the write stays"
    );
    node.shutdown().await;
}
