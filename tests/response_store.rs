//! Stored responses on the shared backend (`--response-store redis`): a Responses answer
//! that a Gemini route gave through one gateway is continued with `previous_response_id`, and
//! read with `GET /v1/responses/{id}`, through another gateway sharing the Redis; a tenant
//! cannot reach another's; entries expire after `--response-store-ttl-secs`; a Redis outage
//! is a 503 in OpenAI's error shape for what needs the store and nothing else. The real binary
//! against the emulator and a real `redis-server` on loopback.

mod common;

use common::http::*;
use common::redis::{Redis, redis_server};
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The emulator's canned answer.
const CANNED: &str = "Hello from the Switchyard emulator. This is filler text for load tests.";

/// A tenant whose key hashes to `key_sha`, with proxy `chat` on the emulator's Gemini.
fn tenant(key_sha: &str) -> String {
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{key_sha}"

[providers.gem]
type = "gemini"
api_key_env = "G_KEY"
base_url_env = "G_BASE_URL"

[proxies.chat]
[[proxies.chat.routes]]
name = "flash"
provider = "gem"
model = "gemini-2.5-flash"
"#
    )
}

/// A gateway for tenants `a` and `b` on the emulator's Gemini, with `extra` flags.
fn gateway(emu: &Running, extra: &[&str]) -> Gateway {
    Gateway::start(
        &[("a", tenant(KEY_A_SHA)), ("b", tenant(KEY_B_SHA))],
        &[
            ("G_KEY", switchyard::emulator::DEFAULT_GEMINI_KEY.to_owned()),
            ("G_BASE_URL", emu.base.clone()),
        ],
        extra,
    )
}

/// A gateway keeping responses in `redis`, for `ttl_secs` when given.
fn shared(emu: &Running, redis: &Redis, ttl_secs: Option<&str>) -> Gateway {
    let mut flags = vec!["--response-store", "redis", "--redis", redis.url.as_str()];
    if let Some(ttl) = ttl_secs {
        flags.extend(["--response-store-ttl-secs", ttl]);
    }
    gateway(emu, &flags)
}

fn redis_or_skip(test: &str) -> Option<Redis> {
    let redis = redis_server();
    if redis.is_none() {
        eprintln!("\n!!!! SKIPPED {test}: no redis-server (scripts/test installs it) !!!!\n");
    }
    redis
}

async fn create(gw: &Gateway, key: &str, body: Value) -> Reply {
    post(
        gw.url(&format!("/{}/chat/v1/responses", tenant_of(key))),
        Some(key),
        body,
    )
    .await
}

async fn retrieve(gw: &Gateway, key: &str, id: &str) -> Reply {
    let url = gw.url(&format!("/{}/chat/v1/responses/{id}", tenant_of(key)));
    get(url, key).await
}

fn tenant_of(key: &str) -> &'static str {
    if key == KEY_A { "a" } else { "b" }
}

/// The `response` of a Responses stream's `response.completed` event, the last one.
fn completed(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<Value> = sse_data(&r.text())
        .iter()
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect();
    let last = events.last().expect("events");
    assert_eq!(last["type"], "response.completed", "{}", r.text());
    last["response"].clone()
}

fn input_tokens(r: &Reply) -> u64 {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["usage"]["input_tokens"]
        .as_u64()
        .expect("input_tokens")
}

/// What Gemini counts for "Hello", the canned answer and `follow`, sent as one explicit
/// conversation (not stored): what a follow-up on a stored "Hello" must cost if the store
/// replayed the conversation exactly.
async fn replayed_tokens(gw: &Gateway, follow: &str) -> u64 {
    let r = create(
        gw,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "store": false, "input": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": CANNED},
            {"role": "user", "content": follow}]}),
    )
    .await;
    input_tokens(&r)
}

#[actix_web::test]
async fn a_response_stored_through_one_gateway_continues_through_another() {
    let Some(redis) =
        redis_or_skip("a_response_stored_through_one_gateway_continues_through_another")
    else {
        return;
    };
    let emu = emulator();
    let (one, two) = (shared(&emu, &redis, None), shared(&emu, &redis, None));
    let alone = input_tokens(
        &create(
            &one,
            KEY_A,
            json!({"model": "gemini-2.5-flash", "input": "More", "store": false}),
        )
        .await,
    );
    let replayed = replayed_tokens(&one, "More").await;
    assert_ne!(
        alone, replayed,
        "the check below must tell replay from none"
    );

    // Whole: created on one, continued and read on the other.
    let r = create(
        &one,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "input": "Hello"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    let id = first["id"].as_str().expect("id").to_owned();
    let follow = create(
        &two,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "input": "More", "previous_response_id": id}),
    )
    .await;
    assert_eq!(input_tokens(&follow), replayed, "{}", follow.text());
    assert_eq!(follow.json()["previous_response_id"], id.as_str());
    let got = retrieve(&two, KEY_A, &id).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json(), first);

    // Streamed: the follow-up is sent the moment the stream has ended.
    let r = create(
        &one,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "input": "Hello", "stream": true}),
    )
    .await;
    let streamed = completed(&r);
    let id = streamed["id"].as_str().expect("id").to_owned();
    let follow = create(
        &two,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "input": "More", "stream": true,
            "previous_response_id": id}),
    )
    .await;
    let follow = completed(&follow);
    assert_eq!(follow["usage"]["input_tokens"], replayed, "{follow}");
    let got = retrieve(&two, KEY_A, &id).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json(), streamed);

    // Another tenant on the same gateway cannot reach it, by either door.
    let r = create(
        &two,
        KEY_B,
        json!({"model": "gemini-2.5-flash", "input": "More", "previous_response_id": id}),
    )
    .await;
    let e = r.assert_error(400, "previous_response_not_found");
    assert_eq!(e["error"]["param"], "previous_response_id");
    retrieve(&two, KEY_B, &id)
        .await
        .assert_error(404, "response_not_found");
}

