//! Configuration: built-in defaults, an optional TOML file, then the
//! environment.
//!
//! Sources, lowest precedence first:
//! 1. `config/default.toml`, compiled into the binary ([`DEFAULT_TOML`]), so
//!    mqbridge runs with no file at all;
//! 2. an optional TOML file given to [`load`];
//! 3. environment variables `MQBRIDGE__<SECTION>__<KEY>`, e.g.
//!    `MQBRIDGE__MQTT__LISTEN=127.0.0.1:1999`.
//!
//! [`load`] merges them into a raw [`Config`]; [`Config::validate`] then
//! checks everything (unknown keys, ranges, addresses, enums, the log filter,
//! the bridge) and reports every problem at once, each naming its dotted key,
//! or returns the [`Validated`] configuration the runtime takes. Nothing is
//! bound or opened before that.
//!
//! [`Config::default`] is the same configuration as `config/default.toml`
//! (a test keeps the two in step).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod acl;
mod auth;
mod bridge;
mod cluster;
mod jwt;
pub mod listeners;
mod load;
mod secret;
#[cfg(test)]
mod tests;
mod validate;

pub use acl::{AclConfig, AclRuleConfig};
pub use auth::{AuthConfig, CertificateName, ClientIdBinding, ListenerAuth, Method, ValidAuth};
pub use cluster::ClusterConfig;
pub use jwt::JwtConfig;
pub use load::{load, load_with_env};
pub use secret::Secret;
pub use validate::Validated;

pub use bridge::{
    AckMode, AmqpBackend, BackendConfig, BridgeConfig, DownlinkRoute, ExtensionBackend,
    FileBackend, KafkaBackend, UplinkRoute, ValidBridge, ValidDownlink, ValidUplink,
};

/// The built-in defaults (`config/default.toml`), the base of every load.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables read by [`load`]: `MQBRIDGE__<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "MQBRIDGE";

/// Separator between the prefix, the section and the key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Upper bound for the `*_secs` durations held in a `u64`, one year: keeps
/// `Instant + Duration` arithmetic elsewhere far from overflow.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 60 * 60;

/// Smallest accepted `mqtt.max_packet_size`, in bytes.
pub const MIN_PACKET_SIZE: u32 = 64;

/// Largest packet size MQTT can express (remaining length 268435455), in bytes.
pub const MAX_PACKET_SIZE: u32 = 268_435_455;

/// Why a configuration could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or merged, or a value has the wrong type,
    /// or a key is unknown. The message from the `config` crate names the key
    /// and the source (file or environment) where it can.
    #[error(transparent)]
    Load(#[from] config::ConfigError),
    /// A value has the wrong type (e.g. text where a number goes). The
    /// message from the `config` crate names the key and the source.
    #[error(transparent)]
    WrongType(std::sync::Arc<config::ConfigError>),
    /// The configuration file given to [`load`] does not exist or is not a file.
    #[error("config file {path:?}: {reason}")]
    File {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
        /// The file system's error, if that is what went wrong.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A key that mqbridge does not know (often a misspelling).
    #[error("{key}: unknown key{}", origin.as_deref().map(|o| format!(" (set in {o})")).unwrap_or_default())]
    UnknownKey {
        /// Dotted key as written, e.g. `mqtt.listen_port`.
        key: String,
        /// Where it was set (file name or "the environment"), when known.
        origin: Option<String>,
    },
    /// A value inside an array entry (e.g. `bridge.uplink[2].filter`) is not acceptable.
    #[error("{key}: {reason}")]
    InvalidAt {
        /// Dotted key with the array index.
        key: String,
        /// What is wrong, including the offending value.
        reason: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `mqtt.listen`.
        key: &'static str,
        /// What is wrong, including the offending value.
        reason: String,
    },
}

impl ConfigError {
    fn at(key: String, reason: impl Into<String>) -> Self {
        ConfigError::InvalidAt {
            key,
            reason: reason.into(),
        }
    }

    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            reason: reason.into(),
        }
    }

    /// The dotted key an [`ConfigError::Invalid`] or [`ConfigError::UnknownKey`]
    /// error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::InvalidAt { key, .. } => Some(key),
            ConfigError::UnknownKey { key, .. } => Some(key),
            ConfigError::WrongType(e) => match &**e {
                config::ConfigError::Type { key, .. } | config::ConfigError::At { key, .. } => {
                    key.as_deref()
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// Whole mqbridge configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Logging (`[log]`).
    pub log: LogConfig,
    /// MQTT listener and protocol limits (`[mqtt]`).
    pub mqtt: MqttConfig,
    /// Sessions and their queues (`[session]`).
    pub session: SessionConfig,
    /// Durable session store (`[store]`).
    pub store: StoreConfig,
    /// Admin HTTP endpoint (`[admin]`).
    pub admin: AdminConfig,
    /// Process-level settings (`[server]`).
    pub server: ServerConfig,
    /// The bridge to Kafka / AMQP / files (`[bridge]`).
    pub bridge: BridgeConfig,
    /// Topic authorisation (`[acl]`).
    pub acl: AclConfig,
    /// Who may connect (`[auth]`).
    pub auth: AuthConfig,
    /// Cluster mode (`[cluster]`): sessions, retained messages and routing
    /// shared through Kafka.
    pub cluster: ClusterConfig,
    /// What [`load`] could not take (unknown keys, values of the wrong
    /// type); reported by [`Config::validate`] with the other problems.
    #[serde(skip)]
    problems: Vec<load::LoadProblem>,
}

/// `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// tracing `EnvFilter` directive, e.g. `"info"` or
    /// `"info,mqbridge::store=debug"`. `RUST_LOG`, when set, replaces it.
    pub level: String,
    /// Line format: a [`LogFormat`] value (`"text"` or `"json"`), checked by
    /// [`Config::validate`].
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text.to_string(),
        }
    }
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level, for
    /// log shippers (Loki, Elasticsearch, journald's JSON input).
    Json,
}

