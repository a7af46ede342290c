//! [`Readiness`]: what `/readyz` answers, worked out at each request from
//! the live state: started and not stopping, the store accepting writes, the
//! router alive, every configured backend connected (uplink sinks and
//! downlink sources), no downlink paused by the store budget.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::mqtt::router::RouterMsg;

/// What `/readyz` reads; every part is set by the subsystem it is about.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    stopping: AtomicBool,
    /// The store refuses writes (disk below its watermark, or a commit
    /// failing and being retried).
    store_refusing: AtomicBool,
    /// Downlink routes paused because a global store budget refuses their
    /// commands (they are not committed until it has room again).
    downlink_blocked: AtomicUsize,
    /// Connection gauges (1 = connected) of the backends, by what they are.
    /// Read per request only, never on a hot path.
    connected: Mutex<Vec<(String, Gauge)>>,
    router: Mutex<Option<mpsc::WeakSender<RouterMsg>>>,
}

impl Readiness {
    /// Set once every listener is bound and every part started.
    pub fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Release);
    }

    /// Set when shutdown begins: load balancers should stop sending.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Set by the store's disk watch on every check.
    pub fn set_store_accepting(&self, accepting: bool) {
        self.store_refusing.store(!accepting, Ordering::Release);
    }

    /// A downlink route became blocked (`true`) or resumed (`false`); each
    /// route reports its transitions only.
    pub fn downlink_blocked(&self, blocked: bool) {
        if blocked {
            self.downlink_blocked.fetch_add(1, Ordering::AcqRel);
        } else {
            let _ = self
                .downlink_blocked
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Watches a connection gauge: not ready while it is 0. `what` names it
    /// in the answer, e.g. "uplink backend kafka".
    pub fn watch_connection(&self, what: String, connected: Gauge) {
        lock(&self.connected).push((what, connected));
    }

    /// Watches the router: not ready once it is gone.
    pub fn watch_router(&self, router: mpsc::WeakSender<RouterMsg>) {
        *lock(&self.router) = Some(router);
    }

    /// Why the gateway is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.started.load(Ordering::Acquire) {
            why.push("starting".to_string());
        }
        if self.stopping.load(Ordering::Acquire) {
            why.push("shutting down".to_string());
        }
        if self.store_refusing.load(Ordering::Acquire) {
            why.push("the store refuses writes (disk low or failing)".to_string());
        }
        if self.downlink_blocked.load(Ordering::Acquire) > 0 {
            why.push("downlink paused, the store budget is full".to_string());
        }
        let router_gone = lock(&self.router)
            .as_ref()
            .is_some_and(|r| r.upgrade().is_none_or(|r| r.is_closed()));
        if router_gone {
            why.push("the router stopped".to_string());
        }
        for (what, gauge) in lock(&self.connected).iter() {
            if gauge.get() == 0 {
                why.push(format!("{what} not connected"));
            }
        }
        why
    }
}

/// Every update is a single push or assignment: a panic elsewhere cannot
/// leave the data half-written, so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
