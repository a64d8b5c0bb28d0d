//! Stage one of configuration: tenant files as they are written.
//!
//! These types mirror the TOML exactly and reject unknown keys, so a typo is an error rather
//! than a silently ignored setting. [`parse`] reports every syntax, unknown-key and type error
//! of a file, not just serde's first. Nothing here is checked beyond syntax and types; the
//! rules (limits, references, reserved names) live in `validate`, which turns these into
//! runtime types.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One `tenants/<id>.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Keys the tenant's clients present as `Authorization: Bearer …`.
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// Upstream providers by name (`[providers.<name>]`).
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// LLM proxies by id (`[proxies.<id>]`); each is one OpenAI-compatible endpoint.
    #[serde(default)]
    pub proxies: BTreeMap<String, RawProxy>,
    /// Rate limits for the whole tenant (`[limits]`).
    pub limits: Option<RawLimits>,
    /// The tenant's own prices (`[[prices]]`), over the built-in table.
    #[serde(default)]
    pub prices: Vec<RawPrice>,
    /// Spending caps (`[[budgets]]`).
    #[serde(default)]
    pub budgets: Vec<RawBudget>,
}

/// A budget: USD (a decimal string) or tokens per day or month, for the tenant or one key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// The API key name it caps; absent for the whole tenant.
    pub key: Option<String>,
    pub usd: Option<String>,
    pub tokens: Option<u64>,
    /// `day` or `month` (UTC).
    pub period: String,
    /// `reject` (default: 429) or `fallback` (the proxy's fallback route).
    pub on_exhausted: Option<String>,
}

/// Rate limits, per minute; absent means unlimited.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// A tenant's price for one provider type and model, USD per 1M tokens as decimal strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// `openai`, `azure_openai`, `gemini` or `bedrock`.
    pub provider: String,
    pub model: String,
    pub input: String,
    pub cached_input: Option<String>,
    pub cache_write: Option<String>,
    pub output: String,
}

/// A tenant API key: a reference to an environment variable or a SHA-256 hash, never a literal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// A label for logs and usage reports.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: Option<String>,
    /// Name of the environment variable holding the key.
    pub env: Option<String>,
    /// Accepted by the parser only to refuse it with a clear reason: literals are not allowed.
    pub key: Option<toml::Value>,
    /// This key's own rate limits (on top of the tenant's).
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// An upstream provider endpoint and its credentials.
///
/// One flat table for every `type`; `validate` refuses a field that is not one of the named
/// kind's, with its path, and turns the table into the per-kind `ProviderSettings`. Not a
/// serde-tagged enum: an internally tagged enum is read through serde's buffered content, so
/// `serde_path_to_error` loses the path inside the variant and an unknown or mistyped field
/// would be reported (and set aside by `parse`'s repair loop) as the whole provider (tried:
/// with `#[serde(tag = "type")]`, an unknown `modle` and a mistyped `timeout_secs` in
/// `[providers.x]` are both reported at `providers.x`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `openai`, `azure_openai`, `gemini` or `bedrock`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Base URL including the version path, e.g. `https://api.openai.com/v1`; for Azure
    /// OpenAI the `…/openai/v1` base URL (instead of `endpoint`).
    pub base_url: Option<String>,
    /// Azure OpenAI: the resource endpoint (`https://<resource>.openai.azure.com`) for
    /// deployment URLs. Bedrock: replaces the regional runtime endpoint.
    pub endpoint: Option<String>,
    /// Azure OpenAI deployment URLs: the `api-version` query value (required there).
    /// Gemini: the path version (default `v1beta`).
    pub api_version: Option<String>,
    /// Azure OpenAI: environment variable holding a Microsoft Entra ID bearer token (instead
    /// of `api_key_env`).
    pub bearer_token_env: Option<String>,
    /// Bedrock: the AWS region, e.g. `us-east-1`.
    pub region: Option<String>,
    /// Bedrock: environment variable holding the AWS access key id.
    pub access_key_id_env: Option<String>,
    /// Bedrock: environment variable holding the AWS secret access key.
    pub secret_access_key_env: Option<String>,
    /// Bedrock: environment variable holding an AWS session token (temporary credentials).
    pub session_token_env: Option<String>,
    /// Environment variable that, when set, replaces `base_url` (to point at an emulator).
    pub base_url_env: Option<String>,
    /// Environment variable holding the provider API key (for Bedrock, an API key sent as a
    /// bearer token instead of access keys).
    pub api_key_env: Option<String>,
    /// Accepted by the parser only to refuse it with a clear reason: literals are not allowed.
    pub api_key: Option<toml::Value>,
    /// OpenAI only: organization header, if any.
    pub organization: Option<String>,
    /// OpenAI only: project header, if any.
    pub project: Option<String>,
    /// Seconds to wait for the upstream's response headers, and the longest silence allowed
    /// inside a body or stream after that (default 600).
    pub timeout_secs: Option<u64>,
    /// Retries after a 429, a 5xx or a connection failure before any byte reached the client
    /// (default 2).
    pub max_retries: Option<u32>,
    /// Consecutive failed attempts (connection errors, timeouts, 5xx) that open this endpoint's
    /// circuit (default 5; 0 turns the breaker off).
    pub circuit_failures: Option<u32>,
    /// Seconds an open circuit refuses calls before letting one probe through (default 30).
    pub circuit_open_secs: Option<u64>,
}