impl LogFormat {
    /// The configuration value, e.g. `"json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [LogFormat::Text, LogFormat::Json]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format {s:?} (expected \"text\" or \"json\")"))
    }
}

/// `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Plain MQTT TCP listener address, `IP:PORT` (the listener named
    /// `tcp`); empty turns it off.
    pub listen: String,
    /// More listeners: TLS, WebSocket, secure WebSocket, TCP
    /// (`[[mqtt.listeners]]`), checked by [`Config::validate`].
    #[serde(default)]
    pub listeners: Vec<listeners::ListenerConfig>,
    /// Seconds a new connection has to send CONNECT (> 0).
    pub connect_timeout_secs: u64,
    /// Largest accepted packet in bytes, 64..=268435455.
    pub max_packet_size: u32,
    /// MQTT 5.0 Receive Maximum we announce: QoS>0 PUBLISHes a client may
    /// have unacknowledged towards us (> 0).
    pub receive_maximum: u16,
    /// Outgoing window of unacknowledged QoS>0 messages toward a client; also
    /// caps a 5.0 client's own Receive Maximum (> 0).
    pub max_inflight: u16,
    /// Cap on a client's keep-alive in seconds; 0 = no cap. 5.0 clients asking
    /// for more (or 0) are told the cap as Server Keep Alive; 3.1.1 clients
    /// asking for more (or 0) are refused with CONNACK 0x02.
    pub max_keepalive_secs: u16,
    /// Seconds a client's socket may refuse our bytes before it is
    /// disconnected (reason `send_timeout`), 1..=one year.
    pub send_timeout_secs: u64,
    /// Per connection: encoded bytes waiting for the socket above which no
    /// more deliveries are taken from the session and no more packets are
    /// read (> 0).
    pub max_outbound_buffer_bytes: usize,
    /// Seconds between the first byte of a packet and its last before the
    /// connection is closed (reason `frame_timeout`), 1..=one year.
    pub frame_timeout_secs: u64,
    /// Simultaneous connections from one IP address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// New connections accepted per second on the listener (token bucket,
    /// burst of one second's worth); 0 = unlimited.
    pub max_connection_rate: u32,
    /// Per client: incoming QoS 2 packet ids awaiting PUBREL (> 0).
    pub max_awaiting_rel: usize,
    /// Seconds after which an incoming QoS 2 packet id still awaiting
    /// PUBREL is forgotten (counted), 1..=one year.
    pub awaiting_rel_timeout_secs: u64,
    /// MQTT 5.0 Topic Alias Maximum for client-to-server aliases; 0 disables them.
    pub topic_alias_maximum: u16,
    /// Most topic aliases we use when sending to one 5.0 client (also capped
    /// by the client's Topic Alias Maximum); 0 disables outgoing aliases.
    pub max_outgoing_topic_aliases: u16,
    /// Largest number of simultaneous connections (> 0).
    pub max_connections: usize,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Largest number of topics with a retained message; when full, new
    /// retained topics are refused and counted.
    pub max_retained_messages: usize,
    /// Largest total size in bytes (topic + payload + properties) of the
    /// retained messages held (> 0); when reached, retained messages that
    /// would grow it are refused and counted.
    pub max_retained_bytes: u64,
    /// Largest payload of a retained message in bytes (> 0); larger ones are
    /// delivered but not retained.
    pub max_retained_payload_bytes: u32,
    /// Largest number of 5.0 wills waiting for their Will Delay Interval;
    /// beyond it a will is published when its connection ends.
    pub max_delayed_wills: usize,
    /// Largest total size in bytes of the wills waiting for their delay;
    /// beyond it a will is published when its connection ends.
    pub max_delayed_will_bytes: u64,
    /// Largest number of subscriptions one client may hold.
    pub max_subscriptions_per_client: usize,
    /// Most `/`-separated levels in a topic name or filter, 1..=65535.
    pub max_topic_levels: usize,
    /// Longest topic name or filter in bytes, 1..=65535.
    pub max_topic_bytes: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: "0.0.0.0:1883".to_owned(),
            listeners: Vec::new(),
            connect_timeout_secs: 10,
            max_packet_size: 1_048_576,
            receive_maximum: 64,
            max_inflight: 64,
            max_keepalive_secs: 0,
            send_timeout_secs: 30,
            max_outbound_buffer_bytes: 1_048_576,
            frame_timeout_secs: 30,
            max_connections_per_ip: 0,
            max_connection_rate: 0,
            max_awaiting_rel: 100,
            awaiting_rel_timeout_secs: 300,
            topic_alias_maximum: 32,
            max_outgoing_topic_aliases: 32,
            max_connections: 100_000,
            retain_available: true,
            max_retained_messages: 100_000,
            max_retained_bytes: 268_435_456,
            max_retained_payload_bytes: 262_144,
            max_delayed_wills: 10_000,
            max_delayed_will_bytes: 67_108_864,
            max_subscriptions_per_client: 1000,
            max_topic_levels: 128,
            max_topic_bytes: 4096,
        }
    }
}

