//! The conformance table: one list of cases, run through the gateway against the bundled
//! emulator on every provider × front endpoint × stream mode.
//!
//! The emulator plans the same answer for the same conversation on every provider (the same
//! words, tool call, token counts and truncation), so every cell is checked against the same
//! expectation, and against the OpenAI cell of its case for what depends on the prompt (its
//! token count: a translation that drops or duplicates text shows up there). Each answer,
//! whatever its wire (a `chat.completion`, chunks, a `response` object or Responses events),
//! is first reduced to one [`Answer`]; streams are also checked for their own shape (role
//! first, `[DONE]` last; `sequence_number` from 0 without a gap, the terminal event's
//! response equal to what the deltas built).

mod common;

use common::http::*;
use common::*;
use serde_json::{Value, json};

/// The providers under test: (proxy, provider kind). Every proxy routes its one model to its
/// provider on the emulator; `bad-<proxy>` does the same with credentials the emulator refuses.
const PROVIDERS: &[&str] = &["openai", "azure", "gemini", "bedrock"];
/// The providers whose wire is not the front API (the request goes through the canonical
/// conversation model).
const TRANSLATED: &[&str] = &["gemini", "bedrock"];

fn tenant() -> String {
    let mut t = format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"
"#
    );
    for (name, key_env) in [("", "KEY"), ("bad-", "BAD_KEY")] {
        t.push_str(&format!(
            r#"
[providers.{name}openai]
type = "openai"
api_key_env = "C_OPENAI_{key_env}"
base_url = "http://127.0.0.1:1/v1"
base_url_env = "C_OPENAI_URL"
max_retries = 1
circuit_failures = 0

[providers.{name}azure]
type = "azure_openai"
endpoint = "http://127.0.0.1:1"
base_url_env = "C_ROOT_URL"
api_version = "2025-03-01-preview"
api_key_env = "C_AZURE_{key_env}"
max_retries = 1
circuit_failures = 0

[providers.{name}gemini]
type = "gemini"
base_url = "http://127.0.0.1:1"
base_url_env = "C_ROOT_URL"
api_key_env = "C_GEMINI_{key_env}"
max_retries = 1
circuit_failures = 0

[providers.{name}bedrock]
type = "bedrock"
region = "us-east-1"
endpoint = "http://127.0.0.1:1"
base_url_env = "C_ROOT_URL"
access_key_id_env = "C_AWS_ID"
secret_access_key_env = "C_AWS_{key_env}"
max_retries = 1
circuit_failures = 0

[proxies.{name}bedrock]
[[proxies.{name}bedrock.routes]]
name = "main"
provider = "{name}bedrock"
model = "gpt-4o"
target_model = "anthropic.claude-3-5-sonnet-20240620-v1:0"

[proxies.{name}openai]
[[proxies.{name}openai.routes]]
name = "main"
provider = "{name}openai"
model = "gpt-4o"

[proxies.{name}azure]
[[proxies.{name}azure.routes]]
name = "main"
provider = "{name}azure"
model = "gpt-4o"

[proxies.{name}gemini]
[[proxies.{name}gemini.routes]]
name = "main"
provider = "{name}gemini"
model = "gpt-4o"
target_model = "gemini-2.5-flash"
"#
        ));
    }
    t
}

fn start() -> (Running, Gateway) {
    let emu = emulator();
    let env = [
        ("C_OPENAI_URL", format!("{}/v1", emu.base)),
        ("C_ROOT_URL", emu.base.clone()),
        ("C_OPENAI_KEY", EMULATOR_KEY.to_owned()),
        ("C_OPENAI_BAD_KEY", "sk-wrong".to_owned()),
        ("C_AZURE_KEY", "a2e0c0ffee0e0u1a70r0a2e0c0ffee00".to_owned()),
        ("C_AZURE_BAD_KEY", "wrong-azure-key".to_owned()),
        (
            "C_GEMINI_KEY",
            switchyard::emulator::DEFAULT_GEMINI_KEY.to_owned(),
        ),
        ("C_GEMINI_BAD_KEY", "AIza-wrong".to_owned()),
        (
            "C_AWS_ID",
            switchyard::emulator::DEFAULT_BEDROCK_ACCESS_KEY_ID.to_owned(),
        ),
        (
            "C_AWS_KEY",
            switchyard::emulator::DEFAULT_BEDROCK_SECRET_ACCESS_KEY.to_owned(),
        ),
        ("C_AWS_BAD_KEY", "wrong/aws/secret".to_owned()),
    ];
    let gw = Gateway::start(&[("a", tenant())], &env, &[]);
    (emu, gw)
}

