//! Start-up reads: corrupt values are skipped, orphaned rows are deleted.

use tempfile::TempDir;

use super::{commit, enqueue, entry, message, opts, put, session};
use crate::store::{tables, Op, Store, DB_FILE};

#[tokio::test]
async fn corrupt_values_are_skipped_at_open() {
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

    // Overwrite values with bytes postcard cannot decode, behind the store's back.
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let garbage: &[u8] = &[0xff, 0xff, 0xff];
        txn.open_table(tables::SESSIONS)
            .unwrap()
            .insert("bad", garbage)
            .unwrap();
        txn.open_table(tables::RETAINED)
            .unwrap()
            .insert("r/bad", garbage)
            .unwrap();
        txn.commit().unwrap();
    }

    let (store, recovered) = Store::open(&opts(dir.path())).unwrap();
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(recovered.sessions[0].client_id, "good");
    assert_eq!(recovered.retained, vec![message("r/ok", b"1")]);
    // The corrupt session's queue is not treated as an orphan: kept on disk.
    assert_eq!(store.load_queue("bad", u64::MAX).await.unwrap().len(), 1);
    store.close().await.unwrap();
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