impl MqttConfig {
    /// `listen` as a socket address, or `None` when the plain TCP listener is off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        validate::parse_addr("mqtt.listen", &self.listen).map(Some)
    }

    /// `connect_timeout_secs` as a [`Duration`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// The limits on topic names and filters.
    pub fn topic_limits(&self) -> crate::mqtt::topic::TopicLimits {
        crate::mqtt::topic::TopicLimits {
            max_levels: self.max_topic_levels,
            max_bytes: self.max_topic_bytes,
        }
    }

    /// The keep-alive cap, or `None` when clients' own keep-alives are used as asked.
    pub fn max_keepalive(&self) -> Option<u16> {
        (self.max_keepalive_secs != 0).then_some(self.max_keepalive_secs)
    }

    /// `send_timeout_secs` as a [`Duration`].
    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_secs)
    }

    /// `frame_timeout_secs` as a [`Duration`].
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_secs(self.frame_timeout_secs)
    }

    /// `awaiting_rel_timeout_secs` as a [`Duration`].
    pub fn awaiting_rel_timeout(&self) -> Duration {
        Duration::from_secs(self.awaiting_rel_timeout_secs)
    }
}

/// What to do when a session queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Discard the oldest queued (not yet sent) message to make room.
    #[default]
    DropOldest,
    /// Discard the new message.
    RejectNew,
}

impl QueueFullPolicy {
    /// The configuration value, e.g. `"drop_oldest"`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueFullPolicy::DropOldest => "drop_oldest",
            QueueFullPolicy::RejectNew => "reject_new",
        }
    }
}

impl std::fmt::Display for QueueFullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueFullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [QueueFullPolicy::DropOldest, QueueFullPolicy::RejectNew]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown policy {s:?} (expected \"drop_oldest\" or \"reject_new\")")
            })
    }
}

/// `[session]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Cap, in seconds, on a 5.0 client's Session Expiry Interval.
    pub max_session_expiry_secs: u32,
    /// Expiry, in seconds, of 3.1.1 CleanSession=0 sessions (> 0).
    pub v311_session_expiry_secs: u32,
    /// Per session: largest number of messages queued plus inflight (> 0).
    pub max_queued_messages: usize,
    /// Per session: largest total queued payload in bytes (> 0).
    pub max_queued_bytes: usize,
    /// What to do when a session queue is full: a [`QueueFullPolicy`]
    /// (`"drop_oldest"` or `"reject_new"`), parsed by [`Config::validate`].
    pub queue_full_policy: String,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Largest number of persistent sessions.
    pub max_persistent_sessions: usize,
    /// Largest number of persistent sessions of clients with one user name;
    /// 0 = no limit.
    pub max_persistent_sessions_per_user: usize,
    /// Largest number of persistent sessions of clients without a user name
    /// connecting from one IP address; 0 = no limit.
    pub max_persistent_sessions_per_ip: usize,
    /// Largest total queued bytes across all sessions.
    pub max_stored_bytes: u64,
    /// Seconds between sweeps for expired sessions and messages (> 0).
    pub expiry_check_interval_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_session_expiry_secs: 604_800,
            v311_session_expiry_secs: 7200,
            max_queued_messages: 1000,
            max_queued_bytes: 16_777_216,
            queue_full_policy: QueueFullPolicy::DropOldest.to_string(),
            queue_qos0_offline: false,
            max_persistent_sessions: 100_000,
            max_persistent_sessions_per_user: 0,
            max_persistent_sessions_per_ip: 1000,
            max_stored_bytes: 1_073_741_824,
            expiry_check_interval_secs: 5,
        }
    }
}

