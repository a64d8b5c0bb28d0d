//! Governance benchmarks, in process, through the real limiter and ledger actor.
//!
//! Run: `cargo run --release --example governance-bench -- [--redis URL] [--postgres URL]
//! [--iterations N]`
//!
//! 1. Rate-limit check latency (p50, p99, p99.9): `Limiter::check` for a tenant with request
//!    and token limits and a key limit, in process, over 1,000 tenants' keys; and against Redis
//!    when `--redis` is given (one Lua script call per check).
//! 2. `pricing::cost` per call.
//! 3. Ledger latency: from `Governance::record_durably` until the record is durable (its
//!    spool write on a SQLite file, in a temporary directory; its commit's ack on PostgreSQL
//!    when `--postgres` is given), one record at a time and 64 in flight; then one usage
//!    query, which first loads what the spool holds into SQLite.

use actix::System;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};
use switchyard::api::Endpoint;
use switchyard::api::canonical::Usage;
use switchyard::config::{Limits, ProviderKind, TenantGovernance};
use switchyard::governance::ledger::{GroupBy, Ledger, LedgerUrl, UsageQuery};
use switchyard::governance::limits::Limiter;
use switchyard::governance::{Governance, UsageRecord, pricing};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{label:<48} n={:<7} p50={:>9.2?} p99={:>9.2?} p99.9={:>9.2?} max={:>9.2?}",
        samples.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
}

fn governance() -> TenantGovernance {
    let limits = Limits {
        requests_per_minute: Some(u64::MAX),
        tokens_per_minute: Some(u64::MAX),
    };
    TenantGovernance {
        limits,
        key_limits: HashMap::from([("k".to_owned(), limits)]),
        budgets: Vec::new(),
        prices: HashMap::new(),
    }
}

async fn limiter_bench(label: &str, limiter: Limiter, n: usize) {
    let g = governance();
    let tenants: Vec<String> = (0..1000).map(|i| format!("tenant-{i}")).collect();
    // Warm: every window exists.
    for t in &tenants {
        limiter.check(&g, t, "k").await.expect("allowed");
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = &tenants[i % tenants.len()];
        let started = Instant::now();
        limiter.check(&g, t, "k").await.expect("allowed");
        samples.push(started.elapsed());
    }
    percentiles(label, samples);
}

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        tenant: "bench".into(),
        proxy: "p".into(),
        route: "r".into(),
        provider: "openai".into(),
        provider_kind: ProviderKind::OpenAi,
        model: "gpt-4o-mini".into(),
        api_key: "k".into(),
        topic: None,
        endpoint: Endpoint::ChatCompletions,
        stream: i.is_multiple_of(2),
        usage: Some(Usage {
            input_tokens: 100 + i as u64 % 50,
            output_tokens: 20,
            ..Usage::default()
        }),
        estimated: false,
        request_id: format!("req_{i}"),
    }
}

async fn ledger_bench(label: &str, url: LedgerUrl, n: usize) {
    let ledger = Ledger::start(url).await.expect("ledger").expect("on");
    let gov = Governance {
        limiter: Limiter::local(),
        ledger: Some(ledger.addr.clone()),
        spool: ledger.spool.clone(),
        budgets: Default::default(),
    };
    let tg = TenantGovernance::default();
    // Until the record is durable: its spool write (SQLite file), else its commit's ack.
    let durably = |i: usize| {
        let started = Instant::now();
        let ack = gov.record_durably(&tg, record(i));
        async move {
            if let Some(ack) = ack {
                assert!(ack.await.expect("acked"), "committed");
            }
            started.elapsed()
        }
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        samples.push(durably(i).await);
    }
    percentiles(&format!("{label}, one at a time"), samples);
    let mut samples = Vec::with_capacity(n);
    let started_all = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        samples.extend(futures_util::future::join_all(chunk.iter().map(|&i| durably(i))).await);
    }
    let rate = n as f64 / started_all.elapsed().as_secs_f64();
    percentiles(
        &format!("{label}, 64 in flight ({rate:.0} records/s)"),
        samples,
    );
    // What is not in the database yet is loaded before a query answers: its time is what the
    // ledger's thread spends on the rows recorded since its last round.
    let query = UsageQuery::all("bench", GroupBy::Total);
    let started = Instant::now();
    let rows = ledger.addr.send(query).await.expect("sent").expect("query");
    let took = started.elapsed();
    println!(
        "{label}: query after {n} more records: {:.2} ms ({} requests in the ledger)",
        took.as_secs_f64() * 1e3,
        rows.first().map_or(0, |r| r.requests)
    );
}

fn main() {
    let n: usize = arg("--iterations")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!(
        "governance-bench ({} build), {n} limiter checks",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    System::new().block_on(async move {
        limiter_bench("rate-limit check, in process", Limiter::local(), n).await;
        if let Some(url) = arg("--redis") {
            let limiter = Limiter::redis(&url).await.expect("redis");
            limiter_bench("rate-limit check, redis (loopback)", limiter, n.min(20_000)).await;
        }

        let usage = Usage {
            input_tokens: 12_345,
            cached_input_tokens: 2_000,
            cache_write_tokens: 100,
            output_tokens: 678,
            reasoning_tokens: 90,
        };
        let price = pricing::PriceTable::built_in()
            .get(ProviderKind::OpenAi, "gpt-4o-mini")
            .expect("listed")
            .price
            .clone();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            std::hint::black_box(pricing::cost(std::hint::black_box(&usage), &price));
            samples.push(started.elapsed());
        }
        percentiles("pricing::cost", samples);

        let records = (n / 20).clamp(1000, 10_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = format!("sqlite://{}", dir.path().join("ledger.db").display());
        ledger_bench(
            "ledger commit wait, sqlite",
            LedgerUrl::from_str(&sqlite).expect("url"),
            records,
        )
        .await;
        if let Some(url) = arg("--postgres") {
            ledger_bench(
                "ledger commit wait, postgres (loopback)",
                LedgerUrl::from_str(&url).expect("url"),
                records,
            )
            .await;
        }
    });
}
