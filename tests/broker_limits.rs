//! The global persistent-session limit: a new persistent session over the
//! limit is refused with CONNACK 0x97, without disturbing the sessions that
//! exist (nor a client reconnecting to its own session).

mod common;

use common::*;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as P5};
use rumqttc::v5::{AsyncClient, ConnectionError, Event};

/// Connects and returns the CONNACK code (or the refusal).
async fn connack(addr: std::net::SocketAddr, id: &str) -> (Option<AsyncClient>, ConnectReturnCode) {
    let (c, mut ev) = AsyncClient::new(opts_v5(addr, id, false, Some(3600)), 10);
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
