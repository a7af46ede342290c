//! Session lifecycle: restore at start-up, connect (new, resumed, taken
//! over), disconnect, wills, expiry and shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::time::delay_queue::Key;

use super::deadlines::Kind;
use super::queue::pump;
use super::session::{Body, Conn, Entry, Session};
use super::{ConnId, ConnectOutcome, ConnectRequest, Kick, Router};
use crate::metrics::SessionRefusal;
use crate::mqtt::message::now_ms;
use crate::mqtt::topic::{parse_shared, SubEntry, SubOpts};
use crate::store::{Op, QueuedEntry, Recovered, SubscriptionRecord};

impl Router {
    /// Rebuilds sessions, subscriptions and retained messages from the store.
    /// Queue bodies stay on disk until their client connects.
    pub(super) fn restore(&mut self, rec: Recovered) {
        let now = now_ms();
        for r in rec.sessions {
            let client: Arc<str> = r.client_id.into();
            let mut s = Session::new(client.clone());
            // The session's identity (none stored yet: slice 5 adds it to
            // the record); `with_acl` compiles the real rules for it.
            s.acl = self.compile_acl(&client, None);
            s.expiry_secs = r.record.expiry_secs;
            s.protocol = r.record.protocol;
            s.identity = r.record.identity.map(Arc::from);
            s.stored = true;
            // A session that was connected when the gateway died starts its expiry now.
            let since = r.record.disconnected_at_ms.unwrap_or(now);
            s.disconnected_at_ms = Some(since);
            // Wall time only across the restart; a clock set back counts as no time passed.
            let elapsed = now.saturating_sub(since);
            let left = (u64::from(s.expiry_secs) * 1000).saturating_sub(elapsed);
            self.deadlines.schedule(
                &mut s.expiry_deadline,
                &client,
                Kind::SessionExpiry,
                Duration::from_millis(left),
            );
            s.incoming_qos2 = r.incoming_qos2.into_iter().collect();
            // Exactly the entries there are: growing by doubling would leave up
            // to half of every session's index unused, for its whole life.
            s.queue.reserve_exact(r.index.len());
            for i in &r.index {
                s.queue.push_back(Entry {
                    seq: i.seq,
                    size: i.size,
                    qos: 1,
                    retain: false,
                    state: i.state,
                    body: None,
                    stored: true,
                    // Known once the body is read (see `loaded`).
                    origin: None,
                });
                s.queued_bytes += i.size as usize;
                self.stored_bytes += i.size as u64;
                self.metrics.queued_messages.inc();
                self.metrics.queued_bytes.inc_by(i64::from(i.size));
            }
            s.next_seq = r.index.last().map_or(1, |i| i.seq + 1);
            self.restore_subs(&mut s, r.record.subscriptions);
            self.persistent += 1;
            self.sessions.insert(client, Box::new(s));
        }
        self.restore_retained(rec.retained);
        tracing::info!(
            sessions = self.persistent,
            retained = self.retained.len(),
            "store recovered"
        );
        self.update_gauges();
    }

    /// Re-inserts a session's stored subscriptions. Filters over the topic
    /// limits (stored under a larger limit) are dropped, logged and counted,
    /// and the record is rewritten without them, so they never reach the tree.
    fn restore_subs(&mut self, s: &mut Session, subs: Vec<SubscriptionRecord>) {
        let limits = self.cfg.mqtt.topic_limits();
        let mut dropped = 0;
        for sub in subs {
            if let Err(e) = limits.check(&sub.filter) {
                self.metrics.topic_refused(e.reason());
                tracing::debug!(client_id = %s.client_id, error = %e, "stored subscription over the topic limits dropped");
                dropped += 1;
                continue;
            }
            let opts = SubOpts {
                qos: sub.qos,
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                retain_handling: sub.retain_handling,
                subscription_id: sub.subscription_id,
            };
            self.insert_sub(&s.client_id, &sub.filter, opts);
            s.subs.insert(sub.filter, opts);
        }
        if dropped > 0 {
            tracing::warn!(client_id = %s.client_id, dropped, max_topic_levels = limits.max_levels, max_topic_bytes = limits.max_bytes, "stored subscriptions over the topic limits dropped at start-up");
            self.ops.push(Op::PutSession {
                client_id: s.client_id.to_string(),
                record: s.record(),
            });
        }
    }

