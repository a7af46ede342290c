//! Mosquitto's `password_file` format, exactly (2.0 and 2.1): one
//! `username:hash` per line, `#` comments, lines without `:` skipped.
//!
//! - `$6$<salt>$<hash>`: `hash = SHA-512(password ‖ salt)`, one pass;
//! - `$7$<iterations>$<salt>$<hash>`: `hash = PBKDF2-HMAC-SHA512(password,
//!   salt, iterations, 64 bytes)`.
//!
//! Salt and hash are standard base64 (padding optional when read). We are
//! stricter than Mosquitto: a malformed line is an error naming its line
//! number, never the hash.

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Standard base64, `=` padding written, optional when read (OpenSSL's
/// encoder pads; hand-edited files may not).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Every hash in the format is 64 bytes (SHA-512).
const HASH_LEN: usize = 64;
/// Salt written by `mqbridge passwd`: 12 bytes, as Mosquitto 2.0 writes
/// (2.0 reads only this length; 2.1 reads any).
pub const SALT_LEN: usize = 12;
/// Iterations written by `mqbridge passwd` (Mosquitto 2.1's choice).
pub const DEFAULT_ITERATIONS: u32 = 1000;
/// Upper bound on `$7$` iterations read from a file: a typo must not turn
/// each CONNECT into seconds of CPU.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Longest user name (MQTT strings are at most 65535 bytes).
const MAX_USERNAME: usize = 65_535;

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
pub enum Hash {
    /// `$6$`: one SHA-512 pass; cheap, verified inline.
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$7$`: PBKDF2-HMAC-SHA512; CPU-heavy, verified off the connection task.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hash::Sha512 { .. } => f.write_str("$6$***"),
            Hash::Pbkdf2 { iterations, .. } => write!(f, "$7${iterations}$***"),
        }
    }
}

impl Hash {
    /// A `$7$` hash of `password` with a fresh random salt.
    pub fn new_pbkdf2(password: &[u8], iterations: u32) -> Hash {
        let salt: [u8; SALT_LEN] = rand::random();
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        Hash::Pbkdf2 {
            iterations,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// Whether verifying costs enough CPU to be moved off the connection task.
    pub fn is_heavy(&self) -> bool {
        matches!(self, Hash::Pbkdf2 { .. })
    }

    /// Whether `password` matches, compared in constant time. A password
    /// with a NUL byte never matches: Mosquitto hashes up to the first NUL,
    /// so accepting it would accept a different password.
    pub fn verify(&self, password: &[u8]) -> bool {
        if password.contains(&0) {
            return false;
        }
        let mut got = [0u8; HASH_LEN];
        let expected = match self {
            Hash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                got.copy_from_slice(&h.finalize());
                hash
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut got);
                hash
            }
        };
        got.ct_eq(expected).into()
    }

    /// The field as written in the file.
    pub fn encode(&self) -> String {
        match self {
            Hash::Sha512 { salt, hash } => format!("$6${}${}", B64.encode(salt), B64.encode(hash)),
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
        }
    }

    /// Parses the hash field of a line.
    pub fn parse(field: &str) -> Result<Hash, String> {
        let parts: Vec<&str> = field.split('$').collect();
        let decode = |what: &str, s: &str| {
            B64.decode(s)
                .map_err(|_| format!("the {what} is not valid base64"))
        };
        let hash64 = |s: &str| -> Result<[u8; HASH_LEN], String> {
            decode("hash", s)?
                .try_into()
                .map_err(|v: Vec<u8>| format!("the hash is {} bytes, {HASH_LEN} expected", v.len()))
        };
        let salt = |s: &str| -> Result<Vec<u8>, String> {
            let salt = decode("salt", s)?;
            if salt.is_empty() {
                return Err("the salt is empty".into());
            }
            Ok(salt)
        };
        match parts.as_slice() {
            ["", "6", s, h] => Ok(Hash::Sha512 {
                salt: salt(s)?,
                hash: hash64(h)?,
            }),
            ["", "7", it, s, h] => {
                let iterations: u32 = it
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_ITERATIONS).contains(n))
                    .ok_or_else(|| {
                        format!("$7$ iterations must be a number in 1..={MAX_ITERATIONS}")
                    })?;
                Ok(Hash::Pbkdf2 {
                    iterations,
                    salt: salt(s)?,
                    hash: hash64(h)?,
                })
            }
            ["", "argon2id", ..] => {
                Err("$argon2id$ hashes (Mosquitto 2.1) are not supported; use $7$".into())
            }
            _ => Err("not a $6$ or $7$ hash (plain-text password?)".into()),
        }
    }
}

/// A parsed password file: user name → hash.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordFile({} users)", self.users.len())
    }
}

/// A line of a password file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Line(#[from] LineError),
}

/// The user name and hash field of a line, or `None` for a line Mosquitto
/// skips (comment, no `:`).
fn split_line(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (user, hash) = line.split_once(':')?;
    Some((user.trim(), hash.trim()))
}

impl PasswordFile {
    /// Parses the whole text; the first bad line is the error.
    pub fn parse(text: &str) -> Result<PasswordFile, LineError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| LineError {
                line: i + 1,
                reason,
            };
            let Some((user, field)) = split_line(line) else {
                continue;
            };
            if user.is_empty() || user.len() > MAX_USERNAME {
                return Err(err("the user name is empty or too long".into()));
            }
            let hash = Hash::parse(field).map_err(err)?;
            // Mosquitto keeps the last entry of a user name too.
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn read(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(PasswordFile::parse(&text)?)
    }

    pub fn get(&self, user: &str) -> Option<&Hash> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// `text` with `user` set to `hash` (replacing its line in place, or
/// appended), or removed when `hash` is `None`. Other lines, comments
/// included, are kept as they are. Returns the text and whether `user` was
/// found.
pub fn update_text(text: &str, user: &str, hash: Option<&Hash>) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + 128);
    let mut found = false;
    for line in text.lines() {
        if split_line(line).is_some_and(|(u, _)| u == user) {
            if let (false, Some(h)) = (found, hash) {
                out.push_str(&format!("{user}:{}\n", h.encode()));
            }
            found = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let (false, Some(h)) = (found, hash) {
        out.push_str(&format!("{user}:{}\n", h.encode()));
    }
    (out, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian 12's `mosquitto_passwd` 2.0.11: `-c -b` (default
    /// `$7$`, 101 iterations) for alice, `-H sha512 -b` for bob.
    const MOSQUITTO: &str = "\
alice:$7$101$74EzcSxGsBK4S7E6$QDBNjAE14QT4qVoCy0s/Jm8iiLyxmKj9p8PLvgirOVA8Qf5nyjBVrjgJes+vHhFB/GbeYDEj0btC/tvc03qd+g==
bob:$6$Yaell+VJrmA0sLh2$rEn5poVD/1ouXDsUaDy+GBFx8wKPWlG4/lRMhtvcmnqlXNf8Lj3DrKoNIWiLZ5q5oeZL4Tf16QI68wsDhzp3pw==
";

    #[test]
    fn reads_what_mosquitto_passwd_writes() {
        let f = PasswordFile::parse(&format!("# fleet\n\nno colon here\n{MOSQUITTO}")).unwrap();
        assert_eq!(f.len(), 2);
        let alice = f.get("alice").unwrap();
        assert!(alice.is_heavy());
        assert!(alice.verify(b"s3cret"));
        assert!(!alice.verify(b"s3cret "));
        assert!(!alice.verify(b"s3cret\0x"), "NUL never matches");
        let bob = f.get("bob").unwrap();
        assert!(!bob.is_heavy());
        assert!(bob.verify(b"hunter2"));
        assert!(!bob.verify(b"hunter3"));
        assert!(f.get("carol").is_none());
    }

    #[test]
    fn encodes_back_byte_for_byte() {
        for line in MOSQUITTO.lines() {
            let (_, field) = split_line(line).unwrap();
            assert_eq!(Hash::parse(field).unwrap().encode(), field);
        }
    }

    #[test]
    fn malformed_lines_name_their_number_not_the_hash() {
        for (text, want) in [
            ("a:plain\n", "plain-text"),
            ("# c\na:$6$!!!$x\n", "base64"),
            ("a:$6$c2FsdA==$c2hvcnQ=\n", "bytes"),
            ("a:$7$0$c2FsdA==$c2hvcnQ=\n", "iterations"),
            (
                "a:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA\n",
                "argon2id",
            ),
            (":$6$c2FsdA==$c2hvcnQ=\n", "user name"),
        ] {
            let e = PasswordFile::parse(text).unwrap_err();
            assert!(e.reason.contains(want), "{text}: {e}");
            assert_eq!(e.line, text.lines().count(), "{text}");
            assert!(!e.to_string().contains("c2hvcnQ"), "{e}");
        }
    }

    #[test]
    fn update_replaces_appends_and_deletes() {
        let h = Hash::new_pbkdf2(b"pw", 2);
        let (t, found) = update_text(MOSQUITTO, "bob", Some(&h));
        assert!(found);
        let f = PasswordFile::parse(&t).unwrap();
        assert!(f.get("bob").unwrap().verify(b"pw"));
        assert!(f.get("alice").unwrap().verify(b"s3cret"));
        assert!(t.starts_with("alice:"), "order kept");
        let (t, found) = update_text(&t, "carol", Some(&h));
        assert!(!found);
        assert_eq!(PasswordFile::parse(&t).unwrap().len(), 3);
        let (t, found) = update_text(&t, "alice", None);
        assert!(found);
        let f = PasswordFile::parse(&t).unwrap();
        assert!(f.get("alice").is_none() && f.len() == 2);
    }

    #[test]
    fn debug_shows_no_hash() {
        let f = PasswordFile::parse(MOSQUITTO).unwrap();
        let d = format!("{f:?} {:?}", f.get("alice").unwrap());
        assert!(!d.contains("74EzcSx") && !d.contains("QDBNj"), "{d}");
    }
}
