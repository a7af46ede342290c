//! The binary with a TLS listener: SIGHUP reloads the certificate; a
//! certificate file that is missing is a configuration error (exit 78)
//! naming its key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::certs::{self, Ca};
use crate::common::service;

fn config(dir: &std::path::Path, plain: u16, tls: u16) -> String {
    format!(
        "[mqtt]\nlisten = \"127.0.0.1:{plain}\"\n\
         [[mqtt.listeners]]\nname = \"tls\"\nkind = \"tls\"\nlisten = \"127.0.0.1:{tls}\"\n\
         cert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n\
         [store]\npath = \"{d}/store\"\n[admin]\nlisten = \"\"\n",
        d = dir.display()
    )
}

fn mqbridge(dir: &std::path::Path) -> Command {
    let mut cmd = crate::mqbridge_command();
    cmd.arg("--config")
        .arg(dir.join("gw.toml"))
        .current_dir(dir)
        .env("RUST_LOG", "mqbridge=info")
        .env("NO_COLOR", "1");
    cmd
}

/// mosquitto_pub over TLS trusting `ca`: whether it got through.
fn tls_pub(port: u16, ca: &std::path::Path) -> bool {
    Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "reload/t", "-m", "m", "--cafile"])
        .arg(ca)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate() {
    if !service::program(
        "mosquitto_pub",
        "mosquitto_pub (Debian package mosquitto-clients)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (plain, tls) = (super::free_port(), super::free_port());
    let first = Ca::new("first CA");
    let first_ca = first.write(dir.path(), "first-ca.pem");
    certs::write_pair(dir.path(), "server", &first.server());
    std::fs::write(dir.path().join("gw.toml"), config(dir.path(), plain, tls)).expect("config");
    let log_path = dir.path().join("gw.log");
    let log = std::fs::File::create(&log_path).expect("log");
    // The log goes to stdout.
    let mut child = mqbridge(dir.path())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mqbridge");
    super::wait_started(&mut child, plain, &log_path).await;
    assert!(tls_pub(tls, &first_ca), "served with the first certificate");

    let second = Ca::new("second CA");
    let second_ca = second.write(dir.path(), "second-ca.pem");
    certs::write_pair(dir.path(), "server", &second.server());
    assert!(tls_pub(tls, &first_ca), "nothing changes before the signal");
    signal(&child, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tls_pub(tls, &second_ca) {
        assert!(Instant::now() < deadline, "not reloaded after SIGHUP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !tls_pub(tls, &first_ca),
        "the first CA no longer verifies it"
    );
    signal(&child, "-TERM");
    let status = crate::common::within(20, async {
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
}

#[test]
fn missing_certificate_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("gw.toml"), config(dir.path(), 1, 2)).expect("config");
    let out = mqbridge(dir.path())
        .arg("--check-config")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mqtt.listeners[0].cert_file: reading"),
        "{stderr}"
    );
}
