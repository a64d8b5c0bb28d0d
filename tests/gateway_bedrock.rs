//! Bedrock through the real gateway: the binary in front of the emulator's Converse and
//! ConverseStream (SigV4 verified there with aws-sigv4), on both front endpoints, streaming and
//! not: text, usage, tool round trips, refused credentials, retries (each attempt signed and
//! counted), an exception frame mid-stream, Bedrock's validation errors, and a tenant in
//! another region under `serve --emulator`.

mod common;

use common::http::*;
use common::*;
use serde_json::{Value, json};
use switchyard::emulator::{
    DEFAULT_BEDROCK_ACCESS_KEY_ID, DEFAULT_BEDROCK_API_KEY, DEFAULT_BEDROCK_SECRET_ACCESS_KEY,
    DEFAULT_BEDROCK_SESSION_TOKEN,
};

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// Tenant "a" with Bedrock providers on the emulator: `bedrock` (the right keys, two retries),
/// `once` (the right keys, one retry), `forged` (a wrong secret), `temporary` (with a session
/// token), `apikey` and `badkey` (Bedrock API keys, right and wrong).
fn tenant(emulator: &Running) -> String {
    let base = &emulator.base;
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.bedrock]
type = "bedrock"
region = "us-east-1"
endpoint = "{base}"
access_key_id_env = "BR_ID"
secret_access_key_env = "BR_SECRET"
max_retries = 2

[providers.once]
type = "bedrock"
region = "us-east-1"
endpoint = "{base}"
access_key_id_env = "BR_ID"
secret_access_key_env = "BR_SECRET"
max_retries = 1

[providers.forged]
type = "bedrock"
region = "us-east-1"
endpoint = "{base}"
access_key_id_env = "BR_ID"
secret_access_key_env = "BR_WRONG_SECRET"
max_retries = 2

[providers.temporary]
type = "bedrock"
region = "us-east-1"
endpoint = "{base}"
access_key_id_env = "BR_ID"
secret_access_key_env = "BR_SECRET"
session_token_env = "BR_TOKEN"

[providers.apikey]
type = "bedrock"
region = "us-east-1"
endpoint = "{base}"
api_key_env = "BR_API_KEY"

[providers.badkey]
type = "bedrock"
region = "us-east-1"
endpoint = "{base}"
api_key_env = "BR_WRONG_SECRET"

[proxies.chat]
[[proxies.chat.routes]]
name = "claude"
provider = "bedrock"
model = "claude"
target_model = "{MODEL}"
[[proxies.chat.routes]]
name = "temporary"
provider = "temporary"
model = "claude-temporary"
target_model = "{MODEL}"
[[proxies.chat.routes]]
name = "apikey"
provider = "apikey"
model = "claude-apikey"
target_model = "{MODEL}"
[[proxies.chat.routes]]
name = "badkey"
provider = "badkey"
model = "claude-badkey"
target_model = "{MODEL}"
[[proxies.chat.routes]]
name = "profile"
provider = "bedrock"
model = "claude-profile"
target_model = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
[[proxies.chat.routes]]
name = "once"
provider = "once"
model = "claude-once"
target_model = "{MODEL}"
[[proxies.chat.routes]]
name = "forged"
provider = "forged"
model = "claude-forged"
target_model = "{MODEL}"
"#
    )
}

fn gateway(emulator: &Running) -> Gateway {
    Gateway::start(
        &[("a", tenant(emulator))],
        &[
            ("BR_ID", DEFAULT_BEDROCK_ACCESS_KEY_ID.into()),
            ("BR_SECRET", DEFAULT_BEDROCK_SECRET_ACCESS_KEY.into()),
            ("BR_WRONG_SECRET", "not/the/secret".into()),
            ("BR_TOKEN", DEFAULT_BEDROCK_SESSION_TOKEN.into()),
            ("BR_API_KEY", DEFAULT_BEDROCK_API_KEY.into()),
        ],
        &["--no-watch"],
    )
}

