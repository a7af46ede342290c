//! WebSocket and secure WebSocket listeners: MQTT.js and paho over both,
//! the upgrade's refusals (path, subprotocol), text frames, and packets
//! that do not align with WebSocket messages.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::certs::{self, Ca};
use crate::common::{raw, scrape, service, start_with, within, TestGateway};

struct Setup {
    t: TestGateway,
    _dir: tempfile::TempDir,
    ca: PathBuf,
}

/// Listeners `ws` and `wss` (path /mqtt), and the admin endpoint.
async fn start_ws() -> Setup {
    start_ws_with(|_| {}).await
}

async fn start_ws_with(f: impl FnOnce(&mut mqbridge::config::Config)) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ws test CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let server = certs::write_pair(dir.path(), "server", &ca.server());
    let ws = certs::listener("ws", "ws");
    let wss = certs::tls_listener("wss", "wss", &server);
    let t = start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.mqtt.listeners.extend([ws, wss]);
        f(c);
    })
    .await;
    Setup {
        t,
        _dir: dir,
        ca: ca_path,
    }
}

fn port(t: &TestGateway, name: &str) -> u16 {
    t.gw.listener_addr(name).expect("listener bound").port()
}

/// MQTT.js (3.1.1 and 5.0) and paho (3.1.1 and 5.0) over ws:// and
/// wss://…/mqtt each get their own message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_and_paho_over_ws_and_wss() {
    crate::common::init_tracing();
    let s = start_ws().await;
    let t = &s.t;
    let ca = s.ca.display().to_string();
    if service::tool(
        "node",
        &["-e", "require('mqtt')"],
        Some(&super::interop_script("")),
        "MQTT.js (npm mqtt)",
    ) {
        for (scheme, listener) in [("ws", "ws"), ("wss", "wss")] {
            for version in ["4", "5"] {
                let url = format!("{scheme}://localhost:{}/mqtt", port(t, listener));
                let topic = format!("mqttjs/{scheme}/{version}");
                let mut cmd = Command::new("node");
                cmd.arg("ws_roundtrip.js")
                    .args([&url, &topic, version])
                    .current_dir(super::interop_script(""));
                if scheme == "wss" {
                    cmd.arg(&ca);
                }
                let out = within(30, cmd.output()).await.expect("node runs");
                assert!(
                    out.status.success(),
                    "MQTT.js {url} v{version}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "mqttjs-roundtrip"
                );
            }
        }
    }
    if service::tool(
        "python3",
        &["-c", "import paho.mqtt"],
        None,
        "Python paho-mqtt",
    ) {
        for listener in ["ws", "wss"] {
            for v5 in [false, true] {
                let mut cmd = Command::new("python3");
                cmd.arg(super::interop_script("paho_roundtrip.py"))
                    .arg(port(t, listener).to_string())
                    .arg(format!("paho/{listener}/{v5}"))
                    .args(["--ws", "/mqtt"]);
                if listener == "wss" {
                    cmd.args(["--ca", &ca]);
                }
                if v5 {
                    cmd.arg("--v5");
                }
                let out = within(30, cmd.output()).await.expect("python3 runs");
                assert!(
                    out.status.success(),
                    "paho over {listener} (v5: {v5}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "paho-roundtrip"
                );
            }
        }
    }
    let accepted = "mqbridge_mqtt_connections_total{listener=\"wss\",result=\"accepted\"}";
    assert!(scrape(t, accepted).await.unwrap_or(0.0) >= 2.0);
    s.t.gw.shutdown().await;
}

