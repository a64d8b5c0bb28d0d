//! InvokeModel and InvokeModelWithResponseStream with the Anthropic Messages body, as Bedrock
//! serves Claude: the body is Anthropic's request without `model` and `stream`, plus the
//! required `"anthropic_version": "bedrock-2023-05-31"`. This file owns that body's validation
//! (Bedrock's JSON-schema messages for missing and extraneous keys, Anthropic's own messages
//! for turn order and the tool_use / tool_result protocol), the Anthropic `Message` answer with
//! Bedrock's token-count headers, and the stream: `:event-type: chunk` frames whose payload is
//! `{"bytes": <base64 of one Anthropic stream event>, "p": <padding>}`, ending with
//! `message_stop` and its `amazon-bedrock-invocationMetrics`. Authentication, faults and the
//! frame encoding are the parent's.

use std::time::Instant;

use actix_web::HttpResponseBuilder;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::super::faults::Active;
use super::super::reply::{Body, FnTool, Reply, TextStats, ToolChoice, alnum_id, pick_tool};
use super::{ApiError, Plan, frame, internal, latency_ms, list, object, pad, valid_tool_name};
use aws_smithy_types::event_stream::{Header, HeaderValue};

/// The only `anthropic_version` Bedrock accepts for the Messages API.
const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
const FIELDS: [&str; 13] = [
    "anthropic_version",
    "anthropic_beta",
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
];
const BLOCK_TYPES: [&str; 7] = [
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
];

/// Bedrock's JSON-schema wording for the invoke body.
fn malformed(what: &str) -> ApiError {
    ApiError::invalid(format!(
        "Malformed input request: #: {what}, please reformat your input and try again."
    ))
}

/// Validates the Anthropic Messages body; the plan is the same as Converse's.
pub(super) fn validate(root: &Map<String, Value>) -> Result<Plan<'_>, ApiError> {
    if let Some(key) = root.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(malformed(&format!(
            "extraneous key [{key}] is not permitted"
        )));
    }
    for required in ["anthropic_version", "max_tokens", "messages"] {
        if root.get(required).is_none_or(Value::is_null) {
            return Err(malformed(&format!("required key [{required}] not found")));
        }
    }
    if root["anthropic_version"] != ANTHROPIC_VERSION {
        return Err(ApiError::invalid(format!(
            "anthropic_version: Input should be '{ANTHROPIC_VERSION}'"
        )));
    }
    let max_tokens = match root["max_tokens"].as_i64() {
        Some(n) if n >= 1 => u64::try_from(n).ok(),
        _ => {
            return Err(ApiError::invalid(
                "max_tokens: Input should be greater than or equal to 1",
            ));
        }
    };
    for (name, max) in [("temperature", 1.0), ("top_p", 1.0)] {
        if let Some(value) = root.get(name).filter(|v| !v.is_null())
            && !value.as_f64().is_some_and(|v| (0.0..=max).contains(&v))
        {
            return Err(ApiError::invalid(format!(
                "{name}: Input should be less than or equal to 1 and greater than or equal to 0"
            )));
        }
    }
    let mut stats = TextStats::default();
    match root.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            stats.add(text);
            stats.messages += 1;
        }
        Some(Value::Array(blocks)) => {
            for block in blocks {
                stats.add(
                    block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            stats.messages += 1;
        }
        Some(_) => return Err(ApiError::invalid("system: Input should be a valid list")),
    }
    let last_is_user = check_messages(list(root.get("messages"), "messages")?, &mut stats)?;
    let tools = check_tools(root)?;
    let choice = match root.get("tool_choice").filter(|c| !c.is_null()) {
        None => ToolChoice::Auto,
        Some(choice) => match choice.get("type").and_then(Value::as_str) {
            Some("auto" | "any") => ToolChoice::Auto,
            Some("none") => ToolChoice::None,
            Some("tool") => ToolChoice::Named(
                choice
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
                ));
            }
        },
    };
    let tool = pick_tool(&tools, choice, last_is_user).map_err(|name| {
        ApiError::invalid(format!(
            "tool_choice: Tool '{name}' not found in provided tools"
        ))
    })?;
    Ok(Plan {
        limit: max_tokens,
        // The Anthropic body's structured output is not emulated.
        json: false,
        tool,
        input_tokens: stats.prompt_tokens(),
        cache_read: 0,
    })
}

