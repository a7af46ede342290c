//! Routing: PUBLISH to matching sessions, acknowledgements from subscribers,
//! SUBSCRIBE/UNSUBSCRIBE and retained messages.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::queue::{enqueue, pump, remove_entry, would_store, Delivery};
use super::{PublishOutcome, Router, SubRequest, SubResult};
use crate::mqtt::message::Message;
use crate::mqtt::topic::{parse_shared, SubEntry};
use crate::store::{EntryState, Op};

/// Aggregated target of one PUBLISH: overlapping subscriptions of one client
/// deliver once, at the highest granted QoS, with all subscription ids.
pub(super) struct Target {
    qos: u8,
    retain_as_published: bool,
    sub_ids: Vec<u32>,
}

/// 5.0 reason code: quota exceeded.
const QUOTA_EXCEEDED: u8 = 0x97;

impl Router {
    pub(super) fn publish(
        &mut self,
        client_id: &Arc<str>,
        msg: Message,
        qos2_pkid: Option<u16>,
        reply: Option<oneshot::Sender<PublishOutcome>>,
    ) {
        // A retained message is a persistent write of its own.
        if msg.retain && !msg.payload.is_empty() && !self.store.health().accepting() {
            self.refuse_disk_low(client_id, reply);
            return;
        }
        if let Some(pkid) = qos2_pkid {
            let Some(s) = self.sessions.get_mut(client_id) else {
                return;
            };
            if !s.incoming_qos2.insert(pkid) {
                // A resent QoS 2 PUBLISH we already took: acknowledge, don't route again.
                if let Some(r) = reply {
                    let _ = r.send(PublishOutcome::Delivered);
                }
                return;
            }
            if s.persistent() {
                self.ops.push(Op::AddIncomingQos2 {
                    client_id: client_id.to_string(),
                    pkid,
                });
            }
        }
        if msg.retain {
            self.set_retained(&msg);
        }
        if qos2_pkid.is_some() {
            self.share_session(client_id, false);
        }
        let Some((msg, reply)) = self.share_publish(client_id, msg, reply) else {
            // Cluster mode: routed when read back from the log.
            self.update_gauges();
            return;
        };
        self.disk_refused = 0;
        let mut outcome = self.route(Arc::new(msg), Some(client_id));
        if std::mem::take(&mut self.disk_refused) > 0 {
            outcome = PublishOutcome::DiskLow;
            // Not taken: a resend of this QoS 2 id must be routed, not de-duplicated.
            self.forget_qos2(client_id, qos2_pkid);
        }
        self.reply_after_commit(reply, outcome);
        self.update_gauges();
    }

    /// Answers a PUBLISH with `outcome` once the batch is durable
    /// (StoreFailed if it is not).
    pub(super) fn reply_after_commit(
        &mut self,
        reply: Option<oneshot::Sender<PublishOutcome>>,
        outcome: PublishOutcome,
    ) {
        if let Some(r) = reply {
            self.after_commit(move |ok| {
                let _ = r.send(if ok {
                    outcome
                } else {
                    PublishOutcome::StoreFailed
                });
            });
        }
    }

    /// Refuses a PUBLISH that needs a persistent write while the store cannot take one.
    fn refuse_disk_low(
        &mut self,
        client_id: &Arc<str>,
        reply: Option<oneshot::Sender<PublishOutcome>>,
    ) {
        self.metrics.dropped(crate::metrics::DropReason::DiskLow);
        tracing::debug!(client_id = %client_id, "retained PUBLISH refused: store disk low");
        if let Some(r) = reply {
            // After the batch, like every reply, so replies keep their order.
            self.after_commit(move |_| {
                let _ = r.send(PublishOutcome::DiskLow);
            });
        }
    }