impl SessionConfig {
    /// `expiry_check_interval_secs` as a [`Duration`].
    pub fn expiry_check_interval(&self) -> Duration {
        Duration::from_secs(self.expiry_check_interval_secs)
    }
}

/// `[store]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the durable store (non-empty).
    pub path: PathBuf,
    /// Largest number of operations per store transaction (> 0).
    pub max_batch_ops: usize,
    /// Capacity of the pending store operation queue (> 0).
    pub queue_capacity: usize,
    /// Store page cache size in MiB.
    pub cache_mb: usize,
    /// Free bytes below which new persistent writes are refused (0 = off);
    /// accepted again above this plus 10 %.
    pub min_free_bytes: u64,
    /// How often free space is measured, in milliseconds (> 0, <= 60000).
    pub free_space_check_interval_ms: u64,
    /// Seconds a failing commit is retried before the process exits (0 = for ever).
    pub commit_retry_max_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./data"),
            max_batch_ops: 4096,
            queue_capacity: 1024,
            cache_mb: 64,
            min_free_bytes: 64 * 1024 * 1024,
            free_space_check_interval_ms: 1000,
            commit_retry_max_secs: 300,
        }
    }
}

impl StoreConfig {
    /// `cache_mb` in bytes (saturating).
    pub fn cache_bytes(&self) -> usize {
        self.cache_mb.saturating_mul(1024 * 1024)
    }

    pub fn free_space_check_interval(&self) -> Duration {
        Duration::from_millis(self.free_space_check_interval_ms)
    }
}

/// `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin HTTP listener address, `IP:PORT`; empty disables the endpoint.
    pub listen: String,
    /// Bearer token the mutating API calls need (a secret); unset, they are
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Serve HTTPS: PEM certificate chain (with `key_file`); empty = HTTP.
    #[serde(default)]
    pub cert_file: String,
    /// The certificate's private key (PEM), with `cert_file`.
    #[serde(default)]
    pub key_file: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9883".to_owned(),
            token: None,
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

impl AdminConfig {
    /// The token, checked: a file or variable that cannot be read, or an
    /// empty token, is an error.
    pub fn check_token(&self) -> Result<(), ConfigError> {
        match &self.token {
            Some(t) if t.problem().is_some() => Err(ConfigError::invalid(
                "admin.token",
                t.problem().unwrap_or_default().to_string(),
            )),
            Some(t) if t.is_empty() => Err(ConfigError::invalid(
                "admin.token",
                "must not be empty (leave it unset to refuse mutating calls)",
            )),
            _ => Ok(()),
        }
    }

    /// The TLS files, checked (they must load, the key match the
    /// certificate); `None` for plain HTTP.
    pub fn tls(&self) -> Result<Option<listeners::TlsSpec>, ConfigError> {
        let spec = match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (true, true) => return Ok(None),
            (false, false) => listeners::TlsSpec {
                cert_file: self.cert_file.clone().into(),
                key_file: self.key_file.clone().into(),
                client_ca_file: None,
                client_certificates: listeners::ClientCertificates::None,
                min_version: listeners::TlsVersion::V1_2,
            },
            (true, false) => {
                return Err(ConfigError::invalid(
                    "admin.cert_file",
                    "needed with admin.key_file",
                ))
            }
            (false, true) => {
                return Err(ConfigError::invalid(
                    "admin.key_file",
                    "needed with admin.cert_file",
                ))
            }
        };
        match crate::mqtt::transport::tls::load(&spec) {
            Ok(_) => Ok(Some(spec)),
            Err(e) if e.field() == "key_file" => {
                Err(ConfigError::invalid("admin.key_file", e.to_string()))
            }
            Err(e) => Err(ConfigError::invalid("admin.cert_file", e.to_string())),
        }
    }

    /// `listen` as a socket address, or `None` when the endpoint is disabled.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            Ok(None)
        } else {
            validate::parse_addr("admin.listen", &self.listen).map(Some)
        }
    }
}

/// `[server]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Seconds given to every task (connections, router, store, bridge) to
    /// finish on shutdown (> 0); what is still running then is logged.
    pub shutdown_grace_secs: u64,
    /// Stable identity of this gateway process (e.g. Kafka static group
    /// membership). Empty: generated once and kept in the store directory.
    pub node_id: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_grace_secs: 10,
            node_id: String::new(),
        }
    }
}

/// Longest `server.node_id`, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Whether `id` is a usable node id: 1..=64 of `[A-Za-z0-9._-]` (it ends up
/// in Kafka's group.instance.id and in logs).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ServerConfig {
    /// `shutdown_grace_secs` as a [`Duration`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