/// One LLM proxy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// `model` (default) or `semantic`.
    pub routing: Option<String>,
    /// Free text for admins.
    pub description: Option<String>,
    /// The routes, in priority order (ties break by this order).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Name of the route used when no route matches.
    pub fallback: Option<String>,
    /// Semantic routing: minimum score for a topic to win (default measured on the validation
    /// suites, docs/semantic-routing.md).
    pub threshold: Option<f64>,
    /// Semantic routing: `last_user` (default) compares the last user message, `conversation`
    /// every message's text.
    pub routing_text: Option<String>,
    /// Semantic routing: topics whose prompts are refused.
    #[serde(default)]
    pub deny_topics: Vec<RawTopic>,
}

/// A provider plus a target model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique within the proxy.
    pub name: String,
    /// A key of `[providers]`.
    pub provider: String,
    /// The model clients name (`<provider>/<model>` or bare).
    pub model: String,
    /// The model actually sent upstream, when it differs (a version pin).
    pub target_model: Option<String>,
    /// Other names clients may use for this route.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Semantic routing: topics that send prompts here.
    #[serde(default)]
    pub topics: Vec<RawTopic>,
    /// Other routes of this proxy to try, in order, when this one fails before any byte
    /// reached the client.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Which failures move to the next route in `fallbacks`: `connect`, `timeout`, `429`,
    /// `5xx`, `circuit_open`, `stream_error` (default: all of them).
    pub fallback_on: Option<Vec<String>>,
    /// Seconds a stream may take to send its first event before the attempt counts as timed
    /// out (default: the provider's `timeout_secs`).
    pub first_byte_timeout_secs: Option<u64>,
    /// Seconds this route may spend on one request before its answer starts, retries
    /// included (default: no limit beyond each attempt's own timeouts).
    pub deadline_secs: Option<u64>,
}

/// A prompt topic defined by example utterances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    pub name: String,
    #[serde(default)]
    pub utterances: Vec<String>,
}

/// What parsing one tenant file found.
#[derive(Debug)]
pub struct Parsed {
    /// The file as raw types, when it could be read that far (possibly after setting aside
    /// the fields reported in `errors`), so the rules can still be checked on the rest.
    pub tenant: Option<RawTenant>,
    /// Every syntax, unknown-field and type error: (field path, reason).
    pub errors: Vec<(String, String)>,
    /// Field paths whose value was set aside or stood in for; a rule violation at or under one
    /// of them is a consequence of an error already reported, not a new one.
    pub set_aside: Vec<String>,
}

impl Parsed {
    /// Whether a rule violation at `path` only repeats an error already reported.
    pub fn is_consequence(&self, path: &str) -> bool {
        self.set_aside.iter().any(|s| is_at_or_under(path, s))
    }
}

fn is_at_or_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// One step of a field path, as serde reports it.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn show(steps: &[Step]) -> String {
    let mut s = String::new();
    for step in steps {
        match step {
            Step::Key(k) if s.is_empty() => s += k,
            Step::Key(k) => {
                s.push('.');
                s += k;
            }
            Step::Index(i) => s += &format!("[{i}]"),
        }
    }
    if s.is_empty() { "(file)".to_owned() } else { s }
}

