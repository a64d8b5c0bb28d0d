//! The Converse request body, translated from a canonical [`Conversation`]: private wire
//! structs that borrow from the conversation (one serialisation, no intermediate `Value`), and
//! the rules Converse imposes that the canonical model does not (roles alternate, tool history
//! needs a `toolConfig`, images are inline bytes, a tool call's input is a JSON object).
//!
//! What Converse has no member for is not sent: `seed`, the penalties, `parallel_tool_calls`,
//! a tool's `strict` (accepted by few models; an unsupported one would fail every request of
//! an SDK that sets it by default), `json_object` (no schema-less JSON mode), and
//! `reasoning_effort` (Claude's thinking needs a token budget and its own constraints on
//! temperature and tool choice, through `additionalModelRequestFields`: not mapped yet).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::api::canonical::{
    Conversation, ImageSource, Message, OutputFormat, Part, Role, ToolChoice,
};
use crate::error::GatewayError;

/// `ConverseRequest` (bedrock-runtime 2023-09-30), the members the gateway sets. The model id
/// travels in the path, the stream choice in the operation.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<SystemBlock<'a>>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<InferenceConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig<'a>>,
}

#[derive(Serialize)]
struct SystemBlock<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

/// The `ContentBlock` union: exactly one member per block.
#[derive(Serialize)]
enum Block<'a> {
    #[serde(rename = "text")]
    Text(Cow<'a, str>),
    #[serde(rename = "image")]
    Image(ImageBlock<'a>),
    #[serde(rename = "toolUse")]
    ToolUse(ToolUse<'a>),
    #[serde(rename = "toolResult")]
    ToolResult(ToolResult<'a>),
    #[serde(rename = "reasoningContent")]
    Reasoning(ReasoningContent<'a>),
}

#[derive(Serialize)]
struct ImageBlock<'a> {
    format: &'static str,
    source: ImageBytes<'a>,
}

/// `ImageSource` with its `bytes` member: the base64 text as the client sent it (a blob is
/// base64 in JSON, so the data passes through undecoded).
#[derive(Serialize)]
struct ImageBytes<'a> {
    bytes: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    /// The arguments text, checked to be a JSON object and embedded as is.
    input: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResult<'a> {
    tool_use_id: &'a str,
    content: Vec<TextBlock<'a>>,
    status: &'static str,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReasoningContent<'a> {
    reasoning_text: ReasoningText<'a>,
}

#[derive(Serialize)]
struct ReasoningText<'a> {
    text: &'a str,
    signature: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    tools: Vec<ToolEntry<'a>>,
    tool_choice: WireToolChoice<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolEntry<'a> {
    tool_spec: ToolSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: InputSchema<'a>,
}

#[derive(Serialize)]
struct InputSchema<'a> {
    json: &'a Value,
}

/// The `ToolChoice` union. There is no `none` member (see [`encode`]).
#[derive(Serialize)]
enum WireToolChoice<'a> {
    #[serde(rename = "auto")]
    Auto {},
    #[serde(rename = "any")]
    Any {},
    #[serde(rename = "tool")]
    Tool { name: &'a str },
}

/// `OutputConfig.textFormat`: `{type: "json_schema", structure: {jsonSchema: {schema, …}}}`,
/// the schema as a JSON *string* (`JsonSchemaDefinition.schema` is a string shape).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputConfig<'a> {
    text_format: TextFormat<'a>,
}

#[derive(Serialize)]
struct TextFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    structure: Structure<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Structure<'a> {
    json_schema: JsonSchemaDefinition<'a>,
}

#[derive(Serialize)]
struct JsonSchemaDefinition<'a> {
    schema: String,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

/// The Converse body for `conversation`.
///
/// `tool_choice: none` has no Converse member, and Converse refuses a history holding
/// `toolUse`/`toolResult` blocks unless the request has a `toolConfig` ("The toolConfig field
/// must be defined when using toolUse and toolResult content blocks"). Sending the tools with
/// `auto` would let the model call one, which a client that said `none` does not expect and
/// may not handle. So the rule is: a `toolConfig` goes upstream exactly when the client
/// declared tools and did not say `none`; without one, the model cannot call anything, and the
/// tool calls and results of the history are written into their turns as text (id, name,
/// arguments, result), which keeps what the model needs to answer. The same holds when the
/// client sends tool history but no tools at all.
pub(super) fn encode(conversation: &Conversation) -> Result<Vec<u8>, GatewayError> {
    let tool_config = tool_config(conversation)?;
    let native_tools = tool_config.is_some();
    let mut messages: Vec<WireMessage<'_>> = Vec::with_capacity(conversation.messages.len());
    for message in &conversation.messages {
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let content = blocks(message, native_tools)?;
        if content.is_empty() {
            // Converse refuses an empty content list (and a blank text block); an assistant
            // turn that said nothing carries nothing for the model either.
            continue;
        }
        match messages.last_mut() {
            // Converse requires alternation: consecutive turns of one role become one.
            Some(last) if last.role == role => last.content.extend(content),
            _ => messages.push(WireMessage { role, content }),
        }
    }
    for message in &mut messages {
        if message.role == "user" {
            // Claude wants a user turn's tool results before anything else in it.
            let (mut results, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut message.content)
                .into_iter()
                .partition(|b| matches!(b, Block::ToolResult(_)));
            results.extend(rest);
            message.content = results;
        }
    }
    let sampling = &conversation.sampling;
    let inference_config = (sampling.max_tokens.is_some()
        || sampling.temperature.is_some()
        || sampling.top_p.is_some()
        || !sampling.stop.is_empty())
    .then_some(InferenceConfig {
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        stop_sequences: &sampling.stop,
    });
    let output_config = match &conversation.output {
        OutputFormat::JsonSchema {
            name,
            description,
            schema,
            ..
        } => Some(OutputConfig {
            text_format: TextFormat {
                kind: "json_schema",
                structure: Structure {
                    json_schema: JsonSchemaDefinition {
                        schema: schema.to_string(),
                        name,
                        description: description.as_deref(),
                    },
                },
            },
        }),
        // Converse has no "any JSON object" mode; the client's own prompt must ask for JSON
        // (as OpenAI also requires for json_object).
        OutputFormat::Text | OutputFormat::JsonObject => None,
    };
    let request = ConverseRequest {
        system: conversation
            .system
            .iter()
            .filter(|s| !s.is_empty())
            .map(|text| SystemBlock { text })
            .collect(),
        messages,
        inference_config,
        tool_config,
        output_config,
    };
    serde_json::to_vec(&request)
        .map_err(|e| GatewayError::Internal(format!("Converse request not serialisable: {e}")))
}

