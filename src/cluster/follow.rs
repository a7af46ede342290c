//! The consumers that bring the cluster into this node's router:
//!
//! - `messages`: every partition, assigned by hand, with offsets committed
//!   under this node's own group id (`<prefix>node.<id>`), so a restarted
//!   node resumes where it stopped and
//!   its persistent sessions get what was published meanwhile. An offset
//!   is committed only once the router stored every durable copy, in order;
//!   a message the router could not store ends the consumer, which resumes
//!   from the last commit after a pause (duplicates possible, loss never).
//! - `retained` and `sessions` (the state logs): every partition from the
//!   beginning, no commits: every change in the log's order, this node's own
//!   included, so every node ends with the log's last value of each key.
//!
//! Records this node produced come back to it too: in cluster mode a node
//! routes its own devices' messages when it reads them back, so that every
//! node queues them in the same per-partition order and with their position.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::metrics::ClusterMetrics;
use super::{ClusterError, Inbound, Topics};
use crate::mqtt::router::RouterMsg;
use crate::tasks::Tasks;

/// Messages handed to the router and not yet stored, at most: the
/// consumer waits (Kafka keeps the rest) when this many are outstanding.
const WINDOW: usize = 1024;
/// Fetched batches (up to 512 records each) waiting for the state logs, at
/// most: the consumer waits (Kafka keeps the rest) beyond.
const WAITING_BATCHES: usize = 16;
/// Pause before a new consumer after one ended on an error.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// Longest a node waits at start to have read the state logs and to have
/// its message partitions, before it gives up starting.
const CATCH_UP: Duration = Duration::from_secs(60);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(super) struct Follow {
    /// Read-your-writes for messages (see `consume`); set by `start`.
    pub sync: Option<super::sync::Sync>,
    /// Where routing got to, as stored (see `Op::Routed`).
    pub routed: Vec<crate::store::ClusterPos>,
    pub base: ClientConfig,
    pub topics: Topics,
    pub node: Arc<str>,
    pub router: mpsc::Sender<RouterMsg>,
    pub metrics: ClusterMetrics,
    pub cancel: CancellationToken,
}

impl Follow {
    /// Starts the consumers and returns once this node has read the state
    /// logs (sessions, retained) up to their ends as of now and its message
    /// consumer has its partitions: only then may it take devices.
    pub async fn start(mut self, tasks: &Tasks) -> Result<super::sync::Sync, ClusterError> {
        let consumer = self.state_consumer()?;
        let (progress_tx, progress) = watch::channel(super::sync::Progress::new());
        let sync = super::sync::start(
            &self.base,
            vec![self.topics.retained.clone(), self.topics.sessions.clone()],
            progress,
            self.cancel.clone(),
            tasks,
        )?;
        let (assigned, messages_ready) = oneshot::channel();
        self.sync = Some(sync.clone());
        let this = self.clone();
        tasks.supervise(
            "cluster messages",
            async move { this.messages(assigned).await },
        );
        tasks.supervise("cluster state log", async move {
            self.state_log(consumer, progress_tx).await
        });
        let ready = async { sync.wait().await && messages_ready.await.is_ok() };
        match tokio::time::timeout(CATCH_UP, ready).await {
            Ok(true) => Ok(sync),
            _ => Err(ClusterError::CatchUp(CATCH_UP)),
        }
    }

