//! `[bridge]`: backends (Kafka, AMQP, file) and the uplink routes that
//! mirror MQTT topics to them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use std::sync::Arc;
use std::time::Duration;

use super::ConfigError;
pub use crate::bridge::amqp::config::AmqpBackend;
use crate::bridge::downlink::CommandTemplate;
pub use crate::bridge::file::config::FileBackend;
pub use crate::bridge::kafka::config::KafkaBackend;
use crate::bridge::registry::{self, Backend, SettingError};
use crate::bridge::template::Template;

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

/// One backend, tagged by `kind`. The built-in kinds are typed here; any
/// other kind is kept as [`ExtensionBackend`] and parsed by the constructor
/// registered for it in [`crate::bridge::registry`] (checked with the rest
/// of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// Append-only JSON-lines files, rotated by size (needs no service).
    File(FileBackend),
    /// Kafka (or a Kafka-protocol broker) through librdkafka.
    Kafka(KafkaBackend),
    /// RabbitMQ / AMQP 0-9-1 with publisher confirms.
    Amqp(AmqpBackend),
    /// A kind registered at run time (an embedding program, a test).
    Extension(ExtensionBackend),
}

/// A backend of a registered kind: its name and its other settings, as
/// written, for the kind's constructor to parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtensionBackend {
    pub kind: String,
    pub name: String,
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// The built-in kinds, as serde sees them.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BuiltIn {
    File(FileBackend),
    Kafka(KafkaBackend),
    Amqp(AmqpBackend),
}

impl BackendConfig {
    pub fn name(&self) -> &str {
        match self {
            BackendConfig::File(b) => &b.name,
            BackendConfig::Kafka(b) => &b.name,
            BackendConfig::Amqp(b) => &b.name,
            BackendConfig::Extension(b) => &b.name,
        }
    }

    /// The `kind` it was configured with.
    pub fn kind(&self) -> &str {
        match self {
            BackendConfig::File(_) => "file",
            BackendConfig::Kafka(_) => "kafka",
            BackendConfig::Amqp(_) => "amqp",
            BackendConfig::Extension(b) => &b.kind,
        }
    }
}

impl Serialize for BackendConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BackendConfig::File(b) => BuiltIn::File(b.clone()).serialize(s),
            BackendConfig::Kafka(b) => BuiltIn::Kafka(b.clone()).serialize(s),
            BackendConfig::Amqp(b) => BuiltIn::Amqp(b.clone()).serialize(s),
            BackendConfig::Extension(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let kind = match table.get("kind") {
            Some(serde_json::Value::String(k)) => k.clone(),
            Some(_) => return Err(D::Error::custom("`kind` must be a string")),
            None => return Err(D::Error::missing_field("kind")),
        };
        if matches!(kind.as_str(), "file" | "kafka" | "amqp") {
            let built_in = serde_json::from_value(serde_json::Value::Object(table))
                .map_err(D::Error::custom)?;
            return Ok(match built_in {
                BuiltIn::File(b) => BackendConfig::File(b),
                BuiltIn::Kafka(b) => BackendConfig::Kafka(b),
                BuiltIn::Amqp(b) => BackendConfig::Amqp(b),
            });
        }
        table.remove("kind");
        let name = match table.remove("name") {
            Some(serde_json::Value::String(n)) => n,
            Some(_) => return Err(D::Error::custom("`name` must be a string")),
            None => return Err(D::Error::missing_field("name")),
        };
        Ok(BackendConfig::Extension(ExtensionBackend {
            kind,
            name,
            settings: table,
        }))
    }
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

fn default_spool_bytes() -> u64 {
    1 << 30
}
fn default_ack() -> AckMode {
    AckMode::Backend
}

/// The `[bridge]` section, checked and parsed: what the gateway runs.
#[derive(Debug, Clone)]
pub struct ValidBridge {
    pub queue_capacity: usize,
    /// In configuration order.
    pub backends: Vec<Arc<dyn Backend>>,
    pub uplink: Vec<ValidUplink>,
    pub downlink: Vec<ValidDownlink>,
}

/// An uplink route with its backend and compiled templates.
#[derive(Debug, Clone)]
pub struct ValidUplink {
    pub route: UplinkRoute,
    pub backend: Arc<dyn Backend>,
    pub target: Template,
    /// Kafka message key / AMQP routing key (the backend's default if the
    /// route sets none).
    pub key: Template,
    /// How long a device waits for the backend at most (`give_up_secs`).
    pub give_up: Option<Duration>,
}

/// A downlink route with the backend it consumes from and its compiled
/// templates.
#[derive(Debug, Clone)]
pub struct ValidDownlink {
    pub route: DownlinkRoute,
    pub backend: Arc<dyn Backend>,
    /// MQTT topic of the delivered command.
    pub topic: CommandTemplate,
    /// Target client id of client-addressed commands.
    pub client_id: Option<CommandTemplate>,
}

/// Collects the problems of one section, each with its dotted key.
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, key: String, reason: impl Into<String>) {
        self.0.push(ConfigError::at(key, reason));
    }

    fn settings(&mut self, prefix: &str, errors: Vec<SettingError>) {
        for e in errors {
            self.add(format!("{prefix}.{}", e.key), e.reason);
        }
    }
}

