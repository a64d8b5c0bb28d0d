//! The emulator's Bedrock (Converse) API seen from a client: SigV4 signed in the test with
//! `aws-sigv4` (good, wrong secret, expired, another body, another path, unknown key, session
//! token, region) and Bedrock API keys, Converse validation with Bedrock's messages, the answer
//! shapes (against `fixtures/bedrock/`), the exact ConverseStream frame sequence decoded with
//! `aws-smithy-eventstream`, and every fault in Bedrock's format.

#[path = "common/client.rs"]
mod client;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::read_message_from;
use client::*;
use serde_json::{Value, json};
use switchyard::emulator::{
    DEFAULT_BEDROCK_ACCESS_KEY_ID, DEFAULT_BEDROCK_API_KEY, DEFAULT_BEDROCK_REGION,
    DEFAULT_BEDROCK_SECRET_ACCESS_KEY, DEFAULT_BEDROCK_SESSION_TOKEN,
};

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1%3A0";
/// "Be brief." + "Say hello.": ceil(19 / 4) + 3 for the system prompt and 3 for the message.
const INPUT_TOKENS: u64 = 11;
const MISMATCH: &str = "The request signature we calculated does not match the signature you \
    provided. Check your AWS Secret Access Key and signing method. Consult the service \
    documentation for details.";

fn converse_path() -> String {
    format!("/model/{MODEL}/converse")
}

fn stream_path() -> String {
    format!("/model/{MODEL}/converse-stream")
}

/// How a test request is signed.
struct Signer<'a> {
    access_key_id: &'a str,
    secret: &'a str,
    token: Option<&'a str>,
    region: &'a str,
    time: SystemTime,
}

impl Default for Signer<'_> {
    fn default() -> Self {
        Self {
            access_key_id: DEFAULT_BEDROCK_ACCESS_KEY_ID,
            secret: DEFAULT_BEDROCK_SECRET_ACCESS_KEY,
            token: None,
            region: DEFAULT_BEDROCK_REGION,
            time: SystemTime::now(),
        }
    }
}

impl Signer<'_> {
    /// The headers a SigV4 client adds for `POST path` with `body`, as the AWS SDKs sign it.
    fn headers(&self, addr: SocketAddr, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let identity = Credentials::new(
            self.access_key_id,
            self.secret,
            self.token.map(str::to_owned),
            None,
            "test",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name("bedrock")
            .time(self.time)
            .settings(SigningSettings::default())
            .build()
            .expect("params")
            .into();
        let host = addr.to_string();
        let base = [
            ("host", host.as_str()),
            ("content-type", "application/json"),
        ];
        let request = SignableRequest::new(
            "POST",
            format!("http://{addr}{path}"),
            base.into_iter(),
            SignableBody::Bytes(body),
        )
        .expect("signable");
        let (instructions, _) = sign(request, &params).expect("signed").into_parts();
        let mut headers: Vec<(String, String)> = base
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        headers.extend(
            instructions
                .headers()
                .map(|(n, v)| (n.to_owned(), v.to_owned())),
        );
        headers
    }
}

async fn send_raw(
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
    headers: &[(String, String)],
) -> Reply {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    exchange(addr, "POST", path, None, &headers, body).await
}

/// A correctly signed POST, plus `extra` headers (unsigned, like the fault header).
async fn signed(addr: SocketAddr, path: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
    let bytes = serde_json::to_vec(body).expect("JSON");
    let mut headers = Signer::default().headers(addr, path, &bytes);
    headers.extend(
        extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    );
    send_raw(addr, path, bytes, &headers).await
}

fn body() -> Value {
    json!({
        "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "Say hello."}]}]
    })
}

fn weather_tools() -> Value {
    json!({"tools": [{"toolSpec": {
        "name": "get_weather",
        "description": "Get the weather",
        "inputSchema": {"json": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"]
        }}
    }}]})
}

/// The AWS error: status, `x-amzn-errortype` name (namespace stripped as botocore does) and
/// the message.
fn aws_error(reply: &Reply, status: u16, exception: &str) -> String {
    reply.expect_status(status);
    let kind = reply.header("x-amzn-errortype");
    assert_eq!(kind.split(':').next(), Some(exception), "{kind}");
    assert!(
        kind.contains(":http://internal.amazon.com/coral/"),
        "{kind}"
    );
    assert_eq!(reply.header("x-amzn-requestid").len(), 36);
    let body = reply.json();
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only a message: {body}"
    );
    body["message"].as_str().unwrap_or_default().to_owned()
}