    fn forget_qos2(&mut self, client_id: &Arc<str>, pkid: Option<u16>) {
        let (Some(pkid), Some(s)) = (pkid, self.sessions.get_mut(client_id)) else {
            return;
        };
        if s.incoming_qos2.remove(&pkid) && s.persistent() {
            self.ops.push(Op::RemoveIncomingQos2 {
                client_id: client_id.to_string(),
                pkid,
            });
        }
    }

    /// Delivers `msg` to every matching session; `from` is the publisher (No Local).
    pub(super) fn route(&mut self, msg: Arc<Message>, from: Option<&Arc<str>>) -> PublishOutcome {
        self.route_counted(msg, from).0
    }

    /// [`Router::route`], also returning how many matching sessions refused
    /// the message (queue or store limits).
    pub(super) fn route_counted(
        &mut self,
        msg: Arc<Message>,
        from: Option<&Arc<str>>,
    ) -> (PublishOutcome, usize) {
        let deliveries = self.targets(&msg, from, true);
        self.deliver(&msg, deliveries)
    }

    /// The sessions `msg` goes to, once each (shared groups pick one member
    /// among those that may read it). With `check_acl` (every message but a
    /// downlink command), a subscription the client's ACL does not cover
    /// gets only the topics the ACL lets it read.
    pub(super) fn targets(
        &mut self,
        msg: &Message,
        from: Option<&Arc<str>>,
        check_acl: bool,
    ) -> Vec<(Arc<str>, Target)> {
        let mut found: Vec<&SubEntry> = Vec::new();
        self.tree.matches(&msg.topic, &mut found);
        let matched: Vec<SubEntry> = found.into_iter().cloned().collect();
        let mut targets: HashMap<Arc<str>, Target> = HashMap::new();
        let mut groups: HashMap<(Arc<str>, Arc<str>), Vec<&SubEntry>> = HashMap::new();
        for e in &matched {
            if check_acl && !e.covered && !self.may_deliver(&e.client, &msg.topic) {
                continue;
            }
            if let Some(g) = &e.group {
                groups
                    .entry((g.clone(), e.filter.clone()))
                    .or_default()
                    .push(e);
                continue;
            }
            if e.opts.no_local && from.is_some_and(|f| *f == e.client) {
                continue;
            }
            add_target(&mut targets, e);
        }
        // Each shared group delivers its own copy, even to a client that also
        // matched through a non-shared subscription (5.0 4.8.2).
        let mut deliveries: Vec<(Arc<str>, Target)> = targets.into_iter().collect();
        for (key, members) in groups {
            if let Some(e) = self.pick_shared(key, &members) {
                let mut one = HashMap::new();
                add_target(&mut one, e);
                deliveries.extend(one);
            }
        }
        deliveries
    }

    /// Bytes that delivering `msg` to `deliveries` would add to the store
    /// (what counts against `session.max_stored_bytes`).
    pub(super) fn stored_cost(&self, msg: &Message, deliveries: &[(Arc<str>, Target)]) -> u64 {
        let n = deliveries
            .iter()
            .filter(|(client, t)| {
                self.sessions
                    .get(client)
                    .is_some_and(|s| would_store(s, &self.cfg, msg.qos.min(t.qos)))
            })
            .count();
        n as u64 * msg.size() as u64
    }

    /// Queues `msg` in each target session.
    pub(super) fn deliver(
        &mut self,
        msg: &Arc<Message>,
        deliveries: Vec<(Arc<str>, Target)>,
    ) -> (PublishOutcome, usize) {
        if deliveries.is_empty() {
            return (PublishOutcome::NoSubscribers, 0);
        }
        let mut accepted = 0;
        let total = deliveries.len();
        let origin = self.routing_origin;
        for (client, t) in deliveries {
            let (mut cx, sessions) = self.ctx();
            let Some(s) = sessions.get_mut(&client) else {
                continue;
            };
            let d = Delivery {
                msg,
                qos: msg.qos.min(t.qos),
                retain: msg.retain && (t.retain_as_published && s.protocol == 5),
                sub_ids: t.sub_ids.into(),
                origin,
            };
            accepted += enqueue(s, &mut cx, d) as usize;
        }
        let outcome = if accepted == 0 && total > 0 {
            PublishOutcome::QuotaExceeded
        } else {
            PublishOutcome::Delivered
        };
        (outcome, total - accepted)
    }

