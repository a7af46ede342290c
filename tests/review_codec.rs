//! Review: outgoing PUBLISH encoding of strings longer than 65535 bytes.

use bytes::{Bytes, BytesMut};
use mqbridge::mqtt::codec::{encode_publish, OutPublish, Version};
use mqbridge::mqtt::message::{Message, MessageProps};
use rumqttc::v5::mqttbytes::v5 as p5;

/// A downlink command may carry headers of any length (the downlink size
/// check counts topic + payload only); they become MQTT 5 user properties
/// whose 16-bit length prefix is silently truncated by `put_str`.
#[test]
fn review_long_user_property_encodes_malformed_publish() {
    let value = "v".repeat(70_000);
    let msg = Message {
        topic: "devices/d1/commands".into(),
        payload: Bytes::from_static(b"cmd"),
        qos: 1,
        retain: false,
        props: MessageProps {
            user_properties: vec![("k".into(), value.clone())],
            ..Default::default()
        },
        expires_at_ms: None,
        receipt: None,
    };
    let p = OutPublish {
        msg: &msg,
        qos: 1,
        retain: false,
        dup: false,
        pkid: 1,
        subscription_ids: &[],
        now_ms: 0,
    };
    let mut out = BytesMut::new();
    assert!(encode_publish(&p, Version::V5, u32::MAX, &mut out), "written");
    let parsed = p5::Packet::read(&mut out, None);
    match parsed {
        Ok(p5::Packet::Publish(p)) => {
            let props = p.properties.unwrap_or_default();
            assert_eq!(
                props.user_properties,
                vec![("k".to_string(), value)],
                "user property mangled; payload now {} bytes",
                p.payload.len()
            );
        }
        other => panic!("device cannot parse the PUBLISH: {other:?}"),
    }
}
