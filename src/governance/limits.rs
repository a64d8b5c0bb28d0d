//! Rate limits: requests and tokens per minute, per tenant and per API key.
//!
//! Owns the counters and the check made before a request is sent upstream. A window is one
//! minute long from the first request counted in it (so a burst at a minute boundary cannot
//! double the rate, and a test's N requests all fall in one window). A request is refused when
//! its scope's window already holds the request limit, or the token limit's worth of tokens
//! (tokens are counted when a request ends, from its reported usage: the limit holds to within
//! the requests in flight). Both scopes are checked before either is counted, so a request
//! the key refuses does not use up the tenant's allowance. Counters live in process by default
//! (one mutex-guarded map: the check is a hash lookup) or in Redis, shared by replicas, where
//! the check-and-count is one Lua script (atomic: no read-then-write race between replicas).

use crate::config::{Limits, TenantGovernance};
use crate::error::{GatewayError, RateLimitExceeded};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window every limit counts in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
        }
    }
}

/// Whose limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Tenant,
    Key,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Tenant => "tenant",
            Scope::Key => "api key",
        }
    }
}

/// The counters, in process or in Redis.
#[derive(Clone)]
pub enum Limiter {
    Local(Arc<Mutex<HashMap<String, Window>>>),
    Redis(redis::aio::ConnectionManager),
}

/// One scope's current window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    started: Instant,
    requests: u64,
    tokens: u64,
}

/// The counter names of a request's two scopes.
fn scope_keys(tenant: &str, key: &str) -> [String; 2] {
    [
        format!("t\u{1f}{tenant}"),
        format!("k\u{1f}{tenant}\u{1f}{key}"),
    ]
}

impl Limiter {
    pub fn local() -> Self {
        Limiter::Local(Arc::default())
    }

    /// Counters in the Redis at `url` (`redis://127.0.0.1:6379/`).
    pub async fn redis(url: &str) -> Result<Self, String> {
        let manager = super::redis_manager(url).await?;
        Ok(Limiter::Redis(manager))
    }

    /// Counts a request against its tenant's and key's limits, or refuses it with a 429.
    pub async fn check(
        &self,
        governance: &TenantGovernance,
        tenant: &str,
        key: &str,
    ) -> Result<(), GatewayError> {
        let limits = [
            governance.limits,
            governance.key_limits.get(key).copied().unwrap_or_default(),
        ];
        if limits.iter().all(Limits::is_unlimited) {
            return Ok(());
        }
        let names = scope_keys(tenant, key);
        let refused = match self {
            Limiter::Local(map) => check_local(map, &names, &limits, Instant::now()),
            Limiter::Redis(conn) => check_redis(conn.clone(), &names, &limits).await?,
        };
        match refused {
            None => Ok(()),
            Some(r) => Err(GatewayError::RateLimited(Box::new(r))),
        }
    }

    /// Adds a finished request's tokens to its scopes' windows (for the token limits).
    pub fn add_tokens(&self, governance: &TenantGovernance, tenant: &str, key: &str, n: u64) {
        let tenant_limited = governance.limits.tokens_per_minute.is_some();
        let key_limited = governance
            .key_limits
            .get(key)
            .is_some_and(|l| l.tokens_per_minute.is_some());
        if !(tenant_limited || key_limited) || n == 0 {
            return;
        }
        let names = scope_keys(tenant, key);
        let which = [tenant_limited, key_limited];
        match self {
            Limiter::Local(map) => {
                let now = Instant::now();
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                for (name, _) in names.iter().zip(which).filter(|(_, w)| *w) {
                    let w = window(&mut map, name, now);
                    w.tokens = w.tokens.saturating_add(n);
                }
            }
            Limiter::Redis(conn) => {
                let mut conn = conn.clone();
                let keys: Vec<String> = names
                    .iter()
                    .zip(which)
                    .filter(|(_, w)| *w)
                    .map(|(n, _)| format!("switchyard:rl:{n}:tok"))
                    .collect();
                actix::spawn(async move {
                    let mut call = ADD_TOKENS_SCRIPT.prepare_invoke();
                    for k in &keys {
                        call.key(k);
                    }
                    call.arg(n).arg(WINDOW.as_millis() as u64);
                    if let Err(err) = call.invoke_async::<()>(&mut conn).await {
                        tracing::warn!(%err, "could not count tokens in redis");
                    }
                });
            }
        }
    }
}

/// The window of `name`, restarted when a minute has passed since it began.
fn window<'m>(map: &'m mut HashMap<String, Window>, name: &str, now: Instant) -> &'m mut Window {
    let fresh = Window {
        started: now,
        requests: 0,
        tokens: 0,
    };
    // Looked up by &str first: the common case allocates nothing.
    if !map.contains_key(name) {
        map.insert(name.to_owned(), fresh);
    }
    let w = map.get_mut(name).expect("inserted above");
    if now.duration_since(w.started) >= WINDOW {
        *w = fresh;
    }
    w
}

