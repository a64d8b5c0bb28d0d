//! Routing accuracy on labelled suites: `switchyard eval-routing` and `switchyard calibrate`.
//!
//! A suite file has exactly the shape of `semantic_eval_val.json`: `suites`, each with `topics`
//! (`{name, route, utterances}`), `deny_topics` and `cases` (`{text, expect}` where `expect` is
//! a topic name, `"deny"` or `"default"`). Each suite becomes one semantic proxy (its topics on
//! their routes, its deny topics, a fallback route `default`) built by the same index builder
//! and decided by the same rule as the gateway; only the embedding is done in one batch up
//! front instead of per request. Accuracy is counted per class (in-topic, deny, default), per
//! suite and pooled over all cases.

use super::scoring::{self, Aggregation, Outcome, Scoring, SemanticIndex};
use crate::config::{ProviderKind, Proxy, Route, RoutingMode, RoutingText, Topic};
use serde::Deserialize;
use std::collections::HashMap;

/// A suite file.
#[derive(Debug, Deserialize)]
pub struct SuiteFile {
    pub suites: Vec<Suite>,
}

/// One proxy's worth of topics and its labelled cases.
#[derive(Debug, Deserialize)]
pub struct Suite {
    pub name: String,
    pub topics: Vec<SuiteTopic>,
    #[serde(default)]
    pub deny_topics: Vec<SuiteTopic>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct SuiteTopic {
    pub name: String,
    #[serde(default)]
    pub route: Option<String>,
    pub utterances: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub text: String,
    pub expect: String,
}

/// The route every suite falls back to.
pub const DEFAULT_ROUTE: &str = "default";

impl Suite {
    /// The suite as a semantic proxy, with `threshold`.
    pub fn proxy(&self, threshold: f32) -> Proxy {
        let mut routes: Vec<Route> = Vec::new();
        for t in &self.topics {
            let name = t.route.clone().unwrap_or_else(|| t.name.clone());
            let topic = Topic {
                name: t.name.clone(),
                utterances: t.utterances.clone(),
            };
            match routes.iter_mut().find(|r| r.name == name) {
                Some(r) => r.topics.push(topic),
                None => routes.push(route(&name, vec![topic])),
            }
        }
        routes.push(route(DEFAULT_ROUTE, vec![]));
        Proxy {
            tenant: "eval".into(),
            id: self.name.clone(),
            routing: RoutingMode::Semantic,
            fallback: Some(routes.len() - 1),
            routes,
            threshold: Some(threshold),
            deny_topics: self
                .deny_topics
                .iter()
                .map(|t| Topic {
                    name: t.name.clone(),
                    utterances: t.utterances.clone(),
                })
                .collect(),
            routing_text: RoutingText::LastUser,
            span_attributes: Default::default(),
        }
    }
}

fn route(name: &str, topics: Vec<Topic>) -> Route {
    Route {
        name: name.into(),
        provider: 0,
        provider_name: "eval".into(),
        provider_kind: ProviderKind::OpenAi,
        model: name.into(),
        target_model: None,
        aliases: vec![],
        topics,
        fallbacks: vec![],
        fallback_on: crate::config::Triggers::all(),
        first_byte_timeout: None,
        deadline: None,
        span_attributes: Default::default(),
        answer_headers: Default::default(),
    }
}

/// A suite with its index built and its cases embedded.
#[derive(Debug)]
pub struct Prepared {
    pub name: String,
    pub proxy: Proxy,
    pub index: SemanticIndex,
    /// (query vector, expected label)
    pub cases: Vec<(Vec<f32>, String)>,
}

/// Builds every suite's index and embeds every case with `embed` (one call per suite, batched).
pub fn prepare<E>(file: &SuiteFile, mut embed: E) -> Result<Vec<Prepared>, String>
where
    E: FnMut(&[&str]) -> Result<Vec<Vec<f32>>, String>,
{
    let mut out = Vec::new();
    for suite in &file.suites {
        let proxy = suite.proxy(scoring::DEFAULT_THRESHOLD);
        let mut texts: Vec<&str> = scoring::topics_of(&proxy)
            .iter()
            .flat_map(|(t, _)| t.utterances.iter().map(String::as_str))
            .collect();
        let utterances = texts.len();
        texts.extend(suite.cases.iter().map(|c| c.text.as_str()));
        let mut vectors = embed(&texts)?;
        let queries = vectors.split_off(utterances);
        let index = SemanticIndex::build(&proxy, vectors)?;
        let cases = queries
            .into_iter()
            .zip(&suite.cases)
            .map(|(v, c)| (v, c.expect.clone()))
            .collect();
        out.push(Prepared {
            name: suite.name.clone(),
            proxy,
            index,
            cases,
        });
    }
    Ok(out)
}

/// Correct / total per class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub topic: (usize, usize),
    pub deny: (usize, usize),
    pub default: (usize, usize),
}

