//! The admin API under `/admin`: tenants and proxies, a proxy's effective configuration with
//! secrets redacted, the configuration generation, and reload.
//!
//! Every route needs the admin token (`SWITCHYARD_ADMIN_TOKEN`, read from the environment only,
//! so it never appears in a process listing) as a bearer token. Both sides are hashed before a
//! constant-time comparison, so neither the token's bytes nor its length leak through timing.
//! Without the variable the admin API is off and answers 404. The listings come from the
//! directory the data plane serves, so they show exactly what requests see.

use super::AppState;
use super::auth::bearer;
use crate::config::watcher::{ReloadError, ReloadStatus, Trigger};
use crate::config::{Provider, Proxy, RoutingMode};
use crate::error::GatewayError;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The environment variable holding the admin token.
pub const ADMIN_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// The admin token, kept only as its SHA-256.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(*****)")
    }
}

impl AdminToken {
    /// The token from [`ADMIN_TOKEN_ENV`]; `None` (admin API off) when unset or empty.
    pub fn from_env() -> Option<Self> {
        std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| Self::new(t.as_bytes()))
    }

    pub fn new(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Whether `presented` is the token, in time independent of both.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.0).into()
    }
}

/// The admin routes, mounted at `/admin`.
pub fn scope() -> actix_web::Scope {
    web::scope("/admin")
        .route("/reload", web::post().to(reload))
        .route("/config", web::get().to(config))
        .route("/tenants", web::get().to(tenants))
        .route(
            "/tenants/{tenant}/proxies/{proxy}",
            web::get().to(proxy_config),
        )
        .route(
            "/tenants/{tenant}/proxies/{proxy}/explain",
            web::post().to(explain),
        )
        .route(
            "/tenants/{tenant}/usage",
            web::get().to(super::usage::admin_usage),
        )
}

pub(super) fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), GatewayError> {
    let Some(token) = &state.admin_token else {
        return Err(GatewayError::NotFound {
            message: format!("The admin API is off; set {ADMIN_TOKEN_ENV} to turn it on."),
            code: "admin_api_disabled",
        });
    };
    let presented = bearer(req.headers()).ok_or(GatewayError::MissingApiKey)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(GatewayError::InvalidApiKey)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainBody {
    text: String,
}

/// `POST /admin/tenants/{tenant}/proxies/{proxy}/explain` with `{"text": "..."}`: the decision
/// and every topic's score, as `switchyard route --json` prints it.
async fn explain(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    authorize(&state, &req)?;
    let (tenant, proxy) = path.into_inner();
    let body: ExplainBody = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::invalid(
            format!("Expected {{\"text\": \"...\"}}: {e}"),
            Some("text"),
            Some("invalid_json"),
        )
    })?;
    let dir = state.directory.current();
    let handle = dir
        .tenants
        .get(&tenant)
        .and_then(|t| t.proxies.get(&proxy))
        .ok_or_else(|| GatewayError::NotFound {
            message: format!(
                "No proxy '{}' in tenant '{}'.",
                crate::error::quote(&proxy),
                crate::error::quote(&tenant)
            ),
            code: "proxy_not_found",
        })?;
    let explained = handle
        .addr
        .send(crate::actors::messages::Explain { text: body.text })
        .await
        .map_err(|e| GatewayError::Unavailable {
            message: format!("The proxy '{proxy}' is restarting ({e}); retry."),
        })??;
    Ok(HttpResponse::Ok().json(explained))
}

fn status_json(s: &ReloadStatus) -> Value {
    json!({
        "generation": s.generation,
        "applied_at": s.applied_at,
        "tenants": s.tenants,
        "proxies": s.proxies,
        "last_rejected": s.last_rejected.as_ref().map(|(at, errors)| json!({"at": at, "errors": errors})),
    })
}

