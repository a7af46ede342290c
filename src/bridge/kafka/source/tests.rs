use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
use rdkafka::Offset;

use super::ledger::Ledger;
use super::*;

fn backend(properties: &[&str]) -> KafkaBackend {
    KafkaBackend {
        name: "k".into(),
        bootstrap_servers: "127.0.0.1:1".into(),
        compression: "lz4".into(),
        create_topics: false,
        topic_partitions: 1,
        topic_replication: 1,
        properties: properties.iter().map(|p| p.to_string()).collect(),
        ..KafkaBackend::default()
    }
}

fn route(group: Option<&str>) -> DownlinkRoute {
    DownlinkRoute {
        name: "cmds".into(),
        backend: "k".into(),
        topics: vec!["commands".into()],
        group_id: group.map(str::to_string),
        queue: String::new(),
        declare_queue: false,
        bind_exchange: String::new(),
        binding_key: String::new(),
        prefetch: 100,
        topic: "devices/{key}/commands".into(),
        qos: 1,
        retain: false,
        client_id: None,
        create_sessions: false,
        expiry_secs: 0,
        receipt_target: None,
        dead_letter_target: None,
    }
}

#[test]
fn auto_commit_and_group_cannot_be_overridden() {
    let c = consumer_config(
        &backend(&[
            "enable.auto.commit=true",
            "auto.commit.enable = true",
            "group.id=other",
            "group.instance.id=shared",
            "fetch.min.bytes=2",
        ]),
        &route(None),
        "node-a",
    )
    .expect("valid properties");
    assert_eq!(c.get("enable.auto.commit"), Some("false"));
    assert_eq!(c.get("auto.commit.enable"), None);
    assert_eq!(c.get("group.id"), Some("mqbridge-cmds"));
    assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    assert_eq!(c.get("group.protocol"), Some("classic"));
    assert_eq!(c.get("fetch.min.bytes"), Some("2"));
    // Static membership per node and route, whatever the properties say.
    assert_eq!(c.get("group.instance.id"), Some("node-a.cmds"));
    let c = consumer_config(&backend(&[]), &route(Some("g1")), "node-a").expect("valid");
    assert_eq!(c.get("group.id"), Some("g1"));
}

#[test]
fn message_becomes_command() {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "mqtt_message_expiry",
            value: Some("5"),
        })
        .insert(Header {
            key: "bad",
            value: Some(&[0xff, b'x'][..]),
        })
        .insert(Header::<&[u8]> {
            key: "empty",
            value: None,
        });
    let m = OwnedMessage::new(
        Some(b"payload".to_vec()),
        Some(b"dev-1".to_vec()),
        "commands".into(),
        Timestamp::CreateTime(1_700_000_000_000),
        2,
        41,
        Some(headers),
    );
    let c = command(&m);
    assert_eq!(c.key.as_deref(), Some("dev-1"));
    assert_eq!(c.routing_key, None);
    assert_eq!(&c.payload[..], b"payload");
    assert_eq!(c.position, "commands/2/41");
    assert_eq!(c.timestamp_ms, Some(1_700_000_000_000));
    assert_eq!(c.header("mqtt_message_expiry"), Some("5"));
    assert_eq!(c.header("bad"), Some("\u{fffd}x"));
    assert_eq!(c.header("empty"), Some(""));

    let m = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
    let c = command(&m);
    assert_eq!((c.key, c.timestamp_ms, c.payload.len()), (None, None, 0));
    assert!(c.headers.is_empty());
}

#[test]
fn ledger_commits_only_settled_offsets_of_owned_partitions() {
    let mut l = Ledger::default();
    l.settled("t", 0, 5); // not assigned yet: ignored
    assert!(l.take_changes().is_none());
    l.assign([("t".to_string(), 0), ("t".to_string(), 1)]);
    l.settled("t", 0, 5);
    l.settled("t", 0, 6);
    l.settled("t", 1, 0);
    assert_eq!(l.since_commit(), 3);
    let tpl = l.take_changes().expect("changes");
    assert_eq!(
        tpl.find_partition("t", 0).map(|e| e.offset()),
        Some(Offset::Offset(7))
    );
    assert_eq!(
        tpl.find_partition("t", 1).map(|e| e.offset()),
        Some(Offset::Offset(1))
    );
    assert!(l.take_changes().is_none(), "nothing new");
    l.commit_failed();
    assert!(l.take_changes().is_some(), "a failed commit is retried");
    // Redelivered older offsets never move the position back.
    l.settled("t", 0, 3);
    assert_eq!(l.next_offset("t", 0), Some(7));
    l.revoke([("t".to_string(), 0)]);
    assert_eq!(l.next_offset("t", 0), None);
    l.settled("t", 0, 8);
    assert_eq!(l.next_offset("t", 0), None, "no longer ours");
}

/// With no broker, `start` returns at once, the task keeps waiting for one
/// (creating topics with backoff), and stop ends it promptly.
#[tokio::test]
async fn starts_and_stops_without_a_broker() {
    for create_topics in [true, false] {
        start_and_stop_without_broker(create_topics).await;
    }
}

async fn start_and_stop_without_broker(create_topics: bool) {
    let mut b = backend(&[]);
    b.create_topics = create_topics;
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let stop = tokio_util::sync::CancellationToken::new();
    let begun = std::time::Instant::now();
    let tasks = tokio_util::task::TaskTracker::new();
    let task = start(&b, &route(None), source_start(tx, stop.clone(), &tasks))
        .await
        .expect("starts");
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "start took {:?}",
        begun.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops within 5 s")
        .expect("task ok");
}

#[tokio::test]
async fn a_property_librdkafka_refuses_fails_the_start() {
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let err = start(
        &backend(&["no.such.property=1"]),
        &route(None),
        source_start(tx, stop, &tasks),
    )
    .await;
    assert!(err.is_err());
}

#[test]
fn positions_parse_back() {
    use super::client::parse_position;
    assert_eq!(parse_position("cmds/3/42"), Some(("cmds", 3, 42)));
    assert_eq!(parse_position("a.b-c_d/0/0"), Some(("a.b-c_d", 0, 0)));
    assert_eq!(parse_position("cmds/x/42"), None);
    assert_eq!(parse_position("cmds/3"), None);
    assert_eq!(parse_position(""), None);
}

fn source_start(
    tx: crate::bridge::downlink::CommandTx,
    cancel: tokio_util::sync::CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> crate::bridge::registry::SourceStart {
    crate::bridge::registry::SourceStart {
        node_id: "node-a".into(),
        tx,
        cancel,
        tasks: tasks.clone(),
        gauges: Default::default(),
    }
}
