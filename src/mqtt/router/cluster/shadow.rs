//! Applying the `sessions` log: ownership by claims and generations, the
//! shadows of sessions owned elsewhere (subscriptions, expiry, cursor,
//! Released deliveries, incoming QoS 2 ids), takeovers, and the
//! subscriptions of clean sessions connected to other nodes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::Claim;
use crate::cluster::wire::SharedSession;
use crate::mqtt::message::now_ms;
use crate::mqtt::router::deadlines::Kind;
use crate::mqtt::router::session::Session;
use crate::mqtt::router::{Kick, Router};
use crate::store::Op;

impl Router {
    /// Applies a record of the `sessions` log (see `SharedSession` for the
    /// ownership rule).
    pub(super) fn apply_shared(&mut self, client: Arc<str>, shared: Option<SharedSession>) {
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
        // A session that ended is forgotten, so the map holds only live
        // client ids; the log's order per key keeps this safe (a later claim
        // comes after the end on every node).
        let ended = sh.record.expiry_secs == 0 && !sh.connected;
        if ended {
            self.claims.remove(&client);
        } else {
            self.claims.insert(
                client.clone(),
                Claim {
                    generation: sh.generation,
                    owner: Arc::from(sh.owner.as_str()),
                },
            );
        }
        if *sh.owner == *me {
            self.set_remote_subs(&client, None);
            self.own_record_read(&client, &sh);
            return;
        }
        match &sh.will {
            Some(w) => {
                let identity = sh.record.identity.clone().map(Arc::<str>::from);
                let acl = Some(self.compile_acl(&client, identity.as_ref()));
                let will = crate::mqtt::router::Will {
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
        let fresh = !self.sessions.contains_key(client);
        if fresh {
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
        let identity = rec.identity.map(Arc::<str>::from);
        let recompile = fresh || s.identity != identity;
        let disconnected_at = if sh.connected {
            None
        } else {
            Some(rec.disconnected_at_ms.unwrap_or_else(now_ms))
        };
        // Most records only move the cursor: the stored record is rewritten
        // only when something it holds changed.
        let timing = s.expiry_secs != rec.expiry_secs || s.disconnected_at_ms != disconnected_at;
        let mut changed = recompile || timing || s.protocol != rec.protocol;
        s.expiry_secs = rec.expiry_secs;
        s.protocol = rec.protocol;
        s.identity = identity;
        s.owned_here = false;
        s.cursor = sh.cursor;
        s.released = sh.released;
        s.disconnected_at_ms = disconnected_at;
        match disconnected_at {
            _ if !timing => {}
            Some(since) => {
                let left = (u64::from(s.expiry_secs) * 1000)
                    .saturating_sub(now_ms().saturating_sub(since));
                self.deadlines.schedule(
                    &mut s.expiry_deadline,
                    client,
                    Kind::SessionExpiry,
                    Duration::from_millis(left),
                );
            }
            None => self.deadlines.cancel(&mut s.expiry_deadline),
        }
        self.set_incoming(client, sh.incoming_qos2);
        changed |= self.set_shadow_subs(client, rec.subscriptions);
        if changed {
            // What the shadow may receive is what its client may read: the
            // rules compiled for its identity, as on the owning node
            // (`set_acl` also checks new subscriptions against them).
            let identity = self.sessions.get(client).and_then(|s| s.identity.clone());
            let acl = match (recompile, self.sessions.get(client)) {
                (false, Some(s)) => s.acl.clone(),
                _ => self.compile_acl(client, identity.as_ref()),
            };
            self.set_acl(client, acl);
            self.save_session(client);
        }
        self.drop_acknowledged(client);
        self.mark_released(client);
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
        if ids.len() == s.incoming_qos2.len() && ids.iter().all(|i| s.incoming_qos2.contains(i)) {
            return;
        }
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
    /// owner sent them when its client subscribed); whether any changed.
    fn set_shadow_subs(
        &mut self,
        client: &Arc<str>,
        subs: Vec<crate::store::SubscriptionRecord>,
    ) -> bool {
        let Some(s) = self.sessions.get_mut(client) else {
            return false;
        };
        let mut changed = false;
        let wanted: HashSet<&str> = subs.iter().map(|r| r.filter.as_str()).collect();
        let gone: Vec<String> = s
            .subs
            .keys()
            .filter(|f| !wanted.contains(f.as_str()))
            .cloned()
            .collect();
        for f in gone {
            changed = true;
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
                return changed;
            };
            if s.subs.get(&r.filter) == Some(&opts) {
                continue;
            }
            changed = true;
            if s.subs.insert(r.filter.clone(), opts).is_some() {
                self.remove_sub(client, &r.filter);
            }
            self.insert_sub(client, &r.filter, opts);
        }
        changed
    }

    /// Drops the queued entries the session's cursor covers (acknowledged
    /// on the node its client was connected to). Entries whose position is
    /// not known yet (restored, body not read) are dropped once read.
    pub(in crate::mqtt::router) fn drop_acknowledged(&mut self, client: &Arc<str>) {
        let (mut cx, sessions) = self.ctx();
        let Some(s) = sessions.get_mut(client) else {
            return;
        };
        // Not what is in flight to a connection here (its acks move the cursor).
        if s.cursor.is_empty() || s.handed > 0 {
            return;
        }
        let idx: Vec<usize> = (0..s.queue.len())
            .rev()
            .filter(|&i| s.acknowledged(s.queue[i].origin))
            .collect();
        for i in idx {
            crate::mqtt::router::queue::remove_entry(s, &mut cx, i);
        }
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
}