/// Stand-ins tried, in order, for a required field that is missing or of the wrong type, so
/// the rest of the file still parses. Every required field of the raw types is a string today;
/// the others make the walk robust to a future required table or list.
const STAND_INS: usize = 3;
fn stand_in(attempt: usize) -> toml::Value {
    match attempt {
        0 => toml::Value::String(String::new()),
        1 => toml::Value::Table(toml::Table::new()),
        _ => toml::Value::Array(Vec::new()),
    }
}

/// More errors than this in one file are not worth reading; the repair loop stops there.
const MAX_ERRORS: usize = 200;
/// Each repair removes a key or uses up a stand-in, so the loop ends by itself; this bound
/// only guards against a serde behaviour not foreseen here.
const MAX_REPAIRS: usize = 1000;

/// Parses one tenant file and reports *every* unknown field and type error in it.
///
/// serde stops at the first error, and `deny_unknown_fields` makes every unknown key one.
/// Rather than keep a second, hand-written list of the known fields (which would drift from
/// these types), the file is read into a `toml::Value` and deserialized into the raw types in
/// a loop: each error is recorded with its path (from `serde_path_to_error`), the offending
/// value is set aside (an unknown key removed; a value of the wrong type removed or, when
/// required, replaced by a stand-in), and deserialization runs again until it succeeds. So the
/// raw types stay the single source of truth, serde's own messages (`unknown field `modle`,
/// expected one of …`) reach the operator, and the repaired tenant still goes through the
/// rules so their violations show up in the same run. (`serde_ignored` would collect unknown
/// keys in one pass, but only with `deny_unknown_fields` off, and these types keep it on so
/// that no other way into them accepts a typo.) Files are small, so re-running serde once per
/// error costs nothing that matters: a 316-line file with 100 unknown fields validates, all
/// 100 reported, in 0.03 s with a debug build.
pub fn parse(text: &str) -> Parsed {
    let mut found = Vec::new();
    let mut set_aside = Vec::new();
    let tenant = parse_into(text, &mut found, &mut set_aside);
    // serde meets the keys of a table in sorted order, not in the file's: report in the
    // file's order (by position; an error without one goes last).
    found.sort_by_key(|(at, _, _)| at.unwrap_or(usize::MAX));
    Parsed {
        tenant,
        errors: found
            .into_iter()
            .map(|(at, path, reason)| match at {
                Some(at) => (path, format!("{reason}{}", line_of(text, at))),
                None => (path, reason),
            })
            .collect(),
        set_aside,
    }
}

type Found = Vec<(Option<usize>, String, String)>;