/// Anthropic's turn rules, in Anthropic's words. Returns whether the conversation ends with a
/// user turn that is not only tool results.
fn check_messages(messages: &[Value], stats: &mut TextStats) -> Result<bool, ApiError> {
    let mut previous = "";
    // Ids of the previous turn's tool_use blocks, which this turn must answer.
    let mut open: Vec<String> = Vec::new();
    let mut last_is_user = false;
    for (i, message) in messages.iter().enumerate() {
        let message = object(message, "messages")?;
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(ApiError::invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        if i == 0 && role != "user" {
            return Err(ApiError::invalid(
                "messages: first message must use the \"user\" role",
            ));
        }
        if role == previous {
            return Err(ApiError::invalid(format!(
                "messages: roles must alternate between \"user\" and \"assistant\", but found \
                 multiple \"{role}\" roles in a row"
            )));
        }
        let blocks: Vec<Value> = match message.get("content") {
            Some(Value::String(text)) if !text.is_empty() => {
                vec![json!({"type": "text", "text": text})]
            }
            Some(Value::Array(blocks)) if !blocks.is_empty() => blocks.clone(),
            _ if i + 1 == messages.len() && role == "assistant" => Vec::new(),
            _ => {
                return Err(ApiError::invalid(format!(
                    "messages.{i}: all messages must have non-empty content except for the \
                     optional final assistant message"
                )));
            }
        };
        let mut uses = Vec::new();
        let mut results = Vec::new();
        let mut only_results = true;
        for (j, block) in blocks.iter().enumerate() {
            let kind = block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !BLOCK_TYPES.contains(&kind) {
                return Err(ApiError::invalid(format!(
                    "messages.{i}.content.{j}.type: Input tag '{kind}' found using 'type' does \
                     not match any of the expected tags: 'text', 'image', 'document', \
                     'tool_use', 'tool_result', 'thinking', 'redacted_thinking'"
                )));
            }
            only_results &= kind == "tool_result";
            match kind {
                "text" => stats.add(
                    block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ),
                "tool_use" => {
                    let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                    stats.add(
                        block
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                    stats.add(&block.get("input").map(Value::to_string).unwrap_or_default());
                    uses.push(id.to_owned());
                }
                "tool_result" => {
                    let id = block
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !open.iter().any(|o| o == id) {
                        return Err(ApiError::invalid(format!(
                            "messages.{i}.content.{j}: unexpected `tool_use_id` found in \
                             `tool_result` blocks: {id}. Each `tool_result` block must have a \
                             corresponding `tool_use` block in the previous message."
                        )));
                    }
                    match block.get("content") {
                        Some(Value::String(text)) => stats.add(text),
                        Some(other) => stats.add(&other.to_string()),
                        None => {}
                    }
                    results.push(id.to_owned());
                }
                _ => {}
            }
        }
        let missing: Vec<&str> = open
            .iter()
            .map(String::as_str)
            .filter(|id| !results.iter().any(|r| r == id))
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::invalid(format!(
                "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately \
                 after: {}. Each `tool_use` block must have a corresponding `tool_result` block \
                 in the next message.",
                i.saturating_sub(1),
                missing.join(", ")
            )));
        }
        open = uses;
        previous = role;
        last_is_user = role == "user" && !only_results;
        stats.messages += 1;
    }
    Ok(last_is_user)
}

fn check_tools(root: &Map<String, Value>) -> Result<Vec<FnTool<'_>>, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in list(root.get("tools"), "tools")?.iter().enumerate() {
        let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_tool_name(name) {
            return Err(ApiError::invalid(format!(
                "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )));
        }
        // Server tools (`type` set, e.g. web search) are accepted and never called.
        if tool.get("type").is_some_and(|t| t != "custom") {
            continue;
        }
        let schema = tool.get("input_schema").filter(|s| s.is_object());
        let Some(schema) = schema else {
            return Err(ApiError::invalid(format!(
                "tools.{i}.custom.input_schema: Field required"
            )));
        };
        out.push(FnTool {
            name,
            parameters: Some(schema),
        });
    }
    Ok(out)
}

/// The Anthropic message the emulator answers with.
pub(super) struct Message<'a> {
    plan: &'a Plan<'a>,
    reply: &'a Reply<'a>,
    id: String,
    tool_use_id: String,
    /// `claude-3-5-sonnet-20240620` from `anthropic.claude-3-5-sonnet-20240620-v1:0`.
    model: String,
}

