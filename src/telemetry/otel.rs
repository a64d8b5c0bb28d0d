//! OpenTelemetry trace export over OTLP (gRPC or HTTP/protobuf), off unless configured.
//!
//! The OTel spans are built here, where the gateway knows their fields; the `tracing` spans are
//! for log lines only, and the log subscriber has no export layer. A request's exported spans
//! hang off its [`Trace`] (kept in its `RequestContext`): the server span `request` (its parent
//! is the caller's `traceparent` when there is one), with children for routing, each upstream
//! attempt (whose context goes upstream as `traceparent`) and a stream's tail until its last
//! byte. A span ends when the last clone of its [`Trace`] is dropped: the server span with the
//! response's last byte (the access record's body holds it), an attempt with the upstream's
//! last byte (the pump holds it). GenAI attributes are set through the helpers here; log
//! events, which may quote an upstream's error body, are never exported, and nothing here reads
//! a key or a prompt.
//!
//! Sampling is decided once per request, when its server span starts ([`start_request`]): the
//! configured sampler (`OTEL_TRACES_SAMPLER`/`_ARG`, as the SDK reads them) sees the caller's
//! parent and the request's trace id. An unsampled request (or any, with export off) gets an
//! empty [`Trace`], on which everything is a no-op: no OTel span is built at all, and its
//! `traceparent` (back to the client and upstream) keeps the trace id with the sampled flag
//! clear.
//!
//! The spans are the gateway's own lean records (ids, times, name, kind, parent, attributes,
//! status), not the SDK tracer's: with every trace sampled, the SDK's span machinery (a
//! `Context` per span, builders, dynamic dispatch, per-attribute locking) was a large part
//! of the request thread's extra cost (loadtests/README.md, "Telemetry cost"). The SDK's sampler still
//! decides. Attributes are written in their OTLP form as they are set ([`Attributes`]), so a
//! span allocates no string per attribute, and a finished span is encoded whole where it ends,
//! into the batch it will be sent in ([`super::otlp::Encoded`]).
//!
//! Export never blocks a request: a finished span goes to a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048), dropped when it is full; the export thread
//! sends a batch when it has `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans (default 512), what has
//! waited every `OTEL_BSP_SCHEDULE_DELAY` ms (default 5000), and everything queued at
//! shutdown. It is the export's only thread (`otel-batch`): it sends the batch itself, driving
//! the OTLP client's runtime while it waits for the collector, so a batch costs no hop to
//! another. A failing
//! collector costs one log line when it starts failing and a count in
//! `switchyard_trace_export_failures_total`. Encoding and transport are [`super::otlp`]'s.

