//! The AMQP downlink end to end: commands published to the real RabbitMQ,
//! consumed by the in-process gateway, delivered to real MQTT clients
//! (rumqttc). Skipped with a note when RabbitMQ is not reachable (unless
//! CI=true). Every test uses its own random exchange and queue names.

use std::time::{Duration, Instant};

use crate::common::amqp::{broker, header, suffix, Fixture};
use crate::common::downlink::{
    commands, configure, metrics, now_secs, wait_commands, Commands, Meta,
};
use crate::common::{b4, b5, opts_v4, opts_v5};
use lapin::options::QueueDeleteOptions;
use mqbridge::app::Gateway;
use rumqttc::QoS;

/// A persistent 3.1.1 device that subscribed and went away gets every
/// command stored while it was offline, in order, across a gateway restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_gets_commands_after_gateway_restart() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let id = format!("dev-{}", suffix());
    let route = cmds.route("commands", "{routing_key}");
    let r = route.clone();
    let t = crate::common::start_with(|cfg| configure(cfg, r)).await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    cmds.wait_consumer().await;

    let mut d = b4::connect(opts_v4(t.addr, &id, false)).await;
    d.subscribe(&format!("devices/{id}/commands"), QoS::AtLeastOnce)
        .await;
    d.disconnect().await;

    let sent: Vec<String> = (0..20).map(|i| format!("cmd-{i:02}")).collect();
    for p in &sent {
        cmds.publish(
            &format!("devices.{id}.commands"),
            p.as_bytes(),
            Meta::default(),
        )
        .await;
    }
    wait_commands(admin, "commands", "stored", 20).await;
    t.gw.shutdown().await;
    // Everything was acked before the source let go of its connection.
    let (left, consumers) = cmds.stats().await.expect("queue exists");
    assert_eq!(
        (left, consumers),
        (0, 0),
        "ready messages / consumers after shutdown"
    );

    let mut cfg = crate::common::test_config(t.dir.path());
    configure(&mut cfg, route);
    let cfg = cfg.validate().expect("test config is valid");
    let gw = Gateway::start(cfg).await.expect("gateway restarts");
    let mut d = b4::connect(opts_v4(gw.mqtt_addr, &id, false)).await;
    assert!(d.session_present(), "session survives the restart");
    let got = d.expect_publishes(20).await;
    assert_eq!(b4::payloads(&got), sent);
    for p in &got {
        assert_eq!(p.topic, format!("devices/{id}/commands"));
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    assert!(d.drain().await.is_empty(), "no duplicates");
    d.disconnect().await;
    gw.shutdown().await;
    cmds.cleanup().await;
}

/// A command addressed by header to a client that never connected creates
/// its session; the device takes it over with CleanSession=0 and gets the
/// command without subscribing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addressed_command_creates_the_session() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let id = format!("neverseen-{}", suffix());
    let mut route = cmds.route("addressed", "cmd/{header.device}");
    route.client_id = Some("{header.device}".into());
    route.create_sessions = true;
    let t = crate::common::start_with(|cfg| configure(cfg, route)).await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    cmds.wait_consumer().await;

    let meta = Meta {
        headers: &[("device", &id)],
        ..Meta::default()
    };
    cmds.publish("devices.any.commands", b"reboot", meta).await;
    wait_commands(admin, "addressed", "stored", 1).await;

    let mut d = b4::connect(opts_v4(t.addr, &id, false)).await;
    assert!(d.session_present(), "the preset session is taken over");
    let got = d.expect_publishes(1).await;
    assert_eq!(got[0].topic, format!("cmd/{id}"));
    assert_eq!(&got[0].payload[..], b"reboot");
    assert!(d.drain().await.is_empty());
    d.disconnect().await;
    t.gw.shutdown().await;
    cmds.cleanup().await;
}