impl<'a> Message<'a> {
    pub(super) fn new(plan: &'a Plan<'a>, reply: &'a Reply<'a>, model_id: &str) -> Self {
        let model = model_id
            .rsplit('/')
            .next()
            .unwrap_or(model_id)
            .split("anthropic.")
            .last()
            .unwrap_or(model_id);
        let model = model.split("-v").next().unwrap_or(model).to_owned();
        Self {
            plan,
            reply,
            id: alnum_id("msg_bdrk_01", 22),
            tool_use_id: alnum_id("toolu_bdrk_01", 22),
            model,
        }
    }

    fn stop_reason(&self) -> &'static str {
        super::stop_reason(self.reply)
    }

    fn block(&self, whole: bool) -> Value {
        match self.reply.body {
            Body::Text => json!({
                "type": "text",
                "text": if whole { self.reply.content() } else { String::new() },
            }),
            Body::Tool { name } => json!({
                "type": "tool_use",
                "id": self.tool_use_id,
                "name": name,
                "input": if whole {
                    serde_json::from_str(&self.reply.content()).unwrap_or_default()
                } else {
                    json!({})
                },
            }),
        }
    }

    fn usage(&self, output_tokens: u64) -> Usage {
        Usage {
            input_tokens: self.plan.input_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            output_tokens,
        }
    }

    pub(super) fn whole(&self) -> AnthropicMessage<'_> {
        AnthropicMessage {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content: vec![self.block(true)],
            stop_reason: Some(self.stop_reason()),
            stop_sequence: None,
            usage: self.usage(self.reply.output_tokens()),
        }
    }

    /// Bedrock's token-count headers on the non-streamed answer.
    pub(super) fn usage_headers(&self, builder: &mut HttpResponseBuilder, started: Instant) {
        builder
            .insert_header(("x-amzn-bedrock-input-token-count", self.plan.input_tokens))
            .insert_header((
                "x-amzn-bedrock-output-token-count",
                self.reply.output_tokens(),
            ))
            .insert_header(("x-amzn-bedrock-invocation-latency", latency_ms(started)));
    }

    /// message_start, content_block_start, one delta per piece, content_block_stop,
    /// message_delta (stop reason, cumulative output tokens), message_stop with the
    /// invocation metrics. A `midstream_error` ends the stream with a
    /// `modelStreamErrorException` frame after its piece.
    pub(super) fn frames(&self, fault: &Active, started: Instant) -> Result<Vec<Bytes>, ApiError> {
        let (pieces, fails) = self.reply.streamed(fault);
        let mut frames = Vec::with_capacity(pieces.len() + 6);
        let start = AnthropicMessage {
            content: Vec::new(),
            stop_reason: None,
            usage: self.usage(1),
            ..self.whole()
        };
        frames.push(chunk(&json!({"type": "message_start", "message": start}))?);
        frames.push(chunk(&json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": self.block(false),
        }))?);
        for piece in pieces {
            let delta = match self.reply.body {
                Body::Text => json!({"type": "text_delta", "text": piece}),
                Body::Tool { .. } => json!({"type": "input_json_delta", "partial_json": piece}),
            };
            frames.push(chunk(&json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": delta,
            }))?);
        }
        if fails {
            frames.push(super::stream_error()?);
            return Ok(frames);
        }
        let output = self.reply.output_tokens();
        frames.push(chunk(&json!({"type": "content_block_stop", "index": 0}))?);
        frames.push(chunk(&json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
            "usage": {"output_tokens": output},
        }))?);
        let latency = latency_ms(started);
        frames.push(chunk(&json!({
            "type": "message_stop",
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": self.plan.input_tokens,
                "outputTokenCount": output,
                "invocationLatency": latency,
                "firstByteLatency": latency,
            },
        }))?);
        Ok(frames)
    }
}

/// One `:event-type: chunk` frame carrying an Anthropic event as base64 `bytes`.
fn chunk(event: &Value) -> Result<Bytes, ApiError> {
    let json = serde_json::to_vec(event).map_err(internal)?;
    let mut payload = serde_json::to_vec(&Chunk {
        bytes: &aws_smithy_types::base64::encode(json),
    })
    .map_err(internal)?;
    pad(&mut payload);
    frame(
        vec![
            Header::new(":event-type", HeaderValue::String("chunk".into())),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            Header::new(":message-type", HeaderValue::String("event".into())),
        ],
        payload,
    )
}

/// A `chunk` event's payload (before its padding).
#[derive(Serialize)]
struct Chunk<'a> {
    bytes: &'a str,
}

#[derive(Serialize)]
pub(super) struct AnthropicMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Value>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: Usage,
}

#[derive(Clone, Copy, Serialize)]
struct Usage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}
