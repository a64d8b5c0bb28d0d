//! Budgets: USD or tokens per day or month, per tenant and per API key, enforced with
//! reservations.
//!
//! Owns the spend counters and the [`Reservation`] guard. Before a request goes upstream, an
//! estimate of its cost (its input's tokens by `api::usage::estimate_tokens` plus its `max_tokens`, at
//! the price of the costliest route it may be answered on: the routed one or a fallback) is
//! reserved against every budget that applies; the request is
//! refused when spent + reserved + the estimate would pass a budget. When its usage is
//! recorded the reservation is settled (replaced by the actual cost); dropped unsettled (an
//! error, a cancelled call) it is released. So concurrent requests overshoot a budget by at
//! most the reservations in flight. Counters are per period (the UTC day or month), so a
//! budget starts again at each period. They live in process by default (each seeded from the
//! ledger's record of the period when first used, by `Meter::reserve`) or, with `--redis`, in Redis,
//! shared by replicas, where reserving (check every budget, then hold) and settling are each
//! one Lua script.

use crate::api::canonical::Usage;
use crate::config::{Budget, BudgetLimit, Period, TenantGovernance};
use crate::error::GatewayError;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Output tokens assumed for a request that sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Spent and reserved amounts per budget and period (picodollars or tokens): in process, or
/// in Redis.
#[derive(Clone)]
pub enum Budgets {
    Local(Arc<Mutex<HashMap<String, Counter>>>),
    Redis(redis::aio::ConnectionManager),
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::Local(Arc::default())
    }
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Budgets::Local(_) => "Budgets::Local",
            Budgets::Redis(_) => "Budgets::Redis",
        })
    }
}

/// How long a period's Redis counters outlive it (then they expire).
const REDIS_TTL_MS: u64 = 40 * 86_400_000;

/// Checks every budget, then holds: KEYS spent/reserved pairs, ARGV the TTL then a
/// ceiling/amount pair per budget. Returns 0, or the 1-based index of the budget passed.
const RESERVE: &str = r"
local n = #KEYS / 2
for i = 1, n do
  local spent = tonumber(redis.call('GET', KEYS[2*i-1]) or '0')
  local reserved = tonumber(redis.call('GET', KEYS[2*i]) or '0')
  if spent + reserved + tonumber(ARGV[2*i+1]) > tonumber(ARGV[2*i]) then return i end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[2*i], ARGV[2*i+1])
  redis.call('PEXPIRE', KEYS[2*i], ARGV[1])
end
return 0
";

/// Settles or releases: KEYS spent/reserved pairs, ARGV the TTL then a reserved/actual pair
/// per budget.
const SETTLE: &str = r"
for i = 1, #KEYS / 2 do
  redis.call('DECRBY', KEYS[2*i], ARGV[2*i])
  if tonumber(ARGV[2*i+1]) ~= 0 then
    redis.call('INCRBY', KEYS[2*i-1], ARGV[2*i+1])
    redis.call('PEXPIRE', KEYS[2*i-1], ARGV[1])
  end
end
return 0
";

static RESERVE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RESERVE));
static SETTLE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SETTLE));

fn redis_keys(name: &str) -> [String; 2] {
    [
        format!("switchyard:budget:{name}:spent"),
        format!("switchyard:budget:{name}:reserved"),
    ]
}

/// Runs SETTLE for `held` with `actual` amounts, in the background (a settle never holds up
/// an answer; a failure is logged and the reservation expires with its period).
fn settle_in_redis(conn: &redis::aio::ConnectionManager, held: Vec<(String, i128, i128)>) {
    let mut conn = conn.clone();
    actix::spawn(async move {
        let mut call = SETTLE_SCRIPT.prepare_invoke();
        call.arg(REDIS_TTL_MS);
        for (name, reserved, actual) in &held {
            let [spent_key, reserved_key] = redis_keys(name);
            call.key(spent_key).key(reserved_key);
            call.arg(clamp(*reserved)).arg(clamp(*actual));
        }
        if let Err(err) = call.invoke_async::<i64>(&mut conn).await {
            tracing::warn!(%err, "could not settle a budget reservation in redis");
        }
    });
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Counter {
    spent: i128,
    reserved: i128,
}

/// What a request is expected to cost, for its reservation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Estimate {
    /// Picodollars; `None` when the model has no price (USD budgets then reserve nothing).
    pub picodollars: Option<i128>,
    pub tokens: u64,
}

