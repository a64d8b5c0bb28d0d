//! The HTTP surface: routes, shared state, per-request identity and error rendering.
//!
//! [`server`] assembles the actix-web app: health endpoints, the data plane under
//! `/{tenant}/{proxy}/v1`, `/metrics`, the admin API (`admin`), and OpenAI-shaped answers for
//! unknown paths and methods. Every request ends with one access-log line. Every
//! response carries `x-request-id` and the gateway's `traceparent`. Each worker thread starts
//! its own provider actor, since its HTTP client cannot cross threads.

pub mod admin;
pub mod auth;
pub mod body;
pub mod data_plane;
pub mod usage;

use crate::actors::directory::DirectoryHandle;
use crate::actors::provider::ProviderActor;
use crate::actors::supervisor::Supervisor;
use crate::error::{GatewayError, quote};
use crate::telemetry::access;
use crate::telemetry::context::RequestContext;
use crate::telemetry::scope::Scope;
use actix::{Actor, Addr};
use actix_http::{HttpService, Request};
use actix_server::Server;
use actix_service::{fn_service, map_config};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, Service};
use actix_web::http::ConnectionType;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use dashmap::DashMap;
use futures_util::future::Either;
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default request body limit: room for a few base64 images.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default cap on open connections from one client address.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// What every worker shares.
#[derive(Clone)]
pub struct AppState {
    pub directory: DirectoryHandle,
    pub supervisor: Addr<Supervisor>,
    pub body_limits: body::BodyLimits,
    /// Open connections allowed per client address; 0 for no limit.
    pub max_connections_per_client: usize,
    /// Unix seconds when the gateway started (`created` of listed models).
    pub started_at: u64,
    /// Set once the first configuration is applied.
    pub ready: Arc<AtomicBool>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// Reloads the tenants directory (admin API); `None` in tests that build state by hand.
    pub reloader: Option<Arc<crate::config::watcher::Reloader>>,
    /// The admin API's token; `None` turns the admin API off.
    pub admin_token: Option<admin::AdminToken>,
    /// Rate limits and the ledger.
    pub governance: crate::governance::Governance,
    /// Semantic indexes still building: not ready until none is.
    pub indexes: crate::actors::embedder::Readiness,
    /// Responses answered by translated providers, for `previous_response_id` and `GET`.
    pub responses: Arc<dyn crate::api::response_store::ResponseStore>,
}

/// Open connections per client address, counted by [`ConnectionSlot`]s.
type ConnectionCounts = Arc<DashMap<IpAddr, usize>>;

