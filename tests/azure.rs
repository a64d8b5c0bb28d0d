//! The emulator's Azure OpenAI seen from a client: both URL styles, `api-version` rules, the
//! `api-key` / Entra / v1-Bearer credentials, the deployment → model version, content-filter
//! annotations and refusals (against `fixtures/azure/`), and every fault in Azure's format.

#[path = "common/client.rs"]
mod client;

use std::net::SocketAddr;
use std::time::Duration;

use client::*;
use serde_json::{Value, json};
use switchyard::emulator::{DEFAULT_AZURE_ENTRA_TOKEN, DEFAULT_AZURE_KEY};

const CLASSIC: &str = "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21";
const V1: &str = "/openai/v1/chat/completions";

async fn call(addr: SocketAddr, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("api-key", DEFAULT_AZURE_KEY)];
    all.extend_from_slice(headers);
    let bytes = serde_json::to_vec(body).expect("JSON");
    exchange(addr, "POST", path, None, &all, bytes).await
}

/// No `model`: the deployment in the URL names it.
fn body() -> Value {
    json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."}
    ]})
}

fn azure_error(reply: &Reply, status: u16, code: &str) -> Value {
    let error = reply.json_error(status);
    assert!(reply.header("apim-request-id").starts_with("req_"));
    assert_eq!(error["code"], code, "{error}");
    error
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).expect("fixture")
}

#[actix_web::test]
async fn classic_chat_has_azure_annotations() {
    let addr = start();
    let reply = call(addr, CLASSIC, &body(), &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("x-ms-region"), "East US");
    let got = reply.json();
    let want = fixture_json("azure/chat_completion.json");
    assert_same_keys("azure chat", &want, &got, &["service_tier"]);
    assert_eq!(got["model"], "gpt-4o-2024-11-20");
    assert_eq!(got["choices"][0]["message"]["content"], DEFAULT_TEXT);
    assert_eq!(got["prompt_filter_results"], want["prompt_filter_results"]);
    assert_eq!(
        got["choices"][0]["content_filter_results"],
        want["choices"][0]["content_filter_results"]
    );
}

#[actix_web::test]
async fn classic_stream_starts_with_the_filter_frame() {
    let addr = start();
    let mut request = body();
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let reply = call(addr, CLASSIC, &request, &[]).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    // Filter frame, role chunk, 12 text chunks, finish chunk, usage chunk, [DONE].
    assert_eq!(events.len(), 17);
    let want = parse_sse(fixture("azure/chat_completion_stream.sse").as_bytes());
    assert_eq!(
        events[0].json(),
        want[0].json(),
        "the filter frame as Azure sends it"
    );
    assert_same_keys(
        "role chunk",
        &want[1].json(),
        &events[1].json(),
        &["service_tier", "usage"],
    );
    assert_eq!(
        events[1].json()["choices"][0]["content_filter_results"],
        json!({})
    );
    let text: String = events[2..14]
        .iter()
        .map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(text, DEFAULT_TEXT);
    assert_eq!(
        events[2].json()["choices"][0]["content_filter_results"],
        want[2].json()["choices"][0]["content_filter_results"]
    );
    assert_eq!(events[14].json()["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        events[14].json()["choices"][0]["content_filter_results"],
        json!({})
    );
    assert_eq!(events[15].json()["choices"], json!([]));
    assert!(events[15].json()["usage"]["total_tokens"].is_u64());
    assert_eq!(events[16].data, "[DONE]");
    assert!(
        events[1..16]
            .iter()
            .all(|e| e.json()["model"] == "gpt-4o-2024-11-20")
    );
}

#[actix_web::test]
async fn api_versions_deployments_and_credentials() {
    let addr = start();
    let missing = "/openai/deployments/gpt-4o/chat/completions";
    let error = azure_error(&call(addr, missing, &body(), &[]).await, 404, "404");
    assert_eq!(error["message"], "Resource not found");
    let unknown = "/openai/deployments/gpt-4o/chat/completions?api-version=2023-01-01";
    let error = azure_error(&call(addr, unknown, &body(), &[]).await, 400, "BadRequest");
    assert_eq!(error["message"], "API version not supported");
    let dated_v1 = "/openai/v1/chat/completions?api-version=2024-10-21";
    azure_error(&call(addr, dated_v1, &body(), &[]).await, 400, "BadRequest");

    let nowhere = "/openai/deployments/llama/chat/completions?api-version=2024-10-21";
    azure_error(
        &call(addr, nowhere, &body(), &[]).await,
        404,
        "DeploymentNotFound",
    );

    // Credentials.
    let bytes = serde_json::to_vec(&body()).expect("JSON");
    let reply = exchange(addr, "POST", CLASSIC, None, &[], bytes.clone()).await;
    let error = azure_error(&reply, 401, "401");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Access denied due to missing subscription key.")
    );
    let reply = exchange(
        addr,
        "POST",
        CLASSIC,
        None,
        &[("api-key", "nope")],
        bytes.clone(),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json(), fixture_json("azure/error_invalid_key.json"));
    let entra = Some(format!("Bearer {DEFAULT_AZURE_ENTRA_TOKEN}"));
    let reply = exchange(addr, "POST", CLASSIC, entra, &[], bytes.clone()).await;
    assert_eq!(reply.status, 200);
    let key_bearer = Some(format!("Bearer {DEFAULT_AZURE_KEY}"));
    let reply = exchange(
        addr,
        "POST",
        CLASSIC,
        key_bearer.clone(),
        &[],
        bytes.clone(),
    )
    .await;
    let error = azure_error(&reply, 401, "401");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Unauthorized. Access token is missing")
    );

    // v1: the key as a Bearer token (the stock OpenAI client), `model` names the deployment.
    let mut v1_body = body();
    v1_body["model"] = json!("gpt-4o-mini");
    let v1_bytes = serde_json::to_vec(&v1_body).expect("JSON");
    let reply = exchange(addr, "POST", V1, key_bearer, &[], v1_bytes).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["model"], "gpt-4o-mini-2024-07-18");
    let reply = call(addr, V1, &body(), &[]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.error()["message"],
        "you must provide a model parameter"
    );
}

