//! The provider-neutral steps of one emulated exchange: reading the request body with a size
//! cap, resolving the request's fault spec (route prefix, header, body marker) into the faults
//! that apply, waiting out `latency_ms`, and sending a finished body or a stream of frames
//! through [`Paced`](super::faults::Paced) so the timing and drop faults act the same way for
//! every provider. Authentication, validation and every error body stay in the provider modules:
//! this file never decides what a refusal looks like.

use actix_web::body::SizedStream;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::faults::{self, Active, Counters, FaultSource, FaultSpecError};

/// Largest accepted request body; beyond it the emulator refuses instead of buffering.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Larger than [`MAX_BODY`].
    TooLarge,
    /// The connection broke or the framing was wrong; the reason is for the message.
    Broken(String),
}

/// Reads the whole body, refusing more than [`MAX_BODY`] bytes.
pub(crate) async fn read_body(mut payload: web::Payload) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Gathers the request's fault spec from its three sources, resolves `times`/`key` against the
/// shared counters and sleeps `latency_ms` before returning, so the delay comes before any
/// answer, error or not. The status fault is left to the caller, which words it its own way.
pub(crate) async fn resolve_faults(
    req: &HttpRequest,
    body: &[u8],
    counters: &Counters,
) -> Result<Active, (FaultSource, FaultSpecError)> {
    let header = req
        .headers()
        .get(faults::HEADER)
        .map(|v| v.to_str().map_err(|_| ()));
    let spec = faults::collect(req.match_info().get("spec"), header, body)?;
    let fault = spec.activate(counters);
    if let Some(latency) = fault.latency {
        actix_web::rt::time::sleep(latency).await;
    }
    Ok(fault)
}

/// A finished body. With body faults the full length is still declared, so a dropped body reads
/// as truncated, as it would from a real upstream.
pub(crate) fn whole(
    mut builder: HttpResponseBuilder,
    fault: &Active,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let body = body.into();
    if fault.shapes_body() {
        let len = u64::try_from(body.len()).unwrap_or(u64::MAX);
        builder.body(SizedStream::new(len, fault.pace_whole(body)))
    } else {
        builder.body(body)
    }
}

/// A streamed body, one chunk per frame, paced by the request's faults.
pub(crate) fn stream(
    mut builder: HttpResponseBuilder,
    fault: &Active,
    frames: Vec<Bytes>,
) -> HttpResponse {
    builder.streaming(fault.pace(frames))
}

/// Percent-decoding for the few raw URL pieces the providers read themselves (Gemini's query,
/// Bedrock's model id segment). With `form`, `+` is a space, as in a query string.
pub(crate) fn percent_decode(text: &str, form: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) if form => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
