//! Wire format glue over rumqttc's `mqttbytes` codecs.
//!
//! Internally every packet is the 5.0 model (`p5::Packet`); 3.1.1 packets are
//! converted on the way in and out, so the connection logic is written once.
//! We frame packets ourselves first (fixed header, flags, size limit) so that a
//! hostile Remaining Length is refused before its body is buffered, and the
//! third-party parser only ever sees one complete frame.
//! Outgoing PUBLISH is encoded here directly from the shared [`Message`] to
//! avoid building an owned packet (and copying the topic) per delivery.

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;

use super::message::Message;

pub mod strings;

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes exceeds maximum packet size {max}")]
    TooLarge { size: usize, max: u32 },
    #[error("unsupported protocol name or level {0}")]
    UnsupportedProtocol(u8),
    /// A UTF-8 string field refused by [`strings::check_str`] (malformed).
    #[error("{field} {why}")]
    InvalidString {
        field: &'static str,
        why: &'static str,
    },
}

/// Fixed header of a complete frame in the buffer.
struct Frame {
    byte1: u8,
    header_len: usize,
    remaining: usize,
}

/// Frames the next packet: `Ok(None)` while more bytes are needed.
fn frame(buf: &[u8], max_size: u32) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut remaining = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= ((b & 0x7f) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(DecodeError::Malformed(
                "remaining length over 4 bytes".into(),
            ));
        }
    }
    let total = i + remaining;
    if total > max_size as usize {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_size,
        });
    }
    Ok(Some(Frame {
        byte1: buf[0],
        header_len: i,
        remaining,
    }))
}

/// Reserved flag bits of the fixed header (MQTT-2.2.2-1/2).
fn check_flags(byte1: u8) -> Result<(), DecodeError> {
    let (kind, flags) = (byte1 >> 4, byte1 & 0x0f);
    let ok = match kind {
        3 => (flags >> 1) & 0b11 != 3,
        6 | 8 | 10 => flags == 0b0010,
        0 | 15 => return Err(DecodeError::Protocol("reserved packet type")),
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::Malformed(format!(
            "invalid fixed header flags {byte1:#04x}"
        )))
    }
}

/// Reads the protocol version from a complete CONNECT frame at the start of `buf`.
/// `Ok(None)`: more bytes needed. Errors if the first packet is not CONNECT.
pub fn sniff_connect(buf: &[u8], max_size: u32) -> Result<Option<Version>, DecodeError> {
    let Some(f) = frame(buf, max_size)? else {
        return Ok(None);
    };
    if f.byte1 != 0x10 {
        return Err(DecodeError::Protocol("first packet is not CONNECT"));
    }
    if buf.len() < f.header_len + f.remaining {
        return Ok(None);
    }
    let body = &buf[f.header_len..f.header_len + f.remaining];
    if body.len() < 7 {
        return Err(DecodeError::Malformed("CONNECT too short".into()));
    }
    let name_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let name = body.get(2..2 + name_len);
    let level = body.get(2 + name_len).copied().unwrap_or(0);
    let version = match (name, level) {
        (Some(b"MQTT"), 4) => Version::V311,
        (Some(b"MQTT"), 5) => Version::V5,
        (_, level) => return Err(DecodeError::UnsupportedProtocol(level)),
    };
    let flags = body.get(3 + name_len).copied().unwrap_or(0);
    // The parser ignores the reserved flag bit and a password without a user
    // name; both are malformed (MQTT-3.1.2-3, 3.1.1's MQTT-3.1.2-22).
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set".into()));
    }
    if version == Version::V311 && flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(DecodeError::Malformed(
            "password flag without user name flag".into(),
        ));
    }
    Ok(Some(version))
}

