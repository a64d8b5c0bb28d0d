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
//! decides, and a finished span becomes the SDK's `SpanData` for the encoder.
//!
//! Export never blocks a request: a finished span goes to a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048), dropped when it is full; the export thread
//! sends a batch when it holds `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans (default 512) or every
//! `OTEL_BSP_SCHEDULE_DELAY` ms (default 5000), and everything queued at shutdown. A failing
//! collector costs one log line when it starts failing and a count in
//! `switchyard_trace_export_failures_total`. Encoding and transport are [`super::otlp`]'s.

use super::context::RequestContext;
use super::metrics::metrics;
use super::names;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents,
    SpanLinks,
};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

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

/// The configured sampler; consulted once per request, by [`start_request`].
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Where finished spans go: the export thread's bounded queue, and the thread to wake.
struct Queue {
    spans: SyncSender<SpanData>,
    /// A batch's size: the thread is woken when this many spans are waiting.
    batch: usize,
    thread: std::thread::Thread,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// Spans queued and not yet taken by the export thread. The thread sleeps until its timer
/// or until a batch is waiting, so a span's end costs a queue slot, not a wake-up.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Set by [`Otel::shutdown`]: the export thread sends what is queued and stops.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Spans dropped because the queue was full (logged at shutdown).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The instrumentation scope of every exported span.
static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();

/// The SDK's limit on a span's attributes (more are counted as dropped).
const MAX_ATTRIBUTES: usize = 128;

/// The sampler `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` name (the SDK's reading of
/// them: default `parentbased_always_on`, a missing or bad ratio is 1.0).
fn sampler_from_env() -> Result<Sampler, String> {
    let ratio = || {
        env("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|r| r.parse::<f64>().ok())
            .unwrap_or(1.0)
    };
    let parent_based = |s: Sampler| Sampler::ParentBased(Box::new(s));
    Ok(match env("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("parentbased_always_on") => parent_based(Sampler::AlwaysOn),
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatioBased(ratio()),
        Some("parentbased_always_off") => parent_based(Sampler::AlwaysOff),
        Some("parentbased_traceidratio") => parent_based(Sampler::TraceIdRatioBased(ratio())),
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
    let (tx, rx) = std::sync::mpsc::sync_channel(queue);
    let (done, flushed) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("otel-batch".into())
        .spawn(move || exporter.run(&rx, batch, delay, &done))
        .map_err(|err| format!("cannot start the trace export thread: {err}"))?;
    let _ = SCOPE.set(InstrumentationScope::builder("switchyard").build());
    let _ = QUEUE.set(Queue {
        spans: tx,
        batch,
        thread: thread.thread().clone(),
    });
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
    /// The export thread: batches of up to `batch` spans, sent when full, every `delay`, and
    /// at shutdown (then `done` is answered).
    fn run(self, rx: &Receiver<SpanData>, batch: usize, delay: Duration, done: &SyncSender<()>) {
        let mut spans: Vec<SpanData> = Vec::with_capacity(batch);
        let mut due = Instant::now() + delay;
        loop {
            let stopping = STOPPING.load(Ordering::Acquire);
            while let Ok(span) = rx.try_recv() {
                PENDING.fetch_sub(1, Ordering::Relaxed);
                spans.push(span);
                if spans.len() >= batch {
                    self.export(&mut spans);
                }
            }
            let now = Instant::now();
            if stopping || now >= due {
                self.export(&mut spans);
                due = now + delay;
            }
            if stopping {
                let _ = done.send(());
                return;
            }
            std::thread::park_timeout(due.saturating_duration_since(Instant::now()));
        }
    }

    fn export(&self, spans: &mut Vec<SpanData>) {
        if spans.is_empty() {
            return;
        }
        let result = self.inner.send(spans);
        self.note(&result, spans.len());
        spans.clear();
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
    start: SystemTime,
    fields: Mutex<Fields>,
}

#[derive(Default)]
struct Fields {
    attributes: Vec<KeyValue>,
    dropped_attributes: u32,
    status: Status,
}

impl Fields {
    fn add(&mut self, attributes: Vec<KeyValue>) {
        if self.attributes.len() + attributes.len() <= MAX_ATTRIBUTES {
            self.attributes.extend(attributes);
            return;
        }
        for kv in attributes {
            if self.attributes.len() < MAX_ATTRIBUTES {
                self.attributes.push(kv);
            } else {
                self.dropped_attributes += 1;
            }
        }
    }
}

impl Span {
    fn start(
        context: SpanContext,
        parent: SpanId,
        parent_is_remote: bool,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Span {
        // Room for what the gateway sets later (a request's span gets about 14 attributes),
        // so setting them does not grow the vector step by step.
        let capacity = if kind == SpanKind::Server { 16 } else { 4 };
        let mut fields = Fields {
            attributes: Vec::with_capacity(capacity.max(attributes.len())),
            ..Fields::default()
        };
        fields.add(attributes);
        Span {
            context,
            parent,
            parent_is_remote,
            name,
            kind,
            start: SystemTime::now(),
            fields: Mutex::new(fields),
        }
    }
}

impl Drop for Span {
    /// The span ends: it is queued for export, or dropped (and counted) when the queue is full.
    fn drop(&mut self) {
        let (Some(queue), Some(scope)) = (QUEUE.get(), SCOPE.get()) else {
            return;
        };
        let fields = std::mem::take(self.fields.get_mut().unwrap_or_else(|e| e.into_inner()));
        let data = SpanData {
            span_context: self.context.clone(),
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind.clone(),
            name: self.name.into(),
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: fields.attributes,
            dropped_attributes_count: fields.dropped_attributes,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: fields.status,
            instrumentation_scope: scope.clone(),
        };
        match queue.spans.try_send(data) {
            Ok(()) => {
                if PENDING.fetch_add(1, Ordering::Relaxed) + 1 == queue.batch {
                    queue.thread.unpark();
                }
            }
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Trace {
    /// Whether this span is exported.
    pub fn is_exported(&self) -> bool {
        self.0.is_some()
    }

    /// A child span named `name` with `attributes`, started now (none when this one is not
    /// exported).
    pub fn child(
        &self,
        name: &'static str,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Trace {
        let Some(parent) = &self.0 else {
            return Trace::default();
        };
        let pc = &parent.context;
        let context = SpanContext::new(
            pc.trace_id(),
            RandomIdGenerator::default().new_span_id(),
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
            attributes(),
        ))))
    }

    /// Sets attributes on the span (built only when it is exported).
    pub fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        self.set_and_fail(attributes, None);
    }

    /// [`Trace::set`], and marks the span as failed (a 5xx answer) when `error` is given.
    pub fn set_and_fail(
        &self,
        attributes: impl FnOnce() -> Vec<KeyValue>,
        error: Option<&'static str>,
    ) {
        let Some(span) = &self.0 else { return };
        let attributes = attributes();
        let mut fields = span.fields.lock().unwrap_or_else(|e| e.into_inner());
        fields.add(attributes);
        if let Some(description) = error {
            // The SDK's order: Ok > Error > Unset.
            let status = Status::error(description);
            if status > fields.status {
                fields.status = status;
            }
        }
    }

    /// The span's `traceparent`, when it is exported.
    pub fn traceparent(&self) -> Option<String> {
        let sc = &self.0.as_ref()?.context;
        Some(format_traceparent(
            &sc.trace_id().to_bytes(),
            &sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        ))
    }
}

/// `00-<trace id>-<span id>-<flags>` in lower-case hex.
fn format_traceparent(trace: &[u8; 16], span: &[u8; 8], flags: u8) -> String {
    fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    hex(&mut out, trace);
    out.push(b'-');
    hex(&mut out, span);
    out.push(b'-');
    hex(&mut out, &[flags]);
    String::from_utf8(out).unwrap_or_default()
}

/// Starts the request's server span and decides once whether its trace is exported: the
/// configured sampler sees the caller's parent (`ctx.remote_parent`) and the request's trace
/// id. Sampled: `ctx.trace` is the server span, which continues the caller's trace with the
/// request's own ids, and `ctx.traceparent` names it. Unsampled (or export off): `ctx.trace`
/// is empty, and `ctx.traceparent` keeps the trace id with the sampled flag clear, for the
/// client and the upstream (W3C: propagate even when not sampling).
pub fn start_request(ctx: &mut RequestContext) {
    ctx.trace = Trace::default();
    let Some(sampler) = SAMPLER.get() else {
        return;
    };
    if !enabled() {
        return;
    }
    // `00-<trace id>-<span id>-<flags>`, made by `RequestContext` (valid by construction).
    let ids = (
        ctx.traceparent
            .get(3..35)
            .and_then(|t| TraceId::from_hex(t).ok()),
        ctx.traceparent
            .get(36..52)
            .and_then(|s| SpanId::from_hex(s).ok()),
    );
    let (Some(trace_id), Some(span_id)) = ids else {
        return;
    };
    let remote = ctx
        .remote_parent
        .as_ref()
        .and_then(|(trace, parent, flags)| {
            Some(SpanContext::new(
                TraceId::from_hex(trace).ok()?,
                SpanId::from_hex(parent).ok()?,
                TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
                true,
                TraceState::default(),
            ))
        });
    let remote_cx = remote
        .as_ref()
        .map(|sc| Context::new().with_remote_span_context(sc.clone()));
    let decision = sampler.should_sample(
        remote_cx.as_ref(),
        trace_id,
        names::SPAN_REQUEST,
        &SpanKind::Server,
        &[],
        &[],
    );
    if decision.decision != SamplingDecision::RecordAndSample {
        set_flags(&mut ctx.traceparent, |flags| flags & !1);
        return;
    }
    // The span takes the request's ids (the trace id is the caller's when there is one) and,
    // as the SDK's does, its parent's flags with the sampled bit set.
    let (parent, parent_flags) = remote
        .as_ref()
        .map_or((SpanId::INVALID, TraceFlags::default()), |sc| {
            (sc.span_id(), sc.trace_flags())
        });
    let flags = parent_flags.with_sampled(true);
    let span = Span::start(
        SpanContext::new(trace_id, span_id, flags, false, decision.trace_state),
        parent,
        remote.is_some(),
        names::SPAN_REQUEST,
        SpanKind::Server,
        vec![KeyValue::new(
            names::REQUEST_ID,
            std::str::from_utf8(ctx.request_id.as_bytes()).map_or_else(
                |_| String::from_utf8_lossy(ctx.request_id.as_bytes()).into_owned(),
                str::to_owned,
            ),
        )],
    );
    set_flags(&mut ctx.traceparent, |_| flags.to_u8());
    ctx.trace = Trace(Some(Arc::new(span)));
}

/// Rewrites the flags of a `traceparent` (its last two hex digits).
fn set_flags(traceparent: &mut String, f: impl FnOnce(u8) -> u8) {
    if let Some(flags) = traceparent
        .get(53..55)
        .and_then(|f| u8::from_str_radix(f, 16).ok())
    {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let flags = f(flags);
        traceparent.truncate(53);
        traceparent.push(char::from(HEX[usize::from(flags >> 4)]));
        traceparent.push(char::from(HEX[usize::from(flags & 15)]));
    }
}

/// `req`'s exported server span (empty when its trace is not exported).
pub fn request_trace(req: &actix_web::HttpRequest) -> Trace {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<RequestContext>()
        .map(|c| c.trace.clone())
        .unwrap_or_default()
}

/// The tenant and proxy a request names, on its server span.
pub fn named(trace: &Trace, tenant: &str, proxy: &str) {
    trace.set(|| {
        vec![
            KeyValue::new(names::TENANT, tenant.to_owned()),
            KeyValue::new(names::PROXY, proxy.to_owned()),
        ]
    });
}

/// The GenAI attributes known once a request is routed, and its route, on its server span.
pub fn routed(
    trace: &Trace,
    route: &str,
    operation: &'static str,
    provider: &'static str,
    request_model: &str,
    fallback: bool,
) {
    trace.set(|| {
        vec![
            KeyValue::new(names::ROUTE, route.to_owned()),
            KeyValue::new(names::GEN_AI_OPERATION_NAME, operation),
            KeyValue::new(names::GEN_AI_PROVIDER_NAME, provider),
            KeyValue::new(names::GEN_AI_REQUEST_MODEL, request_model.to_owned()),
            KeyValue::new(names::SWITCHYARD_FALLBACK, fallback),
        ]
    });
}

/// The span of one upstream attempt (number `attempt`, from 1) to `provider`.
pub fn upstream(request: &Trace, attempt: u32, provider: &str) -> Trace {
    request.child(names::SPAN_UPSTREAM, SpanKind::Client, || {
        vec![
            KeyValue::new(names::ATTEMPT, i64::from(attempt)),
            KeyValue::new(names::PROVIDER, provider.to_owned()),
        ]
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
        || {
            vec![KeyValue::new(
                names::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status),
            )]
        },
        failed,
    );
    request.set(|| vec![KeyValue::new(names::SWITCHYARD_RETRIES, i64::from(retries))]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_lower_case_hex() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("id");
        let span = SpanId::from_hex("00f067aa0ba902b7").expect("id");
        assert_eq!(
            format_traceparent(&trace.to_bytes(), &span.to_bytes(), 0x0b),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0b"
        );
    }

    #[test]
    fn an_unsampled_traceparent_keeps_its_ids_and_clears_only_the_sampled_bit() {
        for (flags, cleared) in [("01", "00"), ("00", "00"), ("03", "02"), ("ff", "fe")] {
            let mut tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            set_flags(&mut tp, |f| f & !1);
            assert_eq!(
                tp,
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{cleared}")
            );
        }
    }
}
