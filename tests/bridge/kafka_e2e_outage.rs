//! The Kafka-protocol broker frozen (SIGSTOP) for a few seconds while
//! devices publish through the gateway: PUBACKs wait, and every PUBACKed
//! message is in the topic afterwards (duplicates counted). A freeze rather
//! than a restart because tansu's memory storage would lose the topic on a
//! restart, which would say nothing about the gateway. The test holds the
//! broker alone: a frozen broker would stall every other Kafka test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::service::{self, Use};
use crate::common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

const DEVICES: usize = 3;
const PER_DEVICE: usize = 80;
const GAP: Duration = Duration::from_millis(40);
const OUTAGE: Duration = Duration::from_secs(4);

/// The pids of the local tansu broker processes (by process name, so a
/// shell or grep whose command line mentions tansu is never frozen in its
/// place), or None (skip; fail in CI).
fn tansu_pids() -> Option<Vec<String>> {
    let out = std::process::Command::new("pgrep")
        .args(["-x", "tansu"])
        .output()
        .ok()?;
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    (!pids.is_empty()).then_some(pids)
}

fn signal(pids: &[String], sig: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill").args([sig, pid]).status();
    }
}

/// The process state letter from `/proc/<pid>/stat` ('T' = stopped).
fn state(pid: &str) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Thaws the broker even if the test panics.
struct Thaw(Vec<String>);
impl Drop for Thaw {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_waits_through_a_frozen_kafka_broker_and_nothing_acked_is_lost() {
    let Some((addr, _turn)) = service::kafka(Use::Alone).await else {
        return;
    };
    let Some(pids) = tansu_pids() else {
        service::missing("a local tansu broker to freeze");
        return;
    };
    let topic = format!("mqbridge-test-out-{:016x}", rand::random::<u64>());
    let t = start_with(|cfg| kafka_bridge(cfg, &addr, &topic)).await;
    let devices: Vec<_> = (0..DEVICES)
        .map(|d| tokio::spawn(paced_device(t.addr, format!("kout{d}"), PER_DEVICE, GAP)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(&pids, "-STOP");
    let thaw = Thaw(pids.clone());
    let frozen_at = Instant::now();
    // The precondition of everything below: the broker really is frozen.
    for pid in &pids {
        assert_eq!(state(pid), Some('T'), "tansu pid {pid} did not stop");
    }
    tokio::time::sleep(OUTAGE).await;
    drop(thaw);
    let mut acks = Vec::new();
    for d in devices {
        acks.push(within(120, d).await.unwrap());
    }
    let longest = assert_acks_waited(&acks, frozen_at, OUTAGE);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set(
            "group.id",
            format!("mqbridge-test-{:08x}", rand::random::<u32>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let want = DEVICES * PER_DEVICE;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < want && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            let p = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            *seen.entry(p).or_default() += 1;
        }
    }
    drop(consumer);
    let (missing, duplicates) = missing_and_duplicates(&seen, "kout", DEVICES, PER_DEVICE);
    eprintln!("kafka freeze: {want} acknowledged, {} distinct received, {} missing, {duplicates} duplicates, longest PUBACK gap {longest:?}", seen.len(), missing.len());
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    t.gw.shutdown().await;
}
