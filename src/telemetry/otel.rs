//! OpenTelemetry trace export over OTLP (gRPC or HTTP/protobuf), off unless configured.
//!
//! The gateway's tracing spans become OTel spans through `tracing-opentelemetry`: the `request`
//! span made by the HTTP middleware is the server span (its parent is the caller's
//! `traceparent` when there is one), with children for routing, each upstream attempt (whose
//! context goes upstream as `traceparent`) and a stream's tail until its last byte. GenAI
//! attributes are set directly on the OTel spans through the helpers here, so they never show
//! in log lines, and the export layer takes spans only: log events, which may quote an
//! upstream's error body, are never exported. Nothing here reads a key or a prompt. The export
//! layer ignores span enters and exits (every poll of an instrumented future), so an OTel span
//! ends when its `tracing` span closes: its last handle and its last child gone.
//!
//! Sampling is decided once per request, when its server span starts ([`start_request`]): the
//! configured sampler (`OTEL_TRACES_SAMPLER`/`_ARG`, as the SDK reads them) sees the caller's
//! parent and the request's trace id. A sampled request's spans are built as before; an
//! unsampled one has no server span at all, and the export layer's filter turns away any span
//! without a parent it took, so no OTel span data is built, and its `traceparent` (back to the
//! client and upstream) keeps the trace id with the sampled flag clear.
//!
//! Export never blocks a request: spans go to the SDK's batch processor, whose bounded queue
//! drops when full; a failing collector costs one log line when it starts failing and a count
//! in `switchyard_trace_export_failures_total`. The gRPC exporter (tonic) runs on a runtime of
//! its own: under actix's current-thread runtimes its exports never complete.

use super::context::RequestContext;
use super::metrics::metrics;
use super::names;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracerProvider, ShouldSample,
    SpanData, SpanExporter,
};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

thread_local! {
    /// Set while [`start_request`] creates a sampled server span: the export layer's filter
    /// admits a `request` span only then.
    static ROOT_SAMPLED: Cell<bool> = const { Cell::new(false) };
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

/// Builds the exporter and the tracing layer when an endpoint is configured.
pub fn init<S>(
    config: &OtelConfig,
) -> Result<Option<(Otel, impl tracing_subscriber::Layer<S>)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
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
    let tracer = provider.tracer("switchyard");
    // Spans only, from the gateway's own code, down to debug (the child spans are at debug so
    // that they cost nothing when export is off and the log level is info), and only those of
    // sampled requests: a server span when `start_request` says it is sampled, any other span
    // when it has a parent this layer took (the filter sees only those), so the children of
    // an unsampled request are never handed to the layer (and, below the log level, are not
    // built at all).
    let ours =
        |meta: &tracing::Metadata<'_>| meta.is_span() && meta.target().starts_with("switchyard");
    let filter = tracing_subscriber::filter::DynFilterFn::new(move |meta, cx| {
        if !ours(meta) {
            false
        } else if meta.name() == names::SPAN_REQUEST {
            ROOT_SAMPLED.get()
        } else {
            cx.lookup_current().is_some()
        }
    })
    .with_callsite_filter(move |meta| {
        if ours(meta) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    });
    use tracing_subscriber::Layer;
    // Each option off saves work per span: no code location, thread, target or busy/idle
    // attributes, and no OTel context attached on every enter of a span (every poll of an
    // instrumented future); nothing here reads `Context::current()`.
    let layer = NoEnterExit(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_level(false)
            .with_context_activation(false)
            .with_filter(filter),
    );
    let _ = SAMPLER.set(sampler);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((Otel { provider }, layer)))
}

/// The export layer without its enter and exit hooks: every poll of an instrumented future
/// enters and exits its spans, and for each the filtered `tracing-opentelemetry` layer looked
/// the span up twice (the filter's map, then the OTel data under a lock) and read the clock,
/// only to note the exit as the span's end time. Without them an OTel span ends when its
/// `tracing` span closes (its last handle and its last child gone): the request span with the
/// response's last byte (the body holds it), an attempt span with the upstream's last byte
/// (the pump holds it). Everything else is passed through, downcasts included (the span
/// extension methods and the per-layer filter find the layers inside through them).
struct NoEnterExit<L>(L);

impl<S: tracing::Subscriber, L: tracing_subscriber::Layer<S>> tracing_subscriber::Layer<S>
    for NoEnterExit<L>
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_record(span, values, ctx);
    }

    fn on_follows_from(
        &self,
        span: &tracing::span::Id,
        follows: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_event(event, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(
        &self,
        old: &tracing::span::Id,
        new: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_id_change(old, new, ctx);
    }

    // A measured need for `unsafe` (see above): `Layer::downcast_raw` is an unsafe trait
    // method, and a wrapper must forward it for the layers inside to be found.
    #[expect(
        unsafe_code,
        reason = "forwarding Layer::downcast_raw, an unsafe trait method"
    )]
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            return Some(std::ptr::from_ref(self).cast());
        }
        // SAFETY: the inner layer answers for its own types and lives as long as `self`; the
        // caller's contract is passed on unchanged.
        unsafe { self.0.downcast_raw(id) }
    }
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

