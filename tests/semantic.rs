//! Semantic routing end to end: the real binary with the real embedding model, in front of the
//! emulator. Routed, fallback and denied prompts on both endpoints, the headers that explain
//! them, and readiness.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

const TENANT: &str = r#"
[[api_keys]]
name = "demo"
sha256 = "953d0ab8229abd463060e52204c8cb44e32297002500258c1181e18379c54626"

[providers.openai]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url_env = "A_OPENAI_BASE_URL"

[proxies.desk]
routing = "semantic"
fallback = "general"

[[proxies.desk.routes]]
name = "billing"
provider = "openai"
model = "gpt-4o-mini"
[[proxies.desk.routes.topics]]
name = "invoices"
utterances = ["why was I charged twice this month", "I need a copy of my last invoice", "can you explain the charges on my bill", "I want a refund for my subscription"]

[[proxies.desk.routes]]
name = "technical"
provider = "openai"
model = "gpt-4o"
[[proxies.desk.routes.topics]]
name = "troubleshooting"
utterances = ["the app crashes when I open it", "I get a 500 error when calling the API", "the sync keeps failing with a timeout", "my webhook is not receiving any events"]

[[proxies.desk.routes]]
name = "general"
provider = "openai"
model = "gpt-4.1-mini"

[[proxies.desk.deny_topics]]
name = "legal-advice"
utterances = ["can I sue my landlord for not returning my deposit", "is it legal to record a phone call without consent", "what are my rights if I get fired without notice"]
"#;

struct Reply {
    status: u16,
    headers: awc::http::header::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn post(url: String, body: Value) -> Reply {
    let mut res = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .finish()
        .post(url)
        .insert_header(("authorization", format!("Bearer {KEY_A}")))
        .send_json(&body)
        .await
        .expect("request");
    let body = res.body().await.expect("body");
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    }
}

fn gateway(emu: &Running) -> Gateway {
    Gateway::start(
        &[("a", TENANT.into())],
        &[
            ("A_OPENAI_KEY", EMULATOR_KEY.into()),
            ("A_OPENAI_BASE_URL", format!("{}/v1", emu.base)),
        ],
        &[],
    )
}

