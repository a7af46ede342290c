//! The uplink bridge with the embedded file backend: a device's QoS 1
//! PUBLISH is acknowledged once its JSON line is on disk.

use crate::common::*;
use mqbridge::config::{AckMode, UplinkRoute};
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
use rumqttc::{AsyncClient, Event, Packet, QoS};

fn read_lines(dir: &std::path::Path, stem: &str) -> Vec<serde_json::Value> {
    let path = dir.join("uplink").join(format!("{stem}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

#[tokio::test]
async fn telemetry_is_on_disk_when_puback_arrives() {
    let t = start().await;
    let (c, mut ev) = AsyncClient::new(opts_v4(t.addr, "dev-7", true), 100);
    for i in 0..50 {
        c.publish(
            "devices/dev-7/telemetry",
            QoS::AtLeastOnce,
            false,
            format!("m{i}"),
        )
        .await
        .unwrap();
    }
    let mut acks = 0;
    within(20, async {
        while acks < 50 {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.unwrap() {
                acks += 1;
                // Every acknowledged message is already in the file.
                assert!(read_lines(t.dir.path(), "telemetry").len() >= acks);
            }
        }
    })
    .await;
    let lines = read_lines(t.dir.path(), "telemetry");
    let payloads: Vec<&str> = lines
        .iter()
        .map(|l| l["payload"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "all messages, in order");
    assert_eq!(lines[0]["client_id"], "dev-7");
    assert_eq!(
        lines[0]["key"], "dev-7",
        "Kafka-style key defaults to the client id"
    );
    assert_eq!(lines[0]["headers"]["mqtt_topic"], "devices/dev-7/telemetry");
    assert_eq!(lines[0]["headers"]["mqtt_qos"], "1");
    // Topics outside the route's filter are not bridged: the message really
    // leaves the client (its PUBACK comes back), then a control message on
    // the route's topic does get bridged; the first must be in no file.
    c.publish("other/topic", QoS::AtLeastOnce, false, "outside")
        .await
        .unwrap();
    c.publish("devices/dev-7/telemetry", QoS::AtLeastOnce, false, "ctl")
        .await
        .unwrap();
    within(20, async {
        let mut acks = 0;
        while acks < 2 {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.unwrap() {
                acks += 1;
            }
        }
    })
    .await;
    t.gw.shutdown().await;
    let mut files = Vec::new();
    for e in std::fs::read_dir(t.dir.path().join("uplink")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains("other/topic") && !text.contains("outside"),
            "{} holds the unrouted message",
            path.display()
        );
        files.push(path);
    }
    assert_eq!(files.len(), 1, "only the route's file: {files:?}");
    let lines = read_lines(t.dir.path(), "telemetry");
    assert_eq!(lines.len(), 51, "the control message was bridged");
    assert_eq!(lines[50]["payload"], "ctl");
}

#[tokio::test]
async fn binary_payload_and_user_properties_pass_through() {
    let t = start().await;
    let (c, mut ev) = rumqttc::v5::AsyncClient::new(opts_v5(t.addr, "dev-8", true, None), 10);
    let props = PublishProperties {
        user_properties: vec![("unit".into(), "C".into())],
        content_type: Some("application/octet-stream".into()),
        ..Default::default()
    };
    let payload = vec![0u8, 159, 146, 150, 255];
    c.publish_with_properties(
        "devices/dev-8/telemetry/raw",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        payload.clone(),
        props,
    )
    .await
    .unwrap();
    within(10, async {
        loop {
            if let rumqttc::v5::Event::Incoming(P5::PubAck(a)) = ev.poll().await.unwrap() {
                assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                break;
            }
        }
    })
    .await;
    let lines = read_lines(t.dir.path(), "telemetry");
    use base64::Engine as _;
    let got = base64::engine::general_purpose::STANDARD
        .decode(lines[0]["payload_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, payload, "payload byte for byte");
    assert_eq!(lines[0]["headers"]["unit"], "C");
    assert_eq!(lines[0]["content_type"], "application/octet-stream");
    t.gw.shutdown().await;
}

/// A route whose template cannot be resolved for a message answers a 5.0
/// client with reason 0x83 and does not hold up anyone else.
#[tokio::test]
async fn unresolvable_template_is_refused_without_blocking_others() {
    let t = start_with(|cfg| {
        cfg.bridge.uplink.push(UplinkRoute {
            name: "by-user".into(),
            filter: "users/#".into(),
            backend: "file".into(),
            target: "u-{username}".into(),
            key: None,
            routing_key: None,
            ack: AckMode::Backend,
            give_up_secs: 0,
            spool_max_bytes: 1 << 30,
        });
    })
    .await;
    let (anon, mut anon_ev) =
        rumqttc::v5::AsyncClient::new(opts_v5(t.addr, "anon", true, None), 10);
    anon.publish(
        "users/x",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "a",
    )
    .await
    .unwrap();
    let reason = within(10, async {
        loop {
            if let rumqttc::v5::Event::Incoming(P5::PubAck(a)) = anon_ev.poll().await.unwrap() {
                return a.reason;
            }
        }
    })
    .await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::ImplementationSpecificError
    );

    let mut o = opts_v5(t.addr, "named", true, None);
    o.set_credentials("alice", "pw");
    let (named, mut named_ev) = rumqttc::v5::AsyncClient::new(o, 10);
    named
        .publish(
            "users/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "b",
        )
        .await
        .unwrap();
    within(10, async {
        loop {
            if let rumqttc::v5::Event::Incoming(P5::PubAck(a)) = named_ev.poll().await.unwrap() {
                assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                break;
            }
        }
    })
    .await;
    let lines = read_lines(t.dir.path(), "u-alice");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["payload"], "b");
    t.gw.shutdown().await;
}

/// A device cannot forge the gateway's headers: its own `mqtt_client_id`
/// (any case) and other `mqtt_`-prefixed user properties are dropped from
/// the bridged record and counted; its other properties pass; the user
/// name it connected with is the `mqtt_username` header.
#[tokio::test]
async fn device_cannot_forge_reserved_headers() {
    let t = start_with(|cfg| cfg.admin.listen = "127.0.0.1:0".into()).await;
    let mut o = opts_v5(t.addr, "dev-b", true, None);
    o.set_credentials("devB", "pw");
    let (c, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    let props = PublishProperties {
        user_properties: vec![
            ("mqtt_client_id".into(), "dev-a".into()),
            ("MQTT_Username".into(), "devA".into()),
            ("mqtt_topic".into(), "devices/dev-a/telemetry".into()),
            ("site".into(), "lab".into()),
        ],
        ..Default::default()
    };
    c.publish_with_properties(
        "devices/dev-b/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "x",
        props,
    )
    .await
    .unwrap();
    within(10, async {
        loop {
            if let rumqttc::v5::Event::Incoming(P5::PubAck(a)) = ev.poll().await.unwrap() {
                assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                break;
            }
        }
    })
    .await;
    let text = std::fs::read_to_string(t.dir.path().join("uplink/telemetry.jsonl")).unwrap();
    assert!(
        !text.contains("dev-a"),
        "forged value reached the backend: {text}"
    );
    assert!(
        !text.contains("devA"),
        "forged value reached the backend: {text}"
    );
    let lines = read_lines(t.dir.path(), "telemetry");
    let h = lines[0]["headers"].as_object().unwrap();
    assert_eq!(h["mqtt_client_id"], "dev-b");
    assert_eq!(h["mqtt_topic"], "devices/dev-b/telemetry");
    assert_eq!(h["mqtt_username"], "devB");
    assert_eq!(h["site"], "lab");
    assert!(!h.contains_key("MQTT_Username"), "{h:?}");
    assert_eq!(
        scrape(&t, "mqbridge_bridge_reserved_properties_dropped_total").await,
        Some(3.0)
    );
    t.gw.shutdown().await;
}
