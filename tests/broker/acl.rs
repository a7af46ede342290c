//! Authorisation (docs/security.md section 3): the attacks of issue 10 on
//! the reference fleet layout, refused by the reference `acl_file`
//! (`config/acl-reference.acl`), over 3.1.1 and 5.0, with rumqttc and
//! Mosquitto's command-line clients. Device X connects with user name X;
//! an operator `ops` may do anything (it stands in for the backend's
//! commands, which the downlink delivers unchecked).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use mqbridge::app::Gateway;
use mqbridge::config::{AclRuleConfig, Config};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as Code5, Packet as P5, PubAckReason, PubRecReason, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{ConnectReturnCode, ConnectionError, LastWill, QoS, SubscribeReasonCode as Sub4};
use tokio::process::Command;

use crate::common::{b4, b5, init_tracing, opts_v4, opts_v5, service, start_with, within};

fn reference_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/acl-reference.acl")
}

fn rule(permission: &str, action: &str, topic: &str, users: Option<&[&str]>) -> AclRuleConfig {
    AclRuleConfig {
        permission: permission.into(),
        action: action.into(),
        topic: topic.into(),
        users: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
    }
}

/// `file` as the acl_file, `ops` allowed everything, and everyone the
/// helpers' control topics; admin endpoint on for the metrics.
fn secured(cfg: &mut Config, file: PathBuf) {
    cfg.acl.file = file;
    cfg.acl.rules = vec![
        rule("allow", "both", "#", Some(&["ops"])),
        rule("allow", "both", "control/#", None),
    ];
    cfg.admin.listen = "127.0.0.1:0".into();
}

fn v4_as(addr: std::net::SocketAddr, id: &str, user: &str) -> rumqttc::MqttOptions {
    let mut o = opts_v4(addr, id, true);
    o.set_credentials(user, "");
    o
}

fn v5_as(addr: std::net::SocketAddr, id: &str, user: &str) -> rumqttc::v5::MqttOptions {
    let mut o = opts_v5(addr, id, true, None);
    o.set_credentials(user, "");
    o
}

async fn denied(admin: Option<std::net::SocketAddr>, action: &str) -> u64 {
    let text = crate::common::downlink::metrics(admin.expect("admin endpoint on")).await;
    let line = format!("mqbridge_acl_denied_total{{action=\"{action}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in metrics"))
}

fn mosquitto() -> bool {
    service::program(
        "mosquitto_pub",
        "mosquitto_pub/mosquitto_sub (Debian package mosquitto-clients)",
    )
}

