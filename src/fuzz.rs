//! The budget of the randomized (fuzz) tests: a short fixed run under `cargo test`, or as long
//! as `SWITCHYARD_FUZZ_SECS` says under `loadtests/fuzz.sh`. The seed is printed, and
//! `SWITCHYARD_FUZZ_SEED` replays a run, so a finding can become a regression test.

use std::time::{Duration, Instant};

/// Rounds of one fuzz target.
pub struct Budget {
    pub rng: fastrand::Rng,
    rounds: usize,
    deadline: Option<Instant>,
    done: usize,
}

impl Budget {
    /// `rounds` rounds, or until `SWITCHYARD_FUZZ_SECS` have passed when that is set.
    pub fn new(target: &str, rounds: usize) -> Self {
        let seed = std::env::var("SWITCHYARD_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                if std::env::var_os("SWITCHYARD_FUZZ_SECS").is_some() {
                    fastrand::u64(..)
                } else {
                    7
                }
            });
        let deadline = std::env::var("SWITCHYARD_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(|secs| Instant::now() + Duration::from_secs(secs));
        eprintln!("fuzz {target}: seed {seed} (replay with SWITCHYARD_FUZZ_SEED={seed})");
        Self {
            rng: fastrand::Rng::with_seed(seed),
            rounds,
            deadline,
            done: 0,
        }
    }

    /// Whether to run another round.
    pub fn more(&mut self) -> bool {
        self.done += 1;
        match self.deadline {
            Some(d) => Instant::now() < d,
            None => self.done <= self.rounds,
        }
    }

    /// Rounds run so far.
    pub fn rounds_done(&self) -> usize {
        self.done.saturating_sub(1)
    }
}
