//! Will messages: published at once, or after the 5.0 Will Delay Interval
//! within bounds on how many wait and how many bytes they hold (they live in
//! memory for up to the session expiry).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::deadlines::Kind;
use super::{Router, Will};
use crate::metrics::WillDelayRefusal;
use crate::mqtt::message::now_ms;

impl Router {
    pub(super) fn publish_will(&mut self, w: Box<Will>) {
        if !self.may_publish_will(&w) {
            return;
        }
        let Will {
            message: mut msg,
            expiry_secs,
            ..
        } = *w;
        msg.expires_at_ms = expiry_secs.map(|s| now_ms() + s as u64 * 1000);
        tracing::debug!(topic = %msg.topic, "publishing will message");
        if msg.retain {
            self.set_retained(&msg);
        }
        if self.share_will(&msg) {
            return;
        }
        self.route(Arc::new(msg), None);
    }

    /// Holds `client`'s will until its delay passes; over the delayed-will
    /// limits it is published now instead. Published early rather than
    /// dropped: a will reports a real abnormal disconnect, and losing that
    /// report is worse than missing the grace period of its delay.
    pub(super) fn delay_will(&mut self, client: &Arc<str>, w: Box<Will>) {
        let size = w.message.size() as u64;
        let m = &self.cfg.mqtt;
        let refusal = if self.delayed_wills >= m.max_delayed_wills {
            Some(WillDelayRefusal::Count)
        } else if self.delayed_will_bytes + size > m.max_delayed_will_bytes {
            Some(WillDelayRefusal::Bytes)
        } else {
            None
        };
        let Some(s) = self.sessions.get_mut(client).filter(|_| refusal.is_none()) else {
            if let Some(why) = refusal {
                self.metrics.will_delay_refused(why);
                static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
                if super::warn_allowed(&LAST_WARN_MS) {
                    tracing::warn!(client_id = %client, reason = why.as_str(), delayed = self.delayed_wills, "delayed-will limit reached; will published without its delay (see mqbridge_will_delay_refused_total; further ones this second at debug level)");
                } else {
                    tracing::debug!(client_id = %client, reason = why.as_str(), "will published without its delay");
                }
            }
            self.publish_will(w);
            return;
        };
        let delay = Duration::from_secs(w.delay_secs.into());
        self.deadlines
            .schedule(&mut s.will_deadline, client, Kind::WillDelay, delay);
        if let Some(old) = s.pending_will.replace(w) {
            // Not expected (a connected session has none), but keep the sums right.
            self.delayed_wills -= 1;
            self.delayed_will_bytes -= old.message.size() as u64;
        }
        self.delayed_wills += 1;
        self.delayed_will_bytes += size;
    }

    /// A delayed will left its session (published, cancelled or ended).
    pub(super) fn forget_will(&mut self, w: &Will) {
        self.delayed_wills = self.delayed_wills.saturating_sub(1);
        self.delayed_will_bytes = self
            .delayed_will_bytes
            .saturating_sub(w.message.size() as u64);
    }
}
