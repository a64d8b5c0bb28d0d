//! Providers: how a routed request goes on the wire to each upstream, and what comes back.
//!
//! The seam every provider fits is [`prepare`]: a front request plus a routing decision in,
//! an [`UpstreamRequest`] (URL, headers, body) out. Answers come back as an
//! [`UpstreamResponse`] whose body is whole or a channel of chunks. OpenAI passes through
//! untouched apart from the model; Gemini, Azure OpenAI and Bedrock will add their modules
//! here, each translating from the canonical conversation model in `api`, and a stream decoder
//! turning their frames into OpenAI events before the relay. Nothing of a provider's wire types
//! leaves its module.

pub mod openai;

use crate::api::FrontRequest;
use crate::api::stream::UpstreamChunk;
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::routing::Decision;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use bytes::Bytes;
use tokio::sync::mpsc;

/// A request ready to send upstream.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub url: String,
    /// Headers besides `content-type`; secrets are marked sensitive.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The client asked for a stream.
    pub stream: bool,
}

/// An upstream body: whole, or chunks as they arrive.
#[derive(Debug)]
pub enum UpstreamBody {
    Full(Bytes),
    Stream(mpsc::Receiver<UpstreamChunk>),
}

/// A successful upstream answer (error statuses become [`GatewayError::Upstream`]).
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    /// The provider's own request id, relayed as `x-upstream-request-id`.
    pub request_id: Option<HeaderValue>,
    pub body: UpstreamBody,
}

/// Builds the upstream request for a routed front request. `previous_response_id` is the
/// upstream id behind the client's (see `api::response_ids`).
pub fn prepare(
    front: &FrontRequest,
    decision: &Decision,
    traceparent: &str,
    previous_response_id: Option<&str>,
) -> Result<UpstreamRequest, GatewayError> {
    match decision.provider.kind {
        ProviderKind::OpenAi => openai::prepare(front, decision, traceparent, previous_response_id),
    }
}
