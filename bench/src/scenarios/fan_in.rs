//! `fan-in-kafka` / `fan-in-amqp`: N devices publishing QoS 1 telemetry
//! through mqbridge's reference uplink route (`ack = "backend"`: PUBACK
//! only after the delivery report / publisher confirm), counted where it
//! lands: throughput = messages seen on the backend / time from the first
//! publish to the last arrival, latency = publish → arrival.
//!
//! Peers, with the same message size, count, senders and a window of 100
//! unconfirmed messages per sender (an MQTT client's in-flight window):
//! - Kafka: a raw `rdkafka` FutureProducer with the settings mqbridge's sink
//!   forces (acks=all, idempotence, lz4, no message timeout), keyed by
//!   device like the route's default key, each sender waiting for every
//!   delivery report. A fresh topic of 3 partitions per run.
//! - AMQP: RabbitMQ's MQTT plugin (the same MQTT load into its own node; the
//!   plugin publishes to `amq.topic`), and raw `lapin` with publisher
//!   confirms (one channel per sender) into the main node. Every side
//!   publishes persistent messages to `amq.topic`, routed to one durable
//!   queue read by the counter. (mqbridge's records carry headers the raw
//!   clients do not send: that is part of what the bridge costs.)

use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::backends::{
    amqp_counter, create_topic, delete_topic, kafka_counter, mqtt_load, stamp, unique,
};
use super::common::Measured;
use super::{Better, Variant};
use crate::peers::{Broker, Side, INFLIGHT};
use crate::Args;

#[derive(Clone)]
struct Load {
    bin: std::path::PathBuf,
    devices: usize,
    messages: usize,
    size: usize,
    kafka: String,
    amqp: String,
}

pub fn variants(a: &Args) -> Vec<Variant> {
    let load = Load {
        bin: a.bin.clone(),
        devices: a.devices,
        messages: a.messages,
        size: a.size,
        kafka: a.kafka.clone(),
        amqp: a.amqp.clone(),
    };
    let (k, q) = (load.clone(), load);
    vec![
        Variant::new(
            "fan-in-kafka",
            vec![Side::Mqbridge, Side::RawKafka],
            Better::Higher,
            move |side| {
                let l = k.clone();
                async move { fan_in_kafka(side, &l).await }
            },
        ),
        Variant::new(
            "fan-in-amqp",
            vec![Side::Mqbridge, Side::RabbitMqtt, Side::RawAmqp],
            Better::Higher,
            move |side| {
                let l = q.clone();
                async move { fan_in_amqp(side, &l).await }
            },
        ),
    ]
}

async fn fan_in_kafka(side: Side, l: &Load) -> Result<Measured> {
    let topic = unique("fanin");
    create_topic(&l.kafka, &topic).await?;
    let r = kafka_round(side, l, &topic).await;
    delete_topic(&l.kafka, &topic).await;
    r
}

async fn kafka_round(side: Side, l: &Load, topic: &str) -> Result<Measured> {
    let origin = Instant::now();
    let expected = l.devices * l.messages;
    match side {
        Side::Mqbridge => {
            let config = format!(
                r#"
[[bridge.backends]]
kind = "kafka"
name = "kafka"
bootstrap_servers = "{}"
[[bridge.uplink]]
name = "telemetry"
filter = "devices/+/telemetry/#"
backend = "kafka"
target = "{topic}"
ack = "backend"
"#,
                l.kafka
            );
            let broker = Broker::start_with(side, &l.bin, Some(&config))?;
            let counter = kafka_counter(&l.kafka, topic, expected, origin).await?;
            let (start, devices) = mqtt_load(
                broker.addr,
                l.devices,
                l.messages,
                l.size,
                |i| format!("devices/{i}/telemetry"),
                origin,
            )
            .await?;
            let seen = counter.await?;
            devices.disconnect().await;
            seen.measured(side, start, expected)
        }
        _ => {
            let counter = kafka_counter(&l.kafka, topic, expected, origin).await?;
            let start = raw_kafka(l, topic, origin).await?;
            counter.await?.measured(side, start, expected)
        }
    }
}

/// The producer settings of mqbridge's Kafka sink (`src/bridge/kafka/sink`).
fn raw_producer(bootstrap: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "0")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?)
}

