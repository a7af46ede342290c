//! The fuzzers' seed corpus (`fuzz/corpus/<target>/seed-*`): valid inputs of
//! every kind, built with rumqttc's encoders and the store's own encoder.
//!
//! `MQBRIDGE_WRITE_FUZZ_SEEDS=1 cargo test --lib fuzz_api` rewrites them; the
//! normal run checks that every committed seed is still accepted as a whole,
//! so a format change that leaves the fuzzers starting from garbage shows up.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::mqttbytes::{Protocol, QoS as Q4};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;

use super::{connect, decode_record, encode_record, ConnectParse};
use crate::mqtt::codec::{decode, Version};
use crate::mqtt::message::{Message, MessageProps, Receipt};
use crate::store::{EntryState, QueuedEntry, SessionRecord, SubscriptionRecord};

/// Named seeds of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Byte 0 of a decode/connect input: the 1 MiB packet size limit.
const BIG_MAX: u8 = 0;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn v4(packets: &[p4::Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        p.write(&mut out, usize::MAX).expect("encode 3.1.1");
    }
    out.to_vec()
}

fn v5(packets: &[p5::Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        p.write(&mut out, None).expect("encode 5.0");
    }
    out.to_vec()
}

fn v4_publish(qos: Q4, retain: bool, dup: bool, topic: &str) -> p4::Packet {
    p4::Packet::Publish(p4::Publish {
        dup,
        qos,
        retain,
        topic: topic.into(),
        pkid: if qos == Q4::AtMostOnce { 0 } else { 7 },
        payload: Bytes::from_static(b"21.5"),
    })
}

fn v4_connect(will: bool, login: bool) -> p4::Packet {
    p4::Packet::Connect(p4::Connect {
        protocol: Protocol::V4,
        keep_alive: 30,
        client_id: "sensor-1".into(),
        clean_session: !will,
        last_will: will.then(|| p4::LastWill {
            topic: "devices/sensor-1/status".into(),
            message: Bytes::from_static(b"offline"),
            qos: Q4::AtLeastOnce,
            retain: true,
        }),
        login: login.then(|| p4::Login {
            username: "user".into(),
            password: "secret".into(),
        }),
    })
}

fn v4_streams() -> Seeds {
    use p4::Packet as P;
    vec![
        (
            "publish-qos0",
            v4(&[v4_publish(Q4::AtMostOnce, false, false, "a/b")]),
        ),
        (
            "publish-qos1-retain",
            v4(&[v4_publish(Q4::AtLeastOnce, true, false, "devices/x/temp")]),
        ),
        (
            "publish-qos2-dup",
            v4(&[v4_publish(Q4::ExactlyOnce, false, true, "$SYS/x")]),
        ),
        (
            "acks",
            v4(&[
                P::PubAck(p4::PubAck { pkid: 1 }),
                P::PubRec(p4::PubRec { pkid: 2 }),
                P::PubRel(p4::PubRel { pkid: 2 }),
                P::PubComp(p4::PubComp { pkid: 2 }),
            ]),
        ),
        (
            "subscribe",
            v4(&[P::Subscribe(p4::Subscribe {
                pkid: 3,
                filters: vec![
                    p4::SubscribeFilter {
                        path: "a/+/c".into(),
                        qos: Q4::AtLeastOnce,
                    },
                    p4::SubscribeFilter {
                        path: "$share/g/a/#".into(),
                        qos: Q4::ExactlyOnce,
                    },
                ],
            })]),
        ),
        (
            "unsubscribe",
            v4(&[P::Unsubscribe(p4::Unsubscribe {
                pkid: 4,
                topics: vec!["a/+/c".into(), "#".into()],
            })]),
        ),
        ("ping-disconnect", v4(&[P::PingReq, P::Disconnect])),
        (
            "session",
            v4(&[
                v4_publish(Q4::AtLeastOnce, false, false, "a/b"),
                P::PingReq,
                v4_publish(Q4::ExactlyOnce, false, false, "a/c"),
                P::PubRel(p4::PubRel { pkid: 7 }),
                P::Disconnect,
            ]),
        ),
    ]
}

fn v5_publish(qos: Q5, props: bool) -> p5::Packet {
    p5::Packet::Publish(p5::Publish {
        dup: false,
        qos,
        retain: props,
        topic: Bytes::from_static(b"devices/x/cmd"),
        pkid: if qos == Q5::AtMostOnce { 0 } else { 9 },
        payload: Bytes::from_static(b"{\"on\":true}"),
        properties: props.then(|| p5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(1),
            response_topic: Some("devices/x/reply".into()),
            correlation_data: Some(Bytes::from_static(b"req-1")),
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: Vec::new(),
            content_type: Some("application/json".into()),
        }),
    })
}

