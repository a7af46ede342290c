//! Authentication at CONNECT (docs/security.md section 2).
//!
//! - [`Auth`]: the chain of `auth.methods`; each method accepts (an
//!   identity), declines (not for it) or refuses; the first that accepts
//!   wins. With no method configured the CONNECT user name is taken
//!   unverified, as before authentication existed.
//! - [`jwt`]: JWTs in the password field.
//! - [`password`]: Mosquitto's `password_file` format and `mqbridge passwd`.
//! - [`failures`]: failures per address, for the refusal delay and bans.
//! - [`metrics`]: the `mqbridge_auth_*` families.

pub mod failures;
pub mod jwt;
pub mod metrics;
pub mod passwd;
pub mod password;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::config::listeners::ListenerConfig;
use crate::config::{AuthConfig, CertificateName, ListenerAuth, Method, ValidAuth};
use crate::mqtt::admission::{LogLimiter, WARN_EVERY};
use crate::mqtt::transport::tls::PeerIdentity;
use failures::{Failures, Penalty};
use metrics::{AuthMetrics, AuthResult};
use password::{Hash, DEFAULT_ITERATIONS};

/// A CONNECT password: never printed (`Debug` shows `***`).
#[derive(Clone)]
pub struct Password(pub bytes::Bytes);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What a CONNECT presents.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The listener's name (the `listener` label).
    pub listener: &'a str,
    pub peer: Option<SocketAddr>,
    pub client_id: &'a str,
    /// The CONNECT user name; `None` when absent or empty.
    pub username: Option<&'a str>,
    pub password: Option<Password>,
    /// The verified client certificate (mTLS listeners).
    pub peer_identity: Option<&'a PeerIdentity>,
}

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMethod {
    /// No method configured: the CONNECT user name, unverified. Binds nothing.
    Unverified,
    /// No credentials, anonymous access allowed.
    Anonymous,
    /// Verified by a method of the chain.
    Verified(Method),
}

impl IdentityMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMethod::Unverified | IdentityMethod::Anonymous => "none",
            IdentityMethod::Verified(m) => m.as_str(),
        }
    }
}

/// Who a client is, as the rest of the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub username: Option<Arc<str>>,
    pub method: IdentityMethod,
}

impl Identity {
    /// The user name if it was verified (what sessions are bound to).
    pub fn verified_username(&self) -> Option<&Arc<str>> {
        match self.method {
            IdentityMethod::Verified(_) => self.username.as_ref(),
            _ => None,
        }
    }
}

/// Why a CONNECT is refused: 3.1.1 0x04 / 5.0 0x86, or 3.1.1 0x05 / 5.0 0x87.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
}

impl Refusal {
    fn result(self) -> AuthResult {
        match self {
            Refusal::BadCredentials => AuthResult::BadCredentials,
            Refusal::NotAuthorized => AuthResult::NotAuthorized,
        }
    }
}

/// What one method said.
enum Verdict {
    Accept(Identity),
    Decline,
    /// Bad credentials.
    Refuse,
    /// Valid credentials that do not allow this CONNECT (a JWT for another
    /// client id).
    Forbid,
}

/// The authentication chain, shared by every connection.
pub struct Auth {
    /// Swapped by [`Auth::reload`]; each CONNECT runs on one snapshot.
    cfg: ArcSwap<ValidAuth>,
    /// What the configuration was validated from, to read the files again.
    source: Option<(AuthConfig, Vec<ListenerConfig>)>,
    failures: Failures,
    /// Bounds the `$7$` verifications running at once: the blocking pool has
    /// hundreds of threads, so this is what bounds the CPU in a reconnect storm.
    verify: Arc<Semaphore>,
    /// Verified for unknown users, so timing does not tell which names exist.
    dummy: Hash,
    metrics: AuthMetrics,
    warn: LogLimiter,
}

impl Auth {
    pub fn new(cfg: ValidAuth, metrics: AuthMetrics) -> Auth {
        Auth {
            failures: Failures::new(cfg.failures.clone()),
            verify: Arc::new(Semaphore::new(cfg.verify_concurrency.max(1))),
            dummy: Hash::new_pbkdf2(b"dummy", DEFAULT_ITERATIONS),
            cfg: ArcSwap::from_pointee(cfg),
            source: None,
            metrics,
            warn: LogLimiter::new(WARN_EVERY),
        }
    }

