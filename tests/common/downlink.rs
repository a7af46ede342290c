//! Shared by the AMQP downlink tests: one test's command exchange and queue
//! (random names; declared by the gateway's route), publishing commands with
//! publisher confirms, waiting for the gateway's consumer, reading metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use mqbridge::config::{BackendConfig, Config, DownlinkRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::amqp::{backend, suffix};

/// The command exchange and queue of one test.
pub struct Commands {
    pub conn: Connection,
    /// In confirm mode.
    pub channel: Channel,
    pub exchange: String,
    pub queue: String,
}

/// A command's AMQP metadata.
#[derive(Default)]
pub struct Meta<'a> {
    pub headers: &'a [(&'a str, &'a str)],
    /// AMQP timestamp, unix seconds.
    pub timestamp: Option<u64>,
    /// AMQP content-type property.
    pub content_type: Option<&'a str>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Commands {
    pub async fn new(conn: Connection) -> Commands {
        let s = suffix();
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Commands {
            conn,
            channel,
            exchange: format!("mqbridge-test-dlx-{s}"),
            queue: format!("mqbridge-test-dlq-{s}"),
        }
    }

    /// A route consuming this queue (declared and bound to the exchange
    /// with `devices.*.commands` by the gateway), delivering to `topic`.
    pub fn route(&self, name: &str, topic: &str) -> DownlinkRoute {
        let mut r = Commands::route_for(name, &self.queue, topic);
        r.bind_exchange = self.exchange.clone();
        r.binding_key = "devices.*.commands".into();
        r
    }

    /// A route of backend "rabbit" consuming `queue` (declared, not bound).
    pub fn route_for(name: &str, queue: &str, topic: &str) -> DownlinkRoute {
        DownlinkRoute {
            name: name.into(),
            backend: "rabbit".into(),
            topics: vec![],
            group_id: None,
            queue: queue.into(),
            declare_queue: true,
            bind_exchange: String::new(),
            binding_key: String::new(),
            prefetch: 100,
            topic: topic.into(),
            qos: 1,
            retain: false,
            client_id: None,
            create_sessions: false,
            expiry_secs: 0,
            receipt_target: None,
            dead_letter_target: None,
        }
    }

    /// Queue statistics (ready messages, consumers); `None` if it does not exist.
    pub async fn stats(&self) -> Option<(u32, u32)> {
        // A passive declare of a missing queue closes its channel: use a fresh one.
        let ch = self.conn.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .ok()?;
        let _ = ch.close(200, "OK".into()).await;
        Some((q.message_count(), q.consumer_count()))
    }

    /// After the gateway stopped: nothing is left in the queue. With its
    /// consumer gone, any delivery it never acked is back among the ready
    /// messages (while a consumer is attached, the count shows ready ones only).
    pub async fn assert_nothing_unacked(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stats = loop {
            let s = self.stats().await.expect("queue exists");
            if s.1 == 0 || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            stats,
            (0, 0),
            "messages / consumers after the gateway stopped"
        );
    }

    /// Waits until the gateway consumes the queue (so it is bound too).
    pub async fn wait_consumer(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if matches!(self.stats().await, Some((_, c)) if c > 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway never consumed {}",
                self.queue
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes a persistent command; asserts the broker routed it.
    pub async fn publish(&self, key: &str, payload: &[u8], meta: Meta<'_>) {
        let mut table = FieldTable::default();
        for (k, v) in meta.headers {
            table.insert((*k).into(), AMQPValue::LongString(LongString::from(*v)));
        }
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(table);
        if let Some(ts) = meta.timestamp {
            props = props.with_timestamp(ts);
        }
        if let Some(ct) = meta.content_type {
            props = props.with_content_type(ct.into());
        }
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                mandatory,
                payload,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "publish not confirmed");
        assert!(confirm.take_message().is_none(), "command was unroutable");
    }

    /// Publishes persistent commands back to back, then awaits every confirm
    /// (so they arrive at the gateway as fast as the broker passes them on).
    pub async fn publish_burst(&self, key: &str, payloads: &[String]) {
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut confirms = Vec::new();
        for p in payloads {
            let props = BasicProperties::default().with_delivery_mode(2);
            let c = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    key.into(),
                    mandatory,
                    p.as_bytes(),
                    props,
                )
                .await
                .expect("publish");
            confirms.push(c);
        }
        for c in confirms {
            let confirm = c.await.expect("confirm");
            assert!(confirm.is_ack(), "publish not confirmed");
            assert!(confirm.take_message().is_none(), "command was unroutable");
        }
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
        let _ = self.conn.close(200, "OK".into()).await;
    }
}

/// The AMQP backend (no default exchange), no uplink, one downlink route,
/// and the admin endpoint on a free port (for the command counters).
pub fn configure(cfg: &mut Config, route: DownlinkRoute) {
    cfg.bridge.backends = vec![BackendConfig::Amqp(backend("", false))];
    cfg.bridge.uplink = vec![];
    cfg.bridge.downlink = vec![route];
    cfg.admin.listen = "127.0.0.1:0".into();
}

/// `GET /metrics` from the admin endpoint.
pub async fn metrics(admin: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("response");
    body
}

/// `mqbridge_bridge_commands_total{route, result}` (0 when absent).
pub fn commands(text: &str, route: &str, result: &str) -> u64 {
    let (r, res) = (format!("route=\"{route}\""), format!("result=\"{result}\""));
    text.lines()
        .filter(|l| l.starts_with("mqbridge_bridge_commands_total{"))
        .filter(|l| l.contains(&r) && l.contains(&res))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0)
}

/// Waits until the route's `result` counter reaches `n`; returns the metrics.
pub async fn wait_commands(admin: SocketAddr, route: &str, result: &str, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(admin).await;
        let got = commands(&text, route, result);
        if got >= n {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{result} = {got}, expected {n}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
