//! The ledger: every request's usage and cost, durable, in SQLite or PostgreSQL.
//!
//! Owns the store and the [`Ledger`] actor that holds it on an arbiter of its own (a sqlx pool
//! is tied to the runtime that created it, and the workers' runtimes must never wait on a
//! database). A SQLite file (the embedded default, WAL mode with `synchronous=NORMAL`) gets
//! its rows from its spool (`governance::spool`: the workers copy them there, this module
//! loads what was written since its last round, one transaction each round, exactly once: the
//! database keeps each segment's loaded length in the same transaction); PostgreSQL, the store
//! replicas share, gets them in messages, committed in batches (what arrives during a commit
//! goes in the next), each acknowledged. Both go through the same SQL text (`$n`
//! placeholders, portable types), so there is one code path. Queries for the usage API are
//! answered here too. It does not price records (`governance::record` does, before they are
//! sent).

use super::spool::{Spool, Written};
use super::spool_format::{self, Records};
use super::{PricedRecord, now_ms};
use actix::prelude::*;
use rusqlite::OptionalExtension;
use rust_decimal::Decimal;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::oneshot;

/// How often the ledger moves spooled rows into SQLite (and how late the database file, read
/// by another process, may be; the usage API loads the spool before it answers). Often, so
/// that each load is short: at 100 ms a load of ~2,000 rows held a one-core gateway's worker
/// off its core long enough to add 4 ms to its p99 latency at c64, at 10 ms about 1 ms. Tests
/// that prove what else loads it set `SWITCHYARD_LEDGER_LOAD_EVERY_MS`.
const LOAD_EVERY: Duration = Duration::from_millis(10);

/// Records waiting in the actor beyond this are refused (and logged) rather than held.
const MAILBOX: usize = 65_536;

/// A row's dimensions: the strings (and the stream flag) that repeat from row to row, held once
/// in `ledger_dims` and referred to by id. A row without a topic has `''` (a NULL would make
/// every such tuple distinct to the unique constraint, on both stores).
const DIM_COLUMNS: [&str; 10] = [
    "tenant",
    "proxy",
    "route",
    "provider",
    "provider_type",
    "model",
    "api_key",
    "endpoint",
    "topic",
    "stream",
];

/// The ledger's tables, on both stores (`{id}`: the dimension id's column type, the only
/// difference). A row is 11 columns with one index, `(dims, at_ms)`: the usage API takes the
/// tenant's dimension ids (the unique constraint's index starts with `tenant`) and each one's
/// time range. The 20-column row it replaces (9 text columns) and its `(tenant, at_ms)` index
/// cost 3.9 µs a row in a Python `sqlite3` sketch, this one 2.2 µs; the gateway's load of a
/// spooled row also parses its JSON line (`loadtests/README.md`). No foreign key: the ledger
/// writes both tables itself, and PostgreSQL would check it on every insert.
const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS ledger_dims (
        id {id} PRIMARY KEY,
        tenant TEXT NOT NULL,
        proxy TEXT NOT NULL,
        route TEXT NOT NULL,
        provider TEXT NOT NULL,
        provider_type TEXT NOT NULL,
        model TEXT NOT NULL,
        api_key TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        topic TEXT NOT NULL,
        stream BIGINT NOT NULL,
        UNIQUE (tenant, proxy, route, provider, provider_type, model, api_key, endpoint, topic,
            stream)
    )",
    "CREATE TABLE IF NOT EXISTS usage_rows (
        at_ms BIGINT NOT NULL,
        dims BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        estimated BIGINT NOT NULL,
        cost_usd TEXT,
        input_tokens BIGINT,
        cached_input_tokens BIGINT,
        cache_write_tokens BIGINT,
        output_tokens BIGINT,
        reasoning_tokens BIGINT,
        cost_pusd BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS usage_rows_dims_at ON usage_rows (dims, at_ms)",
];

/// The documented table, now a view with its 20 columns, so that an operator's SQL against it
/// still works.
const VIEW: &str = "CREATE VIEW usage_ledger AS
    SELECT u.at_ms, u.request_id, d.tenant, d.proxy, d.route, d.provider, d.provider_type,
        d.model, d.api_key, NULLIF(d.topic, '') AS topic, d.endpoint, d.stream, u.input_tokens,
        u.cached_input_tokens, u.cache_write_tokens, u.output_tokens, u.reasoning_tokens,
        u.cost_usd, u.cost_pusd, u.estimated
    FROM usage_rows u JOIN ledger_dims d ON d.id = u.dims";

/// What turns a ledger from before `ledger_dims` (one `usage_ledger` table of 20 columns) into
/// the tables above, in the same transaction as creating them; [`VIEW`] follows.
const MIGRATE: [&str; 3] = [
    "INSERT INTO ledger_dims (tenant, proxy, route, provider, provider_type, model, api_key,
        endpoint, topic, stream)
     SELECT DISTINCT tenant, proxy, route, provider, provider_type, model, api_key, endpoint,
        COALESCE(topic, ''), stream
     FROM usage_ledger",
    "INSERT INTO usage_rows (at_ms, dims, request_id, estimated, cost_usd, input_tokens,
        cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_pusd)
     SELECT o.at_ms, d.id, o.request_id, o.estimated, o.cost_usd, o.input_tokens,
        o.cached_input_tokens, o.cache_write_tokens, o.output_tokens, o.reasoning_tokens,
        o.cost_pusd
     FROM usage_ledger o JOIN ledger_dims d ON d.tenant = o.tenant AND d.proxy = o.proxy
        AND d.route = o.route AND d.provider = o.provider AND d.provider_type = o.provider_type
        AND d.model = o.model AND d.api_key = o.api_key AND d.endpoint = o.endpoint
        AND d.topic = COALESCE(o.topic, '') AND d.stream = o.stream",
    "DROP TABLE usage_ledger",
];

/// What `usage_ledger` is in a store being opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    /// Nothing: a new store.
    Nothing,
    /// The table of a ledger from before `ledger_dims`: migrated.
    Table,
    /// The view over today's tables.
    View,
}

impl Existing {
    /// From SQLite's `sqlite_master.type` or PostgreSQL's `information_schema.tables.table_type`.
    fn of(kind: Option<&str>) -> Self {
        match kind {
            None => Self::Nothing,
            Some("view" | "VIEW") => Self::View,
            Some(_) => Self::Table,
        }
    }

    /// The statements that bring a store holding `self` to today's schema (`id`: the type of
    /// `ledger_dims.id`), to be run in one transaction.
    fn schema(self, id: &str) -> Vec<String> {
        let mut sql: Vec<String> = SCHEMA.iter().map(|s| s.replace("{id}", id)).collect();
        if self == Self::Table {
            sql.extend(MIGRATE.iter().map(|s| (*s).to_owned()));
        }
        if self != Self::View {
            sql.push(VIEW.to_owned());
        }
        sql
    }
}

/// `ledger_dims.id` in SQLite: `INTEGER PRIMARY KEY` is the row id, assigned on insert.
const SQLITE_ID: &str = "INTEGER";
/// `ledger_dims.id` in PostgreSQL.
const POSTGRES_ID: &str = "BIGINT GENERATED BY DEFAULT AS IDENTITY";

/// How far each spool segment is in the database (SQLite only; see [`load_segments`]): its
/// first `loaded` bytes; NULL for all of it (a mark from before segments were loaded in parts).
const SQLITE_SPOOL_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS ledger_spool (segment TEXT PRIMARY KEY NOT NULL, loaded BIGINT)";

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
            Self::Proxy => "d.proxy",
            Self::Route => "d.route",
            Self::Model => "d.model",
            Self::Key => "d.api_key",
            Self::Topic => "NULLIF(d.topic, '')",
            Self::Day => "CAST(u.at_ms / 86400000 AS TEXT)",
            Self::Request => "u.request_id",
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

