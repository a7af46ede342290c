//! Packets from the client after CONNECT, and the answers to them.

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
use tokio::sync::oneshot;

use super::pending::{BridgeSummary, PubWait, Ready};
use super::{Conn, ConnError, Pending};
use crate::acl::Denied;
use crate::bridge::uplink::{Origin, Wait};
use crate::metrics::ProtocolErrorReason as Why;
use crate::metrics::UnackedReason;
use crate::mqtt::codec::{self, Version};
use crate::mqtt::message::{now_ms, Message, MessageProps};
use crate::mqtt::router::{PublishOutcome, RouterMsg, SubRequest};
use crate::mqtt::topic::{parse_shared, valid_filter, valid_topic_name, SubOpts};

impl Conn<'_> {
    pub(super) fn handle(&mut self, packet: p5::Packet) -> Result<(), ConnError> {
        use p5::Packet as P;
        match packet {
            P::Publish(p) => self.on_publish(p)?,
            P::PubAck(a) => self.on_ack(a.pkid),
            P::PubComp(a) => self.on_ack(a.pkid),
            P::PubRec(a) => self.on_pubrec(a.pkid, a.reason),
            P::PubRel(r) => {
                if self.qos2_in.remove(&r.pkid).is_some() {
                    self.incoming_unacked = self.incoming_unacked.saturating_sub(1);
                }
                let (tx, rx) = oneshot::channel();
                self.send(RouterMsg::PubRel {
                    conn_id: self.conn_id,
                    client_id: self.client_id.clone(),
                    pkid: r.pkid,
                    reply: tx,
                })?;
                self.pending.push_back(Pending::Rel { pkid: r.pkid, rx });
            }
            P::Subscribe(s) => self.on_subscribe(s)?,
            P::Unsubscribe(u) => self.on_unsubscribe(u)?,
            P::PingReq(_) => {
                let _ = codec::encode(&P::PingResp(p5::PingResp), self.version, &mut self.out);
            }
            P::Disconnect(d) => self.on_disconnect(d)?,
            P::Connect(..) => {
                return Err(ConnError::protocol(
                    Why::ProtocolError,
                    "second CONNECT".into(),
                ))
            }
            P::Auth(_) => {
                return Err(ConnError::protocol(
                    Why::ProtocolError,
                    "AUTH is not supported".into(),
                ))
            }
            _ => {
                return Err(ConnError::protocol(
                    Why::ProtocolError,
                    "server-to-client packet from client".into(),
                ))
            }
        }
        Ok(())
    }

    /// Queues a message for the router; the run loop sends the outbox in
    /// order (awaiting room, which is the publisher's backpressure).
    fn send(&mut self, msg: RouterMsg) -> Result<(), ConnError> {
        self.outbox.push_back(msg);
        Ok(())
    }

    fn on_publish(&mut self, p: p5::Publish) -> Result<(), ConnError> {
        let qos = codec::qos_u8(p.qos);
        let props = p.properties.unwrap_or_default();
        let topic = self.resolve_topic(&p.topic, props.topic_alias)?;
        if let Err(e) = self.sh.cfg.mqtt.topic_limits().check(&topic) {
            self.sh.metrics.topic_refused(e.reason());
            return Err(ConnError::with_reason(
                Why::TopicLimit,
                format!("PUBLISH topic name: {e}"),
                Reason::TopicNameInvalid,
            ));
        }
        if !valid_topic_name(&topic) {
            return Err(ConnError::with_reason(
                Why::ProtocolError,
                "invalid topic name".into(),
                Reason::TopicNameInvalid,
            ));
        }
        if p.retain && !self.sh.cfg.mqtt.retain_available {
            return Err(ConnError::with_reason(
                Why::ProtocolError,
                "retain not available".into(),
                Reason::RetainNotSupported,
            ));
        }
        if props.payload_format_indicator == Some(1) && std::str::from_utf8(&p.payload).is_err() {
            return Err(ConnError::with_reason(
                Why::Malformed,
                "payload is not UTF-8".into(),
                Reason::PayloadFormatInvalid,
            ));
        }
        if !self.acl.current(&self.sh.acl).may_publish(&topic) {
            self.deny_publish(p.pkid, qos, &topic);
            return Ok(());
        }
        // A QoS 2 PUBLISH resent on this connection before PUBREL is a duplicate.
        let qos2_resent = qos == 2 && self.qos2_in.contains_key(&p.pkid);
        if qos == 2 && !qos2_resent && !self.await_rel(p.pkid)? {
            return Ok(());
        }
        if qos == 1 || (qos == 2 && !qos2_resent) {
            self.incoming_unacked += 1;
            if self.version == Version::V5
                && self.incoming_unacked > self.sh.cfg.mqtt.receive_maximum as usize
            {
                return Err(ConnError::protocol(
                    Why::ReceiveMaximumExceeded,
                    "client exceeded our Receive Maximum".into(),
                ));
            }
        }
        self.sh.metrics.received(qos);
        let msg = Message {
            topic,
            payload: p.payload,
            qos,
            retain: p.retain,
            props: MessageProps {
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data,
                user_properties: props.user_properties,
            },
            expires_at_ms: props
                .message_expiry_interval
                .map(|s| now_ms() + s as u64 * 1000),
            receipt: None,
        };
        // The router de-duplicates QoS 2 for MQTT subscribers; a resend on this
        // connection must not reach the backends twice either. (A resend after
        // a reconnect still can: at least once towards the backends.)
        let bridge = if qos2_resent {
            (Vec::new(), BridgeSummary::default())
        } else {
            self.dispatch_uplink(&msg)
        };
        let (reply, rx) = if qos > 0 {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let qos2_pkid = (qos == 2).then_some(p.pkid);
        self.send(RouterMsg::Publish {
            conn_id: self.conn_id,
            client_id: self.client_id.clone(),
            msg,
            qos2_pkid,
            reply,
        })?;
        if let Some(rx) = rx {
            let (waits, summary) = bridge;
            self.pending.push_back(Pending::Pub(Box::new(PubWait {
                pkid: p.pkid,
                qos,
                rx,
                outcome: None,
                bridge: waits.into_iter().map(|w| (w, None)).collect(),
                summary,
            })));
        }
        Ok(())
    }

    /// A PUBLISH the ACL refuses: never routed, retained or bridged; counted
    /// and logged. 5.0 gets PUBACK/PUBREC 0x87 (which ends a QoS 2 flow),
    /// 3.1.1 (no negative acknowledgement) a normal one; in request order.
    fn deny_publish(&mut self, pkid: u16, qos: u8, topic: &str) {
        self.sh.metrics.received(qos);
        self.sh
            .acl
            .metrics
            .denied(Denied::Publish, &self.client_id, topic);
        if qos > 0 {
            self.pending.push_back(Pending::Refused { pkid, qos });
        }
    }

    /// Hands the message to every matching uplink route: QoS 0 best effort
    /// (dropped and counted when a sink's queue is full), QoS 1/2 in order
    /// through the outbox, with confirmations for the acknowledgement to wait on.
    fn dispatch_uplink(&mut self, msg: &Message) -> (Vec<Wait>, BridgeSummary) {
        if self.sh.uplink.is_empty() {
            return (Vec::new(), BridgeSummary::default());
        }
        let origin = Origin {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            received_at_ms: now_ms(),
        };
        let d = self.sh.uplink.dispatch(msg, &origin);
        let summary = BridgeSummary {
            unresolved: d.unresolved,
            routes: d.waits.len(),
            ..Default::default()
        };
        for (tx, env) in d.sends {
            if env.confirm.is_some() {
                self.sink_outbox.push_back((tx, env));
            } else if let Err(e) = tx.try_send(env) {
                let env = match e {
                    tokio::sync::mpsc::error::TrySendError::Full(env) => env,
                    tokio::sync::mpsc::error::TrySendError::Closed(env) => env,
                };
                env.record.counters.dropped.inc();
                tracing::debug!(route = %env.record.route, client_id = %self.client_id, "QoS 0 message dropped: backend queue full");
            }
        }
        (d.waits, summary)
    }

    /// Applies an incoming 5.0 Topic Alias (3.3.2.3.4).
    fn resolve_topic(&mut self, raw: &[u8], alias: Option<u16>) -> Result<String, ConnError> {
        let topic = std::str::from_utf8(raw).map_err(|_| {
            // Invalid UTF-8 is a malformed packet (MQTT-1.5.4-1), not a bad topic.
            ConnError::protocol(Why::Malformed, "topic is not UTF-8".into())
        })?;
        let Some(alias) = alias else {
            if topic.is_empty() {
                // 5.0 3.3.2.3.4; 3.1.1 MQTT-4.7.3-1 (closed either way).
                return Err(ConnError::protocol(
                    Why::ProtocolError,
                    "empty topic name without a topic alias".into(),
                ));
            }
            return Ok(topic.to_string());
        };
        if alias == 0 || alias > self.sh.cfg.mqtt.topic_alias_maximum {
            return Err(ConnError::protocol(
                Why::TopicAliasInvalid,
                format!("topic alias {alias} out of range"),
            ));
        }
        if topic.is_empty() {
            return self.aliases.get(&alias).cloned().ok_or_else(|| {
                ConnError::protocol(Why::ProtocolError, format!("unknown topic alias {alias}"))
            });
        }
        self.aliases.insert(alias, topic.to_string());
        Ok(topic.to_string())
    }

    fn on_ack(&mut self, pkid: u16) {
        if let Some(seq) = self.inflight.remove(&pkid) {
            self.acked(seq);
        }
    }

    /// PUBREC: the router stores the Released state and then sends the PUBREL
    /// (so a crash cannot turn a released message back into a resend). A 5.0
    /// PUBREC with a failure reason ends the flow: no PUBREL (MQTT 5 4.3.3).
    fn on_pubrec(&mut self, pkid: u16, reason: p5::PubRecReason) {
        let failed = !matches!(
            reason,
            p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers
        );
        if failed {
            self.on_ack(pkid);
            return;
        }
        if let Some(&seq) = self.inflight.get(&pkid) {
            let _ = self.send(RouterMsg::Received {
                conn_id: self.conn_id,
                client_id: self.client_id.clone(),
                seq,
            });
        }
    }

    fn on_subscribe(&mut self, s: p5::Subscribe) -> Result<(), ConnError> {
        if s.filters.is_empty() {
            return Err(ConnError::protocol(
                Why::ProtocolError,
                "SUBSCRIBE without filters".into(),
            ));
        }
        let sub_id = s.properties.as_ref().and_then(|p| p.id).map(|id| id as u32);
        let mut reqs = Vec::with_capacity(s.filters.len());
        let mut invalid = Vec::new();
        let mut denied = Vec::new();
        for (i, f) in s.filters.into_iter().enumerate() {
            let shared = parse_shared(&f.path);
            let ok =
                valid_filter(&f.path) && shared.is_ok() && self.within_limits(&f.path, "SUBSCRIBE");
            // No Local on a shared subscription is a protocol error (MQTT-3.8.3-4); refuse the filter.
            if !ok || (f.nolocal && matches!(shared, Ok(Some(_)))) {
                invalid.push(i);
                continue;
            }
            // A shared subscription is checked on its inner filter.
            let inner = match shared {
                Ok(Some((_, inner))) => inner,
                _ => &f.path,
            };
            if !self.acl.current(&self.sh.acl).may_subscribe(inner) {
                self.sh
                    .acl
                    .metrics
                    .denied(Denied::Subscribe, &self.client_id, &f.path);
                denied.push(i);
                continue;
            }
            let retain_handling = match f.retain_forward_rule {
                p5::RetainForwardRule::OnEverySubscribe => 0,
                p5::RetainForwardRule::OnNewSubscribe => 1,
                p5::RetainForwardRule::Never => 2,
            };
            let opts = SubOpts {
                qos: codec::qos_u8(f.qos),
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                retain_handling,
                subscription_id: sub_id,
            };
            reqs.push((
                i,
                SubRequest {
                    filter: f.path,
                    opts,
                },
            ));
        }
        let (tx, rx) = oneshot::channel();
        let indexes: Vec<usize> = reqs.iter().map(|(i, _)| *i).collect();
        let filters = reqs.into_iter().map(|(_, r)| r).collect();
        self.send(RouterMsg::Subscribe {
            conn_id: self.conn_id,
            client_id: self.client_id.clone(),
            filters,
            reply: tx,
        })?;
        // Re-insert the refused filters' slots when the answer comes (see `answer`).
        self.invalid_filters.push_back((indexes, invalid, denied));
        self.pending.push_back(Pending::Sub { pkid: s.pkid, rx });
        Ok(())
    }

    /// UNSUBSCRIBE: filters that are invalid or over a topic limit cannot be
    /// subscribed, so they are answered 0x8F (5.0) without asking the router.
    fn on_unsubscribe(&mut self, u: p5::Unsubscribe) -> Result<(), ConnError> {
        if u.filters.is_empty() {
            return Err(ConnError::protocol(
                Why::ProtocolError,
                "UNSUBSCRIBE without filters".into(),
            ));
        }
        let mut indexes = Vec::with_capacity(u.filters.len());
        let mut invalid = Vec::new();
        let mut filters = Vec::with_capacity(u.filters.len());
        for (i, f) in u.filters.into_iter().enumerate() {
            let ok = valid_filter(&f)
                && parse_shared(&f).is_ok()
                && self.within_limits(&f, "UNSUBSCRIBE");
            if ok {
                indexes.push(i);
                filters.push(f);
            } else {
                invalid.push(i);
            }
        }
        let (tx, rx) = oneshot::channel();
        let msg = RouterMsg::Unsubscribe {
            conn_id: self.conn_id,
            client_id: self.client_id.clone(),
            filters,
            reply: tx,
        };
        self.send(msg)?;
        // Answers come in request order, so SUBSCRIBE and UNSUBSCRIBE share the queue.
        self.invalid_filters
            .push_back((indexes, invalid, Vec::new()));
        self.pending.push_back(Pending::Unsub { pkid: u.pkid, rx });
        Ok(())
    }

    /// Whether a topic filter is within the topic limits; a refusal is
    /// counted and logged (debug: the client gets a reason code, not a close).
    fn within_limits(&self, filter: &str, packet: &'static str) -> bool {
        match self.sh.cfg.mqtt.topic_limits().check(filter) {
            Ok(()) => true,
            Err(e) => {
                self.sh.metrics.topic_refused(e.reason());
                tracing::debug!(client_id = %self.client_id, packet, error = %e, "topic filter refused");
                false
            }
        }
    }

    fn on_disconnect(&mut self, d: p5::Disconnect) -> Result<(), ConnError> {
        let new_expiry = d.properties.and_then(|p| p.session_expiry_interval);
        if new_expiry.is_some_and(|e| e > 0) && self.expiry_secs == 0 {
            return Err(ConnError::protocol(
                Why::ProtocolError,
                "session expiry set on DISCONNECT after 0".into(),
            ));
        }
        // Only a normal disconnection (0x00) deletes the will (MQTT 5 3.1.2.5).
        let with_will = d.reason_code != Reason::NormalDisconnection;
        self.disconnect = Some((with_will, new_expiry));
        Ok(())
    }

    /// Answers a router reply in the order the requests arrived.
    pub(super) fn answer(&mut self, r: Ready) -> Result<(), ConnError> {
        use p5::Packet as P;
        let packet = match r {
            Ready::Pub {
                pkid,
                qos,
                outcome,
                bridge,
            } => self.pub_reply(pkid, qos, outcome, bridge)?,
            Ready::Rel(pkid, known) => P::PubComp(p5::PubComp {
                pkid,
                // 5.0: 0x92 for a PUBREL of an id that was not awaiting one.
                reason: if known {
                    p5::PubCompReason::Success
                } else {
                    p5::PubCompReason::PacketIdentifierNotFound
                },
                properties: None,
            }),
            Ready::Refused { pkid, qos } => self.refused_reply(pkid, qos),
            Ready::Sub(pkid, results) => {
                let results = results.ok_or(ConnError::ShuttingDown)?;
                let (indexes, invalid, denied) =
                    self.invalid_filters.pop_front().unwrap_or_default();
                let mut codes = vec![
                    p5::SubscribeReasonCode::TopicFilterInvalid;
                    indexes.len() + invalid.len() + denied.len()
                ];
                for i in denied {
                    codes[i] = p5::SubscribeReasonCode::NotAuthorized;
                }
                for (i, r) in indexes.into_iter().zip(results) {
                    codes[i] = match r {
                        Ok(q) => p5::SubscribeReasonCode::Success(codec::qos_from(q)),
                        Err(NOT_AUTHORIZED) => p5::SubscribeReasonCode::NotAuthorized,
                        Err(_) => p5::SubscribeReasonCode::QuotaExceeded,
                    };
                }
                P::SubAck(p5::SubAck {
                    pkid,
                    return_codes: codes,
                    properties: None,
                })
            }
            Ready::Unsub(pkid, results) => {
                let results = results.ok_or(ConnError::ShuttingDown)?;
                let (indexes, invalid, _) = self.invalid_filters.pop_front().unwrap_or_default();
                let mut reasons =
                    vec![p5::UnsubAckReason::TopicFilterInvalid; indexes.len() + invalid.len()];
                for (i, existed) in indexes.into_iter().zip(results) {
                    reasons[i] = if existed {
                        p5::UnsubAckReason::Success
                    } else {
                        p5::UnsubAckReason::NoSubscriptionExisted
                    };
                }
                P::UnsubAck(p5::UnsubAck {
                    pkid,
                    reasons,
                    properties: None,
                })
            }
        };
        let _ = codec::encode(&packet, self.version, &mut self.out);
        Ok(())
    }
}