fn check_local(
    map: &Mutex<HashMap<String, Window>>,
    names: &[String; 2],
    limits: &[Limits; 2],
    now: Instant,
) -> Option<RateLimitExceeded> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    for (i, (name, l)) in names.iter().zip(limits).enumerate() {
        if l.is_unlimited() {
            continue;
        }
        let w = *window(&mut map, name, now);
        let reset = WINDOW.saturating_sub(now.duration_since(w.started));
        let scope = if i == 0 { Scope::Tenant } else { Scope::Key };
        if let Some(limit) = l.tokens_per_minute
            && w.tokens >= limit
        {
            return Some(RateLimitExceeded::new(scope, Kind::Tokens, limit, reset));
        }
        if let Some(limit) = l.requests_per_minute
            && w.requests >= limit
        {
            return Some(RateLimitExceeded::new(scope, Kind::Requests, limit, reset));
        }
    }
    for (name, l) in names.iter().zip(limits) {
        if l.requests_per_minute.is_some() {
            window(&mut map, name, now).requests += 1;
        }
    }
    None
}

/// Check both scopes, then count the request in both, atomically. KEYS: tenant requests,
/// tenant tokens, key requests, key tokens. ARGV: their limits (0: none), the window in ms.
/// Returns `{0, scope, kind, pttl}` when refused (kind 0 requests, 1 tokens), `{1}` when not.
const CHECK: &str = r"
local window = tonumber(ARGV[5])
for i = 0, 1 do
  local rl, tl = tonumber(ARGV[i*2+1]), tonumber(ARGV[i*2+2])
  if tl > 0 then
    local used = tonumber(redis.call('GET', KEYS[i*2+2]) or '0')
    if used >= tl then return {0, i, 1, redis.call('PTTL', KEYS[i*2+2])} end
  end
  if rl > 0 then
    local used = tonumber(redis.call('GET', KEYS[i*2+1]) or '0')
    if used >= rl then return {0, i, 0, redis.call('PTTL', KEYS[i*2+1])} end
  end
end
for i = 0, 1 do
  if tonumber(ARGV[i*2+1]) > 0 then
    local n = redis.call('INCR', KEYS[i*2+1])
    if n == 1 then redis.call('PEXPIRE', KEYS[i*2+1], window) end
  end
end
return {1}
";

/// Adds ARGV[1] tokens to each key, starting its window when it is new.
const ADD_TOKENS: &str = r"
for _, k in ipairs(KEYS) do
  local n = redis.call('INCRBY', k, ARGV[1])
  if n == tonumber(ARGV[1]) then redis.call('PEXPIRE', k, ARGV[2]) end
end
return 0
";

static CHECK_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CHECK));
static ADD_TOKENS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(ADD_TOKENS));

async fn check_redis(
    mut conn: redis::aio::ConnectionManager,
    names: &[String; 2],
    limits: &[Limits; 2],
) -> Result<Option<RateLimitExceeded>, GatewayError> {
    let mut call = CHECK_SCRIPT.prepare_invoke();
    for name in names {
        call.key(format!("switchyard:rl:{name}:req"))
            .key(format!("switchyard:rl:{name}:tok"));
    }
    for l in limits {
        call.arg(l.requests_per_minute.unwrap_or(0))
            .arg(l.tokens_per_minute.unwrap_or(0));
    }
    call.arg(WINDOW.as_millis() as u64);
    let out: Vec<i64> =
        call.invoke_async(&mut conn)
            .await
            .map_err(|err| GatewayError::Unavailable {
                message: format!("The rate-limit store is unavailable ({err}); retry the request."),
            })?;
    match out.as_slice() {
        [1] => Ok(None),
        [0, scope, kind, pttl] => {
            let (scope, l) = if *scope == 0 {
                (Scope::Tenant, &limits[0])
            } else {
                (Scope::Key, &limits[1])
            };
            let kind = if *kind == 1 {
                Kind::Tokens
            } else {
                Kind::Requests
            };
            let limit = match kind {
                Kind::Requests => l.requests_per_minute,
                Kind::Tokens => l.tokens_per_minute,
            }
            .unwrap_or(0);
            let reset = Duration::from_millis(u64::try_from(*pttl).unwrap_or(0));
            Ok(Some(RateLimitExceeded::new(scope, kind, limit, reset)))
        }
        other => Err(GatewayError::Internal(format!(
            "the rate-limit script answered {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u64>, tpm: Option<u64>) -> Limits {
        Limits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        }
    }

    #[test]
    fn the_n_plus_first_request_in_a_window_is_refused_and_a_new_window_allows_again() {
        let map = Mutex::default();
        let names = scope_keys("t", "k");
        let l = [limits(Some(3), None), Limits::default()];
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(check_local(&map, &names, &l, t0).is_none());
        }
        let refused = check_local(&map, &names, &l, t0 + Duration::from_secs(20))
            .expect("the fourth is refused");
        assert_eq!(
            (refused.scope, refused.kind, refused.limit),
            (Scope::Tenant, Kind::Requests, 3)
        );
        assert_eq!(refused.reset, Duration::from_secs(40));
        assert!(check_local(&map, &names, &l, t0 + WINDOW).is_none());
    }

    #[test]
    fn a_request_the_key_refuses_does_not_use_the_tenants_allowance() {
        let map = Mutex::default();
        let names = scope_keys("t", "k");
        let l = [limits(Some(2), None), limits(Some(1), None)];
        let t0 = Instant::now();
        assert!(check_local(&map, &names, &l, t0).is_none());
        let refused = check_local(&map, &names, &l, t0).expect("key limit");
        assert_eq!(refused.scope, Scope::Key);
        let other = scope_keys("t", "other");
        let l2 = [limits(Some(2), None), Limits::default()];
        assert!(
            check_local(&map, &other, &l2, t0).is_none(),
            "the tenant has one left"
        );
        assert!(check_local(&map, &other, &l2, t0).is_some());
    }
}
