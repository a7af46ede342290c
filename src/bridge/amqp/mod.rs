//! AMQP 0-9-1 (RabbitMQ): both directions and what they share.
//!
//! - [`sink`]: uplink, publishes records with publisher confirms.
//! - [`source`]: downlink, consumes a route's queue with manual acks.
//! - [`endpoint`]: the URI, password and TLS files, checked, and connecting.
//! - this file: short-string limits, which both directions use.

mod backend;
pub mod config;
mod endpoint;
pub mod sink;
pub mod source;

use lapin::types::ShortString;

pub use backend::KIND;
pub(crate) use endpoint::{endpoint, Endpoint};
pub use sink::start;

/// An AMQP short string (names, keys): at most 255 bytes.
pub(crate) fn short(what: &str, s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s)
        .map_err(|_| format!("{what} is {} bytes, AMQP allows at most 255", s.len()))
}
