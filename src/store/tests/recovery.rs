//! Start-up reads: corrupt values are quarantined, orphaned rows are deleted,
//! unversioned stores are migrated.

use tempfile::TempDir;

use super::{commit, enqueue, entry, message, opts, put, session};
use crate::store::{tables, Op, Store, DB_FILE};

/// Raw rows of the quarantine table: (table, key, seq).
fn quarantined_keys(dir: &std::path::Path) -> Vec<(String, String, u64)> {
    use redb::ReadableTable;
    let db = redb::Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(tables::QUARANTINE).unwrap();
    table
        .iter()
        .unwrap()
        .map(|row| {
            let (k, _) = row.unwrap();
            let (t, key, seq) = k.value();
            (t.to_owned(), key.to_owned(), seq)
        })
        .collect()
}

/// Overwrites values behind the store's back.
fn overwrite(dir: &std::path::Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

const GARBAGE: &[u8] = &[tables::RECORD_VERSION, 0xff, 0xff, 0xff];

#[tokio::test]
async fn corrupt_values_are_quarantined_and_counted_at_open() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    let ops = vec![
        put("good"),
        put("bad"),
        enqueue("bad", 1, entry("t", b"x")),
        Op::PutRetained {
            message: message("r/ok", b"1"),
        },
    ];
    commit(&store, ops).await;
    store.close().await.unwrap();
    drop(store);

    overwrite(dir.path(), |txn| {
        let mut sessions = txn.open_table(tables::SESSIONS).unwrap();
        sessions.insert("bad", GARBAGE).unwrap();
        let mut retained = txn.open_table(tables::RETAINED).unwrap();
        retained.insert("r/bad", GARBAGE).unwrap();
    });

    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(recovered.sessions[0].client_id, "good");
    assert_eq!(recovered.retained, vec![message("r/ok", b"1")]);
    // Session record, its queued body and the retained message: moved, counted.
    assert_eq!(recovered.quarantined, 3);
    assert_eq!(store.stats().quarantined, 3);
    // Its rows left the live tables: a new "bad" session starts empty.
    assert!(store.load_queue("bad", u64::MAX).await.unwrap().is_empty());
    store.close().await.unwrap();
    drop(store);
    let mut keys = quarantined_keys(dir.path());
    keys.sort();
    let expected = [
        ("queue", "bad", 1),
        ("retained", "r/bad", 0),
        ("sessions", "bad", 0),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .iter()
        .map(|(t, k, s)| (t.to_string(), k.to_string(), *s))
        .collect();
    assert_eq!(keys, expected);
    // Kept, not re-counted: a second open finds nothing new.
    let (_store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert_eq!(recovered.quarantined, 0);
}

#[tokio::test]
async fn corrupt_queued_body_is_quarantined_when_loaded() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    let ops = vec![
        put("c"),
        enqueue("c", 1, entry("t", b"1")),
        enqueue("c", 2, entry("t", b"2")),
        enqueue("c", 3, entry("t", b"3")),
    ];
    commit(&store, ops).await;
    store.close().await.unwrap();
    drop(store);
    overwrite(dir.path(), |txn| {
        let mut queue = txn.open_table(tables::QUEUE).unwrap();
        queue.insert(("c", 2), GARBAGE).unwrap();
    });

    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert_eq!(recovered.quarantined, 0, "bodies are not read at start-up");
    let seqs: Vec<u64> = store
        .load_queue("c", u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(seqs, vec![1, 3]);
    assert_eq!(store.stats().quarantined, 1);
    store.close().await.unwrap();
    drop(store);
    assert_eq!(
        quarantined_keys(dir.path()),
        vec![("queue".to_string(), "c".to_string(), 2)]
    );
    // The index row went with it: start-up no longer lists seq 2.
    let (_store, recovered) = Store::open(&opts(dir.path())).unwrap();
    let index: Vec<u64> = session(&recovered, "c")
        .unwrap()
        .index
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(index, vec![1, 3]);
}

#[tokio::test]
async fn unversioned_store_is_migrated_and_records_get_a_version() {
    use serde::Serialize;
    fn bare<T: Serialize>(v: &T) -> Vec<u8> {
        postcard::to_allocvec(v).unwrap()
    }
    let dir = TempDir::new().unwrap();
    // A format-0 store: no meta table, bare postcard records, one undecodable.
    {
        std::fs::create_dir_all(dir.path()).unwrap();
        overwrite(dir.path(), |txn| {
            let mut sessions = txn.open_table(tables::SESSIONS).unwrap();
            sessions
                .insert("old", bare(&v1(super::record(60))).as_slice())
                .unwrap();
            let mut queue = txn.open_table(tables::QUEUE).unwrap();
            queue
                .insert(("old", 1), bare(&entry("t", b"a")).as_slice())
                .unwrap();
            queue.insert(("old", 2), &[0xffu8, 0xff][..]).unwrap();
            let mut index = txn.open_table(tables::QUEUE_INDEX).unwrap();
            index.insert(("old", 1), (10, 0)).unwrap();
            index.insert(("old", 2), (10, 0)).unwrap();
            let mut retained = txn.open_table(tables::RETAINED).unwrap();
            retained
                .insert("r", bare(&message("r", b"k")).as_slice())
                .unwrap();
        });
    }
    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    let s = session(&recovered, "old").expect("legacy session read");
    assert_eq!(s.record, unowned(super::record(60)));
    assert_eq!(s.index.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![1]);
    assert_eq!(recovered.retained, vec![message("r", b"k")]);
    assert_eq!(recovered.quarantined, 1);
    let loaded = store.load_queue("old", u64::MAX).await.unwrap();
    assert_eq!(loaded, vec![(1, entry("t", b"a"))]);
    store.close().await.unwrap();
    drop(store);
    // Stamped with the current format; records now start with the version byte.
    let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(tables::META).unwrap();
    let version = meta.get(tables::FORMAT_KEY).unwrap().unwrap().value();
    assert_eq!(version, tables::FORMAT_VERSION);
    let sessions = txn.open_table(tables::SESSIONS).unwrap();
    let raw = sessions.get("old").unwrap().unwrap().value().to_vec();
    assert_eq!(raw[0], 2, "session records are version 2");
}

/// The record as formats 0 and 1 stored it (no identity).
fn v1(r: crate::store::SessionRecord) -> crate::store::migrate::SessionRecordV1 {
    crate::store::migrate::SessionRecordV1 {
        protocol: r.protocol,
        expiry_secs: r.expiry_secs,
        disconnected_at_ms: r.disconnected_at_ms,
        subscriptions: r.subscriptions,
    }
}

fn unowned(r: crate::store::SessionRecord) -> crate::store::SessionRecord {
    crate::store::SessionRecord {
        identity: None,
        ..r
    }
}

/// Format 1 (record version 1, no owning identity) is migrated to format
/// 2: its sessions read as owned by no identity, its queue is untouched,
/// and new records carry the identity.
#[tokio::test]
async fn format_1_sessions_are_migrated_without_an_identity() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    commit(
        &store,
        vec![put("old"), enqueue("old", 1, entry("t", b"a"))],
    )
    .await;
    store.close().await.unwrap();
    drop(store);
    overwrite(dir.path(), |txn| {
        let mut meta = txn.open_table(tables::META).unwrap();
        meta.insert(tables::FORMAT_KEY, 1).unwrap();
        let mut body = vec![tables::RECORD_VERSION];
        body.extend(postcard::to_allocvec(&v1(super::record(60))).unwrap());
        let mut sessions = txn.open_table(tables::SESSIONS).unwrap();
        sessions.insert("old", body.as_slice()).unwrap();
    });
    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    let s = session(&recovered, "old").expect("format-1 session read");
    assert_eq!(s.record, unowned(super::record(60)));
    assert_eq!(recovered.quarantined, 0);
    assert_eq!(store.load_queue("old", u64::MAX).await.unwrap().len(), 1);
    commit(&store, vec![put("new")]).await;
    store.close().await.unwrap();
    drop(store);
    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert_eq!(
        session(&recovered, "new").unwrap().record,
        super::record(3600)
    );
    store.close().await.unwrap();
    drop(store);
    let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(tables::META).unwrap();
    assert_eq!(
        meta.get(tables::FORMAT_KEY).unwrap().unwrap().value(),
        tables::FORMAT_VERSION
    );
}

/// Format 2 queue entries (record version 1, no cluster position) are read
/// as they are, with no position; the store is stamped with format 3.
#[tokio::test]
async fn format_2_queue_entries_read_without_a_cluster_position() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    commit(&store, vec![put("old")]).await;
    store.close().await.unwrap();
    drop(store);
    let old = crate::store::migrate::QueuedEntryV1 {
        message: entry("t", b"a").message,
        subscription_ids: vec![7],
        state: crate::store::EntryState::Sent,
    };
    overwrite(dir.path(), |txn| {
        let mut meta = txn.open_table(tables::META).unwrap();
        meta.insert(tables::FORMAT_KEY, 2).unwrap();
        let mut body = vec![tables::RECORD_VERSION];
        body.extend(postcard::to_allocvec(&old).unwrap());
        let mut queue = txn.open_table(tables::QUEUE).unwrap();
        queue.insert(("old", 1), body.as_slice()).unwrap();
        let mut index = txn.open_table(tables::QUEUE_INDEX).unwrap();
        index.insert(("old", 1), (10, 1)).unwrap();
    });
    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert_eq!(recovered.quarantined, 0);
    let loaded = store.load_queue("old", u64::MAX).await.unwrap();
    let expected = crate::store::QueuedEntry::from(old);
    assert_eq!(expected.origin, None);
    assert_eq!(loaded, vec![(1, expected)]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn store_of_a_newer_format_is_refused() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    store.close().await.unwrap();
    drop(store);
    overwrite(dir.path(), |txn| {
        let mut meta = txn.open_table(tables::META).unwrap();
        meta.insert(tables::FORMAT_KEY, tables::FORMAT_VERSION + 1)
            .unwrap();
    });
    let err = Store::open(&opts(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn orphaned_queue_rows_are_deleted_at_open() {
    let dir = TempDir::new().unwrap();
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    let ops = vec![
        put("kept"),
        enqueue("kept", 1, entry("t", b"k")),
        enqueue("orphan", 1, entry("t", b"o")),
        Op::AddIncomingQos2 {
            client_id: "orphan".into(),
            pkid: 3,
        },
    ];
    commit(&store, ops).await;
    store.close().await.unwrap();
    drop(store);

    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert_eq!(recovered.sessions.len(), 1);
    assert!(store
        .load_queue("orphan", u64::MAX)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.load_queue("kept", u64::MAX).await.unwrap().len(), 1);
    store.close().await.unwrap();
    drop(store);

    // A later PutSession for the same id must not resurrect the old rows.
    let (store, _) = Store::open(&opts(dir.path())).unwrap();
    commit(&store, vec![put("orphan")]).await;
    store.close().await.unwrap();
    drop(store);
    let (_store, recovered) = Store::open(&opts(dir.path())).unwrap();
    let s = session(&recovered, "orphan").expect("new session");
    assert!(s.index.is_empty() && s.incoming_qos2.is_empty());
}
