//! Amazon Bedrock (Anthropic Claude) as the emulator serves it: Converse
//! (`POST /model/{modelId}/converse`) and ConverseStream (`POST /model/{modelId}/converse-stream`,
//! `application/vnd.amazon.eventstream`), and InvokeModel with the Anthropic Messages body
//! (`invoke`, `invoke-with-response-stream`; that body lives in `invoke`). This module owns
//! Bedrock's side: authentication (SigV4 verified in `sigv4` against the known test
//! credentials, or a Bedrock API key as `Authorization: Bearer`), the model id as one percent-encoded path segment, Converse
//! validation with Bedrock's messages (roles, alternation, content-block unions, the tool-use
//! protocol, inference limits), AWS's error shape (`{"message"}` plus `x-amzn-ErrorType`), the
//! private wire types of the answer (output.message, stopReason, usage, metrics), and the event
//! stream frames, encoded with `aws-smithy-eventstream` as AWS SDK clients decode them
//! (`:message-type`, `:event-type`, `:content-type` on every frame, a random `p` padding field,
//! exception frames for mid-stream faults). What the model says comes from the shared planner
//! in `reply`; faults come from `faults`.
//!
//! Unknown request fields are refused here although Coral services often drop them: a gateway
//! that misspells `inferenceConfig` would otherwise pass its tests and lose its limits live.

mod invoke;
mod sigv4;

use std::time::{Instant, SystemTime};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

pub(crate) use sigv4::Keys;

use super::State;
use super::exchange::{self, BodyError, MAX_BODY};
use super::faults::{FaultSource, FaultSpecError};
use super::reply::{
    Body, CACHED_TOKENS, FnTool, Reply, TextStats, ToolChoice, alnum_id, pick_tool, words,
};

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// The namespace AWS appends to `x-amzn-ErrorType` for Bedrock's own exceptions.
const BEDROCK_NS: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";
/// The namespace of the authentication exceptions, which the AWS front door raises.
const CORAL_NS: &str = "http://internal.amazon.com/coral/com.amazon.coral.service/";

/// Every top-level Converse request member (bedrock-runtime service model).
const CONVERSE_FIELDS: [&str; 11] = [
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "promptVariables",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
    "outputConfig",
];
/// The members of the `ContentBlock` union; exactly one must be set.
const CONTENT_BLOCKS: [&str; 11] = [
    "text",
    "image",
    "document",
    "video",
    "audio",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
];
const SYSTEM_BLOCKS: [&str; 3] = ["text", "guardContent", "cachePoint"];
const IMAGE_FORMATS: [&str; 4] = ["png", "jpeg", "gif", "webp"];

// ---------------------------------------------------------------------------------------------
// Errors: AWS's shape, one place.
// ---------------------------------------------------------------------------------------------

/// An AWS error: `{"message": …}` with `x-amzn-ErrorType: <Exception>:<namespace>`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    exception: &'static str,
    namespace: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: u16, exception: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            exception,
            namespace: BEDROCK_NS,
            message: message.into(),
        }
    }

    /// A 400 `ValidationException`.
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }

    /// Coral's constraint wording: `1 validation error detected: Value … at '…' failed to
    /// satisfy constraint: …`.
    fn constraint(value: &str, at: &str, constraint: &str) -> Self {
        Self::invalid(format!(
            "1 validation error detected: Value {value} at '{at}' failed to satisfy constraint: \
             {constraint}"
        ))
    }

    fn auth(exception: &'static str, message: impl Into<String>) -> Self {
        Self {
            namespace: CORAL_NS,
            ..Self::new(403, exception, message)
        }
    }

    fn respond(&self, request_id: &str) -> HttpResponse {
        let body = serde_json::json!({ "message": self.message });
        builder(self.status, JSON, request_id)
            .insert_header((
                "x-amzn-ErrorType",
                format!("{}:{}", self.exception, self.namespace),
            ))
            .body(body.to_string())
    }

    /// The answer to a `status=` fault, as the Bedrock exception for that status. Bedrock sends
    /// no retry hint with a ThrottlingException, so `retry_after` has nothing to set here.
    fn emulated(status: u16) -> Self {
        let (exception, message) = match status {
            400 => ("ValidationException", "Emulated fault: invalid request."),
            403 => (
                "AccessDeniedException",
                "You don't have access to the model with the specified model ID.",
            ),
            404 => (
                "ResourceNotFoundException",
                "Could not resolve the foundation model from the provided model identifier.",
            ),
            408 => (
                "ModelTimeoutException",
                "Model has timed out in processing the request.",
            ),
            424 => (
                "ModelErrorException",
                "The system encountered an unexpected error during processing. Try your request \
                 again.",
            ),
            429 => (
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            ),
            503 => (
                "ServiceUnavailableException",
                "Bedrock is unable to process your request.",
            ),
            _ => (
                "InternalServerException",
                "The server encountered an error processing your request.",
            ),
        };
        Self::new(status, exception, format!("{message} (emulated fault)"))
    }
}

