//! The writer thread: owns the database, serves requests in FIFO order and
//! group-commits consecutive op submissions into one durable transaction.
//!
//! A plain thread (not a tokio task) because every commit blocks on fsync.
//!
//! A failed commit is not reported to its waiters: the router has already
//! applied the batch to its memory, so answering "failed" would leave memory
//! and disk apart. After an I/O error redb refuses every later call until
//! reopened, so the writer reopens the database (which repairs it to the last
//! committed state) and retries the same batch with backoff until it commits;
//! waiters (and so every PUBACK/CONNACK/command ack behind them) wait, and
//! `/readyz` says not ready meanwhile. Ops only set or delete keys, so a retry
//! of a batch that did land before the error is harmless. An error that is
//! not I/O (corruption) or a failure lasting past `commit_retry_max` ends the
//! writer thread: its waiters get `Closed` (nothing is acknowledged), the
//! gateway's supervisor sees the writer gone and stops the gateway with an
//! error (the binary exits non-zero), and a restart rebuilds memory from what
//! is on disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::health::StoreHealth;
use super::tables::{decode, Tables, QUEUE};
use super::{Op, QueuedEntry, StoreError};

/// First and largest pause between attempts of a failed commit.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// The store cannot recover: the writer stops (see the module comment).
struct Fatal;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the handle sends to the writer.
pub(super) enum Request {
    Ops(Vec<Op>, Reply<()>),
    Load {
        client_id: String,
        below_seq: u64,
        reply: Reply<Vec<(u64, QueuedEntry)>>,
    },
    Flush(Reply<()>),
    Close(oneshot::Sender<()>),
    /// Fault injection for supervision tests: the writer thread panics.
    InjectPanic,
}

/// Counters behind [`super::StoreStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub commit_nanos_total: AtomicU64,
    pub last_batch_ops: AtomicU64,
    /// Records moved to quarantine (start-up and later reads).
    pub quarantined: AtomicU64,
    /// Failed commit attempts (each is retried).
    pub commit_failures: AtomicU64,
}

/// Ops to commit together, everyone waiting for that commit, and the queue
/// reads that arrived among them.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    waiters: Vec<Reply<()>>,
    loads: Vec<Load>,
}

/// A queue read, served inside the batch's write transaction at its place in
/// the FIFO (after the `at` ops before it, before the ones after it), so it
/// sees exactly what a read after a commit of those ops would, without a
/// commit (an fsync) of its own: a storm of reconnecting persistent
/// sessions interleaved with acks no longer costs an fsync per session.
struct Load {
    at: usize,
    client_id: String,
    below_seq: u64,
    reply: Reply<Vec<(u64, QueuedEntry)>>,
}

/// Entries read for one load, and the undecodable ones to quarantine.
type Read = (Vec<(u64, QueuedEntry)>, Vec<(u64, Vec<u8>, StoreError)>);

pub(super) struct Writer {
    /// `None` only between dropping a failed database and reopening it.
    pub db: Option<Database>,
    /// The database file, for reopening.
    pub path: PathBuf,
    pub cache_bytes: usize,
    pub rx: mpsc::Receiver<Request>,
    pub counters: Arc<Counters>,
    pub max_batch_ops: usize,
    pub observer: Option<super::handle::CommitObserver>,
    pub health: Arc<StoreHealth>,
    /// How long a commit may keep failing before the process exits (0 = never).
    pub commit_retry_max: Duration,
}

