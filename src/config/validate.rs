//! Stage two of configuration: the rules, checked without side effects.
//!
//! `validate` turns parsed tenant files into [`TenantSpec`]s or returns *every* violation at
//! once, each with its file, field path and reason. It reads no environment and opens no
//! connection, so `switchyard validate` can run anywhere (CI without provider keys included).

use super::ConfigError;
use super::raw::{
    RawApiKey, RawBudget, RawLimits, RawPrice, RawProvider, RawProxy, RawTenant, RawTopic,
};
use super::types::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com";
const DEFAULT_TIMEOUT_SECS: u64 = 600;
const DEFAULT_MAX_RETRIES: u32 = 2;
/// Chosen by measurement on the validation suites (docs/semantic-routing.md).
const DEFAULT_THRESHOLD: f64 = crate::routing::semantic::scoring::DEFAULT_THRESHOLD as f64;
const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
const DEFAULT_CIRCUIT_OPEN_SECS: u64 = 30;

/// Collects errors for one file.
struct Errors<'a> {
    file: &'a Path,
    out: &'a mut Vec<ConfigError>,
}

impl Errors<'_> {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.out.push(ConfigError::new(self.file, path, reason));
    }
}

/// Lower-case ids usable in a URL path segment.
fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

const ID_RULE: &str =
    "must be 1 to 64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit";

