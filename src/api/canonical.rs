//! The canonical conversation model: what a conversation *is*, independent of any wire.
//!
//! The front endpoints (`chat`, `responses`) are codecs over these types: they decode a
//! client request into a [`Conversation`] and encode a [`Reply`] or a run of [`StreamEvent`]s
//! back into their own wire. Providers whose wire is not the front API (Gemini, Bedrock)
//! translate a `Conversation` into their request and their answer into a `Reply` or stream
//! events (`providers::Translator`). No translator ever sees another wire: adding a front
//! endpoint or a provider is one codec or one folder, never a pairwise mapping. OpenAI and
//! Azure on their native endpoints never come through here (byte-for-byte passthrough).
//!
//! The model is deliberately the intersection the four providers share, plus what must
//! round-trip across turns (tool-call ids, Gemini thought signatures, reasoning signatures).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A client's request, as every provider translator reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// System and developer instructions, in order (joined by the provider as it must).
    pub system: Vec<String>,
    /// The turns, alternating as the client sent them. Tool results sit in user turns
    /// (consecutive tool results of a chat request are one user turn).
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: Option<bool>,
    pub output: OutputFormat,
    pub sampling: Sampling,
    /// `reasoning_effort` (chat) or `reasoning.effort` (responses): `minimal` … `high`.
    pub reasoning_effort: Option<String>,
    /// The client asked for a stream.
    pub stream: bool,
}

/// Who speaks a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// One piece of a turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    Image(Image),
    /// The model asked for a tool (assistant turns).
    ToolCall(ToolCall),
    /// What a tool returned (user turns).
    ToolResult(ToolResult),
    /// The model's visible reasoning (assistant turns), with the provider's signature when
    /// it must be sent back (Anthropic thinking blocks).
    Reasoning {
        text: String,
        signature: Option<String>,
    },
}

impl Part {
    pub fn text(text: impl Into<String>) -> Self {
        Part::Text { text: text.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub source: ImageSource,
    /// OpenAI's `detail` (`auto`, `low`, `high`), kept for providers that read it.
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes, base64 (as in a `data:` URL).
    Base64 { media_type: String, data: String },
    /// A remote image the provider must fetch (not every provider can).
    Url { url: String },
}

impl ImageSource {
    /// An image URL as a client sends it: a `data:<type>;base64,<data>` URL becomes inline
    /// bytes, anything else stays a URL.
    pub fn from_url(url: &str) -> Self {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((meta, data)) = rest.split_once(',')
            && let Some(media_type) = meta.strip_suffix(";base64")
        {
            return ImageSource::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            };
        }
        ImageSource::Url {
            url: url.to_owned(),
        }
    }

    /// The URL form (a `data:` URL for inline bytes).
    pub fn to_url(&self) -> String {
        match self {
            ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
            ImageSource::Url { url } => url.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call id the client answers with (`call_…`; synthesised when the provider has none).
    pub id: String,
    pub name: String,
    /// The arguments, a JSON object as text (as OpenAI carries them).
    pub arguments: String,
    /// Gemini's `thoughtSignature` on this call, which must be sent back on the next turn.
    pub signature: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call_id: String,
    /// The called function's name, looked up from the call with the same id when the request
    /// has it (Gemini answers by name, not id).
    pub name: Option<String>,
    pub content: String,
    pub is_error: bool,
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments (an empty object schema when the client gave none).
    pub parameters: Value,
    pub strict: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    Required,
    /// This function and no other.
    Function(String),
}

/// The shape of the answer's text.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Most tokens to generate (`max_completion_tokens`, `max_tokens`, `max_output_tokens`).
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

/// Why generation stopped, in the front API's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    #[default]
    Stop,
    /// The token limit was reached.
    Length,
    ToolCalls,
    /// The provider's safety system withheld or cut the answer.
    ContentFilter,
}

impl FinishReason {
    /// Chat Completions' `finish_reason`.
    pub fn as_chat(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Tokens an answer consumed, as the provider reported them, in OpenAI's convention:
/// `input_tokens` *includes* the cached and cache-written ones, `output_tokens` *includes*
/// reasoning. Providers with another convention convert in their translator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    /// Read from the provider's prompt cache (billed at the cached rate).
    pub cached_input_tokens: u64,
    /// Written to the provider's prompt cache (billed at the cache-write rate where one exists).
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// A whole answer (non-streaming, or a stream folded by [`ReplyBuilder`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The provider's id for the answer, when it gives one.
    pub id: Option<String>,
    /// The model that answered, as the provider names it (the route's model when it does not).
    pub model: Option<String>,
    /// Text, reasoning and tool calls, in the order generated.
    pub parts: Vec<Part>,
    pub finish: FinishReason,
    pub usage: Option<Usage>,
}

impl Reply {
    /// The answer's visible text, joined.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.parts.iter().filter_map(|p| match p {
            Part::ToolCall(c) => Some(c),
            _ => None,
        })
    }
}

/// One step of a streamed answer, as a provider's stream decoder emits it.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// The answer's id and model, when the provider says (at most once, before content).
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    /// More visible text.
    Text(String),
    /// More reasoning text, or the signature that closes a reasoning block.
    Reasoning {
        text: String,
        signature: Option<String>,
    },
    /// A new tool call (its arguments may follow in [`StreamEvent::ToolArguments`]).
    ToolCall {
        id: String,
        name: String,
        signature: Option<String>,
    },
    /// More arguments of the latest tool call.
    ToolArguments(String),
    /// Why generation stopped (providers may send usage after this).
    Finish(FinishReason),
    /// The final usage (replaces any earlier running total).
    Usage(Usage),
}

