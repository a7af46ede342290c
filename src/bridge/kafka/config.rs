//! `kind = "kafka"` settings.

use serde::{Deserialize, Serialize};

/// `kind = "kafka"`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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

fn default_compression() -> String {
    "lz4".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}

/// By hand: `properties` may hold SASL or SSL passwords.
impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<String> = self.properties.iter().map(|p| redact_property(p)).collect();
        f.debug_struct("KafkaBackend")
            .field("name", &self.name)
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("compression", &self.compression)
            .field("create_topics", &self.create_topics)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication", &self.topic_replication)
            .field("properties", &properties)
            .finish()
    }
}

/// `key=value` with the value replaced when the key names a secret.
fn redact_property(p: &str) -> String {
    match p.split_once('=') {
        Some((k, _)) if ["password", "secret", "key"].iter().any(|s| k.contains(s)) => {
            format!("{k}=<redacted>")
        }
        _ => p.to_string(),
    }
}
