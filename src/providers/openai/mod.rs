//! OpenAI (and any OpenAI-compatible upstream): native passthrough.
//!
//! Both front endpoints exist upstream, so the client's body goes through byte for byte; only
//! `model` (and `previous_response_id`) is rewritten when the route pins a target model.
//! Answers and streams are already in the front format and are relayed as they are. Auth is
//! `Authorization: Bearer`, plus the optional organization and project headers. What OpenAI's
//! wire means also lives here: `x-request-id`, `retry-after-ms`, a 401 for the gateway's own
//! key, and the error events that can open a stream.

use super::{Adapter, ErrorAnswer, Framing, UpstreamCall, UpstreamRequest};
use crate::api::FrontRequest;
use crate::api::stream::first_sse_event;
use crate::config::{Provider, ProviderSettings};
use crate::error::GatewayError;
use crate::routing::Decision;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use memchr::memmem::Finder;
use std::sync::LazyLock;

/// The OpenAI adapter.
pub struct OpenAi;

/// Builds the OpenAI call for a routed front request.
pub fn prepare(
    front: &FrontRequest,
    decision: &Decision,
    previous_response_id: Option<&str>,
) -> Result<UpstreamCall, GatewayError> {
    let body = front.upstream_body(decision.route().upstream_model(), previous_response_id);
    let mut headers = Vec::new();
    if let ProviderSettings::OpenAi {
        organization,
        project,
    } = &decision.provider.settings
    {
        for (name, value) in [
            ("openai-organization", organization),
            ("openai-project", project),
        ] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.push((HeaderName::from_static(name), v));
            }
        }
    }
    Ok(UpstreamCall {
        adapter: &OpenAi,
        method: actix_web::http::Method::POST,
        path: front.endpoint.upstream_path().into(),
        headers,
        body,
        stream: front.stream,
    })
}

impl Adapter for OpenAi {
    fn attempt(
        &self,
        provider: &Provider,
        call: &UpstreamCall,
    ) -> Result<UpstreamRequest, GatewayError> {
        let auth = provider.prebuilt.auth(|| {
            let key = super::api_key(provider)?;
            let value = super::secret_header(provider, &format!("Bearer {key}"))?;
            Ok((header::AUTHORIZATION, value))
        })?;
        Ok(call.request(provider, auth))
    }

    fn request_id_header(&self) -> &'static str {
        "x-request-id"
    }

    fn retrieval_path(&self, _provider: &Provider, upstream_id: &str) -> Option<String> {
        Some(format!("/responses/{}", super::path_segment(upstream_id)))
    }

    fn classify(&self, provider: &Provider, answer: ErrorAnswer<'_>) -> GatewayError {
        let (status, headers, body) = answer.parts();
        if status == StatusCode::UNAUTHORIZED {
            // The provider refused the gateway's own key. Its message quotes part of that key
            // (OpenAI masks all but a few characters), and a 401 would tell the client its
            // own key is wrong: neither may reach the client.
            return GatewayError::UpstreamCredentials {
                provider: provider.name.clone(),
            };
        }
        super::upstream_failure(provider, status, headers, body, retry_hint(headers))
    }

    fn framing(&self) -> Framing {
        Framing::Sse
    }

    fn first_event_error(&self, first: &[u8]) -> Option<String> {
        error_in_first_event(first)
    }
}

/// The wait OpenAI asked for: `retry-after-ms` (finer) before the standard `retry-after`.
fn retry_hint(headers: &HeaderMap) -> Option<std::time::Duration> {
    super::seconds_header(headers, "retry-after-ms", 0.001).or_else(|| super::retry_after(headers))
}

static ERROR_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"error"));
static FAILED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"failed"));

