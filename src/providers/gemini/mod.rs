//! Google Gemini (the Generative Language API's native `generateContent`): a translated
//! provider.
//!
//! Gemini's wire is not the front API, so a request goes through the canonical conversation
//! model both ways: `request.rs` writes the `GenerateContentRequest` from a `Conversation`,
//! `reply.rs` reads a `GenerateContentResponse` into a `Reply`, and `stream.rs` decodes
//! `streamGenerateContent?alt=sse` into stream events. This file owns the rest of Gemini's
//! wire: the URL (`{base_url}/{api_version}/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse`), auth (`x-goog-api-key`, added per attempt), and what
//! Google's error answers mean (`providers.md` §2.5, §7): a key problem (400 `API_KEY_INVALID`,
//! not a 401) is the gateway's credentials, a 429's `google.rpc.RetryInfo.retryDelay` is the
//! retry hint and becomes the client's `Retry-After`, and every Google error body
//! `{"error":{code,message,status,details}}` is reshaped into the OpenAI error the front
//! promises before `error.rs` renders it. Nothing of Gemini's wire types leaves this folder.

mod reply;
mod request;
mod stream;

use super::{
    Adapter, ErrorAnswer, Framing, StreamDecoder, Translator, UpstreamCall, UpstreamRequest,
};
use crate::api::canonical::{Conversation, Reply};
use crate::config::{Provider, ProviderSettings};
use crate::error::GatewayError;
use crate::routing::Decision;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Duration;

/// The Gemini adapter and translator.
pub struct Gemini;

/// `ErrorInfo.reason`s that say the gateway's key (or its project) is the problem: the
/// operator's to fix, never the client's.
const KEY_REASONS: [&str; 9] = [
    "API_KEY_INVALID",
    "API_KEY_EXPIRED",
    "CONSUMER_INVALID",
    "SERVICE_DISABLED",
    "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
    "API_KEY_ANDROID_APP_BLOCKED",
    "API_KEY_IOS_APP_BLOCKED",
];

impl Adapter for Gemini {
    fn attempt(
        &self,
        provider: &Provider,
        call: &UpstreamCall,
    ) -> Result<UpstreamRequest, GatewayError> {
        let auth = provider.prebuilt.auth(|| {
            let key = super::secret_header(provider, super::api_key(provider)?)?;
            Ok((HeaderName::from_static("x-goog-api-key"), key))
        })?;
        Ok(call.request(provider, auth))
    }

    /// Google documents no request-id header for this API, and recorded answers carry none
    /// (the answer's id is `responseId`, in the body, which becomes the reply's id). Clients
    /// that look for one on Google APIs read `x-goog-request-id`, so that is the name tapped.
    fn request_id_header(&self) -> &'static str {
        "x-goog-request-id"
    }

    fn classify(&self, provider: &Provider, answer: ErrorAnswer<'_>) -> GatewayError {
        let (status, headers, body) = answer.parts();
        let parsed = serde_json::from_slice::<GoogleErrorBody<'_>>(&body).ok();
        let error = parsed.as_ref().map(|b| &b.error);
        let key_problem = error.is_some_and(|e| {
            e.details.iter().any(|d| {
                d.reason
                    .as_deref()
                    .is_some_and(|r| KEY_REASONS.contains(&r))
            })
        });
        if status == StatusCode::UNAUTHORIZED || key_problem {
            // Google quotes nothing of the key, but a 400 "API key not valid" would still tell
            // the client its own key is wrong.
            return GatewayError::UpstreamCredentials {
                provider: provider.name.clone(),
            };
        }
        let retry_in = error
            .and_then(|e| e.details.iter().find_map(|d| d.retry_delay.as_deref()))
            .and_then(parse_duration)
            .or_else(|| super::retry_after(headers));
        // Only Google's own error (with its `status` name) is reshaped; anything else (a proxy's
        // page, an OpenAI-shaped body from a compatible server) is left for `error.rs`.
        let shaped = error
            .filter(|e| e.status.is_some())
            .map(|e| openai_shaped(status, e));
        let mut failure = super::upstream_failure(
            provider,
            status,
            headers,
            shaped.map_or(body, Bytes::from),
            retry_in,
        );
        if let (GatewayError::Upstream(u), Some(wait)) = (&mut failure, retry_in) {
            // Google sends its hint only in the body; the client gets it as the headers the
            // OpenAI SDKs honour (whole seconds rounded up, and milliseconds).
            if u.retry_after.is_none() {
                u.retry_after = HeaderValue::from_str(&wait.as_secs_f64().ceil().to_string()).ok();
            }
            if u.retry_after_ms.is_none() {
                u.retry_after_ms = HeaderValue::from_str(&wait.as_millis().to_string()).ok();
            }
        }
        failure
    }

    fn framing(&self) -> Framing {
        Framing::Sse
    }

    fn first_event_error(&self, first: &[u8]) -> Option<String> {
        // Gemini's mid-stream error is `data: {"error":{…,"message":…}}`, as OpenAI's is.
        super::openai::error_in_first_event(first)
    }

    fn translator(&self) -> Option<&dyn Translator> {
        Some(self)
    }
}

