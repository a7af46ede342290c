//! `[acl]`: topic authorisation rules and the Mosquitto `acl_file`, checked
//! (and the file read) by [`Config::validate`](super::Config::validate)
//! before anything is bound.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::acl::{AclRules, Permission, Rule, RuleAction, Who};
use crate::mqtt::topic::valid_filter;

/// `[acl]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// A Mosquitto-format `acl_file`; empty: none. Read at start-up and on
    /// reload (SIGHUP).
    pub file: PathBuf,
    /// `[[acl.rules]]`, checked before the file's rules; first match wins.
    #[serde(default)]
    pub rules: Vec<AclRuleConfig>,
}

/// One `[[acl.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// `"allow"` or `"deny"`.
    pub permission: String,
    /// `"publish"`, `"subscribe"` or `"both"`.
    pub action: String,
    /// A topic filter; `%c` is the client id, `%u` the user name.
    pub topic: String,
    /// Only clients with one of these user names; absent: every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
}

/// Longest `users` list of one rule (a list is scanned at every CONNECT).
pub const MAX_RULE_USERS: usize = 10_000;

impl AclConfig {
    /// The rules, and the file read and parsed; every problem with its key.
    pub(super) fn validate(&self) -> Result<AclRules, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            match r.rule(i) {
                Ok(rule) => rules.push(rule),
                Err(e) => errors.extend(e),
            }
        }
        let file = (!self.file.as_os_str().is_empty()).then(|| self.file.clone());
        match AclRules::new(rules, file) {
            Ok(rules) if errors.is_empty() => Ok(rules),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.push(ConfigError::invalid("acl.file", e.to_string()));
                Err(errors)
            }
        }
    }
}

impl AclRuleConfig {
    fn rule(&self, i: usize) -> Result<Rule, Vec<ConfigError>> {
        let key = |k: &str| format!("acl.rules[{i}].{k}");
        let mut errors = Vec::new();
        let permission = match self.permission.as_str() {
            "allow" => Some(Permission::Allow),
            "deny" => Some(Permission::Deny),
            other => {
                errors.push(ConfigError::at(
                    key("permission"),
                    format!("unknown permission {other:?} (expected \"allow\" or \"deny\")"),
                ));
                None
            }
        };
        let action = match self.action.as_str() {
            "publish" => Some(RuleAction::Publish),
            "subscribe" => Some(RuleAction::Subscribe),
            "both" => Some(RuleAction::Both),
            other => {
                errors.push(ConfigError::at(
                    key("action"),
                    format!(
                        "unknown action {other:?} (expected \"publish\", \"subscribe\" or \"both\")"
                    ),
                ));
                None
            }
        };
        if !valid_filter(&self.topic) {
            errors.push(ConfigError::at(
                key("topic"),
                format!("{:?} is not a valid topic filter", self.topic),
            ));
        }
        let who = match &self.users {
            None => Who::Everyone,
            Some(users) if users.is_empty() || users.len() > MAX_RULE_USERS => {
                errors.push(ConfigError::at(
                    key("users"),
                    format!("needs 1 to {MAX_RULE_USERS} user names (leave the key out for every client)"),
                ));
                Who::Everyone
            }
            Some(users) => {
                if users.iter().any(String::is_empty) {
                    errors.push(ConfigError::at(
                        key("users"),
                        "an empty user name never matches",
                    ));
                }
                Who::Users(users.iter().map(|u| Arc::from(u.as_str())).collect())
            }
        };
        match (permission, action) {
            (Some(permission), Some(action)) if errors.is_empty() => Ok(Rule {
                permission,
                action,
                who,
                topic: self.topic.clone(),
                substitute: true,
            }),
            _ => Err(errors),
        }
    }
}