use super::context::{RequestContext, TraceIds};
use super::metrics::metrics;
use super::names;
use super::otlp::{Encoded, Finished};
use crate::config::{Proxy, Route};
use actix_web::http::header::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub use super::otlp::Attributes;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/gRPC (collector port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (collector port 4318).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Where traces go; `None` endpoint and no `OTEL_EXPORTER_OTLP_*ENDPOINT` means off.
#[derive(Clone, Debug, Default)]
pub struct OtelConfig {
    /// Overrides `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Overrides `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<Protocol>,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The configured sampler; consulted once per request, by [`start_request`], unless its
/// decision is [`Known`].
static SAMPLER: OnceLock<(Sampler, Known)> = OnceLock::new();

/// Samplers whose decision [`start_request`] makes itself, as the SDK's would (asking it
/// built a `Context` for the caller's parent and a result for every request): the default,
/// `parentbased_always_on` (sampled unless the caller's parent is not), and `always_on`. Both
/// leave the trace state empty, as the caller's `tracestate` is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    AlwaysOn,
    ParentBasedAlwaysOn,
    /// Any other: the SDK's sampler decides.
    Ask,
}

/// Where finished spans go: the export thread's bounded queue, of spans already encoded, in
/// the batches they will be sent in. A span's end encodes it into the batch being filled,
/// under an uncontended lock (the export thread holds it only to take the full batches and
/// give emptied ones back), which cost less than a channel's send and receive. The thread
/// sleeps until its timer or until a batch is full, so a span's end costs its encoding, not a
/// wake-up; a full batch is sent as it is, and comes back emptied to be filled again.
struct Queue {
    waiting: Mutex<Waiting>,
    /// At most this many spans wait; more are dropped.
    capacity: usize,
    /// A batch's size: the thread is woken when a batch has this many spans.
    batch: usize,
}

#[derive(Default)]
struct Waiting {
    /// The batch being filled.
    filling: Encoded,
    /// Batches of `batch` spans, oldest first.
    full: Vec<Encoded>,
    /// Sent batches, emptied, their room kept.
    spare: Vec<Encoded>,
    /// The spans in `filling` and `full`.
    spans: usize,
}

impl Waiting {
    /// Encodes `span` into the batch being filled, unless `capacity` spans already wait (then
    /// it is dropped: `None`). `Some(true)` when that filled a batch of `batch` spans, which
    /// then waits whole, a spare batch taking its place.
    fn push(&mut self, span: &Finished, capacity: usize, batch: usize) -> Option<bool> {
        if self.spans >= capacity {
            return None;
        }
        self.filling.push(span);
        self.spans += 1;
        let full = self.filling.len() >= batch;
        if full {
            let next = self.spare.pop().unwrap_or_default();
            let filled = std::mem::replace(&mut self.filling, next);
            self.full.push(filled);
        }
        Some(full)
    }

    /// Gives back the batches in `taken` (sent and emptied) and puts there the full ones,
    /// oldest first, and with `flush` the one being filled too.
    fn take(&mut self, taken: &mut Vec<Encoded>, flush: bool) {
        self.spare.append(taken);
        std::mem::swap(&mut self.full, taken);
        if flush && !self.filling.is_empty() {
            let next = self.spare.pop().unwrap_or_default();
            taken.push(std::mem::replace(&mut self.filling, next));
        }
        self.spans -= taken.iter().map(Encoded::len).sum::<usize>();
    }
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// The export thread, to wake when a batch is waiting.
static EXPORT_THREAD: OnceLock<std::thread::Thread> = OnceLock::new();

/// Set by [`Otel::shutdown`]: the export thread sends what is queued and stops.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Spans dropped because the queue was full (logged at shutdown).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The sampler `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` name (the SDK's reading of
/// them: default `parentbased_always_on`, a missing or bad ratio is 1.0).
fn sampler_from_env() -> Result<(Sampler, Known), String> {
    let ratio = || {
        env("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|r| r.parse::<f64>().ok())
            .unwrap_or(1.0)
    };
    let parent_based = |s: Sampler| Sampler::ParentBased(Box::new(s));
    Ok(match env("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("parentbased_always_on") => {
            (parent_based(Sampler::AlwaysOn), Known::ParentBasedAlwaysOn)
        }
        Some("always_on") => (Sampler::AlwaysOn, Known::AlwaysOn),
        Some("always_off") => (Sampler::AlwaysOff, Known::Ask),
        Some("traceidratio") => (Sampler::TraceIdRatioBased(ratio()), Known::Ask),
        Some("parentbased_always_off") => (parent_based(Sampler::AlwaysOff), Known::Ask),
        Some("parentbased_traceidratio") => (
            parent_based(Sampler::TraceIdRatioBased(ratio())),
            Known::Ask,
        ),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER {other:?} is not supported (use always_on, always_off, \
                 traceidratio, parentbased_always_on, parentbased_always_off or \
                 parentbased_traceidratio)"
            ));
        }
    })
}

/// Whether spans are exported (cheap; checked on the hot path).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running exporter; [`Otel::shutdown`] flushes what is queued.
pub struct Otel {
    thread: std::thread::JoinHandle<()>,
    /// Answered by the export thread once it has sent what was queued.
    flushed: Receiver<()>,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Otel")
    }
}

impl Otel {
    /// Exports what is still queued (bounded by the exporter's timeout) and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        STOPPING.store(true, Ordering::Release);
        self.thread.thread().unpark();
        if self.flushed.recv_timeout(Duration::from_secs(30)).is_ok() {
            let _ = self.thread.join();
        } else {
            tracing::warn!("flushing traces at shutdown failed");
        }
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "spans were dropped: the export queue was full");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn resolve_protocol(config: &OtelConfig) -> Result<Protocol, String> {
    if let Some(p) = config.protocol {
        return Ok(p);
    }
    match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
    {
        None | Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(format!(
            "OTLP protocol {other:?} is not supported (use grpc or http/protobuf)"
        )),
    }
}

