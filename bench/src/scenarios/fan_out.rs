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

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rumqttc::{Event, EventLoop, Packet, QoS};
use tokio::sync::Mutex;

use super::common::{connected, options, Measured, IDLE_END};
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
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let run = format!("{:x}", std::process::id());
    let topic = format!("fan/{run}/t");
    let filter = if wildcard {
        "#".to_string()
    } else {
        topic.clone()
    };
    let mut receivers = Vec::new();
    for i in 0..subs {
        let (sub, mut ev) = super::common::client(options(b.addr, &format!("fs-{run}-{i}")), 1000);
        connected(&mut ev).await.context("subscriber connect")?;
        sub.subscribe(&filter, qos).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
                break;
            }
        }
        let hist = hist.clone();
        let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        receivers.push(tokio::spawn(async move {
            let r = receive(&mut ev, messages, origin, &mut local).await;
            let _ = hist.lock().await.add(&local);
            drop(sub);
            r
        }));
    }
    let (publ, mut ev) = super::common::client(options(b.addr, &format!("fp-{run}")), 1000);
    connected(&mut ev).await.context("publisher connect")?;
    let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let mut payload = vec![0u8; size.max(8)];
        for _ in 0..messages {
            let now = origin.elapsed().as_micros() as u64;
            payload[..8].copy_from_slice(&now.to_be_bytes());
            if publ
                .publish(&topic, qos, false, payload.clone())
                .await
                .is_err()
            {
                break;
            }
        }
        publ
    });
    let mut delivered = 0;
    let mut last = start;
    for r in receivers {
        let (got, at) = r.await?;
        delivered += got;
        last = last.max(at);
    }
    let publ = sender.await?;
    let _ = publ.disconnect().await;
    driver.abort();
    let expected = subs * messages;
    if delivered < expected && qos != QoS::AtMostOnce {
        bail!(
            "{} delivered {delivered} of {expected} at {qos:?}",
            b.side.name()
        );
    }
    let secs = last.duration_since(start).as_secs_f64().max(1e-6);
    let h = hist.lock().await;
    Ok(Measured {
        value: delivered as f64 / secs,
        unit: "deliveries/s",
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        delivered: Some((delivered, expected)),
    })
}

/// Polls until `expected` publishes arrived or none for [`IDLE_END`]:
/// how many and when the last came; their latencies go to `hist` (the
/// payload's first 8 bytes are the send time in µs since `origin`).
async fn receive(
    ev: &mut EventLoop,
    expected: usize,
    origin: Instant,
    hist: &mut Histogram<u64>,
) -> (usize, Instant) {
    let mut got = 0;
    let mut last_at = Instant::now();
    while got < expected {
        match tokio::time::timeout(IDLE_END, ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got += 1;
                last_at = Instant::now();
                let sent = p
                    .payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                let now = origin.elapsed().as_micros() as u64;
                let _ = hist.record(now.saturating_sub(sent).max(1));
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    (got, last_at)
}
