//! Semantic routing: which route a prompt's meaning belongs to, or whether it is refused.
//!
//! Everything here is pure: `text` reads the routing text from a request body, `scoring`
//! scores a query vector against a proxy's [`SemanticIndex`] and applies the decision rule,
//! `eval` runs labelled suites through that same rule. This module turns a [`Verdict`] into the
//! gateway's [`Decision`] (or the 403 of a deny topic) and into the explanation that `switchyard
//! route` and the admin explain endpoint print. Embedding (the candle model, its pool and
//! caches) lives outside, in `embedding` and `actors::embedder`; the index is owned by each
//! proxy actor.

pub mod eval;
pub mod scoring;
pub mod text;

pub use scoring::{Outcome, Scoring, SemanticIndex, Target, Verdict};

use super::{Decision, SemanticMatch};
use crate::config::{Provider, Proxy};
use crate::embedding::EncoderKind;
use crate::error::GatewayError;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Hex SHA-256 of a text: the key of cached embeddings.
pub fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The rule a proxy decides with under `encoder`: that encoder's measured threshold and margin,
/// with the proxy's own threshold when it sets one.
pub fn scoring_of(proxy: &Proxy, encoder: EncoderKind) -> Scoring {
    Scoring {
        threshold: proxy.threshold.unwrap_or(encoder.default_threshold()),
        margin: encoder.default_margin(),
        ..Scoring::with_threshold(0.0)
    }
}

/// The gateway's decision for a verdict: the winning topic's route, the fallback, or a 403
/// naming the deny topic and its score.
pub fn decision(
    proxy: &Arc<Proxy>,
    providers: &[Arc<Provider>],
    index: &SemanticIndex,
    verdict: &Verdict,
) -> Result<Decision, GatewayError> {
    let (route, fallback, semantic) = match verdict.outcome {
        Outcome::Topic(i) => {
            let Target::Route(route) = index.topics[i].target else {
                return Err(GatewayError::Internal(format!(
                    "topic {i} of {} is not a route topic",
                    proxy.id
                )));
            };
            let m = SemanticMatch {
                topic: Some(index.topics[i].name.clone()),
                score: verdict.scores[i],
            };
            (route, false, m)
        }
        Outcome::Deny(i) => {
            return Err(GatewayError::Denied {
                topic: index.topics[i].name.clone(),
                score: verdict.scores[i],
            });
        }
        Outcome::BelowThreshold | Outcome::Ambiguous => {
            let best = verdict.best.map_or(0.0, |b| verdict.scores[b]);
            let Some(f) = proxy.fallback else {
                return Err(GatewayError::invalid(
                    format!(
                        "No topic of this proxy matches the prompt (best score {best:.3}, threshold {:.3}) and it has no fallback route.",
                        verdict.scoring.threshold
                    ),
                    None,
                    Some("no_matching_topic"),
                ));
            };
            let m = SemanticMatch {
                topic: None,
                score: best,
            };
            (f, true, m)
        }
    };
    Decision::new(proxy, route, providers, fallback, Some(semantic))
}

/// The `x-switchyard-topic` (when a topic won) and `x-switchyard-score` headers.
pub fn headers(headers: &mut actix_web::http::header::HeaderMap, m: Option<&SemanticMatch>) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let Some(m) = m else { return };
    if let Some(v) = m
        .topic
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(HeaderName::from_static("x-switchyard-topic"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{:.4}", m.score)) {
        headers.insert(HeaderName::from_static("x-switchyard-score"), v);
    }
}

/// The fallback decision for a prompt with no routing text (nothing to embed).
pub fn empty_text_verdict(index: &SemanticIndex, scoring: Scoring) -> Verdict {
    Verdict {
        scoring,
        outcome: Outcome::BelowThreshold,
        scores: vec![0.0; index.topics.len()],
        best: None,
    }
}

