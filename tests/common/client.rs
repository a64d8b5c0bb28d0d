//! The emulator seen from a client, shared by the per-provider emulator tests: starts
//! `switchyard::emulator::server` in-process on a free loopback port, sends one exchange with
//! `awc` (keeping what arrived before a dropped connection), and parses SSE bodies and fixtures.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use switchyard::emulator::{self, EmulatorConfig};

/// Starts an emulator on a free port and returns its address.
pub fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local address");
    let config = EmulatorConfig {
        workers: 1,
        ..EmulatorConfig::default()
    };
    let server = emulator::server(config, listener).expect("emulator starts");
    actix_web::rt::spawn(server);
    addr
}

/// What came back, and when.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Everything that arrived, also when the body was cut short.
    pub body: Vec<u8>,
    /// `Err` when the body ended before its declared end (length or final chunk).
    pub complete: Result<(), String>,
    pub headers_after: Duration,
    pub body_after: Duration,
}

impl Reply {
    pub fn json(&self) -> Value {
        assert_eq!(self.complete, Ok(()), "body incomplete");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// Asserts the status, showing the body when it differs.
    pub fn expect_status(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }

    /// The `error` object of a JSON error body (OpenAI, Azure, Google), after checking the
    /// status and the content type.
    pub fn json_error(&self, status: u16) -> Value {
        self.expect_status(status);
        assert!(self.header("content-type").starts_with("application/json"));
        self.error()
    }

    /// The `error` object of an OpenAI error body.
    pub fn error(&self) -> Value {
        let body = self.json();
        assert!(body["error"].is_object(), "not an error body: {body}");
        body["error"].clone()
    }

    pub fn events(&self) -> Vec<Event> {
        assert_eq!(self.complete, Ok(()), "stream incomplete");
        parse_sse(&self.body)
    }
}

/// One exchange. `auth` is the whole `Authorization` value, if any. The body is read chunk by
/// chunk so that what arrived before a dropped connection stays visible to the test.
pub async fn exchange(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    auth: Option<String>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let started = Instant::now();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(20))
        .finish();
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, format!("http://{addr}{path}"));
    if let Some(auth) = auth {
        request = request.insert_header(("authorization", auth));
    }
    if !body.is_empty() {
        request = request.insert_header(("content-type", "application/json"));
    }
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = request.send_body(body).await.expect("response headers");
    let headers_after = started.elapsed();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    let mut body = Vec::new();
    let mut complete = Ok(());
    while let Some(chunk) = response.next().await {
        match chunk {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(e) => {
                complete = Err(e.to_string());
                break;
            }
        }
    }
    Reply {
        status: response.status().as_u16(),
        headers,
        body,
        complete,
        headers_after,
        body_after: started.elapsed(),
    }
}

pub const DEFAULT_TEXT: &str =
    "Hello from the Switchyard emulator. This is filler text for load tests.";

#[derive(Debug)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// Splits an SSE body into events. Every frame must end with a blank line: a missing final
/// `\n\n` means a cut stream, and shows up as a trailing fragment the tests can see.
pub fn parse_sse(body: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(body).expect("UTF-8 stream");
    let mut events = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
        let mut event = None;
        let mut data = Vec::new();
        for line in frame.lines() {
            if let Some(name) = line.strip_prefix("event: ") {
                event = Some(name.to_owned());
            } else if let Some(payload) = line.strip_prefix("data: ") {
                data.push(payload);
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
        events.push(Event {
            event,
            data: data.join("\n"),
        });
    }
    events
}

/// A file under `fixtures/`, e.g. `fixture("gemini/generate_content.json")`.
pub fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Recursively compares key sets where both sides have an object: every key of the fixture must
/// be in the emulator's output, and every key of the output must be in the fixture or listed in
/// `extra` (dotted paths, `[]` for array elements).
pub fn same_keys(
    path: &str,
    want: &Value,
    got: &Value,
    extra: &[&str],
    problems: &mut Vec<String>,
) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (want, got) {
        (Value::Object(want), Value::Object(got)) => {
            for key in want.keys().filter(|k| !got.contains_key(*k)) {
                problems.push(format!("missing {}", join(key)));
            }
            for key in got.keys().filter(|k| !want.contains_key(*k)) {
                if !extra.contains(&join(key).as_str()) {
                    problems.push(format!("extra {}", join(key)));
                }
            }
            for (key, value) in want {
                if let Some(other) = got.get(key) {
                    same_keys(&join(key), value, other, extra, problems);
                }
            }
        }
        (Value::Array(want), Value::Array(got)) => {
            for (w, g) in want.iter().zip(got) {
                same_keys(&format!("{path}[]"), w, g, extra, problems);
            }
        }
        _ => {}
    }
}

pub fn assert_same_keys(what: &str, want: &Value, got: &Value, extra: &[&str]) {
    let mut problems = Vec::new();
    same_keys("", want, got, extra, &mut problems);
    assert!(
        problems.is_empty(),
        "{what} differs from its fixture: {problems:?}\nemulator: {got}"
    );
}

/// One POST over a plain socket, returning the raw HTTP/1.1 bytes: what a dropped connection
/// left unfinished (a chunked body without its last chunk) is visible here, not through awc.
pub async fn raw_exchange(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.write_all(head.as_bytes()).expect("head");
        stream.write_all(&body).expect("body");
        let mut raw = Vec::new();
        let mut buf = [0; 8192];
        // A reset after the last bytes is part of what is being observed, not a failure.
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            raw.extend_from_slice(&buf[..n]);
        }
        raw
    })
    .await
    .expect("client thread")
}
