//! Router state checked directly: what must not outlive the clients that
//! created it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::config::Config;
use crate::store::StoreOptions;

/// A router on a fresh store, and the connections it attached (kept open).
struct Harness {
    router: Router,
    conns: Vec<mpsc::Receiver<Outbound>>,
    _dir: tempfile::TempDir,
}

fn harness(cfg: Config) -> Harness {
    harness_in(cfg, tempfile::tempdir().expect("tempdir"))
}

/// A router on the store in `dir` (as left by an earlier harness).
fn harness_in(cfg: Config, dir: tempfile::TempDir) -> Harness {
    let opts = StoreOptions {
        path: dir.path().to_path_buf(),
        max_batch_ops: 64,
        queue_capacity: 16,
        cache_bytes: 1 << 20,
        observer: None,
        commit_retry_max: std::time::Duration::ZERO,
    };
    let (store, recovered) = Store::open(&opts).expect("store");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let (tx, _rx) = mpsc::channel(1);
    let router = Router::new(
        Arc::new(cfg.validate().expect("test config is valid")),
        metrics,
        store,
        recovered,
        tx.downgrade(),
        crate::tasks::Tasks::new().0,
    );
    Harness {
        router,
        conns: Vec::new(),
        _dir: dir,
    }
}

impl Harness {
    /// Commits what the router did and closes the store; returns its directory.
    async fn close(mut self) -> tempfile::TempDir {
        self.router.flush().await;
        self.router.store.close().await.expect("store closes");
        self._dir
    }

    /// Attaches a clean (expiry 0) client.
    fn connect(&mut self, id: &str) {
        let (tx, rx) = mpsc::channel(8 + 3);
        let (kick, _) = oneshot::channel();
        let conn_id = self.conns.len() as u64 + 1;
        self.conns.push(rx);
        let req = ConnectRequest {
            conn_id,
            client_id: id.into(),
            clean_start: true,
            expiry_secs: 0,
            protocol: 5,
            will: None,
            window: 8,
            tx,
            kick,
            username: None,
            identity: None,
            peer_ip: None,
            listener: None,
        };
        let (reply, _) = oneshot::channel();
        self.router.handle(RouterMsg::Connect { req, reply });
    }

    fn conn_id(&self, id: &str) -> ConnId {
        self.router.sessions[id].conn_gen
    }

    fn subscribe(&mut self, id: &str, filter: &str) {
        let (reply, _) = oneshot::channel();
        self.router.handle(RouterMsg::Subscribe {
            conn_id: self.conn_id(id),
            client_id: id.into(),
            filters: vec![SubRequest {
                filter: filter.into(),
                opts: crate::mqtt::topic::SubOpts {
                    qos: 1,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                    subscription_id: None,
                },
            }],
            reply,
        });
    }

    fn unsubscribe(&mut self, id: &str, filter: &str) {
        let (reply, _) = oneshot::channel();
        self.router.handle(RouterMsg::Unsubscribe {
            conn_id: self.conn_id(id),
            client_id: id.into(),
            filters: vec![filter.into()],
            reply,
        });
    }

    fn disconnect(&mut self, id: &str) {
        self.router.handle(RouterMsg::Disconnect {
            conn_id: self.conn_id(id),
            client_id: id.into(),
            publish_will: false,
            new_expiry: None,
        });
    }

    fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) {
        let msg = Message {
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload),
            qos: 1,
            retain,
            props: Default::default(),
            expires_at_ms: None,
            receipt: None,
        };
        self.router.handle(RouterMsg::Publish {
            conn_id: 0,
            client_id: "publisher".into(),
            msg,
            qos2_pkid: None,
            reply: None,
        });
    }
}

#[tokio::test]
async fn shared_group_state_goes_with_its_last_member() {
    let mut h = harness(Config::default());
    h.connect("a");
    h.connect("b");
    h.subscribe("a", "$share/g/t/#");
    h.subscribe("b", "$share/g/t/#");
    h.subscribe("a", "$share/h/x");
    // Subscribing again to the same filter is not a second member.
    h.subscribe("a", "$share/h/x");
    h.publish("t/1", b"m", false);
    h.publish("x", b"m", false);
    assert_eq!(h.router.shared_rr.len(), 2);

    h.unsubscribe("a", "$share/g/t/#");
    assert_eq!(h.router.shared_rr.len(), 2, "b is still in group g");
    // b's clean session ends with its connection, and with it group g.
    h.disconnect("b");
    assert_eq!(h.router.shared_rr.len(), 1);
    h.unsubscribe("a", "$share/h/x");
    assert!(h.router.shared_rr.is_empty(), "{:?}", h.router.shared_rr);
}

#[tokio::test]
async fn start_up_loads_retained_messages_only_up_to_the_limits() {
    let mut h = harness(Config::default());
    for t in ["r/1", "r/2", "r/3", "r/4"] {
        h.publish(t, &[b'x'; 50], true);
    }
    h.publish("r/big", &[b'x'; 500], true);
    assert_eq!(h.router.retained.len(), 5);
    let dir = h.close().await;

    // Lower limits: at most 3 topics, 200 bytes (each small one is 69), 100-byte payloads.
    let mut cfg = Config::default();
    cfg.mqtt.max_retained_messages = 3;
    cfg.mqtt.max_retained_bytes = 200;
    cfg.mqtt.max_retained_payload_bytes = 100;
    let h = harness_in(cfg, dir);
    assert_eq!(h.router.retained.len(), 2, "two of 69 bytes fit in 200");
    assert_eq!(h.router.retained_bytes, 138);
    let refused = |r: crate::metrics::RetainedRefusal| {
        h.router
            .metrics
            .retained_refused
            .get_or_create(&crate::metrics::RetainedLabels { reason: r })
            .get()
    };
    assert_eq!(refused(crate::metrics::RetainedRefusal::PayloadSize), 1);
    assert_eq!(refused(crate::metrics::RetainedRefusal::Bytes), 2);
    // What was not loaded is deleted, not left to come back later.
    let dir = h.close().await;
    let h = harness_in(Config::default(), dir);
    assert_eq!(h.router.retained.len(), 2);
}

#[tokio::test]
async fn expired_retained_messages_stop_counting_at_the_tick_unsubscribed() {
    let mut h = harness(Config::default());
    h.publish("r/keep", b"k", true);
    h.publish("r/old", b"o", true);
    // Expire one in place: no subscription will come to find it.
    let old = h.router.retained.get_mut("r/old").expect("retained");
    Arc::make_mut(old).expires_at_ms = Some(1);
    let before = h.router.retained_bytes;
    h.router.tick();
    assert_eq!(
        h.router.retained.keys().collect::<Vec<_>>(),
        ["r/keep"],
        "the expired one is purged, the other kept"
    );
    assert!(h.router.retained_bytes < before);
}
