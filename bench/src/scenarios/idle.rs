//! `conn-idle`: resident memory per idle connection, against Mosquitto:
//! clean connections, and persistent sessions that each subscribed to a
//! topic of their own at QoS 1 (a device waiting for its commands). Both
//! brokers have the same per-client limits (`peers`); no messages flow.

use anyhow::{Context, Result};
use rumqttc::{Event, Packet, QoS};

use super::common::{connected, options, plateau, Measured};
use super::{against_mosquitto, Better, Variant};
use crate::peers::Broker;
use crate::Args;

pub fn variants(a: &Args) -> Vec<Variant> {
    [("conn-idle", false), ("conn-idle-persistent", true)]
        .into_iter()
        .map(|(name, persistent)| {
            let n = a.idle;
            against_mosquitto(name, Better::Lower, &a.bin, move |b| async move {
                conn_idle(&b, n, persistent).await
            })
        })
        .collect()
}

/// `n` idle connections, clean or persistent (each subscribed to its own
/// topic): the broker's resident memory per connection (plateau minus
/// before, over `n`).
pub async fn conn_idle(b: &Broker, n: usize, persistent: bool) -> Result<Measured> {
    let before = plateau(b).await?;
    let mut held = Vec::with_capacity(n);
    let run = std::process::id();
    for i in 0..n {
        let mut o = options(b.addr, &format!("idle-{run}-{i}"));
        o.set_clean_session(!persistent);
        let (c, mut ev) = super::common::client(o, 10);
        connected(&mut ev)
            .await
            .with_context(|| format!("connection {i}"))?;
        if persistent {
            c.subscribe(format!("idle/{i}/cmd"), QoS::AtLeastOnce)
                .await?;
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
                    break;
                }
            }
        }
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
