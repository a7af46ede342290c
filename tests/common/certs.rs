//! Certificates made by the test (rcgen), written to a temporary directory:
//! no private key is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A CA that signs server and device certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1: (chain PEM, key PEM).
    pub fn server(&self) -> (String, String) {
        let params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        self.sign(params)
    }

    /// [`Ca::server`] valid until 1 January of `year`.
    pub fn server_until(&self, year: i32) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        self.sign(params)
    }

    /// A device certificate with common name `cn` and SANs
    /// `<cn>.devices.example` (DNS) and `<cn>@devices.example` (email).
    pub fn device(&self, cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec![format!("{cn}.devices.example")]).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names.push(SanType::Rfc822Name(
            format!("{cn}@devices.example").try_into().expect("ia5"),
        ));
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate as `<dir>/<name>`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write(dir, name, &self.pem)
    }
}

/// Writes `contents` to `<dir>/<name>`.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write PEM");
    path
}

/// Writes a (chain, key) pair as `<dir>/<name>.pem` and `<dir>/<name>.key`.
pub fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> (PathBuf, PathBuf) {
    (
        write(dir, &format!("{name}.pem"), &pair.0),
        write(dir, &format!("{name}.key"), &pair.1),
    )
}

/// A `[[mqtt.listeners]]` entry on 127.0.0.1, port chosen by the system.
pub fn listener(name: &str, kind: &str) -> mqbridge::config::listeners::ListenerConfig {
    mqbridge::config::listeners::ListenerConfig {
        name: name.into(),
        kind: kind.into(),
        listen: "127.0.0.1:0".into(),
        cert_file: String::new(),
        key_file: String::new(),
        client_ca_file: String::new(),
        client_certificates: "none".into(),
        min_tls_version: "1.2".into(),
        path: String::new(),
        auth: None,
        allow_anonymous: None,
    }
}

/// The same entry with the server certificate files set.
pub fn tls_listener(
    name: &str,
    kind: &str,
    server: &(PathBuf, PathBuf),
) -> mqbridge::config::listeners::ListenerConfig {
    let mut l = listener(name, kind);
    l.cert_file = server.0.display().to_string();
    l.key_file = server.1.display().to_string();
    l
}
