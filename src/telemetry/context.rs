//! The identity of one request: its request id and its W3C trace context.
//!
//! The request id is the client's `x-request-id` when it sent a sane one, else a new one. The
//! trace context continues the client's `traceparent` (same trace id, flags kept) with a new
//! span id for the gateway, or starts a new trace; the same `traceparent` goes upstream and
//! back to the client so one trace ties client, gateway and provider together.

use actix_web::http::header::{HeaderMap, HeaderValue};

use super::otel;

/// Per-request identity, stored in the request's extensions by the HTTP layer.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    /// The gateway span's ids, and the caller's parent span when it sent a valid
    /// `traceparent` (whose trace id the gateway's span then continues).
    pub ids: TraceIds,
    /// `00-<trace id>-<gateway span id>-<flags>`: what goes back to the client and upstream.
    pub traceparent: HeaderValue,
    /// The request's exported server span (decided once, when it starts; empty with export
    /// off). An unsampled request builds no OTel span at all, and its `traceparent` carries
    /// flags with the sampled bit clear.
    pub trace: otel::Trace,
}

/// A request's trace ids, as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// The caller's trace id when it sent one, else a new one.
    pub trace: [u8; 16],
    /// The gateway's own span, new for every request.
    pub span: [u8; 8],
    /// The caller's `(parent span id, flags)`.
    pub parent: Option<([u8; 8], u8)>,
}

impl RequestContext {
    /// Reads or creates the request id and trace ids from incoming headers, and starts the
    /// request's trace: the sampler decides once whether it is exported, which sets the
    /// `traceparent`'s flags.
    pub fn start(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get("x-request-id")
            .filter(|v| is_sane_request_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(|| {
                let mut id = *b"req_00000000000000000000000000000000";
                otel::put_hex(&mut id[4..], &fastrand::u128(..).to_be_bytes());
                HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("req_unknown"))
            });
        let caller = headers
            .get("traceparent")
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let ids = TraceIds {
            trace: caller.map_or_else(|| fastrand::u128(1..).to_be_bytes(), |c| c.0),
            span: fastrand::u64(1..).to_be_bytes(),
            parent: caller.map(|(_, span, flags)| (span, flags)),
        };
        let (trace, flags) = otel::start_request(&ids, request_id.as_bytes());
        Self {
            traceparent: otel::traceparent_header(&ids.trace, &ids.span, flags),
            request_id,
            ids,
            trace,
        }
    }
}

/// A request id's bytes as text, as `String::from_utf8_lossy` makes it. An id is ASCII (a
/// sane caller's or one of ours), so it is checked with `from_utf8`'s word-at-a-time ASCII
/// path; the lossy conversion walks it byte by byte, twice a request.
pub fn id_text(id: &[u8]) -> String {
    match std::str::from_utf8(id) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(id).into_owned(),
    }
}

fn is_sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
}

/// `(trace id, parent span id, flags)` of a valid version-00 `traceparent` (lower-case hex,
/// neither id all zeros).
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = v.trim_ascii();
    let lower = v.iter().all(|b| !b.is_ascii_uppercase());
    let valid = v.len() == 55 && lower && v.starts_with(b"00-") && v[35] == b'-' && v[52] == b'-';
    if !valid {
        return None;
    }
    let trace = otel::from_hex::<16>(&v[3..35])?;
    let parent = otel::from_hex::<8>(&v[36..52])?;
    let [flags] = otel::from_hex::<1>(&v[53..55])?;
    (trace != [0; 16] && parent != [0; 8]).then_some((trace, parent, flags))
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
        RequestContext::start(&h)
    }

    fn tp(c: &RequestContext) -> &str {
        c.traceparent.to_str().expect("ASCII")
    }

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let c = ctx(&[(
            "traceparent",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03 ",
        )]);
        assert_eq!(
            c.ids.parent,
            Some((0x00f0_67aa_0ba9_02b7_u64.to_be_bytes(), 3))
        );
        assert_eq!(
            c.ids.trace,
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128.to_be_bytes()
        );
        // Export off: the caller's flags are kept.
        assert_eq!(
            tp(&c),
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-03",
                u64::from_be_bytes(c.ids.span)
            )
        );
        assert_ne!(c.ids.span, c.ids.parent.expect("parent").0);
    }

    #[test]
    fn a_new_trace_names_its_ids_in_the_traceparent() {
        let c = ctx(&[]);
        assert_eq!(c.ids.parent, None);
        assert_eq!(
            tp(&c),
            format!(
                "00-{:032x}-{:016x}-01",
                u128::from_be_bytes(c.ids.trace),
                u64::from_be_bytes(c.ids.span)
            )
        );
        assert_ne!(c.ids.trace, [0; 16]);
        assert_ne!(c.ids.span, [0; 8]);
    }

    #[test]
    fn starts_a_new_trace_for_invalid_parents() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            let c = ctx(&[("traceparent", bad)]);
            assert_eq!(c.ids.parent, None, "{bad}");
            assert_eq!(tp(&c).len(), 55, "{bad}");
            assert!(!tp(&c).contains("4bf92f35"), "{bad}");
        }
    }

    #[test]
    fn id_text_is_the_lossy_conversion() {
        assert_eq!(id_text(b"req_0123abcd"), "req_0123abcd");
        assert_eq!(id_text(b""), "");
        assert_eq!(id_text(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn echoes_sane_request_ids_only() {
        assert_eq!(ctx(&[("x-request-id", "abc-123")]).request_id, "abc-123");
        let own = ctx(&[("x-request-id", "a b")]).request_id;
        let own = own.to_str().expect("ASCII");
        assert_eq!(own.len(), 36, "{own}");
        assert!(own.starts_with("req_"), "{own}");
        assert!(
            own[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
