//! `log.format = "json"`: the binary writes one JSON object per line, with
//! the event's structured fields at the top level — also for a refusal.

use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_with_their_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::free_port();
    let log = dir.path().join("stdout.log");
    let mut cmd = crate::mqbridge_command();
    let mut child = cmd
        .env_remove("RUST_LOG")
        .env("MQBRIDGE__LOG__FORMAT", "json")
        .env("MQBRIDGE__MQTT__LISTEN", format!("127.0.0.1:{port}"))
        .env("MQBRIDGE__ADMIN__LISTEN", "")
        .env("MQBRIDGE__MQTT__MAX_PACKET_SIZE", "1024")
        .env("MQBRIDGE__STORE__PATH", dir.path().join("store"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mqbridge");
    crate::wait_started(&mut child, port, &log).await;
    // A packet over mqtt.max_packet_size: the connection is closed, logged.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let big = crate::common::b4::connect(crate::common::opts_v4(addr, "dev-big", true)).await;
    big.client
        .publish("a/b", rumqttc::QoS::AtLeastOnce, false, vec![b'x'; 3000])
        .await
        .expect("queue the publish");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if (text.contains("mqbridge started") && text.contains("packet_too_large"))
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l[key].is_string(), "{key} missing in {l}");
        }
    }
    let started = lines
        .iter()
        .find(|l| l["message"] == "mqbridge started")
        .unwrap_or_else(|| panic!("no start line in:\n{text}"));
    assert_eq!(started["level"], "INFO");
    // A structured field, at the top level rather than interpolated.
    assert_eq!(
        started["mqtt_addr"],
        format!("127.0.0.1:{port}"),
        "{started}"
    );
}
