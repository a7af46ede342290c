//! The downlink peers: a raw consumer that does the least a gateway must
//! do to settle a command durably, as the limit mqbridge is measured
//! against. It takes what has arrived (up to [`BATCH`]), appends each
//! command's payload to one file, fsyncs it once per batch, and only then
//! commits the batch's offsets (Kafka, in the same consumer group role as
//! the route) or acks it with `multiple` (AMQP, prefetch 100 as the route's
//! default). No sessions, no routing, no per-device queue.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Commands at most per fsync.
const BATCH: usize = 1000;
/// AMQP prefetch: the route's default.
const PREFETCH: u16 = 100;

/// A running raw consumer: how many commands it has settled; stopped and
/// its file removed when dropped.
pub struct RawConsumer {
    pub settled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Drop for RawConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn journal(dir: &tempfile::TempDir) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("commands.log"))?)
}

/// Joins `group` on `topic`; on a thread of its own (librdkafka's calls
/// block).
pub fn kafka(bootstrap: &str, topic: &str, group: &str) -> Result<RawConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let dir = tempfile::tempdir()?;
    let mut file = journal(&dir)?;
    let (settled, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (n, halt, topic) = (settled.clone(), stop.clone(), topic.to_string());
    std::thread::spawn(move || -> Result<()> {
        while !halt.load(Ordering::Relaxed) {
            let mut offsets = std::collections::HashMap::new();
            let mut wait = Duration::from_millis(100);
            let mut count = 0;
            while count < BATCH {
                match consumer.poll(wait) {
                    Some(Ok(m)) => {
                        file.write_all(m.payload().unwrap_or_default())?;
                        offsets.insert(m.partition(), m.offset() + 1);
                        count += 1;
                        wait = Duration::ZERO;
                    }
                    Some(Err(e)) => eprintln!("raw kafka consumer: {e}"),
                    None => break,
                }
            }
            if count == 0 {
                continue;
            }
            file.sync_data()?;
            let mut tpl = TopicPartitionList::new();
            for (p, o) in offsets {
                tpl.add_partition_offset(&topic, p, Offset::Offset(o))?;
            }
            consumer.commit(&tpl, CommitMode::Sync)?;
            n.fetch_add(count, Ordering::Relaxed);
        }
        Ok(())
    });
    Ok(RawConsumer {
        settled,
        stop,
        _dir: dir,
    })
}

/// Consumes `queue` (prefetch [`PREFETCH`]), acking each fsynced batch.
pub async fn amqp(uri: &str, queue: &str) -> Result<RawConsumer> {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .context("raw AMQP consumer connect")?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut deliveries = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let mut file = journal(&dir)?;
    let (settled, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (n, halt) = (settled.clone(), stop.clone());
    tokio::spawn(async move {
        while !halt.load(Ordering::Relaxed) {
            let first = tokio::time::timeout(Duration::from_millis(100), deliveries.next());
            let Ok(Some(Ok(d))) = first.await else {
                continue;
            };
            let mut last = d.delivery_tag;
            let mut count = 1;
            file.write_all(&d.data)?;
            // What else has already arrived, without waiting.
            while count < BATCH {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(d))) => {
                        file.write_all(&d.data)?;
                        last = d.delivery_tag;
                        count += 1;
                    }
                    _ => break,
                }
            }
            file.sync_data()?;
            let all = BasicAckOptions { multiple: true };
            ch.basic_ack(last, all).await?;
            n.fetch_add(count, Ordering::Relaxed);
        }
        let _ = conn.close(200, "done".into()).await;
        anyhow::Ok(())
    });
    Ok(RawConsumer {
        settled,
        stop,
        _dir: dir,
    })
}
