//! File sink: one JSON line per message, appended to `<path>/<target>.jsonl`,
//! rotated by size. The embedded default backend, so the bridge works with
//! no external service.
//!
//! A [`Sink`] driven by [`run_sink`]: `send` renders the record's line and
//! queues it for the writer thread ([`writer`]; writes and fsync block),
//! and its `Pending` resolves once the batch holding the line is fsynced.
//! One fsync per batch, never one per record.

mod backend;
pub mod config;
mod writer;

pub use backend::KIND;

use base64::Engine as _;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::bridge::contract::{BoxError, BoxFuture, Delivery, Pending, Sink};
use crate::bridge::driver::{run_sink, sink::WINDOW};
use crate::bridge::metrics::BackendCounters;
use crate::bridge::{BridgeError, Record, RunningSink};
use crate::config::FileBackend;
use writer::{Line, Queued, Writer};

/// Starts the writer thread and the driver of the sink. A directory that
/// cannot be created fails the start.
pub fn start(
    cfg: &FileBackend,
    counters: BackendCounters,
    capacity: usize,
    tasks: &TaskTracker,
) -> Result<RunningSink, BridgeError> {
    let err = |what: String, e: std::io::Error| BridgeError::Backend {
        backend: cfg.name.clone(),
        what,
        source: e.into(),
    };
    std::fs::create_dir_all(&cfg.path)
        .map_err(|e| err(format!("creating {}", cfg.path.display()), e))?;
    // The driver keeps at most WINDOW records unconfirmed, so this queue
    // rarely fills; when it does (the disk is slow), `send` waits.
    let (tx, rx) = mpsc::channel(WINDOW);
    let writer = Writer::new(cfg.clone(), counters.clone());
    let thread = std::thread::Builder::new()
        .name(format!("sink-file-{}", cfg.name))
        .spawn(move || writer.run(rx))
        .map_err(|e| err("spawning the writer thread".into(), e))?;
    // Ends once the driver has dropped the sink (and with it the sender).
    tasks.spawn_blocking(move || {
        let _ = thread.join();
    });
    Ok(run_sink(
        &cfg.name,
        Box::new(FileSink { tx }),
        counters,
        capacity,
        tasks,
    ))
}

struct FileSink {
    tx: mpsc::Sender<Queued>,
}

const WRITER_GONE: &str = "the file writer thread stopped";

impl Sink for FileSink {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        let alive = !self.tx.is_closed();
        Box::pin(async move {
            if alive {
                Ok(())
            } else {
                Err(WRITER_GONE.into())
            }
        })
    }

    fn send<'a>(&'a mut self, record: &'a Record) -> BoxFuture<'a, Result<Pending, BoxError>> {
        // Rendered here, so the record is not cloned for the thread.
        let (done, on_disk) = tokio::sync::oneshot::channel();
        let queued = Queued {
            line: line(record),
            done,
        };
        Box::pin(async move {
            self.tx.send(queued).await.map_err(|_| WRITER_GONE)?;
            let pending: Pending = Box::pin(async move {
                on_disk
                    .await
                    .unwrap_or_else(|_| Delivery::Retry(WRITER_GONE.into()))
            });
            Ok(pending)
        })
    }
}

/// The record as the writer stores it.
fn line(record: &Record) -> Line {
    Line {
        name: writer::sanitize(&record.target),
        text: json_line(record),
    }
}

/// One JSON object per line. The payload is kept byte for byte: as text when
/// it is UTF-8, base64 otherwise.
fn json_line(r: &Record) -> String {
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
