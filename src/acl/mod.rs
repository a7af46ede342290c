//! Authorisation: which topics a client may publish to and read.
//!
//! - [`AclRules`]: the configured rules in first-match order (config rules
//!   first, then the `acl_file` translated by [`file`]), validated before any
//!   port is bound.
//! - [`ClientAcl`]: the rules that concern one client, compiled at CONNECT
//!   (`%c`/`%u` substituted, filters split), held by its connection
//!   (PUBLISH, SUBSCRIBE, will) and by its session in the router (retained
//!   messages at subscribe time, deliveries).
//! - [`Acl`]: the live rule set shared by connections and the router; the
//!   `acl_file` is re-read by [`Acl::reload`] (SIGHUP), a bad file keeps the
//!   old rules.
//! - [`metrics`]: `mqbridge_acl_denied_total{action}` and the rate-limited
//!   log line of every refusal.
//!
//! With no rule at all everything is allowed (today's behaviour, warned at
//! start-up); once any rule exists, what no rule allows is denied. Clients
//! never publish to topics starting with `$`.

mod client;
pub mod file;
mod filter;
pub mod metrics;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use client::ClientAcl;
pub use file::AclFileError;
pub use filter::Filter;
pub use metrics::{AclMetrics, Denied};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

/// What a rule is about: `publish` (PUBLISH and the will), `subscribe`
/// (SUBSCRIBE filters, retained messages at subscribe time, deliveries), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Publish,
    Subscribe,
    Both,
}

/// Whom a rule concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Everyone,
    /// Clients with one of these user names.
    Users(Vec<Arc<str>>),
    /// Clients without a user name (`topic` lines before any `user` line).
    Anonymous,
}

/// One rule, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub permission: Permission,
    pub action: RuleAction,
    pub who: Who,
    /// A valid topic filter, possibly with `%c` / `%u`.
    pub topic: String,
    /// Whether `%c` (client id) and `%u` (user name) are substituted
    /// (config rules and `pattern` lines; not `topic` lines).
    pub substitute: bool,
}

/// The configured rules, in first-match order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclRules {
    /// Config rules first, then the file's.
    rules: Vec<Rule>,
    /// How many of `rules` come from the config (kept on reload).
    from_config: usize,
    /// The `acl_file`, re-read on reload.
    file: Option<PathBuf>,
    /// Positions in `rules` of the rules for everyone or for clients
    /// without user name, and per user name those for that user: a CONNECT
    /// looks at its own rules only, not at every user's of a large file.
    general: Vec<usize>,
    by_user: HashMap<Arc<str>, Vec<usize>>,
}

impl AclRules {
    /// The config's rules followed by those of `file` (read now).
    pub fn new(config: Vec<Rule>, file: Option<PathBuf>) -> Result<AclRules, AclFileError> {
        let mut rules = config;
        let from_config = rules.len();
        if let Some(path) = &file {
            rules.extend(file::read(path)?);
        }
        let mut general = Vec::new();
        let mut by_user: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            match &r.who {
                Who::Everyone | Who::Anonymous => general.push(i),
                Who::Users(users) => {
                    for u in users {
                        let own = by_user.entry(u.clone()).or_default();
                        // A name listed twice in one rule: the rule once.
                        if own.last() != Some(&i) {
                            own.push(i);
                        }
                    }
                }
            }
        }
        Ok(AclRules {
            rules,
            from_config,
            file,
            general,
            by_user,
        })
    }

    /// The rules that may concern a client with `username`, in order.
    pub(crate) fn candidates(&self, username: Option<&str>) -> impl Iterator<Item = &Rule> {
        let own = username
            .and_then(|u| self.by_user.get(u))
            .map_or(&[][..], Vec::as_slice);
        let (mut a, mut b) = (self.general.iter().peekable(), own.iter().peekable());
        std::iter::from_fn(move || {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x <= y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
            next.and_then(|&i| self.rules.get(i))
        })
    }

    /// The same config rules with the `acl_file` read again.
    pub fn reread(&self) -> Result<AclRules, AclFileError> {
        AclRules::new(self.rules[..self.from_config].to_vec(), self.file.clone())
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// No rule at all: everything is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The live rule set, shared by every connection and the router.
///
/// Connections compile their [`ClientAcl`] at CONNECT and compare
/// [`Acl::generation`] (one relaxed atomic load) before each check, so a
/// reload reaches them at their next packet without a lock on the hot path.
#[derive(Debug)]
pub struct Acl {
    rules: RwLock<Arc<AclRules>>,
    generation: AtomicU64,
    pub metrics: AclMetrics,
}

impl Acl {
    pub fn new(rules: AclRules, metrics: AclMetrics) -> Acl {
        metrics.rules.set(rules.rules.len() as i64);
        Acl {
            rules: RwLock::new(Arc::new(rules)),
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    /// The current rule set.
    pub fn rules(&self) -> Arc<AclRules> {
        // A poisoned lock still holds a complete Arc: nothing is half-written.
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bumped by every reload that changed the rules.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `client`'s ACL under the current rules, with the generation it was compiled at.
    pub fn compile(&self, client_id: &Arc<str>, username: Option<&Arc<str>>) -> ConnAcl {
        let generation = self.generation();
        let acl = Arc::new(self.rules().compile(client_id, username));
        ConnAcl { generation, acl }
    }

    /// Re-reads the `acl_file`. A file that cannot be read or parsed keeps
    /// the old rules (logged and counted); `Ok(true)` when the rules changed.
    pub fn reload(&self) -> Result<bool, AclFileError> {
        let old = self.rules();
        if old.file.is_none() {
            return Ok(false);
        }
        let new = match old.reread() {
            Ok(new) => new,
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "acl_file reload failed; the previous rules stay in force"
                );
                return Err(e);
            }
        };
        self.metrics.reload(true);
        if new == *old {
            return Ok(false);
        }
        let count = new.rules.len();
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.rules.set(count as i64);
        tracing::info!(rules = count, "ACL rules reloaded");
        Ok(true)
    }
}

/// A connection's ACL and the rule generation it was compiled from.
#[derive(Debug, Clone)]
pub struct ConnAcl {
    generation: u64,
    acl: Arc<ClientAcl>,
}

impl ConnAcl {
    /// The ACL under the current rules: recompiled (same identity) only
    /// when a reload happened since.
    pub fn current(&mut self, live: &Acl) -> &Arc<ClientAcl> {
        if live.generation() != self.generation {
            let identity = (self.acl.client_id().clone(), self.acl.username().cloned());
            *self = live.compile(&identity.0, identity.1.as_ref());
        }
        &self.acl
    }

    /// The ACL as compiled (for handing to the router).
    pub fn get(&self) -> &Arc<ClientAcl> {
        &self.acl
    }
}
