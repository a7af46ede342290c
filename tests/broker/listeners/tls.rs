//! TLS and mTLS listeners with Debian's mosquitto_pub/mosquitto_sub and
//! Python paho; certificate reload while a TLS connection stays up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::common::certs::{self, Ca};
use crate::common::{b4, opts_v4, scrape, service, start_with, within, TestGateway};

fn mosquitto_available() -> bool {
    service::program(
        "mosquitto_pub",
        "mosquitto_pub/mosquitto_sub (Debian package mosquitto-clients)",
    )
}

/// TLS options of a mosquitto client: the CA, and a client certificate.
fn tls_args(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
    let mut args = vec!["--cafile".to_string(), ca.display().to_string()];
    if let Some((cert, key)) = client {
        args.extend([
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
    }
    args
}

/// mosquitto_pub over TLS to `localhost:port` (the server certificate's
/// name); whether it succeeded, and its stderr.
async fn tls_pub(port: u16, tls: &[String], topic: &str, msg: &str) -> (bool, String) {
    let out = within(
        20,
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", topic, "-m", msg])
            .args(tls)
            .output(),
    )
    .await
    .expect("mosquitto_pub runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Pki {
    dir: tempfile::TempDir,
    server_ca: PathBuf,
    server: (PathBuf, PathBuf),
    devices_ca: PathBuf,
    dev_a: (PathBuf, PathBuf),
    /// A device certificate from a CA the gateway does not know.
    stranger: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_ca = Ca::new("test server CA");
    let devices_ca = Ca::new("test devices CA");
    let other_ca = Ca::new("someone else's CA");
    Pki {
        server_ca: server_ca.write(dir.path(), "server-ca.pem"),
        server: certs::write_pair(dir.path(), "server", &server_ca.server()),
        devices_ca: devices_ca.write(dir.path(), "devices-ca.pem"),
        dev_a: certs::write_pair(dir.path(), "devA", &devices_ca.device("devA")),
        stranger: certs::write_pair(dir.path(), "stranger", &other_ca.device("devA")),
        dir,
    }
}

/// Three TLS listeners: `tls` (no client certificates), `mtls`
/// (required), `mtls_opt` (optional), beside the plain one.
async fn start_tls(p: &Pki, f: impl FnOnce(&mut mqbridge::config::Config)) -> TestGateway {
    let tls = certs::tls_listener("tls", "tls", &p.server);
    let mut mtls = certs::tls_listener("mtls", "tls", &p.server);
    mtls.client_ca_file = p.devices_ca.display().to_string();
    mtls.client_certificates = "required".into();
    let mut opt = mtls.clone();
    opt.name = "mtls_opt".into();
    opt.client_certificates = "optional".into();
    start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.mqtt.listeners.extend([tls, mtls, opt]);
        f(c);
    })
    .await
}

fn port(t: &TestGateway, name: &str) -> u16 {
    t.gw.listener_addr(name).expect("listener bound").port()
}

async fn tls_failures(t: &TestGateway, listener: &str, reason: &str) -> f64 {
    let sample = format!(
        "mqbridge_tls_handshake_failures_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
    );
    scrape(t, &sample).await.unwrap_or(-1.0)
}

/// mosquitto_pub and mosquitto_sub over TLS; on `required` a device with a
/// certificate of the devices CA gets through, one without a certificate or
/// with another CA's does not (the TLS handshake fails, counted); on
/// `optional` both a device with a certificate and one without get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_tls_and_mtls() {
    if !mosquitto_available() {
        return;
    }
    let p = pki();
    let t = start_tls(&p, |_| {}).await;
    let mut watcher = b4::connect(opts_v4(t.addr, "tls-watcher", true)).await;
    watcher.subscribe("tls/#", QoS::AtLeastOnce).await;
    let server_ca = tls_args(&p.server_ca, None);

    // mosquitto_sub over TLS gets a retained message (then exits: -C 1).
    watcher
        .publish("tls/retained", QoS::AtLeastOnce, true, b"kept")
        .await;
    let _ = watcher.expect_publishes(1).await;
    let out = within(
        20,
        Command::new("mosquitto_sub")
            .args(["-h", "localhost", "-p", &port(&t, "tls").to_string()])
            .args(["-t", "tls/retained", "-C", "1", "-W", "10"])
            .args(&server_ca)
            .output(),
    )
    .await
    .expect("mosquitto_sub runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kept",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let with_dev_a = tls_args(&p.server_ca, Some(&p.dev_a));
    let with_stranger = tls_args(&p.server_ca, Some(&p.stranger));
    let cases = [
        ("tls", &server_ca, true),
        ("mtls", &with_dev_a, true),
        ("mtls", &server_ca, false),
        ("mtls", &with_stranger, false),
        ("mtls_opt", &server_ca, true),
        ("mtls_opt", &with_dev_a, true),
    ];
    for (i, (listener, args, passes)) in cases.into_iter().enumerate() {
        let topic = format!("tls/{listener}/{i}");
        let (ok, stderr) = tls_pub(port(&t, listener), args, &topic, "m").await;
        assert_eq!(ok, passes, "case {i} on {listener}: {stderr}");
        if passes {
            let got = watcher.expect_publishes(1).await;
            assert_eq!(got[0].topic, topic);
        }
    }
    assert_eq!(tls_failures(&t, "mtls", "no_client_certificate").await, 1.0);
    assert_eq!(
        tls_failures(&t, "mtls", "bad_client_certificate").await,
        1.0
    );
    assert_eq!(
        scrape(
            &t,
            "mqbridge_mqtt_connections_total{listener=\"mtls\",result=\"accepted\"}"
        )
        .await,
        Some(1.0)
    );
    // Nothing from the refused clients reached the broker.
    assert!(watcher.drain().await.is_empty());
    t.gw.shutdown().await;
}

/// Paho with a client certificate on the `required` listener: connects,
/// subscribes, gets its own message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_mtls() {
    if !service::tool(
        "python3",
        &["-c", "import paho.mqtt"],
        None,
        "Python paho-mqtt",
    ) {
        return;
    }
    let p = pki();
    let t = start_tls(&p, |_| {}).await;
    for v5 in [false, true] {
        let mut cmd = Command::new("python3");
        cmd.arg(super::interop_script("paho_roundtrip.py"))
            .arg(port(&t, "mtls").to_string())
            .arg(format!("paho/mtls/{v5}"))
            .args(["--ca", &p.server_ca.display().to_string()])
            .args(["--cert", &p.dev_a.0.display().to_string()])
            .args(["--key", &p.dev_a.1.display().to_string()]);
        if v5 {
            cmd.arg("--v5");
        }
        let out = within(30, cmd.output()).await.expect("python3 runs");
        assert!(
            out.status.success(),
            "paho (v5: {v5}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "paho-roundtrip"
        );
    }
    t.gw.shutdown().await;
}

