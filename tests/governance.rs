//! Governance end to end: exact cost in the ledger for every endpoint × stream mode on
//! OpenAI, one ledger row per request (retries included), rate limits with their exact
//! headers, Redis-shared limits across two gateways, the ledger on PostgreSQL and across a
//! restart, and one budget billed exactly once per answer by two gateways sharing Redis and
//! PostgreSQL through retries and fallbacks. The real binary against the emulator; Redis and
//! PostgreSQL are real servers on loopback (`scripts/test` installs and starts them).

mod common;

use common::http::*;
use common::redis::redis_server;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// gpt-4o-mini's built-in price, in picodollars per token: $0.15 and $0.60 per 1M.
const MINI_INPUT_PUSD: u128 = 150_000;
const MINI_OUTPUT_PUSD: u128 = 600_000;

/// A tenant with one proxy on the emulator's OpenAI, its route `mini` on gpt-4o-mini and
/// `mystery` on a model without a price; `extra` is appended (limits, keys).
fn tenant(extra: &str) -> String {
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"
{extra}

[providers.openai]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url = "http://127.0.0.1:1/v1"
base_url_env = "A_OPENAI_BASE_URL"
max_retries = 2

[proxies.chat]
[[proxies.chat.routes]]
name = "mini"
provider = "openai"
model = "gpt-4o-mini"
[[proxies.chat.routes]]
name = "mystery"
provider = "openai"
model = "mystery-model"
"#
    )
}

fn start(emulator: &Running, tenant: String, extra: &[&str]) -> Gateway {
    Gateway::start(&[("a", tenant)], &emulator_env(emulator, &[]), extra)
}

/// Tenant `a`'s provider on `emulator`, and `knobs` beside it.
fn emulator_env(emulator: &Running, knobs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("A_OPENAI_KEY", EMULATOR_KEY.to_owned()),
        ("A_OPENAI_BASE_URL", format!("{}/v1", emulator.base)),
    ];
    env.extend(knobs.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// A SQLite ledger file in a temporary folder of its own, gone with the value.
struct LedgerFile {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// What `--ledger` takes.
    url: String,
}

impl LedgerFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let url = format!("sqlite://{}", path.display());
        Self {
            _dir: dir,
            path,
            url,
        }
    }
}

/// Picodollars as the ledger prints dollars: exact, no trailing zeros.
fn usd(pico: u128) -> String {
    let whole = pico / 1_000_000_000_000;
    let frac = format!("{:012}", pico % 1_000_000_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{frac}")
    }
}

/// The ledger's rows of tenant `a` by request id, once `want` requests are in (the ledger
/// writes behind the answer), then once more after a pause to see that no more arrive.
async fn ledger_rows(gw: &Gateway, want: i64) -> Vec<Value> {
    let url = gw.url("/a/usage?group_by=request");
    let mut last = Vec::new();
    for _ in 0..100 {
        let r = get(url.clone(), KEY_A).await;
        assert_eq!(r.status, 200, "{}", r.text());
        last = r.json()["data"].as_array().cloned().unwrap_or_default();
        let n: i64 = last
            .iter()
            .map(|row| row["requests"].as_i64().unwrap_or(0))
            .sum();
        if n >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(url, KEY_A).await;
    let now = r.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        now, last,
        "rows changed after the expected count was reached"
    );
    now
}

fn row_of<'r>(rows: &'r [Value], request_id: &str) -> &'r Value {
    let matching: Vec<_> = rows.iter().filter(|r| r["group"] == request_id).collect();
    assert_eq!(matching.len(), 1, "request {request_id} in {rows:?}");
    assert_eq!(
        matching[0]["requests"], 1,
        "request {request_id} recorded once"
    );
    matching[0]
}

fn expected_cost(input: u64, output: u64) -> String {
    usd(u128::from(input) * MINI_INPUT_PUSD + u128::from(output) * MINI_OUTPUT_PUSD)
}