/// Decodes the next packet from `buf` (consuming it), or `Ok(None)` if incomplete.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    max_size: u32,
) -> Result<Option<p5::Packet>, DecodeError> {
    let Some(f) = frame(buf, max_size)? else {
        return Ok(None);
    };
    if buf.len() < f.header_len + f.remaining {
        // Reserve what the frame needs so a large packet is read in few syscalls.
        buf.reserve(f.header_len + f.remaining - buf.len());
        return Ok(None);
    }
    check_flags(f.byte1)?;
    // 5.0 DISCONNECT may omit the reason code (remaining 0) or the property
    // length (remaining 1); the parser below accepts neither.
    if f.byte1 == 0xe0 && f.remaining <= 1 {
        let code = if f.remaining == 1 {
            buf[f.header_len]
        } else {
            0
        };
        let _ = buf.split_to(f.header_len + f.remaining);
        let reason_code = match code {
            0x00 => p5::DisconnectReasonCode::NormalDisconnection,
            0x04 => p5::DisconnectReasonCode::DisconnectWithWillMessage,
            _ => p5::DisconnectReasonCode::UnspecifiedError,
        };
        return Ok(Some(p5::Packet::Disconnect(p5::Disconnect {
            reason_code,
            properties: None,
        })));
    }
    let frame_len = f.header_len + f.remaining;
    let mut one = buf.split_to(frame_len);
    // The parser is third-party code fed hostile bytes: a panic in it must cost
    // this one packet (and connection), never the task's invariants.
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
        Version::V311 => p4::Packet::read(&mut one, max_size as usize)
            .map(from_v4)
            .map_err(|e| e.to_string()),
        Version::V5 => p5::Packet::read(&mut one, Some(max_size)).map_err(|e| e.to_string()),
    }));
    match parsed {
        Ok(Ok(p)) => {
            strings::validate(&p)?;
            Ok(Some(p))
        }
        Ok(Err(e)) => Err(DecodeError::Malformed(e)),
        Err(_) => Err(DecodeError::Malformed("unparseable packet".into())),
    }
}

pub fn q5(q: Q4) -> Q5 {
    match q {
        Q4::AtMostOnce => Q5::AtMostOnce,
        Q4::AtLeastOnce => Q5::AtLeastOnce,
        Q4::ExactlyOnce => Q5::ExactlyOnce,
    }
}

pub fn q4(q: Q5) -> Q4 {
    match q {
        Q5::AtMostOnce => Q4::AtMostOnce,
        Q5::AtLeastOnce => Q4::AtLeastOnce,
        Q5::ExactlyOnce => Q4::ExactlyOnce,
    }
}

pub fn qos_u8(q: Q5) -> u8 {
    q as u8
}

