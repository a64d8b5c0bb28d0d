//! The reply planner every provider shares: the deterministic canned answer (its words, the
//! token counts, the tool call it makes and the arguments of that call, truncation by a token
//! limit), where a `midstream_error` fault cuts a stream, and the ids and clock the wire formats
//! print. It knows no wire format: each provider module reads a [`Reply`] and writes it in its
//! own shapes, so the same request gets the same answer from OpenAI, Azure, Gemini and Bedrock.
//!
//! Answers are cheap on purpose, because the load tests measure the gateway through the
//! emulator: a fixed sentence padded with filler words, one word per output token and per stream
//! chunk, and a prompt-token estimate from character counts instead of a tokenizer.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::faults::Active;

/// Default reply length in words (= output tokens = stream chunks).
pub(crate) const DEFAULT_TOKENS: u64 = 12;
/// Prompt tokens a request reads from a provider-side cache (Gemini `cachedContent`, Bedrock
/// `cachePoint`): a fixed count, so cache accounting is testable without a cache.
pub(crate) const CACHED_TOKENS: u64 = 32;
/// Bytes of tool-call arguments per stream fragment (and per output token).
pub(crate) const ARGUMENT_FRAGMENT: usize = 8;

/// The reply: a fixed sentence, then filler words cycled to the requested length. Each word
/// carries its leading space so that stream deltas concatenate to the full text.
const SENTENCE: [&str; 5] = ["Hello", " from", " the", " Switchyard", " emulator."];
const FILLER: [&str; 7] = [
    " This", " is", " filler", " text", " for", " load", " tests.",
];

/// How many words (output tokens) a reply has: the `tokens` fault, or the default.
pub(crate) fn words(fault: &Active) -> u64 {
    fault.tokens.unwrap_or(DEFAULT_TOKENS)
}

/// Text seen in a request: its length (for the usage estimate) and whether it says "json".
#[derive(Debug, Default)]
pub(crate) struct TextStats {
    pub chars: usize,
    pub messages: usize,
    pub mentions_json: bool,
}

impl TextStats {
    pub(crate) fn add(&mut self, text: &str) {
        self.chars += text.chars().count();
        if !self.mentions_json {
            self.mentions_json = text
                .as_bytes()
                .windows(4)
                .any(|w| w.eq_ignore_ascii_case(b"json"));
        }
    }

    /// `ceil(chars / 4) + 3` per message: a deterministic stand-in for a tokenizer, close
    /// enough for usage and cost tests, and free of a tokenizer's cost on the hot path.
    pub(crate) fn prompt_tokens(&self) -> u64 {
        estimate_prompt_tokens(self.chars, self.messages)
    }
}

pub(crate) fn estimate_prompt_tokens(chars: usize, messages: usize) -> u64 {
    let chars = u64::try_from(chars).unwrap_or(u64::MAX);
    let messages = u64::try_from(messages).unwrap_or(u64::MAX);
    chars.div_ceil(4).saturating_add(messages.saturating_mul(3))
}

// ---------------------------------------------------------------------------------------------
// The answer: words, tool calls, truncation.
// ---------------------------------------------------------------------------------------------

/// A function tool the request offered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FnTool<'a> {
    pub name: &'a str,
    pub parameters: Option<&'a Value>,
}

/// The request's `tool_choice`, reduced to what the emulator needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ToolChoice<'a> {
    /// Never call a function.
    None,
    /// Call the first function tool.
    Auto,
    /// Call this function.
    Named(&'a str),
}

/// Which tool the answer calls: one when function tools are offered, the tool choice allows it
/// and the conversation ends with the user speaking (after a tool result, the model answers in
/// text, which is what lets agent loops in tests terminate). `Err` carries a named tool that is
/// not among the offered ones; each provider words that refusal its own way.
pub(crate) fn pick_tool<'a>(
    tools: &[FnTool<'a>],
    choice: ToolChoice<'a>,
    last_is_user: bool,
) -> Result<Option<FnTool<'a>>, &'a str> {
    if let ToolChoice::Named(name) = choice {
        let tool = tools.iter().find(|t| t.name == name).ok_or(name)?;
        return Ok(last_is_user.then_some(*tool));
    }
    if choice == ToolChoice::None || !last_is_user {
        return Ok(None);
    }
    Ok(tools.first().copied())
}

/// Arguments for a forced tool call: a JSON object giving each `required` property a
/// placeholder of its type (the first `enum`/`const` value when there is one), recursively for
/// nested objects. Keys come out sorted, which keeps the answer deterministic.
pub(crate) fn placeholder_arguments(parameters: Option<&Value>) -> String {
    placeholder_object(parameters, 0).to_string()
}

