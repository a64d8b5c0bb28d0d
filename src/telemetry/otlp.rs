//! The OTLP trace exporter: finished spans ([`Finished`]) encoded as they end ([`Encoded`]),
//! a batch of them wrapped into an `ExportTraceServiceRequest`'s protobuf bytes and sent over
//! gRPC (tonic) or HTTP/protobuf (reqwest), with the `OTEL_EXPORTER_OTLP_*` settings. Both
//! clients run on a current-thread runtime that `otel`'s export thread drives while it sends a
//! batch: the export is that one thread, with no thread of the clients' own (but for looking
//! up an endpoint given as a host name when a connection opens, which tokio does on a
//! blocking thread it starts for that).
//!
//! Why not the OTLP crate's exporter: it converts every span into the generated protobuf
//! structs (a `String` or `Vec` per id, name and attribute) and prost then recomputes nested
//! lengths level by level; with every trace sampled that was most of the export's cost
//! (loadtests/README.md, "Telemetry cost"). The message layout is small and stable, so the
//! encoder here writes it by hand. A span's attributes are encoded as they are set
//! ([`Attributes`]), and the whole span when it ends, on the request thread, into the batch
//! it will be sent in: no `String` or `Value` is made per attribute, nothing made on the
//! request thread is freed on the export thread, and the export thread does no work per span
//! (it copies a batch's bytes once, into the request's body, which over HTTP is the last
//! batch's body back from the client, so no batch allocates one). The resource and the
//! instrumentation scope are encoded once. A unit test decodes the bytes with the protobuf
//! definitions and compares them with the SDK's own conversion of the same spans, field by
//! field and byte for byte. This module owns encoding and transport only: which spans exist
//! and what they carry is `otel`'s.

use bytes::BufMut;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::{Array, InstrumentationScope, Value};
use opentelemetry_sdk::Resource;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The SDK's limit on a span's attributes (more are counted as dropped).
const MAX_ATTRIBUTES: u32 = 128;

/// A span's attributes, written as they are set in the form its OTLP `Span` carries them
/// (repeated `KeyValue attributes = 9`, each `AnyValue` as prost writes it): the export thread
/// copies them whole. Beyond [`MAX_ATTRIBUTES`] they are counted as dropped, as the SDK does.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    bytes: Vec<u8>,
    count: u32,
    dropped: u32,
}

impl Attributes {
    /// Room for about `bytes` of attributes, so setting them does not grow the buffer step
    /// by step.
    pub fn with_capacity(bytes: usize) -> Attributes {
        Attributes {
            bytes: Vec::with_capacity(bytes),
            ..Attributes::default()
        }
    }

    /// A string attribute.
    #[inline(always)]
    pub fn str(&mut self, k: &str, value: &str) {
        // AnyValue { string_value = 1 }
        if self.open(k, field_len(value.len())) {
            put_short_str(&mut self.bytes, key(1, LEN), value);
        }
    }

    /// A string attribute from bytes that are ASCII in practice (a request id): checked as
    /// such, which costs less than checking UTF-8, and written as they are; anything else is
    /// read as UTF-8, lossily.
    pub fn ascii(&mut self, k: &str, value: &[u8]) {
        if !value.is_ascii() {
            return self.str(k, &String::from_utf8_lossy(value));
        }
        if self.open(k, field_len(value.len())) {
            put_short_len(&mut self.bytes, key(1, LEN), value.len());
            self.bytes.extend_from_slice(value);
        }
    }

    /// An integer attribute.
    #[inline(always)]
    pub fn int(&mut self, k: &str, value: i64) {
        // AnyValue { int_value = 3 }
        if self.open(k, 1 + varint_len(value as u64)) {
            self.bytes.push(key(3, 0));
            put_varint(&mut self.bytes, value as u64);
        }
    }

    /// A boolean attribute.
    #[inline(always)]
    pub fn bool(&mut self, k: &str, value: bool) {
        // AnyValue { bool_value = 2 }
        if self.open(k, 2) {
            self.bytes.extend_from_slice(&[key(2, 0), u8::from(value)]);
        }
    }

    /// An attribute holding a list of strings.
    pub fn strs(&mut self, k: &str, values: &[&str]) {
        // AnyValue { array_value = 5 }, ArrayValue { values = 1 }, each an AnyValue string.
        let array: usize = values.iter().map(|v| field_len(field_len(v.len()))).sum();
        if self.open(k, field_len(array)) {
            put_short_len(&mut self.bytes, key(5, LEN), array);
            for v in values {
                put_short_len(&mut self.bytes, key(1, LEN), field_len(v.len()));
                put_short_str(&mut self.bytes, key(1, LEN), v);
            }
        }
    }

