//! The gateway's one error type and its one mapping to HTTP.
//!
//! Every error a client can see is a [`GatewayError`]. Each variant knows where it came from
//! ([`ErrorSource`]), whether retrying could help, and how it renders: an OpenAI-shaped body
//! `{"error":{"message","type","param","code"}}` with the right status. Upstream error bodies
//! that are already OpenAI-shaped pass through byte for byte, status included. Internal details
//! go to the log, never to the client.

use crate::config::Trigger;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use bytes::Bytes;
use serde_json::json;
use std::borrow::Cow;

/// Who caused an error: decides the log level and, later, the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong.
    Client,
    /// The provider failed or refused.
    Upstream,
    /// The gateway itself.
    Internal,
}

/// Any failure that ends a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 400: a malformed body or field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// 401: no bearer token.
    #[error("missing API key")]
    MissingApiKey,
    /// 401: a token that is not a key of this tenant (also for unknown tenants, so that a
    /// tenant's existence does not leak).
    #[error("invalid API key")]
    InvalidApiKey,
    /// 404: an unknown proxy or path for an authenticated tenant.
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    /// 403: the prompt matches a deny-list topic of a semantic proxy (design §1.3).
    #[error("denied by topic {topic} (score {score:.3})")]
    Denied { topic: String, score: f32 },
    /// 405: a known path called with the wrong method.
    #[error("{message}")]
    MethodNotAllowed { message: String },
    /// 408: the request body stopped arriving.
    #[error("the request body stalled for {secs} s")]
    BodyTimeout { secs: u64 },
    /// 413: the request body is over the limit.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: a `Content-Encoding` the gateway does not decode.
    #[error("unsupported content encoding {encoding}")]
    UnsupportedEncoding { encoding: String },
    /// 429: this client address holds too many connections already.
    #[error("too many connections from one client address (limit {limit})")]
    TooManyConnections { limit: usize },
    /// 429: a tenant's or API key's rate limit (`governance::limits`).
    #[error("{} rate limit of the {} exceeded", .0.kind.as_str(), .0.scope.as_str())]
    RateLimited(Box<RateLimitExceeded>),
    /// 429: a budget is spent (`governance`).
    #[error("{message}")]
    BudgetExhausted { message: String },
    /// 501: a configured feature this build does not serve yet.
    #[error("{message}")]
    NotImplemented { message: String },
    /// The provider answered with an error status; kept as the provider sent it.
    #[error("upstream {} returned HTTP {}", .0.provider, .0.status)]
    Upstream(Box<UpstreamFailure>),
    /// 502: the provider refused the gateway's credentials (an operator's problem, not the
    /// client's; the provider's message is not passed on because it quotes part of the key).
    #[error("upstream {provider} rejected the gateway's credentials")]
    UpstreamCredentials { provider: String },
    /// 502: the provider could not be reached, or broke the connection before answering. The
    /// detail (OS error text, addresses) goes to the log only.
    #[error("upstream {provider} unavailable: {detail}")]
    UpstreamUnavailable { provider: String, detail: String },
    /// 502: the provider answered with a success status, then its body broke or overflowed.
    /// Never retried: the provider has generated (and billed) the answer already.
    #[error("upstream {provider} sent an incomplete answer: {detail}")]
    UpstreamIncomplete { provider: String, detail: String },
    /// 502: the provider answered 200, then an error event before any content. The event's
    /// message is passed on sanitised.
    #[error("upstream {provider} failed its stream before any content: {message}")]
    UpstreamStreamError { provider: String, message: String },
    /// 503: the provider endpoint's circuit breaker is open.
    #[error("upstream {provider} circuit open")]
    CircuitOpen {
        provider: String,
        retry_in: std::time::Duration,
    },
    /// 504: the provider did not answer in time.
    #[error("upstream {provider} timed out")]
    UpstreamTimeout { provider: String },
    /// 503: the gateway cannot take the request now (a proxy restarting, shutting down).
    #[error("{message}")]
    Unavailable { message: String },
    /// 499: the client went away before the answer; nobody reads this response.
    #[error("the client closed the request")]
    ClientClosed,
    /// 500: a bug or an unexpected state; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::api::response_store::StoreError> for GatewayError {
    /// The response store is down: a retryable 503 (the detail goes to the log only).
    fn from(err: crate::api::response_store::StoreError) -> Self {
        tracing::warn!(%err, "response store unavailable");
        Self::Unavailable {
            message: "The response store is unavailable; retry the request.".into(),
        }
    }
}

