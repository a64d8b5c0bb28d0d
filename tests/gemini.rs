//! The emulator's Gemini API seen from a client: keys (`x-goog-api-key`, `?key=`), proto-JSON
//! strictness and the turn rules with Google's exact messages, the answer shapes (against
//! `fixtures/gemini/`), both stream framings, and every fault in Google's format.

#[path = "common/client.rs"]
mod client;

use std::net::SocketAddr;
use std::time::Duration;

use client::*;
use serde_json::{Value, json};
use switchyard::emulator::DEFAULT_GEMINI_KEY;

const FLASH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const FLASH_SSE: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
/// "Be brief." + "Say hello.": ceil(19 / 4) + 3 per content.
const PROMPT_TOKENS: u64 = 11;

async fn call(addr: SocketAddr, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("x-goog-api-key", DEFAULT_GEMINI_KEY)];
    all.extend_from_slice(headers);
    let bytes = serde_json::to_vec(body).expect("serialisable");
    exchange(addr, "POST", path, None, &all, bytes).await
}

fn body() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]
    })
}

fn weather_tools() -> Value {
    json!([{"functionDeclarations": [{
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING"}, "days": {"type": "integer"}},
            "required": ["city", "days"]
        }
    }]}])
}

/// The Google error object, after checking status, content type and the status name.
fn google_error(reply: &Reply, code: u16, status: &str) -> Value {
    let error = reply.json_error(code);
    assert_eq!(error["code"], code);
    assert_eq!(error["status"], status);
    error
}

/// SSE frames as Gemini sends them: `data: <json>\r\n\r\n`, nothing else.
fn gemini_sse(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.complete, Ok(()), "stream incomplete");
    sse_chunks(&reply.body)
}

fn sse_chunks(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).expect("UTF-8");
    assert!(text.ends_with("\r\n\r\n"), "unterminated frame: {text:?}");
    text.split_terminator("\r\n\r\n")
        .map(|frame| {
            let data = frame.strip_prefix("data: ").expect("data: frame");
            assert!(!data.contains('\n'), "one line per frame: {data:?}");
            serde_json::from_str(data).expect("JSON chunk")
        })
        .collect()
}