fn builder(
    status: StatusCode,
    content_type: &'static str,
    request_id: &str,
) -> HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header(("x-amzn-RequestId", request_id));
    builder
}

fn fault_spec_error(source: FaultSource, e: &FaultSpecError) -> ApiError {
    ApiError::invalid(format!("Invalid emulator fault spec in {source}: {e}."))
}

/// AWS request ids are UUIDs.
fn request_id() -> String {
    let n = fastrand::u128(..);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

// ---------------------------------------------------------------------------------------------
// State, routes, admission.
// ---------------------------------------------------------------------------------------------

/// What the Bedrock endpoints share across workers.
pub(super) struct BedrockState {
    keys: Keys,
    /// The Bedrock API key accepted as `Authorization: Bearer`.
    api_key: String,
}

impl BedrockState {
    pub(super) fn new(keys: Keys, api_key: String) -> Self {
        Self { keys, api_key }
    }
}

/// Registers the Bedrock routes (relative, so `mod.rs` can mount them under the fault prefix).
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    let route = |path: &str, operation: Operation| {
        web::resource(path)
            .route(web::post().to(
                move |req: HttpRequest, payload: web::Payload, state: web::Data<State>| {
                    serve(req, payload, state, operation)
                },
            ))
            .default_service(web::to(unknown_operation))
    };
    cfg.service(route("/model/{model}/converse", Operation::Converse))
        .service(route(
            "/model/{model}/converse-stream",
            Operation::ConverseStream,
        ))
        .service(route("/model/{model}/invoke", Operation::Invoke))
        .service(route(
            "/model/{model}/invoke-with-response-stream",
            Operation::InvokeStream,
        ));
}

/// The four runtime operations the emulator serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    Converse,
    ConverseStream,
    /// InvokeModel with the Anthropic Messages body (`invoke`).
    Invoke,
    InvokeStream,
}

async fn unknown_operation() -> HttpResponse {
    ApiError::new(404, "UnknownOperationException", "").respond(&request_id())
}

async fn serve(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
    operation: Operation,
) -> HttpResponse {
    let request_id = request_id();
    let started = Instant::now();
    match answer(&req, payload, &state, operation, &request_id, started).await {
        Ok(response) => response,
        Err(e) => e.respond(&request_id),
    }
}

/// The model id: the path segment after `/model/`, percent-decoded (clients send `:` as `%3A`
/// and an ARN's `/` as `%2F`). Only Anthropic models are served: foundation model ids,
/// inference profiles (`us.anthropic.…`) and ARNs naming either.
fn model_id(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req
        .path()
        .split("/model/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let id = exchange::percent_decode(raw, false);
    if id.contains("anthropic.") {
        Ok(id)
    } else {
        Err(ApiError::invalid(
            "The provided model identifier is invalid.",
        ))
    }
}

/// SigV4 (the body is part of the signature, so this runs after reading it) or a Bedrock API
/// key as a Bearer token.
fn authenticate(req: &HttpRequest, body: &[u8], state: &BedrockState) -> Result<(), ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = value.and_then(|v| v.strip_prefix("Bearer ")) {
        return if token.trim() == state.api_key {
            Ok(())
        } else {
            Err(ApiError::auth(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ))
        };
    }
    sigv4::verify(req, body, &state.keys, SystemTime::now()).map_err(|refusal| match refusal {
        sigv4::Refusal::Missing => ApiError::auth(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ),
        sigv4::Refusal::Incomplete(message) => {
            ApiError::auth("IncompleteSignatureException", message)
        }
        sigv4::Refusal::Unrecognized => ApiError::auth(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ),
        sigv4::Refusal::Invalid(message) => ApiError::auth("InvalidSignatureException", message),
    })
}

