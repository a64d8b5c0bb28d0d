//! The Bedrock adapter's unit tests: request encoding against exact JSON, the model id in the
//! path, SigV4 against an independently computed signature, answers from `fixtures/bedrock/`,
//! stop reasons and usage, error classification, and the eventstream decoder under every
//! split of its input and under garbage.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::ResponseError;
use actix_web::body::MessageBody;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue as EsValue, Message as EsMessage};
use serde_json::{Value, json};

use super::*;
use crate::api::canonical::{
    FinishReason, Image, ImageSource, Message, OutputFormat, Part, Role, Sampling, StreamEvent,
    Tool, ToolCall, ToolChoice, ToolResult, Usage,
};
use crate::config::{
    CircuitPolicy, ProviderKind, Proxy, Route, RoutingMode, RoutingText, Secret, Triggers,
};

const SECRET: &str = "emulator/Bedrock/SecretAccessKey/000000000";
const AKID: &str = "AKIAEMULATORBEDROCK0";

fn provider(credentials: Credentials, region: &str, base_url: &str) -> Provider {
    Provider {
        name: "bedrock".into(),
        settings: ProviderSettings::Bedrock {
            region: region.into(),
        },
        base_url: base_url.into(),
        credentials,
        timeout: Duration::from_secs(1),
        max_retries: 0,
        circuit: CircuitPolicy {
            failures: 0,
            open_for: Duration::from_secs(1),
        },
        prebuilt: Default::default(),
    }
}

fn aws(token: Option<&str>) -> Credentials {
    Credentials::Aws {
        access_key_id: Secret::new(AKID.into()),
        secret_access_key: Secret::new(SECRET.into()),
        session_token: token.map(|t| Secret::new(t.into())),
    }
}

fn decision(model: &str) -> Decision {
    let p = Arc::new(provider(aws(None), "us-east-1", "http://127.0.0.1:9"));
    let proxy = Arc::new(Proxy {
        tenant: "t".into(),
        id: "p".into(),
        routing: RoutingMode::Model,
        routes: vec![Route {
            name: "claude".into(),
            provider: 0,
            provider_name: "bedrock".into(),
            provider_kind: ProviderKind::Bedrock,
            model: "claude".into(),
            target_model: Some(model.into()),
            aliases: vec![],
            topics: vec![],
            fallbacks: vec![],
            fallback_on: Triggers::all(),
            first_byte_timeout: None,
            deadline: None,
            span_attributes: Default::default(),
            answer_headers: Default::default(),
        }],
        fallback: None,
        threshold: Some(0.5),
        deny_topics: vec![],
        routing_text: RoutingText::LastUser,
        span_attributes: Default::default(),
    });
    Decision::new(&proxy, 0, &[p], false, None).expect("decision")
}

fn user(parts: Vec<Part>) -> Message {
    Message {
        role: Role::User,
        parts,
    }
}

fn assistant(parts: Vec<Part>) -> Message {
    Message {
        role: Role::Assistant,
        parts,
    }
}

fn call(id: &str, name: &str, arguments: &str) -> Part {
    Part::ToolCall(ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
        signature: None,
    })
}

fn result(id: &str, content: &str) -> Part {
    Part::ToolResult(ToolResult {
        call_id: id.into(),
        name: None,
        content: content.into(),
        is_error: false,
    })
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Get weather".into()),
        parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
        strict: None,
    }
}

/// The conversation of `providers.md` §4.2.
fn example() -> Conversation {
    Conversation {
        system: vec!["Be brief.".into()],
        messages: vec![
            user(vec![
                Part::text("Weather here?"),
                Part::Image(Image {
                    source: ImageSource::from_url("data:image/png;base64,iVBORw0KGgo="),
                    detail: None,
                }),
            ]),
            assistant(vec![call("call_1", "get_weather", "{\"city\":\"Paris\"}")]),
            user(vec![result("call_1", "{\"temp\":21}")]),
        ],
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Auto,
        sampling: Sampling {
            temperature: Some(0.2),
            top_p: Some(0.9),
            max_tokens: Some(256),
            stop: vec!["END".into()],
            ..Sampling::default()
        },
        ..Conversation::default()
    }
}

