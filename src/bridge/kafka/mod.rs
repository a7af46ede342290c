//! Kafka (or a Kafka-protocol broker) through librdkafka: both directions
//! and what they share.
//!
//! - [`sink`]: uplink, an idempotent producer confirming on delivery reports.
//! - [`source`]: downlink, a consumer group committing settled offsets.
//! - [`security`]: SSL and SASL keys → librdkafka properties.
//! - this file: the operator's `properties` parsed, and librdkafka's log
//!   levels mapped to `tracing`, once for both directions.

mod backend;
pub mod config;
mod security;
pub mod sink;
pub mod source;

use rdkafka::config::RDKafkaLogLevel;

use crate::bridge::registry::SettingError;
use crate::config::KafkaBackend;

pub use backend::KIND;
pub use sink::start;

/// The librdkafka properties every client of the backend gets: the typed
/// security keys mapped to their librdkafka names, then the operator's
/// `properties`, each `key=value` split at its first `=` and trimmed. Every
/// problem is reported: a malformed property, one that a typed key also
/// sets, an unknown protocol or mechanism, an unreadable file or secret.
pub fn properties(cfg: &KafkaBackend) -> Result<Vec<(&str, &str)>, Vec<SettingError>> {
    let (mut parsed, mut errors) = security::settings(cfg);
    let typed = parsed.len();
    for (i, p) in cfg.properties.iter().enumerate() {
        let key = format!("properties[{i}]");
        match p.split_once('=') {
            Some((k, _)) if parsed[..typed].iter().any(|(t, _)| *t == k.trim()) => {
                errors.push(SettingError::new(
                    key,
                    format!("{} is set by a typed key of this backend", k.trim()),
                ))
            }
            Some((k, v)) if !k.trim().is_empty() => parsed.push((k.trim(), v.trim())),
            _ => errors.push(SettingError::new(key, format!("{p:?} is not key=value"))),
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