impl Writer {
    /// Runs until a `Close` request or until every handle is dropped. Requests
    /// still in the channel after `Close` are dropped, which resolves their
    /// waiters with `Closed`.
    pub fn run(mut self) {
        let mut carried: Option<Request> = None;
        loop {
            let request = match carried.take() {
                Some(request) => request,
                None => match self.rx.blocking_recv() {
                    Some(request) => request,
                    None => break,
                },
            };
            match request {
                Request::Ops(ops, reply) => {
                    let mut batch = Batch {
                        ops,
                        waiters: vec![reply],
                        loads: Vec::new(),
                    };
                    carried = self.fill(&mut batch);
                    if self.commit(batch).is_err() {
                        break;
                    }
                }
                Request::Load {
                    client_id,
                    below_seq,
                    reply,
                } => {
                    let mut batch = Batch::default();
                    batch.loads.push(Load {
                        at: 0,
                        client_id,
                        below_seq,
                        reply,
                    });
                    carried = self.fill(&mut batch);
                    if self.commit(batch).is_err() {
                        break;
                    }
                }
                // Everything before a lone flush was already committed (or its
                // waiters were told it failed).
                Request::Flush(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Request::Close(reply) => {
                    let _ = reply.send(());
                    break;
                }
                Request::InjectPanic => panic!("injected store writer fault"),
            }
        }
        tracing::debug!("store writer stopped");
    }

    /// Drains queued requests into `batch` up to `max_batch_ops`, loads
    /// included at their place. Returns the first request that cannot join
    /// (a close, or ops that would overflow the batch).
    fn fill(&mut self, batch: &mut Batch) -> Option<Request> {
        while batch.ops.len() < self.max_batch_ops {
            match self.rx.try_recv() {
                Ok(Request::Ops(ops, reply)) => {
                    if batch.ops.len() + ops.len() > self.max_batch_ops {
                        return Some(Request::Ops(ops, reply));
                    }
                    batch.ops.extend(ops);
                    batch.waiters.push(reply);
                }
                // A flush is satisfied by the commit of everything before it.
                Ok(Request::Flush(reply)) => batch.waiters.push(reply),
                Ok(Request::Load {
                    client_id,
                    below_seq,
                    reply,
                }) => batch.loads.push(Load {
                    at: batch.ops.len(),
                    client_id,
                    below_seq,
                    reply,
                }),
                Ok(other) => return Some(other),
                Err(_) => return None,
            }
        }
        None
    }

    /// Applies the batch in one transaction and commits it durably, retrying
    /// (see the module comment) until it lands, then answers every waiter.
    fn commit(&mut self, batch: Batch) -> Result<(), Fatal> {
        if batch.ops.is_empty() {
            // Only reads (and flushes of what is already committed).
            for l in batch.loads {
                let _ = l.reply.send(self.load(&l.client_id, l.below_seq));
            }
            for waiter in batch.waiters {
                let _ = waiter.send(Ok(()));
            }
            return Ok(());
        }
        let mut started = Instant::now();
        let mut failing_since: Option<Instant> = None;
        let mut pause = RETRY_FIRST;
        let mut attempts = 0u64;
        let reads = loop {
            let e = match self.write(&batch.ops, &batch.loads) {
                Ok(reads) => break reads,
                Err(e) => e,
            };
            attempts += 1;
            self.counters
                .commit_failures
                .fetch_add(1, Ordering::Relaxed);
            let since = *failing_since.get_or_insert_with(Instant::now);
            if !e.is_io() {
                return Err(self.fatal(&e, "store error that a reopen cannot fix"));
            }
            if !self.commit_retry_max.is_zero() && since.elapsed() > self.commit_retry_max {
                return Err(self.fatal(
                    &e,
                    "store commit kept failing past store.commit_retry_max_secs",
                ));
            }
            if attempts == 1 {
                self.health.set_failing(true);
                tracing::error!(store = %self.path.display(), ops = batch.ops.len(), waiters = batch.waiters.len(), error = &e as &dyn std::error::Error, "store commit failed; reopening the store and retrying (acknowledgements wait)");
            } else {
                tracing::debug!(
                    attempts,
                    error = &e as &dyn std::error::Error,
                    "store commit retry failed"
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_MAX);
            self.reopen();
            started = Instant::now();
        };
        if attempts > 0 {
            self.health.set_failing(false);
            tracing::warn!(store = %self.path.display(), attempts, "store commit succeeded after failures; store healthy again");
        }
        let n = batch.ops.len() as u64;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.ops.fetch_add(n, Ordering::Relaxed);
        self.counters
            .commit_nanos_total
            .fetch_add(nanos, Ordering::Relaxed);
        self.counters.last_batch_ops.store(n, Ordering::Relaxed);
        if let Some(observe) = &self.observer {
            observe(batch.ops.len(), started.elapsed());
        }
        for waiter in batch.waiters {
            let _ = waiter.send(Ok(()));
        }
        // Answered once the ops they saw are durable.
        for (l, (entries, corrupt)) in batch.loads.into_iter().zip(reads) {
            self.quarantine_logged(&l.client_id, &corrupt);
            let _ = l.reply.send(Ok(entries));
        }
        Ok(())
    }

    /// Drops the database and opens it again, which clears redb's
    /// `PreviousIo` state and repairs the file to its last commit. A failed
    /// open leaves `db` empty; the next attempt reopens again.
    fn reopen(&mut self) {
        self.db = None;
        match Database::builder()
            .set_cache_size(self.cache_bytes)
            .create(&self.path)
        {
            Ok(db) => self.db = Some(db),
            Err(e) => tracing::debug!(error = &e as &dyn std::error::Error, "store reopen failed"),
        }
    }

    fn fatal(&self, e: &StoreError, why: &str) -> Fatal {
        self.health.set_failing(true);
        tracing::error!(store = %self.path.display(), error = e as &dyn std::error::Error, why, "store cannot recover; its writer stops, which stops the gateway (restart it to rebuild from what is on disk)");
        Fatal
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Io {
            what: "the database is not open (reopen failed)".into(),
            source: None,
        })
    }

    /// Applies `ops` in one transaction, serving each load at its place
    /// among them, and commits.
    fn write(&self, ops: &[Op], loads: &[Load]) -> Result<Vec<Read>, StoreError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let mut reads = Vec::with_capacity(loads.len());
        let quarantined = {
            let mut tables = Tables::open(&txn)?;
            let mut next = loads.iter().peekable();
            for (i, op) in ops.iter().enumerate() {
                while let Some(l) = next.next_if(|l| l.at == i) {
                    reads.push(read_queue(&tables.queue, &l.client_id, l.below_seq)?);
                }
                tables.apply(op)?;
            }
            for l in next {
                reads.push(read_queue(&tables.queue, &l.client_id, l.below_seq)?);
            }
            tables.quarantined
        };
        // On error above, dropping `txn` aborts it: nothing of the batch lands.
        txn.commit()?;
        self.counters
            .quarantined
            .fetch_add(quarantined, Ordering::Relaxed);
        Ok(reads)
    }

