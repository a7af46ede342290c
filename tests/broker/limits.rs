//! The persistent-session limits (global, per user name, per IP address for
//! clients without a user name): a new persistent session over a limit is
//! refused with CONNACK 0x97 (3.1.1: 0x03), without disturbing the sessions
//! that exist (nor a client reconnecting to its own session) or other clients.

use crate::common::*;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as P5};
use rumqttc::v5::{AsyncClient, ConnectionError, Event};

/// Connects and returns the CONNACK code (or the refusal).
async fn connack(addr: std::net::SocketAddr, id: &str) -> (Option<AsyncClient>, ConnectReturnCode) {
    connack_with(opts_v5(addr, id, false, Some(3600))).await
}

/// A persistent (1 h) 5.0 session logging in as `user`.
fn as_user(addr: std::net::SocketAddr, id: &str, user: &str) -> rumqttc::v5::MqttOptions {
    let mut o = opts_v5(addr, id, false, Some(3600));
    o.set_credentials(user, "");
    o
}

async fn connack_with(opts: rumqttc::v5::MqttOptions) -> (Option<AsyncClient>, ConnectReturnCode) {
    let (c, mut ev) = AsyncClient::new(opts, 10);
    let code = within(10, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(P5::ConnAck(a))) => return a.code,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("unexpected: {e:?}"),
            }
        }
    })
    .await;
    if code == ConnectReturnCode::Success {
        tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        (Some(c), code)
    } else {
        (None, code)
    }
}

#[tokio::test]
async fn persistent_session_limit_refuses_new_sessions_only() {
    let t = start_with(|cfg| cfg.session.max_persistent_sessions = 1).await;
    let (a, code) = connack(t.addr, "limit-a").await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_, code) = connack(t.addr, "limit-b").await;
    assert_eq!(
        code,
        ConnectReturnCode::QuotaExceeded,
        "a second persistent session is over the limit"
    );
    // The existing client may take over its own session.
    drop(a);
    let (_a2, code) = connack(t.addr, "limit-a").await;
    assert_eq!(
        code,
        ConnectReturnCode::Success,
        "reconnecting to an existing session is not a new one"
    );
    t.gw.shutdown().await;
}

#[tokio::test]
async fn per_ip_limit_applies_to_clients_without_a_user_name() {
    let t = start_with(|cfg| {
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.session.max_persistent_sessions_per_ip = 2;
    })
    .await;
    let (_a, code) = connack(t.addr, "ip-a").await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_b, code) = connack(t.addr, "ip-b").await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_, code) = connack(t.addr, "ip-c").await;
    assert_eq!(
        code,
        ConnectReturnCode::QuotaExceeded,
        "third from 127.0.0.1"
    );
    assert_eq!(
        scrape(&t, "mqbridge_session_refused_total{reason=\"per_ip\"}").await,
        Some(1.0)
    );
    // 3.1.1 has no Quota exceeded: 0x03 Server unavailable.
    let refused = b4::try_connect(opts_v4(t.addr, "ip-c4", false)).await;
    assert!(
        matches!(
            refused,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::ServiceUnavailable
            ))
        ),
        "{:?}",
        refused.map(|c| c.connack)
    );
    // Not affected: clean sessions, clients with a user name, resuming.
    b4::connect(opts_v4(t.addr, "ip-clean", true))
        .await
        .disconnect()
        .await;
    let (_u, code) = connack_with(as_user(t.addr, "ip-user", "someone")).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_a2, code) = connack(t.addr, "ip-a").await;
    assert_eq!(code, ConnectReturnCode::Success, "resuming its own session");
    // A session that ends frees its slot.
    b4::connect(opts_v4(t.addr, "ip-b", true))
        .await
        .disconnect()
        .await;
    let (_c, code) = connack(t.addr, "ip-c").await;
    assert_eq!(code, ConnectReturnCode::Success);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn per_user_limit_refuses_new_sessions_of_that_user_only() {
    let t = start_with(|cfg| {
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.session.max_persistent_sessions_per_user = 1;
        cfg.session.max_persistent_sessions_per_ip = 1;
    })
    .await;
    let (x, code) = connack_with(as_user(t.addr, "user-x", "u1")).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_, code) = connack_with(as_user(t.addr, "user-y", "u1")).await;
    assert_eq!(
        code,
        ConnectReturnCode::QuotaExceeded,
        "u1's second session"
    );
    assert_eq!(
        scrape(&t, "mqbridge_session_refused_total{reason=\"per_user\"}").await,
        Some(1.0)
    );
    let (_z, code) = connack_with(as_user(t.addr, "user-z", "u2")).await;
    assert_eq!(code, ConnectReturnCode::Success, "another user");
    let (_anon, code) = connack(t.addr, "user-anon").await;
    assert_eq!(
        code,
        ConnectReturnCode::Success,
        "per-IP counts anonymous ones only"
    );
    drop(x);
    let (_x2, code) = connack_with(as_user(t.addr, "user-x", "u1")).await;
    assert_eq!(code, ConnectReturnCode::Success, "resuming its own session");
    t.gw.shutdown().await;
}

