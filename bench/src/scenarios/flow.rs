//! What the publish/subscribe scenarios (`p2p`, `p2p-latency`, `fan-out`)
//! share: subscribers that count deliveries and record each one's latency
//! (the payload's first 8 bytes are the send time in µs since `origin`, on
//! this process' clock), publishers that send on schedule or as fast as
//! they can, and the figure from what arrived.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::common::{client, connected, options, Measured, IDLE_END};
use crate::peers::Broker;

pub type SharedHist = Arc<Mutex<Histogram<u64>>>;

/// 1 µs .. 60 s, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Connects `id` (clean or persistent) and subscribes to `filter`, then
/// counts up to `expected` deliveries in a task of its own: how many and
/// when the last came (a receiver that stops early, QoS 0 drops, must not
/// count its wait), latencies added to `hist`.
pub async fn subscriber(
    b: &Broker,
    id: &str,
    clean: bool,
    filter: &str,
    qos: QoS,
    (expected, origin, hist): (usize, Instant, SharedHist),
) -> Result<JoinHandle<(usize, Instant)>> {
    let mut o = options(b.addr, id);
    o.set_clean_session(clean);
    let (sub, mut ev) = client(o, 1000);
    connected(&mut ev).await.context("subscriber connect")?;
    sub.subscribe(filter, qos).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
            break;
        }
    }
    let mut local = histogram()?;
    Ok(tokio::spawn(async move {
        let r = receive(&mut ev, expected, origin, &mut local).await;
        let _ = hist.lock().await.add(&local);
        drop(sub);
        r
    }))
}

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

/// A connected publisher whose event loop runs in a task.
pub async fn publisher(b: &Broker, id: &str) -> Result<(AsyncClient, JoinHandle<()>)> {
    let (publ, mut ev) = client(options(b.addr, id), 1000);
    connected(&mut ev).await.context("publisher connect")?;
    let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    Ok((publ, driver))
}

/// Sends `messages` of `size` bytes to `topic`, stamped with the send time;
/// at `rate` per second on schedule (not after the previous one: a slow
/// broker's queueing shows in its latency) when given.
pub async fn send(
    publ: &AsyncClient,
    topic: &str,
    qos: QoS,
    (messages, size, rate): (usize, usize, Option<f64>),
    origin: Instant,
) {
    let mut payload = vec![0u8; size.max(8)];
    let began = tokio::time::Instant::now();
    for n in 0..messages {
        if let Some(rate) = rate {
            tokio::time::sleep_until(began + Duration::from_secs_f64(n as f64 / rate)).await;
        }
        let now = origin.elapsed().as_micros() as u64;
        payload[..8].copy_from_slice(&now.to_be_bytes());
        if publ
            .publish(topic, qos, false, payload.clone())
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Waits for the receivers; the figure is deliveries per second from
/// `start` to the last delivery. Fails when a QoS 1/2 delivery is missing.
pub async fn tally(
    b: &Broker,
    receivers: Vec<JoinHandle<(usize, Instant)>>,
    (start, expected, qos): (Instant, usize, QoS),
    hist: &SharedHist,
    unit: &'static str,
) -> Result<Measured> {
    let mut delivered = 0;
    let mut last = start;
    for r in receivers {
        let (got, at) = r.await?;
        delivered += got;
        last = last.max(at);
    }
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
        unit,
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        delivered: Some((delivered, expected)),
    })
}
