//! The gateway's one error type and its one mapping to HTTP.
//!
//! Every error a client can see is a [`GatewayError`]. Each variant knows where it came from
//! ([`ErrorSource`]), whether retrying could help, and how it renders: an OpenAI-shaped body
//! `{"error":{"message","type","param","code"}}` with the right status. Upstream error bodies
//! that are already OpenAI-shaped pass through byte for byte, status included. Internal details
//! go to the log, never to the client.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use bytes::Bytes;
use serde_json::json;

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
    /// 413: the request body is over the limit.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
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
    /// 502: the provider could not be reached, or broke the connection.
    #[error("upstream {provider} unavailable: {message}")]
    UpstreamUnavailable { provider: String, message: String },
    /// 504: the provider did not answer in time.
    #[error("upstream {provider} timed out")]
    UpstreamTimeout { provider: String },
    /// 503: the gateway cannot take the request now (a proxy restarting, shutting down).
    #[error("{message}")]
    Unavailable { message: String },
    /// 500: a bug or an unexpected state; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An upstream's error answer, as received (boxed: it is the largest variant by far).
#[derive(Debug)]
pub struct UpstreamFailure {
    pub provider: String,
    pub status: StatusCode,
    pub body: Bytes,
    pub retry_after: Option<HeaderValue>,
    pub retry_after_ms: Option<HeaderValue>,
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
            | Self::PayloadTooLarge { .. } => ErrorSource::Client,
            Self::Upstream(_)
            | Self::UpstreamCredentials { .. }
            | Self::UpstreamUnavailable { .. }
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
            | Self::Unavailable { .. } => true,
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
            Self::NotImplemented { message } => (message.clone(), "server_error", None, Some("not_implemented")),
            Self::Upstream(u) => {
                let UpstreamFailure { provider, status, body, .. } = &**u;
                // Only reached when the body was not OpenAI-shaped (see `error_response`).
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
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
            Self::UpstreamUnavailable { provider, message } => (
                format!("The upstream provider {provider} could not be reached: {message}"),
                "server_error",
                None,
                Some("upstream_unavailable"),
            ),
            Self::UpstreamTimeout { provider } => (
                format!("The upstream provider {provider} did not answer in time."),
                "server_error",
                None,
                Some("upstream_timeout"),
            ),
            Self::Unavailable { message } => (message.clone(), "server_error", None, Some("unavailable")),
            Self::Internal(_) => (
                "The gateway hit an internal error; the request id identifies it in the logs.".into(),
                "server_error",
                None,
                Some("internal_error"),
            ),
        };
        json!({ "message": message, "type": kind, "param": param, "code": code })
    }
}

/// True when `body` is already an OpenAI error document, so it can pass through unchanged.
fn is_openai_error_body(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v["error"]["message"].is_string())
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::MissingApiKey | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            Self::Upstream(u) => u.status,
            Self::UpstreamCredentials { .. } | Self::UpstreamUnavailable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self.source_kind() {
            ErrorSource::Client => tracing::debug!(error = %self, "request refused"),
            ErrorSource::Upstream => tracing::warn!(error = %self, "upstream failure"),
            ErrorSource::Internal => tracing::error!(error = %self, "gateway failure"),
        }
        let mut res = HttpResponse::build(self.status_code());
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
            if is_openai_error_body(body) {
                return res.body(body.clone());
            }
        }
        if matches!(self, Self::Unavailable { .. }) {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        res.body(json!({ "error": self.openai_error() }).to_string())
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
}