    /// Lets [`Auth::reload`] read the password file and JWT keys again
    /// from this configuration.
    pub fn reloadable(mut self, auth: AuthConfig, listeners: Vec<ListenerConfig>) -> Auth {
        self.source = Some((auth, listeners));
        self
    }

    /// The settings in force now.
    pub fn config(&self) -> Arc<ValidAuth> {
        self.cfg.load_full()
    }

    /// Re-reads the password file and the JWT keys (SIGHUP,
    /// `Gateway::reload`). When one cannot be read or parsed the settings in
    /// force stay, and every problem is returned. The failure delay table,
    /// `verify_concurrency` and the failure settings are kept as started.
    pub fn reload(&self) -> Result<(), Vec<crate::config::ConfigError>> {
        let Some((auth, listeners)) = &self.source else {
            return Ok(());
        };
        match auth.validate(listeners) {
            Ok(new) => {
                let users = new.password_file.as_ref().map(|f| f.len());
                self.cfg.store(Arc::new(new));
                self.metrics.reload(true);
                tracing::info!(?users, "authentication files reloaded");
                Ok(())
            }
            Err(errors) => {
                self.metrics.reload(false);
                for e in &errors {
                    tracing::error!(error = %e, "authentication reload failed; the previous files stay in force");
                }
                Err(errors)
            }
        }
    }

    /// Logs what `listener` applies and creates its series at 0 (every
    /// result of its methods, and its delay counter), so they are exported
    /// from start-up.
    pub fn expose(&self, listener: &str) {
        let ListenerAuth {
            methods,
            allow_anonymous,
        } = self.cfg.load().for_listener(listener);
        let chain: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
        tracing::info!(listener, methods = ?chain, allow_anonymous = allow_anonymous || methods.is_empty(), "authentication");
        let names = methods.iter().map(|m| m.as_str()).chain(["none"]);
        for method in names {
            for result in AuthResult::ALL {
                self.metrics.touch(listener, method, *result);
            }
        }
        self.metrics.touch_delayed(listener);
    }

    /// Whether `ip` is banned (closed at accept, before TLS and CONNECT).
    pub fn banned(&self, ip: std::net::IpAddr) -> bool {
        self.failures.banned(ip)
    }

    /// Runs the chain. Counted; a refusal is logged (rate-limited) but not
    /// yet penalised: the caller calls [`Auth::penalty`] for that, as other
    /// CONNECT-time checks (client-id binding) refuse too.
    pub async fn authenticate(&self, req: &AuthRequest<'_>) -> Result<Identity, Refusal> {
        let cfg = self.cfg.load_full();
        let ListenerAuth {
            methods,
            allow_anonymous,
        } = cfg.for_listener(req.listener);
        if methods.is_empty() {
            let identity = Identity {
                username: req.username.map(Arc::from),
                method: IdentityMethod::Unverified,
            };
            self.metrics
                .result(req.listener, "none", AuthResult::Accepted);
            return Ok(identity);
        }
        let mut refused_by = None;
        let mut forbidden_by = None;
        for &m in &methods {
            match self.run(&cfg, m, req).await {
                Verdict::Accept(identity) => {
                    self.metrics
                        .result(req.listener, m.as_str(), AuthResult::Accepted);
                    return Ok(identity);
                }
                Verdict::Decline => {}
                Verdict::Refuse => refused_by = Some(m),
                Verdict::Forbid => forbidden_by = Some(m),
            }
        }
        if let Some(m) = forbidden_by {
            return Err(self.refuse(
                req,
                m.as_str(),
                Refusal::NotAuthorized,
                "credentials valid but not for this client id",
            ));
        }
        // Something was presented (a certificate a method refused counts too).
        if req.username.is_some() || req.password.is_some() || refused_by.is_some() {
            let method = refused_by.map_or("none", Method::as_str);
            return Err(self.refuse(req, method, Refusal::BadCredentials, "bad credentials"));
        }
        if allow_anonymous {
            self.metrics
                .result(req.listener, "none", AuthResult::Anonymous);
            return Ok(Identity {
                username: None,
                method: IdentityMethod::Anonymous,
            });
        }
        Err(self.refuse(
            req,
            "none",
            Refusal::NotAuthorized,
            "no credentials and anonymous access is off",
        ))
    }