/// Starts the exporter when an endpoint is configured.
pub fn init(config: &OtelConfig) -> Result<Option<Otel>, String> {
    let configured = config.endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if !configured {
        return Ok(None);
    }
    let protocol = resolve_protocol(config)?;
    let inner = match protocol {
        Protocol::Grpc => super::otlp::Exporter::grpc(config.endpoint.as_deref())?,
        Protocol::HttpProtobuf => super::otlp::Exporter::http(config.endpoint.as_deref())?,
    };
    let mut exporter = Exporter {
        inner,
        failing: AtomicBool::new(false),
    };
    let sampler = sampler_from_env()?;
    let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| "switchyard".into());
    exporter.inner.set_resource(
        &Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build(),
        &InstrumentationScope::builder("switchyard").build(),
    );
    let number = |name: &str, default: u64| {
        env(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let queue = usize::try_from(number("OTEL_BSP_MAX_QUEUE_SIZE", 2048).max(1)).unwrap_or(2048);
    let batch = usize::try_from(number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).max(1))
        .unwrap_or(512)
        .min(queue);
    let delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000));
    let _ = QUEUE.set(Queue {
        waiting: Mutex::default(),
        capacity: queue,
        batch,
    });
    let (done, flushed) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("otel-batch".into())
        .spawn(move || exporter.run(delay, &done))
        .map_err(|err| format!("cannot start the trace export thread: {err}"))?;
    let _ = EXPORT_THREAD.set(thread.thread().clone());
    let _ = SAMPLER.set(sampler);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Otel { thread, flushed }))
}

/// The OTLP exporter ([`super::otlp`]), counting failures.
struct Exporter {
    inner: super::otlp::Exporter,
    /// The last export failed (so only the first failure of a run is logged).
    failing: AtomicBool,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl Exporter {
    fn note(&self, result: &Result<(), String>, spans: usize) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(err) => {
                metrics().trace_export_failed(spans as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, spans, "trace export failed; spans are dropped until the collector answers");
                }
            }
        }
    }
}

impl Exporter {
    /// The export thread: the queue's full batches, sent as they fill, what waits every
    /// `delay`, and everything at shutdown (then `done` is answered).
    fn run(self, delay: Duration, done: &SyncSender<()>) {
        let Some(queue) = QUEUE.get() else {
            let _ = done.send(());
            return;
        };
        // The batches taken to send; emptied, they go back for spans to fill again.
        let mut taken: Vec<Encoded> = Vec::new();
        let mut due = Instant::now() + delay;
        loop {
            let stopping = STOPPING.load(Ordering::Acquire);
            let now = Instant::now();
            let flush = stopping || now >= due;
            (queue.waiting.lock().unwrap_or_else(|e| e.into_inner())).take(&mut taken, flush);
            for spans in &mut taken {
                self.export(spans);
                spans.clear();
            }
            if flush {
                due = now + delay;
            }
            if stopping {
                let _ = done.send(());
                return;
            }
            std::thread::park_timeout(due.saturating_duration_since(Instant::now()));
        }
    }

    fn export(&self, spans: &mut Encoded) {
        if spans.is_empty() {
            return;
        }
        let count = spans.len();
        let result = self.inner.send(spans);
        self.note(&result, count);
    }
}

/// One exported span, or nothing when its request's trace is not exported (everything on it
/// is then a no-op). Clones share the span, which ends (and is queued for export) when the
/// last one is dropped.
#[derive(Clone, Default)]
pub struct Trace(Option<Arc<Span>>);

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Trace").field(&self.is_exported()).finish()
    }
}

/// A started span: what it is, and what is set on it until it ends.
struct Span {
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    name: &'static str,
    kind: SpanKind,
    /// Nanoseconds since the Unix epoch.
    start: u64,
    fields: Mutex<Fields>,
}

#[derive(Default)]
struct Fields {
    attributes: Attributes,
    status: Status,
}

