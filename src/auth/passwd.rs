//! `mqbridge passwd FILE USER`: adds, replaces or deletes a user in a
//! Mosquitto-format password file. The new file is written next to the old
//! one and renamed over it (a crash leaves the old or the new file, never
//! half of one), with the old file's mode, or 0600 for a new file.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::password::{update_text, Hash, LineError, PasswordFile, MAX_ITERATIONS};

/// What to do to the user.
pub enum Change {
    /// Add or replace with a `$7$` hash of this many iterations.
    Set {
        password: Vec<u8>,
        iterations: u32,
    },
    Delete,
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Set { iterations, .. } => {
                write!(f, "Set {{ password: ***, iterations: {iterations} }}")
            }
            Change::Delete => f.write_str("Delete"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid password file")]
    Parse {
        path: PathBuf,
        #[source]
        source: LineError,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("user {0:?} is not in the file")]
    NoSuchUser(String),
    #[error("invalid user name {0:?}: it must be non-empty, without ':', line breaks or surrounding blanks, and not start with '#'")]
    BadUser(String),
    #[error("invalid password: it must be non-empty, without NUL or line breaks")]
    BadPassword,
    #[error("iterations must be in 1..={MAX_ITERATIONS}")]
    BadIterations,
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 65_535
        && user.trim() == user
        && !user.starts_with('#')
        && !user.contains([':', '\n', '\r'])
}

/// Applies `change` to `user` in the file at `path` (created if missing,
/// unless deleting).
pub fn update(path: &Path, user: &str, change: &Change) -> Result<(), PasswdError> {
    if !valid_user(user) {
        return Err(PasswdError::BadUser(user.to_string()));
    }
    let (text, mode) = match std::fs::read_to_string(path) {
        Ok(t) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o7777)
                .map_err(|source| PasswdError::Read {
                    path: path.to_owned(),
                    source,
                })?;
            (t, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o600),
        Err(source) => {
            return Err(PasswdError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    // Refuse to rewrite a file we would refuse to start with.
    PasswordFile::parse(&text).map_err(|source| PasswdError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let hash = match change {
        Change::Set {
            password,
            iterations,
        } => {
            if password.is_empty() || password.iter().any(|b| matches!(b, 0 | b'\n' | b'\r')) {
                return Err(PasswdError::BadPassword);
            }
            if !(1..=MAX_ITERATIONS).contains(iterations) {
                return Err(PasswdError::BadIterations);
            }
            Some(Hash::new_pbkdf2(password, *iterations))
        }
        Change::Delete => None,
    };
    let (new_text, found) = update_text(&text, user, hash.as_ref());
    if hash.is_none() && !found {
        return Err(PasswdError::NoSuchUser(user.to_string()));
    }
    write_atomically(path, new_text.as_bytes(), mode)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PasswdError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "passwd".into());
    let tmp = dir.join(format!(".{name}.{:08x}.tmp", rand::random::<u32>()));
    let err = |source| PasswdError::Write {
        path: path.to_owned(),
        source,
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode: set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0600_updates_keeping_mode_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let set = |pw: &str| Change::Set {
            password: pw.as_bytes().to_vec(),
            iterations: 3,
        };
        update(&path, "dev1", &set("one")).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        update(&path, "dev2", &set("two")).unwrap();
        update(&path, "dev1", &set("uno")).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let f = PasswordFile::read(&path).unwrap();
        assert!(f.get("dev1").unwrap().verify(b"uno"));
        assert!(f.get("dev2").unwrap().verify(b"two"));
        update(&path, "dev1", &Change::Delete).unwrap();
        assert!(PasswordFile::read(&path).unwrap().get("dev1").is_none());
        assert!(matches!(
            update(&path, "dev1", &Change::Delete),
            Err(PasswdError::NoSuchUser(_))
        ));
        assert!(matches!(
            update(&path, "a:b", &set("x")),
            Err(PasswdError::BadUser(_))
        ));
        assert!(matches!(
            update(&path, "a", &set("x\0y")),
            Err(PasswdError::BadPassword)
        ));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }
}
