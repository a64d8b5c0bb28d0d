//! The Responses codec: `POST /v1/responses` over the canonical model.
//!
//! Used only when the route's provider has no Responses API of its own (Gemini, Bedrock). It
//! decodes the client's body (with the stored conversation behind `previous_response_id`
//! prepended, and the earlier `instructions` not carried over, as OpenAI does) into a
//! [`Conversation`], and encodes the provider's answer as a `response` object or as the
//! Responses event sequence: `response.created` → `response.in_progress` → per output item
//! `output_item.added` → deltas → `….done` → `output_item.done` → `response.completed`
//! (`incomplete` when cut by the token limit or a filter, `failed` when the upstream broke
//! off), `sequence_number` from 0. Item ids derive from the response id and the output
//! index, so the streamed items and the stored object (`GET /responses/{id}`) agree.
//! Reasoning is kept in the stored conversation (signatures must go back to the provider)
//! but not shown as output items.

use super::canonical::{
    Conversation, FinishReason, Message, OutputFormat, Part, Reply, Role, Sampling, StreamEvent,
    ToolCall, ToolResult, Usage,
};
use super::codec::{self, FrontEncoder, FunctionSpec, TextOrParts};
use crate::error::{GatewayError, quote};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    text: Option<TextConfig>,
    #[serde(default)]
    reasoning: Option<ReasoningConfig>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    conversation: Option<Box<RawValue>>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Item>),
}

/// One input item. Flat, because a message may come without `type`.
#[derive(Deserialize)]
struct Item {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<TextOrParts>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    output: Option<TextOrParts>,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    function: FunctionSpec,
}

#[derive(Deserialize)]
struct TextConfig {
    #[serde(default)]
    format: Option<Format>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Format {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        schema: Option<Value>,
        #[serde(default)]
        strict: Option<bool>,
    },
}

#[derive(Deserialize)]
struct ReasoningConfig {
    #[serde(default)]
    effort: Option<String>,
}

/// What the response object repeats from the request, and how the answer is kept.
#[derive(Clone, Debug)]
pub struct ResponsesOptions {
    /// The client-visible id of this response (`resp_…`).
    pub id: String,
    pub created_at: u64,
    /// The request's fields the response object echoes (`instructions`, `tools`…).
    echo: Value,
    /// `store` (default true): keep the answer for `previous_response_id` and `GET`.
    pub store: bool,
}

impl ResponsesOptions {
    /// `echo` as the response object's `previous_response_id` etc.
    fn object(
        &self,
        model: &str,
        status: &str,
        output: Vec<Value>,
        usage: Option<&Usage>,
        error: Option<Value>,
        incomplete: Option<&str>,
    ) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete.map(|r| json!({"reason": r})),
            "model": model,
            "output": output,
            "usage": usage.map(wire_usage),
        });
        if let (Value::Object(v), Value::Object(echo)) = (&mut v, &self.echo) {
            v.extend(echo.iter().map(|(k, x)| (k.clone(), x.clone())));
        }
        v
    }

    fn item_id(&self, prefix: &str, index: usize) -> String {
        let suffix = self.id.strip_prefix("resp_").unwrap_or(&self.id);
        format!("{prefix}_{suffix}_{index}")
    }
}

