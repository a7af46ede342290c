//! SIGKILL of the real binary while it consumes commands: nothing is lost.
//! Offsets are committed only for commands stored in the session, so what
//! was consumed but not stored (or stored but not committed) is consumed
//! again after the restart — duplicates are allowed and counted, loss is not.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::b4;
use crate::common::kafka as k;
use crate::{free_port, wait_started};
use rumqttc::QoS;

const PARTITIONS: i32 = 3;
const COMMANDS: usize = 50;

fn write_config(dir: &Path, port: u16, addr: &str, topic: &str, group: &str) {
    let toml = format!(
        r#"
[mqtt]
listen = "127.0.0.1:{port}"
[store]
path = "{store}"
[admin]
listen = ""
[bridge]
uplink = []
[[bridge.backends]]
kind = "kafka"
name = "kafka"
bootstrap_servers = "{addr}"
# No session.timeout.ms override: the killed gateway stays a group member
# for librdkafka's default 45 s, but the restarted one comes back with the
# same group.instance.id (static membership, node id kept in the store) and
# takes its partitions back at once.
[[bridge.downlink]]
name = "commands"
backend = "kafka"
topics = ["{topic}"]
group_id = "{group}"
topic = "devices/{{key}}/commands"
qos = 1
"#,
        store = dir.join("store").display(),
    );
    std::fs::write(dir.join("gw.toml"), toml).expect("write config");
}

async fn spawn(dir: &Path, port: u16, run: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("gw-{run}.log"))).expect("log file");
    let mut cmd = crate::mqbridge_command();
    let mut child = cmd
        .arg("--config")
        .arg(dir.join("gw.toml"))
        .current_dir(dir)
        // The source's trace lines tell the test when commands are consumed.
        .env(
            "RUST_LOG",
            std::env::var("GW_LOG").unwrap_or_else(|_| {
                "mqbridge=info,mqbridge::bridge::kafka::source::client=trace".into()
            }),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("spawn mqbridge");
    wait_started(&mut child, port, &dir.join(format!("gw-{run}.log"))).await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_sigkill_between_consume_and_commit() {
    let Some((addr, _turn)) = k::broker().await else {
        return;
    };
    let (topic, group, device) = (k::unique("cmd"), k::unique("group"), k::unique("dev"));
    k::create_topics(&addr, &[&topic], PARTITIONS).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    write_config(dir.path(), port, &addr, &topic, &group);
    let mut gw = spawn(dir.path(), port, 1).await;

    let filter = format!("devices/{device}/commands");
    let opts = crate::common::opts_v4(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &device,
        false,
    );
    let mut d = b4::connect(opts.clone()).await;
    d.subscribe(&filter, QoS::AtLeastOnce).await;
    d.disconnect().await;

    // A steady stream of commands; SIGKILL as soon as the gateway logs the
    // first consumed one: it dies with commands handed to the processor,
    // some perhaps stored, none committed yet (commits run every 200 ms).
    let sent = b4::numbered("cmd-", COMMANDS);
    let producing = {
        let (addr, topic, device, sent) =
            (addr.clone(), topic.clone(), device.clone(), sent.clone());
        tokio::spawn(async move {
            let p = k::producer(&addr);
            for s in &sent {
                k::produce(
                    &p,
                    &topic,
                    k::Cmd {
                        key: &device,
                        payload: s,
                        ..Default::default()
                    },
                )
                .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = dir.path().join("gw-1.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("source::client: consumed")
    {
        assert!(Instant::now() < deadline, "the gateway consumes nothing");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gw.kill().expect("SIGKILL");
    let _ = gw.wait();
    let at_kill: i64 = k::committed(&addr, &group, &topic, PARTITIONS)
        .iter()
        .filter(|o| **o > 0)
        .sum();
    let consumed = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("source::client: consumed")
        .count();
    producing.await.expect("producer");
    // The kill must land between consuming and committing, or this test
    // proves nothing about redelivery.
    assert!(
        (consumed as i64) > at_kill,
        "the kill came after everything consumed was committed ({consumed} consumed, {at_kill} committed)"
    );
    let restarted = Instant::now();
    let mut gw = spawn(dir.path(), port, 2).await;
    let mut d = b4::connect(opts).await;
    assert!(d.session_present(), "session survived SIGKILL");
    let mut got = Vec::new();
    let mut distinct = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while distinct.len() < COMMANDS && Instant::now() < deadline {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(1), d.publishes.recv()).await
        {
            distinct.insert(p.payload.clone());
            got.push(p);
        }
    }
    let all_in = restarted.elapsed();
    // Redelivered commands are stored before the group's offsets reach the
    // end; whatever they add arrives by then.
    k::wait_committed(
        &addr,
        &group,
        &topic,
        PARTITIONS,
        COMMANDS as i64,
        Duration::from_secs(60),
    )
    .await;
    got.extend(d.drain().await);
    let payloads = b4::payloads(&got);
    let mut seen = HashSet::new();
    let first: Vec<String> = payloads
        .iter()
        .filter(|p| seen.insert(p.to_string()))
        .cloned()
        .collect();
    eprintln!(
        "SIGKILL: {consumed} consumed, {at_kill} committed at the kill; after restart {} received, {} distinct, {} duplicates",
        payloads.len(),
        first.len(),
        payloads.len() - first.len()
    );
    if first != sent || std::env::var("GW_LOG").is_ok() {
        for run in 1..=2 {
            let log = std::fs::read_to_string(dir.path().join(format!("gw-{run}.log")));
            eprintln!("--- gateway run {run} ---\n{}", log.unwrap_or_default());
        }
    }
    assert_eq!(first, sent, "every command, first seen in order");
    // Static membership: not the 45 s session timeout of the killed member.
    eprintln!("every command delivered {all_in:?} after the restart");
    assert!(
        all_in < Duration::from_secs(15),
        "commands resumed only {all_in:?} after the restart"
    );
    // Apart from duplicates, order holds: each redelivery replays a run of
    // consecutive commands.
    for w in payloads.windows(2) {
        assert!(
            w[1] > w[0] || seen_before(&payloads, &w[1]),
            "out of order: {payloads:?}"
        );
    }
    d.disconnect().await;
    let _ = gw.kill();
    let _ = gw.wait();
}

/// Whether `p` occurs more than once (a redelivered command).
fn seen_before(all: &[String], p: &String) -> bool {
    all.iter().filter(|x| *x == p).count() > 1
}
