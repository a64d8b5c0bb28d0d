//! Semantic routing benchmarks, in process, through the real actors.
//!
//! Run: `cargo run --release --example semantic-bench -- [--model DIR] [--iterations N]
//! [--encoder transformer|static] [--cache-dir DIR] [--no-cold-start]`
//! (`RAYON_NUM_THREADS` sets candle's threads per inference; the table says which was used).
//! `loadtests/semantic-encoders.sh` runs it once per encoder, pinned, and adds accuracy.
//!
//! 1. Decision latency (p50, p99): a `Decide` to a semantic proxy actor, as the gateway sends
//!    it (mailbox hop, request cache, embedding pool, scoring), for a 20-word and a
//!    500-character prompt, cache miss (a new text every time) and cache hit.
//! 2. Decisions per second on cache misses at concurrency 16, pool of 2 threads.
//! 3. Cold start of 50 proxies × 6 topics × 10 utterances (3,000 distinct utterances): from
//!    applying the snapshot to every index built, without and then with the disk cache.
//! 4. The process's resident memory (VmRSS, VmHWM) at the end, with this encoder loaded.

use actix::{Actor, Arbiter};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::actors::directory::DirectoryHandle;
use switchyard::actors::embedder::DiskCache;
use switchyard::actors::embedder::EmbedService;
use switchyard::actors::messages::{ApplySnapshot, Decide};
use switchyard::actors::proxy::ProxyActor;
use switchyard::actors::supervisor::Supervisor;
use switchyard::config::{
    Provider, ProviderKind, Proxy, Route, RoutingMode, RoutingText, Snapshot, Tenant, Topic,
};
use switchyard::embedding::{Encoder, EncoderKind};

const WORDS: &[&str] = &[
    "account",
    "balance",
    "transfer",
    "flight",
    "weather",
    "music",
    "recipe",
    "invoice",
    "refund",
    "password",
    "meeting",
    "holiday",
    "payment",
    "card",
    "limit",
    "score",
    "joke",
    "travel",
    "hotel",
    "booking",
    "schedule",
    "report",
    "error",
    "crash",
    "login",
    "email",
    "phone",
    "order",
    "delivery",
    "price",
    "discount",
    "contract",
    "insurance",
    "doctor",
    "tax",
    "salary",
];

/// A deterministic, distinct text of `words` words for seed `n`.
fn text(n: usize, words: usize) -> String {
    let mut x = n as u64 * 2_654_435_761 + 1;
    let mut out = Vec::with_capacity(words + 1);
    out.push(format!("case {n}:"));
    for _ in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(WORDS[(x % WORDS.len() as u64) as usize].to_owned());
    }
    out.join(" ")
}

/// About 500 characters.
fn long_text(n: usize) -> String {
    let mut t = text(n, 70);
    t.truncate(500);
    t
}

fn provider() -> Arc<Provider> {
    Arc::new(Provider::placeholder("openai", "http://127.0.0.1:1/v1"))
}

/// A semantic proxy with 6 topics (one route each) of 10 utterances, plus a fallback route.
fn proxy(i: usize) -> Proxy {
    let mut routes: Vec<Route> = (0..6)
        .map(|t| Route {
            name: format!("r{t}"),
            provider: 0,
            provider_name: "openai".into(),
            provider_kind: ProviderKind::OpenAi,
            model: format!("m{t}"),
            target_model: None,
            aliases: vec![],
            topics: vec![Topic {
                name: format!("topic{t}"),
                utterances: (0..10).map(|u| text(i * 1000 + t * 10 + u, 9)).collect(),
            }],
            fallbacks: vec![],
            fallback_on: switchyard::config::Triggers::all(),
            first_byte_timeout: None,
            deadline: None,
            span_attributes: Default::default(),
            answer_headers: Default::default(),
        })
        .collect();
    routes.push(Route {
        name: "fallback".into(),
        provider: 0,
        provider_name: "openai".into(),
        provider_kind: ProviderKind::OpenAi,
        model: "fb".into(),
        target_model: None,
        aliases: vec![],
        topics: vec![],
        fallbacks: vec![],
        fallback_on: switchyard::config::Triggers::all(),
        first_byte_timeout: None,
        deadline: None,
        span_attributes: Default::default(),
        answer_headers: Default::default(),
    });
    Proxy {
        tenant: "bench".into(),
        id: format!("p{i}"),
        routing: RoutingMode::Semantic,
        fallback: Some(6),
        routes,
        threshold: None,
        deny_topics: vec![],
        routing_text: RoutingText::LastUser,
        span_attributes: Default::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

async fn latency(addr: &actix::Addr<ProxyActor>, texts: &[String], label: &str) {
    let mut samples = Vec::with_capacity(texts.len());
    for t in texts {
        let start = Instant::now();
        let d = addr
            .send(Decide {
                model: None,
                text: Some(t.clone()),
            })
            .await
            .expect("mailbox")
            .expect("decision");
        samples.push(start.elapsed());
        std::hint::black_box(d);
    }
    samples.sort();
    println!(
        "| {label} | {} | {} | {} |",
        samples.len(),
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99))
    );
}

