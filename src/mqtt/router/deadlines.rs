//! Session expiry and will-delay deadlines, fired from one delay queue: no
//! timer task per session and no sweep latency. Monotonic time, so a jump of
//! the wall clock neither ends every session at once nor keeps them forever.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::time::delay_queue::{DelayQueue, Key};

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SessionExpiry,
    WillDelay,
}

/// A scheduled deadline, held by its session.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// When it is due (may be beyond one hop of the queue, see [`MAX_HOP`]).
    pub at: Instant,
    key: Key,
}

/// The timer wheel holds at most about two years; longer intervals (a 5.0
/// expiry can be 136 years) are re-armed hop by hop.
const MAX_HOP: Duration = Duration::from_secs(365 * 86400);

/// Every pending deadline of the router. One entry per session and kind at
/// most: rescheduling or ending a session cancels its entry, so the queue is
/// bounded by the number of sessions.
#[derive(Default)]
pub struct Deadlines {
    queue: DelayQueue<(Arc<str>, Kind)>,
}

impl Deadlines {
    /// (Re)schedules `slot` to fire `after` from now.
    pub fn schedule(
        &mut self,
        slot: &mut Option<Deadline>,
        client: &Arc<str>,
        kind: Kind,
        after: Duration,
    ) {
        self.cancel(slot);
        let now = Instant::now();
        let at = now.checked_add(after).unwrap_or(now + MAX_HOP * 100);
        let key = self
            .queue
            .insert_at((client.clone(), kind), at.min(now + MAX_HOP));
        *slot = Some(Deadline { at, key });
    }

    pub fn cancel(&mut self, slot: &mut Option<Deadline>) {
        if let Some(d) = slot.take() {
            self.queue.try_remove(&d.key);
        }
    }

    /// Waits for the next entry to fire; pending (never ready) while empty.
    pub async fn next(&mut self) -> (Arc<str>, Kind, Key) {
        loop {
            if let Some(e) = poll_fn(|cx| self.queue.poll_expired(cx)).await {
                let key = e.key();
                let (client, kind) = e.into_inner();
                return (client, kind, key);
            }
            // Empty: `poll_expired` returned None without registering a waker.
            std::future::pending::<()>().await;
        }
    }

    /// Whether `fired` is the entry `slot` holds; if so the slot is cleared,
    /// or re-armed (and `false` returned) when the deadline is beyond one hop.
    pub fn take_fired(
        &mut self,
        slot: &mut Option<Deadline>,
        fired: Key,
        client: &Arc<str>,
        kind: Kind,
    ) -> bool {
        match *slot {
            Some(d) if d.key == fired => {
                let now = Instant::now();
                if d.at > now {
                    let key = self
                        .queue
                        .insert_at((client.clone(), kind), d.at.min(now + MAX_HOP));
                    *slot = Some(Deadline { at: d.at, key });
                    return false;
                }
                *slot = None;
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_and_cancel_removes() {
        let mut d = Deadlines::default();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let (mut sa, mut sb) = (None, None);
        d.schedule(&mut sa, &a, Kind::SessionExpiry, Duration::from_secs(2));
        d.schedule(&mut sb, &b, Kind::WillDelay, Duration::from_secs(1));
        // Rescheduling replaces the entry instead of adding one.
        d.schedule(&mut sb, &b, Kind::WillDelay, Duration::from_secs(3));
        assert_eq!(d.pending(), 2);
        let start = Instant::now();
        let (client, kind, key) = d.next().await;
        assert_eq!((&*client, kind), ("a", Kind::SessionExpiry));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(d.take_fired(&mut sa, key, &client, kind));
        assert!(sa.is_none());
        d.cancel(&mut sb);
        assert_eq!(d.pending(), 0);
        let none = tokio::time::timeout(Duration::from_secs(10), d.next()).await;
        assert!(none.is_err(), "a cancelled deadline must not fire");
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_beyond_one_hop_are_rearmed() {
        let mut d = Deadlines::default();
        let a: Arc<str> = "a".into();
        let mut slot = None;
        let long = MAX_HOP * 2 + Duration::from_secs(5);
        d.schedule(&mut slot, &a, Kind::SessionExpiry, long);
        let start = Instant::now();
        loop {
            let (client, kind, key) = d.next().await;
            if d.take_fired(&mut slot, key, &client, kind) {
                break;
            }
        }
        assert_eq!(start.elapsed(), long);
    }
}
