//! Telemetry: logging setup, per-request trace context, metrics and the access log.
//!
//! This module owns how the gateway reports on itself: structured logs (text or JSON), the
//! W3C trace context each request carries (`context`), the Prometheus metrics (`metrics`, with
//! every name in `names`) and the one access-log line per request (`access`). No other module
//! spells a metric name.

pub mod access;
pub mod context;
pub mod metrics;
pub mod names;
pub mod otel;
mod otlp;
pub mod scope;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters the log (default `info`). With `otel`
/// (only `serve` passes it) and an OTLP endpoint configured, trace export starts too (it is
/// no part of the subscriber: `otel` builds its spans itself); the returned handle flushes
/// them at exit.
pub fn init_logging(
    format: LogFormat,
    otel: Option<&otel::OtelConfig>,
) -> Result<Option<otel::Otel>, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| "info".to_owned());
    // A log line names its request from the request's scope (`scope`), not from a span.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.event_format(scope::Text::default()).boxed(),
        LogFormat::Json => fmt.json().event_format(scope::Json::default()).boxed(),
    };
    // Levels per target (all `RUST_LOG` usually says) are a `Targets` filter, which does
    // nothing when a span is entered or left; `EnvFilter`, needed only for span and field
    // directives, looks each entered span up under a lock, and a request's spans are entered
    // on every poll.
    let fmt = match spec.parse::<Targets>() {
        Ok(targets) => fmt.with_filter(targets).boxed(),
        Err(_) => fmt.with_filter(EnvFilter::new(&spec)).boxed(),
    };
    let _ = tracing_subscriber::registry().with(fmt).try_init();
    match otel {
        Some(config) => otel::init(config),
        None => Ok(None),
    }
}