/// 5.0 reason code the router answers a filter the ACL refuses with.
const NOT_AUTHORIZED: u8 = 0x87;

impl Conn<'_> {
    /// The answer to a PUBLISH the ACL refused (see `deny_publish`).
    fn refused_reply(&self, pkid: u16, qos: u8) -> p5::Packet {
        // 3.1.1 cannot refuse: the codec writes any reason as a plain ack.
        if qos == 1 {
            p5::Packet::PubAck(p5::PubAck {
                pkid,
                reason: p5::PubAckReason::NotAuthorized,
                properties: None,
            })
        } else {
            p5::Packet::PubRec(p5::PubRec {
                pkid,
                reason: p5::PubRecReason::NotAuthorized,
                properties: None,
            })
        }
    }

    /// The PUBACK/PUBREC for a PUBLISH once the router and every uplink route
    /// answered. What was not stored or not confirmed is never acknowledged
    /// as a success.
    fn pub_reply(
        &mut self,
        pkid: u16,
        qos: u8,
        outcome: Option<PublishOutcome>,
        bridge: BridgeSummary,
    ) -> Result<p5::Packet, ConnError> {
        let outcome = outcome.ok_or(ConnError::ShuttingDown)?;
        let v5 = self.version == Version::V5;
        let disk_low = outcome == PublishOutcome::DiskLow;
        if outcome == PublishOutcome::StoreFailed || ((bridge.gave_up > 0 || disk_low) && !v5) {
            // 3.1.1 cannot say "failed": close without acknowledging, the device resends.
            let why = if bridge.gave_up > 0 {
                UnackedReason::BackendGaveUp
            } else if disk_low {
                UnackedReason::DiskLow
            } else {
                UnackedReason::StoreFailure
            };
            return Err(ConnError::Unacknowledged(why));
        }
        // 5.0 reason code: 0x80 gave up, 0x83 refused by a backend or a route's
        // template unresolved, then what the router said.
        let code: u8 = if disk_low {
            0x97
        } else if bridge.gave_up > 0 {
            0x80
        } else if bridge.rejected > 0 || bridge.unresolved {
            0x83
        } else {
            match outcome {
                PublishOutcome::NoSubscribers if bridge.routes == 0 => 0x10,
                PublishOutcome::QuotaExceeded if bridge.routes == 0 => 0x97,
                _ => 0x00,
            }
        };
        let code = if v5 { code } else { 0 };
        if qos == 1 {
            self.incoming_unacked = self.incoming_unacked.saturating_sub(1);
            let reason = match code {
                0x10 => p5::PubAckReason::NoMatchingSubscribers,
                0x80 => p5::PubAckReason::UnspecifiedError,
                0x83 => p5::PubAckReason::ImplementationSpecificError,
                0x97 => p5::PubAckReason::QuotaExceeded,
                _ => p5::PubAckReason::Success,
            };
            return Ok(p5::Packet::PubAck(p5::PubAck {
                pkid,
                reason,
                properties: None,
            }));
        }
        if code >= 0x80 {
            // A failed PUBREC ends the QoS 2 flow: no PUBREL will come for this id.
            if self.qos2_in.remove(&pkid).is_some() {
                self.incoming_unacked = self.incoming_unacked.saturating_sub(1);
            }
            let (tx, _rx) = oneshot::channel();
            self.send(RouterMsg::PubRel {
                conn_id: self.conn_id,
                client_id: self.client_id.clone(),
                pkid,
                reply: tx,
            })?;
        }
        let reason = match code {
            0x10 => p5::PubRecReason::NoMatchingSubscribers,
            0x80 => p5::PubRecReason::UnspecifiedError,
            0x83 => p5::PubRecReason::ImplementationSpecificError,
            0x97 => p5::PubRecReason::QuotaExceeded,
            _ => p5::PubRecReason::Success,
        };
        Ok(p5::Packet::PubRec(p5::PubRec {
            pkid,
            reason,
            properties: None,
        }))
    }
}
