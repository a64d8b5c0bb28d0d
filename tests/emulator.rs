//! The emulator seen from a client: each test starts `switchyard::emulator::server` on a free
//! loopback port and talks to it with `awc::Client`, checking OpenAI's strictness (auth, body,
//! params), the wire shapes (against the recorded examples in `fixtures/openai/`) and every fault
//! kind.

#[path = "common/client.rs"]
mod client;

use std::net::SocketAddr;
use std::time::Duration;

use client::*;
use serde_json::{Value, json};
use switchyard::emulator::DEFAULT_OPENAI_KEY;

// ---------------------------------------------------------------------------------------------
// Harness: OpenAI requests.
// ---------------------------------------------------------------------------------------------

fn bearer() -> Option<String> {
    Some(format!("Bearer {DEFAULT_OPENAI_KEY}"))
}

/// POSTs raw bytes with the emulator's key.
async fn send(addr: SocketAddr, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    exchange(addr, "POST", path, bearer(), headers, body.to_vec()).await
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    post_with(addr, path, body, &[]).await
}

async fn post_with(addr: SocketAddr, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let bytes = serde_json::to_vec(body).expect("serialisable");
    send(addr, path, &bytes, headers).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    exchange(addr, "GET", path, bearer(), &[], Vec::new()).await
}

fn chat_body() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."}
        ]
    })
}

fn weather_tool_chat() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"]
            }
        }
    })
}

fn assert_error(reply: &Reply, status: u16, param: Option<&str>, code: Option<&str>) -> Value {
    let error = reply.json_error(status);
    assert!(reply.header("x-request-id").starts_with("req_"));
    assert_eq!(error["param"].as_str(), param, "param of {error}");
    assert_eq!(error["code"].as_str(), code, "code of {error}");
    assert!(error["type"].is_string() && error["message"].is_string());
    error
}

// ---------------------------------------------------------------------------------------------
// Strictness: auth, body, params.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn refuses_missing_and_wrong_keys() {
    let base = start();
    let body = serde_json::to_vec(&chat_body()).expect("JSON");
    let path = "/v1/chat/completions";

    let reply = exchange(base, "POST", path, None, &[], body.clone()).await;
    let error = assert_error(&reply, 401, None, None);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("You didn't provide an API key."),
        "{message}"
    );

    let wrong = Some("Bearer sk-wrong-key-123456".to_owned());
    let reply = exchange(base, "POST", path, wrong, &[], body).await;
    let error = assert_error(&reply, 401, None, Some("invalid_api_key"));
    assert_eq!(
        error["message"],
        "Incorrect API key provided: sk-wrong*******3456. You can find your API key at \
         https://platform.openai.com/account/api-keys."
    );
    assert_eq!(error["type"], "invalid_request_error");
    let want: Value =
        serde_json::from_str(&fixture("openai/error_invalid_api_key.json")).expect("fixture");
    assert_same_keys("401 body", &want, &reply.json(), &[]);

    // Not Bearer: the key is as good as missing, on every route.
    let raw = Some(DEFAULT_OPENAI_KEY.to_owned());
    let reply = exchange(base, "GET", "/v1/models", raw, &[], Vec::new()).await;
    assert_error(&reply, 401, None, None);
}

#[actix_web::test]
async fn refuses_bad_json_and_non_objects() {
    let base = start();
    let path = "/v1/chat/completions";
    let reply = send(base, path, b"{\"model\": ", &[]).await;
    let error = assert_error(&reply, 400, None, None);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("We could not parse the JSON body of your request."),
        "{message}"
    );
    assert!(message.contains("EOF while parsing"), "{message}");

    let reply = send(base, path, b"[1, 2]", &[]).await;
    let error = assert_error(&reply, 400, None, None);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("an array"),
        "{error}"
    );
}

