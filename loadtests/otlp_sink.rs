//! An OTLP/gRPC trace receiver cheap enough to share the load generator's core, for measuring
//! what trace export costs the gateway at full load (`ab.py`'s and `callgrind.sh`'s `{grpc}`).
//!
//! The Python receiver (`tests/otlp/receiver.py`, the integration tests' collector) spends
//! enough CPU on every batch to slow the load generator and the emulator beside it, so a
//! throughput measured against it measures the receiver too. This one answers
//! `TraceService/Export` over HTTP/2 with `h2` directly and decodes each request with the
//! protocol's own definitions (`opentelemetry-proto`), so a malformed export is still an error,
//! counted and answered with gRPC status 3 (`INVALID_ARGUMENT`).
//!
//! Run: `target/release/examples/otlp-sink`; it prints `listening grpc=PORT`, and the number of
//! spans received (`spans N`, with `malformed N` when there were any) when its standard input
//! closes, as `receiver.py --count-only` does.

use bytes::{Buf, Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

static SPANS: AtomicU64 = AtomicU64::new(0);
static MALFORMED: AtomicU64 = AtomicU64::new(0);

/// The spans in one gRPC request body (length-prefixed messages), or `None` when it does not
/// decode.
fn spans(mut body: &[u8]) -> Option<u64> {
    let mut n = 0;
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return None; // short frame, or compressed (the gateway never compresses)
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let message = body.get(5..5 + len)?;
        let request = ExportTraceServiceRequest::decode(message).ok()?;
        n += request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum::<u64>();
        body.advance(5 + len);
    }
    Some(n)
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
                let Ok(mut conn) = h2::server::handshake(socket).await else {
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