/// The message of an error event that opens a stream (OpenAI's `data: {"error":…}`, or a
/// Responses `error` / `response.failed` event), if the first event is one.
pub(super) fn error_in_first_event(buf: &[u8]) -> Option<String> {
    // Every error shape has `error` or `failed` in its bytes; an event with neither (nearly
    // every first event) is passed without taking it apart, which copies its data lines into
    // a string. This runs between the first event's arrival and its relay to the client.
    let end = crate::api::stream::first_boundary(buf)?;
    let event = &buf[..end];
    if ERROR.find(event).is_none() && FAILED.find(event).is_none() {
        return None;
    }
    let (_, name, data) = first_sse_event(buf)?;
    // Most streams open with a chunk that names no error: not worth parsing.
    let named = matches!(name, Some("error" | "response.failed"));
    if !named && ERROR_KEY.find(data.as_bytes()).is_none() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&data).ok()?;
    let message = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "an error event without a message".to_owned())
    };
    match name {
        Some("error") => Some(message(&json["message"])),
        Some("response.failed") => Some(message(&json["response"]["error"]["message"])),
        _ if json.get("error").is_some_and(|e| !e.is_null()) => {
            Some(message(&json["error"]["message"]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentials;
    use crate::config::{CircuitPolicy, Secret};
    use bytes::Bytes;
    use std::time::Duration;

    fn provider() -> Provider {
        Provider {
            name: "p".into(),
            settings: ProviderSettings::OpenAi {
                organization: None,
                project: None,
            },
            base_url: "http://127.0.0.1:9/v1".into(),
            credentials: Credentials::ApiKey(Secret::new("sk-x".into())),
            timeout: Duration::from_secs(1),
            max_retries: 0,
            circuit: CircuitPolicy {
                failures: 0,
                open_for: Duration::from_secs(1),
            },
            prebuilt: Default::default(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn retry_in(err: GatewayError) -> Option<Duration> {
        match err {
            GatewayError::Upstream(u) => u.retry_in,
            other => panic!("expected an upstream failure, got {other:?}"),
        }
    }

    #[test]
    fn retry_hints_prefer_milliseconds() {
        let classify = |headers| {
            let answer = ErrorAnswer {
                status: StatusCode::TOO_MANY_REQUESTS,
                headers: &headers,
                body: Bytes::new(),
            };
            OpenAi.classify(&provider(), answer)
        };
        assert_eq!(
            retry_in(classify(headers(&[("retry-after", "2")]))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_in(classify(headers(&[
                ("retry-after", "2"),
                ("retry-after-ms", "150")
            ]))),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            retry_in(classify(headers(&[("retry-after", "soon")]))),
            None
        );
        assert_eq!(retry_in(classify(headers(&[]))), None);
    }

    #[test]
    fn a_401_is_the_gateways_credentials_and_its_body_is_dropped() {
        let answer = ErrorAnswer {
            status: StatusCode::UNAUTHORIZED,
            headers: &HeaderMap::new(),
            body: Bytes::from_static(
                b"{\"error\":{\"message\":\"Incorrect API key provided: sk-x\"}}",
            ),
        };
        let err = OpenAi.classify(&provider(), answer);
        assert!(
            matches!(err, GatewayError::UpstreamCredentials { ref provider } if provider == "p"),
            "{err:?}"
        );
    }

    #[test]
    fn every_attempt_carries_the_key_as_a_sensitive_bearer() {
        let call = UpstreamCall {
            adapter: &OpenAi,
            method: actix_web::http::Method::POST,
            path: "/chat/completions".into(),
            headers: vec![(
                HeaderName::from_static("traceparent"),
                HeaderValue::from_static("00-x"),
            )],
            body: Bytes::from_static(b"{}"),
            stream: false,
        };
        let req = OpenAi.attempt(&provider(), &call).expect("built");
        assert_eq!(req.url, "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(req.headers.len(), 2);
        assert_eq!(req.headers[0].0, header::AUTHORIZATION);
        assert_eq!(req.headers[0].1, "Bearer sk-x");
        assert!(req.headers[0].1.is_sensitive());
        assert_eq!(req.headers[1].0, "traceparent");
        assert_eq!(&req.body[..], b"{}");
    }

    #[test]
    fn first_event_errors_are_found_in_every_shape_and_garbage_never_panics() {
        assert_eq!(
            error_in_first_event(b"data: {\"error\":{\"message\":\"busy\"}}\n\n").as_deref(),
            Some("busy")
        );
        assert_eq!(
            error_in_first_event(
                b"event: error\ndata: {\"type\":\"error\",\"message\":\"m\"}\r\n\r\n"
            )
            .as_deref(),
            Some("m")
        );
        assert_eq!(
            error_in_first_event(
                b"event: response.failed\ndata: {\"response\":{\"error\":{\"message\":\"f\"}}}\n\n"
            )
            .as_deref(),
            Some("f")
        );
        // The name alone says it failed (no `error` anywhere in the event).
        assert_eq!(
            error_in_first_event(b"event: response.failed\ndata: {\"response\":{}}\n\n").as_deref(),
            Some("an error event without a message")
        );
        for fine in [
            &b"data: {\"choices\":[],\"error\":null}\n\n"[..],
            b"event: response.created\ndata: {\"response\":{\"error\":null}}\n\n",
            b"data: {\"error\"", // not a whole event yet
            b": keep-alive\n\n",
        ] {
            assert_eq!(
                error_in_first_event(fine),
                None,
                "{}",
                String::from_utf8_lossy(fine)
            );
        }
        let mut fuzz = crate::fuzz::Budget::new("first SSE event", 2_000);
        while fuzz.more() {
            let rng = &mut fuzz.rng;
            let pieces: [&[u8]; 8] = [
                b"data: ",
                b"event: error\n",
                b"{\"error\":",
                b"\n\n",
                b"\r\n",
                b"\xff",
                b"}",
                b"\"message\":\"x\"",
            ];
            let buf: Vec<u8> = (0..rng.usize(0..12))
                .flat_map(|_| pieces[rng.usize(..pieces.len())].iter().copied())
                .collect();
            let _ = error_in_first_event(&buf);
            let _ = crate::api::stream::has_whole_event(&buf);
        }
    }
}