/// Picodollars of a cost (exact for prices with up to six decimals per million tokens).
pub fn picodollars(cost: Decimal) -> i128 {
    let scaled = cost.saturating_mul(Decimal::from(1_000_000_000_000_i64));
    rust_decimal::prelude::ToPrimitive::to_i128(&scaled.round()).unwrap_or(i128::MAX)
}

/// The amount a budget counts of an estimate or an actual cost.
fn amount(limit: &BudgetLimit, picodollars: Option<i128>, tokens: u64) -> i128 {
    match limit {
        BudgetLimit::Usd(_) => picodollars.unwrap_or(0),
        BudgetLimit::Tokens(_) => i128::from(tokens),
    }
}

fn ceiling(limit: &BudgetLimit) -> i128 {
    match limit {
        BudgetLimit::Usd(usd) => picodollars(*usd),
        BudgetLimit::Tokens(t) => i128::from(*t),
    }
}

/// The counter of `budget` for `tenant` in the current period.
pub(super) fn counter_name(tenant: &str, budget: &Budget, now_ms: i64) -> String {
    let day = now_ms.div_euclid(86_400_000);
    let period = match budget.period {
        Period::Day => format!("d{day}"),
        // Months by the civil calendar: year * 12 + month of the day.
        Period::Month => format!("m{}", month_of_day(day)),
    };
    let unit = match budget.limit {
        BudgetLimit::Usd(_) => "usd",
        BudgetLimit::Tokens(_) => "tok",
    };
    let key = budget.key.as_deref().unwrap_or("*");
    format!("{tenant}\u{1f}{key}\u{1f}{unit}\u{1f}{period}")
}

/// Unix milliseconds when the period holding `now_ms` began.
pub(super) fn period_start(period: Period, now_ms: i64) -> i64 {
    let day = now_ms.div_euclid(86_400_000);
    let first = match period {
        Period::Day => day,
        Period::Month => {
            let ym = month_of_day(day);
            super::calendar::days_from_civil(ym.div_euclid(12), ym.rem_euclid(12) + 1, 1)
        }
    };
    first * 86_400_000
}

/// `year * 12 + month - 1` of a day number since 1970-01-01.
fn month_of_day(z: i64) -> i64 {
    let (y, m, _) = super::calendar::civil_from_days(z);
    y * 12 + m - 1
}

impl Budgets {
    /// Counters in the Redis at `url`.
    pub async fn redis(url: &str) -> Result<Self, String> {
        let manager = super::redis_manager(url).await?;
        Ok(Budgets::Redis(manager))
    }

