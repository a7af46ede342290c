//! Routing features: shared subscriptions, `$` topics, and the MQTT 5.0
//! extras (message expiry, No Local, subscription identifiers, property
//! pass-through, topic aliases, assigned client identifiers).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::QoS;

fn props() -> PublishProperties {
    PublishProperties::default()
}

// ----- 8. shared subscriptions ------------------------------------------------

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_exactly_one_member() {
    init_tracing();
    let t = start().await;
    let mut m1 = b4::connect(opts_v4(t.addr, "share-1", true)).await;
    let mut m2 = b5::connect(opts_v5(t.addr, "share-2", true, None)).await;
    m1.subscribe("$share/g/sh/#", QoS::AtLeastOnce).await;
    m2.subscribe("$share/g/sh/#", V5QoS::AtLeastOnce).await;

    let sent = b4::numbered("s", 20);
    b4::publish_all(t.addr, "sh/x", QoS::AtLeastOnce, &sent).await;

    // Collect from both members until 20 arrived in total (or time runs out).
    let mut a: Vec<String> = Vec::new();
    let mut b: Vec<String> = Vec::new();
    within(10, async {
        while a.len() + b.len() < 20 {
            tokio::select! {
                Some(p) = m1.publishes.recv() => a.extend(b4::payloads(&[p])),
                Some(p) = m2.publishes.recv() => b.extend(b5::payloads(&[p])),
            }
        }
    })
    .await;
    a.extend(b4::payloads(&m1.until_control().await));
    b.extend(b5::payloads(&m2.until_control().await));

    let sa: HashSet<&String> = a.iter().collect();
    let sb: HashSet<&String> = b.iter().collect();
    assert_eq!(sa.len(), a.len(), "member 1 got duplicates: {a:?}");
    assert_eq!(sb.len(), b.len(), "member 2 got duplicates: {b:?}");
    let both: Vec<_> = sa.intersection(&sb).collect();
    assert!(both.is_empty(), "delivered to both members: {both:?}");
    let all: HashSet<&String> = sa.union(&sb).copied().collect();
    let expected: HashSet<&String> = sent.iter().collect();
    assert_eq!(all, expected, "every message delivered to some member");
    m1.disconnect().await;
    m2.disconnect().await;
    t.gw.shutdown().await;
}

/// MQTT 5.0 section 4.8.2: a client with a shared and a non-shared
/// subscription matching a message gets a copy through its own subscription,
/// and the group's copy goes to one member, which may be this client again.
#[tokio::test]
async fn shared_and_normal_subscription_of_one_client_both_deliver_v5() {
    init_tracing();
    let t = start().await;
    // Subscription identifiers tell which subscription each copy came through.
    const GROUP: usize = 1;
    const OWN: usize = 2;
    let mut c = b5::connect(opts_v5(t.addr, "share-own", true, None)).await;
    c.subscribe_with(
        Filter::new("$share/g2/own/t", V5QoS::AtLeastOnce),
        Some(GROUP),
    )
    .await;
    c.subscribe_with(Filter::new("own/t", V5QoS::AtLeastOnce), Some(OWN))
        .await;
    let mut other = b5::connect(opts_v5(t.addr, "share-other", true, None)).await;
    other
        .subscribe_with(
            Filter::new("$share/g2/own/t", V5QoS::AtLeastOnce),
            Some(GROUP),
        )
        .await;

    let sent = b4::numbered("o", 4);
    b4::publish_all(t.addr, "own/t", QoS::AtLeastOnce, &sent).await;
    // A control message published after them: once both its copies (normal +
    // group) arrived, any extra copy of the earlier ones would have too.
    b4::publish_all(t.addr, "own/t", QoS::AtLeastOnce, &["ctl".to_string()]).await;
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    let ctl_copies = |v: &[Publish]| v.iter().filter(|p| p.payload.as_ref() == b"ctl").count();
    within(10, async {
        while ctl_copies(&mine) + ctl_copies(&theirs) < 2 {
            tokio::select! {
                Some(p) = c.publishes.recv() => mine.push(p),
                Some(p) = other.publishes.recv() => theirs.push(p),
            }
        }
    })
    .await;
    while let Ok(p) = c.publishes.try_recv() {
        mine.push(p);
    }
    while let Ok(p) = other.publishes.try_recv() {
        theirs.push(p);
    }
    let via = |v: &[Publish], id: usize| -> Vec<String> {
        let mut out: Vec<String> = v
            .iter()
            .filter(|p| {
                p.properties
                    .as_ref()
                    .is_some_and(|pr| pr.subscription_identifiers == [id])
            })
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        out.sort();
        out
    };
    let with_ctl = |mut v: Vec<String>| {
        v.push("ctl".to_string());
        v.sort();
        v
    };
    assert_eq!(
        via(&mine, OWN),
        with_ctl(sent.clone()),
        "each once through the normal subscription"
    );
    let mut group = via(&mine, GROUP);
    group.extend(via(&theirs, GROUP));
    group.sort();
    assert_eq!(group, with_ctl(sent.clone()), "each once through the group");
    assert!(
        via(&theirs, OWN).is_empty(),
        "the other member has no normal subscription"
    );
    assert_eq!(
        mine.len() + theirs.len(),
        10,
        "no copy without its subscription identifier: {:?} / {:?}",
        b5::payloads(&mine),
        b5::payloads(&theirs)
    );
    c.disconnect().await;
    other.disconnect().await;
    t.gw.shutdown().await;
}

