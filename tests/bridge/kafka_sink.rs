//! The Kafka sink against a real Kafka-protocol broker (tansu in
//! development): `MQBRIDGE_TEST_KAFKA` (default 127.0.0.1:9092). When no
//! broker answers, the tests are skipped (`service::missing`).
//! Topic and group names are random, so runs do not see each other's data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqbridge::bridge::metrics::{BackendCounters, BridgeMetrics, RouteCounters};
use mqbridge::bridge::{kafka, Envelope, Record, RunningSink, SinkError};
use mqbridge::config::KafkaBackend;
use prometheus_client::registry::Registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::common::kafka::broker;
use crate::common::service;

type Confirm = oneshot::Receiver<Result<(), SinkError>>;

/// The sink's logs, shown for failing tests (RUST_LOG, default warn).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn unique(what: &str) -> String {
    format!("mqbridge-test-{what}-{:016x}", rand::random::<u64>())
}

fn backend(addr: &str, create_topics: bool) -> KafkaBackend {
    KafkaBackend {
        name: "kafka".into(),
        bootstrap_servers: addr.into(),
        compression: "lz4".into(),
        create_topics,
        topic_partitions: 3,
        topic_replication: 1,
        properties: vec!["linger.ms=2".into()],
        ..KafkaBackend::default()
    }
}

fn metrics() -> (RouteCounters, BackendCounters) {
    let m = BridgeMetrics::new(&mut Registry::default());
    (m.route("r"), m.backend("kafka"))
}

fn record(counters: &RouteCounters, client: &str, target: &str, payload: Bytes) -> Record {
    Record {
        route: Arc::from("r"),
        counters: counters.clone(),
        client_id: Arc::from(client),
        target: target.into(),
        key: Some(client.into()),
        payload,
        headers: vec![
            ("mqtt_topic".into(), format!("devices/{client}/telemetry")),
            ("mqtt_client_id".into(), client.into()),
        ],
        content_type: None,
    }
}

async fn send(sink: &RunningSink, record: Record) -> Confirm {
    let (tx, rx) = oneshot::channel();
    sink.handle
        .tx
        .send(Envelope {
            record,
            confirm: Some(tx),
        })
        .await
        .expect("sink is running");
    rx
}

async fn outcome(rx: Confirm, within: Duration) -> Result<(), SinkError> {
    timeout(within, rx)
        .await
        .expect("confirmed in time")
        .expect("sink answered")
}

async fn create_topic(addr: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .expect("create_topics answered");
    for r in results {
        r.expect("topic created");
    }
    tokio::task::spawn_blocking(move || drop(admin))
        .await
        .expect("admin dropped");
}

/// Reads `n` messages of `topic` from the beginning, with a fresh group.
async fn consume(addr: &str, topic: &str, n: usize) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", unique("group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => got.push(m.detach()),
            Ok(Err(e)) => eprintln!("consumer: {e}"),
            Err(_) => panic!("only {} of {n} messages consumed from {topic}", got.len()),
        }
    }
    // Closing a group consumer blocks; keep it off the runtime's threads.
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .expect("consumer dropped");
    got
}

fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_records_from_ten_clients_arrive_in_order() {
    let Some((addr, _turn)) = broker().await else {
        return;
    };
    let topic = unique("order");
    let (route, counters) = metrics();
    let sink = kafka::start(
        &backend(&addr, true),
        vec![topic.clone()],
        counters.clone(),
        64,
        &TaskTracker::new(),
    )
    .await
    .expect("starts");
    let mut confirms = Vec::new();
    for i in 0..200 {
        let client = format!("dev-{}", i % 10);
        let payload = Bytes::from(format!("{client}:{}", i / 10));
        confirms.push(send(&sink, record(&route, &client, &topic, payload)).await);
    }
    for (i, rx) in confirms.into_iter().enumerate() {
        assert_eq!(
            outcome(rx, Duration::from_secs(60)).await,
            Ok(()),
            "record {i}"
        );
    }
    assert_eq!(route.delivered.get(), 200);
    assert_eq!(route.rejected.get(), 0);
    assert_eq!(counters.up.get(), 1);

    let messages = consume(&addr, &topic, 200).await;
    let mut next: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf-8 key");
        let payload = std::str::from_utf8(m.payload().expect("payload")).expect("utf-8 payload");
        let (client, seq) = payload.split_once(':').expect("client:seq");
        assert_eq!(client, key);
        assert_eq!(header(m, "mqtt_client_id").as_deref(), Some(client));
        let expected = next.entry(key.clone()).or_insert(0);
        assert_eq!(
            seq.parse::<usize>().expect("seq"),
            *expected,
            "order of {key}"
        );
        *expected += 1;
    }
    assert_eq!(next.len(), 10);
    assert!(next.values().all(|&n| n == 20), "{next:?}");
    drop(sink.handle);
    timeout(Duration::from_secs(15), sink.task)
        .await
        .expect("sink ends")
        .expect("sink task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_is_rejected_and_the_next_record_still_goes_through() {
    let Some((addr, _turn)) = broker().await else {
        return;
    };
    let good = unique("good");
    let missing = unique("missing");
    create_topic(&addr, &good, 1).await;
    let (route, counters) = metrics();
    let sink = kafka::start(
        &backend(&addr, false),
        vec![good.clone()],
        counters,
        16,
        &TaskTracker::new(),
    )
    .await
    .expect("starts");

    let started = std::time::Instant::now();
    let rx = send(
        &sink,
        record(&route, "dev-a", &missing, Bytes::from_static(b"lost")),
    )
    .await;
    match outcome(rx, Duration::from_secs(30)).await {
        Err(SinkError::Rejected(why)) => assert!(why.contains(&missing), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    eprintln!("rejected after {:?}", started.elapsed());
    let rx = send(
        &sink,
        record(&route, "dev-a", &good, Bytes::from_static(b"kept")),
    )
    .await;
    assert_eq!(outcome(rx, Duration::from_secs(30)).await, Ok(()));
    assert_eq!((route.rejected.get(), route.delivered.get()), (1, 1));

    let messages = consume(&addr, &good, 1).await;
    assert_eq!(messages[0].payload(), Some(&b"kept"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_headers_content_type_and_payload_pass_through() {
    let Some((addr, _turn)) = broker().await else {
        return;
    };
    let topic = unique("headers");
    let (route, counters) = metrics();
    let sink = kafka::start(
        &backend(&addr, true),
        vec![topic.clone()],
        counters,
        16,
        &TaskTracker::new(),
    )
    .await
    .expect("starts");
    let payload = Bytes::from_static(&[0, 159, 146, 150, 255, b'\n']);
    let mut r = record(&route, "dev-h", &topic, payload.clone());
    r.key = Some("custom-key".into());
    r.headers.extend([
        ("mqtt_qos".to_string(), "1".to_string()),
        ("mqtt_retain".to_string(), "false".to_string()),
        ("colour".to_string(), "blue".to_string()),
    ]);
    r.content_type = Some("application/octet-stream".into());
    let expected: Vec<(String, String)> = r
        .headers
        .iter()
        .cloned()
        .chain([(
            "content_type".to_string(),
            "application/octet-stream".to_string(),
        )])
        .collect();
    let rx = send(&sink, r).await;
    assert_eq!(outcome(rx, Duration::from_secs(60)).await, Ok(()));

    // QoS 0: no confirmation asked; it must still arrive, and the sink must
    // finish once its input is closed.
    let mut q0 = record(&route, "dev-h", &topic, Bytes::from_static(b"qos0"));
    q0.key = Some("custom-key".into());
    sink.handle
        .tx
        .send(Envelope {
            record: q0,
            confirm: None,
        })
        .await
        .expect("sink is running");
    drop(sink.handle);
    timeout(Duration::from_secs(15), sink.task)
        .await
        .expect("sink ends")
        .expect("sink task");

    let messages = consume(&addr, &topic, 2).await;
    let m = &messages[0];
    assert_eq!(m.key(), Some(&b"custom-key"[..]));
    assert_eq!(m.payload(), Some(&payload[..]));
    let headers: Vec<(String, String)> = m
        .headers()
        .expect("headers")
        .iter()
        .map(|h| {
            (
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(headers, expected);
    assert_eq!(messages[1].payload(), Some(&b"qos0"[..]));
    assert_eq!(route.delivered.get(), 2);
}

/// A tansu of our own, for a test that restarts it; stopped when dropped
/// (also when the test fails).
struct OwnBroker {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnBroker {
    /// Starts `tansu` with empty in-memory storage on `port`.
    async fn start(tansu: &std::path::Path, port: u16) -> OwnBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(tansu)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts");
        let broker = OwnBroker { child, _dir: dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tansu did not listen on {port}");
    }

    fn stop(self) {}
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address").port()
}

/// The `tansu` binary: `MQBRIDGE_TEST_TANSU`, else on `PATH`, else in
/// `~/.cargo/bin`.
fn tansu_binary() -> Option<std::path::PathBuf> {
    init_logs();
    let candidates: Vec<std::path::PathBuf> = match std::env::var_os("MQBRIDGE_TEST_TANSU") {
        Some(path) => vec![path.into()],
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let home =
                std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin"));
            std::env::split_paths(&path)
                .chain(home)
                .map(|d| d.join("tansu"))
                .collect()
        }
    };
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        service::missing("the tansu binary (MQBRIDGE_TEST_TANSU, PATH)");
    }
    found
}

/// tansu's in-memory storage loses every topic when it restarts. Records
/// sent meanwhile would wait in librdkafka forever (no message timeout);
/// the sink notices the stall: a topic it owns (literal, `create_topics`)
/// is created again and its record delivered, a record for any other
/// topic that is gone is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_that_loses_topics_recreates_owned_and_rejects_others() {
    let Some(tansu) = tansu_binary() else { return };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let broker = OwnBroker::start(&tansu, port).await;
    let (owned, other) = (unique("owned"), unique("other"));
    create_topic(&addr, &other, 1).await;
    let (route, counters) = metrics();
    let cfg = backend(&addr, true);
    let sink = kafka::start(
        &cfg,
        vec![owned.clone()],
        counters.clone(),
        16,
        &TaskTracker::new(),
    )
    .await
    .expect("starts");
    for topic in [&owned, &other] {
        let rx = send(
            &sink,
            record(&route, "dev-r", topic, Bytes::from_static(b"one")),
        )
        .await;
        assert_eq!(
            outcome(rx, Duration::from_secs(30)).await,
            Ok(()),
            "{topic}"
        );
    }

    broker.stop();
    let to_owned = send(
        &sink,
        record(&route, "dev-r", &owned, Bytes::from_static(b"two")),
    )
    .await;
    let to_other = send(
        &sink,
        record(&route, "dev-r", &other, Bytes::from_static(b"two")),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(counters.up.get(), 0, "up while the broker is away");
    let broker = OwnBroker::start(&tansu, port).await;
    let started = std::time::Instant::now();
    assert_eq!(outcome(to_owned, Duration::from_secs(60)).await, Ok(()));
    match outcome(to_other, Duration::from_secs(60)).await {
        Err(SinkError::Rejected(why)) => assert!(why.contains(&other), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    eprintln!("settled {:?} after the restart", started.elapsed());
    assert_eq!(counters.up.get(), 1, "up once the broker is back");
    let messages = consume(&addr, &owned, 1).await;
    assert_eq!(messages[0].payload(), Some(&b"two"[..]));
    drop(sink.handle);
    timeout(Duration::from_secs(15), sink.task)
        .await
        .expect("sink ends")
        .expect("sink task");
    broker.stop();
}

/// A broker that is down when the sink starts does not fail the start; the
/// sink creates its topic and delivers once the broker is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_is_waited_for() {
    let Some(tansu) = tansu_binary() else { return };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let topic = unique("late");
    let (route, counters) = metrics();
    let sink = kafka::start(
        &backend(&addr, true),
        vec![topic.clone()],
        counters.clone(),
        16,
        &TaskTracker::new(),
    )
    .await
    .expect("starts without a broker");
    let rx = send(
        &sink,
        record(&route, "dev-l", &topic, Bytes::from_static(b"early")),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(counters.up.get(), 0);
    let broker = OwnBroker::start(&tansu, port).await;
    assert_eq!(outcome(rx, Duration::from_secs(60)).await, Ok(()));
    assert_eq!(counters.up.get(), 1);
    let messages = consume(&addr, &topic, 1).await;
    assert_eq!(messages[0].payload(), Some(&b"early"[..]));
    broker.stop();
}

/// A configuration librdkafka refuses fails the start (no broker needed).
#[tokio::test]
async fn refused_configuration_fails_the_start() {
    let (_, counters) = metrics();
    let mut cfg = backend("127.0.0.1:1", false);
    cfg.properties.push("no.such.property=1".into());
    let err = kafka::start(&cfg, vec![], counters.clone(), 16, &TaskTracker::new())
        .await
        .err()
        .expect("refused");
    // The librdkafka error naming the property is kept as the source.
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain.push_str(&format!(": {e}"));
        source = e.source();
    }
    assert!(chain.contains("no.such.property"), "{chain}");
    let mut cfg = backend("127.0.0.1:1", false);
    cfg.compression = "brotli".into();
    assert!(
        kafka::start(&cfg, vec![], counters, 16, &TaskTracker::new())
            .await
            .is_err()
    );
}
