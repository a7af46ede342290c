//! The persistent-session limits (global, per user name, per IP address for
//! clients without a user name): a new persistent session over a limit is
//! refused with CONNACK 0x97 (3.1.1: 0x03), without disturbing the sessions
//! that exist (nor a client reconnecting to its own session) or other clients.

mod common;

use common::*;
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