async fn answer(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    operation: Operation,
    request_id: &str,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    let body = exchange::read_body(payload).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::invalid(format!(
            "Input is too long for requested model: the emulator accepts at most {MAX_BODY} \
             bytes."
        )),
        BodyError::Broken(reason) => ApiError::invalid(format!("Malformed request body: {reason}")),
    })?;
    authenticate(req, &body, &state.bedrock)?;
    let model = model_id(req)?;
    let fault = exchange::resolve_faults(req, &body, &state.faults)
        .await
        .map_err(|(source, e)| fault_spec_error(source, &e))?;
    if let Some(status) = fault.status {
        return Err(ApiError::emulated(status));
    }
    let root = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(root)) => root,
        _ => {
            return Err(ApiError::new(
                400,
                "SerializationException",
                "Unable to parse request body as a JSON object.",
            ));
        }
    };
    let ok = |content_type| builder(StatusCode::OK, content_type, request_id);
    if matches!(operation, Operation::Invoke | Operation::InvokeStream) {
        let plan = invoke::validate(&root)?;
        let reply = Reply::plan(words(&fault), false, plan.tool, plan.limit);
        let message = invoke::Message::new(&plan, &reply, &model);
        if operation == Operation::InvokeStream {
            let frames = message.frames(&fault, started)?;
            let mut builder = ok(EVENT_STREAM);
            builder.insert_header(("x-amzn-bedrock-content-type", JSON));
            return Ok(exchange::stream(builder, &fault, frames));
        }
        let json = serde_json::to_vec(&message.whole()).map_err(internal)?;
        let mut builder = ok(JSON);
        message.usage_headers(&mut builder, started);
        return Ok(exchange::whole(builder, &fault, json));
    }
    let plan = validate(&root)?;
    let reply = Reply::plan(words(&fault), plan.json, plan.tool, plan.limit);
    let answer = Answer::new(&plan, &reply);
    if operation == Operation::ConverseStream {
        let frames = answer.frames(&fault, started)?;
        return Ok(exchange::stream(ok(EVENT_STREAM), &fault, frames));
    }
    let json = serde_json::to_vec(&answer.whole(started)).map_err(internal)?;
    Ok(exchange::whole(ok(JSON), &fault, json))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        500,
        "InternalServerException",
        format!("The server encountered an error processing your request. (emulator: {e})"),
    )
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

/// A validated Converse request, reduced to what the answer needs.
struct Plan<'a> {
    limit: Option<u64>,
    /// `outputConfig.textFormat` asked for JSON (a schema).
    json: bool,
    tool: Option<FnTool<'a>>,
    input_tokens: u64,
    cache_read: u64,
}

/// `value` must be an object; Coral's message otherwise.
fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value.as_object().ok_or_else(|| {
        ApiError::new(
            400,
            "SerializationException",
            format!("Expected an object at '{at}', found {value}."),
        )
    })
}

fn list<'a>(value: Option<&'a Value>, at: &str) -> Result<&'a [Value], ApiError> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(ApiError::new(
            400,
            "SerializationException",
            format!("Expected a list at '{at}', found {other}."),
        )),
    }
}

/// Refuses members outside `known`, in the wording of Bedrock's schema validation.
fn only(object: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ApiError::invalid(format!(
            "Malformed input request: extraneous key [{key}] is not permitted, please reformat \
             your input and try again."
        ))),
        None => Ok(()),
    }
}

fn validate(root: &Map<String, Value>) -> Result<Plan<'_>, ApiError> {
    only(root, &CONVERSE_FIELDS)?;
    let mut stats = TextStats::default();
    let mut cache_points = 0_usize;
    for (i, block) in list(root.get("system"), "system")?.iter().enumerate() {
        let block = object(block, "system")?;
        let kind = one_member(block, &SYSTEM_BLOCKS, &format!("system.{}.member", i + 1))?;
        match kind {
            "text" => stats.add(text_member(
                block,
                &format!("system.{}.member.text", i + 1),
            )?),
            "cachePoint" => cache_points += 1,
            _ => {}
        }
    }
    if root.contains_key("system") {
        stats.messages += 1;
    }
    let messages = match root.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::constraint(
                "null",
                "messages",
                "Member must not be null",
            ));
        }
        other => list(other, "messages")?,
    };
    let tools = check_tool_config(root.get("toolConfig"))?;
    let has_tool_config = root.get("toolConfig").is_some_and(|c| !c.is_null());
    let (last_is_user, points) = check_messages(messages, has_tool_config, &mut stats)?;
    cache_points += points;
    let limit = check_inference(root.get("inferenceConfig"))?;
    let json = check_output_config(root.get("outputConfig"))?;
    let (declared, choice) = tools;
    let tool = pick_tool(&declared, choice, last_is_user).map_err(|name| {
        ApiError::invalid(format!(
            "The tool {name} specified in toolChoice is not defined in toolConfig.tools."
        ))
    })?;
    Ok(Plan {
        limit,
        json,
        tool,
        input_tokens: stats.prompt_tokens(),
        cache_read: if cache_points > 0 { CACHED_TOKENS } else { 0 },
    })
}

