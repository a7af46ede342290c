//! `give_up_secs`: while RabbitMQ blocks publishers (memory alarm), a 5.0
//! device's PUBACK comes after the give-up time with reason 0x80 instead of
//! a success; a 3.1.1 device is disconnected without the PUBACK, so it
//! resends. One test per file: it blocks the broker for everyone.

mod bridge_amqp_support;
mod common;

use std::time::{Duration, Instant};

use bridge_amqp_support::{broker, gateway_bridge, Blocked, Fixture};
use common::*;
use mqbridge::config::AckMode;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_device_is_told_when_the_backend_does_not_confirm_in_time() {
    let Some(conn) = broker().await else { return };
    let fx = Fixture::new(&conn, "devices.#").await;
    let exchange = fx.exchange.clone();
    let t = start_with(|cfg| gateway_bridge(cfg, &exchange, AckMode::Backend, 1)).await;
    let (c, mut ev) = AsyncClient::new(opts_v5(t.addr, "giveup", true, None), 10);
    // Connected and confirmed once while the broker is healthy.
    c.publish("devices/giveup/telemetry", QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    let first = within(20, async {
        loop {
            if let Event::Incoming(P5::PubAck(a)) = ev.poll().await.unwrap() {
                return a.reason;
            }
        }
    })
    .await;
    assert_eq!(first, PubAckReason::Success);

    let guard = Blocked::start();
    let sent = Instant::now();
    c.publish("devices/giveup/telemetry", QoS::AtLeastOnce, false, "late")
        .await
        .unwrap();
    let reason = within(20, async {
        loop {
            if let Event::Incoming(P5::PubAck(a)) = ev.poll().await.unwrap() {
                return a.reason;
            }
        }
    })
    .await;
    let waited = sent.elapsed();
    drop(guard);
    assert_eq!(
        reason,
        PubAckReason::UnspecifiedError,
        "not confirmed in time: 0x80"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "answered after the give-up time, not before ({waited:?})"
    );
    t.gw.shutdown().await;
    fx.cleanup().await;
}