impl UsageRow {
    /// A row from its group and the query's nine sums, in the query's column order.
    fn new(group: Option<String>, sums: [i64; 9]) -> Self {
        let [
            requests,
            input,
            cached,
            cache_write,
            output,
            reasoning,
            pusd,
            unpriced,
            estimated,
        ] = sums;
        Self {
            group,
            requests,
            input_tokens: input,
            cached_input_tokens: cached,
            cache_write_tokens: cache_write,
            output_tokens: output,
            reasoning_tokens: reasoning,
            cost: Decimal::from_i128_with_scale(i128::from(pusd), 12).normalize(),
            unpriced_requests: unpriced,
            estimated_requests: estimated,
        }
    }
}

/// A usage row's `INSERT` column list (`insert_sqlite` and `Store::append_postgres` bind in
/// this order).
const INSERT: &str = "INSERT INTO usage_rows (at_ms, estimated, dims, request_id, cost_usd,
    input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
    cost_pusd)";

/// Inserts a dimension tuple unless it is there (written by another replica, on PostgreSQL:
/// the insert waits for that one's transaction, so both then read the same id).
static DIMS_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let marks: Vec<String> = (1..=DIM_COLUMNS.len()).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO ledger_dims ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        DIM_COLUMNS.join(", "),
        marks.join(", ")
    )
});

/// A dimension tuple's id.
static DIMS_SELECT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let equal: Vec<String> = DIM_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ${}", i + 1))
        .collect();
    format!("SELECT id FROM ledger_dims WHERE {}", equal.join(" AND "))
});

/// The ids of the dimension tuples ([`DIM_COLUMNS`]) this ledger has written or read, by the
/// tuple written as one byte string (each value prefixed with its length, so no two tuples
/// share a key; the bytes copied, not formatted: `write!` cost the ledger thread 3,600
/// instructions a row). A look-up writes its key into a buffer kept for the next one: a
/// known tuple costs no allocation. Rows in a row mostly share their tuple, so the last one's
/// key and id are kept and a row is first compared with them, in place: building and hashing
/// the key cost about 1,000 instructions a row. Forgotten when a SQLite transaction that may
/// have added some fails (a rolled-back id may be given to another tuple).
#[derive(Default)]
pub(crate) struct DimIds {
    ids: std::collections::HashMap<Vec<u8>, i64>,
    key: Vec<u8>,
    /// The id of the tuple whose key is in `key`, when known.
    last: Option<i64>,
}

/// A row's dimensions in [`DIM_COLUMNS`]' order (`''` for no topic), then its stream flag.
type Dims<'a> = ([&'a str; 9], i64);

impl DimIds {
    /// The id of `dims` if known; its key stays for [`DimIds::learn`].
    fn known(&mut self, dims: &Dims<'_>) -> Option<i64> {
        if let Some(id) = self.last
            && is_key_of(&self.key, dims)
        {
            return Some(id);
        }
        let (text, stream) = dims;
        self.key.clear();
        for s in text {
            self.key.extend_from_slice(&s.len().to_le_bytes());
            self.key.extend_from_slice(s.as_bytes());
        }
        self.key.extend_from_slice(&stream.to_le_bytes());
        self.last = self.ids.get(self.key.as_slice()).copied();
        self.last
    }

    /// Remembers `id` for the tuple [`DimIds::known`] looked up last.
    fn learn(&mut self, id: i64) {
        self.ids.insert(self.key.clone(), id);
        self.last = Some(id);
    }

    fn forget(&mut self) {
        self.ids.clear();
        self.last = None;
    }
}

/// Whether `key` is the key [`DimIds::known`] writes for `dims`, read in place.
fn is_key_of(key: &[u8], (text, stream): &Dims<'_>) -> bool {
    let mut rest = key;
    for s in text {
        let Some((len, tail)) = rest.split_at_checked(8) else {
            return false;
        };
        let Some((bytes, tail)) = tail.split_at_checked(s.len()) else {
            return false;
        };
        if len != s.len().to_le_bytes() || bytes != s.as_bytes() {
            return false;
        }
        rest = tail;
    }
    rest == stream.to_le_bytes()
}

/// Rows per PostgreSQL `INSERT`: a batch costs a round trip per statement, not per row, and
/// fixed-size statements keep the prepared-statement cache to this many row counts at most.
const ROWS_PER_INSERT: usize = 64;

/// One ledger row's values in `INSERT`'s column order, built once and bound by either store;
/// also what a spool record holds (`governance::spool_format`), read back with strings
/// borrowed from the segment. An older gateway's spool held it as JSON lines (serde's
/// derived form), still read at start-up.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RowValues<S> {
    pub(super) ints: [i64; 3],
    pub(super) text: [S; 9],
    pub(super) optional_text: [Option<S>; 2],
    pub(super) optional_ints: [Option<i64>; 6],
}

impl<'a> RowValues<&'a str> {
    fn of(r: &'a PricedRecord, cost_usd: &'a Option<String>) -> Self {
        let rec = &r.record;
        let tokens = |f: fn(&crate::api::canonical::Usage) -> u64| {
            rec.usage
                .as_ref()
                .map(|u| i64::try_from(f(u)).unwrap_or(i64::MAX))
        };
        Self {
            ints: [r.at_ms, i64::from(rec.stream), i64::from(rec.estimated)],
            text: [
                &rec.request_id,
                &rec.tenant,
                &rec.proxy,
                &rec.route,
                &rec.provider,
                rec.provider_kind.as_str(),
                &rec.model,
                &rec.api_key,
                rec.endpoint.path(),
            ],
            optional_text: [rec.topic.as_deref(), cost_usd.as_deref()],
            optional_ints: [
                tokens(|u| u.input_tokens),
                tokens(|u| u.cached_input_tokens),
                tokens(|u| u.cache_write_tokens),
                tokens(|u| u.output_tokens),
                tokens(|u| u.reasoning_tokens),
                r.cost.and_then(picodollars),
            ],
        }
    }
}

impl<S: AsRef<str>> RowValues<S> {
    /// The row's dimensions.
    fn dims(&self) -> Dims<'_> {
        let t = |i: usize| self.text[i].as_ref();
        let topic = self.optional_text[0].as_ref().map_or("", AsRef::as_ref);
        (
            [t(1), t(2), t(3), t(4), t(5), t(6), t(7), t(8), topic],
            self.ints[1],
        )
    }
}

/// `record` as one spool record (see [`super::spool`] and [`spool_format`]).
pub(crate) fn spool_record(record: &PricedRecord) -> Vec<u8> {
    let cost_usd = record.cost.map(cost_text);
    let mut out = Vec::new();
    spool_format::encode(&RowValues::of(record, &cost_usd), &mut out);
    out
}

/// `cost` as the ledger's `cost_usd` text, exactly `Decimal`'s own (`to_string`: every digit of
/// its scale, trailing zeros kept). Written here from the mantissa's digits when they fit in a
/// `u64` (every real cost does): the worker writes one a request, and `to_string` (`core::fmt`
/// and a 96-bit division per digit) cost it about 800 instructions.
pub(crate) fn cost_text(cost: Decimal) -> String {
    let Ok(mantissa) = u64::try_from(cost.mantissa().unsigned_abs()) else {
        return cost.to_string();
    };
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = mantissa;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let digits = &digits[at..];
    let scale = cost.scale() as usize;
    let mut out = String::with_capacity(digits.len() + scale + 3);
    if cost.is_sign_negative() {
        out.push('-');
    }
    if digits.len() > scale {
        let (whole, fraction) = digits.split_at(digits.len() - scale);
        out.extend(whole.iter().map(|d| char::from(*d)));
        if scale > 0 {
            out.push('.');
            out.extend(fraction.iter().map(|d| char::from(*d)));
        }
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.extend(digits.iter().map(|d| char::from(*d)));
    }
    out
}

