//! `[[mqtt.listeners]]`: the listeners beside the plain TCP `mqtt.listen`
//! (TLS, WebSocket, secure WebSocket, more TCP), checked into
//! [`ListenerSpec`]s. The TLS files are read and checked here too, so a
//! missing certificate or a key that does not match is a config error
//! before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Name the plain TCP listener of `mqtt.listen` has in metrics and logs.
pub const TCP_LISTENER: &str = "tcp";

/// Authentication method names a listener's `auth` may list (section 2 of
/// docs/security.md; implemented by the auth module).
pub const AUTH_METHODS: &[&str] = &["password_file", "certificate", "jwt"];

/// WebSocket path when a `ws`/`wss` listener sets none.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// One `[[mqtt.listeners]]` entry, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The `listener` label in metrics and logs: 1 to 32 of `[a-z0-9_]`, unique.
    pub name: String,
    /// `tcp`, `tls`, `ws` or `wss`.
    pub kind: String,
    /// `IP:PORT` to bind.
    pub listen: String,
    /// `tls`/`wss`: PEM certificate chain, leaf first.
    #[serde(default)]
    pub cert_file: String,
    /// `tls`/`wss`: PEM private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    #[serde(default)]
    pub key_file: String,
    /// `tls`/`wss`: PEM bundle of the CAs client certificates must chain to.
    #[serde(default)]
    pub client_ca_file: String,
    /// `none`, `optional` or `required` (the last two need `client_ca_file`).
    #[serde(default = "default_client_certificates")]
    pub client_certificates: String,
    /// `1.2` or `1.3`.
    #[serde(default = "default_min_tls_version")]
    pub min_tls_version: String,
    /// `ws`/`wss`: the HTTP path of the upgrade; empty = `/mqtt`.
    #[serde(default)]
    pub path: String,
    /// Authentication methods for this listener, replacing `auth.methods`.
    #[serde(default)]
    pub auth: Option<Vec<String>>,
    /// Replaces `auth.allow_anonymous` for this listener.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
}

fn default_client_certificates() -> String {
    "none".to_owned()
}

fn default_min_tls_version() -> String {
    "1.2".to_owned()
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// Whether TLS runs under MQTT (or under the WebSocket).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether MQTT runs inside WebSocket messages.
    pub fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    None,
    /// Verified when presented; a client without one is let through to CONNECT.
    Optional,
    /// The TLS handshake fails without a valid one.
    Required,
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// The TLS part of a checked listener: file names, re-read on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_certificates: ClientCertificates,
    pub min_version: TlsVersion,
}

/// A checked listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    /// Set for `tls` and `wss`.
    pub tls: Option<TlsSpec>,
    /// `ws`/`wss`: the upgrade path.
    pub path: String,
    pub auth: Option<Vec<String>>,
    pub allow_anonymous: Option<bool>,
}

