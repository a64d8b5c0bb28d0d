//! What the two front codecs (`chat`, `responses`) share: body decoding with errors that name
//! the parameter, content that is a string or a list of parts, `stop` and `tool_choice`
//! forms, tool-result pairing, SSE writing, and the [`FrontEncoder`] trait the translated
//! relay drives.

use super::canonical::{
    Image, ImageSource, Message, Part, Role, StreamEvent, ToolChoice, ToolResult,
};
use crate::error::{GatewayError, quote};
use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Encodes a streamed answer in one front endpoint's wire, event by event.
pub trait FrontEncoder: Send {
    /// Appends what `event` amounts to on the wire (possibly nothing yet).
    fn push(&mut self, event: &StreamEvent, out: &mut BytesMut);
    /// The answer ended properly: appends the closing events.
    fn finish(&mut self, out: &mut BytesMut);
    /// The answer broke off after the headers: appends the error event that ends the stream.
    fn fail(&mut self, code: &str, message: &str, out: &mut BytesMut);
}

/// Decodes a front body into `T`, with a 400 that names the parameter at fault.
pub fn from_body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        let inner = inner.split(" at line ").next().unwrap_or(&inner);
        let (message, param) = if path == "." {
            (format!("Invalid request body: {}.", quote(inner)), None)
        } else {
            (
                format!("Invalid value for '{}': {}.", quote(&path), quote(inner)),
                Some(path),
            )
        };
        GatewayError::invalid(message, param.as_deref(), Some("invalid_value"))
    })
}

/// A 400 for a parameter the route's provider cannot honour.
pub fn unsupported(param: &str, what: &str) -> GatewayError {
    GatewayError::invalid(
        format!("'{param}' is not supported on this route: its provider gives {what}."),
        Some(param),
        Some("unsupported_parameter"),
    )
}

