//! The HTTP surface: routes, shared state, per-request identity and error rendering.
//!
//! [`server`] assembles the actix-web app: health endpoints, the data plane under
//! `/{tenant}/{proxy}/v1`, and OpenAI-shaped answers for unknown paths and methods. Every
//! response carries `x-request-id` and the gateway's `traceparent`. Each worker thread starts
//! its own provider actor, since its HTTP client cannot cross threads.

pub mod admin;
pub mod auth;
pub mod body;
pub mod data_plane;

use crate::actors::directory::DirectoryHandle;
use crate::actors::provider::ProviderActor;
use crate::actors::supervisor::Supervisor;
use crate::error::GatewayError;
use crate::telemetry::context::RequestContext;
use actix::{Actor, Addr};
use actix_web::dev::{Server, Service};
use actix_web::http::header::HeaderName;
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default request body limit: room for a few base64 images.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What every worker shares.
#[derive(Clone)]
pub struct AppState {
    pub directory: DirectoryHandle,
    pub supervisor: Addr<Supervisor>,
    pub max_body_bytes: usize,
    /// Unix seconds when the gateway started (`created` of listed models).
    pub started_at: u64,
    /// Set once the first configuration is applied.
    pub ready: Arc<AtomicBool>,
    /// Semantic indexes still building: not ready until none is.
    pub indexes: crate::actors::embedder::Readiness,
    /// SHA-256 of the admin token (none: the admin API is off).
    pub admin_token_sha: Option<[u8; 32]>,
}

/// Builds the gateway's HTTP server on `listener`; the caller runs it.
pub fn server(state: AppState, listener: TcpListener, workers: usize) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        let provider = ProviderActor::new().start();
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(provider))
            .wrap_fn(|req, srv| {
                let ctx = RequestContext::from_headers(req.headers());
                req.extensions_mut().insert(ctx.clone());
                let fut = srv.call(req);
                async move {
                    let mut res = fut.await?;
                    let headers = res.headers_mut();
                    headers.insert(HeaderName::from_static("x-request-id"), ctx.request_id);
                    if let Ok(tp) = ctx.traceparent.parse() {
                        headers.insert(HeaderName::from_static("traceparent"), tp);
                    }
                    Ok(res)
                }
            })
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route(
                "/admin/tenants/{tenant}/proxies/{proxy}/explain",
                web::post().to(admin::explain),
            )
            .service(
                web::scope("/{tenant}/{proxy}/v1")
                    .service(
                        web::resource("/chat/completions")
                            .route(web::post().to(data_plane::chat_completions))
                            .default_service(web::to(method_not_allowed)),
                    )
                    .service(
                        web::resource("/responses")
                            .route(web::post().to(data_plane::responses))
                            .default_service(web::to(method_not_allowed)),
                    )
                    .service(
                        web::resource("/models")
                            .route(web::get().to(data_plane::models))
                            .default_service(web::to(method_not_allowed)),
                    ),
            )
            .default_service(web::to(unknown_path))
    })
    .listen(listener)?;
    let server = if workers > 0 {
        server.workers(workers)
    } else {
        server
    };
    Ok(server.run())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.ready.load(Ordering::Acquire) && state.indexes.pending() == 0 {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "loading"}))
    }
}

async fn unknown_path(req: HttpRequest) -> HttpResponse {
    GatewayError::NotFound {
        message: format!("Invalid URL ({} {})", req.method(), req.path()),
        code: "unknown_url",
    }
    .error_response()
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    GatewayError::MethodNotAllowed {
        message: format!("Invalid method for URL ({} {})", req.method(), req.path()),
    }
    .error_response()
}