/// The certificate is replaced on disk and reloaded: a TLS connection made
/// before keeps working, a new client trusts only the new CA; a reload with
/// a key that does not match keeps the certificate in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_without_dropping_connections() {
    if !mosquitto_available() {
        return;
    }
    let p = pki();
    let t = start_tls(&p, |_| {}).await;
    let tls_port = port(&t, "tls").to_string();
    let mut old = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &tls_port, "-q", "1"])
        .args([
            "-t",
            "reload/#",
            "-C",
            "2",
            "-W",
            "30",
            "-i",
            "before-reload",
        ])
        .args(tls_args(&p.server_ca, None))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs");
    // Retained, so it reaches mosquitto_sub whenever it subscribes: its
    // line says the TLS connection is up and subscribed.
    let mut publisher = b4::connect(opts_v4(t.addr, "reload-pub", true)).await;
    publisher
        .publish("reload/1", QoS::AtLeastOnce, true, b"before")
        .await;
    let mut lines = BufReader::new(old.stdout.take().expect("stdout")).lines();
    let first = within(20, lines.next_line()).await.expect("read");
    assert_eq!(first.as_deref(), Some("before"));

    // New files: a server certificate from a new CA.
    let new_ca = Ca::new("new server CA");
    let new_ca_path = new_ca.write(p.dir.path(), "new-server-ca.pem");
    let new_pair = new_ca.server_until(2040);
    certs::write(p.dir.path(), "server.pem", &new_pair.0);
    certs::write(p.dir.path(), "server.key", &new_pair.1);
    let expiry = "mqbridge_tls_certificate_expiry_timestamp_seconds{listener=\"tls\"}";
    let before = scrape(&t, expiry).await.expect("expiry gauge");
    assert_eq!(t.gw.reload(), 0, "every TLS listener reloaded");
    // 2040-01-01T00:00:00Z: the new certificate's notAfter.
    assert_eq!(scrape(&t, expiry).await, Some(2_208_988_800.0));
    assert_ne!(before, 2_208_988_800.0);
    assert_eq!(
        scrape(&t, "mqbridge_tls_reloads_total{result=\"ok\"}").await,
        Some(3.0)
    );
    publisher
        .publish("reload/2", QoS::AtLeastOnce, false, b"after")
        .await;
    let second = within(20, lines.next_line()).await.expect("read");
    assert_eq!(
        second.as_deref(),
        Some("after"),
        "the connection made before the reload still works"
    );
    assert!(within(10, old.wait()).await.expect("exit").success());

    let (ok, _) = tls_pub(
        tls_port.parse().expect("port"),
        &tls_args(&p.server_ca, None),
        "reload/x",
        "m",
    )
    .await;
    assert!(!ok, "the old CA no longer verifies the listener");
    let (ok, stderr) = tls_pub(
        tls_port.parse().expect("port"),
        &tls_args(&new_ca_path, None),
        "reload/y",
        "m",
    )
    .await;
    assert!(ok, "the new CA does: {stderr}");

    // A key that is not the certificate's: refused, the current one stays.
    let other = new_ca.server();
    certs::write(p.dir.path(), "server.key", &other.1);
    assert_eq!(t.gw.reload(), 3);
    assert_eq!(
        scrape(&t, "mqbridge_tls_reloads_total{result=\"failed\"}").await,
        Some(3.0)
    );
    let (ok, stderr) = tls_pub(
        tls_port.parse().expect("port"),
        &tls_args(&new_ca_path, None),
        "reload/z",
        "m",
    )
    .await;
    assert!(ok, "still served with the last good certificate: {stderr}");
    t.gw.shutdown().await;
}