/// `toolConfig`, when the client declared tools and did not say `none` (see [`encode`]).
fn tool_config(conversation: &Conversation) -> Result<Option<ToolConfig<'_>>, GatewayError> {
    let choice = match &conversation.tool_choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Auto => WireToolChoice::Auto {},
        ToolChoice::Required => WireToolChoice::Any {},
        ToolChoice::Function(name) => WireToolChoice::Tool { name },
    };
    if conversation.tools.is_empty() {
        return match choice {
            WireToolChoice::Auto {} => Ok(None),
            _ => Err(GatewayError::invalid(
                "tool_choice asks for a tool call, but the request declares no tools.",
                Some("tool_choice"),
                None,
            )),
        };
    }
    let tools = conversation
        .tools
        .iter()
        .map(|t| ToolEntry {
            tool_spec: ToolSpec {
                name: &t.name,
                description: t.description.as_deref().filter(|d| !d.is_empty()),
                input_schema: InputSchema {
                    json: &t.parameters,
                },
            },
        })
        .collect();
    Ok(Some(ToolConfig {
        tools,
        tool_choice: choice,
    }))
}

/// One canonical turn's content blocks. `native_tools`: tool calls and results go as
/// `toolUse`/`toolResult` blocks, else as text (see [`encode`]).
fn blocks(message: &Message, native_tools: bool) -> Result<Vec<Block<'_>>, GatewayError> {
    let mut out = Vec::with_capacity(message.parts.len());
    for part in &message.parts {
        match part {
            Part::Text { text } => {
                if !text.is_empty() {
                    out.push(Block::Text(Cow::Borrowed(text)));
                }
            }
            Part::Image(image) => out.push(Block::Image(image_block(&image.source)?)),
            Part::ToolCall(call) if native_tools => out.push(Block::ToolUse(ToolUse {
                tool_use_id: &call.id,
                name: &call.name,
                input: tool_input(&call.arguments, &call.id, &call.name)?,
            })),
            Part::ToolCall(call) => out.push(Block::Text(Cow::Owned(format!(
                "[tool call {} to {} with arguments {}]",
                call.id, call.name, call.arguments
            )))),
            Part::ToolResult(result) if native_tools => out.push(Block::ToolResult(ToolResult {
                tool_use_id: &result.call_id,
                content: if result.content.is_empty() {
                    Vec::new()
                } else {
                    vec![TextBlock {
                        text: &result.content,
                    }]
                },
                status: if result.is_error { "error" } else { "success" },
            })),
            Part::ToolResult(result) => out.push(Block::Text(Cow::Owned(format!(
                "[tool result for call {}{}: {}]",
                result.call_id,
                if result.is_error { " (error)" } else { "" },
                result.content
            )))),
            // Claude verifies a thinking block by its signature: an unsigned one (reasoning
            // another provider produced, or a client that dropped it) would be refused.
            Part::Reasoning {
                text,
                signature: Some(signature),
            } if message.role == Role::Assistant => {
                out.push(Block::Reasoning(ReasoningContent {
                    reasoning_text: ReasoningText { text, signature },
                }));
            }
            Part::Reasoning { .. } => {}
        }
    }
    Ok(out)
}

/// A `data:` URL image as an inline `image` block. Converse has no URL source.
fn image_block(source: &ImageSource) -> Result<ImageBlock<'_>, GatewayError> {
    let (media_type, data) = match source {
        ImageSource::Base64 { media_type, data } => (media_type, data),
        ImageSource::Url { .. } => {
            return Err(GatewayError::invalid(
                "Bedrock cannot fetch images by URL: send the image inline as a data URL \
                 (data:image/png;base64,...).",
                Some("image_url"),
                Some("unsupported_image_url"),
            ));
        }
    };
    let format = match media_type.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(GatewayError::invalid(
                format!(
                    "Bedrock takes png, jpeg, gif and webp images, not {}.",
                    crate::error::quote(other)
                ),
                Some("image_url"),
                Some("unsupported_image_format"),
            ));
        }
    };
    Ok(ImageBlock {
        format,
        source: ImageBytes { bytes: data },
    })
}

/// A tool call's arguments as the `input` document: a JSON object, embedded without a parse
/// into a tree. Empty arguments (a call without parameters) are `{}`.
fn tool_input<'a>(arguments: &'a str, id: &str, name: &str) -> Result<&'a RawValue, GatewayError> {
    let text = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    let invalid = |why: String| {
        GatewayError::invalid(
            format!(
                "The arguments of tool call {} ({}) must be a JSON object: {why}",
                crate::error::quote(id),
                crate::error::quote(name)
            ),
            Some("messages"),
            Some("invalid_tool_arguments"),
        )
    };
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if !raw.get().starts_with('{') {
        return Err(invalid("it is not an object".to_owned()));
    }
    Ok(raw)
}