/// The gateway never stays up half-dead: when the router or the store writer
/// dies, it stops (listeners closed) and reports the task, so the binary exits
/// non-zero and a supervisor restarts it.
#[tokio::test]
async fn a_dead_router_or_store_writer_stops_the_gateway() {
    use mqbridge::app::AppError;
    use mqbridge::mqtt::router::Fault;
    // The writer is a thread: its watcher sees it gone ("ended"), not the panic.
    for (fault, expected, expected_how) in [
        (Fault::RouterPanic, "router", "panicked"),
        (Fault::StoreWriterPanic, "store writer", "ended"),
    ] {
        let t = start().await;
        let addr = t.addr;
        // Serving before the fault.
        let (_c, code) = connack(addr, "supervised").await;
        assert_eq!(code, ConnectReturnCode::Success);
        t.gw.inject_fault(fault).await;
        let result = within(30, t.gw.serve(std::future::pending())).await;
        match result {
            Err(AppError::TaskFailed { task, how }) => {
                assert_eq!(task, expected);
                assert_eq!(how, expected_how);
            }
            other => panic!("{fault:?}: expected a task failure, got {other:?}"),
        }
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{fault:?}: the listener must be closed once the gateway stopped"
        );
    }
}

/// A start-up that fails (here: the MQTT port is taken) stops what it had
/// already started: the store is closed again when `start` returns, so a
/// retry on the same store directory opens it.
#[tokio::test]
async fn a_failed_start_closes_the_store_again() {
    use mqbridge::app::{AppError, Gateway};
    let dir = tempfile::tempdir().expect("tempdir");
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cfg = test_config(dir.path());
    cfg.mqtt.listen = held.local_addr().expect("local addr").to_string();
    let cfg = cfg.validate().expect("test config is valid");
    match within(30, Gateway::start(cfg)).await {
        Err(AppError::Bind { what, .. }) => assert_eq!(what, "MQTT listener"),
        Err(e) => panic!("expected a bind error, got {e:?}"),
        Ok(_) => panic!("started on a port that is taken"),
    }
    let cfg = test_config(dir.path())
        .validate()
        .expect("test config is valid");
    let gw = within(30, Gateway::start(cfg))
        .await
        .expect("the failed start closed the store: a retry opens it");
    gw.shutdown().await;
    drop(held);
}

// ----- the store's disk: free-space watermark and a full disk ---------------

