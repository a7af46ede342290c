//! Retained messages are one value per topic across the cluster.

use rumqttc::QoS;

use super::Nodes;
use crate::common::kafka as k;
use crate::common::{b4, opts_v4};

/// Set through node 0, a new subscriber on node 2 gets it; cleared
/// through node 1, it is gone on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_is_set_and_cleared_cluster_wide() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let nodes = Nodes::start(&kafka, "").await;
    let topic = format!("state/{}", k::unique("r"));
    let mut p = b4::connect(opts_v4(nodes.addr(0), &k::unique("p"), true)).await;
    p.publish(&topic, QoS::AtLeastOnce, true, b"on").await;
    p.disconnect().await;
    let mut s = b4::connect(opts_v4(nodes.addr(2), &k::unique("s"), true)).await;
    s.subscribe(&topic, QoS::AtLeastOnce).await;
    let got = s.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), vec!["on"]);
    assert!(got[0].retain);
    s.disconnect().await;

    let mut p = b4::connect(opts_v4(nodes.addr(1), &k::unique("p"), true)).await;
    p.publish(&topic, QoS::AtLeastOnce, true, b"").await;
    p.disconnect().await;
    // Each node applies the log at its own pace: give them a moment.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for i in 0..3 {
        let mut s = b4::connect(opts_v4(nodes.addr(i), &k::unique("s"), true)).await;
        s.subscribe(&topic, QoS::AtLeastOnce).await;
        assert!(
            s.until_control().await.is_empty(),
            "still retained on node {i}"
        );
        s.disconnect().await;
    }
}

/// A session deleted through one node's admin API is gone on every node:
/// the device, reconnecting elsewhere, finds no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_on_one_node_is_gone_everywhere() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let nodes = Nodes::start(&kafka, "").await;
    let device = k::unique("dev");
    let mut d = b4::connect(opts_v4(nodes.addr(0), &device, false)).await;
    d.subscribe("gone/#", QoS::AtLeastOnce).await;
    d.disconnect().await;
    // Node 1 holds a copy: delete it there.
    let path = format!("/api/v1/sessions/{device}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match nodes.admin(1, "DELETE", &path).await {
            200 | 204 => break,
            // Not there yet (node 1 reads the log at its own pace).
            404 if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            other => panic!("DELETE answered {other}\n{}", nodes.logs()),
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for i in [0, 2] {
        let status = nodes.admin(i, "GET", &path).await;
        assert_eq!(status, 404, "session still on node {i}\n{}", nodes.logs());
    }
    let d = b4::connect(opts_v4(nodes.addr(2), &device, false)).await;
    assert!(!d.session_present(), "{}", nodes.logs());
    d.disconnect().await;
}
