//! The disk watch: measures free space of the store's filesystem on an
//! interval, flips [`StoreHealth`]'s disk-low state against the watermark
//! (one log line on entering and one on leaving), exports the store's
//! health metrics and keeps the readiness flag in step with it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::health::{available_bytes, DiskTransition};
use super::Store;
use crate::metrics::Metrics;

/// What the watch needs; built by the app from `[store]`.
pub struct DiskWatch {
    pub store: Store,
    /// A directory on the store's filesystem.
    pub path: PathBuf,
    /// `store.min_free_bytes` (0 = no watermark).
    pub min_free: u64,
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
    /// `/readyz`: set on every check to whether the store accepts writes
    /// (the app sets it first once start-up is complete).
    pub ready: Arc<crate::admin::Readiness>,
}

/// Counter values already exported, to add only the difference.
#[derive(Default)]
struct Exported {
    quarantined: u64,
    commit_failures: u64,
}

impl DiskWatch {
    /// One measurement; also run once at start-up before clients are let in.
    pub fn check(&self) {
        let health = self.store.health();
        match available_bytes(&self.path) {
            Ok(free) => {
                self.metrics
                    .store_free_bytes
                    .set(i64::try_from(free).unwrap_or(i64::MAX));
                match health.record_free(free, self.min_free) {
                    Some(DiskTransition::BecameLow) => tracing::error!(
                        store = %self.path.display(), free_bytes = free, min_free_bytes = self.min_free,
                        "store disk below its free-space watermark: new persistent writes are refused (0x97) and the gateway reports not ready"
                    ),
                    Some(DiskTransition::Recovered) => tracing::warn!(
                        store = %self.path.display(), free_bytes = free, min_free_bytes = self.min_free,
                        "store disk above its free-space watermark again: persistent writes accepted"
                    ),
                    None => {}
                }
            }
            // Kept in its previous state: a failed statvfs says nothing about space.
            Err(e) => {
                tracing::debug!(store = %self.path.display(), error = %e, "measuring free space failed")
            }
        }
        self.metrics
            .store_disk_low
            .set(i64::from(health.disk_low()));
        if let Ok(meta) = std::fs::metadata(self.path.join(super::DB_FILE)) {
            let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
            self.metrics.store_file_bytes.set(size);
        }
    }

    /// Checks every `interval` until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut exported = Exported::default();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            self.check();
            let ready = self.store.health().accepting();
            self.ready.set_store_accepting(ready);
            let stats = self.store.stats();
            self.metrics
                .store_quarantined_records
                .inc_by(stats.quarantined.saturating_sub(exported.quarantined));
            self.metrics.store_commit_failures.inc_by(
                stats
                    .commit_failures
                    .saturating_sub(exported.commit_failures),
            );
            exported = Exported {
                quarantined: stats.quarantined,
                commit_failures: stats.commit_failures,
            };
        }
    }
}
