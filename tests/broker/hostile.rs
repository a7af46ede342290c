//! Hostile and broken clients, byte by byte, against the in-process gateway.
//!
//! Each test opens a plain TCP connection, writes hand-built bytes, and checks
//! what comes back: particular packets (CONNACK, a 5.0 DISCONNECT with a given
//! reason code) and/or that the gateway closes the connection. Afterwards the
//! gateway must still serve a well-behaved client ([`assert_still_serves`]):
//! a bad connection costs that connection only.
//!
//! Packets are built with the small encoders below, straight from the MQTT
//! 3.1.1 / 5.0 wire format, so that invalid packets can be expressed.

mod conn;

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// Packet encoders
// ---------------------------------------------------------------------------

/// MQTT Variable Byte Integer (the Remaining Length encoding): 7 bits per
/// byte, least significant group first, high bit set on all but the last.
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// A length-prefixed string (two bytes big-endian length, then the bytes);
/// takes bytes so that invalid UTF-8 can be sent.
fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A whole packet: first byte (type and flags), Remaining Length, body.
fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// Protocol levels.
const V311: u8 = 4;
const V5: u8 = 5;

/// CONNECT for `level` with keep-alive 60 s, no will, no credentials.
/// For 5.0, `props` is the encoded property list (without its length).
fn connect(level: u8, client_id: &str, clean: bool, props: &[u8]) -> Vec<u8> {
    let mut body = mqtt_str(b"MQTT");
    body.push(level);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend(60u16.to_be_bytes());
    if level == V5 {
        body.extend(varint(props.len()));
        body.extend_from_slice(props);
    }
    body.extend(mqtt_str(client_id.as_bytes()));
    packet(0x10, &body)
}

/// 5.0 property: Session Expiry Interval (0x11, four-byte integer).
fn prop_session_expiry(secs: u32) -> Vec<u8> {
    let mut p = vec![0x11];
    p.extend(secs.to_be_bytes());
    p
}

/// 5.0 property: Topic Alias (0x23, two-byte integer).
fn prop_topic_alias(alias: u16) -> Vec<u8> {
    let mut p = vec![0x23];
    p.extend(alias.to_be_bytes());
    p
}

/// PUBLISH (no DUP, no RETAIN). `props` is `Some` for a 5.0 client (the
/// encoded property list), `None` for 3.1.1. `pkid` is only written for QoS > 0.
fn publish(topic: &[u8], qos: u8, pkid: u16, props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_str(topic);
    if qos > 0 {
        body.extend(pkid.to_be_bytes());
    }
    if let Some(props) = props {
        body.extend(varint(props.len()));
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// SUBSCRIBE with one filter and the given first byte (correct: 0x82).
fn subscribe(byte1: u8, pkid: u16, filter: &str, qos: u8, v5: bool) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0); // no properties
    }
    body.extend(mqtt_str(filter.as_bytes()));
    body.push(qos);
    packet(byte1, &body)
}

// ---------------------------------------------------------------------------
// Reading what the gateway sends
// ---------------------------------------------------------------------------

/// 5.0 reason codes checked below.
const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const TOPIC_NAME_INVALID: u8 = 0x90;
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;

/// A raw client connection with a read buffer.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// What [`Raw::next`] found.
#[derive(Debug, PartialEq)]
enum Next {
    /// First byte and body of one complete packet.
    Packet(u8, Vec<u8>),
    /// The gateway closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time limit.
    Timeout,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("tcp connect");
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Writes bytes. The gateway may already have closed the connection (it
    /// is allowed to stop reading at the first bad byte), so errors are
    /// returned, not raised.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await?;
        self.s.flush().await
    }