fn encoded(conversation: &Conversation) -> Value {
    let bytes = request::encode(conversation).expect("encodes");
    serde_json::from_slice(&bytes).expect("JSON")
}

#[test]
fn the_providers_md_example_encodes_exactly() {
    assert_eq!(
        encoded(&example()),
        json!({
            "system": [{"text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [
                    {"text": "Weather here?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "{\"temp\":21}"}], "status": "success"}}]}
            ],
            "inferenceConfig": {"maxTokens": 256, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "get_weather", "description": "Get weather",
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}],
                "toolChoice": {"auto": {}}
            }
        })
    );
}

#[test]
fn tool_choices_map_to_the_converse_union() {
    let mut c = example();
    c.tool_choice = ToolChoice::Required;
    assert_eq!(encoded(&c)["toolConfig"]["toolChoice"], json!({"any": {}}));
    c.tool_choice = ToolChoice::Function("get_weather".into());
    assert_eq!(
        encoded(&c)["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "get_weather"}})
    );
    // Asking for a call with no tools declared is the client's mistake.
    c.tools.clear();
    let err = request::encode(&c).expect_err("no tools");
    assert_eq!(err.status_code(), 400);
    assert!(err.to_string().contains("declares no tools"), "{err}");
}

#[test]
fn tool_choice_none_sends_no_tool_config_and_writes_tool_history_as_text() {
    let mut c = example();
    c.tool_choice = ToolChoice::None;
    let body = encoded(&c);
    assert!(body.get("toolConfig").is_none(), "{body}");
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": [
            {"text": "[tool call call_1 to get_weather with arguments {\"city\":\"Paris\"}]"}]})
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "user", "content": [
            {"text": "[tool result for call call_1: {\"temp\":21}]"}]})
    );
    // Without tool history, none is simply no toolConfig.
    let plain = Conversation {
        messages: vec![user(vec![Part::text("hi")])],
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::None,
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&plain),
        json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    );
    // Tool history without declared tools: text too (Converse would refuse the blocks).
    let mut no_tools = example();
    no_tools.tools.clear();
    let body = encoded(&no_tools);
    assert!(body.get("toolConfig").is_none());
    assert_eq!(
        body["messages"][1]["content"][0]["text"]
            .as_str()
            .map(|t| t.starts_with("[tool call call_1")),
        Some(true)
    );
}

#[test]
fn consecutive_turns_of_one_role_merge_with_tool_results_first() {
    let c = Conversation {
        messages: vec![
            user(vec![Part::text("one")]),
            assistant(vec![
                Part::text(""),
                call("a", "get_weather", "{}"),
                call("b", "get_weather", ""),
            ]),
            user(vec![result("a", "r1")]),
            user(vec![Part::text("and also"), result("b", "")]),
            assistant(vec![Part::text("")]),
            user(vec![Part::text("two")]),
        ],
        tools: vec![weather_tool()],
        ..Conversation::default()
    };
    let body = encoded(&c);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"text": "one"}]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "a", "name": "get_weather", "input": {}}},
                {"toolUse": {"toolUseId": "b", "name": "get_weather", "input": {}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "a", "content": [{"text": "r1"}], "status": "success"}},
                {"toolResult": {"toolUseId": "b", "content": [], "status": "success"}},
                {"text": "and also"},
                {"text": "two"}]}
        ])
    );
}

