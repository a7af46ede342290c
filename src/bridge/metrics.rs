//! Bridge metrics, labelled by route or backend name (operator-chosen,
//! few), never by client id or topic. Per-route counters are resolved once
//! when routes are built ([`RouteCounters`]), so the hot path is an atomic add.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResult {
    pub route: String,
    pub result: &'static str,
}

/// A message a downlink route produces to its backend: a delivery receipt
/// or a dead letter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProducedLabels {
    pub route: String,
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

/// The last error of a backend connection or a downlink source, for the
/// admin API: what it was and when (ms since the epoch). Written only on
/// errors, read per API call.
#[derive(Clone, Debug, Default)]
pub struct LastError(Arc<Mutex<Option<(String, u64)>>>);

impl LastError {
    pub fn set(&self, what: String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((what, now));
    }

    pub fn get(&self) -> Option<(String, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Registered bridge metric families.
pub struct BridgeMetrics {
    /// Last errors by "backend:<name>" / "route:<name>".
    last_errors: Mutex<HashMap<String, LastError>>,
    /// `mqbridge_bridge_messages_total{route,result}`: result is delivered
    /// (backend confirmed), rejected (backend refused for good), failed
    /// (gave up / backend closed), dropped (QoS 0 buffer full), unresolved
    /// (template could not be resolved).
    pub messages: Family<RouteResult, Counter>,
    /// `mqbridge_bridge_downlink_produced_total{route,kind,result}`: what a
    /// downlink route produced to its backend (kind receipt or dead_letter),
    /// with the same results as `messages`; kept apart from the uplink.
    pub produced: Family<ProducedLabels, Counter>,
    /// `mqbridge_bridge_commands_total{route,result}`: downlink commands by
    /// outcome: stored, no_session, rejected (one per session whose queue or
    /// store limit refused it), expired,
    /// invalid (bad topic/client id/size), dead_lettered, retried (not stored,
    /// consumed again), blocked (refused by a full global store budget; not
    /// committed, consumed again).
    pub commands: Family<RouteResult, Counter>,
    /// `mqbridge_bridge_downlink_blocked{route}`: 1 while the route's commands
    /// are refused by a full global store budget (the source pauses and retries).
    pub downlink_blocked: Family<RouteLabel, Gauge>,
    /// `mqbridge_bridge_receipts_total{route,result}`: delivery receipts sent or dropped.
    pub receipts: Family<RouteResult, Counter>,
    /// `mqbridge_bridge_backend_up{backend}`: 1 while connected.
    pub backend_up: Family<BackendLabel, Gauge>,
    /// `mqbridge_bridge_downlink_source_up{route}`: 1 while the route's
    /// command source is connected.
    pub source_up: Family<RouteLabel, Gauge>,
    /// `mqbridge_bridge_downlink_unsettled_commands{route}`: commands
    /// consumed and not settled yet (not committed / acked).
    pub source_unsettled: Family<RouteLabel, Gauge>,
    /// `mqbridge_bridge_downlink_lag_messages{route}`: Kafka only, messages
    /// behind the ends of the route's partitions (librdkafka statistics,
    /// every 5 s).
    pub source_lag: Family<RouteLabel, Gauge>,
    /// `mqbridge_bridge_backend_retries_total{backend}`: reconnects and re-sends.
    pub retries: Family<BackendLabel, Counter>,
    /// `mqbridge_bridge_spool_full_total{route}`: times a route's spool was full
    /// and acknowledgements fell back to waiting for the backend.
    pub spool_full: Family<RouteLabel, Counter>,
    /// `mqbridge_bridge_spool_bytes{route}`: bytes in the route's spool
    /// (encoded sizes), waiting for the backend.
    pub spool_bytes: Family<RouteLabel, Gauge>,
    /// `mqbridge_bridge_confirm_duration_seconds{backend}`: hand-off to confirmation.
    pub confirm_duration: Family<BackendLabel, Histogram>,
    /// `mqbridge_bridge_reserved_properties_dropped_total`: device user
    /// properties dropped from bridged records because their name uses the
    /// gateway's reserved `mqtt_` prefix (a forged header).
    pub reserved_dropped: Counter,
}

impl BridgeMetrics {
    pub fn new(registry: &mut Registry) -> BridgeMetrics {
        let m = BridgeMetrics {
            last_errors: Mutex::default(),
            messages: Family::default(),
            produced: Family::default(),
            commands: Family::default(),
            downlink_blocked: Family::default(),
            receipts: Family::default(),
            backend_up: Family::default(),
            source_up: Family::default(),
            source_unsettled: Family::default(),
            source_lag: Family::default(),
            retries: Family::default(),
            spool_full: Family::default(),
            spool_bytes: Family::default(),
            confirm_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            reserved_dropped: Counter::default(),
        };
        registry.register(
            "mqbridge_bridge_reserved_properties_dropped",
            "Device user properties dropped from bridged records (reserved mqtt_ prefix)",
            m.reserved_dropped.clone(),
        );
        registry.register(
            "mqbridge_bridge_messages",
            "Uplink messages by route and result",
            m.messages.clone(),
        );
        registry.register(
            "mqbridge_bridge_downlink_produced",
            "Receipts and dead letters produced by downlink routes, by result",
            m.produced.clone(),
        );
        registry.register(
            "mqbridge_bridge_commands",
            "Downlink commands by route and outcome",
            m.commands.clone(),
        );
        registry.register(
            "mqbridge_bridge_downlink_blocked",
            "1 while a downlink route is paused by a full global store budget",
            m.downlink_blocked.clone(),
        );
        registry.register(
            "mqbridge_bridge_receipts",
            "Delivery receipts by route and result",
            m.receipts.clone(),
        );
        registry.register(
            "mqbridge_bridge_backend_up",
            "1 while the backend is connected",
            m.backend_up.clone(),
        );
        registry.register(
            "mqbridge_bridge_downlink_source_up",
            "1 while the downlink route's command source is connected",
            m.source_up.clone(),
        );
        registry.register(
            "mqbridge_bridge_downlink_unsettled_commands",
            "Commands consumed by the downlink route and not settled yet",
            m.source_unsettled.clone(),
        );
        registry.register(
            "mqbridge_bridge_downlink_lag_messages",
            "Kafka: messages behind the ends of the downlink route's partitions",
            m.source_lag.clone(),
        );
        registry.register(
            "mqbridge_bridge_backend_retries",
            "Backend reconnects and re-sends",
            m.retries.clone(),
        );
        registry.register(
            "mqbridge_bridge_spool_full",
            "Times a route's spool was full (acks waited for the backend)",
            m.spool_full.clone(),
        );
        registry.register(
            "mqbridge_bridge_spool_bytes",
            "Bytes in a route's spool, waiting for the backend",
            m.spool_bytes.clone(),
        );
        registry.register_with_unit(
            "mqbridge_bridge_confirm_duration",
            "Time from hand-off to backend confirmation",
            Unit::Seconds,
            m.confirm_duration.clone(),
        );
        m
    }

    pub fn route(&self, route: &str) -> RouteCounters {
        RouteCounters::by_result(|result| {
            self.messages.get_or_create(&RouteResult {
                route: route.to_string(),
                result,
            })
        })
    }

    /// Counters for what downlink route `route` produces: `kind` is
    /// "receipt" or "dead_letter".
    pub fn produced(&self, route: &str, kind: &'static str) -> RouteCounters {
        RouteCounters::by_result(|result| {
            self.produced.get_or_create(&ProducedLabels {
                route: route.to_string(),
                kind,
                result,
            })
        })
    }

    pub fn downlink(&self, route: &str) -> CommandCounters {
        let c = |result| {
            self.commands
                .get_or_create(&RouteResult {
                    route: route.to_string(),
                    result,
                })
                .clone()
        };
        let r = |result| {
            self.receipts
                .get_or_create(&RouteResult {
                    route: route.to_string(),
                    result,
                })
                .clone()
        };
        CommandCounters {
            stored: c("stored"),
            no_session: c("no_session"),
            rejected: c("rejected"),
            expired: c("expired"),
            invalid: c("invalid"),
            dead_lettered: c("dead_lettered"),
            retried: c("retried"),
            blocked: c("blocked"),
            blocked_now: self
                .downlink_blocked
                .get_or_create(&RouteLabel {
                    route: route.to_string(),
                })
                .clone(),
            receipts_sent: r("sent"),
            receipts_failed: r("failed"),
        }
    }

    fn last_error(&self, key: &str) -> LastError {
        let mut m = self.last_errors.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.to_string()).or_default().clone()
    }

    /// The gauges of a downlink route's source.
    pub fn source(&self, route: &str) -> SourceGauges {
        let l = RouteLabel {
            route: route.to_string(),
        };
        SourceGauges {
            last_error: self.last_error(&format!("route:{route}")),
            up: self.source_up.get_or_create(&l).clone(),
            unsettled: self.source_unsettled.get_or_create(&l).clone(),
            lag: self.source_lag.get_or_create(&l).clone(),
        }
    }

    pub fn spool_bytes(&self, route: &str) -> Gauge {
        self.spool_bytes
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone()
    }

    pub fn spool_full(&self, route: &str) -> Counter {
        self.spool_full
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone()
    }

    pub fn backend(&self, backend: &str) -> BackendCounters {
        let l = BackendLabel {
            backend: backend.to_string(),
        };
        BackendCounters {
            last_error: self.last_error(&format!("backend:{backend}")),
            up: self.backend_up.get_or_create(&l).clone(),
            retries: self.retries.get_or_create(&l).clone(),
            confirm: self.confirm_duration.get_or_create(&l).clone(),
        }
    }
}

/// Counters of one route.
#[derive(Clone, Debug)]
pub struct RouteCounters {
    pub delivered: Counter,
    pub rejected: Counter,
    pub failed: Counter,
    pub dropped: Counter,
    pub unresolved: Counter,
}

impl RouteCounters {
    /// One counter per result, each from `counter(result)`.
    fn by_result<C>(counter: impl Fn(&'static str) -> C) -> RouteCounters
    where
        C: std::ops::Deref<Target = Counter>,
    {
        let c = |result| counter(result).clone();
        RouteCounters {
            delivered: c("delivered"),
            rejected: c("rejected"),
            failed: c("failed"),
            dropped: c("dropped"),
            unresolved: c("unresolved"),
        }
    }
}

/// Metrics of one backend.
#[derive(Clone, Debug)]
pub struct BackendCounters {
    pub up: Gauge,
    pub last_error: LastError,
    pub retries: Counter,
    pub confirm: Histogram,
}

/// Gauges of one downlink route's source.
#[derive(Clone, Debug, Default)]
pub struct SourceGauges {
    /// 1 while connected (`/readyz` too).
    pub up: Gauge,
    /// Consumed and not settled yet.
    pub unsettled: Gauge,
    /// Kafka: messages behind the partitions' ends.
    pub lag: Gauge,
    pub last_error: LastError,
}

/// Counters of one downlink route.
#[derive(Clone, Debug)]
pub struct CommandCounters {
    pub stored: Counter,
    pub no_session: Counter,
    pub rejected: Counter,
    pub expired: Counter,
    pub invalid: Counter,
    pub dead_lettered: Counter,
    pub retried: Counter,
    pub blocked: Counter,
    /// 1 while blocked by the store budget.
    pub blocked_now: Gauge,
    pub receipts_sent: Counter,
    pub receipts_failed: Counter,
}

#[cfg(test)]
mod produced_tests {
    use super::*;

    /// Receipts and dead letters are counted apart from the uplink messages.
    #[test]
    fn produced_messages_are_not_uplink_messages() {
        let mut registry = Registry::default();
        let m = BridgeMetrics::new(&mut registry);
        m.produced("cmds", "dead_letter").delivered.inc();
        m.produced("cmds", "receipt").failed.inc();
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains(r#"mqbridge_bridge_downlink_produced_total{route="cmds",kind="dead_letter",result="delivered"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mqbridge_bridge_downlink_produced_total{route="cmds",kind="receipt",result="failed"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"mqbridge_bridge_messages_total{route="cmds""#),
            "{text}"
        );
    }
}