    /// Appends `block`'s attributes as if each had been set here in turn: in one copy while
    /// they all fit under [`MAX_ATTRIBUTES`], else one by one up to it (the rest counted as
    /// dropped). A block is written once (a route's or a proxy's attributes, which never
    /// change) and appended to every span that carries them.
    pub fn append(&mut self, block: &Attributes) {
        self.dropped += block.dropped;
        if self.count + block.count <= MAX_ATTRIBUTES {
            self.bytes.extend_from_slice(&block.bytes);
            self.count += block.count;
            return;
        }
        let mut rest = &block.bytes[..];
        while let Some((kv, after)) = split_field(rest) {
            if self.count >= MAX_ATTRIBUTES {
                self.dropped += 1;
            } else {
                self.count += 1;
                self.bytes.extend_from_slice(kv);
            }
            rest = after;
        }
    }

    /// Starts a `KeyValue` whose `AnyValue` body is `any` bytes, up to its value's first byte;
    /// false (and counted as dropped) when the span has no room left.
    // Always inlined, as are the setters that call it: their keys are constants, so the key's
    // bytes are copied as such, with no call to copy a slice of unknown length.
    #[inline(always)]
    fn open(&mut self, k: &str, any: usize) -> bool {
        if self.count >= MAX_ATTRIBUTES {
            self.dropped += 1;
            return false;
        }
        self.count += 1;
        let out = &mut self.bytes;
        // The usual case, a short key and value: every length fits a one-byte varint, and the
        // bytes around the key go in as two small arrays, after one reservation for the whole
        // attribute.
        let short = 2 + k.len() + 2 + any;
        if short < 128 && !k.is_empty() {
            out.reserve(2 + short);
            out.extend_from_slice(&[key(9, LEN), short as u8, key(1, LEN), k.len() as u8]);
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&[key(2, LEN), any as u8]);
            return true;
        }
        let kv = opt_str_len(k) + field_len(any);
        put_len(out, key(9, LEN), kv);
        if !k.is_empty() {
            put_str(out, key(1, LEN), k);
        }
        put_len(out, key(2, LEN), any);
        true
    }
}

/// The first length-delimited field (one-byte key) of `bytes`, and what follows it.
fn split_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut len, mut at) = (0usize, 1);
    loop {
        let b = *bytes.get(at)?;
        len |= usize::from(b & 0x7f) << (7 * (at - 1));
        at += 1;
        if b < 0x80 {
            break;
        }
    }
    let end = at.checked_add(len).filter(|&e| e <= bytes.len())?;
    Some(bytes.split_at(end))
}

/// A span that has ended, as its end encodes it ([`Encoded::push`]).
#[derive(Debug)]
pub struct Finished {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `SpanId::INVALID` for a root span.
    pub parent: SpanId,
    pub parent_is_remote: bool,
    pub flags: TraceFlags,
    /// The W3C `tracestate` header (empty when there is none).
    pub trace_state: String,
    pub name: &'static str,
    pub kind: SpanKind,
    /// Nanoseconds since the Unix epoch ([`nanos`]).
    pub start: u64,
    pub end: u64,
    pub attributes: Attributes,
    pub status: Status,
}

/// Spans encoded as they ended, back to back, each a whole `ScopeSpans.spans` field (its key,
/// length and `Span` message): the middle of a request, which [`Exporter::send`] writes the
/// resource and the scope around. Cleared and reused, it keeps its room.
#[derive(Debug, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    spans: usize,
}

impl Encoded {
    /// Encodes `span` after the others.
    pub fn push(&mut self, span: &Finished) {
        let len = span_len(span);
        self.bytes.reserve(field_len(len));
        put_len(&mut self.bytes, key(2, LEN), len);
        put_span(&mut self.bytes, span);
        self.spans += 1;
    }

    /// How many spans it holds.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Empties it, keeping its room.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans = 0;
    }

    /// Its room, in bytes.
    #[cfg(test)]
    pub fn room(&self) -> usize {
        self.bytes.capacity()
    }
}