#[test]
fn structured_output_sends_the_schema_as_a_string() {
    let c = Conversation {
        messages: vec![user(vec![Part::text("x")])],
        output: OutputFormat::JsonSchema {
            name: "person".into(),
            description: Some("A person".into()),
            schema: json!({"type": "object", "properties": {"n": {"type": "string"}}}),
            strict: Some(true),
        },
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&c)["outputConfig"],
        json!({"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
            "schema": "{\"properties\":{\"n\":{\"type\":\"string\"}},\"type\":\"object\"}",
            "name": "person",
            "description": "A person"}}}})
    );
    let mut plain = c.clone();
    plain.output = OutputFormat::JsonObject;
    assert!(encoded(&plain).get("outputConfig").is_none());
}

#[test]
fn signed_reasoning_goes_back_and_unsigned_reasoning_does_not() {
    let c = Conversation {
        messages: vec![
            user(vec![Part::text("q")]),
            assistant(vec![
                Part::Reasoning {
                    text: "think".into(),
                    signature: Some("sig".into()),
                },
                Part::Reasoning {
                    text: "unsigned".into(),
                    signature: None,
                },
                Part::text("a"),
            ]),
            user(vec![Part::text("q2")]),
        ],
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&c)["messages"][1]["content"],
        json!([{"reasoningContent": {"reasoningText": {"text": "think", "signature": "sig"}}}, {"text": "a"}])
    );
}

#[test]
fn client_mistakes_are_400s_that_say_what_is_wrong() {
    let mut c = example();
    c.messages[1] = assistant(vec![call("call_9", "get_weather", "{\"city\":")]);
    let err = request::encode(&c).expect_err("invalid JSON");
    assert_eq!(err.status_code(), 400);
    assert!(err.to_string().contains("call_9 (get_weather)"), "{err}");
    c.messages[1] = assistant(vec![call("call_8", "get_weather", "[1]")]);
    let err = request::encode(&c).expect_err("not an object");
    assert!(err.to_string().contains("call_8"), "{err}");

    let mut c = example();
    c.messages[0] = user(vec![Part::Image(Image {
        source: ImageSource::from_url("https://example.com/cat.png"),
        detail: None,
    })]);
    let err = request::encode(&c).expect_err("URL image");
    assert_eq!(err.status_code(), 400);
    assert!(err.to_string().contains("data URL"), "{err}");
    c.messages[0] = user(vec![Part::Image(Image {
        source: ImageSource::from_url("data:image/tiff;base64,AAAA"),
        detail: None,
    })]);
    let err = request::encode(&c).expect_err("tiff");
    assert!(err.to_string().contains("image/tiff"), "{err}");
}

#[test]
fn the_model_id_is_one_percent_encoded_path_segment() {
    let mut c = example();
    let call = Bedrock
        .prepare(&c, &decision("anthropic.claude-3-5-sonnet-20240620-v1:0"))
        .expect("prepared");
    assert_eq!(
        call.path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    assert!(!call.stream);
    c.stream = true;
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0";
    let call = Bedrock.prepare(&c, &decision(arn)).expect("prepared");
    assert_eq!(
        call.path,
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
    );
    assert!(call.stream);
    assert_eq!(call.body, request::encode(&c).expect("encodes"));
}

fn fixed_call() -> UpstreamCall {
    UpstreamCall {
        adapter: &Bedrock,
        method: Method::POST,
        path: "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse".into(),
        headers: vec![(
            HeaderName::from_static("traceparent"),
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        )],
        body: Bytes::from_static(br#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#),
        stream: false,
    }
}

fn header<'a>(req: &'a UpstreamRequest, name: &str) -> Option<&'a HeaderValue> {
    req.headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v)
}

/// 2023-11-14T22:13:20Z.
fn fixed_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

