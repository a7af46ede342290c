//! Kafka (or a Kafka-protocol broker) through librdkafka: both directions
//! and what they share.
//!
//! - [`sink`]: uplink, an idempotent producer confirming on delivery reports.
//! - [`source`]: downlink, a consumer group committing settled offsets.
//! - this file: librdkafka's log levels mapped to `tracing`, once.

mod backend;
pub mod config;
pub mod sink;
pub mod source;

use rdkafka::config::RDKafkaLogLevel;

pub use backend::KIND;
pub use sink::start;

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
