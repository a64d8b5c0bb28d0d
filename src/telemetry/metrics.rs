//! The gateway's Prometheus metrics: one registry, typed label sets, rendered at `/metrics`.
//!
//! Every label value comes from configuration (tenant, proxy, route and provider names, which
//! validation bounds to 50 proxies) or from a closed set (endpoint, error source, status code,
//! token kind, reload result), never from what a client sent: a client cannot grow a series.
//! The registry is process-wide ([`metrics`]) so that recording is a map lookup (in the
//! worker thread's own map, [`Series`]) and an atomic add, with no state threaded through
//! handlers.

use super::names;
use crate::error::ErrorSource;
use crate::fxhash::Fx;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hash};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use thread_local::ThreadLocal;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Which API a request was for, from the matched path.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum EndpointLabel {
    ChatCompletions,
    Responses,
    Models,
    Admin,
    Health,
    Metrics,
    /// Anything else (unknown paths).
    Other,
}

impl EndpointLabel {
    /// Classifies a request path; never keeps any of it.
    pub fn classify(path: &str) -> Self {
        if path.ends_with("/v1/chat/completions") {
            Self::ChatCompletions
        } else if path.ends_with("/v1/responses") {
            Self::Responses
        } else if path.ends_with("/v1/models") {
            Self::Models
        } else if path == "/healthz" || path == "/readyz" {
            Self::Health
        } else if path == "/metrics" {
            Self::Metrics
        } else if path.starts_with("/admin/") {
            Self::Admin
        } else {
            Self::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Responses => "responses",
            Self::Models => "models",
            Self::Admin => "admin",
            Self::Health => "health",
            Self::Metrics => "metrics",
            Self::Other => "other",
        }
    }

    /// The data-plane endpoints, whose requests reach a provider.
    pub fn is_conversation(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Responses)
    }
}

impl EncodeLabelValue for EndpointLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Who caused a failed request; `none` for a success.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ErrorLabel {
    None,
    Client,
    Upstream,
    Internal,
}

