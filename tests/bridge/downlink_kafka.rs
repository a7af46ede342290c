//! The Kafka downlink end to end: commands produced to a real Kafka-protocol
//! broker (tansu in development) reach real MQTT clients through the
//! in-process gateway. Skipped with a note when no broker answers (see
//! `downlink_kafka_support`).

use std::time::Duration;

use crate::common::b4;
use crate::common::kafka as k;
use mqbridge::app::Gateway;
use mqbridge::config::BackendConfig;
use rumqttc::QoS;

const PARTITIONS: i32 = 3;

/// A persistent 3.1.1 device offline while 20 commands are produced and the
/// gateway restarts gets all of them, in order, from its session; the
/// group's offsets are committed up to the end of the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_gets_commands_across_restart() {
    let Some((addr, _turn)) = k::broker().await else {
        return;
    };
    let (topic, group, device) = (k::unique("cmd"), k::unique("group"), k::unique("dev"));
    k::create_topics(&addr, &[&topic], PARTITIONS).await;
    let route = k::route(&topic, &group, "devices/{key}/commands");
    let t = crate::common::start_with(|cfg| k::configure(cfg, &addr, &route)).await;

    let filter = format!("devices/{device}/commands");
    let mut d = b4::connect(crate::common::opts_v4(t.addr, &device, false)).await;
    d.subscribe(&filter, QoS::AtLeastOnce).await;
    d.disconnect().await;

    let p = k::producer(&addr);
    let sent = b4::numbered("cmd-", 20);
    for s in &sent {
        k::produce(
            &p,
            &topic,
            k::Cmd {
                key: &device,
                payload: s,
                ..Default::default()
            },
        )
        .await;
    }
    // Committed up to the end means every command is stored in the session.
    let offsets = k::wait_committed(
        &addr,
        &group,
        &topic,
        PARTITIONS,
        20,
        Duration::from_secs(30),
    )
    .await;

    t.gw.shutdown().await;
    let mut cfg = crate::common::test_config(t.dir.path());
    k::configure(&mut cfg, &addr, &route);
    let cfg = cfg.validate().expect("test config is valid");
    let gw = Gateway::start(cfg).await.expect("gateway restarts");

    let mut d = b4::connect(crate::common::opts_v4(gw.mqtt_addr, &device, false)).await;
    assert!(d.session_present(), "session kept across the restart");
    let got = d.expect_publishes(20).await;
    assert_eq!(b4::payloads(&got), sent);
    assert!(got
        .iter()
        .all(|p| p.topic == filter && p.qos == QoS::AtLeastOnce));
    let extra = d.drain().await;
    assert!(
        extra.is_empty(),
        "duplicates after a clean restart: {:?}",
        b4::payloads(&extra)
    );
    d.disconnect().await;
    // The group stays committed at the end: nothing was re-consumed.
    let after = k::committed(&addr, &group, &topic, PARTITIONS);
    assert_eq!(after, offsets);
    gw.shutdown().await;
}

/// `client_id = "{key}"` with `create_sessions`: a device that never
/// connected gets its command when it first connects with CleanSession=0,
/// without subscribing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addressed_command_waits_in_a_new_session() {
    let Some((addr, _turn)) = k::broker().await else {
        return;
    };
    let (topic, group, device) = (k::unique("cmd"), k::unique("group"), k::unique("dev"));
    k::create_topics(&addr, &[&topic], PARTITIONS).await;
    let mut route = k::route(&topic, &group, "cmd/{key}");
    route.client_id = Some("{key}".into());
    route.create_sessions = true;
    let t = crate::common::start_with(|cfg| k::configure(cfg, &addr, &route)).await;

    let p = k::producer(&addr);
    k::produce(
        &p,
        &topic,
        k::Cmd {
            key: &device,
            payload: "reboot",
            ..Default::default()
        },
    )
    .await;
    k::wait_committed(
        &addr,
        &group,
        &topic,
        PARTITIONS,
        1,
        Duration::from_secs(30),
    )
    .await;

    let mut d = b4::connect(crate::common::opts_v4(t.addr, &device, false)).await;
    assert!(d.session_present(), "the command created the session");
    let got = d.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["reboot"]);
    assert_eq!(got[0].topic, format!("cmd/{device}"));
    d.disconnect().await;
    t.gw.shutdown().await;
}