/// OTLP's default gRPC endpoint (no path: the service's method is the path).
const GRPC_DEFAULT: &str = "http://localhost:4317";
/// OTLP's default HTTP base; traces go to `/v1/traces` under it.
const HTTP_DEFAULT: &str = "http://localhost:4318";
const HTTP_PATH: &str = "/v1/traces";
const GRPC_METHOD: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`'s default.
const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The trace endpoint as the OTLP exporters read it: the configured one as is, else
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else `OTEL_EXPORTER_OTLP_ENDPOINT` (with
/// `/v1/traces` appended over HTTP), else the protocol's default.
fn endpoint(configured: Option<&str>, grpc: bool) -> String {
    if let Some(e) = configured.filter(|e| !e.is_empty()) {
        return e.to_owned();
    }
    if let Some(e) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return e;
    }
    let base = env("OTEL_EXPORTER_OTLP_ENDPOINT")
        .unwrap_or_else(|| (if grpc { GRPC_DEFAULT } else { HTTP_DEFAULT }).to_owned());
    if grpc {
        base
    } else if base.ends_with('/') {
        format!("{base}{}", &HTTP_PATH[1..])
    } else {
        format!("{base}{HTTP_PATH}")
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds).
fn timeout() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .into_iter()
    .find_map(|v| env(v)?.parse().ok())
    .map_or(TIMEOUT_DEFAULT, Duration::from_millis)
}

/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`, values
/// percent-decoded, empty keys or values skipped.
fn headers() -> Vec<(String, String)> {
    let Some(raw) =
        env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
    else {
        return Vec::new();
    };
    raw.split_terminator(',')
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            let v = percent_decode(v).unwrap_or_else(|| v.to_owned());
            (!k.is_empty() && !v.is_empty()).then(|| (k.to_owned(), v))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let (mut out, bytes) = (Vec::with_capacity(s.len()), s.as_bytes());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Where and how a batch goes.
enum Transport {
    Grpc {
        channel: tonic::transport::Channel,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
    },
}

/// Sends encoded batches; its failures are `otel`'s to count and log.
pub struct Exporter {
    /// A current-thread runtime, driven only by the thread that sends (`otel`'s export
    /// thread, in [`Exporter::send`]): the call and the tasks the client spawned for its
    /// connection run there, while it waits for the answer, and nowhere else. A runtime with
    /// a worker of its own made every batch hop from the export thread to that worker and
    /// back, a few wake-ups per batch on two threads (loadtests/README.md). It is our own
    /// thread's runtime, not one of actix's, on which tonic's calls never complete.
    rt: tokio::runtime::Runtime,
    transport: Transport,
    /// The resource's and scope's part of every request, encoded once ([`Encoder`]); shared
    /// with the gRPC codec, which writes a batch straight into tonic's buffer.
    encoder: Arc<Encoder>,
    /// Where the gRPC codec leaves a batch once it has written it, for [`Exporter::send`] to
    /// hand back, its room kept.
    written: Arc<Mutex<Option<Encoded>>>,
    /// The last OTLP/HTTP body, back from the client once sent, to write the next one into.
    body: Mutex<bytes::BytesMut>,
}

/// The runtime [`Exporter`] sends on.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the OTLP runtime: {err}"))
}

impl Exporter {
    /// OTLP/gRPC to `configured` (or the environment's endpoint).
    pub fn grpc(configured: Option<&str>) -> Result<Exporter, String> {
        let url = endpoint(configured, true);
        if url.starts_with("https:") {
            return Err(format!(
                "OTLP endpoint {url:?}: TLS is not built in (use http://)"
            ));
        }
        let rt = runtime()?;
        let channel = {
            // The channel's buffer task is spawned on our runtime.
            let _guard = rt.enter();
            tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|err| format!("invalid OTLP endpoint {url:?}: {err}"))?
                .timeout(timeout())
                .connect_lazy()
        };
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (k, v) in headers() {
            if let (Ok(k), Ok(v)) = (
                k.to_ascii_lowercase()
                    .parse::<tonic::metadata::MetadataKey<_>>(),
                v.parse(),
            ) {
                metadata.append(k, v);
            }
        }
        Ok(Exporter {
            rt,
            transport: Transport::Grpc { channel, metadata },
            encoder: Arc::default(),
            written: Arc::default(),
            body: Mutex::default(),
        })
    }

    /// OTLP/HTTP with protobuf bodies to `configured` (or the environment's endpoint).
    pub fn http(configured: Option<&str>) -> Result<Exporter, String> {
        let url = endpoint(configured, false);
        reqwest::Url::parse(&url).map_err(|err| format!("invalid OTLP endpoint {url:?}: {err}"))?;
        let client = reqwest::Client::builder()
            .timeout(timeout())
            .build()
            .map_err(|err| format!("cannot build the OTLP/HTTP client: {err}"))?;
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in headers() {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(&v),
            ) {
                map.insert(k, v);
            }
        }
        map.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(Exporter {
            rt: runtime()?,
            transport: Transport::Http {
                client,
                url,
                headers: map,
            },
            encoder: Arc::default(),
            written: Arc::default(),
            body: Mutex::default(),
        })
    }

    fn lock_body(&self) -> std::sync::MutexGuard<'_, bytes::BytesMut> {
        self.body.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encodes the resource and the spans' instrumentation scope once, for every request after.
    pub fn set_resource(&mut self, resource: &Resource, scope: &InstrumentationScope) {
        self.encoder = Arc::new(Encoder::new(resource, scope));
    }

    /// Sends one batch, running the runtime on the calling thread (`otel`'s export thread)
    /// until the collector answers or the timeout passes. `batch` is left as it was given,
    /// its room there to be reused.
    pub fn send(&self, batch: &mut Encoded) -> Result<(), String> {
        self.rt.block_on(async {
            // The connection's tasks ran last during the previous batch: what the collector
            // did since (closed the connection when it restarted) is handled first, so that
            // this batch goes out on a new connection rather than fail on the closed one. A
            // yielding task resumes only after the runtime has read its sockets; the second
            // yield lets the tasks this woke run before the batch is sent.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            match &self.transport {
                Transport::Grpc { channel, metadata } => {
                    let mut grpc = tonic::client::Grpc::new(channel.clone());
                    grpc.ready().await.map_err(|err| err.to_string())?;
                    // Written by the codec, into the buffer tonic sends from: one copy fewer
                    // than a body written first. The codec owns the batch meanwhile and
                    // leaves it in `written` for us to take back.
                    let mut request = tonic::Request::new(Batch {
                        encoder: self.encoder.clone(),
                        spans: std::mem::take(batch),
                        written: self.written.clone(),
                    });
                    *request.metadata_mut() = metadata.clone();
                    let sent = grpc
                        .unary(
                            request,
                            tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_METHOD),
                            Raw,
                        )
                        .await
                        .map(drop)
                        .map_err(|status| format!("{}: {}", status.code(), status.message()));
                    if let Some(back) = self
                        .written
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                    {
                        *batch = back;
                    }
                    sent
                }
                Transport::Http {
                    client,
                    url,
                    headers,
                } => {
                    // Written into the last batch's body, its room kept: a fresh one every
                    // batch grew by reallocation, onto pages the kernel had to clear again.
                    let mut body = std::mem::take(&mut *self.lock_body());
                    body.clear();
                    self.encoder.write(batch, &mut body);
                    let body = body.freeze();
                    let response = client
                        .post(url)
                        .headers(headers.clone())
                        .body(body.clone())
                        .send()
                        .await
                        .map_err(|err| err.to_string())?;
                    let status = response.status();
                    // Read to its end, so that the connection goes back to the pool.
                    let _ = response.bytes().await;
                    // The client let go of the body once it was sent: it comes back whole.
                    if let Ok(back) = body.try_into_mut() {
                        *self.lock_body() = back;
                    }
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!(
                            "HTTP export failed with status code: {}",
                            status.as_u16()
                        ))
                    }
                }
            }
        })
    }
}

