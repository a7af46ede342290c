//! `[auth]`: who may connect (docs/security.md section 2). Validation reads
//! the password file, so a malformed line stops start-up with its line
//! number, before any port is bound.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::jwt::JwtConfig;
use super::listeners::{ListenerConfig, TCP_LISTENER};
use super::{ConfigError, MAX_DURATION_SECS};
use crate::auth::failures::Policy;
use crate::auth::jwt::JwtVerifier;
use crate::auth::password::PasswordFile;

/// `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Ordered authentication methods; the first that accepts wins. Known:
    /// `password_file`, `certificate`, `jwt`. Empty: no verification, the CONNECT user name is
    /// taken as given (the embedded default).
    pub methods: Vec<String>,
    /// Whether a client that presents no credentials at all may connect.
    pub allow_anonymous: bool,
    /// Mosquitto-format password file (`$6$` / `$7$`); required by the
    /// `password_file` method.
    pub password_file: PathBuf,
    /// Client-id binding: `any`, `username` or `username_prefix`.
    pub client_id: String,
    /// What of a verified client certificate is the user name (the
    /// `certificate` method): `cn`, `san_dns`, `san_email` or `san_uri`.
    pub certificate_username: String,
    /// `$7$` hashes verified at once on blocking threads; 0 = CPU count.
    pub verify_concurrency: usize,
    /// Failures per address before refusals are delayed (>= 1).
    pub failure_delay_after: u32,
    /// Longest delay of a refusal, in milliseconds (<= 60000).
    pub failure_delay_max_ms: u64,
    /// Seconds after which an address's failures start to be forgotten.
    pub failure_window_secs: u64,
    /// Failures after which the address is refused before CONNECT for
    /// `ban_secs`; 0 = never.
    pub ban_after: u32,
    /// Seconds a ban lasts.
    pub ban_secs: u64,
    /// Addresses whose failures are tracked at once (> 0).
    pub max_tracked_addresses: usize,
    /// JWT verification (`[auth.jwt]`), used by the `jwt` method.
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            methods: Vec::new(),
            allow_anonymous: true,
            password_file: PathBuf::new(),
            client_id: "any".into(),
            certificate_username: "cn".into(),
            verify_concurrency: 0,
            failure_delay_after: 3,
            failure_delay_max_ms: 10_000,
            failure_window_secs: 300,
            ban_after: 0,
            ban_secs: 300,
            max_tracked_addresses: 65_536,
            jwt: JwtConfig::default(),
        }
    }
}

/// An authentication method of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    PasswordFile,
    Certificate,
    Jwt,
}

impl Method {
    pub const ALL: &'static [Method] = &[Method::PasswordFile, Method::Certificate, Method::Jwt];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::PasswordFile => "password_file",
            Method::Certificate => "certificate",
            Method::Jwt => "jwt",
        }
    }

    fn parse(s: &str) -> Option<Method> {
        Method::ALL.iter().copied().find(|m| m.as_str() == s)
    }
}

/// `auth.certificate_username`: which field of the client certificate is
/// the user name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CertificateName {
    #[default]
    CommonName,
    SanDns,
    SanEmail,
    SanUri,
}

/// The authentication a listener applies: its own `auth` /
/// `allow_anonymous`, or the `[auth]` defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAuth {
    pub methods: Vec<Method>,
    pub allow_anonymous: bool,
}

/// `auth.client_id`: which client ids an identity may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIdBinding {
    #[default]
    Any,
    Username,
    UsernamePrefix,
}

/// `[auth]`, checked.
#[derive(Debug, Clone)]
pub struct ValidAuth {
    pub methods: Vec<Method>,
    pub allow_anonymous: bool,
    /// Listeners that override `methods` or `allow_anonymous`, by name.
    pub listeners: HashMap<String, ListenerAuth>,
    pub certificate_username: CertificateName,
    pub password_file: Option<Arc<PasswordFile>>,
    /// Present when the `jwt` method is listed.
    pub jwt: Option<Arc<JwtVerifier>>,
    pub client_id: ClientIdBinding,
    pub verify_concurrency: usize,
    pub failures: Policy,
}

impl ValidAuth {
    /// What `listener` applies.
    pub fn for_listener(&self, listener: &str) -> ListenerAuth {
        self.listeners
            .get(listener)
            .cloned()
            .unwrap_or_else(|| ListenerAuth {
                methods: self.methods.clone(),
                allow_anonymous: self.allow_anonymous,
            })
    }
}