/// Exactly one member of a union, among `members`. Returns its name.
fn one_member(
    block: &Map<String, Value>,
    members: &[&'static str],
    at: &str,
) -> Result<&'static str, ApiError> {
    if let Some(key) = block.keys().find(|k| !members.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "Malformed input request: extraneous key [{key}] is not permitted, please reformat \
             your input and try again."
        )));
    }
    let set: Vec<&'static str> = members
        .iter()
        .copied()
        .filter(|m| block.get(*m).is_some_and(|v| !v.is_null()))
        .collect();
    match set.as_slice() {
        [one] => Ok(one),
        _ => Err(ApiError::invalid(format!(
            "1 validation error detected: Value at '{at}' failed to satisfy constraint: Member \
             must have exactly one member set (found {}).",
            set.len()
        ))),
    }
}

fn text_member<'a>(block: &'a Map<String, Value>, at: &str) -> Result<&'a str, ApiError> {
    match block.get("text") {
        Some(Value::String(text)) => Ok(text),
        other => Err(ApiError::new(
            400,
            "SerializationException",
            format!(
                "Expected a string at '{at}', found {}.",
                other.unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// Roles, alternation, content blocks and the tool protocol: each assistant turn's `toolUse`
/// ids must all be answered by `toolResult` blocks in the next (user) turn. Returns whether
/// the conversation ends with a user turn that is not only tool results, and the number of
/// cache points.
fn check_messages(
    messages: &[Value],
    has_tool_config: bool,
    stats: &mut TextStats,
) -> Result<(bool, usize), ApiError> {
    let mut previous_role = "";
    let mut open: Vec<&str> = Vec::new();
    let mut cache_points = 0;
    let mut last_is_user = false;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "A conversation must start with a user message. Try again with a conversation that \
             starts with a user message.",
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let message = object(message, "messages")?;
        only(message, &["role", "content"])?;
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(ApiError::constraint(
                &format!("'{role}'"),
                &format!("messages.{}.member.role", i + 1),
                "Member must satisfy enum value set: [user, assistant]",
            ));
        }
        if i == 0 && role != "user" {
            return Err(ApiError::invalid(
                "A conversation must start with a user message. Try again with a conversation \
                 that starts with a user message.",
            ));
        }
        if role == previous_role {
            return Err(ApiError::invalid(
                "A conversation must alternate between user and assistant roles. Make sure the \
                 conversation alternates between user and assistant roles and try again.",
            ));
        }
        let content = list(message.get("content"), &format!("messages.{i}.content"))?;
        if content.is_empty() {
            return Err(ApiError::invalid(format!(
                "The content field in the Message object at messages.{i} is empty. Add a \
                 ContentBlock object to the content field and try again."
            )));
        }
        let mut uses = Vec::new();
        let mut results = Vec::new();
        let mut only_results = true;
        for (j, block) in content.iter().enumerate() {
            let at = format!("messages.{}.member.content.{}.member", i + 1, j + 1);
            let block = object(block, &at)?;
            let kind = one_member(block, &CONTENT_BLOCKS, &at)?;
            only_results &= kind == "toolResult";
            if matches!(kind, "toolUse" | "toolResult") && !has_tool_config {
                return Err(ApiError::invalid(
                    "The toolConfig field must be defined when using toolUse and toolResult \
                     content blocks.",
                ));
            }
            match kind {
                "text" => stats.add(text_member(block, &format!("{at}.text"))?),
                "image" => check_image(&block["image"], &format!("{at}.image"))?,
                "toolUse" => {
                    let tool_use = object(&block["toolUse"], &at)?;
                    only(tool_use, &["toolUseId", "name", "input"])?;
                    let id = tool_use.get("toolUseId").and_then(Value::as_str);
                    let name = tool_use.get("name").and_then(Value::as_str);
                    let (Some(id), Some(_)) = (id, name) else {
                        return Err(ApiError::constraint(
                            "null",
                            &format!("{at}.toolUse.toolUseId"),
                            "Member must not be null",
                        ));
                    };
                    if role != "assistant" {
                        return Err(ApiError::invalid(format!(
                            "toolUse blocks are only allowed in assistant messages (messages.{i}.\
                             content.{j})."
                        )));
                    }
                    // The arguments count, not the name: as the OpenAI emulator counts a
                    // tool call, so one conversation is one prompt size on every provider.
                    stats.add(
                        &tool_use
                            .get("input")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                    );
                    uses.push(id);
                }
                "toolResult" => {
                    let result = object(&block["toolResult"], &at)?;
                    only(result, &["toolUseId", "content", "status"])?;
                    let id = result
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if let Some(status) = result.get("status").and_then(Value::as_str)
                        && status != "success"
                        && status != "error"
                    {
                        return Err(ApiError::constraint(
                            &format!("'{status}'"),
                            &format!("{at}.toolResult.status"),
                            "Member must satisfy enum value set: [success, error]",
                        ));
                    }
                    for part in list(result.get("content"), &at)? {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            stats.add(text);
                        } else if let Some(json) = part.get("json") {
                            stats.add(&json.to_string());
                        }
                    }
                    results.push((j, id));
                }
                "cachePoint" => cache_points += 1,
                _ => {}
            }
        }
        if !results.is_empty() && results.len() > open.len() {
            return Err(ApiError::invalid(format!(
                "The number of toolResult blocks at messages.{i}.content exceeds the number of \
                 toolUse blocks of previous turn."
            )));
        }
        if !open.is_empty() {
            let missing: Vec<&str> = open
                .iter()
                .copied()
                .filter(|id| !results.iter().any(|(_, r)| r == id))
                .collect();
            if !missing.is_empty() {
                return Err(ApiError::invalid(format!(
                    "Expected toolResult blocks at messages.{i}.content for the following Ids: {}",
                    missing.join(", ")
                )));
            }
        }
        if let Some((j, id)) = results.iter().find(|(_, id)| !open.contains(id)) {
            return Err(ApiError::invalid(format!(
                "The toolUseId {id} at messages.{i}.content.{j} does not match any toolUse id of \
                 the previous turn."
            )));
        }
        open = uses;
        previous_role = role;
        last_is_user = role == "user" && !only_results;
        // Each tool result counts as a message of its own, as OpenAI's `tool` messages do, so
        // one conversation is one prompt size on every provider (Converse coalesces them).
        stats.messages += results.len();
        if !only_results || results.is_empty() {
            stats.messages += 1;
        }
    }
    Ok((last_is_user, cache_points))
}

fn check_image(image: &Value, at: &str) -> Result<(), ApiError> {
    let image = object(image, at)?;
    only(image, &["format", "source"])?;
    let format = image
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or("null");
    if !IMAGE_FORMATS.contains(&format) {
        return Err(ApiError::constraint(
            &format!("'{format}'"),
            &format!("{at}.format"),
            "Member must satisfy enum value set: [png, jpeg, gif, webp]",
        ));
    }
    let source = object(
        image.get("source").unwrap_or(&Value::Null),
        &format!("{at}.source"),
    )?;
    only(source, &["bytes", "s3Location"])?;
    match source.get("bytes").and_then(Value::as_str) {
        Some(b64) if aws_smithy_types::base64::decode(b64).is_ok() => Ok(()),
        Some(_) => Err(ApiError::new(
            400,
            "SerializationException",
            format!("Invalid base64 in '{at}.source.bytes'."),
        )),
        None if source.contains_key("s3Location") => Ok(()),
        None => Err(ApiError::invalid(format!(
            "The image source at {at} must set bytes or s3Location."
        ))),
    }
}

/// `inferenceConfig`: Bedrock's bounds. Returns `maxTokens`.
fn check_inference(config: Option<&Value>) -> Result<Option<u64>, ApiError> {
    let Some(config) = config.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let config = object(config, "inferenceConfig")?;
    only(
        config,
        &["maxTokens", "temperature", "topP", "stopSequences"],
    )?;
    for (name, max) in [("temperature", 1.0), ("topP", 1.0)] {
        if let Some(value) = config.get(name) {
            let ok = value.as_f64().is_some_and(|v| (0.0..=max).contains(&v));
            if !ok {
                return Err(ApiError::constraint(
                    &format!("'{value}'"),
                    &format!("inferenceConfig.{name}"),
                    "Member must have value less than or equal to 1 and greater than or equal to 0",
                ));
            }
        }
    }
    let stops = list(config.get("stopSequences"), "inferenceConfig.stopSequences")?;
    if stops.len() > 2500 || stops.iter().any(|s| !s.is_string()) {
        return Err(ApiError::constraint(
            "the given list",
            "inferenceConfig.stopSequences",
            "Member must have length less than or equal to 2500",
        ));
    }
    match config.get("maxTokens") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_i64() {
            Some(n) if n >= 1 => Ok(u64::try_from(n).ok()),
            _ => Err(ApiError::constraint(
                &format!("'{value}'"),
                "inferenceConfig.maxTokens",
                "Member must have value greater than or equal to 1",
            )),
        },
    }
}

