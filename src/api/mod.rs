//! The front API: the OpenAI endpoints clients call, as the gateway reads them.
//!
//! This module owns what the gateway needs to know about a client request before routing:
//! which endpoint, which model, whether it streams, and that the body is well-formed JSON. It
//! deliberately reads no more than that: OpenAI upstreams receive the client's bytes untouched
//! unless a route overrides the model. The canonical conversation model that Gemini and Bedrock
//! translate through will live here beside it (`canonical`), with chat and responses as codecs.

pub mod canonical;
pub mod chat;
pub mod codec;
pub mod response_ids;
pub mod response_store;
pub mod responses;
pub mod stream;
pub mod usage;

use crate::error::{GatewayError, quote};
use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

/// The data-plane endpoints that carry a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/responses`
    Responses,
}

impl Endpoint {
    /// The path below `/v1`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Responses => "responses",
        }
    }

    /// [`Endpoint::path`] as a path under a provider's base URL, with its leading `/`.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Responses => "/responses",
        }
    }
}

/// A client request as the gateway needs it for routing and forwarding.
#[derive(Debug)]
pub struct FrontRequest {
    pub endpoint: Endpoint,
    /// The body exactly as the client sent it.
    pub raw: Bytes,
    /// The `model` field, if any.
    pub model: Option<String>,
    /// The `stream` field (false when absent).
    pub stream: bool,
    /// The `previous_response_id` field (Responses), if any.
    pub previous_response_id: Option<String>,
    /// Where `model`'s JSON value sits in `raw`, so a rewrite splices instead of re-parsing.
    model_at: Option<Range<usize>>,
    /// Where `previous_response_id`'s JSON value sits in `raw`.
    previous_response_id_at: Option<Range<usize>>,
}

/// The top-level fields the gateway reads. Everything else is walked by [`Checked`], which
/// applies the same limits a full parse would (UTF-8, escapes, number range, depth), so a body
/// that passes here can never fail later: the body is parsed exactly once.
struct Peek<'a> {
    model: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    messages: bool,
    previous_response_id: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Peek<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_map(PeekVisitor)
    }
}

struct PeekVisitor;

impl<'de> Visitor<'de> for PeekVisitor {
    type Value = Peek<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Peek<'de>, A::Error> {
        let mut peek = Peek {
            model: None,
            stream: None,
            messages: false,
            previous_response_id: None,
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            // A repeated field is refused: upstreams disagree on which copy wins.
            let seen = match key.as_ref() {
                "model" => peek.model.replace(map.next_value()?).is_some(),
                "previous_response_id" => peek
                    .previous_response_id
                    .replace(map.next_value()?)
                    .is_some(),
                "stream" => peek.stream.replace(map.next_value()?).is_some(),
                "messages" => {
                    map.next_value::<Checked>()?;
                    std::mem::replace(&mut peek.messages, true)
                }
                _ => {
                    map.next_value::<Checked>()?;
                    false
                }
            };
            if seen {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    quote(&key)
                )));
            }
        }
        Ok(peek)
    }
}

/// Any JSON value, validated as a full parse would and then dropped.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