fn text_of(chunk: &Value) -> String {
    chunk["candidates"][0]["content"]["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p["thought"] != true)
                .filter_map(|p| p["text"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Answers.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn generate_content_has_the_real_shape() {
    let addr = start();
    let reply = call(addr, FLASH, &body(), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        "application/json; charset=UTF-8"
    );
    let got = reply.json();
    let want: Value =
        serde_json::from_str(&fixture("gemini/generate_content.json")).expect("fixture");
    assert_same_keys("generateContent", &want, &got, &[]);
    assert_eq!(
        got["candidates"][0]["content"]["parts"][0]["text"],
        DEFAULT_TEXT
    );
    assert_eq!(got["candidates"][0]["finishReason"], "STOP");
    assert_eq!(got["modelVersion"], "gemini-2.5-flash");
    assert_eq!(got["responseId"].as_str().map(str::len), Some(22));
    assert_eq!(
        got["usageMetadata"],
        json!({
            "promptTokenCount": PROMPT_TOKENS,
            "candidatesTokenCount": 12,
            "totalTokenCount": PROMPT_TOKENS + 12,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]
        })
    );

    // `?key=` works as well as the header, and snake_case field names are proto-JSON too.
    let snake = json!({
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello."}]}],
        "generation_config": {"max_output_tokens": 4}
    });
    let path = format!("{FLASH}?key={DEFAULT_GEMINI_KEY}");
    let bytes = serde_json::to_vec(&snake).expect("JSON");
    let reply = exchange(addr, "POST", &path, None, &[], bytes).await;
    let got = reply.json();
    assert_eq!(
        got["candidates"][0]["content"]["parts"][0]["text"],
        "Hello from the Switchyard"
    );
    assert_eq!(got["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(got["usageMetadata"]["candidatesTokenCount"], 4);
}

#[actix_web::test]
async fn stream_sse_frames_usage_and_last_chunk() {
    let addr = start();
    let reply = call(addr, FLASH_SSE, &body(), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let chunks = gemini_sse(&reply);
    assert_eq!(chunks.len(), 13, "12 words and the finish chunk");
    let want = sse_chunks(fixture("gemini/stream_generate_content.sse").as_bytes());
    assert_same_keys("first chunk", &want[0], &chunks[0], &[]);
    assert_same_keys("last chunk", &want[1], &chunks[12], &[]);
    let text: String = chunks.iter().map(text_of).collect();
    assert_eq!(text, DEFAULT_TEXT);
    for (k, chunk) in chunks.iter().enumerate().take(12) {
        assert_eq!(chunk["usageMetadata"]["candidatesTokenCount"], k as u64 + 1);
        assert!(chunk["candidates"][0].get("finishReason").is_none());
    }
    let last = &chunks[12]["candidates"][0];
    assert_eq!(last["finishReason"], "STOP");
    assert_eq!(last["content"], json!({"role": "model"}));
    assert_eq!(
        chunks[12]["usageMetadata"]["totalTokenCount"],
        PROMPT_TOKENS + 12
    );
    let ids: Vec<&Value> = chunks.iter().map(|c| &c["responseId"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
}

#[actix_web::test]
async fn a_blocked_prompt_has_no_candidate_and_a_block_reason() {
    let addr = start();
    let blocked =
        json!({"contents": [{"role": "user", "parts": [{"text": "Say hello. [gemini:blocked]"}]}]});
    let reply = call(addr, FLASH, &blocked, &[]).await;
    assert_eq!(reply.status, 200);
    let got = reply.json();
    assert_eq!(got.get("candidates"), None, "{got}");
    assert_eq!(got["promptFeedback"]["blockReason"], "SAFETY");
    let prompt = got["usageMetadata"]["promptTokenCount"]
        .as_u64()
        .expect("usage");
    assert_eq!(got["usageMetadata"]["totalTokenCount"], prompt);
    assert_eq!(got["modelVersion"], "gemini-2.5-flash");
    // Streamed: the same object is the one event.
    let reply = call(addr, FLASH_SSE, &blocked, &[]).await;
    assert_eq!(reply.status, 200);
    let chunks = gemini_sse(&reply);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["promptFeedback"]["blockReason"], "SAFETY");
}

#[actix_web::test]
async fn stream_without_alt_sse_is_one_json_array() {
    let addr = start();
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let reply = call(addr, path, &body(), &[("x-emulator-fault", "tokens=3")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        "application/json; charset=UTF-8"
    );
    let text = String::from_utf8(reply.body.clone()).expect("UTF-8");
    assert!(text.starts_with("[{") && text.ends_with("}]"), "{text}");
    assert_eq!(text.matches(",\r\n{").count(), 3);
    let chunks = reply.json();
    let chunks = chunks.as_array().expect("array");
    assert_eq!(chunks.len(), 4);
    let joined: String = chunks.iter().map(text_of).collect();
    assert_eq!(joined, "Hello from the");
    assert_eq!(chunks[3]["candidates"][0]["finishReason"], "STOP");
}

#[actix_web::test]
async fn function_calls_signatures_and_the_turn_after() {
    let addr = start();
    let mut request = body();
    request["tools"] = weather_tools();
    let reply = call(addr, FLASH, &request, &[]).await;
    let got = reply.json();
    let part = &got["candidates"][0]["content"]["parts"][0];
    assert_eq!(
        part["functionCall"],
        json!({"name": "get_weather", "args": {"city": "example", "days": 0}})
    );
    assert!(
        part.get("thoughtSignature").is_none(),
        "2.5 without thinking"
    );
    assert_eq!(got["candidates"][0]["finishReason"], "STOP");
    // `{"city":"example","days":0}` is 26 bytes: four 8-byte fragments = 4 tokens.
    assert_eq!(got["usageMetadata"]["candidatesTokenCount"], 4);

    // Gemini 3 thinks and signs its calls.
    let pro = "/v1beta/models/gemini-3-pro-preview:generateContent";
    let got = call(addr, pro, &request, &[]).await.json();
    let want: Value = serde_json::from_str(&fixture("gemini/generate_content_function_call.json"))
        .expect("fixture");
    assert_same_keys(
        "function call",
        &want,
        &got,
        &["candidates[].content.parts[].functionCall.args.days"],
    );
    let signature = got["candidates"][0]["content"]["parts"][0]["thoughtSignature"].clone();
    assert!(signature.is_string());
    assert_eq!(got["usageMetadata"]["thoughtsTokenCount"], 6);
    let prompt = got["usageMetadata"]["promptTokenCount"]
        .as_u64()
        .unwrap_or_default();
    assert_eq!(got["usageMetadata"]["totalTokenCount"], prompt + 4 + 6);

    // The next turn sends the call back with its signature and answers it: text follows.
    let mut follow = request.clone();
    let call_part = json!({"functionCall": {"name": "get_weather", "args": {"city": "example", "days": 0}}, "thoughtSignature": signature});
    follow["contents"] = json!([
        {"role": "user", "parts": [{"text": "Say hello."}]},
        {"role": "model", "parts": [call_part]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "21C"}}}]}
    ]);
    let got = call(addr, pro, &follow, &[]).await.json();
    let parts = &got["candidates"][0]["content"]["parts"];
    assert_eq!(parts.as_array().map(Vec::len), Some(1));
    assert_eq!(parts[0]["text"], DEFAULT_TEXT);

    // Without the signature, Gemini 3 refuses the turn.
    follow["contents"][1]["parts"][0]
        .as_object_mut()
        .expect("part")
        .remove("thoughtSignature");
    let reply = call(addr, pro, &follow, &[]).await;
    let error = google_error(&reply, 400, "INVALID_ARGUMENT");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Function call is missing a thought_signature in functionCall parts.")
    );

    // NONE never calls; ANY with an allowed name calls that one.
    request["toolConfig"] = json!({"functionCallingConfig": {"mode": "NONE"}});
    let got = call(addr, FLASH, &request, &[]).await.json();
    assert_eq!(
        got["candidates"][0]["content"]["parts"][0]["text"],
        DEFAULT_TEXT
    );

    // In a stream the call arrives whole in one chunk, then the finish chunk.
    request["toolConfig"] =
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}});
    let chunks = gemini_sse(&call(addr, FLASH_SSE, &request, &[]).await);
    assert_eq!(chunks.len(), 2);
    assert_eq!(
        chunks[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
        json!({"city": "example", "days": 0})
    );
    assert_eq!(chunks[1]["candidates"][0]["finishReason"], "STOP");
}

#[actix_web::test]
async fn thinking_and_cached_content_show_in_usage() {
    let addr = start();
    let mut request = body();
    request["generationConfig"] =
        json!({"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}});
    request["cachedContent"] = json!("cachedContents/abc123");
    let got = call(addr, FLASH, &request, &[]).await.json();
    let parts = got["candidates"][0]["content"]["parts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["thought"], true);
    assert_eq!(parts[1]["text"], DEFAULT_TEXT);
    let prompt = PROMPT_TOKENS + 32;
    assert_eq!(
        got["usageMetadata"],
        json!({
            "promptTokenCount": prompt,
            "candidatesTokenCount": 12,
            "totalTokenCount": prompt + 12 + 6,
            "cachedContentTokenCount": 32,
            "thoughtsTokenCount": 6,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Strictness.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn keys_are_checked_as_google_checks_them() {
    let addr = start();
    let bytes = serde_json::to_vec(&body()).expect("JSON");
    let reply = exchange(addr, "POST", FLASH, None, &[], bytes.clone()).await;
    let error = google_error(&reply, 403, "PERMISSION_DENIED");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Method doesn't allow unregistered callers")
    );

    let wrong = [("x-goog-api-key", "AIza-wrong")];
    let reply = exchange(addr, "POST", FLASH, None, &wrong, bytes.clone()).await;
    google_error(&reply, 400, "INVALID_ARGUMENT");
    let want: Value =
        serde_json::from_str(&fixture("gemini/error_api_key_invalid.json")).expect("fixture");
    assert_eq!(reply.json(), want);

    // A Bearer token is not a Gemini key.
    let bearer = Some(format!("Bearer {DEFAULT_GEMINI_KEY}"));
    let reply = exchange(addr, "POST", FLASH, bearer, &[], bytes.clone()).await;
    google_error(&reply, 403, "PERMISSION_DENIED");

    let path = format!("{FLASH}?key=nope");
    let reply = exchange(addr, "POST", &path, None, &[], bytes).await;
    assert_eq!(reply.json(), want);
}

#[actix_web::test]
async fn refuses_what_google_refuses() {
    let addr = start();
    // Unknown top-level field: exactly Google's body.
    let mut request = body();
    request["thinking"] = json!(true);
    let reply = call(addr, FLASH, &request, &[]).await;
    google_error(&reply, 400, "INVALID_ARGUMENT");
    let want: Value =
        serde_json::from_str(&fixture("gemini/error_unknown_field.json")).expect("fixture");
    assert_eq!(reply.json(), want);

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "hi", "inline_data": null, "type": "text"}]}]}),
            "Invalid JSON payload received. Unknown name \"type\" at 'contents[0].parts[0]': Cannot find field.",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "data:image/png;base64,iVBO"}}]}]}),
            "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), \"data:image/png;base64,iVBO\"",
        ),
        (
            json!({"contents": []}),
            "* GenerateContentRequest.contents: contents is not specified\n",
        ),
        (
            json!({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]}),
            "Please use a valid role: user, model.",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{}]}]}),
            "* GenerateContentRequest.contents[0].parts[0].data: required oneof field 'data' must have one initialized field\n",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"temperature": "hot"}}),
            "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"responseSchema": {"type": "OBJECT"}}}),
            "* GenerateContentRequest.generation_config.response_mime_type: When response_schema or response_json_schema is set, response_mime_type must be application/json or text/x.enum.\n",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}),
            "Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"SOMETIMES\"",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "additionalProperties": false}}]}]}),
            "Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters': Cannot find field.",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": [{"name": "get weather"}]}]}),
            "* GenerateContentRequest.tools[0].function_declarations[0].name: Invalid function name. Must start with a letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a maximum length of 64.\n",
        ),
        (
            json!({"contents": [
                {"role": "user", "parts": [{"text": "x"}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}
            ]}),
            "Please ensure that function response turn comes immediately after a function call turn.",
        ),
        (
            json!({"contents": [
                {"role": "user", "parts": [{"text": "x"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "g", "args": {}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}
            ]}),
            "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.",
        ),
        (
            json!({"contents": [
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
            ]}),
            "Please ensure that function call turn comes immediately after a user turn or after a function response turn.",
        ),
    ];
    for (request, message) in cases {
        let reply = call(addr, FLASH, &request, &[]).await;
        let error = google_error(&reply, 400, "INVALID_ARGUMENT");
        assert_eq!(error["message"], message, "for {request}");
    }

    let reply = call(addr, &format!("{FLASH}?foo=1"), &body(), &[]).await;
    let error = google_error(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(
        error["message"],
        "Invalid JSON payload received. Unknown name \"foo\": Cannot bind query parameter. Field 'foo' could not be found in request message."
    );

    let reply = call(addr, "/v1beta/models/gpt-4o:generateContent", &body(), &[]).await;
    let error = google_error(&reply, 404, "NOT_FOUND");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("models/gpt-4o is not found for API version v1beta")
    );

    let bytes = b"{\"contents\": [".to_vec();
    let key = [("x-goog-api-key", DEFAULT_GEMINI_KEY)];
    let reply = exchange(addr, "POST", FLASH, None, &key, bytes).await;
    let error = google_error(&reply, 400, "INVALID_ARGUMENT");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Invalid JSON payload received.")
    );
}

