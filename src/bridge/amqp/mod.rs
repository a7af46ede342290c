//! AMQP 0-9-1 (RabbitMQ): both directions and what they share.
//!
//! - [`sink`]: uplink, publishes records with publisher confirms.
//! - [`source`]: downlink, consumes a route's queue with manual acks.
//! - this file: the URI check, short-string limits and the connect timeout
//!   that both directions use.

mod backend;
pub mod config;
pub mod sink;
pub mod source;

use std::io;
use std::time::Duration;

use lapin::types::{LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

pub use backend::KIND;
pub use sink::start;

/// A connect that takes longer (e.g. SYNs dropped by a firewall) is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses an AMQP URI; the parser's message may quote the URI, password
/// included, so it is replaced before the message goes anywhere.
pub(crate) fn parse_uri(uri: &str) -> Result<AMQPUri, String> {
    let parsed: AMQPUri = uri
        .parse()
        .map_err(|e: String| format!("invalid uri: {}", e.replace(uri, "<uri>")))?;
    if parsed.scheme == AMQPScheme::AMQPS {
        return Err("amqps:// needs TLS, which this build does not include".into());
    }
    Ok(parsed)
}

/// An AMQP short string (names, keys): at most 255 bytes.
pub(crate) fn short(what: &str, s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s)
        .map_err(|_| format!("{what} is {} bytes, AMQP allows at most 255", s.len()))
}

/// Opens a connection named `name` (shown in the broker's management UI),
/// giving up after [`CONNECT_TIMEOUT`].
async fn connect(uri: &AMQPUri, name: String) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri.clone(), props))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}
