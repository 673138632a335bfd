//! The HTTP API under attack from a hostile or careless local client: clients that hold
//! connections without finishing a request, huge and deep requests, odd keys and tokens,
//! numbers at their limits, many and slow event streams, writes racing a shutdown. Real
//! nodes on loopback QUIC, the API on loopback TCP, raw sockets and a real HTTP client.

mod http_support;

use std::time::Duration;

use crdt_net::http::{self, ApiToken, HttpError};
use http_support::{lone_api, next_event, one_node, Served, WAIT};
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw connection to `api` that has sent `bytes`.
async fn raw(api: &Served, bytes: &[u8]) -> TcpStream {
    let addr = api.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads what the server sends on `stream` until it closes it (within [`WAIT`]).
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server closes the connection in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// `GET path` with the token, as a raw request that asks the server to close the
/// connection after answering.
fn get_request(api: &Served, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        api.token
    )
    .into_bytes()
}

/// The same, keeping the connection open for another request.
fn keep_alive_request(api: &Served, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        api.token
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let api = lone_api(|s| s.header_timeout(Duration::from_millis(300))).await;
    // Half a request line, half the headers, and a finished request left idle.
    let mut held = vec![
        raw(&api, b"GE").await,
        raw(&api, b"GET /v1/keys HTTP/1.1\r\nHost: x\r\n").await,
    ];
    let mut idle = raw(&api, &keep_alive_request(&api, "/v1/keys")).await;
    for stream in &mut held {
        until_closed(stream).await;
    }
    let answered = until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_told_so_and_the_limit_frees_up() {
    let api = lone_api(|s| s.max_connections(4)).await;
    // Four connections that never finish a request hold every place (the kernel hands them
    // to the server in the order they connected, so before the requests below).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(raw(&api, b"GET /v1/keys HTTP/1.1\r\n").await);
    }
    for _ in 0..40 {
        let mut refused = raw(&api, &get_request(&api, "/v1/keys")).await;
        let answer = until_closed(&mut refused).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too_many_connections"), "{answer}");
    }
    // A client that hangs up gives its place back.
    held.pop();
    let answered = tokio::time::timeout(WAIT, async {
        loop {
            let mut stream = raw(&api, &get_request(&api, "/v1/keys")).await;
            let answer = until_closed(&mut stream).await;
            if answer.starts_with("HTTP/1.1 200") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(answered.is_ok(), "a place freed up");
    drop(held);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_and_urls_are_refused() {
    let api = one_node().await;
    for request in [
        format!(
            "GET /v1/keys HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2 << 20)
        ),
        format!(
            "GET /v1/keys HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X-Many: a\r\n".repeat(10_000)
        ),
        format!(
            "GET /v1/objects/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "k".repeat(2 << 20)
        ),
    ] {
        let mut stream = raw(&api, request.as_bytes()).await;
        let answer = until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    }
    let (status, _) = api.get("/v1/keys").await;
    assert_eq!(status, StatusCode::OK);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_bodies_and_numbers_at_their_limits_get_typed_errors() {
    let api = one_node().await;
    let deep = "[".repeat(100_000);
    let objects = "{\"hex\":".repeat(100_000);
    let bodies = [
        (format!(r#"{{"op":"add","value":{deep}"#), "bad_request"),
        (format!(r#"{{"op":"add","value":{objects}"#), "bad_request"),
        (
            format!(r#"{{"op":"add","value":"x","path":{deep}"#),
            "bad_request",
        ),
        // Past the depth limit a path's keys are skipped unparsed: still bounded.
        (
            format!(
                r#"{{"op":"add","value":"x","path":[{}{deep}"#,
                r#""k","#.repeat(40)
            ),
            "bad_request",
        ),
        (
            format!(r#"{{"op":"add","value":"x","ack":{deep}"#),
            "bad_request",
        ),
        (
            r#"{"op":"add","value":"x","timeout_ms":18446744073709551615}"#.into(),
            "bad_request",
        ),
        (
            r#"{"op":"add","value":"x","timeout_ms":18446744073709551616}"#.into(),
            "bad_request",
        ),
        (r#"{"op":"add","value":"x","ack":-0}"#.into(), "bad_request"),
        (
            r#"{"op":"add","value":"x","ack":1e3}"#.into(),
            "bad_request",
        ),
        (
            r#"{"op":"inc","by":18446744073709551615}"#.into(),
            "counter_limit",
        ),
        (
            r#"{"op":"dec","by":18446744073709551615}"#.into(),
            "counter_limit",
        ),
        (
            r#"{"op":"inc","by":9223372036854775808}"#.into(),
            "counter_limit",
        ),
        (r#"{"op":"add","value":1}"#.into(), "bad_request"),
        (r#"{"op":"add","value":true}"#.into(), "bad_request"),
        (r#"{"op":"add","value":null}"#.into(), "bad_request"),
        (
            r#"{"op":"add","value":"x","op":"add"}"#.into(),
            "bad_request",
        ),
        (r#"{"op":"add","value":"x"} trailing"#.into(), "bad_request"),
        ("\u{feff}{}".into(), "bad_request"),
    ];
    for (body, code) in bodies {
        let (status, answer) = api
            .send(api.client.post(api.url("/v1/objects/k")).body(body.clone()))
            .await;
        assert_eq!(answer["error"], code, "{body:.80} -> {status} {answer}");
    }
    for (path, code) in [
        (
            "/v1/objects/k?after=ffffffffffffffff:18446744073709551615&timeout_ms=10",
            "not_seen",
        ),
        ("/v1/objects/k?after=0:1", "bad_token"),
        ("/v1/objects/k?after=:", "bad_token"),
        ("/v1/objects/k?after=1:-1", "bad_token"),
        ("/v1/objects/k?read=65536&timeout_ms=10", "read_timeout"),
        ("/v1/objects/k?read=65537&timeout_ms=10", "bad_request"),
        ("/v1/objects/k?read=18446744073709551616", "bad_request"),
        ("/v1/objects/k?timeout_ms=600001", "bad_request"),
        ("/v1/objects/k?timeout_ms=-1", "bad_request"),
        ("/v1/objects/k?read=1&read=2", "bad_request"),
        ("/v1/objects/k?%ff=1", "bad_request"),
    ] {
        let (status, answer) = api.get(path).await;
        assert_eq!(answer["error"], code, "{path} -> {status} {answer}");
    }
    // An acknowledgement level at the limit only waits.
    let (_, answer) = api
        .post(
            "/v1/objects/k",
            json!({ "op": "add", "value": "x", "ack": 65536, "timeout_ms": 10 }),
        )
        .await;
    assert_eq!(answer["error"], "ack_timeout", "{answer}");
    let (status, answer) = api.get("/v1/objects/k").await;
    assert_eq!((status, &answer["value"]), (StatusCode::OK, &json!(["x"])));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_are_keys_and_nothing_else() {
    let api = one_node().await;
    // A NUL, a path that would climb out of a directory, an emoji, a long key: each is one
    // key, stored and listed as given.
    let long = "k".repeat(60_000);
    for (segment, key) in [
        ("a%00b", "a\0b".to_owned()),
        ("..%2F..%2Fetc%2Fpasswd", "../../etc/passwd".to_owned()),
        ("%F0%9F%98%80", "\u{1f600}".to_owned()),
        (long.as_str(), long.clone()),
    ] {
        let path = format!("/v1/objects/{segment}");
        let (status, answer) = api.post(&path, json!({ "op": "add", "value": "x" })).await;
        assert_eq!(status, StatusCode::OK, "{key:.40}: {answer}");
        let (status, answer) = api.get(&path).await;
        assert_eq!((status, &answer["key"]), (StatusCode::OK, &json!(key)));
        assert!(api.node.get(&key).await.is_some(), "{key:.40}");
    }
    // URL clients resolve `..` and `%2E%2E` segments before sending (reqwest, curl without
    // --path-as-is); sent as they are, they are keys like any other.
    for segment in ["..", "%2E%2E", "."] {
        let request = format!(
            "GET /v1/objects/{segment} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            api.token
        );
        let answer = until_closed(&mut raw(&api, request.as_bytes()).await).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains("nothing is stored under"), "{answer}");
    }
    let (_, keys) = api.get("/v1/keys").await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(4));
    // A key of invalid UTF-8 is no key.
    let (status, answer) = api.get("/v1/objects/%C0%AF").await;
    assert_eq!(
        (status, &answer["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_and_content_types() {
    let api = one_node().await;
    api.post("/v1/objects/n", json!({ "op": "inc" })).await;
    let url = api.url("/v1/objects/n");
    let request = |method: &str| {
        api.client
            .request(method.parse().unwrap(), &url)
            .bearer_auth(&api.token)
    };
    for (method, status) in [
        ("HEAD", StatusCode::OK),
        ("OPTIONS", StatusCode::METHOD_NOT_ALLOWED),
        ("PUT", StatusCode::METHOD_NOT_ALLOWED),
        ("DELETE", StatusCode::METHOD_NOT_ALLOWED),
        ("TRACE", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let response = request(method).send().await.unwrap();
        assert_eq!(response.status(), status, "{method}");
    }
    // The body is JSON whatever the client calls it (curl -d says form data).
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "image/png",
    ] {
        let response = request("POST")
            .header("content-type", content_type)
            .body(r#"{"op":"inc"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{content_type}");
    }
    let (_, answer) = api.get("/v1/objects/n").await;
    assert_eq!(answer["value"], 4);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_given_up_by_their_clients_free_their_places() {
    let api = one_node().await;
    let open = || {
        api.client
            .get(api.url("/v1/events"))
            .bearer_auth(&api.token)
            .send()
    };
    let mut streams = Vec::new();
    for _ in 0..http::MAX_STREAMS {
        let stream = open().await.unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        streams.push(stream);
    }
    let (status, body) = api.get("/v1/events").await;
    assert_eq!(body["error"], "too_many_streams", "{status} {body}");
    // Their clients hang up: the server sees it and gives the places back.
    drop(streams);
    let reopened = tokio::time::timeout(WAIT, async {
        while open().await.unwrap().status() != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reopened.is_ok(), "a place freed up");
    // HEAD of a stream answers its headers and holds no place afterwards.
    for _ in 0..2 * http::MAX_STREAMS {
        let response = api
            .client
            .head(api.url("/v1/events"))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_keep_the_node_after_stopping() {
    let api = lone_api(|s| s.grace(Duration::from_millis(200))).await;
    // An event stream its client never reads, fed far more than the sockets buffer: every
    // change to `big` carries the whole set, half a megabyte.
    let stream = raw(&api, &keep_alive_request(&api, "/v1/events")).await;
    let big = api.node.set::<String>("big");
    big.add(&"x".repeat(512 * 1024)).await.unwrap();
    for i in 0..80 {
        big.add(&i.to_string()).await.unwrap();
    }
    // `stop` checks that the server returns in time holding no reference to the node.
    api.stop().await;
    drop(stream);
}

#[test]
fn a_token_file_that_others_own_or_can_read_through_a_link_is_refused() {
    use std::os::unix::fs::{chown, symlink, PermissionsExt};
    let dir = TempDir::new().unwrap();
    let token = ApiToken::load_or_create(dir.path()).unwrap();
    let path = ApiToken::path(dir.path());
    // Owned by another user, that user may rewrite it (to a token of their choosing) however
    // private its mode. Only root can give a file away, so elsewhere this part is skipped.
    if chown(&path, Some(65534), Some(65534)).is_ok() {
        let refused = ApiToken::load_or_create(dir.path());
        assert!(
            matches!(refused, Err(HttpError::TokenOwner { uid: 65534, .. })),
            "{refused:?}"
        );
        chown(&path, Some(0), Some(0)).unwrap();
        // Root's own file is as good as ours (root can read everything anyway).
        assert!(ApiToken::load_or_create(dir.path()).is_ok());
    } else {
        eprintln!("not root: the owner check is not exercised");
    }
    // A link is followed, and what it leads to is checked.
    let elsewhere = TempDir::new().unwrap();
    let target = elsewhere.path().join("token");
    std::fs::write(&target, format!("{}\n", token.as_str())).unwrap();
    std::fs::remove_file(&path).unwrap();
    symlink(&target, &path).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = ApiToken::load_or_create(dir.path());
    assert!(
        matches!(
            refused,
            Err(HttpError::TokenPermissions { mode: 0o644, .. })
        ),
        "{refused:?}"
    );
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        ApiToken::load_or_create(dir.path()).unwrap().as_str(),
        token.as_str()
    );
    // A dangling link is an error, not a reason to make a new token behind it.
    std::fs::remove_file(&target).unwrap();
    assert!(matches!(
        ApiToken::load_or_create(dir.path()),
        Err(HttpError::Io { .. })
    ));
    assert!(!target.exists(), "nothing was written through the link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_a_shutdown_are_answered_truthfully() {
    let api = lone_api(|s| s.grace(Duration::from_millis(200))).await;
    // Writers that keep writing until the server is gone; each remembers what it was told.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, url, token) = (
                reqwest::Client::new(),
                api.url("/v1/objects/k"),
                api.token.clone(),
            );
            tokio::spawn(async move {
                let mut told = Vec::new();
                for i in 0..10_000 {
                    let element = format!("{w}-{i}");
                    let body = json!({ "op": "add", "value": element }).to_string();
                    let sent = client.post(&url).bearer_auth(&token).body(body).send();
                    let Ok(Ok(response)) = tokio::time::timeout(WAIT, sent).await else {
                        return told; // refused or closed: the server is gone
                    };
                    told.push((element, response.status()));
                }
                told
            })
        })
        .collect();
    tokio::time::timeout(WAIT, async {
        while api.node.get("k").await.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the writers are writing");
    let (node, _dir) = api.stop_server().await;
    let mut ok = 0;
    for writer in writers {
        for (element, status) in tokio::time::timeout(WAIT, writer).await.unwrap().unwrap() {
            match status {
                StatusCode::OK => {
                    ok += 1;
                    let set = node.set::<String>("k");
                    assert!(
                        set.contains(&element).await.unwrap(),
                        "{element} was acknowledged"
                    );
                }
                StatusCode::SERVICE_UNAVAILABLE => {}
                other => panic!("{element}: {other}"),
            }
        }
    }
    assert!(ok > 0);
    let Ok(node) = std::sync::Arc::try_unwrap(node) else {
        panic!("the server let go of the node");
    };
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stops_reading_is_bounded_and_holds_up_no_one() {
    // At the end the stalled stream is still full: dropped after twice the grace period.
    let api = lone_api(|s| s.grace(Duration::from_millis(200))).await;
    let open = || {
        api.client
            .get(api.url("/v1/events?key=big&value=false"))
            .bearer_auth(&api.token)
            .send()
    };
    // Two clients: one stops reading, one keeps reading (until it sees the last change).
    let mut stalled = open().await.unwrap();
    let mut reading = open().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut buffer = String::new();
        next_event(&mut reading, &mut buffer, |name, event| {
            name == "change" && event["change"]["value"] == json!(["done"])
        })
        .await;
    });
    // Each add's change carries a quarter-megabyte element; each remove takes it away again,
    // so the set stays small while the changes add up to 25 MB.
    let big = api.node.set::<String>("big");
    let adds: u64 = 100;
    for i in 0..adds {
        let element = format!("{i}{}", "x".repeat(256 * 1024));
        big.add(&element).await.unwrap();
        big.remove(&element).await.unwrap();
    }
    big.add(&"done".into()).await.unwrap();
    // The reader gets there: the stalled stream holds up neither it nor the node.
    tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    // The stalled stream kept what fits in the sockets and its own buffer and counted the
    // rest, and says so once its client reads again (before, the node's event queue kept all
    // of it, up to 4096 changes of up to a megabyte each, for as long as the client slept).
    let mut buffer = String::new();
    let (_, lagged) = next_event(&mut stalled, &mut buffer, |name, _| name == "lagged").await;
    let missed = lagged["missed"].as_u64().unwrap();
    assert!(missed > 0 && missed <= 2 * adds + 1, "{lagged}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_a_hundred_thousand_elements_is_read_whole() {
    use crdt_core::Crdt;
    use crdt_net::{Object, Op};
    let api = one_node().await;
    let me = api.node.replica_id();
    let elements = 100_000;
    // In batches: merging each add into a batch's delta costs in proportion to the batch.
    for batch in 0..100 {
        api.node
            .update_with("big", move |object| {
                let mut delta = Object::Empty;
                for i in 0..elements / 100 {
                    let element = crdt_net::value::encode(&format!("e{}", batch * 1000 + i));
                    delta.merge(&object.apply(me, &Op::Add(element))?);
                }
                Ok::<_, crdt_net::TypeMismatch>(delta)
            })
            .await
            .unwrap();
    }
    let before = peak_rss_kb();
    let started = std::time::Instant::now();
    let response = api
        .client
        .get(api.url("/v1/objects/big"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let body = response.bytes().await.unwrap();
    eprintln!(
        "GET of {elements} elements: {} bytes in {:?}, peak RSS {} -> {} kB",
        body.len(),
        started.elapsed(),
        before,
        peak_rss_kb()
    );
    let read: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(read["value"].as_array().map(Vec::len), Some(elements));
    api.stop().await;
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_taken_as_clients_write_it_and_nothing_else() {
    let api = one_node().await;
    let token = &api.token;
    let status = |header: String| {
        let request = api.client.get(api.url("/v1/keys"));
        async move {
            request
                .header("authorization", header)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // The scheme's case does not matter (RFC 9110), nor how many blanks follow it.
    for header in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer   {token}"),
        format!("Bearer\t{token}"),
    ] {
        assert_eq!(status(header.clone()).await, StatusCode::OK, "{header}");
    }
    for header in [
        format!("Bearer{token}"),
        format!("Bearer {token}x"),
        format!("Bearer {}", &token[..token.len() - 1]),
        format!("Basic {token}"),
        format!("Bearer {token} {token}"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        token.to_owned(),
    ] {
        assert_eq!(
            status(header.clone()).await,
            StatusCode::UNAUTHORIZED,
            "{header}"
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_leaves_streams_and_slow_answers_alone() {
    let api = lone_api(|s| s.header_timeout(Duration::from_millis(100))).await;
    let mut stream = api
        .client
        .get(api.url("/v1/events?key=k"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    // A request that waits ten times the header timeout for its answer, meanwhile.
    let (status, body) = api
        .get("/v1/objects/k?after=00000000000000ff:1&timeout_ms=1000")
        .await;
    assert_eq!(body["error"], "not_seen", "{status} {body}");
    // The stream, open all along, still delivers.
    api.post("/v1/objects/k", json!({ "op": "add", "value": "x" }))
        .await;
    let mut buffer = String::new();
    let (name, _) = next_event(&mut stream, &mut buffer, |_, _| true).await;
    assert_eq!(name, "change");
    api.stop().await;
}
