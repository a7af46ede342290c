//! `config/production.toml` end to end, as an operator would run it: the
//! real binary with the file as shipped (only its paths, ports and topic
//! names replaced by the test's), TLS with certificates made by the test, a
//! password file written by `mqbridge passwd`, Mosquitto's `mosquitto_pub`
//! as the device, and the real Kafka-protocol broker (tansu) as backend.
//! Device A's telemetry reaches Kafka keyed by its client id; what the
//! configuration forbids (another device's topic, another client id, a wrong
//! password, no password, plain TCP) does not.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::kafka::{broker, payload, read_topic, unique};
use crate::common::service;
use crate::{free_port, wait_started};
use rdkafka::Message;

use crate::common::certs;

const PASSWORD: &str = "correct horse battery staple";

/// production.toml with the test's paths, ports and names.
fn config(dir: &Path, port: u16, admin: u16, kafka: &str, topic: &str) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.toml"),
    )
    .expect("config/production.toml");
    let d = dir.display();
    shipped
        .replace("/etc/mqbridge/", &format!("{d}/"))
        .replace("/var/lib/mqbridge", &format!("{d}/store"))
        .replace("0.0.0.0:8883", &format!("127.0.0.1:{port}"))
        .replace("0.0.0.0:8884", &format!("127.0.0.1:{}", crate::free_port()))
        .replace("127.0.0.1:9883", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:9092", kafka)
        .replace("mqbridge.telemetry", topic)
        .replace("mqbridge.commands", &format!("{topic}.commands"))
        .replace("mqbridge-commands", &format!("{topic}-group"))
}

/// `mosquitto_pub` over TLS (3.1.1 unless `version`): whether it exited 0.
fn publish(
    dir: &Path,
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
    topic: &str,
    msg: &str,
) -> bool {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "localhost",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-i",
        id,
    ])
    .args(["-t", topic, "-m", msg])
    .arg("--cafile")
    .arg(dir.join("ca.pem"));
    if let Some((u, p)) = login {
        c.args(["-u", u, "-P", p]);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_config_serves_a_secured_fleet_end_to_end() {
    if !service::program(
        "mosquitto_pub",
        "mosquitto_pub (Debian package mosquitto-clients)",
    ) {
        return;
    }
    let Some((kafka, _turn)) = broker().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = certs::Ca::new("production test CA");
    ca.write(d, "ca.pem");
    ca.write(d, "devices-ca.pem");
    certs::write_pair(d, "server-chain", &ca.server());
    std::fs::rename(d.join("server-chain.key"), d.join("server.key")).expect("key");

    // The password file, written by the binary's own subcommand.
    let exe = env!("CARGO_BIN_EXE_mqbridge");
    let mut passwd = Command::new(exe)
        .args([
            "passwd",
            &d.join("passwords").display().to_string(),
            "devA",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mqbridge passwd");
    passwd
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("password");
    assert!(passwd.wait().expect("passwd exits").success());

    let (port, admin, topic) = (free_port(), free_port(), unique("prod"));
    std::fs::write(
        d.join("production.toml"),
        config(d, port, admin, &kafka, &topic),
    )
    .expect("write");
    let log = std::fs::File::create(d.join("gw.log")).expect("log");
    let mut gw = std::process::Command::new(exe)
        .arg("--config")
        .arg(d.join("production.toml"))
        .env("MQBRIDGE_ADMIN_TOKEN", "test-token")
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn mqbridge");
    wait_started(&mut gw, port, &d.join("gw.log")).await;

    let a = Some(("devA", PASSWORD));
    let d2 = d.to_path_buf();
    let outcomes = tokio::task::spawn_blocking(move || {
        let d = d2.as_path();
        [
            // Forbidden: another device's topic (3.1.1: acknowledged, dropped).
            publish(d, port, "devA", a, "devices/devB/telemetry", "forged"),
            // Refused at CONNECT: another client id, a wrong password, none.
            publish(d, port, "devB", a, "devices/devA/telemetry", "other-id"),
            publish(
                d,
                port,
                "devA",
                Some(("devA", "wrong")),
                "devices/devA/telemetry",
                "bad-pw",
            ),
            publish(d, port, "devA", None, "devices/devA/telemetry", "anonymous"),
            // Allowed, and last: when it is in Kafka, the others had their chance.
            publish(d, port, "devA", a, "devices/devA/telemetry", "hello"),
        ]
    })
    .await
    .expect("join");
    assert_eq!(
        outcomes,
        [true, false, false, false, true],
        "mosquitto_pub exit statuses"
    );

    let got = read_topic(&kafka, &topic, 1, Duration::from_secs(30)).await;
    let payloads: Vec<String> = got.iter().map(payload).collect();
    assert_eq!(
        payloads,
        ["hello"],
        "only the allowed message reaches Kafka"
    );
    assert_eq!(got[0].key(), Some(&b"devA"[..]), "keyed by client id");
    // A few more seconds: nothing forbidden trails behind.
    let later = read_topic(&kafka, &topic, 2, Duration::from_secs(3)).await;
    assert_eq!(
        later.len(),
        1,
        "{:?}",
        later.iter().map(payload).collect::<Vec<_>>()
    );

    // No plain-text listener: nothing else is bound but the admin endpoint.
    let _ = gw.kill();
    let _ = gw.wait();
}
