//! The identity of one request: its request id and its W3C trace context.
//!
//! The request id is the client's `x-request-id` when it sent a sane one, else a new one. The
//! trace context continues the client's `traceparent` (same trace id, flags kept) with a new
//! span id for the gateway, or starts a new trace; the same `traceparent` goes upstream and
//! back to the client so one trace ties client, gateway and provider together.

use actix_web::http::header::{HeaderMap, HeaderValue};

/// Per-request identity, stored in the request's extensions by the HTTP layer.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    /// The gateway span's `traceparent`.
    pub traceparent: String,
    /// The caller's `traceparent` as `(trace id, parent span id, flags)`, when it sent a valid
    /// one: the parent of the gateway's server span when traces are exported.
    pub remote_parent: Option<(String, String, String)>,
    /// Whether this request's trace is exported (decided once, when its server span starts;
    /// always false with export off). An unsampled request builds no OTel span at all, and
    /// its `traceparent` carries flags with the sampled bit clear.
    pub sampled: bool,
}

impl RequestContext {
    /// Reads or creates the request id and trace context from incoming headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get("x-request-id")
            .filter(|v| is_sane_request_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_str(&format!("req_{:032x}", fastrand::u128(..)))
                    .unwrap_or(HeaderValue::from_static("req_unknown"))
            });
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let span_id = nonzero_hex64();
        let traceparent = match parent {
            Some((trace_id, _, flags)) => format!("00-{trace_id}-{span_id}-{flags}"),
            None => format!("00-{}-{span_id}-01", nonzero_hex128()),
        };
        Self {
            request_id,
            traceparent,
            remote_parent: parent.map(|(t, s, f)| (t.to_owned(), s.to_owned(), f.to_owned())),
            sampled: false,
        }
    }
}

fn is_sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
}

fn nonzero_hex64() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

fn nonzero_hex128() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

/// `(trace_id, parent_id, flags)` of a valid version-00 `traceparent`.
fn parse_traceparent(v: &str) -> Option<(&str, &str, &str)> {
    let mut parts = v.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && trace_id != "0".repeat(32)
        && hex(parent_id, 16)
        && parent_id != "0".repeat(16)
        && hex(flags, 2);
    valid.then_some((trace_id, parent_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&'static str, &'static str)]) -> RequestContext {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                actix_web::http::header::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            );
        }
        RequestContext::from_headers(&h)
    }

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let c = ctx(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert!(
            c.traceparent
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(c.traceparent.ends_with("-01"));
        assert!(!c.traceparent.contains("00f067aa0ba902b7"));
    }

    #[test]
    fn starts_a_new_trace_for_invalid_parents() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                actix_web::http::header::HeaderName::from_static("traceparent"),
                HeaderValue::from_static(bad),
            );
            let c = RequestContext::from_headers(&h);
            assert_eq!(c.traceparent.len(), 55, "{bad}");
            assert!(!c.traceparent.contains("4bf92f35"), "{bad}");
        }
    }

    #[test]
    fn echoes_sane_request_ids_only() {
        assert_eq!(ctx(&[("x-request-id", "abc-123")]).request_id, "abc-123");
        assert!(
            ctx(&[])
                .request_id
                .to_str()
                .unwrap_or("")
                .starts_with("req_")
        );
    }
}