#[test]
fn sigv4_matches_an_independent_signer() {
    // The expected signatures come from a from-the-spec SigV4 implementation in Python's
    // standard library (`fixtures/bedrock/sigv4_oracle.py`), not from aws-sigv4: same key,
    // region eu-west-3, time, host, doubly-encoded canonical path and body.
    let base = "https://bedrock-runtime.eu-west-3.amazonaws.com";
    let p = provider(aws(None), "eu-west-3", base);
    let req = signed(&p, &fixed_call(), fixed_time()).expect("signed");
    assert_eq!(
        req.url,
        "https://bedrock-runtime.eu-west-3.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    assert_eq!(
        header(&req, "host").map(|v| v.as_bytes()),
        Some(&b"bedrock-runtime.eu-west-3.amazonaws.com"[..])
    );
    assert_eq!(
        header(&req, "x-amz-date").map(|v| v.as_bytes()),
        Some(&b"20231114T221320Z"[..])
    );
    let auth = header(&req, "authorization").expect("authorization");
    assert!(auth.is_sensitive());
    assert_eq!(
        auth.to_str().ok(),
        Some(
            "AWS4-HMAC-SHA256 Credential=AKIAEMULATORBEDROCK0/20231114/eu-west-3/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=63f39b4a702fbc82d8886ec62fb5208b78f5b4d6bdc9204236e298fbed016a26"
        )
    );
    assert!(header(&req, "x-amz-security-token").is_none());
    // The call's own headers travel (unsigned) after the signature's.
    assert!(header(&req, "traceparent").is_some());
    assert_eq!(req.body, fixed_call().body);

    let with_token = provider(
        aws(Some("emulator-bedrock-session-token")),
        "eu-west-3",
        base,
    );
    let req = signed(&with_token, &fixed_call(), fixed_time()).expect("signed");
    let token = header(&req, "x-amz-security-token").expect("token header");
    assert_eq!(token.as_bytes(), b"emulator-bedrock-session-token");
    assert!(token.is_sensitive());
    let auth = header(&req, "authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        auth.ends_with(
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
             Signature=96bb6ba6e90a44929604784bcc6b22fd2a0018bcf4e5b64dd36b2bc6d4a4c83a"
        ),
        "{auth}"
    );
}

#[test]
fn every_attempt_is_signed_afresh_and_api_keys_are_bearer() {
    let p = provider(aws(None), "us-east-1", "http://127.0.0.1:8123");
    let a = signed(&p, &fixed_call(), fixed_time()).expect("signed");
    let b = signed(&p, &fixed_call(), fixed_time() + Duration::from_secs(1)).expect("signed");
    assert_ne!(header(&a, "authorization"), header(&b, "authorization"));
    assert_eq!(
        header(&a, "host").map(|v| v.as_bytes()),
        Some(&b"127.0.0.1:8123"[..])
    );
    let now = Bedrock.attempt(&p, &fixed_call()).expect("attempt");
    assert!(
        header(&now, "authorization")
            .is_some_and(|v| v.as_bytes().starts_with(b"AWS4-HMAC-SHA256 "))
    );

    let key = provider(
        Credentials::ApiKey(Secret::new("ABSK-key".into())),
        "us-east-1",
        "http://127.0.0.1:8123",
    );
    let req = Bedrock.attempt(&key, &fixed_call()).expect("attempt");
    let auth = header(&req, "authorization").expect("authorization");
    assert_eq!(auth.as_bytes(), b"Bearer ABSK-key");
    assert!(auth.is_sensitive());
    assert!(header(&req, "x-amz-date").is_none());
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/bedrock/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn converse_answers_decode_from_the_fixtures() {
    let reply = reply::decode(&fixture("converse.json")).expect("decodes");
    assert_eq!(
        reply,
        Reply {
            id: None,
            model: None,
            parts: vec![Part::text("Hello! How can I help you today?")],
            finish: FinishReason::Stop,
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 12,
                ..Usage::default()
            }),
        }
    );
    let reply = reply::decode(&fixture("converse_tool_use.json")).expect("decodes");
    assert_eq!(reply.finish, FinishReason::ToolCalls);
    let calls: Vec<_> = reply.tool_calls().collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q");
    assert_eq!(calls[0].name, "get_weather");
    let args: Value = serde_json::from_str(&calls[0].arguments).expect("arguments are JSON");
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(
        reply.usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((150, 45))
    );

    assert!(Bedrock.decode_reply(b"{\"output\":").is_err(), "truncated");
}

