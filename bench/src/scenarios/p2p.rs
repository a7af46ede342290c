//! `p2p`: N publisher→subscriber pairs on their own topics, QoS 0 and 1,
//! against Mosquitto. `p2p-persistent-qos1` is the store's row: QoS 1 with
//! persistent subscribers (clean session false) that stay connected;
//! mqbridge stores every message (fsync batched) where Mosquitto keeps it in
//! memory (`persistence false`); the target is within 2× of it.
//! Equal on both sides: payload size, count, QoS, per-client queue and
//! in-flight window, the client library.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rumqttc::{Event, Packet, QoS};
use tokio::sync::Mutex;

use super::common::{connected, options, Measured, IDLE_END};
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
    paced_with(b, pairs, messages, size, qos, None, persistent).await
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
    paced_with(b, pairs, messages, size, qos, rate, false).await
}

async fn paced_with(
    b: &Broker,
    pairs: usize,
    messages: usize,
    size: usize,
    qos: QoS,
    rate: Option<f64>,
    persistent: bool,
) -> Result<Measured> {
    let origin = Instant::now();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let run = format!(
        "{:x}",
        origin.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let mut o = options(b.addr, &format!("bs-{run}-{i}"));
        o.set_clean_session(!persistent);
        let (sub, mut ev) = super::common::client(o, 1000);
        connected(&mut ev).await.context("subscriber connect")?;
        sub.subscribe(format!("bench/{run}/{i}"), qos).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
                break;
            }
        }
        let hist = hist.clone();
        receivers.push(tokio::spawn(async move {
            let mut got = 0;
            let mut last_at = Instant::now();
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            while got < messages {
                match tokio::time::timeout(IDLE_END, ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        got += 1;
                        last_at = Instant::now();
                        let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                        let now = origin.elapsed().as_micros() as u64;
                        let _ = local.record(now.saturating_sub(sent).max(1));
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let _ = hist.lock().await.add(&local);
            drop(sub);
            // The time of the last delivery: a receiver that stops early
            // (QoS 0 drops) must not count its wait.
            (got, last_at)
        }));
    }
    let start = Instant::now();
    let mut senders = Vec::new();
    for i in 0..pairs {
        let (publ, mut ev) = super::common::client(options(b.addr, &format!("bp-{run}-{i}")), 1000);
        connected(&mut ev).await.context("publisher connect")?;
        let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        let topic = format!("bench/{run}/{i}");
        senders.push(tokio::spawn(async move {
            let mut payload = vec![0u8; size.max(8)];
            let began = tokio::time::Instant::now();
            for n in 0..messages {
                if let Some(rate) = rate {
                    // Sent on schedule, not after the previous one: a slow
                    // broker's queueing shows in its latency.
                    let due = began + std::time::Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due).await;
                }
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
            (publ, driver)
        }));
    }
    let mut delivered = 0;
    let mut last = start;
    for r in receivers {
        let (got, at) = r.await?;
        delivered += got;
        last = last.max(at);
    }
    for s in senders {
        let (publ, driver) = s.await?;
        let _ = publ.disconnect().await;
        driver.abort();
    }
    let expected = pairs * messages;
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
        unit: "msg/s",
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        delivered: Some((delivered, expected)),
    })
}
