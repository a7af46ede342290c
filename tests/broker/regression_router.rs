//! Regression tests for bugs found in review (each name says the bug it guards against).
//! Review: router-level tests that drive `Router` directly through its
//! channel. Messages sent before the router starts are handled as one batch,
//! which makes interleavings that need load (or a slow router) deterministic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqbridge::config::Config;
use mqbridge::metrics::Metrics;
use mqbridge::mqtt::message::{Message, MessageProps};
use mqbridge::mqtt::router::{
    CommandResult, ConnectOutcome, ConnectRequest, Kick, Outbound, PublishOutcome, Router,
    RouterMsg, SubRequest, ROUTER_CHANNEL,
};
use mqbridge::mqtt::topic::SubOpts;
use mqbridge::store::{Store, StoreHealth, StoreOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

struct H {
    tx: mpsc::Sender<RouterMsg>,
    rx: Option<mpsc::Receiver<RouterMsg>>,
    router: Option<Router>,
    metrics: Arc<Metrics>,
    /// The store's health, to put it in the disk-low state by hand.
    health: Arc<StoreHealth>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl H {
    fn new(f: impl FnOnce(&mut Config)) -> H {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.store.path = dir.path().to_path_buf();
        cfg.session.expiry_check_interval_secs = 1;
        f(&mut cfg);
        let cfg = Arc::new(cfg.validate().expect("test config is valid"));
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let opts = StoreOptions {
            path: cfg.store.path.clone(),
            max_batch_ops: cfg.store.max_batch_ops,
            queue_capacity: cfg.store.queue_capacity,
            cache_bytes: 1 << 20,
            observer: None,
            commit_retry_max: std::time::Duration::ZERO,
        };
        let (store, recovered) = Store::open(&opts).unwrap();
        let health = store.health().clone();
        let (tx, rx) = mpsc::channel(ROUTER_CHANNEL);
        let router = Router::new(
            cfg,
            metrics.clone(),
            store,
            recovered,
            tx.downgrade(),
            mqbridge::tasks::Tasks::new().0,
        );
        H {
            tx,
            rx: Some(rx),
            router: Some(router),
            metrics,
            health,
            stop: None,
            join: None,
            _dir: dir,
        }
    }

    fn start(&mut self) {
        let (stop, stopped) = oneshot::channel::<()>();
        let router = self.router.take().unwrap();
        let rx = self.rx.take().unwrap();
        self.join = Some(tokio::spawn(router.run(rx, async move {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
    }

    async fn send(&self, m: RouterMsg) {
        self.tx.send(m).await.unwrap();
    }

    async fn connect(
        &self,
        conn_id: u64,
        client: &str,
        clean: bool,
        expiry: u32,
        window: usize,
    ) -> (Client, oneshot::Receiver<ConnectOutcome>) {
        let (tx, rx) = mpsc::channel(window + 3);
        let (kick_tx, kick) = oneshot::channel();
        let req = ConnectRequest {
            conn_id,
            client_id: client.into(),
            clean_start: clean,
            expiry_secs: expiry,
            protocol: 5,
            will: None,
            window,
            tx,
            kick: kick_tx,
            username: None,
            identity: None,
            peer_ip: None,
            listener: None,
        };
        let (reply, r) = oneshot::channel();
        self.send(RouterMsg::Connect { req, reply }).await;
        (
            Client {
                conn_id,
                id: client.into(),
                rx,
                _kick: kick,
            },
            r,
        )
    }

    async fn subscribe(
        &self,
        client: &str,
        filter: &str,
        qos: u8,
    ) -> oneshot::Receiver<Vec<Result<u8, u8>>> {
        let (reply, r) = oneshot::channel();
        self.send(RouterMsg::Subscribe {
            // Sent on behalf of the client's latest connection (older ones are
            // ignored by the router as taken over).
            conn_id: u64::MAX,
            client_id: client.into(),
            filters: vec![SubRequest {
                filter: filter.into(),
                opts: SubOpts {
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                    subscription_id: None,
                },
            }],
            reply,
        })
        .await;
        r
    }

    async fn publish(
        &self,
        from: &str,
        topic: &str,
        payload: &str,
        qos: u8,
    ) -> Option<oneshot::Receiver<PublishOutcome>> {
        let (reply, r) = oneshot::channel();
        let want = qos > 0;
        self.send(RouterMsg::Publish {
            conn_id: 0,
            client_id: from.into(),
            msg: msg(topic, payload, qos),
            qos2_pkid: None,
            reply: want.then_some(reply),
        })
        .await;
        want.then_some(r)
    }

    async fn disconnect(&self, conn_id: u64, client: &str, new_expiry: Option<u32>) {
        self.send(RouterMsg::Disconnect {
            conn_id,
            client_id: client.into(),
            publish_will: false,
            new_expiry,
        })
        .await;
    }

    async fn acked(&self, conn_id: u64, client: &str, seq: u64) {
        self.send(RouterMsg::Acked {
            conn_id,
            client_id: client.into(),
            seq,
        })
        .await;
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }
}

struct Client {
    conn_id: u64,
    id: String,
    rx: mpsc::Receiver<Outbound>,
    _kick: oneshot::Receiver<Kick>,
}

fn msg(topic: &str, payload: &str, qos: u8) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
        props: MessageProps::default(),
        expires_at_ms: None,
        receipt: None,
    }
}

/// (seq, payload, qos, dup) of a delivery, or PUBREL(seq).
fn describe(o: &Outbound) -> String {
    match o {
        Outbound::Publish {
            seq, msg, qos, dup, ..
        } => format!(
            "PUBLISH seq={seq} qos={qos} dup={dup} {}",
            String::from_utf8_lossy(&msg.payload)
        ),
        Outbound::PubRel { seq, .. } => format!("PUBREL seq={seq}"),
        Outbound::Qos0Channel(_) => "QOS0 CHANNEL".to_string(),
    }
}

async fn next(rx: &mut mpsc::Receiver<Outbound>, ms: u64) -> Option<Outbound> {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .ok()
        .flatten()
}

async fn recv0(rx0: &mut Option<mpsc::Receiver<Outbound>>) -> Option<Outbound> {
    match rx0 {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn accepted(r: oneshot::Receiver<ConnectOutcome>) {
    let o = tokio::time::timeout(Duration::from_secs(5), r)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(o, ConnectOutcome::Accepted { .. }), "{o:?}");
}

// ---------------------------------------------------------------------------
// 1. A message queued for an offline persistent session in the same router
//    batch as that session's reconnect is read back by a load task that can
//    run before the batch's ops are submitted; the entry is then treated as
//    "missing from store" and deleted although the publisher got its PUBACK.
// ---------------------------------------------------------------------------

async fn load_race_once(iter: usize) -> bool {
    let mut h = H::new(|_| {});
    // X: persistent session with a subscription, offline.
    let (_x1, _) = h.connect(1, "x", false, 100, 10).await;
    drop(h.subscribe("x", "t", 1).await);
    h.disconnect(1, "x", None).await;
    // Y: an online clean session, so that routing wakes another task.
    let (y, _) = h.connect(2, "y", true, 0, 10).await;
    drop(h.subscribe("y", "u", 0).await);
    // The publish for X and X's reconnect, then traffic for Y, in one batch.
    let puback = h.publish("p", "t", &format!("m{iter}"), 1).await.unwrap();
    let (mut x3, r3) = h.connect(3, "x", false, 100, 10).await;
    for i in 0..450 {
        h.publish("p", "u", &format!("u{i}"), 0).await;
    }
    // Y's receiver task is parked in recv(), so the first QoS 0 delivery
    // schedules it on the router's worker (pushing the load task out of the
    // LIFO slot, where an idle worker can steal it).
    let mut y = y;
    let drain = tokio::spawn(async move {
        // The router hands over the QoS 0 channel first.
        while let Some(o) = y.rx.recv().await {
            if let Outbound::Qos0Channel(mut rx0) = o {
                while rx0.recv().await.is_some() {}
            }
        }
    });
    h.start();
    let outcome = tokio::time::timeout(Duration::from_secs(5), puback)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        PublishOutcome::Delivered,
        "publisher was acknowledged"
    );
    accepted(r3).await;
    let got = next(&mut x3.rx, 2000).await;
    drain.abort();
    h.shutdown().await;
    got.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_acked_message_lost_when_reconnect_is_in_same_batch() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut lost = Vec::new();
    for i in 0..40 {
        if !load_race_once(i).await {
            lost.push(i);
        }
    }
    assert!(
        lost.is_empty(),
        "PUBACKed message never delivered to the persistent session in {} of 40 runs: {lost:?}",
        lost.len()
    );
}

// ---------------------------------------------------------------------------
// 2. stored_bytes drift: a stored persistent session resumed as
//    non-persistent (5.0 Clean Start=0, Session Expiry 0) queues in memory
//    only, but every removal subtracts from the global stored-bytes count.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_stored_bytes_drift_breaks_max_stored_bytes() {
    // "z/t" + 10-byte payload + 16 = 29 bytes per message.
    let size = 3 + 10 + 16;
    let mut h = H::new(|c| c.session.max_stored_bytes = 3 * size);
    h.start();
    // Z: offline persistent session that fills the store limit.
    let (_z, r) = h.connect(1, "z", false, 100, 10).await;
    accepted(r).await;
    let _ = h.subscribe("z", "z/t", 1).await.await;
    h.disconnect(1, "z", None).await;
    for i in 0..3 {
        let r = h
            .publish("p", "z/t", &format!("zzzzzzzzz{i}"), 1)
            .await
            .unwrap();
        assert_eq!(r.await.unwrap(), PublishOutcome::Delivered);
    }
    let r = h.publish("p", "z/t", "zzzzzzzzzX", 1).await.unwrap();
    assert_eq!(
        r.await.unwrap(),
        PublishOutcome::QuotaExceeded,
        "store full"
    );
    assert_eq!(h.metrics.queued_bytes.get(), 3 * size as i64);

    // X: a stored persistent session, resumed with Session Expiry 0.
    let (_x, r) = h.connect(2, "x", false, 100, 10).await;
    accepted(r).await;
    let _ = h.subscribe("x", "x/t", 1).await.await;
    h.disconnect(2, "x", None).await;
    let (mut x, r) = h.connect(3, "x", false, 0, 10).await;
    accepted(r).await;
    for i in 0..3 {
        let r = h
            .publish("p", "x/t", &format!("xxxxxxxxx{i}"), 1)
            .await
            .unwrap();
        assert_eq!(r.await.unwrap(), PublishOutcome::Delivered);
        let Some(Outbound::Publish { seq, .. }) = next(&mut x.rx, 2000).await else {
            panic!("no delivery")
        };
        h.acked(x.conn_id, &x.id, seq).await;
    }
    // Z still holds 3 stored messages; nothing of X was ever stored.
    let r = h.publish("p", "z/t", "zzzzzzzzzY", 1).await.unwrap();
    let outcome = r.await.unwrap();
    let gauge = h.metrics.queued_bytes.get();
    h.shutdown().await;
    assert_eq!(
        (gauge, outcome),
        (3 * size as i64, PublishOutcome::QuotaExceeded),
        "stored bytes must still count Z's 3 messages and refuse a 4th"
    );
}

// ---------------------------------------------------------------------------
// 3. Preset sessions with session.max_session_expiry_secs = 0 (accepted by
//    validation): the "persistent" preset session has expiry 0, is never
//    stored, expires at the next tick, and its +1 on `persistent` is never
//    undone. The command is reported Stored although nothing was written.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_preset_sessions_with_zero_max_expiry_are_persistent_and_counted() {
    let mut h = H::new(|c| {
        c.session.max_session_expiry_secs = 0;
        c.session.max_persistent_sessions = 2;
    });
    h.start();
    for i in 0..2 {
        let (reply, r) = oneshot::channel();
        h.send(RouterMsg::Command {
            msg: msg(&format!("devices/d{i}/commands"), "cmd", 1),
            client_id: Some(format!("d{i}").into()),
            create_session: true,
            reply,
        })
        .await;
        assert!(matches!(r.await.unwrap(), CommandResult::Stored { .. }));
    }
    // Even with max_session_expiry_secs = 0 (which config validation refuses
    // for create_sessions), preset sessions are really persistent (they fall
    // back to the 3.1.1 expiry): they stay, are counted, and the limit holds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gauge = h.metrics.persistent_sessions.get();
    let (_c, r) = h.connect(9, "real", false, 7200, 10).await;
    let outcome = r.await.unwrap();
    h.shutdown().await;
    assert_eq!(
        (gauge, outcome),
        (2, ConnectOutcome::QuotaExceeded),
        "two preset sessions count against max_persistent_sessions = 2"
    );
}

// ---------------------------------------------------------------------------
// 4. Late PUBACK / PUBREC from a connection that was taken over by a Clean
//    Start connection: seqs restart at 1 in the new session, and `acked`
//    accepts an old connection's ack for any entry not handed to the new
//    connection (`received` does not check the connection at all).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_late_ack_of_old_connection_removes_entry_of_new_session() {
    let mut h = H::new(|_| {});
    // A: persistent, receives seq 1 and 2 and does not ack them yet.
    let (_a, _) = h.connect(1, "c", false, 100, 10).await;
    drop(h.subscribe("c", "t", 1).await);
    h.publish("p", "t", "old1", 1).await;
    h.publish("p", "t", "old2", 1).await;
    // B: same client id, Clean Start, Receive Maximum 1.
    let (mut b, _) = h.connect(2, "c", true, 0, 1).await;
    drop(h.subscribe("c", "t", 1).await);
    h.publish("p", "t", "new1", 1).await; // seq 1, handed to B
    h.publish("p", "t", "new2", 1).await; // seq 2, queued (window 1)
                                          // A's PUBACK for its seq 2 reaches the router only now.
    h.acked(1, "c", 2).await;
    h.start();
    let first = next(&mut b.rx, 2000).await.expect("new1");
    let Outbound::Publish { seq, .. } = &first else {
        panic!()
    };
    h.acked(2, "c", *seq).await;
    let second = next(&mut b.rx, 2000).await;
    h.shutdown().await;
    assert!(
        second.is_some(),
        "after {} B never gets new2: removed by the old connection's ack",
        describe(&first)
    );
}

#[tokio::test]
async fn review_late_pubrec_of_old_connection_turns_new_publish_into_pubrel() {
    let mut h = H::new(|_| {});
    let (_a, _) = h.connect(1, "c", false, 100, 10).await;
    drop(h.subscribe("c", "t", 2).await);
    h.publish("p", "t", "old1", 2).await;
    h.publish("p", "t", "old2", 2).await;
    let (mut b, _) = h.connect(2, "c", true, 0, 1).await;
    drop(h.subscribe("c", "t", 2).await);
    h.publish("p", "t", "new1", 2).await;
    h.publish("p", "t", "new2", 2).await;
    // A's PUBREC for its seq 2 (a different message) arrives late.
    h.send(RouterMsg::Received {
        conn_id: 1,
        client_id: "c".into(),
        seq: 2,
    })
    .await;
    h.start();
    let first = next(&mut b.rx, 2000).await.expect("new1");
    let Outbound::Publish { seq, .. } = &first else {
        panic!()
    };
    h.acked(2, "c", *seq).await;
    let second = next(&mut b.rx, 2000).await.expect("something for seq 2");
    h.shutdown().await;
    assert!(
        matches!(second, Outbound::Publish { .. }),
        "new2 was never PUBLISHed to B, got {}",
        describe(&second)
    );
}

// ---------------------------------------------------------------------------
// 5. QoS 0 queue entries (queued while the session's bodies load) that were
//    handed to a connection which closed are re-handed with dup = true: a
//    QoS 0 PUBLISH with DUP=1 (MQTT-3.3.1-2).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_qos0_entry_redelivered_with_dup() {
    let mut h = H::new(|_| {});
    h.start();
    let (_x, r) = h.connect(1, "x", false, 100, 10).await;
    accepted(r).await;
    let _ = h.subscribe("x", "t", 1).await.await;
    h.disconnect(1, "x", None).await;
    let r = h.publish("p", "t", "q1", 1).await.unwrap();
    r.await.unwrap();
    // Reconnect; a QoS 0 message arrives while the offline queue is loading.
    let (mut a, r) = h.connect(2, "x", false, 100, 10).await;
    h.publish("p", "t", "q0", 0).await;
    accepted(r).await;
    let d1 = next(&mut a.rx, 2000).await.expect("q1");
    let d2 = next(&mut a.rx, 2000)
        .await
        .expect("q0 (queued while loading)");
    // The connection closes before it wrote / acked them.
    h.disconnect(2, "x", None).await;
    let (mut b, r) = h.connect(3, "x", false, 100, 10).await;
    accepted(r).await;
    let e1 = next(&mut b.rx, 2000).await.expect("q1 again");
    let e2 = next(&mut b.rx, 2000).await.expect("q0 again");
    h.shutdown().await;
    let all = [&d1, &d2, &e1, &e2].map(describe);
    assert!(
        !matches!(
            e2,
            Outbound::Publish {
                qos: 0,
                dup: true,
                ..
            }
        ),
        "QoS 0 PUBLISH with DUP=1: {all:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. QoS 0 order on one topic: QoS 0 messages queued during the load wait
//    for the inflight window, later QoS 0 messages go straight to tx0.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_qos0_messages_on_one_topic_reordered_after_reconnect() {
    let mut h = H::new(|_| {});
    h.start();
    let (_x, r) = h.connect(1, "x", false, 100, 1).await;
    accepted(r).await;
    let _ = h.subscribe("x", "t", 1).await.await;
    h.disconnect(1, "x", None).await;
    let r = h.publish("p", "t", "q1", 1).await.unwrap();
    r.await.unwrap();
    // Reconnect with window 1; "a" (QoS 0) arrives while loading.
    let (mut a, r) = h.connect(2, "x", false, 100, 1).await;
    h.publish("p", "t", "a", 0).await;
    accepted(r).await;
    let d1 = next(&mut a.rx, 2000).await.expect("q1");
    // "b" (QoS 0, same topic) published after "a".
    h.publish("p", "t", "b", 0).await;
    let Outbound::Publish { seq, .. } = d1 else {
        panic!()
    };
    h.acked(2, "x", seq).await;
    // Both QoS 0 messages must arrive (through either channel); collect
    // until both did, so a missing one fails rather than shortens the list.
    let mut order = vec![describe(&d1)];
    let qos0 = |order: &[String]| -> Vec<String> {
        order
            .iter()
            .filter(|s| s.contains("qos=0"))
            .map(|s| s.rsplit(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    // Direct QoS 0 deliveries come on the channel the router hands over first.
    let mut rx0: Option<mpsc::Receiver<Outbound>> = None;
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        while qos0(&order).len() < 2 {
            // Biased: both channels can be ready at once, and a random pick
            // would hide an overtaking (direct) QoS 0 delivery.
            tokio::select! {
                biased;
                Some(o) = recv0(&mut rx0) => order.push(describe(&o)),
                Some(o) = a.rx.recv() => {
                    if let Outbound::Qos0Channel(r) = o {
                        rx0 = Some(r);
                        continue;
                    }
                    order.push(describe(&o));
                    // Queued deliveries hold the window (1) until acknowledged.
                    if let Outbound::Publish { seq, .. } = o {
                        h.acked(2, "x", seq).await;
                    }
                }
            }
        }
    })
    .await;
    h.shutdown().await;
    assert!(done.is_ok(), "a QoS 0 message never arrived: {order:?}");
    assert_eq!(
        qos0(&order),
        ["a", "b"],
        "QoS 0 messages of topic t delivered out of order: {order:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. A session stuck in `loading`: the unloaded entries disappear (dropped
//    for room) during the load and a takeover arrives before the load
//    answers; the new connection starts no load, the old load's answer is
//    ignored, and nothing is ever handed out.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_takeover_during_load_leaves_session_stuck_loading() {
    let mut h = H::new(|c| c.session.max_queued_messages = 1);
    h.start();
    let (_x, r) = h.connect(1, "x", false, 100, 10).await;
    accepted(r).await;
    let _ = h.subscribe("x", "t", 1).await.await;
    h.disconnect(1, "x", None).await;
    let r = h.publish("p", "t", "old", 1).await.unwrap();
    r.await.unwrap();
    // One batch: reconnect (load starts), a new message evicts the unloaded
    // one (drop_oldest), a second reconnect takes over.
    let (_a, _) = h.connect(2, "x", false, 100, 10).await;
    h.publish("p", "t", "new", 1).await;
    let (mut b, r) = h.connect(3, "x", false, 100, 10).await;
    accepted(r).await;
    // The session hands out what it holds, and, once that is acknowledged,
    // traffic published later (max_queued_messages = 1, so one at a time).
    let got = next(&mut b.rx, 2000).await;
    let first = got.as_ref().map(describe);
    if let Some(Outbound::Publish { seq, .. }) = got {
        h.acked(3, "x", seq).await;
    }
    h.publish("p", "t", "later", 1).await;
    let later = next(&mut b.rx, 5000).await.map(|o| describe(&o));
    h.shutdown().await;
    assert!(
        first.as_deref().is_some_and(|d| d.ends_with(" new")),
        "session stuck: the queued message never came out: {first:?}"
    );
    assert!(
        later.as_deref().is_some_and(|d| d.ends_with(" later")),
        "session stuck: later traffic never came out: {later:?}"
    );
}

// ---------------------------------------------------------------------------
// 8. Packet id reuse: pkid_of(seq) wraps every 65535 seqs, and nothing checks
//    that the packet id is free. One unacknowledged delivery (a client using
//    manual acks that holds one message) plus 65535 acknowledged ones later,
//    a second delivery is in flight with the same packet id (MQTT-2.2.1-3);
//    the connection's pkid->seq map then overwrites the first.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_packet_id_reused_while_in_flight() {
    let mut h = H::new(|_| {});
    h.start();
    let (mut c, r) = h.connect(1, "c", true, 0, 2).await;
    accepted(r).await;
    let _ = h.subscribe("c", "t", 1).await.await;
    h.publish("p", "t", "held", 1).await;
    let Some(Outbound::Publish { seq: first, .. }) = next(&mut c.rx, 2000).await else {
        panic!()
    };
    let mut inflight = std::collections::HashMap::new();
    inflight.insert(mqbridge::mqtt::router::pkid_of(first), first);
    let mut stalled = false;
    for i in 0..65535u32 {
        h.publish("p", "t", &format!("m{i}"), 1).await;
        let seq = match next(&mut c.rx, 2000).await {
            Some(Outbound::Publish { seq, .. }) => seq,
            // The broker waits rather than reuse the held delivery's packet
            // id; once the client acknowledges it, delivery resumes.
            None if !stalled => {
                stalled = true;
                h.acked(1, "c", first).await;
                inflight.remove(&mqbridge::mqtt::router::pkid_of(first));
                match next(&mut c.rx, 2000).await {
                    Some(Outbound::Publish { seq, .. }) => seq,
                    _ => panic!("delivery did not resume after the held packet id was freed"),
                }
            }
            _ => panic!("nothing delivered at message {i}"),
        };
        let pkid = mqbridge::mqtt::router::pkid_of(seq);
        if let Some(other) = inflight.get(&pkid) {
            h.shutdown().await;
            panic!("seq {seq} handed with packet id {pkid} while seq {other} (same id) is unacknowledged");
        }
        h.acked(1, "c", seq).await;
    }
    h.shutdown().await;
    assert!(
        stalled,
        "the packet id of the held delivery came round without a wait"
    );
}

// ---------------------------------------------------------------------------
// 9. A clean (expiry 0) session taken over by Clean Start=0 + expiry > 0
//    becomes persistent (Session Present=1) with queue entries that were
//    never written to the store. At the next disconnect their bodies are
//    dropped (`unload`), and at the next connect they are "missing from
//    store" and deleted: lost on an ordinary reconnect, no crash involved.
//    Their removal also subtracts never-added bytes from stored_bytes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_entries_of_session_made_persistent_by_takeover_are_lost() {
    let mut h = H::new(|_| {});
    h.start();
    let (_a, r) = h.connect(1, "c", true, 0, 1).await;
    accepted(r).await;
    let _ = h.subscribe("c", "t", 1).await.await;
    for m in ["m1", "m2", "m3"] {
        let r = h.publish("p", "t", m, 1).await.unwrap();
        assert_eq!(r.await.unwrap(), PublishOutcome::Delivered);
    }
    // Takeover: Clean Start=0, Session Expiry 100.
    let (_b, r) = h.connect(2, "c", false, 100, 10).await;
    let o = r.await.unwrap();
    assert!(
        matches!(
            o,
            ConnectOutcome::Accepted {
                session_present: true,
                ..
            }
        ),
        "{o:?}"
    );
    // B goes away before acknowledging; the client reconnects.
    h.disconnect(2, "c", None).await;
    let (mut c, r) = h.connect(3, "c", false, 100, 10).await;
    accepted(r).await;
    let mut got = Vec::new();
    while let Some(o) = next(&mut c.rx, 1000).await {
        got.push(describe(&o));
    }
    h.shutdown().await;
    assert_eq!(
        got.len(),
        3,
        "queued messages of the resumed session: {got:?}"
    );
}

// ---------------------------------------------------------------------------
// Disk low (store.min_free_bytes): what a persistent session cannot store is
// refused, and a downlink command is answered StoreFailed (the source retries
// it) rather than committed as dropped.
// ---------------------------------------------------------------------------

async fn command(h: &H, topic: &str, client: Option<&str>) -> CommandResult {
    let (reply, r) = oneshot::channel();
    h.send(RouterMsg::Command {
        msg: msg(topic, "cmd", 1),
        client_id: client.map(Into::into),
        create_session: true,
        reply,
    })
    .await;
    r.await.unwrap()
}

#[tokio::test]
async fn disk_low_refuses_persistent_writes_and_commands_are_retried() {
    let mut h = H::new(|_| {});
    h.start();
    let (_p, r) = h.connect(1, "p", false, 3600, 10).await;
    assert!(matches!(r.await.unwrap(), ConnectOutcome::Accepted { .. }));
    h.subscribe("p", "cmd/#", 1).await.await.unwrap();
    h.disconnect(1, "p", None).await;

    assert!(h.health.record_free(0, 1).is_some(), "now low");
    assert_eq!(command(&h, "cmd/x", None).await, CommandResult::StoreFailed);
    assert_eq!(
        command(&h, "cmd/y", Some("preset")).await,
        CommandResult::StoreFailed,
        "no preset session is created"
    );
    let r = h.publish("pub", "cmd/z", "m", 1).await.unwrap();
    assert_eq!(r.await.unwrap(), PublishOutcome::DiskLow);
    let (_n, r) = h.connect(2, "new", false, 3600, 10).await;
    assert_eq!(r.await.unwrap(), ConnectOutcome::QuotaExceeded);
    // A resumed session is let in: delivering its queue frees space.
    let (_p, r) = h.connect(3, "p", false, 3600, 10).await;
    assert!(matches!(r.await.unwrap(), ConnectOutcome::Accepted { .. }));
    h.disconnect(3, "p", None).await;

    assert!(h.health.record_free(10, 1).is_some(), "recovered");
    assert_eq!(
        command(&h, "cmd/x", None).await,
        CommandResult::Stored { refused: 0 }
    );
    h.shutdown().await;
}
