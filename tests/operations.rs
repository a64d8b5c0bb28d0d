//! Operations end to end: hot reload (file watcher and admin API), the admin API, `/metrics`,
//! the access log, and graceful shutdown on SIGTERM, against the real binary and emulator.

mod common;

use bytes::Bytes;
use common::http::*;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN: &str = "adm-7f3c9e1b";

async fn post_chat(gw: &Gateway, body: Value) -> Reply {
    let req = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .insert_header(("content-type", "application/json"));
    send(req, Some(Bytes::from(body.to_string()))).await
}

async fn admin_get(gw: &Gateway, path: &str, token: Option<&str>) -> Reply {
    let mut req = client().get(gw.url(path));
    if let Some(t) = token {
        req = req.insert_header(("authorization", format!("Bearer {t}")));
    }
    send(req, None).await
}

/// The lines of the metrics text that start with `prefix`, sorted (series order within a
/// family is a hash map's).
fn series(text: &str, prefix: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Replaces a tenant file in one step, as an editor or a ConfigMap update does (a plain write
/// would show the watcher an empty file first).
fn replace_tenant(gw: &Gateway, id: &str, text: &str) {
    let tmp = gw.tenants_dir().join(format!(".{id}.toml.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, gw.tenants_dir().join(format!("{id}.toml"))).expect("rename");
}

/// Polls until `check` holds, for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn env_for(emu: &Running, admin: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("A_OPENAI_KEY", EMULATOR_KEY.to_owned()),
        ("A_OPENAI_BASE_URL", format!("{}/v1", emu.base)),
    ];
    if admin {
        env.push(("SWITCHYARD_ADMIN_TOKEN", ADMIN.to_owned()));
    }
    env
}

/// The streamed words of a chat stream.
fn streamed_words(text: &str) -> usize {
    sse_data(text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect::<String>()
        .split_whitespace()
        .count()
}

#[actix_web::test]
async fn a_changed_tenant_file_applies_to_the_next_request_while_streams_finish_on_theirs() {
    let emu = emulator();
    let log = tempfile::NamedTempFile::new().expect("log");
    let gw = Gateway::start_logging(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &env_for(&emu, true),
        &["--reload-debounce-ms", "100"],
        Some(log.path()),
    );
    // 20 words, 100 ms apart: about two seconds of stream.
    let mut body = chat("gpt-4o", "[emulator:tokens=20,chunk_ms=100] hi");
    body["stream"] = json!(true);
    let mut stream = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .send_body(body.to_string())
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream
            .headers()
            .get("x-switchyard-route")
            .map(|v| v.as_bytes()),
        Some(&b"big"[..])
    );
    let mut received = Vec::new();
    let first = stream.next().await.expect("a chunk").expect("bytes");
    received.extend_from_slice(&first);

    // Route `big` becomes `large`: the next request sees it, the open stream does not care.
    replace_tenant(
        &gw,
        "a",
        &tenant_a("A_OPENAI_BASE_URL").replace("name = \"big\"", "name = \"large\""),
    );
    eventually("generation 2", || async {
        admin_get(&gw, "/admin/config", Some(ADMIN)).await.json()["generation"] == 2
    })
    .await;
    let applied_at = Instant::now();
    let next = post_chat(&gw, chat("gpt-4o", "hello")).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("x-switchyard-route"), "large");

    let mut last_chunk_at = applied_at;
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.expect("bytes"));
        last_chunk_at = Instant::now();
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(streamed_words(&text), 20, "{text}");
    assert!(
        last_chunk_at > applied_at + Duration::from_millis(100),
        "the stream was still running after the reload"
    );

    // An invalid set changes nothing, and says which file and field.
    replace_tenant(
        &gw,
        "a",
        &tenant_a("A_OPENAI_BASE_URL").replacen("provider = \"openai\"", "provider = \"nope\"", 1),
    );
    eventually("the rejected reload", || async {
        series(&gw.metrics().await, "switchyard_config_reloads_total{")
            .contains(&"switchyard_config_reloads_total{result=\"invalid\"} 1".to_owned())
    })
    .await;
    let metrics = gw.metrics().await;
    assert_eq!(
        series(&metrics, "switchyard_config_reloads_total{"),
        [
            "switchyard_config_reloads_total{result=\"applied\"} 1",
            "switchyard_config_reloads_total{result=\"invalid\"} 1"
        ]
    );
    assert_eq!(
        series(&metrics, "switchyard_config_generation "),
        ["switchyard_config_generation 2"]
    );
    assert_eq!(
        series(&metrics, "switchyard_config_last_reload_success "),
        ["switchyard_config_last_reload_success 0"]
    );
    let config = admin_get(&gw, "/admin/config", Some(ADMIN)).await.json();
    assert_eq!(config["generation"], 2);
    let rejected = config["last_rejected"]["errors"]
        .as_array()
        .expect("errors")
        .clone();
    assert_eq!(rejected.len(), 1, "{config}");
    let message = rejected[0].as_str().unwrap_or("");
    assert!(
        message.contains("a.toml: proxies.chat.routes[0].provider: unknown provider"),
        "{message}"
    );
    let still = post_chat(&gw, chat("gpt-4o", "hello")).await;
    assert_eq!(still.status, 200);
    assert_eq!(
        still.header("x-switchyard-route"),
        "large",
        "the old set keeps serving"
    );

    let logged = std::fs::read_to_string(log.path()).expect("log");
    let errors: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("invalid tenant configuration"))
        .collect();
    assert_eq!(errors.len(), 1, "{logged}");
    assert!(errors[0].contains("a.toml"), "{}", errors[0]);
    assert!(
        errors[0].contains("field=proxies.chat.routes[0].provider"),
        "{}",
        errors[0]
    );
    assert_eq!(
        logged
            .lines()
            .filter(|l| l.contains("configuration reloaded"))
            .count(),
        1,
        "{logged}"
    );
}

