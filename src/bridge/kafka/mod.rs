//! Kafka (or a Kafka-protocol broker) through librdkafka: both directions
//! and what they share.
//!
//! - [`sink`]: uplink, an idempotent producer confirming on delivery reports.
//! - [`source`]: downlink, a consumer group committing settled offsets.
//! - this file: the operator's `properties` parsed, and librdkafka's log
//!   levels mapped to `tracing`, once for both directions.

mod backend;
pub mod config;
pub mod sink;
pub mod source;

use rdkafka::config::RDKafkaLogLevel;

use crate::bridge::registry::SettingError;
use crate::config::KafkaBackend;

pub use backend::KIND;
pub use sink::start;

/// The operator's `properties`, each `key=value` split at its first `=`
/// and trimmed; every malformed one is reported.
fn properties(cfg: &KafkaBackend) -> Result<Vec<(&str, &str)>, Vec<SettingError>> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (i, p) in cfg.properties.iter().enumerate() {
        match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => parsed.push((k.trim(), v.trim())),
            _ => errors.push(SettingError::new(
                format!("properties[{i}]"),
                format!("{p:?} is not key=value"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// Who a librdkafka client works for, as log fields: the backend (sink) or
/// the downlink route (source).
#[derive(Clone, Copy)]
struct Owner<'a> {
    backend: Option<&'a str>,
    route: Option<&'a str>,
}

/// Forwards one librdkafka log line to `tracing`.
fn forward_log(owner: Owner<'_>, level: RDKafkaLogLevel, fac: &str, message: &str) {
    let Owner { backend, route } = owner;
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(backend, route, "librdkafka {fac}: {message}")
        }
        // librdkafka logs every failed reconnect at "error" level; a broker
        // being away is worth a warning (the client keeps waiting for it),
        // not an alarm each time.
        RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
            tracing::warn!(backend, route, "librdkafka {fac}: {message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(backend, route, "librdkafka {fac}: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(backend, route, "librdkafka {fac}: {message}"),
    }
}
