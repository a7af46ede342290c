//! TLS for the `tls` and `wss` listeners (rustls, ring provider): loading
//! the PEM files into a `ServerConfig`, swapping it on reload, and reading
//! the verified client certificate's identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::listeners::{ClientCertificates, TlsSpec, TlsVersion};

/// Why a listener's TLS files could not be turned into a server config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no certificate in the file")]
    Empty { field: &'static str, path: PathBuf },
    #[error("{path}: a CA certificate is not usable")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}")]
    Config {
        field: &'static str,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl TlsError {
    /// The listener field (`cert_file`, `key_file`, `client_ca_file`) at fault.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Read { field, .. }
            | TlsError::Empty { field, .. }
            | TlsError::Config { field, .. } => field,
            TlsError::BadCa { .. } => "client_ca_file",
        }
    }
}

/// A server config and the leaf's notAfter (Unix seconds).
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    pub not_after: i64,
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        field,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            field,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads chain, key and client CAs and builds the config; the key must
/// match the leaf certificate.
pub fn load(spec: &TlsSpec) -> Result<Loaded, TlsError> {
    let chain = certs("cert_file", &spec.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&spec.key_file).map_err(|source| TlsError::Read {
        field: "key_file",
        path: spec.key_file.clone(),
        source,
    })?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| TlsError::Config {
            field: "cert_file",
            what: "the leaf certificate cannot be parsed",
            source: Box::new(e),
        })?;
    // Never the process-wide default provider: two providers in one build
    // make that panic.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match spec.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let config_err = |field, what| {
        move |e: rustls::Error| TlsError::Config {
            field,
            what,
            source: Box::new(e),
        }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(config_err("min_tls_version", "TLS versions"))?;
    let builder = match (&spec.client_ca_file, spec.client_certificates) {
        (Some(ca), ClientCertificates::Optional | ClientCertificates::Required) => {
            let mut roots = RootCertStore::empty();
            for c in certs("client_ca_file", ca)? {
                roots.add(c).map_err(|source| TlsError::BadCa {
                    path: ca.clone(),
                    source,
                })?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if spec.client_certificates == ClientCertificates::Optional {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| TlsError::Config {
                field: "client_ca_file",
                what: "client certificate verifier",
                source: Box::new(e),
            })?;
            builder.with_client_cert_verifier(v)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(config_err(
        "key_file",
        "the key does not match the certificate, or is not usable",
    ))?;
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

/// The TLS state of one listener: the config every new handshake uses,
/// swapped whole on reload (live connections keep theirs).
pub struct TlsState {
    spec: TlsSpec,
    current: ArcSwap<ServerConfig>,
}

impl TlsState {
    pub fn new(spec: TlsSpec, loaded: Loaded) -> TlsState {
        TlsState {
            spec,
            current: ArcSwap::new(loaded.config),
        }
    }

    /// The config for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files; swaps in the new config only if all of it loads,
    /// keeping the session cache so resumption survives. Returns the new
    /// leaf's notAfter.
    pub fn reload(&self) -> Result<i64, TlsError> {
        let loaded = load(&self.spec)?;
        let mut config = Arc::unwrap_or_clone(loaded.config);
        config.session_storage = self.current.load().session_storage.clone();
        self.current.store(Arc::new(config));
        Ok(loaded.not_after)
    }
}

/// Who the verified client certificate says the client is (for
/// `use_identity_as_username`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The leaf's subject common name.
    pub common_name: Option<String>,
    pub san_dns: Vec<String>,
    pub san_email: Vec<String>,
    pub san_uri: Vec<String>,
}

impl PeerIdentity {
    /// From the leaf certificate rustls verified.
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut id = PeerIdentity {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            ..PeerIdentity::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => id.san_dns.push((*n).to_owned()),
                    GeneralName::RFC822Name(n) => id.san_email.push((*n).to_owned()),
                    GeneralName::URI(n) => id.san_uri.push((*n).to_owned()),
                    _ => {}
                }
            }
        }
        Some(id)
    }
}

/// Low-cardinality reason of a failed TLS handshake.
pub fn failure_reason(e: &std::io::Error) -> crate::metrics::TlsFailure {
    use crate::metrics::TlsFailure as F;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => F::Closed,
            _ => F::Io,
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => F::NoClientCertificate,
        rustls::Error::InvalidCertificate(_) => F::BadClientCertificate,
        rustls::Error::AlertReceived(_) => F::AlertReceived,
        rustls::Error::PeerIncompatible(_) => F::Incompatible,
        _ => F::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn device(cn: &str) -> (rcgen::Certificate, KeyPair) {
        let mut p = CertificateParams::new(vec![format!("{cn}.example")]).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names.push(SanType::Rfc822Name(
            format!("{cn}@example.org").try_into().expect("ia5"),
        ));
        p.subject_alt_names.push(SanType::URI(
            format!("urn:device:{cn}").try_into().expect("ia5"),
        ));
        let key = KeyPair::generate().expect("key");
        (p.self_signed(&key).expect("cert"), key)
    }

    #[test]
    fn peer_identity_reads_common_name_and_sans() {
        let (cert, _) = device("devA");
        let id = PeerIdentity::from_der(cert.der()).expect("parses");
        assert_eq!(id.common_name.as_deref(), Some("devA"));
        assert_eq!(id.san_dns, ["devA.example"]);
        assert_eq!(id.san_email, ["devA@example.org"]);
        assert_eq!(id.san_uri, ["urn:device:devA"]);
        assert_eq!(PeerIdentity::from_der(b"not a certificate"), None);
    }

    #[test]
    fn load_refuses_a_key_that_is_not_the_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = device("server");
        let (_, other_key) = device("other");
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write");
            p
        };
        let mut spec = TlsSpec {
            cert_file: write("chain.pem", cert.pem()),
            key_file: write("key.pem", key.serialize_pem()),
            client_ca_file: None,
            client_certificates: ClientCertificates::None,
            min_version: TlsVersion::V1_3,
        };
        let loaded = load(&spec).expect("matching pair loads");
        assert!(loaded.not_after > 0);
        spec.key_file = write("other.pem", other_key.serialize_pem());
        let e = load(&spec).err().expect("mismatch refused");
        assert_eq!(e.field(), "key_file");
        spec.cert_file = write("empty.pem", String::new());
        let e = load(&spec).err().expect("no certificate refused");
        assert_eq!(e.field(), "cert_file");
    }
}
