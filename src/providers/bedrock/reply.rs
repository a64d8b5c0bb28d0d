//! Bedrock's answers into canonical terms: the Converse response (`output.message.content`,
//! `stopReason`, `usage`) into a [`Reply`], and the ConverseStream eventstream into
//! [`StreamEvent`]s, decoded incrementally: frames with `aws-smithy-eventstream`'s
//! `MessageFrameDecoder`, then each frame's `:event-type` and JSON payload here.

use bytes::{Buf, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;

use crate::api::canonical::{FinishReason, Part, Reply, StreamEvent, ToolCall, Usage};
use crate::providers::StreamDecoder;

// ---------------------------------------------------------------------------------------------
// Wire types (private): the members the gateway reads; others (metrics, trace, `p`) are ignored.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse<'a> {
    #[serde(borrow)]
    output: Output<'a>,
    stop_reason: &'a str,
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow)]
    message: OutputMessage<'a>,
}

#[derive(Deserialize)]
struct OutputMessage<'a> {
    #[serde(borrow, default)]
    content: Vec<ContentBlock<'a>>,
}

/// The `ContentBlock` union as read: one of these is set.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContentBlock<'a> {
    text: Option<String>,
    #[serde(borrow)]
    tool_use: Option<ToolUse<'a>>,
    reasoning_content: Option<ReasoningContent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'a> {
    tool_use_id: String,
    name: String,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReasoningContent {
    reasoning_text: Option<ReasoningText>,
}

#[derive(Deserialize)]
struct ReasoningText {
    #[serde(default)]
    text: String,
    signature: Option<String>,
}

/// `TokenUsage`. `inputTokens` excludes the prompt-cache reads and writes (Anthropic's
/// convention), which the canonical (OpenAI) count includes.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TokenUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl TokenUsage {
    fn canonical(&self) -> Usage {
        Usage {
            input_tokens: self
                .input_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_write_input_tokens),
            cached_input_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_write_input_tokens,
            output_tokens: self.output_tokens,
            reasoning_tokens: 0,
        }
    }
}

/// `stopReason` → the front's finish reason (`providers.md` §5.2).
pub(super) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        // malformed_model_output, malformed_tool_use and values added later: no peer maps
        // them to anything but a stop; logged so they can be seen.
        other => {
            tracing::debug!(stop_reason = other, "unmapped Bedrock stopReason");
            FinishReason::Stop
        }
    }
}

/// A whole Converse answer. Bedrock sends no answer id (`Reply.id` stays `None`, the front
/// codec mints one) and no model name (the codec uses the route's).
pub(super) fn decode(body: &[u8]) -> Result<Reply, String> {
    let response: ConverseResponse<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not a Converse response: {e}"))?;
    let mut parts = Vec::with_capacity(response.output.message.content.len());
    for block in response.output.message.content {
        if let Some(text) = block.text {
            parts.push(Part::Text { text });
        } else if let Some(tool) = block.tool_use {
            parts.push(Part::ToolCall(ToolCall {
                id: tool.tool_use_id,
                name: tool.name,
                arguments: tool
                    .input
                    .map_or_else(|| "{}".to_owned(), |r| r.get().to_owned()),
                signature: None,
            }));
        } else if let Some(ReasoningContent {
            reasoning_text: Some(r),
        }) = block.reasoning_content
        {
            parts.push(Part::Reasoning {
                text: r.text,
                signature: r.signature,
            });
        }
        // Other blocks (citations, redacted reasoning…) carry nothing the front can show.
    }
    Ok(Reply {
        id: None,
        model: None,
        parts,
        finish: finish_reason(response.stop_reason),
        usage: response.usage.map(|u| u.canonical()),
    })
}

// ---------------------------------------------------------------------------------------------
// ConverseStream.
// ---------------------------------------------------------------------------------------------