/// Validates every parsed file and the gateway-wide rules (the proxy cap, keys unique across
/// tenants).
pub fn validate(files: Vec<(PathBuf, RawTenant)>) -> Result<Vec<TenantSpec>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    let mut keys = Vec::new();
    for (file, raw) in files {
        if let Some(spec) = validate_tenant(&file, raw, &mut keys, &mut errors) {
            specs.push(spec);
        }
    }
    check_keys_unique(&keys, &mut errors);
    let total: usize = specs.iter().map(|t| t.proxies.len()).sum();
    if total > MAX_PROXIES {
        let by_file: Vec<String> = specs
            .iter()
            .map(|t| format!("{} has {}", t.file.display(), t.proxies.len()))
            .collect();
        errors.push(ConfigError::gateway(format!(
            "{total} proxies are configured but a gateway serves at most {MAX_PROXIES} ({})",
            by_file.join(", ")
        )));
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Where one tenant key is declared, for the uniqueness check across tenants.
#[derive(Debug)]
pub(crate) struct KeyUse {
    pub file: PathBuf,
    pub tenant: String,
    /// Index in the file's `api_keys`.
    pub index: usize,
    pub name: String,
    pub source: KeySource,
}

impl KeyUse {
    /// How an error about a later use of the same key, in `other_file`, names this one and
    /// says why that is refused.
    pub(crate) fn conflict(&self, other_file: &Path) -> String {
        if self.file == other_file {
            format!(
                "api_keys[{}] ({:?}) of this tenant; declare each key once",
                self.index, self.name
            )
        } else {
            format!(
                "api_keys[{}] ({:?}) of tenant {:?} ({}); a key must belong to one tenant, or it authenticates on both",
                self.index,
                self.name,
                self.tenant,
                self.file.display()
            )
        }
    }
}

/// A client key identifies one tenant: the same key in two tenants would authenticate on
/// both, so which tenant a request reaches would depend on nothing but its URL. The same
/// hash, or the same environment variable, declared twice is refused, naming both places;
/// keys whose environment values coincide are caught when the snapshot is built.
fn check_keys_unique(keys: &[KeyUse], errors: &mut Vec<ConfigError>) {
    for (n, key) in keys.iter().enumerate() {
        let Some(first) = keys[..n].iter().find(|k| k.source == key.source) else {
            continue;
        };
        let (field, what) = match key.source {
            KeySource::Sha256(_) => ("sha256", "the same key as"),
            KeySource::Env(_) => ("env", "the same environment variable as"),
        };
        errors.push(ConfigError::new(
            &key.file,
            format!("api_keys[{}].{field}", key.index),
            format!("{what} {}", first.conflict(&key.file)),
        ));
    }
}

fn tenant_id_of(file: &Path) -> Option<String> {
    file.file_stem().and_then(|s| s.to_str()).map(str::to_owned)
}

/// Every valid key of the file goes to `seen`, even when the tenant itself has errors, so a
/// key shared with another tenant is reported in the same run.
fn validate_tenant(
    file: &Path,
    raw: RawTenant,
    seen: &mut Vec<KeyUse>,
    out: &mut Vec<ConfigError>,
) -> Option<TenantSpec> {
    let before = out.len();
    let mut e = Errors { file, out };
    let id = tenant_id_of(file).unwrap_or_default();
    if !is_id(&id) {
        e.push("(file name)", format!("tenant id {id:?} {ID_RULE}"));
    } else if RESERVED_TENANT_IDS.contains(&id.as_str()) {
        e.push(
            "(file name)",
            format!(
                "tenant id {id:?} is reserved ({})",
                RESERVED_TENANT_IDS.join(", ")
            ),
        );
    }

    let keys = validate_keys(&raw.api_keys, &mut e);
    seen.extend(keys.iter().map(|(i, name, source)| KeyUse {
        file: file.to_path_buf(),
        tenant: id.clone(),
        index: *i,
        name: name.clone(),
        source: source.clone(),
    }));
    let keys = keys
        .into_iter()
        .map(|(_, name, source)| (name, source))
        .collect();

    let governance = validate_governance(&raw, &mut e);

    let mut providers = Vec::new();
    let mut provider_index = BTreeMap::new();
    for (name, p) in &raw.providers {
        if let Some(spec) = validate_provider(name, p, &mut e) {
            provider_index.insert(name.clone(), providers.len());
            providers.push(spec);
        }
    }

    let mut proxies = Vec::new();
    for (pid, p) in raw.proxies {
        if let Some(proxy) = validate_proxy(
            &id,
            &pid,
            p,
            &raw.providers,
            &providers,
            &provider_index,
            &mut e,
        ) {
            proxies.push(Arc::new(proxy));
        }
    }
    if out.len() > before {
        return None;
    }
    Some(TenantSpec {
        id,
        file: file.to_path_buf(),
        keys,
        providers,
        proxies,
        governance: Arc::new(governance),
    })
}

/// Rate limits (tenant and per key) and the tenant's prices.
fn validate_governance(raw: &RawTenant, e: &mut Errors<'_>) -> TenantGovernance {
    let limits = |path: &str, rpm: Option<u64>, tpm: Option<u64>, e: &mut Errors<'_>| {
        for (field, v) in [("requests_per_minute", rpm), ("tokens_per_minute", tpm)] {
            if v == Some(0) {
                e.push(
                    format!("{path}{field}"),
                    "must be at least 1 (leave it out for no limit)",
                );
            }
        }
        Limits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        }
    };
    let RawLimits {
        requests_per_minute,
        tokens_per_minute,
    } = raw
        .limits
        .as_ref()
        .map_or(RawLimits::default(), |l| RawLimits {
            requests_per_minute: l.requests_per_minute,
            tokens_per_minute: l.tokens_per_minute,
        });
    let tenant_limits = limits("limits.", requests_per_minute, tokens_per_minute, e);
    let mut key_limits = std::collections::HashMap::new();
    for (i, k) in raw.api_keys.iter().enumerate() {
        let l = limits(
            &format!("api_keys[{i}]."),
            k.requests_per_minute,
            k.tokens_per_minute,
            e,
        );
        if !l.is_unlimited() {
            key_limits.insert(k.name.clone(), l);
        }
    }
    let mut prices = std::collections::HashMap::new();
    for (i, p) in raw.prices.iter().enumerate() {
        let path = format!("prices[{i}]");
        let RawPrice {
            provider,
            model,
            input,
            cached_input,
            cache_write,
            output,
        } = p;
        let kind = crate::governance::pricing::provider_kind(provider);
        if kind.is_none() {
            e.push(
                format!("{path}.provider"),
                format!(
                    "unknown provider type {provider:?}; one of openai, azure_openai, gemini, bedrock"
                ),
            );
        }
        if model.trim().is_empty() {
            e.push(format!("{path}.model"), "must not be empty");
        }
        let rates = [
            ("input", Some(input)),
            ("cached_input", cached_input.as_ref()),
            ("cache_write", cache_write.as_ref()),
            ("output", Some(output)),
        ];
        let mut ok = true;
        for (field, v) in rates {
            if let Some(Err(err)) = v.map(|v| crate::governance::pricing::parse_rate(v)) {
                e.push(format!("{path}.{field}"), err);
                ok = false;
            }
        }
        let (Some(kind), true) = (kind, ok) else {
            continue;
        };
        let price = crate::governance::pricing::price_of(
            input,
            cached_input.as_deref(),
            cache_write.as_deref(),
            output,
        );
        if let Ok(price) = price
            && prices.insert((kind, model.clone()), price).is_some()
        {
            e.push(
                path,
                format!("a second price for {provider} {model:?}; give each model one price"),
            );
        }
    }
    let budgets = raw
        .budgets
        .iter()
        .enumerate()
        .filter_map(|(i, b)| validate_budget(&format!("budgets[{i}]"), b, &raw.api_keys, e))
        .collect();
    TenantGovernance {
        limits: tenant_limits,
        key_limits,
        budgets,
        prices,
    }
}