fn v5_disconnect() -> p5::Packet {
    p5::Packet::Disconnect(p5::Disconnect {
        reason_code: p5::DisconnectReasonCode::DisconnectWithWillMessage,
        properties: Some(p5::DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some("bye".into()),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    })
}

fn v5_connect(will: bool, login: bool) -> p5::Packet {
    let connect = p5::Connect {
        keep_alive: 30,
        client_id: "sensor-5".into(),
        clean_start: !will,
        properties: will.then(|| p5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(10),
            max_packet_size: Some(65536),
            topic_alias_max: Some(5),
            request_response_info: Some(1),
            request_problem_info: Some(1),
            user_properties: vec![("site".into(), "lab".into())],
            authentication_method: None,
            authentication_data: None,
        }),
    };
    let will = will.then(|| p5::LastWill {
        topic: Bytes::from_static(b"devices/sensor-5/status"),
        message: Bytes::from_static(b"offline"),
        qos: Q5::AtLeastOnce,
        retain: true,
        properties: Some(p5::LastWillProperties {
            delay_interval: Some(5),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(600),
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("k".into(), "v".into())],
        }),
    });
    let login = login.then(|| p5::Login {
        username: "user".into(),
        password: "secret".into(),
    });
    p5::Packet::Connect(connect, will, login)
}

fn v5_streams() -> Seeds {
    use p5::Packet as P;
    let filter = |path: &str, qos| p5::Filter {
        path: path.into(),
        qos,
        nolocal: false,
        preserve_retain: true,
        retain_forward_rule: p5::RetainForwardRule::OnNewSubscribe,
    };
    vec![
        ("publish-qos0", v5(&[v5_publish(Q5::AtMostOnce, false)])),
        (
            "publish-qos1-props",
            v5(&[v5_publish(Q5::AtLeastOnce, true)]),
        ),
        ("publish-qos2", v5(&[v5_publish(Q5::ExactlyOnce, false)])),
        (
            "acks",
            v5(&[
                P::PubAck(p5::PubAck {
                    pkid: 1,
                    reason: p5::PubAckReason::Success,
                    properties: None,
                }),
                P::PubRec(p5::PubRec {
                    pkid: 2,
                    reason: p5::PubRecReason::Success,
                    properties: None,
                }),
                P::PubRel(p5::PubRel {
                    pkid: 2,
                    reason: p5::PubRelReason::Success,
                    properties: None,
                }),
                P::PubComp(p5::PubComp {
                    pkid: 2,
                    reason: p5::PubCompReason::Success,
                    properties: None,
                }),
            ]),
        ),
        (
            "subscribe",
            v5(&[P::Subscribe(p5::Subscribe {
                pkid: 3,
                filters: vec![
                    filter("a/+/c", Q5::AtLeastOnce),
                    filter("$share/g/a/#", Q5::ExactlyOnce),
                ],
                properties: Some(p5::SubscribeProperties {
                    id: Some(42),
                    user_properties: vec![("k".into(), "v".into())],
                }),
            })]),
        ),
        (
            "unsubscribe",
            v5(&[P::Unsubscribe(p5::Unsubscribe {
                pkid: 4,
                filters: vec!["a/+/c".into()],
                properties: Some(p5::UnsubscribeProperties {
                    user_properties: vec![("k".into(), "v".into())],
                }),
            })]),
        ),
        (
            "disconnect-props",
            v5(&[P::PingReq(p5::PingReq), v5_disconnect()]),
        ),
        // DISCONNECT without properties and without a reason code (the short forms).
        ("disconnect-short", vec![0xe0, 0x01, 0x04, 0xe0, 0x00]),
        (
            "session",
            v5(&[
                v5_publish(Q5::AtLeastOnce, true),
                v5_publish(Q5::AtMostOnce, false),
                P::PubRel(p5::PubRel {
                    pkid: 9,
                    reason: p5::PubRelReason::Success,
                    properties: None,
                }),
                v5_disconnect(),
            ]),
        ),
    ]
}

fn message(props: bool) -> Message {
    Message {
        topic: "devices/x/temp".into(),
        payload: Bytes::from_static(b"21.5"),
        qos: 1,
        retain: props,
        props: if props {
            MessageProps {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
            }
        } else {
            MessageProps::default()
        },
        expires_at_ms: props.then_some(1_800_000_000_000),
        receipt: props.then(|| Receipt {
            route: "cmds".into(),
            position: "t/0/42".into(),
            correlation: None,
        }),
    }
}

