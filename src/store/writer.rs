//! The writer thread: owns the database, serves requests in FIFO order and
//! group-commits consecutive op submissions into one durable transaction.
//!
//! A plain thread (not a tokio task) because every commit blocks on fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot};

use super::tables::{decode, Tables, QUEUE};
use super::{Op, QueuedEntry, StoreError};

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
}

/// Ops to commit together and everyone waiting for that commit.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    waiters: Vec<Reply<()>>,
}

pub(super) struct Writer {
    pub db: Database,
    pub rx: mpsc::Receiver<Request>,
    pub counters: Arc<Counters>,
    pub max_batch_ops: usize,
    pub observer: Option<super::handle::CommitObserver>,
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
                    };
                    carried = self.fill(&mut batch);
                    self.commit(batch);
                }
                // Everything before a lone flush was already committed (or its
                // waiters were told it failed).
                Request::Flush(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Request::Load {
                    client_id,
                    below_seq,
                    reply,
                } => {
                    let _ = reply.send(self.load(&client_id, below_seq));
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

    /// Drains queued requests into `batch` up to `max_batch_ops`. Returns the
    /// first request that cannot join (a load or close, which must see this
    /// batch committed first, or ops that would overflow the batch).
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
                Ok(other) => return Some(other),
                Err(_) => return None,
            }
        }
        None
    }

    /// Applies the batch in one transaction, commits it durably, then answers
    /// every waiter with the same outcome.
    fn commit(&mut self, batch: Batch) {
        let started = Instant::now();
        let result = self.write(&batch.ops);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match &result {
            Ok(()) => {
                let n = batch.ops.len() as u64;
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters.ops.fetch_add(n, Ordering::Relaxed);
                self.counters
                    .commit_nanos_total
                    .fetch_add(nanos, Ordering::Relaxed);
                self.counters.last_batch_ops.store(n, Ordering::Relaxed);
                if let Some(observe) = &self.observer {
                    observe(batch.ops.len(), started.elapsed());
                }
            }
            Err(e) => {
                tracing::error!(ops = batch.ops.len(), waiters = batch.waiters.len(), error = %e, "store commit failed");
            }
        }
        for waiter in batch.waiters {
            let _ = waiter.send(result.clone());
        }
    }

    fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        {
            let mut tables = Tables::open(&txn)?;
            for op in ops {
                tables.apply(op)?;
            }
        }
        // On error above, dropping `txn` aborts it: nothing of the batch lands.
        txn.commit()?;
        Ok(())
    }

    /// Reads queued bodies below `below_seq`. A body that fails to decode is
    /// logged and left out; the caller treats an absent seq as gone.
    fn load(&self, client_id: &str, below_seq: u64) -> Result<Vec<(u64, QueuedEntry)>, StoreError> {
        let txn = self.db.begin_read()?;
        let queue = match txn.open_table(QUEUE) {
            Ok(queue) => queue,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::new();
        for row in queue.range((client_id, 0u64)..(client_id, below_seq))? {
            let (key, value) = row?;
            let seq = key.value().1;
            match decode::<QueuedEntry>(value.value()) {
                Ok(entry) => entries.push((seq, entry)),
                Err(e) => {
                    tracing::warn!(client_id, seq, error = %e, "corrupt queued entry skipped")
                }
            }
        }
        Ok(entries)
    }
}