impl FrontRequest {
    /// Parses a request body, with errors that say what and where.
    pub fn parse(endpoint: Endpoint, raw: Bytes) -> Result<Self, GatewayError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::invalid(
                "We could not parse the JSON body of your request: the body is empty. Send a JSON object.",
                None,
                Some("invalid_json"),
            ));
        }
        let first = raw.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first != Some(b'{') {
            // Give a syntax error where there is one; otherwise say what shape is expected.
            if let Err(err) = serde_json::from_slice::<Checked>(&raw) {
                return Err(json_syntax_error(&err));
            }
            return Err(GatewayError::invalid(
                "The request body must be a JSON object.",
                None,
                Some("invalid_json"),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&raw);
        let peek = match Peek::deserialize(&mut de).and_then(|p| de.end().map(|()| p)) {
            Ok(p) => p,
            Err(err) => return Err(json_syntax_error(&err)),
        };
        if endpoint == Endpoint::ChatCompletions && !peek.messages {
            return Err(GatewayError::invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            ));
        }
        let stream = match peek.stream.map(RawValue::get) {
            None | Some("null" | "false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(GatewayError::invalid(
                    format!(
                        "Invalid type for 'stream': expected a boolean, got {}",
                        quote(other)
                    ),
                    Some("stream"),
                    Some("invalid_type"),
                ));
            }
        };
        let (model, model_at) = string_field(&raw, "model", peek.model)?;
        let (previous_response_id, previous_response_id_at) =
            string_field(&raw, "previous_response_id", peek.previous_response_id)?;
        Ok(Self {
            endpoint,
            model,
            stream,
            previous_response_id,
            model_at,
            previous_response_id_at,
            raw,
        })
    }

    /// The body to send upstream: `model` set to `model` and, when given, the
    /// `previous_response_id` replaced. Edits are spliced into the client's bytes, which are
    /// otherwise kept as they are (and returned untouched when nothing changes).
    pub fn upstream_body(&self, model: &str, previous_response_id: Option<&str>) -> Bytes {
        let mut edits: Vec<(Range<usize>, String)> = Vec::with_capacity(2);
        if self.model.as_deref() != Some(model) {
            match &self.model_at {
                Some(at) => edits.push((at.clone(), json_string(model))),
                // No model in the body: insert one as the first field.
                None => {
                    let open = self.raw.iter().position(|b| *b == b'{').unwrap_or(0) + 1;
                    let rest = self.raw[open..].iter().find(|b| !b.is_ascii_whitespace());
                    let sep = if rest == Some(&b'}') { "" } else { "," };
                    let field = format!("\"model\":{}{sep}", json_string(model));
                    edits.push((open..open, field));
                }
            }
        }
        if let (Some(id), Some(at)) = (previous_response_id, &self.previous_response_id_at)
            && self.previous_response_id.as_deref() != Some(id)
        {
            edits.push((at.clone(), json_string(id)));
        }
        if edits.is_empty() {
            return self.raw.clone();
        }
        edits.sort_by_key(|(at, _)| at.start);
        let mut out = BytesMut::with_capacity(self.raw.len() + 64);
        let mut from = 0;
        for (at, text) in edits {
            out.extend_from_slice(&self.raw[from..at.start]);
            out.extend_from_slice(text.as_bytes());
            from = at.end;
        }
        out.extend_from_slice(&self.raw[from..]);
        out.freeze()
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A top-level field that must be a string, and where its value sits in `raw`.
fn string_field(
    raw: &[u8],
    name: &str,
    value: Option<&RawValue>,
) -> Result<(Option<String>, Option<Range<usize>>), GatewayError> {
    let Some(value) = value else {
        return Ok((None, None));
    };
    let text = value.get();
    // `RawValue` borrows from `raw`, so its address tells where the value is.
    let start = text.as_ptr() as usize - raw.as_ptr() as usize;
    let at = Some(start..start + text.len());
    if text == "null" {
        return Ok((None, at));
    }
    let parsed: String = serde_json::from_str(text).map_err(|err| {
        if !err.is_data() {
            // The raw value skipped escapes unchecked: a syntax error here is one in the body,
            // at this value's place in it.
            let before = &raw[..start];
            let line = before.iter().filter(|b| **b == b'\n').count() + err.line();
            let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = if err.line() == 1 { start - line_start + err.column() } else { err.column() };
            return GatewayError::invalid(
                format!(
                    "We could not parse the JSON body of your request: {} at line {line} column {column}. Send a valid JSON object.",
                    clip_serde(&err)
                ),
                None,
                Some("invalid_json"),
            );
        }
        GatewayError::invalid(
            format!("Invalid type for '{name}': {}", clip_serde(&err)),
            Some(name),
            Some("invalid_type"),
        )
    })?;
    Ok((Some(parsed), at))
}

/// A serde error's text without its position, clipped so a huge value is not echoed back.
fn clip_serde(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text);
    quote(text).into_owned()
}

