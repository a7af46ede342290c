//! SIGHUP re-reads the acl_file of the running binary: a subscription the
//! old file refused is granted under the new one, and a file that does not
//! parse keeps the rules in force.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{QoS, SubscribeReasonCode};

use crate::common::b4;
use crate::{free_port, wait_started};

fn hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "SIGHUP sent");
}

/// Subscribes to `filter` until the SUBACK grants it (true) or 10 s pass.
async fn granted_within(dev: &mut b4::Client, filter: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ack = dev.subscribe(filter, QoS::AtLeastOnce).await;
        if ack.return_codes == [SubscribeReasonCode::Success(QoS::AtLeastOnce)] {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn sighup_rereads_the_acl_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "pattern read devices/%u/commands\n").expect("write acl");
    let toml = format!(
        "[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"\"\n\
         [store]\npath = \"{}\"\n[acl]\nfile = \"{}\"\n",
        dir.path().join("store").display(),
        acl.display()
    );
    std::fs::write(dir.path().join("gw.toml"), toml).expect("write config");
    let log_path = dir.path().join("gw.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .arg("--config")
        .arg(dir.path().join("gw.toml"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn mqbridge");
    wait_started(&mut child, port, &log_path).await;

    let mut o = rumqttc::MqttOptions::new("devB", "127.0.0.1", port);
    o.set_credentials("devB", "");
    let mut dev = b4::connect(o).await;
    let ack = dev
        .subscribe("devices/devA/commands", QoS::AtLeastOnce)
        .await;
    assert_eq!(ack.return_codes, [SubscribeReasonCode::Failure]);

    std::fs::write(&acl, "pattern read devices/+/commands\n").expect("rewrite acl");
    hangup(&child);
    assert!(
        granted_within(&mut dev, "devices/devA/commands").await,
        "new rules after SIGHUP; log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    std::fs::write(&acl, "nonsense\n").expect("break acl");
    hangup(&child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("acl_file reload failed")
    {
        assert!(Instant::now() < deadline, "the failed reload is logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ack = dev
        .subscribe("devices/devC/commands", QoS::AtLeastOnce)
        .await;
    assert_eq!(
        ack.return_codes,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "the rules in force stay"
    );
    dev.disconnect().await;
    let _ = child.kill();
    let _ = child.wait();
}