fn placeholder_object(schema: Option<&Value>, depth: usize) -> Value {
    let mut out = Map::new();
    let required = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array);
    let properties = schema.and_then(|s| s.get("properties"));
    for name in required.into_iter().flatten().filter_map(Value::as_str) {
        let property = properties.and_then(|p| p.get(name));
        out.insert(name.to_owned(), placeholder_value(property, depth + 1));
    }
    Value::Object(out)
}

fn placeholder_value(schema: Option<&Value>, depth: usize) -> Value {
    let Some(schema) = schema else {
        return Value::Null;
    };
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for union in ["anyOf", "oneOf"] {
        if let Some(first) = schema
            .get(union)
            .and_then(Value::as_array)
            .and_then(|u| u.first())
        {
            return placeholder_value(Some(first), depth);
        }
    }
    // `type` may be a list such as ["string", "null"]: the first non-null type speaks for it.
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "",
    };
    // Gemini's OpenAPI subset spells types in capitals (`STRING`); JSON Schema in lower case.
    match ty.to_ascii_lowercase().as_str() {
        "string" => Value::String("example".to_owned()),
        "integer" | "number" => Value::from(0),
        "boolean" => Value::Bool(false),
        "array" => Value::Array(Vec::new()),
        // Deeply nested schemas get an empty object rather than unbounded recursion.
        "object" if depth < 8 => placeholder_object(Some(schema), depth),
        "object" => Value::Object(Map::new()),
        _ => Value::Null,
    }
}

/// What the model "says".
#[derive(Debug)]
pub(crate) enum Body<'a> {
    Text,
    Tool { name: &'a str },
}

/// The planned answer: its pieces (one per output token and per stream delta) and whether a
/// token limit cut it short.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    pub body: Body<'a>,
    pub pieces: Vec<Cow<'static, str>>,
    pub truncated: bool,
}

impl<'a> Reply<'a> {
    pub(crate) fn plan(
        words: u64,
        json: bool,
        tool: Option<FnTool<'a>>,
        limit: Option<u64>,
    ) -> Self {
        let (body, mut pieces) = match tool {
            Some(tool) => (
                Body::Tool { name: tool.name },
                fragments(&placeholder_arguments(tool.parameters)),
            ),
            None => (Body::Text, reply_pieces(words, json)),
        };
        let limit = limit.and_then(|l| usize::try_from(l).ok());
        let truncated = limit.is_some_and(|l| pieces.len() > l);
        if let Some(limit) = limit.filter(|_| truncated) {
            pieces.truncate(limit);
        }
        Self {
            body,
            pieces,
            truncated,
        }
    }

    /// The full text (or tool arguments) as one string.
    pub(crate) fn content(&self) -> String {
        self.pieces.concat()
    }

    pub(crate) fn output_tokens(&self) -> u64 {
        u64::try_from(self.pieces.len()).unwrap_or(u64::MAX)
    }
}

fn reply_word(i: usize) -> &'static str {
    SENTENCE
        .get(i)
        .copied()
        .unwrap_or_else(|| FILLER[(i - SENTENCE.len()) % FILLER.len()])
}

/// The reply as stream deltas. In JSON mode the text is `{"answer":"…"}`: the first and last
/// deltas carry the braces, so the deltas still concatenate to the content and a truncated
/// reply is broken JSON, as OpenAI's is.
fn reply_pieces(words: u64, json: bool) -> Vec<Cow<'static, str>> {
    let words = usize::try_from(words.max(1)).unwrap_or(1);
    let mut pieces: Vec<Cow<'static, str>> =
        (0..words).map(|i| Cow::Borrowed(reply_word(i))).collect();
    if json {
        if let Some(first) = pieces.first_mut() {
            *first = Cow::Owned(format!("{{\"answer\":\"{first}"));
        }
        if let Some(last) = pieces.last_mut() {
            *last = Cow::Owned(format!("{last}\"}}"));
        }
    }
    pieces
}

/// Tool-call arguments cut into stream fragments on character boundaries.
pub(crate) fn fragments(arguments: &str) -> Vec<Cow<'static, str>> {
    let mut out = Vec::new();
    let mut rest = arguments;
    while !rest.is_empty() {
        let mut end = ARGUMENT_FRAGMENT.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        out.push(Cow::Owned(rest[..end].to_owned()));
        rest = &rest[end..];
    }
    out
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `prefix` + hex, the shape of OpenAI's `resp_`, `msg_` and `fc_` ids.
pub(crate) fn hex_id(prefix: &str) -> String {
    format!(
        "{prefix}{:032x}{:016x}",
        fastrand::u128(..),
        fastrand::u64(..)
    )
}

