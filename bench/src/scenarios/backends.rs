//! What the bridge scenarios share: Kafka topics made and removed per run
//! (tansu creates none by itself), counters that see each message arrive on
//! the backend (a Kafka consumer assigned every partition, an AMQP queue
//! bound to `amq.topic`), and the MQTT device load.
//!
//! Every payload starts with its send time (µs on this process' clock since
//! `origin`), so an arrival records publish→arrival latency.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::task::JoinHandle;

use super::common::{connected, options, Measured, IDLE_END};
use crate::peers::Side;

/// Partitions of the topics the scenarios create (mqbridge's default for
/// topics it creates itself).
pub const PARTITIONS: i32 = 3;
/// How long a counter waits for the first message (a sink may still be
/// connecting); after it, [`IDLE_END`] of silence ends the count.
const FIRST_WAIT: Duration = Duration::from_secs(30);

/// What a counter saw.
pub struct Arrivals {
    pub got: usize,
    pub last: Instant,
    pub hist: Histogram<u64>,
}

impl Arrivals {
    fn new() -> Result<Arrivals> {
        Ok(Arrivals {
            got: 0,
            last: Instant::now(),
            hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        })
    }

    fn record(&mut self, origin: Instant, payload: &[u8]) {
        // A producer's warm-up record, not part of the count.
        if payload.is_empty() {
            return;
        }
        self.got += 1;
        self.last = Instant::now();
        let sent = payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        let now = origin.elapsed().as_micros() as u64;
        let _ = self.hist.record(now.saturating_sub(sent).max(1));
    }

    fn wait(&self) -> Duration {
        if self.got == 0 {
            FIRST_WAIT
        } else {
            IDLE_END
        }
    }

    /// Throughput from `start` (the first publish) to the last arrival;
    /// an error if any message is missing.
    pub fn measured(self, side: Side, start: Instant, expected: usize) -> Result<Measured> {
        if self.got < expected {
            bail!("{}: {} of {expected} arrived", side.name(), self.got);
        }
        let secs = self.last.duration_since(start).as_secs_f64().max(1e-6);
        Ok(Measured {
            value: self.got as f64 / secs,
            unit: "msg/s",
            p50_us: Some(self.hist.value_at_quantile(0.5)),
            p99_us: Some(self.hist.value_at_quantile(0.99)),
            delivered: Some((self.got, expected)),
        })
    }
}

/// A name no earlier run used.
pub fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{what}-{:x}", nanos ^ u128::from(std::process::id()))
}

/// A payload of `size` bytes (at least 8) stamped with the send time.
pub fn stamp(payload: &mut [u8], origin: Instant) {
    let now = origin.elapsed().as_micros() as u64;
    payload[..8].copy_from_slice(&now.to_be_bytes());
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

pub async fn create_topic(bootstrap: &str, topic: &str) -> Result<()> {
    let made = admin(bootstrap)?
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("create topic")?;
    for r in made {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Best effort: a topic left behind costs tansu's memory only.
pub async fn delete_topic(bootstrap: &str, topic: &str) {
    if let Ok(a) = admin(bootstrap) {
        let _ = a.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// Counts `expected` messages of `topic` from the beginning of every
/// partition (assigned, no group: nothing to wait for before reading).
pub async fn kafka_counter(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    origin: Instant,
) -> Result<JoinHandle<Arrivals>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("counter"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // Let it connect and fetch once before the clock starts.
    let _ = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    let mut seen = Arrivals::new()?;
    Ok(tokio::spawn(async move {
        // librdkafka retries by itself; 100 errors in a row: it gave up.
        let mut errors = 0;
        while seen.got < expected && errors < 100 {
            match tokio::time::timeout(seen.wait(), consumer.recv()).await {
                Ok(Ok(m)) => {
                    errors = 0;
                    seen.record(origin, m.payload().unwrap_or_default());
                }
                Ok(Err(e)) => {
                    errors += 1;
                    eprintln!("kafka counter: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => break,
            }
        }
        seen
    }))
}

/// Counts `expected` messages routed by `amq.topic` with `binding`, on a
/// durable queue of its own (deleted afterwards) consumed without acks.
pub async fn amqp_counter(
    uri: &str,
    binding: &str,
    expected: usize,
    origin: Instant,
) -> Result<JoinHandle<Arrivals>> {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("AMQP counter connecting to {uri}"))?;
    let ch = conn.create_channel().await?;
    let queue = unique("count");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.as_str().into(),
        "amq.topic".into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    let mut seen = Arrivals::new()?;
    Ok(tokio::spawn(async move {
        while seen.got < expected {
            match tokio::time::timeout(seen.wait(), consumer.next()).await {
                Ok(Some(Ok(d))) => seen.record(origin, &d.data),
                Ok(Some(Err(e))) => {
                    eprintln!("amqp counter: {e}");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = conn.close(200, "done".into()).await;
        seen
    }))
}

/// Connected MQTT devices publishing; dropped once the counter is done.
pub struct Devices {
    held: Vec<(AsyncClient, JoinHandle<()>)>,
}

impl Devices {
    pub async fn disconnect(self) {
        for (c, driver) in self.held {
            let _ = c.disconnect().await;
            driver.abort();
        }
    }
}

/// One empty QoS 1 message, its PUBACK awaited: the broker's route to the
/// backend is connected before the clock starts (the counters skip it).
async fn warm_up(addr: std::net::SocketAddr, id: &str, topic: &str) -> Result<()> {
    let (c, mut ev) = super::common::client(options(addr, id), 10);
    connected(&mut ev).await.context("warm-up connect")?;
    c.publish(topic, QoS::AtLeastOnce, false, Vec::new())
        .await?;
    let acked = tokio::time::timeout(FIRST_WAIT, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await? {
                return anyhow::Ok(());
            }
        }
    });
    acked.await.context("warm-up PUBACK")??;
    let _ = c.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
    Ok(())
}

/// `devices` MQTT clients (in-flight window 100, as every scenario's
/// clients), all connected before the clock starts; each then publishes
/// `messages` QoS 1 messages of `size` bytes to `topic(i)`. Returns the
/// start instant.
pub async fn mqtt_load(
    addr: std::net::SocketAddr,
    devices: usize,
    messages: usize,
    size: usize,
    topic: impl Fn(usize) -> String,
    origin: Instant,
) -> Result<(Instant, Devices)> {
    let run = unique("dev");
    warm_up(addr, &format!("{run}-warm"), &topic(0)).await?;
    let mut clients = Vec::new();
    for i in 0..devices {
        let (c, mut ev) = super::common::client(options(addr, &format!("{run}-{i}")), 1000);
        connected(&mut ev).await.context("device connect")?;
        let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        clients.push((c, driver, topic(i)));
    }
    let start = Instant::now();
    let mut held = Vec::new();
    for (c, driver, topic) in clients {
        let publ = c.clone();
        tokio::spawn(async move {
            let mut payload = vec![0u8; size.max(8)];
            for _ in 0..messages {
                stamp(&mut payload, origin);
                if publ
                    .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        held.push((c, driver));
    }
    Ok((start, Devices { held }))
}
