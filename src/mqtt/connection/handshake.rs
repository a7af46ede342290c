//! The CONNECT exchange: read the first packet within the connect timeout,
//! validate it, attach to the router and answer CONNACK.

use std::sync::Arc;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::identify::{identify, refuse_later, Decision};
use super::{ConnError, Shared};
use crate::acl::Denied;
use crate::metrics::ProtocolErrorReason as Why;
use crate::mqtt::codec::{self, Version};
use crate::mqtt::message::{Message, MessageProps};
use crate::mqtt::router::{ConnectOutcome, ConnectRequest, Kick, Outbound, RouterMsg, Will};
use crate::mqtt::transport::ConnCtx;

/// What the main loop needs after a successful CONNECT.
pub struct Attached {
    pub version: Version,
    pub client_id: Arc<str>,
    pub keep_alive: u16,
    pub expiry_secs: u32,
    /// The client's Maximum Packet Size for what we send it.
    pub client_max_packet: u32,
    /// The client's Topic Alias Maximum for what we send it (5.0; 0 = none).
    pub client_topic_alias_max: u16,
    /// The identity's user name (verified when an auth method is
    /// configured): uplink templates and the `mqtt_username` header.
    pub username: Option<String>,
    /// The client's ACL, compiled for its identity.
    pub acl: crate::acl::ConnAcl,
    /// QoS 2 packet ids of this client still awaiting PUBREL (from its session).
    pub qos2_pending: Vec<u16>,
    pub rx: mpsc::Receiver<Outbound>,
    pub kick: oneshot::Receiver<Kick>,
}

/// Reads bytes until a whole CONNECT is buffered; returns its version.
async fn read_connect<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut T,
    buf: &mut BytesMut,
    sh: &Shared,
) -> Result<Version, ConnError> {
    let max = sh.cfg.mqtt.max_packet_size;
    loop {
        match codec::sniff_connect(buf, max) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(codec::DecodeError::UnsupportedProtocol(level)) => {
                // 3.1.1 format CONNACK 0x01 is understood by every version (MQTT-3.1.2-2).
                let _ = super::write_raw(stream, &[0x20, 0x02, 0x00, 0x01]).await;
                return Err(ConnError::protocol(
                    Why::UnsupportedProtocol,
                    format!("protocol level {level}"),
                ));
            }
            Err(e) => return Err(ConnError::decode(e)),
        }
        if stream.read_buf(buf).await.map_err(ConnError::read)? == 0 {
            return Err(ConnError::Closed);
        }
    }
}