#[actix_web::test]
async fn recorded_cost_is_exact_for_chat_and_responses_streamed_and_not() {
    let emu = emulator();
    let gw = start(&emu, tenant(""), &[]);
    let chat_url = gw.url("/a/chat/v1/chat/completions");
    let responses_url = gw.url("/a/chat/v1/responses");
    let prompt = "Count the primes below thirty and explain the method briefly";
    let mut expected = Vec::new();

    // Chat, whole.
    let r = post(chat_url.clone(), Some(KEY_A), chat("gpt-4o-mini", prompt)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let u = &r.json()["usage"];
    let (i, o) = (
        u["prompt_tokens"].as_u64().expect("in"),
        u["completion_tokens"].as_u64().expect("out"),
    );
    assert!(i > 0 && o > 0);
    expected.push((r.header("x-request-id").to_owned(), i, o, "chat"));

    // Chat stream with include_usage: the client sees the usage chunk exactly once.
    let mut body = chat("gpt-4o-mini", prompt);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(chat_url.clone(), Some(KEY_A), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let usage_chunks: Vec<Value> = sse_data(&r.text())
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk"))
        .filter(|c| c["usage"].is_object())
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{}", r.text());
    let u = &usage_chunks[0]["usage"];
    assert_eq!(
        (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64()),
        (Some(i), Some(o))
    );
    expected.push((
        r.header("x-request-id").to_owned(),
        i,
        o,
        "chat stream, asked",
    ));

    // Chat stream without include_usage: billed all the same, and the client sees no usage.
    let mut body = chat("gpt-4o-mini", prompt);
    body["stream"] = json!(true);
    let r = post(chat_url.clone(), Some(KEY_A), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("usage"), "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    expected.push((
        r.header("x-request-id").to_owned(),
        i,
        o,
        "chat stream, not asked",
    ));

    // Responses, whole and streamed.
    let body = json!({"model": "gpt-4o-mini", "input": prompt});
    let r = post(responses_url.clone(), Some(KEY_A), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let u = &r.json()["usage"];
    let (ri, ro) = (
        u["input_tokens"].as_u64().expect("in"),
        u["output_tokens"].as_u64().expect("out"),
    );
    expected.push((r.header("x-request-id").to_owned(), ri, ro, "responses"));
    let mut sbody = body;
    sbody["stream"] = json!(true);
    let r = post(responses_url, Some(KEY_A), sbody).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let completed = sse_data(&r.text())
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("event"))
        .find(|e| e["type"] == "response.completed")
        .expect("completed");
    let u = &completed["response"]["usage"];
    let (si, so) = (
        u["input_tokens"].as_u64().expect("in"),
        u["output_tokens"].as_u64().expect("out"),
    );
    expected.push((
        r.header("x-request-id").to_owned(),
        si,
        so,
        "responses stream",
    ));

    let rows = ledger_rows(&gw, expected.len() as i64).await;
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (id, input, output, what) in &expected {
        let row = row_of(&rows, id);
        assert_eq!(row["input_tokens"], *input, "{what}: {row}");
        assert_eq!(row["output_tokens"], *output, "{what}: {row}");
        assert_eq!(
            row["cost_usd"],
            expected_cost(*input, *output),
            "{what}: {row}"
        );
        assert_eq!(row["unpriced_requests"], 0, "{what}");
    }

    // The totals, grouped by model and by key, add up to the same exact figure.
    let total: u128 = expected
        .iter()
        .map(|(_, i, o, _)| u128::from(*i) * MINI_INPUT_PUSD + u128::from(*o) * MINI_OUTPUT_PUSD)
        .sum();
    for group_by in ["model", "key"] {
        let r = get(gw.url(&format!("/a/usage?group_by={group_by}")), KEY_A).await;
        let data = r.json()["data"].clone();
        assert_eq!(data.as_array().map(Vec::len), Some(1), "{data}");
        assert_eq!(data[0]["requests"], 5);
        assert_eq!(data[0]["cost_usd"], usd(total), "{data}");
    }
    let by_model = get(gw.url("/a/usage?group_by=model"), KEY_A).await.json();
    assert_eq!(by_model["data"][0]["group"], "gpt-4o-mini");

    // Prometheus: tokens and cost per tenant, provider and model.
    let metrics = gw.metrics().await;
    let input_sum: u64 = expected.iter().map(|e| e.1).sum();
    let line = format!(
        "switchyard_usage_tokens_total{{tenant=\"a\",provider=\"openai\",model=\"gpt-4o-mini\",kind=\"input\"}} {input_sum}"
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    assert!(metrics.contains(
        "switchyard_cost_usd_total{tenant=\"a\",provider=\"openai\",model=\"gpt-4o-mini\"}"
    ));
}

#[actix_web::test]
async fn a_request_retried_after_a_429_is_one_ledger_row_and_an_unpriced_model_is_unknown_not_zero()
{
    let emu = emulator();
    let gw = start(&emu, tenant(""), &[]);
    let url = gw.url("/a/chat/v1/chat/completions");
    let r = post(
        url.clone(),
        Some(KEY_A),
        chat(
            "gpt-4o-mini",
            "retry me [emulator:status=429,retry_after=1,times=1,key=gov-retry]",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let retried = r.header("x-request-id").to_owned();
    let u = r.json()["usage"].clone();

    let r = post(
        url,
        Some(KEY_A),
        chat("mystery-model", "what does this cost"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let unpriced = r.header("x-request-id").to_owned();

    let rows = ledger_rows(&gw, 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = row_of(&rows, &retried);
    assert_eq!(
        row["cost_usd"],
        expected_cost(
            u["prompt_tokens"].as_u64().expect("in"),
            u["completion_tokens"].as_u64().expect("out")
        )
    );
    let row = row_of(&rows, &unpriced);
    assert_eq!(row["unpriced_requests"], 1, "{row}");
    assert!(
        row["input_tokens"].as_i64() > Some(0),
        "tokens are still recorded: {row}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("switchyard_unpriced_requests_total{tenant=\"a\",provider=\"openai\",model=\"mystery-model\"} 1"),
        "{metrics}"
    );
}

/// The 429 of a rate limit: status, code and the exact headers.
fn assert_limited(r: &Reply, kind: &str, limit: u64) {
    r.assert_error(429, "rate_limit_exceeded");
    assert_eq!(
        r.header(&format!("x-ratelimit-limit-{kind}")),
        limit.to_string()
    );
    assert_eq!(r.header(&format!("x-ratelimit-remaining-{kind}")), "0");
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        r.header(&format!("x-ratelimit-reset-{kind}")),
        format!("{retry}s")
    );
}

#[actix_web::test]
async fn rate_limits_refuse_after_exactly_n_requests_per_tenant_and_per_key() {
    let emu = emulator();
    // Tenant: 4 requests a minute. Key "ci": 1 of them.
    let extra = r#"requests_per_minute = 10

[[api_keys]]
name = "ci"
sha256 = "8b5cf16c431885b0d17194621b6133a52ac1bbae47f2e68691100f271f2d0ea1"
requests_per_minute = 1

[limits]
requests_per_minute = 4
"#;
    let gw = start(&emu, tenant(extra), &[]);
    let url = gw.url("/a/chat/v1/chat/completions");
    let body = chat("gpt-4o-mini", "hello");
    // The ci key (sk-acme-ci): one, then refused by its own limit.
    let r = post(url.clone(), Some("sk-acme-ci"), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(url.clone(), Some("sk-acme-ci"), body.clone()).await;
    assert_limited(&r, "requests", 1);
    assert!(
        r.error_message().contains("api key"),
        "{}",
        r.error_message()
    );
    // The demo key: three more reach the tenant's 4 (the refused one did not count).
    for n in 0..3 {
        let r = post(url.clone(), Some(KEY_A), body.clone()).await;
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
    }
    let r = post(url.clone(), Some(KEY_A), body.clone()).await;
    assert_limited(&r, "requests", 4);
    assert!(
        r.error_message().contains("tenant"),
        "{}",
        r.error_message()
    );
    // Refused requests are not billed: the ledger has exactly the four answered.
    let rows = ledger_rows(&gw, 4).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
}

#[actix_web::test]
async fn a_token_limit_refuses_once_the_window_holds_that_many_tokens() {
    let emu = emulator();
    // With the ledger off too: usage still counts against token limits.
    for extra in [&[][..], &["--ledger", "off"]] {
        let gw = start(&emu, tenant("\n[limits]\ntokens_per_minute = 5\n"), extra);
        let url = gw.url("/a/chat/v1/chat/completions");
        let r = post(url.clone(), Some(KEY_A), chat("gpt-4o-mini", "hello there")).await;
        assert_eq!(r.status, 200, "{extra:?}: {}", r.text());
        assert!(r.json()["usage"]["total_tokens"].as_u64() >= Some(5));
        let r = post(url, Some(KEY_A), chat("gpt-4o-mini", "again")).await;
        assert_limited(&r, "tokens", 5);
    }
}

#[actix_web::test]
async fn redis_limits_are_shared_by_two_gateways() {
    let Some(redis) = redis_server() else {
        eprintln!(
            "\n!!!! SKIPPED redis_limits_are_shared_by_two_gateways: no redis-server (scripts/test installs it) !!!!\n"
        );
        return;
    };
    let emu = emulator();
    let t = tenant("\n[limits]\nrequests_per_minute = 5\n");
    let one = start(&emu, t.clone(), &["--redis", &redis.url]);
    let two = start(&emu, t, &["--redis", &redis.url]);
    let body = chat("gpt-4o-mini", "hello");
    let urls = [
        one.url("/a/chat/v1/chat/completions"),
        two.url("/a/chat/v1/chat/completions"),
    ];
    for n in 0..5 {
        let r = post(urls[n % 2].clone(), Some(KEY_A), body.clone()).await;
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
    }
    // Each gateway alone has seen at most 3: only shared counters refuse the sixth.
    for url in &urls {
        let r = post(url.clone(), Some(KEY_A), body.clone()).await;
        assert_limited(&r, "requests", 5);
    }
}

/// Concurrent requests through two gateways sharing Redis: exactly the limit gets through.
#[actix_web::test]
async fn redis_limits_hold_under_concurrency() {
    let Some(redis) = redis_server() else {
        eprintln!("\n!!!! SKIPPED redis_limits_hold_under_concurrency: no redis-server !!!!\n");
        return;
    };
    let emu = emulator();
    let t = tenant("\n[limits]\nrequests_per_minute = 7\n");
    let one = start(&emu, t.clone(), &["--redis", &redis.url]);
    let two = start(&emu, t, &["--redis", &redis.url]);
    let body = chat("gpt-4o-mini", "hello");
    let futures = (0..20).map(|n| {
        let url = if n % 2 == 0 { &one } else { &two }.url("/a/chat/v1/chat/completions");
        post(url, Some(KEY_A), body.clone())
    });
    let replies = futures_util::future::join_all(futures).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!((ok, limited), (7, 13));
}

#[actix_web::test]
async fn the_sqlite_ledger_survives_a_restart_and_the_admin_api_reads_it() {
    let emu = emulator();
    let file = LedgerFile::new();
    let ledger = &file.url;
    let env = emulator_env(&emu, &[("SWITCHYARD_ADMIN_TOKEN", "adm-secret")]);
    let gw = Gateway::start(&[("a", tenant(""))], &env, &["--ledger", ledger]);
    for _ in 0..3 {
        let r = post(
            gw.url("/a/chat/v1/chat/completions"),
            Some(KEY_A),
            chat("gpt-4o-mini", "hi"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let before = ledger_rows(&gw, 3).await;
    drop(gw);
    let gw = Gateway::start(&[("a", tenant(""))], &env, &["--ledger", ledger]);
    let after = ledger_rows(&gw, 3).await;
    assert_eq!(before, after);
    // The admin API, by day; a wrong token and a tenant key are refused.
    let r = get(gw.url("/admin/tenants/a/usage?group_by=day"), "adm-secret").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json()["data"].clone();
    assert_eq!(data[0]["requests"], 3, "{data}");
    assert_eq!(data[0]["group"].as_str().map(str::len), Some(10), "{data}");
    get(gw.url("/admin/tenants/a/usage"), KEY_A)
        .await
        .assert_error(401, "invalid_api_key");
    get(gw.url("/a/usage?group_by=color"), KEY_A)
        .await
        .assert_error(400, "invalid_usage_query");
    // A tenant reads only its own usage.
    get(gw.url("/b/usage"), KEY_A)
        .await
        .assert_error(401, "invalid_api_key");
    // A range that ends before the requests holds none of them.
    let r = get(gw.url("/a/usage?to=2000-01-01"), KEY_A).await;
    assert_eq!(r.json()["data"], json!([]), "{}", r.text());
    // Only GET reads it; a query string that does not parse is the caller's error.
    let r = post(gw.url("/a/usage"), Some(KEY_A), json!({})).await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), "GET");
    get(gw.url("/a/usage?from=1&from=2"), KEY_A)
        .await
        .assert_error(400, "invalid_usage_query");
}

#[actix_web::test]
async fn the_postgres_ledger_records_each_request_once() {
    let Ok(url) = std::env::var("SWITCHYARD_TEST_POSTGRES") else {
        eprintln!(
            "\n!!!! SKIPPED the_postgres_ledger_records_each_request_once: SWITCHYARD_TEST_POSTGRES is not set (scripts/test starts PostgreSQL and sets it) !!!!\n"
        );
        return;
    };
    let emu = emulator();
    // A tenant id of its own, so earlier runs' rows in the shared database do not count.
    let id = format!("pg{}", std::process::id());
    // Every commit 300 ms late: an answer waits for its row's commit, so the row is there
    // the moment the answer is.
    let gw = Gateway::start(
        &[(id.as_str(), tenant(""))],
        &emulator_env(&emu, &[("SWITCHYARD_LEDGER_COMMIT_DELAY_MS", "300")]),
        &["--ledger", &url],
    );
    let mut ids = Vec::new();
    for stream in [false, true] {
        let mut body = chat("gpt-4o-mini", "hello postgres");
        body["stream"] = json!(stream);
        let started = std::time::Instant::now();
        let r = post(
            gw.url(&format!("/{id}/chat/v1/chat/completions")),
            Some(KEY_A),
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "the answer waited for its commit"
        );
        ids.push(r.header("x-request-id").to_owned());
    }
    let r = get(gw.url(&format!("/{id}/usage?group_by=request")), KEY_A).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for rid in &ids {
        let row = row_of(&rows, rid);
        let cost = expected_cost(
            row["input_tokens"].as_u64().expect("in"),
            row["output_tokens"].as_u64().expect("out"),
        );
        assert_eq!(row["cost_usd"], cost);
    }
}

#[actix_web::test]
async fn a_postgres_ledger_from_before_dims_is_migrated_and_its_rows_read_back() {
    let Ok(pg) = std::env::var("SWITCHYARD_TEST_POSTGRES") else {
        eprintln!(
            "\n!!!! SKIPPED a_postgres_ledger_from_before_dims_is_migrated_and_its_rows_read_back: SWITCHYARD_TEST_POSTGRES is not set (scripts/test starts PostgreSQL and sets it) !!!!\n"
        );
        return;
    };
    let schema = PgSchema::create(&pg, "oldledger").await;
    let id = format!("old{}", std::process::id());
    // The ledger's one table of 20 columns, as a gateway from before `ledger_dims` left it.
    let old = [
        format!(
            "CREATE TABLE {}.usage_ledger (
                at_ms BIGINT NOT NULL, request_id TEXT NOT NULL, tenant TEXT NOT NULL,
                proxy TEXT NOT NULL, route TEXT NOT NULL, provider TEXT NOT NULL,
                provider_type TEXT NOT NULL, model TEXT NOT NULL, api_key TEXT NOT NULL,
                topic TEXT, endpoint TEXT NOT NULL, stream BIGINT NOT NULL, input_tokens BIGINT,
                cached_input_tokens BIGINT, cache_write_tokens BIGINT, output_tokens BIGINT,
                reasoning_tokens BIGINT, cost_usd TEXT, cost_pusd BIGINT,
                estimated BIGINT NOT NULL)",
            schema.name
        ),
        format!(
            "CREATE INDEX usage_ledger_tenant_at ON {}.usage_ledger (tenant, at_ms)",
            schema.name
        ),
        format!(
            "INSERT INTO {}.usage_ledger VALUES
                (1000, 'old_1', '{id}', 'chat', 'mini', 'openai', 'openai', 'gpt-4o', 'demo',
                 'billing', '/v1/chat/completions', 1, 100, 0, 0, 10, 0, '0.00035', 350000000, 1),
                (2000, 'old_2', '{id}', 'chat', 'mini', 'openai', 'openai', 'gpt-4o-mini',
                 'demo', NULL, '/v1/chat/completions', 0, 7, 0, 0, 3, 0, NULL, NULL, 0)",
            schema.name
        ),
    ];
    for sql in old {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&schema.pool)
            .await
            .expect("the old ledger");
    }
    let emu = emulator();
    let gw = Gateway::start(
        &[(id.as_str(), tenant(""))],
        &emulator_env(&emu, &[]),
        &["--ledger", &schema.url],
    );
    let r = post(
        gw.url(&format!("/{id}/chat/v1/chat/completions")),
        Some(KEY_A),
        chat("gpt-4o-mini", "hello again"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let new = r.json()["usage"]["prompt_tokens"].as_i64().expect("usage");
    let r = get(gw.url(&format!("/{id}/usage?group_by=model")), KEY_A).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let groups: Vec<(String, i64, i64, i64)> = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|g| {
            let n = |k: &str| g[k].as_i64().expect("count");
            let group = g["group"].as_str().expect("model").to_owned();
            (
                group,
                n("requests"),
                n("input_tokens"),
                n("estimated_requests"),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("gpt-4o".into(), 1, 100, 1),
            ("gpt-4o-mini".into(), 2, 7 + new, 0)
        ]
    );
    let r = get(gw.url(&format!("/{id}/usage?group_by=topic")), KEY_A).await;
    let topics: Vec<Value> = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|g| json!([g["group"], g["requests"], g["cost_usd"]]))
        .collect();
    assert_eq!(topics.len(), 2, "{topics:?}");
    assert_eq!(topics[0], json!(["billing", 1, "0.00035"]));
    assert_eq!(topics[1][0], Value::Null);
    // `usage_ledger` (now a view) still answers an operator's SQL with the old columns.
    let rows = schema.ledger_rows(3).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let first = &rows[0];
    assert_eq!(
        (
            first.request_id.as_str(),
            first.tenant.as_str(),
            first.model.as_str(),
            first.stream,
            first.input_tokens,
            first.cost_usd.as_deref(),
            first.estimated
        ),
        (
            "old_1",
            id.as_str(),
            "gpt-4o",
            true,
            Some(100),
            Some("0.00035"),
            true
        )
    );
    assert_eq!(rows[1].request_id, "old_2");
    assert_eq!(rows[1].cost_usd, None);
    drop(gw);
    schema.drop_schema().await;
}

/// One request that may be cut by a crash: its request id and whole body when it arrived in
/// full (a stream: through its `[DONE]`), `None` when it did not.
async fn try_post(url: String, body: Value) -> Option<(String, String)> {
    let mut res = client()
        .post(url)
        .insert_header(("content-type", "application/json"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .send_body(body.to_string())
        .await
        .ok()?;
    let id = res.headers().get("x-request-id")?.to_str().ok()?.to_owned();
    let bytes = res.body().limit(1 << 20).await.ok()?;
    let text = String::from_utf8(bytes.to_vec()).ok()?;
    let whole = res.status() == 200
        && if body["stream"] == true {
            text.ends_with("data: [DONE]\n\n")
        } else {
            serde_json::from_str::<Value>(&text).is_ok_and(|v| v["usage"].is_object())
        };
    whole.then_some((id, text))
}

#[actix_web::test]
async fn after_kill_9_every_answer_received_in_full_is_in_the_ledger_once() {
    let emu = emulator();
    let file = LedgerFile::new();
    let ledger = &file.url;
    // Every commit takes 40 ms longer than it would: an answer that went out before its
    // commit would reach the client well before the kill catches the commit.
    let env = emulator_env(&emu, &[("SWITCHYARD_LEDGER_COMMIT_DELAY_MS", "40")]);
    let gw = Gateway::start(&[("a", tenant(""))], &env, &["--ledger", ledger]);
    let url = gw.url("/a/chat/v1/chat/completions");
    // 40 requests finishing 15 ms apart; the gateway is killed in the middle of them.
    let requests = (0..40u64).map(|i| {
        let mut body = chat(
            "gpt-4o-mini",
            &format!("request {i} [emulator:latency_ms={}]", 100 + i * 15),
        );
        body["stream"] = json!(i % 2 == 1);
        try_post(url.clone(), body)
    });
    let all = futures_util::future::join_all(requests);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(100 + 20 * 15)).await;
        gw.run.signal("KILL");
    };
    let (done, ()) = futures_util::future::join(all, kill).await;
    let received: Vec<String> = done.into_iter().flatten().map(|(id, _)| id).collect();
    assert!(
        (5..35).contains(&received.len()),
        "the kill should fall mid-load: {} answers arrived",
        received.len()
    );
    drop(gw);
    // Restarted on the same file, and read at once: nothing may still be on its way.
    let gw = Gateway::start(&[("a", tenant(""))], &env, &["--ledger", ledger]);
    let r = get(gw.url("/a/usage?group_by=request"), KEY_A).await;
    let rows = r.json()["data"].as_array().cloned().unwrap_or_default();
    for id in &received {
        row_of(&rows, id);
    }
    assert!(rows.iter().all(|r| r["requests"] == 1), "{rows:?}");
}

#[actix_web::test]
async fn an_answer_is_spooled_before_it_goes_out_so_kill_9_before_the_sqlite_commit_loses_nothing()
{
    let emu = emulator();
    let file = LedgerFile::new();
    let ledger = &file.url;
    // SQLite commits 300 ms late: the answers do not wait for them (their rows are in the
    // spool first), and the kill right after each answer falls before its commit.
    let env = emulator_env(&emu, &[("SWITCHYARD_LEDGER_COMMIT_DELAY_MS", "300")]);
    let rows_in_file = || rows_in_ledger_file(&file.path);
    let mut received = Vec::new();
    for stream in [false, true] {
        let gw = Gateway::start(&[("a", tenant(""))], &env, &["--ledger", ledger]);
        let mut body = chat("gpt-4o-mini", "spool me first");
        body["stream"] = json!(stream);
        let started = std::time::Instant::now();
        let (id, _) = try_post(gw.url("/a/chat/v1/chat/completions"), body)
            .await
            .expect("a whole answer");
        gw.run.signal("KILL");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "the answer did not wait for SQLite"
        );
        // Killed before its commit: the row is not in the database file, only in the spool.
        assert_eq!(rows_in_file(), received.len() as i64);
        received.push(id);
    }
    // The restart loads the spool before it serves.
    let gw = Gateway::start(&[("a", tenant(""))], &env, &["--ledger", ledger]);
    assert_eq!(rows_in_file(), 2);
    let r = get(gw.url("/a/usage?group_by=request"), KEY_A).await;
    let rows = r.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for id in &received {
        row_of(&rows, id);
    }
}

#[actix_web::test]
async fn a_graceful_stop_moves_the_spool_into_the_database_file() {
    let emu = emulator();
    let file = LedgerFile::new();
    let ledger = &file.url;
    // The spool is never loaded on the clock here: only the stop can move it.
    let env = emulator_env(&emu, &[("SWITCHYARD_LEDGER_LOAD_EVERY_MS", "600000")]);
    let mut gw = Gateway::start(&[("a", tenant(""))], &env, &["--ledger", ledger]);
    for stream in [false, true, false] {
        let mut body = chat("gpt-4o-mini", "keep me");
        body["stream"] = json!(stream);
        try_post(gw.url("/a/chat/v1/chat/completions"), body)
            .await
            .expect("a whole answer");
    }
    gw.run.signal("TERM");
    let status = gw.run.wait_exit(Duration::from_secs(10)).expect("stopped");
    assert!(status.success(), "{status:?}");
    assert_eq!(rows_in_ledger_file(&file.path), 3);
    // What stays in the spool is the one segment written (loaded; the next start deletes it),
    // not also a spare segment of zeros made ahead for writers that will not come.
    let segments = std::fs::read_dir(format!("{}-spool", file.path.display()))
        .expect("the spool")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".rows"))
        })
        .count();
    assert_eq!(segments, 1);
}

/// The rows in the SQLite ledger file at `db`, read directly (not through a gateway).
fn rows_in_ledger_file(db: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open(db).expect("open the ledger file");
    db.query_row("SELECT COUNT(*) FROM usage_ledger", [], |r| r.get(0))
        .expect("count")
}

/// The tenant's recorded spend, exact, from the usage API.
async fn spent(gw: &Gateway) -> String {
    let r = get(gw.url("/a/usage"), KEY_A).await;
    r.json()["data"][0]["cost_usd"]
        .as_str()
        .unwrap_or("0")
        .to_owned()
}

/// Picodollars of a decimal string such as "0.0000099".
fn pico(usd: &str) -> u128 {
    let (whole, frac) = usd.split_once('.').unwrap_or((usd, ""));
    let frac = format!("{frac:0<12}");
    whole.parse::<u128>().expect("whole") * 1_000_000_000_000 + frac.parse::<u128>().expect("frac")
}

#[actix_web::test]
async fn concurrent_requests_never_spend_past_a_usd_budget_and_the_rest_get_429() {
    let emu = emulator();
    // $0.00005 a day: a handful of small gpt-4o-mini answers.
    let budget = "\n[[budgets]]\nusd = \"0.00005\"\nperiod = \"day\"\n";
    let gw = start(&emu, tenant(budget), &[]);
    let url = gw.url("/a/chat/v1/chat/completions");
    let mut body = chat("gpt-4o-mini", "hello there, how are you");
    body["max_tokens"] = json!(8);
    let replies = futures_util::future::join_all(
        (0..20).map(|_| post(url.clone(), Some(KEY_A), body.clone())),
    )
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    for r in replies.iter().filter(|r| r.status != 200) {
        r.assert_error(429, "budget_exhausted");
        assert!(
            r.error_message().contains("per day"),
            "{}",
            r.error_message()
        );
    }
    assert!((1..20).contains(&ok), "{ok} answered");
    // Reservations are estimates above the actual cost: what they held back may still be
    // spent, one request at a time, until the budget refuses for good.
    let mut more = 0;
    loop {
        let r = post(url.clone(), Some(KEY_A), body.clone()).await;
        if r.status != 200 {
            r.assert_error(429, "budget_exhausted");
            break;
        }
        more += 1;
        assert!(more < 20, "the budget never ran out");
    }
    ledger_rows(&gw, (ok + more) as i64).await;
    let total = spent(&gw).await;
    assert!(pico(&total) <= pico("0.00005"), "spent {total} of $0.00005");
    // The last answer's estimate no longer fits: spent + estimate > budget.
    assert!(
        pico(&total) > pico("0.00005") / 2,
        "spent {total}: the budget was used"
    );
    post(url, Some(KEY_A), body)
        .await
        .assert_error(429, "budget_exhausted");
}

#[actix_web::test]
async fn an_exhausted_budget_diverts_to_the_fallback_route_when_the_tenant_says_so() {
    let emu = emulator();
    let t = tenant(
        "\n[[budgets]]\nusd = \"0.000001\"\nperiod = \"month\"\non_exhausted = \"fallback\"\n",
    )
    .replace(
        "[proxies.chat]\n",
        "[proxies.chat]\nfallback = \"mystery\"\n",
    );
    let gw = start(&emu, t, &[]);
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gpt-4o-mini", "hello"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-route"), "mystery");
    assert_eq!(r.header("x-switchyard-fallback"), "true");
    assert_eq!(r.header("x-switchyard-fallback-reason"), "budget_exhausted");
}

