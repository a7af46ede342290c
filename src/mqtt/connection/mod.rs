//! One task per network connection: CONNECT handshake, then a loop that
//! reads and answers the client's packets, writes deliveries from the router
//! within the inflight window, and watches keepalive.
//!
//! Reading, writing, takeover and every timer are branches of one `select!`,
//! so a client that stops reading cannot keep its task from seeing a
//! takeover, the shutdown or its send timeout.

mod aliases;
mod awaiting_rel;
mod handshake;
mod identify;
mod inbound;
mod keepalive;
mod outbox;
mod pending;
mod timers;

pub(crate) use handshake::make_will;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Validated;
use crate::metrics::{Metrics, ProtocolErrorReason as Why};
use crate::mqtt::admission::{LogLimiter, WARN_EVERY};
use crate::mqtt::codec::{self, DecodeError, OutPublish, Version};
use crate::mqtt::message::now_ms;
use crate::mqtt::router::{Kick, Outbound, RouterMsg};
use crate::mqtt::transport::{ConnCtx, ReadSide, Transport, WriteSide};
use pending::{next_reply, Pending};
use timers::Timers;

/// What every connection task shares.
pub struct Shared {
    pub cfg: Arc<Validated>,
    /// Uplink routes to the bridge's backends.
    pub uplink: crate::bridge::uplink::Uplink,
    pub metrics: Arc<Metrics>,
    pub router: mpsc::Sender<RouterMsg>,
    /// Connection ids, unique across listeners: the router tells a stale
    /// connection from the current one by them.
    pub next_conn_id: AtomicU64,
    /// The live ACL rules; each connection compiles its own at CONNECT.
    pub acl: Arc<crate::acl::Acl>,
    /// The authentication chain (`[auth]`).
    pub auth: Arc<crate::auth::Auth>,
    /// Cluster mode: read the cluster's state before attaching, redirect
    /// clients while draining.
    pub cluster: Option<crate::cluster::Gate>,
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
    /// Refused by the ACL (the will topic); logged and counted where decided.
    #[error("connect refused by the ACL")]
    Denied,
    #[error("server shutting down")]
    ShuttingDown,
    /// Refused by authentication (already counted and logged by `auth`).
    #[error("not authenticated")]
    Unauthenticated,
    /// A 3.1.1 PUBLISH that could not be acknowledged (the backend or the
    /// store failed it): the connection is closed so the device sends it
    /// again. Not the client's fault: counted apart from protocol errors.
    #[error("closed unacknowledged: {}", .0.as_str())]
    Unacknowledged(crate::metrics::UnackedReason),
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

    /// A read error; a WebSocket violation is a protocol error.
    fn read(e: std::io::Error) -> ConnError {
        use crate::mqtt::transport::ws::Violation;
        let Some(v) = e.get_ref().and_then(|i| i.downcast_ref::<Violation>()) else {
            return ConnError::Io(e);
        };
        let why = match v {
            Violation::Text => Why::WebsocketText,
            Violation::TooLarge(_) => Why::PacketTooLarge,
            Violation::Protocol(_) => Why::ProtocolError,
        };
        ConnError::protocol(why, v.to_string())
    }

    fn decode(e: DecodeError) -> ConnError {
        match e {
            DecodeError::TooLarge { .. } => ConnError::protocol(Why::PacketTooLarge, e.to_string()),
            DecodeError::Protocol(_) => ConnError::protocol(Why::ProtocolError, e.to_string()),
            DecodeError::UnsupportedProtocol(_) => {
                ConnError::protocol(Why::UnsupportedProtocol, e.to_string())
            }
            DecodeError::Malformed(_) => ConnError::protocol(Why::Malformed, e.to_string()),
            DecodeError::InvalidString { .. } => {
                ConnError::with_reason(Why::InvalidString, e.to_string(), Reason::MalformedPacket)
            }
        }
    }
}