#[actix_web::test]
async fn chat_refuses_what_openai_refuses() {
    let base = start();
    let path = "/v1/chat/completions";

    let reply = post(base, path, &json!({"model": "gpt-4o"})).await;
    let error = assert_error(
        &reply,
        400,
        Some("messages"),
        Some("missing_required_parameter"),
    );
    assert_eq!(error["message"], "Missing required parameter: 'messages'.");

    let reply = post(base, path, &json!({"model": "gpt-4o", "messages": []})).await;
    assert_error(&reply, 400, Some("messages"), Some("empty_array"));

    let reply = post(base, path, &json!({"messages": chat_body()["messages"]})).await;
    let error = assert_error(&reply, 400, None, None);
    assert_eq!(error["message"], "you must provide a model parameter");

    let mut body = chat_body();
    body["temprature"] = json!(0.2);
    let reply = post(base, path, &body).await;
    let error = assert_error(&reply, 400, None, None);
    assert_eq!(
        error["message"],
        "Unrecognized request argument supplied: temprature"
    );

    let mut body = chat_body();
    body["stream_options"] = json!({"include_usage": true});
    let reply = post(base, path, &body).await;
    let error = assert_error(&reply, 400, Some("stream_options"), None);
    assert_eq!(
        error["message"],
        "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    );

    for (param, value) in [
        ("stream", json!("yes")),
        ("temperature", json!("hot")),
        ("n", json!(1.5)),
        ("max_completion_tokens", json!("ten")),
        ("top_p", json!([1])),
    ] {
        let mut body = chat_body();
        body[param] = value;
        let reply = post(base, path, &body).await;
        let error = assert_error(&reply, 400, Some(param), Some("invalid_type"));
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("Invalid type for '{param}'")),
            "{error}"
        );
    }

    let mut body = chat_body();
    body["temperature"] = json!(3);
    let reply = post(base, path, &body).await;
    assert_error(
        &reply,
        400,
        Some("temperature"),
        Some("decimal_above_max_value"),
    );

    let mut body = chat_body();
    body["messages"][1]["role"] = json!("bot");
    let reply = post(base, path, &body).await;
    let error = assert_error(&reply, 400, Some("messages[1].role"), Some("invalid_value"));
    assert_eq!(
        error["message"],
        "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', \
         'function', 'tool', and 'developer'."
    );

    // Responses-style parts sent to chat: the classic translation mistake.
    let mut body = chat_body();
    body["messages"][1]["content"] = json!([{"type": "input_text", "text": "hi"}]);
    let reply = post(base, path, &body).await;
    assert_error(
        &reply,
        400,
        Some("messages[1].content[0].type"),
        Some("invalid_value"),
    );

    // A tool message needs its id, and an assistant call that precedes it.
    let mut body = chat_body();
    body["messages"]
        .as_array_mut()
        .expect("array")
        .push(json!({"role": "tool", "content": "21C"}));
    let reply = post(base, path, &body).await;
    assert_error(
        &reply,
        400,
        Some("messages[2].tool_call_id"),
        Some("missing_required_parameter"),
    );
    body["messages"][2]["tool_call_id"] = json!("call_1");
    let reply = post(base, path, &body).await;
    let error = assert_error(&reply, 400, Some("messages.[2].role"), None);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("must be a response to a preceeding message with 'tool_calls'")
    );

    // Calls left unanswered.
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ]},
            {"role": "user", "content": "Well?"}
        ]
    });
    let reply = post(base, path, &body).await;
    let error = assert_error(&reply, 400, Some("messages.[1].role"), None);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .ends_with("did not have response messages: call_1")
    );

    // Arguments must be a JSON string, not an object.
    let mut body = body;
    body["messages"][1]["tool_calls"][0]["function"]["arguments"] = json!({"city": "Paris"});
    let reply = post(base, path, &body).await;
    assert_error(
        &reply,
        400,
        Some("messages[1].tool_calls[0].function.arguments"),
        Some("invalid_type"),
    );

    // JSON mode needs the word "json" in the messages, as at OpenAI.
    let mut body = chat_body();
    body["response_format"] = json!({"type": "json_object"});
    let reply = post(base, path, &body).await;
    assert_error(&reply, 400, Some("messages"), None);

    let mut body = chat_body();
    body["tool_choice"] = json!("auto");
    let reply = post(base, path, &body).await;
    assert_error(&reply, 400, Some("tool_choice"), None);
}

