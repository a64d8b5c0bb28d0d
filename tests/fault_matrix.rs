//! The fault matrix: every upstream fault, through every provider kind the gateway serves,
//! generated from one list (Bedrock's stream faults in its eventstream framing).
//!
//! Each cell starts a scripted upstream ([`stub`], which counts requests exactly) as the
//! provider of route `big` (`max_retries = 1`, 1 s timeouts), with route `backup` on the
//! emulator as its fallback, and asserts three things: what the client got, how many times the
//! faulty upstream was called, and which route served (with the fallback's reason). Usage
//! records join each cell once the ledger exists.

mod common;

use common::http::*;
use common::stub::{self, Script};
use common::*;
use serde_json::{Value, json};

/// What the client must get.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// A 200 from route `backup`, with this `x-switchyard-fallback-reason`.
    FellBack(&'static str),
    /// An error from route `big`: status and `error.code`.
    Failed(u16, &'static str),
    /// A 200 stream from route `big` whose last event is this error (no `[DONE]`).
    StreamEndsWithError(&'static str),
}

struct Cell {
    fault: &'static str,
    script: Script,
    stream: bool,
    /// `circuit_failures` of the faulty provider (0: breaker off).
    circuit: u32,
    attempts: usize,
    outcome: Outcome,
}

const fn cell(
    fault: &'static str,
    script: Script,
    stream: bool,
    attempts: usize,
    outcome: Outcome,
) -> Cell {
    Cell {
        fault,
        script,
        stream,
        circuit: 0,
        attempts,
        outcome,
    }
}

const CELLS: &[Cell] = &[
    cell(
        "429 with retry hint",
        stub::status_429,
        false,
        2,
        Outcome::FellBack("429"),
    ),
    cell("5xx", stub::status_503, false, 2, Outcome::FellBack("5xx")),
    cell(
        "5xx on a stream",
        stub::status_503,
        true,
        2,
        Outcome::FellBack("5xx"),
    ),
    cell(
        "timeout before headers",
        stub::silent,
        false,
        2,
        Outcome::FellBack("timeout"),
    ),
    cell(
        "connection dropped before headers",
        stub::hang_up,
        false,
        2,
        Outcome::FellBack("connect"),
    ),
    cell(
        "slow first byte",
        stub::stream_silent,
        true,
        2,
        Outcome::FellBack("timeout"),
    ),
    cell(
        "error event before content",
        stub::stream_error_first,
        true,
        2,
        Outcome::FellBack("stream_error"),
    ),
    cell(
        "mid-stream error",
        stub::stream_error_after_first,
        true,
        1,
        Outcome::StreamEndsWithError(""),
    ),
    cell(
        "dropped mid-stream",
        stub::stream_drop_after_first,
        true,
        1,
        Outcome::StreamEndsWithError("upstream_stream_interrupted"),
    ),
    cell(
        "broken body after 200",
        stub::torn_200,
        false,
        1,
        Outcome::Failed(502, "upstream_incomplete"),
    ),
    Cell {
        fault: "open circuit",
        script: stub::status_503,
        stream: false,
        circuit: 1,
        attempts: 1,
        outcome: Outcome::FellBack("circuit_open"),
    },
];

/// The faulty provider's table, by kind.
fn faulty_provider(kind: &str, circuit: u32) -> String {
    let common = format!(
        "base_url_env = \"FLAKY_BASE_URL\"\napi_key_env = \"A_OPENAI_KEY\"\nmax_retries = 1\ntimeout_secs = 1\ncircuit_failures = {circuit}\n"
    );
    match kind {
        "openai" => format!("type = \"openai\"\n{common}"),
        "azure_openai" => format!(
            "type = \"azure_openai\"\nendpoint = \"https://example.openai.azure.com\"\napi_version = \"2025-03-01-preview\"\n{common}"
        ),
        "gemini" => format!("type = \"gemini\"\n{common}"),
        // A Bedrock API key (Bearer): the stub checks no signature.
        "bedrock" => format!("type = \"bedrock\"\nregion = \"us-east-1\"\n{common}"),
        other => panic!("no provider kind {other} in the matrix"),
    }
}

fn tenant(kind: &str, circuit: u32) -> String {
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.flaky]
{}
[providers.backup]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url_env = "A_OPENAI_BASE_URL"

[proxies.chat]
[[proxies.chat.routes]]
name = "big"
provider = "flaky"
model = "gpt-4o"
fallbacks = ["backup"]
first_byte_timeout_secs = 1
[[proxies.chat.routes]]
name = "backup"
provider = "backup"
model = "gpt-4o-mini"
"#,
        faulty_provider(kind, circuit)
    )
}

