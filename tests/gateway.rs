//! The gateway end to end: the real binary in front of the real emulator, over loopback.
//!
//! Covers the data plane (chat and responses, streaming and not, models), routing headers and
//! model overrides, auth and tenant isolation, every error the gateway produces, upstream
//! errors and retries, and streams that break midway.

mod common;

use bytes::Bytes;
use common::http::*;
use common::*;
use serde_json::{Value, json};

#[actix_web::test]
async fn chat_non_streaming_applies_the_target_model_and_explains_the_route() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("openai/gpt-4o", "Hello"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["model"], "gpt-4o-2024-08-06",
        "the route's target model went upstream"
    );
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        body["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    assert_eq!(r.header("x-switchyard-route"), "big");
    assert_eq!(r.header("x-switchyard-provider"), "openai");
    assert_eq!(r.header("x-switchyard-model"), "gpt-4o-2024-08-06");
    assert_eq!(r.header("x-switchyard-routing"), "model");
    assert_eq!(r.header("x-switchyard-fallback"), "false");
    assert!(r.header("x-request-id").starts_with("req_"));
    assert_eq!(r.header("traceparent").len(), 55);
    assert!(!r.header("x-upstream-request-id").is_empty());

    // Aliases and bare names reach the same routes.
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("smart", "Hi"),
    )
    .await;
    assert_eq!(r.header("x-switchyard-route"), "big");
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o-mini", "Hi"),
    )
    .await;
    assert_eq!(
        (r.header("x-switchyard-route"), r.json()["model"].as_str()),
        ("mini", Some("gpt-4o-mini"))
    );
}

#[actix_web::test]
async fn chat_streaming_is_relayed_chunk_by_chunk_with_usage_and_done() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let mut body = chat("gpt-4o-mini", "Stream please");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(gw.url("/a/chat/v1/chat/completions"), Some(KEY_A), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").starts_with("text/event-stream"));
    assert_eq!(r.header("x-switchyard-route"), "mini");
    let data = sse_data(&r.text());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(chunks.len() >= 4, "{chunks:?}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert!(
        usage["completion_tokens"].as_u64().is_some_and(|n| n > 0),
        "{usage}"
    );
}

