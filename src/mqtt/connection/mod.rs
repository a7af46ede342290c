//! One task per network connection: CONNECT handshake, then a loop that
//! reads and answers the client's packets, writes deliveries from the router
//! within the inflight window, and watches keepalive.

mod aliases;
mod handshake;
mod inbound;
mod pending;

pub(crate) use handshake::make_will;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::{Metrics, ProtocolErrorReason as Why};
use crate::mqtt::codec::{self, DecodeError, OutPublish, Version};
use crate::mqtt::message::now_ms;
use crate::mqtt::router::{pkid_of, Kick, Outbound, RouterMsg};
use pending::{next_reply, Pending};

/// What every connection task shares.
pub struct Shared {
    pub cfg: Arc<Config>,
    /// Uplink routes to the bridge's backends.
    pub uplink: crate::bridge::uplink::Uplink,
    pub metrics: Arc<Metrics>,
    pub router: mpsc::Sender<RouterMsg>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{why:?}: {detail}")]
    Protocol {
        why: Why,
        detail: String,
        reason: Reason,
    },
    #[error("connect refused: {0}")]
    Refused(String),
    #[error("server shutting down")]
    ShuttingDown,
}

impl ConnError {
    fn protocol(why: Why, detail: String) -> ConnError {
        let reason = match why {
            Why::Malformed => Reason::MalformedPacket,
            Why::PacketTooLarge => Reason::PacketTooLarge,
            Why::KeepaliveTimeout => Reason::KeepAliveTimeout,
            Why::ReceiveMaximumExceeded => Reason::ReceiveMaximumExceeded,
            Why::TopicAliasInvalid => Reason::TopicAliasInvalid,
            _ => Reason::ProtocolError,
        };
        ConnError::Protocol {
            why,
            detail,
            reason,
        }
    }

    fn with_reason(why: Why, detail: String, reason: Reason) -> ConnError {
        ConnError::Protocol {
            why,
            detail,
            reason,
        }
    }

    fn decode(e: DecodeError) -> ConnError {
        match e {
            DecodeError::TooLarge { .. } => ConnError::protocol(Why::PacketTooLarge, e.to_string()),
            DecodeError::Protocol(_) => ConnError::protocol(Why::ProtocolError, e.to_string()),
            DecodeError::UnsupportedProtocol(_) => {
                ConnError::protocol(Why::UnsupportedProtocol, e.to_string())
            }
            DecodeError::Malformed(_) => ConnError::protocol(Why::Malformed, e.to_string()),
        }
    }
}

pub(super) async fn write_raw(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await
}

/// State of one attached connection.
pub(crate) struct Conn<'a> {
    sh: &'a Shared,
    conn_id: u64,
    version: Version,
    client_id: Arc<str>,
    expiry_secs: u32,
    client_max_packet: u32,
    out: BytesMut,
    pending: VecDeque<Pending>,
    /// Deliveries awaiting the client's PUBACK/PUBREC/PUBCOMP, by packet id.
    inflight: HashMap<u16, u64>,
    /// Incoming QoS 1/2 PUBLISHes not yet fully acknowledged (5.0 Receive Maximum).
    incoming_unacked: usize,
    /// Incoming topic aliases (5.0).
    aliases: HashMap<u16, String>,
    /// Outgoing topic aliases (5.0, when the client allows them).
    out_aliases: aliases::OutAliases,
    /// Packet ids of incoming QoS 2 PUBLISHes awaiting PUBREL (for the count above).
    qos2_in: HashSet<u16>,
    /// Per pending SUBSCRIBE: positions of the accepted and of the refused filters.
    invalid_filters: VecDeque<(Vec<usize>, Vec<usize>)>,
    /// Messages for the router produced while handling packets (sent in order).
    outbox: Vec<RouterMsg>,
    /// QoS 1/2 envelopes for uplink sinks, sent in order after `outbox`.
    sink_outbox: Vec<(
        mpsc::Sender<crate::bridge::Envelope>,
        crate::bridge::Envelope,
    )>,
    username: Option<String>,
    /// Set by a DISCONNECT from the client.
    disconnect: Option<(bool, Option<u32>)>,
}

