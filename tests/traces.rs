//! Trace export end to end: the real gateway exporting OTLP to a real receiver on loopback
//! (tests/otlp/receiver.py, on the official `opentelemetry-proto` bindings and `grpcio`).
//!
//! The receiver runs under `SWITCHYARD_TEST_PYTHON` (scripts/test points it at the test venv),
//! else `python3`; without its packages these tests fail, they do not skip.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const PROMPT: &str = "tell me about the secret-prompt-marker";

/// The OTLP receiver and the spans it has printed.
struct Receiver {
    child: Child,
    grpc: u16,
    http: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver() -> Receiver {
    receiver_on(0, 0)
}

/// A receiver on these ports (0: a free one), as a collector that restarted.
fn receiver_on(grpc: u16, http: u16) -> Receiver {
    let python = std::env::var("SWITCHYARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .arg(repo_path("tests/otlp/receiver.py"))
        .arg(format!("--grpc-port={grpc}"))
        .arg(format!("--http-port={http}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("the OTLP receiver did not start (are opentelemetry-proto and grpcio installed for {python}?)"));
    let port = |key: &str| -> u16 {
        first
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad receiver banner: {first}"))
    };
    let (grpc, http) = (port("grpc="), port("http="));
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    std::thread::spawn(move || {
        for line in lines {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Ok(mut s) = sink.lock()
            {
                s.push(v);
            }
        }
    });
    Receiver {
        child,
        grpc,
        http,
        spans,
    }
}

impl Receiver {
    /// The spans of `trace_id`, once `n` of them have arrived (`wait` at most).
    fn trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        self.trace_within(trace_id, n, Duration::from_secs(10))
    }

    fn trace_within(&self, trace_id: &str, n: usize, wait: Duration) -> Vec<Value> {
        let until = Instant::now() + wait;
        loop {
            let found: Vec<Value> = self
                .spans
                .lock()
                .map(|s| {
                    s.iter()
                        .filter(|v| v["trace_id"] == trace_id)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if found.len() >= n || Instant::now() > until {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let matching: Vec<&Value> = spans.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(matching.len(), 1, "one {name} span: {spans:#?}");
    matching[0]
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// Every attribute value of every span, as text.
fn all_values(spans: &[Value]) -> String {
    spans
        .iter()
        .map(|s| s["attributes"].to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The environment of a gateway whose tenant `a` calls `upstream` (an OpenAI `/v1` base) with
/// `key` and exports its spans with OTLP over `protocol` to `port` on loopback, on a 100 ms
/// timer; `extra` adds to it or overrides it (the last value of a variable wins).
fn exporting(
    key: &str,
    upstream: String,
    protocol: &str,
    port: u16,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("A_OPENAI_KEY", key.to_owned()),
        ("A_OPENAI_BASE_URL", upstream),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

#[actix_web::test]
async fn a_streamed_request_is_one_trace_in_the_callers_with_genai_attributes_over_grpc() {
    let rx = receiver();
    let emu = emulator();
    let mut gw = Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &exporting(
            EMULATOR_KEY,
            format!("{}/v1", emu.base),
            "grpc",
            rx.grpc,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-token=t0k3n"),
                // Nothing is exported on a timer during the test: the spans arrive only through
                // the flush at shutdown, which is what this also proves.
                ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ],
        ),
        &[],
    );
    let mut body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]});
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut res = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .insert_header(("x-request-id", "req-trace-1"))
        .insert_header(("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")))
        .send_body(body.to_string())
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    let traceparent = res
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut text = Vec::new();
    while let Some(chunk) = res.next().await {
        text.extend_from_slice(&chunk.expect("bytes"));
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let usage = events.last().expect("usage chunk")["usage"].clone();
    let response_model = events[0]["model"].as_str().expect("model").to_owned();

    // A second trace: the first attempt fails with a 503 and is retried.
    let retried_trace = "5c6ab1f0b3a84d2e9f1c7d3e2a1b0c9d";
    let retried = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .insert_header(("traceparent", format!("00-{retried_trace}-1111111111111111-01")))
        .send_body(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "[emulator:status=503,times=1,key=trace-retry] hi"}]})
                .to_string(),
        )
        .await
        .expect("request");
    assert_eq!(retried.status(), 200);

    std::thread::sleep(Duration::from_millis(200));
    assert!(
        rx.trace_within(CALLER_TRACE, 1, Duration::from_millis(300))
            .is_empty(),
        "exported before the flush"
    );
    gw.run.signal("TERM");
    assert_eq!(
        gw.run
            .wait_exit(Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );

    let spans = rx.trace(CALLER_TRACE, 4);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let request = named(&spans, "request");
    let routing = named(&spans, "routing");
    let upstream = named(&spans, "upstream");
    let stream = named(&spans, "stream");
    // Structure: the server span continues the caller's span; the rest are its children.
    assert_eq!(request["parent_span_id"], CALLER_SPAN);
    for child in [routing, upstream, stream] {
        assert_eq!(child["parent_span_id"], request["span_id"], "{child}");
    }
    assert_eq!(
        traceparent,
        format!(
            "00-{CALLER_TRACE}-{}-01",
            request["span_id"].as_str().unwrap_or("")
        ),
        "the client hears the server span"
    );
    assert_eq!(upstream["kind"], 3, "SPAN_KIND_CLIENT");
    assert_eq!(spans[0]["transport"], "grpc");
    assert_eq!(spans[0]["service"], "switchyard");
    assert!(
        spans[0]["headers"]
            .as_array()
            .is_some_and(|h| h.contains(&json!("x-collector-token"))),
        "{}",
        spans[0]["headers"]
    );
    // The stream span and the request span last to the last byte, after the upstream's headers.
    let end = |s: &Value| s["end"].as_u64().unwrap_or(0);
    assert!(
        end(request) >= end(stream) && end(stream) >= end(routing),
        "{spans:#?}"
    );

    let a = &request["attributes"];
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.provider.name"], "openai");
    assert_eq!(a["gen_ai.request.model"], "gpt-4o-mini");
    assert_eq!(a["gen_ai.response.model"], response_model.as_str());
    assert_eq!(a["gen_ai.usage.input_tokens"], usage["prompt_tokens"]);
    assert_eq!(a["gen_ai.usage.output_tokens"], usage["completion_tokens"]);
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["stop"]));
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["switchyard.retries"], 0);
    assert_eq!(a["switchyard.fallback"], false);
    assert_eq!(a["tenant"], "a");
    assert_eq!(a["proxy"], "chat");
    assert_eq!(a["route"], "mini");
    assert_eq!(a["request_id"], "req-trace-1");
    let u = &upstream["attributes"];
    assert_eq!(u["attempt"], 1);
    assert_eq!(u["provider"], "openai");
    assert_eq!(u["http.response.status_code"], 200);

    let values = all_values(&spans);
    for secret in [KEY_A, EMULATOR_KEY, "secret-prompt-marker"] {
        assert!(!values.contains(secret), "{secret} in a span: {values}");
    }

    // The retried request: two attempt spans under its server span, the first failed.
    let spans = rx.trace(retried_trace, 4);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let request = named(&spans, "request");
    let mut attempts: Vec<&Value> = spans.iter().filter(|s| s["name"] == "upstream").collect();
    attempts.sort_by_key(|s| s["attributes"]["attempt"].as_i64());
    assert_eq!(attempts.len(), 2);
    for (i, (status, otel_status)) in [(503, 2), (200, 0)].into_iter().enumerate() {
        let a = attempts[i];
        assert_eq!(a["parent_span_id"], request["span_id"]);
        assert_eq!(a["attributes"]["attempt"], i + 1);
        assert_eq!(a["attributes"]["http.response.status_code"], status);
        assert_eq!(
            a["status"], otel_status,
            "STATUS_CODE_ERROR only for the failed one"
        );
    }
    assert_eq!(request["attributes"]["switchyard.retries"], 1);
    assert_eq!(request["attributes"]["route"], "big");
}

/// An upstream that records the last request's head and answers a fixed chat completion, one
/// request per connection.
fn capturing_upstream() -> (String, Arc<Mutex<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let head = Arc::new(Mutex::new(String::new()));
    let seen = head.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                buf.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&buf).to_lowercase();
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = conn.read_exact(&mut body);
            if let Ok(mut h) = seen.lock() {
                *h = text;
            }
            let reply = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (base, head)
}