    /// One member of a shared group, round robin, preferring connected members.
    fn pick_shared<'a>(
        &mut self,
        key: (Arc<str>, Arc<str>),
        members: &[&'a SubEntry],
    ) -> Option<&'a SubEntry> {
        let online: Vec<&&SubEntry> = members
            .iter()
            .filter(|e| self.sessions.get(&e.client).is_some_and(|s| s.online()))
            .collect();
        // The entry exists while the group has members (see `shared_member`).
        let pos = self.shared_rr.get_mut(&key).map_or(0, |g| {
            g.pos = g.pos.wrapping_add(1);
            g.pos
        });
        if online.is_empty() {
            members.get(pos % members.len()).copied()
        } else {
            online.get(pos % online.len()).map(|e| **e)
        }
    }

    pub(super) fn acked(&mut self, client_id: &Arc<str>, conn_id: super::ConnId, seq: u64) {
        self.report_receipt(client_id, seq);
        let (mut cx, sessions) = self.ctx();
        let Some(s) = sessions.get_mut(client_id) else {
            return;
        };
        let mut origin = None;
        if let Some(idx) = s.find(seq) {
            let handed_here = s.conn.as_ref().is_some_and(|c| c.id == conn_id) && idx < s.handed;
            if handed_here || s.conn.is_none() || idx >= s.handed {
                origin = s.queue[idx].origin;
                remove_entry(s, &mut cx, idx);
            }
        }
        pump(s, &mut cx);
        self.advance_cursor(client_id, origin);
    }

    /// A command that asked for a delivery receipt was acknowledged by the device.
    fn report_receipt(&self, client_id: &Arc<str>, seq: u64) {
        let Some(tx) = self.receipts.as_ref() else {
            return;
        };
        let Some(s) = self.sessions.get(client_id) else {
            return;
        };
        let Some(body) = s.find(seq).and_then(|i| s.queue[i].body.as_ref()) else {
            return;
        };
        let Some(receipt) = body.msg.receipt.clone() else {
            return;
        };
        let ev = super::ReceiptEvent {
            client_id: client_id.clone(),
            topic: body.msg.topic.clone(),
            receipt,
            acked_at_ms: crate::mqtt::message::now_ms(),
        };
        if tx.try_send(ev).is_err() {
            tracing::warn!(client_id = %client_id, "receipt queue full; delivery receipt dropped");
        }
    }

    pub(super) fn received(&mut self, client_id: &Arc<str>, seq: u64) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        let Some(idx) = s.find(seq) else { return };
        s.queue[idx].state = EntryState::Released;
        let pkid = s.queue[idx].pkid();
        let shared = s.queue[idx].origin.is_some();
        if s.queue[idx].stored {
            self.ops.push(Op::SetState {
                client_id: client_id.to_string(),
                seq,
                state: EntryState::Released,
            });
        }
        // PUBREL only once Released is durable: after a crash the entry is then
        // resent as PUBREL, never as a PUBLISH the client already released.
        let Some(tx) = s.conn.as_ref().map(|c| c.tx.clone()) else {
            return;
        };
        if shared {
            // Cluster mode: durable in the shared state too (another node
            // would resend the PUBLISH otherwise).
            self.share_session(client_id, false);
        }
        let tasks = self.tasks.clone();
        self.after_commit(move |ok| {
            if !ok {
                return;
            }
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(out)) =
                tx.try_send(super::Outbound::PubRel { seq, pkid })
            {
                tasks.spawn("router pubrel send", async move {
                    let _ = tx.send(out).await;
                });
            }
        });
    }

    pub(super) fn pubrel(&mut self, client_id: &Arc<str>, pkid: u16, reply: oneshot::Sender<bool>) {
        let mut known = false;
        if let Some(s) = self.sessions.get_mut(client_id) {
            known = s.incoming_qos2.remove(&pkid);
            if known && s.persistent() {
                self.ops.push(Op::RemoveIncomingQos2 {
                    client_id: client_id.to_string(),
                    pkid,
                });
            }
        }
        if known {
            self.share_session(client_id, false);
        }
        self.after_commit(move |_| {
            let _ = reply.send(known);
        });
    }

    pub(super) fn subscribe(
        &mut self,
        client_id: &Arc<str>,
        filters: Vec<SubRequest>,
        reply: oneshot::Sender<Vec<SubResult>>,
    ) {
        let mut results = Vec::with_capacity(filters.len());
        let max_subs = self.cfg.mqtt.max_subscriptions_per_client;
        for req in filters {
            let Some(s) = self.sessions.get_mut(client_id) else {
                return;
            };
            if !s.subs.contains_key(&req.filter) && s.subs.len() >= max_subs {
                results.push(Err(QUOTA_EXCEEDED));
                continue;
            }
            if !self.may_subscribe(client_id, &req.filter) {
                results.push(Err(super::access::NOT_AUTHORIZED));
                continue;
            }
            let Some(s) = self.sessions.get_mut(client_id) else {
                return;
            };
            let (group, filter) = match parse_shared(&req.filter) {
                Ok(Some((g, f))) => (Some(Arc::<str>::from(g)), f.to_string()),
                _ => (None, req.filter.clone()),
            };
            s.subs.insert(req.filter.clone(), req.opts);
            let entry = SubEntry {
                client: client_id.clone(),
                group: group.clone(),
                filter: filter.as_str().into(),
                opts: req.opts,
                // Checked just above.
                covered: true,
            };
            let existed = self.tree.insert(entry);
            if let (Some(g), false) = (&group, existed) {
                self.shared_member(g, &filter, true);
            }
            results.push(Ok(req.opts.qos));
            let send_retained = group.is_none()
                && (req.opts.retain_handling == 0 || (req.opts.retain_handling == 1 && !existed));
            if send_retained {
                self.send_retained(client_id, &filter, req.opts);
            }
        }
        self.save_session(client_id);
        self.after_commit(move |_| {
            let _ = reply.send(results);
        });
    }

    pub(super) fn unsubscribe(
        &mut self,
        client_id: &Arc<str>,
        filters: Vec<String>,
        reply: oneshot::Sender<Vec<bool>>,
    ) {
        let mut results = Vec::with_capacity(filters.len());
        for f in filters {
            let Some(s) = self.sessions.get_mut(client_id) else {
                return;
            };
            let existed = s.subs.remove(&f).is_some();
            if existed {
                self.remove_sub(client_id, &f);
            }
            results.push(existed);
        }
        self.save_session(client_id);
        self.after_commit(move |_| {
            let _ = reply.send(results);
        });
    }

    /// Writes the session record if the session is persistent.
    pub(super) fn save_session(&mut self, client_id: &Arc<str>) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        if s.persistent() {
            s.stored = true;
            self.ops.push(Op::PutSession {
                client_id: client_id.to_string(),
                record: s.record(),
            });
        }
        self.share_session(client_id, false);
    }
}

fn add_target(targets: &mut HashMap<Arc<str>, Target>, e: &SubEntry) {
    let t = targets.entry(e.client.clone()).or_insert(Target {
        qos: 0,
        retain_as_published: false,
        sub_ids: Vec::new(),
    });
    t.qos = t.qos.max(e.opts.qos);
    t.retain_as_published |= e.opts.retain_as_published;
    if let Some(id) = e.opts.subscription_id {
        t.sub_ids.push(id);
    }
}