/// The store behind the ledger. SQLite is driven synchronously on the ledger's own thread
/// (`rusqlite`): a batch's commit is microseconds of work, and a driver that hands every
/// statement to a thread of its own (sqlx's SQLite driver does) spent more CPU on thread
/// switches than on the inserts. PostgreSQL goes through an async `sqlx` pool. Both run the
/// same SQL text.
pub enum Store {
    /// A file's (`Some`) or one in memory.
    Sqlite(rusqlite::Connection, Option<OnDisk>),
    Postgres(PgPool),
}

/// What a SQLite ledger in a file has beside its connection.
pub struct OnDisk {
    /// Where answers' rows are made durable (see [`Spool`]).
    spool: std::sync::Arc<Spool>,
    _checkpointer: Checkpointer,
}

impl Store {
    /// Connects and creates the schema.
    pub async fn open(url: &LedgerUrl) -> Result<Option<Store>, String> {
        match url {
            LedgerUrl::Off => Ok(None),
            LedgerUrl::Sqlite(url) => {
                let (db, path) = open_sqlite(url).map_err(|e| format!("ledger {url}: {e}"))?;
                sqlite_schema(&db).map_err(|e| format!("ledger {url}: schema: {e}"))?;
                // A file from before marks had `loaded` (its marks are whole segments).
                let has_loaded: bool = db
                    .query_row(
                        "SELECT COUNT(*) > 0 FROM pragma_table_info('ledger_spool') \
                         WHERE name = 'loaded'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| format!("ledger schema: {e}"))?;
                if !has_loaded {
                    db.execute_batch("ALTER TABLE ledger_spool ADD COLUMN loaded BIGINT")
                        .map_err(|e| format!("ledger schema: {e}"))?;
                }
                let on_disk = match path {
                    Some(path) => {
                        let (spool, left) = Spool::open(std::path::Path::new(&path))?;
                        if !left.is_empty() {
                            // What a stopped gateway spooled, before anything reads the file.
                            let dims = &mut DimIds::default();
                            let loaded = load_segments(&db, dims, &left, &[])
                                .map_err(|e| format!("ledger {url}: loading its spool: {e}"))?;
                            load_segments(&db, dims, &[], &loaded.gone)
                                .map_err(|e| format!("ledger {url}: loading its spool: {e}"))?;
                            tracing::info!(
                                rows = loaded.rows,
                                segments = left.len(),
                                "ledger rows left in the spool are now in the database"
                            );
                        }
                        Some(OnDisk {
                            spool: std::sync::Arc::new(spool),
                            _checkpointer: Checkpointer::start(path)
                                .map_err(|e| format!("ledger {url}: {e}"))?,
                        })
                    }
                    None => None,
                };
                Ok(Some(Store::Sqlite(db, on_disk)))
            }
            LedgerUrl::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(|e| format!("ledger (postgres): {e}"))?;
                // Two replicas creating the schema at once can race in PostgreSQL's catalog:
                // once more.
                if postgres_schema(&pool).await.is_err() {
                    postgres_schema(&pool).await?;
                }
                Ok(Some(Store::Postgres(pool)))
            }
        }
    }

    /// Appends `batch` to SQLite in one transaction (synchronously: on the ledger's thread).
    fn append_sqlite(
        db: &rusqlite::Connection,
        ids: &mut DimIds,
        batch: &[PricedRecord],
    ) -> Result<(), String> {
        sqlite_transaction(db, ids, |ids| {
            let mut insert = sqlite_insert(db)?;
            for r in batch {
                let cost_usd = r.cost.map(cost_text);
                insert_sqlite(db, &mut insert, ids, &RowValues::of(r, &cost_usd))?;
            }
            Ok(())
        })
    }

