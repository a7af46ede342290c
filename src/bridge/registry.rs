//! Backend kinds and their constructors: the one place a backend is
//! registered. Adding a backend is one folder under `bridge/` and one line
//! in [`BUILT_IN`] (or, from outside the crate, one call to [`register`]
//! before the gateway starts).
//!
//! A kind's [`Parse`] turns a `[[bridge.backends]]` entry into a
//! [`Backend`], checked, when the configuration is validated; the gateway
//! then starts the backend's sink and its downlink sources through it.

use std::fmt;
use std::sync::{Arc, RwLock};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::contract::BoxFuture;
use super::downlink::CommandTx;
use super::metrics::BackendCounters;
use super::{BridgeError, RunningSink};
use crate::config::{BackendConfig, DownlinkRoute, UplinkRoute};

/// A problem with one setting: the key below the backend's entry (e.g.
/// `compression`, or `queue` of a downlink route) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: String,
    pub reason: String,
}

impl SettingError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> SettingError {
        SettingError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// What a sink is started with.
pub struct SinkStart {
    pub counters: BackendCounters,
    /// Input channel capacity (`bridge.queue_capacity`).
    pub capacity: usize,
    /// The literal targets of the uplink routes using this backend (the
    /// Kafka sink creates them when asked to).
    pub targets: Vec<String>,
    /// Where the sink's tasks are spawned.
    pub tasks: TaskTracker,
}

/// What a downlink source is started with.
pub struct SourceStart {
    /// This process's stable node id (Kafka static membership).
    pub node_id: String,
    /// The route's processor.
    pub tx: CommandTx,
    /// Cancelled when the gateway stops: stop consuming, settle what is done.
    pub cancel: CancellationToken,
    /// Where the source's tasks are spawned.
    pub tasks: TaskTracker,
    /// The source's gauges (connected, unsettled, lag).
    pub gauges: crate::bridge::metrics::SourceGauges,
}

/// A configured, checked backend.
pub trait Backend: Send + Sync + fmt::Debug {
    fn name(&self) -> &str;

    /// Whether uplink routes must name a target (the AMQP backend has a
    /// default exchange).
    fn target_required(&self) -> bool {
        true
    }

    /// The key template of an uplink route: what the route sets for this
    /// kind of backend, else the backend's default.
    fn uplink_key(&self, route: &UplinkRoute) -> String {
        route.key.clone().unwrap_or_else(|| "{client_id}".into())
    }

    /// Checks a downlink route that consumes from this backend; errors are
    /// keyed below the route (`queue`, `topics`, ...).
    fn check_downlink(&self, route: &DownlinkRoute) -> Vec<SettingError> {
        let _ = route;
        vec![SettingError::new(
            "backend",
            format!("backend {:?} cannot carry downlink commands", self.name()),
        )]
    }

    /// Starts the uplink sink.
    fn start_sink(&self, start: SinkStart) -> BoxFuture<'_, Result<RunningSink, BridgeError>>;

    /// Starts the source of one downlink route (checked by
    /// [`Backend::check_downlink`]).
    fn start_source<'a>(
        &'a self,
        route: &'a DownlinkRoute,
        start: SourceStart,
    ) -> BoxFuture<'a, Result<JoinHandle<()>, BridgeError>> {
        let _ = start;
        Box::pin(async move {
            Err(BridgeError::Unsupported {
                backend: self.name().to_string(),
                reason: format!("cannot carry downlink route {:?}", route.name),
            })
        })
    }
}

/// Parses and checks one `[[bridge.backends]]` entry of a kind.
pub type Parse = fn(&BackendConfig) -> Result<Arc<dyn Backend>, Vec<SettingError>>;

/// A backend kind: the `kind` string and its constructor.
#[derive(Clone, Copy)]
pub struct Kind {
    pub kind: &'static str,
    pub parse: Parse,
}

/// The kinds compiled in.
const BUILT_IN: &[Kind] = &[super::file::KIND, super::kafka::KIND, super::amqp::KIND];

/// Kinds added at run time by [`register`].
static REGISTERED: RwLock<Vec<Kind>> = RwLock::new(Vec::new());

/// Adds a kind (the last registration of a name wins; built-in kinds cannot
/// be replaced). Call before the configuration is validated.
pub fn register(kind: Kind) {
    let mut kinds = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    kinds.retain(|k| k.kind != kind.kind);
    kinds.push(kind);
}

/// The kind named `kind`, if compiled in or registered.
pub fn lookup(kind: &str) -> Option<Kind> {
    if let Some(k) = BUILT_IN.iter().find(|k| k.kind == kind) {
        return Some(*k);
    }
    let kinds = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    kinds.iter().find(|k| k.kind == kind).copied()
}

/// Builds the backend of `cfg` through its kind's constructor.
pub fn build(cfg: &BackendConfig) -> Result<Arc<dyn Backend>, Vec<SettingError>> {
    match lookup(cfg.kind()) {
        Some(kind) => (kind.parse)(cfg),
        None => Err(vec![SettingError::new(
            "kind",
            format!(
                "{:?} is not a known backend kind (known: {})",
                cfg.kind(),
                known().join(", ")
            ),
        )]),
    }
}

fn known() -> Vec<&'static str> {
    let kinds = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    BUILT_IN
        .iter()
        .chain(kinds.iter())
        .map(|k| k.kind)
        .collect()
}
