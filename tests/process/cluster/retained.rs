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
