//! The data plane under `/{tenant}/{proxy}/v1`: [`dispatch`] matches the URL by hand (and
//! hands a tenant's `/{tenant}/usage` to `http::usage`), then
//! each conversation is the same short sequence, written once in [`conversation`]: authenticate,
//! read and parse the body, get the proxy's routing decision, prepare the provider request,
//! hand it to this worker's provider actor, and relay the answer with headers that explain the
//! routing. Everything else lives in the modules those steps call.

use super::AppState;
use super::auth::authenticate;
use super::body::read_limited;
use crate::actors::directory::{ProxyHandle, TenantEntry};
use crate::actors::messages::{Call, CallLimits, Decide, RestartProxy};
use crate::actors::provider::ProviderActor;
use crate::api::canonical::{Conversation, Message, Part, Reply, Role, Usage};
use crate::api::codec::FrontEncoder;
use crate::api::response_ids::{IdRewriter, IdScope};
use crate::api::response_store::{StoreError, StoredResponse};
use crate::api::stream::{Ending, OnEnd, RelayStream, TranslatedStream};
use crate::api::usage::{self, UsageTap};
use crate::api::{Endpoint, FrontRequest, chat, responses};
use crate::config::{Provider, RoutingMode};
use crate::error::{GatewayError, quote};
use crate::governance::Meter;
use crate::providers::{self, UpstreamBody, UpstreamResponse};
use crate::routing::{self, Decision, semantic};
use crate::telemetry::context::RequestContext;
use crate::telemetry::scope::Scope;
use crate::telemetry::{access, names, otel};
use actix::Addr;
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::FutureExt;
use opentelemetry::trace::SpanKind;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

/// `/{tenant}/{proxy}/v1/…`: the data plane's URLs, matched by hand (and every other unknown
/// path answered here). actix-router matches a pattern with dynamic segments by a regex, which
/// was 2% of the request path's CPU for what is a split on `/`.
pub async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    provider: web::Data<Addr<ProviderActor>>,
) -> Result<HttpResponse, GatewayError> {
    let Some((tenant, proxy, rest)) = proxy_path(req.path()) else {
        if let Some(tenant) = super::usage::usage_path(req.path()) {
            return if req.method() == Method::GET {
                super::usage::tenant_usage(&req, tenant, &state).await
            } else {
                Ok(super::method_not_allowed(&req, "GET"))
            };
        }
        return Ok(super::unknown_path(&req));
    };
    let (tenant, proxy) = (tenant.to_owned(), proxy.to_owned());
    let method = req.method();
    let endpoint = match rest {
        "chat/completions" => Some((Endpoint::ChatCompletions, "POST")),
        "responses" => Some((Endpoint::Responses, "POST")),
        _ => None,
    };
    if let Some((endpoint, allow)) = endpoint {
        return if method == Method::POST {
            conversation(endpoint, req, tenant, proxy, payload, state, provider).await
        } else {
            Ok(super::method_not_allowed(&req, allow))
        };
    }
    let id = rest
        .strip_prefix("responses/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    if rest != "models" && id.is_none() {
        return Ok(super::unknown_path(&req));
    }
    if method != Method::GET {
        return Ok(super::method_not_allowed(&req, "GET"));
    }
    match id {
        Some(id) => {
            let id = id.to_owned();
            get_response(req, tenant, proxy, id, state, provider).await
        }
        None => models(req, tenant, proxy, state).await,
    }
}

/// `(tenant, proxy, rest)` of `/{tenant}/{proxy}/v1/{rest}`, segments non-empty.
fn proxy_path(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.strip_prefix('/')?.splitn(4, '/');
    let (tenant, proxy) = (parts.next()?, parts.next()?);
    let (v1, rest) = (parts.next()?, parts.next()?);
    (!tenant.is_empty() && !proxy.is_empty() && v1 == "v1").then_some((tenant, proxy, rest))
}