/// Parses a list of method names; each problem is named `key[i]`.
fn parse_methods(key: &str, names: &[String], errors: &mut Vec<ConfigError>) -> Vec<Method> {
    let mut methods = Vec::new();
    for (i, m) in names.iter().enumerate() {
        match Method::parse(m) {
            Some(k) if methods.contains(&k) => errors.push(ConfigError::at(
                format!("{key}[{i}]"),
                format!("{m:?} is listed twice"),
            )),
            Some(k) => methods.push(k),
            None => errors.push(ConfigError::at(
                format!("{key}[{i}]"),
                format!("unknown method {m:?} (known: password_file, certificate, jwt)"),
            )),
        }
    }
    methods
}

impl AuthConfig {
    /// Checks `[auth]` with the listeners' overrides (`mqtt.listeners[i].auth`
    /// and `.allow_anonymous`): the files a method needs are read when any
    /// listener uses it.
    pub fn validate(&self, listeners: &[ListenerConfig]) -> Result<ValidAuth, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let methods = parse_methods("auth.methods", &self.methods, &mut errors);
        let mut overrides = HashMap::new();
        let mut used = methods.clone();
        let tcp_uses_defaults = std::iter::once((TCP_LISTENER, None, None));
        let listed = listeners
            .iter()
            .map(|l| (l.name.as_str(), l.auth.as_ref(), l.allow_anonymous));
        for (i, (name, auth, anonymous)) in tcp_uses_defaults.chain(listed).enumerate() {
            let key = format!("mqtt.listeners[{}]", i.saturating_sub(1));
            let own = auth.map(|a| parse_methods(&format!("{key}.auth"), a, &mut errors));
            let effective = ListenerAuth {
                methods: own.clone().unwrap_or_else(|| methods.clone()),
                allow_anonymous: anonymous.unwrap_or(self.allow_anonymous),
            };
            if effective.methods.is_empty() && !effective.allow_anonymous {
                errors.push(if i == 0 || (own.is_none() && anonymous.is_none()) {
                    ConfigError::invalid(
                        "auth.allow_anonymous",
                        "false with no auth.methods: nobody could connect",
                    )
                } else {
                    ConfigError::at(
                        format!("{key}.allow_anonymous"),
                        "false with no authentication method: nobody could connect",
                    )
                });
            }
            used.extend(effective.methods.iter().copied());
            if own.is_some() || anonymous.is_some() {
                overrides.insert(name.to_string(), effective);
            }
        }
        errors.dedup_by(|a, b| a.to_string() == b.to_string());
        let certificate_username = match self.certificate_username.as_str() {
            "cn" => CertificateName::CommonName,
            "san_dns" => CertificateName::SanDns,
            "san_email" => CertificateName::SanEmail,
            "san_uri" => CertificateName::SanUri,
            other => {
                errors.push(ConfigError::invalid(
                    "auth.certificate_username",
                    format!("{other:?}: expected cn, san_dns, san_email or san_uri"),
                ));
                CertificateName::CommonName
            }
        };
        let methods_used = used;
        let wants_file = methods_used.contains(&Method::PasswordFile);
        let password_file = match (wants_file, self.password_file.as_os_str().is_empty()) {
            (true, true) => {
                errors.push(ConfigError::invalid(
                    "auth.password_file",
                    "required by the password_file method",
                ));
                None
            }
            (_, false) => match PasswordFile::read(&self.password_file) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) => {
                    errors.push(ConfigError::invalid(
                        "auth.password_file",
                        format!("{}: {}", self.password_file.display(), chain(&e)),
                    ));
                    None
                }
            },
            (false, true) => None,
        };
        let jwt = if methods_used.contains(&Method::Jwt) {
            match self.jwt.validate() {
                Ok(v) => Some(Arc::new(v)),
                Err(problems) => {
                    errors.extend(problems);
                    None
                }
            }
        } else {
            None
        };
        let client_id = match self.client_id.as_str() {
            "any" => ClientIdBinding::Any,
            "username" => ClientIdBinding::Username,
            "username_prefix" => ClientIdBinding::UsernamePrefix,
            other => {
                errors.push(ConfigError::invalid(
                    "auth.client_id",
                    format!(
                        "unknown binding {other:?} (expected any, username or username_prefix)"
                    ),
                ));
                ClientIdBinding::Any
            }
        };
        if self.failure_delay_after == 0 {
            errors.push(ConfigError::invalid(
                "auth.failure_delay_after",
                "must be greater than 0",
            ));
        }
        if self.failure_delay_max_ms > 60_000 {
            errors.push(ConfigError::invalid(
                "auth.failure_delay_max_ms",
                format!("{} is out of range 0..=60000", self.failure_delay_max_ms),
            ));
        }
        for (key, v) in [
            ("auth.failure_window_secs", self.failure_window_secs),
            ("auth.ban_secs", self.ban_secs),
        ] {
            if v == 0 || v > MAX_DURATION_SECS {
                errors.push(ConfigError::invalid(
                    key,
                    format!("{v} is out of range 1..={MAX_DURATION_SECS}"),
                ));
            }
        }
        if self.max_tracked_addresses == 0 {
            errors.push(ConfigError::invalid(
                "auth.max_tracked_addresses",
                "must be greater than 0",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ValidAuth {
            methods,
            allow_anonymous: self.allow_anonymous,
            listeners: overrides,
            certificate_username,
            password_file,
            jwt,
            client_id,
            verify_concurrency: match self.verify_concurrency {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            failures: Policy {
                delay_after: self.failure_delay_after,
                delay_max: Duration::from_millis(self.failure_delay_max_ms),
                window: Duration::from_secs(self.failure_window_secs),
                ban_after: self.ban_after,
                ban: Duration::from_secs(self.ban_secs),
                max_tracked: self.max_tracked_addresses,
            },
        })
    }
}

/// `e` and its sources: "cannot read x: No such file or directory".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(cfg: AuthConfig) -> Vec<String> {
        cfg.validate(&[])
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn every_bad_key_is_named() {
        let p = problems(AuthConfig {
            methods: vec!["password_file".into(), "ldap".into()],
            client_id: "mac".into(),
            failure_delay_after: 0,
            ban_secs: 0,
            ..AuthConfig::default()
        });
        let keys = [
            "auth.methods[1]",
            "auth.password_file: required",
            "auth.client_id",
            "auth.failure_delay_after",
            "auth.ban_secs",
        ];
        for k in keys {
            assert!(p.iter().any(|e| e.starts_with(k)), "{k} missing in {p:?}");
        }
        assert_eq!(p.len(), keys.len(), "{p:?}");
        let p = problems(AuthConfig {
            allow_anonymous: false,
            ..AuthConfig::default()
        });
        assert!(p[0].starts_with("auth.allow_anonymous"), "{p:?}");
    }

    #[test]
    fn a_malformed_password_file_names_the_line_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "# devices\ndev1:plaintext-secret\n").unwrap();
        let p = problems(AuthConfig {
            methods: vec!["password_file".into()],
            password_file: path.clone(),
            ..AuthConfig::default()
        });
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("auth.password_file: "), "{p:?}");
        assert!(p[0].contains("line 2"), "{p:?}");
        assert!(!p[0].contains("plaintext-secret"), "{p:?}");
        let p = problems(AuthConfig {
            methods: vec!["password_file".into()],
            password_file: dir.path().join("missing"),
            ..AuthConfig::default()
        });
        assert!(p[0].contains("No such file"), "{p:?}");
    }
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    fn listener(name: &str, auth: Option<&[&str]>, anonymous: Option<bool>) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            kind: "tcp".into(),
            listen: "127.0.0.1:0".into(),
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_certificates: "none".into(),
            min_tls_version: "1.2".into(),
            path: String::new(),
            auth: auth.map(|a| a.iter().map(|m| m.to_string()).collect()),
            allow_anonymous: anonymous,
        }
    }

    #[test]
    fn listeners_override_methods_and_anonymous_access() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "").unwrap();
        let cfg = AuthConfig {
            password_file: file,
            ..AuthConfig::default()
        };
        let ls = [
            listener("fleet", Some(&["password_file"]), Some(false)),
            listener("lab", None, None),
        ];
        let v = cfg.validate(&ls).expect("valid");
        assert_eq!(
            v.for_listener("fleet"),
            ListenerAuth {
                methods: vec![Method::PasswordFile],
                allow_anonymous: false
            }
        );
        assert_eq!(v.for_listener("lab").methods, Vec::<Method>::new());
        assert!(v.for_listener("tcp").allow_anonymous);

        // A listener nobody could connect to, and a method its file is missing for.
        let cfg = AuthConfig::default();
        let ls = [
            listener("x", Some(&[]), Some(false)),
            listener("y", Some(&["password_file"]), None),
        ];
        let p: Vec<String> = cfg
            .validate(&ls)
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            p.iter()
                .any(|e| e.starts_with("mqtt.listeners[0].allow_anonymous")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|e| e.starts_with("auth.password_file: required")),
            "{p:?}"
        );
    }
}
