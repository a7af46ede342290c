//! Kafka sink (uplink): mirrors uplink records to Kafka (or a Kafka-protocol broker)
//! through librdkafka's idempotent producer, and confirms a record only once
//! its delivery report says the broker has it (`acks=all`).
//!
//! - this file: start-up, the producer's configuration, and the client
//!   context that forwards librdkafka's logs and errors to `tracing`.
//! - [`topics`]: which topics exist (metadata, cached) and creating them, so
//!   a record to a missing topic is rejected instead of waiting forever.
//! - [`message`]: record → Kafka message; permanent vs transient errors.
//! - [`client`]: the [`Sink`](crate::bridge::contract::Sink) driven by
//!   [`run_sink`]: hand a record to the producer, turn its delivery report
//!   into a confirm, a refusal or a re-send.
//! - [`recovery`]: preparing topics, replacing a producer that cannot go
//!   on, taking back records for a topic that disappeared.

mod client;
mod message;
mod recovery;
#[cfg(test)]
mod tests;
mod topics;

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Statistics;
use tokio_util::task::TaskTracker;

use crate::bridge::driver::run_sink;
use crate::bridge::metrics::BackendCounters;
use crate::bridge::registry::SettingError;
use crate::bridge::{BridgeError, RunningSink};
use crate::config::KafkaBackend;

/// The producer type the sink uses.
type Producer = rdkafka::producer::FutureProducer<SinkContext>;

/// Settings we never let `properties` weaken: a confirmation must mean the
/// broker has the message on all in-sync replicas, once and in order.
const FORCED: [(&str, &str); 2] = [("acks", "all"), ("enable.idempotence", "true")];

/// librdkafka aliases, mapped to the names we set, so that an operator's
/// alias replaces our value instead of racing it (the config is a map with
/// no defined order).
const ALIASES: [(&str, &str); 4] = [
    ("request.required.acks", "acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("compression.codec", "compression.type"),
    ("metadata.broker.list", "bootstrap.servers"),
];

/// Starts the Kafka sink for `cfg`. `topics` are the literal targets of the
/// routes using it (created at start-up when `create_topics` is set).
///
/// Fails only on a configuration librdkafka refuses; a broker that is down
/// is waited for by the driver.
pub async fn start(
    cfg: &KafkaBackend,
    topics: Vec<String>,
    counters: BackendCounters,
    capacity: usize,
    tasks: &TaskTracker,
) -> Result<RunningSink, BridgeError> {
    let backend: Arc<str> = cfg.name.as_str().into();
    let client_cfg = client_config(cfg).map_err(|e| BridgeError::settings(&cfg.name, &e))?;
    let context = SinkContext {
        backend: backend.clone(),
        up: counters.up.clone(),
    };
    let producer: Producer = client_cfg
        .create_with_context(context.clone())
        .map_err(|e| BridgeError::Backend {
            backend: cfg.name.clone(),
            what: "creating the Kafka producer".into(),
            source: e.into(),
        })?;
    let settings = client::Settings {
        backend: backend.clone(),
        client_cfg,
        context,
        create_topics: cfg.create_topics,
        partitions: cfg.topic_partitions,
        replication: cfg.topic_replication,
    };
    let sink = client::KafkaSink::new(settings, producer, &counters, topics);
    Ok(run_sink(
        &cfg.name,
        Box::new(sink),
        counters,
        capacity,
        tasks,
    ))
}

/// Producer settings: ours first, then the operator's `properties`, except
/// for [`FORCED`] ones, which are logged and kept as they are.
fn client_config(cfg: &KafkaBackend) -> Result<ClientConfig, Vec<SettingError>> {
    let mut c = ClientConfig::new();
    // Warnings are worth seeing; the default follows the `log` crate, which
    // this program does not use.
    c.set_log_level(RDKafkaLogLevel::Warning);
    c.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("client.id", format!("mqbridge-{}", cfg.name))
        .set("compression.type", &cfg.compression)
        // Infinite: librdkafka never gives a message up by itself; how long
        // a device waits is the route's `give_up_secs`.
        .set("message.timeout.ms", "0")
        // Broker connection states feed the `up` gauge (see SinkContext).
        .set("statistics.interval.ms", "5000");
    for (k, v) in FORCED {
        c.set(k, v);
    }
    for (key, value) in super::properties(cfg)? {
        let key = ALIASES
            .iter()
            .find(|(alias, _)| *alias == key)
            .map_or(key, |(_, name)| *name);
        match FORCED.iter().find(|(k, _)| *k == key) {
            Some((_, forced)) if !same_setting(key, value, forced) => tracing::warn!(
                backend = %cfg.name,
                "Kafka property {key}={value} ignored: mqbridge always uses {key}={forced}"
            ),
            _ => {
                c.set(key, value);
            }
        }
    }
    Ok(c)
}

fn same_setting(key: &str, value: &str, forced: &str) -> bool {
    value.eq_ignore_ascii_case(forced) || (key == "acks" && value == "-1")
}

/// Forwards librdkafka's logs to `tracing`, and keeps the `up` gauge in
/// step with the broker connections, also while nothing is being sent.
#[derive(Clone)]
struct SinkContext {
    backend: Arc<str>,
    up: Gauge,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let owner = super::Owner {
            backend: Some(&self.backend),
            route: None,
        };
        super::forward_log(owner, level, fac, message);
    }

    fn stats(&self, statistics: Statistics) {
        let connected = statistics.brokers.values().any(|b| b.state == "UP");
        self.up.set(i64::from(connected));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let backend = &*self.backend;
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.up.set(0);
                tracing::warn!(backend, %error, reason, "Kafka client error");
            }
            // Already logged by librdkafka itself (see `log`).
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!(backend, %error, reason, "Kafka client error")
            }
            _ => tracing::warn!(backend, %error, reason, "Kafka client error"),
        }
    }
}