#[actix_web::test]
async fn responses_refuse_what_openai_refuses() {
    let base = start();
    let path = "/v1/responses";

    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": "hi", "messages": []}),
    )
    .await;
    let error = assert_error(&reply, 400, Some("messages"), Some("unknown_parameter"));
    assert_eq!(error["message"], "Unknown parameter: 'messages'.");

    let reply = post(base, path, &json!({"input": "hi"})).await;
    assert_error(
        &reply,
        400,
        Some("model"),
        Some("missing_required_parameter"),
    );

    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": "hi", "previous_response_id": "resp_nope"}),
    )
    .await;
    let error = assert_error(
        &reply,
        400,
        Some("previous_response_id"),
        Some("previous_response_not_found"),
    );
    assert_eq!(
        error["message"],
        "Previous response with id 'resp_nope' not found."
    );

    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": "hi", "previous_response_id": "resp_x", "conversation": "conv_1"}),
    )
    .await;
    assert_eq!(reply.status, 400);

    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": "hi", "max_output_tokens": 10}),
    )
    .await;
    assert_error(
        &reply,
        400,
        Some("max_output_tokens"),
        Some("integer_below_min_value"),
    );

    // Chat-style parts and tools do not pass on the Responses API.
    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    )
    .await;
    assert_error(
        &reply,
        400,
        Some("input[0].content[0].type"),
        Some("invalid_value"),
    );
    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": "hi", "tools": [weather_tool_chat()]}),
    )
    .await;
    assert_error(
        &reply,
        400,
        Some("tools[0].name"),
        Some("missing_required_parameter"),
    );

    // A function output must answer a known call.
    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": [{"type": "function_call_output", "call_id": "call_9", "output": "21C"}]}),
    )
    .await;
    assert_error(&reply, 400, Some("input"), None);

    let reply = post(
        base,
        path,
        &json!({"model": "gpt-4.1", "input": "hi", "stream_options": {"include_obfuscation": false}}),
    )
    .await;
    assert_error(&reply, 400, Some("stream_options"), None);
}

#[actix_web::test]
async fn unknown_routes_are_openai_404s() {
    let base = start();
    let reply = post(base, "/v1/embeddings", &json!({})).await;
    let error = assert_error(&reply, 404, None, None);
    assert_eq!(error["message"], "Invalid URL (POST /v1/embeddings)");
    let reply = get(base, "/v1/chat/completions").await;
    assert_eq!(reply.status, 404);
}

// ---------------------------------------------------------------------------------------------
// Chat answers.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn chat_non_stream_has_the_real_shape() {
    let base = start();
    let reply = post(base, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert!(reply.header("x-request-id").starts_with("req_"));
    assert!(reply.header("openai-processing-ms").parse::<u64>().is_ok());

    let body = reply.json();
    assert!(
        body["id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("chatcmpl-")
    );
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_TEXT);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "Be brief." + "Say hello." = 19 chars -> 5 tokens, plus 3 per message.
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(body["usage"]["completion_tokens"], 12);
    assert_eq!(body["usage"]["total_tokens"], 23);

    let want: Value =
        serde_json::from_str(&fixture("openai/chat_completion.json")).expect("fixture");
    assert_same_keys("chat.completion", &want, &body, &["system_fingerprint"]);

    // tokens=, n and the token limit.
    let mut request = chat_body();
    request["n"] = json!(2);
    request["max_completion_tokens"] = json!(4);
    let reply = post_with(
        base,
        "/v1/chat/completions",
        &request,
        &[("x-emulator-fault", "tokens=30")],
    )
    .await;
    let body = reply.json();
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["choices"][1]["finish_reason"], "length");
    assert_eq!(
        body["choices"][1]["message"]["content"],
        "Hello from the Switchyard"
    );
    assert_eq!(body["usage"]["completion_tokens"], 8);
}