fn validate_budget(
    path: &str,
    b: &RawBudget,
    keys: &[RawApiKey],
    e: &mut Errors<'_>,
) -> Option<Budget> {
    let before = e.out.len();
    if let Some(k) = &b.key
        && !keys.iter().any(|key| &key.name == k)
    {
        e.push(format!("{path}.key"), format!("no API key is named {k:?}"));
    }
    let limit = match (&b.usd, b.tokens) {
        (Some(usd), None) => match crate::governance::pricing::parse_rate(usd) {
            Ok(d) => Some(BudgetLimit::Usd(d)),
            Err(err) => {
                e.push(format!("{path}.usd"), err);
                None
            }
        },
        (None, Some(t)) => Some(BudgetLimit::Tokens(t)),
        (Some(_), Some(_)) => {
            e.push(path, "give either `usd` or `tokens`, not both");
            None
        }
        (None, None) => {
            e.push(path, "missing `usd` or `tokens`");
            None
        }
    };
    let period = match b.period.as_str() {
        "day" => Some(Period::Day),
        "month" => Some(Period::Month),
        other => {
            e.push(
                format!("{path}.period"),
                format!("{other:?} is not a period: \"day\" or \"month\""),
            );
            None
        }
    };
    let divert = match b.on_exhausted.as_deref() {
        None | Some("reject") => false,
        Some("fallback") => true,
        Some(other) => {
            e.push(
                format!("{path}.on_exhausted"),
                format!("{other:?} is not \"reject\" or \"fallback\""),
            );
            false
        }
    };
    if e.out.len() > before {
        return None;
    }
    Some(Budget {
        key: b.key.clone(),
        limit: limit?,
        period: period?,
        divert,
    })
}

/// The valid keys with their index in `api_keys`.
fn validate_keys(keys: &[RawApiKey], e: &mut Errors<'_>) -> Vec<(usize, String, KeySource)> {
    if keys.is_empty() {
        e.push(
            "api_keys",
            "a tenant needs at least one API key, or no client can reach it",
        );
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let path = format!("api_keys[{i}]");
        if k.name.trim().is_empty() {
            e.push(format!("{path}.name"), "must not be empty");
        } else if !names.insert(k.name.as_str()) {
            e.push(
                format!("{path}.name"),
                format!("duplicate key name {:?}", k.name),
            );
        }
        if k.key.is_some() {
            e.push(
                format!("{path}.key"),
                "literal keys are not allowed in tenant files; give `sha256 = \"<hex digest>\"` or `env = \"VARIABLE\"`",
            );
            continue;
        }
        match (&k.sha256, &k.env) {
            (Some(hexd), None) => {
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(hexd.trim(), &mut digest).is_ok() {
                    out.push((i, k.name.clone(), KeySource::Sha256(digest)));
                } else {
                    e.push(
                        format!("{path}.sha256"),
                        "must be 64 hexadecimal characters (a SHA-256 digest)",
                    );
                }
            }
            (None, Some(var)) => {
                if is_env_name(var) {
                    out.push((i, k.name.clone(), KeySource::Env(var.clone())));
                } else {
                    e.push(
                        format!("{path}.env"),
                        format!("{var:?} is not an environment variable name"),
                    );
                }
            }
            (Some(_), Some(_)) => e.push(path, "give either `sha256` or `env`, not both"),
            (None, None) => e.push(path, "missing `sha256` or `env`"),
        }
    }
    out
}

