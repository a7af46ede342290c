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
//!
//! `shadow` applies the `sessions` log; `orphans` is the leader's adoption
//! of the sessions of dead nodes.

mod orphans;
mod shadow;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{PublishOutcome, Router};
use crate::cluster::wire::SharedSession;
use crate::cluster::{Inbound, Link};
use crate::mqtt::message::{now_ms, Message};
use crate::store::ClusterPos;

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
    pub(in crate::mqtt::router) fn share_will(&mut self, msg: &Message) -> bool {
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

    fn me(&self) -> Option<&Arc<str>> {
        self.cluster.as_ref().map(Link::node)
    }

    /// Cluster mode: a device's PUBLISH goes to the log (and its retained
    /// change, as this node now holds it); the reply waits for Kafka.
    /// Returns the PUBLISH back when not in cluster mode.
    pub(in crate::mqtt::router) fn share_publish(
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
        self.reply_after_commit(reply, outcome);
        None
    }

    /// Whether any session of the cluster subscribes to `topic`: a session
    /// of this node or a shadow of a persistent one (`tree`), or a clean
    /// session connected elsewhere (`remote_subs`). A subscription made
    /// elsewhere an instant ago may not be known yet: as with any PUBLISH
    /// racing a SUBSCRIBE of another client, it may miss that one.
    fn subscribed_anywhere(&self, topic: &str) -> bool {
        self.tree.matches_any(topic) || self.remote_subs.matches_any(topic)
    }

    /// Cluster mode: a downlink command goes to the log (keyed by its
    /// target, else its topic); the source commits it once Kafka has it.
    /// Returns false when not in cluster mode.
    pub(in crate::mqtt::router) fn share_command(
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
    pub(in crate::mqtt::router) fn cluster_inbound(&mut self, inbound: Inbound) {
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
                match self.routed.iter_mut().find(|(p, _)| *p == pos.0) {
                    Some((_, o)) => *o = (*o).max(pos.1),
                    None => self.routed.push(pos),
                }
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
    pub(in crate::mqtt::router) fn share_session(&mut self, client: &Arc<str>, claim: bool) {
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
    pub(in crate::mqtt::router) fn advance_cursor(
        &mut self,
        client: &Arc<str>,
        origin: Option<ClusterPos>,
    ) {
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

    /// The batch's cluster records, handed to Kafka: `None` if there are none.
    pub(in crate::mqtt::router) fn cluster_flush(&mut self) -> Option<BoxFuture<'static, bool>> {
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
        // Taken over elsewhere since it was marked (in this same batch): no
        // longer this node's to write, and its claim stays the other node's.
        if self.sessions.get(client).is_some_and(|s| !s.owned_here) {
            return None;
        }
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