/// Decoded frames: (`:message-type`, `:event-type` or `:exception-type`, payload).
fn frames(reply: &Reply) -> Vec<(String, String, Value)> {
    assert_eq!(reply.complete, Ok(()), "stream incomplete");
    decode(&reply.body)
}

fn decode(mut body: &[u8]) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let message = read_message_from(&mut body).expect("a valid eventstream frame");
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(header(":content-type"), "application/json");
        let kind = header(":message-type");
        let name = if kind == "exception" {
            header(":exception-type")
        } else {
            header(":event-type")
        };
        assert_eq!(message.headers().len(), 3);
        let payload = serde_json::from_slice(message.payload()).expect("JSON payload");
        out.push((kind, name, payload));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Answers.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn converse_has_the_real_shape() {
    let addr = start();
    let reply = signed(addr, &converse_path(), &body(), &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), "application/json");
    let got = reply.json();
    let want: Value = serde_json::from_str(&fixture("bedrock/converse.json")).expect("fixture");
    assert_same_keys("converse", &want, &got, &[]);
    assert_eq!(got["output"]["message"]["content"][0]["text"], DEFAULT_TEXT);
    assert_eq!(got["stopReason"], "end_turn");
    assert_eq!(
        got["usage"],
        json!({"inputTokens": INPUT_TOKENS, "outputTokens": 12, "totalTokens": INPUT_TOKENS + 12})
    );
    assert!(got["metrics"]["latencyMs"].is_u64());

    // maxTokens cuts the answer: max_tokens.
    let mut limited = body();
    limited["inferenceConfig"] = json!({"maxTokens": 3, "temperature": 0.5});
    let got = signed(addr, &converse_path(), &limited, &[]).await.json();
    assert_eq!(
        got["output"]["message"]["content"][0]["text"],
        "Hello from the"
    );
    assert_eq!(got["stopReason"], "max_tokens");

    // A cache point reads the fixed cached prefix.
    let mut cached = body();
    cached["system"] = json!([{"text": "Be brief."}, {"cachePoint": {"type": "default"}}]);
    let got = signed(addr, &converse_path(), &cached, &[]).await.json();
    assert_eq!(
        got["usage"],
        json!({
            "inputTokens": INPUT_TOKENS,
            "outputTokens": 12,
            "totalTokens": INPUT_TOKENS + 12 + 32,
            "cacheReadInputTokens": 32,
            "cacheWriteInputTokens": 0
        })
    );
}