    /// Reserves `estimate` against every budget of `tenant` that applies to `key`, or refuses
    /// with the budget that would be passed (and whether it diverts to the fallback route).
    pub async fn reserve(
        &self,
        governance: &TenantGovernance,
        tenant: &str,
        key: &str,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<Reservation, Exhausted> {
        let Budgets::Redis(conn) = self else {
            return self.reserve_local(governance, tenant, key, estimate, now_ms);
        };
        let applying: Vec<&Budget> = governance
            .budgets
            .iter()
            .filter(|b| b.key.as_deref().is_none_or(|k| k == key))
            .collect();
        let mut held = Vec::with_capacity(applying.len());
        let mut call = RESERVE_SCRIPT.prepare_invoke();
        call.arg(REDIS_TTL_MS);
        for b in &applying {
            let name = counter_name(tenant, b, now_ms);
            let want = amount(&b.limit, estimate.picodollars, estimate.tokens);
            let [spent_key, reserved_key] = redis_keys(&name);
            call.key(spent_key).key(reserved_key);
            call.arg(clamp(ceiling(&b.limit))).arg(clamp(want));
            held.push((name, b.limit.clone(), want));
        }
        if applying.is_empty() {
            return Ok(Reservation {
                budgets: self.clone(),
                held,
            });
        }
        match call.invoke_async::<i64>(&mut conn.clone()).await {
            Ok(0) => Ok(Reservation {
                budgets: self.clone(),
                held,
            }),
            Ok(i) => {
                let b = applying[usize::try_from(i - 1).unwrap_or(0).min(applying.len() - 1)];
                Err(Exhausted {
                    budget: b.clone(),
                    spent: 0,
                })
            }
            Err(err) => {
                // Fail open: a budget store that is down must not stop all traffic; the
                // ledger still records the spend.
                tracing::warn!(%err, "budget store unavailable: request not reserved");
                Ok(Reservation {
                    budgets: self.clone(),
                    held: Vec::new(),
                })
            }
        }
    }

    fn reserve_local(
        &self,
        governance: &TenantGovernance,
        tenant: &str,
        key: &str,
        estimate: Estimate,
        now_ms: i64,
    ) -> Result<Reservation, Exhausted> {
        let applying: Vec<&Budget> = governance
            .budgets
            .iter()
            .filter(|b| b.key.as_deref().is_none_or(|k| k == key))
            .collect();
        let mut held = Vec::with_capacity(applying.len());
        if applying.is_empty() {
            return Ok(Reservation {
                budgets: self.clone(),
                held,
            });
        }
        let Budgets::Local(map) = self else {
            return Err(Exhausted {
                budget: applying[0].clone(),
                spent: 0,
            });
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        for b in &applying {
            let name = counter_name(tenant, b, now_ms);
            let c = map.get(&name).copied().unwrap_or_default();
            let want = amount(&b.limit, estimate.picodollars, estimate.tokens);
            if c.spent + c.reserved + want > ceiling(&b.limit) {
                return Err(Exhausted {
                    budget: (*b).clone(),
                    spent: c.spent,
                });
            }
        }
        for b in applying {
            let name = counter_name(tenant, b, now_ms);
            let want = amount(&b.limit, estimate.picodollars, estimate.tokens);
            map.entry(name.clone()).or_default().reserved += want;
            held.push((name, b.limit.clone(), want));
        }
        Ok(Reservation {
            budgets: self.clone(),
            held,
        })
    }

    /// Whether the in-process counter `name` has yet to be seeded from the ledger.
    pub(super) fn unseeded(&self, name: &str) -> bool {
        match self {
            Budgets::Local(map) => !map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name),
            Budgets::Redis(_) => false,
        }
    }

    /// Starts the in-process counter `name` at `spent`, unless it started already.
    pub(super) fn seed(&self, name: String, spent: i128) {
        if let Budgets::Local(map) = self {
            map.lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name)
                .or_insert(Counter { spent, reserved: 0 });
        }
    }

    /// A hold of nothing on every budget of `tenant` that applies to `key`: settled, it adds
    /// what the request cost to their spend. For a request an exhausted budget diverted to the
    /// fallback route, whose spend must count like any other's.
    pub fn charge_only(
        &self,
        governance: &TenantGovernance,
        tenant: &str,
        key: &str,
        now_ms: i64,
    ) -> Reservation {
        let held = governance
            .budgets
            .iter()
            .filter(|b| b.key.as_deref().is_none_or(|k| k == key))
            .map(|b| (counter_name(tenant, b, now_ms), b.limit.clone(), 0))
            .collect();
        Reservation {
            budgets: self.clone(),
            held,
        }
    }

    /// What `tenant`'s budget `budget` has spent in the current period (picodollars or tokens).
    pub fn spent(&self, tenant: &str, budget: &Budget, now_ms: i64) -> i128 {
        let Budgets::Local(map) = self else {
            return 0;
        };
        let map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&counter_name(tenant, budget, now_ms))
            .map_or(0, |c| c.spent)
    }
}

/// A request's hold on its budgets: settled with the actual cost, or released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budgets: Budgets,
    held: Vec<(String, BudgetLimit, i128)>,
}