/// The largest frame accepted: botocore's limits (headers ≤ 128 KiB, payload ≤ 24 MiB) plus
/// the prelude and CRC. A prelude announcing more is garbage, refused at once instead of
/// waiting for bytes that will never make sense.
const MAX_FRAME: u32 = 24 * 1024 * 1024 + 128 * 1024 + 16;
const MAX_HEADERS: u32 = 128 * 1024;
const PRELUDE: usize = 12;

/// Decodes one ConverseStream answer.
#[derive(Default)]
pub(super) struct ConverseStream {
    frames: MessageFrameDecoder,
    buf: BytesMut,
    /// The decoder has not taken a prelude of the next frame yet.
    between_frames: bool,
    /// `messageStop` arrived: the answer is whole (`metadata` may follow).
    stopped: bool,
    /// An error ended the stream; nothing more is decoded.
    failed: bool,
}

impl ConverseStream {
    pub(super) fn new() -> Self {
        Self {
            between_frames: true,
            ..Self::default()
        }
    }

    fn fail(&mut self, why: String) -> Result<(), String> {
        self.failed = true;
        Err(why)
    }

    /// One whole frame.
    fn frame(&mut self, message: &Message, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|s| s.as_str())
        };
        match header(":message-type") {
            Some("event") => {}
            Some("exception") => {
                let kind = header(":exception-type").unwrap_or("exception");
                return Err(exception_message(kind, message.payload()));
            }
            // smithy's protocol-level error frame: `:error-code` / `:error-message` headers.
            Some("error") => {
                return Err(format!(
                    "{}: {}",
                    header(":error-code").unwrap_or("error"),
                    header(":error-message").unwrap_or("the stream failed")
                ));
            }
            other => {
                return Err(format!(
                    "an eventstream frame with :message-type {other:?} instead of event"
                ));
            }
        }
        let payload = message.payload();
        let bad = |event: &str, e: serde_json::Error| format!("a malformed {event} event: {e}");
        match header(":event-type").unwrap_or_default() {
            "messageStart" => out.push(StreamEvent::Start {
                id: None,
                model: None,
            }),
            "contentBlockStart" => {
                let start: BlockStart =
                    serde_json::from_slice(payload).map_err(|e| bad("contentBlockStart", e))?;
                if let Some(tool) = start.start.and_then(|s| s.tool_use) {
                    out.push(StreamEvent::ToolCall {
                        id: tool.tool_use_id,
                        name: tool.name,
                        signature: None,
                    });
                }
            }
            "contentBlockDelta" => {
                let delta: BlockDelta =
                    serde_json::from_slice(payload).map_err(|e| bad("contentBlockDelta", e))?;
                let delta = delta.delta.unwrap_or_default();
                if let Some(text) = delta.text {
                    out.push(StreamEvent::Text(text));
                } else if let Some(tool) = delta.tool_use {
                    out.push(StreamEvent::ToolArguments(tool.input));
                } else if let Some(r) = delta.reasoning_content
                    && (r.text.is_some() || r.signature.is_some())
                {
                    out.push(StreamEvent::Reasoning {
                        text: r.text.unwrap_or_default(),
                        signature: r.signature,
                    });
                }
            }
            "messageStop" => {
                let stop: MessageStop =
                    serde_json::from_slice(payload).map_err(|e| bad("messageStop", e))?;
                self.stopped = true;
                out.push(StreamEvent::Finish(finish_reason(&stop.stop_reason)));
            }
            "metadata" => {
                let meta: Metadata =
                    serde_json::from_slice(payload).map_err(|e| bad("metadata", e))?;
                if let Some(usage) = meta.usage {
                    out.push(StreamEvent::Usage(usage.canonical()));
                }
            }
            // contentBlockStop, and event types added later, carry nothing to relay.
            _ => {}
        }
        Ok(())
    }
}