/// An expired command is not delivered, malformed ones are dead-lettered
/// with the reason, and neither blocks the valid commands after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_malformed_commands_do_not_block() {
    let Some((addr, _turn)) = k::broker().await else {
        return;
    };
    let (topic, dead, group) = (k::unique("cmd"), k::unique("dead"), k::unique("group"));
    let device = k::unique("dev");
    // One partition: the order of all five commands is the test.
    k::create_topics(&addr, &[&topic], 1).await;
    k::create_topics(&addr, &[&dead], 1).await;
    let mut route = k::route(&topic, &group, "{header.t}");
    route.dead_letter_target = Some(dead.clone());
    let t = crate::common::start_with(|cfg| k::configure(cfg, &addr, &route)).await;

    let filter = format!("devices/{device}/commands");
    let mut d = b4::connect(crate::common::opts_v4(t.addr, &device, false)).await;
    d.subscribe(&filter, QoS::AtLeastOnce).await;

    let p = k::producer(&addr);
    let cmd = |payload, headers| k::Cmd {
        key: &device,
        payload,
        headers,
        timestamp_ms: None,
    };
    let mut expired = cmd(
        "expired",
        vec![("t", &filter), ("mqtt_message_expiry", "1")],
    );
    expired.timestamp_ms = Some(k::now_ms() - 10_000);
    k::produce(&p, &topic, expired).await;
    k::produce(&p, &topic, cmd("v1", vec![("t", &filter)])).await;
    k::produce(&p, &topic, cmd("no-topic", vec![])).await;
    k::produce(&p, &topic, cmd("wildcard", vec![("t", "a/+")])).await;
    k::produce(&p, &topic, cmd("v2", vec![("t", &filter)])).await;

    let got = d.expect_publishes(2).await;
    assert_eq!(b4::payloads(&got), ["v1", "v2"]);
    assert!(
        d.drain().await.is_empty(),
        "the expired command was delivered"
    );
    k::wait_committed(&addr, &group, &topic, 1, 5, Duration::from_secs(30)).await;

    let dl = k::read_topic(&addr, &dead, 2, Duration::from_secs(20)).await;
    let dl: Vec<_> = dl
        .iter()
        .map(|m| (k::payload(m), k::header(m, "mqbridge_error")))
        .collect();
    assert_eq!(dl.len(), 2, "dead letters: {dl:?}");
    assert_eq!(dl[0].0, "no-topic");
    assert!(
        dl[0].1.as_deref().is_some_and(|e| e.contains("header")),
        "{dl:?}"
    );
    assert_eq!(dl[1].0, "wildcard");
    assert!(
        dl[1].1.as_deref().is_some_and(|e| e.contains("a/+")),
        "{dl:?}"
    );
    d.disconnect().await;
    t.gw.shutdown().await;
}

