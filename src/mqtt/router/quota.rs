//! Limits on persistent sessions: global, per user name, and per IP address
//! for clients without a user name, so that no single client identity can
//! take every session slot.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::{Owner, Router};
use crate::metrics::{DropReason, SessionRefusal};

impl Router {
    /// Which limit, if any, refuses a new persistent session for `owner`.
    pub(super) fn session_refusal(&self, owner: Option<&Owner>) -> Option<SessionRefusal> {
        let s = &self.cfg.session;
        if self.persistent >= s.max_persistent_sessions {
            return Some(SessionRefusal::Global);
        }
        let (limit, why) = match owner? {
            Owner::User(_) => (s.max_persistent_sessions_per_user, SessionRefusal::PerUser),
            Owner::Ip(_) => (s.max_persistent_sessions_per_ip, SessionRefusal::PerIp),
        };
        let held = owner.and_then(|o| self.owners.get(o)).copied().unwrap_or(0);
        (limit > 0 && held >= limit).then_some(why)
    }

    /// Counts and logs (rate-limited) a refused persistent session.
    pub(super) fn refuse_session(
        &self,
        client: &Arc<str>,
        owner: Option<&Owner>,
        why: SessionRefusal,
    ) {
        self.metrics.session_refused(why);
        if why == SessionRefusal::Global {
            // Counted here too since before the per-user/IP limits existed.
            self.metrics.dropped(DropReason::SessionsFull);
        }
        static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
        if super::warn_allowed(&LAST_WARN_MS) {
            tracing::warn!(client_id = %client, ?owner, reason = why.as_str(), "persistent session limit reached; connection refused (see mqbridge_session_refused_total; further refusals this second at debug level)");
        } else {
            tracing::debug!(client_id = %client, ?owner, reason = why.as_str(), "persistent session refused");
        }
    }

    /// Makes `owner` the one `client`'s session counts against (None: it no
    /// longer counts, e.g. it is not persistent any more).
    pub(super) fn set_owner(&mut self, client: &Arc<str>, owner: Option<Owner>) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let owner = owner.filter(|_| s.persistent());
        if s.owner == owner {
            return;
        }
        let old = std::mem::replace(&mut s.owner, owner.clone());
        if let Some(o) = old {
            self.owner_left(&o);
        }
        if let Some(o) = owner {
            *self.owners.entry(o).or_default() += 1;
        }
    }

    /// A session no longer counts against `owner`.
    pub(super) fn owner_left(&mut self, owner: &Owner) {
        if let Some(n) = self.owners.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owners.remove(owner);
            }
        }
    }
}
