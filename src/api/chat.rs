//! The Chat Completions codec: `POST /v1/chat/completions` over the canonical model.
//!
//! Used only when the route's provider speaks another wire (Gemini, Bedrock): it decodes the
//! client's body into a [`Conversation`] and encodes the provider's [`Reply`] as a
//! `chat.completion`, or its [`StreamEvent`]s as `chat.completion.chunk` events ending in
//! `data: [DONE]`. The wire types here are private and follow openai-python's
//! `completion_create_params.py` and `chat_completion*.py`. What the canonical model cannot
//! carry faithfully (`n > 1`, log probabilities, audio) is refused with a 400 naming the
//! parameter, never silently dropped.

use super::canonical::{
    Conversation, FinishReason, Message, OutputFormat, Part, Reply, Role, Sampling, StreamEvent,
    ToolCall, ToolChoice, ToolResult, Usage,
};
use super::codec::{self, FrontEncoder, FunctionSpec, Stop, TextOrParts};
use crate::error::GatewayError;
use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Request {
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<ResponseFormat>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    audio: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage {
    System {
        content: TextOrParts,
    },
    Developer {
        content: TextOrParts,
    },
    User {
        content: TextOrParts,
    },
    Assistant {
        #[serde(default)]
        content: Option<TextOrParts>,
        #[serde(default)]
        tool_calls: Vec<WireToolCall>,
        #[serde(default)]
        reasoning_content: Option<String>,
    },
    Tool {
        tool_call_id: String,
        content: TextOrParts,
    },
}

#[derive(Deserialize, Serialize)]
struct WireToolCall {
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunctionCall,
    /// Gemini's thought signature, as Google's own compatibility layer carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extra_content: Option<ExtraContent>,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Deserialize, Serialize)]
struct WireFunctionCall {
    name: String,
    arguments: String,
}

#[derive(Deserialize, Serialize)]
struct ExtraContent {
    google: GoogleExtra,
}

#[derive(Deserialize, Serialize)]
struct GoogleExtra {
    thought_signature: String,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    function: Option<FunctionSpec>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Deserialize)]
struct JsonSchema {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

/// What the chat encoder needs besides the reply: whether the client asked for usage in the
/// stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChatOptions {
    pub include_usage: bool,
}

/// Decodes a chat request body (already checked as JSON by `FrontRequest::parse`).
pub fn decode(raw: &[u8]) -> Result<(Conversation, ChatOptions), GatewayError> {
    let req: Request = codec::from_body(raw)?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(codec::unsupported("n", "only one choice (n = 1)"));
    }
    if req.logprobs == Some(true) {
        return Err(codec::unsupported("logprobs", "no log probabilities"));
    }
    if req.audio.is_some() {
        return Err(codec::unsupported("audio", "no audio output"));
    }
    let mut conv = Conversation {
        stream: req.stream.unwrap_or(false),
        parallel_tool_calls: req.parallel_tool_calls,
        reasoning_effort: req.reasoning_effort,
        sampling: Sampling {
            temperature: req.temperature,
            top_p: req.top_p,
            max_tokens: req.max_completion_tokens.or(req.max_tokens),
            stop: req.stop.map(Stop::into_vec).unwrap_or_default(),
            seed: req.seed,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
        },
        ..Conversation::default()
    };
    for (i, m) in req.messages.into_iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        match m {
            WireMessage::System { content } | WireMessage::Developer { content } => {
                conv.system.push(content.into_text(&at("content"))?);
            }
            WireMessage::User { content } => {
                let parts = content.into_parts(&at("content"))?;
                conv.messages.push(Message {
                    role: Role::User,
                    parts,
                });
            }
            WireMessage::Assistant {
                content,
                tool_calls,
                reasoning_content,
            } => {
                let mut parts = Vec::new();
                if let Some(text) = reasoning_content.filter(|t| !t.is_empty()) {
                    parts.push(Part::Reasoning {
                        text,
                        signature: None,
                    });
                }
                if let Some(content) = content {
                    let text = content.into_text(&at("content"))?;
                    if !text.is_empty() {
                        parts.push(Part::text(text));
                    }
                }
                for call in tool_calls {
                    parts.push(Part::ToolCall(ToolCall {
                        id: call.id,
                        name: call.function.name,
                        arguments: call.function.arguments,
                        signature: call.extra_content.map(|e| e.google.thought_signature),
                    }));
                }
                conv.messages.push(Message {
                    role: Role::Assistant,
                    parts,
                });
            }
            WireMessage::Tool {
                tool_call_id,
                content,
            } => {
                let result = ToolResult {
                    name: codec::called_name(&conv.messages, &tool_call_id),
                    call_id: tool_call_id,
                    content: content.into_text(&at("content"))?,
                    is_error: false,
                };
                codec::push_tool_result(&mut conv.messages, result);
            }
        }
    }
    if conv.messages.is_empty() {
        return Err(GatewayError::invalid(
            "The conversation has no user or assistant message: 'messages' must hold at least one.",
            Some("messages"),
            Some("invalid_value"),
        ));
    }
    for (i, tool) in req.tools.unwrap_or_default().iter().enumerate() {
        conv.tools
            .push(codec::function_tool(i, &tool.kind, tool.function.as_ref())?);
    }
    conv.tool_choice = match req.tool_choice {
        None => ToolChoice::Auto,
        Some(v) => codec::tool_choice(&v, |v| v.get("function")?.get("name")?.as_str())?,
    };
    conv.output = match req.response_format {
        None | Some(ResponseFormat::Text) => OutputFormat::Text,
        Some(ResponseFormat::JsonObject) => OutputFormat::JsonObject,
        Some(ResponseFormat::JsonSchema { json_schema: s }) => OutputFormat::JsonSchema {
            name: s.name,
            description: s.description,
            schema: s.schema.unwrap_or_else(codec::empty_schema),
            strict: s.strict,
        },
    };
    let options = ChatOptions {
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    };
    Ok((conv, options))
}

