//! Session queue limits apply to downlink commands, and what they refuse is
//! counted per route (`mqbridge_bridge_commands_total{result="rejected"}`);
//! the refused commands are still acked (they would never fit).
//! A full GLOBAL store budget is different: commands are not acked but
//! retried (`result="blocked"`), and all of them arrive once there is room.

use crate::common::amqp::{broker, suffix};
use crate::common::downlink::{commands, configure, metrics, wait_commands, Commands, Meta};
use crate::common::{b4, opts_v4};
use mqbridge::config::QueueFullPolicy;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status code and body of `GET /readyz`.
async fn readyz(admin: std::net::SocketAddr) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn blocked_gauge(text: &str, route: &str) -> Option<i64> {
    let prefix = format!("mqbridge_bridge_downlink_blocked{{route=\"{route}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_refused_by_a_full_store_budget_are_retried_not_acked() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let s = suffix();
    let (id, filler) = (format!("dev-{s}"), format!("filler-{s}"));
    let route = cmds.route("budget", "{routing_key}");
    let t = crate::common::start_with(|cfg| {
        configure(cfg, route);
        cfg.session.max_stored_bytes = 1000;
    })
    .await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    cmds.wait_consumer().await;
    // Offline persistent sessions: two devices taking the same commands, and
    // one that fills the budget so that one copy of a command (47 bytes)
    // would fit but not both: nothing may be stored in one and retried later.
    let devices = [format!("{id}-a"), format!("{id}-b")];
    for dev in &devices {
        let mut d = b4::connect(opts_v4(t.addr, dev, false)).await;
        d.subscribe(&format!("devices/{id}/commands"), QoS::AtLeastOnce)
            .await;
        d.disconnect().await;
    }
    let mut f = b4::connect(opts_v4(t.addr, &filler, false)).await;
    f.subscribe(&format!("fill/{s}"), QoS::AtLeastOnce).await;
    f.disconnect().await;
    let mut p = b4::connect(opts_v4(t.addr, &format!("pub-{s}"), true)).await;
    p.publish(&format!("fill/{s}"), QoS::AtLeastOnce, false, &[b'x'; 911])
        .await;
    p.disconnect().await;
    let text = metrics(admin).await;
    assert!(
        text.contains("mqbridge_session_queued_bytes 940\n"),
        "the filler holds 940 of the 1000 bytes:\n{text}"
    );

    let sent: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    for c in &sent {
        cmds.publish(
            &format!("devices.{id}.commands"),
            c.as_bytes(),
            Meta::default(),
        )
        .await;
    }
    // Refused again and again, never stored, never counted as dropped.
    let text = wait_commands(admin, "budget", "blocked", 6).await;
    assert_eq!(commands(&text, "budget", "stored"), 0, "{text}");
    assert_eq!(commands(&text, "budget", "rejected"), 0, "{text}");
    assert_eq!(blocked_gauge(&text, "budget"), Some(1), "{text}");
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("downlink paused"), "{body}");

    // Room again: the filler's session ends (clean start), its bytes are freed.
    b4::connect(opts_v4(t.addr, &filler, true))
        .await
        .disconnect()
        .await;
    let text = wait_commands(admin, "budget", "stored", 5).await;
    assert_eq!(commands(&text, "budget", "rejected"), 0, "{text}");
    assert_eq!(blocked_gauge(&text, "budget"), Some(0), "{text}");
    assert_eq!(readyz(admin).await.0, 200);

    for dev in &devices {
        let mut d = b4::connect(opts_v4(t.addr, dev, false)).await;
        let mut got = b4::payloads(&d.expect_publishes(5).await);
        got.extend(b4::payloads(&d.drain().await));
        assert_eq!(got, sent, "every command arrives at {dev}, once, in order");
        d.disconnect().await;
    }
    t.gw.shutdown().await;
    // Every command acked once stored: with the gateway's consumer gone, an
    // unacked one would be back in the queue.
    cmds.assert_nothing_unacked().await;
    cmds.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_the_session_limit_are_refused_and_counted_per_route() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let id = format!("dev-{}", suffix());
    let route = cmds.route("limited", "{routing_key}");
    let t = crate::common::start_with(|cfg| {
        configure(cfg, route);
        cfg.session.max_queued_messages = 3;
        cfg.session.queue_full_policy = QueueFullPolicy::RejectNew.to_string();
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

    let mut d = b4::connect(opts_v4(t.addr, &id, false)).await;
    let got = d.expect_publishes(3).await;
    assert_eq!(
        b4::payloads(&got),
        ["c0", "c1", "c2"],
        "the first three fit, in order"
    );
    d.disconnect().await;
    t.gw.shutdown().await;
    // The refused ones were settled (acked) too: nothing comes back to the
    // queue once the gateway's consumer is gone.
    cmds.assert_nothing_unacked().await;
    cmds.cleanup().await;
}