#[test]
fn stop_reasons_usage_and_reasoning_map_to_canonical_terms() {
    for (stop, finish) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("tool_use", FinishReason::ToolCalls),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("guardrail_intervened", FinishReason::ContentFilter),
        ("content_filtered", FinishReason::ContentFilter),
        ("malformed_model_output", FinishReason::Stop),
    ] {
        assert_eq!(reply::finish_reason(stop), finish, "{stop}");
    }
    let body = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s1"}}},
            {"text": "ok"}]}},
        "stopReason": "max_tokens",
        "usage": {"inputTokens": 100, "outputTokens": 7, "totalTokens": 357,
                  "cacheReadInputTokens": 200, "cacheWriteInputTokens": 50},
        "metrics": {"latencyMs": 1}
    });
    let reply = reply::decode(body.to_string().as_bytes()).expect("decodes");
    assert_eq!(reply.finish, FinishReason::Length);
    assert_eq!(
        reply.parts,
        vec![
            Part::Reasoning {
                text: "hmm".into(),
                signature: Some("s1".into())
            },
            Part::text("ok")
        ]
    );
    assert_eq!(
        reply.usage,
        Some(Usage {
            input_tokens: 350,
            cached_input_tokens: 200,
            cache_write_tokens: 50,
            output_tokens: 7,
            reasoning_tokens: 0,
        })
    );
}

fn error_headers(kind: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        h.insert(HeaderName::from_static("x-amzn-errortype"), v);
    }
    h
}

