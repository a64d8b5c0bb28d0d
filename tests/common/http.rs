//! The gateway seen from a client: one request helper and one reply type for every
//! integration test that talks HTTP to the real binary, and one SSE `data:` splitter.
#![allow(dead_code)]

use awc::http::StatusCode;
use bytes::Bytes;
use serde_json::{Value, json};

pub struct Reply {
    pub status: StatusCode,
    pub headers: awc::http::header::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The `error.message` of an OpenAI error body.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts an OpenAI-shaped error with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let body = self.json();
        let e = &body["error"];
        for field in ["message", "type", "param", "code"] {
            assert!(e.get(field).is_some(), "error lacks {field}: {body}");
        }
        assert_eq!(e["code"], code, "{body}");
        body
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .finish()
}

pub async fn send(req: awc::ClientRequest, body: Option<Bytes>) -> Reply {
    let mut res = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    }
    .expect("request");
    let body = res.body().limit(16 * 1024 * 1024).await.expect("body");
    Reply {
        status: res.status(),
        headers: res.headers().clone(),
        body,
    }
}

/// A GET with `key` as the bearer token.
pub async fn get(url: String, key: &str) -> Reply {
    send(
        client()
            .get(url)
            .insert_header(("authorization", format!("Bearer {key}"))),
        None,
    )
    .await
}

pub async fn post(url: String, key: Option<&str>, body: Value) -> Reply {
    post_raw(url, key, Bytes::from(body.to_string())).await
}

pub async fn post_raw(url: String, key: Option<&str>, body: Bytes) -> Reply {
    let mut req = client()
        .post(url)
        .insert_header(("content-type", "application/json"));
    if let Some(k) = key {
        req = req.insert_header(("authorization", format!("Bearer {k}")));
    }
    send(req, Some(body)).await
}

pub fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The JSON payloads of `data:` lines.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}