// ----- 9a. message expiry -------------------------------------------------------

#[tokio::test]
async fn expired_message_not_delivered_to_offline_session_v5() {
    init_tracing();
    let t = start().await;
    let mut sub = b5::connect(opts_v5(t.addr, "mexp", false, Some(60))).await;
    sub.subscribe("mexp/t", V5QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut p = b5::connect(opts_v5(t.addr, "mexp-pub", true, None)).await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..props()
    };
    p.publish_with("mexp/t", V5QoS::AtLeastOnce, false, b"short", short)
        .await;
    p.publish("mexp/t", V5QoS::AtLeastOnce, false, b"forever")
        .await;
    let long = PublishProperties {
        message_expiry_interval: Some(600),
        ..props()
    };
    p.publish_with("mexp/t", V5QoS::AtLeastOnce, false, b"long", long)
        .await;
    p.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut sub = b5::connect(opts_v5(t.addr, "mexp", false, Some(60))).await;
    assert!(sub.session_present());
    let mut got = sub.expect_publishes(2).await;
    got.extend(sub.until_control().await);
    assert_eq!(
        b5::payloads(&got),
        ["forever", "long"],
        "the expired one is gone"
    );
    assert_eq!(
        got[0]
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval),
        None,
        "no expiry stays no expiry"
    );
    let left = got[1]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining expiry is sent");
    assert!(
        (1..600).contains(&left),
        "remaining expiry is lowered by the time waited: {left}"
    );
    sub.disconnect().await;
    t.gw.shutdown().await;
}

// ----- 10. $ topics, No Local, subscription ids, properties --------------------