#[actix_web::test]
async fn responses_streaming_and_not() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let url = gw.url("/a/chat/v1/responses");
    let r = post(
        url.clone(),
        Some(KEY_A),
        json!({"model": "smart", "input": "Hello"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(
        (body["object"].as_str(), body["status"].as_str()),
        (Some("response"), Some("completed"))
    );
    assert_eq!(body["model"], "gpt-4o-2024-08-06");

    // previous_response_id passes through to the upstream that stored it.
    let id = body["id"].as_str().expect("id").to_owned();
    let r = post(
        url.clone(),
        Some(KEY_A),
        json!({"model": "smart", "input": "More", "previous_response_id": id}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = post(
        url,
        Some(KEY_A),
        json!({"model": "smart", "input": "Hello", "stream": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.lines().next()?.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"response.created"));
    assert_eq!(events.last(), Some(&"response.completed"));
    assert!(!text.contains("[DONE]"));
}

#[actix_web::test]
async fn models_lists_routes_and_aliases() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let r = send(
        client()
            .get(gw.url("/a/chat/v1/models"))
            .insert_header(("authorization", format!("Bearer {KEY_A}"))),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["openai/gpt-4o", "openai/gpt-4o-mini", "smart"]);
    assert_eq!(body["data"][0]["object"], "model");
}

#[actix_web::test]
async fn auth_never_reveals_whether_a_tenant_exists() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let body = chat("gpt-4o", "hi");
    let missing = post(gw.url("/a/chat/v1/chat/completions"), None, body.clone()).await;
    missing.assert_error(401, "missing_api_key");
    let wrong = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some("sk-wrong"),
        body.clone(),
    )
    .await;
    let wrong_body = wrong.assert_error(401, "invalid_api_key");
    let other_tenant = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_B),
        body.clone(),
    )
    .await;
    let unknown_tenant = post(
        gw.url("/nobody/chat/v1/chat/completions"),
        Some(KEY_A),
        body.clone(),
    )
    .await;
    for r in [&other_tenant, &unknown_tenant] {
        assert_eq!(r.status, 401);
        assert_eq!(r.json(), wrong_body, "same body as a wrong key");
    }
    // Tenant b's key works on tenant b.
    let ok = post(
        gw.url("/b/chat/v1/chat/completions"),
        Some(KEY_B),
        body.clone(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Known tenant, unknown proxy: the tenant is authenticated, so a 404 leaks nothing.
    post(gw.url("/a/nope/v1/chat/completions"), Some(KEY_A), body)
        .await
        .assert_error(404, "proxy_not_found");
}

#[actix_web::test]
async fn bad_requests_say_what_and_where() {
    let emu = emulator();
    let gw = gateway_for(&emu, &["--max-body-bytes", "2048"]);
    let url = gw.url("/a/chat/v1/chat/completions");
    let r = post_raw(
        url.clone(),
        Some(KEY_A),
        Bytes::from_static(b"{\"model\": \"gpt-4o\",\n \"messages\": [}"),
    )
    .await;
    r.assert_error(400, "invalid_json");
    assert!(r.error_message().contains("line 2 column"), "{}", r.text());

    let r = post(url.clone(), Some(KEY_A), json!({"model": "gpt-4o"})).await;
    assert_eq!(
        r.assert_error(400, "missing_required_parameter")["error"]["param"],
        "messages"
    );
    let r = post(
        url.clone(),
        Some(KEY_A),
        json!({"model": 4, "messages": []}),
    )
    .await;
    assert_eq!(
        r.assert_error(400, "invalid_type")["error"]["param"],
        "model"
    );

    let big = chat("gpt-4o", &"x".repeat(4096));
    post(url.clone(), Some(KEY_A), big)
        .await
        .assert_error(413, "request_too_large");

    let r = send(client().get(gw.url("/a/chat/v1/nothing")), None).await;
    r.assert_error(404, "unknown_url");
    let r = send(
        client()
            .get(url)
            .insert_header(("authorization", format!("Bearer {KEY_A}"))),
        None,
    )
    .await;
    r.assert_error(405, "method_not_allowed");
}

#[actix_web::test]
async fn unknown_models_use_the_fallback_or_list_what_is_served() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("anthropic/claude-x", "hi"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (
            r.header("x-switchyard-fallback"),
            r.header("x-switchyard-route")
        ),
        ("true", "mini")
    );
    assert_eq!(
        r.json()["model"],
        "gpt-4o-mini",
        "the fallback route's model is served"
    );

    let r = post(
        gw.url("/a/strict/v1/chat/completions"),
        Some(KEY_A),
        chat("claude-x", "hi"),
    )
    .await;
    let body = r.assert_error(400, "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("openai/gpt-4.1"),
        "{body}"
    );
}

#[actix_web::test]
async fn upstream_errors_keep_status_and_message_and_are_retried_when_transient() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let url = gw.url("/a/chat/v1/chat/completions");
    // A 400 from the provider passes through as it is.
    let mut body = chat("gpt-4o", "hi");
    body["not_a_param"] = json!(1);
    let r = post(url.clone(), Some(KEY_A), body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not_a_param"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.header("x-switchyard-route"),
        "big",
        "routing headers on errors too"
    );

    // One 503 then success: the gateway retries and the client sees 200.
    let key = format!("k{}", fastrand::u64(..));
    let r = post(
        url.clone(),
        Some(KEY_A),
        chat(
            "gpt-4o",
            &format!("[emulator:status=503,times=1,key={key}] hi"),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A 429 that lasts: after the retries the provider's 429 and hints reach the client.
    let r = post(
        url,
        Some(KEY_A),
        chat("gpt-4o", "[emulator:status=429,retry_after=0] hi"),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.header("retry-after"), "0");
}

#[actix_web::test]
async fn a_route_whose_upstream_keeps_failing_returns_the_providers_error_after_retries() {
    let emu = emulator();
    // A per-route fault: this provider's base URL carries the emulator's fault prefix.
    let gw = Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &[
            ("A_OPENAI_KEY", EMULATOR_KEY.into()),
            (
                "A_OPENAI_BASE_URL",
                format!("{}/fault/status=503/v1", emu.base),
            ),
        ],
        &[],
    );
    let started = std::time::Instant::now();
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "hi"),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["error"]["type"],
        "server_error",
        "the provider's own body"
    );
    // Two retries with backoff (at least 100 + 200 ms) happened before giving up.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn an_unreachable_upstream_is_a_502() {
    // Nothing listens on port 1: connections are refused.
    let gw = Gateway::start(
        &[("a", tenant_a("UNSET_BASE_URL"))],
        &[("A_OPENAI_KEY", EMULATOR_KEY.into())],
        &[],
    );
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "hi"),
    )
    .await;
    r.assert_error(502, "upstream_unavailable");
    assert!(r.error_message().contains("openai"), "{}", r.text());
    // The OS's words stay in the gateway's log.
    for detail in ["os error", "refused", "127.0.0.1"] {
        assert!(!r.text().contains(detail), "{detail} leaked: {}", r.text());
    }
}

#[actix_web::test]
async fn a_provider_refusing_the_gateways_key_is_a_502_that_quotes_no_key() {
    let emu = emulator();
    let key = "sk-wrong-upstream-key-1234567890";
    let gw = gateway_with(&emu, tenant_a("A_OPENAI_BASE_URL"), key);
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "hi"),
    )
    .await;
    r.assert_error(502, "upstream_credentials_rejected");
    for part in [&key[..8], &key[key.len() - 4..]] {
        assert!(!r.text().contains(part), "{part} leaked: {}", r.text());
    }
}

#[actix_web::test]
async fn a_body_cut_off_upstream_is_never_a_200() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "[emulator:drop=0] hi"),
    )
    .await;
    r.assert_error(502, "upstream_incomplete");

    // Cut off once: the provider produced (and billed) the answer, so it is not asked again.
    let key = format!("k{}", fastrand::u64(..));
    let text = format!("[emulator:drop=0,times=1,key={key}] hi");
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", &text),
    )
    .await;
    r.assert_error(502, "upstream_incomplete");
}

