//! `fan-out`: one publisher, N subscribers (default 50) all receiving every
//! message, against Mosquitto. Variants: the subscribers on the publisher's
//! exact topic at QoS 0 and 1, and on `#` at QoS 1 (the wildcard path of
//! the subscription tree). Equal on both sides: payload size (default 100
//! bytes, first 8 the send time), message count, QoS of the publish and of
//! the subscriptions, the per-client queue and in-flight window
//! (`peers::QUEUED`, `peers::INFLIGHT`), the client library. Throughput is
//! deliveries per second counted at the subscribers, from the first publish
//! to the last delivery; latency is publish→delivery.

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
        ("fan-out-qos0", QoS::AtMostOnce, false),
        ("fan-out-qos1", QoS::AtLeastOnce, false),
        ("fan-out-wild-qos1", QoS::AtLeastOnce, true),
    ]
    .into_iter()
    .map(|(name, qos, wildcard)| {
        let (subs, messages, size) = (a.subscribers, a.fanout_messages, a.size);
        against_mosquitto(name, Better::Higher, &a.bin, move |b| async move {
            fan_out(&b, subs, messages, size, qos, wildcard).await
        })
    })
    .collect()
}

/// One publisher sends `messages` of `size` bytes at `qos` to one topic;
/// `subs` subscribers of that topic (or of `#`) each count every delivery.
pub async fn fan_out(
    b: &Broker,
    subs: usize,
    messages: usize,
    size: usize,
    qos: QoS,
    wildcard: bool,
) -> Result<Measured> {
    let origin = Instant::now();
    let hist: SharedHist = Arc::new(Mutex::new(flow::histogram()?));
    let run = format!("{:x}", std::process::id());
    let topic = format!("fan/{run}/t");
    let filter = if wildcard { "#" } else { topic.as_str() };
    let mut receivers = Vec::new();
    for i in 0..subs {
        let counting = (messages, origin, hist.clone());
        let id = format!("fs-{run}-{i}");
        receivers.push(flow::subscriber(b, &id, true, filter, qos, counting).await?);
    }
    let (publ, driver) = flow::publisher(b, &format!("fp-{run}")).await?;
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        flow::send(&publ, &topic, qos, (messages, size, None), origin).await;
        publ
    });
    let expected = subs * messages;
    let m = flow::tally(b, receivers, (start, expected, qos), &hist, "deliveries/s").await;
    let publ = sender.await?;
    let _ = publ.disconnect().await;
    driver.abort();
    m
}
