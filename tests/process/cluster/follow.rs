//! A persistent session follows its device to any node, also when the node
//! it was on is killed; a session is served by one node at a time.

use std::time::Duration;

use rumqttc::QoS;

use super::Nodes;
use crate::common::kafka as k;
use crate::common::{b4, b5, opts_v4, opts_v5, within};

/// A persistent device on node 0 subscribes and leaves; messages come in
/// through nodes 1 and 2 and commands through Kafka (consumed and
/// committed by node 1); node 1 is killed right after its last PUBACK, and
/// node 0 too; the device reconnects to
/// node 2 and gets everything, each source in order, with Session Present;
/// after node 1 is back, a reconnect there gets nothing again (what the
/// device acknowledged on node 2 is dropped everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_follows_its_device_when_its_node_is_killed() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let (commands, group) = (k::unique("cmd"), k::unique("group"));
    k::create_topics(&kafka, &[&commands], 1).await;
    let route = format!(
        r#"
[[bridge.downlink]]
name = "commands"
backend = "kafka"
topics = ["{commands}"]
group_id = "{group}"
topic = "devices/{{key}}/commands"
qos = 1
"#
    );
    // The downlink runs on node 1 only: the node that consumed and
    // committed the commands is killed afterwards.
    let mut nodes = Nodes::start_each(&kafka, ["", &route, ""]).await;
    let device = k::unique("dev");
    let mut d = b4::connect(opts_v4(nodes.addr(0), &device, false)).await;
    d.subscribe("tele/#", QoS::AtLeastOnce).await;
    d.subscribe(&format!("devices/{device}/commands"), QoS::AtLeastOnce)
        .await;
    d.disconnect().await;

    let p = k::producer(&kafka);
    let cmds = b4::numbered("cmd-", 3);
    k::produce_many(&p, &commands, &device, &cmds).await;
    // The command is committed at its source once it is in the cluster's log.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (a, g, t) = (kafka.clone(), group.clone(), commands.clone());
        let got = tokio::task::spawn_blocking(move || k::committed(&a, &g, &t, 1))
            .await
            .expect("offsets");
        if got == [3] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "commands not committed ({got:?})\n{}",
            nodes.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let from_b = b4::numbered("b-", 5);
    let from_c = b4::numbered("c-", 5);
    b4::publish_all(nodes.addr(2), "tele/c", QoS::AtLeastOnce, &from_c).await;
    b4::publish_all(nodes.addr(1), "tele/b", QoS::AtLeastOnce, &from_b).await;
    // The node that acknowledged b-* dies right after.
    nodes.kill(1);
    nodes.kill(0);
    let mut d = b4::connect(opts_v4(nodes.addr(2), &device, false)).await;
    assert!(d.session_present(), "{}", nodes.logs());
    let got = d.expect_publishes(13).await;
    let of = |prefix: &str| -> Vec<String> {
        b4::payloads(&got)
            .into_iter()
            .filter(|p| p.starts_with(prefix))
            .collect()
    };
    assert_eq!(of("b-"), from_b);
    assert_eq!(of("c-"), from_c);
    assert_eq!(of("cmd-"), cmds);
    assert!(d.until_control().await.is_empty(), "duplicates");
    d.disconnect().await;
    // Acknowledged on node 2: node 1, back, drops them from its copy.
    nodes.spawn(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut d = b4::connect(opts_v4(nodes.addr(1), &device, false)).await;
    assert!(d.session_present());
    assert!(d.until_control().await.is_empty(), "redelivered on node 1");
    d.disconnect().await;
}

/// The same client id connecting to node 1 while connected to node 0: node
/// 0 closes its connection with 0x8E (Session taken over), and a message
/// published afterwards reaches the device once, on node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_on_another_node_takes_the_session_over() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let nodes = Nodes::start(&kafka, "").await;
    let id = k::unique("dev");
    let mut first = b5::connect(opts_v5(nodes.addr(0), &id, true, Some(600))).await;
    first
        .subscribe("t/x", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let mut second = b5::connect(opts_v5(nodes.addr(1), &id, false, Some(600))).await;
    assert!(
        second.session_present(),
        "the session moved with its subscription"
    );
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::{ConnectionError, StateError};
    match first.closed().await {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            assert_eq!(reason_code, DisconnectReasonCode::SessionTakenOver)
        }
        other => panic!("expected DISCONNECT 0x8E, got {other:?}\n{}", nodes.logs()),
    }
    b4::publish_all(nodes.addr(2), "t/x", QoS::AtLeastOnce, &["once".into()]).await;
    let got = second.expect_publishes(1).await;
    assert_eq!(b5::payloads(&got), vec!["once"]);
    assert!(second.until_control().await.is_empty());
    assert!(
        first.publishes.try_recv().is_err(),
        "delivered to the old connection"
    );
}

/// Node 0 is killed with a device connected: the cluster's leader publishes
/// the device's will (after the node timeout), and a 5.0 session with a
/// short expiry ends everywhere on time instead of waiting for node 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_wills_and_expiries_are_taken_over() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let mut nodes = Nodes::start(&kafka, "").await;
    let will_topic = format!("wills/{}", k::unique("w"));
    let mut watcher = b4::connect(opts_v4(nodes.addr(1), &k::unique("watch"), true)).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;
    let mut o = opts_v4(nodes.addr(0), &k::unique("dev"), true);
    o.set_last_will(rumqttc::LastWill::new(
        &will_topic,
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let dev = b4::connect(o).await;
    let short = k::unique("short");
    let s = b5::connect(opts_v5(nodes.addr(0), &short, true, Some(2))).await;
    // Both connected on node 0 when it dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.kill(0);
    let got = watcher.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), vec!["gone"], "{}", nodes.logs());
    // The node timeout (3 s) and the session's expiry (2 s) have passed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = b5::connect(opts_v5(nodes.addr(2), &short, false, Some(2))).await;
    assert!(!again.session_present(), "expired session still present");
    again.disconnect().await;
    drop((dev, s));
}

/// A node killed while it stores a stream into its copy of a session, and
/// started again: it resumes right after what it stored (the position is
/// stored with the entries), so the device, reconnecting there, gets every
/// message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_keeps_one_copy_of_each_message() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let mut nodes = Nodes::start(&kafka, "").await;
    let device = k::unique("dev");
    let mut d = b4::connect(opts_v4(nodes.addr(2), &device, false)).await;
    d.subscribe("stream/#", QoS::AtLeastOnce).await;
    d.disconnect().await;
    let sent = b4::numbered("m-", 60);
    b4::publish_all(nodes.addr(0), "stream/x", QoS::AtLeastOnce, &sent).await;
    // Killed as soon as node 1 has stored them all: within Kafka's
    // auto-commit interval (200 ms) after, so Kafka's committed offsets lag
    // behind what its store holds.
    within(20, async {
        while nodes.metric(1, "mqbridge_session_queued_messages").await < sent.len() as f64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    nodes.kill(1);
    nodes.spawn(1).await;
    let mut d = b4::connect(opts_v4(nodes.addr(1), &device, false)).await;
    assert!(d.session_present());
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < sent.len() {
            match d.publishes.recv().await {
                Some(p) => got.push(p),
                None => break,
            }
        }
    })
    .await;
    assert_eq!(b4::payloads(&got), sent, "{}", nodes.logs());
    assert!(
        d.until_control().await.is_empty(),
        "duplicates after the restart"
    );
}
