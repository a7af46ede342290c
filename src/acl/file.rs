//! Mosquitto's `acl_file`, read as Mosquitto 2.0/2.1 reads it, and turned
//! into first-match rules that give Mosquitto's answers.
//!
//! Grammar: trailing whitespace is removed; a line starting with `#` is a
//! comment, an empty one is skipped; the first space-separated token is
//! `user <name>` (the `topic` lines that follow are that user's),
//! `topic [read|write|readwrite|deny] <filter>` or `pattern [...] <filter>`
//! (no access word = `readwrite`; the filter is the rest of the line and may
//! contain spaces). `topic` lines before any `user` line are for clients
//! without a user name; `pattern` lines are for everyone and substitute
//! `%c`/`%u`. Anything else is an error, with its line number.
//!
//! Mosquitto checks a client's `topic` entries before the `pattern` ones
//! and, within each, `deny` entries first; the first entry that matches and
//! denies or grants the access asked decides. Emitting the rules in the
//! order user denies, user allows, pattern denies, pattern allows gives the
//! same answers under first match.

use std::path::Path;
use std::sync::Arc;

use super::{Permission, Rule, RuleAction, Who};
use crate::mqtt::topic::valid_filter;

/// Longest `acl_file` read, in bytes: it is held in memory and compiled for
/// every client.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why an `acl_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AclFileError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// Reads and parses the file at `path`.
pub fn read(path: &Path) -> Result<Vec<Rule>, AclFileError> {
    let shown = path.display().to_string();
    let read_err = |source| AclFileError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(AclFileError::TooLarge { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse(&text).map_err(|(line, reason)| AclFileError::Line {
        path: shown,
        line,
        reason,
    })
}

/// Parses the text of an `acl_file`; an error is `(line number, reason)`.
pub fn parse(text: &str) -> Result<Vec<Rule>, (usize, String)> {
    // (user denies, user allows, pattern denies, pattern allows)
    let mut lists: [Vec<Rule>; 4] = Default::default();
    let mut user: Option<Arc<str>> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.starts_with('#') {
            continue;
        }
        // Mosquitto splits on spaces only (strtok with " ").
        let line = line.trim_start_matches(' ');
        let (token, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim_start_matches(' ');
        match token {
            "" => continue,
            "user" => {
                if rest.is_empty() {
                    return Err((n + 1, "user without a name".into()));
                }
                user = Some(rest.into());
            }
            "topic" | "pattern" => {
                let pattern = token == "pattern";
                let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
                let access = match word {
                    "read" => Some((Permission::Allow, RuleAction::Subscribe)),
                    "write" => Some((Permission::Allow, RuleAction::Publish)),
                    "readwrite" => Some((Permission::Allow, RuleAction::Both)),
                    "deny" => Some((Permission::Deny, RuleAction::Both)),
                    _ => None,
                };
                let (permission, action, topic) = match access {
                    Some((p, a)) => (p, a, after.trim_start_matches(' ')),
                    None => (Permission::Allow, RuleAction::Both, rest),
                };
                if topic.is_empty() {
                    return Err((n + 1, format!("{token} without a topic")));
                }
                if !valid_filter(topic) {
                    return Err((n + 1, format!("{topic:?} is not a valid topic filter")));
                }
                let who = match (pattern, &user) {
                    (true, _) => Who::Everyone,
                    (false, Some(u)) => Who::Users(vec![u.clone()]),
                    (false, None) => Who::Anonymous,
                };
                let rule = Rule {
                    permission,
                    action,
                    who,
                    topic: topic.to_string(),
                    substitute: pattern,
                };
                let i = usize::from(permission == Permission::Allow) + 2 * usize::from(pattern);
                lists[i].push(rule);
            }
            other => return Err((n + 1, format!("unknown directive {other:?}"))),
        }
    }
    Ok(lists.into_iter().flatten().collect())
}