impl Span {
    fn start(
        context: SpanContext,
        parent: SpanId,
        parent_is_remote: bool,
        name: &'static str,
        kind: SpanKind,
        room: usize,
        attributes: impl FnOnce(&mut Attributes),
    ) -> Span {
        // Room for what the gateway sets later, so setting them does not grow the buffer step
        // by step.
        let mut fields = Fields {
            attributes: Attributes::with_capacity(room),
            ..Fields::default()
        };
        attributes(&mut fields.attributes);
        Span {
            context,
            parent,
            parent_is_remote,
            name,
            kind,
            start: super::otlp::nanos(SystemTime::now()),
            fields: Mutex::new(fields),
        }
    }
}

impl Drop for Span {
    /// The span ends: it is queued for export, or dropped (and counted) when the queue is full.
    fn drop(&mut self) {
        let Some(queue) = QUEUE.get() else {
            return;
        };
        let fields = std::mem::take(self.fields.get_mut().unwrap_or_else(|e| e.into_inner()));
        let data = Finished {
            trace_id: self.context.trace_id(),
            span_id: self.context.span_id(),
            parent: self.parent,
            parent_is_remote: self.parent_is_remote,
            flags: self.context.trace_flags(),
            trace_state: header(self.context.trace_state()),
            name: self.name,
            kind: self.kind.clone(),
            start: self.start,
            end: super::otlp::nanos(SystemTime::now()),
            attributes: fields.attributes,
            status: fields.status,
        };
        let pushed = (queue.waiting.lock().unwrap_or_else(|e| e.into_inner())).push(
            &data,
            queue.capacity,
            queue.batch,
        );
        match pushed {
            None => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            Some(true) => {
                if let Some(thread) = EXPORT_THREAD.get() {
                    thread.unpark();
                }
            }
            Some(false) => {}
        }
    }
}

/// A trace state's `tracestate` header, without the SDK's walk when there is none (always, as
/// the caller's `tracestate` is not read; a sampler might set one).
fn header(state: &TraceState) -> String {
    if *state == TraceState::NONE {
        String::new()
    } else {
        state.header()
    }
}

impl Trace {
    /// Whether this span is exported.
    pub fn is_exported(&self) -> bool {
        self.0.is_some()
    }

    /// A child span named `name` with `attributes`, started now (none when this one is not
    /// exported); `room` is about how many bytes of attributes it will get (0 for none: no
    /// buffer is allocated then).
    pub fn child(
        &self,
        name: &'static str,
        kind: SpanKind,
        room: usize,
        attributes: impl FnOnce(&mut Attributes),
    ) -> Trace {
        let Some(parent) = &self.0 else {
            return Trace::default();
        };
        let pc = &parent.context;
        // Drawn as the request's own span id is, rather than by an SDK generator built for
        // each span.
        let context = SpanContext::new(
            pc.trace_id(),
            SpanId::from_bytes(fastrand::u64(1..).to_be_bytes()),
            pc.trace_flags().with_sampled(true),
            false,
            pc.trace_state().clone(),
        );
        Trace(Some(Arc::new(Span::start(
            context,
            pc.span_id(),
            false,
            name,
            kind,
            room,
            attributes,
        ))))
    }

    /// Sets attributes on the span (written only when it is exported).
    pub fn set(&self, attributes: impl FnOnce(&mut Attributes)) {
        self.set_and_fail(attributes, None);
    }

    /// [`Trace::set`], and marks the span as failed (a 5xx answer) when `error` is given.
    pub fn set_and_fail(
        &self,
        attributes: impl FnOnce(&mut Attributes),
        error: Option<&'static str>,
    ) {
        let Some(span) = &self.0 else { return };
        let mut fields = span.fields.lock().unwrap_or_else(|e| e.into_inner());
        attributes(&mut fields.attributes);
        if let Some(description) = error {
            // The SDK's order: Ok > Error > Unset.
            let status = Status::error(description);
            if status > fields.status {
                fields.status = status;
            }
        }
    }

    /// The span's `traceparent` as a header value, when it is exported: made straight from
    /// its bytes, with no `String` in between.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let sc = &self.0.as_ref()?.context;
        Some(traceparent_header(
            &sc.trace_id().to_bytes(),
            &sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        ))
    }
}

/// [`format_traceparent`] as a header value.
pub(super) fn traceparent_header(trace: &[u8; 16], span: &[u8; 8], flags: u8) -> HeaderValue {
    // Never fails: hex digits and dashes (checked by `a_traceparent_is_a_valid_header_value`).
    HeaderValue::from_bytes(&format_traceparent(trace, span, flags))
        .unwrap_or(HeaderValue::from_static(""))
}