/// The device's PUBACK of a command with correlation data, and nothing
/// before it, produces a JSON receipt on the route's receipt topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_command_produces_a_receipt() {
    let Some((addr, _turn)) = k::broker().await else {
        return;
    };
    let (topic, receipts, group) = (k::unique("cmd"), k::unique("receipts"), k::unique("group"));
    let device = k::unique("dev");
    k::create_topics(&addr, &[&topic], PARTITIONS).await;
    let mut route = k::route(&topic, &group, "devices/{key}/commands");
    route.receipt_target = Some(receipts.clone());
    // The gateway creates the receipt topic (and finds the command topic
    // already there).
    let t = crate::common::start_with(|cfg| {
        k::configure(cfg, &addr, &route);
        if let BackendConfig::Kafka(b) = &mut cfg.bridge.backends[0] {
            b.create_topics = true;
        }
    })
    .await;

    // The device acknowledges by hand; the control device automatically.
    let filter = format!("devices/{device}/commands");
    let mut o = crate::common::opts_v4(t.addr, &device, false);
    o.set_manual_acks(true);
    let mut d = b4::connect(o).await;
    d.subscribe(&filter, QoS::AtLeastOnce).await;
    let ctl_id = k::unique("ctl");
    let mut ctl = b4::connect(crate::common::opts_v4(t.addr, &ctl_id, true)).await;
    ctl.subscribe(&format!("devices/{ctl_id}/commands"), QoS::AtLeastOnce)
        .await;
    let p = k::producer(&addr);
    let headers = vec![("mqtt_correlation_data", "abc")];
    let cmd = |key, payload, headers| k::Cmd {
        key,
        payload,
        headers,
        timestamp_ms: None,
    };
    k::produce(&p, &topic, cmd(&device, "open", headers)).await;
    let got = d.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["open"]);

    // Not acknowledged yet: a command delivered after it, to the control
    // device, gets its receipt, and no other receipt shows up meanwhile.
    k::produce(&p, &topic, cmd(&ctl_id, "c", vec![])).await;
    assert_eq!(b4::payloads(&ctl.expect_publishes(1).await), ["c"]);
    let first = k::read_topic(&addr, &receipts, 1, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 1, "no receipt on {receipts}");
    // One reader, already fetching (the topic exists now), for the rest.
    let reader = receipt_reader(&addr, &receipts);
    let client_of = |m: &rdkafka::message::OwnedMessage| -> String {
        let body: serde_json::Value = serde_json::from_str(&k::payload(m)).expect("JSON receipt");
        body["client_id"].as_str().unwrap_or_default().to_string()
    };
    let seen = next_receipt(&reader, Duration::from_secs(20))
        .await
        .expect("the control device's receipt");
    assert_eq!(
        client_of(&seen),
        ctl_id,
        "receipt before the device's PUBACK"
    );
    if let Some(m) = next_receipt(&reader, Duration::from_secs(2)).await {
        panic!("receipt before the device's PUBACK: {}", k::payload(&m));
    }

    d.client.ack(&got[0]).await.expect("PUBACK sent");
    let m = next_receipt(&reader, Duration::from_secs(20))
        .await
        .expect("no receipt after the PUBACK");
    let body: serde_json::Value = serde_json::from_str(&k::payload(&m)).expect("JSON receipt");
    assert_eq!(body["client_id"], device.as_str());
    assert_eq!(body["correlation_data"], "abc");
    assert_eq!(body["topic"], filter.as_str());
    assert!(body["source"]
        .as_str()
        .is_some_and(|s| s.starts_with(&format!("{topic}/"))));
    d.disconnect().await;
    ctl.disconnect().await;
    t.gw.shutdown().await;
}

/// A reader of `topic` from its start, kept across several reads.
fn receipt_reader(addr: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let c: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", k::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

async fn next_receipt(
    c: &rdkafka::consumer::StreamConsumer,
    within: Duration,
) -> Option<rdkafka::message::OwnedMessage> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => return Some(m.detach()),
            Ok(Err(e)) => eprintln!("reader: {e}"),
            Err(_) => return None,
        }
    }
}

/// A malformed command whose dead letter is refused for good (the
/// dead-letter topic does not exist) is dropped with an error, not retried
/// forever: the group commits past it and later commands are not repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_dead_letter_does_not_block_the_partition() {
    let Some((addr, _turn)) = k::broker().await else {
        return;
    };
    let (topic, dead, group) = (k::unique("cmd"), k::unique("dead"), k::unique("group"));
    let device = k::unique("dev");
    k::create_topics(&addr, &[&topic], 1).await;
    let mut route = k::route(&topic, &group, "{header.t}");
    route.dead_letter_target = Some(dead.clone());
    let t = crate::common::start_with(|cfg| k::configure(cfg, &addr, &route)).await;

    let filter = format!("devices/{device}/commands");
    let mut d = b4::connect(crate::common::opts_v4(t.addr, &device, false)).await;
    d.subscribe(&filter, QoS::AtLeastOnce).await;
    let p = k::producer(&addr);
    let cmd = |payload, headers| k::Cmd {
        key: &device,
        payload,
        headers,
        timestamp_ms: None,
    };
    k::produce(&p, &topic, cmd("v1", vec![("t", &filter)])).await;
    k::produce(&p, &topic, cmd("bad", vec![])).await;
    k::produce(&p, &topic, cmd("v2", vec![("t", &filter)])).await;

    let got = d.expect_publishes(2).await;
    assert_eq!(b4::payloads(&got), ["v1", "v2"]);
    k::wait_committed(&addr, &group, &topic, 1, 3, Duration::from_secs(30)).await;
    let again = b4::payloads(&d.drain().await);
    assert!(again.is_empty(), "nothing is delivered again: {again:?}");
    d.disconnect().await;
    t.gw.shutdown().await;
}