async fn chat_at(gw: &Gateway, body: Value) -> Reply {
    post(gw.url("/a/chat/v1/chat/completions"), Some(KEY_A), body).await
}

async fn responses_at(gw: &Gateway, body: Value) -> Reply {
    post(gw.url("/a/chat/v1/responses"), Some(KEY_A), body).await
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }})
}

/// The chunks of a chat stream, which must end with `[DONE]`.
fn chunks(r: &Reply) -> Vec<Value> {
    let data = sse_data(&r.text());
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect()
}

#[actix_web::test]
async fn chat_answers_from_claude_with_usage_whole_and_streamed() {
    let emu = emulator();
    let gw = gateway(&emu);
    let r = chat_at(&gw, chat("claude", "Say hello.")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(!text.is_empty(), "{body}");
    let usage = &body["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
    );
    assert!(
        prompt.is_some_and(|n| n > 0) && completion.is_some_and(|n| n > 0),
        "{body}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        prompt.zip(completion).map(|(p, c)| p + c)
    );
    // The emulator's x-amzn-RequestId is relayed (a UUID).
    assert_eq!(
        r.header("x-upstream-request-id").len(),
        36,
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-switchyard-provider"), "bedrock");

    let mut streamed = chat("claude", "Say hello.");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = chat_at(&gw, streamed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").starts_with("text/event-stream"));
    let chunks = chunks(&r);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text, "the stream says what the whole answer said");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let last = chunks.last().expect("a usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(
        last["usage"]["completion_tokens"],
        usage["completion_tokens"]
    );
}

#[actix_web::test]
async fn an_inference_profile_arn_is_one_path_segment_signed_as_sent() {
    let emu = emulator();
    let gw = gateway(&emu);
    let r = chat_at(&gw, chat("claude-profile", "Hi")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["model"],
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    );
}

#[actix_web::test]
async fn responses_whole_and_streamed() {
    let emu = emulator();
    let gw = gateway(&emu);
    let r = responses_at(
        &gw,
        json!({"model": "claude", "input": "Say hello.", "instructions": "Be brief."}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["output"][0]["type"], "message");
    let text = body["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(!text.is_empty(), "{body}");
    assert!(
        body["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{body}"
    );

    let r = responses_at(
        &gw,
        json!({"model": "claude", "input": "Say hello.", "stream": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<Value> = sse_data(&r.text())
        .iter()
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(deltas, text);
    let completed = events.last().expect("completed");
    assert!(
        completed["response"]["usage"]["output_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"].as_u64(), Some(i as u64), "{e}");
    }
}

#[actix_web::test]
async fn a_tool_round_trip_whole_and_streamed() {
    let emu = emulator();
    let gw = gateway(&emu);
    let ask = json!({
        "model": "claude",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [weather_tool()],
        "tool_choice": "required"
    });
    let r = chat_at(&gw, ask.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let id = call["id"].as_str().unwrap_or("");
    assert!(
        id.starts_with("tooluse_"),
        "Bedrock's toolUseId is the call id: {call}"
    );
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))
        .expect("arguments are JSON");
    assert!(args.is_object(), "{args}");

    // The result goes back (toolUse + toolResult on Bedrock, which checks the ids pair up).
    let answer = json!({
        "model": "claude",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "{\"temp\": 21}"}
        ],
        "tools": [weather_tool()]
    });
    let r = chat_at(&gw, answer.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    // tool_choice none with that history: no toolConfig upstream, the history as text.
    let mut none = answer;
    none["tool_choice"] = json!("none");
    let r = chat_at(&gw, none).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");

    // Streamed: one tool call delta with id and name, then its arguments.
    let mut streamed = ask;
    streamed["stream"] = json!(true);
    let r = chat_at(&gw, streamed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chunks = chunks(&r);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(
        calls[0]["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("tooluse_")),
        "{calls:?}"
    );
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert!(
        serde_json::from_str::<Value>(&arguments).is_ok_and(|a| a.is_object()),
        "{arguments}"
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[actix_web::test]
async fn a_refused_signature_is_the_gateways_credentials_error() {
    let emu = emulator();
    let gw = gateway(&emu);
    let r = chat_at(&gw, chat("claude-forged", "Hi")).await;
    let body = r.assert_error(502, "upstream_credentials_rejected");
    let text = body.to_string();
    assert!(!text.contains("signature"), "{text}");
    assert!(!text.contains(DEFAULT_BEDROCK_ACCESS_KEY_ID), "{text}");
    // Not retried: the same keys would be refused again.
    let metrics = gw.metrics().await;
    let attempts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_upstream_attempts_total{provider=\"forged\""))
        .collect();
    assert_eq!(
        attempts,
        [
            "switchyard_upstream_attempts_total{provider=\"forged\",status=\"401\",outcome=\"credentials\"} 1"
        ]
    );
}

#[actix_web::test]
async fn session_tokens_and_bedrock_api_keys_authenticate_too() {
    let emu = emulator();
    let gw = gateway(&emu);
    for model in ["claude-temporary", "claude-apikey"] {
        let r = chat_at(&gw, chat(model, "Hi")).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
    }
    let r = chat_at(&gw, chat("claude-badkey", "Hi")).await;
    r.assert_error(502, "upstream_credentials_rejected");
}

/// The attempts the gateway made to `provider`, by status, from `/metrics`.
async fn attempts(gw: &Gateway, provider: &str) -> Vec<String> {
    let metrics = gw.metrics().await;
    let prefix = format!("switchyard_upstream_attempts_total{{provider=\"{provider}\"");
    let mut lines: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[actix_web::test]
async fn retries_are_signed_afresh_and_counted_exactly() {
    let emu = emulator();
    let gw = gateway(&emu);
    // Two 503s, then an answer: three attempts, each verified by the emulator's SigV4 check
    // before its fault applies (a request the emulator refuses never reaches its counter).
    let key = format!("br-{}", std::process::id());
    let r = chat_at(
        &gw,
        chat(
            "claude",
            &format!("[emulator:status=503,times=2,key={key}] Hi"),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        attempts(&gw, "bedrock").await,
        [
            "switchyard_upstream_attempts_total{provider=\"bedrock\",status=\"200\",outcome=\"ok\"} 1",
            "switchyard_upstream_attempts_total{provider=\"bedrock\",status=\"503\",outcome=\"http_error\"} 2",
        ]
    );
    // One retry only: two attempts, both 503, and the client sees Bedrock's error.
    let key = format!("br1-{}", std::process::id());
    let r = chat_at(
        &gw,
        chat(
            "claude-once",
            &format!("[emulator:status=503,times=2,key={key}] Hi"),
        ),
    )
    .await;
    let body = r.assert_error(503, "ServiceUnavailableException");
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(
        attempts(&gw, "once").await,
        [
            "switchyard_upstream_attempts_total{provider=\"once\",status=\"503\",outcome=\"http_error\"} 2"
        ]
    );
    // Throttling is a 429 rate limit error, retried like one.
    let r = chat_at(&gw, chat("claude-once", "[emulator:status=429] Hi")).await;
    let body = r.assert_error(429, "ThrottlingException");
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[actix_web::test]
async fn an_exception_frame_mid_stream_ends_with_an_error_event() {
    let emu = emulator();
    let gw = gateway(&emu);
    let mut body = chat("claude", "[emulator:midstream_error=2,tokens=12] Hi");
    body["stream"] = json!(true);
    let r = chat_at(&gw, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = sse_data(&r.text());
    assert_ne!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    let last: Value = serde_json::from_str(data.last().expect("events")).expect("JSON");
    assert_eq!(
        last["error"]["code"], "upstream_stream_interrupted",
        "{last}"
    );
    let message = last["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("modelStreamErrorException"), "{message}");
    let content: String = data[..data.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        !content.is_empty(),
        "the content before the fault was relayed"
    );

    let r = responses_at(
        &gw,
        json!({"model": "claude", "input": "[emulator:midstream_error=2] Hi", "stream": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
    assert!(last.starts_with("event: response.failed\n"), "{text}");
    let failed: Value =
        serde_json::from_str(sse_data(last).first().map_or("", String::as_str)).expect("JSON");
    assert_eq!(failed["response"]["status"], "failed");
    assert!(
        failed["response"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("modelStreamErrorException")),
        "{failed}"
    );
}

/// An exception frame before any content (after `messageStart`, which carries nothing) is
/// caught before the client's stream starts: retried like an error status, then reported as
/// the gateway's own error if every attempt fails.
#[actix_web::test]
async fn an_exception_before_any_content_is_retried_before_the_stream_starts() {
    let emu = emulator();
    let gw = gateway(&emu);
    let key = format!("early-{}", std::process::id());
    let mut body = chat(
        "claude",
        &format!("[emulator:midstream_error=0,times=1,key={key}] Hi"),
    );
    body["stream"] = json!(true);
    let r = chat_at(&gw, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chunks = chunks(&r);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    assert_eq!(
        attempts(&gw, "bedrock").await,
        [
            "switchyard_upstream_attempts_total{provider=\"bedrock\",status=\"200\",outcome=\"ok\"} 1",
            "switchyard_upstream_attempts_total{provider=\"bedrock\",status=\"502\",outcome=\"error\"} 1",
        ]
    );
    let mut body = chat("claude-once", "[emulator:midstream_error=0] Hi");
    body["stream"] = json!(true);
    let r = chat_at(&gw, body).await;
    let body = r.assert_error(502, "upstream_stream_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("modelStreamErrorException")),
        "{body}"
    );
    assert_eq!(
        attempts(&gw, "once").await,
        [
            "switchyard_upstream_attempts_total{provider=\"once\",status=\"502\",outcome=\"error\"} 2"
        ]
    );
}

#[actix_web::test]
async fn bedrock_validation_errors_and_unsendable_requests_are_400s() {
    let emu = emulator();
    let gw = gateway(&emu);
    // Converse allows temperature up to 1: Bedrock's ValidationException, OpenAI-shaped.
    let mut hot = chat("claude", "Hi");
    hot["temperature"] = json!(1.5);
    let r = chat_at(&gw, hot).await;
    let body = r.assert_error(400, "ValidationException");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("temperature")),
        "{body}"
    );
    // An image by URL cannot be sent to Bedrock: refused before any upstream call.
    let r = chat_at(
        &gw,
        json!({"model": "claude", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    )
    .await;
    r.assert_error(400, "unsupported_image_url");
    // An inline image goes through.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let r = chat_at(
        &gw,
        json!({"model": "claude", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[actix_web::test]
async fn serve_emulator_takes_a_tenant_in_any_region_and_the_example_tenants() {
    let tenant = format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.bedrock]
type = "bedrock"
region = "ap-southeast-2"
api_key_env = "UNUSED_UNDER_EMULATOR"

[proxies.chat]
[[proxies.chat.routes]]
name = "claude"
provider = "bedrock"
model = "claude"
target_model = "{MODEL}"
"#
    );
    let gw = Gateway::start(&[("a", tenant)], &[], &["--emulator", "127.0.0.1:0"]);
    let r = chat_at(&gw, chat("claude", "Hi")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The README's first command: the example tenants, acme's Claude route.
    let root = repo_path("tenants");
    let tenants: Vec<(String, String)> = std::fs::read_dir(&root)
        .expect("tenants")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| {
            let p = e.path();
            let id = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (id, std::fs::read_to_string(&p).expect("read"))
        })
        .collect();
    let refs: Vec<(&str, String)> = tenants
        .iter()
        .map(|(id, t)| (id.as_str(), t.clone()))
        .collect();
    let gw = Gateway::start(&refs, &[], &["--emulator", "127.0.0.1:0"]);
    let r = post(
        gw.url("/acme/assistant/v1/chat/completions"),
        Some(KEY_A),
        chat("claude", "Hello"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-route"), "claude");
    assert_eq!(r.json()["model"], MODEL);
}