/// A command that expired (AMQP timestamp + mqtt_message_expiry in the
/// past) is counted and not delivered; the next one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_command_is_not_delivered() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let id = format!("dev-{}", suffix());
    let route = cmds.route("expiring", "{routing_key}");
    let t = crate::common::start_with(|cfg| configure(cfg, route)).await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    cmds.wait_consumer().await;
    let mut d = b4::connect(opts_v4(t.addr, &id, true)).await;
    d.subscribe(&format!("devices/{id}/commands"), QoS::AtLeastOnce)
        .await;

    let key = format!("devices.{id}.commands");
    let stale = Meta {
        headers: &[("mqtt_message_expiry", "1")],
        timestamp: Some(now_secs() - 10),
        ..Meta::default()
    };
    cmds.publish(&key, b"stale", stale).await;
    cmds.publish(&key, b"fresh", Meta::default()).await;

    let got = d.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["fresh"]);
    assert!(
        d.drain().await.is_empty(),
        "the expired command never arrives"
    );
    let text = wait_commands(admin, "expiring", "stored", 1).await;
    assert_eq!(commands(&text, "expiring", "expired"), 1, "{text}");
    d.disconnect().await;
    t.gw.shutdown().await;
    // Both settled (acked), the expired one too.
    cmds.assert_nothing_unacked().await;
    cmds.cleanup().await;
}

/// Commands whose topic cannot be rendered (missing header), is not a
/// topic name (wildcard) or is over the topic limits are dead-lettered with the reason and acked; the
/// next valid command is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_are_dead_lettered() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let dead = Fixture::new(&cmds.conn, "#").await;
    let id = format!("dev-{}", suffix());
    let mut route = cmds.route("malformed", "{header.t}");
    route.dead_letter_target = Some(dead.exchange.clone());
    let t = crate::common::start_with(|cfg| configure(cfg, route)).await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    cmds.wait_consumer().await;
    let topic = format!("dev/{id}/x");
    let mut d = b4::connect(opts_v4(t.addr, &id, true)).await;
    d.subscribe(&topic, QoS::AtLeastOnce).await;

    let key = format!("devices.{id}.commands");
    cmds.publish(&key, b"no-topic", Meta::default()).await;
    let wildcard = Meta {
        headers: &[("t", "a/+")],
        ..Meta::default()
    };
    cmds.publish(&key, b"wildcard", wildcard).await;
    // Over mqtt.max_topic_levels (128): invalid like any bad topic.
    let deep_topic = vec!["l"; 129].join("/");
    let deep = Meta {
        headers: &[("t", &deep_topic)],
        ..Meta::default()
    };
    cmds.publish(&key, b"deep", deep).await;
    let good = Meta {
        headers: &[("t", &topic)],
        ..Meta::default()
    };
    cmds.publish(&key, b"ok", good).await;

    let got = d.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["ok"]);
    let letters = dead.take(3, Duration::from_secs(10)).await;
    let payloads: Vec<&[u8]> = letters.iter().map(|l| &l.data[..]).collect();
    assert_eq!(payloads, [&b"no-topic"[..], &b"wildcard"[..], &b"deep"[..]]);
    for l in &letters {
        let why = header(l, "mqbridge_error").expect("mqbridge_error header");
        let from = header(l, "mqbridge_source").expect("mqbridge_source header");
        assert!(from.starts_with(&format!("{}/", cmds.queue)), "{from}");
        eprintln!("dead letter: {why} (from {from})");
    }
    let text = wait_commands(admin, "malformed", "dead_lettered", 3).await;
    assert_eq!(commands(&text, "malformed", "invalid"), 3, "{text}");
    assert!(d.drain().await.is_empty());
    d.disconnect().await;
    t.gw.shutdown().await;
    // The dead-lettered commands were acked too.
    cmds.assert_nothing_unacked().await;
    dead.cleanup().await;
    cmds.cleanup().await;
}

