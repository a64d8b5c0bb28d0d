//! Gemini's answer (`GenerateContentResponse`) read into canonical terms.
//!
//! One private wire type serves the whole answer and every stream chunk (a chunk *is* a
//! `GenerateContentResponse` holding only the new parts). Strings are borrowed from the body
//! where they have no escapes; a call's `args` stays raw JSON and is only compacted. This
//! module owns the mapping rules of `providers.md` §2.3 and §5.2–§5.3: the first candidate's
//! parts (thought text → reasoning, function calls → tool calls with synthesised `call_…`
//! ids), `finishReason` (STOP with a function call is `tool_calls`), a prompt blocked before
//! any candidate, and `usageMetadata` in OpenAI's convention. Framing is `stream.rs`'s.

use crate::api::canonical::{FinishReason, Part, Reply, ToolCall, Usage, fresh_id};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Response<'a> {
    #[serde(default, borrow)]
    pub candidates: Vec<Candidate<'a>>,
    #[serde(default, borrow)]
    pub prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default, borrow)]
    pub model_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub response_id: Option<Cow<'a, str>>,
    /// Only in a stream: the error event that ends it (`data: {"error":{…}}`).
    #[serde(default, borrow)]
    pub error: Option<ErrorObject<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Candidate<'a> {
    #[serde(default, borrow)]
    pub content: Option<Content<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub index: Option<u32>,
}

#[derive(Deserialize)]
pub(super) struct Content<'a> {
    #[serde(default, borrow)]
    pub parts: Vec<WirePart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WirePart<'a> {
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default, borrow)]
    pub function_call: Option<FunctionCall<'a>>,
    #[serde(default, borrow)]
    pub thought_signature: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct FunctionCall<'a> {
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback<'a> {
    #[serde(default, borrow)]
    pub block_reason: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
}

#[derive(Deserialize)]
pub(super) struct ErrorObject<'a> {
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub status: Option<Cow<'a, str>>,
}

impl ErrorObject<'_> {
    /// What the client is told about an error event.
    pub fn describe(&self) -> String {
        let message = self
            .message
            .as_deref()
            .unwrap_or("an error without a message");
        match self.status.as_deref() {
            Some(status) => format!("{status}: {message}"),
            None => message.to_owned(),
        }
    }
}