/// Decides once whether the request's trace is exported and, if so, starts its server span
/// (`make` creates it): the configured sampler sees the caller's parent
/// (`ctx.remote_parent`) and the request's trace id. Sampled: the span continues the caller's
/// trace with the request's own ids and `ctx.traceparent` names it. Unsampled (or export
/// off): no span at all (`Span::none()`; log lines name the request from its
/// `telemetry::scope`), and `ctx.traceparent` keeps the trace id with the sampled flag clear,
/// for the client and the upstream (W3C: propagate even when not sampling). Sets
/// `ctx.sampled`.
pub fn start_request(
    ctx: &mut RequestContext,
    make: impl FnOnce(&RequestContext) -> tracing::Span,
) -> tracing::Span {
    ctx.sampled = false;
    let Some(sampler) = SAMPLER.get().filter(|_| enabled()) else {
        return tracing::Span::none();
    };
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
        return tracing::Span::none();
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
        unsampled(&mut ctx.traceparent);
        return tracing::Span::none();
    }
    ROOT_SAMPLED.set(true);
    let span = make(ctx);
    ROOT_SAMPLED.set(false);
    if let Some(remote) = remote {
        let _ = span.set_parent(remote);
    }
    // Building the context starts the OTel span, here, with the request's ids.
    NEXT_IDS.set(Some((trace_id, span_id)));
    let tp = traceparent(&span);
    NEXT_IDS.set(None);
    if let Some(tp) = tp {
        ctx.traceparent = tp;
        ctx.sampled = true;
    }
    span
}

/// Clears the sampled bit of a `traceparent`'s flags.
fn unsampled(traceparent: &mut String) {
    if let Some(flags) = traceparent
        .get(53..55)
        .and_then(|f| u8::from_str_radix(f, 16).ok())
    {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let flags = flags & !1;
        traceparent.truncate(53);
        traceparent.push(char::from(HEX[usize::from(flags >> 4)]));
        traceparent.push(char::from(HEX[usize::from(flags & 15)]));
    }
}

/// Whether `req`'s trace is exported.
pub fn sampled(req: &actix_web::HttpRequest) -> bool {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<RequestContext>()
        .is_some_and(|c| c.sampled)
}

/// The `traceparent` of `span`'s OTel span, when export is on and the span is recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Runs `f` on `span`'s OTel span, found once (nothing when export is off or the span is not
/// exported: an unexported span's context has no span, and `f` then sees a no-op one).
fn with_otel_span(span: &tracing::Span, f: impl FnOnce(&opentelemetry::trace::SpanRef<'_>)) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let cx = span.context();
    f(&cx.span());
}

/// Sets attributes on `span`'s OTel span (nothing when export is off or the span is not
/// exported), all in one look-up of the span.
pub fn set(span: &tracing::Span, attributes: impl FnOnce() -> Vec<KeyValue>) {
    with_otel_span(span, |s| s.set_attributes(attributes()));
}

/// [`set`], and marks the span as failed (a 5xx answer) when `error` is given.
pub fn set_and_fail(
    span: &tracing::Span,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    error: Option<&'static str>,
) {
    with_otel_span(span, |s| {
        s.set_attributes(attributes());
        if let Some(description) = error {
            s.set_status(opentelemetry::trace::Status::error(description));
        }
    });
}

/// The GenAI attributes known once a request is routed.
pub fn routed(
    span: &tracing::Span,
    operation: &'static str,
    provider: &'static str,
    request_model: &str,
    fallback: bool,
) {
    set(span, || {
        vec![
            KeyValue::new(names::GEN_AI_OPERATION_NAME, operation),
            KeyValue::new(names::GEN_AI_PROVIDER_NAME, provider),
            KeyValue::new(names::GEN_AI_REQUEST_MODEL, request_model.to_owned()),
            KeyValue::new(names::SWITCHYARD_FALLBACK, fallback),
        ]
    });
}

/// One upstream attempt's outcome on its span, and the retry count on the request's span
/// (the current one: the provider actor's future runs in it).
pub fn attempt(
    span: &tracing::Span,
    result: &Result<crate::providers::UpstreamResponse, crate::error::GatewayError>,
    retries: u32,
) {
    // The attempt span is off unless the request is sampled (or the log level is debug).
    if !enabled() || span.is_disabled() {
        return;
    }
    use actix_web::ResponseError;
    let status = match result {
        Ok(r) => r.status.as_u16(),
        Err(err) => err.status_code().as_u16(),
    };
    let failed = result.is_err().then_some("upstream attempt failed");
    set_and_fail(
        span,
        || {
            vec![KeyValue::new(
                names::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status),
            )]
        },
        failed,
    );
    tracing::Span::current().set_attribute(names::SWITCHYARD_RETRIES, i64::from(retries));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsampled_traceparent_keeps_its_ids_and_clears_only_the_sampled_bit() {
        for (flags, cleared) in [("01", "00"), ("00", "00"), ("03", "02"), ("ff", "fe")] {
            let mut tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            unsampled(&mut tp);
            assert_eq!(
                tp,
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{cleared}")
            );
        }
    }
}
