//! Drains a route's spool to its backend in order: read a window of the
//! oldest entries, hand them to the backend sink, wait for each
//! confirmation in order, delete what was confirmed (or refused for good).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redb::Durability;
use tokio::sync::oneshot;

use super::{Shared, SpoolError, Spooled, SPOOL};
use crate::bridge::metrics::RouteCounters;
use crate::bridge::{Envelope, SinkError, SinkHandle};

/// Entries handed to the backend before their confirmations are awaited.
const WINDOW: usize = 256;

type InFlight = VecDeque<(u64, u64, oneshot::Receiver<Result<(), SinkError>>)>;

pub(super) async fn run(sh: Arc<Shared>, backend: SinkHandle, counters: RouteCounters) {
    // Everything after `cursor` has not been handed to the backend yet.
    let mut cursor = 0u64;
    let mut inflight: InFlight = VecDeque::new();
    loop {
        let batch = match read_after(&sh, cursor, WINDOW - inflight.len()).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(route = %sh.route, error = %e, "reading the spool failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for (seq, size, spooled) in batch {
            cursor = seq;
            let (tx, rx) = oneshot::channel();
            let env = Envelope {
                record: spooled.into_record(&counters),
                confirm: Some(tx),
            };
            if backend.tx.send(env).await.is_err() {
                return; // The backend sink is gone: shutdown. What is spooled stays for next start.
            }
            inflight.push_back((seq, size, rx));
        }
        if inflight.is_empty() {
            if writer_gone(&sh) {
                return;
            }
            // Wait for an append (or poll now and then in case a wake-up was missed).
            let _ = tokio::time::timeout(Duration::from_millis(500), sh.appended.notified()).await;
            continue;
        }
        settle(&sh, &mut inflight).await;
    }
}

/// The writer holds a strong reference while it runs; afterwards only we do.
fn writer_gone(sh: &Arc<Shared>) -> bool {
    Arc::strong_count(sh) == 1
}

/// Awaits the oldest confirmations (at least one), deleting settled entries.
async fn settle(sh: &Arc<Shared>, inflight: &mut InFlight) {
    let mut done = Vec::new();
    while let Some((seq, size, rx)) = inflight.front_mut() {
        if !done.is_empty() && rx.is_empty() {
            break; // Delete what is settled before waiting for more.
        }
        match rx.await {
            Ok(Ok(())) | Ok(Err(SinkError::Rejected(_))) => done.push((*seq, *size)),
            // The backend sink closed (shutdown): keep the entry for the next start.
            Ok(Err(SinkError::Closed)) | Err(_) => return,
        }
        inflight.pop_front();
    }
    let freed: u64 = done.iter().map(|(_, s)| s).sum();
    let seqs: Vec<u64> = done.into_iter().map(|(s, _)| s).collect();
    let sh2 = sh.clone();
    let res = tokio::task::spawn_blocking(move || sh2.with_db(|db| delete(db, seqs)))
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Task {
                what: "deleting drained spool entries",
                source: std::sync::Arc::new(e),
            })
        });
    match res {
        Ok(()) => {
            let left = sh
                .bytes
                .fetch_sub(freed, Ordering::AcqRel)
                .saturating_sub(freed);
            sh.bytes_gauge.set(left as i64);
        }
        Err(e) => {
            tracing::error!(route = %sh.route, error = %e, "deleting drained spool entries failed")
        }
    }
}

fn delete(db: &redb::Database, seqs: Vec<u64>) -> Result<(), SpoolError> {
    let mut txn = db.begin_write()?;
    // Losing a deletion to a crash only means a resend (at least once).
    txn.set_durability(Durability::Eventual);
    {
        let mut t = txn.open_table(SPOOL)?;
        for s in seqs {
            t.remove(s)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Up to `n` entries with a key after `cursor`, oldest first.
async fn read_after(
    sh: &Arc<Shared>,
    cursor: u64,
    n: usize,
) -> Result<Vec<(u64, u64, Spooled)>, SpoolError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let sh2 = sh.clone();
    tokio::task::spawn_blocking(move || sh2.with_db(|db| {
        let read = db.begin_read()?;
        let table = read.open_table(SPOOL)?;
        let mut out = Vec::new();
        for row in table.range(cursor + 1..)?.take(n) {
            let (k, v) = row?;
            match postcard::from_bytes::<Spooled>(v.value()) {
                Ok(s) => out.push((k.value(), v.value().len() as u64, s)),
                Err(e) => tracing::error!(route = %sh2.route, seq = k.value(), error = %e, "undecodable spool entry skipped"),
            }
        }
        Ok(out)
    }))
    .await
    .map_err(|e| SpoolError::Task {
        what: "reading spool entries",
        source: std::sync::Arc::new(e),
    })?
}