impl UsageMetadata {
    /// OpenAI's convention (`providers.md` §5.3): input includes the cached tokens (Gemini's
    /// `promptTokenCount` already does) and the tool-use prompt (search results and the like,
    /// which Gemini counts in `totalTokenCount` beside the prompt); output includes the
    /// thoughts, which Gemini keeps out of `candidatesTokenCount`.
    pub fn canonical(self) -> Usage {
        Usage {
            input_tokens: self
                .prompt_token_count
                .saturating_add(self.tool_use_prompt_token_count),
            cached_input_tokens: self.cached_content_token_count,
            cache_write_tokens: 0,
            output_tokens: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count),
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

/// `finishReason` in the front's terms; `called` says whether the answer holds a function call
/// (Gemini says STOP then too). RECITATION and LANGUAGE count as the provider withholding the
/// answer; malformed or unexpected tool calls and OTHER end it as a plain stop (`providers.md`
/// §5.2).
pub(super) fn finish_reason(reason: &str, called: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "LANGUAGE" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            FinishReason::ContentFilter
        }
        r if r.starts_with("IMAGE_") => FinishReason::ContentFilter,
        _ if called => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// One part of the answer in canonical terms (`None` for what the front has no place for:
/// empty text, executable code…).
pub(super) fn part(wire: WirePart<'_>) -> Option<Part> {
    if let Some(call) = wire.function_call {
        return Some(Part::ToolCall(tool_call(call, wire.thought_signature)));
    }
    let text = wire.text?;
    if wire.thought == Some(true) {
        return Some(Part::Reasoning {
            text: text.into_owned(),
            signature: wire.thought_signature.map(Cow::into_owned),
        });
    }
    // A signature on a visible text part is optional to send back (Google's thought-signature
    // guide) and the canonical text part has no place for it.
    (!text.is_empty()).then(|| Part::Text {
        text: text.into_owned(),
    })
}

/// A function call as a tool call: Gemini's id when it gives one (it rarely does), else a
/// fresh `call_…`; `args` compacted to the arguments string.
pub(super) fn tool_call(call: FunctionCall<'_>, signature: Option<Cow<'_, str>>) -> ToolCall {
    ToolCall {
        id: call
            .id
            .filter(|id| !id.is_empty())
            .map_or_else(|| fresh_id("call_"), Cow::into_owned),
        name: call.name.into_owned(),
        arguments: call
            .args
            .map_or_else(|| "{}".to_owned(), |a| compact(a.get())),
        signature: signature.map(Cow::into_owned),
    }
}

/// Valid JSON without the whitespace between tokens (Google pretty-prints some bodies).
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// One `GenerateContentResponse` (a whole answer or a stream chunk). Only an object is one:
/// serde would also take a JSON array as a struct's fields in order.
pub(super) fn parse(body: &[u8]) -> Result<Response<'_>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("not a JSON object".to_owned());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Whether the prompt itself was blocked (no candidate, a `blockReason`).
pub(super) fn prompt_blocked(response: &Response<'_>) -> bool {
    response.candidates.is_empty()
        && response
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some())
}

/// The whole answer. A prompt Gemini blocked (no candidate, `promptFeedback.blockReason`)
/// is an empty reply finished by the content filter, not an error: the stream decoder can
/// only say it that way (the chunk arrives after the 200 went out), so both paths agree; the
/// usage Google reports for the prompt stays accountable; and `content_filter` is what
/// OpenAI clients already handle for a withheld answer.
pub(super) fn decode(body: &[u8]) -> Result<Reply, String> {
    let response = parse(body).map_err(|e| format!("undecodable answer: {e}"))?;
    if let Some(error) = &response.error {
        return Err(error.describe());
    }
    let blocked = prompt_blocked(&response);
    let Response {
        candidates,
        usage_metadata,
        model_version,
        response_id,
        ..
    } = response;
    let mut parts = Vec::new();
    let mut finish = None;
    if let Some(candidate) = candidates.into_iter().find(|c| c.index.unwrap_or(0) == 0) {
        parts.extend(
            candidate
                .content
                .into_iter()
                .flat_map(|c| c.parts)
                .filter_map(part),
        );
        finish = candidate.finish_reason;
    }
    let called = parts.iter().any(|p| matches!(p, Part::ToolCall(_)));
    let finish = if blocked {
        FinishReason::ContentFilter
    } else {
        finish.map_or(FinishReason::Stop, |r| finish_reason(&r, called))
    };
    Ok(Reply {
        id: response_id.map(Cow::into_owned),
        model: model_version.map(Cow::into_owned),
        parts,
        finish,
        usage: usage_metadata.map(UsageMetadata::canonical),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/gemini/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_text_answer_decodes_with_id_model_and_usage() {
        let reply = decode(&fixture("generate_content.json")).expect("decodes");
        assert_eq!(
            reply,
            Reply {
                id: Some("ag4pavQTzLrj4Q-XkKnZBA".into()),
                model: Some("gemini-2.5-flash".into()),
                parts: vec![Part::text("It is 21°C and sunny in Paris.")],
                finish: FinishReason::Stop,
                usage: Some(Usage {
                    input_tokens: 12,
                    cached_input_tokens: 0,
                    cache_write_tokens: 0,
                    output_tokens: 11,
                    reasoning_tokens: 0,
                }),
            }
        );
    }

    #[test]
    fn a_function_call_keeps_its_signature_and_finishes_as_tool_calls() {
        let reply = decode(&fixture("generate_content_function_call.json")).expect("decodes");
        assert_eq!(reply.finish, FinishReason::ToolCalls);
        assert_eq!(reply.model.as_deref(), Some("gemini-3-pro-preview"));
        assert_eq!(reply.id.as_deref(), Some("xHkoaeTfM5PYxN8PuaLZ6A4"));
        let [Part::ToolCall(call)] = reply.parts.as_slice() else {
            panic!("one tool call expected: {:?}", reply.parts);
        };
        assert_eq!(call.name, "get_weather");
        // Pretty-printed args come out compact.
        assert_eq!(call.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(
            call.signature.as_deref(),
            Some("CiQBcsjafHq3AKkm0J0xNQ9oVbbqgTskHlb3Yv4fFyfUa2eLNm8=")
        );
        assert!(
            call.id.starts_with("call_") && call.id.len() == 29,
            "{}",
            call.id
        );
        // Thoughts are output (5 + 64) and reasoning (64); total 109 = 40 + 5 + 64.
        assert_eq!(
            reply.usage,
            Some(Usage {
                input_tokens: 40,
                cached_input_tokens: 0,
                cache_write_tokens: 0,
                output_tokens: 69,
                reasoning_tokens: 64,
            })
        );
    }

    #[test]
    fn thoughts_are_reasoning_and_gemini_ids_are_kept() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"Thinking...","thought":true},
            {"text":"It is 21\u00b0C."},
            {"text":""},
            {"functionCall":{"id":"fc-7","name":"f","args":{"a":[1, "x y"]}}},
            {"executableCode":{"language":"PYTHON","code":"1"}}]},
            "finishReason":"MAX_TOKENS","index":0}],
            "usageMetadata":{"promptTokenCount":12,"cachedContentTokenCount":8,
            "candidatesTokenCount":15,"thoughtsTokenCount":4,"toolUsePromptTokenCount":3,
            "totalTokenCount":34}}"#;
        let reply = decode(body).expect("decodes");
        assert_eq!(
            reply.parts,
            vec![
                Part::Reasoning {
                    text: "Thinking...".into(),
                    signature: None
                },
                Part::text("It is 21°C."),
                Part::ToolCall(ToolCall {
                    id: "fc-7".into(),
                    name: "f".into(),
                    arguments: r#"{"a":[1,"x y"]}"#.into(),
                    signature: None,
                }),
            ]
        );
        // MAX_TOKENS wins over the call: the answer was cut.
        assert_eq!(reply.finish, FinishReason::Length);
        assert_eq!(reply.id, None);
        let usage = reply.usage.expect("usage");
        assert_eq!(
            (
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens,
                usage.reasoning_tokens,
                usage.total()
            ),
            (15, 8, 19, 4, 34)
        );
    }

    #[test]
    fn every_finish_reason_maps_as_providers_md_says() {
        let cases = [
            ("STOP", false, FinishReason::Stop),
            ("STOP", true, FinishReason::ToolCalls),
            ("MAX_TOKENS", true, FinishReason::Length),
            ("SAFETY", false, FinishReason::ContentFilter),
            ("RECITATION", false, FinishReason::ContentFilter),
            ("LANGUAGE", false, FinishReason::ContentFilter),
            ("BLOCKLIST", false, FinishReason::ContentFilter),
            ("PROHIBITED_CONTENT", false, FinishReason::ContentFilter),
            ("SPII", false, FinishReason::ContentFilter),
            ("IMAGE_SAFETY", false, FinishReason::ContentFilter),
            (
                "IMAGE_PROHIBITED_CONTENT",
                false,
                FinishReason::ContentFilter,
            ),
            ("IMAGE_RECITATION", false, FinishReason::ContentFilter),
            ("MALFORMED_FUNCTION_CALL", false, FinishReason::Stop),
            ("UNEXPECTED_TOOL_CALL", false, FinishReason::Stop),
            ("OTHER", false, FinishReason::Stop),
            ("FINISH_REASON_UNSPECIFIED", false, FinishReason::Stop),
        ];
        for (wire, called, want) in cases {
            assert_eq!(finish_reason(wire, called), want, "{wire} called={called}");
        }
    }

    #[test]
    fn a_blocked_prompt_is_an_empty_reply_finished_by_the_filter() {
        let body = br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},
            "usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},
            "modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
        let reply = decode(body).expect("decodes");
        assert!(reply.parts.is_empty());
        assert_eq!(reply.finish, FinishReason::ContentFilter);
        assert_eq!(reply.usage.map(|u| u.input_tokens), Some(7));
    }

    #[test]
    fn bodies_that_are_not_answers_are_errors() {
        assert!(decode(b"not json").is_err());
        assert!(decode(b"[]").is_err());
        assert_eq!(
            decode(br#"{"error":{"code":500,"message":"boom","status":"INTERNAL"}}"#),
            Err("INTERNAL: boom".to_owned())
        );
    }

    #[test]
    fn compacting_keeps_strings_whole() {
        assert_eq!(
            compact("{ \"a b\" : [1, 2],\n \"c\": \"x\\\" y\" }"),
            r#"{"a b":[1,2],"c":"x\" y"}"#
        );
    }
}
