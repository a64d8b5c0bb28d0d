//! Gemini through the real gateway: the binary in front of the emulator's Gemini routes, over
//! loopback. Chat and Responses, streamed and not, are translated to `generateContent` /
//! `streamGenerateContent?alt=sse` and back; a tool round trip carries Gemini's thought
//! signature out to the client and back in; a refused key, Google's error bodies and 429s with
//! a `RetryInfo` hint come out as the OpenAI errors and retries the front promises, with exact
//! upstream attempt counts read from `/metrics`.

mod common;

use common::http::*;
use common::*;
use serde_json::{Value, json};

/// What every `thoughtSignature` the emulator emits is (`emulator::gemini`).
const SIGNATURE: &str = "c3dpdGNoeWFyZC1lbXVsYXRvci1zaWduYXR1cmU=";
/// The emulator's canned answer (12 words, one output token each).
const CANNED: &str = "Hello from the Switchyard emulator. This is filler text for load tests.";

/// Tenant "a": provider `gem` (Gemini) with `max_retries`, proxy `chat` with a Gemini 2.5 route
/// (`flash`), a Gemini 3 route (`pro`, which thinks and signs its calls) and a route whose model
/// Gemini does not know (`ghost`).
fn tenant(max_retries: u32) -> String {
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.gem]
type = "gemini"
api_key_env = "G_KEY"
base_url_env = "G_BASE_URL"
max_retries = {max_retries}

[proxies.chat]
[[proxies.chat.routes]]
name = "flash"
provider = "gem"
model = "gemini-2.5-flash"
[[proxies.chat.routes]]
name = "pro"
provider = "gem"
model = "gemini-3-pro-preview"
[[proxies.chat.routes]]
name = "ghost"
provider = "gem"
model = "ghost-model"
"#
    )
}

/// A gateway whose Gemini provider is at `base_url` with `key`.
fn gateway(base_url: String, key: &str, max_retries: u32) -> Gateway {
    Gateway::start(
        &[("a", tenant(max_retries))],
        &[("G_KEY", key.to_owned()), ("G_BASE_URL", base_url)],
        &[],
    )
}

fn good_gateway(emu: &Running) -> Gateway {
    gateway(
        emu.base.clone(),
        switchyard::emulator::DEFAULT_GEMINI_KEY,
        2,
    )
}

async fn chat_call(gw: &Gateway, body: Value) -> Reply {
    post(gw.url("/a/chat/v1/chat/completions"), Some(KEY_A), body).await
}

async fn responses_call(gw: &Gateway, body: Value) -> Reply {
    post(gw.url("/a/chat/v1/responses"), Some(KEY_A), body).await
}

/// `switchyard_upstream_attempts_total` for provider `gem`, by status and outcome.
async fn attempts(gw: &Gateway, status: u16, outcome: &str) -> u64 {
    let want = format!(
        "switchyard_upstream_attempts_total{{provider=\"gem\",status=\"{status}\",outcome=\"{outcome}\"}} "
    );
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap_or(0))
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": false}}})
}

#[actix_web::test]
async fn chat_is_translated_both_ways_with_gemini_usage() {
    let emu = emulator();
    let gw = good_gateway(&emu);
    let r = chat_call(&gw, chat("gemini-2.5-flash", "Hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-provider"), "gem");
    assert_eq!(r.header("x-switchyard-route"), "flash");
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gemini-2.5-flash", "Gemini's modelVersion");
    assert_eq!(body["choices"][0]["message"]["content"], CANNED);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(prompt > 0);
    assert_eq!(usage["total_tokens"], prompt + 12);

    // Gemini 3 thinks: its thoughts are output tokens and reasoning tokens.
    let r = chat_call(&gw, chat("gemini-3-pro-preview", "Hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = &r.json()["usage"];
    assert_eq!(usage["completion_tokens"], 12 + 6);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 6);

    // reasoning_effort turns thinking on for Gemini 2.5 (a budget, with thought summaries):
    // the summary is reasoning, not content.
    let mut thinking = chat("gemini-2.5-flash", "Hello");
    thinking["reasoning_effort"] = json!("high");
    let r = chat_call(&gw, thinking).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], CANNED);
    assert_eq!(
        message["reasoning_content"],
        "Thinking about the canned answer."
    );
    assert_eq!(body["usage"]["completion_tokens"], 12 + 6);
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        6
    );

    // max_tokens cuts the answer: MAX_TOKENS is `length`.
    let mut short = chat("gemini-2.5-flash", "Hello");
    short["max_tokens"] = json!(3);
    let r = chat_call(&gw, short).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from the");
}

