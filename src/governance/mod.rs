//! Governance and cost: what a request costs, who may send how much, and the ledger.
//!
//! Owns [`pricing`] (the price table and the one cost function), [`limits`] (requests and
//! tokens per minute, per tenant and per API key; in process or in Redis), [`ledger`] (the
//! actor on its own arbiter that owns the SQLite or PostgreSQL store) and [`Governance`], the
//! handle every worker shares. The request path reports a finished request's usage once,
//! through [`Governance::record`] with a [`UsageRecord`]: passthrough answers from the usage
//! tap (`api::usage`), translated ones from the relay's end hook. It does not parse usage from
//! wire formats (that is `api::usage` and the translators) nor render errors (`error`).

pub mod budgets;
pub mod calendar;
pub mod ledger;
pub mod limits;
pub mod pricing;
pub mod spool;
mod spool_format;

use crate::api::Endpoint;
use crate::api::canonical::Usage;
use crate::config::{ProviderKind, TenantGovernance};
use actix::Addr;
use rust_decimal::Decimal;
use std::sync::Arc;

/// One finished request's usage, as the request path reports it. Sent once per request that
/// reached an upstream answer (retries inside the provider actor included: only the attempt
/// that answered carries usage).
#[derive(Clone, Debug)]
pub struct UsageRecord {
    pub tenant: String,
    pub proxy: String,
    pub route: String,
    /// The provider's name in the tenant file.
    pub provider: String,
    /// Its type, for the price lookup.
    pub provider_kind: ProviderKind,
    /// The model sent upstream (the route's `target_model`, else its `model`).
    pub model: String,
    /// The name of the API key the client used (`auth.key_name`).
    pub api_key: String,
    /// The semantic topic that chose the route, if any.
    pub topic: Option<String>,
    pub endpoint: Endpoint,
    pub stream: bool,
    /// What the provider reported; `None` when it reported nothing (cost then unknown).
    pub usage: Option<Usage>,
    /// The usage is the gateway's estimate, not the provider's report.
    pub estimated: bool,
    /// The gateway's `x-request-id`.
    pub request_id: String,
}

/// A [`UsageRecord`] priced, as the ledger stores it.
#[derive(Clone, Debug)]
pub struct PricedRecord {
    pub record: UsageRecord,
    /// Unix milliseconds when the request ended.
    pub at_ms: i64,
    /// `None` when the model has no price or the usage is unknown: never zero for unknown.
    pub cost: Option<Decimal>,
}

/// What every worker shares: the limiter and the ledger's address.
#[derive(Clone)]
pub struct Governance {
    pub limiter: limits::Limiter,
    /// `None` when the ledger is off (`--ledger off`).
    pub ledger: Option<Addr<ledger::Ledger>>,
    /// Where a SQLite file ledger's rows are written (the ledger actor loads them); `None`
    /// for the other stores, whose rows go to the actor in messages.
    pub spool: Option<Arc<spool::Spool>>,
    pub budgets: budgets::Budgets,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("ledger", &self.ledger.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Governance {
    /// In-process limits, no ledger (tests that build state by hand).
    fn default() -> Self {
        Self {
            limiter: limits::Limiter::local(),
            ledger: None,
            spool: None,
            budgets: budgets::Budgets::default(),
        }
    }
}

/// The price of `model` on `kind`: the tenant's own first, then the built-in table.
pub fn price_for<'a>(
    tenant: &'a TenantGovernance,
    kind: ProviderKind,
    model: &str,
) -> Option<&'a pricing::Price> {
    if !tenant.prices.is_empty()
        && let Some(p) =
            pricing::candidates(model).find_map(|m| tenant.prices.get(&(kind, m.to_owned())))
    {
        return Some(p);
    }
    pricing::PriceTable::built_in()
        .get(kind, model)
        .map(|l| &l.price)
}

impl Governance {
    /// Records one finished request: prices it, counts it in the metrics and the token rate
    /// limits, and sends it to the ledger. Never waits on the store.
    pub fn record(&self, tenant: &TenantGovernance, record: UsageRecord) {
        self.append(tenant, record, None, None);
    }

