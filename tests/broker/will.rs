//! Will messages: published on an abnormal close (dropped connection or
//! keep-alive expiry), not on DISCONNECT; the 5.0 Will Delay Interval.

use std::time::Duration;

use crate::common::*;
use rumqttc::v5::mqttbytes::v5::{LastWill as LastWill5, LastWillProperties};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{LastWill, QoS};

/// A subscriber to the will topic.
async fn watcher(addr: std::net::SocketAddr, id: &str, topic: &str) -> b4::Client {
    let mut w = b4::connect(opts_v4(addr, id, true)).await;
    w.subscribe(topic, QoS::AtLeastOnce).await;
    w
}

/// Proves the watcher is still subscribed: a control message gets through.
async fn assert_watcher_alive(addr: std::net::SocketAddr, w: &mut b4::Client, topic: &str) {
    b4::publish_all(addr, topic, QoS::AtLeastOnce, &["control".to_string()]).await;
    assert_eq!(b4::payloads(&w.expect_publishes(1).await), ["control"]);
}

#[tokio::test]
async fn will_published_when_connection_drops_v4() {
    init_tracing();
    let t = start().await;
    let mut w = watcher(t.addr, "w4-watch", "will/drop4").await;
    let mut o = opts_v4(t.addr, "w4", true);
    o.set_last_will(LastWill::new("will/drop4", "gone", QoS::AtLeastOnce, false));
    let c = b4::connect(o).await;
    c.kill().await;

    let got = w.expect_publishes(1).await;
    assert_eq!(got[0].topic, "will/drop4");
    assert_eq!(b4::payloads(&got), ["gone"]);
    w.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn will_published_when_keepalive_expires_v4() {
    init_tracing();
    let t = start().await;
    let mut w = watcher(t.addr, "wka-watch", "will/ka").await;
    let mut o = opts_v4(t.addr, "wka", true);
    b4::keep_alive(&mut o, 1);
    o.set_last_will(LastWill::new(
        "will/ka",
        "timed out",
        QoS::AtLeastOnce,
        false,
    ));
    // Connected, socket open, but the client never sends PINGREQ.
    let (_client, _ev, connack) = b4::connect_frozen(o).await;
    assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);

    let got = w.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["timed out"]);
    w.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn will_not_published_on_normal_disconnect_v4() {
    init_tracing();
    let t = start().await;
    let mut w = watcher(t.addr, "wn-watch", "will/normal").await;
    let mut o = opts_v4(t.addr, "wn", true);
    o.set_last_will(LastWill::new(
        "will/normal",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let c = b4::connect(o).await;
    c.disconnect().await;

    let got = w.until_control().await;
    assert!(
        got.is_empty(),
        "will sent after DISCONNECT: {:?}",
        b4::payloads(&got)
    );
    assert_watcher_alive(t.addr, &mut w, "will/normal").await;
    w.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn will_published_when_connection_drops_v5() {
    init_tracing();
    let t = start().await;
    let mut w = watcher(t.addr, "w5-watch", "will/drop5").await;
    let mut o = opts_v5(t.addr, "w5", true, None);
    let props = LastWillProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("why".into(), "test".into())],
        ..no_will_props()
    };
    o.set_last_will(LastWill5::new(
        "will/drop5",
        "gone5",
        V5QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    let c = b5::connect(o).await;
    c.kill().await;

    let got = w.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["gone5"]);
    w.disconnect().await;
    t.gw.shutdown().await;
}

fn no_will_props() -> LastWillProperties {
    LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

fn delayed_will_opts(
    addr: std::net::SocketAddr,
    id: &str,
    topic: &str,
) -> rumqttc::v5::MqttOptions {
    let mut o = opts_v5(addr, id, false, Some(60));
    let props = LastWillProperties {
        delay_interval: Some(2),
        ..no_will_props()
    };
    o.set_last_will(LastWill5::new(
        topic,
        "late",
        V5QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    o
}

#[tokio::test]
async fn will_delay_interval_delays_the_will_v5() {
    init_tracing();
    let t = start().await;
    let mut w = watcher(t.addr, "wd-watch", "will/delay").await;
    let c = b5::connect(delayed_will_opts(t.addr, "wd", "will/delay")).await;
    c.kill().await;

    // Not before the 2 s delay (checked for the first second only)...
    let early = tokio::time::timeout(Duration::from_secs(1), w.publishes.recv()).await;
    assert!(early.is_err(), "will sent before its delay: {early:?}");
    // ...but after it.
    let got = w.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["late"]);
    w.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn will_delay_cancelled_by_reconnect_within_delay_v5() {
    init_tracing();
    let t = start().await;
    let mut w = watcher(t.addr, "wr-watch", "will/resume").await;
    let c = b5::connect(delayed_will_opts(t.addr, "wr", "will/resume")).await;
    c.kill().await;
    // Back at once, resuming the session (Clean Start=0).
    let c = b5::connect(opts_v5(t.addr, "wr", false, Some(60))).await;
    assert!(c.session_present());

    // Well past the delay: still nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = w.until_control().await;
    assert!(
        got.is_empty(),
        "will sent despite reconnect: {:?}",
        b4::payloads(&got)
    );
    assert_watcher_alive(t.addr, &mut w, "will/resume").await;
    c.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn will_with_retain_flag_becomes_the_retained_message() {
    init_tracing();
    let t = start().await;
    let mut o = opts_v4(t.addr, "wret", true);
    o.set_last_will(LastWill::new("will/ret", "offline", QoS::AtLeastOnce, true));
    let mut live = watcher(t.addr, "wret-live", "will/ret").await;
    let c = b4::connect(o).await;
    c.kill().await;
    // Once the will has gone out, a new subscriber finds it retained.
    assert_eq!(b4::payloads(&live.expect_publishes(1).await), ["offline"]);
    let mut w = watcher(t.addr, "wret-watch", "will/ret").await;
    let got = w.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["offline"]);
    assert!(got[0].retain, "sent as a retained message");
    w.disconnect().await;
    live.disconnect().await;
    t.gw.shutdown().await;
}

/// The will goes out when the session ends even if its delay is longer
/// (5.0 3.1.3.2.2: whichever happens first).
#[tokio::test]
async fn will_published_when_session_ends_before_will_delay_v5() {
    init_tracing();
    let t = start().await;
    let mut w = watcher(t.addr, "wse-watch", "will/sessend").await;
    let mut o = opts_v5(t.addr, "wse", false, Some(1));
    let props = LastWillProperties {
        delay_interval: Some(300),
        ..no_will_props()
    };
    o.set_last_will(LastWill5::new(
        "will/sessend",
        "session over",
        V5QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    let c = b5::connect(o).await;
    c.kill().await;
    // Session expiry 1 s, checked every second: well before the 300 s delay.
    let got = w.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["session over"]);
    w.disconnect().await;
    t.gw.shutdown().await;
}

/// A will that arrives well before its 2 s delay could have passed.
/// Kills `{id}-1` (its delayed will is then held), then `{id}-2` with a
/// will on `{prefix}/2`, the one the test expects over a limit.
async fn first_waits_second_over_limit(t: &TestGateway, id: &str, prefix: &str) {
    b5::connect(delayed_will_opts(
        t.addr,
        &format!("{id}-1"),
        &format!("{prefix}/1"),
    ))
    .await
    .kill()
    .await;
    within(5, async {
        while scrape(t, "mqbridge_will_delayed").await != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    b5::connect(delayed_will_opts(
        t.addr,
        &format!("{id}-2"),
        &format!("{prefix}/2"),
    ))
    .await
    .kill()
    .await;
}

async fn early_will(w: &mut b4::Client) -> rumqttc::Publish {
    tokio::time::timeout(Duration::from_millis(1500), w.publishes.recv())
        .await
        .expect("the will over the limit is published without its delay")
        .expect("watcher connected")
}

#[tokio::test]
async fn delayed_wills_over_the_limits_are_published_at_once_v5() {
    init_tracing();
    // Each will here is 10 (topic) + 4 (payload) + 16 bytes.
    let t = start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.mqtt.max_delayed_wills = 2;
        c.mqtt.max_delayed_will_bytes = 45;
    })
    .await;
    let mut w = watcher(t.addr, "wl-watch", "will/lim/+").await;
    let refused = |r: &str| format!("mqbridge_will_delay_refused_total{{reason=\"{r}\"}}");

    // The first waits for its delay; a second one would hold 60 of 45
    // bytes: published at once.
    first_waits_second_over_limit(&t, "wl", "will/lim").await;
    let got = early_will(&mut w).await;
    assert_eq!(
        got.topic, "will/lim/2",
        "the will over the limit, not the first"
    );
    assert_eq!(scrape(&t, &refused("bytes")).await, Some(1.0));
    assert_eq!(scrape(&t, "mqbridge_will_delayed").await, Some(1.0));
    // The first one still keeps its delay.
    let got = w.expect_publishes(1).await;
    assert_eq!(got[0].topic, "will/lim/1");
    assert_eq!(scrape(&t, "mqbridge_will_delayed").await, Some(0.0));
    w.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn delayed_wills_over_the_count_are_published_at_once_v5() {
    init_tracing();
    let t = start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.mqtt.max_delayed_wills = 1;
    })
    .await;
    let mut w = watcher(t.addr, "wc-watch", "will/cnt/+").await;
    first_waits_second_over_limit(&t, "wc", "will/cnt").await;
    let got = early_will(&mut w).await;
    assert_eq!(got.topic, "will/cnt/2");
    assert_eq!(
        scrape(&t, "mqbridge_will_delay_refused_total{reason=\"count\"}").await,
        Some(1.0)
    );
    w.disconnect().await;
}

/// Will delay and session expiry fire at their deadlines (the backstop sweep
/// is hourly here): Will Delay 3 s with Session Expiry 5 s -> the will at
/// 3 s; Will Delay 5 s with Session Expiry 2 s -> at 2 s, when the session ends.
#[tokio::test]
async fn will_delay_and_session_end_fire_at_their_deadlines_v5() {
    init_tracing();
    let t = start_with(|cfg| cfg.session.expiry_check_interval_secs = 3600).await;
    for (id, delay, expiry, due) in [("wdl-a", 3, 5, 3.0), ("wdl-b", 5, 2, 2.0)] {
        let topic = format!("will/{id}");
        let mut w = watcher(t.addr, &format!("{id}-watch"), &topic).await;
        let mut o = opts_v5(t.addr, id, false, Some(expiry));
        let props = LastWillProperties {
            delay_interval: Some(delay),
            ..no_will_props()
        };
        o.set_last_will(LastWill5::new(
            &topic,
            "gone",
            V5QoS::AtLeastOnce,
            false,
            Some(props),
        ));
        let c = b5::connect(o).await;
        let killed = std::time::Instant::now();
        c.kill().await;
        let got = w.expect_publishes(1).await;
        let at = killed.elapsed().as_secs_f64();
        assert_eq!(b4::payloads(&got), ["gone"]);
        // Never early; late by at most a loaded machine's scheduling delay.
        assert!(
            at >= due - 0.05 && at < due + 1.0,
            "{id}: will after {at:.2} s, due at {due} s"
        );
        w.disconnect().await;
    }
    t.gw.shutdown().await;
}