/// `GET /{tenant}/{proxy}/v1/models`
async fn models(
    req: HttpRequest,
    tenant: String,
    proxy_id: String,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let dir = state.directory.current();
    let auth = authenticate(&dir, &tenant, req.headers())?;
    let proxy = find_proxy(auth.entry, &proxy_id)?;
    note_proxy(&req, proxy, &otel::request_trace(&req));
    let data: Vec<_> = routing::model::served_models(&proxy.routes)
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": state.started_at, "owned_by": owner}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// `GET /{tenant}/{proxy}/v1/responses/{id}`: a stored response. One a translated provider
/// answered is in the gateway's store; one OpenAI or Azure answered is fetched from the
/// provider account whose scope the id verifies under (`api::response_ids`), its ids
/// rewritten as on the way out.
async fn get_response(
    req: HttpRequest,
    tenant: String,
    proxy_id: String,
    id: String,
    state: web::Data<AppState>,
    provider: web::Data<Addr<ProviderActor>>,
) -> Result<HttpResponse, GatewayError> {
    let dir = state.directory.current();
    let auth = authenticate(&dir, &tenant, req.headers())?;
    let proxy = find_proxy(auth.entry, &proxy_id)?;
    let trace = otel::request_trace(&req);
    note_proxy(&req, proxy, &trace);
    if let Some(stored) = state.responses.get(&tenant, &id).await? {
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(stored.object.clone()));
    }
    for upstream in proxy.providers.iter() {
        let scope = IdScope::new(upstream.credentials.account_secret().as_bytes(), &tenant);
        let Ok(upstream_id) = scope.resolve(&id) else {
            continue;
        };
        let Some(request) = providers::retrieval(upstream, upstream_id) else {
            continue;
        };
        let limits = CallLimits {
            first_byte_timeout: upstream.timeout,
            deadline: None,
        };
        let rewriter = IdRewriter::new(scope, Some((&id, upstream_id)));
        return Ok(
            match call(
                &req,
                upstream,
                limits,
                request,
                &provider,
                &Scope::current(),
                &trace,
            )
            .await?
            {
                Ok(answer) => relay_whole(answer, Some(rewriter)),
                Err(err) => err.error_response(),
            },
        );
    }
    Err(GatewayError::NotFound {
        message: format!("Response with id '{}' not found.", quote(&id)),
        code: "response_not_found",
    })
}

