//! Delivery guarantees: QoS 2 exactly once, overlapping subscriptions and
//! the per-session offline queue limit.

use std::collections::HashMap;

use crate::common::*;
use mqbridge::config::QueueFullPolicy;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::QoS;

fn count(payloads: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in payloads {
        *m.entry(p.clone()).or_default() += 1;
    }
    m
}

// ----- 7. QoS 2: exactly once, both directions -------------------------------

#[tokio::test]
async fn qos2_publish_to_qos2_subscriber_exactly_once_v4() {
    init_tracing();
    let t = start().await;
    let mut sub = b4::connect(opts_v4(t.addr, "q2sub4", true)).await;
    sub.subscribe("q2/v4", QoS::ExactlyOnce).await;
    let sent = b4::numbered("x", 20);
    b4::publish_all(t.addr, "q2/v4", QoS::ExactlyOnce, &sent).await;

    let mut got = sub.expect_publishes(20).await;
    got.extend(sub.until_control().await);
    assert!(
        got.iter().all(|p| p.qos == QoS::ExactlyOnce),
        "delivered at QoS 2"
    );
    let counts = count(&b4::payloads(&got));
    for m in &sent {
        assert_eq!(counts.get(m), Some(&1), "{m} must arrive exactly once");
    }
    assert_eq!(got.len(), 20, "nothing else: {:?}", b4::payloads(&got));
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn qos2_publish_to_qos2_subscriber_exactly_once_v5() {
    init_tracing();
    let t = start().await;
    let mut sub = b5::connect(opts_v5(t.addr, "q2sub5", true, None)).await;
    sub.subscribe("q2/v5", V5QoS::ExactlyOnce).await;
    let mut publ = b5::connect(opts_v5(t.addr, "q2pub5", true, None)).await;
    let sent = b4::numbered("y", 20);
    for m in &sent {
        publ.publish("q2/v5", V5QoS::ExactlyOnce, false, m.as_bytes())
            .await;
    }

    let mut got = sub.expect_publishes(20).await;
    got.extend(sub.until_control().await);
    assert!(
        got.iter().all(|p| p.qos == V5QoS::ExactlyOnce),
        "delivered at QoS 2"
    );
    let counts = count(&b5::payloads(&got));
    for m in &sent {
        assert_eq!(counts.get(m), Some(&1), "{m} must arrive exactly once");
    }
    assert_eq!(got.len(), 20, "nothing else: {:?}", b5::payloads(&got));
    publ.disconnect().await;
    sub.disconnect().await;
    t.gw.shutdown().await;
}

/// A QoS 2 PUBLISH resent by the publisher (DUP=1, same packet id, before
/// PUBREL) is not routed a second time.
#[tokio::test]
async fn qos2_resent_publish_before_pubrel_is_routed_once() {
    init_tracing();
    let t = start().await;
    let mut sub = b4::connect(opts_v4(t.addr, "q2dupsub", true)).await;
    sub.subscribe("q2/dup", QoS::ExactlyOnce).await;

    let mut s = raw::send(t.addr, &raw::connect_packet(4, "q2duppub", true)).await;
    let connack = within(5, raw::read_packet(&mut s)).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    // PUBLISH QoS 2, packet id 7, topic "q2/dup", payload "once".
    let publish = |dup: bool| {
        let mut p = vec![if dup { 0x3C } else { 0x34 }, 0x00];
        p.extend_from_slice(&[0x00, 0x06]);
        p.extend_from_slice(b"q2/dup");
        p.extend_from_slice(&[0x00, 0x07]);
        p.extend_from_slice(b"once");
        p[1] = (p.len() - 2) as u8;
        p
    };
    use tokio::io::AsyncWriteExt;
    s.write_all(&publish(false)).await.unwrap();
    let rec = within(5, raw::read_packet(&mut s)).await.expect("PUBREC");
    assert_eq!(rec, [0x50, 0x02, 0x00, 0x07]);
    s.write_all(&publish(true)).await.unwrap();
    let rec = within(5, raw::read_packet(&mut s))
        .await
        .expect("second PUBREC");
    assert_eq!(rec, [0x50, 0x02, 0x00, 0x07]);
    // PUBREL 7 -> PUBCOMP 7.
    s.write_all(&[0x62, 0x02, 0x00, 0x07]).await.unwrap();
    let comp = within(5, raw::read_packet(&mut s)).await.expect("PUBCOMP");
    assert_eq!(comp, [0x70, 0x02, 0x00, 0x07]);

    let mut got = sub.expect_publishes(1).await;
    got.extend(sub.until_control().await);
    assert_eq!(b4::payloads(&got), ["once"], "routed exactly once");
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_highest_qos() {
    init_tracing();
    let t = start().await;
    let mut sub = b4::connect(opts_v4(t.addr, "overlap", true)).await;
    sub.subscribe("ov/#", QoS::AtLeastOnce).await;
    sub.subscribe("ov/+", QoS::ExactlyOnce).await;

    b4::publish_all(t.addr, "ov/a", QoS::ExactlyOnce, &["both".to_string()]).await;
    let mut got = sub.expect_publishes(1).await;
    got.extend(sub.until_control().await);
    assert_eq!(
        b4::payloads(&got),
        ["both"],
        "one copy for two matching filters"
    );
    assert_eq!(got[0].qos, QoS::ExactlyOnce, "the higher granted QoS");

    // Only ov/# matches a deeper topic: its QoS 1 applies.
    b4::publish_all(t.addr, "ov/a/b", QoS::ExactlyOnce, &["deep".to_string()]).await;
    let mut got = sub.expect_publishes(1).await;
    got.extend(sub.until_control().await);
    assert_eq!(b4::payloads(&got), ["deep"]);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    sub.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn delivery_qos_is_minimum_of_publish_and_subscription() {
    init_tracing();
    let t = start().await;
    let mut sub = b4::connect(opts_v4(t.addr, "minqos", true)).await;
    sub.subscribe("mq/t", QoS::ExactlyOnce).await;
    b4::publish_all(t.addr, "mq/t", QoS::AtLeastOnce, &["one".to_string()]).await;
    let got = sub.expect_publishes(1).await;
    assert_eq!(
        got[0].qos,
        QoS::AtLeastOnce,
        "not upgraded beyond the publish QoS"
    );
    sub.disconnect().await;
    t.gw.shutdown().await;
}

// ----- 12. offline queue limit -------------------------------------------------

async fn queue_ten_to_offline_session(policy: QueueFullPolicy) -> Vec<String> {
    let t = start_with(|cfg| {
        cfg.session.max_queued_messages = 5;
        cfg.session.queue_full_policy = policy.to_string();
    })
    .await;
    let mut sub = b4::connect(opts_v4(t.addr, "qlimit", false)).await;
    sub.subscribe("ql/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    b4::publish_all(t.addr, "ql/t", QoS::AtLeastOnce, &b4::numbered("m", 10)).await;

    let mut sub = b4::connect(opts_v4(t.addr, "qlimit", false)).await;
    assert!(sub.session_present());
    let mut got = sub.expect_publishes(5).await;
    got.extend(sub.until_control().await);
    sub.disconnect().await;
    t.gw.shutdown().await;
    b4::payloads(&got)
}

#[tokio::test]
async fn offline_queue_full_drop_oldest_keeps_newest() {
    init_tracing();
    let got = queue_ten_to_offline_session(QueueFullPolicy::DropOldest).await;
    assert_eq!(got, ["m05", "m06", "m07", "m08", "m09"]);
}

#[tokio::test]
async fn offline_queue_full_reject_new_keeps_oldest() {
    init_tracing();
    let got = queue_ten_to_offline_session(QueueFullPolicy::RejectNew).await;
    assert_eq!(got, ["m00", "m01", "m02", "m03", "m04"]);
}

// ----- outgoing inflight window ----------------------------------------------

#[tokio::test]
async fn small_inflight_window_still_delivers_whole_queue_in_order() {
    init_tracing();
    let t = start_with(|cfg| cfg.mqtt.max_inflight = 3).await;
    let mut sub = b4::connect(opts_v4(t.addr, "window", false)).await;
    sub.subscribe("win/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let sent = b4::numbered("w", 20);
    b4::publish_all(t.addr, "win/t", QoS::AtLeastOnce, &sent).await;

    let mut sub = b4::connect(opts_v4(t.addr, "window", false)).await;
    let mut got = sub.expect_publishes(20).await;
    got.extend(sub.until_control().await);
    assert_eq!(b4::payloads(&got), sent);
    sub.disconnect().await;
    t.gw.shutdown().await;
}

/// With a client Receive Maximum of 2, no more than 2 QoS 1 deliveries are
/// unacknowledged at a time; acknowledging lets the next ones through.
#[tokio::test]
async fn client_receive_maximum_limits_unacked_deliveries_v5() {
    init_tracing();
    let t = start().await;
    let mut o = opts_v5(t.addr, "recvmax", true, None);
    o.set_receive_maximum(Some(2));
    o.set_manual_acks(true);
    let mut sub = b5::connect(o).await;
    sub.subscribe("rm/t", V5QoS::AtLeastOnce).await;
    let sent = b4::numbered("r", 5);
    b4::publish_all(t.addr, "rm/t", QoS::AtLeastOnce, &sent).await;

    let first = sub.expect_publishes(2).await;
    let held = sub.drain().await;
    assert!(
        held.is_empty(),
        "beyond Receive Maximum: {:?}",
        b5::payloads(&held)
    );
    for p in &first {
        sub.client.ack(p).await.unwrap();
    }
    let mut rest = sub.expect_publishes(2).await;
    for p in &rest {
        sub.client.ack(p).await.unwrap();
    }
    rest.extend(sub.expect_publishes(1).await);
    let mut all = b5::payloads(&first);
    all.extend(b5::payloads(&rest));
    assert_eq!(all, sent, "all delivered, in order");
    sub.disconnect().await;
    t.gw.shutdown().await;
}
