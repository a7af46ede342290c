//! The ACL in the router: each session's compiled rules, which of its
//! subscriptions they cover, and the checks on deliveries, retained
//! messages and wills. Downlink commands are not checked (they come from
//! the trusted backend).

use std::sync::Arc;

use super::Router;
use crate::acl::{ClientAcl, Denied};
use crate::mqtt::topic::parse_shared;

/// `(group, filter)` of a subscription as sent (`$share/{group}/{filter}`).
pub(super) fn split_shared(f: &str) -> (Option<&str>, &str) {
    match parse_shared(f) {
        Ok(Some((g, inner))) => (Some(g), inner),
        _ => (None, f),
    }
}

/// 5.0 reason code: not authorized.
pub(super) const NOT_AUTHORIZED: u8 = 0x87;

impl Router {
    /// `client`'s ACL under the current rules.
    pub(in crate::mqtt::router) fn compile_acl(
        &self,
        client: &Arc<str>,
        username: Option<&Arc<str>>,
    ) -> Arc<ClientAcl> {
        Arc::new(self.acl.rules().compile(client, username))
    }

    /// Gives a session its ACL: its wills take it, and each of its
    /// subscriptions is marked covered or not (then checked per delivery).
    pub(in crate::mqtt::router) fn set_acl(&mut self, client: &Arc<str>, acl: Arc<ClientAcl>) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        for w in s.will.iter_mut().chain(s.pending_will.iter_mut()) {
            w.acl = Some(acl.clone());
        }
        let mut uncovered = 0;
        for f in s.subs.keys() {
            let (group, filter) = split_shared(f);
            if let Some(e) = self.tree.get_mut(filter, client, group) {
                e.covered = acl.may_subscribe(filter);
                uncovered += usize::from(!e.covered);
            }
        }
        if uncovered > 0 {
            tracing::debug!(client_id = %client, uncovered, "subscriptions not covered by the ACL: each delivery through them is checked");
        }
        s.acl = acl;
    }

    /// The rules changed (or were first set): every session's ACL is
    /// compiled again for the identity it had; a session restored from the
    /// store has its stored owning identity.
    pub(super) fn acl_reloaded(&mut self) {
        let ids: Vec<(Arc<str>, Option<Arc<str>>)> = self
            .sessions
            .iter()
            .map(|(id, s)| {
                let user = s.acl.username().or(s.identity.as_ref());
                (id.clone(), user.cloned())
            })
            .collect();
        for (id, user) in ids {
            let acl = self.compile_acl(&id, user.as_ref());
            self.set_acl(&id, acl);
        }
    }

    /// Whether `client` may receive `topic` (for subscriptions not covered).
    pub(super) fn may_deliver(&self, client: &Arc<str>, topic: &str) -> bool {
        let ok = self
            .sessions
            .get(client)
            .is_none_or(|s| s.acl.may_read(topic));
        if !ok {
            self.acl.metrics.denied(Denied::Deliver, client, topic);
        }
        ok
    }

    /// Whether `client` may subscribe to `filter` (as sent); a refusal is
    /// counted. The connection checked it already; this catches a reload
    /// in between.
    pub(super) fn may_subscribe(&self, client: &Arc<str>, filter: &str) -> bool {
        let (_, inner) = split_shared(filter);
        let ok = self
            .sessions
            .get(client)
            .is_none_or(|s| s.acl.may_subscribe(inner));
        if !ok {
            self.acl.metrics.denied(Denied::Subscribe, client, filter);
        }
        ok
    }

    /// Whether the retained message on `topic` may go to `client`.
    pub(super) fn may_get_retained(&self, acl: &ClientAcl, topic: &str) -> bool {
        let ok = acl.may_read(topic);
        if !ok {
            self.acl
                .metrics
                .denied(Denied::Retained, acl.client_id(), topic);
        }
        ok
    }

    /// Whether a will may be published (its publisher's current rules).
    pub(super) fn may_publish_will(&self, w: &super::Will) -> bool {
        let Some(acl) = &w.acl else {
            return true;
        };
        let ok = acl.may_publish(&w.message.topic);
        if !ok {
            self.acl
                .metrics
                .denied(Denied::Will, acl.client_id(), &w.message.topic);
        }
        ok
    }
}
