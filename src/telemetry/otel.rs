//! OpenTelemetry trace export over OTLP (gRPC or HTTP/protobuf), off unless configured.
//!
//! The gateway's tracing spans become OTel spans through `tracing-opentelemetry`: the `request`
//! span made by the HTTP middleware is the server span (its parent is the caller's
//! `traceparent` when there is one), with children for routing, each upstream attempt (whose
//! context goes upstream as `traceparent`) and a stream's tail until its last byte. GenAI
//! attributes are set directly on the OTel spans through the helpers here, so they never show
//! in log lines, and the export layer takes spans only: log events, which may quote an
//! upstream's error body, are never exported. Nothing here reads a key or a prompt.
//!
//! Export never blocks a request: spans go to the SDK's batch processor, whose bounded queue
//! drops when full; a failing collector costs one log line when it starts failing and a count
//! in `switchyard_trace_export_failures_total`. The gRPC exporter (tonic) runs on a runtime of
//! its own: under actix's current-thread runtimes its exports never complete.

use super::metrics::metrics;
use super::names;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| "switchyard".into());
    let provider = SdkTracerProvider::builder()
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
    // that they cost nothing when export is off and the log level is info).
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("switchyard")
    });
    use tracing_subscriber::Layer;
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_filter(filter);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((Otel { provider }, layer)))
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

/// Makes `span` (the request's server span) a child of the caller's trace and returns the
/// `traceparent` naming it, to send back and upstream. `None` when export is off.
pub fn adopt(
    span: &tracing::Span,
    remote_parent: Option<&(String, String, String)>,
) -> Option<String> {
    if !enabled() {
        return None;
    }
    if let Some((trace, parent, flags)) = remote_parent
        && let (Ok(t), Ok(s), Ok(f)) = (
            TraceId::from_hex(trace),
            SpanId::from_hex(parent),
            u8::from_str_radix(flags, 16),
        )
    {
        let remote = SpanContext::new(t, s, TraceFlags::new(f), true, TraceState::default());
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
    traceparent(span)
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

/// Sets attributes on `span`'s OTel span (nothing when export is off).
pub fn set(span: &tracing::Span, attributes: impl FnOnce() -> Vec<KeyValue>) {
    if !enabled() {
        return;
    }
    for kv in attributes() {
        span.set_attribute(kv.key, kv.value);
    }
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

/// Marks `span` as failed (a 5xx answer).
pub fn error(span: &tracing::Span, description: &'static str) {
    if enabled() {
        span.set_status(opentelemetry::trace::Status::error(description));
    }
}

/// One upstream attempt's outcome on its span, and the retry count on the request's span
/// (the current one: the provider actor's future runs in it).
pub fn attempt(
    span: &tracing::Span,
    result: &Result<crate::providers::UpstreamResponse, crate::error::GatewayError>,
    retries: u32,
) {
    if !enabled() {
        return;
    }
    use actix_web::ResponseError;
    let status = match result {
        Ok(r) => r.status.as_u16(),
        Err(err) => err.status_code().as_u16(),
    };
    span.set_attribute(names::HTTP_RESPONSE_STATUS_CODE, i64::from(status));
    if result.is_err() {
        span.set_status(opentelemetry::trace::Status::error(
            "upstream attempt failed",
        ));
    }
    tracing::Span::current().set_attribute(names::SWITCHYARD_RETRIES, i64::from(retries));
}
