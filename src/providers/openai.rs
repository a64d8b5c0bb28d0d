//! OpenAI (and any OpenAI-compatible upstream): native passthrough.
//!
//! Both front endpoints exist upstream, so the client's body goes through byte for byte; only
//! `model` is rewritten when the route pins a target model. Answers and streams are already in
//! the front format and are relayed as they are. Auth is `Authorization: Bearer`, plus the
//! optional organization and project headers.

use super::UpstreamRequest;
use crate::api::FrontRequest;
use crate::error::GatewayError;
use crate::routing::Decision;
use actix_web::http::header::{self, HeaderName, HeaderValue};

/// Builds the OpenAI request for a routed front request.
pub fn prepare(
    front: &FrontRequest,
    decision: &Decision,
    traceparent: &str,
    previous_response_id: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    let provider = &decision.provider;
    let body = front.upstream_body(decision.route().upstream_model(), previous_response_id);
    let url = format!("{}/{}", provider.base_url, front.endpoint.path());
    let mut auth =
        HeaderValue::try_from(format!("Bearer {}", provider.api_key.expose())).map_err(|_| {
            GatewayError::Internal(format!(
                "provider {} key is not a valid header value",
                provider.name
            ))
        })?;
    auth.set_sensitive(true);
    let mut headers = vec![(header::AUTHORIZATION, auth)];
    for (name, value) in [
        ("openai-organization", &provider.organization),
        ("openai-project", &provider.project),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.push((HeaderName::from_static(name), v));
        }
    }
    if let Ok(tp) = HeaderValue::from_str(traceparent) {
        headers.push((HeaderName::from_static("traceparent"), tp));
    }
    Ok(UpstreamRequest {
        url,
        headers,
        body,
        stream: front.stream,
    })
}
