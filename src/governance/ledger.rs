//! The ledger: every request's usage and cost, durable, in SQLite or PostgreSQL.
//!
//! Owns the store and the [`Ledger`] actor that holds it on an arbiter of its own (a sqlx pool
//! is tied to the runtime that created it, and the workers' runtimes must never wait on a
//! database). Writes are batched: records that arrive while a batch commits go in the next
//! one, in one transaction. SQLite (the embedded default) runs in WAL mode with
//! `synchronous=NORMAL`, which survives a process crash; PostgreSQL is the store replicas
//! share. Both go through the same SQL text (`$n` placeholders, portable types), so there is
//! one code path. Queries for the usage API are answered here too. It does not price records
//! (`governance::record` does, before they are sent).

use super::{PricedRecord, now_ms};
use actix::prelude::*;
use rust_decimal::Decimal;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::oneshot;

/// Records waiting in the actor beyond this are refused (and logged) rather than held.
const MAILBOX: usize = 65_536;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS usage_ledger (
        at_ms BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        proxy TEXT NOT NULL,
        route TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_type TEXT NOT NULL,
        model TEXT NOT NULL,
        api_key TEXT NOT NULL,
        topic TEXT,
        endpoint TEXT NOT NULL,
        stream BIGINT NOT NULL,
        input_tokens BIGINT,
        cached_input_tokens BIGINT,
        cache_write_tokens BIGINT,
        output_tokens BIGINT,
        reasoning_tokens BIGINT,
        cost_usd TEXT,
        cost_pusd BIGINT,
        estimated BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS usage_ledger_tenant_at ON usage_ledger (tenant, at_ms)",
];

const INSERT: &str = "INSERT INTO usage_ledger (at_ms, request_id, tenant, proxy, route, provider,
    provider_type, model, api_key, topic, endpoint, stream, input_tokens, cached_input_tokens,
    cache_write_tokens, output_tokens, reasoning_tokens, cost_usd, cost_pusd, estimated)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)";

/// Where the ledger lives, from `--ledger`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerUrl {
    Off,
    Sqlite(String),
    Postgres(String),
}

impl FromStr for LedgerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            Ok(Self::Off)
        } else if s.starts_with("sqlite:") {
            Ok(Self::Sqlite(s.to_owned()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a ledger URL: give sqlite://PATH, postgres://… or off"
            ))
        }
    }
}

/// The store behind the ledger.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on whichever pool the store has (one SQL text for both).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

/// How the usage API groups rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Total,
    Proxy,
    Route,
    Model,
    Key,
    Topic,
    Day,
    Request,
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" | "total" => Self::Total,
            "proxy" => Self::Proxy,
            "route" => Self::Route,
            "model" => Self::Model,
            "key" => Self::Key,
            "topic" => Self::Topic,
            "day" => Self::Day,
            "request" => Self::Request,
            other => {
                return Err(format!(
                    "group_by {other:?} is not one of proxy, route, model, key, topic, day, request"
                ));
            }
        })
    }
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            Self::Total => "CAST(NULL AS TEXT)",
            Self::Proxy => "proxy",
            Self::Route => "route",
            Self::Model => "model",
            Self::Key => "api_key",
            Self::Topic => "topic",
            Self::Day => "CAST(at_ms / 86400000 AS TEXT)",
            Self::Request => "request_id",
        }
    }
}

/// One group of the usage API's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// The group's value (`None` for the total, or rows without a topic).
    pub group: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// The sum of the known costs, exact.
    pub cost: Decimal,
    /// Requests whose cost is unknown (no price, or no usage reported).
    pub unpriced_requests: i64,
    /// Requests whose usage is the gateway's estimate (a stream cut before its report).
    pub estimated_requests: i64,
}