/// Decodes a Responses body. `history` is the stored conversation behind its
/// `previous_response_id` (resolved by the caller), prepended to the new input.
pub fn decode(
    raw: &[u8],
    previous_response_id: Option<&str>,
    history: &[Message],
) -> Result<(Conversation, ResponsesOptions), GatewayError> {
    let req: Request = codec::from_body(raw)?;
    if req.conversation.is_some() {
        return Err(codec::unsupported(
            "conversation",
            "no server-side conversations (use previous_response_id)",
        ));
    }
    if req.background == Some(true) {
        return Err(codec::unsupported("background", "no background responses"));
    }
    let mut conv = Conversation {
        stream: req.stream.unwrap_or(false),
        parallel_tool_calls: req.parallel_tool_calls,
        reasoning_effort: req.reasoning.as_ref().and_then(|r| r.effort.clone()),
        sampling: Sampling {
            temperature: req.temperature,
            top_p: req.top_p,
            max_tokens: req.max_output_tokens,
            ..Sampling::default()
        },
        messages: history.to_vec(),
        ..Conversation::default()
    };
    if let Some(i) = &req.instructions {
        conv.system.push(i.clone());
    }
    match req.input {
        None => {
            return Err(GatewayError::invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
                Some("missing_required_parameter"),
            ));
        }
        Some(Input::Text(text)) => conv.messages.push(Message {
            role: Role::User,
            parts: vec![Part::text(text)],
        }),
        Some(Input::Items(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                decode_item(&mut conv, item, i)?;
            }
        }
    }
    if conv.messages.is_empty() {
        return Err(GatewayError::invalid(
            "'input' holds no message: give at least one.",
            Some("input"),
            Some("invalid_value"),
        ));
    }
    for (i, tool) in req.tools.as_deref().unwrap_or_default().iter().enumerate() {
        conv.tools
            .push(codec::function_tool(i, &tool.kind, Some(&tool.function))?);
    }
    if let Some(v) = &req.tool_choice {
        conv.tool_choice = codec::tool_choice(v, |v| v.get("name")?.as_str())?;
    }
    conv.output = match req.text.as_ref().and_then(|t| t.format.as_ref()) {
        None | Some(Format::Text) => OutputFormat::Text,
        Some(Format::JsonObject) => OutputFormat::JsonObject,
        Some(Format::JsonSchema {
            name,
            description,
            schema,
            strict,
        }) => OutputFormat::JsonSchema {
            name: name.clone(),
            description: description.clone(),
            schema: schema.clone().unwrap_or_else(codec::empty_schema),
            strict: *strict,
        },
    };
    let text = match &req.text {
        Some(_) => serde_json::from_slice::<Value>(raw)
            .ok()
            .and_then(|mut v| v.get_mut("text").map(Value::take))
            .unwrap_or(Value::Null),
        None => json!({"format": {"type": "text"}}),
    };
    let echo = json!({
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": previous_response_id,
        "store": req.store.unwrap_or(true),
        "temperature": req.temperature.unwrap_or(1.0),
        "top_p": req.top_p.unwrap_or(1.0),
        "tool_choice": req.tool_choice.unwrap_or_else(|| json!("auto")),
        "tools": conv.tools.iter().map(|t| json!({
            "type": "function", "name": t.name, "description": t.description,
            "parameters": t.parameters, "strict": t.strict,
        })).collect::<Vec<_>>(),
        "text": text,
        "reasoning": {"effort": conv.reasoning_effort, "summary": null},
        "truncation": "disabled",
        "metadata": req.metadata.unwrap_or_else(|| json!({})),
    });
    let options = ResponsesOptions {
        id: super::canonical::fresh_id("resp_"),
        created_at: codec::now(),
        echo,
        store: req.store.unwrap_or(true),
    };
    Ok((conv, options))
}

fn decode_item(conv: &mut Conversation, item: Item, i: usize) -> Result<(), GatewayError> {
    let param = |field: &str| format!("input[{i}].{field}");
    let missing = |field: &str| {
        GatewayError::invalid(
            format!("Missing required parameter: '{}'.", param(field)),
            Some(&param(field)),
            Some("missing_required_parameter"),
        )
    };
    match item.kind.as_deref() {
        None | Some("message") => {
            let role = item.role.ok_or_else(|| missing("role"))?;
            let content = item.content.ok_or_else(|| missing("content"))?;
            let role = match role.as_str() {
                "system" | "developer" => {
                    conv.system.push(content.into_text(&param("content"))?);
                    return Ok(());
                }
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(GatewayError::invalid(
                        format!("Invalid role '{}'.", quote(other)),
                        Some(&param("role")),
                        Some("invalid_value"),
                    ));
                }
            };
            let parts = content.into_parts(&param("content"))?;
            push_turn(conv, role, parts);
        }
        Some("function_call") => {
            let call = ToolCall {
                id: item.call_id.ok_or_else(|| missing("call_id"))?,
                name: item.name.ok_or_else(|| missing("name"))?,
                arguments: item.arguments.unwrap_or_default(),
                signature: None,
            };
            push_turn(conv, Role::Assistant, vec![Part::ToolCall(call)]);
        }
        Some("function_call_output") => {
            let call_id = item.call_id.ok_or_else(|| missing("call_id"))?;
            let output = item.output.ok_or_else(|| missing("output"))?;
            let name = codec::called_name(&conv.messages, &call_id);
            let result = ToolResult {
                name,
                call_id,
                content: output.into_text(&param("output"))?,
                is_error: false,
            };
            codec::push_tool_result(&mut conv.messages, result);
        }
        // Reasoning items replayed by the client carry nothing this provider can read back.
        Some("reasoning") => {}
        Some(other) => {
            return Err(GatewayError::invalid(
                format!(
                    "Input item type '{}' is not supported on this route.",
                    quote(other)
                ),
                Some(&param("type")),
                Some("unsupported_value"),
            ));
        }
    }
    Ok(())
}

