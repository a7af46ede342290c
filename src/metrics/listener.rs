//! The connection-level series of one listener (`listener` label): made
//! once per listener at start-up, so counting is a plain atomic add on the
//! connection path, without a lookup or an allocation.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{
    inc_at, ConnectionResult, Metrics, ProtocolErrorLabels, ProtocolErrorReason, RefusedLabels,
    RefusedReason, ResultLabels,
};

/// A listener's name as a label value (operator-chosen from `[a-z0-9_]`,
/// fixed at start-up: bounded cardinality).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerName(pub Arc<str>);

impl EncodeLabelValue for ListenerName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Label set `{listener=...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: ListenerName,
}

label_enum! {
    /// Why a TLS handshake failed (`reason` label).
    TlsFailure {
        /// Not finished within `mqtt.connect_timeout_secs`.
        Timeout => "timeout",
        /// A `required` listener got no client certificate.
        NoClientCertificate => "no_client_certificate",
        /// The client certificate did not verify (unknown CA, expired, ...).
        BadClientCertificate => "bad_client_certificate",
        /// The client refused ours (an alert), e.g. it does not trust our CA.
        AlertReceived => "alert_received",
        /// No TLS version or cipher suite in common.
        Incompatible => "incompatible",
        /// Anything else the TLS layer refused (not TLS at all, ...).
        Protocol => "protocol",
        /// The client closed the connection during the handshake.
        Closed => "closed",
        /// A socket error.
        Io => "io",
    }
}

/// Label set `{listener=...,reason=...}` of failed TLS handshakes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub listener: ListenerName,
    pub reason: TlsFailure,
}

label_enum! {
    /// Outcome of a TLS certificate reload (`result` label).
    ReloadResult {
        /// The new files are in use.
        Ok => "ok",
        /// They did not load; the old certificate stays.
        Failed => "failed",
    }
}

/// Label set `{result=...}` of TLS reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

/// The series of one listener, each a handle on its family's atomic.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// `mqbridge_mqtt_connections_active{listener}`.
    pub active: Gauge,
    by_result: Vec<Counter>,
    by_protocol_error: Vec<Counter>,
    by_refused_reason: Vec<Counter>,
    by_tls_failure: Vec<Counter>,
    /// `mqbridge_tls_certificate_expiry_timestamp_seconds{listener}` (TLS listeners).
    pub certificate_expiry: Option<Gauge>,
}

impl ListenerMetrics {
    /// Counts a connection attempt by its outcome.
    pub fn connection(&self, result: ConnectionResult) {
        inc_at(&self.by_result, result as usize, 1);
    }

    /// Counts a connection closed for a protocol error.
    pub fn protocol_error(&self, reason: ProtocolErrorReason) {
        inc_at(&self.by_protocol_error, reason as usize, 1);
    }

    /// Counts a connection the listener refused, also as a rejected connection.
    pub fn connection_refused(&self, reason: RefusedReason) {
        inc_at(&self.by_refused_reason, reason as usize, 1);
        self.connection(ConnectionResult::Rejected);
    }

    /// Counts a failed TLS handshake, also as a rejected connection.
    pub fn tls_failure(&self, reason: TlsFailure) {
        inc_at(&self.by_tls_failure, reason as usize, 1);
        self.connection(ConnectionResult::Rejected);
    }
}

impl Metrics {
    /// Creates every series of listener `name` (all at 0, so they are
    /// exported from start-up). `tls`: also the TLS series.
    pub fn listener(&self, name: &Arc<str>, tls: bool) -> ListenerMetrics {
        let listener = ListenerName(name.clone());
        ListenerMetrics {
            active: self
                .connections_active
                .get_or_create(&ListenerLabels {
                    listener: listener.clone(),
                })
                .clone(),
            by_result: ConnectionResult::ALL
                .iter()
                .map(|&result| {
                    let l = ResultLabels {
                        listener: listener.clone(),
                        result,
                    };
                    self.connections.get_or_create(&l).clone()
                })
                .collect(),
            by_protocol_error: ProtocolErrorReason::ALL
                .iter()
                .map(|&reason| {
                    let l = ProtocolErrorLabels {
                        listener: listener.clone(),
                        reason,
                    };
                    self.protocol_errors.get_or_create(&l).clone()
                })
                .collect(),
            by_refused_reason: RefusedReason::ALL
                .iter()
                .map(|&reason| {
                    let l = RefusedLabels {
                        listener: listener.clone(),
                        reason,
                    };
                    self.connections_refused.get_or_create(&l).clone()
                })
                .collect(),
            by_tls_failure: if tls {
                TlsFailure::ALL
                    .iter()
                    .map(|&reason| {
                        let l = TlsFailureLabels {
                            listener: listener.clone(),
                            reason,
                        };
                        self.tls_handshake_failures.get_or_create(&l).clone()
                    })
                    .collect()
            } else {
                Vec::new()
            },
            certificate_expiry: tls.then(|| {
                self.tls_certificate_expiry
                    .get_or_create(&ListenerLabels { listener })
                    .clone()
            }),
        }
    }

    /// Counts a TLS certificate reload.
    pub fn tls_reload(&self, result: ReloadResult) {
        self.tls_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}
