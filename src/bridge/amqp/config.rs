//! `kind = "amqp"` settings.

use serde::{Deserialize, Serialize};

/// `kind = "amqp"`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBackend {
    /// Name routes use to refer to this backend.
    pub name: String,
    /// AMQP URI, e.g. "amqp://guest:guest@127.0.0.1:5672/%2f".
    pub uri: String,
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

/// By hand: the URI's password must not reach logs.
impl std::fmt::Debug for AmqpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBackend")
            .field("name", &self.name)
            .field("uri", &redact_uri(&self.uri))
            .field("exchange", &self.exchange)
            .field("exchange_kind", &self.exchange_kind)
            .field("declare_exchange", &self.declare_exchange)
            .field("persistent", &self.persistent)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

/// `scheme://user:password@host...` with the password replaced.
pub(crate) fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
            None => uri.to_string(),
        },
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_uri;

    #[test]
    fn the_password_is_redacted() {
        assert_eq!(
            redact_uri("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:<redacted>@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_uri("amqp://127.0.0.1/%2f"), "amqp://127.0.0.1/%2f");
        assert_eq!(redact_uri("amqp://user@host"), "amqp://user@host");
    }
}
