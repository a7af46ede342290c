//! The AMQP sink against the real RabbitMQ (`MQBRIDGE_TEST_AMQP_URI`,
//! default guest@127.0.0.1:5672): confirms, order, headers, refusals.
//! Skipped with a note when RabbitMQ is not reachable (failed when CI=true).
//! The broker-outage test lives in `bridge_amqp_outage.rs`, apart, because
//! it stops the broker under everyone's feet.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::amqp::{
    backend, broker, envelope, header, record, send, suffix, Answer, Fixture,
};
use lapin::types::{AMQPValue, FieldTable};
use mqbridge::bridge::metrics::BridgeMetrics;
use mqbridge::bridge::{amqp, SinkError};
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;

const PATIENCE: Duration = Duration::from_secs(20);

async fn answer(rx: Answer) -> Result<(), SinkError> {
    tokio::time::timeout(PATIENCE, rx)
        .await
        .expect("no answer in time")
        .expect("sink dropped the confirm")
}

#[tokio::test]
async fn every_record_is_confirmed_and_arrives_in_order_per_client() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let fx = Fixture::new(&conn, "devices.*.telemetry").await;
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let (route, backend_counters) = (metrics.route("r"), metrics.backend("rabbit"));
    // Declared by the sink too (same settings): declaring must be idempotent.
    let sink = amqp::start(
        &backend(&fx.exchange, true),
        backend_counters.clone(),
        64,
        &TaskTracker::new(),
    )
    .await
    .expect("start");

    let mut answers = Vec::new();
    for i in 0..200 {
        let client = format!("dev-{}", i % 10);
        let key = format!("devices.{client}.telemetry");
        let (env, rx) = envelope(record(&route, &client, "", &key, format!("{client}:{i}")));
        sink.handle.tx.send(env).await.expect("sink alive");
        answers.push(rx);
    }
    for rx in answers {
        assert_eq!(answer(rx).await, Ok(()));
    }
    assert_eq!(route.delivered.get(), 200);
    assert_eq!(backend_counters.up.get(), 1);

    let got = fx.take(200, PATIENCE).await;
    assert_eq!(got.len(), 200, "messages in the queue");
    let mut last: HashMap<String, i64> = HashMap::new();
    for d in &got {
        let payload = String::from_utf8(d.data.clone()).expect("utf-8 payload");
        let (client, seq) = payload.split_once(':').expect("client:seq");
        let seq: i64 = seq.parse().expect("sequence number");
        assert_eq!(
            d.routing_key.as_str(),
            format!("devices.{client}.telemetry")
        );
        assert_eq!(header(d, "mqtt_client_id").as_deref(), Some(client));
        assert_eq!(
            header(d, "mqtt_topic"),
            Some(format!("devices/{client}/telemetry"))
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2));
        assert_eq!(
            d.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
        let prev = last.insert(client.to_string(), seq).unwrap_or(-1);
        assert!(seq > prev, "{client}: {seq} arrived after {prev}");
    }
    assert_eq!(last.len(), 10);

    // Dropping every handle ends the task once all is settled.
    drop(sink.handle);
    tokio::time::timeout(PATIENCE, sink.task)
        .await
        .expect("task ends")
        .expect("no panic");
    assert_eq!(backend_counters.up.get(), 0);
    fx.cleanup().await;
}

