//! File sink: one JSON line per message, appended to `<path>/<target>.jsonl`,
//! rotated by size. The embedded default backend, so the bridge works with
//! no external service.
//!
//! A plain thread (writes and fsync block). It takes every envelope waiting
//! in its channel, writes them, fsyncs each touched file once, and only then
//! confirms the batch: the cost of an fsync is shared by the batch. A write
//! error keeps the batch and retries it after a pause (e.g. a full disk):
//! nothing is confirmed that is not on disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::mpsc;

use super::metrics::BackendCounters;
use super::{BridgeError, Envelope, RunningSink, SinkHandle};
use crate::config::FileBackend;

/// Most envelopes written before one fsync.
const BATCH: usize = 1024;

struct Target {
    file: File,
    size: u64,
}

struct FileSink {
    cfg: FileBackend,
    counters: BackendCounters,
    open: HashMap<String, Target>,
}

pub fn start(
    cfg: &FileBackend,
    counters: BackendCounters,
    capacity: usize,
) -> Result<RunningSink, BridgeError> {
    let err = |reason: String| BridgeError::Backend {
        backend: cfg.name.clone(),
        reason,
    };
    std::fs::create_dir_all(&cfg.path)
        .map_err(|e| err(format!("creating {}: {e}", cfg.path.display())))?;
    let (tx, rx) = mpsc::channel(capacity);
    counters.up.set(1);
    let sink = FileSink {
        cfg: cfg.clone(),
        counters,
        open: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("sink-file-{}", cfg.name))
        .spawn(move || sink.run(rx))
        .map_err(|e| err(format!("spawning the writer thread: {e}")))?;
    let task = tokio::task::spawn_blocking(move || {
        let _ = thread.join();
    });
    Ok(RunningSink {
        handle: SinkHandle {
            backend: Arc::from(cfg.name.as_str()),
            tx,
        },
        task,
    })
}

impl FileSink {
    fn run(mut self, mut rx: mpsc::Receiver<Envelope>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            while let Err(e) = self.write(&batch) {
                tracing::error!(backend = %self.cfg.name, error = %e, "file sink write failed; retrying");
                self.counters.retries.inc();
                self.open.clear();
                std::thread::sleep(Duration::from_secs(1));
            }
            for env in batch {
                env.record.counters.delivered.inc();
                if let Some(c) = env.confirm {
                    let _ = c.send(Ok(()));
                }
            }
            self.counters
                .confirm
                .observe(started.elapsed().as_secs_f64());
        }
        self.counters.up.set(0);
    }

    /// Writes a batch and fsyncs every file it touched.
    fn write(&mut self, batch: &[Envelope]) -> std::io::Result<()> {
        let mut touched: Vec<String> = Vec::new();
        for env in batch {
            let line = json_line(env);
            let name = sanitize(&env.record.target);
            let t = self.target(&name)?;
            t.file.write_all(line.as_bytes())?;
            t.size += line.len() as u64;
            if !touched.contains(&name) {
                touched.push(name);
            }
        }
        for name in touched {
            let max = self.cfg.max_file_bytes;
            let Some(t) = self.open.get_mut(&name) else {
                continue;
            };
            t.file.sync_data()?;
            if t.size >= max {
                self.open.remove(&name);
                rotate(&self.cfg.path, &name, self.cfg.max_files)?;
            }
        }
        Ok(())
    }

    fn target(&mut self, name: &str) -> std::io::Result<&mut Target> {
        if !self.open.contains_key(name) {
            let path = file_path(&self.cfg.path, name, 0);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let size = file.metadata()?.len();
            self.open.insert(name.to_string(), Target { file, size });
        }
        self.open
            .get_mut(name)
            .ok_or_else(|| std::io::Error::other("file vanished"))
    }
}

/// A target is a file name stem; anything that could leave the directory is replaced.
fn sanitize(target: &str) -> String {
    let s: String = target
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

fn file_path(dir: &Path, name: &str, n: usize) -> PathBuf {
    if n == 0 {
        dir.join(format!("{name}.jsonl"))
    } else {
        dir.join(format!("{name}.jsonl.{n}"))
    }
}

/// `name.jsonl` → `.1` → `.2` …; the oldest beyond `keep` is deleted.
fn rotate(dir: &Path, name: &str, keep: usize) -> std::io::Result<()> {
    let _ = std::fs::remove_file(file_path(dir, name, keep));
    for n in (0..keep).rev() {
        let from = file_path(dir, name, n);
        if from.exists() {
            std::fs::rename(&from, file_path(dir, name, n + 1))?;
        }
    }
    Ok(())
}

/// One JSON object per line. The payload is kept byte for byte: as text when
/// it is UTF-8, base64 otherwise.
fn json_line(env: &Envelope) -> String {
    let r = &env.record;
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut obj = serde_json::json!({
        "route": &*r.route,
        "client_id": &*r.client_id,
        "key": r.key,
        "content_type": r.content_type,
        "headers": headers,
    });
    match std::str::from_utf8(&r.payload) {
        Ok(text) => obj["payload"] = serde_json::Value::String(text.to_string()),
        Err(_) => {
            obj["payload_base64"] = serde_json::Value::String(
                base64::engine::general_purpose::STANDARD.encode(&r.payload),
            )
        }
    }
    let mut line = obj.to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..4 {
            std::fs::write(file_path(dir.path(), "t", 0), format!("{round}")).unwrap();
            rotate(dir.path(), "t", 2).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(file_path(dir.path(), "t", 1)).unwrap(),
            "3"
        );
        assert_eq!(
            std::fs::read_to_string(file_path(dir.path(), "t", 2)).unwrap(),
            "2"
        );
        assert!(!file_path(dir.path(), "t", 3).exists());
    }

    #[test]
    fn targets_cannot_escape_the_directory() {
        assert_eq!(sanitize("../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize("telemetry"), "telemetry");
        assert_eq!(sanitize(""), "_");
    }
}
