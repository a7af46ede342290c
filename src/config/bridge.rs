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
    /// Downlink routes, backend commands → devices (`[[bridge.downlink]]`).
    #[serde(default)]
    pub downlink: Vec<DownlinkRoute>,
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
            downlink: Vec::new(),
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

/// One `[[bridge.downlink]]` route: commands consumed from a Kafka topic
/// (consumer group) or an AMQP queue, published into the broker. A command
/// is committed (Kafka) / acked (AMQP) only once it is durably stored in
/// every session it is for. Templates may use `{key}` (Kafka message key),
/// `{routing_key}` (AMQP routing key with `.` → `/`) and `{header.NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkRoute {
    /// Route name (logs, metric label, default consumer group suffix).
    pub name: String,
    /// A `kafka` or `amqp` backend's name.
    pub backend: String,
    /// Kafka: topics to consume.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Kafka: consumer group id; default `mqbridge-<name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// AMQP: queue to consume.
    #[serde(default)]
    pub queue: String,
    /// AMQP: declare the queue (durable) at start-up.
    #[serde(default)]
    pub declare_queue: bool,
    /// AMQP: bind the queue to this exchange (declared durable, kind topic)
    /// with `binding_key`; empty = no binding.
    #[serde(default)]
    pub bind_exchange: String,
    /// AMQP: binding key for `bind_exchange`.
    #[serde(default)]
    pub binding_key: String,
    /// AMQP: unacknowledged deliveries at most (basic.qos prefetch).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// MQTT topic template of the delivered command.
    pub topic: String,
    /// QoS of the delivered command (0, 1 or 2).
    #[serde(default = "default_command_qos")]
    pub qos: u8,
    /// RETAIN flag of the delivered command.
    #[serde(default)]
    pub retain: bool,
    /// Client-addressed commands: template of the target client id. The
    /// command is queued in that client's session only (whatever it subscribed).
    #[serde(default)]
    pub client_id: Option<String>,
    /// With `client_id`: create a persistent session for a client that has
    /// none yet, which the device takes over when it connects with
    /// CleanSession=0 / Clean Start=0.
    #[serde(default)]
    pub create_sessions: bool,
    /// Message expiry (seconds) for commands without an `mqtt_message_expiry`
    /// header; 0 = none. An expired command is not delivered and is counted.
    #[serde(default)]
    pub expiry_secs: u32,
    /// Publish a delivery receipt to this target (Kafka topic / AMQP exchange
    /// of the same backend) when the device acknowledges a command.
    #[serde(default)]
    pub receipt_target: Option<String>,
    /// Send commands that cannot be delivered (bad topic, too large) to this
    /// target of the same backend, besides counting and logging them.
    #[serde(default)]
    pub dead_letter_target: Option<String>,
}

fn default_prefetch() -> u16 {
    100
}
fn default_command_qos() -> u8 {
    1
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
    /// Checks names, references, filters and templates (`session_max_expiry`:
    /// `session.max_session_expiry_secs`, the expiry of preset sessions).
    /// Reports every backend and route that is wrong (the first problem of each).
    pub fn validate(&self, session_max_expiry: u32) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.queue_capacity == 0 {
            errors.push(ConfigError::invalid(
                "bridge.queue_capacity",
                "must be greater than 0",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            errors.extend(validate_backend(i, b, &mut names).err());
        }
        for (i, r) in self.uplink.iter().enumerate() {
            errors.extend(self.validate_uplink(i, r).err());
        }
        for (i, r) in self.downlink.iter().enumerate() {
            errors.extend(self.validate_downlink(i, r, session_max_expiry).err());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn validate_uplink(&self, i: usize, r: &UplinkRoute) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn validate_downlink(
        &self,
        i: usize,
        r: &DownlinkRoute,
        session_max_expiry: u32,
    ) -> Result<(), ConfigError> {
        let at = |what: &str| format!("bridge.downlink[{i}].{what}");
        let backend = self.backends.iter().find(|b| b.name() == r.backend);
        match backend {
            Some(BackendConfig::Kafka(_)) if r.topics.is_empty() => {
                return Err(ConfigError::at(
                    at("topics"),
                    "a Kafka downlink needs at least one topic",
                ));
            }
            Some(BackendConfig::Amqp(_)) if r.queue.is_empty() => {
                return Err(ConfigError::at(
                    at("queue"),
                    "an AMQP downlink needs a queue",
                ));
            }
            Some(BackendConfig::Kafka(_)) | Some(BackendConfig::Amqp(_)) => {}
            _ => {
                return Err(ConfigError::at(
                    at("backend"),
                    format!("no kafka or amqp backend named {:?}", r.backend),
                ))
            }
        }
        if matches!(backend, Some(BackendConfig::Amqp(_))) && r.prefetch == 0 {
            // 0 means "unlimited" to the broker: nothing would bound what is in flight.
            return Err(ConfigError::at(at("prefetch"), "must be > 0"));
        }
        if r.qos > 2 {
            return Err(ConfigError::at(at("qos"), "must be 0, 1 or 2"));
        }
        if r.create_sessions && session_max_expiry == 0 {
            // A preset session with expiry 0 would not be persistent: nothing stored.
            return Err(ConfigError::at(
                at("create_sessions"),
                "needs session.max_session_expiry_secs > 0",
            ));
        }
        if r.create_sessions && r.client_id.is_none() {
            return Err(ConfigError::at(at("create_sessions"), "needs client_id"));
        }
        for (what, t) in [
            ("topic", Some(&r.topic)),
            ("client_id", r.client_id.as_ref()),
        ] {
            if let Some(t) = t {
                crate::bridge::downlink::CommandTemplate::parse(t)
                    .map_err(|e| ConfigError::at(at(what), e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Checks one backend; `names` collects the names seen so far.
fn validate_backend<'a>(
    i: usize,
    b: &'a BackendConfig,
    names: &mut std::collections::HashSet<&'a str>,
) -> Result<(), ConfigError> {
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
    Ok(())
}
