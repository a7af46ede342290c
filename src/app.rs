//! Wires the parts together and owns start-up and shutdown.
//!
//! Start-up order: (config already validated) → open the store and recover
//! sessions → start the router → bind the MQTT and admin listeners. Shutdown:
//! stop accepting → the router detaches every client, records session state
//! and closes (flushes) the store — bounded by the configured grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::bridge::metrics::BridgeMetrics;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mqtt::connection::Shared;
use crate::mqtt::router::{Router, ROUTER_CHANNEL};
use crate::store::{DiskWatch, Store, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("opening the store at {path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
    #[error("starting the bridge: {0}")]
    Bridge(#[from] crate::bridge::BridgeError),
    /// The configuration was not valid (only when `Config::validate` was skipped).
    #[error("invalid configuration: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Config(Vec<crate::config::ConfigError>),
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("node id: {0}")]
    NodeId(#[from] crate::node::NodeIdError),
    /// A long-lived task ended while the gateway was running.
    #[error("the {task} task {how} while the gateway was running")]
    TaskFailed {
        task: &'static str,
        how: &'static str,
    },
}

/// A long-lived task that ended before shutdown.
#[derive(Debug, Clone, Copy)]
struct TaskFailure {
    task: &'static str,
    panicked: bool,
}

/// Watches the gateway's long-lived tasks. One that ends before shutdown
/// (returns or panics) is a failure: the gateway stops and the process exits
/// non-zero, so a supervisor restarts it and state is rebuilt from the store,
/// rather than staying up half-dead (e.g. accepting clients with no router).
#[derive(Clone)]
struct Supervisor {
    stopping: watch::Receiver<bool>,
    /// Bounded; the first failure is what matters, later ones are only logged.
    failed: mpsc::Sender<TaskFailure>,
}

impl Supervisor {
    /// Takes over `handle`; the returned handle resolves when the task ends.
    fn watch(&self, task: &'static str, handle: JoinHandle<()>) -> (&'static str, JoinHandle<()>) {
        let sup = self.clone();
        let watcher = tokio::spawn(async move {
            let result = handle.await;
            if *sup.stopping.borrow() {
                return;
            }
            let panicked = result.as_ref().is_err_and(|e| e.is_panic());
            tracing::error!(
                task,
                panicked,
                "a gateway task ended unexpectedly; stopping the gateway"
            );
            let _ = sup.failed.try_send(TaskFailure { task, panicked });
        });
        (task, watcher)
    }
}

/// A running gateway.
pub struct Gateway {
    /// Where the MQTT listener is bound (useful with port 0).
    pub mqtt_addr: SocketAddr,
    /// Where the admin endpoint is bound, if enabled.
    pub admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// The bridge's stop signal, cancelled with `stop`.
    cancel: tokio_util::sync::CancellationToken,
    /// Supervised tasks in shutdown order: downlink sources (they stop
    /// consuming on the stop signal), the listeners, the router (it detaches
    /// clients and closes the store), the store writer, then the sinks (each
    /// ends once every connection holding its handle is gone and what it holds
    /// is confirmed).
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// Failures reported by the supervisor.
    failed: mpsc::Receiver<TaskFailure>,
    /// For fault injection in tests; weak so it never keeps the router alive.
    router_tx: mpsc::WeakSender<crate::mqtt::router::RouterMsg>,
    grace: Duration,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Gateway {
    /// Opens the store, starts the router and binds the listeners.
    pub async fn start(cfg: Config) -> Result<Gateway, AppError> {
        // Checked again here for callers that skipped `Config::validate`;
        // the runtime takes only this typed form.
        let valid_bridge = cfg
            .bridge
            .validate(cfg.session.max_session_expiry_secs)
            .map_err(AppError::Config)?;
        let cfg = Arc::new(cfg);
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let bridge_metrics = BridgeMetrics::new(&mut registry);
        let opts = StoreOptions {
            path: cfg.store.path.clone(),
            max_batch_ops: cfg.store.max_batch_ops,
            queue_capacity: cfg.store.queue_capacity,
            cache_bytes: cfg.store.cache_mb * 1024 * 1024,
            observer: Some({
                let m = metrics.clone();
                Arc::new(move |ops, took| m.store_commit(ops, took))
            }),
            commit_retry_max: Duration::from_secs(cfg.store.commit_retry_max_secs),
        };
        let path = cfg.store.path.display().to_string();
        let (store, recovered) = tokio::task::spawn_blocking(move || Store::open(&opts))
            .await
            .map_err(|e| AppError::Store {
                path: path.clone(),
                source: crate::store::StoreError::Database(e.to_string()),
            })?
            .map_err(|source| AppError::Store { path, source })?;
        let ready = Arc::new(crate::admin::Readiness::default());
        let disk_watch = DiskWatch {
            store: store.clone(),
            path: cfg.store.path.clone(),
            min_free: cfg.store.min_free_bytes,
            interval: cfg.store.free_space_check_interval(),
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        // Before any client is let in, so a full disk is refused from the start.
        disk_watch.check();
        let node_id = crate::node::resolve(&cfg.server.node_id, &cfg.store.path)?;
        let (stop, stop_rx) = watch::channel(false);
        // The bridge's stop signal (sources stop consuming).
        let cancel = tokio_util::sync::CancellationToken::new();
        // Every task the bridge spawns (the supervisor still watches the
        // long-lived ones through their handles).
        let bridge_tasks = tokio_util::task::TaskTracker::new();
        let (failed_tx, failed) = mpsc::channel(16);
        let sup = Supervisor {
            stopping: stop_rx.clone(),
            failed: failed_tx,
        };
        let store_writer = {
            let store = store.clone();
            tokio::spawn(async move { store.writer_stopped().await })
        };
        let (router_tx, router_rx) = mpsc::channel(ROUTER_CHANNEL);
        // Delivery receipts: acknowledged commands reported by the router. Bounded;
        // when full the router drops the receipt with a warning.
        let (receipt_tx, receipt_rx) = mpsc::channel(4096);
        let mut router = Router::new(
            cfg.clone(),
            metrics.clone(),
            store.clone(),
            recovered,
            router_tx.downgrade(),
        );
        if cfg
            .bridge
            .downlink
            .iter()
            .any(|r| r.receipt_target.is_some())
        {
            router = router.with_receipts(receipt_tx);
        }
        let router = tokio::spawn(router.run(router_rx, stopped(stop_rx.clone())));

        let listen = cfg.mqtt.listen.clone();
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|source| AppError::Bind {
                what: "MQTT listener",
                addr: listen.clone(),
                source,
            })?;
        let mqtt_addr = listener.local_addr().map_err(|source| AppError::Bind {
            what: "MQTT listener",
            addr: listen,
            source,
        })?;
        let mut admin = None;
        let admin_addr = if cfg.admin.listen.is_empty() {
            None
        } else {
            let addr = cfg.admin.listen.clone();
            let l = TcpListener::bind(&addr)
                .await
                .map_err(|source| AppError::Bind {
                    what: "admin endpoint",
                    addr: addr.clone(),
                    source,
                })?;
            let bound = l.local_addr().map_err(|source| AppError::Bind {
                what: "admin endpoint",
                addr,
                source,
            })?;
            let registry = Arc::new(registry);
            let serve = crate::admin::serve(l, registry, ready.clone(), stopped(stop_rx.clone()));
            admin = Some(tokio::spawn(async move {
                if let Err(error) = serve.await {
                    tracing::error!(%error, "admin endpoint failed");
                }
            }));
            Some(bound)
        };
        let bridge = crate::bridge::start::start(
            &valid_bridge,
            crate::bridge::start::Wiring {
                node_id: &node_id,
                metrics: &bridge_metrics,
                store_dir: &cfg.store.path,
                store_health: store.health().clone(),
                router: &router_tx,
                receipts: receipt_rx,
                ready: &ready,
                limits: crate::bridge::downlink::MessageLimits {
                    max_packet: cfg.mqtt.max_packet_size,
                    topic: cfg.mqtt.topic_limits(),
                },
                cancel: cancel.clone(),
                tasks: bridge_tasks.clone(),
            },
        )
        .await?;
        let uplink = bridge.uplink;
        let router_weak = router_tx.downgrade();
        let shared = Arc::new(Shared {
            uplink,
            cfg: cfg.clone(),
            metrics,
            router: router_tx,
        });
        let listener = tokio::spawn(crate::mqtt::listener::run(
            listener,
            shared,
            stopped(stop_rx),
        ));
        let mut tasks = Vec::new();
        tasks.extend(
            bridge
                .downlink
                .into_iter()
                .map(|t| sup.watch("downlink", t)),
        );
        tasks.push(sup.watch("mqtt listener", listener));
        tasks.extend(admin.map(|t| sup.watch("admin endpoint", t)));
        tasks.push(sup.watch("router", router));
        tasks.push(sup.watch("store writer", store_writer));
        tasks.extend(
            bridge
                .sinks
                .into_iter()
                .map(|t| sup.watch("uplink sink", t)),
        );
        let disk_watch = tokio::spawn(disk_watch.run(stopped(stop.subscribe())));
        tasks.push(sup.watch("store disk watch", disk_watch));
        // Ready once started, and from then on while the store accepts writes
        // (and no downlink is paused by the store budget).
        ready.set_started(true);
        tracing::info!(%mqtt_addr, ?admin_addr, store = %cfg.store.path.display(), "mqbridge started");
        Ok(Gateway {
            mqtt_addr,
            admin_addr,
            stop,
            cancel,
            tasks,
            failed,
            router_tx: router_weak,
            grace: Duration::from_secs(cfg.server.shutdown_grace_secs),
        })
    }

    /// Serves until `shutdown` resolves or a supervised task fails; then
    /// stops. A task failure is returned as an error (the binary exits non-zero).
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AppError> {
        let failure = tokio::select! {
            _ = shutdown => None,
            f = self.failed.recv() => f,
        };
        tracing::info!("shutting down");
        self.shutdown().await;
        match failure {
            None => Ok(()),
            Some(f) => Err(AppError::TaskFailed {
                task: f.task,
                how: if f.panicked { "panicked" } else { "ended" },
            }),
        }
    }

    /// Resolves when a supervised task has failed (for tests).
    #[doc(hidden)]
    pub async fn failed_task(&mut self) -> Option<&'static str> {
        self.failed.recv().await.map(|f| f.task)
    }

    /// Injects a fault, to test supervision.
    #[doc(hidden)]
    pub async fn inject_fault(&self, fault: crate::mqtt::router::Fault) {
        if let Some(tx) = self.router_tx.upgrade() {
            let _ = tx
                .send(crate::mqtt::router::RouterMsg::InjectFault(fault))
                .await;
        }
    }

    /// Stops accepting, detaches clients, flushes and closes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.cancel.cancel();
        let tasks = self.tasks;
        let mut left: Vec<&'static str> = tasks.iter().map(|(n, _)| *n).collect();
        let all = async {
            // In order: sources stop consuming first (what they did not commit
            // is consumed again later); the router kicks the connections and
            // closes the store; the sinks drain what they hold.
            for (_, t) in tasks {
                let _ = t.await;
                left.remove(0);
            }
        };
        match tokio::time::timeout(self.grace, all).await {
            Ok(_) => tracing::info!("mqbridge stopped"),
            Err(_) => {
                tracing::error!(grace = ?self.grace, unfinished = ?left, "shutdown grace period exceeded; exiting anyway")
            }
        }
    }
}

/// Runs the gateway until `shutdown` resolves or one of its tasks fails.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    Gateway::start(cfg).await?.serve(shutdown).await
}
