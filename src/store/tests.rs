//! Store behaviour tests on temporary directories. The kill -9 test is in
//! `tests/crash.rs`, start-up corner cases in `tests/recovery.rs`.

use bytes::Bytes;
use tempfile::TempDir;

use super::*;
use crate::mqtt::message::{Message, MessageProps};

mod crash;
mod recovery;

pub(super) fn opts(path: impl Into<std::path::PathBuf>) -> StoreOptions {
    StoreOptions {
        path: path.into(),
        max_batch_ops: 256,
        queue_capacity: 64,
        cache_bytes: 1 << 20,
        observer: None,
        commit_retry_max: std::time::Duration::ZERO,
    }
}

pub(super) fn message(topic: &str, payload: &'static [u8]) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: Bytes::from_static(payload),
        qos: 1,
        retain: false,
        props: MessageProps::default(),
        expires_at_ms: None,
        receipt: None,
    }
}

pub(super) fn record(expiry_secs: u32) -> SessionRecord {
    SessionRecord {
        protocol: 5,
        expiry_secs,
        disconnected_at_ms: Some(1_700_000_000_000),
        subscriptions: vec![SubscriptionRecord {
            filter: "a/#".into(),
            qos: 2,
            no_local: false,
            retain_as_published: true,
            retain_handling: 0,
            subscription_id: Some(7),
        }],
        identity: Some("dev1".into()),
    }
}

pub(super) fn entry(topic: &str, payload: &'static [u8]) -> QueuedEntry {
    QueuedEntry {
        message: message(topic, payload),
        subscription_ids: vec![7],
        state: EntryState::Queued,
        origin: None,
    }
}

pub(super) fn put(client: &str) -> Op {
    Op::PutSession {
        client_id: client.into(),
        record: record(3600),
    }
}

pub(super) fn enqueue(client: &str, seq: u64, e: QueuedEntry) -> Op {
    Op::Enqueue {
        client_id: client.into(),
        seq,
        entry: e,
    }
}

/// Submits and waits for durability.
pub(super) async fn commit(store: &Store, ops: Vec<Op>) {
    store
        .submit(ops)
        .await
        .expect("submit")
        .await
        .expect("commit");
}

pub(super) fn session<'a>(recovered: &'a Recovered, client: &str) -> Option<&'a RecoveredSession> {
    recovered.sessions.iter().find(|s| s.client_id == client)
}

fn seqs(session: &RecoveredSession) -> Vec<u64> {
    session.index.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn round_trip_survives_close_and_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store"); // does not exist yet: open creates it
    let (store, recovered) = Store::open(&opts(&path)).unwrap();
    assert!(recovered.sessions.is_empty() && recovered.retained.is_empty());

    let e2 = entry("a/2", b"two!");
    let ops = vec![
        put("c1"),
        enqueue("c1", 1, entry("a/1", b"one")),
        enqueue("c1", 2, e2.clone()),
        enqueue("c1", 3, entry("a/3", b"three")),
        Op::SetState {
            client_id: "c1".into(),
            seq: 2,
            state: EntryState::Sent,
        },
        Op::SetState {
            client_id: "c1".into(),
            seq: 99,
            state: EntryState::Sent,
        }, // missing: ignored
        Op::RemoveEntry {
            client_id: "c1".into(),
            seq: 1,
        },
        Op::AddIncomingQos2 {
            client_id: "c1".into(),
            pkid: 10,
        },
        Op::AddIncomingQos2 {
            client_id: "c1".into(),
            pkid: 11,
        },
        Op::RemoveIncomingQos2 {
            client_id: "c1".into(),
            pkid: 10,
        },
        Op::PutRetained {
            message: message("r/1", b"kept"),
        },
        Op::PutRetained {
            message: message("r/2", b"gone"),
        },
        Op::DeleteRetained {
            topic: "r/2".into(),
        },
    ];
    commit(&store, ops).await;
    store.close().await.unwrap();
    drop(store);

    let (store, recovered) = Store::open(&opts(&path)).unwrap();
    let s = session(&recovered, "c1").expect("session c1");
    assert_eq!(s.record, record(3600));
    let expected_index = vec![
        IndexEntry {
            seq: 2,
            size: e2.message.size() as u32,
            state: EntryState::Sent,
        },
        IndexEntry {
            seq: 3,
            size: entry("a/3", b"three").message.size() as u32,
            state: EntryState::Queued,
        },
    ];
    assert_eq!(s.index, expected_index);
    assert_eq!(s.incoming_qos2, vec![11]);
    assert_eq!(recovered.retained, vec![message("r/1", b"kept")]);

    let all = store.load_queue("c1", u64::MAX).await.unwrap();
    let sent_e2 = QueuedEntry {
        state: EntryState::Sent,
        ..e2
    };
    assert_eq!(all, vec![(2, sent_e2.clone()), (3, entry("a/3", b"three"))]);
    assert_eq!(store.load_queue("c1", 3).await.unwrap(), vec![(2, sent_e2)]);
    assert!(store.load_queue("c1", 2).await.unwrap().is_empty());
    assert!(store
        .load_queue("nobody", u64::MAX)
        .await
        .unwrap()
        .is_empty());
    store.close().await.unwrap();
}

#[tokio::test]
async fn load_queue_sees_ops_submitted_before_it() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    // The commits are dropped unawaited: that must not cancel the ops.
    drop(
        store
            .submit(vec![put("c"), enqueue("c", 5, entry("t", b"x"))])
            .await
            .unwrap(),
    );
    drop(
        store
            .submit(vec![enqueue("c", 6, entry("t", b"y"))])
            .await
            .unwrap(),
    );
    let loaded = store.load_queue("c", u64::MAX).await.unwrap();
    assert_eq!(
        loaded.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![5, 6]
    );
    store.close().await.unwrap();
}