async fn cold_start(embedder: Arc<Encoder>, disk: Option<&std::path::Path>) -> Duration {
    let proxies: BTreeMap<String, Arc<Proxy>> = (0..50)
        .map(|i| (format!("p{i}"), Arc::new(proxy(i))))
        .collect();
    let tenant = Tenant {
        id: "bench".into(),
        keys: vec![],
        providers: vec![provider()].into(),
        proxies,
        governance: Default::default(),
    };
    let snapshot = Arc::new(Snapshot {
        tenants: BTreeMap::from([("bench".into(), Arc::new(tenant))]),
    });
    let service = EmbedService::start(embedder, 2, disk);
    let readiness = service.readiness.clone();
    let sup = Supervisor::new(DirectoryHandle::default())
        .with_embedder(service)
        .start();
    let start = Instant::now();
    sup.send(ApplySnapshot(snapshot))
        .await
        .expect("mailbox")
        .expect("applied");
    // Every actor registers its pending build in `started`; give them that first tick.
    actix_web::rt::time::sleep(Duration::from_millis(1)).await;
    while readiness.pending() > 0 {
        actix_web::rt::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

#[actix_web::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut model = switchyard::embedding::test_model_dir();
    let mut iterations = 200usize;
    let mut kind = EncoderKind::Transformer;
    let mut cache_dir = DiskCache::default_root();
    let mut cold = true;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--encoder" => {
                kind = match args.next().as_deref() {
                    Some("transformer") => EncoderKind::Transformer,
                    Some("static") => EncoderKind::Static,
                    other => panic!("--encoder transformer|static, not {other:?}"),
                }
            }
            "--cache-dir" => cache_dir = Some(PathBuf::from(args.next().expect("--cache-dir DIR"))),
            "--no-cold-start" => cold = false,
            "--model" => model = PathBuf::from(args.next().expect("--model DIR")),
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--iterations N")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let loading = Instant::now();
    let embedder = Arc::new(Encoder::load(kind, &model, cache_dir.as_deref()).expect("model"));
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!(
        "encoder {} ({}), loaded in {:.3} s; candle threads per inference (RAYON_NUM_THREADS): {threads}\n",
        kind.as_str(),
        embedder.model_key(),
        loading.elapsed().as_secs_f64()
    );

    // 1. Latency through one proxy actor, pool of 1 thread.
    let service = EmbedService::start(embedder.clone(), 1, None);
    let p = Arc::new(proxy(0));
    // On its own arbiter, as the supervisor starts proxy actors: the decision crosses threads
    // exactly as a handler's does.
    let routing = Arbiter::new();
    let svc = service.clone();
    let addr = ProxyActor::start_in_arbiter(&routing.handle(), move |_| {
        ProxyActor::with_embedder(p, vec![provider()].into(), Some(svc))
    });
    let short: Vec<String> = (0..iterations).map(|n| text(100_000 + n, 19)).collect();
    let long: Vec<String> = (0..iterations / 4)
        .map(|n| long_text(200_000 + n))
        .collect();
    // Warm up: the index, the allocator, candle's buffers.
    latency(&addr, &short[..5], "warm-up (ignored)").await;
    println!("| decision | n | p50 µs | p99 µs |\n|---|---|---|---|");
    latency(&addr, &short, "20 words, cache miss").await;
    latency(&addr, &short, "20 words, cache hit").await;
    latency(&addr, &long, "500 chars, cache miss").await;
    latency(&addr, &long, "500 chars, cache hit").await;

    // 2. Throughput on misses: 16 in flight, pool of 2.
    let pool2 = EmbedService::start(embedder.clone(), 2, None);
    let addr2 = ProxyActor::start_in_arbiter(&routing.handle(), move |_| {
        ProxyActor::with_embedder(Arc::new(proxy(0)), vec![provider()].into(), Some(pool2))
    });
    let texts: Vec<String> = (0..iterations * 2).map(|n| text(300_000 + n, 19)).collect();
    latency(&addr2, &texts[..2], "warm-up 2 (ignored)").await;
    let start = Instant::now();
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    let mut next = 2;
    use futures_util::StreamExt;
    while next < texts.len() || !inflight.is_empty() {
        while inflight.len() < 16 && next < texts.len() {
            inflight.push(addr2.send(Decide {
                model: None,
                text: Some(texts[next].clone()),
            }));
            next += 1;
        }
        if let Some(r) = inflight.next().await {
            r.expect("mailbox").expect("decision");
        }
    }
    let n = texts.len() - 2;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "\ncache misses, concurrency 16, pool of 2: {n} decisions in {secs:.2} s = {:.0} decisions/s",
        n as f64 / secs
    );

    // 3. Cold start of 50 proxies.
    let disk = tempfile::tempdir().expect("tempdir");
    if cold {
        let no_cache = cold_start(embedder.clone(), None).await;
        let fill = cold_start(embedder.clone(), Some(disk.path())).await;
        let warm = cold_start(embedder.clone(), Some(disk.path())).await;
        println!(
            "\ncold start, 50 proxies x 6 topics x 10 utterances: no disk cache {:.2} s; empty disk cache {:.2} s; warm disk cache {:.3} s",
            no_cache.as_secs_f64(),
            fill.as_secs_f64(),
            warm.as_secs_f64()
        );
    }

    // 4. Memory with this encoder loaded (and the caches the runs above filled).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "\nmemory: VmRSS {} (now), VmHWM {} (peak)",
        field("VmRSS:"),
        field("VmHWM:")
    );
}