/// `prefix` + alphanumerics, the shape of `chatcmpl-…` and `call_…` ids.
pub(crate) fn alnum_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(len));
    id
}

impl Reply<'_> {
    /// The pieces a stream sends before its `midstream_error` fault, and whether that fault
    /// follows them (a fault beyond the last piece still fails the stream, after every piece).
    pub(crate) fn streamed(&self, fault: &Active) -> (&[Cow<'static, str>], bool) {
        match fault.midstream_error {
            Some(k) => (&self.pieces[..k.min(self.pieces.len())], true),
            None => (&self.pieces, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_estimate_is_ceil_chars_over_four_plus_three_per_message() {
        assert_eq!(estimate_prompt_tokens(0, 0), 0);
        assert_eq!(estimate_prompt_tokens(1, 1), 4);
        assert_eq!(estimate_prompt_tokens(8, 2), 8);
        assert_eq!(estimate_prompt_tokens(9, 2), 9);

        let mut stats = TextStats::default();
        stats.add("You are terse."); // 14 chars
        stats.add("héllo"); // 5 chars, not 6 bytes
        stats.messages = 2;
        assert_eq!(stats.chars, 19);
        assert_eq!(stats.prompt_tokens(), 5 + 6);
        assert!(!stats.mentions_json);
        stats.add("Reply in JSON please");
        assert!(stats.mentions_json);
    }

    #[test]
    fn placeholders_fill_required_properties_by_type() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "city": { "type": "string" },
                "days": { "type": "integer" },
                "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] },
                "exact": { "type": ["boolean", "null"] },
                "tags": { "type": "array", "items": { "type": "string" } },
                "where": {
                    "type": "object",
                    "properties": { "lat": { "type": "number" }, "note": { "type": "string" } },
                    "required": ["lat"]
                },
                "optional": { "type": "string" }
            },
            "required": ["city", "days", "unit", "exact", "tags", "where", "untyped"]
        });
        let args: Value =
            serde_json::from_str(&placeholder_arguments(Some(&schema))).expect("valid JSON");
        assert_eq!(
            args,
            serde_json::json!({
                "city": "example",
                "days": 0,
                "unit": "celsius",
                "exact": false,
                "tags": [],
                "where": { "lat": 0 },
                "untyped": null
            })
        );
        assert_eq!(placeholder_arguments(None), "{}");
    }

    #[test]
    fn reply_has_one_piece_per_word_and_truncates() {
        let reply = Reply::plan(DEFAULT_TOKENS, false, None, None);
        assert_eq!(reply.pieces.len(), 12);
        assert_eq!(
            reply.content(),
            "Hello from the Switchyard emulator. This is filler text for load tests."
        );
        assert!(!reply.truncated);

        let short = Reply::plan(3, false, None, None);
        assert_eq!(short.content(), "Hello from the");

        let cut = Reply::plan(20, false, None, Some(4));
        assert_eq!((cut.pieces.len(), cut.truncated), (4, true));

        let json = Reply::plan(6, true, None, None);
        let parsed: Value = serde_json::from_str(&json.content()).expect("valid JSON");
        assert_eq!(parsed["answer"], "Hello from the Switchyard emulator. This");
        assert_eq!(json.pieces.len(), 6);
    }

    #[test]
    fn tool_arguments_stream_in_fragments() {
        let schema = serde_json::json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]});
        let tool = FnTool {
            name: "get_weather",
            parameters: Some(&schema),
        };
        let reply = Reply::plan(12, false, Some(tool), None);
        assert_eq!(reply.content(), r#"{"city":"example"}"#);
        assert!(reply.pieces.iter().all(|p| p.len() <= ARGUMENT_FRAGMENT));
        assert_eq!(fragments("ééééé").concat(), "ééééé");
    }

    #[test]
    fn picks_tools_only_after_a_user_turn() {
        let tools = [
            FnTool {
                name: "a",
                parameters: None,
            },
            FnTool {
                name: "b",
                parameters: None,
            },
        ];
        let pick = |choice, last_is_user| {
            pick_tool(&tools, choice, last_is_user).map(|t| t.map(|t| t.name))
        };
        assert_eq!(pick(ToolChoice::Auto, true), Ok(Some("a")));
        assert_eq!(pick(ToolChoice::Named("b"), true), Ok(Some("b")));
        assert_eq!(pick(ToolChoice::None, true), Ok(None));
        assert_eq!(pick(ToolChoice::Auto, false), Ok(None));
        assert_eq!(pick(ToolChoice::Named("c"), true), Err("c"));
    }
}