#[actix_web::test]
async fn http_protobuf_export_and_the_upstream_hears_its_attempt_span() {
    let rx = receiver();
    let (upstream_base, upstream_head) = capturing_upstream();
    let gw = Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &exporting(
            "sk-upstream-secret",
            upstream_base,
            "http/protobuf",
            rx.http,
            &[],
        ),
        &[],
    );
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .insert_header(("traceparent", format!("00-{trace}-b7ad6b7169203331-01")))
        .send_body(
            json!({"model": "smart", "messages": [{"role": "user", "content": PROMPT}]})
                .to_string(),
        )
        .await
        .expect("request")
        .body()
        .await
        .expect("body");
    assert!(String::from_utf8_lossy(&r).contains("chatcmpl-1"));

    let spans = rx.trace(trace, 3);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let request = named(&spans, "request");
    let upstream = named(&spans, "upstream");
    named(&spans, "routing");
    assert_eq!(spans[0]["transport"], "http");
    assert_eq!(request["parent_span_id"], "b7ad6b7169203331");
    assert_eq!(upstream["parent_span_id"], request["span_id"]);
    let head = upstream_head.lock().map(|h| h.clone()).unwrap_or_default();
    let sent = format!(
        "traceparent: 00-{trace}-{}-01",
        upstream["span_id"].as_str().unwrap_or("")
    );
    assert!(head.contains(&sent), "{sent} not in {head}");
    let a = &request["attributes"];
    assert_eq!(
        a["gen_ai.request.model"], "gpt-4o-2024-08-06",
        "the pinned target model"
    );
    assert_eq!(a["gen_ai.response.model"], "gpt-4o-2024-08-06");
    assert_eq!(a["gen_ai.usage.input_tokens"], 3);
    assert_eq!(a["gen_ai.usage.output_tokens"], 1);
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["length"]));
    assert_eq!(a["route"], "big");
    let values = all_values(&spans);
    for secret in [KEY_A, "sk-upstream-secret", "secret-prompt-marker"] {
        assert!(!values.contains(secret), "{secret} in a span: {values}");
    }
}

