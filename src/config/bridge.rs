//! `[bridge]`: backends (Kafka, AMQP, file) and the uplink routes that
//! mirror MQTT topics to them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[bridge]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Messages waiting per backend to be handed to its client. When full,
    /// QoS 1/2 publishers wait (their PUBACK is delayed, nothing is lost);
    /// QoS 0 messages are dropped and counted.
    pub queue_capacity: usize,
    /// Backends that routes name (`[[bridge.backends]]`).
    pub backends: Vec<BackendConfig>,
    /// Uplink routes, MQTT → backend (`[[bridge.uplink]]`).
    pub uplink: Vec<UplinkRoute>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            queue_capacity: 10_000,
            backends: vec![BackendConfig::File(FileBackend {
                name: "file".into(),
                path: PathBuf::from("./data/uplink"),
                max_file_bytes: 64 * 1024 * 1024,
                max_files: 4,
            })],
            uplink: vec![UplinkRoute {
                name: "telemetry".into(),
                filter: "devices/+/telemetry/#".into(),
                backend: "file".into(),
                target: "telemetry".into(),
                key: None,
                routing_key: None,
                ack: AckMode::Backend,
                give_up_secs: 0,
                spool_max_bytes: default_spool_bytes(),
            }],
        }
    }
}

/// One backend, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendConfig {
    /// Append-only JSON-lines files, rotated by size (needs no service).
    File(FileBackend),
    /// Kafka (or a Kafka-protocol broker) through librdkafka.
    Kafka(KafkaBackend),
    /// RabbitMQ / AMQP 0-9-1 with publisher confirms.
    Amqp(AmqpBackend),
}

impl BackendConfig {
    pub fn name(&self) -> &str {
        match self {
            BackendConfig::File(b) => &b.name,
            BackendConfig::Kafka(b) => &b.name,
            BackendConfig::Amqp(b) => &b.name,
        }
    }
}

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    /// Name routes use to refer to this backend.
    pub name: String,
    /// Directory of the files; a route's target is the file name stem
    /// (`<target>.jsonl`, rotated to `<target>.jsonl.1` ...).
    pub path: PathBuf,
    /// Size at which a file is rotated, in bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept per target (older ones are deleted).
    pub max_files: usize,
}

/// `kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaBackend {
    /// Name routes use to refer to this backend.
    pub name: String,
    /// `bootstrap.servers`, e.g. "127.0.0.1:9092".
    pub bootstrap_servers: String,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Create the (literal) topics that routes name at start-up if missing.
    #[serde(default)]
    pub create_topics: bool,
    /// Partitions of topics created by mqbridge.
    #[serde(default = "default_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of topics created by mqbridge.
    #[serde(default = "default_replication")]
    pub topic_replication: i32,
    /// Extra librdkafka properties, each "key=value" (passed through as is;
    /// acks=all and idempotence are always on).
    #[serde(default)]
    pub properties: Vec<String>,
}

/// `kind = "amqp"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBackend {
    /// Name routes use to refer to this backend.
    pub name: String,
    /// AMQP URI, e.g. "amqp://guest:guest@127.0.0.1:5672/%2f".
    pub uri: String,
    /// Exchange routes publish to when their `target` is empty.
    #[serde(default)]
    pub exchange: String,
    /// Exchange type when declared: direct, fanout, topic or headers.
    #[serde(default = "default_exchange_kind")]
    pub exchange_kind: String,
    /// Declare the exchange (durable) at start-up.
    #[serde(default)]
    pub declare_exchange: bool,
    /// Delivery mode 2 (persistent) for published messages.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Publish with `mandatory`, so unroutable messages come back and are
    /// reported as rejected instead of vanishing.
    #[serde(default = "yes")]
    pub mandatory: bool,
}

/// When a device's QoS 1/2 PUBLISH is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// After the backend confirmed the message (delivery report / publisher confirm).
    Backend,
    /// After it is in the local fsynced spool (drained to the backend in order).
    Spool,
}

