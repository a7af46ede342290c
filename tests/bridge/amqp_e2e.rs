//! Uplink to the real RabbitMQ through the gateway, driven by real MQTT
//! clients: routing keys, headers, per-device order, and a refused message
//! that does not hold up other devices.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::amqp::{broker, gateway_bridge, header, Fixture};
use crate::common::*;
use mqbridge::config::{AckMode, Config};
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

/// The gateway configured like config/rabbitmq.toml, on the fixture's exchange.
fn rabbit(cfg: &mut Config, exchange: &str) {
    gateway_bridge(cfg, exchange, AckMode::Backend, 0);
}

/// Publishes `n` QoS 1 messages and returns the PUBACK reasons in order.
async fn publish_all(
    addr: std::net::SocketAddr,
    id: &str,
    topic: &str,
    n: usize,
) -> Vec<PubAckReason> {
    let (c, mut ev) = AsyncClient::new(opts_v5(addr, id, true, None), n + 10);
    for i in 0..n {
        c.publish(topic, QoS::AtLeastOnce, false, format!("{id}:{i}"))
            .await
            .unwrap();
    }
    let mut reasons = Vec::new();
    while reasons.len() < n {
        if let Event::Incoming(P5::PubAck(a)) = ev.poll().await.unwrap() {
            reasons.push(a.reason);
        }
    }
    reasons
}

#[tokio::test]
async fn telemetry_from_many_devices_arrives_in_order_with_headers() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let fx = Fixture::new(&conn, "devices.#").await;
    let t = start_with(|cfg| rabbit(cfg, &fx.exchange)).await;
    let (devices, per) = (10, 30);
    let mut tasks = Vec::new();
    for d in 0..devices {
        let addr = t.addr;
        tasks.push(tokio::spawn(async move {
            let id = format!("dev{d}");
            publish_all(addr, &id, &format!("devices/{id}/telemetry"), per).await
        }));
    }
    for task in tasks {
        let reasons = within(60, task).await.unwrap();
        assert!(
            reasons.iter().all(|r| *r == PubAckReason::Success),
            "{reasons:?}"
        );
    }
    let got = fx.take(devices * per, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        devices * per,
        "every acknowledged message is in the queue"
    );
    let mut next: HashMap<String, usize> = HashMap::new();
    for d in &got {
        let payload = String::from_utf8(d.data.clone()).unwrap();
        let (id, i) = payload.split_once(':').unwrap();
        assert_eq!(d.routing_key.as_str(), format!("devices.{id}.telemetry"));
        assert_eq!(header(d, "mqtt_client_id").as_deref(), Some(id));
        assert_eq!(
            header(d, "mqtt_topic"),
            Some(format!("devices/{id}/telemetry"))
        );
        let expected = next.entry(id.to_string()).or_default();
        assert_eq!(
            i.parse::<usize>().unwrap(),
            *expected,
            "per-device order for {id}"
        );
        *expected += 1;
    }
    t.gw.shutdown().await;
    fx.cleanup().await;
}

/// An unroutable message (mandatory, no binding for its routing key) is
/// answered 0x83 to its 5.0 device; another device's messages go through.
#[tokio::test]
async fn unroutable_message_is_refused_and_others_continue() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let fx = Fixture::new(&conn, "devices.good.#").await;
    let t = start_with(|cfg| rabbit(cfg, &fx.exchange)).await;
    let bad = within(30, publish_all(t.addr, "bad", "devices/bad/telemetry", 3)).await;
    assert!(
        bad.iter()
            .all(|r| *r == PubAckReason::ImplementationSpecificError),
        "{bad:?}"
    );
    let good = within(30, publish_all(t.addr, "good", "devices/good/telemetry", 5)).await;
    assert!(good.iter().all(|r| *r == PubAckReason::Success), "{good:?}");
    let got = fx.take(5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
    t.gw.shutdown().await;
    fx.cleanup().await;
}