/// Appends parts as a turn of `role`. Assistant items in a row are one turn (a replayed
/// `function_call` after the assistant's text); user messages stay as the client sent them
/// (a provider that needs alternation merges them).
fn push_turn(conv: &mut Conversation, role: Role, parts: Vec<Part>) {
    if role == Role::Assistant
        && let Some(last) = conv.messages.last_mut()
        && last.role == Role::Assistant
    {
        last.parts.extend(parts);
        return;
    }
    conv.messages.push(Message { role, parts });
}

fn wire_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total(),
    })
}

/// The response status and incomplete reason for a finish reason.
fn outcome(finish: FinishReason) -> (&'static str, Option<&'static str>) {
    match finish {
        FinishReason::Length => ("incomplete", Some("max_output_tokens")),
        FinishReason::ContentFilter => ("incomplete", Some("content_filter")),
        FinishReason::Stop | FinishReason::ToolCalls => ("completed", None),
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call.id,
        "name": call.name, "arguments": call.arguments})
}

/// The `response` object for a whole reply.
pub fn encode(reply: &Reply, options: &ResponsesOptions, model: &str) -> Value {
    let mut output = Vec::new();
    let mut text: Option<String> = None;
    let flush = |text: &mut Option<String>, output: &mut Vec<Value>| {
        if let Some(t) = text.take() {
            let id = options.item_id("msg", output.len());
            output.push(message_item(&id, &t, "completed"));
        }
    };
    for part in &reply.parts {
        match part {
            Part::Text { text: t } => text.get_or_insert_default().push_str(t),
            Part::ToolCall(call) => {
                flush(&mut text, &mut output);
                let id = options.item_id("fc", output.len());
                output.push(call_item(&id, call, "completed"));
            }
            _ => {}
        }
    }
    flush(&mut text, &mut output);
    let (status, incomplete) = outcome(reply.finish);
    options.object(
        model,
        status,
        output,
        reply.usage.as_ref(),
        None,
        incomplete,
    )
}

/// The output item being streamed.
enum Open {
    Message { id: String, text: String },
    Call { id: String, call: ToolCall },
}

/// Encodes a streamed answer as the Responses event sequence.
pub struct ResponsesStream {
    options: ResponsesOptions,
    model: String,
    sequence: u64,
    started: bool,
    output: Vec<Value>,
    open: Option<Open>,
    finish: FinishReason,
    usage: Option<Usage>,
}

impl ResponsesStream {
    pub fn new(options: ResponsesOptions, model: &str) -> Self {
        Self {
            options,
            model: model.to_owned(),
            sequence: 0,
            started: false,
            output: Vec::new(),
            open: None,
            finish: FinishReason::Stop,
            usage: None,
        }
    }

