//! The usage tap for passthrough answers (OpenAI, Azure OpenAI): reads the provider's final
//! usage report into [`Usage`], and makes sure streams carry one.
//!
//! Owns the readers of usage in a Chat Completions body, a Responses body, a chat stream (the
//! `choices: []` chunk that `stream_options.include_usage` adds) and a Responses stream
//! (`response.completed`'s `response.usage`, or `.incomplete`/`.failed`), the request rewrite
//! that asks for the chat stream's usage when the client did not ([`ask_for_usage`]), and
//! hiding what that adds from such a client (the usage chunk, and the `"usage":null` on every
//! other chunk). Streams are read as they pass, event batch by event batch, with nothing kept
//! beyond the usage: a batch without `"usage"` in it is passed on untouched after one
//! substring search. It does not price usage or record it: the [`UsageTap`]'s callback hands
//! it on (to `governance`).

use super::Endpoint;
use super::canonical::Usage;
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use serde::Deserialize;
use std::sync::LazyLock;

/// Chat Completions' usage object.
#[derive(Debug, Default, Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// Responses' usage object.
#[derive(Debug, Default, Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

impl From<ChatUsage> for Usage {
    fn from(u: ChatUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            cached_input_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
            output_tokens: u.completion_tokens,
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

impl From<ResponsesUsage> for Usage {
    fn from(u: ResponsesUsage) -> Self {
        let details = u.input_tokens_details.unwrap_or_default();
        Usage {
            input_tokens: u.input_tokens,
            cached_input_tokens: details.cached_tokens.unwrap_or(0),
            cache_write_tokens: details.cache_write_tokens.unwrap_or(0),
            output_tokens: u.output_tokens,
            reasoning_tokens: u
                .output_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct WithChatUsage {
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct WithResponsesUsage {
    usage: Option<ResponsesUsage>,
}

/// A Responses stream event that carries the whole response.
#[derive(Deserialize)]
struct ResponseEvent {
    response: Option<WithResponsesUsage>,
}

/// Tokens in `text`, estimated where the provider reported none (a cut stream, a budget's
/// hold): about four ASCII characters a token, and a token for every other character, so that
/// text in CJK scripts (a token or more a character, three bytes each) is not under-counted
/// as bytes / 4 would.
pub fn estimate_tokens(text: &[u8]) -> u64 {
    // Most request bodies are all ASCII: checked a word at a time.
    if text.is_ascii() {
        return (text.len() as u64).div_ceil(4);
    }
    let (ascii, other) = text.iter().fold((0u64, 0u64), |(ascii, other), &b| {
        if b.is_ascii() {
            (ascii + 1, other)
        } else if b & 0xC0 != 0x80 {
            // The first byte of a character outside ASCII.
            (ascii, other + 1)
        } else {
            (ascii, other)
        }
    });
    ascii.div_ceil(4) + other
}

/// The usage in a whole (non-streamed) answer body of `endpoint`.
///
/// Only the top-level `usage` member is read, by [`top_level_member`] and [`plain_usage`]: the
/// rest of the body (the answer's text, most of its bytes) is skipped without being decoded,
/// which serde would do to check it (so a value malformed inside is not noticed there; see
/// [`Cursor`]). What they cannot vouch for is left to serde, on the usage object or on the
/// whole body.
pub fn from_body(endpoint: Endpoint, body: &[u8]) -> Option<Usage> {
    from_body_at(endpoint, body).0
}

/// [`from_body`], and where the top-level `usage` member's value starts in `body` when the
/// walk found it: a Chat Completions answer's choices, and so its finish reasons, end just
/// before it (traces read them there).
pub fn from_body_at(endpoint: Endpoint, body: &[u8]) -> (Option<Usage>, Option<usize>) {
    let member = top_level_member(body, b"usage");
    let at = match member {
        // The value is a part of `body`: its offset is the distance between their starts.
        Member::Found(value) => Some(value.as_ptr() as usize - body.as_ptr() as usize),
        Member::Absent | Member::Unsure => None,
    };
    (usage_of(endpoint, body, member), at)
}

/// The usage [`top_level_member`] found (or not) in `body`.
fn usage_of(endpoint: Endpoint, body: &[u8], member: Member<'_>) -> Option<Usage> {
    match member {
        Member::Found(value) => plain_usage(endpoint, value).unwrap_or_else(|| match endpoint {
            Endpoint::ChatCompletions => serde_json::from_slice::<Option<ChatUsage>>(value)
                .ok()?
                .map(Usage::from),
            Endpoint::Responses => serde_json::from_slice::<Option<ResponsesUsage>>(value)
                .ok()?
                .map(Usage::from),
        }),
        Member::Absent => None,
        Member::Unsure => match endpoint {
            Endpoint::ChatCompletions => serde_json::from_slice::<WithChatUsage>(body)
                .ok()?
                .usage
                .map(Usage::from),
            Endpoint::Responses => serde_json::from_slice::<WithResponsesUsage>(body)
                .ok()?
                .usage
                .map(Usage::from),
        },
    }
}

/// Where a count goes in [`plain_usage`]'s array.
const INPUT: usize = 0;
const CACHED: usize = 1;
const CACHE_WRITE: usize = 2;
const OUTPUT: usize = 3;
const REASONING: usize = 4;

/// A member of a usage object that [`plain_usage`] reads: a count, or a details object of
/// optional counts.
enum Field {
    Count(usize),
    Details(&'static [(&'static [u8], usize)]),
}

/// The members of [`ChatUsage`] and [`ResponsesUsage`], as serde reads them.
const CHAT_FIELDS: [(&[u8], Field); 4] = [
    (b"prompt_tokens", Field::Count(INPUT)),
    (b"completion_tokens", Field::Count(OUTPUT)),
    (
        b"prompt_tokens_details",
        Field::Details(&[(b"cached_tokens", CACHED)]),
    ),
    (
        b"completion_tokens_details",
        Field::Details(&[(b"reasoning_tokens", REASONING)]),
    ),
];
const RESPONSES_FIELDS: [(&[u8], Field); 4] = [
    (b"input_tokens", Field::Count(INPUT)),
    (b"output_tokens", Field::Count(OUTPUT)),
    (
        b"input_tokens_details",
        Field::Details(&[
            (b"cached_tokens", CACHED),
            (b"cache_write_tokens", CACHE_WRITE),
        ]),
    ),
    (
        b"output_tokens_details",
        Field::Details(&[(b"reasoning_tokens", REASONING)]),
    ),
];

/// A usage object (or `null`) read without serde when it is plain: each known member once, a
/// count a plain unsigned integer (or `null` where serde takes `null`, in a details object), a
/// details object or `null`. `None` when it is not: serde then reads it, and decides.
fn plain_usage(endpoint: Endpoint, value: &[u8]) -> Option<Option<Usage>> {
    if value == b"null" {
        return Some(None);
    }
    let fields = match endpoint {
        Endpoint::ChatCompletions => &CHAT_FIELDS,
        Endpoint::Responses => &RESPONSES_FIELDS,
    };
    let mut counts = [0u64; 5];
    let mut seen = 0u8;
    let mut c = Cursor { b: value, at: 0 };
    c.members(|c, key| {
        let Some(i) = fields.iter().position(|(name, _)| *name == key) else {
            return c.skip_value();
        };
        if seen & (1 << i) != 0 {
            return None;
        }
        seen |= 1 << i;
        match &fields[i].1 {
            Field::Count(slot) => counts[*slot] = plain_count(c.scalar())?,
            Field::Details(details) => {
                if c.b.get(c.at) != Some(&b'{') {
                    return (c.scalar() == b"null").then_some(());
                }
                let mut seen = 0u8;
                c.members(|c, key| {
                    let Some(j) = details.iter().position(|(name, _)| *name == key) else {
                        return c.skip_value();
                    };
                    if seen & (1 << j) != 0 {
                        return None;
                    }
                    seen |= 1 << j;
                    match c.scalar() {
                        b"null" => {}
                        count => counts[details[j].1] = plain_count(count)?,
                    }
                    Some(())
                })?;
            }
        }
        Some(())
    })?;
    c.ws();
    (c.at == value.len()).then_some(Some(Usage {
        input_tokens: counts[INPUT],
        cached_input_tokens: counts[CACHED],
        cache_write_tokens: counts[CACHE_WRITE],
        output_tokens: counts[OUTPUT],
        reasoning_tokens: counts[REASONING],
    }))
}

/// A forward pass over a usage object for [`plain_usage`]: each byte is looked at once, the
/// values it reads are read in place and the others skipped by their structure ([`value_end`]),
/// so a value that is malformed inside (a bad number or escape) in a member it does not read is
/// not noticed, unlike in a full parse.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while self.b.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    /// The object at the cursor (after whitespace), member by member: `member` is called with
    /// the cursor at each value (past the colon and whitespace) and the key as spelt, and must
    /// leave the cursor past the value. `None` when the object's structure does not close, a
    /// key is spelt with an escape (serde decodes those), or `member` returns `None`.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.ws();
        if self.b.get(self.at) != Some(&b'{') {
            return None;
        }
        self.at += 1;
        self.ws();
        if self.b.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            if self.b.get(self.at) != Some(&b'"') {
                return None;
            }
            let from = self.at + 1;
            let len = memchr::memchr2(b'"', b'\\', &self.b[from..])?;
            if self.b[from + len] != b'"' {
                return None;
            }
            self.at = from + len + 1;
            self.ws();
            if self.b.get(self.at) != Some(&b':') {
                return None;
            }
            self.at += 1;
            self.ws();
            member(self, &self.b[from..from + len])?;
            self.ws();
            match self.b.get(self.at) {
                Some(b',') => {
                    self.at += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Past the value at the cursor, whatever it is.
    fn skip_value(&mut self) -> Option<()> {
        self.at = value_end(self.b, self.at)?;
        Some(())
    }

    /// The scalar at the cursor: up to its delimiter, as [`value_end`] takes one.
    fn scalar(&mut self) -> &'a [u8] {
        let rest = &self.b[self.at..];
        let len = rest
            .iter()
            .take_while(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            .count();
        self.at += len;
        &rest[..len]
    }
}

/// A JSON number that is a plain `u64` (digits, no sign, fraction, exponent or leading zero).
fn plain_count(value: &[u8]) -> Option<u64> {
    if value.is_empty() || (value.len() > 1 && value[0] == b'0') {
        return None;
    }
    value.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(c - b'0')))
            .flatten()
    })
}

/// What [`top_level_member`] found.
#[derive(Debug, PartialEq, Eq)]
enum Member<'a> {
    /// The member's raw value (not yet checked beyond its extent).
    Found(&'a [u8]),
    /// The body is an object without the member.
    Absent,
    /// The body is not an object as far as the scan checks, or a key is spelt with an escape:
    /// leave it to a full parse.
    Unsure,
}

/// The raw value of the top-level member `key` of the JSON object `body`, found by walking the
/// object's members backwards from its closing brace: providers put `usage` at or near the
/// end, after the answer's text, so the text is not even skipped. Values are skipped by their
/// structure (a string back to its unescaped opening quote, an object or array by counting
/// brackets outside strings, a scalar back to its delimiter), and the walk stops at the last
/// member named `key`, as JSON parsers that keep the last of duplicate keys do (serde refuses
/// duplicates). So what lies before that member is not checked beyond the opening brace.
fn top_level_member<'a>(body: &'a [u8], key: &[u8]) -> Member<'a> {
    let ws_back = |mut end: usize| {
        while end > 0 && body[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        end
    };
    let first = body.iter().take_while(|c| c.is_ascii_whitespace()).count();
    if body.get(first) != Some(&b'{') {
        return Member::Unsure;
    }
    // `end` is always just past what is to be read next, going backwards.
    let mut end = ws_back(body.len());
    if end == first + 1 || body.get(end.wrapping_sub(1)) != Some(&b'}') {
        return Member::Unsure;
    }
    end = ws_back(end - 1);
    if end == first + 1 {
        return Member::Absent;
    }
    loop {
        let Some(start) = value_start(body, end) else {
            return Member::Unsure;
        };
        let value = &body[start..end];
        end = ws_back(start);
        if end == 0 || body[end - 1] != b':' {
            return Member::Unsure;
        }
        end = ws_back(end - 1);
        if end == 0 || body[end - 1] != b'"' {
            return Member::Unsure;
        }
        let Some(open) = string_start(body, end - 1) else {
            return Member::Unsure;
        };
        let name = &body[open + 1..end - 1];
        if name.contains(&b'\\') {
            return Member::Unsure;
        }
        if name == key {
            return Member::Found(value);
        }
        end = ws_back(open);
        match end.checked_sub(1).map(|i| body[i]) {
            Some(b',') => end = ws_back(end - 1),
            Some(b'{') if end - 1 == first => return Member::Absent,
            _ => return Member::Unsure,
        }
    }
}

