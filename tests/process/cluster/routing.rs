//! Device to device across nodes at QoS 1 and 2, with nodes killed
//! mid-stream: nothing acknowledged is lost, QoS 2 is not duplicated, and
//! each publisher's order holds.

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Nodes;
use crate::common::kafka as k;
use crate::common::{b4, opts_v4, raw, within};

/// A subscriber that receives QoS 2 as the spec asks a receiver to
/// (MQTT-4.3.3, method A): a PUBLISH whose packet id awaits its PUBREL is a
/// duplicate and not delivered. Its pending ids outlive a connection, as a
/// persistent client's state must; rumqttc itself delivers every PUBLISH.
struct Receiver {
    delivered: mpsc::UnboundedReceiver<(QoS, String)>,
    /// Resolves at the SUBACK (or at once, for a receiver that does not subscribe).
    subscribed: tokio::sync::oneshot::Receiver<()>,
    task: tokio::task::JoinHandle<HashSet<u16>>,
}

fn receive(opts: rumqttc::MqttOptions, mut pending: HashSet<u16>, subscribe: bool) -> Receiver {
    let (tx, delivered) = mpsc::unbounded_channel();
    let (suback, subscribed) = tokio::sync::oneshot::channel();
    let mut suback = Some(suback);
    if !subscribe {
        let _ = suback.take().map(|s| s.send(()));
    }
    let task = tokio::spawn(async move {
        let (client, mut ev) = AsyncClient::new(opts, 100);
        if subscribe {
            client
                .subscribe("q/#", QoS::ExactlyOnce)
                .await
                .expect("subscribe");
        }
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.qos == QoS::ExactlyOnce && !pending.insert(p.pkid) {
                        continue;
                    }
                    let _ = tx.send((p.qos, String::from_utf8_lossy(&p.payload).into_owned()));
                }
                Ok(Event::Incoming(Packet::PubRel(r))) => {
                    pending.remove(&r.pkid);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = suback.take().map(|s| s.send(()));
                }
                Ok(_) => {}
                Err(_) => return pending,
            }
        }
    });
    Receiver {
        delivered,
        subscribed,
        task,
    }
}

/// QoS 2 PUBLISH (3.1.1) with packet id `pkid`, DUP as given.
fn publish_qos2(topic: &str, payload: &str, pkid: u16, dup: bool) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload.as_bytes());
    let mut p = vec![if dup { 0x3c } else { 0x34 }, body.len() as u8];
    p.extend(body);
    p
}

