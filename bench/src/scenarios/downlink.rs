//! `downlink-kafka` / `downlink-amqp`: commands per second from the backend
//! into offline persistent sessions, through mqbridge's reference downlink
//! route (`topic = "devices/{key}/commands"` / `{routing_key}`, QoS 1): a
//! command is committed (Kafka) / acked (AMQP) only once it is stored in its
//! session, so the figure is commands / time from the first command produced
//! to the last one settled.
//!
//! `--sessions` devices connect with a persistent session, subscribe to
//! their command topic and disconnect; `--commands` commands of `--size`
//! bytes, keyed round-robin by device, are then produced (Kafka: a fresh
//! topic of 3 partitions, acks=all; AMQP: a fresh durable queue bound to an
//! exchange of its own, persistent messages). Settled means: Kafka, the
//! route's group has committed every partition up to the last command;
//! AMQP, the queue has no ready message and the route no unsettled command
//! (its admin API), then checked with `rabbitmqctl` (nothing unacked).
//! Afterwards a sample of devices reconnects and must receive exactly its
//! commands. One command with no session is settled first so the route is
//! connected (and the Kafka group joined) before the clock starts.
//!
//! Peer (`raw`): a consumer that appends each batch to a file, fsyncs it
//! and then commits / acks it, timed the same way (Kafka: the committed
//! offsets; AMQP: every command acked, then the same `rabbitmqctl` check).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{Event, Packet, QoS};

use super::backends::{create_topic, delete_topic, stamp, unique, PARTITIONS};
use super::common::{connected, options, Measured, IDLE_END};
use super::{Better, Variant};
use crate::peers::{Broker, Side};
use crate::Args;

mod amqp;
mod raw;

/// How long settling may take before the run fails.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// Devices that reconnect to check their commands.
const SAMPLE: usize = 10;

#[derive(Clone)]
pub(super) struct Load {
    pub bin: std::path::PathBuf,
    pub sessions: usize,
    pub commands: usize,
    pub size: usize,
    pub kafka: String,
    pub amqp: String,
}

pub fn variants(a: &Args) -> Vec<Variant> {
    let load = Load {
        bin: a.bin.clone(),
        sessions: a.sessions.max(1),
        commands: a.commands,
        size: a.size,
        kafka: a.kafka.clone(),
        amqp: a.amqp.clone(),
    };
    let (k, q) = (load.clone(), load);
    vec![
        Variant::new(
            "downlink-kafka",
            vec![Side::Mqbridge, Side::RawKafka],
            Better::Higher,
            move |side| {
                let l = k.clone();
                async move { downlink_kafka(side, &l).await }
            },
        ),
        Variant::new(
            "downlink-amqp",
            vec![Side::Mqbridge, Side::RawAmqp],
            Better::Higher,
            move |side| {
                let l = q.clone();
                async move { amqp::downlink_amqp(side, &l).await }
            },
        ),
    ]
}

/// The device names of a run, and which device command `j` goes to.
pub(super) struct Fleet {
    pub run: String,
    pub sessions: usize,
}

impl Fleet {
    pub fn new(sessions: usize) -> Fleet {
        Fleet {
            run: unique("dl"),
            sessions,
        }
    }
    /// One MQTT topic level (no `/`, `.`, `+` or `#`).
    pub fn device(&self, i: usize) -> String {
        format!("{}-{i}", self.run)
    }
    pub fn of_command(&self, j: usize) -> String {
        self.device(j % self.sessions)
    }
    /// How many of `commands` go to device `i`.
    fn share(&self, i: usize, commands: usize) -> usize {
        commands / self.sessions + usize::from(i < commands % self.sessions)
    }