#[actix_web::test]
async fn the_admin_api_lists_redacts_and_reloads_behind_its_token() {
    let emu = emulator();
    let gw = Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL")), ("b", tenant_b())],
        &env_for(&emu, true),
        &["--no-watch"],
    );
    assert_eq!(admin_get(&gw, "/admin/tenants", None).await.status, 401);
    assert_eq!(
        admin_get(&gw, "/admin/tenants", Some("adm-7f3c9e1c"))
            .await
            .status,
        401
    );
    assert_eq!(
        admin_get(&gw, "/admin/tenants", Some(KEY_A)).await.status,
        401
    );
    let refused = send(client().post(gw.url("/admin/reload")), None).await;
    assert_eq!(refused.status, 401);

    let tenants = admin_get(&gw, "/admin/tenants", Some(ADMIN)).await;
    assert_eq!(tenants.status, 200);
    assert_eq!(
        tenants.json(),
        json!({"object": "list", "data": [
            {"id": "a", "keys": ["demo"], "providers": ["openai"], "proxies": [
                {"id": "chat", "routing": "model", "routes": ["big", "mini"]},
                {"id": "strict", "routing": "model", "routes": ["only"]},
            ]},
            {"id": "b", "keys": ["demo"], "providers": ["openai"], "proxies": [
                {"id": "chat", "routing": "model", "routes": ["only"]},
            ]},
        ]})
    );

    let proxy = admin_get(&gw, "/admin/tenants/a/proxies/chat", Some(ADMIN)).await;
    assert_eq!(proxy.status, 200);
    assert!(!proxy.text().contains(EMULATOR_KEY), "{}", proxy.text());
    let p = proxy.json();
    assert_eq!(p["fallback"], "mini");
    assert_eq!(p["routes"][0]["target_model"], "gpt-4o-2024-08-06");
    assert_eq!(p["routes"][0]["aliases"], json!(["smart"]));
    assert_eq!(p["providers"][0]["api_key"], "*****");
    assert_eq!(p["providers"][0]["base_url"], format!("{}/v1", emu.base));
    assert_eq!(p["providers"][0]["max_retries"], 2);
    assert_eq!(
        admin_get(&gw, "/admin/tenants/a/proxies/nope", Some(ADMIN))
            .await
            .status,
        404
    );

    let reload = |token: &'static str| {
        let req = client()
            .post(gw.url("/admin/reload"))
            .insert_header(("authorization", format!("Bearer {token}")));
        send(req, None)
    };
    let ok = reload(ADMIN).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["generation"], 2);
    assert_eq!(ok.json()["proxies"], 3);

    replace_tenant(
        &gw,
        "b",
        &tenant_b().replace("model = \"gpt-4o\"", "model = \"gpt-4o\"\nmodle = 1"),
    );
    replace_tenant(
        &gw,
        "a",
        &tenant_a("A_OPENAI_BASE_URL").replacen("provider = \"openai\"", "provider = \"nope\"", 1),
    );
    let bad = reload(ADMIN).await;
    assert_eq!(bad.status, 422, "{}", bad.text());
    let body = bad.json();
    assert_eq!(body["generation"], 2);
    assert_eq!(body["error"]["code"], "invalid_configuration");
    let errors = body["errors"].as_array().expect("errors");
    let fields: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| {
            let file = e["file"].as_str().unwrap_or("");
            (
                file.rsplit('/').next().unwrap_or(""),
                e["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        fields,
        // Parse errors first, then rule violations (config::load_dir).
        [
            ("b.toml", "proxies.chat.routes[0].modle"),
            ("a.toml", "proxies.chat.routes[0].provider")
        ],
        "{body}"
    );
    // Still generation 2, still serving.
    assert_eq!(
        admin_get(&gw, "/admin/config", Some(ADMIN)).await.json()["generation"],
        2
    );
    assert_eq!(post_chat(&gw, chat("gpt-4o", "hi")).await.status, 200);

    // Without the variable, the admin API does not exist.
    let closed = Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &env_for(&emu, false),
        &["--no-watch"],
    );
    let off = admin_get(&closed, "/admin/tenants", Some(ADMIN)).await;
    assert_eq!(off.status, 404);
    assert_eq!(off.json()["error"]["code"], "admin_api_disabled");
}

