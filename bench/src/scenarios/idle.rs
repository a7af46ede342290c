//! `conn-idle`: resident memory per idle connection, against Mosquitto.

use anyhow::{Context, Result};
use rumqttc::AsyncClient;

use super::common::{connected, options, plateau, Measured};
use super::{Better, Variant};
use crate::peers::{Broker, Side};
use crate::Args;

pub fn variants(a: &Args) -> Vec<Variant> {
    let (bin, n) = (a.bin.clone(), a.idle);
    vec![Variant {
        name: "conn-idle".to_string(),
        sides: vec![Side::Mqbridge, Side::Mosquitto],
        better: Better::Lower,
        run: Box::new(move |side| {
            let bin = bin.clone();
            Box::pin(async move {
                let broker = Broker::start(side, &bin)?;
                conn_idle(&broker, n).await
            })
        }),
    }]
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