/// The emulator's answer: a fixed sentence, then filler cycled, one word per output token.
fn words(n: usize) -> String {
    const SENTENCE: [&str; 5] = ["Hello", " from", " the", " Switchyard", " emulator."];
    const FILLER: [&str; 7] = [
        " This", " is", " filler", " text", " for", " load", " tests.",
    ];
    (0..n)
        .map(|i| {
            SENTENCE
                .get(i)
                .copied()
                .unwrap_or_else(|| FILLER[(i - SENTENCE.len()) % FILLER.len()])
        })
        .collect()
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

/// An assistant turn that called `get_weather` with id `id`.
fn called(ids: &[&str]) -> Value {
    let calls: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}))
        .collect();
    json!({"role": "assistant", "content": null, "tool_calls": calls})
}

fn tool_result(id: &str) -> Value {
    json!({"role": "tool", "tool_call_id": id, "content": "{\"temp\":21}"})
}

/// An answer reduced to what every wire shares.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    text: String,
    /// `stop`, `length` or `tool_calls` (for Responses: derived from the status and output).
    finish: String,
    /// (name, arguments) of each tool call.
    calls: Vec<(String, String)>,
    /// (prompt, completion, total).
    usage: Option<(u64, u64, u64)>,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Answer(Answer),
    /// An error status before any byte: (status, `error.code`).
    Error(u16, String),
    /// A 200 stream that ended in an error event; the answer up to it.
    StreamError(String),
}