#[actix_web::test]
async fn metrics_and_one_access_line_per_request() {
    let emu = emulator();
    let log = tempfile::NamedTempFile::new().expect("log");
    let gw = Gateway::start_logging(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &env_for(&emu, false),
        &["--no-watch"],
        Some(log.path()),
    );
    let secret_prompt = "the-secret-prompt-words";
    let plain = post_chat(&gw, chat("gpt-4o", secret_prompt)).await;
    assert_eq!(plain.status, 200);
    let plain_usage = plain.json()["usage"].clone();
    let mut body = chat("gpt-4o-mini", secret_prompt);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let streamed = post_chat(&gw, body).await;
    assert_eq!(streamed.status, 200);
    let data = sse_data(&streamed.text());
    let stream_usage: Value = serde_json::from_str(&data[data.len() - 2]).expect("usage chunk");
    let stream_usage = stream_usage["usage"].clone();
    // The same stream without asking for usage: the gateway asks on its behalf and hides the
    // report, which the access line, the metrics and the ledger still count.
    let mut body = chat("gpt-4o-mini", secret_prompt);
    body["stream"] = json!(true);
    let hidden = post_chat(&gw, body).await;
    assert_eq!(hidden.status, 200);
    assert!(!hidden.text().contains("\"usage\""), "{}", hidden.text());
    let denied = send(
        client()
            .post(gw.url("/a/chat/v1/chat/completions"))
            .insert_header(("authorization", "Bearer sk-wrong"))
            .insert_header(("x-request-id", "req-denied-1")),
        Some(Bytes::from(chat("gpt-4o", "hi").to_string())),
    )
    .await;
    assert_eq!(denied.status, 401);
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;

    let text = gw.metrics().await;
    let mut requests = series(&text, "switchyard_requests_total{");
    requests.sort();
    assert_eq!(
        requests,
        [
            "switchyard_requests_total{tenant=\"\",proxy=\"\",route=\"\",endpoint=\"chat_completions\",status=\"401\",error=\"client\"} 1",
            "switchyard_requests_total{tenant=\"a\",proxy=\"chat\",route=\"big\",endpoint=\"chat_completions\",status=\"200\",error=\"none\"} 1",
            "switchyard_requests_total{tenant=\"a\",proxy=\"chat\",route=\"mini\",endpoint=\"chat_completions\",status=\"200\",error=\"none\"} 2",
        ]
    );
    let n = |v: &Value| v.as_u64().expect("token count");
    let mut tokens = series(&text, "switchyard_tokens_total{");
    tokens.sort();
    assert_eq!(
        tokens,
        [
            format!(
                "switchyard_tokens_total{{tenant=\"a\",proxy=\"chat\",route=\"big\",kind=\"input\"}} {}",
                n(&plain_usage["prompt_tokens"])
            ),
            format!(
                "switchyard_tokens_total{{tenant=\"a\",proxy=\"chat\",route=\"big\",kind=\"output\"}} {}",
                n(&plain_usage["completion_tokens"])
            ),
            format!(
                "switchyard_tokens_total{{tenant=\"a\",proxy=\"chat\",route=\"mini\",kind=\"input\"}} {}",
                2 * n(&stream_usage["prompt_tokens"])
            ),
            format!(
                "switchyard_tokens_total{{tenant=\"a\",proxy=\"chat\",route=\"mini\",kind=\"output\"}} {}",
                2 * n(&stream_usage["completion_tokens"])
            ),
        ]
    );
    assert_eq!(
        series(&text, "switchyard_time_to_first_token_seconds_count{"),
        [
            "switchyard_time_to_first_token_seconds_count{tenant=\"a\",proxy=\"chat\",route=\"mini\"} 2"
        ]
    );
    let mut overhead = series(&text, "switchyard_gateway_overhead_seconds_count{");
    overhead.sort();
    assert_eq!(
        overhead,
        [
            "switchyard_gateway_overhead_seconds_count{tenant=\"a\",proxy=\"chat\",route=\"big\"} 1",
            "switchyard_gateway_overhead_seconds_count{tenant=\"a\",proxy=\"chat\",route=\"mini\"} 2",
        ]
    );
    assert_eq!(
        series(&text, "switchyard_upstream_attempts_total{"),
        ["switchyard_upstream_attempts_total{provider=\"openai\",status=\"200\",outcome=\"ok\"} 3"]
    );
    // This scrape is the one request in flight.
    assert_eq!(
        series(&text, "switchyard_requests_in_flight "),
        ["switchyard_requests_in_flight 1"]
    );
    assert_eq!(
        series(&text, "switchyard_config_generation "),
        ["switchyard_config_generation 1"]
    );
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;

    let logged = std::fs::read_to_string(log.path()).expect("log");
    let access: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("switchyard::access"))
        .collect();
    // The four requests and the scrape.
    assert_eq!(access.len(), 5, "{logged}");
    assert!(
        access[4].contains("endpoint=\"metrics\"") && access[4].contains("status=200"),
        "{}",
        access[4]
    );
    assert!(!logged.contains(secret_prompt), "a prompt reached the log");
    assert!(
        !logged.contains(KEY_A) && !logged.contains(EMULATOR_KEY),
        "a key reached the log"
    );
    let plain_line = access[0];
    for field in [
        format!("request_id={}", plain.header("x-request-id")),
        format!("trace_id={}", &plain.header("traceparent")[3..35]),
        "tenant=a".into(),
        "proxy=chat".into(),
        "route=big".into(),
        "status=200".into(),
        format!("input_tokens={}", n(&plain_usage["prompt_tokens"])),
        format!("output_tokens={}", n(&plain_usage["completion_tokens"])),
        "complete=true".into(),
    ] {
        assert!(plain_line.contains(&field), "{field} missing: {plain_line}");
    }
    // Both streams' lines carry the provider's report, hidden from the second client or not.
    for line in &access[1..3] {
        for field in [
            "route=mini".to_owned(),
            "ttft_ms=".into(),
            format!("input_tokens={}", n(&stream_usage["prompt_tokens"])),
            format!("output_tokens={}", n(&stream_usage["completion_tokens"])),
        ] {
            assert!(line.contains(&field), "{field} missing: {line}");
        }
    }
    assert!(
        access[3].contains("request_id=req-denied-1") && access[3].contains("status=401"),
        "{}",
        access[3]
    );
}

