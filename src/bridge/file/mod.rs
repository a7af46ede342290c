//! File sink: one JSON line per message, appended to `<path>/<target>.jsonl`,
//! rotated by size. The embedded default backend, so the bridge works with
//! no external service.
//!
//! A plain thread (writes and fsync block). It takes every envelope waiting
//! in its channel, writes them, fsyncs each touched file once, and only then
//! confirms the batch: the cost of an fsync is shared by the batch. A write
//! error keeps the batch and retries it after a pause (e.g. a full disk):
//! nothing is confirmed that is not on disk. Before a retry every file the
//! failed attempt touched is truncated back to its length before the batch,
//! so a line torn by the failure is cut off and no line is written twice.
//! The directory is fsynced after a file is created or rotated, so a crash
//! cannot lose the file's name while its data was reported durable.

mod backend;
pub mod config;

pub use backend::KIND;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::bridge::metrics::BackendCounters;
use crate::bridge::{BridgeError, Envelope, RunningSink, SinkHandle};
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
    /// Length of each file touched by a failed attempt before that attempt:
    /// cut back to it before the batch is written again.
    truncate: HashMap<String, u64>,
    /// A file was created since the directory was last fsynced.
    dir_dirty: bool,
    /// Test hook: fail a write after this many more bytes (a torn line).
    #[cfg(test)]
    fail_after: Option<usize>,
}

