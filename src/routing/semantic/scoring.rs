//! Pure scoring: a query vector against a proxy's topic index, and the decision rule.
//!
//! Nothing here embeds, caches or waits: the same functions answer the gateway, `switchyard
//! route`, the admin explain endpoint, `eval-routing` and `calibrate`, so what is measured is
//! what serves. The defaults were chosen by measurement on the validation suites
//! (docs/semantic-routing.md): a topic's score is the cosine to the centroid of its utterances,
//! the best topic wins at or above the threshold unless a topic of another target scores within
//! the margin of it (an ambiguous prompt, typically a near miss from the same domain, goes to
//! the fallback). Ties break by config order: route topics in route order, then deny topics.

use crate::config::{
    MAX_DENY_TOPICS, MAX_DENY_UTTERANCES, MAX_TOPICS, MAX_UTTERANCE_CHARS, MAX_UTTERANCES, Proxy,
};

/// How a topic's utterance similarities become one score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// The best utterance (the baseline).
    Max,
    /// The mean over utterances.
    Mean,
    /// Cosine to the normalised mean of the utterance vectors.
    Centroid,
}

impl Aggregation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "max" => Some(Self::Max),
            "mean" => Some(Self::Mean),
            "centroid" => Some(Self::Centroid),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::Mean => "mean",
            Self::Centroid => "centroid",
        }
    }
}

/// Chosen on semantic_eval_val.json (docs/semantic-routing.md).
pub const DEFAULT_AGGREGATION: Aggregation = Aggregation::Centroid;
/// Chosen on semantic_eval_val.json by `switchyard calibrate` (docs/semantic-routing.md).
pub const DEFAULT_THRESHOLD: f32 = 0.36;
/// Chosen on semantic_eval_val.json (docs/semantic-routing.md).
pub const DEFAULT_MARGIN: f32 = 0.03;

/// The decision rule's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scoring {
    pub aggregation: Aggregation,
    pub threshold: f32,
    pub margin: f32,
}

impl Scoring {
    /// The measured defaults with a proxy's threshold.
    pub fn with_threshold(threshold: f32) -> Self {
        Self {
            aggregation: DEFAULT_AGGREGATION,
            threshold,
            margin: DEFAULT_MARGIN,
        }
    }
}

/// What a topic sends its prompts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Index into the proxy's routes.
    Route(usize),
    /// A deny-list topic: refuse.
    Deny,
}

/// One topic's vectors.
#[derive(Clone, Debug)]
pub struct IndexedTopic {
    pub name: String,
    pub target: Target,
    /// Unit vectors, one per utterance.
    pub utterances: Vec<Vec<f32>>,
    /// The normalised mean of `utterances`.
    pub centroid: Vec<f32>,
}

/// A proxy's topics as vectors, in config order.
#[derive(Clone, Debug, Default)]
pub struct SemanticIndex {
    pub topics: Vec<IndexedTopic>,
}

/// The topics of a proxy in index order, with their targets.
pub fn topics_of(proxy: &Proxy) -> Vec<(&crate::config::Topic, Target)> {
    let mut out: Vec<_> = proxy
        .routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.topics.iter().map(move |t| (t, Target::Route(i))))
        .collect();
    out.extend(proxy.deny_topics.iter().map(|t| (t, Target::Deny)));
    out
}