/// A batch on its way through the gRPC codec.
struct Batch {
    encoder: Arc<Encoder>,
    spans: Encoded,
    /// Where the codec leaves `spans` once written.
    written: Arc<Mutex<Option<Encoded>>>,
}

/// A gRPC codec that encodes a [`Batch`] and ignores the response's bytes.
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Batch;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Batch;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Batch,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encoder.write(&item.spans, dst);
        *item.written.lock().unwrap_or_else(|e| e.into_inner()) = Some(item.spans);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// Writes `ExportTraceServiceRequest` bytes (opentelemetry-proto's `trace.proto`,
/// `resource.proto`, `common.proto`), proto3 style as prost does: default scalars are left out,
/// a span's `status` is always present. Spans' events and links are not written (the gateway
/// adds none).
#[derive(Default)]
struct Encoder {
    /// `ResourceSpans.resource` and `.schema_url`, whole fields.
    resource: Vec<u8>,
    schema_url: Vec<u8>,
    /// `ScopeSpans.scope` and `.schema_url`, whole fields (every span has the same scope).
    scope: Vec<u8>,
    scope_schema_url: Vec<u8>,
}

// Field keys: (field number << 3) | wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
const LEN: u8 = 2;
const fn key(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

impl Encoder {
    fn new(resource: &Resource, scope: &InstrumentationScope) -> Encoder {
        let mut attrs = Vec::new();
        for (k, v) in resource.iter() {
            put_key_value(&mut attrs, key(1, LEN), k.as_str(), v);
        }
        // Resource { attributes = 1 } as ResourceSpans.resource = 1.
        let mut field = Vec::new();
        put_bytes(&mut field, key(1, LEN), &attrs);
        let mut schema_url = Vec::new();
        if let Some(url) = resource.schema_url().filter(|u| !u.is_empty()) {
            put_bytes(&mut schema_url, key(3, LEN), url.as_bytes());
        }
        // InstrumentationScope as ScopeSpans.scope = 1, its schema URL as ScopeSpans.schema_url = 3.
        let mut scope_field = Vec::new();
        put_len(&mut scope_field, key(1, LEN), scope_len(scope));
        put_scope(&mut scope_field, scope);
        let mut scope_schema_url = Vec::new();
        if let Some(url) = scope.schema_url().filter(|u| !u.is_empty()) {
            put_str(&mut scope_schema_url, key(3, LEN), url);
        }
        Encoder {
            resource: field,
            schema_url,
            scope: scope_field,
            scope_schema_url,
        }
    }

    /// One `ExportTraceServiceRequest` with one `ResourceSpans` holding one `ScopeSpans` with
    /// the batch, as a body of its own (what the tests decode).
    #[cfg(test)]
    fn request(&self, batch: &Encoded) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(batch, &mut out);
        out
    }

    /// [`Encoder::request`] written into `out`, which grows once: the spans are already
    /// encoded, and go in as one copy.
    fn write(&self, batch: &Encoded, out: &mut impl Out) {
        let ss_len = self.scope.len() + batch.bytes.len() + self.scope_schema_url.len();
        let rs_len = self.resource.len() + field_len(ss_len) + self.schema_url.len();
        out.reserve(field_len(rs_len));
        put_len(out, key(1, LEN), rs_len);
        out.put_slice(&self.resource);
        put_len(out, key(2, LEN), ss_len);
        out.put_slice(&self.scope);
        out.put_slice(&batch.bytes);
        out.put_slice(&self.scope_schema_url);
        out.put_slice(&self.schema_url);
    }
}