/// The JSON schema of a function that takes no declared arguments.
pub fn empty_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Message content: a string, or a list of parts (chat's and responses' part types both).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum TextOrParts {
    Text(String),
    Parts(Vec<WirePart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WirePart {
    Text {
        text: String,
    },
    InputText {
        text: String,
    },
    OutputText {
        text: String,
    },
    Refusal {
        refusal: String,
    },
    ImageUrl {
        image_url: ImageUrl,
    },
    InputImage {
        #[serde(default)]
        image_url: Option<String>,
        #[serde(default)]
        detail: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub struct ImageUrl {
    url: String,
    #[serde(default)]
    detail: Option<String>,
}

impl TextOrParts {
    /// The content as canonical parts (text and images).
    pub fn into_parts(self, param: &str) -> Result<Vec<Part>, GatewayError> {
        let parts = match self {
            TextOrParts::Text(text) => return Ok(vec![Part::text(text)]),
            TextOrParts::Parts(parts) => parts,
        };
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                WirePart::Text { text }
                | WirePart::InputText { text }
                | WirePart::OutputText { text }
                | WirePart::Refusal { refusal: text } => Ok(Part::text(text)),
                WirePart::ImageUrl {
                    image_url: ImageUrl { url, detail },
                } => Ok(Part::Image(Image {
                    source: ImageSource::from_url(&url),
                    detail,
                })),
                WirePart::InputImage {
                    image_url: Some(url),
                    detail,
                } => Ok(Part::Image(Image {
                    source: ImageSource::from_url(&url),
                    detail,
                })),
                WirePart::InputImage {
                    image_url: None, ..
                }
                | WirePart::Other => Err(GatewayError::invalid(
                    "This content part is not supported on this route: its provider takes text and images (by URL or data URL) only.",
                    Some(&format!("{param}[{i}]")),
                    Some("unsupported_value"),
                )),
            })
            .collect()
    }

    /// The content as text (system prompts, tool results, assistant turns).
    pub fn into_text(self, param: &str) -> Result<String, GatewayError> {
        let mut text = String::new();
        for part in self.into_parts(param)? {
            match part {
                Part::Text { text: t } => text.push_str(&t),
                _ => {
                    return Err(GatewayError::invalid(
                        "Only text is allowed in this message's content.",
                        Some(param),
                        Some("invalid_value"),
                    ));
                }
            }
        }
        Ok(text)
    }
}

/// The name of the function that the call `call_id` (made earlier in `messages`) named.
pub fn called_name(messages: &[Message], call_id: &str) -> Option<String> {
    messages.iter().rev().find_map(|m| {
        m.parts.iter().find_map(|p| match p {
            Part::ToolCall(c) if c.id == call_id => Some(c.name.clone()),
            _ => None,
        })
    })
}

/// Appends a tool result: to the user turn of tool results just before it, or as a new one.
pub fn push_tool_result(messages: &mut Vec<Message>, result: ToolResult) {
    if let Some(last) = messages.last_mut()
        && last.role == Role::User
        && matches!(last.parts.last(), Some(Part::ToolResult(_)))
    {
        last.parts.push(Part::ToolResult(result));
        return;
    }
    messages.push(Message {
        role: Role::User,
        parts: vec![Part::ToolResult(result)],
    });
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or an object naming one function (where
/// the name sits differs between chat and responses: `named` finds it).
pub fn tool_choice(
    value: &Value,
    named: impl Fn(&Value) -> Option<&str>,
) -> Result<ToolChoice, GatewayError> {
    let choice = match value {
        Value::String(s) if s == "none" => Some(ToolChoice::None),
        Value::String(s) if s == "auto" => Some(ToolChoice::Auto),
        Value::String(s) if s == "required" => Some(ToolChoice::Required),
        Value::Object(_) if value.get("type").and_then(Value::as_str) == Some("function") => {
            named(value).map(|n| ToolChoice::Function(n.to_owned()))
        }
        _ => None,
    };
    choice.ok_or_else(|| {
        GatewayError::invalid(
            "Invalid 'tool_choice': use \"none\", \"auto\", \"required\" or a function by name.",
            Some("tool_choice"),
            Some("invalid_value"),
        )
    })
}

/// Appends one `data:` event.
pub fn sse_data(out: &mut BytesMut, data: &Value) {
    out.put_slice(b"data: ");
    let _ = serde_json::to_writer((&mut *out).writer(), data);
    out.put_slice(b"\n\n");
}

/// Appends one named event (`event:` then `data:`).
pub fn sse_event(out: &mut BytesMut, name: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\n");
    sse_data(out, data);
}

#[cfg(test)]
mod tests {
    use crate::api::canonical::{FinishReason, Part, Reply, ToolCall, Usage, events_of};
    use crate::api::{chat, responses};
    use bytes::BytesMut;

    /// Mutated chat and Responses bodies: decoding never panics, and whatever decodes encodes
    /// a reply (whole and streamed) into JSON that parses.
    #[test]
    fn mutated_bodies_never_panic_in_either_codec() {
        let seeds: [&[u8]; 2] = [
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"stop":["x"],"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"h\u00e9"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{}}}}"#,
            br#"{"model":"m","instructions":"i","input":[{"role":"user","content":[{"type":"input_text","text":"q"}]},{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":"o"}],"tools":[{"type":"function","name":"f","parameters":{}}],"text":{"format":{"type":"json_object"}},"max_output_tokens":16,"store":false}"#,
        ];
        let reply = Reply {
            parts: vec![
                Part::text("a\u{e9}"),
                Part::ToolCall(ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                    signature: Some("s".into()),
                }),
            ],
            finish: FinishReason::ToolCalls,
            usage: Some(Usage::default()),
            ..Reply::default()
        };
        let mut fuzz = crate::fuzz::Budget::new("front codecs", 5_000);
        let alphabet: &[u8] = b"{}[]\",:0123456789ntrufalse \\";
        let (mut chats, mut responses_ok) = (0, 0);
        while fuzz.more() {
            let rng = &mut fuzz.rng;
            let which = rng.usize(..2);
            let mut body = seeds[which].to_vec();
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
            let mut out = BytesMut::new();
            if which == 0 {
                if let Ok((_, options)) = chat::decode(&body) {
                    chats += 1;
                    let stamp = chat::Stamp::new("m");
                    let whole: serde_json::Value =
                        serde_json::from_slice(&chat::encode(&reply, &stamp)).expect("json");
                    assert_eq!(whole["object"], "chat.completion");
                    let mut enc = chat::ChatStream::new(stamp, options);
                    for e in events_of(&reply) {
                        super::FrontEncoder::push(&mut enc, &e, &mut out);
                    }
                    super::FrontEncoder::finish(&mut enc, &mut out);
                }
            } else if let Ok((_, options)) = responses::decode(&body, None, &[]) {
                responses_ok += 1;
                assert_eq!(
                    responses::encode(&reply, &options, "m")["object"],
                    "response"
                );
                let mut enc = responses::ResponsesStream::new(options, "m");
                for e in events_of(&reply) {
                    super::FrontEncoder::push(&mut enc, &e, &mut out);
                }
                super::FrontEncoder::finish(&mut enc, &mut out);
            }
            for line in out[..].split(|b| *b == b'\n') {
                if let Some(data) = line
                    .strip_prefix(b"data: ".as_slice())
                    .filter(|d| d.starts_with(b"{"))
                {
                    serde_json::from_slice::<serde_json::Value>(data).expect("event json");
                }
            }
        }
        eprintln!("{} rounds", fuzz.rounds_done());
        assert!(
            chats > 0 && responses_ok > 0,
            "some mutants must decode: {chats} {responses_ok}"
        );
    }
}
