//! Who may open a connection: per-IP counts and a listener-wide rate limit,
//! plus the rate limiter for warnings that a flood would otherwise repeat.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How often a repeated warning (refused connections, quota refusals) is logged.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Lets a warning through at most once per period and counts the rest, so a
/// flood of refusals costs a counter increment each, not a log line each.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    /// Time of the last line logged, and the occurrences suppressed since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.0 {
            Some(last) if now.duration_since(last) < self.every => {
                st.1 += 1;
                None
            }
            _ => {
                let suppressed = st.1;
                *st = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// Token bucket for new connections: `rate` per second, holding at most one
/// second's worth, so a burst after a quiet period is bounded too.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Takes a token if one is available.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open connections per peer address. Entries go when their count reaches
/// 0, so the map is bounded by the open connections.
#[derive(Debug, Clone)]
pub struct PerIp {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// The peer address already has `mqtt.max_connections_per_ip` connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection limit per IP address reached")]
pub struct IpFull;

/// One counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    /// `max` connections per address; 0 = unlimited (nothing is counted).
    pub fn new(max: usize) -> PerIp {
        PerIp {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for `ip` (`None` when unlimited), [`IpFull`] when it already
    /// has `max` connections.
    pub fn acquire(&self, ip: IpAddr) -> Result<Option<IpSlot>, IpFull> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return Err(IpFull);
        }
        *n += 1;
        Ok(Some(IpSlot {
            ip,
            counts: self.counts.clone(),
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn log_limiter_lets_one_line_per_period() {
        let l = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(l.allow(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(5);
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 5);
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 2);
        // Never more than one second's worth, however long it was idle.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 5);
    }

    #[test]
    fn per_ip_counts_and_forgets() {
        let p = PerIp::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = p.acquire(ip).unwrap();
        let _b = p.acquire(ip).unwrap();
        assert!(p.acquire(ip).is_err());
        assert!(p.acquire(other).is_ok());
        drop(a);
        let _c = p.acquire(ip).unwrap();
        drop((_b, _c));
        assert!(p.counts.lock().unwrap().is_empty());
        assert!(PerIp::new(0).acquire(ip).unwrap().is_none());
    }
}
