//! The `spool` acknowledgement mode: a route's messages are appended to a
//! local fsynced spool before the device is acknowledged, then drained to
//! the backend in order. Survives restarts and `kill -9`: whatever was
//! acknowledged is on disk until the backend confirmed it.
//!
//! One redb file per route (`<store.path>/spool/<route>.redb`), keyed by a
//! sequence number. A writer thread appends in groups (one fsync per
//! batch) and confirms the batch; a drain task ([`drain`]) reads in order,
//! hands each record to the backend sink and deletes it once confirmed.
//! The spool is bounded in bytes: when full, the writer stops taking new
//! messages, so devices wait for their acknowledgement as in `backend` mode
//! (logged once per episode and counted in `mqbridge_bridge_spool_full_total`).

mod drain;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use super::metrics::RouteCounters;
use super::{BridgeError, Envelope, Record, RunningSink, SinkHandle};

const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

/// Spool database errors reuse the store's (redb and I/O errors kept as their source).
pub type SpoolError = crate::store::StoreError;

/// Most envelopes appended per fsync.
const BATCH: usize = 1024;

/// A record as spooled (counters are re-attached when drained).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spooled {
    route: String,
    client_id: String,
    target: String,
    key: Option<String>,
    payload: Bytes,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
}

impl Spooled {
    fn from_record(r: &Record) -> Spooled {
        Spooled {
            route: r.route.to_string(),
            client_id: r.client_id.to_string(),
            target: r.target.clone(),
            key: r.key.clone(),
            payload: r.payload.clone(),
            headers: r.headers.clone(),
            content_type: r.content_type.clone(),
        }
    }

    fn into_record(self, counters: &RouteCounters) -> Record {
        Record {
            route: self.route.into(),
            counters: counters.clone(),
            client_id: self.client_id.into(),
            target: self.target,
            key: self.key,
            payload: self.payload,
            headers: self.headers,
            content_type: self.content_type,
        }
    }
}

/// State shared by the writer and the drain task.
struct Shared {
    /// `None` only while the writer reopens it after an I/O error (redb
    /// refuses every call after one until reopened). The lock is held for a
    /// transaction at a time; only the reopen takes it exclusively.
    db: std::sync::RwLock<Option<Database>>,
    path: std::path::PathBuf,
    /// Bytes currently spooled (approximate: encoded sizes).
    bytes: AtomicU64,
    max_bytes: u64,
    /// Wakes the drain task after an append.
    appended: Notify,
    route: String,
    spool_full: prometheus_client::metrics::counter::Counter,
    /// `bytes`, exported.
    bytes_gauge: prometheus_client::metrics::gauge::Gauge,
    /// The store's health: appends wait while its disk is below the
    /// watermark (the spool lives on the same filesystem, under store.path).
    store_health: Arc<crate::store::StoreHealth>,
}

/// Where a route's spool lives: a directory on the store's filesystem, and
/// that store's health (appends wait while its disk is low); and how large
/// it may grow, in bytes.
pub struct SpoolDisk<'a> {
    pub dir: &'a Path,
    pub store_health: Arc<crate::store::StoreHealth>,
    pub max_bytes: u64,
    /// `mqbridge_bridge_spool_bytes{route}`.
    pub bytes_gauge: prometheus_client::metrics::gauge::Gauge,
}

