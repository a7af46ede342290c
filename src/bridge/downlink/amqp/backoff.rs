//! Jittered exponential backoff between reconnect attempts.

use std::time::Duration;

use rand::Rng;

/// First delay after a failure.
const BASE: Duration = Duration::from_millis(100);
/// Longest delay: a broker that is down is retried at least this often.
const MAX: Duration = Duration::from_secs(10);

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

    pub(super) fn reset(&mut self) {
        self.next = BASE;
    }

    /// The delay to wait now; the following one is twice as long.
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(MAX);
        jitter(delay)
    }
}

/// `d` spread by ±20%.
pub(super) fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= BASE.mul_f64(0.8) && first <= BASE.mul_f64(1.2));
        for _ in 0..20 {
            assert!(b.next_delay() <= MAX.mul_f64(1.2));
        }
        assert_eq!(b.next, MAX);
        b.reset();
        assert_eq!(b.next, BASE);
    }
}