/// The HTTP status line the upgrade answers to `request`.
async fn upgrade_status(t: &TestGateway, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(t.gw.listener_addr("ws").expect("bound"))
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = within(10, s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

fn upgrade_request(path: &str, protocol: Option<&str>) -> String {
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
}

/// Another path is 404, no `mqtt` subprotocol is 400, both counted; the
/// right request is switched with `Sec-WebSocket-Protocol: mqtt`.
#[tokio::test]
async fn upgrade_checks_path_and_subprotocol() {
    let s = start_ws().await;
    let t = &s.t;
    let status = upgrade_status(t, &upgrade_request("/other", Some("mqtt"))).await;
    assert!(status.contains(" 404"), "{status}");
    let status = upgrade_status(t, &upgrade_request("/mqtt", None)).await;
    assert!(status.contains(" 400"), "{status}");
    let status = upgrade_status(t, &upgrade_request("/mqtt", Some("chat, superchat"))).await;
    assert!(status.contains(" 400"), "{status}");
    let sample =
        "mqbridge_mqtt_protocol_errors_total{listener=\"ws\",reason=\"websocket_upgrade\"}";
    assert_eq!(scrape(t, sample).await, Some(3.0));

    let (ws, response) = client(t).await;
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
    drop(ws);
    s.t.gw.shutdown().await;
}

type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn client(
    t: &TestGateway,
) -> (
    Client,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let addr = t.gw.listener_addr("ws").expect("bound");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("ws://localhost:{}/mqtt", addr.port())
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    within(10, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("upgrade")
}

/// Every binary payload the gateway sends until `want` bytes arrived.
async fn read_bytes(ws: &mut Client, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        match within(10, ws.next()).await {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("expected binary data, got {other:?}"),
        }
    }
    got
}

/// A CONNECT cut across two messages is read whole; CONNECT and PINGREQ
/// in one message are two packets. A text frame then closes the connection
/// and is counted as a protocol error.
#[tokio::test]
async fn packets_need_not_align_with_messages_and_text_frames_close() {
    let s = start_ws().await;
    let t = &s.t;
    let (mut ws, _) = client(t).await;
    let connect = raw::connect_packet(4, "ws-split", true);
    let (a, b) = connect.split_at(5);
    ws.send(Message::Binary(a.to_vec().into()))
        .await
        .expect("send");
    ws.send(Message::Binary(b.to_vec().into()))
        .await
        .expect("send");
    assert_eq!(read_bytes(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);
    ws.send(Message::Binary(vec![0xc0, 0x00, 0xc0, 0x00].into()))
        .await
        .expect("send");
    assert_eq!(read_bytes(&mut ws, 4).await, [0xd0, 0x00, 0xd0, 0x00]);

    let (mut ws2, _) = client(t).await;
    ws2.send(Message::Binary(
        raw::connect_packet(4, "ws-text", true).into(),
    ))
    .await
    .expect("send");
    assert_eq!(read_bytes(&mut ws2, 4).await, [0x20, 0x02, 0x00, 0x00]);
    ws2.send(Message::Text("\u{c0}\u{0}".into()))
        .await
        .expect("send");
    let closed = within(10, async {
        loop {
            match ws2.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed);
    let sample = "mqbridge_mqtt_protocol_errors_total{listener=\"ws\",reason=\"websocket_text\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while scrape(t, sample).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "text frame not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first connection is unaffected.
    ws.send(Message::Binary(vec![0xc0, 0x00].into()))
        .await
        .expect("send");
    assert_eq!(read_bytes(&mut ws, 2).await, [0xd0, 0x00]);
    s.t.gw.shutdown().await;
}

/// A message over `mqtt.max_packet_size` + 64 KiB closes the connection
/// (counted as packet_too_large) before it is buffered whole; one just
/// under the limit is read.
#[tokio::test]
async fn messages_are_bounded_by_the_packet_size() {
    let s = start_ws_with(|c| c.mqtt.max_packet_size = 1024).await;
    let t = &s.t;
    let (mut ws, _) = client(t).await;
    ws.send(Message::Binary(
        raw::connect_packet(4, "ws-big", true).into(),
    ))
    .await
    .expect("send");
    assert_eq!(read_bytes(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);
    // 64 KiB of PINGREQs in one message: within the limit, all answered.
    let pings = [0xc0u8, 0x00].repeat(32 * 1024);
    ws.send(Message::Binary(pings.into())).await.expect("send");
    assert_eq!(read_bytes(&mut ws, 64 * 1024).await.len(), 64 * 1024);
    let _ = ws
        .send(Message::Binary(vec![0u8; 1024 + 64 * 1024 + 1].into()))
        .await;
    let closed = within(10, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed);
    let sample = "mqbridge_mqtt_protocol_errors_total{listener=\"ws\",reason=\"packet_too_large\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while scrape(t, sample).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "oversized message not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.t.gw.shutdown().await;
}