#[actix_web::test]
async fn chat_stream_frames_usage_and_done() {
    let base = start();
    let mut request = chat_body();
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let reply = post(base, "/v1/chat/completions", &request).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .starts_with("text/event-stream")
    );
    assert!(
        reply.body.ends_with(b"data: [DONE]\n\n"),
        "stream must end with [DONE]"
    );

    let events = reply.events();
    let (done, chunks) = events.split_last().expect("events");
    assert_eq!(done.data, "[DONE]");
    assert!(
        events.iter().all(|e| e.event.is_none()),
        "chat has no event: lines"
    );
    let chunks: Vec<Value> = chunks.iter().map(Event::json).collect();
    // role chunk + 12 words + finish chunk + usage chunk
    assert_eq!(chunks.len(), 15);
    let id = &chunks[0]["id"];
    assert!(
        chunks
            .iter()
            .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk")
    );
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage_chunk, rest) = chunks.split_last().expect("usage chunk");
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some()),
        "every chunk says usage: null"
    );
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 12);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 11);
    let finish = &rest[rest.len() - 1]["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert_eq!(finish["finish_reason"], "stop");
    let text: String = rest
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_TEXT);

    // Shape against the documented stream (which has no include_usage).
    request
        .as_object_mut()
        .expect("object")
        .remove("stream_options");
    let reply = post(base, "/v1/chat/completions", &request).await;
    let got: Vec<Value> = reply
        .events()
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(Event::json)
        .collect();
    assert!(got.iter().all(|c| c.get("usage").is_none()));
    let want: Vec<Value> = parse_sse(fixture("openai/chat_completion_stream.sse").as_bytes())
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(Event::json)
        .collect();
    let pairs = [
        (&want[0], &got[0]),
        (&want[1], &got[1]),
        (&want[2], &got[got.len() - 1]),
    ];
    for (want, got) in pairs {
        assert_same_keys("chat chunk", want, got, &["service_tier"]);
    }
}

#[actix_web::test]
async fn chat_tool_calls_and_structured_output() {
    let base = start();
    let path = "/v1/chat/completions";
    let mut request = chat_body();
    request["tools"] = json!([weather_tool_chat()]);
    let reply = post(base, path, &request).await;
    let body = reply.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().unwrap_or_default().starts_with("call_"));
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or_default())
            .expect("arguments are JSON");
    assert_eq!(arguments, json!({"city": "example", "days": 0}));

    // Streamed: id and name first with empty arguments, then argument fragments.
    request["stream"] = json!(true);
    let reply = post(base, path, &request).await;
    let chunks: Vec<Value> = reply
        .events()
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(Event::json)
        .collect();
    let header = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(header["function"]["name"], "get_weather");
    assert_eq!(header["function"]["arguments"], "");
    assert!(header["id"].is_string());
    let streamed: String = chunks[2..]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&streamed).expect("JSON"),
        arguments
    );
    assert_eq!(
        chunks[chunks.len() - 1]["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // After a tool result the model answers in text.
    let request = json!({
        "model": "gpt-4o",
        "tools": [weather_tool_chat()],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21C"}
        ]
    });
    let body = post(base, path, &request).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // tool_choice "none" keeps it in text.
    let mut request = chat_body();
    request["tools"] = json!([weather_tool_chat()]);
    request["tool_choice"] = json!("none");
    let body = post(base, path, &request).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // Structured output: the content is a JSON object.
    let mut request = chat_body();
    request["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}});
    let body = post(base, path, &request).await.json();
    let content: Value = serde_json::from_str(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default(),
    )
    .expect("content is JSON");
    assert_eq!(content["answer"], DEFAULT_TEXT);
}

// ---------------------------------------------------------------------------------------------
// Responses answers.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn responses_store_get_and_previous_id() {
    let base = start();
    let request = json!({"model": "gpt-4.1", "instructions": "Be brief.", "input": "Say hello."});
    let reply = post(base, "/v1/responses", &request).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "gpt-4.1");
    assert_eq!(body["instructions"], "Be brief.");
    assert_eq!(body["output"][0]["type"], "message");
    assert_eq!(body["output"][0]["content"][0]["text"], DEFAULT_TEXT);
    assert_eq!(body["usage"]["input_tokens"], 11);
    assert_eq!(body["usage"]["output_tokens"], 12);
    // Newer than the fixture, and required by the current SDK's `InputTokensDetails`.
    assert_eq!(
        body["usage"]["input_tokens_details"]["cache_write_tokens"],
        0
    );
    let want: Value = serde_json::from_str(&fixture("openai/response.json")).expect("fixture");
    assert_same_keys(
        "Response",
        &want,
        &body,
        &["usage.input_tokens_details.cache_write_tokens"],
    );

    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("resp_"));
    let stored = get(base, &format!("/v1/responses/{id}")).await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json(), body);

    let missing = get(base, "/v1/responses/resp_unknown").await;
    assert_error(&missing, 404, None, None);

    let follow_up = json!({"model": "gpt-4.1", "input": "Again.", "previous_response_id": id});
    let body = post(base, "/v1/responses", &follow_up).await.json();
    assert_eq!(body["previous_response_id"], id);
    assert!(
        body["instructions"].is_null(),
        "instructions do not carry over"
    );
    // The prompt includes the stored turn: 11 + 12 plus "Again." (2 + 3).
    assert_eq!(body["usage"]["input_tokens"], 28);

    // store: false keeps nothing.
    let body = post(
        base,
        "/v1/responses",
        &json!({"model": "gpt-4.1", "input": "x", "store": false}),
    )
    .await
    .json();
    let id = body["id"].as_str().expect("id");
    assert_eq!(get(base, &format!("/v1/responses/{id}")).await.status, 404);
}

