//! RabbitMQ stopped for a few seconds while devices publish through the
//! gateway: every PUBACKed message must be in the queue afterwards
//! (duplicates allowed and counted), and PUBACKs wait while the broker is
//! down. The test holds the broker alone: stopping it would break other tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::amqp::{broker_alone, connect, gateway_bridge, rabbitmqctl, Fixture};
use crate::common::*;
use mqbridge::config::AckMode;

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

#[tokio::test]
async fn puback_waits_through_a_broker_outage_and_nothing_acked_is_lost() {
    let Some((conn, _turn)) = broker_alone().await else {
        return;
    };
    let fx = Fixture::new(&conn, "devices.#").await;
    drop(conn);
    let exchange = fx.exchange.clone();
    let t = start_with(|cfg| gateway_bridge(cfg, &exchange, AckMode::Backend, 0)).await;
    let devices: Vec<_> = (0..DEVICES)
        .map(|d| tokio::spawn(paced_device(t.addr, format!("out{d}"), PER_DEVICE, GAP)))
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
    let longest = assert_acks_waited(&acks, down_at, OUTAGE);

    // Every acknowledged message is in the queue; count duplicates.
    let fx2 = connect().await.expect("broker back");
    let ch = fx2.create_channel().await.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let want = DEVICES * PER_DEVICE;
    let got = crate::common::amqp::take(&ch, &fx.queue, want * 2, Duration::from_secs(10)).await;
    for d in &got {
        *seen
            .entry(String::from_utf8(d.data.clone()).unwrap())
            .or_default() += 1;
    }
    let (missing, duplicates) = missing_and_duplicates(&seen, "out", DEVICES, PER_DEVICE);
    eprintln!("outage: {want} acknowledged, {} received, {} missing, {duplicates} duplicates, longest PUBACK gap {longest:?}", got.len(), missing.len());
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    t.gw.shutdown().await;
    fx.cleanup().await;
}