    pub(super) fn insert_sub(&mut self, client: &Arc<str>, filter: &str, opts: SubOpts) {
        let (group, filter) = match parse_shared(filter) {
            Ok(Some((g, f))) => (Some(Arc::<str>::from(g)), f),
            _ => (None, filter),
        };
        let existed = self.tree.insert(SubEntry {
            client: client.clone(),
            group: group.clone(),
            filter: filter.into(),
            opts,
            // Until `set_acl` says otherwise.
            covered: true,
        });
        if let (Some(g), false) = (&group, existed) {
            self.shared_member(g, filter, true);
        }
    }

    fn remove_subs(&mut self, s: &Session) {
        for f in s.subs.keys() {
            self.remove_sub(&s.client_id, f);
        }
    }

    /// Removes one subscription (filter as sent) from the tree; false if absent.
    pub(super) fn remove_sub(&mut self, client: &Arc<str>, f: &str) -> bool {
        let (group, filter) = match parse_shared(f) {
            Ok(Some((g, f))) => (Some(g), f),
            _ => (None, f),
        };
        let removed = self.tree.remove(filter, client, group);
        if let (Some(g), true) = (group, removed) {
            self.shared_member(&Arc::from(g), filter, false);
        }
        removed
    }

    pub(super) fn connect(&mut self, req: ConnectRequest, reply: oneshot::Sender<ConnectOutcome>) {
        let client = req.client_id.clone();
        // First, the session's owner: a CONNECT under another identity neither
        // takes the session over nor cleans it (docs/security.md section 4).
        if let Some(owner) = self
            .sessions
            .get(&client)
            .filter(|s| !s.expired(Instant::now()))
            .and_then(|s| s.identity.as_ref())
        {
            if req.identity.as_ref() != Some(owner) {
                tracing::debug!(client_id = %client, "session belongs to another identity; CONNECT refused");
                let _ = reply.send(ConnectOutcome::NotAuthorized);
                return;
            }
        }
        // Refuse over the persistent-session limit before touching anything:
        // a refused CONNECT must not take over (and end) the current connection.
        // Resuming (or replacing) an existing persistent session is always allowed.
        let has_persistent = self.sessions.get(&client).is_some_and(|s| s.persistent());
        let owner = req.owner();
        if req.expiry_secs > 0 && !has_persistent {
            if let Some(why) = self.session_refusal(owner.as_ref()) {
                self.refuse_session(&client, owner.as_ref(), why);
                let _ = reply.send(ConnectOutcome::QuotaExceeded);
                return;
            }
        }
        // A new persistent session is a write the store cannot take now. A
        // resumed one is let in: delivering its queue frees space.
        if req.expiry_secs > 0 && !has_persistent && !self.store.health().accepting() {
            self.metrics.dropped(crate::metrics::DropReason::DiskLow);
            tracing::debug!(client_id = %client, "new persistent session refused: store disk low");
            let _ = reply.send(ConnectOutcome::QuotaExceeded);
            return;
        }
        let mut present = false;
        // A session past its expiry is gone, even if its timer has not fired yet.
        if self
            .sessions
            .get(&client)
            .is_some_and(|s| s.expired(Instant::now()))
        {
            self.expire(&client);
        }
        if let Some(mut s) = self.sessions.remove(&client) {
            if let Some(mut old) = s.detach() {
                if let Some(k) = old.kick.take() {
                    let _ = k.send(Kick::TakenOver);
                }
                self.metrics.takeovers.inc();
                tracing::info!(client_id = %client, "session taken over by a new connection");
                // The old connection's will goes out now, unless it has a delay and the
                // session is resumed: then the new connection cancels it (5.0 3.1.2.5,
                // MQTT-3.1.3-9; applied to 3.1.1 alike).
                if let Some(w) = s.will.take() {
                    if w.delay_secs == 0 || req.clean_start {
                        self.publish_will(w);
                    }
                }
            }
            if req.clean_start {
                self.end_session(s);
            } else {
                present = true;
                // Resuming cancels a will still waiting for its delay (MQTT-3.1.3-9).
                if let Some(w) = s.pending_will.take() {
                    self.forget_will(&w);
                }
                self.deadlines.cancel(&mut s.will_deadline);
                self.deadlines.cancel(&mut s.expiry_deadline);
                self.sessions.insert(client.clone(), s);
            }
        }
        // A persistent session that is new counts against the global limit.
        let new_persistent =
            req.expiry_secs > 0 && !self.sessions.get(&client).is_some_and(|s| s.persistent());
        if new_persistent && self.persistent >= self.cfg.session.max_persistent_sessions {
            self.refuse_session(&client, owner.as_ref(), SessionRefusal::Global);
            let _ = reply.send(ConnectOutcome::QuotaExceeded);
            return;
        }
        let s = self
            .sessions
            .entry(client.clone())
            .or_insert_with(|| Box::new(Session::new(client.clone())));
        if new_persistent {
            self.persistent += 1;
        } else if s.persistent() && req.expiry_secs == 0 {
            self.persistent -= 1;
        }
        // An unowned session (new, anonymous, preset by a command) is claimed
        // by the first verified identity.
        if s.identity.is_none() {
            s.identity = req.identity.clone();
        }
        s.expiry_secs = req.expiry_secs;
        s.protocol = req.protocol;
        s.will = req.will;
        s.owned_here = true;
        s.disconnected_at_ms = None;
        s.conn_gen = req.conn_id;
        s.conn = Some(Conn {
            id: req.conn_id,
            tx: req.tx,
            tx0: None,
            kick: Some(req.kick),
            window: req.window.max(1),
            inflight: 0,
            listener: req.listener,
        });
        // A load of an earlier connection may still be running: its answer will be
        // ignored, so the flag is re-derived here.
        s.loading = false;
        if s.needs_load() {
            s.loading = true;
            let below = s.next_seq;
            self.start_load(client.clone(), req.conn_id, below);
        }
        // The identity of this connection decides what the session may read.
        let acl = self.compile_acl(&client, req.username.as_ref());
        self.set_acl(&client, acl);
        self.set_owner(&client, owner);
        self.sync_storage(&client);
        self.save_session(&client);
        self.share_session(&client, true);
        let (mut cx, sessions) = self.ctx();
        if let Some(s) = sessions.get_mut(&client) {
            pump(s, &mut cx);
        }
        let qos2_pending: Vec<u16> = self
            .sessions
            .get(&client)
            .map(|s| s.incoming_qos2.iter().copied().collect())
            .unwrap_or_default();
        self.after_commit(move |ok| {
            let _ = reply.send(if ok {
                ConnectOutcome::Accepted {
                    session_present: present,
                    qos2_pending,
                }
            } else {
                ConnectOutcome::StoreFailed
            });
        });
        self.update_gauges();
    }