/// `00-<trace id>-<span id>-<flags>` in lower-case hex.
fn format_traceparent(trace: &[u8; 16], span: &[u8; 8], flags: u8) -> [u8; 55] {
    // Filled in place: pushing byte by byte cost several times more.
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut out[3..35], trace);
    put_hex(&mut out[36..52], span);
    put_hex(&mut out[53..55], &[flags]);
    out
}

/// Every byte's two lower-case hex digits: a byte is one lookup, not two.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 15]];
        b += 1;
    }
    pairs
};

/// Writes `bytes` into `out` as lower-case hex, two digits a byte.
pub(super) fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Starts the request's server span and decides once whether its trace is exported: the
/// configured sampler sees the caller's parent and the request's trace id. Returns the span
/// (empty unless sampled) and the flags its `traceparent` carries. Sampled: the span
/// continues the caller's trace with the request's own ids, and its flags are the parent's
/// with the sampled bit set. Unsampled: the caller's flags with the sampled bit clear.
/// Export off: the caller's flags unchanged, or sampled for a new trace (W3C: propagate
/// even when not sampling).
pub fn start_request(ids: &TraceIds, request_id: &[u8]) -> (Trace, u8) {
    let caller_flags = ids.parent.map_or(1, |(_, flags)| flags);
    let Some((sampler, known)) = SAMPLER.get().filter(|_| enabled()) else {
        return (Trace::default(), caller_flags);
    };
    let trace_id = TraceId::from_bytes(ids.trace);
    let Some(trace_state) = decide(sampler, *known, trace_id, ids.parent) else {
        return (Trace::default(), caller_flags & !1);
    };
    // As the SDK's does, the span takes its parent's flags with the sampled bit set.
    let (parent, parent_flags) = ids.parent.map_or((SpanId::INVALID, 0), |(span, flags)| {
        (SpanId::from_bytes(span), flags)
    });
    let flags = TraceFlags::new(parent_flags).with_sampled(true);
    let span = Span::start(
        SpanContext::new(
            trace_id,
            SpanId::from_bytes(ids.span),
            flags,
            false,
            trace_state,
        ),
        parent,
        ids.parent.is_some(),
        names::SPAN_REQUEST,
        SpanKind::Server,
        // A request's span gets about 14 attributes, some 500 bytes.
        640,
        // Always ASCII in practice (a sane client id or our own).
        |a| a.ascii(names::REQUEST_ID, request_id),
    );
    (Trace(Some(Arc::new(span))), flags.to_u8())
}

/// Whether a request's span is sampled (its trace state when it is), given the caller's
/// `(parent span id, flags)`.
fn decide(
    sampler: &Sampler,
    known: Known,
    trace_id: TraceId,
    parent: Option<([u8; 8], u8)>,
) -> Option<TraceState> {
    match known {
        Known::AlwaysOn => Some(TraceState::default()),
        Known::ParentBasedAlwaysOn => parent
            .is_none_or(|(_, flags)| flags & 1 == 1)
            .then(TraceState::default),
        Known::Ask => ask(sampler, trace_id, parent),
    }
}

/// The SDK sampler's decision for a request's span: its trace state when sampled.
fn ask(sampler: &Sampler, trace_id: TraceId, parent: Option<([u8; 8], u8)>) -> Option<TraceState> {
    let remote = parent.map(|(span, flags)| {
        Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(span),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        ))
    });
    let decision = sampler.should_sample(
        remote.as_ref(),
        trace_id,
        names::SPAN_REQUEST,
        &SpanKind::Server,
        &[],
        &[],
    );
    (decision.decision == SamplingDecision::RecordAndSample).then_some(decision.trace_state)
}

/// `N` bytes from `2 * N` lower- or upper-case hex digits (`TraceId::from_hex` goes through
/// `from_str_radix`, several times slower, and this runs for every sampled request).
pub(super) fn from_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// `req`'s exported server span (empty when its trace is not exported).
pub fn request_trace(req: &actix_web::HttpRequest) -> Trace {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<RequestContext>()
        .map(|c| c.trace.clone())
        .unwrap_or_default()
}

