//! The cluster's topics: names from the prefix, created when missing, and
//! checked (a compacted topic must be compacted: on a `delete` topic the
//! retained messages and heartbeats would expire with its retention).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::ClusterError;

/// How long topic creation may take before the start fails.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Topics {
    /// `cluster.topic_prefix` (also names this node's consumer groups).
    pub prefix: String,
    /// Messages routed between nodes, keyed by the publisher's client id.
    pub messages: String,
    /// Retained messages, keyed by MQTT topic; compacted.
    pub retained: String,
    /// Shared session state, keyed by client id; compacted.
    pub sessions: String,
    /// Node heartbeats, keyed by node id; compacted.
    pub nodes: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_owned(),
            messages: format!("{prefix}messages"),
            retained: format!("{prefix}retained"),
            sessions: format!("{prefix}sessions"),
            nodes: format!("{prefix}nodes"),
        }
    }

    /// Creates the missing topics (an existing one is left as it is).
    pub async fn ensure(
        &self,
        base: &ClientConfig,
        partitions: i32,
        replication: i32,
    ) -> Result<(), ClusterError> {
        let admin: AdminClient<DefaultClientContext> =
            base.create().map_err(ClusterError::Client)?;
        let compact = [("cleanup.policy", "compact")];
        let new = [
            NewTopic::new(
                &self.messages,
                partitions,
                TopicReplication::Fixed(replication),
            ),
            NewTopic::new(
                &self.retained,
                partitions,
                TopicReplication::Fixed(replication),
            )
            .set(compact[0].0, compact[0].1),
            NewTopic::new(
                &self.sessions,
                partitions,
                TopicReplication::Fixed(replication),
            )
            .set(compact[0].0, compact[0].1),
            // One partition: every node reads every heartbeat anyway.
            NewTopic::new(&self.nodes, 1, TopicReplication::Fixed(replication))
                .set(compact[0].0, compact[0].1),
        ];
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = admin
            .create_topics(&new, &opts)
            .await
            .map_err(ClusterError::Topics)?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(%topic, "cluster topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(ClusterError::Topic {
                        topic,
                        reason: format!("creation refused: {code}"),
                    })
                }
            }
        }
        Ok(())
    }
}
