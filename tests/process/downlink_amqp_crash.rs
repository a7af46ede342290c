//! The real binary killed with SIGKILL while it consumes AMQP commands: some
//! are acked, some stored but not yet acked, some consumed but not stored.
//! After a restart the persistent device must get every command (duplicates
//! allowed: at-least-once), in order apart from those duplicates.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::amqp::{broker, suffix};
use crate::common::downlink::Commands;
use crate::common::{b4, opts_v4};
use crate::{free_port, wait_started};
use rumqttc::QoS;

/// Starts the binary (log in `gw-<run>.log`) and waits for its MQTT port.
async fn spawn(dir: &Path, port: u16, run: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("gw-{run}.log"))).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .arg("--config")
        .arg(dir.join("gw.toml"))
        .current_dir(dir)
        .env(
            "RUST_LOG",
            "mqbridge=debug,mqbridge::bridge::amqp::source=trace",
        )
        .env("NO_COLOR", "1")
        // The log goes to stdout.
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("spawn mqbridge");
    wait_started(&mut child, port, &dir.join(format!("gw-{run}.log"))).await;
    child
}

/// Kills the gateway if the test fails half-way.
struct Killer(Option<Child>);
impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_sigkill_between_consuming_and_storing() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let cmds = Commands::new(conn).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let id = format!("crash-{}", suffix());
    std::fs::write(
        dir.path().join("gw.toml"),
        format!(
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
kind = "amqp"
name = "rabbitmq"
uri = "{uri}"
[[bridge.downlink]]
name = "commands"
backend = "rabbitmq"
queue = "{queue}"
declare_queue = true
bind_exchange = "{exchange}"
binding_key = "devices.*.commands"
prefetch = 100
topic = "{{routing_key}}"
qos = 1
"#,
            store = dir.path().join("store").display(),
            uri = crate::common::amqp::uri(),
            queue = cmds.queue,
            exchange = cmds.exchange,
        ),
    )
    .expect("config");
    let mut gw = Killer(Some(spawn(dir.path(), port, 1).await));
    cmds.wait_consumer().await;
    let addr = ([127, 0, 0, 1], port).into();
    let mut d = b4::connect(opts_v4(addr, &id, false)).await;
    d.subscribe(&format!("devices/{id}/commands"), QoS::AtLeastOnce)
        .await;
    d.disconnect().await;

    let total = 200;
    let sent: Vec<String> = (0..total).map(|i| format!("cmd-{i:03}")).collect();
    // Kill once the gateway has logged 20 consumed commands, while the burst
    // is still being published: it dies with commands handed over, some
    // perhaps stored and acked, not all.
    let log = dir.path().join("gw-1.log");
    let kill = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("consumed")
            .count()
            < 20
        {
            assert!(
                Instant::now() < deadline,
                "the gateway consumes nothing:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(mut child) = gw.0.take() {
            child.kill().expect("SIGKILL"); // no shutdown, no flush, no acks
            let _ = child.wait();
        }
    };
    let key = format!("devices.{id}.commands");
    tokio::join!(cmds.publish_burst(&key, &sent), kill);
    // The broker puts back whatever was not acked when the connection died.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (in_queue, _) = cmds.stats().await.expect("queue exists");

    let restarted = Instant::now();
    gw.0 = Some(spawn(dir.path(), port, 2).await);
    let mut d = b4::connect(opts_v4(addr, &id, false)).await;
    assert!(d.session_present(), "session survives the kill");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sent.iter().all(|s| got.contains(s)) && Instant::now() < deadline {
        got.extend(b4::payloads(&d.drain().await));
    }
    let all_in = restarted.elapsed();
    got.extend(b4::payloads(&d.drain().await));
    let missing: Vec<&String> = sent.iter().filter(|s| !got.contains(s)).collect();
    let distinct: HashSet<&String> = got.iter().collect();
    let duplicates = got.len() - distinct.len();
    eprintln!(
        "SIGKILL: {total} published, {} acked before the kill, {in_queue} in the queue after it \
         (unacked or not yet delivered); after restart {} received ({} duplicates), {} missing",
        total - in_queue as usize,
        got.len(),
        duplicates,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost commands: {missing:?}; got {got:?}"
    );
    // The broker requeued the dead connection's unacked deliveries at once:
    // the restarted gateway gets them as soon as it consumes.
    eprintln!("every command delivered {all_in:?} after the restart");
    assert!(
        all_in < Duration::from_secs(15),
        "commands resumed only {all_in:?} after the restart"
    );
    assert!(
        in_queue > 0,
        "the kill came after every command was acked: nothing was redelivered"
    );
    // In order apart from duplicates: each command comes after the previous
    // one's first appearance (a redelivered one may repeat older ones).
    let firsts: Vec<usize> = sent
        .iter()
        .filter_map(|s| got.iter().position(|g| g == s))
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "out of order: {got:?}"
    );
    d.disconnect().await;
    drop(gw);
    cmds.cleanup().await;
}