    async fn messages(self, assigned: oneshot::Sender<()>) {
        let mut assigned = Some(assigned);
        // Where routing got to: from the store at start, then as the router
        // confirms each record; a consumer started again after an error
        // resumes right after it (Kafka's commits may lag behind).
        let mut done = self.routed.clone();
        while !self.cancel.is_cancelled() {
            match self.messages_once(&mut assigned, &mut done).await {
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
    /// Every partition is assigned by hand (no group membership to wait
    /// for: every node reads them all), from this node's committed offsets,
    /// or from the end for a partition it never read.
    async fn messages_once(
        &self,
        assigned: &mut Option<oneshot::Sender<()>>,
        done: &mut Vec<crate::store::ClusterPos>,
    ) -> Result<(), String> {
        let mut c = self.base.clone();
        c.set(
            "group.id",
            format!("{}node.{}", self.topics.prefix, self.node),
        )
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "200");
        let consumer: Arc<StreamConsumer> = Arc::new(
            c.create()
                .map_err(|e| format!("creating the consumer: {e}"))?,
        );
        let start = {
            let (consumer, topic) = (consumer.clone(), self.topics.messages.clone());
            let routed = done.clone();
            tokio::task::spawn_blocking(move || {
                let start = start_offsets(&consumer, &topic, &routed)?;
                // Committed at once: a node that starts at a partition's end
                // (it never read it) and dies before its first commit must
                // resume there, not at the end of then.
                consumer
                    .commit(&start, CommitMode::Sync)
                    .map_err(|e| format!("committing the start offsets: {e}"))?;
                Ok::<_, String>(start)
            })
            .await
            .map_err(|e| format!("finding start offsets: {e}"))??
        };
        consumer
            .assign(&start)
            .map_err(|e| format!("assigning: {e}"))?;
        if let Some(tx) = assigned.take() {
            let _ = tx.send(());
        }
        let result = self.consume(&consumer, done).await;
        // Commit what was stored, off the async threads (librdkafka blocks).
        let _ = tokio::task::spawn_blocking(move || {
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
            drop(consumer);
        })
        .await;
        result
    }

    async fn consume(
        &self,
        consumer: &StreamConsumer,
        done: &mut Vec<crate::store::ClusterPos>,
    ) -> Result<(), String> {
        // Records handed to the router, waiting for their durable copies.
        let mut window: FuturesOrdered<BoxFuture<'static, (i32, i64, bool)>> =
            FuturesOrdered::new();
        // Fetched batches waiting until the state logs are read up to the
        // moment they were fetched (pipelined: fetching goes on meanwhile).
        let mut waiting: FuturesOrdered<BoxFuture<'static, (bool, Vec<Fetched>)>> =
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
                    match done.iter_mut().find(|(p, _)| *p == partition) {
                        Some((_, o)) => *o = offset,
                        None => done.push((partition, offset)),
                    }
                }
                Some((synced, batch)) = waiting.next(), if !waiting.is_empty() => {
                    if !synced {
                        return Err("the state logs were not read in time".into());
                    }
                    for (pos, publisher, routed) in batch {
                        let reply = self.route(routed, publisher, pos).await?;
                        window.push_back(Box::pin(async move {
                            let stored: bool = match reply {
                                Some(rx) => rx.await.unwrap_or(false),
                                None => true,
                            };
                            (pos.0, pos.1, stored)
                        }));
                    }
                }
                batch = fetch(consumer), if window.len() < WINDOW && waiting.len() < WAITING_BATCHES => {
                    let batch = batch?;
                    // A subscription (or a move) acknowledged before these
                    // messages were produced is applied before they are routed.
                    let sync = self.sync.clone();
                    waiting.push_back(Box::pin(async move {
                        let synced = match sync {
                            Some(s) => s.wait().await,
                            None => true,
                        };
                        (synced, batch)
                    }));
                }
            }
        }
    }

    /// Hands one record to the router; `None`: nothing to wait for
    /// (undecodable, skipped and counted).
    async fn route(
        &self,
        routed: Option<Result<super::wire::Routed, crate::store::StoreError>>,
        publisher: Option<Arc<str>>,
        pos: crate::store::ClusterPos,
    ) -> Result<Option<oneshot::Receiver<bool>>, String> {
        let routed = match routed {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                self.undecodable(&e);
                return Ok(None);
            }
            None => return Ok(None),
        };
        self.metrics
            .consumed
            .get_or_create(&ClusterMetrics::topic("messages"))
            .inc();
        let (tx, rx) = oneshot::channel();
        let msg = RouterMsg::Cluster(Inbound::Message {
            routed,
            publisher,
            pos,
            reply: tx,
        });
        self.router
            .send(msg)
            .await
            .map_err(|_| "the router is gone".to_owned())?;
        Ok(Some(rx))
    }

    fn undecodable(&self, e: &crate::store::StoreError) {
        self.metrics.undecodable.inc();
        tracing::warn!(
            error = e as &dyn std::error::Error,
            "cluster record skipped: not decodable"
        );
    }

    /// A consumer of every partition of `retained` and `sessions` from the
    /// beginning.
    fn state_consumer(&self) -> Result<StreamConsumer, ClusterError> {
        let mut c = self.base.clone();
        // Never joins or commits: the group id only names the client.
        c.set(
            "group.id",
            format!("{}state.{}", self.topics.prefix, self.node),
        )
        .set("enable.auto.commit", "false");
        let consumer: StreamConsumer = c.create().map_err(ClusterError::Client)?;
        let mut list = TopicPartitionList::new();
        for topic in [&self.topics.retained, &self.topics.sessions] {
            let meta = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(ClusterError::Topics)?;
            let mut any = false;
            for t in meta.topics() {
                for p in t.partitions() {
                    list.add_partition_offset(topic, p.id(), Offset::Beginning)
                        .map_err(ClusterError::Topics)?;
                    any = true;
                }
            }
            if !any {
                return Err(ClusterError::Topic {
                    topic: topic.clone(),
                    reason: "no partitions".into(),
                });
            }
        }
        consumer.assign(&list).map_err(ClusterError::Topics)?;
        Ok(consumer)
    }

    /// Applies every retained and session record in the log's order, and
    /// reports how far it got (see `sync`).
    async fn state_log(
        self,
        consumer: StreamConsumer,
        progress: watch::Sender<super::sync::Progress>,
    ) {
        loop {
            let m = tokio::select! {
                _ = self.cancel.cancelled() => return,
                m = consumer.recv() => m,
            };
            let m = match m {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "cluster state log consumer error");
                    tokio::time::sleep(RESTART_PAUSE).await;
                    continue;
                }
            };
            let key = (m.topic().to_owned(), m.partition());
            let next = m.offset() + 1;
            if let Some(inbound) = self.state_record(&m) {
                if self.router.send(RouterMsg::Cluster(inbound)).await.is_err() {
                    return;
                }
            }
            progress.send_modify(|p| {
                p.insert(key, next);
            });
        }
    }

    /// One record of a state log as the router takes it; `None`: skipped.
    fn state_record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Inbound> {
        let Some(Ok(key)) = m.key().map(std::str::from_utf8) else {
            self.metrics.undecodable.inc();
            return None;
        };
        let sessions = m.topic() == self.topics.sessions;
        let kind = if sessions { "sessions" } else { "retained" };
        self.metrics
            .consumed
            .get_or_create(&ClusterMetrics::topic(kind))
            .inc();
        let payload = m.payload();
        if sessions {
            let shared = match payload.map(super::wire::decode_session) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => {
                    self.undecodable(&e);
                    return None;
                }
            };
            return Some(Inbound::Session {
                client_id: Arc::from(key),
                shared,
            });
        }
        let message = match payload.map(super::wire::decode_retained) {
            None => None,
            Some(Ok(msg)) => Some(msg),
            Some(Err(e)) => {
                self.undecodable(&e);
                return None;
            }
        };
        Some(Inbound::Retained {
            topic: key.to_owned(),
            message,
        })
    }
}

