//! Every metric name the gateway exports, in one place.
//!
//! Names follow `switchyard_<name>_<unit>`; counters are registered without their `_total`
//! suffix, which the Prometheus encoder appends (so `REQUESTS` is scraped as
//! `switchyard_requests_total`). Nothing outside `telemetry` spells a metric name.

/// Requests answered, by tenant, proxy, route, endpoint, status and error source.
pub const REQUESTS: &str = "switchyard_requests";
/// Requests being served now (headers or body not yet finished).
pub const IN_FLIGHT: &str = "switchyard_requests_in_flight";
/// Time from the request's arrival to its last response byte.
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
/// Streams: time from the request's arrival to the first response byte.
pub const TIME_TO_FIRST_TOKEN: &str = "switchyard_time_to_first_token_seconds";
/// Time to the response headers minus the time spent waiting on the provider.
pub const GATEWAY_OVERHEAD: &str = "switchyard_gateway_overhead_seconds";
/// Upstream attempts (retries included), by provider and outcome.
pub const UPSTREAM_ATTEMPTS: &str = "switchyard_upstream_attempts";
/// One upstream attempt: to the response headers when streaming, else to the whole body.
pub const UPSTREAM_DURATION: &str = "switchyard_upstream_duration_seconds";
/// Tokens reported by the provider's `usage`, by tenant, proxy, route and kind.
pub const TOKENS: &str = "switchyard_tokens";
/// Governance: tokens billed, per tenant, provider type, model and kind.
pub const USAGE_TOKENS: &str = "switchyard_usage_tokens";
/// Governance: cost in USD per tenant, provider type and model (the ledger is exact; this is
/// for dashboards).
pub const COST_USD: &str = "switchyard_cost_usd";
/// Governance: requests whose model has no price (cost recorded as unknown).
pub const UNPRICED_REQUESTS: &str = "switchyard_unpriced_requests";
/// Reload attempts, by result (`applied`, `invalid`, `refused`).
pub const CONFIG_RELOADS: &str = "switchyard_config_reloads";
/// The generation of the configuration in force (1 at start, +1 per applied reload).
pub const CONFIG_GENERATION: &str = "switchyard_config_generation";
/// 1 when the last reload attempt was applied, 0 when it was rejected.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "switchyard_config_last_reload_success";
/// Unix time when the configuration in force was applied.
pub const CONFIG_APPLIED_TIMESTAMP: &str = "switchyard_config_applied_timestamp_seconds";
/// 1 while the gateway drains for shutdown (`/readyz` answers 503).
pub const DRAINING: &str = "switchyard_draining";
/// Spans the trace exporter could not deliver.
pub const TRACE_EXPORT_FAILURES: &str = "switchyard_trace_export_failures";

/// Span: the request, the gateway's server span (the root of what it exports).
pub const SPAN_REQUEST: &str = "request";
/// Span: choosing the route (child of the request's server span).
pub const SPAN_ROUTING: &str = "routing";
/// Span: one upstream attempt, until the upstream's last byte (child of the request's span).
pub const SPAN_UPSTREAM: &str = "upstream";
/// Span: relaying a stream to the client, from its headers to its last byte.
pub const SPAN_STREAM: &str = "stream";

/// GenAI semantic-convention attributes (OpenTelemetry `gen_ai.*`).
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.operation.name`'s value for a chat completion.
pub const GEN_AI_OPERATION_CHAT: &str = "chat";
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// The HTTP status of a response (OpenTelemetry HTTP conventions).
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// Upstream attempts after the first for this request.
pub const SWITCHYARD_RETRIES: &str = "switchyard.retries";
/// The proxy's fallback route served the request.
pub const SWITCHYARD_FALLBACK: &str = "switchyard.fallback";
/// The request's id, tenant, proxy and route (server span), and an attempt's number and
/// provider (upstream span).
pub const REQUEST_ID: &str = "request_id";
pub const TENANT: &str = "tenant";
pub const PROXY: &str = "proxy";
pub const ROUTE: &str = "route";
pub const ATTEMPT: &str = "attempt";
pub const PROVIDER: &str = "provider";