    /// Splits one complete packet off the buffer, if there is one.
    fn take_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let b = *self.buf.get(i)?;
            len |= ((b & 0x7f) as usize) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            assert!(i <= 4, "gateway sent a bad remaining length");
        }
        if self.buf.len() < i + len {
            return None;
        }
        let byte1 = self.buf[0];
        let body = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
        Some((byte1, body))
    }

    /// The next packet, or the end of the connection, within `limit`.
    async fn next(&mut self, limit: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((b, body)) = self.take_packet() {
                return Next::Packet(b, body);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed in the middle of a packet: {:02x?}",
                        self.buf
                    );
                    return Next::Closed;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the gateway closes the connection (within `secs`);
    /// returns the packets received before the close.
    async fn until_closed(&mut self, secs: u64) -> Vec<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Next::Packet(b, body) => got.push((b, body)),
                Next::Closed => return got,
                Next::Timeout => panic!(
                    "connection still open after {secs} s; received meanwhile: {}",
                    describe(&got)
                ),
            }
        }
    }

    /// Expects the connection to be closed with nothing sent first (3.1.1
    /// has no server DISCONNECT).
    async fn expect_closed_silently(&mut self) {
        let got = self.until_closed(5).await;
        assert!(
            got.is_empty(),
            "expected a silent close, got {}",
            describe(&got)
        );
    }

    /// Expects a 5.0 DISCONNECT with `reason` as the last packet before the
    /// connection closes. Packets before it must be of the types in `allowed`
    /// (first byte). Returns the packets before the DISCONNECT.
    async fn expect_disconnect(&mut self, reason: u8, allowed: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut got = self.until_closed(5).await;
        let last = got.pop();
        let Some((0xe0, body)) = last.clone() else {
            panic!(
                "expected DISCONNECT {reason:#04x} before the close, got {}{}",
                describe(&got),
                last.map(|l| describe(&[l])).unwrap_or_default()
            );
        };
        assert_eq!(
            body.first().copied(),
            Some(reason),
            "DISCONNECT reason code {:#04x?} (expected {reason:#04x}); body {:02x?}",
            body.first(),
            body
        );
        for (b, _) in &got {
            assert!(
                allowed.contains(b),
                "unexpected packet {b:#04x} before DISCONNECT: {}",
                describe(&got)
            );
        }
        got
    }

    /// Reads the CONNACK and returns (session present, return/reason code).
    async fn connack(&mut self) -> (bool, u8) {
        match self.next(Duration::from_secs(5)).await {
            Next::Packet(0x20, body) if body.len() >= 2 => (body[0] & 1 == 1, body[1]),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

/// Packet list for failure messages: type byte and body length.
fn describe(got: &[(u8, Vec<u8>)]) -> String {
    got.iter()
        .map(|(b, body)| {
            format!(
                "[{b:#04x} +{}B {:02x?}]",
                body.len(),
                &body[..body.len().min(8)]
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens a raw connection and completes a CONNECT/CONNACK exchange.
async fn connected(addr: SocketAddr, level: u8, id: &str) -> Raw {
    let mut r = Raw::open(addr).await;
    r.send(&connect(level, id, true, &[])).await.unwrap();
    let (_, code) = r.connack().await;
    assert_eq!(code, 0, "CONNACK refused");
    r
}

/// The gateway of a hostile-input test and, usually, a client that connected
/// before the attack (the bystander): [`assert_still_serves`] checks that it
/// still works afterwards, not only that a new client is served.
struct Hostile {
    gw: mqbridge::app::Gateway,
    addr: SocketAddr,
    /// The store directory, removed when the test ends.
    _dir: tempfile::TempDir,
    /// The bystander and its own topic, until [`assert_still_serves`] takes it.
    bystander: std::sync::Mutex<Option<(b4::Client, String)>>,
}

impl From<TestGateway> for Hostile {
    fn from(t: TestGateway) -> Hostile {
        Hostile {
            gw: t.gw,
            addr: t.addr,
            _dir: t.dir,
            bystander: std::sync::Mutex::new(None),
        }
    }
}

/// The in-process gateway with the admin endpoint on an ephemeral port (to
/// read its metrics), after `f` adjusted the test configuration, and a
/// bystander subscribed to its own topic.
async fn start_h(f: impl FnOnce(&mut mqbridge::config::Config)) -> Hostile {
    let t = start_h_alone(f).await;
    let id = format!("bystander-{}", rand_suffix());
    let topic = format!("bystander/{id}");
    let mut b = b4::connect(opts_v4(t.addr, &id, true)).await;
    b.subscribe(&topic, QoS::AtLeastOnce).await;
    *t.bystander.lock().expect("bystander") = Some((b, topic));
    t
}

/// As [`start_h`] for a test on paused time: without bridge backends, since
/// tokio stops auto-advancing paused time while a blocking task runs, and
/// the file sink's is one for the gateway's whole life.
async fn start_h_paused(f: impl FnOnce(&mut mqbridge::config::Config)) -> Hostile {
    start_h(|c| {
        c.bridge.backends.clear();
        c.bridge.uplink.clear();
        f(c);
    })
    .await
}

/// As [`start_h`] without the bystander, for tests that count connections.
async fn start_h_alone(f: impl FnOnce(&mut mqbridge::config::Config)) -> Hostile {
    start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        f(c);
    })
    .await
    .into()
}

/// The value of an unlabelled sample from `GET /metrics`.
async fn metric(t: &Hostile, name: &str) -> Option<f64> {
    let admin = t.gw.admin_addr.expect("admin endpoint enabled");
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    within(5, s.read_to_string(&mut body)).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The bystander (if any), connected before the attack, and a new
/// well-behaved client each still get a QoS 1 round trip through the
/// gateway, and afterwards no connection task is left over: the active
/// connections gauge returns to 0 (a task stuck on a hostile connection
/// would keep it up).
async fn assert_still_serves(t: &Hostile) {
    let bystander = t.bystander.lock().expect("bystander").take();
    if let Some((mut b, topic)) = bystander {
        b.publish(&topic, QoS::AtLeastOnce, false, b"still here")
            .await;
        let got = b.expect_publishes(1).await;
        assert_eq!(
            b4::payloads(&got),
            ["still here"],
            "the client connected before the attack"
        );
        b.disconnect().await;
    }
    let addr = t.addr;
    let id = format!("healthy-{}", rand_suffix());
    let topic = format!("health/{id}");
    let (c, mut ev) = AsyncClient::new(opts_v4(addr, &id, true), 10);
    c.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    c.publish(&topic, QoS::AtLeastOnce, false, "ping")
        .await
        .unwrap();
    let (mut got, mut acked) = (false, false);
    within(10, async {
        while !(got && acked) {
            match ev.poll().await.expect("healthy client connection") {
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"ping");
                    got = true;
                }
                Event::Incoming(Packet::PubAck(_)) => acked = true,
                _ => {}
            }
        }
    })
    .await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
    let name = "mqbridge_mqtt_connections_active{listener=\"tcp\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let active = metric(t, name).await;
        if active == Some(0.0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {active:?} 5 s after every client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Malformed and truncated packets
// ---------------------------------------------------------------------------

/// PUBLISH whose topic length points past the end of the packet.
fn publish_with_overlong_topic_length() -> Vec<u8> {
    // Remaining Length 3: topic length 0x0010 but only one byte follows.
    vec![0x30, 0x03, 0x00, 0x10, b'a']
}

#[tokio::test]
async fn malformed_packet_after_connect_v311_closes() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V311, "mal-4").await;
    let _ = r.send(&publish_with_overlong_topic_length()).await;
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn malformed_packet_after_connect_v5_disconnects() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "mal-5").await;
    // 5.0 PUBLISH: topic "a", then a property length (5) larger than what is left.
    let _ = r.send(&[0x30, 0x05, 0x00, 0x01, b'a', 0x05, 0x01]).await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn truncated_packet_then_close_is_not_delivered() {
    let t = start_h(|_| {}).await;
    // A subscriber for the topic of the truncated PUBLISH: nothing may reach it.
    let (sub, mut sub_ev) = AsyncClient::new(opts_v4(t.addr, "trunc-sub", true), 10);
    sub.subscribe("trunc/t", QoS::AtLeastOnce).await.unwrap();
    within(5, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_ev.poll().await.unwrap() {
                return;
            }
        }
    })
    .await;

    let mut r = connected(t.addr, V311, "trunc").await;
    let full = publish(b"trunc/t", 1, 1, None, b"never");
    r.send(&full[..full.len() - 3]).await.unwrap();
    r.s.shutdown().await.unwrap(); // half-close: the gateway reads EOF
    let got = r.until_closed(5).await;
    assert!(got.is_empty(), "no PUBACK for a partial PUBLISH: {got:?}");

    let leaked = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_ev.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await;
    assert!(leaked.is_err(), "truncated PUBLISH delivered: {leaked:?}");
    drop((sub, sub_ev));
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn truncated_connect_then_close() {
    let t = start_h(|_| {}).await;
    let mut r = Raw::open(t.addr).await;
    let c = connect(V311, "half", true, &[]);
    r.send(&c[..c.len() / 2]).await.unwrap();
    r.s.shutdown().await.unwrap();
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Remaining Length above max_packet_size is refused from the fixed header
/// alone: the body is never sent, so the gateway must not wait for it.
#[tokio::test]
async fn packet_too_large_v5_disconnects_with_0x95() {
    let t = start_h(|c| c.mqtt.max_packet_size = 1024).await;
    let mut r = connected(t.addr, V5, "big-5").await;
    let mut header = vec![0x30];
    header.extend(varint(100_000));
    header.extend([0x00, 0x01, b'a']);
    r.send(&header).await.unwrap();
    r.expect_disconnect(PACKET_TOO_LARGE, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn packet_too_large_v311_closes() {
    let t = start_h(|c| c.mqtt.max_packet_size = 1024).await;
    let mut r = connected(t.addr, V311, "big-4").await;
    let mut header = vec![0x30];
    header.extend(varint(100_000));
    header.extend([0x00, 0x01, b'a']);
    r.send(&header).await.unwrap();
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// A full-size packet one byte over the limit is refused too.
#[tokio::test]
async fn packet_one_byte_over_the_limit_v5() {
    let t = start_h(|c| c.mqtt.max_packet_size = 1024).await;
    let mut r = connected(t.addr, V5, "edge-5").await;
    // Whole packet = 1 + 2 (remaining length) + 1021 = 1024: accepted.
    let ok = publish(b"edge", 1, 7, Some(&[]), &[b'x'; 1021 - 2 - 4 - 2 - 1]);
    assert_eq!(ok.len(), 1024);
    r.send(&ok).await.unwrap();
    match r.next(Duration::from_secs(5)).await {
        Next::Packet(0x40, body) => assert_eq!(&body[..2], &[0, 7]),
        other => panic!("expected PUBACK for a packet of exactly the maximum size, got {other:?}"),
    }
    let over = publish(b"edge", 1, 8, Some(&[]), &[b'x'; 1021 - 2 - 4 - 2]);
    assert_eq!(over.len(), 1025);
    let _ = r.send(&over).await;
    r.expect_disconnect(PACKET_TOO_LARGE, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// A packet too large sent as the very first packet (CONNECT) is refused
/// without waiting for its body.
#[tokio::test]
async fn oversized_connect_is_refused() {
    let t = start_h(|c| c.mqtt.max_packet_size = 1024).await;
    let mut r = Raw::open(t.addr).await;
    let mut header = vec![0x10];
    header.extend(varint(10_000_000));
    r.send(&header).await.unwrap();
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

const FIVE_BYTE_LENGTH: [u8; 6] = [0x30, 0xff, 0xff, 0xff, 0xff, 0x7f];

#[tokio::test]
async fn five_byte_remaining_length_v311_closes() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V311, "len5-4").await;
    let _ = r.send(&FIVE_BYTE_LENGTH).await;
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn five_byte_remaining_length_v5_is_malformed() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "len5-5").await;
    let _ = r.send(&FIVE_BYTE_LENGTH).await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn five_byte_remaining_length_as_first_packet_closes() {
    let t = start_h(|_| {}).await;
    let mut r = Raw::open(t.addr).await;
    let _ = r.send(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]).await;
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Topic names
// ---------------------------------------------------------------------------

/// Ill-formed UTF-8 makes a packet malformed (MQTT 5.0 section 1.5.4,
/// MQTT-1.5.4-1): reason 0x81. 0x90 (Topic Name Invalid) is for a topic that
/// is "not malformed, but is not accepted".
#[tokio::test]
async fn invalid_utf8_topic_v5_is_malformed() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "utf8-5").await;
    let _ = r
        .send(&publish(b"bad/\xff\xfe", 1, 1, Some(&[]), b"x"))
        .await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_topic_v311_closes() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V311, "utf8-4").await;
    let _ = r.send(&publish(b"bad/\xc3\x28", 1, 1, None, b"x")).await;
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// U+0000 in a UTF-8 string is not allowed (MQTT-1.5.4-2): malformed.
#[tokio::test]
async fn nul_in_topic_v5_is_refused() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "nul-5").await;
    let _ = r.send(&publish(b"a\0b", 0, 0, Some(&[]), b"x")).await;
    let got = r.until_closed(5).await;
    let reason = match got.last() {
        Some((0xe0, body)) => body.first().copied(),
        _ => None,
    };
    // Malformed (the string rule) or Topic Name Invalid are both defensible.
    assert!(
        matches!(reason, Some(MALFORMED) | Some(TOPIC_NAME_INVALID)),
        "expected DISCONNECT 0x81 or 0x90, got {}",
        describe(&got)
    );
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn wildcard_in_publish_topic_v5_is_0x90() {
    let t = start_h(|_| {}).await;
    for (i, topic) in [&b"a/+"[..], b"a/#", b"+", b"#", b"a/b+"]
        .iter()
        .enumerate()
    {
        let mut r = connected(t.addr, V5, &format!("wild-5-{i}")).await;
        let _ = r.send(&publish(topic, 1, 1, Some(&[]), b"x")).await;
        r.expect_disconnect(TOPIC_NAME_INVALID, &[]).await;
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn wildcard_in_publish_topic_v311_closes() {
    let t = start_h(|_| {}).await;
    for (i, topic) in [&b"a/+"[..], b"#"].iter().enumerate() {
        let mut r = connected(t.addr, V311, &format!("wild-4-{i}")).await;
        let _ = r.send(&publish(topic, 1, 1, None, b"x")).await;
        r.expect_closed_silently().await;
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn empty_topic_without_alias_v5_is_refused() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "empty-5").await;
    let _ = r.send(&publish(b"", 1, 1, Some(&[]), b"x")).await;
    let got = r.until_closed(5).await;
    let reason = match got.last() {
        Some((0xe0, body)) => body.first().copied(),
        _ => None,
    };
    assert!(
        matches!(reason, Some(PROTOCOL_ERROR) | Some(TOPIC_NAME_INVALID)),
        "expected DISCONNECT 0x82 or 0x90, got {}",
        describe(&got)
    );
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// CONNECT rules
// ---------------------------------------------------------------------------

#[tokio::test]
async fn first_packet_not_connect_closes() {
    let t = start_h(|_| {}).await;
    for first in [
        vec![0xc0, 0x00],                    // PINGREQ
        publish(b"a/b", 0, 0, None, b"x"),   // PUBLISH
        subscribe(0x82, 1, "a/#", 1, false), // SUBSCRIBE
        vec![0xe0, 0x00],                    // DISCONNECT
    ] {
        let mut r = Raw::open(t.addr).await;
        let _ = r.send(&first).await;
        r.expect_closed_silently().await;
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn second_connect_v311_closes() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V311, "twice-4").await;
    let _ = r.send(&connect(V311, "twice-4", true, &[])).await;
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn second_connect_v5_is_protocol_error() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "twice-5").await;
    let _ = r.send(&connect(V5, "twice-5", true, &[])).await;
    r.expect_disconnect(PROTOCOL_ERROR, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// An unsupported protocol level gets CONNACK 0x01 (3.1.1 format) and a close.
#[tokio::test]
async fn unknown_protocol_level_gets_connack_0x01() {
    let t = start_h(|_| {}).await;
    for level in [3u8, 6, 0, 255] {
        let mut r = Raw::open(t.addr).await;
        r.send(&connect(level, "old", true, &[])).await.unwrap();
        let got = r.until_closed(5).await;
        assert_eq!(
            got,
            vec![(0x20, vec![0x00, 0x01])],
            "protocol level {level}: {}",
            describe(&got)
        );
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// The 3.1 protocol name "MQIsdp" (level 3) is not supported either.
#[tokio::test]
async fn mqisdp_protocol_name_gets_connack_0x01() {
    let t = start_h(|_| {}).await;
    let mut body = mqtt_str(b"MQIsdp");
    body.extend([3, 0x02, 0, 60]);
    body.extend(mqtt_str(b"old31"));
    let mut r = Raw::open(t.addr).await;
    r.send(&packet(0x10, &body)).await.unwrap();
    let got = r.until_closed(5).await;
    assert_eq!(got, vec![(0x20, vec![0x00, 0x01])], "{}", describe(&got));
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_connection() {
    let t = start_h(|c| c.mqtt.connect_timeout_secs = 1).await;
    let started = tokio::time::Instant::now();
    let mut r = Raw::open(t.addr).await;
    let got = r.until_closed(3).await;
    assert!(got.is_empty(), "{}", describe(&got));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the connect timeout: {:?}",
        started.elapsed()
    );
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_closes_half_connect() {
    let t = start_h(|c| c.mqtt.connect_timeout_secs = 1).await;
    let mut r = Raw::open(t.addr).await;
    let c = connect(V5, "slow", true, &[]);
    r.send(&c[..5]).await.unwrap();
    // Trickling bytes must not extend the deadline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.send(&c[5..8]).await.unwrap();
    let got = r.until_closed(3).await;
    assert!(got.is_empty(), "{}", describe(&got));
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// CONNECT with `flags` (bit 1 = clean session) in place of the usual ones.
fn connect_with_flags(level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_str(b"MQTT");
    body.extend([level, flags, 0, 60]);
    if level == V5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// A CONNECT that must be refused: the connection is closed, and no
/// successful CONNACK is sent (a failure CONNACK is allowed).
async fn assert_connect_refused(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut r = Raw::open(addr).await;
    let _ = r.send(bytes).await;
    loop {
        match r.next(Duration::from_secs(5)).await {
            Next::Packet(0x20, body) if body.get(1) == Some(&0) => {
                panic!("{what}: CONNECT accepted (CONNACK {body:02x?}), expected a refusal")
            }
            Next::Packet(..) => {}
            Next::Closed => return,
            Next::Timeout => panic!("{what}: connection neither refused nor closed in 5 s"),
        }
    }
}

/// The reserved bit of the CONNECT flags must be 0 (MQTT-3.1.2-3).
#[tokio::test]
async fn connect_reserved_flag_v311_is_refused() {
    let t = start_h(|_| {}).await;
    let bytes = connect_with_flags(V311, 0x03, &mqtt_str(b"resv"));
    assert_connect_refused(t.addr, &bytes, "3.1.1 CONNECT flags 0x03").await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// 5.0: a non-zero reserved flag is a Malformed Packet (3.1.2.3).
#[tokio::test]
async fn connect_reserved_flag_v5_is_refused() {
    let t = start_h(|_| {}).await;
    let bytes = connect_with_flags(V5, 0x03, &mqtt_str(b"resv"));
    assert_connect_refused(t.addr, &bytes, "5.0 CONNECT flags 0x03").await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Will QoS or Will Retain without the Will Flag (MQTT-3.1.2-11, -13, -15).
#[tokio::test]
async fn connect_will_bits_without_will_flag_are_refused() {
    let t = start_h(|_| {}).await;
    for (level, flags) in [(V311, 0x0a), (V311, 0x22), (V5, 0x12), (V5, 0x22)] {
        let bytes = connect_with_flags(level, flags, &mqtt_str(b"nowill"));
        assert_connect_refused(
            t.addr,
            &bytes,
            &format!("level {level}, flags {flags:#04x}"),
        )
        .await;
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Password without user name is not allowed in 3.1.1 (MQTT-3.1.2-22).
#[tokio::test]
async fn connect_password_without_username_v311_is_refused() {
    let t = start_h(|_| {}).await;
    let mut payload = mqtt_str(b"pw-only");
    payload.extend(mqtt_str(b"secret"));
    let bytes = connect_with_flags(V311, 0x42, &payload);
    assert_connect_refused(t.addr, &bytes, "password flag without user name flag").await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Ill-formed UTF-8 in the client identifier (MQTT-1.5.3-1 / 1.5.4-1).
#[tokio::test]
async fn connect_invalid_utf8_client_id_is_refused() {
    let t = start_h(|_| {}).await;
    for level in [V311, V5] {
        let bytes = connect_with_flags(level, 0x02, &mqtt_str(b"id\xff"));
        assert_connect_refused(t.addr, &bytes, &format!("level {level}")).await;
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// QoS > 0 PUBLISH must carry a non-zero packet identifier (MQTT-2.2.1-3).
#[tokio::test]
async fn publish_qos1_with_packet_id_zero_v5_is_refused() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "pkid0").await;
    let _ = r.send(&publish(b"a/b", 1, 0, Some(&[]), b"x")).await;
    let got = r.until_closed(5).await;
    let reason = match got.last() {
        Some((0xe0, body)) => body.first().copied(),
        _ => None,
    };
    assert!(
        matches!(reason, Some(MALFORMED) | Some(PROTOCOL_ERROR)),
        "expected DISCONNECT 0x81 or 0x82, got {}",
        describe(&got)
    );
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Ill-formed UTF-8 in a SUBSCRIBE topic filter: malformed.
#[tokio::test]
async fn subscribe_invalid_utf8_filter_v5_is_malformed() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "subutf8").await;
    let mut body = vec![0x00, 0x01, 0x00];
    body.extend(mqtt_str(b"a/\xff"));
    body.push(1);
    let _ = r.send(&packet(0x82, &body)).await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Fixed header flags
// ---------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_with_wrong_flags_v311_closes() {
    let t = start_h(|_| {}).await;
    for byte1 in [0x80u8, 0x83, 0x8a] {
        let mut r = connected(t.addr, V311, "flags-4").await;
        let _ = r.send(&subscribe(byte1, 1, "a/#", 1, false)).await;
        let got = r.until_closed(5).await;
        assert!(
            got.is_empty(),
            "SUBSCRIBE first byte {byte1:#04x}: expected a silent close, got {}",
            describe(&got)
        );
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn subscribe_with_wrong_flags_v5_is_malformed() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "flags-5").await;
    let _ = r.send(&subscribe(0x80, 1, "a/#", 1, true)).await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// PUBLISH with both QoS bits set (QoS 3) is malformed (MQTT-3.3.1-4).
#[tokio::test]
async fn publish_qos3_v5_is_malformed() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "qos3-5").await;
    let mut p = publish(b"a/b", 1, 1, Some(&[]), b"x");
    p[0] = 0x36;
    let _ = r.send(&p).await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Reserved packet type 0 and 15 (AUTH is 15 in 5.0, but 3.1.1 reserves it).
#[tokio::test]
async fn reserved_packet_types_v311_close() {
    let t = start_h(|_| {}).await;
    for byte1 in [0x00u8, 0xf0] {
        let mut r = connected(t.addr, V311, "reserved-4").await;
        let _ = r.send(&[byte1, 0x00]).await;
        r.expect_closed_silently().await;
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5.0 limits: Receive Maximum, Topic Alias
// ---------------------------------------------------------------------------

/// With receive_maximum = 2 the gateway may have at most 2 unacknowledged
/// QoS 1 PUBLISHes from a 5.0 client. The connection handles every packet
/// of a read before answering any, so 50 PUBLISHes in one write exceed the
/// limit: DISCONNECT 0x93 (inbound.rs, `on_publish`), possibly after a few
/// PUBACKs.
#[tokio::test]
async fn receive_maximum_exceeded_v5() {
    let t = start_h(|c| c.mqtt.receive_maximum = 2).await;
    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V5, "flood-5", true, &[])).await.unwrap();
    let Next::Packet(0x20, connack) = r.next(Duration::from_secs(5)).await else {
        panic!("no CONNACK");
    };
    // Receive Maximum property (0x21) = 2 is announced.
    assert!(
        connack.windows(3).any(|w| w == [0x21, 0x00, 0x02]),
        "CONNACK does not announce Receive Maximum 2: {connack:02x?}"
    );
    let mut burst = Vec::new();
    for i in 1..=50u16 {
        burst.extend(publish(b"flood/t", 1, i, Some(&[]), b"x"));
    }
    let _ = r.send(&burst).await;
    let before = r.expect_disconnect(RECEIVE_MAXIMUM_EXCEEDED, &[0x40]).await;
    assert!(
        before.len() <= 2,
        "{} PUBACKs before the DISCONNECT",
        before.len()
    );
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// The same burst within the limit, one PUBLISH at a time: all acknowledged.
#[tokio::test]
async fn receive_maximum_respected_v5() {
    let t = start_h(|c| c.mqtt.receive_maximum = 2).await;
    let mut r = connected(t.addr, V5, "polite-5").await;
    for i in 1..=20u16 {
        r.send(&publish(b"polite/t", 1, i, Some(&[]), b"x"))
            .await
            .unwrap();
        match r.next(Duration::from_secs(5)).await {
            Next::Packet(0x40, body) => assert_eq!(&body[..2], &i.to_be_bytes()),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    t.gw.shutdown().await;
}

/// 3.1.1 has no Receive Maximum: a burst is throttled (the gateway stops
/// reading), never refused; every PUBLISH gets its PUBACK in order.
#[tokio::test]
async fn burst_v311_is_fully_acknowledged() {
    let t = start_h(|c| c.mqtt.receive_maximum = 2).await;
    let mut r = connected(t.addr, V311, "flood-4").await;
    let mut burst = Vec::new();
    for i in 1..=200u16 {
        burst.extend(publish(b"flood/t", 1, i, None, b"x"));
    }
    r.send(&burst).await.unwrap();
    for i in 1..=200u16 {
        match r.next(Duration::from_secs(10)).await {
            Next::Packet(0x40, body) => assert_eq!(body, i.to_be_bytes()),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    t.gw.shutdown().await;
}

#[tokio::test]
async fn topic_alias_zero_v5() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "alias0").await;
    let _ = r
        .send(&publish(b"a/b", 1, 1, Some(&prop_topic_alias(0)), b"x"))
        .await;
    r.expect_disconnect(TOPIC_ALIAS_INVALID, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn topic_alias_above_maximum_v5() {
    let t = start_h(|c| c.mqtt.topic_alias_maximum = 4).await;
    let mut r = connected(t.addr, V5, "alias-max").await;
    // Alias 4 (the maximum) is fine...
    r.send(&publish(b"a/b", 1, 1, Some(&prop_topic_alias(4)), b"x"))
        .await
        .unwrap();
    match r.next(Duration::from_secs(5)).await {
        Next::Packet(0x40, _) => {}
        other => panic!("expected PUBACK for alias 4, got {other:?}"),
    }
    // ...and usable with an empty topic...
    r.send(&publish(b"", 1, 2, Some(&prop_topic_alias(4)), b"y"))
        .await
        .unwrap();
    match r.next(Duration::from_secs(5)).await {
        Next::Packet(0x40, _) => {}
        other => panic!("expected PUBACK for a publish by alias, got {other:?}"),
    }
    // ...alias 5 is not.
    let _ = r
        .send(&publish(b"a/c", 1, 3, Some(&prop_topic_alias(5)), b"z"))
        .await;
    r.expect_disconnect(TOPIC_ALIAS_INVALID, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn topic_alias_when_disabled_v5() {
    let t = start_h(|c| c.mqtt.topic_alias_maximum = 0).await;
    let mut r = connected(t.addr, V5, "alias-off").await;
    let _ = r
        .send(&publish(b"a/b", 1, 1, Some(&prop_topic_alias(1)), b"x"))
        .await;
    r.expect_disconnect(TOPIC_ALIAS_INVALID, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// An alias that was never set, used with an empty topic: protocol error.
#[tokio::test]
async fn unknown_topic_alias_v5() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "alias-unknown").await;
    let _ = r
        .send(&publish(b"", 1, 1, Some(&prop_topic_alias(3)), b"x"))
        .await;
    r.expect_disconnect(PROTOCOL_ERROR, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Persistent sessions vs hostile connections
// ---------------------------------------------------------------------------

/// A persistent 3.1.1 session "victim" subscribed to `v/t`, offline, with
/// five QoS 1 messages "m0".."m4" queued.
async fn victim_with_queue(addr: SocketAddr) {
    let (c, mut ev) = AsyncClient::new(opts_v4(addr, "victim", false), 10);
    c.subscribe("v/t", QoS::AtLeastOnce).await.unwrap();
    within(5, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
                return;
            }
        }
    })
    .await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ev.poll().await.is_ok() {}
    })
    .await;

    let (p, mut pev) = AsyncClient::new(opts_v4(addr, "victim-pub", true), 10);
    for i in 0..5 {
        p.publish("v/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let mut acks = 0;
    within(10, async {
        while acks < 5 {
            if let Event::Incoming(Packet::PubAck(_)) = pev.poll().await.unwrap() {
                acks += 1;
            }
        }
    })
    .await;
}

/// The victim reconnects properly: the session is there and every queued
/// message arrives, in order (redelivery of what the hostile connection was
/// sent but never acknowledged included).
async fn victim_gets_queue(addr: SocketAddr) {
    let (c, mut ev) = AsyncClient::new(opts_v4(addr, "victim", false), 10);
    let mut got: Vec<String> = Vec::new();
    within(10, async {
        loop {
            match ev.poll().await.expect("victim reconnects") {
                Event::Incoming(Packet::ConnAck(a)) => {
                    assert!(a.session_present, "session lost")
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let s = String::from_utf8(p.payload.to_vec()).unwrap();
                    if !got.contains(&s) {
                        got.push(s);
                    }
                    if got.len() == 5 {
                        return;
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    drop(c);
}

/// Same client id, a valid CONNECT (taking the session over), then garbage.
#[tokio::test]
async fn hostile_takeover_then_garbage_keeps_queued_messages() {
    let t = start_h(|_| {}).await;
    victim_with_queue(t.addr).await;

    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V311, "victim", false, &[])).await.unwrap();
    let (present, code) = r.connack().await;
    assert_eq!((present, code), (true, 0));
    // The queued messages are sent to this connection; never acknowledge them.
    let mut sent_to_hostile = 0;
    while let Next::Packet(b, _) = r.next(Duration::from_millis(500)).await {
        assert_eq!(b & 0xf0, 0x30, "unexpected packet {b:#04x}");
        sent_to_hostile += 1;
    }
    assert_eq!(
        sent_to_hostile, 5,
        "queued messages sent to the new connection"
    );
    let _ = r.send(&FIVE_BYTE_LENGTH).await;
    r.expect_closed_silently().await;

    assert_still_serves(&t).await;
    victim_gets_queue(t.addr).await;
    t.gw.shutdown().await;
}

/// Same client id with garbage in the same write as the CONNECT.
#[tokio::test]
async fn hostile_connect_with_trailing_garbage_keeps_queued_messages() {
    let t = start_h(|_| {}).await;
    victim_with_queue(t.addr).await;

    let mut r = Raw::open(t.addr).await;
    let mut bytes = connect(V311, "victim", false, &[]);
    bytes.extend(publish_with_overlong_topic_length());
    let _ = r.send(&bytes).await;
    let _ = r.until_closed(5).await; // CONNACK and PUBLISHes may come first

    assert_still_serves(&t).await;
    victim_gets_queue(t.addr).await;
    t.gw.shutdown().await;
}

/// Same client id in a CONNECT that is itself malformed: refused before it
/// touches the session.
#[tokio::test]
async fn malformed_connect_with_same_id_keeps_session() {
    let t = start_h(|_| {}).await;
    victim_with_queue(t.addr).await;

    let mut r = Raw::open(t.addr).await;
    // Client id length 0x00ff but only "victim" follows.
    let mut body = mqtt_str(b"MQTT");
    body.extend([V311, 0x00, 0, 60, 0x00, 0xff]);
    body.extend(b"victim");
    let _ = r.send(&packet(0x10, &body)).await;
    r.expect_closed_silently().await;

    assert_still_serves(&t).await;
    victim_gets_queue(t.addr).await;
    t.gw.shutdown().await;
}

/// A clean-start 5.0 takeover with garbage legitimately discards the session
/// (clean start); the gateway must still be consistent: a later persistent
/// connection starts with no session and works.
#[tokio::test]
async fn hostile_clean_takeover_v5_leaves_consistent_state() {
    let t = start_h(|_| {}).await;
    victim_with_queue(t.addr).await;

    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V5, "victim", true, &prop_session_expiry(0)))
        .await
        .unwrap();
    let (present, code) = r.connack().await;
    assert_eq!((present, code), (false, 0));
    let _ = r.send(&[0x30, 0x03, 0x00, 0x10, b'a']).await;
    r.expect_disconnect(MALFORMED, &[]).await;

    let (c, mut ev) = AsyncClient::new(opts_v4(t.addr, "victim", false), 10);
    let present = within(5, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(a)) = ev.poll().await.unwrap() {
                return a.session_present;
            }
        }
    })
    .await;
    assert!(!present, "clean start must have discarded the session");
    drop((c, ev));
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Many broken connections at once, then a normal client: nothing leaks or
/// gets stuck.
#[tokio::test]
async fn many_broken_connections_in_parallel() {
    let t = start_h(|c| c.mqtt.connect_timeout_secs = 2).await;
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        let addr = t.addr;
        tasks.push(tokio::spawn(async move {
            let mut r = Raw::open(addr).await;
            let bytes: Vec<u8> = match i % 6 {
                0 => FIVE_BYTE_LENGTH.to_vec(),
                1 => vec![0xc0, 0x00],
                2 => connect(V5, &format!("p{i}"), true, &[])[..6].to_vec(),
                3 => vec![],
                4 => {
                    let mut b = connect(V311, &format!("p{i}"), true, &[]);
                    b.extend([0x00, 0x00]);
                    b
                }
                _ => {
                    let mut b = connect(V5, &format!("p{i}"), true, &[]);
                    b.extend(publish(b"a/#", 1, 1, Some(&[]), b"x"));
                    b
                }
            };
            let _ = r.send(&bytes).await;
            r.until_closed(6).await;
        }));
    }
    for task in tasks {
        task.await.expect("broken connection closed in time");
    }
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Clients that stop cooperating
// ---------------------------------------------------------------------------

/// A subscriber that never reads its socket while a publisher floods its
/// topic: the gateway keeps serving everyone else, and once the subscriber's
/// socket is closed its connection task ends.
#[tokio::test]
async fn slow_reader_does_not_stall_others() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V311, "never-reads").await;
    r.send(&subscribe(0x82, 1, "flood/#", 0, false))
        .await
        .unwrap();
    match r.next(Duration::from_secs(5)).await {
        Next::Packet(0x90, _) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // From now on `r` is never read: its receive buffer and then the
    // gateway's send buffer fill up.
    let (p, mut pev) = AsyncClient::new(opts_v4(t.addr, "flooder", true), 100);
    let sender = p.clone();
    let flood = tokio::spawn(async move {
        let payload = vec![b'x'; 4096];
        for _ in 0..5000 {
            if sender
                .publish("flood/t", QoS::AtMostOnce, false, payload.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let pumping = tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    // The reader is stalled: the gateway cannot write to it and has begun
    // to drop its deliveries (a reader that kept up would lose nothing).
    let dropped = "mqbridge_session_dropped_messages_total{reason=\"queue_full\"}";
    within(30, async {
        while metric(&t, dropped).await.unwrap_or(0.0) == 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Meanwhile a healthy client's QoS 1 round trip (on another topic) works.
    within(20, async {
        let id = "bystander";
        let (c, mut ev) = AsyncClient::new(opts_v4(t.addr, id, true), 10);
        c.subscribe("other/t", QoS::AtLeastOnce).await.unwrap();
        c.publish("other/t", QoS::AtLeastOnce, false, "hi")
            .await
            .unwrap();
        loop {
            if let Event::Incoming(Packet::Publish(p)) = ev.poll().await.unwrap() {
                assert_eq!(&p.payload[..], b"hi");
                break;
            }
        }
    })
    .await;
    within(60, flood).await.unwrap();
    drop(p);
    pumping.abort();
    drop(r);
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// A client that goes silent gets closed after 1.5 x its keep-alive.
#[tokio::test]
async fn keepalive_silence_closes() {
    let t = start_h(|_| {}).await;
    let mut body = mqtt_str(b"MQTT");
    body.extend([V311, 0x02, 0, 1]); // keep-alive 1 s
    body.extend(mqtt_str(b"silent"));
    let mut r = Raw::open(t.addr).await;
    r.send(&packet(0x10, &body)).await.unwrap();
    let (_, code) = r.connack().await;
    assert_eq!(code, 0);
    let started = tokio::time::Instant::now();
    r.expect_closed_silently().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "closed after {took:?}, expected about 1.5 s"
    );
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Topic limits (mqtt.max_topic_levels = 128, mqtt.max_topic_bytes = 4096 by
// default) and deep topics: refused with a reason code, never recursed on.
// ---------------------------------------------------------------------------

const TOPIC_FILTER_INVALID: u8 = 0x8f;

/// A topic of `n` levels in `n - 1` bytes (empty levels), so that even
/// 60,000 levels fit in one MQTT string.
fn levels(n: usize) -> String {
    "/".repeat(n - 1)
}

/// UNSUBSCRIBE with one filter.
fn unsubscribe(pkid: u16, filter: &str, v5: bool) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.extend(mqtt_str(filter.as_bytes()));
    packet(0xa2, &body)
}

/// The reason/return codes of a SUBACK or UNSUBACK (`first` = its first byte).
async fn ack_codes(r: &mut Raw, first: u8, v5: bool) -> Vec<u8> {
    match r.next(Duration::from_secs(5)).await {
        // Packet id, then (5.0) an empty property length.
        Next::Packet(b, body) if b == first => body[if v5 { 3 } else { 2 }..].to_vec(),
        other => panic!("expected {first:#04x}, got {other:?}"),
    }
}

/// A client connected before the attack, subscribed to `bystander/t`.
async fn bystander(addr: SocketAddr) -> (AsyncClient, rumqttc::EventLoop) {
    let (c, mut ev) = AsyncClient::new(opts_v4(addr, "bystander", true), 10);
    c.subscribe("bystander/t", QoS::AtLeastOnce).await.unwrap();
    within(10, async {
        while !matches!(ev.poll().await.unwrap(), Event::Incoming(Packet::SubAck(_))) {}
    })
    .await;
    (c, ev)
}

/// The bystander's connection survived and a message still reaches it.
async fn bystander_receives(c: &AsyncClient, ev: &mut rumqttc::EventLoop, payload: &str) {
    c.publish("bystander/t", QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    within(10, async {
        loop {
            match ev.poll().await.expect("bystander connection") {
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], payload.as_bytes());
                    return;
                }
                _ => continue,
            }
        }
    })
    .await;
}

/// `mqbridge_mqtt_topics_refused_total{reason}`.
async fn topics_refused(t: &Hostile, reason: &str) -> f64 {
    let name = format!("mqbridge_mqtt_topics_refused_total{{reason=\"{reason}\"}}");
    metric(t, &name).await.unwrap_or(-1.0)
}

/// 10,000 and 60,000 levels in SUBSCRIBE, UNSUBSCRIBE and PUBLISH, both
/// versions: SUBACK 0x8F / 0x80, UNSUBACK 0x8F (5.0), PUBLISH closes the
/// connection (5.0: DISCONNECT 0x90). A client connected before the attack
/// keeps receiving, and every refusal is counted.
#[tokio::test]
async fn deep_topics_are_refused_and_others_still_served() {
    // The byte limit would refuse these first; the level limit is under test.
    let t = start_h(|c| c.mqtt.max_topic_bytes = 65535).await;
    let (c, mut ev) = bystander(t.addr).await;
    let mut refused = 0.0;
    for n in [10_000, 60_000] {
        let deep = levels(n);
        for v5 in [false, true] {
            let level = if v5 { V5 } else { V311 };
            let mut r = connected(t.addr, level, &format!("deep-{n}-{v5}")).await;
            r.send(&subscribe(0x82, 1, &deep, 1, v5)).await.unwrap();
            let want = if v5 { TOPIC_FILTER_INVALID } else { 0x80 };
            assert_eq!(ack_codes(&mut r, 0x90, v5).await, [want], "SUBACK");
            let shared = format!("$share/g/{deep}");
            r.send(&subscribe(0x82, 2, &shared, 1, v5)).await.unwrap();
            assert_eq!(ack_codes(&mut r, 0x90, v5).await, [want], "shared SUBACK");
            r.send(&unsubscribe(3, &deep, v5)).await.unwrap();
            let unsuback = ack_codes(&mut r, 0xb0, v5).await;
            if v5 {
                assert_eq!(unsuback, [TOPIC_FILTER_INVALID], "UNSUBACK");
            }
            refused += 3.0;
            let props: Option<&[u8]> = if v5 { Some(&[]) } else { None };
            let _ = r.send(&publish(deep.as_bytes(), 1, 4, props, b"x")).await;
            if v5 {
                r.expect_disconnect(TOPIC_NAME_INVALID, &[]).await;
            } else {
                r.expect_closed_silently().await;
            }
            refused += 1.0;
        }
    }
    bystander_receives(&c, &mut ev, "after").await;
    drop((c, ev));
    assert_eq!(topics_refused(&t, "too_many_levels").await, refused);
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// The limits are exact: 128 levels / 4096 bytes pass, one more is refused.
#[tokio::test]
async fn topic_limits_are_exact() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V5, "edge").await;
    let ok = ["x"; 128].join("/");
    let long = "y".repeat(4096);
    for (i, f) in [&ok, &long].into_iter().enumerate() {
        r.send(&subscribe(0x82, i as u16 + 1, f, 0, true))
            .await
            .unwrap();
        assert_eq!(
            ack_codes(&mut r, 0x90, true).await,
            [0],
            "{} bytes",
            f.len()
        );
    }
    let over = format!("{ok}/x");
    r.send(&subscribe(0x82, 5, &over, 0, true)).await.unwrap();
    assert_eq!(ack_codes(&mut r, 0x90, true).await, [TOPIC_FILTER_INVALID]);
    r.send(&subscribe(0x82, 6, &format!("{long}y"), 0, true))
        .await
        .unwrap();
    assert_eq!(ack_codes(&mut r, 0x90, true).await, [TOPIC_FILTER_INVALID]);
    assert_eq!(topics_refused(&t, "too_many_levels").await, 1.0);
    assert_eq!(topics_refused(&t, "too_long").await, 1.0);
    // A PUBLISH at the limit is routed to the subscription above.
    r.send(&publish(ok.as_bytes(), 0, 0, Some(&[]), b"edge"))
        .await
        .unwrap();
    match r.next(Duration::from_secs(5)).await {
        Next::Packet(b, body) if b & 0xf0 == 0x30 => assert!(body.ends_with(b"edge")),
        other => panic!("expected the PUBLISH back, got {other:?}"),
    }
    drop(r);
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// A will topic over the limit: 5.0 CONNACK 0x90, 3.1.1 closed without CONNACK.
#[tokio::test]
async fn deep_will_topic_is_refused() {
    let t = start_h(|c| c.mqtt.max_topic_bytes = 65535).await;
    let deep = levels(10_000);
    for level in [V311, V5] {
        let mut body = mqtt_str(b"MQTT");
        body.extend([level, 0x06, 0, 60]); // clean, will flag, QoS 0
        if level == V5 {
            body.push(0); // CONNECT properties
        }
        body.extend(mqtt_str(b"deep-will"));
        if level == V5 {
            body.push(0); // will properties
        }
        body.extend(mqtt_str(deep.as_bytes()));
        body.extend(mqtt_str(b"bye"));
        let mut r = Raw::open(t.addr).await;
        r.send(&packet(0x10, &body)).await.unwrap();
        let got = r.until_closed(5).await;
        let want: Vec<(u8, Vec<u8>)> = if level == V5 {
            vec![(0x20, vec![0, TOPIC_NAME_INVALID, 0])]
        } else {
            vec![]
        };
        assert_eq!(got, want, "protocol level {level}");
    }
    assert_eq!(topics_refused(&t, "too_many_levels").await, 2.0);
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// A persistent session whose stored subscription is over the limit (stored
/// by a gateway with a larger limit) starts fine after a restart with the
/// default limit: the filter is dropped (counted, logged) and the record
/// rewritten, the session's other subscription still works.
#[tokio::test]
async fn stored_deep_filter_is_dropped_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let start = |max_levels: usize| {
        let mut cfg = test_config(dir.path());
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.mqtt.max_topic_levels = max_levels;
        cfg.mqtt.max_topic_bytes = 65535;
        async move {
            let cfg = cfg.validate().expect("test config is valid");
            let gw = mqbridge::app::Gateway::start(cfg).await.expect("starts");
            let addr = gw.mqtt_addr;
            Hostile::from(TestGateway {
                gw,
                addr,
                dir: tempfile::tempdir().unwrap(),
            })
        }
    };
    let deep = levels(10_000);
    let t = start(20_000).await;
    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V311, "keeper", false, &[])).await.unwrap();
    assert_eq!(r.connack().await, (false, 0));
    r.send(&subscribe(0x82, 1, &deep, 1, false)).await.unwrap();
    assert_eq!(ack_codes(&mut r, 0x90, false).await, [1], "granted");
    r.send(&subscribe(0x82, 2, "keep/t", 1, false))
        .await
        .unwrap();
    assert_eq!(ack_codes(&mut r, 0x90, false).await, [1]);
    r.send(&[0xe0, 0]).await.unwrap();
    r.expect_closed_silently().await;
    t.gw.shutdown().await;

    let t = start(128).await;
    assert_eq!(topics_refused(&t, "too_many_levels").await, 1.0);
    let mut keeper = b4::connect(opts_v4(t.addr, "keeper", false)).await;
    assert!(keeper.session_present());
    b4::publish_all(t.addr, "keep/t", QoS::AtLeastOnce, &["kept".into()]).await;
    assert_eq!(b4::payloads(&keeper.expect_publishes(1).await), ["kept"]);
    keeper.disconnect().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;

    // The record was rewritten without the filter: nothing to drop any more.
    let t = start(128).await;
    assert_eq!(topics_refused(&t, "too_many_levels").await, 0.0);
    t.gw.shutdown().await;
}

// ---------------------------------------------------------------------------
// Strings off the wire (issue 14): U+0000, control characters, ill-formed
// UTF-8, empty filters, Subscription Identifier 0. Each closes the
// connection (5.0: with the reason code) and stores nothing.
// ---------------------------------------------------------------------------

/// The packets received before the close, for exact comparison.
async fn closed_after(r: &mut Raw) -> Vec<(u8, Vec<u8>)> {
    r.until_closed(5).await
}

/// NUL in the client id of a persistent CONNECT: 3.1.1 closed without
/// CONNACK, 5.0 CONNACK 0x81; no session is created.
#[tokio::test]
async fn nul_in_client_id_is_refused() {
    let t = start_h(|_| {}).await;
    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V311, "dev\0ice", false, &[]))
        .await
        .unwrap();
    assert_eq!(closed_after(&mut r).await, []);
    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V5, "dev\0ice", false, &prop_session_expiry(600)))
        .await
        .unwrap();
    assert_eq!(closed_after(&mut r).await, [(0x20, vec![0, MALFORMED, 0])]);
    assert_eq!(
        metric(&t, "mqbridge_session_persistent_sessions").await,
        Some(0.0)
    );
    let name = "mqbridge_mqtt_protocol_errors_total{listener=\"tcp\",reason=\"invalid_string\"}";
    assert_eq!(metric(&t, name).await, Some(2.0));
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// A retained QoS 1 PUBLISH whose topic has U+0000 (3.1.1) or a control
/// character (5.0): no PUBACK, the connection is closed, nothing retained.
#[tokio::test]
async fn bad_characters_in_topic_close_and_store_nothing() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V311, "nul-pub").await;
    let mut p = publish(b"a/\0b", 1, 1, None, b"x");
    p[0] |= 1; // retain
    let _ = r.send(&p).await;
    r.expect_closed_silently().await;
    let mut r = connected(t.addr, V5, "ctl-pub").await;
    let mut p = publish(b"a/\x1b[2Jb", 1, 1, Some(&[]), b"x");
    p[0] |= 1;
    let _ = r.send(&p).await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_eq!(metric(&t, "mqbridge_retained_messages").await, Some(0.0));
    let mut sub = b4::connect(opts_v4(t.addr, "retained-check", true)).await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    assert!(sub.until_control().await.is_empty(), "nothing was retained");
    sub.disconnect().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// U+0000 in a SUBSCRIBE filter: 3.1.1 closed without SUBACK
/// (MQTT-1.5.3-2), 5.0 DISCONNECT 0x81.
#[tokio::test]
async fn nul_in_subscribe_filter_closes() {
    let t = start_h(|_| {}).await;
    let mut r = connected(t.addr, V311, "nul-sub-4").await;
    let _ = r.send(&subscribe(0x82, 1, "a/\0", 1, false)).await;
    r.expect_closed_silently().await;
    let mut r = connected(t.addr, V5, "nul-sub-5").await;
    let _ = r.send(&subscribe(0x82, 1, "a/\0", 1, true)).await;
    r.expect_disconnect(MALFORMED, &[]).await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// An empty topic filter (MQTT-4.7.3-1) in SUBSCRIBE or UNSUBSCRIBE:
/// 5.0 DISCONNECT 0x82 without SUBACK/UNSUBACK, 3.1.1 closed.
#[tokio::test]
async fn empty_topic_filter_is_a_protocol_error() {
    let t = start_h(|_| {}).await;
    for (i, bytes) in [subscribe(0x82, 1, "", 1, true), unsubscribe(1, "", true)]
        .into_iter()
        .enumerate()
    {
        let mut r = connected(t.addr, V5, &format!("empty-5-{i}")).await;
        let _ = r.send(&bytes).await;
        r.expect_disconnect(PROTOCOL_ERROR, &[]).await;
    }
    let mut r = connected(t.addr, V311, "empty-4").await;
    let _ = r.send(&subscribe(0x82, 1, "", 1, false)).await;
    r.expect_closed_silently().await;
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Subscription Identifier 0 (5.0 3.8.2.1.2): DISCONNECT 0x82 and the
/// subscription is not stored in the persistent session: after reconnecting,
/// a PUBLISH to its topic finds no subscriber (PUBACK 0x10).
#[tokio::test]
async fn subscription_identifier_zero_is_a_protocol_error() {
    let t = start_h(|_| {}).await;
    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V5, "sid0", false, &prop_session_expiry(600)))
        .await
        .unwrap();
    assert_eq!(r.connack().await, (false, 0));
    let mut body = vec![0, 1, 2, 0x0b, 0]; // packet id 1, properties: id 0
    body.extend(mqtt_str(b"sid0/t"));
    body.push(1);
    let _ = r.send(&packet(0x82, &body)).await;
    r.expect_disconnect(PROTOCOL_ERROR, &[]).await;

    let mut r = Raw::open(t.addr).await;
    r.send(&connect(V5, "sid0", false, &prop_session_expiry(600)))
        .await
        .unwrap();
    assert_eq!(r.connack().await, (true, 0), "the session itself is kept");
    let mut p = connected(t.addr, V5, "sid0-pub").await;
    p.send(&publish(b"sid0/t", 1, 7, Some(&[]), b"x"))
        .await
        .unwrap();
    match p.next(Duration::from_secs(5)).await {
        Next::Packet(0x40, body) => assert_eq!(body.get(2), Some(&0x10), "no subscriber"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // Nothing for sid0/t reached the kept session: a valid subscription and
    // a control message published after it must be the first delivery.
    r.send(&subscribe(0x82, 2, "sid0/ctl", 0, true))
        .await
        .unwrap();
    match r.next(Duration::from_secs(5)).await {
        Next::Packet(0x90, body) => assert_eq!(body.get(3), Some(&0), "SUBACK granted QoS 0"),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    p.send(&publish(b"sid0/ctl", 0, 0, Some(&[]), b"ctl"))
        .await
        .unwrap();
    match r.next(Duration::from_secs(5)).await {
        Next::Packet(0x30, body) => assert!(body.ends_with(b"ctl"), "control first: {body:02x?}"),
        other => panic!("expected the control PUBLISH first, got {other:?}"),
    }
    drop((r, p));
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}

/// Ill-formed UTF-8 in a 5.0 will topic (a field the parser leaves as
/// bytes): CONNACK 0x81 and close.
#[tokio::test]
async fn invalid_utf8_will_topic_v5_is_malformed() {
    let t = start_h(|_| {}).await;
    let mut body = mqtt_str(b"MQTT");
    body.extend([V5, 0x06, 0, 60, 0]);
    body.extend(mqtt_str(b"bad-will"));
    body.push(0);
    body.extend(mqtt_str(b"will/\xc3\x28"));
    body.extend(mqtt_str(b"bye"));
    let mut r = Raw::open(t.addr).await;
    r.send(&packet(0x10, &body)).await.unwrap();
    assert_eq!(closed_after(&mut r).await, [(0x20, vec![0, MALFORMED, 0])]);
    assert_still_serves(&t).await;
    t.gw.shutdown().await;
}
