//! Kafka command source: a consumer group on the route's topics hands each
//! message to the route's processor as a [`Command`] and commits an offset
//! only once that command and every earlier one of its partition were
//! answered `Stored` or `Dropped` (at least once: duplicates, never loss).
//!
//! - this file: start-up, the consumer's configuration, topic creation,
//!   message → [`Command`].
//! - [`client`]: the [`Source`](crate::bridge::contract::Source) driven by
//!   [`run_source`]: consume, record settled offsets, commit.
//! - [`ledger`]: the offsets that may be committed.
//! - [`context`]: librdkafka logs and the commit-before-rebalance hook.

mod client;
mod context;
mod ledger;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;

use crate::bridge::downlink::Command;
use crate::bridge::driver::run_source;
use crate::bridge::registry::SettingError;
use crate::bridge::registry::SourceStart;
use crate::bridge::BridgeError;
use crate::config::{DownlinkRoute, KafkaBackend};

/// Starts consuming `route.topics` with a consumer group; hands commands to
/// `tx`. Fails only on a configuration librdkafka refuses: a broker that is
/// down is waited for (and topics created) by the driver.
pub async fn start(
    backend: &KafkaBackend,
    route: &DownlinkRoute,
    start: SourceStart,
) -> Result<tokio::task::JoinHandle<()>, BridgeError> {
    let SourceStart {
        node_id,
        tx,
        cancel: stop,
        tasks,
        gauges,
    } = start;
    let (node_id, tasks) = (node_id.as_str(), &tasks);
    let settings = |errors: Vec<SettingError>| {
        BridgeError::settings(&backend.name, &errors).in_route(&route.name)
    };
    let config = consumer_config(backend, route, node_id).map_err(settings)?;
    let admin = admin_config(backend).map_err(settings)?;
    // Create (and drop) one consumer now so that a bad property fails the
    // start-up instead of the task; this does not contact the broker.
    client::create(&config, route_name(route), Default::default())
        .map_err(|e| BridgeError::Backend {
            backend: backend.name.clone(),
            what: format!("creating the Kafka consumer of route {}", route.name),
            source: e.into(),
        })
        .map(drop)?;
    let mut topics = route.topics.clone();
    // The sink creates only uplink targets; the route's own targets are
    // created here so that receipts and dead letters are not refused.
    topics.extend(route.receipt_target.iter().cloned());
    topics.extend(route.dead_letter_target.iter().cloned());
    let admin = backend.create_topics.then_some(Admin {
        config: admin,
        topics,
        partitions: backend.topic_partitions,
        replication: backend.topic_replication,
    });
    let source = client::KafkaSource::new(
        route_name(route),
        route.topics.clone(),
        config,
        admin,
        gauges.lag.clone(),
    );
    Ok(run_source(
        &route.name,
        Box::new(source),
        tx,
        gauges,
        stop,
        tasks,
    ))
}

/// Settings we decide, whatever `properties` say: offsets are committed by
/// the source only (auto-commit would commit commands not stored yet), and
/// the group is the route's.
const FORCED: [&str; 3] = ["enable.auto.commit", "auto.commit.enable", "group.id"];

fn consumer_config(
    backend: &KafkaBackend,
    route: &DownlinkRoute,
    node_id: &str,
) -> Result<ClientConfig, Vec<SettingError>> {
    // Static membership (KIP-345): a restarted gateway (same node id) takes
    // its partitions back at once instead of after session.timeout.ms.
    let instance = format!("{node_id}.{}", route.name);
    let group = route
        .group_id
        .clone()
        .unwrap_or_else(|| format!("mqbridge-{}", route.name));
    let mut c = ClientConfig::new();
    c.set_log_level(RDKafkaLogLevel::Warning);
    c.set("bootstrap.servers", &backend.bootstrap_servers)
        .set(
            "client.id",
            format!("mqbridge-{}-{}", backend.name, route.name),
        )
        .set("group.id", &group)
        .set("group.instance.id", &instance)
        // The classic protocol: what tansu and most brokers speak.
        .set("group.protocol", "classic")
        .set("enable.auto.commit", "false")
        // Deliberate: a group with no committed offset (new, or expired)
        // starts at the oldest retained command. A command produced before
        // the gateway first joined must not be skipped; a duplicate is
        // better than a lost command.
        .set("auto.offset.reset", "earliest")
        // Consumer lag for mqbridge_bridge_downlink_lag_messages.
        .set("statistics.interval.ms", "5000");
    for (key, value) in super::properties(backend)? {
        if key == "group.id" {
            tracing::warn!(route = %route.name, "Kafka property group.id={value} ignored by the downlink: the route's group is {group}");
        } else if key == "group.instance.id" {
            tracing::warn!(route = %route.name, %value, %instance, "Kafka property group.instance.id ignored by the downlink: it is derived from server.node_id");
        } else if FORCED.contains(&key) && !value.eq_ignore_ascii_case("false") {
            tracing::warn!(route = %route.name, "Kafka property {key}={value} ignored: the downlink commits offsets itself, once commands are stored");
        } else {
            if key == "auto.offset.reset" && !value.eq_ignore_ascii_case("earliest") {
                tracing::warn!(route = %route.name, "auto.offset.reset={value}: a new consumer group may skip commands produced before it joined");
            }
            c.set(key, value);
        }
    }
    Ok(c)
}

/// Producer-side client for topic creation: the servers and the operator's
/// properties (security settings apply to it too).
fn admin_config(backend: &KafkaBackend) -> Result<ClientConfig, Vec<SettingError>> {
    let mut c = ClientConfig::new();
    c.set_log_level(RDKafkaLogLevel::Error);
    c.set("bootstrap.servers", &backend.bootstrap_servers);
    for (k, v) in super::properties(backend)? {
        if !FORCED.contains(&k) {
            c.set(k, v);
        }
    }
    Ok(c)
}

/// Topics to create before subscribing (`create_topics`).
struct Admin {
    config: ClientConfig,
    topics: Vec<String>,
    partitions: i32,
    replication: i32,
}

impl Admin {
    /// Creates the missing topics. `Err` if the broker did not answer (try
    /// again later); a topic it refuses is logged and left to the operator.
    async fn create(&self, route: &str) -> Result<(), rdkafka::error::KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.config.create()?;
        let new: Vec<NewTopic<'_>> = self
            .topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics(&new, &opts).await?;
        for r in results {
            match r {
                Ok(topic) => tracing::info!(route, %topic, "created Kafka topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::warn!(route, %topic, error = %code, "cannot create Kafka topic")
                }
            }
        }
        Ok(())
    }
}

/// A consumed message as a command (`position` = `topic/partition/offset`).
fn command<M: Message>(m: &M) -> Command {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(lossy).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Command {
        key: m.key().map(lossy),
        routing_key: None,
        headers,
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        position: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
        timestamp_ms: m
            .timestamp()
            .to_millis()
            .and_then(|t| u64::try_from(t).ok()),
    }
}

/// Route name as a cheap shared string for the context.
fn route_name(route: &DownlinkRoute) -> Arc<str> {
    Arc::from(route.name.as_str())
}