/// Attributes that never change for a route or a proxy, written the first time a traced
/// request needs them and appended to every span after as one block ([`routed`], [`named`]):
/// one copy instead of a write per attribute. Kept on the configuration's route or proxy, so a
/// reload's new configuration starts without them.
#[derive(Clone, Debug, Default)]
pub struct Cached(OnceLock<Attributes>);

impl Cached {
    fn get(&self, write: impl FnOnce(&mut Attributes)) -> &Attributes {
        self.0.get_or_init(|| {
            let mut block = Attributes::default();
            write(&mut block);
            block
        })
    }
}

/// The tenant and proxy a request names, on its server span.
pub fn named(trace: &Trace, proxy: &Proxy) {
    if !trace.is_exported() {
        return;
    }
    let block = proxy.span_attributes.get(|a| {
        a.str(names::TENANT, &proxy.tenant);
        a.str(names::PROXY, &proxy.id);
    });
    trace.set(|a| a.append(block));
}

/// The GenAI attributes known once a request is routed, and its route, on its server span.
/// The operation is `chat`: every endpoint the gateway serves is a chat completion in the
/// GenAI conventions' terms.
pub fn routed(trace: &Trace, route: &Route, fallback: bool) {
    if !trace.is_exported() {
        return;
    }
    let block = route.span_attributes.get(|a| {
        a.str(names::ROUTE, &route.name);
        a.str(names::GEN_AI_OPERATION_NAME, names::GEN_AI_OPERATION_CHAT);
        a.str(names::GEN_AI_PROVIDER_NAME, route.provider_kind.as_str());
        a.str(names::GEN_AI_REQUEST_MODEL, route.upstream_model());
    });
    trace.set(|a| {
        a.append(block);
        a.bool(names::SWITCHYARD_FALLBACK, fallback);
    });
}

/// The span of one upstream attempt (number `attempt`, from 1) to `provider`.
pub fn upstream(request: &Trace, attempt: u32, provider: &str) -> Trace {
    request.child(names::SPAN_UPSTREAM, SpanKind::Client, 128, |a| {
        a.int(names::ATTEMPT, i64::from(attempt));
        a.str(names::PROVIDER, provider);
    })
}