async fn expect_packet(s: &mut TcpStream, kind: u8) -> Vec<u8> {
    let p = within(10, raw::read_packet(s)).await.expect("a packet");
    assert_eq!(p[0] & 0xf0, kind, "{p:?}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_and_qos2_between_nodes_survive_killed_nodes() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let mut nodes = Nodes::start(&kafka, "").await;
    let sub_id = k::unique("sub");
    // The subscriber on node 2, the publishers on node 0.
    let mut r = receive(opts_v4(nodes.addr(2), &sub_id, false), HashSet::new(), true);
    within(10, &mut r.subscribed).await.expect("SUBACK");
    let mut p = b4::connect(opts_v4(nodes.addr(0), &k::unique("p"), false)).await;
    let (a, b): (Vec<String>, Vec<String>) = (b4::numbered("a-", 10), b4::numbered("b-", 10));
    for (x, y) in a.iter().zip(&b) {
        p.publish("q/1", QoS::AtLeastOnce, false, x.as_bytes())
            .await;
        p.publish("q/2", QoS::ExactlyOnce, false, y.as_bytes())
            .await;
    }
    p.disconnect().await;

    // A QoS 2 PUBLISH received (PUBREC) by node 0, which dies before the
    // PUBREL: resent to node 1, it is recognised and not routed again.
    let raw_id = k::unique("raw");
    let mut s = raw::send(nodes.addr(0), &raw::connect_packet(4, &raw_id, false)).await;
    expect_packet(&mut s, 0x20).await;
    s.write_all(&publish_qos2("q/2", "c-00", 7, false))
        .await
        .expect("write");
    expect_packet(&mut s, 0x50).await;
    nodes.kill(0);
    let mut s = raw::send(nodes.addr(1), &raw::connect_packet(4, &raw_id, false)).await;
    let connack = expect_packet(&mut s, 0x20).await;
    assert_eq!(connack[2], 1, "Session Present on node 1");
    s.write_all(&publish_qos2("q/2", "c-00", 7, true))
        .await
        .expect("write");
    expect_packet(&mut s, 0x50).await;
    s.write_all(&[0x62, 0x02, 0, 7]).await.expect("write");
    expect_packet(&mut s, 0x70).await;

    // The subscriber's node dies mid-stream (while a publisher on node 1
    // sends d-*); the subscriber reconnects to node 1.
    let d: Vec<String> = b4::numbered("d-", 30);
    let publishing = {
        let (addr, d) = (nodes.addr(1), d.clone());
        tokio::spawn(async move {
            let mut p = b4::connect(opts_v4(addr, &k::unique("p"), false)).await;
            for m in &d {
                p.publish("q/2", QoS::ExactlyOnce, false, m.as_bytes())
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            p.disconnect().await;
        })
    };
    let mut got: Vec<(QoS, String)> = Vec::new();
    within(20, async {
        while got.iter().filter(|(_, p)| p.starts_with("d-")).count() < 5 {
            got.push(r.delivered.recv().await.expect("subscriber connected"));
        }
    })
    .await;
    nodes.kill(2);
    let pending = within(10, r.task).await.expect("receiver task");
    while let Ok(m) = r.delivered.try_recv() {
        got.push(m);
    }
    let mut r = receive(opts_v4(nodes.addr(1), &sub_id, false), pending, false);
    within(30, publishing).await.expect("publisher");
    nodes.spawn(0).await;
    let want = a.len() + b.len() + 1 + d.len();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while got.iter().filter(|(q, _)| *q == QoS::ExactlyOnce).count() < b.len() + 1 + d.len()
            || got.iter().filter(|(q, _)| *q == QoS::AtLeastOnce).count() < a.len()
        {
            match r.delivered.recv().await {
                Some(m) => got.push(m),
                None => break,
            }
        }
    })
    .await;
    // Anything more would be a duplicate: give it time to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Ok(m) = r.delivered.try_recv() {
        got.push(m);
    }
    let of = |prefix: &str| -> Vec<String> {
        got.iter()
            .map(|(_, p)| p.clone())
            .filter(|p| p.starts_with(prefix))
            .collect()
    };
    let mut qos1 = of("a-");
    qos1.dedup();
    assert_eq!(
        qos1,
        a,
        "QoS 1: all, in order (a resend may repeat one): {got:?}\n{}",
        nodes.logs()
    );
    assert_eq!(of("b-"), b, "QoS 2: each once, in order\n{}", nodes.logs());
    assert_eq!(of("c-"), vec!["c-00"], "QoS 2 resent to another node: once");
    assert_eq!(
        of("d-"),
        d,
        "QoS 2 across the move: each once, in order\n{}",
        nodes.logs()
    );
    assert!(got.len() >= want, "{got:?}");
    r.task.abort();
}

/// Only what some session of the cluster subscribes to goes through the
/// log: a clean subscriber on node 1 gets what is published on node 0,
/// and telemetry nobody subscribes to is acknowledged without a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribed_messages_go_through_the_log() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let nodes = Nodes::start(&kafka, "").await;
    let messages = format!("{}messages", nodes.prefix);
    let mut s = b4::connect(opts_v4(nodes.addr(1), &k::unique("s"), true)).await;
    s.subscribe("live/#", QoS::AtLeastOnce).await;
    let live = b4::numbered("live-", 5);
    b4::publish_all(nodes.addr(0), "live/x", QoS::AtLeastOnce, &live).await;
    assert_eq!(b4::payloads(&s.expect_publishes(5).await), live);
    let before: i64 = k::ends(&kafka, &messages, 3).iter().sum();
    let telemetry = b4::numbered("tele-", 20);
    b4::publish_all(nodes.addr(0), "telemetry/x", QoS::AtLeastOnce, &telemetry).await;
    let after: i64 = k::ends(&kafka, &messages, 3).iter().sum();
    assert_eq!(
        after, before,
        "telemetry nobody subscribes to was written to {messages}"
    );
    assert!(s.until_control().await.is_empty());
}