    /// Counts and logs a refusal (of the chain or of a later CONNECT check).
    pub fn refuse(
        &self,
        req: &AuthRequest<'_>,
        method: &'static str,
        refusal: Refusal,
        why: &str,
    ) -> Refusal {
        self.metrics.result(req.listener, method, refusal.result());
        if let Some(suppressed) = self.warn.allow() {
            tracing::warn!(
                listener = req.listener,
                peer = ?req.peer,
                client_id = req.client_id,
                username = ?req.username,
                method,
                reason = why,
                suppressed,
                "connection refused by authentication"
            );
        }
        refusal
    }

    /// Records a refused CONNECT from `peer`: how long to wait before the
    /// refusing CONNACK (counted when not zero).
    pub fn penalty(&self, listener: &str, peer: Option<SocketAddr>) -> Penalty {
        let Some(peer) = peer else {
            return Penalty {
                delay: std::time::Duration::ZERO,
                banned: false,
            };
        };
        let p = self.failures.fail(peer.ip());
        self.metrics.tracked.set(self.failures.tracked() as i64);
        if !p.delay.is_zero() {
            self.metrics.delayed(listener);
        }
        if p.banned {
            self.metrics.bans.inc();
            tracing::warn!(%peer, listener, ban = ?self.cfg.load().failures.ban, "address banned after repeated authentication failures");
        }
        p
    }

    async fn run(&self, cfg: &ValidAuth, m: Method, req: &AuthRequest<'_>) -> Verdict {
        match m {
            Method::PasswordFile => self.password_file(cfg, req).await,
            Method::Jwt => jwt_verdict(cfg, req),
            Method::Certificate => certificate(cfg, req),
        }
    }

    /// The CONNECT user name and password against the password file. An
    /// unknown user is verified against a dummy hash, so the time taken
    /// does not tell which user names exist.
    async fn password_file(&self, cfg: &ValidAuth, req: &AuthRequest<'_>) -> Verdict {
        let Some(user) = req.username else {
            return Verdict::Decline;
        };
        let Some(file) = &cfg.password_file else {
            return Verdict::Decline;
        };
        let password = req.password.as_ref().map(|p| p.0.clone());
        let (hash, known) = match file.get(user) {
            Some(h) => (h, true),
            None => (&self.dummy, false),
        };
        // A missing password is verified as an empty one (same timing), and
        // never accepted.
        let ok = self
            .verify(hash, password.clone().unwrap_or_default())
            .await;
        if ok && known && password.is_some() {
            Verdict::Accept(Identity {
                username: Some(Arc::from(user)),
                method: IdentityMethod::Verified(Method::PasswordFile),
            })
        } else {
            Verdict::Refuse
        }
    }

    /// Verifies inline when cheap (`$6$`), else on a blocking thread behind
    /// the `auth.verify_concurrency` semaphore.
    async fn verify(&self, hash: &Hash, password: bytes::Bytes) -> bool {
        if !hash.is_heavy() {
            return hash.verify(&password);
        }
        let Ok(permit) = self.verify.clone().acquire_owned().await else {
            return false;
        };
        let hash = hash.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(&password)
        })
        .await
        .unwrap_or(false)
    }
}

/// The verified client certificate's name (`use_identity_as_username`);
/// a CONNECT user name that differs is ignored: the certificate wins.
fn certificate(cfg: &ValidAuth, req: &AuthRequest<'_>) -> Verdict {
    let Some(id) = req.peer_identity else {
        return Verdict::Decline;
    };
    let name = match cfg.certificate_username {
        CertificateName::CommonName => id.common_name.as_deref(),
        CertificateName::SanDns => id.san_dns.first().map(String::as_str),
        CertificateName::SanEmail => id.san_email.first().map(String::as_str),
        CertificateName::SanUri => id.san_uri.first().map(String::as_str),
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        tracing::debug!(client_id = req.client_id, peer = ?req.peer, "client certificate without the configured name");
        return Verdict::Refuse;
    };
    if req.username.is_some_and(|u| u != name) {
        tracing::debug!(
            client_id = req.client_id,
            certificate = name,
            "CONNECT user name ignored: the certificate's name is used"
        );
    }
    Verdict::Accept(Identity {
        username: Some(Arc::from(name)),
        method: IdentityMethod::Verified(Method::Certificate),
    })
}