#[actix_web::test]
async fn what_a_diverted_request_spends_still_counts_against_its_budget() {
    let emu = emulator();
    let t =
        tenant("\n[[budgets]]\ntokens = 100\nperiod = \"month\"\non_exhausted = \"fallback\"\n")
            .replace("[proxies.chat]\n", "[proxies.chat]\nfallback = \"mini\"\n");
    let gw = start(&emu, t, &[]);
    let url = gw.url("/a/chat/v1/chat/completions");
    // Its estimate (input + 1,000 output tokens) passes the budget: diverted, and answered.
    let mut big = chat("gpt-4o-mini", "hello");
    big["max_tokens"] = json!(1000);
    let r = post(url.clone(), Some(KEY_A), big).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-fallback-reason"), "budget_exhausted");
    let used = r.json()["usage"]["total_tokens"].as_u64().expect("usage");
    assert!(used > 5, "{used} tokens");
    // A request estimated at 95 tokens fits only if that answer's tokens were not counted.
    let small = (0..100)
        .map(|m| {
            let mut b = chat("gpt-4o-mini", "hello");
            b["max_tokens"] = json!(m);
            b
        })
        .find(|b| {
            b.to_string().len().div_ceil(4) as u64 + b["max_tokens"].as_u64().expect("set") == 95
        })
        .expect("a body estimated at 95 tokens");
    let r = post(url, Some(KEY_A), small).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-fallback-reason"), "budget_exhausted");
}

