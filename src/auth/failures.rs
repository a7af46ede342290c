//! Authentication failures per address, to slow brute force: from the
//! `failure_delay_after`-th failure the refusing CONNACK waits
//! `min(100 ms × 2^(n − after), failure_delay_max_ms)`, and with `ban_after`
//! the address is refused before CONNECT for `ban_secs`.
//!
//! Bounded by two generations (`current`, `previous`) swapped every
//! `failure_window_secs`; `current` holds at most `max_tracked_addresses`.
//! When it is full an untracked address counts as at the maximum delay:
//! fail safe under a spray of addresses. IPv6 addresses count per /64 (one
//! attacker owns 2^64 of them). Success never resets a count: a healthy
//! device behind the attacker's NAT must not forgive it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The first delay; doubled per further failure.
pub const BASE_DELAY: Duration = Duration::from_millis(100);

/// The settings, from `[auth]`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub delay_after: u32,
    pub delay_max: Duration,
    pub window: Duration,
    /// 0 = no ban.
    pub ban_after: u32,
    pub ban: Duration,
    pub max_tracked: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    failures: u32,
    banned_until: Option<Instant>,
}

#[derive(Debug)]
struct Gens {
    current: HashMap<IpAddr, Entry>,
    previous: HashMap<IpAddr, Entry>,
    rotated: Instant,
}

/// What a failure costs the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    /// Wait this long before sending the refusing CONNACK.
    pub delay: Duration,
    /// The address was banned by this failure.
    pub banned: bool,
}

/// The table. A `std` mutex: held for a hash lookup, never across an await.
#[derive(Debug)]
pub struct Failures {
    policy: Policy,
    gens: Mutex<Gens>,
}

/// The key an address counts under: IPv4 (also IPv4-mapped IPv6) as is,
/// IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Failures {
    pub fn new(policy: Policy) -> Failures {
        Failures {
            policy,
            gens: Mutex::new(Gens {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gens> {
        let mut g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(g.rotated) >= self.policy.window {
            g.previous = std::mem::take(&mut g.current);
            g.rotated = now;
        }
        g
    }

    /// The delay after `n` failures.
    pub fn delay_for(&self, n: u32) -> Duration {
        if n < self.policy.delay_after.max(1) {
            return Duration::ZERO;
        }
        let doublings = (n - self.policy.delay_after.max(1)).min(20);
        (BASE_DELAY * (1u32 << doublings)).min(self.policy.delay_max)
    }

    /// Records a failure from `ip`; returns what it costs.
    pub fn fail(&self, ip: IpAddr) -> Penalty {
        let k = key(ip);
        let mut g = self.lock();
        let before = g
            .current
            .get(&k)
            .or_else(|| g.previous.get(&k))
            .copied()
            .unwrap_or_default();
        if !g.current.contains_key(&k) && g.current.len() >= self.policy.max_tracked {
            // Full: treat the address as a known offender rather than forget it.
            return Penalty {
                delay: self.policy.delay_max,
                banned: false,
            };
        }
        let failures = before.failures.saturating_add(1);
        let ban_now = self.policy.ban_after > 0
            && failures >= self.policy.ban_after
            && before.banned_until.is_none_or(|t| t <= Instant::now());
        let entry = Entry {
            failures,
            banned_until: if ban_now {
                Some(Instant::now() + self.policy.ban)
            } else {
                before.banned_until
            },
        };
        g.current.insert(k, entry);
        Penalty {
            delay: self.delay_for(failures),
            banned: ban_now,
        }
    }

    /// Whether `ip` is banned now.
    pub fn banned(&self, ip: IpAddr) -> bool {
        if self.policy.ban_after == 0 {
            return false;
        }
        let k = key(ip);
        let g = self.lock();
        let now = Instant::now();
        g.current
            .get(&k)
            .or_else(|| g.previous.get(&k))
            .and_then(|e| e.banned_until)
            .is_some_and(|t| t > now)
    }

    /// Addresses tracked (both generations), for the gauge.
    pub fn tracked(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            delay_after: 3,
            delay_max: Duration::from_millis(1000),
            window: Duration::from_secs(300),
            ban_after: 0,
            ban: Duration::from_secs(60),
            max_tracked: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_cap() {
        let f = Failures::new(policy());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let delays: Vec<u64> = (0..7)
            .map(|_| f.fail(ip).delay.as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 0, 100, 200, 400, 800, 1000]);
        // Another address starts from nothing.
        assert_eq!(f.fail("10.0.0.2".parse().unwrap()).delay, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let f = Failures::new(policy());
        f.fail("2001:db8:1:2::1".parse().unwrap());
        f.fail("2001:db8:1:2::ffff".parse().unwrap());
        assert_eq!(
            f.fail("2001:db8:1:2:aaaa::1".parse().unwrap()).delay,
            BASE_DELAY
        );
        f.fail("10.0.0.9".parse().unwrap());
        f.fail("::ffff:10.0.0.9".parse().unwrap());
        assert_eq!(f.fail("10.0.0.9".parse().unwrap()).delay, BASE_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_treats_newcomers_as_offenders_and_windows_forget() {
        let f = Failures::new(policy());
        for i in 0..4 {
            f.fail(IpAddr::from([10, 0, 1, i]));
        }
        assert_eq!(f.tracked(), 4);
        let p = f.fail("10.0.2.1".parse().unwrap());
        assert_eq!(p.delay, Duration::from_millis(1000));
        assert_eq!(f.tracked(), 4, "bounded");
        // Two windows without failures: forgotten.
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(f.tracked(), 4, "kept for one more window");
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(f.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bans_after_the_threshold_for_ban_secs() {
        let f = Failures::new(Policy {
            ban_after: 2,
            ..policy()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!f.fail(ip).banned);
        assert!(!f.banned(ip));
        assert!(f.fail(ip).banned);
        assert!(f.banned(ip));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!f.banned(ip));
    }
}
