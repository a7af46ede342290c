//! One client's ACL: the rules that concern it, `%c`/`%u` substituted and
//! split into levels once at CONNECT (typically two to five), so a check is
//! a short walk over pre-split filters with no allocation.

use std::sync::Arc;

use super::filter::Filter;
use super::{AclRules, Permission, RuleAction, Who};

/// The rules of one client, in first-match order.
#[derive(Debug)]
pub struct ClientAcl {
    client_id: Arc<str>,
    username: Option<Arc<str>>,
    /// No rule is configured at all: everything is allowed (but publishing
    /// to `$` topics).
    open: bool,
    rules: Box<[Compiled]>,
}

#[derive(Debug)]
struct Compiled {
    allow: bool,
    publish: bool,
    subscribe: bool,
    filter: Filter,
}

/// A value that may be put into a rule: not empty and without `+`, `#` or
/// `/`, or `devA/x` would land inside `devices/devA/#`.
fn substitutable(v: &str) -> bool {
    !v.is_empty() && !v.contains(['+', '#', '/'])
}

impl AclRules {
    /// The rules that concern a client with this identity, substituted.
    pub fn compile(&self, client_id: &Arc<str>, username: Option<&Arc<str>>) -> ClientAcl {
        let mut rules = Vec::new();
        for r in self.candidates(username.map(|u| &**u)) {
            let applies = match &r.who {
                Who::Everyone => true,
                Who::Anonymous => username.is_none(),
                Who::Users(users) => username.is_some_and(|u| users.iter().any(|x| **x == **u)),
            };
            if !applies {
                continue;
            }
            let topic = if r.substitute {
                let mut t = r.topic.clone();
                if t.contains("%c") {
                    if !substitutable(client_id) {
                        continue;
                    }
                    t = t.replace("%c", client_id);
                }
                if t.contains("%u") {
                    match username {
                        Some(u) if substitutable(u) => t = t.replace("%u", u),
                        _ => continue,
                    }
                }
                t
            } else {
                r.topic.clone()
            };
            rules.push(Compiled {
                allow: r.permission == Permission::Allow,
                publish: r.action != RuleAction::Subscribe,
                subscribe: r.action != RuleAction::Publish,
                filter: Filter::parse(&topic),
            });
        }
        ClientAcl {
            client_id: client_id.clone(),
            username: username.cloned(),
            open: self.is_empty(),
            rules: rules.into(),
        }
    }
}

impl ClientAcl {
    /// An ACL that allows everything (no rules configured); for sessions
    /// the router holds before any ACL is known, and for tests.
    pub fn open(client_id: &Arc<str>) -> ClientAcl {
        ClientAcl {
            client_id: client_id.clone(),
            username: None,
            open: true,
            rules: Box::new([]),
        }
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    pub fn username(&self) -> Option<&Arc<str>> {
        self.username.as_ref()
    }

    /// Whether no rule is configured (everything but `$` publishing allowed).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// May the client PUBLISH to `topic` (or have it as its will)? Topics
    /// starting with `$` are the server's (MQTT 4.7.2): never.
    pub fn may_publish(&self, topic: &str) -> bool {
        if topic.starts_with('$') {
            return false;
        }
        self.open || self.first_match(topic, |r| r.publish)
    }

    /// May the client receive a message on `topic`?
    pub fn may_read(&self, topic: &str) -> bool {
        self.open || self.first_match(topic, |r| r.subscribe)
    }

    /// May the client subscribe to `filter` (for a shared subscription, its
    /// inner filter)? Only if one allow rule covers all of it and no deny
    /// rule before that one intersects it: a filter wider than allowed is
    /// refused, never silently narrowed. A filter covered only by a union
    /// of allow rules is refused too (conservative).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        if self.open {
            return true;
        }
        let f = Filter::parse(filter);
        for r in self.rules.iter().filter(|r| r.subscribe) {
            if r.allow && r.filter.covers(&f) {
                return true;
            }
            if !r.allow && r.filter.intersects(&f) {
                return false;
            }
        }
        false
    }

    fn first_match(&self, topic: &str, action: impl Fn(&Compiled) -> bool) -> bool {
        self.rules
            .iter()
            .find(|r| action(r) && r.filter.matches(topic))
            .is_some_and(|r| r.allow)
    }
}
