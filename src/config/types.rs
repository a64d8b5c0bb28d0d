//! Validated configuration types: what the rest of the gateway reads.
//!
//! These are produced only by `validate` (structure) and `snapshot` (secrets resolved), so
//! holders may rely on every invariant checked there: routes reference existing providers,
//! names are unique, limits hold. No `Option` stands for something that must exist.

use super::secret::Secret;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Gateway-wide cap on LLM proxies, enforced at validation and by the supervisor at run time.
pub const MAX_PROXIES: usize = 50;
/// Semantic topics per proxy, across all its routes.
pub const MAX_TOPICS: usize = 6;
/// Utterances per topic.
pub const MAX_UTTERANCES: usize = 10;
/// Deny-list topics per proxy.
pub const MAX_DENY_TOPICS: usize = 6;
/// Utterances per deny topic.
pub const MAX_DENY_UTTERANCES: usize = 10;
/// Characters per utterance.
pub const MAX_UTTERANCE_CHARS: usize = 500;
/// Names that cannot be tenant ids because the control plane owns those paths.
pub const RESERVED_TENANT_IDS: &[&str] = &["admin", "healthz", "readyz", "metrics"];

/// How a proxy picks a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingMode {
    /// By the request's `model` field.
    Model,
    /// By the meaning of the prompt, against the routes' topics.
    Semantic,
}

impl RoutingMode {
    /// The value of the `x-switchyard-routing` header.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Model => "model",
            RoutingMode::Semantic => "semantic",
        }
    }
}

/// What text a semantic decision compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingText {
    /// The last user message (default).
    LastUser,
    /// Every message of the conversation, in order.
    Conversation,
}

/// The upstream wire protocol of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    AzureOpenAi,
    Gemini,
    Bedrock,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::OpenAi,
        ProviderKind::AzureOpenAi,
        ProviderKind::Gemini,
        ProviderKind::Bedrock,
    ];

    /// The config and header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::AzureOpenAi => "azure_openai",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Bedrock => "bedrock",
        }
    }
}

/// What each kind of provider needs besides its base URL and credentials: one variant per
/// `type`, so no kind carries another's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderSettings {
    OpenAi {
        /// `OpenAI-Organization` header.
        organization: Option<String>,
        /// `OpenAI-Project` header.
        project: Option<String>,
    },
    AzureOpenAi {
        api: AzureApi,
    },
    Gemini {
        /// Path segment before `/models`, e.g. `v1beta`.
        api_version: String,
    },
    Bedrock {
        /// AWS region, part of the SigV4 scope and of the default endpoint.
        region: String,
    },
}

impl ProviderSettings {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderSettings::OpenAi { .. } => ProviderKind::OpenAi,
            ProviderSettings::AzureOpenAi { .. } => ProviderKind::AzureOpenAi,
            ProviderSettings::Gemini { .. } => ProviderKind::Gemini,
            ProviderSettings::Bedrock { .. } => ProviderKind::Bedrock,
        }
    }
}

/// Which of Azure OpenAI's two URL forms a provider uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureApi {
    /// `{endpoint}/openai/deployments/{deployment}/…?api-version=…`; the deployment is the
    /// route's upstream model.
    Deployments { api_version: String },
    /// `{base_url}/…` where the base URL ends in `/openai/v1`: no api-version, the deployment
    /// goes in the body's `model`.
    V1,
}

/// Where a provider's credentials come from, by environment variable name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// One key: OpenAI's bearer key, Azure's `api-key`, Gemini's API key, a Bedrock API key.
    ApiKey { env: String },
    /// A Microsoft Entra ID bearer token (Azure OpenAI).
    EntraToken { env: String },
    /// AWS access keys for SigV4 (Bedrock).
    Aws {
        access_key_id_env: String,
        secret_access_key_env: String,
        session_token_env: Option<String>,
    },
}

/// Credentials as read from the environment.
#[derive(Clone, Debug)]
pub enum Credentials {
    ApiKey(Secret<String>),
    EntraToken(Secret<String>),
    Aws {
        access_key_id: Secret<String>,
        secret_access_key: Secret<String>,
        session_token: Option<Secret<String>>,
    },
}

