//! Downlink commands from a backend: into every matching session, or into
//! one client's session (creating a preset session when the route allows).
//! The reply is sent once the command is durably stored wherever it was
//! queued, so the source may commit/ack it then and only then.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::queue::{enqueue, would_store, Delivery};
use super::session::Session;
use super::{PublishOutcome, Router};
use crate::mqtt::message::{now_ms, Message};

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandResult {
    /// Stored (or delivered, for clean sessions) in at least one session;
    /// `refused` other matching sessions refused it (queue/store limits).
    Stored { refused: usize },
    /// No subscription matched / the addressed client has no session.
    NoSession,
    /// Every target refused it (queue or store limits).
    Rejected,
    /// The store failed: not stored, must not be committed.
    StoreFailed,
    /// A global budget cannot take it for every session it is for, so it was
    /// stored in none of them: not committed, consumed again later. Never a
    /// partial store, so a retry cannot store it twice in one session.
    Blocked(BudgetRefusal),
}

/// Which global budget refused a command (see [`Router::budget_refuses`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRefusal {
    /// `session.max_stored_bytes` would be exceeded.
    StoreFull,
}

impl BudgetRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetRefusal::StoreFull => "store_full",
        }
    }
}

impl Router {
    pub(super) fn command(
        &mut self,
        msg: Message,
        client: Option<Arc<str>>,
        create: bool,
        reply: oneshot::Sender<CommandResult>,
    ) {
        if self.share_command(&msg, client.as_ref(), create) {
            // Cluster mode: stored where it belongs when read back from the log.
            self.after_commit(move |ok| {
                let _ = reply.send(if ok {
                    CommandResult::Stored { refused: 0 }
                } else {
                    CommandResult::StoreFailed
                });
            });
            return;
        }
        let msg = Arc::new(msg);
        self.disk_refused = 0;
        let mut result = match client {
            None => self.command_all(&msg),
            Some(id) => self.command_to(&id, &msg, create),
        };
        // A session that could not store it for lack of disk must get it later:
        // the source retries instead of committing (others may see it twice).
        if std::mem::take(&mut self.disk_refused) > 0 {
            result = CommandResult::StoreFailed;
        }
        self.after_commit(move |ok| {
            let _ = reply.send(if ok {
                result
            } else {
                CommandResult::StoreFailed
            });
        });
        self.update_gauges();
    }

    /// Whether a global budget refuses `bytes` more of stored messages.
    /// Checked up front, for all target sessions at once. The place for
    /// further global refusals (e.g. a free-disk watermark).
    pub(super) fn budget_refuses(&self, bytes: u64) -> Option<BudgetRefusal> {
        let max = self.cfg.session.max_stored_bytes;
        // More than the whole budget can never fit: waiting would block the
        // source for ever, so the per-session check decides (store_full drops).
        if bytes == 0 || bytes > max {
            return None;
        }
        (self.stored_bytes.saturating_add(bytes) > max).then_some(BudgetRefusal::StoreFull)
    }

    /// Queues a command in every matching session, or in none if the global
    /// budget cannot take it for all of them.
    fn command_all(&mut self, msg: &Arc<Message>) -> CommandResult {
        // From the trusted backend: not checked against device ACLs.
        let deliveries = self.targets(msg, None, false);
        if let Some(why) = self.budget_refuses(self.stored_cost(msg, &deliveries)) {
            return CommandResult::Blocked(why);
        }
        match self.deliver(msg, deliveries) {
            (PublishOutcome::Delivered, refused) => CommandResult::Stored { refused },
            (PublishOutcome::NoSubscribers, _) => CommandResult::NoSession,
            (PublishOutcome::QuotaExceeded, _) => CommandResult::Rejected,
            (PublishOutcome::StoreFailed | PublishOutcome::DiskLow, _) => {
                CommandResult::StoreFailed
            }
        }
    }

    /// Queues a client-addressed command in that client's session.
    pub(super) fn command_to(
        &mut self,
        id: &Arc<str>,
        msg: &Arc<Message>,
        create: bool,
    ) -> CommandResult {
        if !create && !self.sessions.contains_key(id) {
            return CommandResult::NoSession;
        }
        let stores = match self.sessions.get(id) {
            Some(s) => would_store(s, &self.cfg, msg.qos),
            // A preset session is persistent and offline.
            None => msg.qos > 0 || self.cfg.session.queue_qos0_offline,
        };
        if let Some(why) = self.budget_refuses(if stores { msg.size() as u64 } else { 0 }) {
            return CommandResult::Blocked(why);
        }
        if !self.sessions.contains_key(id) {
            if !self.store.health().accepting() {
                self.metrics.dropped(crate::metrics::DropReason::DiskLow);
                return CommandResult::StoreFailed;
            }
            if self.persistent >= self.cfg.session.max_persistent_sessions {
                self.metrics
                    .dropped(crate::metrics::DropReason::SessionsFull);
                self.metrics
                    .session_refused(crate::metrics::SessionRefusal::Global);
                tracing::warn!(client_id = %id, "persistent session limit reached; preset session not created");
                return CommandResult::Rejected;
            }
            // A preset session: persistent, offline since now, taken over by the
            // device's first CleanSession=0 connection.
            let mut s = Session::new(id.clone());
            // No identity until its client connects (then compiled again).
            s.acl = self.compile_acl(id, None);
            // Never 0 (that would not be persistent): fall back to the 3.1.1 expiry.
            s.expiry_secs = match self.cfg.session.max_session_expiry_secs {
                0 => self.cfg.session.v311_session_expiry_secs,
                n => n,
            };
            s.disconnected_at_ms = Some(now_ms());
            let expiry = std::time::Duration::from_secs(s.expiry_secs.into());
            self.deadlines.schedule(
                &mut s.expiry_deadline,
                id,
                super::deadlines::Kind::SessionExpiry,
                expiry,
            );
            self.sessions.insert(id.clone(), Box::new(s));
            self.persistent += 1;
            self.save_session(id);
            tracing::info!(client_id = %id, "preset session created for a client-addressed command");
        }
        let origin = self.routing_origin;
        let (mut cx, sessions) = self.ctx();
        let Some(s) = sessions.get_mut(id) else {
            return CommandResult::NoSession;
        };
        let d = Delivery {
            msg,
            qos: msg.qos,
            retain: msg.retain,
            sub_ids: Arc::from([]),
            origin,
        };
        if enqueue(s, &mut cx, d) {
            CommandResult::Stored { refused: 0 }
        } else {
            CommandResult::Rejected
        }
    }
}
