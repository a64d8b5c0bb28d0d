//! Stage one of configuration: tenant files as they are written.
//!
//! These types mirror the TOML exactly and reject unknown keys, so a typo is an error rather
//! than a silently ignored setting. Nothing here is checked beyond syntax and types; the rules
//! (limits, references, reserved names) live in `validate`, which turns these into runtime
//! types.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One `tenants/<id>.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Keys the tenant's clients present as `Authorization: Bearer …`.
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// Upstream providers by name (`[providers.<name>]`).
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// LLM proxies by id (`[proxies.<id>]`); each is one OpenAI-compatible endpoint.
    #[serde(default)]
    pub proxies: BTreeMap<String, RawProxy>,
}

/// A tenant API key: a reference to an environment variable or a SHA-256 hash, never a literal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// A label for logs and usage reports.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: Option<String>,
    /// Name of the environment variable holding the key.
    pub env: Option<String>,
    /// Accepted by the parser only to refuse it with a clear reason: literals are not allowed.
    pub key: Option<toml::Value>,
}

/// An upstream provider endpoint and its credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `openai`, `azure_openai`, `gemini` or `bedrock`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Base URL including the version path, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// Environment variable that, when set, replaces `base_url` (to point at an emulator).
    pub base_url_env: Option<String>,
    /// Environment variable holding the provider API key.
    pub api_key_env: Option<String>,
    /// Accepted by the parser only to refuse it with a clear reason: literals are not allowed.
    pub api_key: Option<toml::Value>,
    /// OpenAI organization header, if any.
    pub organization: Option<String>,
    /// OpenAI project header, if any.
    pub project: Option<String>,
    /// Seconds to wait for the upstream's response headers, and the longest silence allowed
    /// inside a body or stream after that (default 600).
    pub timeout_secs: Option<u64>,
    /// Retries after a 429, a 5xx or a connection failure before any byte reached the client
    /// (default 2).
    pub max_retries: Option<u32>,
}

/// One LLM proxy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// `model` (default) or `semantic`.
    pub routing: Option<String>,
    /// Free text for admins.
    pub description: Option<String>,
    /// The routes, in priority order (ties break by this order).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Name of the route used when no route matches.
    pub fallback: Option<String>,
    /// Semantic routing: minimum score for a topic to win (default measured on the validation
    /// suites, docs/semantic-routing.md).
    pub threshold: Option<f64>,
    /// Semantic routing: `last_user` (default) compares the last user message, `conversation`
    /// every message's text.
    pub routing_text: Option<String>,
    /// Semantic routing: topics whose prompts are refused.
    #[serde(default)]
    pub deny_topics: Vec<RawTopic>,
}

/// A provider plus a target model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique within the proxy.
    pub name: String,
    /// A key of `[providers]`.
    pub provider: String,
    /// The model clients name (`<provider>/<model>` or bare).
    pub model: String,
    /// The model actually sent upstream, when it differs (a version pin).
    pub target_model: Option<String>,
    /// Other names clients may use for this route.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Semantic routing: topics that send prompts here.
    #[serde(default)]
    pub topics: Vec<RawTopic>,
}

/// A prompt topic defined by example utterances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    pub name: String,
    #[serde(default)]
    pub utterances: Vec<String>,
}
