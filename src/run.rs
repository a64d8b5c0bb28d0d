//! What each CLI verb does, from parsed arguments to exit code.
//!
//! `serve` is the one place the gateway is assembled: validate the tenant files, resolve
//! secrets, bind, start the supervisor and apply the snapshot, start the reloader and the file
//! watcher, then serve until SIGTERM or SIGINT: `/readyz` turns 503 at once, after the drain
//! delay the listener closes, in-flight requests and streams get up to the shutdown timeout,
//! and the process exits 0. A second signal stops at once.

use crate::actors::directory::DirectoryHandle;
use crate::actors::embedder::{DiskCache, EmbedService, Readiness};
use crate::actors::messages::ApplySnapshot;
use crate::actors::supervisor::Supervisor;
use crate::api::response_store;
use crate::cli::{EmbeddingArgs, EmulateArgs, EvalArgs, RouteArgs, ServeArgs};
use crate::config::RoutingMode;
use crate::config::watcher::Reloader;
use crate::config::{self, ConfigError, Credentials, Overrides, ProviderKind, Secret};
use crate::embedding::{Encoder, EncoderKind, ModelSource};
use crate::emulator::{self, EmulatorConfig};
use crate::http::admin::AdminToken;
use crate::http::{self, AppState};
use crate::routing::semantic::scoring::{Aggregation, Scoring};
use crate::routing::semantic::{self, eval};
use actix::Actor;
use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn report(errors: &[ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!(
        "{} configuration error{}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}

fn no_tenants(dir: &Path) -> String {
    format!(
        "no tenant files found in {} (expected one <tenant>.toml per tenant)",
        dir.display()
    )
}

/// `switchyard validate DIR`
pub fn validate(dir: &Path) -> ExitCode {
    match config::load_dir(dir) {
        // Nothing was checked, so "ok" would be a lie; most often the path is wrong.
        Ok(specs) if specs.is_empty() => {
            eprintln!("error: {}", no_tenants(dir));
            ExitCode::FAILURE
        }
        Ok(specs) => {
            let proxies: usize = specs.iter().map(|t| t.proxies.len()).sum();
            println!(
                "ok: {} tenants, {proxies} proxies in {}",
                specs.len(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(&errors);
            ExitCode::FAILURE
        }
    }
}

fn bind(addr: &str, what: &str) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).map_err(|err| {
        eprintln!("error: cannot listen on {addr} for the {what}: {err}");
        ExitCode::FAILURE
    })
}

fn local_addr(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `switchyard serve`
pub fn serve(args: ServeArgs) -> ExitCode {
    let specs = match config::load_dir(&args.tenants) {
        Ok(specs) => specs,
        Err(errors) => {
            report(&errors);
            return ExitCode::from(2);
        }
    };
    // Zero tenants is almost always a wrong path or an unmounted volume, but not always: a
    // deployment may start empty and add tenants later, as peers such as Kong or Envoy allow.
    // So it starts, and says loudly that every request will be refused.
    if specs.is_empty() {
        tracing::warn!(
            "{}: the gateway starts but serves nothing: every request is refused with 401 until tenants are loaded",
            no_tenants(&args.tenants)
        );
    }
    let listener = match bind(&args.listen, "gateway") {
        Ok(l) => l,
        Err(code) => return code,
    };
    let emulator_listener = match args
        .emulator
        .as_deref()
        .map(|a| bind(a, "emulator"))
        .transpose()
    {
        Ok(l) => l,
        Err(code) => return code,
    };
    let shutdown_timeout = std::time::Duration::from_secs(args.shutdown_timeout_secs);
    let drain_delay = std::time::Duration::from_millis(args.drain_delay_ms);
    let overrides = Overrides {
        providers: emulator_listener
            .as_ref()
            .map(|l| {
                tracing::warn!(
                    "--emulator: every provider is served by the bundled emulator (demo and test mode)"
                );
                emulator_providers(&format!("http://{}", local_addr(l)))
            })
            .unwrap_or_default(),
    };
    let reload_overrides = overrides.clone();
    let snapshot = match config::snapshot::build(specs, &|var| std::env::var(var).ok(), &overrides)
    {
        Ok(s) => Arc::new(s),
        Err(errors) => {
            report(&errors);
            return ExitCode::from(2);
        }
    };
    let (tenant_count, proxy_count) = (snapshot.tenants.len(), snapshot.proxy_count());

    // A gateway without semantic proxies needs no weights at all. Missing weights stop serve
    // here, before the listener opens. The transformer loads before the listener answers; the
    // static encoder loads (or is distilled, the first time) on its own thread while the
    // gateway answers, and /readyz stays 503 until it is ready.
    let semantic = snapshot
        .tenants
        .values()
        .flat_map(|t| t.proxies.values())
        .any(|p| p.routing == RoutingMode::Semantic);
    let disk_root = if args.no_embedding_cache {
        None
    } else {
        args.embedding_cache_dir
            .clone()
            .or_else(DiskCache::default_root)
    };
    let kind = args.embedding.embedding_encoder;
    let embedder = if semantic {
        let dir = match locate_model(&args.embedding) {
            Ok(d) => d,
            Err(code) => return code,
        };
        match kind {
            EncoderKind::Transformer => match Encoder::load(kind, &dir, None) {
                Ok(e) => Some(EncoderSource::Loaded(Arc::new(e))),
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            },
            EncoderKind::Static => Some(EncoderSource::Background(dir)),
        }
    } else {
        None
    };

    let result = actix_web::rt::System::new().block_on(async move {
        if let Some(l) = emulator_listener {
            let addr = local_addr(&l);
            let config = EmulatorConfig {
                workers: 1,
                // Tenants keep their own Bedrock regions: the emulator stands in for them all.
                bedrock_region: emulator::ANY_BEDROCK_REGION.to_owned(),
                ..EmulatorConfig::default()
            };
            actix_web::rt::spawn(emulator::server(config, l)?);
            println!("emulator listening on http://{addr}");
        }
        let directory = DirectoryHandle::default();
        let mut supervisor = Supervisor::new(directory.clone());
        let mut indexes = Readiness::default();
        if let Some(embedder) = embedder {
            let threads = args.embedding_threads;
            let service = match embedder {
                EncoderSource::Loaded(e) => EmbedService::start(e, threads, disk_root.as_deref()),
                EncoderSource::Background(dir) => {
                    let root = disk_root.clone();
                    EmbedService::start_loading(
                        kind,
                        move || Encoder::load(kind, &dir, root.as_deref()),
                        threads,
                        disk_root.as_deref(),
                    )
                }
            };
            indexes = service.readiness.clone();
            supervisor = supervisor.with_embedder(service);
        }
        let supervisor = supervisor.start();
        let applied = supervisor.send(ApplySnapshot(snapshot)).await;
        match applied {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => return Err(std::io::Error::other(reason)),
            Err(err) => {
                return Err(std::io::Error::other(format!(
                    "supervisor unavailable: {err}"
                )));
            }
        }
        let reloader = Arc::new(Reloader::new(
            args.tenants.clone(),
            reload_overrides,
            supervisor.clone(),
            tenant_count,
            proxy_count,
        ));
        // Kept until the server stops: dropping it ends the watch.
        let _watcher = if args.no_watch {
            None
        } else {
            let debounce = std::time::Duration::from_millis(args.reload_debounce_ms);
            match config::watcher::watch(reloader.clone(), &args.tenants, debounce) {
                Ok(w) => Some(w),
                Err(err) => {
                    tracing::warn!(%err, "tenant files are not watched; reload with POST /admin/reload");
                    None
                }
            }
        };
        let governance = start_governance(&args.ledger, args.redis.as_deref())
            .await
            .map_err(std::io::Error::other)?;
        let responses = response_store::open(
            args.response_store,
            args.redis.as_deref(),
            args.response_store_mib.saturating_mul(1 << 20),
            std::time::Duration::from_secs(args.response_store_ttl_secs),
        )
        .await
        .map_err(std::io::Error::other)?;
        let ready = Arc::new(AtomicBool::new(true));
        let draining = Arc::new(AtomicBool::new(false));
        let state = AppState {
            directory,
            supervisor,
            body_limits: http::body::BodyLimits {
                max_bytes: args.max_body_bytes,
                idle: std::time::Duration::from_secs(args.body_timeout_secs.max(1)),
            },
            max_connections_per_client: args.max_connections_per_client,
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ready: ready.clone(),
            draining: draining.clone(),
            reloader: Some(reloader),
            admin_token: AdminToken::from_env(),
            indexes,
            governance: governance.clone(),
            responses,
        };
        let addr = local_addr(&listener);
        let server = http::server(state, listener, args.workers, shutdown_timeout)?;
        actix_web::rt::spawn(stop_on_signal(server.handle(), draining, drain_delay));
        println!("switchyard listening on http://{addr}");
        let outcome = server.await;
        ready.store(false, Ordering::Release);
        // What the last answers spooled goes into the database file before the process ends.
        if let Some(ledger) = &governance.ledger {
            let _ = ledger.send(crate::governance::ledger::Flush).await;
        }
        tracing::info!("stopped");
        outcome
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The ledger (on its own arbiter) and the rate limiter, from `--ledger` and `--redis`.
async fn start_governance(
    ledger: &str,
    redis: Option<&str>,
) -> Result<crate::governance::Governance, String> {
    use crate::governance::{Governance, ledger::Ledger, limits::Limiter};
    let (ledger, spool) = match Ledger::start(ledger.parse()?).await? {
        Some(started) => (Some(started.addr), started.spool),
        None => (None, None),
    };
    let (limiter, budgets) = match redis {
        Some(url) => (
            Limiter::redis(url).await?,
            crate::governance::budgets::Budgets::redis(url).await?,
        ),
        None => (Limiter::local(), Default::default()),
    };
    Ok(Governance {
        limiter,
        ledger,
        spool,
        budgets,
    })
}

/// Waits for SIGTERM or SIGINT, then drains: `/readyz` 503 at once, the listener closed after
/// `drain_delay`, in-flight requests finishing within the server's shutdown timeout. A second
/// signal stops at once.
async fn stop_on_signal(
    server: actix_server::ServerHandle,
    draining: Arc<AtomicBool>,
    drain_delay: std::time::Duration,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(%err, "cannot handle SIGTERM/SIGINT; stop the process with SIGKILL");
            return;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    draining.store(true, Ordering::Release);
    crate::telemetry::metrics::metrics().draining();
    tracing::info!(
        signal = name,
        drain_delay_ms = drain_delay.as_millis() as u64,
        "shutting down: /readyz answers 503; in-flight requests finish"
    );
    let graceful = async {
        actix_web::rt::time::sleep(drain_delay).await;
        tracing::info!("listener closed; waiting for in-flight requests");
        server.stop(true).await;
    };
    tokio::select! {
        () = graceful => {}
        _ = term.recv() => { tracing::warn!("second signal: stopping now"); server.stop(false).await; }
        _ = int.recv() => { tracing::warn!("second signal: stopping now"); server.stop(false).await; }
    }
}

/// `switchyard emulate`
pub fn emulate(args: EmulateArgs) -> ExitCode {
    let listener = match bind(&args.listen, "emulator") {
        Ok(l) => l,
        Err(code) => return code,
    };
    let addr = local_addr(&listener);
    let config = EmulatorConfig {
        openai_api_key: args.openai_key,
        azure_api_key: args.azure_key,
        gemini_api_key: args.gemini_key,
        bedrock_region: args.bedrock_region,
        workers: args.workers,
        ..EmulatorConfig::default()
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let server = emulator::server(config, listener)?;
        println!("emulator listening on http://{addr}");
        server.await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// How `serve` gets its encoder: loaded already, or loaded in the background from this model
/// directory (the static encoder, which may need distilling first).
enum EncoderSource {
    Loaded(Arc<Encoder>),
    Background(std::path::PathBuf),
}

fn locate_model(args: &EmbeddingArgs) -> Result<std::path::PathBuf, ExitCode> {
    let source =
        ModelSource::from_flag_or_env(args.embedding_model_dir.clone(), &args.embedding_model);
    crate::embedding::locate(&source).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

/// The encoder `route`, `eval-routing` and `calibrate` use (the static one from its cached
/// table, distilled first when there is none).
fn load_embedder(args: &EmbeddingArgs) -> Result<Encoder, ExitCode> {
    let dir = locate_model(args)?;
    let root = args
        .static_cache_dir
        .clone()
        .or_else(DiskCache::default_root);
    Encoder::load(args.embedding_encoder, &dir, root.as_deref()).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

/// `switchyard route`
pub fn route(args: RouteArgs) -> ExitCode {
    let specs = match config::load_dir(&args.tenants) {
        Ok(specs) => specs,
        Err(errors) => {
            report(&errors);
            return ExitCode::from(2);
        }
    };
    let Some(proxy) = specs
        .iter()
        .find(|t| t.id == args.tenant)
        .and_then(|t| t.proxies.iter().find(|p| p.id == args.proxy))
    else {
        eprintln!(
            "error: no proxy {:?} in tenant {:?} under {}",
            args.proxy,
            args.tenant,
            args.tenants.display()
        );
        return ExitCode::from(2);
    };
    if proxy.routing != RoutingMode::Semantic {
        eprintln!(
            "error: proxy {}/{} routes by model; there are no topic scores to explain",
            args.tenant, args.proxy
        );
        return ExitCode::from(2);
    }
    let embedder = match load_embedder(&args.embedding) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let explained = (|| -> Result<serde_json::Value, String> {
        let texts: Vec<&str> = semantic::scoring::topics_of(proxy)
            .iter()
            .flat_map(|(t, _)| t.utterances.iter().map(String::as_str))
            .collect();
        let vectors = embedder.embed(&texts).map_err(|e| e.to_string())?;
        let index = semantic::SemanticIndex::build(proxy, vectors)?;
        let query = embedder
            .embed(&[args.text.as_str()])
            .map_err(|e| e.to_string())?;
        let verdict = semantic::scoring::decide(
            &index,
            &query[0],
            semantic::scoring_of(proxy, embedder.kind()),
        );
        Ok(semantic::explain(proxy, &index, &verdict, &args.text))
    })();
    match explained {
        Ok(v) if args.json => {
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print!("{}", semantic::explain_text(&v));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `switchyard eval-routing` and, with `calibrate`, `switchyard calibrate`.
pub fn eval_routing(args: EvalArgs, calibrate: bool) -> ExitCode {
    let Some(aggregation) = Aggregation::parse(&args.aggregation) else {
        eprintln!(
            "error: unknown aggregation {:?} (expected centroid, max or mean)",
            args.aggregation
        );
        return ExitCode::from(2);
    };
    let file = match eval::load(&args.file) {
        Ok(f) => f,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let embedder = match load_embedder(&args.embedding) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let prepared = match eval::prepare(&file, |texts| {
        embedder.embed(texts).map_err(|e| e.to_string())
    }) {
        Ok(p) => p,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let kind = embedder.kind();
    let margin = args.margin.unwrap_or(kind.default_margin());
    let rule = |threshold| Scoring {
        aggregation,
        threshold,
        margin,
    };
    if calibrate {
        let (best, table) = eval::calibrate(&prepared, aggregation, margin);
        let cv = eval::cross_validate(&prepared, aggregation, margin);
        let (per_suite, pooled) = eval::run(&prepared, rule(best));
        if args.json {
            let table: Vec<_> = table
                .iter()
                .map(|(th, t)| serde_json::json!({"threshold": th, "pooled": t.json()}))
                .collect();
            let cv: Vec<_> = cv
                .iter()
                .map(|(name, th, t)| serde_json::json!({"held_out": name, "threshold": th, "result": t.json()}))
                .collect();
            let suites: Vec<_> = per_suite
                .iter()
                .map(|(n, t)| serde_json::json!({"suite": n, "result": t.json()}))
                .collect();
            println!(
                "{:#}",
                serde_json::json!({
                    "aggregation": aggregation.as_str(), "margin": margin, "best_threshold": best,
                    "pooled": pooled.json(), "suites": suites, "table": table, "leave_one_suite_out": cv,
                })
            );
        } else {
            println!(
                "aggregation {}, margin {margin}: pooled accuracy by threshold",
                aggregation.as_str()
            );
            println!("{}", eval_header("threshold"));
            for (th, t) in &table {
                let mark = if (*th - best).abs() < 1e-6 {
                    "  <- best"
                } else {
                    ""
                };
                println!("{}{mark}", eval_row(&format!("{th:.2}"), t));
            }
            println!("\nbest threshold {best:.2}, per suite:");
            println!("{}", eval_header("suite"));
            for (n, t) in &per_suite {
                println!("{}", eval_row(n, t));
            }
            println!("{}", eval_row("pooled", &pooled));
            println!("\nleave one suite out (threshold chosen on the other suites):");
            println!("{}", eval_header("held-out suite"));
            let mut held = eval::Tally::default();
            for (n, th, t) in &cv {
                println!("{}  (threshold {th:.2})", eval_row(n, t));
                held.add(t);
            }
            println!("{}", eval_row("pooled", &held));
        }
        return ExitCode::SUCCESS;
    }
    let threshold = args.threshold.unwrap_or(kind.default_threshold());
    let (per_suite, pooled) = eval::run(&prepared, rule(threshold));
    if args.json {
        let suites: Vec<_> = per_suite
            .iter()
            .map(|(n, t)| serde_json::json!({"suite": n, "result": t.json()}))
            .collect();
        println!(
            "{:#}",
            serde_json::json!({
                "aggregation": aggregation.as_str(), "threshold": threshold, "margin": margin,
                "suites": suites, "pooled": pooled.json(),
            })
        );
    } else {
        println!(
            "aggregation {}, threshold {threshold}, margin {margin}",
            aggregation.as_str()
        );
        println!("{}", eval_header("suite"));
        for (n, t) in &per_suite {
            println!("{}", eval_row(n, t));
        }
        println!("{}", eval_row("pooled", &pooled));
    }
    ExitCode::SUCCESS
}

fn eval_header(first: &str) -> String {
    format!(
        "{first:<22} {:>6} {:>9} {:>9} {:>7} {:>8}",
        "cases", "accuracy", "in-topic", "deny", "default"
    )
}

fn eval_row(name: &str, t: &eval::Tally) -> String {
    let pct = |(c, n): (usize, usize)| {
        if n == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", c as f64 * 100.0 / n as f64)
        }
    };
    format!(
        "{name:<22} {:>6} {:>9} {:>9} {:>7} {:>8}",
        t.total(),
        pct((t.correct(), t.total())),
        pct(t.topic),
        pct(t.deny),
        pct(t.default)
    )
}

/// What `--emulator` puts in place of every provider of each kind: the emulator's root (or,
/// for OpenAI, its `/v1` base URL) and the credentials it accepts for that kind.
fn emulator_providers(root: &str) -> Vec<(ProviderKind, String, Credentials)> {
    let key = |k: &str| Credentials::ApiKey(Secret::new(k.to_owned()));
    vec![
        (
            ProviderKind::OpenAi,
            format!("{root}/v1"),
            key(emulator::DEFAULT_OPENAI_KEY),
        ),
        (
            ProviderKind::AzureOpenAi,
            root.to_owned(),
            key(emulator::DEFAULT_AZURE_KEY),
        ),
        (
            ProviderKind::Gemini,
            root.to_owned(),
            key(emulator::DEFAULT_GEMINI_KEY),
        ),
        (
            ProviderKind::Bedrock,
            root.to_owned(),
            Credentials::Aws {
                access_key_id: Secret::new(emulator::DEFAULT_BEDROCK_ACCESS_KEY_ID.to_owned()),
                secret_access_key: Secret::new(
                    emulator::DEFAULT_BEDROCK_SECRET_ACCESS_KEY.to_owned(),
                ),
                session_token: None,
            },
        ),
    ]
}