async fn conversation(
    endpoint: Endpoint,
    req: HttpRequest,
    tenant: String,
    proxy_id: String,
    payload: web::Payload,
    state: web::Data<AppState>,
    provider: web::Data<Addr<ProviderActor>>,
) -> Result<HttpResponse, GatewayError> {
    let scope = Scope::current();
    let dir = state.directory.current();
    let auth = authenticate(&dir, &tenant, req.headers())?;
    let proxy = find_proxy(auth.entry, &proxy_id)?;
    // The request's exported span and its `traceparent`, read from its context once.
    let (trace, traceparent) = req
        .extensions()
        .get::<RequestContext>()
        .map(|c| (c.trace.clone(), Some(c.traceparent.clone())))
        .unwrap_or_default();
    note_proxy(&req, proxy, &trace);
    // Governance: rate limits before any work, and the request's identity for its usage record.
    let governance = &auth.entry.tenant.governance;
    state
        .governance
        .limiter
        .check(governance, &tenant, auth.key_name)
        .await?;
    let meter = Meter::new(
        &state.governance,
        &auth.entry.tenant,
        auth.key_name,
        &request_id(&req),
    );
    let body = read_limited(payload, req.headers(), &state.body_limits).await?;
    let front = FrontRequest::parse(endpoint, body)?;
    let routing = trace.child(names::SPAN_ROUTING, SpanKind::Internal, 0, |_| {});
    let first = decide(&state, proxy, &front)
        .instrument(tracing::debug_span!(names::SPAN_ROUTING))
        .await;
    drop(routing);
    let first = first?;
    // Budgets: the estimated cost is reserved before any upstream call; an exhausted budget
    // refuses, or diverts to the proxy's fallback route when the tenant file says so.
    let (first, over_budget) = match meter.reserve(&first, &front.raw).await {
        Ok(()) => (first, false),
        Err(exhausted) => match (exhausted.budget.divert, proxy.routes.fallback) {
            (true, Some(fallback)) => {
                meter.charge_only();
                (first.on_route(fallback, &proxy.providers)?, true)
            }
            _ => return Err(exhausted.error()),
        },
    };
    tracing::debug!(key = auth.key_name, fallback = first.fallback, "routed");
    // The routed route, then its fallbacks in order, for failures that its `fallback_on` names
    // and that happened before any byte reached the client.
    let primary = first.route();
    let chain: Vec<usize> = std::iter::once(first.route)
        .chain(primary.fallbacks.iter().copied())
        .collect();
    let fallback_on = primary.fallback_on;
    // Why the first route is itself a fallback: the model is not served, or (semantic) no
    // topic matched well enough.
    let mut reason = first.fallback.then_some(match first.routing() {
        RoutingMode::Model => "unknown_model",
        RoutingMode::Semantic => "no_topic_match",
    });
    if over_budget {
        reason = Some("budget_exhausted");
    }
    let mut decision = first.clone();
    let mut decoded = None;
    for (step, &route) in chain.iter().enumerate() {
        if step > 0 {
            decision = first.on_route(route, &proxy.providers)?;
        }
        let route = decision.route();
        scope.set_route(decision.route);
        access::note_route(&req, &route.name);
        otel::routed(&trace, route, reason.is_some());
        let answer = attempt(
            &req,
            &state,
            &tenant,
            &front,
            &decision,
            (traceparent.as_ref(), &trace),
            &provider,
            &scope,
            &mut decoded,
            &meter,
        )
        .await?;
        let err = match answer {
            Ok(res) => return Ok(explained(res, &decision, reason)),
            Err(err) => err,
        };
        let next = chain.get(step + 1);
        match (err.trigger().filter(|t| fallback_on.contains(*t)), next) {
            (Some(trigger), Some(&next)) => {
                tracing::warn!(
                    error = %err,
                    reason = trigger.as_str(),
                    next = %decision.proxy.routes[next].name,
                    "route failed; falling back"
                );
                reason = Some(trigger.as_str());
            }
            _ => return Ok(explained(err.error_response(), &decision, reason)),
        }
    }
    Err(GatewayError::Internal(
        "the fallback chain ended without an answer".into(),
    ))
}