impl ErrorLabel {
    /// From the error the response was rendered from, or from the status when it came from
    /// elsewhere (an upstream's own error status passed through counts as upstream).
    pub fn of(status: u16, source: Option<ErrorSource>) -> Self {
        match source {
            Some(ErrorSource::Client) => Self::Client,
            Some(ErrorSource::Upstream) => Self::Upstream,
            Some(ErrorSource::Internal) => Self::Internal,
            None if status < 400 => Self::None,
            None if status < 500 => Self::Client,
            None => Self::Internal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

impl EncodeLabelValue for ErrorLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A label value from configuration (a tenant, proxy, route, model or provider name), shared:
/// each of a request's series takes a reference count, not a copy of the string.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Name(Arc<str>);

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Where a request went: names from configuration, empty before they are known (a request
/// refused before authentication has no tenant).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub tenant: Name,
    pub proxy: Name,
    pub route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: Name,
    proxy: Name,
    route: Name,
    endpoint: EndpointLabel,
    status: u16,
    error: ErrorLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    tenant: Name,
    proxy: Name,
    route: Name,
    endpoint: EndpointLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    tenant: Name,
    proxy: Name,
    route: Name,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    tenant: Name,
    provider: &'static str,
    model: Name,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    tenant: Name,
    provider: &'static str,
    model: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: Name,
    /// The HTTP status, or 0 when no response arrived.
    status: u16,
    /// `ok`, `http_error`, `timeout`, `unreachable`, `incomplete` or `credentials`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type CostCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// One route's series of finished requests on one thread, each taken from its family at its
/// first use (so `/metrics` lists only series that were recorded). A request finds them all
/// with one lookup of its route's labels, lent: each series looked up under its own label set
/// cloned the three names (two atomic operations each) and hashed them again.
#[derive(Default)]
struct RouteSeries {
    /// By endpoint, status and error: a route sees few of these.
    requests: Vec<((EndpointLabel, u16, ErrorLabel), Counter)>,
    /// By endpoint.
    duration: Vec<(EndpointLabel, Histogram)>,
    ttft: Option<Histogram>,
    overhead: Option<Histogram>,
    /// Input, then output.
    tokens: [Option<Counter>; 2],
}

/// Series handles kept per worker thread, under FxHash, for every series a request records
/// ([`RouteSeries`], [`AttemptSeries`]; [`UsageSeries`] in [`UsageKept`]):
/// `Family::get_or_create` hashes the whole label set with SipHash and takes the family's lock
/// (about 3% of the gateway's CPU when every series went through it). A kept handle is a clone
/// of the family's (they share one atomic), so what it records is what `/metrics` renders;
/// label sets come from configuration, so the per-thread maps are as bounded as the families.
type Kept<K, V> = ThreadLocal<RefCell<HashMap<K, V, BuildHasherDefault<Fx>>>>;

/// The series kept under `key` in a short list of kept series, taken with `take` (from its
/// family) at its first use.
fn kept_series<K: PartialEq, M>(list: &mut Vec<(K, M)>, key: K, take: impl FnOnce() -> M) -> &M {
    let i = match list.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            list.push((key, take()));
            list.len() - 1
        }
    };
    &list[i].1
}

/// One provider's upstream attempt series on one thread (count and duration), by status and
/// outcome.
type AttemptSeries = Vec<((u16, &'static str), (Counter, Histogram))>;

/// A worker thread's usage series: (`tenant` NUL `provider` NUL `model`) → its series, and
/// the buffer a lookup writes that key in. Tenant ids and provider types hold no NUL, so the
/// key names one triple.
#[derive(Default)]
struct UsageKept {
    key: String,
    series: HashMap<Box<str>, UsageSeries, BuildHasherDefault<Fx>>,
}

/// One (tenant, provider, model)'s usage series on one thread, each taken from its family at
/// its first use (so `/metrics` lists only series that were recorded, as before).
struct UsageSeries {
    labels: CostLabels,
    unpriced: Option<Counter>,
    cost: Option<CostCounter>,
    /// By kind, in [`USAGE_KINDS`]' order.
    tokens: [Option<Counter>; 5],
}

/// The `kind` label of each count of a usage, in `UsageSeries::tokens`' order.
const USAGE_KINDS: [&str; 5] = [
    "input",
    "cached_input",
    "cache_write",
    "output",
    "reasoning",
];
/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    in_flight: Gauge,
    duration: HistogramFamily<DurationLabels>,
    ttft: HistogramFamily<RouteLabels>,
    overhead: HistogramFamily<RouteLabels>,
    upstream_attempts: Family<UpstreamLabels, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabels>,
    /// Per worker thread: each provider's attempt series, under its name (lent).
    upstream_kept: Kept<Box<str>, AttemptSeries>,
    tokens: Family<TokenLabels, Counter>,
    /// Per worker thread: each route's series of finished requests (see
    /// [`Metrics::request_finished`]).
    route_kept: Kept<RouteLabels, RouteSeries>,
    usage_tokens: Family<UsageLabels, Counter>,
    cost: Family<CostLabels, CostCounter>,
    unpriced: Family<CostLabels, Counter>,
    /// Per worker thread: the usage series of each (tenant, provider, model) it has recorded,
    /// found under one key (see [`Metrics::usage`]), and the buffer that key is written in.
    usage_kept: ThreadLocal<RefCell<UsageKept>>,
    reloads: Family<ReloadLabels, Counter>,
    generation: Gauge,
    last_reload_success: Gauge,
    applied_at: Gauge,
    draining: Gauge,
    trace_export_failures: Counter,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. 33 s: a cached answer to a long generation.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn overhead_histogram() -> Histogram {
    // 50 µs .. 0.8 s: what the gateway adds is expected in the sub-millisecond range.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(names::REQUESTS, "Requests answered", requests.clone());
        let in_flight = Gauge::default();
        registry.register(names::IN_FLIGHT, "Requests being served", in_flight.clone());
        let duration = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            names::REQUEST_DURATION,
            "Time from a request's arrival to its last response byte",
            duration.clone(),
        );
        let ttft = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            names::TIME_TO_FIRST_TOKEN,
            "Streams: time from a request's arrival to its first response byte",
            ttft.clone(),
        );
        let overhead = HistogramFamily::new_with_constructor(overhead_histogram as fn() -> _);
        registry.register(
            names::GATEWAY_OVERHEAD,
            "Time to the response headers minus the time spent waiting on the provider",
            overhead.clone(),
        );
        let upstream_attempts = Family::default();
        registry.register(
            names::UPSTREAM_ATTEMPTS,
            "Upstream attempts, retries included",
            upstream_attempts.clone(),
        );
        let upstream_duration =
            HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            names::UPSTREAM_DURATION,
            "One upstream attempt: to the headers of a stream, else to the whole body",
            upstream_duration.clone(),
        );
        let tokens = Family::default();
        registry.register(
            names::TOKENS,
            "Tokens in the providers' usage reports",
            tokens.clone(),
        );
        let usage_tokens = Family::default();
        registry.register(
            names::USAGE_TOKENS,
            "Tokens billed, by tenant, provider type, model and kind",
            usage_tokens.clone(),
        );
        let cost = Family::default();
        registry.register(
            names::COST_USD,
            "Cost in USD of the requests with a known price (the ledger holds the exact figures)",
            cost.clone(),
        );
        let unpriced = Family::default();
        registry.register(
            names::UNPRICED_REQUESTS,
            "Requests whose model has no price: their cost is recorded as unknown",
            unpriced.clone(),
        );
        let reloads = Family::default();
        registry.register(
            names::CONFIG_RELOADS,
            "Configuration reload attempts",
            reloads.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            names::CONFIG_GENERATION,
            "Generation of the configuration in force",
            generation.clone(),
        );
        let last_reload_success = Gauge::default();
        registry.register(
            names::CONFIG_LAST_RELOAD_SUCCESS,
            "1 when the last reload attempt was applied, 0 when it was rejected",
            last_reload_success.clone(),
        );
        let applied_at = Gauge::default();
        registry.register(
            names::CONFIG_APPLIED_TIMESTAMP,
            "Unix time when the configuration in force was applied",
            applied_at.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            names::DRAINING,
            "1 while the gateway drains for shutdown",
            draining.clone(),
        );
        let trace_export_failures = Counter::default();
        registry.register(
            names::TRACE_EXPORT_FAILURES,
            "Spans the trace exporter could not deliver",
            trace_export_failures.clone(),
        );
        Self {
            trace_export_failures,
            registry,
            requests,
            in_flight,
            duration,
            ttft,
            overhead,
            upstream_attempts,
            upstream_duration,
            upstream_kept: ThreadLocal::new(),
            tokens,
            route_kept: ThreadLocal::new(),
            usage_tokens,
            cost,
            unpriced,
            usage_kept: ThreadLocal::new(),
            reloads,
            generation,
            last_reload_success,
            applied_at,
            draining,
        }
    }

