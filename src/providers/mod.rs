//! Providers: how a routed request goes on the wire to each upstream, and what comes back.
//!
//! The seam is the [`Adapter`] trait, one implementation per provider, each in its own folder
//! (`openai/`, `azure_openai/`; `gemini/` and `bedrock/` fit the same shape). [`prepare`]
//! turns a front request and a routing decision into an [`UpstreamCall`] once per route: the
//! translated body and path, plus the adapter that owns them. The provider actor then asks
//! the adapter, for *each attempt*, for the [`UpstreamRequest`] (URL, headers with auth,
//! body), so a signature over the time (SigV4) is fresh on every retry; and, for each answer,
//! which header carries the provider's request id, what an error answer means (credentials
//! refused, rate limited with a retry hint, content filter…) and whether a stream's first
//! event is an error. The retry loop, timeouts, circuit breaker and relay stay generic and
//! name no provider. Nothing of a provider's wire types leaves its folder.

pub mod azure_openai;
pub mod bedrock;
pub mod gemini;
pub mod openai;

use crate::api::FrontRequest;
pub use crate::api::canonical::StreamDecoder;
use crate::api::canonical::{Conversation, Reply};
use crate::api::stream::{self, UpstreamStream};
use crate::config::{Credentials, Provider, ProviderKind};
use crate::error::{GatewayError, UpstreamFailure};
use crate::routing::Decision;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri};
use bytes::Bytes;
use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// An upstream answer with an error status (anything but 2xx), whole, as
/// [`Adapter::classify`] reads it.
pub struct ErrorAnswer<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

impl<'a> ErrorAnswer<'a> {
    pub fn parts(self) -> (StatusCode, &'a HeaderMap, Bytes) {
        (self.status, self.headers, self.body)
    }
}

/// The per-provider parts of an upstream call. Implementations are stateless: what a call
/// needs is in the [`Provider`] (settings and credentials) and the [`UpstreamCall`].
pub trait Adapter: Sync {
    /// The request for one attempt. Called before every attempt, so anything that depends on
    /// the moment (a SigV4 signature and its date) is computed afresh; what does not (a fixed
    /// key's header, the URI) may come from the provider's [`Prebuilt`].
    fn attempt(
        &self,
        provider: &Provider,
        call: &UpstreamCall,
    ) -> Result<UpstreamRequest, GatewayError>;

    /// The response header carrying the provider's own request id.
    fn request_id_header(&self) -> &'static str;

    /// What an error answer (any status but 2xx) means for the gateway: credentials refused,
    /// rate limited (with the wait the provider asked for), a refusal to pass on…
    fn classify(&self, provider: &Provider, answer: ErrorAnswer<'_>) -> GatewayError;

    /// How the provider frames a stream.
    fn framing(&self) -> Framing;

    /// How many bytes at the start of `buf` are whole events that carry nothing for the
    /// client and are dropped before the stream is relayed (Azure's content-filter frame);
    /// asked again after each drop, so several can go.
    fn leading_noise(&self, _buf: &[u8]) -> usize {
        0
    }

    /// The message of an error event that opens a stream, if the first whole event (as
    /// delimited by [`Adapter::framing`]) is one: retried like an error status, since no byte
    /// has reached the client yet.
    fn first_event_error(&self, first: &[u8]) -> Option<String>;

    /// The path (under the base URL) that retrieves a stored response by its upstream id, for
    /// providers with a Responses API of their own (`GET /responses/{id}` is forwarded).
    fn retrieval_path(&self, _provider: &Provider, _upstream_id: &str) -> Option<String> {
        None
    }

    /// The provider's translator, when its wire is not the front API's (Gemini, Bedrock):
    /// the request then goes through the canonical conversation model both ways. `None` for
    /// native passthrough (OpenAI, Azure).
    fn translator(&self) -> Option<&dyn Translator> {
        None
    }
}

/// The translating half of a provider whose wire is not the front API. It reads and writes
/// only canonical types (`api::canonical`) on the gateway's side and its own private wire
/// types on the provider's: the front codecs (`api::chat`, `api::responses`) do the rest.
pub trait Translator: Sync {
    /// The upstream call for `conversation` on the decision's route (path, body, stream or
    /// not, headers without secrets: auth is added per attempt by [`Adapter::attempt`]).
    fn prepare(
        &self,
        conversation: &Conversation,
        decision: &Decision,
    ) -> Result<UpstreamCall, GatewayError>;

