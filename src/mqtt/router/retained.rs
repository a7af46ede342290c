//! Retained messages: kept within a count, a total size and a payload size
//! (all in memory and reloaded at start-up, so each must be bounded), sent
//! to new subscriptions.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::queue::{enqueue, Delivery};
use super::Router;
use crate::metrics::RetainedRefusal;
use crate::mqtt::message::{now_ms, Message};
use crate::mqtt::topic::{filter_matches, SubOpts};
use crate::store::Op;

impl Router {
    /// Keeps `msg` as its topic's retained message (an empty payload clears
    /// it). Over a limit it is not kept, and neither is the topic's older
    /// retained message: new subscribers never get a value older than one
    /// that was refused. The message itself is routed as usual by the caller.
    pub(super) fn set_retained(&mut self, msg: &Message) {
        if msg.payload.is_empty() {
            self.remove_retained(&msg.topic);
            return;
        }
        let replaced = self.retained.get(&msg.topic).map_or(0, |m| m.size() as u64);
        let is_new = !self.retained.contains_key(&msg.topic);
        if let Some(why) = self.retained_refusal(msg, is_new, replaced) {
            self.remove_retained(&msg.topic);
            self.metrics.retained_refused(why);
            static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
            if super::warn_allowed(&LAST_WARN_MS) {
                tracing::warn!(reason = why.as_str(), retained = self.retained.len(), retained_bytes = self.retained_bytes, "retained message refused; delivered but not kept (see mqbridge_retained_refused_total; further refusals this second at debug level)");
            } else {
                tracing::debug!(reason = why.as_str(), "retained message refused");
            }
            return;
        }
        let mut stored = msg.clone();
        stored.retain = true;
        self.ops.push(Op::PutRetained {
            message: stored.clone(),
        });
        self.retained_bytes = self.retained_bytes - replaced + stored.size() as u64;
        self.retained.insert(msg.topic.clone(), Arc::new(stored));
    }

    /// Which limit, if any, refuses `msg` (replacing `replaced` bytes).
    fn retained_refusal(
        &self,
        msg: &Message,
        is_new: bool,
        replaced: u64,
    ) -> Option<RetainedRefusal> {
        let m = &self.cfg.mqtt;
        if msg.payload.len() as u64 > m.max_retained_payload_bytes as u64 {
            Some(RetainedRefusal::PayloadSize)
        } else if is_new && self.retained.len() >= m.max_retained_messages {
            Some(RetainedRefusal::Count)
        } else if self.retained_bytes - replaced + msg.size() as u64 > m.max_retained_bytes {
            Some(RetainedRefusal::Bytes)
        } else {
            None
        }
    }

    fn remove_retained(&mut self, topic: &str) {
        if let Some(old) = self.retained.remove(topic) {
            self.retained_bytes = self.retained_bytes.saturating_sub(old.size() as u64);
            self.ops.push(Op::DeleteRetained {
                topic: topic.to_string(),
            });
        }
    }

    /// Takes the retained messages read from the store, up to the limits;
    /// the rest (a store written with larger limits) is deleted and counted,
    /// so it can neither exhaust memory nor come back stale later.
    pub(super) fn restore_retained(&mut self, stored: Vec<Message>) {
        let limits = self.cfg.mqtt.topic_limits();
        let mut dropped = 0usize;
        for m in stored {
            // Topics over the topic limits (a store written with larger ones).
            if let Err(e) = limits.check(&m.topic) {
                self.metrics.topic_refused(e.reason());
                self.ops.push(Op::DeleteRetained { topic: m.topic });
                dropped += 1;
                continue;
            }
            let is_new = !self.retained.contains_key(&m.topic);
            if let Some(why) = self.retained_refusal(&m, is_new, 0) {
                self.metrics.retained_refused(why);
                self.ops.push(Op::DeleteRetained { topic: m.topic });
                dropped += 1;
                continue;
            }
            self.retained_bytes += m.size() as u64;
            self.retained.insert(m.topic.clone(), Arc::new(m));
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                kept = self.retained.len(),
                "stored retained messages beyond the retained or topic limits were deleted (see mqbridge_retained_refused_total, mqbridge_mqtt_topics_refused_total)"
            );
        }
    }

    /// Deletes the expired retained messages (periodic tick): they are never
    /// sent, and must stop counting against the retained limits even if no
    /// subscription comes to find them.
    pub(super) fn purge_expired_retained(&mut self) {
        let now = now_ms();
        let expired: Vec<String> = self
            .retained
            .values()
            .filter(|m| m.is_expired(now))
            .map(|m| m.topic.clone())
            .collect();
        for topic in expired {
            self.remove_retained(&topic);
        }
    }

    /// Queues the retained messages matching a new subscription (RETAIN set).
    /// A filter without wildcards (a device's own command topic, the usual
    /// case) is one map look-up; one with wildcards is one pass over the
    /// retained messages, which also purges the expired ones it meets
    /// (they are not sent, and stop counting against the retained limits).
    pub(super) fn send_retained(&mut self, client_id: &Arc<str>, filter: &str, opts: SubOpts) {
        let Some(acl) = self.sessions.get(client_id).map(|s| s.acl.clone()) else {
            return;
        };
        let now = now_ms();
        let mut expired: Vec<String> = Vec::new();
        let mut matching: Vec<Arc<Message>> = Vec::new();
        let mut consider = |m: &Arc<Message>| {
            if m.is_expired(now) {
                expired.push(m.topic.clone());
            } else if acl.is_open() || self.may_get_retained(&acl, &m.topic) {
                matching.push(m.clone());
            }
        };
        if filter.contains(['+', '#']) {
            self.retained
                .values()
                .filter(|m| filter_matches(filter, &m.topic))
                .for_each(&mut consider);
        } else if let Some(m) = self.retained.get(filter) {
            consider(m);
        }
        for topic in expired {
            self.remove_retained(&topic);
        }
        let sub_ids: Arc<[u32]> = opts.subscription_id.into_iter().collect();
        for msg in matching {
            let (mut cx, sessions) = self.ctx();
            let Some(s) = sessions.get_mut(client_id) else {
                return;
            };
            let d = Delivery {
                msg: &msg,
                qos: msg.qos.min(opts.qos),
                retain: true,
                sub_ids: sub_ids.clone(),
                origin: None,
            };
            enqueue(s, &mut cx, d);
        }
    }
}