// ---------------------------------------------------------------------------------------------
// Faults, in Google's format.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn resource_exhausted_carries_retry_info() {
    let addr = start();
    let reply = call(
        addr,
        FLASH,
        &body(),
        &[("x-emulator-fault", "status=429,retry_after=33")],
    )
    .await;
    let error = google_error(&reply, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(
        reply.header("retry-after"),
        "",
        "Google sends no Retry-After"
    );
    let want: Value =
        serde_json::from_str(&fixture("gemini/error_resource_exhausted.json")).expect("fixture");
    assert_same_keys("429", &want, &reply.json(), &[]);
    assert_eq!(error["details"][1], want["error"]["details"][1]);

    let reply = call(addr, FLASH, &body(), &[("x-emulator-fault", "status=503")]).await;
    google_error(&reply, 503, "UNAVAILABLE");
    let reply = call(addr, FLASH, &body(), &[("x-emulator-fault", "status=500")]).await;
    google_error(&reply, 500, "INTERNAL");
    let reply = call(addr, FLASH, &body(), &[("x-emulator-fault", "status=504")]).await;
    google_error(&reply, 504, "DEADLINE_EXCEEDED");
}

#[actix_web::test]
async fn times_and_key_budget_faults_per_route() {
    let addr = start();
    let path = "/fault/status=429,times=2,key=gem/v1beta/models/gemini-2.5-flash:generateContent";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(addr, path, &body(), &[]).await.status);
    }
    assert_eq!(statuses, [429, 429, 200, 200]);

    // A bad spec is refused in Google's shape, never ignored.
    let reply = call(addr, FLASH, &body(), &[("x-emulator-fault", "status=42")]).await;
    google_error(&reply, 400, "INVALID_ARGUMENT");
}