/// The opening quote of the string whose closing quote is at `close`: the nearest quote
/// before it that an even number of backslashes precedes.
fn string_start(body: &[u8], close: usize) -> Option<usize> {
    let mut at = close;
    loop {
        at = memchr::memrchr(b'"', &body[..at])?;
        let escapes = body[..at].iter().rev().take_while(|c| **c == b'\\').count();
        if escapes % 2 == 0 {
            return Some(at);
        }
    }
}

/// The start of the value that ends just before `end` (see [`top_level_member`] for how far
/// it is checked).
fn value_start(body: &[u8], end: usize) -> Option<usize> {
    match body[..end].last()? {
        b'"' => string_start(body, end - 1),
        b'}' | b']' => {
            let mut depth = 0usize;
            let mut at = end;
            while at > 0 {
                at -= 1;
                match body[at] {
                    b'"' => at = string_start(body, at)?,
                    b'}' | b']' => depth += 1,
                    b'{' | b'[' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        _ => {
            // A number, `true`, `false` or `null`, after a delimiter.
            let len = body[..end]
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-'))
                .count();
            let start = end - len;
            let after_delimiter = start > 0
                && (matches!(body[start - 1], b':' | b',' | b'[' | b'{')
                    || body[start - 1].is_ascii_whitespace());
            (len > 0 && after_delimiter).then_some(start)
        }
    }
}

/// The end (past the closing quote) of the string opening at `at`.
fn string_end(body: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        // Keys and most values are short: a plain loop first, a vector search for the rest.
        let head = &body[i..body.len().min(i + 32)];
        i += match head.iter().position(|c| matches!(c, b'"' | b'\\')) {
            Some(n) => n,
            None => head.len() + memchr::memchr2(b'"', b'\\', &body[i + head.len()..])?,
        };
        if body[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
        if i > body.len() {
            return None;
        }
    }
}

/// The end of the value starting at `at` (see [`Cursor`] for how far it is checked).
fn value_end(body: &[u8], at: usize) -> Option<usize> {
    match body.get(at)? {
        b'"' => string_end(body, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&c) = body.get(i) {
                match c {
                    b'"' => {
                        i = string_end(body, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = body[at..]
                .iter()
                .take_while(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                .count();
            (len > 0).then_some(at + len)
        }
    }
}

/// For a streamed chat request: makes sure the upstream reports usage, adding
/// `"stream_options":{"include_usage":true}` to `body` when the client did not ask for it.
/// Returns true when it was added, so the client must not see what it brings.
pub fn ask_for_usage(endpoint: Endpoint, stream: bool, body: &mut Bytes) -> bool {
    if endpoint != Endpoint::ChatCompletions || !stream {
        return false;
    }
    #[derive(Deserialize)]
    struct Options {
        include_usage: Option<bool>,
    }
    #[derive(Deserialize)]
    struct Peek {
        stream_options: Option<serde_json::Map<String, serde_json::Value>>,
    }
    // The common case (no stream_options at all) is a splice after the opening brace.
    if STREAM_OPTIONS.find(body).is_none() {
        let Some(open) = body.iter().position(|b| *b == b'{') else {
            return false;
        };
        let mut out = BytesMut::with_capacity(body.len() + 48);
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true},");
        out.extend_from_slice(&body[open + 1..]);
        *body = out.freeze();
        return true;
    }
    let Ok(peek) = serde_json::from_slice::<Peek>(body) else {
        return false;
    };
    let options = peek.stream_options.unwrap_or_default();
    let asked = serde_json::from_value::<Options>(serde_json::Value::Object(options))
        .ok()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if asked {
        return false;
    }
    // Rare: the client sent stream_options without include_usage. Re-encode once.
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let Some(options) = value
        .get_mut("stream_options")
        .and_then(|o| o.as_object_mut())
    else {
        return false;
    };
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    match serde_json::to_vec(&value) {
        Ok(v) => {
            *body = v.into();
            true
        }
        Err(_) => false,
    }
}

/// Searchers built once: a stream's events are searched for these in every chunk, and building
/// a searcher per search cost more than the search. The others are searched once a request or
/// once a stream, where building the searcher was still most of the search's cost.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static DELTA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"delta\""));
static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"data:"));
static NO_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));
static STREAM_OPTIONS: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"stream_options\""));
/// The names of the Responses events that end a stream with the response, usage included.
static TERMINAL: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(b"\"response.completed\""),
        Finder::new(b"\"response.incomplete\""),
        Finder::new(b"\"response.failed\""),
    ]
});