/// Starts the spool of one route in front of `backend`. Returns the
/// handle devices' envelopes go to.
pub fn start(
    route: &str,
    disk: SpoolDisk<'_>,
    backend: SinkHandle,
    counters: RouteCounters,
    spool_full: prometheus_client::metrics::counter::Counter,
    capacity: usize,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<RunningSink, BridgeError> {
    let SpoolDisk {
        dir,
        store_health,
        max_bytes,
        bytes_gauge,
    } = disk;
    let err = |what: String, source: crate::bridge::contract::BoxError| BridgeError::Backend {
        backend: format!("spool of route {route}"),
        what,
        source,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("creating {}", dir.display()), e.into()))?;
    let path = dir.join(format!("{}.redb", sanitize(route)));
    let db = Database::create(&path)
        .map_err(|e| err(format!("opening {}", path.display()), e.into()))?;
    let bytes = spooled_bytes(&db).map_err(|e| err("reading its size".into(), e.into()))?;
    if bytes > 0 {
        tracing::info!(
            route,
            bytes,
            "spool holds messages from before the restart; draining them first"
        );
    }
    let shared = Arc::new(Shared {
        db: std::sync::RwLock::new(Some(db)),
        path,
        bytes: AtomicU64::new(bytes),
        max_bytes,
        appended: Notify::new(),
        route: route.to_string(),
        spool_full,
        store_health,
        bytes_gauge,
    });
    shared.bytes_gauge.set(bytes as i64);
    let (tx, rx) = mpsc::channel(capacity);
    let writer_shared = shared.clone();
    let writer = std::thread::Builder::new()
        .name(format!("spool-{route}"))
        .spawn(move || write_loop(writer_shared, rx))
        .map_err(|e| err("spawning the spool writer".into(), e.into()))?;
    let drain = tasks.spawn(drain::run(shared, backend, counters));
    let task = tasks.spawn(async move {
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        // The drain task ends when the spool is empty and the writer is gone.
        let _ = drain.await;
    });
    Ok(RunningSink {
        handle: SinkHandle {
            backend: Arc::from(route),
            tx,
        },
        task,
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn spooled_bytes(db: &Database) -> Result<u64, SpoolError> {
    let txn = db.begin_write()?;
    txn.open_table(SPOOL)?;
    txn.commit()?;
    let read = db.begin_read()?;
    let table = read.open_table(SPOOL)?;
    let mut total = 0;
    for row in table.iter()? {
        total += row?.1.value().len() as u64;
    }
    Ok(total)
}

/// Appends batches durably, then confirms them; waits while the spool is full.
fn write_loop(sh: Arc<Shared>, mut rx: mpsc::Receiver<Envelope>) {
    let mut next = match sh.with_db(last_seq) {
        Ok(s) => s + 1,
        Err(e) => {
            tracing::error!(route = %sh.route, error = %e, "spool unreadable; route stopped");
            return;
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        wait_for_room(&sh);
        wait_for_disk(&sh);
        while let Err(e) = sh.with_db(|db| append(&sh, db, next, &batch)) {
            tracing::error!(route = %sh.route, error = %e, "spool append failed; reopening the spool and retrying (acknowledgements wait)");
            std::thread::sleep(Duration::from_secs(1));
            sh.reopen();
        }
        next += batch.len() as u64;
        sh.appended.notify_one();
        for env in batch {
            if let Some(c) = env.confirm {
                let _ = c.send(Ok(()));
            }
        }
    }
    // Wake the drain task so it notices the input is gone.
    sh.appended.notify_one();
}

/// Blocks the writer while the spool is over its bound; devices' acks wait meanwhile.
fn wait_for_room(sh: &Shared) {
    if sh.bytes.load(Ordering::Acquire) < sh.max_bytes {
        return;
    }
    sh.spool_full.inc();
    tracing::warn!(route = %sh.route, max_bytes = sh.max_bytes, "spool full: acknowledgements wait for the backend (as in ack=backend)");
    while sh.bytes.load(Ordering::Acquire) >= sh.max_bytes {
        // `Notify` is async; a short sleep keeps this plain thread simple.
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(route = %sh.route, "spool has room again");
}

/// Blocks the writer while the store's disk is below its watermark: nothing
/// is appended (nor acknowledged) until space is back.
fn wait_for_disk(sh: &Shared) {
    if !sh.store_health.disk_low() {
        return;
    }
    tracing::warn!(route = %sh.route, "store disk low: spool appends (and their acknowledgements) wait");
    while sh.store_health.disk_low() {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(route = %sh.route, "store disk has room again: spool appends resume");
}

fn last_seq(db: &Database) -> Result<u64, SpoolError> {
    let read = db.begin_read()?;
    let table = read.open_table(SPOOL)?;
    let last = table.last()?.map_or(0, |(k, _)| k.value());
    Ok(last)
}

impl Shared {
    /// Runs `f` on the open database (an I/O error if a reopen failed).
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(SpoolError::Io {
                what: "the spool database is not open".into(),
                source: None,
            }),
        }
    }

    /// Drops the database and opens it again (repairing it to its last commit).
    fn reopen(&self) {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        *guard = None;
        match Database::create(&self.path) {
            Ok(db) => *guard = Some(db),
            Err(e) => tracing::debug!(route = %self.route, error = %e, "spool reopen failed"),
        }
    }
}

fn append(sh: &Shared, db: &Database, first: u64, batch: &[Envelope]) -> Result<(), SpoolError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    let mut added = 0u64;
    {
        let mut table = txn.open_table(SPOOL)?;
        for (i, env) in batch.iter().enumerate() {
            let bytes = postcard::to_stdvec(&Spooled::from_record(&env.record))
                .map_err(SpoolError::Encode)?;
            added += bytes.len() as u64;
            table.insert(first + i as u64, bytes.as_slice())?;
        }
    }
    txn.commit()?;
    let now = sh.bytes.fetch_add(added, Ordering::AcqRel) + added;
    sh.bytes_gauge.set(now as i64);
    Ok(())
}