/// One upstream attempt's outcome on its span, and the retry count on the request's span.
pub fn attempt(
    span: &Trace,
    request: &Trace,
    result: &Result<crate::providers::UpstreamResponse, crate::error::GatewayError>,
    retries: u32,
) {
    if !span.is_exported() {
        return;
    }
    use actix_web::ResponseError;
    let status = match result {
        Ok(r) => r.status.as_u16(),
        Err(err) => err.status_code().as_u16(),
    };
    let failed = result.is_err().then_some("upstream attempt failed");
    span.set_and_fail(
        |a| a.int(names::HTTP_RESPONSE_STATUS_CODE, i64::from(status)),
        failed,
    );
    request.set(|a| a.int(names::SWITCHYARD_RETRIES, i64::from(retries)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(n: u64) -> Finished {
        Finished {
            trace_id: TraceId::from_bytes([1; 16]),
            span_id: SpanId::from_bytes(n.to_be_bytes()),
            parent: SpanId::INVALID,
            parent_is_remote: false,
            flags: TraceFlags::SAMPLED,
            trace_state: String::new(),
            name: "request",
            kind: SpanKind::Server,
            start: n,
            end: n + 1,
            attributes: Attributes::default(),
            status: Status::Unset,
        }
    }

    #[test]
    fn spans_wait_in_whole_batches_up_to_the_queue_s_capacity() {
        let (capacity, batch) = (5, 2);
        let mut waiting = Waiting::default();
        let pushed: Vec<Option<bool>> = (0..6)
            .map(|n| waiting.push(&finished(n), capacity, batch))
            .collect();
        // The 2nd and 4th fill a batch; the 6th finds 5 waiting and is dropped.
        assert_eq!(
            pushed,
            [
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                None
            ]
        );
        let mut taken = Vec::new();
        waiting.take(&mut taken, false);
        assert_eq!(taken.iter().map(Encoded::len).collect::<Vec<_>>(), [2, 2]);
        assert_eq!((waiting.spans, waiting.filling.len()), (1, 1));
        // Sent and emptied, the two come back; the batch filled next is the last given back,
        // its room kept.
        let room = taken[1].room();
        assert!(room > 0);
        taken.iter_mut().for_each(Encoded::clear);
        waiting.take(&mut taken, false);
        assert!(taken.is_empty());
        assert_eq!(waiting.spare.len(), 2);
        assert_eq!(waiting.push(&finished(6), capacity, batch), Some(true));
        assert_eq!(waiting.spare.len(), 1);
        assert_eq!(waiting.filling.room(), room);
        // A flush takes the batch being filled as well, however few it holds.
        assert_eq!(waiting.push(&finished(7), capacity, batch), Some(false));
        waiting.take(&mut taken, true);
        assert_eq!(taken.iter().map(Encoded::len).collect::<Vec<_>>(), [2, 1]);
        assert_eq!((waiting.spans, waiting.filling.len()), (0, 0));
        taken.iter_mut().for_each(Encoded::clear);
        waiting.take(&mut taken, true);
        assert!(taken.is_empty());
    }

    #[test]
    fn a_cached_block_is_written_once() {
        let cached = Cached::default();
        let mut writes = 0;
        for _ in 0..3 {
            let block = cached.get(|a| {
                writes += 1;
                a.str(names::TENANT, "a");
                a.str(names::PROXY, "chat");
            });
            let mut appended = Attributes::default();
            appended.append(block);
            let mut direct = Attributes::default();
            direct.str(names::TENANT, "a");
            direct.str(names::PROXY, "chat");
            assert_eq!(format!("{appended:?}"), format!("{direct:?}"));
        }
        assert_eq!(writes, 1);
    }

    #[test]
    fn a_traceparent_is_lower_case_hex() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("id");
        let span = SpanId::from_hex("00f067aa0ba902b7").expect("id");
        assert_eq!(
            &format_traceparent(&trace.to_bytes(), &span.to_bytes(), 0x0b),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0b"
        );
    }

    #[test]
    fn a_traceparent_is_a_valid_header_value() {
        let ids = [
            [0u8; 24],
            [0xff; 24],
            std::array::from_fn(|i| (i * 37 + 11) as u8),
        ];
        for ids in ids {
            for flags in [0x00, 0x01, 0x0b, 0xff] {
                let trace: [u8; 16] = ids[..16].try_into().expect("16 bytes");
                let span: [u8; 8] = ids[16..].try_into().expect("8 bytes");
                let tp = format_traceparent(&trace, &span, flags);
                assert!(
                    tp.iter()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-')),
                    "{tp:?}"
                );
                assert!(HeaderValue::from_bytes(&tp).is_ok());
            }
        }
    }

    #[test]
    fn known_samplers_decide_as_the_sdks_do() {
        let trace_id = TraceId::from_bytes([7; 16]);
        let samplers = [
            (Sampler::AlwaysOn, Known::AlwaysOn),
            (
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                Known::ParentBasedAlwaysOn,
            ),
        ];
        for (sampler, known) in samplers {
            for parent in [
                None,
                Some(([1; 8], 1)),
                Some(([1; 8], 0)),
                Some(([1; 8], 3)),
            ] {
                let sdk = ask(&sampler, trace_id, parent);
                assert_eq!(
                    decide(&sampler, known, trace_id, parent),
                    sdk,
                    "{known:?} {parent:?}"
                );
                // Unsampled only under an unsampled parent, with the default sampler.
                let unsampled = known == Known::ParentBasedAlwaysOn && parent == Some(([1; 8], 0));
                assert_eq!(sdk.is_none(), unsampled, "{known:?} {parent:?}");
            }
        }
    }

    #[test]
    fn hex_ids_decode_as_the_sdk_decodes_them() {
        let hex = "4bf92f3577b34da6a3ce929d0e0e4736";
        let trace = from_hex::<16>(hex.as_bytes()).map(TraceId::from_bytes);
        assert_eq!(trace, Some(TraceId::from_hex(hex).expect("id")));
        assert_eq!(
            from_hex::<8>(b"00F067aa0ba902b7").map(SpanId::from_bytes),
            Some(SpanId::from_hex("00f067aa0ba902b7").expect("id"))
        );
        assert_eq!(from_hex::<8>(b"00f067aa0ba902bg"), None);
        assert_eq!(from_hex::<8>(b"00f067aa0ba902b"), None);
    }
}