fn validate_provider(name: &str, p: &RawProvider, e: &mut Errors<'_>) -> Option<ProviderSpec> {
    let path = format!("providers.{name}");
    let before = e.out.len();
    if !is_id(name) {
        e.push(&path, format!("provider name {ID_RULE}"));
    }
    let kind = ProviderKind::ALL.into_iter().find(|k| k.as_str() == p.kind);
    if kind.is_none() {
        e.push(
            format!("{path}.type"),
            format!(
                "unknown provider type {:?} (expected openai, azure_openai, gemini or bedrock)",
                p.kind
            ),
        );
    }
    if p.api_key.is_some() {
        e.push(format!("{path}.api_key"), "literal keys are not allowed in tenant files; name an environment variable with `api_key_env`");
    }
    if let Some(kind) = kind {
        foreign_fields(kind, p, &path, e);
    }
    let env_var = |field: &str, value: &Option<String>, e: &mut Errors<'_>| match value {
        Some(v) if is_env_name(v) => Some(v.clone()),
        Some(v) => {
            e.push(
                format!("{path}.{field}"),
                format!("{v:?} is not an environment variable name"),
            );
            None
        }
        None => None,
    };
    let api_key_env = env_var("api_key_env", &p.api_key_env, e);
    let url = |field: &str, value: &Option<String>, default: Option<String>, e: &mut Errors<'_>| {
        let url = value.clone().or(default)?;
        match check_base_url(&url) {
            Ok(()) => Some(url.trim_end_matches('/').to_owned()),
            Err(reason) => {
                e.push(format!("{path}.{field}"), reason);
                None
            }
        }
    };
    let missing_key = |e: &mut Errors<'_>| {
        e.push(
            format!("{path}.api_key_env"),
            "missing: name the environment variable that holds the provider key",
        );
    };
    // Per kind: its settings, base URL and credentials. Fields of other kinds were refused
    // by `foreign_fields` above.
    let per_kind = match kind {
        None => None,
        Some(ProviderKind::OpenAi) => {
            let base = url(
                "base_url",
                &p.base_url,
                Some(DEFAULT_OPENAI_BASE_URL.into()),
                e,
            );
            if api_key_env.is_none() && p.api_key_env.is_none() {
                missing_key(e);
            }
            let settings = ProviderSettings::OpenAi {
                organization: p.organization.clone(),
                project: p.project.clone(),
            };
            Some((
                settings,
                base,
                api_key_env.map(|env| CredentialSource::ApiKey { env }),
            ))
        }
        Some(ProviderKind::AzureOpenAi) => {
            let (api, base) = match (&p.endpoint, &p.base_url) {
                (Some(_), None) => {
                    let version = p.api_version.as_deref().map(str::trim).unwrap_or("");
                    if version.is_empty() {
                        e.push(format!("{path}.api_version"), "missing: deployment URLs (`endpoint`) need the `api-version` to call, e.g. \"2024-10-21\"");
                    } else if !version
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    {
                        e.push(
                            format!("{path}.api_version"),
                            format!(
                                "{version:?} is not an api-version (letters, digits, '-' and '.')"
                            ),
                        );
                    }
                    let base = url("endpoint", &p.endpoint, None, e);
                    if base
                        .as_deref()
                        .is_some_and(|b| b.ends_with("/openai") || b.contains("/openai/"))
                    {
                        e.push(format!("{path}.endpoint"), "give the resource endpoint only (https://<resource>.openai.azure.com); the gateway adds /openai/deployments/…");
                    }
                    (
                        AzureApi::Deployments {
                            api_version: version.to_owned(),
                        },
                        base,
                    )
                }
                (None, Some(_)) => {
                    if p.api_version.is_some() {
                        e.push(format!("{path}.api_version"), "the /openai/v1 API (`base_url`) takes no api-version; use `endpoint` for deployment URLs");
                    }
                    let base = url("base_url", &p.base_url, None, e);
                    if base.as_deref().is_some_and(|b| !b.ends_with("/openai/v1")) {
                        e.push(format!("{path}.base_url"), "must end in /openai/v1 (e.g. https://<resource>.openai.azure.com/openai/v1); for deployment URLs give `endpoint` instead");
                    }
                    (AzureApi::V1, base)
                }
                (Some(_), Some(_)) => {
                    e.push(&path, "give either `endpoint` (deployment URLs) or `base_url` (the /openai/v1 API), not both");
                    (AzureApi::V1, None)
                }
                (None, None) => {
                    e.push(&path, "missing `endpoint` (deployment URLs, with `api_version`) or `base_url` (the /openai/v1 API)");
                    (AzureApi::V1, None)
                }
            };
            let token = env_var("bearer_token_env", &p.bearer_token_env, e);
            let credentials = match (&p.api_key_env, &p.bearer_token_env) {
                (Some(_), Some(_)) => {
                    e.push(
                        &path,
                        "give either `api_key_env` or `bearer_token_env`, not both",
                    );
                    None
                }
                (None, None) => {
                    e.push(format!("{path}.api_key_env"), "missing: name the environment variable that holds the Azure key (or a Microsoft Entra ID token with `bearer_token_env`)");
                    None
                }
                (Some(_), None) => api_key_env.map(|env| CredentialSource::ApiKey { env }),
                (None, Some(_)) => token.map(|env| CredentialSource::EntraToken { env }),
            };
            Some((ProviderSettings::AzureOpenAi { api }, base, credentials))
        }
        Some(ProviderKind::Gemini) => {
            let base = url(
                "base_url",
                &p.base_url,
                Some(DEFAULT_GEMINI_BASE_URL.into()),
                e,
            );
            let version = p.api_version.clone().unwrap_or_else(|| "v1beta".into());
            if !matches!(version.as_str(), "v1" | "v1beta" | "v1alpha") {
                e.push(
                    format!("{path}.api_version"),
                    format!("{version:?} is not a Gemini API version (v1, v1beta or v1alpha)"),
                );
            }
            if p.api_key_env.is_none() {
                missing_key(e);
            }
            let settings = ProviderSettings::Gemini {
                api_version: version,
            };
            Some((
                settings,
                base,
                api_key_env.map(|env| CredentialSource::ApiKey { env }),
            ))
        }
        Some(ProviderKind::Bedrock) => {
            let region = p.region.clone().unwrap_or_default();
            let region_ok = !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if p.region.is_none() {
                e.push(
                    format!("{path}.region"),
                    "missing: the AWS region, e.g. \"us-east-1\"",
                );
            } else if !region_ok {
                e.push(
                    format!("{path}.region"),
                    format!("{region:?} is not an AWS region name (like \"us-east-1\")"),
                );
            }
            // The regional endpoint unless replaced; none from a region already refused.
            let default =
                region_ok.then(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
            let base = url("endpoint", &p.endpoint, default, e);
            let id = env_var("access_key_id_env", &p.access_key_id_env, e);
            let secret = env_var("secret_access_key_env", &p.secret_access_key_env, e);
            let token = env_var("session_token_env", &p.session_token_env, e);
            let aws = p.access_key_id_env.is_some()
                || p.secret_access_key_env.is_some()
                || p.session_token_env.is_some();
            let credentials = match (p.api_key_env.is_some(), aws) {
                (true, true) => {
                    e.push(&path, "give either `api_key_env` (a Bedrock API key) or AWS access keys (`access_key_id_env`, `secret_access_key_env`), not both");
                    None
                }
                (false, false) => {
                    e.push(&path, "missing credentials: `access_key_id_env` and `secret_access_key_env` (optionally `session_token_env`), or `api_key_env` for a Bedrock API key");
                    None
                }
                (true, false) => api_key_env.map(|env| CredentialSource::ApiKey { env }),
                (false, true) => {
                    for (field, v) in [
                        ("access_key_id_env", &p.access_key_id_env),
                        ("secret_access_key_env", &p.secret_access_key_env),
                    ] {
                        if v.is_none() {
                            e.push(format!("{path}.{field}"), "missing: AWS access keys need both `access_key_id_env` and `secret_access_key_env`");
                        }
                    }
                    match (id, secret) {
                        (Some(access_key_id_env), Some(secret_access_key_env)) => {
                            Some(CredentialSource::Aws {
                                access_key_id_env,
                                secret_access_key_env,
                                session_token_env: token,
                            })
                        }
                        _ => None,
                    }
                }
            };
            Some((ProviderSettings::Bedrock { region }, base, credentials))
        }
    };
    if let Some(v) = &p.base_url_env
        && !is_env_name(v)
    {
        e.push(
            format!("{path}.base_url_env"),
            format!("{v:?} is not an environment variable name"),
        );
    }
    let timeout_secs = p.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=3600).contains(&timeout_secs) {
        e.push(format!("{path}.timeout_secs"), "must be between 1 and 3600");
    }
    let max_retries = p.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if max_retries > 10 {
        e.push(format!("{path}.max_retries"), "must be at most 10");
    }
    let circuit_failures = p.circuit_failures.unwrap_or(DEFAULT_CIRCUIT_FAILURES);
    if circuit_failures > 1000 {
        e.push(format!("{path}.circuit_failures"), "must be at most 1000");
    }
    let circuit_open_secs = p.circuit_open_secs.unwrap_or(DEFAULT_CIRCUIT_OPEN_SECS);
    if !(1..=3600).contains(&circuit_open_secs) {
        e.push(
            format!("{path}.circuit_open_secs"),
            "must be between 1 and 3600",
        );
    }
    // Checked last, so that a file written for a later build gets its other mistakes
    // reported in the same run.
    if let Some(kind) = kind
        && !SERVED_KINDS.contains(&kind)
    {
        let served: Vec<&str> = SERVED_KINDS.iter().map(|k| k.as_str()).collect();
        e.push(
            format!("{path}.type"),
            format!(
                "provider type {:?} is not available in this build yet (available: {})",
                p.kind,
                served.join(", ")
            ),
        );
    }
    if e.out.len() > before {
        return None;
    }
    let (settings, base_url, credentials) = per_kind?;
    Some(ProviderSpec {
        name: name.to_owned(),
        settings,
        base_url: base_url?,
        base_url_env: p.base_url_env.clone(),
        credentials: credentials?,
        timeout: Duration::from_secs(timeout_secs),
        max_retries,
        circuit: CircuitPolicy {
            failures: circuit_failures,
            open_for: Duration::from_secs(circuit_open_secs),
        },
    })
}