/// Reads the usage out of a passthrough stream as it passes, and hides the usage the client
/// did not ask for.
#[derive(Debug)]
pub struct StreamUsage {
    endpoint: Endpoint,
    /// The gateway asked for usage on the client's behalf: hide it.
    hide: bool,
    usage: Option<Usage>,
    /// Delta events seen (about one output token each), for an estimate.
    deltas: u64,
}

impl StreamUsage {
    pub fn new(endpoint: Endpoint, hide: bool) -> Self {
        Self {
            endpoint,
            hide,
            usage: None,
            deltas: 0,
        }
    }

    /// The usage the stream reported so far (the final report, once it came).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Reads a run of whole SSE events; returns what the client should get.
    pub fn events(&mut self, events: Bytes) -> Bytes {
        if self.usage.is_none() {
            self.deltas += DELTA.find_iter(&events).count() as u64;
        }
        // One search through the run: each event is only looked into when the next `"usage"`
        // is in it, and the search goes on from the end of that event.
        let Some(mut hit) = USAGE.find(&events) else {
            return events;
        };
        let mut out: Option<BytesMut> = None;
        let mut start = 0;
        while start < events.len() {
            let end =
                super::stream::first_boundary(&events[start..]).map_or(events.len(), |e| start + e);
            let event = &events[start..end];
            let kept = if hit < end {
                let kept = self.event(event, hit - start);
                hit = match USAGE.find(&events[end..]) {
                    Some(next) => end + next,
                    None => usize::MAX,
                };
                kept
            } else {
                Kept::Same
            };
            if out.is_none() && !matches!(kept, Kept::Same) {
                // The first change: what passed so far, then everything from here.
                let mut o = BytesMut::with_capacity(events.len());
                o.extend_from_slice(&events[..start]);
                out = Some(o);
            }
            if let Some(o) = &mut out {
                match kept {
                    Kept::Same => o.extend_from_slice(event),
                    Kept::Without(cut) => {
                        o.extend_from_slice(&event[..cut.start]);
                        o.extend_from_slice(&event[cut.end..]);
                    }
                    Kept::Dropped => {}
                }
            }
            if hit == usize::MAX {
                // Nothing more to look at: the rest passes as it is.
                match &mut out {
                    Some(o) => o.extend_from_slice(&events[end..]),
                    None => return events,
                }
                break;
            }
            start = end;
        }
        match out {
            Some(o) => o.freeze(),
            None => events,
        }
    }

