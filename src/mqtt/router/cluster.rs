//! The router's side of cluster mode (`crate::cluster`): what this node's
//! devices publish (and the commands it consumes) also goes to the other
//! nodes, and what they publish comes in here as if published locally.
//! Replies of a batch wait for Kafka's acknowledgement of its records as
//! they wait for the store's commit.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::Router;
use crate::cluster::{Inbound, Link};
use crate::mqtt::message::Message;

impl Router {
    /// Cluster mode: share this node's messages and retained changes through `link`.
    pub fn with_cluster(mut self, link: Link) -> Router {
        self.cluster = Some(link);
        self
    }

    /// A device's PUBLISH, already routed here: for the other nodes too,
    /// and its topic's retained message as this node now holds it.
    pub(super) fn share_publish(&mut self, publisher: &Arc<str>, msg: &Message) {
        let Some(link) = &self.cluster else { return };
        self.cluster_out
            .extend(link.message(publisher, msg, false, None));
        if msg.retain {
            let now = self.retained.get(&msg.topic).map(|m| &**m);
            self.cluster_out.extend(link.retained(&msg.topic, now));
        }
    }

    /// A downlink command this node consumed: the other nodes' sessions
    /// get it too (the source commits it once Kafka has it).
    pub(super) fn share_command(&mut self, msg: &Message, target: Option<&Arc<str>>) {
        let Some(link) = &self.cluster else { return };
        // Keyed by the target (one device's commands stay in order), else
        // by the topic.
        let key: Arc<str> = target.cloned().unwrap_or_else(|| Arc::from(&*msg.topic));
        self.cluster_out
            .extend(link.message(&key, msg, true, target.map(|t| &**t)));
    }

    /// What another node (or the retained log) says.
    pub(super) fn from_cluster(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message { routed, reply } => {
                let msg = Arc::new(routed.message);
                self.disk_refused = 0;
                match (routed.command, routed.target) {
                    (true, Some(target)) => {
                        // Only where the session lives; no preset session
                        // (the node that consumed it decided that).
                        self.command_to(&Arc::from(target), &msg, false);
                    }
                    (true, None) => {
                        let deliveries = self.targets(&msg, None, false);
                        self.deliver(&msg, deliveries);
                    }
                    (false, _) => {
                        self.route(msg, None);
                    }
                }
                let disk_low = std::mem::take(&mut self.disk_refused) > 0;
                self.after_commit(move |ok| {
                    let _ = reply.send(ok && !disk_low);
                });
                self.update_gauges();
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
                self.update_gauges();
            }
        }
    }

    /// The batch's cluster records, handed to Kafka: `None` if there are none.
    pub(super) fn cluster_flush(&mut self) -> Option<BoxFuture<'static, bool>> {
        let link = self.cluster.as_ref()?;
        if self.cluster_out.is_empty() {
            return None;
        }
        Some(link.send(std::mem::take(&mut self.cluster_out)))
    }
}
