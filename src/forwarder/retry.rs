//! Retry policy: exponential backoff with jitter, bounded by `--retry-max-elapsed`.

use std::time::Duration;

/// First pause after a transient failure.
const INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between two attempts.
const MAX_INTERVAL: Duration = Duration::from_secs(5);

/// Backoff state for one request.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max_elapsed: Duration,
}

impl Backoff {
    /// A fresh schedule that gives up once `max_elapsed` has passed since the first
    /// attempt began (calls and pauses alike).
    pub fn new(max_elapsed: Duration) -> Self {
        Self {
            next: INITIAL,
            max_elapsed,
        }
    }

    /// The pause before the next attempt, `elapsed` after the first attempt began, or
    /// `None` once the budget is spent (at once when it is zero). Pauses double up to
    /// a cap, each drawn from [½, 1½) of the nominal value so that many proxies do not
    /// retry in step, and none ends past the budget. An attempt begun inside the
    /// budget runs to its end (at most the call timeout), so a request is given up at
    /// most one call after the budget.
    pub fn next_pause(&mut self, elapsed: Duration, rng: &mut fastrand::Rng) -> Option<Duration> {
        let remaining = self.max_elapsed.checked_sub(elapsed)?;
        if remaining.is_zero() {
            return None;
        }
        let jittered = self.next.mul_f64(0.5 + rng.f64());
        let pause = jittered.min(remaining);
        self.next = (self.next * 2).min(MAX_INTERVAL);
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_budget_gives_up_at_the_first_failure() {
        let mut b = Backoff::new(Duration::ZERO);
        assert_eq!(
            b.next_pause(Duration::ZERO, &mut fastrand::Rng::with_seed(1)),
            None
        );
    }

    #[test]
    fn pauses_grow_and_never_exceed_the_budget() {
        let budget = Duration::from_secs(20);
        let mut b = Backoff::new(budget);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut total = Duration::ZERO;
        let mut pauses = Vec::new();
        // Calls that fail at once: only the pauses take time.
        while let Some(p) = b.next_pause(total, &mut rng) {
            assert!(p <= MAX_INTERVAL.mul_f64(1.5));
            total += p;
            pauses.push(p);
        }
        assert_eq!(total, budget, "the last pause is cut to the budget");
        assert!(pauses.len() >= 5, "several attempts fit in 20s: {pauses:?}");
        assert!(pauses[3] > pauses[0], "backoff grows: {pauses:?}");
    }

    #[test]
    fn time_spent_in_calls_counts_against_the_budget() {
        let budget = Duration::from_secs(30);
        let mut b = Backoff::new(budget);
        let mut rng = fastrand::Rng::with_seed(7);
        // Calls that each take a 10 s timeout: three fit, not thirty seconds of pauses.
        let mut elapsed = Duration::ZERO;
        let mut calls = 0;
        loop {
            elapsed += Duration::from_secs(10);
            calls += 1;
            match b.next_pause(elapsed, &mut rng) {
                Some(p) => {
                    assert!(elapsed + p <= budget, "{elapsed:?} + {p:?}");
                    elapsed += p;
                }
                None => break,
            }
        }
        assert_eq!(calls, 3, "gave up {elapsed:?} after the first call began");
        assert!(elapsed < budget + Duration::from_secs(10));
    }
}