/// An upstream's error answer, as received (boxed: it is the largest variant by far).
#[derive(Debug)]
pub struct UpstreamFailure {
    pub provider: String,
    pub status: StatusCode,
    pub body: Bytes,
    /// The front's retry headers, relayed to the client when the upstream sent them.
    pub retry_after: Option<HeaderValue>,
    pub retry_after_ms: Option<HeaderValue>,
    /// How long the provider asked to wait before a retry, read by its adapter (OpenAI's
    /// `retry-after-ms`, Gemini's `RetryInfo`…).
    pub retry_in: Option<std::time::Duration>,
}

impl GatewayError {
    /// A 400 naming the offending parameter.
    pub fn invalid(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    /// Where the error came from.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::InvalidRequest { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::NotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::Denied { .. }
            | Self::BodyTimeout { .. }
            | Self::PayloadTooLarge { .. }
            | Self::UnsupportedEncoding { .. }
            | Self::TooManyConnections { .. }
            | Self::RateLimited(_)
            | Self::BudgetExhausted { .. }
            | Self::ClientClosed => ErrorSource::Client,
            Self::Upstream(_)
            | Self::UpstreamCredentials { .. }
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamIncomplete { .. }
            | Self::UpstreamStreamError { .. }
            | Self::CircuitOpen { .. }
            | Self::UpstreamTimeout { .. } => ErrorSource::Upstream,
            Self::NotImplemented { .. } | Self::Unavailable { .. } | Self::Internal(_) => {
                ErrorSource::Internal
            }
        }
    }

    /// Whether the same request could succeed if sent again.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Upstream(u) => {
                u.status == StatusCode::TOO_MANY_REQUESTS || u.status.is_server_error()
            }
            Self::UpstreamUnavailable { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamStreamError { .. }
            | Self::Unavailable { .. } => true,
            _ => false,
        }
    }

    /// The fallback trigger this failure is, if any. A broken answer after a success status
    /// is none: the provider produced (and billed) it, so no other route is asked either.
    pub fn trigger(&self) -> Option<Trigger> {
        match self {
            Self::UpstreamUnavailable { .. } => Some(Trigger::Connect),
            Self::UpstreamTimeout { .. } => Some(Trigger::Timeout),
            Self::Upstream(u) if u.status == StatusCode::TOO_MANY_REQUESTS => {
                Some(Trigger::RateLimited)
            }
            Self::Upstream(u) if u.status.is_server_error() => Some(Trigger::ServerError),
            Self::CircuitOpen { .. } => Some(Trigger::CircuitOpen),
            Self::UpstreamStreamError { .. } => Some(Trigger::StreamError),
            _ => None,
        }
    }

    /// Whether this failure says the endpoint is unhealthy (for its circuit breaker).
    pub fn endpoint_failure(&self) -> bool {
        match self {
            Self::Upstream(u) => u.status.is_server_error(),
            Self::UpstreamUnavailable { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamIncomplete { .. }
            | Self::UpstreamStreamError { .. } => true,
            _ => false,
        }
    }

    /// The OpenAI error object `{message, type, param, code}` for this error.
    pub fn openai_error(&self) -> serde_json::Value {
        let (message, kind, param, code): (String, &str, Option<&str>, Option<&str>) = match self {
            Self::InvalidRequest { message, param, code } => {
                (message.clone(), "invalid_request_error", param.as_deref(), *code)
            }
            Self::MissingApiKey => (
                "You didn't provide an API key. Send your Switchyard key in the Authorization header as a Bearer token (Authorization: Bearer YOUR_KEY).".into(),
                "invalid_request_error",
                None,
                Some("missing_api_key"),
            ),
            Self::InvalidApiKey => (
                "Incorrect API key provided.".into(),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            Self::NotFound { message, code } => (message.clone(), "invalid_request_error", None, Some(*code)),
            Self::MethodNotAllowed { message } => {
                (message.clone(), "invalid_request_error", None, Some("method_not_allowed"))
            }
            Self::BodyTimeout { secs } => (
                format!("The request body stopped arriving: nothing was received for {secs} s."),
                "invalid_request_error",
                None,
                Some("request_timeout"),
            ),
            Self::Denied { topic, score } => (
                format!("This proxy does not serve prompts about '{topic}' (deny-list topic, score {score:.3})."),
                "invalid_request_error",
                None,
                Some("denied_topic"),
            ),
            Self::PayloadTooLarge { limit } => (
                format!("The request body is larger than the limit of {limit} bytes."),
                "invalid_request_error",
                None,
                Some("request_too_large"),
            ),
            Self::UnsupportedEncoding { encoding } => (
                format!(
                    "The Content-Encoding '{}' is not supported; send the body uncompressed (identity).",
                    quote(encoding)
                ),
                "invalid_request_error",
                None,
                Some("unsupported_content_encoding"),
            ),
            Self::TooManyConnections { limit } => (
                format!("Too many open connections from your address (limit {limit}); reuse connections or close idle ones."),
                "rate_limit_error",
                None,
                Some("too_many_connections"),
            ),
            Self::RateLimited(r) => (
                format!(
                    "Rate limit reached: this {} may send {} {} per minute. Retry in {} s.",
                    r.scope.as_str(),
                    r.limit,
                    r.kind.as_str(),
                    r.retry_after_secs()
                ),
                "rate_limit_error",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::BudgetExhausted { message } => (
                message.clone(),
                "insufficient_quota",
                None,
                Some("budget_exhausted"),
            ),
            Self::NotImplemented { message } => (message.clone(), "server_error", None, Some("not_implemented")),
            Self::Upstream(u) => {
                let UpstreamFailure { provider, status, body, .. } = &**u;
                // Only reached when the body was not OpenAI-shaped (see `error_response`).
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
                let text = sanitize_upstream_message(&text);
                return json!({
                    "message": format!("The upstream provider {provider} returned HTTP {}: {text}", status.as_u16()),
                    "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
                    "param": null,
                    "code": format!("upstream_http_{}", status.as_u16()),
                });
            }
            Self::UpstreamCredentials { provider } => (
                format!("The upstream provider {provider} rejected the gateway's credentials for this route; the gateway operator must check them."),
                "server_error",
                None,
                Some("upstream_credentials_rejected"),
            ),
            Self::UpstreamUnavailable { provider, .. } => (
                format!("The upstream provider {provider} could not be reached or closed the connection before answering."),
                "server_error",
                None,
                Some("upstream_unavailable"),
            ),
            Self::UpstreamIncomplete { provider, .. } => (
                format!("The upstream provider {provider} answered, but its response broke off or was too large; it was not retried because the provider had already produced it."),
                "server_error",
                None,
                Some("upstream_incomplete"),
            ),
            Self::UpstreamStreamError { provider, message } => (
                format!(
                    "The upstream provider {provider} failed before sending any content: {}",
                    sanitize_upstream_message(message)
                ),
                "server_error",
                None,
                Some("upstream_stream_error"),
            ),
            Self::CircuitOpen { provider, .. } => (
                format!("The upstream provider {provider} is failing and is not being called for a while (circuit open); retry later."),
                "server_error",
                None,
                Some("upstream_circuit_open"),
            ),
            Self::UpstreamTimeout { provider } => (
                format!("The upstream provider {provider} did not answer in time."),
                "server_error",
                None,
                Some("upstream_timeout"),
            ),
            Self::Unavailable { message } => (message.clone(), "server_error", None, Some("unavailable")),
            Self::ClientClosed => (
                "The client closed the request.".into(),
                "invalid_request_error",
                None,
                Some("client_closed_request"),
            ),
            Self::Internal(_) => (
                "The gateway hit an internal error; the request id identifies it in the logs.".into(),
                "server_error",
                None,
                Some("internal_error"),
            ),
        };
        let message = clip(&message, MESSAGE_MAX_CHARS);
        let param = param.map(quote);
        json!({ "message": message, "type": kind, "param": param, "code": code })
    }
}

/// Longest piece of client input an error message quotes.
const QUOTE_MAX_CHARS: usize = 100;
/// Longest message an error body carries, whatever it quotes.
const MESSAGE_MAX_CHARS: usize = 2048;

/// Client input as an error message quotes it: clipped, so a megabyte `model` or path is not
/// echoed back a megabyte long.
pub fn quote(s: &str) -> Cow<'_, str> {
    clip(s, QUOTE_MAX_CHARS)
}

fn clip(s: &str, max_chars: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max_chars) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}…", &s[..end])),
    }
}