#[actix_web::test]
async fn broken_streams_end_with_an_error_event() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    for (fault, endpoint) in [
        ("drop=3", "chat/completions"),
        ("midstream_error=3", "chat/completions"),
        ("drop=3", "responses"),
    ] {
        let body = if endpoint == "responses" {
            json!({"model": "gpt-4o", "input": format!("[emulator:{fault}] hi"), "stream": true})
        } else {
            let mut b = chat("gpt-4o", &format!("[emulator:{fault}] hi"));
            b["stream"] = json!(true);
            b
        };
        let r = post(gw.url(&format!("/a/chat/v1/{endpoint}")), Some(KEY_A), body).await;
        assert_eq!(r.status, 200, "{fault} {endpoint}: {}", r.text());
        let text = r.text();
        assert!(
            text.ends_with("\n\n"),
            "{fault} {endpoint}: the last event is whole: {text:?}"
        );
        let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
        let data = last
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data line");
        let event: Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("{fault} {endpoint}: {e}: {data}"));
        if endpoint == "responses" {
            assert!(
                last.starts_with("event: error") || last.starts_with("event: response.failed"),
                "{last}"
            );
        } else {
            assert!(event["error"]["message"].is_string(), "{fault}: {event}");
        }
        assert!(
            !text.contains("[DONE]"),
            "{fault} {endpoint}: a broken stream must not look complete"
        );
    }
}

#[actix_web::test]
async fn the_timeout_bounds_silence_not_the_length_of_a_stream() {
    let emu = emulator();
    let tenant = tenant_a("A_OPENAI_BASE_URL")
        .replace("max_retries = 2", "max_retries = 2\ntimeout_secs = 1");
    let gw = gateway_with(&emu, tenant, EMULATOR_KEY);
    let url = gw.url("/a/chat/v1/chat/completions");
    // 30 chunks 100 ms apart: 3 s in all, never 1 s silent.
    let mut body = chat("gpt-4o", "[emulator:tokens=30,chunk_ms=100] hi");
    body["stream"] = json!(true);
    let r = post(url.clone(), Some(KEY_A), body).await;
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());

    // Headers, then 3 s without a first event: nothing has reached the client, so each
    // attempt times out after 1 s and is retried; then the client gets a 504.
    let mut body = chat("gpt-4o", "[emulator:first_byte_ms=3000] hi");
    body["stream"] = json!(true);
    let started = std::time::Instant::now();
    let r = post(url, Some(KEY_A), body).await;
    r.assert_error(504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(3) && took < std::time::Duration::from_millis(4500),
        "three attempts of 1 s and two backoff steps: {took:?}"
    );

    // One event, then 3 s of silence: cut after 1 s with an error event, never retried.
    let upstream = stub::stub(stub::stream_stalls_after_first);
    let tenant = tenant_a("A_OPENAI_BASE_URL")
        .replace("max_retries = 2", "max_retries = 2\ntimeout_secs = 1");
    let gw = gateway_at(&upstream.base, tenant, EMULATOR_KEY);
    let started = std::time::Instant::now();
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        streaming("gpt-4o"),
    )
    .await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(2500), "{took:?}");
    assert_eq!(r.status, 200);
    let events = sse_data(&r.text());
    assert_eq!(events.len(), 2, "{}", r.text());
    assert!(
        events[1].contains("the upstream sent no data for 1 s"),
        "{}",
        r.text()
    );
    assert_eq!(upstream.requests(), 1);
}

#[actix_web::test]
async fn request_ids_and_trace_context_carry_through() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let req = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .insert_header(("x-request-id", "my-request-1"))
        .insert_header((
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
    let r = send(req, Some(Bytes::from(chat("gpt-4o", "hi").to_string()))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), "my-request-1");
    assert!(
        r.header("traceparent")
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(
        !r.header("traceparent").contains("00f067aa0ba902b7"),
        "the gateway's own span id"
    );
}

#[actix_web::test]
async fn readiness_and_health() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    assert_eq!(
        send(client().get(gw.url("/healthz")), None).await.status,
        200
    );
    assert_eq!(
        send(client().get(gw.url("/readyz")), None).await.status,
        200
    );
}

#[actix_web::test]
async fn example_tenants_serve_against_the_bundled_emulator() {
    let root = repo_path("tenants");
    let mut cmd_args = vec!["--emulator"];
    cmd_args.push("127.0.0.1:0");
    let gw = {
        // Serve the repository's own example tenants, as the README's first command does.
        let tenants: Vec<(String, String)> = std::fs::read_dir(&root)
            .expect("tenants")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .map(|e| {
                let p = e.path();
                (
                    p.file_stem().expect("stem").to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).expect("read"),
                )
            })
            .collect();
        let refs: Vec<(&str, String)> = tenants
            .iter()
            .map(|(id, t)| (id.as_str(), t.clone()))
            .collect();
        Gateway::start(&refs, &[], &cmd_args)
    };
    let r = post(
        gw.url("/acme/assistant/v1/chat/completions"),
        Some("sk-acme-demo"),
        chat("smart", "Hello"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "gpt-4o-2024-08-06");
    let r = post(
        gw.url("/globex/chat/v1/chat/completions"),
        Some("sk-globex-demo"),
        chat("openai-eu/gpt-4o", "Hi"),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-switchyard-route")),
        (200, "eu")
    );
    // acme's Azure route: `--emulator` gave the Azure provider the emulator's Azure key.
    let r = post(
        gw.url("/acme/assistant/v1/chat/completions"),
        Some("sk-acme-demo"),
        chat("gpt-4.1", "Hi"),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-switchyard-route")),
        (200, "azure"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["model"], "gpt-4.1-2025-04-14");
}

// ---------------------------------------------------------------------------------------------
// Hardening: each test below failed on the gateway before the black-box review's fixes.
// ---------------------------------------------------------------------------------------------

/// Sends raw bytes to the gateway and returns its answer: one whole response (by its
/// `content-length`), or whatever came before it closed or `wait` passed.
fn raw_exchange(gw: &Gateway, parts: &[&[u8]], wait: std::time::Duration) -> String {
    use std::io::{Read, Write};
    let addr = gw.run.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    for part in parts {
        conn.write_all(part).expect("write");
    }
    conn.set_read_timeout(Some(wait)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| out.len() >= end + 4 + len) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(raw: &str) -> &str {
    raw.lines().next().unwrap_or("")
}

#[actix_web::test]
async fn bodies_a_full_parse_would_refuse_are_400s_on_rewriting_routes_too() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"model":"smart","messages":[{"role":"user","content":"hi"}],"metadata":{"a":1e400}}"#
            .to_vec(),
        format!(
            r#"{{"model":"smart","messages":[{{"role":"user","content":"hi"}}],"metadata":{deep}}}"#
        )
        .into_bytes(),
        b"{\"model\":\"smart\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}".to_vec(),
        br#"{"model":"smart","messages":[{"role":"user","content":"\ud800"}]}"#.to_vec(),
    ];
    // "smart" is an alias with a target model: the body is rewritten before going upstream.
    for body in bodies {
        let r = post_raw(
            gw.url("/a/chat/v1/chat/completions"),
            Some(KEY_A),
            Bytes::from(body),
        )
        .await;
        r.assert_error(400, "invalid_json");
        assert!(r.error_message().contains("line 1 column"), "{}", r.text());
    }
}

