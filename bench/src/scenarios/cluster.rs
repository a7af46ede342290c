//! `cluster-p2p`: what cluster mode costs per message. The p2p pairs at QoS
//! 1 (clean and persistent subscribers), with the publishers on node 0 and
//! the subscribers on node 1 of three mqbridge processes in cluster mode on
//! the harness' Kafka (tansu), against the same pairs on one single-node
//! mqbridge. Two figures per variant: messages per second, and the CPU time
//! all the gateway processes used per message delivered (the nodes' sum;
//! the Kafka broker's own CPU is not counted).

use anyhow::Result;
use rumqttc::QoS;

use super::common::Measured;
use super::{p2p, Better, Variant};
use crate::peers::{Broker, Side};
use crate::Args;

pub fn variants(a: &Args) -> Vec<Variant> {
    let mut out = Vec::new();
    for (name, persistent) in [
        ("cluster-p2p-qos1", false),
        ("cluster-p2p-persistent-qos1", true),
    ] {
        for per_cpu in [false, true] {
            let (bin, kafka) = (a.bin.clone(), a.kafka.clone());
            let (pairs, messages, size) = (a.pairs, a.messages, a.size);
            let (name, better) = if per_cpu {
                (format!("{name}-cpu"), Better::Lower)
            } else {
                (name.to_owned(), Better::Higher)
            };
            let sides = vec![Side::MqbridgeCluster, Side::Mqbridge];
            out.push(Variant::new(name, sides, better, move |side| {
                let (bin, kafka) = (bin.clone(), kafka.clone());
                async move {
                    let nodes = match side {
                        Side::MqbridgeCluster => start_cluster(&bin, &kafka)?,
                        _ => vec![Broker::start(Side::Mqbridge, &bin)?],
                    };
                    let (to, from) = (&nodes[0], nodes.get(1).unwrap_or(&nodes[0]));
                    let before = cpu_secs(&nodes)?;
                    let m = p2p::across(
                        (to, from),
                        pairs,
                        messages,
                        size,
                        QoS::AtLeastOnce,
                        None,
                        persistent,
                    )
                    .await?;
                    let used = cpu_secs(&nodes)? - before;
                    if !per_cpu {
                        return Ok(m);
                    }
                    let delivered = m.delivered.map_or(1, |(d, _)| d.max(1));
                    Ok(Measured {
                        value: used * 1e6 / delivered as f64,
                        unit: "µs CPU/msg",
                        p50_us: None,
                        p99_us: None,
                        delivered: m.delivered,
                    })
                }
            }));
        }
    }
    out
}

fn cpu_secs(nodes: &[Broker]) -> Result<f64> {
    nodes.iter().map(Broker::cpu_secs).sum()
}

/// Three nodes of a new cluster (topics of their own) on `kafka`.
fn start_cluster(bin: &std::path::Path, kafka: &str) -> Result<Vec<Broker>> {
    // Unique per run: the time and this process.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("bench-{:x}-{}.", nanos, std::process::id());
    (0..3)
        .map(|i| {
            let toml = format!(
                r#"
[cluster]
enabled = true
node_id = "bench-node-{i}"
backend = "kafka"
topic_prefix = "{prefix}"
partitions = 4
[bridge]
uplink = []
[[bridge.backends]]
kind = "kafka"
name = "kafka"
bootstrap_servers = "{kafka}"
"#
            );
            Broker::start_with(Side::Mqbridge, bin, Some(&toml))
        })
        .collect()
}
