//! `/readyz` tells the truth about the backends: a gateway whose Kafka
//! backend cannot be reached answers 503 naming it, and 200 once the broker
//! answers. The broker is the real tansu, reached through a TCP forwarder of
//! the test that starts refused (nothing listens on its port) and is opened
//! later; the client then talks to tansu itself (its advertised address).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mqbridge::config::{AckMode, BackendConfig, KafkaBackend, UplinkRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::kafka::broker;

async fn readyz(admin: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

async fn get(admin: SocketAddr, path: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(admin).await.expect("admin");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).expect("JSON")
}

async fn wait_for(admin: SocketAddr, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readyz(admin).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Forwards every connection on `listener` to `to`.
async fn forward(listener: TcpListener, to: String) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_a_backend_is_unreachable_and_200_once_it_answers() {
    let Some((kafka, _turn)) = broker().await else {
        return;
    };
    // A port that refuses until the forwarder is started on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let t = crate::common::start_with(|cfg| {
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.bridge.backends.push(BackendConfig::Kafka(KafkaBackend {
            name: "kafka".into(),
            bootstrap_servers: format!("127.0.0.1:{port}"),
            ..KafkaBackend::default()
        }));
        cfg.bridge.uplink.push(UplinkRoute {
            name: "to-kafka".into(),
            filter: "never/+".into(),
            backend: "kafka".into(),
            target: "unused".into(),
            key: None,
            routing_key: None,
            ack: AckMode::Backend,
            give_up_secs: 0,
            spool_max_bytes: 1 << 30,
        });
    })
    .await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    let body = wait_for(admin, 503).await;
    assert!(
        body.contains("uplink backend kafka not connected"),
        "{body}"
    );
    assert!(
        !body.contains("uplink backend file"),
        "the file backend is up: {body}"
    );
    // The admin API names the route's state and, once a connect failed,
    // its backend's last error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let route = loop {
        let routes = get(admin, "/api/v1/routes").await;
        let route = routes
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "to-kafka"))
            .cloned()
            .expect("route listed");
        if route["last_error"].is_string() || Instant::now() > deadline {
            break route;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(route["connected"], false, "{route}");
    assert_eq!(route["backend"], "kafka", "{route}");
    let last = route["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("Kafka"), "{route}");

    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    tokio::spawn(forward(listener, kafka));
    let body = wait_for(admin, 200).await;
    assert_eq!(body, r#"{"ready":true}"#);
    let routes = get(admin, "/api/v1/routes").await;
    let up = routes.as_array().is_some_and(|a| {
        a.iter()
            .any(|r| r["name"] == "to-kafka" && r["connected"] == true)
    });
    assert!(up, "{routes}");
}

/// RabbitMQ stopped (`rabbitmqctl stop_app`) under a running gateway:
/// `/readyz` turns 503 naming the backend, and 200 again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_rabbitmq_going_away_and_coming_back() {
    use crate::common::amqp::{broker_alone, gateway_bridge, rabbitmqctl, Fixture};
    let Some((conn, _turn)) = broker_alone().await else {
        return;
    };
    let fx = Fixture::new(&conn, "#").await;
    let exchange = fx.exchange.clone();
    let t = crate::common::start_with(|cfg| {
        gateway_bridge(cfg, &exchange, AckMode::Backend, 0);
        cfg.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    wait_for(admin, 200).await;

    /// Starts the app again even if the test fails half-way.
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            rabbitmqctl(&["start_app"]);
        }
    }
    let restart = Restart;
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
    let body = wait_for(admin, 503).await;
    assert!(
        body.contains("uplink backend rabbitmq not connected"),
        "{body}"
    );
    drop(restart);
    wait_for(admin, 200).await;
    t.gw.shutdown().await;
    fx.cleanup().await;
}

/// During shutdown `/readyz` answers 503 "shutting down" (the admin endpoint
/// stops last): a message waits for a blocked RabbitMQ, so the drain takes
/// the whole grace period, and the endpoint is asked meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_shutting_down() {
    use crate::common::amqp::{broker_alone, gateway_bridge, Blocked, Fixture};
    use crate::common::opts_v4;
    let Some((conn, turn)) = broker_alone().await else {
        return;
    };
    let fx = Fixture::new(&conn, "#").await;
    let exchange = fx.exchange.clone();
    let t = crate::common::start_with(|cfg| {
        gateway_bridge(cfg, &exchange, AckMode::Backend, 0);
        cfg.admin.listen = "127.0.0.1:0".into();
        cfg.server.shutdown_grace_secs = 4;
    })
    .await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    wait_for(admin, 200).await;
    let blocked = Blocked::start(&turn);
    // A QoS 1 message the blocked broker never confirms.
    let (c, mut ev) = rumqttc::AsyncClient::new(opts_v4(t.addr, "drain-dev", true), 10);
    c.publish(
        "devices/drain-dev/telemetry",
        rumqttc::QoS::AtLeastOnce,
        false,
        "x",
    )
    .await
    .expect("queued");
    let poller = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopping = tokio::spawn(t.gw.shutdown());
    let body = wait_for(admin, 503).await;
    assert!(body.contains("shutting down"), "{body}");
    drop(blocked);
    stopping.await.expect("shutdown");
    poller.abort();
    fx.cleanup().await;
}
