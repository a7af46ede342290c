//! The typed SSL and SASL keys of `kind = "kafka"`, checked and mapped to
//! the librdkafka properties every client of the backend gets (producer,
//! consumers, admin). librdkafka is built with OpenSSL (`ssl` feature), which
//! also brings SASL SCRAM; PLAIN is always built in.

use std::path::Path;

use crate::bridge::registry::SettingError;
use crate::config::KafkaBackend;

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The properties the typed keys set, and every problem with them.
pub(super) fn settings(cfg: &KafkaBackend) -> (Vec<(&'static str, &str)>, Vec<SettingError>) {
    let mut set = Vec::new();
    let mut errors = Vec::new();
    let protocol = cfg.security_protocol.as_str();
    if !protocol.is_empty() {
        if PROTOCOLS.contains(&protocol) {
            set.push(("security.protocol", protocol));
        } else {
            errors.push(SettingError::new(
                "security_protocol",
                format!("{protocol:?} is not one of {}", PROTOCOLS.join(", ")),
            ));
        }
    }
    let files = [
        ("ssl_ca_file", "ssl.ca.location", &cfg.ssl_ca_file),
        (
            "ssl_certificate_file",
            "ssl.certificate.location",
            &cfg.ssl_certificate_file,
        ),
        ("ssl_key_file", "ssl.key.location", &cfg.ssl_key_file),
    ];
    for (key, property, file) in files {
        let Some(path) = file.as_deref() else {
            continue;
        };
        match readable(path) {
            Ok(path) => set.push((property, path)),
            Err(e) => errors.push(SettingError::new(key, e)),
        }
    }
    if cfg.ssl_certificate_file.is_some() != cfg.ssl_key_file.is_some() {
        errors.push(SettingError::new(
            "ssl_key_file",
            "ssl_certificate_file and ssl_key_file go together",
        ));
    }
    let sasl = protocol.starts_with("sasl_");
    let mechanism = cfg.sasl_mechanism.as_str();
    if !mechanism.is_empty() {
        if !MECHANISMS.contains(&mechanism) {
            errors.push(SettingError::new(
                "sasl_mechanism",
                format!("{mechanism:?} is not one of {}", MECHANISMS.join(", ")),
            ));
        } else {
            set.push(("sasl.mechanism", mechanism));
        }
    }
    if !cfg.sasl_username.is_empty() {
        set.push(("sasl.username", cfg.sasl_username.as_str()));
    }
    let secrets = [
        (
            "ssl_key_password",
            "ssl.key.password",
            &cfg.ssl_key_password,
        ),
        ("sasl_password", "sasl.password", &cfg.sasl_password),
    ];
    for (key, property, secret) in secrets {
        if let Some(problem) = secret.problem() {
            errors.push(SettingError::new(key, problem));
        } else if !secret.is_empty() {
            set.push((property, secret.expose()));
        }
    }
    let sasl_keys =
        !mechanism.is_empty() || !cfg.sasl_username.is_empty() || !cfg.sasl_password.is_empty();
    if sasl_keys && !sasl {
        errors.push(SettingError::new(
            "security_protocol",
            "SASL keys are set: use sasl_plaintext or sasl_ssl",
        ));
    }
    if sasl && (mechanism.is_empty() || cfg.sasl_username.is_empty()) {
        errors.push(SettingError::new(
            "sasl_mechanism",
            "a SASL protocol needs sasl_mechanism and sasl_username",
        ));
    }
    (set, errors)
}

/// The path as librdkafka takes it, if it names a readable file.
fn readable(path: &Path) -> Result<&str, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    match std::fs::File::open(path) {
        Ok(_) => Ok(text),
        Err(e) => Err(format!("{text}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn sasl_ssl_maps_to_librdkafka_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").expect("write");
        let cfg = KafkaBackend {
            security_protocol: "sasl_ssl".into(),
            ssl_ca_file: Some(ca.clone()),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: "gw".into(),
            sasl_password: Secret::new("pw"),
            ..KafkaBackend::default()
        };
        let (set, errors) = settings(&cfg);
        assert!(errors.is_empty(), "{errors:?}");
        let get = |k| set.iter().find(|(p, _)| *p == k).map(|(_, v)| *v);
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("ssl.ca.location"), ca.to_str());
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.username"), Some("gw"));
        assert_eq!(get("sasl.password"), Some("pw"));
    }

    #[test]
    fn every_mistake_is_reported() {
        let cfg = KafkaBackend {
            security_protocol: "tls".into(),
            ssl_ca_file: Some("/nonexistent/ca.pem".into()),
            ssl_certificate_file: Some("/nonexistent/c.pem".into()),
            sasl_mechanism: "GSSAPI".into(),
            ..KafkaBackend::default()
        };
        let (_, errors) = settings(&cfg);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "security_protocol",
            "ssl_ca_file",
            "ssl_certificate_file",
            "ssl_key_file",
            "sasl_mechanism",
        ] {
            assert!(keys.contains(&key), "{key} not in {keys:?}");
        }
    }
}