#[tokio::test]
async fn unroutable_mandatory_record_is_rejected_and_the_next_one_goes_through() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let fx = Fixture::new(&conn, "bound").await;
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let route = metrics.route("r");
    let sink = amqp::start(
        &backend(&fx.exchange, false),
        metrics.backend("rabbit"),
        16,
        &TaskTracker::new(),
    )
    .await
    .expect("start");

    let (env, lost) = envelope(record(&route, "dev-1", "", "nobody.listens", "lost".into()));
    sink.handle.tx.send(env).await.expect("sink alive");
    let (env, kept) = envelope(record(&route, "dev-1", "", "bound", "kept".into()));
    sink.handle.tx.send(env).await.expect("sink alive");

    match answer(lost).await {
        Err(SinkError::Rejected(why)) => assert!(why.contains("unroutable"), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(answer(kept).await, Ok(()));
    assert_eq!((route.rejected.get(), route.delivered.get()), (1, 1));
    let got = fx.take(2, Duration::from_secs(1)).await;
    assert_eq!(
        got.iter().map(|d| d.data.as_slice()).collect::<Vec<_>>(),
        vec![b"kept".as_slice()]
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn missing_exchange_is_rejected_without_disturbing_other_traffic() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let fx = Fixture::new(&conn, "#").await;
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let route = metrics.route("r");
    let sink = amqp::start(
        &backend(&fx.exchange, false),
        metrics.backend("rabbit"),
        64,
        &TaskTracker::new(),
    )
    .await
    .expect("start");

    // Good records on both sides of the bad one, all handed over at once.
    let missing = format!("does-not-exist-{}", suffix());
    let mut answers = Vec::new();
    for i in 0..21 {
        let target = if i == 10 { missing.as_str() } else { "" };
        let (env, rx) = envelope(record(
            &route,
            &format!("dev-{}", i % 3),
            target,
            "k",
            format!("{i}"),
        ));
        sink.handle.tx.send(env).await.expect("sink alive");
        answers.push(rx);
    }
    for (i, rx) in answers.into_iter().enumerate() {
        match (i, answer(rx).await) {
            (10, Err(SinkError::Rejected(why))) => {
                assert!(why.contains("NOT_FOUND") || why.contains("404"), "{why}")
            }
            (10, other) => panic!("expected a rejection for the missing exchange, got {other:?}"),
            (_, res) => assert_eq!(res, Ok(()), "record {i}"),
        }
    }
    // And later records still work.
    let (env, rx) = envelope(record(&route, "dev-1", "", "k", "after".into()));
    sink.handle.tx.send(env).await.expect("sink alive");
    assert_eq!(answer(rx).await, Ok(()));
    assert_eq!((route.rejected.get(), route.delivered.get()), (1, 21));
    let got = fx.take(21, PATIENCE).await;
    assert_eq!(got.len(), 21, "20 good records and the one after");
    assert!(
        fx.take(1, Duration::from_millis(300)).await.is_empty(),
        "no duplicates"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn exchange_deleted_while_in_use_rejects_only_its_records() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    let fx = Fixture::new(&conn, "#").await;
    let doomed = Fixture::new(&conn, "#").await;
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let route = metrics.route("r");
    let sink = amqp::start(
        &backend(&fx.exchange, false),
        metrics.backend("rabbit"),
        64,
        &TaskTracker::new(),
    )
    .await
    .expect("start");
    let tx = &sink.handle.tx;
    let rec = |target: &str, payload: &str| record(&route, "dev-1", target, "k", payload.into());
    // The sink learns that `doomed` exists...
    assert_eq!(
        answer(send(tx, rec(&doomed.exchange, "first")).await).await,
        Ok(())
    );
    // ...then it disappears: the next publish to it kills the channel, with
    // good records in flight around it.
    let doomed_name = doomed.exchange.clone();
    doomed.cleanup().await;
    let mut answers = Vec::new();
    for i in 0..20 {
        let target = if i == 7 { doomed_name.as_str() } else { "" };
        answers.push(send(tx, rec(target, &i.to_string())).await);
    }
    for (i, rx) in answers.into_iter().enumerate() {
        match (i, answer(rx).await) {
            (7, res) => assert!(
                matches!(res, Err(SinkError::Rejected(_))),
                "record 7: {res:?}"
            ),
            (_, res) => assert_eq!(res, Ok(()), "record {i}"),
        }
    }
    // At least once: every good record is there, perhaps some twice.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in fx.take(100, Duration::from_secs(2)).await {
        *seen
            .entry(String::from_utf8_lossy(&d.data).into_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 19, "{seen:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn unreachable_broker_does_not_fail_start_and_never_confirms() {
    // Needs no broker: nothing listens on port 1.
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let (route, counters) = (metrics.route("r"), metrics.backend("down"));
    let mut cfg = backend("x", true);
    cfg.uri = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let sink = amqp::start(&cfg, counters.clone(), 4, &TaskTracker::new())
        .await
        .expect("start succeeds while the broker is down");
    let (env, mut rx) = envelope(record(&route, "dev-1", "", "k", "p".into()));
    sink.handle.tx.send(env).await.expect("sink alive");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing may be confirmed while the broker is down"
    );
    assert_eq!(counters.up.get(), 0);
    assert!(counters.retries.get() >= 1, "reconnects are counted");

    // Shutting down while the broker is down answers Closed and ends the task.
    drop(sink.handle);
    tokio::time::timeout(PATIENCE, sink.task)
        .await
        .expect("task ends")
        .expect("no panic");
    assert_eq!(rx.await.expect("answered"), Err(SinkError::Closed));
    assert_eq!(route.failed.get(), 1);
}

#[tokio::test]
async fn nacked_records_are_published_again_in_order_once_there_is_room() {
    let Some((conn, _turn)) = broker().await else {
        return;
    };
    // A full queue with overflow=reject-publish makes RabbitMQ nack.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(5));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let fx = Fixture::with_queue_args(&conn, "#", args).await;
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let (route, counters) = (metrics.route("r"), metrics.backend("rabbit"));
    let sink = amqp::start(
        &backend(&fx.exchange, false),
        counters.clone(),
        64,
        &TaskTracker::new(),
    )
    .await
    .expect("start");

    let mut answers = Vec::new();
    for i in 0..10 {
        let (env, rx) = envelope(record(&route, "dev-1", "", "k", format!("{i}")));
        sink.handle.tx.send(env).await.expect("sink alive");
        answers.push(rx);
    }
    let mut later = answers.split_off(5);
    for rx in answers {
        assert_eq!(answer(rx).await, Ok(()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for rx in &mut later {
        let early = rx.try_recv();
        assert!(early.is_err(), "a nacked record was answered: {early:?}");
    }
    assert!(counters.retries.get() >= 1);

    // Make room: the held-back records follow, in their order.
    let first: Vec<Vec<u8>> = fx
        .take(5, PATIENCE)
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    for rx in later {
        assert_eq!(answer(rx).await, Ok(()));
    }
    let rest: Vec<Vec<u8>> = fx
        .take(5, PATIENCE)
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    let all: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert_eq!(all, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(route.delivered.get(), 10);
    fx.cleanup().await;
}