#[actix_web::test]
async fn a_dead_collector_costs_a_log_line_and_a_metric_not_a_request() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let emu = emulator();
    let log = tempfile::NamedTempFile::new().expect("log");
    let gw = Gateway::start_logging(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        // Exports a second apart: a request's three spans end within milliseconds of each
        // other, so they nearly always share a batch (at 100 ms a loaded machine split them).
        &exporting(
            EMULATOR_KEY,
            format!("{}/v1", emu.base),
            "grpc",
            dead,
            &[("OTEL_BSP_SCHEDULE_DELAY", "1000")],
        ),
        &[],
        Some(log.path()),
    );
    let started = Instant::now();
    chat_trace(&gw).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Three spans (request, routing, upstream) in one failed batch, exported within a second;
    // the scrape's own span is exported after this answer.
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    let text = gw.metrics().await;
    assert!(
        text.lines()
            .any(|l| l == "switchyard_trace_export_failures_total 3"),
        "{text}"
    );
    let logged = std::fs::read_to_string(log.path()).expect("log");
    assert_eq!(
        logged
            .lines()
            .filter(|l| l.contains("trace export failed"))
            .count(),
        1,
        "{logged}"
    );
}

/// Sends a chat request through `gw` (tenant `a`, model `gpt-4o`) and returns its trace id.
async fn chat_trace(gw: &Gateway) -> String {
    let mut r = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .send_body(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    r.body().await.expect("body");
    let traceparent = r
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    traceparent.split('-').nth(1).unwrap_or_default().to_owned()
}

#[actix_web::test]
async fn a_restarted_collector_gets_the_next_batch_on_a_new_connection() {
    for protocol in ["grpc", "http/protobuf"] {
        let rx = receiver();
        let (grpc, http) = (rx.grpc, rx.http);
        let port = if protocol == "grpc" { grpc } else { http };
        let emu = emulator();
        let gw = Gateway::start(
            &[("a", tenant_a("A_OPENAI_BASE_URL"))],
            &exporting(
                EMULATOR_KEY,
                format!("{}/v1", emu.base),
                protocol,
                port,
                &[],
            ),
            &[],
        );
        let before = chat_trace(&gw).await;
        assert_eq!(rx.trace(&before, 3).len(), 3, "{protocol}");
        // The collector restarts on the same ports: the connection the exporter holds is
        // closed while no batch is on its way.
        drop(rx);
        let rx = receiver_on(grpc, http);
        let after = chat_trace(&gw).await;
        // The first batch after the restart arrives: it is not lost on the closed connection.
        assert_eq!(rx.trace(&after, 3).len(), 3, "{protocol}");
        let text = gw.metrics().await;
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("switchyard_trace_export_failures_total"))
            .collect();
        assert_eq!(
            failures,
            ["switchyard_trace_export_failures_total 0"],
            "{protocol}"
        );
    }
}

