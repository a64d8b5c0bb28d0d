//! The `GenerateContentRequest` body, written straight from a [`Conversation`].
//!
//! The wire types borrow every string and schema from the conversation, and a tool call's
//! arguments or a JSON tool result go in as borrowed `RawValue`s: the body is serialised once,
//! with no `serde_json::Value` built on the way. This module owns the canonical → Gemini rules
//! (`providers.md` §2.2, §5.1): roles `user`/`model`, consecutive turns of one role merged,
//! tool results answered by name, thought signatures sent back on their function calls,
//! JSON Schema kept whole (`parametersJsonSchema`, `responseJsonSchema`), tool choice as a
//! function-calling mode, and reasoning effort as a thinking level or budget. It does not own
//! URLs, auth or the answer.
//!
//! What Gemini has no field for is not sent: `parallel_tool_calls` (Gemini decides alone), a
//! tool's or schema's `strict` and a JSON schema's `name`/`description` (Gemini validates
//! against the schema itself), an image's `detail`.

use crate::api::canonical::{
    Conversation, ImageSource, Message, OutputFormat, Part, Role, Tool, ToolCall, ToolChoice,
    ToolResult,
};
use crate::error::{GatewayError, quote};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Request<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDeclarations<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: Vec<TextPart<'a>>,
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<WirePart<'a>>,
}

/// One part: exactly one of the data members is set (Gemini's `data` oneof), plus the
/// signature a function call carries.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct WirePart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    args: Args<'a>,
}

/// A call's `args`: the client's JSON object as written, or `{}` for a call without any.
#[derive(Serialize)]
#[serde(untagged)]
enum Args<'a> {
    Given(&'a RawValue),
    Empty {},
}

#[derive(Serialize)]
struct FunctionResponse<'a> {
    name: &'a str,
    response: ResponseBody<'a>,
}

/// `functionResponse.response`, which must be a JSON object.
///
/// A result whose text is a JSON object goes in as that object, and any other text as
/// `{"output": text}` (`{"error": text}` for a failed call). Google documents the field as
/// "the function response in JSON object format. Use "output" key to specify function output
/// and "error" key to specify error details (if any). If "output" and "error" keys are not
/// specified, then whole "response" is treated as function output" (python-genai
/// `FunctionResponse.response`). So an object result reaches the model as the structured
/// value the tool produced (not as an escaped string inside a wrapper, which peers'
/// `{"content": text}` does), and plain text uses the documented key rather than a made-up one.
#[derive(Serialize)]
#[serde(untagged)]
enum ResponseBody<'a> {
    Object(&'a RawValue),
    Output { output: &'a str },
    Error { error: &'a str },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolDeclarations<'a> {
    function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// JSON Schema as the client wrote it: `parameters` takes only Gemini's OpenAPI subset
    /// and refuses `additionalProperties`, `const`, `$ref`… that OpenAI schemas carry.
    parameters_json_schema: &'a Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[&'a str; 1]>,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_budget: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_level: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    include_thoughts: bool,
}

/// The request body for `conversation` sent to `model` (the thinking control depends on the
/// model family).
pub(super) fn encode(conversation: &Conversation, model: &str) -> Result<Vec<u8>, GatewayError> {
    let request = build(conversation, model)?;
    serde_json::to_vec(&request)
        .map_err(|e| GatewayError::Internal(format!("Gemini request did not serialise: {e}")))
}

pub(super) fn build<'a>(
    conversation: &'a Conversation,
    model: &str,
) -> Result<Request<'a>, GatewayError> {
    // Empty texts are left out everywhere: Gemini refuses an empty text parameter.
    let system: Vec<TextPart<'_>> = conversation
        .system
        .iter()
        .filter(|text| !text.is_empty())
        .map(|text| TextPart { text })
        .collect();
    let system_instruction = (!system.is_empty()).then_some(SystemInstruction { parts: system });
    Ok(Request {
        system_instruction,
        contents: contents(&conversation.messages)?,
        tools: tools(&conversation.tools),
        tool_config: tool_config(&conversation.tool_choice),
        generation_config: generation_config(conversation, model)?,
    })
}

