//! `kind = "amqp"` settings.

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// `kind = "amqp"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBackend {
    /// Name routes use to refer to this backend.
    pub name: String,
    /// AMQP URI, e.g. "amqp://guest:guest@127.0.0.1:5672/%2f". A secret
    /// as a whole: it holds the password.
    pub uri: Secret,
    /// Exchange routes publish to when their `target` is empty.
    #[serde(default)]
    pub exchange: String,
    /// Exchange type when declared: direct, fanout, topic or headers.
    #[serde(default = "default_exchange_kind")]
    pub exchange_kind: String,
    /// Declare the exchange (durable) at start-up.
    #[serde(default)]
    pub declare_exchange: bool,
    /// Delivery mode 2 (persistent) for published messages.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Publish with `mandatory`, so unroutable messages come back and are
    /// reported as rejected instead of vanishing.
    #[serde(default = "yes")]
    pub mandatory: bool,
}

fn default_exchange_kind() -> String {
    "topic".into()
}
fn yes() -> bool {
    true
}