#[actix_web::test]
async fn a_stalled_body_gets_a_408_and_connections_per_address_are_capped() {
    let emu = emulator();
    let gw = gateway_for(
        &emu,
        &[
            "--body-timeout-secs",
            "1",
            "--max-connections-per-client",
            "3",
        ],
    );
    let head = format!(
        "POST /a/chat/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\n"
    );
    let wait = std::time::Duration::from_secs(5);
    for parts in [
        vec![format!("{head}content-length: 100\r\n\r\n{{").into_bytes()],
        vec![format!("{head}transfer-encoding: chunked\r\n\r\n1\r\n{{\r\n").into_bytes()],
    ] {
        let started = std::time::Instant::now();
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let answer = raw_exchange(&gw, &parts, wait);
        assert!(status_line(&answer).starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    }

    // Three idle connections from this address fill its quota: a fourth is refused and closed.
    let addr = gw.run.base.trim_start_matches("http://").to_owned();
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let models = format!(
        "GET /a/chat/v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\n\r\n"
    );
    let answer = raw_exchange(&gw, &[models.as_bytes()], wait);
    assert!(status_line(&answer).starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // Closing one frees its place.
    drop(idle);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r = send(
        client()
            .get(gw.url("/a/chat/v1/models"))
            .insert_header(("authorization", format!("Bearer {KEY_A}"))),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[actix_web::test]
async fn every_log_line_of_a_request_names_its_request_tenant_proxy_and_route() {
    let emu = emulator();
    for format in ["text", "json"] {
        let log = tempfile::NamedTempFile::new().expect("log");
        let gw = Gateway::start_logging(
            &[("a", tenant_a("A_OPENAI_BASE_URL"))],
            &[
                ("A_OPENAI_KEY", "sk-not-the-emulators-key".into()),
                ("A_OPENAI_BASE_URL", format!("{}/v1", emu.base)),
            ],
            &["--log-format", format],
            Some(log.path()),
        );
        let r = send(
            client()
                .post(gw.url("/a/chat/v1/chat/completions"))
                .insert_header(("authorization", format!("Bearer {KEY_A}")))
                .insert_header(("x-request-id", "req-log-test-1")),
            Some(Bytes::from(chat("gpt-4o", "hi").to_string())),
        )
        .await;
        r.assert_error(502, "upstream_credentials_rejected");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let text = std::fs::read_to_string(log.path()).expect("read log");
        // The provider actor's line, written while its call runs for the request.
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("credentials")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        let fields = [
            ("request_id", "req-log-test-1"),
            ("tenant", "a"),
            ("proxy", "chat"),
            ("route", "big"),
        ];
        if format == "text" {
            let scope = "request{request_id=req-log-test-1 tenant=a proxy=chat route=big}: ";
            assert!(lines[0].contains(scope), "{}", lines[0]);
        } else {
            let line: Value = serde_json::from_str(lines[0]).expect("one JSON object");
            for (name, value) in fields {
                assert_eq!(line[name], value, "{}", lines[0]);
            }
        }
        // A line written outside any request names none.
        let applied = text
            .lines()
            .find(|l| l.contains("configuration applied"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(!applied.contains("request"), "{applied}");
    }
}

#[actix_web::test]
async fn a_client_that_gives_up_cancels_the_upstream_call() {
    let upstream = stub::stub(stub::silent);
    let gw = gateway_at(&upstream.base, tenant_a("A_OPENAI_BASE_URL"), EMULATOR_KEY);
    let body = chat("gpt-4o", "hi").to_string();
    let request = format!(
        "POST /a/chat/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // The client waits 500 ms for an answer that does not come, then hangs up.
    let answer = raw_exchange(
        &gw,
        &[request.as_bytes()],
        std::time::Duration::from_millis(500),
    );
    assert_eq!(answer, "");
    let hung_up = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(upstream.requests(), 1);
    let closed = upstream.closed();
    assert_eq!(closed.len(), 1, "the upstream connection is still open");
    assert!(closed[0] - hung_up < std::time::Duration::from_secs(1));
}

#[actix_web::test]
async fn a_success_status_whose_body_breaks_is_one_attempt_and_one_502() {
    let upstream = stub::stub(stub::torn_200);
    let gw = gateway_at(&upstream.base, tenant_a("A_OPENAI_BASE_URL"), EMULATOR_KEY);
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "hi"),
    )
    .await;
    r.assert_error(502, "upstream_incomplete");
    assert_eq!(
        upstream.requests(),
        1,
        "max_retries = 2, yet no retry after a 200"
    );
    // The provider generated (and billed) that answer: one ledger row, at an estimate.
    let mut usage = Value::Null;
    for _ in 0..100 {
        let r = get(gw.url("/a/usage"), KEY_A).await;
        assert_eq!(r.status, 200, "{}", r.text());
        usage = r.json()["data"][0].clone();
        if usage["requests"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(usage["requests"], 1, "{usage}");
    assert_eq!(usage["estimated_requests"], 1, "{usage}");
    assert_eq!(usage["output_tokens"], 0, "{usage}");
    assert!(
        usage["input_tokens"].as_u64().is_some_and(|n| n > 0),
        "{usage}"
    );
}

#[actix_web::test]
async fn http_details_duplicate_auth_encodings_allow_and_missing_model() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let body = chat("gpt-4o", "hi").to_string();
    // Two Authorization headers: refused, whichever is right.
    let request = format!(
        "POST /a/chat/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\nauthorization: Bearer wrong\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(
        &gw,
        &[request.as_bytes()],
        std::time::Duration::from_secs(5),
    );
    assert!(status_line(&answer).starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("duplicate_authorization_header"),
        "{answer}"
    );

    // A compressed body is refused, not parsed as if it were JSON.
    let r = send(
        client()
            .post(gw.url("/a/chat/v1/chat/completions"))
            .insert_header(("authorization", format!("Bearer {KEY_A}")))
            .insert_header(("content-encoding", "gzip")),
        Some(Bytes::from(body.clone())),
    )
    .await;
    r.assert_error(415, "unsupported_content_encoding");

    // 405 says what is allowed.
    let r = send(
        client()
            .get(gw.url("/a/chat/v1/chat/completions"))
            .insert_header(("authorization", format!("Bearer {KEY_A}"))),
        None,
    )
    .await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), "POST");

    // No model on a proxy with a fallback: a 400, not a silent pick of the fallback.
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let e = r.assert_error(400, "missing_required_parameter");
    assert_eq!(e["error"]["param"], "model");
}

#[actix_web::test]
async fn expect_continue_is_answered_after_the_key_and_size_checks() {
    let emu = emulator();
    let gw = gateway_for(&emu, &["--max-body-bytes", "1000"]);
    let wait = std::time::Duration::from_secs(5);
    let head = |key: &str, len: usize| {
        format!(
            "POST /a/chat/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nexpect: 100-continue\r\n\r\n"
        )
    };
    // A wrong key or an oversized body: the refusal comes instead of "100 Continue".
    for (key, len, status) in [("wrong", 10, "401"), (KEY_A, 5000, "413")] {
        let answer = raw_exchange(&gw, &[head(key, len).as_bytes()], wait);
        assert!(
            status_line(&answer).starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(!answer.contains("100 Continue"), "{answer}");
    }
    // A good request hears "100 Continue", sends its body and is served.
    use std::io::{Read, Write};
    let body = chat("gpt-4o", "hi").to_string();
    let addr = gw.run.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(wait)).expect("timeout");
    conn.write_all(head(KEY_A, body.len()).as_bytes())
        .expect("head");
    let mut buf = [0u8; 25];
    conn.read_exact(&mut buf).expect("continue");
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(body.as_bytes()).expect("body");
    let mut first = [0u8; 12];
    conn.read_exact(&mut first).expect("answer");
    assert_eq!(&first, b"HTTP/1.1 200");
}

#[actix_web::test]
async fn errors_quote_client_input_clipped() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let huge = "x".repeat(1_000_000);
    let r = post(
        gw.url("/a/strict/v1/chat/completions"),
        Some(KEY_A),
        chat(&huge, "hi"),
    )
    .await;
    r.assert_error(400, "model_not_found");
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    let long_proxy = "p".repeat(60_000);
    let r = send(
        client()
            .get(gw.url(&format!("/a/{long_proxy}/v1/models")))
            .insert_header(("authorization", format!("Bearer {KEY_A}"))),
        None,
    )
    .await;
    r.assert_error(404, "proxy_not_found");
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
}

#[actix_web::test]
async fn upstream_messages_reach_the_client_without_the_operators_account_ids() {
    let emu = emulator();
    let gw = gateway_for(&emu, &[]);
    let r = post(
        gw.url("/a/strict/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4.1", "[emulator:status=429,retry_after=0] hi"),
    )
    .await;
    let body = r.assert_error(429, "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(!r.text().contains("org-emulator"), "{}", r.text());
    assert!(
        message.contains("in organization [redacted] on requests"),
        "{message}"
    );
    assert_eq!(r.header("retry-after"), "0");
}

#[actix_web::test]
async fn response_ids_are_scoped_to_the_tenant() {
    let emu = emulator();
    // Tenants a and b share one upstream account.
    let gw = gateway_for(&emu, &[]);
    let create = |url: String, key: &'static str, previous: Option<String>, stream: bool| {
        let mut body = json!({"model": "gpt-4o", "input": "hi", "stream": stream});
        if let Some(p) = previous {
            body["previous_response_id"] = json!(p);
        }
        post(url, Some(key), body)
    };
    let url_a = gw.url("/a/chat/v1/responses");
    let url_b = gw.url("/b/chat/v1/responses");
    let first = create(url_a.clone(), KEY_A, None, false).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap_or("").to_owned();
    let (upstream_id, tag) = id.rsplit_once("_sy").expect("tagged id");
    assert!(upstream_id.starts_with("resp_"), "{id}");
    assert_eq!(tag.len(), 16, "{id}");

    // Tenant a continues its own conversation, streaming: every id it sees is tagged.
    let next = create(url_a.clone(), KEY_A, Some(id.clone()), true).await;
    assert_eq!(next.status, 200, "{}", next.text());
    let events: Vec<Value> = sse_data(&next.text())
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["response"]["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "created, in_progress, completed: {events:?}");
    assert!(
        ids.iter().all(|i| *i == ids[0] && i.contains("_sy")),
        "{ids:?}"
    );
    assert_eq!(events[0]["response"]["previous_response_id"], id.as_str());

    // Tenant b can use neither the tagged id nor the upstream id under it.
    for stolen in [id.clone(), upstream_id.to_owned()] {
        let r = create(url_b.clone(), KEY_B, Some(stolen), false).await;
        let e = r.assert_error(400, "previous_response_not_found");
        assert_eq!(e["error"]["param"], "previous_response_id");
    }

    // GET is forwarded to the account the id belongs to, ids rewritten as on creation;
    // another tenant's GET of the same id (or of the bare upstream id) finds nothing.
    let get = |url: String, key: &'static str| send(client().get(url).bearer_auth(key), None);
    let got = get(gw.url(&format!("/a/chat/v1/responses/{id}")), KEY_A).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["id"], id.as_str());
    assert_eq!(got.json()["output"], first.json()["output"]);
    for stolen in [id.clone(), upstream_id.to_owned()] {
        let r = get(gw.url(&format!("/b/chat/v1/responses/{stolen}")), KEY_B).await;
        r.assert_error(404, "response_not_found");
    }
}

// ---------------------------------------------------------------------------------------------
// Failover: fallback chains, circuit breaking, errors inside a 200 stream, per-route timeouts.
// ---------------------------------------------------------------------------------------------

/// Tenant "a" whose route `big` is served by the stub `flaky` and falls back to `mini` on the
/// emulator; `route_extra` and `provider_extra` are added to `big` and to `flaky`.
fn failover_tenant(route_extra: &str, provider_extra: &str) -> String {
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.flaky]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url_env = "FLAKY_BASE_URL"
max_retries = 1
{provider_extra}

[providers.backup]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url_env = "A_OPENAI_BASE_URL"

[proxies.chat]
[[proxies.chat.routes]]
name = "big"
provider = "flaky"
model = "gpt-4o"
fallbacks = ["mini"]
{route_extra}
[[proxies.chat.routes]]
name = "mini"
provider = "backup"
model = "gpt-4o-mini"
"#
    )
}

fn failover_gateway(
    emu: &Running,
    upstream: &stub::Stub,
    route_extra: &str,
    provider_extra: &str,
) -> Gateway {
    Gateway::start(
        &[("a", failover_tenant(route_extra, provider_extra))],
        &[
            ("A_OPENAI_KEY", EMULATOR_KEY.into()),
            ("A_OPENAI_BASE_URL", format!("{}/v1", emu.base)),
            ("FLAKY_BASE_URL", upstream.base.clone()),
        ],
        &[],
    )
}

fn streaming(model: &str) -> Value {
    let mut body = chat(model, "hi");
    body["stream"] = json!(true);
    body
}

#[actix_web::test]
async fn a_failing_route_falls_back_after_its_retries_and_says_why() {
    let emu = emulator();
    let upstream = stub::stub(stub::status_503);
    let gw = failover_gateway(&emu, &upstream, "", "");
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "hi"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.requests(), 2, "one try and max_retries = 1");
    assert_eq!(r.header("x-switchyard-route"), "mini");
    assert_eq!(r.header("x-switchyard-provider"), "backup");
    assert_eq!(r.header("x-switchyard-fallback"), "true");
    assert_eq!(r.header("x-switchyard-fallback-reason"), "5xx");
    assert_eq!(r.json()["model"], "gpt-4o-mini");
}