/// `outputConfig`: `{textFormat: {type: "json_schema", structure: {jsonSchema: {schema, name?,
/// description?}}}, effort?}` (`OutputConfig`, `OutputFormat`, `JsonSchemaDefinition`), where
/// `schema` is a JSON Schema *as a string*. Returns whether a JSON answer was asked for.
fn check_output_config(config: Option<&Value>) -> Result<bool, ApiError> {
    let Some(config) = config.filter(|c| !c.is_null()) else {
        return Ok(false);
    };
    let config = object(config, "outputConfig")?;
    only(config, &["textFormat", "effort"])?;
    let Some(format) = config.get("textFormat").filter(|f| !f.is_null()) else {
        return Ok(false);
    };
    let format = object(format, "outputConfig.textFormat")?;
    only(format, &["type", "structure"])?;
    let kind = format.get("type").and_then(Value::as_str).unwrap_or("null");
    if kind != "json_schema" {
        return Err(ApiError::constraint(
            &format!("'{kind}'"),
            "outputConfig.textFormat.type",
            "Member must satisfy enum value set: [json_schema]",
        ));
    }
    let structure = object(
        format.get("structure").unwrap_or(&Value::Null),
        "outputConfig.textFormat.structure",
    )?;
    only(structure, &["jsonSchema"])?;
    let definition = object(
        structure.get("jsonSchema").unwrap_or(&Value::Null),
        "outputConfig.textFormat.structure.jsonSchema",
    )?;
    only(definition, &["schema", "name", "description"])?;
    let Some(Value::String(schema)) = definition.get("schema") else {
        return Err(ApiError::new(
            400,
            "SerializationException",
            format!(
                "Expected a string at 'outputConfig.textFormat.structure.jsonSchema.schema', \
                 found {}.",
                definition.get("schema").unwrap_or(&Value::Null)
            ),
        ));
    };
    match serde_json::from_str::<Value>(schema) {
        Ok(Value::Object(_)) => Ok(true),
        _ => Err(ApiError::invalid(
            "The JSON schema in outputConfig.textFormat.structure.jsonSchema.schema is not a \
             JSON object.",
        )),
    }
}