    fn emit(&mut self, out: &mut BytesMut, name: &str, mut data: Value) {
        data["type"] = Value::from(name);
        data["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        codec::sse_event(out, name, &data);
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let response =
            self.options
                .object(&self.model, "in_progress", Vec::new(), None, None, None);
        self.emit(out, "response.created", json!({ "response": response }));
        self.emit(out, "response.in_progress", json!({ "response": response }));
    }

    /// Closes the open output item with its `….done` events.
    fn close(&mut self, out: &mut BytesMut) {
        let index = self.output.len();
        match self.open.take() {
            None => {}
            Some(Open::Message { id, text }) => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit(out, "response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
                let item = message_item(&id, &text, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
            Some(Open::Call { id, call }) => {
                self.emit(out, "response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "name": call.name, "arguments": call.arguments}));
                let item = call_item(&id, &call, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
        }
    }
}

impl FrontEncoder for ResponsesStream {
    fn push(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        let index = self.output.len();
        match event {
            StreamEvent::Start { model, .. } => {
                if let Some(m) = model.as_ref().filter(|_| !self.started) {
                    self.model.clone_from(m);
                }
                self.start(out);
            }
            StreamEvent::Text(delta) => {
                self.start(out);
                if !matches!(self.open, Some(Open::Message { .. })) {
                    self.close(out);
                    let index = self.output.len();
                    let id = self.options.item_id("msg", index);
                    self.emit(out, "response.output_item.added", json!({"output_index": index, "item": message_item(&id, "", "in_progress")}));
                    self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
                    self.open = Some(Open::Message {
                        id,
                        text: String::new(),
                    });
                }
                let index = self.output.len();
                if let Some(Open::Message { id, text }) = &mut self.open {
                    text.push_str(delta);
                    let data = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []});
                    self.emit(out, "response.output_text.delta", data);
                }
            }
            StreamEvent::Reasoning { .. } => self.start(out),
            StreamEvent::ToolCall {
                id: call_id,
                name,
                signature,
            } => {
                self.start(out);
                self.close(out);
                let index = self.output.len();
                let id = self.options.item_id("fc", index);
                let call = ToolCall {
                    id: call_id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    signature: signature.clone(),
                };
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": call_item(&id, &call, "in_progress")}),
                );
                self.open = Some(Open::Call { id, call });
            }
            StreamEvent::ToolArguments(delta) => {
                if let Some(Open::Call { id, call }) = &mut self.open {
                    call.arguments.push_str(delta);
                    let data = json!({"item_id": id, "output_index": index, "delta": delta});
                    self.emit(out, "response.function_call_arguments.delta", data);
                }
            }
            StreamEvent::Finish(reason) => self.finish = *reason,
            StreamEvent::Usage(u) => self.usage = Some(*u),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.start(out);
        self.close(out);
        let (status, incomplete) = outcome(self.finish);
        let response = self.options.object(
            &self.model,
            status,
            std::mem::take(&mut self.output),
            self.usage.as_ref(),
            None,
            incomplete,
        );
        let name = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, name, json!({ "response": response }));
    }

    fn fail(&mut self, code: &str, message: &str, out: &mut BytesMut) {
        self.start(out);
        let output = std::mem::take(&mut self.output);
        let error = json!({"code": code, "message": message});
        let response = self.options.object(
            &self.model,
            "failed",
            output,
            self.usage.as_ref(),
            Some(error),
            None,
        );
        self.emit(out, "response.failed", json!({ "response": response }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_json(v: Value, history: &[Message]) -> Result<Conversation, GatewayError> {
        decode(&serde_json::to_vec(&v).unwrap_or_default(), None, history).map(|(c, _)| c)
    }

    #[test]
    fn decodes_the_reference_request() {
        // providers.md §1.5's example, after a stored turn.
        let history = vec![Message {
            role: Role::User,
            parts: vec![Part::text("Earlier")],
        }];
        let conv = decode_json(
            json!({"model": "gpt-4.1", "instructions": "Be brief.", "stream": true, "max_output_tokens": 512,
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\":21}"}],
                "tools": [{"type": "function", "name": "get_weather", "description": "Get weather",
                    "parameters": {"type": "object"}, "strict": true}],
                "tool_choice": "auto",
                "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}}}),
            &history,
        )
        .expect("decodes");
        assert_eq!(conv.system, ["Be brief."]);
        assert_eq!(conv.sampling.max_tokens, Some(512));
        let roles: Vec<_> = conv.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::User, Role::User, Role::Assistant, Role::User],
            "history, the user's turn, the replayed call, the tool result"
        );
        assert_eq!(
            conv.messages[3].parts,
            [Part::ToolResult(ToolResult {
                call_id: "call_1".into(),
                name: Some("get_weather".into()),
                content: "{\"temp\":21}".into(),
                is_error: false
            })]
        );
        assert_eq!(conv.tools[0].name, "get_weather");
        assert!(matches!(conv.output, OutputFormat::JsonSchema { .. }));
    }

    #[test]
    fn refuses_what_it_cannot_carry() {
        for (body, param) in [
            (json!({"model": "m"}), "input"),
            (
                json!({"input": "x", "conversation": "conv_1"}),
                "conversation",
            ),
            (
                json!({"input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"input": [{"type": "function_call", "name": "f"}]}),
                "input[0].call_id",
            ),
            (
                json!({"input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
        ] {
            match decode_json(body, &[]) {
                Err(GatewayError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, param),
                other => panic!("expected a 400 on {param}, got {other:?}"),
            }
        }
    }

    fn options() -> ResponsesOptions {
        let (_, mut o) = decode(br#"{"input":"hi"}"#, None, &[]).expect("decodes");
        o.id = "resp_abc".into();
        o.created_at = 5;
        o
    }

    fn sample() -> Reply {
        Reply {
            parts: vec![
                Part::text("It is "),
                Part::text("21°C."),
                Part::ToolCall(ToolCall {
                    id: "call_2".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\":\"Rome\"}".into(),
                    signature: None,
                }),
            ],
            finish: FinishReason::ToolCalls,
            usage: Some(Usage {
                input_tokens: 37,
                output_tokens: 11,
                ..Usage::default()
            }),
            ..Reply::default()
        }
    }

    #[test]
    fn encodes_a_reply_as_a_response_object() {
        let v = encode(&sample(), &options(), "gemini-2.5-flash");
        assert_eq!(v["id"], "resp_abc");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "gemini-2.5-flash");
        assert_eq!(
            v["output"],
            json!([
                {"id": "msg_abc_0", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "It is 21°C.", "annotations": [], "logprobs": []}]},
                {"id": "fc_abc_1", "type": "function_call", "status": "completed", "call_id": "call_2",
                 "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}
            ])
        );
        assert_eq!(v["usage"]["total_tokens"], 48);
        assert_eq!(v["store"], true);
        assert_eq!(v["text"], json!({"format": {"type": "text"}}));
    }

    #[test]
    fn the_stream_ends_in_the_object_encode_gives() {
        let reply = sample();
        let mut enc = ResponsesStream::new(options(), "gemini-2.5-flash");
        let mut out = BytesMut::new();
        for e in super::super::canonical::events_of(&reply) {
            enc.push(&e, &mut out);
        }
        enc.finish(&mut out);
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("two lines");
                let name = name.strip_prefix("event: ").expect("event line").to_owned();
                let data = data.strip_prefix("data: ").expect("data line");
                (name, serde_json::from_str(data).expect("json"))
            })
            .collect();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], i as u64, "{name}");
            assert_eq!(data["type"], name.as_str());
        }
        let done = &events.last().expect("events").1["response"];
        assert_eq!(*done, encode(&reply, &options(), "gemini-2.5-flash"));
    }

    #[test]
    fn a_cut_answer_is_incomplete_and_a_broken_one_failed() {
        let mut reply = sample();
        reply.finish = FinishReason::Length;
        let v = encode(&reply, &options(), "m");
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");

        let mut enc = ResponsesStream::new(options(), "m");
        let mut out = BytesMut::new();
        enc.push(&StreamEvent::Text("Hel".into()), &mut out);
        enc.fail("upstream_stream_interrupted", "boom", &mut out);
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        let last = text.trim_end().rsplit("\n\n").next().expect("an event");
        assert!(last.starts_with("event: response.failed\n"), "{last}");
        assert!(last.contains("\"status\":\"failed\""));
        assert!(last.contains("\"message\":\"boom\""));
    }
}
