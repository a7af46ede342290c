//! The node id: a stable identity of this gateway process, used where a
//! backend must recognise a restarted gateway as the same member (Kafka
//! static group membership). Configured (`server.node_id`), or generated
//! once and kept next to the store, which only one process can hold open.

use std::io::Write;
use std::path::Path;

use crate::config::valid_node_id;

/// File in the store directory holding the generated id.
pub const NODE_ID_FILE: &str = "node-id";

#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    #[error("reading or writing the node id file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the node id file {path} holds {found:?}, not a valid node id")]
    Invalid { path: String, found: String },
}

/// The configured id, or the one kept in `store_dir` (created on first use).
/// Call only once the store is open: its lock keeps two processes from
/// sharing the directory, and so the id.
pub fn resolve(configured: &str, store_dir: &Path) -> Result<String, NodeIdError> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = store_dir.join(NODE_ID_FILE);
    let shown = path.display().to_string();
    let io = |source| NodeIdError::Io {
        path: shown.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if valid_node_id(id) {
                return Ok(id.to_string());
            }
            return Err(NodeIdError::Invalid {
                path: shown,
                found: id.chars().take(80).collect(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = format!("mqbridge-{:016x}", rand::random::<u64>());
    // Written whole or not at all: temp file, fsync, rename, fsync the directory.
    let tmp = store_dir.join(format!("{NODE_ID_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(id.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(store_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    tracing::info!(node_id = %id, "generated this gateway's node id");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_kept_and_configured_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = resolve("", dir.path()).expect("generated");
        assert!(valid_node_id(&a), "{a}");
        assert_eq!(resolve("", dir.path()).expect("kept"), a);
        assert_eq!(resolve("edge-7", dir.path()).expect("configured"), "edge-7");
        std::fs::write(dir.path().join(NODE_ID_FILE), "bad id!").expect("write");
        assert!(matches!(
            resolve("", dir.path()),
            Err(NodeIdError::Invalid { .. })
        ));
    }
}