fn reloader(state: &AppState) -> Result<&crate::config::watcher::Reloader, GatewayError> {
    state
        .reloader
        .as_deref()
        .ok_or_else(|| GatewayError::Internal("no reloader configured".into()))
}

/// `POST /admin/reload`: 200 with the new generation, or 422 with every error (the
/// configuration in force stays).
async fn reload(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    authorize(&state, &req)?;
    match reloader(&state)?.reload(Trigger::Admin).await {
        Ok(status) => Ok(HttpResponse::Ok().json(status_json(&status))),
        Err(err) => {
            let errors: Vec<Value> = match &err {
                ReloadError::Invalid(errors) => errors
                    .iter()
                    .map(|e| {
                        json!({
                            "file": e.file.as_ref().map(|f| f.display().to_string()),
                            "field": e.path,
                            "reason": e.reason,
                        })
                    })
                    .collect(),
                ReloadError::Refused(reason) => {
                    vec![json!({"file": null, "field": "(gateway)", "reason": reason})]
                }
            };
            let status = reloader(&state)?.status();
            Ok(HttpResponse::UnprocessableEntity().json(json!({
                "error": {
                    "message": format!("The configuration was not reloaded ({} errors); generation {} keeps serving.", errors.len(), status.generation),
                    "type": "invalid_request_error",
                    "param": null,
                    "code": "invalid_configuration",
                },
                "errors": errors,
                "generation": status.generation,
            })))
        }
    }
}

/// `GET /admin/config`: the generation in force, when it was applied, the last rejection.
async fn config(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(status_json(&reloader(&state)?.status())))
}