/// `outputConfig.textFormat` (structured output): the schema travels as a JSON string; the
/// answer is then a JSON object. A schema given as an object is refused as AWS's parser does.
#[actix_web::test]
async fn structured_output_takes_the_schema_as_a_string() {
    let addr = start();
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
    let mut asked = body();
    asked["outputConfig"] = json!({"textFormat": {"type": "json_schema", "structure": {
        "jsonSchema": {"schema": schema.to_string(), "name": "answer"}}}});
    let got = signed(addr, &converse_path(), &asked, &[]).await.json();
    let text = got["output"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    let answer: Value = serde_json::from_str(text).expect("a JSON answer");
    assert_eq!(answer, json!({"answer": DEFAULT_TEXT}));

    let mut object = asked.clone();
    object["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"] = schema;
    let reply = signed(addr, &converse_path(), &object, &[]).await;
    let message = aws_error(&reply, 400, "SerializationException");
    assert!(message.starts_with("Expected a string at"), "{message}");
    let mut kind = asked;
    kind["outputConfig"]["textFormat"]["type"] = json!("json_object");
    let reply = signed(addr, &converse_path(), &kind, &[]).await;
    aws_error(&reply, 400, "ValidationException");
}

#[actix_web::test]
async fn converse_stream_frames_in_order() {
    let addr = start();
    let reply = signed(addr, &stream_path(), &body(), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        "application/vnd.amazon.eventstream"
    );
    let got = frames(&reply);
    let names: Vec<&str> = got.iter().map(|(_, n, _)| n.as_str()).collect();
    let mut want = vec!["messageStart"];
    want.extend(std::iter::repeat_n("contentBlockDelta", 12));
    want.extend(["contentBlockStop", "messageStop", "metadata"]);
    assert_eq!(names, want);
    assert!(
        got.iter()
            .all(|(kind, _, p)| kind == "event" && p["p"].is_string())
    );

    let recorded: Value =
        serde_json::from_str(&fixture("bedrock/converse_stream_events.json")).expect("fixture");
    let sample = |name: &str| {
        recorded
            .as_array()
            .and_then(|events| events.iter().find(|e| e["event"] == name))
            .map(|e| e["payload"].clone())
            .unwrap_or_default()
    };
    for (_, name, payload) in &got {
        assert_same_keys(name, &sample(name), payload, &[]);
    }
    let text: String = got
        .iter()
        .filter_map(|(_, _, p)| p["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_TEXT);
    assert_eq!(got[0].2["role"], "assistant");
    assert_eq!(got[14].2["stopReason"], "end_turn");
    assert_eq!(
        got[15].2["usage"],
        json!({"inputTokens": INPUT_TOKENS, "outputTokens": 12, "totalTokens": INPUT_TOKENS + 12})
    );
}

#[actix_web::test]
async fn tool_use_then_tool_result() {
    let addr = start();
    let mut request = body();
    request["toolConfig"] = weather_tools();
    let got = signed(addr, &converse_path(), &request, &[]).await.json();
    let want: Value =
        serde_json::from_str(&fixture("bedrock/converse_tool_use.json")).expect("fixture");
    assert_same_keys(
        "toolUse",
        &want,
        &got,
        &["output.message.content[].toolUse.input.days"],
    );
    let tool_use = &got["output"]["message"]["content"][0]["toolUse"];
    assert_eq!(tool_use["name"], "get_weather");
    assert_eq!(tool_use["input"], json!({"city": "example", "days": 0}));
    assert_eq!(got["stopReason"], "tool_use");
    assert_eq!(got["usage"]["outputTokens"], 4);
    let id = tool_use["toolUseId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(id.starts_with("tooluse_") && id.len() == 30, "{id}");

    // The stream: contentBlockStart with the id and name, four argument fragments.
    let got = frames(&signed(addr, &stream_path(), &request, &[]).await);
    let names: Vec<&str> = got.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "messageStart",
            "contentBlockStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    assert_eq!(got[1].2["start"]["toolUse"]["name"], "get_weather");
    let input: String = got
        .iter()
        .filter_map(|(_, _, p)| p["delta"]["toolUse"]["input"].as_str())
        .collect();
    assert_eq!(input, r#"{"city":"example","days":0}"#);
    assert_eq!(got[7].2["stopReason"], "tool_use");

    // The result goes back in the next user turn: the model answers in text.
    request["messages"] = json!([
        {"role": "user", "content": [{"text": "Say hello."}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": id, "name": "get_weather", "input": {"city": "example", "days": 0}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": id, "content": [{"text": "21C"}], "status": "success"}}]}
    ]);
    let got = signed(addr, &converse_path(), &request, &[]).await.json();
    assert_eq!(got["output"]["message"]["content"][0]["text"], DEFAULT_TEXT);
    assert_eq!(got["stopReason"], "end_turn");

    // A named tool choice that is not declared is refused.
    request["toolConfig"]["toolChoice"] = json!({"tool": {"name": "nope"}});
    let reply = signed(addr, &converse_path(), &request, &[]).await;
    let message = aws_error(&reply, 400, "ValidationException");
    assert_eq!(
        message,
        "The tool nope specified in toolChoice is not defined in toolConfig.tools."
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn sigv4_is_verified() {
    let addr = start();
    let path = converse_path();
    let bytes = serde_json::to_vec(&body()).expect("JSON");
    let send = |signer: Signer<'static>, path: String, signed_body: Vec<u8>, sent: Vec<u8>| async move {
        let headers = signer.headers(addr, &path, &signed_body);
        send_raw(addr, &path, sent, &headers).await
    };

    // Good, also with the raw `:` the anthropic SDK sends, and with the session token.
    let reply = send(
        Signer::default(),
        path.clone(),
        bytes.clone(),
        bytes.clone(),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let raw_colon = "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse".to_owned();
    let reply = send(Signer::default(), raw_colon, bytes.clone(), bytes.clone()).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // An inference-profile ARN: `:` and `/` percent-encoded in one segment.
    let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.\
               anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
        .to_owned();
    let reply = send(Signer::default(), arn, bytes.clone(), bytes.clone()).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let with_token = Signer {
        token: Some(DEFAULT_BEDROCK_SESSION_TOKEN),
        ..Signer::default()
    };
    let reply = send(with_token, path.clone(), bytes.clone(), bytes.clone()).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // Wrong secret, another body, another path: the signature does not match.
    let wrong_secret = Signer {
        secret: "not-the-secret",
        ..Signer::default()
    };
    let reply = send(wrong_secret, path.clone(), bytes.clone(), bytes.clone()).await;
    assert_eq!(
        aws_error(&reply, 403, "InvalidSignatureException"),
        MISMATCH
    );
    let other_body = serde_json::to_vec(&json!({"messages": []})).expect("JSON");
    let reply = send(Signer::default(), path.clone(), other_body, bytes.clone()).await;
    assert_eq!(
        aws_error(&reply, 403, "InvalidSignatureException"),
        MISMATCH
    );
    let headers = Signer::default().headers(addr, &stream_path(), &bytes);
    let reply = send_raw(addr, &path, bytes.clone(), &headers).await;
    assert_eq!(
        aws_error(&reply, 403, "InvalidSignatureException"),
        MISMATCH
    );

    // Signed ten minutes ago: expired, in AWS's words.
    let old = Signer {
        time: SystemTime::now() - Duration::from_secs(600),
        ..Signer::default()
    };
    let reply = send(old, path.clone(), bytes.clone(), bytes.clone()).await;
    let message = aws_error(&reply, 403, "InvalidSignatureException");
    assert!(message.starts_with("Signature expired: "), "{message}");
    assert!(message.ends_with(" - 5 min.)"), "{message}");

    // Unknown key or token, wrong region.
    let stranger = Signer {
        access_key_id: "AKIASTRANGER00000000",
        ..Signer::default()
    };
    let reply = send(stranger, path.clone(), bytes.clone(), bytes.clone()).await;
    assert_eq!(
        aws_error(&reply, 403, "UnrecognizedClientException"),
        "The security token included in the request is invalid."
    );
    let bad_token = Signer {
        token: Some("stale-token"),
        ..Signer::default()
    };
    let reply = send(bad_token, path.clone(), bytes.clone(), bytes.clone()).await;
    aws_error(&reply, 403, "UnrecognizedClientException");
    let elsewhere = Signer {
        region: "eu-west-1",
        ..Signer::default()
    };
    let reply = send(elsewhere, path.clone(), bytes.clone(), bytes.clone()).await;
    let message = aws_error(&reply, 403, "InvalidSignatureException");
    assert!(message.starts_with("Credential should be scoped to a valid region."));

    // Nothing at all.
    let reply = exchange(addr, "POST", &path, None, &[], bytes.clone()).await;
    assert_eq!(
        aws_error(&reply, 403, "MissingAuthenticationTokenException"),
        "Missing Authentication Token"
    );

    // Bedrock API keys as Bearer tokens.
    let good = Some(format!("Bearer {DEFAULT_BEDROCK_API_KEY}"));
    let reply = exchange(addr, "POST", &path, good, &[], bytes.clone()).await;
    assert_eq!(reply.status, 200);
    let bad = Some("Bearer ABSKnope".to_owned());
    let reply = exchange(addr, "POST", &path, bad, &[], bytes).await;
    aws_error(&reply, 403, "UnrecognizedClientException");
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

/// With `bedrock_region = "*"` (what `serve --emulator` runs), a signature scoped to any
/// region is verified with that region: a good one passes, a wrong secret still fails.
#[actix_web::test]
async fn any_region_mode_verifies_with_the_scope_region() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local address");
    let config = switchyard::emulator::EmulatorConfig {
        workers: 1,
        bedrock_region: switchyard::emulator::ANY_BEDROCK_REGION.to_owned(),
        ..Default::default()
    };
    actix_web::rt::spawn(switchyard::emulator::server(config, listener).expect("emulator starts"));
    let path = converse_path();
    let bytes = serde_json::to_vec(&body()).expect("JSON");
    for region in ["eu-west-3", "ap-southeast-2", DEFAULT_BEDROCK_REGION] {
        let signer = Signer {
            region,
            ..Signer::default()
        };
        let headers = signer.headers(addr, &path, &bytes);
        let reply = send_raw(addr, &path, bytes.clone(), &headers).await;
        assert_eq!(
            reply.status,
            200,
            "{region}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let wrong = Signer {
        region: "eu-west-3",
        secret: "not-the-secret",
        ..Signer::default()
    };
    let headers = wrong.headers(addr, &path, &bytes);
    let reply = send_raw(addr, &path, bytes.clone(), &headers).await;
    assert_eq!(
        aws_error(&reply, 403, "InvalidSignatureException"),
        MISMATCH
    );
}

#[actix_web::test]
async fn refuses_what_bedrock_refuses() {
    let addr = start();
    let user = |text: &str| json!({"role": "user", "content": [{"text": text}]});
    let assistant = |text: &str| json!({"role": "assistant", "content": [{"text": text}]});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"messages": [user("a")], "inferenceconfig": {"maxTokens": 5}}),
            "Malformed input request: extraneous key [inferenceconfig] is not permitted, please reformat your input and try again.",
        ),
        (
            json!({"system": [{"text": "x"}]}),
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null",
        ),
        (
            json!({"messages": [assistant("a"), user("b")]}),
            "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
        ),
        (
            json!({"messages": [user("a"), user("b")]}),
            "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.",
        ),
        (
            json!({"messages": [user("a"), {"role": "system", "content": [{"text": "b"}]}]}),
            "1 validation error detected: Value 'system' at 'messages.2.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]",
        ),
        (
            json!({"messages": [{"role": "user", "content": []}]}),
            "The content field in the Message object at messages.0 is empty. Add a ContentBlock object to the content field and try again.",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}),
            "Malformed input request: extraneous key [type] is not permitted, please reformat your input and try again.",
        ),
        (
            json!({"messages": [user("a")], "inferenceConfig": {"maxTokens": 0}}),
            "1 validation error detected: Value '0' at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1",
        ),
        (
            json!({"messages": [
                user("a"),
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
                user("b")
            ]}),
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        ),
        (
            json!({"messages": [
                user("a"),
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}}]},
                user("b")
            ], "toolConfig": weather_tools()}),
            "Expected toolResult blocks at messages.2.content for the following Ids: t1",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"url": "https://example.com/a.png"}}}]}]}),
            "Malformed input request: extraneous key [url] is not permitted, please reformat your input and try again.",
        ),
        (
            json!({"messages": [user("a")], "toolConfig": {"tools": [{"toolSpec": {"name": "get weather", "inputSchema": {"json": {}}}}]}}),
            "1 validation error detected: Value 'get weather' at 'toolConfig.tools.1.member.toolSpec.name' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
        ),
    ];
    for (request, message) in cases {
        let reply = signed(addr, &converse_path(), &request, &[]).await;
        assert_eq!(
            aws_error(&reply, 400, "ValidationException"),
            message,
            "for {request}"
        );
    }

    let path = "/model/meta.llama3-70b-instruct-v1%3A0/converse";
    let reply = signed(addr, path, &body(), &[]).await;
    assert_eq!(
        aws_error(&reply, 400, "ValidationException"),
        "The provided model identifier is invalid."
    );
}

