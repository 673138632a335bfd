//! `crdt-node run --http`: the local HTTP API of docs/http-api.md served by a real daemon,
//! reached by a plain HTTP/1.1 client over a real TCP socket; the same state as the control
//! commands; no access without the token in the data directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::{control, node_args, Running};

#[test]
fn run_with_http_serves_the_api_with_the_token_in_the_data_directory() {
    let dir = tempfile::TempDir::new().unwrap();
    let dir = dir.path().to_str().unwrap();
    let mut args = node_args(dir, &[]);
    args.extend(["--http", "127.0.0.1:0"]);
    let mut daemon = Running::daemon(&args, Stdio::null());
    let banner = daemon.expect(|l| l.contains("HTTP API on http://"));
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    let token = std::fs::read_to_string(std::path::Path::new(dir).join("http.token")).unwrap();
    let token = token.trim();

    // A write through the API is seen by the control commands, and the other way round.
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/objects/cart",
        Some(token),
        r#"{"op":"add","value":"milk"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"token\""), "{body}");
    assert_eq!(control(dir, &["add", "cart", "eggs"]).code, 0);
    let got = control(dir, &["get", "cart"]).stdout;
    assert_eq!(got.trim(), r#"cart = {"eggs", "milk"}"#);
    let (status, body) = http(&addr, "GET", "/v1/objects/cart", Some(token), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"["eggs","milk"]"#), "{body}");

    // No token, a wrong token, a bad request.
    assert_eq!(http(&addr, "GET", "/v1/objects/cart", None, "").0, 401);
    assert_eq!(
        http(&addr, "GET", "/v1/objects/cart", Some("not-the-token"), "").0,
        401
    );
    let (status, body) = http(&addr, "POST", "/v1/objects/cart", Some(token), "{not json");
    assert_eq!(status, 400, "{body}");

    // SIGTERM stops the API with the node, and exits cleanly.
    assert!(daemon.terminate().success());
    assert!(TcpStream::connect(&addr).is_err(), "the API still answers");
}

/// One HTTP/1.1 request with `Connection: close`; the status and the body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}