/// The turns, with consecutive turns of one role merged into one content (Gemini wants them
/// alternating; peers merge the same way) and turns left without parts dropped (Gemini refuses
/// an empty `parts`).
fn contents(messages: &[Message]) -> Result<Vec<Content<'_>>, GatewayError> {
    let mut out: Vec<Content<'_>> = Vec::with_capacity(messages.len());
    for message in messages {
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        let mut parts = Vec::with_capacity(message.parts.len());
        for part in &message.parts {
            if let Some(p) = wire_part(part)? {
                parts.push(p);
            }
        }
        if parts.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == role => last.parts.append(&mut parts),
            _ => out.push(Content { role, parts }),
        }
    }
    Ok(out)
}

fn wire_part(part: &Part) -> Result<Option<WirePart<'_>>, GatewayError> {
    Ok(Some(match part {
        // OpenAI clients send `content: ""` beside tool calls; Gemini refuses empty text.
        Part::Text { text } if text.is_empty() => return Ok(None),
        Part::Text { text } => WirePart {
            text: Some(text),
            ..WirePart::default()
        },
        Part::Image(image) => match &image.source {
            ImageSource::Base64 { media_type, data } => WirePart {
                inline_data: Some(Blob {
                    mime_type: media_type,
                    data,
                }),
                ..WirePart::default()
            },
            ImageSource::Url { url } => {
                // Gemini's `fileData.fileUri` takes files uploaded to its Files API (or Cloud
                // Storage on Vertex), not arbitrary web URLs, and the gateway does not fetch
                // images on a client's behalf.
                return Err(GatewayError::invalid(
                    format!(
                        "Image URL {} cannot be sent to this route: its provider (Gemini) takes \
                         images inline only. Send the image as a data URL \
                         (data:image/png;base64,...).",
                        quote(url)
                    ),
                    Some("image_url"),
                    Some("unsupported_image_url"),
                ));
            }
        },
        Part::ToolCall(call) => WirePart {
            function_call: Some(FunctionCall {
                name: &call.name,
                args: arguments(call)?,
            }),
            thought_signature: call.signature.as_deref(),
            ..WirePart::default()
        },
        Part::ToolResult(result) => WirePart {
            function_response: Some(function_response(result)?),
            ..WirePart::default()
        },
        // Thought summaries are the model's output, not its input: Gemini carries its
        // thinking across turns in the signatures on the function-call parts, sent back above.
        // A reasoning signature from another provider would be refused as corrupt.
        Part::Reasoning { .. } => return Ok(None),
    }))
}

/// A call's arguments as the JSON object Gemini's `args` is (borrowed, not re-parsed into a
/// value tree). An empty string is a call without arguments.
fn arguments(call: &ToolCall) -> Result<Args<'_>, GatewayError> {
    if call.arguments.trim().is_empty() {
        return Ok(Args::Empty {});
    }
    match serde_json::from_str::<&RawValue>(&call.arguments) {
        Ok(raw) if is_object(raw) => Ok(Args::Given(raw)),
        _ => Err(GatewayError::invalid(
            format!(
                "The arguments of tool call {} are not a JSON object; Gemini takes function \
                 call arguments as an object.",
                quote(&call.id)
            ),
            Some("messages"),
            Some("invalid_tool_arguments"),
        )),
    }
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

fn function_response(result: &ToolResult) -> Result<FunctionResponse<'_>, GatewayError> {
    let Some(name) = result.name.as_deref() else {
        return Err(GatewayError::invalid(
            format!(
                "The tool result for tool_call_id {} has no matching tool call in the request; \
                 Gemini answers a function call by its name, so the assistant message with that \
                 call must come before its result.",
                quote(&result.call_id)
            ),
            Some("messages"),
            Some("unknown_tool_call_id"),
        ));
    };
    let text = result.content.as_str();
    let response = if result.is_error {
        ResponseBody::Error { error: text }
    } else {
        match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) if is_object(raw) => ResponseBody::Object(raw),
            _ => ResponseBody::Output { output: text },
        }
    };
    Ok(FunctionResponse { name, response })
}