#[actix_web::test]
async fn sigterm_drains_streams_refuses_new_connections_and_exits_zero() {
    let emu = emulator();
    let mut gw = Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &env_for(&emu, false),
        &["--drain-delay-ms", "600", "--shutdown-timeout-secs", "10"],
    );
    let addr = gw.run.base.trim_start_matches("http://").to_owned();
    // 20 words, 100 ms apart: about two seconds.
    let mut body = chat("gpt-4o", "[emulator:tokens=20,chunk_ms=100] hi");
    body["stream"] = json!(true);
    let mut stream = client()
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .send_body(body.to_string())
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let mut received = stream.next().await.expect("chunk").expect("bytes").to_vec();

    gw.run.signal("TERM");
    let signalled = Instant::now();
    // At once: as soon as the process has taken the signal (a few milliseconds).
    let mut ready = send(client().get(gw.url("/readyz")), None).await;
    while ready.status == 200 && signalled.elapsed() < Duration::from_millis(300) {
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        ready = send(client().get(gw.url("/readyz")), None).await;
    }
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json(), json!({"status": "draining"}));
    assert!(signalled.elapsed() < Duration::from_millis(300));

    // After the drain delay the listener is closed.
    actix_web::rt::time::sleep(Duration::from_millis(900)).await;
    let refused = std::net::TcpStream::connect(&addr);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    let refused_at = Instant::now();

    // The stream started before the signal still ends whole.
    let mut last_chunk_at = refused_at;
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.expect("bytes"));
        last_chunk_at = Instant::now();
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(streamed_words(&text), 20, "{text}");
    assert!(
        last_chunk_at > refused_at,
        "the stream outlived the listener"
    );

    let status = gw.run.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[actix_web::test]