impl Credentials {
    /// The secret that identifies the upstream account (scopes Responses ids per account).
    pub fn account_secret(&self) -> &str {
        match self {
            Credentials::ApiKey(k) | Credentials::EntraToken(k) => k.expose(),
            Credentials::Aws { access_key_id, .. } => access_key_id.expose(),
        }
    }
}

/// A failure that can move a request down its route's fallback chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The upstream could not be reached, or closed the connection before answering.
    Connect,
    /// No answer (or, for a stream, no first event) in time.
    Timeout,
    /// The upstream answered 429.
    RateLimited,
    /// The upstream answered 5xx.
    ServerError,
    /// The endpoint's circuit breaker is open.
    CircuitOpen,
    /// The upstream answered 200 and then an error event before any content.
    StreamError,
}

impl Trigger {
    pub const ALL: [Trigger; 6] = [
        Trigger::Connect,
        Trigger::Timeout,
        Trigger::RateLimited,
        Trigger::ServerError,
        Trigger::CircuitOpen,
        Trigger::StreamError,
    ];

    /// The config spelling, also the `x-switchyard-fallback-reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Connect => "connect",
            Trigger::Timeout => "timeout",
            Trigger::RateLimited => "429",
            Trigger::ServerError => "5xx",
            Trigger::CircuitOpen => "circuit_open",
            Trigger::StreamError => "stream_error",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Trigger`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Triggers(u8);

impl Triggers {
    pub fn all() -> Self {
        Trigger::ALL.into_iter().collect()
    }

    pub fn contains(self, t: Trigger) -> bool {
        self.0 & t.bit() != 0
    }
}

impl FromIterator<Trigger> for Triggers {
    fn from_iter<I: IntoIterator<Item = Trigger>>(iter: I) -> Self {
        Triggers(iter.into_iter().fold(0, |acc, t| acc | t.bit()))
    }
}

/// When an endpoint's circuit opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitPolicy {
    /// Consecutive failures that open the circuit; 0 for never.
    pub failures: u32,
    pub open_for: Duration,
}

/// A prompt topic and its example utterances.
#[derive(Clone, Debug)]
pub struct Topic {
    pub name: String,
    pub utterances: Vec<String>,
}

/// A provider plus a target model, inside one proxy.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    /// Index into the tenant's providers.
    pub provider: usize,
    /// The provider's name, for headers and model matching.
    pub provider_name: String,
    /// The provider's kind, for `<type>/<model>` matching.
    pub provider_kind: ProviderKind,
    /// The model name clients use.
    pub model: String,
    /// What is sent upstream when it differs from `model`.
    pub target_model: Option<String>,
    pub aliases: Vec<String>,
    pub topics: Vec<Topic>,
    /// Indexes into the proxy's routes, tried in order when this route fails.
    pub fallbacks: Vec<usize>,
    /// The failures that move on to `fallbacks`.
    pub fallback_on: Triggers,
    /// Longest wait for a stream's first event.
    pub first_byte_timeout: Option<Duration>,
    /// Longest time before the answer starts, retries included.
    pub deadline: Option<Duration>,
    /// The route's span attributes, written once (`otel::routed`).
    pub span_attributes: crate::telemetry::otel::Cached,
    /// The values of the headers that name the route, its provider and its upstream model on
    /// every answer, made at the first answer (`http::data_plane::explained`); `None` for a
    /// name that is no header value.
    pub answer_headers: std::sync::OnceLock<[Option<actix_web::http::header::HeaderValue>; 3]>,
}

impl Route {
    /// The model sent upstream.
    pub fn upstream_model(&self) -> &str {
        self.target_model.as_deref().unwrap_or(&self.model)
    }

    /// The id this route is listed under: `<provider>/<model>`.
    pub fn qualified_model(&self) -> String {
        format!("{}/{}", self.provider_name, self.model)
    }
}

/// One LLM proxy: an OpenAI-compatible endpoint with its routes.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub tenant: String,
    pub id: String,
    pub routing: RoutingMode,
    pub routes: Vec<Route>,
    /// Index into `routes`.
    pub fallback: Option<usize>,
    /// The semantic decision threshold this proxy sets (`None`: the encoder's default).
    pub threshold: Option<f32>,
    pub deny_topics: Vec<Topic>,
    /// What a semantic decision compares.
    pub routing_text: RoutingText,
    /// The proxy's span attributes (tenant, proxy), written once (`otel::named`).
    pub span_attributes: crate::telemetry::otel::Cached,
}

/// A tenant key as validated: where its value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Sha256([u8; 32]),
    Env(String),
}

/// A provider as validated: secrets still referenced by name.
#[derive(Clone, Debug)]
pub struct ProviderSpec {
    pub name: String,
    pub settings: ProviderSettings,
    /// Without a trailing slash: OpenAI's and Gemini's base URL, Azure's resource endpoint
    /// (or `/openai/v1` base URL), Bedrock's runtime endpoint.
    pub base_url: String,
    pub base_url_env: Option<String>,
    pub credentials: CredentialSource,
    pub timeout: Duration,
    pub max_retries: u32,
    pub circuit: CircuitPolicy,
}

/// A tenant file that passed validation; secrets are resolved by `snapshot::build`.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    pub id: String,
    pub file: PathBuf,
    pub keys: Vec<(String, KeySource)>,
    pub providers: Vec<ProviderSpec>,
    pub proxies: Vec<Arc<Proxy>>,
    pub governance: Arc<TenantGovernance>,
}

/// Requests and tokens per minute; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_minute.is_none()
    }
}

/// A budget as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The API key it caps; `None` for the whole tenant.
    pub key: Option<String>,
    pub limit: BudgetLimit,
    pub period: Period,
    /// Exhausted: divert to the proxy's fallback route instead of refusing.
    pub divert: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetLimit {
    Usd(rust_decimal::Decimal),
    Tokens(u64),
}

/// A budget's period, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

/// A tenant's governance settings: rate limits and its own prices.
#[derive(Clone, Debug, Default)]
pub struct TenantGovernance {
    pub limits: Limits,
    /// Per key name; only keys with a limit are here.
    pub key_limits: std::collections::HashMap<String, Limits>,
    /// Spending caps, checked with reservations (`governance::budgets`).
    pub budgets: Vec<Budget>,
    /// (provider type, model) → price, over the built-in table.
    pub prices:
        std::collections::HashMap<(ProviderKind, String), crate::governance::pricing::Price>,
}

/// A provider ready to call: base URL chosen, key read.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub settings: ProviderSettings,
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`; also the circuit breaker's
    /// endpoint key.
    pub base_url: String,
    pub credentials: Credentials,
    pub timeout: Duration,
    pub max_retries: u32,
    pub circuit: CircuitPolicy,
    /// What every attempt would otherwise rebuild from these settings (empty until the first).
    pub prebuilt: crate::providers::Prebuilt,
}

impl Provider {
    /// An OpenAI provider at `base_url` with a placeholder key and no retries, for tests and
    /// benchmarks that never call it.
    #[doc(hidden)]
    pub fn placeholder(name: &str, base_url: &str) -> Self {
        Provider {
            name: name.to_owned(),
            settings: ProviderSettings::OpenAi {
                organization: None,
                project: None,
            },
            base_url: base_url.to_owned(),
            credentials: Credentials::ApiKey(Secret::new("k".into())),
            timeout: Duration::from_secs(1),
            max_retries: 0,
            circuit: CircuitPolicy {
                failures: 0,
                open_for: Duration::from_secs(1),
            },
            prebuilt: Default::default(),
        }
    }
}

impl Provider {
    pub fn kind(&self) -> ProviderKind {
        self.settings.kind()
    }
}

/// A tenant key as compared at request time: only its SHA-256 is kept.
#[derive(Debug)]
pub struct TenantKey {
    pub name: String,
    pub digest: [u8; 32],
}