    /// One event, with the first `"usage"` in it at `at`.
    fn event(&mut self, event: &[u8], at: usize) -> Kept {
        match self.endpoint {
            Endpoint::ChatCompletions => {
                let value = skip_ws(&event[at + 7..]);
                let Some(value) = value.strip_prefix(b":") else {
                    return Kept::Same;
                };
                let value = skip_ws(value);
                if value.starts_with(b"null") {
                    return if self.hide {
                        Kept::Without(null_usage(event, at))
                    } else {
                        Kept::Same
                    };
                }
                if let Some(u) = data_of(event).and_then(|d| from_body(self.endpoint, d)) {
                    self.usage = Some(u);
                    let no_choices = NO_CHOICES.find(event).is_some();
                    if self.hide && no_choices {
                        return Kept::Dropped;
                    }
                }
                Kept::Same
            }
            Endpoint::Responses => {
                let terminal = TERMINAL.iter().any(|m| m.find(event).is_some());
                if terminal && let Some(u) = data_of(event).and_then(terminal_usage) {
                    self.usage = Some(u);
                }
                Kept::Same
            }
        }
    }
}

/// What becomes of an event: passed as it is, passed without a range of its bytes, or dropped.
enum Kept {
    Same,
    Without(std::ops::Range<usize>),
    Dropped,
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// The `data:` payload of a one-line-data event.
fn data_of(event: &[u8]) -> Option<&[u8]> {
    let at = DATA.find(event)?;
    let rest = &event[at + 5..];
    let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
    Some(skip_ws(&rest[..end]))
}

/// The usage of a Responses stream's terminal event, `response.usage`, read as [`from_body`]
/// reads a whole answer's (the event's other members, and the response's output, are skipped).
fn terminal_usage(data: &[u8]) -> Option<Usage> {
    match top_level_member(data, b"response") {
        Member::Found(response) => from_body(Endpoint::Responses, response),
        Member::Absent => None,
        Member::Unsure => serde_json::from_slice::<ResponseEvent>(data)
            .ok()?
            .response?
            .usage
            .map(Usage::from),
    }
}

/// The bytes of `event` that make its `,"usage":null` (the key at `at`, already known to hold
/// `null`), the comma before it (or, when it is the first member, the one after it) included.
fn null_usage(event: &[u8], at: usize) -> std::ops::Range<usize> {
    let ws = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    let mut end = at + b"\"usage\"".len();
    end += ws(&event[end..]) + 1; // the colon
    end += ws(&event[end..]) + 4; // null
    let mut from = at;
    while from > 0 && event[from - 1].is_ascii_whitespace() {
        from -= 1;
    }
    if from > 0 && event[from - 1] == b',' {
        from -= 1;
    } else {
        let after = end + ws(&event[end..]);
        if event.get(after) == Some(&b',') {
            end = after + 1;
        }
        from = at;
    }
    from..end
}

/// Hears `true` once a usage record is committed to the ledger.
pub type Ack = tokio::sync::oneshot::Receiver<bool>;

/// What a usage tap reports, once per answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub usage: Option<Usage>,
    /// The usage is the gateway's estimate: the stream ended (broken, or abandoned by the
    /// client) before the provider's report.
    pub estimated: bool,
    /// Wants an [`Ack`] of the commit: the relay holds the stream's last events until then.
    pub durable: bool,
}