// ---------------------------------------------------------------------------------------------
// Faults, in Bedrock's format.
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn status_faults_are_bedrock_exceptions() {
    let addr = start();
    let fault = |spec: &'static str| [("x-emulator-fault", spec)];
    let reply = signed(addr, &converse_path(), &body(), &fault("status=429")).await;
    let message = aws_error(&reply, 429, "ThrottlingException");
    assert!(message.starts_with("Too many requests, please wait before trying again."));
    let reply = signed(addr, &converse_path(), &body(), &fault("status=503")).await;
    aws_error(&reply, 503, "ServiceUnavailableException");
    let reply = signed(addr, &converse_path(), &body(), &fault("status=500")).await;
    aws_error(&reply, 500, "InternalServerException");
    let reply = signed(addr, &stream_path(), &body(), &fault("status=424")).await;
    aws_error(&reply, 424, "ModelErrorException");

    // times/key: the budget counts across both operations.
    let spec = fault("status=429,times=2,key=bedrock");
    let mut statuses = Vec::new();
    for path in [
        converse_path(),
        stream_path(),
        converse_path(),
        stream_path(),
    ] {
        statuses.push(signed(addr, &path, &body(), &spec).await.status);
    }
    assert_eq!(statuses, [429, 429, 200, 200]);

    // The route prefix is part of the signed path.
    let path = format!("/fault/status=503/model/{MODEL}/converse");
    let reply = signed(addr, &path, &body(), &[]).await;
    aws_error(&reply, 503, "ServiceUnavailableException");

    let reply = signed(addr, &converse_path(), &body(), &fault("bogus=1")).await;
    aws_error(&reply, 400, "ValidationException");
}

