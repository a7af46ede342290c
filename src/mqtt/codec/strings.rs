//! One check for every string that comes off the wire, both versions.
//!
//! rumqttc's parser already refuses ill-formed UTF-8 in the fields it reads as
//! `String` (`String::from_utf8`, never lossy; UTF-16 surrogates are
//! ill-formed UTF-8 and refused with it). The 5.0 PUBLISH topic and will topic
//! are raw bytes there and are checked here. On top of well-formedness we
//! refuse, as Mosquitto 2.x does (`mosquitto_validate_utf8`):
//! - U+0000 (MQTT-1.5.4-2, 3.1.1 MQTT-1.5.3-2: MUST be treated as malformed);
//! - the control characters U+0001..U+001F and U+007F..U+009F and the
//!   non-characters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF): the spec says SHOULD
//!   NOT and lets a receiver treat them as malformed (5.0 section 1.5.4). They
//!   would otherwise reach log lines, backend headers and file names.
//!
//! Binary fields (password, correlation data, payload) are not strings and
//! are not checked. A refusal is a Malformed Packet (5.0 0x81).

use rumqttc::v5::mqttbytes::v5 as p5;

use super::DecodeError;

/// Why a string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadString {
    NotUtf8,
    Nul,
    Control,
    NonCharacter,
}

impl BadString {
    fn describe(self) -> &'static str {
        match self {
            BadString::NotUtf8 => "not well-formed UTF-8",
            BadString::Nul => "contains U+0000",
            BadString::Control => "contains a control character",
            BadString::NonCharacter => "contains a Unicode non-character",
        }
    }
}

/// Checks one UTF-8 string against the rules above.
pub fn check_str(s: &str) -> Result<(), BadString> {
    if s.is_ascii() {
        // Fast path: only C0 controls (U+0000 among them) and DEL are possible.
        return match s.bytes().find(|b| *b < 0x20 || *b == 0x7f) {
            Some(0) => Err(BadString::Nul),
            Some(_) => Err(BadString::Control),
            None => Ok(()),
        };
    }
    for c in s.chars() {
        let cp = c as u32;
        if cp == 0 {
            return Err(BadString::Nul);
        }
        if cp < 0x20 || (0x7f..=0x9f).contains(&cp) {
            return Err(BadString::Control);
        }
        if (0xfdd0..=0xfdef).contains(&cp) || cp & 0xfffe == 0xfffe {
            return Err(BadString::NonCharacter);
        }
    }
    Ok(())
}

/// Checks a string field that the parser left as bytes.
pub fn check_bytes(b: &[u8]) -> Result<(), BadString> {
    let s = std::str::from_utf8(b).map_err(|_| BadString::NotUtf8)?;
    check_str(s)
}

fn field(what: &'static str, r: Result<(), BadString>) -> Result<(), DecodeError> {
    r.map_err(|why| DecodeError::InvalidString {
        field: what,
        why: why.describe(),
    })
}

fn opt(what: &'static str, s: &Option<String>) -> Result<(), DecodeError> {
    match s {
        Some(s) => field(what, check_str(s)),
        None => Ok(()),
    }
}

fn user_props(props: &[(String, String)]) -> Result<(), DecodeError> {
    for (k, v) in props {
        field("user property name", check_str(k))?;
        field("user property value", check_str(v))?;
    }
    Ok(())
}

/// Every string of a decoded client-to-server packet, and the packet rules
/// that rumqttc does not enforce (each cites its section).
pub fn validate(p: &p5::Packet) -> Result<(), DecodeError> {
    use p5::Packet as P;
    match p {
        P::Connect(c, will, login) => {
            field("client identifier", check_str(&c.client_id))?;
            if let Some(props) = &c.properties {
                user_props(&props.user_properties)?;
                opt("authentication method", &props.authentication_method)?;
            }
            if let Some(w) = will {
                field("will topic", check_bytes(&w.topic))?;
                if let Some(props) = &w.properties {
                    opt("content type", &props.content_type)?;
                    opt("response topic", &props.response_topic)?;
                    user_props(&props.user_properties)?;
                }
            }
            if let Some(l) = login {
                field("user name", check_str(&l.username))?;
            }
        }
        P::Publish(p) => {
            field("topic name", check_bytes(&p.topic))?;
            if let Some(props) = &p.properties {
                opt("content type", &props.content_type)?;
                opt("response topic", &props.response_topic)?;
                user_props(&props.user_properties)?;
                // 5.0 3.3.4: a PUBLISH from a client MUST NOT carry a
                // Subscription Identifier (MQTT-3.3.4-6).
                if !props.subscription_identifiers.is_empty() {
                    return Err(DecodeError::Protocol(
                        "subscription identifier in a PUBLISH from a client",
                    ));
                }
            }
        }
        P::Subscribe(s) => {
            for f in &s.filters {
                field("topic filter", check_str(&f.path))?;
            }
            if let Some(props) = &s.properties {
                user_props(&props.user_properties)?;
                // 5.0 3.8.2.1.2: "It is a Protocol Error if the Subscription
                // Identifier has a value of 0" (MQTT-3.8.2-1 range 1..=268435455).
                if props.id == Some(0) {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
            }
            empty_filters(s.filters.iter().map(|f| f.path.as_str()))?;
        }
        P::Unsubscribe(u) => {
            for f in &u.filters {
                field("topic filter", check_str(f))?;
            }
            if let Some(props) = &u.properties {
                user_props(&props.user_properties)?;
            }
            empty_filters(u.filters.iter().map(String::as_str))?;
        }
        P::PubAck(a) => {
            if let Some(p) = &a.properties {
                ack_props(&p.reason_string, &p.user_properties)?;
            }
        }
        P::PubRec(a) => {
            if let Some(p) = &a.properties {
                ack_props(&p.reason_string, &p.user_properties)?;
            }
        }
        P::PubRel(a) => {
            if let Some(p) = &a.properties {
                ack_props(&p.reason_string, &p.user_properties)?;
            }
        }
        P::PubComp(a) => {
            if let Some(p) = &a.properties {
                ack_props(&p.reason_string, &p.user_properties)?;
            }
        }
        P::Disconnect(d) => {
            if let Some(props) = &d.properties {
                opt("reason string", &props.reason_string)?;
                opt("server reference", &props.server_reference)?;
                user_props(&props.user_properties)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Topic filters MUST be at least one character long (MQTT-4.7.3-1). The
/// packet parses, so this is a Protocol Error (0x82), not a Malformed Packet.
fn empty_filters<'a>(mut filters: impl Iterator<Item = &'a str>) -> Result<(), DecodeError> {
    if filters.any(str::is_empty) {
        return Err(DecodeError::Protocol("empty topic filter"));
    }
    Ok(())
}

fn ack_props(reason: &Option<String>, user: &[(String, String)]) -> Result<(), DecodeError> {
    opt("reason string", reason)?;
    user_props(user)
}
