//! Interoperability with Mosquitto's command-line clients (Debian's
//! `mosquitto-clients`), 3.1.1 and 5.0: a third-party client implementation
//! publishing, subscribing, and resuming a persistent session.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

fn available() -> bool {
    let ok = std::process::Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "mosquitto_pub/mosquitto_sub are required in CI (Debian package mosquitto-clients)"
            );
        }
        eprintln!("skipped: mosquitto-clients not installed");
    }
    ok
}

async fn pubs(port: u16, version: &str, topic: &str, msg: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            version,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            msg,
        ])
        .status()
        .await
        .expect("mosquitto_pub runs");
    assert!(status.success(), "mosquitto_pub {version} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_publish_subscribe_and_resume_sessions() {
    if !available() {
        return;
    }
    let t = common::start().await;
    let port = t.addr.port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let id = format!("mosq-{version}");
        let mut sub_args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-q",
            "1",
            "-t",
            "interop/#",
            "-v",
            "-i",
            &id,
            "-c",
        ];
        if version == "mqttv5" {
            sub_args.extend(["-x", "300"]);
        }
        // Create the persistent session and subscription, then leave (-W 1:
        // it exits after a second with a timeout status, which is expected).
        Command::new("mosquitto_sub")
            .args(&sub_args)
            .args(["-W", "1"])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("mosquitto_sub runs");
        // Published while the subscriber is away: queued in its session.
        pubs(
            t.addr.port(),
            version,
            &format!("interop/{version}/a"),
            "one",
        )
        .await;
        pubs(
            t.addr.port(),
            version,
            &format!("interop/{version}/b"),
            "two",
        )
        .await;
        let out = tokio::time::timeout(
            Duration::from_secs(15),
            Command::new("mosquitto_sub")
                .args(&sub_args)
                .args(["-C", "2", "-W", "10"])
                .output(),
        )
        .await
        .expect("mosquitto_sub finished")
        .expect("mosquitto_sub runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                format!("interop/{version}/a one"),
                format!("interop/{version}/b two")
            ],
            "{version}: queued messages delivered in order on resume; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    t.gw.shutdown().await;
}
