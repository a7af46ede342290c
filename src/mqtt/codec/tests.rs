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