/// The length of a length-delimited field whose body is `n` bytes (one-byte key).
#[inline]
fn field_len(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

/// A string field's length, or 0 when it is empty (proto3 leaves it out).
#[inline]
fn opt_str_len(s: &str) -> usize {
    if s.is_empty() { 0 } else { field_len(s.len()) }
}

/// `InstrumentationScope { name = 1, version = 2, attributes = 3 }`.
fn scope_len(scope: &InstrumentationScope) -> usize {
    opt_str_len(scope.name())
        + scope.version().map_or(0, opt_str_len)
        + scope
            .attributes()
            .map(|kv| field_len(key_value_len(kv.key.as_str(), &kv.value)))
            .sum::<usize>()
}

fn put_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    if !scope.name().is_empty() {
        put_str(out, key(1, LEN), scope.name());
    }
    if let Some(v) = scope.version().filter(|v| !v.is_empty()) {
        put_str(out, key(2, LEN), v);
    }
    for kv in scope.attributes() {
        put_key_value(out, key(3, LEN), kv.key.as_str(), &kv.value);
    }
}

fn kind(span: &Finished) -> u64 {
    match span.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// A span's status: code (0 unset, 1 ok, 2 error) and message.
fn status(span: &Finished) -> (u64, &str) {
    match &span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    }
}

fn status_len(code: u64, message: &str) -> usize {
    opt_str_len(message) + if code != 0 { 1 + varint_len(code) } else { 0 }
}

/// The length of a `Span` message's body, as [`put_span`] writes it.
fn span_len(span: &Finished) -> usize {
    let (code, message) = status(span);
    let fixed = |t: u64| if t != 0 { 9 } else { 0 };
    field_len(16)
        + field_len(8)
        + opt_str_len(&span.trace_state)
        + if span.parent != SpanId::INVALID {
            field_len(8)
        } else {
            0
        }
        + 2
        + 4
        + opt_str_len(span.name)
        + 1
        + varint_len(kind(span))
        + fixed(span.start)
        + fixed(span.end)
        + span.attributes.bytes.len()
        + if span.attributes.dropped != 0 {
            1 + varint_len(u64::from(span.attributes.dropped))
        } else {
            0
        }
        + field_len(status_len(code, message))
}

/// A `Span` message's body, its fields in the order prost writes them (by number). Fields of
/// known size go in as a few small arrays: each write to the buffer checks its room
/// (a byte's as a slice's), which for a dozen small fields cost more than the fields.
fn put_span(out: &mut impl BufMut, span: &Finished) {
    // trace_id = 1 and span_id = 2: always 16 and 8 bytes.
    let mut ids = [0u8; 28];
    ids[..2].copy_from_slice(&[key(1, LEN), 16]);
    ids[2..18].copy_from_slice(&span.trace_id.to_bytes());
    ids[18..20].copy_from_slice(&[key(2, LEN), 8]);
    ids[20..].copy_from_slice(&span.span_id.to_bytes());
    out.put_slice(&ids);
    if !span.trace_state.is_empty() {
        put_str(out, key(3, LEN), &span.trace_state);
    }
    if span.parent != SpanId::INVALID {
        let mut parent = [0u8; 10];
        parent[..2].copy_from_slice(&[key(4, LEN), 8]);
        parent[2..].copy_from_slice(&span.parent.to_bytes());
        out.put_slice(&parent);
    }
    if !span.name.is_empty() {
        put_str(out, key(5, LEN), span.name);
    }
    // kind = 6 (1 to 5: one byte), start_time = 7 and end_time = 8 (fixed64, left out when 0).
    let mut times = [0u8; 20];
    times[..2].copy_from_slice(&[key(6, 0), kind(span) as u8]);
    let mut n = 2;
    for (field, t) in [(key(7, 1), span.start), (key(8, 1), span.end)] {
        if t != 0 {
            times[n] = field;
            times[n + 1..n + 9].copy_from_slice(&t.to_le_bytes());
            n += 9;
        }
    }
    out.put_slice(&times[..n]);
    // attributes = 9, already encoded.
    out.put_slice(&span.attributes.bytes);
    if span.attributes.dropped != 0 {
        out.put_u8(key(10, 0));
        put_varint(out, u64::from(span.attributes.dropped));
    }
    // flags = 16 (fixed32, a two-byte key; last, as prost writes it): the trace flags, and that
    // the parent's remoteness is known (0x100) and whether it is remote (0x200).
    let mut flags = u32::from(span.flags.to_u8()) | 0x100;
    if span.parent_is_remote {
        flags |= 0x200;
    }
    let flags = flags.to_le_bytes();
    // status = 15 (code 0 to 2: one byte), then flags, in one write when it has no message.
    let (code, message) = status(span);
    if message.is_empty() {
        let mut end = [0u8; 10];
        let n = if code == 0 {
            end[..2].copy_from_slice(&[key(15, LEN), 0]);
            2
        } else {
            end[..4].copy_from_slice(&[key(15, LEN), 2, key(3, 0), code as u8]);
            4
        };
        end[n..n + 2].copy_from_slice(&[0x85, 0x01]);
        end[n + 2..n + 6].copy_from_slice(&flags);
        out.put_slice(&end[..n + 6]);
        return;
    }
    put_len(out, key(15, LEN), status_len(code, message));
    put_str(out, key(2, LEN), message);
    if code != 0 {
        out.put_u8(key(3, 0));
        put_varint(out, code);
    }
    out.put_slice(&[0x85, 0x01]);
    out.put_slice(&flags);
}