#[actix_web::test]
async fn responses_on_both_url_styles() {
    let addr = start();
    let request = json!({"model": "gpt-4.1", "input": "Say hello."});
    for path in [
        "/openai/responses?api-version=2025-04-01-preview",
        "/openai/v1/responses",
    ] {
        let reply = call(addr, path, &request, &[]).await;
        assert_eq!(
            reply.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let got = reply.json();
        assert_eq!(got["model"], "gpt-4.1-2025-04-14");
        assert_eq!(got["output"][0]["content"][0]["text"], DEFAULT_TEXT);
    }
    let path = "/openai/deployments/gpt-4.1/responses?api-version=2025-04-01-preview";
    let reply = call(addr, path, &json!({"input": "Say hello."}), &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let old = "/openai/responses?api-version=2024-10-21";
    let error = azure_error(&call(addr, old, &request, &[]).await, 400, "BadRequest");
    assert_eq!(
        error["message"],
        "Azure OpenAI Responses API is enabled only for api-version 2025-03-01-preview and later"
    );
}

#[actix_web::test]
async fn content_filters_refuse_and_cut() {
    let addr = start();
    let mut request = body();
    request["messages"][1]["content"] = json!("Say hello. [azure:content_filter]");
    let want = fixture_json("azure/error_content_filter.json");
    let reply = call(addr, CLASSIC, &request, &[]).await;
    azure_error(&reply, 400, "content_filter");
    assert_eq!(reply.json(), want);
    request["stream"] = json!(true);
    let reply = call(addr, CLASSIC, &request, &[]).await;
    azure_error(&reply, 400, "content_filter");
    assert_eq!(reply.json(), want, "a JSON 400 even for a stream");

    // The output filter: half the answer, then the verdict.
    let mut request = body();
    request["messages"][1]["content"] = json!("Say hello. [azure:content_filter_output]");
    let got = call(addr, CLASSIC, &request, &[]).await.json();
    let choice = &got["choices"][0];
    assert_eq!(choice["finish_reason"], "content_filter");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["content_filter_results"]["violence"],
        json!({"filtered": true, "severity": "medium"})
    );
    assert_eq!(got["usage"]["completion_tokens"], 6);

    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let events = call(addr, CLASSIC, &request, &[]).await.events();
    // Filter frame, role chunk, 6 text chunks, the verdict, [DONE]: no usage chunk.
    assert_eq!(events.len(), 10);
    let verdict = events[8].json();
    assert_eq!(verdict["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(
        verdict["choices"][0]["content_filter_results"]["violence"]["filtered"],
        true
    );
    assert_eq!(events[9].data, "[DONE]");
}

#[actix_web::test]
async fn faults_in_azure_shape() {
    let addr = start();
    let reply = call(
        addr,
        CLASSIC,
        &body(),
        &[("x-emulator-fault", "status=429,retry_after=33")],
    )
    .await;
    azure_error(&reply, 429, "429");
    assert_eq!(reply.header("retry-after"), "33");
    assert_eq!(reply.header("retry-after-ms"), "33000");
    let want = fixture_json("azure/error_rate_limit.json");
    let message = reply.error()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let want_message = want["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(message, format!("{want_message} (emulated fault)"));

    let reply = call(
        addr,
        CLASSIC,
        &body(),
        &[("x-emulator-fault", "status=503")],
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error()["type"], "server_error");

    let path = "/fault/status=429,times=2,key=az/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(addr, path, &body(), &[]).await.status);
    }
    assert_eq!(statuses, [429, 429, 200, 200]);

    // Mid-stream: the filter frame, the role chunk, three text chunks, an error event, no [DONE].
    let mut request = body();
    request["stream"] = json!(true);
    let reply = call(
        addr,
        CLASSIC,
        &request,
        &[("x-emulator-fault", "midstream_error=3")],
    )
    .await;
    let events = reply.events();
    assert_eq!(events.len(), 6);
    assert!(events[5].json()["error"].is_object());
    assert!(events.iter().all(|e| e.data != "[DONE]"));

    // Drop after two frames.
    let headers = [
        ("api-key", DEFAULT_AZURE_KEY),
        ("x-emulator-fault", "drop=2"),
    ];
    let raw = raw_exchange(
        addr,
        CLASSIC,
        &headers,
        serde_json::to_vec(&request).expect("JSON"),
    )
    .await;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(!raw.ends_with(b"\r\n0\r\n\r\n"));
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("data: ").count(), 2);

    // Timing and shape: latency before the headers, first byte and chunk delays in the stream,
    // the reply length.
    let reply = call(
        addr,
        CLASSIC,
        &body(),
        &[("x-emulator-fault", "latency_ms=150,tokens=4")],
    )
    .await;
    assert!(reply.headers_after >= Duration::from_millis(150));
    assert_eq!(reply.json()["usage"]["completion_tokens"], 4);
    let spec = [("x-emulator-fault", "first_byte_ms=100,chunk_ms=20,tokens=3")];
    let reply = call(addr, CLASSIC, &request, &spec).await;
    assert!(reply.headers_after < Duration::from_millis(100));
    // Filter frame, role, 3 words, finish, [DONE]: 100 ms, then 6 gaps of 20 ms.
    assert!(
        reply.body_after >= Duration::from_millis(220),
        "{:?}",
        reply.body_after
    );
    assert_eq!(reply.events().len(), 7);
}