    /// Appends `batch` to PostgreSQL in one transaction, [`ROWS_PER_INSERT`] rows a statement
    /// (new dimension tuples first, see [`postgres_dims_id`]).
    async fn append_postgres(
        pool: PgPool,
        ids: &mut DimIds,
        batch: &[PricedRecord],
    ) -> Result<(), String> {
        let run = async {
            let costs: Vec<Option<String>> = batch
                .iter()
                .map(|r| r.cost.map(|c| c.to_string()))
                .collect();
            let mut values = Vec::with_capacity(batch.len());
            for (r, cost_usd) in batch.iter().zip(&costs) {
                let v = RowValues::of(r, cost_usd);
                let dims = postgres_dims_id(&pool, ids, &v).await?;
                values.push((v, dims));
            }
            let mut tx = pool.begin().await?;
            for rows in values.chunks(ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new(INSERT);
                insert.push_values(rows, |mut row, (v, dims)| {
                    row.push_bind(v.ints[0])
                        .push_bind(v.ints[2])
                        .push_bind(*dims)
                        .push_bind(v.text[0].to_owned())
                        .push_bind(v.optional_text[1].map(str::to_owned));
                    for x in v.optional_ints {
                        row.push_bind(x);
                    }
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        };
        run.await.map_err(|e: sqlx::Error| e.to_string())
    }
}

impl UsageQuery {
    /// The query's SQL: the same text on both stores.
    fn sql(&self) -> String {
        let g = self.group_by.column();
        format!(
            "SELECT {g} AS g, COUNT(*) AS n,
                CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(u.cached_input_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(u.cache_write_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(u.reasoning_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(u.cost_pusd), 0) AS BIGINT),
                CAST(SUM(CASE WHEN u.cost_pusd IS NULL THEN 1 ELSE 0 END) AS BIGINT),
                CAST(SUM(u.estimated) AS BIGINT)
             FROM usage_rows u JOIN ledger_dims d ON d.id = u.dims
             WHERE d.tenant = $1 AND u.at_ms >= $2 AND u.at_ms < $3
             GROUP BY 1 ORDER BY 1"
        )
    }

    fn on_sqlite(&self, db: &rusqlite::Connection) -> Result<Vec<UsageRow>, String> {
        let mut query = db.prepare(&self.sql()).map_err(|e| e.to_string())?;
        let rows = query
            .query_map(
                rusqlite::params![self.tenant, self.from_ms, self.to_ms],
                |row| {
                    let mut sums = [0i64; 9];
                    for (i, sum) in sums.iter_mut().enumerate() {
                        *sum = row.get(i + 1)?;
                    }
                    Ok(UsageRow::new(row.get(0)?, sums))
                },
            )
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    async fn on_postgres(&self, pool: &PgPool) -> Result<Vec<UsageRow>, String> {
        let sql = self.sql();
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&self.tenant)
            .bind(self.from_ms)
            .bind(self.to_ms)
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string())?;
        rows.iter()
            .map(|row| {
                let mut sums = [0i64; 9];
                for (i, sum) in sums.iter_mut().enumerate() {
                    *sum = row.try_get(i + 1)?;
                }
                Ok(UsageRow::new(row.try_get(0)?, sums))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| e.to_string())
    }
}

/// Creates SQLite's schema, or brings a ledger from before to it (one transaction).
fn sqlite_schema(db: &rusqlite::Connection) -> Result<(), String> {
    sqlite_transaction(db, &mut DimIds::default(), |_| {
        let kind: Option<String> = db
            .query_row(
                "SELECT type FROM sqlite_master WHERE name = 'usage_ledger'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        let mut sql = Existing::of(kind.as_deref()).schema(SQLITE_ID);
        sql.push(SQLITE_SPOOL_SCHEMA.to_owned());
        sql.iter()
            .try_for_each(|s| db.execute_batch(s))
            .map_err(|e| e.to_string())
    })
}

/// Creates PostgreSQL's schema, or brings a ledger from before to it (one transaction).
async fn postgres_schema(pool: &PgPool) -> Result<(), String> {
    let run = async {
        let mut tx = pool.begin().await?;
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT CAST(table_type AS TEXT) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = 'usage_ledger'",
        )
        .fetch_optional(&mut *tx)
        .await?;
        for sql in Existing::of(kind.as_deref()).schema(POSTGRES_ID) {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    };
    run.await
        .map_err(|e: sqlx::Error| format!("ledger schema: {e}"))
}

/// Opens (creating if missing) the SQLite file of a `sqlite://PATH` or `sqlite:PATH` URL
/// (`:memory:` for a ledger that lasts as long as the process), in WAL mode with
/// `synchronous=NORMAL`: a commit is durable across a process crash without an fsync each. The
/// writer never checkpoints (that is where the fsyncs are): a [`Checkpointer`] does, beside
/// it. Also returns the file's path (`None` in memory).
fn open_sqlite(url: &str) -> rusqlite::Result<(rusqlite::Connection, Option<String>)> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path == ":memory:" {
        return Ok((rusqlite::Connection::open_in_memory()?, None));
    }
    let db = rusqlite::Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(10))?;
    // 8 KiB pages for a new file (an existing one keeps its size): a row's insert into the
    // table and its index cost about a tenth less than with the default 4 KiB
    // (`loadtests/README.md`). Only a file without tables takes it, before WAL mode.
    db.pragma_update(None, "page_size", 8192)?;
    db.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    db.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok((db, Some(path.to_owned())))
}

/// Runs `body` in one SQLite transaction: committed when it succeeds, rolled back when not
/// (and then `ids` forgets what it learnt).
fn sqlite_transaction(
    db: &rusqlite::Connection,
    ids: &mut DimIds,
    body: impl FnOnce(&mut DimIds) -> Result<(), String>,
) -> Result<(), String> {
    // BEGIN and COMMIT as cached statements: `Connection::transaction` prepares them anew
    // every time.
    let run = |sql: &str| db.prepare_cached(sql).and_then(|mut s| s.execute([]));
    run("BEGIN").map_err(|e| e.to_string())?;
    let done = match body(ids) {
        Ok(()) => run("COMMIT").map(|_| ()).map_err(|e| e.to_string()),
        Err(err) => {
            let _ = run("ROLLBACK");
            Err(err)
        }
    };
    if done.is_err() {
        ids.forget();
    }
    done
}

/// Inserts one row into SQLite with `insert` (the prepared [`SQLITE_INSERT`], inside a
/// transaction of the caller's), and its dimensions first if they are new.
fn insert_sqlite<S: AsRef<str>>(
    db: &rusqlite::Connection,
    insert: &mut rusqlite::Statement<'_>,
    ids: &mut DimIds,
    v: &RowValues<S>,
) -> Result<(), String> {
    let dims = sqlite_dims_id(db, ids, v).map_err(|e| e.to_string())?;
    let request_id = v.text[0].as_ref();
    let cost_usd = v.optional_text[1].as_ref().map(AsRef::as_ref);
    let fixed: [&dyn rusqlite::ToSql; 5] = [&v.ints[0], &v.ints[2], &dims, &request_id, &cost_usd];
    let ints = v.optional_ints.iter().map(|x| x as &dyn rusqlite::ToSql);
    for (n, value) in fixed.into_iter().chain(ints).enumerate() {
        insert
            .raw_bind_parameter(n + 1, value)
            .map_err(|e| e.to_string())?;
    }
    insert.raw_execute().map_err(|e| e.to_string())?;
    Ok(())
}

/// The id of `v`'s dimensions in SQLite: known, else inserted (inside the caller's
/// transaction) and read back.
fn sqlite_dims_id<S: AsRef<str>>(
    db: &rusqlite::Connection,
    ids: &mut DimIds,
    v: &RowValues<S>,
) -> rusqlite::Result<i64> {
    let dims = v.dims();
    if let Some(id) = ids.known(&dims) {
        return Ok(id);
    }
    let (text, stream) = &dims;
    let mut params: Vec<&dyn rusqlite::ToSql> = text.iter().map(|s| s as _).collect();
    params.push(stream);
    db.prepare_cached(&DIMS_INSERT)?
        .execute(params.as_slice())?;
    let id = db
        .prepare_cached(&DIMS_SELECT)?
        .query_row(params.as_slice(), |r| r.get(0))?;
    ids.learn(id);
    Ok(id)
}

/// The id of `v`'s dimensions in PostgreSQL: known, else inserted unless another replica did,
/// and read back. Each statement commits on its own, before the rows' transaction: inside it,
/// two replicas inserting two new tuples in opposite orders would each wait for the other's
/// transaction (a deadlock, and one batch lost); a tuple no row ends up using is harmless.
async fn postgres_dims_id(
    pool: &PgPool,
    ids: &mut DimIds,
    v: &RowValues<&str>,
) -> Result<i64, sqlx::Error> {
    let dims = v.dims();
    if let Some(id) = ids.known(&dims) {
        return Ok(id);
    }
    let (text, stream) = dims;
    let mut insert = sqlx::query(DIMS_INSERT.as_str());
    let mut select = sqlx::query_scalar(DIMS_SELECT.as_str());
    for s in text {
        insert = insert.bind(s.to_owned());
        select = select.bind(s.to_owned());
    }
    insert.bind(stream).execute(pool).await?;
    let id = select.bind(stream).fetch_one(pool).await?;
    ids.learn(id);
    Ok(id)
}

/// [`SQLITE_INSERT`], prepared (once per connection: the statement cache keeps it).
fn sqlite_insert(db: &rusqlite::Connection) -> Result<rusqlite::CachedStatement<'_>, String> {
    db.prepare_cached(&SQLITE_INSERT).map_err(|e| e.to_string())
}

/// What [`load_segments`] did.
#[derive(Debug, Default)]
struct Loaded {
    /// Closed segments loaded and deleted: their marks can go next time.
    gone: Vec<String>,
    rows: usize,
    /// Records (or an older segment's lines) that did not read back whole (a row torn by a
    /// crash), skipped.
    torn: usize,
}

/// Moves what the spool's segments hold past their marks into SQLite in one transaction,
/// moving each segment's mark in `ledger_spool` to its written end in the same transaction
/// (so no row is loaded twice, whether the process crashes before or after), then deletes the
/// closed segments' files. `forget` are segments loaded and deleted earlier, whose marks can
/// go. On error nothing is deleted (the next round tries again). Past a segment's last whole
/// record there is its zero tail (a segment is created full of zeros) and maybe a record torn
/// by a crash: skipped and logged ([`spool_format::Records`]). A segment an older gateway left
/// holds JSON lines instead ([`load_json_lines`]).
fn load_segments(
    db: &rusqlite::Connection,
    ids: &mut DimIds,
    segments: &[Written],
    forget: &[String],
) -> Result<Loaded, String> {
    let mut names = Vec::with_capacity(segments.len());
    let mut loaded = Loaded::default();
    sqlite_transaction(db, ids, |ids| {
        let mut mark = db
            .prepare_cached("SELECT loaded FROM ledger_spool WHERE segment = ?1")
            .map_err(|e| e.to_string())?;
        for segment in segments {
            let name = segment.name();
            let from = match mark
                .query_row([&name], |r| r.get::<_, Option<i64>>(0))
                .optional()
                .map_err(|e| e.to_string())?
            {
                None => 0,
                Some(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
                Some(None) => usize::MAX,
            };
            if from < segment.end() {
                let bytes = segment.bytes(from);
                let mut insert = sqlite_insert(db)?;
                let torn = if spool_format::is_json(segment.bytes(0)) {
                    load_json_lines(db, &mut insert, ids, bytes, &mut loaded.rows)?
                } else {
                    let mut records = Records::new(bytes);
                    for row in records.by_ref() {
                        insert_sqlite(db, &mut insert, ids, &row)?;
                        loaded.rows += 1;
                    }
                    records.torn()
                };
                if torn > 0 {
                    tracing::error!(segment = %segment.path().display(), records = torn, "torn ledger spool records are skipped");
                    loaded.torn += torn;
                }
                db.prepare_cached(
                    "INSERT INTO ledger_spool (segment, loaded) VALUES (?1, ?2)
                     ON CONFLICT (segment) DO UPDATE SET loaded = excluded.loaded",
                )
                .and_then(|mut s| s.execute(rusqlite::params![name, segment.end() as i64]))
                .map_err(|e| e.to_string())?;
            }
            if segment.closed {
                names.push((segment.path(), name));
            }
        }
        for name in forget {
            db.prepare_cached("DELETE FROM ledger_spool WHERE segment = ?1")
                .and_then(|mut s| s.execute([name]))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    // A mark goes only once its file has: else a restart would load the file again.
    for (path, name) in names {
        match std::fs::remove_file(path) {
            Ok(()) => loaded.gone.push(name),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => loaded.gone.push(name),
            Err(err) => {
                tracing::warn!(%err, segment = %path.display(), "a loaded ledger spool segment was not deleted")
            }
        }
    }
    Ok(loaded)
}

/// Inserts the rows of an older gateway's segment, JSON lines, from `bytes` (from a line's
/// start to the written end) and returns how many lines did not parse (skipped). Past the last
/// newline there is the zero tail and maybe a line torn by a crash.
fn load_json_lines(
    db: &rusqlite::Connection,
    insert: &mut rusqlite::Statement<'_>,
    ids: &mut DimIds,
    bytes: &[u8],
    rows: &mut usize,
) -> Result<usize, String> {
    let (lines, tail) = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(last) => bytes.split_at(last + 1),
        None => (&[][..], bytes),
    };
    let mut torn = usize::from(tail.iter().any(|b| *b != 0));
    // UTF-8 checked once for all the lines; line by line only when some are not.
    let texts: Vec<Option<&str>> = match std::str::from_utf8(lines) {
        Ok(text) => text.split('\n').map(Some).collect(),
        Err(_) => lines
            .split(|b| *b == b'\n')
            .map(|l| std::str::from_utf8(l).ok())
            .collect(),
    };
    for line in texts {
        let Some(line) = line else {
            torn += 1;
            continue;
        };
        if line.is_empty() {
            continue;
        }
        // Strings borrowed from the segment; owned only where JSON escaped something.
        let inserted = match serde_json::from_str::<RowValues<&str>>(line) {
            Ok(row) => insert_sqlite(db, insert, ids, &row),
            Err(_) => match serde_json::from_str::<RowValues<String>>(line) {
                Ok(row) => insert_sqlite(db, insert, ids, &row),
                Err(_) => {
                    torn += 1;
                    continue;
                }
            },
        };
        inserted?;
        *rows += 1;
    }
    Ok(torn)
}

/// Copies the SQLite ledger's WAL into the database file every [`CHECKPOINT_EVERY`], on a
/// thread and connection of its own. A passive checkpoint never blocks the writer, so the
/// checkpoint's fsyncs (tens of milliseconds on a busy disk) stay out of every commit's wait.
/// Stops when dropped (with its store).
pub struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl Checkpointer {
    fn start(path: String) -> Result<Self, String> {
        let db = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
        db.busy_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        // Without it the WAL would grow without end (the writer does not checkpoint).
        std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    let done =
                        db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0));
                    if let Err(err) = done {
                        tracing::warn!(%err, path, "ledger checkpoint failed; the next one retries");
                    }
                }
            })
            .map_err(|e| format!("the checkpoint thread did not start: {e}"))?;
        Ok(Self { stop })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// SQLite's `INSERT` of one row (`?n` placeholders), prepared once and cached.
static SQLITE_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let marks: Vec<String> = (1..=11).map(|n| format!("?{n}")).collect();
    format!("{INSERT} VALUES ({})", marks.join(", "))
});