fn json_syntax_error(err: &serde_json::Error) -> GatewayError {
    GatewayError::invalid(
        format!(
            "We could not parse the JSON body of your request: {err}. Send a valid JSON object."
        ),
        None,
        Some("invalid_json"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<FrontRequest, GatewayError> {
        FrontRequest::parse(
            Endpoint::ChatCompletions,
            Bytes::copy_from_slice(body.as_bytes()),
        )
    }

    fn parse_bytes(body: &[u8]) -> Result<FrontRequest, GatewayError> {
        FrontRequest::parse(Endpoint::ChatCompletions, Bytes::copy_from_slice(body))
    }

    fn message(err: GatewayError) -> String {
        err.to_string()
    }

    #[test]
    fn reads_model_and_stream() {
        let r = parse(r#"{"model":"openai/gpt-4o","stream":true,"messages":[]}"#).expect("valid");
        assert_eq!(r.model.as_deref(), Some("openai/gpt-4o"));
        assert!(r.stream);
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = message(parse("{\"model\": \"x\",\n \"messages\": [}").expect_err("syntax"));
        assert!(err.contains("line 2 column"), "{err}");
    }

    #[test]
    fn type_errors_name_the_field() {
        match parse(r#"{"model":5,"messages":[]}"#) {
            Err(GatewayError::InvalidRequest { param, message, .. }) => {
                assert_eq!(param.as_deref(), Some("model"));
                assert!(message.contains("'model'"), "{message}");
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn rejects_non_objects_and_missing_messages() {
        assert!(message(parse("[1,2]").expect_err("array")).contains("JSON object"));
        assert!(message(parse("").expect_err("empty")).contains("empty"));
        assert!(message(parse(r#"{"model":"m"} x"#).expect_err("trailing")).contains("trailing"));
        match parse(r#"{"model":"m"}"#) {
            Err(GatewayError::InvalidRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some("messages"))
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn model_override_splices_only_the_model() {
        let r = parse(
            r#"{"model":"a", "messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        )
        .expect("valid");
        assert_eq!(r.upstream_body("a", None), r.raw);
        assert_eq!(
            r.upstream_body("b\"c", None),
            Bytes::from_static(
                br#"{"model":"b\"c", "messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#
            )
        );
        // No model in the body (semantic proxies ignore it): inserted first.
        let r = parse(r#"{ "messages":[]}"#).expect("valid");
        assert_eq!(
            r.upstream_body("m", None),
            Bytes::from_static(br#"{"model":"m", "messages":[]}"#)
        );
        let r =
            FrontRequest::parse(Endpoint::Responses, Bytes::from_static(b"{ }")).expect("valid");
        assert_eq!(
            r.upstream_body("m", None),
            Bytes::from_static(br#"{"model":"m" }"#)
        );
        let r = parse(r#"{"model":null,"messages":[]}"#).expect("valid");
        assert_eq!(
            r.upstream_body("m", None),
            Bytes::from_static(br#"{"model":"m","messages":[]}"#)
        );
    }

    #[test]
    fn previous_response_id_is_read_and_spliced() {
        let r = FrontRequest::parse(
            Endpoint::Responses,
            Bytes::from_static(br#"{"previous_response_id":"v1","model":"a","input":"x"}"#),
        )
        .expect("valid");
        assert_eq!(r.previous_response_id.as_deref(), Some("v1"));
        assert_eq!(
            r.upstream_body("b", Some("u1")),
            Bytes::from_static(br#"{"previous_response_id":"u1","model":"b","input":"x"}"#)
        );
    }

    /// Everything a full parse would refuse is refused by the one parse, with a 400 saying
    /// where, never a 500 later: numbers out of range, deep nesting, invalid UTF-8 and lone
    /// surrogates, anywhere in the body.
    #[test]
    fn one_parse_applies_every_limit() {
        let deep = format!(
            r#"{{"model":"a","messages":[],"metadata":{}{}}}"#,
            "[".repeat(130),
            "]".repeat(130)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                br#"{"model":"a","messages":[],"metadata":{"x":1e400}}"#.to_vec(),
                "number out of range",
            ),
            (
                br#"{"model":"a","messages":[],"temperature":-1e400}"#.to_vec(),
                "number out of range",
            ),
            (deep.into_bytes(), "recursion limit exceeded"),
            (
                b"{\"model\":\"a\",\"messages\":[{\"content\":\"\xff\"}]}".to_vec(),
                "invalid unicode code point",
            ),
            (
                br#"{"model":"a","messages":[{"content":"\ud800"}]}"#.to_vec(),
                "hex escape",
            ),
            (
                br#"{"model":"\ud800","messages":[]}"#.to_vec(),
                "hex escape",
            ),
            (
                br#"{"model":"a","messages":[],"\udc00":1}"#.to_vec(),
                "hex escape",
            ),
        ];
        for (body, why) in cases {
            match parse_bytes(&body) {
                Err(GatewayError::InvalidRequest { message, code, .. }) => {
                    assert_eq!(code, Some("invalid_json"), "{message}");
                    assert!(message.contains(why), "{why}: {message}");
                    assert!(message.contains("line 1 column"), "{message}");
                }
                other => panic!("{why}: expected a 400, got {other:?}"),
            }
        }
        // 126 levels inside the body are fine (the object itself is one more).
        let ok = format!(
            r#"{{"model":"a","messages":[],"metadata":{}{}}}"#,
            "[".repeat(126),
            "]".repeat(126)
        );
        assert!(parse_bytes(ok.as_bytes()).is_ok());
    }

    #[test]
    fn repeated_fields_are_refused() {
        for body in [
            r#"{"model":"a","model":"b","messages":[]}"#,
            r#"{"model":"a","messages":[],"stream":true,"stream":false}"#,
        ] {
            assert!(message(parse(body).expect_err(body)).contains("duplicate field"));
        }
    }

    #[test]
    fn stream_must_be_a_boolean() {
        match parse(&format!(
            r#"{{"model":"a","messages":[],"stream":"{}"}}"#,
            "y".repeat(5000)
        )) {
            Err(GatewayError::InvalidRequest { param, message, .. }) => {
                assert_eq!(param.as_deref(), Some("stream"));
                assert!(message.len() < 200, "{message}");
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    /// Random mutations of a valid body never panic the parser, and whatever it accepts can
    /// be rewritten into valid JSON naming the new model (the property behind "parse once":
    /// no body that passes can fail later).
    #[test]
    fn mutated_bodies_never_panic_and_accepted_ones_rewrite_cleanly() {
        let seed = br#"{"model":"a","stream":false,"previous_response_id":"r_1","messages":[{"role":"user","content":"h\u00e9 \ud83d\ude00"}],"metadata":{"n":[1,-2.5e3,null,true]}}"#;
        let mut fuzz = crate::fuzz::Budget::new("front request parser", 20_000);
        let alphabet = b"{}[]\",:\\u0123456789eE+-.ntrufalsdx \xff\xc3\xa9";
        let mut accepted = 0;
        while fuzz.more() {
            let rng = &mut fuzz.rng;
            let mut body = seed.to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..body.len());
                match rng.u8(..3) {
                    0 => body[at] = alphabet[rng.usize(..alphabet.len())],
                    1 => body.insert(at, alphabet[rng.usize(..alphabet.len())]),
                    _ => {
                        body.remove(at);
                    }
                }
            }
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Responses] {
                let Ok(r) = FrontRequest::parse(endpoint, Bytes::from(body.clone())) else {
                    continue;
                };
                accepted += 1;
                let out = r.upstream_body("m\"2", Some("r_2"));
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                    panic!(
                        "{e}: {} -> {}",
                        String::from_utf8_lossy(&body),
                        String::from_utf8_lossy(&out)
                    )
                });
                assert_eq!(v["model"], "m\"2");
                if r.previous_response_id.is_some() {
                    assert_eq!(v["previous_response_id"], "r_2");
                }
            }
        }
        assert!(
            accepted > fuzz.rounds_done() / 20,
            "the mutations should leave many bodies valid: {accepted}"
        );
    }
}