/// Called once with the answer's usage: as soon as the final report passed (durably), or,
/// when the stream ends without one, with an estimate.
pub type OnUsage = Box<dyn FnOnce(Report) -> Option<Ack> + Send>;

/// A [`StreamUsage`] with what to do with the usage: reported durably the moment the final
/// report passes (the relay then holds those events until [`UsageTap::take_ack`]'s commit, so
/// the client's last byte follows the ledger write), else when the stream is dropped.
pub struct UsageTap {
    reader: StreamUsage,
    on_end: Option<OnUsage>,
    ack: Option<Ack>,
    /// The request's input tokens, estimated (for a stream that ends without a report).
    input_estimate: u64,
}

impl std::fmt::Debug for UsageTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageTap")
            .field("reader", &self.reader)
            .finish()
    }
}

impl UsageTap {
    /// `input_estimate`: the request's input tokens, estimated, in case the stream ends
    /// before the provider's report (its output is then estimated at one token per delta
    /// event, which is how OpenAI streams).
    pub fn new(endpoint: Endpoint, hide: bool, input_estimate: u64, on_end: OnUsage) -> Self {
        Self {
            reader: StreamUsage::new(endpoint, hide),
            on_end: Some(on_end),
            ack: None,
            input_estimate,
        }
    }

    /// Reads (and filters) a run of whole events; reports the usage once its final report
    /// is among them.
    pub fn events(&mut self, events: Bytes) -> Bytes {
        let out = self.reader.events(events);
        if let Some(usage) = self.reader.usage()
            && let Some(on_end) = self.on_end.take()
        {
            self.ack = on_end(Report {
                usage: Some(usage),
                estimated: false,
                durable: true,
            });
        }
        out
    }