#[derive(Serialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

fn wire_usage(u: &Usage) -> WireUsage {
    WireUsage {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        total_tokens: u.total(),
        prompt_tokens_details: PromptDetails {
            cached_tokens: u.cached_input_tokens,
        },
        completion_tokens_details: CompletionDetails {
            reasoning_tokens: u.reasoning_tokens,
        },
    }
}

fn wire_call(call: &ToolCall) -> WireToolCall {
    WireToolCall {
        id: call.id.clone(),
        kind: function_type(),
        function: WireFunctionCall {
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        },
        extra_content: call.signature.clone().map(|s| ExtraContent {
            google: GoogleExtra {
                thought_signature: s,
            },
        }),
    }
}

/// Who answered and when, the same on every chunk of one answer.
#[derive(Clone, Debug)]
pub struct Stamp {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Stamp {
    /// A fresh `chatcmpl-…` id, now, for `model`.
    pub fn new(model: &str) -> Self {
        Self {
            id: super::canonical::fresh_id("chatcmpl-"),
            created: codec::now(),
            model: model.to_owned(),
        }
    }
}

/// The `chat.completion` for a whole reply.
pub fn encode(reply: &Reply, stamp: &Stamp) -> Vec<u8> {
    let text = reply.text();
    let reasoning: String = reply
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Reasoning { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<WireToolCall> = reply.tool_calls().map(wire_call).collect();
    let mut message = serde_json::json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) },
        "refusal": null,
        "annotations": [],
    });
    if !calls.is_empty() {
        message["tool_calls"] = serde_json::to_value(&calls).unwrap_or_default();
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::from(reasoning);
    }
    let body = serde_json::json!({
        "id": stamp.id,
        "object": "chat.completion",
        "created": stamp.created,
        "model": stamp.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": reply.finish.as_chat(),
        }],
        "usage": reply.usage.as_ref().map(wire_usage),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Encodes a streamed answer as `chat.completion.chunk` events.
pub struct ChatStream {
    stamp: Stamp,
    include_usage: bool,
    /// Tool calls opened so far (the next call's `index`).
    calls: u32,
    started: bool,
    usage: Option<Usage>,
}

