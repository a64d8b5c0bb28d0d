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
    /// The trace id in `traceparent` when the gateway started the trace (`None`: the caller's,
    /// in `remote_parent`), and the gateway span's id, kept as numbers so that the exported
    /// span does not read them back from the hex.
    pub trace_id: Option<u128>,
    pub span_id: u64,
    /// The request's exported server span (decided once, when it starts; empty with export
    /// off). An unsampled request builds no OTel span at all, and its `traceparent` carries
    /// flags with the sampled bit clear.
    pub trace: super::otel::Trace,
}

impl RequestContext {
    /// Reads or creates the request id and trace context from incoming headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get("x-request-id")
            .filter(|v| is_sane_request_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(|| {
                let mut id = String::with_capacity(36);
                id.push_str("req_");
                push_hex(&mut id, fastrand::u128(..), 32);
                HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
                    .unwrap_or(HeaderValue::from_static("req_unknown"))
            });
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let mut traceparent = String::with_capacity(55);
        traceparent.push_str("00-");
        let trace_id = match parent {
            Some((trace_id, _, _)) => {
                traceparent.push_str(trace_id);
                None
            }
            None => {
                let id = fastrand::u128(1..);
                push_hex(&mut traceparent, id, 32);
                Some(id)
            }
        };
        traceparent.push('-');
        let span_id = fastrand::u64(1..);
        push_hex(&mut traceparent, u128::from(span_id), 16);
        traceparent.push('-');
        traceparent.push_str(parent.map_or("01", |(_, _, flags)| flags));
        Self {
            request_id,
            traceparent,
            remote_parent: parent.map(|(t, s, f)| (t.to_owned(), s.to_owned(), f.to_owned())),
            trace_id,
            span_id,
            trace: super::otel::Trace::default(),
        }
    }
}

fn is_sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
}

/// Appends the low `digits` hex digits of `v`, lower case and zero-padded (what `{:032x}`
/// writes, without the formatting machinery: this runs for every request).
fn push_hex(out: &mut String, v: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let buf = &mut buf[..digits];
    for (i, digit) in buf.iter_mut().rev().enumerate() {
        *digit = HEX[((v >> (4 * i)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(buf).unwrap_or_default());
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
    #[test]
    fn push_hex_writes_what_the_formatter_writes() {
        for v in [
            0u128,
            1,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            0x0f00_0000_0000_0000_0000_0000_0000_00e1,
        ] {
            let (mut a, mut b) = (String::new(), String::new());
            super::push_hex(&mut a, v, 32);
            super::push_hex(&mut b, v & u128::from(u64::MAX), 16);
            assert_eq!(a, format!("{v:032x}"));
            assert_eq!(b, format!("{:016x}", v & u128::from(u64::MAX)));
        }
    }

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
    fn the_kept_ids_are_the_ones_in_the_traceparent() {
        let c = ctx(&[]);
        let id = c.trace_id.expect("a new trace");
        assert_eq!(c.traceparent, format!("00-{id:032x}-{:016x}-01", c.span_id));
        let c = ctx(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(c.trace_id, None);
        assert_eq!(&c.traceparent[36..52], format!("{:016x}", c.span_id));
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