/// A cost in picodollars (10⁻¹² USD), the unit sums are taken in: exact for every price
/// written with up to six decimals per million tokens (all real ones). `None` past i64.
fn picodollars(cost: Decimal) -> Option<i64> {
    let scaled = cost.checked_mul(Decimal::from(1_000_000_000_000_i64))?;
    i64::try_from(scaled.round()).ok()
}

/// The ledger actor: owns the store on its own arbiter. Rows come two ways: a SQLite file's
/// from its spool (loaded every [`LOAD_EVERY`], before every query and on [`Flush`]), the
/// other stores' in [`Append`] messages (committed in batches: what arrives during a commit
/// goes in the next).
pub struct Ledger {
    store: Option<Store>,
    /// A pause before each commit, for tests that prove what an answer waits for
    /// (`SWITCHYARD_LEDGER_COMMIT_DELAY_MS`; zero in service).
    commit_delay: Duration,
    /// [`LOAD_EVERY`], unless a test says otherwise.
    load_every: Duration,
    pending: Vec<PricedRecord>,
    acks: Vec<oneshot::Sender<bool>>,
    flushing: bool,
    /// Closed spool segments not yet in the database (a failed round's, retried).
    closed: Vec<Written>,
    /// Loaded and deleted segments whose marks in `ledger_spool` can go.
    forget: Vec<String>,
    /// The segment being written and how far the last round loaded it: when nothing was
    /// written since, a round does nothing.
    live: Option<(std::path::PathBuf, usize)>,
    /// The dimension ids the store has (taken by a PostgreSQL commit while it runs).
    dims: DimIds,
}

impl Actor for Ledger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        if self.spool().is_some() {
            ctx.run_interval(self.load_every, |act, _| act.load_spool());
        }
    }
}

/// Moves everything spooled so far into the database (at shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

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

/// A started ledger: its actor, and the spool answers are recorded in when it has one.
pub struct Started {
    pub addr: Addr<Ledger>,
    pub spool: Option<std::sync::Arc<Spool>>,
}

impl Ledger {
    /// Opens the store at `url` on a new arbiter (loading what a stopped gateway left in its
    /// spool) and starts the actor there. `Ok(None)` when the ledger is off.
    pub async fn start(url: LedgerUrl) -> Result<Option<Started>, String> {
        if url == LedgerUrl::Off {
            return Ok(None);
        }
        let arbiter = Arbiter::new();
        let (tx, rx) = oneshot::channel();
        let spawned = arbiter.spawn(async move {
            let outcome = match Store::open(&url).await {
                Ok(store) => {
                    let ms = |var: &str| {
                        std::env::var(var)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .map(Duration::from_millis)
                    };
                    let ledger = Ledger {
                        store,
                        commit_delay: ms("SWITCHYARD_LEDGER_COMMIT_DELAY_MS").unwrap_or_default(),
                        load_every: ms("SWITCHYARD_LEDGER_LOAD_EVERY_MS").unwrap_or(LOAD_EVERY),
                        pending: Vec::new(),
                        acks: Vec::new(),
                        flushing: false,
                        closed: Vec::new(),
                        forget: Vec::new(),
                        live: None,
                        dims: DimIds::default(),
                    };
                    let spool = ledger.spool().cloned();
                    Ok(Started {
                        addr: ledger.start(),
                        spool,
                    })
                }
                Err(err) => Err(err),
            };
            let _ = tx.send(outcome);
        });
        if !spawned {
            return Err("the ledger's arbiter did not start".into());
        }
        let started = rx
            .await
            .map_err(|_| "the ledger's arbiter stopped".to_owned())??;
        // The arbiter runs for the life of the process; its handle is not needed again.
        std::mem::forget(arbiter);
        Ok(Some(started))
    }

