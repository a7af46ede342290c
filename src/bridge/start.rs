//! Starting the bridge from its checked configuration: one sink per
//! backend (through the registry), a spool in front of it for `ack =
//! "spool"` routes, the uplink routes, and each downlink route's processor
//! and source.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::downlink::{self, MessageLimits, Reporting};
use super::metrics::BridgeMetrics;
use super::registry::{SinkStart, SourceStart};
use super::uplink::Uplink;
use super::{BridgeError, RunningSink, SinkHandle};
use crate::config::{AckMode, ValidBridge};
use crate::mqtt::router::{ReceiptEvent, RouterMsg};
use crate::store::StoreHealth;

/// What the bridge is connected to.
pub struct Wiring<'a> {
    pub node_id: &'a str,
    pub metrics: &'a BridgeMetrics,
    /// `store.path`: spools live under `<store.path>/spool/`.
    pub store_dir: &'a Path,
    pub store_health: Arc<StoreHealth>,
    /// Where downlink processors hand commands to.
    pub router: &'a mpsc::Sender<RouterMsg>,
    /// Acknowledged commands reported by the router, for receipts.
    pub receipts: mpsc::Receiver<ReceiptEvent>,
    /// Readiness (paused by the store budget).
    pub ready: &'a Arc<crate::admin::Readiness>,
    pub limits: MessageLimits,
    /// Cancelled when the gateway stops: sources stop consuming.
    pub cancel: CancellationToken,
    /// Every task the bridge spawns is spawned here.
    pub tasks: TaskTracker,
}

/// A started bridge.
pub struct Started {
    pub uplink: Uplink,
    /// Sinks and spools: each ends once every handle is dropped and what it
    /// holds is settled.
    pub sinks: Vec<JoinHandle<()>>,
    /// Downlink processors, sources and the receipts task: they end on the
    /// cancellation token.
    pub downlink: Vec<JoinHandle<()>>,
}

/// Starts every sink, the uplink routes and the downlink routes.
pub async fn start(bridge: &ValidBridge, w: Wiring<'_>) -> Result<Started, BridgeError> {
    let mut sinks = HashMap::new();
    let mut sink_tasks = Vec::new();
    // A sink lives as long as a route holds its handle: a backend no route
    // uses (e.g. one only cluster mode uses) gets none, or its task would
    // end at once and stop the gateway.
    let used = |name: &str| {
        bridge.uplink.iter().any(|r| r.backend.name() == name)
            || bridge.downlink.iter().any(|d| d.backend.name() == name)
    };
    for b in bridge.backends.iter().filter(|b| used(b.name())) {
        let targets = bridge
            .uplink
            .iter()
            .filter(|r| r.backend.name() == b.name())
            .filter_map(|r| r.target.literal())
            .collect();
        let start = SinkStart {
            counters: w.metrics.backend(b.name()),
            capacity: bridge.queue_capacity,
            targets,
            tasks: w.tasks.clone(),
        };
        let what = format!("uplink backend {}", b.name());
        w.ready
            .watch_connection(what, w.metrics.backend(b.name()).up);
        let RunningSink { handle, task } = b.start_sink(start).await?;
        sinks.insert(b.name().to_string(), handle);
        sink_tasks.push(task);
    }
    let mut routes = Vec::new();
    for r in &bridge.uplink {
        let Some(backend) = sinks.get(r.backend.name()) else {
            return Err(not_started(r.backend.name()));
        };
        let sink = if r.route.ack == AckMode::Spool {
            let RunningSink { handle, task } = super::spool::start(
                &r.route.name,
                super::spool::SpoolDisk {
                    dir: &w.store_dir.join("spool"),
                    store_health: w.store_health.clone(),
                    max_bytes: r.route.spool_max_bytes,
                    bytes_gauge: w.metrics.spool_bytes(&r.route.name),
                },
                backend.clone(),
                w.metrics.route(&r.route.name),
                w.metrics.spool_full(&r.route.name),
                bridge.queue_capacity,
                &w.tasks,
            )?;
            sink_tasks.push(task);
            handle
        } else {
            backend.clone()
        };
        routes.push((r.clone(), sink));
    }
    let uplink = Uplink::new(routes, w.metrics);
    let downlink = start_downlink(bridge, &sinks, w).await?;
    Ok(Started {
        uplink,
        sinks: sink_tasks,
        downlink,
    })
}

fn not_started(backend: &str) -> BridgeError {
    BridgeError::Unsupported {
        backend: backend.to_string(),
        reason: "its sink was not started".into(),
    }
}

/// Starts each downlink route: its processor (command → router), its source,
/// and the receipts task if any route wants delivery receipts.
async fn start_downlink(
    bridge: &ValidBridge,
    sinks: &HashMap<String, SinkHandle>,
    w: Wiring<'_>,
) -> Result<Vec<JoinHandle<()>>, BridgeError> {
    let mut tasks = Vec::new();
    let mut receipt_targets = HashMap::new();
    for d in &bridge.downlink {
        let r = &d.route;
        let sink = sinks.get(d.backend.name()).cloned();
        let counters = w.metrics.downlink(&r.name);
        let reporting = Reporting {
            counters: counters.clone(),
            dead_counters: w.metrics.produced(&r.name, "dead_letter"),
            ready: w.ready.clone(),
        };
        let capacity = bridge.queue_capacity.min(4096);
        let p = downlink::start(
            d,
            w.router.clone(),
            w.limits,
            sink.clone(),
            reporting,
            capacity,
            &w.tasks,
        );
        tasks.push(p.task);
        if let (Some(target), Some(sink)) = (&r.receipt_target, sink) {
            let route_counters = w.metrics.produced(&r.name, "receipt");
            let entry = (sink, target.clone(), route_counters, counters);
            receipt_targets.insert(r.name.clone(), entry);
        }
        let gauges = w.metrics.source(&r.name);
        let what = format!("downlink route {}", r.name);
        w.ready.watch_connection(what, gauges.up.clone());
        let start = SourceStart {
            gauges,
            node_id: w.node_id.to_string(),
            tx: p.tx,
            cancel: w.cancel.clone(),
            tasks: w.tasks.clone(),
        };
        tasks.push(d.backend.start_source(r, start).await?);
    }
    if !receipt_targets.is_empty() {
        tasks.push(downlink::start_receipts(
            receipt_targets,
            w.receipts,
            &w.tasks,
        ));
    }
    Ok(tasks)
}
