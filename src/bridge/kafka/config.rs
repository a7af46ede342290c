//! `kind = "kafka"` settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

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
    /// acks=all and idempotence are always on). A property that one of the
    /// keys below also sets is refused.
    #[serde(default)]
    pub properties: Vec<String>,
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl
    /// (empty: librdkafka's default, plaintext).
    #[serde(default)]
    pub security_protocol: String,
    /// `ssl.ca.location`: PEM CA bundle that signs the brokers' certificates.
    #[serde(default)]
    pub ssl_ca_file: Option<PathBuf>,
    /// `ssl.certificate.location`: client certificate (PEM), with `ssl_key_file`.
    #[serde(default)]
    pub ssl_certificate_file: Option<PathBuf>,
    /// `ssl.key.location`: the client certificate's private key (PEM).
    #[serde(default)]
    pub ssl_key_file: Option<PathBuf>,
    /// `ssl.key.password`, if the key is encrypted (a secret).
    #[serde(default)]
    pub ssl_key_password: Secret,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[serde(default)]
    pub sasl_mechanism: String,
    /// `sasl.username`.
    #[serde(default)]
    pub sasl_username: String,
    /// `sasl.password` (a secret: a string, `{ file = "PATH" }` or
    /// `{ env = "NAME" }`).
    #[serde(default)]
    pub sasl_password: Secret,
}

/// The defaults serde uses (for building one in code).
impl Default for KafkaBackend {
    fn default() -> KafkaBackend {
        KafkaBackend {
            name: String::new(),
            bootstrap_servers: String::new(),
            compression: default_compression(),
            create_topics: false,
            topic_partitions: default_partitions(),
            topic_replication: default_replication(),
            properties: Vec::new(),
            security_protocol: String::new(),
            ssl_ca_file: None,
            ssl_certificate_file: None,
            ssl_key_file: None,
            ssl_key_password: Secret::default(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: Secret::default(),
        }
    }
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
            .field("security_protocol", &self.security_protocol)
            .field("ssl_ca_file", &self.ssl_ca_file)
            .field("ssl_certificate_file", &self.ssl_certificate_file)
            .field("ssl_key_file", &self.ssl_key_file)
            .field("ssl_key_password", &self.ssl_key_password)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
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
