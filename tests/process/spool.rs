//! `ack = "spool"` with the real binary and the real RabbitMQ: devices are
//! acknowledged once their message is in the fsynced spool; the gateway is
//! killed with SIGKILL while RabbitMQ is blocking publishers (so the spool
//! holds acknowledged messages that never reached the backend), then
//! restarted: every acknowledged message must reach the queue.
//! One test in this file: it blocks the broker for everyone.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::amqp::{broker_alone, Blocked, Fixture};
use crate::{free_port, wait_started};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

async fn spawn(dir: &std::path::Path, port: u16, run: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("gw-{run}.log"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .arg("--config")
        .arg(dir.join("spool.toml"))
        .current_dir(dir)
        .env("RUST_LOG", "mqbridge=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn mqbridge");
    wait_started(&mut child, port, &dir.join(format!("gw-{run}.log"))).await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_messages_survive_sigkill_and_reach_rabbitmq() {
    let Some((conn, turn)) = broker_alone().await else {
        return;
    };
    let fx = Fixture::new(&conn, "devices.#").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("spool.toml"),
        format!(
            r#"
[mqtt]
listen = "127.0.0.1:{port}"
[store]
path = "{store}"
[admin]
listen = ""
[[bridge.backends]]
kind = "amqp"
name = "rabbitmq"
uri = "{uri}"
exchange = "{x}"
[[bridge.uplink]]
name = "telemetry"
filter = "devices/+/telemetry/#"
backend = "rabbitmq"
target = "{x}"
ack = "spool"
"#,
            store = dir.path().join("store").display(),
            uri = crate::common::amqp::uri(),
            x = fx.exchange
        ),
    )
    .unwrap();
    let mut gw = spawn(dir.path(), port, 1).await;

    // Phase 1: the broker takes messages. Phase 2: it blocks publishers; the
    // spool keeps acknowledging. Then SIGKILL.
    let mut o = MqttOptions::new("spooler", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 1000);
    let total = 400;
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            if c.publish(
                "devices/spooler/telemetry",
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut acked = 0usize;
    let mut guard = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < 300 && Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(5), ev.poll()).await
        {
            acked += 1;
            if acked == 100 {
                guard = Some(Blocked::start(&turn));
            }
        }
    }
    gw.kill().unwrap(); // SIGKILL
    let _ = gw.wait();
    publisher.abort();
    assert!(
        acked >= 200,
        "only {acked} acknowledgements before the kill"
    );
    drop(guard); // unblock RabbitMQ
                 // Before the restart the queue lacks part of what was acknowledged: those
                 // messages exist only in the spool.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = fx
        .channel
        .queue_declare(
            fx.queue.as_str().into(),
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let before = q.message_count() as usize;
    assert!(
        before < acked,
        "the spool held nothing back ({before} of {acked} already in the queue)"
    );
    // The gateway acknowledges in publish order: messages 0..acked were acknowledged.
    let mut gw = spawn(dir.path(), port, 2).await;
    let got = fx.take(total * 2, Duration::from_secs(15)).await;
    let seen: HashSet<usize> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).parse().unwrap())
        .collect();
    let missing: Vec<usize> = (0..acked).filter(|i| !seen.contains(i)).collect();
    eprintln!(
        "spool: {acked} acknowledged before SIGKILL, {before} in the queue at the kill, {} received after restart ({} distinct), {} missing",
        got.len(),
        seen.len(),
        missing.len()
    );
    let _ = gw.kill();
    let _ = gw.wait();
    fx.cleanup().await;
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}
