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
pub mod scope;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters the log (default `info`). With `otel`
/// (only `serve` passes it) and an OTLP endpoint configured, spans are also exported; the
/// returned handle flushes them at exit.
pub fn init_logging(
    format: LogFormat,
    otel: Option<&otel::OtelConfig>,
) -> Result<Option<otel::Otel>, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{LevelFilter, Targets};
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
    // The log's filter is the log's own: trace export sees spans the log level hides, and the
    // log never sees an exported request's server span (the scope names the request). Levels
    // per target (all `RUST_LOG` usually says) are a `Targets` filter, which does nothing when
    // a span is entered or left; `EnvFilter`, needed only for span and field directives, looks
    // each entered span up under a lock, and a request's spans are entered on every poll.
    let fmt = match spec.parse::<Targets>() {
        Ok(targets) => fmt
            .with_filter(targets.with_target(names::SERVER_SPAN_TARGET, LevelFilter::OFF))
            .boxed(),
        Err(_) => {
            let off = format!("{}=off", names::SERVER_SPAN_TARGET);
            let filter =
                EnvFilter::new(&spec).add_directive(off.parse().map_err(|e| format!("{e}"))?);
            fmt.with_filter(filter).boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(fmt);
    let exporter = match otel {
        Some(config) => otel::init(config)?,
        None => None,
    };
    match exporter {
        Some((handle, layer)) => {
            let _ = registry.with(layer).try_init();
            Ok(Some(handle))
        }
        None => {
            let _ = registry.try_init();
            Ok(None)
        }
    }
}