#[actix_web::test]
async fn midstream_error_is_an_exception_frame() {
    let addr = start();
    let mut request = body();
    request["messages"][0]["content"][0]["text"] = json!("Say hello. [emulator:midstream_error=3]");
    let got = frames(&signed(addr, &stream_path(), &request, &[]).await);
    let names: Vec<(&str, &str)> = got
        .iter()
        .map(|(k, n, _)| (k.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("event", "messageStart"),
            ("event", "contentBlockDelta"),
            ("event", "contentBlockDelta"),
            ("event", "contentBlockDelta"),
            ("exception", "modelStreamErrorException"),
        ]
    );
    assert_eq!(got[4].2["originalStatusCode"], 500);
    assert!(got[4].2["message"].is_string());
}

#[actix_web::test]
async fn drop_latency_and_first_byte() {
    let addr = start();
    let bytes = serde_json::to_vec(&body()).expect("JSON");
    let mut headers = Signer::default().headers(addr, &stream_path(), &bytes);
    headers.push(("x-emulator-fault".to_owned(), "drop=2".to_owned()));
    // The raw client writes host and content-type itself, with the same values.
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(n, _)| n != "host" && n != "content-type")
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let raw = raw_exchange(addr, &stream_path(), &pairs, bytes.clone()).await;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(
        !raw.ends_with(b"\r\n0\r\n\r\n"),
        "a dropped stream must not end"
    );
    let reply = signed(
        addr,
        &stream_path(),
        &body(),
        &[("x-emulator-fault", "drop=2")],
    )
    .await;
    assert_eq!(decode(&reply.body).len(), 2);

    let reply = signed(
        addr,
        &converse_path(),
        &body(),
        &[("x-emulator-fault", "drop=1")],
    )
    .await;
    let declared: usize = reply.header("content-length").parse().expect("length");
    assert_eq!(reply.body.len(), declared / 2);

    let reply = signed(
        addr,
        &converse_path(),
        &body(),
        &[("x-emulator-fault", "latency_ms=150,tokens=5")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["usage"]["outputTokens"], 5);
    assert!(reply.headers_after >= Duration::from_millis(150));

    let reply = signed(
        addr,
        &stream_path(),
        &body(),
        &[("x-emulator-fault", "first_byte_ms=150")],
    )
    .await;
    assert!(reply.headers_after < Duration::from_millis(150));
    assert!(reply.body_after >= Duration::from_millis(150));
    assert_eq!(frames(&reply).len(), 16);
}

