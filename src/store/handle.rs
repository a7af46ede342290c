//! The async handle: [`Store`], its options, [`Commit`] and [`StoreStats`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot};

use super::health::StoreHealth;
use super::recover::recover;
use super::writer::{Counters, Request, Writer};
use super::{Op, QueuedEntry, Recovered, StoreError};

/// Name of the database file inside [`StoreOptions::path`].
pub const DB_FILE: &str = "sessions.redb";

/// Called by the writer thread after each successful commit with the number
/// of ops and how long applying + committing took (feeds metrics).
pub type CommitObserver = Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>;

#[derive(Clone)]
pub struct StoreOptions {
    /// Directory of the store; created if missing.
    pub path: PathBuf,
    /// Upper bound of ops in one group commit (a single larger submission
    /// still commits whole).
    pub max_batch_ops: usize,
    /// Bound of the submission channel, in requests; a full channel makes
    /// `submit` wait (backpressure) rather than drop.
    pub queue_capacity: usize,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
    /// Optional per-commit observer.
    pub observer: Option<CommitObserver>,
    /// How long a failing commit is retried before the process exits
    /// (zero = retry for ever).
    pub commit_retry_max: Duration,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("path", &self.path)
            .field("max_batch_ops", &self.max_batch_ops)
            .field("queue_capacity", &self.queue_capacity)
            .field("cache_bytes", &self.cache_bytes)
            .field("commit_retry_max", &self.commit_retry_max)
            .finish_non_exhaustive()
    }
}

/// Cheap snapshot of the writer's counters (successful commits only).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub commits: u64,
    pub ops: u64,
    pub commit_nanos_total: u64,
    pub last_batch_ops: u64,
    /// Undecodable records moved to quarantine since open (start-up included).
    pub quarantined: u64,
    /// Failed commit attempts (each was retried).
    pub commit_failures: u64,
}

/// Handle to the store; clones share one writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Request>,
    counters: Arc<Counters>,
    health: Arc<StoreHealth>,
    /// Taken by the first `close`; async mutex so a concurrent `close` waits
    /// until the writer is really gone.
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating if needed) the database, reads what start-up needs
    /// (session records, queue indexes, incoming QoS 2 ids, retained
    /// messages; never queued bodies) and starts the writer thread.
    pub fn open(opts: &StoreOptions) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(&opts.path).map_err(|e| StoreError::Io {
            what: format!("creating {}", opts.path.display()),
            source: Some(Arc::new(e)),
        })?;
        let path = opts.path.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(&path)?;

        // One durable transaction creates missing tables and drops orphans.
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let recovered = recover(&txn)?;
        txn.commit()?;

        // tokio panics on 0 or on more than MAX_PERMITS; a config value must not.
        let capacity = opts
            .queue_capacity
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::channel(capacity);
        let counters = Arc::new(Counters::default());
        counters
            .quarantined
            .store(recovered.quarantined, Ordering::Relaxed);
        let health = Arc::new(StoreHealth::default());
        let writer = Writer {
            db: Some(db),
            path,
            cache_bytes: opts.cache_bytes,
            rx,
            counters: Arc::clone(&counters),
            max_batch_ops: opts.max_batch_ops.max(1),
            observer: opts.observer.clone(),
            health: Arc::clone(&health),
            commit_retry_max: opts.commit_retry_max,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::WriterSpawn(Arc::new(e)))?;

        let inner = Inner {
            tx,
            counters,
            health,
            writer: tokio::sync::Mutex::new(Some(handle)),
        };
        Ok((
            Store {
                inner: Arc::new(inner),
            },
            recovered,
        ))
    }

    /// Queues `ops` for the writer, waiting for channel capacity. The returned
    /// [`Commit`] resolves once they are durably committed; dropping it does
    /// not cancel them.
    pub async fn submit(&self, ops: Vec<Op>) -> Result<Commit, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Ops(ops, reply)).await?;
        Ok(Commit { rx })
    }

    /// Queued entries of `client_id` with seq < `below_seq`, ascending. Sent
    /// through the same FIFO as `submit`, so it sees every op submitted before.
    pub async fn load_queue(
        &self,
        client_id: &str,
        below_seq: u64,
    ) -> Result<Vec<(u64, QueuedEntry)>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let client_id = client_id.to_owned();
        self.send(Request::Load {
            client_id,
            below_seq,
            reply,
        })
        .await?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Resolves when everything submitted before it is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Flush(reply)).await?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Resolves once the writer thread is gone: after [`Store::close`], or
    /// when it died (the gateway's supervisor watches this).
    pub async fn writer_stopped(&self) {
        self.inner.tx.closed().await;
    }

    /// Makes the writer thread panic, for supervision tests only.
    #[doc(hidden)]
    pub async fn inject_writer_panic(&self) {
        let _ = self.inner.tx.send(Request::InjectPanic).await;
    }

    /// Flushes, stops the writer thread and joins it. Later calls return
    /// `Closed`; closing again is a no-op.
    pub async fn close(&self) -> Result<(), StoreError> {
        let mut writer = self.inner.writer.lock().await;
        let Some(handle) = writer.take() else {
            return Ok(());
        };
        let flushed = match self.flush().await {
            Err(StoreError::Closed) => Ok(()),
            other => other,
        };
        let (reply, rx) = oneshot::channel();
        if self.inner.tx.send(Request::Close(reply)).await.is_ok() {
            let _ = rx.await;
        }
        let joined = tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| StoreError::Task {
                what: "waiting for the writer thread",
                source: Arc::new(e),
            })?;
        joined.map_err(|_| StoreError::WriterPanicked)?;
        flushed
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            commit_nanos_total: c.commit_nanos_total.load(Ordering::Relaxed),
            last_batch_ops: c.last_batch_ops.load(Ordering::Relaxed),
            quarantined: c.quarantined.load(Ordering::Relaxed),
            commit_failures: c.commit_failures.load(Ordering::Relaxed),
        }
    }

    /// Free-space and commit health, shared with whoever must react to it.
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.inner.health
    }

    async fn send(&self, request: Request) -> Result<(), StoreError> {
        self.inner
            .tx
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)
    }
}

/// Resolves to `Ok` once the submitted ops are durable, to the commit's error
/// if it failed, or to `Closed` if the writer stopped before committing them.
#[derive(Debug)]
pub struct Commit {
    rx: oneshot::Receiver<Result<(), StoreError>>,
}

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|received| received.unwrap_or(Err(StoreError::Closed)))
    }
}