/// Pauses Redis's write commands (reads go on) for `ms`, as a slow shared store would be.
fn pause_writes(redis: &Redis, ms: u64) {
    let mut conn = ::redis::Client::open(redis.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis connection");
    ::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query::<()>(&mut conn)
        .expect("CLIENT PAUSE");
}

/// A complete answer goes out only once its response is stored: with the store's writes
/// slowed down, the answer (whole, or the stream's `response.completed`) waits for the write,
/// and a follow-up sent to the other gateway the moment it arrives finds it.
#[actix_web::test]
async fn an_answer_waits_for_its_stored_response_before_it_ends() {
    let Some(redis) = redis_or_skip("an_answer_waits_for_its_stored_response_before_it_ends")
    else {
        return;
    };
    let emu = emulator();
    let (one, two) = (shared(&emu, &redis, None), shared(&emu, &redis, None));
    for stream in [false, true] {
        pause_writes(&redis, 300);
        let started = std::time::Instant::now();
        let r = create(
            &one,
            KEY_A,
            json!({"model": "gemini-2.5-flash", "input": "Hello", "stream": stream}),
        )
        .await;
        let waited = started.elapsed();
        let id = if stream {
            completed(&r)["id"].as_str().expect("id").to_owned()
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["id"].as_str().expect("id").to_owned()
        };
        let follow = create(
            &two,
            KEY_A,
            json!({"model": "gemini-2.5-flash", "input": "More", "previous_response_id": id}),
        )
        .await;
        assert_eq!(follow.status, 200, "stream {stream}: {}", follow.text());
        assert!(
            waited >= Duration::from_millis(250),
            "stream {stream}: the answer ended after {waited:?}, before its write"
        );
    }
}

#[actix_web::test]
async fn a_stored_response_expires_after_its_ttl() {
    let Some(redis) = redis_or_skip("a_stored_response_expires_after_its_ttl") else {
        return;
    };
    let emu = emulator();
    let gw = shared(&emu, &redis, Some("1"));
    let r = create(
        &gw,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "input": "Hello"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(retrieve(&gw, KEY_A, &id).await.status, 200, "kept at first");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    retrieve(&gw, KEY_A, &id)
        .await
        .assert_error(404, "response_not_found");
    create(
        &gw,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "input": "More", "previous_response_id": id}),
    )
    .await
    .assert_error(400, "previous_response_not_found");
}

#[actix_web::test]
async fn a_redis_outage_is_a_503_for_what_needs_the_store_only() {
    let Some(mut redis) = redis_or_skip("a_redis_outage_is_a_503_for_what_needs_the_store_only")
    else {
        return;
    };
    let emu = emulator();
    let gw = shared(&emu, &redis, None);
    let r = create(
        &gw,
        KEY_A,
        json!({"model": "gemini-2.5-flash", "input": "Hello"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    redis.kill();

    for r in [
        create(
            &gw,
            KEY_A,
            json!({"model": "gemini-2.5-flash", "input": "More", "previous_response_id": id}),
        )
        .await,
        retrieve(&gw, KEY_A, &id).await,
    ] {
        let e = r.assert_error(503, "unavailable");
        assert_eq!(e["error"]["type"], "server_error");
        assert_eq!(
            e["error"]["message"],
            "The response store is unavailable; retry the request."
        );
    }

    // What does not read the store is served: chat, an unstored response, and a stored one
    // (its answer goes out; the write that failed is logged).
    let r = post(
        gw.url("/a/chat/v1/chat/completions"),
        Some(KEY_A),
        chat("gemini-2.5-flash", "Hello"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for store in [false, true] {
        let r = create(
            &gw,
            KEY_A,
            json!({"model": "gemini-2.5-flash", "input": "Hello", "store": store}),
        )
        .await;
        assert_eq!(r.status, 200, "store {store}: {}", r.text());
        assert_eq!(r.json()["output"][0]["content"][0]["text"], CANNED);
    }
}

#[actix_web::test]
async fn the_redis_store_needs_a_redis_url() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--response-store",
            "redis",
        ])
        .arg("--tenants")
        .arg(tempfile::tempdir().expect("tempdir").path())
        .env_remove("SWITCHYARD_REDIS")
        .env("SWITCHYARD_LEDGER", "off")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--response-store redis needs --redis URL"),
        "{stderr}"
    );
}
