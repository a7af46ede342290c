//! Where and how an AMQP backend connects: the URI (with the password from
//! its own secret when set) and, for `amqps://`, the TLS material.
//!
//! TLS is rustls (ring) through lapin; the server certificate is checked
//! against the system roots plus `tls_ca_file`, and its name against the
//! URI's host. The files are checked at validation and read again at every
//! connect, so a rotated client certificate applies without a restart.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use crate::bridge::registry::SettingError;
use crate::config::AmqpBackend;

/// A connect that takes longer (e.g. SYNs dropped by a firewall) is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A checked connection target.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    uri: AMQPUri,
    tls: Option<Tls>,
}

#[derive(Debug, Clone)]
struct Tls {
    ca_file: Option<PathBuf>,
    /// Client certificate chain and key, PEM.
    identity: Option<(PathBuf, PathBuf)>,
}

/// Checks the URI, the password and the TLS files; every problem is
/// reported with its key.
pub(crate) fn endpoint(cfg: &AmqpBackend) -> Result<Endpoint, Vec<SettingError>> {
    let mut errors = Vec::new();
    for (key, secret) in [("uri", &cfg.uri), ("password", &cfg.password)] {
        if let Some(problem) = secret.problem() {
            errors.push(SettingError::new(key, problem));
        }
    }
    let mut uri = parse_uri(cfg.uri.expose()).map_err(|e| errors.push(SettingError::new("uri", e)));
    if let Ok(uri) = &mut uri {
        if !cfg.password.expose().is_empty() {
            uri.authority.userinfo.password = cfg.password.expose().to_string();
        }
    }
    let files = [
        ("tls_ca_file", &cfg.tls_ca_file),
        ("tls_cert_file", &cfg.tls_cert_file),
        ("tls_key_file", &cfg.tls_key_file),
    ];
    for (key, file) in files {
        if let Some(e) = file.as_deref().and_then(unreadable) {
            errors.push(SettingError::new(key, e));
        }
    }
    let identity = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) => {
            errors.push(SettingError::new(
                "tls_key_file",
                "needed with tls_cert_file",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(SettingError::new(
                "tls_cert_file",
                "needed with tls_key_file",
            ));
            None
        }
    };
    let wants_tls = cfg.tls_ca_file.is_some() || identity.is_some();
    match uri {
        Ok(uri) if errors.is_empty() => {
            if wants_tls && uri.scheme != AMQPScheme::AMQPS {
                return Err(vec![SettingError::new(
                    "uri",
                    "TLS files are set but the URI is not amqps://",
                )]);
            }
            let tls = (uri.scheme == AMQPScheme::AMQPS).then(|| Tls {
                ca_file: cfg.tls_ca_file.clone(),
                identity,
            });
            Ok(Endpoint { uri, tls })
        }
        _ => Err(errors),
    }
}

/// Parses an AMQP URI; the parser's message may quote the URI, password
/// included, so it is replaced before the message goes anywhere.
fn parse_uri(uri: &str) -> Result<AMQPUri, String> {
    uri.parse()
        .map_err(|e: String| format!("invalid uri: {}", e.replace(uri, "<uri>")))
}

fn unreadable(path: &Path) -> Option<String> {
    std::fs::metadata(path)
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(io::Error::other("not a file"))
            }
        })
        .err()
        .map(|e| format!("{}: {e}", path.display()))
}

impl Endpoint {
    /// Opens a connection named `name` (shown in the broker's management
    /// UI), giving up after [`CONNECT_TIMEOUT`].
    pub(crate) async fn connect(&self, name: String) -> lapin::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        let tls = match &self.tls {
            Some(tls) => tls.load().await?,
            None => OwnedTLSConfig::default(),
        };
        let runtime = lapin::runtime::default_runtime()?;
        let connecting = Connection::connect_uri_with_config(self.uri.clone(), props, tls, runtime);
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

impl Tls {
    /// Reads the files (they may have been rotated since the last connect).
    async fn load(&self) -> io::Result<OwnedTLSConfig> {
        let read = |p: &Path| {
            let p = p.to_path_buf();
            async move {
                tokio::fs::read(&p)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
            }
        };
        let cert_chain =
            match &self.ca_file {
                Some(ca) => Some(String::from_utf8(read(ca).await?).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "CA file is not PEM")
                })?),
                None => None,
            };
        let identity = match &self.identity {
            Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert).await?,
                key: read(key).await?,
            }),
            None => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}
