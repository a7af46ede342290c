//! The `certificate` method (`use_identity_as_username`) on an mTLS
//! listener with its own `auth` / `allow_anonymous`, next to the plain
//! listener that keeps the `[auth]` defaults; driven by Debian's
//! mosquitto_pub with rcgen-made certificates.

use std::path::{Path, PathBuf};

use rumqttc::QoS;
use tokio::process::Command;

use crate::common::certs::{self, Ca};
use crate::common::{b4, opts_v4, service, start_with, within, TestGateway};

/// mosquitto_pub to `listener` as client id `id`, with these TLS options;
/// whether it succeeded, and its stderr.
async fn publish(t: &TestGateway, listener: &str, id: &str, tls: &[String]) -> (bool, String) {
    let port = t.gw.listener_addr(listener).expect("bound").port();
    let topic = format!("devices/{id}/telemetry");
    let out = within(
        20,
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port.to_string(), "-q", "1"])
            .args(["-i", id, "-t", &topic, "-m", "m", "-u", "ignored-name"])
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

fn tls_args(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
    let mut args = vec!["--cafile".to_string(), ca.display().to_string()];
    if let Some((cert, key)) = client {
        args.extend(["--cert".into(), cert.display().to_string()]);
        args.extend(["--key".into(), key.display().to_string()]);
    }
    args
}

/// On `devices` (optional mTLS, `auth = ["certificate"]`, anonymous off,
/// client id bound to the user name): the certificate's CN is the user
/// name, whatever user name the client sends; a device without a
/// certificate and one using another device's client id are refused. The
/// plain listener keeps the defaults: nothing is verified there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_common_name_is_the_user_name_on_its_listener() {
    if !service::program(
        "mosquitto_pub",
        "mosquitto_pub (Debian package mosquitto-clients)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("test server CA");
    let devices_ca = Ca::new("test devices CA");
    let server_ca_file = server_ca.write(dir.path(), "server-ca.pem");
    let server = certs::write_pair(dir.path(), "server", &server_ca.server());
    let dev_a = certs::write_pair(dir.path(), "devA", &devices_ca.device("devA"));
    let mut devices = certs::tls_listener("devices", "tls", &server);
    devices.client_ca_file = devices_ca
        .write(dir.path(), "devices-ca.pem")
        .display()
        .to_string();
    devices.client_certificates = "optional".into();
    devices.auth = Some(vec!["certificate".into()]);
    devices.allow_anonymous = Some(false);
    let t = start_with(|c| {
        c.mqtt.listeners.push(devices);
        c.auth.client_id = "username_prefix".into();
        c.auth.failure_delay_after = 1000;
    })
    .await;

    let with_cert = tls_args(&server_ca_file, Some(&dev_a));
    let (ok, err) = publish(&t, "devices", "devA", &with_cert).await;
    assert!(ok, "devA with its certificate: {err}");
    let (ok, err) = publish(&t, "devices", "devA-sensor", &with_cert).await;
    assert!(ok, "a prefixed client id: {err}");
    let (ok, _) = publish(&t, "devices", "devB", &with_cert).await;
    assert!(!ok, "devA's certificate used with devB's client id");
    let (ok, _) = publish(&t, "devices", "devA", &tls_args(&server_ca_file, None)).await;
    assert!(!ok, "no certificate, anonymous access off on this listener");

    // The bridged record names the certificate's identity, not the CONNECT
    // user name mosquitto_pub sent.
    let text =
        std::fs::read_to_string(t.dir.path().join("uplink/telemetry.jsonl")).unwrap_or_default();
    let users: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["headers"]["mqtt_username"]
                .as_str()
                .unwrap_or("-")
                .to_string()
        })
        .collect();
    assert_eq!(users, ["devA", "devA"], "{text}");

    // The plain listener keeps [auth]'s defaults: no method, the user name
    // taken as given (the binding still applies to it).
    let mut o = opts_v4(t.addr, "lab-1", true);
    o.set_credentials("lab-1", "unchecked");
    let mut anon = b4::connect(o).await;
    anon.publish("x", QoS::AtLeastOnce, false, b"m").await;
    anon.disconnect().await;
    t.gw.shutdown().await;
}