/// Topics starting with `$` are the server's (MQTT 4.7.2): a client's
/// PUBLISH on one is refused even with no ACL rule (3.1.1: acknowledged and
/// dropped), so not even an explicit `$` filter receives it. That wildcards
/// at the first level never match `$` topics (MQTT-4.7.2-1) is tested on the
/// subscription tree (`mqtt::topic` tests), since no client can publish one.
#[tokio::test]
async fn clients_cannot_publish_dollar_topics() {
    init_tracing();
    let t = start().await;
    let mut all = b4::connect(opts_v4(t.addr, "dollar-all", true)).await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    all.subscribe("+/x", QoS::AtLeastOnce).await;
    let mut dollar = b4::connect(opts_v4(t.addr, "dollar-own", true)).await;
    dollar.subscribe("$foo/#", QoS::AtLeastOnce).await;

    b4::publish_all(t.addr, "$foo/x", QoS::AtLeastOnce, &["hidden".to_string()]).await;
    b4::publish_all(t.addr, "plain/x", QoS::AtLeastOnce, &["plain".to_string()]).await;

    let mut got = all.expect_publishes(1).await;
    got.extend(all.until_control().await);
    // "#" and "+/x" overlap for plain/x: one copy.
    assert_eq!(b4::payloads(&got), ["plain"], "$foo/x was not routed");
    assert!(
        dollar.until_control().await.is_empty(),
        "a client's $foo/x reaches nobody"
    );
    all.disconnect().await;
    dollar.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn no_local_suppresses_own_publishes_v5() {
    init_tracing();
    let t = start().await;
    let mut a = b5::connect(opts_v5(t.addr, "nl-a", true, None)).await;
    let mut f = Filter::new("nl/t", V5QoS::AtLeastOnce);
    f.nolocal = true;
    a.subscribe_with(f, None).await;
    let mut b = b5::connect(opts_v5(t.addr, "nl-b", true, None)).await;
    b.subscribe("nl/t", V5QoS::AtLeastOnce).await;

    a.publish("nl/t", V5QoS::AtLeastOnce, false, b"from-a")
        .await;
    assert_eq!(b5::payloads(&b.expect_publishes(1).await), ["from-a"]);
    b.publish("nl/t", V5QoS::AtLeastOnce, false, b"from-b")
        .await;
    let mut got = a.expect_publishes(1).await;
    got.extend(a.until_control().await);
    assert_eq!(
        b5::payloads(&got),
        ["from-b"],
        "A must not get its own message"
    );
    a.disconnect().await;
    b.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn subscription_identifiers_are_sent_with_publish_v5() {
    init_tracing();
    let t = start().await;
    let mut s = b5::connect(opts_v5(t.addr, "sid", true, None)).await;
    s.subscribe_with(Filter::new("sid/a/#", V5QoS::AtLeastOnce), Some(7))
        .await;
    s.subscribe_with(Filter::new("sid/+/b", V5QoS::AtLeastOnce), Some(9))
        .await;
    s.subscribe_with(Filter::new("sid/none", V5QoS::AtLeastOnce), None)
        .await;

    let ids = |p: &rumqttc::v5::mqttbytes::v5::Publish| {
        let mut v = p
            .properties
            .as_ref()
            .map(|p| p.subscription_identifiers.clone())
            .unwrap_or_default();
        v.sort();
        v
    };
    b4::publish_all(t.addr, "sid/a/c", QoS::AtLeastOnce, &["one".to_string()]).await;
    let got = s.expect_publishes(1).await;
    assert_eq!(ids(&got[0]), [7]);
    b4::publish_all(t.addr, "sid/a/b", QoS::AtLeastOnce, &["two".to_string()]).await;
    let mut got = s.expect_publishes(1).await;
    got.extend(s.until_control().await);
    assert_eq!(b5::payloads(&got), ["two"], "one copy for two filters");
    assert_eq!(ids(&got[0]), [7, 9], "both matching subscriptions' ids");
    b4::publish_all(t.addr, "sid/none", QoS::AtLeastOnce, &["three".to_string()]).await;
    let got = s.expect_publishes(1).await;
    assert!(
        ids(&got[0]).is_empty(),
        "no id was given: {:?}",
        ids(&got[0])
    );
    s.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn publish_properties_pass_through_unchanged_v5() {
    init_tracing();
    let t = start().await;
    let mut s = b5::connect(opts_v5(t.addr, "pp-sub", true, None)).await;
    s.subscribe("pp/t", V5QoS::AtLeastOnce).await;
    let mut p = b5::connect(opts_v5(t.addr, "pp-pub", true, None)).await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("pp/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("k".into(), "v1".into()),
            ("k".into(), "v2".into()),
            ("other".into(), "x".into()),
        ],
        content_type: Some("application/json".into()),
        ..props()
    };
    p.publish_with("pp/t", V5QoS::AtLeastOnce, false, b"{}", sent.clone())
        .await;

    let got = s.expect_publishes(1).await;
    let r = got[0].properties.clone().expect("properties present");
    assert_eq!(r.payload_format_indicator, sent.payload_format_indicator);
    assert_eq!(r.response_topic, sent.response_topic);
    assert_eq!(r.correlation_data, sent.correlation_data);
    assert_eq!(
        r.user_properties, sent.user_properties,
        "same pairs, same order"
    );
    assert_eq!(r.content_type, sent.content_type);
    assert_eq!(&got[0].payload[..], b"{}");
    p.disconnect().await;
    s.disconnect().await;
    t.gw.shutdown().await;
}

// ----- 11. topic alias ------------------------------------------------------------

#[tokio::test]
async fn topic_alias_from_client_resolves_to_full_topic_v5() {
    init_tracing();
    let t = start().await;
    let mut s = b4::connect(opts_v4(t.addr, "alias-sub", true)).await;
    s.subscribe("alias/#", QoS::AtLeastOnce).await;
    let mut p = b5::connect(opts_v5(t.addr, "alias-pub", true, None)).await;
    let with_alias = PublishProperties {
        topic_alias: Some(1),
        ..props()
    };
    p.publish_with(
        "alias/long/topic",
        V5QoS::AtLeastOnce,
        false,
        b"first",
        with_alias.clone(),
    )
    .await;
    // Alias only: empty topic name.
    p.publish_with("", V5QoS::AtLeastOnce, false, b"second", with_alias.clone())
        .await;
    // Re-map the alias to another topic, then use it again.
    p.publish_with(
        "alias/other",
        V5QoS::AtLeastOnce,
        false,
        b"third",
        with_alias.clone(),
    )
    .await;
    p.publish_with("", V5QoS::AtLeastOnce, false, b"fourth", with_alias)
        .await;

    let got = s.expect_publishes(4).await;
    let pairs: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("alias/long/topic".to_string(), "first".to_string()),
            ("alias/long/topic".to_string(), "second".to_string()),
            ("alias/other".to_string(), "third".to_string()),
            ("alias/other".to_string(), "fourth".to_string()),
        ]
    );
    p.disconnect().await;
    s.disconnect().await;
    t.gw.shutdown().await;
}

