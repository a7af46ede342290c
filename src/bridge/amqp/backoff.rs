//! Jittered exponential backoff between reconnect attempts.

use std::time::Duration;

use rand::Rng;

/// First delay after a failure.
pub(super) const BASE: Duration = Duration::from_millis(100);
/// Longest delay: a backend that is down is retried at least this often.
pub(super) const MAX: Duration = Duration::from_secs(10);

/// Doubles from [`BASE`] to [`MAX`]; each delay is spread by ±20% so that
/// several gateways do not reconnect in lockstep after a broker restart.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { next: BASE }
    }

    /// Called when the broker answered something again (progress was made).
    pub(super) fn reset(&mut self) {
        self.next = BASE;
    }

    /// The delay to wait now; the following one is twice as long.
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(MAX);
        delay.mul_f64(rand::rng().random_range(0.8..=1.2))
    }
}