/// A record of `messages`: its position, key (the publisher) and decoded
/// value (`None`: no value).
type Fetched = (
    crate::store::ClusterPos,
    Option<Arc<str>>,
    Option<Result<super::wire::Routed, crate::store::StoreError>>,
);

/// The next record, and every record already waiting behind it (up to 512).
async fn fetch(consumer: &StreamConsumer) -> Result<Vec<Fetched>, String> {
    use futures_util::FutureExt;
    let take = |m: rdkafka::message::BorrowedMessage<'_>| -> Fetched {
        let publisher = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(Arc::from);
        (
            (m.partition(), m.offset()),
            publisher,
            m.payload().map(super::wire::decode_routed),
        )
    };
    let first = consumer
        .recv()
        .await
        .map_err(|e| format!("consuming: {e}"))?;
    let mut batch = vec![take(first)];
    while batch.len() < 512 {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(take(m)),
            Some(Err(e)) => return Err(format!("consuming: {e}")),
            None => break,
        }
    }
    Ok(batch)
}

/// Where to start reading each partition of `topic`: right after the last
/// record whose routing the store holds (`routed`: nothing stored twice
/// after a crash), or this node's committed offset if that is further,
/// else the partition's end (a new node serves no session yet, so what was
/// routed before it joined is not for it).
fn start_offsets(
    consumer: &StreamConsumer,
    topic: &str,
    routed: &[crate::store::ClusterPos],
) -> Result<TopicPartitionList, String> {
    let meta = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| format!("metadata: {e}"))?;
    let mut list = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            list.add_partition(t.name(), p.id());
        }
    }
    if list.count() == 0 {
        return Err(format!("{topic} has no partitions"));
    }
    let committed = consumer
        .committed_offsets(list, METADATA_TIMEOUT)
        .map_err(|e| format!("committed offsets: {e}"))?;
    let mut start = TopicPartitionList::new();
    for e in committed.elements() {
        let stored = routed
            .iter()
            .find(|(p, _)| *p == e.partition())
            .map(|(_, o)| o + 1);
        let offset = match (e.offset(), stored) {
            (Offset::Offset(c), Some(s)) => c.max(s),
            (_, Some(s)) => s,
            (Offset::Offset(c), None) => c,
            // Never below 0: a negative offset is a logical one to
            // librdkafka (-1: "the end", resolved later, skipping what is
            // produced meanwhile).
            (_, None) => consumer
                .fetch_watermarks(topic, e.partition(), METADATA_TIMEOUT)
                .map_err(|e| format!("watermarks: {e}"))?
                .1
                .max(0),
        };
        start
            .add_partition_offset(topic, e.partition(), Offset::Offset(offset))
            .map_err(|e| format!("start offset: {e}"))?;
    }
    Ok(start)
}
