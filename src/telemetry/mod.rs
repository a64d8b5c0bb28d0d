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

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
