//! Incoming QoS 2 packet ids awaiting PUBREL: at most
//! `mqtt.max_awaiting_rel` per client, each forgotten after
//! `mqtt.awaiting_rel_timeout_secs`. The router keeps the same ids in the
//! session (stored for a persistent one) and only learns ids admitted here,
//! so the cap bounds both.

use std::sync::OnceLock;

use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::pending::{Pending, PubWait};
use super::{Conn, ConnError};
use crate::metrics::ProtocolErrorReason as Why;
use crate::mqtt::admission::{LogLimiter, WARN_EVERY};
use crate::mqtt::codec::Version;
use crate::mqtt::router::{PublishOutcome, RouterMsg};

/// One warning per period for all clients: a flood costs counters, not lines.
fn warn_limiter() -> &'static LogLimiter {
    static L: OnceLock<LogLimiter> = OnceLock::new();
    L.get_or_init(|| LogLimiter::new(WARN_EVERY))
}

impl Conn<'_> {
    /// Admits a new incoming QoS 2 id (`Ok(true)`). Over the cap a 5.0
    /// client is answered PUBREC 0x97 in turn (`Ok(false)`: not routed), a
    /// 3.1.1 client, which cannot be told, is disconnected.
    pub(super) fn await_rel(&mut self, pkid: u16) -> Result<bool, ConnError> {
        let max = self.sh.cfg.mqtt.max_awaiting_rel;
        if self.qos2_in.len() < max {
            let forget_at = Instant::now() + self.sh.cfg.mqtt.awaiting_rel_timeout();
            self.qos2_in.insert(pkid, forget_at);
            return Ok(true);
        }
        self.sh.metrics.awaiting_rel_refused.inc();
        if let Some(suppressed) = warn_limiter().allow() {
            tracing::warn!(client_id = %self.client_id, max, suppressed, "QoS 2 PUBLISH refused: too many awaiting PUBREL (mqtt.max_awaiting_rel)");
        }
        if self.version == Version::V311 {
            return Err(ConnError::with_reason(
                Why::AwaitingRelExceeded,
                format!("more than {max} QoS 2 messages awaiting PUBREL"),
                Reason::QuotaExceeded,
            ));
        }
        // Answered in order with the other acks (MQTT-4.6.0-2), already decided.
        let (_tx, rx) = oneshot::channel();
        self.pending.push_back(Pending::Pub(Box::new(PubWait {
            pkid,
            qos: 2,
            rx,
            outcome: Some(Some(PublishOutcome::QuotaExceeded)),
            bridge: Vec::new(),
            summary: Default::default(),
        })));
        Ok(false)
    }

    /// Forgets incoming QoS 2 ids whose PUBREL did not come in time, here
    /// and in the session.
    pub(super) fn forget_expired_qos2(&mut self, now: Instant) {
        let expired: Vec<u16> = self
            .qos2_in
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for pkid in expired {
            self.qos2_in.remove(&pkid);
            self.incoming_unacked = self.incoming_unacked.saturating_sub(1);
            self.sh.metrics.awaiting_rel_expired.inc();
            tracing::debug!(client_id = %self.client_id, pkid, "QoS 2 packet id forgotten: no PUBREL in time");
            let (tx, _rx) = oneshot::channel();
            self.outbox.push_back(RouterMsg::PubRel {
                conn_id: self.conn_id,
                client_id: self.client_id.clone(),
                pkid,
                reply: tx,
            });
        }
    }
}