/// Tool names as Claude on Bedrock allows them: `[a-zA-Z0-9_-]{1,64}` (both body formats).
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `toolConfig`: tool specs (names as Bedrock allows them) and the tool choice union.
fn check_tool_config(
    config: Option<&Value>,
) -> Result<(Vec<FnTool<'_>>, ToolChoice<'_>), ApiError> {
    let Some(config) = config.filter(|c| !c.is_null()) else {
        return Ok((Vec::new(), ToolChoice::None));
    };
    let config = object(config, "toolConfig")?;
    only(config, &["tools", "toolChoice"])?;
    let tools = list(config.get("tools"), "toolConfig.tools")?;
    if tools.is_empty() {
        return Err(ApiError::constraint(
            "'[]'",
            "toolConfig.tools",
            "Member must have length greater than or equal to 1",
        ));
    }
    let mut declared = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("toolConfig.tools.{}.member", i + 1);
        let tool = object(tool, &at)?;
        if one_member(tool, &["toolSpec", "cachePoint", "systemTool"], &at)? != "toolSpec" {
            continue;
        }
        let spec = object(&tool["toolSpec"], &format!("{at}.toolSpec"))?;
        only(spec, &["name", "description", "inputSchema", "strict"])?;
        let name = spec.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_tool_name(name) {
            return Err(ApiError::constraint(
                &format!("'{name}'"),
                &format!("{at}.toolSpec.name"),
                "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
            ));
        }
        let schema = spec.get("inputSchema").and_then(Value::as_object);
        let Some(json) = schema.and_then(|s| s.get("json")).filter(|j| j.is_object()) else {
            return Err(ApiError::invalid(format!(
                "The inputSchema of tool {name} must be an object with a json member holding a \
                 JSON Schema object."
            )));
        };
        declared.push(FnTool {
            name,
            parameters: Some(json),
        });
    }
    let choice = match config.get("toolChoice").filter(|c| !c.is_null()) {
        None => ToolChoice::Auto,
        Some(choice) => {
            let choice = object(choice, "toolConfig.toolChoice")?;
            match one_member(choice, &["auto", "any", "tool"], "toolConfig.toolChoice")? {
                "tool" => ToolChoice::Named(
                    choice["tool"]
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ),
                _ => ToolChoice::Auto,
            }
        }
    };
    Ok((declared, choice))
}