/// Per-token prices in picodollars: (input, cached input, output).
struct Rates(u128, u128, u128);

/// The cost of a client-visible usage object (chat or Responses shape) at `rates`.
fn cost_of(u: &Value, r: &Rates) -> (u64, u64, String) {
    let input = u["prompt_tokens"]
        .as_u64()
        .or(u["input_tokens"].as_u64())
        .expect("input");
    let output = u["completion_tokens"]
        .as_u64()
        .or(u["output_tokens"].as_u64())
        .expect("output");
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .or(u["input_tokens_details"]["cached_tokens"].as_u64())
        .unwrap_or(0);
    let pico =
        u128::from(input - cached) * r.0 + u128::from(cached) * r.1 + u128::from(output) * r.2;
    (input, output, usd(pico))
}

#[actix_web::test]
async fn recorded_cost_is_exact_on_azure_gemini_and_bedrock_for_every_endpoint_and_stream_mode() {
    let emu = emulator();
    let t = format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.azure]
type = "azure_openai"
endpoint = "http://127.0.0.1:1"
base_url_env = "G_ROOT_URL"
api_version = "2025-03-01-preview"
api_key_env = "G_AZURE_KEY"

[providers.gemini]
type = "gemini"
base_url = "http://127.0.0.1:1"
base_url_env = "G_ROOT_URL"
api_key_env = "G_GEMINI_KEY"