/// Runs a Mosquitto client against the gateway; returns (success, stderr).
async fn mosquitto_run(program: &str, port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .output()
        .await
        .expect("mosquitto client runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_device_cannot_read_another_devices_commands() {
    init_tracing();
    let t = start_with(|c| secured(c, reference_file())).await;
    let mut ops = b4::connect(v4_as(t.addr, "ops", "ops")).await;
    ops.publish(
        "devices/devA/commands",
        QoS::AtLeastOnce,
        true,
        b"retained-cmd",
    )
    .await;

    let mut a = b4::connect(v4_as(t.addr, "devA", "devA")).await;
    let ack = a.subscribe("devices/devA/commands", QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, [Sub4::Success(QoS::AtLeastOnce)]);
    let mut b4c = b4::connect(v4_as(t.addr, "devB", "devB")).await;
    for f in [
        "devices/+/commands",
        "devices/devA/commands",
        "devices/#",
        "#",
    ] {
        let ack = b4c.subscribe(f, QoS::AtLeastOnce).await;
        assert_eq!(ack.return_codes, [Sub4::Failure], "3.1.1 {f}: 0x80");
    }
    let mut b5c = b5::connect(v5_as(t.addr, "devB-5", "devB")).await;
    for f in ["devices/+/commands", "$share/g/devices/+/commands"] {
        let ack = b5c.subscribe(f, Q5::AtLeastOnce).await;
        assert_eq!(
            ack.return_codes,
            [SubscribeReasonCode::NotAuthorized],
            "5.0 {f}: 0x87"
        );
    }
    let ack = b5c
        .subscribe("devices/devB/commands", Q5::AtLeastOnce)
        .await;
    assert_eq!(
        ack.return_codes,
        [SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );

    ops.publish(
        "devices/devA/commands",
        QoS::AtLeastOnce,
        false,
        b"unlock-door",
    )
    .await;
    let got = a.expect_publishes(2).await;
    assert_eq!(b4::payloads(&got), ["retained-cmd", "unlock-door"]);
    assert!(
        b4c.until_control().await.is_empty(),
        "3.1.1 B got A's commands"
    );
    assert!(
        b5c.until_control().await.is_empty(),
        "5.0 B got A's commands"
    );
    assert_eq!(denied(t.gw.admin_addr, "subscribe").await, 6);

    // Mosquitto's subscriber, 3.1.1 and 5.0, is refused the same way.
    if mosquitto() {
        for v in ["mqttv311", "mqttv5"] {
            let args = [
                "-V",
                v,
                "-u",
                "devB",
                "-i",
                "devB-m",
                "-W",
                "5",
                "-t",
                "devices/+/commands",
            ];
            let (_, err) = mosquitto_run("mosquitto_sub", t.addr.port(), &args).await;
            assert!(
                err.contains("All subscription requests were denied"),
                "{v}: {err}"
            );
        }
    }
    t.gw.shutdown().await;
}

#[tokio::test]
async fn a_device_cannot_write_another_devices_commands() {
    init_tracing();
    let t = start_with(|c| secured(c, reference_file())).await;
    let mut a = b4::connect(v4_as(t.addr, "devA", "devA")).await;
    a.subscribe("devices/devA/commands", QoS::AtLeastOnce).await;

    // 3.1.1 has no negative acknowledgement: acked, and dropped.
    let mut b = b4::connect(v4_as(t.addr, "devB", "devB")).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for retain in [false, true] {
            b.publish("devices/devA/commands", qos, retain, b"forged")
                .await;
        }
    }
    // 5.0: PUBACK / PUBREC 0x87.
    let mut b5c = b5::connect(v5_as(t.addr, "devB-5", "devB")).await;
    for qos in [Q5::AtLeastOnce, Q5::ExactlyOnce] {
        b5c.client
            .publish("devices/devA/commands", qos, true, b"forged".to_vec())
            .await
            .expect("client connection open");
        let refused = within(10, async {
            loop {
                match b5c.events.recv().await {
                    Some(Ok(rumqttc::v5::Event::Incoming(P5::PubAck(p)))) => {
                        return p.reason == PubAckReason::NotAuthorized
                    }
                    Some(Ok(rumqttc::v5::Event::Incoming(P5::PubRec(p)))) => {
                        return p.reason == PubRecReason::NotAuthorized
                    }
                    Some(Ok(_)) => {}
                    other => panic!("publisher connection ended: {other:?}"),
                }
            }
        })
        .await;
        assert!(refused, "5.0 {qos:?}: 0x87");
    }
    let mut expected = 8;
    if mosquitto() {
        for v in ["mqttv311", "mqttv5"] {
            let args = [
                "-V",
                v,
                "-u",
                "devB",
                "-i",
                "devB-m",
                "-q",
                "1",
                "-r",
                "-t",
                "devices/devA/commands",
                "-m",
                "forged",
            ];
            let (ok, err) = mosquitto_run("mosquitto_pub", t.addr.port(), &args).await;
            // 3.1.1 is acknowledged; 5.0 reports the refusal.
            assert!(v == "mqttv5" || ok, "{v}: {err}");
            expected += 1;
        }
    }
    // A devA publish on its own topic tree still works (the test can fail).
    let mut ops = b4::connect(v4_as(t.addr, "ops", "ops")).await;
    ops.publish("devices/devA/commands", QoS::AtLeastOnce, false, b"real")
        .await;
    let got = a.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["real"]);
    assert!(a.until_control().await.is_empty(), "no forged command");
    let mut later = b4::connect(v4_as(t.addr, "devA-2", "devA")).await;
    later
        .subscribe("devices/devA/commands", QoS::AtLeastOnce)
        .await;
    assert!(later.until_control().await.is_empty(), "no forged retained");
    assert_eq!(denied(t.gw.admin_addr, "publish").await, expected);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn a_will_on_another_devices_topic_is_refused() {
    init_tracing();
    let t = start_with(|c| secured(c, reference_file())).await;
    let mut o = v4_as(t.addr, "devB", "devB");
    o.set_last_will(LastWill::new(
        "devices/devA/commands",
        "x",
        QoS::AtLeastOnce,
        false,
    ));
    match b4::try_connect(o).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized, "3.1.1: 0x05")
        }
        Err(e) => panic!("unexpected: {e:?}"),
        Ok(_) => panic!("3.1.1 will on A's topic accepted"),
    }
    let mut o = v5_as(t.addr, "devB", "devB");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "devices/devA/commands",
        "x",
        Q5::AtLeastOnce,
        false,
        None,
    ));
    match b5::try_connect(o).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, Code5::NotAuthorized, "5.0: 0x87")
        }
        Err(e) => panic!("unexpected: {e:?}"),
        Ok(_) => panic!("5.0 will on A's topic accepted"),
    }
    // Its own topic is fine.
    let mut o = v4_as(t.addr, "devB", "devB");
    o.set_last_will(LastWill::new(
        "devices/devB/status",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    b4::connect(o).await.disconnect().await;
    assert_eq!(denied(t.gw.admin_addr, "will").await, 2);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn a_wildcard_subscription_never_leaks_what_new_rules_forbid() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("acl");
    std::fs::write(&file, "user devB\ntopic read devices/#\n").expect("write acl");
    let t = start_with(|c| secured(c, file.clone())).await;
    let mut b = b4::connect(v4_as(t.addr, "devB", "devB")).await;
    let ack = b.subscribe("devices/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.return_codes, [Sub4::Success(QoS::AtLeastOnce)]);

    std::fs::copy(reference_file(), &file).expect("new rules");
    assert_eq!(t.gw.reload(), 0, "reference rules load (what SIGHUP runs)");
    let mut ops = b4::connect(v4_as(t.addr, "ops", "ops")).await;
    for (topic, payload) in [
        ("devices/devA/commands", "a-cmd"),
        ("devices/devA/telemetry", "a-tel"),
        ("devices/devB/commands", "b-cmd"),
    ] {
        ops.publish(topic, QoS::AtLeastOnce, false, payload.as_bytes())
            .await;
    }
    let mut got = b.expect_publishes(1).await;
    got.extend(b.until_control().await);
    assert_eq!(b4::payloads(&got), ["b-cmd"], "only what B may read");
    let ack = b.subscribe("devices/#", QoS::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        [Sub4::Failure],
        "refused under the new rules"
    );

    // A file that does not parse keeps the rules in force.
    std::fs::write(&file, "topic read devices/#\nnonsense\n").expect("write acl");
    assert_eq!(t.gw.reload(), 1, "the bad file is the one failure");
    ops.publish("devices/devA/commands", QoS::AtLeastOnce, false, b"a-cmd-2")
        .await;
    ops.publish("devices/devB/commands", QoS::AtLeastOnce, false, b"b-cmd-2")
        .await;
    let mut got = b.expect_publishes(1).await;
    got.extend(b.until_control().await);
    assert_eq!(b4::payloads(&got), ["b-cmd-2"]);
    assert_eq!(denied(t.gw.admin_addr, "deliver").await, 3);
    t.gw.shutdown().await;
}

/// A persistent session's wildcard subscription stored with no ACL at all
/// is filtered by the rules the gateway restarts with.
#[tokio::test]
async fn a_stored_wildcard_subscription_is_filtered_after_a_restart() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let open = crate::common::test_config(dir.path());
    let gw = Gateway::start(open.validate().expect("valid"))
        .await
        .expect("starts");
    let mut o = opts_v4(gw.mqtt_addr, "devB", false);
    o.set_credentials("devB", "");
    let mut b = b4::connect(o).await;
    b.subscribe("devices/#", QoS::AtLeastOnce).await;
    b.disconnect().await;
    gw.shutdown().await;

    let mut cfg = crate::common::test_config(dir.path());
    secured(&mut cfg, reference_file());
    let gw = Gateway::start(cfg.validate().expect("valid"))
        .await
        .expect("restarts");
    let mut o = opts_v4(gw.mqtt_addr, "devB", false);
    o.set_credentials("devB", "");
    let mut b = b4::connect(o).await;
    assert!(b.session_present());
    let mut ops = b4::connect(v4_as(gw.mqtt_addr, "ops", "ops")).await;
    ops.publish("devices/devA/commands", QoS::AtLeastOnce, false, b"a-cmd")
        .await;
    ops.publish("devices/devB/commands", QoS::AtLeastOnce, false, b"b-cmd")
        .await;
    let mut got = b.expect_publishes(1).await;
    got.extend(b.until_control().await);
    assert_eq!(b4::payloads(&got), ["b-cmd"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn clients_cannot_publish_dollar_topics_v5() {
    init_tracing();
    // No rule at all: everything else is allowed.
    let t = start_with(|_| {}).await;
    let mut c = b5::connect(opts_v5(t.addr, "dollar-5", true, None)).await;
    c.client
        .publish("$SYS/forged", Q5::AtLeastOnce, false, b"x".to_vec())
        .await
        .expect("client connection open");
    let reason = within(10, async {
        loop {
            match c.events.recv().await {
                Some(Ok(rumqttc::v5::Event::Incoming(P5::PubAck(p)))) => return p.reason,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    c.publish("plain/topic", Q5::AtLeastOnce, false, b"x").await;
    t.gw.shutdown().await;
}

/// Python paho (a third-party client) sees the refusals with their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_sees_the_refusal_codes() {
    if !service::tool(
        "python3",
        &["-c", "import paho.mqtt"],
        None,
        "Python paho-mqtt (scripts/test.sh installs it)",
    ) {
        return;
    }
    init_tracing();
    let t = start_with(|c| secured(c, reference_file())).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/acl_paho.py");
    let out = within(
        30,
        Command::new("python3")
            .arg(script)
            .arg(t.addr.port().to_string())
            .output(),
    )
    .await
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "paho script failed: {stdout}");
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line");
    // SUBACK: A's commands 0x87, its own granted QoS 1; PUBACK 0x87; the
    // 3.1.1 CONNACK 0x05 (paho reports it as 5.0's 0x87).
    assert_eq!(seen["suback"], serde_json::json!([0x87, 1]), "{seen}");
    assert_eq!(seen["puback"], serde_json::json!(0x87), "{seen}");
    assert_eq!(seen["connack"], serde_json::json!([0, 0x87]), "{seen}");
    t.gw.shutdown().await;
}

/// A will accepted at CONNECT is checked again when it is published: rules
/// reloaded in between that forbid its topic keep it from going out.
#[tokio::test]
async fn a_will_is_checked_again_when_published() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("acl");
    std::fs::write(&file, "pattern readwrite devices/%u/#\n").expect("write acl");
    let t = start_with(|c| secured(c, file.clone())).await;
    let mut ops = b4::connect(v4_as(t.addr, "ops", "ops")).await;
    ops.subscribe("devices/+/status", QoS::AtLeastOnce).await;
    let with_will = |id: &str, payload: &str| {
        let mut o = v4_as(t.addr, id, id);
        let topic = format!("devices/{id}/status");
        o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false));
        o
    };
    let b = b4::connect(with_will("devB", "b-gone")).await;
    let c = b4::connect(with_will("devC", "c-gone")).await;
    // Under the rules it was accepted with, a will goes out.
    b.kill().await;
    assert_eq!(b4::payloads(&ops.expect_publishes(1).await), ["b-gone"]);
    // Not after rules that forbid its topic.
    std::fs::write(&file, "pattern read devices/%u/commands\n").expect("new rules");
    assert_eq!(t.gw.reload(), 0);
    c.kill().await;
    // The close is seen when the gateway reads the socket: wait for the refusal.
    within(10, async {
        while denied(t.gw.admin_addr, "will").await < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ops.until_control().await.is_empty(),
        "c-gone was not published"
    );
    t.gw.shutdown().await;
}
