//! Cluster mode: several gateway processes on one Kafka cluster
//! (design: `docs/cluster.md`; what is built so far is listed there).
//!
//! - [`topics`]: the cluster's topic names, created at start when missing.
//! - [`link`]: the producer the router hands its batch's cluster records to;
//!   a PUBLISH is acknowledged only once Kafka has its record.
//! - [`follow`]: the consumers that bring the other nodes' messages and
//!   every retained change into this node's router.
//! - [`members`]: heartbeats in the `nodes` topic and the view of live nodes
//!   (redirect targets while draining).
//! - [`wire`]: how a message is encoded in a cluster record.
//!
//! Nodes never talk to each other: Kafka is the only shared state.

mod follow;
mod link;
pub mod members;
mod metrics;
pub mod sync;
mod topics;
pub mod wire;

use std::sync::Arc;

use rdkafka::ClientConfig;
use tokio::sync::mpsc;

use crate::bridge::kafka::config::KafkaBackend;
use crate::config::Validated;
use crate::mqtt::message::Message;
use crate::mqtt::router::RouterMsg;
use crate::tasks::Tasks;

pub use link::{Link, Outgoing};
pub use members::Members;
pub use metrics::ClusterMetrics;
pub use topics::Topics;

/// What the other nodes (and the log) tell this node's router.
#[derive(Debug)]
pub enum Inbound {
    /// A message another node took from one of its devices: route it to
    /// this node's sessions; `reply` says whether every durable copy here
    /// was stored (the consumer commits its offset only then).
    Message {
        routed: wire::Routed,
        /// The record's key: the publishing device (for No Local), or a
        /// command's target or topic.
        publisher: Option<Arc<str>>,
        /// Where it is in the `messages` topic.
        pos: crate::store::ClusterPos,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// A session's shared state changed (`None`: it ended).
    Session {
        client_id: Arc<str>,
        shared: Option<wire::SharedSession>,
    },
    /// The retained message of `topic` is now `message` (`None`: cleared),
    /// in the log's order (this node's own changes included, so every node
    /// ends with the log's last value).
    Retained {
        topic: String,
        message: Option<Message>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.backend names no kafka backend")]
    NoBackend,
    #[error("Kafka client settings of the cluster backend: {0}")]
    Settings(String),
    #[error("creating a Kafka client for the cluster")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("creating or checking the cluster topics")]
    Topics(#[source] rdkafka::error::KafkaError),
    #[error("the cluster's state was not read within {0:?}")]
    CatchUp(std::time::Duration),
    #[error("cluster topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

/// The running cluster parts of one node.
pub struct Cluster {
    pub link: Link,
    pub members: Members,
    /// What connections wait on before they attach (set by [`Cluster::follow`]).
    pub sync: Option<sync::Sync>,
    /// The consumers, started by [`Cluster::follow`] once the router runs.
    follow: Option<follow::Follow>,
}

/// What connections ask the cluster: wait until this node has read the
/// cluster's state (before a CONNECT is attached), and where to send clients
/// while this node drains.
#[derive(Clone)]
pub struct Gate {
    pub sync: sync::Sync,
    pub members: Members,
}

impl Cluster {
    /// The connections' view of the cluster (after [`Cluster::follow`]).
    pub fn gate(&self) -> Option<Gate> {
        Some(Gate {
            sync: self.sync.clone()?,
            members: self.members.clone(),
        })
    }
}

/// What starting the cluster needs from the gateway.
pub struct Wiring<'a> {
    pub cfg: &'a Arc<Validated>,
    pub node_id: &'a str,
    pub router: &'a mpsc::Sender<RouterMsg>,
    pub metrics: ClusterMetrics,
    pub tasks: &'a Tasks,
    /// This node's MQTT address as others should name it (Server Reference).
    pub advertise: String,
    /// Per `messages` partition, the last offset routed into this node's
    /// store (from the store; see `Op::Routed`).
    pub routed: Vec<crate::store::ClusterPos>,
}

impl Cluster {
    /// Creates the topics, the producer and the heartbeat. Fails when Kafka
    /// cannot be reached or a topic is unusable: a node that cannot see the
    /// cluster must not take devices.
    pub async fn connect(w: Wiring<'_>) -> Result<Cluster, ClusterError> {
        let c = &w.cfg.cluster;
        let backend = w
            .cfg
            .bridge
            .backends
            .iter()
            .find_map(|b| match b {
                crate::config::BackendConfig::Kafka(k) if k.name == c.backend => Some(k),
                _ => None,
            })
            .ok_or(ClusterError::NoBackend)?;
        let base = base_config(backend)?;
        let topics = Topics::new(&c.topic_prefix);
        topics
            .ensure(&base, c.partitions, backend.topic_replication)
            .await?;
        let node: Arc<str> = Arc::from(w.node_id);
        let link = Link::new(&base, topics.clone(), node.clone(), w.metrics.clone())?;
        let members = Members::new(node.clone(), c.node_timeout(), w.metrics.clone());
        members::start(
            &base,
            &topics,
            members.clone(),
            link.clone(),
            w.advertise,
            w.tasks,
        )?;
        let follow = follow::Follow {
            sync: None,
            routed: w.routed,
            base,
            topics,
            node,
            router: w.router.clone(),
            metrics: w.metrics.clone(),
            cancel: w.tasks.token().clone(),
        };
        Ok(Cluster {
            link,
            members,
            follow: Some(follow),
            sync: None,
        })
    }

    /// Starts the consumers (the router must be running: they feed it) and
    /// returns once this node has caught up with the cluster's state.
    pub async fn follow(&mut self, tasks: &Tasks) -> Result<(), ClusterError> {
        let Some(follow) = self.follow.take() else {
            return Ok(());
        };
        let node = follow.node.clone();
        let prefix = follow.topics.prefix.clone();
        self.sync = Some(follow.start(tasks).await?);
        tracing::info!(node_id = %node, %prefix, "cluster mode: joined");
        Ok(())
    }
}

/// The backend's bootstrap servers and security settings, as every cluster
/// client starts from.
fn base_config(backend: &KafkaBackend) -> Result<ClientConfig, ClusterError> {
    let mut c = ClientConfig::new();
    c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    c.set("bootstrap.servers", &backend.bootstrap_servers);
    let props = crate::bridge::kafka::properties(backend).map_err(|errors| {
        ClusterError::Settings(
            errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    for (k, v) in props {
        c.set(k, v);
    }
    Ok(c)
}