pub async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut T,
    buf: &mut BytesMut,
    sh: &Shared,
    ctx: &ConnCtx,
) -> Result<Attached, ConnError> {
    let conn_id = ctx.id;
    // Counted from the accept: a TLS handshake or WebSocket upgrade used part
    // of it; authentication must finish by then too.
    let deadline = ctx.connect_deadline;
    let version = match tokio::time::timeout_at(deadline, read_connect(stream, buf, sh)).await {
        Ok(v) => v?,
        Err(_) => {
            return Err(ConnError::protocol(
                Why::ConnectTimeout,
                "no CONNECT within the connect timeout".into(),
            ))
        }
    };
    let packet = match codec::decode(buf, version, sh.cfg.mqtt.max_packet_size) {
        Ok(p) => p,
        Err(e) => return Err(refuse_undecodable(stream, version, e).await),
    };
    let Some(p5::Packet::Connect(connect, will, login)) = packet else {
        return Err(ConnError::protocol(
            Why::NotConnectFirst,
            "first packet is not CONNECT".into(),
        ));
    };
    let mut out = BytesMut::new();
    let refuse = |code: Code, out: &mut BytesMut| {
        let ack = p5::ConnAck {
            session_present: false,
            code,
            properties: None,
        };
        let _ = codec::encode(&p5::Packet::ConnAck(ack), version, out);
    };
    let props = connect.properties.clone().unwrap_or_default_props();
    if props.authentication_method.is_some() {
        refuse(Code::BadAuthenticationMethod, &mut out);
        super::write_raw(stream, &out).await?;
        return Err(ConnError::protocol(
            Why::ProtocolError,
            "enhanced authentication is not supported".into(),
        ));
    }
    // Client identifier rules (MQTT-3.1.3-6..9, 5.0 3.1.3.1).
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            refuse(Code::ClientIdentifierNotValid, &mut out);
            super::write_raw(stream, &out).await?;
            return Err(ConnError::protocol(
                Why::ClientIdInvalid,
                "empty client id with CleanSession=0".into(),
            ));
        }
        let id = format!("mqb-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.as_str().into()
    };
    // Who the client is, before the will is built and before the router is
    // asked: a refused client never touches a session.
    let mut client_id = client_id;
    let identity = match identify(
        sh,
        ctx,
        login.as_ref(),
        &mut client_id,
        &mut assigned,
        deadline,
    )
    .await?
    {
        Decision::Accept(identity) => identity,
        Decision::Refuse(code) => {
            refuse(code, &mut out);
            super::write_raw(stream, &out).await?;
            return Err(ConnError::Unauthenticated);
        }
    };
    // The identity's user name (verified when a method is configured):
    // everything below takes it from here.
    let username: Option<Arc<str>> = identity.username.clone();
    let acl = sh.acl.compile(&client_id, username.as_ref());
    let will =
        match will.map(|w| make_will(w, version, &sh.cfg.mqtt.topic_limits(), Some(&sh.metrics))) {
            Some(Err((why, detail))) => {
                // 3.1.1 has no code for a bad will topic: closed without CONNACK.
                if version == Version::V5 {
                    refuse(Code::TopicNameInvalid, &mut out);
                    super::write_raw(stream, &out).await?;
                }
                return Err(ConnError::protocol(why, detail));
            }
            Some(Ok(w)) => Some(w),
            None => None,
        };
    if let Some(w) = will.as_ref() {
        if !acl.get().may_publish(&w.message.topic) {
            let topic = &w.message.topic;
            sh.acl.metrics.denied(Denied::Will, &client_id, topic);
            refuse(Code::NotAuthorized, &mut out);
            super::write_raw(stream, &out).await?;
            return Err(ConnError::Denied);
        }
    }
    let mqtt = &sh.cfg.mqtt;
    // Before attaching: a refused CONNECT must not take over a live session.
    let Some(keep_alive) =
        super::keepalive::negotiate(version, connect.keep_alive, mqtt.max_keepalive())
    else {
        refuse(Code::ClientIdentifierNotValid, &mut out);
        super::write_raw(stream, &out).await?;
        return Err(ConnError::protocol(
            Why::KeepaliveRefused,
            format!(
                "keep-alive {} s is over mqtt.max_keepalive_secs (0 counts as over)",
                connect.keep_alive
            ),
        ));
    };
    let expiry_secs = match version {
        Version::V5 => props
            .session_expiry_interval
            .unwrap_or(0)
            .min(sh.cfg.session.max_session_expiry_secs),
        Version::V311 if connect.clean_start => 0,
        Version::V311 => sh.cfg.session.v311_session_expiry_secs,
    };
    let window = props
        .receive_maximum
        .unwrap_or(u16::MAX)
        .min(mqtt.max_inflight) as usize;
    // The window, a PUBREL re-send, and one slot for the QoS 0 channel the
    // router sends when it first has a QoS 0 delivery for this connection.
    let (tx, rx) = mpsc::channel(window + 3);
    let (kick_tx, kick) = oneshot::channel();
    let req = ConnectRequest {
        conn_id,
        client_id: client_id.clone(),
        clean_start: connect.clean_start,
        expiry_secs,
        protocol: if version == Version::V5 { 5 } else { 4 },
        will: will.map(Box::new),
        window,
        tx,
        kick: kick_tx,
        username: username.clone(),
        identity: identity.verified_username().cloned(),
        peer_ip: Some(ctx.peer.ip()),
        listener: Some(ctx.listener.name.clone()),
    };
    if let Some(gate) = &sh.cluster {
        if let Err(code) = cluster_gate(gate, version, &mut out).await {
            super::write_raw(stream, &out).await?;
            return Err(ConnError::Refused(format!("cluster: {code:?}")));
        }
    }
    let (reply_tx, reply) = oneshot::channel();
    sh.router
        .send(RouterMsg::Connect {
            req,
            reply: reply_tx,
        })
        .await
        .map_err(|_| ConnError::ShuttingDown)?;
    let outcome = reply.await.map_err(|_| ConnError::ShuttingDown)?;
    let (session_present, qos2_pending) = match outcome {
        ConnectOutcome::Accepted {
            session_present,
            qos2_pending,
        } => (session_present, qos2_pending),
        ConnectOutcome::NotAuthorized => {
            let why = "the session belongs to another identity";
            let code = refuse_later(sh, ctx, &client_id, &identity, why).await;
            refuse(code, &mut out);
            super::write_raw(stream, &out).await?;
            return Err(ConnError::Unauthenticated);
        }
        ConnectOutcome::QuotaExceeded | ConnectOutcome::StoreFailed => {
            let code = if outcome == ConnectOutcome::QuotaExceeded {
                Code::QuotaExceeded
            } else {
                Code::ServerUnavailable
            };
            refuse(code, &mut out);
            if outcome == ConnectOutcome::StoreFailed {
                // The router attached this connection before the store failed.
                detach(sh, conn_id, &client_id, false).await;
            }
            super::write_raw(stream, &out).await?;
            return Err(ConnError::Refused(format!("{outcome:?}")));
        }
    };
    let properties = (version == Version::V5).then(|| p5::ConnAckProperties {
        session_expiry_interval: (props.session_expiry_interval.unwrap_or(0) != expiry_secs)
            .then_some(expiry_secs),
        receive_max: Some(mqtt.receive_maximum),
        max_qos: None,
        retain_available: (!mqtt.retain_available).then_some(0),
        max_packet_size: Some(mqtt.max_packet_size),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(mqtt.topic_alias_maximum),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: keep_alive.announce,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    });
    let ack = p5::ConnAck {
        session_present,
        code: Code::Success,
        properties,
    };
    let written = match codec::encode(&p5::Packet::ConnAck(ack), version, &mut out) {
        Ok(()) => super::write_raw(stream, &out).await,
        Err(e) => Err(std::io::Error::other(e)),
    };
    if let Err(e) = written {
        // Attached but the client never learned it: end the attachment like any
        // abnormal close, or the session would stay "online" for ever.
        detach(sh, conn_id, &client_id, true).await;
        return Err(ConnError::Io(e));
    }
    tracing::debug!(client_id = %client_id, listener = %ctx.listener.name, ?version, session_present, expiry_secs, "client connected");
    Ok(Attached {
        version,
        client_id,
        keep_alive: keep_alive.secs,
        expiry_secs,
        client_max_packet: props.max_packet_size.unwrap_or(u32::MAX),
        client_topic_alias_max: props.topic_alias_max.unwrap_or(0),
        username: username.as_deref().map(str::to_owned),
        acl,
        qos2_pending,
        rx,
        kick,
    })
}