/// Serves one TCP connection until it closes.
pub async fn serve(mut stream: TcpStream, sh: Arc<Shared>, conn_id: u64) {
    let peer = stream.peer_addr().ok();
    let mut buf = BytesMut::with_capacity(4096);
    let attached = match handshake::handshake(&mut stream, &mut buf, &sh, conn_id).await {
        Ok(a) => a,
        Err(e) => {
            report(&sh, &e, "-", peer);
            sh.metrics
                .connection(crate::metrics::ConnectionResult::Rejected);
            return;
        }
    };
    sh.metrics
        .connection(crate::metrics::ConnectionResult::Accepted);
    sh.metrics.connections_active.inc();
    let mut c = Conn {
        sh: &sh,
        conn_id,
        version: attached.version,
        client_id: attached.client_id.clone(),
        expiry_secs: attached.expiry_secs,
        client_max_packet: attached.client_max_packet,
        out: BytesMut::with_capacity(4096),
        pending: VecDeque::new(),
        inflight: HashMap::new(),
        // QoS 2 flows of the session's earlier connection still count
        // (Receive Maximum) and their re-sends are recognised as duplicates.
        incoming_unacked: attached.qos2_pending.len(),
        aliases: HashMap::new(),
        out_aliases: aliases::OutAliases::new(
            attached.client_topic_alias_max,
            sh.cfg.mqtt.max_outgoing_topic_aliases,
        ),
        qos2_in: attached.qos2_pending.iter().copied().collect(),
        outbox: Vec::new(),
        sink_outbox: Vec::new(),
        username: attached.username.clone(),
        invalid_filters: VecDeque::new(),
        disconnect: None,
    };
    let result = c.run(&mut stream, &mut buf, attached).await;
    let (publish_will, new_expiry) = match (&result, c.disconnect) {
        (Ok(()), Some(d)) => d,
        (Err(ConnError::ShuttingDown), _) => (false, None),
        _ => (true, None),
    };
    if let Err(e) = &result {
        report(&sh, e, &c.client_id, peer);
        if let (ConnError::Protocol { reason, detail, .. }, Version::V5) = (e, c.version) {
            c.send_disconnect(*reason, Some(detail));
        }
    }
    // Acks decoded before the failure still count.
    let _ = c.flush_outbox().await;
    let _ = stream.write_all(&c.out).await;
    let _ = stream.shutdown().await;
    sh.metrics.connections_active.dec();
    let msg = RouterMsg::Disconnect {
        conn_id,
        client_id: c.client_id.clone(),
        publish_will,
        new_expiry,
    };
    let _ = sh.router.send(msg).await;
}

/// One log line and one counter per failed connection.
fn report(sh: &Shared, e: &ConnError, client_id: &str, peer: Option<std::net::SocketAddr>) {
    match e {
        ConnError::Protocol { why, detail, .. } => {
            sh.metrics.protocol_error(*why);
            tracing::warn!(client_id, ?peer, reason = ?why, %detail, "closing connection: protocol violation");
        }
        ConnError::Refused(why) => tracing::warn!(client_id, ?peer, %why, "connection refused"),
        ConnError::Closed | ConnError::ShuttingDown => {}
        ConnError::Io(err) => tracing::debug!(client_id, ?peer, %err, "connection i/o error"),
    }
}

