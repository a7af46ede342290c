//! The bridge between MQTT and the backends.
//!
//! - [`contract`]: the narrow [`Sink`](contract::Sink) (uplink) and
//!   [`Source`](contract::Source) (downlink) traits a backend implements.
//! - [`driver`]: what every backend shares — `run_sink`, `run_source`, the
//!   in-order [`SettleQueue`](driver::SettleQueue), the jittered `Backoff`.
//! - [`registry`]: backend kind → constructor of a [`registry::Backend`];
//!   adding a backend is one folder and one line there.
//! - [`start`]: starts sinks, spools, routes and sources from the checked
//!   configuration.
//! - [`file`], [`kafka`], [`amqp`]: one folder per backend, both directions
//!   and its settings. A sink takes [`Envelope`]s from a bounded channel in
//!   order and answers each envelope's `confirm` once the backend confirmed
//!   it (or refused it for good); it never confirms what the backend has not.
//! - [`uplink`]: routes that mirror MQTT PUBLISHes to sinks; the device's
//!   PUBACK/PUBREC waits for every matching route's confirmation.
//! - [`downlink`]: the processor of commands, and delivery receipts.
//! - [`spool`]: `ack = "spool"`, an fsynced spool in front of a sink.
//! - [`template`]: the one template engine; [`metrics`]: the bridge's metrics.

pub mod amqp;
pub mod contract;
pub mod downlink;
pub mod driver;
pub mod file;
pub mod kafka;
pub mod metrics;
pub mod registry;
pub mod spool;
pub mod start;
pub mod template;
pub mod uplink;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::metrics::RouteCounters;

/// One message for a backend.
#[derive(Debug, Clone)]
pub struct Record {
    /// Route name, for logs.
    pub route: Arc<str>,
    /// Counters of the route, bumped by the sink with the outcome.
    pub counters: RouteCounters,
    pub client_id: Arc<str>,
    /// Kafka topic, AMQP exchange, or file stem.
    pub target: String,
    /// Kafka message key or AMQP routing key.
    pub key: Option<String>,
    /// The MQTT payload, byte for byte.
    pub payload: Bytes,
    /// Metadata as headers: mqtt_topic, mqtt_client_id, mqtt_qos,
    /// mqtt_retain, mqtt_received_at_ms, mqtt_username (when the client has
    /// one), then the 5.0 user properties whose names are not reserved
    /// (`mqtt_` prefix, see [`uplink::is_reserved`]).
    pub headers: Vec<(String, String)>,
    /// 5.0 content type, if any (AMQP content_type / Kafka header).
    pub content_type: Option<String>,
}

/// Outcome a sink reports for one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The backend refused this message for good (unknown topic, unroutable,
    /// too large): retrying would not help.
    #[error("rejected by the backend: {0}")]
    Rejected(String),
    /// The sink stopped before the backend confirmed the message.
    #[error("backend closed before confirming")]
    Closed,
}

pub type ConfirmTx = oneshot::Sender<Result<(), SinkError>>;

/// A record and, for QoS 1/2, where to report its outcome.
#[derive(Debug)]
pub struct Envelope {
    pub record: Record,
    pub confirm: Option<ConfirmTx>,
}

/// The sending side of a sink.
#[derive(Clone, Debug)]
pub struct SinkHandle {
    pub backend: Arc<str>,
    pub tx: mpsc::Sender<Envelope>,
}

/// A started sink: its input and its task. The task ends after every
/// handle is dropped and what it holds is confirmed or failed.
pub struct RunningSink {
    pub handle: SinkHandle,
    pub task: JoinHandle<()>,
}

/// Why a backend could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Starting the backend's client or its local files failed; `source`
    /// is the underlying error (I/O, redb, librdkafka, ...).
    #[error("backend {backend}: {what}")]
    Backend {
        backend: String,
        /// What was being done, e.g. "creating ./data/uplink".
        what: String,
        #[source]
        source: contract::BoxError,
    },
    /// The backend cannot do what the configuration asks of it (a sink that
    /// was not started, a downlink route on a kind without a source).
    #[error("backend {backend}: {reason}")]
    Unsupported { backend: String, reason: String },
    /// Settings the backend can never work with (normally caught when the
    /// configuration is validated; this is for callers that skip that).
    #[error("backend {backend}{}: {}", route.as_ref().map(|r| format!(", downlink route {r:?}")).unwrap_or_default(), errors.iter().map(|e| format!("{}: {}", e.key, e.reason)).collect::<Vec<_>>().join("; "))]
    Settings {
        backend: String,
        route: Option<String>,
        errors: Vec<registry::SettingError>,
    },
}

impl BridgeError {
    pub fn settings(backend: &str, errors: &[registry::SettingError]) -> BridgeError {
        BridgeError::Settings {
            backend: backend.to_string(),
            route: None,
            errors: errors.to_vec(),
        }
    }

    /// The same error, said of a downlink route.
    pub fn in_route(self, route: &str) -> BridgeError {
        match self {
            BridgeError::Settings {
                backend, errors, ..
            } => BridgeError::Settings {
                backend,
                route: Some(route.to_string()),
                errors,
            },
            other => other,
        }
    }
}