    /// A request's billed usage and cost (`governance::Governance::record`).
    ///
    /// Its series are found with one lookup a request, under a key written into a kept buffer:
    /// a label set per series (two names copied into new strings, a hash each) cost about
    /// 1,700 instructions a request.
    pub fn usage(
        &self,
        tenant: &str,
        provider: &'static str,
        model: &str,
        usage: Option<&crate::api::canonical::Usage>,
        cost: Option<rust_decimal::Decimal>,
        priced: bool,
    ) {
        let mut kept = self.usage_kept.get_or_default().borrow_mut();
        let UsageKept { key, series } = &mut *kept;
        key.clear();
        for part in [tenant, "\0", provider, "\0", model] {
            key.push_str(part);
        }
        if !series.contains_key(key.as_str()) {
            let labels = CostLabels {
                tenant: Name::from(tenant),
                provider,
                model: Name::from(model),
            };
            series.insert(
                key.as_str().into(),
                UsageSeries {
                    labels,
                    unpriced: None,
                    cost: None,
                    tokens: Default::default(),
                },
            );
        }
        let Some(s) = series.get_mut(key.as_str()) else {
            return;
        };
        if !priced {
            s.unpriced
                .get_or_insert_with(|| self.unpriced.get_or_create(&s.labels).clone())
                .inc();
        }
        if let Some(c) = cost.and_then(|c| rust_decimal::prelude::ToPrimitive::to_f64(&c)) {
            s.cost
                .get_or_insert_with(|| self.cost.get_or_create(&s.labels).clone())
                .inc_by(c);
        }
        let Some(u) = usage else {
            return;
        };
        let counts = [
            u.input_tokens,
            u.cached_input_tokens,
            u.cache_write_tokens,
            u.output_tokens,
            u.reasoning_tokens,
        ];
        for ((slot, kind), n) in s.tokens.iter_mut().zip(USAGE_KINDS).zip(counts) {
            if n > 0 {
                slot.get_or_insert_with(|| {
                    let labels = UsageLabels {
                        tenant: s.labels.tenant.clone(),
                        provider,
                        model: s.labels.model.clone(),
                        kind,
                    };
                    self.usage_tokens.get_or_create(&labels).clone()
                })
                .inc_by(n);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// A request started; the returned value is handed back to [`Metrics::request_finished`].
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// A request ended (its last byte written, or the client gone).
    pub fn request_finished(&self, done: &FinishedRequest<'_>) {
        self.in_flight.dec();
        let l = done.route;
        let mut kept = self.route_kept.get_or_default().borrow_mut();
        let s = match kept.get_mut(l) {
            Some(s) => s,
            None => kept.entry(l.clone()).or_default(),
        };
        let (endpoint, status, error) = (done.endpoint, done.status, done.error);
        kept_series(&mut s.requests, (endpoint, status, error), || {
            let labels = RequestLabels {
                tenant: l.tenant.clone(),
                proxy: l.proxy.clone(),
                route: l.route.clone(),
                endpoint,
                status,
                error,
            };
            self.requests.get_or_create(&labels).clone()
        })
        .inc();
        kept_series(&mut s.duration, endpoint, || {
            let labels = DurationLabels {
                tenant: l.tenant.clone(),
                proxy: l.proxy.clone(),
                route: l.route.clone(),
                endpoint,
            };
            self.duration.get_or_create(&labels).clone()
        })
        .observe(done.total.as_secs_f64());
        if let Some(ttft) = done.ttft {
            s.ttft
                .get_or_insert_with(|| self.ttft.get_or_create(l).clone())
                .observe(ttft.as_secs_f64());
        }
        if let Some(overhead) = done.overhead {
            s.overhead
                .get_or_insert_with(|| self.overhead.get_or_create(l).clone())
                .observe(overhead.as_secs_f64());
        }
        if let Some((input, output)) = done.tokens {
            for ((kind, n), slot) in [("input", input), ("output", output)]
                .into_iter()
                .zip(&mut s.tokens)
            {
                let labels = || TokenLabels {
                    tenant: l.tenant.clone(),
                    proxy: l.proxy.clone(),
                    route: l.route.clone(),
                    kind,
                };
                slot.get_or_insert_with(|| self.tokens.get_or_create(&labels()).clone())
                    .inc_by(n);
            }
        }
    }

    /// One upstream attempt ended with `status` (0: no response) and `outcome`.
    pub fn upstream_attempt(
        &self,
        provider: &str,
        status: u16,
        outcome: &'static str,
        took: Duration,
    ) {
        let mut kept = self.upstream_kept.get_or_default().borrow_mut();
        let series = match kept.get_mut(provider) {
            Some(s) => s,
            None => kept.entry(provider.into()).or_default(),
        };
        let (count, duration) = kept_series(series, (status, outcome), || {
            let labels = UpstreamLabels {
                provider: Name::from(provider),
                status,
                outcome,
            };
            let count = self.upstream_attempts.get_or_create(&labels).clone();
            (count, self.upstream_duration.get_or_create(&labels).clone())
        });
        count.inc();
        duration.observe(took.as_secs_f64());
    }

    /// A reload attempt ended: `applied`, `invalid` or `refused`.
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.last_reload_success.set(i64::from(result == "applied"));
    }

    /// The configuration of `generation` is in force since `applied_at` (Unix seconds).
    pub fn config_applied(&self, generation: u64, applied_at: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.applied_at
            .set(i64::try_from(applied_at).unwrap_or(i64::MAX));
    }

    /// An export of `spans` spans failed.
    pub fn trace_export_failed(&self, spans: u64) {
        self.trace_export_failures.inc_by(spans);
    }

    /// The gateway began draining for shutdown.
    pub fn draining(&self) {
        self.draining.set(1);
    }
}

/// What [`Metrics::request_finished`] records about one request.
#[derive(Debug)]
pub struct FinishedRequest<'a> {
    pub route: &'a RouteLabels,
    pub endpoint: EndpointLabel,
    pub status: u16,
    pub error: ErrorLabel,
    pub total: Duration,
    pub ttft: Option<Duration>,
    pub overhead: Option<Duration>,
    pub tokens: Option<(u64, u64)>,
}

/// Counts one upstream attempt by its result (for the provider actor).
pub fn upstream_attempt(
    provider: &str,
    result: &Result<crate::providers::UpstreamResponse, crate::error::GatewayError>,
    took: Duration,
) {
    use crate::error::GatewayError as E;
    use actix_web::ResponseError;
    let (status, outcome) = match result {
        Ok(r) => (r.status.as_u16(), "ok"),
        Err(E::Upstream(u)) => (u.status.as_u16(), "http_error"),
        Err(E::UpstreamCredentials { .. }) => (401, "credentials"),
        Err(E::UpstreamTimeout { .. }) => (0, "timeout"),
        Err(E::UpstreamUnavailable { .. }) => (0, "unreachable"),
        Err(E::UpstreamIncomplete { .. }) => (200, "incomplete"),
        Err(other) => (other.status_code().as_u16(), "error"),
    };
    metrics().upstream_attempt(provider, status, outcome, took);
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines starting with `prefix`, sorted (a family's series are in hash-map order).
    fn line<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        let mut lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn series_kept_per_thread_share_the_familys_count_and_two_registries_keep_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let attempt = |m: &Metrics, n| {
            for _ in 0..n {
                m.upstream_attempt("openai", 200, "ok", Duration::from_millis(1));
            }
        };
        attempt(&a, 3);
        std::thread::scope(|s| {
            s.spawn(|| attempt(&a, 2));
        });
        attempt(&b, 1);
        attempt(&a, 1);
        // Another status and another provider, after the first's series are kept.
        a.upstream_attempt("openai", 503, "http_error", Duration::from_millis(1));
        a.upstream_attempt("azure", 200, "ok", Duration::from_millis(1));
        let count =
            |m: &Metrics| line(&m.render(), "switchyard_upstream_attempts_total{").join("\n");
        assert_eq!(
            count(&a),
            [
                "switchyard_upstream_attempts_total{provider=\"azure\",status=\"200\",outcome=\"ok\"} 1",
                "switchyard_upstream_attempts_total{provider=\"openai\",status=\"200\",outcome=\"ok\"} 6",
                "switchyard_upstream_attempts_total{provider=\"openai\",status=\"503\",outcome=\"http_error\"} 1",
            ]
            .join("\n")
        );
        assert_eq!(
            line(&a.render(), "switchyard_upstream_duration_seconds_count{").join("\n"),
            [
                "switchyard_upstream_duration_seconds_count{provider=\"azure\",status=\"200\",outcome=\"ok\"} 1",
                "switchyard_upstream_duration_seconds_count{provider=\"openai\",status=\"200\",outcome=\"ok\"} 6",
                "switchyard_upstream_duration_seconds_count{provider=\"openai\",status=\"503\",outcome=\"http_error\"} 1",
            ]
            .join("\n")
        );
        assert_eq!(
            count(&b),
            "switchyard_upstream_attempts_total{provider=\"openai\",status=\"200\",outcome=\"ok\"} 1"
        );
    }

    #[test]
    fn usage_counts_each_triple_apart_and_lists_only_what_was_recorded() {
        use crate::api::canonical::Usage;
        let m = Metrics::new();
        let u = |input, cached, output| Usage {
            input_tokens: input,
            cached_input_tokens: cached,
            cache_write_tokens: 0,
            output_tokens: output,
            reasoning_tokens: 0,
        };
        let price = Some(rust_decimal::Decimal::new(25, 4));
        m.usage("acme", "openai", "gpt-4o", Some(&u(5, 0, 12)), price, true);
        m.usage("acme", "openai", "gpt-4o", Some(&u(3, 2, 1)), price, true);
        // Names that would run together without the key's separators stay apart.
        m.usage("acm", "openai", "egpt-4o", Some(&u(7, 0, 0)), None, false);
        m.usage("acme", "openai", "mystery", None, None, false);
        let text = m.render();
        assert_eq!(
            line(&text, "switchyard_usage_tokens_total{"),
            [
                "switchyard_usage_tokens_total{tenant=\"acm\",provider=\"openai\",model=\"egpt-4o\",kind=\"input\"} 7",
                "switchyard_usage_tokens_total{tenant=\"acme\",provider=\"openai\",model=\"gpt-4o\",kind=\"cached_input\"} 2",
                "switchyard_usage_tokens_total{tenant=\"acme\",provider=\"openai\",model=\"gpt-4o\",kind=\"input\"} 8",
                "switchyard_usage_tokens_total{tenant=\"acme\",provider=\"openai\",model=\"gpt-4o\",kind=\"output\"} 13",
            ]
        );
        assert_eq!(
            line(&text, "switchyard_cost_usd_total{"),
            [
                "switchyard_cost_usd_total{tenant=\"acme\",provider=\"openai\",model=\"gpt-4o\"} 0.005"
            ]
        );
        assert_eq!(
            line(&text, "switchyard_unpriced_requests_total{"),
            [
                "switchyard_unpriced_requests_total{tenant=\"acm\",provider=\"openai\",model=\"egpt-4o\"} 1",
                "switchyard_unpriced_requests_total{tenant=\"acme\",provider=\"openai\",model=\"mystery\"} 1",
            ]
        );
    }

    #[test]
    fn renders_prometheus_text_with_typed_labels() {
        let m = Metrics::new();
        let route = RouteLabels {
            tenant: "acme".into(),
            proxy: "chat".into(),
            route: "big".into(),
        };
        m.request_started();
        m.request_finished(&FinishedRequest {
            route: &route,
            endpoint: EndpointLabel::ChatCompletions,
            status: 200,
            error: ErrorLabel::None,
            total: Duration::from_millis(30),
            ttft: Some(Duration::from_millis(5)),
            overhead: Some(Duration::from_micros(300)),
            tokens: Some((7, 12)),
        });
        m.upstream_attempt("openai", 503, "http_error", Duration::from_millis(2));
        m.reload("invalid");
        m.config_applied(3, 1_700_000_000);
        let text = m.render();
        assert_eq!(
            line(&text, "switchyard_requests_total{"),
            [
                "switchyard_requests_total{tenant=\"acme\",proxy=\"chat\",route=\"big\",endpoint=\"chat_completions\",status=\"200\",error=\"none\"} 1"
            ]
        );
        assert_eq!(
            line(&text, "switchyard_requests_in_flight "),
            ["switchyard_requests_in_flight 0"]
        );
        assert_eq!(
            line(&text, "switchyard_tokens_total{"),
            [
                "switchyard_tokens_total{tenant=\"acme\",proxy=\"chat\",route=\"big\",kind=\"input\"} 7",
                "switchyard_tokens_total{tenant=\"acme\",proxy=\"chat\",route=\"big\",kind=\"output\"} 12"
            ]
        );
        assert_eq!(
            line(&text, "switchyard_upstream_attempts_total{"),
            [
                "switchyard_upstream_attempts_total{provider=\"openai\",status=\"503\",outcome=\"http_error\"} 1"
            ]
        );
        assert_eq!(
            line(&text, "switchyard_config_reloads_total{"),
            ["switchyard_config_reloads_total{result=\"invalid\"} 1"]
        );
        assert_eq!(
            line(&text, "switchyard_config_generation "),
            ["switchyard_config_generation 3"]
        );
        assert_eq!(
            line(&text, "switchyard_config_last_reload_success "),
            ["switchyard_config_last_reload_success 0"]
        );
        assert_eq!(
            line(&text, "switchyard_time_to_first_token_seconds_count{"),
            [
                "switchyard_time_to_first_token_seconds_count{tenant=\"acme\",proxy=\"chat\",route=\"big\"} 1"
            ]
        );
        // 30 ms falls in the 32 ms bucket (1 ms doubling), not the 16 ms one.
        let buckets = line(&text, "switchyard_request_duration_seconds_bucket{");
        assert!(
            buckets
                .iter()
                .any(|l| l.contains("le=\"0.016\"") && l.ends_with(" 0")),
            "{buckets:?}"
        );
        assert!(
            buckets
                .iter()
                .any(|l| l.contains("le=\"0.032\"") && l.ends_with(" 1")),
            "{buckets:?}"
        );
    }

    /// Each route's series are kept per thread after their first use: repeated requests, on
    /// another status, endpoint or route, and from another thread all count in their own
    /// series, exactly.
    #[test]
    fn kept_route_series_count_each_label_set_apart() {
        let m = Metrics::new();
        let route = |name: &str| RouteLabels {
            tenant: "acme".into(),
            proxy: "chat".into(),
            route: name.into(),
        };
        let (big, small) = (route("big"), route("small"));
        let finish = |route: &RouteLabels, endpoint, status, error, tokens| {
            m.request_started();
            m.request_finished(&FinishedRequest {
                route,
                endpoint,
                status,
                error,
                total: Duration::from_millis(30),
                ttft: None,
                overhead: Some(Duration::from_micros(300)),
                tokens,
            });
        };
        use EndpointLabel::{ChatCompletions as Chat, Responses};
        for _ in 0..3 {
            finish(&big, Chat, 200, ErrorLabel::None, Some((2, 5)));
        }
        finish(&big, Chat, 502, ErrorLabel::Upstream, None);
        finish(&big, Responses, 200, ErrorLabel::None, Some((1, 1)));
        finish(&small, Chat, 200, ErrorLabel::None, Some((4, 0)));
        std::thread::scope(|t| {
            t.spawn(|| finish(&big, Chat, 200, ErrorLabel::None, Some((10, 10))));
        });
        let text = m.render();
        let series = |name: &str, route: &str, rest: &str| {
            format!("{name}{{tenant=\"acme\",proxy=\"chat\",route=\"{route}\"{rest}}}")
        };
        let requests = |route, endpoint, status, error, n| {
            let rest = format!(",endpoint=\"{endpoint}\",status=\"{status}\",error=\"{error}\"");
            format!("{} {n}", series("switchyard_requests_total", route, &rest))
        };
        assert_eq!(
            line(&text, "switchyard_requests_total{"),
            [
                requests("big", "chat_completions", 200, "none", 4),
                requests("big", "chat_completions", 502, "upstream", 1),
                requests("big", "responses", 200, "none", 1),
                requests("small", "chat_completions", 200, "none", 1),
            ]
        );
        let tokens = |route, kind, n| {
            let rest = format!(",kind=\"{kind}\"");
            format!("{} {n}", series("switchyard_tokens_total", route, &rest))
        };
        assert_eq!(
            line(&text, "switchyard_tokens_total{"),
            [
                tokens("big", "input", 17),
                tokens("big", "output", 26),
                tokens("small", "input", 4),
                tokens("small", "output", 0),
            ]
        );
        let count = |name, route, rest, n| format!("{} {n}", series(name, route, rest));
        let duration = "switchyard_request_duration_seconds_count";
        assert_eq!(
            line(&text, "switchyard_request_duration_seconds_count{"),
            [
                count(duration, "big", ",endpoint=\"chat_completions\"", 5),
                count(duration, "big", ",endpoint=\"responses\"", 1),
                count(duration, "small", ",endpoint=\"chat_completions\"", 1),
            ]
        );
        let overhead = "switchyard_gateway_overhead_seconds_count";
        assert_eq!(
            line(&text, "switchyard_gateway_overhead_seconds_count{"),
            [
                count(overhead, "big", "", 6),
                count(overhead, "small", "", 1)
            ]
        );
        assert!(line(&text, "switchyard_time_to_first_token_seconds_count{").is_empty());
    }

    #[test]
    fn endpoints_and_errors_come_from_closed_sets() {
        assert_eq!(
            EndpointLabel::classify("/a/chat/v1/chat/completions"),
            EndpointLabel::ChatCompletions
        );
        assert_eq!(
            EndpointLabel::classify("/a/chat/v1/responses"),
            EndpointLabel::Responses
        );
        assert_eq!(
            EndpointLabel::classify("/admin/reload"),
            EndpointLabel::Admin
        );
        assert_eq!(
            EndpointLabel::classify("/whatever/<script>"),
            EndpointLabel::Other
        );
        assert_eq!(ErrorLabel::of(200, None), ErrorLabel::None);
        assert_eq!(ErrorLabel::of(404, None), ErrorLabel::Client);
        assert_eq!(
            ErrorLabel::of(429, Some(ErrorSource::Upstream)),
            ErrorLabel::Upstream
        );
        assert_eq!(ErrorLabel::of(500, None), ErrorLabel::Internal);
    }
}
