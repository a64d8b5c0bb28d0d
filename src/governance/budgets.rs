//! Budgets: USD or tokens per day or month, per tenant and per API key, enforced with
//! reservations.
//!
//! Owns the spend counters and the [`Reservation`] guard. Before a request goes upstream, an
//! estimate of its cost (its input at about four characters a token plus its `max_tokens`, at
//! the routed model's price) is reserved against every budget that applies; the request is
//! refused when spent + reserved + the estimate would pass a budget. When its usage is
//! recorded the reservation is settled (replaced by the actual cost); dropped unsettled (an
//! error, a cancelled call) it is released. So concurrent requests overshoot a budget by at
//! most the reservations in flight. Counters live in process, per period (the UTC day or
//! month), so a budget starts again at each period; they are not yet shared by replicas nor
//! seeded from the ledger at start (see docs/governance.md).

use crate::api::canonical::Usage;
use crate::config::{Budget, BudgetLimit, Period, TenantGovernance};
use crate::error::GatewayError;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Output tokens assumed for a request that sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Spent and reserved amounts per budget and period (picodollars or tokens).
#[derive(Clone, Debug, Default)]
pub struct Budgets(Arc<Mutex<HashMap<String, Counter>>>);

#[derive(Clone, Copy, Debug, Default)]
struct Counter {
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
fn counter_name(tenant: &str, budget: &Budget, now_ms: i64) -> String {
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

/// `year * 12 + month - 1` of a day number since 1970-01-01 (Hinnant's civil-from-days).
fn month_of_day(z: i64) -> i64 {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    y * 12 + m - 1
}

impl Budgets {
    /// Reserves `estimate` against every budget of `tenant` that applies to `key`, or refuses
    /// with the budget that would be passed (and whether it diverts to the fallback route).
    pub fn reserve(
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
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
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

    /// What `tenant`'s budget `budget` has spent in the current period (picodollars or tokens).
    pub fn spent(&self, tenant: &str, budget: &Budget, now_ms: i64) -> i128 {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut map = self.budgets.0.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut map = self.budgets.0.lock().unwrap_or_else(|p| p.into_inner());
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
        let first = b.reserve(&t, "t", "k", est(2_000_000), 0).expect("fits");
        assert!(
            b.reserve(&t, "t", "k", est(2_000_000), 0).is_err(),
            "2 + 2 > 3"
        );
        drop(first);
        let again = b
            .reserve(&t, "t", "k", est(2_000_000), 0)
            .expect("released");
        again.settle(None, Some(Decimal::from_str("0.0000025").expect("d")));
        assert_eq!(b.spent("t", &t.budgets[0], 0), 2_500_000);
        assert!(
            b.reserve(&t, "t", "k", est(600_000), 0).is_err(),
            "2.5 + 0.6 > 3"
        );
        assert!(
            b.reserve(&t, "t", "k", est(500_000), 0).is_ok(),
            "2.5 + 0.5 = 3"
        );
        // The next day starts again.
        assert!(b.reserve(&t, "t", "k", est(2_000_000), 86_400_000).is_ok());
    }

    #[test]
    fn a_key_budget_applies_to_that_key_only() {
        let b = Budgets::default();
        let t = tenant(vec![usd("0.000001", Some("ci"))]);
        let e = b
            .reserve(&t, "t", "ci", est(2_000_000), 0)
            .expect_err("over");
        assert!(
            e.error().to_string().contains("API key 'ci'"),
            "{}",
            e.error()
        );
        assert!(b.reserve(&t, "t", "demo", est(2_000_000), 0).is_ok());
    }

    #[test]
    fn months_and_picodollars() {
        assert_eq!(month_of_day(0), 1970 * 12);
        assert_eq!(month_of_day(31), 1970 * 12 + 1);
        assert_eq!(
            picodollars(Decimal::from_str("0.0000099").expect("d")),
            9_900_000
        );
    }
}