/// Identifier prefixes of an upstream account that its error messages may quote (OpenAI's
/// rate-limit messages name the organization and project), and that a tenant must not see.
const ACCOUNT_ID_PREFIXES: [&str; 5] = ["org-", "proj_", "sk-", "user-", "acct_"];

/// An upstream error message with the operator's account identifiers replaced by `[redacted]`.
pub fn sanitize_upstream_message(text: &str) -> Cow<'_, str> {
    let is_id = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let starts_word = text[..at].chars().next_back().is_none_or(|c| !is_id(c));
        let prefix = ACCOUNT_ID_PREFIXES.iter().find(|p| rest.starts_with(**p));
        if let (true, Some(prefix)) = (starts_word, prefix) {
            let len = prefix.len()
                + rest[prefix.len()..]
                    .find(|c| !is_id(c))
                    .unwrap_or(rest.len() - prefix.len());
            if len >= prefix.len() + 3 {
                out.push_str(&text[copied..at]);
                out.push_str("[redacted]");
                at += len;
                copied = at;
                continue;
            }
        }
        at += rest.chars().next().map_or(1, char::len_utf8);
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// An upstream body that is already an OpenAI error document, made fit to pass on: unchanged
/// unless its message quotes account identifiers. `None` when the body is not OpenAI-shaped.
fn passable_openai_error_body(body: &Bytes) -> Option<Bytes> {
    let mut doc = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let message = doc["error"]["message"].as_str()?;
    let Cow::Owned(clean) = sanitize_upstream_message(message) else {
        return Some(body.clone());
    };
    doc["error"]["message"] = clean.into();
    Some(Bytes::from(doc.to_string()))
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::MissingApiKey | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RateLimited(_) | Self::BudgetExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            Self::Upstream(u) => u.status,
            Self::UpstreamCredentials { .. }
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamIncomplete { .. }
            | Self::UpstreamStreamError { .. } => StatusCode::BAD_GATEWAY,
            Self::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // nginx's code for it; never reaches a client.
            Self::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self.source_kind() {
            ErrorSource::Client => tracing::debug!(error = %self, "request refused"),
            ErrorSource::Upstream => match self {
                // The provider's own words go to the log whole; the client gets them sanitised.
                Self::Upstream(u) => tracing::warn!(
                    error = %self,
                    upstream_body = %String::from_utf8_lossy(&u.body[..u.body.len().min(2048)]),
                    "upstream failure"
                ),
                _ => tracing::warn!(error = %self, "upstream failure"),
            },
            ErrorSource::Internal => tracing::error!(error = %self, "gateway failure"),
        }
        let mut res = HttpResponse::build(self.status_code());
        // For the request metrics: who caused this error (telemetry::access reads it).
        res.extensions_mut().insert(self.source_kind());
        res.insert_header((header::CONTENT_TYPE, "application/json"));
        if let Self::Upstream(u) = self {
            let UpstreamFailure {
                body,
                retry_after,
                retry_after_ms,
                ..
            } = &**u;
            if let Some(v) = retry_after {
                res.insert_header((header::RETRY_AFTER, v.clone()));
            }
            if let Some(v) = retry_after_ms {
                res.insert_header(("retry-after-ms", v.clone()));
            }
            if let Some(body) = passable_openai_error_body(body) {
                return res.body(body);
            }
        }
        match self {
            Self::Unavailable { .. } => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::CircuitOpen { retry_in, .. } => {
                res.insert_header((header::RETRY_AFTER, retry_in.as_secs().max(1).to_string()));
            }
            Self::RateLimited(r) => {
                let kind = r.kind.as_str();
                res.insert_header((header::RETRY_AFTER, r.retry_after_secs().to_string()));
                res.insert_header((format!("x-ratelimit-limit-{kind}"), r.limit.to_string()));
                res.insert_header((format!("x-ratelimit-remaining-{kind}"), "0"));
                res.insert_header((
                    format!("x-ratelimit-reset-{kind}"),
                    format!("{}s", r.retry_after_secs()),
                ));
            }
            _ => {}
        }
        if matches!(
            self,
            Self::BodyTimeout { .. }
                | Self::PayloadTooLarge { .. }
                | Self::TooManyConnections { .. }
        ) {
            // The rest of the body is not read (or the client must go): close, do not drain.
            res.force_close();
        }
        res.body(json!({ "error": self.openai_error() }).to_string())
    }
}