pub(super) async fn write_raw<T: AsyncWrite + Unpin>(
    stream: &mut T,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    // TLS and WebSocket hold bytes until flushed.
    stream.flush().await
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
    /// Packet ids of incoming QoS 2 PUBLISHes awaiting PUBREL, with the time
    /// each is forgotten; at most `mqtt.max_awaiting_rel` new ones.
    qos2_in: HashMap<u16, Instant>,
    /// Per pending SUBSCRIBE/UNSUBSCRIBE: positions of the filters sent to
    /// the router, of the invalid ones, and of those the ACL refused.
    invalid_filters: VecDeque<(Vec<usize>, Vec<usize>, Vec<usize>)>,
    /// Messages for the router produced while handling packets (sent in order).
    outbox: VecDeque<RouterMsg>,
    /// QoS 1/2 envelopes for uplink sinks, sent in order after `outbox`.
    sink_outbox: VecDeque<(
        mpsc::Sender<crate::bridge::Envelope>,
        crate::bridge::Envelope,
    )>,
    username: Option<String>,
    /// What this client may publish and subscribe to (recompiled after a reload).
    acl: crate::acl::ConnAcl,
    /// Set by a DISCONNECT from the client.
    disconnect: Option<(bool, Option<u32>)>,
    /// Bytes a buffered transport (TLS, WebSocket) took but did not flush yet.
    unflushed: bool,
}

/// Serves one connection until it closes.
pub async fn serve<T: Transport>(mut stream: T, ctx: ConnCtx, sh: Arc<Shared>) {
    let conn_id = ctx.id;
    let on = ctx.listener.clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Boxed, here and below: an idle connection's task holds only the
    // loop's state, not the space the handshake and the close once needed.
    let attached = match Box::pin(handshake::handshake(&mut stream, &mut buf, &sh, &ctx)).await {
        Ok(a) => a,
        Err(e) => {
            report(&ctx, &sh.metrics, &e, "-");
            on.metrics
                .connection(crate::metrics::ConnectionResult::Rejected);
            return;
        }
    };
    on.metrics
        .connection(crate::metrics::ConnectionResult::Accepted);
    on.metrics.active.inc();
    let mut c = Conn {
        sh: &sh,
        conn_id,
        version: attached.version,
        client_id: attached.client_id.clone(),
        expiry_secs: attached.expiry_secs,
        client_max_packet: attached.client_max_packet,
        out: BytesMut::new(),
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
        qos2_in: {
            let forget_at = Instant::now() + sh.cfg.mqtt.awaiting_rel_timeout();
            attached
                .qos2_pending
                .iter()
                .map(|&id| (id, forget_at))
                .collect()
        },
        outbox: VecDeque::new(),
        sink_outbox: VecDeque::new(),
        username: attached.username.clone(),
        acl: attached.acl.clone(),
        invalid_filters: VecDeque::new(),
        disconnect: None,
        unflushed: false,
    };
    let result = {
        let (mut rd, mut wr) = stream.halves();
        Box::pin(c.run(&mut rd, &mut wr, &mut buf, attached)).await
    };
    Box::pin(close(stream, &ctx, c, result)).await;
    on.metrics.active.dec();
}

/// After the loop: the will decision, a last DISCONNECT and what was owed
/// (bounded in time), then the router is told.
async fn close<T: Transport>(
    mut stream: T,
    ctx: &ConnCtx,
    mut c: Conn<'_>,
    result: Result<(), ConnError>,
) {
    let sh = c.sh;
    let conn_id = c.conn_id;
    let (publish_will, new_expiry) = match (&result, c.disconnect) {
        (Ok(()), Some(d)) => d,
        (Err(ConnError::ShuttingDown), _) => (false, None),
        _ => (true, None),
    };
    if let Err(e) = &result {
        report(ctx, c.sh.metrics.as_ref(), e, &c.client_id);
        if let (ConnError::Protocol { reason, detail, .. }, Version::V5) = (e, c.version) {
            c.send_disconnect(*reason, Some(detail));
        }
    }
    // Acks decoded before the failure still count.
    let _ = c.flush_outbox().await;
    // A last DISCONNECT (and what was owed) gets a short chance; a client
    // that stopped reading must not hold the task (or the shutdown) here.
    let mut stalled = matches!(
        &result,
        Err(ConnError::Protocol {
            why: Why::SendTimeout,
            ..
        })
    );
    if !stalled {
        stalled = tokio::time::timeout(FINAL_FLUSH, write_raw(&mut stream, &c.out))
            .await
            .is_err();
    }
    if !stalled {
        // TLS sends close_notify here, WebSocket a close frame: bounded too.
        stalled = tokio::time::timeout(FINAL_FLUSH, stream.shutdown())
            .await
            .is_err();
    }
    if stalled {
        // Reset instead of close: a peer that reads nothing would otherwise
        // keep the kernel's send buffer of this socket alive after we are gone.
        let _ = stream.tcp().set_zero_linger();
    }
    let msg = RouterMsg::Disconnect {
        conn_id,
        client_id: c.client_id.clone(),
        publish_will,
        new_expiry,
    };
    let _ = sh.router.send(msg).await;
}