fn rendered(err: &GatewayError) -> (u16, Value) {
    let res = err.error_response();
    let status = res.status().as_u16();
    let bytes = res.into_body().try_into_bytes().unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[test]
fn errors_are_classified_and_rendered_openai_shaped() {
    let p = provider(aws(None), "us-east-1", "http://x");
    let classify = |status: u16, kind: &str, body: &str| {
        super::classify(
            &p,
            StatusCode::from_u16(status).expect("status"),
            &error_headers(kind),
            body.as_bytes(),
        )
    };
    // Credentials: never the provider's words (they quote keys and signatures).
    for (status, kind) in [
        (403, "UnrecognizedClientException"),
        (403, "InvalidSignatureException"),
        (403, "AccessDeniedException"),
        (401, ""),
    ] {
        let err = classify(
            status,
            kind,
            r#"{"message":"The request signature we calculated does not match AKIAEMULATORBEDROCK0"}"#,
        );
        assert!(
            matches!(err, GatewayError::UpstreamCredentials { .. }),
            "{kind}: {err:?}"
        );
        let (code, body) = rendered(&err);
        assert_eq!(code, 502);
        assert_eq!(body["error"]["code"], "upstream_credentials_rejected");
        assert!(!body.to_string().contains("AKIA"));
    }
    let table = [
        // (upstream status, exception, front status, type, retryable)
        (
            400,
            "ValidationException",
            400,
            "invalid_request_error",
            false,
        ),
        (
            404,
            "ResourceNotFoundException",
            404,
            "invalid_request_error",
            false,
        ),
        (429, "ThrottlingException", 429, "rate_limit_error", true),
        (429, "ModelNotReadyException", 429, "rate_limit_error", true),
        (
            400,
            "ServiceQuotaExceededException",
            429,
            "rate_limit_error",
            true,
        ),
        (408, "ModelTimeoutException", 504, "timeout", true),
        (424, "ModelErrorException", 502, "server_error", true),
        (500, "InternalServerException", 500, "server_error", true),
        (
            503,
            "ServiceUnavailableException",
            503,
            "server_error",
            true,
        ),
    ];
    for (status, kind, front, kind_front, retryable) in table {
        let err = classify(status, kind, r#"{"message":"Something about it."}"#);
        assert_eq!(err.retryable(), retryable, "{kind}");
        let (code, body) = rendered(&err);
        assert_eq!(code, front, "{kind}");
        assert_eq!(
            body,
            json!({"error": {"message": "Something about it.", "type": kind_front, "param": null, "code": kind}}),
            "{kind}"
        );
    }
    // A retry hint is read and relayed; a model error names the model's status; ARNs go.
    let mut headers = error_headers("ThrottlingException");
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
    let err = super::classify(
        &p,
        StatusCode::TOO_MANY_REQUESTS,
        &headers,
        b"{\"message\":\"slow\"}",
    );
    let GatewayError::Upstream(u) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(u.retry_in, Some(Duration::from_secs(3)));
    assert_eq!(
        err.error_response()
            .headers()
            .get("retry-after")
            .map(|v| v.as_bytes()),
        Some(&b"3"[..])
    );
    let err = classify(
        424,
        "ModelErrorException",
        r#"{"message":"Model arn:aws:bedrock:us-east-1:123456789012:x failed.","originalStatusCode":500}"#,
    );
    assert_eq!(
        rendered(&err).1["error"]["message"],
        "Model [redacted ARN] failed. (the model returned HTTP 500)"
    );
    // No error type header and no JSON: the status decides.
    let err = super::classify(&p, StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"<html>");
    let (code, body) = rendered(&err);
    assert_eq!(code, 502);
    assert_eq!(body["error"]["code"], "bedrock_http_502");
    assert_eq!(body["error"]["type"], "server_error");
}

// ---------------------------------------------------------------------------------------------
// The stream decoder.
// ---------------------------------------------------------------------------------------------

fn frame(headers: Vec<(&'static str, &'static str)>, payload: &[u8]) -> Vec<u8> {
    let headers = headers
        .into_iter()
        .map(|(n, v)| Header::new(n, EsValue::String(v.into())))
        .collect();
    let message = EsMessage::new_from_parts(headers, payload.to_vec());
    let mut out = Vec::new();
    write_message_to(&message, &mut out).expect("frame");
    out
}

fn event(kind: &'static str, payload: &Value) -> Vec<u8> {
    frame(
        vec![
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception(kind: &'static str, message: &str) -> Vec<u8> {
    frame(
        vec![
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({ "message": message }).to_string().as_bytes(),
    )
}

/// `fixtures/bedrock/converse_stream_events.json` as frames, with a reasoning block and the
/// tool's second argument fragment added.
fn fixture_stream() -> Vec<u8> {
    let events: Vec<Value> =
        serde_json::from_slice(&fixture("converse_stream_events.json")).expect("fixture JSON");
    let mut out = Vec::new();
    for e in events {
        let kind: &'static str = match e["event"].as_str().unwrap_or_default() {
            "messageStart" => "messageStart",
            "contentBlockStart" => "contentBlockStart",
            "contentBlockDelta" => "contentBlockDelta",
            "contentBlockStop" => "contentBlockStop",
            "messageStop" => "messageStop",
            "metadata" => "metadata",
            other => panic!("unexpected fixture event {other}"),
        };
        out.extend(event(kind, &e["payload"]));
        if kind == "messageStart" {
            out.extend(event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Let me think."}}}),
            ));
            out.extend(event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig=="}}}),
            ));
        }
        if kind == "contentBlockDelta" && e["payload"]["contentBlockIndex"] == 1 {
            out.extend(event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"WZPZ\"}"}}}),
            ));
        }
    }
    out
}

