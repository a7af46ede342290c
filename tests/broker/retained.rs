//! Retained messages: set, replace, clear, delivery on subscribe, and the
//! MQTT 5.0 subscription options Retain Handling and Retain As Published.

use crate::common::*;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::QoS;

async fn set_retained(addr: std::net::SocketAddr, topic: &str, payload: &[u8]) {
    let mut p = b4::connect(opts_v4(addr, "retainer", true)).await;
    p.publish(topic, QoS::AtLeastOnce, true, payload).await;
    p.disconnect().await;
}

#[tokio::test]
async fn retained_message_delivered_on_subscribe_with_retain_flag() {
    init_tracing();
    let t = start().await;
    set_retained(t.addr, "ret/a", b"v1").await;

    let mut sub = b4::connect(opts_v4(t.addr, "rsub1", true)).await;
    sub.subscribe("ret/#", QoS::AtLeastOnce).await;
    let mut got = sub.expect_publishes(1).await;
    got.extend(sub.until_control().await);
    assert_eq!(b4::payloads(&got), ["v1"]);
    assert_eq!(got[0].topic, "ret/a");
    assert!(
        got[0].retain,
        "a retained message sent on subscribe has RETAIN=1"
    );
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn retained_message_is_replaced_by_a_newer_one() {
    init_tracing();
    let t = start().await;
    set_retained(t.addr, "ret/b", b"old").await;
    set_retained(t.addr, "ret/b", b"new").await;

    let mut sub = b4::connect(opts_v4(t.addr, "rsub2", true)).await;
    sub.subscribe("ret/b", QoS::AtLeastOnce).await;
    let mut got = sub.expect_publishes(1).await;
    got.extend(sub.until_control().await);
    assert_eq!(
        b4::payloads(&got),
        ["new"],
        "only the latest retained message"
    );
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn retained_message_is_cleared_by_empty_payload() {
    init_tracing();
    let t = start().await;
    set_retained(t.addr, "ret/c", b"gone-soon").await;
    set_retained(t.addr, "ret/c", b"").await;

    let mut sub = b4::connect(opts_v4(t.addr, "rsub3", true)).await;
    sub.subscribe("ret/c", QoS::AtLeastOnce).await;
    let got = sub.until_control().await;
    assert!(
        got.is_empty(),
        "cleared topic still sent {:?}",
        b4::payloads(&got)
    );
    sub.disconnect().await;
    t.gw.shutdown().await;
}

/// 3.1.1: a message forwarded to an existing subscription has RETAIN=0 even
/// when it was published retained (MQTT-3.3.1-9).
#[tokio::test]
async fn live_retained_publish_has_retain_cleared_for_existing_subscriber_v4() {
    init_tracing();
    let t = start().await;
    let mut sub = b4::connect(opts_v4(t.addr, "rsub4", true)).await;
    sub.subscribe("ret/live", QoS::AtLeastOnce).await;
    set_retained(t.addr, "ret/live", b"now").await;
    let got = sub.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["now"]);
    assert!(!got[0].retain, "RETAIN must be 0 on a live delivery");
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn retain_handling_2_does_not_send_retained_messages_v5() {
    init_tracing();
    let t = start().await;
    set_retained(t.addr, "ret/rh2", b"stored").await;

    let mut sub = b5::connect(opts_v5(t.addr, "rh2", true, None)).await;
    let mut f = Filter::new("ret/rh2", V5QoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::Never;
    sub.subscribe_with(f, None).await;
    let got = sub.until_control().await;
    assert!(
        got.is_empty(),
        "Retain Handling 2 but got {:?}",
        b5::payloads(&got)
    );

    // The subscription itself works.
    set_retained(t.addr, "ret/rh2", b"live").await;
    let got = sub.expect_publishes(1).await;
    assert_eq!(b5::payloads(&got), ["live"]);
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn retain_handling_1_sends_retained_only_for_a_new_subscription_v5() {
    init_tracing();
    let t = start().await;
    set_retained(t.addr, "ret/rh1", b"stored").await;

    let mut sub = b5::connect(opts_v5(t.addr, "rh1", true, None)).await;
    let mut f = Filter::new("ret/rh1", V5QoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    sub.subscribe_with(f.clone(), None).await;
    let mut got = sub.expect_publishes(1).await;
    got.extend(sub.until_control().await);
    assert_eq!(b5::payloads(&got), ["stored"], "new subscription gets it");
    // Subscribing again to the same filter replaces the subscription: no resend.
    sub.subscribe_with(f, None).await;
    let got = sub.until_control().await;
    assert!(
        got.is_empty(),
        "re-subscribe resent {:?}",
        b5::payloads(&got)
    );
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn retain_handling_0_resends_retained_on_every_subscribe_v5() {
    init_tracing();
    let t = start().await;
    set_retained(t.addr, "ret/rh0", b"stored").await;

    let mut sub = b5::connect(opts_v5(t.addr, "rh0", true, None)).await;
    let f = Filter::new("ret/rh0", V5QoS::AtLeastOnce);
    sub.subscribe_with(f.clone(), None).await;
    assert_eq!(b5::payloads(&sub.expect_publishes(1).await), ["stored"]);
    sub.subscribe_with(f, None).await;
    let got = sub.expect_publishes(1).await;
    assert_eq!(b5::payloads(&got), ["stored"]);
    assert!(got[0].retain);
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn retain_as_published_keeps_retain_flag_on_live_delivery_v5() {
    init_tracing();
    let t = start().await;
    let mut rap = b5::connect(opts_v5(t.addr, "rap1", true, None)).await;
    let mut f = Filter::new("ret/rap", V5QoS::AtLeastOnce);
    f.preserve_retain = true;
    rap.subscribe_with(f, None).await;
    let mut plain = b5::connect(opts_v5(t.addr, "rap0", true, None)).await;
    plain
        .subscribe_with(Filter::new("ret/rap", V5QoS::AtLeastOnce), None)
        .await;

    set_retained(t.addr, "ret/rap", b"r").await;
    let a = rap.expect_publishes(1).await;
    let b = plain.expect_publishes(1).await;
    assert!(a[0].retain, "Retain As Published=1 keeps RETAIN=1");
    assert!(!b[0].retain, "Retain As Published=0 clears RETAIN");

    // A message published without RETAIN stays RETAIN=0 either way.
    let mut p = b4::connect(opts_v4(t.addr, "rap-pub", true)).await;
    p.publish("ret/rap", QoS::AtLeastOnce, false, b"n").await;
    p.disconnect().await;
    let a = rap.expect_publishes(1).await;
    assert_eq!(b5::payloads(&a), ["n"]);
    assert!(!a[0].retain);
    rap.disconnect().await;
    plain.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn expired_retained_message_not_sent_to_new_subscriber_v5() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    init_tracing();
    let t = start().await;
    let mut p = b5::connect(opts_v5(t.addr, "rexp-pub", true, None)).await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..PublishProperties::default()
    };
    p.publish_with("ret/exp/short", V5QoS::AtLeastOnce, true, b"short", short)
        .await;
    p.publish("ret/exp/keep", V5QoS::AtLeastOnce, true, b"keep")
        .await;
    p.disconnect().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let mut sub = b5::connect(opts_v5(t.addr, "rexp-sub", true, None)).await;
    sub.subscribe("ret/exp/#", V5QoS::AtLeastOnce).await;
    let mut got = sub.expect_publishes(1).await;
    got.extend(sub.until_control().await);
    assert_eq!(
        b5::payloads(&got),
        ["keep"],
        "the expired retained message is gone"
    );
    sub.disconnect().await;
    t.gw.shutdown().await;
}

/// Subscribes a fresh clean client to `filter` and returns the retained
/// payloads it is sent.
async fn retained_for(addr: std::net::SocketAddr, id: &str, filter: &str) -> Vec<String> {
    let mut sub = b4::connect(opts_v4(addr, id, true)).await;
    sub.subscribe(filter, QoS::AtLeastOnce).await;
    let got = b4::payloads(&sub.until_control().await);
    sub.disconnect().await;
    got
}

#[tokio::test]
async fn retained_limits_refuse_keeping_but_not_delivering() {
    init_tracing();
    // Each message is 5 (topic) + payload + 16 bytes.
    let t = start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.mqtt.max_retained_payload_bytes = 100;
        c.mqtt.max_retained_bytes = 200;
        c.mqtt.max_retained_messages = 3;
    })
    .await;
    let mut live = b4::connect(opts_v4(t.addr, "live", true)).await;
    live.subscribe("lim/#", QoS::AtLeastOnce).await;
    let refused = |reason: &str| format!("mqbridge_retained_refused_total{{reason=\"{reason}\"}}");

    // Payload size: delivered live, not kept.
    set_retained(t.addr, "lim/a", &[b'a'; 101]).await;
    assert_eq!(scrape(&t, &refused("payload_size")).await, Some(1.0));
    // Bytes: 3 x 79 bytes do not fit in 200; the third is refused.
    set_retained(t.addr, "lim/a", &[b'a'; 58]).await;
    set_retained(t.addr, "lim/b", &[b'b'; 58]).await;
    set_retained(t.addr, "lim/c", &[b'c'; 58]).await;
    assert_eq!(scrape(&t, &refused("bytes")).await, Some(1.0));
    assert_eq!(scrape(&t, "mqbridge_retained_bytes").await, Some(158.0));
    // Count: with three topics held, a fourth is refused however small.
    set_retained(t.addr, "lim/c", b"c").await;
    set_retained(t.addr, "lim/d", b"d").await;
    assert_eq!(scrape(&t, &refused("count")).await, Some(1.0));
    // Every one was delivered to the subscriber that was there.
    assert_eq!(live.expect_publishes(6).await.len(), 6);
    let mut kept = retained_for(t.addr, "late", "lim/#").await;
    kept.sort();
    assert_eq!(kept, ["a".repeat(58), "b".repeat(58), "c".into()]);

    // A refused replacement also removes the older value of its topic.
    set_retained(t.addr, "lim/b", &[b'b'; 101]).await;
    let mut kept = retained_for(t.addr, "later", "lim/#").await;
    kept.sort();
    assert_eq!(kept, ["a".repeat(58), "c".into()]);
    // Others are not affected: an existing topic can still be replaced.
    set_retained(t.addr, "lim/c", b"c2").await;
    let mut kept = retained_for(t.addr, "latest", "lim/#").await;
    kept.sort();
    assert_eq!(kept, ["a".repeat(58), "c2".into()]);
    live.disconnect().await;
    t.gw.shutdown().await;
}
