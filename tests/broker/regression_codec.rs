//! Regression tests for bugs found in review (each name says the bug it guards against).
//! Review: outgoing PUBLISH encoding of strings longer than 65535 bytes.

use bytes::{Bytes, BytesMut};
use mqbridge::mqtt::codec::{encode_publish, OutPublish, Version};
use mqbridge::mqtt::message::{Message, MessageProps};

/// A downlink command may carry headers of any length (the downlink size
/// check counts topic + payload only); they become MQTT 5 user properties
/// whose 16-bit length prefix is silently truncated by `put_str`.
#[test]
fn review_long_user_property_is_not_encoded_truncated() {
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
        topic_alias: None,
    };
    let mut out = BytesMut::new();
    // It cannot be expressed in MQTT: not written at all (the delivery is
    // discarded and counted, like one over the client's maximum packet size).
    assert!(
        !encode_publish(&p, Version::V5, u32::MAX, &mut out),
        "refused"
    );
    assert!(out.is_empty(), "nothing written");
}