/// A tmpfs mounted for one test (needs root), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (a recorded skip) when it cannot be mounted (not root) outside
    /// CI; fails under CI.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                service::missing(&format!("a mountable tmpfs (run as root): {other:?}"));
                None
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the filesystem with a file until at most `leave` bytes are free
    /// (or until it is full: writes then fail with ENOSPC).
    fn fill(&self, leave: u64) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            let free = mqbridge::store::available_bytes(self.path()).unwrap();
            if free <= leave {
                break;
            }
            let n = (free - leave).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n]).is_err() {
                break; // full
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a failed test may still hold the store's files open.
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

/// GET /readyz: the HTTP status code.
async fn readyz(admin: std::net::SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn wait_readyz(admin: std::net::SocketAddr, want: u16) {
    within(10, async {
        while readyz(admin).await != want {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Publishes QoS 1 from a 5.0 client and returns the PUBACK reason (or `None`
/// if no PUBACK came within `wait`).
async fn puback_v5(
    c: &mut b5::Client,
    topic: &str,
    payload: &str,
    wait: std::time::Duration,
) -> Option<rumqttc::v5::mqttbytes::v5::PubAckReason> {
    use rumqttc::v5::mqttbytes::QoS;
    c.client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .unwrap();
    tokio::time::timeout(wait, async {
        loop {
            match c.events.recv().await {
                Some(Ok(Event::Incoming(P5::PubAck(a)))) => return a.reason,
                Some(Ok(_)) => {}
                other => panic!("publisher connection ended: {other:?}"),
            }
        }
    })
    .await
    .ok()
}

fn disk_config(cfg: &mut mqbridge::config::Config, store: &std::path::Path, min_free: u64) {
    cfg.store.path = store.to_path_buf();
    cfg.store.min_free_bytes = min_free;
    cfg.store.free_space_check_interval_ms = 50;
    cfg.store.cache_mb = 4;
    cfg.admin.listen = "127.0.0.1:0".into();
}

#[tokio::test]
async fn disk_below_watermark_refuses_persistent_writes_and_recovers_without_restart() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    init_tracing();
    let Some(fs) = Tmpfs::mount("48m") else {
        return;
    };
    const MIN_FREE: u64 = 16 * 1024 * 1024;
    let store = fs.path().join("store");
    let t = start_with(|c| disk_config(c, &store, MIN_FREE)).await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    assert_eq!(readyz(admin).await, 200);

    let mut sub = b5::connect(opts_v5(t.addr, "disk-sub", false, Some(3600))).await;
    sub.subscribe("disk/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = b5::connect(opts_v5(t.addr, "disk-pub", true, None)).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let p = format!("before{i}");
        let r = puback_v5(&mut publ, "disk/t", &p, std::time::Duration::from_secs(10)).await;
        assert_eq!(r, Some(PubAckReason::Success));
        acked.push(p);
    }

    // Below the watermark (but far from full).
    let filler = fs.fill(MIN_FREE / 2);
    wait_readyz(admin, 503).await;
    let r = puback_v5(
        &mut publ,
        "disk/t",
        "refused",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        r,
        Some(PubAckReason::QuotaExceeded),
        "a message for a persistent session is not stored, so not acknowledged as a success"
    );
    let (_, code) = connack(t.addr, "disk-new").await;
    assert_eq!(
        code,
        ConnectReturnCode::QuotaExceeded,
        "new persistent session refused"
    );
    match b4::try_connect(opts_v4(t.addr, "disk-new4", false)).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::ServiceUnavailable)
        }
        Err(e) => panic!("unexpected: {e:?}"),
        Ok(_) => panic!("3.1.1 new persistent session accepted while the disk is low"),
    }
    // 3.1.1: no PUBACK, the connection is closed.
    let mut p4 = b4::connect(opts_v4(t.addr, "disk-pub4", true)).await;
    p4.client
        .publish(
            "disk/t",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"refused4".to_vec(),
        )
        .await
        .unwrap();
    within(10, async {
        loop {
            match p4.events.recv().await {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                    panic!("3.1.1 PUBACK for a message that was not stored")
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    })
    .await;

    // Space back: recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_readyz(admin, 200).await;
    let r = puback_v5(
        &mut publ,
        "disk/t",
        "after",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(r, Some(PubAckReason::Success));
    acked.push("after".into());
    let (_new, code) = connack(t.addr, "disk-new").await;
    assert_eq!(code, ConnectReturnCode::Success);

    let mut sub = b5::connect(opts_v5(t.addr, "disk-sub", false, Some(3600))).await;
    assert!(sub.session_present());
    let got = sub.expect_publishes(acked.len()).await;
    assert_eq!(
        b5::payloads(&got),
        acked,
        "every acknowledged message, in order"
    );
    assert!(
        sub.until_control().await.is_empty(),
        "nothing that was refused"
    );
    sub.disconnect().await;
    publ.disconnect().await;
    t.gw.shutdown().await;
    drop(t.dir);
}

#[tokio::test]
async fn full_disk_commit_failure_waits_and_completes_when_space_is_freed() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    init_tracing();
    let Some(fs) = Tmpfs::mount("48m") else {
        return;
    };
    let store = fs.path().join("store");
    // No watermark: the commit itself meets ENOSPC.
    let t = start_with(|c| disk_config(c, &store, 0)).await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    let mut sub = b5::connect(opts_v5(t.addr, "full-sub", false, Some(3600))).await;
    sub.subscribe("full/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = b5::connect(opts_v5(t.addr, "full-pub", true, None)).await;
    let r = puback_v5(
        &mut publ,
        "full/t",
        "before",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(r, Some(PubAckReason::Success));

    let filler = fs.fill(0);
    // Big enough that the store file must grow into space that is not there.
    let big = "x".repeat(8 * 1024);
    let r = puback_v5(&mut publ, "full/t", &big, std::time::Duration::from_secs(2)).await;
    assert_eq!(r, None, "no PUBACK while the message cannot be stored");
    wait_readyz(admin, 503).await;

    std::fs::remove_file(&filler).unwrap();
    // The retried commit lands; the waiting PUBACK is released as a success.
    let r = next_puback(&mut publ, 20).await;
    assert_eq!(r, PubAckReason::Success);
    wait_readyz(admin, 200).await;
    let r = puback_v5(
        &mut publ,
        "full/t",
        "after",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(r, Some(PubAckReason::Success));

    let mut sub = b5::connect(opts_v5(t.addr, "full-sub", false, Some(3600))).await;
    assert!(sub.session_present());
    let got = sub.expect_publishes(3).await;
    let sizes: Vec<usize> = got.iter().map(|p| p.payload.len()).collect();
    assert_eq!(sizes, vec![6, big.len(), 5], "before, the big one, after");
    sub.disconnect().await;
    publ.disconnect().await;
    t.gw.shutdown().await;
}

#[tokio::test]
async fn spool_appends_wait_while_the_disk_is_low() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    init_tracing();
    let Some(fs) = Tmpfs::mount("48m") else {
        return;
    };
    const MIN_FREE: u64 = 16 * 1024 * 1024;
    let store = fs.path().join("store");
    let t = start_with(|c| {
        disk_config(c, &store, MIN_FREE);
        c.bridge.uplink[0].ack = mqbridge::config::AckMode::Spool;
    })
    .await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    let topic = "devices/d1/telemetry/t";
    let mut publ = b5::connect(opts_v5(t.addr, "spool-pub", true, None)).await;
    let wait = std::time::Duration::from_secs(10);
    let r = puback_v5(&mut publ, topic, "s0", wait).await;
    assert_eq!(r, Some(PubAckReason::Success));

    let filler = fs.fill(MIN_FREE / 2);
    wait_readyz(admin, 503).await;
    let quiet = std::time::Duration::from_millis(1500);
    let r = puback_v5(&mut publ, topic, "s1", quiet).await;
    assert_eq!(r, None, "no PUBACK while the spool cannot append");

    std::fs::remove_file(&filler).unwrap();
    let r = next_puback(&mut publ, 10).await;
    assert_eq!(
        r,
        PubAckReason::Success,
        "the append went through once space was back"
    );
    publ.disconnect().await;
    t.gw.shutdown().await;
    let lines = std::fs::read_to_string(t.dir.path().join("uplink/telemetry.jsonl")).unwrap();
    let payloads: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"].to_string())
        .collect();
    assert_eq!(payloads, ["\"s0\"", "\"s1\""]);
}

/// A commit that keeps failing past `store.commit_retry_max_secs` stops the
/// store writer and with it the gateway (non-zero exit for the binary); the
/// PUBLISH whose commit failed is never acknowledged as a success.
#[tokio::test]
async fn commit_failing_past_its_bound_stops_the_gateway_without_acknowledging() {
    use mqbridge::app::AppError;
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    init_tracing();
    let Some(fs) = Tmpfs::mount("48m") else {
        return;
    };
    let store = fs.path().join("store");
    let t = start_with(|c| {
        disk_config(c, &store, 0);
        c.store.commit_retry_max_secs = 1;
    })
    .await;
    let mut sub = b5::connect(opts_v5(t.addr, "bound-sub", false, Some(3600))).await;
    sub.subscribe("bound/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = b5::connect(opts_v5(t.addr, "bound-pub", true, None)).await;
    let _filler = fs.fill(0);
    let big = "x".repeat(8 * 1024);
    publ.client
        .publish("bound/t", Q5::AtLeastOnce, false, big.into_bytes())
        .await
        .unwrap();
    let result = within(30, t.gw.serve(std::future::pending())).await;
    match result {
        Err(AppError::TaskFailed { task, .. }) => assert_eq!(task, "store writer"),
        other => panic!("expected the store writer to stop the gateway, got {other:?}"),
    }
    // Whatever the publisher saw, it was not a successful PUBACK.
    while let Ok(Some(event)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), publ.events.recv()).await
    {
        if let Ok(Event::Incoming(P5::PubAck(a))) = &event {
            assert_ne!(
                a.reason,
                PubAckReason::Success,
                "acknowledged but not stored"
            );
        }
        if event.is_err() {
            break;
        }
    }
}

/// The reason of the next PUBACK the publisher gets, within `secs`.
async fn next_puback(publ: &mut b5::Client, secs: u64) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    within(secs, async {
        loop {
            match publ.events.recv().await {
                Some(Ok(Event::Incoming(P5::PubAck(a)))) => return a.reason,
                Some(Ok(_)) => {}
                other => panic!("publisher connection ended: {other:?}"),
            }
        }
    })
    .await
}