impl Tally {
    pub fn correct(&self) -> usize {
        self.topic.0 + self.deny.0 + self.default.0
    }

    pub fn total(&self) -> usize {
        self.topic.1 + self.deny.1 + self.default.1
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Tally) {
        for (a, b) in [
            (&mut self.topic, other.topic),
            (&mut self.deny, other.deny),
            (&mut self.default, other.default),
        ] {
            a.0 += b.0;
            a.1 += b.1;
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let pct = |(c, t): (usize, usize)| {
            if t == 0 {
                serde_json::Value::Null
            } else {
                serde_json::json!((c as f64 * 1000.0 / t as f64).round() / 10.0)
            }
        };
        serde_json::json!({
            "cases": self.total(),
            "accuracy": pct((self.correct(), self.total())),
            "in_topic": pct(self.topic),
            "deny": pct(self.deny),
            "default": pct(self.default),
        })
    }
}

/// The label a verdict gives: a topic name, `deny` or `default`.
pub fn label(index: &SemanticIndex, outcome: Outcome) -> &str {
    match outcome {
        Outcome::Topic(i) => &index.topics[i].name,
        Outcome::Deny(_) => "deny",
        Outcome::BelowThreshold | Outcome::Ambiguous => DEFAULT_ROUTE,
    }
}

/// Runs one suite's cases through the decision rule.
pub fn run_suite(p: &Prepared, scoring: Scoring) -> Tally {
    let mut t = Tally::default();
    for (q, expect) in &p.cases {
        let verdict = scoring::decide(&p.index, q, scoring);
        let ok = usize::from(label(&p.index, verdict.outcome) == expect);
        let class = match expect.as_str() {
            "deny" => &mut t.deny,
            DEFAULT_ROUTE => &mut t.default,
            _ => &mut t.topic,
        };
        class.0 += ok;
        class.1 += 1;
    }
    t
}

/// Per suite, then pooled.
pub fn run(prepared: &[Prepared], scoring: Scoring) -> (Vec<(String, Tally)>, Tally) {
    let mut pooled = Tally::default();
    let per: Vec<_> = prepared
        .iter()
        .map(|p| {
            let t = run_suite(p, scoring);
            pooled.add(&t);
            (p.name.clone(), t)
        })
        .collect();
    (per, pooled)
}

/// Thresholds `calibrate` tries: 0.20 to 0.70 by 0.01.
pub fn threshold_grid() -> Vec<f32> {
    (20..=70).map(|i| i as f32 / 100.0).collect()
}

/// The threshold with the best pooled accuracy (the lowest on ties), and the whole table.
pub fn calibrate(
    prepared: &[Prepared],
    aggregation: Aggregation,
    margin: f32,
) -> (f32, Vec<(f32, Tally)>) {
    let table: Vec<(f32, Tally)> = threshold_grid()
        .into_iter()
        .map(|th| {
            let scoring = Scoring {
                aggregation,
                threshold: th,
                margin,
            };
            (th, run(prepared, scoring).1)
        })
        .collect();
    let mut best = (0.0, 0usize);
    for (th, t) in &table {
        if t.correct() > best.1 {
            best = (*th, t.correct());
        }
    }
    (best.0, table)
}

/// Leave one suite out: the threshold is chosen on the other suites and scored on the one left
/// out. Guards the chosen defaults against fitting one file's quirks.
pub fn cross_validate(
    prepared: &[Prepared],
    aggregation: Aggregation,
    margin: f32,
) -> Vec<(String, f32, Tally)> {
    (0..prepared.len())
        .map(|i| {
            let others: Vec<&Prepared> = prepared
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p)
                .collect();
            let mut best = (0.0f32, 0usize);
            for th in threshold_grid() {
                let scoring = Scoring {
                    aggregation,
                    threshold: th,
                    margin,
                };
                let c: usize = others.iter().map(|p| run_suite(p, scoring).correct()).sum();
                if c > best.1 {
                    best = (th, c);
                }
            }
            let scoring = Scoring {
                aggregation,
                threshold: best.0,
                margin,
            };
            (
                prepared[i].name.clone(),
                best.0,
                run_suite(&prepared[i], scoring),
            )
        })
        .collect()
}