impl Store {
    /// Connects and creates the schema.
    pub async fn open(url: &LedgerUrl) -> Result<Option<Store>, String> {
        let store = match url {
            LedgerUrl::Off => return Ok(None),
            LedgerUrl::Sqlite(url) => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| format!("ledger {url}: {e}"))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .map_err(|e| format!("ledger {url}: {e}"))?;
                Store::Sqlite(pool)
            }
            LedgerUrl::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(|e| format!("ledger (postgres): {e}"))?;
                Store::Postgres(pool)
            }
        };
        // Two replicas creating the schema at once can race in PostgreSQL's catalog: once more.
        if store.create_schema().await.is_err() {
            store.create_schema().await?;
        }
        Ok(Some(store))
    }

    async fn create_schema(&self) -> Result<(), String> {
        for sql in SCHEMA {
            on_pool!(self, pool => sqlx::query(*sql).execute(pool).await.map(|_| ()))
                .map_err(|e| format!("ledger schema: {e}"))?;
        }
        Ok(())
    }

    /// Appends `batch` in one transaction.
    pub async fn append(&self, batch: &[PricedRecord]) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for r in batch {
                let rec = &r.record;
                let u = rec.usage.as_ref();
                let tokens = |f: fn(&crate::api::canonical::Usage) -> u64| {
                    u.map(|u| i64::try_from(f(u)).unwrap_or(i64::MAX))
                };
                sqlx::query(INSERT)
                    .bind(r.at_ms)
                    .bind(&rec.request_id)
                    .bind(&rec.tenant)
                    .bind(&rec.proxy)
                    .bind(&rec.route)
                    .bind(&rec.provider)
                    .bind(rec.provider_kind.as_str())
                    .bind(&rec.model)
                    .bind(&rec.api_key)
                    .bind(rec.topic.as_deref())
                    .bind(rec.endpoint.path())
                    .bind(i64::from(rec.stream))
                    .bind(tokens(|u| u.input_tokens))
                    .bind(tokens(|u| u.cached_input_tokens))
                    .bind(tokens(|u| u.cache_write_tokens))
                    .bind(tokens(|u| u.output_tokens))
                    .bind(tokens(|u| u.reasoning_tokens))
                    .bind(r.cost.map(|c| c.to_string()))
                    .bind(r.cost.and_then(picodollars))
                    .bind(i64::from(rec.estimated))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
    }

    /// Usage of `tenant` in `[from_ms, to_ms)`, grouped.
    pub async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, sqlx::Error> {
        let g = q.group_by.column();
        let sql = format!(
            "SELECT {g} AS g, COUNT(*) AS n,
                CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(cost_pusd), 0) AS BIGINT),
                CAST(SUM(CASE WHEN cost_pusd IS NULL THEN 1 ELSE 0 END) AS BIGINT),
                CAST(SUM(estimated) AS BIGINT)
             FROM usage_ledger WHERE tenant = $1 AND at_ms >= $2 AND at_ms < $3
             GROUP BY 1 ORDER BY 1"
        );
        let rows = on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&q.tenant)
                .bind(q.from_ms)
                .bind(q.to_ms)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(UsageRow {
                    group: row.try_get::<Option<String>, _>(0)?,
                    requests: row.try_get(1)?,
                    input_tokens: row.try_get(2)?,
                    cached_input_tokens: row.try_get(3)?,
                    cache_write_tokens: row.try_get(4)?,
                    output_tokens: row.try_get(5)?,
                    reasoning_tokens: row.try_get(6)?,
                    cost: Decimal::from_i128_with_scale(i128::from(row.try_get::<i64, _>(7)?), 12)
                        .normalize(),
                    unpriced_requests: row.try_get(8)?,
                    estimated_requests: row.try_get(9)?,
                });
            }
            out
        });
        Ok(rows)
    }
}

/// A cost in picodollars (10⁻¹² USD), the unit sums are taken in: exact for every price
/// written with up to six decimals per million tokens (all real ones). `None` past i64.
fn picodollars(cost: Decimal) -> Option<i64> {
    let scaled = cost.checked_mul(Decimal::from(1_000_000_000_000_i64))?;
    i64::try_from(scaled.round()).ok()
}

/// The ledger actor: owns the store on its own arbiter.
pub struct Ledger {
    store: Option<Store>,
    /// A pause before each commit, for tests that prove an answer waits for its commit
    /// (`SWITCHYARD_LEDGER_COMMIT_DELAY_MS`; zero in service).
    commit_delay: Duration,
    pending: Vec<PricedRecord>,
    acks: Vec<oneshot::Sender<bool>>,
    flushing: bool,
}

