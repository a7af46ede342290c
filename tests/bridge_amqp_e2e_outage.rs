//! RabbitMQ stopped for a few seconds while devices publish through the
//! gateway: every PUBACKed message must be in the queue afterwards
//! (duplicates allowed and counted), and PUBACKs wait while the broker is
//! down. One test per file: stopping the broker must not overlap other tests.

mod bridge_amqp_support;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bridge_amqp_support::{broker, gateway_bridge, rabbitmqctl, Fixture};
use common::*;
use mqbridge::config::AckMode;
use rumqttc::{AsyncClient, Event, Packet, QoS};

const DEVICES: usize = 3;
const PER_DEVICE: usize = 80;
const GAP: Duration = Duration::from_millis(40);
const OUTAGE: Duration = Duration::from_secs(4);

/// Restarts the broker's app even if the test panics half way.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
    }
}

/// One device: publishes PER_DEVICE QoS 1 messages, returns when each was acknowledged.
async fn device(addr: std::net::SocketAddr, d: usize) -> Vec<Instant> {
    let id = format!("out{d}");
    let (c, mut ev) = AsyncClient::new(opts_v4(addr, &id, true), PER_DEVICE + 10);
    let topic = format!("devices/{id}/telemetry");
    tokio::spawn(async move {
        for i in 0..PER_DEVICE {
            c.publish(topic.as_str(), QoS::AtLeastOnce, false, format!("{id}:{i}"))
                .await
                .unwrap();
            tokio::time::sleep(GAP).await;
        }
    });
    let mut acked = Vec::new();
    while acked.len() < PER_DEVICE {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked.push(Instant::now()),
            Ok(_) => {}
            Err(e) => panic!("device connection failed: {e}"),
        }
    }
    acked
}

#[tokio::test]
async fn puback_waits_through_a_broker_outage_and_nothing_acked_is_lost() {
    let Some(conn) = broker().await else { return };
    let fx = Fixture::new(&conn, "devices.#").await;
    drop(conn);
    let exchange = fx.exchange.clone();
    let t = start_with(|cfg| gateway_bridge(cfg, &exchange, AckMode::Backend, 0)).await;
    let devices: Vec<_> = (0..DEVICES)
        .map(|d| tokio::spawn(device(t.addr, d)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let guard = Restart;
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app failed");
    let down_at = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    assert!(rabbitmqctl(&["start_app"]), "rabbitmqctl start_app failed");
    drop(guard);
    let mut acks = Vec::new();
    for d in devices {
        acks.push(within(120, d).await.unwrap());
    }
    // PUBACKs waited: some device saw a gap of most of the outage between two acks.
    let longest = acks
        .iter()
        .flat_map(|a| a.windows(2).map(|w| w[1] - w[0]))
        .max()
        .unwrap_or_default();
    assert!(
        longest >= OUTAGE / 2,
        "no PUBACK was held back during the outage (longest gap {longest:?})"
    );
    assert!(
        acks.iter().flatten().any(|a| *a > down_at + OUTAGE),
        "acks resumed after the outage"
    );

    // Every acknowledged message is in the queue; count duplicates.
    let fx2 = bridge_amqp_support::broker().await.expect("broker back");
    let ch = fx2.create_channel().await.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let want = DEVICES * PER_DEVICE;
    let got = bridge_amqp_support::take(&ch, &fx.queue, want * 2, Duration::from_secs(10)).await;
    for d in &got {
        *seen
            .entry(String::from_utf8(d.data.clone()).unwrap())
            .or_default() += 1;
    }
    let missing: Vec<String> = (0..DEVICES)
        .flat_map(|d| (0..PER_DEVICE).map(move |i| format!("out{d}:{i}")))
        .filter(|id| !seen.contains_key(id))
        .collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("outage: {want} acknowledged, {} received, {} missing, {duplicates} duplicates, longest PUBACK gap {longest:?}", got.len(), missing.len());
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    t.gw.shutdown().await;
    fx.cleanup().await;
}