#[actix_web::test]
async fn chat_streams_chunk_by_chunk_with_usage_and_done() {
    let emu = emulator();
    let gw = good_gateway(&emu);
    let mut body = chat("gemini-2.5-flash", "Hello");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = chat_call(&gw, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type").starts_with("text/event-stream"),
        "{}",
        r.header("content-type")
    );
    let data = sse_data(&r.text());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, CANNED);
    // One chunk per upstream word: the stream was relayed as it came, not folded.
    let deltas = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(deltas, 12);
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert!(chunks.iter().all(|c| c["model"] == "gemini-2.5-flash"));
}

#[actix_web::test]
async fn responses_are_translated_streamed_and_not() {
    let emu = emulator();
    let gw = good_gateway(&emu);
    let r = responses_call(&gw, json!({"model": "gemini-2.5-flash", "input": "Hello"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["output"][0]["content"][0]["text"], CANNED);
    assert_eq!(body["usage"]["output_tokens"], 12);
    let id = body["id"].as_str().expect("id").to_owned();

    // A follow-up on the stored response, streamed.
    let r = responses_call(
        &gw,
        json!({"model": "gemini-2.5-flash", "input": "More", "stream": true,
            "previous_response_id": id}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<Value> = sse_data(&r.text())
        .iter()
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect();
    assert_eq!(events[0]["type"], "response.created");
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(text, CANNED);
    let done = events.last().expect("events");
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["previous_response_id"], id.as_str());
    assert_eq!(done["response"]["usage"]["output_tokens"], 12);
    let seq: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().expect("sequence"))
        .collect();
    assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());
}

#[actix_web::test]
async fn a_tool_round_trip_carries_the_thought_signature_both_ways() {
    let emu = emulator();
    let gw = good_gateway(&emu);
    let ask = json!({"model": "gemini-3-pro-preview", "tools": [weather_tool()],
        "tool_choice": "required",
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let r = chat_call(&gw, ask.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "STOP with a call");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let id = call["id"].as_str().expect("id");
    assert!(id.starts_with("call_"), "{id}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("args")).expect("JSON");
    assert!(args["city"].is_string(), "{args}");
    assert_eq!(
        call["extra_content"]["google"]["thought_signature"],
        SIGNATURE
    );

    // The client sends the call back with its signature and the result: Gemini answers.
    let mut follow = ask.clone();
    follow["tool_choice"] = json!("auto");
    follow["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "{\"temp\":21}"}
    ]);
    let r = chat_call(&gw, follow.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["content"], CANNED);

    // Without the signature Gemini 3 refuses, as Google does: the 400 comes out OpenAI-shaped.
    let mut unsigned = call.clone();
    unsigned
        .as_object_mut()
        .expect("call")
        .remove("extra_content");
    follow["messages"][1]["tool_calls"] = json!([unsigned]);
    let r = chat_call(&gw, follow).await;
    let e = r.assert_error(400, "INVALID_ARGUMENT");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("thought_signature")),
        "{e}"
    );

    // Streamed, the call arrives whole with its signature, and finishes as tool_calls.
    let mut streamed = ask;
    streamed["stream"] = json!(true);
    let r = chat_call(&gw, streamed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chunks: Vec<Value> = sse_data(&r.text())
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    let opening: Vec<&&Value> = deltas.iter().filter(|d| d.get("id").is_some()).collect();
    assert_eq!(opening.len(), 1, "one call: {chunks:?}");
    assert_eq!(opening[0]["function"]["name"], "get_weather");
    assert_eq!(
        opening[0]["extra_content"]["google"]["thought_signature"],
        SIGNATURE
    );
    let arguments: String = deltas
        .iter()
        .filter_map(|d| d["function"]["arguments"].as_str())
        .collect();
    let args: Value = serde_json::from_str(&arguments).expect("whole arguments");
    assert!(args["city"].is_string(), "{args}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[actix_web::test]
async fn a_responses_tool_round_trip_keeps_the_signature_in_the_store() {
    let emu = emulator();
    let gw = good_gateway(&emu);
    let tool = json!({"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
    let r = responses_call(
        &gw,
        json!({"model": "gemini-3-pro-preview", "input": "Weather in Paris?",
            "tools": [tool], "tool_choice": "required"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let call = body["output"]
        .as_array()
        .and_then(|o| o.iter().find(|i| i["type"] == "function_call"))
        .expect("a function_call item")
        .clone();
    assert_eq!(call["name"], "get_weather");
    // The follow-up names only the previous response: the signed call comes from the store,
    // and Gemini 3 would refuse it unsigned.
    let r = responses_call(
        &gw,
        json!({"model": "gemini-3-pro-preview", "previous_response_id": body["id"],
            "tools": [tool],
            "input": [{"type": "function_call_output", "call_id": call["call_id"],
                "output": "{\"temp\":21}"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["output"][0]["content"][0]["text"], CANNED);
}

#[actix_web::test]
async fn a_refused_key_is_the_operators_problem_and_is_not_retried() {
    let emu = emulator();
    let gw = gateway(emu.base.clone(), "AIza-wrong", 2);
    let r = chat_call(&gw, chat("gemini-2.5-flash", "Hello")).await;
    let e = r.assert_error(502, "upstream_credentials_rejected");
    assert!(
        !e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("API key not valid"),
        "{e}"
    );
    // (The metric files every refused credential under 401, whatever the provider's status.)
    assert_eq!(attempts(&gw, 401, "credentials").await, 1, "one attempt");
}

#[actix_web::test]
async fn a_429_with_retry_info_is_retried_after_the_hint() {
    let emu = emulator();
    // The first request is refused with RetryInfo 1s, the retry succeeds.
    let gw = gateway(
        format!(
            "{}/fault/status=429,retry_after=1,times=1,key=gem-once",
            emu.base
        ),
        switchyard::emulator::DEFAULT_GEMINI_KEY,
        2,
    );
    let started = std::time::Instant::now();
    let r = chat_call(&gw, chat("gemini-2.5-flash", "Hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "waited the 1 s Google asked for"
    );
    assert_eq!(r.json()["choices"][0]["message"]["content"], CANNED);
    assert_eq!(attempts(&gw, 429, "http_error").await, 1);
    assert_eq!(attempts(&gw, 200, "ok").await, 1);

    // Always refused: three attempts (two retries), then the 429 with Retry-After for the
    // client and an OpenAI-shaped body.
    let gw = gateway(
        format!("{}/fault/status=429,retry_after=1", emu.base),
        switchyard::emulator::DEFAULT_GEMINI_KEY,
        2,
    );
    let r = chat_call(&gw, chat("gemini-2.5-flash", "Hello")).await;
    let e = r.assert_error(429, "rate_limit_exceeded");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    assert_eq!(e["error"]["param"], Value::Null);
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("retry-after-ms"), "1000");
    assert_eq!(attempts(&gw, 429, "http_error").await, 3);
}

#[actix_web::test]
async fn google_errors_come_out_as_openai_errors() {
    let emu = emulator();
    let gw = good_gateway(&emu);
    let r = chat_call(&gw, chat("ghost-model", "Hello")).await;
    let e = r.assert_error(404, "model_not_found");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("models/ghost-model is not found")),
        "{e}"
    );
    // A 503 is retried, then passed on as a server error with Google's status name.
    let gw = gateway(
        format!("{}/fault/status=503", emu.base),
        switchyard::emulator::DEFAULT_GEMINI_KEY,
        1,
    );
    let r = chat_call(&gw, chat("gemini-2.5-flash", "Hello")).await;
    let e = r.assert_error(503, "UNAVAILABLE");
    assert_eq!(e["error"]["type"], "server_error");
    assert_eq!(attempts(&gw, 503, "http_error").await, 2);
    // An http image URL is refused before any call.
    let r = chat_call(
        &gw,
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    )
    .await;
    r.assert_error(400, "unsupported_image_url");
}

#[actix_web::test]
async fn a_stream_that_fails_midway_ends_with_an_error_event() {
    let emu = emulator();
    let gw = gateway(
        format!("{}/fault/midstream_error=3", emu.base),
        switchyard::emulator::DEFAULT_GEMINI_KEY,
        0,
    );
    let mut body = chat("gemini-2.5-flash", "Hello");
    body["stream"] = json!(true);
    let r = chat_call(&gw, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = sse_data(&r.text());
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().expect("events")).expect("JSON");
    assert!(last["error"]["message"].is_string(), "{last}");
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Hello from the");
}

#[actix_web::test]
async fn a_blocked_prompt_is_an_empty_answer_finished_by_the_content_filter() {
    let emu = emulator();
    let gw = good_gateway(&emu);
    let prompt = "How do I do something dangerous? [gemini:blocked]";
    let r = chat_call(&gw, chat("gemini-2.5-flash", prompt)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "content_filter");
    assert!(
        choice["message"]["content"]
            .as_str()
            .is_none_or(str::is_empty),
        "{body}"
    );
    assert_eq!(body["usage"]["completion_tokens"], 0);
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(prompt_tokens > 0);

    let mut streamed = chat("gemini-2.5-flash", prompt);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = chat_call(&gw, streamed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = sse_data(&r.text());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "content_filter"),
        "{chunks:?}"
    );
    assert_eq!(
        chunks.last().expect("usage chunk")["usage"]["prompt_tokens"],
        prompt_tokens
    );

    let r = responses_call(&gw, json!({"model": "gemini-2.5-flash", "input": prompt})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "incomplete", "{body}");
    assert_eq!(body["incomplete_details"]["reason"], "content_filter");
}