/// One route's try at a request: the upstream request built for its provider, sent by this
/// worker's provider actor (with that route's retries), and relayed. `Ok(Err)` is a failure
/// the caller may fall back from; `Err` ends the request. `decoded` keeps the conversation
/// decoded for a translated provider across the fallback chain (decoded at most once).
#[expect(clippy::too_many_arguments)]
async fn attempt(
    req: &HttpRequest,
    state: &AppState,
    tenant: &str,
    front: &FrontRequest,
    decision: &Decision,
    (traceparent, trace): (Option<&HeaderValue>, &otel::Trace),
    provider: &Addr<ProviderActor>,
    scope: &Scope,
    decoded: &mut Option<Decoded>,
    meter: &Meter,
) -> Result<Result<HttpResponse, GatewayError>, GatewayError> {
    let endpoint = front.endpoint;
    let translator = providers::adapter(decision.provider.kind()).and_then(|a| a.translator());
    if let Some(translator) = translator {
        let decoded = match decoded {
            Some(d) => d,
            None => decoded.insert(Decoded::new(front, tenant, state).await?),
        };
        let outgoing = providers::Outgoing::Translated(&decoded.conversation);
        let request = providers::prepare(outgoing, decision, traceparent)?;
        let input_estimate = usage::estimate_tokens(&front.raw);
        let bill = (meter, endpoint, input_estimate);
        let upstream = match send(req, decision, request, provider, scope, trace, bill).await? {
            Ok(upstream) => upstream,
            Err(err) => return Ok(Err(err)),
        };
        let stream = matches!(upstream.body, UpstreamBody::Stream(_));
        let on_usage = noting(req, meter.on_usage(decision, endpoint, stream));
        return Ok(translated(
            translator,
            decision,
            upstream,
            decoded,
            tenant,
            state,
            (on_usage, input_estimate),
        )
        .await);
    }
    // Responses ids are scoped to the tenant on the provider account (api::response_ids).
    let ids = (endpoint == Endpoint::Responses).then(|| {
        IdScope::new(
            decision.provider.credentials.account_secret().as_bytes(),
            tenant,
        )
    });
    let previous = match (&ids, front.previous_response_id.as_deref()) {
        (Some(scope), Some(visible)) => Some((visible, scope.resolve(visible)?)),
        _ => None,
    };
    let outgoing = providers::Outgoing::Native {
        front,
        previous_response_id: previous.as_ref().map(|p| p.1),
    };
    let mut request = providers::prepare(outgoing, decision, traceparent)?;
    // Streams must report usage; what the gateway asked for on the client's behalf is hidden.
    let hide_usage = crate::governance::can_ask_for_stream_usage(&decision.provider.settings)
        && usage::ask_for_usage(endpoint, front.stream, &mut request.body);
    let input_estimate = usage::estimate_tokens(&front.raw);
    let answer = send(
        req,
        decision,
        request,
        provider,
        scope,
        trace,
        (meter, endpoint, input_estimate),
    )
    .await?;
    // A whole answer's usage is committed to the ledger before the answer goes out.
    if let Ok(UpstreamResponse {
        status,
        body: UpstreamBody::Full(body),
        ..
    }) = &answer
        && status.is_success()
    {
        let (usage, usage_at) = usage::from_body_at(endpoint, body);
        let tokens = usage.as_ref().map(|u| (u.input_tokens, u.output_tokens));
        // Only a chat answer's finish reasons are found before its usage.
        let chat_usage_at = usage_at.filter(|_| endpoint == Endpoint::ChatCompletions);
        access::note_answer(req, tokens, trace, body, chat_usage_at);
        if let Some(ack) = meter.record_durably(decision, endpoint, false, usage, false) {
            crate::governance::committed(ack).await;
        }
    }
    let rewriter = ids.map(|scope| IdRewriter::new(scope, previous));
    let tap = (meter, hide_usage, input_estimate);
    Ok(answer.map(|upstream| relay(req, endpoint, decision, upstream, rewriter, tap)))
}

/// Hands a prepared call to this worker's provider actor, with the route's time limits, and
/// cancels it if the client goes away first.
///
/// A whole answer that broke off after its success status was generated, and billed, by the
/// provider though the client gets a 502: it is recorded at an estimate (its input, flagged),
/// never left out of the ledger.
async fn send(
    req: &HttpRequest,
    decision: &Decision,
    request: providers::UpstreamCall,
    provider: &Addr<ProviderActor>,
    scope: &Scope,
    trace: &otel::Trace,
    (meter, endpoint, input_estimate): (&Meter, Endpoint, u64),
) -> Result<Result<UpstreamResponse, GatewayError>, GatewayError> {
    let route = decision.route();
    let limits = CallLimits {
        first_byte_timeout: route
            .first_byte_timeout
            .unwrap_or(decision.provider.timeout),
        deadline: route.deadline,
    };
    let answer = call(
        req,
        &decision.provider,
        limits,
        request,
        provider,
        scope,
        trace,
    )
    .await?;
    if let Err(GatewayError::UpstreamIncomplete { .. }) = &answer {
        let estimate = Usage {
            input_tokens: input_estimate,
            ..Usage::default()
        };
        meter.record(decision, endpoint, false, Some(estimate), true);
    }
    Ok(answer)
}

