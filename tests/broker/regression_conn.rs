//! Regression tests for bugs found in review (each name says the bug it guards against).
//! Review: end-to-end checks over TCP against the in-process gateway.

use std::time::Duration;

use crate::common::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------
// 1. A connection whose CONNACK cannot be written (peer reset the socket
//    while the router was committing the CONNECT) returns from `handshake`
//    with an error after the router attached it; `serve` then returns without
//    RouterMsg::Disconnect. The session stays "online" for ever: it never
//    expires, its will is never published, and it keeps counting against
//    session.max_persistent_sessions.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_connack_write_failure_leaves_session_attached_for_ever() {
    init_tracing();
    let t = start_with(|c| {
        c.session.v311_session_expiry_secs = 1;
    })
    .await;
    // Reset the socket at various points after the CONNECT was sent.
    let delays_us: Vec<u64> = (0..40).map(|i| i * 150).collect();
    for (i, d) in delays_us.iter().enumerate() {
        let s = raw::send(t.addr, &raw::connect_packet(4, &format!("leak{i}"), false)).await;
        tokio::time::sleep(Duration::from_micros(*d)).await;
        s.set_zero_linger().unwrap();
        drop(s); // RST
    }
    // Every session has been offline for longer than its 1 s expiry.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut leaked = Vec::new();
    for i in 0..delays_us.len() {
        let c = b4::connect(opts_v4(t.addr, &format!("leak{i}"), false)).await;
        if c.session_present() {
            leaked.push(i);
        }
        c.disconnect().await;
    }
    t.gw.shutdown().await;
    assert!(
        leaked.is_empty(),
        "sessions still present 4 s after a 1 s expiry (never detached): {leaked:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. An expired retained message is still sent to a new QoS 0 subscriber:
//    QoS 0 deliveries to an online client bypass the queue, and only the
//    queue (pump) checks Message Expiry (MQTT-3.3.2-5).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_expired_retained_message_sent_to_qos0_subscriber() {
    init_tracing();
    let t = start().await;
    let mut p = b5::connect(opts_v5(t.addr, "rp", true, None)).await;
    let props = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    p.publish_with("ret/t", V5QoS::AtLeastOnce, true, b"short-lived", props)
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut s1 = b5::connect(opts_v5(t.addr, "rs1", true, None)).await;
    s1.subscribe("ret/t", V5QoS::AtLeastOnce).await;
    let q1 = s1.until_control().await;
    let mut s0 = b5::connect(opts_v5(t.addr, "rs0", true, None)).await;
    s0.subscribe("ret/t", V5QoS::AtMostOnce).await;
    let q0 = s0.until_control().await;
    t.gw.shutdown().await;
    assert_eq!(q1.len(), 0, "QoS 1 subscriber: expired retained dropped");
    assert_eq!(
        q0.len(),
        0,
        "QoS 0 subscriber got an expired retained message: {:?}",
        q0.iter().map(|p| p.properties.clone()).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// 3. A QoS 2 PUBLISH resent by the device after a reconnect (PUBREC lost)
//    is recognised as a duplicate by the router, but the connection has
//    already dispatched it to the uplink routes: the backend gets it twice.
// ---------------------------------------------------------------------------

fn publish_qos2(topic: &str, pkid: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut p = vec![0x34 | if dup { 0x08 } else { 0 }, body.len() as u8];
    p.extend(body);
    p
}

/// A QoS 2 PUBLISH re-sent after a reconnect (PUBREC lost) must reach the
/// uplink backend once, like MQTT subscribers.
#[tokio::test]
async fn review_qos2_duplicate_from_device_reaches_uplink_twice() {
    init_tracing();
    let t = start().await;
    let mut sub = b4::connect(opts_v4(t.addr, "watch", true)).await;
    sub.subscribe("devices/+/telemetry", rumqttc::QoS::ExactlyOnce)
        .await;

    let topic = "devices/q2/telemetry";
    let mut s = raw::send(t.addr, &raw::connect_packet(4, "q2", false)).await;
    let connack = raw::read_packet(&mut s).await.unwrap();
    assert_eq!(connack[0], 0x20);
    s.write_all(&publish_qos2(topic, 7, b"once", false))
        .await
        .unwrap();
    let pubrec = raw::read_packet(&mut s).await.unwrap();
    assert_eq!(pubrec, vec![0x50, 0x02, 0x00, 0x07]);
    drop(s); // the PUBREC was "lost": the device reconnects and resends

    let mut s = raw::send(t.addr, &raw::connect_packet(4, "q2", false)).await;
    let connack = raw::read_packet(&mut s).await.unwrap();
    assert_eq!(connack, vec![0x20, 0x02, 0x01, 0x00], "session present");
    s.write_all(&publish_qos2(topic, 7, b"once", true))
        .await
        .unwrap();
    let pubrec = raw::read_packet(&mut s).await.unwrap();
    assert_eq!(pubrec, vec![0x50, 0x02, 0x00, 0x07]);
    s.write_all(&[0x62, 0x02, 0x00, 0x07]).await.unwrap();
    let pubcomp = raw::read_packet(&mut s).await.unwrap();
    assert_eq!(pubcomp, vec![0x70, 0x02, 0x00, 0x07]);

    let mqtt = sub.until_control().await;
    let path = t.dir.path().join("uplink").join("telemetry.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines = text.lines().filter(|l| l.contains("once")).count();
    drop(s);
    t.gw.shutdown().await;
    assert_eq!(mqtt.len(), 1, "MQTT subscriber: exactly once");
    assert_eq!(
        lines, 1,
        "uplink file got the QoS 2 message {lines} times:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// 4. End to end: a QoS 1 message for an offline persistent session that
//    reaches the router in the same batch as that session's reconnect is
//    acknowledged to the publisher and then deleted as "missing from store"
//    (the load task reads the store before the batch's Enqueue is submitted).
// ---------------------------------------------------------------------------

fn publish_qos1(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut p = vec![0x32, body.len() as u8];
    p.extend(body);
    p
}

/// The batch is shaped by a slow router step (a SUBSCRIBE whose filters each
/// scan every retained message) while the second worker is idle, so it
/// steals the load task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_e2e_message_lost_when_reconnect_shares_a_batch() {
    init_tracing();
    let t = start_with(|c| {
        c.session.max_queued_messages = 100_000;
        c.mqtt.max_retained_messages = 100_000;
    })
    .await;
    let addr = t.addr;
    // 20k retained messages under r/.
    {
        let (c, mut ev) = rumqttc::AsyncClient::new(opts_v4(addr, "retainer", true), 1000);
        let poll = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        for i in 0..20_000 {
            c.publish(
                format!("r/{i}"),
                rumqttc::QoS::AtMostOnce,
                true,
                vec![1u8; 8],
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        poll.abort();
    }
    let mut x = b4::connect(opts_v4(addr, "xb", false)).await;
    x.subscribe("xb/t", rumqttc::QoS::AtLeastOnce).await;
    x.disconnect().await;
    let mut f = b4::connect(opts_v4(addr, "fsub", true)).await;
    f.subscribe("fl/t", rumqttc::QoS::AtMostOnce).await;
    let fdrain = tokio::spawn(async move { while f.publishes.recv().await.is_some() {} });

    // S: re-subscribes to r/# each round (router busy for a while).
    let mut s = raw::send(addr, &raw::connect_packet(4, "slow", true)).await;
    raw::read_packet(&mut s).await.unwrap();
    let (mut sr, mut sw) = s.into_split();
    let sreader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut b = vec![0u8; 1 << 16];
        while let Ok(n) = sr.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    });
    let mut p = raw::send(addr, &raw::connect_packet(4, "pb", true)).await;
    raw::read_packet(&mut p).await.unwrap();
    let (mut pr, mut pw) = p.into_split();
    // Every 4-byte frame P receives; checked after the run (an assert in
    // this task would die with the task when it is aborted).
    let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::<[u8; 4]>::new()));
    let frames2 = frames.clone();
    let preader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 4];
        while pr.read_exact(&mut b).await.is_ok() {
            frames2.lock().unwrap().push(b);
        }
    });
    let mut qos0 = Vec::new();
    for _ in 0..300 {
        qos0.extend_from_slice(&[0x30, 0x06, 0x00, 0x04, b'f', b'l', b'/', b't']);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lost = None;
    for i in 0..60u16 {
        let payload = format!("m{i:04}");
        let mut xs = tokio::net::TcpStream::connect(addr).await.unwrap();
        // SUBSCRIBE to 30 filters matching no retained message: each one
        // still scans every retained message (router busy, workers idle).
        let mut body = vec![0x00, (i + 1) as u8];
        for k in 0..30u8 {
            body.extend_from_slice(&[0x00, 0x04, b'z', b'z', b'/', b'a' + k, 0x00]);
        }
        let n = body.len();
        let mut sub = vec![0x82, (n as u8 & 0x7f) | 0x80, (n >> 7) as u8];
        sub.extend(body);
        sw.write_all(&sub).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        pw.write_all(&publish_qos1("xb/t", i + 1, payload.as_bytes()))
            .await
            .unwrap();
        xs.write_all(&raw::connect_packet(4, "xb", false))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_micros(300)).await;
        pw.write_all(&qos0).await.unwrap();
        let connack = raw::read_packet(&mut xs).await.unwrap();
        assert_eq!(connack[0], 0x20);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(pk) = raw::read_packet(&mut xs).await {
                if pk[0] & 0xf0 == 0x30 {
                    let tl = u16::from_be_bytes([pk[2], pk[3]]) as usize;
                    let pkid = [pk[4 + tl], pk[5 + tl]];
                    xs.write_all(&[0x40, 0x02, pkid[0], pkid[1]]).await.unwrap();
                    if pk.ends_with(payload.as_bytes()) {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        let _ = xs.write_all(&[0xe0, 0x00]).await;
        drop(xs);
        if !got {
            tokio::time::sleep(Duration::from_millis(500)).await;
            lost = Some(i);
            break;
        }
    }
    fdrain.abort();
    preader.abort();
    sreader.abort();
    t.gw.shutdown().await;
    let frames = frames.lock().unwrap().clone();
    // Only PUBACKs come back to P (it subscribes to nothing).
    let other: Vec<_> = frames.iter().filter(|f| f[..2] != [0x40, 0x02]).collect();
    assert!(other.is_empty(), "P got more than PUBACKs: {other:02x?}");
    if let Some(i) = lost {
        let got_puback = frames
            .iter()
            .any(|f| u16::from_be_bytes([f[2], f[3]]) == i + 1);
        panic!("message m{i:04} never delivered to the persistent session; PUBACK sent to the publisher: {got_puback}");
    }
}