/// The design §3 limits, checked again where the index is built so no path can exceed them.
pub fn check_limits(proxy: &Proxy) -> Result<(), String> {
    let mut errors = Vec::new();
    let routed: usize = proxy.routes.iter().map(|r| r.topics.len()).sum();
    if routed > MAX_TOPICS {
        errors.push(format!("{routed} topics, at most {MAX_TOPICS}"));
    }
    if proxy.deny_topics.len() > MAX_DENY_TOPICS {
        errors.push(format!(
            "{} deny topics, at most {MAX_DENY_TOPICS}",
            proxy.deny_topics.len()
        ));
    }
    for (t, target) in topics_of(proxy) {
        let max = match target {
            Target::Route(_) => MAX_UTTERANCES,
            Target::Deny => MAX_DENY_UTTERANCES,
        };
        if t.utterances.len() > max {
            errors.push(format!(
                "topic {:?}: {} utterances, at most {max}",
                t.name,
                t.utterances.len()
            ));
        }
        if let Some(u) = t
            .utterances
            .iter()
            .find(|u| u.chars().count() > MAX_UTTERANCE_CHARS)
        {
            errors.push(format!(
                "topic {:?}: an utterance of {} characters, at most {MAX_UTTERANCE_CHARS}",
                t.name,
                u.chars().count()
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "proxy {}/{} breaks the semantic limits: {}",
            proxy.tenant,
            proxy.id,
            errors.join("; ")
        ))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalised_mean(vectors: &[Vec<f32>]) -> Vec<f32> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut c = vec![0.0f32; dim];
    for v in vectors {
        for (ci, vi) in c.iter_mut().zip(v) {
            *ci += vi;
        }
    }
    let norm = dot(&c, &c).sqrt();
    if norm > 0.0 {
        c.iter_mut().for_each(|x| *x /= norm);
    }
    c
}

impl SemanticIndex {
    /// Builds the index of `proxy` from `vectors`, which holds one unit vector per utterance in
    /// [`topics_of`] order (utterances of a topic consecutive).
    pub fn build(proxy: &Proxy, vectors: Vec<Vec<f32>>) -> Result<Self, String> {
        check_limits(proxy)?;
        let topics = topics_of(proxy);
        let needed: usize = topics.iter().map(|(t, _)| t.utterances.len()).sum();
        if needed != vectors.len() {
            return Err(format!(
                "{} vectors for {needed} utterances of proxy {}/{}",
                vectors.len(),
                proxy.tenant,
                proxy.id
            ));
        }
        let mut vectors = vectors.into_iter();
        let topics = topics
            .into_iter()
            .map(|(t, target)| {
                let utterances: Vec<Vec<f32>> = vectors.by_ref().take(t.utterances.len()).collect();
                IndexedTopic {
                    name: t.name.clone(),
                    target,
                    centroid: normalised_mean(&utterances),
                    utterances,
                }
            })
            .collect();
        Ok(Self { topics })
    }

    /// Every topic's score for `query` (a unit vector), in index order.
    pub fn scores(&self, query: &[f32], aggregation: Aggregation) -> Vec<f32> {
        self.topics
            .iter()
            .map(|t| match aggregation {
                Aggregation::Centroid => dot(&t.centroid, query),
                Aggregation::Max => t
                    .utterances
                    .iter()
                    .map(|u| dot(u, query))
                    .fold(f32::NEG_INFINITY, f32::max),
                Aggregation::Mean => {
                    let n = t.utterances.len().max(1) as f32;
                    t.utterances.iter().map(|u| dot(u, query)).sum::<f32>() / n
                }
            })
            .collect()
    }
}

/// What the rule concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Topic `i` (index into the scores) won: its route serves.
    Topic(usize),
    /// Deny topic `i` won: refuse.
    Deny(usize),
    /// Nothing reached the threshold.
    BelowThreshold,
    /// The best topic reached the threshold but a topic of another target was within the
    /// margin: an ambiguous prompt goes to the fallback.
    Ambiguous,
}

/// A decision with its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Every topic's score, in index order.
    pub scores: Vec<f32>,
    /// The best-scoring topic (first in config order on ties).
    pub best: Option<usize>,
    /// The rule it was decided by.
    pub scoring: Scoring,
}

