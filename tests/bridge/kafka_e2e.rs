//! Uplink to a real Kafka-protocol broker (tansu) through the gateway,
//! driven by real MQTT clients: every acknowledged message is in the topic,
//! keyed by client id, with its metadata headers, in per-device order.

use std::collections::HashMap;

use crate::common::service::{self, Use};
use crate::common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use rumqttc::{AsyncClient, Event, Packet, QoS};

fn header(m: &rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_from_many_devices_is_keyed_ordered_and_complete() {
    let Some((addr, _turn)) = service::kafka(Use::Shared).await else {
        return;
    };
    let topic = format!("mqbridge-test-e2e-{:016x}", rand::random::<u64>());
    let t = start_with(|cfg| kafka_bridge(cfg, &addr, &topic)).await;
    let (devices, per) = (10, 20);
    let mut tasks = Vec::new();
    for d in 0..devices {
        let addr = t.addr;
        tasks.push(tokio::spawn(async move {
            let id = format!("kdev{d}");
            let (c, mut ev) = AsyncClient::new(opts_v4(addr, &id, true), per + 10);
            for i in 0..per {
                c.publish(
                    format!("devices/{id}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    format!("{id}:{i}"),
                )
                .await
                .unwrap();
            }
            let mut acks = 0;
            while acks < per {
                if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.unwrap() {
                    acks += 1;
                }
            }
        }));
    }
    for task in tasks {
        within(90, task).await.unwrap();
    }
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set(
            "group.id",
            format!("mqbridge-test-{:08x}", rand::random::<u32>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut count = 0;
    within(60, async {
        while count < devices * per {
            let m = consumer.recv().await.unwrap();
            let payload = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            let (id, i) = payload.split_once(':').unwrap();
            assert_eq!(m.key(), Some(id.as_bytes()), "Kafka key is the client id");
            assert_eq!(header(&m, "mqtt_client_id").as_deref(), Some(id));
            assert_eq!(
                header(&m, "mqtt_topic"),
                Some(format!("devices/{id}/telemetry"))
            );
            assert_eq!(header(&m, "mqtt_qos").as_deref(), Some("1"));
            let expected = next.entry(id.to_string()).or_default();
            assert_eq!(
                i.parse::<usize>().unwrap(),
                *expected,
                "per-device order for {id}"
            );
            *expected += 1;
            count += 1;
        }
    })
    .await;
    drop(consumer);
    t.gw.shutdown().await;
}
