//! Store health: free space against the `store.min_free_bytes` watermark
//! and whether the writer is retrying a failed commit. Shared (atomics, no
//! lock) by the writer thread, the disk watch task, the router (which
//! refuses new persistent writes while the store cannot take them), the
//! uplink spools (whose appends wait) and `/readyz`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Health flags of one store.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Free space is below the watermark.
    disk_low: AtomicBool,
    /// The writer is retrying a failed commit (its waiters are waiting).
    failing: AtomicBool,
    /// Bytes available to the process on the store's filesystem (last check).
    free_bytes: AtomicU64,
}

/// A change of the disk-low state, for the caller's single log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskTransition {
    BecameLow,
    Recovered,
}

impl StoreHealth {
    /// Whether new persistent writes may be accepted: free space is above
    /// the watermark and the last commit succeeded.
    pub fn accepting(&self) -> bool {
        !self.disk_low() && !self.failing()
    }

    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Acquire)
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Release);
    }

    /// Records a measurement; `min_free` 0 turns the watermark off. Returns
    /// the transition, if the state changed.
    pub fn record_free(&self, free: u64, min_free: u64) -> Option<DiskTransition> {
        self.free_bytes.store(free, Ordering::Relaxed);
        let low = min_free > 0 && free < min_free;
        match (self.disk_low.swap(low, Ordering::AcqRel), low) {
            (false, true) => Some(DiskTransition::BecameLow),
            (true, false) => Some(DiskTransition::Recovered),
            _ => None,
        }
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `path`
/// (statvfs `f_bavail * f_frsize`: what a write can actually use).
pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