// ----- 13. client identifiers ---------------------------------------------------

#[tokio::test]
async fn empty_client_id_v5_gets_assigned_identifier() {
    init_tracing();
    let t = start().await;
    let c = b5::connect(opts_v5(t.addr, "", true, None)).await;
    let assigned = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("CONNACK carries an Assigned Client Identifier");
    assert!(!assigned.is_empty());
    let d = b5::connect(opts_v5(t.addr, "", true, None)).await;
    let assigned2 = d
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("second CONNACK carries one too");
    assert_ne!(assigned, assigned2, "each client gets its own identifier");
    c.disconnect().await;
    d.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn empty_client_id_v4_with_clean_session_0_is_refused() {
    init_tracing();
    let t = start().await;
    let mut s = raw::send(t.addr, &raw::connect_packet(4, "", false)).await;
    let connack = within(5, raw::read_packet(&mut s)).await.expect("CONNACK");
    // 3.1.1 CONNACK return code 0x02: identifier rejected.
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x02]);
    let rest = within(5, raw::read_to_close(&mut s)).await;
    assert!(
        rest.is_empty(),
        "connection closed after the refusal: {rest:02x?}"
    );
    t.gw.shutdown().await;
}

#[tokio::test]
async fn empty_client_id_v4_with_clean_session_1_is_accepted() {
    init_tracing();
    let t = start().await;
    let mut c = b4::connect(opts_v4(t.addr, "", true)).await;
    assert_eq!(c.connack.code, rumqttc::ConnectReturnCode::Success);
    c.subscribe("anon/t", QoS::AtLeastOnce).await;
    b4::publish_all(t.addr, "anon/t", QoS::AtLeastOnce, &["hi".to_string()]).await;
    assert_eq!(b4::payloads(&c.expect_publishes(1).await), ["hi"]);
    c.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn subscription_identifier_sent_with_retained_message_v5() {
    init_tracing();
    let t = start().await;
    let mut p = b4::connect(opts_v4(t.addr, "sidr-pub", true)).await;
    p.publish("sidr/t", QoS::AtLeastOnce, true, b"kept").await;
    p.disconnect().await;
    let mut s = b5::connect(opts_v5(t.addr, "sidr", true, None)).await;
    s.subscribe_with(Filter::new("sidr/#", V5QoS::AtLeastOnce), Some(42))
        .await;
    let got = s.expect_publishes(1).await;
    assert!(got[0].retain);
    let ids = got[0]
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    assert_eq!(ids, [42]);
    s.disconnect().await;
    t.gw.shutdown().await;
}

// ----- outgoing topic aliases (5.0) -------------------------------------------

/// A 5.0 client allowing 2 topic aliases gets repeated topics as aliases:
/// first topic + alias, then the alias alone; never an alias above 2; when
/// full, the least recently used alias is reassigned (checked on the wire).
#[tokio::test]
async fn outgoing_topic_aliases_within_the_clients_maximum_v5() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    init_tracing();
    let t = start().await;
    // CONNECT 5.0 with Topic Alias Maximum (0x22) = 2.
    let id = b"alias-raw";
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 5, 0x02, 0x00, 60];
    body.extend_from_slice(&[0x03, 0x22, 0x00, 0x02]);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend(body);
    let mut s = raw::send(t.addr, &connect).await;
    let connack = within(5, raw::read_packet(&mut s)).await.expect("CONNACK");
    assert_eq!(connack[0], 0x20);
    // SUBSCRIBE alias/# QoS 0, no properties.
    let filter = b"alias/#";
    let mut sub = vec![0x82, (2 + 1 + 2 + filter.len() + 1) as u8, 0x00, 0x01, 0x00];
    sub.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    sub.extend_from_slice(filter);
    sub.push(0x00);
    tokio::io::AsyncWriteExt::write_all(&mut s, &sub)
        .await
        .expect("write");
    let suback = within(5, raw::read_packet(&mut s)).await.expect("SUBACK");
    assert_eq!(suback[0], 0x90);

    let topics = [
        "alias/a", "alias/b", "alias/c", "alias/a", "alias/a", "alias/c",
    ];
    let mut p = b4::connect(opts_v4(t.addr, "alias-pub", true)).await;
    for topic in topics {
        p.publish(topic, QoS::AtMostOnce, false, topic.as_bytes())
            .await;
    }
    let mut wire = Vec::new();
    for _ in topics {
        let bytes = within(5, raw::read_packet(&mut s)).await.expect("PUBLISH");
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let Ok(P5::Publish(publish)) = P5::read(&mut buf, None) else {
            panic!("not a PUBLISH: {bytes:02x?}")
        };
        let alias = publish.properties.and_then(|pr| pr.topic_alias);
        let topic = String::from_utf8(publish.topic.to_vec()).expect("utf-8");
        let payload = String::from_utf8(publish.payload.to_vec()).expect("utf-8");
        wire.push((topic, alias, payload));
    }
    let expected = [
        ("alias/a", Some(1)),
        ("alias/b", Some(2)),
        // Full: alias 1 (alias/a, least recently used) goes to alias/c.
        ("alias/c", Some(1)),
        // Then alias 2 (alias/b) goes to alias/a.
        ("alias/a", Some(2)),
        ("", Some(2)),
        ("", Some(1)),
    ];
    for (i, ((topic, alias, payload), (want_topic, want_alias))) in
        wire.iter().zip(expected).enumerate()
    {
        assert_eq!(
            (topic.as_str(), *alias),
            (want_topic, want_alias),
            "PUBLISH {i}: {wire:?}"
        );
        assert_eq!(payload, topics[i], "PUBLISH {i} carries its own message");
    }
    p.disconnect().await;
    t.gw.shutdown().await;
}