    /// The commit the relay must await before passing on the events just read, once.
    pub fn take_ack(&mut self) -> Option<Ack> {
        self.ack.take()
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            let estimate = Usage {
                input_tokens: self.input_estimate,
                output_tokens: self.reader.deltas,
                ..Usage::default()
            };
            on_end(Report {
                usage: Some(self.reader.usage().unwrap_or(estimate)),
                estimated: self.reader.usage().is_none(),
                durable: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimates_count_ascii_by_four_and_every_other_character_as_one() {
        assert_eq!(estimate_tokens(b""), 0);
        assert_eq!(estimate_tokens(b"hello"), 2);
        // Six CJK characters, 18 bytes: 6 tokens, not 18 / 4.
        assert_eq!(estimate_tokens("你好世界你好".as_bytes()), 6);
        // Six ASCII bytes (2 tokens) and one two-byte character.
        assert_eq!(estimate_tokens("café ok".as_bytes()), 3);
    }

    const CHAT_BODY: &str = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\": 1"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":0}}}"#;

    #[test]
    fn reads_usage_from_whole_bodies() {
        let u = from_body(Endpoint::ChatCompletions, CHAT_BODY.as_bytes()).expect("usage");
        assert_eq!(
            u,
            Usage {
                input_tokens: 19,
                cached_input_tokens: 3,
                cache_write_tokens: 0,
                output_tokens: 10,
                reasoning_tokens: 4
            }
        );
        let r = r#"{"id":"resp_1","object":"response","output":[],"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":2,"cache_write_tokens":5},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":19}}"#;
        let u = from_body(Endpoint::Responses, r.as_bytes()).expect("usage");
        assert_eq!(
            (
                u.input_tokens,
                u.cached_input_tokens,
                u.cache_write_tokens,
                u.output_tokens,
                u.reasoning_tokens
            ),
            (12, 2, 5, 7, 1)
        );
        assert_eq!(from_body(Endpoint::Responses, b"{\"usage\":null}"), None);
        let body = br#"{"choices":[], "usage" : {"prompt_tokens":1}}"#;
        let (usage, at) = from_body_at(Endpoint::ChatCompletions, body);
        assert_eq!(usage.map(|u| u.input_tokens), Some(1));
        assert_eq!(at, Some(25));
        assert_eq!(&body[25..26], b"{");
        assert_eq!(from_body_at(Endpoint::ChatCompletions, b"{}").1, None);
        assert_eq!(from_body(Endpoint::Responses, b"not json"), None);
    }

    #[test]
    fn finds_only_the_top_level_member_and_leaves_doubtful_bodies_to_serde() {
        let usage = br#"{"prompt_tokens":19}"#;
        let m = |b: &'static [u8]| top_level_member(b, b"usage");
        // Strings with escaped quotes and brackets, and a `usage` nested in an array or an
        // object, are skipped; the value is returned byte for byte.
        assert_eq!(
            m(br#" { "usage" : {"prompt_tokens":19} , "a" : "x\"}]\\", "b":[{"usage":1},"]"], "c":{"usage":{}} , "d":-1.5e3, "e":null } "#),
            Member::Found(usage)
        );
        assert_eq!(m(br#"{"usage":null}"#), Member::Found(b"null"));
        assert_eq!(m(br#"{"a":[1,{"b":"}"}],"n":true}"#), Member::Absent);
        assert_eq!(m(b"{ }"), Member::Absent);
        for doubtful in [
            &br#"{"\u0075sage":{"prompt_tokens":1}}"#[..], // an escaped key: serde decodes it
            br#"{"a":"unterminated}"#,
            br#"{"a":[1,2}"#,
            br#"{"a":1"#,
            br#"{"a":1} x"#,
            br#"{"a" 1}"#,
            br#"{"a":1,}"#,
            br#"{"a":}"#,
            b"[1]",
            b"",
        ] {
            assert_eq!(
                m(doubtful),
                Member::Unsure,
                "{}",
                String::from_utf8_lossy(doubtful)
            );
        }
        // Of duplicate members, the last counts (serde would refuse the body).
        assert_eq!(m(br#"{"usage":1,"usage":2}"#), Member::Found(b"2"));
        // The escaped key is the usage, as serde reads it.
        assert_eq!(
            from_body(
                Endpoint::ChatCompletions,
                br#"{"\u0075sage":{"prompt_tokens":7}}"#
            )
            .map(|u| u.input_tokens),
            Some(7)
        );
        assert_eq!(
            from_body(
                Endpoint::ChatCompletions,
                br#"{"usage":null,"usage":{"prompt_tokens":7}}"#
            )
            .map(|u| u.input_tokens),
            Some(7)
        );
        // Plain usage objects are read without serde, with serde's answer; the others are
        // left to serde.
        let serde_chat = |v: &[u8]| {
            serde_json::from_slice::<Option<ChatUsage>>(v)
                .ok()
                .map(|u| u.map(Usage::from))
        };
        for (usage, plain) in [
            (&br#"{"prompt_tokens":5,"completion_tokens":12,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":4,"x":[1]}}"#[..], true),
            (br#" { "prompt_tokens" : 18446744073709551615 } "#, true),
            (br#"{"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":null}}"#, true),
            (b"{}", true),
            (b"null", true),
            (br#"{"prompt_tokens":18446744073709551616}"#, false), // past u64: serde refuses
            (br#"{"prompt_tokens":null}"#, false),
            (br#"{"prompt_tokens":1.0}"#, false),
            (br#"{"prompt_tokens":-1}"#, false),
            (br#"{"prompt_tokens":01}"#, false),
            (br#"{"prompt_tokens":1,"prompt_tokens":2}"#, false),
            (br#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":1}}"#, false),
            (br#"{"prompt_tokens_details":7}"#, false),
            (br#"{"prompt_tokens_details":{"cached_tokens":"7"}}"#, false),
            (b"[]", false),
            (br#" { "completion_tokens_details" : { "reasoning_tokens" : 2 , "x" : {"y":"}{"} } , "z" : [ {"prompt_tokens":9} ] , "prompt_tokens" : 3 } "#, true),
            (br#"{"prompt_tokens_details":"x"}"#, false),
            (br#"{"prompt_t\u006fkens":5}"#, false), // an escaped key: serde decodes it
            (br#"{"prompt_tokens":5}x"#, false),
            (br#"{"prompt_tokens":5 "completion_tokens":1}"#, false),
            (br#"{"prompt_tokens":5,}"#, false),
            (br#"{"completion_tokens_details":{"reasoning_tokens":2}"#, false),
        ] {
            let text = String::from_utf8_lossy(usage);
            match plain_usage(Endpoint::ChatCompletions, usage) {
                Some(u) => {
                    assert!(plain, "{text} was read without serde");
                    assert_eq!(Some(u), serde_chat(usage), "{text}");
                }
                None => assert!(!plain, "{text} was left to serde"),
            }
        }
        let responses = br#"{"input_tokens":9,"input_tokens_details":{"cached_tokens":2,"cache_write_tokens":5},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":16}"#;
        assert_eq!(
            plain_usage(Endpoint::Responses, responses),
            Some(Some(Usage {
                input_tokens: 9,
                cached_input_tokens: 2,
                cache_write_tokens: 5,
                output_tokens: 7,
                reasoning_tokens: 1,
            }))
        );
        // Whatever the path, the same answer as a full parse, for every prefix of a body.
        for end in 0..=CHAT_BODY.len() {
            let body = &CHAT_BODY.as_bytes()[..end];
            let full = serde_json::from_slice::<WithChatUsage>(body)
                .ok()
                .and_then(|w| w.usage)
                .map(Usage::from);
            assert_eq!(
                from_body(Endpoint::ChatCompletions, body),
                full,
                "prefix {end}"
            );
        }
    }

    #[test]
    fn asks_for_usage_only_on_chat_streams_that_did_not() {
        let mut body = Bytes::from_static(br#"{"model":"m","stream":true,"messages":[]}"#);
        assert!(ask_for_usage(Endpoint::ChatCompletions, true, &mut body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");

        let mut asked =
            Bytes::from_static(br#"{"stream":true,"stream_options":{"include_usage":true}}"#);
        let before = asked.clone();
        assert!(!ask_for_usage(Endpoint::ChatCompletions, true, &mut asked));
        assert_eq!(asked, before);

        let mut other = Bytes::from_static(
            br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#,
        );
        assert!(ask_for_usage(Endpoint::ChatCompletions, true, &mut other));
        let v: serde_json::Value = serde_json::from_slice(&other).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);

        let mut plain = Bytes::from_static(b"{\"stream\":false}");
        assert!(!ask_for_usage(Endpoint::ChatCompletions, false, &mut plain));
        assert!(!ask_for_usage(Endpoint::Responses, true, &mut plain));
    }

    fn chat_stream() -> Vec<&'static str> {
        vec![
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"usage\":null,\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        ]
    }

    #[test]
    fn a_hidden_chat_usage_chunk_is_read_and_removed_with_every_usage_null() {
        let mut tap = StreamUsage::new(Endpoint::ChatCompletions, true);
        let out: Vec<u8> = chat_stream()
            .into_iter()
            .flat_map(|e| tap.events(Bytes::from_static(e.as_bytes())).to_vec())
            .collect();
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(
            out,
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
             data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
             data: [DONE]\n\n"
        );
        let u = tap.usage().expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens), (5, 2));
    }

    #[test]
    fn an_asked_for_usage_chunk_passes_untouched_in_one_batch_or_many() {
        let all: String = chat_stream().concat();
        let mut tap = StreamUsage::new(Endpoint::ChatCompletions, false);
        let out = tap.events(Bytes::from(all.clone()));
        assert_eq!(out, all.as_bytes());
        assert_eq!(tap.usage().map(|u| u.total()), Some(7));

        // Hidden, in one batch: the same as event by event.
        let mut hidden = StreamUsage::new(Endpoint::ChatCompletions, true);
        let out = hidden.events(Bytes::from(all));
        assert!(!String::from_utf8_lossy(&out).contains("usage"));
        assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
        assert_eq!(hidden.usage().map(|u| u.total()), Some(7));
    }

    /// However the events are batched, the hidden stream reads the same and the client gets the
    /// same bytes as event by event.
    #[test]
    fn any_batching_of_a_hidden_stream_gives_the_same_bytes() {
        let mut events =
            vec!["data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n"];
        events.extend(chat_stream());
        events.insert(
            3,
            "data: {\"id\":\"c\",\"usage\" : null , \"choices\":[]}\n\n",
        );
        let one_by_one: Vec<u8> = {
            let mut tap = StreamUsage::new(Endpoint::ChatCompletions, true);
            events
                .iter()
                .flat_map(|e| tap.events(Bytes::from_static(e.as_bytes())).to_vec())
                .collect()
        };
        assert_eq!(
            String::from_utf8_lossy(&one_by_one),
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
             data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
             data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
             data: {\"id\":\"c\" , \"choices\":[]}\n\n\
             data: [DONE]\n\n"
        );
        // Each of the 2^5 ways of cutting the six events into consecutive batches.
        for cuts in 0u32..1 << (events.len() - 1) {
            let mut tap = StreamUsage::new(Endpoint::ChatCompletions, true);
            let mut out = Vec::new();
            let mut batch = String::new();
            for (i, e) in events.iter().enumerate() {
                batch.push_str(e);
                if i == events.len() - 1 || cuts & (1 << i) != 0 {
                    out.extend_from_slice(&tap.events(Bytes::from(std::mem::take(&mut batch))));
                }
            }
            assert_eq!(out, one_by_one, "cuts {cuts:b}");
            assert_eq!(
                tap.usage().map(|u| (u.input_tokens, u.output_tokens)),
                Some((5, 2))
            );
            assert_eq!(tap.deltas, 3);
        }
    }

    #[test]
    fn reads_the_responses_streams_final_usage() {
        let events = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n\
            event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"usage\\\"\"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":12}}}\n\n";
        let mut tap = StreamUsage::new(Endpoint::Responses, false);
        let out = tap.events(Bytes::from_static(events.as_bytes()));
        assert_eq!(out, events.as_bytes());
        let u = tap.usage().expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens), (9, 3));
    }

    /// The stream's usage events are read by the walk that reads whole answers; it must find
    /// what serde found in the event's data, for every shape of event here.
    #[test]
    fn stream_usage_events_are_read_as_serde_reads_them() {
        let chat = [
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
            r#"{"usage":{"prompt_tokens":5,"completion_tokens":2},"id":"c","choices":[]}"#,
            r#"{ "id" : "c" , "choices" : [ ] , "usage" : { "prompt_tokens" : 5 , "completion_tokens" : 2 ,
               "prompt_tokens_details" : { "cached_tokens" : 3 } , "completion_tokens_details" : { "reasoning_tokens" : 1 } } }"#,
            r#"{"id":"c","choices":[{"delta":{"content":"\"usage\":{}"}}],"usage":{"prompt_tokens":1,"completion_tokens":4}}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":5.0,"completion_tokens":2}}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":2}}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":null,"completion_tokens":2}}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}"#,
            r#"{"id":"c","choices":[],"usage":"none"}"#,
            r#"{"id":"c","choices":[],"usage":{}}"#,
        ];
        let responses = [
            r#"{"type":"response.completed","response":{"id":"r","output":[{"content":[{"text":"\"usage\":{\"input_tokens\":1}"}]}],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":2,"cache_write_tokens":1},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":12}},"sequence_number":7}"#,
            r#"{"type":"response.incomplete","sequence_number":7,"response":{"usage":{"input_tokens":9,"output_tokens":3},"id":"r","status":"incomplete"}}"#,
            r#"{"type":"response.failed","response":{"id":"r","usage":null}}"#,
            r#"{"type":"response.completed","response":null}"#,
            r#"{"type":"response.completed","resp\u006fnse":{"usage":{"input_tokens":9,"output_tokens":3}}}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":9,"output_tokens":3.5}}}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":9,"output_tokens":3}}"#,
        ];
        let by_serde_chat = |d: &str| {
            serde_json::from_slice::<WithChatUsage>(d.as_bytes())
                .ok()
                .and_then(|w| w.usage)
                .map(Usage::from)
        };
        let by_serde_responses = |d: &str| {
            serde_json::from_slice::<ResponseEvent>(d.as_bytes())
                .ok()
                .and_then(|e| e.response)
                .and_then(|r| r.usage)
                .map(Usage::from)
        };
        let mut found = 0;
        for (endpoint, data, expected) in chat
            .iter()
            .map(|d| (Endpoint::ChatCompletions, d, by_serde_chat(d)))
            .chain(
                responses
                    .iter()
                    .map(|d| (Endpoint::Responses, d, by_serde_responses(d))),
            )
        {
            let mut tap = StreamUsage::new(endpoint, false);
            let event = format!("data: {}\n\n", data.replace('\n', " "));
            assert_eq!(tap.events(Bytes::from(event.clone())), event.as_bytes());
            assert_eq!(tap.usage(), expected, "{endpoint:?} {data}");
            found += usize::from(expected.is_some());
        }
        // Not a vacuous agreement: most of these carry a usage serde reads.
        assert_eq!(found, 8);
    }

    #[test]
    fn the_tap_reports_once_when_dropped_even_without_usage() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut tap = UsageTap::new(
            Endpoint::ChatCompletions,
            true,
            11,
            Box::new(move |r| {
                tx.send(r).expect("send");
                None
            }),
        );
        // Two content deltas passed, then the client went away.
        tap.events(Bytes::from_static(chat_stream()[0].as_bytes()));
        tap.events(Bytes::from_static(chat_stream()[0].as_bytes()));
        drop(tap);
        let report = rx.recv().expect("reported");
        assert_eq!(
            (report.estimated, report.durable),
            (true, false),
            "{report:?}"
        );
        let usage = report.usage.expect("estimated");
        assert_eq!((usage.input_tokens, usage.output_tokens), (11, 2));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_tap_reports_durably_as_soon_as_the_final_usage_passes_and_only_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut tap = UsageTap::new(
            Endpoint::ChatCompletions,
            false,
            0,
            Box::new(move |r: Report| {
                tx.send((r.usage.map(|u| u.total()), r.durable))
                    .expect("send");
                let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
                let _ = ack_tx.send(true);
                Some(ack_rx)
            }),
        );
        let events = chat_stream();
        tap.events(Bytes::from_static(events[0].as_bytes()));
        assert!(tap.take_ack().is_none());
        assert!(rx.try_recv().is_err(), "nothing reported before the usage");
        tap.events(Bytes::from_static(events[2].as_bytes()));
        assert_eq!(rx.try_recv().expect("reported"), (Some(7), true));
        assert!(tap.take_ack().is_some());
        assert!(tap.take_ack().is_none());
        tap.events(Bytes::from_static(events[3].as_bytes()));
        drop(tap);
        assert!(rx.try_recv().is_err(), "reported once");
    }
}
