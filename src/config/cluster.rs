//! `[cluster]`: several gateway processes sharing sessions, retained
//! messages and routing through Kafka (design: `docs/cluster.md`).

use serde::{Deserialize, Serialize};

use super::{BackendConfig, Config, ConfigError, MAX_NODE_ID_LEN};

/// `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster mode; off (the default) is single-node mode with the
    /// embedded store only.
    pub enabled: bool,
    /// This node's id in the cluster; empty: `server.node_id` (configured or
    /// generated once and kept in the store directory).
    pub node_id: String,
    /// The `[[bridge.backends]]` entry of kind `kafka` whose brokers and
    /// security settings the cluster uses.
    pub backend: String,
    /// Prefix of the cluster's topics (`<prefix>messages`, `retained`,
    /// `sessions`, `nodes`).
    pub topic_prefix: String,
    /// Partitions of the cluster topics the nodes create.
    pub partitions: i32,
    /// A node not heard from for this long is taken as gone (seconds, > 0).
    pub node_timeout_secs: u64,
    /// The `HOST:PORT` other nodes name in an MQTT 5 Server Reference when
    /// they redirect clients here; empty: this node is never named.
    pub advertise: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_id: String::new(),
            backend: String::new(),
            topic_prefix: "mqbridge.".to_owned(),
            partitions: 16,
            node_timeout_secs: 10,
            advertise: String::new(),
        }
    }
}

impl ClusterConfig {
    /// `node_timeout_secs` as a [`std::time::Duration`].
    pub fn node_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.node_timeout_secs)
    }
}

/// Longest `cluster.topic_prefix`: Kafka topic names end at 249 bytes.
const MAX_PREFIX: usize = 200;

impl Config {
    /// `[cluster]`, when enabled: the node id, the backend, the topics.
    pub(super) fn check_cluster(&self) -> Vec<ConfigError> {
        let c = &self.cluster;
        let mut errors = Vec::new();
        if !c.enabled {
            return errors;
        }
        if !c.node_id.is_empty() && !super::valid_node_id(&c.node_id) {
            errors.push(ConfigError::invalid(
                "cluster.node_id",
                format!(
                    "{:?}: use 1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 . _ -",
                    c.node_id
                ),
            ));
        }
        let kafka = self.bridge.backends.iter().find(|b| b.name() == c.backend);
        match kafka {
            Some(BackendConfig::Kafka(_)) => {}
            Some(_) => errors.push(ConfigError::invalid(
                "cluster.backend",
                format!("{:?} is not a kafka backend", c.backend),
            )),
            None => errors.push(ConfigError::invalid(
                "cluster.backend",
                format!(
                    "{:?}: name a [[bridge.backends]] entry of kind \"kafka\"",
                    c.backend
                ),
            )),
        }
        let prefix_ok = c.topic_prefix.len() <= MAX_PREFIX
            && c.topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            errors.push(ConfigError::invalid(
                "cluster.topic_prefix",
                format!("use at most {MAX_PREFIX} characters of A-Z a-z 0-9 . _ -"),
            ));
        }
        if !(1..=1024).contains(&c.partitions) {
            errors.push(ConfigError::invalid(
                "cluster.partitions",
                "must be 1 to 1024",
            ));
        }
        if let Err(e) =
            super::validate::duration_secs("cluster.node_timeout_secs", c.node_timeout_secs)
        {
            errors.push(e);
        }
        if !c.advertise.is_empty() && !valid_host_port(&c.advertise) {
            errors.push(ConfigError::invalid(
                "cluster.advertise",
                format!("{:?} is not HOST:PORT", c.advertise),
            ));
        }
        errors
    }

    /// This node's id in the cluster (`cluster.node_id`, else `server.node_id`).
    pub fn cluster_node_id<'a>(&'a self, generated: &'a str) -> &'a str {
        if !self.cluster.node_id.is_empty() {
            &self.cluster.node_id
        } else {
            generated
        }
    }
}

/// `HOST:PORT` with a non-empty host of printable ASCII and a port 1..=65535.
fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_graphic())
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}
