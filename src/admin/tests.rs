use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;
use crate::metrics::Metrics;

struct Server {
    addr: SocketAddr,
    ready: Arc<Readiness>,
    metrics: Metrics,
    tasks: Tasks,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let ready = Arc::new(Readiness::default());
    let (tasks, _) = Tasks::new();
    let (router, _) = tokio::sync::mpsc::channel(1);
    let state = AdminState {
        registry: Arc::new(registry),
        ready: ready.clone(),
        router: router.downgrade(),
        token: None,
        routes: Arc::new([]),
    };
    let task = tokio::spawn(serve_with(listener, state, None, tasks.clone(), limits));
    Server {
        addr,
        ready,
        metrics,
        tasks,
        task,
    }
}

/// Sends `request` raw; returns (status line, headers, body) once the
/// server closed the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("closed in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    exchange(addr, request.as_bytes()).await
}

#[tokio::test]
async fn readyz_tells_what_is_not_ready_at_each_request() {
    let server = start(Limits::default()).await;
    let (status, headers, body) = get(server.addr, "/healthz").await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    assert!(headers.contains("connection: close"), "{headers}");

    let (status, _, body) = get(server.addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains("starting"), "{body}");
    server.ready.set_started(true);
    let (status, _, body) = get(server.addr, "/readyz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", r#"{"ready":true}"#)
    );

    // A backend's connection gauge at 0 makes it not ready, by name.
    let up = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    server
        .ready
        .watch_connection("uplink backend kafka".into(), up.clone());
    let (status, _, body) = get(server.addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(
        body.contains("uplink backend kafka not connected"),
        "{body}"
    );
    up.set(1);
    assert_eq!(get(server.addr, "/readyz").await.0, "HTTP/1.1 200 OK");

    // The router gone, a blocked downlink, the store refusing, stopping.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    server.ready.watch_router(tx.downgrade());
    assert_eq!(get(server.addr, "/readyz").await.0, "HTTP/1.1 200 OK");
    drop(rx);
    let (_, _, body) = get(server.addr, "/readyz").await;
    assert!(body.contains("the router stopped"), "{body}");
    drop(tx);
    server.ready.downlink_blocked(true);
    server.ready.set_store_accepting(false);
    server.ready.set_stopping();
    let (status, _, body) = get(server.addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    for why in [
        "downlink paused",
        "store refuses",
        "shutting down",
        "router stopped",
    ] {
        assert!(body.contains(why), "{why} not in {body}");
    }
}

#[tokio::test]
async fn metrics_say_what_they_are_and_routing_errors() {
    let server = start(Limits::default()).await;
    server.metrics.listener(&"tcp".into(), false).active.set(7);
    let (status, headers, body) = get(server.addr, "/metrics?x=1").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
        "{headers}"
    );
    assert!(
        body.contains("\nmqbridge_mqtt_connections_active{listener=\"tcp\"} 7\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));

    assert_eq!(get(server.addr, "/nope").await.0, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = exchange(
        server.addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("allow: get"), "{headers}");
    let (status, _, _) = exchange(server.addr, b"garbage\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");

    server.tasks.token().cancel();
    server.task.await.expect("join").expect("serve returns Ok");
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn slow_heads_and_extra_connections_are_cut_off() {
    let server = start(Limits {
        head_timeout: Duration::from_millis(300),
        max_concurrent: 1,
    })
    .await;
    // Hold the only slot with an incomplete request head.
    let mut holder = TcpStream::connect(server.addr).await.expect("connect");
    holder
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut extra = TcpStream::connect(server.addr).await.expect("connect");
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut raw))
        .await
        .expect("closed in time");
    assert!(read.is_err() || raw.is_empty(), "{raw:?}");

    // The slow head is cut off after the timeout, which frees the slot.
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), holder.read_to_end(&mut raw))
        .await
        .expect("cut off in time")
        .expect("read");
    assert!(
        raw.is_empty() || raw.starts_with(b"HTTP/1.1 408"),
        "{raw:?}"
    );
    let mut answered = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        if raw.starts_with(b"HTTP/1.1 200 OK") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the slot was not freed");
}
