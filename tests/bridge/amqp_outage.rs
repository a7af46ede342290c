//! The AMQP sink through a RabbitMQ outage: publishers blocked by a memory
//! alarm for a second (so messages are in flight), `rabbitmqctl stop_app`,
//! a few seconds, `rabbitmqctl start_app`, while records keep coming. Nothing the
//! sink confirmed may be missing afterwards; duplicates are allowed (at
//! least once) and reported.
//!
//! The test holds the broker alone (`service::Use::Alone`): stopping it
//! would break the other AMQP tests. Needs
//! `rabbitmqctl` for the broker of `MQBRIDGE_TEST_AMQP_URI` (override the
//! command with `MQBRIDGE_TEST_RABBITMQCTL`); skipped without it unless CI=true.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::amqp::{backend, broker_alone, connect, envelope, record, take, Fixture};
use mqbridge::bridge::amqp;
use mqbridge::bridge::metrics::BridgeMetrics;
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;

const RECORDS: usize = 300;
/// Records come in bursts, so that some are in flight when the broker goes.
const BURST: usize = 5;
const GAP: Duration = Duration::from_millis(100);
/// How long the broker's app is stopped.
const OUTAGE: Duration = Duration::from_secs(3);

fn rabbitmqctl() -> String {
    std::env::var("MQBRIDGE_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into())
}

async fn ctl(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(rabbitmqctl())
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The arguments of `set_vm_memory_high_watermark` that put the broker's
/// current watermark back: a fraction (`0.4`, or `{relative,0.4}`) or an
/// absolute limit (`{absolute,N}`). `None` if the answer is neither.
async fn watermark() -> Option<Vec<String>> {
    let w = ctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
        .await
        .ok()?;
    parse_watermark(&w)
}

fn parse_watermark(w: &str) -> Option<Vec<String>> {
    let w = w.trim();
    if w.parse::<f64>().is_ok() {
        return Some(vec![w.to_string()]);
    }
    let inner = w.strip_prefix('{')?.strip_suffix('}')?;
    let (kind, value) = inner.split_once(',')?;
    let value = value.trim();
    match kind.trim() {
        "relative" if value.parse::<f64>().is_ok() => Some(vec![value.to_string()]),
        "absolute" if value.parse::<u64>().is_ok() => {
            Some(vec!["absolute".to_string(), value.to_string()])
        }
        _ => None,
    }
}

#[test]
fn watermark_forms_are_read() {
    assert_eq!(parse_watermark("0.4"), Some(vec!["0.4".to_string()]));
    assert_eq!(
        parse_watermark("{relative,0.6}"),
        Some(vec!["0.6".to_string()])
    );
    assert_eq!(
        parse_watermark("{absolute,1073741824}"),
        Some(vec!["absolute".to_string(), "1073741824".to_string()])
    );
    assert_eq!(parse_watermark("{badrpc,nodedown}"), None);
}

/// Puts the broker back (app started, watermark restored) if the test ends
/// or panics in the middle of the outage.
struct Disruption {
    stopped: bool,
    watermark: Option<Vec<String>>,
}

impl Drop for Disruption {
    fn drop(&mut self) {
        let ctl = |args: &[&str]| {
            std::process::Command::new(rabbitmqctl())
                .args(args)
                .status()
        };
        if self.stopped {
            let _ = ctl(&["start_app"]);
        }
        if let Some(w) = self.watermark.take() {
            let mut args = vec!["set_vm_memory_high_watermark"];
            args.extend(w.iter().map(String::as_str));
            let _ = ctl(&args);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_that_was_confirmed() {
    let Some((conn, _turn)) = broker_alone().await else {
        return;
    };
    if let Err(e) = ctl(&["status"]).await {
        crate::common::service::missing(&format!("rabbitmqctl ({e})"));
        return;
    }
    // The "block publishers" phase is what puts messages in flight when the
    // broker goes; without a watermark to restore, the test cannot run it.
    let Some(saved_watermark) = watermark().await else {
        crate::common::service::missing("a readable vm_memory_high_watermark (rabbitmqctl eval)");
        return;
    };
    let fx = Fixture::new(&conn, "#").await;
    let (exchange, queue) = (fx.exchange.clone(), fx.queue.clone());
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let (route, counters) = (metrics.route("r"), metrics.backend("rabbit"));
    let sink = amqp::start(
        &backend(&exchange, false),
        counters.clone(),
        1000,
        &TaskTracker::new(),
    )
    .await
    .expect("start");

    // Records at a steady pace (~6 s in all), each answer timed from hand-off.
    let tx = sink.handle.tx.clone();
    let sender = tokio::spawn(async move {
        let mut timed = Vec::new();
        for i in 0..RECORDS {
            let client = format!("dev-{}", i % 10);
            let (env, rx) = envelope(record(
                &route,
                &client,
                "",
                &format!("devices.{client}.telemetry"),
                format!("{i}"),
            ));
            tx.send(env).await.expect("sink alive");
            let handed = Instant::now();
            timed.push(tokio::spawn(async move { (rx.await, handed.elapsed()) }));
            if i % BURST == BURST - 1 {
                tokio::time::sleep(GAP).await;
            }
        }
        timed
    });

    // First block publishers (memory alarm): what the sink publishes then
    // stays unconfirmed, unread by the broker, and is lost with the
    // connection, so it must be published again. Then stop the broker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut broker_state = Disruption {
        stopped: false,
        watermark: Some(saved_watermark),
    };
    ctl(&["set_vm_memory_high_watermark", "0"])
        .await
        .expect("block publishers");
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker_state.stopped = true;
    ctl(&["stop_app"]).await.expect("stop_app");
    let stopped_at = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    ctl(&["start_app"]).await.expect("start_app");
    broker_state.stopped = false;
    if let Some(w) = broker_state.watermark.take() {
        let mut args = vec!["set_vm_memory_high_watermark"];
        args.extend(w.iter().map(String::as_str));
        ctl(&args).await.expect("unblock publishers");
    }
    let outage = stopped_at.elapsed();

    let mut latencies = Vec::new();
    for (i, answer) in sender.await.expect("sender").into_iter().enumerate() {
        let (res, latency) = tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .unwrap_or_else(|_| panic!("record {i} never answered"))
            .expect("waiter");
        assert_eq!(res.expect("sink dropped the confirm"), Ok(()), "record {i}");
        latencies.push(latency);
    }
    let delayed = latencies
        .iter()
        .filter(|l| **l >= Duration::from_secs(1))
        .count();
    let slowest = latencies.iter().max().copied().unwrap_or_default();

    // The test's own connection died with the broker; read with a new one.
    let conn = connect().await.expect("broker back");
    let channel = conn.create_channel().await.expect("channel");
    let mut copies: BTreeMap<usize, usize> = BTreeMap::new();
    for d in take(&channel, &queue, usize::MAX, Duration::from_secs(3)).await {
        let id: usize = String::from_utf8_lossy(&d.data)
            .parse()
            .expect("numeric payload");
        *copies.entry(id).or_default() += 1;
    }
    let missing: Vec<usize> = (0..RECORDS).filter(|i| !copies.contains_key(i)).collect();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "outage {outage:?}: {RECORDS} records, all confirmed Ok; {delayed} confirms took >= 1 s (slowest {slowest:?}); \
         in the queue: {} distinct, {} missing, {duplicates} duplicates; reconnect attempts {}",
        copies.len(),
        missing.len(),
        counters.retries.get()
    );
    assert!(missing.is_empty(), "confirmed but missing: {missing:?}");
    assert!(delayed > 0, "no confirm was held back by the outage");
    assert!(counters.retries.get() >= 1);
    assert_eq!(counters.up.get(), 1);

    drop(sink.handle);
    tokio::time::timeout(Duration::from_secs(10), sink.task)
        .await
        .expect("task ends")
        .expect("no panic");
    Fixture {
        channel,
        exchange,
        queue,
    }
    .cleanup()
    .await;
}