impl Translator for Gemini {
    fn prepare(
        &self,
        conversation: &Conversation,
        decision: &Decision,
    ) -> Result<UpstreamCall, GatewayError> {
        let ProviderSettings::Gemini { api_version } = &decision.provider.settings else {
            return Err(GatewayError::Internal(format!(
                "provider {} is not a Gemini provider",
                decision.provider.name
            )));
        };
        let model = upstream_model(decision.route().upstream_model());
        let body = request::encode(conversation, model)?;
        Ok(UpstreamCall {
            adapter: &Gemini,
            method: Method::POST,
            path: path(api_version, model, conversation.stream).into(),
            headers: Vec::new(),
            body: Bytes::from(body),
            stream: conversation.stream,
        })
    }

    fn decode_reply(&self, body: &[u8]) -> Result<Reply, String> {
        reply::decode(body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(stream::Decoder::default())
    }
}

/// The model id as the path takes it: Google's resource name `models/…` is accepted too.
fn upstream_model(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

/// The method's path under the base URL.
fn path(api_version: &str, model: &str, stream: bool) -> String {
    let (api_version, model) = (super::path_segment(api_version), super::path_segment(model));
    if stream {
        format!("/{api_version}/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/{api_version}/models/{model}:generateContent")
    }
}

/// A `google.protobuf.Duration` in JSON (`"33s"`, `"0.5s"`, `"1.000340012s"`).
fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (0.0..1e9)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

/// Google's error body: `{"error":{"code","message","status","details":[…]}}`.
#[derive(Deserialize)]
struct GoogleErrorBody<'a> {
    #[serde(borrow)]
    error: GoogleError<'a>,
}

#[derive(Deserialize)]
struct GoogleError<'a> {
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    details: Vec<Detail<'a>>,
}

/// One of `details`: an `ErrorInfo` (with `reason`), a `RetryInfo` (with `retryDelay`)…
#[derive(Deserialize)]
struct Detail<'a> {
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "retryDelay")]
    retry_delay: Option<Cow<'a, str>>,
}

/// The OpenAI error document the front promises.
#[derive(Serialize)]
struct OpenAiErrorBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'a str,
}

/// A Google error as the OpenAI error of `providers.md` §7: the status kept (by the caller),
/// `type` from the status, `code` Google's status name (`INVALID_ARGUMENT`…) except where
/// OpenAI has its own (`model_not_found`, `rate_limit_exceeded`). The message is Google's;
/// `error.rs` still redacts account identifiers in it on the way out.
fn openai_shaped(status: StatusCode, error: &GoogleError<'_>) -> Vec<u8> {
    let google_status = error.status.as_deref().unwrap_or("UNKNOWN");
    let (kind, code) = match status.as_u16() {
        403 => ("permission_error", google_status),
        404 => ("invalid_request_error", "model_not_found"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        s if s >= 500 => ("server_error", google_status),
        _ => ("invalid_request_error", google_status),
    };
    let message = redact_projects(
        error
            .message
            .as_deref()
            .unwrap_or("The upstream provider returned an error without a message."),
    );
    let body = OpenAiErrorBody {
        error: OpenAiError {
            message: &message,
            kind,
            param: None,
            code,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Google's messages name the operator's Cloud project by number (`project 1234…`,
/// `projects/1234…`, `project_number:1234…`); a tenant must not see it.
fn redact_projects(message: &str) -> Cow<'_, str> {
    const MARKERS: [&str; 3] = ["project_number:", "projects/", "project "];
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    while at < message.len() {
        let rest = &message[at..];
        if let Some(marker) = MARKERS.iter().find(|m| rest.starts_with(**m)) {
            let digits = rest[marker.len()..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits > 0 {
                out.push_str(&message[copied..at + marker.len()]);
                out.push_str("[redacted]");
                at += marker.len() + digits;
                copied = at;
                continue;
            }
        }
        at += rest.chars().next().map_or(1, char::len_utf8);
    }
    if copied == 0 {
        return Cow::Borrowed(message);
    }
    out.push_str(&message[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests;