/// Sends a chat request (with `traceparent` when given) through `gw` to the capturing upstream
/// and returns the `traceparent` the gateway answered with and the one the upstream heard.
async fn traced_call(
    gw: &Gateway,
    head: &Mutex<String>,
    request_id: &str,
    traceparent: Option<String>,
) -> (String, String) {
    let mut req = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .insert_header(("x-request-id", request_id));
    if let Some(tp) = traceparent {
        req = req.insert_header(("traceparent", tp));
    }
    let mut res = req
        .send_body(
            json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    let body = res.body().await.expect("body");
    assert!(String::from_utf8_lossy(&body).contains("chatcmpl-1"));
    let answered = res
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let heard = head
        .lock()
        .map(|h| h.clone())
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    (answered, heard)
}

/// Two callers' sampled traces.
const SAMPLED_A: &str = "6bf92f3577b34da6a3ce929d0e0e4738";
const SAMPLED_B: &str = "7bf92f3577b34da6a3ce929d0e0e4739";

/// Sends a request whose caller sampled trace `sampled` (its span `00f067aa0ba902b7`) and
/// checks it was followed: exactly its request, routing and upstream spans, the request span a
/// child of the caller's, the client answered with the request span and the upstream called
/// with the upstream span; and that the receiver holds no other span at all.
async fn followed_sampled_call(
    gw: &Gateway,
    rx: &Receiver,
    head: &Mutex<String>,
    request_id: &str,
    sampled: &str,
) {
    let traceparent =
        |span: &Value| format!("00-{sampled}-{}-01", span["span_id"].as_str().unwrap_or(""));
    let (answered, heard) = traced_call(
        gw,
        head,
        request_id,
        Some(format!("00-{sampled}-00f067aa0ba902b7-01")),
    )
    .await;
    let spans = rx.trace(sampled, 3);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let request = named(&spans, "request");
    let upstream = named(&spans, "upstream");
    named(&spans, "routing");
    assert_eq!(request["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(answered, traceparent(request));
    assert_eq!(heard, traceparent(upstream));
    let every = all_spans(rx);
    assert_eq!(every.len(), 3, "{every:#?}");
    assert!(every.iter().all(|s| s["trace_id"] == sampled), "{every:#?}");
}

/// Every span the receiver has, after waiting well past the export delay.
fn all_spans(rx: &Receiver) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(800));
    rx.spans.lock().map(|s| s.clone()).unwrap_or_default()
}

#[actix_web::test]
async fn an_unsampled_caller_exports_nothing_and_its_trace_goes_upstream_unsampled() {
    let rx = receiver();
    let (upstream_base, upstream_head) = capturing_upstream();
    let gw = Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &exporting("sk-upstream-secret", upstream_base, "grpc", rx.grpc, &[]),
        &[],
    );
    // The default sampler (parentbased_always_on) follows the caller's flags: 00 is not sampled.
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4737";
    let (answered, heard) = traced_call(
        &gw,
        &upstream_head,
        "req-unsampled",
        Some(format!("00-{unsampled}-00f067aa0ba902b7-00")),
    )
    .await;
    let prefix = format!("00-{unsampled}-");
    assert!(heard.starts_with(&prefix), "upstream heard {heard:?}");
    assert!(heard.ends_with("-00"), "upstream heard {heard:?}");
    assert_eq!(heard.len(), 55, "{heard:?}");
    assert!(
        !heard.contains("00f067aa0ba902b7"),
        "the gateway's own span id: {heard}"
    );
    assert_eq!(
        answered, heard,
        "the client and the upstream see the gateway's span"
    );

    // The unsampled request, served first, exported nothing: not its own trace, nor orphaned
    // child spans under new trace ids.
    followed_sampled_call(&gw, &rx, &upstream_head, "req-sampled", SAMPLED_A).await;
}

#[actix_web::test]
async fn ratio_zero_samples_no_trace_of_its_own_but_logs_and_propagates_it() {
    let rx = receiver();
    let (upstream_base, upstream_head) = capturing_upstream();
    let log = tempfile::NamedTempFile::new().expect("log");
    let gw = Gateway::start_logging(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &exporting(
            "sk-upstream-secret",
            upstream_base,
            "http/protobuf",
            rx.http,
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ],
        ),
        &[],
        Some(log.path()),
    );
    // A new trace: ratio 0 does not sample it, but it still has an id, sent upstream and back.
    let (answered, heard) = traced_call(&gw, &upstream_head, "req-ratio-zero", None).await;
    assert_eq!(heard.len(), 55, "{heard:?}");
    assert!(
        heard.starts_with("00-") && heard.ends_with("-00"),
        "{heard:?}"
    );
    assert_eq!(answered, heard);
    let trace = heard[3..35].to_owned();
    assert_ne!(trace, "0".repeat(32));

    // A sampled caller is followed (parent-based): exactly its three spans.
    followed_sampled_call(&gw, &rx, &upstream_head, "req-followed", SAMPLED_B).await;

    // The access log names both requests by their ids and trace ids.
    let logged = std::fs::read_to_string(log.path()).expect("log");
    let access = |id: &str| {
        logged
            .lines()
            .filter(|l| l.contains(" access") && l.contains(&format!("request_id={id} ")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let unsampled_lines = access("req-ratio-zero");
    assert_eq!(unsampled_lines.len(), 1, "{logged}");
    assert!(
        unsampled_lines[0].contains(&format!("trace_id={trace} ")),
        "{logged}"
    );
    let sampled_lines = access("req-followed");
    assert_eq!(sampled_lines.len(), 1, "{logged}");
    assert!(
        sampled_lines[0].contains(&format!("trace_id={SAMPLED_B} ")),
        "{logged}"
    );
}