// ---------------------------------------------------------------------------------------------
// The answer: Converse JSON and ConverseStream frames.
// ---------------------------------------------------------------------------------------------

/// What both answers print, built once per request.
struct Answer<'a> {
    plan: &'a Plan<'a>,
    reply: &'a Reply<'a>,
    tool_use_id: String,
}

impl<'a> Answer<'a> {
    fn new(plan: &'a Plan<'a>, reply: &'a Reply<'a>) -> Self {
        Self {
            plan,
            reply,
            tool_use_id: alnum_id("tooluse_", 22),
        }
    }

    fn stop_reason(&self) -> &'static str {
        stop_reason(self.reply)
    }

    fn usage(&self) -> Usage {
        let output = self.reply.output_tokens();
        Usage {
            input_tokens: self.plan.input_tokens,
            output_tokens: output,
            total_tokens: self
                .plan
                .input_tokens
                .saturating_add(output)
                .saturating_add(self.plan.cache_read),
            cache_read_input_tokens: (self.plan.cache_read > 0).then_some(self.plan.cache_read),
            cache_write_input_tokens: (self.plan.cache_read > 0).then_some(0),
        }
    }

    fn whole(&self, started: Instant) -> ConverseResponse {
        let content = self.reply.content();
        let block = match self.reply.body {
            Body::Text => serde_json::json!({ "text": content }),
            Body::Tool { name } => serde_json::json!({ "toolUse": {
                "toolUseId": self.tool_use_id,
                "name": name,
                "input": serde_json::from_str::<Value>(&content).unwrap_or_default(),
            }}),
        };
        ConverseResponse {
            output: Output {
                message: OutputMessage {
                    role: "assistant",
                    content: [block],
                },
            },
            stop_reason: self.stop_reason(),
            usage: self.usage(),
            metrics: Metrics {
                latency_ms: latency_ms(started),
            },
        }
    }

    /// ConverseStream: messageStart, (for a tool) contentBlockStart, one contentBlockDelta per
    /// reply piece, contentBlockStop, messageStop, metadata. Text blocks have no
    /// contentBlockStart, as on Bedrock. A `midstream_error` replaces everything after its
    /// piece with a `modelStreamErrorException` frame.
    fn frames(
        &self,
        fault: &super::faults::Active,
        started: Instant,
    ) -> Result<Vec<Bytes>, ApiError> {
        let (pieces, fails) = self.reply.streamed(fault);
        let mut frames = Vec::with_capacity(pieces.len() + 6);
        frames.push(event(
            "messageStart",
            &serde_json::json!({ "role": "assistant" }),
        )?);
        if let Body::Tool { name } = self.reply.body {
            frames.push(event(
                "contentBlockStart",
                &serde_json::json!({
                    "contentBlockIndex": 0,
                    "start": {"toolUse": {"toolUseId": self.tool_use_id, "name": name}}
                }),
            )?);
        }
        for piece in pieces {
            let delta = match self.reply.body {
                Body::Text => Delta::Text(piece),
                Body::Tool { .. } => Delta::ToolUse { input: piece },
            };
            let block = BlockDelta {
                content_block_index: 0,
                delta,
            };
            frames.push(event("contentBlockDelta", &block)?);
        }
        if fails {
            frames.push(stream_error()?);
            return Ok(frames);
        }
        frames.push(event(
            "contentBlockStop",
            &serde_json::json!({ "contentBlockIndex": 0 }),
        )?);
        frames.push(event(
            "messageStop",
            &serde_json::json!({ "stopReason": self.stop_reason() }),
        )?);
        let metadata = Metadata {
            usage: self.usage(),
            metrics: Metrics {
                latency_ms: latency_ms(started),
            },
        };
        frames.push(event("metadata", &metadata)?);
        Ok(frames)
    }
}

