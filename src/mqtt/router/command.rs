//! Downlink commands from a backend: into every matching session, or into
//! one client's session (creating a preset session when the route allows).
//! The reply is sent once the command is durably stored wherever it was
//! queued, so the source may commit/ack it then and only then.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::queue::{enqueue, Delivery};
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
}

impl Router {
    pub(super) fn command(
        &mut self,
        msg: Message,
        client: Option<Arc<str>>,
        create: bool,
        reply: oneshot::Sender<CommandResult>,
    ) {
        let msg = Arc::new(msg);
        let result = match client {
            None => match self.route_counted(msg, None) {
                (PublishOutcome::Delivered, refused) => CommandResult::Stored { refused },
                (PublishOutcome::NoSubscribers, _) => CommandResult::NoSession,
                (PublishOutcome::QuotaExceeded, _) => CommandResult::Rejected,
                (PublishOutcome::StoreFailed, _) => CommandResult::StoreFailed,
            },
            Some(id) => self.command_to(&id, &msg, create),
        };
        self.after_commit(move |ok| {
            let _ = reply.send(if ok {
                result
            } else {
                CommandResult::StoreFailed
            });
        });
        self.update_gauges();
    }

    /// Queues a client-addressed command in that client's session.
    fn command_to(&mut self, id: &Arc<str>, msg: &Arc<Message>, create: bool) -> CommandResult {
        if !self.sessions.contains_key(id) {
            if !create {
                return CommandResult::NoSession;
            }
            if self.persistent >= self.cfg.session.max_persistent_sessions {
                self.metrics
                    .dropped(crate::metrics::DropReason::SessionsFull);
                tracing::warn!(client_id = %id, "persistent session limit reached; preset session not created");
                return CommandResult::Rejected;
            }
            // A preset session: persistent, offline since now, taken over by the
            // device's first CleanSession=0 connection.
            let mut s = Session::new(id.clone());
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
            self.sessions.insert(id.clone(), s);
            self.persistent += 1;
            self.save_session(id);
            tracing::info!(client_id = %id, "preset session created for a client-addressed command");
        }
        let (mut cx, sessions) = self.ctx();
        let Some(s) = sessions.get_mut(id) else {
            return CommandResult::NoSession;
        };
        let d = Delivery {
            msg,
            qos: msg.qos,
            retain: msg.retain,
            sub_ids: Arc::from([]),
        };
        if enqueue(s, &mut cx, d) {
            CommandResult::Stored { refused: 0 }
        } else {
            CommandResult::Rejected
        }
    }
}