    /// As [`Governance::record`], and returns what hears `true` once the record is committed
    /// (`None` when there is nothing to wait for: the ledger is off, or the record is already
    /// durable in the spool): a relay awaits it before the answer's last byte, so an
    /// answer a client received in full is in the ledger even if the process is killed next.
    pub fn record_durably(&self, tenant: &TenantGovernance, record: UsageRecord) -> Option<Ack> {
        let (tx, rx) = self.ack_channel();
        self.append(tenant, record, tx, None);
        rx
    }

    /// A commit's acknowledgement channel, when there is a ledger to commit to in messages
    /// (a spooled row is durable once [`Governance::append`] returns).
    fn ack_channel(&self) -> (Option<tokio::sync::oneshot::Sender<bool>>, Option<Ack>) {
        if self.ledger.is_none() || self.spool.is_some() {
            return (None, None);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    }

    fn append(
        &self,
        tenant: &TenantGovernance,
        record: UsageRecord,
        ack: Option<tokio::sync::oneshot::Sender<bool>>,
        reservation: Option<budgets::Reservation>,
    ) {
        let price = price_for(tenant, record.provider_kind, &record.model);
        if price.is_none() {
            tracing::warn!(
                provider = record.provider_kind.as_str(),
                model = %record.model,
                "no price for this model: its cost is recorded as unknown"
            );
        }
        let cost = match (&record.usage, price) {
            (Some(usage), Some(price)) => Some(pricing::cost(usage, price)),
            _ => None,
        };
        if let Some(r) = reservation {
            r.settle(record.usage.as_ref(), cost);
        }
        crate::telemetry::metrics::metrics().usage(
            &record.tenant,
            record.provider_kind.as_str(),
            &record.model,
            record.usage.as_ref(),
            cost,
            price.is_some(),
        );
        if let Some(usage) = &record.usage {
            self.limiter
                .add_tokens(tenant, &record.tenant, &record.api_key, usage.total());
        }
        let Some(ledger) = &self.ledger else {
            return;
        };
        let priced = PricedRecord {
            record,
            at_ms: now_ms(),
            cost,
        };
        if let Some(spool) = &self.spool {
            // One write to the page cache, on the worker: durable against a crash of the
            // process once it returns, so nothing waits for the database.
            if let Err(err) = spool.append(&ledger::spool_record(&priced)) {
                tracing::error!(%err, request_id = %priced.record.request_id, "ledger spool write failed: a usage record is lost");
            }
            return;
        }
        if let Err(err) = ledger.try_send(ledger::Append(priced, ack)) {
            tracing::error!(%err, "ledger mailbox full or closed: a usage record is lost");
        }
    }
}

/// Whether the gateway may add `stream_options.include_usage` to a chat stream for this
/// provider: OpenAI always; Azure OpenAI on the v1 API and on api-versions from 2024-09-01 on
/// (older ones refuse the field, so their streams are billed at an estimate instead).
pub fn can_ask_for_stream_usage(settings: &crate::config::ProviderSettings) -> bool {
    use crate::config::{AzureApi, ProviderSettings};
    match settings {
        ProviderSettings::AzureOpenAi {
            api: AzureApi::Deployments { api_version },
        } => api_version.get(..10).is_some_and(|d| d >= "2024-09-01"),
        _ => true,
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Hears `true` once a record is committed (`false` when the write failed); see
/// [`Governance::record_durably`].
pub type Ack = tokio::sync::oneshot::Receiver<bool>;

/// How long an answer's last byte waits for its ledger commit at most: past this the answer
/// goes out anyway (and the record still commits when the store catches up).
pub const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for `ack` (at most [`ACK_WAIT`]); logs when the commit failed or is late.
pub async fn committed(ack: Ack) {
    match tokio::time::timeout(ACK_WAIT, ack).await {
        Ok(Ok(true)) => {}
        Ok(_) => tracing::error!("ledger write failed: the answer goes out unrecorded"),
        Err(_) => {
            tracing::warn!("ledger commit later than {ACK_WAIT:?}: the answer goes out first")
        }
    }
}

/// A reconnecting connection to the Redis at `url` (shared counters of limits and budgets).
pub(crate) async fn redis_manager(url: &str) -> Result<redis::aio::ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
    client
        .get_connection_manager()
        .await
        .map_err(|e| format!("redis {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AzureApi, ProviderSettings};

    #[test]
    fn old_azure_api_versions_are_not_sent_stream_options() {
        let azure = |v: &str| ProviderSettings::AzureOpenAi {
            api: AzureApi::Deployments {
                api_version: v.to_owned(),
            },
        };
        assert!(!can_ask_for_stream_usage(&azure("2024-06-01")));
        assert!(!can_ask_for_stream_usage(&azure("2024-08-01-preview")));
        assert!(can_ask_for_stream_usage(&azure("2024-09-01-preview")));
        assert!(can_ask_for_stream_usage(&azure("2025-03-01-preview")));
        assert!(can_ask_for_stream_usage(&ProviderSettings::AzureOpenAi {
            api: AzureApi::V1
        }));
    }
}

/// One request's identity for its usage records, built once in the handler after
/// authentication: the request path's one way into the ledger.
#[derive(Clone, Debug)]
pub struct Meter {
    governance: Governance,
    tenant: Arc<TenantGovernance>,
    tenant_id: String,
    api_key: String,
    request_id: String,
    /// The request's hold on its budgets, settled by its usage record (released when the
    /// last clone goes without one).
    reservation: Arc<std::sync::Mutex<Option<budgets::Reservation>>>,
}

impl Meter {
    /// Reserves the request's estimated cost against the tenant's budgets: its body at about
    /// four characters a token, plus its `max_tokens` (else [`budgets::DEFAULT_MAX_TOKENS`]),
    /// at the price of the costliest of `decision`'s route and its fallbacks. Nothing to do
    /// for a tenant without budgets.
    pub async fn reserve(
        &self,
        decision: &crate::routing::Decision,
        body: &[u8],
    ) -> Result<(), budgets::Exhausted> {
        if self.tenant.budgets.is_empty() {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct Max {
            max_completion_tokens: Option<u64>,
            max_tokens: Option<u64>,
            max_output_tokens: Option<u64>,
        }
        let max = serde_json::from_slice::<Max>(body)
            .ok()
            .and_then(|m| {
                m.max_completion_tokens
                    .or(m.max_tokens)
                    .or(m.max_output_tokens)
            })
            .unwrap_or(budgets::DEFAULT_MAX_TOKENS);
        let usage = Usage {
            input_tokens: crate::api::usage::estimate_tokens(body),
            output_tokens: max,
            ..Usage::default()
        };
        // At the costliest route the request may end on: its fallbacks answer on the same
        // hold, and a hold below what the answer costs would let spend pass the budget.
        let route = decision.route();
        let picodollars = std::iter::once(decision.route)
            .chain(route.fallbacks.iter().copied())
            .filter_map(|i| decision.proxy.routes.get(i))
            .filter_map(|r| price_for(&self.tenant, r.provider_kind, r.upstream_model()))
            .map(|p| budgets::picodollars(pricing::cost(&usage, p)))
            .max();
        let estimate = budgets::Estimate {
            picodollars,
            tokens: usage.total(),
        };
        self.seed_budgets().await;
        let held = self
            .governance
            .budgets
            .reserve(
                &self.tenant,
                &self.tenant_id,
                &self.api_key,
                estimate,
                now_ms(),
            )
            .await?;
        *self.reservation.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
        Ok(())
    }

    /// For a request an exhausted budget diverts to the fallback route: it holds nothing, but
    /// what it costs is still added to its budgets' spend when recorded.
    pub fn charge_only(&self) {
        let held = self.governance.budgets.charge_only(
            &self.tenant,
            &self.tenant_id,
            &self.api_key,
            now_ms(),
        );
        *self.reservation.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
    }

    /// Starts the in-process counters of this request's budgets from the ledger's record of
    /// the period so far, the first time each is used (so a restart remembers the spend).
    async fn seed_budgets(&self) {
        let Some(ledger) = &self.governance.ledger else {
            return;
        };
        let now = now_ms();
        for b in &self.tenant.budgets {
            if b.key.as_deref().is_some_and(|k| k != self.api_key) {
                continue;
            }
            let name = budgets::counter_name(&self.tenant_id, b, now);
            if !self.governance.budgets.unseeded(&name) {
                continue;
            }
            let query = ledger::UsageQuery {
                tenant: self.tenant_id.clone(),
                from_ms: budgets::period_start(b.period, now),
                to_ms: now.saturating_add(1),
                group_by: if b.key.is_some() {
                    ledger::GroupBy::Key
                } else {
                    ledger::GroupBy::Total
                },
            };
            let rows = match ledger.send(query).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(err)) => {
                    tracing::warn!(%err, "budget not seeded from the ledger; it starts at zero");
                    Vec::new()
                }
                Err(err) => {
                    tracing::warn!(%err, "budget not seeded from the ledger; it starts at zero");
                    Vec::new()
                }
            };
            let row = rows
                .iter()
                .find(|r| b.key.is_none() || r.group.as_deref() == b.key.as_deref());
            let spent = row.map_or(0, |r| match b.limit {
                crate::config::BudgetLimit::Usd(_) => budgets::picodollars(r.cost),
                crate::config::BudgetLimit::Tokens(_) => {
                    i128::from(r.input_tokens) + i128::from(r.output_tokens)
                }
            });
            self.governance.budgets.seed(name, spent);
        }
    }

    fn take_reservation(&self) -> Option<budgets::Reservation> {
        self.reservation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn new(
        governance: &Governance,
        tenant: &crate::config::Tenant,
        api_key: &str,
        request_id: &str,
    ) -> Self {
        Self {
            governance: governance.clone(),
            tenant: tenant.governance.clone(),
            tenant_id: tenant.id.clone(),
            api_key: api_key.to_owned(),
            request_id: request_id.to_owned(),
            reservation: Arc::default(),
        }
    }

    /// The record of an answer from `decision`'s route.
    pub fn usage_record(
        &self,
        decision: &crate::routing::Decision,
        endpoint: Endpoint,
        stream: bool,
        usage: Option<Usage>,
        estimated: bool,
    ) -> UsageRecord {
        let route = decision.route();
        UsageRecord {
            tenant: self.tenant_id.clone(),
            proxy: decision.proxy.id.clone(),
            route: route.name.clone(),
            provider: decision.provider.name.clone(),
            provider_kind: decision.provider.kind(),
            model: route.upstream_model().to_owned(),
            api_key: self.api_key.clone(),
            topic: decision.semantic.as_ref().and_then(|s| s.topic.clone()),
            endpoint,
            stream,
            usage,
            estimated,
            request_id: self.request_id.clone(),
        }
    }

    /// Records an answer from `decision`'s route and returns the commit's [`Ack`] (see
    /// [`Governance::record_durably`]).
    pub fn record_durably(
        &self,
        decision: &crate::routing::Decision,
        endpoint: Endpoint,
        stream: bool,
        usage: Option<Usage>,
        estimated: bool,
    ) -> Option<Ack> {
        let record = self.usage_record(decision, endpoint, stream, usage, estimated);
        // Priced, metered and counted against token limits with the ledger off too.
        let (tx, rx) = self.governance.ack_channel();
        self.governance
            .append(&self.tenant, record, tx, self.take_reservation());
        rx
    }

    /// Records an answer from `decision`'s route (see [`Governance::record`]).
    pub fn record(
        &self,
        decision: &crate::routing::Decision,
        endpoint: Endpoint,
        stream: bool,
        usage: Option<Usage>,
        estimated: bool,
    ) {
        let record = self.usage_record(decision, endpoint, stream, usage, estimated);
        self.governance
            .append(&self.tenant, record, None, self.take_reservation());
    }

    /// The callback a stream's usage tap calls with the final usage (durably when it asks:
    /// the tap holds the stream's last events until the commit), or when the stream ends
    /// without one.
    pub fn on_usage(
        &self,
        decision: &crate::routing::Decision,
        endpoint: Endpoint,
        stream: bool,
    ) -> crate::api::usage::OnUsage {
        let template = self.usage_record(decision, endpoint, stream, None, false);
        let meter = self.clone();
        Box::new(move |report: crate::api::usage::Report| {
            let record = UsageRecord {
                usage: report.usage,
                estimated: report.estimated,
                ..template
            };
            let reservation = meter.take_reservation();
            let (tx, rx) = if report.durable {
                meter.governance.ack_channel()
            } else {
                (None, None)
            };
            meter
                .governance
                .append(&meter.tenant, record, tx, reservation);
            rx
        })
    }
}