[proxies.az]
[[proxies.az.routes]]
name = "main"
provider = "azure"
model = "gpt-4o"

[proxies.gm]
[[proxies.gm.routes]]
name = "main"
provider = "gemini"
model = "flash"
target_model = "gemini-2.5-flash"

[providers.bedrock]
type = "bedrock"
region = "us-east-1"
endpoint = "http://127.0.0.1:1"
base_url_env = "G_ROOT_URL"
access_key_id_env = "G_AWS_KEY_ID"
secret_access_key_env = "G_AWS_SECRET"

[proxies.br]
[[proxies.br.routes]]
name = "main"
provider = "bedrock"
model = "claude"
target_model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
"#
    );
    let gw = Gateway::start(
        &[("a", t)],
        &[
            ("G_ROOT_URL", emu.base.clone()),
            ("G_AZURE_KEY", "a2e0c0ffee0e0u1a70r0a2e0c0ffee00".to_owned()),
            (
                "G_GEMINI_KEY",
                switchyard::emulator::DEFAULT_GEMINI_KEY.to_owned(),
            ),
            (
                "G_AWS_KEY_ID",
                switchyard::emulator::DEFAULT_BEDROCK_ACCESS_KEY_ID.to_owned(),
            ),
            (
                "G_AWS_SECRET",
                switchyard::emulator::DEFAULT_BEDROCK_SECRET_ACCESS_KEY.to_owned(),
            ),
        ],
        &[],
    );
    let cases = [
        ("az", "gpt-4o", Rates(2_500_000, 1_250_000, 10_000_000)),
        ("gm", "flash", Rates(300_000, 30_000, 2_500_000)),
        ("br", "claude", Rates(3_000_000, 300_000, 15_000_000)),
    ];
    let mut expected = Vec::new();
    for (proxy, model, rates) in &cases {
        for (endpoint, stream) in [
            ("chat/completions", false),
            ("chat/completions", true),
            ("responses", false),
            ("responses", true),
        ] {
            let what = format!("{proxy} {endpoint} stream={stream}");
            let prompt = "Name three rivers and one fact about each";
            let mut body = if endpoint == "responses" {
                json!({"model": model, "input": prompt})
            } else {
                chat(model, prompt)
            };
            if stream {
                body["stream"] = json!(true);
                if endpoint == "chat/completions" {
                    body["stream_options"] = json!({"include_usage": true});
                }
            }
            let r = post(
                gw.url(&format!("/a/{proxy}/v1/{endpoint}")),
                Some(KEY_A),
                body,
            )
            .await;
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            let usage = usage_of(&r, stream);
            let (input, output, cost) = cost_of(&usage, rates);
            assert!(input > 0 && output > 0, "{what}: {usage}");
            expected.push((
                r.header("x-request-id").to_owned(),
                input,
                output,
                cost,
                what,
            ));
        }
    }
    let rows = ledger_rows(&gw, expected.len() as i64).await;
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (id, input, output, cost, what) in &expected {
        let row = row_of(&rows, id);
        assert_eq!(row["input_tokens"], *input, "{what}: {row}");
        assert_eq!(row["output_tokens"], *output, "{what}: {row}");
        assert_eq!(row["cost_usd"], *cost, "{what}: {row}");
    }
}