/// Why the answer stopped, in the words Converse and Anthropic share.
fn stop_reason(reply: &Reply<'_>) -> &'static str {
    match (&reply.body, reply.truncated) {
        (_, true) => "max_tokens",
        (Body::Tool { .. }, false) => "tool_use",
        (Body::Text, false) => "end_turn",
    }
}

fn latency_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Appends `,"p":"<random letters>"` before the closing brace of a serialised object: the
/// random-length padding Bedrock adds to every event to hide token lengths. Written into the
/// bytes directly, so an event costs one serialisation and no intermediate `Value`.
fn pad(json: &mut Vec<u8>) {
    if json.last() != Some(&b'}') {
        return;
    }
    json.pop();
    if json.len() > 1 {
        json.push(b',');
    }
    json.extend_from_slice(b"\"p\":\"");
    let len = fastrand::usize(1..=24);
    json.extend(std::iter::repeat_with(|| fastrand::u8(b'a'..=b'z')).take(len));
    json.extend_from_slice(b"\"}");
}

/// One `:message-type: event` frame whose payload is `value` plus the `p` padding.
fn event<T: Serialize>(kind: &'static str, value: &T) -> Result<Bytes, ApiError> {
    let mut payload = serde_json::to_vec(value).map_err(internal)?;
    pad(&mut payload);
    frame(
        vec![
            Header::new(":event-type", HeaderValue::String(kind.into())),
            Header::new(":content-type", HeaderValue::String(JSON.into())),
            Header::new(":message-type", HeaderValue::String("event".into())),
        ],
        payload,
    )
}

/// The `midstream_error` fault on both stream operations: the exception Bedrock sends when the
/// model fails mid-answer.
fn stream_error() -> Result<Bytes, ApiError> {
    exception(
        "modelStreamErrorException",
        &serde_json::json!({
            "message": "The model encountered an error while streaming. (emulated mid-stream \
                        fault)",
            "originalStatusCode": 500,
            "originalMessage": "Internal server error",
        }),
    )
}

/// One `:message-type: exception` frame, as botocore and the Rust SDK read in-stream errors.
fn exception(kind: &'static str, payload: &Value) -> Result<Bytes, ApiError> {
    let payload = serde_json::to_vec(payload).map_err(internal)?;
    frame(
        vec![
            Header::new(":exception-type", HeaderValue::String(kind.into())),
            Header::new(":content-type", HeaderValue::String(JSON.into())),
            Header::new(":message-type", HeaderValue::String("exception".into())),
        ],
        payload,
    )
}

fn frame(headers: Vec<Header>, payload: Vec<u8>) -> Result<Bytes, ApiError> {
    let message = Message::new_from_parts(headers, payload);
    let mut out = Vec::with_capacity(256);
    write_message_to(&message, &mut out).map_err(internal)?;
    Ok(Bytes::from(out))
}

// ---------------------------------------------------------------------------------------------
// Wire types (private), in Converse's camelCase.
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    output: Output,
    stop_reason: &'static str,
    usage: Usage,
    metrics: Metrics,
}

#[derive(Serialize)]
struct Output {
    message: OutputMessage,
}

#[derive(Serialize)]
struct OutputMessage {
    role: &'static str,
    content: [Value; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_write_input_tokens: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metrics {
    latency_ms: u64,
}

/// A `contentBlockDelta` payload (before its padding).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta<'a> {
    content_block_index: u32,
    delta: Delta<'a>,
}

/// The `delta` union: `{"text": …}` or `{"toolUse": {"input": …}}`.
#[derive(Serialize)]
enum Delta<'a> {
    #[serde(rename = "text")]
    Text(&'a str),
    #[serde(rename = "toolUse")]
    ToolUse { input: &'a str },
}

#[derive(Serialize)]
struct Metadata {
    usage: Usage,
    metrics: Metrics,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_one_more_member() {
        for json in [&b"{}"[..], b"{\"role\":\"assistant\"}"] {
            let mut out = json.to_vec();
            pad(&mut out);
            let value: Value = serde_json::from_slice(&out).expect("still JSON");
            let p = value["p"].as_str().expect("p is a string");
            assert!((1..=24).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase()));
            let members = value.as_object().map_or(0, Map::len);
            assert_eq!(members, if json.len() == 2 { 1 } else { 2 });
        }
        let mut not_object = b"[1]".to_vec();
        pad(&mut not_object);
        assert_eq!(not_object, b"[1]");
    }

    #[test]
    fn tool_names_follow_bedrock_rules() {
        assert!(valid_tool_name("get_weather-2"));
        assert!(!valid_tool_name("get.weather"));
        assert!(!valid_tool_name(""));
        assert!(!valid_tool_name(&"a".repeat(65)));
    }
}
