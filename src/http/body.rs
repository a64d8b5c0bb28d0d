//! Reading a request body under the size limit and a quiet-period deadline.
//!
//! A declared `Content-Length` over the limit is refused before reading anything; a body that
//! grows past it while streaming in is refused as soon as it does (chunked bodies included).
//! Both give the OpenAI-shaped 413. A body that stops arriving for `idle` gets a 408, so a
//! client that sends headers and then stalls cannot hold a connection (and its buffers)
//! forever: actix-web bounds only the header read. A `Content-Encoding` other than identity is
//! refused with a 415 rather than parsed as if it were plain JSON.

use crate::error::GatewayError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::time::Duration;

/// How much of a body is read, and how patiently.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// Longest silence between two pieces of the body.
    pub idle: Duration,
}

/// The whole body, or 413 past the size limit, 408 after a quiet period, 415 when encoded.
pub async fn read_limited(
    mut payload: web::Payload,
    headers: &HeaderMap,
    limits: &BodyLimits,
) -> Result<Bytes, GatewayError> {
    for encoding in headers.get_all(header::CONTENT_ENCODING) {
        let value = String::from_utf8_lossy(encoding.as_bytes());
        if !value.trim().eq_ignore_ascii_case("identity") {
            return Err(GatewayError::UnsupportedEncoding {
                encoding: value.into_owned(),
            });
        }
    }
    let limit = limits.max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    loop {
        let next = actix_web::rt::time::timeout(limits.idle, payload.next())
            .await
            .map_err(|_| GatewayError::BodyTimeout {
                secs: limits.idle.as_secs(),
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|err| {
            GatewayError::invalid(
                format!("The request body could not be read: {err}"),
                None,
                None,
            )
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