/// A time as OTLP writes it: nanoseconds since the Unix epoch (0 before it).
pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `KeyValue { key = 1, value = 2 }`'s body length.
fn key_value_len(k: &str, v: &Value) -> usize {
    opt_str_len(k) + field_len(any_len(v))
}

/// A `KeyValue` as field `field` of its parent.
fn put_key_value(out: &mut Vec<u8>, field: u8, k: &str, v: &Value) {
    put_len(out, field, key_value_len(k, v));
    if !k.is_empty() {
        put_str(out, key(1, LEN), k);
    }
    put_len(out, key(2, LEN), any_len(v));
    put_any_body(out, v);
}

/// `AnyValue`'s body length: one of string = 1, bool = 2, int = 3, double = 4, array = 5
/// (`ArrayValue { values = 1 }`); a oneof member is written even when it is its default.
fn any_len(v: &Value) -> usize {
    match v {
        Value::String(s) => field_len(s.as_str().len()),
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::Array(a) => field_len(array_len(a)),
        _ => 0,
    }
}

fn array_len(a: &Array) -> usize {
    match a {
        Array::Bool(v) => v.len() * field_len(2),
        Array::I64(v) => v.iter().map(|i| field_len(1 + varint_len(*i as u64))).sum(),
        Array::F64(v) => v.len() * field_len(9),
        Array::String(v) => v
            .iter()
            .map(|s| field_len(field_len(s.as_str().len())))
            .sum(),
        _ => 0,
    }
}

fn put_any_body(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => put_str(out, key(1, LEN), s.as_str()),
        Value::Bool(b) => out.extend_from_slice(&[key(2, 0), u8::from(*b)]),
        Value::I64(i) => {
            out.push(key(3, 0));
            put_varint(out, *i as u64);
        }
        Value::F64(f) => {
            out.push(key(4, 1));
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Array(a) => {
            put_len(out, key(5, LEN), array_len(a));
            let mut each = |v: Value| {
                put_len(out, key(1, LEN), any_len(&v));
                put_any_body(out, &v);
            };
            match a {
                Array::Bool(v) => v.iter().for_each(|b| each(Value::Bool(*b))),
                Array::I64(v) => v.iter().for_each(|i| each(Value::I64(*i))),
                Array::F64(v) => v.iter().for_each(|f| each(Value::F64(*f))),
                Array::String(v) => v.iter().for_each(|s| each(Value::String(s.clone()))),
                _ => {}
            }
        }
        // A value kind this encoder does not know: an empty `AnyValue`.
        _ => {}
    }
}

/// Where a batch is encoded: a `Vec` (an OTLP/HTTP body) or tonic's buffer (gRPC), grown once
/// to the batch's length.
trait Out: BufMut {
    fn reserve(&mut self, additional: usize);
}

impl Out for Vec<u8> {
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }
}

impl Out for bytes::BytesMut {
    fn reserve(&mut self, additional: usize) {
        bytes::BytesMut::reserve(self, additional);
    }
}

impl Out for tonic::codec::EncodeBuf<'_> {
    fn reserve(&mut self, additional: usize) {
        tonic::codec::EncodeBuf::reserve(self, additional);
    }
}

// The writers take any `BufMut`: a `Vec` (attributes, HTTP bodies) or tonic's buffer, which
// a gRPC batch is encoded straight into.

#[inline]
fn put_len(out: &mut impl BufMut, field: u8, len: usize) {
    out.put_u8(field);
    put_varint(out, len as u64);
}

/// [`put_len`] into a `Vec`, a short length as one plain byte (no varint loop).
#[inline]
fn put_short_len(out: &mut Vec<u8>, field: u8, len: usize) {
    if len < 128 {
        out.extend_from_slice(&[field, len as u8]);
    } else {
        put_len(out, field, len);
    }
}

