//! The admin API and the status page against a gateway with real clients
//! (rumqttc): stats and sessions looked up, a client disconnected, a session
//! deleted (and gone after a restart on the same store), mutating calls
//! without the token refused; the status page rendered by headless
//! Chromium shows the same numbers.

use std::net::SocketAddr;
use std::path::Path;

use mqbridge::app::Gateway;
use mqbridge::config::Secret;
use rumqttc::QoS;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{b4, opts_v4, service, test_config};

const TOKEN: &str = "test-admin-token";

/// One HTTP exchange: (status, body).
async fn call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

async fn json(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = call(admin, "GET", path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

async fn gateway(dir: &Path) -> Gateway {
    let mut cfg = test_config(dir);
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.admin.token = Some(Secret::new(TOKEN));
    Gateway::start(cfg.validate().expect("valid"))
        .await
        .expect("starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_looked_up_disconnected_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = gateway(dir.path()).await;
    let (addr, admin) = (gw.mqtt_addr, gw.admin_addr.expect("admin"));
    let sfx = format!("{:08x}", rand::random::<u32>());
    let (a, b) = (format!("api-a-{sfx}"), format!("api-b-{sfx}"));

    // A persistent session with a subscription and three queued messages.
    let mut dev = b4::connect(opts_v4(addr, &a, false)).await;
    dev.subscribe(&format!("{a}/#"), QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut p = b4::connect(opts_v4(addr, &format!("pub-{sfx}"), true)).await;
    for i in 0..3 {
        p.publish(
            &format!("{a}/x"),
            QoS::AtLeastOnce,
            false,
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    p.disconnect().await;

    let stats = json(admin, "/api/v1/stats").await;
    assert_eq!(stats["persistent_sessions"], 1, "{stats}");
    assert_eq!(stats["queued_messages"], 3, "{stats}");
    let page = json(admin, &format!("/api/v1/sessions?prefix=api-a-{sfx}")).await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["sessions"][0]["client_id"], a.as_str(), "{page}");
    let one = json(admin, &format!("/api/v1/sessions/{a}")).await;
    assert_eq!(one["connected"], false, "{one}");
    assert_eq!(one["persistent"], true, "{one}");
    assert_eq!(one["queued_messages"], 3, "{one}");
    assert_eq!(one["subscriptions"][0]["filter"], format!("{a}/#"), "{one}");
    assert_eq!(
        call(admin, "GET", "/api/v1/sessions/nobody", None).await.0,
        404
    );

    // Disconnect a connected client: refused without the token, done with it.
    let mut other = b4::connect(opts_v4(addr, &b, true)).await;
    let live = json(admin, &format!("/api/v1/sessions/{b}")).await;
    assert_eq!(live["connected"], true, "{live}");
    assert_eq!(live["listener"], "tcp", "{live}");
    let path = format!("/api/v1/clients/{b}/disconnect");
    assert_eq!(call(admin, "POST", &path, None).await.0, 401);
    assert_eq!(call(admin, "POST", &path, Some("wrong")).await.0, 401);
    assert_eq!(call(admin, "POST", &path, Some(TOKEN)).await.0, 204);
    other.closed().await;

    // Delete A's session: refused without the token; then gone, also from disk.
    let path = format!("/api/v1/sessions/{a}");
    assert_eq!(call(admin, "DELETE", &path, None).await.0, 401);
    assert_eq!(call(admin, "DELETE", &path, Some(TOKEN)).await.0, 204);
    assert_eq!(call(admin, "GET", &path, None).await.0, 404);
    gw.shutdown().await;
    let gw = gateway(dir.path()).await;
    let admin = gw.admin_addr.expect("admin");
    assert_eq!(
        call(admin, "GET", &path, None).await.0,
        404,
        "back after a restart"
    );
    let stats = json(admin, "/api/v1/stats").await;
    assert_eq!(stats["persistent_sessions"], 0, "{stats}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_are_off_without_a_configured_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.admin.listen = "127.0.0.1:0".into();
    let gw = Gateway::start(cfg.validate().expect("valid"))
        .await
        .expect("starts");
    let admin = gw.admin_addr.expect("admin");
    let (status, body) = call(admin, "DELETE", "/api/v1/sessions/x", Some("anything")).await;
    assert_eq!(status, 403, "{body}");
    gw.shutdown().await;
}

/// The status page in a real browser: headless Chromium renders it (the
/// DOM after load is dumped, and a screenshot taken) against a gateway with
/// two connected clients and queued messages; the numbers are the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    if !service::program("chromium", "headless Chromium (Debian package chromium)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = gateway(dir.path()).await;
    let (addr, admin) = (gw.mqtt_addr, gw.admin_addr.expect("admin"));
    let sfx = format!("{:08x}", rand::random::<u32>());
    let mut sub = b4::connect(opts_v4(addr, &format!("page-s-{sfx}"), false)).await;
    sub.subscribe("page/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut p = b4::connect(opts_v4(addr, &format!("page-p-{sfx}"), true)).await;
    let _other = b4::connect(opts_v4(addr, &format!("page-o-{sfx}"), true)).await;
    for i in 0..4 {
        p.publish(
            "page/x",
            QoS::AtLeastOnce,
            false,
            format!("m{i}").as_bytes(),
        )
        .await;
    }

    let url = format!("http://{admin}/");
    let shot = dir.path().join("status.png");
    let profile = dir.path().join("profile");
    let browser = move |args: Vec<String>| {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .output()
            .expect("chromium runs")
    };
    let (url2, browser2) = (url.clone(), browser.clone());
    let dom = tokio::task::spawn_blocking(move || browser2(vec!["--dump-dom".into(), url2]))
        .await
        .expect("join");
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let tile = |id: &str| -> Option<u64> {
        let at = dom.find(&format!("id=\"{id}\">"))? + id.len() + 6;
        dom[at..].split('<').next()?.parse().ok()
    };
    assert_eq!(tile("connected"), Some(2), "{dom}");
    assert_eq!(tile("persistent"), Some(1), "{dom}");
    assert_eq!(tile("queued"), Some(4), "{dom}");
    assert!(dom.contains("id=\"ready\">ready<"), "{dom}");

    let shot_arg = format!("--screenshot={}", shot.display());
    let out = tokio::task::spawn_blocking(move || {
        browser(vec![shot_arg, "--window-size=1000,700".into(), url])
    })
    .await
    .expect("join");
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    gw.shutdown().await;
}

/// The queue gauges move with each message, not on the periodic tick, and
/// count clean sessions too; stored bytes are the persistent part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_are_current_and_cover_every_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.admin.listen = "127.0.0.1:0".into();
    // A tick far away: only the per-message updates can move the gauges.
    cfg.session.expiry_check_interval_secs = 3600;
    let gw = Gateway::start(cfg.validate().expect("valid"))
        .await
        .expect("starts");
    let (addr, admin) = (gw.mqtt_addr, gw.admin_addr.expect("admin"));
    let sample = |text: &str, name: &str| -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    };
    let mut dev = b4::connect(opts_v4(addr, "gauge-dev", false)).await;
    dev.subscribe("gauge/#", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut p = b4::connect(opts_v4(addr, "gauge-pub", true)).await;
    for i in 0..2 {
        p.publish(
            "gauge/x",
            QoS::AtLeastOnce,
            false,
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    let (_, text) = call(admin, "GET", "/metrics", None).await;
    assert_eq!(
        sample(&text, "mqbridge_session_queued_messages"),
        Some(2),
        "{text}"
    );
    let queued = sample(&text, "mqbridge_session_queued_bytes").expect("queued bytes");
    let stored = sample(&text, "mqbridge_session_stored_bytes").expect("stored bytes");
    assert!(
        queued > 0 && stored == queued,
        "queued {queued}, stored {stored}"
    );
    // The store: its file measured at start-up, each commit's batch observed.
    let file = sample(&text, "mqbridge_store_file_bytes").expect("store file bytes");
    assert!(file > 0, "{text}");
    let batches = sample(&text, "mqbridge_store_commit_batch_ops_count").expect("batch count");
    assert!(batches > 0, "{text}");
    // Delivered and acknowledged: gone from both.
    let mut dev = b4::connect(opts_v4(addr, "gauge-dev", false)).await;
    dev.expect_publishes(2).await;
    let mut zero = false;
    for _ in 0..50 {
        let (_, text) = call(admin, "GET", "/metrics", None).await;
        if sample(&text, "mqbridge_session_queued_messages") == Some(0)
            && sample(&text, "mqbridge_session_queued_bytes") == Some(0)
        {
            zero = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(zero, "the gauges did not come back to 0 after the acks");
    gw.shutdown().await;
}

/// With `admin.cert_file` / `key_file` the endpoint serves HTTPS only: curl
/// trusting the test's CA gets the status page and the API; plain HTTP is
/// not answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_over_https() {
    if !service::program("curl", "curl (Debian package curl)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = crate::common::certs::Ca::new("admin test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cert, key) = crate::common::certs::write_pair(dir.path(), "admin", &ca.server());
    let mut cfg = test_config(dir.path());
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.admin.cert_file = cert.display().to_string();
    cfg.admin.key_file = key.display().to_string();
    let gw = Gateway::start(cfg.validate().expect("valid"))
        .await
        .expect("starts");
    let admin = gw.admin_addr.expect("admin");
    let url = format!("https://localhost:{}/api/v1/stats", admin.port());
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .arg(&url)
        .output()
        .await
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_str(&body).expect("JSON over HTTPS");
    assert!(stats["sessions"].is_number(), "{stats}");
    // Plain HTTP on the same port gets no HTTP answer.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        call(admin, "GET", "/healthz", None),
    )
    .await
    .expect("closed in time");
    assert_ne!(plain.0, 200, "answered over plain HTTP: {plain:?}");
    gw.shutdown().await;

    // Half a pair is refused by validation, naming the key.
    let mut cfg = test_config(dir.path());
    cfg.admin.cert_file = cert.display().to_string();
    let errors = cfg.validate().expect_err("key_file missing");
    assert!(
        errors
            .iter()
            .any(|e| e.to_string().starts_with("admin.key_file")),
        "{errors:?}"
    );
}
