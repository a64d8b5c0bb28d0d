//! An OTLP/gRPC trace receiver cheap enough to share the load generator's core, for measuring
//! what trace export costs the gateway at full load (`ab.py`'s and `callgrind.sh`'s `{grpc}`).
//!
//! The Python receiver (`tests/otlp/receiver.py`, the integration tests' collector, which
//! decodes every span with the protocol's official bindings) spends about 4.7 µs of CPU a span,
//! enough to slow the load generator and the emulator beside it: a throughput measured against
//! it measures the receiver too. This one answers `TraceService/Export` over HTTP/2 with `h2`
//! directly and walks each request's protobuf structure down to its spans without building
//! them: `ExportTraceServiceRequest.resource_spans` (1) → `ResourceSpans.scope_spans` (2) →
//! `ScopeSpans.spans` (2), every field's tag, wire type and length checked. What the spans hold
//! is the integration tests' business (`tests/traces.rs`, against the Python receiver). A
//! request that does not walk is counted and answered with gRPC status 3 (`INVALID_ARGUMENT`).
//!
//! Run: `target/release/examples/otlp-sink`; it prints `listening grpc=PORT`, and the number of
//! spans received (`spans N`, with `malformed N` when there were any) when its standard input
//! closes, as `receiver.py --count-only` does.

use bytes::{Buf, Bytes, BytesMut};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

static SPANS: AtomicU64 = AtomicU64::new(0);
static MALFORMED: AtomicU64 = AtomicU64::new(0);

/// The spans in one gRPC request body (length-prefixed messages), or `None` when it is not a
/// well-formed `ExportTraceServiceRequest`.
fn spans(mut body: &[u8]) -> Option<u64> {
    let mut n = 0;
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return None; // short frame, or compressed (the gateway never compresses)
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let message = body.get(5..5 + len)?;
        // resource_spans (1) → scope_spans (2) → spans (2).
        for resource in fields(message, 1)? {
            for scope in fields(resource, 2)? {
                n += fields(scope, 2)?.len() as u64;
            }
        }
        body.advance(5 + len);
    }
    Some(n)
}

/// The values of the length-delimited field `wanted` in `message`, every other field skipped by
/// its wire type; `None` when the message is not well formed.
fn fields(mut message: &[u8], wanted: u32) -> Option<Vec<&[u8]>> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut out = Vec::new();
    while !message.is_empty() {
        let (tag, wire) = decode_key(&mut message).ok()?;
        match wire {
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut message).ok()?).ok()?;
                if tag == wanted {
                    out.push(message.get(..len)?);
                }
                message = message.get(len..)?;
            }
            WireType::Varint => {
                decode_varint(&mut message).ok()?;
            }
            WireType::SixtyFourBit => message = message.get(8..)?,
            WireType::ThirtyTwoBit => message = message.get(4..)?,
            WireType::StartGroup | WireType::EndGroup => return None,
        }
    }
    Some(out)
}

async fn export(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let mut body = request.into_body();
    let mut buf = BytesMut::new();
    while let Some(data) = body.data().await {
        let Ok(data) = data else { return };
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
    }
    let status = match spans(&buf) {
        Some(n) => {
            SPANS.fetch_add(n, Ordering::Relaxed);
            "0"
        }
        None => {
            MALFORMED.fetch_add(1, Ordering::Relaxed);
            "3"
        }
    };
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("a static response head");
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    // An empty `ExportTraceServiceResponse`: an uncompressed frame of length 0.
    let _ = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let _ = send.send_trailers(trailers);
}

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    println!("listening grpc={}", listener.local_addr()?.port());
    rt.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                // Flow-control windows of the size a collector's gRPC server grows to (grpc-go
                // and grpc-core size theirs by the bandwidth-delay product): with h2's 64 KiB
                // default, a batch of 512 spans (some 150 KB) would wait for window updates.
                let Ok(mut conn) = h2::server::Builder::new()
                    .initial_window_size(1 << 20)
                    .initial_connection_window_size(4 << 20)
                    .handshake(socket)
                    .await
                else {
                    return;
                };
                while let Some(Ok((request, respond))) = conn.accept().await {
                    tokio::spawn(export(request, respond));
                }
            });
        }
    });
    // Serve until standard input closes, on this thread's runtime.
    let (done, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = done.send(());
    });
    let _ = rt.block_on(wait);
    println!("spans {}", SPANS.load(Ordering::Relaxed));
    let malformed = MALFORMED.load(Ordering::Relaxed);
    if malformed > 0 {
        println!("malformed {malformed}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    #[test]
    fn counts_the_spans_the_official_encoder_wrote() {
        let span = |name: &str| Span {
            name: name.into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Span::default()
        };
        let scope = |k: usize| ScopeSpans {
            spans: (0..k).map(|i| span(&format!("s{i}"))).collect(),
            ..ScopeSpans::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(3), scope(0)],
                    ..ResourceSpans::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(2)],
                    ..ResourceSpans::default()
                },
            ],
        };
        let message = request.encode_to_vec();
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        assert_eq!(spans(&body), Some(5));
        let twice = [body.clone(), body.clone()].concat();
        assert_eq!(spans(&twice), Some(10));
        assert_eq!(spans(&body[..body.len() - 1]), None);
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(spans(&compressed), None);
    }
}
