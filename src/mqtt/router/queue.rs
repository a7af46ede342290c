//! Putting messages into a session's queue and handing them to its
//! connection within the inflight window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::error::TrySendError;

use super::session::{Body, Entry, Session};
use super::Outbound;
use crate::config::{Config, QueueFullPolicy, Validated};
use crate::metrics::{DropReason, Metrics};
use crate::mqtt::message::{now_ms, Message};
use crate::store::{EntryState, Op, QueuedEntry};

/// What the queue code needs from the router besides the session.
pub struct Ctx<'a> {
    pub cfg: &'a Validated,
    pub metrics: &'a Metrics,
    pub ops: &'a mut Vec<Op>,
    pub stored_bytes: &'a mut u64,
    /// False while the store's disk is below its watermark or commits fail:
    /// nothing new is queued for a persistent session.
    pub store_accepting: bool,
    /// Deliveries refused for that reason (the PUBLISH is then not acknowledged).
    pub disk_refused: &'a mut usize,
}

/// One delivery of a message to one session.
pub struct Delivery<'a> {
    pub msg: &'a Arc<Message>,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Arc<[u32]>,
    /// Cluster mode: the message's position in the `messages` topic.
    pub origin: Option<crate::store::ClusterPos>,
}

/// Queues (or, for QoS 0 to an online client, sends) a message.
/// Returns false if the session refused it (the drop is counted and logged).
pub fn enqueue(s: &mut Session, cx: &mut Ctx<'_>, d: Delivery<'_>) -> bool {
    // QoS 0 goes straight to an online client only when nothing queued is
    // waiting ahead of it (order per topic), and not when already expired.
    if d.msg.is_expired_now() {
        return drop_one(cx, s, DropReason::Expired);
    }
    // Cluster mode: its client already acknowledged this one on another node
    // (the cursor can come in before the message does).
    if s.conn.is_none() && s.acknowledged(d.origin) {
        return true;
    }
    if d.qos == 0 && !s.loading && s.handed == s.queue.len() {
        let max_queued = cx.cfg.session.max_queued_messages;
        if let Some(conn) = s.conn.as_mut() {
            let Some(tx0) = conn.qos0(max_queued) else {
                return drop_one(cx, s, DropReason::QueueFull);
            };
            let out = Outbound::Publish {
                seq: 0,
                pkid: 0,
                msg: d.msg.clone(),
                qos: 0,
                retain: d.retain,
                dup: false,
                sub_ids: d.sub_ids,
            };
            return match tx0.try_send(out) {
                Ok(()) => true,
                Err(_) => drop_one(cx, s, DropReason::QueueFull),
            };
        }
    }
    if d.qos == 0 && !(s.online() || cx.cfg.session.queue_qos0_offline) {
        return drop_one(cx, s, DropReason::Qos0Offline);
    }
    if s.persistent() && !cx.store_accepting {
        *cx.disk_refused += 1;
        return drop_one(cx, s, DropReason::DiskLow);
    }
    let size = d.msg.size() as u32;
    if !make_room(s, cx, size) {
        return drop_one(cx, s, DropReason::QueueFull);
    }
    let persistent = s.persistent();
    if persistent && *cx.stored_bytes + size as u64 > cx.cfg.session.max_stored_bytes {
        return drop_one(cx, s, DropReason::StoreFull);
    }
    let seq = s.next_seq;
    s.next_seq += 1;
    // Cluster mode: received (PUBREC) on the node its client was on.
    let state = if s.conn.is_none() && d.origin.is_some_and(|o| s.released.contains(&o)) {
        EntryState::Released
    } else {
        EntryState::Queued
    };
    if persistent {
        let mut message = (**d.msg).clone();
        message.qos = d.qos;
        message.retain = d.retain;
        let entry = QueuedEntry {
            message,
            subscription_ids: d.sub_ids.to_vec(),
            state,
            origin: d.origin,
        };
        cx.ops.push(Op::Enqueue {
            client_id: s.client_id.to_string(),
            seq,
            entry,
        });
        *cx.stored_bytes += size as u64;
    }
    let body = s.online().then(|| Body {
        msg: d.msg.clone(),
        sub_ids: d.sub_ids,
    });
    s.queue.push_back(Entry {
        seq,
        size,
        qos: d.qos,
        retain: d.retain,
        state,
        body,
        stored: persistent,
        origin: d.origin,
    });
    s.queued_bytes += size as usize;
    cx.metrics.queued_messages.inc();
    cx.metrics.queued_bytes.inc_by(i64::from(size));
    pump(s, cx);
    true
}