/// The message of an exception frame (`{"message": …}`), named by its exception type.
fn exception_message(kind: &str, payload: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Exception {
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let message = serde_json::from_slice::<Exception>(payload)
        .ok()
        .and_then(|e| e.message)
        .unwrap_or_else(|| "no message".to_owned());
    format!("{kind}: {message}")
}

/// The length of the `messageStart` frame that opens `buf`, when `buf` opens with a whole one
/// (0 otherwise, also for anything that does not decode: the decoder reports that).
pub(super) fn leading_message_start(buf: &[u8]) -> usize {
    let Some(len) = buf
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|len| (16..=buf.len()).contains(len))
    else {
        return 0;
    };
    let Ok(message) = aws_smithy_eventstream::frame::read_message_from(&buf[..len]) else {
        return 0;
    };
    let header = |name: &str| header(&message, name);
    let start = header(":message-type").as_deref() == Some("event")
        && header(":event-type").as_deref() == Some("messageStart");
    if start { len } else { 0 }
}

/// The message of an exception frame that opens a stream, if the first frame is one.
pub(super) fn exception_in_first_frame(first: &[u8]) -> Option<String> {
    let message = aws_smithy_eventstream::frame::read_message_from(first).ok()?;
    let header = |name: &str| header(&message, name);
    (header(":message-type").as_deref() == Some("exception")).then(|| {
        exception_message(
            header(":exception-type").as_deref().unwrap_or("exception"),
            message.payload(),
        )
    })
}

impl StreamDecoder for ConverseStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if self.failed {
            return Err("the stream already failed".to_owned());
        }
        self.buf.extend_from_slice(bytes);
        loop {
            if self.between_frames {
                if self.buf.len() < PRELUDE {
                    return Ok(());
                }
                if let Err(why) = check_prelude(&self.buf[..PRELUDE]) {
                    return self.fail(why);
                }
                // The decoder takes the prelude now.
                self.between_frames = false;
            }
            match self.frames.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(message)) => {
                    self.between_frames = true;
                    if let Err(why) = self.frame(&message, out) {
                        return self.fail(why);
                    }
                }
                Ok(DecodedFrame::Incomplete) => return Ok(()),
                Err(e) => return self.fail(format!("an undecodable eventstream frame: {e}")),
            }
        }
    }

    fn end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if self.failed {
            return Err("the stream failed".to_owned());
        }
        if !self.between_frames || self.buf.has_remaining() {
            return Err("the stream ended inside an eventstream frame".to_owned());
        }
        if !self.stopped {
            return Err("the stream ended before messageStop".to_owned());
        }
        Ok(())
    }
}

/// Bounds of a prelude (`total_len`, `headers_len`), before the decoder commits to a frame
/// that long. Its CRC is checked by the decoder with the rest of the frame.
fn check_prelude(prelude: &[u8]) -> Result<(), String> {
    let word =
        |i: usize| u32::from_be_bytes([prelude[i], prelude[i + 1], prelude[i + 2], prelude[i + 3]]);
    let (total, headers) = (word(0), word(4));
    if !(16..=MAX_FRAME).contains(&total) || headers > MAX_HEADERS || headers > total - 16 {
        return Err(format!(
            "an eventstream prelude with impossible lengths (total {total}, headers {headers})"
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct BlockStart {
    start: Option<StartUnion>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartUnion {
    tool_use: Option<ToolUseStart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseStart {
    tool_use_id: String,
    name: String,
}

#[derive(Deserialize)]
struct BlockDelta {
    delta: Option<DeltaUnion>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeltaUnion {
    text: Option<String>,
    tool_use: Option<ToolUseDelta>,
    reasoning_content: Option<ReasoningDelta>,
}

#[derive(Deserialize)]
struct ToolUseDelta {
    #[serde(default)]
    input: String,
}

#[derive(Deserialize)]
struct ReasoningDelta {
    text: Option<String>,
    signature: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop {
    stop_reason: String,
}

#[derive(Deserialize)]
struct Metadata {
    usage: Option<TokenUsage>,
}
/// A string header of an eventstream message (`:message-type`, `:event-type`…).
fn header(message: &Message, name: &str) -> Option<String> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str().to_owned())
}