/// One `[[bridge.uplink]]` route. Templates may use `{topic}`,
/// `{topic_dotted}` (`/` → `.`), `{client_id}`, `{username}` and `{level.N}`
/// (0-based topic level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkRoute {
    /// Route name (logs and metric label).
    pub name: String,
    /// MQTT topic filter; `+` and `#` allowed.
    pub filter: String,
    /// Name of a `[[bridge.backends]]` entry.
    pub backend: String,
    /// Kafka topic / AMQP exchange / file stem (template). Empty for AMQP
    /// means the backend's `exchange`.
    #[serde(default)]
    pub target: String,
    /// Kafka message key (template); default `{client_id}` so that each
    /// device's messages stay in order on one partition.
    #[serde(default)]
    pub key: Option<String>,
    /// AMQP routing key (template); default `{topic_dotted}`.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// `backend` (default) or `spool`.
    #[serde(default = "default_ack")]
    pub ack: AckMode,
    /// Seconds a message may wait for its backend before the device is told
    /// it failed (5.0 reason code); 0 = wait as long as it takes.
    #[serde(default)]
    pub give_up_secs: u64,
    /// With `ack = "spool"`: bound of the route's spool in bytes. When full,
    /// acknowledgements wait for the backend as in `backend` mode.
    #[serde(default = "default_spool_bytes")]
    pub spool_max_bytes: u64,
}

fn default_compression() -> String {
    "lz4".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_exchange_kind() -> String {
    "topic".into()
}
fn yes() -> bool {
    true
}
fn default_spool_bytes() -> u64 {
    1 << 30
}
fn default_ack() -> AckMode {
    AckMode::Backend
}

impl BridgeConfig {
    /// Checks names, references, filters and templates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queue_capacity == 0 {
            return Err(ConfigError::invalid(
                "bridge.queue_capacity",
                "must be greater than 0",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let at = |what: &str| format!("bridge.backends[{i}].{what}");
            if b.name().is_empty() || !names.insert(b.name()) {
                return Err(ConfigError::at(
                    at("name"),
                    format!("{:?} is empty or used twice", b.name()),
                ));
            }
            match b {
                BackendConfig::File(f) if f.max_file_bytes == 0 || f.max_files == 0 => {
                    return Err(ConfigError::at(
                        at("max_file_bytes"),
                        "max_file_bytes and max_files must be > 0",
                    ));
                }
                BackendConfig::Kafka(k) if k.bootstrap_servers.is_empty() => {
                    return Err(ConfigError::at(
                        at("bootstrap_servers"),
                        "must not be empty",
                    ));
                }
                BackendConfig::Kafka(k) => {
                    if let Some(p) = k.properties.iter().find(|p| !p.contains('=')) {
                        return Err(ConfigError::at(
                            at("properties"),
                            format!("{p:?} is not key=value"),
                        ));
                    }
                }
                BackendConfig::Amqp(a) if a.uri.is_empty() => {
                    return Err(ConfigError::at(at("uri"), "must not be empty"));
                }
                _ => {}
            }
        }
        for (i, r) in self.uplink.iter().enumerate() {
            let at = |what: &str| format!("bridge.uplink[{i}].{what}");
            if !crate::mqtt::topic::valid_filter(&r.filter) {
                return Err(ConfigError::at(
                    at("filter"),
                    format!("{:?} is not a valid topic filter", r.filter),
                ));
            }
            let Some(b) = self.backends.iter().find(|b| b.name() == r.backend) else {
                return Err(ConfigError::at(
                    at("backend"),
                    format!("no backend named {:?}", r.backend),
                ));
            };
            let target_required = !matches!(b, BackendConfig::Amqp(a) if !a.exchange.is_empty());
            if target_required && r.target.is_empty() {
                return Err(ConfigError::at(
                    at("target"),
                    "must not be empty for this backend",
                ));
            }
            for (what, t) in [
                ("target", Some(&r.target)),
                ("key", r.key.as_ref()),
                ("routing_key", r.routing_key.as_ref()),
            ] {
                if let Some(t) = t {
                    crate::bridge::template::Template::parse(t)
                        .map_err(|e| ConfigError::at(at(what), e.to_string()))?;
                }
            }
            if r.ack == AckMode::Spool && r.spool_max_bytes == 0 {
                return Err(ConfigError::at(at("spool_max_bytes"), "must be > 0"));
            }
        }
        Ok(())
    }
}