/// A decision and every topic's score, as `switchyard route --json` and the admin explain
/// endpoint print it.
pub fn explain(
    proxy: &Proxy,
    index: &SemanticIndex,
    verdict: &Verdict,
    text: &str,
) -> serde_json::Value {
    let scoring = verdict.scoring;
    let route_name = |t: Target| match t {
        Target::Route(r) => proxy.routes[r].name.clone(),
        Target::Deny => "deny".to_owned(),
    };
    let (decision, route, topic, reason) = match verdict.outcome {
        Outcome::Topic(i) => (
            "route",
            Some(route_name(index.topics[i].target)),
            Some(index.topics[i].name.clone()),
            "best topic at or above the threshold",
        ),
        Outcome::Deny(i) => (
            "deny",
            None,
            Some(index.topics[i].name.clone()),
            "deny topic is the best match at or above the threshold",
        ),
        Outcome::BelowThreshold => (
            "fallback",
            proxy.fallback.map(|f| proxy.routes[f].name.clone()),
            None,
            "no topic reaches the threshold",
        ),
        Outcome::Ambiguous => (
            "fallback",
            proxy.fallback.map(|f| proxy.routes[f].name.clone()),
            None,
            "a topic of another target is within the margin of the best",
        ),
    };
    let scores: Vec<_> = index
        .topics
        .iter()
        .zip(&verdict.scores)
        .map(|(t, s)| json!({"topic": t.name, "target": route_name(t.target), "score": round(*s)}))
        .collect();
    json!({
        "tenant": proxy.tenant,
        "proxy": proxy.id,
        "text": text,
        "decision": decision,
        "route": route,
        "topic": topic,
        "score": verdict.best.map(|b| round(verdict.scores[b])),
        "reason": reason,
        "aggregation": scoring.aggregation.as_str(),
        "threshold": round(scoring.threshold),
        "margin": round(scoring.margin),
        "scores": scores,
    })
}

fn round(x: f32) -> f64 {
    (f64::from(x) * 10_000.0).round() / 10_000.0
}

/// The explanation as lines for a terminal.
pub fn explain_text(explanation: &serde_json::Value) -> String {
    let mut out = String::new();
    let s = |k: &str| explanation[k].as_str().unwrap_or("-").to_owned();
    out.push_str(&format!(
        "decision: {}  route: {}  topic: {}  score: {}\nreason: {} (aggregation {}, threshold {}, margin {})\n",
        s("decision"),
        s("route"),
        s("topic"),
        explanation["score"],
        s("reason"),
        s("aggregation"),
        explanation["threshold"],
        explanation["margin"],
    ));
    if let Some(scores) = explanation["scores"].as_array() {
        out.push_str(&format!(
            "{:<28} {:<20} {:>7}\n",
            "topic", "target", "score"
        ));
        for t in scores {
            out.push_str(&format!(
                "{:<28} {:<20} {:>7.4}\n",
                t["topic"].as_str().unwrap_or(""),
                t["target"].as_str().unwrap_or(""),
                t["score"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_encoder_has_its_own_defaults_and_a_proxy_threshold_overrides_them() {
        let suite: eval::Suite = serde_json::from_value(json!({"name": "s", "topics": [
            {"name": "t", "utterances": ["hello"]}], "deny_topics": [], "cases": []}))
        .expect("suite");
        let mut proxy = suite.proxy(0.5);
        proxy.threshold = None;
        let t = scoring_of(&proxy, EncoderKind::Transformer);
        assert_eq!((t.threshold, t.margin), (0.36, 0.03));
        let s = scoring_of(&proxy, EncoderKind::Static);
        assert_eq!((s.threshold, s.margin), (0.48, 0.01));
        proxy.threshold = Some(0.5);
        assert_eq!(scoring_of(&proxy, EncoderKind::Static).threshold, 0.5);
        assert_eq!(scoring_of(&proxy, EncoderKind::Static).margin, 0.01);
        assert_eq!(scoring_of(&proxy, EncoderKind::Transformer).threshold, 0.5);
    }
}