/// Sends `request` to `upstream` through this worker's provider actor.
async fn call(
    req: &HttpRequest,
    upstream: &Arc<Provider>,
    limits: CallLimits,
    request: providers::UpstreamCall,
    provider: &Addr<ProviderActor>,
    scope: &Scope,
    trace: &otel::Trace,
) -> Result<Result<UpstreamResponse, GatewayError>, GatewayError> {
    // Dropped with this handler when the client goes away, which cancels the upstream call.
    let (_client_alive, client_gone) = oneshot::channel();
    let upstream_started = std::time::Instant::now();
    let answer = provider
        .send(Call {
            provider: upstream.clone(),
            request,
            limits,
            scope: scope.clone(),
            trace: trace.clone(),
            client_gone,
        })
        .await
        .map_err(|err| GatewayError::Internal(format!("provider actor unavailable: {err}")))?;
    access::note_upstream(req, upstream_started.elapsed());
    Ok(answer)
}

/// A front request decoded into the canonical model, for a translated provider.
struct Decoded {
    conversation: Conversation,
    front: FrontShape,
}

/// The front endpoint's options for encoding the answer.
enum FrontShape {
    Chat(chat::ChatOptions),
    Responses(responses::ResponsesOptions),
}

impl Decoded {
    async fn new(
        front: &FrontRequest,
        tenant: &str,
        state: &AppState,
    ) -> Result<Self, GatewayError> {
        Ok(match front.endpoint {
            Endpoint::ChatCompletions => {
                let (conversation, options) = chat::decode(&front.raw)?;
                Self {
                    conversation,
                    front: FrontShape::Chat(options),
                }
            }
            Endpoint::Responses => {
                let previous = front.previous_response_id.as_deref();
                let stored = match previous {
                    None => None,
                    Some(id) => Some(state.responses.get(tenant, id).await?.ok_or_else(|| {
                        GatewayError::invalid(
                            format!("Previous response with id '{}' not found.", quote(id)),
                            Some("previous_response_id"),
                            Some("previous_response_not_found"),
                        )
                    })?),
                };
                let history = stored.as_ref().map_or(&[][..], |s| &s.messages[..]);
                let (conversation, options) = responses::decode(&front.raw, previous, history)?;
                Self {
                    conversation,
                    front: FrontShape::Responses(options),
                }
            }
        })
    }
}

/// The client's response from a translated provider's answer: decoded by the provider's
/// translator and encoded for the front endpoint, whole or event by event. When the answer
/// ends, its usage is tapped and (Responses with `store`) it is stored for follow-ups. A
/// complete answer's last byte waits for both writes (the ledger's commit and the stored
/// response, at most `governance::ACK_WAIT`): a whole answer goes out after them, a stream
/// holds its closing events until then, so a client that has the answer in full can follow
/// up on any replica. A stream that breaks or is abandoned records its usage (an estimate,
/// flagged, when the upstream never reported it) without waiting.
async fn translated(
    translator: &dyn providers::Translator,
    decision: &Decision,
    upstream: UpstreamResponse,
    decoded: &Decoded,
    tenant: &str,
    state: &AppState,
    (on_usage, input_estimate): (usage::OnUsage, u64),
) -> Result<HttpResponse, GatewayError> {
    let route = decision.route();
    let model = route.upstream_model();
    let on_end = ending_hook(decoded, route.name.clone(), model, tenant, state);
    let mut res = HttpResponse::build(upstream.status);
    if let Some(id) = upstream.request_id {
        res.insert_header((UPSTREAM_REQUEST_ID, id));
    }
    match upstream.body {
        UpstreamBody::Full(bytes) => {
            let reply = translator.decode_reply(&bytes).map_err(|detail| {
                GatewayError::UpstreamIncomplete {
                    provider: decision.provider.name.clone(),
                    detail,
                }
            })?;
            let model = reply.model.as_deref().unwrap_or(model);
            let body = match &decoded.front {
                FrontShape::Chat(_) => chat::encode(&reply, &chat::Stamp::new(model)),
                FrontShape::Responses(options) => {
                    serde_json::to_vec(&responses::encode(&reply, options, model))
                        .unwrap_or_default()
                }
            };
            let ack = on_usage(usage::Report {
                usage: reply.usage,
                estimated: false,
                durable: true,
            });
            let mut acks = on_end(&reply, Ending::Complete);
            acks.extend(ack);
            crate::api::stream::settled(acks).await;
            Ok(res.content_type("application/json").body(body))
        }
        UpstreamBody::Stream(body) => {
            let encoder: Box<dyn FrontEncoder> = match &decoded.front {
                FrontShape::Chat(options) => {
                    Box::new(chat::ChatStream::new(chat::Stamp::new(model), *options))
                }
                FrontShape::Responses(options) => {
                    Box::new(responses::ResponsesStream::new(options.clone(), model))
                }
            };
            let stream = TranslatedStream::new(
                body,
                translator.stream_decoder(),
                encoder,
                decision.provider.name.clone(),
                metered(on_end, on_usage, input_estimate),
                Scope::current(),
            );
            Ok(event_stream(res.streaming(stream)))
        }
    }
}