/// What a case must give.
#[derive(Clone, Debug)]
enum Expect {
    /// Text of this many words and this finish reason.
    Text(usize, &'static str),
    /// The text `{"answer":"…12 words…"}`.
    Json,
    /// One call of `get_weather` with `{"city":"example"}`.
    ToolCall,
    /// An error status (the code is checked only when given).
    Error(u16, Option<&'static str>),
    /// A stream that breaks after its first content.
    StreamError,
}

struct Case {
    name: &'static str,
    /// Chat messages; the Responses body is derived from them.
    messages: fn() -> Value,
    /// Extra chat fields (tools, response_format, max_completion_tokens).
    extra: fn() -> Value,
    /// The proxy prefix (`bad-` for refused credentials).
    proxy_prefix: &'static str,
    /// Only for streams (`Some(true)`), only without (`Some(false)`), or both.
    stream: Option<bool>,
    expect: Expect,
}

const fn case(
    name: &'static str,
    messages: fn() -> Value,
    extra: fn() -> Value,
    expect: Expect,
) -> Case {
    Case {
        name,
        messages,
        extra,
        proxy_prefix: "",
        stream: None,
        expect,
    }
}

fn none() -> Value {
    json!({})
}

fn hello() -> Value {
    json!([{"role": "user", "content": "Say hello."}])
}

const CASES: &[Case] = &[
    case("plain text", hello, none, Expect::Text(12, "stop")),
    case(
        "system prompt",
        || json!([{"role": "system", "content": "Be brief and kind."}, {"role": "user", "content": "Say hello."}]),
        none,
        Expect::Text(12, "stop"),
    ),
    case(
        "multi-turn",
        || {
            json!([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": "Say hello again."}])
        },
        none,
        Expect::Text(12, "stop"),
    ),
    case(
        "image input",
        || {
            json!([{"role": "user", "content": [{"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}}]}])
        },
        none,
        Expect::Text(12, "stop"),
    ),
    case(
        "tools",
        || json!([{"role": "user", "content": "Weather in Paris?"}]),
        || json!({"tools": [weather_tool()], "tool_choice": "auto"}),
        Expect::ToolCall,
    ),
    case(
        "tool results",
        || {
            json!([{"role": "user", "content": "Weather in Paris?"}, called(&["call_1"]),
            tool_result("call_1")])
        },
        || json!({"tools": [weather_tool()]}),
        Expect::Text(12, "stop"),
    ),
    case(
        "parallel tool results",
        || {
            json!([{"role": "user", "content": "Weather in Paris and Rome?"}, called(&["call_1", "call_2"]),
            tool_result("call_1"), tool_result("call_2")])
        },
        || json!({"tools": [weather_tool()]}),
        Expect::Text(12, "stop"),
    ),
    case(
        "structured output",
        || json!([{"role": "user", "content": "Answer in the schema."}]),
        || {
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer",
            "schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}, "strict": true}}})
        },
        Expect::Json,
    ),
    case(
        "max tokens gives length",
        || json!([{"role": "user", "content": "Say a lot. [emulator:tokens=20]"}]),
        // OpenAI's smallest max_output_tokens.
        || json!({"max_completion_tokens": 16}),
        Expect::Text(16, "length"),
    ),
    case(
        "429 then success",
        || json!([{"role": "user", "content": "Hi [emulator:status=429,retry_after=0,times=1,key=KEY]"}]),
        none,
        Expect::Text(12, "stop"),
    ),
    case(
        "429 for every attempt",
        || json!([{"role": "user", "content": "Hi [emulator:status=429,retry_after=0,times=2,key=KEY]"}]),
        none,
        Expect::Error(429, None),
    ),
    case(
        "5xx",
        || json!([{"role": "user", "content": "Hi [emulator:status=500]"}]),
        none,
        Expect::Error(500, None),
    ),
    Case {
        name: "mid-stream error",
        messages: || json!([{"role": "user", "content": "Hi [emulator:midstream_error=3]"}]),
        extra: none,
        proxy_prefix: "",
        stream: Some(true),
        expect: Expect::StreamError,
    },
    Case {
        name: "credentials refused",
        messages: hello,
        extra: none,
        proxy_prefix: "bad-",
        stream: None,
        expect: Expect::Error(502, Some("upstream_credentials_rejected")),
    },
];

/// The Responses body for a case's chat messages and fields.
fn responses_body(messages: &Value, extra: &Value, stream: bool) -> Value {
    let mut input = Vec::new();
    let mut instructions = None;
    for m in messages.as_array().into_iter().flatten() {
        match m["role"].as_str() {
            Some("system") => instructions = Some(m["content"].clone()),
            Some("tool") => input.push(json!({"type": "function_call_output",
                "call_id": m["tool_call_id"], "output": m["content"]})),
            Some("assistant") if m.get("tool_calls").is_some() => {
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    input.push(json!({"type": "function_call", "call_id": c["id"],
                        "name": c["function"]["name"], "arguments": c["function"]["arguments"]}));
                }
            }
            _ => {
                let content = match &m["content"] {
                    Value::Array(parts) => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p["type"].as_str() {
                                Some("image_url") => json!({"type": "input_image", "image_url": p["image_url"]["url"]}),
                                _ => json!({"type": "input_text", "text": p["text"]}),
                            })
                            .collect(),
                    ),
                    other => other.clone(),
                };
                input.push(json!({"role": m["role"], "content": content}));
            }
        }
    }
    let mut body = json!({"model": "gpt-4o", "input": input, "stream": stream});
    if let Some(i) = instructions {
        body["instructions"] = i;
    }
    if let Some(tools) = extra["tools"].as_array() {
        body["tools"] = tools
            .iter()
            .map(|t| {
                let mut f = t["function"].clone();
                f["type"] = json!("function");
                f
            })
            .collect();
    }
    if let Some(choice) = extra.get("tool_choice") {
        body["tool_choice"] = choice.clone();
    }
    if let Some(rf) = extra.get("response_format") {
        let mut format = rf["json_schema"].clone();
        format["type"] = json!("json_schema");
        body["text"] = json!({ "format": format });
    }
    if let Some(n) = extra.get("max_completion_tokens") {
        body["max_output_tokens"] = n.clone();
    }
    body
}

fn chat_answer(v: &Value) -> Answer {
    let choice = &v["choices"][0];
    Answer {
        text: choice["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        finish: choice["finish_reason"].as_str().unwrap_or("").to_owned(),
        calls: choice["message"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["function"]["name"].as_str().unwrap_or("").to_owned(),
                    c["function"]["arguments"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        usage: usage(&v["usage"], "prompt_tokens", "completion_tokens"),
    }
}

fn usage(u: &Value, input: &str, output: &str) -> Option<(u64, u64, u64)> {
    Some((
        u[input].as_u64()?,
        u[output].as_u64()?,
        u["total_tokens"].as_u64()?,
    ))
}

/// A chat stream reduced to its answer, checking its shape on the way.
fn chat_stream(cell: &str, text: &str) -> Outcome {
    let events = sse_data(text);
    assert!(!events.is_empty(), "{cell}: empty stream");
    let mut answer = Answer::default();
    let mut calls: Vec<(String, String)> = Vec::new();
    for (i, data) in events.iter().enumerate() {
        if data == "[DONE]" {
            assert_eq!(i, events.len() - 1, "{cell}: [DONE] is last");
            answer.calls = calls;
            return Outcome::Answer(answer);
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{cell}: {e}: {data}"));
        if let Some(e) = v.get("error") {
            assert_eq!(i, events.len() - 1, "{cell}: the error event is last");
            return Outcome::StreamError(e["code"].as_str().unwrap_or("").to_owned());
        }
        assert_eq!(v["object"], "chat.completion.chunk", "{cell}");
        if let Some(u) = usage(&v["usage"], "prompt_tokens", "completion_tokens") {
            assert_eq!(
                v["choices"],
                json!([]),
                "{cell}: usage comes in its own chunk"
            );
            answer.usage = Some(u);
            continue;
        }
        let choice = &v["choices"][0];
        let delta = &choice["delta"];
        if i == 0 {
            assert_eq!(
                delta["role"], "assistant",
                "{cell}: the first chunk has the role"
            );
        }
        answer
            .text
            .push_str(delta["content"].as_str().unwrap_or(""));
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = c["index"].as_u64().expect("a tool-call index") as usize;
            if index == calls.len() {
                assert!(c["id"].is_string(), "{cell}: a new call has its id");
                calls.push((String::new(), String::new()));
            }
            let call = &mut calls[index];
            call.0
                .push_str(c["function"]["name"].as_str().unwrap_or(""));
            call.1
                .push_str(c["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            answer.finish = f.to_owned();
        }
    }
    panic!("{cell}: the stream ended without [DONE] or an error event: {text}");
}

fn response_answer(r: &Value) -> Answer {
    let mut answer = Answer::default();
    for item in r["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for c in item["content"].as_array().into_iter().flatten() {
                    answer.text.push_str(c["text"].as_str().unwrap_or(""));
                }
            }
            Some("function_call") => answer.calls.push((
                item["name"].as_str().unwrap_or("").to_owned(),
                item["arguments"].as_str().unwrap_or("").to_owned(),
            )),
            _ => {}
        }
    }
    answer.finish = match (r["status"].as_str(), &r["incomplete_details"]["reason"]) {
        (Some("incomplete"), reason) if reason == "max_output_tokens" => "length",
        (Some("completed"), _) if !answer.calls.is_empty() => "tool_calls",
        (Some("completed"), _) => "stop",
        _ => "unexpected",
    }
    .to_owned();
    answer.usage = usage(&r["usage"], "input_tokens", "output_tokens");
    answer
}

/// A Responses stream reduced to its answer, checking its shape on the way.
fn responses_stream(cell: &str, text: &str) -> Outcome {
    let events: Vec<Value> = sse_data(text)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{cell}: {e}: {d}")))
        .collect();
    assert_eq!(events[0]["type"], "response.created", "{cell}");
    let mut deltas = String::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["sequence_number"], i as u64,
            "{cell}: sequence numbers from 0, no gap"
        );
        let kind = e["type"].as_str().unwrap_or("");
        if kind == "response.output_text.delta" {
            deltas.push_str(e["delta"].as_str().unwrap_or(""));
        }
        let last = i == events.len() - 1;
        match kind {
            "response.completed" | "response.incomplete" => {
                assert!(last, "{cell}: {kind} is last");
                let answer = response_answer(&e["response"]);
                assert_eq!(
                    answer.text, deltas,
                    "{cell}: the deltas build the final text"
                );
                return Outcome::Answer(answer);
            }
            "response.failed" | "error" => {
                // OpenAI may send both, `error` first.
                let rest = &events[i + 1..];
                assert!(
                    rest.iter().all(|e| e["type"] == "response.failed") && rest.len() <= 1,
                    "{cell}: only the failure events end the stream: {rest:?}"
                );
                let code = e["response"]["error"]["code"]
                    .as_str()
                    .or(e["code"].as_str())
                    .unwrap_or("");
                return Outcome::StreamError(code.to_owned());
            }
            _ => {}
        }
    }
    panic!("{cell}: no terminal event: {text}");
}

fn cell_name(case: &Case, provider: &str, responses: bool, stream: bool) -> String {
    let endpoint = if responses { "responses" } else { "chat" };
    format!("{} / {provider} / {endpoint} / stream={stream}", case.name)
}

async fn run(gw: &Gateway, provider: &str, case: &Case, responses: bool, stream: bool) -> Outcome {
    let cell = cell_name(case, provider, responses, stream);
    // Unique per cell (fault counters are per key) and of one length (it is prompt text).
    static CELLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CELLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fault_key = format!("cell{n:06}");
    let messages: Value = serde_json::from_str(
        &(case.messages)()
            .to_string()
            .replace("key=KEY", &format!("key={fault_key}")),
    )
    .expect("json");
    let extra = (case.extra)();
    let proxy = format!("{}{provider}", case.proxy_prefix);
    let (path, body) = if responses {
        ("responses", responses_body(&messages, &extra, stream))
    } else {
        let mut body = json!({"model": "gpt-4o", "messages": messages, "stream": stream});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        ("chat/completions", body)
    };
    let r = post(gw.url(&format!("/a/{proxy}/v1/{path}")), Some(KEY_A), body).await;
    if r.status != 200 {
        let code = r.json()["error"]["code"].as_str().unwrap_or("").to_owned();
        return Outcome::Error(r.status.as_u16(), code);
    }
    match (responses, stream) {
        (false, false) => Outcome::Answer(chat_answer(&r.json())),
        (false, true) => chat_stream(&cell, &r.text()),
        (true, false) => Outcome::Answer(response_answer(&r.json())),
        (true, true) => responses_stream(&cell, &r.text()),
    }
}

fn check(cell: &str, expect: &Expect, outcome: &Outcome) {
    match (expect, outcome) {
        (Expect::Text(n, finish), Outcome::Answer(a)) => {
            assert_eq!(a.text, words(*n), "{cell}");
            assert_eq!(a.finish, *finish, "{cell}");
            assert!(a.calls.is_empty(), "{cell}: {:?}", a.calls);
            let (input, output, total) = a.usage.unwrap_or_else(|| panic!("{cell}: no usage"));
            assert_eq!(output, *n as u64, "{cell}: one output token per word");
            assert_eq!(total, input + output, "{cell}");
        }
        (Expect::Json, Outcome::Answer(a)) => {
            assert_eq!(
                a.text,
                format!("{{\"answer\":\"{}\"}}", words(12)),
                "{cell}"
            );
            assert_eq!(a.finish, "stop", "{cell}");
        }
        (Expect::ToolCall, Outcome::Answer(a)) => {
            assert_eq!(a.text, "", "{cell}");
            assert_eq!(a.finish, "tool_calls", "{cell}");
            assert_eq!(
                a.calls,
                [(
                    "get_weather".to_owned(),
                    "{\"city\":\"example\"}".to_owned()
                )],
                "{cell}"
            );
            let (_, output, _) = a.usage.unwrap_or_else(|| panic!("{cell}: no usage"));
            assert_eq!(
                output, 3,
                "{cell}: 18 bytes of arguments in 8-byte fragments"
            );
        }
        (Expect::Error(status, code), Outcome::Error(s, c)) => {
            assert_eq!(s, status, "{cell}: {c}");
            if let Some(code) = code {
                assert_eq!(c, code, "{cell}");
            }
        }
        (Expect::StreamError, Outcome::StreamError(code)) => {
            assert!(!code.is_empty(), "{cell}: the error event has a code");
        }
        (expect, outcome) => panic!("{cell}: expected {expect:?}, got {outcome:?}"),
    }
}

#[actix_web::test]
async fn every_case_on_every_provider_endpoint_and_stream_mode() {
    let (_emu, gw) = start();
    let mut cells = 0;
    for case in CASES {
        // Prompt tokens per endpoint: the emulator counts a Responses item as a message, and
        // two parallel calls are one chat message but two items.
        let mut prompt_tokens: [Vec<(String, u64)>; 2] = Default::default();
        for provider in PROVIDERS {
            for responses in [false, true] {
                for stream in [false, true] {
                    if case.stream.is_some_and(|s| s != stream) {
                        continue;
                    }
                    let cell = cell_name(case, provider, responses, stream);
                    let outcome = run(&gw, provider, case, responses, stream).await;
                    check(&cell, &case.expect, &outcome);
                    if let Outcome::Answer(Answer {
                        usage: Some((input, ..)),
                        ..
                    }) = outcome
                    {
                        // A translated provider sends one conversation whatever the front
                        // endpoint: its cells count like chat's.
                        let group = responses && !TRANSLATED.contains(provider);
                        prompt_tokens[usize::from(group)].push((cell, input));
                    }
                    cells += 1;
                }
            }
        }
        // The same conversation is the same prompt on every provider and in both modes.
        for group in &prompt_tokens {
            if let Some((first, n)) = group.first() {
                for (cell, m) in group {
                    assert_eq!(m, n, "prompt tokens of {cell} differ from {first}'s");
                }
            }
        }
    }
    let per_provider: usize = CASES
        .iter()
        .map(|c| if c.stream.is_some() { 2 } else { 4 })
        .sum();
    assert_eq!(cells, per_provider * PROVIDERS.len());
}

/// Streams are relayed as they come, on every provider and both endpoints: with the upstream
/// waiting 300 ms between its 4 chunks, the client has its first content about 900 ms before
/// the stream ends (a relay that buffered the stream would deliver it all at once).
#[actix_web::test]
async fn every_provider_streams_incrementally() {
    use futures_util::StreamExt;
    let (_emu, gw) = start();
    for provider in PROVIDERS {
        for (path, body) in [
            (
                "chat/completions",
                json!({"model": "gpt-4o", "stream": true,
                    "messages": [{"role": "user", "content": "Hi [emulator:chunk_ms=300,tokens=4]"}]}),
            ),
            (
                "responses",
                json!({"model": "gpt-4o", "stream": true, "input": "Hi [emulator:chunk_ms=300,tokens=4]"}),
            ),
        ] {
            let cell = format!("{provider} / {path}");
            let mut res = client()
                .post(gw.url(&format!("/a/{provider}/v1/{path}")))
                .bearer_auth(KEY_A)
                .send_json(&body)
                .await
                .expect("response");
            assert_eq!(res.status(), 200, "{cell}");
            let mut seen = String::new();
            let mut first_content = None;
            while let Some(chunk) = res.next().await {
                seen.push_str(&String::from_utf8_lossy(&chunk.expect("bytes")));
                if first_content.is_none()
                    && (seen.contains("\"content\":\"Hello\"")
                        || seen.contains("\"delta\":\"Hello\""))
                {
                    first_content = Some(std::time::Instant::now());
                }
            }
            let first = first_content.unwrap_or_else(|| panic!("{cell}: no first word: {seen}"));
            let gap = first.elapsed();
            assert!(
                gap >= std::time::Duration::from_millis(700),
                "{cell}: the first word came only {gap:?} before the end"
            );
        }
    }
}