/// Tells the router a connection it attached is gone.
async fn detach(sh: &Shared, conn_id: u64, client_id: &Arc<str>, publish_will: bool) {
    let msg = RouterMsg::Disconnect {
        conn_id,
        client_id: client_id.clone(),
        publish_will,
        new_expiry: None,
    };
    let _ = sh.router.send(msg).await;
}

trait PropsDefault {
    fn unwrap_or_default_props(self) -> p5::ConnectProperties;
}

impl PropsDefault for Option<p5::ConnectProperties> {
    fn unwrap_or_default_props(self) -> p5::ConnectProperties {
        self.unwrap_or(p5::ConnectProperties {
            session_expiry_interval: None,
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        })
    }
}

/// A CONNECT that cannot be decoded or breaks a string rule: 5.0 gets a
/// CONNACK with the reason code first (5.0 3.1.4: MAY), 3.1.1 a plain close.
async fn refuse_undecodable<T: AsyncWrite + Unpin>(
    stream: &mut T,
    version: Version,
    e: codec::DecodeError,
) -> ConnError {
    let e = ConnError::decode(e);
    if let (Version::V5, ConnError::Protocol { reason, .. }) = (version, &e) {
        use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as R;
        let code = match reason {
            R::MalformedPacket => Code::MalformedPacket,
            R::PacketTooLarge => Code::PacketTooLarge,
            _ => Code::ProtocolError,
        };
        let ack = p5::ConnAck {
            session_present: false,
            code,
            properties: None,
        };
        let mut out = BytesMut::new();
        if codec::encode(&p5::Packet::ConnAck(ack), version, &mut out).is_ok() {
            let _ = super::write_raw(stream, &out).await;
        }
    }
    e
}

