//! The adapter's tests: request bodies against exact JSON for the shapes of `providers.md`
//! §2.2, URLs and auth, and the classification of Google's error answers.

use super::*;
use crate::api::canonical::{
    Image, ImageSource, Message, OutputFormat, Part, Role, Sampling, Tool, ToolCall, ToolChoice,
    ToolResult,
};
use crate::config::Credentials;
use crate::config::{CircuitPolicy, Secret};
use serde_json::{Value, json};

fn encoded(conversation: &Conversation, model: &str) -> Value {
    let body = request::encode(conversation, model).expect("encodes");
    serde_json::from_slice(&body).expect("JSON")
}

fn user(text: &str) -> Message {
    Message {
        role: Role::User,
        parts: vec![Part::text(text)],
    }
}

fn assistant(parts: Vec<Part>) -> Message {
    Message {
        role: Role::Assistant,
        parts,
    }
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Get weather".into()),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": false}),
        strict: Some(true),
    }
}

fn fixture(name: &str) -> Bytes {
    let path = format!("{}/fixtures/gemini/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

#[test]
fn a_system_prompt_and_turns_become_system_instruction_and_contents() {
    let conversation = Conversation {
        system: vec!["Be brief.".into(), "Answer in French.".into()],
        messages: vec![
            user("Hi"),
            assistant(vec![Part::text("Bonjour")]),
            user("Weather?"),
        ],
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&conversation, "gemini-2.5-flash"),
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Bonjour"}]},
                {"role": "user", "parts": [{"text": "Weather?"}]}
            ]
        })
    );
}

#[test]
fn same_role_turns_merge_and_reasoning_and_empty_text_are_not_sent() {
    let conversation = Conversation {
        system: vec![String::new()],
        messages: vec![
            user("a"),
            user(""),
            user("b"),
            assistant(vec![Part::text("")]),
            assistant(vec![Part::Reasoning {
                text: "hmm".into(),
                signature: Some("anthropic-sig".into()),
            }]),
            assistant(vec![Part::text("c")]),
        ],
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&conversation, "gemini-2.5-flash"),
        json!({"contents": [
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
            {"role": "model", "parts": [{"text": "c"}]}
        ]})
    );
}

#[test]
fn inline_images_go_as_inline_data_and_urls_are_refused() {
    let image = |source| {
        Part::Image(Image {
            source,
            detail: Some("high".into()),
        })
    };
    let conversation = Conversation {
        messages: vec![Message {
            role: Role::User,
            parts: vec![
                Part::text("What is this?"),
                image(ImageSource::from_url("data:image/png;base64,iVBORw0K")),
            ],
        }],
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&conversation, "gemini-2.5-flash"),
        json!({"contents": [{"role": "user", "parts": [
            {"text": "What is this?"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}}
        ]}]})
    );
    let conversation = Conversation {
        messages: vec![Message {
            role: Role::User,
            parts: vec![image(ImageSource::from_url("https://example.com/cat.png"))],
        }],
        ..Conversation::default()
    };
    match request::encode(&conversation, "gemini-2.5-flash") {
        Err(GatewayError::InvalidRequest {
            message,
            param,
            code,
        }) => {
            assert!(message.contains("https://example.com/cat.png"), "{message}");
            assert!(message.contains("inline"), "{message}");
            assert_eq!(param.as_deref(), Some("image_url"));
            assert_eq!(code, Some("unsupported_image_url"));
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn tools_calls_results_and_signatures_round_trip_as_gemini_wants() {
    let conversation = Conversation {
        messages: vec![
            user("Weather in Paris and Rome?"),
            assistant(vec![
                Part::text("Checking."),
                Part::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\": \"Paris\"}".into(),
                    signature: Some("CiQB".into()),
                }),
                Part::ToolCall(ToolCall {
                    id: "call_2".into(),
                    name: "get_weather".into(),
                    arguments: String::new(),
                    signature: None,
                }),
            ]),
            Message {
                role: Role::User,
                parts: vec![
                    Part::ToolResult(ToolResult {
                        call_id: "call_1".into(),
                        name: Some("get_weather".into()),
                        content: "{\"temp\":21}".into(),
                        is_error: false,
                    }),
                    Part::ToolResult(ToolResult {
                        call_id: "call_2".into(),
                        name: Some("get_weather".into()),
                        content: "city is required".into(),
                        is_error: true,
                    }),
                ],
            },
            Message {
                role: Role::User,
                parts: vec![Part::ToolResult(ToolResult {
                    call_id: "call_3".into(),
                    name: Some("get_weather".into()),
                    content: "[1, 2]".into(),
                    is_error: false,
                })],
            },
        ],
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Function("get_weather".into()),
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&conversation, "gemini-3-pro-preview"),
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
                {"role": "model", "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                     "thoughtSignature": "CiQB"},
                    {"functionCall": {"name": "get_weather", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                    {"functionResponse": {"name": "get_weather",
                     "response": {"error": "city is required"}}},
                    {"functionResponse": {"name": "get_weather", "response": {"output": "[1, 2]"}}}
                ]}
            ],
            "tools": [{"functionDeclarations": [{
                "name": "get_weather",
                "description": "Get weather",
                "parametersJsonSchema": {"type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"], "additionalProperties": false}
            }]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                "allowedFunctionNames": ["get_weather"]}}
        })
    );
}