fn expected_events() -> Vec<StreamEvent> {
    vec![
        StreamEvent::Start {
            id: None,
            model: None,
        },
        StreamEvent::Reasoning {
            text: "Let me think.".into(),
            signature: None,
        },
        StreamEvent::Reasoning {
            text: String::new(),
            signature: Some("sig==".into()),
        },
        StreamEvent::Text("Once upon".into()),
        StreamEvent::ToolCall {
            id: "tooluse_2SZjN0WuRk6BKpYUZx9YlQ".into(),
            name: "top_song".into(),
            signature: None,
        },
        StreamEvent::ToolArguments("{\"sign\":".into()),
        StreamEvent::ToolArguments("\"WZPZ\"}".into()),
        StreamEvent::Finish(FinishReason::Stop),
        StreamEvent::Usage(Usage {
            input_tokens: 15,
            output_tokens: 142,
            ..Usage::default()
        }),
    ]
}

/// Feeds `bytes` in the pieces `cuts` makes; the events and what `end` says.
fn run(bytes: &[u8], cuts: &[usize]) -> (Vec<StreamEvent>, Result<(), String>) {
    let mut decoder = Bedrock.stream_decoder();
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if let Err(e) = decoder.feed(&bytes[at..cut], &mut out) {
            return (out, Err(e));
        }
        at = cut;
    }
    let end = decoder.end(&mut out);
    (out, end)
}

#[test]
fn the_stream_decodes_the_same_however_it_is_split() {
    let bytes = fixture_stream();
    let (whole, end) = run(&bytes, &[]);
    assert_eq!(end, Ok(()));
    assert_eq!(whole, expected_events());
    // Every single split point, including inside every 12-byte prelude.
    for cut in 0..=bytes.len() {
        assert_eq!(
            run(&bytes, &[cut]),
            (whole.clone(), Ok(())),
            "split at {cut}"
        );
    }
    // Byte by byte.
    let all: Vec<usize> = (0..bytes.len()).collect();
    assert_eq!(run(&bytes, &all), (whole.clone(), Ok(())));
    // Random splits.
    let mut fuzz = crate::fuzz::Budget::new("bedrock stream splits", 300);
    while fuzz.more() {
        let mut cuts: Vec<usize> = (0..fuzz.rng.usize(1..20))
            .map(|_| fuzz.rng.usize(0..=bytes.len()))
            .collect();
        cuts.sort_unstable();
        assert_eq!(run(&bytes, &cuts), (whole.clone(), Ok(())), "cuts {cuts:?}");
    }
    // The stream folds into the reply it streams.
    let mut b = crate::api::canonical::ReplyBuilder::default();
    whole.iter().for_each(|e| b.push(e));
    let reply = b.into_reply();
    assert_eq!(reply.text(), "Once upon");
    assert_eq!(
        reply
            .tool_calls()
            .map(|c| c.arguments.as_str())
            .collect::<Vec<_>>(),
        ["{\"sign\":\"WZPZ\"}"]
    );
}