    fn spool(&self) -> Option<&std::sync::Arc<Spool>> {
        match &self.store {
            Some(Store::Sqlite(_, Some(disk))) => Some(&disk.spool),
            _ => None,
        }
    }

    /// Moves the spool's rows into SQLite: what was written since the last round, closed
    /// segments and the one being written alike, in one transaction. On failure the closed
    /// segments stay for the next round (the one being written is read again anyway).
    fn load_spool(&mut self) {
        let Some(Store::Sqlite(db, Some(disk))) = &self.store else {
            return;
        };
        if let Err(err) = disk.spool.prepare() {
            tracing::warn!(%err, "the ledger spool's next segment was not created ahead");
        }
        let mut segments = std::mem::take(&mut self.closed);
        segments.extend(disk.spool.written());
        let live = &self.live;
        let idle = self.forget.is_empty()
            && segments.iter().all(|w| {
                !w.closed
                    && (w.end() == 0
                        || live
                            .as_ref()
                            .is_some_and(|(path, end)| *end == w.end() && path == w.path()))
            });
        if idle {
            return;
        }
        if !self.commit_delay.is_zero() {
            std::thread::sleep(self.commit_delay);
        }
        match load_segments(db, &mut self.dims, &segments, &self.forget) {
            Ok(loaded) => {
                self.forget = loaded.gone;
                self.live = segments
                    .iter()
                    .find(|w| !w.closed)
                    .map(|w| (w.path().to_owned(), w.end()));
            }
            Err(err) => {
                self.closed = segments.into_iter().filter(|w| w.closed).collect();
                tracing::error!(%err, "spooled ledger rows are not in the database yet; the next round retries")
            }
        }
    }

    /// Starts committing what is pending unless a commit is under way (what arrives meanwhile
    /// goes in the next one). The batch is taken when the commit runs, after the mailbox is
    /// drained, so every record that arrived by then shares one transaction.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.pending.is_empty() {
            return;
        }
        if self.store.is_none() {
            self.pending.clear();
            return;
        }
        self.flushing = true;
        let delay = self.commit_delay;
        let wait = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        };
        ctx.spawn(wait.into_actor(self).then(|(), act, _| {
            let batch = std::mem::take(&mut act.pending);
            let acks = std::mem::take(&mut act.acks);
            let n = batch.len();
            let mut dims = std::mem::take(&mut act.dims);
            type Done = (Result<(), String>, DimIds);
            let commit: std::pin::Pin<Box<dyn Future<Output = Done>>> = match &act.store {
                Some(Store::Sqlite(db, _)) => {
                    let done = Store::append_sqlite(db, &mut dims, &batch);
                    Box::pin(std::future::ready((done, dims)))
                }
                Some(Store::Postgres(pool)) => {
                    let pool = pool.clone();
                    Box::pin(async move {
                        let done = Store::append_postgres(pool, &mut dims, &batch).await;
                        (done, dims)
                    })
                }
                None => Box::pin(std::future::ready((Ok(()), dims))),
            };
            commit.into_actor(act).map(move |(result, dims), act, ctx| {
                act.flushing = false;
                act.dims = dims;
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
            })
        }));
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

impl Handler<Flush> for Ledger {
    type Result = ();

    fn handle(&mut self, _: Flush, _ctx: &mut Context<Self>) {
        if let Some(Store::Sqlite(_, Some(disk))) = &self.store {
            disk.spool.stop();
        }
        self.load_spool();
    }
}

impl Handler<UsageQuery> for Ledger {
    type Result = ResponseFuture<Result<Vec<UsageRow>, String>>;

    fn handle(&mut self, q: UsageQuery, _ctx: &mut Context<Self>) -> Self::Result {
        // Every row recorded before the question is in the answer.
        self.load_spool();
        match &self.store {
            None => Box::pin(std::future::ready(Err("the ledger is off".to_owned()))),
            Some(Store::Sqlite(db, _)) => Box::pin(std::future::ready(q.on_sqlite(db))),
            Some(Store::Postgres(pool)) => {
                let pool = pool.clone();
                Box::pin(async move { q.on_postgres(&pool).await })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> PricedRecord {
        PricedRecord {
            record: super::super::UsageRecord {
                tenant: "t".into(),
                proxy: "p".into(),
                route: "r".into(),
                provider: "openai".into(),
                provider_kind: crate::config::ProviderKind::OpenAi,
                model: "gpt-4o-mini".into(),
                api_key: "k".into(),
                topic: None,
                endpoint: crate::api::Endpoint::ChatCompletions,
                stream: false,
                usage: None,
                estimated: false,
                request_id: format!("req_{i}"),
            },
            at_ms: 1,
            cost: None,
        }
    }

    /// The SQLite ledger in the file at `path`, with what it has on disk (spool, checkpointer).
    async fn open_file(path: &std::path::Path) -> (rusqlite::Connection, OnDisk) {
        let url = LedgerUrl::Sqlite(format!("sqlite://{}", path.display()));
        let Some(Store::Sqlite(db, Some(disk))) = Store::open(&url).await.expect("open") else {
            panic!("a SQLite file ledger with its spool");
        };
        (db, disk)
    }

    #[actix_web::test]
    async fn the_writer_never_checkpoints_and_the_checkpointer_does() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.db");
        let (db, _checkpointer) = open_file(&path).await;
        let batch: Vec<_> = (0..2000).map(record).collect();
        // The database file's size right after the writes, and once a checkpoint had time.
        let file = || std::fs::metadata(&path).map(|m| m.len()).expect("db file");
        Store::append_sqlite(&db, &mut DimIds::default(), &batch).expect("append");
        let written = file();
        // The checkpointer runs on its own clock from the open: on a loaded machine the append
        // can straddle one of its rounds, so wait for the next ones rather than for one period.
        let deadline = std::time::Instant::now() + 10 * CHECKPOINT_EVERY;
        let mut checkpointed = file();
        while checkpointed <= written + 4096 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            checkpointed = file();
        }
        assert!(
            checkpointed > written + 4096,
            "the rows reached the database file: {written} then {checkpointed} bytes"
        );
        let q = UsageQuery::all("t", GroupBy::Total);
        assert_eq!(q.on_sqlite(&db).expect("query")[0].requests, 2000);
    }

    /// The rows and their summed picodollars in the ledger's table, and its spool marks.
    fn counts(db: &rusqlite::Connection) -> ((i64, Option<i64>), i64) {
        let rows = db
            .query_row(
                "SELECT COUNT(*), SUM(cost_pusd) FROM usage_ledger",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("count");
        let marks = db
            .query_row("SELECT COUNT(*) FROM ledger_spool", [], |r| r.get(0))
            .expect("marks");
        (rows, marks)
    }

    fn priced(i: usize) -> PricedRecord {
        let mut r = record(i);
        r.cost = Some(Decimal::from_str("0.000001425").expect("d"));
        r
    }

    #[actix_web::test]
    async fn the_segment_being_written_is_loaded_in_parts_each_row_once() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.db");
        let (db, disk) = open_file(&path).await;
        let load = || {
            load_segments(&db, &mut DimIds::default(), &disk.spool.written(), &[]).expect("load")
        };
        for i in 0..2 {
            disk.spool
                .append(&spool_record(&priced(i)))
                .expect("append");
        }
        assert_eq!(load().rows, 2);
        // Loaded again with one more row: only the new one goes in.
        disk.spool
            .append(&spool_record(&priced(2)))
            .expect("append");
        let loaded = load();
        assert_eq!((loaded.rows, loaded.torn), (1, 0));
        assert_eq!(load().rows, 0);
        assert_eq!(counts(&db), ((3, Some(3 * 1_425_000)), 1));
        // The segment's file as a crash would leave it (the mapping is its page cache): its
        // mark says all three rows are in, and its zero tail is not a torn record.
        let written = disk.spool.written();
        let file = Written::from_file(written[0].path().to_owned()).expect("read");
        assert_eq!(file.end(), super::super::spool::SEGMENT_BYTES);
        let loaded =
            load_segments(&db, &mut DimIds::default(), &[file], &[]).expect("load the file");
        assert_eq!((loaded.rows, loaded.torn, loaded.gone.len()), (0, 0, 1));
        assert_eq!(counts(&db).0.0, 3);
    }

    /// `record` as an older gateway spooled it: its row as a JSON line.
    fn json_line(record: &PricedRecord) -> Vec<u8> {
        let cost_usd = record.cost.map(|c| c.to_string());
        let mut line = serde_json::to_vec(&RowValues::of(record, &cost_usd)).expect("json");
        line.push(b'\n');
        line
    }

    #[actix_web::test]
    async fn a_crashed_segment_is_loaded_once_its_torn_record_skipped_and_its_zero_tail_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.db");
        let (db, _disk) = open_file(&path).await;
        // Another gateway's spool (another file beside it), killed mid-row.
        let crashed = dir.path().join("crashed.db");
        let (spool, _) = Spool::open(&crashed).expect("spool");
        // A key of quotes, a backslash, a control character and more than ASCII.
        let odd = "k \"quoted\" \\ \u{1} ключ";
        for i in 0..3 {
            let mut r = priced(i);
            if i == 2 {
                r.record.api_key = odd.into();
            }
            spool.append(&spool_record(&r)).expect("append");
        }
        // A crash in the middle of a copy leaves part of a record, then the segment's zeros.
        let torn = spool_record(&priced(3));
        spool.append(&torn[..torn.len() / 2]).expect("append");
        drop(spool);
        let (_spool, left) = Spool::open(&crashed).expect("reopen");
        assert_eq!(left.len(), 1);
        let segment = left[0].path().to_owned();
        let copy = dir.path().join("copy");
        std::fs::copy(&segment, &copy).expect("copy");
        let loaded = load_segments(&db, &mut DimIds::default(), &left, &[]).expect("load");
        assert_eq!((loaded.rows, loaded.torn), (3, 1));
        assert_eq!(counts(&db), ((3, Some(3 * 1_425_000)), 1));
        let key: String = db
            .query_row(
                "SELECT api_key FROM usage_ledger WHERE request_id = 'req_2'",
                [],
                |r| r.get(0),
            )
            .expect("key");
        assert_eq!(key, odd);
        assert!(!segment.exists(), "a loaded closed segment is deleted");
        // A crash after the commit but before the delete: the file is back, and not loaded twice.
        std::fs::rename(&copy, &segment).expect("restore");
        let again = Written::from_file(segment.clone()).expect("read");
        let reloaded = load_segments(&db, &mut DimIds::default(), &[again], &[]).expect("again");
        assert_eq!((reloaded.rows, reloaded.torn, counts(&db).0.0), (0, 0, 3));
        assert_eq!(counts(&db).1, 1);
        load_segments(&db, &mut DimIds::default(), &[], &reloaded.gone).expect("forget");
        assert_eq!(counts(&db).1, 0);
    }