/// Once the device acknowledges a command, and not before, a JSON receipt
/// with its client id and correlation data reaches the receipt exchange. The
/// 5.0 device also sees the headers as properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_after_the_device_acknowledges() {
    use rumqttc::v5::mqttbytes::QoS as V5QoS;
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let receipts = Fixture::new(&cmds.conn, "#").await;
    let id = format!("dev-{}", suffix());
    let ctl_id = format!("ctl-{}", suffix());
    let mut route = cmds.route("receipted", "{routing_key}");
    route.receipt_target = Some(receipts.exchange.clone());
    let t = crate::common::start_with(|cfg| configure(cfg, route)).await;
    cmds.wait_consumer().await;
    // The device acknowledges by hand; the control device automatically.
    let mut o = opts_v5(t.addr, &id, true, None);
    o.set_manual_acks(true);
    let mut d = b5::connect(o).await;
    d.subscribe(&format!("devices/{id}/commands"), V5QoS::AtLeastOnce)
        .await;
    let mut ctl = b5::connect(opts_v5(t.addr, &ctl_id, true, None)).await;
    ctl.subscribe(&format!("devices/{ctl_id}/commands"), V5QoS::AtLeastOnce)
        .await;

    let meta = Meta {
        headers: &[("mqtt_correlation_data", "abc"), ("extra", "1")],
        content_type: Some("text/plain"),
        ..Meta::default()
    };
    cmds.publish(&format!("devices.{id}.commands"), b"open", meta)
        .await;
    let got = d.expect_publishes(1).await;
    assert_eq!(&got[0].payload[..], b"open");
    let props = got[0].properties.clone().expect("5.0 properties");
    assert_eq!(props.correlation_data.as_deref(), Some(&b"abc"[..]));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        [("extra".to_string(), "1".to_string())]
    );

    // Not acknowledged yet: a command delivered after it, to the control
    // device, gets its receipt, and that is the only one so far.
    cmds.publish(&format!("devices.{ctl_id}.commands"), b"c", Meta::default())
        .await;
    ctl.expect_publishes(1).await;
    let client_of = |r: &lapin::message::Delivery| -> String {
        let body: serde_json::Value = serde_json::from_slice(&r.data).expect("JSON receipt");
        body["client_id"].as_str().unwrap_or_default().to_string()
    };
    let r = receipts.take(1, Duration::from_secs(10)).await;
    assert_eq!(r.len(), 1, "no receipt for the control device");
    assert_eq!(
        client_of(&r[0]),
        ctl_id,
        "receipt before the device's PUBACK"
    );
    assert!(
        receipts
            .take(1, Duration::from_millis(300))
            .await
            .is_empty(),
        "receipt before the device's PUBACK"
    );

    d.client.ack(&got[0]).await.expect("PUBACK sent");
    let r = receipts.take(1, Duration::from_secs(10)).await;
    assert_eq!(r.len(), 1, "no receipt after the PUBACK");
    let body: serde_json::Value = serde_json::from_slice(&r[0].data).expect("JSON receipt");
    assert_eq!(body["client_id"], id.as_str(), "{body}");
    assert_eq!(body["correlation_data"], "abc", "{body}");
    assert_eq!(body["topic"], format!("devices/{id}/commands"), "{body}");
    d.disconnect().await;
    ctl.disconnect().await;
    t.gw.shutdown().await;
    receipts.cleanup().await;
    cmds.cleanup().await;
}

/// The broker cancels the consumer (its queue is deleted): the source
/// reconnects, declares and binds the queue again, and consumes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_recovers_when_its_queue_is_deleted() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let id = format!("dev-{}", suffix());
    let route = cmds.route("recovering", "{routing_key}");
    let t = crate::common::start_with(|cfg| configure(cfg, route)).await;
    cmds.wait_consumer().await;
    let mut d = b4::connect(opts_v4(t.addr, &id, true)).await;
    d.subscribe(&format!("devices/{id}/commands"), QoS::AtLeastOnce)
        .await;
    let key = format!("devices.{id}.commands");
    cmds.publish(&key, b"before", Meta::default()).await;
    assert_eq!(b4::payloads(&d.expect_publishes(1).await), ["before"]);

    cmds.channel
        .queue_delete(cmds.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue deleted");
    let began = Instant::now();
    cmds.wait_consumer().await;
    eprintln!("consuming again after {:?}", began.elapsed());
    cmds.publish(&key, b"after", Meta::default()).await;
    assert_eq!(b4::payloads(&d.expect_publishes(1).await), ["after"]);
    d.disconnect().await;
    t.gw.shutdown().await;
    cmds.cleanup().await;
}

/// Start-up does not wait for an unreachable broker, and stopping does not
/// either. The broken behaviour is waiting for ever (retrying with backoff),
/// so the bound is generous enough for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_neither_blocks_start_nor_stop() {
    const PATIENCE: Duration = Duration::from_secs(10);
    crate::common::init_tracing();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let began = Instant::now();
    let t = crate::common::start_with(|cfg| {
        let mut b = crate::common::amqp::backend("", false);
        b.uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f").into();
        let route = Commands::route_for("nowhere", "q-nowhere", "{routing_key}");
        configure(cfg, route);
        cfg.bridge.backends = vec![mqbridge::config::BackendConfig::Amqp(b)];
    })
    .await;
    assert!(began.elapsed() < PATIENCE, "{:?}", began.elapsed());
    let admin = t.gw.admin_addr.expect("admin endpoint");
    assert!(metrics(admin).await.contains("200 OK"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    t.gw.shutdown().await;
    assert!(began.elapsed() < PATIENCE, "{:?}", began.elapsed());
}
