//! Interoperability with Mosquitto's command-line clients (Debian's
//! `mosquitto-clients`), 3.1.1 and 5.0: a third-party client implementation
//! publishing, subscribing, and resuming a persistent session.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::common::service;

fn available() -> bool {
    service::program(
        "mosquitto_pub",
        "mosquitto_pub/mosquitto_sub (Debian package mosquitto-clients)",
    )
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
    let t = crate::common::start().await;
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

/// Whether a script's interpreter and its client library are there (MQTT.js
/// in tests/interop/node_modules, installed by scripts/test.sh; paho-mqtt).
fn script_client_available(program: &str, check: &[&str], what: &str) -> bool {
    service::tool(program, check, Some(&interop_dir()), what)
}

fn interop_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs a subscriber script (MQTT.js or Paho) that prints READY once
/// subscribed, publishes `topics` to it with QoS 1, and returns the JSON
/// lines it printed: (topic as the client resolved it, payload, alias).
async fn script_subscriber(
    program: &str,
    script: &str,
    port: u16,
    id: &str,
    alias_max: u16,
    topics: &[String],
) -> Vec<(String, String, Option<u64>)> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new(program)
        .arg(script)
        .args([
            &port.to_string(),
            id,
            "interop-alias/#",
            &topics.len().to_string(),
        ])
        .arg(alias_max.to_string())
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("client script runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = crate::common::within(20, lines.next_line())
        .await
        .expect("read");
    assert_eq!(
        ready.as_deref(),
        Some("READY"),
        "{script} did not subscribe"
    );
    for (i, topic) in topics.iter().enumerate() {
        pubs(port, "mqttv311", topic, &format!("m{i}")).await;
    }
    let mut got = Vec::new();
    while let Some(line) = crate::common::within(30, lines.next_line())
        .await
        .expect("read")
    {
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        got.push((
            v["topic"].as_str().unwrap_or_default().to_string(),
            v["payload"].as_str().unwrap_or_default().to_string(),
            v["alias"].as_u64(),
        ));
    }
    let status = crate::common::within(10, child.wait()).await.expect("exit");
    assert!(status.success(), "{script} failed: {status}");
    got
}

/// MQTT.js allowing 2 aliases decodes the gateway's outgoing aliases: every
/// message arrives with its own topic, aliases never above 2. Paho (which
/// does not resolve incoming aliases and so asks for none) gets plain topics
/// without an alias; asked for 2, it sees alias-only PUBLISHes with an empty
/// topic, proof that they are on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_and_paho_decode_outgoing_topic_aliases() {
    if !available() {
        return;
    }
    let t = crate::common::start().await;
    let port = t.addr.port();
    // Repeats (alias only) and a third topic (an alias reassigned).
    let topics: Vec<String> = [0, 1, 0, 1, 0, 2, 2, 0, 1]
        .iter()
        .map(|i| format!("interop-alias/t{i}"))
        .collect();
    let payloads: Vec<String> = (0..topics.len()).map(|i| format!("m{i}")).collect();

    if script_client_available("node", &["-e", "require('mqtt')"], "MQTT.js (npm mqtt)") {
        let got = script_subscriber("node", "aliases.js", port, "mqttjs-alias", 2, &topics).await;
        let resolved: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(resolved, topics, "MQTT.js resolved every topic");
        let sent: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(sent, payloads);
        assert!(
            got.iter().all(|g| matches!(g.2, Some(1..=2))),
            "aliases within 2: {got:?}"
        );
    }
    if script_client_available("python3", &["-c", "import paho.mqtt"], "Python paho-mqtt") {
        let got =
            script_subscriber("python3", "aliases_paho.py", port, "paho-plain", 0, &topics).await;
        let plain: Vec<(&str, Option<u64>)> = got.iter().map(|g| (g.0.as_str(), g.2)).collect();
        let want: Vec<(&str, Option<u64>)> = topics.iter().map(|t| (t.as_str(), None)).collect();
        assert_eq!(plain, want, "no alias for a client that allows none");
        let got =
            script_subscriber("python3", "aliases_paho.py", port, "paho-alias", 2, &topics).await;
        // The first PUBLISH of a topic carries it with its alias.
        assert_eq!(got[0].0, topics[0]);
        assert!(got.iter().all(|g| matches!(g.2, Some(1..=2))), "{got:?}");
        assert!(
            got.iter().any(|g| g.0.is_empty()),
            "some PUBLISH went as alias only: {got:?}"
        );
    }
    t.gw.shutdown().await;
}