/// The decision rule.
pub fn decide(index: &SemanticIndex, query: &[f32], scoring: Scoring) -> Verdict {
    let scores = index.scores(query, scoring.aggregation);
    let mut best: Option<usize> = None;
    for (i, s) in scores.iter().enumerate() {
        // Strictly greater: the first in config order keeps a tie.
        if best.is_none_or(|b| *s > scores[b]) {
            best = Some(i);
        }
    }
    let outcome = match best {
        None => Outcome::BelowThreshold,
        Some(b) if scores[b] < scoring.threshold => Outcome::BelowThreshold,
        Some(b) => {
            let target = index.topics[b].target;
            let rival = scores
                .iter()
                .enumerate()
                .filter(|(i, _)| index.topics[*i].target != target)
                .map(|(_, s)| *s)
                .fold(f32::NEG_INFINITY, f32::max);
            if scores[b] - rival < scoring.margin {
                Outcome::Ambiguous
            } else if target == Target::Deny {
                Outcome::Deny(b)
            } else {
                Outcome::Topic(b)
            }
        }
    };
    Verdict {
        outcome,
        scores,
        best,
        scoring,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = dot(v, v).sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn topic(name: &str, target: Target, utterances: Vec<Vec<f32>>) -> IndexedTopic {
        IndexedTopic {
            name: name.into(),
            target,
            centroid: normalised_mean(&utterances),
            utterances,
        }
    }

    fn index() -> SemanticIndex {
        SemanticIndex {
            topics: vec![
                topic(
                    "billing",
                    Target::Route(0),
                    vec![unit(&[1.0, 0.0, 0.0]), unit(&[1.0, 1.0, 0.0])],
                ),
                topic("support", Target::Route(1), vec![unit(&[0.0, 1.0, 0.0])]),
                topic("weapons", Target::Deny, vec![unit(&[0.0, 0.0, 1.0])]),
            ],
        }
    }

    fn rule(aggregation: Aggregation, threshold: f32, margin: f32) -> Scoring {
        Scoring {
            aggregation,
            threshold,
            margin,
        }
    }

    fn suite_proxy(topics: usize, utterances: usize, chars: usize) -> Proxy {
        let topics: Vec<serde_json::Value> = (0..topics)
            .map(|t| {
                let u: Vec<String> = (0..utterances).map(|i| format!("{i} {}", "x".repeat(chars))).collect();
                serde_json::json!({"name": format!("t{t}"), "route": format!("r{t}"), "utterances": u})
            })
            .collect();
        let suite: crate::routing::semantic::eval::Suite =
            serde_json::from_value(serde_json::json!({"name": "s", "topics": topics, "cases": []}))
                .expect("suite");
        suite.proxy(0.36)
    }

    #[test]
    fn the_index_builder_enforces_the_limits_again() {
        assert_eq!(check_limits(&suite_proxy(6, 10, 10)), Ok(()));
        let err = check_limits(&suite_proxy(7, 11, 499)).expect_err("over the limits");
        assert_eq!(
            err,
            "proxy eval/s breaks the semantic limits: 7 topics, at most 6; \
             topic \"t0\": 11 utterances, at most 10; topic \"t0\": an utterance of 501 characters, at most 500; \
             topic \"t1\": 11 utterances, at most 10; topic \"t1\": an utterance of 501 characters, at most 500; \
             topic \"t2\": 11 utterances, at most 10; topic \"t2\": an utterance of 501 characters, at most 500; \
             topic \"t3\": 11 utterances, at most 10; topic \"t3\": an utterance of 501 characters, at most 500; \
             topic \"t4\": 11 utterances, at most 10; topic \"t4\": an utterance of 501 characters, at most 500; \
             topic \"t5\": 11 utterances, at most 10; topic \"t5\": an utterance of 501 characters, at most 500; \
             topic \"t6\": 11 utterances, at most 10; topic \"t6\": an utterance of 501 characters, at most 500"
        );
        let p = suite_proxy(7, 1, 1);
        assert!(SemanticIndex::build(&p, vec![vec![1.0]; 7]).is_err());
        let p = suite_proxy(2, 2, 1);
        assert_eq!(
            SemanticIndex::build(&p, vec![vec![1.0]; 3]).map(|_| ()),
            Err("3 vectors for 4 utterances of proxy eval/s".into())
        );
    }

    #[test]
    fn aggregations_score_exactly() {
        let q = unit(&[1.0, 0.0, 0.0]);
        let idx = index();
        let max = idx.scores(&q, Aggregation::Max);
        assert!((max[0] - 1.0).abs() < 1e-6);
        let mean = idx.scores(&q, Aggregation::Mean);
        assert!((mean[0] - (1.0 + 0.70710677) / 2.0).abs() < 1e-6);
        // The centroid of (1,0,0) and (1,1,0)/√2 points at 22.5°.
        let cent = idx.scores(&q, Aggregation::Centroid);
        assert!((cent[0] - 22.5f32.to_radians().cos()).abs() < 1e-6);
        assert_eq!(cent[1], 0.0);
        assert_eq!(cent[2], 0.0);
    }

    #[test]
    fn best_topic_at_or_above_threshold_wins_else_fallback() {
        let idx = index();
        let q = unit(&[1.0, 0.0, 0.0]);
        let v = decide(&idx, &q, rule(Aggregation::Max, 1.0, 0.0));
        assert_eq!(v.outcome, Outcome::Topic(0));
        assert_eq!(v.best, Some(0));
        let q = unit(&[1.0, 0.2, 0.0]);
        let v = decide(&idx, &q, rule(Aggregation::Max, 0.999, 0.0));
        assert_eq!(v.outcome, Outcome::BelowThreshold);
        assert_eq!(v.best, Some(0));
    }

    #[test]
    fn deny_wins_only_as_the_best_match() {
        let idx = index();
        let v = decide(
            &idx,
            &unit(&[0.1, 0.0, 1.0]),
            rule(Aggregation::Max, 0.5, 0.0),
        );
        assert_eq!(v.outcome, Outcome::Deny(2));
        // The deny topic reaches the threshold but a route topic is better: routed.
        let v = decide(
            &idx,
            &unit(&[0.0, 1.0, 0.9]),
            rule(Aggregation::Max, 0.5, 0.0),
        );
        assert_eq!(v.outcome, Outcome::Topic(1));
    }

    #[test]
    fn ties_break_by_config_order_and_margin_sends_ambiguity_to_fallback() {
        let idx = index();
        // Equal scores for support and weapons: support comes first in config order.
        let q = unit(&[0.0, 1.0, 1.0]);
        let v = decide(&idx, &q, rule(Aggregation::Max, 0.5, 0.0));
        assert_eq!(v.outcome, Outcome::Topic(1));
        assert_eq!(v.best, Some(1));
        // With a margin, the same tie is ambiguous.
        let v = decide(&idx, &q, rule(Aggregation::Max, 0.5, 0.01));
        assert_eq!(v.outcome, Outcome::Ambiguous);
        // Two topics of the same target are no rivals.
        let same = SemanticIndex {
            topics: vec![
                topic("a", Target::Route(0), vec![unit(&[1.0, 0.0])]),
                topic("b", Target::Route(0), vec![unit(&[0.0, 1.0])]),
            ],
        };
        let v = decide(&same, &unit(&[1.0, 1.0]), rule(Aggregation::Max, 0.5, 0.05));
        assert_eq!(v.outcome, Outcome::Topic(0));
    }
}
