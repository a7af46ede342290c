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
use tokio::sync::mpsc;

use crate::bridge::metrics::BridgeMetrics;
use crate::config::{Config, Validated};
use crate::metrics::Metrics;
use crate::mqtt::connection::Shared;
use crate::mqtt::router::{Router, ROUTER_CHANNEL};
use crate::mqtt::transport::ListenerCtx;
use crate::store::{DiskWatch, Recovered, Store, StoreOptions};
use crate::tasks::{TaskFailure, Tasks};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Cluster mode could not join: Kafka unreachable or a topic unusable.
    #[error("starting cluster mode")]
    Cluster(#[source] crate::cluster::ClusterError),
    #[error("opening the store at {path}")]
    Store {
        path: String,
        #[source]
        source: crate::store::StoreError,
    },
    /// The blocking task opening the store panicked or was cancelled.
    #[error("opening the store at {path}: the opening task failed")]
    StoreOpenTask {
        path: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("starting the bridge")]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error("binding {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("node id")]
    NodeId(#[from] crate::node::NodeIdError),
    /// The admin endpoint's TLS files changed since validation and no
    /// longer load.
    #[error("TLS files of the admin endpoint")]
    AdminTls {
        #[source]
        source: crate::mqtt::transport::tls::TlsError,
    },
    /// No MQTT listener configured (validation refuses that).
    #[error("no MQTT listener configured")]
    NoListener,
    /// A TLS listener's files changed since validation and no longer load.
    #[error("TLS files of listener {listener}")]
    Tls {
        listener: String,
        #[source]
        source: crate::mqtt::transport::tls::TlsError,
    },
    /// A long-lived task ended while the gateway was running.
    #[error("the {task} task {how} while the gateway was running")]
    TaskFailed {
        task: &'static str,
        how: &'static str,
    },
}

/// A running gateway.
pub struct Gateway {
    /// Where the first MQTT listener is bound (useful with port 0): the
    /// plain TCP `mqtt.listen`, or the first `[[mqtt.listeners]]` entry
    /// when that is off.
    pub mqtt_addr: SocketAddr,
    /// Every MQTT listener by name, where it is bound.
    pub listener_addrs: Vec<(Arc<str>, SocketAddr)>,
    /// For reload: the TLS state of each listener.
    listeners: Vec<Arc<ListenerCtx>>,
    metrics: Arc<Metrics>,
    /// Where the admin endpoint is bound, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// Every task of the gateway. On the stop signal the downlink sources
    /// stop consuming, the listeners stop accepting, the router detaches the
    /// clients and closes the store; the sinks end once every connection
    /// holding their handle is gone and what they hold is confirmed.
    tasks: Tasks,
    /// Long-lived tasks that ended before the stop signal.
    failed: mpsc::Receiver<TaskFailure>,
    /// The admin endpoint's, stopped after everything else.
    admin_tasks: Tasks,
    admin_failed: mpsc::Receiver<TaskFailure>,
    ready: Arc<crate::admin::Readiness>,
    /// For fault injection in tests; weak so it never keeps the router alive.
    router_tx: mpsc::WeakSender<crate::mqtt::router::RouterMsg>,
    grace: Duration,
    /// Cluster mode: this node's membership (draining on shutdown).
    members: Option<crate::cluster::Members>,
    /// The live ACL rules (re-read by [`Gateway::reload_acl`]).
    acl: Arc<crate::acl::Acl>,
    /// Authentication (its files re-read by [`Gateway::reload`]).
    auth: Arc<crate::auth::Auth>,
}

/// The bridge routes as the admin API and the status page show them, with
/// the connection gauge of each one's backend (uplink) or source (downlink).
fn admin_routes(cfg: &Validated, m: &BridgeMetrics) -> Arc<[crate::admin::api::RouteInfo]> {
    use crate::admin::api::RouteInfo;
    let b = cfg.valid_bridge();
    let uplink = b.uplink.iter().map(|r| {
        let counters = m.backend(r.backend.name());
        RouteInfo {
            name: r.route.name.clone(),
            direction: "uplink",
            backend: r.backend.name().to_string(),
            up: counters.up,
            last_error: counters.last_error,
            source: None,
        }
    });
    let downlink = b.downlink.iter().map(|r| {
        let gauges = m.source(&r.route.name);
        RouteInfo {
            name: r.route.name.clone(),
            direction: "downlink",
            backend: r.backend.name().to_string(),
            up: gauges.up.clone(),
            last_error: gauges.last_error.clone(),
            source: Some(gauges),
        }
    });
    uplink.chain(downlink).collect()
}

/// How long the admin endpoint may take to stop, once everything else has.
const ADMIN_GRACE: Duration = Duration::from_secs(2);

/// Opens the store (on a blocking thread: it recovers every session).
async fn open_store(cfg: &Config, metrics: &Arc<Metrics>) -> Result<(Store, Recovered), AppError> {
    let opts = StoreOptions {
        path: cfg.store.path.clone(),
        max_batch_ops: cfg.store.max_batch_ops,
        queue_capacity: cfg.store.queue_capacity,
        cache_bytes: cfg.store.cache_bytes(),
        observer: Some({
            let m = metrics.clone();
            Arc::new(move |ops, took| m.store_commit(ops, took))
        }),
        commit_retry_max: Duration::from_secs(cfg.store.commit_retry_max_secs),
    };
    let path = cfg.store.path.display().to_string();
    match tokio::task::spawn_blocking(move || Store::open(&opts)).await {
        Ok(opened) => opened.map_err(|source| AppError::Store { path, source }),
        Err(source) => Err(AppError::StoreOpenTask { path, source }),
    }
}

/// Binds `addr` for `what`; returns the listener and where it is bound.
async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let err = |source| AppError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

impl Gateway {
    /// Opens the store, starts the router and binds the listeners. On an
    /// error, what was started is stopped again (within the grace period),
    /// so that the store is closed when this returns.
    pub async fn start(cfg: Validated) -> Result<Gateway, AppError> {
        let (tasks, failed) = Tasks::new();
        let grace = cfg.server.shutdown_grace();
        match Self::start_on(cfg, tasks.clone(), failed).await {
            Ok(gateway) => Ok(gateway),
            Err(e) => {
                let unfinished = tasks.shutdown(grace).await;
                if !unfinished.is_empty() {
                    tracing::error!(?unfinished, "start-up failed and these tasks did not stop");
                }
                Err(e)
            }
        }
    }

    async fn start_on(
        cfg: Validated,
        tasks: Tasks,
        failed: mpsc::Receiver<TaskFailure>,
    ) -> Result<Gateway, AppError> {
        let cfg = Arc::new(cfg);
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let bridge_metrics = BridgeMetrics::new(&mut registry);
        let auth = Arc::new(
            crate::auth::Auth::new(
                cfg.valid_auth().clone(),
                crate::auth::metrics::AuthMetrics::new(&mut registry),
            )
            .reloadable(cfg.auth.clone(), cfg.mqtt.listeners.clone()),
        );
        let acl = Arc::new(crate::acl::Acl::new(
            cfg.acl_rules().clone(),
            crate::acl::AclMetrics::new(&mut registry),
        ));
        if cfg.acl_rules().is_empty() {
            for l in cfg
                .listeners()
                .iter()
                .filter(|l| !l.addr.ip().is_loopback())
            {
                tracing::warn!(listener = &*l.name, listen = %l.addr, "no ACL rules: every client may publish and subscribe to any topic (see [acl] in config/default.toml)");
            }
        }
        let (store, recovered) = open_store(&cfg, &metrics).await?;
        let routed = recovered.cluster_positions.clone();
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
        {
            let store = store.clone();
            tasks.supervise("store writer", async move { store.writer_stopped().await });
        }
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
            tasks.clone(),
        )
        .with_acl(acl.clone());
        if cfg
            .bridge
            .downlink
            .iter()
            .any(|r| r.receipt_target.is_some())
        {
            router = router.with_receipts(receipt_tx);
        }
        // Registered in single-node mode too: one metrics table for both.
        let cluster_metrics = crate::cluster::ClusterMetrics::new(&mut registry);
        let mut cluster = if cfg.cluster.enabled {
            let cluster = crate::cluster::Cluster::connect(crate::cluster::Wiring {
                cfg: &cfg,
                node_id: cfg.cluster_node_id(&node_id),
                router: &router_tx,
                metrics: cluster_metrics,
                tasks: &tasks,
                advertise: cfg.cluster.advertise.clone(),
                routed,
            })
            .await
            .map_err(AppError::Cluster)?;
            router = router.with_cluster(cluster.link.clone(), cluster.members.clone());
            Some(cluster)
        } else {
            None
        };
        tasks.supervise("router", router.run(router_rx, tasks.cancelled()));
        if let Some(c) = cluster.as_mut() {
            // Before any listener: a node takes devices only once it knows
            // the cluster's sessions and retained messages.
            c.follow(&tasks).await.map_err(AppError::Cluster)?;
        }

        let mut bound = Vec::new();
        for spec in cfg.listeners() {
            let (l, addr) = bind("MQTT listener", spec.addr).await?;
            let tls = match &spec.tls {
                Some(t) => {
                    let loaded =
                        crate::mqtt::transport::tls::load(t).map_err(|source| AppError::Tls {
                            listener: spec.name.to_string(),
                            source,
                        })?;
                    Some((t.clone(), loaded))
                }
                None => None,
            };
            let lm = metrics.listener(&spec.name, tls.is_some());
            let tls = tls.map(|(t, loaded)| {
                if let Some(g) = &lm.certificate_expiry {
                    g.set(loaded.not_after);
                }
                crate::mqtt::transport::tls::TlsState::new(t, loaded)
            });
            let on = Arc::new(ListenerCtx::new(spec, lm, tls));
            warn_insecure(&cfg, &on, addr);
            auth.expose(&on.name);
            bound.push((l, addr, on));
        }
        let mqtt_addr = bound.first().map(|b| b.1).ok_or(AppError::NoListener)?;
        // The admin endpoint has tasks of its own, stopped after the rest:
        // during shutdown `/readyz` answers 503 instead of refusing.
        let (admin_tasks, admin_failed) = Tasks::new();
        let admin_addr = if let Some(addr) = cfg.admin_listen() {
            let (l, bound) = bind("admin endpoint", addr).await?;
            let state = crate::admin::AdminState {
                registry: Arc::new(registry),
                ready: ready.clone(),
                router: router_tx.downgrade(),
                token: cfg.raw().admin.token.clone(),
                routes: admin_routes(&cfg, &bridge_metrics),
            };
            let tls = match cfg.admin_tls() {
                Some(spec) => {
                    let loaded = crate::mqtt::transport::tls::load(spec)
                        .map_err(|source| AppError::AdminTls { source })?;
                    Some(tokio_rustls::TlsAcceptor::from(loaded.config))
                }
                None => None,
            };
            let serve = crate::admin::serve(l, state, tls, admin_tasks.clone());
            admin_tasks.supervise("admin endpoint", async move {
                if let Err(error) = serve.await {
                    tracing::error!(%error, "admin endpoint failed");
                }
            });
            Some(bound)
        } else {
            None
        };
        let bridge = crate::bridge::start::start(
            cfg.valid_bridge(),
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
                cancel: tasks.token().clone(),
                tasks: tasks.tracker().clone(),
            },
        )
        .await?;
        let uplink = bridge.uplink;
        bridge
            .downlink
            .into_iter()
            .for_each(|t| tasks.watch("downlink", t));
        bridge
            .sinks
            .into_iter()
            .for_each(|t| tasks.watch("uplink sink", t));
        let router_weak = router_tx.downgrade();
        let shared = Arc::new(Shared {
            uplink,
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            router: router_tx,
            next_conn_id: std::sync::atomic::AtomicU64::new(1),
            acl: acl.clone(),
            auth: auth.clone(),
            cluster: cluster.as_ref().and_then(crate::cluster::Cluster::gate),
        });
        let admission = Arc::new(crate::mqtt::listener::Admission::new(&cfg.mqtt));
        let mut listener_addrs = Vec::new();
        let mut listeners = Vec::new();
        for (l, addr, on) in bound {
            tracing::info!(listener = %on.name, kind = on.kind.as_str(), %addr, "MQTT listener bound");
            listener_addrs.push((on.name.clone(), addr));
            listeners.push(on.clone());
            let run =
                crate::mqtt::listener::run(l, on, admission.clone(), shared.clone(), tasks.clone());
            tasks.supervise("mqtt listener", run);
        }
        tasks.supervise("store disk watch", disk_watch.run(tasks.cancelled()));
        // Ready once started, and from then on while the store accepts writes
        // (and no downlink is paused by the store budget).
        ready.watch_router(router_weak.clone());
        ready.set_started(true);
        tracing::info!(%mqtt_addr, ?admin_addr, store = %cfg.store.path.display(), "mqbridge started");
        Ok(Gateway {
            mqtt_addr,
            listener_addrs,
            listeners,
            metrics,
            admin_addr,
            tasks,
            failed,
            admin_tasks,
            admin_failed,
            ready,
            router_tx: router_weak,
            grace: cfg.server.shutdown_grace(),
            members: cluster.map(|c| c.members),
            acl,
            auth,
        })
    }

    /// Serves until `shutdown` resolves or a supervised task fails; then
    /// stops. A task failure is returned as an error (the binary exits non-zero).
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AppError> {
        let (_none, reloads) = mpsc::channel(1);
        self.serve_reloading(shutdown, reloads).await
    }

    /// [`Gateway::serve`], and [`Gateway::reload`] on every message of
    /// `reloads` (the binary sends one per SIGHUP).
    pub async fn serve_reloading(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut reloads: mpsc::Receiver<()>,
    ) -> Result<(), AppError> {
        tokio::pin!(shutdown);
        let failure = loop {
            tokio::select! {
                _ = &mut shutdown => break None,
                f = self.failed.recv() => break f,
                f = self.admin_failed.recv() => break f,
                Some(()) = reloads.recv() => {
                    tracing::info!("reloading");
                    self.reload();
                }
            }
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

    /// Where listener `name` is bound.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    /// Re-reads what can change without a restart (SIGHUP): each TLS
    /// listener's certificate, key and client CAs, `acl.file`, the password
    /// file and the JWT keys. Files that do not load leave the current ones
    /// in force (logged and counted); live connections keep theirs either
    /// way. Returns how many failed.
    pub fn reload(&self) -> usize {
        let mut failed = usize::from(self.reload_acl().is_err());
        failed += usize::from(self.auth.reload().is_err());
        for on in &self.listeners {
            let Some(tls) = &on.tls else { continue };
            match tls.reload() {
                Ok(not_after) => {
                    self.metrics.tls_reload(crate::metrics::ReloadResult::Ok);
                    if let Some(g) = &on.metrics.certificate_expiry {
                        g.set(not_after);
                    }
                    tracing::info!(listener = %on.name, not_after, "TLS certificate reloaded");
                }
                Err(e) => {
                    failed += 1;
                    self.metrics
                        .tls_reload(crate::metrics::ReloadResult::Failed);
                    let error = error_chain(&e);
                    tracing::error!(listener = %on.name, field = e.field(), %error, "TLS reload failed; the current certificate stays");
                }
            }
        }
        failed
    }

    /// Resolves when a supervised task has failed (for tests).
    #[doc(hidden)]
    pub async fn failed_task(&mut self) -> Option<&'static str> {
        self.failed.recv().await.map(|f| f.task)
    }

    /// Re-reads `acl.file` (part of [`Gateway::reload`]). New rules apply
    /// to every connection at its next packet and, once the router has
    /// taken the notice, to every session's deliveries; a file that cannot
    /// be read or parsed keeps the previous rules (logged, and counted in
    /// `mqbridge_acl_reloads_total{result="failed"}`).
    pub fn reload_acl(&self) -> Result<(), crate::acl::AclFileError> {
        if !self.acl.reload()? {
            return Ok(());
        }
        let Some(tx) = self.router_tx.upgrade() else {
            return Ok(()); // Stopping: no session to recompile.
        };
        let notice = crate::mqtt::router::RouterMsg::AclReloaded;
        if let Err(mpsc::error::TrySendError::Full(notice)) = tx.try_send(notice) {
            // Behind the messages already queued, like any other.
            self.tasks.spawn("acl reload notice", async move {
                let _ = tx.send(notice).await;
            });
        }
        Ok(())
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

    /// Gives the stop signal and waits for every task of the gateway within
    /// `server.shutdown_grace_secs`: the sources stop consuming (what they
    /// did not commit is consumed again later), the router detaches the
    /// clients and closes the store, the sinks drain what they hold. Logs
    /// by name what did not finish in time.
    pub async fn shutdown(self) {
        self.ready.set_stopping();
        if let Some(m) = &self.members {
            // New clients are sent elsewhere; connected 5.0 clients are
            // redirected as the router lets them go.
            m.set_draining();
        }
        let mut unfinished = self.tasks.shutdown(self.grace).await;
        unfinished.extend(self.admin_tasks.shutdown(ADMIN_GRACE).await);
        if unfinished.is_empty() {
            tracing::info!("mqbridge stopped");
        } else {
            tracing::error!(grace = ?self.grace, ?unfinished, "shutdown grace period exceeded; exiting anyway");
        }
    }
}

/// Start-up warnings for a listener reachable from other hosts that lets
/// anyone in, or that takes passwords in clear text.
fn warn_insecure(cfg: &Validated, on: &ListenerCtx, addr: SocketAddr) {
    if addr.ip().is_loopback() {
        return;
    }
    let auth = cfg.valid_auth().for_listener(&on.name);
    let listener = &*on.name;
    if auth.methods.is_empty() || auth.allow_anonymous {
        tracing::warn!(listener, %addr, "anonymous access is allowed on a non-loopback listener (set [auth] methods and allow_anonymous = false for a fleet)");
    }
    let passwords = [
        crate::config::Method::PasswordFile,
        crate::config::Method::Jwt,
    ];
    if auth.methods.iter().any(|m| passwords.contains(m)) && !on.kind.is_tls() {
        tracing::warn!(listener, %addr, "passwords or tokens are accepted without TLS on a non-loopback listener");
    }
    let binding = cfg.valid_auth().client_id;
    if auth.methods.is_empty() && binding != crate::config::ClientIdBinding::Any {
        tracing::warn!(listener, %addr, "auth.client_id binds client ids to user names nobody verifies on this listener (no auth method)");
    }
}

/// Runs the gateway until `shutdown` resolves or one of its tasks fails.
pub async fn run(
    cfg: Validated,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    Gateway::start(cfg).await?.serve(shutdown).await
}

/// [`run`], reloading on every message of `reloads`.
pub async fn run_reloading(
    cfg: Validated,
    shutdown: impl std::future::Future<Output = ()>,
    reloads: mpsc::Receiver<()>,
) -> Result<(), AppError> {
    Gateway::start(cfg)
        .await?
        .serve_reloading(shutdown, reloads)
        .await
}

/// `e` and its sources, outermost first.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