fn parse_into(text: &str, found: &mut Found, set_aside: &mut Vec<String>) -> Option<RawTenant> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(err) => {
            let at = err.span().map(|s| s.start);
            found.push((at, "(file)".to_owned(), err.message().trim_end().to_owned()));
            return None;
        }
    };
    // Spans for line numbers; `toml::Value` keeps none. This parse cannot fail where the
    // one above succeeded, and without it the errors are only missing their lines.
    let doc = toml_edit::ImDocument::parse(text).ok();
    let mut value = toml::Value::Table(table);
    let mut attempts: Vec<(Vec<Step>, usize)> = Vec::new();
    for _ in 0..MAX_REPAIRS {
        if found.len() >= MAX_ERRORS {
            found.push((
                None,
                "(file)".to_owned(),
                format!("stopped after {MAX_ERRORS} errors in this file; fix these and run again"),
            ));
            return None;
        }
        let err = match serde_path_to_error::deserialize::<_, RawTenant>(value.clone()) {
            Ok(tenant) => return Some(tenant),
            Err(err) => err,
        };
        let mut steps = Vec::new();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => steps.push(Step::Index(*index)),
                serde_path_to_error::Segment::Map { key } => steps.push(Step::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => {
                    // No raw type has enums or untyped parts: give up on the rest of the file.
                    let at = doc.as_ref().and_then(|d| span_of(d, &steps));
                    found.push((at, show(&steps), err.into_inner().message().to_owned()));
                    return None;
                }
            }
        }
        let message = err.into_inner().message().trim_end().to_owned();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            .map(str::to_owned);
        if let Some(field) = &missing {
            steps.push(Step::Key(field.clone()));
        }
        let path = show(&steps);
        if !set_aside.iter().any(|s| is_at_or_under(&path, s)) {
            let at = doc.as_ref().and_then(|d| span_of(d, &steps));
            found.push((at, path.clone(), message.clone()));
        }
        let repaired = if message.starts_with("unknown field `") {
            remove(&mut value, &steps)
        } else {
            if !set_aside.contains(&path) {
                set_aside.push(path);
            }
            let tried = match attempts.iter().position(|(p, _)| *p == steps) {
                Some(i) => &mut attempts[i].1,
                None => {
                    attempts.push((steps.clone(), 0));
                    &mut attempts.last_mut().expect("just pushed").1
                }
            };
            match steps.last() {
                // A wrong-typed field is removed first: optional ones then parse. A required
                // one comes back as missing and gets the next stand-in.
                Some(Step::Key(_)) if missing.is_none() => remove(&mut value, &steps),
                // An array element cannot be removed without shifting the indices that later
                // errors report, so it is replaced in place.
                Some(_) if *tried < STAND_INS => {
                    *tried += 1;
                    put(&mut value, &steps, stand_in(*tried - 1))
                }
                _ => false,
            }
        };
        if !repaired {
            return None;
        }
    }
    None
}

fn line_of(text: &str, at: usize) -> String {
    let upto = &text[..at.min(text.len())];
    format!(" (line {})", upto.matches('\n').count() + 1)
}