    #[actix_web::test]
    async fn an_older_gateways_json_segment_is_loaded_its_torn_and_bad_lines_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.db");
        let (db, _disk) = open_file(&path).await;
        // An older gateway's spool (another file beside it), killed mid-row.
        let crashed = dir.path().join("crashed.db");
        let (spool, _) = Spool::open(&crashed).expect("spool");
        // One key JSON must escape (its row cannot borrow its strings from the segment).
        let escaped = "k \"quoted\" \\ \u{1}";
        for i in 0..3 {
            let mut r = priced(i);
            if i == 2 {
                r.record.api_key = escaped.into();
            }
            spool.append(&json_line(&r)).expect("append");
            if i == 0 {
                // A line that is not even UTF-8: skipped, and the others still load.
                spool.append(b"\xff\xfe{\n").expect("append");
            }
        }
        // A crash in the middle of a copy leaves half a line, then the segment's zeros.
        spool.append(b"{\"ints\":[1,0").expect("append");
        drop(spool);
        let (_spool, left) = Spool::open(&crashed).expect("reopen");
        let loaded = load_segments(&db, &mut DimIds::default(), &left, &[]).expect("load");
        assert_eq!((loaded.rows, loaded.torn), (3, 2));
        assert_eq!(counts(&db), ((3, Some(3 * 1_425_000)), 1));
        let key: String = db
            .query_row(
                "SELECT api_key FROM usage_ledger WHERE request_id = 'req_2'",
                [],
                |r| r.get(0),
            )
            .expect("key");
        assert_eq!(key, escaped);
    }

    #[actix_web::test]
    async fn a_ledger_file_with_whole_segment_marks_keeps_them_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.db");
        // A file and spool as the gateway left them before marks had `loaded`: one segment
        // loaded (marked), one not.
        {
            let db = rusqlite::Connection::open(&path).expect("db");
            db.execute_batch(OLD_SCHEMA).expect("schema");
            db.execute_batch(
                "CREATE TABLE ledger_spool (segment TEXT PRIMARY KEY NOT NULL);
                 INSERT INTO ledger_spool (segment) VALUES ('0-000000000.rows')",
            )
            .expect("old marks");
        }
        let spool = dir.path().join("ledger.db-spool");
        std::fs::create_dir_all(&spool).expect("spool dir");
        // Its rows as it spooled them, JSON lines: loaded at start-up all the same.
        std::fs::write(spool.join("0-000000000.rows"), json_line(&priced(0))).expect("seg");
        std::fs::write(spool.join("0-000000001.rows"), json_line(&priced(1))).expect("seg");
        let (db, _disk) = open_file(&path).await;
        let ids: Vec<String> = db
            .prepare("SELECT request_id FROM usage_ledger")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("ids");
        assert_eq!(ids, ["req_1"]);
        assert_eq!(
            counts(&db).1,
            0,
            "both marks forgotten once their files went"
        );
    }

    /// `usage_ledger` as a ledger held it before `ledger_dims`: one table of 20 columns.
    const OLD_SCHEMA: &str = "CREATE TABLE usage_ledger (
            at_ms BIGINT NOT NULL, request_id TEXT NOT NULL, tenant TEXT NOT NULL,
            proxy TEXT NOT NULL, route TEXT NOT NULL, provider TEXT NOT NULL,
            provider_type TEXT NOT NULL, model TEXT NOT NULL, api_key TEXT NOT NULL, topic TEXT,
            endpoint TEXT NOT NULL, stream BIGINT NOT NULL, input_tokens BIGINT,
            cached_input_tokens BIGINT, cache_write_tokens BIGINT, output_tokens BIGINT,
            reasoning_tokens BIGINT, cost_usd TEXT, cost_pusd BIGINT, estimated BIGINT NOT NULL
        );
        CREATE INDEX usage_ledger_tenant_at ON usage_ledger (tenant, at_ms);";

    /// The usage of `group_by`'s groups in `tenant`'s rows from `from_ms` to `to_ms`: each
    /// group's value, requests, input tokens, cost and estimated requests.
    fn usage(
        db: &rusqlite::Connection,
        tenant: &str,
        (from_ms, to_ms): (i64, i64),
        group_by: GroupBy,
    ) -> Vec<(Option<String>, i64, i64, String, i64)> {
        let q = UsageQuery {
            tenant: tenant.into(),
            from_ms,
            to_ms,
            group_by,
        };
        q.on_sqlite(db)
            .expect("query")
            .into_iter()
            .map(|r| {
                let cost = r.cost.to_string();
                (
                    r.group,
                    r.requests,
                    r.input_tokens,
                    cost,
                    r.estimated_requests,
                )
            })
            .collect()
    }

    fn dims_count(db: &rusqlite::Connection) -> i64 {
        db.query_row("SELECT COUNT(*) FROM ledger_dims", [], |r| r.get(0))
            .expect("dims")
    }

    #[actix_web::test]
    async fn a_ledger_file_from_before_dims_is_migrated_and_reads_back_the_same() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ledger.db");
        let old_rows = "(1000, 'req_a', 't', 'p', 'r1', 'openai', 'openai', 'gpt-4o-mini', 'k1',
                NULL, '/v1/chat/completions', 0, 10, 0, 0, 5, 0, '0.000001425', 1425000, 0),
            (2000, 'req_b', 't', 'p', 'r1', 'openai', 'openai', 'gpt-4o-mini', 'k1',
                'billing', '/v1/chat/completions', 1, 20, 0, 0, 7, 0, NULL, NULL, 1),
            (3000, 'req_c', 't', 'p', 'r2', 'openai', 'openai', 'gpt-4o', 'k2',
                NULL, '/v1/responses', 0, 30, 0, 0, 9, 0, '0.5', 500000000000, 0),
            (3500, 'req_d', 't', 'p', 'r1', 'openai', 'openai', 'gpt-4o-mini', 'k1',
                NULL, '/v1/chat/completions', 0, 40, 0, 0, 1, 0, '0.25', 250000000000, 0),
            (4000, 'req_e', 'other', 'p', 'r1', 'openai', 'openai', 'gpt-4o-mini', 'k1',
                NULL, '/v1/chat/completions', 0, 50, 0, 0, 1, 0, NULL, NULL, 0)";
        let read_old = |db: &rusqlite::Connection| -> Vec<Vec<rusqlite::types::Value>> {
            let mut q = db
                .prepare("SELECT * FROM usage_ledger ORDER BY request_id")
                .expect("prepare");
            let n = q.column_count();
            q.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        let before = {
            let db = rusqlite::Connection::open(&path).expect("db");
            db.execute_batch(OLD_SCHEMA).expect("old schema");
            db.execute_batch(&format!("INSERT INTO usage_ledger VALUES {old_rows}"))
                .expect("old rows");
            read_old(&db)
        };
        let (db, _disk) = open_file(&path).await;
        // The documented table is a view with the same columns and rows.
        let kind: String = db
            .query_row(
                "SELECT type FROM sqlite_master WHERE name = 'usage_ledger'",
                [],
                |r| r.get(0),
            )
            .expect("usage_ledger");
        assert_eq!(kind, "view");
        assert_eq!(read_old(&db), before);
        assert_eq!(before.len(), 5);
        // Four dimension tuples: tenant t's rows a and d share one.
        assert_eq!(dims_count(&db), 4);
        let all = (0, 10_000);
        let some = |g: &str| Some(g.to_owned());
        assert_eq!(
            usage(&db, "t", all, GroupBy::Model),
            [
                (some("gpt-4o"), 1, 30, "0.5".into(), 0),
                (some("gpt-4o-mini"), 3, 70, "0.250001425".into(), 1),
            ]
        );
        assert_eq!(
            usage(&db, "t", all, GroupBy::Topic),
            [
                (None, 3, 80, "0.750001425".into(), 0),
                (some("billing"), 1, 20, "0".into(), 1),
            ]
        );
        assert_eq!(
            usage(&db, "t", (2000, 3500), GroupBy::Route),
            [
                (some("r1"), 1, 20, "0".into(), 1),
                (some("r2"), 1, 30, "0.5".into(), 0),
            ]
        );
        assert_eq!(
            usage(&db, "other", all, GroupBy::Total),
            [(None, 1, 50, "0".into(), 0)]
        );
        // Opened again: nothing to migrate, nothing changes.
        drop((db, _disk));
        let (db, _disk) = open_file(&path).await;
        assert_eq!(read_old(&db), before);
    }

    #[actix_web::test]
    async fn a_rows_dimensions_are_written_once_even_by_a_ledger_that_did_not_know_them() {
        let (db, _) = open_sqlite("sqlite::memory:").expect("db");
        sqlite_schema(&db).expect("schema");
        let mut ids = DimIds::default();
        Store::append_sqlite(&db, &mut ids, &[record(0), record(1)]).expect("append");
        assert_eq!(dims_count(&db), 1);
        let mut other = record(2);
        other.record.topic = Some("billing".into());
        Store::append_sqlite(&db, &mut ids, &[record(3), other]).expect("append");
        assert_eq!(dims_count(&db), 2);
        // A restarted ledger (nothing known) finds the tuple already written.
        Store::append_sqlite(&db, &mut DimIds::default(), &[record(4)]).expect("append");
        assert_eq!(dims_count(&db), 2);
        assert_eq!(
            usage(&db, "t", (0, 10), GroupBy::Topic),
            [
                (None, 4, 0, "0".into(), 0),
                (Some("billing".into()), 1, 0, "0".into(), 0)
            ]
        );
    }

    #[test]
    fn one_tenants_time_range_is_read_through_the_index() {
        let (db, _) = open_sqlite("sqlite::memory:").expect("db");
        sqlite_schema(&db).expect("schema");
        let plan: Vec<String> = db
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                UsageQuery::all("t", GroupBy::Model).sql()
            ))
            .expect("plan")
            .query_map(["t", "0", "1"], |r| r.get(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH d USING COVERING INDEX")
                    || step.starts_with("SEARCH d USING INDEX")),
            "{plan:?}"
        );
        assert!(
            plan.iter().any(|step| step
                .contains("USING INDEX usage_rows_dims_at (dims=? AND at_ms>? AND at_ms<?)")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_dimension_tuple_is_known_only_when_every_value_matches() {
        let tuple = |route: &'static str, topic: &'static str, stream: i64| -> Dims<'static> {
            (
                ["t", "p", route, "openai", "openai", "m", "k", "/e", topic],
                stream,
            )
        };
        let mut ids = DimIds::default();
        assert_eq!(ids.known(&tuple("r", "", 0)), None);
        ids.learn(1);
        assert_eq!(ids.known(&tuple("r", "", 0)), Some(1));
        // Another value, another flag, another topic: other tuples.
        assert_eq!(ids.known(&tuple("ro", "", 0)), None);
        ids.learn(2);
        assert_eq!(ids.known(&tuple("r", "", 1)), None);
        ids.learn(3);
        assert_eq!(ids.known(&tuple("r", "x", 0)), None);
        // Each known one, after another was last.
        assert_eq!(ids.known(&tuple("r", "", 0)), Some(1));
        assert_eq!(ids.known(&tuple("ro", "", 0)), Some(2));
        assert_eq!(ids.known(&tuple("r", "", 1)), Some(3));
        assert_eq!(ids.known(&tuple("r", "", 1)), Some(3));
        ids.forget();
        assert_eq!(ids.known(&tuple("r", "", 1)), None);
        assert_eq!(ids.known(&tuple("r", "", 1)), None);
    }

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
    fn a_costs_text_is_decimals_own() {
        let mantissas = [
            0,
            1,
            9,
            10,
            1_425,
            1_000_000,
            123_456_789_012,
            i128::from(u64::MAX),
            i128::from(u64::MAX) + 1,
            79_228_162_514_264_337_593_543_950_335,
        ];
        let mut checked = 0;
        for m in mantissas {
            for scale in 0..=28 {
                for sign in [1, -1] {
                    let d = Decimal::from_i128_with_scale(sign * m, scale);
                    assert_eq!(cost_text(d), d.to_string(), "{m} at scale {scale}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 10 * 29 * 2);
        let price = Decimal::from_str("0.000001425").expect("d");
        assert_eq!(cost_text(price), "0.000001425");
        assert_eq!(cost_text(price * Decimal::from(1000)), "0.001425000");
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
