//! Amazon Bedrock (Anthropic Claude), translated through the canonical conversation model.
//!
//! The wire is **Converse / ConverseStream** (`POST /model/{modelId}/converse` and
//! `/converse-stream`), not InvokeModel with the Anthropic Messages body: Converse is one body
//! format for every Bedrock model (an inference profile or a non-Anthropic model needs no
//! second translator), its stream events are typed (`messageStart`, `contentBlockStart`,
//! `contentBlockDelta`, `messageStop`, `metadata`) instead of base64-wrapped Anthropic events,
//! and its usage comes whole in the final `metadata` event. This module owns that wire: the
//! request body (`request`), the answer and the eventstream decoder (`reply`), the URL with
//! the model id percent-encoded once as one path segment, authentication (SigV4 with
//! `aws-sigv4`, signed afresh on every attempt, or a Bedrock API key as a Bearer token), and
//! what Bedrock's errors mean (`x-amzn-ErrorType` + `{"message"}` into the OpenAI error
//! shape). It does not own the retry loop, the relay or the front codecs: those are generic
//! and read only canonical types. Its wire types are private; the emulator has its own.

mod reply;
mod request;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use serde_json::json;

use super::{
    Adapter, ErrorAnswer, Framing, StreamDecoder, Translator, UpstreamCall, UpstreamRequest,
};
use crate::api::canonical::{Conversation, Reply};
use crate::config::{Credentials, Provider, ProviderSettings};
use crate::error::GatewayError;
use crate::routing::Decision;

/// The SigV4 service name of bedrock-runtime (its `signingName`; not `bedrock-runtime`).
const SIGNING_NAME: &str = "bedrock";
/// What the generic sender puts in `content-type`, and therefore what is signed.
const CONTENT_TYPE: &str = "application/json";

/// The Bedrock adapter.
pub struct Bedrock;

impl Translator for Bedrock {
    fn prepare(
        &self,
        conversation: &Conversation,
        decision: &Decision,
    ) -> Result<UpstreamCall, GatewayError> {
        let operation = if conversation.stream {
            "converse-stream"
        } else {
            "converse"
        };
        // The model id is one path segment, percent-encoded once (`…-v1:0` → `…-v1%3A0`, an
        // ARN's `/` → `%2F`); SigV4 encodes the canonical path a second time, as AWS expects.
        let model = decision.route().upstream_model();
        Ok(UpstreamCall {
            adapter: &Bedrock,
            method: Method::POST,
            path: format!("/model/{}/{operation}", super::path_segment(model)).into(),
            headers: Vec::new(),
            body: Bytes::from(request::encode(conversation)?),
            stream: conversation.stream,
        })
    }

    fn decode_reply(&self, body: &[u8]) -> Result<Reply, String> {
        reply::decode(body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(reply::ConverseStream::new())
    }
}

impl Adapter for Bedrock {
    fn attempt(
        &self,
        provider: &Provider,
        call: &UpstreamCall,
    ) -> Result<UpstreamRequest, GatewayError> {
        match &provider.credentials {
            // A Bedrock API key (short- or long-term) replaces SigV4 altogether.
            Credentials::ApiKey(key) => {
                let auth = super::secret_header(provider, &format!("Bearer {}", key.expose()))?;
                Ok(call.request(provider, (header::AUTHORIZATION, auth)))
            }
            Credentials::Aws { .. } => signed(provider, call, SystemTime::now()),
            Credentials::EntraToken(_) => Err(GatewayError::Internal(format!(
                "provider {} has an Entra token, which Bedrock does not take",
                provider.name
            ))),
        }
    }

    fn request_id_header(&self) -> &'static str {
        "x-amzn-requestid"
    }

    fn classify(&self, provider: &Provider, answer: ErrorAnswer<'_>) -> GatewayError {
        let (status, headers, body) = answer.parts();
        classify(provider, status, headers, &body)
    }

    fn framing(&self) -> Framing {
        Framing::EventStream
    }

    /// A leading `messageStart` frame: it only says `role: assistant`, which the front
    /// encoders say by themselves. Dropped before the stream is relayed, so the first event is
    /// the first content, or an exception sent before any content, which is then retried or
    /// falls back like an error status instead of breaking a stream the client already has.
    fn leading_noise(&self, buf: &[u8]) -> usize {
        reply::leading_message_start(buf)
    }

    fn first_event_error(&self, first: &[u8]) -> Option<String> {
        reply::exception_in_first_frame(first)
    }

    fn translator(&self) -> Option<&dyn Translator> {
        Some(self)
    }
}

