//! Shared helpers for the integration tests: start the gateway in-process on
//! a free port with its own store directory, and build rumqttc clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use mqbridge::app::Gateway;
use mqbridge::config::Config;

pub struct TestGateway {
    pub gw: Gateway,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Config for tests: ephemeral port, temporary store, no admin endpoint.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.mqtt.listen = "127.0.0.1:0".into();
    cfg.admin.listen = String::new();
    cfg.store.path = dir.to_path_buf();
    cfg.session.expiry_check_interval_secs = 1;
    cfg
}

pub async fn start() -> TestGateway {
    start_with(|_| {}).await
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    f(&mut cfg);
    cfg.validate().expect("test config is valid");
    let gw = Gateway::start(cfg).await.expect("gateway starts");
    let addr = gw.mqtt_addr;
    TestGateway { gw, addr, dir }
}

/// A 3.1.1 client options value for this gateway.
pub fn opts_v4(addr: SocketAddr, id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub fn opts_v5(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_start(clean);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(e) = expiry {
        o.set_session_expiry_interval(Some(e));
    }
    o
}

/// Runs `fut` with a timeout so a broken behaviour fails instead of hanging.
pub async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("timed out")
}
