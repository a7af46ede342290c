//! `mqbridge_auth_*`: results by listener, method and result, refusal
//! delays, bans. Labels are operator-chosen names and fixed words, never a
//! client id or user name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `result` label of `mqbridge_auth_results_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    Accepted,
    Anonymous,
    BadCredentials,
    NotAuthorized,
}

impl AuthResult {
    pub const ALL: &'static [AuthResult] = &[
        AuthResult::Accepted,
        AuthResult::Anonymous,
        AuthResult::BadCredentials,
        AuthResult::NotAuthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Accepted => "accepted",
            AuthResult::Anonymous => "anonymous",
            AuthResult::BadCredentials => "bad_credentials",
            AuthResult::NotAuthorized => "not_authorized",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub listener: String,
    pub method: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

/// Registered auth metric families.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    /// `mqbridge_auth_results_total{listener,method,result}`.
    pub results: Family<ResultLabels, Counter>,
    /// `mqbridge_auth_delayed_total{listener}`: refusals whose CONNACK waited.
    pub delayed: Family<ListenerLabel, Counter>,
    /// `mqbridge_auth_tracked_addresses`: addresses with failures on record.
    pub tracked: Gauge,
    /// `mqbridge_auth_bans_total`: addresses banned.
    pub bans: Counter,
    /// `mqbridge_auth_reloads_total{result}`: password file / JWT key
    /// reloads, `ok` or `failed` (the previous files stay in force).
    pub reloads: Family<ReloadLabel, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabel {
    pub result: &'static str,
}

impl AuthMetrics {
    pub fn new(registry: &mut Registry) -> AuthMetrics {
        let m = AuthMetrics {
            results: Family::default(),
            delayed: Family::default(),
            tracked: Gauge::default(),
            bans: Counter::default(),
            reloads: Family::default(),
        };
        for result in ["ok", "failed"] {
            let _ = m.reloads.get_or_create(&ReloadLabel { result });
        }
        registry.register(
            "mqbridge_auth_reloads",
            "Reloads of the password file and JWT keys by result",
            m.reloads.clone(),
        );
        registry.register(
            "mqbridge_auth_results",
            "CONNECT authentication outcomes by listener, method and result",
            m.results.clone(),
        );
        registry.register(
            "mqbridge_auth_delayed",
            "Refused CONNECTs whose CONNACK was delayed (repeated failures from one address)",
            m.delayed.clone(),
        );
        registry.register(
            "mqbridge_auth_tracked_addresses",
            "Addresses with authentication failures on record",
            m.tracked.clone(),
        );
        registry.register(
            "mqbridge_auth_bans",
            "Addresses banned after repeated authentication failures",
            m.bans.clone(),
        );
        m
    }

    pub fn result(&self, listener: &str, method: &'static str, result: AuthResult) {
        self.results
            .get_or_create(&ResultLabels {
                listener: listener.to_string(),
                method,
                result: result.as_str(),
            })
            .inc();
    }

    /// Creates the series at 0.
    pub fn touch(&self, listener: &str, method: &'static str, result: AuthResult) {
        let _ = self.results.get_or_create(&ResultLabels {
            listener: listener.to_string(),
            method,
            result: result.as_str(),
        });
    }

    pub fn touch_delayed(&self, listener: &str) {
        let _ = self.delayed.get_or_create(&ListenerLabel {
            listener: listener.to_string(),
        });
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ReloadLabel { result }).inc();
    }

    pub fn delayed(&self, listener: &str) {
        self.delayed
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .inc();
    }
}
