//! The real `mqbridge` binary as a child process: restarts and crashes
//! (durability of sessions, spool and downlink positions) and the command
//! line. One test binary; each child gets its own port and store directory.

#[path = "../common/mod.rs"]
mod common;

mod acl_reload;
mod cluster;
mod config_cli;
mod downlink_amqp_crash;
mod downlink_kafka_crash;
mod ops;
mod passwd;
mod production;
mod restart;
mod spool;
mod tls_reload;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The gateway binary as a command, without the `MQBRIDGE__*` variables of
/// the test's own environment (each test configures its child itself).
fn mqbridge_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mqbridge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MQBRIDGE__") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A port nobody listens on right now (for a child gateway).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits (up to 20 s) until the child gateway accepts on `port`; fails at
/// once, with its log, if it exits first.
async fn wait_started(child: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("mqbridge exited: {status}\n{log}");
        }
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