    /// A whole (non-streaming) successful answer, or why it is not one.
    fn decode_reply(&self, body: &[u8]) -> Result<Reply, String>;

    /// A decoder for one streamed answer.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;
}

/// How a provider frames a streamed answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Server-sent events (`text/event-stream`), events ending in a blank line.
    Sse,
    /// AWS eventstream (`application/vnd.amazon.eventstream`): binary frames, each opening
    /// with its total length.
    EventStream,
}

impl Framing {
    /// Whether a response with this content type is a stream in this framing.
    pub fn is_stream(self, content_type: Option<&HeaderValue>) -> bool {
        let ct = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
        match self {
            Framing::Sse => ct.starts_with("text/event-stream"),
            Framing::EventStream => ct.starts_with("application/vnd.amazon.eventstream"),
        }
    }

    /// True once `buf` holds at least one whole event.
    pub fn has_whole_event(self, buf: &[u8]) -> bool {
        match self {
            Framing::Sse => stream::has_whole_event(buf),
            // The prelude's first 4 bytes are the frame's total length, big-endian.
            Framing::EventStream => buf.get(..4).is_some_and(|len| {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                buf.len() >= len.max(16)
            }),
        }
    }
}

/// A routed request translated for its provider, once per route: every attempt is built
/// from it by the adapter.
pub struct UpstreamCall {
    pub adapter: &'static dyn Adapter,
    /// `POST` for a conversation; `GET` to retrieve a stored response.
    pub method: Method,
    /// Appended to the provider's base URL: path and query, starting with `/` (a constant for
    /// a front endpoint's own path, whose URI the provider keeps parsed).
    pub path: Cow<'static, str>,
    /// Headers that are the same on every attempt and carry no secret (trace context,
    /// organization…).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The client asked for a stream.
    pub stream: bool,
}

impl UpstreamCall {
    /// One attempt's request: this call under `provider`'s base URL, with `auth` (built afresh
    /// for the attempt) before the call's own headers.
    pub(crate) fn request(
        &self,
        provider: &Provider,
        auth: (HeaderName, HeaderValue),
    ) -> UpstreamRequest {
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        headers.push(auth);
        headers.extend(self.headers.iter().cloned());
        UpstreamRequest {
            method: self.method.clone(),
            url: provider.prebuilt.url(&provider.base_url, &self.path),
            headers,
            body: self.body.clone(),
        }
    }
}

impl fmt::Debug for UpstreamCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCall")
            .field("path", &self.path)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("stream", &self.stream)
            .finish()
    }
}

/// One attempt's request, ready to send.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    pub url: Url,
    /// Headers besides `content-type`; secrets are marked sensitive.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Where an attempt goes: a URI parsed once and kept by the provider, or the text of one for
/// awc to parse (and to refuse as it always did, should it not parse).
#[derive(Clone, Debug)]
pub enum Url {
    Parsed(Uri),
    Text(String),
}

impl PartialEq<&str> for Url {
    fn eq(&self, other: &&str) -> bool {
        match self {
            Url::Parsed(uri) => uri == *other,
            Url::Text(text) => text == other,
        }
    }
}

/// What every attempt against one provider would otherwise make again from its settings:
/// the URIs of the two front endpoints' own paths under the base URL, the auth header of a
/// fixed key or token, and the endpoint's circuit breaker. Each is made at the first attempt
/// that needs it and kept with the provider; a reload builds new providers, so nothing kept
/// outlives the settings it came from.
#[derive(Debug, Default)]
pub struct Prebuilt {
    /// base URL + `/chat/completions`, base URL + `/responses`; `None` when it does not parse.
    uris: [OnceLock<Option<Uri>>; 2],
    auth: OnceLock<(HeaderName, HeaderValue)>,
    circuit: OnceLock<Arc<crate::actors::circuit::Circuit>>,
}

