//! The scenarios (names as in the Open MQTT Benchmark Suite). Each runs
//! against one broker and returns what it measured; the caller alternates
//! brokers and rounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;

use crate::peers::Broker;

/// A receiver that gets nothing for this long has all it will get.
const IDLE_END: Duration = Duration::from_secs(5);

/// What one run of a scenario measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    /// Messages per second (p2p), or KiB per connection (conn-idle).
    pub value: f64,
    pub unit: &'static str,
    /// p50 / p99 latency in µs (p2p only).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// p2p: messages delivered of those sent (QoS 0 may drop).
    pub delivered: Option<(usize, usize)>,
}

fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60))
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Polls until CONNACK.
async fn connected(ev: &mut EventLoop) -> Result<()> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = ev.poll().await? {
            return Ok(());
        }
    }
}

/// `pairs` publisher→subscriber pairs on their own topics, `messages` each
/// of `size` bytes at `qos`; throughput from the first publish to the last
/// delivery, latency from each publish to its delivery (the payload carries
/// the send time of this process' clock).
pub async fn p2p(
    b: &Broker,
    pairs: usize,
    messages: usize,
    size: usize,
    qos: QoS,
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
        let (sub, mut ev) = AsyncClient::new(options(b.addr, &format!("bs-{run}-{i}")), 1000);
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
        let (publ, mut ev) = AsyncClient::new(options(b.addr, &format!("bp-{run}-{i}")), 1000);
        connected(&mut ev).await.context("publisher connect")?;
        let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        let topic = format!("bench/{run}/{i}");
        senders.push(tokio::spawn(async move {
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
            b.kind.name()
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

/// `n` idle clean connections: the broker's resident memory per connection
/// (plateau minus before, over `n`).
pub async fn conn_idle(b: &Broker, n: usize) -> Result<Measured> {
    let before = plateau(b).await?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let (c, mut ev) = AsyncClient::new(options(b.addr, &format!("idle-{i}")), 10);
        connected(&mut ev)
            .await
            .with_context(|| format!("connection {i}"))?;
        let driver = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        held.push((c, driver));
    }
    let after = plateau(b).await?;
    for (c, driver) in held {
        let _ = c.disconnect().await;
        driver.abort();
    }
    Ok(Measured {
        value: after.saturating_sub(before) as f64 / n.max(1) as f64,
        unit: "KiB/conn",
        p50_us: None,
        p99_us: None,
        delivered: None,
    })
}

/// RSS once three samples 300 ms apart agree within 1 %, or after 5 s.
async fn plateau(b: &Broker) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut samples = vec![b.rss_kib()?];
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        samples.push(b.rss_kib()?);
        let last3 = &samples[samples.len().saturating_sub(3)..];
        let (lo, hi) = (last3.iter().min(), last3.iter().max());
        if let (true, Some(lo), Some(hi)) = (last3.len() == 3, lo, hi) {
            if (hi - lo) * 100 <= *hi || Instant::now() > deadline {
                return Ok(*hi);
            }
        }
    }
}