/// Reads a suite file.
pub fn load(path: &std::path::Path) -> Result<SuiteFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Counts the cases per expected label, for the report header.
pub fn label_counts(file: &SuiteFile) -> HashMap<&'static str, usize> {
    let mut out = HashMap::new();
    for c in file.suites.iter().flat_map(|s| &s.cases) {
        let k = match c.expect.as_str() {
            "deny" => "deny",
            DEFAULT_ROUTE => "default",
            _ => "in_topic",
        };
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-dimensional "embedding" so the arithmetic is checkable by hand.
    fn toy(text: &str) -> Vec<f32> {
        match text {
            t if t.starts_with("pay") => vec![1.0, 0.0],
            t if t.starts_with("weather") => vec![0.0, 1.0],
            t if t.starts_with("mixed") => vec![0.70710677, 0.70710677],
            _ => vec![-1.0, 0.0],
        }
    }

    #[test]
    fn suites_become_proxies_and_cases_are_counted_per_class() {
        let file: SuiteFile = serde_json::from_str(
            r#"{"suites":[{"name":"s","topics":[
                {"name":"bills","route":"r_bills","utterances":["pay a","pay b"]}],
              "deny_topics":[{"name":"wx","utterances":["weather a"]}],
              "cases":[
                {"text":"pay now","expect":"bills"},
                {"text":"weather now","expect":"deny"},
                {"text":"other","expect":"default"},
                {"text":"mixed","expect":"default"},
                {"text":"other 2","expect":"bills"}]}]}"#,
        )
        .expect("suite");
        let proxy = file.suites[0].proxy(0.5);
        assert_eq!(proxy.routes.len(), 2);
        assert_eq!(proxy.routes[0].name, "r_bills");
        assert_eq!(proxy.fallback, Some(1));
        let prepared =
            prepare(&file, |texts| Ok(texts.iter().map(|t| toy(t)).collect())).expect("prepared");
        let scoring = Scoring {
            aggregation: Aggregation::Centroid,
            threshold: 0.5,
            margin: 0.0,
        };
        let (_, pooled) = run(&prepared, scoring);
        // "mixed" ties bills and wx at 0.707: bills wins by config order, so the default case
        // is wrong without a margin...
        assert_eq!(pooled.topic, (1, 2));
        assert_eq!(pooled.deny, (1, 1));
        assert_eq!(pooled.default, (1, 2));
        // ...and right with one.
        let (_, pooled) = run(
            &prepared,
            Scoring {
                margin: 0.01,
                ..scoring
            },
        );
        assert_eq!(pooled.default, (2, 2));
        assert_eq!(pooled.correct(), 4);
        let (best, table) = calibrate(&prepared, Aggregation::Centroid, 0.01);
        assert_eq!(table.len(), 51);
        assert_eq!(best, 0.2);
        assert_eq!(table[0].1.correct(), 4);
    }
}