async fn a_client_that_leaves_before_the_answer_is_logged_and_counted_as_499() {
    let emu = emulator();
    let log = tempfile::NamedTempFile::new().expect("log");
    let gw = Gateway::start_logging(
        &[("a", tenant_a("A_OPENAI_BASE_URL"))],
        &env_for(&emu, false),
        &["--no-watch"],
        Some(log.path()),
    );
    let impatient = awc::Client::builder()
        .timeout(Duration::from_millis(300))
        .finish();
    let gone = impatient
        .post(gw.url("/a/chat/v1/chat/completions"))
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .insert_header(("x-request-id", "req-impatient-1"))
        .send_body(chat("gpt-4o", "[emulator:latency_ms=1500] hi").to_string())
        .await;
    assert!(gone.is_err(), "the client gave up");
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let text = gw.metrics().await;
    assert_eq!(
        series(&text, "switchyard_requests_total{"),
        [
            "switchyard_requests_total{tenant=\"\",proxy=\"\",route=\"\",endpoint=\"chat_completions\",status=\"499\",error=\"client\"} 1"
        ]
    );
    assert_eq!(
        series(&text, "switchyard_requests_in_flight "),
        ["switchyard_requests_in_flight 1"]
    );
    let logged = std::fs::read_to_string(log.path()).expect("log");
    let access: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("switchyard::access") && l.contains("req-impatient-1"))
        .collect();
    assert_eq!(access.len(), 1, "{logged}");
    assert!(
        access[0].contains("status=499") && access[0].contains("complete=false"),
        "{}",
        access[0]
    );
}