/// What a refused request hit, for the 429's message and `x-ratelimit-*` headers.
#[derive(Debug)]
pub struct RateLimitExceeded {
    pub scope: crate::governance::limits::Scope,
    pub kind: crate::governance::limits::Kind,
    /// The limit that refused it, per minute.
    pub limit: u64,
    /// Until the window that refused it ends.
    pub reset: std::time::Duration,
}

impl RateLimitExceeded {
    pub fn new(
        scope: crate::governance::limits::Scope,
        kind: crate::governance::limits::Kind,
        limit: u64,
        reset: std::time::Duration,
    ) -> Self {
        Self {
            scope,
            kind,
            limit,
            reset,
        }
    }

    /// Whole seconds until the window ends, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.reset.as_millis().div_ceil(1000).max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn a_deny_topic_is_a_403_naming_topic_and_score() {
        let err = GatewayError::Denied {
            topic: "weapons".into(),
            score: 0.61234,
        };
        assert_eq!(err.status_code(), 403);
        let body = body_of(&err);
        assert_eq!(body["error"]["code"], "denied_topic");
        assert_eq!(
            body["error"]["message"],
            "This proxy does not serve prompts about 'weapons' (deny-list topic, score 0.612)."
        );
    }

    fn body_of(err: &GatewayError) -> serde_json::Value {
        let bytes = err
            .error_response()
            .into_body()
            .try_into_bytes()
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn upstream_openai_errors_pass_through_verbatim() {
        let raw = Bytes::from_static(br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#);
        let err = GatewayError::Upstream(Box::new(UpstreamFailure {
            provider: "openai".into(),
            status: StatusCode::TOO_MANY_REQUESTS,
            body: raw.clone(),
            retry_after: Some(HeaderValue::from_static("2")),
            retry_after_ms: None,
            retry_in: None,
        }));
        let res = err.error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(
            res.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
        assert_eq!(res.into_body().try_into_bytes().unwrap_or_default(), raw);
    }

    #[test]
    fn non_openai_upstream_bodies_are_wrapped_with_the_status_kept() {
        let err = GatewayError::Upstream(Box::new(UpstreamFailure {
            provider: "openai".into(),
            status: StatusCode::BAD_GATEWAY,
            body: Bytes::from_static(b"<html>bad gateway</html>"),
            retry_after: None,
            retry_after_ms: None,
            retry_in: None,
        }));
        assert_eq!(err.status_code(), 502);
        let body = body_of(&err);
        assert_eq!(body["error"]["code"], "upstream_http_502");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("bad gateway")
        );
    }

    #[test]
    fn every_error_has_the_four_openai_fields() {
        for err in [
            GatewayError::invalid("bad", Some("model"), None),
            GatewayError::MissingApiKey,
            GatewayError::InvalidApiKey,
            GatewayError::PayloadTooLarge { limit: 10 },
            GatewayError::Denied {
                topic: "weapons".into(),
                score: 0.5,
            },
            GatewayError::Internal("secret detail".into()),
        ] {
            let body = body_of(&err);
            let e = &body["error"];
            for field in ["message", "type", "param", "code"] {
                assert!(e.get(field).is_some(), "{err:?} lacks {field}");
            }
            assert!(
                !e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("secret detail")
            );
        }
    }

    #[test]
    fn account_ids_are_redacted_and_nothing_else_changes() {
        assert_eq!(
            sanitize_upstream_message(
                "Rate limit reached in organization org-AbC123 on requests; project proj_x9z, key sk-live-1234."
            ),
            "Rate limit reached in organization [redacted] on requests; project [redacted], key [redacted]."
        );
        for same in [
            "no ids here",
            "org- alone",
            "a forge-123 word",
            "user-",
            "héllo org",
        ] {
            assert!(
                matches!(sanitize_upstream_message(same), Cow::Borrowed(_)),
                "{same}"
            );
        }
        let mut fuzz = crate::fuzz::Budget::new("upstream message sanitiser", 5_000);
        while fuzz.more() {
            let rng = &mut fuzz.rng;
            let pieces = ["org-", "proj_", "sk-", "abc", " ", "é", "-", "_", "1", "你"];
            let text: String = (0..rng.usize(0..16))
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            let out = sanitize_upstream_message(&text);
            // Redaction only ever replaces whole ids: what is left has no id prefix at a word start.
            for prefix in ACCOUNT_ID_PREFIXES {
                for (at, _) in out.match_indices(prefix) {
                    let starts_word = out[..at]
                        .chars()
                        .next_back()
                        .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
                    let id_len = out[at + prefix.len()..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                        .unwrap_or(out.len() - at - prefix.len());
                    assert!(!starts_word || id_len < 3, "{text:?} -> {out:?}");
                }
            }
        }
    }
}
