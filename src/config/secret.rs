//! [`Secret`]: a configured string (password, credential) that never shows
//! in `Debug`, `Display`, logs or serialized output.
//!
//! In the configuration a secret is a string, `{ file = "PATH" }` (the
//! file's content, one trailing newline removed) or `{ env = "NAME" }` (an
//! environment variable), so the file itself need hold none. A file or
//! variable that cannot be read is not a parse error: it is kept as a
//! [`Secret::problem`], which validation reports under the secret's key.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a [`Secret`] prints instead of its value.
pub const REDACTED: &str = "***";

/// A secret string. Only [`Secret::expose`] reads it; every way of printing
/// or serializing it gives `"***"`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Why the value could not be read (never the value itself).
    problem: Option<String>,
}

/// How a secret is written in the configuration.
#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Written {
    Value(String),
    File { file: std::path::PathBuf },
    Env { env: String },
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        Ok(match Written::deserialize(d)? {
            Written::Value(value) => Secret::new(value),
            Written::File { file } => from_file(&file),
            Written::Env { env } => match std::env::var(&env) {
                Ok(value) => Secret::new(value),
                Err(e) => Secret::unreadable(format!("environment variable {env}: {e}")),
            },
        })
    }
}

fn from_file(path: &std::path::Path) -> Secret {
    match std::fs::read_to_string(path) {
        Ok(mut value) => {
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            warn_if_shared(path);
            Secret::new(value)
        }
        Err(e) => Secret::unreadable(format!("secret file {}: {e}", path.display())),
    }
}

/// Container secret mounts vary, so a file others may read is worth a
/// warning, not a refusal.
fn warn_if_shared(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "secret file is readable by group or others");
        }
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret {
            value: value.into(),
            problem: None,
        }
    }

    fn unreadable(problem: String) -> Secret {
        Secret {
            value: String::new(),
            problem: Some(problem),
        }
    }

    /// The value itself: for handing to the client library, never to a log.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// Why the secret's file or variable could not be read, if it could not.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{REDACTED:?}")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed_or_serialized() {
        let s = Secret::new("hunter2");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(format!("{:?}", Some(&s)), "Some(\"***\")");
        assert_eq!(serde_json::to_string(&s).expect("serializes"), "\"***\"");
        let read: Secret = serde_json::from_str("\"hunter2\"").expect("deserializes");
        assert_eq!(read, s);
    }

    #[test]
    fn read_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\n").expect("write");
        let json = format!("{{\"file\": {:?}}}", path.display().to_string());
        let read: Secret = serde_json::from_str(&json).expect("deserializes");
        assert_eq!((read.expose(), read.problem()), ("from-file", None));

        let missing = format!(
            "{{\"file\": {:?}}}",
            dir.path().join("nope").display().to_string()
        );
        let read: Secret = serde_json::from_str(&missing).expect("deserializes");
        assert_eq!(read.expose(), "");
        assert!(
            read.problem().is_some_and(|p| p.contains("nope")),
            "{:?}",
            read.problem()
        );

        // PATH is always set; a variable that is not is a problem.
        let read: Secret = serde_json::from_str(r#"{"env": "PATH"}"#).expect("deserializes");
        assert!(!read.expose().is_empty() && read.problem().is_none());
        let read: Secret = serde_json::from_str(r#"{"env": "MQBRIDGE_TEST_NO_SUCH_VARIABLE"}"#)
            .expect("deserializes");
        assert!(read.problem().is_some());
        assert!(serde_json::from_str::<Secret>(r#"{"vault": "x"}"#).is_err());
    }
}