#[actix_web::test]
async fn fallback_on_limits_which_failures_move_on() {
    let emu = emulator();
    let upstream = stub::stub(stub::status_429);
    let gw = failover_gateway(&emu, &upstream, r#"fallback_on = ["5xx"]"#, "");
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "hi"),
    )
    .await;
    r.assert_error(429, "rate_limit_exceeded");
    assert_eq!(upstream.requests(), 2);
    assert_eq!(r.header("x-switchyard-route"), "big");
    assert_eq!(r.header("x-switchyard-fallback"), "false");
    assert_eq!(r.header("x-switchyard-fallback-reason"), "");
}

#[actix_web::test]
async fn an_open_circuit_skips_the_endpoint_until_its_probe() {
    let emu = emulator();
    let upstream = stub::stub(stub::status_503);
    let gw = failover_gateway(
        &emu,
        &upstream,
        "",
        "circuit_failures = 3\ncircuit_open_secs = 2",
    );
    let url = gw.url("/a/chat/v1/chat/completions");
    // Request 1: two failed attempts; request 2: the third opens the circuit after one.
    for (expected_requests, reason) in [(2, "5xx"), (3, "circuit_open")] {
        let r = post(url.clone(), Some(KEY_A), chat("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(upstream.requests(), expected_requests);
        assert_eq!(r.header("x-switchyard-fallback-reason"), reason);
    }
    // Open: the endpoint is not called at all.
    let r = post(url.clone(), Some(KEY_A), chat("gpt-4o", "hi")).await;
    assert_eq!(r.header("x-switchyard-fallback-reason"), "circuit_open");
    assert_eq!(upstream.requests(), 3);
    // After the wait, one probe goes through; it fails, so the circuit opens again at once.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = post(url.clone(), Some(KEY_A), chat("gpt-4o", "hi")).await;
    assert_eq!(r.header("x-switchyard-route"), "mini");
    assert_eq!(upstream.requests(), 4);
    let r = post(url, Some(KEY_A), chat("gpt-4o", "hi")).await;
    assert_eq!(r.header("x-switchyard-fallback-reason"), "circuit_open");
    assert_eq!(upstream.requests(), 4);
}

#[actix_web::test]
async fn an_error_event_opening_a_200_stream_is_retried_and_falls_back() {
    let emu = emulator();
    let upstream = stub::stub(stub::stream_error_first);
    let gw = failover_gateway(&emu, &upstream, "", "");
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        streaming("gpt-4o"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.requests(), 2);
    assert_eq!(r.header("x-switchyard-fallback-reason"), "stream_error");
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    assert!(!r.text().contains("overloaded"), "{}", r.text());

    // Without a fallback the client gets a 502 carrying the provider's (sanitised) message.
    let gw = failover_gateway(&emu, &upstream, r#"fallback_on = ["5xx"]"#, "");
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        streaming("gpt-4o"),
    )
    .await;
    let e = r.assert_error(502, "upstream_stream_error");
    let message = e["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("The server is overloaded ([redacted])."),
        "{message}"
    );
    assert_eq!(upstream.requests(), 4);
}

#[actix_web::test]
async fn a_stream_without_a_first_event_in_time_times_out_and_falls_back() {
    let emu = emulator();
    let upstream = stub::stub(stub::stream_silent);
    let gw = failover_gateway(&emu, &upstream, "first_byte_timeout_secs = 1", "");
    let started = std::time::Instant::now();
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        streaming("gpt-4o"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-fallback-reason"), "timeout");
    assert_eq!(upstream.requests(), 2);
    let took = started.elapsed();
    // Two attempts of 1 s each plus one backoff step (100–200 ms), not the stub's 3 s.
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_millis(2900),
        "{took:?}"
    );
}

/// Tenant "a" with Azure OpenAI only: `classic` on deployment URLs with an `api-key`, `v1` on
/// the `/openai/v1` API with a Microsoft Entra token; both pointed at `emulator`.
fn azure_gateway(emu: &Running) -> Gateway {
    let tenant = format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.azure]
type = "azure_openai"
endpoint = "https://example-resource.openai.azure.com"
base_url_env = "AZ_ENDPOINT"
api_version = "2025-03-01-preview"
api_key_env = "AZ_KEY"
max_retries = 2

[providers.azurev1]
type = "azure_openai"
base_url = "https://example-resource.openai.azure.com/openai/v1"
base_url_env = "AZ_V1_BASE_URL"
bearer_token_env = "AZ_TOKEN"

[proxies.az]
[[proxies.az.routes]]
name = "classic"
provider = "azure"
model = "gpt-4o"
target_model = "gpt-4o-prod"
[[proxies.az.routes]]
name = "v1"
provider = "azurev1"
model = "gpt-4.1"
"#
    );
    Gateway::start(
        &[("a", tenant)],
        &[
            ("AZ_ENDPOINT", emu.base.clone()),
            ("AZ_V1_BASE_URL", format!("{}/openai/v1", emu.base)),
            ("AZ_KEY", switchyard::emulator::DEFAULT_AZURE_KEY.into()),
            (
                "AZ_TOKEN",
                switchyard::emulator::DEFAULT_AZURE_ENTRA_TOKEN.into(),
            ),
        ],
        &[],
    )
}