// ---------------------------------------------------------------------------------------------
// InvokeModel with the Anthropic Messages body.
// ---------------------------------------------------------------------------------------------

fn invoke_body() -> Value {
    json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
    })
}

/// The Anthropic events inside `chunk` frames.
fn anthropic_events(reply: &Reply) -> Vec<Value> {
    frames(reply)
        .into_iter()
        .map(|(kind, name, payload)| {
            assert_eq!((kind.as_str(), name.as_str()), ("event", "chunk"));
            assert!(payload["p"].is_string());
            let bytes =
                aws_smithy_types::base64::decode(payload["bytes"].as_str().unwrap_or_default())
                    .expect("base64");
            serde_json::from_slice(&bytes).expect("an Anthropic event")
        })
        .collect()
}

#[actix_web::test]
async fn invoke_answers_an_anthropic_message() {
    let addr = start();
    let path = format!("/model/{MODEL}/invoke");
    let reply = signed(addr, &path, &invoke_body(), &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("x-amzn-bedrock-input-token-count"),
        INPUT_TOKENS.to_string()
    );
    assert_eq!(reply.header("x-amzn-bedrock-output-token-count"), "12");
    let got = reply.json();
    assert_eq!(got["type"], "message");
    assert_eq!(got["model"], "claude-3-5-sonnet-20240620");
    assert_eq!(
        got["content"],
        json!([{"type": "text", "text": DEFAULT_TEXT}])
    );
    assert_eq!(got["stop_reason"], "end_turn");
    assert_eq!(
        got["usage"],
        json!({"input_tokens": INPUT_TOKENS, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 12})
    );
    assert!(
        got["id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("msg_bdrk_01")
    );

    // Tools: a tool_use block, then the result answered in text.
    let mut request = invoke_body();
    request["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let got = signed(addr, &path, &request, &[]).await.json();
    assert_eq!(got["stop_reason"], "tool_use");
    let id = got["content"][0]["id"].clone();
    assert_eq!(got["content"][0]["input"], json!({"city": "example"}));
    request["messages"] = json!([
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "get_weather", "input": {"city": "example"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "21C"}]}
    ]);
    let got = signed(addr, &path, &request, &[]).await.json();
    assert_eq!(got["content"][0]["text"], DEFAULT_TEXT);
}

