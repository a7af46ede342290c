//! Read-your-writes across nodes: before a CONNECT is attached, this node
//! reads the state logs (sessions, retained) up to their ends as of that
//! moment. A device that moves right after its old node acknowledged a
//! SUBSCRIBE, or a subscriber that arrives right after a retained message was
//! acknowledged elsewhere, then finds what it expects on this node.
//!
//! Waiting connects are served in batches: one offsets request for all of
//! them, then a wait until the state-log consumer (which reports its
//! progress here) has handed everything up to those ends to the router.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::ClusterError;

/// Connects waiting at once, at most (more wait for room: backpressure).
const WAITING: usize = 4096;
/// Longest a connect waits for the state logs before it is refused.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(5);

/// Next offset to read per (topic, partition), as the state-log consumer
/// has handed records to the router.
pub type Progress = HashMap<(String, i32), i64>;

/// The handle connections wait on.
#[derive(Clone)]
pub struct Sync {
    tx: mpsc::Sender<oneshot::Sender<bool>>,
}

impl Sync {
    /// Whether this node caught up with the state logs (false: Kafka did
    /// not answer, or the logs could not be read in time).
    pub async fn wait(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.is_ok() && rx.await.unwrap_or(false)
    }
}

/// Starts the batching task; `progress` comes from the state-log consumer.
pub(super) fn start(
    base: &ClientConfig,
    topics: Vec<String>,
    progress: watch::Receiver<Progress>,
    cancel: CancellationToken,
    tasks: &crate::tasks::Tasks,
) -> Result<Sync, ClusterError> {
    let mut c = base.clone();
    c.set("group.id", "mqbridge-sync");
    let consumer: Arc<BaseConsumer> = Arc::new(c.create().map_err(ClusterError::Client)?);
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<bool>>(WAITING);
    tasks.supervise("cluster sync", async move {
        let mut progress = progress;
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                w = rx.recv() => match w { Some(w) => w, None => return },
            };
            let mut batch = vec![first];
            while let Ok(w) = rx.try_recv() {
                batch.push(w);
            }
            let ok = caught_up(&consumer, &topics, &mut progress).await;
            for w in batch {
                let _ = w.send(ok);
            }
        }
    });
    Ok(Sync { tx })
}

/// Asks Kafka for the ends of `topics`, then waits until `progress` reaches them.
async fn caught_up(
    consumer: &Arc<BaseConsumer>,
    topics: &[String],
    progress: &mut watch::Receiver<Progress>,
) -> bool {
    let (c, t) = (consumer.clone(), topics.to_vec());
    let ends = match tokio::task::spawn_blocking(move || ends(&c, &t)).await {
        Ok(Ok(ends)) => ends,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cluster state log ends not known; connect refused");
            return false;
        }
        Err(_) => return false,
    };
    let reached = |p: &Progress| {
        ends.iter()
            .all(|(k, end)| p.get(k).copied().unwrap_or(0) >= *end)
    };
    match tokio::time::timeout(SYNC_TIMEOUT, progress.wait_for(reached)).await {
        Ok(Ok(_)) => true,
        _ => {
            tracing::warn!("cluster state logs not read in time; connect refused");
            false
        }
    }
}

/// The end offset of every partition of `topics` (partitions without
/// records left out).
pub(super) fn ends(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<HashMap<(String, i32), i64>, String> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let meta = consumer
            .fetch_metadata(Some(topic), OFFSETS_TIMEOUT)
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        for t in meta.topics() {
            for p in t.partitions() {
                list.add_partition_offset(t.name(), p.id(), Offset::End)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let latest = consumer
        .offsets_for_times(list, OFFSETS_TIMEOUT)
        .map_err(|e| format!("end offsets: {e}"))?;
    let mut out = HashMap::new();
    for e in latest.elements() {
        if let Offset::Offset(o) = e.offset() {
            if o > 0 {
                out.insert((e.topic().to_owned(), e.partition()), o);
            }
        }
    }
    Ok(out)
}