/// [`put_str`] into a `Vec`, a short string's length as one plain byte.
#[inline(always)]
fn put_short_str(out: &mut Vec<u8>, field: u8, s: &str) {
    put_short_len(out, field, s.len());
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn put_str(out: &mut impl BufMut, field: u8, s: &str) {
    put_bytes(out, field, s.as_bytes());
}

#[inline]
fn put_bytes(out: &mut impl BufMut, field: u8, b: &[u8]) {
    put_len(out, field, b.len());
    out.put_slice(b);
}

#[inline]
fn put_varint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

#[inline]
fn varint_len(v: u64) -> usize {
    // Most lengths are short: one byte, without the arithmetic.
    if v < 0x80 {
        1
    } else {
        (64 - v.leading_zeros() as usize).div_ceil(7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;
    use std::borrow::Cow;

    fn span(
        name: &'static str,
        kind: SpanKind,
        parent: SpanId,
        remote: bool,
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("valid"),
                SpanId::from_hex("00f067aa0ba902b7").expect("valid"),
                TraceFlags::SAMPLED,
                false,
                TraceState::from_key_value([("vendor", "x1")]).expect("valid"),
            ),
            parent_span_id: parent,
            parent_span_is_remote: remote,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(1_234_567),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: InstrumentationScope::builder("switchyard").build(),
        }
    }

    fn batch() -> Vec<SpanData> {
        vec![
            span(
                "request",
                SpanKind::Server,
                SpanId::from_hex("b7ad6b7169203331").expect("valid"),
                true,
                vec![
                    KeyValue::new("switchyard.request_id", "r-1"),
                    KeyValue::new("gen_ai.request.model", "gpt-4o-mini"),
                    KeyValue::new("switchyard.fallback", false),
                    KeyValue::new("switchyard.retries", 0_i64),
                    KeyValue::new("gen_ai.usage.input_tokens", 300_000_i64),
                    KeyValue::new("negative", -5_i64),
                    KeyValue::new("long", "é".repeat(100)),
                    KeyValue::new(
                        "list",
                        Value::Array(Array::String(vec!["a".into(), "bc".into()])),
                    ),
                ],
                Status::Unset,
            ),
            span(
                "upstream",
                SpanKind::Client,
                SpanId::from_hex("00f067aa0ba902b7").expect("valid"),
                false,
                vec![KeyValue::new("http.response.status_code", 502_i64)],
                Status::error("upstream attempt failed"),
            ),
            span(
                "routing",
                SpanKind::Internal,
                SpanId::INVALID,
                false,
                vec![],
                Status::Ok,
            ),
        ]
    }

    /// The same span as [`Finished`], its attributes set through [`Attributes`].
    fn lean(span: &SpanData) -> Finished {
        let mut attributes = Attributes::default();
        for kv in &span.attributes {
            let k = kv.key.as_str();
            match &kv.value {
                Value::String(v) => attributes.str(k, v.as_str()),
                Value::I64(i) => attributes.int(k, *i),
                Value::Bool(b) => attributes.bool(k, *b),
                Value::Array(Array::String(v)) => {
                    attributes.strs(k, &v.iter().map(|s| s.as_str()).collect::<Vec<_>>());
                }
                other => panic!("the gateway sets no such attribute: {other:?}"),
            }
        }
        let Cow::Borrowed(name) = span.name else {
            panic!("span names are static")
        };
        let sc = &span.span_context;
        Finished {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
            parent: span.parent_span_id,
            parent_is_remote: span.parent_span_is_remote,
            flags: sc.trace_flags(),
            trace_state: sc.trace_state().header(),
            name,
            kind: span.span_kind.clone(),
            start: nanos(span.start_time),
            end: nanos(span.end_time),
            attributes,
            status: span.status.clone(),
        }
    }

    /// The spans as a span's end encodes them.
    fn encoded(spans: &[SpanData]) -> Encoded {
        let mut out = Encoded::default();
        for span in spans {
            out.push(&lean(span));
        }
        assert_eq!(out.len(), spans.len());
        out
    }

    #[test]
    fn the_hand_encoded_request_decodes_to_what_the_sdks_conversion_builds() {
        // The resource is encoded by the generic `Value` writer: every kind it knows.
        let resource = Resource::builder()
            .with_service_name("switchyard-test")
            .with_attribute(KeyValue::new("service.version", "1.2.3"))
            .with_attribute(KeyValue::new("ratio", 0.25))
            .with_attribute(KeyValue::new("flag", true))
            .with_attribute(KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1]))))
            .build();
        let scope = InstrumentationScope::builder("switchyard").build();
        let encoded = Encoder::new(&resource, &scope).request(&encoded(&batch()));
        let decoded = ExportTraceServiceRequest::decode(encoded.as_slice()).expect("decodes");
        let expected = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                batch(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(decoded.resource_spans.len(), 1);
        let (got, want) = (&decoded.resource_spans[0], &expected.resource_spans[0]);
        assert_eq!(got.resource, want.resource);
        assert_eq!(got.schema_url, want.schema_url);
        assert_eq!(got.scope_spans.len(), 1);
        assert_eq!(got.scope_spans[0].scope, want.scope_spans[0].scope);
        assert_eq!(got.scope_spans[0].spans.len(), 3);
        for (g, w) in got.scope_spans[0]
            .spans
            .iter()
            .zip(&want.scope_spans[0].spans)
        {
            assert_eq!(g, w, "span {}", w.name);
        }
        assert_eq!(decoded, expected);
        // Byte for byte too: the same fields in the same order as prost writes them.
        assert_eq!(encoded, expected.encode_to_vec());
    }

    #[test]
    fn a_batch_written_after_other_bytes_is_the_same_request() {
        // tonic's buffer may hold bytes before the batch (the gRPC frame header).
        let resource = Resource::builder().with_service_name("s").build();
        let encoder = Encoder::new(
            &resource,
            &InstrumentationScope::builder("switchyard").build(),
        );
        let spans = encoded(&batch());
        let mut out = vec![7u8; 5];
        encoder.write(&spans, &mut out);
        assert_eq!(&out[..5], &[7u8; 5]);
        assert_eq!(out[5..], encoder.request(&spans));
        let one = encoded(&batch()[..1]);
        assert_ne!(encoder.request(&one), encoder.request(&spans));
        // An OTLP/HTTP body, written into the last one's room.
        let mut body = bytes::BytesMut::with_capacity(64);
        body.extend_from_slice(b"old");
        body.clear();
        encoder.write(&spans, &mut body);
        assert_eq!(body[..], encoder.request(&spans)[..]);
    }

    #[test]
    fn a_sent_body_comes_back_with_its_room() {
        // What `Exporter::send` relies on: once the client has dropped its clone, the frozen
        // body turns back into the same buffer.
        let mut body = bytes::BytesMut::with_capacity(100_000);
        body.extend_from_slice(&[1; 90_000]);
        let (room, at) = (body.capacity(), body.as_ptr());
        let frozen = body.freeze();
        let sent = frozen.clone();
        let frozen = frozen
            .try_into_mut()
            .expect_err("the client still holds it");
        drop(sent);
        let back = frozen.try_into_mut().expect("unique again");
        assert_eq!(
            (back.capacity(), back.as_ptr(), back.len()),
            (room, at, 90_000)
        );
    }

    #[test]
    fn long_and_short_attributes_are_written_as_prost_writes_them() {
        // Lengths on either side of one-byte varints, for the key, the value and the whole.
        for (k, v) in [
            (1, 1),
            (1, 100),
            (1, 120),
            (1, 127),
            (1, 128),
            (100, 20),
            (127, 1),
            (130, 1),
            (1, 300),
        ] {
            let (k, v) = ("k".repeat(k), "v".repeat(v));
            let mut a = Attributes::default();
            a.str(&k, &v);
            a.int(&k, 300);
            a.bool(&k, true);
            a.strs(&k, &[&v]);
            let mut want = Vec::new();
            let list = Value::Array(Array::String(vec![v.clone().into()]));
            for value in [
                Value::from(v.clone()),
                Value::I64(300),
                Value::Bool(true),
                list,
            ] {
                put_key_value(&mut want, key(9, LEN), &k, &value);
            }
            assert_eq!(a.bytes, want, "key {} value {}", k.len(), v.len());
        }
    }

    #[test]
    fn ascii_attributes_are_string_attributes() {
        for value in [&b"req_0123"[..], &[b'r'; 200], "é".as_bytes(), b"a\xffb"] {
            let (mut a, mut b) = (Attributes::default(), Attributes::default());
            a.ascii("request_id", value);
            b.str("request_id", &String::from_utf8_lossy(value));
            assert_eq!(a.bytes, b.bytes, "{value:?}");
            assert_eq!(a.count, 1);
        }
    }

    #[test]
    fn an_appended_block_is_its_attributes_set_in_turn() {
        let mut block = Attributes::default();
        block.str("route", "mini");
        block.str("long", &"v".repeat(200));
        block.int("n", 300);
        block.bool("b", true);
        assert_eq!(block.count, 4);
        // Far from the limit (one copy), and across it (one by one, the rest dropped).
        for before in [0, 1, 125, 126, 128] {
            let (mut a, mut b) = (Attributes::default(), Attributes::default());
            for i in 0..before {
                a.int("i", i);
                b.int("i", i);
            }
            a.append(&block);
            b.str("route", "mini");
            b.str("long", &"v".repeat(200));
            b.int("n", 300);
            b.bool("b", true);
            assert_eq!(a.bytes, b.bytes, "after {before}");
            assert_eq!((a.count, a.dropped), (b.count, b.dropped), "after {before}");
        }
        let mut a = Attributes::default();
        (0..126).for_each(|i| a.int("i", i));
        a.append(&block);
        assert_eq!((a.count, a.dropped), (128, 2));
    }

    #[test]
    fn attributes_beyond_the_limit_are_counted_as_dropped() {
        let mut a = Attributes::default();
        for i in 0..130 {
            a.int("n", i);
        }
        assert_eq!((a.count, a.dropped), (128, 2));
        // Each `n = i` (i < 128) is 9 bytes: field key and length, `n`'s field (3), the value's (4).
        assert_eq!(a.bytes.len(), 128 * 9);
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn endpoints_follow_the_otlp_rules() {
        assert_eq!(endpoint(Some("http://c:1/x"), false), "http://c:1/x");
        assert_eq!(endpoint(Some("http://c:1"), true), "http://c:1");
    }

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%2Cc").as_deref(), Some("a b,c"));
        assert_eq!(percent_decode("bad%2"), None);
    }
}
