//! `[auth.jwt]`: how JWTs in the CONNECT password are verified. The key
//! files are read at validation, so a bad key stops start-up naming its key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::auth::jwt::{JwtVerifier, Keys};

/// Shortest HS256 secret accepted, in bytes (RFC 7518 3.2: at least the
/// hash size).
pub const MIN_HS256_SECRET: usize = 32;

/// `[auth.jwt]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`: the only algorithm accepted.
    pub algorithm: String,
    /// HS256: file holding the shared secret (one trailing newline ignored).
    pub secret_file: PathBuf,
    /// RS256 / ES256: PEM public key file.
    pub public_key_file: PathBuf,
    /// RS256 / ES256: JWKS file instead; the token's `kid` picks the key.
    pub jwks_file: PathBuf,
    /// Claim whose (string) value is the user name.
    pub username_claim: String,
    /// Claim that, when set here and present in a token, must equal the
    /// client id; empty = not checked.
    pub client_id_claim: String,
    /// Required `iss`; empty = not checked.
    pub issuer: String,
    /// Required `aud`; empty = not checked.
    pub audience: String,
    /// Clock skew allowed on `exp` / `nbf`, in seconds (<= 3600).
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: "RS256".into(),
            secret_file: PathBuf::new(),
            public_key_file: PathBuf::new(),
            jwks_file: PathBuf::new(),
            username_claim: "sub".into(),
            client_id_claim: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
        }
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl JwtConfig {
    pub(super) fn validate(&self) -> Result<JwtVerifier, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        let algorithm = match self.algorithm.as_str() {
            "HS256" => Some(Algorithm::HS256),
            "RS256" => Some(Algorithm::RS256),
            "ES256" => Some(Algorithm::ES256),
            other => {
                errors.push(ConfigError::invalid(
                    "auth.jwt.algorithm",
                    format!("{other:?} is not supported (HS256, RS256 or ES256)"),
                ));
                None
            }
        };
        if self.username_claim.is_empty() {
            errors.push(ConfigError::invalid(
                "auth.jwt.username_claim",
                "must not be empty",
            ));
        }
        if self.leeway_secs > 3600 {
            errors.push(ConfigError::invalid(
                "auth.jwt.leeway_secs",
                format!("{} is out of range 0..=3600", self.leeway_secs),
            ));
        }
        let keys = match algorithm {
            Some(Algorithm::HS256) => {
                if set(&self.public_key_file) || set(&self.jwks_file) {
                    errors.push(ConfigError::invalid(
                        "auth.jwt.algorithm",
                        "HS256 takes secret_file only (public_key_file / jwks_file are for RS256 and ES256)",
                    ));
                }
                self.secret().map_err(|e| errors.push(e)).ok()
            }
            Some(alg) => {
                if set(&self.secret_file) {
                    errors.push(ConfigError::invalid(
                        "auth.jwt.secret_file",
                        format!("not used with {alg:?} (a public key must not double as an HMAC secret)"),
                    ));
                }
                match (set(&self.public_key_file), set(&self.jwks_file)) {
                    (true, false) => self.pem(alg).map_err(|e| errors.push(e)).ok(),
                    (false, true) => self.jwks(alg).map_err(|e| errors.push(e)).ok(),
                    _ => {
                        errors.push(ConfigError::invalid(
                            "auth.jwt.public_key_file",
                            format!("{alg:?} needs exactly one of public_key_file and jwks_file"),
                        ));
                        None
                    }
                }
            }
            None => None,
        };
        match (algorithm, keys) {
            (Some(alg), Some(keys)) if errors.is_empty() => Ok(JwtVerifier::new(
                alg,
                keys,
                self.username_claim.clone(),
                opt(&self.client_id_claim),
                opt(&self.issuer),
                opt(&self.audience),
                self.leeway_secs,
            )),
            _ => Err(errors),
        }
    }

    fn secret(&self) -> Result<Keys, ConfigError> {
        const KEY: &str = "auth.jwt.secret_file";
        if self.secret_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid(KEY, "required by HS256"));
        }
        let mut secret = read(KEY, &self.secret_file)?;
        if secret.ends_with(b"\n") {
            secret.pop();
            if secret.ends_with(b"\r") {
                secret.pop();
            }
        }
        if secret.len() < MIN_HS256_SECRET {
            return Err(ConfigError::invalid(
                KEY,
                format!("the secret is shorter than {MIN_HS256_SECRET} bytes"),
            ));
        }
        DecodingKey::from_secret(&secret)
            .map(Keys::One)
            .map_err(|e| ConfigError::invalid(KEY, format!("unusable secret: {e}")))
    }

    fn pem(&self, alg: Algorithm) -> Result<Keys, ConfigError> {
        const KEY: &str = "auth.jwt.public_key_file";
        let pem = read(KEY, &self.public_key_file)?;
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            _ => DecodingKey::from_ec_pem(&pem),
        };
        key.map(Keys::One).map_err(|e| {
            ConfigError::invalid(
                KEY,
                format!(
                    "{}: not a PEM public key for {alg:?}: {e}",
                    self.public_key_file.display()
                ),
            )
        })
    }

    /// The keys of the set that fit `alg` (others, e.g. encryption keys,
    /// are skipped); at least one, each with a `kid` when there are several.
    fn jwks(&self, alg: Algorithm) -> Result<Keys, ConfigError> {
        const KEY: &str = "auth.jwt.jwks_file";
        let text = read(KEY, &self.jwks_file)?;
        let bad =
            |why: String| ConfigError::invalid(KEY, format!("{}: {why}", self.jwks_file.display()));
        let set: JwkSet =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a JWKS: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg_ok = jwk
                .common
                .key_algorithm
                .is_none_or(|a| a.to_string() == format!("{alg:?}"));
            if key.family() != alg.family() || !alg_ok {
                continue;
            }
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(kid, key);
        }
        if keys.is_empty() {
            return Err(bad(format!("no {alg:?} key in the set")));
        }
        if keys.len() > 1 && keys.contains_key("") {
            return Err(bad("a key without kid in a set of several".into()));
        }
        Ok(Keys::Set(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(cfg: &JwtConfig) -> Vec<String> {
        cfg.validate()
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn keys_must_fit_the_one_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too-short\n").unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let cases: Vec<(JwtConfig, &str)> = vec![
            (
                JwtConfig {
                    algorithm: "HS256".into(),
                    ..JwtConfig::default()
                },
                "auth.jwt.secret_file: required",
            ),
            (
                JwtConfig {
                    algorithm: "HS256".into(),
                    secret_file: short.clone(),
                    ..JwtConfig::default()
                },
                "shorter than 32 bytes",
            ),
            (
                JwtConfig {
                    algorithm: "RS256".into(),
                    secret_file: short.clone(),
                    public_key_file: junk.clone(),
                    ..JwtConfig::default()
                },
                "auth.jwt.secret_file: not used with RS256",
            ),
            (JwtConfig::default(), "needs exactly one of"),
            (
                JwtConfig {
                    algorithm: "ES256".into(),
                    public_key_file: junk.clone(),
                    ..JwtConfig::default()
                },
                "not a PEM public key",
            ),
            (
                JwtConfig {
                    algorithm: "none".into(),
                    ..JwtConfig::default()
                },
                "auth.jwt.algorithm",
            ),
            (
                JwtConfig {
                    algorithm: "RS256".into(),
                    jwks_file: junk.clone(),
                    ..JwtConfig::default()
                },
                "not a JWKS",
            ),
        ];
        for (cfg, want) in cases {
            let p = problems(&cfg);
            assert!(p.iter().any(|e| e.contains(want)), "{want}: {p:?}");
        }
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
        let cfg = JwtConfig {
            algorithm: "HS256".into(),
            secret_file: good,
            ..JwtConfig::default()
        };
        let v = cfg.validate().expect("valid");
        assert!(!format!("{v:?}").contains("0123456789abcdef"), "{v:?}");
    }
}