#[test]
fn exceptions_truncation_and_garbage_are_errors() {
    let start = event("messageStart", &json!({"role": "assistant"}));
    let text = event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
    );
    let stop = event("messageStop", &json!({"stopReason": "end_turn"}));

    // An exception frame mid-stream: the events before it, then its message.
    let mut bytes = [start.clone(), text.clone()].concat();
    bytes.extend(exception("modelStreamErrorException", "The model broke."));
    bytes.extend(stop.clone());
    let (events, end) = run(&bytes, &[]);
    assert_eq!(events.len(), 2);
    assert_eq!(
        end,
        Err("modelStreamErrorException: The model broke.".to_owned())
    );

    // An exception as the first frame is caught before the stream is relayed.
    let first = exception("throttlingException", "Too many tokens.");
    assert_eq!(
        Bedrock.first_event_error(&first).as_deref(),
        Some("throttlingException: Too many tokens.")
    );
    assert_eq!(Bedrock.first_event_error(&start), None);

    // A whole leading messageStart is noise to drop (its length), nothing else is.
    assert_eq!(Bedrock.leading_noise(&start), start.len());
    assert_eq!(
        Bedrock.leading_noise(&[start.clone(), first.clone()].concat()),
        start.len()
    );
    assert_eq!(Bedrock.leading_noise(&start[..start.len() - 1]), 0);
    assert_eq!(Bedrock.leading_noise(&text), 0);
    assert_eq!(Bedrock.leading_noise(&first), 0);
    assert_eq!(Bedrock.leading_noise(&[0xff; 40]), 0);
    let mut flipped = start.clone();
    flipped[20] ^= 1;
    assert_eq!(Bedrock.leading_noise(&flipped), 0);
    // After the drop, an exception before any content is the first event.
    let rest = [start.clone(), first.clone()].concat();
    let dropped = Bedrock.leading_noise(&rest);
    assert_eq!(
        Bedrock.first_event_error(&rest[dropped..]).as_deref(),
        Some("throttlingException: Too many tokens.")
    );

    // No messageStop: incomplete, even if metadata came.
    let meta = event(
        "metadata",
        &json!({"usage": {"inputTokens": 1, "outputTokens": 1}}),
    );
    let (_, end) = run(&[start.clone(), text.clone(), meta].concat(), &[]);
    assert_eq!(end, Err("the stream ended before messageStop".to_owned()));

    // Cut inside a frame (prelude or body) after messageStop: still an error.
    let whole = [start.clone(), text.clone(), stop.clone()].concat();
    assert_eq!(run(&whole, &[]).1, Ok(()));
    let extra = [whole.clone(), start[..5].to_vec()].concat();
    assert!(run(&extra, &[]).1.is_err());
    let extra = [whole.clone(), start[..20].to_vec()].concat();
    assert!(run(&extra, &[]).1.is_err());

    // A flipped byte anywhere in a frame is an error (CRC), never a panic or wrong events.
    for i in 0..text.len() {
        let mut bad = [start.clone(), text.clone(), stop.clone()].concat();
        bad[start.len() + i] ^= 0x40;
        let (events, end) = run(&bad, &[]);
        assert!(end.is_err(), "flip at {i}");
        assert!(events.len() <= 1, "flip at {i}: {events:?}");
    }
    // A prelude announcing an absurd length fails at once.
    let mut huge = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut d = Bedrock.stream_decoder();
    assert!(d.feed(&huge, &mut Vec::new()).is_err());
    huge.clear();

    // Random garbage, and garbage after valid frames: errors or waits, never panics.
    let mut fuzz = crate::fuzz::Budget::new("bedrock stream garbage", 2_000);
    while fuzz.more() {
        let rng = &mut fuzz.rng;
        let mut bytes = if rng.bool() {
            whole.clone()
        } else {
            Vec::new()
        };
        let len = rng.usize(0..64);
        bytes.extend((0..len).map(|_| rng.u8(..)));
        if rng.bool() && bytes.len() > 12 {
            // A plausible prelude over garbage: the length is right, the CRCs are not.
            let n = bytes.len() as u32;
            bytes[..4].copy_from_slice(&n.to_be_bytes());
        }
        let cuts: Vec<usize> = {
            let mut c: Vec<usize> = (0..rng.usize(0..4))
                .map(|_| rng.usize(0..=bytes.len()))
                .collect();
            c.sort_unstable();
            c
        };
        let (_, end) = run(&bytes, &cuts);
        assert_eq!(end.is_ok(), bytes == whole, "{bytes:?} {cuts:?}");
    }
}

#[test]
fn event_frames_without_message_type_event_are_refused() {
    let odd = frame(vec![(":event-type", "messageStart")], b"{}");
    let (_, end) = run(&odd, &[]);
    assert!(end.is_err());
    let unknown = [
        event("messageStart", &json!({})),
        event("someFutureEvent", &json!({"x": 1})),
        event("messageStop", &json!({"stopReason": "end_turn"})),
    ]
    .concat();
    let (events, end) = run(&unknown, &[]);
    assert_eq!(end, Ok(()));
    assert_eq!(events.len(), 2);
}