pub fn qos_from(q: u8) -> Q5 {
    match q {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

fn from_v4(p: p4::Packet) -> p5::Packet {
    use p5::Packet as P;
    match p {
        p4::Packet::Connect(c) => {
            let will = c.last_will.map(|w| p5::LastWill {
                topic: w.topic.into(),
                message: w.message,
                qos: q5(w.qos),
                retain: w.retain,
                properties: None,
            });
            let login = c.login.map(|l| p5::Login {
                username: l.username,
                password: l.password,
            });
            let connect = p5::Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                clean_start: c.clean_session,
                properties: None,
            };
            P::Connect(connect, will, login)
        }
        p4::Packet::Publish(p) => P::Publish(p5::Publish {
            dup: p.dup,
            qos: q5(p.qos),
            retain: p.retain,
            topic: p.topic.into(),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        p4::Packet::PubAck(a) => P::PubAck(p5::PubAck {
            pkid: a.pkid,
            reason: p5::PubAckReason::Success,
            properties: None,
        }),
        p4::Packet::PubRec(a) => P::PubRec(p5::PubRec {
            pkid: a.pkid,
            reason: p5::PubRecReason::Success,
            properties: None,
        }),
        p4::Packet::PubRel(a) => P::PubRel(p5::PubRel {
            pkid: a.pkid,
            reason: p5::PubRelReason::Success,
            properties: None,
        }),
        p4::Packet::PubComp(a) => P::PubComp(p5::PubComp {
            pkid: a.pkid,
            reason: p5::PubCompReason::Success,
            properties: None,
        }),
        p4::Packet::Subscribe(s) => P::Subscribe(p5::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| p5::Filter {
                    path: f.path,
                    qos: q5(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: p5::RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        p4::Packet::Unsubscribe(u) => P::Unsubscribe(p5::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        p4::Packet::PingReq => P::PingReq(p5::PingReq),
        p4::Packet::Disconnect => P::Disconnect(p5::Disconnect {
            reason_code: p5::DisconnectReasonCode::NormalDisconnection,
            properties: None,
        }),
        // Server-to-client packets sent by a client: let the connection reject them.
        p4::Packet::ConnAck(_)
        | p4::Packet::SubAck(_)
        | p4::Packet::UnsubAck(_)
        | p4::Packet::PingResp => P::PingResp(p5::PingResp),
    }
}

/// A packet the codec library refused to encode.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode MQTT 5.0 packet")]
    V5(#[source] rumqttc::v5::mqttbytes::Error),
    #[error("cannot encode MQTT 3.1.1 packet")]
    V311(#[source] rumqttc::mqttbytes::Error),
}

/// Encodes a control packet (not PUBLISH, see [`encode_publish`]) for `version`.
/// Packets that 3.1.1 does not have (server DISCONNECT) encode to nothing.
pub fn encode(
    packet: &p5::Packet,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    match version {
        Version::V5 => packet.write(out, None).map_err(EncodeError::V5)?,
        Version::V311 => match to_v4(packet) {
            Some(p) => p.write(out, usize::MAX).map_err(EncodeError::V311)?,
            None => return Ok(()),
        },
    };
    Ok(())
}

fn to_v4(p: &p5::Packet) -> Option<p4::Packet> {
    use p5::Packet as P;
    Some(match p {
        P::ConnAck(c) => p4::Packet::ConnAck(p4::ConnAck {
            session_present: c.session_present,
            code: connack_v4(c.code),
        }),
        P::PubAck(a) => p4::Packet::PubAck(p4::PubAck { pkid: a.pkid }),
        P::PubRec(a) => p4::Packet::PubRec(p4::PubRec { pkid: a.pkid }),
        P::PubRel(a) => p4::Packet::PubRel(p4::PubRel { pkid: a.pkid }),
        P::PubComp(a) => p4::Packet::PubComp(p4::PubComp { pkid: a.pkid }),
        P::SubAck(s) => p4::Packet::SubAck(p4::SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .iter()
                .map(|c| match c {
                    p5::SubscribeReasonCode::Success(q) => p4::SubscribeReasonCode::Success(q4(*q)),
                    _ => p4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        P::UnsubAck(u) => p4::Packet::UnsubAck(p4::UnsubAck { pkid: u.pkid }),
        P::PingResp(_) => p4::Packet::PingResp,
        // 3.1.1 has no server DISCONNECT: the connection is simply closed.
        _ => return None,
    })
}

fn connack_v4(code: p5::ConnectReturnCode) -> p4::ConnectReturnCode {
    use p4::ConnectReturnCode as C4;
    use p5::ConnectReturnCode as C;
    match code {
        C::Success => C4::Success,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => C4::RefusedProtocolVersion,
        C::BadClientId | C::ClientIdentifierNotValid => C4::BadClientId,
        C::BadUserNamePassword | C::BadAuthenticationMethod => C4::BadUserNamePassword,
        C::NotAuthorized | C::Banned => C4::NotAuthorized,
        _ => C4::ServiceUnavailable,
    }
}

/// Encodes a 5.0 DISCONNECT with an optional reason string. Written here
/// because rumqttc 0.25 adds a stray property-length byte when a DISCONNECT
/// has no properties (its Remaining Length then disagrees with the body).
pub fn encode_disconnect(reason: u8, reason_string: Option<&str>, out: &mut BytesMut) {
    // Keep the reason string within what a small client buffer accepts.
    let text = reason_string.map(|s| &s[..s.floor_char_boundary(256)]);
    let props_len = text.map_or(0, |s| 3 + s.len());
    out.put_u8(0xe0);
    put_varint(out, 1 + varint_len(props_len) + props_len);
    out.put_u8(reason);
    put_varint(out, props_len);
    if let Some(s) = text {
        out.put_u8(0x1f);
        put_str(out, s.as_bytes());
    }
}

/// Encodes a 5.0 DISCONNECT that sends the client to another server:
/// `reason` (0x9C Use another server / 0x9D Server moved) and its Server
/// Reference (property 0x1C).
pub fn encode_disconnect_redirect(reason: u8, server_reference: &str, out: &mut BytesMut) {
    let reference = &server_reference[..server_reference.floor_char_boundary(256)];
    let props_len = 3 + reference.len();
    out.put_u8(0xe0);
    put_varint(out, 1 + varint_len(props_len) + props_len);
    out.put_u8(reason);
    put_varint(out, props_len);
    out.put_u8(0x1c);
    put_str(out, reference.as_bytes());
}

/// Per-delivery fields of an outgoing PUBLISH.
pub struct OutPublish<'a> {
    pub msg: &'a Message,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub subscription_ids: &'a [u32],
    pub now_ms: u64,
    /// 5.0 outgoing Topic Alias: `(alias, with_topic)`; without the topic the
    /// topic name is sent empty (the client knows the alias). Ignored for 3.1.1.
    pub topic_alias: Option<(u16, bool)>,
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 128 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// Whether every string and binary property fits MQTT's 16-bit length
/// prefix (a downlink header could be longer; it must not be truncated).
fn fits_mqtt_strings(msg: &Message) -> bool {
    const MAX: usize = u16::MAX as usize;
    let p = &msg.props;
    msg.topic.len() <= MAX
        && p.content_type.as_ref().is_none_or(|s| s.len() <= MAX)
        && p.response_topic.as_ref().is_none_or(|s| s.len() <= MAX)
        && p.correlation_data.as_ref().is_none_or(|s| s.len() <= MAX)
        && p.user_properties
            .iter()
            .all(|(k, v)| k.len() <= MAX && v.len() <= MAX)
}

/// Length of the 5.0 PUBLISH properties block (without its own length prefix).
fn publish_props_len(p: &OutPublish<'_>, expiry: Option<u32>) -> usize {
    let props = &p.msg.props;
    let mut n = 0;
    n += props.payload_format_indicator.map_or(0, |_| 2);
    n += expiry.map_or(0, |_| 5);
    n += p.topic_alias.map_or(0, |_| 3);
    n += props.content_type.as_ref().map_or(0, |s| 3 + s.len());
    n += props.response_topic.as_ref().map_or(0, |s| 3 + s.len());
    n += props.correlation_data.as_ref().map_or(0, |s| 3 + s.len());
    n += p
        .subscription_ids
        .iter()
        .map(|id| 1 + varint_len(*id as usize))
        .sum::<usize>();
    n += props
        .user_properties
        .iter()
        .map(|(k, v)| 5 + k.len() + v.len())
        .sum::<usize>();
    n
}

/// Encodes a PUBLISH. Returns `false` (and writes nothing) if it would exceed `max_size`.
pub fn encode_publish(
    p: &OutPublish<'_>,
    version: Version,
    max_size: u32,
    out: &mut BytesMut,
) -> bool {
    if !fits_mqtt_strings(p.msg) {
        return false;
    }
    let msg = p.msg;
    let expiry = msg.remaining_expiry_secs(p.now_ms);
    let props_len = match version {
        Version::V5 => publish_props_len(p, expiry),
        Version::V311 => 0,
    };
    let topic: &[u8] = match (version, p.topic_alias) {
        (Version::V5, Some((_, false))) => b"",
        _ => msg.topic.as_bytes(),
    };
    let mut remaining = 2 + topic.len() + msg.payload.len();
    if p.qos > 0 {
        remaining += 2;
    }
    if version == Version::V5 {
        remaining += varint_len(props_len) + props_len;
    }
    if 1 + varint_len(remaining) + remaining > max_size as usize {
        return false;
    }
    out.reserve(5 + remaining);
    out.put_u8(0x30 | ((p.dup as u8) << 3) | (p.qos << 1) | p.retain as u8);
    put_varint(out, remaining);
    put_str(out, topic);
    if p.qos > 0 {
        out.put_u16(p.pkid);
    }
    if version == Version::V5 {
        put_varint(out, props_len);
        let props = &msg.props;
        if let Some(v) = props.payload_format_indicator {
            out.put_u8(0x01);
            out.put_u8(v);
        }
        if let Some(v) = expiry {
            out.put_u8(0x02);
            out.put_u32(v);
        }
        if let Some((alias, _)) = p.topic_alias {
            out.put_u8(0x23);
            out.put_u16(alias);
        }
        if let Some(v) = &props.content_type {
            out.put_u8(0x03);
            put_str(out, v.as_bytes());
        }
        if let Some(v) = &props.response_topic {
            out.put_u8(0x08);
            put_str(out, v.as_bytes());
        }
        if let Some(v) = &props.correlation_data {
            out.put_u8(0x09);
            put_str(out, v);
        }
        for id in p.subscription_ids {
            out.put_u8(0x0b);
            put_varint(out, *id as usize);
        }
        for (k, v) in &props.user_properties {
            out.put_u8(0x26);
            put_str(out, k.as_bytes());
            put_str(out, v.as_bytes());
        }
    }
    out.put_slice(&msg.payload);
    true
}

#[cfg(test)]
mod tests;
