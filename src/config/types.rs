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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
}

impl ProviderKind {
    /// The config and header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
        }
    }
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
    pub threshold: f32,
    pub deny_topics: Vec<Topic>,
    /// What a semantic decision compares.
    pub routing_text: RoutingText,
}

/// A tenant key as validated: where its value comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    Sha256([u8; 32]),
    Env(String),
}

/// A provider as validated: secrets still referenced by name.
#[derive(Clone, Debug)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub base_url_env: Option<String>,
    pub api_key_env: String,
    pub organization: Option<String>,
    pub project: Option<String>,
    pub timeout: Duration,
    pub max_retries: u32,
}

/// A tenant file that passed validation; secrets are resolved by `snapshot::build`.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    pub id: String,
    pub file: PathBuf,
    pub keys: Vec<(String, KeySource)>,
    pub providers: Vec<ProviderSpec>,
    pub proxies: Vec<Arc<Proxy>>,
}

/// A provider ready to call: base URL chosen, key read.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Secret<String>,
    pub organization: Option<String>,
    pub project: Option<String>,
    pub timeout: Duration,
    pub max_retries: u32,
}

/// A tenant key as compared at request time: only its SHA-256 is kept.
#[derive(Debug)]
pub struct TenantKey {
    pub name: String,
    pub digest: [u8; 32],
}