impl Actor for Ledger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

/// Appends one priced record. `ack`, when given, hears `true` once the record is committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Append(pub PricedRecord, pub Option<oneshot::Sender<bool>>);

/// The usage API's question.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<Vec<UsageRow>, String>")]
pub struct UsageQuery {
    pub tenant: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub group_by: GroupBy,
}

impl UsageQuery {
    /// All of `tenant`'s usage up to now, by `group_by`.
    pub fn all(tenant: &str, group_by: GroupBy) -> Self {
        Self {
            tenant: tenant.to_owned(),
            from_ms: 0,
            to_ms: now_ms().saturating_add(1),
            group_by,
        }
    }
}

impl Ledger {
    /// Opens the store at `url` on a new arbiter and starts the actor there. `Ok(None)` when
    /// the ledger is off.
    pub async fn start(url: LedgerUrl) -> Result<Option<Addr<Ledger>>, String> {
        if url == LedgerUrl::Off {
            return Ok(None);
        }
        let arbiter = Arbiter::new();
        let (tx, rx) = oneshot::channel();
        let spawned = arbiter.spawn(async move {
            let outcome = match Store::open(&url).await {
                Ok(store) => Ok(Ledger {
                    store,
                    commit_delay: Duration::from_millis(
                        std::env::var("SWITCHYARD_LEDGER_COMMIT_DELAY_MS")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                    ),
                    pending: Vec::new(),
                    acks: Vec::new(),
                    flushing: false,
                }
                .start()),
                Err(err) => Err(err),
            };
            let _ = tx.send(outcome);
        });
        if !spawned {
            return Err("the ledger's arbiter did not start".into());
        }
        let addr = rx
            .await
            .map_err(|_| "the ledger's arbiter stopped".to_owned())??;
        // The arbiter runs for the life of the process; its handle is not needed again.
        std::mem::forget(arbiter);
        Ok(Some(addr))
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.pending.is_empty() {
            return;
        }
        let Some(store) = self.store.clone() else {
            self.pending.clear();
            return;
        };
        self.flushing = true;
        let batch = std::mem::take(&mut self.pending);
        let acks = std::mem::take(&mut self.acks);
        let delay = self.commit_delay;
        ctx.spawn(
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let result = store.append(&batch).await;
                (result, batch.len(), acks)
            }
            .into_actor(self)
            .map(|(result, n, acks), act, ctx| {
                act.flushing = false;
                let ok = match result {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::error!(%err, records = n, "ledger write failed; these records are lost");
                        false
                    }
                };
                for ack in acks {
                    let _ = ack.send(ok);
                }
                act.flush(ctx);
            }),
        );
    }
}

impl Handler<Append> for Ledger {
    type Result = ();

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) {
        self.pending.push(msg.0);
        if let Some(ack) = msg.1 {
            self.acks.push(ack);
        }
        self.flush(ctx);
    }
}

impl Handler<UsageQuery> for Ledger {
    type Result = ResponseFuture<Result<Vec<UsageRow>, String>>;

    fn handle(&mut self, q: UsageQuery, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let store = store.ok_or("the ledger is off")?;
            store.usage(&q).await.map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_urls_and_groupings_parse() {
        assert_eq!("off".parse(), Ok(LedgerUrl::Off));
        assert!(matches!("sqlite://x.db".parse(), Ok(LedgerUrl::Sqlite(_))));
        assert!(matches!(
            "postgres://u@127.0.0.1/db".parse(),
            Ok(LedgerUrl::Postgres(_))
        ));
        assert!("mysql://x".parse::<LedgerUrl>().is_err());
        assert_eq!("key".parse(), Ok(GroupBy::Key));
        assert!("color".parse::<GroupBy>().is_err());
    }

    #[test]
    fn picodollars_are_exact_for_six_decimal_prices() {
        assert_eq!(
            picodollars(Decimal::from_str("0.000001425").expect("d")),
            Some(1_425_000)
        );
        assert_eq!(
            picodollars(Decimal::from_str("12.5").expect("d")),
            Some(12_500_000_000_000)
        );
    }
}
