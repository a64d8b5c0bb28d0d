//! The admin API under `/admin`, guarded by the admin token (separate from tenant keys).
//!
//! The token comes from the environment (`SWITCHYARD_ADMIN_TOKEN`); only its SHA-256 is kept
//! and compared in constant time. Without a token configured the admin API answers 404 for
//! everything, so an unconfigured gateway exposes nothing. Today it explains semantic routing
//! decisions; listing, usage and reload join it with the operations work.

use super::AppState;
use super::auth::bearer;
use crate::actors::messages::Explain;
use crate::error::GatewayError;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The environment variable holding the admin token.
pub const ADMIN_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// The admin token's digest, from the environment (none: the admin API is off).
pub fn token_digest_from_env() -> Option<[u8; 32]> {
    std::env::var(ADMIN_TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| Sha256::digest(t.trim().as_bytes()).into())
}

fn check(state: &AppState, req: &HttpRequest) -> Result<(), GatewayError> {
    let Some(expected) = state.admin_token_sha else {
        return Err(GatewayError::NotFound {
            message: format!("The admin API is disabled; set {ADMIN_TOKEN_ENV} to enable it."),
            code: "admin_disabled",
        });
    };
    let token = bearer(req.headers()).ok_or(GatewayError::MissingApiKey)?;
    let digest: [u8; 32] = Sha256::digest(token).into();
    if bool::from(digest.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(GatewayError::InvalidApiKey)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    text: String,
}

/// `POST /admin/tenants/{tenant}/proxies/{proxy}/explain` with `{"text": "..."}`: the decision
/// and every topic's score, as `switchyard route --json` prints it.
pub async fn explain(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    check(&state, &req)?;
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
            message: format!("No proxy '{proxy}' in tenant '{tenant}'."),
            code: "proxy_not_found",
        })?;
    let explained = handle
        .addr
        .send(Explain { text: body.text })
        .await
        .map_err(|e| GatewayError::Unavailable {
            message: format!("The proxy '{proxy}' is restarting ({e}); retry."),
        })??;
    Ok(HttpResponse::Ok().json(explained))
}
