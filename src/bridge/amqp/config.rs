//! `kind = "amqp"` settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// `kind = "amqp"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBackend {
    /// Name routes use to refer to this backend.
    pub name: String,
    /// AMQP URI, e.g. "amqp://guest:guest@127.0.0.1:5672/%2f", or
    /// "amqps://..." for TLS. A secret as a whole: it may hold the password.
    pub uri: Secret,
    /// Replaces the URI's password, so the URI need hold none (a secret:
    /// a string, `{ file = "PATH" }` or `{ env = "NAME" }`).
    #[serde(default)]
    pub password: Secret,
    /// amqps: PEM CA bundle trusted besides the system roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// amqps: client certificate chain (PEM), with `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// amqps: the client certificate's private key (PEM: PKCS#8, PKCS#1 or
    /// SEC1, unencrypted).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
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

/// The defaults serde uses (for building one in code).
impl Default for AmqpBackend {
    fn default() -> AmqpBackend {
        AmqpBackend {
            name: String::new(),
            uri: Secret::default(),
            password: Secret::default(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            exchange: String::new(),
            exchange_kind: default_exchange_kind(),
            declare_exchange: false,
            persistent: true,
            mandatory: true,
        }
    }
}

fn default_exchange_kind() -> String {
    "topic".into()
}
fn yes() -> bool {
    true
}