/// Store seeds: byte 0 picks the type as the `store_record` target reads it.
fn store_records() -> Seeds {
    let session = SessionRecord {
        protocol: 5,
        expiry_secs: 3600,
        disconnected_at_ms: Some(1_700_000_000_000),
        subscriptions: vec![SubscriptionRecord {
            filter: "a/+/c".into(),
            qos: 1,
            no_local: true,
            retain_as_published: false,
            retain_handling: 1,
            subscription_id: Some(7),
        }],
        identity: Some("dev1".into()),
    };
    let queued = QueuedEntry {
        message: message(true),
        subscription_ids: vec![7],
        state: EntryState::Sent,
        origin: Some((3, 42)),
    };
    let tagged = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    let enc = |e: Result<Vec<u8>, _>| e.expect("encode record");
    vec![
        ("session", tagged(0, enc(encode_record(&session)))),
        ("queued", tagged(1, enc(encode_record(&queued)))),
        ("retained", tagged(2, enc(encode_record(&message(false))))),
    ]
}

fn topic_scripts() -> Seeds {
    let script = |lines: &[&str]| lines.join("\n").into_bytes();
    vec![
        (
            "wildcards",
            script(&["s0a/+/c", "s1a/#", "s2#", "a/b/c", "u1a/#", "a/x/c", "a"]),
        ),
        (
            "shared",
            script(&[
                "s0$share/g/a/#",
                "s1$share/g/+/b",
                "a/b",
                "u0$share/g/a/#",
                "a/b",
            ]),
        ),
        (
            "dollar",
            script(&["s0#", "s1+/x", "s2$SYS/#", "$SYS/x", "s3/+", "/x"]),
        ),
    ]
}

fn all_seeds() -> Vec<(&'static str, Seeds)> {
    let prefixed = |streams: Seeds, chunk: u8| {
        streams
            .into_iter()
            .map(|(name, bytes)| (name, [vec![BIG_MAX, chunk], bytes].concat()))
            .collect()
    };
    let connects = vec![
        ("v311", v4(&[v4_connect(false, false)])),
        ("v311-will-login", v4(&[v4_connect(true, true)])),
        ("v5", v5(&[v5_connect(false, false)])),
        ("v5-will-props-login", v5(&[v5_connect(true, true)])),
    ];
    let connects = connects
        .into_iter()
        .map(|(name, bytes)| (name, [vec![BIG_MAX], bytes].concat()))
        .collect();
    vec![
        ("decode_v311", prefixed(v4_streams(), 3)),
        ("decode_v5", prefixed(v5_streams(), 7)),
        ("connect", connects),
        ("topic", topic_scripts()),
        ("store_record", store_records()),
    ]
}

/// Whether `seed` is accepted whole by what its target fuzzes.
fn accepted(target: &str, seed: &[u8]) -> bool {
    let body = |skip: usize| seed.get(skip..).unwrap_or_default();
    let decodes_all = |version| {
        let mut buf = BytesMut::from(body(2));
        while !buf.is_empty() {
            if !matches!(decode(&mut buf, version, 1 << 20), Ok(Some(_))) {
                return false;
            }
        }
        true
    };
    match target {
        "decode_v311" => decodes_all(Version::V311),
        "decode_v5" => decodes_all(Version::V5),
        "connect" => matches!(
            connect(body(1), 1 << 20),
            ConnectParse::Connect {
                will: None | Some(Ok(_)),
                ..
            }
        ),
        "store_record" => match seed.first() {
            Some(0) => decode_record::<SessionRecord>(body(1)).is_ok(),
            Some(1) => decode_record::<QueuedEntry>(body(1)).is_ok(),
            Some(2) => decode_record::<Message>(body(1)).is_ok(),
            _ => false,
        },
        "topic" => std::str::from_utf8(seed).is_ok(),
        _ => false,
    }
}

#[test]
fn generated_seeds_are_accepted() {
    for (target, seeds) in all_seeds() {
        for (name, seed) in seeds {
            assert!(accepted(target, &seed), "{target}/{name}");
        }
    }
}

#[test]
fn committed_seeds_are_accepted() {
    let write = std::env::var_os("MQBRIDGE_WRITE_FUZZ_SEEDS").is_some();
    for (target, seeds) in all_seeds() {
        let dir = corpus_dir(target);
        if write {
            std::fs::create_dir_all(&dir).expect("create corpus dir");
            for (name, seed) in &seeds {
                std::fs::write(dir.join(format!("seed-{name}")), seed).expect("write seed");
            }
        }
        let mut count = 0;
        for file in std::fs::read_dir(&dir).expect("corpus dir exists") {
            let path = file.expect("read corpus dir").path();
            // Only the hand-made seeds; anything else is a local fuzzer's find.
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !name.starts_with("seed-") {
                continue;
            }
            let seed = std::fs::read(&path).expect("read seed");
            assert!(
                accepted(target, &seed),
                "{} is not accepted",
                path.display()
            );
            count += 1;
        }
        assert!(count >= seeds.len(), "{target}: {count} seeds committed");
    }
}