/// What happens when a translated answer ends: the usage tap and, for a complete Responses
/// answer with `store`, the stored conversation a follow-up replays.
fn ending_hook(
    decoded: &Decoded,
    route: String,
    model: &str,
    tenant: &str,
    state: &AppState,
) -> OnEnd {
    let store = match &decoded.front {
        FrontShape::Responses(options) if options.store => Some((
            state.responses.clone(),
            options.clone(),
            decoded.conversation.messages.clone(),
            tenant.to_owned(),
        )),
        _ => None,
    };
    let model = model.to_owned();
    Box::new(move |reply: &Reply, ending: Ending| {
        tracing::debug!(usage = ?reply.usage, ?ending, "translated answer ended");
        let (Some((responses, options, mut messages, tenant)), Ending::Complete) = (store, ending)
        else {
            return Vec::new();
        };
        let model = reply.model.as_deref().unwrap_or(&model);
        let object =
            serde_json::to_vec(&responses::encode(reply, &options, model)).unwrap_or_default();
        messages.push(Message {
            role: Role::Assistant,
            parts: reply.parts.clone(),
        });
        let stored = StoredResponse {
            messages,
            object: object.into(),
            route,
        };
        let mut put = responses.put(&tenant, &options.id, stored);
        let written = |result: Result<(), StoreError>| match result {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(%err, "response not stored: a follow-up will not find it");
                false
            }
        };
        // The memory store is done at once; a shared one is written on its own task, so the
        // write completes even if the client leaves before it.
        if let Some(result) = (&mut put).now_or_never() {
            written(result);
            return Vec::new();
        }
        let (tx, rx) = oneshot::channel();
        actix_web::rt::spawn(Scope::current().instrument(async move {
            let _ = tx.send(written(put.await));
        }));
        vec![rx]
    })
}

/// `on_end`, after recording the streamed answer's usage (`governance`): the provider's
/// report, or, when the stream broke or the client left before it, an estimate flagged as
/// one (`usage::estimate_tokens` of the request in and of what was generated so far out). A complete stream's
/// record is durable: its closing events wait for the commit too.
fn metered(on_end: OnEnd, on_usage: usage::OnUsage, input_estimate: u64) -> OnEnd {
    Box::new(move |reply: &Reply, ending: Ending| {
        let generated: u64 = reply
            .parts
            .iter()
            .map(|p| match p {
                Part::Text { text } | Part::Reasoning { text, .. } => {
                    usage::estimate_tokens(text.as_bytes())
                }
                Part::ToolCall(c) => {
                    usage::estimate_tokens(c.name.as_bytes())
                        + usage::estimate_tokens(c.arguments.as_bytes())
                }
                Part::Image(_) | Part::ToolResult(_) => 0,
            })
            .sum();
        let estimate = Usage {
            input_tokens: input_estimate,
            output_tokens: generated,
            ..Usage::default()
        };
        let ack = on_usage(usage::Report {
            usage: Some(reply.usage.unwrap_or(estimate)),
            estimated: reply.usage.is_none(),
            durable: ending == Ending::Complete,
        });
        let mut acks = on_end(reply, ending);
        acks.extend(ack);
        acks
    })
}