/// A full global store budget: commands are not committed (the group's
/// offset does not move) but retried, nothing is stored in only some of the
/// sessions, and all of them arrive, once, when there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_the_store_budget_are_not_committed_until_stored() {
    let Some((addr, _turn)) = k::broker().await else {
        return;
    };
    let (topic, group, id) = (k::unique("cmd"), k::unique("group"), k::unique("dev"));
    k::create_topics(&addr, &[&topic], 1).await;
    let route = k::route(&topic, &group, "devices/{key}/commands");
    let t = crate::common::start_with(|cfg| {
        k::configure(cfg, &addr, &route);
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.session.max_stored_bytes = 1000;
    })
    .await;
    // Two devices taking the same commands; a filler leaves room for one
    // copy of a command (16 + topic + payload bytes), not two.
    let filter = format!("devices/{id}/commands");
    let cost = (16 + filter.len() + "cmd-1".len()) as u64;
    let devices = [format!("{id}-a"), format!("{id}-b")];
    for dev in &devices {
        let mut d = b4::connect(crate::common::opts_v4(t.addr, dev, false)).await;
        d.subscribe(&filter, QoS::AtLeastOnce).await;
        d.disconnect().await;
    }
    let filler = format!("{id}-filler");
    let mut f = b4::connect(crate::common::opts_v4(t.addr, &filler, false)).await;
    f.subscribe("fill", QoS::AtLeastOnce).await;
    f.disconnect().await;
    let fill = vec![b'x'; (1000 - cost - 4 - 16) as usize];
    let mut p = b4::connect(crate::common::opts_v4(t.addr, &k::unique("pub"), true)).await;
    p.publish("fill", QoS::AtLeastOnce, false, &fill).await;
    p.disconnect().await;
    assert_eq!(
        crate::common::scrape(&t, "mqbridge_session_queued_bytes").await,
        Some((1000 - cost) as f64)
    );

    let producer = k::producer(&addr);
    let sent = b4::numbered("cmd-", 5);
    k::produce_many(&producer, &topic, &id, &sent).await;
    let blocked = format!(
        "mqbridge_bridge_commands_total{{route=\"{}\",result=\"blocked\"}}",
        route.name
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while crate::common::scrape(&t, &blocked).await.unwrap_or(0.0) < 6.0 {
        assert!(std::time::Instant::now() < deadline, "never blocked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (a, g, tp) = (addr.clone(), group.clone(), topic.clone());
    let offsets = tokio::task::spawn_blocking(move || k::committed(&a, &g, &tp, 1))
        .await
        .expect("offsets");
    assert!(
        offsets[0] <= 0,
        "nothing committed while blocked: {offsets:?}"
    );

    // Room again: the filler's session ends.
    b4::connect(crate::common::opts_v4(t.addr, &filler, true))
        .await
        .disconnect()
        .await;
    k::wait_committed(&addr, &group, &topic, 1, 5, Duration::from_secs(90)).await;
    for dev in &devices {
        let mut d = b4::connect(crate::common::opts_v4(t.addr, dev, false)).await;
        let mut got = b4::payloads(&d.expect_publishes(5).await);
        got.extend(b4::payloads(&d.drain().await));
        assert_eq!(got, sent, "every command arrives at {dev}, once, in order");
        d.disconnect().await;
    }
    t.gw.shutdown().await;
}