#[actix_web::test]
async fn responses_stream_event_order_and_sequence() {
    let base = start();
    let request = json!({"model": "gpt-4.1", "instructions": "Be brief.", "input": "Say hello.", "stream": true});
    let reply = post(base, "/v1/responses", &request).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .starts_with("text/event-stream")
    );
    assert!(!reply.body.windows(6).any(|w| w == b"[DONE]"), "no [DONE]");

    let events = reply.events();
    let data: Vec<Value> = events.iter().map(Event::json).collect();
    for (event, value) in events.iter().zip(&data) {
        assert_eq!(
            event.event.as_deref(),
            value["type"].as_str(),
            "event: matches type"
        );
    }
    let sequence: Vec<u64> = data
        .iter()
        .map(|d| d["sequence_number"].as_u64().expect("sequence_number"))
        .collect();
    assert_eq!(sequence, (0..data.len() as u64).collect::<Vec<_>>());

    let kinds: Vec<&str> = data.iter().filter_map(|d| d["type"].as_str()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", 12));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(kinds, expected);
    let text: String = data.iter().filter_map(|d| d["delta"].as_str()).collect();
    assert_eq!(text, DEFAULT_TEXT);
    let completed = &data[data.len() - 1]["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["usage"]["output_tokens"], 12);
    assert_eq!(data[0]["response"]["status"], "in_progress");
    assert!(data[0]["response"]["usage"].is_null());

    // Every documented event has the documented keys.
    let extra = [
        "sequence_number",
        "logprobs",
        "response.usage.input_tokens_details",
    ];
    let want = parse_sse(fixture("openai/response_stream.sse").as_bytes());
    for fixture_event in &want {
        let kind = fixture_event.event.as_deref().expect("named event");
        let got = data
            .iter()
            .find(|d| d["type"] == kind)
            .unwrap_or_else(|| panic!("emulator sent no {kind}"));
        assert_same_keys(kind, &fixture_event.json(), got, &extra);
    }

    // The streamed response is stored too.
    let id = completed["id"].as_str().expect("id");
    assert_eq!(
        get(base, &format!("/v1/responses/{id}")).await.json(),
        *completed
    );
}

#[actix_web::test]
async fn responses_function_calls_and_incomplete() {
    let base = start();
    let tool = json!({"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}});
    let request = json!({"model": "gpt-4.1", "input": "Weather?", "tools": [tool], "stream": true});
    let reply = post(base, "/v1/responses", &request).await;
    let data: Vec<Value> = reply.events().iter().map(Event::json).collect();
    let kinds: Vec<&str> = data.iter().filter_map(|d| d["type"].as_str()).collect();
    assert_eq!(kinds[2], "response.output_item.added");
    assert_eq!(data[2]["item"]["type"], "function_call");
    assert_eq!(data[2]["item"]["arguments"], "");
    assert!(kinds.contains(&"response.function_call_arguments.delta"));
    let done = data
        .iter()
        .find(|d| d["type"] == "response.function_call_arguments.done")
        .expect("arguments done");
    assert_eq!(done["arguments"], r#"{"city":"example"}"#);
    let completed = &data[data.len() - 1]["response"];
    assert_eq!(completed["output"][0]["name"], "get_weather");
    let call_id = completed["output"][0]["call_id"].as_str().expect("call_id");
    let id = completed["id"].as_str().expect("id");

    // Answering the call through previous_response_id: accepted, answered in text.
    let follow_up = json!({"model": "gpt-4.1", "previous_response_id": id, "tools": [tool],
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "21C"}]});
    let body = post(base, "/v1/responses", &follow_up).await.json();
    assert_eq!(body["output"][0]["type"], "message");

    // max_output_tokens below the reply length: incomplete.
    let request =
        json!({"model": "gpt-4.1", "input": "Talk.", "max_output_tokens": 16, "stream": true});
    let reply = post_with(
        base,
        "/v1/responses",
        &request,
        &[("x-emulator-fault", "tokens=40")],
    )
    .await;
    let data: Vec<Value> = reply.events().iter().map(Event::json).collect();
    let last = &data[data.len() - 1];
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(last["response"]["usage"]["output_tokens"], 16);
}

#[actix_web::test]
async fn models_list() {
    let base = start();
    let reply = get(base, "/v1/models").await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().expect("data");
    assert!(data.iter().any(|m| m["id"] == "gpt-4o"));
    assert!(data.iter().all(|m| m["object"] == "model"));
}

// ---------------------------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn status_429_carries_retry_hints() {
    let base = start();
    let reply = post_with(
        base,
        "/v1/chat/completions",
        &chat_body(),
        &[("x-emulator-fault", "status=429,retry_after=2")],
    )
    .await;
    assert_error(&reply, 429, None, Some("rate_limit_exceeded"));
    assert_eq!(reply.header("retry-after"), "2");
    assert_eq!(reply.header("retry-after-ms"), "2000");

    // Path prefix, default hint of 1 second, and GET routes too.
    let reply = get(base, "/fault/status=429/v1/models").await;
    assert_error(&reply, 429, None, Some("rate_limit_exceeded"));
    assert_eq!(reply.header("retry-after"), "1");

    let reply = post(
        base,
        "/fault/status=503/v1/responses",
        &json!({"model": "m", "input": "x"}),
    )
    .await;
    let error = assert_error(&reply, 503, None, Some("server_error"));
    assert_eq!(error["type"], "server_error");
}

#[actix_web::test]
async fn times_fails_then_succeeds() {
    let base = start();
    let headers = [("x-emulator-fault", "status=503,times=1,key=flaky")];
    let first = post_with(base, "/v1/chat/completions", &chat_body(), &headers).await;
    assert_eq!(first.status, 503);
    let second = post_with(base, "/v1/chat/completions", &chat_body(), &headers).await;
    assert_eq!(second.status, 200);

    // The same budget through the body marker (what a test sends through a gateway).
    let mut body = chat_body();
    body["messages"][1]["content"] = json!("Hi [emulator:status=500,times=2,key=marker]");
    for want in [500, 500, 200] {
        let reply = post(base, "/v1/chat/completions", &body).await;
        assert_eq!(reply.status, want);
    }
}

#[actix_web::test]
async fn bad_fault_specs_are_refused() {
    let base = start();
    let reply = post_with(
        base,
        "/v1/chat/completions",
        &chat_body(),
        &[("x-emulator-fault", "statsu=503")],
    )
    .await;
    let error = assert_error(&reply, 400, None, Some("invalid_fault_spec"));
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("'statsu'"), "{message}");
    assert!(message.contains("x-emulator-fault header"), "{message}");

    let reply = post(
        base,
        "/fault/latency_ms=abc/v1/chat/completions",
        &chat_body(),
    )
    .await;
    let error = assert_error(&reply, 400, None, Some("invalid_fault_spec"));
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'latency_ms'")
    );
}