/// Names the request's tenant and proxy in the access log, its log scope and its trace.
fn note_proxy(req: &HttpRequest, proxy: &ProxyHandle, trace: &otel::Trace) {
    access::note_proxy(req, &proxy.routes.tenant, &proxy.routes.id);
    Scope::current().set_proxy(&proxy.routes);
    otel::named(trace, &proxy.routes);
}

fn find_proxy<'d>(entry: &'d TenantEntry, proxy_id: &str) -> Result<&'d ProxyHandle, GatewayError> {
    entry
        .proxies
        .get(proxy_id)
        .ok_or_else(|| GatewayError::NotFound {
            message: format!(
                "The proxy '{}' does not exist for this tenant.",
                quote(proxy_id)
            ),
            code: "proxy_not_found",
        })
}

/// The proxy's routing decision. A model-based decision is a pure lookup in the route table the
/// proxy actor owns and publishes, so it is made right here: a mailbox hop to the routing
/// thread cost a cross-thread wake-up per request and, with the gateway's core saturated, a
/// wait for a time slice (at concurrency 64: p99 3.3 → 6.9 ms, throughput 1.00 → 0.76 of
/// direct, CPU 0.034 → 0.043 ms per request; loadtests/README.md). Decisions that need the
/// actor's state go through its mailbox; a closed mailbox means the actor died, so the
/// supervisor is told to restart it and the client gets a retryable 503.
async fn decide(
    state: &AppState,
    proxy: &ProxyHandle,
    front: &FrontRequest,
) -> Result<Decision, GatewayError> {
    let routes = &proxy.routes;
    let model = front.model.as_deref();
    if routes.routing == RoutingMode::Model {
        return routing::decide(routes, &proxy.providers, model);
    }
    let text = semantic::text::routing_text(front.endpoint, &front.raw, routes.routing_text);
    let msg = Decide {
        model: model.map(str::to_owned),
        text: Some(text),
    };
    proxy.addr.send(msg).await.map_err(|err| {
        state.supervisor.do_send(RestartProxy {
            tenant: routes.tenant.clone(),
            proxy: routes.id.clone(),
        });
        GatewayError::Unavailable {
            message: format!(
                "The proxy '{}' is restarting ({err}); retry the request.",
                routes.id
            ),
        }
    })?
}

/// The client's response: the upstream status and body, streamed event by event when it streams.
/// A stream's usage goes to `meter` through the usage tap (a whole answer's was recorded
/// before).
fn relay(
    req: &HttpRequest,
    endpoint: Endpoint,
    decision: &Decision,
    upstream: UpstreamResponse,
    ids: Option<IdRewriter>,
    (meter, hide_usage, input_estimate): (&Meter, bool, u64),
) -> HttpResponse {
    let UpstreamBody::Stream(body) = upstream.body else {
        return relay_whole(upstream, ids);
    };
    let tap = UsageTap::new(
        endpoint,
        hide_usage,
        input_estimate,
        noting(req, meter.on_usage(decision, endpoint, true)),
    );
    let mut res = HttpResponse::build(upstream.status);
    if let Some(id) = upstream.request_id {
        res.insert_header((UPSTREAM_REQUEST_ID, id));
    }
    event_stream(
        res.streaming(
            RelayStream::new(
                body,
                endpoint,
                decision.provider.name.clone(),
                ids,
                Scope::current(),
            )
            .with_usage_tap(tap),
        ),
    )
}

