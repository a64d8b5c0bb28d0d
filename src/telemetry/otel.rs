//! OpenTelemetry trace export over OTLP (gRPC or HTTP/protobuf), off unless configured.
//!
//! The OTel spans are built here, directly with the SDK's tracer, where the gateway knows
//! their fields; the `tracing` spans are for log lines only, and the log subscriber has no
//! export layer. A request's exported spans hang off its [`Trace`] (kept in its
//! `RequestContext`): the server span `request` (its parent is the caller's `traceparent`
//! when there is one), with children for routing, each upstream attempt (whose context goes
//! upstream as `traceparent`) and a stream's tail until its last byte. A span ends when the
//! last clone of its [`Trace`] is dropped: the server span with the response's last byte (the
//! access record's body holds it), an attempt with the upstream's last byte (the pump holds
//! it). GenAI attributes are set through the helpers here; log events, which may quote an
//! upstream's error body, are never exported, and nothing here reads a key or a prompt.
//!
//! Sampling is decided once per request, when its server span starts ([`start_request`]): the
//! configured sampler (`OTEL_TRACES_SAMPLER`/`_ARG`, as the SDK reads them) sees the caller's
//! parent and the request's trace id. An unsampled request (or any, with export off) gets an
//! empty [`Trace`], on which everything is a no-op: no OTel span is built at all, and its
//! `traceparent` (back to the client and upstream) keeps the trace id with the sampled flag
//! clear.
//!
//! Export never blocks a request: spans go to the SDK's batch processor, whose bounded queue
//! drops when full; a failing collector costs one log line when it starts failing and a count
//! in `switchyard_trace_export_failures_total`. The gRPC exporter (tonic) runs on a runtime of
//! its own: under actix's current-thread runtimes its exports never complete.

use super::context::RequestContext;
use super::metrics::metrics;
use super::names;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracer, SdkTracerProvider,
    ShouldSample, SpanData, SpanExporter,
};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// The tracer every exported span is built with.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

thread_local! {
    /// The ids [`RequestIds`] hands to the next root span started on this thread (the
    /// request's own, so the exported trace is the one the sampler decided on).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

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

/// Root spans take the ids [`start_request`] left for them; everything else is random.
#[derive(Debug)]
struct RequestIds;

impl IdGenerator for RequestIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.get() {
            Some((trace, _)) => trace,
            None => RandomIdGenerator::default().new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.get() {
            Some((_, span)) => span,
            None => RandomIdGenerator::default().new_span_id(),
        }
    }
}

/// Whether spans are exported (cheap; checked on the hot path).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running exporter; [`Otel::shutdown`] flushes what is queued.
pub struct Otel {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Otel")
    }
}

impl Otel {
    /// Exports what is still queued (bounded by the exporter's timeout) and stops.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "flushing traces at shutdown failed");
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
    let exporter = match protocol {
        Protocol::Grpc => {
            // tonic needs a tokio runtime to build its channel and to run exports.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()
                .map_err(|err| format!("cannot start the OTLP runtime: {err}"))?;
            let inner = {
                let _guard = rt.enter();
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build()
            }
            .map_err(|err| format!("cannot build the OTLP/gRPC exporter: {err}"))?;
            Exporter {
                inner,
                rt: Some(Arc::new(rt)),
                failing: AtomicBool::new(false),
            }
        }
        Protocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = &config.endpoint {
                b = b.with_endpoint(e.clone());
            }
            let inner = b
                .build()
                .map_err(|err| format!("cannot build the OTLP/HTTP exporter: {err}"))?;
            Exporter {
                inner,
                rt: None,
                failing: AtomicBool::new(false),
            }
        }
    };
    let sampler = sampler_from_env()?;
    let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| "switchyard".into());
    // The sampler is applied once per request by `start_request`; whatever reaches the SDK
    // was sampled (a child follows its parent), so the SDK's own sampler is always-on.
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_id_generator(RequestIds)
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let _ = TRACER.set(provider.tracer("switchyard"));
    let _ = SAMPLER.set(sampler);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Otel { provider }))
}

/// The OTLP exporter, counting failures, with the gRPC one run on its own runtime.
struct Exporter {
    inner: opentelemetry_otlp::SpanExporter,
    rt: Option<Arc<tokio::runtime::Runtime>>,
    /// The last export failed (so only the first failure of a run is logged).
    failing: AtomicBool,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl Exporter {
    fn note(&self, result: &OTelSdkResult, spans: usize) {
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

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        // Called on the SDK's batch thread, never on a request's.
        let result = match &self.rt {
            Some(rt) => rt.block_on(self.inner.export(batch)),
            None => self.inner.export(batch).await,
        };
        self.note(&result, spans);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// One exported span: the OTel context holding it, or nothing when its request's trace is not
/// exported (everything on it is then a no-op). Clones share the span, which ends (and is
/// queued for export) when the last one is dropped.
#[derive(Clone, Default)]
pub struct Trace(Option<Context>);

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Trace").field(&self.is_exported()).finish()
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
        let (Some(parent), Some(tracer)) = (&self.0, TRACER.get()) else {
            return Trace::default();
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(tracer, parent);
        Trace(Some(Context::new().with_span(span)))
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
        let Some(cx) = &self.0 else { return };
        let span = cx.span();
        span.set_attributes(attributes());
        if let Some(description) = error {
            span.set_status(opentelemetry::trace::Status::error(description));
        }
    }

    /// The span's `traceparent`, when it is exported.
    pub fn traceparent(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let sc = span.span_context();
        Some(format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ))
    }
}

/// Starts the request's server span and decides once whether its trace is exported: the
/// configured sampler sees the caller's parent (`ctx.remote_parent`) and the request's trace
/// id. Sampled: `ctx.trace` is the server span, which continues the caller's trace with the
/// request's own ids, and `ctx.traceparent` names it. Unsampled (or export off): `ctx.trace`
/// is empty, and `ctx.traceparent` keeps the trace id with the sampled flag clear, for the
/// client and the upstream (W3C: propagate even when not sampling).
pub fn start_request(ctx: &mut RequestContext) {
    ctx.trace = Trace::default();
    let (Some(sampler), Some(tracer)) = (SAMPLER.get(), TRACER.get()) else {
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
            let (t, s, f) = (
                TraceId::from_hex(trace).ok()?,
                SpanId::from_hex(parent).ok()?,
                u8::from_str_radix(flags, 16).ok()?,
            );
            Some(Context::new().with_remote_span_context(SpanContext::new(
                t,
                s,
                TraceFlags::new(f),
                true,
                TraceState::default(),
            )))
        });
    let decision = sampler.should_sample(
        remote.as_ref(),
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
    let builder = tracer
        .span_builder(names::SPAN_REQUEST)
        .with_kind(SpanKind::Server)
        .with_attributes(vec![KeyValue::new(
            names::REQUEST_ID,
            String::from_utf8_lossy(ctx.request_id.as_bytes()).into_owned(),
        )]);
    // The span takes the request's ids (the trace id is the caller's when there is one).
    NEXT_IDS.set(Some((trace_id, span_id)));
    let span = builder.start_with_context(tracer, remote.as_ref().unwrap_or(&Context::new()));
    NEXT_IDS.set(None);
    let sampled = span.span_context().trace_flags().to_u8();
    set_flags(&mut ctx.traceparent, |_| sampled);
    ctx.trace = Trace(Some(Context::new().with_span(span)));
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
