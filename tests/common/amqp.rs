//! Shared by the AMQP sink tests: reaching the real RabbitMQ (or skipping),
//! a random exchange + queue per test, building records, reading the queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use mqbridge::bridge::metrics::RouteCounters;
use mqbridge::bridge::{Envelope, Record, SinkError};
use mqbridge::config::AmqpBackend;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::common::service::{self, Broker, Turn, Use};

pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn uri() -> String {
    std::env::var("MQBRIDGE_TEST_AMQP_URI").unwrap_or_else(|_| DEFAULT_URI.to_string())
}

/// A connection to the test broker and a shared turn on it, or `None`
/// (after `service::missing`) when it is not reachable.
pub async fn broker() -> Option<(Connection, Turn)> {
    broker_for(Use::Shared).await
}

/// As [`broker`], for a test that stops or blocks the broker: no other test
/// uses it until the turn is dropped.
pub async fn broker_alone() -> Option<(Connection, Turn)> {
    broker_for(Use::Alone).await
}

async fn broker_for(how: Use) -> Option<(Connection, Turn)> {
    let turn = service::turn(Broker::RabbitMq, how).await;
    match connect().await {
        Ok(conn) => Some((conn, turn)),
        Err(why) => {
            service::missing(&format!(
                "RabbitMQ (MQBRIDGE_TEST_AMQP_URI), not reachable: {why}"
            ));
            None
        }
    }
}

/// Connects to the test broker (for a test that already holds its turn).
pub async fn connect() -> Result<Connection, String> {
    // The sink's log lines, shown for failing tests (or with --nocapture).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("mqbridge=debug")
        .try_init();
    let uri = uri();
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&uri, ConnectionProperties::default()),
    );
    match attempt.await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

pub fn suffix() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

pub fn backend(exchange: &str, declare: bool) -> AmqpBackend {
    AmqpBackend {
        name: "rabbit".into(),
        uri: uri().into(),
        exchange: exchange.into(),
        exchange_kind: "topic".into(),
        declare_exchange: declare,
        persistent: true,
        mandatory: true,
        ..AmqpBackend::default()
    }
}

/// A record as the uplink would build it for `client` (routing key given).
pub fn record(
    counters: &RouteCounters,
    client: &str,
    target: &str,
    key: &str,
    payload: String,
) -> Record {
    Record {
        route: Arc::from("r"),
        counters: counters.clone(),
        client_id: Arc::from(client),
        target: target.into(),
        key: Some(key.into()),
        payload: Bytes::from(payload),
        headers: vec![
            ("mqtt_topic".into(), format!("devices/{client}/telemetry")),
            ("mqtt_client_id".into(), client.into()),
            ("mqtt_qos".into(), "1".into()),
        ],
        content_type: Some("text/plain".into()),
    }
}

pub type Answer = oneshot::Receiver<Result<(), SinkError>>;

/// Wraps a QoS 1 record; the receiver gets the sink's answer.
pub fn envelope(record: Record) -> (Envelope, Answer) {
    let (tx, rx) = oneshot::channel();
    (
        Envelope {
            record,
            confirm: Some(tx),
        },
        rx,
    )
}

/// Hands `record` to a sink as QoS 1; the receiver gets the answer.
pub async fn send(tx: &mpsc::Sender<Envelope>, record: Record) -> Answer {
    let (env, rx) = envelope(record);
    tx.send(env).await.expect("sink alive");
    rx
}

/// A topic exchange and a queue bound to it with `binding`, both durable,
/// on a channel of `conn`. Deleted by [`Fixture::cleanup`].
pub struct Fixture {
    pub channel: Channel,
    pub exchange: String,
    pub queue: String,
}

impl Fixture {
    pub async fn new(conn: &Connection, binding: &str) -> Fixture {
        Fixture::with_queue_args(conn, binding, FieldTable::default()).await
    }

    /// Like [`Fixture::new`], the queue declared with `args` (x-max-length ...).
    pub async fn with_queue_args(conn: &Connection, binding: &str, args: FieldTable) -> Fixture {
        let s = suffix();
        let f = Fixture {
            channel: conn.create_channel().await.expect("channel"),
            exchange: format!("mqbridge-test-x-{s}"),
            queue: format!("mqbridge-test-q-{s}"),
        };
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        f.channel
            .exchange_declare(
                f.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("exchange");
        let q = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        f.channel
            .queue_declare(f.queue.as_str().into(), q, args)
            .await
            .expect("queue");
        f.bind(binding).await;
        f
    }

    pub async fn bind(&self, key: &str) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    /// Takes up to `n` messages off the queue, waiting at most `patience`.
    pub async fn take(&self, n: usize, patience: Duration) -> Vec<Delivery> {
        take(&self.channel, &self.queue, n, patience).await
    }

    pub async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

pub async fn take(channel: &Channel, queue: &str, n: usize, patience: Duration) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut got = Vec::new();
    while got.len() < n && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            Some(m) => got.push(m.delivery),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    got
}

/// A header of a received message, as text.
pub fn header(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// Runs `rabbitmqctl` (override with `MQBRIDGE_TEST_RABBITMQCTL`); true on success.
pub fn rabbitmqctl(args: &[&str]) -> bool {
    let cmd = std::env::var("MQBRIDGE_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Blocks publishers with a memory alarm until dropped (even on panic).
pub struct Blocked;

impl Blocked {
    /// Only with the broker held alone: blocking it affects every test.
    pub fn start(turn: &Turn) -> Blocked {
        assert_eq!(turn.how(), Use::Alone, "blocking RabbitMQ needs it alone");
        assert!(
            rabbitmqctl(&["set_vm_memory_high_watermark", "0"]),
            "could not block RabbitMQ"
        );
        Blocked
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

/// The gateway's bridge as in config/rabbitmq.toml, on `exchange`: one AMQP
/// backend and the telemetry route with the given ack mode and give-up time.
pub fn gateway_bridge(
    cfg: &mut mqbridge::config::Config,
    exchange: &str,
    ack: mqbridge::config::AckMode,
    give_up_secs: u64,
) {
    use mqbridge::config::{BackendConfig, UplinkRoute};
    cfg.bridge.backends = vec![BackendConfig::Amqp(AmqpBackend {
        name: "rabbitmq".into(),
        uri: uri().into(),
        exchange: exchange.into(),
        exchange_kind: "topic".into(),
        declare_exchange: false,
        persistent: true,
        mandatory: true,
        ..AmqpBackend::default()
    })];
    cfg.bridge.uplink = vec![UplinkRoute {
        name: "telemetry".into(),
        filter: "devices/+/telemetry/#".into(),
        backend: "rabbitmq".into(),
        target: exchange.into(),
        key: None,
        routing_key: None,
        ack,
        give_up_secs,
        spool_max_bytes: 1 << 30,
    }];
}
