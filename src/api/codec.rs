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
