//! A node stopped with SIGTERM drains: its 5.0 clients are sent to another
//! node (DISCONNECT 0x9C with a Server Reference), its 3.1.1 clients are
//! closed and find their sessions on the node they reconnect to.

use std::time::Duration;

use rumqttc::QoS;
use tokio::io::AsyncWriteExt;

use super::Nodes;
use crate::common::kafka as k;
use crate::common::{b4, b5, opts_v4, opts_v5, raw, within};

/// A 5.0 CONNECT with a Session Expiry Interval (property 0x11).
fn connect_v5(client_id: &str, expiry: u32) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 5, 0x00];
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(5);
    body.push(0x11);
    body.extend_from_slice(&expiry.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// A 5.0 DISCONNECT's reason and Server Reference, if it has one.
fn redirect_of(packet: &[u8]) -> (u8, Option<String>) {
    assert_eq!(packet[0], 0xe0, "not a DISCONNECT: {packet:?}");
    let reason = packet[2];
    let reference = (packet.len() > 7 && packet[4] == 0x1c).then(|| {
        let len = u16::from_be_bytes([packet[5], packet[6]]) as usize;
        String::from_utf8_lossy(&packet[7..7 + len]).into_owned()
    });
    (reason, reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_sends_its_clients_to_the_others() {
    let Some((kafka, _turn)) = k::broker().await else {
        return;
    };
    let mut nodes = Nodes::start(&kafka, "").await;
    let (id5, id4) = (k::unique("v5"), k::unique("v4"));
    let mut s5 = raw::send(nodes.addr(0), &connect_v5(&id5, 600)).await;
    let connack = within(10, raw::read_packet(&mut s5))
        .await
        .expect("CONNACK");
    assert_eq!((connack[0], connack[3]), (0x20, 0), "{connack:?}");
    // SUBSCRIBE drain/5 QoS 1 (packet id 1, no properties).
    let topic = b"drain/5";
    let mut sub = vec![0x82, (2 + 1 + 2 + topic.len() + 1) as u8, 0, 1, 0];
    sub.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    sub.extend_from_slice(topic);
    sub.push(1);
    s5.write_all(&sub).await.expect("write");
    let suback = within(10, raw::read_packet(&mut s5)).await.expect("SUBACK");
    assert_eq!(suback[0], 0x90);
    let mut d4 = b4::connect(opts_v4(nodes.addr(0), &id4, false)).await;
    d4.subscribe("drain/4", QoS::AtLeastOnce).await;
    // Node 0 must have seen the others' heartbeats (one a second) to name them.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stopping = async {
        let disconnect = within(10, raw::read_packet(&mut s5))
            .await
            .expect("DISCONNECT");
        let closed = d4.closed().await;
        (disconnect, closed)
    };
    let ((disconnect, _), ()) = tokio::join!(stopping, nodes.stop(0));
    let (reason, reference) = redirect_of(&disconnect);
    assert_eq!(reason, 0x9c, "Use another server");
    let to = reference.expect("a Server Reference");
    let others = [nodes.addr(1).to_string(), nodes.addr(2).to_string()];
    assert!(others.contains(&to), "{to} is not a live node ({others:?})");

    b4::publish_all(
        nodes.addr(1),
        "drain/5",
        QoS::AtLeastOnce,
        &["for-5".into()],
    )
    .await;
    b4::publish_all(
        nodes.addr(1),
        "drain/4",
        QoS::AtLeastOnce,
        &["for-4".into()],
    )
    .await;
    // The 5.0 client goes where it was sent and finds its session there.
    let addr: std::net::SocketAddr = to.parse().expect("HOST:PORT");
    let mut c5 = b5::connect(opts_v5(addr, &id5, false, Some(600))).await;
    assert!(c5.session_present(), "{}", nodes.logs());
    assert_eq!(b5::payloads(&c5.expect_publishes(1).await), vec!["for-5"]);
    c5.disconnect().await;
    // The 3.1.1 client reconnects to a node of its own choosing.
    let mut c4 = b4::connect(opts_v4(nodes.addr(2), &id4, false)).await;
    assert!(c4.session_present(), "{}", nodes.logs());
    assert_eq!(b4::payloads(&c4.expect_publishes(1).await), vec!["for-4"]);
    c4.disconnect().await;
}