/// Sends one chat request; returns status, route, fallback reason and body.
async fn call(gw: &Gateway, stream: bool) -> (u16, String, String, String) {
    let body = json!({"model": "gpt-4o", "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]});
    let r = post(gw.url("/a/chat/v1/chat/completions"), Some(KEY_A), body).await;
    (
        r.status.as_u16(),
        r.header("x-switchyard-route").to_owned(),
        r.header("x-switchyard-fallback-reason").to_owned(),
        r.text(),
    )
}

/// Checks one response against its cell; the reasons it does not match.
fn check(
    cell: &Cell,
    (status, route, reason, body): &(u16, String, String, String),
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    match cell.outcome {
        Outcome::FellBack(why) => {
            want(*status == 200, format!("status {status}, want 200"));
            want(route == "backup", format!("route {route:?}, want backup"));
            want(reason == why, format!("reason {reason:?}, want {why:?}"));
            if cell.stream {
                want(
                    body.ends_with("data: [DONE]\n\n"),
                    "stream does not end with [DONE]".into(),
                );
            }
        }
        Outcome::Failed(want_status, code) => {
            want(
                *status == want_status,
                format!("status {status}, want {want_status}"),
            );
            want(route == "big", format!("route {route:?}, want big"));
            let got: Value = serde_json::from_str(body).unwrap_or_default();
            want(
                got["error"]["code"] == code,
                format!("error {got}, want code {code}"),
            );
        }
        Outcome::StreamEndsWithError(code) => {
            want(*status == 200, format!("status {status}, want 200"));
            want(route == "big", format!("route {route:?}, want big"));
            let last = body
                .trim_end()
                .rsplit("\n\n")
                .next()
                .and_then(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
                .unwrap_or("");
            let got: Value = serde_json::from_str(last).unwrap_or_default();
            want(
                got["error"]["message"].is_string(),
                format!("last event {last:?} is no error"),
            );
            if !code.is_empty() {
                want(
                    got["error"]["code"] == code,
                    format!("last event {last:?}, want code {code}"),
                );
            }
            want(
                !body.contains("[DONE]"),
                "a broken stream must not look complete".into(),
            );
        }
    }
    wrong
}

async fn run_matrix(kind: &str) {
    let emu = emulator();
    let mut failures = Vec::new();
    for cell in CELLS {
        let script = match kind {
            "bedrock" => eventstream::script(cell.fault).unwrap_or(cell.script),
            _ => cell.script,
        };
        let upstream = stub::stub(script);
        let base = match kind {
            "azure_openai" | "gemini" | "bedrock" => {
                upstream.base.trim_end_matches("/v1").to_owned()
            }
            _ => upstream.base.clone(),
        };
        let gw = Gateway::start(
            &[("a", tenant(kind, cell.circuit))],
            &[
                ("A_OPENAI_KEY", EMULATOR_KEY.into()),
                ("A_OPENAI_BASE_URL", format!("{}/v1", emu.base)),
                ("FLAKY_BASE_URL", base),
            ],
            &[],
        );
        let answer = call(&gw, cell.stream).await;
        let mut wrong = check(cell, &answer);
        if upstream.requests() != cell.attempts {
            wrong.push(format!(
                "{} upstream attempts, want {}",
                upstream.requests(),
                cell.attempts
            ));
        }
        if cell.circuit > 0 {
            // Still open: the next request does not reach the upstream at all.
            let again = call(&gw, cell.stream).await;
            wrong.extend(check(cell, &again));
            if upstream.requests() != cell.attempts {
                wrong.push(format!(
                    "open circuit let a request through ({} attempts)",
                    upstream.requests()
                ));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{kind} / {}: {}\n  body: {}",
                cell.fault,
                wrong.join("; "),
                answer.3
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cells failed:\n{}",
        failures.len(),
        CELLS.len(),
        failures.join("\n")
    );
}

#[actix_web::test]
async fn every_fault_through_openai() {
    run_matrix("openai").await;
}

#[actix_web::test]
async fn every_fault_through_azure_openai() {
    run_matrix("azure_openai").await;
}

/// The stub answers in OpenAI's shapes; what the cells check (retries, fallbacks, timeouts,
/// broken streams) does not depend on the body, and the Gemini adapter takes a body that is not
/// Google's as an opaque failure.
#[actix_web::test]
async fn every_fault_through_gemini() {
    run_matrix("gemini").await;
}

/// Bedrock streams are eventstream frames, not SSE: its stream cells run these scripts (the
/// same faults in ConverseStream's framing); the others (statuses, timeouts, broken bodies) do
/// not depend on the framing and run as they are.
#[actix_web::test]
async fn every_fault_through_bedrock() {
    run_matrix("bedrock").await;
}

mod eventstream {
    use super::Script;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;

    /// The eventstream script for a stream cell's fault, by the cell's name.
    pub fn script(fault: &str) -> Option<Script> {
        Some(match fault {
            "slow first byte" => silent,
            "error event before content" => error_first,
            "mid-stream error" => error_after_first,
            "dropped mid-stream" => drop_after_first,
            _ => return None,
        })
    }

    fn frame(kind: (&'static str, &'static str), payload: &str) -> Vec<u8> {
        let message_type = if kind.0 == ":exception-type" {
            "exception"
        } else {
            "event"
        };
        let headers = vec![
            Header::new(kind.0, HeaderValue::String(kind.1.into())),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            Header::new(":message-type", HeaderValue::String(message_type.into())),
        ];
        let mut out = Vec::new();
        write_message_to(
            &Message::new_from_parts(headers, payload.as_bytes().to_vec()),
            &mut out,
        )
        .expect("frame");
        out
    }

    fn head(conn: &mut TcpStream) {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
    }

    fn chunk(conn: &mut TcpStream, bytes: &[u8]) {
        let _ = conn.write_all(format!("{:x}\r\n", bytes.len()).as_bytes());
        let _ = conn.write_all(bytes);
        let _ = conn.write_all(b"\r\n");
    }

    /// `messageStart` and one text delta.
    fn start_and_first(conn: &mut TcpStream) {
        head(conn);
        let mut bytes = frame((":event-type", "messageStart"), r#"{"role":"assistant"}"#);
        bytes.extend(frame(
            (":event-type", "contentBlockDelta"),
            r#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        ));
        chunk(conn, &bytes);
    }

    fn exception() -> Vec<u8> {
        frame(
            (":exception-type", "modelStreamErrorException"),
            r#"{"message":"The model had an error."}"#,
        )
    }

    /// A 200 stream that sends nothing for 3 s, then ends.
    fn silent(conn: &mut TcpStream) {
        head(conn);
        std::thread::sleep(Duration::from_secs(3));
        let _ = conn.write_all(b"0\r\n\r\n");
    }

    /// `messageStart`, then an exception before any content.
    fn error_first(conn: &mut TcpStream) {
        head(conn);
        let mut bytes = frame((":event-type", "messageStart"), r#"{"role":"assistant"}"#);
        bytes.extend(exception());
        chunk(conn, &bytes);
        let _ = conn.write_all(b"0\r\n\r\n");
    }

    /// One content frame, then an exception frame, then the end.
    fn error_after_first(conn: &mut TcpStream) {
        start_and_first(conn);
        chunk(conn, &exception());
        let _ = conn.write_all(b"0\r\n\r\n");
    }

    /// One content frame, then the connection drops.
    fn drop_after_first(conn: &mut TcpStream) {
        start_and_first(conn);
        std::thread::sleep(Duration::from_millis(50));
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
}
