//! The router's side of cluster mode (`crate::cluster`, design in
//! `docs/cluster.md`).
//!
//! - What this node's devices publish, and the commands it consumes, are not
//!   routed here at once: they go to the `messages` topic, and every node,
//!   this one included, routes them when it reads them back. So every node
//!   queues a message for a session in the same per-partition order and
//!   knows its position; the PUBLISH is acknowledged once Kafka has it.
//! - Every node keeps every persistent session of the cluster (a *shadow*
//!   where its client is not connected) and queues for it; the node its
//!   client is connected to writes the session's shared state (claim,
//!   subscriptions, acknowledged positions) to the `sessions` topic, and the
//!   others drop what it acknowledged. A device reconnecting anywhere finds
//!   its session and its queue there, also when the node it was on is dead.
//! - A claim by another node takes the client off this one (Session taken
//!   over).
//!
//! Replies of a batch wait for Kafka's acknowledgement of its records as
//! they wait for the store's commit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::deadlines::Kind;
use super::session::Session;
use super::{Kick, PublishOutcome, Router};
use crate::cluster::wire::SharedSession;
use crate::cluster::{Inbound, Link};
use crate::mqtt::message::{now_ms, Message};
use crate::store::{ClusterPos, Op};

/// The current owner of a client id in the cluster, as the log says.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub generation: u64,
    pub owner: Arc<str>,
}

impl Router {
    /// Cluster mode: share this node's messages and sessions through `link`;
    /// `members` tells which nodes are alive.
    pub fn with_cluster(mut self, link: Link, members: crate::cluster::Members) -> Router {
        self.cluster = Some(link);
        self.members = Some(members);
        self
    }

    /// Cluster mode: a will goes to the log like any PUBLISH (its retained
    /// change too). Returns false when not in cluster mode.
    pub(super) fn share_will(&mut self, msg: &Message) -> bool {
        let Some(link) = &self.cluster else {
            return false;
        };
        let key: Arc<str> = Arc::from(&*msg.topic);
        self.cluster_out
            .extend(link.message(&key, msg, false, None));
        if msg.retain {
            let now = self.retained.get(&msg.topic).map(|m| &**m);
            self.cluster_out.extend(link.retained(&msg.topic, now));
        }
        true
    }

    /// The cluster's leader (the live node with the lowest id) adopts the
    /// sessions of nodes that stopped beating without a word: it writes
    /// them as offline (so they expire everywhere on time) and publishes
    /// their wills, as their own node would have on an abnormal close.
    pub(super) fn adopt_orphans(&mut self) {
        let (Some(members), Some(me)) = (&self.members, self.me().cloned()) else {
            return;
        };
        let live: HashSet<String> = members.live().into_iter().map(|n| n.node_id).collect();
        if live.iter().min().is_none_or(|leader| **leader != *me) {
            return;
        }
        let orphans: Vec<Arc<str>> = self
            .claims
            .iter()
            .filter(|(_, c)| *c.owner != *me && !live.contains(&*c.owner))
            .map(|(id, _)| id.clone())
            .collect();
        for client in orphans {
            self.adopt(&client);
        }
    }

    fn adopt(&mut self, client: &Arc<str>) {
        let owner = self.claims.get(client).map(|c| c.owner.clone());
        tracing::info!(client_id = %client, owner = ?owner, "session of a node gone adopted by the cluster's leader");
        let will = self.remote_wills.remove(client);
        match self.sessions.get_mut(client) {
            Some(s) => {
                s.owned_here = true;
                if s.disconnected_at_ms.is_none() {
                    s.disconnected_at_ms = Some(now_ms());
                    let expiry = Duration::from_secs(s.expiry_secs.into());
                    self.deadlines.schedule(
                        &mut s.expiry_deadline,
                        client,
                        Kind::SessionExpiry,
                        expiry,
                    );
                }
                if let Some(w) = will {
                    if w.delay_secs > 0 {
                        self.delay_will(client, w);
                    } else {
                        self.publish_will(w);
                    }
                }
            }
            // A clean session: it ended with its connection.
            None => {
                if let Some(w) = will {
                    self.publish_will(w);
                }
            }
        }
        // Written as a claim: this node owns it (or its end) from now on.
        self.share_session(client, true);
    }

    fn me(&self) -> Option<&Arc<str>> {
        self.cluster.as_ref().map(Link::node)
    }

