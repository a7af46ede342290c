//! Helpers for the Kafka downlink tests: the broker (`MQBRIDGE_TEST_KAFKA`,
//! default 127.0.0.1:9092; `service::kafka`),
//! random topics, producing commands, reading topics and group offsets.

use std::time::{Duration, Instant};

use mqbridge::config::{BackendConfig, Config, DownlinkRoute, KafkaBackend};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::time::timeout;

use crate::common::service::{self, Turn, Use};

/// The broker's address and a shared turn on it, or `None` (after
/// `service::missing`) when it does not answer.
pub async fn broker() -> Option<(String, Turn)> {
    init_logs();
    service::kafka(Use::Shared).await
}

/// Logs for failing tests (RUST_LOG, default warn).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub fn unique(what: &str) -> String {
    format!("mqbridge-dl-{what}-{:012x}", rand::random::<u64>() >> 16)
}

pub fn backend(addr: &str) -> KafkaBackend {
    KafkaBackend {
        name: "kafka".into(),
        bootstrap_servers: addr.into(),
        compression: "none".into(),
        create_topics: false,
        topic_partitions: 3,
        topic_replication: 1,
        properties: Vec::new(),
        ..KafkaBackend::default()
    }
}

/// A downlink route on `topic` with its own group; MQTT topic `mqtt_topic`.
pub fn route(topic: &str, group: &str, mqtt_topic: &str) -> DownlinkRoute {
    DownlinkRoute {
        name: "commands".into(),
        backend: "kafka".into(),
        topics: vec![topic.into()],
        group_id: Some(group.into()),
        queue: String::new(),
        declare_queue: false,
        bind_exchange: String::new(),
        binding_key: String::new(),
        prefetch: 100,
        topic: mqtt_topic.into(),
        qos: 1,
        retain: false,
        client_id: None,
        create_sessions: false,
        expiry_secs: 0,
        receipt_target: None,
        dead_letter_target: None,
    }
}

/// Turns a test config into a Kafka-only gateway with `route` as its downlink.
pub fn configure(cfg: &mut Config, addr: &str, route: &DownlinkRoute) {
    cfg.bridge.backends = vec![BackendConfig::Kafka(backend(addr))];
    cfg.bridge.uplink = vec![];
    cfg.bridge.downlink = vec![route.clone()];
}

fn admin(addr: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client")
}

/// Creates topics (tansu does not create them on first use).
pub async fn create_topics(addr: &str, names: &[&str], partitions: i32) {
    let new: Vec<_> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let res = admin(addr)
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

pub fn producer(addr: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "all")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer")
}

/// One command to produce.
#[derive(Default, Clone)]
pub struct Cmd<'a> {
    pub key: &'a str,
    pub payload: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    /// Message timestamp (ms), default: now.
    pub timestamp_ms: Option<i64>,
}

pub async fn produce(p: &FutureProducer, topic: &str, c: Cmd<'_>) {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &c.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut rec = FutureRecord::to(topic)
        .key(c.key)
        .payload(c.payload)
        .headers(headers);
    if let Some(ts) = c.timestamp_ms {
        rec = rec.timestamp(ts);
    }
    p.send(rec, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("command produced");
}

/// Produces `payloads` with `key` all at once (each enqueued before any
/// is awaited), then waits until the broker has every one.
pub async fn produce_many(p: &FutureProducer, topic: &str, key: &str, payloads: &[String]) {
    let pending: Vec<_> = payloads
        .iter()
        .map(|s| {
            p.send_result(FutureRecord::to(topic).key(key).payload(s))
                .map_err(|(e, _)| e)
                .expect("command enqueued")
        })
        .collect();
    for d in pending {
        d.await
            .expect("delivery report")
            .map_err(|(e, _)| e)
            .expect("command produced");
    }
}

/// Everything on `topic` until `n` messages came, or `within` elapsed.
pub async fn read_topic(addr: &str, topic: &str, n: usize, within: Duration) -> Vec<OwnedMessage> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, c.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => eprintln!("reader: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// The group's committed offset per partition (-1: none).
pub fn committed(addr: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .create()
        .expect("offsets consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let out = match c.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(got) => {
            let v = (0..partitions)
                .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                })
                .collect();
            // Dropped before the consumer: a live list can hang its close.
            drop(got);
            v
        }
        Err(e) => {
            eprintln!("committed offsets: {e}");
            vec![-1; partitions as usize]
        }
    };
    drop(c);
    out
}

/// The end (high watermark) of each partition.
pub fn ends(addr: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("watermark consumer");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(5))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// Waits until the group's commits on `topic` add up to `total` commands
/// (every partition starts at 0): every command was stored or settled.
/// Returns the offsets per partition.
pub async fn wait_committed(
    addr: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    total: i64,
    within: Duration,
) -> Vec<i64> {
    let deadline = Instant::now() + within;
    loop {
        let (a, g, t) = (addr.to_string(), group.to_string(), topic.to_string());
        let got = tokio::task::spawn_blocking(move || committed(&a, &g, &t, partitions))
            .await
            .expect("offsets task");
        let sum: i64 = got.iter().filter(|o| **o > 0).sum();
        if sum == total || Instant::now() > deadline {
            assert_eq!(sum, total, "group {group} committed {got:?}");
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A header of a consumed message as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

pub fn payload(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