impl ChatStream {
    pub fn new(stamp: Stamp, options: ChatOptions) -> Self {
        Self {
            stamp,
            include_usage: options.include_usage,
            calls: 0,
            started: false,
            usage: None,
        }
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<FinishReason>) {
        let mut chunk = serde_json::json!({
            "id": self.stamp.id,
            "object": "chat.completion.chunk",
            "created": self.stamp.created,
            "model": self.stamp.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish.map(FinishReason::as_chat),
            }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        codec::sse_data(out, &chunk);
    }

    fn start(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            self.chunk(
                out,
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            );
        }
    }
}

impl FrontEncoder for ChatStream {
    fn push(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        match event {
            StreamEvent::Start { model, .. } => {
                if let Some(m) = model.as_ref().filter(|_| !self.started) {
                    self.stamp.model.clone_from(m);
                }
                self.start(out);
            }
            StreamEvent::Text(text) => {
                self.start(out);
                self.chunk(out, serde_json::json!({ "content": text }), None);
            }
            StreamEvent::Reasoning { text, .. } => {
                self.start(out);
                if !text.is_empty() {
                    self.chunk(out, serde_json::json!({ "reasoning_content": text }), None);
                }
            }
            StreamEvent::ToolCall {
                id,
                name,
                signature,
            } => {
                self.start(out);
                let mut call = serde_json::json!({
                    "index": self.calls,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                });
                if let Some(s) = signature {
                    call["extra_content"] = serde_json::json!({"google": {"thought_signature": s}});
                }
                self.calls += 1;
                self.chunk(out, serde_json::json!({ "tool_calls": [call] }), None);
            }
            StreamEvent::ToolArguments(args) => {
                if self.calls > 0 && !args.is_empty() {
                    let call = serde_json::json!({"index": self.calls - 1, "function": {"arguments": args}});
                    self.chunk(out, serde_json::json!({ "tool_calls": [call] }), None);
                }
            }
            StreamEvent::Finish(reason) => {
                self.start(out);
                self.chunk(out, serde_json::json!({}), Some(*reason));
            }
            StreamEvent::Usage(u) => self.usage = Some(*u),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.include_usage
            && let Some(u) = &self.usage
        {
            let chunk = serde_json::json!({
                "id": self.stamp.id,
                "object": "chat.completion.chunk",
                "created": self.stamp.created,
                "model": self.stamp.model,
                "choices": [],
                "usage": wire_usage(u),
            });
            codec::sse_data(out, &chunk);
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    fn fail(&mut self, code: &str, message: &str, out: &mut BytesMut) {
        let body = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
        codec::sse_data(out, &body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canonical::{Image, ImageSource};
    use serde_json::json;

    fn decode_json(v: Value) -> Result<(Conversation, ChatOptions), GatewayError> {
        decode(&serde_json::to_vec(&v).unwrap_or_default())
    }

    #[test]
    fn decodes_the_reference_request() {
        // providers.md §1.2's example.
        let (conv, opts) = decode_json(json!({
            "model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
            "max_completion_tokens": 256,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "auto"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                    "extra_content": {"google": {"thought_signature": "sig1"}}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"},
                {"role": "tool", "tool_call_id": "call_9", "content": [{"type": "text", "text": "x"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get weather",
                "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
            "stop": "END"
        }))
        .expect("decodes");
        assert!(opts.include_usage);
        assert!(conv.stream);
        assert_eq!(conv.system, ["Be brief."]);
        assert_eq!(conv.sampling.max_tokens, Some(256));
        assert_eq!(conv.sampling.stop, ["END"]);
        assert_eq!(
            conv.messages.len(),
            3,
            "the two tool results are one user turn"
        );
        assert_eq!(
            conv.messages[0].parts[1],
            Part::Image(Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBO".into()
                },
                detail: Some("auto".into())
            })
        );
        assert_eq!(
            conv.messages[1].parts,
            [Part::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
                signature: Some("sig1".into()),
            })]
        );
        assert_eq!(conv.messages[2].role, Role::User);
        assert_eq!(
            conv.messages[2].parts,
            [
                Part::ToolResult(ToolResult {
                    call_id: "call_1".into(),
                    name: Some("get_weather".into()),
                    content: "{\"temp\":21}".into(),
                    is_error: false,
                }),
                Part::ToolResult(ToolResult {
                    call_id: "call_9".into(),
                    name: None,
                    content: "x".into(),
                    is_error: false,
                })
            ]
        );
        assert_eq!(conv.tool_choice, ToolChoice::Function("get_weather".into()));
        assert!(
            matches!(conv.output, OutputFormat::JsonSchema { ref name, .. } if name == "answer")
        );
        assert_eq!(conv.tools[0].strict, Some(true));
    }

    #[test]
    fn refuses_what_it_cannot_carry_and_says_which_parameter() {
        for (body, param) in [
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}),
                "n",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true}),
                "logprobs",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages",
            ),
        ] {
            match decode_json(body) {
                Err(GatewayError::InvalidRequest { param: Some(p), .. }) => {
                    assert!(p.starts_with(param), "{p} for {param}")
                }
                other => panic!("expected a 400 on {param}, got {other:?}"),
            }
        }
    }

    #[test]
    fn encodes_a_reply_with_tool_calls_and_usage() {
        let reply = Reply {
            parts: vec![Part::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "f".into(),
                arguments: "{}".into(),
                signature: Some("s".into()),
            })],
            finish: FinishReason::ToolCalls,
            usage: Some(Usage {
                input_tokens: 12,
                cached_input_tokens: 2,
                output_tokens: 19,
                reasoning_tokens: 4,
                ..Usage::default()
            }),
            ..Reply::default()
        };
        let stamp = Stamp {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
        };
        let v: Value = serde_json::from_slice(&encode(&reply, &stamp)).expect("json");
        assert_eq!(
            v,
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [],
                        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"},
                            "extra_content": {"google": {"thought_signature": "s"}}}]}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 19, "total_tokens": 31,
                    "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 4}}})
        );
    }

    fn stream_of(events: &[StreamEvent], include_usage: bool) -> Vec<Value> {
        let stamp = Stamp {
            id: "c".into(),
            created: 1,
            model: "m".into(),
        };
        let mut enc = ChatStream::new(stamp, ChatOptions { include_usage });
        let mut out = BytesMut::new();
        for e in events {
            enc.push(e, &mut out);
        }
        enc.finish(&mut out);
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert!(text.ends_with("data: [DONE]\n\n"));
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("chunk json"))
            .collect()
    }

    #[test]
    fn streams_role_text_tool_calls_finish_and_usage_only_when_asked() {
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        };
        let events = [
            StreamEvent::Start {
                id: None,
                model: Some("gemini-x".into()),
            },
            StreamEvent::Text("Hi".into()),
            StreamEvent::ToolCall {
                id: "call_a".into(),
                name: "f".into(),
                signature: None,
            },
            StreamEvent::ToolArguments("{\"a\":".into()),
            StreamEvent::ToolArguments("1}".into()),
            StreamEvent::ToolCall {
                id: "call_b".into(),
                name: "g".into(),
                signature: None,
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(usage),
        ];
        let chunks = stream_of(&events, true);
        assert_eq!(chunks.len(), 8, "{chunks:#?}");
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[0]["model"], "gemini-x");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        let calls: Vec<_> = chunks[2..6]
            .iter()
            .map(|c| c["choices"][0]["delta"]["tool_calls"][0].clone())
            .collect();
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(
            calls[1],
            json!({"index": 0, "function": {"arguments": "{\"a\":"}})
        );
        assert_eq!(
            calls[2],
            json!({"index": 0, "function": {"arguments": "1}"}})
        );
        assert_eq!(calls[3]["index"], 1);
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["usage"], Value::Null);
        assert_eq!(chunks[7]["choices"], json!([]));
        assert_eq!(chunks[7]["usage"]["total_tokens"], 7);

        let without = stream_of(&events, false);
        assert_eq!(without.len(), 7, "no usage chunk unless asked");
        assert!(without.iter().all(|c| c.get("usage").is_none()));
    }
}
