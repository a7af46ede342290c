//! Session queue limits apply to downlink commands, and what they refuse is
//! counted per route (`mqbridge_bridge_commands_total{result="rejected"}`);
//! the refused commands are still acked (they would never fit).

mod bridge_amqp_support;
mod common;
mod downlink_support;

use bridge_amqp_support::{broker, suffix};
use common::{b4, opts_v4};
use downlink_support::{commands, configure, metrics, wait_commands, Commands, Meta};
use mqbridge::config::QueueFullPolicy;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_the_session_limit_are_refused_and_counted_per_route() {
    let Some(conn) = broker().await else { return };
    let cmds = Commands::new(conn).await;
    let id = format!("dev-{}", suffix());
    let route = cmds.route("limited", "{routing_key}");
    let t = common::start_with(|cfg| {
        configure(cfg, route);
        cfg.session.max_queued_messages = 3;
        cfg.session.queue_full_policy = QueueFullPolicy::RejectNew;
    })
    .await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    cmds.wait_consumer().await;
    let mut d = b4::connect(opts_v4(t.addr, &id, false)).await;
    d.subscribe(&format!("devices/{id}/commands"), QoS::AtLeastOnce)
        .await;
    d.disconnect().await;

    for i in 0..5 {
        cmds.publish(
            &format!("devices.{id}.commands"),
            format!("c{i}").as_bytes(),
            Meta::default(),
        )
        .await;
    }
    let text = wait_commands(admin, "limited", "rejected", 2).await;
    assert_eq!(commands(&text, "limited", "rejected"), 2);
    assert_eq!(
        commands(&text, "limited", "stored"),
        3,
        "the three that fit"
    );
    let text = metrics(admin).await;
    assert!(commands(&text, "limited", "rejected") >= 2);
    // Nothing is left unacked in the queue.
    let (left, _) = cmds.stats().await.expect("queue");
    assert_eq!(left, 0);

    let mut d = b4::connect(opts_v4(t.addr, &id, false)).await;
    let got = d.expect_publishes(3).await;
    assert_eq!(
        b4::payloads(&got),
        ["c0", "c1", "c2"],
        "the first three fit, in order"
    );
    d.disconnect().await;
    t.gw.shutdown().await;
    cmds.cleanup().await;
}