    /// Every device: persistent session, subscribed at QoS 1, disconnected.
    pub async fn create_sessions(&self, addr: SocketAddr) -> Result<()> {
        for chunk in (0..self.sessions).collect::<Vec<_>>().chunks(50) {
            let mut joins = Vec::new();
            for &i in chunk {
                let id = self.device(i);
                joins.push(tokio::spawn(async move {
                    let mut o = options(addr, &id);
                    o.set_clean_session(false);
                    let (c, mut ev) = super::common::client(o, 10);
                    connected(&mut ev).await?;
                    c.subscribe(format!("devices/{id}/commands"), QoS::AtLeastOnce)
                        .await?;
                    loop {
                        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
                            break;
                        }
                    }
                    c.disconnect().await?;
                    // Until the DISCONNECT is written and the socket closed.
                    while ev.poll().await.is_ok() {}
                    anyhow::Ok(())
                }));
            }
            for j in joins {
                j.await?.context("creating a session")?;
            }
        }
        Ok(())
    }

    /// A sample of devices reconnects: each must get exactly its commands.
    pub async fn check_sample(&self, addr: SocketAddr, commands: usize) -> Result<()> {
        let step = (self.sessions / SAMPLE).max(1);
        for i in (0..self.sessions).step_by(step).take(SAMPLE) {
            let id = self.device(i);
            let mut o = options(addr, &id);
            o.set_clean_session(false);
            let (c, mut ev) = super::common::client(o, 10);
            connected(&mut ev).await?;
            let want = self.share(i, commands);
            let mut got = 0;
            while got < want {
                match tokio::time::timeout(IDLE_END, ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(_)))) => got += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let _ = c.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), ev.poll()).await;
            if got != want {
                bail!("device {i} received {got} of its {want} commands on reconnect");
            }
        }
        Ok(())
    }
}

pub(super) fn measured(commands: usize, took: Duration) -> Measured {
    Measured {
        value: commands as f64 / took.as_secs_f64().max(1e-6),
        unit: "cmd/s",
        p50_us: None,
        p99_us: None,
        delivered: Some((commands, commands)),
    }
}

async fn downlink_kafka(side: Side, l: &Load) -> Result<Measured> {
    let topic = unique("cmd");
    create_topic(&l.kafka, &topic).await?;
    let r = kafka_round(side, l, &topic).await;
    delete_topic(&l.kafka, &topic).await;
    r
}

async fn kafka_round(side: Side, l: &Load, topic: &str) -> Result<Measured> {
    let group = unique("dl-group");
    let config = format!(
        r#"
[session]
max_persistent_sessions_per_ip = 0
[bridge]
uplink = []
[[bridge.backends]]
kind = "kafka"
name = "kafka"
bootstrap_servers = "{}"
[[bridge.downlink]]
name = "commands"
backend = "kafka"
topics = ["{topic}"]
group_id = "{group}"
topic = "devices/{{key}}/commands"
qos = 1
"#,
        l.kafka
    );
    let fleet = Fleet::new(l.sessions);
    let (mut broker, mut raw) = (None, None);
    if side == Side::Mqbridge {
        let b = Broker::start_with(side, &l.bin, Some(&config))?;
        fleet.create_sessions(b.addr).await?;
        broker = Some(b);
    } else {
        raw = Some(raw::kafka(&l.kafka, topic, &group)?);
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &l.kafka)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let origin = Instant::now();
    // Warm-up: a command for no session, settled once the group has joined.
    let warm = format!("{}-warm", fleet.run);
    let d = producer
        .send(
            FutureRecord::to(topic).key(&warm).payload(&b"warm-up"[..]),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("warm-up command: {e}"))?;
    let mut ends = HashMap::from([(d.partition, d.offset + 1)]);
    wait_committed(&l.kafka, &group, topic, &ends).await?;

    let start = Instant::now();
    let mut reports = Vec::with_capacity(l.commands);
    let mut payload = vec![0u8; l.size.max(8)];
    for j in 0..l.commands {
        stamp(&mut payload, origin);
        let key = fleet.of_command(j);
        let mut rec = FutureRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send_result(rec) {
                Ok(r) => break reports.push(r),
                Err((e, back)) => {
                    // librdkafka's queue is full: let it drain a little.
                    rec = back;
                    if reports.is_empty() {
                        bail!("produce: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for r in reports {
        let d = r
            .await?
            .map_err(|(e, _)| anyhow::anyhow!("command delivery: {e}"))?;
        let end = ends.entry(d.partition).or_insert(0);
        *end = (*end).max(d.offset + 1);
    }
    wait_committed(&l.kafka, &group, topic, &ends).await?;
    let took = start.elapsed();
    if let Some(b) = &broker {
        fleet.check_sample(b.addr, l.commands).await?;
    }
    drop(raw);
    Ok(measured(l.commands, took))
}

/// Polls the group's committed offsets until each partition reaches `ends`.
async fn wait_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
) -> Result<()> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let reader = std::sync::Arc::new(reader);
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let r = reader.clone();
        let got =
            tokio::task::spawn_blocking(move || r.committed_offsets(tpl, Duration::from_secs(5)))
                .await?;
        if let Ok(got) = got {
            let done = ends.iter().all(|(&p, &end)| {
                matches!(got.find_partition(topic, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= end)
            });
            if done {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the route's offsets were not committed within {SETTLE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
