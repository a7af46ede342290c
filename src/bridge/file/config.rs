//! `kind = "file"` settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    /// Name routes use to refer to this backend.
    pub name: String,
    /// Directory of the files; a route's target is the file name stem
    /// (`<target>.jsonl`, rotated to `<target>.jsonl.1` ...).
    pub path: PathBuf,
    /// Size at which a file is rotated, in bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept per target (older ones are deleted).
    pub max_files: usize,
}