#[test]
fn the_object_arguments_are_embedded_byte_for_byte() {
    let conversation = Conversation {
        messages: vec![
            user("x"),
            assistant(vec![Part::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "f".into(),
                arguments: "{\"n\":1.50,\"s\":\"é\"}".into(),
                signature: None,
            })]),
        ],
        ..Conversation::default()
    };
    let body = request::encode(&conversation, "gemini-2.5-flash").expect("encodes");
    let text = String::from_utf8(body).expect("UTF-8");
    assert!(text.contains("\"args\":{\"n\":1.50,\"s\":\"é\"}"), "{text}");
}

#[test]
fn tool_choices_are_modes() {
    let config = |choice| {
        let conversation = Conversation {
            messages: vec![user("x")],
            tools: vec![weather_tool()],
            tool_choice: choice,
            ..Conversation::default()
        };
        encoded(&conversation, "gemini-2.5-flash")
            .get("toolConfig")
            .cloned()
    };
    assert_eq!(config(ToolChoice::Auto), None);
    assert_eq!(
        config(ToolChoice::None),
        Some(json!({"functionCallingConfig": {"mode": "NONE"}}))
    );
    assert_eq!(
        config(ToolChoice::Required),
        Some(json!({"functionCallingConfig": {"mode": "ANY"}}))
    );
}