/// The write branch: flush what a buffered transport holds, else write
/// some of `out`. `Some(n)`: `n` bytes taken; `None`: flushed.
async fn write_step<W: WriteSide>(
    wr: &mut W,
    out: &[u8],
    unflushed: bool,
) -> std::io::Result<Option<usize>> {
    if unflushed {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(out).await.map(Some)
    }
}

/// The next QoS 0 delivery, once the router made the channel.
async fn recv0(rx0: &mut Option<mpsc::Receiver<Outbound>>) -> Option<Outbound> {
    match rx0 {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// At most this many deliveries taken from a channel in one turn of the loop.
const DELIVERY_BATCH: usize = 64;

/// How long the last bytes of a closing connection may take.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

use crate::mqtt::transport::READ_CHUNK;

/// One log line and one counter per failed connection.
fn report(ctx: &ConnCtx, shared: &Metrics, e: &ConnError, client_id: &str) {
    let peer = ctx.peer;
    let listener = &*ctx.listener.name;
    let metrics = &ctx.listener.metrics;
    match e {
        ConnError::Protocol { why, detail, .. } => {
            metrics.protocol_error(*why);
            // Many clients misbehaving at once (a flood, a broken fleet) must
            // not turn into a log line each: the counter has them all.
            static WARN: OnceLock<LogLimiter> = OnceLock::new();
            match WARN.get_or_init(|| LogLimiter::new(WARN_EVERY)).allow() {
                Some(suppressed) => {
                    tracing::warn!(client_id, %peer, listener, reason = why.as_str(), %detail, suppressed, "closing connection: protocol violation")
                }
                None => {
                    tracing::debug!(client_id, %peer, listener, reason = why.as_str(), %detail, "closing connection: protocol violation")
                }
            }
        }
        ConnError::Refused(why) => {
            tracing::warn!(client_id, %peer, listener, %why, "connection refused")
        }
        ConnError::Unacknowledged(why) => {
            shared.closed_unacknowledged(*why);
            static WARN: OnceLock<LogLimiter> = OnceLock::new();
            if let Some(suppressed) = WARN.get_or_init(|| LogLimiter::new(WARN_EVERY)).allow() {
                tracing::warn!(client_id, %peer, listener, reason = why.as_str(), suppressed, "closing a 3.1.1 connection with a PUBLISH unacknowledged; the device will send it again");
            }
        }
        ConnError::Closed
        | ConnError::ShuttingDown
        | ConnError::Denied
        | ConnError::Unauthenticated => {}
        ConnError::Io(err) => {
            tracing::debug!(client_id, %peer, listener, %err, "connection i/o error")
        }
    }
}

impl Conn<'_> {
    async fn run<R: ReadSide, W: WriteSide>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        buf: &mut BytesMut,
        a: handshake::Attached,
    ) -> Result<(), ConnError> {
        let handshake::Attached {
            mut rx,
            mut kick,
            keep_alive,
            ..
        } = a;
        // Made by the router at the first QoS 0 delivery (`Outbound::Qos0Channel`).
        let mut rx0: Option<mpsc::Receiver<Outbound>> = None;
        let mut t = Timers::new(&self.sh.cfg.mqtt, keep_alive);
        let out_cap = self.sh.cfg.mqtt.max_outbound_buffer_bytes;
        // Anything that arrived with the CONNECT.
        let consumed = self.process(buf)?;
        t.after_read(buf.is_empty(), consumed);
        if buf.is_empty() {
            *buf = BytesMut::new();
        }
        self.try_flush_outbox()?;
        // One timer for the life of the connection, moved rather than made
        // anew each turn: a later deadline is a store, not a trip through
        // the timer wheel's lock.
        let sleep = tokio::time::sleep_until(t.next(self.qos2_in.values().min().copied()));
        tokio::pin!(sleep);
        loop {
            if self.disconnect.is_some() {
                return Ok(());
            }
            // Bound the replies a client can have us owe: 3.1.1 has no Receive Maximum,
            // so stop reading instead; a 5.0 client is held to it in `on_publish`
            // (read on, so that a violation is seen and answered with 0x93).
            // Nor read while our bytes pile up: a client that does not read
            // cannot make us buffer PINGRESPs and acks without end.
            let limit = self.sh.cfg.mqtt.receive_maximum as usize;
            let room = self.out.len() < out_cap;
            // A full router or sink queue: nothing more is read (the device
            // is slowed, not lied to) until it has room, while acks,
            // deliveries, the keepalive and a takeover go on.
            let blocked = self.blocked_on();
            let is_blocked = blocked.is_some();
            let may_read = room
                && !is_blocked
                && match self.version {
                    Version::V311 => self.pending.len() < limit,
                    Version::V5 => self.pending.len() < limit * 2,
                };
            if !may_read {
                // The client's PINGREQs and packet tails are not being read:
                // keepalive and the frame timeout cannot be judged.
                t.reading_paused();
            }
            let wake = t.next(self.qos2_in.values().min().copied());
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                k = &mut kick => {
                    let reason = match k {
                        Ok(Kick::TakenOver) => Reason::SessionTakenOver,
                        Ok(Kick::Administrative) => Reason::AdministrativeAction,
                        _ => Reason::ServerShuttingDown,
                    };
                    // A cluster node stopping sends 5.0 clients to another node.
                    let elsewhere = (reason == Reason::ServerShuttingDown)
                        .then(|| self.sh.cluster.as_ref()?.members.redirect_target())
                        .flatten();
                    match elsewhere {
                        Some(to) if self.version == Version::V5 => {
                            codec::encode_disconnect_redirect(Reason::UseAnotherServer as u8, &to, &mut self.out);
                        }
                        _ => self.send_disconnect(reason, None),
                    }
                    return Err(ConnError::ShuttingDown);
                }
                w = write_step(wr, &self.out, self.unflushed), if !self.out.is_empty() || self.unflushed => {
                    let idle = rx.is_empty() && rx0.as_ref().is_none_or(|r| r.is_empty());
                    self.wrote::<W>(w?, &mut t, idle);
                }
                r = next_reply(&mut self.pending) => {
                    self.pending.pop_front();
                    self.answer(r)?;
                    // Replies due at the same time go out in the same write.
                    for _ in 1..DELIVERY_BATCH {
                        let Some(r) = pending::ready_reply(&mut self.pending) else {
                            break;
                        };
                        self.pending.pop_front();
                        self.answer(r)?;
                    }
                }
                // Deliveries wait in the session while our buffer is full.
                // Deliveries already waiting go out in the same write (one
                // syscall for a burst, not one per message), within the
                // buffer's bound and a batch that keeps the loop fair.
                Some(o) = rx.recv(), if room => {
                    self.take(o, &mut rx0);
                    for _ in 1..DELIVERY_BATCH {
                        match rx.try_recv() {
                            Ok(o) if self.out.len() < out_cap => self.take(o, &mut rx0),
                            Ok(o) => {
                                self.take(o, &mut rx0);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(o) = recv0(&mut rx0), if room && rx0.is_some() => {
                    self.deliver(o);
                    for _ in 1..DELIVERY_BATCH {
                        let Some(r) = rx0.as_mut().filter(|_| self.out.len() < out_cap) else {
                            break;
                        };
                        match r.try_recv() {
                            Ok(o) => self.deliver(o),
                            Err(_) => break,
                        }
                    }
                }
                r = rd.read_into(buf), if may_read => {
                    if r.map_err(ConnError::read)? == 0 {
                        return Err(ConnError::Closed);
                    }
                    t.heard();
                    let consumed = self.process(buf)?;
                    t.after_read(buf.is_empty(), consumed);
                    if buf.is_empty() && !W::BUFFERED {
                        // An idle TCP connection holds no read buffer. (TLS
                        // and WebSocket reserve before each read and buffer
                        // anyway: theirs is kept, not allocated per read.)
                        *buf = BytesMut::new();
                    }
                }
                () = &mut sleep => {
                    t.check(keep_alive)?;
                    self.forget_expired_qos2(Instant::now());
                }
                r = outbox::room(blocked), if is_blocked => self.send_reserved(r)?,
            }
            self.try_flush_outbox()?;
            if !self.out.is_empty() {
                let idle = rx.is_empty() && rx0.as_ref().is_none_or(|r| r.is_empty());
                self.write_some(wr, &mut t, idle)?;
            }
        }
    }

    /// After the write branch: bytes taken (`Some(n)`) or a flush done.
    /// Through a buffered transport, bytes count as progress for the send
    /// timeout only once flushed, so a stalled TLS peer is still cut off.
    fn wrote<W: WriteSide>(&mut self, w: Option<usize>, t: &mut Timers, idle: bool) {
        match w {
            Some(n) => {
                self.sh.metrics.bytes_sent.inc_by(n as u64);
                self.out.advance(n);
                if W::BUFFERED {
                    self.unflushed = true;
                    t.wrote(false, false);
                } else {
                    t.wrote(n > 0, self.out.is_empty());
                }
            }
            None => {
                self.unflushed = false;
                t.wrote(true, self.out.is_empty());
            }
        }
        if self.out.is_empty() && idle {
            self.out = BytesMut::new();
        }
    }

    /// Writes what the socket takes now, without waiting. `idle`: no
    /// delivery is waiting, so a drained buffer is given back (an idle
    /// connection holds none); under load it is kept and reused, not
    /// allocated again for every delivery.
    fn write_some<W: WriteSide>(
        &mut self,
        wr: &mut W,
        t: &mut Timers,
        idle: bool,
    ) -> Result<(), ConnError> {
        match wr.try_write(&self.out) {
            Ok(n) => {
                self.sh.metrics.bytes_sent.inc_by(n as u64);
                self.out.advance(n);
                if self.out.is_empty() && idle {
                    self.out = BytesMut::new();
                }
                t.wrote(n > 0, self.out.is_empty());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                t.wrote(false, false);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Decodes and handles every complete packet in `buf`; returns whether
    /// any packet was taken from it.
    fn process(&mut self, buf: &mut BytesMut) -> Result<bool, ConnError> {
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
        Ok(before != buf.len())
    }

    /// Queues a 5.0 DISCONNECT (nothing for 3.1.1) with an optional reason string.
    fn send_disconnect(&mut self, reason: Reason, why: Option<&str>) {
        if self.version == Version::V5 {
            codec::encode_disconnect(reason as u8, why, &mut self.out);
        }
    }

    /// One message from the router's channel: the QoS 0 channel it hands
    /// over, or a delivery to write.
    fn take(&mut self, o: Outbound, rx0: &mut Option<mpsc::Receiver<Outbound>>) {
        match o {
            Outbound::Qos0Channel(r) => *rx0 = Some(r),
            o => self.deliver(o),
        }
    }

    /// Writes one delivery from the router.
    fn deliver(&mut self, o: Outbound) {
        match o {
            // Taken by the loop before it gets here; nothing to write.
            Outbound::Qos0Channel(_) => {}
            Outbound::PubRel { seq, pkid } => {
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
                pkid,
                msg,
                qos,
                retain,
                dup,
                sub_ids,
            } => {
                let pkid = if qos > 0 { pkid } else { 0 };
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
                    // Only a message with an expiry needs the clock.
                    now_ms: if msg.expires_at_ms.is_some() {
                        now_ms()
                    } else {
                        0
                    },
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
                        .dropped(crate::metrics::DropReason::TooLarge);
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
        self.outbox.push_back(msg);
    }
}