fn tools(tools: &[Tool]) -> Vec<ToolDeclarations<'_>> {
    if tools.is_empty() {
        return Vec::new();
    }
    vec![ToolDeclarations {
        function_declarations: tools
            .iter()
            .map(|t| FunctionDeclaration {
                name: &t.name,
                description: t.description.as_deref(),
                parameters_json_schema: &t.parameters,
            })
            .collect(),
    }]
}

/// `auto` is Gemini's default and is left out; the others are modes (`providers.md` §5.1).
fn tool_config(choice: &ToolChoice) -> Option<ToolConfig<'_>> {
    let (mode, allowed) = match choice {
        ToolChoice::Auto => return None,
        ToolChoice::None => ("NONE", None),
        ToolChoice::Required => ("ANY", None),
        ToolChoice::Function(name) => ("ANY", Some([name.as_str()])),
    };
    Some(ToolConfig {
        function_calling_config: FunctionCallingConfig {
            mode,
            allowed_function_names: allowed,
        },
    })
}

fn generation_config<'a>(
    conversation: &'a Conversation,
    model: &str,
) -> Result<GenerationConfig<'a>, GatewayError> {
    let s = &conversation.sampling;
    let (response_mime_type, response_json_schema) = match &conversation.output {
        OutputFormat::Text => (None, None),
        OutputFormat::JsonObject => (Some("application/json"), None),
        OutputFormat::JsonSchema { schema, .. } => (Some("application/json"), Some(schema)),
    };
    Ok(GenerationConfig {
        temperature: s.temperature,
        top_p: s.top_p,
        max_output_tokens: s.max_tokens,
        stop_sequences: &s.stop,
        seed: s.seed,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        response_mime_type,
        response_json_schema,
        thinking_config: conversation
            .reasoning_effort
            .as_deref()
            .map(|effort| thinking(effort, model))
            .transpose()?,
    })
}

/// `reasoning_effort` as Gemini's thinking control. Gemini 2.x takes a token budget: `none`
/// turns thinking off (0), and `low`/`medium`/`high` are the budgets Google's own
/// OpenAI-compatible layer documents (1 024, 8 192, 24 576); `minimal` is 512, the smallest
/// budget every 2.5 model accepts (Flash-Lite's floor; Pro cannot turn thinking off).
/// Gemini 3 and later take a level; Pro models know only `LOW` and `HIGH`, so `minimal` and
/// `medium` round to those there. Models whose name does not say (aliases) get the budget. Thought summaries are asked for whenever the model thinks,
/// and come back as reasoning parts.
fn thinking(effort: &str, model: &str) -> Result<ThinkingConfig, GatewayError> {
    // Levels only where the model says it is Gemini 3 or later: a budget is what 2.x takes
    // and what later models still accept, so aliases (`gemini-flash-latest`) get one too.
    let levels = model
        .strip_prefix("gemini-")
        .and_then(|rest| rest.split(['.', '-']).next())
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 3);
    let budget_family = !levels;
    let only_low_high = model.contains("-pro");
    let (budget, level) = match (effort, budget_family) {
        ("none", true) => (Some(0), None),
        ("minimal", true) => (Some(512), None),
        ("low", true) => (Some(1024), None),
        ("medium", true) => (Some(8192), None),
        ("high" | "xhigh", true) => (Some(24576), None),
        ("none" | "minimal", false) if only_low_high => (None, Some("LOW")),
        ("none" | "minimal", false) => (None, Some("MINIMAL")),
        ("low", false) => (None, Some("LOW")),
        ("medium", false) if only_low_high => (None, Some("HIGH")),
        ("medium", false) => (None, Some("MEDIUM")),
        ("high" | "xhigh", false) => (None, Some("HIGH")),
        _ => {
            return Err(GatewayError::invalid(
                format!(
                    "Unknown reasoning effort {}; expected none, minimal, low, medium or high.",
                    quote(effort)
                ),
                Some("reasoning_effort"),
                Some("invalid_value"),
            ));
        }
    };
    Ok(ThinkingConfig {
        thinking_budget: budget,
        thinking_level: level,
        include_thoughts: budget != Some(0),
    })
}
