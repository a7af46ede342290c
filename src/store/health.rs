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

/// A low disk recovers at `min_free + min_free / RECOVERY_MARGIN_DIVISOR`
/// (10 % above the watermark).
pub const RECOVERY_MARGIN_DIVISOR: u64 = 10;

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
    ///
    /// Hysteresis: the state becomes low below `min_free` but recovers only
    /// at `min_free` plus [`RECOVERY_MARGIN_DIVISOR`]ths of it, so a disk
    /// hovering at the watermark does not flip readiness (and log) on every
    /// check. Only this function writes `disk_low` (the watch task), so the
    /// load-then-store is not racy.
    pub fn record_free(&self, free: u64, min_free: u64) -> Option<DiskTransition> {
        self.free_bytes.store(free, Ordering::Relaxed);
        let was_low = self.disk_low();
        let low = if min_free == 0 {
            false
        } else if was_low {
            free < min_free.saturating_add(min_free / RECOVERY_MARGIN_DIVISOR)
        } else {
            free < min_free
        };
        self.disk_low.store(low, Ordering::Release);
        match (was_low, low) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_below_the_watermark_and_recovers_only_past_the_margin() {
        let h = StoreHealth::default();
        assert_eq!(
            h.record_free(1_000, 1_000),
            None,
            "at the watermark is not low"
        );
        assert_eq!(h.record_free(999, 1_000), Some(DiskTransition::BecameLow));
        assert!(h.disk_low());
        // Back at the watermark, and just under the 10 % margin: still low.
        assert_eq!(h.record_free(1_000, 1_000), None);
        assert_eq!(h.record_free(1_099, 1_000), None);
        assert!(h.disk_low());
        assert_eq!(h.record_free(1_100, 1_000), Some(DiskTransition::Recovered));
        assert!(!h.disk_low());
    }

    #[test]
    fn a_zero_watermark_is_never_low() {
        let h = StoreHealth::default();
        assert_eq!(h.record_free(0, 0), None);
        assert!(!h.disk_low());
    }
}