    /// Asks for the bodies of entries below `below`; the answer comes back as
    /// [`RouterMsg::Loaded`]. The read is sent to the store only after this
    /// batch's ops were submitted (see `flush`), so the store's FIFO makes it
    /// see every entry the router queued before it.
    fn start_load(&mut self, client: Arc<str>, conn_id: ConnId, below: u64) {
        self.pending_loads.push((client, conn_id, below));
    }

    pub(super) fn loaded(
        &mut self,
        client: &Arc<str>,
        conn_id: ConnId,
        entries: Result<Vec<(u64, QueuedEntry)>, crate::store::StoreError>,
    ) {
        let (mut cx, sessions) = self.ctx();
        let Some(s) = sessions.get_mut(client) else {
            return;
        };
        if s.conn.as_ref().is_none_or(|c| c.id != conn_id) {
            return;
        }
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(client_id = %client, error = &e as &dyn std::error::Error, "reading the offline queue failed; disconnecting");
                if let Some(k) = s.conn.as_mut().and_then(|c| c.kick.take()) {
                    let _ = k.send(Kick::ShuttingDown);
                }
                return;
            }
        };
        for (seq, qe) in entries {
            if let Some(idx) = s.find(seq) {
                let e = &mut s.queue[idx];
                e.qos = qe.message.qos;
                e.retain = qe.message.retain;
                e.origin = qe.origin;
                e.body = Some(Body {
                    msg: Arc::new(qe.message),
                    sub_ids: qe.subscription_ids.into(),
                });
            }
        }
        // Entries the store did not have cannot be delivered: forget them.
        let missing: Vec<usize> = (0..s.queue.len())
            .rev()
            .filter(|&i| s.queue[i].body.is_none())
            .collect();
        for idx in missing {
            tracing::warn!(client_id = %client, seq = s.queue[idx].seq, "queued entry missing from store");
            super::queue::remove_entry(s, &mut cx, idx);
        }
        s.loading = false;
        // Cluster mode: what its client acknowledged on another node (known
        // now that the restored entries' positions are read) is not resent.
        self.drop_acknowledged(client);
        let (mut cx, sessions) = self.ctx();
        if let Some(s) = sessions.get_mut(client) {
            pump(s, &mut cx);
        }
        self.sync_storage(client);
    }

    /// Keeps the store in step with the session's persistence, which a
    /// reconnect can change (5.0 Session Expiry set or cleared): a session that
    /// became persistent writes its in-memory entries; one that is no longer
    /// persistent leaves the store (its entries stay in memory until it ends).
    fn sync_storage(&mut self, client: &Arc<str>) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if s.loading {
            return; // Done when the bodies are back (`loaded`).
        }
        if s.persistent() {
            for e in s.queue.iter_mut().filter(|e| !e.stored) {
                let Some(b) = &e.body else { continue };
                let mut message = (*b.msg).clone();
                message.qos = e.qos;
                message.retain = e.retain;
                let entry = QueuedEntry {
                    message,
                    subscription_ids: b.sub_ids.to_vec(),
                    state: e.state,
                    origin: e.origin,
                };
                self.ops.push(Op::Enqueue {
                    client_id: client.to_string(),
                    seq: e.seq,
                    entry,
                });
                e.stored = true;
                self.stored_bytes += e.size as u64;
            }
        } else if s.stored {
            self.ops.push(Op::DeleteSession {
                client_id: client.to_string(),
            });
            for e in s.queue.iter_mut().filter(|e| e.stored) {
                e.stored = false;
                self.stored_bytes = self.stored_bytes.saturating_sub(e.size as u64);
            }
            s.stored = false;
        }
    }

    pub(super) fn disconnect(
        &mut self,
        client: &Arc<str>,
        conn_id: ConnId,
        publish_will: bool,
        new_expiry: Option<u32>,
    ) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if s.conn.as_ref().is_none_or(|c| c.id != conn_id) {
            return; // A connection that was already taken over.
        }
        s.detach();
        s.loading = false;
        if let Some(e) = new_expiry {
            let cap = self.cfg.session.max_session_expiry_secs;
            if s.persistent() && e == 0 {
                self.persistent -= 1;
            }
            s.expiry_secs = e.min(cap);
        }
        let will = s.will.take().filter(|_| publish_will);
        if let Some(w) = will {
            if w.delay_secs > 0 && s.persistent() {
                self.delay_will(client, w);
            } else {
                self.publish_will(w);
            }
        }
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if s.persistent() {
            s.disconnected_at_ms = Some(now_ms());
            let expiry = Duration::from_secs(s.expiry_secs.into());
            self.deadlines
                .schedule(&mut s.expiry_deadline, client, Kind::SessionExpiry, expiry);
            s.unload();
            self.save_session(client);
        } else if let Some(s) = self.sessions.remove(client) {
            self.end_session(s);
        }
        self.update_gauges();
    }

    /// Ends a session for good: its will (if pending), subscriptions and stored state.
    pub(super) fn end_session(&mut self, mut s: Box<Session>) {
        if s.owned_here {
            // Removed already: the shared state says it ended.
            let id = s.client_id.clone();
            self.share_session(&id, false);
        }
        self.metrics.queued_messages.dec_by(s.queue.len() as i64);
        self.metrics.queued_bytes.dec_by(s.queued_bytes as i64);
        self.deadlines.cancel(&mut s.will_deadline);
        self.deadlines.cancel(&mut s.expiry_deadline);
        if let Some(w) = s.pending_will.take() {
            self.forget_will(&w);
            self.publish_will(w);
        }
        self.remove_subs(&s);
        if s.persistent() {
            self.persistent = self.persistent.saturating_sub(1);
        }
        if let Some(o) = s.owner.take() {
            self.owner_left(&o);
        }
        if s.stored {
            self.ops.push(Op::DeleteSession {
                client_id: s.client_id.to_string(),
            });
            let bytes: u64 = s
                .queue
                .iter()
                .filter(|e| e.stored)
                .map(|e| e.size as u64)
                .sum();
            self.stored_bytes = self.stored_bytes.saturating_sub(bytes);
        }
    }

    /// A deadline fired: publish a delayed will, or end an expired session.
    pub(super) fn fired(&mut self, client: Arc<str>, kind: Kind, key: Key) {
        let Some(s) = self.sessions.get_mut(&client) else {
            return;
        };
        match kind {
            Kind::WillDelay => {
                if self
                    .deadlines
                    .take_fired(&mut s.will_deadline, key, &client, kind)
                {
                    if let Some(w) = s.pending_will.take() {
                        self.forget_will(&w);
                        self.publish_will(w);
                    }
                }
            }
            Kind::SessionExpiry => {
                if self
                    .deadlines
                    .take_fired(&mut s.expiry_deadline, key, &client, kind)
                    && s.conn.is_none()
                {
                    self.expire(&client);
                }
            }
        }
        self.update_gauges();
    }

    /// Ends an offline session whose expiry has passed.
    fn expire(&mut self, client: &Arc<str>) {
        if let Some(s) = self.sessions.remove(client) {
            tracing::info!(client_id = %client, "session expired");
            self.metrics.expired_sessions.inc();
            self.end_session(s);
        }
    }

    /// Periodic work: gauges, and a backstop for deadlines (they fire on
    /// their own; this only catches what a missed timer would leave).
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        let mut wills = Vec::new();
        let mut expired = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            if s.will_deadline.is_some_and(|d| d.at <= now) {
                self.deadlines.cancel(&mut s.will_deadline);
                wills.extend(s.pending_will.take());
            }
            if s.expired(now) {
                expired.push(id.clone());
            }
        }
        for w in wills {
            self.forget_will(&w);
            self.publish_will(w);
        }
        self.purge_expired_retained();
        self.adopt_orphans();
        // Kept current on every change; recounted here in case a path
        // that drops a queue was missed.
        let queued: usize = self.sessions.values().map(|s| s.queue.len()).sum();
        let bytes: usize = self.sessions.values().map(|s| s.queued_bytes).sum();
        self.metrics.queued_messages.set(queued as i64);
        self.metrics.queued_bytes.set(bytes as i64);
        let inflight: usize = self
            .sessions
            .values()
            .filter_map(|s| s.conn.as_ref())
            .map(|c| c.inflight)
            .sum();
        self.metrics.inflight.set(inflight as i64);
        for id in expired {
            self.expire(&id);
        }
        self.update_gauges();
    }

    /// Detaches every client and records when persistent sessions went offline.
    pub(super) async fn shutdown(&mut self) {
        let now = now_ms();
        let ids: Vec<Arc<str>> = self.sessions.keys().cloned().collect();
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if let Some(mut c) = s.detach() {
                if let Some(k) = c.kick.take() {
                    let _ = k.send(Kick::ShuttingDown);
                }
                if s.persistent() {
                    s.disconnected_at_ms = Some(now);
                    self.save_session(&id);
                }
            }
        }
        self.flush().await;
        if let Err(e) = self.store.close().await {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "closing the store failed"
            );
        }
    }
}