/// The provider kinds this build sends requests to; the others parse and validate fully
/// but are refused, so that a file is never accepted with a provider that cannot answer.
const SERVED_KINDS: &[ProviderKind] = &[
    ProviderKind::OpenAi,
    ProviderKind::AzureOpenAi,
    ProviderKind::Gemini,
    ProviderKind::Bedrock,
];

/// Refuses every field set on `p` that belongs to another kind of provider.
fn foreign_fields(kind: ProviderKind, p: &RawProvider, path: &str, e: &mut Errors<'_>) {
    use ProviderKind::*;
    let fields: [(&str, bool, &[ProviderKind]); 11] = [
        (
            "base_url",
            p.base_url.is_some(),
            &[OpenAi, AzureOpenAi, Gemini],
        ),
        ("endpoint", p.endpoint.is_some(), &[AzureOpenAi, Bedrock]),
        (
            "api_version",
            p.api_version.is_some(),
            &[AzureOpenAi, Gemini],
        ),
        (
            "api_key_env",
            p.api_key_env.is_some(),
            &[OpenAi, AzureOpenAi, Gemini, Bedrock],
        ),
        (
            "bearer_token_env",
            p.bearer_token_env.is_some(),
            &[AzureOpenAi],
        ),
        ("organization", p.organization.is_some(), &[OpenAi]),
        ("project", p.project.is_some(), &[OpenAi]),
        ("region", p.region.is_some(), &[Bedrock]),
        (
            "access_key_id_env",
            p.access_key_id_env.is_some(),
            &[Bedrock],
        ),
        (
            "secret_access_key_env",
            p.secret_access_key_env.is_some(),
            &[Bedrock],
        ),
        (
            "session_token_env",
            p.session_token_env.is_some(),
            &[Bedrock],
        ),
    ];
    for (field, set, kinds) in fields {
        if set && !kinds.contains(&kind) {
            let owners: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            e.push(
                format!("{path}.{field}"),
                format!(
                    "not a field of `type = {:?}` providers (only of: {})",
                    kind.as_str(),
                    owners.join(", ")
                ),
            );
        }
    }
}

