//! The ACL's metrics and its one emit point per refusal: the counter
//! `mqbridge_acl_denied_total{action}` (no client label) and a warning,
//! rate-limited per action because a device can trigger refusals at line
//! rate (the rest at debug level; the counter has them all).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What was refused (`action` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denied {
    /// A PUBLISH (5.0: PUBACK/PUBREC 0x87; 3.1.1: acknowledged and dropped).
    Publish,
    /// A SUBSCRIBE filter (SUBACK 0x87 / 0x80).
    Subscribe,
    /// A will topic at CONNECT (CONNACK 0x87 / 0x05), or when published.
    Will,
    /// A retained message not sent at subscribe time.
    Retained,
    /// A routed message not delivered to a subscription the rules no longer cover.
    Deliver,
}

impl Denied {
    pub const ALL: [Denied; 5] = [
        Denied::Publish,
        Denied::Subscribe,
        Denied::Will,
        Denied::Retained,
        Denied::Deliver,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Denied::Publish => "publish",
            Denied::Subscribe => "subscribe",
            Denied::Will => "will",
            Denied::Retained => "retained",
            Denied::Deliver => "deliver",
        }
    }
}

impl EncodeLabelValue for Denied {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeniedLabels {
    pub action: Denied,
}

/// Outcome of an `acl_file` reload (`result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    Ok,
    Failed,
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let s = match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Failed => "failed",
        };
        std::fmt::Write::write_str(encoder, s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

/// Every this many milliseconds at most one warning per action.
const WARN_EVERY_MS: u64 = 10_000;

#[derive(Debug, Default)]
struct Limiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Limiter {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = crate::mqtt::message::now_ms();
        let prev = self.last_ms.load(Ordering::Relaxed);
        let due = prev == 0 || now.saturating_sub(prev) >= WARN_EVERY_MS;
        if due
            && self
                .last_ms
                .compare_exchange(prev, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The ACL's metrics, registered into the gateway's registry.
#[derive(Debug)]
pub struct AclMetrics {
    /// `mqbridge_acl_denied_total{action}`.
    pub denied: Family<DeniedLabels, Counter>,
    /// `mqbridge_acl_reloads_total{result}`: `acl_file` re-reads.
    pub reloads: Family<ReloadLabels, Counter>,
    /// `mqbridge_acl_rules`: rules in force (config and file).
    pub rules: Gauge,
    by_action: Vec<Counter>,
    limiters: Vec<Limiter>,
}

impl AclMetrics {
    pub fn new(registry: &mut Registry) -> AclMetrics {
        let m = AclMetrics::unregistered();
        registry.register(
            "mqbridge_acl_denied",
            "Operations refused by the ACL, by action",
            m.denied.clone(),
        );
        registry.register(
            "mqbridge_acl_reloads",
            "Re-reads of the acl_file, by result (a failed one keeps the old rules)",
            m.reloads.clone(),
        );
        registry.register("mqbridge_acl_rules", "ACL rules in force", m.rules.clone());
        m
    }

    /// Metrics that no registry exports (tests, the router's default).
    pub fn unregistered() -> AclMetrics {
        let denied = Family::<DeniedLabels, Counter>::default();
        let by_action = Denied::ALL
            .iter()
            .map(|&action| denied.get_or_create(&DeniedLabels { action }).clone())
            .collect();
        let reloads = Family::<ReloadLabels, Counter>::default();
        for result in [ReloadResult::Ok, ReloadResult::Failed] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        AclMetrics {
            denied,
            reloads,
            rules: Gauge::default(),
            by_action,
            limiters: Denied::ALL.iter().map(|_| Limiter::default()).collect(),
        }
    }

    /// Counts and logs one refusal.
    pub fn denied(&self, action: Denied, client_id: &str, topic: &str) {
        if let Some(c) = self.by_action.get(action as usize) {
            c.inc();
        }
        match self.limiters.get(action as usize).and_then(Limiter::allow) {
            Some(suppressed) => {
                tracing::warn!(client_id, topic, action = action.as_str(), suppressed, "refused by the ACL (further refusals of this kind for 10 s at debug level; see mqbridge_acl_denied_total)")
            }
            None => {
                tracing::debug!(
                    client_id,
                    topic,
                    action = action.as_str(),
                    "refused by the ACL"
                )
            }
        }
    }

    pub(super) fn reload(&self, ok: bool) {
        let result = if ok {
            ReloadResult::Ok
        } else {
            ReloadResult::Failed
        };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }
}
