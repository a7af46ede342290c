//! `p2p`: N publisher→subscriber pairs on their own topics, QoS 0 and 1,
//! against Mosquitto. `p2p-persistent-qos1` is the store's row: QoS 1 with
//! persistent subscribers (clean session false) that stay connected;
//! mqbridge stores every message (fsync batched) where Mosquitto keeps it in
//! memory (`persistence false`); the target is within 2× of it.
//! Equal on both sides: payload size, count, QoS, per-client queue and
//! in-flight window, the client library.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use rumqttc::QoS;
use tokio::sync::Mutex;

use super::common::Measured;
use super::flow::{self, SharedHist};
use super::{against_mosquitto, Better, Variant};
use crate::peers::Broker;
use crate::Args;

pub fn variants(a: &Args) -> Vec<Variant> {
    [
        ("p2p-qos0", QoS::AtMostOnce, false),
        ("p2p-qos1", QoS::AtLeastOnce, false),
        ("p2p-persistent-qos1", QoS::AtLeastOnce, true),
    ]
    .into_iter()
    .map(|(name, qos, persistent)| {
        let (pairs, messages, size) = (a.pairs, a.messages, a.size);
        against_mosquitto(name, Better::Higher, &a.bin, move |b| async move {
            p2p(&b, pairs, messages, size, qos, persistent).await
        })
    })
    .collect()
}

/// `pairs` publisher→subscriber pairs on their own topics, `messages` each
/// of `size` bytes at `qos`; throughput from the first publish to the last
/// delivery, latency from each publish to its delivery (the payload carries
/// the send time of this process' clock). `persistent`: the subscribers
/// connect with clean session false.
pub async fn p2p(
    b: &Broker,
    pairs: usize,
    messages: usize,
    size: usize,
    qos: QoS,
    persistent: bool,
) -> Result<Measured> {
    across((b, b), pairs, messages, size, qos, None, persistent).await
}

/// [`p2p`], each publisher offering `rate` messages per second when given
/// (an open-loop load: latency is then compared at the same offered load,
/// not at each broker's own saturation), as fast as it can otherwise.
pub async fn paced(
    b: &Broker,
    pairs: usize,
    messages: usize,
    size: usize,
    qos: QoS,
    rate: Option<f64>,
) -> Result<Measured> {
    across((b, b), pairs, messages, size, qos, rate, false).await
}

/// [`paced`] with the publishers on one broker and the subscribers on
/// another (two nodes of a cluster).
pub async fn across(
    (publish_to, b): (&Broker, &Broker),
    pairs: usize,
    messages: usize,
    size: usize,
    qos: QoS,
    rate: Option<f64>,
    persistent: bool,
) -> Result<Measured> {
    let origin = Instant::now();
    let hist: SharedHist = Arc::new(Mutex::new(flow::histogram()?));
    let run = format!(
        "{:x}",
        origin.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let id = format!("bs-{run}-{i}");
        let counting = (messages, origin, hist.clone());
        let topic = format!("bench/{run}/{i}");
        receivers.push(flow::subscriber(b, &id, !persistent, &topic, qos, counting).await?);
    }
    let start = Instant::now();
    let mut senders = Vec::new();
    for i in 0..pairs {
        let (publ, driver) = flow::publisher(publish_to, &format!("bp-{run}-{i}")).await?;
        let topic = format!("bench/{run}/{i}");
        senders.push(tokio::spawn(async move {
            flow::send(&publ, &topic, qos, (messages, size, rate), origin).await;
            (publ, driver)
        }));
    }
    let m = flow::tally(b, receivers, (start, pairs * messages, qos), &hist, "msg/s").await;
    for s in senders {
        let (publ, driver) = s.await?;
        let _ = publ.disconnect().await;
        driver.abort();
    }
    m
}