impl Prebuilt {
    /// `base` + `path`, parsed once for a front endpoint's own path.
    pub fn url(&self, base: &str, path: &str) -> Url {
        use crate::api::Endpoint;
        let Some(slot) = [Endpoint::ChatCompletions, Endpoint::Responses]
            .iter()
            .position(|e| e.upstream_path() == path)
        else {
            return Url::Text(format!("{base}{path}"));
        };
        match self.uris[slot].get_or_init(|| Uri::try_from(format!("{base}{path}")).ok()) {
            Some(uri) => Url::Parsed(uri.clone()),
            None => Url::Text(format!("{base}{path}")),
        }
    }

    /// The auth header `make` builds, made once: only for credentials that do not change
    /// (an API key or a fixed token), never for a signature over the time. A failure is not
    /// kept, so every attempt reports it as before.
    pub(crate) fn auth(
        &self,
        make: impl FnOnce() -> Result<(HeaderName, HeaderValue), GatewayError>,
    ) -> Result<(HeaderName, HeaderValue), GatewayError> {
        if let Some(auth) = self.auth.get() {
            return Ok(auth.clone());
        }
        let auth = make()?;
        Ok(self.auth.get_or_init(|| auth).clone())
    }

    /// The circuit breaker of the endpoint at `base_url` (see `actors::circuit`).
    pub fn circuit(&self, base_url: &str) -> &Arc<crate::actors::circuit::Circuit> {
        self.circuit
            .get_or_init(|| crate::actors::circuit::for_endpoint(base_url))
    }
}

/// An upstream body: whole, or chunks as they arrive.
#[derive(Debug)]
pub enum UpstreamBody {
    Full(Bytes),
    Stream(UpstreamStream),
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

/// The request as the route's provider takes it: the client's bytes for a native provider,
/// the decoded conversation for a translated one.
pub enum Outgoing<'a> {
    /// Native passthrough. `previous_response_id` is the upstream id behind the client's
    /// (see `api::response_ids`).
    Native {
        front: &'a FrontRequest,
        previous_response_id: Option<&'a str>,
    },
    Translated(&'a Conversation),
}

/// The adapter serving a provider kind.
pub fn adapter(kind: ProviderKind) -> Option<&'static dyn Adapter> {
    match kind {
        ProviderKind::OpenAi => Some(&openai::OpenAi),
        ProviderKind::AzureOpenAi => Some(&azure_openai::AzureOpenAi),
        ProviderKind::Gemini => Some(&gemini::Gemini),
        ProviderKind::Bedrock => Some(&bedrock::Bedrock),
    }
}

/// Builds the upstream call for a routed request.
pub fn prepare(
    outgoing: Outgoing<'_>,
    decision: &Decision,
    traceparent: Option<&HeaderValue>,
) -> Result<UpstreamCall, GatewayError> {
    let kind = decision.provider.kind();
    let unserved = || GatewayError::NotImplemented {
        message: format!(
            "Provider type {} is not served by this build.",
            kind.as_str()
        ),
    };
    let adapter = adapter(kind).ok_or_else(unserved)?;
    let mut call = match (outgoing, adapter.translator()) {
        (Outgoing::Translated(conversation), Some(t)) => t.prepare(conversation, decision),
        (
            Outgoing::Native {
                front,
                previous_response_id,
            },
            None,
        ) => match kind {
            ProviderKind::AzureOpenAi => {
                azure_openai::prepare(front, decision, previous_response_id)
            }
            _ => openai::prepare(front, decision, previous_response_id),
        },
        _ => Err(GatewayError::Internal(format!(
            "provider type {} was handed the wrong form of request",
            kind.as_str()
        ))),
    }?;
    if let Some(tp) = traceparent {
        call.headers
            .push((HeaderName::from_static("traceparent"), tp.clone()));
    }
    Ok(call)
}