/// The chunks of a chat stream (without `[DONE]`), after checking it ends with `[DONE]`.
fn chat_chunks(text: &str) -> Vec<Value> {
    let data = sse_data(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect()
}

#[actix_web::test]
async fn azure_chat_on_deployment_and_v1_urls_streaming_and_not() {
    let emu = emulator();
    let gw = azure_gateway(&emu);
    let url = gw.url("/a/az/v1/chat/completions");
    for (model, route, version) in [
        ("gpt-4o", "classic", "gpt-4o-2024-11-20"),
        ("gpt-4.1", "v1", "gpt-4.1-2025-04-14"),
    ] {
        let r = post(url.clone(), Some(KEY_A), chat(model, "Hello")).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert_eq!(r.header("x-switchyard-route"), route);
        let body = r.json();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], version, "the deployment's model version");
        assert!(body["choices"][0]["message"]["content"].is_string());
        assert!(
            r.header("x-upstream-request-id").len() > 8,
            "Azure's apim-request-id relayed"
        );

        let mut streamed = chat(model, "Stream please");
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let r = post(url.clone(), Some(KEY_A), streamed).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let chunks = chat_chunks(&r.text());
        assert!(chunks.len() >= 3, "{chunks:?}");
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk", "{c}");
            assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()), "{c}");
            assert!(c.get("prompt_filter_results").is_none(), "{c}");
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"]["role"], "assistant",
            "the stream opens with the assistant's first chunk"
        );
        assert!(chunks.last().expect("usage")["usage"]["total_tokens"].as_u64() > Some(0));
    }
}

