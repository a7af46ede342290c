//! The scenarios (names as in the Open MQTT Benchmark Suite). Each module
//! offers one or more [`Variant`]s: a name, the sides it compares (mqbridge
//! first, then its peers) and how to run one side once. `main` alternates
//! the sides round by round and reports medians and ratios.

mod backends;
mod cluster;
pub mod common;
mod downlink;
mod fan_in;
mod fan_out;
mod flow;
mod idle;
mod latency;
mod offline_drain;
mod p2p;
mod restart;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use anyhow::Result;

pub use common::Measured;
pub use offline_drain::raise_fd_limit;

use crate::peers::{Broker, Side};
use crate::Args;

/// One side's run of a variant, started fresh each round.
pub type RunFn = Box<dyn Fn(Side) -> Pin<Box<dyn Future<Output = Result<Measured>>>>>;

/// Whether a bigger figure is better (msg/s) or worse (KiB, seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Better {
    Higher,
    Lower,
}

pub struct Variant {
    pub name: String,
    /// mqbridge first; every ratio is mqbridge over that peer.
    pub sides: Vec<Side>,
    pub better: Better,
    pub run: RunFn,
}

impl Variant {
    /// A variant whose each run is `f(side)`.
    pub fn new<F, Fut>(name: impl Into<String>, sides: Vec<Side>, better: Better, f: F) -> Variant
    where
        F: Fn(Side) -> Fut + 'static,
        Fut: Future<Output = Result<Measured>> + 'static,
    {
        Variant {
            name: name.into(),
            sides,
            better,
            run: Box::new(move |side| Box::pin(f(side))),
        }
    }
}

/// A variant of mqbridge against Mosquitto in which each round starts a
/// fresh broker on each side and runs `f` against it (the broker stops when
/// `f`'s future is done with it).
pub fn against_mosquitto<F, Fut>(name: &str, better: Better, bin: &Path, f: F) -> Variant
where
    F: Fn(Broker) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<Measured>> + 'static,
{
    let bin = bin.to_path_buf();
    let sides = vec![Side::Mqbridge, Side::Mosquitto];
    Variant::new(name, sides, better, move |side| {
        let (bin, f) = (bin.clone(), f.clone());
        async move { f(Broker::start(side, &bin)?).await }
    })
}

/// Every scenario name the harness knows, in the order they run by default.
/// (`p2p-persistent` runs only that variant of `p2p`.)
pub const ALL: &[&str] = &[
    "p2p",
    "p2p-latency",
    "conn-idle",
    "fan-in-kafka",
    "fan-in-amqp",
    "downlink-kafka",
    "downlink-amqp",
    "fan-out",
    "offline-drain",
    "restart",
    "cluster-p2p",
];

/// The variants of scenario `name`, sized by `a`.
pub fn variants(name: &str, a: &Args) -> Result<Vec<Variant>> {
    Ok(match name {
        "p2p" => p2p::variants(a),
        "p2p-latency" => latency::variants(a),
        "conn-idle" => idle::variants(a),
        // One module offers both; each name runs its own variant.
        "fan-in-kafka" | "fan-in-amqp" => fan_in::variants(a)
            .into_iter()
            .filter(|v| v.name == name)
            .collect(),
        "downlink-kafka" | "downlink-amqp" => downlink::variants(a)
            .into_iter()
            .filter(|v| v.name == name)
            .collect(),
        "p2p-persistent" => p2p::variants(a)
            .into_iter()
            .filter(|v| v.name.starts_with("p2p-persistent"))
            .collect(),
        "fan-out" => fan_out::variants(a),
        "offline-drain" => offline_drain::variants(a),
        "restart" => restart::variants(a),
        "cluster-p2p" => cluster::variants(a),
        other => anyhow::bail!("unknown scenario {other} (built: {})", ALL.join(", ")),
    })
}