/// The call that retrieves a stored response from `provider` by its upstream id, when the
/// provider stores responses itself (OpenAI, Azure).
pub fn retrieval(provider: &Provider, upstream_id: &str) -> Option<UpstreamCall> {
    let adapter = adapter(provider.kind())?;
    let path = adapter.retrieval_path(provider, upstream_id)?;
    Some(UpstreamCall {
        adapter,
        method: Method::GET,
        path: path.into(),
        headers: Vec::new(),
        body: Bytes::new(),
        stream: false,
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a name or id cannot
/// change the path or query it is put in.
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The provider's API key (a configuration the validator would have refused otherwise).
pub(crate) fn api_key(provider: &Provider) -> Result<&str, GatewayError> {
    match &provider.credentials {
        Credentials::ApiKey(key) => Ok(key.expose()),
        _ => Err(GatewayError::Internal(format!(
            "provider {} has no API key",
            provider.name
        ))),
    }
}

/// A header value carrying a secret: marked sensitive so it is never logged.
pub(crate) fn secret_header(provider: &Provider, value: &str) -> Result<HeaderValue, GatewayError> {
    let mut v = HeaderValue::try_from(value).map_err(|_| {
        GatewayError::Internal(format!(
            "provider {} credential is not a valid header value",
            provider.name
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The standard `Retry-After` in seconds (the HTTP-date form is not used by providers).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    seconds_header(headers, header::RETRY_AFTER.as_str(), 1.0)
}

/// A header holding a number of `unit` seconds, if it is one.
pub(crate) fn seconds_header(headers: &HeaderMap, name: &str, unit: f64) -> Option<Duration> {
    let n = headers
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    let secs = n * unit;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// An error answer kept as the provider sent it (status and body), with the retry hint the
/// provider gave and the front's retry headers (`retry-after`, `retry-after-ms`, which OpenAI
/// SDK clients honour) relayed from the upstream's when it sent them.
pub(crate) fn upstream_failure(
    provider: &Provider,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
    retry_in: Option<Duration>,
) -> GatewayError {
    GatewayError::Upstream(Box::new(UpstreamFailure {
        provider: provider.name.clone(),
        status,
        body,
        retry_after: headers.get(header::RETRY_AFTER).cloned(),
        retry_after_ms: headers.get("retry-after-ms").cloned(),
        retry_in,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_front_endpoints_uri_is_parsed_once_and_any_other_path_is_left_as_text() {
        let kept = Prebuilt::default();
        let base = "http://127.0.0.1:9/v1";
        let Url::Parsed(first) = kept.url(base, "/chat/completions") else {
            panic!("a front endpoint's path is parsed");
        };
        assert_eq!(first, "http://127.0.0.1:9/v1/chat/completions");
        // The second call hands back the kept URI, whatever base it is given.
        let Url::Parsed(again) = kept.url("http://elsewhere:1", "/chat/completions") else {
            panic!("kept");
        };
        assert_eq!(again, "http://127.0.0.1:9/v1/chat/completions");
        assert!(
            matches!(kept.url(base, "/responses"), Url::Parsed(u) if u == "http://127.0.0.1:9/v1/responses")
        );
        assert!(
            matches!(kept.url(base, "/responses/r_1"), Url::Text(t) if t == "http://127.0.0.1:9/v1/responses/r_1")
        );
        // A base that does not parse stays text, for awc to refuse as it always did.
        let bad = Prebuilt::default();
        assert!(
            matches!(bad.url("http://a b", "/responses"), Url::Text(t) if t == "http://a b/responses")
        );
    }

    #[test]
    fn an_auth_header_is_made_once_and_a_failure_is_not_kept() {
        let kept = Prebuilt::default();
        let refused = kept.auth(|| Err(GatewayError::Internal("no key".into())));
        assert!(matches!(refused, Err(GatewayError::Internal(m)) if m == "no key"));
        let mut made = 0;
        for _ in 0..3 {
            let (name, value) = kept
                .auth(|| {
                    made += 1;
                    Ok((header::AUTHORIZATION, HeaderValue::from_static("Bearer k")))
                })
                .expect("made");
            assert_eq!(name, header::AUTHORIZATION);
            assert_eq!(value, "Bearer k");
        }
        assert_eq!(made, 1);
    }
}
