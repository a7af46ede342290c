//! The AMQP sink over TLS against a real, TLS-only RabbitMQ node that
//! requires client certificates. `scripts/test.sh` makes the CA and the
//! certificates with openssl, starts that node beside the plain one, and
//! exports `MQBRIDGE_TEST_AMQPS_URI` and `MQBRIDGE_TEST_AMQPS_DIR` (holding
//! `ca.pem`, `client.pem`, `client.key`). Without them the test is skipped
//! with a note (failed when CI=true).

use std::path::PathBuf;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mqbridge::bridge::metrics::BridgeMetrics;
use mqbridge::bridge::{amqp, SinkError};
use mqbridge::config::AmqpBackend;
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;

use crate::common::amqp::{envelope, record, suffix};
use crate::common::service;

const PATIENCE: Duration = Duration::from_secs(20);

struct Node {
    uri: String,
    dir: PathBuf,
}

fn node() -> Option<Node> {
    match (
        std::env::var("MQBRIDGE_TEST_AMQPS_URI"),
        std::env::var("MQBRIDGE_TEST_AMQPS_DIR"),
    ) {
        (Ok(uri), Ok(dir)) => Some(Node {
            uri,
            dir: dir.into(),
        }),
        _ => {
            service::missing(
                "the TLS RabbitMQ node (MQBRIDGE_TEST_AMQPS_URI / _DIR, started by scripts/test.sh)",
            );
            None
        }
    }
}

impl Node {
    fn backend(&self, client_certificate: bool) -> AmqpBackend {
        AmqpBackend {
            name: "rabbit-tls".into(),
            uri: self.uri.as_str().into(),
            tls_ca_file: Some(self.dir.join("ca.pem")),
            tls_cert_file: client_certificate.then(|| self.dir.join("client.pem")),
            tls_key_file: client_certificate.then(|| self.dir.join("client.key")),
            exchange: "amq.topic".into(),
            ..AmqpBackend::default()
        }
    }

    /// The test's own connection, with the client certificate.
    async fn connect(&self) -> Connection {
        let read = |f: &str| std::fs::read(self.dir.join(f)).expect("certificate file");
        let tls = OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: read("client.pem"),
                key: read("client.key"),
            }),
            cert_chain: Some(String::from_utf8(read("ca.pem")).expect("PEM")),
        };
        let runtime = lapin::runtime::default_runtime().expect("runtime");
        let uri = self.uri.parse().expect("uri");
        Connection::connect_uri_with_config(uri, ConnectionProperties::default(), tls, runtime)
            .await
            .expect("the test connects over TLS")
    }
}

/// A record published over amqps with the client certificate is confirmed
/// and lands in a queue; without the certificate the node refuses the
/// connection, and nothing is confirmed.
#[tokio::test]
async fn uplink_over_tls_with_a_client_certificate() {
    let Some(node) = node() else { return };
    let conn = node.connect().await;
    let channel = conn.create_channel().await.expect("channel");
    let (queue, key) = (
        format!("mqbridge-tls-{}", suffix()),
        format!("tls.{}", suffix()),
    );
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
        .await
        .expect("declare");
    channel
        .queue_bind(
            queue.as_str().into(),
            "amq.topic".into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let metrics = BridgeMetrics::new(&mut Registry::default());
    let route = metrics.route("r");
    let sink = amqp::start(
        &node.backend(true),
        metrics.backend("tls"),
        8,
        &TaskTracker::new(),
    )
    .await
    .expect("start");
    let (env, rx) = envelope(record(&route, "dev-1", "", &key, "over tls".into()));
    sink.handle.tx.send(env).await.expect("sink alive");
    let answer = tokio::time::timeout(PATIENCE, rx).await.expect("answered");
    assert_eq!(answer.expect("confirm"), Ok(()));
    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the message is in the queue");
    assert_eq!(got.delivery.data, b"over tls");

    // The same node without a client certificate: no connection, so the
    // record waits and is answered `Closed` when the sink stops.
    let without = metrics.backend("tls-no-cert");
    let sink = amqp::start(
        &node.backend(false),
        without.clone(),
        8,
        &TaskTracker::new(),
    )
    .await
    .expect("start");
    let (env, rx) = envelope(record(&route, "dev-1", "", &key, "refused".into()));
    sink.handle.tx.send(env).await.expect("sink alive");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        without.up.get(),
        0,
        "connected without a client certificate"
    );
    assert!(
        without.retries.get() >= 1,
        "no connection attempt was refused"
    );
    drop(sink.handle);
    let answer = tokio::time::timeout(PATIENCE, rx).await.expect("answered");
    assert_eq!(answer.expect("answer"), Err(SinkError::Closed));
    let left = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get");
    assert!(
        left.is_none(),
        "a message arrived without a client certificate"
    );
}
