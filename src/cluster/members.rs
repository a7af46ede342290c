//! Membership through Kafka: every node writes a heartbeat to the compacted
//! `nodes` topic each second (its MQTT address for Server References and
//! whether it is draining) and a tombstone when it stops; every node reads
//! the whole topic. A node whose last heartbeat is older than
//! `cluster.node_timeout_secs` (by the record's Kafka timestamp) is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::link::{Link, Outgoing};
use super::metrics::ClusterMetrics;
use super::{ClusterError, Topics};
use crate::mqtt::message::now_ms;
use crate::tasks::Tasks;

/// How often a node writes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The value of a heartbeat record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Heartbeat {
    /// `cluster.advertise` (empty: never named in a Server Reference).
    advertise: String,
    draining: bool,
}

#[derive(Debug, Clone)]
struct Seen {
    beat: Heartbeat,
    /// The record's Kafka timestamp (unix ms).
    at_ms: u64,
}

/// This node's view of the cluster (cheap to clone; shared by the tasks
/// that update it and the connections that ask it for a redirect target).
#[derive(Clone)]
pub struct Members {
    node: Arc<str>,
    timeout_ms: u64,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Round robin over redirect targets.
    next: Arc<AtomicUsize>,
    metrics: ClusterMetrics,
}

/// One node as seen from here (admin API, tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub advertise: String,
    pub draining: bool,
    pub last_heartbeat_ms: u64,
}

impl Members {
    pub fn new(node: Arc<str>, timeout: Duration, metrics: ClusterMetrics) -> Members {
        Members {
            node,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            seen: Arc::default(),
            draining: Arc::default(),
            next: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        // A map of plain values: a panic elsewhere leaves nothing half-done.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The nodes with a recent heartbeat, by node id.
    pub fn live(&self) -> Vec<NodeView> {
        let now = now_ms();
        let mut out: Vec<NodeView> = self
            .lock()
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.at_ms) <= self.timeout_ms)
            .map(|(id, s)| NodeView {
                node_id: id.clone(),
                advertise: s.beat.advertise.clone(),
                draining: s.beat.draining,
                last_heartbeat_ms: s.at_ms,
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// A live node other than this one, not draining, with an address to
    /// name in a Server Reference (round robin over them).
    pub fn redirect_target(&self) -> Option<String> {
        let targets: Vec<String> = self
            .live()
            .into_iter()
            .filter(|n| *n.node_id != *self.node && !n.draining && !n.advertise.is_empty())
            .map(|n| n.advertise)
            .collect();
        if targets.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % targets.len();
        targets.into_iter().nth(i)
    }

    /// From now on this node says it is draining (and refuses new clients).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn update(&self, node: &str, beat: Option<Heartbeat>, at_ms: u64) {
        let mut seen = self.lock();
        match beat {
            Some(beat) => {
                seen.insert(node.to_owned(), Seen { beat, at_ms });
            }
            None => {
                seen.remove(node);
            }
        }
        drop(seen);
        self.metrics.nodes.set(self.live().len() as i64);
    }
}

/// Starts the heartbeat and the reader of the `nodes` topic.
pub(super) fn start(
    base: &ClientConfig,
    topics: &Topics,
    members: Members,
    link: Link,
    advertise: String,
    tasks: &Tasks,
) -> Result<(), ClusterError> {
    let mut c = base.clone();
    c.set(
        "group.id",
        format!("{}nodes.{}", topics.prefix, members.node),
    )
    .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = c.create().map_err(ClusterError::Client)?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&topics.nodes, 0, Offset::Beginning)
        .map_err(ClusterError::Topics)?;
    consumer.assign(&list).map_err(ClusterError::Topics)?;
    let cancel = tasks.token().clone();
    {
        let members = members.clone();
        let cancel = cancel.clone();
        tasks.supervise("cluster nodes reader", async move {
            read(consumer, members, cancel).await
        });
    }
    tasks.supervise("cluster heartbeat", async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => break,
            }
            let beat = Heartbeat {
                advertise: advertise.clone(),
                draining: members.is_draining(),
            };
            let value = serde_json::to_vec(&beat).ok();
            // A missed heartbeat is logged by `send`; the next one may land.
            link.send(vec![Outgoing::Heartbeat { value }]).await;
        }
        // Leaving: the others forget this node at once, not after the timeout.
        let left = link.send(vec![Outgoing::Heartbeat { value: None }]);
        let _ = tokio::time::timeout(Duration::from_secs(2), left).await;
    });
    Ok(())
}

async fn read(
    consumer: StreamConsumer,
    members: Members,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        let m = tokio::select! {
            _ = cancel.cancelled() => return,
            // The gauge follows nodes that stop beating without a tombstone.
            _ = tick.tick() => {
                members.metrics.nodes.set(members.live().len() as i64);
                continue;
            }
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "cluster nodes reader error");
                continue;
            }
        };
        let Some(Ok(node)) = m.key().map(std::str::from_utf8) else {
            continue;
        };
        let at_ms = m
            .timestamp()
            .to_millis()
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(0);
        let beat = match m.payload().map(serde_json::from_slice::<Heartbeat>) {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(error)) => {
                members.metrics.undecodable.inc();
                tracing::debug!(%error, "heartbeat not decodable");
                continue;
            }
        };
        members.update(node, beat, at_ms);
    }
}