/// The attempt's request signed with SigV4 at `now`: exactly what goes on the wire is signed
/// (the path as sent, `host` as sent, `content-type` as the sender sets it, the body), and
/// the signature's headers (`authorization`, `x-amz-date`, `x-amz-security-token` with a
/// session token) are added. Other headers (`traceparent`…) travel unsigned, as SigV4 allows.
fn signed(
    provider: &Provider,
    call: &UpstreamCall,
    now: SystemTime,
) -> Result<UpstreamRequest, GatewayError> {
    let internal =
        |what: String| GatewayError::Internal(format!("provider {}: {what}", provider.name));
    let Credentials::Aws {
        access_key_id,
        secret_access_key,
        session_token,
    } = &provider.credentials
    else {
        return Err(internal("no AWS credentials".to_owned()));
    };
    let ProviderSettings::Bedrock { region } = &provider.settings else {
        return Err(internal("not a Bedrock provider".to_owned()));
    };
    let url = format!("{}{}", provider.base_url, call.path);
    let uri: actix_web::http::Uri = url
        .parse()
        .map_err(|e| internal(format!("base URL {url:?} does not parse: {e}")))?;
    let host =
        host_header(&uri).ok_or_else(|| internal(format!("base URL {url:?} has no host")))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());

    let identity = aws_credential_types::Credentials::new(
        access_key_id.expose(),
        secret_access_key.expose(),
        session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "switchyard",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| internal(format!("SigV4 parameters: {e}")))?
        .into();
    // The generic sender sets `content-type` exactly when there is a body.
    let mut signed_headers = vec![("host", host.as_str())];
    if !call.body.is_empty() {
        signed_headers.push(("content-type", CONTENT_TYPE));
    }
    let signable = SignableRequest::new(
        call.method.as_str(),
        target,
        signed_headers.into_iter(),
        SignableBody::Bytes(&call.body),
    )
    .map_err(|e| internal(format!("SigV4 request: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| internal(format!("SigV4 signing: {e}")))?
        .into_parts();
    let (signing_headers, _) = instructions.into_parts();

    let mut headers = Vec::with_capacity(signing_headers.len() + 1 + call.headers.len());
    headers.push((
        header::HOST,
        HeaderValue::try_from(host.as_str()).map_err(|e| internal(format!("host header: {e}")))?,
    ));
    for h in signing_headers {
        let mut value = HeaderValue::try_from(h.value())
            .map_err(|e| internal(format!("{} header: {e}", h.name())))?;
        // The authorization header carries the access key id and a signature; the token is a
        // credential itself.
        value.set_sensitive(h.sensitive() || h.name() == "authorization");
        let name = HeaderName::from_bytes(h.name().as_bytes())
            .map_err(|e| internal(format!("{} header name: {e}", h.name())))?;
        headers.push((name, value));
    }
    headers.extend(call.headers.iter().cloned());
    Ok(UpstreamRequest {
        method: call.method.clone(),
        url: super::Url::Text(url),
        headers,
        body: call.body.clone(),
    })
}

/// The `host` header as HTTP clients send it: the authority without a default port.
fn host_header(uri: &actix_web::http::Uri) -> Option<String> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    })
}

/// An error answer in the gateway's terms (`providers.md` §4.6, §7): the exception named by
/// `x-amzn-ErrorType` (what follows `:` is a namespace) with Bedrock's `message`, reshaped
/// into the OpenAI error body the front promises, at the front status for it.
fn classify(
    provider: &Provider,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> GatewayError {
    let exception = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split([':', '#'])
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .filter(|v| !v.is_empty());
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = doc["message"]
        .as_str()
        .or_else(|| doc["Message"].as_str())
        .map(str::to_owned);
    let exception = exception.or_else(|| {
        doc["__type"]
            .as_str()
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
    });
    let name = exception.as_deref().unwrap_or("");
    let credentials_refused = status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || matches!(
            name,
            "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "IncompleteSignatureException"
                | "MissingAuthenticationTokenException"
                | "ExpiredTokenException"
                | "AccessDeniedException"
        );
    if credentials_refused {
        // The gateway's keys (or their permissions) were refused: the operator's problem. The
        // message can quote the key id, the signature's canonical request or an IAM ARN, so
        // it goes to the log only.
        tracing::warn!(
            provider = %provider.name,
            status = status.as_u16(),
            exception = name,
            message = message.as_deref().unwrap_or(""),
            "Bedrock refused the gateway's credentials"
        );
        return GatewayError::UpstreamCredentials {
            provider: provider.name.clone(),
        };
    }
    let (front, kind) = match (name, status.as_u16()) {
        ("ServiceQuotaExceededException" | "ThrottlingException" | "ModelNotReadyException", _)
        | (_, 429) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ("ModelTimeoutException", _) | (_, 408) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        // The model failed (424): the gateway's upstream failed, so a bad gateway.
        ("ModelErrorException" | "ModelStreamErrorException", _) | (_, 424) => {
            (StatusCode::BAD_GATEWAY, "server_error")
        }
        (_, s) if s >= 500 => (status, "server_error"),
        (_, s) if (400..500).contains(&s) => (status, "invalid_request_error"),
        _ => (StatusCode::BAD_GATEWAY, "server_error"),
    };
    let mut text = message.unwrap_or_else(|| format!("Bedrock answered HTTP {}", status.as_u16()));
    if let Some(original) = doc["originalStatusCode"].as_u64() {
        text.push_str(&format!(" (the model returned HTTP {original})"));
    }
    let body = json!({"error": {
        "message": redact_arns(&text),
        "type": kind,
        "param": null,
        "code": exception.as_deref().map_or_else(|| format!("bedrock_http_{}", status.as_u16()), str::to_owned),
    }});
    super::upstream_failure(
        provider,
        front,
        headers,
        Bytes::from(body.to_string()),
        super::retry_after(headers),
    )
}

/// Bedrock messages can quote ARNs, which name the operator's AWS account: replaced.
fn redact_arns(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains("arn:aws") {
                "[redacted ARN]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
