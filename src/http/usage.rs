//! The usage API: a tenant's requests, tokens and cost from the ledger.
//!
//! `GET /admin/tenants/{tenant}/usage` (admin token) and `GET /{tenant}/usage` (the tenant's
//! own key) answer the same question: `from` and `to` (Unix seconds or `YYYY-MM-DD`, UTC;
//! default all time up to now) and `group_by` (`proxy`, `route`, `model`, `key`, `topic`,
//! `day`, `request`; default one total). Owns only the HTTP shape; the ledger actor runs the
//! query (`governance::ledger`).

use super::AppState;
use crate::error::GatewayError;
use crate::governance::calendar::{civil_from_days, days_from_civil};
use crate::governance::ledger::{GroupBy, UsageQuery, UsageRow};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

#[derive(Debug, serde::Deserialize)]
pub struct Params {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
}

/// `GET /admin/tenants/{tenant}/usage`
pub async fn admin_usage(
    req: HttpRequest,
    path: web::Path<String>,
    params: web::Query<Params>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    super::admin::authorize(&state, &req)?;
    answer(&state, &path.into_inner(), &params).await
}

/// `GET /{tenant}/usage`, with one of the tenant's own keys. The data plane's path split
/// ([`super::data_plane::dispatch`]) sends it here: as a route its pattern would be tried, a
/// regex match, before every data-plane request.
pub async fn tenant_usage(
    req: &HttpRequest,
    tenant: &str,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    {
        let dir = state.directory.current();
        super::auth::authenticate(&dir, tenant, req.headers())?;
    }
    let params = web::Query::<Params>::from_query(req.query_string()).map_err(|err| {
        GatewayError::invalid(
            format!("the query string does not parse: {err}"),
            None,
            Some("invalid_usage_query"),
        )
    })?;
    answer(state, tenant, &params).await
}

/// The tenant of a `/{tenant}/usage` path.
pub fn usage_path(path: &str) -> Option<&str> {
    let tenant = path.strip_prefix('/')?.strip_suffix("/usage")?;
    (!tenant.is_empty() && !tenant.contains('/')).then_some(tenant)
}

async fn answer(
    state: &AppState,
    tenant: &str,
    params: &Params,
) -> Result<HttpResponse, GatewayError> {
    let bad = |param: &'static str, message: String| {
        GatewayError::invalid(message, Some(param), Some("invalid_usage_query"))
    };
    let group_by: GroupBy = params
        .group_by
        .as_deref()
        .unwrap_or("")
        .parse()
        .map_err(|e| bad("group_by", e))?;
    let from_ms = match &params.from {
        Some(s) => instant_ms(s).ok_or_else(|| {
            bad(
                "from",
                format!("from {s:?}: give Unix seconds or YYYY-MM-DD"),
            )
        })?,
        None => 0,
    };
    let to_ms = match &params.to {
        Some(s) => instant_ms(s)
            .ok_or_else(|| bad("to", format!("to {s:?}: give Unix seconds or YYYY-MM-DD")))?,
        None => crate::governance::now_ms().saturating_add(1),
    };
    let ledger = state
        .governance
        .ledger
        .as_ref()
        .ok_or_else(|| GatewayError::NotFound {
            message: "The usage ledger is off (--ledger off).".into(),
            code: "ledger_disabled",
        })?;
    let rows = ledger
        .send(UsageQuery {
            tenant: tenant.to_owned(),
            from_ms,
            to_ms,
            group_by,
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("ledger unavailable: {e}")))?
        .map_err(|e| GatewayError::Internal(format!("ledger query failed: {e}")))?;
    let data: Vec<_> = rows.iter().map(|r| row_json(r, group_by)).collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "usage",
        "tenant": tenant,
        "from": from_ms / 1000,
        "to": to_ms / 1000,
        "group_by": params.group_by.as_deref().unwrap_or("total"),
        "data": data,
    })))
}

fn row_json(r: &UsageRow, group_by: GroupBy) -> serde_json::Value {
    let group = match (group_by, &r.group) {
        (GroupBy::Day, Some(day)) => day.parse::<i64>().ok().map(date_of_day),
        (_, g) => g.clone(),
    };
    json!({
        "group": group,
        "requests": r.requests,
        "input_tokens": r.input_tokens,
        "cached_input_tokens": r.cached_input_tokens,
        "cache_write_tokens": r.cache_write_tokens,
        "output_tokens": r.output_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "cost_usd": r.cost.to_string(),
        "unpriced_requests": r.unpriced_requests,
        "estimated_requests": r.estimated_requests,
    })
}

/// Unix seconds, or a `YYYY-MM-DD` day (its start, UTC), in milliseconds.
fn instant_ms(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    let (y, m, d) = (
        y.parse::<i64>().ok()?,
        m.parse::<u32>().ok()?,
        d.parse::<u32>().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, i64::from(m), i64::from(d)) * 86_400_000)
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
fn date_of_day(z: i64) -> String {
    let (y, m, d) = civil_from_days(z);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_day_numbers_round_trip() {
        assert_eq!(instant_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(instant_ms("2026-11-30"), Some(1_795_996_800_000));
        assert_eq!(date_of_day(1_795_996_800 / 86_400), "2026-11-30");
        assert_eq!(date_of_day(days_from_civil(2024, 2, 29)), "2024-02-29");
        assert_eq!(instant_ms("1700000000"), Some(1_700_000_000_000));
        assert_eq!(instant_ms("2026-13-01"), None);
        assert_eq!(instant_ms("yesterday"), None);
    }
}