#[actix_web::test]
async fn invoke_stream_carries_anthropic_events_in_chunks() {
    let addr = start();
    let path = format!("/model/{MODEL}/invoke-with-response-stream");
    let reply = signed(addr, &path, &invoke_body(), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-amzn-bedrock-content-type"),
        "application/json"
    );
    let events = anthropic_events(&reply);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let mut want = vec!["message_start", "content_block_start"];
    want.extend(std::iter::repeat_n("content_block_delta", 12));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(kinds, want);
    let text: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_TEXT);
    assert_eq!(events[0]["message"]["usage"]["input_tokens"], INPUT_TOKENS);
    assert_eq!(events[15]["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[15]["usage"]["output_tokens"], 12);
    let metrics = &events[16]["amazon-bedrock-invocationMetrics"];
    assert_eq!(metrics["inputTokenCount"], INPUT_TOKENS);
    assert_eq!(metrics["outputTokenCount"], 12);

    // Mid-stream: two deltas, then the exception frame.
    let faulted = signed(
        addr,
        &path,
        &invoke_body(),
        &[("x-emulator-fault", "midstream_error=2")],
    )
    .await;
    let got = frames(&faulted);
    assert_eq!(got.len(), 5);
    assert_eq!(
        (got[4].0.as_str(), got[4].1.as_str()),
        ("exception", "modelStreamErrorException")
    );
}

#[actix_web::test]
async fn invoke_refuses_what_bedrock_and_anthropic_refuse() {
    let addr = start();
    let path = format!("/model/{MODEL}/invoke");
    let mut with_model = invoke_body();
    with_model["model"] = json!("claude");
    let mut no_version = invoke_body();
    no_version
        .as_object_mut()
        .map(|o| o.remove("anthropic_version"));
    let mut twice = invoke_body();
    twice["messages"] = json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]);
    let mut orphan = invoke_body();
    orphan["messages"] = json!([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "c"}]}
    ]);
    let cases = [
        (
            with_model,
            "Malformed input request: #: extraneous key [model] is not permitted, please reformat your input and try again.",
        ),
        (
            no_version,
            "Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.",
        ),
        (
            twice,
            "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"user\" roles in a row",
        ),
        (
            orphan,
            "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_x. Each `tool_result` block must have a corresponding `tool_use` block in the previous message.",
        ),
    ];
    for (request, message) in cases {
        let reply = signed(addr, &path, &request, &[]).await;
        assert_eq!(
            aws_error(&reply, 400, "ValidationException"),
            message,
            "for {request}"
        );
    }
}

#[actix_web::test]
async fn chunk_delay_paces_every_frame() {
    let addr = start();
    let spec = [("x-emulator-fault", "chunk_ms=20,tokens=2")];
    let reply = signed(addr, &stream_path(), &body(), &spec).await;
    // messageStart, 2 deltas, stop, messageStop, metadata: 5 gaps of 20 ms.
    assert_eq!(frames(&reply).len(), 6);
    assert!(
        reply.body_after >= Duration::from_millis(100),
        "{:?}",
        reply.body_after
    );
}