/// The table or array that holds the last step of `steps`.
fn parent<'v>(value: &'v mut toml::Value, steps: &[Step]) -> Option<&'v mut toml::Value> {
    let mut node = value;
    for step in steps {
        node = match step {
            Step::Key(k) => node.as_table_mut()?.get_mut(k)?,
            Step::Index(i) => node.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(node)
}

fn remove(value: &mut toml::Value, steps: &[Step]) -> bool {
    let Some((Step::Key(key), head)) = steps.split_last() else {
        return false;
    };
    parent(value, head)
        .and_then(toml::Value::as_table_mut)
        .and_then(|t| t.remove(key))
        .is_some()
}

fn put(value: &mut toml::Value, steps: &[Step], with: toml::Value) -> bool {
    let Some((last, head)) = steps.split_last() else {
        return false;
    };
    match (parent(value, head), last) {
        (Some(toml::Value::Table(t)), Step::Key(k)) => {
            t.insert(k.clone(), with);
            true
        }
        (Some(toml::Value::Array(a)), Step::Index(i)) if *i < a.len() => {
            a[*i] = with;
            true
        }
        _ => false,
    }
}

/// Where in the text `steps` points: the deepest key or element that exists (a missing
/// field points at the table that lacks it).
fn span_of(doc: &toml_edit::ImDocument<&str>, steps: &[Step]) -> Option<usize> {
    enum Node<'a> {
        Item(&'a toml_edit::Item),
        Value(&'a toml_edit::Value),
        Table(&'a toml_edit::Table),
    }
    let mut node = Node::Table(doc.as_table());
    let mut at = None;
    for step in steps {
        let next = match (&node, step) {
            (Node::Table(t), Step::Key(k)) => t.get_key_value(k).map(|(key, item)| {
                at = key.span().map(|s| s.start).or(at);
                Node::Item(item)
            }),
            (Node::Item(item), Step::Key(k)) => item
                .as_table_like()
                .and_then(|t| t.get_key_value(k))
                .map(|(key, item)| {
                    at = key.span().map(|s| s.start).or(at);
                    Node::Item(item)
                }),
            (Node::Value(v), Step::Key(k)) => v
                .as_inline_table()
                .and_then(|t| t.get_key_value(k))
                .map(|(key, item)| {
                    at = key.span().map(|s| s.start).or(at);
                    Node::Item(item)
                }),
            (Node::Item(item), Step::Index(i)) => match item {
                toml_edit::Item::ArrayOfTables(a) => a.get(*i).map(|t| {
                    at = t.span().map(|s| s.start).or(at);
                    Node::Table(t)
                }),
                toml_edit::Item::Value(v) => v.as_array().and_then(|a| a.get(*i)).map(|v| {
                    at = v.span().map(|s| s.start).or(at);
                    Node::Value(v)
                }),
                _ => None,
            },
            (Node::Value(v), Step::Index(i)) => v.as_array().and_then(|a| a.get(*i)).map(|v| {
                at = v.span().map(|s| s.start).or(at);
                Node::Value(v)
            }),
            (Node::Table(_), Step::Index(_)) => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "953d0ab8229abd463060e52204c8cb44e32297002500258c1181e18379c54626";

    #[test]
    fn every_unknown_field_is_reported_in_file_order_with_its_line() {
        let text = format!(
            "zeta = 1\n[[api_keys]]\nname = \"k\"\nsha256 = \"{KEY}\"\nlabel = \"x\"\n\n[proxies.p]\nalpha = 2\n[[proxies.p.routes]]\nname = \"r\"\nprovider = \"o\"\nmodel = \"m\"\nmodle = \"n\"\n"
        );
        let parsed = parse(&text);
        let paths: Vec<(&str, &str)> = parsed
            .errors
            .iter()
            .map(|(p, r)| (p.as_str(), r.rsplit_once(" (line").expect("line").1))
            .collect();
        assert_eq!(
            paths,
            [
                ("zeta", " 1)"),
                ("api_keys[0].label", " 5)"),
                ("proxies.p.alpha", " 8)"),
                ("proxies.p.routes[0].modle", " 13)"),
            ]
        );
        // Unknown keys are dropped, not set aside: the rest is whole and still checked.
        assert!(parsed.set_aside.is_empty());
        let tenant = parsed.tenant.expect("repaired");
        assert_eq!(tenant.proxies["p"].routes[0].model, "m");
    }

    #[test]
    fn a_wrong_type_is_reported_once_and_what_follows_from_it_is_not() {
        // A required string of the wrong type, and an array element of the wrong type.
        let text = format!(
            "api_keys = [1, {{ name = \"k\", sha256 = \"{KEY}\" }}]\n[proxies.p]\n[[proxies.p.routes]]\nname = 5\nprovider = \"o\"\nmodel = \"m\"\n"
        );
        let parsed = parse(&text);
        assert_eq!(
            parsed.errors,
            [
                (
                    "api_keys[0]".to_owned(),
                    "invalid type: integer `1`, expected struct RawApiKey (line 1)".to_owned()
                ),
                (
                    "proxies.p.routes[0].name".to_owned(),
                    "invalid type: integer `5`, expected a string (line 4)".to_owned()
                ),
            ]
        );
        assert!(parsed.is_consequence("api_keys[0].name"));
        assert!(parsed.is_consequence("proxies.p.routes[0].name"));
        assert!(!parsed.is_consequence("api_keys[1].name"));
        assert!(!parsed.is_consequence("proxies.p.routes[0].names"));
        let tenant = parsed.tenant.expect("repaired");
        assert_eq!(tenant.api_keys.len(), 2, "indices kept for later errors");
        assert_eq!(tenant.api_keys[1].name, "k");
    }

    #[test]
    fn a_file_of_nothing_but_typos_stops_after_the_cap_and_says_so() {
        let text: String = (0..MAX_ERRORS + 5).map(|i| format!("k{i} = 1\n")).collect();
        let parsed = parse(&text);
        assert!(parsed.tenant.is_none());
        assert_eq!(parsed.errors.len(), MAX_ERRORS + 1);
        assert_eq!(
            parsed.errors[MAX_ERRORS],
            (
                "(file)".to_owned(),
                "stopped after 200 errors in this file; fix these and run again".to_owned()
            )
        );
    }

    #[test]
    fn a_syntax_error_is_one_error_with_its_line() {
        let parsed = parse("[[api_keys]]\nname = \"k\"\n[proxies.p\n");
        assert!(parsed.tenant.is_none());
        assert_eq!(parsed.errors.len(), 1);
        assert_eq!(parsed.errors[0].0, "(file)");
        assert!(
            parsed.errors[0].1.ends_with("(line 3)"),
            "{:?}",
            parsed.errors
        );
    }
}