/// The provider's own request id, relayed to the client.
const UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// `res` marked as an event stream that no cache or proxy in between may hold back.
///
/// The names and values are constants, inserted into the built response: given as strings to
/// the response builder, each header was parsed, checked and copied on the first event's path
/// (about 800 instructions a stream in all).
fn event_stream(mut res: HttpResponse) -> HttpResponse {
    const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream; charset=utf-8");
    const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
    const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
    const NO: HeaderValue = HeaderValue::from_static("no");
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, EVENT_STREAM);
    headers.insert(header::CACHE_CONTROL, NO_CACHE);
    headers.insert(X_ACCEL_BUFFERING, NO);
    res
}

/// `on_usage`, noting the provider's reported tokens for the access record as they pass.
fn noting(req: &HttpRequest, on_usage: usage::OnUsage) -> usage::OnUsage {
    let slot = access::token_slot(req);
    Box::new(move |report: usage::Report| {
        if let (Some(u), false) = (&report.usage, report.estimated) {
            slot.note(u.input_tokens, u.output_tokens);
        }
        on_usage(report)
    })
}

/// The gateway's id of this request (`x-request-id`).
fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestContext>()
        .map(|c| crate::telemetry::context::id_text(c.request_id.as_bytes()))
        .unwrap_or_default()
}

/// A whole upstream answer relayed as it came, its Responses ids rewritten when scoped.
fn relay_whole(upstream: UpstreamResponse, ids: Option<IdRewriter>) -> HttpResponse {
    let mut res = HttpResponse::build(upstream.status);
    if let Some(id) = upstream.request_id {
        res.insert_header((UPSTREAM_REQUEST_ID, id));
    }
    let bytes = match upstream.body {
        UpstreamBody::Full(bytes) => bytes,
        // Only a call that asked for a stream gets one.
        UpstreamBody::Stream(_) => Default::default(),
    };
    let bytes = match ids {
        Some(mut ids) => ids.body(bytes),
        None => bytes,
    };
    let ct = upstream
        .content_type
        .unwrap_or(HeaderValue::from_static("application/json"));
    res.insert_header((header::CONTENT_TYPE, ct)).body(bytes)
}

/// `res` with the headers that explain a routing decision (design §1.1): the route that
/// answered, and why it was a fallback when it was one.
fn explained(
    mut res: HttpResponse,
    decision: &Decision,
    reason: Option<&'static str>,
) -> HttpResponse {
    // Names, and the values that come from a closed set, are constants: made from strings
    // here, each was checked (and a value copied) on every answer.
    const ROUTE: HeaderName = HeaderName::from_static("x-switchyard-route");
    const PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
    const MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
    const ROUTING: HeaderName = HeaderName::from_static("x-switchyard-routing");
    const FALLBACK: HeaderName = HeaderName::from_static("x-switchyard-fallback");
    const MODEL_BASED: HeaderValue = HeaderValue::from_static("model");
    const SEMANTIC: HeaderValue = HeaderValue::from_static("semantic");
    const TRUE: HeaderValue = HeaderValue::from_static("true");
    const FALSE: HeaderValue = HeaderValue::from_static("false");
    let route = decision.route();
    let headers = res.headers_mut();
    // The route's names never change: each value is checked and copied once, at the route's
    // first answer, and shared after (a reference count).
    let values = route.answer_headers.get_or_init(|| {
        [
            route.name.as_str(),
            route.provider_name.as_str(),
            route.upstream_model(),
        ]
        .map(|name| HeaderValue::from_str(name).ok())
    });
    for (name, value) in [ROUTE, PROVIDER, MODEL].into_iter().zip(values) {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
    let routing = match decision.routing() {
        RoutingMode::Model => MODEL_BASED,
        RoutingMode::Semantic => SEMANTIC,
    };
    headers.insert(ROUTING, routing);
    headers.insert(FALLBACK, if reason.is_some() { TRUE } else { FALSE });
    semantic::headers(headers, decision.semantic.as_ref());
    if let Some(reason) = reason {
        headers.insert(
            HeaderName::from_static("x-switchyard-fallback-reason"),
            HeaderValue::from_static(reason),
        );
    }
    res
}
