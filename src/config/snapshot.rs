//! Stage three of configuration: secrets resolved, one immutable snapshot built.
//!
//! This is the only configuration code with side effects: it reads environment variables for
//! tenant keys, provider keys and base-URL overrides. A request holds the `Arc<Snapshot>` it
//! started with, so a reload never changes a request midway.

use super::types::*;
use super::validate::{KeyUse, check_base_url};
use super::{ConfigError, Secret};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One tenant, ready to serve.
#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub keys: Vec<TenantKey>,
    /// Shared as one slice by every proxy of the tenant.
    pub providers: Arc<[Arc<Provider>]>,
    pub proxies: BTreeMap<String, Arc<Proxy>>,
    /// Rate limits and price overrides.
    pub governance: Arc<super::TenantGovernance>,
}

/// The whole tenant set at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub tenants: BTreeMap<String, Arc<Tenant>>,
}

impl Snapshot {
    /// Proxies across all tenants.
    pub fn proxy_count(&self) -> usize {
        self.tenants.values().map(|t| t.proxies.len()).sum()
    }
}

/// Run-time replacements applied while building, e.g. to serve every provider from the
/// bundled emulator.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Per provider kind: the base URL and credentials that replace every provider's of that
    /// kind (demo and test mode only).
    pub providers: Vec<(ProviderKind, String, Credentials)>,
}

impl Overrides {
    fn for_kind(&self, kind: ProviderKind) -> Option<(&String, &Credentials)> {
        self.providers
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, url, c)| (url, c))
    }
}

/// The value of a variable that must hold a secret. Unset and set-but-empty are told apart:
/// the second usually means a deployment template rendered a missing value, and the fix is
/// elsewhere than for a variable nobody set.
fn required_env(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<String, String> {
    match env(var) {
        None => Err(format!("environment variable {var} is not set")),
        Some(v) if v.is_empty() => Err(format!("environment variable {var} is set but empty")),
        Some(v) => Ok(v),
    }
}

/// Resolves secrets and overrides; every missing variable is reported at once.
pub fn build(
    specs: Vec<TenantSpec>,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut tenants = BTreeMap::new();
    // Every resolved key so far, to refuse one that two tenants share through their
    // environment values (validation already refused a shared hash or variable name).
    let mut seen: Vec<(KeyUse, [u8; 32])> = Vec::new();
    for spec in specs {
        let file = spec.file.clone();
        let mut keys = Vec::new();
        for (i, (name, source)) in spec.keys.into_iter().enumerate() {
            let digest = match &source {
                KeySource::Sha256(digest) => *digest,
                KeySource::Env(var) => match required_env(env, var) {
                    Ok(value) => Sha256::digest(value.as_bytes()).into(),
                    Err(reason) => {
                        errors.push(ConfigError::new(
                            &file,
                            format!("api_keys[{i}].env"),
                            reason,
                        ));
                        continue;
                    }
                },
            };
            if let Some((first, _)) = seen.iter().find(|(_, d)| *d == digest) {
                let (field, what) = match &source {
                    KeySource::Sha256(_) => ("sha256", "is"),
                    KeySource::Env(var) => ("env", &*format!("the value of {var} is")),
                };
                errors.push(ConfigError::new(
                    &file,
                    format!("api_keys[{i}].{field}"),
                    format!("{what} the same key as {}", first.conflict(&file)),
                ));
            }
            seen.push((
                KeyUse {
                    file: file.clone(),
                    tenant: spec.id.clone(),
                    index: i,
                    name: name.clone(),
                    source,
                },
                digest,
            ));
            keys.push(TenantKey { name, digest });
        }
        let mut providers = Vec::new();
        for p in spec.providers {
            let path = format!("providers.{}", p.name);
            let kind = p.settings.kind();
            let (base_url, credentials) = match overrides.for_kind(kind) {
                // The emulator serves both Azure URL forms under one root.
                Some((url, credentials)) => match &p.settings {
                    ProviderSettings::AzureOpenAi { api: AzureApi::V1 } => {
                        (format!("{url}/openai/v1"), credentials.clone())
                    }
                    _ => (url.clone(), credentials.clone()),
                },
                None => {
                    let mut base_url = p.base_url.clone();
                    if let Some(var) = &p.base_url_env
                        && let Some(url) = env(var).filter(|v| !v.is_empty())
                    {
                        match check_base_url(&url) {
                            Ok(()) => base_url = url.trim_end_matches('/').to_owned(),
                            Err(reason) => errors.push(ConfigError::new(
                                &file,
                                format!("{path}.base_url_env"),
                                format!("{var}: {reason}"),
                            )),
                        }
                    }
                    let mut secret = |field: &str, var: &str| {
                        Secret::new(required_env(env, var).unwrap_or_else(|reason| {
                            errors.push(ConfigError::new(&file, format!("{path}.{field}"), reason));
                            String::new()
                        }))
                    };
                    let credentials = match &p.credentials {
                        CredentialSource::ApiKey { env } => {
                            Credentials::ApiKey(secret("api_key_env", env))
                        }
                        CredentialSource::EntraToken { env } => {
                            Credentials::EntraToken(secret("bearer_token_env", env))
                        }
                        CredentialSource::Aws {
                            access_key_id_env,
                            secret_access_key_env,
                            session_token_env,
                        } => Credentials::Aws {
                            access_key_id: secret("access_key_id_env", access_key_id_env),
                            secret_access_key: secret(
                                "secret_access_key_env",
                                secret_access_key_env,
                            ),
                            session_token: session_token_env
                                .as_ref()
                                .map(|var| secret("session_token_env", var)),
                        },
                    };
                    (base_url, credentials)
                }
            };
            providers.push(Arc::new(Provider {
                name: p.name,
                settings: p.settings,
                base_url,
                credentials,
                timeout: p.timeout,
                max_retries: p.max_retries,
                circuit: p.circuit,
                prebuilt: Default::default(),
            }));
        }
        let proxies = spec
            .proxies
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        tenants.insert(
            spec.id.clone(),
            Arc::new(Tenant {
                id: spec.id,
                keys,
                providers: providers.into(),
                proxies,
                governance: spec.governance,
            }),
        );
    }
    if errors.is_empty() {
        Ok(Snapshot { tenants })
    } else {
        Err(errors)
    }
}
