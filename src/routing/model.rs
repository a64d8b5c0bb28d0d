//! Model-based routing: the request's `model` names the route.
//!
//! A client may send `<provider>/<model>` (the provider's name in the tenant file, or its type
//! such as `openai`), a bare model name that exactly one route serves, or an alias. Anything
//! else goes to the fallback route, or is refused with the list of models the proxy serves.

use crate::config::Proxy;
use crate::error::{GatewayError, quote};

/// The ids `/v1/models` lists and errors quote: each route as `<provider>/<model>`, then the
/// aliases, in config order.
pub fn served_models(proxy: &Proxy) -> Vec<(String, &str)> {
    let mut out: Vec<(String, &str)> = proxy
        .routes
        .iter()
        .map(|r| (r.qualified_model(), r.provider_name.as_str()))
        .collect();
    for r in &proxy.routes {
        out.extend(
            r.aliases
                .iter()
                .map(|a| (a.clone(), r.provider_name.as_str())),
        );
    }
    out
}

fn available(proxy: &Proxy) -> String {
    served_models(proxy)
        .into_iter()
        .map(|(id, _)| id)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The route index for `model`, and whether the fallback was used.
///
/// A missing or empty `model` is a client error even when the proxy has a fallback, as it is
/// on OpenAI: the fallback catches models the proxy does not serve, not requests that forgot
/// to say which model they want (silently picking one would hide the client's bug).
pub fn resolve(proxy: &Proxy, model: Option<&str>) -> Result<(usize, bool), GatewayError> {
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return Err(GatewayError::invalid(
            format!(
                "You must provide a model parameter. This proxy serves: {}.",
                available(proxy)
            ),
            Some("model"),
            Some("missing_required_parameter"),
        ));
    };

    // An alias or a bare model name.
    let mut bare = proxy
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.model == model || r.aliases.iter().any(|a| a == model));
    if let Some((first, _)) = bare.next() {
        let others: Vec<String> = bare.map(|(_, r)| r.qualified_model()).collect();
        if others.is_empty() {
            return Ok((first, false));
        }
        return Err(GatewayError::invalid(
            format!(
                "The model '{}' is served by several routes ({}, {}); name one as <provider>/<model>.",
                quote(model),
                proxy.routes[first].qualified_model(),
                others.join(", ")
            ),
            Some("model"),
            Some("ambiguous_model"),
        ));
    }

    // `<provider>/<model>`: by provider name first, then by provider type (first in config
    // order, as ties always break).
    if let Some((provider, name)) = model.split_once('/') {
        let by_name = proxy
            .routes
            .iter()
            .position(|r| r.provider_name == provider && r.model == name);
        let by_kind = || {
            proxy
                .routes
                .iter()
                .position(|r| r.provider_kind.as_str() == provider && r.model == name)
        };
        if let Some(i) = by_name.or_else(by_kind) {
            return Ok((i, false));
        }
    }

    proxy.fallback.map(|f| (f, true)).ok_or_else(|| {
        GatewayError::invalid(
            format!(
                "The model '{}' is not served by this proxy. Available models: {}.",
                quote(model),
                available(proxy)
            ),
            Some("model"),
            Some("model_not_found"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderKind, Route, RoutingMode, RoutingText};

    fn route(name: &str, provider: &str, model: &str, aliases: &[&str]) -> Route {
        Route {
            name: name.into(),
            provider: 0,
            provider_name: provider.into(),
            provider_kind: ProviderKind::OpenAi,
            model: model.into(),
            target_model: None,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            topics: vec![],
            fallbacks: vec![],
            fallback_on: crate::config::Triggers::all(),
            first_byte_timeout: None,
            deadline: None,
            span_attributes: Default::default(),
            answer_headers: Default::default(),
        }
    }

    fn proxy(fallback: Option<usize>) -> Proxy {
        Proxy {
            tenant: "t".into(),
            id: "p".into(),
            routing: RoutingMode::Model,
            routes: vec![
                route("big", "openai", "gpt-4o", &["smart"]),
                route("small", "openai", "gpt-4o-mini", &[]),
                route("eu", "openai-eu", "gpt-4o", &[]),
            ],
            fallback,
            threshold: Some(0.5),
            deny_topics: vec![],
            routing_text: RoutingText::LastUser,
            span_attributes: Default::default(),
        }
    }

    #[test]
    fn resolves_qualified_names_aliases_and_unique_bare_names() {
        let p = proxy(None);
        assert_eq!(resolve(&p, Some("openai/gpt-4o")).ok(), Some((0, false)));
        assert_eq!(resolve(&p, Some("openai-eu/gpt-4o")).ok(), Some((2, false)));
        assert_eq!(resolve(&p, Some("smart")).ok(), Some((0, false)));
        assert_eq!(resolve(&p, Some("gpt-4o-mini")).ok(), Some((1, false)));
    }

    #[test]
    fn ambiguous_bare_names_are_refused_with_the_choices() {
        let err = resolve(&proxy(Some(1)), Some("gpt-4o"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("openai/gpt-4o") && err.contains("openai-eu/gpt-4o"),
            "{err}"
        );
    }

    #[test]
    fn unknown_models_use_the_fallback_but_a_missing_model_is_refused() {
        let p = proxy(Some(1));
        assert_eq!(resolve(&p, Some("claude-3")).ok(), Some((1, true)));
        for missing in [None, Some("")] {
            match resolve(&p, missing) {
                Err(GatewayError::InvalidRequest { param, code, .. }) => {
                    assert_eq!(param.as_deref(), Some("model"));
                    assert_eq!(code, Some("missing_required_parameter"));
                }
                other => panic!("{missing:?}: expected a 400, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_huge_model_name_is_quoted_clipped() {
        let huge = "m".repeat(1_000_000);
        let err = resolve(&proxy(None), Some(&huge))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.contains(&format!("'{}…'", "m".repeat(100))), "{err}");
    }

    #[test]
    fn without_fallback_the_error_lists_the_models() {
        let err = resolve(&proxy(None), Some("claude-3"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("openai/gpt-4o-mini") && err.contains("smart"),
            "{err}"
        );
    }
}