fn score(r: &Reply) -> f64 {
    r.header("x-switchyard-score")
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[actix_web::test]
async fn prompts_route_by_meaning_fall_back_or_are_denied() {
    let emu = emulator();
    let gw = gateway(&emu);
    let chat = gw.url("/a/desk/v1/chat/completions");

    // The model the client names is ignored: the topic decides.
    let r = post(
        chat.clone(),
        json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "the app crashes on start"},
            {"role": "assistant", "content": "Which version?"},
            {"role": "user", "content": "I was billed two times this month for the same plan"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-switchyard-routing"), Some("semantic"));
    assert_eq!(r.header("x-switchyard-route"), Some("billing"));
    assert_eq!(r.header("x-switchyard-topic"), Some("invoices"));
    assert_eq!(r.header("x-switchyard-fallback"), Some("false"));
    assert_eq!(r.header("x-switchyard-model"), Some("gpt-4o-mini"));
    assert_eq!(r.json()["model"], "gpt-4o-mini");
    assert!(score(&r) >= 0.36 && score(&r) <= 1.0, "{}", score(&r));

    // Responses, text parts only.
    let r = post(
        gw.url("/a/desk/v1/responses"),
        json!({"model": "x", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "every call to your API returns HTTP 500"}]}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-switchyard-route"), Some("technical"));
    assert_eq!(r.header("x-switchyard-topic"), Some("troubleshooting"));

    // Nothing close: the fallback, with the best score and no topic.
    let r = post(
        chat.clone(),
        json!({"model": "x", "messages": [{"role": "user", "content": "write a haiku about autumn leaves"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-switchyard-route"), Some("general"));
    assert_eq!(r.header("x-switchyard-fallback"), Some("true"));
    assert_eq!(r.header("x-switchyard-topic"), None);
    assert!(score(&r) < 0.36, "{}", score(&r));

    // A deny topic as the best match: 403 naming topic and score, nothing sent upstream.
    let r = post(
        chat,
        json!({"model": "x", "messages": [{"role": "user", "content": "can I take my landlord to court to get my deposit back?"}]}),
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "denied_topic");
    assert_eq!(e["type"], "invalid_request_error");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with(
            "This proxy does not serve prompts about 'legal-advice' (deny-list topic, score 0."
        ),
        "{msg}"
    );
}

#[actix_web::test]
async fn ready_only_once_the_index_is_built() {
    let emu = emulator();
    let gw = gateway(&emu);
    let client = awc::Client::default();
    // The model loads before the listener is announced; the index right after. Poll briefly.
    let mut status = 0;
    for _ in 0..100 {
        status = client
            .get(gw.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn admin_explain_gives_the_same_answer_as_the_route_command() {
    let emu = emulator();
    let gw = Gateway::start(
        &[("a", TENANT.into())],
        &[
            ("A_OPENAI_KEY", EMULATOR_KEY.into()),
            ("A_OPENAI_BASE_URL", format!("{}/v1", emu.base)),
            ("SWITCHYARD_ADMIN_TOKEN", "admin-secret".into()),
        ],
        &[],
    );
    let text = "is it legal to tape a phone call without telling the other side";
    let url = gw.url("/admin/tenants/a/proxies/desk/explain");
    let client = awc::Client::default();
    let send = |token: Option<&'static str>| {
        let mut req = client.post(url.clone());
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        req.send_json(&json!({ "text": text }))
    };
    assert_eq!(send(None).await.expect("req").status().as_u16(), 401);
    assert_eq!(send(Some(KEY_A)).await.expect("req").status().as_u16(), 401);
    let mut res = send(Some("admin-secret")).await.expect("req");
    assert_eq!(res.status().as_u16(), 200);
    let admin: Value = res.json().await.expect("json");
    assert_eq!(admin["decision"], "deny");
    assert_eq!(admin["topic"], "legal-advice");
    let topics: Vec<(&str, &str)> = admin["scores"]
        .as_array()
        .expect("scores")
        .iter()
        .map(|s| {
            (
                s["topic"].as_str().unwrap_or(""),
                s["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        topics,
        [
            ("invoices", "billing"),
            ("troubleshooting", "technical"),
            ("legal-advice", "deny")
        ]
    );

    // The CLI on the same tenant file decides identically, score for score.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.toml"), TENANT).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "route",
            "--tenant",
            "a",
            "--proxy",
            "desk",
            "--json",
            "--tenants",
        ])
        .arg(dir.path())
        .arg(text)
        .env(
            "SWITCHYARD_EMBEDDING_MODEL_DIR",
            switchyard::embedding::test_model_dir(),
        )
        .output()
        .expect("route");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).expect("route --json");
    assert_eq!(cli, admin);
}

/// The same tenant served with the static encoder (`--embedding-encoder static`): the table is
/// distilled on first use (cached under the test target directory, keyed by the model's files,
/// so later runs load it), `/readyz` turns ready only once it is loaded and the index is built,
/// and the prompts above go where they went with the transformer.
#[actix_web::test]
async fn the_static_encoder_routes_denies_and_falls_back_like_the_transformer() {
    let emu = emulator();
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("static-encoder");
    let gw = Gateway::start(
        &[("a", TENANT.into())],
        &[
            ("A_OPENAI_KEY", EMULATOR_KEY.into()),
            ("A_OPENAI_BASE_URL", format!("{}/v1", emu.base)),
            ("SWITCHYARD_CACHE_DIR", cache.display().to_string()),
        ],
        &["--embedding-encoder", "static"],
    );
    let client = awc::Client::default();
    let started = std::time::Instant::now();
    loop {
        let status = client
            .get(gw.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(900),
            "the static encoder was not ready within 15 minutes"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        cache
            .join("static")
            .read_dir()
            .expect("table cached")
            .count()
            >= 1
    );
    let threshold = f64::from(switchyard::embedding::encoder::STATIC_THRESHOLD);
    let chat = gw.url("/a/desk/v1/chat/completions");
    let ask = |text: &str| json!({"model": "x", "messages": [{"role": "user", "content": text}]});

    let r = post(
        chat.clone(),
        ask("I was billed two times this month for the same plan"),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-switchyard-routing"), Some("semantic"));
    assert_eq!(r.header("x-switchyard-route"), Some("billing"));
    assert_eq!(r.header("x-switchyard-topic"), Some("invoices"));
    assert_eq!(r.header("x-switchyard-model"), Some("gpt-4o-mini"));
    assert!(score(&r) >= threshold, "{}", score(&r));

    let r = post(chat.clone(), ask("every call to your API returns HTTP 500")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-switchyard-route"), Some("technical"));
    assert_eq!(r.header("x-switchyard-topic"), Some("troubleshooting"));

    let r = post(chat.clone(), ask("write a haiku about autumn leaves")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-switchyard-route"), Some("general"));
    assert_eq!(r.header("x-switchyard-fallback"), Some("true"));
    assert!(score(&r) < threshold, "{}", score(&r));

    let r = post(
        chat,
        ask("can I take my landlord to court to get my deposit back?"),
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.json()["error"]["code"], "denied_topic");
}