#[actix_web::test]
async fn two_gateways_sharing_redis_never_spend_past_one_budget() {
    let Some(redis) = redis_server() else {
        eprintln!(
            "\n!!!! SKIPPED two_gateways_sharing_redis_never_spend_past_one_budget: no redis-server !!!!\n"
        );
        return;
    };
    let emu = emulator();
    let t = tenant("\n[[budgets]]\nusd = \"0.00005\"\nperiod = \"day\"\n");
    let gws = [
        start(&emu, t.clone(), &["--redis", &redis.url]),
        start(&emu, t, &["--redis", &redis.url]),
    ];
    let mut body = chat("gpt-4o-mini", "hello there, how are you");
    body["max_tokens"] = json!(8);
    let wave = (0..30).map(|n| {
        post(
            gws[n % 2].url("/a/chat/v1/chat/completions"),
            Some(KEY_A),
            body.clone(),
        )
    });
    let replies = futures_util::future::join_all(wave).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    for r in replies.iter().filter(|r| r.status != 200) {
        r.assert_error(429, "budget_exhausted");
    }
    assert!((1..30).contains(&ok), "{ok} answered");
    // Then one at a time, alternating, until the shared budget refuses on both.
    let mut answered = [0i64; 2];
    for r in replies.iter().enumerate().filter(|(_, r)| r.status == 200) {
        answered[r.0 % 2] += 1;
    }
    let mut refused = [false; 2];
    for n in 0..40 {
        let i = n % 2;
        let r = post(
            gws[i].url("/a/chat/v1/chat/completions"),
            Some(KEY_A),
            body.clone(),
        )
        .await;
        if r.status == 200 {
            answered[i] += 1;
            refused[i] = false;
        } else {
            r.assert_error(429, "budget_exhausted");
            refused[i] = true;
        }
        if refused == [true, true] {
            break;
        }
    }
    assert_eq!(refused, [true, true], "the budget never ran out");
    let mut total = 0;
    for (gw, n) in gws.iter().zip(answered) {
        ledger_rows(gw, n).await;
        total += pico(&spent(gw).await);
    }
    assert!(total <= pico("0.00005"), "spent {} of $0.00005", usd(total));
    assert!(
        total > pico("0.00005") / 2,
        "spent {}: the budget was used",
        usd(total)
    );
}

#[actix_web::test]
async fn a_restarted_gateway_remembers_the_periods_spend_from_its_ledger() {
    let emu = emulator();
    let file = LedgerFile::new();
    let ledger = &file.url;
    let t = tenant("\n[[budgets]]\nusd = \"0.00003\"\nperiod = \"month\"\n");
    let mut body = chat("gpt-4o-mini", "hello there, how are you");
    body["max_tokens"] = json!(8);
    let gw = start(&emu, t.clone(), &["--ledger", ledger]);
    let url = gw.url("/a/chat/v1/chat/completions");
    let mut answered = 0;
    loop {
        let r = post(url.clone(), Some(KEY_A), body.clone()).await;
        if r.status != 200 {
            r.assert_error(429, "budget_exhausted");
            break;
        }
        answered += 1;
        assert!(answered < 20, "the budget never ran out");
    }
    assert!(answered >= 1);
    drop(gw);
    let gw = start(&emu, t, &["--ledger", ledger]);
    let r = post(gw.url("/a/chat/v1/chat/completions"), Some(KEY_A), body).await;
    r.assert_error(429, "budget_exhausted");
}

#[actix_web::test]
async fn a_stream_the_client_abandons_is_billed_at_an_estimate_flagged_as_such() {
    use futures_util::StreamExt;
    let emu = emulator();
    let gw = start(&emu, tenant(""), &[]);
    let mut body = chat(
        "gpt-4o-mini",
        "tell me a long story [emulator:chunk_ms=100,tokens=60]",
    );
    body["stream"] = json!(true);
    let text = body.to_string();
    let mut res = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("content-type", "application/json"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .send_body(text.clone())
        .await
        .expect("response");
    assert_eq!(res.status(), 200);
    // Read a few events, then go away.
    let mut seen = 0;
    while seen < 3 {
        let chunk = res.next().await.expect("a chunk").expect("bytes");
        seen += chunk.windows(6).filter(|w| w == b"data: ").count();
    }
    drop(res);
    let rows = ledger_rows(&gw, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["estimated_requests"], 1, "{row}");
    let input = (text.len() as u64).div_ceil(4);
    assert_eq!(row["input_tokens"], input, "{row}");
    let output = row["output_tokens"].as_u64().expect("output");
    assert!((1..60).contains(&output), "{row}");
    assert_eq!(row["cost_usd"], expected_cost(input, output), "{row}");
}

#[actix_web::test]
async fn a_translated_stream_that_breaks_is_billed_at_an_estimate_flagged_as_such() {
    let emu = emulator();
    let t = format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.gemini]
type = "gemini"
base_url = "http://127.0.0.1:1"
base_url_env = "G_ROOT_URL"
api_key_env = "G_GEMINI_KEY"
max_retries = 0

[proxies.gm]
[[proxies.gm.routes]]
name = "main"
provider = "gemini"
model = "gemini-2.5-flash"
"#
    );
    let gw = Gateway::start(
        &[("a", t)],
        &[
            ("G_ROOT_URL", emu.base.clone()),
            (
                "G_GEMINI_KEY",
                "AIzaSy-switchyard-emulator-gemini-key0".into(),
            ),
        ],
        &[],
    );
    // Three words, then Gemini's error event: no usage report ever comes.
    let mut body = chat("gemini-2.5-flash", "Hello [emulator:midstream_error=3]");
    body["stream"] = json!(true);
    let text = body.to_string();
    let r = post(gw.url("/a/gm/v1/chat/completions"), Some(KEY_A), body).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("upstream_stream_interrupted"),
        "{}",
        r.text()
    );
    let rows = ledger_rows(&gw, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["estimated_requests"], 1, "{row}");
    // All ASCII: four characters a token, rounded up.
    assert_eq!(
        row["input_tokens"],
        (text.len() as u64).div_ceil(4),
        "{row}"
    );
    // "Hello from the": 14 bytes generated, about 4 tokens.
    assert_eq!(row["output_tokens"], 4, "{row}");
}

/// gpt-4o's built-in price, in picodollars per token: $2.50 and $1.25 (cached) and $10 per 1M.
const GPT4O: Rates = Rates(2_500_000, 1_250_000, 10_000_000);
/// gpt-4o-mini's, the same way.
const MINI: Rates = Rates(MINI_INPUT_PUSD, 75_000, MINI_OUTPUT_PUSD);

/// A schema of its own in the PostgreSQL of `SWITCHYARD_TEST_POSTGRES` (so no earlier run's
/// rows count), with the URL that makes it a connection's `search_path`.
struct PgSchema {
    pool: sqlx::PgPool,
    name: String,
    url: String,
}