impl Conn<'_> {
    async fn run(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        a: handshake::Attached,
    ) -> Result<(), ConnError> {
        let handshake::Attached {
            mut rx,
            mut rx0,
            mut kick,
            keep_alive,
            ..
        } = a;
        // Keepalive: the client must send something within 1.5x the interval (MQTT-3.1.2-24).
        let grace = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
        let far = Duration::from_secs(86400 * 365);
        let mut deadline = Instant::now() + grace.unwrap_or(far);
        // Anything that arrived with the CONNECT.
        self.process(buf)?;
        self.flush_outbox().await?;
        loop {
            if self.disconnect.is_some() {
                return Ok(());
            }
            // Bound the replies a client can have us owe: 3.1.1 has no Receive Maximum,
            // so stop reading instead; a 5.0 client is held to it in `on_publish`
            // (read on, so that a violation is seen and answered with 0x93).
            let limit = self.sh.cfg.mqtt.receive_maximum as usize;
            let may_read = match self.version {
                Version::V311 => self.pending.len() < limit,
                Version::V5 => self.pending.len() < limit * 2,
            };
            if !may_read {
                // The client's PINGREQs are not being read: keepalive cannot be judged.
                deadline = Instant::now() + grace.unwrap_or(far);
            }
            tokio::select! {
                biased;
                k = &mut kick => {
                    let reason = match k {
                        Ok(Kick::TakenOver) => Reason::SessionTakenOver,
                        _ => Reason::ServerShuttingDown,
                    };
                    self.send_disconnect(reason, None);
                    return Err(ConnError::ShuttingDown);
                }
                r = next_reply(&mut self.pending) => {
                    self.pending.pop_front();
                    self.answer(r)?;
                }
                Some(o) = rx.recv() => self.deliver(o),
                Some(o) = rx0.recv() => self.deliver(o),
                n = stream.read_buf(buf), if may_read => {
                    if n? == 0 {
                        return Err(ConnError::Closed);
                    }
                    deadline = Instant::now() + grace.unwrap_or(far);
                    self.process(buf)?;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ConnError::protocol(Why::KeepaliveTimeout, format!("no packet within 1.5 x {keep_alive} s")));
                }
            }
            self.flush_outbox().await?;
            if !self.out.is_empty() {
                stream.write_all(&self.out).await?;
                self.sh.metrics.bytes_sent.inc_by(self.out.len() as u64);
                self.out.clear();
            }
        }
    }

    /// Decodes and handles every complete packet in `buf`.
    fn process(&mut self, buf: &mut BytesMut) -> Result<(), ConnError> {
        let max = self.sh.cfg.mqtt.max_packet_size;
        let before = buf.len();
        while let Some(packet) = codec::decode(buf, self.version, max).map_err(ConnError::decode)? {
            self.handle(packet)?;
            if self.disconnect.is_some() {
                break;
            }
        }
        self.sh
            .metrics
            .bytes_received
            .inc_by((before - buf.len()) as u64);
        Ok(())
    }

    /// Queues a 5.0 DISCONNECT (nothing for 3.1.1) with an optional reason string.
    fn send_disconnect(&mut self, reason: Reason, why: Option<&str>) {
        if self.version == Version::V5 {
            codec::encode_disconnect(reason as u8, why, &mut self.out);
        }
    }

    /// Writes one delivery from the router.
    fn deliver(&mut self, o: Outbound) {
        match o {
            Outbound::PubRel { seq } => {
                let pkid = pkid_of(seq);
                self.inflight.insert(pkid, seq);
                let rel = p5::PubRel {
                    pkid,
                    reason: p5::PubRelReason::Success,
                    properties: None,
                };
                let _ = codec::encode(&p5::Packet::PubRel(rel), self.version, &mut self.out);
            }
            Outbound::Publish {
                seq,
                msg,
                qos,
                retain,
                dup,
                sub_ids,
            } => {
                let pkid = if qos > 0 { pkid_of(seq) } else { 0 };
                let alias = self.out_aliases.lookup(&msg.topic);
                let topic_alias = match alias {
                    aliases::AliasUse::None => None,
                    aliases::AliasUse::Assign(a) => Some((a, true)),
                    aliases::AliasUse::Known(a) => Some((a, false)),
                };
                let p = OutPublish {
                    msg: &msg,
                    qos,
                    retain,
                    dup,
                    pkid,
                    subscription_ids: &sub_ids,
                    now_ms: now_ms(),
                    topic_alias,
                };
                let written =
                    codec::encode_publish(&p, self.version, self.client_max_packet, &mut self.out);
                if written {
                    self.out_aliases.sent(&msg.topic, alias);
                }
                if !written {
                    // Over the client's Maximum Packet Size: discarded as if delivered (5.0 3.1.2.11).
                    self.sh
                        .metrics
                        .dropped(crate::metrics::DropReason::QueueFull);
                    tracing::debug!(client_id = %self.client_id, "message larger than client's maximum packet size discarded");
                }
                if written {
                    self.sh.metrics.sent(qos);
                }
                if qos > 0 && written {
                    self.inflight.insert(pkid, seq);
                } else if seq > 0 {
                    // A queued QoS 0 entry (or a discarded one) is done once written.
                    self.acked(seq);
                }
            }
        }
    }

    fn acked(&mut self, seq: u64) {
        let msg = RouterMsg::Acked {
            conn_id: self.conn_id,
            client_id: self.client_id.clone(),
            seq,
        };
        self.outbox.push(msg);
    }

    /// Sends what the packets just handled produced for the router, in order.
    async fn flush_outbox(&mut self) -> Result<(), ConnError> {
        for msg in self.outbox.drain(..) {
            self.sh
                .router
                .send(msg)
                .await
                .map_err(|_| ConnError::ShuttingDown)?;
        }
        // A full sink queue makes this wait: the device is slowed, not lied to.
        for (tx, env) in self.sink_outbox.drain(..) {
            if let Err(e) = tx.send(env).await {
                if let Some(c) = e.0.confirm {
                    let _ = c.send(Err(crate::bridge::SinkError::Closed));
                }
            }
        }
        Ok(())
    }
}