    /// Cluster mode: a device's PUBLISH goes to the log (and its retained
    /// change, as this node now holds it); the reply waits for Kafka.
    /// Returns the PUBLISH back when not in cluster mode.
    pub(super) fn share_publish(
        &mut self,
        publisher: &Arc<str>,
        msg: Message,
        reply: Option<tokio::sync::oneshot::Sender<PublishOutcome>>,
    ) -> Option<(
        Message,
        Option<tokio::sync::oneshot::Sender<PublishOutcome>>,
    )> {
        let Some(link) = &self.cluster else {
            return Some((msg, reply));
        };
        // Telemetry only a backend wants (the uplink routes have it already)
        // is not written to the log.
        let wanted = self.subscribed_anywhere(&msg.topic);
        if wanted {
            self.cluster_out
                .extend(link.message(publisher, &msg, false, None));
        }
        let outcome = if wanted {
            PublishOutcome::Delivered
        } else {
            PublishOutcome::NoSubscribers
        };
        if msg.retain {
            let now = self.retained.get(&msg.topic).map(|m| &**m);
            self.cluster_out.extend(link.retained(&msg.topic, now));
        }
        if let Some(r) = reply {
            self.after_commit(move |ok| {
                let _ = r.send(if ok {
                    outcome
                } else {
                    PublishOutcome::StoreFailed
                });
            });
        }
        None
    }

    /// Whether any session of the cluster subscribes to `topic`: a session
    /// of this node or a shadow of a persistent one (`tree`), or a clean
    /// session connected elsewhere (`remote_subs`). A subscription made
    /// elsewhere an instant ago may not be known yet: as with any PUBLISH
    /// racing a SUBSCRIBE of another client, it may miss that one.
    fn subscribed_anywhere(&self, topic: &str) -> bool {
        let mut found = Vec::new();
        self.tree.matches(topic, &mut found);
        if found.is_empty() {
            self.remote_subs.matches(topic, &mut found);
        }
        !found.is_empty()
    }

    /// Keeps the subscriptions of a clean session connected to another
    /// node (`subs`), or forgets them (`None`).
    fn set_remote_subs(
        &mut self,
        client: &Arc<str>,
        subs: Option<&[crate::store::SubscriptionRecord]>,
    ) {
        for f in self.remote_filters.remove(client).unwrap_or_default() {
            let (group, filter) = match crate::mqtt::topic::parse_shared(&f) {
                Ok(Some((g, f))) => (Some(g), f),
                _ => (None, f.as_str()),
            };
            self.remote_subs.remove(filter, client, group);
        }
        let Some(subs) = subs.filter(|s| !s.is_empty()) else {
            return;
        };
        let mut filters = Vec::with_capacity(subs.len());
        for r in subs {
            let (group, filter) = match crate::mqtt::topic::parse_shared(&r.filter) {
                Ok(Some((g, f))) => (Some(Arc::<str>::from(g)), f),
                _ => (None, r.filter.as_str()),
            };
            self.remote_subs.insert(crate::mqtt::topic::SubEntry {
                client: client.clone(),
                group,
                filter: filter.into(),
                opts: crate::mqtt::topic::SubOpts {
                    qos: r.qos,
                    no_local: r.no_local,
                    retain_as_published: r.retain_as_published,
                    retain_handling: r.retain_handling,
                    subscription_id: r.subscription_id,
                },
                covered: true,
            });
            filters.push(r.filter.clone());
        }
        self.remote_filters.insert(client.clone(), filters);
    }

    /// Cluster mode: a downlink command goes to the log (keyed by its
    /// target, else its topic); the source commits it once Kafka has it.
    /// Returns false when not in cluster mode.
    pub(super) fn share_command(
        &mut self,
        msg: &Message,
        target: Option<&Arc<str>>,
        create: bool,
    ) -> bool {
        let Some(link) = &self.cluster else {
            return false;
        };
        let key: Arc<str> = target.cloned().unwrap_or_else(|| Arc::from(&*msg.topic));
        let target = target.map(|t| (&**t, create));
        self.cluster_out
            .extend(link.message(&key, msg, true, target));
        true
    }