#[actix_web::test]
async fn the_emulated_azure_stream_opens_with_the_filter_frame_the_gateway_drops() {
    // The same request straight to the emulator: its first chunk is the filter frame, so the
    // test above proves the gateway dropped it, and exactly it.
    let emu = emulator();
    let direct = client()
        .post(format!(
            "{}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2025-03-01-preview",
            emu.base
        ))
        .insert_header(("api-key", switchyard::emulator::DEFAULT_AZURE_KEY))
        .insert_header(("content-type", "application/json"));
    let mut body = chat("gpt-4o", "Stream please");
    body["stream"] = json!(true);
    let direct = send(direct, Some(Bytes::from(body.to_string()))).await;
    assert_eq!(direct.status, 200, "{}", direct.text());
    let upstream = chat_chunks(&direct.text());
    assert_eq!(upstream[0]["id"], "");
    assert_eq!(upstream[0]["choices"], json!([]));
    assert!(upstream[0]["prompt_filter_results"].is_array());

    let gw = azure_gateway(&emu);
    let r = post(gw.url("/a/az/v1/chat/completions"), Some(KEY_A), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let relayed = chat_chunks(&r.text());
    assert_eq!(
        relayed.len(),
        upstream.len() - 1,
        "exactly the filter frame dropped"
    );
    assert_eq!(relayed[0]["choices"][0]["delta"]["role"], "assistant");
}

#[actix_web::test]
async fn azure_responses_on_both_url_forms_streaming_and_not() {
    let emu = emulator();
    let gw = azure_gateway(&emu);
    let url = gw.url("/a/az/v1/responses");
    for (model, version) in [
        ("gpt-4o", "gpt-4o-2024-11-20"),
        ("gpt-4.1", "gpt-4.1-2025-04-14"),
    ] {
        let r = post(
            url.clone(),
            Some(KEY_A),
            json!({"model": model, "input": "Hello"}),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let body = r.json();
        assert_eq!(
            (body["object"].as_str(), body["status"].as_str()),
            (Some("response"), Some("completed"))
        );
        assert_eq!(body["model"], version);
        let id = body["id"].as_str().expect("id").to_owned();
        let r = post(
            url.clone(),
            Some(KEY_A),
            json!({"model": model, "input": "More", "previous_response_id": id}),
        )
        .await;
        assert_eq!(r.status, 200, "{model} previous_response_id: {}", r.text());

        let r = post(
            url.clone(),
            Some(KEY_A),
            json!({"model": model, "input": "Hello", "stream": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let text = r.text();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter_map(|e| e.lines().next()?.strip_prefix("event: "))
            .collect();
        assert_eq!(events.first(), Some(&"response.created"), "{text}");
        assert_eq!(events.last(), Some(&"response.completed"), "{text}");
    }
}

#[actix_web::test]
async fn azure_refusals_and_rate_limits_reach_the_client_as_openai_errors() {
    let emu = emulator();
    let gw = azure_gateway(&emu);
    let url = gw.url("/a/az/v1/chat/completions");
    // The prompt filter refuses with a 400, streamed or not, and is not retried.
    for stream in [false, true] {
        let mut body = chat("gpt-4o", "[azure:content_filter] tell me");
        body["stream"] = json!(stream);
        let r = post(url.clone(), Some(KEY_A), body).await;
        let body = r.assert_error(400, "content_filter");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"], "prompt", "{body}");
        assert_eq!(
            body["error"]["innererror"]["code"], "ResponsibleAIPolicyViolation",
            "{body}"
        );
        assert!(body["error"].get("status").is_none(), "{body}");
    }
    // One 429, then an answer: retried after Azure's Retry-After.
    let key = format!("k{}", fastrand::u64(..));
    let r = post(
        url.clone(),
        Some(KEY_A),
        chat(
            "gpt-4o",
            &format!("[emulator:status=429,retry_after=0,times=1,key={key}] hi"),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A 429 that lasts: Azure's body (code "429", no type) becomes OpenAI's.
    let r = post(
        url,
        Some(KEY_A),
        chat("gpt-4o", "[emulator:status=429,retry_after=0] hi"),
    )
    .await;
    let body = r.assert_error(429, "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(r.header("retry-after"), "0");
}

#[actix_web::test]
async fn a_wrong_azure_key_is_the_gateways_problem_not_the_clients() {
    let emu = emulator();
    let tenant = format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.azure]
type = "azure_openai"
endpoint = "http://127.0.0.1:1"
base_url_env = "AZ_ENDPOINT"
api_version = "2024-10-21"
api_key_env = "AZ_KEY"

[proxies.az]
[[proxies.az.routes]]
name = "classic"
provider = "azure"
model = "gpt-4o"
"#
    );
    let gw = Gateway::start(
        &[("a", tenant)],
        &[
            ("AZ_ENDPOINT", emu.base.clone()),
            ("AZ_KEY", "not-the-azure-key".into()),
        ],
        &[],
    );
    let r = post(
        gw.url("/a/az/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o", "hi"),
    )
    .await;
    r.assert_error(502, "upstream_credentials_rejected");
    assert!(!r.text().contains("not-the-azure-key"), "{}", r.text());
}
