//! `give_up_secs`: while RabbitMQ blocks publishers (memory alarm), a 5.0
//! device's PUBACK comes after the give-up time with reason 0x80 instead of
//! a success; a 3.1.1 device is disconnected without the PUBACK, so it
//! resends. Blocking the broker affects everyone: each test holds it alone.

use std::time::{Duration, Instant};

use crate::common::amqp::{broker_alone, gateway_bridge, Blocked, Fixture};
use crate::common::*;
use mqbridge::config::AckMode;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_device_is_told_when_the_backend_does_not_confirm_in_time() {
    let Some((conn, turn)) = broker_alone().await else {
        return;
    };
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

    let guard = Blocked::start(&turn);
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

/// A 3.1.1 PUBACK has no reason code: on give-up the device is disconnected
/// without the PUBACK (so it resends), never told "delivered".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_device_is_disconnected_without_puback_on_give_up() {
    use rumqttc::{AsyncClient as V4Client, Event as V4Event, Packet as V4Packet, QoS as V4QoS};
    let Some((conn, turn)) = broker_alone().await else {
        return;
    };
    let fx = Fixture::new(&conn, "devices.#").await;
    let exchange = fx.exchange.clone();
    let t = start_with(|cfg| {
        gateway_bridge(cfg, &exchange, AckMode::Backend, 1);
        cfg.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let (c, mut ev) = V4Client::new(opts_v4(t.addr, "giveup4", true), 10);
    c.publish("devices/giveup4/telemetry", V4QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    within(20, async {
        while !matches!(
            ev.poll().await.unwrap(),
            V4Event::Incoming(V4Packet::PubAck(_))
        ) {}
    })
    .await;

    let guard = Blocked::start(&turn);
    let sent = Instant::now();
    c.publish(
        "devices/giveup4/telemetry",
        V4QoS::AtLeastOnce,
        false,
        "late",
    )
    .await
    .unwrap();
    // The gateway's answer: a PUBACK (wrong) or the end of the connection.
    let end = within(20, async {
        loop {
            match ev.poll().await {
                Ok(V4Event::Incoming(V4Packet::PubAck(a))) => return Ok(a),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let waited = sent.elapsed();
    drop(guard);
    eprintln!("answer after {waited:?}: {end:?}");
    assert!(end.is_err(), "PUBACK for an unconfirmed message: {end:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "disconnected after the give-up time, not before ({waited:?})"
    );
    // Counted as what it is, not as the device's protocol error.
    let closed = r#"mqbridge_mqtt_closed_unacknowledged_total{reason="backend_gave_up"}"#;
    assert_eq!(crate::common::scrape(&t, closed).await, Some(1.0));
    let blamed = r#"mqbridge_mqtt_protocol_errors_total{listener="tcp",reason="protocol_error"}"#;
    assert_eq!(crate::common::scrape(&t, blamed).await.unwrap_or(0.0), 0.0);
    t.gw.shutdown().await;
    fx.cleanup().await;
}