impl BridgeConfig {
    /// Checks and parses the section (`session_max_expiry`:
    /// `session.max_session_expiry_secs`, the expiry of preset sessions).
    /// Reports every problem, each with its dotted key.
    pub fn validate(&self, session_max_expiry: u32) -> Result<ValidBridge, Vec<ConfigError>> {
        let mut p = Problems(Vec::new());
        if self.queue_capacity == 0 {
            p.0.push(ConfigError::invalid(
                "bridge.queue_capacity",
                "must be greater than 0",
            ));
        }
        let backends = self.backends(&mut p);
        let find = |name: &str| backends.iter().find(|b| b.name() == name).cloned();
        // Names of entries that exist but failed their own checks: routes
        // naming them are not told "no backend named".
        let broken = |name: &str| self.backends.iter().any(|b| b.name() == name);
        let mut uplink = Vec::new();
        for (i, r) in self.uplink.iter().enumerate() {
            let at = |what: &str| format!("bridge.uplink[{i}].{what}");
            let backend = find(&r.backend);
            if backend.is_none() && !broken(&r.backend) {
                p.add(at("backend"), format!("no backend named {:?}", r.backend));
            }
            if let Some(route) = uplink_route(r, backend, &at, &mut p) {
                uplink.push(route);
            }
        }
        let mut downlink = Vec::new();
        for (i, r) in self.downlink.iter().enumerate() {
            let at = |what: &str| format!("bridge.downlink[{i}].{what}");
            let backend = find(&r.backend);
            if backend.is_none() && !broken(&r.backend) {
                p.add(at("backend"), format!("no backend named {:?}", r.backend));
            }
            let templates = check_downlink(r, backend.as_deref(), session_max_expiry, &at, &mut p);
            if let (Some(backend), Some((topic, client_id))) = (backend, templates) {
                downlink.push(ValidDownlink {
                    route: r.clone(),
                    backend,
                    topic,
                    client_id,
                });
            }
        }
        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(ValidBridge {
            queue_capacity: self.queue_capacity,
            backends,
            uplink,
            downlink,
        })
    }

    /// Builds each backend through its kind's constructor.
    fn backends(&self, p: &mut Problems) -> Vec<Arc<dyn Backend>> {
        let mut names = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            let prefix = format!("bridge.backends[{i}]");
            if b.name().is_empty() || !names.insert(b.name()) {
                p.add(
                    format!("{prefix}.name"),
                    format!("{:?} is empty or used twice", b.name()),
                );
            }
            match registry::build(b) {
                Ok(backend) => out.push(backend),
                Err(errors) => p.settings(&prefix, errors),
            }
        }
        out
    }
}

/// Checks one uplink route; its compiled form if it and its backend are good.
fn uplink_route(
    r: &UplinkRoute,
    backend: Option<Arc<dyn Backend>>,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Option<ValidUplink> {
    let before = p.0.len();
    if !crate::mqtt::topic::valid_filter(&r.filter) {
        p.add(
            at("filter"),
            format!("{:?} is not a valid topic filter", r.filter),
        );
    }
    if backend.as_ref().is_some_and(|b| b.target_required()) && r.target.is_empty() {
        p.add(at("target"), "must not be empty for this backend");
    }
    for (what, t) in [
        ("target", Some(&r.target)),
        ("key", r.key.as_ref()),
        ("routing_key", r.routing_key.as_ref()),
    ] {
        if let Some(Err(e)) = t.map(|t| Template::parse(t)) {
            p.add(at(what), e.to_string());
        }
    }
    if r.ack == AckMode::Spool && r.spool_max_bytes == 0 {
        p.add(at("spool_max_bytes"), "must be > 0");
    }
    if r.give_up_secs > super::MAX_DURATION_SECS {
        p.add(
            at("give_up_secs"),
            format!("at most {} seconds", super::MAX_DURATION_SECS),
        );
    }
    let backend = backend?;
    if p.0.len() > before {
        return None;
    }
    let (Ok(target), Ok(key)) = (
        Template::parse(&r.target),
        Template::parse(&backend.uplink_key(r)),
    ) else {
        p.add(
            at("key"),
            "the backend's default key template does not parse",
        );
        return None;
    };
    Some(ValidUplink {
        route: r.clone(),
        backend,
        target,
        key,
        give_up: (r.give_up_secs > 0).then(|| Duration::from_secs(r.give_up_secs)),
    })
}

/// Checks one downlink route; its compiled templates if they parse.
fn check_downlink(
    r: &DownlinkRoute,
    backend: Option<&dyn Backend>,
    session_max_expiry: u32,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Option<(CommandTemplate, Option<CommandTemplate>)> {
    if let Some(b) = backend {
        p.settings(at("").trim_end_matches('.'), b.check_downlink(r));
    }
    if r.qos > 2 {
        p.add(at("qos"), "must be 0, 1 or 2");
    }
    if r.create_sessions && session_max_expiry == 0 {
        // A preset session with expiry 0 would not be persistent: nothing stored.
        p.add(
            at("create_sessions"),
            "needs session.max_session_expiry_secs > 0",
        );
    }
    if r.create_sessions && r.client_id.is_none() {
        p.add(at("create_sessions"), "needs client_id");
    }
    let topic = CommandTemplate::parse(&r.topic).map_err(|e| p.add(at("topic"), e.to_string()));
    let client_id = r
        .client_id
        .as_deref()
        .map(CommandTemplate::parse)
        .transpose()
        .map_err(|e| p.add(at("client_id"), e.to_string()));
    Some((topic.ok()?, client_id.ok()?))
}