/// Cluster mode, before attaching: a draining node sends the client to
/// another node (5.0: 0x9C Use another server with a Server Reference; 3.1.1
/// has no redirect: Server unavailable), and no node attaches a client
/// before it has read the cluster's state as of now. `Err`: the refusing
/// CONNACK is in `out`.
async fn cluster_gate(
    gate: &crate::cluster::Gate,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), Code> {
    let (code, reference) = if gate.members.is_draining() {
        match gate.members.redirect_target() {
            Some(to) if version == Version::V5 => (Code::UseAnotherServer, Some(to)),
            _ => (Code::ServerUnavailable, None),
        }
    } else if !gate.sync.wait().await {
        (Code::ServerUnavailable, None)
    } else {
        return Ok(());
    };
    let properties = reference.map(|r| p5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: Some(r),
        authentication_method: None,
        authentication_data: None,
    });
    let ack = p5::ConnAck {
        session_present: false,
        code,
        properties,
    };
    let _ = codec::encode(&p5::Packet::ConnAck(ack), version, out);
    Err(code)
}

/// Builds the will message; an invalid will topic is a refused CONNECT.
pub(crate) fn make_will(
    w: p5::LastWill,
    version: Version,
    limits: &crate::mqtt::topic::TopicLimits,
    metrics: Option<&crate::metrics::Metrics>,
) -> Result<Will, (Why, String)> {
    // UTF-8 and the string rules were checked by the codec.
    let topic = std::str::from_utf8(&w.topic)
        .map_err(|_| (Why::InvalidString, "will topic is not UTF-8".to_string()))?;
    if let Err(e) = limits.check(topic) {
        if let Some(m) = metrics {
            m.topic_refused(e.reason());
        }
        return Err((Why::TopicLimit, format!("will topic: {e}")));
    }
    if !crate::mqtt::topic::valid_topic_name(topic) {
        let detail = "will topic is not a valid topic name".to_string();
        return Err((Why::ProtocolError, detail));
    }
    let p = w.properties;
    let delay_secs = p.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
    let expiry = p.as_ref().and_then(|p| p.message_expiry_interval);
    let props = match p {
        Some(p) if version == Version::V5 => MessageProps {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
        },
        _ => MessageProps::default(),
    };
    let message = Message {
        topic: topic.to_string(),
        payload: w.message,
        qos: codec::qos_u8(w.qos),
        retain: w.retain,
        props,
        expires_at_ms: None,
        receipt: None,
    };
    Ok(Will {
        message,
        delay_secs,
        expiry_secs: expiry,
        acl: None,
    })
}