/// A client that connects to a TLS listener and says nothing is closed at
/// the connect timeout and counted as a handshake timeout; one that speaks
/// plain MQTT to it is closed at once, counted as a protocol failure.
#[tokio::test]
async fn silent_tls_client_is_closed_at_the_connect_timeout() {
    let p = pki();
    let t = start_tls(&p, |c| c.mqtt.connect_timeout_secs = 1).await;
    let mut s = tokio::net::TcpStream::connect(t.gw.listener_addr("tls").expect("bound"))
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    let mut byte = [0u8; 1];
    let n = within(5, s.read(&mut byte)).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(tls_failures(&t, "tls", "timeout").await, 1.0);
    assert_eq!(
        scrape(
            &t,
            "mqbridge_mqtt_connections_total{listener=\"tls\",result=\"rejected\"}"
        )
        .await,
        Some(1.0)
    );
    t.gw.shutdown().await;
}

/// Whether `openssl s_client` limited to `version` completes a handshake
/// with `port`, trusting `ca`.
async fn s_client(port: u16, ca: &Path, version: &str) -> bool {
    let out = within(
        20,
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args([version, "-verify_return_error", "-CAfile"])
            .arg(ca)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("openssl runs");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0")
}

/// `min_tls_version = "1.3"` refuses a TLS 1.2 client (counted as
/// incompatible); the default accepts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_tls_version_is_enforced() {
    if !service::program("openssl", "openssl (Debian package openssl)") {
        return;
    }
    let p = pki();
    let mut only13 = certs::tls_listener("tls13", "tls", &p.server);
    only13.min_tls_version = "1.3".into();
    let t = start_tls(&p, |c| c.mqtt.listeners.push(only13)).await;
    assert!(s_client(port(&t, "tls"), &p.server_ca, "-tls1_2").await);
    assert!(s_client(port(&t, "tls"), &p.server_ca, "-tls1_3").await);
    assert!(s_client(port(&t, "tls13"), &p.server_ca, "-tls1_3").await);
    assert!(!s_client(port(&t, "tls13"), &p.server_ca, "-tls1_2").await);
    assert_eq!(tls_failures(&t, "tls13", "incompatible").await, 1.0);
    t.gw.shutdown().await;
}