#[actix_web::test]
async fn chat_midstream_error_ends_cleanly_without_done() {
    let base = start();
    let mut request = chat_body();
    request["stream"] = json!(true);
    let reply = post_with(
        base,
        "/v1/chat/completions",
        &request,
        &[("x-emulator-fault", "midstream_error=3")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    // role chunk, 3 words, the error.
    assert_eq!(events.len(), 5);
    let error = events[4].json();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(error["error"]["code"], "server_error");
    assert!(error["error"]["param"].is_null());
    assert!(!events.iter().any(|e| e.data == "[DONE]"));
}

#[actix_web::test]
async fn responses_midstream_error_sends_error_then_failed() {
    let base = start();
    let request = json!({"model": "gpt-4.1", "input": "hi", "stream": true});
    let reply = post_with(
        base,
        "/v1/responses",
        &request,
        &[("x-emulator-fault", "midstream_error=2")],
    )
    .await;
    let data: Vec<Value> = reply.events().iter().map(Event::json).collect();
    let kinds: Vec<&str> = data.iter().filter_map(|d| d["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "error",
            "response.failed",
        ]
    );
    assert_eq!(data[6]["code"], "server_error");
    assert_eq!(data[7]["response"]["status"], "failed");
    assert_eq!(data[7]["response"]["error"]["code"], "server_error");
    assert_eq!(data[7]["sequence_number"], 7);
}

/// The raw bytes of one `Connection: close` exchange, read until the server closes or resets.
/// awc cannot show a drop: its HTTP/1 payload stream (awc 3.11, `PlStream`) ends cleanly when
/// the connection closes early, so only the raw framing proves the body was cut.
async fn raw_post(addr: SocketAddr, path: &str, body: &Value) -> Vec<u8> {
    let auth = format!("Bearer {DEFAULT_OPENAI_KEY}");
    let body = serde_json::to_vec(body).expect("JSON");
    raw_exchange(addr, path, &[("authorization", &auth)], body).await
}

#[actix_web::test]
async fn drop_aborts_the_body() {
    let base = start();
    let mut request = chat_body();
    request["stream"] = json!(true);

    // Stream: three events, then the connection goes away mid-body.
    let reply = post(base, "/fault/drop=3/v1/chat/completions", &request).await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body);
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));
    let raw = raw_post(base, "/fault/drop=3/v1/chat/completions", &request).await;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(
        !raw.ends_with(b"\r\n0\r\n\r\n"),
        "a dropped stream must not end its chunked body"
    );
    // Control: the same request without the fault ends its chunked body properly.
    let raw = raw_post(base, "/v1/chat/completions", &request).await;
    assert!(raw.ends_with(b"data: [DONE]\n\n\r\n0\r\n\r\n"));

    // Non-stream: the full length is declared, half of it arrives.
    let reply = post(base, "/fault/drop=1/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 200);
    let declared: usize = reply.header("content-length").parse().expect("length");
    assert_eq!(reply.body.len(), declared / 2);
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
}

#[actix_web::test]
async fn latency_and_first_byte_delays() {
    let base = start();
    let reply = post_with(
        base,
        "/v1/chat/completions",
        &chat_body(),
        &[("x-emulator-fault", "latency_ms=300")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers_after >= Duration::from_millis(300));

    // first_byte_ms: the headers come at once, the first chunk waits.
    let mut request = chat_body();
    request["stream"] = json!(true);
    let path = "/fault/first_byte_ms=400,chunk_ms=10/v1/chat/completions";
    let reply = post(base, path, &request).await;
    assert!(
        reply.headers_after < Duration::from_millis(300),
        "{:?}",
        reply.headers_after
    );
    // 400 ms before the first chunk, then 10 ms before each of the 14 others.
    assert!(
        reply.body_after >= Duration::from_millis(540),
        "{:?}",
        reply.body_after
    );
    assert!(reply.body.ends_with(b"data: [DONE]\n\n"));

    // No fault: no waiting.
    let reply = post(base, "/v1/chat/completions", &request).await;
    assert!(
        reply.body_after < Duration::from_millis(300),
        "{:?}",
        reply.body_after
    );
}