/// The failures listed in a route's `fallback_on` (all of them when it is absent).
fn fallback_triggers(names: Option<&[String]>, rp: &str, e: &mut Errors<'_>) -> Triggers {
    let Some(names) = names else {
        return Triggers::all();
    };
    names
        .iter()
        .enumerate()
        .filter_map(|(j, name)| {
            let found = Trigger::ALL.into_iter().find(|t| t.as_str() == name);
            if found.is_none() {
                let known: Vec<&str> = Trigger::ALL.iter().map(|t| t.as_str()).collect();
                e.push(
                    format!("{rp}.fallback_on[{j}]"),
                    format!(
                        "unknown failure {name:?} (expected one of {})",
                        known.join(", ")
                    ),
                );
            }
            found
        })
        .collect()
}

/// An optional number of seconds between 1 and 3600.
fn seconds(value: Option<u64>, path: &str, e: &mut Errors<'_>) -> Option<Duration> {
    let secs = value?;
    if !(1..=3600).contains(&secs) {
        e.push(path, "must be between 1 and 3600");
    }
    Some(Duration::from_secs(secs))
}

/// A base URL must be absolute http(s) with a host; checked again when an override is applied.
pub(crate) fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    if url.contains(['?', '#']) {
        return Err(format!("{url:?} must not carry a query or fragment"));
    }
    Ok(())
}