/// One accepted connection's place in the per-address count; freed when the connection closes
/// (actix-web drops a connection's data with it).
struct ConnectionSlot {
    ip: IpAddr,
    counts: ConnectionCounts,
    /// This connection took the address past the limit: its requests are refused.
    over: Option<usize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.counts.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Builds the gateway's HTTP server on `listener`; the caller runs it.
///
/// Assembled from actix-server and actix-http rather than `HttpServer`, which offers no hook
/// for `Expect: 100-continue`: its default answers "100 Continue" at once, so a client with a
/// wrong key or an oversized body would upload the body before hearing 401 or 413.
/// [`expect_continue`] checks both first. The settings are `HttpServer`'s defaults except
/// those commented.
///
/// The server does not handle signals itself (`run` does: it flips `/readyz` to 503 before
/// stopping it); once stopped gracefully, in-flight requests and streams get up to
/// `shutdown_timeout` to finish.
pub fn server(
    state: AppState,
    listener: TcpListener,
    workers: usize,
    shutdown_timeout: std::time::Duration,
) -> std::io::Result<Server> {
    let counts = ConnectionCounts::default();
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(shutdown_timeout.as_secs());
    if workers > 0 {
        builder = builder.workers(workers);
    }
    let shutdown = builder.graceful_shutdown_signal();
    let builder = builder.listen("switchyard", listener, move || {
        let state = state.clone();
        let counts = counts.clone();
        let limit = state.max_connections_per_client;
        let provider = ProviderActor::new().start();
        let expect_state = state.clone();
        let shutdown = shutdown.clone();
        let app = App::new()
            .app_data(web::Data::new(state))
            .app_data(web::Data::new(provider))
            .wrap_fn(|req, srv| {
                // With trace export on, the sampler decides here, once: a sampled server span
                // (`ctx.trace`) continues the caller's trace and its ids are what goes back and
                // upstream; an unsampled one builds no OTel span and its traceparent says so
                // (the sampled flag clear).
                let ctx = RequestContext::start(req.headers());
                // Every log line while serving this request names it (and, as the handler
                // learns them, its tenant, proxy and route).
                let scope = Scope::new(ctx.request_id.to_str().unwrap_or_default());
                let refused = req
                    .conn_data::<ConnectionSlot>()
                    .and_then(|slot| slot.over)
                    .map(|limit| GatewayError::TooManyConnections { limit });
                req.extensions_mut().insert(ctx.clone());
                let pending = access::Pending::start(
                    ctx.request_id.as_bytes(),
                    ctx.traceparent.to_str().unwrap_or_default(),
                    req.path(),
                    ctx.trace.clone(),
                );
                let fut = {
                    let _entered = scope.enter();
                    match refused {
                        None => Either::Left(srv.call(req)),
                        Some(err) => Either::Right(std::future::ready(Ok(
                            req.into_response(err.error_response())
                        ))),
                    }
                };
                let respond = async move {
                    let mut res = fut.await?;
                    let headers = res.headers_mut();
                    headers.insert(HeaderName::from_static("x-request-id"), ctx.request_id);
                    headers.insert(HeaderName::from_static("traceparent"), ctx.traceparent);
                    Ok(pending.respond(res))
                };
                scope.instrument(respond)
            })
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .service(admin::scope())
            // The data plane, `/{tenant}/{proxy}/v1/…`, a tenant's own `/{tenant}/usage`, and
            // every unknown path.
            .default_service(web::to(data_plane::dispatch));
        HttpService::build()
            .graceful_shutdown_signal(move || {
                let signal = shutdown.clone();
                async move { signal.notified().await }
            })
            // Streams write one small event at a time: Nagle's algorithm would hold each behind
            // the client's delayed ACK of the previous write (tens of ms).
            .tcp_nodelay(true)
            // A client that closes its side has gone: drop its request, which cancels the
            // upstream call.
            .h1_allow_half_closed(false)
            .on_connect_ext(move |io: &TcpStream, data| {
                if limit == 0 {
                    return;
                }
                let Ok(ip) = io.peer_addr().map(|a| a.ip()) else {
                    return;
                };
                let open = {
                    let mut n = counts.entry(ip).or_insert(0);
                    *n += 1;
                    *n
                };
                data.insert(ConnectionSlot {
                    ip,
                    counts: counts.clone(),
                    over: (open > limit).then_some(limit),
                });
            })
            .expect(fn_service(move |req: Request| {
                std::future::ready(expect_continue(&expect_state, req))
            }))
            .finish(map_config(app, |_| AppConfig::default()))
            .tcp()
    })?;
    Ok(builder.run())
}

/// An `Expect: 100-continue` request hears "100 Continue" only when its key is good and its
/// declared body fits; otherwise its 401 or 413 comes before the body is sent.
fn expect_continue(state: &AppState, req: Request) -> Result<Request, Refusal> {
    let refusal = |err: GatewayError| {
        let mut res = err.error_response();
        res.head_mut().set_connection_type(ConnectionType::Close);
        Refusal(res.into())
    };
    let mut segments = req.path().trim_start_matches('/').split('/');
    let (Some(tenant), Some(_proxy), Some("v1")) =
        (segments.next(), segments.next(), segments.next())
    else {
        return Ok(req);
    };
    let dir = state.directory.current();
    if let Err(err) = auth::authenticate(&dir, tenant, req.headers()) {
        return Err(refusal(err));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let limit = state.body_limits.max_bytes;
    if declared.is_some_and(|n| n > limit) {
        return Err(refusal(GatewayError::PayloadTooLarge { limit }));
    }
    Ok(req)
}

/// The answer to a refused `Expect: 100-continue`.
struct Refusal(actix_http::Response<BoxBody>);

impl From<Refusal> for actix_http::Response<BoxBody> {
    fn from(r: Refusal) -> Self {
        r.0
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready means: configuration loaded and applied, and not draining for shutdown.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.draining.load(Ordering::Acquire) {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}))
    } else if state.ready.load(Ordering::Acquire) && state.indexes.pending() == 0 {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "loading"}))
    }
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::telemetry::metrics::CONTENT_TYPE)
        .body(crate::telemetry::metrics::metrics().render())
}

/// 404 for a path the gateway does not serve.
fn unknown_path(req: &HttpRequest) -> HttpResponse {
    GatewayError::NotFound {
        message: format!(
            "Invalid URL ({} {})",
            quote(req.method().as_str()),
            quote(req.path())
        ),
        code: "unknown_url",
    }
    .error_response()
}

/// 405 for a known path, with the `Allow` header naming the method it takes.
fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    let mut res = GatewayError::MethodNotAllowed {
        message: format!(
            "Invalid method for URL ({} {}); use {allow}.",
            quote(req.method().as_str()),
            quote(req.path())
        ),
    }
    .error_response();
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}