async fn raw_kafka(l: &Load, topic: &str, origin: Instant) -> Result<Instant> {
    let producer = raw_producer(&l.kafka)?;
    // Connected, its idempotent producer id taken and the topic looked up
    // before the clock starts, as mqbridge's sink is by the time its
    // devices publish: one empty record, which the counter skips.
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic).payload(&[]),
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("raw producer warm-up: {e}"))?;
    let start = Instant::now();
    let mut senders = Vec::new();
    for i in 0..l.devices {
        let (p, topic, messages, size) = (producer.clone(), topic.to_string(), l.messages, l.size);
        senders.push(tokio::spawn(async move {
            let key = format!("dev-{i}");
            let mut window = FuturesUnordered::new();
            let mut payload = vec![0u8; size.max(8)];
            for _ in 0..messages {
                if window.len() >= INFLIGHT {
                    settled(window.next().await)?;
                }
                stamp(&mut payload, origin);
                // Queued in librdkafka at once; the future is its report.
                let mut rec = FutureRecord::to(&topic).key(&key).payload(&payload);
                loop {
                    match p.send_result(rec) {
                        Ok(report) => break window.push(report),
                        Err((e, back)) => {
                            // Its queue is full: wait for a report, retry.
                            rec = back;
                            if window.is_empty() {
                                anyhow::bail!("produce: {e}");
                            }
                            settled(window.next().await)?;
                        }
                    }
                }
            }
            while let Some(r) = window.next().await {
                settled(Some(r))?;
            }
            Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    Ok(start)
}

/// A delivery report that says the message is written.
fn settled<E>(r: Option<Result<OwnedDeliveryResult, E>>) -> Result<()> {
    match r {
        Some(Ok(Err((e, _)))) => anyhow::bail!("delivery: {e}"),
        Some(Err(_)) => anyhow::bail!("delivery report lost"),
        _ => Ok(()),
    }
}

async fn fan_in_amqp(side: Side, l: &Load) -> Result<Measured> {
    let origin = Instant::now();
    let expected = l.devices * l.messages;
    let run = unique("fanin");
    // Topic devices/<i>/telemetry/<run> → routing key devices.<i>.telemetry.<run>.
    let binding = format!("devices.*.telemetry.{run}");
    let topic = |i: usize| format!("devices/{i}/telemetry/{run}");
    match side {
        Side::Mqbridge | Side::RabbitMqtt => {
            let config = format!(
                r#"
[[bridge.backends]]
kind = "amqp"
name = "amqp"
uri = "{}"
[[bridge.uplink]]
name = "telemetry"
filter = "devices/+/telemetry/#"
backend = "amqp"
target = "amq.topic"
ack = "backend"
"#,
                l.amqp
            );
            let broker = Broker::start_with(side, &l.bin, Some(&config))?;
            let uri = broker.amqp_uri.clone().unwrap_or_else(|| l.amqp.clone());
            let counter = amqp_counter(&uri, &binding, expected, origin).await?;
            let (start, devices) =
                mqtt_load(broker.addr, l.devices, l.messages, l.size, topic, origin).await?;
            let seen = counter.await?;
            devices.disconnect().await;
            seen.measured(side, start, expected)
        }
        _ => {
            let counter = amqp_counter(&l.amqp, &binding, expected, origin).await?;
            let start = raw_amqp(l, &topic, origin).await?;
            counter.await?.measured(side, start, expected)
        }
    }
}

async fn raw_amqp(l: &Load, topic: &dyn Fn(usize) -> String, origin: Instant) -> Result<Instant> {
    let conn = Connection::connect(&l.amqp, ConnectionProperties::default())
        .await
        .context("lapin connect")?;
    let mut channels = Vec::new();
    for i in 0..l.devices {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push((ch, topic(i).replace('/', ".")));
    }
    let start = Instant::now();
    let mut senders = Vec::new();
    for (ch, key) in channels {
        let (messages, size) = (l.messages, l.size);
        senders.push(tokio::spawn(async move {
            let mut window = FuturesUnordered::new();
            let mut payload = vec![0u8; size.max(8)];
            let mandatory = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            for _ in 0..messages {
                if window.len() >= INFLIGHT {
                    if let Some(r) = window.next().await {
                        r?;
                    }
                }
                stamp(&mut payload, origin);
                let confirm = ch
                    .basic_publish(
                        "amq.topic".into(),
                        key.as_str().into(),
                        mandatory,
                        &payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                window.push(confirm);
            }
            while let Some(r) = window.next().await {
                r?;
            }
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(start)
}
