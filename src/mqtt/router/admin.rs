//! What the admin API asks the router: the owner of every session answers
//! from its own state, in its own task, so nothing is shared or locked.
//!
//! Listing sorts the matching client ids on each call (O(n log n) on the
//! router task): pages are bounded by [`MAX_PAGE`], and the call is for an
//! operator, not a hot path.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::oneshot;

use super::{Kick, Router};

/// Most sessions one page lists.
pub const MAX_PAGE: usize = 1000;

/// A question from the admin API.
#[derive(Debug)]
pub enum AdminQuery {
    Stats(oneshot::Sender<Stats>),
    /// Sessions whose client id starts with `prefix`, sorted, `offset`..`+limit`.
    Sessions {
        prefix: String,
        offset: usize,
        limit: usize,
        reply: oneshot::Sender<SessionPage>,
    },
    Session {
        client_id: String,
        reply: oneshot::Sender<Option<SessionInfo>>,
    },
    /// Disconnects the client (5.0: DISCONNECT 0x98); its session stays.
    Disconnect {
        client_id: String,
        reply: oneshot::Sender<bool>,
    },
    /// Disconnects the client if connected and deletes its session; the
    /// reply comes once the deletion is durable (`false`: no such session,
    /// or the store failed).
    DeleteSession {
        client_id: String,
        reply: oneshot::Sender<bool>,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub sessions: usize,
    pub connected: usize,
    pub persistent_sessions: usize,
    pub queued_messages: usize,
    pub stored_bytes: u64,
    pub retained_messages: usize,
    pub retained_bytes: u64,
    pub delayed_wills: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionPage {
    /// Sessions matching the prefix, in all.
    pub total: usize,
    pub sessions: Vec<SessionSummary>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionSummary {
    pub client_id: String,
    pub connected: bool,
    pub persistent: bool,
    pub queued_messages: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub client_id: String,
    pub connected: bool,
    /// The listener of the current connection, if connected.
    pub listener: Option<String>,
    /// 4 (3.1.1) or 5.
    pub protocol: u8,
    pub username: Option<String>,
    pub persistent: bool,
    pub expiry_secs: u32,
    pub subscriptions: Vec<Subscription>,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    /// Deliveries handed to the connection and not acknowledged yet.
    pub inflight: usize,
    /// When the client went offline (ms since the epoch), if it is.
    pub disconnected_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    pub qos: u8,
}

impl Router {
    pub(super) fn admin(&mut self, query: AdminQuery) {
        match query {
            AdminQuery::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            AdminQuery::Sessions {
                prefix,
                offset,
                limit,
                reply,
            } => {
                let _ = reply.send(self.page(&prefix, offset, limit));
            }
            AdminQuery::Session { client_id, reply } => {
                let _ = reply.send(self.session_info(&client_id));
            }
            AdminQuery::Disconnect { client_id, reply } => {
                let kicked = self.kick(&client_id);
                let _ = reply.send(kicked);
            }
            AdminQuery::DeleteSession { client_id, reply } => self.delete(&client_id, reply),
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            sessions: self.sessions.len(),
            connected: self.sessions.values().filter(|s| s.conn.is_some()).count(),
            persistent_sessions: self.persistent,
            queued_messages: self.sessions.values().map(|s| s.queue.len()).sum(),
            stored_bytes: self.stored_bytes,
            retained_messages: self.retained.len(),
            retained_bytes: self.retained_bytes,
            delayed_wills: self.delayed_wills,
        }
    }

    fn page(&self, prefix: &str, offset: usize, limit: usize) -> SessionPage {
        let mut ids: Vec<&Arc<str>> = self
            .sessions
            .keys()
            .filter(|id| id.starts_with(prefix))
            .collect();
        ids.sort_unstable();
        let total = ids.len();
        let sessions = ids
            .into_iter()
            .skip(offset)
            .take(limit.min(MAX_PAGE))
            .filter_map(|id| self.sessions.get(id))
            .map(|s| SessionSummary {
                client_id: s.client_id.to_string(),
                connected: s.conn.is_some(),
                persistent: s.persistent(),
                queued_messages: s.queue.len(),
            })
            .collect();
        SessionPage { total, sessions }
    }

    fn session_info(&self, client_id: &str) -> Option<SessionInfo> {
        let s = self.sessions.get(client_id)?;
        let mut subscriptions: Vec<Subscription> = s
            .subs
            .iter()
            .map(|(filter, o)| Subscription {
                filter: filter.clone(),
                qos: o.qos,
            })
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        Some(SessionInfo {
            client_id: s.client_id.to_string(),
            connected: s.conn.is_some(),
            listener: s
                .conn
                .as_ref()
                .and_then(|c| c.listener.as_deref().map(str::to_owned)),
            protocol: s.protocol,
            username: s.acl.username().map(|u| u.to_string()),
            persistent: s.persistent(),
            expiry_secs: s.expiry_secs,
            subscriptions,
            queued_messages: s.queue.len(),
            queued_bytes: s.queued_bytes,
            inflight: s.conn.as_ref().map_or(0, |c| c.inflight),
            disconnected_at_ms: s.disconnected_at_ms,
        })
    }

    /// Tells the client's connection to close; `false` if it has none.
    fn kick(&mut self, client_id: &str) -> bool {
        let Some(c) = self
            .sessions
            .get_mut(client_id)
            .and_then(|s| s.conn.as_mut())
        else {
            return false;
        };
        if let Some(k) = c.kick.take() {
            let _ = k.send(Kick::Administrative);
        }
        tracing::info!(client_id, "client disconnected by the admin API");
        true
    }

    fn delete(&mut self, client_id: &str, reply: oneshot::Sender<bool>) {
        if !self.sessions.contains_key(client_id) {
            let _ = reply.send(false);
            return;
        }
        self.kick(client_id);
        if let Some(mut s) = self.sessions.remove(client_id) {
            // The connection's own DISCONNECT will find no session.
            s.detach();
            // Cluster mode: this node claims the session to end it, so every
            // node's copy ends too (a shadow here is not this node's to end).
            s.owned_here = true;
            let id = s.client_id.clone();
            self.end_session(s);
            self.share_session(&id, true);
        }
        self.update_gauges();
        tracing::info!(client_id, "session deleted by the admin API");
        self.after_commit(move |ok| {
            let _ = reply.send(ok);
        });
    }
}
