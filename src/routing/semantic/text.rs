//! The text a semantic decision compares: read from the raw request body.
//!
//! By default the last user message (Chat Completions `messages`, Responses `input`), text parts
//! only; with `routing_text = "conversation"` every message's text in order, one per line.
//! Images, audio, files and tool items carry no routing text and are skipped. The body was
//! already checked to be a JSON object by the front API; shapes this reader does not know give
//! an empty text, which routes to the fallback rather than failing the request here.

use crate::api::Endpoint;
use crate::config::RoutingText;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::borrow::Cow;

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    messages: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct ResponsesBody<'a> {
    #[serde(borrow, default)]
    input: Option<Input<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Items(#[serde(borrow)] Vec<Item<'a>>),
}

/// A chat message or a Responses input item; items without a role (tool calls, their outputs)
/// are not messages.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

impl Item<'_> {
    fn text(&self) -> String {
        match &self.content {
            Some(Content::Text(t)) => t.to_string(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter(|p| {
                    matches!(
                        p.kind.as_deref(),
                        Some("text" | "input_text" | "output_text")
                    )
                })
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
            Some(Content::Other(_)) | None => String::new(),
        }
    }
}

fn pick(items: &[Item<'_>], mode: RoutingText) -> String {
    match mode {
        RoutingText::LastUser => items
            .iter()
            .rev()
            .find(|m| m.role.as_deref() == Some("user"))
            .map(Item::text)
            .unwrap_or_default(),
        RoutingText::Conversation => items
            .iter()
            .filter(|m| m.role.is_some())
            .map(Item::text)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The routing text of a request body (empty when it has none).
pub fn routing_text(endpoint: Endpoint, raw: &[u8], mode: RoutingText) -> String {
    let text = match endpoint {
        Endpoint::ChatCompletions => serde_json::from_slice::<ChatBody<'_>>(raw)
            .map(|b| pick(&b.messages, mode))
            .unwrap_or_default(),
        Endpoint::Responses => match serde_json::from_slice::<ResponsesBody<'_>>(raw) {
            Ok(ResponsesBody {
                input: Some(Input::Text(t)),
            }) => t.into_owned(),
            Ok(ResponsesBody {
                input: Some(Input::Items(items)),
            }) => pick(&items, mode),
            _ => String::new(),
        },
    };
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str, mode: RoutingText) -> String {
        routing_text(Endpoint::ChatCompletions, body.as_bytes(), mode)
    }

    #[test]
    fn chat_takes_the_last_user_message_text_parts_only() {
        let body = r#"{"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":"first question"},
            {"role":"assistant","content":"an answer"},
            {"role":"user","content":[{"type":"text","text":"what is"},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"my balance"}]},
            {"role":"tool","tool_call_id":"c","content":"tool result"}]}"#;
        assert_eq!(chat(body, RoutingText::LastUser), "what is\nmy balance");
        assert_eq!(
            chat(body, RoutingText::Conversation),
            "be brief\nfirst question\nan answer\nwhat is\nmy balance\ntool result"
        );
    }

    #[test]
    fn responses_input_as_text_or_items() {
        let r = |b: &str, m| routing_text(Endpoint::Responses, b.as_bytes(), m);
        assert_eq!(
            r(
                r#"{"model":"m","input":"  tell me a joke "}"#,
                RoutingText::LastUser
            ),
            "tell me a joke"
        );
        let body = r#"{"model":"m","input":[
            {"role":"user","content":"book a flight"},
            {"type":"function_call_output","call_id":"c","output":"{}"},
            {"type":"message","role":"user","content":[{"type":"input_text","text":"to Lisbon"},{"type":"input_image","image_url":"x"}]}]}"#;
        assert_eq!(r(body, RoutingText::LastUser), "to Lisbon");
        assert_eq!(
            r(body, RoutingText::Conversation),
            "book a flight\nto Lisbon"
        );
    }

    #[test]
    fn bodies_without_user_text_give_an_empty_text() {
        assert_eq!(
            chat(
                r#"{"messages":[{"role":"system","content":"x"}]}"#,
                RoutingText::LastUser
            ),
            ""
        );
        assert_eq!(chat(r#"{"messages":"nope"}"#, RoutingText::LastUser), "");
        assert_eq!(
            chat(
                r#"{"messages":[{"role":"user","content":null}]}"#,
                RoutingText::LastUser
            ),
            ""
        );
    }
}