/// `GET /admin/tenants`: every tenant, its key names and its proxies with their routes.
async fn tenants(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    authorize(&state, &req)?;
    let dir = state.directory.current();
    let mut ids: Vec<&String> = dir.tenants.keys().collect();
    ids.sort();
    let data: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let entry = &dir.tenants[id];
            let mut proxies: Vec<&String> = entry.proxies.keys().collect();
            proxies.sort();
            json!({
                "id": id,
                "keys": entry.tenant.keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
                "providers": entry.tenant.providers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                "proxies": proxies.into_iter().map(|p| {
                    let proxy = &entry.proxies[p].routes;
                    json!({
                        "id": p,
                        "routing": routing_name(proxy.routing),
                        "routes": proxy.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// `GET /admin/tenants/{tenant}/proxies/{proxy}`: the proxy as it serves now, its providers'
/// keys redacted.
async fn proxy_config(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    authorize(&state, &req)?;
    let (tenant, proxy) = path.into_inner();
    let dir = state.directory.current();
    let handle = dir
        .tenants
        .get(&tenant)
        .and_then(|t| t.proxies.get(&proxy))
        .ok_or_else(|| GatewayError::NotFound {
            message: "No such tenant or proxy.".into(),
            code: "proxy_not_found",
        })?;
    Ok(HttpResponse::Ok().json(effective(&handle.routes, &handle.providers)))
}

fn routing_name(mode: RoutingMode) -> &'static str {
    mode.as_str()
}

/// A proxy's effective configuration as JSON; secrets appear as `*****`.
fn effective(proxy: &Proxy, providers: &[std::sync::Arc<Provider>]) -> Value {
    let used: Vec<&Provider> = providers
        .iter()
        .filter(|p| proxy.routes.iter().any(|r| r.provider_name == p.name))
        .map(|p| &**p)
        .collect();
    json!({
        "tenant": proxy.tenant,
        "id": proxy.id,
        "routing": routing_name(proxy.routing),
        "threshold": proxy.threshold,
        "fallback": proxy.fallback.and_then(|i| proxy.routes.get(i)).map(|r| r.name.as_str()),
        "routes": proxy.routes.iter().map(|r| json!({
            "name": r.name,
            "provider": r.provider_name,
            "model": r.model,
            "target_model": r.target_model,
            "aliases": r.aliases,
            "topics": r.topics.iter().map(|t| json!({"name": t.name, "utterances": t.utterances.len()})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "deny_topics": proxy.deny_topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "providers": used.iter().map(|p| provider_view(p)).collect::<Vec<_>>(),
    })
}

/// A provider as the admin API shows it: its type's own settings, secrets masked.
fn provider_view(p: &Provider) -> Value {
    use crate::config::{AzureApi, Credentials, ProviderSettings};
    let mut v = json!({
        "name": p.name,
        "type": p.kind().as_str(),
        "base_url": p.base_url,
        "timeout_secs": p.timeout.as_secs_f64(),
        "max_retries": p.max_retries,
    });
    let extra = match &p.settings {
        ProviderSettings::OpenAi {
            organization,
            project,
        } => json!({"organization": organization, "project": project}),
        ProviderSettings::AzureOpenAi {
            api: AzureApi::Deployments { api_version },
        } => json!({"api_version": api_version}),
        ProviderSettings::AzureOpenAi { api: AzureApi::V1 } => json!({"api_version": "v1"}),
        ProviderSettings::Gemini { api_version } => json!({"api_version": api_version}),
        ProviderSettings::Bedrock { region } => json!({"region": region}),
    };
    let secrets = match &p.credentials {
        Credentials::ApiKey(k) => json!({"api_key": k.to_string()}),
        Credentials::EntraToken(t) => json!({"bearer_token": t.to_string()}),
        Credentials::Aws {
            access_key_id,
            secret_access_key,
            session_token,
        } => json!({
            "access_key_id": access_key_id.to_string(),
            "secret_access_key": secret_access_key.to_string(),
            "session_token": session_token.as_ref().map(|t| t.to_string()),
        }),
    };
    if let (Some(obj), Some(extra), Some(secrets)) =
        (v.as_object_mut(), extra.as_object(), secrets.as_object())
    {
        obj.extend(extra.clone());
        obj.extend(secrets.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_views_show_their_types_settings_and_mask_every_secret() {
        use crate::config::{CircuitPolicy, Credentials, ProviderSettings, Secret};
        use std::time::Duration;
        let secret = |s: &str| Secret::new(s.to_owned());
        let provider = |settings, credentials| Provider {
            name: "p".into(),
            settings,
            base_url: "https://b".into(),
            credentials,
            timeout: Duration::from_secs(2),
            max_retries: 1,
            circuit: CircuitPolicy {
                failures: 0,
                open_for: Duration::from_secs(1),
            },
            prebuilt: Default::default(),
        };
        let bedrock = provider_view(&provider(
            ProviderSettings::Bedrock {
                region: "eu-west-1".into(),
            },
            Credentials::Aws {
                access_key_id: secret("AKIA-ID"),
                secret_access_key: secret("SECRET"),
                session_token: None,
            },
        ));
        assert_eq!(
            bedrock,
            json!({"name": "p", "type": "bedrock", "base_url": "https://b", "timeout_secs": 2.0,
                   "max_retries": 1, "region": "eu-west-1", "access_key_id": "*****",
                   "secret_access_key": "*****", "session_token": null})
        );
        let azure = provider_view(&provider(
            ProviderSettings::AzureOpenAi {
                api: crate::config::AzureApi::V1,
            },
            Credentials::EntraToken(secret("TOKEN")),
        ));
        assert_eq!(
            (
                &azure["type"],
                &azure["api_version"],
                &azure["bearer_token"]
            ),
            (&json!("azure_openai"), &json!("v1"), &json!("*****"))
        );
        assert!(!azure.to_string().contains("TOKEN"));
    }

    #[test]
    fn the_token_matches_itself_only() {
        let t = AdminToken::new(b"s3cret-admin");
        assert!(t.matches(b"s3cret-admin"));
        assert!(!t.matches(b"s3cret-admiN"));
        assert!(!t.matches(b"s3cret-admin "));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(*****)");
    }
}
