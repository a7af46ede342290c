//! The consumers that bring the cluster into this node's router:
//!
//! - `messages`: this node's own consumer group (`<prefix>node.<id>`,
//!   static membership), so a restarted node resumes where it stopped and
//!   its persistent sessions get what was published meanwhile. Records this
//!   node produced are skipped (it routed them when it took them). An offset
//!   is committed only once the router stored every durable copy, in order;
//!   a message the router could not store ends the consumer, which resumes
//!   from the last commit after a pause (duplicates possible, loss never).
//! - `retained`: every partition from the beginning, no commits: every
//!   change in the log's order, this node's own included, so every node ends
//!   with the log's last value of each topic.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::metrics::ClusterMetrics;
use super::{ClusterError, Inbound, Topics};
use crate::mqtt::router::RouterMsg;
use crate::tasks::Tasks;

/// Messages handed to the router and not yet stored, at most: the
/// consumer waits (Kafka keeps the rest) when this many are outstanding.
const WINDOW: usize = 1024;
/// Pause before a new consumer after one ended on an error.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(super) struct Follow {
    pub base: ClientConfig,
    pub topics: Topics,
    pub node: Arc<str>,
    pub router: mpsc::Sender<RouterMsg>,
    pub metrics: ClusterMetrics,
    pub cancel: CancellationToken,
}

impl Follow {
    /// Starts both consumers (the retained one after checking that its
    /// topic's partitions can be read).
    pub async fn start(self, tasks: &Tasks, _partitions: i32) -> Result<(), ClusterError> {
        let retained = self.retained_consumer()?;
        let this = self.clone();
        tasks.supervise("cluster messages", async move { this.messages().await });
        tasks.supervise("cluster retained", async move { self.retained(retained).await });
        Ok(())
    }

    async fn messages(self) {
        while !self.cancel.is_cancelled() {
            match self.messages_once().await {
                Ok(()) => return,
                Err(reason) => {
                    tracing::warn!(%reason, "cluster message consumer restarts from its last commit");
                    tokio::select! {
                        _ = tokio::time::sleep(RESTART_PAUSE) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One consumer's life: `Ok` at shutdown, `Err` when it must restart.
    async fn messages_once(&self) -> Result<(), String> {
        let mut c = self.base.clone();
        let prefix = &self.topics.prefix;
        c.set("group.id", format!("{prefix}node.{}", self.node))
            .set("group.instance.id", &*self.node)
            .set("group.protocol", "classic")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "200")
            // A new node serves no session yet: what was routed before it
            // joined is not for it.
            .set("auto.offset.reset", "latest");
        let consumer: Arc<StreamConsumer> =
            Arc::new(c.create().map_err(|e| format!("creating the consumer: {e}"))?);
        consumer
            .subscribe(&[&self.topics.messages])
            .map_err(|e| format!("subscribing: {e}"))?;
        let result = self.consume(&consumer).await;
        // Commit what was stored and leave, off the async threads (librdkafka blocks).
        let _ = tokio::task::spawn_blocking(move || {
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
            drop(consumer);
        })
        .await;
        result
    }

    async fn consume(&self, consumer: &StreamConsumer) -> Result<(), String> {
        let mut window: FuturesOrdered<BoxFuture<'static, (i32, i64, bool)>> =
            FuturesOrdered::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                Some((partition, offset, stored)) = window.next(), if !window.is_empty() => {
                    if !stored {
                        return Err(format!("message at {partition}/{offset} not stored"));
                    }
                    consumer
                        .store_offset(&self.topics.messages, partition, offset)
                        .map_err(|e| format!("storing the offset: {e}"))?;
                }
                m = consumer.recv(), if window.len() < WINDOW => {
                    let m = m.map_err(|e| format!("consuming: {e}"))?;
                    let (partition, offset) = (m.partition(), m.offset());
                    let reply = self.route(m.payload()).await?;
                    window.push_back(Box::pin(async move {
                        let stored: bool = match reply {
                            Some(rx) => rx.await.unwrap_or(false),
                            None => true,
                        };
                        (partition, offset, stored)
                    }));
                }
            }
        }
    }

    /// Hands one record to the router; `None`: nothing to wait for (ours,
    /// or undecodable and skipped).
    async fn route(&self, payload: Option<&[u8]>) -> Result<Option<oneshot::Receiver<bool>>, String> {
        let routed = match payload.map(super::wire::decode_routed) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                self.undecodable(&e);
                return Ok(None);
            }
            None => return Ok(None),
        };
        if *routed.origin == *self.node {
            return Ok(None);
        }
        self.metrics
            .consumed
            .get_or_create(&ClusterMetrics::topic("messages"))
            .inc();
        let (tx, rx) = oneshot::channel();
        let msg = RouterMsg::Cluster(Inbound::Message { routed, reply: tx });
        self.router
            .send(msg)
            .await
            .map_err(|_| "the router is gone".to_owned())?;
        Ok(Some(rx))
    }

    fn undecodable(&self, e: &crate::store::StoreError) {
        self.metrics.undecodable.inc();
        tracing::warn!(error = e as &dyn std::error::Error, "cluster record skipped: not decodable");
    }

    /// A consumer of every partition of `retained`, from the beginning.
    fn retained_consumer(&self) -> Result<StreamConsumer, ClusterError> {
        let mut c = self.base.clone();
        let prefix = &self.topics.prefix;
        // Never joins or commits: the group id only names the client.
        c.set("group.id", format!("{prefix}retained.{}", self.node))
            .set("enable.auto.commit", "false");
        let consumer: StreamConsumer = c.create().map_err(ClusterError::Client)?;
        let meta = consumer
            .fetch_metadata(Some(&self.topics.retained), Duration::from_secs(10))
            .map_err(ClusterError::Topics)?;
        let mut list = TopicPartitionList::new();
        for t in meta.topics() {
            for p in t.partitions() {
                list.add_partition_offset(t.name(), p.id(), Offset::Beginning)
                    .map_err(ClusterError::Topics)?;
            }
        }
        if list.count() == 0 {
            return Err(ClusterError::Topic {
                topic: self.topics.retained.clone(),
                reason: "no partitions".into(),
            });
        }
        consumer.assign(&list).map_err(ClusterError::Topics)?;
        Ok(consumer)
    }

    async fn retained(self, consumer: StreamConsumer) {
        loop {
            let m = tokio::select! {
                _ = self.cancel.cancelled() => return,
                m = consumer.recv() => m,
            };
            let m = match m {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "cluster retained consumer error");
                    tokio::time::sleep(RESTART_PAUSE).await;
                    continue;
                }
            };
            let Some(Ok(topic)) = m.key().map(std::str::from_utf8) else {
                self.metrics.undecodable.inc();
                continue;
            };
            let message = match m.payload().map(super::wire::decode_retained) {
                None => None,
                Some(Ok(msg)) => Some(msg),
                Some(Err(e)) => {
                    self.undecodable(&e);
                    continue;
                }
            };
            self.metrics
                .consumed
                .get_or_create(&ClusterMetrics::topic("retained"))
                .inc();
            let msg = RouterMsg::Cluster(Inbound::Retained {
                topic: topic.to_owned(),
                message,
            });
            if self.router.send(msg).await.is_err() {
                return;
            }
        }
    }
}