/// A third-party 5.0 client (rumqttc) that allows aliases resolves every
/// aliased PUBLISH to its topic (an unknown alias would be its protocol error);
/// one that allows none gets plain topics.
#[tokio::test]
async fn third_party_client_decodes_outgoing_aliases_v5() {
    init_tracing();
    let t = start().await;
    for (id, max) in [("alias-rc", Some(2)), ("alias-none", None)] {
        let mut o = opts_v5(t.addr, id, true, None);
        o.set_topic_alias_max(max);
        let mut c = b5::connect(o).await;
        c.subscribe("alias2/#", V5QoS::AtLeastOnce).await;
        let topics: Vec<String> = (0..12).map(|i| format!("alias2/t{}", i % 3)).collect();
        let mut p = b4::connect(opts_v4(t.addr, &format!("{id}-pub"), true)).await;
        for topic in &topics {
            p.publish(topic, QoS::AtLeastOnce, false, topic.as_bytes())
                .await;
        }
        let got = c.expect_publishes(topics.len()).await;
        let mut aliased = 0;
        for (g, want) in got.iter().zip(&topics) {
            assert_eq!(b5::topic(g), *want);
            assert_eq!(&g.payload[..], want.as_bytes());
            let alias = g.properties.as_ref().and_then(|p| p.topic_alias);
            assert!(
                alias <= max,
                "{id}: alias {alias:?} over the client's maximum {max:?}"
            );
            aliased += usize::from(alias.is_some());
        }
        if max.is_some() {
            assert_eq!(aliased, topics.len(), "{id}: every PUBLISH used an alias");
        }
        p.disconnect().await;
        c.disconnect().await;
    }
    t.gw.shutdown().await;
}