impl Reservation {
    /// Replaces the reservation with what the request actually cost.
    pub fn settle(mut self, usage: Option<&Usage>, cost: Option<Decimal>) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        let tokens = usage.map_or(0, Usage::total);
        let pusd = cost.map(picodollars);
        let map = match &self.budgets {
            Budgets::Local(map) => map,
            Budgets::Redis(conn) => {
                let held = held
                    .into_iter()
                    .map(|(name, limit, reserved)| (name, reserved, amount(&limit, pusd, tokens)))
                    .collect();
                settle_in_redis(conn, held);
                return;
            }
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        for (name, limit, reserved) in held {
            let c = map.entry(name).or_default();
            c.reserved -= reserved;
            c.spent += amount(&limit, pusd, tokens);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let map = match &self.budgets {
            Budgets::Local(map) => map,
            Budgets::Redis(conn) => {
                let held = self.held.drain(..).map(|(n, _, r)| (n, r, 0)).collect();
                settle_in_redis(conn, held);
                return;
            }
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        for (name, _, reserved) in self.held.drain(..) {
            if let Some(c) = map.get_mut(&name) {
                c.reserved -= reserved;
            }
        }
    }
}

/// A budget that a request would pass.
#[derive(Debug)]
pub struct Exhausted {
    pub budget: Budget,
    pub spent: i128,
}

impl Exhausted {
    /// The 429 for a request refused (not diverted) by a budget.
    pub fn error(&self) -> GatewayError {
        let whose = match &self.budget.key {
            Some(k) => format!("API key '{k}'"),
            None => "tenant".to_owned(),
        };
        let period = match self.budget.period {
            Period::Day => "day",
            Period::Month => "month",
        };
        let limit = match &self.budget.limit {
            BudgetLimit::Usd(usd) => format!("${usd}"),
            BudgetLimit::Tokens(t) => format!("{t} tokens"),
        };
        GatewayError::BudgetExhausted {
            message: format!(
                "The {whose}'s budget of {limit} per {period} is spent; it renews at the start of the next {period} (UTC)."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn tenant(budgets: Vec<Budget>) -> TenantGovernance {
        TenantGovernance {
            budgets,
            ..TenantGovernance::default()
        }
    }

    fn usd(s: &str, key: Option<&str>) -> Budget {
        Budget {
            key: key.map(str::to_owned),
            limit: BudgetLimit::Usd(Decimal::from_str(s).expect("decimal")),
            period: Period::Day,
            divert: false,
        }
    }

    fn est(p: i128) -> Estimate {
        Estimate {
            picodollars: Some(p),
            tokens: 10,
        }
    }

    #[test]
    fn reservations_in_flight_count_against_the_budget_and_are_released_when_dropped() {
        let b = Budgets::default();
        // $0.000003 = 3,000,000 picodollars.
        let t = tenant(vec![usd("0.000003", None)]);
        let first = b
            .reserve_local(&t, "t", "k", est(2_000_000), 0)
            .expect("fits");
        assert!(
            b.reserve_local(&t, "t", "k", est(2_000_000), 0).is_err(),
            "2 + 2 > 3"
        );
        drop(first);
        let again = b
            .reserve_local(&t, "t", "k", est(2_000_000), 0)
            .expect("released");
        again.settle(None, Some(Decimal::from_str("0.0000025").expect("d")));
        assert_eq!(b.spent("t", &t.budgets[0], 0), 2_500_000);
        assert!(
            b.reserve_local(&t, "t", "k", est(600_000), 0).is_err(),
            "2.5 + 0.6 > 3"
        );
        assert!(
            b.reserve_local(&t, "t", "k", est(500_000), 0).is_ok(),
            "2.5 + 0.5 = 3"
        );
        // The next day starts again.
        assert!(
            b.reserve_local(&t, "t", "k", est(2_000_000), 86_400_000)
                .is_ok()
        );
    }

    #[test]
    fn a_key_budget_applies_to_that_key_only() {
        let b = Budgets::default();
        let t = tenant(vec![usd("0.000001", Some("ci"))]);
        let e = b
            .reserve_local(&t, "t", "ci", est(2_000_000), 0)
            .expect_err("over");
        assert!(
            e.error().to_string().contains("API key 'ci'"),
            "{}",
            e.error()
        );
        assert!(b.reserve_local(&t, "t", "demo", est(2_000_000), 0).is_ok());
    }

    #[test]
    fn months_and_picodollars() {
        // 2026-11-30T21:00Z: the day and month began at 2026-11-30 and 2026-11-01.
        let now = 1_796_072_400_000;
        assert_eq!(period_start(Period::Day, now), 1_795_996_800_000);
        assert_eq!(period_start(Period::Month, now), 1_793_491_200_000);
        assert_eq!(
            period_start(Period::Month, 1_795_996_800_000 - 30 * 86_400_000 - 1),
            1_790_812_800_000
        );
        assert_eq!(month_of_day(0), 1970 * 12);
        assert_eq!(month_of_day(31), 1970 * 12 + 1);
        assert_eq!(
            picodollars(Decimal::from_str("0.0000099").expect("d")),
            9_900_000
        );
    }
}
