//! Jittered exponential backoff between reconnect / retry attempts, shared
//! by every backend client.

use std::time::Duration;

use rand::Rng;

/// Doubles from `base` to `max`; each delay is spread by ±20% so that
/// several gateways do not reconnect in lockstep after a broker restart.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// 100 ms doubling to 10 s: a backend that is down is retried at least
    /// every 10 s.
    pub fn new() -> Backoff {
        Backoff::between(Duration::from_millis(100), Duration::from_secs(10))
    }

    pub fn between(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            next: base,
        }
    }

    /// Called when the backend answered again (progress was made).
    pub fn reset(&mut self) {
        self.next = self.base;
    }

    /// The delay to wait now; the following one is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(self.max);
        jitter(delay)
    }

    /// The nominal delay the next call starts from (without jitter).
    pub fn nominal(&self) -> Duration {
        self.next
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// `d` spread by ±20%.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut b = Backoff::between(base, max);
        let mut nominal = base;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2),
                "{d:?} around {nominal:?}"
            );
            nominal = (nominal * 2).min(max);
        }
        assert_eq!(b.nominal(), max);
        b.reset();
        assert_eq!(b.nominal(), base);
    }
}
