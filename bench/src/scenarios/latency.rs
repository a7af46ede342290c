//! `p2p-latency`: the p2p pairs at the same offered load on every broker
//! (`--rate` messages per second in all, spread over the pairs), so that
//! latency is compared where both keep up — the issue's "p99 no worse than
//! Mosquitto's at the same offered load". The figure is the p99 latency
//! (publish → delivery, µs); lower is better. A broker that cannot keep up
//! with the rate shows it as a growing latency, not as a lower rate.

use rumqttc::QoS;

use super::common::Measured;
use super::{against_mosquitto, p2p, Better, Variant};
use crate::Args;

pub fn variants(a: &Args) -> Vec<Variant> {
    [
        ("p2p-qos0-latency", QoS::AtMostOnce),
        ("p2p-qos1-latency", QoS::AtLeastOnce),
    ]
    .into_iter()
    .map(|(name, qos)| {
        let (pairs, size) = (a.pairs.max(1), a.size);
        let per_pair = a.rate / pairs as f64;
        // As many messages as a few seconds at the rate.
        let messages = ((per_pair * a.rate_secs) as usize).max(10);
        against_mosquitto(name, Better::Lower, &a.bin, move |b| async move {
            let m = p2p::paced(&b, pairs, messages, size, qos, Some(per_pair)).await?;
            Ok(at_rate(m))
        })
    })
    .collect()
}

/// The p99 latency as the figure (the throughput is the offered rate).
fn at_rate(m: Measured) -> Measured {
    Measured {
        value: m.p99_us.unwrap_or(0) as f64,
        unit: "µs p99",
        ..m
    }
}