#[test]
fn bad_tool_history_is_a_400_that_names_the_call() {
    let result_without_call = Conversation {
        messages: vec![Message {
            role: Role::User,
            parts: vec![Part::ToolResult(ToolResult {
                call_id: "call_zz".into(),
                name: None,
                content: "x".into(),
                is_error: false,
            })],
        }],
        ..Conversation::default()
    };
    match request::encode(&result_without_call, "gemini-2.5-flash") {
        Err(GatewayError::InvalidRequest { message, code, .. }) => {
            assert!(message.contains("call_zz"), "{message}");
            assert_eq!(code, Some("unknown_tool_call_id"));
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
    let bad_arguments = Conversation {
        messages: vec![assistant(vec![Part::ToolCall(ToolCall {
            id: "call_9".into(),
            name: "f".into(),
            arguments: "[1]".into(),
            signature: None,
        })])],
        ..Conversation::default()
    };
    match request::encode(&bad_arguments, "gemini-2.5-flash") {
        Err(GatewayError::InvalidRequest { message, .. }) => {
            assert!(message.contains("call_9"), "{message}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn structured_output_and_sampling_go_in_generation_config() {
    let conversation = Conversation {
        messages: vec![user("x")],
        output: OutputFormat::JsonSchema {
            name: "answer".into(),
            description: None,
            schema: json!({"type": "object", "properties": {"a": {"const": 1}}}),
            strict: Some(true),
        },
        sampling: Sampling {
            temperature: Some(0.2),
            top_p: Some(0.9),
            max_tokens: Some(256),
            stop: vec!["END".into()],
            seed: Some(7),
            presence_penalty: Some(0.0),
            frequency_penalty: Some(0.5),
        },
        reasoning_effort: Some("low".into()),
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&conversation, "gemini-2.5-flash")["generationConfig"],
        json!({
            "temperature": 0.2, "topP": 0.9, "maxOutputTokens": 256, "stopSequences": ["END"],
            "seed": 7, "presencePenalty": 0.0, "frequencyPenalty": 0.5,
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"a": {"const": 1}}},
            "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}
        })
    );
    let json_object = Conversation {
        messages: vec![user("x")],
        output: OutputFormat::JsonObject,
        ..Conversation::default()
    };
    assert_eq!(
        encoded(&json_object, "gemini-2.5-flash")["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
}

#[test]
fn reasoning_effort_is_a_budget_on_gemini_2_and_a_level_after() {
    let thinking = |effort: &str, model: &str| {
        let conversation = Conversation {
            messages: vec![user("x")],
            reasoning_effort: Some(effort.into()),
            ..Conversation::default()
        };
        request::encode(&conversation, model).map(|body| {
            serde_json::from_slice::<Value>(&body).expect("JSON")["generationConfig"]
                ["thinkingConfig"]
                .clone()
        })
    };
    let ok = |effort, model| thinking(effort, model).expect("encodes");
    assert_eq!(ok("none", "gemini-2.5-flash"), json!({"thinkingBudget": 0}));
    assert_eq!(
        ok("high", "gemini-2.5-pro"),
        json!({"thinkingBudget": 24576, "includeThoughts": true})
    );
    assert_eq!(
        ok("medium", "gemini-3-flash-preview"),
        json!({"thinkingLevel": "MEDIUM", "includeThoughts": true})
    );
    assert_eq!(
        ok("medium", "gemini-3-pro-preview"),
        json!({"thinkingLevel": "HIGH", "includeThoughts": true})
    );
    assert_eq!(
        ok("minimal", "gemini-3-pro-preview"),
        json!({"thinkingLevel": "LOW", "includeThoughts": true})
    );
    assert_eq!(
        ok("low", "gemini-flash-latest"),
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    assert_eq!(
        ok("low", "gemini-3.1-pro-preview"),
        json!({"thinkingLevel": "LOW", "includeThoughts": true})
    );
    assert!(matches!(
        thinking("extreme", "gemini-2.5-flash"),
        Err(GatewayError::InvalidRequest { ref param, .. }) if param.as_deref() == Some("reasoning_effort")
    ));
}

#[test]
fn paths_name_the_method_and_models_cannot_escape_their_segment() {
    assert_eq!(
        path("v1beta", "gemini-2.5-flash", false),
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        path("v1beta", upstream_model("models/gemini-2.5-flash"), true),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        path("v1", "a/../b:x?k=1", false),
        "/v1/models/a%2F..%2Fb%3Ax%3Fk%3D1:generateContent"
    );
}

fn provider() -> Provider {
    Provider {
        name: "gem".into(),
        settings: ProviderSettings::Gemini {
            api_version: "v1beta".into(),
        },
        base_url: "http://127.0.0.1:9".into(),
        credentials: Credentials::ApiKey(Secret::new("AIza-test".into())),
        timeout: Duration::from_secs(1),
        max_retries: 0,
        circuit: CircuitPolicy {
            failures: 0,
            open_for: Duration::from_secs(1),
        },
        prebuilt: Default::default(),
    }
}

#[test]
fn every_attempt_carries_the_key_in_a_sensitive_x_goog_api_key() {
    let call = UpstreamCall {
        adapter: &Gemini,
        method: Method::POST,
        path: "/v1beta/models/gemini-2.5-flash:generateContent".into(),
        headers: vec![(
            HeaderName::from_static("traceparent"),
            HeaderValue::from_static("00-x"),
        )],
        body: Bytes::from_static(b"{}"),
        stream: false,
    };
    let req = Gemini.attempt(&provider(), &call).expect("built");
    assert_eq!(
        req.url,
        "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(req.headers.len(), 2);
    assert_eq!(req.headers[0].0, "x-goog-api-key");
    assert_eq!(req.headers[0].1, "AIza-test");
    assert!(req.headers[0].1.is_sensitive());
    assert_eq!(req.headers[1].0, "traceparent");
    assert!(Gemini.translator().is_some());
    assert_eq!(Gemini.framing(), Framing::Sse);
}

fn classify(status: u16, body: Bytes) -> GatewayError {
    let status = StatusCode::from_u16(status).expect("status");
    let headers = actix_web::http::header::HeaderMap::new();
    let answer = ErrorAnswer {
        status,
        headers: &headers,
        body,
    };
    Gemini.classify(&provider(), answer)
}

fn upstream(err: GatewayError) -> Box<crate::error::UpstreamFailure> {
    match err {
        GatewayError::Upstream(u) => u,
        other => panic!("expected an upstream failure, got {other:?}"),
    }
}

#[test]
fn an_invalid_key_is_the_gateways_credentials_not_a_400() {
    let err = classify(400, fixture("error_api_key_invalid.json"));
    assert!(
        matches!(err, GatewayError::UpstreamCredentials { ref provider } if provider == "gem"),
        "{err:?}"
    );
    let missing = Bytes::from_static(
        br#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"CONSUMER_INVALID"}]}}"#,
    );
    assert!(matches!(
        classify(403, missing),
        GatewayError::UpstreamCredentials { .. }
    ));
    assert!(matches!(
        classify(401, Bytes::new()),
        GatewayError::UpstreamCredentials { .. }
    ));
}

#[test]
fn retry_info_is_the_hint_and_the_clients_retry_after() {
    let u = upstream(classify(429, fixture("error_resource_exhausted.json")));
    assert_eq!(u.status, 429);
    assert_eq!(u.retry_in, Some(Duration::from_secs(33)));
    assert_eq!(
        u.retry_after.as_ref().map(|v| v.as_bytes()),
        Some(&b"33"[..])
    );
    assert_eq!(
        u.retry_after_ms.as_ref().map(|v| v.as_bytes()),
        Some(&b"33000"[..])
    );
    let doc: Value = serde_json::from_slice(&u.body).expect("JSON");
    assert_eq!(doc["error"]["type"], "rate_limit_error");
    assert_eq!(doc["error"]["code"], "rate_limit_exceeded");
    assert_eq!(doc["error"]["param"], Value::Null);
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("You exceeded your current quota")),
        "{doc}"
    );

    let half = Bytes::from_static(
        br#"{"error":{"code":429,"message":"slow","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"0.5s"}]}}"#,
    );
    let u = upstream(classify(429, half));
    assert_eq!(u.retry_in, Some(Duration::from_millis(500)));
    assert_eq!(
        u.retry_after.as_ref().map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(
        u.retry_after_ms.as_ref().map(|v| v.as_bytes()),
        Some(&b"500"[..])
    );
    let none = upstream(classify(
        429,
        Bytes::from_static(
            br#"{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
    ));
    assert_eq!(none.retry_in, None);
    assert!(none.retry_after.is_none());
    assert_eq!(
        parse_duration("1.000340012s"),
        Some(Duration::from_nanos(1_000_340_012))
    );
    for bad in ["", "s", "5", "-1s", "xs", "NaNs", "1e300s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn google_errors_become_openai_errors_with_the_status_kept() {
    let cases = [
        (
            400,
            "INVALID_ARGUMENT",
            "invalid_request_error",
            "INVALID_ARGUMENT",
        ),
        (
            400,
            "FAILED_PRECONDITION",
            "invalid_request_error",
            "FAILED_PRECONDITION",
        ),
        (
            403,
            "PERMISSION_DENIED",
            "permission_error",
            "PERMISSION_DENIED",
        ),
        (404, "NOT_FOUND", "invalid_request_error", "model_not_found"),
        (500, "INTERNAL", "server_error", "INTERNAL"),
        (503, "UNAVAILABLE", "server_error", "UNAVAILABLE"),
        (
            504,
            "DEADLINE_EXCEEDED",
            "server_error",
            "DEADLINE_EXCEEDED",
        ),
    ];
    for (status, google, kind, code) in cases {
        let body = format!(
            r#"{{"error":{{"code":{status},"message":"m {google}","status":"{google}"}}}}"#
        );
        let u = upstream(classify(status, Bytes::from(body)));
        assert_eq!(u.status, status);
        let doc: Value = serde_json::from_slice(&u.body).expect("JSON");
        assert_eq!(
            doc,
            json!({"error": {"message": format!("m {google}"), "type": kind, "param": null, "code": code}}),
            "{status} {google}"
        );
    }
    // The real unknown-field refusal, whole.
    let u = upstream(classify(400, fixture("error_unknown_field.json")));
    let doc: Value = serde_json::from_slice(&u.body).expect("JSON");
    assert_eq!(
        doc,
        json!({"error": {"message": "Invalid JSON payload received. Unknown name \"thinking\": Cannot find field.",
            "type": "invalid_request_error", "param": null, "code": "INVALID_ARGUMENT"}})
    );
    // Already OpenAI's shape (a compatible server in between): kept as it is.
    let openai = Bytes::from_static(
        br#"{"error":{"message":"busy","type":"server_error","param":null,"code":null}}"#,
    );
    assert_eq!(upstream(classify(503, openai.clone())).body, openai);
    // Not Google's shape: left for error.rs to wrap.
    let u = upstream(classify(
        502,
        Bytes::from_static(b"<html>bad gateway</html>"),
    ));
    assert_eq!(&u.body[..], b"<html>bad gateway</html>");
}

#[test]
fn a_gemini_error_renders_as_the_openai_error_the_front_promises() {
    use actix_web::ResponseError;
    use actix_web::body::MessageBody;
    let err = classify(429, fixture("error_resource_exhausted.json"));
    let res = err.error_response();
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"33"[..])
    );
    let body = res.into_body().try_into_bytes().unwrap_or_default();
    let doc: Value = serde_json::from_slice(&body).expect("JSON");
    let fields: Vec<&str> = doc["error"]
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["code", "message", "param", "type"]);
}

#[test]
fn an_opening_error_event_is_found() {
    assert_eq!(
        Gemini
            .first_event_error(b"data: {\"error\":{\"code\":503,\"message\":\"overloaded\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n")
            .as_deref(),
        Some("overloaded")
    );
    assert_eq!(
        Gemini.first_event_error(
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"}]}}]}\r\n\r\n"
        ),
        None
    );
}

#[test]
fn project_numbers_are_redacted_from_google_messages() {
    assert_eq!(
        redact_projects(
            "Permission denied on project 123456789 (projects/987654, project_number:42é)."
        ),
        "Permission denied on project [redacted] (projects/[redacted], project_number:[redacted]é)."
    );
    for same in ["no project here", "project x1", "projects/ none", "é"] {
        assert!(matches!(redact_projects(same), Cow::Borrowed(_)), "{same}");
    }
    let body = Bytes::from_static(
        br#"{"error":{"code":403,"message":"Caller lacks access to project 1234","status":"PERMISSION_DENIED"}}"#,
    );
    let doc: Value = serde_json::from_slice(&upstream(classify(403, body)).body).expect("JSON");
    assert_eq!(
        doc["error"]["message"],
        "Caller lacks access to project [redacted]"
    );
    let mut fuzz = crate::fuzz::Budget::new("gemini project redaction", 2_000);
    while fuzz.more() {
        let rng = &mut fuzz.rng;
        let pieces = [
            "project ",
            "projects/",
            "project_number:",
            "1",
            "é",
            "x",
            " ",
        ];
        let text: String = (0..rng.usize(0..12))
            .map(|_| pieces[rng.usize(..pieces.len())])
            .collect();
        let out = redact_projects(&text);
        for marker in ["project ", "projects/", "project_number:"] {
            for (i, _) in out.match_indices(marker) {
                let after = &out[i + marker.len()..];
                assert!(
                    !after.starts_with(|c: char| c.is_ascii_digit()),
                    "{text:?} -> {out:?}"
                );
            }
        }
    }
}