    /// Reads queued bodies below `below_seq` in a read transaction. A body
    /// that fails to decode is quarantined; the caller treats an absent seq
    /// as gone.
    fn load(&self, client_id: &str, below_seq: u64) -> Result<Vec<(u64, QueuedEntry)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let queue = match txn.open_table(QUEUE) {
            Ok(queue) => queue,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let (entries, corrupt) = read_queue(&queue, client_id, below_seq)?;
        drop((queue, txn));
        self.quarantine_logged(client_id, &corrupt);
        Ok(entries)
    }

    /// Moves undecodable entries to quarantine; a failure leaves them in
    /// place for the next start-up.
    fn quarantine_logged(&self, client_id: &str, corrupt: &[(u64, Vec<u8>, StoreError)]) {
        if corrupt.is_empty() {
            return;
        }
        if let Err(e) = self.quarantine(client_id, corrupt) {
            tracing::error!(
                client_id,
                error = &e as &dyn std::error::Error,
                "moving undecodable queued entries to quarantine failed"
            );
        }
    }

    fn quarantine(
        &self,
        client_id: &str,
        corrupt: &[(u64, Vec<u8>, StoreError)],
    ) -> Result<(), StoreError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let n = {
            let mut tables = Tables::open(&txn)?;
            for (seq, bytes, e) in corrupt {
                tables.quarantine_entry(client_id, *seq, bytes, e)?;
            }
            tables.quarantined
        };
        txn.commit()?;
        self.counters.quarantined.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// The queued entries of `client_id` below `below_seq`, ascending, from a
/// read or write transaction's queue table.
fn read_queue(
    queue: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    client_id: &str,
    below_seq: u64,
) -> Result<Read, StoreError> {
    let mut entries = Vec::new();
    let mut corrupt = Vec::new();
    for row in queue.range((client_id, 0u64)..(client_id, below_seq))? {
        let (key, value) = row?;
        let seq = key.value().1;
        match decode::<QueuedEntry>(value.value()) {
            Ok(entry) => entries.push((seq, entry)),
            Err(e) => corrupt.push((seq, value.value().to_vec(), e)),
        }
    }
    Ok((entries, corrupt))
}