/// Loads among ops (served inside the batch's transaction when they share
/// one) see the ops before them and none after, however the writer groups
/// them; many loads in a row are all answered.
#[tokio::test]
async fn loads_among_ops_see_exactly_the_ops_before_them() {
    let dir = TempDir::new().unwrap();
    // Room for every request: each send completes when first polled, so
    // the FIFO order is the order below.
    let big = StoreOptions {
        queue_capacity: 1024,
        ..opts(dir.path())
    };
    let (store, _) = Store::open(&big).unwrap();
    let mut loads = Vec::new();
    for i in 0..50u64 {
        let client = format!("c{i}");
        drop(
            store
                .submit(vec![put(&client), enqueue(&client, 1, entry("t", b"x"))])
                .await
                .unwrap(),
        );
        let (s2, c2) = (store.clone(), client.clone());
        // Sent now (polled once), answered later.
        let mut load = Box::pin(async move { s2.load_queue(&c2, u64::MAX).await });
        assert!(futures_util::poll!(&mut load).is_pending());
        loads.push(load);
        // After the load: removes seq 1 and adds seq 2; the load sees neither.
        drop(
            store
                .submit(vec![
                    Op::RemoveEntry {
                        client_id: client.clone(),
                        seq: 1,
                    },
                    enqueue(&client, 2, entry("t", b"y")),
                ])
                .await
                .unwrap(),
        );
    }
    for (i, load) in loads.into_iter().enumerate() {
        let seqs: Vec<u64> = load.await.unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1], "load {i} saw ops submitted after it");
    }
    store.close().await.unwrap();
}

/// Cluster mode: where routing got to is recovered, per partition, the
/// last write winning.
#[tokio::test]
async fn routed_positions_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert!(recovered.cluster_positions.is_empty());
    let routed = |partition, offset| Op::Routed { partition, offset };
    commit(&store, vec![routed(0, 5), routed(2, 9)]).await;
    commit(&store, vec![routed(0, 7)]).await;
    store.close().await.unwrap();
    drop(store);
    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    let mut got = recovered.cluster_positions;
    got.sort_unstable();
    assert_eq!(got, vec![(0, 7), (2, 9)]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn delete_session_removes_only_that_client() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    let mut ops = Vec::new();
    for client in ["a", "ab", "b"] {
        ops.push(put(client));
        ops.push(enqueue(client, 0, entry("t", b"0")));
        ops.push(enqueue(client, u64::MAX, entry("t", b"max")));
        ops.push(Op::AddIncomingQos2 {
            client_id: client.into(),
            pkid: u16::MAX,
        });
    }
    commit(&store, ops).await;
    commit(
        &store,
        vec![Op::DeleteSession {
            client_id: "a".into(),
        }],
    )
    .await;
    assert!(store.load_queue("a", u64::MAX).await.unwrap().is_empty());
    store.close().await.unwrap();

    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert!(session(&recovered, "a").is_none());
    for client in ["ab", "b"] {
        let s = session(&recovered, client).expect("other client kept");
        assert_eq!(seqs(s), vec![0, u64::MAX]);
        assert_eq!(s.incoming_qos2, vec![u16::MAX]);
        assert_eq!(store.load_queue(client, u64::MAX).await.unwrap().len(), 1); // u64::MAX is excluded
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_submits() {
    const TASKS: u64 = 20;
    const PER_TASK: u64 = 100;
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    commit(&store, vec![put("c")]).await;
    let before = store.stats();

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut commits = Vec::new();
            for i in 0..PER_TASK {
                let op = enqueue("c", t * PER_TASK + i, entry("t", b"payload"));
                commits.push(store.submit(vec![op]).await.unwrap());
            }
            for c in commits {
                c.await.unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }

    let stats = store.stats();
    let commits = stats.commits - before.commits;
    assert_eq!(stats.ops - before.ops, TASKS * PER_TASK);
    assert!(
        commits < TASKS * PER_TASK,
        "{commits} commits for {} submits",
        TASKS * PER_TASK
    );
    assert!(stats.last_batch_ops <= 256);
    assert_eq!(
        store.load_queue("c", u64::MAX).await.unwrap().len() as u64,
        TASKS * PER_TASK
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn calls_after_close_return_closed() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    let other = store.clone();
    store.close().await.unwrap();
    store.close().await.unwrap(); // idempotent
    assert!(matches!(
        other.submit(vec![put("c")]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(other.flush().await, Err(StoreError::Closed)));
    assert!(matches!(
        other.load_queue("c", 1).await,
        Err(StoreError::Closed)
    ));
}

/// Errors keep their cause: the file system's error is the source, not a
/// string in the message.
#[test]
fn open_errors_keep_their_source() {
    let dir = TempDir::new().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let Err(e) = Store::open(&opts(file.join("store"))) else {
        panic!("a store under a regular file cannot be opened");
    };
    assert!(e.is_io(), "{e:?}");
    let source = std::error::Error::source(&e).expect("the I/O error is the source");
    let io = source
        .downcast_ref::<std::sync::Arc<std::io::Error>>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{io}");
}

#[test]
fn undecodable_records_keep_the_decoder_error() {
    let e = decode_record::<SessionRecord>(&[tables::RECORD_VERSION, 0xff, 0xff])
        .expect_err("garbage does not decode");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    let source = std::error::Error::source(&e).expect("postcard's error is the source");
    assert!(
        source.downcast_ref::<postcard::Error>().is_some(),
        "{source}"
    );
}