pub fn start(
    cfg: &FileBackend,
    counters: BackendCounters,
    capacity: usize,
    tasks: &TaskTracker,
) -> Result<RunningSink, BridgeError> {
    let err = |reason: String| BridgeError::Backend {
        backend: cfg.name.clone(),
        reason,
    };
    std::fs::create_dir_all(&cfg.path)
        .map_err(|e| err(format!("creating {}: {e}", cfg.path.display())))?;
    let (tx, rx) = mpsc::channel(capacity);
    counters.up.set(1);
    let sink = FileSink::new(cfg.clone(), counters);
    let thread = std::thread::Builder::new()
        .name(format!("sink-file-{}", cfg.name))
        .spawn(move || sink.run(rx))
        .map_err(|e| err(format!("spawning the writer thread: {e}")))?;
    let task = tasks.spawn_blocking(move || {
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
    fn new(cfg: FileBackend, counters: BackendCounters) -> FileSink {
        FileSink {
            cfg,
            counters,
            open: HashMap::new(),
            truncate: HashMap::new(),
            dir_dirty: false,
            #[cfg(test)]
            fail_after: None,
        }
    }

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

    /// Writes a batch and fsyncs every file it touched (and the directory,
    /// if a file was created). On error the touched files are remembered with
    /// their earlier length for [`FileSink::undo_failed`].
    fn write(&mut self, batch: &[Envelope]) -> std::io::Result<()> {
        self.undo_failed()?;
        let mut before: HashMap<String, u64> = HashMap::new();
        let result = self.write_synced(batch, &mut before);
        if result.is_err() {
            for (name, len) in before {
                // An earlier failed attempt's length is the one that was good.
                self.truncate.entry(name).or_insert(len);
            }
        }
        result?;
        self.rotate_full();
        Ok(())
    }

    fn write_synced(
        &mut self,
        batch: &[Envelope],
        before: &mut HashMap<String, u64>,
    ) -> std::io::Result<()> {
        for env in batch {
            let line = json_line(env);
            let name = sanitize(&env.record.target);
            let t = self.target(&name)?;
            before.entry(name.clone()).or_insert(t.size);
            self.append(&name, line.as_bytes())?;
        }
        for name in before.keys() {
            if let Some(t) = self.open.get_mut(name) {
                t.file.sync_data()?;
            }
        }
        if self.dir_dirty {
            sync_dir(&self.cfg.path)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        let (bytes, injected) = self.injected_cut(bytes);
        let t = self.target(name)?;
        t.file.write_all(bytes)?;
        t.size += bytes.len() as u64;
        #[cfg(test)]
        if injected {
            return Err(std::io::Error::other("injected write failure"));
        }
        Ok(())
    }

    /// Test hook: the part of `bytes` written before the injected failure.
    #[cfg(test)]
    fn injected_cut<'b>(&mut self, bytes: &'b [u8]) -> (&'b [u8], bool) {
        match self.fail_after {
            Some(left) if left < bytes.len() => {
                self.fail_after = None;
                (&bytes[..left], true)
            }
            Some(left) => {
                self.fail_after = Some(left - bytes.len());
                (bytes, false)
            }
            None => (bytes, false),
        }
    }

    /// Cuts files touched by a failed attempt back to their earlier length,
    /// dropping a torn line and any line that will be written again.
    fn undo_failed(&mut self) -> std::io::Result<()> {
        if self.truncate.is_empty() {
            return Ok(());
        }
        self.open.clear();
        for (name, len) in &self.truncate {
            let path = file_path(&self.cfg.path, name, 0);
            match OpenOptions::new().write(true).open(&path) {
                Ok(f) => {
                    f.set_len(*len)?;
                    f.sync_data()?;
                }
                // Never created: nothing to cut.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.truncate.clear();
        Ok(())
    }

    /// Rotates files over `max_file_bytes`. The batch is already durable, so
    /// a failure is logged and rotation tried again after the next batch.
    fn rotate_full(&mut self) {
        let max = self.cfg.max_file_bytes;
        let full: Vec<String> = self
            .open
            .iter()
            .filter(|(_, t)| t.size >= max)
            .map(|(name, _)| name.clone())
            .collect();
        for name in full {
            self.open.remove(&name);
            let rotated = rotate(&self.cfg.path, &name, self.cfg.max_files)
                .and_then(|()| sync_dir(&self.cfg.path));
            if let Err(e) = rotated {
                tracing::warn!(backend = %self.cfg.name, file = %name, error = %e, "rotating a file sink file failed; retried after the next batch");
            }
        }
    }

    fn target(&mut self, name: &str) -> std::io::Result<&mut Target> {
        if !self.open.contains_key(name) {
            let path = file_path(&self.cfg.path, name, 0);
            let existed = path.exists();
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let size = file.metadata()?.len();
            self.dir_dirty |= !existed;
            self.open.insert(name.to_string(), Target { file, size });
        }
        self.open
            .get_mut(name)
            .ok_or_else(|| std::io::Error::other("file vanished"))
    }
}

/// Makes the directory's entries (a created or renamed file) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
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

    fn envelope(metrics: &crate::bridge::metrics::BridgeMetrics, payload: &str) -> Envelope {
        Envelope {
            record: crate::bridge::Record {
                route: "r".into(),
                counters: metrics.route("r"),
                client_id: "c".into(),
                target: "t".into(),
                key: None,
                payload: bytes::Bytes::from(payload.to_owned()),
                headers: Vec::new(),
                content_type: None,
            },
            confirm: None,
        }
    }

    #[test]
    fn a_failed_write_is_cut_back_so_no_line_is_torn_or_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::bridge::metrics::BridgeMetrics::new(&mut registry);
        let cfg = FileBackend {
            name: "f".into(),
            path: dir.path().to_path_buf(),
            max_file_bytes: 1 << 20,
            max_files: 2,
        };
        let mut sink = FileSink::new(cfg, metrics.backend("f"));
        sink.write(&[envelope(&metrics, "first")]).unwrap();
        let batch = [
            envelope(&metrics, "a"),
            envelope(&metrics, "b"),
            envelope(&metrics, "c"),
        ];
        // The attempt writes line "a" whole and half of line "b", then fails.
        let line = json_line(&batch[0]).len();
        sink.fail_after = Some(line + line / 2);
        assert!(sink.write(&batch).is_err());
        sink.write(&batch).unwrap();

        let text = std::fs::read_to_string(file_path(dir.path(), "t", 0)).unwrap();
        assert!(text.ends_with('\n'));
        let payloads: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
                v["payload"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(payloads, ["first", "a", "b", "c"]);
    }

    #[test]
    fn targets_cannot_escape_the_directory() {
        assert_eq!(sanitize("../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize("telemetry"), "telemetry");
        assert_eq!(sanitize(""), "_");
    }
}
