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
    elapsed: Duration,
}

impl Backoff {
    /// A fresh schedule that gives up once `max_elapsed` of pauses would pass.
    pub fn new(max_elapsed: Duration) -> Self {
        Self {
            next: INITIAL,
            max_elapsed,
            elapsed: Duration::ZERO,
        }
    }

    /// The pause before the next attempt, or `None` once the budget is spent
    /// (at once when it is zero). Pauses double up to a cap, each drawn from
    /// [½, 1½) of the nominal value so that many proxies do not retry in step.
    pub fn next_pause(&mut self, rng: &mut fastrand::Rng) -> Option<Duration> {
        let remaining = self.max_elapsed.checked_sub(self.elapsed)?;
        if remaining.is_zero() {
            return None;
        }
        let jittered = self.next.mul_f64(0.5 + rng.f64());
        let pause = jittered.min(remaining);
        self.elapsed += pause;
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
        assert_eq!(b.next_pause(&mut fastrand::Rng::with_seed(1)), None);
    }

    #[test]
    fn pauses_grow_and_never_exceed_the_budget() {
        let budget = Duration::from_secs(20);
        let mut b = Backoff::new(budget);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut total = Duration::ZERO;
        let mut pauses = Vec::new();
        while let Some(p) = b.next_pause(&mut rng) {
            assert!(p <= MAX_INTERVAL.mul_f64(1.5));
            total += p;
            pauses.push(p);
        }
        assert_eq!(total, budget, "the last pause is cut to the budget");
        assert!(pauses.len() >= 5, "several attempts fit in 20s: {pauses:?}");
        assert!(pauses[3] > pauses[0], "backoff grows: {pauses:?}");
    }
}