/// Decodes one streamed answer, framing and translation together, incrementally.
pub trait StreamDecoder: Send {
    /// Decodes whatever `bytes` completes into `out`. Input may be split anywhere (inside a
    /// UTF-8 character, an SSE line, an eventstream prelude): partial frames are kept for
    /// the next call. An error the provider sends in the stream, or a frame that cannot be
    /// decoded, is an `Err` with the message for the client; the stream ends there.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), String>;

    /// The upstream body ended: `Err` (with why) when the stream was not complete.
    fn end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), String>;
}

/// Folds stream events into the [`Reply`] they amount to: what a Responses stream stores,
/// and what the usage tap reads.
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    reply: Reply,
    finished: bool,
}

impl ReplyBuilder {
    pub fn push(&mut self, event: &StreamEvent) {
        let parts = &mut self.reply.parts;
        match event {
            StreamEvent::Start { id, model } => {
                if self.reply.id.is_none() {
                    self.reply.id.clone_from(id);
                }
                if self.reply.model.is_none() {
                    self.reply.model.clone_from(model);
                }
            }
            StreamEvent::Text(delta) => match parts.last_mut() {
                Some(Part::Text { text }) => text.push_str(delta),
                _ => parts.push(Part::text(delta.clone())),
            },
            StreamEvent::Reasoning { text, signature } => match parts.last_mut() {
                Some(Part::Reasoning {
                    text: t,
                    signature: s,
                }) if s.is_none() => {
                    t.push_str(text);
                    s.clone_from(signature);
                }
                _ => parts.push(Part::Reasoning {
                    text: text.clone(),
                    signature: signature.clone(),
                }),
            },
            StreamEvent::ToolCall {
                id,
                name,
                signature,
            } => parts.push(Part::ToolCall(ToolCall {
                id: id.clone(),
                name: name.clone(),
                arguments: String::new(),
                signature: signature.clone(),
            })),
            StreamEvent::ToolArguments(delta) => {
                if let Some(call) = parts.iter_mut().rev().find_map(|p| match p {
                    Part::ToolCall(c) => Some(c),
                    _ => None,
                }) {
                    call.arguments.push_str(delta);
                }
            }
            StreamEvent::Finish(reason) => {
                self.reply.finish = *reason;
                self.finished = true;
            }
            StreamEvent::Usage(usage) => self.reply.usage = Some(*usage),
        }
    }

    /// Whether a finish reason arrived.
    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn reply(&self) -> &Reply {
        &self.reply
    }

    pub fn into_reply(self) -> Reply {
        self.reply
    }
}

/// The events that stream `reply` (what a provider without a stream would have sent).
pub fn events_of(reply: &Reply) -> Vec<StreamEvent> {
    let mut events = vec![StreamEvent::Start {
        id: reply.id.clone(),
        model: reply.model.clone(),
    }];
    for part in &reply.parts {
        match part {
            Part::Text { text } => events.push(StreamEvent::Text(text.clone())),
            Part::Reasoning { text, signature } => events.push(StreamEvent::Reasoning {
                text: text.clone(),
                signature: signature.clone(),
            }),
            Part::ToolCall(c) => {
                events.push(StreamEvent::ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    signature: c.signature.clone(),
                });
                events.push(StreamEvent::ToolArguments(c.arguments.clone()));
            }
            Part::Image(_) | Part::ToolResult(_) => {}
        }
    }
    events.push(StreamEvent::Finish(reply.finish));
    if let Some(u) = reply.usage {
        events.push(StreamEvent::Usage(u));
    }
    events
}

/// A fresh id with `prefix` (`call_`, `msg_`…): 24 random hex digits.
pub fn fresh_id(prefix: &str) -> String {
    format!(
        "{prefix}{:012x}{:012x}",
        fastrand::u64(..) >> 16,
        fastrand::u64(..) >> 16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_become_inline_images_and_back() {
        let src = ImageSource::from_url("data:image/png;base64,iVBO");
        assert_eq!(
            src,
            ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "iVBO".into()
            }
        );
        assert_eq!(src.to_url(), "data:image/png;base64,iVBO");
        assert_eq!(
            ImageSource::from_url("https://x/y.png"),
            ImageSource::Url {
                url: "https://x/y.png".into()
            }
        );
    }

    #[test]
    fn a_stream_folds_into_the_reply_it_streams() {
        let reply = Reply {
            id: Some("r1".into()),
            model: Some("m".into()),
            parts: vec![
                Part::Reasoning {
                    text: "hmm".into(),
                    signature: Some("sig".into()),
                },
                Part::text("Checking."),
                Part::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into(),
                    signature: None,
                }),
            ],
            finish: FinishReason::ToolCalls,
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            }),
        };
        let mut b = ReplyBuilder::default();
        for e in events_of(&reply) {
            b.push(&e);
        }
        assert!(b.finished());
        assert_eq!(b.into_reply(), reply);
    }

    #[test]
    fn deltas_join_and_arguments_go_to_the_latest_call() {
        let mut b = ReplyBuilder::default();
        for e in [
            StreamEvent::Text("Hel".into()),
            StreamEvent::Text("lo".into()),
            StreamEvent::ToolCall {
                id: "a".into(),
                name: "f".into(),
                signature: None,
            },
            StreamEvent::ToolArguments("{\"x\":".into()),
            StreamEvent::ToolCall {
                id: "b".into(),
                name: "g".into(),
                signature: None,
            },
            StreamEvent::ToolArguments("{}".into()),
            StreamEvent::ToolArguments("".into()),
        ] {
            b.push(&e);
        }
        assert!(!b.finished());
        let r = b.into_reply();
        assert_eq!(r.text(), "Hello");
        let calls: Vec<_> = r.tool_calls().map(|c| c.arguments.as_str()).collect();
        assert_eq!(calls, ["{\"x\":", "{}"]);
    }
}