impl PgSchema {
    async fn create(base: &str, tag: &str) -> PgSchema {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(base)
            .await
            .expect("connect to SWITCHYARD_TEST_POSTGRES");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{tag}_{}_{nanos}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&pool)
            .await
            .expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        PgSchema { pool, name, url }
    }

    async fn drop_schema(self) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.name
        )))
        .execute(&self.pool)
        .await;
    }

    /// Every row of `usage_ledger` in this schema, once there are `want` (the ledger may
    /// commit a stream's row just after its last byte), then once more after a pause to see
    /// that no more arrive.
    async fn ledger_rows(&self, want: usize) -> Vec<PgRow> {
        use sqlx::Row;
        let read = || async {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT request_id, tenant, route, model, endpoint, stream, input_tokens,
                        output_tokens, cost_usd, estimated
                 FROM {}.usage_ledger ORDER BY request_id",
                self.name
            )))
            .fetch_all(&self.pool)
            .await
            .expect("read usage_ledger")
            .into_iter()
            .map(|r| PgRow {
                request_id: r.get("request_id"),
                tenant: r.get("tenant"),
                route: r.get("route"),
                model: r.get("model"),
                endpoint: r.get("endpoint"),
                stream: r.get::<i64, _>("stream") == 1,
                input_tokens: r.get("input_tokens"),
                output_tokens: r.get("output_tokens"),
                cost_usd: r.get("cost_usd"),
                estimated: r.get::<i64, _>("estimated") == 1,
            })
            .collect::<Vec<_>>()
        };
        let mut rows = Vec::new();
        for _ in 0..100 {
            rows = read().await;
            if rows.len() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = read().await;
        assert_eq!(again.len(), rows.len(), "rows arrived after {want} were in");
        again
    }
}

/// One row of `usage_ledger`, as PostgreSQL holds it.
#[derive(Debug)]
struct PgRow {
    request_id: String,
    tenant: String,
    route: String,
    model: String,
    endpoint: String,
    stream: bool,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_usd: Option<String>,
    estimated: bool,
}

/// The usage an answer showed its client: the body's, a chat stream's usage chunk, or a
/// Responses stream's `response.completed`.
fn usage_of(r: &Reply, stream: bool) -> Value {
    if !stream {
        return r.json()["usage"].clone();
    }
    sse_data(&r.text())
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("event"))
        .find_map(|e| {
            if e["usage"].is_object() {
                Some(e["usage"].clone())
            } else if e["type"] == "response.completed" {
                Some(e["response"]["usage"].clone())
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("no usage in {}", r.text()))
}

/// The value of the Prometheus counter `series` (exactly as printed, labels included), 0 when
/// it is not there yet.
fn counter_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// How a request of the two-gateway test is served.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// Route `mini`, answered at once.
    Plain,
    /// Route `mini`, after one 429 that the provider actor retries.
    Retried,
    /// Route `flaky` (its provider always answers 503), served by its fallback `big`.
    FellBack,
    /// Route `dead`, on the same provider without a fallback: the client gets the 503, and
    /// the request's hold must be released.
    Failed,
}

/// What became of a request of the two-gateway test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Answered,
    Failed,
    Refused,
}

/// One request of the two-gateway test: its path below the gateway, body, and the hold the
/// gateway must take for it (picodollars): its body at four bytes a token plus its output
/// cap, at the price of the costliest route it may end on.
fn budget_request(n: usize, via: Via, responses: bool, stream: bool) -> (String, Value, u128) {
    let (model, rates) = match via {
        Via::Plain => ("gpt-4o-mini", &MINI),
        Via::Retried => ("gpt-4o-mini", &MINI),
        Via::FellBack => ("flaky", &GPT4O),
        // As long as "gpt-4o-mini", so that a failing request's hold is a plain one's: with a
        // shorter name its hold was smaller, and a budget left between the two let the failing
        // shapes through to their 503 while every other was refused, round after round.
        Via::Failed => ("gpt-4o-dead", &MINI),
    };
    let mut prompt = format!("count to three please, request {n}");
    if via == Via::Retried {
        prompt.push_str(&format!(
            " [emulator:status=429,retry_after=0,times=1,key=twoproc-{n}]"
        ));
    }
    let (path, mut body, cap) = if responses {
        let body = json!({"model": model, "input": prompt, "max_output_tokens": 16});
        ("/a/chat/v1/responses", body, 16u128)
    } else {
        let mut body = chat(model, &prompt);
        body["max_tokens"] = json!(8);
        ("/a/chat/v1/chat/completions", body, 8u128)
    };
    if stream {
        body["stream"] = json!(true);
        if !responses {
            body["stream_options"] = json!({"include_usage": true});
        }
    }
    let input = (body.to_string().len() as u128).div_ceil(4);
    (path.to_owned(), body, input * rates.0 + cap * rates.2)
}