/// Inline: an HMAC or one signature verification (microseconds).
fn jwt_verdict(cfg: &ValidAuth, req: &AuthRequest<'_>) -> Verdict {
    let (Some(v), Some(password)) = (&cfg.jwt, &req.password) else {
        return Verdict::Decline;
    };
    match v.check(&password.0, req.username, req.client_id) {
        jwt::Outcome::NotAJwt => Verdict::Decline,
        jwt::Outcome::Valid { username } => Verdict::Accept(Identity {
            username: Some(Arc::from(username)),
            method: IdentityMethod::Verified(Method::Jwt),
        }),
        jwt::Outcome::Invalid(why) => {
            tracing::debug!(client_id = req.client_id, peer = ?req.peer, reason = why, "JWT refused");
            Verdict::Refuse
        }
        jwt::Outcome::WrongClientId => Verdict::Forbid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &std::path::Path, methods: &[&str]) -> Auth {
        let file = dir.join("pw");
        let set = passwd::Change::Set {
            password: b"pw-dev1".to_vec(),
            iterations: 2,
        };
        passwd::update(&file, "dev1", &set).unwrap();
        let cfg = AuthConfig {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            password_file: file,
            ..AuthConfig::default()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        Auth::new(cfg.validate(&[]).unwrap(), AuthMetrics::new(&mut registry))
    }

    fn req<'a>(
        username: Option<&'a str>,
        password: Option<&'static [u8]>,
        peer_identity: Option<&'a PeerIdentity>,
    ) -> AuthRequest<'a> {
        AuthRequest {
            listener: "tcp",
            peer: None,
            client_id: "c",
            username,
            password: password.map(|p| Password(bytes::Bytes::from_static(p))),
            peer_identity,
        }
    }

    #[tokio::test]
    async fn chain_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), &["password_file", "certificate"]);
        let user = |r: Result<Identity, Refusal>| r.map(|i| (i.username, i.method));
        let dev1 = Some(Arc::<str>::from("dev1"));
        assert_eq!(
            user(
                a.authenticate(&req(Some("dev1"), Some(b"pw-dev1"), None))
                    .await
            ),
            Ok((dev1.clone(), IdentityMethod::Verified(Method::PasswordFile)))
        );
        for r in [
            req(Some("dev1"), Some(b"nope"), None),
            req(Some("dev9"), Some(b"pw-dev1"), None),
            req(Some("dev1"), None, None),
        ] {
            assert_eq!(
                a.authenticate(&r).await,
                Err(Refusal::BadCredentials),
                "{r:?}"
            );
        }
        // Nothing presented: anonymous (allowed by default).
        assert_eq!(
            user(a.authenticate(&req(None, None, None)).await),
            Ok((None, IdentityMethod::Anonymous))
        );
        // A certificate accepted after the password was refused: first accept wins.
        let cert = PeerIdentity {
            common_name: Some("dev1".into()),
            ..PeerIdentity::default()
        };
        assert_eq!(
            user(
                a.authenticate(&req(Some("x"), Some(b"y"), Some(&cert)))
                    .await
            ),
            Ok((dev1, IdentityMethod::Verified(Method::Certificate)))
        );
        // A certificate without the configured name is not anonymous access.
        let nameless = PeerIdentity::default();
        assert_eq!(
            a.authenticate(&req(None, None, Some(&nameless))).await,
            Err(Refusal::BadCredentials)
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let req = AuthRequest {
            listener: "tcp",
            peer: None,
            client_id: "dev1",
            username: Some("dev1"),
            password: Some(Password(bytes::Bytes::from_static(b"hunter2"))),
            peer_identity: None,
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
}
