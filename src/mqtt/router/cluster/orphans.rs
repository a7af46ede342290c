//! The cluster's leader (the live node with the lowest id) adopts the
//! sessions of nodes that stopped beating without a word.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::mqtt::message::now_ms;
use crate::mqtt::router::deadlines::Kind;
use crate::mqtt::router::Router;

impl Router {
    /// The cluster's leader (the live node with the lowest id) adopts the
    /// sessions of nodes that stopped beating without a word: it writes
    /// them as offline (so they expire everywhere on time) and publishes
    /// their wills, as their own node would have on an abnormal close.
    pub(in crate::mqtt::router) fn adopt_orphans(&mut self) {
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
}