/// Issue 9's first bar: many concurrent requests at a tenant with a small USD budget, through
/// two gateways sharing one Redis and one PostgreSQL ledger, some retried after a 429, some
/// served by a fallback route after a 503, some failing with a 503 for good. Every answer is
/// one ledger row at its exact cost on the route that served it, failed attempts and failed
/// requests are no rows (and release their holds), and the total passes the budget by no more
/// than the holds in flight could let it.
#[actix_web::test]
async fn two_gateways_on_one_redis_and_postgres_bill_every_answer_once_within_the_budget() {
    let Some(redis) = redis_server() else {
        eprintln!(
            "\n!!!! SKIPPED two_gateways_on_one_redis_and_postgres_bill_every_answer_once_within_the_budget: no redis-server (scripts/test installs it) !!!!\n"
        );
        return;
    };
    let Ok(pg) = std::env::var("SWITCHYARD_TEST_POSTGRES") else {
        eprintln!(
            "\n!!!! SKIPPED two_gateways_on_one_redis_and_postgres_bill_every_answer_once_within_the_budget: SWITCHYARD_TEST_POSTGRES is not set (scripts/test starts PostgreSQL and sets it) !!!!\n"
        );
        return;
    };
    let schema = PgSchema::create(&pg, "twoproc").await;
    let emu = emulator();
    const BUDGET: &str = "0.002";
    let budget = pico(BUDGET);
    let t = format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[[budgets]]
usd = "{BUDGET}"
period = "day"

[providers.openai]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url = "http://127.0.0.1:1/v1"
base_url_env = "A_OPENAI_BASE_URL"
max_retries = 1
circuit_failures = 0

[providers.down]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url = "http://127.0.0.1:1/v1"
base_url_env = "DOWN_BASE_URL"
max_retries = 0
circuit_failures = 0

[proxies.chat]
[[proxies.chat.routes]]
name = "mini"
provider = "openai"
model = "gpt-4o-mini"
[[proxies.chat.routes]]
name = "flaky"
provider = "down"
model = "flaky"
target_model = "gpt-4o-mini"
fallbacks = ["big"]
fallback_on = ["5xx"]
[[proxies.chat.routes]]
name = "big"
provider = "openai"
model = "gpt-4o"
[[proxies.chat.routes]]
name = "dead"
provider = "down"
model = "gpt-4o-dead"
target_model = "gpt-4o-mini"
"#
    );
    let down = format!("{}/fault/status=503/v1", emu.base);
    let env = emulator_env(&emu, &[("DOWN_BASE_URL", &down)]);
    let args = [
        "--redis",
        redis.url.as_str(),
        "--ledger",
        schema.url.as_str(),
    ];
    let gws = [
        Gateway::start(&[("a", t.clone())], &env, &args),
        Gateway::start(&[("a", t)], &env, &args),
    ];
    let vias = [Via::Plain, Via::Retried, Via::FellBack, Via::Failed];
    // Request n: gateway n % 2, via (n / 2) % 4, Responses when n / 8 is odd, streamed when
    // n / 16 is odd: every 32 requests, every combination.
    const SHAPES: usize = 32;
    let shape = |n: usize| {
        (
            n % 2,
            vias[(n / 2) % 4],
            (n / 8) % 2 == 1,
            (n / 16) % 2 == 1,
        )
    };
    struct Answered {
        id: String,
        via: Via,
        responses: bool,
        stream: bool,
        hold: u128,
        cost: u128,
        input: u64,
        output: u64,
    }
    let mut answered: Vec<Answered> = Vec::new();
    let mut per_gateway = [[0u64; 4]; 2];
    // Checks one reply: an answer from the right route (noted), the 503 of `dead`, or the
    // budget's 429.
    let mut take = |n: usize, hold: u128, r: Reply| -> Outcome {
        let (gw, via, responses, stream) = shape(n);
        if r.status == 429 {
            r.assert_error(429, "budget_exhausted");
            return Outcome::Refused;
        }
        let (route, fallback) = match via {
            Via::Plain | Via::Retried => ("mini", "false"),
            Via::FellBack => ("big", "true"),
            Via::Failed => {
                assert_eq!(r.status, 503, "request {n}: {}", r.text());
                assert_eq!(r.header("x-switchyard-route"), "dead", "request {n}");
                per_gateway[gw][via as usize] += 1;
                return Outcome::Failed;
            }
        };
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        assert_eq!(r.header("x-switchyard-route"), route, "request {n}");
        assert_eq!(r.header("x-switchyard-fallback"), fallback, "request {n}");
        if via == Via::FellBack {
            assert_eq!(r.header("x-switchyard-fallback-reason"), "5xx");
        }
        let rates = if via == Via::FellBack { &GPT4O } else { &MINI };
        let (input, output, cost) = cost_of(&usage_of(&r, stream), rates);
        assert!(input > 0 && output > 0, "request {n}");
        per_gateway[gw][via as usize] += 1;
        answered.push(Answered {
            id: r.header("x-request-id").to_owned(),
            via,
            responses,
            stream,
            hold,
            cost: pico(&cost),
            input,
            output,
        });
        Outcome::Answered
    };

    // The wave: 64 at once, 32 through each gateway.
    const WAVE: usize = 64;
    let (requests, holds): (Vec<_>, Vec<_>) = (0..WAVE)
        .map(|n| {
            let (gw, via, responses, stream) = shape(n);
            let (path, body, hold) = budget_request(n, via, responses, stream);
            (post(gws[gw].url(&path), Some(KEY_A), body), hold)
        })
        .unzip();
    let replies = futures_util::future::join_all(requests).await;
    let outcomes: Vec<Outcome> = (replies.into_iter().zip(holds).enumerate())
        .map(|(n, (r, hold))| take(n, hold, r))
        .collect();
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    // Its holds (16 fallbacks at gpt-4o's price alone are more than the budget) do not all fit.
    assert!(
        count(Outcome::Answered) > 0 && count(Outcome::Refused) > 0,
        "the wave: {outcomes:?}"
    );
    // Then one at a time, every shape in turn, until the budget refuses a whole round (the
    // cheapest shape included).
    let mut n = WAVE;
    let mut rounds = 0;
    loop {
        let mut refused = 0;
        for _ in 0..SHAPES {
            let (gw, via, responses, stream) = shape(n);
            let (path, body, hold) = budget_request(n, via, responses, stream);
            let r = post(gws[gw].url(&path), Some(KEY_A), body).await;
            refused += usize::from(take(n, hold, r) == Outcome::Refused);
            n += 1;
        }
        if refused == SHAPES {
            break;
        }
        rounds += 1;
        assert!(rounds < 40, "the budget never ran out");
    }
    // Once every hold is released, every shape is still refused on both gateways.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut smallest = u128::MAX;
    for _ in 0..SHAPES {
        let (gw, via, responses, stream) = shape(n);
        let (path, body, hold) = budget_request(n, via, responses, stream);
        post(gws[gw].url(&path), Some(KEY_A), body)
            .await
            .assert_error(429, "budget_exhausted");
        smallest = smallest.min(hold);
        n += 1;
    }
    for via in [Via::Plain, Via::Retried, Via::FellBack] {
        assert!(
            answered.iter().any(|a| a.via == via),
            "no request was answered via {via:?}"
        );
    }
    assert!(
        per_gateway.iter().all(|g| g[Via::Failed as usize] > 0),
        "every gateway failed some requests: {per_gateway:?}"
    );

    // PostgreSQL: exactly one row per answer, none for refusals or failed attempts.
    let rows = schema.ledger_rows(answered.len()).await;
    assert_eq!(rows.len(), answered.len(), "{rows:#?}");
    for a in &answered {
        let mine: Vec<&PgRow> = rows.iter().filter(|r| r.request_id == a.id).collect();
        assert_eq!(mine.len(), 1, "request {} recorded once: {mine:?}", a.id);
        let row = mine[0];
        let (route, model) = match a.via {
            Via::Plain | Via::Retried => ("mini", "gpt-4o-mini"),
            Via::FellBack => ("big", "gpt-4o"),
            Via::Failed => unreachable!("a failed request is not answered"),
        };
        let what = format!("{:?} responses={} stream={}", a.via, a.responses, a.stream);
        assert_eq!(row.tenant, "a");
        assert_eq!(
            (row.route.as_str(), row.model.as_str()),
            (route, model),
            "{what}"
        );
        let endpoint = if a.responses {
            "responses"
        } else {
            "chat/completions"
        };
        assert_eq!(row.endpoint, endpoint, "{what}");
        assert_eq!(row.stream, a.stream, "{what}");
        assert!(!row.estimated, "{what}: {row:?}");
        assert_eq!(
            (row.input_tokens, row.output_tokens),
            (Some(a.input as i64), Some(a.output as i64)),
            "{what}"
        );
        assert_eq!(
            row.cost_usd.as_deref(),
            Some(usd(a.cost).as_str()),
            "{what}"
        );
    }

    // The budget. A request is let through only while spent + held + its own hold fits, so
    // the total can pass the budget only by what requests in flight together cost beyond
    // their holds: at most the concurrency times the largest such excess.
    let excess = answered
        .iter()
        .map(|a| a.cost.saturating_sub(a.hold))
        .max()
        .unwrap_or(0);
    let bound = budget + WAVE as u128 * excess;
    let total: u128 = answered.iter().map(|a| a.cost).sum();
    assert!(
        total <= bound,
        "spent {} of {}: past the bound {} (largest cost beyond its hold: {})",
        usd(total),
        usd(budget),
        usd(bound),
        usd(excess)
    );
    // Every hold covered its request, so the budget itself holds.
    assert_eq!(excess, 0);
    // And it was used: the last refusals came with nothing held, so even the smallest of
    // their holds no longer fitted.
    assert!(
        total + smallest > budget && total > budget / 2,
        "spent {} of {}: the budget was used",
        usd(total),
        usd(budget)
    );

    // Upstream attempts, per gateway: one 200 per answer; one 429 before each retried one;
    // one 503 from `down` before each fallback and for each failed one; nothing for refused
    // requests.
    for (gw, counts) in gws.iter().zip(per_gateway) {
        let metrics = gw.metrics().await;
        let attempts = |provider: &str, status: u16| {
            counter_value(
                &metrics,
                &format!(
                    "switchyard_upstream_attempts_total{{provider=\"{provider}\",status=\"{status}\",outcome=\"{}\"}}",
                    if status == 200 { "ok" } else { "http_error" }
                ),
            )
        };
        let [plain, retried, fell, failed] = counts;
        assert_eq!(attempts("openai", 200), plain + retried + fell, "{metrics}");
        assert_eq!(attempts("openai", 429), retried, "{metrics}");
        assert_eq!(attempts("down", 503), fell + failed, "{metrics}");
    }
    drop(gws);
    schema.drop_schema().await;
}