#[actix_web::test]
async fn midstream_error_is_a_data_error_object_in_both_framings() {
    let addr = start();
    let mut request = body();
    request["contents"][0]["parts"][0]["text"] = json!("Say hello. [emulator:midstream_error=3]");
    let chunks = gemini_sse(&call(addr, FLASH_SSE, &request, &[]).await);
    assert_eq!(chunks.len(), 4);
    let text: String = chunks[..3].iter().map(text_of).collect();
    assert_eq!(text, "Hello from the");
    assert_eq!(chunks[3]["error"]["code"], 500);
    assert_eq!(chunks[3]["error"]["status"], "INTERNAL");
    assert!(
        chunks
            .iter()
            .all(|c| c["candidates"][0].get("finishReason").is_none())
    );

    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let array = call(addr, path, &request, &[]).await.json();
    let array = array.as_array().cloned().unwrap_or_default();
    assert_eq!(array.len(), 4);
    assert_eq!(array[3]["error"]["status"], "INTERNAL");
}

#[actix_web::test]
async fn drop_latency_and_first_byte() {
    let addr = start();
    let reply = call(addr, FLASH_SSE, &body(), &[("x-emulator-fault", "drop=2")]).await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body.clone()).expect("UTF-8");
    assert_eq!(text.matches("\r\n\r\n").count(), 2, "{text}");
    let key = [
        ("x-goog-api-key", DEFAULT_GEMINI_KEY),
        ("x-emulator-fault", "drop=2"),
    ];
    let bytes = serde_json::to_vec(&body()).expect("JSON");
    let raw = raw_exchange(addr, FLASH_SSE, &key, bytes.clone()).await;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(
        !raw.ends_with(b"\r\n0\r\n\r\n"),
        "a dropped stream must not end"
    );
    let raw = raw_exchange(addr, FLASH_SSE, &key[..1], bytes).await;
    assert!(
        raw.ends_with(b"\r\n\r\n\r\n0\r\n\r\n"),
        "control: a clean end"
    );

    let reply = call(addr, FLASH, &body(), &[("x-emulator-fault", "drop=1")]).await;
    let declared: usize = reply.header("content-length").parse().expect("length");
    assert_eq!(reply.body.len(), declared / 2);

    let reply = call(
        addr,
        FLASH,
        &body(),
        &[("x-emulator-fault", "latency_ms=150")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers_after >= Duration::from_millis(150));

    let reply = call(
        addr,
        FLASH_SSE,
        &body(),
        &[("x-emulator-fault", "first_byte_ms=150")],
    )
    .await;
    assert!(reply.headers_after < Duration::from_millis(150));
    assert!(reply.body_after >= Duration::from_millis(150));
    assert_eq!(gemini_sse(&reply).len(), 13);
}

#[actix_web::test]
async fn chunk_delay_paces_every_chunk() {
    let addr = start();
    let spec = [("x-emulator-fault", "chunk_ms=20,tokens=3")];
    let reply = call(addr, FLASH_SSE, &body(), &spec).await;
    // 3 words and the finish chunk: 3 gaps of 20 ms.
    assert_eq!(gemini_sse(&reply).len(), 4);
    assert!(
        reply.body_after >= Duration::from_millis(60),
        "{:?}",
        reply.body_after
    );
}