fn validate_topics(
    topics: &[RawTopic],
    path: &str,
    max_utterances: usize,
    names: &mut HashSet<String>,
    e: &mut Errors<'_>,
) -> Vec<Topic> {
    let mut out = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let tp = format!("{path}[{i}]");
        if t.name.trim().is_empty() {
            e.push(format!("{tp}.name"), "must not be empty");
        } else if !names.insert(t.name.clone()) {
            e.push(
                format!("{tp}.name"),
                format!("duplicate topic name {:?} in this proxy", t.name),
            );
        }
        if t.utterances.is_empty() {
            e.push(
                format!("{tp}.utterances"),
                "a topic needs at least one utterance",
            );
        }
        if t.utterances.len() > max_utterances {
            e.push(
                format!("{tp}.utterances"),
                format!(
                    "{} utterances given, at most {max_utterances} allowed",
                    t.utterances.len()
                ),
            );
        }
        for (j, u) in t.utterances.iter().enumerate() {
            let chars = u.chars().count();
            if u.trim().is_empty() {
                e.push(format!("{tp}.utterances[{j}]"), "must not be empty");
            } else if chars > MAX_UTTERANCE_CHARS {
                e.push(
                    format!("{tp}.utterances[{j}]"),
                    format!("{chars} characters, at most {MAX_UTTERANCE_CHARS} allowed"),
                );
            }
        }
        out.push(Topic {
            name: t.name.clone(),
            utterances: t.utterances.clone(),
        });
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn validate_proxy(
    tenant: &str,
    pid: &str,
    p: RawProxy,
    raw_providers: &BTreeMap<String, RawProvider>,
    providers: &[ProviderSpec],
    provider_index: &BTreeMap<String, usize>,
    e: &mut Errors<'_>,
) -> Option<Proxy> {
    let path = format!("proxies.{pid}");
    let before = e.out.len();
    if !is_id(pid) {
        e.push(&path, format!("proxy id {ID_RULE}"));
    }
    let routing = match p.routing.as_deref().unwrap_or("model") {
        "model" => RoutingMode::Model,
        "semantic" => RoutingMode::Semantic,
        other => {
            e.push(
                format!("{path}.routing"),
                format!("unknown routing mode {other:?} (expected model or semantic)"),
            );
            RoutingMode::Model
        }
    };
    if p.routes.is_empty() {
        e.push(format!("{path}.routes"), "a proxy needs at least one route");
    }

    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    let mut pairs = HashSet::new();
    let mut topic_names = HashSet::new();
    let mut topic_count = 0;
    for (i, r) in p.routes.iter().enumerate() {
        let rp = format!("{path}.routes[{i}]");
        if !is_id(&r.name) {
            e.push(format!("{rp}.name"), format!("route name {ID_RULE}"));
        } else if !route_names.insert(r.name.as_str()) {
            e.push(
                format!("{rp}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        if r.model.trim().is_empty() {
            e.push(format!("{rp}.model"), "must not be empty");
        }
        if matches!(&r.target_model, Some(t) if t.trim().is_empty()) {
            e.push(format!("{rp}.target_model"), "must not be empty when given");
        }
        let provider = match provider_index.get(&r.provider) {
            Some(&idx) => Some(idx),
            None if raw_providers.contains_key(&r.provider) => None, // already reported there
            None => {
                let known: Vec<&str> = raw_providers.keys().map(String::as_str).collect();
                e.push(
                    format!("{rp}.provider"),
                    format!(
                        "unknown provider {:?} (declared: {})",
                        r.provider,
                        known.join(", ")
                    ),
                );
                None
            }
        };
        if !pairs.insert((r.provider.as_str(), r.model.as_str())) {
            e.push(
                format!("{rp}.model"),
                format!("another route already serves {}/{}", r.provider, r.model),
            );
        }
        for (j, a) in r.aliases.iter().enumerate() {
            if a.trim().is_empty() {
                e.push(format!("{rp}.aliases[{j}]"), "must not be empty");
            }
        }
        topic_count += r.topics.len();
        let topics = validate_topics(
            &r.topics,
            &format!("{rp}.topics"),
            MAX_UTTERANCES,
            &mut topic_names,
            e,
        );
        if routing == RoutingMode::Model && !r.topics.is_empty() {
            e.push(
                format!("{rp}.topics"),
                "topics only apply when the proxy has `routing = \"semantic\"`",
            );
        }
        // Checked whatever the provider's state, so one run reports everything.
        let fallback_on = fallback_triggers(r.fallback_on.as_deref(), &rp, e);
        let first_byte_timeout = seconds(
            r.first_byte_timeout_secs,
            &format!("{rp}.first_byte_timeout_secs"),
            e,
        );
        let deadline = seconds(r.deadline_secs, &format!("{rp}.deadline_secs"), e);
        if let Some(idx) = provider {
            routes.push(Route {
                name: r.name.clone(),
                provider: idx,
                provider_name: r.provider.clone(),
                provider_kind: providers[idx].settings.kind(),
                model: r.model.clone(),
                target_model: r.target_model.clone(),
                aliases: r.aliases.clone(),
                topics,
                fallbacks: Vec::new(), // resolved below, once every route is known
                fallback_on,
                first_byte_timeout,
                deadline,
                span_attributes: Default::default(),
                answer_headers: Default::default(),
            });
        }
    }
    if topic_count > MAX_TOPICS {
        e.push(
            format!("{path}.routes"),
            format!(
                "{topic_count} topics across the routes, at most {MAX_TOPICS} allowed per proxy"
            ),
        );
    }
    if routing == RoutingMode::Semantic && topic_count == 0 {
        e.push(
            format!("{path}.routes"),
            "semantic routing needs at least one topic on a route",
        );
    }

    // Every name a client may send must pick one route: an alias may not repeat, name its own
    // route's model (bare or as `<provider>/<model>`, which would make the alias pointless and
    // hides a likely typo), or shadow another route's model or alias. Aliases are matched
    // before `<provider>/<model>`, so the qualified names count as taken too.
    let qualified = |r: &super::raw::RawRoute| {
        let mut own = vec![r.model.clone(), format!("{}/{}", r.provider, r.model)];
        if let Some(provider) = raw_providers.get(&r.provider) {
            own.push(format!("{}/{}", provider.kind, r.model));
        }
        own
    };
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in p.routes.iter().enumerate() {
        for name in qualified(r) {
            names.entry(name).or_insert(i);
        }
    }
    for (i, r) in p.routes.iter().enumerate() {
        let own = qualified(r);
        let mut seen = HashSet::new();
        for (j, a) in r.aliases.iter().enumerate() {
            let ap = format!("{path}.routes[{i}].aliases[{j}]");
            if a.trim().is_empty() {
                continue; // reported above
            }
            if !seen.insert(a.as_str()) {
                e.push(ap, format!("duplicate alias {a:?} in this route"));
            } else if own.contains(a) {
                e.push(
                    ap,
                    format!(
                        "alias {a:?} is this route's own model name; an alias must be another name"
                    ),
                );
            } else if let Some(&owner) = names.get(a) {
                e.push(
                    ap,
                    format!(
                        "alias {a:?} is already a model or alias of route {:?}",
                        p.routes[owner].name
                    ),
                );
            } else {
                names.insert(a.clone(), i);
            }
        }
    }

    if p.deny_topics.len() > MAX_DENY_TOPICS {
        e.push(
            format!("{path}.deny_topics"),
            format!(
                "{} deny topics given, at most {MAX_DENY_TOPICS} allowed",
                p.deny_topics.len()
            ),
        );
    }
    let mut deny_names = HashSet::new();
    let deny_topics = validate_topics(
        &p.deny_topics,
        &format!("{path}.deny_topics"),
        MAX_DENY_UTTERANCES,
        &mut deny_names,
        e,
    );
    if routing == RoutingMode::Model && !p.deny_topics.is_empty() {
        e.push(
            format!("{path}.deny_topics"),
            "deny topics only apply when the proxy has `routing = \"semantic\"`",
        );
    }

    let threshold = p.threshold.unwrap_or(DEFAULT_THRESHOLD);
    if !(0.0..=1.0).contains(&threshold) {
        e.push(format!("{path}.threshold"), "must be between 0 and 1");
    }
    if p.threshold.is_some() && routing == RoutingMode::Model {
        e.push(
            format!("{path}.threshold"),
            "a threshold only applies when the proxy has `routing = \"semantic\"`",
        );
    }
    let routing_text = match p.routing_text.as_deref() {
        None | Some("last_user") => RoutingText::LastUser,
        Some("conversation") => RoutingText::Conversation,
        Some(other) => {
            e.push(
                format!("{path}.routing_text"),
                format!("unknown routing text {other:?} (expected last_user or conversation)"),
            );
            RoutingText::LastUser
        }
    };
    if p.routing_text.is_some() && routing == RoutingMode::Model {
        e.push(
            format!("{path}.routing_text"),
            "routing_text only applies when the proxy has `routing = \"semantic\"`",
        );
    }
    let fallback = match &p.fallback {
        None => None,
        Some(name) if name.trim().is_empty() => {
            e.push(
                format!("{path}.fallback"),
                "must not be empty: name a route of this proxy, or leave `fallback` out for none",
            );
            None
        }
        Some(name) => match p.routes.iter().position(|r| &r.name == name) {
            Some(i) => Some(i),
            None => {
                e.push(
                    format!("{path}.fallback"),
                    format!("no route named {name:?} in this proxy"),
                );
                None
            }
        },
    };
    for (i, r) in p.routes.iter().enumerate() {
        let mut chain = Vec::new();
        for (j, name) in r.fallbacks.iter().enumerate() {
            let fp = format!("{path}.routes[{i}].fallbacks[{j}]");
            match p.routes.iter().position(|other| &other.name == name) {
                None => e.push(fp, format!("no route named {name:?} in this proxy")),
                Some(k) if k == i => e.push(fp, "a route cannot fall back to itself"),
                Some(k) if chain.contains(&k) => e.push(fp, format!("{name:?} is listed twice")),
                Some(k) => chain.push(k),
            }
        }
        if let Some(route) = routes.get_mut(i) {
            route.fallbacks = chain;
        }
    }
    if e.out.len() > before {
        return None;
    }
    Some(Proxy {
        tenant: tenant.to_owned(),
        id: pid.to_owned(),
        routing,
        routes,
        fallback,
        threshold: p.threshold.map(|t| t as f32),
        deny_topics,
        routing_text,
        span_attributes: Default::default(),
    })
}