/// Whether queueing a message with `qos` for `s` would write it to the store,
/// i.e. count against `session.max_stored_bytes` (mirrors [`enqueue`]).
pub fn would_store(s: &Session, cfg: &Config, qos: u8) -> bool {
    if !s.persistent() {
        return false;
    }
    if qos > 0 {
        return true;
    }
    if s.online() {
        // QoS 0 goes straight out unless something queued is ahead of it.
        s.loading || s.handed != s.queue.len()
    } else {
        cfg.session.queue_qos0_offline
    }
}

/// Applies the per-session limits before adding `size` bytes.
fn make_room(s: &mut Session, cx: &mut Ctx<'_>, size: u32) -> bool {
    let limits = &cx.cfg.session;
    let policy = cx.cfg.queue_full_policy();
    let full = |s: &Session| {
        s.queue.len() >= limits.max_queued_messages
            || s.queued_bytes + size as usize > limits.max_queued_bytes
    };
    while full(s) {
        if policy == QueueFullPolicy::RejectNew {
            return false;
        }
        let Some(idx) = s.oldest_droppable() else {
            return false;
        };
        remove_entry(s, cx, idx);
        drop_one(cx, s, DropReason::QueueFull);
    }
    true
}

/// Removes an entry from the queue and, for a stored session, from the store.
pub fn remove_entry(s: &mut Session, cx: &mut Ctx<'_>, idx: usize) {
    if let Some(e) = s.remove_at(idx) {
        cx.metrics.queued_messages.dec();
        cx.metrics.queued_bytes.dec_by(i64::from(e.size));
        if e.stored {
            cx.ops.push(Op::RemoveEntry {
                client_id: s.client_id.to_string(),
                seq: e.seq,
            });
            *cx.stored_bytes = cx.stored_bytes.saturating_sub(e.size as u64);
        }
    }
}

/// Counts and logs one dropped message; returns false for the caller's convenience.
/// The warning is rate-limited (a full queue can drop thousands per second);
/// the counter has every drop, and debug logging every one.
fn drop_one(cx: &Ctx<'_>, s: &Session, reason: DropReason) -> bool {
    static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
    cx.metrics.dropped(reason);
    let now = now_ms();
    let last = LAST_WARN_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && LAST_WARN_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(client_id = %s.client_id, reason = reason.as_str(), "message dropped for session (see mqbridge_session_dropped_messages_total; further drops this second at debug level)");
    } else {
        tracing::debug!(client_id = %s.client_id, reason = reason.as_str(), "message dropped for session");
    }
    false
}

/// Hands queued entries to the connection while the inflight window allows.
pub fn pump(s: &mut Session, cx: &mut Ctx<'_>) {
    if s.loading || s.conn.is_none() {
        return;
    }
    while s.handed < s.queue.len() {
        let Some(conn) = s.conn.as_ref() else { return };
        if conn.inflight >= conn.window {
            return;
        }
        let idx = s.handed;
        let e = &s.queue[idx];
        // Packet ids derive from seqs and wrap every 65535: wait while the
        // oldest unacknowledged delivery would share this entry's id.
        if s.handed > 0 && s.queue[0].seq + 65535 <= e.seq {
            return;
        }
        // Ids from cluster positions can meet: wait until the one in flight
        // is acknowledged.
        if e.origin.is_some() && s.queue.iter().take(s.handed).any(|h| h.pkid() == e.pkid()) {
            return;
        }
        let Some(body) = e.body.clone() else {
            // Not loaded yet: wait for the load to fill it in.
            return;
        };
        if e.state == EntryState::Queued && body.msg.is_expired_now() {
            remove_entry(s, cx, idx);
            drop_one(cx, s, DropReason::Expired);
            continue;
        }
        let out = match e.state {
            EntryState::Released => Outbound::PubRel {
                seq: e.seq,
                pkid: e.pkid(),
            },
            state => Outbound::Publish {
                seq: e.seq,
                pkid: e.pkid(),
                msg: body.msg,
                qos: e.qos,
                retain: e.retain,
                // DUP only on a QoS 1/2 resend (MQTT-3.3.1-2).
                dup: state == EntryState::Sent && e.qos > 0,
                sub_ids: body.sub_ids,
            },
        };
        match conn.tx.try_send(out) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => return,
        }
        let (seq, was_queued) = (e.seq, e.state == EntryState::Queued);
        if let Some(c) = s.conn.as_mut() {
            c.inflight += 1;
        }
        s.handed += 1;
        if was_queued {
            s.queue[idx].state = EntryState::Sent;
            if s.queue[idx].stored {
                // Lazily durable: a crash before this commits only loses the DUP flag.
                cx.ops.push(Op::SetState {
                    client_id: s.client_id.to_string(),
                    seq,
                    state: EntryState::Sent,
                });
            }
        }
    }
}