    /// What the cluster's logs say.
    pub(super) fn cluster_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message {
                routed,
                publisher,
                pos,
                reply,
            } => {
                let msg = Arc::new(routed.message);
                self.disk_refused = 0;
                self.routing_origin = Some(pos);
                match (routed.command, routed.target) {
                    (true, Some(target)) => {
                        self.command_to(&Arc::from(target), &msg, routed.create);
                    }
                    (true, None) => {
                        let deliveries = self.targets(&msg, None, false);
                        self.deliver(&msg, deliveries);
                    }
                    (false, _) => {
                        self.route(msg, publisher.as_ref());
                    }
                }
                self.routing_origin = None;
                let disk_low = std::mem::take(&mut self.disk_refused) > 0;
                self.after_commit(move |ok| {
                    let _ = reply.send(ok && !disk_low);
                });
            }
            Inbound::Retained { topic, message } => {
                let msg = message.unwrap_or_else(|| Message {
                    topic,
                    payload: bytes::Bytes::new(),
                    qos: 0,
                    retain: true,
                    props: Default::default(),
                    expires_at_ms: None,
                    receipt: None,
                });
                self.set_retained(&msg);
            }
            Inbound::Session { client_id, shared } => self.apply_shared(client_id, shared),
        }
        self.update_gauges();
    }

    /// Marks a session owned by this node as changed: its shared state is
    /// written at the end of the batch (`claim`: it just connected here).
    pub(super) fn share_session(&mut self, client: &Arc<str>, claim: bool) {
        if self.cluster.is_none() {
            return;
        }
        let owned = self.sessions.get(client).is_none_or(|s| s.owned_here);
        if owned {
            let c = self.cluster_dirty.entry(client.clone()).or_insert(false);
            *c |= claim;
        }
    }

    /// A delivery with a cluster position was acknowledged: the session's
    /// cursor moves, and the other nodes will drop it.
    pub(super) fn advance_cursor(&mut self, client: &Arc<str>, origin: Option<ClusterPos>) {
        let (Some((partition, offset)), Some(s)) = (origin, self.sessions.get_mut(client)) else {
            return;
        };
        // A clean session has no copies elsewhere to trim.
        if !s.persistent() {
            return;
        }
        match s.cursor.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, o)) => *o = (*o).max(offset),
            None => s.cursor.push((partition, offset)),
        }
        self.share_session(client, false);
    }

    /// Applies a record of the `sessions` log (see `SharedSession` for the
    /// ownership rule).
    fn apply_shared(&mut self, client: Arc<str>, shared: Option<SharedSession>) {
        let Some(me) = self.me().cloned() else { return };
        let Some(sh) = shared else {
            // Ended outside any node (an operator's tombstone).
            self.claims.remove(&client);
            self.remote_wills.remove(&client);
            self.set_remote_subs(&client, None);
            if self.sessions.get(&client).is_some_and(|s| s.conn.is_none()) {
                if let Some(s) = self.sessions.remove(&client) {
                    self.end_session(s);
                }
            }
            return;
        };
        let accepted = match self.claims.get(&client) {
            None => true,
            Some(c) if sh.claim => sh.generation >= c.generation,
            Some(c) => sh.generation == c.generation && *c.owner == *sh.owner,
        };
        if !accepted {
            tracing::debug!(client_id = %client, owner = %sh.owner, generation = sh.generation, "stale session record ignored");
            return;
        }
        self.claims.insert(
            client.clone(),
            Claim {
                generation: sh.generation,
                owner: Arc::from(sh.owner.as_str()),
            },
        );
        if *sh.owner == *me {
            self.set_remote_subs(&client, None);
            self.own_record_read(&client, &sh);
            return;
        }
        match &sh.will {
            Some(w) => {
                let identity = sh.record.identity.clone().map(Arc::<str>::from);
                let acl = Some(self.compile_acl(&client, identity.as_ref()));
                let will = super::Will {
                    message: w.message.clone(),
                    delay_secs: w.delay_secs,
                    expiry_secs: w.expiry_secs,
                    acl,
                };
                self.remote_wills.insert(client.clone(), Box::new(will));
            }
            None => {
                self.remote_wills.remove(&client);
            }
        }
        self.taken_elsewhere(&client, &sh.owner);
        let remote_clean = sh.record.expiry_secs == 0 && sh.connected;
        self.set_remote_subs(
            &client,
            remote_clean.then_some(&sh.record.subscriptions[..]),
        );
        if sh.record.expiry_secs == 0 {
            // A clean session (connected elsewhere, or gone): nothing to keep.
            if let Some(s) = self.sessions.remove(&client) {
                self.end_session(s);
            }
            return;
        }
        self.upsert_shadow(&client, sh);
    }

    /// This node's own record read back. After a restart, a session the log
    /// still shows connected here is written again as offline.
    fn own_record_read(&mut self, client: &Arc<str>, sh: &SharedSession) {
        if let Some(s) = self.sessions.get_mut(client) {
            if sh.connected && s.conn.is_none() && !s.owned_here {
                s.owned_here = true;
                self.share_session(client, false);
            }
        }
    }

    /// Another node now owns `client`: a connection of it here is closed
    /// (Session taken over), and this node no longer writes its state.
    fn taken_elsewhere(&mut self, client: &Arc<str>, owner: &str) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        s.owned_here = false;
        if let Some(mut old) = s.detach() {
            if let Some(k) = old.kick.take() {
                let _ = k.send(Kick::TakenOver);
            }
            // The device moved: its connection did not end abnormally.
            s.will = None;
            s.unload();
            self.metrics.takeovers.inc();
            tracing::info!(client_id = %client, %owner, "session taken over on another node");
            if !s.persistent() {
                if let Some(s) = self.sessions.remove(client) {
                    self.end_session(s);
                }
            }
        }
    }

    /// Creates or updates the shadow of a persistent session owned elsewhere.
    fn upsert_shadow(&mut self, client: &Arc<str>, sh: SharedSession) {
        if !self.sessions.contains_key(client) {
            let mut s = Session::new(client.clone());
            s.acl = self.compile_acl(client, None);
            self.sessions.insert(client.clone(), Box::new(s));
        }
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if !s.persistent() {
            self.persistent += 1;
        }
        let rec = sh.record;
        s.expiry_secs = rec.expiry_secs;
        s.protocol = rec.protocol;
        s.identity = rec.identity.map(Arc::from);
        s.owned_here = false;
        s.cursor = sh.cursor;
        s.released = sh.released;
        if sh.connected {
            s.disconnected_at_ms = None;
            self.deadlines.cancel(&mut s.expiry_deadline);
        } else {
            let since = rec.disconnected_at_ms.unwrap_or_else(now_ms);
            s.disconnected_at_ms = Some(since);
            let left =
                (u64::from(s.expiry_secs) * 1000).saturating_sub(now_ms().saturating_sub(since));
            self.deadlines.schedule(
                &mut s.expiry_deadline,
                client,
                Kind::SessionExpiry,
                Duration::from_millis(left),
            );
        }
        self.set_incoming(client, sh.incoming_qos2);
        self.set_shadow_subs(client, rec.subscriptions);
        self.drop_acknowledged(client);
        self.mark_released(client);
        self.save_session(client);
    }

    /// Sets a shadow's entries its client received on the owning node to
    /// Released (a PUBREL is resent for them, not the PUBLISH).
    fn mark_released(&mut self, client: &Arc<str>) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        if s.released.is_empty() || s.conn.is_some() {
            return;
        }
        for e in s.queue.iter_mut() {
            let released = e.origin.is_some_and(|o| s.released.contains(&o));
            if released && e.state != crate::store::EntryState::Released {
                e.state = crate::store::EntryState::Released;
                if e.stored {
                    self.ops.push(Op::SetState {
                        client_id: client.to_string(),
                        seq: e.seq,
                        state: crate::store::EntryState::Released,
                    });
                }
            }
        }
    }

    fn set_incoming(&mut self, client: &Arc<str>, ids: Vec<u16>) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let new: HashSet<u16> = ids.into_iter().collect();
        for pkid in s.incoming_qos2.difference(&new) {
            self.ops.push(Op::RemoveIncomingQos2 {
                client_id: client.to_string(),
                pkid: *pkid,
            });
        }
        for pkid in new.difference(&s.incoming_qos2) {
            self.ops.push(Op::AddIncomingQos2 {
                client_id: client.to_string(),
                pkid: *pkid,
            });
        }
        s.incoming_qos2 = new;
    }

    /// Replaces a shadow's subscriptions (no retained messages are sent: the
    /// owner sent them when its client subscribed).
    fn set_shadow_subs(&mut self, client: &Arc<str>, subs: Vec<crate::store::SubscriptionRecord>) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let wanted: HashSet<&str> = subs.iter().map(|r| r.filter.as_str()).collect();
        let gone: Vec<String> = s
            .subs
            .keys()
            .filter(|f| !wanted.contains(f.as_str()))
            .cloned()
            .collect();
        for f in gone {
            if let Some(s) = self.sessions.get_mut(client) {
                s.subs.remove(&f);
            }
            self.remove_sub(client, &f);
        }
        for r in subs {
            let opts = crate::mqtt::topic::SubOpts {
                qos: r.qos,
                no_local: r.no_local,
                retain_as_published: r.retain_as_published,
                retain_handling: r.retain_handling,
                subscription_id: r.subscription_id,
            };
            let Some(s) = self.sessions.get_mut(client) else {
                return;
            };
            if s.subs.get(&r.filter) == Some(&opts) {
                continue;
            }
            if s.subs.insert(r.filter.clone(), opts).is_some() {
                self.remove_sub(client, &r.filter);
            }
            self.insert_sub(client, &r.filter, opts);
        }
    }

    /// Drops the queued entries the session's cursor covers (acknowledged
    /// on the node its client was connected to). Entries whose position is
    /// not known yet (restored, body not read) are dropped once read.
    pub(super) fn drop_acknowledged(&mut self, client: &Arc<str>) {
        let (mut cx, sessions) = self.ctx();
        let Some(s) = sessions.get_mut(client) else {
            return;
        };
        if s.cursor.is_empty() || s.conn.is_some() {
            return;
        }
        let idx: Vec<usize> = (0..s.queue.len())
            .rev()
            .filter(|&i| s.acknowledged(s.queue[i].origin))
            .collect();
        for i in idx {
            super::queue::remove_entry(s, &mut cx, i);
        }
    }

    /// The batch's cluster records, handed to Kafka: `None` if there are none.
    pub(super) fn cluster_flush(&mut self) -> Option<BoxFuture<'static, bool>> {
        let link = self.cluster.clone()?;
        let me = link.node().clone();
        for (client, claim) in std::mem::take(&mut self.cluster_dirty) {
            let shared = self.shared_state(&client, &me, claim);
            if let Some(sh) = shared {
                self.cluster_out.extend(link.session(&client, Some(&sh)));
            }
        }
        if self.cluster_out.is_empty() {
            return None;
        }
        Some(link.send(std::mem::take(&mut self.cluster_out)))
    }

    /// The shared state this node writes for `client` (`claim`: a new
    /// generation); `None` if another node owns it now.
    fn shared_state(
        &mut self,
        client: &Arc<str>,
        me: &Arc<str>,
        claim: bool,
    ) -> Option<SharedSession> {
        let current = self.claims.get(client);
        let generation = match current {
            Some(c) if claim => c.generation + 1,
            Some(c) if *c.owner == **me => c.generation,
            Some(_) => return None,
            None => 1,
        };
        self.claims.insert(
            client.clone(),
            Claim {
                generation,
                owner: me.clone(),
            },
        );
        let will = self.sessions.get(client).and_then(|s| {
            let w = s.will.as_ref().or(s.pending_will.as_ref())?;
            Some(crate::cluster::wire::WillRecord {
                message: w.message.clone(),
                delay_secs: w.delay_secs,
                expiry_secs: w.expiry_secs,
            })
        });
        let (record, connected, cursor, incoming, released) = match self.sessions.get(client) {
            Some(s) if !s.owned_here => return None,
            Some(s) => {
                let mut incoming: Vec<u16> = s.incoming_qos2.iter().copied().collect();
                incoming.sort_unstable();
                let released = s
                    .queue
                    .iter()
                    .filter(|e| e.state == crate::store::EntryState::Released)
                    .filter_map(|e| e.origin)
                    .collect();
                (
                    s.record(),
                    s.conn.is_some(),
                    s.cursor.clone(),
                    incoming,
                    released,
                )
            }
            // Ended here: no session left (expiry 0, offline).
            None => (
                crate::store::SessionRecord {
                    protocol: 4,
                    expiry_secs: 0,
                    disconnected_at_ms: Some(now_ms()),
                    subscriptions: Vec::new(),
                    identity: None,
                },
                false,
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ),
        };
        Some(SharedSession {
            owner: me.to_string(),
            generation,
            claim,
            connected,
            record,
            cursor,
            incoming_qos2: incoming,
            released,
            will,
        })
    }
}
