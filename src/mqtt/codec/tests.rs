use super::*;
use bytes::Bytes;

fn connect_bytes(level: u8) -> Vec<u8> {
    // CONNECT, protocol "MQTT", level, flags clean, keepalive 60, client id "c"
    vec![
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 1, b'c',
    ]
}

#[test]
fn sniffs_versions() {
    let mut v5 = connect_bytes(5);
    // 5.0 CONNECT has a properties length byte after keepalive.
    v5.insert(12, 0);
    v5[1] += 1;
    assert_eq!(
        sniff_connect(&connect_bytes(4), 1024),
        Ok(Some(Version::V311))
    );
    assert_eq!(sniff_connect(&v5, 1024), Ok(Some(Version::V5)));
    assert_eq!(sniff_connect(&connect_bytes(4)[..5], 1024), Ok(None));
    assert_eq!(
        sniff_connect(&connect_bytes(3), 1024),
        Err(DecodeError::UnsupportedProtocol(3))
    );
    assert_eq!(
        sniff_connect(&[0xc0, 0x00], 1024),
        Err(DecodeError::Protocol("first packet is not CONNECT"))
    );
}

#[test]
fn decodes_v4_connect_into_v5_model() {
    let mut buf = BytesMut::from(&connect_bytes(4)[..]);
    let p = decode(&mut buf, Version::V311, 1024).unwrap().unwrap();
    match p {
        p5::Packet::Connect(c, None, None) => {
            assert_eq!(c.client_id, "c");
            assert!(c.clean_start);
            assert_eq!(c.keep_alive, 60);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(buf.is_empty());
}

#[test]
fn refuses_oversized_remaining_length_before_buffering() {
    // PUBLISH announcing 2 MB with only the header present.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x01][..]);
    assert!(matches!(
        decode(&mut buf, Version::V311, 1024),
        Err(DecodeError::TooLarge { .. })
    ));
    let mut bad = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
    assert!(matches!(
        decode(&mut bad, Version::V311, u32::MAX),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn refuses_bad_flags_and_qos3() {
    // SUBSCRIBE with flags 0 instead of 0b0010.
    let mut buf = BytesMut::from(&[0x80u8, 0x06, 0, 1, 0, 1, b'a', 0][..]);
    assert!(matches!(
        decode(&mut buf, Version::V311, 1024),
        Err(DecodeError::Malformed(_))
    ));
    let mut q3 = BytesMut::from(&[0x36u8, 0x05, 0, 1, b'a', 0, 1][..]);
    assert!(matches!(
        decode(&mut q3, Version::V311, 1024),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn truncated_packets_wait_for_more() {
    let full = connect_bytes(4);
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(
            decode(&mut buf, Version::V311, 1024),
            Ok(None),
            "cut at {cut}"
        );
    }
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random frames with valid framing and random bodies.
    let mut x: u32 = 12345;
    for _ in 0..20000 {
        let mut frame = Vec::new();
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        let kind = ((x >> 16) % 16) as u8;
        let flags = if matches!(kind, 6 | 8 | 10) { 2 } else { 0 };
        let len = ((x >> 8) % 40) as u8;
        frame.push((kind << 4) | flags);
        frame.push(len);
        for _ in 0..len {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            frame.push((x >> 16) as u8);
        }
        for v in [Version::V311, Version::V5] {
            let mut buf = BytesMut::from(&frame[..]);
            let _ = decode(&mut buf, v, 1024);
        }
    }
}

#[test]
fn publish_encoding_round_trips_through_rumqttc() {
    let msg = Message {
        topic: "a/b".into(),
        payload: Bytes::from_static(b"hello"),
        qos: 1,
        retain: false,
        props: crate::mqtt::message::MessageProps {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"id")),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        },
        expires_at_ms: Some(10_500),
        receipt: None,
    };
    let out = OutPublish {
        msg: &msg,
        qos: 1,
        retain: true,
        dup: true,
        pkid: 7,
        subscription_ids: &[3, 300],
        now_ms: 1000,
        topic_alias: None,
    };
    let mut buf = BytesMut::new();
    assert!(encode_publish(&out, Version::V5, 1 << 20, &mut buf));
    let p = p5::Packet::read(&mut buf, None).unwrap();
    let p5::Packet::Publish(p) = p else {
        panic!("not a publish")
    };
    assert_eq!(
        (p.dup, p.retain, p.pkid, &p.topic[..], &p.payload[..]),
        (true, true, 7, &b"a/b"[..], &b"hello"[..])
    );
    let props = p.properties.unwrap();
    assert_eq!(props.message_expiry_interval, Some(10));
    assert_eq!(props.subscription_identifiers, vec![3, 300]);
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        vec![("k".to_string(), "v".to_string())]
    );

    let mut buf = BytesMut::new();
    assert!(encode_publish(&out, Version::V311, 1 << 20, &mut buf));
    let p = p4::Packet::read(&mut buf, 1 << 20).unwrap();
    let p4::Packet::Publish(p) = p else {
        panic!("not a publish")
    };
    assert_eq!(
        (p.topic.as_str(), p.pkid, p.qos),
        ("a/b", 7, Q4::AtLeastOnce)
    );
    assert!(
        !encode_publish(&out, Version::V311, 10, &mut BytesMut::new()),
        "over the client's maximum"
    );
}

#[test]
fn short_v5_disconnect_forms() {
    for (bytes, with_will) in [
        (&[0xe0u8, 0x00][..], false),
        (&[0xe0, 0x01, 0x04][..], true),
        (&[0xe0, 0x01, 0x00][..], false),
    ] {
        let mut buf = BytesMut::from(bytes);
        let Some(p5::Packet::Disconnect(d)) = decode(&mut buf, Version::V5, 1024).unwrap() else {
            panic!("not a disconnect")
        };
        assert_eq!(
            d.reason_code == p5::DisconnectReasonCode::DisconnectWithWillMessage,
            with_will
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn disconnect_encoding_is_well_formed() {
    for why in [None, Some("bad topic"), Some("x".repeat(1000).as_str())] {
        let mut out = BytesMut::new();
        encode_disconnect(0x8e, why, &mut out);
        assert_eq!(out[0], 0xe0);
        let Some(p5::Packet::Disconnect(d)) =
            decode(&mut out.clone(), Version::V5, 1 << 20).unwrap()
        else {
            panic!("not a disconnect")
        };
        assert_eq!(d.reason_code, p5::DisconnectReasonCode::SessionTakenOver);
        if let Some(w) = why {
            let got = d
                .properties
                .and_then(|p| p.reason_string)
                .unwrap_or_default();
            assert!(w.starts_with(&got) && !got.is_empty());
        }
    }
    let mut out = BytesMut::new();
    encode_disconnect(0x8e, None, &mut out);
    assert_eq!(&out[..], &[0xe0, 0x02, 0x8e, 0x00]);
}

#[test]
fn outgoing_topic_alias_is_encoded_with_and_without_the_topic() {
    let msg = Message {
        topic: "devices/dev-1/commands".into(),
        payload: Bytes::from_static(b"x"),
        qos: 1,
        retain: false,
        props: Default::default(),
        expires_at_ms: None,
        receipt: None,
    };
    for (with_topic, topic) in [(true, &b"devices/dev-1/commands"[..]), (false, &b""[..])] {
        let out = OutPublish {
            msg: &msg,
            qos: 1,
            retain: false,
            dup: false,
            pkid: 9,
            subscription_ids: &[],
            now_ms: 0,
            topic_alias: Some((2, with_topic)),
        };
        let mut buf = BytesMut::new();
        assert!(encode_publish(&out, Version::V5, 1 << 20, &mut buf));
        let p5::Packet::Publish(p) = p5::Packet::read(&mut buf, None).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(&p.topic[..], topic);
        assert_eq!(p.properties.unwrap().topic_alias, Some(2));
        // 3.1.1 has no aliases: the topic always goes out.
        let mut buf = BytesMut::new();
        assert!(encode_publish(&out, Version::V311, 1 << 20, &mut buf));
        let p4::Packet::Publish(p) = p4::Packet::read(&mut buf, 1 << 20).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(&p.topic[..], "devices/dev-1/commands");
    }
}

#[test]
fn string_rules() {
    use strings::{check_bytes, check_str, BadString};
    for ok in ["", "a/b", "é/日本/🙂", "$SYS/x", "tab-free ~"] {
        assert_eq!(check_str(ok), Ok(()), "{ok:?}");
    }
    assert_eq!(check_str("a\0b"), Err(BadString::Nul));
    assert_eq!(check_str("é\0"), Err(BadString::Nul));
    for bad in ["a\tb", "\n", "\u{1f}", "\u{7f}", "é\u{80}", "\u{9f}"] {
        assert_eq!(check_str(bad), Err(BadString::Control), "{bad:?}");
    }
    for bad in ["\u{fdd0}", "\u{fdef}", "\u{fffe}", "\u{ffff}", "\u{10ffff}"] {
        assert_eq!(check_str(bad), Err(BadString::NonCharacter), "{bad:?}");
    }
    assert_eq!(check_str("\u{a0}\u{fdcf}\u{fffd}"), Ok(()));
    // Ill-formed UTF-8, including an encoded surrogate (U+D800) and an
    // overlong NUL (C0 80), is refused, never converted lossily.
    for bad in [&b"\xff"[..], b"\xed\xa0\x80", b"\xc0\x80", b"a\xc3"] {
        assert_eq!(check_bytes(bad), Err(BadString::NotUtf8), "{bad:?}");
    }
}

/// A 5.0 SUBSCRIBE body: packet id 1, `props`, one filter with QoS 1.
fn subscribe_v5(props: &[u8], filter: &[u8]) -> BytesMut {
    let mut body = vec![0, 1, props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter);
    body.push(1);
    let mut p = vec![0x82, body.len() as u8];
    p.extend(body);
    BytesMut::from(&p[..])
}

#[test]
fn decode_refuses_bad_strings_and_protocol_values() {
    let mut ok = subscribe_v5(&[0x0b, 5], b"a/+");
    assert!(decode(&mut ok, Version::V5, 1024).unwrap().is_some());
    // Subscription Identifier 0: Protocol Error (5.0 3.8.2.1.2).
    let mut id0 = subscribe_v5(&[0x0b, 0], b"a/+");
    assert_eq!(
        decode(&mut id0, Version::V5, 1024),
        Err(DecodeError::Protocol("subscription identifier 0"))
    );
    let mut empty = subscribe_v5(&[], b"");
    assert_eq!(
        decode(&mut empty, Version::V5, 1024),
        Err(DecodeError::Protocol("empty topic filter"))
    );
    let mut nul = subscribe_v5(&[], b"a/\0");
    assert!(matches!(
        decode(&mut nul, Version::V5, 1024),
        Err(DecodeError::InvalidString { .. })
    ));
    // 3.1.1 SUBSCRIBE with NUL in the filter, and PUBLISH with NUL in the topic.
    let mut sub4 = BytesMut::from(&[0x82u8, 8, 0, 1, 0, 3, b'a', 0, b'b', 0][..]);
    assert!(matches!(
        decode(&mut sub4, Version::V311, 1024),
        Err(DecodeError::InvalidString { .. })
    ));
    let mut pub4 = BytesMut::from(&[0x30u8, 5, 0, 3, b'a', 0, b'b'][..]);
    assert!(matches!(
        decode(&mut pub4, Version::V311, 1024),
        Err(DecodeError::InvalidString { .. })
    ));
    // 5.0 PUBLISH: the topic is bytes in the parser; a control character.
    let mut pub5 = BytesMut::from(&[0x30u8, 6, 0, 3, b'a', 0x1b, b'b', 0][..]);
    assert!(matches!(
        decode(&mut pub5, Version::V5, 1024),
        Err(DecodeError::InvalidString { .. })
    ));
    // A user property value with NUL.
    let mut up = BytesMut::from(&[0x30u8, 12, 0, 1, b'a', 7, 0x26, 0, 1, b'k', 0, 1, 0, b'x'][..]);
    assert!(matches!(
        decode(&mut up, Version::V5, 1024),
        Err(DecodeError::InvalidString { .. })
    ));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Topic names within the string rules (no wildcards, no controls).
    fn topic() -> impl Strategy<Value = String> {
        "[a-z0-9é日 $_-]{1,8}(/[a-z0-9é日 _-]{0,8}){0,6}"
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 é日/:;=-]{0,16}"
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            topic(),
            prop::collection::vec(any::<u8>(), 0..64),
            prop::option::of(text()),
            prop::option::of(topic()),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            prop::collection::vec((text(), text()), 0..3),
        )
            .prop_map(|(topic, payload, ct, rt, cd, up)| Message {
                topic,
                payload: payload.into(),
                qos: 0,
                retain: false,
                props: crate::mqtt::message::MessageProps {
                    payload_format_indicator: None,
                    content_type: ct,
                    response_topic: rt,
                    correlation_data: cd.map(Bytes::from),
                    user_properties: up,
                },
                expires_at_ms: None,
                receipt: None,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// encode_publish -> decode gives back every field, both versions.
        #[test]
        fn publish_round_trips(
            msg in message(),
            qos in 0u8..=2,
            retain: bool,
            dup: bool,
            pkid in 1u16..,
            v5: bool,
        ) {
            let version = if v5 { Version::V5 } else { Version::V311 };
            let out = OutPublish { msg: &msg, qos, retain, dup, pkid, subscription_ids: &[], now_ms: 0, topic_alias: None };
            let mut buf = BytesMut::new();
            prop_assert!(encode_publish(&out, version, 1 << 20, &mut buf));
            let Some(p5::Packet::Publish(p)) = decode(&mut buf, version, 1 << 20).unwrap() else {
                panic!("not a PUBLISH");
            };
            prop_assert!(buf.is_empty());
            prop_assert_eq!(&p.topic[..], msg.topic.as_bytes());
            prop_assert_eq!(&p.payload[..], &msg.payload[..]);
            prop_assert_eq!((qos_u8(p.qos), p.retain, p.dup), (qos, retain, dup));
            prop_assert_eq!(p.pkid, if qos > 0 { pkid } else { 0 });
            let props = p.properties.unwrap_or_default();
            if v5 {
                prop_assert_eq!(props.content_type, msg.props.content_type.clone());
                prop_assert_eq!(props.response_topic, msg.props.response_topic.clone());
                prop_assert_eq!(props.correlation_data, msg.props.correlation_data.clone());
                prop_assert_eq!(props.user_properties, msg.props.user_properties.clone());
            } else {
                prop_assert_eq!(props, p5::PublishProperties::default());
            }
        }

        /// A SUBSCRIBE written by rumqttc's client side decodes to the same
        /// filters and options (5.0) / filters and QoS (3.1.1).
        #[test]
        fn subscribe_round_trips(
            filters in prop::collection::vec((topic(), 0u8..=2, any::<bool>(), any::<bool>()), 1..5),
            pkid in 1u16..,
            id in prop::option::of(1usize..268_435_455),
            v5: bool,
        ) {
            let mut buf = BytesMut::new();
            let want: Vec<p5::Filter> = filters
                .iter()
                .map(|(f, q, nl, rap)| p5::Filter {
                    path: f.clone(),
                    qos: qos_from(*q),
                    nolocal: v5 && *nl,
                    preserve_retain: v5 && *rap,
                    retain_forward_rule: p5::RetainForwardRule::OnEverySubscribe,
                })
                .collect();
            if v5 {
                let s = p5::Subscribe {
                    pkid,
                    filters: want.clone(),
                    properties: id.map(|id| p5::SubscribeProperties { id: Some(id), user_properties: vec![] }),
                };
                p5::Packet::Subscribe(s).write(&mut buf, None).unwrap();
            } else {
                let s = p4::Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|(f, q, _, _)| p4::SubscribeFilter::new(f.clone(), q4(qos_from(*q))))
                        .collect(),
                };
                p4::Packet::Subscribe(s).write(&mut buf, usize::MAX).unwrap();
            }
            let version = if v5 { Version::V5 } else { Version::V311 };
            let Some(p5::Packet::Subscribe(s)) = decode(&mut buf, version, 1 << 20).unwrap() else {
                panic!("not a SUBSCRIBE");
            };
            prop_assert_eq!(s.pkid, pkid);
            prop_assert_eq!(s.filters, want);
            if v5 {
                prop_assert_eq!(s.properties.and_then(|p| p.id), id);
            }
        }

        /// A CONNECT with will and login written by rumqttc's client side
        /// decodes to the same fields, both versions.
        #[test]
        fn connect_round_trips(
            client_id in "[a-zA-Z0-9é_-]{0,23}",
            keep_alive: u16,
            clean: bool,
            will in prop::option::of((topic(), prop::collection::vec(any::<u8>(), 0..32), 0u8..=2, any::<bool>())),
            login in prop::option::of(("[a-z0-9é]{1,12}", "[ -~]{0,12}")),
            v5: bool,
        ) {
            let mut buf = BytesMut::new();
            if v5 {
                let c = p5::Connect { keep_alive, client_id: client_id.clone(), clean_start: clean, properties: None };
                let w = will.clone().map(|(t, m, q, r)| p5::LastWill {
                    topic: t.into_bytes().into(), message: m.into(), qos: qos_from(q), retain: r, properties: None,
                });
                let l = login.clone().map(|(u, p)| p5::Login { username: u, password: p });
                p5::Packet::Connect(c, w, l).write(&mut buf, None).unwrap();
            } else {
                let c = p4::Connect {
                    protocol: rumqttc::mqttbytes::Protocol::V4,
                    keep_alive,
                    client_id: client_id.clone(),
                    clean_session: clean,
                    last_will: will.clone().map(|(t, m, q, r)| p4::LastWill {
                        topic: t, message: m.into(), qos: q4(qos_from(q)), retain: r,
                    }),
                    login: login.clone().map(|(u, p)| p4::Login { username: u, password: p }),
                };
                p4::Packet::Connect(c).write(&mut buf, usize::MAX).unwrap();
            }
            let version = if v5 { Version::V5 } else { Version::V311 };
            let Some(p5::Packet::Connect(c, w, l)) = decode(&mut buf, version, 1 << 20).unwrap() else {
                panic!("not a CONNECT");
            };
            prop_assert_eq!((c.client_id, c.keep_alive, c.clean_start), (client_id, keep_alive, clean));
            let got_will = w.map(|w| (String::from_utf8(w.topic.to_vec()).unwrap(), w.message.to_vec(), qos_u8(w.qos), w.retain));
            prop_assert_eq!(got_will, will);
            prop_assert_eq!(l.map(|l| (l.username, l.password)), login);
        }
    }
}
