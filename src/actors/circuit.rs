//! Circuit breakers: one per upstream endpoint, shared by every worker's provider actor.
//!
//! A breaker counts consecutive failed attempts against its endpoint (connection errors,
//! timeouts, 5xx, broken answers; not 429s or other 4xx, which say nothing about the endpoint's
//! health). At the provider's `circuit_failures` it opens: calls are refused at once, so the
//! request moves down its route's fallback chain instead of waiting on a dead endpoint. After
//! `circuit_open_secs` one probe goes through (half-open); its success closes the circuit, its
//! failure opens it again. Each transition is logged, so an operator sees it happen.
//!
//! Breakers are keyed by the endpoint's base URL: tenants that share an upstream share its
//! health. They live outside the configuration snapshot, so a reload keeps their state.

use crate::config::CircuitPolicy;
use dashmap::DashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

static BREAKERS: LazyLock<DashMap<String, Arc<Circuit>>> = LazyLock::new(DashMap::new);

/// The breaker of the endpoint at `base_url`.
pub fn for_endpoint(base_url: &str) -> Arc<Circuit> {
    if let Some(c) = BREAKERS.get(base_url) {
        return c.clone();
    }
    BREAKERS
        .entry(base_url.to_owned())
        .or_insert_with(|| Arc::new(Circuit::new(base_url)))
        .clone()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight (`probing`) or may go.
    HalfOpen {
        probing: bool,
    },
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Circuit {
    endpoint: String,
    state: Mutex<State>,
}

/// Leave to call the endpoint once; report how it went with [`Permit::record`]. A probe's
/// permit dropped unrecorded (the client went away) lets the next request probe instead.
#[derive(Debug)]
pub struct Permit {
    circuit: Arc<Circuit>,
    probe: bool,
    recorded: bool,
}

impl Circuit {
    fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A permit to call, or how long the circuit stays open.
    pub fn admit(self: &Arc<Self>, policy: &CircuitPolicy) -> Result<Permit, Duration> {
        let permit = |probe| Permit {
            circuit: self.clone(),
            probe,
            recorded: false,
        };
        if policy.failures == 0 {
            return Ok(permit(false));
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(permit(false)),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                *state = State::HalfOpen { probing: true };
                tracing::info!(endpoint = %self.endpoint, "circuit half-open: probing");
                Ok(permit(true))
            }
            State::HalfOpen { probing: true } => Err(Duration::ZERO),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(permit(true))
            }
        }
    }
}

impl Permit {
    /// Reports the attempt's outcome: `true` for an answer that says the endpoint is healthy.
    pub fn record(mut self, healthy: bool, policy: &CircuitPolicy) {
        self.recorded = true;
        if policy.failures == 0 {
            return;
        }
        let circuit = &self.circuit;
        let mut state = circuit.lock();
        let open = State::Open {
            until: Instant::now() + policy.open_for,
        };
        *state = match (*state, healthy) {
            (State::HalfOpen { .. }, true) if self.probe => {
                tracing::info!(endpoint = %circuit.endpoint, "circuit closed: the probe succeeded");
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { .. }, false) if self.probe => {
                tracing::warn!(endpoint = %circuit.endpoint, open_secs = policy.open_for.as_secs(), "circuit open again: the probe failed");
                open
            }
            (State::Closed { .. }, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 >= policy.failures => {
                tracing::warn!(endpoint = %circuit.endpoint, failures = failures + 1, open_secs = policy.open_for.as_secs(), "circuit open");
                open
            }
            (State::Closed { failures }, false) => State::Closed {
                failures: failures + 1,
            },
            // A call admitted before the circuit changed: its news is stale.
            (other, _) => other,
        };
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.circuit.lock();
            if *state == (State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ms: u64) -> CircuitPolicy {
        CircuitPolicy {
            failures: 3,
            open_for: Duration::from_millis(ms),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once_after_the_wait() {
        let p = policy(50);
        let c = Arc::new(Circuit::new("http://a"));
        for _ in 0..2 {
            c.admit(&p).expect("closed").record(false, &p);
        }
        // A success in between resets the count.
        c.admit(&p).expect("closed").record(true, &p);
        for _ in 0..2 {
            c.admit(&p).expect("closed").record(false, &p);
        }
        assert!(c.admit(&p).is_ok(), "two failures in a row: still closed");
        c.admit(&p).expect("closed").record(false, &p);
        let wait = c.admit(&p).expect_err("open after three");
        assert!(wait > Duration::from_millis(30) && wait <= Duration::from_millis(50));

        std::thread::sleep(Duration::from_millis(60));
        let probe = c.admit(&p).expect("half-open probe");
        assert_eq!(
            c.admit(&p).expect_err("one probe at a time"),
            Duration::ZERO
        );
        probe.record(false, &p);
        assert!(c.admit(&p).is_err(), "failed probe: open again");

        std::thread::sleep(Duration::from_millis(60));
        let probe = c.admit(&p).expect("half-open probe");
        drop(probe); // the client went away: the next request may probe
        c.admit(&p).expect("probe again").record(true, &p);
        for _ in 0..5 {
            c.admit(&p)
                .expect("closed after a good probe")
                .record(true, &p);
        }
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let p = CircuitPolicy {
            failures: 0,
            open_for: Duration::from_secs(1),
        };
        let c = Arc::new(Circuit::new("http://b"));
        for _ in 0..100 {
            c.admit(&p).expect("never open").record(false, &p);
        }
    }
}
