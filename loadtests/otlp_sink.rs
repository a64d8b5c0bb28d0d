//! An OTLP trace receiver (gRPC and HTTP/protobuf) cheap enough to share the load generator's
//! core, for measuring what trace export costs the gateway at full load (`ab.py`'s `{grpc}` and
//! `{http}`).
//!
//! The Python receiver (`tests/otlp/receiver.py`, the integration tests' collector, which
//! decodes every span with the protocol's official bindings) spends about 4.7 µs of CPU a span,
//! enough to slow the load generator and the emulator beside it: a throughput measured against
//! it measures the receiver too. This one answers `TraceService/Export` over HTTP/2 with `h2`
//! directly, and `POST /v1/traces` (OTLP/HTTP with a protobuf body, the gateway's default
//! protocol) over HTTP/1.1 read by hand, and walks each request's protobuf structure down to its
//! spans without building them: `ExportTraceServiceRequest.resource_spans` (1) →
//! `ResourceSpans.scope_spans` (2) → `ScopeSpans.spans` (2), every field's tag, wire type and
//! length checked. What the spans hold is the integration tests' business (`tests/traces.rs`,
//! against the Python receiver). A request that does not walk is counted and answered with
//! gRPC status 3 (`INVALID_ARGUMENT`), or HTTP 400.
//!
//! Run: `target/release/examples/otlp-sink`; it prints `listening grpc=PORT http=PORT`, and the
//! number of spans received (`spans N`, with `malformed N` when there were any) when its
//! standard input closes, as `receiver.py --count-only` does, and their requests' bytes
//! (`bytes N`: the `ExportTraceServiceRequest`s, without gRPC's or HTTP's framing).

use bytes::{Buf, Bytes, BytesMut};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SPANS: AtomicU64 = AtomicU64::new(0);
static MALFORMED: AtomicU64 = AtomicU64::new(0);
/// The bytes of the well-formed `ExportTraceServiceRequest`s received (no gRPC or HTTP framing).
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The spans in one gRPC request body (length-prefixed messages), or `None` when it is not a
/// well-formed `ExportTraceServiceRequest`.
fn spans(mut body: &[u8]) -> Option<u64> {
    let mut n = 0;
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return None; // short frame, or compressed (the gateway never compresses)
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        n += message_spans(body.get(5..5 + len)?)?;
        body.advance(5 + len);
    }
    Some(n)
}

/// The spans in one `ExportTraceServiceRequest`, or `None` when it is not well formed.
fn message_spans(message: &[u8]) -> Option<u64> {
    let mut n = 0;
    // resource_spans (1) → scope_spans (2) → spans (2).
    for resource in fields(message, 1)? {
        for scope in fields(resource, 2)? {
            n += fields(scope, 2)?.len() as u64;
        }
    }
    BYTES.fetch_add(message.len() as u64, Ordering::Relaxed);
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

/// The longest request head read (a collector's limit is of this order).
const MAX_HEAD: usize = 16 * 1024;
/// The longest body read: OTLP's usual limit on a request.
const MAX_BODY: usize = 16 << 20;

/// One HTTP/1.1 connection of OTLP/HTTP requests, kept open as long as the client keeps it.
/// Only what an exporter sends is understood: `POST /v1/traces` with a `content-length` body;
/// anything else closes the connection after an error answer.
async fn http_connection(mut socket: tokio::net::TcpStream) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        let head_end = loop {
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
            return;
        };
        let post = head.starts_with("POST /v1/traces ");
        let length = head.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        });
        let Some(length) = length.filter(|n| post && *n <= MAX_BODY) else {
            let _ = socket
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        while buf.len() < head_end + length {
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        // An empty `ExportTraceServiceResponse` is an empty protobuf body.
        let answer: &[u8] = match message_spans(&buf[head_end..head_end + length]) {
            Some(n) => {
                SPANS.fetch_add(n, Ordering::Relaxed);
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
            }
            None => {
                MALFORMED.fetch_add(1, Ordering::Relaxed);
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"
            }
        };
        buf.advance(head_end + length);
        if socket.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let http = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    println!(
        "listening grpc={} http={}",
        listener.local_addr()?.port(),
        http.local_addr()?.port()
    );
    rt.spawn(async move {
        while let Ok((socket, _)) = http.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(http_connection(socket));
        }
    });
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
    println!("bytes {}", BYTES.load(Ordering::Relaxed));
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

    /// Two requests on one kept-alive connection, the second sent in two parts, then one that
    /// does not walk: two 200s, one 400, and the first two's spans counted.
    #[test]
    fn answers_otlp_http_requests_on_a_kept_connection() {
        let span = Span {
            name: "s".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..Span::default()
        };
        let message = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span.clone(), span.clone(), span],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
        .encode_to_vec();
        let post = |body: &[u8]| {
            let mut r = format!(
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            r
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let answers = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            let addr = listener.local_addr().expect("its address");
            tokio::spawn(async move {
                let (socket, _) = listener.accept().await.expect("a connection");
                http_connection(socket).await;
            });
            let mut client = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            let first = post(&message);
            let (a, b) = first.split_at(first.len() - 7);
            client.write_all(&post(&message)).await.expect("sent");
            client.write_all(a).await.expect("sent");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            client.write_all(b).await.expect("sent");
            client
                .write_all(&post(&message[..message.len() - 1]))
                .await
                .expect("sent");
            let mut answers = String::new();
            let mut buf = vec![0; 4096];
            while answers.matches("HTTP/1.1").count() < 3 {
                let n = client.read(&mut buf).await.expect("read");
                assert!(n > 0, "the sink closed early: {answers:?}");
                answers.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            answers
        });
        let statuses: Vec<&str> = answers
            .lines()
            .filter(|l| l.starts_with("HTTP/1.1"))
            .collect();
        assert_eq!(
            statuses,
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 400 Bad Request"
            ]
        );
        assert_eq!(SPANS.load(Ordering::Relaxed), 6);
        assert_eq!(MALFORMED.load(Ordering::Relaxed), 1);
    }
}
