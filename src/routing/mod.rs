//! Routing decisions: which route of a proxy serves a request.
//!
//! A decision is a pure function of a proxy's configuration and the request; the proxy actor
//! owns the configuration and answers with a [`Decision`]. Model-based routing lives in
//! `model`; semantic routing (the routing text, scoring topics, evaluation) in `semantic`.

pub mod model;
pub mod semantic;

use crate::config::{Provider, Proxy, Route, RoutingMode};
use crate::error::GatewayError;
use std::sync::Arc;

/// Where one request goes, and why.
#[derive(Debug, Clone)]
pub struct Decision {
    pub proxy: Arc<Proxy>,
    /// Index into `proxy.routes`.
    pub route: usize,
    pub provider: Arc<Provider>,
    /// The fallback route was used because nothing matched.
    pub fallback: bool,
    /// For semantic routing: the winning topic (none on fallback) and the best score.
    pub semantic: Option<SemanticMatch>,
}

/// What a semantic decision matched, for the `x-switchyard-topic` and `-score` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticMatch {
    pub topic: Option<String>,
    pub score: f32,
}

impl Decision {
    pub fn route(&self) -> &Route {
        &self.proxy.routes[self.route]
    }

    pub fn routing(&self) -> RoutingMode {
        self.proxy.routing
    }

    /// A decision for `route` of `proxy`, served by that route's provider.
    pub fn new(
        proxy: &Arc<Proxy>,
        route: usize,
        providers: &[Arc<Provider>],
        fallback: bool,
        semantic: Option<SemanticMatch>,
    ) -> Result<Decision, GatewayError> {
        let provider = proxy
            .routes
            .get(route)
            .and_then(|r| providers.get(r.provider))
            .cloned()
            .ok_or_else(|| {
                GatewayError::Internal(format!("route {route} of {} has no provider", proxy.id))
            })?;
        Ok(Decision {
            proxy: proxy.clone(),
            route,
            provider,
            fallback,
            semantic,
        })
    }

    /// The same request on another route of this proxy: the next step of a fallback chain.
    pub fn on_route(
        &self,
        route: usize,
        providers: &[Arc<Provider>],
    ) -> Result<Decision, GatewayError> {
        Decision::new(&self.proxy, route, providers, true, self.semantic.clone())
    }
}

/// Decides the route for a request naming `model`, for model-based proxies; semantic proxies
/// decide in their actor (`semantic::decision`), which owns the topic index.
pub fn decide(
    proxy: &Arc<Proxy>,
    providers: &[Arc<Provider>],
    model: Option<&str>,
) -> Result<Decision, GatewayError> {
    let (route, fallback) = match proxy.routing {
        RoutingMode::Model => model::resolve(proxy, model)?,
        RoutingMode::Semantic => {
            return Err(GatewayError::Internal(format!(
                "proxy {} routes semantically; its actor decides",
                proxy.id
            )));
        }
    };
    Decision::new(proxy, route, providers, fallback, None)
}