impl ListenerSpec {
    /// The plain TCP listener of `mqtt.listen`.
    pub fn plain_tcp(addr: SocketAddr) -> ListenerSpec {
        ListenerSpec {
            name: TCP_LISTENER.into(),
            kind: ListenerKind::Tcp,
            addr,
            tls: None,
            path: String::new(),
            auth: None,
            allow_anonymous: None,
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks every entry; `tcp_on` says whether `mqtt.listen` holds the name `tcp`.
pub(super) fn check(
    entries: &[ListenerConfig],
    tcp_on: bool,
) -> Result<Vec<ListenerSpec>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, l) in entries.iter().enumerate() {
        let key = |field: &str| format!("mqtt.listeners[{i}].{field}");
        let mut bad =
            |field: &str, reason: String| errors.push(ConfigError::at(key(field), reason));
        if !valid_name(&l.name) {
            bad("name", format!("{:?}: use 1 to 32 of a-z 0-9 _", l.name));
        } else if names.contains(&l.name.as_str()) || (tcp_on && l.name == TCP_LISTENER) {
            bad("name", format!("{:?} is taken by another listener", l.name));
        }
        names.push(&l.name);
        let kind = match l.kind.as_str() {
            "tcp" => Some(ListenerKind::Tcp),
            "tls" => Some(ListenerKind::Tls),
            "ws" => Some(ListenerKind::Ws),
            "wss" => Some(ListenerKind::Wss),
            other => {
                bad("kind", format!("{other:?}: expected tcp, tls, ws or wss"));
                None
            }
        };
        let addr = l.listen.parse::<SocketAddr>().ok();
        if addr.is_none() {
            bad(
                "listen",
                format!("invalid socket address {:?} (expected IP:PORT)", l.listen),
            );
        }
        let client_certificates = match l.client_certificates.as_str() {
            "none" => Some(ClientCertificates::None),
            "optional" => Some(ClientCertificates::Optional),
            "required" => Some(ClientCertificates::Required),
            other => {
                bad(
                    "client_certificates",
                    format!("{other:?}: expected none, optional or required"),
                );
                None
            }
        };
        let min_version = match l.min_tls_version.as_str() {
            "1.2" => Some(TlsVersion::V1_2),
            "1.3" => Some(TlsVersion::V1_3),
            other => {
                bad(
                    "min_tls_version",
                    format!("{other:?}: expected \"1.2\" or \"1.3\""),
                );
                None
            }
        };
        if let Some(methods) = &l.auth {
            for m in methods {
                if !AUTH_METHODS.contains(&m.as_str()) {
                    bad(
                        "auth",
                        format!("unknown method {m:?} (expected one of {AUTH_METHODS:?})"),
                    );
                }
            }
            // Nothing could ever be verified: a configuration mistake.
            let verifies = kind.is_some_and(ListenerKind::is_tls)
                && client_certificates.is_some_and(|c| c != ClientCertificates::None);
            if methods.iter().any(|m| m == "certificate") && !verifies {
                bad(
                    "auth",
                    "method \"certificate\" needs client_certificates = \"optional\" or \"required\" (kind tls or wss)".into(),
                );
            }
        }
        let is_tls = kind.is_some_and(ListenerKind::is_tls);
        let is_ws = kind.is_some_and(ListenerKind::is_ws);
        if !is_tls {
            for (field, value) in [
                ("cert_file", &l.cert_file),
                ("key_file", &l.key_file),
                ("client_ca_file", &l.client_ca_file),
            ] {
                if !value.is_empty() {
                    bad(field, "only for kind tls or wss".into());
                }
            }
            if client_certificates.is_some_and(|c| c != ClientCertificates::None) {
                bad("client_certificates", "only for kind tls or wss".into());
            }
        }
        if !is_ws && !l.path.is_empty() {
            bad("path", "only for kind ws or wss".into());
        }
        if is_ws && !l.path.is_empty() && !l.path.starts_with('/') {
            bad("path", format!("{:?} must start with /", l.path));
        }
        let mut tls = None;
        if let (true, Some(client_certificates), Some(min_version)) =
            (is_tls, client_certificates, min_version)
        {
            for (field, value) in [("cert_file", &l.cert_file), ("key_file", &l.key_file)] {
                if value.is_empty() {
                    bad(field, "required for kind tls and wss".into());
                }
            }
            let ca_needed = client_certificates != ClientCertificates::None;
            if ca_needed && l.client_ca_file.is_empty() {
                bad(
                    "client_ca_file",
                    "required when client_certificates is optional or required".into(),
                );
            }
            if !ca_needed && !l.client_ca_file.is_empty() {
                bad(
                    "client_ca_file",
                    "set client_certificates to optional or required to use it".into(),
                );
            }
            let spec = TlsSpec {
                cert_file: PathBuf::from(&l.cert_file),
                key_file: PathBuf::from(&l.key_file),
                client_ca_file: (!l.client_ca_file.is_empty())
                    .then(|| PathBuf::from(&l.client_ca_file)),
                client_certificates,
                min_version,
            };
            if !l.cert_file.is_empty() && !l.key_file.is_empty() {
                if let Err(e) = crate::mqtt::transport::tls::load(&spec) {
                    bad(e.field(), e.to_string());
                }
            }
            tls = Some(spec);
        }
        if let (Some(kind), Some(addr)) = (kind, addr) {
            specs.push(ListenerSpec {
                name: l.name.as_str().into(),
                kind,
                addr,
                tls,
                path: match (is_ws, l.path.is_empty()) {
                    (true, true) => DEFAULT_WS_PATH.to_owned(),
                    _ => l.path.clone(),
                },
                auth: l.auth.clone(),
                allow_anonymous: l.allow_anonymous,
            });
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            kind: kind.into(),
            listen: "127.0.0.1:0".into(),
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_certificates: default_client_certificates(),
            min_tls_version: default_min_tls_version(),
            path: String::new(),
            auth: None,
            allow_anonymous: None,
        }
    }

    fn problems(entries: &[ListenerConfig]) -> Vec<String> {
        match check(entries, true) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn good_entries_are_checked_into_specs() {
        let mut ws = entry("web", "ws");
        ws.auth = Some(vec!["password_file".into(), "jwt".into()]);
        ws.allow_anonymous = Some(false);
        let specs = check(&[entry("second", "tcp"), ws], true).expect("valid");
        assert_eq!(specs[0].kind, ListenerKind::Tcp);
        assert_eq!(specs[1].path, DEFAULT_WS_PATH);
        assert_eq!(specs[1].auth.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(specs[1].allow_anonymous, Some(false));
    }

    #[test]
    fn every_problem_names_its_key() {
        let mut bad_tcp = entry("Bad-Name", "tcp");
        bad_tcp.cert_file = "x.pem".into();
        bad_tcp.path = "/mqtt".into();
        let mut bad_tls = entry("tls", "tls");
        bad_tls.client_certificates = "required".into();
        bad_tls.min_tls_version = "1.1".into();
        let mut bad_ws = entry("web", "ws");
        bad_ws.path = "mqtt".into();
        bad_ws.listen = "localhost:80".into();
        bad_ws.auth = Some(vec!["ldap".into(), "certificate".into()]);
        let got = problems(&[
            bad_tcp,
            entry("tcp", "tcp"),
            entry("dup", "quic"),
            entry("dup", "tcp"),
            bad_tls,
            bad_ws,
        ]);
        for want in [
            "mqtt.listeners[0].name: \"Bad-Name\"",
            "mqtt.listeners[0].cert_file: only for kind tls or wss",
            "mqtt.listeners[0].path: only for kind ws or wss",
            "mqtt.listeners[1].name: \"tcp\" is taken",
            "mqtt.listeners[2].kind: \"quic\"",
            "mqtt.listeners[3].name: \"dup\" is taken",
            "mqtt.listeners[4].min_tls_version: \"1.1\"",
            "mqtt.listeners[5].path: \"mqtt\" must start with /",
            "mqtt.listeners[5].listen: invalid socket address",
            "mqtt.listeners[5].auth: unknown method \"ldap\"",
            "mqtt.listeners[5].auth: method \"certificate\" needs client_certificates",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "{want} not in {got:#?}"
            );
        }
    }

    #[test]
    fn tls_needs_its_files_and_a_ca_for_client_certificates() {
        let mut tls = entry("tls", "tls");
        tls.client_certificates = "optional".into();
        let got = problems(&[tls]);
        for want in [
            "mqtt.listeners[0].cert_file: required",
            "mqtt.listeners[0].key_file: required",
            "mqtt.listeners[0].client_ca_file: required when",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "{want} not in {got:#?}"
            );
        }
        let mut missing = entry("wss", "wss");
        missing.cert_file = "/nonexistent/chain.pem".into();
        missing.key_file = "/nonexistent/key.pem".into();
        let got = problems(&[missing]);
        assert!(
            got.iter()
                .any(|g| g
                    .starts_with("mqtt.listeners[0].cert_file: reading /nonexistent/chain.pem")),
            "{got:#?}"
        );
    }
}
